//! The farm's other agents, and caches the CLI uploaded, as the engine's remote step cache:
//! the tracker says who holds a record or blob, the peer fetcher gets it.

use crate::cache::Imported;
use crate::engine::RemoteCache;
use crate::peer::Peer;
use kiln_shared::api::{AgentRequest, AgentResponse};
use kiln_shared::client::AgentFarm;
use kiln_shared::digest::Digest;
use kiln_shared::store::ContentStore;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The farm's other agents as a step cache: the tracker says who holds a record or blob, the
/// peer fetcher gets it. Called from the engine's blocking threads.
pub(super) struct FarmPeers {
    pub farm: Arc<AgentFarm>,
    pub peer: Arc<Peer>,
    pub handle: tokio::runtime::Handle,
    /// This agent's own peer endpoint (never a source for itself).
    pub me: String,
    pub name: String,
    /// Asking the tracker: per attempt and in all (`locate_deadline_ms`, `locate_patience_ms`).
    pub locate_deadline: Duration,
    pub locate_patience: Duration,
}

impl FarmPeers {
    /// Holders of each blob, then of each record.
    pub(super) async fn locate(&self, blobs: Vec<String>, records: Vec<String>) -> Vec<Vec<SocketAddr>> {
        let n = blobs.len() + records.len();
        match self.farm.call(&AgentRequest::Locate { blobs, records }, self.locate_deadline, self.locate_patience).await {
            Ok(AgentResponse::Holders(h)) if h.len() == n => {
                h.into_iter().map(|list| list.into_iter().filter(|e| *e != self.me).filter_map(|e| e.parse().ok()).collect()).collect()
            }
            Ok(_) => vec![vec![]; n],
            Err(e) => {
                tracing::warn!(agent = %self.name, "asking the tracker: {e}");
                vec![vec![]; n]
            }
        }
    }

    async fn fetch(&self, d: &Digest) -> bool {
        let Some(holders) = self.locate(vec![d.to_string()], vec![]).await.pop() else { return false };
        if holders.is_empty() {
            return false;
        }
        match self.peer.fetch(d, &holders).await {
            Ok(report) => {
                for (addr, why) in &report.dropped {
                    tracing::warn!(agent = %self.name, blob = %d, peer = %addr, "peer not used: {why}");
                }
                true
            }
            Err(e) => {
                tracing::warn!(agent = %self.name, "{e}");
                false
            }
        }
    }
}

impl RemoteCache for FarmPeers {
    fn record(&self, name: &str, _key: &str) -> Option<Vec<u8>> {
        self.handle.block_on(async {
            let holders = self.locate(vec![], vec![name.to_string()]).await.pop()?;
            if holders.is_empty() {
                return None;
            }
            self.peer.record(name, &holders).await.ok()
        })
    }

    fn blob(&self, d: &Digest, store: &ContentStore) -> bool {
        store.has(d) || self.handle.block_on(self.fetch(d))
    }

    fn is_peer(&self) -> bool {
        true
    }

    fn source(&self) -> &'static str {
        "peer"
    }
}

/// A cache the CLI uploaded (`--cache-from type=local`): records from its config, blobs from
/// the coordinator that received them.
pub(super) struct UploadedCache {
    pub imported: Imported,
    pub origin: AgentFarm,
    pub handle: tokio::runtime::Handle,
}

impl RemoteCache for UploadedCache {
    fn record(&self, name: &str, key: &str) -> Option<Vec<u8>> {
        self.imported.record(name, key)
    }

    fn blob(&self, d: &Digest, store: &ContentStore) -> bool {
        store.has(d) || self.handle.block_on(self.origin.fetch_blob(store, d)).is_ok() && counted_from_origin(store, d)
    }

    fn source(&self) -> &'static str {
        "cache_dir"
    }
}

/// Counts a blob just fetched from an origin in `kiln_fetched_bytes_total{from="origin"}`.
pub(super) fn counted_from_origin(store: &ContentStore, d: &Digest) -> bool {
    crate::metrics::get().fetched_bytes.add(&["origin"], store.size(d).unwrap_or(0));
    true
}
