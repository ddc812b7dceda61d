//! Chunked, multi-source blob transfer: the pure part (no I/O, no clock).
//!
//! A blob travels between peers as fixed-size chunks. Its [`ChunkTable`] lists the sha256 of
//! every chunk, so a receiver verifies each chunk before it keeps it, and the whole blob by its
//! digest at the end. A [`Plan`] decides which chunk to ask of which source: rarest first (so
//! that agents fetching the same blob at once spread the chunks between them and serve each
//! other), never a chunk a source lacks, and never again from a source that sent a bad chunk.
//! The agent's fetcher carries the decisions out over QUIC.

use crate::digest::Digest;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::io::{self, Read};

/// The chunk size peers use. Chosen by measurement (`make bench`, transfer bench): 1 MiB chunks
/// spend too much on requests, 16 MiB would not fit a frame; 4 MiB is as fast as 8 MiB and halves
/// what a dropped peer costs.
pub const CHUNK_SIZE: u32 = 4 << 20;
/// Limits a table from the network must respect.
pub const MIN_CHUNK: u32 = 64 << 10;
pub const MAX_CHUNK: u32 = 8 << 20;
/// 64 GiB of 4 MiB chunks: bounds what a table may make a receiver allocate.
pub const MAX_CHUNKS: usize = 1 << 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk table: chunk size {0} is not a multiple of 64 in {MIN_CHUNK}..={MAX_CHUNK}")]
    ChunkSize(u32),
    #[error("chunk table: {size} bytes in chunks of {chunk_size} need {want} chunks, the table lists {got}")]
    Count { size: u64, chunk_size: u32, want: u64, got: usize },
    #[error("chunk table: more than {MAX_CHUNKS} chunks")]
    TooLarge,
    #[error("chunk table: the have-map covers {got} chunks of {want}")]
    Have { want: usize, got: usize },
}

/// sha256 of every chunk of a blob; `have` says which chunks the sender holds (all of them
/// unless it is still fetching the blob itself).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkTable {
    pub size: u64,
    pub chunk_size: u32,
    pub hashes: Vec<[u8; 32]>,
    pub have: Option<Bitmap>,
}

impl ChunkTable {
    /// Reads a whole blob of `size` bytes once: its chunk table and its digest.
    pub fn compute(r: &mut dyn Read, size: u64, chunk_size: u32) -> io::Result<(ChunkTable, Digest)> {
        let mut t = ChunkTable { size, chunk_size, hashes: Vec::new(), have: None };
        let n = size.div_ceil(u64::from(chunk_size)) as usize;
        let mut state = IV;
        let mut buf = vec![0u8; chunk_size as usize];
        for i in 0..n {
            let len = t.range(i).1;
            r.read_exact(&mut buf[..len])?;
            if i + 1 < n {
                compress(&mut state, &buf[..len]);
                t.hashes.push(bytes_of(&state));
            } else {
                t.hashes.push(finish(state, &buf[..len], size));
            }
        }
        // Nothing may follow the announced size.
        if r.read(&mut [0u8; 1])? != 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "the blob is longer than its size"));
        }
        let digest = t.digest();
        Ok((t, digest))
    }

    /// The blob's digest, as the table claims it (the chaining value after the last chunk).
    pub fn digest(&self) -> Digest {
        match self.hashes.last() {
            Some(h) => Digest::from_sha256(*h),
            None => Digest::from_sha256(Sha256::digest(b"").into()),
        }
    }

    /// Checks a table from the network before anything is allocated from it.
    pub fn validate(&self) -> Result<(), ChunkError> {
        if !(MIN_CHUNK..=MAX_CHUNK).contains(&self.chunk_size) || !self.chunk_size.is_multiple_of(64) {
            return Err(ChunkError::ChunkSize(self.chunk_size));
        }
        let want = self.size.div_ceil(u64::from(self.chunk_size));
        if want > MAX_CHUNKS as u64 {
            return Err(ChunkError::TooLarge);
        }
        if want != self.hashes.len() as u64 {
            return Err(ChunkError::Count { size: self.size, chunk_size: self.chunk_size, want, got: self.hashes.len() });
        }
        if let Some(h) = &self.have {
            if h.len != self.hashes.len() || h.bits.len() != h.len.div_ceil(8) {
                return Err(ChunkError::Have { want: self.hashes.len(), got: h.len });
            }
        }
        Ok(())
    }

    pub fn chunks(&self) -> usize {
        self.hashes.len()
    }

    /// Offset and length of chunk `i`.
    pub fn range(&self, i: usize) -> (u64, usize) {
        let start = i as u64 * u64::from(self.chunk_size);
        (start, (self.size - start).min(u64::from(self.chunk_size)) as usize)
    }

    /// Whether `data` is chunk `i`: SHA-256 run from the chaining value after chunk `i - 1`
    /// over `data` must give the table's value for chunk `i`. So every chunk is checked on its
    /// own as it arrives, and chunks that all pass make up exactly the blob of the table's
    /// digest (the last value is the digest itself): no second pass over the blob is needed.
    pub fn verify(&self, i: usize, data: &[u8]) -> bool {
        if i >= self.hashes.len() || data.len() != self.range(i).1 {
            return false;
        }
        let mut state = if i == 0 { IV } else { state_of(&self.hashes[i - 1]) };
        if i + 1 < self.hashes.len() {
            compress(&mut state, data);
            bytes_of(&state) == self.hashes[i]
        } else {
            finish(state, data, self.size) == self.hashes[i]
        }
    }

    /// The same table without the have-map (what two sources must agree on).
    pub fn content(&self) -> ChunkTable {
        ChunkTable { have: None, ..self.clone() }
    }
}

/// SHA-256's initial chaining value (FIPS 180-4, 5.3.3).
const IV: [u32; 8] = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

fn state_of(b: &[u8; 32]) -> [u32; 8] {
    let mut s = [0u32; 8];
    for (w, c) in s.iter_mut().zip(b.chunks_exact(4)) {
        *w = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
    }
    s
}

fn bytes_of(s: &[u32; 8]) -> [u8; 32] {
    let mut b = [0u8; 32];
    for (c, w) in b.chunks_exact_mut(4).zip(s) {
        c.copy_from_slice(&w.to_be_bytes());
    }
    b
}

/// SHA-256's compression over whole 64-byte blocks.
fn compress(state: &mut [u32; 8], data: &[u8]) {
    use sha2::digest::generic_array::{typenum::U64, GenericArray};
    debug_assert!(data.len().is_multiple_of(64));
    // Blocks in batches: one copy, then SHA-256's block function over the batch.
    let mut blocks = vec![GenericArray::<u8, U64>::default(); (data.len() / 64).min(1024)];
    for batch in data.chunks(64 * 1024) {
        let n = batch.len() / 64;
        for (b, src) in blocks.iter_mut().zip(batch.chunks_exact(64)) {
            b.copy_from_slice(src);
        }
        sha2::compress256(state, &blocks[..n]);
    }
}

/// The last chunk: its whole blocks, then the padding with the blob's length (FIPS 180-4, 5.1.1).
fn finish(mut state: [u32; 8], tail: &[u8], total: u64) -> [u8; 32] {
    let whole = tail.len() / 64 * 64;
    compress(&mut state, &tail[..whole]);
    let mut last = tail[whole..].to_vec();
    last.push(0x80);
    while last.len() % 64 != 56 {
        last.push(0);
    }
    last.extend_from_slice(&(total.wrapping_mul(8)).to_be_bytes());
    compress(&mut state, &last);
    bytes_of(&state)
}

/// A set of chunk indices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bitmap {
    pub len: usize,
    pub bits: Vec<u8>,
}

impl Bitmap {
    pub fn new(len: usize) -> Bitmap {
        Bitmap { len, bits: vec![0; len.div_ceil(8)] }
    }
    pub fn get(&self, i: usize) -> bool {
        i < self.len && self.bits[i / 8] & (1 << (i % 8)) != 0
    }
    pub fn set(&mut self, i: usize) {
        if i < self.len {
            self.bits[i / 8] |= 1 << (i % 8);
        }
    }
    pub fn count(&self) -> usize {
        self.bits.iter().map(|b| b.count_ones() as usize).sum()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    Pending,
    InFlight,
    Done,
}

#[derive(Debug)]
struct Source {
    /// None: the source holds the whole blob.
    have: Option<Bitmap>,
    inflight: Vec<usize>,
    /// Dropped: it sent a bad chunk or its connection failed.
    gone: bool,
}

/// Which chunk to fetch from which source. Sources are numbered by the caller.
#[derive(Debug)]
pub struct Plan {
    chunks: Vec<Chunk>,
    sources: Vec<Source>,
    done: usize,
    /// Requests kept in flight per source.
    depth: usize,
    /// Rotates the start of the rarest-first scan, so equal candidates spread between sources.
    seed: usize,
}

/// What became of a chunk a source sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Verified and kept.
    Kept,
    /// Already fetched from another source (the copy is discarded).
    Duplicate,
    /// Failed verification: the source is dropped for this blob, the chunk goes back to pending.
    Dropped,
}

impl Plan {
    pub fn new(chunks: usize, depth: usize, seed: usize) -> Plan {
        Plan { chunks: vec![Chunk::Pending; chunks], sources: Vec::new(), done: 0, depth: depth.max(1), seed }
    }

    /// Adds a source; returns its number.
    pub fn add_source(&mut self, have: Option<Bitmap>) -> usize {
        self.sources.push(Source { have, inflight: Vec::new(), gone: false });
        self.sources.len() - 1
    }

    /// A partial source reported more chunks.
    pub fn update_have(&mut self, src: usize, have: Option<Bitmap>) {
        if let Some(s) = self.sources.get_mut(src) {
            s.have = have;
        }
    }

    fn has(&self, src: usize, i: usize) -> bool {
        let s = &self.sources[src];
        !s.gone && s.have.as_ref().is_none_or(|h| h.get(i))
    }

    /// The next chunk to ask `src` for, if it should get one now: the pending chunk it holds
    /// that the fewest other live sources hold.
    pub fn next(&mut self, src: usize) -> Option<usize> {
        let s = self.sources.get(src)?;
        if s.gone || s.inflight.len() >= self.depth {
            return None;
        }
        let n = self.chunks.len();
        let start = if n == 0 { 0 } else { (self.seed.wrapping_mul(7919).wrapping_add(src * 104_729)) % n };
        let mut best: Option<(usize, usize)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if self.chunks[i] != Chunk::Pending || !self.has(src, i) {
                continue;
            }
            let holders = (0..self.sources.len()).filter(|&o| self.has(o, i)).count();
            if best.is_none_or(|(_, h)| holders < h) {
                best = Some((i, holders));
                if holders == 1 {
                    break;
                }
            }
        }
        let (i, _) = best?;
        self.chunks[i] = Chunk::InFlight;
        self.sources[src].inflight.push(i);
        Some(i)
    }

    /// `src` answered chunk `i`; `valid` says whether it matched the table.
    pub fn received(&mut self, src: usize, i: usize, valid: bool) -> Verdict {
        let Some(s) = self.sources.get_mut(src) else { return Verdict::Duplicate };
        let was_mine = if let Some(pos) = s.inflight.iter().position(|&c| c == i) {
            s.inflight.swap_remove(pos);
            true
        } else {
            false
        };
        if !valid {
            if was_mine && self.chunks.get(i) == Some(&Chunk::InFlight) {
                self.chunks[i] = Chunk::Pending;
            }
            self.drop_source(src);
            return Verdict::Dropped;
        }
        if !was_mine || self.chunks.get(i) != Some(&Chunk::InFlight) {
            return Verdict::Duplicate;
        }
        self.chunks[i] = Chunk::Done;
        self.done += 1;
        Verdict::Kept
    }

    /// `src` did not have chunk `i` after all (a partial source): the chunk goes back to pending.
    pub fn give_back(&mut self, src: usize, i: usize) {
        let Some(s) = self.sources.get_mut(src) else { return };
        if let Some(pos) = s.inflight.iter().position(|&c| c == i) {
            s.inflight.swap_remove(pos);
            if self.chunks[i] == Chunk::InFlight {
                self.chunks[i] = Chunk::Pending;
            }
        }
    }

    pub fn is_partial(&self, src: usize) -> bool {
        self.sources.get(src).is_some_and(|s| s.have.is_some())
    }

    /// `src` is unreachable or misbehaved: what it had in flight goes back to pending.
    pub fn drop_source(&mut self, src: usize) {
        let Some(s) = self.sources.get_mut(src) else { return };
        s.gone = true;
        for i in std::mem::take(&mut s.inflight) {
            if self.chunks[i] == Chunk::InFlight {
                self.chunks[i] = Chunk::Pending;
            }
        }
    }

    pub fn is_gone(&self, src: usize) -> bool {
        self.sources.get(src).is_none_or(|s| s.gone)
    }

    pub fn complete(&self) -> bool {
        self.done == self.chunks.len()
    }

    pub fn done(&self) -> usize {
        self.done
    }

    /// Chunks not fetched that no live source can give now (partial sources may still get them).
    pub fn unobtainable(&self) -> usize {
        (0..self.chunks.len()).filter(|&i| self.chunks[i] == Chunk::Pending && !(0..self.sources.len()).any(|s| self.has(s, i))).count()
    }

    /// Whether every live source is partial or idle with nothing to give, and nothing is in
    /// flight: waiting longer is the only hope.
    pub fn stalled(&self) -> bool {
        !self.complete() && self.sources.iter().all(|s| s.inflight.is_empty()) && !self.sources.iter().any(|s| !s.gone && s.have.is_none())
    }

    pub fn live_sources(&self) -> usize {
        self.sources.iter().filter(|s| !s.gone).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn table(data: &[u8], chunk: u32) -> ChunkTable {
        ChunkTable::compute(&mut &data[..], data.len() as u64, chunk).unwrap().0
    }

    #[test]
    fn compute_and_verify() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let (t, d) = ChunkTable::compute(&mut &data[..], data.len() as u64, MIN_CHUNK).unwrap();
        assert_eq!(d, Digest::of(&data));
        assert_eq!(t.digest(), d);
        // A chunk is checked against its place in the chain, not only its content.
        assert!(t.verify(1, &data[65536..131072]) && !t.verify(2, &data[65536..131072]));
        assert_eq!(t.chunks(), 4);
        t.validate().unwrap();
        let (off, len) = t.range(3);
        assert_eq!((off, len), (3 * 65536, 200_000 - 3 * 65536));
        assert!(t.verify(3, &data[off as usize..]));
        let mut bad = data[off as usize..].to_vec();
        bad[7] ^= 1;
        assert!(!t.verify(3, &bad));
        assert!(!t.verify(9, &bad));
        // An empty blob has no chunks.
        let (empty, d) = ChunkTable::compute(&mut &b""[..], 0, MIN_CHUNK).unwrap();
        assert_eq!((empty.chunks(), d), (0, Digest::of(b"")));
        empty.validate().unwrap();
        // Sizes that end on a chunk boundary, and the reader's length must be the size.
        let exact = &data[..131072];
        assert_eq!(ChunkTable::compute(&mut &exact[..], 131072, MIN_CHUNK).unwrap().1, Digest::of(exact));
        assert!(ChunkTable::compute(&mut &exact[..], 131000, MIN_CHUNK).is_err());
        assert!(ChunkTable::compute(&mut &exact[..], 140000, MIN_CHUNK).is_err());
    }

    #[test]
    fn tables_from_the_network_are_checked() {
        let t = table(&[1u8; 100_000], MIN_CHUNK);
        assert!(matches!(ChunkTable { chunk_size: 1, ..t.clone() }.validate(), Err(ChunkError::ChunkSize(1))));
        assert!(matches!(ChunkTable { size: 10 << 20, ..t.clone() }.validate(), Err(ChunkError::Count { .. })));
        assert!(matches!(ChunkTable { size: u64::MAX, ..t.clone() }.validate(), Err(ChunkError::TooLarge)));
        let have = Bitmap { len: 9, bits: vec![0; 2] };
        assert!(matches!(ChunkTable { have: Some(have), ..t }.validate(), Err(ChunkError::Have { .. })));
    }

    #[test]
    fn a_bad_source_is_dropped_and_its_chunk_fetched_elsewhere() {
        let mut p = Plan::new(4, 2, 0);
        let a = p.add_source(None);
        let b = p.add_source(None);
        let ca = p.next(a).unwrap();
        let cb = p.next(b).unwrap();
        assert_ne!(ca, cb);
        assert_eq!(p.received(a, ca, false), Verdict::Dropped);
        assert!(p.is_gone(a) && p.next(a).is_none());
        assert_eq!(p.received(b, cb, true), Verdict::Kept);
        let mut got = vec![cb];
        while let Some(i) = p.next(b) {
            assert_eq!(p.received(b, i, true), Verdict::Kept);
            got.push(i);
        }
        got.sort();
        assert_eq!(got, vec![0, 1, 2, 3]);
        assert!(p.complete());
    }

    #[test]
    fn a_dead_source_costs_only_its_unfinished_chunks() {
        let mut p = Plan::new(6, 2, 3);
        let a = p.add_source(None);
        let b = p.add_source(None);
        let x = p.next(a).unwrap();
        assert_eq!(p.received(a, x, true), Verdict::Kept);
        let _y = p.next(a).unwrap();
        p.drop_source(a);
        while let Some(i) = p.next(b) {
            p.received(b, i, true);
        }
        assert!(p.complete());
        // The late answer of the dead source is not counted twice.
        assert_eq!(p.received(a, x, true), Verdict::Duplicate);
    }

    #[test]
    fn partial_sources_get_only_what_they_hold_rarest_first() {
        let mut p = Plan::new(4, 4, 0);
        let mut have = Bitmap::new(4);
        have.set(2);
        let partial = p.add_source(Some(have));
        let full = p.add_source(None);
        assert_eq!(p.next(partial), Some(2));
        assert_eq!(p.next(partial), None);
        // The full source gets the chunks only it holds.
        let mut from_full = vec![];
        while let Some(i) = p.next(full) {
            from_full.push(i);
        }
        from_full.sort();
        assert_eq!(from_full, vec![0, 1, 3]);
        let mut p = Plan::new(2, 1, 0);
        let mut have = Bitmap::new(2);
        have.set(0);
        let s = p.add_source(Some(have));
        p.next(s);
        p.received(s, 0, true);
        assert!(p.stalled());
        assert_eq!(p.unobtainable(), 1);
    }

    proptest! {
        /// The chain's last value is SHA-256 of the blob, for any size and chunking.
        #[test]
        fn chained_values_end_in_the_digest(len in 0usize..300_000, chunk_k in 1u32..4) {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 253) as u8).collect();
            let t = table(&data, chunk_k * MIN_CHUNK);
            prop_assert_eq!(t.digest(), Digest::of(&data));
            for i in 0..t.chunks() {
                let (off, n) = t.range(i);
                prop_assert!(t.verify(i, &data[off as usize..off as usize + n]));
            }
        }

        /// Whatever sources fail or lie, every chunk is kept exactly once from a source that
        /// had it, and the plan never hands out a chunk twice at once.
        #[test]
        fn plans_terminate_and_keep_each_chunk_once(
            n in 0usize..40,
            sources in 1usize..5,
            depth in 1usize..4,
            events in proptest::collection::vec((0usize..5, 0u8..10), 0..400),
        ) {
            let mut p = Plan::new(n, depth, n);
            for _ in 0..sources { p.add_source(None); }
            let reliable = p.add_source(None);
            let mut kept = vec![0u32; n];
            let mut inflight: Vec<(usize, usize)> = Vec::new();
            for (s, e) in events {
                let s = s % sources;
                match e {
                    0 => p.drop_source(s),
                    1..=3 => { if let Some(i) = p.next(s) { prop_assert!(!inflight.iter().any(|&(_, c)| c == i)); inflight.push((s, i)); } }
                    _ => if let Some(pos) = inflight.iter().position(|&(o, _)| o == s) {
                        let (_, i) = inflight.remove(pos);
                        if p.received(s, i, e != 9) == Verdict::Kept { kept[i] += 1; }
                        if e == 9 { inflight.retain(|&(o, _)| o != s); }
                    },
                }
                inflight.retain(|&(o, _)| !p.is_gone(o));
            }
            for (s, i) in std::mem::take(&mut inflight) {
                if p.received(s, i, true) == Verdict::Kept { kept[i] += 1; }
            }
            while let Some(i) = p.next(reliable) {
                if p.received(reliable, i, true) == Verdict::Kept { kept[i] += 1; }
            }
            prop_assert!(p.complete());
            prop_assert!(kept.iter().all(|&k| k == 1));
        }
    }
}
