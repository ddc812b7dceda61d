//! Base images: pulling a manifest, its config and layers into the content store (peers
//! first, then the registry), and giving the frontend their configs while it resolves.

use super::{Agent, EngineError, State};
use crate::layers::Layer;
use kiln_shared::digest::Digest;
use kiln_shared::frontend::resolve::{BaseConfig, BaseImages};
use kiln_shared::oci::{self, ImageConfig, Index, Manifest};
use kiln_shared::registry::Reference;
use kiln_shared::Platform;
use std::sync::Mutex;

impl Agent {
    /// Pulls `image` for `platform`: manifest, config and layers into the store.
    pub(super) fn pull(&self, image: &str, platform: &Platform) -> Result<(State, Digest), EngineError> {
        let key = (image.to_string(), platform.clone());
        if let Some(hit) = self.pulled.lock().ok().and_then(|p| p.get(&key).cloned()) {
            // A prune may have removed the layers since: then the image is pulled again.
            if hit.0.layers.iter().all(|l| self.store.has(&l.digest)) {
                return Ok(hit);
            }
        }
        let r: Reference = image.parse()?;
        let mut fetched = self.registry.get_manifest(&r)?;
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
            fetched = self.registry.get_manifest(&r.with_digest(desc.digest.clone()))?;
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
            p.insert(key, out.clone());
        }
        Ok(out)
    }

    /// A base image's blob: from the store, else from peers, else from its registry.
    fn fetch_base_blob(&self, r: &Reference, d: &Digest) -> Result<(), EngineError> {
        if self.store.has(d) || self.peers.get().is_some_and(|p| p.blob(d, &self.store)) {
            return Ok(());
        }
        Ok(self.registry.fetch_blob(r, d, &self.store)?)
    }
}

/// Base-image configs for resolution, pulled from registries.
pub(super) struct RegistryImages<'a> {
    pub agent: &'a Agent,
    /// Why a base image could not be had (the frontend only hears "no config").
    pub errors: Mutex<Vec<EngineError>>,
}

impl BaseImages for RegistryImages<'_> {
    fn config(&self, image: &str, platform: &Platform) -> Option<BaseConfig> {
        match self.agent.pull(image, platform) {
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
