//! The front door: every request a coordinator serves, who may send it, and where it runs
//! (here, or forwarded to the leader with the caller's identity). The work itself is done in
//! the rooms: [`auth`], [`blobs`], [`agents`], [`builds`], [`admin`].
//!
//! A connection without a client certificate may only join (exchange a token for one). Raft
//! RPCs, status and blob transfer are served by whichever coordinator receives them; everything
//! that reads or changes the cluster state runs on the leader.

use super::reply::{bad, err, Answer};
use super::{admin, agents, auth, blobs, builds, views, Node};
use crate::raft::{BuildId, SliceAttempt};
use kiln_shared::api::*;
use kiln_shared::transport;
use kiln_shared::wire::ErrorCode;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Serves one connection until it closes.
pub async fn serve(node: Arc<Node>, conn: quinn::Connection) {
    let principal = transport::peer_common_name(&conn).and_then(|cn| Principal::from_common_name(&cn));
    let remote = conn.remote_address();
    transport::serve_connection(conn, move |req: Request| {
        let node = node.clone();
        let principal = principal.clone();
        async move {
            // Raft keeps running through a drain: what requests in flight propose must commit.
            let _pass = match node.gate.enter() {
                Some(pass) => Some(pass),
                None if matches!(req, Request::Raft { .. }) => None,
                None => return Err(err(ErrorCode::Unavailable, format!("coordinator {} is shutting down; retry", node.id))),
            };
            let started = std::time::Instant::now();
            let kind = if tracing::enabled!(tracing::Level::DEBUG) { request_kind(&req) } else { String::new() };
            let answer = match principal {
                None => anonymous(&node, remote, req).await,
                Some(ref p) => {
                    let origin = node.cfg.listen;
                    dispatch(&node, p.clone(), origin, req).await
                }
            };
            tracing::debug!(coordinator = node.id, request = %kind, ms = started.elapsed().as_secs_f64() * 1e3, ok = answer.is_ok(), "served");
            answer
        }
    })
    .await;
}

/// The variant of a request, for logs.
fn request_kind(req: &Request) -> String {
    let text = format!("{req:?}");
    text.split(|c: char| !c.is_alphanumeric()).next().unwrap_or_default().to_string()
}

async fn anonymous(node: &Node, remote: SocketAddr, req: Request) -> Answer {
    match req {
        Request::Join { token, name, csr_der } => auth::join(node, &token, &name, &csr_der),
        Request::JoinPeer { id, token, csr_der } => auth::join_peer(node, remote, id, token.as_deref(), &csr_der),
        _ => Err(err(ErrorCode::Unauthenticated, "this connection has no client certificate: join with a token first")),
    }
}

fn allowed(role: &Role, req: &Request) -> bool {
    use Request::*;
    match req {
        Join { .. } | JoinPeer { .. } => false,
        Raft { .. } | Forward { .. } => *role == Role::Coordinator,
        Status | GetBlob { .. } => true,
        Register(_) | Poll { .. } | Events { .. } | SliceDone(_) | SliceFailed { .. } | Advertise(_) | Locate { .. } => {
            *role == Role::Agent
        }
        // An agent's peer endpoint serves these, not a coordinator.
        ChunkTable { .. } | GetChunk { .. } | GetRecord { .. } | AgentUsage | AgentPrune(_) => false,
        DiskUsage { .. } => matches!(role, Role::Admin | Role::User),
        Prune { .. } | CreateToken { .. } => *role == Role::Admin,
        // Agents send results back this way (`-o type=oci` on a farm).
        MissingBlobs { .. } | PutBlob { .. } => matches!(role, Role::Admin | Role::User | Role::Agent),
        Submit(_) | Watch { .. } | Contexts | Builders | Inspect { .. } => {
            matches!(role, Role::Admin | Role::User)
        }
        RemoveContext { .. } | CreateBuilder(_) | RemoveBuilder { .. } | AddCoordinator { .. } | RemoveCoordinator { .. } => {
            *role == Role::Admin
        }
    }
}

/// Runs an authenticated request here or on the leader.
pub async fn dispatch(node: &Node, p: Principal, origin: SocketAddr, req: Request) -> Answer {
    if !allowed(&p.role, &req) {
        return Err(err(ErrorCode::PermissionDenied, format!("a {} may not do this", p.role.as_str())));
    }
    match req {
        Request::Raft { rpc, json } => {
            let out = crate::raft::network::serve(&node.raft, rpc, &json).await.map_err(|e| bad(format!("raft message: {e}")))?;
            Ok(Response::Raft { json: out })
        }
        Request::Status => Ok(Response::Status(admin::status(node))),
        Request::GetBlob { digest, offset, len } => blobs::get_blob(node, &p, &digest, offset, len),
        Request::MissingBlobs { digests, owner } => blobs::missing(node, blobs::owner_of(&p, owner)?, digests),
        Request::PutBlob { digest, offset, data, last, owner } => {
            blobs::put_blob(node, blobs::owner_of(&p, owner)?, &digest, offset, &data, last)
        }
        Request::Submit(spec) if !blobs::owns_context(node, &p, &spec) => Err(err(
            ErrorCode::PermissionDenied,
            "the build names context or cache blobs this tenant has not uploaded to this coordinator; upload them first",
        )),
        Request::Forward { principal, origin, request } => {
            if !node.is_leader() {
                return Err(err(ErrorCode::Unavailable, format!("coordinator {} is no longer the leader; retry", node.id)));
            }
            if !allowed(&principal.role, &request) || matches!(*request, Request::Forward { .. }) {
                return Err(err(ErrorCode::PermissionDenied, "forwarded request not allowed"));
            }
            lead(node, principal, origin, *request).await
        }
        req if node.is_leader() => lead(node, p, origin, req).await,
        _ if node.is_elected() => {
            Err(err(ErrorCode::Unavailable, format!("coordinator {} was just elected and is catching up; retry", node.id)))
        }
        req => {
            let (leader, addr) =
                node.leader().ok_or_else(|| err(ErrorCode::Unavailable, "no leader is elected yet (an election is under way); retry"))?;
            let timeout = request_timeout(&node.cfg, &req);
            let forwarded = Request::Forward { principal: p, origin, request: Box::new(req) };
            match node.pool.call(addr, forwarded, timeout).await {
                Ok(r) => Ok(r),
                Err(transport::TransportError::Remote(e)) => Err(e),
                Err(e) => Err(err(ErrorCode::Unavailable, format!("the leader (coordinator {leader} at {addr}) is unreachable: {e}"))),
            }
        }
    }
}

/// How long a forwarded request may take: long polls take their wait.
fn request_timeout(cfg: &crate::config::CoordinatorConfig, req: &Request) -> Duration {
    Duration::from_millis(match req {
        Request::Poll { wait_ms, .. } | Request::Watch { wait_ms, .. } => u64::from(*wait_ms) + cfg.forward_poll_slack_ms,
        Request::RemoveContext { .. } => cfg.admin_call_timeout_ms,
        _ => cfg.forward_timeout_ms,
    })
}

/// Requests that need the cluster state: this coordinator is the leader.
async fn lead(node: &Node, p: Principal, origin: SocketAddr, req: Request) -> Answer {
    match req {
        Request::Register(info) => agents::register(node, &p, info).await,
        Request::Poll { agent, running, cache_bytes, wait_ms } => {
            let running = running.into_iter().map(SliceAttempt::from_wire).collect();
            agents::poll(node, &p, &agent, running, cache_bytes, wait_ms).await
        }
        Request::Events { build, slice, attempt, events } => {
            agents::events(node, &p, SliceAttempt::from_wire((build, slice, attempt)), events)
        }
        Request::SliceDone(outcome) => agents::slice_done(node, &p, outcome).await,
        Request::SliceFailed { build, slice, attempt, message } => {
            agents::slice_failed(node, &p, SliceAttempt::from_wire((build, slice, attempt)), message).await
        }
        Request::Submit(spec) => builds::submit(node, &p, origin, spec).await,
        Request::Advertise(inv) => agents::advertise(node, &p, &inv),
        Request::Locate { blobs, records } => Ok(Response::Holders(agents::locate(node, &p.name, &blobs, &records))),
        // Rare requests with large futures are boxed: every pending long poll holds this
        // function's future, sized for its largest arm.
        Request::CreateToken { role, tenant } => Box::pin(auth::create_token(node, role, tenant)).await,
        Request::DiskUsage { builder } => Box::pin(admin::storage(node, builder, Request::AgentUsage)).await,
        Request::Prune { builder, spec } => Box::pin(admin::storage(node, builder, Request::AgentPrune(spec))).await,
        Request::Watch { build, cursor, wait_ms } => builds::watch(node, &p, BuildId::from_wire(build), cursor, wait_ms).await,
        Request::Contexts => Ok(Response::Contexts(views::contexts(node))),
        Request::RemoveContext { name } => admin::remove_context(node, &name).await,
        Request::CreateBuilder(spec) => admin::create_builder(node, spec).await,
        Request::RemoveBuilder { name } => admin::remove_builder(node, name).await,
        Request::Builders => Ok(admin::builders(node)),
        Request::Inspect { name } => admin::inspect(node, &name),
        Request::AddCoordinator { id, addr } => admin::add_coordinator(node, id, addr).await,
        Request::RemoveCoordinator { id } => admin::remove_coordinator(node, id).await,
        other => Err(bad(format!("unexpected request {:?}", std::mem::discriminant(&other)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_request() -> Vec<Request> {
        let spec = CreateSpec::default();
        vec![
            Request::Join { token: String::new(), name: String::new(), csr_der: vec![] },
            Request::JoinPeer { id: 2, token: None, csr_der: vec![] },
            Request::Raft { rpc: RaftRpc::Vote, json: vec![] },
            Request::Status,
            Request::AddCoordinator { id: 4, addr: String::new() },
            Request::Register(AgentInfo {
                name: "a".into(),
                endpoint: String::new(),
                native: vec![],
                emulated: vec![],
                slots: 1,
                labels: Default::default(),
                version: String::new(),
            }),
            Request::Poll { agent: "a".into(), running: vec![], cache_bytes: 0, wait_ms: 0 },
            Request::GetBlob { digest: String::new(), offset: 0, len: 0 },
            Request::PutBlob { digest: String::new(), offset: 0, data: vec![], last: true, owner: None },
            Request::Watch { build: 1, cursor: 0, wait_ms: 0 },
            Request::CreateBuilder(spec),
            Request::RemoveContext { name: "a".into() },
            Request::Advertise(Inventory::default()),
            Request::Locate { blobs: vec![], records: vec![] },
            Request::GetChunk { digest: String::new(), index: 0 },
            Request::DiskUsage { builder: None },
            Request::Prune { builder: None, spec: PruneSpec::default() },
            Request::CreateToken { role: Role::User, tenant: "t".into() },
        ]
    }

    #[test]
    fn roles_get_what_they_need_and_nothing_else() {
        let table = |role: Role| -> Vec<bool> { every_request().iter().map(|r| allowed(&role, r)).collect() };
        // Join, JoinPeer, Raft, Status, AddCoordinator, Register, Poll, GetBlob, PutBlob, Watch, CreateBuilder, RemoveContext,
        // Advertise, Locate, GetChunk, DiskUsage, Prune, CreateToken
        let (t, f) = (true, false);
        assert_eq!(table(Role::Admin), [f, f, f, t, t, f, f, t, t, t, t, t, f, f, f, t, t, t]);
        assert_eq!(table(Role::User), [f, f, f, t, f, f, f, t, t, t, f, f, f, f, f, t, f, f]);
        assert_eq!(table(Role::Agent), [f, f, f, t, f, t, t, t, t, f, f, f, t, t, f, f, f, f]);
        assert_eq!(table(Role::Coordinator), [f, f, t, t, f, f, f, t, f, f, f, f, f, f, f, f, f, f]);
    }
}
