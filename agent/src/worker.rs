//! An agent process (`kiln agent`): joins the farm, registers as a context, and long-polls the
//! coordinators for slices; each slice is fetched (context blobs from the coordinator that
//! received them), built by the [`Agent`] engine, pushed by digest and reported.
//!
//! The poll is also the heartbeat that keeps the agent's lease: it runs on its own task, never
//! behind a build. A slice's report carries its attempt number, so a report from an agent that
//! was cut off and replaced is refused by the cluster instead of counted twice.

use crate::config::AgentConfig;
use crate::engine::{Agent, EngineError, SliceRequest};
use crate::peer::Peer;
use kiln_shared::api::{
    AgentInfo, CacheRef, EntryKind, Event, Inventory, Principal, PruneSpec, Request, Response, SliceOutcome, SliceTask,
};
use kiln_shared::client::Farm;
use kiln_shared::digest::Digest;
use kiln_shared::frontend::dockerignore::DockerIgnore;
use kiln_shared::oci;
use kiln_shared::registry::Reference;
use kiln_shared::transport::{self, TransportError};
use kiln_shared::wire::ErrorCode;
use kiln_shared::Platform;
use std::collections::{BTreeSet, HashSet};
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

/// Progress events of a slice travel to the coordinators in batches this far apart.
const EVENT_BATCH: Duration = Duration::from_millis(50);

struct Worker {
    cfg: AgentConfig,
    engine: Arc<Agent>,
    farm: Arc<Farm>,
    native: Vec<Platform>,
    running: Mutex<BTreeSet<Key>>,
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
}

impl Worker {
    fn running(&self) -> std::sync::MutexGuard<'_, BTreeSet<Key>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
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
    let root = cfg.data_dir.clone();
    let engine = tokio::task::spawn_blocking(move || Agent::open(&root, &[]))
        .await
        .map_err(|e| WorkerError::Config(format!("opening the agent: {e}")))??;
    let hosts = cfg.hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>().join(",");
    let farm = Farm::join(&cfg.hosts, &token, &cfg.name).await.map_err(|source| WorkerError::Join { hosts, source })?;
    // The peer endpoint: other agents and coordinators fetch blobs from this agent's store.
    let (ca, identity) = farm.credentials();
    let listener = transport::server(cfg.listen, &ca, &identity, false)
        .map_err(|e| WorkerError::Config(format!("listening on {} for peers: {e}", cfg.listen)))?;
    let endpoint = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| cfg.listen.to_string());
    let peer = Arc::new(
        Peer::new(&cfg.data_dir, &ca, &identity, cfg.bandwidth_limit_bytes_per_s)
            .map_err(|e| WorkerError::Config(format!("peer endpoint: {e}")))?,
    );
    let farm = Arc::new(farm);
    let peers = Arc::new(FarmPeers {
        farm: farm.clone(),
        peer: peer.clone(),
        handle: tokio::runtime::Handle::current(),
        me: endpoint.clone(),
        name: cfg.name.clone(),
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
    farm.call(&Request::Register(info.clone()), Duration::from_secs(10), Duration::from_secs(60))
        .await
        .map_err(|source| WorkerError::Register { name: name.clone(), source })?;
    tracing::info!(agent = %name, native = %list(&info.native), emulated = %list(&info.emulated), slots = cfg.slots, "registered");
    let worker = Arc::new(Worker {
        cfg,
        engine: Arc::new(engine),
        farm,
        native,
        running: Mutex::new(BTreeSet::new()),
        cache_bytes: Default::default(),
        peer: peer.clone(),
        peers,
        advertised: tokio::sync::Mutex::new(None),
    });
    if let Some(ready) = ready {
        let _ = ready.send(info.clone());
    }
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(measure_cache(worker.clone()));
    tasks.spawn(peer.clone().serve(listener.clone()));
    tasks.spawn(keep_advertising(worker.clone()));
    tasks.spawn(collect_garbage(worker.clone()));
    let result = tokio::select! {
        _ = stop.cancelled() => Ok(()),
        r = poll_loop(worker.clone(), &mut tasks) => r,
    };
    tasks.abort_all();
    worker.farm.close();
    peer.close();
    listener.close(0u32.into(), b"shutdown");
    result
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

/// Tells the tracker what changed in this agent's store and step cache since the last time
/// (everything, the first time and after a failover).
async fn advertise(w: &Worker) {
    let mut advertised = w.advertised.lock().await;
    let root = w.cfg.data_dir.clone();
    let Ok(now) = tokio::task::spawn_blocking(move || holdings(&root)).await else { return };
    let before = advertised.take();
    let full = before.is_none();
    let before = before.unwrap_or_default();
    let diff = |now: &HashSet<String>, then: &HashSet<String>| now.difference(then).cloned().collect::<Vec<_>>();
    let inv = Inventory {
        agent: w.cfg.name.clone(),
        full,
        blobs_added: diff(&now.blobs, &before.blobs),
        blobs_removed: diff(&before.blobs, &now.blobs),
        records_added: diff(&now.records, &before.records),
        records_removed: diff(&before.records, &now.records),
    };
    if !full && inv.blobs_added.is_empty() && inv.blobs_removed.is_empty() && inv.records_added.is_empty() && inv.records_removed.is_empty()
    {
        *advertised = Some(before);
        return;
    }
    match w.farm.call(&Request::Advertise(inv), Duration::from_secs(10), Duration::from_secs(10)).await {
        Ok(Response::Advertised { resync: false }) => *advertised = Some(now),
        // The tracker does not know this agent (a new leader): tell it everything next time.
        Ok(_) => *advertised = None,
        Err(e) => {
            tracing::warn!(agent = %w.cfg.name, "advertising to the tracker: {e}");
            *advertised = if full { None } else { Some(before) };
        }
    }
}

fn holdings(root: &Path) -> Holdings {
    let mut h = Holdings::default();
    if let Ok(store) = kiln_shared::store::ContentStore::open(&root.join("content")) {
        h.blobs = store.list().unwrap_or_default().into_iter().map(|(d, _, _)| d.to_string()).collect();
    }
    for e in std::fs::read_dir(root.join("cache")).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(stem) = name.strip_suffix(".json") {
            h.records.insert(stem.to_string());
        }
    }
    h
}

async fn keep_advertising(w: Arc<Worker>) {
    loop {
        advertise(&w).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The agent's GC policy (`gc_keep_bytes`, `gc_keep_duration_s`), applied every minute.
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
        tokio::time::sleep(Duration::from_secs(60)).await;
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
                advertise(&w).await;
            }
            Ok(Err(e)) => tracing::warn!(agent = %w.cfg.name, "gc: {e}"),
            _ => {}
        }
    }
}

/// The farm's other agents as a step cache: the tracker says who holds a record or blob, the
/// peer fetcher gets it. Called from the engine's blocking threads.
struct FarmPeers {
    farm: Arc<Farm>,
    peer: Arc<Peer>,
    handle: tokio::runtime::Handle,
    /// This agent's own peer endpoint (never a source for itself).
    me: String,
    name: String,
}

impl FarmPeers {
    /// Holders of each blob, then of each record.
    async fn locate(&self, blobs: Vec<String>, records: Vec<String>) -> Vec<Vec<SocketAddr>> {
        let n = blobs.len() + records.len();
        match self.farm.call(&Request::Locate { blobs, records }, Duration::from_secs(5), Duration::from_secs(10)).await {
            Ok(Response::Holders(h)) if h.len() == n => {
                h.into_iter().map(|list| list.into_iter().filter(|e| *e != self.me).filter_map(|e| e.parse().ok()).collect()).collect()
            }
            Ok(_) => vec![vec![]; n],
            Err(e) => {
                tracing::warn!(agent = %self.name, "asking the tracker: {e}");
                vec![vec![]; n]
            }
        }
    }

    async fn fetch(&self, d: &Digest) -> bool {
        let Some(holders) = self.locate(vec![d.to_string()], vec![]).await.pop() else { return false };
        if holders.is_empty() {
            return false;
        }
        match self.peer.fetch(d, &holders).await {
            Ok(report) => {
                for (addr, why) in &report.dropped {
                    tracing::warn!(agent = %self.name, blob = %d, peer = %addr, "peer not used: {why}");
                }
                true
            }
            Err(e) => {
                tracing::warn!(agent = %self.name, "{e}");
                false
            }
        }
    }
}

impl crate::engine::RemoteCache for FarmPeers {
    fn record(&self, name: &str, _key: &str) -> Option<Vec<u8>> {
        self.handle.block_on(async {
            let holders = self.locate(vec![], vec![name.to_string()]).await.pop()?;
            if holders.is_empty() {
                return None;
            }
            self.peer.record(name, &holders).await.ok()
        })
    }

    fn blob(&self, d: &Digest, store: &kiln_shared::store::ContentStore) -> bool {
        store.has(d) || self.handle.block_on(self.fetch(d))
    }

    fn is_peer(&self) -> bool {
        true
    }
}

/// A cache the CLI uploaded (`--cache-from type=local`): records from its config, blobs from
/// the coordinator that received them.
struct UploadedCache {
    imported: crate::cache::Imported,
    origin: Farm,
    handle: tokio::runtime::Handle,
}

impl crate::engine::RemoteCache for UploadedCache {
    fn record(&self, name: &str, key: &str) -> Option<Vec<u8>> {
        self.imported.record(name, key)
    }

    fn blob(&self, d: &Digest, store: &kiln_shared::store::ContentStore) -> bool {
        store.has(d) || self.handle.block_on(self.origin.fetch_blob(store, d)).is_ok()
    }
}

async fn poll_loop(w: Arc<Worker>, tasks: &mut tokio::task::JoinSet<()>) -> Result<(), WorkerError> {
    loop {
        let running: Vec<Key> = w.running().iter().copied().collect();
        let cache_bytes = w.cache_bytes.load(std::sync::atomic::Ordering::Relaxed);
        let poll = Request::Poll { agent: w.cfg.name.clone(), running, cache_bytes, wait_ms: 1_000 };
        // A short deadline: a coordinator that died must not hold the heartbeat past the lease.
        match w.farm.call(&poll, Duration::from_millis(2_500), Duration::from_secs(5)).await {
            Ok(Response::Tasks { tasks: list, resync }) => {
                if resync {
                    // A new leader: its tracker starts empty.
                    *w.advertised.lock().await = None;
                    let w = w.clone();
                    tasks.spawn(async move { advertise(&w).await });
                }
                for task in list {
                    if w.running().insert((task.build, task.slice, task.attempt)) {
                        tasks.spawn(run_task(w.clone(), task));
                    }
                }
            }
            Ok(other) => tracing::warn!(agent = %w.cfg.name, "unexpected answer to a poll: {other:?}"),
            Err(TransportError::Remote(e)) if e.code == ErrorCode::NotFound => return Err(WorkerError::Removed(w.cfg.name.clone())),
            Err(e) => {
                // The registration is in Raft and survives any coordinator; only the poll is retried.
                tracing::warn!(agent = %w.cfg.name, "poll: {e}");
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
        tracing::warn!(agent = %w.cfg.name, build = task.build, slice = task.slice, attempt = task.attempt, "reporting the slice: {e}");
    }
    w.running().remove(&key);
}

async fn execute(w: &Arc<Worker>, task: &SliceTask) -> Result<SliceOutcome, String> {
    let dir = w.cfg.data_dir.join("contexts").join(format!("{}-{}-{}", task.build, task.slice, task.attempt));
    let _cleanup = RemoveOnDrop(dir.clone());
    let started = std::time::Instant::now();
    materialize(w, task, &dir).await?;
    let materialized = started.elapsed();

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
                // Batch what follows within EVENT_BATCH, but send at once when the slice ends.
                let window = tokio::time::sleep(EVENT_BATCH);
                tokio::pin!(window);
                loop {
                    tokio::select! {
                        e = rx.recv() => match e {
                            Some(e) => events.push(e),
                            None => {
                                open = false;
                                break;
                            }
                        },
                        _ = &mut window => break,
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
    let uploaded = uploaded_caches(w, task).await?;
    let handle = tokio::runtime::Handle::current();
    let result = tokio::task::spawn_blocking(move || {
        let mut imports: Vec<Box<dyn crate::engine::RemoteCache>> = Vec::new();
        for c in &spec.cache_from {
            if let CacheRef::Registry { reference } = c {
                match crate::cache::Imported::registry(
                    reference,
                    kiln_shared::registry::RegistryClient::new(&spec.insecure_registries),
                    &engine.store,
                ) {
                    Ok(i) => imports.push(Box::new(i)),
                    // As buildx: a cache that cannot be imported is a warning, not a failure.
                    Err(e) => {
                        let _ = tx.send(Event::Log { id: 0, line: format!("importing cache {reference}: {e}") });
                    }
                }
            }
        }
        for (config, origin_farm) in uploaded {
            match crate::cache::Imported::from_config(&config, "uploaded cache".into()) {
                Ok(imported) => imports.push(Box::new(UploadedCache { imported, origin: origin_farm, handle: handle.clone() })),
                Err(e) => {
                    let _ = tx.send(Event::Log { id: 0, line: e.to_string() });
                }
            }
        }
        let remote: Vec<&dyn crate::engine::RemoteCache> = imports.iter().map(|b| &**b).collect();
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
            cache_scope: &spec.cache_scope,
            remote: &remote,
        };
        let mut result = engine.run_slice(&req, &|e| {
            let _ = tx.send(e);
        })?;
        let image = if spec.zstd { engine.zstd_image(&result)? } else { (result.manifest.clone(), result.blobs.clone()) };
        if spec.push {
            push(&engine, &spec.tags, &image).map_err(EngineError::Copy)?;
        }
        // --cache-to: this slice's records; their layers go where the cache is written.
        result.records = match &spec.cache_to {
            Some(export) => {
                let records = crate::cache::select(std::mem::take(&mut result.records), export.max);
                if let Some(reference) = &export.registry {
                    crate::cache::push_layers(reference, &records, &engine.store, &engine.registry)?;
                }
                records
            }
            None => vec![],
        };
        Ok::<_, EngineError>((result, image.0, image.1))
    })
    .await;
    let _ = forwarder.await;
    let (result, manifest, blobs) = match result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(e) => return Err(format!("the slice's task failed: {e}")),
    };
    // Local cache exports return their layers with the image's blobs.
    let mut returned: Vec<Digest> = if task.spec.return_blobs { blobs } else { vec![] };
    if task.spec.cache_to.as_ref().is_some_and(|c| c.registry.is_none()) {
        let layers = crate::cache::layers(&result.records).map_err(|e| e.to_string())?;
        returned.extend(layers.into_iter().map(|l| l.digest));
    }
    if !returned.is_empty() {
        let principal = Principal { role: kiln_shared::api::Role::Agent, name: w.cfg.name.clone() };
        let origin = reconnect(w, &task.context_origin, principal)?;
        let sent = send_blobs(w, &origin, &returned, &task.spec.tenant).await;
        origin.close();
        sent?;
    }
    let built = started.elapsed();
    // The tracker learns what this slice added before the farm learns the slice is done, so a
    // build that follows finds it.
    advertise(w).await;
    tracing::debug!(
        agent = %w.cfg.name,
        build = task.build,
        slice = task.slice,
        materialize_ms = materialized.as_secs_f64() * 1e3,
        build_ms = (built - materialized).as_secs_f64() * 1e3,
        advertise_ms = (started.elapsed() - built).as_secs_f64() * 1e3,
        "slice done"
    );
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
        cache_peer_hits: result.cache_peer_hits,
        records: result.records,
    })
}

/// The configs of caches the CLI uploaded, with a connection to fetch their blobs.
async fn uploaded_caches(w: &Arc<Worker>, task: &SliceTask) -> Result<Vec<(Vec<u8>, Farm)>, String> {
    let mut out = Vec::new();
    for c in &task.spec.cache_from {
        if let CacheRef::Uploaded { config } = c {
            let d: Digest = config.parse().map_err(|e| format!("{config}: {e}"))?;
            let principal = Principal { role: kiln_shared::api::Role::Agent, name: w.cfg.name.clone() };
            let origin = reconnect(w, &task.context_origin, principal)?;
            origin.fetch_blob(&w.engine.store, &d).await.map_err(|e| format!("imported cache: {e}"))?;
            let bytes = w.engine.store.read(&d).map_err(|e| e.to_string())?;
            out.push((bytes, origin));
        }
    }
    Ok(out)
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

/// A relative path from the wire (bytes) that stays inside the context directory.
fn inside(dir: &Path, rel: &[u8]) -> Result<PathBuf, String> {
    use std::os::unix::ffi::OsStrExt;
    let p = Path::new(std::ffi::OsStr::from_bytes(rel));
    if rel.is_empty() || p.is_absolute() || p.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
        return Err(format!("context entry {:?} leaves the context", String::from_utf8_lossy(rel)));
    }
    Ok(dir.join(p))
}

/// Recreates the build context from its manifest: blobs this agent lacks come from the
/// coordinator that received the upload; names, modes and ownership are as the CLI saw them.
async fn materialize(w: &Arc<Worker>, task: &SliceTask, dir: &Path) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut missing = Vec::new();
    for e in &task.spec.context {
        if let EntryKind::File { digest, .. } = &e.kind {
            let d: Digest = digest.parse().map_err(|e| format!("{digest}: {e}"))?;
            if !w.engine.store.has(&d) && !missing.contains(&d) {
                missing.push(d);
            }
        }
    }
    // Peers that hold a blob first: the coordinator that received the upload is the origin.
    let holders = if missing.is_empty() { vec![] } else { w.peers.locate(missing.iter().map(|d| d.to_string()).collect(), vec![]).await };
    let mut origin: Option<Farm> = None;
    for (i, d) in missing.iter().enumerate() {
        let sources = holders.get(i).map(|h| h.as_slice()).unwrap_or_default();
        if !sources.is_empty() && w.peer.fetch(d, sources).await.is_ok() {
            continue;
        }
        if origin.is_none() {
            let principal = Principal { role: kiln_shared::api::Role::Agent, name: w.cfg.name.clone() };
            origin = Some(reconnect(w, &task.context_origin, principal)?);
        }
        let origin = origin.as_ref().ok_or("no origin")?;
        origin.fetch_blob(&w.engine.store, d).await.map_err(|e| format!("context blob: {e}"))?;
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
async fn send_blobs(w: &Worker, origin: &Farm, blobs: &[Digest], tenant: &str) -> Result<(), String> {
    let digests = blobs.iter().map(|d| d.to_string()).collect();
    let ask = Request::MissingBlobs { digests, owner: Some(tenant.to_string()) };
    let missing = match origin.call(&ask, Duration::from_secs(30), Duration::from_secs(30)).await {
        Ok(Response::Digests(d)) => d,
        Ok(other) => return Err(format!("unexpected answer {other:?}")),
        Err(e) => return Err(format!("returning the image: {e}")),
    };
    for digest in missing {
        let d: Digest = digest.parse().map_err(|e| format!("{digest}: {e}"))?;
        let mut f = w.engine.store.open_blob(&d).map_err(|e| e.to_string())?;
        origin.send_blob(&digest, &mut f, Some(tenant)).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn write_entries(engine: &Agent, entries: &[kiln_shared::api::ContextEntry], dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mut dirs = Vec::new();
    for e in entries {
        let path = inside(dir, &e.path)?;
        let io = |err: std::io::Error| format!("context entry {}: {err}", String::from_utf8_lossy(&e.path));
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
                use std::os::unix::ffi::OsStrExt;
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &path).map_err(io)?;
            }
            EntryKind::Fifo => {
                nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(e.mode & 0o777)).map_err(|err| io(err.into()))?;
            }
        }
        std::os::unix::fs::lchown(&path, Some(e.uid), Some(e.gid)).map_err(io)?;
    }
    // Directory modes last: a read-only directory must not stop its contents being written.
    for (path, e) in dirs.iter().rev() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(e.mode & 0o7777))
            .map_err(|err| format!("{}: {err}", String::from_utf8_lossy(&e.path)))?;
    }
    Ok(())
}
