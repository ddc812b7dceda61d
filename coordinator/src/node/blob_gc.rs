//! The coordinator's blob store shrinks: context, cache and layout blobs that no running build
//! names go once unused for `blob_keep_secs` (a blob's mtime is its last use: an upload, or a
//! client finding it already here), or oldest first past `blob_keep_bytes`; and at once with
//! `kiln prune --coordinators` (admins). Each coordinator collects its own store: blobs are
//! local to the coordinator that received them.

use super::Node;
use crate::raft::{BuildState, ClusterState};
use kiln_shared::api::{CacheRef, EntryKind, PruneReport, PruneSpec};
use kiln_shared::digest::Digest;
use std::collections::HashSet;
use std::time::{Duration, SystemTime};

/// Every blob a running build names: its context files, named contexts, OCI layouts, and the
/// uploaded caches with every blob their configs name.
fn in_use(state: &ClusterState, node: &Node) -> HashSet<String> {
    let mut out = HashSet::new();
    for b in state.builds.values().filter(|b| b.state == BuildState::Running) {
        for e in b.spec.all_entries() {
            if let EntryKind::File { digest, .. } = &e.kind {
                out.insert(digest.clone());
            }
        }
        out.extend(b.spec.layout_blobs().map(str::to_string));
        for c in &b.spec.cache_from {
            if let CacheRef::Uploaded { config } = c {
                out.insert(config.clone());
                // The config names its layers: every `sha256:<64 hex>` in it.
                if let Some(bytes) = config.parse::<Digest>().ok().and_then(|d| node.blobs.read(&d).ok()) {
                    out.extend(digests_in(&String::from_utf8_lossy(&bytes)));
                }
            }
        }
    }
    out
}

pub(super) fn digests_in(text: &str) -> impl Iterator<Item = String> + '_ {
    text.match_indices("sha256:").filter_map(move |(i, _)| {
        let hex = text.get(i + 7..i + 7 + 64)?;
        hex.bytes().all(|c| c.is_ascii_hexdigit()).then(|| format!("sha256:{hex}"))
    })
}

/// Removes what `spec` selects among the blobs no running build names: all of them (`-a`, or
/// no filter), those unused for `until_s`, or the least recently used beyond `keep_storage`.
pub fn prune(node: &Node, spec: &PruneSpec) -> PruneReport {
    let used = node.read(|s| in_use(s, node));
    let mut report = PruneReport::default();
    let Ok(mut blobs) = node.blobs.list() else { return report };
    // What running builds hold counts toward `keep_storage` too.
    let total: u64 = blobs.iter().map(|b| b.1).sum();
    blobs.retain(|(d, _, _)| !used.contains(d.as_str()));
    // Oldest first.
    blobs.sort_by_key(|(_, _, t)| *t);
    let now = SystemTime::now();
    let old_enough = |t: SystemTime| spec.until_s.is_none_or(|s| now.duration_since(t).unwrap_or_default() >= Duration::from_secs(s));
    let mut over = match spec.keep_storage {
        // Only what is past the limit.
        Some(keep) if !spec.all => total.saturating_sub(keep),
        _ => u64::MAX,
    };
    for (d, size, t) in blobs {
        if over == 0 || !old_enough(t) {
            continue;
        }
        if node.blobs.remove(&d).is_ok() {
            report.blobs_removed += 1;
            report.bytes_reclaimed += size;
            over = over.saturating_sub(size);
        }
    }
    if report.blobs_removed > 0 {
        tracing::info!(coordinator = node.id, blobs = report.blobs_removed, bytes = report.bytes_reclaimed, "blob gc removed blobs");
    }
    report
}

/// The policy, every `blob_gc_interval_secs`: unused for `blob_keep_secs`, and the oldest
/// beyond `blob_keep_bytes` (0: no limit).
pub async fn keep_collecting(node: std::sync::Arc<Node>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(node.cfg.blob_gc_interval_secs.max(1))) => {}
            _ = node.stop.cancelled() => return,
        }
        let by_age = PruneSpec { all: false, until_s: Some(node.cfg.blob_keep_secs), keep_storage: None };
        let by_size = PruneSpec { all: false, until_s: None, keep_storage: Some(node.cfg.blob_keep_bytes) };
        let n = node.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if n.cfg.blob_keep_secs > 0 {
                prune(&n, &by_age);
            }
            if n.cfg.blob_keep_bytes > 0 {
                prune(&n, &by_size);
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_digests_a_cache_config_names() {
        let a = format!("sha256:{}", "a".repeat(64));
        let text = format!("{{\"layers\":[{{\"digest\":\"{a}\"}}],\"bad\":\"sha256:xyz\"}}");
        assert_eq!(super::digests_in(&text).collect::<Vec<_>>(), vec![a]);
    }
}
