//! One build path: the same assertions against the embedded farm and a three-coordinator farm.
//!
//! Each check builds with `kiln` on a [`Target`] and looks only at what a user sees: the
//! outputs, the registry, the build context afterwards and the metadata file. The embedded farm
//! must behave exactly as the farm does (DESIGN.md: a behaviour that differs is a bug).

use kiln_tests::target::{farm, Target};
use kiln_tests::Bounded;
use kiln_tests::{base_image, kiln_bin, stderr, Registry, TempDir};
use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

/// Every path under `root` with its type, mode, owner and content (or link target).
fn tree(root: &Path) -> BTreeMap<Vec<u8>, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<Vec<u8>, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).expect("read dir").flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).expect("stat");
            let rel = p.strip_prefix(root).expect("inside").as_os_str().as_bytes().to_vec();
            let what = if m.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&p).expect("link").display())
            } else if m.is_dir() {
                "dir".to_string()
            } else if m.file_type().is_fifo() {
                "fifo".to_string()
            } else {
                format!("file {}", String::from_utf8_lossy(&std::fs::read(&p).expect("read")))
            };
            out.insert(rel, format!("{what} {:o} {}:{}", m.mode() & 0o7777, m.uid(), m.gid()));
            if m.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn metadata(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("metadata file")).expect("metadata JSON")
}

/// The context every check builds: `.dockerignore`d files, a non-UTF-8 name, a FIFO.
fn context(dir: &Path, base: &str) {
    let w = |rel: &str, text: &str| {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    };
    w(".dockerignore", "secret.txt\nlogs/\n*.tmp\n!keep.tmp\n");
    w("keep.txt", "kept\n");
    w("secret.txt", "must not be sent\n");
    w("logs/today.log", "log\n");
    w("a.tmp", "tmp\n");
    w("keep.tmp", "exception\n");
    w("sub/inner.txt", "inner\n");
    std::fs::write(dir.join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt")), "latin-1 name\n").expect("non-UTF-8 name");
    let fifo = Command::new("mkfifo").args(["-m", "640"]).arg(dir.join("pipe")).status().expect("mkfifo");
    assert!(fifo.success());
    w(
        "Dockerfile",
        &format!(
            "FROM {base}\n\
             COPY . /ctx/\n\
             ADD sub /added/\n\
             COPY --from={base} /bin/busybox /from-base\n\
             RUN --mount=type=bind,target=/src ls -a /src | sort > /bind-listing\n\
             RUN --mount=type=bind,target=/src,rw rm /src/keep.txt && echo changed > /src/sub/inner.txt && touch /src/new && echo ok > /rw-done\n"
        ),
    );
}

/// Each platform's image manifest digest, as the metadata file reports them.
fn images(m: &serde_json::Value) -> Vec<String> {
    m["kiln.slices"].as_array().expect("slices").iter().map(|s| s["manifest_digest"].as_str().unwrap_or_default().to_string()).collect()
}

/// The checks of one target; returns each platform's image manifest digest.
fn check(t: &Target, base: &str, registry: &Registry) -> Vec<String> {
    let work = TempDir::new(&format!("paths-{}", t.name()));
    let ctx = work.path().join("ctx");
    std::fs::create_dir_all(&ctx).expect("ctx");
    context(&ctx, base);
    let before = tree(&ctx);
    let local = work.path().join("local");
    let oci = work.path().join("image.tar");
    let meta = work.path().join("meta.json");
    let tag = format!("{}/paths/{}:1", registry.addr, t.name());
    let (l, o, m) = (local.display().to_string(), oci.display().to_string(), meta.display().to_string());
    let out = t.ok(
        &[
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/amd64,linux/arm64",
            "-o",
            &format!("type=local,dest={l}"),
            "-o",
            &format!("type=oci,dest={o}"),
            "-t",
            &tag,
            "--push",
            "--metadata-file",
            &m,
            "--label",
            "org.example.team=platform",
            ".",
        ],
        &ctx,
    );
    let progress = stderr(&out);
    // `--label` is on the image's config.
    let cfg = Command::new("skopeo")
        .args(["inspect", "--config", "--override-arch", "arm64", &format!("oci-archive:{o}:{tag}")])
        .bounded()
        .expect("skopeo");
    let cfg: serde_json::Value = serde_json::from_slice(&cfg.stdout).unwrap_or_default();
    assert_eq!(cfg["config"]["Labels"]["org.example.team"], "platform", "{}: {cfg}", t.name());

    // Mounts of `COPY --from` and RUN steps leave no directories behind.
    let run: Vec<String> = std::fs::read_dir(t.agent_dir().join("run"))
        .expect("the agent's run dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ro-") || n.starts_with("step-"))
        .collect();
    assert!(run.is_empty(), "{}: left in run/: {run:?}", t.name());

    // The build context is untouched: rw bind mounts wrote to a private copy.
    assert_eq!(tree(&ctx), before, "{}: the build changed its context", t.name());

    for arch in ["amd64", "arm64"] {
        let root = local.join(format!("linux_{arch}"));
        let files = tree(&root.join("ctx"));
        let names: Vec<String> = files.keys().map(|k| String::from_utf8_lossy(k).into_owned()).collect();
        // .dockerignore applies to COPY . (and the exception brings keep.tmp back).
        for gone in ["secret.txt", "logs", "a.tmp"] {
            assert!(!names.iter().any(|n| n == gone || n.starts_with(&format!("{gone}/"))), "{}: {gone} was copied: {names:?}", t.name());
        }
        assert!(names.contains(&"keep.tmp".to_string()), "{}: {names:?}", t.name());
        // The non-UTF-8 name arrives as the same bytes.
        assert!(files.contains_key(&b"caf\xe9.txt"[..]), "{}: non-UTF-8 name lost: {names:?}", t.name());
        // The FIFO is copied as a FIFO, as BuildKit does.
        assert!(files.get(&b"pipe"[..]).is_some_and(|d| d.starts_with("fifo 640")), "{}: pipe: {:?}", t.name(), files.get(&b"pipe"[..]));
        assert_eq!(std::fs::read_to_string(root.join("added/inner.txt")).expect("ADD sub"), "inner\n");
        // A bind mount shows the context as .dockerignore leaves it.
        let listing = std::fs::read_to_string(root.join("bind-listing")).expect("bind listing");
        assert!(listing.contains("keep.txt") && !listing.contains("secret.txt") && !listing.contains("logs"), "{}: {listing}", t.name());
        assert_eq!(std::fs::read_to_string(root.join("rw-done")).expect("rw step"), "ok\n");
    }

    // `-q` prints only the image ID; `--iidfile` writes it. Without an output it has no
    // provenance, so its index is its own; its images are the first build's.
    let iid = work.path().join("iid");
    let quiet_meta = work.path().join("quiet.json");
    let quiet = t.ok(
        &[
            "build",
            "-q",
            "--iidfile",
            &iid.display().to_string(),
            "--label",
            "org.example.team=platform",
            "--metadata-file",
            &quiet_meta.display().to_string(),
            "--platform",
            "linux/amd64,linux/arm64",
            ".",
        ],
        &ctx,
    );
    assert_eq!(images(&metadata(&quiet_meta)), images(&metadata(&meta)), "{}", t.name());
    let digest = metadata(&quiet_meta)["containerimage.digest"].as_str().expect("digest").to_string();
    assert_eq!(String::from_utf8_lossy(&quiet.stdout).trim(), digest, "{}", t.name());
    assert!(stderr(&quiet).trim().is_empty(), "{}: -q prints no progress: {}", t.name(), stderr(&quiet));
    assert_eq!(std::fs::read_to_string(&iid).expect("iidfile"), digest);

    // Filesystem tars: to a file and to standard output, a top directory per platform.
    let fs_tar = work.path().join("fs.tar");
    t.ok(&["build", "--platform", "linux/amd64,linux/arm64", "-o", &format!("type=tar,dest={}", fs_tar.display()), "."], &ctx);
    let list = |bytes: &[u8]| -> Vec<String> {
        let mut a = tar::Archive::new(bytes);
        let mut names: Vec<String> =
            a.entries().expect("a tar").flatten().map(|e| e.path().expect("path").to_string_lossy().into_owned()).collect();
        names.sort();
        names
    };
    let from_file = list(&std::fs::read(&fs_tar).expect("fs.tar"));
    for arch in ["amd64", "arm64"] {
        assert!(from_file.contains(&format!("linux_{arch}/from-base")), "{}: {:?}", t.name(), &from_file[..from_file.len().min(10)]);
    }
    let piped = t.ok(&["build", "--platform", "linux/amd64,linux/arm64", "-o", "-", "."], &ctx);
    assert_eq!(list(&piped.stdout), from_file, "{}: `-o -` writes the same tar to standard output", t.name());
    // A destination that is not a regular file is refused before anything runs, and kept.
    let fifo = work.path().join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().expect("mkfifo").success());
    for spec in [format!("type=oci,dest={}", fifo.display()), format!("type=tar,dest={}", work.path().display())] {
        let out = t.kiln(&["build", "--platform", "linux/amd64", "-o", &spec, "."], &ctx);
        assert!(
            !out.status.success() && stderr(&out).contains("not a regular file; refusing to replace it"),
            "{}: {}",
            t.name(),
            stderr(&out)
        );
    }
    assert!(std::fs::symlink_metadata(&fifo).expect("fifo").file_type().is_fifo(), "{}: the FIFO was replaced", t.name());

    // Every output: the OCI archive and the registry hold the same index.
    let md = metadata(&meta);
    let digest = md["containerimage.digest"].as_str().expect("digest").to_string();
    let raw = Command::new("skopeo").args(["inspect", "--raw", &format!("oci-archive:{o}")]).bounded().expect("skopeo");
    assert!(raw.status.success(), "{}: skopeo: {}", t.name(), stderr(&raw));
    assert_eq!(format!("sha256:{}", sha256(&raw.stdout)), digest, "{}: the archive's index is not the reported one", t.name());
    let pushed =
        Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", &format!("docker://{tag}")]).bounded().expect("skopeo");
    assert!(pushed.status.success(), "{}: skopeo: {}", t.name(), stderr(&pushed));
    assert_eq!(pushed.stdout, raw.stdout, "{}: the pushed index differs from the archive's", t.name());
    // One metadata writer: the same keys on both paths.
    let slices = md["kiln.slices"].as_array().expect("slices");
    assert_eq!(slices.len(), 2);
    for s in slices {
        for key in ["platform", "agent", "emulated", "manifest_digest", "duration_ms", "queue_ms", "attempt", "cache_hits", "cache_misses"]
        {
            assert!(s.get(key).is_some(), "{}: metadata lacks {key}: {s}", t.name());
        }
    }
    assert!(progress.contains("[linux/amd64") || progress.contains(" linux/amd64 "), "{}: {progress}", t.name());
    // `emulated` says what happened: the arm64 slice's RUN steps ran under qemu (and the
    // progress says so on each), the amd64 slice's natively.
    for s in slices {
        let steps: Vec<&str> = s["emulated_steps"].as_array().expect("emulated_steps").iter().filter_map(|v| v.as_str()).collect();
        match s["platform"].as_str() {
            Some("linux/arm64") => {
                assert_eq!(s["emulated"], true, "{}: {s}", t.name());
                assert!(steps.len() == 2 && steps.iter().all(|st| st.contains("] RUN ")), "{}: {steps:?}", t.name());
            }
            _ => assert!(s["emulated"] == false && steps.is_empty(), "{}: {s}", t.name()),
        }
    }
    assert!(
        progress.lines().any(|l| l.contains("linux/arm64") && l.contains("RUN") && l.ends_with("(emulated)")),
        "{}: {progress}",
        t.name()
    );
    images(&md)
}

fn sha256(bytes: &[u8]) -> String {
    kiln_shared::Digest::of(bytes).hex().to_string()
}

#[test]
fn the_embedded_farm_and_a_farm_build_the_same() {
    let registry = Registry::start();
    let home = TempDir::new("paths-home");
    let base = base_image(&registry, home.path());
    let embedded = Target::Embedded(home);
    let a = check(&embedded, &base, &registry);
    let b = check(&farm(), &base, &registry);
    // Same Dockerfile, same context, same base: the same images, bit for bit (each index also
    // holds its own build's provenance).
    assert_eq!(a, b, "the embedded farm and the farm built different images");
}

#[test]
fn builders_work_embedded() {
    let home = TempDir::new("paths-builders");
    let t = Target::Embedded(home);
    let dir = TempDir::new("paths-builders-cwd");
    let out = t.ok(&["create", "--name", "local-x", "--use"], dir.path());
    assert!(String::from_utf8_lossy(&out.stdout).contains("local-x"));
    let ls = t.ok(&["ls", "--format", "json"], dir.path());
    let v: serde_json::Value = serde_json::from_slice(&ls.stdout).expect("ls json");
    let x = v.as_array().expect("list").iter().find(|b| b["name"] == "local-x").expect("local-x listed").clone();
    assert_eq!(x["current"], true, "{v}");
    assert_eq!(x["nodes"][0]["context"], "embedded", "{v}");
    let ctx = t.ok(&["context", "ls", "--format", "json"], dir.path());
    assert!(String::from_utf8_lossy(&ctx.stdout).contains("\"embedded\""));
    t.ok(&["rm", "local-x"], dir.path());
    let out = t.kiln(&["rm", "embedded"], dir.path());
    assert!(stderr(&out).contains("context builder cannot be removed"), "{}", stderr(&out));
}

/// An embedded farm whose state an older kiln wrote (a log this kiln cannot decode) starts
/// afresh and keeps the old state beside it, with a warning; a farm coordinator refuses it.
#[test]
fn an_older_kilns_state_is_moved_aside() {
    let home = TempDir::new("paths-old-state");
    std::fs::create_dir_all(home.path().join("coordinator")).expect("coordinator dir");
    std::fs::write(home.path().join("coordinator/raft.redb"), b"an older kiln's log").expect("old log");
    let t = Target::Embedded(home);
    let dir = TempDir::new("paths-old-state-cwd");
    let out = t.ok(&["ls"], dir.path());
    assert!(stderr(&out).contains("was written by another kiln version (format 1-3); it was moved to"), "{}", stderr(&out));
    let Target::Embedded(home) = &t else { unreachable!() };
    let kept: Vec<String> = std::fs::read_dir(home.path())
        .expect("home")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("coordinator.format-1-3."))
        .collect();
    assert_eq!(kept.len(), 1, "the old state is kept");
    assert_eq!(std::fs::read(home.path().join(&kept[0]).join("raft.redb")).expect("kept log"), b"an older kiln's log");
    // A farm coordinator is not moved: it refuses, naming the data dir.
    let data = TempDir::new("paths-old-coordinator");
    std::fs::write(data.path().join("raft.redb"), b"old").expect("old log");
    let port = kiln_tests::free_port();
    let out = Command::new(kiln_bin())
        .args(["coordinator", "--id", "1", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data.path())
        .args(["--peers", &format!("1=127.0.0.1:{port}")])
        .bounded()
        .expect("kiln coordinator");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("holds coordinator state of format 1-3, written by another kiln version"), "{}", stderr(&out));
}
