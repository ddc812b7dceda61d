//! The engine: runs one slice (a Dockerfile for one platform) and produces its image.
//!
//! Each stage starts from scratch, a pulled base image or another stage's result, and applies
//! its steps in order. Every step has a cache key (DESIGN.md: parent key, the expanded
//! instruction, the platform, and for COPY/ADD the checksum of the sources); a step whose key
//! is in the step cache is not executed. Steps that change the filesystem add a layer; the
//! others add an empty-layer history entry, as Docker does.

use crate::copy;
use crate::error::io_err;
pub use crate::error::EngineError;
use crate::layers::{self, Layer, Whiteouts};
use crate::probe::HostPlatforms;
use crate::runc::{self, Overlay, RunSpec};
pub use crate::state::State;
use kiln_shared::digest::Digest;
use kiln_shared::frontend;
use kiln_shared::frontend::dockerignore::DockerIgnore;
use kiln_shared::frontend::instructions::{Healthcheck, Instruction};
use kiln_shared::frontend::print::{self, Style};
use kiln_shared::frontend::resolve::{self, Base, BaseConfig, BaseImages, BuildPlan, Options, Stage, Step};
use kiln_shared::oci::{self, Descriptor, History, ImageConfig, Index, Manifest};
use kiln_shared::registry::{Reference, RegistryClient};
use kiln_shared::store::ContentStore;
use kiln_shared::Platform;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What the engine reports while it works (the wire type, so agents forward it as is).
pub use kiln_shared::api::Event;

pub struct SliceRequest<'a> {
    pub dockerfile: &'a str,
    pub dockerfile_name: &'a str,
    pub context: &'a Path,
    pub ignore: &'a DockerIgnore,
    pub platform: Platform,
    pub build_args: &'a [(String, String)],
    pub target: Option<&'a str>,
    pub no_cache: bool,
    /// Whose step cache records this slice uses and adds (a tenant, or `shared`).
    pub cache_scope: &'a str,
    /// Caches imported with `--cache-from`: where a miss looks after the farm's peers.
    pub remote: &'a [&'a dyn RemoteCache],
}

impl SliceRequest<'_> {
    /// `SOURCE_DATE_EPOCH`, a build argument as in BuildKit (the CLI passes its environment's
    /// value as one, as buildx does): timestamps in layers and the config are clamped to it.
    pub fn epoch(&self) -> Option<u64> {
        self.build_args.iter().rev().find(|(k, _)| k == "SOURCE_DATE_EPOCH").and_then(|(_, v)| v.trim().parse().ok())
    }
}

/// A step cache beyond this agent's own: the farm's other agents (through the tracker) or a
/// cache imported with `--cache-from`. Called from the engine's blocking threads.
pub trait RemoteCache: Sync {
    /// The record for a step (`name`: its scoped name, `key`: its cache key), as JSON.
    fn record(&self, name: &str, key: &str) -> Option<Vec<u8>>;
    /// Brings blob `d` into `store`; false when this cache cannot.
    fn blob(&self, d: &Digest, store: &ContentStore) -> bool;
    /// Whether a hit here counts as fetched from a peer (metadata's `cache_peer_hits`).
    fn is_peer(&self) -> bool {
        false
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SliceResult {
    pub platform: Platform,
    pub emulated: bool,
    /// The manifest, with its platform set.
    pub manifest: Descriptor,
    /// Every blob of the image: layers, config, manifest.
    pub blobs: Vec<Digest>,
    pub layers: Vec<Layer>,
    pub cache_hits: u32,
    pub cache_misses: u32,
    pub cache_peer_hits: u32,
    pub duration_ms: u64,
    /// Every step's record (for `--cache-to`).
    pub records: Vec<kiln_shared::api::CacheRecord>,
}

pub struct Agent {
    pub root: PathBuf,
    pub store: ContentStore,
    pub registry: RegistryClient,
    pub platforms: HostPlatforms,
    pulled: Mutex<HashMap<(String, Platform), (State, Digest)>>,
    seq: AtomicU64,
    /// The farm's other agents (set by the worker; none in the embedded farm).
    pub peers: std::sync::OnceLock<Arc<dyn RemoteCache + Send + Sync>>,
}

impl Agent {
    pub fn open(root: &Path, insecure: &[String]) -> Result<Agent, EngineError> {
        for d in ["snapshots", "l", "cache", "run", "cachemounts"] {
            std::fs::create_dir_all(root.join(d)).map_err(io_err(format!("creating {}", root.join(d).display())))?;
        }
        let store = ContentStore::open(&root.join("content"))?;
        let platforms = HostPlatforms::detect(&root.join("run"));
        Ok(Agent {
            root: root.to_path_buf(),
            store,
            registry: RegistryClient::new(insecure),
            platforms,
            pulled: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            peers: std::sync::OnceLock::new(),
        })
    }

    fn next_id(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A fresh scratch directory for one step.
    fn scratch(&self, what: &str) -> PathBuf {
        let n = self.next_id();
        self.root.join("run").join(format!("{what}-{}-{n}", std::process::id()))
    }

    /// Pulls `image` for `platform`: manifest, config and layers into the store.
    pub(crate) fn pull(&self, image: &str, platform: &Platform) -> Result<(State, Digest), EngineError> {
        let key = (image.to_string(), platform.clone());
        if let Some(hit) = self.pulled.lock().ok().and_then(|p| p.get(&key).cloned()) {
            // A prune may have removed the layers since: then the image is pulled again.
            if hit.0.layers.iter().all(|l| self.store.has(&l.digest)) {
                return Ok(hit);
            }
        }
        let r: Reference = image.parse()?;
        let mut fetched = self.registry.get_manifest(&r)?;
        if fetched.media_type == oci::MEDIA_INDEX || fetched.media_type == oci::DOCKER_MANIFEST_LIST {
            let index: Index =
                serde_json::from_slice(&fetched.bytes).map_err(|e| EngineError::Copy(format!("image {image}: bad index: {e}")))?;
            let pick =
                index.manifests.iter().find(|d| d.platform.as_ref().and_then(|p| p.to_platform()).is_some_and(|p| p == *platform)).or_else(
                    || {
                        index
                            .manifests
                            .iter()
                            .find(|d| d.platform.as_ref().is_some_and(|p| p.os == platform.os() && p.architecture == platform.arch()))
                    },
                );
            let Some(desc) = pick else {
                let available: Vec<String> = index
                    .manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref())
                    .map(|p| format!("{}/{}{}", p.os, p.architecture, p.variant.as_ref().map(|v| format!("/{v}")).unwrap_or_default()))
                    .collect();
                return Err(EngineError::MissingPlatform {
                    image: image.to_string(),
                    platform: platform.to_string(),
                    available: available.join(", "),
                });
            };
            fetched = self.registry.get_manifest(&r.with_digest(desc.digest.clone()))?;
        }
        let manifest: Manifest =
            serde_json::from_slice(&fetched.bytes).map_err(|e| EngineError::Copy(format!("image {image}: bad manifest: {e}")))?;
        self.fetch_base_blob(&r, &manifest.config.digest)?;
        let config: ImageConfig = serde_json::from_slice(&self.store.read(&manifest.config.digest)?)
            .map_err(|e| EngineError::Copy(format!("image {image}: bad config: {e}")))?;
        if config.architecture != platform.arch() {
            return Err(EngineError::MissingPlatform {
                image: image.to_string(),
                platform: platform.to_string(),
                available: format!("{}/{}", config.os, config.architecture),
            });
        }
        let mut layers = Vec::new();
        for (i, l) in manifest.layers.iter().enumerate() {
            self.fetch_base_blob(&r, &l.digest)?;
            let diff_id = config
                .rootfs
                .diff_ids
                .get(i)
                .cloned()
                .ok_or_else(|| EngineError::Copy(format!("image {image}: config lists fewer diff_ids than the manifest has layers")))?;
            let media_type = if l.media_type == oci::DOCKER_LAYER_GZIP { oci::MEDIA_LAYER_GZIP.to_string() } else { l.media_type.clone() };
            layers.push(Layer { digest: l.digest.clone(), diff_id, size: l.size, media_type });
        }
        let state = State { config, layers, key: fetched.digest.to_string() };
        let out = (state, fetched.digest);
        if let Ok(mut p) = self.pulled.lock() {
            p.insert(key, out.clone());
        }
        Ok(out)
    }

    /// A base image's blob: from the store, else from peers, else from its registry.
    fn fetch_base_blob(&self, r: &Reference, d: &Digest) -> Result<(), EngineError> {
        if self.store.has(d) || self.peers.get().is_some_and(|p| p.blob(d, &self.store)) {
            return Ok(());
        }
        Ok(self.registry.fetch_blob(r, d, &self.store)?)
    }

    /// The unpacked snapshot directory of a layer (unpacked on first use).
    pub(crate) fn snapshot(&self, layer: &Layer) -> Result<PathBuf, EngineError> {
        let dir = self.root.join("snapshots").join(layer.diff_id.hex());
        if !dir.exists() {
            let tmp = self.scratch("unpack");
            layers::unpack(&self.store, &layer.digest, &tmp, Whiteouts::Overlay)?;
            if let Err(e) = std::fs::rename(&tmp, &dir) {
                let _ = std::fs::remove_dir_all(&tmp);
                if !dir.exists() {
                    return Err(io_err("storing a snapshot")(e));
                }
            }
        }
        // Overlay's mount options fit in one page: short links instead of full snapshot paths
        // let an image have about three times as many layers (containerd's trick).
        let link = self.root.join("l").join(&layer.diff_id.hex()[..16]);
        if std::fs::symlink_metadata(&link).is_err() {
            let target = PathBuf::from("../snapshots").join(layer.diff_id.hex());
            if let Err(e) = std::os::unix::fs::symlink(&target, &link) {
                if std::fs::symlink_metadata(&link).is_err() {
                    return Err(io_err("linking a snapshot")(e));
                }
            }
        }
        Ok(link)
    }

    /// Lower directories of a state, top layer first.
    pub(crate) fn lowers(&self, state: &State) -> Result<Vec<PathBuf>, EngineError> {
        state.layers.iter().rev().map(|l| self.snapshot(l)).collect()
    }

    /// Mounts a state's filesystem read-only (for COPY --from and bind mounts).
    pub(crate) fn mount_ro(&self, state: &State) -> Result<(Overlay, PathBuf), EngineError> {
        let target = self.scratch("ro");
        let lowers = self.lowers(state)?;
        Ok((Overlay::mount(&lowers, None, &target)?, target))
    }

    pub fn run_slice(&self, req: &SliceRequest, events: &(dyn Fn(Event) + Sync)) -> Result<SliceResult, EngineError> {
        let started = Instant::now();
        let _in_use = crate::gc::BuildLock::shared(&self.root)?;
        if !self.platforms.can_run(&req.platform) {
            let runs: Vec<String> = self.platforms.native.iter().chain(&self.platforms.emulated).map(|p| p.to_string()).collect();
            return Err(EngineError::CannotExecute { platform: req.platform.to_string(), runs: runs.join(", ") });
        }
        let df = frontend::parse(req.dockerfile).map_err(|e| e.in_file(req.dockerfile_name))?;
        let images = RegistryImages { agent: self, errors: Mutex::new(Vec::new()) };
        let opts = Options {
            platform: req.platform.clone(),
            build_platform: Platform::host(),
            build_args: req.build_args,
            target: req.target,
            images: &images,
        };
        let plan = resolve::resolve(&df, &opts).map_err(|e| e.in_file(req.dockerfile_name));
        if let Some(e) = images.errors.lock().ok().and_then(|mut e| e.pop()) {
            return Err(e);
        }
        let plan = plan?;
        let mut run = SliceRun {
            agent: self,
            req,
            plan: &plan,
            events,
            finished: HashMap::new(),
            hits: AtomicU32::new(0),
            misses: AtomicU32::new(0),
            peer_hits: AtomicU32::new(0),
            records: Mutex::new(Vec::new()),
        };
        // Stages run in waves: every stage whose dependencies are built runs now, side by side.
        let mut pending: Vec<&Stage> = plan.stages.iter().collect();
        while !pending.is_empty() {
            let (ready, later): (Vec<&Stage>, Vec<&Stage>) =
                pending.into_iter().partition(|s| s.deps.iter().all(|d| run.finished.contains_key(d)));
            if ready.is_empty() {
                return Err(EngineError::Copy("stages wait on each other (a dependency cycle)".into()));
            }
            let shared = &run;
            let results: Vec<(usize, Result<State, EngineError>)> = std::thread::scope(|scope| {
                let handles: Vec<_> = ready.iter().map(|stage| (stage.index, scope.spawn(move || shared.stage(stage)))).collect();
                handles
                    .into_iter()
                    .map(|(i, h)| (i, h.join().unwrap_or_else(|_| Err(EngineError::Copy("a stage panicked".into())))))
                    .collect()
            });
            for (i, r) in results {
                run.finished.insert(i, r?);
            }
            pending = later;
        }
        let final_state =
            run.finished.get(&plan.target).cloned().ok_or_else(|| EngineError::Copy("the target stage was not built".into()))?;
        let (manifest, blobs) = self.write_image(&final_state, &req.platform, req.epoch())?;
        // The final image's chain: the target stage and the stages it builds on.
        let mut chain = vec![plan.target];
        while let Some(Base::Stage(i)) = chain.last().and_then(|&s| plan.stages.iter().find(|st| st.index == s)).map(|st| &st.base) {
            if chain.contains(i) {
                break;
            }
            chain.push(*i);
        }
        let records = std::mem::take(&mut *run.records.lock().unwrap_or_else(|e| e.into_inner()))
            .into_iter()
            .map(|(stage, key, state_json)| kiln_shared::api::CacheRecord { key, state_json, in_final: chain.contains(&stage) })
            .collect();
        Ok(SliceResult {
            platform: req.platform.clone(),
            emulated: self.platforms.is_emulated(&req.platform),
            manifest,
            blobs,
            layers: final_state.layers.clone(),
            cache_hits: run.hits.load(Ordering::Relaxed),
            cache_misses: run.misses.load(Ordering::Relaxed),
            cache_peer_hits: run.peer_hits.load(Ordering::Relaxed),
            duration_ms: started.elapsed().as_millis() as u64,
            records,
        })
    }

    fn write_image(&self, state: &State, platform: &Platform, epoch: Option<u64>) -> Result<(Descriptor, Vec<Digest>), EngineError> {
        let mut config = state.config.clone();
        config.created = epoch.map(rfc3339).or(config.created);
        let config_bytes = oci::to_json(&config);
        let config_digest = self.store.put(&config_bytes)?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(oci::MEDIA_MANIFEST.into()),
            config: Descriptor::new(oci::MEDIA_CONFIG, config_digest.clone(), config_bytes.len() as u64),
            layers: state.layers.iter().map(|l| Descriptor::new(&l.media_type, l.digest.clone(), l.size)).collect(),
            annotations: Default::default(),
        };
        let bytes = oci::to_json(&manifest);
        let digest = self.store.put(&bytes)?;
        let mut desc = Descriptor::new(oci::MEDIA_MANIFEST, digest.clone(), bytes.len() as u64);
        desc.platform = Some(platform.into());
        let mut blobs: Vec<Digest> = state.layers.iter().map(|l| l.digest.clone()).collect();
        blobs.push(config_digest);
        blobs.push(digest);
        Ok((desc, blobs))
    }

    /// The same image with zstd-compressed layers: a new manifest, same config.
    pub fn zstd_image(&self, slice: &SliceResult) -> Result<(Descriptor, Vec<Digest>), EngineError> {
        let manifest: Manifest = serde_json::from_slice(&self.store.read(&slice.manifest.digest)?)
            .map_err(|e| EngineError::Copy(format!("reading back the manifest: {e}")))?;
        let mut layers = Vec::new();
        for l in &slice.layers {
            layers.push(if l.media_type == oci::MEDIA_LAYER_ZSTD { l.clone() } else { layers::to_zstd(&self.store, l)? });
        }
        let new =
            Manifest { layers: layers.iter().map(|l| Descriptor::new(&l.media_type, l.digest.clone(), l.size)).collect(), ..manifest };
        let bytes = oci::to_json(&new);
        let digest = self.store.put(&bytes)?;
        let mut desc = Descriptor::new(oci::MEDIA_MANIFEST, digest.clone(), bytes.len() as u64);
        desc.platform = slice.manifest.platform.clone();
        let mut blobs: Vec<Digest> = layers.iter().map(|l| l.digest.clone()).collect();
        blobs.push(new.config.digest.clone());
        blobs.push(digest);
        Ok((desc, blobs))
    }

    /// Writes the final filesystem of an image (its layers applied in order) into `dest`.
    pub fn export_rootfs(&self, layers: &[Layer], dest: &Path) -> Result<(), EngineError> {
        std::fs::create_dir_all(dest).map_err(io_err(format!("creating {}", dest.display())))?;
        for l in layers {
            layers::unpack(&self.store, &l.digest, dest, Whiteouts::Delete)?;
        }
        Ok(())
    }
}

/// Seconds since the epoch as an RFC 3339 UTC timestamp.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Writes a step cache record atomically.
pub(crate) fn write_record(path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, path)).map_err(io_err("writing the step cache"))
}

/// Base-image configs for resolution, pulled from registries.
struct RegistryImages<'a> {
    agent: &'a Agent,
    errors: Mutex<Vec<EngineError>>,
}

impl BaseImages for RegistryImages<'_> {
    fn config(&self, image: &str, platform: &Platform) -> Option<BaseConfig> {
        match self.agent.pull(image, platform) {
            Ok((state, _)) => {
                let c = &state.config.config;
                Some(BaseConfig {
                    env: c.env_pairs(),
                    workdir: Some(c.working_dir.clone()).filter(|w| !w.is_empty()),
                    shell: c.shell.clone(),
                    onbuild: c.on_build.clone().unwrap_or_default(),
                })
            }
            Err(e) => {
                if let Ok(mut errs) = self.errors.lock() {
                    errs.push(e);
                }
                None
            }
        }
    }
}

/// One slice in progress.
pub(crate) struct SliceRun<'a> {
    pub agent: &'a Agent,
    pub req: &'a SliceRequest<'a>,
    pub plan: &'a BuildPlan,
    pub events: &'a (dyn Fn(Event) + Sync),
    pub finished: HashMap<usize, State>,
    pub hits: AtomicU32,
    pub misses: AtomicU32,
    pub peer_hits: AtomicU32,
    /// (stage, key, record JSON) of every step, hit or not.
    pub records: Mutex<Vec<(usize, String, String)>>,
}

/// Bumped whenever what a cached step produces changes, so old records are not reused.
const CACHE_VERSION: &str = "kiln-step-cache-3";

fn cache_key(parent: &str, text: &str, platform: &Platform, extra: &str) -> String {
    Digest::of(format!("{CACHE_VERSION}\n{parent}\n{text}\n{platform}\n{extra}").as_bytes()).hex().to_string()
}

/// The name a record is stored, advertised and looked up under: its key within a scope, so
/// that one tenant can never name (and so never get) another tenant's record.
pub fn record_name(scope: &str, key: &str) -> String {
    Digest::of(format!("{scope}\n{key}").as_bytes()).hex().to_string()
}

impl SliceRun<'_> {
    fn stage(&self, stage: &Stage) -> Result<State, EngineError> {
        let label = stage.display_name();
        let total = stage.steps.len() + 1;
        let name = format!("[{} {label} 1/{total}] {}", self.req.platform, print::instruction(&stage.from, Style::Expanded));
        let id = self.agent.next_id();
        (self.events)(Event::Start { id, name });
        let t = Instant::now();
        let mut state = match &stage.base {
            Base::Scratch => {
                State { config: ImageConfig::empty(&stage.platform), layers: vec![], key: format!("scratch {}", stage.platform) }
            }
            Base::Stage(i) => {
                self.finished.get(i).cloned().ok_or_else(|| EngineError::Copy(format!("stage {i} was not built before {label}")))?
            }
            Base::Image(image) => {
                let (mut s, _) = self.agent.pull(image, &stage.platform).map_err(|e| self.step_err(stage, stage.pos.line, e))?;
                // ONBUILD triggers run in this stage; the new image does not carry them.
                s.config.config.on_build = None;
                s
            }
        };
        // Every Linux image gets a PATH when its base has none (BuildKit's rule).
        if !state.config.config.env.iter().any(|e| e.starts_with("PATH=")) {
            state.config.config.set_env("PATH", resolve::DEFAULT_PATH);
        }
        (self.events)(Event::Done { id, secs: t.elapsed().as_secs_f64() });
        for (n, step) in stage.steps.iter().enumerate() {
            let text = print::instruction(&step.instruction, Style::Expanded);
            let name = format!("[{} {label} {}/{total}] {text}", self.req.platform, n + 2);
            let id = self.agent.next_id();
            (self.events)(Event::Start { id, name });
            let t = Instant::now();
            match self.step(stage, step, &text, &mut state, id) {
                Ok(true) => (self.events)(Event::Cached { id }),
                Ok(false) => (self.events)(Event::Done { id, secs: t.elapsed().as_secs_f64() }),
                Err(e) => {
                    let e = self.step_err(stage, step.pos.line, e);
                    (self.events)(Event::Failed { id, message: e.to_string() });
                    return Err(e);
                }
            }
        }
        Ok(state)
    }

    fn step_err(&self, stage: &Stage, line: u32, e: EngineError) -> EngineError {
        EngineError::Step {
            platform: self.req.platform.to_string(),
            stage: stage.display_name(),
            file: self.req.dockerfile_name.to_string(),
            line,
            error: Box::new(e),
        }
    }

    /// Runs one step; true when it came from the cache.
    fn step(&self, stage: &Stage, step: &Step, text: &str, state: &mut State, id: u64) -> Result<bool, EngineError> {
        let extra = self.cache_extra(stage, step)?;
        // The epoch changes every timestamp a step writes: it is part of the key.
        let extra = match self.req.epoch() {
            Some(e) => format!("{extra}\nSOURCE_DATE_EPOCH={e}"),
            None => extra,
        };
        let key = cache_key(&state.key, text, &stage.platform, &extra);
        let name = record_name(self.req.cache_scope, &key);
        let record = self.agent.root.join("cache").join(format!("{name}.json"));
        if !self.req.no_cache {
            if let Some(cached) = self.cached(&record, &name, &key) {
                *state = cached;
                self.note(stage, &key, state);
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(true);
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let layer = self.execute(stage, step, state, id)?;
        let created_by = match &step.instruction {
            Instruction::Run(_) => format!("RUN {}", step.argv.as_ref().map(|a| a.join(" ")).unwrap_or_default()),
            _ => text.to_string(),
        };
        let mut history = History { created_by: Some(created_by), comment: Some("buildkit.dockerfile.v0".into()), ..Default::default() };
        history.created = self.req.epoch().map(rfc3339);
        match layer {
            Some(l) => {
                state.config.rootfs.diff_ids.push(l.diff_id.clone());
                state.layers.push(l);
            }
            None => history.empty_layer = true,
        }
        state.config.history.push(history);
        state.key = key.clone();
        write_record(&record, &serde_json::to_vec(state).unwrap_or_default())?;
        self.note(stage, &key, state);
        Ok(false)
    }

    /// The step's record from the local cache, else from the remote caches (whose record is
    /// then kept locally with every blob it names).
    fn cached(&self, record: &Path, name: &str, key: &str) -> Option<State> {
        if let Some(cached) = std::fs::read(record).ok().and_then(|b| serde_json::from_slice::<State>(&b).ok()) {
            if cached.layers.iter().all(|l| self.agent.store.has(&l.digest)) {
                // The record's mtime is its last use, which prune's `until` filter reads.
                if let Ok(f) = std::fs::File::options().append(true).open(record) {
                    let _ = f.set_modified(std::time::SystemTime::now());
                }
                for l in &cached.layers {
                    self.agent.store.touch(&l.digest);
                }
                return Some(cached);
            }
        }
        let peers = self.agent.peers.get().map(|p| &**p as &dyn RemoteCache);
        for remote in peers.into_iter().chain(self.req.remote.iter().copied()) {
            let Some(bytes) = remote.record(name, key) else { continue };
            let Ok(cached) = serde_json::from_slice::<State>(&bytes) else { continue };
            // A record is usable only with its layers, and only if it is for this very step.
            if cached.key != key
                || !cached.layers.iter().all(|l| self.agent.store.has(&l.digest) || remote.blob(&l.digest, &self.agent.store))
            {
                continue;
            }
            if write_record(record, &bytes).is_err() {
                continue;
            }
            if remote.is_peer() {
                self.peer_hits.fetch_add(1, Ordering::Relaxed);
            }
            return Some(cached);
        }
        None
    }

    fn note(&self, stage: &Stage, key: &str, state: &State) {
        let json = serde_json::to_string(state).unwrap_or_default();
        self.records.lock().unwrap_or_else(|e| e.into_inner()).push((stage.index, key.to_string(), json));
    }

    /// What besides the instruction text decides a step's result.
    fn cache_extra(&self, stage: &Stage, step: &Step) -> Result<String, EngineError> {
        let from_key = |from: &Option<String>| -> Result<String, EngineError> {
            match from {
                None => Ok(String::new()),
                Some(f) => Ok(match self.source_state(f, &stage.platform)? {
                    Some(s) => s.key,
                    None => String::new(),
                }),
            }
        };
        Ok(match &step.instruction {
            Instruction::Copy(c) => {
                let origin = if c.from.is_some() {
                    from_key(&c.from)?
                } else {
                    copy::context_checksum(self.req.context, self.req.ignore, &c.sources)?
                };
                format!("{origin}\n{:?}", c.heredocs)
            }
            Instruction::Add(a) => format!("{}\n{:?}", copy::context_checksum(self.req.context, self.req.ignore, &a.sources)?, a.heredocs),
            Instruction::Run(r) => {
                let mut extra = format!("{:?}\n{:?}\n{}", step.args, step.files, step.workdir);
                for m in &r.mounts {
                    if m.from.is_some() {
                        extra.push_str(&from_key(&m.from)?);
                    } else if m.kind == kiln_shared::frontend::mount::MountType::Bind {
                        extra.push_str(&copy::context_checksum(
                            self.req.context,
                            self.req.ignore,
                            &[m.source.clone().unwrap_or_else(|| ".".into())],
                        )?);
                    }
                }
                extra
            }
            _ => String::new(),
        })
    }

    /// The state a `--from` value names: a built stage, or a pulled image.
    pub(crate) fn source_state(&self, from: &str, platform: &Platform) -> Result<Option<State>, EngineError> {
        let index = if from.chars().all(|c| c.is_ascii_digit()) {
            from.parse::<usize>().ok()
        } else {
            self.plan.stages.iter().find(|s| s.name.as_deref() == Some(&from.to_ascii_lowercase())).map(|s| s.index)
        };
        match index {
            Some(i) => Ok(self.finished.get(&i).cloned()),
            None => Ok(Some(self.agent.pull(from, platform)?.0)),
        }
    }

    fn execute(&self, stage: &Stage, step: &Step, state: &mut State, id: u64) -> Result<Option<Layer>, EngineError> {
        let cfg = &mut state.config.config;
        match &step.instruction {
            Instruction::Env(kv) => kv.pairs.iter().for_each(|p| cfg.set_env(&p.key, &p.value)),
            Instruction::Label(kv) => kv.pairs.iter().for_each(|p| {
                cfg.labels.insert(p.key.clone(), p.value.clone());
            }),
            Instruction::User { user } => cfg.user = user.clone(),
            Instruction::Expose { ports } => ports.iter().for_each(|p| {
                let p = if p.contains('/') { p.to_ascii_lowercase() } else { format!("{p}/tcp") };
                cfg.exposed_ports.insert(p, serde_json::json!({}));
            }),
            Instruction::Volume { paths, .. } => paths.iter().for_each(|p| {
                cfg.volumes.insert(p.clone(), serde_json::json!({}));
            }),
            Instruction::Stopsignal { signal } => cfg.stop_signal = signal.clone(),
            Instruction::Shell { shell } => cfg.shell = Some(shell.clone()),
            Instruction::Entrypoint { .. } => {
                cfg.entrypoint = step.argv.clone();
                // ENTRYPOINT clears a CMD inherited from the base (Docker's rule).
                cfg.cmd = None;
            }
            Instruction::Cmd { .. } => cfg.cmd = step.argv.clone(),
            Instruction::Healthcheck(h) => cfg.healthcheck = Some(healthcheck_json(h, step)),
            Instruction::Onbuild { expression, .. } => cfg.on_build.get_or_insert_with(Vec::new).push(expression.clone()),
            Instruction::Maintainer { name } => {
                cfg.labels.insert("maintainer".into(), name.clone());
            }
            Instruction::Arg { .. } | Instruction::From(_) => {}
            Instruction::Workdir { .. } => {
                cfg.working_dir = step.workdir.clone();
                return copy::workdir(self.agent, state, &step.workdir, self.req.epoch());
            }
            Instruction::Copy(_) | Instruction::Add(_) => return copy::copy(self, stage, step, state),
            Instruction::Run(_) => return self.run(stage, step, state, id),
        }
        Ok(None)
    }

    fn run(&self, stage: &Stage, step: &Step, state: &State, id: u64) -> Result<Option<Layer>, EngineError> {
        let Instruction::Run(run) = &step.instruction else { return Ok(None) };
        let dir = self.agent.scratch("step");
        let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
        let lowers = self.agent.lowers(state)?;
        let result = (|| {
            let overlay = Overlay::mount(&lowers, Some((&upper, &work)), &merged)?;
            let cfg = &state.config.config;
            let mut env = cfg.env.clone();
            for (k, v) in &step.args {
                if !env.iter().any(|e| e.split('=').next() == Some(k)) {
                    env.push(format!("{k}={v}"));
                }
            }
            if !env.iter().any(|e| e.starts_with("PATH=")) {
                env.push(format!("PATH={}", resolve::DEFAULT_PATH));
            }
            let (uid, gid) = copy::resolve_user(&merged, &cfg.user)?;
            let cwd = if cfg.working_dir.is_empty() { "/".to_string() } else { cfg.working_dir.clone() };
            std::fs::create_dir_all(merged.join(cwd.trim_start_matches('/')))
                .map_err(io_err(format!("creating the working directory {cwd}")))?;
            let mut binds = Vec::new();
            let mut keep = Vec::new();
            for (path, content) in &step.files {
                let host = dir.join(format!("file-{}", binds.len()));
                std::fs::write(&host, content).map_err(io_err("writing a heredoc script"))?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o755)).map_err(io_err("writing a heredoc script"))?;
                binds.push((host, path.clone(), true));
            }
            for m in &run.mounts {
                use kiln_shared::frontend::mount::MountType;
                let target = m.target.clone().unwrap_or_else(|| cwd.clone());
                match m.kind {
                    MountType::Cache => {
                        let id = m.id.clone().unwrap_or_else(|| target.clone());
                        let host =
                            self.agent.root.join("cachemounts").join(Digest::of(format!("{}\n{id}", stage.platform).as_bytes()).hex());
                        std::fs::create_dir_all(&host).map_err(io_err("creating a cache mount"))?;
                        binds.push((host, target, m.readonly == Some(true)));
                    }
                    MountType::Bind => {
                        let src = m.source.clone().unwrap_or_else(|| ".".into());
                        let host = match &m.from {
                            Some(from) => {
                                let Some(src_state) = self.source_state(from, &stage.platform)? else { continue };
                                let (ov, root) = self.agent.mount_ro(&src_state)?;
                                keep.push(ov);
                                crate::copy::secure_join(&root, &src)
                            }
                            None => {
                                // Bind sources stay inside the context, and runc needs absolute paths.
                                let ctx = std::fs::canonicalize(self.req.context)
                                    .map_err(io_err(format!("reading the build context {}", self.req.context.display())))?;
                                let host = std::fs::canonicalize(ctx.join(src.trim_start_matches('/')))
                                    .map_err(|_| EngineError::Copy(format!("bind mount source {src:?} not found in the build context")))?;
                                if !host.starts_with(&ctx) {
                                    return Err(EngineError::Copy(format!("bind mount source {src:?} is outside the build context")));
                                }
                                host
                            }
                        };
                        binds.push((host, target, m.readonly != Some(false)));
                    }
                    MountType::Tmpfs => {
                        let host = dir.join(format!("tmpfs-{}", binds.len()));
                        std::fs::create_dir_all(&host).map_err(io_err("creating a tmpfs mount"))?;
                        binds.push((host, target, false));
                    }
                    MountType::Secret | MountType::Ssh if m.required == Some(true) => {
                        return Err(EngineError::Copy(format!(
                            "{} mount {} is required but kiln has no {}s to provide yet",
                            m.kind.as_str(),
                            m.id.clone().unwrap_or_default(),
                            m.kind.as_str()
                        )));
                    }
                    MountType::Secret | MountType::Ssh => {}
                }
            }
            let args = step.argv.clone().unwrap_or_default();
            let network = run.network.clone().unwrap_or_else(|| "default".into());
            let spec =
                RunSpec { rootfs: &merged, upper: &upper, args: &args, env: &env, cwd: &cwd, uid, gid, network: &network, binds: &binds };
            let events = self.events;
            let res = runc::run(&format!("kiln-{}-{id}", std::process::id()), &dir.join("bundle"), &spec, &mut |line| {
                events(Event::Log { id, line: line.to_string() })
            });
            drop(keep);
            drop(overlay);
            res?;
            Ok(layers::diff(&upper, &self.agent.store, self.req.epoch())?)
        })();
        let _ = std::fs::remove_dir_all(&dir);
        result
    }
}

fn healthcheck_json(h: &Healthcheck, step: &Step) -> serde_json::Value {
    let ns = |v: &Option<String>| v.as_deref().and_then(kiln_shared::frontend::instructions::parse_go_duration);
    match h {
        Healthcheck::None => serde_json::json!({"Test": ["NONE"]}),
        Healthcheck::Cmd { interval, timeout, start_period, start_interval, retries, .. } => {
            let mut v = serde_json::json!({"Test": step.argv.clone().unwrap_or_default()});
            for (k, d) in [
                ("Interval", ns(interval)),
                ("Timeout", ns(timeout)),
                ("StartPeriod", ns(start_period)),
                ("StartInterval", ns(start_interval)),
            ] {
                if let Some(d) = d {
                    v[k] = serde_json::json!(d);
                }
            }
            if let Some(r) = retries {
                v["Retries"] = serde_json::json!(r);
            }
            v
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
