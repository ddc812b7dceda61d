//! Step cache export and import (`--cache-to`, `--cache-from`, in buildx's syntax).
//!
//! An exported cache is an OCI image manifest: its config (media type [`CONFIG_TYPE`]) lists
//! the records, each a step's cache key and the image state it gives; its layers are every
//! layer blob those records name. `type=local` writes it as an OCI layout directory,
//! `type=registry` pushes it to a repository under the reference's tag. Records are exported
//! by key, not by scoped name: whoever imports a cache uses it in their own scope.

use crate::engine::{EngineError, RemoteCache, State};
use kiln_shared::api::CacheRecord;
use kiln_shared::digest::Digest;
use kiln_shared::oci::{self, Descriptor, Index, Manifest};
use kiln_shared::registry::{Reference, RegistryClient};
use kiln_shared::store::ContentStore;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

pub const CONFIG_TYPE: &str = "application/vnd.kiln.cache.config.v1+json";

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CacheConfig {
    pub records: Vec<CacheRecord>,
}

fn bad(what: impl Into<String>) -> EngineError {
    EngineError::Copy(what.into())
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> EngineError {
    move |source| EngineError::Io { what, source }
}

/// The records to export (`max`: all; else the final image's), one per key.
pub fn select(records: impl IntoIterator<Item = CacheRecord>, max: bool) -> Vec<CacheRecord> {
    let mut seen = HashSet::new();
    records.into_iter().filter(|r| (max || r.in_final) && seen.insert(r.key.clone())).collect()
}

/// Layer blobs the records name, each once.
pub fn layers(records: &[CacheRecord]) -> Result<Vec<Descriptor>, EngineError> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for r in records {
        let state: State = serde_json::from_str(&r.state_json).map_err(|e| bad(format!("cache record {}: {e}", r.key)))?;
        for l in state.layers {
            if seen.insert(l.digest.clone()) {
                out.push(Descriptor::new(&l.media_type, l.digest, l.size));
            }
        }
    }
    Ok(out)
}

/// The cache's config and manifest, stored in `store`; returns the manifest's descriptor.
fn manifest(records: &[CacheRecord], store: &ContentStore) -> Result<(Descriptor, Vec<Descriptor>), EngineError> {
    let config = oci::to_json(&CacheConfig { records: records.to_vec() });
    let config_digest = store.put(&config)?;
    let layers = layers(records)?;
    let m = Manifest {
        schema_version: 2,
        media_type: Some(oci::MEDIA_MANIFEST.into()),
        config: Descriptor::new(CONFIG_TYPE, config_digest, config.len() as u64),
        layers: layers.clone(),
        annotations: Default::default(),
    };
    let bytes = oci::to_json(&m);
    let d = store.put(&bytes)?;
    let mut blobs = layers;
    blobs.push(m.config);
    Ok((Descriptor::new(oci::MEDIA_MANIFEST, d, bytes.len() as u64), blobs))
}

/// `--cache-to type=local,dest=D`: an OCI layout directory (blobs already there are kept).
pub fn write_local(dest: &Path, records: &[CacheRecord], store: &ContentStore) -> Result<(), EngineError> {
    let (desc, blobs) = manifest(records, store)?;
    let dir = dest.join("blobs/sha256");
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    for d in blobs.iter().map(|b| &b.digest).chain([&desc.digest]) {
        let target = dir.join(d.hex());
        if !target.exists() {
            let tmp = dir.join(format!(".{}.tmp", d.hex()));
            std::fs::copy(store.path(d), &tmp)
                .and_then(|_| std::fs::rename(&tmp, &target))
                .map_err(io(format!("writing {}", target.display())))?;
        }
    }
    std::fs::write(dest.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io(format!("writing {}", dest.display())))?;
    let index = Index::new(vec![desc]);
    let tmp = dest.join(".index.json.tmp");
    std::fs::write(&tmp, oci::to_json(&index))
        .and_then(|_| std::fs::rename(&tmp, dest.join("index.json")))
        .map_err(io(format!("writing {}/index.json", dest.display())))
}

/// `--cache-to type=registry,ref=R`: pushes the layers, the config and the manifest under R.
pub fn push_registry(
    reference: &str,
    records: &[CacheRecord],
    store: &ContentStore,
    registry: &RegistryClient,
) -> Result<Digest, EngineError> {
    push_layers(reference, records, store, registry)?;
    push_manifest(reference, records, store, registry)
}

/// The config and manifest of a cache whose layers are already in the registry (a farm's
/// agents push their own; the leader writes the one manifest for every platform).
pub fn push_manifest(
    reference: &str,
    records: &[CacheRecord],
    store: &ContentStore,
    registry: &RegistryClient,
) -> Result<Digest, EngineError> {
    let r: Reference = reference.parse()?;
    let (desc, blobs) = manifest(records, store)?;
    if let Some(config) = blobs.last() {
        registry.push_blob(&r, &config.digest, store)?;
    }
    let tag = r.tag.clone().unwrap_or_else(|| "latest".into());
    registry.put_manifest(&r, &tag, oci::MEDIA_MANIFEST, &store.read(&desc.digest)?)?;
    Ok(desc.digest)
}

/// Only the layer blobs of `records` (what an agent pushes before the cache's manifest is
/// written by whoever merges the platforms).
pub fn push_layers(reference: &str, records: &[CacheRecord], store: &ContentStore, registry: &RegistryClient) -> Result<(), EngineError> {
    let r: Reference = reference.parse()?;
    for b in layers(records)? {
        registry.push_blob(&r, &b.digest, store)?;
    }
    Ok(())
}

enum Blobs {
    /// The caller fetches them (an uploaded cache's blobs are on a coordinator).
    Elsewhere,
    Dir(PathBuf),
    Registry(Reference, Box<RegistryClient>),
}

/// An imported cache (`--cache-from`): records by key, blobs fetched on a hit.
pub struct Imported {
    records: BTreeMap<String, String>,
    blobs: Blobs,
    pub source: String,
}

impl Imported {
    fn new(config: &[u8], blobs: Blobs, source: String) -> Result<Imported, EngineError> {
        let c: CacheConfig = serde_json::from_slice(config).map_err(|e| bad(format!("cache {source}: bad config: {e}")))?;
        Ok(Imported { records: c.records.into_iter().map(|r| (r.key, r.state_json)).collect(), blobs, source })
    }

    fn config_of(manifest: &[u8], source: &str) -> Result<Digest, EngineError> {
        let m: Manifest = serde_json::from_slice(manifest).map_err(|e| bad(format!("cache {source}: bad manifest: {e}")))?;
        if m.config.media_type != CONFIG_TYPE {
            return Err(bad(format!("{source} is not a kiln cache (its config is {})", m.config.media_type)));
        }
        Ok(m.config.digest)
    }

    /// `type=local,src=D`.
    pub fn local(src: &Path) -> Result<Imported, EngineError> {
        let source = src.display().to_string();
        let read = |p: PathBuf| std::fs::read(&p).map_err(io(format!("reading cache {}", p.display())));
        let index: Index =
            serde_json::from_slice(&read(src.join("index.json"))?).map_err(|e| bad(format!("cache {source}: bad index.json: {e}")))?;
        let m = index.manifests.first().ok_or_else(|| bad(format!("cache {source}: index.json lists no manifest")))?;
        let blob = |d: &Digest| src.join("blobs/sha256").join(d.hex());
        let manifest = read(blob(&m.digest))?;
        if Digest::of(&manifest) != m.digest {
            return Err(bad(format!("cache {source}: its manifest does not match its digest")));
        }
        let config_digest = Self::config_of(&manifest, &source)?;
        let config = read(blob(&config_digest))?;
        if Digest::of(&config) != config_digest {
            return Err(bad(format!("cache {source}: its config does not match its digest")));
        }
        Self::new(&config, Blobs::Dir(src.join("blobs/sha256")), source)
    }

    /// `type=registry,ref=R`.
    pub fn registry(reference: &str, registry: RegistryClient, store: &ContentStore) -> Result<Imported, EngineError> {
        let r: Reference = reference.parse()?;
        let fetched = registry.get_manifest(&r)?;
        let config_digest = Self::config_of(&fetched.bytes, reference)?;
        registry.fetch_blob(&r, &config_digest, store)?;
        let config = store.read(&config_digest)?;
        Self::new(&config, Blobs::Registry(r, Box::new(registry)), reference.to_string())
    }

    /// An uploaded cache's config (the blobs come from `fetch`).
    pub fn from_config(config: &[u8], source: String) -> Result<Imported, EngineError> {
        Self::new(config, Blobs::Elsewhere, source)
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn blob_from(&self, d: &Digest, store: &ContentStore) -> bool {
        match &self.blobs {
            Blobs::Elsewhere => false,
            Blobs::Dir(dir) => std::fs::File::open(dir.join(d.hex())).is_ok_and(|mut f| store.put_reader(&mut f, d).is_ok()),
            Blobs::Registry(r, client) => client.fetch_blob(r, d, store).is_ok(),
        }
    }
}

impl RemoteCache for Imported {
    fn record(&self, _name: &str, key: &str) -> Option<Vec<u8>> {
        self.records.get(key).map(|s| s.as_bytes().to_vec())
    }

    fn blob(&self, d: &Digest, store: &ContentStore) -> bool {
        self.blob_from(d, store)
    }

    fn source(&self) -> &'static str {
        match self.blobs {
            Blobs::Registry(..) => "registry",
            Blobs::Dir(_) | Blobs::Elsewhere => "cache_dir",
        }
    }
}
