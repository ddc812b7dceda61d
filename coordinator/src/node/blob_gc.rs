//! The coordinator's blob store shrinks: context, cache and layout blobs that no running build
//! names go once unused for `blob_keep_secs` (a blob's mtime is its last use: an upload, or a
//! client finding it already here), or oldest first past `blob_keep_bytes`; and at once with
//! `kiln prune --coordinators` (admins). Neither takes a blob used within
//! `blob_upload_grace_secs`: between a client's upload (or its missing-blobs check finding the
//! blob here) and its submit, no build names the blob yet. Each coordinator collects its own
//! store: blobs are local to the coordinator that received them.

use super::Node;
use crate::raft::{BuildState, ClusterState};
use kiln_shared::api::{CacheRef, EntryKind, PruneReport, PruneSpec};
use kiln_shared::digest::Digest;
use std::collections::HashSet;
use std::time::{Duration, SystemTime};

/// Every blob a running build names: its context files (and their manifest blob), named
/// contexts, OCI layouts, and the uploaded caches with every blob their configs name.
fn in_use(node: &Node) -> HashSet<String> {
    let (mut out, manifests) = node.read(|s| named_by_running(s, node));
    // Read outside the state's lock: a manifest may list hundreds of thousands of entries. One
    // this coordinator does not hold names no file it holds for the build.
    for m in manifests {
        for e in super::blobs::read_manifest(node, &m).unwrap_or_default() {
            if let EntryKind::File { digest, .. } = e.kind {
                out.insert(digest);
            }
        }
    }
    out
}

/// What [`in_use`] finds in the state: the blobs running builds name inline, and the builds
/// manifest blobs that hold the other builds' context entries.
fn named_by_running(state: &ClusterState, node: &Node) -> (HashSet<String>, Vec<String>) {
    let mut out = HashSet::new();
    let mut manifests = Vec::new();
    for b in state.builds.values().filter(|b| b.state == BuildState::Running) {
        if let Some(m) = &b.spec.context_manifest {
            out.insert(m.clone());
            manifests.push(m.clone());
        }
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
    (out, manifests)
}

pub(super) fn digests_in(text: &str) -> impl Iterator<Item = String> + '_ {
    text.match_indices("sha256:").filter_map(move |(i, _)| {
        let hex = text.get(i + 7..i + 7 + 64)?;
        hex.bytes().all(|c| c.is_ascii_hexdigit()).then(|| format!("sha256:{hex}"))
    })
}

/// Removes what `spec` selects among the blobs no running build names and none used within
/// `blob_upload_grace_secs`: all of them (`-a`, or no filter), those unused for `until_s`, or
/// the least recently used beyond `keep_storage`.
pub fn prune(node: &Node, spec: &PruneSpec) -> PruneReport {
    let used = in_use(node);
    let mut report = PruneReport::default();
    let Ok(mut blobs) = node.blobs.list() else { return report };
    // What running builds hold counts toward `keep_storage` too.
    let total: u64 = blobs.iter().map(|b| b.1).sum();
    let now = SystemTime::now();
    let grace = Duration::from_secs(node.cfg.blob_upload_grace_secs);
    // A blob in its grace period may be on its way into a build being submitted.
    let in_grace = |t: SystemTime| now.duration_since(t).unwrap_or_default() < grace;
    blobs.retain(|(d, _, t)| !used.contains(d.as_str()) && !in_grace(*t));
    // Oldest first.
    blobs.sort_by_key(|(_, _, t)| *t);
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
