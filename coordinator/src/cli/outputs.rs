//! `kiln build`'s output and cache flags in buildx's syntax: `-o`, `--cache-from`, `--cache-to`.

use anyhow::{anyhow, bail, Context as _};
use kiln_shared::registry::Reference;
use std::path::PathBuf;

/// Where a file output goes: a file, or standard output (`dest=-`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dest {
    File(PathBuf),
    Stdout,
}

impl Dest {
    fn parse(v: &str) -> Dest {
        if v == "-" {
            Dest::Stdout
        } else {
            Dest::File(PathBuf::from(v))
        }
    }
}

/// Where the result goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// An OCI image layout archive (every platform in one index).
    Oci { dest: Dest, zstd: bool },
    /// The filesystem as a tar (per-platform top directories when there are several).
    Tar { dest: Dest },
    /// The filesystem in a directory (per-platform subdirectories when there are several).
    Local { dest: PathBuf },
    /// Pushed under every `-t` and every `name=` of the output.
    Registry { zstd: bool, names: Vec<String> },
    /// One image as `docker load` reads it: to a file, to standard output, or (no `dest`,
    /// `--load`) loaded into the Docker daemon.
    Docker { dest: Option<Dest> },
    /// Only the build cache keeps the result.
    CacheOnly,
}

impl Output {
    /// buildx's `-o` syntax: `type=oci,dest=F`, `type=tar,dest=F`, `type=local,dest=D`,
    /// `type=registry`, `type=cacheonly`, a bare directory (local) or `-` (a tar on standard output).
    pub fn parse(spec: &str) -> anyhow::Result<Output> {
        if spec == "-" {
            return Ok(Output::Tar { dest: Dest::Stdout });
        }
        if !spec.contains('=') {
            return Ok(Output::Local { dest: PathBuf::from(spec) });
        }
        let mut kind = None;
        let mut dest = None;
        let mut zstd = false;
        let mut names = Vec::new();
        let mut push = None;
        for field in spec.split(',') {
            let (k, v) = field.split_once('=').ok_or_else(|| anyhow!("-o {spec:?}: {field:?} is not key=value"))?;
            match (k.trim(), v.trim()) {
                ("type", v) => kind = Some(v.to_string()),
                ("dest", v) => dest = Some(PathBuf::from(v)),
                ("compression", "gzip") => zstd = false,
                ("compression", "zstd") => zstd = true,
                ("compression", other) => bail!("-o {spec:?}: compression={other} is not supported (expected gzip or zstd)"),
                ("name", v) => names.extend(v.split(';').filter(|n| !n.is_empty()).map(str::to_string)),
                ("push", v) => push = Some(v == "true" || v == "1"),
                // Accepted for buildx compatibility; kiln's behaviour already matches them.
                ("oci-mediatypes" | "compression-level" | "force-compression" | "unpack" | "store", _) => {}
                (other, _) => bail!("-o {spec:?}: unknown option {other:?} (expected type, dest, compression)"),
            }
        }
        let need_dest = |kind: &str| dest.clone().ok_or_else(|| anyhow!("-o type={kind} needs dest=PATH"));
        match kind.as_deref() {
            Some("oci") => Ok(Output::Oci { dest: Dest::parse(&need_dest("oci")?.to_string_lossy()), zstd }),
            Some("tar") => Ok(Output::Tar { dest: Dest::parse(&need_dest("tar")?.to_string_lossy()) }),
            Some("local") => match need_dest("local")? {
                d if d.as_os_str() == "-" => bail!("-o type=local needs a directory: use type=tar,dest=- for standard output"),
                d => Ok(Output::Local { dest: d }),
            },
            Some("registry") => Ok(Output::Registry { zstd, names }),
            // As buildx: type=image pushes only with push=true; otherwise the image stays in the
            // builder (kiln's build cache).
            Some("image") if push == Some(true) => Ok(Output::Registry { zstd, names }),
            Some("image") => Ok(Output::CacheOnly),
            Some("cacheonly") => Ok(Output::CacheOnly),
            Some("docker") => Ok(Output::Docker { dest: dest.map(|d| Dest::parse(&d.to_string_lossy())) }),
            Some(other) => bail!("-o type={other} is not supported (expected oci, docker, tar, local, registry or cacheonly)"),
            None => bail!("-o {spec:?} needs type=oci|docker|tar|local|registry|cacheonly"),
        }
    }

    /// Refuses, before anything is built, a destination that cannot take this output: an
    /// existing path that is not a regular file (a device, FIFO, socket or directory) for a file
    /// output, a non-directory for a local output, a terminal for standard output.
    pub fn check_dest(&self) -> anyhow::Result<()> {
        use std::io::IsTerminal;
        use std::os::unix::fs::FileTypeExt;
        let file = match self {
            Output::Oci { dest, .. } | Output::Tar { dest } | Output::Docker { dest: Some(dest) } => dest,
            Output::Docker { dest: None } => return Ok(()),
            Output::Local { dest } => {
                if let Ok(m) = std::fs::symlink_metadata(dest) {
                    if !m.is_dir() {
                        bail!("-o type=local,dest={}: it exists and is not a directory", dest.display());
                    }
                }
                return Ok(());
            }
            Output::Registry { .. } | Output::CacheOnly => return Ok(()),
        };
        match file {
            Dest::Stdout if std::io::stdout().is_terminal() => {
                bail!("refusing to write an archive to a terminal: redirect standard output, or use dest=FILE")
            }
            Dest::Stdout => Ok(()),
            Dest::File(path) => {
                let Ok(m) = std::fs::metadata(path) else { return Ok(()) };
                let t = m.file_type();
                let what = if t.is_dir() {
                    "a directory"
                } else if t.is_char_device() {
                    "a character device"
                } else if t.is_block_device() {
                    "a block device"
                } else if t.is_fifo() {
                    "a FIFO"
                } else if t.is_socket() {
                    "a socket"
                } else {
                    return Ok(());
                };
                bail!("output destination {} exists and is {what}, not a regular file; refusing to replace it", path.display())
            }
        }
    }

    /// Outputs that need the image's blobs back from the farm.
    pub fn needs_blobs(&self) -> bool {
        matches!(self, Output::Oci { .. } | Output::Tar { .. } | Output::Local { .. } | Output::Docker { .. })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buildx_output_forms() {
        assert_eq!(Output::parse("-").unwrap(), Output::Tar { dest: Dest::Stdout });
        assert_eq!(Output::parse("out").unwrap(), Output::Local { dest: "out".into() });
        assert_eq!(Output::parse("type=oci,dest=-").unwrap(), Output::Oci { dest: Dest::Stdout, zstd: false });
        assert_eq!(Output::parse("type=tar,dest=x.tar").unwrap(), Output::Tar { dest: Dest::File("x.tar".into()) });
        assert_eq!(Output::parse("type=cacheonly").unwrap(), Output::CacheOnly);
        assert_eq!(Output::parse("type=registry,name=r/a:1").unwrap(), Output::Registry { zstd: false, names: vec!["r/a:1".into()] });
        assert_eq!(
            Output::parse("type=image,name=r/a:1,push=true").unwrap(),
            Output::Registry { zstd: false, names: vec!["r/a:1".into()] }
        );
        assert_eq!(Output::parse("type=image,name=r/a:1").unwrap(), Output::CacheOnly, "type=image pushes only with push=true");
        assert!(Output::parse("type=local,dest=-").is_err());
        let e = Output::parse("type=oci,dest=/dev/null").unwrap().check_dest().unwrap_err().to_string();
        assert!(e.contains("/dev/null exists and is a character device"), "{e}");
        let e = Output::parse("type=oci,dest=/tmp").unwrap().check_dest().unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        let e = Output::parse("type=local,dest=/dev/null").unwrap().check_dest().unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
    }
}
