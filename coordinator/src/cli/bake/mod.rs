//! `kiln bake`: many targets from buildx's bake files (HCL, JSON, Compose), one command. The
//! files are read and evaluated without I/O beyond reading them (`files`, `hcl`, `json`,
//! `compose`), resolved into buildx's targets (`model`, `resolve`, `set`), printed as buildx
//! prints them (`print`), and built through `kiln build`'s own path (`run`, `exec`), all at
//! once, each `target:` link's result the context of the targets that use it (`link`).

pub mod compose;
#[cfg(test)]
mod eval_tests;
pub mod exec;
pub mod files;
pub mod funcs;
pub mod funcs_ext;
pub mod hcl;
pub mod json;
pub mod lazy;
pub mod link;
pub mod model;
pub mod print;
pub mod resolve;
pub mod run;
pub mod set;

use super::remote::FarmArgs;
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

/// What is wrong with a bake definition; each names the file, block or flag.
#[derive(Debug, thiserror::Error)]
pub enum BakeError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{at}: {message}")]
    Eval { at: String, message: String },
    #[error("variable {variable:?}: validation failed: {message}")]
    Validation { variable: String, message: String },
    #[error("failed to find target {name}")]
    UnknownTarget { name: String },
    #[error("a cycle: {chain}")]
    Cycle { chain: String },
    #[error("--set {spec}: {message}")]
    Set { spec: String, message: String },
    #[error("target contexts form a cycle: {chain}")]
    LinkCycle { chain: String },
    #[error("target {linked} can't be used by {target} because it is defined for different platforms [{theirs}] and [{mine}]")]
    LinkPlatforms { linked: String, target: String, theirs: String, mine: String },
    #[error("target {target}: {message}")]
    Link { target: String, message: String },
    #[error("target {target}: {what} is not supported by kiln build yet")]
    Unsupported { target: String, what: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum List {
    Targets,
    Variables,
}

#[derive(Debug, Args)]
pub struct BakeArgs {
    /// Targets or groups to build (default: the group `default`).
    pub targets: Vec<String>,
    /// A bake file (HCL, JSON or Compose; `-` reads standard input). Repeatable; later files win.
    #[arg(short = 'f', long = "file")]
    pub files: Vec<String>,
    /// Override a target attribute: PATTERN.KEY=VALUE (or `+=` to append to a list).
    #[arg(long = "set")]
    pub sets: Vec<String>,
    /// Print the resolved definition as JSON, without building.
    #[arg(long)]
    pub print: bool,
    /// List the targets or the variables, without building.
    #[arg(long, value_enum)]
    pub list: Option<List>,
    /// Shorthand for --set=*.output=type=registry.
    #[arg(long)]
    pub push: bool,
    /// Shorthand for --set=*.output=type=docker.
    #[arg(long)]
    pub load: bool,
    /// Shorthand for --set=*.no-cache=true.
    #[arg(long)]
    pub no_cache: bool,
    /// Shorthand for --set=*.pull=true.
    #[arg(long)]
    pub pull: bool,
    /// Shorthand for --set=*.attest=type=provenance,...: true, false or mode=min|max.
    #[arg(long)]
    pub provenance: Option<String>,
    /// Shorthand for --set=*.attest=type=sbom: true or false.
    #[arg(long)]
    pub sbom: Option<String>,
    /// Progress output: auto, plain, tty, rawjson, quiet.
    #[arg(long, default_value = "auto")]
    pub progress: String,
    /// Write one metadata object per target (as `kiln build --metadata-file` writes) to this file.
    #[arg(long)]
    pub metadata_file: Option<PathBuf>,
    /// The builder to use.
    #[arg(long)]
    pub builder: Option<String>,
    /// What to do with each target: build, or check (run the build checks).
    #[arg(long)]
    pub call: Option<String>,
    /// Shorthand for --call=check.
    #[arg(long)]
    pub check: bool,
    /// Let the other targets finish and publish when one fails.
    #[arg(long)]
    pub keep_going: bool,
    /// The farm (`--host`/`KILN_HOST`, `--token`/`KILN_TOKEN`); without one, the embedded farm.
    #[command(flatten)]
    pub farm: FarmArgs,
}

/// The process environment, as the evaluator reads it.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The definition the files and flags give, resolved for the names asked for.
pub fn definition(args: &BakeArgs, cwd: &std::path::Path) -> Result<(model::Config, resolve::Resolved), BakeError> {
    let sources = files::sources(&args.files, cwd)?;
    let cfg = files::load(&sources, &process_env)?;
    let mut overrides = args.sets.iter().map(|s| set::Override::parse(s)).collect::<Result<Vec<_>, _>>()?;
    let flag = |s: &str| set::Override::parse(s).expect("a built-in override parses");
    if args.push {
        overrides.push(flag("*.output=type=registry"));
    }
    if args.load {
        overrides.push(flag("*.output=type=docker"));
    }
    if args.no_cache {
        overrides.push(flag("*.no-cache=true"));
    }
    if args.pull {
        overrides.push(flag("*.pull=true"));
    }
    // As buildx: `--provenance` and `--sbom` are attestations of every target.
    for (kind, value) in [("provenance", &args.provenance), ("sbom", &args.sbom)] {
        let Some(v) = value else { continue };
        let attest = match v.as_str() {
            "" | "true" | "1" => format!("type={kind}"),
            "false" | "0" => format!("type={kind},disabled=true"),
            other => format!("type={kind},{other}"),
        };
        overrides.push(set::Override::parse(&format!("*.attest={attest}"))?);
    }
    if let Some(c) = args.call.as_deref().or(args.check.then_some("check")) {
        overrides.push(flag(&format!("*.call={c}")));
    }
    let resolved = resolve::resolve(&cfg, &args.targets, &overrides)?;
    Ok((cfg, resolved))
}

/// Standard output; a reader that went away (`| head`) is no error.
fn out(text: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

pub fn run(args: BakeArgs) -> anyhow::Result<ExitCode> {
    let cwd = std::env::current_dir()?;
    if let Some(list) = args.list {
        let sources = files::sources(&args.files, &cwd)?;
        let cfg = files::load(&sources, &process_env)?;
        out(&if list == List::Targets { print::list_targets(&cfg) } else { print::list_variables(&cfg) });
        return Ok(ExitCode::SUCCESS);
    }
    let (_, resolved) = definition(&args, &cwd)?;
    if args.print {
        out(&format!("{}\n", print::to_json(&resolved)));
        return Ok(ExitCode::SUCCESS);
    }
    run::run(&args, &resolved, &cwd)
}
