//! A UDP socket for QUIC endpoints that hold thousands of connections: one datagram per send.
//!
//! quinn batches a connection's datagrams into one segmentation-offload send (GSO) where the
//! host supports it, and each connection keeps the buffer it batched into for its lifetime (up
//! to ten datagrams). A coordinator holds a connection per agent, almost all of which only ever
//! send one small answer at a time: with 5,000 agents the leader was 311 MiB resident with
//! batching and 298 MiB without (the cluster bench, nothing else changed). This socket tells
//! quinn to send one datagram per call, which keeps each buffer at one datagram; the price is a system call per datagram on
//! the few connections that send in bulk (context blobs to agents, to another coordinator).
//! Measured by `cargo bench -p kiln-agent --bench transfer` on a 2-core machine: one stream
//! over loopback at 277 MiB/s against 754 MiB/s batched; at most four datagrams a send, 576
//! against 865 MiB/s, but 267-281 MiB for 5,000 agents against 260 MiB. Everything else is
//! the runtime's own socket.

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, UdpPoller};
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// The runtime's socket, sending one datagram per call.
#[derive(Debug)]
pub struct Unbatched(Arc<dyn AsyncUdpSocket>);

impl Unbatched {
    /// Wraps `socket` as `runtime` would, with batching turned off.
    pub fn wrap(runtime: &dyn Runtime, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        Ok(Arc::new(Unbatched(runtime.wrap_udp_socket(socket)?)))
    }
}

impl AsyncUdpSocket for Unbatched {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.0.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.0.try_send(transmit)
    }

    fn poll_recv(&self, cx: &mut Context, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> Poll<io::Result<usize>> {
        self.0.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        1
    }

    fn max_receive_segments(&self) -> usize {
        self.0.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.0.may_fragment()
    }
}
