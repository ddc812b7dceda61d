//! Snapshots: every layer unpacked once into a directory named by its diff_id, reached
//! through a short link, and stacked (through the [`Executor`](crate::executor::Executor)) into a step's filesystem.

use super::{Agent, EngineError, State};
use crate::error::io_err;
use crate::executor::Mounted;
use crate::layers::{self, Layer, Whiteouts};
use std::path::PathBuf;

impl Agent {
    /// The unpacked snapshot directory of a layer (unpacked on first use).
    pub(super) fn snapshot(&self, layer: &Layer) -> Result<PathBuf, EngineError> {
        let dir = self.root.join("snapshots").join(layer.diff_id.hex());
        if !dir.exists() {
            let tmp = self.scratch("unpack");
            layers::unpack(&self.store, &layer.digest, &tmp, Whiteouts::Overlay)?;
            if let Err(e) = std::fs::rename(&tmp, &dir) {
                let _ = std::fs::remove_dir_all(&tmp);
                if !dir.exists() {
                    return Err(io_err("storing a snapshot")(e));
                }
            }
        }
        // Overlay's mount options fit in one page: short links instead of full snapshot paths
        // let an image have about three times as many layers (containerd's trick).
        let link = self.root.join("l").join(&layer.diff_id.hex()[..16]);
        if std::fs::symlink_metadata(&link).is_err() {
            let target = PathBuf::from("../snapshots").join(layer.diff_id.hex());
            if let Err(e) = std::os::unix::fs::symlink(&target, &link) {
                if std::fs::symlink_metadata(&link).is_err() {
                    return Err(io_err("linking a snapshot")(e));
                }
            }
        }
        Ok(link)
    }

    /// Lower directories of a state, top layer first.
    pub(super) fn lowers(&self, state: &State) -> Result<Vec<PathBuf>, EngineError> {
        state.layers.iter().rev().map(|l| self.snapshot(l)).collect()
    }

    /// Mounts a state's filesystem read-only (for COPY --from and bind mounts).
    pub(super) fn mount_ro(&self, state: &State) -> Result<(Mounted, PathBuf), EngineError> {
        let target = self.scratch("ro");
        let lowers = self.lowers(state)?;
        let mounted = self.executor.mount(&lowers, None, &target)?;
        // Unmounted first (the tuple drops in order), then its directories go.
        Ok((Box::new((mounted, Scratch(target.clone()))), target))
    }
}

/// A mount point (and the empty lower beside it) removed when dropped, after the unmount.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        // `remove_dir` only: a mount point that is still mounted or not empty stays.
        let _ = std::fs::remove_dir(&self.0);
        let _ = std::fs::remove_dir(self.0.with_extension("empty"));
    }
}
