//! The embedded farm: one coordinator and one agent in this process.
//!
//! A build is split into one slice per platform; each slice runs on the agent (in parallel,
//! one thread per slice, as they would on separate agents); the coordinator then merges the
//! per-platform manifests into one OCI image index and writes the outputs. A real farm uses the
//! same steps with the agent at the other end of a QUIC connection.

use anyhow::{anyhow, bail, Context as _};
use kiln_agent::cache::{self, Imported};
use kiln_agent::engine::RemoteCache;
use kiln_agent::{Agent, EngineError, Event, SliceRequest, SliceResult};
use kiln_shared::digest::Digest;
use kiln_shared::frontend::dockerignore::DockerIgnore;
use kiln_shared::layout;
use kiln_shared::oci::{self, Descriptor, Index};
use kiln_shared::registry::Reference;
use kiln_shared::Platform;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Where the result goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Oci { dest: PathBuf, zstd: bool },
    Local { dest: PathBuf },
    Registry { zstd: bool },
}

impl Output {
    /// buildx's `-o` syntax: `type=oci,dest=F`, `type=local,dest=D`, `type=registry`, or a bare path (local).
    pub fn parse(spec: &str) -> anyhow::Result<Output> {
        if !spec.contains('=') {
            return Ok(Output::Local { dest: PathBuf::from(spec) });
        }
        let mut kind = None;
        let mut dest = None;
        let mut zstd = false;
        for field in spec.split(',') {
            let (k, v) = field.split_once('=').ok_or_else(|| anyhow!("-o {spec:?}: {field:?} is not key=value"))?;
            match (k.trim(), v.trim()) {
                ("type", v) => kind = Some(v.to_string()),
                ("dest", v) => dest = Some(PathBuf::from(v)),
                ("compression", "gzip") => zstd = false,
                ("compression", "zstd") => zstd = true,
                ("compression", other) => bail!("-o {spec:?}: compression={other} is not supported (expected gzip or zstd)"),
                // Accepted for buildx compatibility; kiln's behaviour already matches them.
                ("push" | "name" | "oci-mediatypes" | "compression-level" | "force-compression", _) => {}
                (other, _) => bail!("-o {spec:?}: unknown option {other:?} (expected type, dest, compression)"),
            }
        }
        let need_dest = |kind: &str| dest.clone().ok_or_else(|| anyhow!("-o type={kind} needs dest=PATH"));
        match kind.as_deref() {
            Some("oci") => Ok(Output::Oci { dest: need_dest("oci")?, zstd }),
            Some("local") => Ok(Output::Local { dest: need_dest("local")? }),
            Some("registry" | "image") => Ok(Output::Registry { zstd }),
            Some(other) => bail!("-o type={other} is not supported (expected oci, local or registry)"),
            None => bail!("-o {spec:?} needs type=oci|local|registry"),
        }
    }

    pub fn is_registry(&self) -> bool {
        matches!(self, Output::Registry { .. })
    }
}

/// `--cache-from`, in buildx's syntax.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheFrom {
    Local { src: PathBuf },
    Registry { reference: String },
}

/// `--cache-to`, in buildx's syntax (`mode=min` unless `mode=max`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheTo {
    Local { dest: PathBuf, max: bool },
    Registry { reference: String, max: bool },
}

/// `k=v,k=v` fields of a cache spec; a bare value is a registry reference (as buildx reads it).
fn cache_fields(flag: &str, spec: &str) -> anyhow::Result<Vec<(String, String)>> {
    if !spec.contains('=') {
        return Ok(vec![("type".into(), "registry".into()), ("ref".into(), spec.to_string())]);
    }
    spec.split(',')
        .map(|f| {
            let (k, v) = f.split_once('=').ok_or_else(|| anyhow!("{flag} {spec:?}: {f:?} is not key=value"))?;
            Ok((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

impl CacheFrom {
    pub fn parse(spec: &str) -> anyhow::Result<CacheFrom> {
        let fields = cache_fields("--cache-from", spec)?;
        let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone());
        for (k, _) in &fields {
            if !["type", "src", "ref", "digest", "tag"].contains(&k.as_str()) {
                bail!("--cache-from {spec:?}: unknown option {k:?} (expected type, src, ref)");
            }
        }
        match get("type").as_deref() {
            Some("local") => {
                Ok(CacheFrom::Local { src: get("src").map(PathBuf::from).ok_or_else(|| anyhow!("--cache-from type=local needs src=DIR"))? })
            }
            Some("registry") => Ok(CacheFrom::Registry { reference: checked_ref("--cache-from", get("ref"))? }),
            Some(other) => bail!("--cache-from type={other} is not supported (expected local or registry)"),
            None => bail!("--cache-from {spec:?} needs type=local|registry"),
        }
    }
}

impl CacheTo {
    pub fn parse(spec: &str) -> anyhow::Result<CacheTo> {
        let fields = cache_fields("--cache-to", spec)?;
        let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone());
        let max = match get("mode").as_deref() {
            None | Some("min") => false,
            Some("max") => true,
            Some(other) => bail!("--cache-to mode={other}: expected min or max"),
        };
        for (k, _) in &fields {
            // Accepted for buildx compatibility; kiln's format does not depend on them.
            if ![
                "type",
                "dest",
                "ref",
                "mode",
                "compression",
                "compression-level",
                "force-compression",
                "oci-mediatypes",
                "image-manifest",
                "ignore-error",
            ]
            .contains(&k.as_str())
            {
                bail!("--cache-to {spec:?}: unknown option {k:?} (expected type, dest, ref, mode)");
            }
        }
        match get("type").as_deref() {
            Some("local") => Ok(CacheTo::Local {
                dest: get("dest").map(PathBuf::from).ok_or_else(|| anyhow!("--cache-to type=local needs dest=DIR"))?,
                max,
            }),
            Some("registry") => Ok(CacheTo::Registry { reference: checked_ref("--cache-to", get("ref"))?, max }),
            Some("inline") => bail!("--cache-to type=inline is not supported: use type=registry,ref=REF (or type=local,dest=DIR)"),
            Some(other) => bail!("--cache-to type={other} is not supported (expected local or registry)"),
            None => bail!("--cache-to {spec:?} needs type=local|registry"),
        }
    }
}

fn checked_ref(flag: &str, r: Option<String>) -> anyhow::Result<String> {
    let r = r.ok_or_else(|| anyhow!("{flag} type=registry needs ref=REGISTRY/REPOSITORY:TAG"))?;
    r.parse::<Reference>().with_context(|| format!("{flag} ref={r}"))?;
    Ok(r)
}

/// One platform's image: its manifest descriptor and every blob (the manifest last).
pub type PlatformImage = (Descriptor, Vec<Digest>);

pub struct BuildRequest {
    pub dockerfile: String,
    pub dockerfile_name: String,
    pub context: PathBuf,
    pub ignore: DockerIgnore,
    pub platforms: Vec<Platform>,
    pub build_args: Vec<(String, String)>,
    pub target: Option<String>,
    pub no_cache: bool,
    pub tags: Vec<String>,
    pub outputs: Vec<Output>,
    pub cache_from: Vec<CacheFrom>,
    pub cache_to: Option<CacheTo>,
}

#[derive(Debug, Serialize)]
pub struct SliceReport {
    pub platform: String,
    pub agent: String,
    pub emulated: bool,
    pub manifest_digest: String,
    pub duration_ms: u64,
    pub cache_hits: u32,
    pub cache_misses: u32,
    pub cache_peer_hits: u32,
}

#[derive(Debug)]
pub struct BuildResult {
    pub index: Index,
    pub index_digest: Digest,
    pub index_size: u64,
    pub slices: Vec<SliceReport>,
}

pub struct EmbeddedFarm {
    pub agent: Agent,
    pub agent_name: String,
    insecure: Vec<String>,
}

impl EmbeddedFarm {
    /// Opens the farm's state under `home` (`$KILN_HOME`).
    pub fn open(home: &Path, insecure: &[String]) -> anyhow::Result<EmbeddedFarm> {
        let agent = Agent::open(&home.join("agent"), insecure).with_context(|| format!("opening kiln's state in {}", home.display()))?;
        Ok(EmbeddedFarm { agent, agent_name: "embedded".into(), insecure: insecure.to_vec() })
    }

    pub fn build(&self, req: &BuildRequest, events: &(dyn Fn(Event) + Sync)) -> Result<BuildResult, EngineError> {
        let mut imports = Vec::new();
        for c in &req.cache_from {
            let imported = match c {
                CacheFrom::Local { src } => Imported::local(src),
                CacheFrom::Registry { reference } => {
                    Imported::registry(reference, kiln_shared::registry::RegistryClient::new(&self.insecure), &self.agent.store)
                }
            };
            match imported {
                Ok(i) => imports.push(i),
                // As buildx: a cache that cannot be imported is a warning, not a failure.
                Err(e) => eprintln!("WARNING: importing cache: {e}"),
            }
        }
        let remote: Vec<&dyn RemoteCache> = imports.iter().map(|i| i as &dyn RemoteCache).collect();
        // The embedded farm has one tenant.
        let scope = "local";
        // One slice per platform, run side by side.
        let results: Vec<Result<SliceResult, EngineError>> = std::thread::scope(|s| {
            let handles: Vec<_> = req
                .platforms
                .iter()
                .map(|p| {
                    let slice = SliceRequest {
                        dockerfile: &req.dockerfile,
                        dockerfile_name: &req.dockerfile_name,
                        context: &req.context,
                        ignore: &req.ignore,
                        platform: p.clone(),
                        build_args: &req.build_args,
                        target: req.target.as_deref(),
                        no_cache: req.no_cache,
                        cache_scope: scope,
                        remote: &remote,
                    };
                    s.spawn(move || self.agent.run_slice(&slice, events))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(EngineError::Copy("a slice panicked".into())))).collect()
        });
        let mut slices = Vec::new();
        for r in results {
            slices.push(r?);
        }
        let index = Index::new(slices.iter().map(|s| s.manifest.clone()).collect());
        let bytes = oci::to_json(&index);
        let index_digest = self.agent.store.put(&bytes)?;
        let reports = slices
            .iter()
            .map(|s| SliceReport {
                platform: s.platform.to_string(),
                agent: self.agent_name.clone(),
                emulated: s.emulated,
                manifest_digest: s.manifest.digest.to_string(),
                duration_ms: s.duration_ms,
                cache_hits: s.cache_hits,
                cache_misses: s.cache_misses,
                cache_peer_hits: s.cache_peer_hits,
            })
            .collect();
        for out in &req.outputs {
            self.write_output(out, req, &slices, &index).map_err(|e| EngineError::Copy(format!("{e:#}")))?;
        }
        if let Some(to) = &req.cache_to {
            let all = slices.iter().flat_map(|s| s.records.iter().cloned());
            match to {
                CacheTo::Local { dest, max } => cache::write_local(dest, &cache::select(all, *max), &self.agent.store)?,
                CacheTo::Registry { reference, max } => {
                    cache::push_registry(reference, &cache::select(all, *max), &self.agent.store, &self.agent.registry)?;
                }
            }
        }
        Ok(BuildResult { index, index_digest, index_size: bytes.len() as u64, slices: reports })
    }

    /// The manifests and blobs of an output, re-encoded with zstd when asked.
    fn image_for(&self, slices: &[SliceResult], index: &Index, zstd: bool) -> Result<(Index, Vec<PlatformImage>), EngineError> {
        if !zstd {
            return Ok((index.clone(), slices.iter().map(|s| (s.manifest.clone(), s.blobs.clone())).collect()));
        }
        let converted: Vec<PlatformImage> = slices.iter().map(|s| self.agent.zstd_image(s)).collect::<Result<_, _>>()?;
        Ok((Index::new(converted.iter().map(|c| c.0.clone()).collect()), converted))
    }

    fn write_output(&self, out: &Output, req: &BuildRequest, slices: &[SliceResult], index: &Index) -> anyhow::Result<()> {
        match out {
            Output::Oci { dest, zstd } => {
                let (index, images) = self.image_for(slices, index, *zstd)?;
                let blobs: Vec<Digest> = images.iter().flat_map(|i| i.1.iter().cloned()).collect();
                layout::write_archive(dest, &self.agent.store, &index, &blobs, &req.tags)?;
            }
            Output::Local { dest } => {
                for s in slices {
                    let dir = if slices.len() == 1 { dest.clone() } else { dest.join(s.platform.to_string().replace('/', "_")) };
                    self.agent.export_rootfs(&s.layers, &dir)?;
                }
            }
            Output::Registry { zstd } => {
                if req.tags.is_empty() {
                    bail!("pushing needs at least one tag (-t registry/repository:tag)");
                }
                let (index, images) = self.image_for(slices, index, *zstd)?;
                for tag in &req.tags {
                    let r: Reference = tag.parse()?;
                    self.push(&r, &images, &index)?;
                }
            }
        }
        Ok(())
    }

    /// Blobs the registry lacks, then each manifest by digest, then the index under the tag.
    pub fn push(&self, r: &Reference, images: &[PlatformImage], index: &Index) -> anyhow::Result<()> {
        let reg = &self.agent.registry;
        let store = &self.agent.store;
        for (_, blobs) in images {
            let (manifest, rest) = blobs.split_last().ok_or_else(|| anyhow!("empty slice result"))?;
            for b in rest {
                reg.push_blob(r, b, store)?;
            }
            reg.put_manifest(r, manifest.as_str(), oci::MEDIA_MANIFEST, &store.read(manifest)?)?;
        }
        let bytes = oci::to_json(index);
        reg.put_manifest(r, &r.reference(), oci::MEDIA_INDEX, &bytes)?;
        Ok(())
    }
}

/// The descriptor of a build's index, for `--metadata-file`.
pub fn index_descriptor(result: &BuildResult) -> Descriptor {
    Descriptor::new(oci::MEDIA_INDEX, result.index_digest.clone(), result.index_size)
}
