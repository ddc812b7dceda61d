//! A build context's entry list as a blob: when the list is too large for the build request's
//! frame (a context of hundreds of thousands of files), the CLI encodes it here, uploads it
//! with the context's files through the chunked blob upload, and names it by digest in
//! [`BuildSpec::context_manifest`]; the receiving coordinator, its replica and the agents read
//! it back from their stores (verified by its digest) with [`decode`]. A small list stays
//! inline in [`BuildSpec::context`]: no extra blob, no extra round trip.
//!
//! The blob is [`MAGIC`] followed by the entries in the wire's bincode encoding.

use super::{BuildSpec, ContextEntry};
use crate::wire::{self, WireError};

/// What a context manifest blob starts with (and its format's version).
pub const MAGIC: &[u8] = b"kiln-context-manifest-v1\n";

/// Entry lists that encode larger than this travel as a blob. Well under the frame limit
/// ([`wire::MAX_FRAME`]), so the spec's other fields always fit beside an inline list, and
/// small enough that the Raft entry of a build (kept for the build's history) stays small.
pub const INLINE_MAX_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("not a kiln context manifest (bad header)")]
    BadMagic,
    #[error("undecodable context manifest: {0}")]
    Decode(WireError),
}

/// Whether `entries` are too many to travel inside the build request.
pub fn too_large_to_inline(entries: &[ContextEntry]) -> bool {
    wire::payload_len(&entries).is_none_or(|n| n > INLINE_MAX_BYTES)
}

/// The blob that carries `entries`.
pub fn encode(entries: &[ContextEntry]) -> Result<Vec<u8>, WireError> {
    let mut out = MAGIC.to_vec();
    out.extend(wire::encode_payload(&entries)?);
    Ok(out)
}

/// The entries a manifest blob carries (its digest is checked by the store that holds it).
/// Bad bytes are an error, never a panic or an unbounded allocation.
pub fn decode(bytes: &[u8]) -> Result<Vec<ContextEntry>, ManifestError> {
    let payload = bytes.strip_prefix(MAGIC).ok_or(ManifestError::BadMagic)?;
    wire::decode_payload(payload).map_err(ManifestError::Decode)
}

impl BuildSpec {
    /// Moves the context's entries into a manifest blob when they are too many to travel
    /// inline; returns the blob (digest, bytes) to upload with the context's files.
    pub fn move_context_to_manifest(&mut self) -> Result<Option<(crate::Digest, Vec<u8>)>, WireError> {
        if !too_large_to_inline(&self.context) {
            return Ok(None);
        }
        let bytes = encode(&self.context)?;
        let digest = crate::Digest::of(&bytes);
        self.context = Vec::new();
        self.context_manifest = Some(digest.to_string());
        Ok(Some((digest, bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::EntryKind;
    use proptest::prelude::*;

    fn entries(n: usize) -> Vec<ContextEntry> {
        let digest = format!("sha256:{}", "e".repeat(64));
        (0..n)
            .map(|i| ContextEntry {
                path: format!("d{}/f{i}", i % 100).into_bytes(),
                kind: EntryKind::File { digest: digest.clone(), size: 0 },
                mode: 0o644,
                uid: 0,
                gid: 0,
            })
            .collect()
    }

    #[test]
    fn small_lists_stay_inline_large_ones_become_a_blob() {
        let mut small = BuildSpec { context: entries(10), ..BuildSpec::default() };
        assert_eq!(small.move_context_to_manifest().unwrap(), None);
        assert_eq!(small.context.len(), 10);
        assert_eq!(small.context_manifest, None);

        let all = entries(20_000);
        let mut large = BuildSpec { context: all.clone(), ..BuildSpec::default() };
        let (digest, bytes) = large.move_context_to_manifest().unwrap().expect("a blob");
        assert!(large.context.is_empty());
        assert_eq!(large.context_manifest.as_deref(), Some(digest.to_string().as_str()));
        assert_eq!(crate::Digest::of(&bytes), digest);
        assert_eq!(decode(&bytes).unwrap(), all);
        // The spec that names it is small.
        assert!(crate::wire::encode(&large).unwrap().len() < 4096);
    }

    #[test]
    fn bad_manifests_are_typed_errors() {
        assert_eq!(decode(b"{\"not\":\"a manifest\"}"), Err(ManifestError::BadMagic));
        let mut bytes = encode(&entries(3)).unwrap();
        bytes.truncate(bytes.len() - 5);
        assert!(matches!(decode(&bytes), Err(ManifestError::Decode(_))));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(tail in prop::collection::vec(any::<u8>(), 0..512)) {
            let mut bytes = MAGIC.to_vec();
            bytes.extend(tail);
            let _ = decode(&bytes);
        }
    }
}
