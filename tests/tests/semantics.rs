//! Instruction semantics on the real engine: what each image ends up containing and declaring.

use kiln_tests::Bounded;
use kiln_tests::{base_image, kiln, ok, stderr, Registry, TempDir};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

struct Env {
    home: TempDir,
    _reg: Registry,
    base: String,
    ctx: TempDir,
}

fn env() -> Env {
    let home = TempDir::new("home");
    let reg = Registry::start();
    let base = base_image(&reg, home.path());
    Env { home, _reg: reg, base, ctx: TempDir::new("ctx") }
}

impl Env {
    /// Builds the context for `platform` into a local directory and an OCI archive.
    fn build(&self, dockerfile: &str, platform: &str, extra: &[&str]) -> (std::path::PathBuf, serde_json::Value) {
        self.ctx.write("Dockerfile", &dockerfile.replace("BASE", &self.base));
        let out = self.ctx.path().join("out");
        let _ = std::fs::remove_dir_all(&out);
        let archive = self.ctx.path().join("img.tar");
        let mut args = vec!["build", "--progress", "plain", "--platform", platform, "-t", "t/t:1"];
        let o1 = format!("type=local,dest={}", out.display());
        let o2 = format!("type=oci,dest={}", archive.display());
        args.extend(["-o", &o1, "-o", &o2]);
        args.extend_from_slice(extra);
        args.push(".");
        ok(kiln(self.home.path(), &args, self.ctx.path()));
        let arch = platform.split('/').nth(1).unwrap_or("amd64");
        let cfg = Command::new("skopeo")
            .args(["inspect", "--config", "--raw", "--override-arch", arch])
            .arg(format!("oci-archive:{}:t/t:1", archive.display()))
            .bounded()
            .expect("skopeo");
        assert!(cfg.status.success(), "{}", String::from_utf8_lossy(&cfg.stderr));
        (out, serde_json::from_slice(&cfg.stdout).expect("config json"))
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn config_instructions_follow_docker() {
    let e = env();
    let (_, cfg) = e.build(
        "FROM BASE\nENV A=1 B=\"two words\"\nLABEL org.example.x=y\nEXPOSE 80 53/udp\nVOLUME /data\nSTOPSIGNAL SIGQUIT\nHEALTHCHECK --interval=5s --retries=2 CMD true\nSHELL [\"/bin/sh\", \"-ec\"]\nONBUILD RUN echo later\nUSER 123:456\nWORKDIR /w\nENTRYPOINT [\"echo\"]\n",
        "linux/amd64",
        &[],
    );
    let c = &cfg["config"];
    assert!(c["Env"].as_array().expect("env").contains(&serde_json::json!("B=two words")));
    assert_eq!(c["Labels"]["org.example.x"], "y");
    assert_eq!(c["ExposedPorts"], serde_json::json!({"80/tcp": {}, "53/udp": {}}));
    assert_eq!(c["Volumes"], serde_json::json!({"/data": {}}));
    assert_eq!(c["StopSignal"], "SIGQUIT");
    assert_eq!(c["Healthcheck"]["Test"], serde_json::json!(["CMD-SHELL", "true"]));
    assert_eq!(c["Healthcheck"]["Interval"], 5_000_000_000u64);
    assert_eq!(c["Healthcheck"]["Retries"], 2);
    assert_eq!(c["Shell"], serde_json::json!(["/bin/sh", "-ec"]));
    assert_eq!(c["OnBuild"], serde_json::json!(["RUN echo later"]));
    assert_eq!(c["User"], "123:456");
    assert_eq!(c["WorkingDir"], "/w");
    // ENTRYPOINT clears the CMD inherited from the base image.
    assert_eq!(c["Entrypoint"], serde_json::json!(["echo"]));
    assert!(c["Cmd"].is_null(), "{c}");
    // Every step has a history entry; only the filesystem changes have layers.
    let history = cfg["history"].as_array().expect("history");
    let layers = cfg["rootfs"]["diff_ids"].as_array().expect("diff_ids").len();
    assert_eq!(history.iter().filter(|h| h["empty_layer"] != true).count(), layers);
}

#[test]
fn copy_add_run_and_mounts() {
    let e = env();
    e.ctx.write("dir/one.txt", "1\n");
    e.ctx.write("dir/sub/two.txt", "2\n");
    e.ctx.write("skip.log", "x\n");
    e.ctx.write("keep.log", "k\n");
    e.ctx.write(".dockerignore", "*.log\n!keep.log\n");
    // A tar archive for ADD to extract.
    let t = TempDir::new("tar");
    t.write("payload/inside.txt", "from tar\n");
    let st = Command::new("tar")
        .arg("-czf")
        .arg(e.ctx.path().join("payload.tar.gz"))
        .arg("-C")
        .arg(t.path())
        .arg("payload")
        .status()
        .expect("tar");
    assert!(st.success());
    let (out, _) = e.build(
        "FROM BASE\nCOPY dir /copied/\nCOPY --chown=1000:1001 --chmod=0640 dir/one.txt /owned\nCOPY *.log /logs/\nADD payload.tar.gz /extracted/\n\
         RUN --network=none ls /sys/class/net > /net-none\n\
         RUN --mount=type=cache,target=/cache sh -c 'echo run >> /cache/log; wc -l < /cache/log > /cache-count'\n\
         RUN --mount=type=bind,source=dir,target=/ctx cat /ctx/sub/two.txt > /from-bind\n\
         RUN <<EOF\n#!/bin/sh\necho \"script $0\" > /script-ran\nEOF\n\
         COPY <<EOF /inline.txt\nhello $HOSTNAME-literal\nEOF\n",
        "linux/arm64",
        &[],
    );
    assert_eq!(read(&out.join("copied/one.txt")), "1\n");
    assert_eq!(read(&out.join("copied/sub/two.txt")), "2\n", "a directory source copies its contents");
    let m = std::fs::metadata(out.join("owned")).expect("owned");
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (1000, 1001, 0o640));
    assert!(out.join("logs/keep.log").exists() && !out.join("logs/skip.log").exists(), ".dockerignore applies to COPY");
    assert_eq!(read(&out.join("extracted/payload/inside.txt")), "from tar\n", "ADD extracts local archives");
    assert_eq!(read(&out.join("net-none")).trim(), "lo", "--network=none has only loopback");
    assert_eq!(read(&out.join("from-bind")), "2\n");
    assert_eq!(read(&out.join("script-ran")).trim(), "script /dev/pipes/EOF");
    assert_eq!(read(&out.join("inline.txt")), "hello -literal\n");
    // As BuildKit: the mount targets stay as empty directories; what was mounted does not.
    for target in ["cache", "ctx"] {
        let entries = std::fs::read_dir(out.join(target)).map(|d| d.count()).unwrap_or(usize::MAX);
        assert_eq!(entries, 0, "/{target} stays in the image, empty");
    }
    assert!(!out.join("proc").join("1").exists());
    // The cache mount survives into the next build.
    let (out, _) = e.build(
        "FROM BASE\nRUN --mount=type=cache,target=/cache sh -c 'echo run >> /cache/log; wc -l < /cache/log > /cache-count'\n",
        "linux/arm64",
        &["--no-cache"],
    );
    assert_eq!(read(&out.join("cache-count")).trim(), "2");
}

#[test]
fn equal_inputs_give_equal_digests_with_source_date_epoch() {
    let e = env();
    e.ctx.write("f.txt", "same\n");
    e.ctx.write("Dockerfile", &format!("FROM {}\nCOPY f.txt /f\nRUN echo built > /built-at && mkdir -p /d && echo x > /d/y\n", e.base));
    let digest = |home: &Path| {
        let meta = e.ctx.path().join("m.json");
        let out = Command::new(kiln_tests::kiln_bin())
            .args(["build", "--progress", "quiet", "--platform", "linux/amd64,linux/arm64", "--metadata-file"])
            .arg(&meta)
            .arg(".")
            .env("KILN_HOME", home)
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .current_dir(e.ctx.path())
            .bounded()
            .expect("kiln");
        ok(out);
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).expect("meta")).expect("json");
        v["containerimage.digest"].as_str().unwrap_or_default().to_string()
    };
    let other = TempDir::new("home2");
    assert_eq!(digest(e.home.path()), digest(other.path()));
}

#[test]
fn a_platform_the_host_cannot_run_is_refused_with_the_fix() {
    let e = env();
    e.ctx.write("Dockerfile", &format!("FROM {}\nRUN true\n", e.base));
    let out = kiln(e.home.path(), &["build", "--platform", "linux/s390x", "."], e.ctx.path());
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    // The embedded farm refuses it as any farm does: no agent runs it, and how to fix that.
    assert!(err.contains("can run linux/s390x (natively or under emulation)") && err.contains("qemu-user-static"), "{err}");
    // An image that lacks the platform says what it has.
    let out = kiln(e.home.path(), &["build", "--platform", "linux/riscv64", "."], e.ctx.path());
    assert!(stderr(&out).contains("has no linux/riscv64 variant (it has: linux/amd64, linux/arm64)"), "{}", stderr(&out));
}

#[test]
fn independent_stages_run_side_by_side() {
    let e = env();
    e.ctx.write(
        "Dockerfile",
        &format!("FROM {b} AS one\nRUN sleep 1 && echo 1 > /one\nFROM {b} AS two\nRUN sleep 1 && echo 2 > /two\nFROM {b}\nCOPY --from=one /one /\nCOPY --from=two /two /\n", b = e.base),
    );
    let out = ok(kiln(e.home.path(), &["build", "--progress", "plain", "--platform", "linux/amd64", "."], e.ctx.path()));
    let log = stderr(&out);
    let lines: Vec<&str> = log.lines().collect();
    let start = |stage: &str| lines.iter().position(|l| l.contains(&format!("{stage} 2/2] RUN sleep 1"))).expect("step started");
    let number = |i: usize| lines[i].split_whitespace().next().unwrap_or_default().to_string();
    let (a, b) = (start("one"), start("two"));
    let done = |n: &str| lines.iter().position(|l| l.starts_with(&format!("{n} DONE"))).expect("step done");
    // Both RUN steps started before either finished.
    assert!(a.max(b) < done(&number(a)).min(done(&number(b))), "{log}");
}

#[test]
fn zstd_outputs_and_zstd_base_images() {
    let e = env();
    e.ctx.write("Dockerfile", &format!("FROM {}\nRUN echo zstd > /z\n", e.base));
    let archive = e.ctx.path().join("z.tar");
    let tag = format!("{}/zstd/app:1", e._reg.addr);
    ok(kiln(
        e.home.path(),
        &[
            "build",
            "--progress",
            "quiet",
            "--platform",
            "linux/amd64,linux/arm64",
            "-t",
            &tag,
            "-o",
            &format!("type=oci,dest={},compression=zstd", archive.display()),
            "-o",
            "type=registry,compression=zstd",
            ".",
        ],
        e.ctx.path(),
    ));
    let raw = Command::new("skopeo")
        .args(["inspect", "--raw", "--override-arch", "arm64"])
        .arg(format!("oci-archive:{}", archive.display()))
        .bounded()
        .expect("skopeo");
    let index: serde_json::Value = serde_json::from_slice(&raw.stdout).expect("index");
    // Two images, then their attestation manifests (default provenance).
    assert_eq!(index["manifests"].as_array().map(Vec::len), Some(4));
    let m = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", "--override-arch", "arm64"])
        .arg(format!("docker://{tag}"))
        .bounded()
        .expect("skopeo");
    let idx: serde_json::Value = serde_json::from_slice(&m.stdout).expect("index");
    let digest = idx["manifests"][1]["digest"].as_str().expect("digest").to_string();
    let repo = tag.rsplit_once(':').map(|x| x.0).unwrap_or_default();
    let m = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{repo}@{digest}"))
        .bounded()
        .expect("skopeo");
    let manifest: serde_json::Value = serde_json::from_slice(&m.stdout).expect("manifest");
    assert!(
        manifest["layers"].as_array().expect("layers").iter().all(|l| l["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"),
        "{manifest}"
    );
    // A zstd image is a good base: its layers are pulled and unpacked.
    let (out, _) = e.build(&format!("FROM {tag}\nRUN cat /z > /copy\n"), "linux/arm64", &[]);
    assert_eq!(read(&out.join("copy")), "zstd\n");
}

#[test]
fn add_from_a_url_checks_its_checksum() {
    let e = env();
    let body = b"downloaded content\n".to_vec();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let served = body.clone();
    // A minimal HTTP server for two requests (the good and the bad checksum build).
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in listener.incoming().take(2) {
            let mut s = stream.expect("conn");
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", served.len());
            let _ = s.write_all(&served);
        }
    });
    let sum = kiln_shared::Digest::of(&body);
    let (out, _) = e.build(&format!("FROM BASE\nADD --checksum={sum} http://127.0.0.1:{port}/files/data.txt /dl/\n"), "linux/amd64", &[]);
    assert_eq!(read(&out.join("dl/data.txt")), "downloaded content\n");
    let wrong = kiln_shared::Digest::of(b"other");
    e.ctx.write("Dockerfile", &format!("FROM {}\nADD --checksum={wrong} http://127.0.0.1:{port}/files/data.txt /dl/\n", e.base));
    let o = kiln(e.home.path(), &["build", "--platform", "linux/amd64", "--no-cache", "."], e.ctx.path());
    assert!(
        stderr(&o).contains(&format!("digest mismatch for http://127.0.0.1:{port}/files/data.txt: expected {wrong}")),
        "{}",
        stderr(&o)
    );
    server.join().expect("server");
}

#[test]
fn images_with_many_layers_build() {
    let e = env();
    // 60 filesystem-changing steps: more lower directories than full snapshot paths fit in
    // overlay's mount options.
    let mut df = format!("FROM {}\n", e.base);
    for i in 0..60 {
        df.push_str(&format!("RUN echo {i} > /f{i}\n"));
    }
    df.push_str("RUN cat /f0 /f59 > /ends\n");
    let (out, cfg) = e.build(&df, "linux/amd64", &[]);
    assert_eq!(read(&out.join("ends")), "0\n59\n");
    assert_eq!(cfg["rootfs"]["diff_ids"].as_array().map(Vec::len), Some(63));
}

/// A cross-compiling Dockerfile (every RUN on the build platform) is not emulated for a
/// foreign target, and the metadata says which steps were.
#[test]
fn a_cross_compile_is_not_emulated() {
    let e = env();
    e.ctx.write(
        "Dockerfile",
        &format!(
            "FROM --platform=$BUILDPLATFORM {} AS build\nRUN uname -m > /built-on\nFROM {}\nCOPY --from=build /built-on /built-on\n",
            e.base, e.base
        ),
    );
    let meta = e.ctx.path().join("m.json");
    let out = Command::new(kiln_tests::kiln_bin())
        .args(["build", "--progress", "plain", "--platform", "linux/arm64", "--metadata-file"])
        .arg(&meta)
        .arg(".")
        .env("KILN_HOME", e.home.path())
        .current_dir(e.ctx.path())
        .bounded()
        .expect("kiln");
    ok(out);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).expect("meta")).expect("json");
    let s = &v["kiln.slices"][0];
    assert_eq!(s["platform"], "linux/arm64");
    assert_eq!(s["emulated"], false, "the RUN ran on the build platform: {s}");
    assert_eq!(s["emulated_steps"], serde_json::json!([]), "{s}");
}

/// Twelve `kiln build` processes on one `$KILN_HOME` at once: every one succeeds (they take
/// turns on the embedded farm; probes and scratch paths are per process).
#[test]
fn twelve_concurrent_builds_on_one_home() {
    let e = env();
    let children: Vec<(usize, TempDir, std::process::Child)> = (0..12)
        .map(|i| {
            let ctx = TempDir::new(&format!("concurrent-{i}"));
            ctx.write("Dockerfile", &format!("FROM {}\nRUN echo {i} > /n\n", e.base));
            let child = Command::new(kiln_tests::kiln_bin())
                .args(["build", "--progress", "quiet", "--platform", "linux/amd64,linux/arm64", "."])
                .env("KILN_HOME", e.home.path())
                .current_dir(ctx.path())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("kiln build");
            (i, ctx, child)
        })
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(240);
    for (i, _ctx, mut child) in children {
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                let out = child.wait_with_output().expect("output");
                assert!(status.success(), "build {i} failed: {}", String::from_utf8_lossy(&out.stderr));
                break;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("build {i} did not finish within 240 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}
