//! The seam between the engine and the host for what needs root: mounting a step's root
//! filesystem and running a RUN step's process.
//!
//! [`Runc`] is the executor of every real build (overlayfs and the [`runc`] module).
//! tests use `RecordingExecutor`, which needs neither root nor runc: it records what it was
//! asked to run and simulates the step by writing files where the step's changes would land.

use crate::runc::{self, Overlay, RunError, RunSpec};
use std::path::{Path, PathBuf};

/// A mounted filesystem; dropping it unmounts it.
pub type Mounted = Box<dyn Send>;

/// How the engine mounts step filesystems and runs RUN steps. Called from the engine's
/// blocking threads, several stages at once.
pub trait Executor: Send + Sync {
    /// Mounts `lowers` (top first) at `target`: writable over `upper` (with overlay's `work`
    /// directory) when given, else read-only.
    fn mount(&self, lowers: &[PathBuf], upper: Option<(&Path, &Path)>, target: &Path) -> Result<Mounted, RunError>;

    /// Runs a step's process in `spec.rootfs`, whose changes land in `spec.upper`. `id` names
    /// the container, `bundle` is a fresh directory for its bundle, and `output` hears every
    /// line the process prints.
    fn run(&self, id: &str, bundle: &Path, spec: &RunSpec, output: &mut dyn FnMut(&str)) -> Result<(), RunError>;
}

/// Overlayfs and runc.
pub struct Runc;

impl Executor for Runc {
    fn mount(&self, lowers: &[PathBuf], upper: Option<(&Path, &Path)>, target: &Path) -> Result<Mounted, RunError> {
        Ok(Box::new(Overlay::mount(lowers, upper, target)?))
    }

    fn run(&self, id: &str, bundle: &Path, spec: &RunSpec, output: &mut dyn FnMut(&str)) -> Result<(), RunError> {
        runc::run(id, bundle, spec, output)
    }
}
