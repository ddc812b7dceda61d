//! The cluster harness: N coordinators and M agents as real `kiln` processes on loopback ports
//! chosen at run time, with kill, restart, pause and resume, and the CLI pointed at them.

use crate::Bounded;
use crate::{kiln_bin, stderr, wait_for, TempDir};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// A free loopback UDP port (QUIC), outside the ephemeral range (see [`crate::free_port`]).
pub fn free_udp_port() -> u16 {
    crate::free_port()
}

/// One `kiln` server process that can be stopped and started again with the same arguments.
/// Waits until the founding coordinator (`ROOT/c1`) has written its tokens and every member
/// (`ROOT/cN`) has its CA, then reads the admin and agent tokens. A member that failed to start
/// fails the test here, with its log, rather than a later step hanging.
pub fn founded(root: &Path, coordinators: &mut [Proc]) -> (String, String) {
    let c1 = root.join("c1");
    wait_for("the first coordinator's tokens", Duration::from_secs(60), || {
        c1.join("admin.token").exists() && c1.join("agent.token").exists()
    });
    for (i, p) in coordinators.iter_mut().enumerate() {
        let ca = root.join(format!("c{}", i + 1)).join("ca.pem");
        wait_for(&format!("coordinator {}'s CA", i + 1), Duration::from_secs(60), || {
            assert!(p.alive(), "{} exited:\n{}", p.name, p.log());
            ca.exists()
        });
    }
    let read = |f: &str| std::fs::read_to_string(c1.join(f)).expect("token").trim().to_string();
    (read("admin.token"), read("agent.token"))
}

pub struct Proc {
    pub name: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    env: Vec<(String, String)>,
    program: PathBuf,
    /// The network namespace the program runs in (`nsenter --net`, which execs it: same pid).
    netns: Option<String>,
}

impl Proc {
    /// A `kiln` process with these arguments, logging to `log`; not started yet.
    pub(crate) fn new(name: String, args: Vec<String>, log: PathBuf, env: Vec<(String, String)>) -> Proc {
        Proc { name, args, log, child: None, env, program: kiln_bin(), netns: None }
    }

    /// Another program, inside the network namespace `ns`.
    pub(crate) fn in_netns(mut self, ns: &str, program: Option<PathBuf>) -> Proc {
        self.netns = Some(ns.to_string());
        if let Some(p) = program {
            self.program = p;
        }
        self
    }

    pub(crate) fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let err = log.try_clone().expect("log file");
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg(&self.program);
                c
            }
            None => Command::new(&self.program),
        };
        cmd.args(&self.args).stdin(Stdio::null()).stdout(log).stderr(err);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("start kiln"));
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").arg(format!("-{sig}")).arg(c.id().to_string()).status();
        }
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill, then start again with the same data dir.
    pub fn restart(&mut self) {
        self.kill();
        self.start();
    }

    /// SIGSTOP: the process is cut off (no heartbeats, no answers) but keeps its state.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    pub fn resume(&self) {
        self.signal("CONT");
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Started and not exited.
    pub fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}

/// Timings short enough for tests, long enough for a loaded 2-core machine.
pub const LEASE_MS: u64 = 4_000;

pub struct Cluster {
    pub dir: TempDir,
    pub coordinators: Vec<Proc>,
    pub addrs: Vec<String>,
    pub agents: Vec<Proc>,
    pub admin_token: String,
    pub agent_token: String,
    /// With [`Cluster::start_with_metrics`]: every process's `--metrics-listen` address
    /// (`coordinator 1`, `agent a1`, ...).
    pub metrics: Vec<(String, String)>,
    with_metrics: bool,
    /// With [`Cluster::start_with_console`]: each coordinator's web console (`http://ADDR`),
    /// coordinator 1's first.
    pub consoles: Vec<String>,
}

impl Cluster {
    /// Starts `n` coordinators (ids 1..=n) and waits until the cluster has a leader and tokens.
    pub fn start(n: usize) -> Cluster {
        Self::start_with(n, 1000, 2000)
    }

    /// With the given election timeouts (ms).
    pub fn start_with(n: usize, election_min_ms: u64, election_max_ms: u64) -> Cluster {
        Self::start_inner(n, election_min_ms, election_max_ms, LEASE_MS, false, false)
    }

    /// With the given election timeouts and agent lease (ms): the scale benchmark runs with
    /// the production lease, which sets how long a large farm's polls are held.
    pub fn start_with_lease(n: usize, election_min_ms: u64, election_max_ms: u64, lease_ms: u64) -> Cluster {
        Self::start_inner(n, election_min_ms, election_max_ms, lease_ms, false, false)
    }

    /// Every coordinator, and every agent added later, serves metrics on a loopback port of its
    /// own (see [`Cluster::metrics`]).
    pub fn start_with_metrics(n: usize) -> Cluster {
        Self::start_inner(n, 1000, 2000, LEASE_MS, true, false)
    }

    /// Every coordinator serves the web console on a loopback port of its own (see
    /// [`Cluster::consoles`]).
    pub fn start_with_console(n: usize) -> Cluster {
        Self::start_inner(n, 1000, 2000, LEASE_MS, false, true)
    }

    fn start_inner(n: usize, election_min_ms: u64, election_max_ms: u64, lease_ms: u64, with_metrics: bool, with_console: bool) -> Cluster {
        let dir = TempDir::new("cluster");
        let mut metrics = Vec::new();
        let mut consoles = Vec::new();
        let addrs: Vec<String> = (0..n).map(|_| format!("127.0.0.1:{}", free_udp_port())).collect();
        let peers = addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect::<Vec<_>>().join(",");
        let mut coordinators = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let id = (i + 1).to_string();
            let data = dir.path().join(format!("c{id}"));
            let args = [
                "coordinator",
                "--id",
                &id,
                "--listen",
                addr,
                "--data-dir",
                &data.display().to_string(),
                "--peers",
                &peers,
                "--heartbeat-interval-ms",
                "200",
                "--election-timeout-min-ms",
                &election_min_ms.to_string(),
                "--election-timeout-max-ms",
                &election_max_ms.to_string(),
                "--lease-timeout-ms",
                &lease_ms.to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<String>>();
            let mut args = args;
            if with_metrics {
                let addr = format!("127.0.0.1:{}", crate::free_port());
                args.extend(["--metrics-listen".to_string(), addr.clone()]);
                metrics.push((format!("coordinator {id}"), addr));
            }
            if with_console {
                let addr = format!("127.0.0.1:{}", crate::free_port());
                args.extend(["--console-listen".to_string(), addr.clone()]);
                consoles.push(format!("http://{addr}"));
            }
            let log = dir.path().join(format!("c{id}.log"));
            let mut p = Proc::new(format!("coordinator {id}"), args, log, vec![]);
            p.start();
            coordinators.push(p);
        }
        let (admin_token, agent_token) = founded(dir.path(), &mut coordinators);
        let cluster = Cluster { dir, coordinators, addrs, agents: vec![], admin_token, agent_token, metrics, with_metrics, consoles };
        cluster.leader();
        cluster
    }

    /// Starts coordinator `id` with an empty data dir; it fetches the CA from coordinator 1
    /// with the admin token and waits to be added (`kiln coordinator add`).
    pub fn start_joining_coordinator(&mut self, id: u64) -> String {
        let addr = format!("127.0.0.1:{}", free_udp_port());
        let data = self.dir.path().join(format!("c{id}"));
        let args = [
            "coordinator",
            "--id",
            &id.to_string(),
            "--listen",
            &addr,
            "--data-dir",
            &data.display().to_string(),
            "--peers",
            &format!("{id}={addr}"),
            "--join",
            &self.addrs[0],
            "--token",
            &self.admin_token,
            "--heartbeat-interval-ms",
            "200",
            "--election-timeout-min-ms",
            "1000",
            "--election-timeout-max-ms",
            "2000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let log = self.dir.path().join(format!("c{id}.log"));
        let mut p = Proc::new(format!("coordinator {id}"), args, log, vec![]);
        p.start();
        self.coordinators.push(p);
        wait_for("the new coordinator's CA", Duration::from_secs(30), || data.join("ca.pem").exists());
        addr
    }

    /// `kiln coordinator status`: (id, voter) of every member.
    pub fn members(&self) -> Vec<(u64, bool)> {
        let out = self.kiln(&["coordinator", "status"], self.dir.path());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let id = w.next()?.parse().ok()?;
                Some((id, w.nth(1) == Some("voter")))
            })
            .collect()
    }

    /// `ADDR,ADDR,..` of every coordinator.
    pub fn hosts(&self) -> String {
        self.addrs.join(",")
    }

    /// Starts an agent; `platforms` declares native ones (empty: detected).
    pub fn add_agent(&mut self, name: &str, platforms: &[&str], slots: u32) -> usize {
        self.add_agent_with(name, platforms, slots, &[])
    }

    /// With extra `kiln agent` flags.
    pub fn add_agent_with(&mut self, name: &str, platforms: &[&str], slots: u32, extra: &[&str]) -> usize {
        let data = self.dir.path().join(name);
        let mut args: Vec<String> =
            ["agent", "--host", &self.hosts(), "--token", &self.agent_token, "--name", name, "--data-dir", &data.display().to_string()]
                .iter()
                .map(|s| s.to_string())
                .collect();
        args.extend(["--slots".to_string(), slots.to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        if !platforms.is_empty() {
            args.extend(["--platform".to_string(), platforms.join(",")]);
        }
        if self.with_metrics {
            let addr = format!("127.0.0.1:{}", crate::free_port());
            args.extend(["--metrics-listen".to_string(), addr.clone()]);
            self.metrics.push((format!("agent {name}"), addr));
        }
        let log = self.dir.path().join(format!("{name}.log"));
        let env = vec![("KILN_HOME".to_string(), self.dir.path().join(format!("{name}-home")).display().to_string())];
        let mut p = Proc::new(format!("agent {name}"), args, log, env);
        p.start();
        self.agents.push(p);
        let i = self.agents.len() - 1;
        let name = name.to_string();
        wait_for(&format!("agent {name} to be ready"), Duration::from_secs(60), || self.context_status(&name).as_deref() == Some("ready"));
        i
    }

    pub fn agent(&mut self, name: &str) -> &mut Proc {
        let label = format!("agent {name}");
        self.agents.iter_mut().find(|a| a.name == label).expect("no such agent")
    }

    /// The CLI's home (its `kiln use` choice lives there).
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("cli")
    }

    /// Runs the CLI against the farm with the admin token.
    pub fn kiln(&self, args: &[&str], cwd: &Path) -> Output {
        self.kiln_with_token(args, cwd, &self.admin_token)
    }

    pub fn kiln_with_token(&self, args: &[&str], cwd: &Path, token: &str) -> Output {
        Command::new(kiln_bin())
            .args(args)
            .env("KILN_HOME", self.home())
            .env("KILN_HOST", self.hosts())
            .env("KILN_TOKEN", token)
            .current_dir(cwd)
            .bounded()
            .expect("run kiln")
    }

    /// The leader's id, waiting for one to be elected.
    pub fn leader(&self) -> u64 {
        let mut leader = None;
        wait_for("a leader", Duration::from_secs(60), || {
            let out = self.kiln(&["coordinator", "status"], self.dir.path());
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            leader = text.split_whitespace().nth(1).and_then(|l| l.parse().ok());
            leader.is_some()
        });
        leader.unwrap_or_default()
    }

    /// `kiln context ls --format json`, parsed.
    pub fn contexts(&self) -> Vec<serde_json::Value> {
        let out = self.kiln(&["context", "ls", "--format", "json"], self.dir.path());
        if !out.status.success() {
            return vec![];
        }
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    pub fn context_status(&self, name: &str) -> Option<String> {
        self.contexts().iter().find(|c| c["name"] == name).and_then(|c| c["status"].as_str().map(str::to_string))
    }

    /// Whether `kiln inspect` lists a running slice of `platform` on `agent`.
    pub fn slice_running(&self, platform: &str, agent: &str) -> bool {
        let out = self.kiln(&["inspect", "default"], self.dir.path());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.contains(platform) && l.contains(" running ") && l.contains(&format!("on {agent} ")))
    }

    /// Every process log, for assertion messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for p in self.coordinators.iter().chain(&self.agents) {
            out.push_str(&format!(
                "--- {}\n{}\n",
                p.name,
                p.log().lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        out
    }

    /// The output of a CLI call that must have succeeded.
    pub fn ok(&self, out: Output) -> Output {
        assert!(out.status.success(), "command failed:\n{}\nlogs:\n{}", stderr(&out), self.logs());
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.agents.clear();
        self.coordinators.clear();
        // An agent killed mid-step leaves its overlay mounted; unmount before the dir goes.
        let root = self.dir.path().display().to_string();
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let mut points: Vec<&str> = mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).filter(|m| m.starts_with(&root)).collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for m in points {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}
