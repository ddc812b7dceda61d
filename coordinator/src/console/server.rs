//! The console's listener and routes. Pages (`/farm`, `/builds`, `/builds/ID`) answer HTML, and
//! with `?partial=1` only their live part (what the page's script swaps in); `/api/...` answers
//! the same data as JSON; `/login` and `/logout` handle the session cookie; `/static/...` is
//! the script and the style sheet. Everything but the sign-in page and the static files needs
//! a caller (a bearer token or a session): pages send a stranger to the sign-in page, the API
//! answers 401.

use super::api::{self, status_of};
use super::auth::{self, Sessions};
use super::http::{self, Request, Response};
use super::{pages, timeline, ConsoleError};
use crate::node::Node;
use kiln_shared::api::{BuildState, Principal};
use kiln_shared::task::TaskHandle;
use kiln_shared::wire::RemoteError;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// Connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 64;
/// A whole answer (a forwarded read included) may take this long.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(40);

const SCRIPT: &str = include_str!("static/console.js");
const STYLE: &str = include_str!("static/console.css");

pub struct Served {
    /// Where it listens (the port chosen when the address named port 0).
    pub addr: SocketAddr,
    pub task: TaskHandle<()>,
}

struct Console {
    node: Arc<OnceLock<Arc<Node>>>,
    sessions: Sessions,
}

/// Binds `addr` (a loopback address) and serves until the returned task is dropped; `node`
/// is filled in once the coordinator is up (until then every page answers 503).
pub async fn serve(addr: SocketAddr, node: Arc<OnceLock<Arc<Node>>>) -> Result<Served, ConsoleError> {
    if !addr.ip().is_loopback() {
        return Err(ConsoleError::NotLoopback { addr });
    }
    let listener = TcpListener::bind(addr).await.map_err(|error| ConsoleError::Bind { addr, error })?;
    let addr = listener.local_addr().map_err(|error| ConsoleError::Bind { addr, error })?;
    let console = Arc::new(Console { node, sessions: Sessions::default() });
    Ok(Served { addr, task: kiln_shared::task::spawn("web console", accept(listener, console)) })
}

async fn accept(listener: TcpListener, console: Arc<Console>) {
    kiln_shared::http::accept_bounded(listener, MAX_CONNECTIONS, ANSWER_TIMEOUT, |stream| {
        let console = console.clone();
        async move {
            let _ = connection(stream, &console).await;
        }
    })
    .await
}

async fn connection(mut stream: TcpStream, console: &Console) -> std::io::Result<()> {
    let req = match http::read(&mut stream).await {
        Ok(req) => req,
        Err(http::HttpError::Closed) => return Ok(()),
        Err(e) => return Response::text(e.status(), format!("{e}\n")).write(&mut stream, false).await,
    };
    let head_only = req.method == "HEAD";
    let response = match console.node.get() {
        None => Response::text(503, "the coordinator is starting; retry\n"),
        Some(node) => match node.gate.enter() {
            None => Response::text(503, format!("coordinator {} is shutting down\n", node.id)),
            Some(_pass) => route(console, node, &req).await,
        },
    };
    response.write(&mut stream, head_only).await
}

async fn route(console: &Console, node: &Node, req: &Request) -> Response {
    let get = req.method == "GET" || req.method == "HEAD";
    match (req.method.as_str(), req.path.as_str()) {
        (_, "/static/console.js") if get => Response::new(200, "text/javascript; charset=utf-8", SCRIPT),
        (_, "/static/console.css") if get => Response::new(200, "text/css; charset=utf-8", STYLE),
        (_, "/login") if get => Response::html(200, pages::login(&auth::safe_next(req.param("next")), None)),
        ("POST", "/login") => login(console, node, req),
        ("POST", "/logout") => {
            if let Some(id) = req.cookie(auth::COOKIE) {
                console.sessions.logout(id);
            }
            Response::redirect("/login").with("Set-Cookie", auth::cookie(""))
        }
        (_, "/") if get => Response::redirect("/farm"),
        _ if !get => Response::text(405, format!("method {} not allowed here\n", req.method)).with("Allow", "GET, HEAD".into()),
        (_, path) => {
            let api = path.starts_with("/api/");
            match auth::caller(&console.sessions, node, req) {
                Ok(Some(p)) if api => json(node, &p, req).await,
                Ok(Some(p)) => page(node, &p, req).await,
                Ok(None) if api => Response::json(
                    401,
                    &serde_json::json!({ "error": "sign in: send Authorization: Bearer TOKEN (a user or admin token)" }),
                )
                .with("WWW-Authenticate", "Bearer".into()),
                Ok(None) => Response::redirect(&format!("/login?next={}", http::encode(&here(req, false)))),
                Err(e) if api => Response::json(status_of(&e), &api::error_json(&e)),
                Err(e) => Response::html(status_of(&e), pages::error(None, status_of(&e), &e.message)),
            }
        }
    }
}

fn login(console: &Console, node: &Node, req: &Request) -> Response {
    let form = http::form(&String::from_utf8_lossy(&req.body));
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let next = auth::safe_next(field("next"));
    match console.sessions.login(node, field("token").unwrap_or_default()) {
        Ok((id, _)) => Response::redirect(&next).with("Set-Cookie", auth::cookie(&id)),
        Err(e) => Response::html(401, pages::login(&next, Some(&format!("Not signed in: {}", e.message)))),
    }
}

/// The request's path and query, optionally as the live fragment (`partial=1`).
fn here(req: &Request, partial: bool) -> String {
    let mut query: Vec<String> =
        req.query.iter().filter(|(k, _)| k != "partial").map(|(k, v)| format!("{}={}", http::encode(k), http::encode(v))).collect();
    if partial {
        query.push("partial=1".into());
    }
    if query.is_empty() {
        req.path.clone()
    } else {
        format!("{}?{}", req.path, query.join("&"))
    }
}

/// `/builds/ID`'s id.
fn build_id(path: &str, prefix: &str) -> Option<Result<u64, RemoteError>> {
    let rest = path.strip_prefix(prefix)?;
    Some(
        rest.trim_start_matches('#')
            .parse()
            .map_err(|_| RemoteError { code: kiln_shared::wire::ErrorCode::NotFound, message: format!("{rest:?} is not a build id") }),
    )
}

async fn page(node: &Node, p: &Principal, req: &Request) -> Response {
    let partial = req.param("partial") == Some("1");
    let poll = here(req, true);
    let answer = |title: &str, above: String, live: bool, main: String| {
        let r = if partial {
            Response::html(200, main)
        } else {
            Response::html(200, pages::page(title, Some(p), &above, live.then_some(poll.as_str()), &main))
        };
        if live {
            r
        } else {
            r.with("X-Kiln-Final", "1".into())
        }
    };
    let result = match req.path.as_str() {
        "/farm" => api::farm(node, p).await.map(|f| answer("Farm", String::new(), true, pages::farm(&f))),
        "/builds" => match api::filter(req) {
            Ok(f) => {
                let above = format!("<div class=\"above\"><h1>Builds</h1>{}</div>", pages::filters(&f, p));
                api::builds(node, p, f).await.map(|list| answer("Builds", above, true, pages::builds(&list)))
            }
            Err(e) => Err(e),
        },
        path => match build_id(path, "/builds/") {
            Some(Ok(id)) => api::build(node, p, id).await.map(|b| {
                let live = b.detail.summary.state == BuildState::Running;
                answer(&format!("Build {id}"), String::new(), live, timeline::build(&b))
            }),
            Some(Err(e)) => Err(e),
            None => Err(RemoteError {
                code: kiln_shared::wire::ErrorCode::NotFound,
                message: format!("{path}: no such page (try /farm or /builds)"),
            }),
        },
    };
    result.unwrap_or_else(|e| {
        let status = status_of(&e);
        if partial {
            Response::text(status, format!("{}\n", e.message))
        } else {
            Response::html(status, pages::error(Some(p), status, &e.message))
        }
    })
}

async fn json(node: &Node, p: &Principal, req: &Request) -> Response {
    let value = match req.path.as_str() {
        "/api/farm" => api::farm(node, p).await.map(|f| serde_json::to_value(f).unwrap_or_default()),
        "/api/builds" => match api::filter(req) {
            Ok(f) => api::builds(node, p, f).await.map(|b| serde_json::to_value(b).unwrap_or_default()),
            Err(e) => Err(e),
        },
        path => match build_id(path, "/api/builds/") {
            Some(Ok(id)) => api::build(node, p, id).await.map(|b| serde_json::to_value(b).unwrap_or_default()),
            Some(Err(e)) => Err(e),
            None => Err(RemoteError {
                code: kiln_shared::wire::ErrorCode::NotFound,
                message: format!("{path}: no such endpoint (try /api/farm, /api/builds, /api/builds/ID)"),
            }),
        },
    };
    match value {
        Ok(v) => Response::json(200, &v),
        Err(e) => Response::json(status_of(&e), &api::error_json(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_fragment_keeps_the_filters() {
        let req = http::parse_head("GET /builds?state=running&platform=linux%2Farm64&partial=1 HTTP/1.1").unwrap();
        assert_eq!(here(&req, true), "/builds?state=running&platform=linux/arm64&partial=1");
        assert_eq!(here(&req, false), "/builds?state=running&platform=linux/arm64");
        assert!(matches!(build_id("/builds/12", "/builds/"), Some(Ok(12))));
        assert!(matches!(build_id("/builds/x", "/builds/"), Some(Err(_))));
        assert!(build_id("/farm", "/builds/").is_none());
    }

    #[tokio::test]
    async fn a_non_loopback_address_is_refused() {
        let e = serve("0.0.0.0:0".parse().unwrap(), Arc::default()).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("not a loopback address"), "{e}");
    }

    #[tokio::test]
    async fn before_the_coordinator_is_up_pages_answer_503() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let served = serve("127.0.0.1:0".parse().unwrap(), Arc::default()).await.unwrap();
        let mut s = TcpStream::connect(served.addr).await.unwrap();
        s.write_all(b"GET /farm HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 503 ") && out.contains("starting"), "{out}");
    }
}
