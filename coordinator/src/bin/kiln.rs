//! The `kiln` binary: parse the command line, set up logging, run it, turn an error into one line and an exit code.

use clap::Parser;
use std::process::ExitCode;

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
