//! Telling the tracker what this agent's store and step cache hold, as changes since the
//! last time it was told, so that the farm's other agents can fetch from it.

use super::{Holdings, Worker};
use kiln_shared::api::{AgentRequest, AgentResponse, Inventory};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Tells the tracker what changed in this agent's store and step cache since the last time
/// (everything, the first time and after a failover).
pub(super) async fn advertise(w: &Worker) {
    let mut advertised = w.advertised.lock().await;
    let root = w.cfg.data_dir.clone();
    let Ok(now) = tokio::task::spawn_blocking(move || holdings(&root)).await else { return };
    let before = advertised.take();
    let full = before.is_none();
    let before = before.unwrap_or_default();
    let diff = |now: &HashSet<String>, then: &HashSet<String>| now.difference(then).cloned().collect::<Vec<_>>();
    let inv = Inventory {
        agent: w.cfg.name.clone(),
        full,
        blobs_added: diff(&now.blobs, &before.blobs),
        blobs_removed: diff(&before.blobs, &now.blobs),
        records_added: diff(&now.records, &before.records),
        records_removed: diff(&before.records, &now.records),
    };
    if !full && inv.blobs_added.is_empty() && inv.blobs_removed.is_empty() && inv.records_added.is_empty() && inv.records_removed.is_empty()
    {
        *advertised = Some(before);
        return;
    }
    let deadline = Duration::from_millis(w.cfg.advertise_deadline_ms);
    match w.farm.call(&AgentRequest::Advertise(inv), deadline, deadline).await {
        Ok(AgentResponse::Advertised { resync: false }) => *advertised = Some(now),
        // The tracker does not know this agent (a new leader): tell it everything next time.
        Ok(_) => *advertised = None,
        Err(e) => {
            tracing::warn!(agent = %w.cfg.name, "advertising to the tracker: {e}");
            *advertised = if full { None } else { Some(before) };
        }
    }
}

fn holdings(root: &Path) -> Holdings {
    let mut h = Holdings::default();
    if let Ok(store) = kiln_shared::store::ContentStore::open(&root.join("content")) {
        h.blobs = store.list().unwrap_or_default().into_iter().map(|(d, _, _)| d.to_string()).collect();
    }
    for e in std::fs::read_dir(root.join("cache")).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(stem) = name.strip_suffix(".json") {
            h.records.insert(stem.to_string());
        }
    }
    h
}

/// Advertises every `advertise_interval_ms`, for as long as the agent runs.
pub(super) async fn keep_advertising(w: Arc<Worker>) {
    loop {
        advertise(&w).await;
        tokio::time::sleep(Duration::from_millis(w.cfg.advertise_interval_ms)).await;
    }
}
