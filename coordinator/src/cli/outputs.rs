//! `kiln build`'s output and cache flags in buildx's syntax: `-o`, `--cache-from`, `--cache-to`.

use anyhow::{anyhow, bail, Context as _};
use kiln_shared::registry::Reference;
use std::path::PathBuf;

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
