//! The agents' side of the protocol, on the leader: registering, the long poll that is both
//! heartbeat and work queue, progress events, slice reports (fenced by attempt), and the
//! tracker's advertisements and lookups of which live agent holds a blob or a record.

use super::reply::{bad, err, Answer};
use super::{now_ms, Node, MAX_EVENTS};
use crate::builders::Context;
use crate::raft::{BuildState, Command, SliceAttempt, SliceState};
use kiln_shared::api::{AgentInfo, AgentResponse, BuildEvent, CacheRef, Event, Grant, Inventory, Principal, SliceOutcome, SliceTask};
use kiln_shared::wire::{ErrorCode, RemoteError};
use std::time::{Duration, Instant};

/// Builds whose progress events the leader keeps (a watcher of an older one sees its state).
const MAX_BUILDS_WITH_EVENTS: usize = 256;

pub fn events(node: &Node, p: &Principal, at: SliceAttempt, events: Vec<Event>) -> Answer<AgentResponse> {
    let build = at.slice.build;
    let platform = node.read(|s| {
        let sl = s.slice(at.slice)?;
        (sl.attempt == at.attempt && sl.agent == p.name).then(|| sl.platform.clone())
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
    Ok(AgentResponse::Ok)
}

/// An attempt lost with its agent, in the build's progress: its open steps end as errors, and
/// a line says whether the slice is retried elsewhere or given up.
pub fn attempt_lost(node: &Node, at: SliceAttempt, agent: &str, reason: &str) {
    let Some((platform, state, attempt)) = node.read(|s| s.slice(at.slice).map(|sl| (sl.platform.clone(), sl.state, sl.attempt))) else {
        return;
    };
    let mut soft = node.soft();
    let Some(list) = soft.events.get_mut(&at.slice.build) else { return };
    let mut open = Vec::new();
    for e in list.iter().filter(|e| e.agent == agent && e.platform == platform) {
        match &e.event {
            Event::Start { id, .. } => open.push(*id),
            Event::Cached { id } | Event::Done { id, .. } | Event::Failed { id, .. } => open.retain(|o| o != id),
            Event::Log { .. } => {}
        }
    }
    let next = match state {
        SliceState::Failed => "the build gives up on it".to_string(),
        _ => format!("the slice is retried on another agent (attempt {})", attempt.to_wire() + 1),
    };
    let message = format!("attempt {} lost with agent {agent} ({reason}); {next}", at.attempt);
    let mut add = |event| {
        if list.len() < MAX_EVENTS {
            list.push(BuildEvent { platform: platform.clone(), agent: agent.to_string(), event });
        }
    };
    for id in open {
        add(Event::Failed { id, message: message.clone() });
    }
    // A line of its own (an id no agent step has), so that the progress says it once.
    let id = u64::MAX - u64::from(at.slice.index) * 1024 - u64::from(at.attempt.to_wire());
    add(Event::Start { id, name: format!("[{platform}] {message}") });
    add(Event::Done { id, secs: 0.0 });
    drop(soft);
    node.bump();
}

pub async fn slice_done(node: &Node, p: &Principal, outcome: SliceOutcome) -> Answer<AgentResponse> {
    let at = SliceAttempt::from_wire((outcome.build, outcome.slice, outcome.attempt));
    owned_by(node, p, at)?;
    let lineage = node.read(|s| {
        let b = s.builds.get(&at.slice.build)?;
        Some(crate::node::leader::plan::lineage(&b.spec, &b.slices.get(at.slice.index as usize)?.platform))
    });
    let records = outcome.step_records.clone();
    node.commit(Command::SliceDone { at_ms: now_ms(), outcome }).await?;
    super::probes::slice_ended(node, at.slice, "succeeded");
    if let Some(lineage) = lineage {
        node.soft().lineage.remember(lineage, records);
    }
    node.wake_leader.notify_one();
    node.bump();
    Ok(AgentResponse::Ok)
}

pub async fn slice_failed(node: &Node, p: &Principal, at: SliceAttempt, message: String) -> Answer<AgentResponse> {
    owned_by(node, p, at)?;
    let r = node.commit(Command::SliceFailed { at_ms: now_ms(), slice: at.slice, attempt: at.attempt, message }).await?;
    super::probes::slice_ended(node, at.slice, "failed");
    if r.ok {
        super::history::ended(node, at.slice.build);
    }
    node.bump();
    Ok(AgentResponse::Ok)
}

pub fn advertise(node: &Node, p: &Principal, inv: &Inventory) -> Answer<AgentResponse> {
    if inv.agent != p.name {
        return Err(err(ErrorCode::PermissionDenied, format!("agent {} may not advertise as {}", p.name, inv.agent)));
    }
    let applied = node.soft().tracker.apply(inv);
    Ok(AgentResponse::Advertised { resync: !applied })
}

/// Live agents (other than the asker) that hold each blob, then each record, by peer endpoint.
pub fn locate(node: &Node, asker: &str, blobs: &[String], records: &[String]) -> Vec<Vec<String>> {
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

/// A report is taken only from the agent running the current attempt; anything else is
/// refused here, without a commit (a partitioned agent coming back, a duplicate).
pub(super) fn owned_by(node: &Node, p: &Principal, at: SliceAttempt) -> Result<(), RemoteError> {
    let SliceAttempt { slice, attempt } = at;
    let current = node.read(|s| {
        let b = s.builds.get(&slice.build)?;
        let sl = b.slices.get(slice.index as usize)?;
        Some((sl.agent.clone(), sl.attempt, sl.state == SliceState::Running && b.state == BuildState::Running))
    });
    match current {
        Some((a, at, true)) if a == p.name && at == attempt => Ok(()),
        Some(_) => Err(bad(format!("attempt {attempt} of slice {slice} is no longer current on {}", p.name))),
        None => Err(err(ErrorCode::NotFound, format!("no slice {slice}"))),
    }
}

/// Registers an agent, binding its name to the key of its certificate: a restarted agent
/// resumes with its key; another key under a registered name is refused.
pub async fn register(node: &Node, p: &Principal, key: Option<String>, info: AgentInfo) -> Answer<AgentResponse> {
    if info.name != p.name {
        return Err(err(ErrorCode::PermissionDenied, format!("agent {} may not register as {}", p.name, info.name)));
    }
    if info.slots == 0 {
        return Err(bad("an agent needs at least one slot"));
    }
    let key = key.ok_or_else(|| err(ErrorCode::Unauthenticated, "the agent's certificate has no readable key"))?;
    let ctx: Context = info.clone();
    let same = node.read(|s| {
        s.farm.contexts.get(&ctx.name) == Some(&ctx) && !s.draining.contains(&ctx.name) && s.agent_keys.get(&ctx.name) == Some(&key)
    });
    if !same {
        let r = node.propose(Command::RegisterAgent { context: ctx, key: Some(key) }).await?;
        if !r.ok {
            return Err(err(ErrorCode::PermissionDenied, r.message.unwrap_or_default()));
        }
    }
    node.soft().heard(&info.name, vec![], 0);
    node.wake_leader.notify_one();
    Ok(AgentResponse::Ok)
}

/// Slices assigned to `agent` that it does not know it runs: new assignments, or ones whose
/// delivery was lost with a previous leader.
fn tasks_for(node: &Node, agent: &str, running: &[SliceAttempt]) -> Vec<SliceTask> {
    let new: Vec<SliceAttempt> = node.assigned_to(agent).into_iter().filter(|k| !running.contains(k)).collect();
    if new.is_empty() {
        return vec![];
    }
    node.read(|s| {
        new.iter()
            .filter_map(|&at| {
                let b = s.builds.get(&at.slice.build)?;
                let sl = b.slices.get(at.slice.index as usize)?;
                let (build, slice, attempt) = at.to_wire();
                (sl.state == SliceState::Running && sl.attempt == at.attempt && sl.agent == agent).then(|| SliceTask {
                    build,
                    slice,
                    attempt,
                    platform: sl.platform.clone(),
                    emulated: sl.emulated,
                    spec: b.spec.clone(),
                    context_origin: b.context_origin.clone(),
                    grant: grant(node, agent, at, &b.tenant, &b.spec),
                })
            })
            .collect()
    })
}

/// The signed grant of an attempt: the build's tenant and cache scope, and the blobs the
/// spec names that are not the tenant's own uploads (an uploaded cache's config, an OCI
/// layout's blobs are, but are listed so that peers holding them may serve them).
fn grant(node: &Node, agent: &str, at: SliceAttempt, tenant: &str, spec: &kiln_shared::api::BuildSpec) -> Option<Grant> {
    let (build, slice, attempt) = at.to_wire();
    let caches = spec.cache_from.iter().filter_map(|c| match c {
        CacheRef::Uploaded { config } => Some(config.clone()),
        CacheRef::Registry { .. } => None,
    });
    let mut g = Grant {
        agent: agent.to_string(),
        build,
        slice,
        attempt,
        tenant: tenant.to_string(),
        scope: spec.cache_scope.clone(),
        blobs: caches.chain(spec.layout_blobs().map(str::to_string)).collect(),
        expires_ms: now_ms() + node.cfg.slice_grant_ttl_secs * 1000,
        signature: vec![],
    };
    match node.ca.sign(&g.signed_bytes()) {
        Ok(sig) => g.signature = sig,
        Err(e) => {
            tracing::warn!(coordinator = node.id, agent, build, "signing a slice grant: {e}");
            return None;
        }
    }
    Some(g)
}

/// The hold each of `agents` agents' polls should ask for so that the leader answers at
/// most `rate` polls a second: 0 (the agent's own wait) while the farm is small, and never
/// more than a third of the lease (a held poll is the agent's heartbeat).
pub fn pace_ms(agents: usize, rate: u64, lease_ms: u64) -> u32 {
    let spread = (agents as u64).saturating_mul(1000) / rate.max(1);
    let pace = if spread <= 1000 { 0 } else { spread.min(lease_ms / 3) };
    u32::try_from(pace).unwrap_or(u32::MAX)
}

pub async fn poll(
    node: &Node,
    p: &Principal,
    agent: &str,
    running: Vec<SliceAttempt>,
    cache_bytes: u64,
    wait_ms: u32,
) -> Answer<AgentResponse> {
    if agent != p.name {
        return Err(err(ErrorCode::PermissionDenied, format!("agent {} may not poll as {agent}", p.name)));
    }
    if !node.read(|s| s.farm.contexts.contains_key(agent)) {
        return Err(err(ErrorCode::NotFound, format!("agent {agent} is not registered (removed with `kiln context rm`?)")));
    }
    let wake = node.agent_wake(agent);
    let deadline = Instant::now() + Duration::from_millis(u64::from(wait_ms).min(node.cfg.long_poll_max_ms));
    let lease = Duration::from_millis(node.cfg.lease_timeout_ms);
    node.soft().heard(agent, running.clone(), cache_bytes);
    loop {
        let tasks = tasks_for(node, agent, &running);
        // Slices of cancelled builds that the agent runs (it said so, or the leader knows it
        // was told to): it stops them.
        let (resync, mut cancel) = {
            let mut soft = node.soft();
            let told: Vec<(u64, u32, u32)> = soft.cancels.remove(agent).unwrap_or_default().iter().map(|a| a.to_wire()).collect();
            (!soft.tracker.knows(agent), told)
        };
        cancel.extend(node.read(|s| {
            running.iter().filter(|a| s.builds.get(&a.slice.build).is_some_and(|b| b.cancelled)).map(|a| a.to_wire()).collect::<Vec<_>>()
        }));
        cancel.sort_unstable();
        cancel.dedup();
        if !tasks.is_empty() || resync || !cancel.is_empty() || held_enough(node, deadline) {
            let revoked = node.read(|s| s.revoked_keys.iter().cloned().collect());
            let pace_ms = pace_ms(node.soft().live_agents(lease), node.cfg.poll_rate_max, node.cfg.lease_timeout_ms);
            return Ok(AgentResponse::Tasks { tasks, resync, cancel, revoked, pace_ms });
        }
        // Held until woken (a slice assigned, a build cancelled): nothing above changes
        // otherwise. Each second the heartbeat is refreshed, without looking again.
        loop {
            let now = Instant::now();
            tokio::select! {
                woken = tokio::time::timeout((deadline - now).min(Duration::from_secs(1)), wake.notified()) => {
                    if woken.is_ok() {
                        break;
                    }
                }
                _ = node.stop.cancelled() => break,
            }
            if held_enough(node, deadline) {
                break;
            }
            if let Some(l) = node.soft().agents.get_mut(agent) {
                l.last_seen = Instant::now();
            }
        }
    }
}

/// A held poll is answered at its deadline, or at once when this coordinator stops leading.
fn held_enough(node: &Node, deadline: Instant) -> bool {
    Instant::now() >= deadline || !node.is_leader() || node.stop.is_cancelled()
}

#[cfg(test)]
mod tests {
    use super::pace_ms;

    #[test]
    fn polls_of_a_large_farm_are_spread_to_the_rate_within_a_third_of_the_lease() {
        // A small farm: every agent polls at its own wait.
        assert_eq!(pace_ms(10, 1000, 10_000), 0);
        assert_eq!(pace_ms(1000, 1000, 10_000), 0);
        // 5,000 agents at 1,000 polls a second: each asks to be held 5 s, capped by the lease.
        assert_eq!(pace_ms(5000, 1000, 30_000), 5000);
        assert_eq!(pace_ms(5000, 1000, 10_000), 3333);
        assert_eq!(pace_ms(2500, 500, 60_000), 5000);
    }
}
