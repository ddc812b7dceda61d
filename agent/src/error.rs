//! The engine's error: what can go wrong running a slice, from parsing the Dockerfile to
//! writing the image. The worker, the step cache and garbage collection report it too.

use crate::layers;
use crate::runc::RunError;
use kiln_shared::frontend::FrontendError;
use kiln_shared::registry::RegistryError;
use kiln_shared::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the build was cancelled")]
    Cancelled,
    #[error(transparent)]
    Frontend(Box<FrontendError>),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Layer(#[from] layers::LayerError),
    #[error("platform {platform} cannot be executed on this host (it runs {runs}); install qemu-user-static and register it with binfmt_misc (e.g. `apt-get install qemu-user-static binfmt-support`)")]
    CannotExecute { platform: String, runs: String },
    #[error("image {image} has no {platform} variant (it has: {available})")]
    MissingPlatform { image: String, platform: String, available: String },
    #[error("[{platform} {stage}] {file}:{line}: {error}")]
    Step { platform: String, stage: String, file: String, line: u32, error: Box<EngineError> },
    #[error("{0}")]
    Run(#[from] RunError),
    #[error("{0}")]
    Copy(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{platform}: scanning the image for its SBOM: layer {layer}: {source}")]
    Sbom { platform: String, layer: String, source: std::io::Error },
}

impl From<FrontendError> for EngineError {
    fn from(e: FrontendError) -> Self {
        EngineError::Frontend(Box::new(e))
    }
}

/// Maps an I/O error to [`EngineError::Io`], naming what was being done.
pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> EngineError {
    let what = what.into();
    move |source| EngineError::Io { what, source }
}
