//! The step cache: a step's key (its parent's key, the expanded instruction, the platform
//! and whatever else decides its result), and its record looked up locally, then in the
//! remote caches, and stored once it has run.

use super::{EngineError, RemoteCache, SliceRun, State};
use crate::copy;
use crate::error::io_err;
use kiln_shared::api::StepSource;
use kiln_shared::digest::Digest;
use kiln_shared::frontend::instructions::Instruction;
use kiln_shared::frontend::resolve::{Stage, Step};
use kiln_shared::Platform;
use std::path::Path;
use std::sync::atomic::Ordering;

/// Bumped whenever what a cached step produces changes, so old records are not reused.
const CACHE_VERSION: &str = "kiln-step-cache-3";

pub(super) fn cache_key(parent: &str, text: &str, platform: &Platform, extra: &str) -> String {
    Digest::of(format!("{CACHE_VERSION}\n{parent}\n{text}\n{platform}\n{extra}").as_bytes()).hex().to_string()
}

/// Writes a step cache record atomically. Two slices of one build may write the same record
/// at once (both platforms run a `FROM --platform=$BUILDPLATFORM` stage): each writer has its
/// own temporary file (process and sequence number), and the last rename wins with equal bytes.
pub(super) fn write_record(path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp-{}-{n}", std::process::id()));
    let written = std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(io_err("writing the step cache"))
}

impl SliceRun<'_> {
    /// The step's record from the local cache, else from the remote caches (whose record is
    /// then kept locally with every blob it names).
    pub(super) fn cached(&self, record: &Path, name: &str, key: &str) -> Option<(State, StepSource)> {
        if let Some(cached) = std::fs::read(record).ok().and_then(|b| serde_json::from_slice::<State>(&b).ok()) {
            if cached.layers.iter().all(|l| self.agent.store.has(&l.digest)) {
                // The record's mtime is its last use, which prune's `until` filter reads.
                if let Ok(f) = std::fs::File::options().append(true).open(record) {
                    let _ = f.set_modified(std::time::SystemTime::now());
                }
                for l in &cached.layers {
                    self.agent.store.touch(&l.digest);
                }
                crate::metrics::get().step_cache_hits.inc(&["local"]);
                return Some((cached, StepSource::Local));
            }
        }
        let peers = self.agent.peers.get().map(|p| &**p as &dyn RemoteCache);
        for remote in peers.into_iter().chain(self.req.remote.iter().copied()) {
            let Some(bytes) = remote.record(name, key) else { continue };
            let Ok(cached) = serde_json::from_slice::<State>(&bytes) else { continue };
            // A record is usable only with its layers, and only if it is for this very step.
            if cached.key != key
                || !cached.layers.iter().all(|l| self.agent.store.has(&l.digest) || remote.blob(&l.digest, &self.agent.store))
            {
                continue;
            }
            if write_record(record, &bytes).is_err() {
                continue;
            }
            if remote.is_peer() {
                self.peer_hits.fetch_add(1, Ordering::Relaxed);
            }
            crate::metrics::get().step_cache_hits.inc(&[remote.source()]);
            return Some((cached, if remote.is_peer() { StepSource::Peer } else { StepSource::Imported }));
        }
        None
    }

    /// Keeps a step's record for `--cache-to`.
    pub(super) fn note(&self, stage: &Stage, key: &str, state: &State) {
        let json = serde_json::to_string(state).unwrap_or_default();
        self.records.lock().unwrap_or_else(|e| e.into_inner()).push((stage.index, key.to_string(), json));
    }

    /// What besides the instruction text decides a step's result.
    pub(super) fn cache_extra(&self, stage: &Stage, step: &Step) -> Result<String, EngineError> {
        let from_key = |from: &Option<String>| -> Result<String, EngineError> {
            match from {
                None => Ok(String::new()),
                Some(f) => Ok(match self.source_state(f, &stage.platform)? {
                    Some(s) => s.key,
                    None => String::new(),
                }),
            }
        };
        Ok(match &step.instruction {
            Instruction::Copy(c) => {
                let origin = if c.from.is_some() {
                    from_key(&c.from)?
                } else {
                    copy::context_checksum(self.req.context, self.req.ignore, &c.sources)?
                };
                format!("{origin}\n{:?}", c.heredocs)
            }
            Instruction::Add(a) => format!("{}\n{:?}", copy::context_checksum(self.req.context, self.req.ignore, &a.sources)?, a.heredocs),
            Instruction::Run(r) => {
                let mut extra = format!("{:?}\n{:?}\n{}", step.args, step.files, step.workdir);
                for m in &r.mounts {
                    if m.from.is_some() {
                        extra.push_str(&from_key(&m.from)?);
                    } else if m.kind == kiln_shared::frontend::mount::MountType::Bind {
                        extra.push_str(&copy::context_checksum(
                            self.req.context,
                            self.req.ignore,
                            &[m.source.clone().unwrap_or_else(|| ".".into())],
                        )?);
                    }
                }
                extra
            }
            _ => String::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    /// Many writers of one record at once: every write succeeds and the record is whole.
    #[test]
    fn concurrent_writers_of_one_record() {
        let dir = std::env::temp_dir().join(format!("kiln-step-cache-race-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("record.json");
        let bytes = vec![b'x'; 64 << 10];
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..50 {
                        super::write_record(&path, &bytes).expect("a concurrent write succeeds");
                    }
                });
            }
        });
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary files are left");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
