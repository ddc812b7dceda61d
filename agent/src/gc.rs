//! Disk usage and garbage collection of an agent's state (`kiln du`, `kiln prune`).
//!
//! What is kept: step cache records (`cache/*.json`, each naming its layers), the content store
//! (layers, configs, manifests) and unpacked snapshots. Pruning removes records (by age, all
//! with `--all`, or oldest first down to `--keep-storage`), then every blob and snapshot no
//! remaining record references. Builds hold a shared lock and prune an exclusive one, so
//! nothing a running build uses is ever removed.

use crate::error::EngineError;
use crate::state::State;
use kiln_shared::store::ContentStore;
use nix::fcntl::{Flock, FlockArg};
use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// A lock on the agent's state: shared while building, exclusive while pruning.
pub struct BuildLock(#[allow(dead_code)] Flock<fs::File>);

impl BuildLock {
    fn open(root: &Path, arg: FlockArg) -> Result<BuildLock, EngineError> {
        let path = root.join("lock");
        let f = fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| EngineError::Io { what: format!("opening {}", path.display()), source: e })?;
        Flock::lock(f, arg)
            .map(BuildLock)
            .map_err(|(_, e)| EngineError::Io { what: format!("locking {}", path.display()), source: e.into() })
    }
    pub fn shared(root: &Path) -> Result<BuildLock, EngineError> {
        Self::open(root, FlockArg::LockShared)
    }
    pub fn exclusive(root: &Path) -> Result<BuildLock, EngineError> {
        Self::open(root, FlockArg::LockExclusive)
    }
}

pub use kiln_shared::api::{DiskUsage as Usage, PruneReport, PruneSpec as PruneOptions};

fn dir_size(p: &Path) -> u64 {
    let Ok(m) = fs::symlink_metadata(p) else { return 0 };
    if !m.is_dir() {
        return m.len();
    }
    fs::read_dir(p).map(|rd| rd.flatten().map(|e| dir_size(&e.path())).sum()).unwrap_or(0)
}

/// Cache records: (path, state, last use).
fn records(root: &Path) -> Vec<(PathBuf, State, SystemTime)> {
    let Ok(rd) = fs::read_dir(root.join("cache")) else { return vec![] };
    rd.flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| {
            let state: State = serde_json::from_slice(&fs::read(e.path()).ok()?).ok()?;
            let used = e.metadata().ok()?.modified().ok()?;
            Some((e.path(), state, used))
        })
        .collect()
}

/// Blob digests (hex) and snapshot names the records reference.
fn referenced(recs: &[(PathBuf, State, SystemTime)]) -> (HashSet<String>, HashSet<String>) {
    let mut blobs = HashSet::new();
    let mut snaps = HashSet::new();
    for (_, s, _) in recs {
        for l in &s.layers {
            blobs.insert(l.digest.hex().to_string());
            snaps.insert(l.diff_id.hex().to_string());
        }
    }
    (blobs, snaps)
}

pub fn usage(root: &Path) -> Usage {
    let recs = records(root);
    let (blobs, snaps) = referenced(&recs);
    let mut u = Usage { records: recs.len() as u64, ..Default::default() };
    for e in fs::read_dir(root.join("content/blobs/sha256")).into_iter().flatten().flatten() {
        let size = e.metadata().map(|m| m.len()).unwrap_or(0);
        u.content_blobs += 1;
        u.content_bytes += size;
        if !blobs.contains(&*e.file_name().to_string_lossy()) {
            u.reclaimable_bytes += size;
        }
    }
    for e in fs::read_dir(root.join("snapshots")).into_iter().flatten().flatten() {
        let size = dir_size(&e.path());
        u.snapshots += 1;
        u.snapshot_bytes += size;
        if !snaps.contains(&*e.file_name().to_string_lossy()) {
            u.reclaimable_bytes += size;
        }
    }
    u
}

pub fn prune(root: &Path, opts: &PruneOptions) -> Result<PruneReport, EngineError> {
    let _lock = BuildLock::exclusive(root)?;
    let store = ContentStore::open(&root.join("content"))?;
    let mut report = PruneReport::default();
    let now = SystemTime::now();
    let mut recs = records(root);
    recs.sort_by_key(|r| r.2);
    let mut keep = Vec::new();
    for r in recs {
        let until = opts.until_s.map(Duration::from_secs);
        let old = until.is_none_or(|u| now.duration_since(r.2).unwrap_or_default() >= u);
        let drop = if opts.all { old } else { until.is_some() && old };
        if drop {
            let _ = fs::remove_file(&r.0);
            report.records_removed += 1;
        } else {
            keep.push(r);
        }
    }
    // --keep-storage: drop the least recently used records until what they hold fits.
    if let Some(limit) = opts.keep_storage {
        let total = |recs: &[(PathBuf, State, SystemTime)]| -> u64 {
            let (blobs, _) = referenced(recs);
            blobs.iter().filter_map(|h| fs::metadata(root.join("content/blobs/sha256").join(h)).ok()).map(|m| m.len()).sum()
        };
        while !keep.is_empty() && total(&keep) > limit {
            let r = keep.remove(0);
            let _ = fs::remove_file(&r.0);
            report.records_removed += 1;
        }
    }
    let (blobs, snaps) = referenced(&keep);
    for e in fs::read_dir(root.join("content/blobs/sha256")).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !blobs.contains(&name) {
            let size = e.metadata().map(|m| m.len()).unwrap_or(0);
            let removed = match format!("sha256:{name}").parse() {
                Ok(d) => store.remove(&d).is_ok(),
                Err(_) => fs::remove_file(e.path()).is_ok(),
            };
            if removed {
                report.bytes_reclaimed += size;
                report.blobs_removed += 1;
            }
        }
    }
    for e in fs::read_dir(root.join("snapshots")).into_iter().flatten().flatten() {
        if !snaps.contains(&*e.file_name().to_string_lossy()) {
            report.bytes_reclaimed += dir_size(&e.path());
            if fs::remove_dir_all(e.path()).is_ok() {
                report.snapshots_removed += 1;
            }
        }
    }
    // Short links of removed snapshots.
    for e in fs::read_dir(root.join("l")).into_iter().flatten().flatten() {
        if fs::metadata(e.path()).is_err() {
            let _ = fs::remove_file(e.path());
        }
    }
    crate::metrics::get().gc_reclaimed_bytes.add(&[], report.bytes_reclaimed);
    Ok(report)
}
