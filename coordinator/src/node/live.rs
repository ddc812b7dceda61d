//! Agent liveness: what the leader last heard from each agent and whether its lease holds.
//!
//! Soft state, kept by the leader from polls (see [`super::agents`]) and read by the leader's
//! plan and the context views; a new leader rebuilds it from the next polls.

use crate::raft::SliceAttempt;
use std::time::{Duration, Instant};

/// What the leader knows about a live agent (soft state: rebuilt from polls after a failover).
#[derive(Clone, Debug)]
pub struct Live {
    pub last_seen: Instant,
    pub running: Vec<SliceAttempt>,
    pub cache_bytes: u64,
}

/// Whether an agent is alive: it polled within its lease, or it has not yet had twice its
/// lease since this coordinator became leader (the grace a new leader gives every agent).
pub fn alive(lease_ms: u64, leader_since: Option<Instant>, live: Option<&Live>, now: Instant) -> bool {
    let lease = Duration::from_millis(lease_ms);
    match live {
        Some(l) => now.duration_since(l.last_seen) < lease,
        None => leader_since.is_some_and(|t| now.duration_since(t) < 2 * lease),
    }
}
