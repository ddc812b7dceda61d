//! Whole slices through the engine with the [`RecordingExecutor`]: no root, no runc, no
//! network. Files are copied with `--chown` to the user running the tests, so that nothing
//! needs the privilege to give files away.

use super::{rfc3339, Agent, EngineError, SliceRequest, SliceResult};
use crate::executor::fake::{RecordedRun, RecordingExecutor};
use kiln_shared::frontend::dockerignore::DockerIgnore;
use kiln_shared::oci::{ImageConfig, Manifest};
use kiln_shared::Platform;
use std::path::PathBuf;
use std::sync::Arc;

/// A directory under the system's temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("kiln-engine-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An agent in its own directory, running steps with `exec`, and a build context holding
/// `app/start.sh`.
struct Fixture {
    tmp: TempDir,
    agent: Agent,
    exec: Arc<RecordingExecutor>,
}

impl Fixture {
    fn new(name: &str, exec: RecordingExecutor) -> Fixture {
        let tmp = TempDir::new(name);
        let exec = Arc::new(exec);
        let agent = Agent::open(&tmp.0.join("agent"), &[]).expect("agent").with_executor(exec.clone());
        let app = tmp.0.join("context/app");
        std::fs::create_dir_all(&app).expect("context");
        std::fs::write(app.join("start.sh"), "#!/bin/sh\necho started\n").expect("context file");
        Fixture { tmp, agent, exec }
    }

    fn context(&self) -> PathBuf {
        self.tmp.0.join("context")
    }

    fn build(&self, dockerfile: &str, build_args: &[(&str, &str)], scope: &str) -> Result<SliceResult, EngineError> {
        let build_args: Vec<(String, String)> = build_args.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let context = self.context();
        let ignore = DockerIgnore::default();
        let req = SliceRequest {
            dockerfile,
            dockerfile_name: "Dockerfile",
            context: &context,
            ignore: &ignore,
            platform: Platform::host(),
            build_args: &build_args,
            target: None,
            no_cache: false,
            no_cache_filter: &[],
            pull: false,
            cache_scope: scope,
            remote: &[],
            native: &[],
            labels: &[],
            session: &super::NoSession,
            named: &[],
            run: &Default::default(),
            cancelled: &std::sync::atomic::AtomicBool::new(false),
        };
        self.agent.run_slice(&req, &|_| {})
    }

    fn config(&self, result: &SliceResult) -> ImageConfig {
        let manifest: Manifest = serde_json::from_slice(&self.agent.store.read(&result.manifest.digest).expect("manifest")).expect("json");
        serde_json::from_slice(&self.agent.store.read(&manifest.config.digest).expect("config")).expect("json")
    }
}

/// `--chown` to whoever runs the tests.
fn me() -> String {
    format!("{}:{}", nix::unistd::getuid(), nix::unistd::getgid())
}

fn app_dockerfile() -> String {
    format!(
        "FROM scratch\n\
         ARG GREETING=hello\n\
         ENV APP_HOME=/app MODE=test\n\
         COPY --chown={me} app /app\n\
         WORKDIR /app\n\
         USER 1000:1001\n\
         RUN echo \"$GREETING\" > greeting.txt\n\
         LABEL org.example.role=demo\n\
         EXPOSE 8080\n\
         CMD [\"./start.sh\"]\n",
        me = me()
    )
}

fn env_has(run: &RecordedRun, entry: &str) -> bool {
    run.env.iter().any(|e| e == entry)
}

#[test]
fn timestamps() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
}

#[test]
fn run_step_gets_argv_env_cwd_and_user_from_the_stage() {
    let f = Fixture::new("runspec", RecordingExecutor::writing(&[("/app/greeting.txt", "hello\n")]));
    let result = f.build(&app_dockerfile(), &[], "shared").expect("build");

    let runs = f.exec.runs();
    assert_eq!(runs.len(), 1, "one RUN step: {runs:?}");
    let run = &runs[0];
    assert_eq!(run.args, ["/bin/sh", "-c", "echo \"$GREETING\" > greeting.txt"]);
    assert_eq!(run.cwd, "/app");
    assert_eq!((run.uid, run.gid), (1000, 1001));
    assert_eq!(run.network, "default");
    assert!(run.binds.is_empty(), "{:?}", run.binds);
    // The stage's ENV, then the build arguments in scope, and a PATH (scratch has none).
    assert!(env_has(run, "APP_HOME=/app") && env_has(run, "MODE=test"), "{:?}", run.env);
    assert!(env_has(run, "GREETING=hello"), "{:?}", run.env);
    assert!(run.env.iter().any(|e| e.starts_with("PATH=")), "{:?}", run.env);

    // COPY and RUN add layers; WORKDIR names a directory the COPY made, so its layer is the
    // empty one (BuildKit commits a layer for every WORKDIR).
    assert_eq!(result.layers.len(), 3, "{:?}", result.layers);
    assert_eq!(result.layers[1].diff_id.hex(), "5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef", "the empty tar");
    assert_eq!(result.cache_hits, 0);
    let snapshot = f.agent.snapshot(&result.layers[2]).expect("snapshot");
    assert_eq!(std::fs::read_to_string(snapshot.join("app/greeting.txt")).expect("RUN's file"), "hello\n");
    let copied = f.agent.snapshot(&result.layers[0]).expect("snapshot");
    assert!(copied.join("app/start.sh").is_file());
}

#[test]
fn image_config_has_the_stage_env_workdir_and_config_edits() {
    let f = Fixture::new("config", RecordingExecutor::writing(&[("/app/greeting.txt", "hello\n")]));
    let result = f.build(&app_dockerfile(), &[], "shared").expect("build");
    let config = f.config(&result);
    let c = &config.config;
    assert!(c.env.iter().any(|e| e == "APP_HOME=/app"), "{:?}", c.env);
    assert!(c.env.iter().any(|e| e == "MODE=test"), "{:?}", c.env);
    // Build arguments are not part of the image.
    assert!(!c.env.iter().any(|e| e.starts_with("GREETING=")), "{:?}", c.env);
    assert_eq!(c.working_dir, "/app");
    assert_eq!(c.user, "1000:1001");
    assert_eq!(c.labels.get("org.example.role").map(String::as_str), Some("demo"));
    assert!(c.exposed_ports.contains_key("8080/tcp"), "{:?}", c.exposed_ports);
    assert_eq!(c.cmd.as_deref(), Some(&["./start.sh".to_string()][..]));
    // One history entry per step; COPY, WORKDIR and RUN have layers.
    assert_eq!(config.rootfs.diff_ids.len(), 3);
    let with_layers: Vec<bool> = config.history.iter().map(|h| !h.empty_layer).collect();
    assert_eq!(with_layers.iter().filter(|l| **l).count(), 3, "{:?}", config.history);
}

#[test]
fn second_build_is_all_cache_hits_and_runs_nothing() {
    let f = Fixture::new("hits", RecordingExecutor::writing(&[("/app/greeting.txt", "hello\n")]));
    let first = f.build(&app_dockerfile(), &[], "shared").expect("first build");
    let second = f.build(&app_dockerfile(), &[], "shared").expect("second build");
    assert_eq!(f.exec.runs().len(), 1, "the RUN step came from the cache");
    assert_eq!(second.cache_misses, 0);
    assert_eq!(second.cache_hits, first.cache_hits + first.cache_misses);
    assert_eq!(second.manifest.digest, first.manifest.digest, "the same image");
}

#[test]
fn changing_a_build_arg_the_run_sees_misses_only_from_the_run() {
    let f = Fixture::new("args", RecordingExecutor::writing(&[("/app/greeting.txt", "hello\n")]));
    let first = f.build(&app_dockerfile(), &[], "shared").expect("first build");
    let second = f.build(&app_dockerfile(), &[("GREETING", "bonjour")], "shared").expect("second build");
    let runs = f.exec.runs();
    assert_eq!(runs.len(), 2, "the RUN step ran again");
    assert!(env_has(&runs[1], "GREETING=bonjour"), "{:?}", runs[1].env);
    // Steps before the RUN are hits; the RUN and everything after it miss.
    let after_run = 3; // LABEL, EXPOSE, CMD
    assert_eq!(second.cache_misses, 1 + after_run, "{second:?}");
    assert_eq!(second.cache_hits + second.cache_misses, first.cache_misses);
}

#[test]
fn cache_scopes_do_not_share_records() {
    let f = Fixture::new("scopes", RecordingExecutor::default());
    let dockerfile = "FROM scratch\nRUN true\n";
    f.build(dockerfile, &[], "tenant-a").expect("first build");
    let other = f.build(dockerfile, &[], "tenant-b").expect("second build");
    assert_eq!(other.cache_hits, 0);
    assert_eq!(f.exec.runs().len(), 2);
}

#[test]
fn a_run_that_changes_nothing_adds_the_empty_layer() {
    // As BuildKit: every RUN commits a layer; one that changed nothing is the empty tar.
    let f = Fixture::new("empty", RecordingExecutor::default());
    let result = f.build("FROM scratch\nRUN true\n", &[], "shared").expect("build");
    assert_eq!(result.layers.len(), 1, "{:?}", result.layers);
    assert_eq!(result.layers[0].diff_id.hex(), "5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef");
    let history = f.config(&result).history;
    assert_eq!(history.len(), 1);
    assert!(!history[0].empty_layer);
    assert_eq!(history[0].created_by.as_deref(), Some("RUN /bin/sh -c true # buildkit"));
}

#[test]
fn run_mounts_become_binds() {
    let f = Fixture::new("mounts", RecordingExecutor::default());
    let dockerfile =
        "FROM scratch\nRUN --mount=type=cache,target=/root/.cache --mount=type=bind,source=app,target=/src --network=none make\n";
    f.build(dockerfile, &[], "shared").expect("build");
    let runs = f.exec.runs();
    let run = &runs[0];
    assert_eq!(run.network, "none");
    let targets: Vec<(&str, bool)> = run.binds.iter().map(|(_, to, ro)| (to.as_str(), *ro)).collect();
    assert_eq!(targets, [("/root/.cache", false), ("/src", true)]);
    let (host, _, _) = &run.binds[1];
    assert_eq!(host, &std::fs::canonicalize(f.context().join("app")).expect("context"));
    assert!(run.binds[0].0.starts_with(f.tmp.0.join("agent/cachemounts")));
}

#[test]
fn failed_run_is_a_step_error_naming_the_line() {
    let f = Fixture::new("fails", RecordingExecutor::failing(3));
    let err = f.build("FROM scratch\nENV A=b\nRUN exit 3\n", &[], "shared").expect_err("the RUN fails");
    let msg = err.to_string();
    assert!(matches!(err, EngineError::Step { line: 3, .. }), "{err:?}");
    assert!(msg.contains("Dockerfile:3"), "{msg}");
    assert!(msg.contains("did not complete successfully: exit code: 3"), "{msg}");
    // A failed step leaves no record: the next build runs it again.
    let _ = f.build("FROM scratch\nENV A=b\nRUN exit 3\n", &[], "shared");
    assert_eq!(f.exec.runs().len(), 2);
}

#[test]
fn copy_from_a_stage_reads_its_filesystem_through_the_executor() {
    let f = Fixture::new("from", RecordingExecutor::writing(&[("/out/built.txt", "built\n")]));
    let dockerfile =
        format!("FROM scratch AS build\nRUN build\n\nFROM scratch\nCOPY --from=build --chown={} /out/built.txt /built.txt\n", me());
    let result = f.build(&dockerfile, &[], "shared").expect("build");
    assert_eq!(result.layers.len(), 1, "{:?}", result.layers);
    let snapshot = f.agent.snapshot(&result.layers[0]).expect("snapshot");
    assert_eq!(std::fs::read_to_string(snapshot.join("built.txt")).expect("copied file"), "built\n");
}
