//! kiln-shared: the vocabulary every side of kiln speaks.
//!
//! The CLI, the coordinator and the agents all depend on this crate and nothing in it depends
//! on them: platforms and digests, the Dockerfile frontend, OCI types, the content store, the
//! registry client and OCI layout archives, and the wire protocol with its QUIC + mutual TLS
//! transport (see DESIGN.md).

pub mod api;
pub mod attest;
pub mod chunks;
pub mod client;
pub mod digest;
pub mod frontend;
pub mod http;
pub mod join;
pub mod layout;
pub mod metrics;
pub mod oci;
pub mod platform;
pub mod pool;
pub mod registry;
pub mod store;
pub mod task;
pub mod transport;
pub mod unbatched;
pub mod wire;

pub use digest::Digest;
pub use platform::{Platform, PlatformError};
