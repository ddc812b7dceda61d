//! The build context of a slice, recreated from its manifest: blobs this agent lacks come
//! from peers or from the coordinator that received the upload; names, modes and ownership
//! are as the CLI saw them.

use super::error::SliceError;
use super::Worker;
use crate::engine::Agent;
use kiln_shared::api::{EntryKind, SliceTask};
use kiln_shared::client::AgentFarm;
use kiln_shared::digest::Digest;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A directory removed when this is dropped (the context, whatever becomes of the slice).
pub(super) struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A relative path from the wire (bytes) that stays inside the context directory.
fn inside(dir: &Path, rel: &[u8]) -> Result<PathBuf, SliceError> {
    use std::os::unix::ffi::OsStrExt;
    let p = Path::new(std::ffi::OsStr::from_bytes(rel));
    if rel.is_empty() || p.is_absolute() || p.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
        return Err(SliceError::Escapes { path: String::from_utf8_lossy(rel).into_owned() });
    }
    Ok(dir.join(p))
}

/// Recreates the build context from its manifest: blobs this agent lacks come from the
/// coordinator that received the upload; names, modes and ownership are as the CLI saw them.
pub(super) async fn materialize(w: &Arc<Worker>, task: &SliceTask, dir: &Path) -> Result<(), SliceError> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|source| SliceError::ContextDir { path: dir.to_path_buf(), source })?;
    let mut missing = Vec::new();
    for e in &task.spec.context {
        if let EntryKind::File { digest, .. } = &e.kind {
            let d: Digest = digest.parse().map_err(SliceError::digest(digest))?;
            if !w.engine.store.has(&d) && !missing.contains(&d) {
                missing.push(d);
            }
        }
    }
    // Peers that hold a blob first: the coordinator that received the upload is the origin.
    let holders = if missing.is_empty() { vec![] } else { w.peers.locate(missing.iter().map(|d| d.to_string()).collect(), vec![]).await };
    let mut origin: Option<AgentFarm> = None;
    for (i, d) in missing.iter().enumerate() {
        let sources = holders.get(i).map(|h| h.as_slice()).unwrap_or_default();
        if !sources.is_empty() && w.peer.fetch(d, sources).await.is_ok() {
            continue;
        }
        if origin.is_none() {
            origin = Some(w.connect(&task.context_origin)?);
        }
        let origin = origin.as_ref().ok_or(SliceError::NoOrigin)?;
        origin.fetch_blob(&w.engine.store, d).await.map_err(SliceError::ContextBlob)?;
    }
    if let Some(o) = origin {
        o.close();
    }
    let engine = w.engine.clone();
    let entries = task.spec.context.clone();
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || write_entries(&engine, &entries, &dir)).await.map_err(SliceError::Blocking)?
}

/// Writes the context's entries under `dir`, file contents from the store.
fn write_entries(engine: &Agent, entries: &[kiln_shared::api::ContextEntry], dir: &Path) -> Result<(), SliceError> {
    use std::os::unix::fs::PermissionsExt;
    let mut dirs = Vec::new();
    for e in entries {
        let path = inside(dir, &e.path)?;
        let io = |source: std::io::Error| SliceError::Entry { path: String::from_utf8_lossy(&e.path).into_owned(), source };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        match &e.kind {
            EntryKind::Dir => {
                std::fs::create_dir_all(&path).map_err(io)?;
                dirs.push((path.clone(), e));
            }
            EntryKind::File { digest, .. } => {
                let d: Digest = digest.parse().map_err(SliceError::digest(digest))?;
                std::fs::copy(engine.store.path(&d), &path).map_err(io)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(e.mode & 0o7777)).map_err(io)?;
            }
            EntryKind::Symlink { target } => {
                use std::os::unix::ffi::OsStrExt;
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &path).map_err(io)?;
            }
            EntryKind::Fifo => {
                nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(e.mode & 0o777)).map_err(|err| io(err.into()))?;
            }
        }
        std::os::unix::fs::lchown(&path, Some(e.uid), Some(e.gid)).map_err(io)?;
    }
    // Directory modes last: a read-only directory must not stop its contents being written.
    for (path, e) in dirs.iter().rev() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(e.mode & 0o7777))
            .map_err(|source| SliceError::EntryMode { path: String::from_utf8_lossy(&e.path).into_owned(), source })?;
    }
    Ok(())
}
