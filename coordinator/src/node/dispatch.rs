//! The front door: every request a coordinator serves, which protocol a caller may speak, and
//! where it runs (here, or forwarded to the leader with the caller's identity). The work itself
//! is done in the rooms: [`auth`], [`blobs`], [`agents`], [`builds`], [`admin`].
//!
//! A frame names its protocol ([`Call`]); the connection's certificate decides which one it may
//! speak ([`speaks`]): without a certificate, joining only; an admin or a user, the CLI's (some
//! verbs for admins only, [`ClientRequest::admin_only`]); an agent, the agent protocol; a
//! coordinator, the coordinator protocol. Each protocol has its own handler, typed by it. Raft
//! RPCs, status and blob transfer are served by whichever coordinator receives them;
//! everything that reads or changes the cluster state runs on the leader.

use super::reply::{bad, err, Answer};
use super::{admin, agents, auth, blobs, builds, history, session, views, Node};
use crate::raft::{BuildId, SliceAttempt};
use kiln_shared::api::*;
use kiln_shared::transport;
use kiln_shared::wire::{ErrorCode, RemoteError};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Requests another coordinator may have in flight on one connection (forwarded long polls).
const COORDINATOR_STREAMS: u32 = 20_000;
/// Streams a CLI may open at once on its connection to a coordinator (quinn's default).
const CLIENT_STREAMS: u32 = 100;

/// Serves one connection until it closes.
pub async fn serve(node: Arc<Node>, conn: quinn::Connection) {
    let principal = transport::peer_common_name(&conn).and_then(|cn| Principal::from_common_name(&cn));
    let key = transport::peer_key_fingerprint(&conn);
    let remote = conn.remote_address();
    // A connection may open transport::MANY_STREAMS streams at once to begin with: enough for
    // an agent or a joining client, whose state the coordinator holds thousands of times.
    match principal.as_ref().map(|p| &p.role) {
        // A follower forwards the requests of every agent and client connected to it over
        // this one connection, a held poll each: quinn's 100 streams would queue them.
        Some(Role::Coordinator) => conn.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(COORDINATOR_STREAMS)),
        // A CLI watches, uploads and submits for every build it runs (a bake's targets at once).
        Some(Role::Admin | Role::User) => conn.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(CLIENT_STREAMS)),
        Some(Role::Agent) | None => {}
    }
    transport::serve_connection(conn, move |call: Call| -> Boxed<'static, Reply> {
        let node = node.clone();
        let (principal, key) = (principal.clone(), key.clone());
        match (principal, call) {
            // The leader holds one poll per agent for as long as the agent waits: the future of
            // that request is all it keeps of it besides the stream, so it has its own.
            (Some(p), Tagged::Agent(AgentRequest::Poll { agent, running, cache_bytes, wait_ms }))
                if p.role == Role::Agent && node.is_leader() =>
            {
                Box::pin(held_poll(node, p, key, agent, running, cache_bytes, wait_ms))
            }
            (principal, call) => Box::pin(request(node, principal, key, remote, call)),
        }
    })
    .await;
}

/// One request from the connection of `principal` (none: a joining client).
async fn request(node: Arc<Node>, principal: Option<Principal>, key: Option<String>, remote: SocketAddr, call: Call) -> Answer<Reply> {
    // Raft keeps running through a drain: what requests in flight propose must commit.
    let _pass = match node.gate.enter() {
        Some(pass) => Some(pass),
        None if matches!(call, Tagged::Coordinator(CoordinatorRequest::Raft { .. })) => None,
        None => return Err(shutting_down(&node)),
    };
    let started = std::time::Instant::now();
    let kind = if tracing::enabled!(tracing::Level::DEBUG) { request_kind(&call) } else { String::new() };
    let answer = match principal {
        None => anonymous(&node, remote, call).await,
        Some(p) => {
            let origin = node.cfg.listen;
            authenticated(&node, p, key, origin, call).await
        }
    };
    served(&node, &kind, started, &answer);
    answer
}

/// The debug line of a request served.
fn served(node: &Node, kind: &str, started: std::time::Instant, answer: &Answer<Reply>) {
    tracing::debug!(coordinator = node.id, request = %kind, ms = started.elapsed().as_secs_f64() * 1e3, ok = answer.is_ok(), "served");
}

/// An agent's poll on the leader (see [`serve`]): what [`authenticated`] checks for an agent,
/// then the poll.
async fn held_poll(
    node: Arc<Node>,
    p: Principal,
    key: Option<String>,
    agent: String,
    running: Vec<(u64, u32, u32)>,
    cache_bytes: u64,
    wait_ms: u32,
) -> Answer<Reply> {
    let Some(_pass) = node.gate.enter() else {
        return Err(shutting_down(&node));
    };
    let started = std::time::Instant::now();
    agent_key_holds(&node, &p, key.as_deref())?;
    let running = running.into_iter().map(SliceAttempt::from_wire).collect();
    let answer = agents::poll(&node, &p, &agent, running, cache_bytes, wait_ms).await.map(Tagged::Agent);
    served(&node, "agent:Poll", started, &answer);
    answer
}

fn shutting_down(node: &Node) -> RemoteError {
    err(ErrorCode::Unavailable, format!("coordinator {} is shutting down; retry", node.id))
}

/// The protocol and variant of a request, for logs.
fn request_kind(call: &Call) -> String {
    let text = match call {
        Tagged::Join(r) => format!("{r:?}"),
        Tagged::Client(r) => format!("{r:?}"),
        Tagged::Agent(r) => format!("{r:?}"),
        Tagged::Coordinator(r) => format!("{r:?}"),
    };
    let variant = text.split(|c: char| !c.is_alphanumeric()).next().unwrap_or_default();
    format!("{}:{variant}", call.protocol())
}

async fn anonymous(node: &Node, remote: SocketAddr, call: Call) -> Answer<Reply> {
    match call {
        Tagged::Join(JoinRequest::Token { token, name, csr_der }) => auth::join(node, &token, &name, &csr_der).map(Tagged::Join),
        Tagged::Join(JoinRequest::Peer { id, token, csr_der }) => {
            auth::join_peer(node, remote, id, token.as_deref(), &csr_der).map(Tagged::Join)
        }
        _ => Err(err(ErrorCode::Unauthenticated, "this connection has no client certificate: join with a token first")),
    }
}

/// Which protocol a certificate's role may speak. Joining is for connections without one.
fn speaks<J, C, A, K>(role: &Role, call: &Tagged<J, C, A, K>) -> bool {
    matches!(
        (role, call),
        (Role::Admin | Role::User, Tagged::Client(_)) | (Role::Agent, Tagged::Agent(_)) | (Role::Coordinator, Tagged::Coordinator(_))
    )
}

/// Whether a role may send a request of the CLI's protocol.
fn allowed(role: &Role, req: &ClientRequest) -> bool {
    match role {
        Role::Admin => true,
        Role::User => !req.admin_only(),
        Role::Agent | Role::Coordinator => false,
    }
}

/// Whether a forwarded request is one its caller could have sent itself.
fn forwardable(role: &Role, req: &Forwarded) -> bool {
    match req {
        Forwarded::Client(r) => allowed(role, r),
        Forwarded::Agent(_) => *role == Role::Agent,
    }
}

fn denied(role: &Role) -> RemoteError {
    err(ErrorCode::PermissionDenied, format!("a {} may not do this", role.as_str()))
}

/// An agent's certificate is refused once its key is revoked, or if its name is bound to
/// another key (a second agent under a live agent's name).
fn agent_key_holds(node: &Node, p: &Principal, key: Option<&str>) -> Result<(), RemoteError> {
    let key = key.ok_or_else(|| err(ErrorCode::Unauthenticated, "the agent's certificate has no readable key"))?;
    node.read(|s| s.agent_may_join(&p.name, key)).map_err(|why| err(ErrorCode::PermissionDenied, why))
}

/// Runs an authenticated request by the handler of its protocol.
async fn authenticated(node: &Node, p: Principal, key: Option<String>, origin: SocketAddr, call: Call) -> Answer<Reply> {
    if !speaks(&p.role, &call) {
        return Err(denied(&p.role));
    }
    match call {
        // A held request (a CLI's watch, a follower's forwarded poll) keeps this future, sized
        // for its largest arm: the protocols' handlers are boxed, made in a plain function
        // (made here, the unboxed future would take room in this one too).
        Tagged::Client(req) => boxed_client(node, p, origin, req).await.map(Tagged::Client),
        Tagged::Agent(req) => {
            agent_key_holds(node, &p, key.as_deref())?;
            boxed_agent(node, p, key, origin, req).await.map(Tagged::Agent)
        }
        Tagged::Coordinator(req) => boxed_coordinator(node, req).await.map(Tagged::Coordinator),
        Tagged::Join(_) => Err(denied(&p.role)),
    }
}

/// A protocol handler's future on the heap (see [`authenticated`]).
type Boxed<'a, R> = Pin<Box<dyn Future<Output = Answer<R>> + Send + 'a>>;

fn boxed_client(node: &Node, p: Principal, origin: SocketAddr, req: ClientRequest) -> Boxed<'_, ClientResponse> {
    Box::pin(client(node, p, origin, req))
}

fn boxed_agent(node: &Node, p: Principal, key: Option<String>, origin: SocketAddr, req: AgentRequest) -> Boxed<'_, AgentResponse> {
    Box::pin(agent(node, p, key, origin, req))
}

fn boxed_coordinator(node: &Node, req: CoordinatorRequest) -> Boxed<'_, CoordinatorResponse> {
    Box::pin(coordinator(node, req))
}

/// The CLI's protocol: status and blobs here, the rest on the leader.
async fn client(node: &Node, p: Principal, origin: SocketAddr, req: ClientRequest) -> Answer<ClientResponse> {
    let key = None;
    if !allowed(&p.role, &req) {
        return Err(denied(&p.role));
    }
    match req {
        ClientRequest::Status => Ok(ClientResponse::Status(admin::status(node))),
        ClientRequest::Blob(b) => blobs::serve(node, &p, b).map(ClientResponse::Blob),
        ClientRequest::PruneCoordinator { spec } => {
            // Filesystem work, off the runtime's other tasks (the runtime is multi-threaded).
            let report = tokio::task::block_in_place(|| super::blob_gc::prune(node, &spec));
            Ok(ClientResponse::CoordinatorPruned { coordinator: node.id, report })
        }
        ClientRequest::Submit(mut spec) => {
            // A context too large to travel inline: its entries, from their manifest blob.
            let manifest = match spec.context_manifest {
                // Reading and hashing it blocks: off the runtime's other tasks.
                Some(_) => tokio::task::block_in_place(|| blobs::manifest_entries(node, &spec))?,
                None => None,
            };
            if !blobs::owns_context(node, &p, &spec, manifest.as_deref()) {
                return Err(blobs::missing_refusal());
            }
            // Before the build is accepted its blobs are on a second coordinator too.
            spec.replicas = super::replicate::replicate(node, p.tenant(), &spec, manifest.as_deref()).await;
            match on_leader(node, p, key, origin, Forwarded::Client(ClientRequest::Submit(spec))).await? {
                ForwardedResponse::Client(r) => Ok(r),
                other => Err(mismatch(&other)),
            }
        }
        req => match on_leader(node, p, key, origin, Forwarded::Client(req)).await? {
            ForwardedResponse::Client(r) => Ok(r),
            other => Err(mismatch(&other)),
        },
    }
}

/// A CLI request on behalf of `p` from inside this coordinator (the web console): the same
/// permissions, and forwarded to the leader as the CLI's are.
pub async fn as_client(node: &Node, p: Principal, req: ClientRequest) -> Answer<ClientResponse> {
    client(node, p, node.cfg.listen, req).await
}

/// The agent protocol: blobs here, the rest on the leader.
async fn agent(node: &Node, p: Principal, key: Option<String>, origin: SocketAddr, req: AgentRequest) -> Answer<AgentResponse> {
    match req {
        AgentRequest::Blob(b, grant) => blobs::serve_agent(node, &p, b, grant.as_ref()).map(AgentResponse::Blob),
        req => match on_leader(node, p, key, origin, Forwarded::Agent(req)).await? {
            ForwardedResponse::Agent(r) => Ok(r),
            other => Err(mismatch(&other)),
        },
    }
}

fn mismatch(r: &ForwardedResponse) -> RemoteError {
    err(ErrorCode::Internal, format!("the leader answered with a response of another protocol: {r:?}"))
}

/// The coordinator protocol.
async fn coordinator(node: &Node, req: CoordinatorRequest) -> Answer<CoordinatorResponse> {
    match req {
        CoordinatorRequest::Raft { rpc, json } => {
            // Boxed: a forwarded poll, held, keeps this function's future.
            let out = Box::pin(crate::raft::network::serve(&node.raft, rpc, &json)).await.map_err(|e| bad(format!("raft message: {e}")))?;
            Ok(CoordinatorResponse::Raft { json: out })
        }
        CoordinatorRequest::Status => Ok(CoordinatorResponse::Status(admin::status(node))),
        CoordinatorRequest::Blob(b) => {
            let peer = Principal { role: Role::Coordinator, name: "peer".into() };
            blobs::serve(node, &peer, b).map(CoordinatorResponse::Blob)
        }
        CoordinatorRequest::Forward { principal, origin, request, key } => {
            if !node.is_leader() {
                return Err(err(ErrorCode::Unavailable, format!("coordinator {} is no longer the leader; retry", node.id)));
            }
            if !forwardable(&principal.role, &request) {
                return Err(err(ErrorCode::PermissionDenied, "forwarded request not allowed"));
            }
            if principal.role == Role::Agent {
                agent_key_holds(node, &principal, key.as_deref())?;
            }
            lead(node, principal, key, origin, *request).await.map(CoordinatorResponse::Forwarded)
        }
    }
}

/// Runs a request that needs the cluster state on the leader: here, or forwarded to it.
async fn on_leader(node: &Node, p: Principal, key: Option<String>, origin: SocketAddr, req: Forwarded) -> Answer<ForwardedResponse> {
    if node.is_leader() {
        return lead(node, p, key, origin, req).await;
    }
    if node.is_elected() {
        return Err(err(
            ErrorCode::Unavailable,
            format!("coordinator {} was just elected and is catching up, or no quorum hears it; retry", node.id),
        ));
    }
    let (leader, addr) =
        node.leader().ok_or_else(|| err(ErrorCode::Unavailable, "no leader is elected yet (an election is under way); retry"))?;
    let timeout = request_timeout(&node.cfg, &req);
    let forwarded = CoordinatorRequest::Forward { principal: p, origin, request: Box::new(req), key };
    // Boxed: a poll held here on the leader keeps this function's future.
    match Box::pin(node.pool.coordinator(addr, &forwarded, timeout)).await {
        Ok(CoordinatorResponse::Forwarded(r)) => Ok(r),
        Ok(other) => Err(err(ErrorCode::Internal, format!("the leader answered a forwarded request with {other:?}"))),
        Err(transport::TransportError::Remote(e)) => Err(e),
        Err(e) => Err(err(ErrorCode::Unavailable, format!("the leader (coordinator {leader} at {addr}) is unreachable: {e}"))),
    }
}

/// How long a forwarded request may take: long polls take their wait.
fn request_timeout(cfg: &crate::config::CoordinatorConfig, req: &Forwarded) -> Duration {
    Duration::from_millis(match req {
        Forwarded::Agent(AgentRequest::Poll { wait_ms, .. }) | Forwarded::Client(ClientRequest::Watch { wait_ms, .. }) => {
            u64::from(*wait_ms) + cfg.forward_poll_slack_ms
        }
        Forwarded::Agent(AgentRequest::Session { .. }) => cfg.session_answer_timeout_ms + cfg.forward_poll_slack_ms,
        Forwarded::Client(ClientRequest::RemoveContext { .. }) => cfg.admin_call_timeout_ms,
        _ => cfg.forward_timeout_ms,
    })
}

/// Requests that need the cluster state: this coordinator is the leader.
async fn lead(node: &Node, p: Principal, key: Option<String>, origin: SocketAddr, req: Forwarded) -> Answer<ForwardedResponse> {
    match req {
        Forwarded::Client(r) => Box::pin(lead_client(node, p, origin, r)).await.map(ForwardedResponse::Client),
        Forwarded::Agent(r) => lead_agent(node, p, key, r).await.map(ForwardedResponse::Agent),
    }
}

async fn lead_agent(node: &Node, p: Principal, key: Option<String>, req: AgentRequest) -> Answer<AgentResponse> {
    match req {
        // Only the poll is held (one per agent); the others, each with a commit, are boxed.
        AgentRequest::Register(info) => Box::pin(agents::register(node, &p, key, info)).await,
        AgentRequest::Poll { agent, running, cache_bytes, wait_ms } => {
            let running = running.into_iter().map(SliceAttempt::from_wire).collect();
            agents::poll(node, &p, &agent, running, cache_bytes, wait_ms).await
        }
        AgentRequest::Events { build, slice, attempt, events } => {
            agents::events(node, &p, SliceAttempt::from_wire((build, slice, attempt)), events)
        }
        AgentRequest::SliceDone(outcome) => Box::pin(agents::slice_done(node, &p, outcome)).await,
        AgentRequest::SliceFailed { build, slice, attempt, message } => {
            Box::pin(agents::slice_failed(node, &p, SliceAttempt::from_wire((build, slice, attempt)), message)).await
        }
        AgentRequest::Advertise(inv) => agents::advertise(node, &p, &inv),
        AgentRequest::Session { build, slice, attempt, ask } => {
            Box::pin(session::ask(node, &p, SliceAttempt::from_wire((build, slice, attempt)), ask)).await
        }
        AgentRequest::Locate { blobs, records } => Ok(AgentResponse::Holders(agents::locate(node, &p.name, &blobs, &records))),
        // Served where it is received, never forwarded.
        other @ AgentRequest::Blob(..) => Err(bad(format!("unexpected request {:?}", std::mem::discriminant(&other)))),
    }
}

async fn lead_client(node: &Node, p: Principal, origin: SocketAddr, req: ClientRequest) -> Answer<ClientResponse> {
    match req {
        ClientRequest::Submit(spec) => builds::submit(node, &p, origin, *spec).await,
        // Rare requests with large futures are boxed: every pending long poll holds this
        // function's future, sized for its largest arm.
        ClientRequest::CreateToken { role, tenant } => Box::pin(auth::create_token(node, role, tenant)).await,
        ClientRequest::DiskUsage { builder } => Box::pin(admin::storage(node, builder, PeerRequest::Usage)).await,
        ClientRequest::Prune { builder, spec } => Box::pin(admin::storage(node, builder, PeerRequest::Prune(spec))).await,
        ClientRequest::Watch { build, cursor, wait_ms } => builds::watch(node, &p, BuildId::from_wire(build), cursor, wait_ms).await,
        ClientRequest::History(filter) => history::list(node, &p, &filter),
        ClientRequest::HistoryInspect { build } => history::inspect(node, &p, build),
        ClientRequest::ForgetBuilds { builds } => history::forget(node, &p, builds).await,
        ClientRequest::Cancel { build } => history::cancel(node, &p, build).await,
        ClientRequest::Answer { build, ask, answer } => session::answer(node, &p, BuildId::from_wire(build), ask, answer),
        ClientRequest::Contexts => Ok(ClientResponse::Contexts(views::contexts(node))),
        ClientRequest::RemoveContext { name, revoke } => admin::remove_context(node, &name, revoke).await,
        ClientRequest::CreateBuilder(spec) => admin::create_builder(node, spec).await,
        ClientRequest::RemoveBuilder { name } => admin::remove_builder(node, name).await,
        ClientRequest::Builders => Ok(admin::builders(node)),
        ClientRequest::Inspect { name } => admin::inspect(node, &p, &name),
        ClientRequest::AddCoordinator { id, addr } => admin::add_coordinator(node, id, addr).await,
        ClientRequest::RemoveCoordinator { id } => admin::remove_coordinator(node, id).await,
        // Served where they are received, never forwarded.
        other @ (ClientRequest::Status | ClientRequest::Blob(_) | ClientRequest::PruneCoordinator { .. }) => {
            Err(bad(format!("unexpected request {:?}", std::mem::discriminant(&other))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_call_per_protocol() -> Vec<Call> {
        vec![
            Tagged::Join(JoinRequest::Token { token: String::new(), name: String::new(), csr_der: vec![] }),
            Tagged::Client(ClientRequest::Status),
            Tagged::Agent(AgentRequest::Poll { agent: "a".into(), running: vec![], cache_bytes: 0, wait_ms: 0 }),
            Tagged::Coordinator(CoordinatorRequest::Raft { rpc: RaftRpc::Vote, json: vec![] }),
        ]
    }

    fn every_client_request() -> Vec<ClientRequest> {
        vec![
            ClientRequest::Status,
            ClientRequest::AddCoordinator { id: 4, addr: String::new() },
            ClientRequest::Blob(BlobRequest::Get { digest: String::new(), offset: 0, len: 0 }),
            ClientRequest::Blob(BlobRequest::Put { digest: String::new(), offset: 0, data: vec![], last: true, owner: None }),
            ClientRequest::Watch { build: 1, cursor: 0, wait_ms: 0 },
            ClientRequest::CreateBuilder(CreateSpec::default()),
            ClientRequest::RemoveContext { name: "a".into(), revoke: false },
            ClientRequest::DiskUsage { builder: None },
            ClientRequest::Prune { builder: None, spec: PruneSpec::default() },
            ClientRequest::CreateToken { role: Role::User, tenant: "t".into() },
        ]
    }

    #[test]
    fn roles_speak_their_protocol_and_no_other() {
        let table = |role: Role| -> Vec<bool> { one_call_per_protocol().iter().map(|c| speaks(&role, c)).collect() };
        // Join, Client, Agent, Coordinator
        let (t, f) = (true, false);
        assert_eq!(table(Role::Admin), [f, t, f, f]);
        assert_eq!(table(Role::User), [f, t, f, f]);
        assert_eq!(table(Role::Agent), [f, f, t, f]);
        assert_eq!(table(Role::Coordinator), [f, f, f, t]);
    }

    #[test]
    fn roles_get_what_they_need_and_nothing_else() {
        let table = |role: Role| -> Vec<bool> { every_client_request().iter().map(|r| allowed(&role, r)).collect() };
        // Status, AddCoordinator, GetBlob, PutBlob, Watch, CreateBuilder, RemoveContext, DiskUsage, Prune, CreateToken
        let (t, f) = (true, false);
        assert_eq!(table(Role::Admin), [t, t, t, t, t, t, t, t, t, t]);
        assert_eq!(table(Role::User), [t, f, t, t, t, f, f, t, f, f]);
        assert_eq!(table(Role::Agent), [f; 10]);
        assert_eq!(table(Role::Coordinator), [f; 10]);
    }

    #[test]
    fn forwarded_requests_keep_their_callers_rights() {
        let poll = || Forwarded::Agent(AgentRequest::Poll { agent: "a".into(), running: vec![], cache_bytes: 0, wait_ms: 0 });
        let prune = || Forwarded::Client(ClientRequest::Prune { builder: None, spec: PruneSpec::default() });
        let watch = || Forwarded::Client(ClientRequest::Watch { build: 1, cursor: 0, wait_ms: 0 });
        assert!(forwardable(&Role::Agent, &poll()));
        assert!(!forwardable(&Role::User, &poll()));
        assert!(forwardable(&Role::User, &watch()));
        assert!(!forwardable(&Role::Agent, &watch()));
        assert!(forwardable(&Role::Admin, &prune()));
        assert!(!forwardable(&Role::User, &prune()));
        assert!(!forwardable(&Role::Coordinator, &watch()));
    }
}
