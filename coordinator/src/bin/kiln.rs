//! The `kiln` binary: parse the command line, set up logging, run it, turn an error into one line and an exit code.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = kiln_coordinator::cli::Cli::parse();
    kiln_coordinator::cli::init_logging(&cli);
    match kiln_coordinator::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
