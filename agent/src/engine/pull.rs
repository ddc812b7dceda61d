//! Base images: pulling a manifest, its config and layers into the content store (peers
//! first, then the registry), and giving the frontend their configs while it resolves.

use super::{Agent, EngineError, State};
use crate::layers::Layer;
use kiln_shared::digest::Digest;
use kiln_shared::frontend::resolve::{BaseConfig, BaseImages};
use kiln_shared::oci::{self, ImageConfig, Index, Manifest};
use kiln_shared::registry::{Fetched, Reference};
use kiln_shared::Platform;
use std::sync::Mutex;
use std::time::Instant;

/// How long a base image's tag, once resolved, is taken as is (as BuildKit's resolver caches).
pub(super) const REUSE_PULL: std::time::Duration = std::time::Duration::from_secs(60);

impl Agent {
    /// Pulls `image` for `platform`: manifest, config and layers into the store.
    /// `since`: only a pull made after it counts (`--pull`).
    pub(super) fn pull(&self, image: &str, platform: &Platform, since: Instant) -> Result<(State, Digest), EngineError> {
        let key = (image.to_string(), platform.clone());
        if let Some((state, digest, at)) = self.pulled.lock().ok().and_then(|p| p.get(&key).cloned()) {
            // A prune may have removed the layers since: then the image is pulled again.
            if at >= since && state.layers.iter().all(|l| self.store.has(&l.digest)) {
                return Ok((state, digest));
            }
        }
        let layout = image.strip_prefix(super::LAYOUT_PREFIX);
        // A registry's image, or an OCI layout's (its blobs came with the context).
        let get = |r: &Reference| -> Result<Fetched, EngineError> {
            match (layout, &r.digest) {
                (Some(_), Some(d)) => self.stored_manifest(image, d),
                _ => Ok(self.registry.get_manifest(r)?),
            }
        };
        let r: Reference = match layout {
            Some(d) => format!("oci-layout.invalid/layout@{d}").parse()?,
            None => image.parse()?,
        };
        let mut fetched = get(&r)?;
        if fetched.media_type == oci::MEDIA_INDEX || fetched.media_type == oci::DOCKER_MANIFEST_LIST {
            let index: Index =
                serde_json::from_slice(&fetched.bytes).map_err(|e| EngineError::Copy(format!("image {image}: bad index: {e}")))?;
            let pick =
                index.manifests.iter().find(|d| d.platform.as_ref().and_then(|p| p.to_platform()).is_some_and(|p| p == *platform)).or_else(
                    || {
                        index
                            .manifests
                            .iter()
                            .find(|d| d.platform.as_ref().is_some_and(|p| p.os == platform.os() && p.architecture == platform.arch()))
                    },
                );
            let Some(desc) = pick else {
                let available: Vec<String> = index
                    .manifests
                    .iter()
                    .filter(|d| !kiln_shared::attest::is_attestation(d))
                    .filter_map(|d| d.platform.as_ref())
                    .map(|p| format!("{}/{}{}", p.os, p.architecture, p.variant.as_ref().map(|v| format!("/{v}")).unwrap_or_default()))
                    .collect();
                return Err(EngineError::MissingPlatform {
                    image: image.to_string(),
                    platform: platform.to_string(),
                    available: available.join(", "),
                });
            };
            fetched = get(&r.with_digest(desc.digest.clone()))?;
        }
        let manifest: Manifest =
            serde_json::from_slice(&fetched.bytes).map_err(|e| EngineError::Copy(format!("image {image}: bad manifest: {e}")))?;
        self.fetch_base_blob(&r, &manifest.config.digest)?;
        let config: ImageConfig = serde_json::from_slice(&self.store.read(&manifest.config.digest)?)
            .map_err(|e| EngineError::Copy(format!("image {image}: bad config: {e}")))?;
        if config.architecture != platform.arch() {
            return Err(EngineError::MissingPlatform {
                image: image.to_string(),
                platform: platform.to_string(),
                available: format!("{}/{}", config.os, config.architecture),
            });
        }
        let mut layers = Vec::new();
        for (i, l) in manifest.layers.iter().enumerate() {
            self.fetch_base_blob(&r, &l.digest)?;
            let diff_id = config
                .rootfs
                .diff_ids
                .get(i)
                .cloned()
                .ok_or_else(|| EngineError::Copy(format!("image {image}: config lists fewer diff_ids than the manifest has layers")))?;
            let media_type = if l.media_type == oci::DOCKER_LAYER_GZIP { oci::MEDIA_LAYER_GZIP.to_string() } else { l.media_type.clone() };
            layers.push(Layer { digest: l.digest.clone(), diff_id, size: l.size, media_type });
        }
        let state = State { config, layers, key: fetched.digest.to_string() };
        let out = (state, fetched.digest);
        if let Ok(mut p) = self.pulled.lock() {
            p.insert(key, (out.0.clone(), out.1.clone(), Instant::now()));
        }
        Ok(out)
    }

    /// A manifest or index of an OCI layout, from the store.
    fn stored_manifest(&self, image: &str, d: &Digest) -> Result<Fetched, EngineError> {
        let bytes = self.store.read(d).map_err(|_| EngineError::Copy(format!("{image}: the layout has no blob {d}")))?;
        let media_type = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("mediaType").and_then(|m| m.as_str()).map(str::to_string))
            .unwrap_or_else(|| oci::MEDIA_MANIFEST.to_string());
        Ok(Fetched { media_type, digest: d.clone(), bytes })
    }

    /// A base image's blob: from the store, else from peers, else from its registry.
    fn fetch_base_blob(&self, r: &Reference, d: &Digest) -> Result<(), EngineError> {
        if self.store.has(d) || self.peers.get().is_some_and(|p| p.blob(d, &self.store)) {
            return Ok(());
        }
        self.registry.fetch_blob(r, d, &self.store)?;
        crate::metrics::get().fetched_bytes.add(&["origin"], self.store.size(d).unwrap_or(0));
        Ok(())
    }
}

/// Base-image configs for resolution, pulled from registries.
pub(super) struct RegistryImages<'a> {
    pub agent: &'a Agent,
    /// `--pull`: see [`Agent::pull`].
    pub since: Instant,
    /// Why a base image could not be had (the frontend only hears "no config").
    pub errors: Mutex<Vec<EngineError>>,
}

impl BaseImages for RegistryImages<'_> {
    fn config(&self, image: &str, platform: &Platform) -> Option<BaseConfig> {
        match self.agent.pull(image, platform, self.since) {
            Ok((state, _)) => {
                let c = &state.config.config;
                Some(BaseConfig {
                    env: c.env_pairs(),
                    workdir: Some(c.working_dir.clone()).filter(|w| !w.is_empty()),
                    shell: c.shell.clone(),
                    onbuild: c.on_build.clone().unwrap_or_default(),
                })
            }
            Err(e) => {
                if let Ok(mut errs) = self.errors.lock() {
                    errs.push(e);
                }
                None
            }
        }
    }
}
