//! Build history on the leader: `kiln history ls|inspect|rm`, a client's cancel, the build's
//! progress log kept on disk once it ends (`kiln history logs` of a finished build, after the
//! in-memory events are gone), and the retention policy (per tenant, by count and age).
//! Builds and their steps are in the Raft state; logs are files of the coordinator that led
//! while the build ran.

use super::reply::{err, Answer};
use super::{explain, now_ms, views, Node};
use crate::raft::{BuildId, BuildRecord, BuildState, Command, SliceAttempt, SliceState};
use kiln_shared::api::{BuildDetail, BuildEvent, BuildSummary, ClientResponse, HistoryFilter, Principal, Role};
use kiln_shared::wire::ErrorCode;
use std::path::PathBuf;

/// Whether `p` may see build `b`: its own tenant's, or any for an admin.
fn visible(p: &Principal, b: &BuildRecord) -> bool {
    p.role == Role::Admin || b.tenant == p.tenant()
}

fn status(b: &BuildRecord) -> &'static str {
    match b.state {
        BuildState::Running => "running",
        BuildState::Done => "completed",
        BuildState::Failed if b.cancelled => "cancelled",
        BuildState::Failed => "failed",
    }
}

pub fn summary(b: &BuildRecord) -> BuildSummary {
    let steps = b.slices.iter().map(|s| s.steps.iter().filter(|st| st.position > 1).count() as u32).sum();
    let cached = b.slices.iter().map(|s| s.steps.iter().filter(|st| st.position > 1 && st.source.cached()).count() as u32).sum();
    BuildSummary {
        id: b.id.to_wire(),
        tenant: b.tenant.clone(),
        state: b.state,
        status: status(b).to_string(),
        tags: b.spec.tags.clone(),
        platforms: b.spec.platforms.clone(),
        builder: b.spec.builder.clone().unwrap_or_else(|| crate::builders::DEFAULT_BUILDER.to_string()),
        dockerfile: b.spec.dockerfile_name.clone(),
        target: b.spec.target.clone(),
        submitted_at_ms: b.submitted_at_ms,
        finished_at_ms: b.finished_at_ms,
        steps,
        cached_steps: cached,
        error: b.error.clone(),
    }
}

fn wanted(f: &HistoryFilter, b: &BuildRecord) -> bool {
    let status_ok = match f.status.as_deref() {
        None => true,
        Some("error") => status(b) == "failed",
        Some(s) => status(b) == s,
    };
    status_ok
        && f.reference.as_deref().is_none_or(|r| b.spec.tags.iter().any(|t| t.contains(r)))
        && f.platform.as_ref().is_none_or(|p| b.spec.platforms.contains(p))
        && f.tenant.as_deref().is_none_or(|t| b.tenant == t)
        && f.since_ms.is_none_or(|t| b.submitted_at_ms >= t)
}

pub fn list(node: &Node, p: &Principal, f: &HistoryFilter) -> Answer<ClientResponse> {
    let limit = if f.limit == 0 { usize::MAX } else { f.limit as usize };
    let builds =
        node.read(|s| s.builds.values().rev().filter(|b| visible(p, b) && wanted(f, b)).take(limit).map(summary).collect::<Vec<_>>());
    Ok(ClientResponse::History(builds))
}

pub fn inspect(node: &Node, p: &Principal, build: Option<u64>) -> Answer<ClientResponse> {
    let waiting = build.map(|b| node.soft().waiting_of(BuildId::from_wire(b))).unwrap_or_default();
    let detail = node.read(|s| {
        let b = match build {
            Some(id) => s.builds.get(&BuildId::from_wire(id)).filter(|b| visible(p, b)),
            None => s.builds.values().rev().find(|b| b.tenant == p.tenant()),
        }?;
        let previous = explain::previous(s.builds.values(), b);
        Some(BuildDetail {
            summary: summary(b),
            view: views::build_view(b, &waiting),
            steps: b.slices.iter().map(|s| s.steps.clone()).collect(),
            build_args: b.spec.build_args.clone(),
            previous: previous.map(|p| p.id.to_wire()),
            misses: previous.map(|prev| explain::explain(prev, b)).unwrap_or_default(),
        })
    });
    match detail {
        Some(d) => Ok(ClientResponse::BuildDetail(Box::new(d))),
        None => Err(err(
            ErrorCode::NotFound,
            match build {
                Some(id) => format!("no build {id} in this tenant's history"),
                None => "no builds in this tenant's history yet".to_string(),
            },
        )),
    }
}

pub async fn forget(node: &Node, p: &Principal, builds: Vec<u64>) -> Answer<ClientResponse> {
    let ids: Vec<BuildId> = builds.iter().map(|b| BuildId::from_wire(*b)).collect();
    let (mine, running, missing) = node.read(|s| {
        let mut mine = Vec::new();
        let (mut running, mut missing) = (Vec::new(), Vec::new());
        for id in &ids {
            match s.builds.get(id).filter(|b| visible(p, b)) {
                None => missing.push(id.to_wire()),
                Some(b) if b.state == BuildState::Running => running.push(id.to_wire()),
                Some(_) => mine.push(*id),
            }
        }
        (mine, running, missing)
    });
    if let Some(id) = missing.first() {
        return Err(err(ErrorCode::NotFound, format!("no build {id} in this tenant's history")));
    }
    if let Some(id) = running.first() {
        return Err(err(ErrorCode::BadRequest, format!("build {id} is still running: cancel it first (Ctrl-C in its kiln build)")));
    }
    let r = node.commit(Command::ForgetBuilds { builds: mine.clone() }).await?;
    for id in mine {
        drop_log(node, id);
    }
    Ok(ClientResponse::Count(r.value))
}

pub async fn cancel(node: &Node, p: &Principal, build: u64) -> Answer<ClientResponse> {
    let id = BuildId::from_wire(build);
    if !node.read(|s| s.builds.get(&id).is_some_and(|b| visible(p, b))) {
        return Err(err(ErrorCode::NotFound, format!("no build {build}")));
    }
    let reason = format!("cancelled by {} (the client pressed Ctrl-C)", p.name);
    let running: Vec<(String, SliceAttempt)> = node.read(|s| {
        s.builds.get(&id).map_or(vec![], |b| {
            b.keyed_slices()
                .filter(|(_, sl)| sl.state == SliceState::Running)
                .map(|(key, sl)| (sl.agent.clone(), SliceAttempt { slice: key, attempt: sl.attempt }))
                .collect()
        })
    });
    let r = node.commit(Command::CancelBuild { at_ms: now_ms(), build: id, reason }).await?;
    if r.ok {
        // Their agents are told at once, in answer to the poll they have waiting.
        for (agent, at) in running {
            node.soft().cancels.entry(agent.clone()).or_default().push(at);
            node.agent_wake(&agent).notify_one();
        }
        ended(node, id);
        node.wake_leader.notify_one();
        node.bump();
    }
    Ok(ClientResponse::Ok)
}

fn log_path(node: &Node, build: BuildId) -> PathBuf {
    node.cfg.data_dir.join("history").join(format!("{}.events.json", build.to_wire()))
}

/// A build ended: its progress log is kept on disk, for `kiln history logs` once the leader's
/// memory has let it go.
pub fn ended(node: &Node, build: BuildId) {
    let Some(events) = node.soft().events.get(&build).cloned() else { return };
    let path = log_path(node, build);
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(path.parent().unwrap_or(&path))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&events).unwrap_or_default())?;
        std::fs::rename(&tmp, &path)
    };
    if let Err(e) = write() {
        tracing::warn!(build = build.to_wire(), "keeping the build's log: {e}");
    }
}

/// The events of a build: in memory while recent, else from its log on disk.
pub fn events_of(node: &Node, build: BuildId) -> Option<Vec<BuildEvent>> {
    if let Some(e) = node.soft().events.get(&build) {
        return Some(e.clone());
    }
    let bytes = std::fs::read(log_path(node, build)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn drop_log(node: &Node, build: BuildId) {
    node.soft().events.remove(&build);
    let _ = std::fs::remove_file(log_path(node, build));
}

/// The retention policy, applied by the leader now and then: per tenant, the newest
/// `history_keep_builds` finished builds for at most `history_keep_secs`.
pub async fn retain(node: &Node) {
    let older_than = now_ms().saturating_sub(node.cfg.history_keep_secs.saturating_mul(1000));
    let expired = node.read(|s| s.expired(node.cfg.history_keep_builds, older_than));
    if expired.is_empty() {
        return;
    }
    match node.propose(Command::ForgetBuilds { builds: expired.clone() }).await {
        Ok(_) => {
            tracing::info!(builds = expired.len(), "history: forgot builds past the retention policy");
            for id in expired {
                drop_log(node, id);
            }
        }
        Err(e) => tracing::warn!("history retention: {}", e.message),
    }
}
