//! Outgoing connections of a coordinator: to the other coordinators (Raft RPCs, forwarded
//! requests) and to agents' peer endpoints (`kiln du|prune`). One QUIC connection per address,
//! opened on first use and replaced when it breaks.

use kiln_shared::api::{CallRef, CoordinatorRequest, CoordinatorResponse, PeerRequest, PeerResponse, Reply, Tagged};
use kiln_shared::transport::{self, TransportError};
use kiln_shared::wire::{Envelope, WireError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

#[derive(Clone)]
pub struct Pool {
    /// Longest wait for a connection, whatever the call's timeout.
    connect_timeout: Duration,
    endpoint: quinn::Endpoint,
    conns: Arc<Mutex<HashMap<SocketAddr, quinn::Connection>>>,
    next_id: Arc<AtomicU64>,
}

impl Pool {
    pub fn new(endpoint: quinn::Endpoint, connect_timeout: Duration) -> Pool {
        Pool { connect_timeout, endpoint, conns: Arc::default(), next_id: Arc::new(AtomicU64::new(1)) }
    }

    async fn connection(&self, addr: SocketAddr, timeout: Duration) -> Result<quinn::Connection, TransportError> {
        let mut conns = self.conns.lock().await;
        if let Some(c) = conns.get(&addr) {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let c = transport::connect(&self.endpoint, addr, timeout.min(self.connect_timeout)).await?;
        conns.insert(addr, c.clone());
        Ok(c)
    }

    /// One request to the coordinator at `addr`, within `timeout`.
    pub async fn coordinator(
        &self,
        addr: SocketAddr,
        request: &CoordinatorRequest,
        timeout: Duration,
    ) -> Result<CoordinatorResponse, TransportError> {
        match self.call::<CallRef, Reply>(addr, Tagged::Coordinator(request), timeout).await? {
            Tagged::Coordinator(r) => Ok(r),
            other => {
                Err(TransportError::Wire(WireError::Decode(format!("coordinator at {addr} answered in the {} protocol", other.protocol()))))
            }
        }
    }

    /// One request to the agent peer endpoint at `addr`, within `timeout`.
    pub async fn peer(&self, addr: SocketAddr, request: PeerRequest, timeout: Duration) -> Result<PeerResponse, TransportError> {
        self.call(addr, request, timeout).await
    }

    /// A broken connection is dropped so that the next call reconnects.
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: SocketAddr,
        request: Req,
        timeout: Duration,
    ) -> Result<Resp, TransportError> {
        let conn = self.connection(addr, timeout).await?;
        let env = Envelope {
            request_id: self.next_id.fetch_add(1, Ordering::Relaxed),
            deadline_ms: timeout.as_millis().min(u32::MAX as u128) as u32,
            body: request,
        };
        let result = transport::call::<Req, Resp>(&conn, &env).await;
        if let Err(TransportError::Closed(_) | TransportError::Connect { .. }) = &result {
            self.conns.lock().await.remove(&addr);
        }
        result
    }

    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"shutdown");
    }
}
