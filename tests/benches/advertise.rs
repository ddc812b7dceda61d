//! What an idle agent holding 100,000 blobs costs to advertise: one coordinator and one real
//! `kiln agent` on loopback, the agent's content store filled with 100,000 small blobs before
//! it starts.
//!
//! Prints, over a minute of the agent doing nothing: the advertisement bytes it sent the
//! tracker (its `kiln_advertise_bytes_total`: the encoded `Advertise` frames, 8-byte header
//! and payload; QUIC adds its own framing and encryption), how often it listed its store
//! (`kiln_advertise_listings_total`) and the CPU time the agent process used. Beside them, for
//! comparison: the size of one full inventory (sent on first contact, and to a new leader),
//! what sending it every interval would cost, and what listing the store once takes here (what
//! every interval cost the agent before it trusted the directories' mtimes).
//! Then one blob is added, and the size of the change that advertises it.
//! Run with `make bench` (it builds the release binary first).

use kiln_shared::api::{AgentRequest, Inventory};
use kiln_shared::digest::Digest;
use kiln_shared::store::ContentStore;
use kiln_tests::cluster::Cluster;
use kiln_tests::wait_for;
use std::time::{Duration, Instant};

const BLOBS: usize = 100_000;
const IDLE: Duration = Duration::from_secs(60);
/// `kiln agent`'s default `advertise_interval_ms`.
const INTERVAL_MS: u64 = 2_000;

fn get(addr: &str) -> String {
    ureq::get(&format!("http://{addr}/metrics")).timeout(Duration::from_secs(5)).call().expect("metrics").into_string().expect("text")
}

/// The value of the sample `name` (with its labels, as printed) in a Prometheus text page.
fn sample(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in\n{page}"))
}

/// User and system CPU time of a process, in ms (clock ticks of 10 ms).
fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().expect("utime") + f[12].parse::<f64>().expect("stime");
    ticks * 10.0
}

fn main() {
    let mut c = Cluster::start_with_metrics(1);
    let name = "idle";
    // The store's layout (blobs/sha256/<hex>), filled directly: `put` fsyncs every blob.
    let store = ContentStore::open(&c.dir.path().join(name).join("content")).expect("store");
    let t = Instant::now();
    for i in 0..BLOBS {
        let body = format!("blob {i}\n");
        std::fs::write(store.path(&Digest::of(body.as_bytes())), body).expect("write blob");
    }
    println!("{BLOBS} blobs written into the agent's store in {:.1} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let listed = store.list().expect("list").len();
    let list_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(listed, BLOBS);

    c.add_agent(name, &["linux/amd64"], 1);
    let addr = c.metrics.iter().find(|(n, _)| n == &format!("agent {name}")).expect("agent metrics").1.clone();
    let pid = c.agent(name).pid().expect("agent pid");
    let full = r#"kiln_advertise_bytes_total{kind="full"}"#;
    let changes = r#"kiln_advertise_bytes_total{kind="changes"}"#;
    wait_for("the agent's full inventory", Duration::from_secs(120), || sample(&get(&addr), full) > 0.0);
    // Settled: the listing after the full inventory trusts the store's mtime (see advertise.rs).
    std::thread::sleep(Duration::from_millis(3 * INTERVAL_MS));

    let before = get(&addr);
    let cpu_before = cpu_ms(pid);
    let t = Instant::now();
    std::thread::sleep(IDLE);
    let minutes = t.elapsed().as_secs_f64() / 60.0;
    let after = get(&addr);
    let cpu = cpu_ms(pid) - cpu_before;
    let intervals = t.elapsed().as_millis() as f64 / INTERVAL_MS as f64;
    let sent = (sample(&after, full) + sample(&after, changes)) - (sample(&before, full) + sample(&before, changes));
    let listings = sample(&after, "kiln_advertise_listings_total") - sample(&before, "kiln_advertise_listings_total");
    let full_bytes = sample(&after, full);
    println!(
        "idle agent holding {BLOBS} blobs: {:.0} advertisement bytes per minute, {:.0} store listings per minute",
        sent / minutes,
        listings / minutes
    );
    println!(
        "  its CPU time idle: {:.0} ms per minute ({:.1} ms per {INTERVAL_MS} ms interval; one listing of the store takes {list_ms:.0} ms here)",
        cpu / minutes,
        cpu / intervals
    );
    // One full inventory of these blobs, encoded as the agent encodes it.
    let inventory = Inventory {
        agent: name.into(),
        full: true,
        blobs_added: store.list().expect("list").into_iter().map(|(d, _, _)| d.to_string()).collect(),
        ..Default::default()
    };
    let one = kiln_shared::wire::frame_len(&AgentRequest::Advertise(inventory)).expect("frame length") as f64;
    println!(
        "  one full inventory is {one:.0} bytes ({full_bytes:.0} sent in full at first contact); sent every interval that would be {:.0} bytes per minute",
        one * 60_000.0 / INTERVAL_MS as f64
    );

    // A change is advertised as one: a blob added goes out within an interval or two.
    let sent_before = sample(&get(&addr), changes);
    store.put(b"one more blob\n").expect("put");
    wait_for("the added blob's advertisement", Duration::from_secs(30), || sample(&get(&addr), changes) > sent_before);
    println!("  one blob added: advertised in a change of {:.0} bytes", sample(&get(&addr), changes) - sent_before);
}
