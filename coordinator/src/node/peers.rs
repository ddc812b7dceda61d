//! Outgoing connections of a coordinator: to the other coordinators (Raft RPCs, forwarded
//! requests) and to agents' peer endpoints (`kiln du|prune`), through the shared pool.

use kiln_shared::api::{CallRef, CoordinatorRequest, CoordinatorResponse, PeerRequest, PeerResponse, Reply, Tagged};
use kiln_shared::transport::TransportError;
use kiln_shared::wire::WireError;
use std::net::SocketAddr;
use std::time::Duration;

/// The shared pool ([`kiln_shared::pool::Pool`]) with the two protocols a coordinator speaks
/// to others.
#[derive(Clone)]
pub struct Pool {
    inner: kiln_shared::pool::Pool,
}

impl Pool {
    pub fn new(endpoint: quinn::Endpoint, connect_timeout: Duration) -> Pool {
        Pool { inner: kiln_shared::pool::Pool::new(endpoint, connect_timeout) }
    }

    /// One request to the coordinator at `addr`, within `timeout`.
    pub async fn coordinator(
        &self,
        addr: SocketAddr,
        request: &CoordinatorRequest,
        timeout: Duration,
    ) -> Result<CoordinatorResponse, TransportError> {
        match self.inner.call::<CallRef, Reply>(addr, Tagged::Coordinator(request), timeout).await? {
            Tagged::Coordinator(r) => Ok(r),
            other => {
                Err(TransportError::Wire(WireError::Decode(format!("coordinator at {addr} answered in the {} protocol", other.protocol()))))
            }
        }
    }

    /// One request to the agent peer endpoint at `addr`, within `timeout`.
    pub async fn peer(&self, addr: SocketAddr, request: PeerRequest, timeout: Duration) -> Result<PeerResponse, TransportError> {
        self.inner.call(addr, request, timeout).await
    }

    pub fn close(&self) {
        self.inner.close();
    }
}
