//! kiln-agent: the build host.
//!
//! The agent turns one slice (a Dockerfile resolved for one platform) into an image: it pulls
//! base images into its content store, unpacks layers into snapshots, runs RUN steps in runc
//! over an overlay (foreign architectures through binfmt_misc + qemu), diffs the overlay upper
//! directory into a layer, and records every step in its step cache.

pub mod access;
pub mod binfmt;
pub mod cache;
pub mod config;
mod copy;
pub mod engine;
mod error;
pub mod executor;
pub mod gc;
pub mod layers;
pub mod metrics;
pub mod peer;
pub mod probe;
pub mod runc;
mod state;
pub mod sweep;
pub mod worker;

pub use engine::{Agent, EngineError, Event, SliceRequest, SliceResult};
