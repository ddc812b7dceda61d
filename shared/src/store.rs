//! The content store: blobs by sha256 on local disk.
//!
//! A blob is written to a temporary file, fsynced, verified against its digest and renamed into
//! place, so a crash never leaves a half blob under a real name. Reads can be verified too.
//! Every use touches the file's mtime, which `prune --filter until=` and `du` read.

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

#[derive(Debug)]
pub struct ContentStore {
    root: PathBuf,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl ContentStore {
    pub fn open(root: &Path) -> Result<ContentStore, StoreError> {
        let blobs = root.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
        fs::create_dir_all(root.join("tmp")).map_err(io_err(root))?;
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
        fs::remove_file(&p).map_err(io_err(&p))
    }
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
        fs::remove_dir_all(dir).unwrap();
    }
}
