//! The protocol of an agent's peer endpoint: other agents fetch chunks, blobs and step cache
//! records; coordinators also manage the agent's storage (`kiln du|prune`). Frames on that
//! endpoint carry these requests bare: it serves nothing else.

use super::{DiskUsage, PruneReport, PruneSpec};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// A blob's chunk table, with the chunks the peer holds if it is still fetching it.
    ChunkTable {
        digest: String,
    },
    /// Answered with [`PeerResponse::Body`], the chunk following raw on the stream.
    GetChunk {
        digest: String,
        index: u32,
    },
    GetBlob {
        digest: String,
        offset: u64,
        len: u32,
    },
    GetRecord {
        name: String,
    },
    /// An agent's request, with the grants of the slices it runs (see [`super::Grant`]): a peer
    /// serves an agent only what one of them names.
    Granted {
        grants: Vec<super::Grant>,
        request: Box<PeerRequest>,
    },
    /// Coordinators only.
    Usage,
    /// Coordinators only.
    Prune(PruneSpec),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PeerResponse {
    Table(crate::chunks::ChunkTable),
    /// A chunk of `len` bytes follows this answer on the stream, raw (`GetChunk`).
    Body {
        len: u64,
    },
    /// Blob or record content; sent as one byte string, not a sequence of numbers.
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
    Usage(DiskUsage),
    Pruned(PruneReport),
}
