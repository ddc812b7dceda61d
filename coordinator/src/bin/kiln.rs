//! The `kiln` binary: parse the command line, set up logging, run it, turn an error into one line and an exit code.

use clap::Parser;
use std::process::ExitCode;

/// jemalloc, not glibc's malloc: with thousands of agents connected, glibc's arenas kept a
/// leader at about twice its live heap (5,000 agents: 386 MiB resident, 311 MiB with jemalloc).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = match kiln_coordinator::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return kiln_coordinator::cli::usage_error(e),
    };
    kiln_coordinator::cli::init_logging(&cli);
    match kiln_coordinator::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
