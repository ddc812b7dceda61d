//! `kiln bake`: the corpus under tests/bake/ (each case a directory of bake, JSON or Compose
//! files, optional `args` (one argument a line) and `env` (KEY=VALUE lines), and the
//! `expected.json` that `--print` must print, written by hand from buildx's documentation, or
//! `expected.err`, a line the one-line error must contain); standard input; the listings; and
//! real bakes on the embedded farm and on a farm of four agents.

use kiln_tests::cluster::Cluster;
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

/// Flags and attributes kiln build lacks fail before anything is built, naming them.
#[test]
fn unsupported_flags_and_attributes_name_themselves() {
    let home = TempDir::new("bake-unsupported");
    let dir = TempDir::new("bake-unsupported-cwd");
    dir.write("Dockerfile", "FROM scratch\n");
    dir.write("docker-bake.hcl", "target \"default\" {\n  ssh = [\"default\"]\n}\ntarget \"linked\" {\n  contexts = { base = \"target:default\" }\n}\n");
    let out = bake(dir.path(), &["--load".into()], &[], home.path());
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--load is not supported yet"), "{}", stderr(&out));
    let out = bake(dir.path(), &[], &[], home.path());
    assert!(stderr(&out).contains("target default: ssh is not supported by kiln build yet"), "{}", stderr(&out));
    let out = bake(dir.path(), &["linked".into()], &[], home.path());
    assert!(stderr(&out).contains("target linked: contexts.base=target:default"), "{}", stderr(&out));
    assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
}
