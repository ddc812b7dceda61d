//! `kiln bake`: the corpus under tests/bake/ (each case a directory of bake, JSON or Compose
//! files, optional `args` (one argument a line) and `env` (KEY=VALUE lines), and the
//! `expected.json` that `--print` must print, written by hand from buildx's documentation, or
//! `expected.err`, a line the one-line error must contain); standard input; the listings; and
//! real bakes on the embedded farm and on a farm of four agents.

use kiln_tests::cluster::Cluster;
use kiln_tests::target::{farm, Target};
use kiln_tests::{busybox, kiln_bin, repo_root, stderr, stdout, Bounded, Registry, TempDir, BASE_DOCKERFILE};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).map(|t| t.lines().filter(|l| !l.is_empty()).map(str::to_string).collect()).unwrap_or_default()
}

/// `kiln bake` in `dir` with only `env` in its environment (so no variable leaks in from ours).
fn bake(dir: &Path, args: &[String], env: &[(String, String)], home: &Path) -> Output {
    let mut cmd = Command::new(kiln_bin());
    cmd.arg("bake").args(args).current_dir(dir).env_clear().env("KILN_HOME", home);
    if let Ok(path) = std::env::var("PATH") {
        cmd.env("PATH", path);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd.bounded().expect("run kiln bake")
}

fn cases() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(repo_root().join("tests/bake"))
        .expect("tests/bake")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn corpus_prints_what_buildx_documents() {
    let home = TempDir::new("bake-corpus");
    let dirs = cases();
    assert!(dirs.len() >= 25, "the corpus has {} cases", dirs.len());
    let mut failures = Vec::new();
    for dir in &dirs {
        let name = dir.file_name().unwrap_or_default().to_string_lossy().to_string();
        let mut args = vec!["--print".to_string()];
        args.extend(lines(&dir.join("args")));
        let env: Vec<(String, String)> = lines(&dir.join("env"))
            .iter()
            .map(|l| {
                let (k, v) = l.split_once('=').expect("env lines are KEY=VALUE");
                (k.to_string(), v.to_string())
            })
            .collect();
        let out = bake(dir, &args, &env, home.path());
        if let Ok(want) = std::fs::read_to_string(dir.join("expected.json")) {
            if !out.status.success() {
                failures.push(format!("{name}: failed: {}", stderr(&out)));
            } else if stdout(&out).trim_end() != want.trim_end() {
                failures.push(format!("{name}: printed\n{}\nexpected\n{}", stdout(&out), want));
            }
        } else {
            let want = std::fs::read_to_string(dir.join("expected.err")).expect("expected.json or expected.err");
            let err = stderr(&out);
            if out.status.success() || !err.contains(want.trim()) || err.trim().lines().count() != 1 {
                failures.push(format!("{name}: expected one error line with {:?}, got status {} and {err:?}", want.trim(), out.status));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), dirs.len(), failures.join("\n\n"));
}

/// `-f -`: the definition from standard input (JSON here, detected by its content).
#[test]
fn definition_from_standard_input() {
    let home = TempDir::new("bake-stdin");
    let dir = TempDir::new("bake-stdin-cwd");
    let mut child = Command::new(kiln_bin())
        .args(["bake", "-f", "-", "--print", "app"])
        .current_dir(dir.path())
        .env("KILN_HOME", home.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kiln");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(br#"{"target": {"app": {"tags": ["x/app:${upper(\"v\")}1"]}}}"#).expect("write stdin");
    }
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        assert!(start.elapsed() < Duration::from_secs(60), "kiln bake -f - did not finish");
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("output");
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["target"]["app"]["tags"][0], "x/app:V1");
    assert_eq!(v["group"]["default"]["targets"][0], "app");
}

#[test]
fn lists_targets_and_variables() {
    let home = TempDir::new("bake-list");
    let dir = repo_root().join("tests/bake/13-monorepo-base");
    let out = bake(&dir, &["--list".into(), "variables".into()], &[("GIT_SHA".into(), "abc".into())], home.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["GIT_SHA", "abc"]), "{text}");
    let out = bake(&dir, &["--list".into(), "targets".into()], &[], home.path());
    let text = stdout(&out);
    for t in ["billing", "search", "gateway", "_base", "default"] {
        assert!(text.lines().any(|l| l.split_whitespace().next() == Some(t)), "{t} missing from\n{text}");
    }
}

/// Attributes kiln build lacks fail before anything is built, naming them.
#[test]
fn unsupported_attributes_name_themselves() {
    let home = TempDir::new("bake-unsupported");
    let dir = TempDir::new("bake-unsupported-cwd");
    dir.write("Dockerfile", "FROM scratch\n");
    dir.write("docker-bake.hcl", "target \"two\" {\n  cache-to = [\"type=local,dest=a\", \"type=local,dest=b\"]\n}\n");
    let out = bake(dir.path(), &["two".into()], &[], home.path());
    assert!(!out.status.success());
    assert!(stderr(&out).contains("target two: more than one cache-to"), "{}", stderr(&out));
    assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
}

/// `target:` links: `base` (asked for, pushed) is built once, before `tools` (not asked for:
/// cache only) and `app`, which take its result per platform (`COPY ${TARGETARCH}.txt`), as
/// `docker-image://` for the pushed one and an OCI layout for the other.
fn linked_targets(t: &Target, registry: &Registry) {
    let dir = TempDir::new("bake-links");
    for arch in ["amd64", "arm64"] {
        dir.write(&format!("base/{arch}.txt"), &format!("base-{arch}\n"));
    }
    dir.write("base/Dockerfile", "FROM scratch\nARG TARGETARCH\nCOPY ${TARGETARCH}.txt /a.txt\n");
    dir.write("tools/t.txt", "tools\n");
    dir.write("tools/Dockerfile", "FROM base\nCOPY t.txt /t.txt\n");
    dir.write("b.txt", "app\n");
    dir.write("Dockerfile", "FROM base\nCOPY --from=tools /t.txt /t.txt\nCOPY b.txt /b.txt\n");
    dir.write(
        "docker-bake.hcl",
        &format!(
            "variable \"P\" {{\n  default = [\"linux/amd64\", \"linux/arm64\"]\n}}\n\
             target \"base\" {{\n  context = \"base\"\n  platforms = P\n  tags = [\"{}/bake/base:{}\"]\n  output = [\"type=registry\"]\n}}\n\
             target \"tools\" {{\n  context = \"tools\"\n  platforms = P\n  contexts = {{ base = \"target:base\" }}\n}}\n\
             target \"app\" {{\n  platforms = P\n  contexts = {{ base = \"target:base\", tools = \"target:tools\" }}\n  output = [\"type=local,dest=out\"]\n}}\n",
            registry.addr,
            t.name()
        ),
    );
    let meta = dir.path().join("meta.json");
    let out = t.kiln(&["bake", "app", "base", "--progress", "plain", "--metadata-file", &meta.display().to_string()], dir.path());
    let err = stderr(&out);
    assert!(out.status.success(), "{}: {err}", t.name());
    for arch in ["amd64", "arm64"] {
        let root = dir.path().join(format!("out/linux_{arch}"));
        let read = |f: &str| std::fs::read_to_string(root.join(f)).unwrap_or_else(|e| panic!("{}: {arch} {f}: {e}\n{err}", t.name()));
        assert_eq!(read("a.txt"), format!("base-{arch}\n"), "{}: the {arch} slice took the {arch} image of base", t.name());
        assert_eq!(read("t.txt"), "tools\n");
        assert_eq!(read("b.txt"), "app\n");
    }
    let line = |what: &str| err.lines().position(|l| l.contains(what)).unwrap_or_else(|| panic!("{}: no {what:?} in\n{err}", t.name()));
    assert_eq!(err.matches("=> base: image index").count(), 1, "{}: base is built once:\n{err}", t.name());
    assert!(line("=> base: image index") < line("[tools "), "{}: tools waits for base:\n{err}", t.name());
    assert!(line("=> tools: image index") < line("[app "), "{}: app waits for tools:\n{err}", t.name());
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).expect("metadata")).expect("metadata JSON");
    for name in ["base", "tools", "app"] {
        assert!(m[name]["containerimage.digest"].as_str().unwrap_or("").starts_with("sha256:"), "{name}: {m}");
    }
}

#[test]
fn linked_targets_build_first_and_once_on_embedded_and_farm() {
    let registry = Registry::start();
    linked_targets(&Target::Embedded(TempDir::new("bake-links-home")), &registry);
    linked_targets(&farm(), &registry);
}

/// A link that failed fails the targets that use it, naming it; with `--keep-going` the
/// independent target still finishes.
#[test]
fn a_failed_link_fails_its_dependents_by_name() {
    let t = Target::Embedded(TempDir::new("bake-badlink-home"));
    let dir = TempDir::new("bake-badlink");
    dir.write("bad/Dockerfile", "FROM scratch\nCOPY missing.txt /\n");
    dir.write("ok.txt", "ok\n");
    dir.write("Dockerfile", "FROM base\n");
    dir.write("ok.Dockerfile", "FROM scratch\nCOPY ok.txt /\n");
    dir.write(
        "docker-bake.hcl",
        "target \"bad\" {\n  context = \"bad\"\n}\ntarget \"dep\" {\n  contexts = { base = \"target:bad\" }\n}\n\
         target \"ok\" {\n  dockerfile = \"ok.Dockerfile\"\n  output = [\"type=local,dest=out\"]\n}\n",
    );
    let out = t.kiln(&["bake", "dep", "ok", "--keep-going", "--progress", "plain"], dir.path());
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("ERROR: target bad: "), "{err}");
    assert!(err.contains("ERROR: target dep: linked target bad failed"), "{err}");
    assert!(err.lines().last().unwrap_or("").contains("target bad, dep failed"), "{err}");
    assert_eq!(std::fs::read_to_string(dir.path().join("out/ok.txt")).ok().as_deref(), Some("ok\n"), "{err}");
}

/// `kiln bake --push --progress plain --metadata-file META [EXTRA..]` in `dir`, with the
/// monorepo's REGISTRY and BASE; the caller names the farm.
fn pushing_bake(meta: &Path, dir: &TempDir, registry: &Registry, base: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(kiln_bin());
    cmd.args(["bake", "--push", "--progress", "plain", "--metadata-file", &meta.display().to_string()])
        .args(extra)
        .env("REGISTRY", &registry.addr)
        .env("BASE", base)
        .current_dir(dir.path());
    cmd
}

/// A monorepo's bake file: a shared base target, `n` services inheriting it (each its own
/// Dockerfile in one shared context), the registry from the environment.
fn write_monorepo(dir: &TempDir, n: usize) -> Vec<String> {
    let names: Vec<String> = (1..=n).map(|i| format!("svc{i:02}")).collect();
    let mut hcl = String::from(
        "variable \"REGISTRY\" {\n  default = \"\"\n  validation {\n    condition = REGISTRY != \"\"\n    error_message = \"set REGISTRY\"\n  }\n}\n\
         variable \"BASE\" {\n  default = \"\"\n}\n\
         target \"_base\" {\n  platforms = [\"linux/amd64\", \"linux/arm64\"]\n  args = { BASE = BASE }\n}\n",
    );
    hcl.push_str(&format!(
        "group \"default\" {{\n  targets = [{}]\n}}\n",
        names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ")
    ));
    for name in &names {
        hcl.push_str(&format!(
            "target \"{name}\" {{\n  inherits = [\"_base\"]\n  dockerfile = \"{name}.Dockerfile\"\n  tags = [\"${{REGISTRY}}/bake/{name}:1\"]\n}}\n"
        ));
        // Each target's steps are its own (its Dockerfile's content keys the COPY): independent
        // targets, which the scheduler balances by load rather than pulling them to one cache.
        dir.write(
            &format!("{name}.Dockerfile"),
            &format!("ARG BASE\nFROM ${{BASE}}\nCOPY {name}.Dockerfile /src/\nRUN echo {name} > /name\nCOPY shared.txt /shared.txt\n"),
        );
    }
    dir.write("shared.txt", "one context for every target\n");
    dir.write("docker-bake.hcl", &hcl);
    names
}

/// Every target's metadata: an index digest, and each slice's agent; with `cached`, no step ran.
fn check_metadata(path: &Path, names: &[String], cached: bool) -> Vec<(String, String)> {
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(path).expect("metadata file")).expect("metadata JSON");
    let mut slices = Vec::new();
    for name in names {
        let t = &meta[name.as_str()];
        assert!(t["containerimage.digest"].as_str().unwrap_or("").starts_with("sha256:"), "{name}: {t}");
        assert!(t["image.name"].as_str().unwrap_or("").ends_with(&format!("/bake/{name}:1")), "{name}: {t}");
        let s = t["kiln.slices"].as_array().expect("slices");
        assert_eq!(s.len(), 2, "{name}: {t}");
        for slice in s {
            if cached {
                assert_eq!(slice["cache_misses"], 0, "{name}: a rebuild runs nothing: {t}");
            }
            slices.push((slice["platform"].as_str().unwrap_or("").to_string(), slice["agent"].as_str().unwrap_or("").to_string()));
        }
    }
    assert_eq!(meta.as_object().map(|m| m.len()), Some(names.len()), "one object per target: {meta}");
    slices
}

/// The index each target pushed holds both platforms.
fn assert_indexes(registry: &Registry, names: &[String]) {
    for name in names {
        let reference = format!("{}/bake/{name}:1", registry.addr);
        let out = Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--raw", &format!("docker://{reference}")])
            .bounded()
            .expect("skopeo");
        assert!(out.status.success(), "skopeo {reference}: {}", stderr(&out));
        let index: serde_json::Value = serde_json::from_slice(&out.stdout).expect("index JSON");
        let mut got: Vec<String> = index["manifests"]
            .as_array()
            .expect("manifests")
            .iter()
            .map(|m| format!("{}/{}", m["platform"]["os"].as_str().unwrap_or(""), m["platform"]["architecture"].as_str().unwrap_or("")))
            .collect();
        got.sort();
        // As buildx: a pushed image has a provenance attestation manifest per platform.
        assert_eq!(got, ["linux/amd64", "linux/arm64", "unknown/unknown", "unknown/unknown"], "index of {reference}");
    }
}

#[test]
fn embedded_farm_bakes_every_target_and_rebuilds_from_cache() {
    let registry = Registry::start();
    let home = TempDir::new("bake-embedded");
    let base = kiln_tests::base_image(&registry, home.path());
    let dir = TempDir::new("bake-embedded-repo");
    let names = write_monorepo(&dir, 4);
    let meta = dir.path().join("meta.json");
    let run = || {
        pushing_bake(&meta, &dir, &registry, &base, &[]).env("KILN_HOME", home.path()).env_remove("KILN_HOST").bounded().expect("kiln bake")
    };
    let out = run();
    assert!(out.status.success(), "{}", stderr(&out));
    for name in &names {
        assert!(
            stderr(&out).contains(&format!("[{name} embedded linux/arm64")),
            "progress names target, agent, platform:\n{}",
            stderr(&out)
        );
    }
    check_metadata(&meta, &names, false);
    assert_indexes(&registry, &names);
    let out = run();
    assert!(out.status.success(), "{}", stderr(&out));
    check_metadata(&meta, &names, true);
}

#[test]
fn a_failing_target_fails_the_bake_by_name_unless_keep_going() {
    let registry = Registry::start();
    let home = TempDir::new("bake-fail");
    let base = kiln_tests::base_image(&registry, home.path());
    let dir = TempDir::new("bake-fail-repo");
    let names = write_monorepo(&dir, 2);
    dir.write("svc02.Dockerfile", "ARG BASE\nFROM ${BASE}\nRUN exit 3\n");
    let meta = dir.path().join("meta.json");
    let run = |extra: &[&str]| {
        pushing_bake(&meta, &dir, &registry, &base, extra)
            .env("KILN_HOME", home.path())
            .env_remove("KILN_HOST")
            .bounded()
            .expect("kiln bake")
    };
    let out = run(&["--keep-going"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("target svc02 failed"), "{}", stderr(&out));
    // The other target finished and published.
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).expect("metadata")).expect("JSON");
    assert!(m["svc01"]["containerimage.digest"].as_str().unwrap_or("").starts_with("sha256:"), "{m}");
    assert!(m.get("svc02").is_none(), "{m}");
    assert_indexes(&registry, &names[..1]);
    // Without --keep-going the failure cancels the rest, as buildx does: a slow svc01 is
    // cancelled on the farm, not left to run.
    dir.write("svc01.Dockerfile", "ARG BASE\nFROM ${BASE}\nRUN sleep 8\n");
    let out = run(&[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("ERROR: target svc02:"), "{}", stderr(&out));
    assert!(stderr(&out).contains("=> svc01: cancelled (build "), "{}", stderr(&out));
    assert!(stderr(&out).lines().last().unwrap_or("").contains("target svc02 failed"), "{}", stderr(&out));
    let ls = Command::new(kiln_bin())
        .args(["history", "ls", "--format", "json", "--filter", "status=cancelled"])
        .env("KILN_HOME", home.path())
        .env_remove("KILN_HOST")
        .current_dir(dir.path())
        .bounded()
        .expect("kiln history ls");
    let cancelled: serde_json::Value = serde_json::from_slice(&ls.stdout).expect("JSON");
    assert!(
        cancelled.as_array().expect("list").iter().any(|b| b["tags"].to_string().contains("bake/svc01")),
        "svc01's build is cancelled: {cancelled}"
    );
}

/// Four agents, two of them declared arm64-native: twelve targets × two platforms, every
/// slice native, no agent with more than half its platform's slices, a rebuild fully cached.
/// Each agent has slots for half its platform's slices, so the balance is the scheduler's
/// placement of builds submitted together; with fewer slots the share follows which agent
/// happens to free a slot first (7 and 5 of 12 in some runs with 2 slots each).
#[test]
fn farm_bakes_twelve_targets_across_four_agents() {
    let registry = Registry::start();
    let mut c = Cluster::start(1);
    c.add_agent("a1", &["linux/amd64"], 6);
    c.add_agent("a2", &["linux/amd64"], 6);
    c.add_agent("a3", &["linux/arm64"], 6);
    c.add_agent("a4", &["linux/arm64"], 6);
    let ctx = TempDir::new("bake-farm-base");
    for arch in ["amd64", "arm64"] {
        std::fs::copy(busybox().join(format!("busybox-{arch}")), ctx.path().join(format!("busybox-{arch}"))).expect("copy busybox");
    }
    ctx.write("Dockerfile", BASE_DOCKERFILE);
    let base = format!("{}/base/busybox:1", registry.addr);
    c.ok(c.kiln(&["build", "--platform", "linux/amd64,linux/arm64", "-t", &base, "--push", "."], ctx.path()));
    let dir = TempDir::new("bake-farm-repo");
    let names = write_monorepo(&dir, 12);
    let meta = dir.path().join("meta.json");
    let run = || {
        pushing_bake(&meta, &dir, &registry, &base, &[])
            .env("KILN_HOME", c.home())
            .env("KILN_HOST", c.hosts())
            .env("KILN_TOKEN", &c.admin_token)
            .bounded()
            .expect("kiln bake")
    };
    let out = run();
    assert!(out.status.success(), "{}\n{}", stderr(&out), c.logs());
    let slices = check_metadata(&meta, &names, false);
    assert_indexes(&registry, &names);
    let mut share = std::collections::BTreeMap::<(String, String), usize>::new();
    for (platform, agent) in &slices {
        let native = if platform == "linux/amd64" { ["a1", "a2"] } else { ["a3", "a4"] };
        assert!(native.contains(&agent.as_str()), "{platform} ran on {agent}, not natively");
        *share.entry((platform.clone(), agent.clone())).or_default() += 1;
    }
    eprintln!("slices per (platform, agent): {share:?}");
    for ((platform, agent), n) in &share {
        assert!(*n <= names.len() / 2, "{agent} ran {n} of the {} {platform} slices: {share:?}", names.len());
    }
    let out = run();
    assert!(out.status.success(), "{}", stderr(&out));
    check_metadata(&meta, &names, true);
}

/// A target's `secret` and `network` reach its RUN steps as `kiln build --secret`/`--network` do.
#[test]
fn target_secrets_and_network_reach_the_build() {
    let registry = Registry::start();
    let home = TempDir::new("bake-secret");
    let base = kiln_tests::base_image(&registry, home.path());
    let dir = TempDir::new("bake-secret-repo");
    dir.write(
        "Dockerfile",
        "ARG BASE\nFROM ${BASE}\nRUN --mount=type=secret,id=tok,required=true test \"$(cat /run/secrets/tok)\" = s3cret && echo ok > /ok\n",
    );
    dir.write(
        "docker-bake.hcl",
        "variable \"BASE\" {}\ntarget \"default\" {\n  args = { BASE = BASE }\n  secret = [\"id=tok,env=TOKEN\"]\n  network = \"none\"\n  output = [\"type=cacheonly\"]\n}\n",
    );
    let run = |token: &str| {
        Command::new(kiln_bin())
            // A secret does not key the step cache (as in BuildKit): every run executes the step.
            .args(["bake", "--progress", "plain", "--no-cache"])
            .env("KILN_HOME", home.path())
            .env("BASE", &base)
            .env("TOKEN", token)
            .env_remove("KILN_HOST")
            .current_dir(dir.path())
            .bounded()
            .expect("kiln bake")
    };
    let out = run("s3cret");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run("wrong");
    assert!(!out.status.success(), "the step saw the secret's value: {}", stderr(&out));
    assert!(stderr(&out).contains("target default failed"), "{}", stderr(&out));
}
