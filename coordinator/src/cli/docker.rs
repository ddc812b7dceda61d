//! `--load` and `-o type=docker` without `dest`: an image archive loaded into the Docker daemon
//! at `DOCKER_HOST` (`unix://PATH` or `tcp://HOST:PORT`; default `/var/run/docker.sock`) through
//! its API (`POST /images/load`), as buildx's docker exporter does.

use anyhow::{anyhow, bail, Context as _};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(300);

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

fn connect() -> anyhow::Result<(Box<dyn Stream>, String)> {
    let host = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "unix:///var/run/docker.sock".into());
    if let Some(path) = host.strip_prefix("unix://") {
        let s = std::os::unix::net::UnixStream::connect(path)
            .map_err(|e| anyhow!("--load: cannot reach the Docker daemon at {host}: {e} (is dockerd running? set DOCKER_HOST)"))?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.set_write_timeout(Some(TIMEOUT))?;
        return Ok((Box::new(s), host));
    }
    if let Some(addr) = host.strip_prefix("tcp://") {
        let s = std::net::TcpStream::connect(addr).map_err(|e| anyhow!("--load: cannot reach the Docker daemon at {host}: {e}"))?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.set_write_timeout(Some(TIMEOUT))?;
        return Ok((Box::new(s), host));
    }
    bail!("--load: DOCKER_HOST={host} is not supported (expected unix://PATH or tcp://HOST:PORT)")
}

/// Loads the `docker save` archive at `archive` into the daemon; what it said it loaded.
pub fn load(archive: &Path) -> anyhow::Result<String> {
    let (mut conn, host) = connect()?;
    let size = std::fs::metadata(archive)?.len();
    write!(
        conn,
        "POST /images/load?quiet=1 HTTP/1.1\r\nHost: docker\r\nContent-Type: application/x-tar\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    )?;
    std::io::copy(&mut std::fs::File::open(archive)?, &mut conn).with_context(|| format!("--load: sending the image to {host}"))?;
    conn.flush()?;
    let mut reader = BufReader::new(conn);
    let mut status = String::new();
    reader.read_line(&mut status).with_context(|| format!("--load: reading {host}'s answer"))?;
    let code: u16 = status.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    // Headers, then the body (chunked or not: the JSON lines are found either way).
    let mut body = String::new();
    reader.take(1 << 20).read_to_string(&mut body).ok();
    let body = body.split("\r\n\r\n").nth(1).unwrap_or(&body).to_string();
    let messages: Vec<serde_json::Value> = body.lines().filter_map(|l| serde_json::from_str(l.trim()).ok()).collect();
    if let Some(e) = messages.iter().find_map(|m| m.get("errorDetail").and_then(|d| d.get("message")).or_else(|| m.get("message"))) {
        if code != 200 || messages.iter().any(|m| m.get("errorDetail").is_some()) {
            bail!("--load: the Docker daemon refused the image: {}", e.as_str().unwrap_or_default());
        }
    }
    if code != 200 {
        bail!("--load: the Docker daemon at {host} answered {}", status.trim());
    }
    let said: Vec<String> = messages
        .iter()
        .filter_map(|m| m.get("stream").and_then(|s| s.as_str()))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    Ok(said.join("; "))
}
