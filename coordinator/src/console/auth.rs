//! Who is asking: a user or admin token, sent as `Authorization: Bearer TOKEN` (scripts) or
//! given once to the sign-in form, which answers with a session cookie (HttpOnly, SameSite
//! Strict: page scripts cannot read it and other sites cannot send it). Tokens are checked
//! against the replicated token table as the QUIC join checks them ([`node::auth::principal`]),
//! so any coordinator's console accepts any token of its cluster.
//!
//! Sessions live in this coordinator's memory only: a restart signs everyone out, and a cookie
//! is good only on the console that issued it (it is that console's origin anyway). A session
//! keeps its token's hash and is dropped once the token is gone from the cluster state.

use super::http::Request;
use crate::node::{self, Node};
use kiln_shared::api::{Principal, Token};
use kiln_shared::wire::RemoteError;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const COOKIE: &str = "kiln_session";
/// How long a session lasts from sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; the oldest go first.
const MAX_SESSIONS: usize = 1024;

struct Session {
    principal: Principal,
    token_hash: String,
    expires: Instant,
}

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Signs in with a token: the new session's id, and who it is.
    pub fn login(&self, node: &Node, token: &str) -> Result<(String, Principal), RemoteError> {
        let token = token.trim();
        let principal = node::auth::principal(node, token)?;
        let hash = Token::parse(token)
            .map(|t| t.hash())
            .map_err(|e| RemoteError { code: kiln_shared::wire::ErrorCode::Unauthenticated, message: e })?;
        let id = node::random_hex(32).map_err(|e| RemoteError { code: kiln_shared::wire::ErrorCode::Internal, message: e.to_string() })?;
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, s| s.expires > now);
        while map.len() >= MAX_SESSIONS {
            let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| k.clone()) else { break };
            map.remove(&oldest);
        }
        map.insert(id.clone(), Session { principal: principal.clone(), token_hash: hash, expires: now + SESSION_TTL });
        Ok((id, principal))
    }

    pub fn logout(&self, id: &str) {
        self.lock().remove(id);
    }

    /// The principal of a live session whose token the cluster still has.
    fn session(&self, node: &Node, id: &str) -> Option<Principal> {
        let (principal, hash) = {
            let map = self.lock();
            let s = map.get(id).filter(|s| s.expires > Instant::now())?;
            (s.principal.clone(), s.token_hash.clone())
        };
        if node.read(|s| s.tokens.contains_key(&hash)) {
            Some(principal)
        } else {
            self.logout(id);
            None
        }
    }
}

/// Who sent `req`: a bearer token first, else the session cookie. `Err` carries why a bearer
/// token was refused; `Ok(None)` is nobody (no token, no live session).
pub fn caller(sessions: &Sessions, node: &Node, req: &Request) -> Result<Option<Principal>, RemoteError> {
    if let Some(auth) = req.header("authorization") {
        let token = bearer(auth).ok_or_else(|| RemoteError {
            code: kiln_shared::wire::ErrorCode::Unauthenticated,
            message: "the Authorization header must be `Bearer TOKEN` (a user or admin token)".into(),
        })?;
        return node::auth::principal(node, token).map(Some);
    }
    Ok(req.cookie(COOKIE).and_then(|id| sessions.session(node, id)))
}

/// The token of an `Authorization: Bearer TOKEN` header (the scheme is case-insensitive).
fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

/// The cookie that carries a session (or, with an empty id, ends it).
pub fn cookie(id: &str) -> String {
    let age = if id.is_empty() { 0 } else { SESSION_TTL.as_secs() };
    format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={age}")
}

/// Where to go after signing in: a path of this console only (never another site).
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        // No control characters either: the path goes into a Location header.
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && !n.starts_with("/login")
                && !n.chars().any(char::is_control) =>
        {
            n.to_string()
        }
        _ => "/".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_this_console() {
        assert_eq!(safe_next(Some("/builds/3")), "/builds/3");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil.example")), "/");
        assert_eq!(safe_next(Some("/login")), "/");
        assert_eq!(safe_next(Some("/farm\r\nSet-Cookie: x=1")), "/", "no header injection");
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn only_bearer_authorization_is_taken() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic YWJj"), None);
        assert_eq!(bearer("abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }

    #[test]
    fn cookies_are_http_only_and_strict() {
        let c = cookie("abc");
        assert!(c.starts_with("kiln_session=abc;") && c.contains("HttpOnly") && c.contains("SameSite=Strict"), "{c}");
        assert!(cookie("").contains("Max-Age=0"));
    }
}
