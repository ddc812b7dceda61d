//! The content store: blobs by sha256 on local disk.
//!
//! A blob is written to a temporary file, fsynced, verified against its digest and renamed into
//! place, so a crash never leaves a half blob under a real name. Reads can be verified too.
//! Every use touches the file's mtime, which `prune --filter until=` and `du` read.

use crate::chunks::{ChunkTable, CHUNK_SIZE};
use crate::digest::{Digest, HashingWriter};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("content store {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("blob {expected} failed verification: its content hashes to {actual}")]
    Mismatch { expected: Digest, actual: Digest },
    #[error("blob {0} is not in the content store")]
    Missing(Digest),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// A handle on a store directory (cloning it opens nothing).
#[derive(Clone, Debug)]
pub struct ContentStore {
    root: PathBuf,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl ContentStore {
    pub fn open(root: &Path) -> Result<ContentStore, StoreError> {
        let blobs = root.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
        fs::create_dir_all(root.join("tmp")).map_err(io_err(root))?;
        fs::create_dir_all(root.join("chunks")).map_err(io_err(root))?;
        Ok(ContentStore { root: root.to_path_buf() })
    }

    pub fn path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    pub fn has(&self, d: &Digest) -> bool {
        self.path(d).exists()
    }

    /// A fresh temporary path inside the store (same filesystem, so rename is atomic).
    pub fn temp_path(&self) -> PathBuf {
        let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        self.root.join("tmp").join(format!("{}-{n}", std::process::id()))
    }

    pub fn put(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let d = Digest::of(bytes);
        if !self.has(&d) {
            self.write_with(|w| w.write_all(bytes), Some(&d))?;
        }
        Ok(d)
    }

    /// Writes a blob produced by `fill`; if `expected` is given the content must match it.
    pub fn write_with(
        &self,
        fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
        expected: Option<&Digest>,
    ) -> Result<(Digest, u64), StoreError> {
        let tmp = self.temp_path();
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        let mut w = HashingWriter::new(io::BufWriter::new(file));
        let res = fill(&mut w);
        let (buf, digest, size) = w.finish();
        let finish = res.and_then(|_| buf.into_inner().map_err(|e| e.into_error())).and_then(|f| f.sync_all());
        if let Err(e) = finish {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::Io { path: tmp, source: e });
        }
        if let Some(exp) = expected {
            if *exp != digest {
                let _ = fs::remove_file(&tmp);
                return Err(StoreError::Mismatch { expected: exp.clone(), actual: digest });
            }
        }
        let dest = self.path(&digest);
        fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
        Ok((digest, size))
    }

    /// Copies a reader into the store, verifying the digest it should have.
    pub fn put_reader(&self, r: &mut dyn Read, expected: &Digest) -> Result<u64, StoreError> {
        if self.has(expected) {
            return self.size(expected);
        }
        Ok(self.write_with(|w| io::copy(r, w).map(|_| ()), Some(expected))?.1)
    }

    pub fn read(&self, d: &Digest) -> Result<Vec<u8>, StoreError> {
        let p = self.path(d);
        let bytes = fs::read(&p).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::Missing(d.clone())
            } else {
                StoreError::Io { path: p.clone(), source: e }
            }
        })?;
        let actual = Digest::of(&bytes);
        if actual != *d {
            return Err(StoreError::Mismatch { expected: d.clone(), actual });
        }
        self.touch(d);
        Ok(bytes)
    }

    pub fn open_blob(&self, d: &Digest) -> Result<File, StoreError> {
        let p = self.path(d);
        let f = File::open(&p).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::Missing(d.clone())
            } else {
                StoreError::Io { path: p.clone(), source: e }
            }
        })?;
        self.touch(d);
        Ok(f)
    }

    /// Reads a blob through and checks it against its digest; a blob that no longer matches is
    /// removed (so the next use fetches or rebuilds it) and [`StoreError::Mismatch`] returned.
    /// Returns the size.
    pub fn verify(&self, d: &Digest) -> Result<u64, StoreError> {
        let mut f = self.open_blob(d)?;
        let p = self.path(d);
        let mut w = HashingWriter::new(io::sink());
        let size = io::copy(&mut io::BufReader::with_capacity(1 << 20, &mut f), &mut w).map_err(io_err(&p))?;
        let (_, actual, _) = w.finish();
        if actual != *d {
            tracing::warn!(blob = %d, actual = %actual, "a blob in the content store is corrupt; removed");
            let _ = self.remove(d);
            return Err(StoreError::Mismatch { expected: d.clone(), actual });
        }
        Ok(size)
    }

    pub fn size(&self, d: &Digest) -> Result<u64, StoreError> {
        let p = self.path(d);
        Ok(fs::metadata(&p).map_err(io_err(&p))?.len())
    }

    /// Records a use (the mtime is the last-use time).
    pub fn touch(&self, d: &Digest) {
        if let Ok(f) = File::options().append(true).open(self.path(d)) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }

    /// The modification time of the directory [`ContentStore::list`] reads: it changes whenever
    /// a blob is added (renamed into place) or removed, and not when one is read or touched.
    pub fn listing_mtime(&self) -> Option<std::time::SystemTime> {
        fs::metadata(self.root.join("blobs/sha256")).and_then(|m| m.modified()).ok()
    }

    /// Every blob with its size and last-use time.
    pub fn list(&self) -> Result<Vec<(Digest, u64, std::time::SystemTime)>, StoreError> {
        let dir = self.root.join("blobs/sha256");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let e = e.map_err(io_err(&dir))?;
            let Ok(d) = format!("sha256:{}", e.file_name().to_string_lossy()).parse::<Digest>() else { continue };
            let m = e.metadata().map_err(io_err(&dir))?;
            out.push((d, m.len(), m.modified().unwrap_or(std::time::UNIX_EPOCH)));
        }
        Ok(out)
    }

    pub fn remove(&self, d: &Digest) -> Result<(), StoreError> {
        let p = self.path(d);
        let _ = fs::remove_file(self.table_path(d));
        fs::remove_file(&p).map_err(io_err(&p))
    }

    fn table_path(&self, d: &Digest) -> PathBuf {
        self.root.join("chunks").join(d.hex())
    }

    /// The chunk table of a blob, as peers fetch it. Computed on first use (reading the blob
    /// once, which also verifies it: a blob that no longer matches its digest is removed rather
    /// than served) and kept beside the blob.
    pub fn table(&self, d: &Digest) -> Result<ChunkTable, StoreError> {
        self.table_sized(d, CHUNK_SIZE)
    }

    /// [`ContentStore::table`] with chunks of `chunk_size` (benchmarks compare sizes).
    pub fn table_sized(&self, d: &Digest, chunk_size: u32) -> Result<ChunkTable, StoreError> {
        if let Some(t) = fs::read(self.table_path(d)).ok().and_then(|b| decode_table(&b)) {
            if self.has(d) && t.chunk_size == chunk_size {
                return Ok(t);
            }
        }
        let mut f = self.open_blob(d)?;
        let p = self.path(d);
        let size = f.metadata().map_err(io_err(&p))?.len();
        let (table, actual) =
            ChunkTable::compute(&mut io::BufReader::with_capacity(1 << 20, &mut f), size, chunk_size).map_err(io_err(&p))?;
        if actual != *d {
            let _ = self.remove(d);
            return Err(StoreError::Mismatch { expected: d.clone(), actual });
        }
        self.save_table(d, &table);
        Ok(table)
    }

    fn save_table(&self, d: &Digest, t: &ChunkTable) {
        let tmp = self.temp_path();
        if fs::write(&tmp, encode_table(t)).and_then(|_| fs::rename(&tmp, self.table_path(d))).is_err() {
            let _ = fs::remove_file(&tmp);
        }
    }

    /// Moves a file assembled from chunks that each passed [`ChunkTable::verify`] into the
    /// store: the verified chain ends in the blob's digest, so the file is not hashed again;
    /// it is fsynced and renamed.
    pub fn insert_chunked(&self, tmp: &Path, table: &ChunkTable) -> Result<u64, StoreError> {
        let d = table.digest();
        let result = (|| {
            let f = File::open(tmp).map_err(io_err(tmp))?;
            let size = f.metadata().map_err(io_err(tmp))?.len();
            if size != table.size {
                return Err(StoreError::Io {
                    path: tmp.to_path_buf(),
                    source: io::Error::new(io::ErrorKind::InvalidData, format!("{size} bytes where {} were verified", table.size)),
                });
            }
            f.sync_all().map_err(io_err(tmp))?;
            self.save_table(&d, table);
            let dest = self.path(&d);
            fs::rename(tmp, &dest).map_err(io_err(&dest))?;
            Ok(size)
        })();
        let _ = fs::remove_file(tmp);
        result
    }

    /// Moves a file assembled in [`ContentStore::temp_path`] into the store, after checking
    /// that it hashes to `expected` (the file is removed either way). `table`, already verified
    /// chunk by chunk, is kept for serving the blob on.
    pub fn insert_file(&self, tmp: &Path, expected: &Digest, table: Option<&ChunkTable>) -> Result<u64, StoreError> {
        let result = (|| {
            let mut f = File::open(tmp).map_err(io_err(tmp))?;
            let mut w = HashingWriter::new(io::sink());
            let size = io::copy(&mut f, &mut w).map_err(io_err(tmp))?;
            let (_, actual, _) = w.finish();
            if actual != *expected {
                return Err(StoreError::Mismatch { expected: expected.clone(), actual });
            }
            f.sync_all().map_err(io_err(tmp))?;
            if let Some(t) = table {
                self.save_table(expected, t);
            }
            let dest = self.path(expected);
            fs::rename(tmp, &dest).map_err(io_err(&dest))?;
            Ok(size)
        })();
        let _ = fs::remove_file(tmp);
        result
    }
}

/// size (8 bytes) + chunk size (4) + the hashes.
fn encode_table(t: &ChunkTable) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + 32 * t.hashes.len());
    out.extend_from_slice(&t.size.to_le_bytes());
    out.extend_from_slice(&t.chunk_size.to_le_bytes());
    t.hashes.iter().for_each(|h| out.extend_from_slice(h));
    out
}

fn decode_table(b: &[u8]) -> Option<ChunkTable> {
    let size = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
    let chunk_size = u32::from_le_bytes(b.get(8..12)?.try_into().ok()?);
    let hashes = b.get(12..)?.chunks_exact(32).map(|c| c.try_into().ok()).collect::<Option<Vec<[u8; 32]>>>()?;
    let t = ChunkTable { size, chunk_size, hashes, have: None };
    t.validate().ok().map(|_| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_read_verify() {
        let dir = std::env::temp_dir().join(format!("kiln-store-test-{}", std::process::id()));
        let s = ContentStore::open(&dir).unwrap();
        let d = s.put(b"hello").unwrap();
        assert_eq!(s.read(&d).unwrap(), b"hello");
        let wrong = Digest::of(b"other");
        assert!(matches!(s.put_reader(&mut &b"hello"[..], &wrong), Err(StoreError::Mismatch { .. })));
        assert!(!s.has(&wrong));
        // Corruption on disk is caught on read.
        fs::write(s.path(&d), b"jello").unwrap();
        assert!(matches!(s.read(&d), Err(StoreError::Mismatch { .. })));
        assert!(matches!(s.read(&wrong), Err(StoreError::Missing(_))));
        // `verify` removes what no longer matches, so the next user fetches it again.
        let v = s.put(b"verified").unwrap();
        assert_eq!(s.verify(&v).unwrap(), 8);
        fs::write(s.path(&v), b"verifieD").unwrap();
        assert!(matches!(s.verify(&v), Err(StoreError::Mismatch { .. })));
        assert!(!s.has(&v));
        // A chunk table is never computed from (and served for) a corrupted blob.
        assert!(matches!(s.table(&d), Err(StoreError::Mismatch { .. })));
        assert!(!s.has(&d));
        let big: Vec<u8> = (0..(CHUNK_SIZE as usize + 10)).map(|i| i as u8).collect();
        let d = s.put(&big).unwrap();
        let t = s.table(&d).unwrap();
        assert_eq!((t.chunks(), t.size), (2, big.len() as u64));
        assert_eq!(s.table(&d).unwrap(), t);
        // A file assembled elsewhere enters only under its own digest.
        let tmp = s.temp_path();
        fs::write(&tmp, b"assembled").unwrap();
        assert!(matches!(s.insert_file(&tmp, &wrong, None), Err(StoreError::Mismatch { .. })));
        assert!(!tmp.exists() && !s.has(&wrong));
        fs::write(&tmp, b"assembled").unwrap();
        let d = Digest::of(b"assembled");
        assert_eq!(s.insert_file(&tmp, &d, None).unwrap(), 9);
        assert_eq!(s.read(&d).unwrap(), b"assembled");
        fs::remove_dir_all(dir).unwrap();
    }
}
