//! The delay of [`Net::degrade`]: a UDP echo between two namespaces, its round trip measured
//! before, while and after the links are delayed by 200 ms. Where the kernel has no netem the
//! delay is the test process's NFQUEUE delayer ([`Degraded::NfQueue`]), which this checks
//! end to end: the rule, the queue bound in each namespace, the timed verdicts, the cleanup
//! (a datagram held when the links are restored is let go, not dropped).

use kiln_tests::netns::{self, Degraded, Net};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const PORT: u16 = 7700;

/// Round trips measured at each stage; the median is the one compared.
const SAMPLES: usize = 5;

/// An echo server on `ip:PORT` in namespace `ns`, until `stop` (it looks every 100 ms).
fn echo(ns: String, ip: String, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let (ready, bound) = std::sync::mpsc::sync_channel(1);
    let server = std::thread::spawn(move || {
        netns::enter(&ns).expect("enter the server's namespace");
        let socket = UdpSocket::bind((ip.as_str(), PORT)).expect("bind the echo server");
        socket.set_read_timeout(Some(Duration::from_millis(100))).expect("read timeout");
        ready.send(()).expect("say the server is bound");
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            if let Ok((n, from)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(&buf[..n], from);
            }
        }
    });
    bound.recv_timeout(Duration::from_secs(10)).expect("the echo server bound");
    server
}

/// One datagram's round trip, sent from a thread now and waited for at most 3 s.
fn one_echo(ns: &str, to: &str) -> JoinHandle<Option<Duration>> {
    let (ns, to) = (ns.to_string(), to.to_string());
    std::thread::spawn(move || {
        netns::enter(&ns).expect("enter the client's namespace");
        let socket = UdpSocket::bind("0.0.0.0:0").expect("bind the client");
        socket.set_read_timeout(Some(Duration::from_secs(3))).expect("read timeout");
        let start = Instant::now();
        socket.send_to(b"held", (to.as_str(), PORT)).expect("send");
        let mut buf = [0u8; 64];
        socket.recv(&mut buf).ok().map(|_| start.elapsed())
    })
}

/// The median round trip of [`SAMPLES`] datagrams from namespace `ns` to `to:PORT`, each
/// waited for at most 3 s (`None` when one got no answer).
fn rtt(ns: &str, to: &str) -> Option<Duration> {
    let (ns, to) = (ns.to_string(), to.to_string());
    std::thread::spawn(move || {
        netns::enter(&ns).expect("enter the client's namespace");
        let socket = UdpSocket::bind("0.0.0.0:0").expect("bind the client");
        socket.set_read_timeout(Some(Duration::from_secs(3))).expect("read timeout");
        let mut times = Vec::new();
        for i in 0..SAMPLES as u32 {
            let start = Instant::now();
            socket.send_to(&i.to_be_bytes(), (to.as_str(), PORT)).expect("send");
            let mut buf = [0u8; 64];
            // An answer to an earlier datagram (late) is read past, within the same wait.
            loop {
                let n = socket.recv(&mut buf).ok()?;
                if buf[..n] == i.to_be_bytes() {
                    break;
                }
            }
            times.push(start.elapsed());
        }
        times.sort();
        Some(times[SAMPLES / 2])
    })
    .join()
    .expect("the client thread")
}

#[test]
fn degrade_delays_every_link_and_restore_takes_the_delay_away() {
    let mut net = Net::new();
    let a = net.add("a");
    let b = net.add("b");
    let stop = Arc::new(AtomicBool::new(false));
    let server = echo(b.ns.clone(), b.ip.clone(), stop.clone());

    let before = rtt(&a.ns, &b.ip).expect("an echo before the links are delayed");
    let applied = net.degrade(200, 0);
    let during = rtt(&a.ns, &b.ip);
    // Restored while a datagram is held on its way out of a.
    let held = one_echo(&a.ns, &b.ip);
    std::thread::sleep(Duration::from_millis(50));
    net.restore();
    let held = held.join().expect("the client thread");
    let after = rtt(&a.ns, &b.ip);
    stop.store(true, Ordering::Relaxed);
    server.join().expect("the echo server");
    eprintln!("round trip: {before:?} before, {during:?} delayed ({applied:?}), {held:?} across the restore, {after:?} restored");

    assert_ne!(applied, Degraded::LossOnly, "degrade(200, 0) applied no delay");
    let during = during.expect("an echo while the links are delayed (no packet is lost)");
    assert!(before < Duration::from_millis(50), "round trip before the delay: {before:?}");
    // 200 ms on a's egress and 200 ms on b's: 400 ms, less a little for timer granularity.
    assert!(during >= before + Duration::from_millis(350), "round trip with 200 ms each way: {during:?} (before: {before:?})");
    assert!(during < Duration::from_millis(1000), "round trip with 200 ms each way: {during:?}, far more than 400 ms");
    assert!(held.is_some(), "a datagram held when the links were restored was dropped, not let go");
    let after = after.expect("an echo once the links are restored");
    assert!(after < Duration::from_millis(50), "round trip once restored: {after:?}");
}
