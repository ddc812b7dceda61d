//! Network namespaces for the chaos tests: one namespace per node, each with a veth pair to a
//! bridge that lives in a namespace of its own, and private addresses (10.213.0.0/24) that exist
//! only inside those namespaces. Partitions are iptables rules inside a node's namespace.
//!
//! Link degradation ([`Net::degrade`]) is `tc netem` where the kernel has it. Where it does not
//! (no `sch_netem`), the loss is iptables' `statistic` match and the delay is done in this test
//! process: a rule sends each node's packets out of `eth0` to an NFQUEUE, and a
//! [`Delayer`](crate::nfqueue::Delayer) thread bound to it in that namespace accepts each one
//! after the delay ([`Degraded::NfQueue`]). Everything is deleted on drop.
//!
//! Every namespace name carries this process's pid and a sequence number, so test binaries
//! running at once never share a namespace; the address range is reused by every [`Net`]
//! because each has its own bridge: two nets never share a link.

use crate::nfqueue::{self, Delayer};
use crate::Bounded;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// The /24 every net uses inside its own namespaces.
const SUBNET: &str = "10.213.0";

/// The chain that holds partition rules (jumped to from INPUT and OUTPUT).
const CUT: &str = "KILN_CUT";
/// The chain that holds, when netem is missing, random loss and then the rule that sends what
/// was not lost to the delayer (jumped to from OUTPUT).
const LOSS: &str = "KILN_LOSS";
/// The NFQUEUE of every node's delayer (queues are per namespace).
const QUEUE: u16 = 213;

/// One node: its name in the test, its namespace and its address.
#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub ns: String,
    pub ip: String,
}

/// What [`Net::degrade`] could apply with this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Degraded {
    /// `tc netem`: the delay and the loss.
    Netem,
    /// The kernel has no `sch_netem`: the loss by iptables' `statistic` match, the delay by a
    /// userspace NFQUEUE delayer in this test process ([`crate::nfqueue`]), one thread per
    /// node, which holds every packet the node sends out of `eth0`.
    NfQueue,
    /// Neither netem nor a delayer (none was asked for, with a delay of 0, or it could not
    /// start): the loss only, no delay.
    LossOnly,
}

/// A bridge namespace and the nodes attached to it.
pub struct Net {
    bridge: String,
    nodes: Vec<Node>,
    /// Services every node reaches at `127.0.0.1:PORT` ([`Net::publish`]): (address, port).
    published: Vec<(String, u16)>,
    /// The running delayers of [`Degraded::NfQueue`], one per node.
    delayers: Mutex<Vec<Delayer>>,
}

/// Moves the calling thread, and only it (`setns(2)` with `CLONE_NEWNET`), into namespace `ns`:
/// the sockets it opens from then on are that namespace's.
pub fn enter(ns: &str) -> std::io::Result<()> {
    let file = std::fs::File::open(format!("/run/netns/{ns}"))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
    Ok(())
}

/// Runs `ip netns exec NS ARGS..`, failing the test with its stderr.
fn in_ns(ns: &str, args: &[&str]) {
    let out = Command::new("ip").args(["netns", "exec", ns]).args(args).bounded().expect("run ip netns exec");
    assert!(out.status.success(), "in {ns}: {args:?}: {}", crate::stderr(&out));
}

/// The same, returning whether it worked (probes and best-effort cleanup).
fn try_in_ns(ns: &str, args: &[&str]) -> bool {
    Command::new("ip").args(["netns", "exec", ns]).args(args).bounded().map(|o| o.status.success()).unwrap_or(false)
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).bounded().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {}", crate::stderr(&out));
}

impl Net {
    /// A new bridge namespace with its bridge up.
    pub fn new() -> Net {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let bridge = format!("kiln-{}-{seq}-br", std::process::id());
        // A namespace left by an earlier run of the same pid (pids are reused) goes first.
        let _ = Command::new("ip").args(["netns", "del", &bridge]).bounded();
        ip(&["netns", "add", &bridge]);
        let net = Net { bridge, nodes: vec![], published: vec![], delayers: Mutex::new(vec![]) };
        in_ns(&net.bridge, &["ip", "link", "set", "lo", "up"]);
        in_ns(&net.bridge, &["ip", "link", "add", "br0", "type", "bridge"]);
        in_ns(&net.bridge, &["ip", "link", "set", "br0", "up"]);
        net
    }

    /// Adds a node: its namespace, `eth0` (veth to the bridge) with the next address, loopback
    /// up, and the (empty) partition chain in place.
    pub fn add(&mut self, name: &str) -> Node {
        let n = self.nodes.len() + 1;
        assert!(n < 250, "a net holds at most 249 nodes");
        let ns = format!("{}-{n}", self.bridge.trim_end_matches("-br"));
        let _ = Command::new("ip").args(["netns", "del", &ns]).bounded();
        ip(&["netns", "add", &ns]);
        let node = Node { name: name.to_string(), ns: ns.clone(), ip: format!("{SUBNET}.{n}") };
        self.nodes.push(node.clone());
        let port = format!("v{n}");
        in_ns(&self.bridge, &["ip", "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
        in_ns(&self.bridge, &["ip", "link", "set", &port, "master", "br0"]);
        in_ns(&self.bridge, &["ip", "link", "set", &port, "up"]);
        in_ns(&ns, &["ip", "link", "set", "lo", "up"]);
        in_ns(&ns, &["ip", "addr", "add", &format!("{}/24", node.ip), "dev", "eth0"]);
        in_ns(&ns, &["ip", "link", "set", "eth0", "up"]);
        for chain in [CUT, LOSS] {
            in_ns(&ns, &["iptables", "-N", chain]);
        }
        in_ns(&ns, &["iptables", "-A", "INPUT", "-j", CUT]);
        in_ns(&ns, &["iptables", "-A", "OUTPUT", "-j", CUT]);
        in_ns(&ns, &["iptables", "-A", "OUTPUT", "-j", LOSS]);
        // Loopback traffic may be routed out (to be NATed to a published service).
        in_ns(&ns, &["sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1"]);
        in_ns(&ns, &["iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "127.0.0.0/8", "-o", "eth0", "-j", "MASQUERADE"]);
        for (ip, port) in self.published.clone() {
            Self::forward(&ns, &ip, port);
        }
        node
    }

    /// Every node, present and future, reaches `name`'s `PORT` at `127.0.0.1:PORT` (a DNAT in
    /// each namespace; the packets still cross the links, partitions and loss included). A
    /// registry published so is a loopback registry to kiln, spoken to over plain HTTP.
    pub fn publish(&mut self, name: &str, port: u16) {
        let ip = self.node(name).ip.clone();
        for n in &self.nodes {
            if n.name != name {
                Self::forward(&n.ns, &ip, port);
            }
        }
        self.published.push((ip, port));
    }

    fn forward(ns: &str, ip: &str, port: u16) {
        let to = format!("{ip}:{port}");
        let port = port.to_string();
        in_ns(
            ns,
            &[
                "iptables",
                "-t",
                "nat",
                "-A",
                "OUTPUT",
                "-d",
                "127.0.0.1",
                "-p",
                "tcp",
                "--dport",
                &port,
                "-j",
                "DNAT",
                "--to-destination",
                &to,
            ],
        );
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name == name).unwrap_or_else(|| panic!("no node {name:?} in this net"))
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// A command that runs inside `name`'s network namespace. `nsenter --net` execs the
    /// program (the child's pid is the program's) and, unlike `ip netns exec`, leaves the mount
    /// namespace alone: runc needs the host's cgroup mounts under /sys.
    pub fn command(&self, name: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.node(name).ns)).arg(program);
        cmd
    }

    /// `node` and every node of `from` no longer hear each other (both directions).
    pub fn cut(&self, node: &str, from: &[&str]) {
        let ns = &self.node(node).ns;
        for peer in from {
            let peer = &self.node(peer).ip;
            in_ns(ns, &["iptables", "-A", CUT, "-s", peer, "-j", "DROP"]);
            in_ns(ns, &["iptables", "-A", CUT, "-d", peer, "-j", "DROP"]);
        }
    }

    /// One direction only: `node` hears nothing from `from`, while what it sends still arrives.
    pub fn cut_inbound(&self, node: &str, from: &[&str]) {
        let ns = &self.node(node).ns;
        for peer in from {
            in_ns(ns, &["iptables", "-A", CUT, "-s", &self.node(peer).ip, "-j", "DROP"]);
        }
    }

    /// Every partition rule of every node goes.
    pub fn heal(&self) {
        for n in &self.nodes {
            in_ns(&n.ns, &["iptables", "-F", CUT]);
        }
    }

    /// `delay_ms` and `loss_percent` on every link (each node's egress, so each direction of a
    /// link has them once), in place of any earlier degradation; nodes added later have none.
    /// Returns what this kernel could apply.
    pub fn degrade(&self, delay_ms: u32, loss_percent: u32) -> Degraded {
        self.restore();
        let delay = format!("{delay_ms}ms");
        let loss = format!("{loss_percent}%");
        let netem =
            |n: &Node| try_in_ns(&n.ns, &["tc", "qdisc", "replace", "dev", "eth0", "root", "netem", "delay", &delay, "loss", &loss]);
        if self.nodes.iter().all(netem) {
            return Degraded::Netem;
        }
        // Some may have taken it: none keeps it.
        for n in &self.nodes {
            let _ = try_in_ns(&n.ns, &["tc", "qdisc", "del", "dev", "eth0", "root"]);
        }
        if loss_percent > 0 {
            let p = format!("{:.4}", f64::from(loss_percent) / 100.0);
            for n in &self.nodes {
                in_ns(
                    &n.ns,
                    &["iptables", "-A", LOSS, "-o", "eth0", "-m", "statistic", "--mode", "random", "--probability", &p, "-j", "DROP"],
                );
            }
        }
        if delay_ms == 0 {
            return Degraded::LossOnly;
        }
        match self.delay(Duration::from_millis(delay_ms.into())) {
            Ok(()) => Degraded::NfQueue,
            Err(e) => {
                // The rules already in place pass everything once their delayers are gone
                // (`--queue-bypass`); `restore` removes them.
                eprintln!("no delay on this net's links (no netem, and the NFQUEUE delayer did not start): {e}");
                let _ = nfqueue::stop_all(std::mem::take(&mut *self.delayers()));
                Degraded::LossOnly
            }
        }
    }

    /// A delayer for each node, then the rule that feeds it (after the loss rule, so a lost
    /// packet is not held first). `--queue-bypass`: while no delayer is bound, packets pass.
    fn delay(&self, delay: Duration) -> std::io::Result<()> {
        let queue = QUEUE.to_string();
        for n in &self.nodes {
            let delayer = Delayer::start(&n.ns, QUEUE, delay)?;
            self.delayers().push(delayer);
            if !try_in_ns(&n.ns, &["iptables", "-A", LOSS, "-o", "eth0", "-j", "NFQUEUE", "--queue-num", &queue, "--queue-bypass"]) {
                return Err(std::io::Error::other(format!("iptables -j NFQUEUE in {}", n.ns)));
            }
        }
        Ok(())
    }

    fn delayers(&self) -> MutexGuard<'_, Vec<Delayer>> {
        self.delayers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Links are whole again. The rules go first, so nothing more is held; then the delayers
    /// stop, accepting what they still hold.
    pub fn restore(&self) {
        for n in &self.nodes {
            let _ = try_in_ns(&n.ns, &["tc", "qdisc", "del", "dev", "eth0", "root"]);
            in_ns(&n.ns, &["iptables", "-F", LOSS]);
        }
        let delayers = std::mem::take(&mut *self.delayers());
        if delayers.is_empty() {
            return;
        }
        match nfqueue::stop_all(delayers) {
            Ok(held) => eprintln!(
                "links restored: {} packets delayed (released at most {:?} late), {} still held were let go",
                held.delayed, held.late, held.flushed
            ),
            Err(e) => panic!("stopping the link delayers: {e}"),
        }
    }
}

impl Default for Net {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Net {
    /// Deletes every namespace (the veths go with them). Processes inside are their owners'
    /// to kill, by pid, before this runs.
    fn drop(&mut self) {
        // A delayer's socket would keep its namespace alive: they stop first, rules gone.
        let delayers = std::mem::take(&mut *self.delayers());
        if !delayers.is_empty() {
            for n in &self.nodes {
                let _ = try_in_ns(&n.ns, &["iptables", "-F", LOSS]);
            }
            let _ = nfqueue::stop_all(delayers);
        }
        for n in &self.nodes {
            let _ = Command::new("ip").args(["netns", "del", &n.ns]).bounded();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.bridge]).bounded();
    }
}
