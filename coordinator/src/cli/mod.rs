//! The `kiln` command line, in `docker buildx`'s vocabulary (see DESIGN.md, "The CLI contract").
//!
//! Each verb has its own module; this one holds the clap definitions and dispatch.

pub mod build;
pub mod context;
pub mod imagetools;
pub mod progress;
pub mod storage;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "kiln", version, about = "A distributed build farm for multi-platform container images")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an image from a Dockerfile (`--dry-run` shows the resolved plan instead).
    Build(Box<build::BuildArgs>),
    /// Inspect and create images and indexes in a registry.
    Imagetools {
        #[command(subcommand)]
        command: imagetools::ImagetoolsCommand,
    },
    /// Show disk usage of the build cache and content store.
    Du,
    /// Remove build cache.
    Prune(storage::PruneArgs),
    /// Print the version.
    Version,
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Build(args) => build::run(*args),
        Command::Imagetools { command } => imagetools::run(command),
        Command::Du => storage::du(),
        Command::Prune(args) => storage::prune(args),
        Command::Version => {
            println!("kiln {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
    }
}
