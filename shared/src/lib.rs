//! kiln-shared: the vocabulary every side of kiln speaks.
//!
//! The CLI, the coordinator and the agents all depend on this crate and nothing in it depends
//! on them. Today it holds platforms and the Dockerfile frontend; the wire protocol, the QUIC
//! transport, OCI types and the content store join it as the farm grows (see DESIGN.md).

pub mod frontend;
pub mod platform;

pub use platform::{Platform, PlatformError};
