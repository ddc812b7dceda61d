//! The web console end to end: a farm of three coordinators, each serving `--console-listen` on
//! a loopback port, and one agent; two builds of one target (the second with a changed context
//! file, so that it has cached and executed steps and a cache-miss explanation), with a build
//! argument and a log line that carry `<script>`. Scripts' path: a plain HTTP client with a
//! bearer token against a follower's console (which forwards to the leader), the sign-in form
//! and its cookie, and a user of another tenant who sees none of the builds. Browser's path:
//! headless Chromium signs in through the form, loads each page, waits for the page's script to
//! update it live (a new build appears without a reload), and the DOM is checked against the
//! farm's own answers; screenshots go to `target/console-screenshots/`.

use kiln_tests::browser::Browser;
use kiln_tests::cluster::Cluster;
use kiln_tests::{base_image, repo_root, stdout, Registry, TempDir};
use serde_json::Value;
use std::time::Duration;

const SCRIPT: &str = "<script>alert(1)</script>";

/// A plain HTTP client that does not follow redirects (the test looks at them).
fn http() -> ureq::Agent {
    ureq::AgentBuilder::new().redirects(0).timeout(Duration::from_secs(30)).build()
}

/// The status, the headers asked for, and the body of an answer.
fn answer(r: Result<ureq::Response, ureq::Error>) -> (u16, ureq::Response) {
    match r {
        Ok(r) => (r.status(), r),
        Err(ureq::Error::Status(code, r)) => (code, r),
        Err(e) => panic!("HTTP request failed: {e}"),
    }
}

fn get(url: &str, token: Option<&str>) -> (u16, String) {
    let mut req = http().get(url);
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let (status, r) = answer(req.call());
    (status, r.into_string().unwrap_or_default())
}

fn get_json(url: &str, token: &str) -> Value {
    let (status, body) = get(url, Some(token));
    assert_eq!(status, 200, "GET {url}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {body}"))
}

/// The classes the console gives a step's bar, from the step as the API reports it.
fn bar_classes(step: &Value) -> String {
    let source = match step["source"].as_str().unwrap_or_default() {
        "executed" => "executed",
        "local" => "cached local",
        "peer" => "cached peer",
        "imported" => "cached imported",
        other => panic!("unknown step source {other}"),
    };
    let emulated = if step["emulated"] == true { " emulated" } else { "" };
    format!("bar {source}{emulated}")
}

#[test]
fn the_console_shows_the_farm_the_builds_and_a_build_timeline_in_a_browser() {
    let registry = Registry::start();
    let home = TempDir::new("console-home");
    let base = base_image(&registry, home.path());
    let mut c = Cluster::start_with_console(3);
    c.add_agent("a1", &[], 2);
    assert_eq!(c.consoles.len(), 3);
    let leader = c.leader();
    let follower = if leader == 1 { 2 } else { 1 };
    let (at_leader, at_follower) = (c.consoles[leader as usize - 1].clone(), c.consoles[follower as usize - 1].clone());

    // Two builds of one target: the second changes a context file.
    let ctx = TempDir::new("console-ctx");
    ctx.write(
        "Dockerfile",
        &format!("FROM {base}\nARG NOTE=plain\nCOPY app/ /app/\nRUN echo \"note: $NOTE\" && cat /app/main.txt\nRUN echo done > /done\n"),
    );
    ctx.write("app/main.txt", "one");
    let tag = format!("{}/console/app:1", registry.addr);
    let note = format!("NOTE={SCRIPT}");
    let build = |c: &Cluster| {
        let args =
            ["build", "--progress", "plain", "--platform", "linux/amd64,linux/arm64", "--build-arg", &note, "-t", &tag, "--push", "."];
        c.ok(c.kiln(&args, ctx.path()));
        let ls: Value = serde_json::from_slice(&c.ok(c.kiln(&["history", "ls", "--format", "json", "--limit", "1"], ctx.path())).stdout)
            .expect("history JSON");
        ls[0]["id"].as_u64().expect("a build id")
    };
    let first = build(&c);
    ctx.write("app/main.txt", "two");
    let second = build(&c);

    // Scripts: a bearer token, against a follower.
    let admin = c.admin_token.clone();
    let (status, body) = get(&format!("{at_follower}/api/builds"), None);
    assert_eq!(status, 401, "no token, no builds: {body}");
    let (status, body) = get(&format!("{at_follower}/api/builds"), Some("kiln-not-a-token"));
    assert!(status == 401 || status == 403, "a bad token is refused: {status} {body}");
    let list = get_json(&format!("{at_follower}/api/builds"), &admin);
    let ids: Vec<u64> = list.as_array().expect("a list").iter().filter_map(|b| b["id"].as_u64()).collect();
    assert_eq!(ids, vec![second, first], "newest first");
    let filtered = get_json(&format!("{at_follower}/api/builds?state=completed&platform=linux%2Farm64"), &admin);
    assert_eq!(filtered.as_array().map(Vec::len), Some(2), "{filtered}");
    let failed = get_json(&format!("{at_follower}/api/builds?state=failed"), &admin);
    assert_eq!(failed, serde_json::json!([]));
    let (status, body) = get(&format!("{at_follower}/api/builds?state=sideways"), Some(&admin));
    assert!(status == 400 && body.contains("expected running, completed, failed or cancelled"), "{status} {body}");
    let farm = get_json(&format!("{at_follower}/api/farm"), &admin);
    assert_eq!(farm["status"]["leader"], leader, "{farm}");
    assert_eq!(farm["agents"][0]["info"]["name"], "a1", "the leader's view of the agents, forwarded: {farm}");
    assert_eq!(farm["agents"][0]["status"], "ready", "{farm}");
    let detail = get_json(&format!("{at_follower}/api/builds/{second}"), &admin);
    let misses = detail["detail"]["misses"].as_array().expect("misses");
    assert!(
        misses.iter().any(|m| m["reason"].as_str().is_some_and(|r| r.contains("app/main.txt changed content"))),
        "the changed file is named: {misses:?}"
    );
    let events = detail["events"].as_array().expect("events");
    assert!(!events.is_empty(), "the log comes from the leader through the follower");

    // The sign-in form sets an HttpOnly cookie that lets a page through.
    let (status, r) = answer(http().post(&format!("{at_follower}/login")).send_form(&[("token", admin.as_str()), ("next", "/farm")]));
    assert_eq!(status, 303);
    assert_eq!(r.header("Location"), Some("/farm"));
    let cookie = r.header("Set-Cookie").unwrap_or_default().to_string();
    assert!(cookie.starts_with("kiln_session=") && cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let session = cookie.split(';').next().unwrap_or_default().to_string();
    let (status, r) = answer(http().get(&format!("{at_follower}/farm")).set("Cookie", &session).call());
    let page = r.into_string().unwrap_or_default();
    assert!(status == 200 && page.contains("data-name=\"a1\""), "{status}: {page}");
    let (status, r) = answer(http().get(&format!("{at_follower}/builds")).call());
    assert_eq!((status, r.header("Location")), (303, Some("/login?next=/builds")), "a stranger is sent to sign in");
    let (status, _) = answer(http().post(&format!("{at_follower}/login")).send_form(&[("token", "nope"), ("next", "/farm")]));
    assert_eq!(status, 401);

    // A user of another tenant sees none of these builds.
    let out = c.ok(c.kiln(&["coordinator", "token", "--role", "user", "--tenant", "other"], ctx.path()));
    let other = stdout(&out).trim().to_string();
    assert_eq!(get_json(&format!("{at_follower}/api/builds"), &other), serde_json::json!([]));
    let (status, body) = get(&format!("{at_follower}/api/builds/{second}"), Some(&other));
    assert!(status == 404 && body.contains(&format!("no build {second}")), "{status} {body}");
    let (status, body) = get(&format!("{at_leader}/builds/{second}"), Some(&other));
    assert!(status == 404 && !body.contains("app/main.txt"), "{status} {body}");

    // kiln history open: the page of the build on the console of the coordinator it reached.
    let out = c.ok(c.kiln(&["history", "open", &second.to_string()], ctx.path()));
    let url = stdout(&out).trim().to_string();
    assert!(c.consoles.iter().any(|u| url == format!("{u}/builds/{second}")), "{url} is not a console page: {:?}", c.consoles);

    // The browser: sign in through the form, then each page.
    let shots = repo_root().join("target/console-screenshots");
    let mut b = Browser::start();
    b.goto(&format!("{at_leader}/farm"));
    b.wait_until("the sign-in page", "location.pathname === '/login' && !!document.getElementById('token')");
    let token_js = serde_json::to_string(&admin).expect("JSON string");
    b.eval(&format!("document.getElementById('token').value = {token_js}; document.querySelector('.login form').submit(); true"));
    b.wait_until("the farm page", "location.pathname === '/farm' && !!document.querySelector('tr.agent[data-name=\"a1\"]')");
    let roles =
        b.eval("[...document.querySelectorAll('tr.coordinator')].map(r => [Number(r.dataset.id), r.querySelector('.role').textContent])");
    let roles: Vec<(u64, String)> = serde_json::from_value(roles).expect("roles");
    assert_eq!(roles.len(), 3, "{roles:?}");
    for (id, role) in &roles {
        assert_eq!(role, if *id == leader { "leader" } else { "follower" }, "coordinator {id}: {roles:?}");
    }
    let agent = b.eval("document.querySelector('tr.agent[data-name=\"a1\"]').textContent");
    let agent = agent.as_str().unwrap_or_default();
    let native = farm["agents"][0]["info"]["native"][0].as_str().unwrap_or("linux/amd64");
    assert!(agent.contains("ready") && agent.contains(native) && agent.contains("/ 2 slots"), "{agent}");
    // Live: the page's script refreshes it in place (a marker set on the window survives).
    b.eval("window.kilnMarker = 42; true");
    b.wait_until(
        "a live refresh of the farm",
        "document.getElementById('updated').textContent.startsWith('updated') && window.kilnMarker === 42",
    );
    b.screenshot(&shots.join("farm.png"));

    b.goto(&format!("{at_leader}/builds"));
    b.wait_until(
        "the build list",
        &format!("!!document.querySelector('tr.build[data-id=\"{second}\"]') && !!document.querySelector('tr.build[data-id=\"{first}\"]')"),
    );
    b.eval("window.kilnMarker = 7; true");
    // A third build (the same again, fully cached) appears without a reload.
    let third = build(&c);
    b.wait_until(
        "the new build in the list, live",
        &format!("!!document.querySelector('tr.build[data-id=\"{third}\"]') && window.kilnMarker === 7"),
    );
    b.goto(&format!("{at_leader}/builds?state=failed"));
    b.wait_until("an empty filtered list", "!!document.querySelector('main .empty') && !document.querySelector('tr.build')");
    b.goto(&format!("{at_leader}/builds"));
    b.wait_until("the build list again", &format!("!!document.querySelector('tr.build[data-id=\"{third}\"]')"));
    b.screenshot(&shots.join("builds.png"));

    // One build: a bar per step with its source's classes, the explanation, the log.
    b.goto(&format!("{at_leader}/builds/{second}"));
    b.wait_until("the build page", "!!document.querySelector('.timeline .bar') && !!document.querySelector('.log')");
    let bars = b.eval(
        "[...document.querySelectorAll('.slice')].map(s => [s.dataset.platform, [...s.querySelectorAll('.bar')].map(b => b.className)])",
    );
    let bars: Vec<(String, Vec<String>)> = serde_json::from_value(bars).expect("bars");
    let slices = detail["detail"]["view"]["slices"].as_array().expect("slices");
    let steps = detail["detail"]["steps"].as_array().expect("steps");
    assert_eq!(bars.len(), slices.len(), "a row of bars per slice: {bars:?}");
    for ((platform, classes), (slice, steps)) in bars.iter().zip(slices.iter().zip(steps)) {
        assert_eq!(platform, slice["platform"].as_str().unwrap_or_default());
        let expected: Vec<String> = steps.as_array().expect("steps").iter().map(bar_classes).collect();
        assert_eq!(classes, &expected, "{platform}: one bar per step, classed by where it came from");
    }
    let all: Vec<&String> = bars.iter().flat_map(|(_, c)| c).collect();
    assert!(all.iter().any(|c| c.starts_with("bar cached")), "the ARG step was cached: {all:?}");
    assert!(all.iter().any(|c| c.starts_with("bar executed")), "the COPY and RUN steps ran: {all:?}");
    let why = b.eval("[...document.querySelectorAll('.miss')].map(m => m.textContent).join('\\n')");
    assert!(why.as_str().is_some_and(|w| w.contains("COPY app/ /app/") && w.contains("app/main.txt changed content")), "{why}");
    let log = b.eval("document.querySelector('.log').textContent");
    assert!(log.as_str().is_some_and(|l| l.contains(&format!("note: {SCRIPT}")) && l.contains("DONE")), "the log, as text: {log}");
    // What the build carried is shown as text, never run as markup.
    let html = b.html();
    assert!(html.contains("note: &lt;script&gt;alert(1)&lt;/script&gt;"), "the log line is escaped");
    assert!(html.contains("NOTE=&lt;script&gt;alert(1)&lt;/script&gt;"), "the build argument is escaped");
    assert_eq!(b.eval("document.querySelectorAll('script').length"), 1, "only the console's own script");
    assert!(html.contains(&format!("href=\"http://{}/v2/console/app/manifests/1\"", registry.addr)), "a link to the tag in the registry");
    let digest = detail["detail"]["view"]["index_digest"].as_str().unwrap_or_default();
    assert!(digest.starts_with("sha256:") && html.contains(digest), "the index digest");
    b.screenshot(&shots.join("build.png"));
    // A finished build's page stops polling; its fragment says so.
    let (status, r) =
        answer(http().get(&format!("{at_leader}/builds/{second}?partial=1")).set("Authorization", &format!("Bearer {admin}")).call());
    assert_eq!((status, r.header("X-Kiln-Final")), (200, Some("1")));
    let (status, r) = answer(http().get(&format!("{at_leader}/farm?partial=1")).set("Authorization", &format!("Bearer {admin}")).call());
    assert!(status == 200 && r.header("X-Kiln-Final").is_none(), "the farm keeps refreshing");

    // A running build's page follows it to its end without a reload.
    let slow = TempDir::new("console-slow");
    slow.write("Dockerfile", &format!("FROM {base}\nRUN echo started && sleep 5 && echo finished\n"));
    let slow_tag = format!("{}/console/slow:1", registry.addr);
    let out = c.ok(c.kiln(&["build", "--detach", "--platform", "linux/amd64", "-t", &slow_tag, "--push", "."], slow.path()));
    let running: u64 = stdout(&out).trim().parse().unwrap_or_else(|_| panic!("--detach prints the id: {}", stdout(&out)));
    b.goto(&format!("{at_leader}/builds/{running}"));
    let state = b.eval("document.querySelector('h1 .status').textContent");
    assert_eq!(state, "running", "the build is still running when its page loads");
    b.eval("window.kilnMarker = 9; true");
    b.wait_until("the log, live", "document.querySelector('main').textContent.includes('started')");
    b.screenshot(&shots.join("running.png"));
    b.wait_until(
        "the build's end, live",
        "document.querySelector('h1 .status').textContent === 'completed' && !!document.querySelector('.timeline .bar.executed') && document.getElementById('updated').textContent.includes('finished') && window.kilnMarker === 9",
    );
}

#[test]
fn a_console_on_a_non_loopback_address_is_refused_in_one_line() {
    let dir = TempDir::new("console-refused");
    let data = dir.path().join("c1");
    let out = kiln_tests::kiln(
        dir.path(),
        &[
            "coordinator",
            "--id",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().expect("utf-8"),
            "--console-listen",
            "0.0.0.0:7480",
        ],
        dir.path(),
    );
    let err = kiln_tests::stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("console_listen 0.0.0.0:7480") && err.contains("only on a loopback address"), "{err}");
    assert!(!data.exists(), "nothing is written before the refusal");
}
