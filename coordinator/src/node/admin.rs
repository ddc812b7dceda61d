//! Farm and cluster administration, on the leader: builders (create, remove, list, inspect),
//! removing a context (drained first), disk usage and pruning on a builder's agents, and the
//! coordinator membership; status is served by any coordinator.

use super::reply::{bad, err, Answer};
use super::{views, Node};
use crate::builders::DEFAULT_BUILDER;
use crate::raft::Command;
use kiln_shared::api::{AgentStorage, ClientResponse, ClusterStatus, CreateSpec, Member, PeerRequest, PeerResponse, Principal, Role};
use kiln_shared::wire::{ErrorCode, RemoteError};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub fn status(node: &Node) -> ClusterStatus {
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
        console: node.console.map(|a| format!("http://{a}")),
    }
}

/// `kiln du` / `kiln prune` on every agent of a builder, side by side.
pub async fn storage(node: &Node, builder: Option<String>, req: PeerRequest) -> Answer<ClientResponse> {
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
                Ok(addr) => match node.pool.peer(addr, req, Duration::from_millis(node.cfg.admin_call_timeout_ms)).await {
                    Ok(PeerResponse::Usage(u)) => Ok(AgentStorage::Usage(u)),
                    Ok(PeerResponse::Pruned(r)) => Ok(AgentStorage::Pruned(r)),
                    Ok(other) => Err(format!("unexpected answer {other:?}")),
                    Err(e) => Err(e.to_string()),
                },
            };
            (name, answer)
        }
    });
    let results = kiln_shared::join::join_all(calls).await;
    Ok(ClientResponse::PerAgent(results))
}

/// `kiln context rm [--revoke]`: drains the agent (it is removed once idle); with `revoke`,
/// removes it at once and refuses its key from now on (its running slices are retried).
pub async fn remove_context(node: &Node, name: &str, revoke: bool) -> Answer<ClientResponse> {
    if revoke {
        node.commit(Command::RevokeAgent { name: name.to_string() }).await?;
        // Its lease is over now: the next tick takes its slices back.
        node.soft().agents.remove(name);
        node.wake_leader.notify_one();
        node.bump();
        return Ok(ClientResponse::Ok);
    }
    node.commit(Command::DrainContext { name: name.to_string() }).await?;
    node.wake_leader.notify_one();
    // The leader removes it once its slices have finished or moved.
    let deadline = Instant::now() + Duration::from_millis(node.cfg.context_drain_timeout_ms);
    while Instant::now() < deadline {
        if !node.read(|s| s.farm.contexts.contains_key(name)) {
            return Ok(ClientResponse::Ok);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(err(ErrorCode::DeadlineExceeded, format!("context {name} is still draining; it is removed once its slices finish")))
}

pub async fn create_builder(node: &Node, spec: CreateSpec) -> Answer<ClientResponse> {
    let mut farm = node.read(|s| s.farm.clone());
    let generated = (0..).map(|n| format!("builder-{n}")).find(|n| !farm.builders.contains_key(n)).unwrap_or_default();
    // Checked here for a quick answer, and decided again where it applies (a concurrent
    // `kiln create` of the same name may commit first: then this one is refused).
    let name = farm.create(&spec, &generated).map_err(|e| bad(e.to_string()))?;
    node.commit(Command::CreateBuilder { spec, generated_name: generated }).await?;
    Ok(ClientResponse::Name(name))
}

pub async fn remove_builder(node: &Node, name: String) -> Answer<ClientResponse> {
    let mut farm = node.read(|s| s.farm.clone());
    farm.remove(&name).map_err(|e| bad(e.to_string()))?;
    node.commit(Command::RemoveBuilder { name }).await?;
    Ok(ClientResponse::Ok)
}

pub fn builders(node: &Node) -> ClientResponse {
    let builders = node.read(|s| s.farm.list());
    let contexts = views::contexts(node);
    ClientResponse::Builders(builders.iter().map(|b| views::builder_view(node, &contexts, b, views::Recent::None)).collect())
}

/// A builder with its recent slices: a user sees only their tenant's, an admin everyone's.
pub fn inspect(node: &Node, p: &Principal, name: &str) -> Answer<ClientResponse> {
    let b = node.read(|s| s.farm.builder(name)).map_err(|e| err(ErrorCode::NotFound, e.to_string()))?;
    let viewer = if p.role == Role::Admin { views::Recent::All } else { views::Recent::Tenant(p.tenant()) };
    Ok(ClientResponse::Builder(views::builder_view(node, &views::contexts(node), &b, viewer)))
}

pub async fn add_coordinator(node: &Node, id: u64, addr: String) -> Answer<ClientResponse> {
    addr.parse::<SocketAddr>().map_err(|e| bad(format!("address {addr:?}: {e}")))?;
    let unavailable = |e: String| err(ErrorCode::Unavailable, e);
    node.raft.add_learner(id, openraft::BasicNode::new(addr), true).await.map_err(|e| unavailable(e.to_string()))?;
    let mut voters: BTreeSet<u64> = node.raft.metrics().borrow().membership_config.membership().voter_ids().collect();
    voters.insert(id);
    node.raft.change_membership(voters, false).await.map_err(|e| unavailable(e.to_string()))?;
    Ok(ClientResponse::Ok)
}

pub async fn remove_coordinator(node: &Node, id: u64) -> Answer<ClientResponse> {
    let mut voters: BTreeSet<u64> = node.raft.metrics().borrow().membership_config.membership().voter_ids().collect();
    if !voters.remove(&id) {
        return Err(err(ErrorCode::NotFound, format!("coordinator {id} is not a member")));
    }
    if voters.is_empty() {
        return Err(bad("the last coordinator cannot be removed"));
    }
    node.raft.change_membership(voters, false).await.map_err(|e| err(ErrorCode::Unavailable, e.to_string()))?;
    Ok(ClientResponse::Ok)
}
