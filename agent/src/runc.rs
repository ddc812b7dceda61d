//! Running a RUN step: an overlay rootfs over the stage's snapshots and a runc container.
//!
//! The rootfs is an overlay whose lower directories are the stage's unpacked layers (top
//! first) and whose upper directory becomes the step's layer. As in BuildKit, the directories
//! runc creates for `/proc`, `/dev`, `/sys` and for `--mount` targets stay in the image (empty);
//! the files it creates for `/etc/resolv.conf`, `/etc/hosts` and `/etc/hostname` are removed
//! when the step left them empty, with `/etc` itself if it was created only for them (current
//! BuildKit's recursive stub removal).

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the build was cancelled: the step's container was killed")]
    Cancelled,
    #[error("mounting the step's rootfs at {path}: {reason}")]
    Mount { path: PathBuf, reason: String },
    #[error("starting runc: {0} (is runc installed? `apt-get install runc`)")]
    Spawn(io::Error),
    #[error("preparing the container bundle {path}: {source}")]
    Bundle { path: PathBuf, source: io::Error },
    #[error("process \"{}\" did not complete successfully: exit code: {code}", shorten(command))]
    Failed { command: String, code: i32, last_lines: Vec<String> },
}

/// A command as an error shows it: its first 200 characters (a generated 2 MB `RUN` line must
/// not become a 2 MB error message).
pub fn shorten(command: &str) -> String {
    const SHOWN: usize = 200;
    match command.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}... ({} more characters)", &command[..cut], command[cut..].chars().count()),
        None => command.to_string(),
    }
}

/// An overlay mount that is undone on drop.
pub struct Overlay {
    pub target: PathBuf,
}

impl Overlay {
    /// Mounts `lowers` (top first) with `upper`/`work`, or read-only with lowers only.
    pub fn mount(lowers: &[PathBuf], upper: Option<(&Path, &Path)>, target: &Path) -> Result<Overlay, RunError> {
        let err = |reason: String| RunError::Mount { path: target.to_path_buf(), reason };
        std::fs::create_dir_all(target).map_err(|e| err(e.to_string()))?;
        let mut lowers: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
        let empty = target.with_extension("empty");
        if lowers.is_empty() || (upper.is_none() && lowers.len() == 1) {
            // overlay needs two layers without an upper dir; an empty one does no harm.
            std::fs::create_dir_all(&empty).map_err(|e| err(e.to_string()))?;
            lowers.push(empty.display().to_string());
        }
        let mut opts = format!("lowerdir={}", lowers.join(":"));
        if let Some((u, w)) = upper {
            std::fs::create_dir_all(u).map_err(|e| err(e.to_string()))?;
            std::fs::create_dir_all(w).map_err(|e| err(e.to_string()))?;
            opts.push_str(&format!(",upperdir={},workdir={}", u.display(), w.display()));
        }
        let flags = if upper.is_none() { MsFlags::MS_RDONLY } else { MsFlags::empty() };
        mount(Some("overlay"), target, Some("overlay"), flags, Some(opts.as_str()))
            .map_err(|e| err(format!("{e} (overlay options {opts})")))?;
        Ok(Overlay { target: target.to_path_buf() })
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = umount2(&self.target, MntFlags::MNT_DETACH);
    }
}

/// A tmpfs that is unmounted on drop.
pub struct Tmpfs {
    target: PathBuf,
}

impl Tmpfs {
    pub fn mount(target: &Path) -> Result<Tmpfs, RunError> {
        let err = |reason: String| RunError::Mount { path: target.to_path_buf(), reason };
        std::fs::create_dir_all(target).map_err(|e| err(e.to_string()))?;
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        mount(Some("tmpfs"), target, Some("tmpfs"), flags, Some("mode=0700,size=64m")).map_err(|e| err(format!("tmpfs: {e}")))?;
        Ok(Tmpfs { target: target.to_path_buf() })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = umount2(&self.target, MntFlags::MNT_DETACH);
    }
}

pub struct RunSpec<'a> {
    pub rootfs: &'a Path,
    pub upper: &'a Path,
    pub args: &'a [String],
    pub env: &'a [String],
    pub cwd: &'a str,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the user's memberships in the image's /etc/group).
    pub groups: &'a [u32],
    /// `none` gets its own network namespace; `default` and `host` share the host's.
    pub network: &'a str,
    /// Extra bind mounts: (source on the host, destination, read-only).
    pub binds: &'a [(PathBuf, String, bool)],
    /// `--add-host`: (name, address) lines added to the step's `/etc/hosts`.
    pub hosts: &'a [(String, String)],
    /// `/dev/shm`'s size (`--shm-size`; BuildKit's default is 64 MiB).
    pub shm_bytes: u64,
    /// `--ulimit`: (name as `ulimit` says it, e.g. `nofile`, soft, hard).
    pub ulimits: &'a [(String, u64, u64)],
    /// Set when the build is cancelled: the container is killed.
    pub cancelled: &'a std::sync::atomic::AtomicBool,
}

/// `/dev/shm`'s size when the build does not say.
pub const DEFAULT_SHM_BYTES: u64 = 64 << 20;

const NETWORK_FILES: &[&str] = &["/etc/resolv.conf", "/etc/hosts", "/etc/hostname"];

fn caps() -> serde_json::Value {
    serde_json::json!([
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE"
    ])
}

fn config(spec: &RunSpec, hosts: Option<&Path>) -> serde_json::Value {
    let shm = format!("size={}k", spec.shm_bytes.div_ceil(1024).max(1));
    let mut mounts = vec![
        serde_json::json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        serde_json::json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        serde_json::json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        serde_json::json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", shm]}),
        serde_json::json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
    ];
    for f in ["/etc/resolv.conf", "/etc/hosts"] {
        let source = if f == "/etc/hosts" { hosts.unwrap_or(Path::new(f)) } else { Path::new(f) };
        if source.exists() && spec.network != "none" {
            mounts.push(serde_json::json!({"destination": f, "type": "bind", "source": source, "options": ["rbind", "ro"]}));
        }
    }
    for (src, dst, ro) in spec.binds {
        let mut options = vec!["rbind"];
        if *ro {
            options.push("ro");
        }
        mounts.push(serde_json::json!({"destination": dst, "type": "bind", "source": src, "options": options}));
    }
    let mut namespaces = vec![
        serde_json::json!({"type": "pid"}),
        serde_json::json!({"type": "ipc"}),
        serde_json::json!({"type": "uts"}),
        serde_json::json!({"type": "mount"}),
    ];
    if spec.network == "none" {
        namespaces.push(serde_json::json!({"type": "network"}));
    }
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": spec.uid, "gid": spec.gid, "additionalGids": spec.groups},
            "args": spec.args,
            "env": spec.env,
            "cwd": spec.cwd,
            "capabilities": {"bounding": caps(), "effective": caps(), "permitted": caps()},
            "rlimits": spec.ulimits.iter().map(|(name, soft, hard)| serde_json::json!({
                "type": format!("RLIMIT_{}", name.to_ascii_uppercase()), "soft": soft, "hard": hard
            })).collect::<Vec<_>>(),
            "noNewPrivileges": false
        },
        "root": {"path": spec.rootfs, "readonly": false},
        "hostname": "kiln",
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces,
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// Runs the process; `output` receives every line it prints. Keeps the last lines for errors.
pub fn run(id: &str, bundle: &Path, spec: &RunSpec, output: &mut dyn FnMut(&str)) -> Result<(), RunError> {
    let berr = |source| RunError::Bundle { path: bundle.to_path_buf(), source };
    std::fs::create_dir_all(bundle).map_err(berr)?;
    // Which network files runc will have to create in the rootfs (they land in the upper dir).
    let stubs: Vec<String> = NETWORK_FILES
        .iter()
        .map(|m| m.to_string())
        .filter(|m| std::fs::symlink_metadata(spec.rootfs.join(m.trim_start_matches('/'))).is_err())
        .collect();
    // `--add-host`: the host's /etc/hosts and the extra names, as BuildKit adds them.
    let hosts = if spec.hosts.is_empty() {
        None
    } else {
        let mut text = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        for (name, addr) in spec.hosts {
            text.push_str(&format!("{addr}\t{name}\n"));
        }
        let path = bundle.join("hosts");
        std::fs::write(&path, text).map_err(berr)?;
        Some(path)
    };
    std::fs::write(bundle.join("config.json"), serde_json::to_vec_pretty(&config(spec, hosts.as_deref())).unwrap_or_default())
        .map_err(berr)?;
    let mut child = Command::new("runc")
        .args(["--root", &bundle.join("state").display().to_string(), "run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(RunError::Spawn)?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let mut readers = Vec::new();
    for pipe in [
        child.stdout.take().map(|p| Box::new(p) as Box<dyn io::Read + Send>),
        child.stderr.take().map(|p| Box::new(p) as Box<dyn io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        }));
    }
    drop(tx);
    let mut last: VecDeque<String> = VecDeque::new();
    let ended = std::sync::atomic::AtomicBool::new(false);
    let state = bundle.join("state");
    let status = std::thread::scope(|scope| {
        // A cancelled build kills its container (the step fails; nothing is committed).
        scope.spawn(|| {
            while !ended.load(std::sync::atomic::Ordering::Relaxed) {
                if spec.cancelled.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = Command::new("runc")
                        .args(["--root", &state.display().to_string(), "kill", id, "KILL"])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        });
        for line in rx {
            output(&line);
            last.push_back(line);
            if last.len() > 12 {
                last.pop_front();
            }
        }
        for r in readers {
            let _ = r.join();
        }
        let status = child.wait().map_err(RunError::Spawn);
        ended.store(true, std::sync::atomic::Ordering::Relaxed);
        status
    })?;
    if spec.cancelled.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(RunError::Cancelled);
    }
    for stub in &stubs {
        remove_stub(&spec.upper.join(stub.trim_start_matches('/')));
    }
    if !status.success() {
        return Err(RunError::Failed { command: spec.args.join(" "), code: status.code().unwrap_or(-1), last_lines: last.into() });
    }
    Ok(())
}

/// Removes an empty network file runc created as a mount point, and `/etc` after it if that
/// became empty (it was created for them).
fn remove_stub(p: &Path) {
    let Ok(m) = std::fs::symlink_metadata(p) else { return };
    if m.is_file() && m.len() == 0 && std::fs::remove_file(p).is_ok() {
        if let Some(parent) = p.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_commands_are_cut_in_errors() {
        let long = format!("/bin/sh -c echo {}", "é".repeat(2 << 20));
        let e = super::RunError::Failed { command: long, code: 1, last_lines: vec![] }.to_string();
        assert!(e.chars().count() < 300, "{} characters", e.chars().count());
        assert!(
            e.starts_with("process \"/bin/sh -c echo éé") && e.ends_with(" more characters)\" did not complete successfully: exit code: 1"),
            "{e}"
        );
        assert_eq!(super::shorten("short"), "short");
    }
}
