//! The start-up sweep: what a killed agent process left in its directory. Scratch directories
//! and temporary files are named after the process that made them (`WHAT-PID-N`,
//! `content/tmp/PID-N`); those of processes that no longer run are unmounted (overlay mounts
//! of steps and `COPY --from`) and removed. Those of live processes are never touched.

use nix::mount::{umount2, MntFlags};
use nix::sys::signal::kill;
use nix::unistd::Pid;
use std::path::{Path, PathBuf};

/// What a sweep found and removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub unmounted: usize,
    pub removed: usize,
}

/// Whether process `pid` still runs (a process we may not signal runs too).
fn alive(pid: i32) -> bool {
    pid > 0 && (pid as u32 == std::process::id() || !matches!(kill(Pid::from_raw(pid), None), Err(nix::errno::Errno::ESRCH)))
}

/// The process id in a name `WHAT-PID-N` (or `PID-N`).
fn owner(name: &str) -> Option<i32> {
    // `ro-PID-N.empty` belongs to `ro-PID-N`.
    let name = name.split('.').next().unwrap_or(name);
    let mut parts = name.rsplit('-');
    let _n: u64 = parts.next()?.parse().ok()?;
    parts.next()?.parse().ok()
}

/// Mount points under `dir`, deepest first (`/proc/self/mountinfo`, field 5).
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir) && p != dir)
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

/// Sweeps `root/run` and the content store's temporary directory.
pub fn leftovers(root: &Path) -> Swept {
    let mut swept = Swept::default();
    let run = root.join("run");
    let Ok(run) = run.canonicalize() else { return swept };
    let dead = |p: &Path| {
        p.strip_prefix(&run)
            .ok()
            .and_then(|rel| rel.components().next())
            .and_then(|c| owner(&c.as_os_str().to_string_lossy()))
            .is_some_and(|pid| !alive(pid))
    };
    for m in mounts_under(&run) {
        if dead(&m) && umount2(&m, MntFlags::MNT_DETACH).is_ok() {
            swept.unmounted += 1;
        }
    }
    let still_mounted = mounts_under(&run);
    for dir in [run.clone(), root.join("content/tmp")] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            let Some(pid) = owner(&e.file_name().to_string_lossy()) else { continue };
            if alive(pid) || still_mounted.iter().any(|m| m.starts_with(&path)) {
                continue;
            }
            let gone = if path.is_dir() && !path.is_symlink() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            if gone.is_ok() {
                swept.removed += 1;
            }
        }
    }
    if swept != Swept::default() {
        tracing::info!(unmounted = swept.unmounted, removed = swept.removed, "swept what a previous agent process left behind");
    }
    swept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dead_processes_leftovers_go() {
        let root = std::env::temp_dir().join(format!("kiln-sweep-{}", std::process::id()));
        std::fs::create_dir_all(root.join("run")).unwrap();
        std::fs::create_dir_all(root.join("content/tmp")).unwrap();
        // A pid that cannot exist (above pid_max's ceiling of 2^22).
        let dead = 4_194_400;
        let mine = std::process::id();
        for name in [format!("ro-{dead}-1"), format!("step-{dead}-2"), format!("ro-{mine}-3"), "keep".to_string()] {
            std::fs::create_dir_all(root.join("run").join(&name).join("sub")).unwrap();
        }
        std::fs::write(root.join("run").join(format!("ro-{dead}-1.empty")), b"").unwrap();
        std::fs::write(root.join("content/tmp").join(format!("{dead}-7")), b"partial").unwrap();
        std::fs::write(root.join("content/tmp").join(format!("{mine}-8")), b"mine").unwrap();
        let swept = leftovers(&root);
        assert_eq!(swept, Swept { unmounted: 0, removed: 4 }, "the dead process's two dirs, its empty lower and its temp file");
        let mut left: Vec<String> =
            std::fs::read_dir(root.join("run")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, ["keep".to_string(), format!("ro-{mine}-3")]);
        assert!(root.join("content/tmp").join(format!("{mine}-8")).exists());
        assert_eq!(owner("probe-aarch64-123-4"), Some(123));
        assert_eq!(owner("keep"), None);
        assert_eq!(owner("ro-5-6.empty"), Some(5));
        let _ = std::fs::remove_dir_all(&root);
    }
}
