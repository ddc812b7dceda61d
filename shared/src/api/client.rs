//! The CLI's protocol (users and admins → a coordinator): builds, builders, contexts, storage,
//! tokens and the coordinator membership. Admin-only verbs are listed in
//! [`ClientRequest::admin_only`]; a coordinator checks the caller's role against it.

use super::{AgentStorage, PruneSpec, Role, SessionAnswer, SessionAsk};
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
}

impl ClientRequest {
    /// Requests only an admin may send; users may send the rest.
    pub fn admin_only(&self) -> bool {
        use ClientRequest::*;
        match self {
            Prune { .. } | CreateToken { .. } | RemoveContext { .. } | CreateBuilder(_) | RemoveBuilder { .. } => true,
            AddCoordinator { .. } | RemoveCoordinator { .. } => true,
            Blob(_) | Status | Submit(_) | Watch { .. } | Answer { .. } | Contexts | Builders | Inspect { .. } | DiskUsage { .. } => false,
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
}
