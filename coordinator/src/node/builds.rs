//! Builds from the CLI's side, on the leader: submitting (refused at once when no agent of the
//! builder can run a platform; placed in the same commit where slots are free) and watching
//! progress and state with a long poll.

use super::reply::{bad, err, Answer};
use super::{leader, now_ms, views, Node};
use crate::builders::{self, DEFAULT_BUILDER};
use crate::raft::{BuildId, BuildRecord, BuildState, Command, SliceAttempt, SliceKey};
use kiln_shared::api::{BuildSpec, ClientResponse, Principal, Role};
use kiln_shared::wire::ErrorCode;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

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
    let usable: Vec<_> = candidates.iter().filter(|c| !draining.contains(c.name())).collect();
    if usable.iter().any(|c| c.platforms().any(|p| crate::scheduler::runs(std::slice::from_ref(p), platform))) {
        return None;
    }
    let have: Vec<String> = usable
        .iter()
        .map(|c| {
            let ps: Vec<String> = c.platforms().map(|p| p.to_string()).collect();
            format!("{}: {}", c.name(), if ps.is_empty() { "none".to_string() } else { ps.join(", ") })
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

pub async fn submit(node: &Node, p: &Principal, origin: SocketAddr, mut spec: BuildSpec) -> Answer<ClientResponse> {
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
        return Ok(ClientResponse::Submitted { build: build.to_wire() });
    }
    // The cache scope is the farm's decision, never the client's.
    let shared = node.read(|s| s.farm.shares_cache(&builder));
    spec.cache_scope = if shared { "shared".to_string() } else { format!("tenant:{}", p.tenant()) };
    spec.tenant = p.tenant().to_string();
    // Where the slices fetch the blobs: the receiving coordinator, then its copy's holder.
    let mut origins = vec![origin];
    origins.extend(spec.replicas.iter().copied().filter(|a| *a != origin));
    let record = BuildRecord::new(p.tenant(), spec, origins, now_ms());
    // Slices that can be placed now are assigned in the same commit as the build.
    let scheduling = node.sched.lock().await;
    let assignments = leader::place_new(node, &record);
    // The leader's tick places what a submit could not (and fails what nobody can run); with
    // every slice placed, waking it for each submit would survey the farm for nothing.
    let left_for_the_tick = assignments.len() < record.slices.len() || record.slices.is_empty();
    node.reserve(&assignments);
    drop(scheduling);
    let r = node.commit(Command::Submit { build: Box::new(record), assignments: assignments.clone() }).await;
    if let Ok(r) = &r {
        let id = BuildId::from_wire(r.value);
        node.note_assigned(assignments.iter().map(|a| (a.agent.clone(), SliceAttempt::new(SliceKey::new(id, a.slice.index), a.attempt))));
    }
    node.release(&assignments);
    let r = r?;
    crate::metrics::get().builds_submitted.inc(&[p.tenant()]);
    if left_for_the_tick {
        node.wake_leader.notify_one();
    }
    Ok(ClientResponse::Submitted { build: r.value })
}

pub async fn watch(node: &Node, p: &Principal, build: BuildId, cursor: u64, wait_ms: u32) -> Answer<ClientResponse> {
    let mut changed = node.changed.subscribe();
    let deadline = Instant::now() + Duration::from_millis(u64::from(wait_ms).min(node.cfg.long_poll_max_ms));
    // The build's session questions go to its own tenant's client only (an admin watching
    // another tenant's build neither sees nor answers them).
    let own = node.read(|s| s.builds.get(&build).is_some_and(|b| b.tenant == p.tenant()));
    loop {
        let waiting = node.soft().waiting_of(build);
        let view = node.read(|s| {
            s.builds.get(&build).filter(|b| b.tenant == p.tenant() || p.role == Role::Admin).map(|b| views::build_view(b, &waiting))
        });
        let view = view.ok_or_else(|| err(ErrorCode::NotFound, format!("no build {build}")))?;
        let (events, next) = {
            let soft = node.soft();
            match soft.events.get(&build) {
                Some(all) => {
                    let from = (cursor as usize).min(all.len());
                    (all[from..].to_vec(), all.len() as u64)
                }
                // A finished build whose events left memory: its log on disk.
                None if view.state != BuildState::Running => {
                    drop(soft);
                    let all = super::history::events_of(node, build).unwrap_or_default();
                    let from = (cursor as usize).min(all.len());
                    (all[from..].to_vec(), all.len() as u64)
                }
                None => (vec![], 0),
            }
        };
        let asks = if own { node.soft().sessions.asks_of(build) } else { vec![] };
        let now = Instant::now();
        if !events.is_empty() || !asks.is_empty() || view.state != BuildState::Running || now >= deadline || node.stop.is_cancelled() {
            return Ok(ClientResponse::Build { view, events, cursor: next, asks });
        }
        tokio::select! {
            _ = tokio::time::timeout(deadline - now, changed.changed()) => {}
            _ = node.stop.cancelled() => {}
        }
    }
}
