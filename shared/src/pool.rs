//! The one connection pool: a QUIC connection per address, opened on first use, shared by every
//! call to that address, and dropped when a call finds it broken (closed, refused, or silent past
//! its deadline) so that the next call opens a fresh one. Coordinators use it for each other and
//! for agents' peer endpoints; agents for each other.

use crate::transport::{self, TransportError};
use crate::wire::Envelope;
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
    endpoint: quinn::Endpoint,
    /// Longest wait for a new connection, whatever the call's timeout.
    connect_timeout: Duration,
    conns: Arc<Mutex<HashMap<SocketAddr, quinn::Connection>>>,
    next_id: Arc<AtomicU64>,
}

impl Pool {
    pub fn new(endpoint: quinn::Endpoint, connect_timeout: Duration) -> Pool {
        Pool { endpoint, connect_timeout, conns: Arc::default(), next_id: Arc::new(AtomicU64::new(1)) }
    }

    /// The connection to `addr`, opened (within `timeout` and the pool's connect timeout) if
    /// there is none or it closed.
    pub async fn connection(&self, addr: SocketAddr, timeout: Duration) -> Result<quinn::Connection, TransportError> {
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

    /// A fresh request id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// After a call to `addr`: a connection that failed this way is not used again.
    pub async fn settle<T>(&self, addr: SocketAddr, result: &Result<T, TransportError>) {
        if matches!(result, Err(TransportError::Closed(_) | TransportError::Connect { .. } | TransportError::Timeout { .. })) {
            self.conns.lock().await.remove(&addr);
        }
    }

    /// One request to `addr`, answered within `timeout`.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: SocketAddr,
        request: Req,
        timeout: Duration,
    ) -> Result<Resp, TransportError> {
        let result = async {
            let conn = self.connection(addr, timeout).await?;
            let env = Envelope { request_id: self.next_id(), deadline_ms: timeout.as_millis().min(u32::MAX as u128) as u32, body: request };
            transport::call::<Req, Resp>(&conn, &env).await
        }
        .await;
        self.settle(addr, &result).await;
        result
    }

    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"shutdown");
    }
}
