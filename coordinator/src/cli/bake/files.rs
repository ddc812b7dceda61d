//! Which files a bake reads and how they become one definition: with no `-f`, the files buildx
//! looks for in the working directory, in its order; `-f` repeatable, `-f -` standard input.
//! Compose files are read first, then the HCL and JSON files are evaluated as one body (buildx
//! merges their blocks before evaluating), and their targets override the Compose ones.

use super::hcl::{self, Raw};
use super::model::Config;
use super::{compose, json, BakeError};
use std::io::Read;
use std::path::Path;

/// buildx's default files, in its order (every one that exists is read).
pub const DEFAULT_FILES: [&str; 12] = [
    "compose.yaml",
    "compose.yml",
    "docker-compose.yml",
    "docker-compose.yaml",
    "docker-bake.json",
    "docker-bake.hcl",
    "docker-bake.override.json",
    "docker-bake.override.hcl",
    "compose.override.yaml",
    "compose.override.yml",
    "docker-compose.override.yml",
    "docker-compose.override.yaml",
];

/// One file's name (as given) and text.
pub struct Source {
    pub name: String,
    pub text: String,
}

/// Reads the files named with `-f` (in `cwd`), or buildx's default files.
pub fn sources(files: &[String], cwd: &Path) -> Result<Vec<Source>, BakeError> {
    let read = |name: &str| -> Result<Source, BakeError> {
        if name == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| BakeError::File { path: "-".into(), message: format!("reading standard input: {e}") })?;
            return Ok(Source { name: "-".into(), text });
        }
        let text = std::fs::read_to_string(cwd.join(name)).map_err(|e| BakeError::File { path: name.into(), message: e.to_string() })?;
        Ok(Source { name: name.into(), text })
    };
    if !files.is_empty() {
        return files.iter().map(|f| read(f)).collect();
    }
    let found: Vec<Source> = DEFAULT_FILES.iter().filter(|f| cwd.join(f).is_file()).map(|f| read(f)).collect::<Result<_, _>>()?;
    if found.is_empty() {
        return Err(BakeError::File {
            path: cwd.display().to_string(),
            message: "no bake file found (looked for docker-bake.hcl, docker-bake.json, compose.yaml and the rest of buildx's list)".into(),
        });
    }
    Ok(found)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Compose,
    Json,
    Hcl,
}

fn kind(s: &Source) -> Kind {
    let lower = s.name.to_ascii_lowercase();
    if lower.ends_with(".yml") || lower.ends_with(".yaml") {
        return Kind::Compose;
    }
    if lower.ends_with(".json") {
        return Kind::Json;
    }
    if lower.ends_with(".hcl") {
        return Kind::Hcl;
    }
    // Standard input or another name: JSON if it parses, Compose if it has services, else HCL.
    if serde_json::from_str::<serde_json::Value>(&s.text).is_ok_and(|v| v.is_object()) {
        return Kind::Json;
    }
    if serde_norway::from_str::<serde_norway::Value>(&s.text).is_ok_and(|v| v.get("services").is_some()) {
        return Kind::Compose;
    }
    Kind::Hcl
}

/// Every file, evaluated and merged into one definition.
pub fn load(sources: &[Source], env: &dyn Fn(&str) -> Option<String>) -> Result<Config, BakeError> {
    let mut cfg = Config::default();
    let mut raw = Raw::default();
    let mut any_hcl = false;
    for s in sources {
        match kind(s) {
            Kind::Compose => {
                let dir = Path::new(&s.name).parent().map(|p| p.display().to_string()).unwrap_or_default();
                cfg.merge(compose::parse_compose(&s.name, &s.text, &dir, env)?);
            }
            Kind::Json => {
                raw.merge(json::parse_json(&s.name, &s.text)?);
                any_hcl = true;
            }
            Kind::Hcl => {
                raw.merge(hcl::parse_hcl(&s.name, &s.text)?);
                any_hcl = true;
            }
        }
    }
    if any_hcl {
        cfg.merge(hcl::evaluate(&raw, env)?);
    }
    Ok(cfg)
}
