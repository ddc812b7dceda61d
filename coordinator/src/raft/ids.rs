//! Typed ids of builds, slices and attempts, as the Raft state, the leader and the request
//! rooms use them.
//!
//! The wire (`kiln_shared::api`) carries them as plain numbers in separate fields (`build: u64`,
//! `slice: u32`, `attempt: u32`, a poll's `(u64, u32, u32)`); `from_wire`/`to_wire` here are the
//! only conversions. In the Raft log and snapshots `BuildId` and `Attempt` serialize as the plain
//! number (`serde(transparent)`), so a map keyed by `BuildId` stays a JSON object.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A build, numbered by the state machine from 1 in submission order (0: not yet numbered).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BuildId(u64);

impl BuildId {
    /// The id of a build not yet committed (`Command::Submit` numbers it).
    pub const UNNUMBERED: BuildId = BuildId(0);

    pub const fn from_wire(id: u64) -> BuildId {
        BuildId(id)
    }

    pub const fn to_wire(self) -> u64 {
        self.0
    }

    /// The id the state machine gives the build submitted after this one.
    pub const fn next(self) -> BuildId {
        BuildId(self.0 + 1)
    }
}

impl fmt::Display for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One platform of a build: the build and the index of the platform in its spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SliceKey {
    pub build: BuildId,
    pub index: u32,
}

impl SliceKey {
    pub const fn new(build: BuildId, index: u32) -> SliceKey {
        SliceKey { build, index }
    }

    pub const fn from_wire(build: u64, slice: u32) -> SliceKey {
        SliceKey { build: BuildId(build), index: slice }
    }

    pub const fn to_wire(self) -> (u64, u32) {
        (self.build.0, self.index)
    }
}

impl fmt::Display for SliceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.build, self.index)
    }
}

/// How many times a slice has been handed to an agent; reports are fenced by it (one from an
/// older attempt is refused). A queued slice keeps the attempt it last ran; the next
/// assignment starts [`Attempt::next`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Attempt(u32);

impl Attempt {
    /// A slice that never ran.
    pub const NONE: Attempt = Attempt(0);
    pub const FIRST: Attempt = Attempt(1);

    pub const fn from_wire(attempt: u32) -> Attempt {
        Attempt(attempt)
    }

    pub const fn to_wire(self) -> u32 {
        self.0
    }

    pub const fn next(self) -> Attempt {
        Attempt(self.0 + 1)
    }
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One attempt of one slice: what an agent runs, and what a report or a requeue names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SliceAttempt {
    pub slice: SliceKey,
    pub attempt: Attempt,
}

impl SliceAttempt {
    pub const fn new(slice: SliceKey, attempt: Attempt) -> SliceAttempt {
        SliceAttempt { slice, attempt }
    }

    /// A poll's `(build, slice, attempt)`.
    pub const fn from_wire((build, slice, attempt): (u64, u32, u32)) -> SliceAttempt {
        SliceAttempt { slice: SliceKey::from_wire(build, slice), attempt: Attempt(attempt) }
    }

    pub const fn to_wire(self) -> (u64, u32, u32) {
        (self.slice.build.0, self.slice.index, self.attempt.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn wire_round_trip_and_order() {
        let t = (7, 3, 2);
        assert_eq!(SliceAttempt::from_wire(t).to_wire(), t);
        assert_eq!(SliceKey::from_wire(7, 3).to_string(), "7/3");
        // Slices order by build, then index: the order they were queued in.
        assert!(SliceKey::from_wire(1, 9) < SliceKey::from_wire(2, 0));
        assert_eq!(Attempt::NONE.next(), Attempt::FIRST);
    }

    #[test]
    fn ids_serialize_as_numbers_even_as_map_keys() -> Result<(), serde_json::Error> {
        let map: BTreeMap<BuildId, Attempt> = [(BuildId::from_wire(4), Attempt::from_wire(2))].into();
        let json = serde_json::to_string(&map)?;
        assert_eq!(json, r#"{"4":2}"#);
        assert_eq!(serde_json::from_str::<BTreeMap<BuildId, Attempt>>(&json)?, map);
        Ok(())
    }
}
