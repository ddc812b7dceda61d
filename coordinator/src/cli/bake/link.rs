//! `target:NAME` contexts: a finished linked target's result, as the named context of the targets
//! that use it, in the form `kiln build --build-context` takes. A target that pushed is named by
//! its first tag and its index's digest (`docker-image://REF@DIGEST`: the agents pull it from the
//! registry it was pushed to); one that did not is fetched from the farm into a kiln-private OCI
//! layout (`oci-layout://DIR@DIGEST`, whose blobs the farm already holds, so none is sent back).
//! Either way each platform slice of the dependent target takes its own platform's image from the
//! linked target's index.

use super::BakeError;
use crate::cli::farm_build;
use anyhow::Context as _;
use kiln_shared::api::{BuildSpec, BuildView};
use kiln_shared::client::ClientFarm;
use kiln_shared::Platform;
use std::path::{Path, PathBuf};

/// Every platform of `target` must be one `linked` builds: a slice takes its own platform's
/// image from the linked target's index (kiln does not run one platform's image as another's).
pub fn check_platforms(target: &str, platforms: &[Platform], ctx: &str, linked: &str, theirs: &[Platform]) -> Result<(), BakeError> {
    let Some(missing) = platforms.iter().find(|p| !theirs.contains(p)) else { return Ok(()) };
    let built: Vec<String> = theirs.iter().map(Platform::to_string).collect();
    Err(BakeError::Link {
        target: target.to_string(),
        message: format!(
            "contexts.{ctx}=target:{linked}: {linked} is built for {}, not {missing} (give {linked} the platforms of {target})",
            built.join(",")
        ),
    })
}

/// A directory under the client's scratch space for the layouts of one bake, removed with it.
pub struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    pub fn new() -> anyhow::Result<Scratch> {
        let dir =
            crate::cli::home::kiln_home().join("client/tmp").join(format!("bake-{}-{}", std::process::id(), crate::node::random_hex(4)?));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Scratch { dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `--build-context` source the targets linking `name` get, once it is built as `spec` said.
pub async fn source(farm: &ClientFarm, name: &str, spec: &BuildSpec, view: &BuildView, scratch: &Path) -> anyhow::Result<String> {
    if let (true, Some(tag)) = (spec.push, spec.tags.first()) {
        let repo = tag.split('@').next().unwrap_or(tag);
        return Ok(format!("docker-image://{repo}@{}", view.index_digest));
    }
    let fetched = farm_build::fetch_images(farm, view).await.with_context(|| format!("fetching target {name}'s result"))?;
    let dir = scratch.join(name);
    let digest = kiln_shared::layout::write_dir(&dir, &fetched.store, &view.index, &fetched.blobs)?;
    Ok(format!("oci-layout://{}@{digest}", dir.display()))
}
