//! Metrics end to end: a farm of three coordinators and two agents, each serving
//! `--metrics-listen` on a loopback port, scraped every second by a real Prometheus (Debian's
//! `prometheus`). The test causes known events (a two-platform build, then the same build
//! again, fully cached) and asserts through PromQL what they must have counted: the figures
//! come from the builds' own metadata files, not from constants where the farm decides. After
//! each step the test waits until every target has been scraped again, so the values it reads
//! are final.

use kiln_tests::cluster::Cluster;
use kiln_tests::prometheus::Prometheus;
use kiln_tests::{busybox, TempDir, BASE_DOCKERFILE};
use std::time::Duration;

/// Long enough for a scrape every second on a loaded 2-core machine.
const SCRAPED: Duration = Duration::from_secs(30);

/// `GET http://addr/path`: the status code and body.
fn get(addr: &str, path: &str) -> (u16, String) {
    match ureq::get(&format!("http://{addr}{path}")).timeout(Duration::from_secs(5)).call() {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("GET http://{addr}{path}: {e}"),
    }
}

fn slice_sum(meta: &serde_json::Value, field: &str) -> f64 {
    meta["kiln.slices"].as_array().expect("slices").iter().map(|s| s[field].as_f64().unwrap_or(0.0)).sum()
}

/// A two-platform build of `ctx`, pushed to `reference`; `extra` flags (e.g. `--builder`).
/// Without provenance: each build's attestation is new (it names the build's time), and the
/// push figures below count the image's blobs alone.
fn build(c: &Cluster, ctx: &TempDir, reference: &str, meta: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let meta_arg = meta.display().to_string();
    let mut args = vec![
        "build",
        "--progress",
        "plain",
        "--platform",
        "linux/amd64,linux/arm64",
        "-t",
        reference,
        "--push",
        "--provenance=false",
        "--metadata-file",
        &meta_arg,
    ];
    args.extend(extra);
    args.push(".");
    c.ok(c.kiln(&args, ctx.path()));
    serde_json::from_slice(&std::fs::read(meta).expect("metadata file")).expect("metadata JSON")
}

#[test]
fn prometheus_scrapes_what_the_farm_did() {
    let registry = kiln_tests::Registry::start();
    let mut c = Cluster::start_with_metrics(3);
    c.add_agent("a1", &[], 2);
    c.add_agent("a2", &["linux/arm64"], 2);
    assert_eq!(c.metrics.len(), 5, "{:?}", c.metrics);

    // Every process answers its probes itself.
    for (name, addr) in &c.metrics {
        assert_eq!(get(addr, "/healthz"), (200, "ok\n".into()), "{name} /healthz");
        kiln_tests::wait_for(&format!("{name} to be ready"), Duration::from_secs(30), || get(addr, "/readyz").0 == 200);
        let (code, text) = get(addr, "/metrics");
        assert_eq!(code, 200, "{name} /metrics");
        assert!(text.contains("# TYPE kiln_transport_errors_total counter"), "{name}:\n{text}");
        assert_eq!(get(addr, "/nothing").0, 404);
    }

    let prom = Prometheus::start(&c.metrics);
    prom.eventually("sum(up)", SCRAPED, |v| v == 5.0);

    // Raft: one leader, the one `kiln coordinator status` names, seen by every member.
    let leader = c.leader() as f64;
    prom.eventually("sum(kiln_raft_is_leader)", SCRAPED, |v| v == 1.0);
    assert_eq!(prom.value("count(kiln_raft_term)"), Some(3.0));
    prom.eventually("min(kiln_raft_leader_id)", SCRAPED, |v| v == leader);
    assert_eq!(prom.value("max(kiln_raft_leader_id)"), Some(leader));
    assert_eq!(prom.value("max(kiln_raft_term) - min(kiln_raft_term)"), Some(0.0));
    prom.eventually("min(kiln_raft_applied_index)", SCRAPED, |v| v > 0.0);

    // Agents: both ready as the leader sees them, both registered as they see themselves.
    prom.eventually("sum(kiln_agents{state=\"ready\"})", SCRAPED, |v| v == 2.0);
    assert_eq!(prom.value("sum(kiln_agent_registered)"), Some(2.0));
    assert_eq!(prom.value("sum(kiln_agent_slots)"), Some(4.0));
    assert_eq!(prom.value("sum(kiln_farm_agent_slots)"), Some(4.0));

    // A two-platform build from scratch: every step misses, both slices succeed.
    let ctx = TempDir::new("metrics-ctx");
    for arch in ["amd64", "arm64"] {
        std::fs::copy(busybox().join(format!("busybox-{arch}")), ctx.path().join(format!("busybox-{arch}"))).expect("copy busybox");
    }
    ctx.write("Dockerfile", BASE_DOCKERFILE);
    let reference = format!("{}/metrics/busybox:1", registry.addr);
    let meta_file = c.dir.path().join("first.json");
    let first = build(&c, &ctx, &reference, &meta_file, &[]);
    prom.wait_for_scrapes(SCRAPED);
    let misses = slice_sum(&first, "cache_misses");
    assert!(misses > 0.0, "{first}");
    prom.eventually("sum(kiln_slices_finished_total{state=\"succeeded\"})", SCRAPED, |v| v == 2.0);
    prom.eventually("sum(kiln_builds_finished_total{state=\"succeeded\"})", SCRAPED, |v| v == 1.0);
    assert_eq!(prom.value("sum(kiln_builds_submitted_total)"), Some(1.0));
    assert_eq!(prom.value("sum(kiln_slices_finished_total{platform=\"linux/arm64\"})"), Some(1.0));
    prom.eventually("sum(kiln_step_cache_misses_total)", SCRAPED, |v| v == misses);
    assert_eq!(prom.value("sum(kiln_step_cache_hits_total)"), Some(0.0));
    prom.eventually("sum(kiln_agent_slices_total{state=\"succeeded\"})", SCRAPED, |v| v == 2.0);
    prom.eventually("sum(kiln_slice_run_seconds_count)", SCRAPED, |v| v == 2.0);
    assert_eq!(prom.value("sum(kiln_slice_queue_seconds_count{platform=\"linux/amd64\"})"), Some(1.0));
    // The leader's view of the state: one build done, its two slices succeeded.
    prom.eventually("sum(kiln_builds{state=\"succeeded\"})", SCRAPED, |v| v == 1.0);
    assert_eq!(prom.value("sum(kiln_slices{state=\"succeeded\"})"), Some(2.0));
    // The context came from the coordinator that received it (an origin), the layers went to
    // a registry that did not have them.
    prom.eventually("sum(kiln_fetched_bytes_total{from=\"origin\"})", SCRAPED, |v| v > 0.0);
    let sent = prom.eventually("sum(kiln_upload_bytes_total{result=\"sent\"})", SCRAPED, |v| v > 0.0);
    prom.eventually("sum(kiln_blob_upload_bytes_total{result=\"sent\"})", SCRAPED, |v| v > 0.0);

    // The same build again: every step is a hit, nothing is pushed again.
    let meta_file = c.dir.path().join("second.json");
    let second = build(&c, &ctx, &reference, &meta_file, &[]);
    prom.wait_for_scrapes(SCRAPED);
    let (hits, peer_hits) = (slice_sum(&second, "cache_hits"), slice_sum(&second, "cache_peer_hits"));
    assert_eq!(slice_sum(&second, "cache_misses"), 0.0, "{second}");
    assert!(hits > 0.0, "{second}");
    prom.eventually("sum(kiln_slices_finished_total{state=\"succeeded\"})", SCRAPED, |v| v == 4.0);
    prom.eventually("sum(kiln_step_cache_hits_total)", SCRAPED, |v| v == hits);
    assert_eq!(prom.value("sum(kiln_step_cache_hits_total{source=\"peer\"})"), Some(peer_hits));
    assert_eq!(prom.value("sum(kiln_step_cache_hits_total{source=\"local\"})"), Some(hits - peer_hits));
    assert_eq!(prom.value("sum(kiln_step_cache_misses_total)"), Some(misses), "a cached rebuild misses nothing");
    prom.eventually("sum(kiln_upload_bytes_total{result=\"skipped\"})", SCRAPED, |v| v > 0.0);
    assert_eq!(prom.value("sum(kiln_upload_bytes_total{result=\"sent\"})"), Some(sent), "the registry had every layer");
    prom.eventually("sum(kiln_blob_upload_bytes_total{result=\"skipped\"})", SCRAPED, |v| v > 0.0);
    prom.eventually("sum(kiln_builds_finished_total{state=\"succeeded\"})", SCRAPED, |v| v == 2.0);
    // Run times by emulation, as the builds' metadata says each slice ran.
    prom.eventually("sum(kiln_slice_run_seconds_count)", SCRAPED, |v| v == 4.0);
    for emulated in [false, true] {
        let n = [&first, &second]
            .iter()
            .flat_map(|m| m["kiln.slices"].as_array().cloned().unwrap_or_default())
            .filter(|s| s["emulated"].as_bool() == Some(emulated))
            .count() as f64;
        let got = prom.value(&format!("sum(kiln_slice_run_seconds_count{{emulated=\"{emulated}\"}})"));
        assert_eq!(got.unwrap_or(0.0), n, "slices with emulated={emulated}");
    }
    assert_eq!(prom.value("sum(kiln_agent_running_slices)"), Some(0.0));

    // The same build on a2 alone (its builder): the amd64 steps are a1's, taken from it as a
    // peer, with their layers.
    let meta_file = c.dir.path().join("third.json");
    let third = build(&c, &ctx, &reference, &meta_file, &["--builder", "a2"]);
    prom.wait_for_scrapes(SCRAPED);
    let third_peer_hits = slice_sum(&third, "cache_peer_hits");
    assert!(third_peer_hits > 0.0, "{third}");
    prom.eventually("sum(kiln_slices_finished_total{state=\"succeeded\"})", SCRAPED, |v| v == 6.0);
    prom.eventually("sum(kiln_step_cache_hits_total{source=\"peer\"})", SCRAPED, |v| v == peer_hits + third_peer_hits);
    prom.eventually("sum(kiln_fetched_bytes_total{from=\"peer\"})", SCRAPED, |v| v > 0.0);
    assert_eq!(prom.value("sum(kiln_step_cache_misses_total)"), Some(misses + slice_sum(&third, "cache_misses")));

    // Pruning everything reclaims what the builds left on the agents.
    c.ok(c.kiln(&["prune", "-a", "-f"], ctx.path()));
    prom.wait_for_scrapes(SCRAPED);
    prom.eventually("sum(kiln_gc_reclaimed_bytes_total)", SCRAPED, |v| v > 0.0);
    // The figures, for the record (`cargo test ... -- --nocapture`).
    for q in [
        "sum(kiln_step_cache_misses_total)",
        "sum by (source) (kiln_step_cache_hits_total)",
        "sum by (result) (kiln_upload_bytes_total)",
        "sum by (result) (kiln_blob_upload_bytes_total)",
        "sum by (from) (kiln_fetched_bytes_total)",
        "sum by (platform) (kiln_slice_run_seconds_sum)",
        "sum by (platform) (kiln_slice_queue_seconds_sum)",
        "sum by (kind) (kiln_transport_errors_total)",
        "max(kiln_raft_commit_index)",
    ] {
        eprintln!("{q}: {:?}", prom.query(q).unwrap_or_default().iter().map(|(m, v)| format!("{m} {v}")).collect::<Vec<_>>());
    }
    for (name, addr) in c.metrics.iter().filter(|(n, _)| n == "agent a1" || *n == format!("coordinator {leader}")) {
        eprintln!("--- {name} /metrics\n{}", get(addr, "/metrics").1);
    }
    drop(prom);
}

/// A metrics address that is taken stops the start with one line naming it, for both servers.
#[test]
fn a_taken_metrics_address_is_refused_in_one_line() {
    use kiln_tests::Bounded;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let dir = TempDir::new("metrics-taken");
    let quic = format!("127.0.0.1:{}", kiln_tests::free_port());
    let data = dir.path().join("c1").display().to_string();
    let agent_data = dir.path().join("a1").display().to_string();
    let runs = [
        vec!["coordinator", "--id", "1", "--listen", &quic, "--data-dir", &data, "--metrics-listen", &addr],
        vec!["agent", "--name", "a1", "--data-dir", &agent_data, "--host", &quic, "--token", "unused", "--metrics-listen", &addr],
    ];
    for args in runs {
        let out = std::process::Command::new(kiln_tests::kiln_bin()).args(&args).bounded().expect("run kiln");
        let err = kiln_tests::stderr(&out);
        assert!(!out.status.success(), "{args:?} started");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(&format!("metrics endpoint: cannot listen on {addr} (TCP): ")), "{args:?}: {err}");
    }
}
