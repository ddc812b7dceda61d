//! kiln-tests: fixtures for the end-to-end tests in `tests/tests/`.
//!
//! - [`kiln_bin`]: the `kiln` binary of this build;
//! - [`Registry`]: a real `docker-registry` on a free loopback port (optionally with htpasswd auth),
//!   stopped when dropped;
//! - [`busybox`]: busybox-static for amd64 and arm64 from Debian's packages;
//! - [`base_image`]: those built by kiln into a two-platform image and pushed to a registry;
//! - [`debian_tar`]: a Debian bookworm minbase root (mmdebstrap, as scripts/compare.py makes
//!   it, sharing its cache); [`agent_debs`]: runc and qemu-user-static as .deb files;
//! - [`wait_for`]: polling with a deadline instead of sleeping;
//! - [`Bounded`]: `Command::output` with a deadline, so a hung command fails its test instead
//!   of the whole suite;
//! - [`cluster::Cluster`]: coordinators and agents as real processes, with fault injection (and
//!   `--metrics-listen` on each with [`cluster::Cluster::start_with_metrics`]);
//! - [`netns::Net`] and [`netcluster::NetCluster`]: the same farm with every process in a
//!   network namespace of its own, partitions and lossy links (the chaos tests), the links'
//!   delay by [`nfqueue::Delayer`] where the kernel has no netem;
//! - [`linearizable`]: a linearizability checker for histories of builder/context operations;
//! - [`prometheus::Prometheus`]: a real Prometheus scraping them, queried with PromQL;
//! - [`browser::Browser`]: headless Chromium driven over the DevTools protocol (the web
//!   console's tests; `--console-listen` on each coordinator with
//!   [`cluster::Cluster::start_with_console`]).

pub mod browser;
pub mod cluster;
pub mod linearizable;
pub mod netcluster;
pub mod netns;
pub mod nfqueue;
pub mod prometheus;
pub mod target;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The repository root (the workspace directory).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_default()
}

/// The `kiln` binary of this build profile. `make test` builds it before the tests run; a
/// test binary lives in `target/<profile>/deps/`, so the binary is two levels up.
pub fn kiln_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe.parent().and_then(|d| d.parent()).map(PathBuf::from).unwrap_or_default();
    let bin = profile_dir.join("kiln");
    assert!(bin.exists(), "{} is missing: run `cargo build --bin kiln` first (make test does)", bin.display());
    bin
}

/// Where fixtures are cached between test runs.
pub fn fixtures_dir() -> PathBuf {
    repo_root().join("target/kiln-fixtures")
}

/// Polls `cond` until it holds or `timeout` passes.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long one command of a test may run (`KILN_TEST_COMMAND_SECS`, default 300).
pub fn command_deadline() -> Duration {
    let secs = std::env::var("KILN_TEST_COMMAND_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    Duration::from_secs(secs)
}

/// `Command::output` with a deadline: a command still running after [`command_deadline`] is
/// killed and the test fails with what it printed so far.
pub trait Bounded {
    fn bounded(&mut self) -> std::io::Result<Output>;
}

impl Bounded for Command {
    fn bounded(&mut self) -> std::io::Result<Output> {
        use std::io::Read;
        let deadline = command_deadline();
        let mut child = self.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_end(&mut buf);
                }
                buf
            })
        };
        let out = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
        let err = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if start.elapsed() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = err.join().unwrap_or_default();
                panic!(
                    "{:?} did not finish within {deadline:?}; it printed:\n{}",
                    self.get_args().collect::<Vec<_>>(),
                    String::from_utf8_lossy(&stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Ok(Output { status, stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() })
    }
}

/// A free loopback port (bound and released; the registry takes it right after).
/// Ports come from 20000-31999, below Linux's ephemeral range (32768-60999): a port the kernel
/// hands to some client socket between our check and the server's bind cannot collide with it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = (std::process::id() * 7919) % 12_000;
    for _ in 0..12_000 {
        let port = (20_000 + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000) as u16;
        let tcp = TcpListener::bind(("127.0.0.1", port)).is_ok();
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok();
        if tcp && udp {
            return port;
        }
    }
    panic!("no free loopback port in 20000-31999")
}

/// A scratch directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("kiln-test-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn write(&self, rel: &str, text: &str) {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }
}

impl Drop for TempDir {
    /// Removed, unless `KILN_TEST_KEEP` is set (to read a failed run's logs and state).
    fn drop(&mut self) {
        if std::env::var_os("KILN_TEST_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A `docker-registry` on a free loopback port.
pub struct Registry {
    child: Child,
    pub addr: String,
    _dir: TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        Self::start_inner(None)
    }

    /// Where the registry keeps what was pushed.
    pub fn dir(&self) -> PathBuf {
        self._dir.0.clone()
    }

    /// With basic authentication (htpasswd, bcrypt) for `user:password`.
    pub fn start_with_auth(user: &str, password: &str) -> Registry {
        Self::start_inner(Some((user, password)))
    }

    fn start_inner(auth: Option<(&str, &str)>) -> Registry {
        let dir = TempDir::new("registry");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.0.join("data").display()
        );
        if let Some((u, p)) = auth {
            let out = Command::new("htpasswd").args(["-Bbn", u, p]).bounded().expect("htpasswd (apt-get install apache2-utils)");
            std::fs::write(dir.0.join("htpasswd"), &out.stdout).expect("write htpasswd");
            config.push_str(&format!("auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n", dir.0.join("htpasswd").display()));
        }
        std::fs::write(dir.0.join("config.yml"), config).expect("registry config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.0.join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (apt-get install docker-registry)");
        let reg = Registry { child, addr, _dir: dir };
        wait_for("the registry to listen", Duration::from_secs(20), || std::net::TcpStream::connect(&reg.addr).is_ok());
        reg
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// busybox-static for amd64 and arm64 (`busybox-amd64`, `busybox-arm64` in the returned
/// directory), downloaded from Debian's packages once and cached.
pub fn busybox() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = fixtures_dir().join("busybox");
        let _ = std::fs::create_dir_all(&dir);
        let lock = dir.join(".lock");
        // Several test binaries may run at once: take a crude lock around the download.
        wait_for("the busybox download lock", Duration::from_secs(300), || {
            std::fs::create_dir(&lock).is_ok() || dir.join("busybox-arm64").exists()
        });
        if !dir.join("busybox-arm64").exists() || !dir.join("busybox-amd64").exists() {
            let status = Command::new("bash")
                .arg(repo_root().join("scripts/fetch-busybox.sh"))
                .arg(&dir)
                .status()
                .expect("run scripts/fetch-busybox.sh");
            assert!(status.success(), "fetching busybox-static failed");
        }
        let _ = std::fs::remove_dir(&lock);
        dir
    })
    .clone()
}

/// Makes the fixture `name` under `dir` with `make` once, across test binaries running at once
/// (a crude lock directory, as [`busybox`] takes); `make` must write it under a temporary name
/// and rename it into place.
fn cached(dir: &Path, name: &str, make: impl FnOnce()) -> PathBuf {
    let _ = std::fs::create_dir_all(dir);
    let out = dir.join(name);
    let lock = dir.join(format!(".{name}.lock"));
    wait_for(&format!("the lock of fixture {name}"), Duration::from_secs(2400), || out.exists() || std::fs::create_dir(&lock).is_ok());
    if !out.exists() {
        make();
    }
    let _ = std::fs::remove_dir(&lock);
    assert!(out.exists(), "fixture {} was not made", out.display());
    out
}

/// A merged-/usr Debian bookworm minbase root filesystem for `arch` as a tar, made once by
/// mmdebstrap in the cache scripts/compare.py uses (`debian/debian-ARCH.tar`).
pub fn debian_tar(arch: &str) -> PathBuf {
    let dir = fixtures_dir().join("debian");
    cached(&dir, &format!("debian-{arch}.tar"), || {
        let tmp = dir.join(format!("debian-{arch}.tmp.tar"));
        let status = Command::new("mmdebstrap")
            .args(["--variant=minbase", "--format=tar", &format!("--architectures={arch}"), "bookworm"])
            .arg(&tmp)
            .arg("http://deb.debian.org/debian")
            .stdout(Stdio::null())
            .status()
            .expect("mmdebstrap (apt-get install mmdebstrap)");
        assert!(status.success(), "mmdebstrap {arch} failed");
        std::fs::rename(&tmp, dir.join(format!("debian-{arch}.tar"))).expect("rename the Debian tar");
    })
}

/// Debian bookworm's runc and qemu-user-static packages for `arch` (a directory of .deb
/// files, downloaded once by scripts/fetch-agent-debs.sh).
pub fn agent_debs(arch: &str) -> PathBuf {
    let dir = fixtures_dir().join("debs");
    cached(&dir, arch, || {
        let tmp = dir.join(format!("{arch}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        let status = Command::new("bash")
            .arg(repo_root().join("scripts/fetch-agent-debs.sh"))
            .arg(&tmp)
            .arg(arch)
            .status()
            .expect("run scripts/fetch-agent-debs.sh");
        assert!(status.success(), "fetching runc and qemu-user-static for {arch} failed");
        std::fs::rename(&tmp, dir.join(arch)).expect("rename the .deb directory");
    })
}

/// What a command wrote to standard error.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// What a command wrote to standard output.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The output of a command that must have succeeded (its stderr is shown if not).
pub fn ok(o: Output) -> Output {
    assert!(o.status.success(), "command failed:\n{}", stderr(&o));
    o
}

/// Runs kiln with `KILN_HOME` set.
pub fn kiln(home: &Path, args: &[&str], cwd: &Path) -> Output {
    Command::new(kiln_bin()).args(args).env("KILN_HOME", home).current_dir(cwd).bounded().expect("run kiln")
}

/// Builds the two-platform busybox base image with kiln and pushes it to `registry`;
/// returns its reference.
pub fn base_image(registry: &Registry, home: &Path) -> String {
    let ctx = TempDir::new("base");
    let bb = busybox();
    for arch in ["amd64", "arm64"] {
        std::fs::copy(bb.join(format!("busybox-{arch}")), ctx.0.join(format!("busybox-{arch}"))).expect("copy busybox");
    }
    ctx.write("Dockerfile", BASE_DOCKERFILE);
    let reference = format!("{}/base/busybox:1", registry.addr);
    let out =
        kiln(home, &["build", "--progress", "plain", "--platform", "linux/amd64,linux/arm64", "-t", &reference, "--push", "."], ctx.path());
    assert!(out.status.success(), "building the base image failed:\n{}", String::from_utf8_lossy(&out.stderr));
    reference
}

/// The base image: busybox-static with its applet links, for each platform.
pub const BASE_DOCKERFILE: &str = "FROM scratch\nARG TARGETARCH\nCOPY busybox-${TARGETARCH} /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nCMD [\"sh\"]\n";

/// A process a test started, stopped by its PID when dropped.
pub struct Started(pub Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `cmd` (bounded) and fails the test with its standard error when it fails.
pub fn run_ok(cmd: &mut Command) {
    let out = cmd.bounded().expect("run");
    assert!(out.status.success(), "{cmd:?}: {}", stderr(&out));
}
