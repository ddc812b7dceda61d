//! An agent's protocol with the coordinators: registering, the long poll for work, progress and
//! slice reports, advertising what it holds and locating what peers hold, and blob transfer.

use super::{AgentInfo, BlobRequest, BlobResponse, Event, Grant, Inventory, SessionAnswer, SessionAsk, SliceOutcome, SliceTask};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AgentRequest {
    Register(AgentInfo),
    /// Heartbeat and long poll for work: answered with new tasks, or empty after `wait_ms`.
    Poll {
        agent: String,
        running: Vec<(u64, u32, u32)>,
        cache_bytes: u64,
        wait_ms: u32,
    },
    Events {
        build: u64,
        slice: u32,
        attempt: u32,
        events: Vec<Event>,
    },
    SliceDone(SliceOutcome),
    SliceFailed {
        build: u64,
        slice: u32,
        attempt: u32,
        message: String,
    },
    /// What an agent adds to and removes from its store and step cache.
    Advertise(Inventory),
    /// Which live agents hold these blobs (or are fetching them) and these records; answered
    /// with [`AgentResponse::Holders`], blobs first, each a list of peer endpoints.
    Locate {
        blobs: Vec<String>,
        records: Vec<String>,
    },
    /// Context blobs down; with `-o type=oci` on a farm, the image's blobs up; each under the
    /// grant of the slice it is for.
    Blob(BlobRequest, Option<Grant>),
    /// A step of a slice this agent runs asks the build's client (a secret, an ssh-agent
    /// message); answered with [`AgentResponse::Session`].
    Session {
        build: u64,
        slice: u32,
        attempt: u32,
        ask: SessionAsk,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AgentResponse {
    Ok,
    /// New tasks; `resync`: the tracker does not know this agent's inventory (a new leader).
    Tasks {
        tasks: Vec<SliceTask>,
        resync: bool,
        /// Running slices (build, slice, attempt) whose build was cancelled: stop them.
        #[serde(default)]
        cancel: Vec<(u64, u32, u32)>,
        /// Key fingerprints of revoked agents: this agent's peer endpoint refuses them.
        #[serde(default)]
        revoked: Vec<String>,
        /// How long the next poll should ask to be held (its `wait_ms`) at least: the leader
        /// spreads the polls of a large farm so that it answers at most `poll_rate_max` a
        /// second. Work still reaches a held poll at once.
        #[serde(default)]
        pace_ms: u32,
    },
    /// `resync`: the tracker does not know this agent; send the whole inventory.
    Advertised {
        resync: bool,
    },
    Holders(Vec<Vec<String>>),
    Blob(BlobResponse),
    Session(SessionAnswer),
}
