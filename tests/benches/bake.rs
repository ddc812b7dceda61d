//! `kiln bake` on a farm against the way buildx routes a bake: twelve targets × two platforms
//! on four agents (two amd64, two declared arm64-native, two slots each), first with the farm's
//! scheduler choosing among all of them, then through a builder pinned to one agent per platform
//! (buildx sends every target of a platform to the first node that supports it). Each target's
//! RUN sleeps one second: the agents share this machine's two cores, and a sleep stands in for
//! work on hosts of their own. Every bake runs with --no-cache; an untimed bake warms every
//! agent first (base pulled, its snapshot unpacked), then the two ways alternate.
//!
//! Prints: each bake's wall time, their ratio (target: at most 0.6), each agent's share of slices.
//! Run with `make bench` (it builds the binary first) or
//! `cargo build --bin kiln && cargo bench -p kiln-tests --bench bake`.

use kiln_tests::cluster::Cluster;
use kiln_tests::{busybox, kiln_bin, stderr, Bounded, Registry, TempDir, BASE_DOCKERFILE};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

const TARGETS: usize = 12;

fn bake(c: &Cluster, dir: &TempDir, registry: &Registry, base: &str, builder: &str) -> (f64, BTreeMap<String, usize>) {
    let meta = dir.path().join(format!("meta-{builder}.json"));
    let start = Instant::now();
    let out = Command::new(kiln_bin())
        .args(["bake", "--push", "--no-cache", "--progress", "quiet", "--builder", builder, "--metadata-file"])
        .arg(&meta)
        .env("KILN_HOME", c.home())
        .env("KILN_HOST", c.hosts())
        .env("KILN_TOKEN", &c.admin_token)
        .env("REGISTRY", &registry.addr)
        .env("BASE", base)
        .current_dir(dir.path())
        .bounded()
        .expect("kiln bake");
    let secs = start.elapsed().as_secs_f64();
    assert!(out.status.success(), "bake on {builder}: {}", stderr(&out));
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).expect("metadata")).expect("metadata JSON");
    let mut share = BTreeMap::new();
    for t in m.as_object().expect("one object per target").values() {
        for s in t["kiln.slices"].as_array().expect("slices") {
            *share.entry(format!("{} {}", s["agent"].as_str().unwrap_or(""), s["platform"].as_str().unwrap_or(""))).or_default() += 1;
        }
    }
    (secs, share)
}

fn main() {
    let registry = Registry::start();
    let mut c = Cluster::start(1);
    c.add_agent("a1", &["linux/amd64"], 2);
    c.add_agent("a2", &["linux/amd64"], 2);
    c.add_agent("a3", &["linux/arm64"], 2);
    c.add_agent("a4", &["linux/arm64"], 2);
    let ctx = TempDir::new("bench-bake-base");
    for arch in ["amd64", "arm64"] {
        std::fs::copy(busybox().join(format!("busybox-{arch}")), ctx.path().join(format!("busybox-{arch}"))).expect("copy busybox");
    }
    ctx.write("Dockerfile", BASE_DOCKERFILE);
    let base = format!("{}/base/busybox:1", registry.addr);
    c.ok(c.kiln(&["build", "--platform", "linux/amd64,linux/arm64", "-t", &base, "--push", "."], ctx.path()));
    // buildx's routing: one node per platform.
    c.ok(c.kiln(&["create", "a1", "--name", "pinned", "--platform", "linux/amd64"], ctx.path()));
    c.ok(c.kiln(&["create", "a3", "--name", "pinned", "--append", "--platform", "linux/arm64"], ctx.path()));

    let dir = TempDir::new("bench-bake-repo");
    let names: Vec<String> = (1..=TARGETS).map(|i| format!("svc{i:02}")).collect();
    let mut hcl = String::from(
        "variable \"REGISTRY\" {}\nvariable \"BASE\" {}\n\
         target \"_base\" {\n  platforms = [\"linux/amd64\", \"linux/arm64\"]\n  args = { BASE = BASE }\n}\n",
    );
    hcl.push_str(&format!(
        "group \"default\" {{\n  targets = [{}]\n}}\n",
        names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ")
    ));
    for n in &names {
        hcl.push_str(&format!(
            "target \"{n}\" {{\n  inherits = [\"_base\"]\n  dockerfile = \"{n}.Dockerfile\"\n  tags = [\"${{REGISTRY}}/bench/{n}:1\"]\n}}\n"
        ));
        dir.write(
            &format!("{n}.Dockerfile"),
            &format!("ARG BASE\nFROM ${{BASE}}\nCOPY {n}.Dockerfile /src/\nRUN sleep 1 && echo {n} > /name\n"),
        );
    }
    dir.write("docker-bake.hcl", &hcl);

    // One untimed bake first, through the farm's scheduler: every agent pulls the base and
    // unpacks its snapshot once (the pinned builder's two agents would otherwise be warm from
    // the first timed run and the farm's other two cold). Then each way, alternating, ROUNDS
    // times; medians.
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(2);
    bake(&c, &dir, &registry, &base, "default");
    let (mut farm, mut pinned) = (Vec::new(), Vec::new());
    let (mut farm_share, mut pinned_share) = (BTreeMap::new(), BTreeMap::new());
    for _ in 0..rounds {
        let (secs, share) = bake(&c, &dir, &registry, &base, "pinned");
        pinned.push(secs);
        pinned_share = share;
        let (secs, share) = bake(&c, &dir, &registry, &base, "default");
        farm.push(secs);
        farm_share = share;
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (farm_secs, pinned_secs) = (median(&mut farm), median(&mut pinned));
    println!("kiln bake, {TARGETS} targets x 2 platforms, 4 agents x 2 slots, warm agents, median of {rounds}:");
    println!("  farm scheduler:          {farm_secs:.2} s {farm:.2?}, slices per agent {farm_share:?}");
    println!("  pinned (buildx routing): {pinned_secs:.2} s {pinned:.2?}, slices per agent {pinned_share:?}");
    println!("  ratio farm/pinned: {:.2} (target <= 0.60)", farm_secs / pinned_secs);
}
