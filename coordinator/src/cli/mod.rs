//! The `kiln` command line, in `docker buildx`'s vocabulary (see DESIGN.md, "The CLI contract").
//!
//! Each verb has its own module; this one holds the clap definitions and dispatch.

pub mod bake;
pub mod build;
pub mod builder;
pub mod checks;
pub mod context;
pub mod docker;
pub mod farm_build;
pub mod history;
pub mod home;
pub mod imagetools;
mod inspect_format;
pub mod named;
pub mod outputs;
pub mod progress;
pub mod remote;
pub mod request;
pub mod run_options;
pub mod serve;
pub mod session;
pub mod source;
pub mod storage;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "kiln", version, about = "A distributed build farm for multi-platform container images")]
pub struct Cli {
    /// How log lines are written to standard error (`KILN_LOG` sets the filter, e.g. `debug`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Log lines go to standard error: `info` and up for the servers (`kiln coordinator`, `kiln
/// agent`), warnings and errors only for client verbs (whose embedded farm is not news).
/// A command line clap refused. An unknown flag gets one line naming it (a buildx flag kiln
/// lacks must not be answered only with clap's "did you mean"); help and version print as
/// usual; anything else is clap's own message.
pub fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    match e.kind() {
        ErrorKind::UnknownArgument => {
            let flag = match e.get(ContextKind::InvalidArg) {
                Some(ContextValue::String(s)) => s.clone(),
                _ => "the flag".into(),
            };
            let name = flag.split('=').next().unwrap_or(&flag).to_string();
            eprintln!("error: kiln does not support {name} (yet); `kiln --help` lists what it takes");
            ExitCode::from(2)
        }
        _ => {
            let _ = e.print();
            ExitCode::from(if e.use_stderr() { 2 } else { 0 })
        }
    }
}

pub fn init_logging(cli: &Cli) {
    let serving = match &cli.command {
        Command::Coordinator(c) => c.action.is_none(),
        Command::Agent(_) => true,
        _ => false,
    };
    let default = if serving { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    let _ = match cli.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an image from a Dockerfile (`--dry-run` shows the resolved plan instead).
    Build(Box<build::BuildArgs>),
    /// Build many targets from bake files (docker-bake.hcl, docker-bake.json, compose.yaml) at once.
    Bake(Box<bake::BakeArgs>),
    /// Inspect and create images and indexes in a registry.
    Imagetools {
        #[command(subcommand)]
        command: imagetools::ImagetoolsCommand,
    },
    /// Show disk usage of the build cache and content store (per agent on a farm).
    Du {
        /// The builder whose agents to ask (default: the current builder, else every agent).
        #[arg(long)]
        builder: Option<String>,
        #[command(flatten)]
        farm: remote::FarmArgs,
    },
    /// Remove build cache (on every agent of a builder on a farm).
    Prune {
        #[command(flatten)]
        args: storage::PruneArgs,
        #[arg(long)]
        builder: Option<String>,
        #[command(flatten)]
        farm: remote::FarmArgs,
    },
    /// Create a builder, or add (--append) or remove (--leave) a node.
    Create {
        #[command(flatten)]
        args: builder::CreateArgs,
        #[command(flatten)]
        farm: remote::FarmArgs,
    },
    /// Set the builder `kiln build` uses on this farm.
    Use {
        name: String,
        #[command(flatten)]
        farm: remote::FarmArgs,
    },
    /// List builders and their nodes.
    Ls {
        #[arg(long, value_enum, default_value_t = builder::ListFormat::Table)]
        format: builder::ListFormat,
        #[command(flatten)]
        farm: remote::FarmArgs,
    },
    /// Show a builder: its nodes, their platforms, slots, load and cache, and recent slices.
    Inspect {
        name: Option<String>,
        /// Wait until every node is reachable; on the embedded farm, first register this
        /// host's qemu-user-static with binfmt_misc where a handler is missing (as root).
        #[arg(long)]
        bootstrap: bool,
        #[command(flatten)]
        farm: remote::FarmArgs,
    },
    /// Remove builders.
    Rm {
        #[command(flatten)]
        args: builder::RmArgs,
        #[command(flatten)]
        farm: remote::FarmArgs,
    },
    /// Contexts: the farm's agents.
    Context {
        #[command(subcommand)]
        command: builder::ContextCommand,
        #[command(flatten)]
        farm: remote::FarmArgs,
    },
    /// Build history: list, inspect, follow the logs of, export and remove builds.
    History(history::HistoryArgs),
    /// Run a coordinator (a member of the Raft cluster), or change the membership.
    Coordinator(Box<serve::CoordinatorArgs>),
    /// Run an agent (a build host).
    Agent(Box<serve::AgentArgs>),
    /// Print the version.
    Version,
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Build(args) => build::run(*args),
        Command::Bake(args) => bake::run(*args),
        Command::Imagetools { command } => imagetools::run(command),
        Command::Du { builder, farm } => storage::du(builder, farm),
        Command::Prune { args, builder, farm } => storage::prune(args, builder, farm),
        Command::Create { args, farm } => builder::create(args, farm),
        Command::Use { name, farm } => builder::use_builder(name, farm),
        Command::Ls { format, farm } => builder::ls(format, farm),
        Command::Inspect { name, bootstrap, farm } => builder::inspect(name, bootstrap, farm),
        Command::Rm { args, farm } => builder::rm(args, farm),
        Command::Context { command, farm } => builder::context(command, farm),
        Command::History(args) => history::run(args),
        Command::Coordinator(args) => serve::coordinator(*args),
        Command::Agent(args) => serve::agent(*args),
        Command::Version => {
            println!("kiln {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
    }
}
