//! An agent process (`kiln agent`): joins the farm, registers as a context, and long-polls the
//! coordinators for slices; each slice is fetched (context blobs from the coordinator that
//! received them), built by the [`Agent`] engine, pushed by digest and reported.
//!
//! The poll is also the heartbeat that keeps the agent's lease: it runs on its own task, never
//! behind a build. A slice's report carries its attempt number, so a report from an agent that
//! was cut off and replaced is refused by the cluster instead of counted twice.
//!
//! This file is the agent's life: registering, the poll loop and the background tasks. Beside
//! it: running one slice (`slice`), recreating its build context (`context`), pushing and
//! returning what it built (`publish`), telling the tracker what this agent holds
//! (`advertise`), the farm's other agents as a step cache (`peers`), and the errors (`error`).

mod advertise;
mod context;
mod error;
mod peers;
mod publish;
mod session;
mod slice;

use self::error::SliceError;
pub use self::error::WorkerError;
use self::peers::FarmPeers;
use crate::config::AgentConfig;
use crate::engine::Agent;
use crate::peer::Peer;
use kiln_shared::api::{AgentInfo, AgentRequest, AgentResponse, Principal, PruneSpec, SliceTask};
use kiln_shared::client::AgentFarm;
use kiln_shared::transport::{self, TransportError};
use kiln_shared::wire::ErrorCode;
use kiln_shared::Platform;
use kiln_shared::{metrics, task};
use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

type Key = (u64, u32, u32);

struct Worker {
    cfg: AgentConfig,
    engine: Arc<Agent>,
    farm: Arc<AgentFarm>,
    native: Vec<Platform>,
    running: Mutex<BTreeSet<Key>>,
    /// Per running slice, set when its build is cancelled (the engine stops before its next step).
    cancelled: Mutex<std::collections::HashMap<Key, Arc<std::sync::atomic::AtomicBool>>>,
    cache_bytes: std::sync::atomic::AtomicU64,
    peer: Arc<Peer>,
    /// The farm's other agents, through the tracker (also the engine's remote step cache).
    peers: Arc<FarmPeers>,
    /// What the tracker was last told this agent holds; `None`: it must be told everything.
    advertised: tokio::sync::Mutex<Option<Holdings>>,
}

/// Blob digests and step cache record names.
#[derive(Default)]
struct Holdings {
    blobs: HashSet<String>,
    records: HashSet<String>,
    /// The mtimes of the directories they were listed from, read before listing, when old
    /// enough to trust (see `advertise::Stamps`): while they stay the same, so do the holdings.
    stamps: Option<advertise::Stamps>,
}

impl Worker {
    fn running(&self) -> std::sync::MutexGuard<'_, BTreeSet<Key>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection, as this agent, to the coordinator that received a build's uploads; its
    /// blob transfers go under the slice's grant.
    fn connect(&self, task: &SliceTask) -> Result<AgentFarm, SliceError> {
        let principal = Principal { role: kiln_shared::api::Role::Agent, name: self.cfg.name.clone() };
        let (ca, identity) = self.farm.credentials();
        AgentFarm::open(&task.context_origin, &ca, &identity, principal)
            .and_then(|f| f.with_timeouts(self.farm.timeouts()))
            .map(|f| f.with_grant(task.grant.clone()))
            .map_err(SliceError::Origin)
    }
}

/// Runs the agent until `stop` is cancelled (or it is removed from the farm); `ready` hears
/// what the agent registered as, once it can be given slices.
pub async fn run(
    mut cfg: AgentConfig,
    token: String,
    stop: CancellationToken,
    ready: Option<tokio::sync::oneshot::Sender<AgentInfo>>,
) -> Result<(), WorkerError> {
    cfg.validate().map_err(WorkerError::Config)?;
    // runc resolves paths against the bundle: everything under the data dir must be absolute.
    let dir_err = |e: std::io::Error| WorkerError::Config(format!("data dir {}: {e}", cfg.data_dir.display()));
    std::fs::create_dir_all(&cfg.data_dir).map_err(dir_err)?;
    cfg.data_dir = cfg.data_dir.canonicalize().map_err(dir_err)?;
    // The metrics endpoint answers from the start (`/healthz`; `/readyz` once registered).
    let serving: Arc<OnceLock<Arc<Worker>>> = Arc::default();
    let _metrics = match cfg.metrics_listen {
        Some(addr) => Some(serve_metrics(addr, &cfg, serving.clone()).await?),
        None => None,
    };
    let root = cfg.data_dir.clone();
    let engine = tokio::task::spawn_blocking(move || Agent::open(&root, &[]))
        .await
        .map_err(|e| WorkerError::Config(format!("opening the agent: {e}")))??;
    let hosts = cfg.hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>().join(",");
    // The agent's own key, kept in its data dir: its registration is bound to it.
    let key = identity_key(&cfg.key_file.clone().unwrap_or_else(|| cfg.data_dir.join("agent.key")))?;
    let farm = AgentFarm::join_with_key(&cfg.hosts, &token, &cfg.name, Some(&key), cfg.client_timeouts())
        .await
        .map_err(|source| WorkerError::Join { hosts, source })?;
    // The peer endpoint: other agents and coordinators fetch blobs from this agent's store.
    let (ca, identity) = farm.credentials();
    let listener = transport::server_with(cfg.listen, &ca, &identity, false, &cfg.quic(), transport::Connections::Few)
        .map_err(|e| WorkerError::Config(format!("listening on {} for peers: {e}", cfg.listen)))?;
    let endpoint = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| cfg.listen.to_string());
    let peer = Arc::new(
        Peer::with_timeouts(&cfg.data_dir, &ca, &identity, cfg.bandwidth_limit_bytes_per_s, cfg.peer_timeouts())
            .map_err(|e| WorkerError::Config(format!("peer endpoint: {e}")))?,
    );
    let farm = Arc::new(farm);
    let peers = Arc::new(FarmPeers {
        farm: farm.clone(),
        peer: peer.clone(),
        handle: tokio::runtime::Handle::current(),
        me: endpoint.clone(),
        name: cfg.name.clone(),
        locate_deadline: Duration::from_millis(cfg.locate_deadline_ms),
        locate_patience: Duration::from_millis(cfg.locate_patience_ms),
    });
    let _ = engine.peers.set(peers.clone());
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
    let (deadline, patience) = (Duration::from_millis(cfg.register_deadline_ms), Duration::from_millis(cfg.register_patience_ms));
    farm.call(&AgentRequest::Register(info.clone()), deadline, patience)
        .await
        .map_err(|source| WorkerError::Register { name: name.clone(), source })?;
    tracing::info!(agent = %name, native = %list(&info.native), emulated = %list(&info.emulated), slots = cfg.slots, "registered");
    let worker = Arc::new(Worker {
        cfg,
        engine: Arc::new(engine),
        farm,
        native,
        running: Mutex::new(BTreeSet::new()),
        cancelled: Mutex::new(Default::default()),
        cache_bytes: Default::default(),
        peer: peer.clone(),
        peers,
        advertised: tokio::sync::Mutex::new(None),
    });
    let _ = serving.set(worker.clone());
    if let Some(ready) = ready {
        let _ = ready.send(info.clone());
    }
    let background = [
        task::spawn("measure the cache", measure_cache(worker.clone())),
        task::spawn("peer server", peer.clone().serve(listener.clone())),
        task::spawn("advertise", advertise::keep_advertising(worker.clone())),
        task::spawn("gc", collect_garbage(worker.clone())),
    ];
    // Slices (and one-off advertisements) the poll loop started: drained on shutdown.
    let mut tasks = tokio::task::JoinSet::new();
    let result = tokio::select! {
        _ = stop.cancelled() => Ok(()),
        r = poll_loop(worker.clone(), &mut tasks) => r,
    };
    if result.is_ok() && !tasks.is_empty() {
        // Drain: no more polls, so no new slices; running ones finish and report, up to
        // `shutdown_drain_ms`. The peer server keeps serving meanwhile.
        let running = worker.running().len();
        tracing::info!(agent = %worker.cfg.name, slices = running, "shutdown: waiting for running slices");
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_millis(worker.cfg.shutdown_drain_ms), drain).await.is_err() {
            // No drain (the embedded farm's) cuts off by design: that is not worth a warning.
            let left = worker.running().len();
            if left > 0 && worker.cfg.shutdown_drain_ms > 0 {
                tracing::warn!(agent = %worker.cfg.name, slices = left, "shutdown: slices still running after the drain deadline are cut off");
            } else {
                tracing::debug!(agent = %worker.cfg.name, slices = left, "shutdown: slices cut off");
            }
        }
    }
    tasks.abort_all();
    drop(background);
    worker.farm.close();
    peer.close();
    listener.close(0u32.into(), b"shutdown");
    result
}

/// Serves `kiln agent --metrics-listen`: the registry, with this agent's gauges set from its
/// state at each scrape; ready once registered (`serving` is set then).
async fn serve_metrics(
    addr: SocketAddr,
    cfg: &AgentConfig,
    serving: Arc<OnceLock<Arc<Worker>>>,
) -> Result<task::TaskHandle<()>, WorkerError> {
    let listener = metrics::server::bind(addr).await.map_err(|e| WorkerError::Config(e.to_string()))?;
    tracing::info!(agent = %cfg.name, metrics = %addr, "serving metrics");
    crate::metrics::get();
    let (name, slots, ready) = (cfg.name.clone(), cfg.slots, serving.clone());
    let probes = metrics::server::Probes {
        metrics: Box::new(move || {
            let m = crate::metrics::get();
            m.slots.set(&[&name], f64::from(slots));
            let w = serving.get();
            m.registered.set(&[&name], if w.is_some() { 1.0 } else { 0.0 });
            m.running.set(&[&name], w.map_or(0, |w| w.running().len()) as f64);
            m.store_bytes.set(&[&name], w.map_or(0, |w| w.cache_bytes.load(std::sync::atomic::Ordering::Relaxed)) as f64);
            metrics::global().render()
        }),
        ready: Box::new(move || ready.get().map(|_| ()).ok_or_else(|| "not registered with the farm yet".to_string())),
    };
    Ok(task::spawn("metrics endpoint", metrics::server::serve(listener, Arc::new(probes))))
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
        tokio::time::sleep(Duration::from_secs(w.cfg.cache_measure_interval_secs)).await;
    }
}

/// The agent's GC policy (`gc_keep_bytes`, `gc_keep_duration_s`), applied every `gc_interval_secs`.
async fn collect_garbage(w: Arc<Worker>) {
    let spec = PruneSpec {
        all: false,
        until_s: Some(w.cfg.gc_keep_duration_s).filter(|&s| s > 0),
        keep_storage: Some(w.cfg.gc_keep_bytes).filter(|&b| b > 0),
    };
    if spec.until_s.is_none() && spec.keep_storage.is_none() {
        return;
    }
    loop {
        tokio::time::sleep(Duration::from_secs(w.cfg.gc_interval_secs)).await;
        let (root, spec) = (w.cfg.data_dir.clone(), spec.clone());
        match tokio::task::spawn_blocking(move || crate::gc::prune(&root, &spec)).await {
            Ok(Ok(r)) if r.records_removed + r.blobs_removed > 0 => {
                tracing::info!(
                    agent = %w.cfg.name,
                    records = r.records_removed,
                    blobs = r.blobs_removed,
                    bytes = r.bytes_reclaimed,
                    "gc removed cache"
                );
                advertise::advertise(&w).await;
            }
            Ok(Err(e)) => tracing::warn!(agent = %w.cfg.name, "gc: {e}"),
            _ => {}
        }
    }
}

async fn poll_loop(w: Arc<Worker>, tasks: &mut tokio::task::JoinSet<()>) -> Result<(), WorkerError> {
    // The hold the leader asks for (a large farm's polls are spread out); the agent's own wait
    // while it asks for none.
    let mut pace_ms = 0u32;
    loop {
        let running: Vec<Key> = w.running().iter().copied().collect();
        let cache_bytes = w.cache_bytes.load(std::sync::atomic::Ordering::Relaxed);
        let wait_ms = w.cfg.poll_wait_ms.max(pace_ms);
        let poll = AgentRequest::Poll { agent: w.cfg.name.clone(), running, cache_bytes, wait_ms };
        // A short deadline: a coordinator that died must not hold the heartbeat past the lease.
        // A longer hold extends it by as much.
        let longer = u64::from(wait_ms - w.cfg.poll_wait_ms);
        let (deadline, patience) = (w.cfg.poll_deadline_ms + longer, w.cfg.poll_patience_ms + longer);
        match w.farm.call(&poll, Duration::from_millis(deadline), Duration::from_millis(patience)).await {
            Ok(AgentResponse::Tasks { tasks: list, resync, cancel, revoked, pace_ms: pace }) => {
                pace_ms = pace;
                w.peer.access.set_revoked(revoked);
                for key in cancel {
                    if let Some(flag) = w.cancelled.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
                        tracing::info!(agent = %w.cfg.name, build = key.0, slice = key.1, "the build was cancelled: stopping its slice");
                        flag.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    // No longer reported as running: the slice is the farm's no more.
                    w.running().remove(&key);
                }
                if resync {
                    // A new leader: its tracker starts empty.
                    *w.advertised.lock().await = None;
                    let w = w.clone();
                    tasks.spawn(async move { advertise::advertise(&w).await });
                }
                for task in list {
                    if w.running().insert((task.build, task.slice, task.attempt)) {
                        // Every log line of the slice, on this side, names it.
                        let span = tracing::info_span!(
                            "slice",
                            build = task.build,
                            slice = task.slice,
                            attempt = task.attempt,
                            platform = %task.platform,
                            agent = %w.cfg.name
                        );
                        tasks.spawn(tracing::Instrument::instrument(run_task(w.clone(), task), span));
                    }
                }
            }
            Ok(other) => tracing::warn!(agent = %w.cfg.name, "unexpected answer to a poll: {other:?}"),
            Err(TransportError::Remote(e)) if e.code == ErrorCode::NotFound => return Err(WorkerError::Removed(w.cfg.name.clone())),
            // Revoked (`kiln context rm --revoke`), or another agent holds the name.
            Err(TransportError::Remote(e)) if e.code == ErrorCode::PermissionDenied => {
                return Err(WorkerError::Refused { name: w.cfg.name.clone(), message: e.message })
            }
            Err(e) => {
                // The registration is in Raft and survives any coordinator; only the poll is retried.
                tracing::warn!(agent = %w.cfg.name, "poll: {e}");
                tokio::time::sleep(Duration::from_millis(w.cfg.poll_retry_ms)).await;
            }
        }
        while tasks.try_join_next().is_some() {}
    }
}

/// Runs one slice and reports it; the report is retried until the cluster takes (or refuses) it.
async fn run_task(w: Arc<Worker>, task: SliceTask) {
    let key = (task.build, task.slice, task.attempt);
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    w.cancelled.lock().unwrap_or_else(|e| e.into_inner()).insert(key, flag.clone());
    // Peers serve this agent what the slice's grant names while it runs.
    if let Some(grant) = &task.grant {
        w.peer.access.hold(key, grant.clone());
    }
    let report = match slice::execute(&w, &task, flag).await {
        Ok(outcome) => AgentRequest::SliceDone(outcome),
        Err(e) => AgentRequest::SliceFailed { build: task.build, slice: task.slice, attempt: task.attempt, message: e.to_string() },
    };
    let state = if matches!(report, AgentRequest::SliceDone(_)) { "succeeded" } else { "failed" };
    crate::metrics::get().slices.inc(&[state, &task.platform.to_string()]);
    let (deadline, patience) = (Duration::from_millis(w.cfg.report_deadline_ms), Duration::from_millis(w.cfg.report_patience_ms));
    if let Err(e) = w.farm.call(&report, deadline, patience).await {
        tracing::warn!(agent = %w.cfg.name, build = task.build, slice = task.slice, attempt = task.attempt, "reporting the slice: {e}");
    }
    w.running().remove(&key);
    w.cancelled.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
    w.peer.access.release(key);
}

/// The agent's private key (PEM) at `path`, made on the first start (mode 0600).
fn identity_key(path: &std::path::Path) -> Result<String, WorkerError> {
    use std::os::unix::fs::OpenOptionsExt;
    let failed = |e: String| WorkerError::Config(format!("the agent's key {}: {e}", path.display()));
    if let Ok(pem) = std::fs::read_to_string(path) {
        return Ok(pem);
    }
    let pem = transport::KeyRequest::new().map_err(|e| failed(e.to_string()))?.key_pem();
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        std::io::Write::write_all(&mut f, pem.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| failed(e.to_string()))?;
    Ok(pem)
}
