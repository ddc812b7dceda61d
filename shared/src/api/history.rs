//! Build history as the farm keeps it and `kiln history` shows it: each step of a slice with
//! what decided its result (so that a later build can say why it missed the cache), a line per
//! build for `history ls`, and the filter that selects them.

use super::{BuildState, BuildView};
use crate::Platform;
use serde::{Deserialize, Serialize};

/// Where a step's result came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepSource {
    /// It ran (or, for FROM, the image was resolved).
    Executed,
    /// This agent's own step cache.
    Local,
    /// Another agent of the farm, through the tracker.
    Peer,
    /// A cache imported with `--cache-from` (registry or uploaded).
    Imported,
}

impl StepSource {
    pub fn cached(self) -> bool {
        self != StepSource::Executed
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StepSource::Executed => "executed",
            StepSource::Local => "local",
            StepSource::Peer => "peer",
            StepSource::Imported => "imported",
        }
    }
}

/// One step of a slice, as it happened, with the inputs that decided its cache key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// `[stage-0 3/5] RUN make`, as the progress names it (without the platform).
    pub name: String,
    /// The stage's name or index and the step's position in it (1 is FROM).
    pub stage: String,
    pub position: u32,
    /// The instruction as it ran (variables expanded).
    pub text: String,
    pub source: StepSource,
    pub emulated: bool,
    /// Since the slice started, and how long the step took.
    pub start_ms: u64,
    pub duration_ms: u64,
    /// The step's cache key, and its parent's (the step before it, or the base).
    pub key: String,
    pub parent: String,
    /// FROM: the image's manifest digest. COPY/ADD from the context: the source patterns.
    #[serde(default)]
    pub base_digest: String,
    #[serde(default)]
    pub sources: Vec<String>,
    /// The build arguments the step's key depends on, with their values.
    #[serde(default)]
    pub args: Vec<(String, String)>,
}

/// Which builds `kiln history ls` lists: buildx's `--filter` keys.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryFilter {
    /// `status=running|completed|failed|cancelled` (buildx's names; `error` as failed).
    pub status: Option<String>,
    /// `ref=TAG` (a tag of the build, or a part of one).
    pub reference: Option<String>,
    /// `platform=linux/arm64`.
    pub platform: Option<Platform>,
    /// `tenant=NAME` (admins only; users see their own tenant's builds anyway).
    pub tenant: Option<String>,
    /// `since=MS` (milliseconds since the Unix epoch).
    pub since_ms: Option<u64>,
    /// At most this many, newest first (0: every build kept).
    pub limit: u32,
}

/// A build, in a line: what `kiln history ls` prints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BuildSummary {
    pub id: u64,
    pub tenant: String,
    pub state: BuildState,
    /// `cancelled` when a client cancelled it, else the state's name.
    pub status: String,
    pub tags: Vec<String>,
    pub platforms: Vec<Platform>,
    pub builder: String,
    pub dockerfile: String,
    pub target: Option<String>,
    pub submitted_at_ms: u64,
    pub finished_at_ms: u64,
    pub steps: u32,
    pub cached_steps: u32,
    pub error: String,
}

/// One build in full: `kiln history inspect`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BuildDetail {
    pub summary: BuildSummary,
    pub view: BuildView,
    /// Per slice (platform order), its steps.
    pub steps: Vec<Vec<StepRecord>>,
    /// Build arguments as given.
    pub build_args: Vec<(String, String)>,
    /// The build it was compared with for the cache explanation, and the explanation: for each
    /// step that ran where that build had it cached, what changed.
    pub previous: Option<u64>,
    pub misses: Vec<MissReason>,
}

/// Why one step ran where the previous build of the same target had it cached.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MissReason {
    pub platform: Platform,
    pub step: String,
    pub reason: String,
}
