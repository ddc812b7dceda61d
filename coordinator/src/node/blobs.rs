//! Blob transfer with the CLI and the agents: context and cache uploads in chunks (verified
//! against their digest before they become visible), results read back, and which blobs a
//! tenant still has to send. Every blob is recorded against the tenant that sent it (see
//! [`super::owners`]): a tenant reads and builds with only what it has uploaded.

use super::reply::{bad, err, Answer};
use super::Node;
use kiln_shared::api::{BlobRequest, BlobResponse, BuildSpec, CacheRef, ContextEntry, EntryKind, Grant, GrantError, Principal, Role};
use kiln_shared::digest::Digest;
use kiln_shared::wire::{ErrorCode, RemoteError};

const MAX_CHUNK: u32 = 8 << 20;

fn parse_digest(d: &str) -> Result<Digest, RemoteError> {
    d.parse().map_err(|e| bad(format!("{d:?}: {e}")))
}

/// The tenant a blob transfer is for: a user's own, or the one an agent returns blobs for.
pub fn owner_of(p: &Principal, owner: Option<String>) -> Result<Option<String>, RemoteError> {
    match p.role {
        Role::Admin | Role::User => Ok(Some(p.tenant().to_string())),
        // Agents return blobs for a build's tenant; coordinators copy a tenant's blobs.
        Role::Agent | Role::Coordinator => Ok(owner),
    }
}

/// Why a submit is refused when this coordinator lacks blobs the build names: the CLI, told
/// so by its code, uploads them here and submits again.
pub fn missing_refusal() -> RemoteError {
    err(
        ErrorCode::BlobsMissing,
        "the build names context or cache blobs this tenant has not uploaded to this coordinator; upload them first",
    )
}

/// The entries of the context manifest blob `digest` (see [`kiln_shared::api::context`]),
/// from this coordinator's store (read verifies it by its digest).
pub fn read_manifest(node: &Node, digest: &str) -> Result<Vec<ContextEntry>, RemoteError> {
    let bytes = node.blobs.read(&parse_digest(digest)?).map_err(|_| missing_refusal())?;
    kiln_shared::api::context::decode(&bytes).map_err(|e| bad(format!("context manifest {digest}: {e}")))
}

/// The build's context entries when a manifest blob holds them (`None`: they are inline).
pub fn manifest_entries(node: &Node, spec: &BuildSpec) -> Result<Option<Vec<ContextEntry>>, RemoteError> {
    spec.context_manifest.as_deref().map(|d| read_manifest(node, d)).transpose()
}

/// Whether every blob a build names was uploaded by its tenant and is here (checked where it
/// was uploaded): `manifest`, the entries of its context manifest blob, if it has one.
pub fn owns_context(node: &Node, p: &Principal, spec: &BuildSpec, manifest: Option<&[ContextEntry]>) -> bool {
    if !matches!(p.role, Role::Admin | Role::User) {
        return true;
    }
    let mut checked = std::collections::HashSet::new();
    let mut here = |d: &str| {
        !checked.insert(d.to_string())
            || (node.owners.owns(p.tenant(), d) && d.parse::<Digest>().is_ok_and(|digest| node.blobs.has(&digest)))
    };
    let files = spec.all_entries().chain(manifest.unwrap_or_default()).filter_map(|e| match &e.kind {
        EntryKind::File { digest, .. } => Some(digest.as_str()),
        _ => None,
    });
    let caches = spec.cache_from.iter().filter_map(|c| match c {
        CacheRef::Uploaded { config } => Some(config.as_str()),
        CacheRef::Registry { .. } => None,
    });
    let manifest_blob = spec.context_manifest.as_deref();
    files.chain(caches).chain(spec.layout_blobs()).chain(manifest_blob).all(&mut here)
}

/// Serves a blob transfer of the CLI's or an agent's protocol.
pub fn serve(node: &Node, p: &Principal, req: BlobRequest) -> Answer<BlobResponse> {
    match req {
        BlobRequest::Get { digest, offset, len } => get_blob(node, p, &digest, offset, len),
        BlobRequest::Missing { digests, owner } => missing(node, owner_of(p, owner)?, digests),
        BlobRequest::Put { digest, offset, data, last, owner } => put_blob(node, owner_of(p, owner)?, &digest, offset, &data, last),
    }
}

/// Serves an agent's blob transfer under the grant of a slice it runs: it reads the build
/// tenant's uploads and the blobs the grant names, and returns blobs for that tenant only.
pub fn serve_agent(node: &Node, p: &Principal, req: BlobRequest, grant: Option<&Grant>) -> Answer<BlobResponse> {
    let denied = |why: String| err(ErrorCode::PermissionDenied, why);
    let grant = grant.ok_or_else(|| denied(GrantError::Missing.to_string()))?;
    grant.check(node.ca.cert_der().as_ref(), &p.name, super::now_ms()).map_err(|e| denied(e.to_string()))?;
    let for_tenant = |owner: &Option<String>| match owner {
        Some(t) if *t == grant.tenant => Ok(()),
        _ => Err(denied(format!("the slice grant of build {} returns blobs for tenant {} only", grant.build, grant.tenant))),
    };
    match &req {
        BlobRequest::Get { digest, .. } => {
            if !grant.blobs.contains(digest) && !node.owners.owns(&grant.tenant, digest) {
                return Err(denied(format!("the slice grant of build {} does not name blob {digest}", grant.build)));
            }
        }
        BlobRequest::Missing { owner, .. } | BlobRequest::Put { owner, .. } => for_tenant(owner)?,
    }
    serve(node, p, req)
}

pub fn get_blob(node: &Node, p: &Principal, digest: &str, offset: u64, len: u32) -> Answer<BlobResponse> {
    use std::io::{Read, Seek, SeekFrom};
    let d = parse_digest(digest)?;
    // Users read back only what their tenant owns (their uploads and their builds' results).
    if matches!(p.role, Role::Admin | Role::User) && !node.owners.owns(p.tenant(), digest) {
        return Err(err(ErrorCode::NotFound, format!("blob {digest} is not here")));
    }
    let mut f = node.blobs.open_blob(&d).map_err(|e| err(ErrorCode::NotFound, e.to_string()))?;
    f.seek(SeekFrom::Start(offset)).map_err(|e| err(ErrorCode::Internal, e.to_string()))?;
    let mut buf = Vec::new();
    f.take(u64::from(len.min(MAX_CHUNK))).read_to_end(&mut buf).map_err(|e| err(ErrorCode::Internal, e.to_string()))?;
    Ok(BlobResponse::Bytes(buf))
}

pub fn missing(node: &Node, owner: Option<String>, digests: Vec<String>) -> Answer<BlobResponse> {
    let mut out = Vec::new();
    let mut skipped = 0;
    for d in digests {
        let digest = parse_digest(&d)?;
        let have = node.blobs.has(&digest);
        if !have || owner.as_ref().is_some_and(|t| !node.owners.owns(t, &d)) {
            out.push(d);
        } else {
            // A use: the blob GC keeps what clients still send builds with.
            node.blobs.touch(&digest);
            skipped += node.blobs.size(&digest).unwrap_or(0);
        }
    }
    crate::metrics::get().upload_bytes.add(&["skipped"], skipped);
    Ok(BlobResponse::Missing(out))
}

/// Appends one chunk of an upload; the last one is verified against the digest before the blob
/// becomes visible.
pub fn put_blob(node: &Node, owner: Option<String>, digest: &str, offset: u64, data: &[u8], last: bool) -> Answer<BlobResponse> {
    use std::io::Write;
    let d = parse_digest(digest)?;
    let owned = |t: &Option<String>| t.as_ref().is_none_or(|t| node.owners.owns(t, digest));
    if node.blobs.has(&d) && owned(&owner) {
        // A use: its grace period against the blob GC starts again.
        node.blobs.touch(&d);
        return Ok(BlobResponse::Stored);
    }
    let own = || match &owner {
        Some(t) => node.owners.add(t, digest).map_err(|e| err(ErrorCode::Internal, format!("recording who uploaded {digest}: {e}"))),
        None => Ok(()),
    };
    // Uploads are kept apart per tenant: a tenant proves it has the content by sending it.
    let key = format!("{}\n{digest}", owner.as_deref().unwrap_or(""));
    let mut soft = node.soft();
    // Uploads nobody has continued for a while are given up (their partial files go).
    let abandon = std::time::Duration::from_secs(node.cfg.upload_abandon_secs);
    soft.uploads.retain(|_, u| {
        let keep = u.2.elapsed() < abandon;
        if !keep {
            let _ = std::fs::remove_file(&u.0);
        }
        keep
    });
    let (mut path, mut have) = match soft.uploads.get(&key) {
        Some(u) => (u.0.clone(), u.1),
        None => (node.blobs.temp_path(), 0),
    };
    if offset != have {
        if offset != 0 {
            // The server's offset is authoritative: the sender resumes from it.
            return Ok(BlobResponse::Resume { offset: have });
        }
        // A sender starting over (a CLI killed mid-upload and run again): so does the server.
        let _ = std::fs::remove_file(&path);
        (path, have) = (node.blobs.temp_path(), 0);
    }
    let io = |e: std::io::Error| err(ErrorCode::Internal, format!("storing {digest}: {e}"));
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(io)?;
    f.write_all(data).map_err(io)?;
    drop(f);
    crate::metrics::get().upload_bytes.add(&["sent"], data.len() as u64);
    if last {
        soft.uploads.remove(&key);
        drop(soft);
        // The content is verified even when the store already has the blob.
        let mut f = std::fs::File::open(&path).map_err(io)?;
        let (_, actual, _) = {
            let mut w = kiln_shared::digest::HashingWriter::new(std::io::sink());
            std::io::copy(&mut f, &mut w).map_err(io)?;
            w.finish()
        };
        if actual != d {
            let _ = std::fs::remove_file(&path);
            return Err(bad(format!("upload of {digest}: the content hashes to {actual}")));
        }
        let mut f = std::fs::File::open(&path).map_err(io)?;
        let result = node.blobs.put_reader(&mut f, &d);
        let _ = std::fs::remove_file(&path);
        result.map_err(|e| bad(format!("upload of {digest}: {e}")))?;
        // The store kept what it had (same bytes): the upload is its latest use all the same.
        node.blobs.touch(&d);
        own()?;
    } else {
        soft.uploads.insert(key, (path, have + data.len() as u64, std::time::Instant::now()));
    }
    Ok(BlobResponse::Stored)
}
