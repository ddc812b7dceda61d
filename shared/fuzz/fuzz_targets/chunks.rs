//! Fuzz target for the chunk protocol: a chunk table answer as a peer sends it, checked and then
//! used (chunk ranges, verification of a chunk, a transfer plan driven by the rest of the input).
//! No input may panic it or make it allocate without bound.
#![no_main]

use kiln_shared::api::PeerResponse;
use kiln_shared::chunks::{Bitmap, ChunkTable, Plan, MAX_CHUNK};
use kiln_shared::wire::{self, RemoteError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map(|&b| b as usize).unwrap_or(0).min(data.len());
    let (frame, rest) = data.split_at(split);
    let table = match wire::decode::<Result<PeerResponse, RemoteError>>(frame) {
        Ok(Ok(PeerResponse::Table(table))) => table,
        // Random bytes rarely decode: make a table of them directly, so that what a decoded
        // table goes through (checks, ranges, verification, the plan) is fuzzed all the same.
        _ => match direct(frame) {
            Some(t) => t,
            None => return,
        },
    };
    let _ = rest.len() <= MAX_CHUNK as usize;
    if table.validate().is_err() {
        return;
    }
    let n = table.chunks();
    let _ = table.digest();
    if n == 0 {
        return;
    }
    // A chunk of whatever the peer sent next.
    let i = rest.first().map(|&b| b as usize % n).unwrap_or(0);
    let (_, len) = table.range(i);
    let body = &rest[..rest.len().min(len)];
    let _ = table.verify(i, body);
    // The plan, fed the peer's have-map and a sequence of events from the input.
    let mut plan = Plan::new(n, 2, rest.len());
    let a = plan.add_source(table.have.clone());
    let b = plan.add_source(None);
    let mut inflight = Vec::new();
    for &e in rest.iter().take(4096) {
        let src = if e & 1 == 0 { a } else { b };
        match e >> 5 {
            0 => plan.drop_source(src),
            1 | 2 | 3 => {
                if let Some(c) = plan.next(src) {
                    inflight.push((src, c));
                }
            }
            4 => {
                if let Some((s, c)) = inflight.pop() {
                    plan.give_back(s, c);
                }
            }
            _ => {
                if let Some((s, c)) = inflight.pop() {
                    plan.received(s, c, e & 2 == 0);
                }
            }
        }
    }
    let _ = (plan.complete(), plan.unobtainable(), plan.stalled(), plan.live_sources());
});

/// A table from raw bytes: size, chunk size, hashes, and a have-map when a byte says so.
fn direct(b: &[u8]) -> Option<ChunkTable> {
    let size = u64::from_le_bytes(b.get(1..9)?.try_into().ok()?) % (64 << 20);
    let chunk_size = u32::from_le_bytes(b.get(9..13)?.try_into().ok()?);
    let hashes: Vec<[u8; 32]> = b.get(14..)?.chunks_exact(32).take(64).map(|c| c.try_into().unwrap_or([0; 32])).collect();
    let have = (b[13] & 1 == 1).then(|| {
        let mut m = Bitmap::new(hashes.len());
        for i in 0..hashes.len() {
            if b[13] >> (i % 7) & 1 == 1 {
                m.set(i);
            }
        }
        m
    });
    Some(ChunkTable { size, chunk_size, hashes, have })
}
