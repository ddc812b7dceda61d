//! kiln-coordinator: the coordinator cluster and the `kiln` command line.
//!
//! - `cli`: every verb of the one binary;
//! - `embedded`: the embedded farm (a real coordinator and agent in this process);
//! - `node`: a coordinator process (`kiln coordinator`): bootstrap, requests, leader duties;
//! - `raft`: the replicated state, its commands, and its storage and network for openraft;
//! - `scheduler`: the pure placement of slices; `builders`: buildx's builders and contexts;
//! - `config`: the config files of `kiln coordinator` and `kiln agent`;
//! - `console`: the web console every coordinator can serve (`--console-listen`).

pub mod builders;
pub mod cli;
pub mod config;
pub mod console;
pub mod embedded;
pub mod metrics;
pub mod node;
pub mod raft;
pub mod scheduler;
