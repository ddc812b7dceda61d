//! Every request a coordinator serves: who may send it, where it runs (here, or forwarded to
//! the leader), and what it does.
//!
//! A connection without a client certificate may only join (exchange a token for one). Raft
//! RPCs, status and blob transfer are served by whichever coordinator receives them; everything
//! that reads or changes the cluster state runs on the leader, so a follower forwards it with
//! the caller's identity.

use super::{now_ms, Live, Node, MAX_EVENTS};
use crate::builders::{self, Context, DEFAULT_BUILDER};
use crate::raft::{self, BuildRecord, BuildState, Command, SliceState};
use kiln_shared::api::*;
use kiln_shared::digest::Digest;
use kiln_shared::transport;
use kiln_shared::wire::{ErrorCode, RemoteError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

type Answer = Result<Response, RemoteError>;

/// Builds whose progress events the leader keeps (a watcher of an older one sees its state).
const MAX_BUILDS_WITH_EVENTS: usize = 256;

fn err(code: ErrorCode, message: impl Into<String>) -> RemoteError {
    RemoteError { code, message: message.into() }
}

fn bad(message: impl Into<String>) -> RemoteError {
    err(ErrorCode::BadRequest, message)
}

/// Serves one connection until it closes.
pub async fn serve(node: Arc<Node>, conn: quinn::Connection) {
    let principal = transport::peer_common_name(&conn).and_then(|cn| Principal::from_common_name(&cn));
    let remote = conn.remote_address();
    transport::serve_connection(conn, move |req: Request| {
        let node = node.clone();
        let principal = principal.clone();
        async move {
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
        Request::Join { token, name, csr_der } => join(node, &token, &name, &csr_der),
        Request::JoinPeer { id, token, csr_der } => join_peer(node, remote, id, token.as_deref(), &csr_der),
        _ => Err(err(ErrorCode::Unauthenticated, "this connection has no client certificate: join with a token first")),
    }
}

fn token_record(node: &Node, token: &str) -> Result<(Token, raft::TokenRecord), RemoteError> {
    let refused = || err(ErrorCode::PermissionDenied, "the token is not valid for this cluster");
    let t = Token::parse(token).map_err(|e| err(ErrorCode::Unauthenticated, e))?;
    if t.ca_fingerprint != node.ca.fingerprint() {
        return Err(refused());
    }
    let record = node.read(|s| s.tokens.get(&t.hash()).cloned()).ok_or_else(refused)?;
    Ok((t, record))
}

fn join(node: &Node, token: &str, name: &str, csr: &[u8]) -> Answer {
    let (t, record) = token_record(node, token)?;
    let principal = match t.role {
        Role::Agent => {
            if name.is_empty() || name.len() > 128 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return Err(bad(format!("agent name {name:?}: use letters, digits, '-', '_' and '.'")));
            }
            Principal { role: Role::Agent, name: name.to_string() }
        }
        Role::Admin | Role::User => Principal { role: t.role.clone(), name: record.tenant.clone() },
        Role::Coordinator => return Err(err(ErrorCode::PermissionDenied, "coordinators join with `kiln coordinator --join`")),
    };
    let cert = node.ca.sign_request(csr, &principal.common_name()).map_err(|e| bad(format!("certificate request: {e}")))?;
    Ok(Response::Joined { cert_der: cert.to_vec(), ca_der: node.ca.cert_der().to_vec(), principal })
}

fn join_peer(node: &Node, remote: SocketAddr, id: u64, token: Option<&str>, csr: &[u8]) -> Answer {
    let granted = match token {
        Some(t) => token_record(node, t)?.0.role == Role::Admin,
        // Bootstrap: a member listed in --peers, calling from its listed address, once (trust
        // on first use): the CA key is not handed out again without a token.
        None => id != node.id && node.cfg.peers.get(&id).is_some_and(|a| a.ip() == remote.ip()) && first_grant(node, id),
    };
    if !granted {
        return Err(err(
            ErrorCode::PermissionDenied,
            format!(
                "coordinator {id} at {} is not a listed peer on its first start: start it with --token (an admin token) to join",
                remote.ip()
            ),
        ));
    }
    let cert = node.ca.sign_request(csr, &Principal { role: Role::Coordinator, name: id.to_string() }.common_name());
    let cert = cert.map_err(|e| bad(format!("certificate request: {e}")))?;
    Ok(Response::PeerJoined { ca_cert_pem: node.ca.cert_pem(), ca_key_pem: node.ca.key_pem(), cert_der: cert.to_vec() })
}

/// Records that `id` got the CA without a token; `false` if it already had.
fn first_grant(node: &Node, id: u64) -> bool {
    use std::io::Write;
    let path = node.cfg.data_dir.join("bootstrap-granted");
    let granted = std::fs::read_to_string(&path).unwrap_or_default();
    if granted.lines().any(|l| l.trim() == id.to_string()) {
        return false;
    }
    let recorded = std::fs::OpenOptions::new().create(true).append(true).open(&path).and_then(|mut f| {
        writeln!(f, "{id}")?;
        f.sync_all()
    });
    recorded.is_ok()
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
        Request::Status => Ok(Response::Status(status(node))),
        Request::GetBlob { digest, offset, len } => get_blob(node, &p, &digest, offset, len),
        Request::MissingBlobs { digests, owner } => missing(node, owner_of(&p, owner)?, digests),
        Request::PutBlob { digest, offset, data, last, owner } => put_blob(node, owner_of(&p, owner)?, &digest, offset, &data, last),
        Request::Submit(spec) if !owns_context(node, &p, &spec) => Err(err(
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
            let timeout = request_timeout(&req);
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
fn request_timeout(req: &Request) -> Duration {
    match req {
        Request::Poll { wait_ms, .. } | Request::Watch { wait_ms, .. } => Duration::from_millis(u64::from(*wait_ms) + 1_500),
        Request::RemoveContext { .. } => Duration::from_secs(120),
        _ => Duration::from_secs(30),
    }
}

fn status(node: &Node) -> ClusterStatus {
    let m = node.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
    let members =
        membership.nodes().map(|(id, n)| Member { id: *id, addr: n.addr.clone(), voter: voters.contains(id) }).collect::<Vec<_>>();
    ClusterStatus {
        id: node.id,
        leader: m.current_leader,
        term: m.current_term,
        last_applied: m.last_applied.map(|l| l.index).unwrap_or(0),
        members,
    }
}

const MAX_CHUNK: u32 = 8 << 20;

fn parse_digest(d: &str) -> Result<Digest, RemoteError> {
    d.parse().map_err(|e| bad(format!("{d:?}: {e}")))
}

/// The tenant a blob transfer is for: a user's own, or the one an agent returns blobs for.
fn owner_of(p: &Principal, owner: Option<String>) -> Result<Option<String>, RemoteError> {
    match p.role {
        Role::Admin | Role::User => Ok(Some(p.tenant().to_string())),
        Role::Agent => Ok(owner),
        Role::Coordinator => Ok(None),
    }
}

/// Whether every blob a build names was uploaded by its tenant (checked where it was uploaded).
fn owns_context(node: &Node, p: &Principal, spec: &BuildSpec) -> bool {
    if !matches!(p.role, Role::Admin | Role::User) {
        return true;
    }
    let files = spec.context.iter().filter_map(|e| match &e.kind {
        EntryKind::File { digest, .. } => Some(digest.as_str()),
        _ => None,
    });
    let caches = spec.cache_from.iter().filter_map(|c| match c {
        CacheRef::Uploaded { config } => Some(config.as_str()),
        CacheRef::Registry { .. } => None,
    });
    files.chain(caches).all(|d| node.owners.owns(p.tenant(), d))
}

fn get_blob(node: &Node, p: &Principal, digest: &str, offset: u64, len: u32) -> Answer {
    use std::io::{Read, Seek, SeekFrom};
    let d = parse_digest(digest)?;
    // Users read back only what their tenant owns (their uploads and their builds' results).
    if matches!(p.role, Role::Admin | Role::User) && !node.owners.owns(p.tenant(), digest) {
        return Err(err(ErrorCode::NotFound, format!("blob {digest} is not here")));
    }
    let mut f = node.blobs.open_blob(&d).map_err(|e| err(ErrorCode::NotFound, e.to_string()))?;
    f.seek(SeekFrom::Start(offset)).map_err(|e| err(ErrorCode::Internal, e.to_string()))?;
    let mut buf = Vec::new();
    f.take(u64::from(len.min(MAX_CHUNK))).read_to_end(&mut buf).map_err(|e| err(ErrorCode::Internal, e.to_string()))?;
    Ok(Response::Bytes(buf))
}

fn missing(node: &Node, owner: Option<String>, digests: Vec<String>) -> Answer {
    let mut out = Vec::new();
    for d in digests {
        let have = node.blobs.has(&parse_digest(&d)?);
        if !have || owner.as_ref().is_some_and(|t| !node.owners.owns(t, &d)) {
            out.push(d);
        }
    }
    Ok(Response::Digests(out))
}

/// Appends one chunk of an upload; the last one is verified against the digest before the blob
/// becomes visible.
fn put_blob(node: &Node, owner: Option<String>, digest: &str, offset: u64, data: &[u8], last: bool) -> Answer {
    use std::io::Write;
    let d = parse_digest(digest)?;
    let owned = |t: &Option<String>| t.as_ref().is_none_or(|t| node.owners.owns(t, digest));
    if node.blobs.has(&d) && owned(&owner) {
        return Ok(Response::Ok);
    }
    let own = || match &owner {
        Some(t) => node.owners.add(t, digest).map_err(|e| err(ErrorCode::Internal, format!("recording who uploaded {digest}: {e}"))),
        None => Ok(()),
    };
    // Uploads are kept apart per tenant: a tenant proves it has the content by sending it.
    let key = format!("{}\n{digest}", owner.as_deref().unwrap_or(""));
    let mut soft = node.soft();
    let (path, have) = match soft.uploads.get(&key) {
        Some(u) => u.clone(),
        None => (node.blobs.temp_path(), 0),
    };
    if offset != have {
        return Err(bad(format!("upload of {digest}: chunk at offset {offset}, expected {have}")));
    }
    let io = |e: std::io::Error| err(ErrorCode::Internal, format!("storing {digest}: {e}"));
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(io)?;
    f.write_all(data).map_err(io)?;
    drop(f);
    if last {
        soft.uploads.remove(&key);
        drop(soft);
        // The content is verified even when the store already has the blob.
        let mut f = std::fs::File::open(&path).map_err(io)?;
        let (_, actual, _) = {
            let mut w = kiln_shared::digest::HashingWriter::new(std::io::sink());
            std::io::copy(&mut f, &mut w).map_err(io)?;
            w.finish()
        };
        if actual != d {
            let _ = std::fs::remove_file(&path);
            return Err(bad(format!("upload of {digest}: the content hashes to {actual}")));
        }
        let mut f = std::fs::File::open(&path).map_err(io)?;
        let result = node.blobs.put_reader(&mut f, &d);
        let _ = std::fs::remove_file(&path);
        result.map_err(|e| bad(format!("upload of {digest}: {e}")))?;
        own()?;
    } else {
        soft.uploads.insert(key, (path, have + data.len() as u64));
    }
    Ok(Response::Ok)
}

/// Requests that need the cluster state: this coordinator is the leader.
async fn lead(node: &Node, p: Principal, origin: SocketAddr, req: Request) -> Answer {
    match req {
        Request::Register(info) => register(node, &p, info).await,
        Request::Poll { agent, running, cache_bytes, wait_ms } => poll(node, &p, &agent, running, cache_bytes, wait_ms).await,
        Request::Events { build, slice, attempt, events } => {
            let platform = node.read(|s| {
                let sl = s.builds.get(&build)?.slices.get(slice as usize)?;
                (sl.attempt == attempt && sl.agent == p.name).then(|| sl.platform.clone())
            });
            if let Some(platform) = platform {
                let mut soft = node.soft();
                // Progress is kept for the most recent builds only.
                while soft.events.len() >= MAX_BUILDS_WITH_EVENTS && !soft.events.contains_key(&build) {
                    let Some(oldest) = soft.events.keys().min().copied() else { break };
                    soft.events.remove(&oldest);
                }
                let list = soft.events.entry(build).or_default();
                for event in events {
                    if list.len() < MAX_EVENTS {
                        list.push(BuildEvent { platform: platform.clone(), agent: p.name.clone(), event });
                    }
                }
                drop(soft);
                node.bump();
            }
            Ok(Response::Ok)
        }
        Request::SliceDone(outcome) => {
            owned_by(node, &p, outcome.build, outcome.slice, outcome.attempt)?;
            node.commit(Command::SliceDone { at_ms: now_ms(), outcome }).await?;
            node.wake_leader.notify_one();
            node.bump();
            Ok(Response::Ok)
        }
        Request::SliceFailed { build, slice, attempt, message } => {
            owned_by(node, &p, build, slice, attempt)?;
            node.commit(Command::SliceFailed { at_ms: now_ms(), build, slice, attempt, message }).await?;
            node.bump();
            Ok(Response::Ok)
        }
        Request::Submit(spec) => submit(node, &p, origin, spec).await,
        Request::Advertise(inv) => {
            if inv.agent != p.name {
                return Err(err(ErrorCode::PermissionDenied, format!("agent {} may not advertise as {}", p.name, inv.agent)));
            }
            let applied = node.soft().tracker.apply(&inv);
            Ok(Response::Advertised { resync: !applied })
        }
        Request::Locate { blobs, records } => Ok(Response::Holders(locate(node, &p.name, &blobs, &records))),
        // Rare requests with large futures are boxed: every pending long poll holds this
        // function's future, sized for its largest arm.
        Request::CreateToken { role, tenant } => Box::pin(create_token(node, role, tenant)).await,
        Request::DiskUsage { builder } => Box::pin(storage(node, builder, Request::AgentUsage)).await,
        Request::Prune { builder, spec } => Box::pin(storage(node, builder, Request::AgentPrune(spec))).await,
        Request::Watch { build, cursor, wait_ms } => watch(node, &p, build, cursor, wait_ms).await,
        Request::Contexts => Ok(Response::Contexts(contexts(node))),
        Request::RemoveContext { name } => remove_context(node, &name).await,
        Request::CreateBuilder(spec) => create_builder(node, spec).await,
        Request::RemoveBuilder { name } => {
            let mut farm = node.read(|s| s.farm.clone());
            farm.remove(&name).map_err(|e| bad(e.to_string()))?;
            node.commit(Command::RemoveBuilder { name }).await?;
            Ok(Response::Ok)
        }
        Request::Builders => {
            let builders = node.read(|s| s.farm.list());
            let contexts = contexts(node);
            Ok(Response::Builders(builders.iter().map(|b| builder_view(node, &contexts, b, false)).collect()))
        }
        Request::Inspect { name } => {
            let b = node.read(|s| s.farm.builder(&name)).map_err(|e| err(ErrorCode::NotFound, e.to_string()))?;
            Ok(Response::Builder(builder_view(node, &contexts(node), &b, true)))
        }
        Request::AddCoordinator { id, addr } => {
            addr.parse::<SocketAddr>().map_err(|e| bad(format!("address {addr:?}: {e}")))?;
            let unavailable = |e: String| err(ErrorCode::Unavailable, e);
            node.raft.add_learner(id, openraft::BasicNode::new(addr), true).await.map_err(|e| unavailable(e.to_string()))?;
            let mut voters: std::collections::BTreeSet<u64> =
                node.raft.metrics().borrow().membership_config.membership().voter_ids().collect();
            voters.insert(id);
            node.raft.change_membership(voters, false).await.map_err(|e| unavailable(e.to_string()))?;
            Ok(Response::Ok)
        }
        Request::RemoveCoordinator { id } => {
            let mut voters: std::collections::BTreeSet<u64> =
                node.raft.metrics().borrow().membership_config.membership().voter_ids().collect();
            if !voters.remove(&id) {
                return Err(err(ErrorCode::NotFound, format!("coordinator {id} is not a member")));
            }
            if voters.is_empty() {
                return Err(bad("the last coordinator cannot be removed"));
            }
            node.raft.change_membership(voters, false).await.map_err(|e| err(ErrorCode::Unavailable, e.to_string()))?;
            Ok(Response::Ok)
        }
        other => Err(bad(format!("unexpected request {:?}", std::mem::discriminant(&other)))),
    }
}

/// Live agents (other than the asker) that hold each blob, then each record, by peer endpoint.
fn locate(node: &Node, asker: &str, blobs: &[String], records: &[String]) -> Vec<Vec<String>> {
    let lease = Duration::from_millis(node.cfg.lease_timeout_ms);
    let endpoints: std::collections::HashMap<String, String> =
        node.read(|s| s.farm.contexts.iter().map(|(n, c)| (n.clone(), c.endpoint.clone())).collect());
    let soft = node.soft();
    let live = |a: &str| a != asker && soft.agents.get(a).is_some_and(|l| l.last_seen.elapsed() < lease);
    let resolve = |holders: Vec<&str>| holders.into_iter().filter(|a| live(a)).filter_map(|a| endpoints.get(a).cloned()).collect();
    let mut out: Vec<Vec<String>> = blobs.iter().map(|b| resolve(soft.tracker.blob_holders(b))).collect();
    out.extend(records.iter().map(|r| resolve(soft.tracker.record_holders(r))));
    out
}

async fn create_token(node: &Node, role: Role, tenant: String) -> Answer {
    if !matches!(role, Role::User | Role::Admin | Role::Agent) {
        return Err(bad("tokens are for users, admins and agents"));
    }
    if tenant.is_empty() || tenant.len() > 64 || !tenant.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(bad(format!("tenant {tenant:?}: use letters, digits, '-', '_' and '.'")));
    }
    let token = super::bootstrap::new_token(&node.ca, role.clone()).map_err(|e| err(ErrorCode::Internal, e.to_string()))?;
    node.commit(Command::PutToken { token_hash: token.hash(), role: role.as_str().into(), tenant }).await?;
    Ok(Response::Name(token.to_string()))
}

/// `kiln du` / `kiln prune` on every agent of a builder, side by side.
async fn storage(node: &Node, builder: Option<String>, req: Request) -> Answer {
    let name = builder.unwrap_or_else(|| DEFAULT_BUILDER.to_string());
    let agents: Vec<(String, String)> = node.read(|s| {
        let b = s.farm.builder(&name).map_err(|e| err(ErrorCode::NotFound, e.to_string()))?;
        Ok::<_, RemoteError>(
            b.nodes
                .iter()
                .filter_map(|n| s.farm.contexts.get(&n.context))
                .map(|c| (c.name.clone(), c.endpoint.clone()))
                .collect::<Vec<_>>(),
        )
    })?;
    let mut agents = agents;
    agents.sort();
    agents.dedup();
    let calls = agents.into_iter().map(|(name, endpoint)| {
        let req = req.clone();
        async move {
            let answer = match endpoint.parse::<SocketAddr>() {
                Err(e) => Err(format!("endpoint {endpoint:?}: {e}")),
                Ok(addr) => match node.pool.call(addr, req, Duration::from_secs(120)).await {
                    Ok(Response::Usage(u)) => Ok(AgentStorage::Usage(u)),
                    Ok(Response::Pruned(r)) => Ok(AgentStorage::Pruned(r)),
                    Ok(other) => Err(format!("unexpected answer {other:?}")),
                    Err(e) => Err(e.to_string()),
                },
            };
            (name, answer)
        }
    });
    let results = kiln_shared::join::join_all(calls).await;
    Ok(Response::PerAgent(results))
}

/// A report is taken only from the agent running the current attempt; anything else is
/// refused here, without a commit (a partitioned agent coming back, a duplicate).
fn owned_by(node: &Node, p: &Principal, build: u64, slice: u32, attempt: u32) -> Result<(), RemoteError> {
    let current = node.read(|s| {
        let b = s.builds.get(&build)?;
        let sl = b.slices.get(slice as usize)?;
        Some((sl.agent.clone(), sl.attempt, sl.state == SliceState::Running && b.state == BuildState::Running))
    });
    match current {
        Some((a, at, true)) if a == p.name && at == attempt => Ok(()),
        Some(_) => Err(bad(format!("attempt {attempt} of slice {build}/{slice} is no longer current on {}", p.name))),
        None => Err(err(ErrorCode::NotFound, format!("no slice {build}/{slice}"))),
    }
}

async fn register(node: &Node, p: &Principal, info: AgentInfo) -> Answer {
    if info.name != p.name {
        return Err(err(ErrorCode::PermissionDenied, format!("agent {} may not register as {}", p.name, info.name)));
    }
    if info.slots == 0 {
        return Err(bad("an agent needs at least one slot"));
    }
    let ctx: Context = info.clone();
    let same = node.read(|s| s.farm.contexts.get(&ctx.name) == Some(&ctx) && !s.draining.contains(&ctx.name));
    if !same {
        node.commit(Command::RegisterAgent { context: ctx }).await?;
    }
    node.soft().agents.insert(info.name, Live { last_seen: Instant::now(), running: vec![], cache_bytes: 0 });
    node.wake_leader.notify_one();
    Ok(Response::Ok)
}

/// Slices assigned to `agent` that it does not know it runs: new assignments, or ones whose
/// delivery was lost with a previous leader.
fn tasks_for(node: &Node, agent: &str, running: &[(u64, u32, u32)]) -> Vec<SliceTask> {
    let assigned = node.assigned();
    let Some(mine) = assigned.get(agent) else { return vec![] };
    let new: Vec<&(u64, u32, u32)> = mine.iter().filter(|k| !running.contains(k)).collect();
    if new.is_empty() {
        return vec![];
    }
    node.read(|s| {
        new.iter()
            .filter_map(|&&(build, slice, attempt)| {
                let b = s.builds.get(&build)?;
                let sl = b.slices.get(slice as usize)?;
                (sl.state == SliceState::Running && sl.attempt == attempt && sl.agent == agent).then(|| SliceTask {
                    build,
                    slice,
                    attempt,
                    platform: sl.platform.clone(),
                    emulated: sl.emulated,
                    spec: b.spec.clone(),
                    context_origin: b.context_origin.clone(),
                })
            })
            .collect()
    })
}

async fn poll(node: &Node, p: &Principal, agent: &str, running: Vec<(u64, u32, u32)>, cache_bytes: u64, wait_ms: u32) -> Answer {
    if agent != p.name {
        return Err(err(ErrorCode::PermissionDenied, format!("agent {} may not poll as {agent}", p.name)));
    }
    if !node.read(|s| s.farm.contexts.contains_key(agent)) {
        return Err(err(ErrorCode::NotFound, format!("agent {agent} is not registered (removed with `kiln context rm`?)")));
    }
    let wake = node.agent_wake(agent);
    let deadline = Instant::now() + Duration::from_millis(u64::from(wait_ms.min(30_000)));
    loop {
        node.soft().agents.insert(agent.to_string(), Live { last_seen: Instant::now(), running: running.clone(), cache_bytes });
        let tasks = tasks_for(node, agent, &running);
        let resync = !node.soft().tracker.knows(agent);
        if !tasks.is_empty() || resync {
            return Ok(Response::Tasks { tasks, resync });
        }
        let now = Instant::now();
        if now >= deadline || !node.is_leader() {
            return Ok(Response::Tasks { tasks, resync });
        }
        // Wake at least every second so that the heartbeat stays fresh while waiting.
        let _ = tokio::time::timeout((deadline - now).min(Duration::from_secs(1)), wake.notified()).await;
    }
}

/// Why no agent of the builder can run `platform`, or `None` when one can.
fn unrunnable(
    farm: &builders::Farm,
    draining: &std::collections::BTreeSet<String>,
    builder: &str,
    platform: &kiln_shared::Platform,
) -> Option<String> {
    let candidates = match farm.candidates(builder) {
        Ok(c) => c,
        Err(e) => return Some(e.to_string()),
    };
    let usable: Vec<_> = candidates.iter().filter(|(name, _)| !draining.contains(name)).collect();
    if usable.iter().any(|(_, platforms)| platforms.iter().any(|p| crate::scheduler::runs(std::slice::from_ref(p), platform))) {
        return None;
    }
    let have: Vec<String> = usable
        .iter()
        .map(|(name, ps)| {
            format!(
                "{name}: {}",
                if ps.is_empty() { "none".to_string() } else { ps.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ") }
            )
        })
        .collect();
    Some(
        format!(
            "no agent of builder {builder:?} can run {platform} (natively or under emulation); {}",
            if have.is_empty() { "the builder has no agents".to_string() } else { format!("its agents run {}", have.join("; ")) }
        ) + &format!(
        "; to emulate {platform}, install qemu-user-static on an agent and register it with binfmt_misc (scripts/setup-host.sh does both)"
    ),
    )
}

async fn submit(node: &Node, p: &Principal, origin: SocketAddr, mut spec: BuildSpec) -> Answer {
    if spec.platforms.is_empty() {
        return Err(bad("a build needs at least one platform"));
    }
    let builder = spec.builder.clone().unwrap_or_else(|| DEFAULT_BUILDER.to_string());
    let refusal = node.read(|s| spec.platforms.iter().find_map(|pl| unrunnable(&s.farm, &s.draining, &builder, pl)));
    if let Some(reason) = refusal {
        return Err(err(ErrorCode::BadRequest, reason));
    }
    // A client that lost its answer (a leader change) submits again: same submission, same build.
    let existing =
        node.read(|s| s.builds.values().rev().find(|b| b.tenant == p.tenant() && b.spec.submission == spec.submission).map(|b| b.id));
    if let Some(build) = existing.filter(|_| !spec.submission.is_empty()) {
        return Ok(Response::Submitted { build });
    }
    // The cache scope is the farm's decision, never the client's.
    let shared = node.read(|s| s.farm.builder(&builder).map(|b| b.share_cache).unwrap_or(false));
    spec.cache_scope = if shared { "shared".to_string() } else { format!("tenant:{}", p.tenant()) };
    spec.tenant = p.tenant().to_string();
    let record = BuildRecord::new(p.tenant(), spec, vec![origin], now_ms());
    // Slices that can be placed now are assigned in the same commit as the build.
    let scheduling = node.sched.lock().await;
    let assignments = super::leader::place_new(node, &record);
    node.reserve(&assignments);
    drop(scheduling);
    let r = node.commit(Command::Submit { build: Box::new(record), assignments: assignments.clone() }).await;
    node.release(&assignments);
    let r = r?;
    node.wake_leader.notify_one();
    Ok(Response::Submitted { build: r.value })
}

fn slice_view(i: usize, s: &raft::SliceRecord, now: u64) -> SliceView {
    let queue_ms = match s.state {
        SliceState::Queued => now.saturating_sub(s.queued_at_ms),
        _ => s.assigned_at_ms.saturating_sub(s.queued_at_ms),
    };
    SliceView {
        slice: i as u32,
        platform: s.platform.clone(),
        state: s.state,
        agent: s.agent.clone(),
        emulated: s.emulated,
        attempt: s.attempt,
        manifest_json: s.manifest_json.clone(),
        queue_ms,
        duration_ms: s.duration_ms,
        cache_hits: s.cache_hits,
        cache_misses: s.cache_misses,
        cache_peer_hits: s.cache_peer_hits,
        reason: s.reason.clone(),
    }
}

pub fn build_view(b: &BuildRecord) -> BuildView {
    let now = now_ms();
    BuildView {
        id: b.id,
        state: b.state,
        slices: b.slices.iter().enumerate().map(|(i, s)| slice_view(i, s, now)).collect(),
        index_json: b.index_json.clone(),
        index_digest: b.index_digest.clone(),
        error: b.error.clone(),
        // Sent once the build is done, and only when the CLI writes the cache itself.
        cache_records: if b.state == BuildState::Done && b.spec.cache_to.as_ref().is_some_and(|c| c.registry.is_none()) {
            b.slices.iter().flat_map(|s| s.records.iter().cloned()).collect()
        } else {
            vec![]
        },
    }
}

async fn watch(node: &Node, p: &Principal, build: u64, cursor: u64, wait_ms: u32) -> Answer {
    let mut changed = node.changed.subscribe();
    let deadline = Instant::now() + Duration::from_millis(u64::from(wait_ms.min(30_000)));
    loop {
        let view = node.read(|s| s.builds.get(&build).filter(|b| b.tenant == p.tenant() || p.role == Role::Admin).map(build_view));
        let view = view.ok_or_else(|| err(ErrorCode::NotFound, format!("no build {build}")))?;
        let (events, next) = {
            let soft = node.soft();
            let all = soft.events.get(&build).map(Vec::as_slice).unwrap_or(&[]);
            let from = (cursor as usize).min(all.len());
            (all[from..].to_vec(), all.len() as u64)
        };
        let now = Instant::now();
        if !events.is_empty() || view.state != BuildState::Running || now >= deadline {
            return Ok(Response::Build { view, events, cursor: next });
        }
        let _ = tokio::time::timeout(deadline - now, changed.changed()).await;
    }
}

/// Whether an agent is alive: it polled within its lease, or it has not yet had twice its
/// lease since this coordinator became leader (the grace a new leader gives every agent).
pub fn alive(lease_ms: u64, leader_since: Option<Instant>, live: Option<&Live>, now: Instant) -> bool {
    let lease = Duration::from_millis(lease_ms);
    match live {
        Some(l) => now.duration_since(l.last_seen) < lease,
        None => leader_since.is_some_and(|t| now.duration_since(t) < 2 * lease),
    }
}

fn contexts(node: &Node) -> Vec<ContextView> {
    let now = Instant::now();
    let (ctxs, draining, running) = node.read(|s| {
        let mut running = std::collections::HashMap::<String, u32>::new();
        for b in s.builds.values().filter(|b| b.state == BuildState::Running) {
            for sl in b.slices.iter().filter(|sl| sl.state == SliceState::Running) {
                *running.entry(sl.agent.clone()).or_default() += 1;
            }
        }
        (s.farm.contexts.clone(), s.draining.clone(), running)
    });
    let (soft, since, records) = {
        let g = node.soft();
        let records: std::collections::HashMap<String, u64> =
            ctxs.keys().filter_map(|n| g.tracker.record_count(n).map(|r| (n.clone(), r as u64))).collect();
        (g.agents.clone(), g.leader_since, records)
    };
    ctxs.into_values()
        .map(|c| {
            let live = soft.get(&c.name);
            let status = if draining.contains(&c.name) {
                "draining"
            } else if alive(node.cfg.lease_timeout_ms, since, live, now) {
                "ready"
            } else {
                "lost"
            };
            ContextView {
                status: status.into(),
                running: running.get(&c.name).copied().unwrap_or(0),
                last_seen_ms_ago: live.map(|l| now.duration_since(l.last_seen).as_millis() as u64).unwrap_or(u64::MAX),
                cache_bytes: live.map(|l| l.cache_bytes).unwrap_or(0),
                cache_records: records.get(&c.name).copied(),
                info: c,
            }
        })
        .collect()
}

async fn remove_context(node: &Node, name: &str) -> Answer {
    node.commit(Command::DrainContext { name: name.to_string() }).await?;
    node.wake_leader.notify_one();
    // The leader removes it once its slices have finished or moved.
    let deadline = Instant::now() + Duration::from_secs(110);
    while Instant::now() < deadline {
        if !node.read(|s| s.farm.contexts.contains_key(name)) {
            return Ok(Response::Ok);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(err(ErrorCode::DeadlineExceeded, format!("context {name} is still draining; it is removed once its slices finish")))
}

async fn create_builder(node: &Node, spec: CreateSpec) -> Answer {
    let mut farm = node.read(|s| s.farm.clone());
    let generated = (0..).map(|n| format!("builder-{n}")).find(|n| !farm.builders.contains_key(n)).unwrap_or_default();
    let name = farm.create(&spec, &generated).map_err(|e| bad(e.to_string()))?;
    let command = match farm.builders.get(&name) {
        Some(b) => Command::PutBuilder { builder: b.clone() },
        None => Command::RemoveBuilder { name: name.clone() },
    };
    node.commit(command).await?;
    Ok(Response::Name(name))
}

fn builder_view(node: &Node, contexts: &[ContextView], b: &builders::Builder, recent: bool) -> BuilderView {
    let nodes = b
        .nodes
        .iter()
        .map(|n| match contexts.iter().find(|c| c.info.name == n.context) {
            Some(c) => {
                let all: Vec<_> = c.info.native.iter().chain(&c.info.emulated).cloned().collect();
                NodeView {
                    name: n.name.clone(),
                    context: n.context.clone(),
                    endpoint: c.info.endpoint.clone(),
                    status: if c.status == "ready" { "running".into() } else { c.status.clone() },
                    platforms: if n.platforms.is_empty() { all } else { n.platforms.clone() },
                    native: c.info.native.clone(),
                    slots: c.info.slots,
                    running: c.running,
                    cache_bytes: c.cache_bytes,
                }
            }
            None => NodeView {
                name: n.name.clone(),
                context: n.context.clone(),
                endpoint: String::new(),
                status: "missing".into(),
                platforms: n.platforms.clone(),
                native: vec![],
                slots: 0,
                running: 0,
                cache_bytes: 0,
            },
        })
        .collect::<Vec<NodeView>>();
    let recent = if recent {
        let names: Vec<&str> = b.nodes.iter().map(|n| n.context.as_str()).collect();
        let now = now_ms();
        node.read(|s| {
            let mut out: Vec<(u64, SliceView)> = s
                .builds
                .values()
                .rev()
                .flat_map(|b| b.slices.iter().enumerate().map(move |(i, sl)| (b.id, i, sl)))
                .filter(|(_, _, sl)| names.contains(&sl.agent.as_str()))
                .take(20)
                .map(|(id, i, sl)| (id, slice_view(i, sl, now)))
                .collect();
            out.reverse();
            out
        })
    } else {
        vec![]
    };
    BuilderView { name: b.name.clone(), driver: b.driver.clone(), nodes, recent }
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
