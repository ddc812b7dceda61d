//! What the console shows, fetched as the CLI fetches it: through [`dispatch::as_client`], with
//! the caller's principal, so that a follower forwards to the leader (whose soft state has the
//! agents' liveness and the builds' logs) and a user sees only their tenant's builds. Also the
//! JSON answers of `/api/farm`, `/api/builds` and `/api/builds/ID`, for scripts.

use crate::node::{dispatch, Node};
use kiln_shared::api::{
    BuildDetail, BuildEvent, BuildSummary, ClientRequest, ClientResponse, ClusterStatus, ContextView, HistoryFilter, Principal,
};
use kiln_shared::wire::{ErrorCode, RemoteError};
use serde::Serialize;

/// Builds listed at most by the console's list.
pub const LIST_LIMIT: u32 = 200;

#[derive(Serialize)]
pub struct Farm {
    pub status: ClusterStatus,
    pub agents: Vec<ContextView>,
}

#[derive(Serialize)]
pub struct Build {
    pub detail: BuildDetail,
    pub events: Vec<BuildEvent>,
}

fn unexpected(r: ClientResponse) -> RemoteError {
    RemoteError { code: ErrorCode::Internal, message: format!("unexpected answer {r:?}") }
}

pub async fn farm(node: &Node, p: &Principal) -> Result<Farm, RemoteError> {
    // The roles are this member's view of Raft; the agents are the leader's.
    let status = crate::node::admin::status(node);
    match dispatch::as_client(node, p.clone(), ClientRequest::Contexts).await? {
        ClientResponse::Contexts(mut agents) => {
            agents.sort_by(|a, b| a.info.name.cmp(&b.info.name));
            Ok(Farm { status, agents })
        }
        other => Err(unexpected(other)),
    }
}

/// The filter of a list page or `/api/builds`: `tenant`, `state` (running, completed, failed,
/// cancelled), `platform`, `ref`.
pub fn filter(req: &super::http::Request) -> Result<HistoryFilter, RemoteError> {
    let bad = |m: String| RemoteError { code: ErrorCode::BadRequest, message: m };
    let mut f = HistoryFilter { limit: LIST_LIMIT, ..Default::default() };
    if let Some(s) = req.param("state") {
        if !["running", "completed", "failed", "cancelled"].contains(&s) {
            return Err(bad(format!("state {s:?}: expected running, completed, failed or cancelled")));
        }
        f.status = Some(s.to_string());
    }
    if let Some(p) = req.param("platform") {
        f.platform = Some(p.parse().map_err(|e| bad(format!("platform {p:?}: {e}")))?);
    }
    f.tenant = req.param("tenant").map(str::to_string);
    f.reference = req.param("ref").map(str::to_string);
    Ok(f)
}

pub async fn builds(node: &Node, p: &Principal, f: HistoryFilter) -> Result<Vec<BuildSummary>, RemoteError> {
    match dispatch::as_client(node, p.clone(), ClientRequest::History(f)).await? {
        ClientResponse::History(b) => Ok(b),
        other => Err(unexpected(other)),
    }
}

pub async fn build(node: &Node, p: &Principal, id: u64) -> Result<Build, RemoteError> {
    let detail = match dispatch::as_client(node, p.clone(), ClientRequest::HistoryInspect { build: Some(id) }).await? {
        ClientResponse::BuildDetail(d) => *d,
        other => return Err(unexpected(other)),
    };
    let mut events = Vec::new();
    let mut cursor = 0;
    // As `kiln history export` reads them: until an answer brings nothing new.
    loop {
        let req = ClientRequest::Watch { build: id, cursor, wait_ms: 0 };
        let (more, next) = match dispatch::as_client(node, p.clone(), req).await? {
            ClientResponse::Build { events: more, cursor: next, .. } => (more, next),
            other => return Err(unexpected(other)),
        };
        let empty = more.is_empty();
        events.extend(more);
        if empty || next <= cursor {
            break;
        }
        cursor = next;
    }
    Ok(Build { detail, events })
}

/// The HTTP status of a refusal.
pub fn status_of(e: &RemoteError) -> u16 {
    match e.code {
        ErrorCode::BadRequest => 400,
        ErrorCode::Unauthenticated => 401,
        ErrorCode::PermissionDenied => 403,
        ErrorCode::BlobsMissing => 409,
        ErrorCode::NotFound => 404,
        ErrorCode::DeadlineExceeded => 504,
        ErrorCode::NotLeader | ErrorCode::Unavailable => 503,
        ErrorCode::Internal => 500,
    }
}

pub fn error_json(e: &RemoteError) -> serde_json::Value {
    serde_json::json!({ "error": e.message })
}
