//! `kiln build`: reads the Dockerfile and context, resolves one plan per platform and, with
//! `--dry-run`, prints the stages that would run with every instruction expanded.

use super::checks::{self, Call};
use super::context::{self, ContextSummary};
use super::outputs::Output;
use super::progress::Mode;
use super::remote::FarmArgs;
pub use super::request::{check, prepare, BuildRequest};
use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};
use kiln_shared::frontend::dockerignore::DockerIgnore;
use kiln_shared::frontend::lint;
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
    /// The build context: a directory, a git repository URL (`URL#REF:SUBDIR`), a tarball or
    /// Dockerfile URL, or `-` (a tar archive or a Dockerfile on standard input).
    #[arg(default_value = ".")]
    pub path: PathBuf,
    /// The Dockerfile (default: PATH/Dockerfile; `-` reads it from standard input).
    #[arg(short = 'f', long = "file", help_heading = "Context and Dockerfile")]
    pub file: Option<PathBuf>,
    /// Target platforms, comma separated (e.g. linux/amd64,linux/arm64; `local` is this host).
    #[arg(long, value_delimiter = ',', help_heading = "Context and Dockerfile")]
    pub platform: Vec<String>,
    /// Image names to tag the result with.
    #[arg(short = 't', long = "tag", help_heading = "Outputs")]
    pub tags: Vec<String>,
    /// Build-time variables: KEY=VALUE, or KEY to take the value from the environment.
    #[arg(long = "build-arg", help_heading = "Context and Dockerfile")]
    pub build_args: Vec<String>,
    /// Labels for the image: KEY=VALUE.
    #[arg(long = "label", help_heading = "Outputs")]
    pub labels: Vec<String>,
    /// The stage to build (default: the last one).
    #[arg(long, help_heading = "Context and Dockerfile")]
    pub target: Option<String>,
    /// Resolve and print the plan without building.
    #[arg(long, help_heading = "Checks and dry runs")]
    pub dry_run: bool,
    /// Output format of --dry-run.
    #[arg(long, value_enum, default_value_t = Format::Text, help_heading = "Checks and dry runs")]
    pub format: Format,
    /// Push the result to the registry.
    #[arg(long, help_heading = "Outputs")]
    pub push: bool,
    /// Load the result into the Docker daemon (`DOCKER_HOST`; shorthand for -o type=docker).
    #[arg(long, help_heading = "Outputs")]
    pub load: bool,
    /// Output destination: type=oci|docker|tar,dest=F|- | type=local,dest=D | type=registry | type=cacheonly | DIR | -.
    #[arg(short = 'o', long = "output", help_heading = "Outputs")]
    pub outputs: Vec<String>,
    /// Shorthand for --attest type=provenance: true, false or mode=min|max (on, mode=min, for registry and OCI outputs unless BUILDX_NO_DEFAULT_ATTESTATIONS=1).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "true|false|mode=min|max", help_heading = "Attestations and annotations")]
    pub provenance: Option<String>,
    /// Shorthand for --attest type=sbom: true or false (an SPDX SBOM of the image's dpkg and apk packages).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "true|false", help_heading = "Attestations and annotations")]
    pub sbom: Option<String>,
    /// Attestations: type=provenance[,mode=min|max][,builder-id=URL][,disabled=true] | type=sbom[,disabled=true].
    #[arg(long, help_heading = "Attestations and annotations")]
    pub attest: Vec<String>,
    /// Annotations for registry and OCI outputs: [manifest:|manifest-descriptor:|index:|index-descriptor:][TYPE[os/arch]:]KEY=VALUE (default: manifest).
    #[arg(long = "annotation", help_heading = "Attestations and annotations")]
    pub annotations: Vec<String>,
    /// Do not use the step cache.
    #[arg(long, help_heading = "Cache")]
    pub no_cache: bool,
    /// Do not use the step cache for these stages (by name; repeatable, or comma separated).
    #[arg(long = "no-cache-filter", value_delimiter = ',', help_heading = "Cache")]
    pub no_cache_filter: Vec<String>,
    /// Resolve every base image at its registry again (the farm may know an older digest).
    #[arg(long, help_heading = "Cache")]
    pub pull: bool,
    /// Progress output: auto, plain, tty, rawjson, quiet.
    #[arg(long, default_value = "auto", help_heading = "Outputs")]
    pub progress: String,
    /// Write build metadata (digests, per-slice facts) as JSON to this file.
    #[arg(long, help_heading = "Outputs")]
    pub metadata_file: Option<PathBuf>,
    /// Write the image ID (the index digest) to this file.
    #[arg(long, help_heading = "Outputs")]
    pub iidfile: Option<PathBuf>,
    /// Suppress the build output and print the image ID on success (`--progress quiet`).
    #[arg(short = 'q', long, help_heading = "Outputs")]
    pub quiet: bool,
    /// The builder to use.
    #[arg(long, help_heading = "Farm")]
    pub builder: Option<String>,
    /// Submit, print the build's id and exit: the farm builds on (`kiln history logs -f ID`
    /// follows it). Needs a farm, and outputs the farm writes itself (`--push`).
    #[arg(long, help_heading = "Farm")]
    pub detach: bool,
    /// Import step cache records: type=local,src=DIR | type=registry,ref=REF (or a bare REF).
    #[arg(long = "cache-from", help_heading = "Cache")]
    pub cache_from: Vec<String>,
    /// Export step cache records: type=local,dest=DIR[,mode=min|max] | type=registry,ref=REF[,mode=max].
    #[arg(long = "cache-to", help_heading = "Cache")]
    pub cache_to: Option<String>,
    /// A registry to reach over plain HTTP (loopback registries always are).
    #[arg(long = "insecure-registry", help_heading = "Farm")]
    pub insecure_registries: Vec<String>,
    /// What to do with the Dockerfile: build, check (run the build checks), targets or outline.
    #[arg(long, help_heading = "Checks and dry runs")]
    pub call: Option<String>,
    /// Shorthand for --call=check.
    #[arg(long, help_heading = "Checks and dry runs")]
    pub check: bool,
    /// An additional build context: NAME=DIR | docker-image://REF | a git or HTTP(S) URL,
    /// used by `FROM NAME` and `COPY --from=NAME` (before any image of that name).
    #[arg(long = "build-context", help_heading = "Context and Dockerfile")]
    pub build_contexts: Vec<String>,
    /// A secret for `RUN --mount=type=secret`: id=ID[,src=FILE|,env=VAR][,type=file|env].
    #[arg(long = "secret", help_heading = "Secrets and SSH")]
    pub secrets: Vec<String>,
    /// An ssh-agent socket or keys for `RUN --mount=type=ssh`: default|ID[=SOCKET|KEY[,KEY..]].
    #[arg(long = "ssh", help_heading = "Secrets and SSH")]
    pub ssh: Vec<String>,
    /// The networking mode of RUN steps: default, none or host.
    #[arg(long, help_heading = "RUN steps")]
    pub network: Option<String>,
    /// A custom host-to-IP mapping for RUN steps' /etc/hosts: HOST:IP.
    #[arg(long = "add-host", help_heading = "RUN steps")]
    pub add_hosts: Vec<String>,
    /// The size of RUN steps' /dev/shm (e.g. 128m; default 64m).
    #[arg(long = "shm-size", help_heading = "RUN steps")]
    pub shm_size: Option<String>,
    /// A resource limit of RUN steps: NAME=SOFT[:HARD] (e.g. nofile=1024:4096).
    #[arg(long = "ulimit", help_heading = "RUN steps")]
    pub ulimits: Vec<String>,
    /// An extra privileged entitlement: network.host or security.insecure.
    #[arg(long = "allow", help_heading = "RUN steps")]
    pub allow: Vec<String>,
    /// Accepted for buildx's command lines and ignored (steps run in the agents' own cgroups).
    #[arg(long = "cgroup-parent", help_heading = "RUN steps")]
    pub cgroup_parent: Option<String>,
    /// The farm (`--host`/`KILN_HOST`, `--token`/`KILN_TOKEN`); without one, the embedded farm runs in this process.
    #[command(flatten, next_help_heading = "Farm")]
    pub farm: FarmArgs,
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

pub fn run(mut args: BuildArgs) -> anyhow::Result<ExitCode> {
    // A git repository, a URL or standard input is fetched into a directory first; `-f` is
    // then a path inside it, as in buildx.
    let keep_git =
        args.build_args.iter().any(|a| matches!(a.split_once('='), Some(("BUILDKIT_CONTEXT_KEEP_GIT_DIR", v)) if v == "1" || v == "true"));
    let remote = args.path.as_os_str() == "-" || args.path.to_str().is_some_and(|p| p.contains("://") || p.starts_with("git@"));
    if args.path.as_os_str() == "-" && args.file.as_deref() == Some(Path::new("-")) {
        bail!("the context and the Dockerfile cannot both come from standard input (-f - with context -)");
    }
    let fetched = super::source::fetch(&args.path, keep_git)?;
    if remote {
        if let Some(f) = args.file.as_mut().filter(|f| f.as_os_str() != "-" && f.is_relative()) {
            *f = fetched.dir.join(&*f);
        }
        if args.file.is_none() {
            args.file = fetched.dockerfile.clone();
        }
    }
    args.path = fetched.dir.clone();
    let (name, text) = read_dockerfile(&args)?;
    let platforms = if args.platform.is_empty() { vec![Platform::host()] } else { Platform::parse_list(&args.platform.join(","))? };
    let mut build_args = parse_build_args(&args.build_args)?;
    // As buildx: the client's SOURCE_DATE_EPOCH reaches the builder as a build argument (the
    // agents' own environment never decides an image's timestamps).
    if let Ok(epoch) = std::env::var("SOURCE_DATE_EPOCH") {
        if !build_args.iter().any(|(k, _)| k == "SOURCE_DATE_EPOCH") {
            build_args.push(("SOURCE_DATE_EPOCH".into(), epoch));
        }
    }
    // Errors in the Dockerfile are reported before anything runs.
    let df = frontend::parse(&text).map_err(|e| e.in_file(&name))?;
    let dockerfile_path = dockerfile_path(&args);
    if !args.path.is_dir() {
        bail!("build context {} is not a directory", args.path.display());
    }
    match Call::parse(args.call.as_deref(), args.check)? {
        Call::Targets => return Ok(checks::print_targets(&df, &text)),
        Call::Outline => return checks::print_outline(&df, &text, args.target.as_deref()),
        Call::Check => {
            let ignore = DockerIgnore::load(&args.path, &dockerfile_path)?;
            let registry = checks::registry_for_checks(&args.insecure_registries);
            let (_, warnings) = checks::warnings(&df, &text, Some(&ignore), Some((&registry, &platforms[0])))?;
            return Ok(checks::print_check(&name, &text, &warnings));
        }
        Call::Build => {}
    }
    if !args.dry_run {
        // The checks run before the build (base images are not fetched for them here); with
        // `# check=error=true` a broken rule fails it, otherwise they are listed at the end.
        let ignore = DockerIgnore::load(&args.path, &dockerfile_path)?;
        let (config, warnings) = checks::warnings(&df, &text, Some(&ignore), None)?;
        if config.error && !warnings.is_empty() {
            eprint!("{}", lint::report(&warnings, name.trim_start_matches("./"), &text));
            let rules: Vec<&str> = warnings.iter().map(|w| w.rule.name).collect();
            bail!("lint violation found for rules: {}", rules.join(", "));
        }
        let quiet = args.quiet || args.progress == "quiet";
        let req = BuildRequest {
            context: args.path.clone(),
            dockerfile_name: name,
            dockerfile_text: text,
            dockerfile_path,
            platforms,
            build_args,
            labels: parse_labels(&args.labels)?,
            target: args.target.clone(),
            tags: args.tags.clone(),
            push: args.push,
            outputs: args.outputs.iter().cloned().chain(args.load.then(|| "type=docker".to_string())).collect(),
            no_cache: args.no_cache,
            cache_from: args.cache_from.clone(),
            cache_to: args.cache_to.clone(),
            insecure_registries: args.insecure_registries.clone(),
            builder: args.builder.clone(),
            build_contexts: args.build_contexts.clone(),
            no_cache_filter: args.no_cache_filter.clone(),
            pull: args.pull,
            secrets: args.secrets.clone(),
            ssh: args.ssh.clone(),
            run: super::run_options::parse(&args)?,
            provenance: args.provenance.clone(),
            sbom: args.sbom.clone(),
            attest: args.attest.clone(),
            annotations: args.annotations.clone(),
        };
        if args.cgroup_parent.is_some() && !quiet {
            eprintln!("WARNING: --cgroup-parent is ignored: kiln runs steps in its agents' own cgroups");
        }
        let code = build(args, req)?;
        if !warnings.is_empty() && !quiet {
            eprint!("\n{}", lint::summary(&warnings));
        }
        return Ok(code);
    }
    let context = context::summarize(&args.path, &dockerfile_path)?;
    let host = Platform::host();
    let mut plans = Vec::new();
    for platform in platforms {
        let opts = Options {
            platform,
            build_platform: host.clone(),
            build_args: &build_args,
            target: args.target.as_deref(),
            images: &NoImages,
            contexts: &[],
        };
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

/// A real build, on the farm named by `--host`/`KILN_HOST` or on the embedded farm: the same
/// path either way (upload what the farm lacks, submit, follow, write the outputs).
fn build(args: BuildArgs, req: BuildRequest) -> anyhow::Result<ExitCode> {
    let mode = if args.quiet { Mode::Quiet } else { Mode::parse(&args.progress)? };
    check(&req)?;
    let session = args.farm.open()?;
    if args.detach {
        if session.is_embedded() {
            bail!("--detach needs a farm (--host or KILN_HOST): the embedded farm ends with this process");
        }
        for o in &req.outputs {
            if Output::parse(o)?.needs_blobs() {
                bail!(
                    "--detach: the output {o:?} is written by this client; use --push (or -o type=registry), which the farm writes itself"
                );
            }
        }
    }
    let prepared = prepare(&req, session.current_builder(), mode)?;
    let tags = prepared.spec.tags.clone();
    if args.detach {
        let build = super::farm_build::detach(&session, prepared, mode)?;
        println!("{build}");
        return Ok(ExitCode::SUCCESS);
    }
    let (view, provenance) = super::farm_build::run(&session, prepared, mode)?;
    if let Some(path) = &args.iidfile {
        std::fs::write(path, &view.index_digest).with_context(|| format!("writing --iidfile {}", path.display()))?;
    }
    super::farm_build::finish(&view, &provenance, &tags, args.metadata_file.as_deref(), mode)
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

/// `--label KEY=VALUE` (a label with no `=` has the empty value, as buildx takes it).
fn parse_labels(raw: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    raw.iter()
        .map(|l| match l.split_once('=') {
            Some(("", _)) => bail!("--label {l:?}: the key is empty (expected KEY=VALUE)"),
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None if l.is_empty() => bail!("--label needs KEY=VALUE"),
            None => Ok((l.clone(), String::new())),
        })
        .collect()
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
