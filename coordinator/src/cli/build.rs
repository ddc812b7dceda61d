//! `kiln build`: reads the Dockerfile and context, resolves one plan per platform and, with
//! `--dry-run`, prints the stages that would run with every instruction expanded.

use super::context::{self, ContextSummary};
use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};
use kiln_shared::frontend::print::{self, Style};
use kiln_shared::frontend::resolve::{self, BuildPlan, NoImages, Options};
use kiln_shared::frontend::{self, Instruction};
use kiln_shared::Platform;
use serde::Serialize;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The build context directory.
    #[arg(default_value = ".")]
    pub path: PathBuf,
    /// The Dockerfile (default: PATH/Dockerfile; `-` reads it from standard input).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Target platforms, comma separated (e.g. linux/amd64,linux/arm64; `local` is this host).
    #[arg(long, value_delimiter = ',')]
    pub platform: Vec<String>,
    /// Image names to tag the result with.
    #[arg(short = 't', long = "tag")]
    pub tags: Vec<String>,
    /// Build-time variables: KEY=VALUE, or KEY to take the value from the environment.
    #[arg(long = "build-arg")]
    pub build_args: Vec<String>,
    /// The stage to build (default: the last one).
    #[arg(long)]
    pub target: Option<String>,
    /// Resolve and print the plan without building.
    #[arg(long)]
    pub dry_run: bool,
    /// Output format of --dry-run.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Push the result to the registry.
    #[arg(long)]
    pub push: bool,
    /// Output destination (type=oci,dest=F | type=local,dest=D | type=registry).
    #[arg(short = 'o', long = "output")]
    pub outputs: Vec<String>,
    /// Do not use the step cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Progress output: auto, plain, tty, rawjson, quiet.
    #[arg(long, default_value = "auto")]
    pub progress: String,
    /// Write build metadata (digests, per-slice facts) as JSON to this file.
    #[arg(long)]
    pub metadata_file: Option<PathBuf>,
    /// The builder to use.
    #[arg(long)]
    pub builder: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Serialize)]
struct DryRun<'a> {
    dockerfile: String,
    context: &'a ContextSummary,
    target: Option<&'a str>,
    platforms: &'a [BuildPlan],
}

pub fn run(args: BuildArgs) -> anyhow::Result<ExitCode> {
    if !args.dry_run {
        bail!(
            "building needs kiln's build engine, which this version does not have yet; `kiln build --dry-run` resolves and prints the plan"
        );
    }
    let (name, text) = read_dockerfile(&args)?;
    let platforms = if args.platform.is_empty() { vec![Platform::host()] } else { Platform::parse_list(&args.platform.join(","))? };
    let build_args = parse_build_args(&args.build_args)?;
    let df = frontend::parse(&text).map_err(|e| e.in_file(&name))?;
    let dockerfile_path = dockerfile_path(&args);
    if !args.path.is_dir() {
        bail!("build context {} is not a directory", args.path.display());
    }
    let context = context::summarize(&args.path, &dockerfile_path)?;
    let host = Platform::host();
    let mut plans = Vec::new();
    for platform in platforms {
        let opts =
            Options { platform, build_platform: host.clone(), build_args: &build_args, target: args.target.as_deref(), images: &NoImages };
        plans.push(resolve::resolve(&df, &opts).map_err(|e| e.in_file(&name))?);
    }
    match args.format {
        Format::Json => {
            let out = DryRun { dockerfile: name, context: &context, target: args.target.as_deref(), platforms: &plans };
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Format::Text => print_text(&name, &args.path, &context, &plans),
    }
    Ok(ExitCode::SUCCESS)
}

fn dockerfile_path(args: &BuildArgs) -> PathBuf {
    match &args.file {
        Some(f) if f.as_os_str() != "-" => f.clone(),
        _ => args.path.join("Dockerfile"),
    }
}

fn read_dockerfile(args: &BuildArgs) -> anyhow::Result<(String, String)> {
    if args.file.as_deref() == Some(Path::new("-")) {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("reading the Dockerfile from standard input")?;
        return Ok(("-".into(), text));
    }
    let path = dockerfile_path(args);
    let bytes = std::fs::read(&path).with_context(|| format!("reading Dockerfile {}", path.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("{}: the Dockerfile is not valid UTF-8 (byte {})", path.display(), e.utf8_error().valid_up_to()))?;
    Ok((path.display().to_string(), text))
}

/// `KEY=VALUE`, or `KEY` alone to take the value from the environment (skipped when unset), as
/// `docker build` does.
pub fn parse_build_args(raw: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for a in raw {
        match a.split_once('=') {
            Some(("", _)) => bail!("--build-arg {a:?}: the name is empty (expected KEY=VALUE)"),
            Some((k, v)) => out.push((k.to_string(), v.to_string())),
            None if a.is_empty() => bail!("--build-arg needs KEY=VALUE"),
            None => {
                if let Ok(v) = std::env::var(a) {
                    out.push((a.clone(), v));
                }
            }
        }
    }
    Ok(out)
}

fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn print_text(name: &str, context_dir: &Path, ctx: &ContextSummary, plans: &[BuildPlan]) {
    println!("Dockerfile: {name}");
    let ignore = ctx.ignore_file.as_deref().map(|f| format!(", {} excluded by {f}", ctx.excluded)).unwrap_or_default();
    println!("context:    {} ({} files, {}{ignore})", context_dir.display(), ctx.files, size(ctx.bytes));
    println!("base images are not fetched in a dry run: variables they would set are shown as written");
    for plan in plans {
        let target = plan.stages.iter().find(|s| s.index == plan.target).map(|s| s.display_name()).unwrap_or_default();
        println!();
        println!(
            "=> {} (build platform {}): target stage {target}, {} of {} stages",
            plan.platform,
            plan.build_platform,
            plan.stages.len(),
            plan.total_stages
        );
        if !plan.global_args.is_empty() {
            let globals: Vec<String> = plan
                .global_args
                .iter()
                .map(|a| match &a.default {
                    Some(v) => format!("{}={}", a.name, print::display_word(v)),
                    None => a.name.clone(),
                })
                .collect();
            println!("global ARGs: {}", globals.join(" "));
        }
        for stage in &plan.stages {
            let label = stage.display_name();
            let total = stage.steps.len() + 1;
            let mut from = print::instruction(&stage.from, Style::Expanded);
            if stage.platform != plan.platform {
                from.push_str(&format!("   (runs as {})", stage.platform));
            }
            println!("[{label} 1/{total}] {from}   # line {}", stage.pos.line);
            for (n, step) in stage.steps.iter().enumerate() {
                let text = print::instruction(&step.instruction, Style::Expanded);
                let mut origin =
                    if step.onbuild { "ONBUILD trigger of the base image".to_string() } else { format!("line {}", step.pos.line) };
                if let Instruction::Arg { args } = &step.instruction {
                    // Show what each declared ARG resolved to (build-arg, default or global).
                    for a in args {
                        let value = step.args.iter().find(|(k, _)| *k == a.name).map(|(_, v)| print::display_word(v));
                        origin.push_str(&format!(", {}={}", a.name, value.as_deref().unwrap_or("(unset)")));
                    }
                }
                println!("[{label} {}/{total}] {text}   # {origin}", n + 2);
                for line in print::heredoc_bodies(&step.instruction).lines() {
                    println!("    | {line}");
                }
            }
        }
    }
    // Warnings rarely differ between platforms: print each once.
    let mut seen = Vec::new();
    for w in plans.iter().flat_map(|p| &p.warnings) {
        if seen.contains(&w) {
            continue;
        }
        seen.push(w);
        match w.pos {
            Some(p) => eprintln!("warning: {name}:{}:{}: {}", p.line, p.col, w.message),
            None => eprintln!("warning: {}", w.message),
        }
    }
}
