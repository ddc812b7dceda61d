//! The coordinator cluster under load: three `kiln coordinator` processes on loopback and
//! simulated agents in this process (real QUIC connections with their own certificates, on
//! one shared UDP socket,
//! registering and long-polling like `kiln agent`, reporting slices done without building).
//!
//! One phase per agent count in `KILN_BENCH_AGENTS` (comma-separated, default `1000,5000`),
//! each with a fresh cluster. Each prints: resident memory of each coordinator with the agents
//! connected; submit-to-dispatch latency (a build submitted until an agent holds its slice) at
//! low load; slice assignments committed per second for 1,000 four-platform builds submitted
//! at once. Run with `make bench` (it builds the release binary first).

use kiln_shared::api::{AgentInfo, AgentRequest, AgentResponse, BuildSpec, ClientRequest, ClientResponse, Inventory, SliceOutcome};
use kiln_shared::client::{AgentFarm, ClientFarm};
use kiln_shared::Platform;
use kiln_tests::cluster::{Cluster, Proc};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Agent counts run when `KILN_BENCH_AGENTS` is not set, and the leader's memory target for each.
const DEFAULT_AGENTS: [usize; 2] = [1000, 5000];

/// The resident memory the leader should stay under with `agents` agents (the targets).
fn target_mib(agents: usize) -> f64 {
    if agents <= 1000 {
        100.0
    } else {
        300.0
    }
}
const ARCHES: [&str; 4] = ["linux/amd64", "linux/arm64", "linux/riscv64", "linux/ppc64le"];

#[derive(Default)]
struct Seen {
    /// build → when an agent first held one of its slices.
    first: HashMap<u64, Instant>,
    slices: usize,
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn spec(platforms: &[&str], n: usize) -> BuildSpec {
    BuildSpec {
        dockerfile: "FROM scratch\n".into(),
        dockerfile_name: "Dockerfile".into(),
        platforms: platforms.iter().map(|p| p.parse().expect("platform")).collect(),
        submission: format!("bench-{n}"),
        ..Default::default()
    }
}

async fn agent(hosts: Vec<SocketAddr>, token: String, i: usize, endpoint: quinn::Endpoint) -> AgentFarm {
    let name = format!("sim{i:04}");
    let farm = AgentFarm::join(&hosts, &token, &name).await.expect("join").on_endpoint(endpoint).expect("shared endpoint");
    let native: Platform = ARCHES[i % ARCHES.len()].parse().expect("platform");
    let info = AgentInfo {
        name: name.clone(),
        endpoint: "127.0.0.1:1".into(),
        native: vec![native],
        emulated: vec![],
        slots: 4,
        labels: Default::default(),
        version: "bench".into(),
    };
    farm.call(&AgentRequest::Register(info), Duration::from_secs(30), Duration::from_secs(60)).await.expect("register");
    farm
}

async fn poll_loop(farm: Arc<AgentFarm>, name: String, seen: Arc<Mutex<Seen>>) {
    // As `kiln agent` does: a slice stays in `running` until its report is taken.
    let running: Arc<Mutex<Vec<(u64, u32, u32)>>> = Arc::default();
    // As `kiln agent` does, with its default wait, deadline and patience: the hold is the
    // leader's pace when it asks for a longer one, and the deadlines grow with it.
    let mut pace_ms = 0u32;
    loop {
        let list = running.lock().expect("running").clone();
        let wait_ms = pace_ms.max(1000);
        let poll = AgentRequest::Poll { agent: name.clone(), running: list, cache_bytes: 0, wait_ms };
        let longer = Duration::from_millis(u64::from(wait_ms - 1000));
        let answer = farm.call(&poll, Duration::from_millis(2500) + longer, Duration::from_millis(5000) + longer).await;
        let Ok(AgentResponse::Tasks { tasks, resync, pace_ms: pace, .. }) = answer else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        pace_ms = pace;
        if resync {
            // As `kiln agent` does: the tracker (a new leader's, or on first contact) gets the inventory.
            let inv = Inventory { agent: name.clone(), full: true, ..Default::default() };
            let _ = farm.call(&AgentRequest::Advertise(inv), Duration::from_secs(5), Duration::from_secs(5)).await;
        }
        let now = Instant::now();
        for t in tasks {
            {
                let mut s = seen.lock().expect("seen");
                s.first.entry(t.build).or_insert(now);
                s.slices += 1;
            }
            let key = (t.build, t.slice, t.attempt);
            running.lock().expect("running").push(key);
            // Latency-phase builds (one platform) are reported done at once to free the slot.
            if t.spec.platforms.len() == 1 {
                let outcome = SliceOutcome {
                    build: t.build,
                    slice: t.slice,
                    attempt: t.attempt,
                    manifest: kiln_shared::oci::Descriptor::new(
                        kiln_shared::oci::MEDIA_MANIFEST,
                        format!("sha256:{}", "0".repeat(64)).parse().expect("digest"),
                        1,
                    ),
                    attestation: None,
                    emulated: false,
                    emulated_steps: vec![],
                    duration_ms: 1,
                    cache_hits: 0,
                    cache_misses: 0,
                    cache_peer_hits: 0,
                    records: vec![],
                    step_records: vec![],
                    steps: vec![],
                };
                let (farm, running) = (farm.clone(), running.clone());
                tokio::spawn(async move {
                    let _ = farm.call(&AgentRequest::SliceDone(outcome), Duration::from_secs(10), Duration::from_secs(10)).await;
                    running.lock().expect("running").retain(|k| *k != key);
                });
            }
        }
    }
}

/// The soft limit on open files: every simulated agent has a UDP socket of its own.
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    limits.lines().find(|l| l.starts_with("Max open files"))?.split_whitespace().nth(3)?.parse().ok()
}

fn main() {
    let counts: Vec<usize> = match std::env::var("KILN_BENCH_AGENTS") {
        Ok(v) => v.split(',').map(|n| n.trim().parse().expect("KILN_BENCH_AGENTS: agent counts, comma-separated")).collect(),
        Err(_) => DEFAULT_AGENTS.to_vec(),
    };
    let most = counts.iter().copied().max().unwrap_or(0);
    if let Some(limit) = open_files_limit() {
        assert!(limit > most + 256, "{most} simulated agents need more open files than the limit of {limit}: raise it (`ulimit -n`)");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    for agents in counts {
        println!("--- {agents} simulated agents ---");
        phase(&rt, agents);
    }
}

fn phase(rt: &tokio::runtime::Runtime, agents: usize) {
    // openraft's default election timeouts: the load generator shares the two cores. The
    // production lease (10 s; the tests' is 4 s): a large farm's polls are held up to a
    // third of it.
    let c = Cluster::start_with_lease(3, 1500, 3000, 10_000);
    let hosts: Vec<SocketAddr> = c.addrs.iter().map(|a| a.parse().expect("addr")).collect();
    let seen = Arc::new(Mutex::new(Seen::default()));
    rt.block_on(async {
        let t0 = Instant::now();
        let mut farms = Vec::new();
        // One UDP socket for all of them, each connection with its own certificate: 5,000
        // endpoints of their own (a receive buffer and a driver each) made this process the
        // machine's largest, 8 GB and most of a core, starving the coordinators it measures.
        let endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).expect("client endpoint");
        let mut joins = tokio::task::JoinSet::new();
        for i in 0..agents {
            joins.spawn(agent(hosts.clone(), c.agent_token.clone(), i, endpoint.clone()));
            if joins.len() >= 32 {
                farms.push(joins.join_next().await.expect("join").expect("agent"));
            }
        }
        while let Some(f) = joins.join_next().await {
            farms.push(f.expect("agent"));
        }
        println!("{agents} simulated agents joined and registered in {:.1} s", t0.elapsed().as_secs_f64());
        let mut pollers = tokio::task::JoinSet::new();
        let mut connected = Vec::new();
        for farm in farms {
            let name = farm.principal.name.clone();
            let farm = Arc::new(farm);
            connected.push(farm.clone());
            pollers.spawn(poll_loop(farm, name, seen.clone()));
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let leader = c.leader();
        let target = target_mib(agents);
        for (i, p) in c.coordinators.iter().enumerate() {
            let rss = p.pid().map(rss_mib).unwrap_or(0.0);
            if i as u64 + 1 == leader {
                println!("coordinator {} (leader) resident with {agents} agents polling: {rss:.1} MiB (target < {target:.0})", i + 1);
            } else {
                println!("coordinator {} (follower) resident with {agents} agents polling: {rss:.1} MiB", i + 1);
            }
        }

        // Again once the joins' garbage has aged (jemalloc returns it after about ten seconds).
        tokio::time::sleep(Duration::from_secs(15)).await;
        let rss = c.coordinators.get(leader as usize - 1).and_then(Proc::pid).map(rss_mib).unwrap_or(0.0);
        println!("coordinator {leader} (leader) resident 20 s after the agents started polling: {rss:.1} MiB (target < {target:.0})");

        let admin = ClientFarm::join(&hosts, &c.admin_token, "").await.expect("admin join");
        let mut rtt = Vec::new();
        for _ in 0..100 {
            let t = Instant::now();
            admin.call(&ClientRequest::Status, Duration::from_secs(5), Duration::from_secs(5)).await.expect("status");
            rtt.push(t.elapsed());
        }
        rtt.sort();
        println!("round trip of a request that needs no commit: p50 {:.2} ms", rtt[50].as_secs_f64() * 1000.0);
        // Latency: one single-platform build at a time.
        let mut latencies = Vec::new();
        let mut commits = Vec::new();
        for n in 0..200 {
            let start = Instant::now();
            let build = match admin.call(&ClientRequest::Submit(Box::new(spec(&[ARCHES[n % 4]], n))), Duration::from_secs(10), Duration::from_secs(10)).await {
                Ok(ClientResponse::Submitted { build }) => build,
                other => panic!("submit: {other:?}"),
            };
            commits.push(start.elapsed());
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(t) = seen.lock().expect("seen").first.get(&build) {
                    latencies.push(t.duration_since(start));
                    break;
                }
                if Instant::now() > deadline {
                    let out = c.kiln(&["inspect", "default"], c.dir.path());
                    panic!("build {build} was never dispatched\n{}\n{}", String::from_utf8_lossy(&out.stdout).lines().rev().take(8).collect::<Vec<_>>().join("\n"), c.logs());
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
        latencies.sort();
        commits.sort();
        println!("submit round trip (one Raft commit): p50 {:.2} ms", commits[commits.len() / 2].as_secs_f64() * 1000.0);
        let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1000.0;
        println!("submit-to-dispatch latency over {} builds: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms (target p50 < 10 ms)", latencies.len(), pct(0.5), pct(0.9), pct(0.99));

        // Throughput: 1,000 four-platform builds submitted by 16 clients at once.
        let before = seen.lock().expect("seen").slices;
        let builds = 1000usize;
        let start = Instant::now();
        let admin = Arc::new(admin);
        let mut submitters = tokio::task::JoinSet::new();
        for k in 0..16 {
            let admin = admin.clone();
            submitters.spawn(async move {
                for n in (k..builds).step_by(16) {
                    let r = admin.call(&ClientRequest::Submit(Box::new(spec(&ARCHES, 10_000 + n))), Duration::from_secs(30), Duration::from_secs(30)).await;
                    assert!(matches!(r, Ok(ClientResponse::Submitted { .. })), "submit: {r:?}");
                }
            });
        }
        while submitters.join_next().await.is_some() {}
        let submitted = start.elapsed();
        let want = before + builds * ARCHES.len();
        let deadline = Instant::now() + Duration::from_secs(120);
        while seen.lock().expect("seen").slices < want && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let elapsed = start.elapsed();
        let dispatched = seen.lock().expect("seen").slices - before;
        if dispatched < builds * ARCHES.len() {
            // A figure, not a failure: the rate is what was dispatched in the time.
            println!("only {dispatched} of {} slices dispatched within 120 s of the last submit", builds * ARCHES.len());
        }
        let n = dispatched.min(builds * ARCHES.len());
        println!(
            "{n} slices of {builds} builds: submitted in {:.2} s, assigned and dispatched in {:.2} s: {:.0} slice assignments committed per second (target >= 500)",
            submitted.as_secs_f64(),
            elapsed.as_secs_f64(),
            n as f64 / elapsed.as_secs_f64()
        );
        for (i, p) in c.coordinators.iter().enumerate() {
            println!("coordinator {} resident after the run: {:.1} MiB", i + 1, p.pid().map(rss_mib).unwrap_or(0.0));
        }
        // Agents move to another coordinator when theirs fails a call; each one on a follower
        // has its polls forwarded to the leader.
        let mut by_host: HashMap<String, usize> = HashMap::new();
        for f in &connected {
            let host = f.current_host().await.map_or("none".to_string(), |h| h.to_string());
            *by_host.entry(host).or_default() += 1;
        }
        let mut by_host: Vec<_> = by_host.into_iter().collect();
        by_host.sort();
        println!("agents by the coordinator they are connected to: {by_host:?} (the leader is coordinator {leader})");
        // What moved them: the failed calls of this process (all simulated agents), by kind.
        let errors: Vec<String> = kiln_shared::metrics::global()
            .render()
            .lines()
            .filter(|l| l.starts_with("kiln_transport_errors_total{"))
            .map(|l| l.trim_start_matches("kiln_transport_errors_total").to_string())
            .collect();
        println!("the simulated agents' failed calls so far: {}", errors.join(", "));
        pollers.abort_all();
        while pollers.join_next().await.is_some() {}
    });
}
