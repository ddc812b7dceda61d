//! kiln-coordinator: the coordinator cluster and the `kiln` command line.
//!
//! Today this crate holds the CLI (`cli`) and the embedded farm (`farm`): one coordinator and
//! one agent in this process. The Raft cluster, the scheduler and the services join it with the
//! distributed farm.

pub mod builders;
pub mod cli;
pub mod config;
pub mod farm;
pub mod node;
pub mod raft;
pub mod scheduler;
