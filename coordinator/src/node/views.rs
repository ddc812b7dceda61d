//! What the CLI is shown: builds with their slices, contexts with their liveness, builders
//! with their nodes and recent slices. Built from the replicated state and the leader's soft
//! state; no decisions are made here.

use super::live::alive;
use super::{now_ms, Node};
use crate::builders;
use crate::raft::{self, BuildRecord, BuildState, SliceKey, SliceState};
use kiln_shared::api::{BuildView, BuilderView, ContextView, NodeView, SliceView};
use std::time::Instant;

fn slice_view(key: SliceKey, s: &raft::SliceRecord, now: u64, waiting: Option<String>) -> SliceView {
    let queue_ms = match s.state {
        SliceState::Queued => now.saturating_sub(s.queued_at_ms),
        _ => s.assigned_at_ms.saturating_sub(s.queued_at_ms),
    };
    SliceView {
        slice: key.index,
        platform: s.platform.clone(),
        state: s.state,
        agent: s.agent.clone(),
        emulated: s.emulated,
        emulated_steps: s.emulated_steps.clone(),
        attempt: s.attempt.to_wire(),
        manifest: s.manifest.clone(),
        attestation: s.attestation.clone(),
        queue_ms,
        duration_ms: s.duration_ms,
        cache_hits: s.cache_hits,
        cache_misses: s.cache_misses,
        cache_peer_hits: s.cache_peer_hits,
        reason: s.reason.clone(),
        waiting,
    }
}

/// `waiting`: the leader's waiting reasons of the build's slices, by index.
pub fn build_view(b: &BuildRecord, waiting: &std::collections::BTreeMap<u32, String>) -> BuildView {
    let now = now_ms();
    BuildView {
        id: b.id.to_wire(),
        state: b.state,
        slices: b.keyed_slices().map(|(key, s)| slice_view(key, s, now, waiting.get(&key.index).cloned())).collect(),
        index: b.index.clone(),
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

pub fn contexts(node: &Node) -> Vec<ContextView> {
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

/// Which recent slices a builder view shows.
pub enum Recent<'a> {
    None,
    /// Only builds of this tenant (what a user token sees).
    Tenant(&'a str),
    /// Every tenant's (admins).
    All,
}

pub fn builder_view(node: &Node, contexts: &[ContextView], b: &builders::Builder, recent: Recent) -> BuilderView {
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
    let tenant = match recent {
        Recent::None => None,
        Recent::Tenant(t) => Some(Some(t)),
        Recent::All => Some(None),
    };
    let recent = if let Some(tenant) = tenant {
        let names: Vec<&str> = b.nodes.iter().map(|n| n.context.as_str()).collect();
        let now = now_ms();
        node.read(|s| {
            let soft = node.soft();
            let mut out: Vec<(u64, SliceView)> = s
                .builds
                .values()
                .rev()
                .filter(|b| tenant.is_none_or(|t| b.tenant == t))
                .flat_map(|b| b.keyed_slices())
                .filter(|(_, sl)| names.contains(&sl.agent.as_str()))
                .take(20)
                .map(|(key, sl)| (key.build.to_wire(), slice_view(key, sl, now, soft.waiting.get(&key).cloned())))
                .collect();
            out.reverse();
            out
        })
    } else {
        vec![]
    };
    BuilderView { name: b.name.clone(), driver: b.driver.clone(), nodes, recent }
}
