//! `--build-context NAME=SOURCE`, as buildx takes it: a directory, `docker-image://REF`, or a
//! git or HTTP(S) URL (fetched like a remote context). A directory travels with the build's
//! context (its own `.dockerignore` applies); an image is only a name for the farm to pull.

use super::source::{self, Fetched};
use anyhow::{anyhow, bail};
use kiln_shared::api::{NamedContextSpec, NamedSource};
use kiln_shared::frontend::dockerignore::DockerIgnore;
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
    if value.starts_with("oci-layout://") {
        bail!("--build-context {name}: oci-layout:// sources are not supported yet; push the layout to a registry (skopeo copy oci:DIR docker://REF) and use docker-image://REF");
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
