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
//! One farm serves every scenario, one after another in one test (five processes and qemu on
//! a 2-core machine): the suite is bounded by the farm's start plus each scenario's deadline.

use kiln_tests::cluster::LEASE_MS;
use kiln_tests::linearizable::{self, Answer, Call, History};
use kiln_tests::netcluster::NetCluster;
use kiln_tests::netns::Degraded;
use kiln_tests::{busybox, kiln_bin, stderr, stdout, wait_for, TempDir, BASE_DOCKERFILE};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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
    let args =
        ["build", "--progress", "plain", "--platform", &PLATFORMS.join(","), "-t", &reference, "--push", "."];
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
    let args =
        ["build", "--progress", "plain", "--platform", &PLATFORMS.join(","), "-t", &reference, "--push", "."];
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
        let child = c.command_at(&majority.join(","), &["create", "a2", "--name", "during-asym"], c.dir.path())
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

/// Every link loses packets (and is delayed where the kernel has netem): builds and builder
/// changes still go through.
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

    let t = Instant::now();
    leader_partitioned(&mut c, &mut ledger, &base);
    eprintln!("leader partitioned: {:?}", t.elapsed());
    let t = Instant::now();
    agent_partitioned(&mut c, &mut ledger, &base);
    eprintln!("agent partitioned: {:?}", t.elapsed());
    let t = Instant::now();
    asymmetric_partition(&mut c, &mut ledger, &base);
    eprintln!("asymmetric: {:?}", t.elapsed());
    let t = Instant::now();
    let applied = lossy_links(&mut c, &mut ledger, &base);
    eprintln!("lossy links ({applied:?}): {:?}", t.elapsed());
    eprintln!("total {:?}", started.elapsed());
    let _ = (kiln_bin, AtomicBool::new(false).load(Ordering::Relaxed), Arc::new(()), History::default(), linearizable::check, Answer::Done);
    let _ = Call::Read { name: String::new() };
}
