//! The seam between the engine and the host for what needs root: mounting a step's root
//! filesystem and running a RUN step's process.
//!
//! [`Runc`] is the executor of every real build (overlayfs and the [`runc`] module). Unit
//! tests use `fake::RecordingExecutor`, which needs neither root nor runc: it records what it was
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

    /// Mounts a fresh tmpfs (mode 0700) at `target`, for what must never reach the disk (a
    /// step's secrets); dropping it unmounts it and its contents are gone.
    fn tmpfs(&self, target: &Path) -> Result<Mounted, RunError>;
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

    fn tmpfs(&self, target: &Path) -> Result<Mounted, RunError> {
        Ok(Box::new(runc::Tmpfs::mount(target)?))
    }
}

/// Test doubles.
#[cfg(test)]
pub(crate) mod fake {
    use super::{Executor, Mounted};
    use crate::runc::{RunError, RunSpec};
    use std::fs;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    /// A RUN step as the executor was asked to run it: an owned [`RunSpec`].
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct RecordedRun {
        pub args: Vec<String>,
        pub env: Vec<String>,
        pub cwd: String,
        pub uid: u32,
        pub gid: u32,
        pub groups: Vec<u32>,
        pub network: String,
        pub binds: Vec<(PathBuf, String, bool)>,
    }

    /// Records every RUN step and "runs" it by writing `writes` into the step's upper
    /// directory, which is what the engine turns into the step's layer. A mount is a plain
    /// directory holding a copy of the lower directories (whiteouts skipped), so steps can
    /// still read the image's files (`/etc/passwd` for USER, COPY --from).
    #[derive(Default)]
    pub struct RecordingExecutor {
        runs: Mutex<Vec<RecordedRun>>,
        /// (absolute path in the image, content) written by every run.
        writes: Vec<(String, String)>,
        /// Fail every run with this exit code.
        exit_code: Option<i32>,
    }

    impl RecordingExecutor {
        /// An executor whose every run writes `files` into the image.
        pub fn writing(files: &[(&str, &str)]) -> RecordingExecutor {
            RecordingExecutor { writes: files.iter().map(|(p, c)| (p.to_string(), c.to_string())).collect(), ..Default::default() }
        }

        /// An executor whose every run exits with `code`.
        pub fn failing(code: i32) -> RecordingExecutor {
            RecordingExecutor { exit_code: Some(code), ..Default::default() }
        }

        /// The runs so far, in order.
        pub fn runs(&self) -> Vec<RecordedRun> {
            self.runs.lock().unwrap_or_else(|e| e.into_inner()).clone()
        }
    }

    impl Executor for RecordingExecutor {
        fn mount(&self, lowers: &[PathBuf], upper: Option<(&Path, &Path)>, target: &Path) -> Result<Mounted, RunError> {
            let err = |e: std::io::Error| RunError::Mount { path: target.to_path_buf(), reason: e.to_string() };
            fs::create_dir_all(target).map_err(err)?;
            if let Some((upper, work)) = upper {
                fs::create_dir_all(upper).map_err(err)?;
                fs::create_dir_all(work).map_err(err)?;
            }
            // Bottom layer first, so upper layers win.
            for lower in lowers.iter().rev() {
                copy_into(lower, target).map_err(err)?;
            }
            Ok(Box::new(()))
        }

        fn run(&self, _id: &str, _bundle: &Path, spec: &RunSpec, output: &mut dyn FnMut(&str)) -> Result<(), RunError> {
            self.runs.lock().unwrap_or_else(|e| e.into_inner()).push(RecordedRun {
                args: spec.args.to_vec(),
                env: spec.env.to_vec(),
                cwd: spec.cwd.to_string(),
                uid: spec.uid,
                gid: spec.gid,
                groups: spec.groups.to_vec(),
                network: spec.network.to_string(),
                binds: spec.binds.to_vec(),
            });
            output(&format!("recorded {}", spec.args.join(" ")));
            // What a step's secret files held, as the step saw them.
            for (src, dst, _) in spec.binds {
                if let Ok(bytes) = fs::read(src) {
                    output(&format!("bind {dst}: {}", String::from_utf8_lossy(&bytes)));
                }
            }
            if let Some(code) = self.exit_code {
                return Err(RunError::Failed { command: spec.args.join(" "), code, last_lines: vec![] });
            }
            for (path, content) in &self.writes {
                let dest = spec.upper.join(path.trim_start_matches('/'));
                let err = |e: std::io::Error| RunError::Bundle { path: dest.clone(), source: e };
                if let Some(parent) = dest.parent() {
                    fs::create_dir_all(parent).map_err(err)?;
                }
                fs::write(&dest, content).map_err(err)?;
            }
            Ok(())
        }

        fn tmpfs(&self, target: &Path) -> Result<Mounted, RunError> {
            fs::create_dir_all(target).map_err(|e| RunError::Mount { path: target.to_path_buf(), reason: e.to_string() })?;
            Ok(Box::new(()))
        }
    }

    /// Copies the tree `src` over `dest`: directories merge, files and links replace.
    fn copy_into(src: &Path, dest: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::FileTypeExt;
        for e in fs::read_dir(src)? {
            let e = e?;
            let (from, to) = (e.path(), dest.join(e.file_name()));
            let t = e.file_type()?;
            if t.is_dir() {
                fs::create_dir_all(&to)?;
                copy_into(&from, &to)?;
            } else if t.is_symlink() {
                let _ = fs::remove_file(&to);
                std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
            } else if t.is_file() {
                let _ = fs::remove_file(&to);
                fs::copy(&from, &to)?;
            } else if t.is_char_device() {
                // An overlay whiteout: the path is gone from this layer on.
                let _ = fs::remove_dir_all(&to).or_else(|_| fs::remove_file(&to));
            }
        }
        Ok(())
    }
}
