//! A farm whose every process has a network namespace of its own ([`crate::netns`]): the
//! coordinators, the agents, a registry, and the client the test's CLI runs in. Partitions and
//! link faults are then real packet loss between real processes, while the rest of the machine
//! never sees a packet of it.
//!
//! Each node has its own address, so every process listens on a fixed port of it: no two
//! processes share an address, and nothing outside the test's namespaces is bound.

use crate::cluster::{Proc, LEASE_MS};
use crate::netns::Net;
use crate::{kiln_bin, stderr, stdout, wait_for, Bounded, TempDir};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const COORDINATOR_PORT: u16 = 7400;
const AGENT_PORT: u16 = 7500;
const REGISTRY_PORT: u16 = 5000;

/// Raft's heartbeat interval. openraft gives an AppendEntries one heartbeat interval to be
/// answered, so it must exceed the round trip of a degraded link (the chaos suite's 200 ms each
/// way is 400 ms, more after a QUIC retransmission): at 200 ms no entry could commit there.
const HEARTBEAT_MS: u64 = 1_000;
/// Election timeouts: a few heartbeats, so one lost does not start an election, and no more
/// than [`LEASE_MS`] (a coordinator refuses a lease shorter than a failover).
const ELECTION_TIMEOUT_MS: (u64, u64) = (2_500, LEASE_MS);

/// The name of the namespace the CLI runs in.
pub const CLIENT: &str = "client";

pub struct NetCluster {
    pub coordinators: Vec<Proc>,
    pub agents: Vec<Proc>,
    registry: Proc,
    /// `127.0.0.1:PORT`: where every node reaches the registry ([`Net::publish`]; kiln speaks
    /// plain HTTP to a loopback registry, and its agents know no other insecure registry).
    pub registry_addr: String,
    /// Coordinator `i + 1` listens on `addrs[i]`.
    pub addrs: Vec<String>,
    pub admin_token: String,
    pub agent_token: String,
    /// tmpfs mounts made by [`NetCluster::start_with_small_disk`], unmounted on drop.
    tmpfs: Vec<PathBuf>,
    pub net: Net,
    pub dir: TempDir,
}

impl NetCluster {
    /// `n` coordinators (nodes `c1`..), a registry and a client namespace; waits for a leader.
    pub fn start(n: usize) -> NetCluster {
        Self::start_inner(n, None)
    }

    /// With coordinator `id`'s data dir on a tmpfs of `mb` MiB (to fill it).
    pub fn start_with_small_disk(n: usize, id: usize, mb: u64) -> NetCluster {
        Self::start_inner(n, Some((id, mb)))
    }

    fn start_inner(n: usize, small: Option<(usize, u64)>) -> NetCluster {
        let dir = TempDir::new("netfarm");
        let mut net = Net::new();
        let nodes: Vec<_> = (1..=n).map(|i| net.add(&format!("c{i}"))).collect();
        let reg = net.add("registry");
        net.add(CLIENT);
        let addrs: Vec<String> = nodes.iter().map(|n| format!("{}:{COORDINATOR_PORT}", n.ip)).collect();
        let peers = addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect::<Vec<_>>().join(",");

        net.publish("registry", REGISTRY_PORT);
        let registry_addr = format!("127.0.0.1:{REGISTRY_PORT}");
        let rdir = dir.path().join("registry");
        std::fs::create_dir_all(&rdir).expect("registry dir");
        let config = rdir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {}:{REGISTRY_PORT}\n",
                rdir.join("data").display(),
                reg.ip
            ),
        )
        .expect("registry config");
        let mut registry = Proc::new("registry".into(), vec!["serve".into(), config.display().to_string()], rdir.join("log"), vec![])
            .in_netns(&reg.ns, Some(PathBuf::from("docker-registry")));
        registry.start();

        let mut tmpfs = Vec::new();
        let mut coordinators = Vec::new();
        for (i, (node, addr)) in nodes.iter().zip(&addrs).enumerate() {
            let id = (i + 1).to_string();
            let data = dir.path().join(format!("c{id}"));
            if let Some((_, mb)) = small.filter(|(s, _)| *s == i + 1) {
                std::fs::create_dir_all(&data).expect("data dir");
                let out = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"]).arg(&data).bounded();
                assert!(out.as_ref().is_ok_and(|o| o.status.success()), "mounting a tmpfs on {}: {out:?}", data.display());
                tmpfs.push(data.clone());
            }
            let args: Vec<String> = [
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
                &HEARTBEAT_MS.to_string(),
                "--election-timeout-min-ms",
                &ELECTION_TIMEOUT_MS.0.to_string(),
                "--election-timeout-max-ms",
                &ELECTION_TIMEOUT_MS.1.to_string(),
                "--lease-timeout-ms",
                &LEASE_MS.to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let mut p =
                Proc::new(format!("coordinator {id}"), args, dir.path().join(format!("c{id}.log")), vec![]).in_netns(&node.ns, None);
            p.start();
            coordinators.push(p);
        }
        let (admin_token, agent_token) = crate::cluster::founded(dir.path(), &mut coordinators);
        let c = NetCluster { coordinators, agents: vec![], registry, registry_addr, addrs, admin_token, agent_token, tmpfs, net, dir };
        c.leader();
        c
    }

    /// `ADDR,ADDR,..` of every coordinator.
    pub fn hosts(&self) -> String {
        self.addrs.join(",")
    }

    /// Starts agent `name` in a namespace of its own, listening for peers on its address;
    /// waits until it is ready.
    pub fn add_agent(&mut self, name: &str, platforms: &[&str], slots: u32) {
        let node = self.net.add(name);
        let data = self.dir.path().join(name);
        let mut args: Vec<String> = [
            "agent",
            "--host",
            &self.hosts(),
            "--token",
            &self.agent_token,
            "--name",
            name,
            "--data-dir",
            &data.display().to_string(),
            "--listen",
            &format!("{}:{AGENT_PORT}", node.ip),
            "--slots",
            &slots.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if !platforms.is_empty() {
            args.extend(["--platform".to_string(), platforms.join(",")]);
        }
        let env = vec![("KILN_HOME".to_string(), self.dir.path().join(format!("{name}-home")).display().to_string())];
        let mut p = Proc::new(format!("agent {name}"), args, self.dir.path().join(format!("{name}.log")), env).in_netns(&node.ns, None);
        p.start();
        self.agents.push(p);
        wait_for(&format!("agent {name} to be ready"), Duration::from_secs(60), || self.context_status(name).as_deref() == Some("ready"));
    }

    pub fn agent(&mut self, name: &str) -> &mut Proc {
        let label = format!("agent {name}");
        self.agents.iter_mut().find(|a| a.name == label).expect("no such agent")
    }

    /// The data dir of a node (`c1`, `a1`, ...).
    pub fn data_dir(&self, node: &str) -> PathBuf {
        self.dir.path().join(node)
    }

    /// The CLI's home.
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("cli")
    }

    /// A CLI command in the client namespace against `hosts`, with the admin token.
    pub fn command_at(&self, hosts: &str, args: &[&str], cwd: &Path) -> Command {
        self.cli().command_at(hosts, args, cwd)
    }

    /// What a client needs to run the CLI, apart from the farm (for client threads while the
    /// test kills and restarts the farm's processes).
    pub fn cli(&self) -> Cli {
        Cli { ns: self.net.node(CLIENT).ns.clone(), hosts: self.hosts(), token: self.admin_token.clone(), home: self.home() }
    }

    /// Runs the CLI against every coordinator.
    pub fn kiln(&self, args: &[&str], cwd: &Path) -> Output {
        self.kiln_at(&self.hosts(), args, cwd)
    }

    /// Runs the CLI against `hosts` only.
    pub fn kiln_at(&self, hosts: &str, args: &[&str], cwd: &Path) -> Output {
        self.command_at(hosts, args, cwd).bounded().expect("run kiln")
    }

    /// Starts the CLI in the background (a build in flight), its output piped.
    pub fn spawn(&self, args: &[&str], cwd: &Path) -> Child {
        self.command_at(&self.hosts(), args, cwd).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start kiln")
    }

    /// The leader as coordinator `id` sees it (`kiln coordinator status` is answered locally).
    pub fn leader_seen_by(&self, id: usize) -> Option<u64> {
        let out = self.kiln_at(&self.addrs[id - 1], &["coordinator", "status"], self.dir.path());
        stdout(&out).split_whitespace().nth(1).and_then(|l| l.parse().ok())
    }

    /// The last log index coordinator `id` applied, as it says itself.
    pub fn applied_seen_by(&self, id: usize) -> Option<u64> {
        let out = self.kiln_at(&self.addrs[id - 1], &["coordinator", "status"], self.dir.path());
        let text = stdout(&out);
        let mut words = text.split_whitespace();
        words.find(|w| *w == "applied:")?;
        words.next()?.parse().ok()
    }

    /// The leader's id, waiting for one to be elected.
    pub fn leader(&self) -> u64 {
        let mut leader = None;
        wait_for("a leader", Duration::from_secs(60), || {
            let out = self.kiln(&["coordinator", "status"], self.dir.path());
            leader = stdout(&out).split_whitespace().nth(1).and_then(|l| l.parse().ok());
            leader.is_some()
        });
        leader.unwrap_or_default()
    }

    /// `kiln context ls --format json`, parsed (empty when the call fails).
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

    /// The raw manifest or index of `reference` in the farm's registry, read from the client
    /// namespace (`skopeo inspect --raw`).
    pub fn registry_raw(&self, reference: &str) -> Result<serde_json::Value, String> {
        let out = self
            .net
            .command(CLIENT, "skopeo")
            .args(["inspect", "--tls-verify=false", "--raw", &format!("docker://{reference}")])
            .bounded()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(stderr(&out));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }

    /// The last lines of every process's log, for assertion messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for p in self.coordinators.iter().chain(&self.agents) {
            let log = p.log();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            out.push_str(&format!("--- {}\n{}\n", p.name, tail.into_iter().rev().collect::<Vec<_>>().join("\n")));
        }
        out
    }

    /// The output of a CLI call that must have succeeded.
    pub fn ok(&self, out: Output) -> Output {
        assert!(out.status.success(), "command failed:\n{}\nlogs:\n{}", stderr(&out), self.logs());
        out
    }
}

/// The CLI in the client namespace with the admin token.
#[derive(Clone, Debug)]
pub struct Cli {
    ns: String,
    pub hosts: String,
    token: String,
    home: PathBuf,
}

impl Cli {
    /// `kiln ARGS` against every coordinator.
    pub fn command(&self, args: &[&str], cwd: &Path) -> Command {
        self.command_at(&self.hosts, args, cwd)
    }

    pub fn command_at(&self, hosts: &str, args: &[&str], cwd: &Path) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.ns))
            .arg(kiln_bin())
            .args(args)
            .env("KILN_HOME", &self.home)
            .env("KILN_HOST", hosts)
            .env("KILN_TOKEN", &self.token)
            .current_dir(cwd)
            .stdin(Stdio::null());
        cmd
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        self.agents.clear();
        self.coordinators.clear();
        self.registry.kill();
        // Overlays of agents killed mid-step, and the small disks, go before the dir does.
        let root = self.dir.path().display().to_string();
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let mut points: Vec<&str> = mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).filter(|m| m.starts_with(&root)).collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for m in points {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        self.tmpfs.clear();
    }
}
