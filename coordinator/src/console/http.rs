//! Just enough HTTP/1.1 for the console, in the manner of the metrics endpoint
//! (`kiln_shared::metrics::server`): one request per connection, then the connection is closed;
//! the head is read within [`REQUEST_TIMEOUT`] and at most [`MAX_HEAD_BYTES`], a body (only the
//! sign-in form has one) at most [`MAX_BODY_BYTES`]. Parsing is a pure function of the bytes
//! ([`parse_head`]), so that it is tested without sockets.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const MAX_HEAD_BYTES: usize = 16 * 1024;
pub const MAX_BODY_BYTES: usize = 4 * 1024;
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HttpError {
    #[error("the request head is over {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("the request body is over {MAX_BODY_BYTES} bytes")]
    BodyTooLarge,
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("the connection closed before the request ended")]
    Closed,
    #[error("no complete request within {} s", REQUEST_TIMEOUT.as_secs())]
    Timeout,
}

impl HttpError {
    pub fn status(&self) -> u16 {
        match self {
            HttpError::HeadTooLarge => 431,
            HttpError::BodyTooLarge => 413,
            HttpError::Timeout => 408,
            HttpError::Malformed(_) | HttpError::Closed => 400,
        }
    }
}

#[derive(Debug, Default, PartialEq)]
pub struct Request {
    pub method: String,
    /// Percent-decoded, without the query.
    pub path: String,
    /// Decoded `key=value` pairs, in order.
    pub query: Vec<(String, String)>,
    /// Names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }

    /// A cookie sent with the request.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        let all = self.headers.iter().filter(|(n, _)| n == "cookie").flat_map(|(_, v)| v.split(';'));
        all.filter_map(|c| c.trim().split_once('=')).find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

/// A request head (up to, without, the blank line): request line and headers.
pub fn parse_head(head: &str) -> Result<Request, HttpError> {
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut words = line.split(' ');
    let (method, target, version) = (words.next().unwrap_or_default(), words.next().unwrap_or_default(), words.next());
    if !version.is_some_and(|v| v.starts_with("HTTP/1.")) || words.next().is_some() || method.is_empty() {
        return Err(HttpError::Malformed("expected an HTTP/1.x request line".into()));
    }
    if !target.starts_with('/') {
        return Err(HttpError::Malformed(format!("request target {target:?} is not a path")));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = Vec::new();
    for l in lines {
        let (name, value) = l.split_once(':').ok_or_else(|| HttpError::Malformed(format!("header line {l:?} has no ':'")))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    Ok(Request { method: method.to_string(), path: decode(path, false), query: form(query), headers, body: vec![] })
}

/// `application/x-www-form-urlencoded` (a query string or the sign-in form), decoded.
pub fn form(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k, true), decode(v, true))
        })
        .collect()
}

/// Percent-decoding (and `+` as a space in forms); invalid escapes are kept as they are.
fn decode(s: &str, plus: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let hex = |c: u8| (c as char).to_digit(16);
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes a query value (everything but RFC 3986's unreserved characters and `/`).
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// Reads one request: its head, then as many body bytes as `Content-Length` says.
pub async fn read(stream: &mut TcpStream) -> Result<Request, HttpError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, read_inner(stream)).await {
        Ok(r) => r,
        Err(_) => Err(HttpError::Timeout),
    }
}

async fn read_inner(stream: &mut TcpStream) -> Result<Request, HttpError> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 2048];
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(HttpError::HeadTooLarge);
        }
        let n = stream.read(&mut chunk).await.map_err(|_| HttpError::Closed)?;
        if n == 0 {
            return Err(HttpError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| HttpError::Malformed("the request head is not UTF-8".into()))?;
    let mut req = parse_head(head)?;
    let len = match req.header("content-length") {
        None => 0,
        Some(v) => v.parse::<usize>().map_err(|_| HttpError::Malformed(format!("Content-Length {v:?}")))?,
    };
    if len > MAX_BODY_BYTES {
        return Err(HttpError::BodyTooLarge);
    }
    let mut body = buf[end + 4..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut chunk).await.map_err(|_| HttpError::Closed)?;
        if n == 0 {
            return Err(HttpError::Closed);
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    req.body = body;
    Ok(req)
}

pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// What every page and answer may load: its own scripts and styles, nothing from elsewhere
/// (style attributes place the timeline's bars).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response { status, content_type, headers: vec![], body: body.into() }
    }

    pub fn html(status: u16, body: String) -> Response {
        Response::new(status, "text/html; charset=utf-8", body)
    }

    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response::new(status, "application/json", serde_json::to_vec(value).unwrap_or_default())
    }

    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response::new(status, "text/plain; charset=utf-8", body.into())
    }

    /// 303 See Other: after a form, and to the sign-in page.
    pub fn redirect(to: &str) -> Response {
        Response::text(303, format!("see {to}\n")).with("Location", to.to_string())
    }

    pub fn with(mut self, name: &'static str, value: String) -> Response {
        self.headers.push((name, value));
        self
    }

    pub async fn write(&self, stream: &mut TcpStream, head_only: bool) -> std::io::Result<()> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\nContent-Security-Policy: {CSP}\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !head_only {
            bytes.extend_from_slice(&self.body);
        }
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        303 => "See Other",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        504 => "Gateway Timeout",
        _ => "Service Unavailable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_and_bad_ones_are_refused() {
        let r = parse_head("GET /builds?tenant=a%20b&state=&platform=linux%2Farm64 HTTP/1.1\r\nHost: x\r\nCookie: a=1; kiln_session=abc\r\nAuthorization: Bearer t").unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/builds");
        assert_eq!(r.param("tenant"), Some("a b"));
        assert_eq!(r.param("state"), None, "an empty value is no filter");
        assert_eq!(r.param("platform"), Some("linux/arm64"));
        assert_eq!(r.cookie("kiln_session"), Some("abc"));
        assert_eq!(r.header("authorization"), Some("Bearer t"));
        assert!(matches!(parse_head("hello"), Err(HttpError::Malformed(_))));
        assert!(matches!(parse_head("GET http://x/ HTTP/1.1"), Err(HttpError::Malformed(_))));
        assert!(matches!(parse_head("GET / HTTP/1.1\r\nno colon"), Err(HttpError::Malformed(_))));
        assert_eq!(HttpError::HeadTooLarge.status(), 431);
    }

    #[test]
    fn forms_decode_plus_and_percent_and_keep_bad_escapes() {
        assert_eq!(form("token=a+b%3D%3D&next=%2Fbuilds%2F3"), vec![("token".into(), "a b==".into()), ("next".into(), "/builds/3".into())]);
        assert_eq!(form("x=%zz&y=%4"), vec![("x".into(), "%zz".into()), ("y".into(), "%4".into())]);
        assert_eq!(form("x=%e2%82%ac"), vec![("x".into(), "€".into())]);
        assert_eq!(form(""), vec![]);
        assert_eq!(form(&format!("n={}", encode("/builds?state=a b&x=é"))), vec![("n".into(), "/builds?state=a b&x=é".into())]);
    }
}
