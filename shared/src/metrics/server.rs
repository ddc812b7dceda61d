//! The metrics endpoint (`--metrics-listen ADDR`): plain HTTP/1.1 on TCP, GET (and HEAD) only.
//!
//! - `/metrics`: the registry in Prometheus' text format;
//! - `/healthz`: 200 while the process serves;
//! - `/readyz`: 200 when the process can do its work (the caller says what that means: a
//!   coordinator that knows a leader and has applied its log, an agent registered with the farm),
//!   else 503 with the reason in one line.
//!
//! Each connection gets one request and is closed: a request head is read within
//! [`REQUEST_TIMEOUT`] and at most [`MAX_REQUEST_BYTES`], and at most [`MAX_CONNECTIONS`] are
//! served at once (others wait in the kernel's backlog). Scrapers, probes and curl need no more.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
pub const MAX_CONNECTIONS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    // The io error is part of the message, not a source: a caller printing the chain would
    // say it twice.
    #[error("metrics endpoint: cannot listen on {addr} (TCP): {error}")]
    Bind { addr: SocketAddr, error: std::io::Error },
}

/// What the endpoint answers with; called on every request.
pub struct Probes {
    /// The exposition text (refresh state gauges, then render the registry).
    pub metrics: Box<dyn Fn() -> String + Send + Sync>,
    /// `Ok` when ready, else why not.
    pub ready: Box<dyn Fn() -> Result<(), String> + Send + Sync>,
}

/// Binds the listener (so that a taken address fails the start, not a background task).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr).await.map_err(|error| MetricsError::Bind { addr, error })
}

/// Serves until the task running it is dropped (see [`crate::task::spawn`]).
pub async fn serve(listener: TcpListener, probes: Arc<Probes>) {
    // Families registered on first use are shown from the first scrape, at 0.
    super::transport_errors();
    crate::http::accept_bounded(listener, MAX_CONNECTIONS, REQUEST_TIMEOUT * 2, |stream| {
        let probes = probes.clone();
        async move {
            let _ = answer(stream, &probes).await;
        }
    })
    .await
}

async fn answer(mut stream: TcpStream, probes: &Probes) -> std::io::Result<()> {
    let head = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => return respond(&mut stream, 431, "request head too large\n", false).await,
        Ok(Err(e)) => return Err(e),
        Err(_) => return respond(&mut stream, 408, "no request within 5 s\n", false).await,
    };
    let line = head.lines().next().unwrap_or_default();
    let mut words = line.split(' ');
    let (method, target) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    if !words.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return respond(&mut stream, 400, "expected an HTTP/1.x request line\n", false).await;
    }
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return respond(&mut stream, 405, &format!("method {method} not allowed: only GET and HEAD\n"), false).await;
    }
    let path = target.split('?').next().unwrap_or_default();
    match path {
        "/metrics" => {
            let text = (probes.metrics)();
            respond(&mut stream, 200, &text, head_only).await
        }
        "/healthz" => respond(&mut stream, 200, "ok\n", head_only).await,
        "/readyz" => match (probes.ready)() {
            Ok(()) => respond(&mut stream, 200, "ready\n", head_only).await,
            Err(why) => respond(&mut stream, 503, &format!("not ready: {why}\n"), head_only).await,
        },
        _ => respond(&mut stream, 404, &format!("{path}: not found (try /metrics, /healthz, /readyz)\n"), head_only).await,
    }
}

/// The request head up to the blank line; `None` when it exceeds [`MAX_REQUEST_BYTES`].
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some(String::from_utf8_lossy(&buf[..end]).into_owned()));
        }
        if buf.len() > MAX_REQUEST_BYTES {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before the request ended"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn respond(stream: &mut TcpStream, status: u16, body: &str, head_only: bool) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    // Prometheus' text format is plain text; the version parameter is what scrapers look for.
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    stream.write_all(&out).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn answers_metrics_probes_and_refuses_the_rest() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let r = ready.clone();
        let probes = Probes {
            metrics: Box::new(|| "# HELP x X.\n# TYPE x counter\nx 1\n".into()),
            ready: Box::new(move || if r.load(std::sync::atomic::Ordering::Relaxed) { Ok(()) } else { Err("no leader".into()) }),
        };
        let _server = crate::task::spawn("metrics test", serve(listener, Arc::new(probes)));
        let m = get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(m.starts_with("HTTP/1.1 200 OK\r\n"), "{m}");
        assert!(m.contains("version=0.0.4") && m.ends_with("\r\n\r\n# HELP x X.\n# TYPE x counter\nx 1\n"), "{m}");
        assert!(get(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 200 "));
        let not_ready = get(addr, b"GET /readyz HTTP/1.1\r\n\r\n").await;
        assert!(not_ready.starts_with("HTTP/1.1 503 ") && not_ready.ends_with("not ready: no leader\n"), "{not_ready}");
        ready.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(get(addr, b"GET /readyz?verbose HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 200 "));
        assert!(get(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 405 "));
        assert!(get(addr, b"GET /nope HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 404 "));
        assert!(get(addr, b"hello\r\n\r\n").await.starts_with("HTTP/1.1 400 "));
        // Over the limit, but all of it read by the server before it answers (unread bytes
        // would make the kernel reset the connection before the client reads the answer).
        let huge = format!("GET /metrics HTTP/1.1\r\nX: {}", "a".repeat(9000 - 23));
        assert!(get(addr, huge.as_bytes()).await.starts_with("HTTP/1.1 431 "));
        let head = get(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200 ") && head.ends_with("\r\n\r\n"), "{head}");
    }
}
