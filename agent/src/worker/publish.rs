//! What a slice built leaves the agent by: pushed to registries by digest, or sent back to
//! the coordinator that received the build (`-o type=oci` on a farm).

use super::error::SliceError;
use super::Worker;
use crate::engine::Agent;
use kiln_shared::api::{AgentRequest, AgentResponse, BlobRequest, BlobResponse};
use kiln_shared::client::AgentFarm;
use kiln_shared::digest::Digest;
use kiln_shared::oci;
use kiln_shared::registry::Reference;
use std::time::Duration;

/// Pushes one platform's blobs and its manifest (by digest) to every tag's repository; the
/// coordinator pushes the index once every slice is done.
pub(super) fn push(engine: &Agent, tags: &[String], image: &(oci::Descriptor, Vec<Digest>)) -> Result<(), SliceError> {
    let (manifest, blobs) = image;
    let (last, rest) = blobs.split_last().ok_or(SliceError::NoBlobs)?;
    for tag in tags {
        let r: Reference = tag.parse().map_err(|source| SliceError::Tag { tag: tag.clone(), source })?;
        let bytes = engine.store.read(last)?;
        let mut round = 0;
        loop {
            for b in rest {
                let sent = engine.registry.push_blob(&r, b, &engine.store).map_err(|source| SliceError::PushBlob {
                    blob: b.clone(),
                    tag: tag.clone(),
                    source,
                })?;
                let result = if sent { "sent" } else { "skipped" };
                crate::metrics::get().upload_bytes.add(&[result], engine.store.size(b).unwrap_or(0));
            }
            match engine.registry.put_manifest(&r, manifest.digest.as_str(), oci::MEDIA_MANIFEST, &bytes) {
                Ok(()) => break,
                // Another slice pushing the same blob (a layer both platforms share) may have
                // had it answered as present before the registry linked it: the blobs are
                // pushed again (what is there is skipped) and the manifest with them.
                Err(e) if round < 3 && blob_unknown(&e) => {
                    round += 1;
                    tracing::debug!(tag = %tag, "the registry did not know a blob of the manifest yet: pushing again ({e})");
                    std::thread::sleep(std::time::Duration::from_millis(200 * round));
                }
                Err(source) => return Err(SliceError::PushManifest { tag: tag.clone(), source }),
            }
        }
    }
    Ok(())
}

/// The registry refused a manifest for a blob it does not know (yet).
fn blob_unknown(e: &kiln_shared::registry::RegistryError) -> bool {
    e.to_string().contains("MANIFEST_BLOB_UNKNOWN")
}

/// Sends the blobs the origin coordinator lacks, in chunks (for `-o type=oci` on a farm).
pub(super) async fn send_blobs(w: &Worker, origin: &AgentFarm, blobs: &[Digest], tenant: &str) -> Result<(), SliceError> {
    let digests = blobs.iter().map(|d| d.to_string()).collect();
    let ask = AgentRequest::Blob(BlobRequest::Missing { digests, owner: Some(tenant.to_string()) }, origin.grant());
    let deadline = Duration::from_millis(w.cfg.return_blobs_deadline_ms);
    let missing = match origin.call(&ask, deadline, deadline).await {
        Ok(AgentResponse::Blob(BlobResponse::Missing(d))) => d,
        Ok(other) => return Err(SliceError::Unexpected(Box::new(other))),
        Err(e) => return Err(SliceError::Return(e)),
    };
    let m = crate::metrics::get();
    for b in blobs.iter().filter(|b| !missing.contains(&b.to_string())) {
        m.upload_bytes.add(&["skipped"], w.engine.store.size(b).unwrap_or(0));
    }
    for digest in missing {
        let d: Digest = digest.parse().map_err(SliceError::digest(&digest))?;
        let mut f = w.engine.store.open_blob(&d)?;
        origin.send_blob(&digest, &mut f, Some(tenant)).await.map_err(SliceError::SendBlob)?;
        m.upload_bytes.add(&["sent"], w.engine.store.size(&d).unwrap_or(0));
    }
    Ok(())
}
