//! Building a resolved bake: each target becomes the `BuildRequest` `kiln build` would make
//! from the same flags, is checked (lint gate, outputs, the platforms of its `target:` links)
//! and goes through the same `prepare`; `exec` submits and follows them all at once.

use super::model::Target;
use super::resolve::{self, Resolved};
use super::{exec, link, BakeArgs, BakeError};
use crate::cli::build::{self, BuildRequest};
use crate::cli::checks;
use crate::cli::progress::Mode;
use crate::cli::run_options;
use anyhow::{bail, Context as _};
use kiln_shared::frontend;
use kiln_shared::frontend::dockerignore::DockerIgnore;
use kiln_shared::frontend::lint;
use kiln_shared::Platform;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Attributes kiln build has no flag for yet: set to anything, they stop the bake before it starts.
fn unsupported(name: &str, t: &Target) -> Result<(), BakeError> {
    let err = |what: &str| Err(BakeError::Unsupported { target: name.to_string(), what: what.to_string() });
    if t.cache_to.as_ref().is_some_and(|c| c.len() > 1) {
        return err("more than one cache-to");
    }
    Ok(())
}

/// The request `kiln build` would make for this target (paths relative to `cwd`), but for its
/// `target:` contexts, which the executor adds once the linked targets are built.
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
        build_contexts: t.contexts.iter().flatten().filter(|(_, v)| !v.starts_with("target:")).map(|(k, v)| format!("{k}={v}")).collect(),
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
    let platforms: BTreeMap<String, Vec<Platform>> = requests.iter().map(|(n, r)| (n.clone(), r.platforms.clone())).collect();
    let linked: BTreeSet<&str> = order.iter().flat_map(|n| resolved.targets[n].linked()).collect();
    let session = args.farm.open()?;
    let current_builder = session.current_builder();
    let mut jobs = Vec::new();
    for (name, req) in requests {
        let links: Vec<(String, String)> = resolved.targets[&name]
            .contexts
            .iter()
            .flatten()
            .filter_map(|(k, v)| v.strip_prefix("target:").map(|l| (k.clone(), l.to_string())))
            .collect();
        for (ctx, l) in &links {
            link::check_platforms(&name, &req.platforms, ctx, l, platforms.get(l).map(Vec::as_slice).unwrap_or_default())?;
        }
        // A target that links nothing is prepared now, its context hashed and sent with the rest.
        let prepared = match links.is_empty() {
            true => Some(build::prepare(&req, current_builder.clone(), mode).with_context(|| format!("target {name}"))?),
            false => None,
        };
        jobs.push(exec::Job { linked_by_others: linked.contains(name.as_str()), name, req, links, prepared });
    }
    let opts = exec::Options { mode, keep_going: args.keep_going, current_builder };
    let (done, failed) = session.block_on(exec::execute(&session, jobs, opts))?;
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
