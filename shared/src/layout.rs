//! OCI image layout archives (`-o type=oci,dest=F`): `oci-layout`, `index.json` and
//! `blobs/sha256/...` in a tar, as `skopeo copy oci-archive:` and `umoci` read them.

use crate::digest::Digest;
use crate::oci::{self, Descriptor, Index};
use crate::store::{ContentStore, StoreError};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("writing OCI archive {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn append(tar: &mut tar::Builder<impl Write>, path: &str, data: &[u8], mode: u32) -> io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    tar.append_data(&mut h, path, data)
}

/// Writes `index` (whose manifests and their blobs are all in `store`) as an OCI archive.
/// `blobs` lists every blob to include. The index's descriptors in `index.json` get `ref.name`
/// annotations from `tags`, and `annotations` (`--annotation index-descriptor:K=V`).
pub fn write_archive(
    dest: &Path,
    store: &ContentStore,
    index: &Index,
    blobs: &[Digest],
    tags: &[String],
    annotations: &BTreeMap<String, String>,
) -> Result<(), LayoutError> {
    let path = dest.display().to_string();
    let io_err = |source| LayoutError::Io { path: path.clone(), source };
    let tmp = dest.with_extension("kiln-tmp");
    let file = std::fs::File::create(&tmp).map_err(io_err)?;
    let mut tar = tar::Builder::new(io::BufWriter::new(file));
    append(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644).map_err(io_err)?;
    let mut dir = tar::Header::new_ustar();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    dir.set_mtime(0);
    dir.set_cksum();
    for d in ["blobs/", "blobs/sha256/"] {
        tar.append_data(&mut dir.clone(), d, io::empty()).map_err(io_err)?;
    }
    let mut seen = BTreeSet::new();
    for d in blobs {
        if !seen.insert(d.clone()) {
            continue;
        }
        let mut f = store.open_blob(d)?;
        let size = store.size(d)?;
        let mut h = tar::Header::new_ustar();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        tar.append_data(&mut h, format!("blobs/sha256/{}", d.hex()), &mut f).map_err(io_err)?;
    }
    // The top-level index.json points at the image index, named by each tag.
    let index_bytes = oci::to_json(index);
    let index_digest = Digest::of(&index_bytes);
    if seen.insert(index_digest.clone()) {
        append(&mut tar, &format!("blobs/sha256/{}", index_digest.hex()), &index_bytes, 0o644).map_err(io_err)?;
    }
    let mut top = Vec::new();
    let names: Vec<Option<&String>> = if tags.is_empty() { vec![None] } else { tags.iter().map(Some).collect() };
    for name in names {
        let mut desc = Descriptor::new(oci::MEDIA_INDEX, index_digest.clone(), index_bytes.len() as u64);
        desc.annotations.extend(annotations.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(n) = name {
            desc.annotations.insert("org.opencontainers.image.ref.name".into(), n.clone());
            desc.annotations.insert("io.containerd.image.name".into(), n.clone());
        }
        top.push(desc);
    }
    append(&mut tar, "index.json", &oci::to_json(&Index::new(top)), 0o644).map_err(io_err)?;
    let w = tar.into_inner().map_err(io_err)?;
    w.into_inner().map_err(|e| io_err(e.into_error()))?.sync_all().map_err(io_err)?;
    std::fs::rename(&tmp, dest).map_err(io_err)?;
    Ok(())
}

/// Writes the image index `index_bytes` (every blob it names, in `store`, listed in `blobs`) as an
/// OCI image layout directory at `dest`, as `oci-layout://DEST@DIGEST` reads it: `oci-layout`,
/// `index.json` (one descriptor, the index) and `blobs/sha256/...`. The index is kept as the
/// exact bytes its digest names.
pub fn write_dir(dest: &Path, store: &ContentStore, index_bytes: &[u8], blobs: &[Digest]) -> Result<Digest, LayoutError> {
    let path = dest.display().to_string();
    let io_err = |source| LayoutError::Io { path: path.clone(), source };
    let dir = dest.join("blobs").join("sha256");
    std::fs::create_dir_all(&dir).map_err(io_err)?;
    for d in blobs {
        let to = dir.join(d.hex());
        if to.is_file() {
            continue;
        }
        // A hard link where the store is on the same filesystem, else a copy.
        if std::fs::hard_link(store.path(d), &to).is_err() {
            std::io::copy(&mut store.open_blob(d)?, &mut std::fs::File::create(&to).map_err(io_err)?).map_err(io_err)?;
        }
    }
    let digest = Digest::of(index_bytes);
    std::fs::write(dir.join(digest.hex()), index_bytes).map_err(io_err)?;
    std::fs::write(dest.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io_err)?;
    let top = Index::new(vec![Descriptor::new(oci::MEDIA_INDEX, digest.clone(), index_bytes.len() as u64)]);
    std::fs::write(dest.join("index.json"), oci::to_json(&top)).map_err(io_err)?;
    Ok(digest)
}

/// Writes one image as the archive `docker save` writes and `docker load` reads:
/// `manifest.json`, the config as `<hex>.json`, and each layer as `<hex>/layer.tar` (kept
/// compressed: `docker load` decompresses layers). `tags` become its `RepoTags`.
pub fn write_docker_archive(dest: &Path, store: &ContentStore, manifest: &oci::Manifest, tags: &[String]) -> Result<(), LayoutError> {
    let path = dest.display().to_string();
    let io_err = |source| LayoutError::Io { path: path.clone(), source };
    let tmp = dest.with_extension("kiln-tmp");
    let file = std::fs::File::create(&tmp).map_err(io_err)?;
    let mut tar = tar::Builder::new(io::BufWriter::new(file));
    let config = format!("{}.json", manifest.config.digest.hex());
    append(&mut tar, &config, &store.read(&manifest.config.digest)?, 0o644).map_err(io_err)?;
    let mut layers = Vec::new();
    for l in &manifest.layers {
        let name = format!("{}/layer.tar", l.digest.hex());
        let mut h = tar::Header::new_ustar();
        h.set_size(store.size(&l.digest)?);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        tar.append_data(&mut h, &name, store.open_blob(&l.digest)?).map_err(io_err)?;
        layers.push(name);
    }
    // Docker's names: a tag defaults to `latest`, and a digest reference is not a tag.
    let repo_tags: Vec<String> = tags
        .iter()
        .filter(|t| !t.contains('@'))
        .map(|t| if t.rsplit('/').next().is_some_and(|last| last.contains(':')) { t.clone() } else { format!("{t}:latest") })
        .collect();
    let entry = serde_json::json!([{ "Config": config, "RepoTags": repo_tags, "Layers": layers }]);
    append(&mut tar, "manifest.json", entry.to_string().as_bytes(), 0o644).map_err(io_err)?;
    let w = tar.into_inner().map_err(io_err)?;
    w.into_inner().map_err(|e| io_err(e.into_error()))?.sync_all().map_err(io_err)?;
    std::fs::rename(&tmp, dest).map_err(io_err)?;
    Ok(())
}
