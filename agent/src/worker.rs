//! An agent process (`kiln agent`): joins the farm, registers as a context, and long-polls the
//! coordinators for slices; each slice is fetched (context blobs from the coordinator that
//! received them), built by the [`Agent`] engine, pushed by digest and reported.
//!
//! The poll is also the heartbeat that keeps the agent's lease: it runs on its own task, never
//! behind a build. A slice's report carries its attempt number, so a report from an agent that
//! was cut off and replaced is refused by the cluster instead of counted twice.

use crate::config::AgentConfig;
use crate::engine::{Agent, EngineError, SliceRequest};
use kiln_shared::api::{AgentInfo, EntryKind, Event, Principal, Request, Response, Role, SliceOutcome, SliceTask};
use kiln_shared::client::Farm;
use kiln_shared::digest::Digest;
use kiln_shared::frontend::dockerignore::DockerIgnore;
use kiln_shared::oci;
use kiln_shared::registry::Reference;
use kiln_shared::transport::{self, TransportError};
use kiln_shared::wire::{ErrorCode, RemoteError};
use kiln_shared::Platform;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("joining the farm at {hosts}: {source}")]
    Join { hosts: String, source: TransportError },
    #[error("registering agent {name}: {source}")]
    Register { name: String, source: TransportError },
    #[error("agent {0} was removed from the farm (`kiln context rm`); start it again to rejoin")]
    Removed(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Config(String),
}

type Key = (u64, u32, u32);

struct Worker {
    cfg: AgentConfig,
    engine: Arc<Agent>,
    farm: Farm,
    native: Vec<Platform>,
    running: Mutex<BTreeSet<Key>>,
    cache_bytes: std::sync::atomic::AtomicU64,
}

impl Worker {
    fn running(&self) -> std::sync::MutexGuard<'_, BTreeSet<Key>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs the agent until `stop` is cancelled (or it is removed from the farm).
pub async fn run(mut cfg: AgentConfig, token: String, stop: CancellationToken) -> Result<(), WorkerError> {
    cfg.validate().map_err(WorkerError::Config)?;
    // runc resolves paths against the bundle: everything under the data dir must be absolute.
    let dir_err = |e: std::io::Error| WorkerError::Config(format!("data dir {}: {e}", cfg.data_dir.display()));
    std::fs::create_dir_all(&cfg.data_dir).map_err(dir_err)?;
    cfg.data_dir = cfg.data_dir.canonicalize().map_err(dir_err)?;
    let root = cfg.data_dir.clone();
    let engine = tokio::task::spawn_blocking(move || Agent::open(&root, &[]))
        .await
        .map_err(|e| WorkerError::Config(format!("opening the agent: {e}")))??;
    let hosts = cfg.hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>().join(",");
    let farm = Farm::join(&cfg.hosts, &token, &cfg.name).await.map_err(|source| WorkerError::Join { hosts, source })?;
    // The peer endpoint: other agents and coordinators fetch blobs from this agent's store.
    let (ca, identity) = farm.credentials();
    let peer = transport::server(cfg.listen, &ca, &identity, false)
        .map_err(|e| WorkerError::Config(format!("listening on {} for peers: {e}", cfg.listen)))?;
    let endpoint = peer.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| cfg.listen.to_string());
    let native = if cfg.platforms.is_empty() { engine.platforms.native.clone() } else { cfg.platforms.clone() };
    // Emulated: whatever the host runs (probed) that is not declared native.
    let emulated: Vec<Platform> =
        engine.platforms.native.iter().chain(&engine.platforms.emulated).filter(|p| !native.contains(p)).cloned().collect();
    let info = AgentInfo {
        name: cfg.name.clone(),
        endpoint,
        native: native.clone(),
        emulated,
        slots: cfg.slots,
        labels: cfg.labels.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let name = cfg.name.clone();
    farm.call(&Request::Register(info.clone()), Duration::from_secs(10), Duration::from_secs(60))
        .await
        .map_err(|source| WorkerError::Register { name: name.clone(), source })?;
    eprintln!("kiln agent {name}: registered; native {}, emulated {}, {} slots", list(&info.native), list(&info.emulated), cfg.slots);
    let worker = Arc::new(Worker {
        cfg,
        engine: Arc::new(engine),
        farm,
        native,
        running: Mutex::new(BTreeSet::new()),
        cache_bytes: Default::default(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(measure_cache(worker.clone()));
    tasks.spawn(serve_peers(peer.clone(), worker.engine.clone()));
    let result = tokio::select! {
        _ = stop.cancelled() => Ok(()),
        r = poll_loop(worker.clone(), &mut tasks) => r,
    };
    tasks.abort_all();
    worker.farm.close();
    peer.close(0u32.into(), b"shutdown");
    result
}

/// Serves blobs of this agent's content store to the farm's agents and coordinators.
async fn serve_peers(endpoint: quinn::Endpoint, engine: Arc<Agent>) {
    let mut conns = tokio::task::JoinSet::new();
    while let Some(incoming) = endpoint.accept().await {
        let engine = engine.clone();
        conns.spawn(async move {
            let Ok(conn) = incoming.await else { return };
            let role = transport::peer_common_name(&conn).and_then(|cn| Principal::from_common_name(&cn)).map(|p| p.role);
            transport::serve_connection(conn, move |req: Request| {
                let (engine, role) = (engine.clone(), role.clone());
                async move { peer_request(&engine, role, req) }
            })
            .await;
        });
        while conns.try_join_next().is_some() {}
    }
}

fn peer_request(engine: &Agent, role: Option<Role>, req: Request) -> Result<Response, RemoteError> {
    use std::io::{Read, Seek, SeekFrom};
    if !matches!(role, Some(Role::Agent | Role::Coordinator)) {
        return Err(RemoteError { code: ErrorCode::PermissionDenied, message: "only agents and coordinators fetch from an agent".into() });
    }
    let Request::GetBlob { digest, offset, len } = req else {
        return Err(RemoteError { code: ErrorCode::BadRequest, message: "an agent serves GetBlob only".into() });
    };
    let d: Digest = digest.parse().map_err(|e| RemoteError { code: ErrorCode::BadRequest, message: format!("{digest:?}: {e}") })?;
    let not_found = |e: String| RemoteError { code: ErrorCode::NotFound, message: e };
    let mut f = engine.store.open_blob(&d).map_err(|e| not_found(e.to_string()))?;
    f.seek(SeekFrom::Start(offset)).map_err(|e| not_found(e.to_string()))?;
    let mut buf = Vec::new();
    f.take(u64::from(len.min(kiln_shared::client::BLOB_CHUNK))).read_to_end(&mut buf).map_err(|e| not_found(e.to_string()))?;
    Ok(Response::Bytes(buf))
}

fn list(ps: &[Platform]) -> String {
    if ps.is_empty() {
        return "none".into();
    }
    ps.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
}

async fn measure_cache(w: Arc<Worker>) {
    loop {
        let root = w.cfg.data_dir.clone();
        if let Ok(u) = tokio::task::spawn_blocking(move || crate::gc::usage(&root)).await {
            w.cache_bytes.store(u.content_bytes + u.snapshot_bytes, std::sync::atomic::Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
}

async fn poll_loop(w: Arc<Worker>, tasks: &mut tokio::task::JoinSet<()>) -> Result<(), WorkerError> {
    loop {
        let running: Vec<Key> = w.running().iter().copied().collect();
        let cache_bytes = w.cache_bytes.load(std::sync::atomic::Ordering::Relaxed);
        let poll = Request::Poll { agent: w.cfg.name.clone(), running, cache_bytes, wait_ms: 1_000 };
        // A short deadline: a coordinator that died must not hold the heartbeat past the lease.
        match w.farm.call(&poll, Duration::from_millis(2_500), Duration::from_secs(5)).await {
            Ok(Response::Tasks(list)) => {
                for task in list {
                    if w.running().insert((task.build, task.slice, task.attempt)) {
                        tasks.spawn(run_task(w.clone(), task));
                    }
                }
            }
            Ok(other) => eprintln!("agent {}: unexpected answer to a poll: {other:?}", w.cfg.name),
            Err(TransportError::Remote(e)) if e.code == ErrorCode::NotFound => return Err(WorkerError::Removed(w.cfg.name.clone())),
            Err(e) => {
                // The registration is in Raft and survives any coordinator; only the poll is retried.
                eprintln!("agent {}: poll: {e}", w.cfg.name);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        while tasks.try_join_next().is_some() {}
    }
}

/// Runs one slice and reports it; the report is retried until the cluster takes (or refuses) it.
async fn run_task(w: Arc<Worker>, task: SliceTask) {
    let key = (task.build, task.slice, task.attempt);
    let report = match execute(&w, &task).await {
        Ok(outcome) => Request::SliceDone(outcome),
        Err(message) => Request::SliceFailed { build: task.build, slice: task.slice, attempt: task.attempt, message },
    };
    if let Err(e) = w.farm.call(&report, Duration::from_secs(10), Duration::from_secs(300)).await {
        eprintln!("agent {}: reporting slice {}/{} attempt {}: {e}", w.cfg.name, task.build, task.slice, task.attempt);
    }
    w.running().remove(&key);
}

async fn execute(w: &Arc<Worker>, task: &SliceTask) -> Result<SliceOutcome, String> {
    let dir = w.cfg.data_dir.join("contexts").join(format!("{}-{}-{}", task.build, task.slice, task.attempt));
    let _cleanup = RemoveOnDrop(dir.clone());
    materialize(w, task, &dir).await?;

    // Progress goes to the coordinators in small batches while the slice runs.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let forwarder = {
        let w = w.clone();
        let (build, slice, attempt) = (task.build, task.slice, task.attempt);
        tokio::spawn(async move {
            let mut open = true;
            while open {
                let mut events = Vec::new();
                match rx.recv().await {
                    Some(e) => events.push(e),
                    None => break,
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                loop {
                    match rx.try_recv() {
                        Ok(e) => events.push(e),
                        Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                        Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                            open = false;
                            break;
                        }
                    }
                }
                let _ =
                    w.farm.call(&Request::Events { build, slice, attempt, events }, Duration::from_secs(5), Duration::from_secs(5)).await;
            }
        })
    };

    let engine = w.engine.clone();
    let spec = task.spec.clone();
    let platform = task.platform.clone();
    let context = dir.clone();
    let result = tokio::task::spawn_blocking(move || {
        let req = SliceRequest {
            dockerfile: &spec.dockerfile,
            dockerfile_name: &spec.dockerfile_name,
            context: &context,
            // The CLI already applied .dockerignore to what it sent.
            ignore: &DockerIgnore::default(),
            platform,
            build_args: &spec.build_args,
            target: spec.target.as_deref(),
            no_cache: spec.no_cache,
        };
        let result = engine.run_slice(&req, &|e| {
            let _ = tx.send(e);
        })?;
        let image = if spec.zstd { engine.zstd_image(&result)? } else { (result.manifest.clone(), result.blobs.clone()) };
        if spec.push {
            push(&engine, &spec.tags, &image).map_err(EngineError::Copy)?;
        }
        Ok::<_, EngineError>((result, image.0, image.1))
    })
    .await;
    let _ = forwarder.await;
    let (result, manifest, blobs) = match result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(e) => return Err(format!("the slice's task failed: {e}")),
    };
    if task.spec.return_blobs {
        let principal = Principal { role: kiln_shared::api::Role::Agent, name: w.cfg.name.clone() };
        let origin = reconnect(w, &task.context_origin, principal)?;
        let sent = send_blobs(w, &origin, &blobs).await;
        origin.close();
        sent?;
    }
    Ok(SliceOutcome {
        build: task.build,
        slice: task.slice,
        attempt: task.attempt,
        manifest_json: serde_json::to_string(&manifest).map_err(|e| e.to_string())?,
        // What the farm declared, not what the engine guessed: a host declared native for a
        // platform (`--platform`) runs it natively as far as scheduling is concerned.
        emulated: !w.native.contains(&task.platform),
        duration_ms: result.duration_ms,
        cache_hits: result.cache_hits,
        cache_misses: result.cache_misses,
    })
}

/// Pushes one platform's blobs and its manifest (by digest) to every tag's repository; the
/// coordinator pushes the index once every slice is done.
fn push(engine: &Agent, tags: &[String], image: &(oci::Descriptor, Vec<Digest>)) -> Result<(), String> {
    let (manifest, blobs) = image;
    let (last, rest) = blobs.split_last().ok_or("an image without blobs")?;
    for tag in tags {
        let r: Reference = tag.parse().map_err(|e| format!("{tag}: {e}"))?;
        for b in rest {
            engine.registry.push_blob(&r, b, &engine.store).map_err(|e| format!("pushing {b} to {tag}: {e}"))?;
        }
        let bytes = engine.store.read(last).map_err(|e| e.to_string())?;
        engine
            .registry
            .put_manifest(&r, manifest.digest.as_str(), oci::MEDIA_MANIFEST, &bytes)
            .map_err(|e| format!("pushing the manifest to {tag}: {e}"))?;
    }
    Ok(())
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A relative path from the wire that stays inside the context directory.
fn inside(dir: &Path, rel: &str) -> Result<PathBuf, String> {
    let p = Path::new(rel);
    if p.is_absolute() || p.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
        return Err(format!("context entry {rel:?} leaves the context"));
    }
    Ok(dir.join(p))
}

/// Recreates the build context from its manifest: blobs this agent lacks come from the
/// coordinator that received the upload; names, modes and ownership are as the CLI saw them.
async fn materialize(w: &Arc<Worker>, task: &SliceTask, dir: &Path) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut origin: Option<Farm> = None;
    for e in &task.spec.context {
        if let EntryKind::File { digest, .. } = &e.kind {
            let d: Digest = digest.parse().map_err(|e| format!("{digest}: {e}"))?;
            if !w.engine.store.has(&d) {
                if origin.is_none() {
                    let principal = Principal { role: kiln_shared::api::Role::Agent, name: w.cfg.name.clone() };
                    origin = Some(reconnect(w, &task.context_origin, principal)?);
                }
                let origin = origin.as_ref().ok_or("no origin")?;
                origin.fetch_blob(&w.engine.store, &d).await.map_err(|e| format!("context blob: {e}"))?;
            }
        }
    }
    if let Some(o) = origin {
        o.close();
    }
    let engine = w.engine.clone();
    let entries = task.spec.context.clone();
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || write_entries(&engine, &entries, &dir)).await.map_err(|e| e.to_string())?
}

fn reconnect(w: &Worker, origin: &[SocketAddr], principal: Principal) -> Result<Farm, String> {
    let (ca, identity) = w.farm.credentials();
    Farm::open(origin, &ca, &identity, principal).map_err(|e| e.to_string())
}

/// Sends the blobs the origin coordinator lacks, in chunks (for `-o type=oci` on a farm).
async fn send_blobs(w: &Worker, origin: &Farm, blobs: &[Digest]) -> Result<(), String> {
    let digests = blobs.iter().map(|d| d.to_string()).collect();
    let missing = match origin.call(&Request::MissingBlobs { digests }, Duration::from_secs(30), Duration::from_secs(30)).await {
        Ok(Response::Digests(d)) => d,
        Ok(other) => return Err(format!("unexpected answer {other:?}")),
        Err(e) => return Err(format!("returning the image: {e}")),
    };
    for digest in missing {
        let d: Digest = digest.parse().map_err(|e| format!("{digest}: {e}"))?;
        let mut f = w.engine.store.open_blob(&d).map_err(|e| e.to_string())?;
        origin.send_blob(&digest, &mut f).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn write_entries(engine: &Agent, entries: &[kiln_shared::api::ContextEntry], dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mut dirs = Vec::new();
    for e in entries {
        let path = inside(dir, &e.path)?;
        let io = |err: std::io::Error| format!("context entry {}: {err}", e.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        match &e.kind {
            EntryKind::Dir => {
                std::fs::create_dir_all(&path).map_err(io)?;
                dirs.push((path.clone(), e));
            }
            EntryKind::File { digest, .. } => {
                let d: Digest = digest.parse().map_err(|err| format!("{digest}: {err}"))?;
                std::fs::copy(engine.store.path(&d), &path).map_err(io)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(e.mode & 0o7777)).map_err(io)?;
            }
            EntryKind::Symlink { target } => {
                std::os::unix::fs::symlink(target, &path).map_err(io)?;
            }
        }
        std::os::unix::fs::lchown(&path, Some(e.uid), Some(e.gid)).map_err(io)?;
    }
    // Directory modes last: a read-only directory must not stop its contents being written.
    for (path, e) in dirs.iter().rev() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(e.mode & 0o7777)).map_err(|err| format!("{}: {err}", e.path))?;
    }
    Ok(())
}
