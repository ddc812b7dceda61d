//! Remote and piped contexts, as buildx takes them: git repositories (`file://`, a loopback
//! `git daemon`, `#REF:SUBDIR`), tarball and Dockerfile URLs (a loopback HTTP server), and
//! standard input (a tar archive, or a Dockerfile alone); on the embedded farm and on a farm.

use kiln_tests::target::{farm, Target};
use kiln_tests::{base_image, run_ok, stderr, Bounded, Registry, Started, TempDir};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

const DOCKERFILE: &str = "ARG BASE\nFROM $BASE\nCOPY . /ctx/\nRUN ls -a /ctx | tr '\\n' ' ' > /listing\n";

/// A repository with `main` (the app in `app/`, with a `.dockerignore`) and a tag `v1` whose
/// app says `v1`.
fn repository(dir: &Path) -> std::path::PathBuf {
    let work = dir.join("work");
    run_ok(Command::new("git").args(["init", "-q", "-b", "main"]).arg(&work));
    let commit = |msg: &str| {
        run_ok(Command::new("git").current_dir(&work).args(["add", "-A"]));
        run_ok(Command::new("git").current_dir(&work).args(["-c", "user.email=t@kiln", "-c", "user.name=t", "commit", "-qm", msg]));
    };
    std::fs::create_dir_all(work.join("app")).expect("app");
    std::fs::write(work.join("app/Dockerfile"), DOCKERFILE).expect("Dockerfile");
    std::fs::write(work.join("app/version"), "v1\n").expect("version");
    std::fs::write(work.join("app/.dockerignore"), "ignored.txt\n").expect("ignore");
    std::fs::write(work.join("app/ignored.txt"), "no\n").expect("ignored");
    std::fs::write(work.join("README"), "top\n").expect("README");
    commit("v1");
    run_ok(Command::new("git").current_dir(&work).args(["tag", "v1"]));
    std::fs::write(work.join("app/version"), "v2\n").expect("version");
    commit("v2");
    let bare = dir.join("repo.git");
    run_ok(Command::new("git").args(["clone", "-q", "--bare"]).arg(&work).arg(&bare));
    bare
}

/// A one-file HTTP server on loopback: every GET gets `body`.
fn serve(body: Vec<u8>) -> (String, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handle = std::thread::spawn(move || {
        // Two requests at most per server (one per target), each bounded.
        for conn in listener.incoming().take(2) {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(10)));
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&body);
        }
    });
    (format!("http://{addr}"), handle)
}

fn listing(out: &Path) -> String {
    std::fs::read_to_string(out.join("listing")).expect("listing")
}

fn build_to(t: &Target, base: &str, context: &str, extra: &[&str], cwd: &Path) -> (std::process::Output, TempDir) {
    let out = TempDir::new("contexts-out");
    let dest = format!("type=local,dest={}", out.path().display());
    let base_arg = format!("BASE={base}");
    let mut args = vec!["build", "--progress", "plain", "--build-arg", &base_arg, "-o", &dest];
    args.extend_from_slice(extra);
    args.push(context);
    (t.kiln(&args, cwd), out)
}

fn contexts(t: &Target, base: &str, repo: &Path, daemon_port: u16) {
    let cwd = TempDir::new("contexts-cwd");
    let name = t.name();
    // file:// at a branch, in a subdirectory: .dockerignore applies, .git is gone.
    let url = format!("file://{}#main:app", repo.display());
    let (o, out) = build_to(t, base, &url, &[], cwd.path());
    assert!(o.status.success(), "{name}: {url}: {}", stderr(&o));
    assert_eq!(listing(out.path()), ". .. .dockerignore Dockerfile version ", "{name}");
    assert_eq!(std::fs::read_to_string(out.path().join("ctx/version")).expect("version"), "v2\n");
    // A tag, and the .git directory kept on request.
    let url = format!("file://{}#v1:app", repo.display());
    let (o, out) = build_to(t, base, &url, &["--build-arg", "BUILDKIT_CONTEXT_KEEP_GIT_DIR=1", "-f", "app/Dockerfile"], cwd.path());
    assert!(!o.status.success(), "{name}: -f is inside the context: app/app/Dockerfile does not exist");
    drop(out);
    let url_root = format!("file://{}#v1", repo.display());
    let (o, out) = build_to(t, base, &url_root, &["--build-arg", "BUILDKIT_CONTEXT_KEEP_GIT_DIR=1", "-f", "app/Dockerfile"], cwd.path());
    assert!(o.status.success(), "{name}: {url_root}: {}", stderr(&o));
    assert!(listing(out.path()).contains(" .git "), "{name}: {}", listing(out.path()));
    assert_eq!(std::fs::read_to_string(out.path().join("ctx/app/version")).expect("version"), "v1\n");
    // git:// from a loopback git daemon.
    let url = format!("git://127.0.0.1:{daemon_port}/repo.git#main:app");
    let (o, out) = build_to(t, base, &url, &[], cwd.path());
    assert!(o.status.success(), "{name}: {url}: {}", stderr(&o));
    assert!(listing(out.path()).contains("version"), "{name}");
    // A ref that does not exist: one line saying so.
    let (o, _) = build_to(t, base, &format!("file://{}#no-such-ref", repo.display()), &[], cwd.path());
    assert!(!o.status.success() && stderr(&o).contains("no-such-ref"), "{name}: {}", stderr(&o));

    // A tarball URL: the archive is the context.
    let src = TempDir::new("contexts-tar-src");
    src.write("Dockerfile", DOCKERFILE);
    src.write("from-tar.txt", "tar\n");
    let tgz = Command::new("tar").args(["-czf", "-", "-C"]).arg(src.path()).arg(".").bounded().expect("tar");
    let (url, server) = serve(tgz.stdout.clone());
    let (o, out) = build_to(t, base, &format!("{url}/ctx.tar.gz"), &[], cwd.path());
    assert!(o.status.success(), "{name}: tarball URL: {}", stderr(&o));
    assert!(listing(out.path()).contains("from-tar.txt"), "{name}: {}", listing(out.path()));
    drop(server);
    // A Dockerfile URL: an empty context.
    let (url, _server) = serve(DOCKERFILE.as_bytes().to_vec());
    let (o, out) = build_to(t, base, &format!("{url}/Dockerfile"), &[], cwd.path());
    assert!(o.status.success(), "{name}: Dockerfile URL: {}", stderr(&o));
    assert_eq!(listing(out.path()), ". .. ", "{name}");

    // Standard input: a tar archive, then a Dockerfile alone.
    for (input, expect) in [(tgz.stdout.clone(), "from-tar.txt"), (DOCKERFILE.as_bytes().to_vec(), "")] {
        let dir = TempDir::new("contexts-stdin-out");
        let dest = format!("type=local,dest={}", dir.path().display());
        let base_arg = format!("BASE={base}");
        let mut cmd = Command::new(kiln_tests::kiln_bin());
        cmd.args(["build", "--progress", "plain", "--build-arg", &base_arg, "-o", &dest, "-"]).current_dir(cwd.path());
        match t {
            Target::Embedded(home) => cmd.env("KILN_HOME", home.path()).env_remove("KILN_HOST"),
            Target::Farm(c) => cmd.env("KILN_HOME", c.home()).env("KILN_HOST", c.hosts()).env("KILN_TOKEN", &c.admin_token),
        };
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("kiln");
        child.stdin.take().expect("stdin").write_all(&input).expect("write stdin");
        let o = child.wait_with_output().expect("kiln");
        assert!(o.status.success(), "{name}: stdin: {}", stderr(&o));
        let l = listing(dir.path());
        assert!(if expect.is_empty() { l == ". .. " } else { l.contains(expect) }, "{name}: stdin: {l}");
    }
}

#[test]
fn remote_and_piped_contexts_build() {
    let work = TempDir::new("contexts-repo");
    let repo = repository(work.path());
    let port = kiln_tests::free_port();
    // git-daemon itself (not the `git daemon` wrapper, which would leave it behind when killed).
    let exec_path = Command::new("git").arg("--exec-path").bounded().expect("git --exec-path");
    let exec_path = String::from_utf8_lossy(&exec_path.stdout).trim().to_string();
    let daemon = Command::new(Path::new(&exec_path).join("git-daemon"))
        .args(["--export-all", "--reuseaddr", "--listen=127.0.0.1"])
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", work.path().display()))
        .arg(work.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("git daemon");
    let _daemon = Started(daemon);
    kiln_tests::wait_for("git daemon", std::time::Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    let registry = Registry::start();
    let home = TempDir::new("contexts-home");
    let base = base_image(&registry, home.path());
    contexts(&Target::Embedded(home), &base, &repo, port);
    contexts(&farm(), &base, &repo, port);
}

fn named(t: &Target, base: &str, repo: &Path) {
    let name = t.name();
    let ctx = TempDir::new("contexts-named");
    ctx.write(
        "Dockerfile",
        "FROM nosuchimage AS base\n\
         FROM localdir AS fromdir\n\
         FROM base\n\
         COPY --from=localdir / /ld/\n\
         COPY --from=fromdir /hello.txt /hello2.txt\n\
         COPY --from=repo /app/version /version\n\
         RUN ls /ld | tr '\\n' ' ' > /ld-listing\n",
    );
    let dir = TempDir::new("contexts-named-dir");
    dir.write("hello.txt", "hello\n");
    dir.write("ignored.txt", "no\n");
    dir.write(".dockerignore", "ignored.txt\n");
    let out = TempDir::new("contexts-named-out");
    let dest = format!("type=local,dest={}", out.path().display());
    let image = format!("nosuchimage=docker-image://{base}");
    let local = format!("localdir={}", dir.path().display());
    let git = format!("repo=file://{}#v1", repo.display());
    let args =
        ["build", "--progress", "plain", "--build-context", &image, "--build-context", &local, "--build-context", &git, "-o", &dest, "."];
    let o = t.kiln(&args, ctx.path());
    assert!(o.status.success(), "{name}: named contexts: {}", stderr(&o));
    let read = |p: &str| std::fs::read_to_string(out.path().join(p)).unwrap_or_else(|e| panic!("{name}: {p}: {e}"));
    assert_eq!(read("ld-listing"), "hello.txt ", "{name}: the named directory's .dockerignore applies");
    assert_eq!(read("hello2.txt"), "hello\n", "{name}: a stage FROM a named directory has its files");
    assert_eq!(read("version"), "v1\n", "{name}: a git named context at a tag");
    assert!(out.path().join("bin/busybox").exists(), "{name}: FROM nosuchimage used the docker-image:// override");
    // An OCI layout (one kiln wrote) as a named context: by its only image, and by digest.
    let lay = TempDir::new("contexts-layout");
    lay.write("Dockerfile", &format!("FROM {base}\nRUN echo from-layout > /layout-marker\n"));
    let archive = lay.path().join("layout.tar");
    let oci = format!("type=oci,dest={}", archive.display());
    let o = t.kiln(&["build", "--platform", "linux/amd64,linux/arm64", "-o", &oci, "."], lay.path());
    assert!(o.status.success(), "{name}: {}", stderr(&o));
    let layout = lay.path().join("layout");
    std::fs::create_dir_all(&layout).expect("layout dir");
    run_ok(Command::new("tar").arg("-xf").arg(&archive).arg("-C").arg(&layout));
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json")).expect("json");
    let digest = index["manifests"][0]["digest"].as_str().expect("digest").to_string();
    ctx.write("Dockerfile", "FROM layoutimg\nRUN cat /layout-marker > /seen\n");
    for spec in [format!("layoutimg=oci-layout://{}", layout.display()), format!("layoutimg=oci-layout://{}@{digest}", layout.display())] {
        let out = TempDir::new("contexts-layout-out");
        let dest = format!("type=local,dest={}", out.path().display());
        let o = t.kiln(&["build", "--progress", "plain", "--build-context", &spec, "-o", &dest, "."], ctx.path());
        assert!(o.status.success(), "{name}: {spec}: {}", stderr(&o));
        assert_eq!(std::fs::read_to_string(out.path().join("seen")).expect("seen"), "from-layout\n", "{name}: {spec}");
    }
    // Bad specs are one-line errors.
    let bad_layout = format!("x=oci-layout://{}:nosuchtag", layout.display());
    for (bad, says) in [
        ("x", "expected NAME=SOURCE"),
        ("x=/kiln/no/such/dir", "is not a directory"),
        ("x=oci-layout:///kiln/none", "reading index.json"),
        (bad_layout.as_str(), "no image tagged \"nosuchtag\""),
    ] {
        let o = t.kiln(&["build", "--build-context", bad, "."], ctx.path());
        assert!(!o.status.success() && stderr(&o).contains(says), "{name}: {bad}: {}", stderr(&o));
    }
}

#[test]
fn named_contexts_override_images_and_add_directories() {
    let work = TempDir::new("contexts-named-repo");
    let repo = repository(work.path());
    let registry = Registry::start();
    let home = TempDir::new("contexts-named-home");
    let base = base_image(&registry, home.path());
    named(&Target::Embedded(home), &base, &repo);
    named(&farm(), &base, &repo);
}
