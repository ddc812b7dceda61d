//! No single point of failure between upload and result: before a build is accepted, the
//! coordinator that received its uploads copies every blob the build names to one other member
//! (the next by id that answers), and the build's slices may fetch them from either. A lone
//! coordinator (the embedded farm) has no one to copy to.

use super::Node;
use kiln_shared::api::{BlobRequest, BlobResponse, BuildSpec, CacheRef, ContextEntry, CoordinatorRequest, CoordinatorResponse, EntryKind};
use kiln_shared::digest::Digest;
use std::net::SocketAddr;
use std::time::Duration;

const CHUNK: usize = 4 << 20;

/// A member that failed to take a copy is not asked again for this long: while one is down,
/// builds do not each wait for its connect timeout.
const SKIP_FAILED: Duration = Duration::from_secs(30);

/// Members that recently failed to take a copy, and when.
static FAILED: std::sync::Mutex<Vec<(SocketAddr, std::time::Instant)>> = std::sync::Mutex::new(Vec::new());

fn recently_failed(addr: SocketAddr) -> bool {
    let mut failed = FAILED.lock().unwrap_or_else(|e| e.into_inner());
    failed.retain(|(_, at)| at.elapsed() < SKIP_FAILED);
    failed.iter().any(|(a, _)| *a == addr)
}

fn failed(addr: SocketAddr) {
    FAILED.lock().unwrap_or_else(|e| e.into_inner()).push((addr, std::time::Instant::now()));
}

/// Every blob `spec` names that the slices fetch from a coordinator (`manifest`: the entries
/// of its context manifest blob, which is one of them).
fn named(node: &Node, spec: &BuildSpec, manifest: Option<&[ContextEntry]>) -> Vec<String> {
    let mut out: Vec<String> = spec
        .all_entries()
        .chain(manifest.unwrap_or_default())
        .filter_map(|e| match &e.kind {
            EntryKind::File { digest, .. } => Some(digest.clone()),
            _ => None,
        })
        .collect();
    out.extend(spec.layout_blobs().map(str::to_string));
    out.extend(spec.context_manifest.clone());
    for c in &spec.cache_from {
        if let CacheRef::Uploaded { config } = c {
            out.push(config.clone());
            if let Some(bytes) = config.parse::<Digest>().ok().and_then(|d| node.blobs.read(&d).ok()) {
                out.extend(super::blob_gc::digests_in(&String::from_utf8_lossy(&bytes)));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The other members, the next ids after this one first.
fn others(node: &Node) -> Vec<SocketAddr> {
    let m = node.raft.metrics().borrow().clone();
    let mut members: Vec<(u64, SocketAddr)> = m
        .membership_config
        .membership()
        .nodes()
        .filter(|(id, _)| **id != node.id)
        .filter_map(|(id, n)| Some((*id, n.addr.parse().ok()?)))
        .collect();
    members.sort_by_key(|(id, _)| (*id < node.id, *id));
    members.into_iter().map(|(_, a)| a).collect()
}

async fn call(node: &Node, addr: SocketAddr, req: BlobRequest) -> Result<BlobResponse, String> {
    let timeout = Duration::from_millis(node.cfg.forward_timeout_ms);
    match node.pool.coordinator(addr, &CoordinatorRequest::Blob(req), timeout).await {
        Ok(CoordinatorResponse::Blob(r)) => Ok(r),
        Ok(other) => Err(format!("unexpected answer {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Copies what `to` lacks of `digests`, recorded for `tenant` there.
async fn copy_to(node: &Node, to: SocketAddr, tenant: &str, digests: &[String]) -> Result<(), String> {
    let owner = Some(tenant.to_string());
    let missing = match call(node, to, BlobRequest::Missing { digests: digests.to_vec(), owner: owner.clone() }).await? {
        BlobResponse::Missing(m) => m,
        other => return Err(format!("unexpected answer {other:?}")),
    };
    for d in missing {
        let digest: Digest = d.parse().map_err(|e| format!("{d}: {e}"))?;
        let bytes = node.blobs.read(&digest).map_err(|e| e.to_string())?;
        let mut offset = 0usize;
        loop {
            let end = (offset + CHUNK).min(bytes.len());
            let req = BlobRequest::Put {
                digest: d.clone(),
                offset: offset as u64,
                data: bytes[offset..end].to_vec(),
                last: end == bytes.len(),
                owner: owner.clone(),
            };
            match call(node, to, req).await? {
                BlobResponse::Stored => {}
                BlobResponse::Resume { offset: o } => {
                    offset = o as usize;
                    continue;
                }
                other => return Err(format!("unexpected answer {other:?}")),
            }
            if end == bytes.len() {
                break;
            }
            offset = end;
        }
    }
    Ok(())
}

/// Copies the build's blobs to one other member; returns where they now are besides here
/// (nothing when no other member took them: the build then depends on this one, as before).
pub async fn replicate(node: &Node, tenant: &str, spec: &BuildSpec, manifest: Option<&[ContextEntry]>) -> Vec<SocketAddr> {
    let digests = named(node, spec, manifest);
    if digests.is_empty() {
        return vec![];
    }
    let candidates = others(node);
    // Members that failed lately come last, not never: one may be the only other left.
    let (fresh, stale): (Vec<SocketAddr>, Vec<SocketAddr>) = candidates.into_iter().partition(|a| !recently_failed(*a));
    for to in fresh.into_iter().chain(stale) {
        match copy_to(node, to, tenant, &digests).await {
            Ok(()) => return vec![to],
            Err(e) => {
                failed(to);
                tracing::warn!(coordinator = node.id, to = %to, "copying a build's blobs: {e}");
            }
        }
    }
    vec![]
}
