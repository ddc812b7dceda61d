//! The embedded farm: one coordinator and one agent in this process.
//!
//! A build is split into one slice per platform; each slice runs on the agent (in parallel,
//! one thread per slice, as they would on separate agents); the coordinator then merges the
//! per-platform manifests into one OCI image index and writes the outputs. A real farm uses the
//! same steps with the agent at the other end of a QUIC connection.

use anyhow::{anyhow, bail, Context as _};
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
}

impl EmbeddedFarm {
    /// Opens the farm's state under `home` (`$KILN_HOME`).
    pub fn open(home: &Path, insecure: &[String]) -> anyhow::Result<EmbeddedFarm> {
        let agent = Agent::open(&home.join("agent"), insecure).with_context(|| format!("opening kiln's state in {}", home.display()))?;
        Ok(EmbeddedFarm { agent, agent_name: "embedded".into() })
    }

    pub fn build(&self, req: &BuildRequest, events: &(dyn Fn(Event) + Sync)) -> Result<BuildResult, EngineError> {
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
            })
            .collect();
        for out in &req.outputs {
            self.write_output(out, req, &slices, &index).map_err(|e| EngineError::Copy(format!("{e:#}")))?;
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
