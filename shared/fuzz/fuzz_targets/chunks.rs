//! Fuzz target for the chunk protocol: a chunk table answer as a peer sends it, checked and then
//! used (chunk ranges, verification of a chunk, a transfer plan driven by the rest of the input).
//! No input may panic it or make it allocate without bound.
#![no_main]

use kiln_shared::api::Response;
use kiln_shared::chunks::{Plan, MAX_CHUNK};
use kiln_shared::wire::{self, RemoteError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map(|&b| b as usize).unwrap_or(0).min(data.len());
    let (frame, rest) = data.split_at(split);
    let Ok(Ok(Response::Table(table))) = wire::decode::<Result<Response, RemoteError>>(frame) else {
        // Raw bodies are only ever read up to the chunk size limit.
        let _ = rest.len() <= MAX_CHUNK as usize;
        return;
    };
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
