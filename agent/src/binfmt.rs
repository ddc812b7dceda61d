//! Registering qemu-user-static with the kernel's binfmt_misc, for `kiln agent --install-binfmt`
//! and `kiln inspect --bootstrap` on the embedded farm: what tonistiigi/binfmt and Debian's
//! binfmt-support do, for the interpreters this host has.
//!
//! Each handler matches an architecture's ELF header (magic and mask as in qemu's
//! `scripts/qemu-binfmt-conf.sh`) and is registered with the fix-binary flag `F`: the kernel
//! opens the interpreter once, at registration, so RUN steps inside a container's root find it
//! although the container has no qemu of its own. `C` (implies `O`) gives a setuid program its
//! own credentials under emulation, as tonistiigi/binfmt does.
//!
//! binfmt_misc is shared by every process of the host (or of the user namespace that mounted
//! it), so this never touches what is there: a handler that exists under the same name, or any
//! handler with the same magic, is left alone, enabled or not; the host's own architecture is
//! never given a handler (it would send every native program through qemu). [`plan`] makes
//! those decisions without I/O; [`install`] reads the mount, carries them out and probes again.

use crate::probe::HostPlatforms;
use kiln_shared::Platform;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Where binfmt_misc is mounted (and mounted by [`install`] when it is not).
pub const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";
/// What to install when no interpreter is found.
pub const INSTALL_QEMU: &str = "apt-get install qemu-user-static";

/// One binfmt_misc handler kiln knows how to register.
#[derive(Debug)]
pub struct Handler {
    /// The entry's name in binfmt_misc, as qemu, Debian and tonistiigi/binfmt name it.
    pub name: &'static str,
    /// qemu's name for the architecture (`qemu-{qemu}-static`).
    pub qemu: &'static str,
    /// The OCI architecture it runs.
    pub arch: &'static str,
    magic: &'static [u8; 20],
    mask: &'static [u8; 20],
}

/// The handlers, from qemu's `scripts/qemu-binfmt-conf.sh` (Debian's qemu-user-static ships the
/// same).
pub const HANDLERS: &[Handler] = &[
    Handler {
        name: "qemu-aarch64",
        qemu: "aarch64",
        arch: "arm64",
        magic: b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00",
        mask: b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
    },
    Handler {
        name: "qemu-x86_64",
        qemu: "x86_64",
        arch: "amd64",
        magic: b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x3e\x00",
        mask: b"\xff\xff\xff\xff\xff\xfe\xfe\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
    },
    Handler {
        name: "qemu-arm",
        qemu: "arm",
        arch: "arm",
        magic: b"\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x28\x00",
        mask: b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
    },
    Handler {
        name: "qemu-riscv64",
        qemu: "riscv64",
        arch: "riscv64",
        magic: b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xf3\x00",
        mask: b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
    },
    Handler {
        name: "qemu-s390x",
        qemu: "s390x",
        arch: "s390x",
        magic: b"\x7fELF\x02\x02\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x16",
        mask: b"\xff\xff\xff\xff\xff\xff\xff\xfc\xff\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff",
    },
    Handler {
        name: "qemu-ppc64le",
        qemu: "ppc64le",
        arch: "ppc64le",
        magic: b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x15\x00",
        mask: b"\xff\xff\xff\xff\xff\xff\xff\xfc\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\x00",
    },
];

impl Handler {
    /// The hex digits binfmt_misc shows for the magic (the `magic` line of an entry).
    pub fn magic_hex(&self) -> String {
        hex::encode(self.magic)
    }

    /// The line written to `register`: `:name:M::magic:mask:interpreter:flags`, every byte of
    /// magic and mask escaped (a raw `:` would end the field).
    pub fn register_line(&self, interpreter: &Interpreter) -> String {
        let esc = |b: &[u8]| b.iter().map(|x| format!("\\x{x:02x}")).collect::<String>();
        format!(":{}:M::{}:{}:{}:{}", self.name, esc(self.magic), esc(self.mask), interpreter.path.display(), interpreter.flags())
    }
}

/// A qemu-user-static binary found for a handler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interpreter {
    pub path: PathBuf,
    /// Debian's `/usr/libexec/qemu-binfmt/ARCH-binfmt-P` expects the program's own argv[0]
    /// (binfmt_misc's `P` flag); the plain `qemu-ARCH-static` does not.
    pub preserve_argv0: bool,
}

impl Interpreter {
    pub fn flags(&self) -> &'static str {
        if self.preserve_argv0 {
            "PCF"
        } else {
            "CF"
        }
    }
}

/// The static interpreter for `qemu` under `root` (`/` on a host): `/usr/bin/qemu-ARCH-static`,
/// else Debian's `/usr/libexec/qemu-binfmt/ARCH-binfmt-P`. A dynamically linked qemu would not
/// start inside a container's root, so it does not count.
pub fn find_interpreter(root: &Path, qemu: &str) -> Option<Interpreter> {
    let plain = root.join(format!("usr/bin/qemu-{qemu}-static"));
    if plain.is_file() {
        return Some(Interpreter { path: Path::new("/").join(plain.strip_prefix(root).ok()?), preserve_argv0: false });
    }
    let wrapper = root.join(format!("usr/libexec/qemu-binfmt/{qemu}-binfmt-P"));
    if wrapper.is_file() {
        return Some(Interpreter { path: Path::new("/").join(wrapper.strip_prefix(root).ok()?), preserve_argv0: true });
    }
    None
}

/// A handler that binfmt_misc holds: its name, whether it is enabled, and its magic in hex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Existing {
    pub name: String,
    pub enabled: bool,
    pub magic: Option<String>,
}

/// Parses one entry file of binfmt_misc (`enabled`, `interpreter ...`, `magic HEX`, ...).
pub fn parse_entry(name: &str, text: &str) -> Existing {
    Existing {
        name: name.to_string(),
        enabled: text.lines().next().map(str::trim) == Some("enabled"),
        magic: text.lines().find_map(|l| l.strip_prefix("magic ")).map(|m| m.trim().to_ascii_lowercase()),
    }
}

/// What to do with one handler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The host runs the architecture itself.
    Native,
    /// binfmt_misc has it (under this name, possibly another tool's; maybe disabled): left alone.
    Present {
        name: String,
        enabled: bool,
    },
    /// No static qemu for it on this host.
    NoInterpreter,
    Register(Interpreter),
}

/// What the host has, for [`plan`].
pub struct Host<'a> {
    /// The host's architecture (OCI name).
    pub arch: &'a str,
    /// On arm64: whether the CPU runs 32-bit arm code itself.
    pub runs_arm32: bool,
    pub existing: &'a [Existing],
}

/// Decides, for each of [`HANDLERS`], whether to register it, without I/O.
pub fn plan(host: &Host, interpreter: impl Fn(&Handler) -> Option<Interpreter>) -> Vec<(&'static Handler, Step)> {
    HANDLERS
        .iter()
        .map(|h| {
            let native = h.arch == host.arch || (h.arch == "arm" && host.arch == "arm64" && host.runs_arm32);
            let same = host.existing.iter().find(|e| e.name == h.name).or_else(|| {
                let magic = h.magic_hex();
                host.existing.iter().find(|e| e.magic.as_deref() == Some(magic.as_str()))
            });
            let step = if native {
                Step::Native
            } else if let Some(e) = same {
                Step::Present { name: e.name.clone(), enabled: e.enabled }
            } else {
                match interpreter(h) {
                    Some(i) => Step::Register(i),
                    None => Step::NoInterpreter,
                }
            };
            (h, step)
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum BinfmtError {
    #[error("no qemu-user-static interpreter under /usr/bin or /usr/libexec/qemu-binfmt for {arches}: install it with `{INSTALL_QEMU}`")]
    NoQemu { arches: String },
    #[error("registering {names} with binfmt_misc needs root: run `sudo kiln agent --install-binfmt` (or `apt-get install qemu-user-static binfmt-support`, which registers them at boot)")]
    NotRoot { names: String },
    #[error("binfmt_misc is not mounted at {BINFMT_DIR} and mounting it needs root: run `sudo kiln agent --install-binfmt` (or `apt-get install qemu-user-static binfmt-support`)")]
    NotMounted,
    #[error("mounting binfmt_misc at {BINFMT_DIR}: {0} (a container must be privileged to do this)")]
    Mount(nix::Error),
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("registering {name} ({interpreter}) in {BINFMT_DIR}/register: {source}")]
    Register { name: String, interpreter: PathBuf, source: std::io::Error },
}

/// What [`install`] did.
#[derive(Debug)]
pub struct Report {
    /// Whether binfmt_misc had to be mounted first.
    pub mounted: bool,
    pub steps: Vec<(&'static Handler, Step)>,
    /// What the probe found afterwards.
    pub platforms: HostPlatforms,
}

impl std::fmt::Display for Report {
    /// Two lines: what was registered or found, then what the probe now finds emulated.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (mut registered, mut present, mut missing) = (Vec::new(), Vec::new(), Vec::new());
        for (h, step) in &self.steps {
            match step {
                Step::Native => {}
                Step::Register(i) => registered.push(format!("{} ({}, flags {})", h.name, i.path.display(), i.flags())),
                Step::Present { name, enabled } => present.push(match (name == h.name, enabled) {
                    (true, true) => h.name.to_string(),
                    (false, true) => format!("{} (as {name})", h.name),
                    (_, false) => format!("{} (as {name}, disabled)", h.name),
                }),
                Step::NoInterpreter => missing.push(h.name),
            }
        }
        let mut parts = Vec::new();
        if self.mounted {
            parts.push(format!("mounted binfmt_misc at {BINFMT_DIR}"));
        }
        if !registered.is_empty() {
            parts.push(format!("registered {}", registered.join(", ")));
        }
        if !present.is_empty() {
            parts.push(format!("already registered: {}", present.join(", ")));
        }
        if !missing.is_empty() {
            parts.push(format!("no interpreter for {} (`{INSTALL_QEMU}`)", missing.join(", ")));
        }
        writeln!(f, "binfmt_misc: {}", parts.join("; "))?;
        let emulated: Vec<String> = self.platforms.emulated.iter().map(Platform::to_string).collect();
        write!(f, "emulated platforms: {}", if emulated.is_empty() { "none".to_string() } else { emulated.join(", ") })
    }
}

/// The handlers binfmt_misc in `dir` holds.
fn existing(dir: &Path) -> Result<Vec<Existing>, BinfmtError> {
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BinfmtError::Read { path, source }
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err(dir))? {
        let entry = entry.map_err(read_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "register" || name == "status" {
            continue;
        }
        // An entry removed by someone else between the listing and the read is gone: skip it.
        match std::fs::read_to_string(entry.path()) {
            Ok(text) => out.push(parse_entry(&name, &text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(read_err(&entry.path())(e)),
        }
    }
    Ok(out)
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Mounts binfmt_misc if it is not, registers every handler [`plan`] asks for, then probes
/// (under `scratch`) which platforms this host now runs.
pub fn install(scratch: &Path) -> Result<Report, BinfmtError> {
    let dir = Path::new(BINFMT_DIR);
    let mut mounted = false;
    if !dir.join("register").exists() {
        if !is_root() {
            return Err(BinfmtError::NotMounted);
        }
        nix::mount::mount(Some("binfmt_misc"), dir, Some("binfmt_misc"), nix::mount::MsFlags::empty(), None::<&str>)
            .map_err(BinfmtError::Mount)?;
        mounted = true;
    }
    let existing = existing(dir)?;
    let host = Platform::host();
    let runs_arm32 = host.arch() == "arm64" && crate::probe::runs("arm", scratch);
    let steps = plan(&Host { arch: host.arch(), runs_arm32, existing: &existing }, |h| find_interpreter(Path::new("/"), h.qemu));
    let wanted: Vec<&'static str> = steps.iter().filter(|(_, s)| matches!(s, Step::Register(_))).map(|(h, _)| h.name).collect();
    let covered = steps.iter().any(|(_, s)| matches!(s, Step::Present { .. } | Step::Register(_)));
    if !covered {
        let arches: Vec<&str> = steps.iter().filter(|(_, s)| matches!(s, Step::NoInterpreter)).map(|(h, _)| h.arch).collect();
        return Err(BinfmtError::NoQemu { arches: arches.join(", ") });
    }
    if !wanted.is_empty() && !is_root() {
        return Err(BinfmtError::NotRoot { names: wanted.join(", ") });
    }
    let mut done = Vec::new();
    for (h, step) in steps {
        let step = match step {
            Step::Register(i) => match register(dir, h, &i) {
                Ok(()) => Step::Register(i),
                // Registered by another process since the listing: theirs stands.
                Err(BinfmtError::Register { source, .. }) if source.raw_os_error() == Some(nix::libc::EEXIST) => {
                    Step::Present { name: h.name.to_string(), enabled: true }
                }
                Err(e) => return Err(e),
            },
            other => other,
        };
        done.push((h, step));
    }
    // Probe again; a handler just registered that does not run yet is given a moment (seen on a
    // loaded host: the first probe of a fresh handler failing now and then).
    let registered: Vec<&str> = done.iter().filter(|(_, s)| matches!(s, Step::Register(_))).map(|(h, _)| h.arch).collect();
    let mut platforms = HostPlatforms::detect(scratch);
    for _ in 0..3 {
        let missing = registered.iter().any(|a| probe_arch(a).is_some_and(|p| !platforms.emulated.iter().any(|e| e.arch() == p)));
        if !missing {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        platforms = HostPlatforms::detect(scratch);
    }
    Ok(Report { mounted, steps: done, platforms })
}

/// The platform architecture the probe checks for a handler's architecture (`None`: no probe).
fn probe_arch(arch: &str) -> Option<&'static str> {
    match arch {
        "arm64" | "aarch64" => Some("arm64"),
        "riscv64" => Some("riscv64"),
        "ppc64le" => Some("ppc64le"),
        "amd64" | "x86_64" => Some("amd64"),
        _ => None,
    }
}

/// One write of the whole line: binfmt_misc parses each write(2) as one registration.
fn register(dir: &Path, h: &Handler, i: &Interpreter) -> Result<(), BinfmtError> {
    let err = |source| BinfmtError::Register { name: h.name.to_string(), interpreter: i.path.clone(), source };
    let line = h.register_line(i);
    let mut f = std::fs::OpenOptions::new().write(true).open(dir.join("register")).map_err(err)?;
    let n = f.write(line.as_bytes()).map_err(err)?;
    if n != line.len() {
        return Err(err(std::io::Error::other(format!("the kernel took {n} of {} bytes", line.len()))));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Each handler's name and what [`plan`] decided for it.
    fn summary(steps: &[(&'static Handler, Step)]) -> BTreeMap<&'static str, &'static str> {
        steps
            .iter()
            .map(|(h, s)| {
                (
                    h.name,
                    match s {
                        Step::Native => "native",
                        Step::Present { .. } => "present",
                        Step::NoInterpreter => "no interpreter",
                        Step::Register(_) => "register",
                    },
                )
            })
            .collect()
    }

    fn qemu(h: &Handler) -> Option<Interpreter> {
        Some(Interpreter { path: PathBuf::from(format!("/usr/bin/qemu-{}-static", h.qemu)), preserve_argv0: false })
    }

    fn debian(name: &str, magic: &str) -> Existing {
        Existing { name: name.into(), enabled: true, magic: Some(magic.into()) }
    }

    #[test]
    fn an_empty_amd64_host_gets_every_handler_but_its_own() {
        let steps = plan(&Host { arch: "amd64", runs_arm32: false, existing: &[] }, qemu);
        let s = summary(&steps);
        assert_eq!(s["qemu-x86_64"], "native");
        for name in ["qemu-aarch64", "qemu-arm", "qemu-riscv64", "qemu-s390x", "qemu-ppc64le"] {
            assert_eq!(s[name], "register", "{name}");
        }
    }

    #[test]
    fn existing_handlers_are_left_alone_by_name_or_by_magic() {
        let existing = [
            // binfmt-support's, as Debian registers it (its P wrapper, other flags).
            debian("qemu-aarch64", "7f454c460201010000000000000000000200b700"),
            // Another tool's name for riscv64, disabled by the operator: it stays so.
            Existing { name: "riscv64".into(), enabled: false, magic: Some("7f454c460201010000000000000000000200f300".into()) },
        ];
        let steps = plan(&Host { arch: "amd64", runs_arm32: false, existing: &existing }, qemu);
        let find = |n: &str| steps.iter().find(|(h, _)| h.name == n).map(|(_, s)| s.clone()).unwrap();
        assert_eq!(find("qemu-aarch64"), Step::Present { name: "qemu-aarch64".into(), enabled: true });
        assert_eq!(find("qemu-riscv64"), Step::Present { name: "riscv64".into(), enabled: false });
        assert!(matches!(find("qemu-s390x"), Step::Register(_)));
    }

    #[test]
    fn an_arm64_host_registers_arm_only_when_it_cannot_run_it() {
        let without = summary(&plan(&Host { arch: "arm64", runs_arm32: false, existing: &[] }, qemu));
        let with = summary(&plan(&Host { arch: "arm64", runs_arm32: true, existing: &[] }, qemu));
        assert_eq!((without["qemu-aarch64"], without["qemu-arm"], without["qemu-x86_64"]), ("native", "register", "register"));
        assert_eq!(with["qemu-arm"], "native");
    }

    #[test]
    fn missing_interpreters_are_named() {
        let steps = plan(&Host { arch: "amd64", runs_arm32: false, existing: &[] }, |h| (h.arch == "arm64").then(|| qemu(h)).flatten());
        let s = summary(&steps);
        assert_eq!(s["qemu-aarch64"], "register");
        assert_eq!(s["qemu-s390x"], "no interpreter");
    }

    /// The magic and mask binfmt_misc shows for Debian's own registrations, read on a Debian
    /// bookworm host: kiln's table must agree, or "already registered by magic" would miss them.
    #[test]
    fn the_table_matches_debians_registrations() {
        let debian = [
            ("qemu-aarch64", "7f454c460201010000000000000000000200b700", "ffffffffffffff00fffffffffffffffffeffffff"),
            ("qemu-arm", "7f454c4601010100000000000000000002002800", "ffffffffffffff00fffffffffffffffffeffffff"),
            ("qemu-riscv64", "7f454c460201010000000000000000000200f300", "ffffffffffffff00fffffffffffffffffeffffff"),
            ("qemu-s390x", "7f454c4602020100000000000000000000020016", "fffffffffffffffcfffffffffffffffffffeffff"),
            ("qemu-ppc64le", "7f454c4602010100000000000000000002001500", "fffffffffffffffcfffffffffffffffffeffff00"),
        ];
        for (name, magic, mask) in debian {
            let h = HANDLERS.iter().find(|h| h.name == name).unwrap();
            assert_eq!((h.magic_hex(), hex::encode(h.mask)), (magic.to_string(), mask.to_string()), "{name}");
        }
    }

    #[test]
    fn the_register_line_escapes_every_byte_and_fixes_the_binary() {
        let h = &HANDLERS[0];
        let line = h.register_line(&Interpreter { path: "/usr/bin/qemu-aarch64-static".into(), preserve_argv0: false });
        assert!(line.starts_with(":qemu-aarch64:M::\\x7f\\x45\\x4c\\x46\\x02"), "{line}");
        assert!(line.ends_with(":/usr/bin/qemu-aarch64-static:CF"), "{line}");
        let fields: Vec<&str> = line.split(':').collect();
        assert_eq!(fields.len(), 8, "{line}");
        assert_eq!(fields[4].len(), 20 * 4);
        let wrapper = Interpreter { path: "/usr/libexec/qemu-binfmt/aarch64-binfmt-P".into(), preserve_argv0: true };
        assert!(h.register_line(&wrapper).ends_with(":PCF"));
    }

    #[test]
    fn entries_parse_as_the_kernel_writes_them() {
        let text = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POF\noffset 0\nmagic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n";
        assert_eq!(parse_entry("qemu-aarch64", text), debian("qemu-aarch64", "7f454c460201010000000000000000000200b700"));
        assert!(!parse_entry("x", "disabled\n").enabled);
    }

    #[test]
    fn interpreters_are_found_static_first() {
        let root = std::env::temp_dir().join(format!("kiln-binfmt-{}", std::process::id()));
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::create_dir_all(root.join("usr/libexec/qemu-binfmt")).unwrap();
        std::fs::write(root.join("usr/libexec/qemu-binfmt/riscv64-binfmt-P"), "").unwrap();
        std::fs::write(root.join("usr/libexec/qemu-binfmt/aarch64-binfmt-P"), "").unwrap();
        std::fs::write(root.join("usr/bin/qemu-aarch64-static"), "").unwrap();
        std::fs::write(root.join("usr/bin/qemu-s390x"), "").unwrap();
        let found = |q| find_interpreter(&root, q);
        assert_eq!(found("aarch64"), Some(Interpreter { path: "/usr/bin/qemu-aarch64-static".into(), preserve_argv0: false }));
        assert_eq!(found("riscv64"), Some(Interpreter { path: "/usr/libexec/qemu-binfmt/riscv64-binfmt-P".into(), preserve_argv0: true }));
        assert_eq!(found("s390x"), None, "a dynamically linked qemu does not count");
        std::fs::remove_dir_all(root).unwrap();
    }
}
