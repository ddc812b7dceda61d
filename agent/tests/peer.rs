//! Chunked multi-source transfer between real peer endpoints (QUIC, mutual TLS) on loopback:
//! several sources at once, a source with a corrupted copy, a source that dies mid-transfer,
//! a source that is itself still fetching, and the bandwidth cap.

use kiln_agent::peer::{FetchError, Peer};
use kiln_shared::api::Grant;
use kiln_shared::chunks::CHUNK_SIZE;
use kiln_shared::digest::Digest;
use kiln_shared::transport::ClusterCa;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Node {
    peer: Arc<Peer>,
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-peer-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A grant of tenant `t` for agent `name`, as the leader signs one with a slice.
fn grant(ca: &ClusterCa, name: &str) -> Grant {
    let expires_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64 + 600_000;
    let mut g = Grant { agent: name.into(), tenant: "t".into(), scope: "tenant:t".into(), expires_ms, ..Default::default() };
    g.signature = ca.sign(&g.signed_bytes()).unwrap();
    g
}

/// A peer running a slice of tenant `t`.
fn node(ca: &ClusterCa, dir: &std::path::Path, name: &str, limit: u64) -> Node {
    let id = ca.issue(&format!("agent:{name}"), &["127.0.0.1".parse().unwrap()]).unwrap();
    let peer = Arc::new(Peer::new(&dir.join(name), &ca.cert_der(), &id, limit).unwrap());
    peer.access.hold((1, 0, 1), grant(ca, name));
    let endpoint = peer.listen("127.0.0.1:0".parse().unwrap(), &ca.cert_der(), &id).unwrap();
    let addr = endpoint.local_addr().unwrap();
    Node { peer, endpoint, addr }
}

/// Pseudo-random bytes (incompressible enough, reproducible).
fn blob(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_comes_from_several_peers_and_survives_bad_and_dead_ones() {
    let dir = scratch("multi");
    let ca = ClusterCa::generate("test").unwrap();
    let data = blob(10 * CHUNK_SIZE as usize + 12345, 7);
    let d = Digest::of(&data);
    let sources: Vec<Node> = (0..3).map(|i| node(&ca, &dir, &format!("s{i}"), 0)).collect();
    for s in &sources {
        s.peer.store.put(&data).unwrap();
        s.peer.access.note_tenant_blobs("t", [d.as_str()]);
    }
    let sink = node(&ca, &dir, "sink", 0);
    let addrs: Vec<SocketAddr> = sources.iter().map(|s| s.addr).collect();

    // Every source serves a share.
    let report = sink.peer.fetch(&d, &addrs).await.unwrap();
    assert_eq!(report.bytes, data.len() as u64);
    assert_eq!(sink.peer.store.read(&d).unwrap(), data);
    assert!(report.from.len() >= 2, "chunks came from {:?}", report.from);

    // A source whose copy went bad after its chunk table was made: its chunks fail their
    // sha256, it is dropped, and the chunks come from the others.
    let bad = &sources[1];
    bad.peer.store.table(&d).unwrap();
    let path = bad.peer.store.path(&d);
    let mut corrupt = std::fs::read(&path).unwrap();
    for c in 0..11 {
        corrupt[c * CHUNK_SIZE as usize + 100] ^= 0xff;
    }
    std::fs::write(&path, &corrupt).unwrap();
    let sink2 = node(&ca, &dir, "sink2", 0);
    let report = sink2.peer.fetch(&d, &addrs).await.unwrap();
    assert_eq!(sink2.peer.store.read(&d).unwrap(), data);
    assert!(report.dropped.iter().any(|(a, why)| *a == bad.addr && why.contains("corrupt")), "{:?}", report.dropped);
    assert!(!report.from.iter().any(|(a, _)| *a == bad.addr), "nothing was kept from the corrupt peer: {:?}", report.from);

    // Only corrupt sources: nothing bad enters the store.
    let sink3 = node(&ca, &dir, "sink3", 0);
    let err = sink3.peer.fetch(&d, &[bad.addr]).await.unwrap_err();
    assert!(matches!(err, FetchError::Incomplete { .. }), "{err}");
    assert!(!sink3.peer.store.has(&d));

    // No peer at all: a typed error naming why.
    let err = sink3.peer.fetch(&Digest::of(b"nobody has this"), &addrs).await.unwrap_err();
    assert!(matches!(err, FetchError::NoSource { .. }), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_killed_mid_transfer_costs_only_its_unfinished_chunks() {
    let dir = scratch("killed");
    let ca = ClusterCa::generate("test").unwrap();
    let data = blob(24 * CHUNK_SIZE as usize, 11);
    let d = Digest::of(&data);
    // Capped sources, so the transfer lasts long enough to kill one in the middle.
    let rate = 40 << 20;
    let sources: Vec<Node> = (0..3).map(|i| node(&ca, &dir, &format!("k{i}"), rate)).collect();
    for s in &sources {
        s.peer.store.put(&data).unwrap();
        s.peer.access.note_tenant_blobs("t", [d.as_str()]);
    }
    let sink = node(&ca, &dir, "sink", 0);
    let addrs: Vec<SocketAddr> = sources.iter().map(|s| s.addr).collect();
    let victim = sources[0].endpoint.clone();
    let victim_peer = sources[0].peer.clone();
    let killer = tokio::spawn(async move {
        // Once the victim has served a few chunks, it dies: its endpoint closes at once.
        let t = Instant::now();
        while victim_peer.served.load(std::sync::atomic::Ordering::Relaxed) < 4 * CHUNK_SIZE as u64 && t.elapsed() < Duration::from_secs(20)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Let what it sent arrive; then it dies, in the middle of the chunks it was sending.
        tokio::time::sleep(Duration::from_millis(300)).await;
        victim.close(0u32.into(), b"killed");
    });
    let started = Instant::now();
    let report = sink.peer.fetch(&d, &addrs).await.unwrap();
    killer.await.unwrap();
    assert_eq!(sink.peer.store.read(&d).unwrap(), data);
    let from_victim = report.from.iter().find(|(a, _)| *a == sources[0].addr).map(|(_, n)| *n).unwrap_or(0);
    assert!(from_victim >= 2 * CHUNK_SIZE as u64, "the victim served before it died: {:?}", report.from);
    assert!(report.dropped.iter().any(|(a, _)| *a == sources[0].addr), "{:?}", report.dropped);
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetchers_serve_each_other_and_the_cap_holds() {
    let dir = scratch("swarm");
    let ca = ClusterCa::generate("test").unwrap();
    let data = blob(16 * CHUNK_SIZE as usize, 3);
    let d = Digest::of(&data);
    // The only full copy is capped at 32 MiB/s: 64 MiB take two seconds from it alone.
    let rate = 32 << 20;
    let seed = node(&ca, &dir, "seed", rate);
    seed.peer.store.put(&data).unwrap();
    seed.peer.access.note_tenant_blobs("t", [d.as_str()]);
    let a = node(&ca, &dir, "a", 0);
    let b = node(&ca, &dir, "b", 0);
    let started = Instant::now();
    let (sa, sb) = ([seed.addr, b.addr], [seed.addr, a.addr]);
    let (ra, rb) = tokio::join!(a.peer.fetch(&d, &sa), b.peer.fetch(&d, &sb));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let took = started.elapsed();
    assert_eq!(a.peer.store.read(&d).unwrap(), data);
    assert_eq!(b.peer.store.read(&d).unwrap(), data);
    let served = seed.peer.served.load(std::sync::atomic::Ordering::Relaxed);
    // The seed never sent faster than its cap (one chunk of burst).
    let cap = rate as f64 * took.as_secs_f64() + CHUNK_SIZE as f64;
    assert!((served as f64) <= cap, "the seed sent {served} bytes in {took:?}, over its cap");
    // The two fetchers swapped chunks instead of both taking everything from the seed.
    let from_peers = ra.from.iter().chain(&rb.from).filter(|(s, _)| *s != seed.addr).map(|(_, n)| n).sum::<u64>();
    assert!(from_peers > 0 && served < 2 * data.len() as u64, "seed served {served}, peers {from_peers}");
    std::fs::remove_dir_all(&dir).unwrap();
}
