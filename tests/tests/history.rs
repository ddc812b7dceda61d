//! Build history with buildx's verbs, on the embedded farm and on a farm: `kiln history ls`
//! (filters, JSON), `inspect` (slices, steps, cache sources), the cache-miss explanation (a
//! changed context file, build argument and instruction, named per step), `logs`, `export` and
//! `rm`. On a farm also: `--detach` and `history logs -f` re-attaching, a killed client that
//! does not cancel its build, Ctrl-C that does (its agent stops), and tenants that never see
//! each other's builds.

use kiln_tests::cluster::Cluster;
use kiln_tests::target::{farm, Target};
use kiln_tests::{base_image, kiln_bin, stderr, stdout, Registry, TempDir};
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn json(o: &std::process::Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", stdout(o), stderr(o)))
}

fn history(t: &Target, base: &str) {
    let name = t.name();
    let ctx = TempDir::new("history-ctx");
    ctx.write(
        "Dockerfile",
        &format!("FROM {base}\nARG FLAVOUR=plain\nCOPY app/ /app/\nRUN echo $FLAVOUR > /flavour\nRUN echo done > /done\n"),
    );
    ctx.write("app/main.txt", "one");
    ctx.write("app/keep.txt", "same");
    let build = |args: &[&str]| {
        let out = TempDir::new("history-out");
        let dest = format!("type=local,dest={}", out.path().display());
        let all = [&["build", "--progress", "plain", "--platform", "linux/amd64,linux/arm64", "-o", &dest][..], args, &["."]].concat();
        t.kiln(&all, ctx.path())
    };
    let first = build(&[]);
    assert!(first.status.success(), "{name}: {}", stderr(&first));
    // The same build again: fully cached, nothing to explain.
    let again = build(&[]);
    assert!(again.status.success() && !stderr(&again).contains("cache miss"), "{name}: {}", stderr(&again));
    // A changed file and a changed build argument: the progress names each cause.
    ctx.write("app/main.txt", "two");
    let changed = build(&["--build-arg", "FLAVOUR=spicy"]);
    let log = stderr(&changed);
    assert!(changed.status.success(), "{name}: {log}");
    assert!(log.contains("COPY app/ /app/: context: app/main.txt changed content"), "{name}: the file is named:\n{log}");
    assert!(!log.contains("keep.txt"), "{name}: an unchanged file is not named:\n{log}");

    // ls: newest first, as JSON, with a filter.
    let ls = json(&t.ok(&["history", "ls", "--format", "json"], ctx.path()));
    let ids: Vec<u64> = ls.as_array().expect("a list").iter().map(|b| b["id"].as_u64().expect("id")).collect();
    assert!(ids.len() >= 3 && ids.windows(2).all(|w| w[0] > w[1]), "{name}: newest first: {ids:?}");
    let (newest, cached_one) = (ids[0], ids[1]);
    assert_eq!(ls[0]["status"], "completed", "{name}");
    assert_eq!(ls[1]["cached_steps"], ls[1]["steps"], "{name}: the rebuild was fully cached: {}", ls[1]);
    let failed = json(&t.ok(&["history", "ls", "--format", "json", "--filter", "status=failed"], ctx.path()));
    assert!(failed.as_array().expect("list").iter().all(|b| b["status"] == "failed"), "{name}");
    let o = t.kiln(&["history", "ls", "--filter", "colour=red"], ctx.path());
    assert!(!o.status.success() && stderr(&o).contains("expected status, ref, platform, tenant or since"), "{name}: {}", stderr(&o));

    // inspect: per slice its agent and steps with where each came from.
    let d = json(&t.ok(&["history", "inspect", &cached_one.to_string(), "--format", "json"], ctx.path()));
    let steps = d["steps"].as_array().expect("steps per slice");
    assert_eq!(steps.len(), 2, "{name}: two slices");
    for s in steps {
        let s = s.as_array().expect("steps");
        assert!(s.len() >= 5, "{name}: FROM, ARG, COPY and two RUNs: {s:?}");
        assert!(s.iter().skip(1).all(|st| st["source"] != "executed"), "{name}: every step came from a cache: {s:?}");
    }
    assert!(d["view"]["slices"].as_array().expect("slices").iter().all(|s| !s["agent"].as_str().unwrap_or("").is_empty()), "{name}");
    // --cache: the explanation, per platform and step.
    let why = stdout(&t.ok(&["history", "inspect", &newest.to_string(), "--cache"], ctx.path()));
    for platform in ["linux/amd64", "linux/arm64"] {
        assert!(
            why.contains(&format!("[{platform} stage-0 3/5] COPY app/ /app/: context: app/main.txt changed content")),
            "{name}:\n{why}"
        );
        assert!(
            why.contains(&format!(
                "[{platform} stage-0 4/5] RUN echo $FLAVOUR > /flavour: build argument FLAVOUR changed: \"spicy\" was \"plain\""
            )) || why.contains(&format!("[{platform} stage-0 4/5] RUN echo $FLAVOUR > /flavour: the step before it ran")),
            "{name}:\n{why}"
        );
    }
    // Only the build argument changes: its step names it.
    let args_only = build(&["--build-arg", "FLAVOUR=mild"]);
    assert!(args_only.status.success(), "{name}: {}", stderr(&args_only));
    assert!(
        stderr(&args_only).contains("RUN echo $FLAVOUR > /flavour: build argument FLAVOUR changed: \"mild\" was \"spicy\""),
        "{name}: {}",
        stderr(&args_only)
    );
    // Only the instruction text changes.
    ctx.write(
        "Dockerfile",
        &format!("FROM {base}\nARG FLAVOUR=plain\nCOPY app/ /app/\nRUN echo $FLAVOUR > /flavour\nRUN echo finished > /done\n"),
    );
    let text = build(&["--build-arg", "FLAVOUR=mild"]);
    assert!(
        stderr(&text)
            .contains("RUN echo finished > /done: the instruction changed: `RUN echo finished > /done` was `RUN echo done > /done`"),
        "{name}: {}",
        stderr(&text)
    );

    // logs: the same progress, on standard output.
    let logs = stdout(&t.ok(&["history", "logs", &ids[2].to_string()], ctx.path()));
    assert!(logs.contains("COPY app/ /app/") && logs.contains("DONE") && logs.contains("done: image index sha256:"), "{name}:\n{logs}");
    // export: the record and its events.
    let out = TempDir::new("history-export");
    let file = out.path().join("build.json");
    t.ok(&["history", "export", &newest.to_string(), "-o", file.to_str().expect("utf-8")], ctx.path());
    let exported: Value = serde_json::from_slice(&std::fs::read(&file).expect("export")).expect("JSON");
    assert_eq!(exported["build"]["summary"]["id"], newest, "{name}");
    assert!(!exported["events"].as_array().expect("events").is_empty(), "{name}");
    // rm: gone from the list; an unknown id is one clear line.
    t.ok(&["history", "rm", &ids[2].to_string()], ctx.path());
    let ls = json(&t.ok(&["history", "ls", "--format", "json"], ctx.path()));
    assert!(ls.as_array().expect("list").iter().all(|b| b["id"] != ids[2]), "{name}: removed");
    let o = t.kiln(&["history", "inspect", "999999"], ctx.path());
    assert!(!o.status.success() && stderr(&o).contains("no build 999999"), "{name}: {}", stderr(&o));
    let o = t.kiln(&["history", "inspect", "latest-ish"], ctx.path());
    assert!(!o.status.success() && stderr(&o).contains("is not a build id"), "{name}: {}", stderr(&o));
}

fn kiln_cmd(c: &Cluster, args: &[&str], cwd: &std::path::Path) -> Command {
    let mut cmd = Command::new(kiln_bin());
    cmd.args(args)
        .current_dir(cwd)
        .env("KILN_HOME", c.home())
        .env("KILN_HOST", c.hosts())
        .env("KILN_TOKEN", &c.admin_token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Waits (bounded) until build `id`'s slices run.
fn wait_running(c: &Cluster, id: u64, cwd: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = json(&c.ok(c.kiln(&["history", "inspect", &id.to_string(), "--format", "json"], cwd)));
        if d["view"]["slices"].as_array().is_some_and(|s| s.iter().all(|s| s["state"] == "running")) {
            return;
        }
        assert!(Instant::now() < deadline, "build {id} never ran: {d}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The newest build's id.
fn newest(c: &Cluster, cwd: &std::path::Path) -> u64 {
    let ls = json(&c.ok(c.kiln(&["history", "ls", "--format", "json", "--limit", "1"], cwd)));
    ls[0]["id"].as_u64().expect("a build")
}

fn farm_only(c: &Cluster, base: &str, registry: &Registry) {
    let ctx = TempDir::new("history-farm");
    let tag = format!("{}/history/detached:1", registry.addr);
    ctx.write("Dockerfile", &format!("FROM {base}\nRUN sleep 3 && echo slow > /slow\n"));
    // --detach: the id, at once; logs -f re-attaches and ends with the build.
    let o = c.ok(c.kiln(&["build", "--detach", "--platform", "linux/amd64", "-t", &tag, "--push", "."], ctx.path()));
    let id: u64 = stdout(&o).trim().parse().unwrap_or_else(|_| panic!("--detach prints the id: {}", stdout(&o)));
    let logs = c.ok(c.kiln(&["history", "logs", "-f", &id.to_string()], ctx.path()));
    let text = stdout(&logs);
    assert!(text.contains("RUN sleep 3") && text.contains(&format!("build {id} done")), "{text}");
    let o = c.kiln(&["build", "--detach", "-o", "type=local,dest=out", "."], ctx.path());
    assert!(!o.status.success() && stderr(&o).contains("use --push"), "{}", stderr(&o));

    // A client killed mid-build does not cancel it.
    ctx.write("Dockerfile", &format!("FROM {base}\nRUN sleep 4 && echo survived > /s\n"));
    let mut client = kiln_cmd(c, &["build", "--progress", "plain", "--platform", "linux/amd64", "-t", &tag, "--push", "."], ctx.path())
        .spawn()
        .expect("kiln build");
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = loop {
        let n = newest(c, ctx.path());
        if n > id {
            break n;
        }
        assert!(Instant::now() < deadline, "the build was never submitted");
        std::thread::sleep(Duration::from_millis(100));
    };
    wait_running(c, id, ctx.path());
    client.kill().expect("kill the client");
    let _ = client.wait();
    let logs = c.kiln(&["history", "logs", "-f", &id.to_string()], ctx.path());
    assert!(logs.status.success() && stdout(&logs).contains("done"), "a killed client cancelled its build: {}", stdout(&logs));

    // Ctrl-C cancels: the build fails as cancelled and its agent stops before the next step.
    ctx.write("Dockerfile", &format!("FROM {base}\nRUN sleep 3\nRUN echo must-not-run > /x\n"));
    let client = kiln_cmd(c, &["build", "--progress", "plain", "--no-cache", "--platform", "linux/amd64", "."], ctx.path())
        .spawn()
        .expect("kiln build");
    let deadline = Instant::now() + Duration::from_secs(60);
    let cancelled = loop {
        let n = newest(c, ctx.path());
        if n > id {
            break n;
        }
        assert!(Instant::now() < deadline, "the build was never submitted");
        std::thread::sleep(Duration::from_millis(100));
    };
    wait_running(c, cancelled, ctx.path());
    let pid = client.id().to_string();
    kiln_tests::run_ok(Command::new("kill").args(["-INT", &pid]));
    let out = client.wait_with_output().expect("the client ends");
    assert!(!out.status.success() && stderr(&out).contains(&format!("build {cancelled} cancelled")), "{}", stderr(&out));
    let ls = json(&c.ok(c.kiln(&["history", "ls", "--format", "json", "--filter", "status=cancelled"], ctx.path())));
    assert_eq!(ls[0]["id"], cancelled, "{ls}");
    // The agent stopped the slice: the next step never started.
    std::thread::sleep(Duration::from_secs(4));
    let o = c.kiln(&["history", "logs", &cancelled.to_string()], ctx.path());
    let logs = stdout(&o);
    assert!(!o.status.success(), "the log of a failed build exits as the build did");
    assert!(!logs.contains("must-not-run") && logs.contains("cancelled"), "{logs}");
    let o = c.kiln(&["history", "rm", &cancelled.to_string()], ctx.path());
    assert!(o.status.success(), "a cancelled build can be removed: {}", stderr(&o));

    // Tenants: a user sees only their tenant's builds.
    let token = stdout(&c.ok(c.kiln(&["coordinator", "token", "--role", "user", "--tenant", "other"], ctx.path()))).trim().to_string();
    let theirs = c.kiln_with_token(&["history", "ls", "--format", "json"], ctx.path(), &token);
    assert!(theirs.status.success(), "{}", stderr(&theirs));
    assert_eq!(json(&theirs), serde_json::json!([]), "another tenant's builds are invisible");
    let o = c.kiln_with_token(&["history", "inspect", &id.to_string()], ctx.path(), &token);
    assert!(!o.status.success() && stderr(&o).contains(&format!("no build {id}")), "{}", stderr(&o));
    let o = c.kiln_with_token(&["history", "rm", &id.to_string()], ctx.path(), &token);
    assert!(!o.status.success(), "another tenant's build cannot be removed");
    let o = c.kiln_with_token(&["history", "logs", &id.to_string()], ctx.path(), &token);
    assert!(!o.status.success() && stderr(&o).contains(&format!("no build {id}")), "{}", stderr(&o));
}

#[test]
fn history_lists_inspects_explains_and_follows_builds() {
    let registry = Registry::start();
    let home = TempDir::new("history-home");
    let base = base_image(&registry, home.path());
    let embedded = Target::Embedded(home);
    history(&embedded, &base);
    let ctx = TempDir::new("history-detach");
    ctx.write("Dockerfile", "FROM scratch\n");
    let o = embedded.kiln(&["build", "--detach", "--push", "-t", "x/y", "."], ctx.path());
    assert!(!o.status.success() && stderr(&o).contains("--detach needs a farm"), "{}", stderr(&o));
    let f = farm();
    history(&f, &base);
    let Target::Farm(c) = &f else { unreachable!("farm() is a farm") };
    farm_only(c, &base, &registry);
}
