//! Writing images: the manifest and config of a built state, its zstd twin, and its
//! filesystem exported as a directory (`type=local`).

use super::{rfc3339, Agent, EngineError, SliceResult, State};
use crate::error::io_err;
use crate::layers::{self, Layer, Whiteouts};
use kiln_shared::digest::Digest;
use kiln_shared::oci::{self, Descriptor, Manifest};
use kiln_shared::Platform;
use std::path::Path;

impl Agent {
    /// Writes `state`'s config and manifest into the store: the manifest (its platform set)
    /// and every blob of the image.
    pub(super) fn write_image(
        &self,
        state: &State,
        platform: &Platform,
        epoch: Option<u64>,
    ) -> Result<(Descriptor, Vec<Digest>), EngineError> {
        let mut config = state.config.clone();
        config.created = epoch.map(rfc3339).or(config.created);
        let config_bytes = oci::to_json(&config);
        let config_digest = self.store.put(&config_bytes)?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(oci::MEDIA_MANIFEST.into()),
            config: Descriptor::new(oci::MEDIA_CONFIG, config_digest.clone(), config_bytes.len() as u64),
            layers: state.layers.iter().map(|l| Descriptor::new(&l.media_type, l.digest.clone(), l.size)).collect(),
            annotations: Default::default(),
        };
        let bytes = oci::to_json(&manifest);
        let digest = self.store.put(&bytes)?;
        let mut desc = Descriptor::new(oci::MEDIA_MANIFEST, digest.clone(), bytes.len() as u64);
        desc.platform = Some(platform.into());
        let mut blobs: Vec<Digest> = state.layers.iter().map(|l| l.digest.clone()).collect();
        blobs.push(config_digest);
        blobs.push(digest);
        Ok((desc, blobs))
    }

    /// The same image with zstd-compressed layers: a new manifest, same config.
    pub fn zstd_image(&self, slice: &SliceResult) -> Result<(Descriptor, Vec<Digest>), EngineError> {
        let manifest: Manifest = serde_json::from_slice(&self.store.read(&slice.manifest.digest)?)
            .map_err(|e| EngineError::Copy(format!("reading back the manifest: {e}")))?;
        let mut layers = Vec::new();
        for l in &slice.layers {
            layers.push(if l.media_type == oci::MEDIA_LAYER_ZSTD { l.clone() } else { layers::to_zstd(&self.store, l)? });
        }
        let new =
            Manifest { layers: layers.iter().map(|l| Descriptor::new(&l.media_type, l.digest.clone(), l.size)).collect(), ..manifest };
        let bytes = oci::to_json(&new);
        let digest = self.store.put(&bytes)?;
        let mut desc = Descriptor::new(oci::MEDIA_MANIFEST, digest.clone(), bytes.len() as u64);
        desc.platform = slice.manifest.platform.clone();
        let mut blobs: Vec<Digest> = layers.iter().map(|l| l.digest.clone()).collect();
        blobs.push(new.config.digest.clone());
        blobs.push(digest);
        Ok((desc, blobs))
    }

    /// Writes the final filesystem of an image (its layers applied in order) into `dest`.
    pub fn export_rootfs(&self, layers: &[Layer], dest: &Path) -> Result<(), EngineError> {
        std::fs::create_dir_all(dest).map_err(io_err(format!("creating {}", dest.display())))?;
        for l in layers {
            layers::unpack(&self.store, &l.digest, dest, Whiteouts::Delete)?;
        }
        Ok(())
    }
}
