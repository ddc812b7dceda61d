//! A stage's image state: what a step cache record holds, and what the engine, COPY and
//! garbage collection pass between them.

use crate::layers::Layer;
use kiln_shared::oci::ImageConfig;
use serde::{Deserialize, Serialize};

/// A stage's image as it is built: config, layers, and the cache key of the last step.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    pub config: ImageConfig,
    pub layers: Vec<Layer>,
    pub key: String,
}
