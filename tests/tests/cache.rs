//! The shared cache end to end: agents fetch each other's step cache records and layers over
//! QUIC, tenants never see each other's records, caches export and import in buildx's syntax,
//! and `kiln du` / `kiln prune` work across a builder's agents.

use kiln_tests::cluster::Cluster;
use kiln_tests::Bounded;
use kiln_tests::{base_image, busybox, kiln, ok, stderr, stdout, TempDir, BASE_DOCKERFILE};
use std::path::Path;
use std::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// An app with RUN and COPY steps on the busybox base.
fn app(dir: &Path, base: &str) {
    std::fs::write(
        dir.join("Dockerfile"),
        format!(
            "FROM {base}\nCOPY data.txt /data.txt\nRUN wc -c /data.txt > /size && echo built > /marker\nWORKDIR /app\nRUN cp /data.txt /app/copy\n"
        ),
    )
    .expect("Dockerfile");
    std::fs::write(dir.join("data.txt"), "some context\n".repeat(1000)).expect("data");
}

/// Where the app is built: the farm, a scratch dir for metadata, the sources, the registry.
struct Site<'a> {
    work: &'a Path,
    src: &'a Path,
    registry: &'a str,
}

/// Builds the app on a farm's builder for linux/amd64 and pushes it; (metadata, progress).
fn farm_build(c: &Cluster, site: &Site, builder: &str, tag: &str, token: Option<&str>, extra: &[&str]) -> (serde_json::Value, String) {
    let meta = site.work.join(format!("{builder}-{tag}.json"));
    let reference = format!("{}/app/{tag}:1", site.registry);
    let m = meta.display().to_string();
    let mut args = vec!["build", "--progress", "plain", "--builder", builder, "--platform", "linux/amd64", "-t", &reference, "--push"];
    args.extend(["--metadata-file", &m]);
    args.extend_from_slice(extra);
    args.push(".");
    let out = match token {
        Some(t) => c.kiln_with_token(&args, site.src, t),
        None => c.kiln(&args, site.src),
    };
    let out = c.ok(out);
    (metadata(&meta), stderr(&out))
}

fn metadata(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("metadata file")).expect("metadata JSON")
}

/// Each platform's image manifest digest, as the metadata file reports them.
fn images(m: &serde_json::Value) -> Vec<String> {
    m["kiln.slices"].as_array().expect("slices").iter().map(|s| s["manifest_digest"].as_str().unwrap_or_default().to_string()).collect()
}

fn sum(m: &serde_json::Value, field: &str) -> u64 {
    m["kiln.slices"].as_array().expect("slices").iter().map(|s| s[field].as_u64().unwrap_or(0)).sum()
}

#[test]
fn agents_share_cache_within_a_tenant_only_and_storage_is_managed_farm_wide() {
    let _serial = serial();
    let registry = kiln_tests::Registry::start();
    let mut c = Cluster::start(1);
    c.add_agent("a", &["linux/amd64"], 2);
    c.add_agent("b", &["linux/amd64"], 2);
    let work = TempDir::new("peer-cache");
    // The base, built by the farm and pushed.
    let ctx = TempDir::new("peer-cache-base");
    for arch in ["amd64", "arm64"] {
        std::fs::copy(busybox().join(format!("busybox-{arch}")), ctx.path().join(format!("busybox-{arch}"))).expect("busybox");
    }
    ctx.write("Dockerfile", BASE_DOCKERFILE);
    let base = format!("{}/base/busybox:1", registry.addr);
    c.ok(c.kiln(&["build", "--platform", "linux/amd64", "-t", &base, "--push", "."], ctx.path()));
    c.ok(c.kiln(&["create", "a", "--name", "on-a"], work.path()));
    c.ok(c.kiln(&["create", "b", "--name", "on-b"], work.path()));
    let src = TempDir::new("peer-cache-app");
    app(src.path(), &base);
    let site = Site { work: work.path(), src: src.path(), registry: &registry.addr };
    let build = |c: &Cluster, builder: &str, tag: &str, token: Option<&str>| farm_build(c, &site, builder, tag, token, &[]);

    // Agent a builds; agent b then builds the same: every step comes from a, nothing runs.
    let (first, _) = build(&c, "on-a", "first", None);
    assert!(sum(&first, "cache_misses") >= 3, "{first}");
    let (second, log) = build(&c, "on-b", "second", None);
    assert_eq!(second["kiln.slices"][0]["agent"], "b", "{second}");
    assert_eq!(sum(&second, "cache_misses"), 0, "nothing runs on b:\n{second}\n{log}");
    assert_eq!(sum(&second, "cache_peer_hits"), sum(&second, "cache_hits"), "every hit came from a peer: {second}");
    assert!(sum(&second, "cache_peer_hits") >= 4, "{second}");
    // The same image, digest for digest (the index differs: each build's provenance names its agent and time).
    assert_eq!(images(&first), images(&second), "the same image, digest for digest");

    // Another tenant builds the same Dockerfile on b: no record of the first tenant is used,
    // and its context is uploaded again (a tenant owns only what it sent).
    let token = stdout(&c.ok(c.kiln(&["coordinator", "token", "--role", "user", "--tenant", "other"], work.path()))).trim().to_string();
    assert!(token.starts_with("K1"), "{token}");
    let (theirs, log) = build(&c, "on-b", "theirs", Some(&token));
    assert_eq!(sum(&theirs, "cache_peer_hits"), 0, "{theirs}");
    assert!(sum(&theirs, "cache_misses") >= 3, "the other tenant's steps run: {theirs}");
    assert!(log.contains("context: 2 files, 2 sent"), "the other tenant uploads its own context:\n{log}");
    // `kiln inspect` shows a user only their tenant's recent slices; an admin sees all.
    let count = |token: Option<&str>| {
        let out = match token {
            Some(t) => c.kiln_with_token(&["inspect", "on-b"], work.path(), t),
            None => c.kiln(&["inspect", "on-b"], work.path()),
        };
        stdout(&c.ok(out)).lines().filter(|l| l.trim_start().starts_with("build ")).count()
    };
    assert_eq!(count(Some(&token)), 1, "tenant other sees its one slice on b");
    assert_eq!(count(None), 2, "the admin sees both tenants' slices on b");
    let third = stdout(&c.ok(c.kiln(&["coordinator", "token", "--role", "user", "--tenant", "third"], work.path()))).trim().to_string();
    assert_eq!(count(Some(&third)), 0, "a tenant that built nothing sees no slice");
    // A builder configured to share lets tenants use each other's records.
    c.ok(c.kiln(&["create", "a", "--name", "shared", "--driver-opt", "share-cache=true"], work.path()));
    let (_, _) = build(&c, "shared", "shared-admin", None);
    let (shared_other, _) = build(&c, "shared", "shared-other", Some(&token));
    assert_eq!(sum(&shared_other, "cache_misses"), 0, "a sharing builder shares: {shared_other}");

    // `kiln du` across the farm, per agent.
    let du = stdout(&c.ok(c.kiln(&["du"], work.path())));
    assert!(du.contains("Agent:\t\ta") && du.contains("Agent:\t\tb") && du.contains("step cache records"), "{du}");
    // `kiln prune -a --builder on-b` empties b only; b then gets the records from a again.
    let pruned = stdout(&c.ok(c.kiln(&["prune", "-a", "-f", "--builder", "on-b"], work.path())));
    assert!(pruned.contains("Agent:\tb") && !pruned.contains("Agent:\ta"), "{pruned}");
    let du_b = stdout(&c.ok(c.kiln(&["du", "--builder", "on-b"], work.path())));
    let records: u64 = du_b
        .lines()
        .find(|l| l.starts_with("step cache records"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .expect("record count");
    assert_eq!(records, 0, "{du_b}");
    // The tracker is soft state: a restarted coordinator rebuilds it from the agents.
    c.coordinators[0].restart();
    c.leader();
    kiln_tests::wait_for("both agents to be back, with a's records in the new tracker", std::time::Duration::from_secs(60), || {
        let ctxs = c.contexts();
        let get = |n: &str| ctxs.iter().find(|x| x["name"] == n).cloned().unwrap_or_default();
        get("a")["status"] == "ready" && get("b")["status"] == "ready" && get("a")["cache_records"].as_u64().unwrap_or(0) > 0
    });
    let (again, _) = build(&c, "on-b", "again", None);
    assert_eq!(sum(&again, "cache_misses"), 0, "{again}");
    assert!(sum(&again, "cache_peer_hits") >= 4, "after the prune and a coordinator restart, b fetches from a again: {again}");

    // On a farm too: a local cache export comes back through the coordinator, and after every
    // agent is pruned, importing it makes the build fully cached.
    let dest = work.path().join("farm-cache");
    let to = format!("type=local,dest={},mode=max", dest.display());
    farm_build(&c, &site, "on-a", "export", None, &["--cache-to", &to]);
    assert!(dest.join("index.json").exists());
    c.ok(c.kiln(&["prune", "-a", "-f"], work.path()));
    let from = format!("type=local,src={}", dest.display());
    let (imported, log) = farm_build(&c, &site, "on-b", "import", None, &["--cache-from", &from]);
    assert_eq!(sum(&imported, "cache_misses"), 0, "{imported}\n{log}");
    assert_eq!(images(&imported), images(&first));
}

#[test]
fn caches_export_and_import_locally_and_through_a_registry() {
    let _serial = serial();
    let registry = kiln_tests::Registry::start();
    let home = TempDir::new("cache-export-home");
    let base = base_image(&registry, home.path());
    let src = TempDir::new("cache-export-app");
    app(src.path(), &base);
    let dir = TempDir::new("cache-export-dir");
    let dest = dir.path().join("cache");
    let cache_ref = format!("{}/cache/app:buildcache", registry.addr);
    let build = |home: &Path, extra: &[&str], meta: &str| -> serde_json::Value {
        let meta = dir.path().join(meta);
        let mut args = vec!["build", "--platform", "linux/amd64,linux/arm64", "--metadata-file"];
        let m = meta.display().to_string();
        args.push(&m);
        args.extend_from_slice(extra);
        args.push(".");
        ok(kiln(home, &args, src.path()));
        metadata(&meta)
    };
    // Both platforms' records go into one cache, locally and in the registry.
    let local_to = format!("type=local,dest={},mode=max", dest.display());
    let built = build(home.path(), &["--cache-to", &local_to], "built.json");
    assert!(sum(&built, "cache_misses") >= 6, "{built}");
    let reg_to = format!("type=registry,ref={cache_ref},mode=max");
    build(home.path(), &["--cache-to", &reg_to], "pushed.json");
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(dest.join("index.json")).expect("index.json")).expect("index");
    assert_eq!(index["manifests"].as_array().map(Vec::len), Some(1), "{index}");
    // skopeo, an independent judge, reads both as OCI images.
    let out =
        std::process::Command::new("skopeo").args(["inspect", "--raw", &format!("oci:{}", dest.display())]).bounded().expect("skopeo");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--raw", &format!("docker://{cache_ref}")])
        .bounded()
        .expect("skopeo");
    assert!(out.status.success(), "{}", stderr(&out));

    // A fresh agent (a new home) imports either cache: every step of both platforms is cached.
    for (name, from) in [("local", format!("type=local,src={}", dest.display())), ("registry", format!("type=registry,ref={cache_ref}"))] {
        let fresh = TempDir::new(&format!("cache-import-{name}"));
        let m = build(fresh.path(), &["--cache-from", &from], &format!("import-{name}.json"));
        assert_eq!(sum(&m, "cache_misses"), 0, "import from {name}: {m}");
        assert_eq!(m["containerimage.digest"], built["containerimage.digest"], "import from {name}");
    }
    // A cache that is not there is a warning, as in buildx; the build still runs.
    let fresh = TempDir::new("cache-import-missing");
    let out = kiln(fresh.path(), &["build", "--platform", "linux/amd64", "--cache-from", "type=local,src=/nonexistent", "."], src.path());
    assert!(out.status.success() && stderr(&out).contains("WARNING: importing cache"), "{}", stderr(&out));
    // Bad specs are refused with the reason.
    let out = kiln(fresh.path(), &["build", "--cache-to", "type=inline", "."], src.path());
    assert!(stderr(&out).contains("type=inline is not supported"), "{}", stderr(&out));
    let out = kiln(fresh.path(), &["build", "--cache-to", "type=local,mode=max", "."], src.path());
    assert!(stderr(&out).contains("type=local needs dest=DIR"), "{}", stderr(&out));
}
