//! The protocol between coordinators: Raft's RPCs, requests a follower forwards to the leader
//! with the identity it authenticated, and status.

use super::{AgentRequest, AgentResponse, BlobRequest, BlobResponse, ClientRequest, ClientResponse, ClusterStatus, Principal};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Which openraft RPC a [`CoordinatorRequest::Raft`] carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaftRpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CoordinatorRequest {
    /// openraft's own message, as JSON: its types stay a coordinator matter.
    Raft {
        rpc: RaftRpc,
        #[serde(with = "serde_bytes")]
        json: Vec<u8>,
    },
    /// A follower passes on a request it authenticated.
    /// `origin` is the coordinator that received it (where its uploads are).
    Forward {
        principal: Principal,
        origin: SocketAddr,
        request: Box<Forwarded>,
        /// The key fingerprint of the caller's certificate (agents' registrations are bound to it).
        #[serde(default)]
        key: Option<String>,
    },
    Status,
    /// Another coordinator copies a build's blobs here (see the coordinator's `replicate`).
    Blob(BlobRequest),
}

/// A request a follower forwards: of the CLI's or an agent's protocol, as its caller sent it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Forwarded {
    Client(ClientRequest),
    Agent(AgentRequest),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CoordinatorResponse {
    Raft {
        #[serde(with = "serde_bytes")]
        json: Vec<u8>,
    },
    Forwarded(ForwardedResponse),
    Status(ClusterStatus),
    Blob(BlobResponse),
}

/// The leader's answer to a [`Forwarded`] request, of the same protocol.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ForwardedResponse {
    Client(ClientResponse),
    Agent(AgentResponse),
}
