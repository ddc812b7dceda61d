//! The worker's errors: [`WorkerError`] ends the agent; [`SliceError`] fails one slice, and
//! its message is what the farm reports to whoever started the build.

use crate::engine::EngineError;
use kiln_shared::api::AgentResponse;
use kiln_shared::client::BlobError;
use kiln_shared::digest::{Digest, DigestError};
use kiln_shared::registry::RegistryError;
use kiln_shared::store::StoreError;
use kiln_shared::transport::TransportError;
use std::path::PathBuf;

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("joining the farm at {hosts}: {source}")]
    Join { hosts: String, source: TransportError },
    #[error("registering agent {name}: {source}")]
    Register { name: String, source: TransportError },
    #[error("agent {0} was removed from the farm (`kiln context rm`); start it again to rejoin")]
    Removed(String),
    #[error("agent {name} was refused by the farm: {message}")]
    Refused { name: String, message: String },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Config(String),
}

/// Why a slice failed on this agent.
#[derive(Debug, thiserror::Error)]
pub enum SliceError {
    #[error("entitlement {entitlement} is not granted by agent {agent} (start it with --allow-insecure-entitlement {entitlement})")]
    Entitlement { entitlement: String, agent: String },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("the slice's task failed: {0}")]
    Task(tokio::task::JoinError),
    #[error("{0}")]
    Blocking(tokio::task::JoinError),
    /// A digest from the wire (a context entry, an uploaded cache, a blob to return).
    #[error("{digest}: {source}")]
    Digest { digest: String, source: DigestError },
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Connecting to the coordinator that received the build's uploads.
    #[error("{0}")]
    Origin(TransportError),
    #[error("no origin")]
    NoOrigin,
    #[error("creating {}: {source}", path.display())]
    ContextDir { path: PathBuf, source: std::io::Error },
    #[error("context entry {path:?} leaves the context")]
    Escapes { path: String },
    #[error("context entry {path}: {source}")]
    Entry { path: String, source: std::io::Error },
    /// Setting a context directory's mode, once its contents are written.
    #[error("{path}: {source}")]
    EntryMode { path: String, source: std::io::Error },
    #[error("context blob: {0}")]
    ContextBlob(BlobError),
    #[error("the context manifest {digest}: {source}")]
    ContextManifest { digest: String, source: kiln_shared::api::context::ManifestError },
    #[error("imported cache: {0}")]
    ImportedCache(BlobError),
    #[error("an image without blobs")]
    NoBlobs,
    #[error("{tag}: {source}")]
    Tag { tag: String, source: RegistryError },
    #[error("pushing {blob} to {tag}: {source}")]
    PushBlob { blob: Digest, tag: String, source: RegistryError },
    #[error("pushing the manifest to {tag}: {source}")]
    PushManifest { tag: String, source: RegistryError },
    #[error("returning the image: {0}")]
    Return(TransportError),
    #[error("unexpected answer {0:?}")]
    Unexpected(Box<AgentResponse>),
    #[error("{0}")]
    SendBlob(BlobError),
}

impl SliceError {
    /// A blob of this agent's store failed its digest on the way out (and was removed).
    pub fn corrupt_blob(&self) -> bool {
        // Missing: gone since the step cache named it (another slice sharing the layer found
        // it corrupt and removed it).
        let mismatch = |e: &StoreError| matches!(e, StoreError::Mismatch { .. } | StoreError::Missing(_));
        match self {
            SliceError::Store(e) => mismatch(e),
            SliceError::PushBlob { source: RegistryError::Store(e), .. } => mismatch(e),
            _ => false,
        }
    }

    /// Maps a digest that does not parse to [`SliceError::Digest`], naming it.
    pub(super) fn digest(digest: &str) -> impl FnOnce(DigestError) -> SliceError + '_ {
        move |source| SliceError::Digest { digest: digest.to_string(), source }
    }
}
