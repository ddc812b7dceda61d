//! `kiln coordinator --metrics-listen ADDR`: the metrics endpoint of one coordinator. At each
//! scrape the gauges are set from this member's Raft metrics and, on the leader only, from the
//! replicated state and the leader's soft state (so that every value is reported once for the
//! farm); the counters are counted where events happen ([`slice_ended`] and the rooms).
//! Ready once this member knows a leader and has applied an entry of the current term.

use super::{views, Node};
use crate::metrics;
use crate::raft::SliceKey;
use kiln_shared::api::{BuildState, SliceState};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

/// Binds `addr` and serves until the returned task is dropped; `node` is filled in once the
/// member is up (until then `/readyz` answers 503 and only the counters are shown).
pub async fn serve(addr: SocketAddr, node: Arc<OnceLock<Arc<Node>>>) -> anyhow::Result<kiln_shared::task::TaskHandle<()>> {
    let listener = kiln_shared::metrics::server::bind(addr).await?;
    metrics::get();
    let ready = node.clone();
    let probes = kiln_shared::metrics::server::Probes {
        metrics: Box::new(move || {
            if let Some(n) = node.get() {
                refresh(n);
            }
            kiln_shared::metrics::global().render()
        }),
        ready: Box::new(move || ready.get().ok_or_else(|| "the coordinator is starting".to_string()).and_then(|n| readiness(n))),
    };
    Ok(kiln_shared::task::spawn("metrics endpoint", kiln_shared::metrics::server::serve(listener, Arc::new(probes))))
}

pub fn readiness(node: &Node) -> Result<(), String> {
    let metrics = node.raft.metrics();
    let m = metrics.borrow();
    if m.current_leader.is_none() {
        return Err(format!("coordinator {} knows no leader (term {})", node.id, m.current_term));
    }
    match m.last_applied {
        Some(l) if l.leader_id.term == m.current_term => Ok(()),
        _ => Err(format!("coordinator {} has not applied an entry of term {} yet", node.id, m.current_term)),
    }
}

/// Counts the end of a slice attempt in `kiln_slices_finished_total` and, once it succeeded,
/// its queue and run time; read from the state after the report was committed.
pub fn slice_ended(node: &Node, key: SliceKey, state: &str) {
    let Some((tenant, platform, emulated, queued, assigned, finished)) = node.read(|s| {
        let b = s.builds.get(&key.build)?;
        let sl = b.slices.get(key.index as usize)?;
        Some((b.tenant.clone(), sl.platform.to_string(), sl.emulated, sl.queued_at_ms, sl.assigned_at_ms, sl.finished_at_ms))
    }) else {
        return;
    };
    let m = metrics::get();
    let emulated = if emulated { "true" } else { "false" };
    m.slices_finished.inc(&[state, &tenant, &platform, emulated]);
    if state == "succeeded" && assigned > 0 {
        let secs = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1000.0;
        m.slice_queue_seconds.observe(&[&platform, emulated], secs(queued, assigned));
        m.slice_run_seconds.observe(&[&platform, emulated], secs(assigned, finished));
    }
}

fn refresh(node: &Node) {
    let m = metrics::get();
    let rm = node.raft.metrics().borrow().clone();
    let is_leader = rm.current_leader == Some(node.id);
    m.raft_term.set(&[], rm.current_term as f64);
    m.raft_is_leader.set(&[], if is_leader { 1.0 } else { 0.0 });
    m.raft_leader_id.set(&[], rm.current_leader.unwrap_or(0) as f64);
    m.raft_last_log_index.set(&[], rm.last_log_index.unwrap_or(0) as f64);
    let applied = rm.last_applied.map_or(0, |l| l.index);
    // What openraft last saved as committed; applying follows committing, never leads it.
    let committed = node.committed.load(Ordering::Relaxed).max(applied);
    m.raft_commit_index.set(&[], committed as f64);
    m.raft_applied_index.set(&[], applied as f64);
    m.raft_apply_lag.set(&[], (committed - applied) as f64);

    for g in [&m.builds, &m.slices, &m.agents, &m.agent_slots, &m.agent_running, &m.agent_cache_bytes] {
        g.clear();
    }
    if !node.is_leader() {
        return;
    }
    let (builds, slices) = node.read(|s| {
        let mut builds: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut slices: BTreeMap<(&'static str, String, String), u64> = BTreeMap::new();
        for b in s.builds.values() {
            *builds.entry(build_state(b.state)).or_default() += 1;
            for sl in &b.slices {
                *slices.entry((slice_state(sl.state), b.tenant.clone(), sl.platform.to_string())).or_default() += 1;
            }
        }
        (builds, slices)
    });
    for state in ["running", "succeeded", "failed"] {
        m.builds.set(&[state], builds.get(state).copied().unwrap_or(0) as f64);
    }
    for ((state, tenant, platform), n) in slices {
        m.slices.set(&[state, &tenant, &platform], n as f64);
    }
    let mut agents: BTreeMap<String, u64> = ["ready", "draining", "lost"].iter().map(|s| (s.to_string(), 0)).collect();
    for c in views::contexts(node) {
        *agents.entry(c.status.clone()).or_default() += 1;
        let name = c.info.name.as_str();
        m.agent_slots.set(&[name], f64::from(c.info.slots));
        m.agent_running.set(&[name], f64::from(c.running));
        m.agent_cache_bytes.set(&[name], c.cache_bytes as f64);
    }
    for (state, n) in agents {
        m.agents.set(&[&state], n as f64);
    }
}

/// The words the CLI uses for a build's and a slice's state (`done` is a success).
fn build_state(s: BuildState) -> &'static str {
    match s {
        BuildState::Running => "running",
        BuildState::Done => "succeeded",
        BuildState::Failed => "failed",
    }
}

fn slice_state(s: SliceState) -> &'static str {
    match s {
        SliceState::Done => "succeeded",
        other => other.as_str(),
    }
}
