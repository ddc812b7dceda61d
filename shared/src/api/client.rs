//! The CLI's protocol (users and admins → a coordinator): builds, builders, contexts, storage,
//! tokens and the coordinator membership. Admin-only verbs are listed in
//! [`ClientRequest::admin_only`]; a coordinator checks the caller's role against it.

use super::{AgentStorage, BuildDetail, BuildSummary, HistoryFilter, PruneSpec, Role, SessionAnswer, SessionAsk};
use super::{BlobRequest, BlobResponse, BuildEvent, BuildSpec, BuildView, BuilderView, ClusterStatus, ContextView, CreateSpec};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// Uploads and downloads, served by the coordinator that receives them.
    Blob(BlobRequest),
    /// The Raft cluster as the receiving coordinator sees it.
    Status,
    AddCoordinator {
        id: u64,
        addr: String,
    },
    RemoveCoordinator {
        id: u64,
    },
    /// An admin makes a join token for a role and tenant (`kiln coordinator token`).
    CreateToken {
        role: Role,
        tenant: String,
    },
    /// Boxed: the largest request by far.
    Submit(Box<BuildSpec>),
    /// Progress and state of a build; waits up to `wait_ms` for something new after `cursor`.
    Watch {
        build: u64,
        cursor: u64,
        wait_ms: u32,
    },
    /// The submitting client answers what a step of its build asked (see [`SessionAsk`]).
    Answer {
        build: u64,
        ask: u64,
        answer: SessionAnswer,
    },
    Contexts,
    RemoveContext {
        name: String,
        /// `--revoke`: the agent's key is refused from now on, everywhere.
        #[serde(default)]
        revoke: bool,
    },
    CreateBuilder(CreateSpec),
    RemoveBuilder {
        name: String,
    },
    Builders,
    Inspect {
        name: String,
    },
    /// `kiln du` across a builder's agents (every agent when `None`).
    DiskUsage {
        builder: Option<String>,
    },
    Prune {
        builder: Option<String>,
        spec: PruneSpec,
    },
    /// `kiln history ls`: the builds kept, newest first (a user's own tenant's only).
    History(HistoryFilter),
    /// `kiln history inspect`: one build in full (the newest when `None`).
    HistoryInspect {
        build: Option<u64>,
    },
    /// `kiln history rm`: finished builds leave the history.
    ForgetBuilds {
        builds: Vec<u64>,
    },
    /// `kiln prune --coordinators`: the receiving coordinator's blob store (admins; never
    /// forwarded: each coordinator holds its own blobs).
    PruneCoordinator {
        spec: PruneSpec,
    },
    /// Ctrl-C in `kiln build`: the build is cancelled, its slices stop.
    Cancel {
        build: u64,
    },
}

impl ClientRequest {
    /// Requests only an admin may send; users may send the rest.
    pub fn admin_only(&self) -> bool {
        use ClientRequest::*;
        match self {
            Prune { .. } | CreateToken { .. } | RemoveContext { .. } | CreateBuilder(_) | RemoveBuilder { .. } => true,
            PruneCoordinator { .. } => true,
            AddCoordinator { .. } | RemoveCoordinator { .. } => true,
            Blob(_) | Status | Submit(_) | Watch { .. } | Answer { .. } | Contexts | Builders | Inspect { .. } | DiskUsage { .. } => false,
            History(_) | HistoryInspect { .. } | ForgetBuilds { .. } | Cancel { .. } => false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClientResponse {
    Ok,
    Blob(BlobResponse),
    Status(ClusterStatus),
    Submitted {
        build: u64,
    },
    Build {
        view: BuildView,
        events: Vec<BuildEvent>,
        cursor: u64,
        /// What steps of the build ask of its client, not yet answered (by ask id).
        asks: Vec<(u64, SessionAsk)>,
    },
    Contexts(Vec<ContextView>),
    /// A created builder's or token's name.
    Name(String),
    Builders(Vec<BuilderView>),
    Builder(BuilderView),
    /// Per agent, for `kiln du|prune` across a builder; an unreachable agent has its error.
    PerAgent(Vec<(String, Result<AgentStorage, String>)>),
    History(Vec<BuildSummary>),
    BuildDetail(Box<BuildDetail>),
    /// How many of the named builds were removed.
    Count(u64),
    /// What a coordinator's blob GC removed.
    CoordinatorPruned {
        coordinator: u64,
        report: super::PruneReport,
    },
}
