//! The farm end to end: three coordinators and two agents as real processes on loopback, a
//! real registry, real runc and qemu. One agent is declared arm64-native (this host runs arm64
//! through qemu, which is as good as native for where slices land). Cluster tests run one at a
//! time: each starts five processes on a 2-core machine.

use kiln_tests::cluster::{Cluster, LEASE_MS};
use kiln_tests::Bounded;
use kiln_tests::{busybox, stderr, stdout, wait_for, TempDir, BASE_DOCKERFILE};
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Three coordinators; a1 (detected: amd64 native, arm64 emulated) and a2 (declared arm64).
fn farm() -> Cluster {
    let mut c = Cluster::start(3);
    c.add_agent("a1", &[], 2);
    c.add_agent("a2", &["linux/arm64"], 2);
    c
}

/// The two-platform busybox base, built and pushed by the farm itself.
fn base(c: &Cluster, registry: &kiln_tests::Registry) -> String {
    let ctx = TempDir::new("farm-base");
    for arch in ["amd64", "arm64"] {
        std::fs::copy(busybox().join(format!("busybox-{arch}")), ctx.path().join(format!("busybox-{arch}"))).expect("copy busybox");
    }
    ctx.write("Dockerfile", BASE_DOCKERFILE);
    let reference = format!("{}/base/busybox:1", registry.addr);
    c.ok(c.kiln(&["build", "--progress", "plain", "--platform", "linux/amd64,linux/arm64", "-t", &reference, "--push", "."], ctx.path()));
    reference
}

fn metadata(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("metadata file")).expect("metadata JSON")
}

/// platform → (agent, emulated, attempt)
fn placements(meta: &serde_json::Value) -> std::collections::BTreeMap<String, (String, bool, u64)> {
    meta["kiln.slices"]
        .as_array()
        .expect("slices")
        .iter()
        .map(|s| {
            let p = s["platform"].as_str().unwrap_or_default().to_string();
            (
                p,
                (
                    s["agent"].as_str().unwrap_or_default().to_string(),
                    s["emulated"].as_bool().unwrap_or(true),
                    s["attempt"].as_u64().unwrap_or(0),
                ),
            )
        })
        .collect()
}

/// The index in the registry has exactly one image per platform, and (buildx's default for a
/// push) one attestation manifest for each.
fn assert_index(reference: &str, platforms: &[&str]) {
    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--raw", &format!("docker://{reference}")])
        .bounded()
        .expect("skopeo");
    assert!(out.status.success(), "skopeo: {}", stderr(&out));
    let index: serde_json::Value = serde_json::from_slice(&out.stdout).expect("index JSON");
    let all: Vec<String> = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| format!("{}/{}", m["platform"]["os"].as_str().unwrap_or(""), m["platform"]["architecture"].as_str().unwrap_or("")))
        .collect();
    let mut got: Vec<&String> = all.iter().filter(|p| *p != "unknown/unknown").collect();
    got.sort();
    assert_eq!(got, platforms, "index of {reference}");
    assert_eq!(all.len(), 2 * platforms.len(), "an attestation manifest per image in {reference}: {index}");
}

#[test]
fn farm_builds_pushes_and_manages_builders() {
    let _serial = serial();
    let registry = kiln_tests::Registry::start();
    let c = farm();
    let base = base(&c, &registry);
    let work = TempDir::new("farm-hello");
    let app = format!("{}/app/hello:1", registry.addr);
    let meta = work.path().join("m.json");
    let hello = kiln_tests::repo_root().join("examples/hello");
    let out = c.ok(c.kiln(
        &[
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/amd64,linux/arm64",
            "--build-arg",
            &format!("BASE={base}"),
            "-t",
            &app,
            "--push",
            "--metadata-file",
            &meta.display().to_string(),
            &hello.display().to_string(),
        ],
        work.path(),
    ));
    let m = metadata(&meta);
    let placed = placements(&m);
    assert_eq!(placed["linux/amd64"], ("a1".to_string(), false, 1), "{m}");
    assert_eq!(placed["linux/arm64"], ("a2".to_string(), false, 1), "the arm64 slice lands on the arm64-native agent: {m}");
    assert!(m["containerimage.digest"].as_str().unwrap_or("").starts_with("sha256:"));
    assert!(stderr(&out).contains("[a2 linux/arm64"), "progress is labelled with agent and platform:\n{}", stderr(&out));
    assert_index(&app, &["linux/amd64", "linux/arm64"]);
    for arch in ["amd64", "arm64"] {
        let out = Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--override-arch", arch, "--config", &format!("docker://{app}")])
            .bounded()
            .expect("skopeo");
        let config: serde_json::Value = serde_json::from_slice(&out.stdout).expect("config");
        assert_eq!(config["architecture"], arch);
    }

    // `-o type=oci`: the agents send their images back through the coordinator to the CLI.
    let tar = work.path().join("hello.tar");
    c.ok(c.kiln(
        &[
            "build",
            "--platform",
            "linux/amd64,linux/arm64",
            "--build-arg",
            &format!("BASE={base}"),
            "-t",
            "example/hello:1",
            "-o",
            &format!("type=oci,dest={}", tar.display()),
            &hello.display().to_string(),
        ],
        work.path(),
    ));
    let out = Command::new("skopeo").arg("inspect").arg("--raw").arg(format!("oci-archive:{}", tar.display())).bounded().expect("skopeo");
    assert!(out.status.success(), "skopeo: {}", stderr(&out));
    let index: serde_json::Value = serde_json::from_slice(&out.stdout).expect("index");
    assert_eq!(index["manifests"].as_array().map(Vec::len), Some(4), "two images and their provenance: {index}");
    let out = Command::new("skopeo")
        .args(["inspect", "--override-arch", "arm64", "--config"])
        .arg(format!("oci-archive:{}:example/hello:1", tar.display()))
        .bounded()
        .expect("skopeo");
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).expect("config");
    assert_eq!(config["architecture"], "arm64", "{}", stderr(&out));

    // A platform nobody can run fails at once, with the reason.
    let out = c.kiln(&["build", "--platform", "linux/s390x", "-t", &format!("{}/x:1", registry.addr), "--push", "."], &hello);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no agent of builder \"default\" can run linux/s390x"), "{}", stderr(&out));

    // The CA goes to a listed peer without a token once only: a second "coordinator 2" is refused.
    let port = kiln_tests::cluster::free_udp_port();
    let out = Command::new(kiln_tests::kiln_bin())
        .args(["coordinator", "--id", "2", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(work.path().join("impostor"))
        .args(["--peers", &format!("1={},2=127.0.0.1:{port}", c.addrs[0])])
        .bounded()
        .expect("kiln coordinator");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not a listed peer on its first start"), "{}", stderr(&out));

    // A wrong token gets nothing.
    let forged = c.admin_token.rsplit_once('.').map(|(head, _)| format!("{head}.0123456789abcdef0123456789abcdef")).unwrap_or_default();
    let out = c.kiln_with_token(&["ls"], work.path(), &forged);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("the token is not valid for this cluster"), "{}", stderr(&out));
    let out = c.kiln_with_token(&["ls"], work.path(), "K1nonsense");
    assert!(stderr(&out).contains("malformed"), "{}", stderr(&out));

    // Builders with buildx semantics, shared through the cluster.
    let out = c.kiln(&["create", "a1", "--name", "armpin", "--platform", "linux/arm64", "--driver", "kubernetes"], work.path());
    assert!(stderr(&out).contains("driver \"kubernetes\" is not supported (kiln has: runc, docker-container"), "{}", stderr(&out));
    c.ok(c.kiln(&["create", "a1", "--name", "armpin", "--platform", "linux/arm64", "--driver", "docker-container"], work.path()));
    c.ok(c.kiln(&["create", "a2", "--name", "mixed", "--use", "--bootstrap"], work.path()));
    c.ok(c.kiln(&["create", "a1", "--name", "mixed", "--append", "--node", "mixed-amd"], work.path()));
    let ls: serde_json::Value = serde_json::from_slice(&c.ok(c.kiln(&["ls", "--format", "json"], work.path())).stdout).expect("ls json");
    for ctx in c.contexts() {
        let endpoint = ctx["endpoint"].as_str().unwrap_or_default();
        assert!(!endpoint.ends_with(":0"), "an agent reports the address its peer endpoint listens on: {endpoint}");
    }
    let names: Vec<&str> = ls.as_array().expect("list").iter().filter_map(|b| b["name"].as_str()).collect();
    assert_eq!(names, ["default", "a1", "a2", "armpin", "mixed"]);
    let mixed = ls.as_array().expect("list").iter().find(|b| b["name"] == "mixed").expect("mixed");
    assert_eq!(mixed["current"], true, "`--use` switched to it");
    assert_eq!(mixed["nodes"].as_array().map(Vec::len), Some(2));
    let table = stdout(&c.ok(c.kiln(&["ls"], work.path())));
    assert!(table.contains("NAME/NODE") && table.contains("mixed *") && table.contains("running"), "{table}");
    let inspect = stdout(&c.ok(c.kiln(&["inspect", "--bootstrap"], work.path())));
    assert!(inspect.contains("Name:          mixed") && inspect.contains("Slots:") && inspect.contains("linux/arm64"), "{inspect}");
    let out = c.kiln(&["rm", "a1"], work.path());
    assert_eq!(stderr(&out).trim(), "error: context builder cannot be removed, run `kiln context rm a1` to remove this context");

    // `--builder armpin`: only a1, pinned to arm64 — so the slice runs there, emulated.
    let pinned = format!("{}/app/pinned:1", registry.addr);
    let meta2 = work.path().join("m2.json");
    c.ok(c.kiln(
        &[
            "build",
            "--builder",
            "armpin",
            "--platform",
            "linux/arm64",
            "--build-arg",
            &format!("BASE={base}"),
            "-t",
            &pinned,
            "--push",
            "--metadata-file",
            &meta2.display().to_string(),
            &hello.display().to_string(),
        ],
        work.path(),
    ));
    assert_eq!(placements(&metadata(&meta2))["linux/arm64"], ("a1".to_string(), true, 1));
    let out = c.kiln(&["build", "--builder", "armpin", "--platform", "linux/amd64", "-t", &pinned, "--push", "."], &hello);
    assert!(stderr(&out).contains("no agent of builder \"armpin\" can run linux/amd64"), "{}", stderr(&out));

    c.ok(c.kiln(&["rm", "armpin"], work.path()));
    c.ok(c.kiln(&["create", "--name", "mixed", "--leave", "--node", "mixed-amd"], work.path()));
    // `kiln context rm` drains and deregisters; the context's builder goes with it.
    c.ok(c.kiln(&["context", "rm", "a2"], work.path()));
    let names: Vec<String> = c.contexts().iter().filter_map(|x| x["name"].as_str().map(str::to_string)).collect();
    assert_eq!(names, ["a1"]);
    let ls = stdout(&c.ok(c.kiln(&["ls"], work.path())));
    assert!(!ls.contains("a2") && !ls.contains("mixed"), "a builder left without nodes goes:\n{ls}");
}

/// A slow two-platform build whose arm64 slice runs on a2.
fn slow_build(
    c: &Cluster,
    registry: &kiln_tests::Registry,
    base: &str,
    tag: &str,
    marker: &str,
    work: &TempDir,
) -> (std::process::Child, std::path::PathBuf, String) {
    let ctx = TempDir::new("slow");
    ctx.write("Dockerfile", &format!("FROM {base}\nRUN sleep 6 && echo {marker} > /marker && uname -m > /arch\n"));
    let reference = format!("{}/app/{tag}:1", registry.addr);
    let meta = work.path().join(format!("{tag}.json"));
    let child = Command::new(kiln_tests::kiln_bin())
        .args(["build", "--progress", "plain", "--platform", "linux/amd64,linux/arm64", "-t", &reference, "--push", "--metadata-file"])
        .arg(&meta)
        .arg(ctx.path())
        .env("KILN_HOME", c.home())
        .env("KILN_HOST", c.hosts())
        .env("KILN_TOKEN", &c.admin_token)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kiln build");
    std::mem::forget(ctx); // the build reads it; it is small and under /tmp
    (child, meta, reference)
}

fn finish(c: &Cluster, child: std::process::Child) -> String {
    let out = child.wait_with_output().expect("kiln build");
    assert!(out.status.success(), "build failed:\n{}\nlogs:\n{}", stderr(&out), c.logs());
    stderr(&out)
}

#[test]
fn agents_that_die_or_are_cut_off_lose_their_slices_and_builds_succeed() {
    let _serial = serial();
    let registry = kiln_tests::Registry::start();
    let mut c = farm();
    let base = base(&c, &registry);
    let work = TempDir::new("farm-agent-failure");

    // a2 is killed mid-slice: after its lease the slice runs again on a1 (emulated).
    let (child, meta, reference) = slow_build(&c, &registry, &base, "killed", "k1", &work);
    wait_for("the arm64 slice to run on a2", Duration::from_secs(60), || c.slice_running("linux/arm64", "a2"));
    wait_for("a2's RUN step to start", Duration::from_secs(60), || {
        let o = c.kiln(&["history", "logs"], work.path());
        stdout(&o).contains("[a2 linux/arm64 stage-0 2/2] RUN")
    });
    c.agent("a2").kill();
    let log = finish(&c, child);
    // The progress says what happened to the lost attempt: its step ends, and it moves.
    assert!(
        log.contains("ERROR: attempt 1 lost with agent a2") && log.contains("the slice is retried on another agent (attempt 2)"),
        "{log}"
    );
    let placed = placements(&metadata(&meta));
    assert_eq!(placed["linux/arm64"], ("a1".to_string(), true, 2), "{placed:?}");
    assert_eq!(placed["linux/amd64"], ("a1".to_string(), false, 1));
    assert_index(&reference, &["linux/amd64", "linux/arm64"]);

    // a2 comes back, then is cut off (stopped) mid-slice past its lease: the slice moves, and
    // when a2 comes back its report of the old attempt is refused — no double report.
    c.agent("a2").restart();
    wait_for("a2 to be ready again", Duration::from_secs(60), || c.context_status("a2").as_deref() == Some("ready"));
    let (child, meta, reference) = slow_build(&c, &registry, &base, "cutoff", "k2", &work);
    wait_for("the arm64 slice to run on a2", Duration::from_secs(60), || c.slice_running("linux/arm64", "a2"));
    c.agent("a2").pause();
    wait_for("a2 to be declared lost", Duration::from_millis(LEASE_MS * 4), || c.context_status("a2").as_deref() == Some("lost"));
    wait_for("the slice to move to a1", Duration::from_secs(30), || c.slice_running("linux/arm64", "a1"));
    c.agent("a2").resume();
    finish(&c, child);
    let placed = placements(&metadata(&meta));
    assert_eq!(placed["linux/arm64"].2, 2, "the slice ran again after the lease: {placed:?}");
    assert_eq!(placed["linux/arm64"].0, "a1");
    assert_index(&reference, &["linux/amd64", "linux/arm64"]);
    wait_for("a2's stale report to be refused", Duration::from_secs(60), || c.agent("a2").log().contains("is no longer"));
}

#[test]
fn leader_failover_and_full_restart_lose_nothing() {
    let _serial = serial();
    let registry = kiln_tests::Registry::start();
    let mut c = farm();
    let base = base(&c, &registry);
    let work = TempDir::new("farm-leader");
    c.ok(c.kiln(&["create", "a2", "--name", "kept"], work.path()));

    let (child, meta, reference) = slow_build(&c, &registry, &base, "failover", "f1", &work);
    wait_for("both slices to run", Duration::from_secs(60), || {
        c.slice_running("linux/arm64", "a2") && c.slice_running("linux/amd64", "a1")
    });
    let leader = c.leader();
    c.coordinators[leader as usize - 1].kill();
    finish(&c, child);
    let m = metadata(&meta);
    let placed = placements(&m);
    assert_eq!(placed.len(), 2);
    assert_eq!(placed["linux/arm64"].0, "a2");
    assert_index(&reference, &["linux/amd64", "linux/arm64"]);
    let new_leader = c.leader();
    assert_ne!(new_leader, leader);

    // Every coordinator restarts: builders, contexts and finished builds are still there.
    c.coordinators[leader as usize - 1].restart();
    for p in c.coordinators.iter_mut() {
        p.kill();
    }
    for p in c.coordinators.iter_mut() {
        p.restart();
    }
    c.leader();
    let ls = stdout(&c.ok(c.kiln(&["ls"], work.path())));
    assert!(ls.contains("kept"), "{ls}");
    wait_for("the agents to be back", Duration::from_secs(60), || {
        c.context_status("a1").as_deref() == Some("ready") && c.context_status("a2").as_deref() == Some("ready")
    });
    let inspect = stdout(&c.ok(c.kiln(&["inspect", "default"], work.path())));
    assert!(inspect.lines().filter(|l| l.contains(" done ")).count() >= 4, "finished builds are remembered:\n{inspect}");
    // And the farm still builds.
    let (child, _, reference) = slow_build(&c, &registry, &base, "after", "f2", &work);
    finish(&c, child);
    assert_index(&reference, &["linux/amd64", "linux/arm64"]);
    let _ = m;

    // Membership changes without downtime: a fourth coordinator joins, then leaves.
    let addr = c.start_joining_coordinator(4);
    c.ok(c.kiln(&["coordinator", "add", "--id", "4", "--addr", &addr], work.path()));
    assert_eq!(c.members(), [(1, true), (2, true), (3, true), (4, true)]);
    c.ok(c.kiln(&["coordinator", "remove", "--id", "4"], work.path()));
    assert_eq!(c.members(), [(1, true), (2, true), (3, true)]);
    c.ok(c.kiln(&["ls"], work.path()));
}

/// A CLI killed in the middle of an upload: the next run starts over and succeeds (the
/// coordinator's offset counts), and the abandoned partial file does not stay.
#[test]
fn an_upload_cut_off_midway_does_not_wedge_the_next_build() {
    let _serial = serial();
    let mut c = Cluster::start(1);
    c.add_agent("a1", &["linux/amd64"], 2);
    let ctx = TempDir::new("cut-upload");
    // 40 MB that do not compress: ten chunks.
    let mut big = vec![0u8; 40 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in big.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(ctx.path().join("big.bin"), &big).expect("big file");
    ctx.write("Dockerfile", "FROM scratch\nCOPY big.bin /big.bin\n");
    let tmp = c.dir.path().join("c1/blobs/tmp");
    let partial =
        || std::fs::read_dir(&tmp).map(|d| d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).max().unwrap_or(0)).unwrap_or(0);
    let mut child = Command::new(kiln_tests::kiln_bin())
        .args(["build", "--progress", "plain", "."])
        .current_dir(ctx.path())
        .env("KILN_HOME", c.home())
        .env("KILN_HOST", c.hosts())
        .env("KILN_TOKEN", &c.admin_token)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("kiln build");
    wait_for("part of the upload", Duration::from_secs(60), || partial() >= 4 << 20);
    let _ = child.kill();
    let _ = child.wait();
    // Run again: it starts at offset 0 where the coordinator holds more, and succeeds.
    let out = c.kiln(&["build", "--progress", "plain", "."], ctx.path());
    c.ok(out);
    assert_eq!(partial(), 0, "no partial upload is left once the blob is stored");
}

/// No single point of failure between upload and result: the coordinator that received a
/// build's uploads is killed after the build was accepted and before its agent fetched
/// anything (the agent is stopped meanwhile); the slice fetches the context from the copy the
/// receiving coordinator made on another member before accepting the build, and succeeds.
#[test]
fn the_receiving_coordinator_dies_between_upload_and_dispatch_and_the_build_succeeds() {
    let _serial = serial();
    let registry = kiln_tests::Registry::start();
    let mut c = Cluster::start(3);
    c.add_agent("a1", &[], 2);
    let base = base(&c, &registry);
    let ctx = TempDir::new("farm-replica");
    // Content no other build has: the agent must fetch it.
    let unique = format!("replicated {:?}\n", std::time::SystemTime::now());
    ctx.write("data.txt", &unique);
    ctx.write("Dockerfile", &format!("FROM {base}\nCOPY data.txt /data.txt\nRUN cat /data.txt > /seen\n"));
    let leader = c.leader();
    let receiver = (1..=3u64).find(|id| *id != leader).expect("a follower");
    let i = receiver as usize - 1;
    // The CLI talks to the receiver first (its uploads land there), then the others.
    let mut hosts = vec![c.addrs[i].clone()];
    hosts.extend(c.addrs.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, a)| a.clone()));
    let reference = format!("{}/app/replica:1", registry.addr);
    c.agent("a1").pause();
    let child = Command::new(kiln_tests::kiln_bin())
        .args(["build", "--progress", "plain", "--platform", "linux/amd64", "-t", &reference, "--push", "."])
        .current_dir(ctx.path())
        .env("KILN_HOME", c.home())
        .env("KILN_HOST", hosts.join(","))
        .env("KILN_TOKEN", &c.admin_token)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kiln build");
    wait_for("the build to be accepted", Duration::from_secs(60), || {
        let o = c.kiln(&["history", "ls", "--format", "json", "--filter", "ref=app/replica"], ctx.path());
        stdout(&o).contains("\"id\"")
    });
    c.coordinators[i].kill();
    c.agent("a1").resume();
    let out = child.wait_with_output().expect("kiln build");
    assert!(out.status.success(), "the build survives its receiving coordinator:\n{}\nlogs:\n{}", stderr(&out), c.logs());
}
