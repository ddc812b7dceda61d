//! A link delay in userspace, for kernels without `sch_netem`: an iptables rule sends a
//! namespace's outgoing packets to an NFQUEUE, and a [`Delayer`] thread of the test process,
//! bound to that queue inside the namespace, accepts each one `delay` after it arrived.
//!
//! The thread enters the namespace with `setns(2)` (which moves only the calling thread) and
//! speaks nfnetlink_queue itself, written out here with safe `nix` calls: the queue is bound in
//! copy mode META (we never look into or change a packet), with a large maximum length and
//! `NFQA_CFG_F_FAIL_OPEN`, so an overflowing queue passes packets undelayed rather than
//! dropping them, and `NFQA_CFG_F_GSO`, so a TCP burst is held as the few large packets the
//! stack made rather than cut into many. Held packets are released in arrival order by
//! batch verdicts (`NF_ACCEPT` for every queued packet up to an id), from a timer queue.
//!
//! Stopping is bounded: the thread looks at its stop flag at least every [`TICK`], then accepts
//! everything it still holds and closes its socket (the kernel drops what is still queued to a
//! socket that closes, so nothing may be left). The rule that feeds the queue should be gone
//! first (see [`crate::netns::Net::restore`]); it carries `--queue-bypass`, so once no
//! socket is bound the packets pass instead of being dropped.

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType};
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest a delayer sleeps before it looks at its stop flag again.
pub const TICK: Duration = Duration::from_millis(20);

/// How long [`Delayer::start`] waits for the thread to have bound its queue.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// Packets the kernel holds for one queue before it passes the rest (fail-open) undelayed.
const QUEUE_MAXLEN: u32 = 65_536;

/// The socket's receive buffer (one small notification per held packet).
const RCVBUF: usize = 4 << 20;

/// Notifications read in one pass before the timer queue is served again.
const READS_PER_PASS: usize = 256;

// nfnetlink and nfnetlink_queue, from the kernel's uapi headers.
const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQNL_MSG_VERDICT_BATCH: u16 = 3;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQA_CFG_MASK: u16 = 4;
const NFQA_CFG_FLAGS: u16 = 5;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_META: u8 = 1;
const NFQA_CFG_F_FAIL_OPEN: u32 = 1;
const NFQA_CFG_F_GSO: u32 = 4;
const NF_ACCEPT: u32 = 1;
const NLMSG_ERROR: u16 = 2;
/// The nfgenmsg family of our requests: a queue is the same for every family.
const AF_UNSPEC: u8 = 0;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
/// An attribute's type without its nested and byte-order flags.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// What a delayer did, once stopped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// Packets held for the whole delay.
    pub delayed: u64,
    /// Packets still held when it stopped, accepted then (early).
    pub flushed: u64,
    /// The most a packet was released after its time (how far the thread fell behind).
    pub late: Duration,
}

/// One namespace's delayer thread.
pub struct Delayer {
    ns: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<Held>>>,
}

impl Delayer {
    /// Starts the thread for namespace `ns` (a name under /run/netns) and returns once it has
    /// bound `queue` there: from then on a rule may send packets to that queue.
    pub fn start(ns: &str, queue: u16, delay: Duration) -> io::Result<Delayer> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready, bound) = mpsc::sync_channel(1);
        let (name, flag) = (ns.to_string(), stop.clone());
        let thread = std::thread::Builder::new().name(format!("delay {ns}")).spawn(move || {
            let socket = crate::netns::enter(&name).and_then(|()| Queue::bind(queue));
            let mut socket = match socket {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready.send(Err(io::Error::new(e.kind(), format!("{e}"))));
                    return Err(e);
                }
            };
            let _ = ready.send(Ok(()));
            socket.run(delay, &flag)
        })?;
        let d = Delayer { ns: ns.to_string(), stop, thread: Some(thread) };
        match bound.recv_timeout(START_DEADLINE) {
            Ok(Ok(())) => Ok(d),
            Ok(Err(e)) => Err(io::Error::new(e.kind(), format!("delayer in {ns}: {e}"))),
            Err(_) => {
                d.stop.store(true, Ordering::Relaxed);
                Err(io::Error::other(format!("delayer in {ns}: no queue bound (the thread ended, or took over {START_DEADLINE:?})")))
            }
        }
    }

    /// Stops the thread: whatever it still holds is accepted, its socket closed. Returns within
    /// about a [`TICK`].
    pub fn stop(mut self) -> io::Result<Held> {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }

    fn join(&mut self) -> io::Result<Held> {
        let Some(thread) = self.thread.take() else { return Ok(Held::default()) };
        thread.join().unwrap_or_else(|_| Err(io::Error::other(format!("the delayer of {} panicked", self.ns))))
    }
}

/// Stops every delayer at once (all flags first, then the joins): bounded by one [`TICK`] and
/// the flushes, not one per delayer. Returns what they did, summed, or the first error.
pub fn stop_all(delayers: Vec<Delayer>) -> io::Result<Held> {
    for d in &delayers {
        d.stop.store(true, Ordering::Relaxed);
    }
    let mut total = Held::default();
    let mut first_error = None;
    for d in delayers {
        match d.stop() {
            Ok(h) => {
                total.delayed += h.delayed;
                total.flushed += h.flushed;
                total.late = total.late.max(h.late);
            }
            Err(e) => first_error = first_error.or(Some(e)),
        }
    }
    first_error.map_or(Ok(total), Err)
}

impl Drop for Delayer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.join();
    }
}

/// A netlink socket bound to one NFQUEUE of the namespace it was opened in.
struct Queue {
    fd: OwnedFd,
    queue: u16,
    seq: u32,
    buf: Vec<u8>,
    /// Packets already read (while waiting for an acknowledgement), for the timer queue.
    early: Vec<u32>,
}

/// What one message from the kernel said.
enum Event {
    /// A packet to hold, by id.
    Packet(u32),
    /// The answer to request `seq`: 0 or a negative errno.
    Ack { seq: u32, error: i32 },
}

impl Queue {
    /// Opens the socket and binds `queue`: copy mode META, [`QUEUE_MAXLEN`], fail-open, GSO.
    fn bind(queue: u16) -> io::Result<Queue> {
        let fd = socket::socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkNetFilter)?;
        socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
        if socket::setsockopt(&fd, sockopt::RcvBufForce, &RCVBUF).is_err() {
            socket::setsockopt(&fd, sockopt::RcvBuf, &RCVBUF)?;
        }
        let mut q = Queue { fd, queue, seq: 0, buf: vec![0; 1 << 16], early: vec![] };
        let bind = [NFQNL_CFG_CMD_BIND, 0, 0, 0]; // command, padding, protocol family (unused)
        q.request(NFQNL_MSG_CONFIG, &[(NFQA_CFG_CMD, &bind)])?;
        let params = [0, 0, 0, 0, NFQNL_COPY_META]; // copy range (be32), copy mode
        let flags = (NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO).to_be_bytes();
        q.request(
            NFQNL_MSG_CONFIG,
            &[
                (NFQA_CFG_PARAMS, &params),
                (NFQA_CFG_QUEUE_MAXLEN, &QUEUE_MAXLEN.to_be_bytes()),
                (NFQA_CFG_MASK, &flags),
                (NFQA_CFG_FLAGS, &flags),
            ],
        )?;
        Ok(q)
    }

    /// Holds every packet for `delay`, until `stop`; then accepts what is left.
    fn run(&mut self, delay: Duration, stop: &AtomicBool) -> io::Result<Held> {
        let mut held: VecDeque<(Instant, u32)> = self.early.drain(..).map(|id| (Instant::now() + delay, id)).collect();
        let mut events = Vec::new();
        let mut done = Held::default();
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let wait = held.front().map_or(TICK, |(due, _)| due.saturating_duration_since(now).min(TICK));
            // Rounded up to a millisecond, so a packet is never released before its time.
            let ms = wait.as_micros().div_ceil(1000) as u16;
            let readable = {
                let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::from(ms)) {
                    Ok(n) => n > 0,
                    Err(Errno::EINTR) => false,
                    Err(e) => return Err(e.into()),
                }
            };
            if readable {
                self.read(&mut events)?;
                let arrived = Instant::now();
                for e in events.drain(..) {
                    if let Event::Packet(id) = e {
                        held.push_back((arrived + delay, id));
                    }
                }
            }
            let now = Instant::now();
            let mut last = None;
            while let Some(&(due, id)) = held.front().filter(|(due, _)| *due <= now) {
                held.pop_front();
                last = Some(id);
                done.delayed += 1;
                done.late = done.late.max(now - due);
            }
            if let Some(id) = last {
                self.accept_through(id)?;
            }
        }
        // Stopping: what is still held, and what arrived since the last read, goes now.
        self.read(&mut events)?;
        let mut last = held.back().map(|(_, id)| *id);
        done.flushed = held.len() as u64;
        for e in events.drain(..) {
            if let Event::Packet(id) = e {
                last = Some(id);
                done.flushed += 1;
            }
        }
        if let Some(id) = last {
            self.accept_through(id)?;
        }
        Ok(done)
    }

    /// Reads what the kernel sent, without waiting, at most [`READS_PER_PASS`] datagrams.
    fn read(&mut self, events: &mut Vec<Event>) -> io::Result<()> {
        for _ in 0..READS_PER_PASS {
            let n = match socket::recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(Errno::EAGAIN) => return Ok(()),
                // Notifications the buffer could not take: those packets were passed (fail-open).
                Err(Errno::ENOBUFS) | Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            parse(&self.buf[..n], events);
        }
        Ok(())
    }

    /// `NF_ACCEPT` for every queued packet up to and including `id` (they are queued, and
    /// released, in arrival order).
    fn accept_through(&mut self, id: u32) -> io::Result<()> {
        let mut verdict = NF_ACCEPT.to_be_bytes().to_vec();
        verdict.extend(id.to_be_bytes());
        self.send(NFQNL_MSG_VERDICT_BATCH, 0, &[(NFQA_VERDICT_HDR, &verdict)]).map(drop)
    }

    /// Sends a request that asks for an acknowledgement and waits for it (bounded).
    fn request(&mut self, kind: u16, attrs: &[(u16, &[u8])]) -> io::Result<()> {
        let seq = self.send(kind, NLM_F_ACK, attrs)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut events = Vec::new();
        while Instant::now() < deadline {
            let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            if poll(&mut fds, PollTimeout::from(100u16)).unwrap_or(0) == 0 {
                continue;
            }
            self.read(&mut events)?;
            for e in events.drain(..) {
                match e {
                    Event::Packet(id) => self.early.push(id),
                    Event::Ack { seq: s, error } if s == seq => {
                        return if error == 0 { Ok(()) } else { Err(Errno::from_raw(-error).into()) };
                    }
                    Event::Ack { .. } => {}
                }
            }
        }
        Err(io::Error::new(io::ErrorKind::TimedOut, "no answer from nfnetlink_queue"))
    }

    /// One nfnetlink_queue message for this queue; returns its sequence number.
    fn send(&mut self, kind: u16, flags: u16, attrs: &[(u16, &[u8])]) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut msg = Vec::with_capacity(64);
        msg.extend(0u32.to_ne_bytes()); // length, below
        msg.extend(((NFNL_SUBSYS_QUEUE << 8) | kind).to_ne_bytes());
        msg.extend((NLM_F_REQUEST | flags).to_ne_bytes());
        msg.extend(self.seq.to_ne_bytes());
        msg.extend(0u32.to_ne_bytes()); // port id: the kernel's
        msg.extend([AF_UNSPEC, 0]); // nfgenmsg: family, version NFNETLINK_V0
        msg.extend(self.queue.to_be_bytes()); // resource id: the queue
        for (kind, payload) in attrs {
            msg.extend((4 + payload.len() as u16).to_ne_bytes());
            msg.extend(kind.to_ne_bytes());
            msg.extend(*payload);
            msg.resize(msg.len().next_multiple_of(4), 0);
        }
        let len = msg.len() as u32;
        msg[..4].copy_from_slice(&len.to_ne_bytes());
        socket::send(self.fd.as_raw_fd(), &msg, MsgFlags::empty())?;
        Ok(self.seq)
    }
}

/// The messages of one datagram: packets by id, and acknowledgements.
fn parse(mut data: &[u8], events: &mut Vec<Event>) {
    while data.len() >= 16 {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if len < 16 || len > data.len() {
            return;
        }
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        let seq = u32::from_ne_bytes([data[8], data[9], data[10], data[11]]);
        let body = &data[16..len];
        if kind == NLMSG_ERROR && body.len() >= 4 {
            events.push(Event::Ack { seq, error: i32::from_ne_bytes([body[0], body[1], body[2], body[3]]) });
        } else if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET && body.len() >= 4 {
            if let Some(id) = packet_id(&body[4..]) {
                events.push(Event::Packet(id));
            }
        }
        data = &data[len.next_multiple_of(4).min(data.len())..];
    }
}

/// The id in a packet message's `NFQA_PACKET_HDR` attribute.
fn packet_id(mut attrs: &[u8]) -> Option<u32> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == NFQA_PACKET_HDR && len >= 8 {
            return Some(u32::from_be_bytes([attrs[4], attrs[5], attrs[6], attrs[7]]));
        }
        attrs = &attrs[len.next_multiple_of(4).min(attrs.len())..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_message_yields_its_id_and_an_error_message_its_sequence() {
        // nlmsghdr, nfgenmsg, then NFQA_PACKET_HDR {id 0x01020304, hw protocol, hook} padded.
        let mut packet = vec![];
        packet.extend(32u32.to_ne_bytes());
        packet.extend(((NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET).to_ne_bytes());
        packet.extend([0u8; 10]);
        packet.extend([0, 0, 0, 7]);
        packet.extend(11u16.to_ne_bytes());
        packet.extend(NFQA_PACKET_HDR.to_ne_bytes());
        packet.extend([1, 2, 3, 4, 8, 0, 3, 0]);
        let mut ack = vec![];
        ack.extend(20u32.to_ne_bytes());
        ack.extend(NLMSG_ERROR.to_ne_bytes());
        ack.extend([0u8; 2]);
        ack.extend(9u32.to_ne_bytes());
        ack.extend([0u8; 4]);
        ack.extend((-16i32).to_ne_bytes());
        let mut events = vec![];
        parse(&[packet, ack].concat(), &mut events);
        assert!(matches!(events[..], [Event::Packet(0x0102_0304), Event::Ack { seq: 9, error: -16 }]));
    }
}
