//! What only the leader does, in a loop woken by events and a short tick: take slices back
//! from agents whose lease ran out, place queued slices and commit the assignments, fail builds
//! no agent can run, finish builds whose slices are all done (merge the index, push it under
//! every tag), remove drained contexts.
//!
//! The decisions are the pure [`plan`]; this module gathers its inputs from the replicated
//! state and the soft state, and carries the plan out through Raft and the registry.

pub mod placing;
pub mod plan;

use super::{now_ms, Node, Soft};
use crate::raft::{BuildId, BuildRecord, Command, SliceAssignment};
use kiln_shared::digest::Digest;
use kiln_shared::oci::{self, Index};
use kiln_shared::registry::{Reference, RegistryClient};
use kiln_shared::task::{self, TaskHandle};
use kiln_shared::wire::RemoteError;
use plan::{Agents, Plan, Settings};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub async fn run(node: Arc<Node>) {
    // Builds being finished; dropped (aborted) with this task. Finishing is idempotent, so a
    // build cut off here is finished again by the next leader.
    let mut finishers: Vec<TaskHandle<()>> = Vec::new();
    let mut retained: Option<Instant> = None;
    loop {
        finishers.retain(|f| !f.is_finished());
        tokio::select! {
            _ = node.stop.cancelled() => {
                // Shutting down: no more ticks; the builds being finished get the drain.
                for f in finishers {
                    let _ = f.await;
                }
                return;
            }
            _ = node.wake_leader.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(node.cfg.leader_tick_ms)) => {}
        }
        if !node.is_leader() {
            let mut soft = node.soft();
            soft.leader_since = None;
            soft.finishing.clear();
            soft.just_assigned.clear();
            soft.placing = None;
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
        // The history's retention policy, once a minute.
        if retained.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
            retained = Some(Instant::now());
            crate::node::history::retain(&node).await;
        }
        if let Err(e) = tick(&node, &mut finishers).await {
            // Typically a lost leadership mid-tick; the next tick sees it.
            tracing::warn!(coordinator = node.id, "{}", e.message);
        }
    }
}

fn settings(node: &Node) -> Settings {
    Settings {
        lease_timeout_ms: node.cfg.lease_timeout_ms,
        max_slice_attempts: node.cfg.max_slice_attempts,
        emulation_slowdown: node.cfg.emulation_slowdown,
        usage_window_ms: node.cfg.usage_window_secs.saturating_mul(1000),
    }
}

fn agents(soft: &Soft) -> Agents<'_> {
    Agents {
        live: &soft.agents,
        leader_since: soft.leader_since,
        inflight: &soft.inflight,
        tracker: &soft.tracker,
        lineage: &soft.lineage.records,
        now_ms: now_ms(),
    }
}

/// Places the slices of a build about to be submitted, so that submitting and assigning are
/// one commit. The caller holds `node.sched` and reserves the result. The farm is looked at
/// through the view submits share (see [`placing`]).
pub fn place_new(node: &Node, record: &BuildRecord) -> Vec<SliceAssignment> {
    let now = Instant::now();
    let settings = settings(node);
    node.read(|s| {
        // The state lock is taken before the soft-state lock, always.
        let mut soft = node.soft();
        let mut placing = match soft.placing.take() {
            Some(p) if p.fresh() => p,
            _ => placing::Placing::new(plan::farm_view(s, agents(&soft), now, &settings, &[]).into_owned()),
        };
        let wanted: Vec<(u64, &[String])> = record
            .slices
            .iter()
            .enumerate()
            .map(|(i, sl)| {
                (i as u64, soft.lineage.records.get(&plan::lineage(&record.spec, &sl.platform)).map(Vec::as_slice).unwrap_or(&[]))
            })
            .collect();
        placing.warm_for(&soft.tracker, &wanted);
        let assignments = plan::place_new(s, &placing.view, record, &settings);
        placing.placed(&assignments);
        soft.placing = Some(placing);
        assignments
    })
}

async fn tick(node: &Arc<Node>, finishers: &mut Vec<TaskHandle<()>>) -> Result<(), RemoteError> {
    let settings = settings(node);
    // Deciding holds `sched` (as submits do), on a read made under it, so that no two
    // decisions place slices on the same free slot.
    let scheduling = node.sched.lock().await;
    let now = Instant::now();
    let survey = node.read(|s| {
        let soft = node.soft();
        plan::survey(s, agents(&soft), &soft.finishing, now, &settings)
    });
    let plan = plan::decide(survey);
    node.soft().note_waiting(&plan.waiting);
    node.reserve(&plan.assignments);
    if !plan.assignments.is_empty() {
        // Submits' shared view does not know of these slots.
        node.soft().placing = None;
    }
    // Reserved: other decisions may be made while this one commits.
    drop(scheduling);
    let committed = place(node, &plan, &settings).await;
    node.release(&plan.assignments);
    committed?;

    for (build, reason) in plan.failures {
        let error = Some(reason);
        let r =
            node.propose(Command::FinishBuild { at_ms: now_ms(), build, index: Vec::new(), index_digest: String::new(), error }).await?;
        if r.ok {
            build_finished(node, build);
        }
        node.bump();
    }

    for build in plan.finished {
        node.soft().finishing.insert(build);
        let node = node.clone();
        let span = tracing::info_span!("build", build = build.to_wire(), coordinator = node.id);
        finishers.push(task::spawn(
            format!("finish build {build}"),
            tracing::Instrument::instrument(
                async move {
                    let outcome = finish(&node, build).await;
                    if let Err(e) = outcome {
                        tracing::warn!(coordinator = node.id, %build, "finishing the build: {}", e.message);
                        node.soft().finishing.remove(&build);
                    }
                },
                span,
            ),
        ));
    }

    for name in plan.drained {
        node.propose(Command::RemoveContext { name }).await?;
        node.bump();
    }
    Ok(())
}

/// Takes the lost slices back, then commits the assignments (some may be of slices just taken
/// back: the requeue is committed first).
async fn place(node: &Node, plan: &Plan, settings: &Settings) -> Result<(), RemoteError> {
    for lost in &plan.lost {
        node.propose(lost.requeue(now_ms(), settings)).await?;
        for at in &lost.slices {
            super::probes::slice_ended(node, at.slice, "lost");
            crate::node::agents::attempt_lost(node, *at, &lost.agent, &lost.reason);
        }
    }
    if !plan.lost.is_empty() {
        node.bump();
    }
    if !plan.assignments.is_empty() {
        node.propose(Command::Assign { at_ms: now_ms(), assignments: plan.assignments.clone() }).await?;
        node.note_assigned(plan.assignments.iter().map(|a| (a.agent.clone(), crate::raft::SliceAttempt::new(a.slice, a.attempt))));
        node.bump();
    }
    Ok(())
}

/// Merges the slices' manifests into the index and, with `--push`, puts it under every tag
/// (the agents have pushed their blobs and manifests by digest). Pushing is idempotent, so a
/// new leader may do it again after a failover.
async fn finish(node: &Arc<Node>, build: BuildId) -> Result<(), RemoteError> {
    let Some(record) = node.read(|s| s.builds.get(&build).cloned()) else { return Ok(()) };
    let mut manifests = Vec::new();
    let mut error = None;
    for s in &record.slices {
        match &s.manifest {
            Some(d) => manifests.push(d.clone()),
            None => error = Some(format!("{}: the agent reported no manifest descriptor", s.platform)),
        }
    }
    // As BuildKit lays them out: the images first, then each one's attestation manifest.
    manifests.extend(record.slices.iter().filter_map(|s| s.attestation.clone()));
    let mut index = Index::new(manifests);
    for (k, v) in kiln_shared::attest::annotations_for(&record.spec.annotations, kiln_shared::attest::AnnotationLevel::Index, None) {
        index.annotations.insert(k.clone(), v.clone());
    }
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
    let r = node.propose(Command::FinishBuild { at_ms: now_ms(), build, index: bytes, index_digest: digest.to_string(), error }).await?;
    if r.ok {
        build_finished(node, build);
    }
    node.bump();
    Ok(())
}

/// Counts a build whose end was just committed, by the state it ended in.
fn build_finished(node: &Node, build: BuildId) {
    crate::node::history::ended(node, build);
    let Some((state, tenant)) = node.read(|s| s.builds.get(&build).map(|b| (b.state, b.tenant.clone()))) else { return };
    let state = match state {
        crate::raft::BuildState::Done => "succeeded",
        crate::raft::BuildState::Failed => "failed",
        crate::raft::BuildState::Running => return,
    };
    crate::metrics::get().builds_finished.inc(&[state, &tenant]);
}
