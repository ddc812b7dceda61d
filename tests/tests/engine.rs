//! The build engine end to end, as root, with the real runc, qemu, docker-registry, skopeo and
//! umoci: base images built by kiln from Debian's busybox-static, multi-platform builds pushed
//! to a loopback registry, images run with runc, the step cache, outputs and error cases.

use base64::Engine as _;
use kiln_tests::Bounded;
use kiln_tests::{base_image, kiln, ok, stderr, Registry, TempDir};
use std::path::Path;
use std::process::{Command, Output};

fn metadata(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("metadata file")).expect("metadata JSON")
}

fn sum(meta: &serde_json::Value, field: &str) -> u64 {
    meta["kiln.slices"].as_array().expect("slices").iter().map(|s| s[field].as_u64().unwrap_or(0)).sum()
}

/// Every blob in the store hashes to its name and nothing is left half-written.
fn assert_store_consistent(home: &Path) {
    let blobs = home.join("agent/content/blobs/sha256");
    for e in std::fs::read_dir(&blobs).expect("blobs dir").flatten() {
        let bytes = std::fs::read(e.path()).expect("blob");
        let d = kiln_shared::Digest::of(&bytes);
        assert_eq!(d.hex(), e.file_name().to_string_lossy(), "corrupt blob {}", e.path().display());
    }
    let tmp: Vec<_> = std::fs::read_dir(home.join("agent/content/tmp")).expect("tmp dir").flatten().collect();
    assert!(tmp.is_empty(), "temporary files left in the store: {tmp:?}");
}

fn skopeo(args: &[&str]) -> Output {
    let out = Command::new("skopeo").args(args).bounded().expect("skopeo (apt-get install skopeo)");
    assert!(out.status.success(), "skopeo {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Copies one platform of `src` into an OCI dir, unpacks it with umoci and runs `args` with runc.
fn run_image(src: &str, arch: &str, args: &[&str], work: &Path) -> String {
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let work = &work.join(format!("run-{n}"));
    std::fs::create_dir_all(work).expect("run dir");
    let layout = work.join(format!("oci-{arch}"));
    skopeo(&["copy", "-q", "--src-tls-verify=false", "--override-arch", arch, src, &format!("oci:{}:img", layout.display())]);
    let bundle = work.join(format!("bundle-{arch}"));
    let out = Command::new("umoci")
        .args(["unpack", "--image", &format!("{}:img", layout.display())])
        .arg(&bundle)
        .bounded()
        .expect("umoci (apt-get install umoci)");
    assert!(out.status.success(), "umoci: {}", String::from_utf8_lossy(&out.stderr));
    let cfg_path = bundle.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).expect("config.json")).expect("json");
    cfg["process"]["args"] = serde_json::json!(args);
    cfg["process"]["terminal"] = serde_json::json!(false);
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).expect("json")).expect("write config");
    let id = format!("kiln-test-{arch}-{}-{n}", std::process::id());
    let out = Command::new("runc")
        .args(["--root"])
        .arg(work.join("runc-state"))
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .bounded()
        .expect("runc");
    assert!(out.status.success(), "runc: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn multi_platform_build_is_pushed_runs_natively_and_under_qemu() {
    let home = TempDir::new("home");
    let reg = Registry::start();
    let base = base_image(&reg, home.path());
    let ctx = TempDir::new("ctx");
    ctx.write("app.txt", "hello\n");
    ctx.write(
        "Dockerfile",
        "ARG BASE\nFROM ${BASE} AS build\nRUN uname -m > /built && mkdir -p /tmp && echo temp > /tmp/gone\nRUN rm /tmp/gone\nCOPY app.txt /app/\n\
         FROM ${BASE}\nCOPY --from=build /built /built\nCOPY --from=build /app/ /app/\nRUN echo doomed > /doomed\nRUN rm /doomed && echo kept > /kept\nCMD [\"cat\", \"/built\"]\n",
    );
    let tag = format!("{}/e2e/app:1", reg.addr);
    let meta_path = ctx.path().join("meta.json");
    let out = ok(kiln(
        home.path(),
        &[
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/amd64,linux/arm64",
            "--build-arg",
            &format!("BASE={base}"),
            "-t",
            &tag,
            "--push",
            "--metadata-file",
            meta_path.to_str().unwrap_or_default(),
            ".",
        ],
        ctx.path(),
    ));
    // Steps are labelled with the agent that runs them: `[embedded linux/arm64 build 2/4]`.
    assert!(stderr(&out).contains(" linux/arm64 build 2/4] RUN uname -m > /built"), "{}", stderr(&out));
    let meta = metadata(&meta_path);
    let slices = meta["kiln.slices"].as_array().expect("slices");
    assert_eq!(slices.len(), 2);
    assert_eq!(slices[1]["platform"], "linux/arm64");
    assert_eq!(slices[1]["emulated"], true, "arm64 runs under qemu on this amd64 host");

    // The registry holds one index with both platforms, then (buildx's default for a push)
    // each one's provenance in an attestation manifest.
    let raw = skopeo(&["inspect", "--raw", "--tls-verify=false", &format!("docker://{tag}")]);
    let index: serde_json::Value = serde_json::from_slice(&raw.stdout).expect("index JSON");
    assert_eq!(index["mediaType"], "application/vnd.oci.image.index.v1+json");
    let archs: Vec<&str> =
        index["manifests"].as_array().expect("manifests").iter().map(|m| m["platform"]["architecture"].as_str().unwrap_or("")).collect();
    assert_eq!(archs, vec!["amd64", "arm64", "unknown", "unknown"]);
    assert_eq!(index_digest_of(&raw.stdout), meta["containerimage.digest"].as_str().unwrap_or_default());

    // Each platform's image runs with runc and was really built by its own architecture.
    let work = TempDir::new("run");
    let src = format!("docker://{tag}");
    assert_eq!(run_image(&src, "amd64", &["cat", "/built"], work.path()), "x86_64");
    assert_eq!(run_image(&src, "arm64", &["cat", "/built"], work.path()), "aarch64");
    assert_eq!(run_image(&src, "arm64", &["uname", "-m"], work.path()), "aarch64");
    // Files deleted by a later step are gone, within a stage and across layers.
    assert_eq!(
        run_image(&src, "amd64", &["sh", "-c", "ls /doomed /tmp/gone 2>&1; cat /kept /app/app.txt"], work.path())
            .lines()
            .filter(|l| l.contains("No such file"))
            .count(),
        2
    );
    assert_store_consistent(home.path());
}

fn index_digest_of(bytes: &[u8]) -> String {
    kiln_shared::Digest::of(bytes).to_string()
}

#[test]
fn step_cache_rebuilds_nothing_and_invalidates_from_the_changed_file() {
    let home = TempDir::new("home");
    let reg = Registry::start();
    let base = base_image(&reg, home.path());
    let ctx = TempDir::new("ctx");
    ctx.write("a.txt", "a\n");
    ctx.write("b.txt", "b\n");
    ctx.write("Dockerfile", &format!("FROM {base}\nCOPY a.txt /a\nRUN cat /a > /a2\nCOPY b.txt /b\nRUN cat /b > /b2\nENV DONE=1\n"));
    let meta = ctx.path().join("m.json");
    let args = [
        "build",
        "--progress",
        "plain",
        "--platform",
        "linux/amd64,linux/arm64",
        "--metadata-file",
        meta.to_str().unwrap_or_default(),
        ".",
    ];
    ok(kiln(home.path(), &args, ctx.path()));
    assert_eq!(sum(&metadata(&meta), "cache_misses"), 10);
    let first = metadata(&meta)["containerimage.digest"].clone();

    // Unchanged: nothing runs, every step says CACHED, the same image comes out.
    let out = ok(kiln(home.path(), &args, ctx.path()));
    assert_eq!(sum(&metadata(&meta), "cache_misses"), 0);
    assert_eq!(sum(&metadata(&meta), "cache_hits"), 10);
    assert_eq!(stderr(&out).matches(" CACHED").count(), 10);
    assert_eq!(metadata(&meta)["containerimage.digest"], first);

    // Touching a file without changing it keeps the cache (content, not mtime, counts).
    std::fs::write(ctx.path().join("a.txt"), "a\n").expect("rewrite");
    ok(kiln(home.path(), &args, ctx.path()));
    assert_eq!(sum(&metadata(&meta), "cache_misses"), 0);

    // Changing b.txt re-runs COPY b.txt and what follows, per platform: 3 steps each.
    ctx.write("b.txt", "b2\n");
    ok(kiln(home.path(), &args, ctx.path()));
    assert_eq!(sum(&metadata(&meta), "cache_misses"), 6);
    assert_eq!(sum(&metadata(&meta), "cache_hits"), 4);

    // --no-cache runs everything.
    let mut no_cache = args.to_vec();
    no_cache.insert(1, "--no-cache");
    ok(kiln(home.path(), &no_cache, ctx.path()));
    assert_eq!(sum(&metadata(&meta), "cache_misses"), 10);
}

#[test]
fn oci_archive_and_local_outputs() {
    let home = TempDir::new("home");
    let reg = Registry::start();
    let base = base_image(&reg, home.path());
    let ctx = TempDir::new("ctx");
    ctx.write("Dockerfile", &format!("FROM {base}\nWORKDIR /srv/app\nRUN echo hi > greeting && ln -s greeting link\nUSER 1000\nENTRYPOINT [\"cat\"]\nCMD [\"greeting\"]\n"));
    let archive = ctx.path().join("img.tar");
    let local = ctx.path().join("out");
    ok(kiln(
        home.path(),
        &[
            "build",
            "--progress",
            "quiet",
            "--platform",
            "linux/amd64,linux/arm64",
            "-t",
            "example/app:1",
            "-o",
            &format!("type=oci,dest={}", archive.display()),
            "-o",
            &format!("type=local,dest={}", local.display()),
            ".",
        ],
        ctx.path(),
    ));
    let raw = skopeo(&["inspect", "--raw", &format!("oci-archive:{}", archive.display())]);
    let index: serde_json::Value = serde_json::from_slice(&raw.stdout).expect("json");
    // Two images and, as buildx does for an OCI output, their provenance.
    assert_eq!(index["manifests"].as_array().map(Vec::len), Some(4));
    let cfg = skopeo(&["inspect", "--config", "--override-arch", "arm64", &format!("oci-archive:{}:example/app:1", archive.display())]);
    let cfg: serde_json::Value = serde_json::from_slice(&cfg.stdout).expect("json");
    assert_eq!(cfg["architecture"], "arm64");
    assert_eq!(cfg["config"]["WorkingDir"], "/srv/app");
    assert_eq!(cfg["config"]["User"], "1000");
    assert_eq!(cfg["config"]["Entrypoint"], serde_json::json!(["cat"]));
    assert_eq!(cfg["config"]["Cmd"], serde_json::json!(["greeting"]));
    for p in ["linux_amd64", "linux_arm64"] {
        assert_eq!(std::fs::read_to_string(local.join(p).join("srv/app/greeting")).expect("greeting"), "hi\n");
        assert_eq!(std::fs::read_link(local.join(p).join("srv/app/link")).expect("link"), Path::new("greeting"));
        assert!(local.join(p).join("bin/busybox").exists());
    }
}

#[test]
fn errors_are_one_line_explanations_and_leave_the_store_consistent() {
    let home = TempDir::new("home");
    let reg = Registry::start();
    let base = base_image(&reg, home.path());
    let ctx = TempDir::new("ctx");
    let run = |dockerfile: &str, extra: &[&str]| {
        ctx.write("Dockerfile", dockerfile);
        let mut args = vec!["build", "--progress", "plain"];
        args.extend_from_slice(extra);
        args.push(".");
        kiln(home.path(), &args, ctx.path())
    };
    let last_line = |o: &Output| stderr(o).lines().last().unwrap_or_default().to_string();

    let out = run(&format!("FROM {base}\nCOPY nope.txt /\n"), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        last_line(&out)
            .contains("./Dockerfile:2: COPY source \"nope.txt\" not found: it is not in the build context or is excluded by .dockerignore"),
        "{}",
        stderr(&out)
    );

    let out = run(&format!("FROM {base}\nRUN echo failing-output-line && exit 3\n"), &["--platform", "linux/arm64"]);
    assert_eq!(out.status.code(), Some(1));
    let err = last_line(&out);
    assert!(err.starts_with("error: [linux/arm64 stage-0] ./Dockerfile:2: process \"/bin/sh -c echo failing-output-line && exit 3\" did not complete successfully: exit code: 3"), "{err}");
    assert!(stderr(&out).contains("failing-output-line"), "the failed command's output is shown");

    let out = run(&format!("FROM {base}\n"), &["--platform", "linux/sparc"]);
    assert!(last_line(&out).starts_with("error: unknown platform \"linux/sparc\""), "{}", stderr(&out));

    let dead = format!("127.0.0.1:{}", kiln_tests::free_port());
    let out = run(&format!("FROM {dead}/nothing:1\n"), &[]);
    assert!(last_line(&out).contains(&format!("registry {dead} is unreachable")), "{}", stderr(&out));

    let out = run(&format!("FROM {}/missing/image:1\n", reg.addr), &[]);
    assert!(last_line(&out).contains("not found in registry"), "{}", stderr(&out));
    assert_store_consistent(home.path());
}

#[test]
fn registry_credentials_basic_auth() {
    let home = TempDir::new("home");
    let open = Registry::start();
    let base = base_image(&open, home.path());
    let locked = Registry::start_with_auth("kiln", "s3cret");
    let ctx = TempDir::new("ctx");
    ctx.write("Dockerfile", &format!("FROM {base}\nRUN echo ok > /ok\n"));
    let docker_config = TempDir::new("docker-config");
    let tag = format!("{}/private/app:1", locked.addr);
    let push = |user: &str, pass: &str| {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        docker_config.write("config.json", &format!("{{\"auths\":{{\"{}\":{{\"auth\":\"{auth}\"}}}}}}", locked.addr));
        Command::new(kiln_tests::kiln_bin())
            .args(["build", "--progress", "plain", "--platform", "linux/amd64", "-t", &tag, "--push", "."])
            .env("KILN_HOME", home.path())
            .env("DOCKER_CONFIG", docker_config.path())
            .current_dir(ctx.path())
            .bounded()
            .expect("kiln")
    };
    let out = push("kiln", "wrong");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out)
            .lines()
            .last()
            .unwrap_or_default()
            .contains(&format!("registry {} refused the credentials for private/app", locked.addr)),
        "{}",
        stderr(&out)
    );
    ok(push("kiln", "s3cret"));
}
