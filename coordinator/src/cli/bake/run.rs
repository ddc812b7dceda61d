//! Building a resolved bake: each target becomes the `BuildRequest` `kiln build` would make
//! from the same flags and goes through the same `prepare`, `farm_build::submit` and
//! `farm_build::follow`; every build is submitted before any is followed, so the farm's
//! scheduler spreads every target's slices over every agent at once. The first failure fails the command naming
//! the target and stops following the rest; `--keep-going` lets them finish and publish.

use super::model::Target;
use super::resolve::{self, Resolved};
use super::{BakeArgs, BakeError};
use crate::cli::build::{self, BuildRequest};
use crate::cli::checks;
use crate::cli::farm_build;
use crate::cli::progress::Mode;
use crate::cli::remote::Session;
use crate::cli::run_options;
use anyhow::{bail, Context as _};
use kiln_shared::api::BuildView;
use kiln_shared::frontend;
use kiln_shared::frontend::dockerignore::DockerIgnore;
use kiln_shared::frontend::lint;
use kiln_shared::Platform;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// Attributes kiln build has no flag for yet: set to anything, they stop the bake before it starts.
fn unsupported(name: &str, t: &Target) -> Result<(), BakeError> {
    let err = |what: &str| Err(BakeError::Unsupported { target: name.to_string(), what: what.to_string() });
    if let Some((k, linked)) = t.contexts.iter().flatten().find_map(|(k, v)| v.strip_prefix("target:").map(|l| (k, l))) {
        return err(&format!("contexts.{k}=target:{linked} (a linked target's result as a context)"));
    }
    if t.cache_to.as_ref().is_some_and(|c| c.len() > 1) {
        return err("more than one cache-to");
    }
    Ok(())
}

/// The request `kiln build` would make for this target (paths relative to `cwd`).
pub fn request(name: &str, t: &Target, cwd: &Path, builder: Option<&str>) -> anyhow::Result<BuildRequest> {
    unsupported(name, t)?;
    let context_s = t.context.as_deref().unwrap_or(".");
    if context_s.contains("://") || context_s.starts_with("git@") {
        bail!("target {name}: remote context {context_s} is not supported by kiln build yet");
    }
    let context = cwd.join(context_s);
    if !context.is_dir() {
        bail!("target {name}: build context {} is not a directory", context.display());
    }
    let dockerfile = t.dockerfile.as_deref().unwrap_or("Dockerfile");
    let (dockerfile_name, dockerfile_text, dockerfile_path) = match &t.dockerfile_inline {
        Some(text) => ("inline".to_string(), text.clone(), context.join("Dockerfile")),
        None => {
            // As buildx: a relative Dockerfile is in the context.
            let path: PathBuf = if Path::new(dockerfile).is_absolute() { dockerfile.into() } else { context.join(dockerfile) };
            let text = std::fs::read_to_string(&path).with_context(|| format!("target {name}: reading Dockerfile {}", path.display()))?;
            (path.display().to_string(), text, path)
        }
    };
    let platforms = match &t.platforms {
        Some(p) if !p.is_empty() => Platform::parse_list(&p.join(",")).with_context(|| format!("target {name}: platforms"))?,
        _ => vec![Platform::host()],
    };
    let mut build_args: Vec<(String, String)> = t.args.iter().flatten().map(|(k, v)| (k.clone(), v.clone())).collect();
    if let Ok(epoch) = std::env::var("SOURCE_DATE_EPOCH") {
        if !build_args.iter().any(|(k, _)| k == "SOURCE_DATE_EPOCH") {
            build_args.push(("SOURCE_DATE_EPOCH".into(), epoch));
        }
    }
    let mut push = false;
    let mut outputs = Vec::new();
    for o in t.outputs.iter().flatten() {
        // `type=registry` (or an image output with push=true) is `--push`.
        let registry = o.split(',').any(|f| f == "type=registry") || (o.contains("type=image") && o.contains("push=true"));
        if registry {
            push = true;
        } else {
            outputs.push(o.clone());
        }
    }
    Ok(BuildRequest {
        context,
        dockerfile_name,
        dockerfile_text,
        dockerfile_path,
        platforms,
        build_args,
        labels: t.labels.iter().flatten().map(|(k, v)| (k.clone(), v.clone())).collect(),
        target: t.target.clone(),
        tags: t.tags.clone().unwrap_or_default(),
        push,
        outputs,
        no_cache: t.no_cache == Some(true),
        cache_from: t.cache_from.clone().unwrap_or_default(),
        cache_to: t.cache_to.as_ref().and_then(|c| c.first().cloned()),
        insecure_registries: vec![],
        builder: builder.map(str::to_string),
        no_cache_filter: t.no_cache_filter.clone().unwrap_or_default(),
        pull: t.pull == Some(true),
        build_contexts: t.contexts.iter().flatten().map(|(k, v)| format!("{k}={v}")).collect(),
        secrets: t.secrets.clone().unwrap_or_default(),
        ssh: t.ssh.clone().unwrap_or_default(),
        run: run_options::from_flags(
            t.entitlements.as_deref().unwrap_or_default(),
            t.network.as_deref(),
            &t.extra_hosts.iter().flatten().map(|(h, ip)| format!("{h}={ip}")).collect::<Vec<_>>(),
            t.shm_size.as_deref(),
            t.ulimits.as_deref().unwrap_or_default(),
        )
        .with_context(|| format!("target {name}"))?,
        provenance: None,
        sbom: None,
        attest: t.attest.clone().unwrap_or_default(),
        annotations: t.annotations.clone().unwrap_or_default(),
    })
}

/// Parses the Dockerfile (errors name file:line:col) and runs the build checks; with
/// `# check=error=true` a broken rule fails the target, as `kiln build` does.
fn lint_gate(name: &str, req: &BuildRequest) -> anyhow::Result<()> {
    let df =
        frontend::parse(&req.dockerfile_text).map_err(|e| e.in_file(&req.dockerfile_name)).with_context(|| format!("target {name}"))?;
    let ignore = DockerIgnore::load(&req.context, &req.dockerfile_path)?;
    let (config, warnings) = checks::warnings(&df, &req.dockerfile_text, Some(&ignore), None)?;
    if config.error && !warnings.is_empty() {
        eprint!("{}", lint::report(&warnings, &req.dockerfile_name, &req.dockerfile_text));
        let rules: Vec<&str> = warnings.iter().map(|w| w.rule.name).collect();
        bail!("target {name}: lint violation found for rules: {}", rules.join(", "));
    }
    Ok(())
}

/// `--call check`: the build checks of every target, nothing built.
fn check(targets: &[(String, BuildRequest)]) -> anyhow::Result<ExitCode> {
    let mut code = ExitCode::SUCCESS;
    for (name, req) in targets {
        let df = frontend::parse(&req.dockerfile_text).map_err(|e| e.in_file(&req.dockerfile_name))?;
        let ignore = DockerIgnore::load(&req.context, &req.dockerfile_path)?;
        let (_, warnings) = checks::warnings(&df, &req.dockerfile_text, Some(&ignore), None)?;
        println!("target {name}:");
        if checks::print_check(&req.dockerfile_name, &req.dockerfile_text, &warnings) != ExitCode::SUCCESS {
            code = ExitCode::FAILURE;
        }
    }
    Ok(code)
}

pub fn run(args: &BakeArgs, resolved: &Resolved, cwd: &Path) -> anyhow::Result<ExitCode> {
    let order = resolve::build_order(resolved)?;
    let mut requests = Vec::new();
    for name in &order {
        let t = &resolved.targets[name];
        match t.call.as_deref() {
            None | Some("build") | Some("check") => {}
            Some(other) => bail!("target {name}: call={other} is not supported by kiln bake yet (build or check)"),
        }
        requests.push((name.clone(), request(name, t, cwd, args.builder.as_deref())?));
    }
    if resolved.targets.values().any(|t| t.call.as_deref() == Some("check")) {
        return check(&requests);
    }
    for (name, req) in &requests {
        lint_gate(name, req)?;
    }
    // The tty view redraws one build in place; several followed at once would draw over each
    // other, so they print plain lines, each labelled with its target.
    let mode = match Mode::parse(&args.progress)? {
        Mode::Tty if requests.len() > 1 => Mode::Plain,
        m => m,
    };
    for (name, req) in &requests {
        build::check(req).with_context(|| format!("target {name}"))?;
    }
    let session = args.farm.open()?;
    let mut prepared = Vec::new();
    for (name, req) in &requests {
        let p = build::prepare(req, &session, mode).with_context(|| format!("target {name}"))?;
        prepared.push((name.clone(), p.spec.tags.clone(), p));
    }
    let (done, failed) = session.block_on(submit_and_follow(&session, prepared, mode, args.keep_going))?;
    if let Some(path) = &args.metadata_file {
        let meta: serde_json::Map<String, serde_json::Value> =
            done.iter().map(|(n, (tags, v, prov))| (n.clone(), crate::cli::farm_build::metadata(v, prov, tags))).collect();
        std::fs::write(path, serde_json::to_vec_pretty(&meta)?).with_context(|| format!("writing {}", path.display()))?;
    }
    if !failed.is_empty() {
        bail!("target {} failed", failed.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

type Done = BTreeMap<String, (Vec<String>, BuildView, farm_build::Provenances)>;

/// Uploads every target's context at once (a blob shared by several is sent once), submits every
/// build back to back so the scheduler sees them all together, then follows them concurrently.
/// Returns the finished builds and the names of the failed ones; without `keep_going` the first
/// failure stops following the rest.
async fn submit_and_follow(
    session: &Session,
    prepared: Vec<(String, Vec<String>, farm_build::Prepared)>,
    mode: Mode,
    keep_going: bool,
) -> anyhow::Result<(Done, Vec<String>)> {
    let farm = Arc::new(session.connect().await?);
    let mut files = BTreeMap::new();
    for (_, _, p) in &prepared {
        files.extend(p.files.iter().map(|(d, path)| (d.clone(), path.clone())));
    }
    let (sent, bytes) = farm_build::upload(&farm, &files).await?;
    if mode == Mode::Plain {
        eprintln!(
            "#0 contexts of {} targets: {} blobs, {sent} sent ({bytes} bytes), the rest already on the farm",
            prepared.len(),
            files.len()
        );
    }
    let mut submitted = Vec::new();
    for (name, tags, p) in prepared {
        let build = farm_build::submit(&farm, p.spec.clone(), &BTreeMap::new(), Mode::Quiet)
            .await
            .with_context(|| format!("target {name}: submitting"))?;
        submitted.push((name, tags, p, build));
    }
    let mut set = tokio::task::JoinSet::new();
    for (name, tags, p, build) in submitted {
        let farm = Arc::clone(&farm);
        set.spawn(async move {
            let view = farm_build::follow(&farm, build, &p, mode, &name).await;
            (name, tags, view)
        });
    }
    let mut done = BTreeMap::new();
    let mut failed = Vec::new();
    while let Some(joined) = set.join_next().await {
        let (name, tags, view) = joined.context("following a target")?;
        match view {
            Ok((v, provenance)) => {
                if mode != Mode::Quiet {
                    let cached: u32 = v.slices.iter().map(|s| s.cache_hits).sum();
                    let ran: u32 = v.slices.iter().map(|s| s.cache_misses).sum();
                    let on: Vec<String> = v.slices.iter().map(|s| format!("{} on {}", s.platform, s.agent)).collect();
                    eprintln!("=> {name}: image index {} ({}; {ran} steps run, {cached} cached)", v.index_digest, on.join(", "));
                }
                done.insert(name, (tags, v, provenance));
            }
            Err(e) => {
                eprintln!("ERROR: target {name}: {e:#}");
                failed.push(name);
                if !keep_going {
                    // buildx cancels the rest; kiln stops following them (the farm has no
                    // cancel request yet, so builds already running there finish on their own).
                    set.abort_all();
                    break;
                }
            }
        }
    }
    Ok((done, failed))
}
