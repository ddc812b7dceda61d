//! The wire format: one versioned, length-framed bincode encoding for every message kiln
//! sends between CLI, coordinators and agents (the messages are in [`crate::api`]).
//!
//! A frame is an 8-byte header (`b"KL"`, the protocol version as u16, the payload length as
//! u32, all big-endian) followed by a bincode payload. Sizes are checked before anything is
//! allocated, and bincode itself is bounded by the frame length, so a hostile peer can make the
//! decoder return an error, never allocate without bound or panic. Errors that cross the wire
//! are data ([`RemoteError`]) the CLI prints as one sentence.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;

pub const MAGIC: [u8; 2] = *b"KL";
/// 2: blob bytes travel as byte strings, chunks as raw bodies after their answer.
/// 4: one request/response pair per protocol, tagged by protocol ([`crate::api::Call`]);
/// manifest descriptors typed, the index as bytes.
/// 8: a build's context entries may travel as a blob (`BuildSpec::context_manifest`); a submit
/// naming blobs the coordinator lacks is refused with [`ErrorCode::BlobsMissing`]; agents' blob
/// transfers and peer requests carry slice grants ([`crate::api::Grant`]).
pub const PROTOCOL_VERSION: u16 = 9;
pub const HEADER_LEN: usize = 8;
/// The largest control frame (chunks of blobs travel in their own frames, also bounded).
pub const MAX_FRAME: usize = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("not a kiln frame (bad magic {0:02x?}): is this port a kiln endpoint?")]
    BadMagic([u8; 2]),
    #[error("peer speaks kiln protocol version {got}, this side speaks {supported}: upgrade the older side")]
    UnsupportedVersion { got: u16, supported: u16 },
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame truncated: expected {expected} bytes, got {got}")]
    Truncated { expected: usize, got: usize },
    #[error("undecodable frame payload: {0}")]
    Decode(String),
    #[error("unencodable message: {0}")]
    Encode(String),
}

fn options() -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new().with_fixint_encoding().with_big_endian().reject_trailing_bytes()
}

/// Encodes `msg` as one frame.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, WireError> {
    use bincode::Options;
    let payload = options().serialize(msg).map_err(|e| WireError::Encode(e.to_string()))?;
    if payload.len() > MAX_FRAME {
        return Err(WireError::TooLarge { len: payload.len(), max: MAX_FRAME });
    }
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Encodes `msg` without a frame, and without the frame's limit: for data that travels as a
/// blob, in chunks (a context manifest, [`crate::api::context`]).
pub fn encode_payload<T: Serialize>(msg: &T) -> Result<Vec<u8>, WireError> {
    use bincode::Options;
    options().serialize(msg).map_err(|e| WireError::Encode(e.to_string()))
}

/// The length `msg` encodes to (without its header), computed without encoding it.
pub fn payload_len<T: Serialize>(msg: &T) -> Option<u64> {
    use bincode::Options;
    options().serialized_size(msg).ok()
}

/// The length of `msg`'s frame (header and payload), without encoding it.
pub fn frame_len<T: Serialize>(msg: &T) -> Result<u64, WireError> {
    let payload = payload_len(msg).ok_or_else(|| WireError::Encode("the message cannot be sized".into()))?;
    Ok(HEADER_LEN as u64 + payload)
}

/// Checks a header; returns the payload length that follows.
pub fn decode_header(h: &[u8; HEADER_LEN], max: usize) -> Result<usize, WireError> {
    if h[..2] != MAGIC {
        return Err(WireError::BadMagic([h[0], h[1]]));
    }
    let version = u16::from_be_bytes([h[2], h[3]]);
    if version != PROTOCOL_VERSION {
        return Err(WireError::UnsupportedVersion { got: version, supported: PROTOCOL_VERSION });
    }
    let len = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize;
    if len > max {
        return Err(WireError::TooLarge { len, max });
    }
    Ok(len)
}

/// Decodes a payload whose header was checked.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, WireError> {
    use bincode::Options;
    options().with_limit(payload.len() as u64).deserialize(payload).map_err(|e| WireError::Decode(e.to_string()))
}

/// Decodes one whole frame (header and payload) from `bytes`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    let header: &[u8; HEADER_LEN] =
        bytes.get(..HEADER_LEN).and_then(|h| h.try_into().ok()).ok_or(WireError::Truncated { expected: HEADER_LEN, got: bytes.len() })?;
    let len = decode_header(header, MAX_FRAME)?;
    let payload = &bytes[HEADER_LEN..];
    if payload.len() != len {
        return Err(WireError::Truncated { expected: len, got: payload.len() });
    }
    decode_payload(payload)
}

/// What kind of failure a remote error is; the CLI and retry logic key off it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The request was malformed or refers to something that does not exist.
    BadRequest,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    /// Not the Raft leader; the message names it. Retryable elsewhere.
    NotLeader,
    /// Try again later (overload, election in progress). Retryable.
    Unavailable,
    DeadlineExceeded,
    Internal,
    /// The request names blobs this coordinator does not hold for the caller (its upload went
    /// to another coordinator, or was lost): upload them here and send it again.
    BlobsMissing,
}

impl ErrorCode {
    pub fn retryable(self) -> bool {
        matches!(self, ErrorCode::NotLeader | ErrorCode::Unavailable | ErrorCode::DeadlineExceeded)
    }
}

/// An error that crossed the wire: a code and a sentence a user can act on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteError {
    pub code: ErrorCode,
    pub message: String,
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RemoteError {}

/// Every request carries an id (to match the response) and a deadline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub request_id: u64,
    /// Milliseconds the caller waits; the callee abandons work past it.
    pub deadline_ms: u32,
    pub body: T,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    enum Msg {
        Ping(u64),
        Text(String),
        Blob(Vec<u8>),
        Err(RemoteError),
        Nested(Vec<(String, Option<u32>)>),
    }

    fn msg() -> impl Strategy<Value = Msg> {
        prop_oneof![
            any::<u64>().prop_map(Msg::Ping),
            any::<String>().prop_map(Msg::Text),
            prop::collection::vec(any::<u8>(), 0..512).prop_map(Msg::Blob),
            (any::<String>()).prop_map(|m| Msg::Err(RemoteError { code: ErrorCode::NotLeader, message: m })),
            prop::collection::vec((any::<String>(), any::<Option<u32>>()), 0..8).prop_map(Msg::Nested),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(m in msg(), id in any::<u64>(), deadline in any::<u32>()) {
            let env = Envelope { request_id: id, deadline_ms: deadline, body: m };
            let bytes = encode(&env).unwrap();
            prop_assert_eq!(frame_len(&env).unwrap(), bytes.len() as u64);
            prop_assert_eq!(decode::<Envelope<Msg>>(&bytes).unwrap(), env);
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<Envelope<Msg>>(&bytes);
            // With a valid header too, so the payload decoder sees the garbage.
            let mut framed = MAGIC.to_vec();
            framed.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
            framed.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            framed.extend_from_slice(&bytes);
            let _ = decode::<Envelope<Msg>>(&framed);
        }
    }

    #[test]
    fn typed_errors() {
        assert_eq!(decode::<u64>(b"GET / HTTP/1.1"), Err(WireError::BadMagic(*b"GE")));
        let mut v = encode(&7u64).unwrap();
        let next = PROTOCOL_VERSION + 1;
        v[2..4].copy_from_slice(&next.to_be_bytes());
        assert_eq!(decode::<u64>(&v), Err(WireError::UnsupportedVersion { got: next, supported: PROTOCOL_VERSION }));
        let [v0, v1] = PROTOCOL_VERSION.to_be_bytes();
        let huge = [b'K', b'L', v0, v1, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(decode_header(&huge, MAX_FRAME), Err(WireError::TooLarge { .. })));
        let v = encode(&7u64).unwrap();
        assert!(matches!(decode::<u64>(&v[..v.len() - 1]), Err(WireError::Truncated { .. })));
        // A length prefix inside the payload that claims more than the frame holds.
        let mut bad = MAGIC.to_vec();
        bad.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        bad.extend_from_slice(&8u32.to_be_bytes());
        bad.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(decode::<Vec<u8>>(&bad), Err(WireError::Decode(_))));
        assert!(ErrorCode::NotLeader.retryable() && !ErrorCode::PermissionDenied.retryable());
    }
}
