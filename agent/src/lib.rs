//! kiln-agent: the build host.
//!
//! The agent turns a resolved build plan (`kiln_shared::frontend::resolve`) into images: it
//! keeps snapshots, runs RUN steps in runc (foreign architectures through binfmt_misc + qemu),
//! diffs layers and keeps the step cache. This crate is where that engine lives; for now it only
//! re-exports the frontend types it will execute, so the crate graph
//! `coordinator -> agent -> shared` is in place from the start.

pub use kiln_shared::frontend::{BuildPlan, Instruction};
