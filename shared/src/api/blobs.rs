//! Blob transfer to and from a coordinator's store: spoken by the CLI (contexts and caches up,
//! images down) and by agents (contexts down, images up for `-o type=oci`), inside
//! [`super::ClientRequest::Blob`] and [`super::AgentRequest::Blob`].

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum BlobRequest {
    /// Which of these blobs the caller's tenant must still upload (a tenant owns a blob only
    /// once it has sent its content). `owner`: an agent returning blobs names the build's tenant.
    Missing {
        digests: Vec<String>,
        owner: Option<String>,
    },
    Put {
        digest: String,
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        last: bool,
        owner: Option<String>,
    },
    Get {
        digest: String,
        offset: u64,
        len: u32,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum BlobResponse {
    /// For [`BlobRequest::Put`].
    Stored,
    /// For [`BlobRequest::Put`] at an offset the server does not hold: its offset is the one
    /// that counts, and the sender goes on from there (an interrupted upload resumes).
    Resume { offset: u64 },
    /// For [`BlobRequest::Missing`]: the digests still to upload.
    Missing(Vec<String>),
    /// For [`BlobRequest::Get`]: blob content, as one byte string (not a sequence of numbers).
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
}
