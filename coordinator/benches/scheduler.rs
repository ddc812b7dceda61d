//! Scheduler benchmark: 10,000 pending slices over 1,000 agents (issue 4 target: under 50 ms).
//! Run with `cargo bench -p kiln-coordinator --bench scheduler`.

use kiln_coordinator::scheduler::{schedule, AgentSnapshot, Params, PendingSlice};
use kiln_shared::Platform;
use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

fn main() {
    let amd: Platform = "linux/amd64".parse().expect("platform");
    let arm: Platform = "linux/arm64".parse().expect("platform");
    let agents: Vec<AgentSnapshot> = (0..1000)
        .map(|i| AgentSnapshot {
            name: format!("agent-{i}").into(),
            native: vec![if i % 3 == 0 { arm.clone() } else { amd.clone() }].into(),
            emulated: if i % 3 == 0 { vec![] } else { vec![arm.clone()] }.into(),
            slots: 4 + (i % 5),
            running: i % 4,
            cache_records: (0..(i % 7) as u64).map(|b| (b, i % 11)).collect::<HashMap<_, _>>(),
        })
        .collect();
    let slices: Vec<PendingSlice> = (0..10_000u64)
        .map(|i| PendingSlice {
            id: i,
            affinity: i / 2,
            tenant: format!("tenant-{}", i % 17),
            platform: if i % 2 == 0 { amd.clone() } else { arm.clone() },
            queued_seq: i,
            candidates: None,
            expected_native_ms: 30_000 + (i % 13) * 1000,
        })
        .collect();
    let params = Params::default();
    let mut times = Vec::new();
    let mut assigned = 0;
    for _ in 0..20 {
        let t = Instant::now();
        let d = black_box(schedule(black_box(&slices), black_box(&agents), &HashMap::new(), &params));
        times.push(t.elapsed());
        assigned = d.assignments.len();
    }
    times.sort();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    println!("scheduler benchmark: 10,000 pending slices, 1,000 agents ({assigned} assigned per round)");
    println!(
        "  schedule()  median {:7.2} ms   best {:7.2} ms   target < 50 ms: {}",
        ms(times[times.len() / 2]),
        ms(times[0]),
        if ms(times[times.len() / 2]) < 50.0 { "met" } else { "MISSED" }
    );
}
