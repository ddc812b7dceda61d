//! Layers: unpacking OCI layer tars into snapshot directories, and turning an overlay upper
//! directory back into a reproducible OCI layer.
//!
//! Snapshots are stacked with overlayfs, so unpacking translates OCI whiteouts into overlay's
//! own (`.wh.name` → a 0/0 character device, `.wh..wh..opq` → the `trusted.overlay.opaque`
//! xattr); diffing translates them back. Layer tars are sorted, and timestamps are clamped to
//! `SOURCE_DATE_EPOCH` when it is set, so equal inputs give equal digests on every agent.

use kiln_shared::digest::{Digest, HashingWriter};
use kiln_shared::store::{ContentStore, StoreError};
use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("layer {digest}: {source}")]
    Unpack { digest: String, source: io::Error },
    #[error("diffing {path}: {source}")]
    Diff { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How whiteouts in a layer are applied.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Whiteouts {
    /// Into an overlay lower directory: kept as overlay whiteouts.
    Overlay,
    /// Onto a merged tree (type=local export): the paths are deleted.
    Delete,
}

/// Decompresses by sniffing the magic bytes: gzip, zstd, bzip2, xz or plain tar.
fn decompress(mut r: impl Read + 'static) -> io::Result<Box<dyn Read>> {
    let mut magic = [0u8; 4];
    let n = r.read(&mut magic)?;
    let head = io::Cursor::new(magic[..n].to_vec()).chain(r);
    if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        Ok(Box::new(flate2::read::GzDecoder::new(head)))
    } else if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        Ok(Box::new(zstd::stream::read::Decoder::new(head)?))
    } else if n >= 3 && &magic[..3] == b"BZh" {
        Ok(Box::new(bzip2::read::BzDecoder::new(head)))
    } else if n == 4 && magic == [0xfd, 0x37, 0x7a, 0x58] {
        Ok(Box::new(xz2::read::XzDecoder::new(head)))
    } else {
        Ok(Box::new(head))
    }
}

/// The uncompressed tar stream of layer blob `digest`.
pub fn open(store: &ContentStore, digest: &Digest) -> Result<Box<dyn Read>, LayerError> {
    let file = store.open_blob(digest)?;
    decompress(file).map_err(|source| LayerError::Unpack { digest: digest.to_string(), source })
}

/// Unpacks the layer blob `digest` into `dest`.
pub fn unpack(store: &ContentStore, digest: &Digest, dest: &Path, mode: Whiteouts) -> Result<(), LayerError> {
    let err = |source| LayerError::Unpack { digest: digest.to_string(), source };
    let file = store.open_blob(digest)?;
    let reader = decompress(file).map_err(err)?;
    unpack_entries(reader, dest, Some(mode)).map_err(err)
}

/// Extracts a (gzip, zstd or plain) tar archive into `dest` as `ADD` does: devices, FIFOs,
/// hard links, owners, modes and xattrs as the archive has them; `.wh.` names are ordinary
/// files here.
pub fn extract(reader: impl Read + 'static, dest: &Path) -> io::Result<()> {
    unpack_entries(decompress(reader)?, dest, None)
}

/// Whether `path` is a tar archive (possibly compressed) that `ADD` extracts: its first header
/// has the ustar magic or a valid checksum.
pub fn is_archive(path: &Path) -> bool {
    let Ok(f) = fs::File::open(path) else { return false };
    let Ok(mut r) = decompress(f) else { return false };
    let mut head = [0u8; 512];
    let mut n = 0;
    while n < head.len() {
        match r.read(&mut head[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    if n < 512 {
        return false;
    }
    if &head[257..262] == b"ustar" {
        return true;
    }
    let stored = std::str::from_utf8(&head[148..156]).ok().map(|s| s.trim_matches(|c: char| c == '\0' || c == ' '));
    let stored = stored.and_then(|s| u32::from_str_radix(s, 8).ok());
    let sum: u32 = head.iter().enumerate().map(|(i, b)| if (148..156).contains(&i) { 32 } else { u32::from(*b) }).sum();
    stored == Some(sum) && head[0] != 0
}

fn unpack_entries(reader: Box<dyn Read>, dest: &Path, mode: Option<Whiteouts>) -> io::Result<()> {
    fs::create_dir_all(dest)?;
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let parent = dest.join(path.parent().unwrap_or(Path::new("")));
        if let Some(mode) = mode {
            if name == ".wh..wh..opq" {
                fs::create_dir_all(&parent)?;
                match mode {
                    Whiteouts::Overlay => xattr::set(&parent, OPAQUE_XATTR, b"y")?,
                    Whiteouts::Delete => clear_dir(&parent)?,
                }
                continue;
            }
            if let Some(hidden) = name.strip_prefix(".wh.") {
                fs::create_dir_all(&parent)?;
                let target = parent.join(hidden);
                remove_any(&target)?;
                if mode == Whiteouts::Overlay {
                    nix::sys::stat::mknod(&target, nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::empty(), 0)
                        .map_err(io::Error::from)?;
                }
                continue;
            }
        }
        if mode != Some(Whiteouts::Overlay) {
            // A later entry replaces what was there, whatever its type.
            let target = dest.join(&path);
            if let Ok(m) = fs::symlink_metadata(&target) {
                if !(m.is_dir() && entry.header().entry_type().is_dir()) {
                    remove_any(&target)?;
                }
            }
        }
        let kind = entry.header().entry_type();
        if kind.is_fifo() || kind.is_character_special() || kind.is_block_special() {
            // The tar crate would write these as empty regular files.
            unpack_special(&entry, &path, dest)?;
            continue;
        }
        entry.unpack_in(dest)?;
    }
    Ok(())
}

/// Creates a named pipe or device node of a layer, with its mode, owner and time.
fn unpack_special<R: Read>(entry: &tar::Entry<R>, path: &Path, dest: &Path) -> io::Result<()> {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    if path.is_absolute() || path.components().any(|c| !matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir)) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("layer entry {} leaves the layer", path.display())));
    }
    let h = entry.header();
    let target = dest.join(path);
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent)?;
    }
    remove_any(&target)?;
    let kind = h.entry_type();
    let flag = if kind.is_fifo() {
        SFlag::S_IFIFO
    } else if kind.is_character_special() {
        SFlag::S_IFCHR
    } else {
        SFlag::S_IFBLK
    };
    // A FIFO has no device numbers (tar writers leave the fields empty).
    let dev = if kind.is_fifo() {
        0
    } else {
        makedev(u64::from(h.device_major().ok().flatten().unwrap_or(0)), u64::from(h.device_minor().ok().flatten().unwrap_or(0)))
    };
    let mode = h.mode()? & 0o7777;
    mknod(&target, flag, Mode::from_bits_truncate(mode), dev).map_err(io::Error::from)?;
    // mknod applies the umask: set the mode as recorded.
    fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    let id = |v: u64| u32::try_from(v).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("owner {v} out of range")));
    std::os::unix::fs::lchown(&target, Some(id(h.uid()?)?), Some(id(h.gid()?)?))?;
    let t = nix::sys::time::TimeSpec::new(h.mtime()? as i64, 0);
    nix::sys::stat::utimensat(None, &target, &t, &t, nix::sys::stat::UtimensatFlags::NoFollowSymlink).map_err(io::Error::from)?;
    Ok(())
}

fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn clear_dir(p: &Path) -> io::Result<()> {
    for e in fs::read_dir(p)? {
        remove_any(&e?.path())?;
    }
    Ok(())
}

/// Re-encodes a layer blob with zstd (for `compression=zstd` outputs); the uncompressed
/// content, and so the diff_id, stays the same.
pub fn to_zstd(store: &ContentStore, layer: &Layer) -> Result<Layer, LayerError> {
    let err = |source| LayerError::Unpack { digest: layer.digest.to_string(), source };
    let mut reader = decompress(store.open_blob(&layer.digest)?).map_err(err)?;
    let (digest, size) = store.write_with(
        |w| {
            let mut enc = zstd::stream::write::Encoder::new(w, 3)?;
            io::copy(&mut reader, &mut enc)?;
            enc.finish()?;
            Ok(())
        },
        None,
    )?;
    Ok(Layer { digest, diff_id: layer.diff_id.clone(), size, media_type: kiln_shared::oci::MEDIA_LAYER_ZSTD.into() })
}

/// A layer written to the store.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Layer {
    pub digest: Digest,
    pub diff_id: Digest,
    pub size: u64,
    pub media_type: String,
}

/// Packs the overlay upper directory `upper` into a gzip layer in the store, timestamps clamped
/// to `epoch` (`SOURCE_DATE_EPOCH`). Returns None when the directory is empty (the step
/// changed nothing).
pub fn diff(upper: &Path, store: &ContentStore, epoch: Option<u64>) -> Result<Option<Layer>, LayerError> {
    let mut entries = Vec::new();
    collect(upper, Path::new(""), &mut entries).map_err(|source| LayerError::Diff { path: upper.to_path_buf(), source })?;
    if entries.is_empty() {
        return Ok(None);
    }
    let clamp = epoch;
    let mut diff_id = None;
    let (digest, size) = store.write_with(
        |w| {
            let gz = flate2::GzBuilder::new().mtime(0).write(w, flate2::Compression::fast());
            let hashing = HashingWriter::new(gz);
            let mut tar = tar::Builder::new(hashing);
            write_entries(&mut tar, upper, &entries, clamp)?;
            let hashing = tar.into_inner()?;
            let (gz, id, _) = hashing.finish();
            gz.finish()?;
            diff_id = Some(id);
            Ok(())
        },
        None,
    )?;
    let diff_id = diff_id.ok_or_else(|| LayerError::Diff { path: upper.to_path_buf(), source: io::Error::other("no diff id") })?;
    Ok(Some(Layer { digest, diff_id, size, media_type: kiln_shared::oci::MEDIA_LAYER_GZIP.into() }))
}

/// The empty layer (a tar with nothing but its end marker), as BuildKit commits for a step
/// that must have a layer but changed nothing (WORKDIR of an existing directory).
pub fn empty(store: &ContentStore) -> Result<Layer, LayerError> {
    let mut diff_id = None;
    let (digest, size) = store.write_with(
        |w| {
            let gz = flate2::GzBuilder::new().mtime(0).write(w, flate2::Compression::fast());
            let tar = tar::Builder::new(HashingWriter::new(gz));
            let (gz, id, _) = tar.into_inner()?.finish();
            gz.finish()?;
            diff_id = Some(id);
            Ok(())
        },
        None,
    )?;
    let diff_id = diff_id.ok_or_else(|| LayerError::Diff { path: PathBuf::new(), source: io::Error::other("no diff id") })?;
    Ok(Layer { digest, diff_id, size, media_type: kiln_shared::oci::MEDIA_LAYER_GZIP.into() })
}

/// Relative paths under `dir`, sorted, parents before children.
fn collect(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    let mut names: Vec<_> = fs::read_dir(root.join(rel))?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
    names.sort();
    for n in names {
        let p = rel.join(&n);
        let m = fs::symlink_metadata(root.join(&p))?;
        out.push(p.clone());
        if m.is_dir() {
            collect(root, &p, out)?;
        }
    }
    Ok(())
}

fn write_entries<W: Write>(tar: &mut tar::Builder<W>, root: &Path, entries: &[PathBuf], clamp: Option<u64>) -> io::Result<()> {
    let mut inodes: HashMap<(u64, u64), PathBuf> = HashMap::new();
    for rel in entries {
        let full = root.join(rel);
        let m = fs::symlink_metadata(&full)?;
        let ft = m.file_type();
        let mtime = clamp.map_or(m.mtime().max(0) as u64, |c| c.min(m.mtime().max(0) as u64));
        let mut h = tar::Header::new_gnu();
        h.set_uid(m.uid() as u64);
        h.set_gid(m.gid() as u64);
        h.set_mode(m.mode() & 0o7777);
        h.set_mtime(mtime);
        h.set_size(0);
        let name = rel.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // Overlay whiteout: a 0/0 character device.
        if ft.is_char_device() && m.rdev() == 0 {
            let wh = rel.with_file_name(format!(".wh.{name}"));
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            tar.append_data(&mut h, wh, io::empty())?;
            continue;
        }
        if let Ok(Some(cap)) = xattr::get(&full, "security.capability") {
            tar.append_pax_extensions([("SCHILY.xattr.security.capability", cap.as_slice())])?;
        }
        if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            tar.append_data(&mut h, rel, io::empty())?;
            if xattr::get(&full, OPAQUE_XATTR).ok().flatten().is_some_and(|v| v == b"y") {
                let mut wh = tar::Header::new_gnu();
                wh.set_entry_type(tar::EntryType::Regular);
                wh.set_mode(0o644);
                wh.set_mtime(mtime);
                wh.set_size(0);
                tar.append_data(&mut wh, rel.join(".wh..wh..opq"), io::empty())?;
            }
        } else if ft.is_symlink() {
            h.set_entry_type(tar::EntryType::Symlink);
            tar.append_link(&mut h, rel, fs::read_link(&full)?)?;
        } else if ft.is_file() {
            if m.nlink() > 1 {
                if let Some(first) = inodes.get(&(m.dev(), m.ino())) {
                    h.set_entry_type(tar::EntryType::Link);
                    tar.append_link(&mut h, rel, first)?;
                    continue;
                }
                inodes.insert((m.dev(), m.ino()), rel.clone());
            }
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(m.len());
            tar.append_data(&mut h, rel, fs::File::open(&full)?)?;
        } else {
            let kind = if ft.is_char_device() {
                tar::EntryType::Char
            } else if ft.is_block_device() {
                tar::EntryType::Block
            } else {
                tar::EntryType::Fifo
            };
            h.set_entry_type(kind);
            let rdev = m.rdev();
            h.set_device_major(nix::sys::stat::major(rdev) as u32)?;
            h.set_device_minor(nix::sys::stat::minor(rdev) as u32)?;
            tar.append_data(&mut h, rel, io::empty())?;
        }
    }
    Ok(())
}
