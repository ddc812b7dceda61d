//! The chaos suite: a farm whose every coordinator and agent has a network namespace of its
//! own ([`NetCluster`]), with builds in flight while the network and the processes fail:
//! the leader cut off from the other coordinators, an agent cut off from the coordinators but
//! not from its peer, an asymmetric partition, lossy links, a coordinator's disk full, and
//! `kill -9` loops of coordinators during Raft writes and of an agent during content-store
//! writes. After each, [`Ledger::verify`] checks what was acknowledged: every build the CLI
//! said succeeded is in `kiln history ls` with its index in the registry, each platform once;
//! every builder change acknowledged is there; no content store holds a half blob; every
//! process still answers. Concurrent clients' builder operations are recorded and checked for
//! linearizability ([`kiln_tests::linearizable`]).
//!
//! Lossy links are 200 ms of delay and 5% loss on every node's egress ([`Net::degrade`]): by
//! `tc netem` where the kernel has it, and where it does not ([`Degraded::NfQueue`]) the loss by
//! iptables and the delay by an NFQUEUE delayer in this test process, a thread per namespace
//! that holds each packet for 200 ms ([`kiln_tests::nfqueue`]). The suite prints which.
//!
//! One farm serves every scenario, one after another in one test (five processes and qemu on
//! a 2-core machine): the suite is bounded by the farm's start plus each scenario's deadline.
//!
//! [`Net::degrade`]: kiln_tests::netns::Net::degrade

use kiln_tests::cluster::LEASE_MS;
use kiln_tests::linearizable::{self, Answer, Call, History, Op, State};
use kiln_tests::netcluster::{Cli, NetCluster};
use kiln_tests::netns::Degraded;
use kiln_tests::{busybox, stderr, stdout, wait_for, TempDir, BASE_DOCKERFILE};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

const PLATFORMS: [&str; 2] = ["linux/amd64", "linux/arm64"];

/// What the farm acknowledged, to be found again after every fault.
#[derive(Default)]
struct Ledger {
    /// Pushed references of builds the CLI reported done.
    builds: Vec<String>,
    /// Builder name → its context, for every builder whose last acknowledged change made it.
    builders: BTreeMap<String, String>,
    /// Builders whose last acknowledged change removed them.
    removed: BTreeSet<String>,
}

impl Ledger {
    fn created(&mut self, name: &str, context: &str) {
        self.removed.remove(name);
        self.builders.insert(name.to_string(), context.to_string());
    }

    /// Checks every invariant against the farm as it is now.
    fn verify(&self, c: &mut NetCluster, scenario: &str) {
        // Every process still runs and answers.
        for p in c.coordinators.iter_mut().chain(c.agents.iter_mut()) {
            assert!(p.alive(), "{scenario}: {} exited:\n{}", p.name, p.log());
        }
        for (i, addr) in c.addrs.iter().enumerate() {
            wait_for(&format!("{scenario}: coordinator {} to answer `kiln ls`", i + 1), Duration::from_secs(60), || {
                c.kiln_at(addr, &["ls"], c.dir.path()).status.success()
            });
        }
        for agent in ["a1", "a2"] {
            wait_for(&format!("{scenario}: agent {agent} ready"), Duration::from_secs(60), || {
                c.context_status(agent).as_deref() == Some("ready")
            });
        }
        // Every acknowledged build is in the history and its index in the registry, each
        // platform exactly once.
        let history = stdout(&c.ok(c.kiln(&["history", "ls", "--format", "json"], c.dir.path())));
        let history: Vec<serde_json::Value> = serde_json::from_str(&history).expect("history JSON");
        for reference in &self.builds {
            let entry = history.iter().find(|b| b["tags"].as_array().is_some_and(|t| t.iter().any(|t| t == reference.as_str())));
            assert!(
                entry.is_some_and(|b| b["status"] == "completed" || b["status"] == "done"),
                "{scenario}: acknowledged build {reference} in history: {entry:?}"
            );
            assert_index(c, reference, scenario);
        }
        // Every acknowledged builder change holds, on every coordinator.
        for addr in &c.addrs {
            let builders = builders_at(c, addr).unwrap_or_else(|e| panic!("{scenario}: kiln ls at {addr}: {e}"));
            for (name, context) in &self.builders {
                assert_eq!(builders.get(name), Some(context), "{scenario}: acknowledged builder {name} at {addr}: {builders:?}");
            }
            for name in &self.removed {
                assert!(!builders.contains_key(name), "{scenario}: acknowledged removal of {name} at {addr}: {builders:?}");
            }
        }
        // No half blob under a real name in any content store.
        let mut stores: Vec<PathBuf> = ["a1", "a2"].iter().map(|a| c.data_dir(a).join("content/blobs/sha256")).collect();
        stores.extend((1..=c.addrs.len()).map(|i| c.data_dir(&format!("c{i}")).join("blobs/blobs/sha256")));
        for store in stores {
            assert_blobs_whole(&store, scenario);
        }
    }
}

/// The registry holds `reference` as an index with each of [`PLATFORMS`] exactly once.
fn assert_index(c: &NetCluster, reference: &str, scenario: &str) {
    let index = c.registry_raw(reference).unwrap_or_else(|e| panic!("{scenario}: {reference} in the registry: {e}"));
    let mut got: Vec<String> = index["manifests"]
        .as_array()
        .unwrap_or_else(|| panic!("{scenario}: {reference} is not an index: {index}"))
        .iter()
        .map(|m| format!("{}/{}", m["platform"]["os"].as_str().unwrap_or(""), m["platform"]["architecture"].as_str().unwrap_or("")))
        .filter(|p| p != "unknown/unknown")
        .collect();
    got.sort();
    assert_eq!(got, PLATFORMS, "{scenario}: each platform once in the index of {reference}: {index}");
}

/// Every file of a content store's `blobs/sha256` hashes to its name.
fn assert_blobs_whole(dir: &Path, scenario: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.contains('.') {
            continue; // a chunk table beside its blob
        }
        let bytes = std::fs::read(e.path()).unwrap_or_default();
        let digest = kiln_shared::digest::Digest::of(&bytes);
        assert_eq!(digest.hex(), name, "{scenario}: {} is a half blob ({} bytes)", e.path().display(), bytes.len());
    }
}

/// `kiln ls --format json` at one coordinator: builder → its first node's context.
fn builders_at(c: &NetCluster, addr: &str) -> Result<BTreeMap<String, String>, String> {
    let out = c.kiln_at(addr, &["ls", "--format", "json"], c.dir.path());
    if !out.status.success() {
        return Err(stderr(&out));
    }
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    Ok(list
        .iter()
        .filter_map(|b| Some((b["name"].as_str()?.to_string(), b["nodes"][0]["context"].as_str().unwrap_or("").to_string())))
        .collect())
}

/// Waits for a command with its own deadline; `Err` with what it printed when it had to be
/// killed (its outcome unknown).
fn within(mut child: Child, deadline: Duration) -> Result<Output, Output> {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().map_err(|e| panic!("waiting for kiln: {e}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    Err(child.wait_with_output().expect("kiln's output"))
}

/// A build in flight: its CLI process and the reference it pushes.
struct InFlight {
    child: Child,
    reference: String,
    _ctx: TempDir,
}

/// Starts a two-platform build `FROM base` whose RUN sleeps `secs` (so the fault lands while
/// it runs), pushing `REGISTRY/chaos/TAG:1`.
fn start_build(c: &NetCluster, base: &str, tag: &str, secs: u32) -> InFlight {
    let ctx = TempDir::new(&format!("chaos-{tag}"));
    ctx.write("Dockerfile", &format!("FROM {base}\nCOPY marker /marker\nRUN sleep {secs} && uname -m > /arch\n"));
    ctx.write("marker", &format!("{tag} {:?}\n", std::time::SystemTime::now()));
    let reference = format!("{}/chaos/{tag}:1", c.registry_addr);
    let args = ["build", "--progress", "plain", "--platform", &PLATFORMS.join(","), "-t", &reference, "--push", "."];
    let child = c.spawn(&args, ctx.path());
    InFlight { child, reference, _ctx: ctx }
}

/// Waits for a build; when it succeeded the ledger records it.
fn finish(c: &NetCluster, ledger: &mut Ledger, b: InFlight, scenario: &str) -> String {
    let out = within(b.child, Duration::from_secs(120))
        .unwrap_or_else(|o| panic!("{scenario}: build {} hung:\n{}\nlogs:\n{}", b.reference, stderr(&o), c.logs()));
    assert!(out.status.success(), "{scenario}: build {} failed:\n{}\nlogs:\n{}", b.reference, stderr(&out), c.logs());
    ledger.builds.push(b.reference);
    stderr(&out)
}

/// Whether `kiln inspect default` lists a running slice of `platform` on `agent`.
fn slice_running(c: &NetCluster, platform: &str, agent: &str) -> bool {
    let out = c.kiln(&["inspect", "default"], c.dir.path());
    stdout(&out).lines().any(|l| l.contains(platform) && l.contains(" running ") && l.contains(&format!("on {agent} ")))
}

/// The two-platform busybox base, built by the farm and pushed to its registry.
fn base(c: &NetCluster) -> String {
    let ctx = TempDir::new("chaos-base");
    for arch in ["amd64", "arm64"] {
        std::fs::copy(busybox().join(format!("busybox-{arch}")), ctx.path().join(format!("busybox-{arch}"))).expect("copy busybox");
    }
    ctx.write("Dockerfile", BASE_DOCKERFILE);
    let reference = format!("{}/base/busybox:1", c.registry_addr);
    let args = ["build", "--progress", "plain", "--platform", &PLATFORMS.join(","), "-t", &reference, "--push", "."];
    c.ok(c.kiln(&args, ctx.path()));
    reference
}

/// An acknowledged builder change through the CLI (retried until acknowledged, bounded).
fn create_builder(c: &NetCluster, ledger: &mut Ledger, name: &str, context: &str) {
    let out = c.kiln(&["create", context, "--name", name], c.dir.path());
    c.ok(out);
    ledger.created(name, context);
}

// ---- scenarios ----

/// The leader is cut off from the other coordinators (not from agents or clients) while a
/// build runs: the others elect a new leader, the build finishes, and once healed the old
/// leader follows the new one.
fn leader_partitioned(c: &mut NetCluster, ledger: &mut Ledger, base: &str) {
    let s = "leader partitioned";
    let b = start_build(c, base, "leader-cut", 4);
    wait_for(&format!("{s}: both slices running"), Duration::from_secs(90), || {
        slice_running(c, "linux/amd64", "a1") && slice_running(c, "linux/arm64", "a2")
    });
    let old = c.leader() as usize;
    let others: Vec<String> = (1..=c.addrs.len()).filter(|i| *i != old).map(|i| format!("c{i}")).collect();
    let others: Vec<&str> = others.iter().map(String::as_str).collect();
    c.net.cut(&format!("c{old}"), &others);
    let other = (1..=c.addrs.len()).find(|i| *i != old).expect("another coordinator");
    let mut new = None;
    wait_for(&format!("{s}: a new leader among the others"), Duration::from_secs(30), || {
        new = c.leader_seen_by(other).filter(|l| *l as usize != old);
        new.is_some()
    });
    // Builder changes through the majority are acknowledged during the partition.
    let majority: Vec<String> = (1..=c.addrs.len()).filter(|i| *i != old).map(|i| c.addrs[i - 1].clone()).collect();
    let out = c.kiln_at(&majority.join(","), &["create", "a1", "--name", "during-leader-cut"], c.dir.path());
    c.ok(out);
    ledger.created("during-leader-cut", "a1");
    finish(c, ledger, b, s);
    c.net.heal();
    let new = new.unwrap_or_default();
    wait_for(&format!("{s}: the old leader {old} follows {new} once healed"), Duration::from_secs(30), || {
        c.leader_seen_by(old) == Some(new)
    });
    ledger.verify(c, s);
}

/// a2 is cut off from every coordinator, not from its peer a1, while its arm64 slice runs:
/// the slice is retried on a1 (emulated), the index has arm64 once, and a2 comes back.
fn agent_partitioned(c: &mut NetCluster, ledger: &mut Ledger, base: &str) {
    let s = "agent partitioned from the coordinators";
    let b = start_build(c, base, "agent-cut", 6);
    wait_for(&format!("{s}: the arm64 slice running on a2"), Duration::from_secs(90), || slice_running(c, "linux/arm64", "a2"));
    let coordinators: Vec<String> = (1..=c.addrs.len()).map(|i| format!("c{i}")).collect();
    let coordinators: Vec<&str> = coordinators.iter().map(String::as_str).collect();
    c.net.cut("a2", &coordinators);
    wait_for(&format!("{s}: a2 declared lost"), Duration::from_millis(LEASE_MS * 6), || c.context_status("a2").as_deref() == Some("lost"));
    let log = finish(c, ledger, b, s);
    assert!(log.contains("lost with agent a2"), "{s}: the progress says the attempt moved:\n{log}");
    c.net.heal();
    ledger.verify(c, s);
}

/// Asymmetric: the leader hears nothing from the other coordinators while its own packets
/// still reach them. The farm must get a leader that can commit, and a build must finish.
fn asymmetric_partition(c: &mut NetCluster, ledger: &mut Ledger, base: &str) {
    let s = "asymmetric partition";
    let b = start_build(c, base, "asym", 3);
    let old = c.leader() as usize;
    let others: Vec<String> = (1..=c.addrs.len()).filter(|i| *i != old).map(|i| format!("c{i}")).collect();
    let others: Vec<&str> = others.iter().map(String::as_str).collect();
    c.net.cut_inbound(&format!("c{old}"), &others);
    let majority: Vec<String> = (1..=c.addrs.len()).filter(|i| *i != old).map(|i| c.addrs[i - 1].clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut acknowledged = false;
    while !acknowledged && Instant::now() < deadline {
        let child = c
            .command_at(&majority.join(","), &["create", "a2", "--name", "during-asym"], c.dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kiln create");
        match within(child, Duration::from_secs(20)) {
            Ok(o) if o.status.success() => acknowledged = true,
            Ok(o) if stderr(&o).contains("already exists") => acknowledged = true,
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    }
    assert!(acknowledged, "{s}: the majority commits a builder change within 60 s while the leader {old} hears nothing\n{}", c.logs());
    ledger.created("during-asym", "a2");
    finish(c, ledger, b, s);
    c.net.heal();
    ledger.verify(c, s);
}

/// Every link loses packets and is delayed (netem, or the NFQUEUE delayer where the kernel has
/// no netem: see [`Degraded`]): builds and builder changes still go through.
fn lossy_links(c: &mut NetCluster, ledger: &mut Ledger, base: &str) -> Degraded {
    let s = "200 ms delay and 5% loss";
    let applied = c.net.degrade(200, 5);
    let b = start_build(c, base, "lossy", 1);
    create_builder(c, ledger, "during-loss", "a1");
    finish(c, ledger, b, s);
    c.net.restore();
    ledger.verify(c, s);
    applied
}

/// A coordinator's disk fills up: the farm keeps serving; the member either keeps up or, once a
/// Raft log write fails, exits with the reason (a member whose Raft stopped must not go on
/// answering) and is restarted, as its supervisor would; once space returns it catches up.
fn disk_full(c: &mut NetCluster, ledger: &mut Ledger, base: &str) {
    let s = "a coordinator's disk full";
    let fill = c.data_dir("c3").join("fill");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&fill).expect("fill file");
        let mib = vec![0u8; 1 << 20];
        // The tmpfs is 256 MiB: bounded well past it.
        let full = (0..1024).any(|_| f.write_all(&mib).and_then(|_| f.flush()).is_err());
        assert!(full, "{s}: the tmpfs under c3 never filled");
    }
    let b = start_build(c, base, "disk-full", 1);
    let deadline = Instant::now() + Duration::from_secs(60);
    let acknowledged = loop {
        let child = c
            .command_at(&c.hosts(), &["create", "a1", "--name", "during-disk-full"], c.dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kiln create");
        match within(child, Duration::from_secs(20)) {
            Ok(o) if o.status.success() || stderr(&o).contains("already exists") => break true,
            _ if Instant::now() > deadline => break false,
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    };
    assert!(acknowledged, "{s}: the farm commits a builder change while c3's disk is full\n{}", c.logs());
    ledger.created("during-disk-full", "a1");
    finish(c, ledger, b, s);
    std::fs::remove_file(&fill).expect("free the disk");
    let leader = c.leader() as usize;
    let target = c.applied_seen_by(leader).unwrap_or(0);
    let caught_up = |c: &NetCluster, secs| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if c.applied_seen_by(3).is_some_and(|a| a >= target) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    };
    let log =
        |c: &NetCluster| c.coordinators[2].log().lines().rev().filter(|l| !l.contains("vote")).take(40).collect::<Vec<_>>().join("\n");
    // A failed Raft log write (ENOSPC) is fatal to openraft: the member exits saying so, and
    // is started again as systemd's `Restart=on-failure` would.
    if !caught_up(c, 15) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.coordinators[2].alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(!c.coordinators[2].alive(), "{s}: c3 neither caught up nor exited: its Raft stopped but it goes on answering:\n{}", log(c));
        let said = c.coordinators[2].log();
        assert!(said.contains("Raft stopped"), "{s}: c3 exited without saying why:\n{}", log(c));
        eprintln!("{s}: c3 exited once its Raft log write failed; restarting it");
        c.coordinators[2].restart();
    }
    assert!(caught_up(c, 60), "{s}: c3 catches up to index {target} once space returns; it says (newest first):\n{}", log(c));
    ledger.verify(c, s);
}

/// An agent is killed (`kill -9`) three times while its slice writes its content store (the
/// context's 16 MiB file fetched, layers written), and restarted each time. No half blob is
/// left under a real name; the build either succeeds or fails with a reason, and the next
/// build succeeds.
fn agent_kill_loop(c: &mut NetCluster, ledger: &mut Ledger, base: &str) {
    let s = "kill -9 loop of an agent during content-store writes";
    let ctx = TempDir::new("chaos-agent-kill");
    let mut big = vec![0u8; 16 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
    for b in big.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(ctx.path().join("big.bin"), &big).expect("big file");
    ctx.write("Dockerfile", &format!("FROM {base}\nCOPY big.bin /big.bin\nRUN wc -c /big.bin > /size\n"));
    let reference = format!("{}/chaos/agent-kill:1", c.registry_addr);
    let child = c.spawn(&["build", "--progress", "plain", "--platform", &PLATFORMS.join(","), "-t", &reference, "--push", "."], ctx.path());
    for round in 0..3u64 {
        // Fault timing, not synchronisation: each kill lands at a different point of the slice.
        std::thread::sleep(Duration::from_millis(600 + 500 * round));
        c.agent("a1").restart();
    }
    wait_for(&format!("{s}: a1 ready again"), Duration::from_secs(60), || c.context_status("a1").as_deref() == Some("ready"));
    let out = within(child, Duration::from_secs(120)).unwrap_or_else(|o| panic!("{s}: build hung:\n{}\n{}", stderr(&o), c.logs()));
    if out.status.success() {
        ledger.builds.push(reference);
    } else {
        eprintln!("{s}: the build failed (not acknowledged): {}", stderr(&out).lines().last().unwrap_or(""));
    }
    let b = start_build(c, base, "after-agent-kill", 1);
    finish(c, ledger, b, s);
    ledger.verify(c, s);
}

/// Runs `clients` concurrent clients doing builder operations on two names while `faults`
/// runs; returns their history (a few dozen operations, each bounded by 20 s).
fn with_clients(cli: &Cli, prefix: &str, clients: usize, ops: usize, faults: impl FnOnce()) -> Vec<Op> {
    let history = History::default();
    let names = [format!("{prefix}-x"), format!("{prefix}-y")];
    let cwd = std::env::temp_dir();
    std::thread::scope(|scope| {
        for client in 0..clients {
            let (history, names, cwd) = (&history, &names, &cwd);
            scope.spawn(move || {
                let mut x = 0x2545_f491_4f6c_dd1d_u64 ^ (client as u64 + 1).wrapping_mul(0x9e37_79b9);
                for _ in 0..ops {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let name = names[(x % 2) as usize].clone();
                    let context = if (x >> 8).is_multiple_of(2) { "a1" } else { "a2" };
                    let call = match (x >> 16) % 3 {
                        0 => Call::Create { name: name.clone(), value: context.to_string() },
                        1 => Call::Remove { name: name.clone() },
                        _ => Call::Read { name: name.clone() },
                    };
                    let op = history.invoke(client, call.clone());
                    history.complete(op, run_op(cli, &call, cwd));
                }
            });
        }
        faults();
    });
    // After the faults, every client's last word: one read of each name.
    for name in &names {
        let call = Call::Read { name: name.clone() };
        let op = history.invoke(clients, call.clone());
        history.complete(op, run_op(cli, &call, &cwd));
    }
    history.ops()
}

/// One builder operation through the CLI, and what it was answered.
fn run_op(cli: &Cli, call: &Call, cwd: &Path) -> Answer {
    let args: Vec<&str> = match call {
        Call::Create { name, value } => vec!["create", value, "--name", name],
        Call::Remove { name } => vec!["rm", name],
        Call::Read { .. } | Call::Update { .. } => vec!["ls", "--format", "json"],
    };
    let child = cli.command(&args, cwd).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("kiln");
    let Ok(out) = within(child, Duration::from_secs(20)) else { return Answer::Unknown };
    let err = stderr(&out);
    match call {
        Call::Create { .. } if out.status.success() => Answer::Done,
        Call::Create { .. } if err.contains("already exists") => Answer::Refused,
        Call::Remove { .. } if out.status.success() => Answer::Done,
        Call::Remove { name } if err.contains(&format!("no builder \"{name}\" found")) => Answer::Refused,
        Call::Read { name } if out.status.success() => {
            let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let found = list.iter().find(|b| b["name"] == name.as_str());
            Answer::Value(found.map(|b| b["nodes"][0]["context"].as_str().unwrap_or("").to_string()))
        }
        _ => Answer::Unknown,
    }
}

/// Checks a history for linearizability and takes what it settles into the ledger.
fn check_history(ops: &[Op], ledger: &mut Ledger, scenario: &str) {
    let order = linearizable::check(ops, &State::new()).unwrap_or_else(|e| {
        panic!("{scenario}: {e}\nhistory:\n{}", ops.iter().enumerate().map(|(i, o)| format!("{i}: {o:?}\n")).collect::<String>())
    });
    let mut state = State::new();
    for i in &order {
        linearizable::apply(&mut state, &ops[*i].call);
    }
    let answered = ops.iter().filter(|o| o.answer != Answer::Unknown).count();
    eprintln!("{scenario}: {} operations ({answered} answered) linearizable", ops.len());
    for op in ops {
        if let Call::Create { name, .. } | Call::Remove { name } = &op.call {
            match state.get(name) {
                Some(v) => ledger.created(name, v),
                None => {
                    ledger.builders.remove(name);
                    ledger.removed.insert(name.clone());
                }
            }
        }
    }
}

/// Concurrent clients create, remove and read builders while the leader is cut off, then
/// while another coordinator hears nothing; their history must be linearizable.
fn clients_during_partitions(c: &mut NetCluster, ledger: &mut Ledger) {
    let s = "concurrent builder clients during partitions";
    let cli = c.cli();
    let c2: &NetCluster = c;
    let ops = with_clients(&cli, "part", 3, 8, || {
        let leader = c2.leader() as usize;
        let others: Vec<String> = (1..=3).filter(|i| *i != leader).map(|i| format!("c{i}")).collect();
        let others: Vec<&str> = others.iter().map(String::as_str).collect();
        std::thread::sleep(Duration::from_secs(2));
        c2.net.cut(&format!("c{leader}"), &others);
        std::thread::sleep(Duration::from_secs(6));
        c2.net.heal();
        let follower = (1..=3).find(|i| *i != c2.leader() as usize).unwrap_or(1);
        let rest: Vec<String> = (1..=3).filter(|i| *i != follower).map(|i| format!("c{i}")).collect();
        let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
        c2.net.cut_inbound(&format!("c{follower}"), &rest);
        std::thread::sleep(Duration::from_secs(6));
        c2.net.heal();
    });
    check_history(&ops, ledger, s);
    ledger.verify(c, s);
}

/// `kill -9` loop of coordinators (the leader, then followers) while clients write builders
/// (Raft writes) and a build runs; each is restarted. The clients' history must be
/// linearizable and the build's result kept.
fn coordinator_kill_loop(c: &mut NetCluster, ledger: &mut Ledger, base: &str) {
    let s = "kill -9 loop of coordinators during Raft writes";
    let b = start_build(c, base, "coordinator-kill", 2);
    let cli = c.cli();
    let ops = with_clients(&cli, "kill", 3, 8, || {
        for round in 0..4usize {
            std::thread::sleep(Duration::from_millis(1500));
            let victim = if round % 2 == 0 { c.leader() as usize } else { round % 3 + 1 };
            c.coordinators[victim - 1].kill();
            std::thread::sleep(Duration::from_millis(1000));
            c.coordinators[victim - 1].restart();
        }
    });
    finish(c, ledger, b, s);
    check_history(&ops, ledger, s);
    ledger.verify(c, s);
}

#[test]
fn the_farm_survives_partitions_loss_full_disks_and_kill_loops() {
    let started = Instant::now();
    let mut c = NetCluster::start_with_small_disk(3, 3, 256);
    c.add_agent("a1", &[], 2);
    c.add_agent("a2", &["linux/arm64"], 2);
    let base = base(&c);
    let mut ledger = Ledger::default();
    create_builder(&c, &mut ledger, "before", "a2");
    ledger.verify(&mut c, "start");
    eprintln!("farm up and base built in {:?}", started.elapsed());

    let timed = |name: &str, t: Instant| eprintln!("{name}: {:?}", t.elapsed());
    let t = Instant::now();
    leader_partitioned(&mut c, &mut ledger, &base);
    timed("leader partitioned", t);
    let t = Instant::now();
    agent_partitioned(&mut c, &mut ledger, &base);
    timed("agent partitioned", t);
    let t = Instant::now();
    asymmetric_partition(&mut c, &mut ledger, &base);
    timed("asymmetric partition", t);
    let t = Instant::now();
    let applied = lossy_links(&mut c, &mut ledger, &base);
    timed(&format!("lossy links ({applied:?})"), t);
    let t = Instant::now();
    disk_full(&mut c, &mut ledger, &base);
    timed("disk full", t);
    let t = Instant::now();
    clients_during_partitions(&mut c, &mut ledger);
    timed("clients during partitions", t);
    let t = Instant::now();
    coordinator_kill_loop(&mut c, &mut ledger, &base);
    timed("coordinator kill loop", t);
    let t = Instant::now();
    agent_kill_loop(&mut c, &mut ledger, &base);
    timed("agent kill loop", t);
    eprintln!("chaos suite: {} builds acknowledged and found, total {:?}", ledger.builds.len(), started.elapsed());
}
