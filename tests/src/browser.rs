//! A real browser for the web console's tests: Debian's headless Chromium, driven over the
//! DevTools protocol on a WebSocket to its page, so that a test can fill the sign-in form,
//! navigate, wait for the page's own script to update it, read the DOM and take screenshots.
//! The WebSocket client is the minimum the protocol needs (RFC 6455 text frames, masked as a
//! client's must be; pings answered; no extensions), so no crate is added for it.

use crate::TempDir;
use base64::Engine as _;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `CHROMIUM` if set, else Debian's `/usr/bin/chromium`.
pub fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

pub struct Browser {
    child: Child,
    ws: Ws,
    next: u64,
    profile: TempDir,
}

impl Browser {
    /// Starts Chromium (1280×900, a profile of its own) and attaches to its page.
    pub fn start() -> Browser {
        let bin = chromium();
        assert!(bin.exists(), "{} is missing: install Debian's chromium (scripts/setup-host.sh does)", bin.display());
        let profile = TempDir::new("chromium");
        let log = std::fs::File::create(profile.path().join("chromium.log")).expect("chromium log");
        let child = Command::new(&bin)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-sync",
                "--hide-scrollbars",
                "--window-size=1280,900",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().join("profile").display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            // Its own process group: its helpers (zygote, renderer) are stopped with it.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let port_file = profile.path().join("profile/DevToolsActivePort");
        let mut port = None;
        crate::wait_for("Chromium's DevTools port", Duration::from_secs(30), || {
            port = std::fs::read_to_string(&port_file).ok().and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u16>().ok()));
            port.is_some()
        });
        let port = port.unwrap_or_default();
        let mut page_ws = None;
        crate::wait_for("Chromium's page target", Duration::from_secs(30), || {
            let list: Value = match ureq::get(&format!("http://127.0.0.1:{port}/json/list")).timeout(Duration::from_secs(5)).call() {
                Ok(r) => serde_json::from_str(&r.into_string().unwrap_or_default()).unwrap_or(Value::Null),
                Err(_) => return false,
            };
            page_ws = list
                .as_array()
                .and_then(|l| l.iter().find(|t| t["type"] == "page").and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string)));
            page_ws.is_some()
        });
        let ws = Ws::connect(&page_ws.unwrap_or_default()).unwrap_or_else(|e| panic!("DevTools WebSocket: {e}"));
        let mut b = Browser { child, ws, next: 0, profile };
        b.call("Page.enable", json!({}));
        b.call("Emulation.setDeviceMetricsOverride", json!({ "width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false }));
        b
    }

    /// One DevTools command; its result (a protocol error fails the test).
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.try_call(method, params).unwrap_or_else(|e| panic!("DevTools {method}: {e}"))
    }

    fn try_call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.next += 1;
        let id = self.next;
        self.ws.send(&json!({ "id": id, "method": method, "params": params }).to_string()).map_err(|e| e.to_string())?;
        loop {
            let text = self.ws.recv().map_err(|e| format!("{e} (chromium log: {})", self.log()))?;
            let v: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            if v["id"] == id {
                return match v.get("error") {
                    Some(e) => Err(e.to_string()),
                    None => Ok(v["result"].clone()),
                };
            }
        }
    }

    /// Loads `url` and waits for the document (and whatever it redirected to) to be complete.
    pub fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
        self.wait_until(&format!("{url} loaded"), "document.readyState === 'complete' && location.href !== 'about:blank'");
    }

    /// The value of a JavaScript expression in the page (`Err`: it threw, or the page was
    /// between documents).
    pub fn try_eval(&mut self, expr: &str) -> Result<Value, String> {
        let r = self.try_call("Runtime.evaluate", json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }))?;
        if let Some(e) = r.get("exceptionDetails") {
            return Err(e.to_string());
        }
        Ok(r["result"]["value"].clone())
    }

    pub fn eval(&mut self, expr: &str) -> Value {
        self.try_eval(expr).unwrap_or_else(|e| panic!("evaluating {expr}: {e}"))
    }

    /// Waits (up to 30 s) until `expr` is true in the page.
    pub fn wait_until(&mut self, what: &str, expr: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.try_eval(expr).is_ok_and(|v| v == Value::Bool(true)) {
                return;
            }
            if Instant::now() > deadline {
                let html = self.try_eval("document.documentElement.outerHTML").unwrap_or_default();
                panic!("timed out waiting for {what} ({expr}); the page:\n{}", html.as_str().unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    /// The document as the page's script left it.
    pub fn html(&mut self) -> String {
        self.eval("document.documentElement.outerHTML").as_str().unwrap_or_default().to_string()
    }

    /// A PNG of the viewport, written to `path` (its directory is made).
    pub fn screenshot(&mut self, path: &Path) {
        let r = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let png = base64::engine::general_purpose::STANDARD.decode(r["data"].as_str().unwrap_or_default()).expect("screenshot base64");
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.profile.path().join("chromium.log"))
            .unwrap_or_default()
            .lines()
            .rev()
            .take(10)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.ws.send(&json!({ "id": 0, "method": "Browser.close" }).to_string());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        // The group this test started (its id is the browser's pid): what is left of it.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.child.wait();
    }
}

/// A WebSocket client connection (`ws://` only: DevTools listens on loopback).
struct Ws {
    stream: TcpStream,
}

impl Ws {
    fn connect(url: &str) -> std::io::Result<Ws> {
        let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
        let rest = url.strip_prefix("ws://").ok_or_else(|| bad(format!("{url:?} is not a ws:// URL")))?;
        let (host, path) = rest.split_once('/').ok_or_else(|| bad(format!("{url:?} has no path")))?;
        let mut stream = TcpStream::connect(host)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let nonce: [u8; 16] = std::array::from_fn(|i| (std::process::id() as u8).wrapping_mul(31).wrapping_add(i as u8 * 17));
        let key = base64::engine::general_purpose::STANDARD.encode(nonce);
        write!(
            stream,
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte)?;
            head.push(byte[0]);
            if head.len() > 16 * 1024 {
                return Err(bad("the WebSocket handshake answer is too long".into()));
            }
        }
        let head = String::from_utf8_lossy(&head);
        if !head.starts_with("HTTP/1.1 101") {
            return Err(bad(format!("the WebSocket handshake was refused: {}", head.lines().next().unwrap_or_default())));
        }
        Ok(Ws { stream })
    }

    fn frame(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        let mut out = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n < 65_536 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [0x6b, 0x69, 0x6c, 0x6e];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&out)
    }

    fn send(&mut self, text: &str) -> std::io::Result<()> {
        self.frame(0x1, text.as_bytes())
    }

    /// The next text message (continuation frames joined; pings answered).
    fn recv(&mut self) -> std::io::Result<String> {
        let mut message = Vec::new();
        loop {
            let mut h = [0u8; 2];
            self.stream.read_exact(&mut h)?;
            let (fin, opcode, masked) = (h[0] & 0x80 != 0, h[0] & 0x0f, h[1] & 0x80 != 0);
            let len = match h[1] & 0x7f {
                126 => {
                    let mut b = [0u8; 2];
                    self.stream.read_exact(&mut b)?;
                    u64::from(u16::from_be_bytes(b))
                }
                127 => {
                    let mut b = [0u8; 8];
                    self.stream.read_exact(&mut b)?;
                    u64::from_be_bytes(b)
                }
                n => u64::from(n),
            };
            let mut mask = [0u8; 4];
            if masked {
                self.stream.read_exact(&mut mask)?;
            }
            let mut payload = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
            self.stream.read_exact(&mut payload)?;
            if masked {
                payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= mask[i % 4]);
            }
            match opcode {
                0x0..=0x2 => {
                    message.extend_from_slice(&payload);
                    if fin {
                        return Ok(String::from_utf8_lossy(&message).into_owned());
                    }
                }
                0x8 => {
                    return Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "the browser closed the DevTools connection"))
                }
                0x9 => self.frame(0xA, &payload)?,
                _ => {}
            }
        }
    }
}
