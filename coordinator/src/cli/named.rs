//! `--build-context NAME=SOURCE`, as buildx takes it: a directory, `docker-image://REF`,
//! `oci-layout://PATH[:TAG|@DIGEST]`, or a git or HTTP(S) URL (fetched like a remote context). A directory travels with the build's
//! context (its own `.dockerignore` applies); an image is only a name for the farm to pull.

use super::source::{self, Fetched};
use anyhow::{anyhow, bail};
use kiln_shared::api::{NamedContextSpec, NamedSource};
use kiln_shared::digest::Digest;
use kiln_shared::frontend::dockerignore::DockerIgnore;
use kiln_shared::oci::Index;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The spec to send, the files to upload (by digest), and a fetched source to keep meanwhile.
pub fn parse(raw: &str) -> anyhow::Result<(NamedContextSpec, BTreeMap<String, PathBuf>, Option<Fetched>)> {
    let (name, value) = raw.split_once('=').ok_or_else(|| anyhow!("--build-context {raw:?}: expected NAME=SOURCE"))?;
    if name.is_empty() || value.is_empty() {
        bail!("--build-context {raw:?}: expected NAME=SOURCE");
    }
    let name = name.to_string();
    if let Some(reference) = value.strip_prefix("docker-image://") {
        reference.parse::<kiln_shared::registry::Reference>().map_err(|e| anyhow!("--build-context {name}: {e}"))?;
        return Ok((NamedContextSpec { name, source: NamedSource::Image(reference.to_string()) }, BTreeMap::new(), None));
    }
    if let Some(layout) = value.strip_prefix("oci-layout://") {
        let (digest, files) = oci_layout(&name, layout)?;
        let blobs: Vec<String> = files.keys().cloned().collect();
        return Ok((NamedContextSpec { name, source: NamedSource::Layout { digest, blobs } }, files, None));
    }
    if value.starts_with("target:") {
        bail!("--build-context {name}: target: sources are for kiln bake");
    }
    let remote = value.contains("://") || value.starts_with("git@");
    let fetched = if remote { Some(source::fetch(Path::new(value), false)?) } else { None };
    let dir = fetched.as_ref().map(|f| f.dir.clone()).unwrap_or_else(|| PathBuf::from(value));
    if fetched.as_ref().is_some_and(|f| f.dockerfile.is_some()) {
        bail!("--build-context {name}: {value} is a single file, not a directory or an archive");
    }
    if !dir.is_dir() {
        bail!("--build-context {name}: {} is not a directory", dir.display());
    }
    let ignore = DockerIgnore::load(&dir, &dir.join("Dockerfile"))?;
    let manifest = super::farm_build::manifest(&dir, &ignore)?;
    Ok((NamedContextSpec { name, source: NamedSource::Local(manifest.entries) }, manifest.files, fetched))
}

/// `PATH[:TAG|@DIGEST]` of an OCI image layout directory: the chosen manifest or index (by
/// digest, by its `org.opencontainers.image.ref.name`, or the only one) and every blob it needs.
fn oci_layout(name: &str, spec: &str) -> anyhow::Result<(String, BTreeMap<String, PathBuf>)> {
    let (path, pick) = match spec.rsplit_once('@') {
        Some((p, d)) => (p, Some(Pick::Digest(d.to_string()))),
        None => match spec.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
            Some((p, t)) => (p, Some(Pick::Tag(t.to_string()))),
            None => (spec, None),
        },
    };
    let dir = PathBuf::from(path);
    let err = |what: String| anyhow!("--build-context {name}: oci-layout://{spec}: {what}");
    let index: Index = serde_json::from_slice(&std::fs::read(dir.join("index.json")).map_err(|e| err(format!("reading index.json: {e}")))?)
        .map_err(|e| err(format!("index.json: {e}")))?;
    let chosen: Digest = match &pick {
        Some(Pick::Digest(d)) => d.parse().map_err(|e| err(format!("{e}")))?,
        Some(Pick::Tag(t)) => index
            .manifests
            .iter()
            .find(|m| m.annotations.get("org.opencontainers.image.ref.name") == Some(t))
            .map(|m| m.digest.clone())
            .ok_or_else(|| err(format!("no image tagged {t:?} in index.json")))?,
        None => match index.manifests.as_slice() {
            [one] => one.digest.clone(),
            _ => return Err(err("index.json lists several images: name one with :TAG or @DIGEST".into())),
        },
    };
    let blob = |d: &Digest| dir.join("blobs").join("sha256").join(d.hex());
    let mut files = BTreeMap::new();
    let mut todo = vec![chosen.clone()];
    while let Some(d) = todo.pop() {
        let path = blob(&d);
        let bytes = std::fs::read(&path).map_err(|e| err(format!("blob {d}: {e}")))?;
        if Digest::of(&bytes) != d {
            return Err(err(format!("blob {d} does not match its digest")));
        }
        let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| err(format!("{d}: {e}")))?;
        for m in v.get("manifests").and_then(|m| m.as_array()).into_iter().flatten() {
            todo.extend(m.get("digest").and_then(|d| d.as_str()).and_then(|d| d.parse().ok()));
        }
        let parts = v.get("config").into_iter().chain(v.get("layers").and_then(|l| l.as_array()).into_iter().flatten());
        for p in parts {
            if let Some(pd) = p.get("digest").and_then(|d| d.as_str()).and_then(|d| d.parse::<Digest>().ok()) {
                if !blob(&pd).is_file() {
                    return Err(err(format!("blob {pd} is missing")));
                }
                files.insert(pd.to_string(), blob(&pd));
            }
        }
        files.insert(d.to_string(), path);
    }
    Ok((chosen.to_string(), files))
}

enum Pick {
    Digest(String),
    Tag(String),
}
