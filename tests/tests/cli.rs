//! `kiln build --dry-run` end to end: the binary, real files, its output and exit codes.

use kiln_tests::Bounded;
use kiln_tests::{kiln_bin, repo_root, stderr, stdout, TempDir};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn kiln(args: &[&str], dir: &Path) -> Output {
    Command::new(kiln_bin()).args(args).current_dir(dir).bounded().expect("run kiln")
}

#[test]
fn example_dry_run_shows_both_platforms_expanded() {
    let out = kiln(&["build", "--dry-run", "--platform", "linux/amd64,linux/arm64", "examples/hello"], &repo_root());
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("=> linux/amd64 (build platform"), "{text}");
    assert!(text.contains("=> linux/arm64 (build platform"), "{text}");
    // Global ARGs expanded in FROM, platform ARGs inside the stages, heredoc bodies shown.
    assert!(text.contains("[build 1/7] FROM --platform=linux/amd64 busybox:1.36 AS build"), "{text}");
    assert!(text.contains("org.opencontainers.image.description=\"kiln example for arm64\""), "{text}");
    assert!(text.contains("    | Welcome to hello on arm64."), "{text}");
    assert!(text.contains("    | mkdir -p /out"), "{text}");
    // The test stage is not needed by the final stage.
    assert!(text.contains("2 of 3 stages"), "{text}");
    assert!(!text.contains("[test "), "{text}");
    // .dockerignore keeps README.md out of the context.
    assert!(text.contains("1 excluded by"), "{text}");
}

#[test]
fn json_format_and_target() {
    let out = kiln(&["build", "--dry-run", "--format", "json", "--target", "test", "examples/hello"], &repo_root());
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let stages: Vec<&str> =
        v["platforms"][0]["stages"].as_array().expect("stages").iter().map(|s| s["name"].as_str().unwrap_or("")).collect();
    assert_eq!(stages, vec!["build", "test"]);
}

#[test]
fn broken_dockerfile_names_file_line_col() {
    let t = TempDir::new("broken");
    t.write("Dockerfile", "FROM alpine\nRUN echo ok\n  RUNN make\n");
    let out = kiln(&["build", "--dry-run", "."], t.path());
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out).trim(), "error: ./Dockerfile:3:3: unknown instruction: RUNN (did you mean RUN?)");
    assert!(stdout(&out).is_empty());
}

#[test]
fn unknown_platform_is_an_error() {
    let out = kiln(&["build", "--dry-run", "--platform", "linux/sparc", "examples/hello"], &repo_root());
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.starts_with("error: unknown platform \"linux/sparc\": architecture \"sparc\" is not supported"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn missing_target_and_missing_file() {
    let out = kiln(&["build", "--dry-run", "--target", "nope", "examples/hello"], &repo_root());
    assert_eq!(stderr(&out).trim(), "error: examples/hello/Dockerfile: target stage \"nope\" could not be found (stages: build, test)");
    let out = kiln(&["build", "--dry-run", "-f", "nope.Dockerfile", "examples/hello"], &repo_root());
    assert!(stderr(&out).starts_with("error: reading Dockerfile nope.Dockerfile: "), "{}", stderr(&out));
}

#[test]
fn dockerfile_from_stdin_and_build_args() {
    let mut child = Command::new(kiln_bin())
        .args(["build", "--dry-run", "--build-arg", "V=9", "--build-arg", "UNUSED=1", "-f", "-", "."])
        .current_dir(repo_root().join("examples/hello"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child.stdin.take().expect("stdin").write_all(b"ARG V=1\nFROM alpine:3.$V\n").expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("FROM alpine:3.9"), "{}", stdout(&out));
    assert!(stderr(&out).contains("warning: One or more build-args [UNUSED] were not consumed"), "{}", stderr(&out));
}

#[test]
fn named_dockerfile_ignore_file_wins() {
    let t = TempDir::new("ignore");
    t.write("app.Dockerfile", "FROM scratch\nCOPY . /\n");
    t.write("app.Dockerfile.dockerignore", "*.log\n!keep.log\n");
    t.write(".dockerignore", "**\n");
    t.write("a.log", "x");
    t.write("keep.log", "x");
    t.write("src/main.c", "int main;");
    let out = kiln(&["build", "--dry-run", "--format", "json", "-f", "app.Dockerfile", "."], t.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    // Sent: app.Dockerfile, app.Dockerfile.dockerignore, .dockerignore, keep.log, src/main.c.
    assert_eq!(v["context"]["files"], 5, "{v}");
    assert_eq!(v["context"]["excluded"], 1);
    assert!(v["context"]["ignore_file"].as_str().unwrap_or("").ends_with("app.Dockerfile.dockerignore"));
}

#[test]
fn a_farm_needs_a_token_and_an_answer() {
    let port = kiln_tests::cluster::free_udp_port();
    let run = |token: Option<&str>| {
        let mut cmd = Command::new(kiln_bin());
        cmd.args(["build", "--push", "-t", "127.0.0.1:1/x:1", "examples/hello"])
            .env("KILN_HOST", format!("127.0.0.1:{port}"))
            .env_remove("KILN_TOKEN");
        if let Some(t) = token {
            cmd.env("KILN_TOKEN", t);
        }
        cmd.current_dir(repo_root()).bounded().expect("run kiln")
    };
    let out = run(None);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("talking to a farm needs a token"), "{}", stderr(&out));
    let out = run(Some("not-a-token"));
    assert!(stderr(&out).contains("the token is malformed"), "{}", stderr(&out));
    let token = format!("K1{}.admin.{}", "ab".repeat(32), "cd".repeat(16));
    let out = run(Some(&token));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(&format!("cannot join the farm at 127.0.0.1:{port}")), "{}", stderr(&out));
}

#[test]
fn bad_outputs_and_push_without_tag() {
    let out = kiln(&["build", "-o", "type=tarball,dest=x", "examples/hello"], &repo_root());
    assert!(
        stderr(&out).contains("-o type=tarball is not supported (expected oci, docker, tar, local, registry or cacheonly)"),
        "{}",
        stderr(&out)
    );
    let out = kiln(&["build", "--push", "examples/hello"], &repo_root());
    assert!(stderr(&out).contains("--push needs at least one tag"), "{}", stderr(&out));
    let out = kiln(&["build", "--progress", "fancy", "examples/hello"], &repo_root());
    assert!(stderr(&out).contains("--progress \"fancy\""), "{}", stderr(&out));
    // Tags are checked against the reference grammar before anything is built or uploaded.
    for (tag, why) in [
        ("../../etc/passwd", "is not a registry host name"),
        ("host:99999/x", "is not a number from 1 to 65535"),
        ("Reg/App", "repository names are lowercase"),
    ] {
        let home = kiln_tests::TempDir::new("bad-tag");
        let out = Command::new(kiln_bin())
            .args(["build", "--push", "-t", tag, "examples/hello"])
            .env("KILN_HOME", home.path())
            .env_remove("KILN_HOST")
            .current_dir(repo_root())
            .bounded()
            .expect("run kiln");
        assert_eq!(out.status.code(), Some(1), "{tag}");
        let err = stderr(&out);
        assert!(err.starts_with(&format!("error: invalid image reference {tag:?}")) && err.contains(why), "{tag}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(!home.path().join("embedded.lock").exists(), "nothing was started for {tag}");
    }
}

#[test]
fn version() {
    let out = kiln(&["version"], &repo_root());
    assert!(stdout(&out).starts_with("kiln "));
}

#[test]
fn build_checks_as_buildx_prints_them() {
    let dir = kiln_tests::TempDir::new("checks");
    let home = dir.path().join("home");
    let kiln =
        |args: &[&str], cwd: &Path| Command::new(kiln_bin()).args(args).env("KILN_HOME", &home).current_dir(cwd).bounded().expect("kiln");
    dir.write("Dockerfile", "FROM busybox as Build\nMAINTAINER me\nCMD echo hi\n");
    let out = kiln(&["build", "--check", "."], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report = stdout(&out);
    assert!(report.starts_with("Check complete, 4 warnings have been found!\n"), "{report}");
    for rule in ["FromAsCasing", "StageNameCasing", "MaintainerDeprecated", "JSONArgsRecommended"] {
        assert!(report.contains(&format!("WARNING: {rule} - https://docs.docker.com/go/dockerfile/rule/")), "{rule}: {report}");
    }
    assert!(
        report.contains(
            "Dockerfile:3\n--------------------\n   1 |     FROM busybox as Build\n   2 |     MAINTAINER me\n   3 | >>> CMD echo hi\n"
        ),
        "{report}"
    );
    // The directive skips rules; `--call=check` is the same call.
    dir.write("Dockerfile", "# check=skip=FromAsCasing,StageNameCasing,MaintainerDeprecated,JSONArgsRecommended\nFROM busybox as Build\nMAINTAINER me\nCMD echo hi\n");
    let out = kiln(&["build", "--call=check", "."], dir.path());
    assert_eq!((out.status.code(), stdout(&out).as_str()), (Some(0), "Check complete, no warnings found.\n"));
    // `error=true` fails the build before anything runs.
    dir.write("Dockerfile", "# check=error=true\nFROM busybox\nCMD echo hi\n");
    let out = kiln(&["build", "."], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).ends_with("error: lint violation found for rules: JSONArgsRecommended\n"), "{}", stderr(&out));
    assert!(!dir.path().join("home/embedded.lock").exists(), "nothing was built");
    // Targets with their descriptions.
    dir.write("Dockerfile", "# base the common layers\nFROM busybox AS base\nFROM base AS app\n");
    let out = kiln(&["build", "--call=targets", "."], dir.path());
    let table = stdout(&out);
    assert!(
        table.lines().any(|l| l.starts_with("base ") && l.ends_with(" the common layers")) && table.contains("app (default)"),
        "{table}"
    );
    let out = kiln(&["build", "--call=lint", "."], dir.path());
    assert!(stderr(&out).contains("--call \"lint\" is not supported"), "{}", stderr(&out));
}

#[test]
fn a_flag_kiln_lacks_is_named_in_one_line() {
    for flag in ["--print", "--invoke=sh", "--root"] {
        let out = kiln(&["build", flag, "v", "."], &repo_root());
        assert_eq!(out.status.code(), Some(2));
        let name = flag.split('=').next().unwrap_or(flag);
        assert_eq!(stderr(&out), format!("error: kiln does not support {name} (yet); `kiln --help` lists what it takes\n"));
    }
}
