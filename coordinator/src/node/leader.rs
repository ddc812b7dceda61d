//! What only the leader does, in a loop woken by events and a short tick: take slices back
//! from agents whose lease ran out, run the scheduler and commit its assignments, finish builds
//! whose slices are all done (merge the index, push it under every tag), remove drained contexts.
//!
//! Decisions come from the pure [`crate::scheduler`]; this module gathers its inputs from the
//! replicated state and the soft state, and commits its outputs through Raft.

use super::live::alive;
use super::{now_ms, Node};
use crate::raft::{Attempt, BuildId, BuildRecord, BuildState, ClusterState, Command, SliceAssignment, SliceAttempt, SliceKey, SliceState};
use crate::scheduler::{self, AgentSnapshot, Params, PendingSlice, TenantUsage};
use kiln_shared::digest::Digest;
use kiln_shared::oci::{self, Descriptor, Index};
use kiln_shared::registry::{Reference, RegistryClient};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Expected native run time of a slice whose architecture has no history yet.
const DEFAULT_EXPECTED_MS: u64 = 60_000;

pub async fn run(node: Arc<Node>) {
    loop {
        tokio::select! {
            _ = node.stop.cancelled() => return,
            _ = node.wake_leader.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        if !node.is_leader() {
            let mut soft = node.soft();
            soft.leader_since = None;
            soft.finishing.clear();
            continue;
        }
        {
            let mut soft = node.soft();
            if soft.leader_since.is_none() {
                // A new leader knows no agent yet: each gets a full lease to poll again before
                // its slices are taken back.
                soft.leader_since = Some(Instant::now());
                soft.agents.clear();
                soft.tracker = Default::default();
            }
        }
        if let Err(e) = tick(&node).await {
            // Typically a lost leadership mid-tick; the next tick sees it.
            tracing::warn!(coordinator = node.id, "{}", e.message);
        }
    }
}

/// What a tick finds to do besides scheduling.
struct Plan {
    expired: Vec<(SliceAttempt, String)>,
    /// Some slice waits for an agent.
    queued: bool,
    finished: Vec<BuildId>,
    drained: Vec<String>,
}

/// The scheduler's inputs, read under `node.sched`.
struct Inputs {
    pending: Vec<PendingSlice>,
    /// The slice of each pending id (the scheduler's ids index this list), and the attempt an
    /// assignment starts.
    keys: Vec<(SliceKey, Attempt)>,
    view: FarmView,
    params: Params,
}

fn inputs(node: &Node, now: Instant) -> Inputs {
    node.read(|s| {
        let mut pending = Vec::new();
        let mut keys = Vec::new();
        for b in s.builds.values().filter(|b| b.state == BuildState::Running) {
            if b.slices.iter().any(|sl| sl.state == SliceState::Queued) {
                let candidates = candidates(s, b);
                for (key, sl) in b.keyed_slices() {
                    if sl.state == SliceState::Queued {
                        pending.push(pending_slice(s, b, key.index as usize, keys.len() as u64, candidates.clone()));
                        keys.push((key, sl.attempt.next()));
                    }
                }
            }
        }
        Inputs {
            pending,
            keys,
            view: farm_view(node, s, now),
            params: Params { slowdown: s.slowdowns(), default_slowdown: node.cfg.emulation_slowdown },
        }
    })
}

/// The agents the scheduler may use now, what they run, and each tenant's usage.
pub struct FarmView {
    pub agents: Vec<AgentSnapshot>,
    /// Registered agents that are not alive, with what they run.
    pub absent: Vec<Vec<kiln_shared::Platform>>,
    pub usage: HashMap<String, TenantUsage>,
    pub running: HashMap<String, u32>,
}

/// Call inside `node.read` (the state lock is taken before the soft-state lock, always).
pub fn farm_view(node: &Node, s: &ClusterState, now: Instant) -> FarmView {
    let mut running: HashMap<String, u32> = HashMap::new();
    let mut usage: HashMap<String, TenantUsage> = HashMap::new();
    for b in s.builds.values().filter(|b| b.state == BuildState::Running) {
        for sl in b.slices.iter().filter(|sl| sl.state == SliceState::Running) {
            *running.entry(sl.agent.clone()).or_default() += 1;
            usage.entry(b.tenant.clone()).or_default().running += 1;
        }
    }
    let mut agents = Vec::new();
    let mut absent = Vec::new();
    let soft = node.soft();
    for c in s.farm.contexts.values().filter(|c| !s.draining.contains(&c.name)) {
        if !alive(node.cfg.lease_timeout_ms, soft.leader_since, soft.agents.get(&c.name), now) {
            absent.push(c.native.iter().chain(&c.emulated).cloned().collect());
            continue;
        }
        agents.push(AgentSnapshot {
            name: c.name.clone(),
            native: c.native.clone(),
            emulated: c.emulated.clone(),
            slots: c.slots,
            running: running.get(&c.name).copied().unwrap_or(0) + soft.inflight.get(&c.name).copied().unwrap_or(0),
            cache_records: HashMap::new(),
        });
    }
    FarmView { agents, absent, usage, running }
}

/// The agents a build's builder allows (`None`: every agent).
pub fn candidates(s: &ClusterState, b: &BuildRecord) -> Option<Vec<String>> {
    let name = b.spec.builder.as_ref()?;
    s.farm.candidates(name).ok().map(|c| c.into_iter().map(|(n, _)| n).collect())
}

/// Slice `i` of `b` as the scheduler sees it, under the caller's opaque `id`; ids are handed
/// out in queue order (builds by id, then slices), which is also the order of arrival.
pub fn pending_slice(s: &ClusterState, b: &BuildRecord, i: usize, id: u64, candidates: Option<Vec<String>>) -> PendingSlice {
    let platform = b.slices[i].platform.clone();
    let expected = s.run_times.get(platform.arch()).filter(|t| t.native_count > 0).map(|t| t.native_ms / t.native_count);
    PendingSlice {
        id,
        build: b.id.to_wire(),
        tenant: b.tenant.clone(),
        queued_seq: id,
        candidates,
        expected_native_ms: expected.unwrap_or(DEFAULT_EXPECTED_MS),
        platform,
    }
}

/// Places the slices of a build about to be submitted, so that submitting and assigning are
/// one commit. The caller holds `node.sched` and reserves the result.
pub fn place_new(node: &Node, record: &BuildRecord) -> Vec<SliceAssignment> {
    let now = Instant::now();
    node.read(|s| {
        let view = farm_view(node, s, now);
        let candidates = candidates(s, record);
        let pending: Vec<PendingSlice> =
            (0..record.slices.len()).map(|i| pending_slice(s, record, i, i as u64, candidates.clone())).collect();
        let params = Params { slowdown: s.slowdowns(), default_slowdown: node.cfg.emulation_slowdown };
        scheduler::schedule(&pending, &view.agents, &view.usage, &params)
            .assignments
            .into_iter()
            .map(|a| SliceAssignment {
                slice: SliceKey::new(BuildId::UNNUMBERED, a.slice as u32),
                attempt: Attempt::FIRST,
                agent: a.agent,
                emulated: a.emulated,
                reason: a.reason,
            })
            .collect()
    })
}

async fn tick(node: &Arc<Node>) -> Result<(), kiln_shared::wire::RemoteError> {
    let now = Instant::now();
    let finishing = node.soft().finishing.clone();
    let plan = node.read(|s| {
        let soft = node.soft();
        let lost = |agent: &str| !alive(node.cfg.lease_timeout_ms, soft.leader_since, soft.agents.get(agent), now);
        let mut plan = Plan { expired: vec![], queued: false, finished: vec![], drained: vec![] };
        let mut busy = std::collections::HashSet::new();
        for b in s.builds.values().filter(|b| b.state == BuildState::Running) {
            for (key, sl) in b.keyed_slices() {
                match sl.state {
                    SliceState::Running => {
                        busy.insert(sl.agent.as_str());
                        if lost(&sl.agent) {
                            plan.expired.push((SliceAttempt::new(key, sl.attempt), sl.agent.clone()));
                        }
                    }
                    SliceState::Queued => plan.queued = true,
                    _ => {}
                }
            }
            if b.slices.iter().all(|sl| sl.state == SliceState::Done) && !finishing.contains(&b.id) {
                plan.finished.push(b.id);
            }
        }
        plan.drained = s.draining.iter().filter(|n| !busy.contains(n.as_str())).cloned().collect();
        plan
    });

    if !plan.expired.is_empty() {
        let mut by_agent: HashMap<&str, Vec<SliceAttempt>> = HashMap::new();
        for (at, agent) in &plan.expired {
            by_agent.entry(agent.as_str()).or_default().push(*at);
        }
        for (agent, slices) in by_agent {
            let reason = format!("agent {agent} stopped answering (its lease of {} ms ran out)", node.cfg.lease_timeout_ms);
            node.propose(Command::Requeue { at_ms: now_ms(), slices, reason, max_attempts: node.cfg.max_slice_attempts }).await?;
        }
        node.bump();
    }

    // Scheduling holds `sched` (as submits do) and decides on a fresh read made under it.
    if plan.queued {
        let mut scheduling = Some(node.sched.lock().await);
        let Inputs { pending, keys, view, params } = inputs(node, Instant::now());
        let decisions = scheduler::schedule(&pending, &view.agents, &view.usage, &params);
        if !decisions.assignments.is_empty() {
            let assignments = decisions
                .assignments
                .iter()
                .map(|a| SliceAssignment {
                    slice: keys[a.slice as usize].0,
                    attempt: keys[a.slice as usize].1,
                    agent: a.agent.clone(),
                    emulated: a.emulated,
                    reason: a.reason.clone(),
                })
                .collect::<Vec<_>>();
            node.reserve(&assignments);
            // Reserved: other decisions may be made while this one commits.
            scheduling.take();
            let committed = node.propose(Command::Assign { at_ms: now_ms(), assignments: assignments.clone() }).await;
            node.release(&assignments);
            committed?;
            node.bump();
        }
        for (id, reason) in decisions.impossible {
            // A registered agent that is away might run it when it is back: wait for it.
            let platform = pending.iter().find(|p| p.id == id).map(|p| p.platform.clone());
            if platform.is_some_and(|p| view.absent.iter().any(|runs| scheduler::runs(runs, &p))) {
                continue;
            }
            let build = keys[id as usize].0.build;
            let error = Some(reason);
            node.propose(Command::FinishBuild { at_ms: now_ms(), build, index_json: String::new(), index_digest: String::new(), error })
                .await?;
            node.bump();
        }
    }

    for build in plan.finished {
        node.soft().finishing.insert(build);
        let node = node.clone();
        tokio::spawn(async move {
            let outcome = finish(&node, build).await;
            if let Err(e) = outcome {
                tracing::warn!(coordinator = node.id, %build, "finishing the build: {}", e.message);
                node.soft().finishing.remove(&build);
            }
        });
    }

    for name in plan.drained {
        node.propose(Command::RemoveContext { name }).await?;
        node.bump();
    }
    Ok(())
}

/// Merges the slices' manifests into the index and, with `--push`, puts it under every tag
/// (the agents have pushed their blobs and manifests by digest). Pushing is idempotent, so a
/// new leader may do it again after a failover.
async fn finish(node: &Arc<Node>, build: BuildId) -> Result<(), kiln_shared::wire::RemoteError> {
    let Some(record) = node.read(|s| s.builds.get(&build).cloned()) else { return Ok(()) };
    let mut manifests = Vec::new();
    let mut error = None;
    for s in &record.slices {
        match serde_json::from_str::<Descriptor>(&s.manifest_json) {
            Ok(d) => manifests.push(d),
            Err(e) => error = Some(format!("{}: the agent reported an unreadable manifest descriptor: {e}", s.platform)),
        }
    }
    let index = Index::new(manifests);
    let bytes = oci::to_json(&index);
    let digest = Digest::of(&bytes);
    if error.is_none() && record.spec.push {
        let spec = record.spec.clone();
        let body = bytes.clone();
        let pushed = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let registry = RegistryClient::new(&spec.insecure_registries);
            for tag in &spec.tags {
                let r: Reference = tag.parse().map_err(|e| format!("{tag}: {e}"))?;
                registry
                    .put_manifest(&r, &r.reference(), oci::MEDIA_INDEX, &body)
                    .map_err(|e| format!("pushing the index to {tag}: {e}"))?;
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|e| Err(format!("the push task failed: {e}")));
        error = pushed.err();
    }
    // --cache-to type=registry: the agents pushed their layers; one cache for every platform.
    if let (None, Some(reference)) = (&error, record.spec.cache_to.as_ref().and_then(|c| c.registry.clone())) {
        let records: Vec<_> = record.slices.iter().flat_map(|s| s.records.iter().cloned()).collect();
        let insecure = record.spec.insecure_registries.clone();
        let n = node.clone();
        let pushed = tokio::task::spawn_blocking(move || {
            let registry = RegistryClient::new(&insecure);
            kiln_agent::cache::push_manifest(&reference, &records, &n.blobs, &registry)
                .map_err(|e| format!("exporting the cache to {reference}: {e}"))
        })
        .await
        .unwrap_or_else(|e| Err(format!("the push task failed: {e}")));
        error = pushed.err();
    }
    let index_json = String::from_utf8(bytes).unwrap_or_default();
    node.propose(Command::FinishBuild { at_ms: now_ms(), build, index_json, index_digest: digest.to_string(), error }).await?;
    node.bump();
    Ok(())
}
