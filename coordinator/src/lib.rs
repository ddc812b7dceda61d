//! kiln-coordinator: the coordinator cluster and the `kiln` command line.
//!
//! Today this crate holds the CLI (`cli`), whose `build --dry-run` resolves a Dockerfile for
//! every requested platform and prints the plan. The Raft cluster, the scheduler and the
//! services join it with the farm.

pub mod cli;
