//! The build context of a slice, recreated from its manifest: blobs this agent lacks come
//! from peers or from the coordinator that received the upload; names, modes and ownership
//! are as the CLI saw them.

use super::error::SliceError;
use super::Worker;
use crate::engine::Agent;
use kiln_shared::api::{EntryKind, NamedSource, SliceTask};
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

/// A relative path from the wire (bytes) that stays inside the context directory: no `..`,
/// nothing absolute, and no earlier entry's symlink on the way (a manifest that sends `link ->
/// /etc` and then `link/passwd` writes nothing outside).
fn inside(dir: &Path, rel: &[u8]) -> Result<PathBuf, SliceError> {
    use std::os::unix::ffi::OsStrExt;
    let escapes = || SliceError::Escapes { path: String::from_utf8_lossy(rel).into_owned() };
    let p = Path::new(std::ffi::OsStr::from_bytes(rel));
    if rel.is_empty() || p.is_absolute() || p.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
        return Err(escapes());
    }
    let mut at = dir.to_path_buf();
    let parts: Vec<_> = p.components().collect();
    for c in &parts[..parts.len() - 1] {
        at.push(c);
        if std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(escapes());
        }
    }
    Ok(dir.join(p))
}

/// Recreates the build context from its manifest: blobs this agent lacks come from the
/// coordinator that received the upload; names, modes and ownership are as the CLI saw them.
/// A context too large to travel inline has its entries in a manifest blob, fetched (and
/// verified) as its files are.
pub(super) async fn materialize(w: &Arc<Worker>, task: &SliceTask, dir: &Path) -> Result<(), SliceError> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|source| SliceError::ContextDir { path: dir.to_path_buf(), source })?;
    let mut origin: Option<AgentFarm> = None;
    let manifest = match &task.spec.context_manifest {
        Some(digest) => {
            let d: Digest = digest.parse().map_err(SliceError::digest(digest))?;
            fetch(w, task, std::slice::from_ref(&d), &mut origin).await?;
            let store = w.engine.store.clone();
            let bytes = tokio::task::spawn_blocking(move || store.read(&d)).await.map_err(SliceError::Blocking)??;
            let entries = kiln_shared::api::context::decode(&bytes)
                .map_err(|source| SliceError::ContextManifest { digest: digest.clone(), source })?;
            Some(entries)
        }
        None => None,
    };
    let mut missing = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let files = task.spec.all_entries().chain(manifest.iter().flatten()).filter_map(|e| match &e.kind {
        EntryKind::File { digest, .. } => Some(digest.as_str()),
        _ => None,
    });
    for digest in files.chain(task.spec.layout_blobs()) {
        if !seen.insert(digest) {
            continue;
        }
        let d: Digest = digest.parse().map_err(SliceError::digest(digest))?;
        if !w.engine.store.has(&d) {
            missing.push(d);
        }
    }
    // Peers running this tenant's slices may fetch these from here (see `crate::access`).
    if let Some(grant) = &task.grant {
        w.peer.access.note_tenant_blobs(&grant.tenant, seen.iter().copied());
    }
    fetch(w, task, &missing, &mut origin).await?;
    if let Some(o) = origin {
        o.close();
    }
    let engine = w.engine.clone();
    let mut trees = vec![(manifest.unwrap_or_else(|| task.spec.context.clone()), dir.to_path_buf())];
    for n in &task.spec.named_contexts {
        if let NamedSource::Local(entries) = &n.source {
            trees.push((entries.clone(), named_dir(dir, &n.name)));
        }
    }
    tokio::task::spawn_blocking(move || {
        for (entries, dir) in trees {
            std::fs::create_dir_all(&dir).map_err(|source| SliceError::ContextDir { path: dir.clone(), source })?;
            write_entries(&engine, &entries, &dir)?;
        }
        Ok(())
    })
    .await
    .map_err(SliceError::Blocking)?
}

/// Fetches `missing` into the store: from peers that hold a blob first, else from the
/// coordinator that received the upload (`origin`, connected on first use).
async fn fetch(w: &Arc<Worker>, task: &SliceTask, missing: &[Digest], origin: &mut Option<AgentFarm>) -> Result<(), SliceError> {
    let missing: Vec<&Digest> = missing.iter().filter(|d| !w.engine.store.has(d)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let holders = w.peers.locate(missing.iter().map(|d| d.to_string()).collect(), vec![]).await;
    for (i, d) in missing.into_iter().enumerate() {
        let sources = holders.get(i).map(|h| h.as_slice()).unwrap_or_default();
        if !sources.is_empty() && w.peer.fetch(d, sources).await.is_ok() {
            continue;
        }
        if origin.is_none() {
            *origin = Some(w.connect(task)?);
        }
        let origin = origin.as_ref().ok_or(SliceError::NoOrigin)?;
        origin.fetch_blob(&w.engine.store, d).await.map_err(SliceError::ContextBlob)?;
        super::peers::counted_from_origin(&w.engine.store, d);
    }
    Ok(())
}

/// Where the named directory context `name` of the slice whose context is `dir` is written
/// (beside it; removed with it).
pub(super) fn named_dir(dir: &Path, name: &str) -> std::path::PathBuf {
    let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
    dir.with_extension(format!("named-{hex}"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_shared::api::ContextEntry;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    fn entry(path: &[u8], kind: EntryKind, mode: u32) -> ContextEntry {
        ContextEntry { path: path.to_vec(), kind, mode, uid: 0, gid: 0 }
    }

    fn agent(root: &Path) -> Agent {
        Agent::open(root, &[]).expect("agent")
    }

    /// The context a slice runs on is the manifest's, exactly: bytes of names, kinds, modes.
    #[test]
    fn the_context_is_recreated_from_its_manifest() {
        let root = std::env::temp_dir().join(format!("kiln-worker-ctx-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let engine = agent(&root.join("agent"));
        let d = engine.store.put(b"hello\n").expect("blob");
        let file = |_mode: u32| EntryKind::File { digest: d.to_string(), size: 6 };
        let entries = vec![
            entry(b"sub", EntryKind::Dir, 0o750),
            entry(b"sub/a.txt", file(0o640), 0o640),
            entry(b"caf\xe9.txt", file(0o644), 0o644),
            entry(b"link", EntryKind::Symlink { target: b"sub/a.txt".to_vec() }, 0o777),
            entry(b"pipe", EntryKind::Fifo, 0o600),
        ];
        let dir = root.join("ctx");
        write_entries(&engine, &entries, &dir).expect("written");
        assert_eq!(std::fs::read_to_string(dir.join("sub/a.txt")).unwrap(), "hello\n");
        assert_eq!(std::fs::metadata(dir.join("sub")).unwrap().mode() & 0o7777, 0o750);
        assert_eq!(std::fs::metadata(dir.join("sub/a.txt")).unwrap().mode() & 0o7777, 0o640);
        use std::os::unix::ffi::OsStrExt;
        assert!(dir.join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt")).is_file(), "a non-UTF-8 name arrives as its bytes");
        assert_eq!(std::fs::read_link(dir.join("link")).unwrap(), Path::new("sub/a.txt"));
        assert!(std::fs::symlink_metadata(dir.join("pipe")).unwrap().file_type().is_fifo());
        let _ = std::fs::remove_dir_all(&root);
    }

    /// A manifest cannot write outside the context: not with `..`, an absolute path, or
    /// through a symlink it sent before.
    #[test]
    fn a_manifest_cannot_write_outside_the_context() {
        let root = std::env::temp_dir().join(format!("kiln-worker-escape-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let engine = agent(&root.join("agent"));
        let d = engine.store.put(b"owned").expect("blob");
        let outside = root.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        let file = EntryKind::File { digest: d.to_string(), size: 5 };
        for bad in [
            vec![entry(b"../escaped", file.clone(), 0o644)],
            vec![entry(b"/tmp/escaped", file.clone(), 0o644)],
            vec![
                entry(b"link", EntryKind::Symlink { target: outside.as_os_str().as_encoded_bytes().to_vec() }, 0o777),
                entry(b"link/escaped", file.clone(), 0o644),
            ],
        ] {
            let dir = root.join("ctx");
            let _ = std::fs::remove_dir_all(&dir);
            let err = write_entries(&engine, &bad, &dir).expect_err("refused");
            assert!(matches!(err, SliceError::Escapes { .. }), "{err}");
        }
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "nothing was written outside");
        assert!(!root.join("escaped").exists());
        let _ = std::fs::remove_dir_all(&root);
    }
}
