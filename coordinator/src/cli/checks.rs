//! `kiln build --call=check|targets|outline` (and `--check`): BuildKit's build checks and the
//! Dockerfile's targets, printed as buildx prints them; and the warnings a normal build shows.

use anyhow::bail;
use kiln_shared::frontend::dockerignore::DockerIgnore;
use kiln_shared::frontend::lint::{self, CheckConfig, Inputs, Warning};
use kiln_shared::frontend::{Dockerfile, Instruction};
use kiln_shared::oci::{self, ImageConfig, Index, Manifest};
use kiln_shared::registry::{Reference, RegistryClient, Timeouts};
use kiln_shared::store::ContentStore;
use kiln_shared::Platform;
use std::process::ExitCode;
use std::time::Duration;

/// What `--call` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    Build,
    Check,
    Targets,
    Outline,
}

impl Call {
    pub fn parse(call: Option<&str>, check: bool) -> anyhow::Result<Call> {
        if check {
            return Ok(Call::Check);
        }
        Ok(match call.unwrap_or("build") {
            "build" => Call::Build,
            "check" => Call::Check,
            "targets" => Call::Targets,
            "outline" => Call::Outline,
            other => bail!("--call {other:?} is not supported (expected build, check, targets or outline)"),
        })
    }
}

/// The checks of a Dockerfile. With `registry`, base images' environments are fetched so that
/// UndefinedVar knows what they define (as BuildKit's check does); without, stages on external
/// images skip that rule.
pub fn warnings(
    df: &Dockerfile,
    text: &str,
    ignore: Option<&DockerIgnore>,
    registry: Option<(&RegistryClient, &Platform)>,
) -> anyhow::Result<(CheckConfig, Vec<Warning>)> {
    let config = CheckConfig::parse(df.directives.check.as_deref()).map_err(anyhow::Error::msg)?;
    let store = ContentStore::open(&super::home::kiln_home().join("client/content"))?;
    let base_env = |image: &str| -> Option<Vec<String>> {
        let (client, platform) = registry?;
        image_env(client, &store, image, platform)
    };
    Ok((config.clone(), lint::check(df, text, &config, &Inputs { base_env: &base_env, ignore })))
}

/// A short-patience registry client for reading base image configs during checks.
pub fn registry_for_checks(insecure: &[String]) -> RegistryClient {
    let t = Timeouts { connect: Duration::from_secs(3), read: Duration::from_secs(10), total: Duration::from_secs(15) };
    RegistryClient::with_timeouts(insecure, t)
}

/// The environment of `image` for `platform`, from its config in the registry.
fn image_env(client: &RegistryClient, store: &ContentStore, image: &str, platform: &Platform) -> Option<Vec<String>> {
    let r: Reference = image.parse().ok()?;
    let mut fetched = client.get_manifest(&r).ok()?;
    if let Ok(index) = serde_json::from_slice::<Index>(&fetched.bytes) {
        if fetched.media_type == oci::MEDIA_INDEX || fetched.media_type.contains("manifest.list") {
            let d = index.manifests.iter().find(|d| d.platform.as_ref().and_then(|p| p.to_platform()).as_ref() == Some(platform))?;
            let by_digest = Reference { digest: Some(d.digest.clone()), tag: None, ..r.clone() };
            fetched = client.get_manifest(&by_digest).ok()?;
        }
    }
    let manifest: Manifest = serde_json::from_slice(&fetched.bytes).ok()?;
    client.fetch_blob(&r, &manifest.config.digest, store).ok()?;
    let config: ImageConfig = serde_json::from_slice(&store.read(&manifest.config.digest).ok()?).ok()?;
    Some(config.config.env)
}

/// `--call=check`: the report on standard output; exit 1 when a rule is broken.
pub fn print_check(name: &str, text: &str, warnings: &[Warning]) -> ExitCode {
    print!("{}", lint::report(warnings, name.trim_start_matches("./"), text));
    if warnings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// A stage's description: the comment right above its FROM that starts with its name.
fn description(text: &str, line: u32, name: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let Some(above) = (line as usize).checked_sub(2).and_then(|i| lines.get(i)) else { return String::new() };
    let comment = above.trim_start().strip_prefix('#').map(str::trim).unwrap_or("");
    comment.strip_prefix(name).filter(|rest| rest.starts_with(' ')).map(|rest| rest.trim().to_string()).unwrap_or_default()
}

/// `--call=targets`: every named stage with its description; the default (last) one marked.
pub fn print_targets(df: &Dockerfile, text: &str) -> ExitCode {
    let stages: Vec<(String, u32)> = df
        .instructions
        .iter()
        .filter_map(|l| match &l.instruction {
            Instruction::From(f) => Some((f.name.clone().unwrap_or_default(), l.pos.line)),
            _ => None,
        })
        .collect();
    let rows: Vec<(String, String)> = stages
        .iter()
        .enumerate()
        .filter(|(_, (name, _))| !name.is_empty())
        .map(|(i, (name, line))| {
            let label = if i + 1 == stages.len() { format!("{name} (default)") } else { name.clone() };
            (label, description(text, *line, name))
        })
        .collect();
    let width = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0).max("TARGET".len());
    println!("{:<width$}   DESCRIPTION", "TARGET");
    for (n, d) in rows {
        println!("{:<width$}   {d}", n);
    }
    ExitCode::SUCCESS
}

/// `--call=outline`: the target, its build arguments with their defaults and descriptions.
pub fn print_outline(df: &Dockerfile, text: &str, target: Option<&str>) -> anyhow::Result<ExitCode> {
    let froms: Vec<(usize, Option<String>, u32)> = df
        .instructions
        .iter()
        .enumerate()
        .filter_map(|(i, l)| match &l.instruction {
            Instruction::From(f) => Some((i, f.name.clone(), l.pos.line)),
            _ => None,
        })
        .collect();
    let chosen = match target {
        Some(t) => froms
            .iter()
            .position(|(_, n, _)| n.as_deref() == Some(&t.to_ascii_lowercase()))
            .ok_or_else(|| anyhow::anyhow!("target stage {t:?} could not be found"))?,
        None => froms.len().saturating_sub(1),
    };
    let (start, name, line) = froms.get(chosen).cloned().ok_or_else(|| anyhow::anyhow!("the Dockerfile has no stage"))?;
    let end = froms.get(chosen + 1).map_or(df.instructions.len(), |f| f.0);
    let mut args: Vec<(String, String, String)> = Vec::new();
    for l in df.instructions[..froms.first().map_or(0, |f| f.0)].iter().chain(&df.instructions[start..end]) {
        if let Instruction::Arg { args: decls } = &l.instruction {
            for a in decls {
                args.push((a.name.clone(), a.default.clone().unwrap_or_default(), description(text, l.pos.line, &a.name)));
            }
        }
    }
    let name = name.unwrap_or_else(|| chosen.to_string());
    let about = description(text, line, &name);
    println!("TARGET:      {name}");
    if !about.is_empty() {
        println!("DESCRIPTION: {about}");
    }
    if !args.is_empty() {
        println!();
        let w1 = args.iter().map(|a| a.0.len()).max().unwrap_or(0).max("BUILD ARG".len());
        let w2 = args.iter().map(|a| a.1.len()).max().unwrap_or(0).max("VALUE".len());
        println!("{:<w1$}   {:<w2$}   DESCRIPTION", "BUILD ARG", "VALUE");
        for (n, v, d) in args {
            println!("{n:<w1$}   {v:<w2$}   {d}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_are_comments_naming_the_stage() {
        let text = "# base the shared base\nFROM a AS base\n# not about build\nFROM base AS build\n";
        assert_eq!(description(text, 2, "base"), "the shared base");
        assert_eq!(description(text, 4, "build"), "");
        assert!(Call::parse(Some("lint"), false).is_err());
        assert_eq!(Call::parse(None, true).unwrap(), Call::Check);
    }
}
