//! The engine: runs one slice (a Dockerfile for one platform) and produces its image.
//!
//! Each stage starts from scratch, a pulled base image or another stage's result, and applies
//! its steps in order. Every step has a cache key (DESIGN.md: parent key, the expanded
//! instruction, the platform, and for COPY/ADD the checksum of the sources); a step whose key
//! is in the step cache is not executed. Steps that change the filesystem add a layer; the
//! others add an empty-layer history entry, as Docker does.
//!
//! This file holds the engine's types; its operations live beside it, one per file: pulling
//! base images (`pull`), snapshots and mounts (`snapshot`), running a slice stage by stage
//! (`slice`), the step cache (`step_cache`), RUN steps (`run`, through the [`Executor`]),
//! config-only instructions (`config_ops`) and writing images (`image`). COPY, ADD and
//! WORKDIR are `crate::copy`'s, which sees the slice only through `copy::CopyEnv`.

mod attest;
mod config_ops;
mod history;
mod image;
mod mounts;
mod pull;
mod run;
mod slice;
mod snapshot;
mod step_cache;

use crate::error::io_err;
pub use crate::error::EngineError;
use crate::executor::{Executor, Runc};
use crate::layers::Layer;
use crate::probe::HostPlatforms;
pub use crate::state::State;
use kiln_shared::digest::Digest;
use kiln_shared::frontend::dockerignore::DockerIgnore;
use kiln_shared::frontend::resolve::BuildPlan;
use kiln_shared::oci::Descriptor;
use kiln_shared::registry::RegistryClient;
use kiln_shared::store::ContentStore;
use kiln_shared::Platform;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What the engine reports while it works (the wire type, so agents forward it as is).
pub use kiln_shared::api::Event;
pub use kiln_shared::attest::provenance::Material;

pub struct SliceRequest<'a> {
    pub dockerfile: &'a str,
    pub dockerfile_name: &'a str,
    pub context: &'a Path,
    pub ignore: &'a DockerIgnore,
    pub platform: Platform,
    pub build_args: &'a [(String, String)],
    pub target: Option<&'a str>,
    pub no_cache: bool,
    /// `--no-cache-filter`: stages (by name) whose steps skip the step cache.
    pub no_cache_filter: &'a [String],
    /// `--pull`: base images' tags are resolved at their registries again for this slice.
    pub pull: bool,
    /// Whose step cache records this slice uses and adds (a tenant, or `shared`).
    pub cache_scope: &'a str,
    /// Caches imported with `--cache-from`: where a miss looks after the farm's peers.
    pub remote: &'a [&'a dyn RemoteCache],
    /// The platforms this agent counts as native (what the farm was told); empty: what the
    /// host probe found. A RUN step of a stage on another platform runs under emulation.
    pub native: &'a [Platform],
    /// `--label`s for the final image.
    pub labels: &'a [(String, String)],
    /// The build's client, for secrets and ssh-agents.
    pub session: &'a dyn Session,
    /// `--build-context NAME=...`, as the agent has them.
    pub named: &'a [(String, Named)],
    /// `--network`, `--add-host`, `--shm-size`, `--ulimit`.
    pub run: &'a kiln_shared::api::RunOptions,
    /// Set when the build is cancelled: the slice stops before its next step.
    pub cancelled: &'a std::sync::atomic::AtomicBool,
}

/// How a named OCI layout's image is named to the engine: this prefix and the digest of its
/// manifest or index, whose blobs are in the store (see `pull`).
pub const LAYOUT_PREFIX: &str = "oci-layout://";

/// A named context (`--build-context`), as the engine uses it.
#[derive(Clone, Debug)]
pub enum Named {
    /// An image to use wherever the name is (`docker-image://REF`).
    Image(String),
    /// A directory: a stage `FROM` the name has its files, `COPY --from` the name copies them.
    Dir(PathBuf),
}

/// What a step asks of the build's client (BuildKit's session). Called from the engine's
/// blocking threads; `Ok(None)`: the client has no such id.
pub trait Session: Sync {
    /// The bytes of `--secret id=ID`.
    fn secret(&self, id: &str) -> Result<Option<Vec<u8>>, String>;
    /// Relays one ssh-agent message (length prefix included) to `--ssh ID`'s agent; its reply.
    fn ssh(&self, id: &str, message: &[u8]) -> Result<Option<Vec<u8>>, String>;
}

/// A client that offers nothing.
pub struct NoSession;

impl Session for NoSession {
    fn secret(&self, _: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(None)
    }
    fn ssh(&self, _: &str, _: &[u8]) -> Result<Option<Vec<u8>>, String> {
        Ok(None)
    }
}

impl SliceRequest<'_> {
    /// Whether a stage on `platform` runs its RUN steps under emulation on this agent.
    pub fn emulates(&self, platform: &Platform, probed: &HostPlatforms) -> bool {
        if self.native.is_empty() {
            probed.is_emulated(platform)
        } else {
            !self.native.contains(platform)
        }
    }

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
    /// Where a hit came from, for `kiln_step_cache_hits_total{source}`.
    fn source(&self) -> &'static str;
}

#[derive(Clone, Debug, Serialize)]
pub struct SliceResult {
    pub platform: Platform,
    /// Some RUN step of the slice runs (or, from the cache, ran) under emulation.
    pub emulated: bool,
    /// Those steps, as the progress names them (`[stage-0 3/5] RUN ...`).
    pub emulated_steps: Vec<String>,
    /// Every step, as it happened (build history).
    pub steps: Vec<kiln_shared::api::StepRecord>,
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
    /// For provenance: the images used, the platform the build ran on, and whether no RUN
    /// step could reach the network.
    pub materials: Vec<Material>,
    pub build_platform: Platform,
    pub hermetic: bool,
}

/// A pulled base image: its state, manifest digest, and when it was pulled.
type Pulled = (State, Digest, std::time::Instant);

pub struct Agent {
    pub root: PathBuf,
    pub store: ContentStore,
    pub registry: RegistryClient,
    pub platforms: HostPlatforms,
    /// What mounts step filesystems and runs RUN steps: runc unless told otherwise.
    executor: Arc<dyn Executor>,
    /// Base images pulled, and when (a `--pull` slice takes only what it pulled itself).
    pulled: Mutex<HashMap<(String, Platform), Pulled>>,
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
        crate::sweep::leftovers(root);
        let platforms = HostPlatforms::detect(&root.join("run"));
        Ok(Agent {
            root: root.to_path_buf(),
            store,
            registry: RegistryClient::new(insecure),
            platforms,
            executor: Arc::new(Runc),
            pulled: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            peers: std::sync::OnceLock::new(),
        })
    }

    /// The same agent with RUN steps (and the mounts they need) going through `executor`.
    pub fn with_executor(self, executor: Arc<dyn Executor>) -> Agent {
        Agent { executor, ..self }
    }

    fn next_id(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A fresh scratch directory for one step.
    fn scratch(&self, what: &str) -> PathBuf {
        let n = self.next_id();
        self.root.join("run").join(format!("{what}-{}-{n}", std::process::id()))
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

/// One slice in progress.
struct SliceRun<'a> {
    agent: &'a Agent,
    req: &'a SliceRequest<'a>,
    plan: &'a BuildPlan,
    events: &'a (dyn Fn(Event) + Sync),
    /// Every stage built so far, by index.
    finished: HashMap<usize, State>,
    hits: AtomicU32,
    misses: AtomicU32,
    peer_hits: AtomicU32,
    /// RUN steps of stages this agent emulates.
    pub emulated_steps: Mutex<Vec<String>>,
    /// Every step so far, for the build's history; times count from `started`.
    steps: Mutex<Vec<kiln_shared::api::StepRecord>>,
    started: std::time::Instant,
    /// Named directory contexts packed so far, by name (each is packed once per slice).
    named_dirs: Mutex<HashMap<String, State>>,
    /// Pulls older than this are resolved again (see `pull::REUSE_PULL` and `--pull`).
    fresh_since: std::time::Instant,
    /// (stage, key, record JSON) of every step, hit or not.
    records: Mutex<Vec<(usize, String, String)>>,
    /// The images the slice used, with the manifests they resolved to (provenance).
    materials: Mutex<Vec<Material>>,
}

/// The name a record is stored, advertised and looked up under: its key within a scope, so
/// that one tenant can never name (and so never get) another tenant's record.
pub fn record_name(scope: &str, key: &str) -> String {
    Digest::of(format!("{scope}\n{key}").as_bytes()).hex().to_string()
}

#[cfg(test)]
mod tests;
