//! Telling the tracker what this agent's store and step cache hold, as changes since the
//! last time it was told, so that the farm's other agents can fetch from it.
//!
//! An idle agent sends nothing, and lists nothing: the holdings are names in two directories
//! (the store's blobs, the cache's records), and a directory's mtime changes whenever a name
//! is added or removed, so an unchanged pair of mtimes means unchanged holdings.

use super::{Holdings, Worker};
use kiln_shared::api::{AgentRequest, AgentResponse, Inventory};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How much older than a listing an mtime must be to vouch for it. A name added in the same
/// timestamp tick as the listing could leave the mtime as it was when read (filesystems keep
/// coarse clocks, some to the second or two): such a "racily clean" mtime (git's term, and its
/// rule) is not trusted, and the next interval lists again.
const STAMP_MARGIN: Duration = Duration::from_secs(2);

/// The mtimes of the store's blob directory and of the step cache's directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Stamps {
    blobs: Option<SystemTime>,
    records: Option<SystemTime>,
}

fn stamps(root: &Path) -> Stamps {
    let store = kiln_shared::store::ContentStore::open(&root.join("content")).ok();
    Stamps { blobs: store.and_then(|s| s.listing_mtime()), records: std::fs::metadata(root.join("cache")).and_then(|m| m.modified()).ok() }
}

impl Stamps {
    /// These stamps, if both are older than `listed` (when the listing began) by the margin. A
    /// directory that is missing holds nothing, and gets an mtime when it is made.
    fn trusted(self, listed: SystemTime) -> Option<Stamps> {
        let old = |t: Option<SystemTime>| match t {
            None => true,
            Some(t) => t + STAMP_MARGIN < listed,
        };
        (old(self.blobs) && old(self.records)).then_some(self)
    }
}

/// Tells the tracker what changed in this agent's store and step cache since the last time
/// (everything, the first time and after a failover).
pub(super) async fn advertise(w: &Worker) {
    let mut advertised = w.advertised.lock().await;
    let root = w.cfg.data_dir.clone();
    let before = advertised.take();
    // Nothing was added or removed since the holdings last told: nothing to list or send.
    if let Some(b) = before.as_ref().filter(|b| b.stamps.is_some()) {
        let root = root.clone();
        if tokio::task::spawn_blocking(move || stamps(&root)).await.ok() == b.stamps {
            *advertised = before;
            return;
        }
    }
    let Ok(now) = tokio::task::spawn_blocking(move || holdings(&root)).await else {
        *advertised = before;
        return;
    };
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
        // The same names, and now perhaps stamps old enough to skip the next listing.
        *advertised = Some(now);
        return;
    }
    let request = AgentRequest::Advertise(inv);
    let kind = if full { "full" } else { "changes" };
    crate::metrics::get().advertise_bytes.add(&[kind], kiln_shared::wire::frame_len(&request).unwrap_or(0));
    let deadline = Duration::from_millis(w.cfg.advertise_deadline_ms);
    match w.farm.call(&request, deadline, deadline).await {
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
    let listed = SystemTime::now();
    let mut h = Holdings { stamps: stamps(root).trusted(listed), ..Default::default() };
    crate::metrics::get().advertise_listings.inc(&[]);
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

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_shared::store::ContentStore;

    /// Sets a directory's mtime (as if its last change were long ago).
    fn age(dir: &Path, ago: Duration) {
        std::fs::File::open(dir).unwrap().set_modified(SystemTime::now() - ago).unwrap();
    }

    #[test]
    fn stamps_vouch_only_when_old_and_change_with_the_names() {
        let root = std::env::temp_dir().join(format!("kiln-advertise-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let store = ContentStore::open(&root.join("content")).unwrap();
        std::fs::create_dir_all(root.join("cache")).unwrap();
        store.put(b"one").unwrap();
        // Just changed: the same tick may hold another change, so the listing is not trusted.
        assert_eq!(stamps(&root).trusted(SystemTime::now()), None);
        let blobs_dir = store.path(&kiln_shared::digest::Digest::of(b"one")).parent().unwrap().to_path_buf();
        age(&blobs_dir, Duration::from_secs(60));
        age(&root.join("cache"), Duration::from_secs(60));
        let old = stamps(&root);
        assert_eq!(old.trusted(SystemTime::now()), Some(old));
        // Reading and touching a blob changes no name: the stamps stay.
        store.touch(&kiln_shared::digest::Digest::of(b"one"));
        store.read(&kiln_shared::digest::Digest::of(b"one")).unwrap();
        assert_eq!(stamps(&root), old);
        // A blob added, then one removed, each moves the stamps.
        store.put(b"two").unwrap();
        assert_ne!(stamps(&root), old);
        age(&blobs_dir, Duration::from_secs(60));
        let old = stamps(&root);
        store.remove(&kiln_shared::digest::Digest::of(b"one")).unwrap();
        assert_ne!(stamps(&root), old);
        // So does a record.
        age(&blobs_dir, Duration::from_secs(60));
        let old = stamps(&root);
        std::fs::write(root.join("cache/r.json"), b"{}").unwrap();
        assert_ne!(stamps(&root), old);
        // A missing cache directory holds nothing and vouches for that.
        std::fs::remove_dir_all(root.join("cache")).unwrap();
        age(&blobs_dir, Duration::from_secs(60));
        assert!(stamps(&root).trusted(SystemTime::now()).is_some());
        let _ = std::fs::remove_dir_all(&root);
    }
}
