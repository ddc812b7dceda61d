//! Compose files as bake reads them: every service with a `build:` section is a target of the
//! service's name (`image` becomes its first tag), the `x-bake` extension adds bake-only
//! attributes, and `${VAR}`, `${VAR:-default}` and `$VAR` are interpolated from the environment.
//! The group `default` holds every such service.

use super::model::{Config, Group, Target};
use super::BakeError;
use serde_norway::Value as Yaml;
use std::collections::BTreeMap;

/// Compose's interpolation: `$$` is a dollar; `${VAR}`, `${VAR:-def}` (unset or empty),
/// `${VAR-def}` (unset), `${VAR:?err}` / `${VAR?err}` (fail), `$VAR`.
pub fn interpolate(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' {
            let ch = s[i..].chars().next().unwrap_or(' ');
            out.push(ch);
            i += ch.len_utf8();
            continue;
        }
        match b.get(i + 1) {
            Some(b'$') => {
                out.push('$');
                i += 2;
            }
            Some(b'{') => {
                let end = s[i..].find('}').ok_or_else(|| format!("{s:?}: unterminated ${{"))? + i;
                let inner = &s[i + 2..end];
                let name_end = inner.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(inner.len());
                let (name, op) = inner.split_at(name_end);
                let val = env(name);
                let text = if let Some(d) = op.strip_prefix(":-") {
                    val.filter(|v| !v.is_empty()).unwrap_or_else(|| d.to_string())
                } else if let Some(d) = op.strip_prefix('-') {
                    val.unwrap_or_else(|| d.to_string())
                } else if let Some(e) = op.strip_prefix(":?") {
                    val.filter(|v| !v.is_empty()).ok_or_else(|| format!("required variable {name} is missing a value: {e}"))?
                } else if let Some(e) = op.strip_prefix('?') {
                    val.ok_or_else(|| format!("required variable {name} is missing a value: {e}"))?
                } else if let Some(alt) = op.strip_prefix(":+") {
                    if val.is_some_and(|v| !v.is_empty()) {
                        alt.to_string()
                    } else {
                        String::new()
                    }
                } else if op.is_empty() {
                    val.unwrap_or_default()
                } else {
                    return Err(format!("{s:?}: invalid interpolation ${{{inner}}}"));
                };
                out.push_str(&text);
                i = end + 1;
            }
            _ => {
                let rest = &s[i + 1..];
                let n = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
                if n == 0 {
                    out.push('$');
                    i += 1;
                } else {
                    out.push_str(&env(&rest[..n]).unwrap_or_default());
                    i += 1 + n;
                }
            }
        }
    }
    Ok(out)
}

struct Ctx<'a> {
    file: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Ctx<'_> {
    fn err(&self, service: &str, message: impl Into<String>) -> BakeError {
        BakeError::Parse { file: self.file.into(), message: format!("service {service:?}: {}", message.into()) }
    }

    fn text(&self, service: &str, v: &Yaml) -> Result<String, BakeError> {
        let raw = match v {
            Yaml::String(s) => s.clone(),
            Yaml::Number(n) => n.to_string(),
            Yaml::Bool(b) => b.to_string(),
            Yaml::Null => String::new(),
            _ => return Err(self.err(service, "expected a string")),
        };
        interpolate(&raw, self.env).map_err(|m| self.err(service, m))
    }

    fn list(&self, service: &str, v: &Yaml) -> Result<Vec<String>, BakeError> {
        match v {
            Yaml::Sequence(s) => s.iter().map(|x| self.text(service, x)).collect(),
            Yaml::Null => Ok(vec![]),
            other => Ok(vec![self.text(service, other)?]),
        }
    }

    /// A mapping, or a list of `K=V` (a `K` alone takes the value from the environment).
    fn map(&self, service: &str, v: &Yaml, sep: char) -> Result<BTreeMap<String, String>, BakeError> {
        let mut out = BTreeMap::new();
        match v {
            Yaml::Mapping(m) => {
                for (k, v) in m {
                    let k = self.text(service, k)?;
                    if v.is_null() {
                        if let Some(e) = (self.env)(&k) {
                            out.insert(k, e);
                        }
                        continue;
                    }
                    out.insert(k, self.text(service, v)?);
                }
            }
            Yaml::Sequence(_) => {
                for item in self.list(service, v)? {
                    match item.split_once(sep) {
                        Some((k, v)) => {
                            out.insert(k.to_string(), v.to_string());
                        }
                        None => {
                            if let Some(e) = (self.env)(&item) {
                                out.insert(item, e);
                            }
                        }
                    }
                }
            }
            Yaml::Null => {}
            _ => return Err(self.err(service, "expected a mapping or a list")),
        }
        Ok(out)
    }
}

fn get<'a>(m: &'a Yaml, k: &str) -> Option<&'a Yaml> {
    m.as_mapping().and_then(|m| m.get(Yaml::String(k.into())))
}

/// Parses a Compose file into targets; `dir` is the file's directory as written in paths.
pub fn parse_compose(file: &str, text: &str, dir: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, BakeError> {
    let doc: Yaml = serde_norway::from_str(text).map_err(|e| BakeError::Parse { file: file.into(), message: e.to_string() })?;
    let cx = Ctx { file, env };
    let services = get(&doc, "services")
        .and_then(Yaml::as_mapping)
        .ok_or_else(|| BakeError::Parse { file: file.into(), message: "no services".into() })?;
    let secrets = get(&doc, "secrets");
    let mut cfg = Config::default();
    let mut names = Vec::new();
    for (name, svc) in services {
        let name = name.as_str().ok_or_else(|| BakeError::Parse { file: file.into(), message: "a service name is not a string".into() })?;
        let Some(build) = get(svc, "build") else { continue };
        let mut t = Target::default();
        let join = |p: String| if dir.is_empty() || dir == "." || p.starts_with('/') { p } else { format!("{dir}/{p}") };
        match build {
            Yaml::String(_) => t.context = Some(join(cx.text(name, build)?)),
            Yaml::Mapping(_) => {
                let ctx = match get(build, "context") {
                    Some(c) => cx.text(name, c)?,
                    None => ".".into(),
                };
                t.context = Some(join(ctx));
                for (key, v) in build.as_mapping().into_iter().flatten() {
                    let key = key.as_str().unwrap_or_default();
                    match key {
                        "context" => {}
                        "dockerfile" => t.dockerfile = Some(cx.text(name, v)?),
                        "dockerfile_inline" => t.dockerfile_inline = Some(cx.text(name, v)?),
                        "args" => t.args = Some(cx.map(name, v, '=')?),
                        "labels" => t.labels = Some(cx.map(name, v, '=')?),
                        "target" => t.target = Some(cx.text(name, v)?),
                        "tags" => t.tags = Some(cx.list(name, v)?),
                        "platforms" => t.platforms = Some(cx.list(name, v)?),
                        "cache_from" => t.cache_from = Some(cx.list(name, v)?),
                        "cache_to" => t.cache_to = Some(cx.list(name, v)?),
                        "ssh" => t.ssh = Some(cx.list(name, v)?),
                        "network" => t.network = Some(cx.text(name, v)?),
                        "no_cache" => t.no_cache = Some(cx.text(name, v)? == "true"),
                        "pull" => t.pull = Some(cx.text(name, v)? == "true"),
                        "shm_size" => t.shm_size = Some(cx.text(name, v)?),
                        "extra_hosts" => t.extra_hosts = Some(cx.map(name, v, ':')?),
                        // As buildx: `service:NAME` is the target the service makes.
                        "additional_contexts" => {
                            let mut m = cx.map(name, v, '=')?;
                            for v in m.values_mut() {
                                if let Some(service) = v.strip_prefix("service:") {
                                    *v = format!("target:{service}");
                                }
                            }
                            t.contexts = Some(m);
                        }
                        "ulimits" => t.ulimits = Some(ulimits(&cx, name, v)?),
                        "entitlements" => t.entitlements = Some(cx.list(name, v)?),
                        "secrets" => t.secrets = Some(compose_secrets(&cx, name, v, secrets)?),
                        "x-bake" => x_bake(&cx, name, v, &mut t)?,
                        other if other.starts_with("x-") => {}
                        other => return Err(cx.err(name, format!("build.{other} is not supported"))),
                    }
                }
            }
            _ => return Err(cx.err(name, "build must be a path or a mapping")),
        }
        t.dockerfile.get_or_insert_with(|| "Dockerfile".into());
        if let Some(image) = get(svc, "image") {
            let image = cx.text(name, image)?;
            let tags = t.tags.get_or_insert_with(Vec::new);
            if !tags.contains(&image) {
                tags.insert(0, image);
            }
        }
        names.push(name.to_string());
        cfg.targets.insert(name.to_string(), t);
    }
    names.sort();
    cfg.groups.insert("default".into(), Group { description: None, targets: names });
    Ok(cfg)
}

/// `ulimits: {nofile: {soft: 1024, hard: 2048}, nproc: 65535}` as buildx's `nofile=1024:2048`.
fn ulimits(cx: &Ctx, name: &str, v: &Yaml) -> Result<Vec<String>, BakeError> {
    let mut out = Vec::new();
    for (k, v) in v.as_mapping().into_iter().flatten() {
        let k = cx.text(name, k)?;
        match v {
            Yaml::Mapping(_) => {
                let soft = get(v, "soft").map(|x| cx.text(name, x)).transpose()?.unwrap_or_default();
                let hard = get(v, "hard").map(|x| cx.text(name, x)).transpose()?.unwrap_or_default();
                out.push(format!("{k}={soft}:{hard}"));
            }
            other => {
                let n = cx.text(name, other)?;
                out.push(format!("{k}={n}:{n}"));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A build secret names a top-level secret: `file:` → `id=N,src=PATH`, `environment:` → `id=N,env=VAR`.
fn compose_secrets(cx: &Ctx, name: &str, v: &Yaml, top: Option<&Yaml>) -> Result<Vec<String>, BakeError> {
    let mut out = Vec::new();
    for item in v.as_sequence().into_iter().flatten() {
        let (source, target) = match item {
            Yaml::Mapping(_) => {
                let s = get(item, "source").map(|x| cx.text(name, x)).transpose()?.unwrap_or_default();
                let t = get(item, "target").map(|x| cx.text(name, x)).transpose()?;
                (s, t)
            }
            other => (cx.text(name, other)?, None),
        };
        let def = top.and_then(|t| get(t, &source)).ok_or_else(|| cx.err(name, format!("secret {source:?} is not defined")))?;
        let id = target.unwrap_or_else(|| source.clone());
        if let Some(f) = get(def, "file") {
            out.push(format!("id={id},src={}", cx.text(name, f)?));
        } else if let Some(e) = get(def, "environment") {
            out.push(format!("id={id},env={}", cx.text(name, e)?));
        } else {
            return Err(cx.err(name, format!("secret {source:?} has neither file nor environment")));
        }
    }
    Ok(out)
}

/// The `x-bake` extension: bake attributes by their bake names (a string or a list each).
fn x_bake(cx: &Ctx, name: &str, v: &Yaml, t: &mut Target) -> Result<(), BakeError> {
    for (k, val) in v.as_mapping().into_iter().flatten() {
        let k = k.as_str().unwrap_or_default();
        match k {
            "tags" => t.tags = Some(cx.list(name, val)?),
            "cache-from" => t.cache_from = Some(cx.list(name, val)?),
            "cache-to" => t.cache_to = Some(cx.list(name, val)?),
            "secret" => t.secrets = Some(cx.list(name, val)?),
            "ssh" => t.ssh = Some(cx.list(name, val)?),
            "platforms" => t.platforms = Some(cx.list(name, val)?),
            "output" => t.outputs = Some(cx.list(name, val)?),
            "annotations" => t.annotations = Some(cx.list(name, val)?),
            "attest" => t.attest = Some(cx.list(name, val)?),
            "no-cache-filter" => t.no_cache_filter = Some(cx.list(name, val)?),
            "contexts" => t.contexts = Some(cx.map(name, val, '=')?),
            "pull" => t.pull = Some(cx.text(name, val)? == "true"),
            "no-cache" => t.no_cache = Some(cx.text(name, val)? == "true"),
            "shm-size" => t.shm_size = Some(cx.text(name, val)?),
            "call" => t.call = Some(cx.text(name, val)?),
            other => return Err(cx.err(name, format!("x-bake.{other} is not a bake attribute kiln knows"))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "TAG" => Some("1.2".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn interpolation_forms() {
        assert_eq!(interpolate("app:${TAG}", &env).unwrap(), "app:1.2");
        assert_eq!(interpolate("$TAG-$$x", &env).unwrap(), "1.2-$x");
        assert_eq!(interpolate("${NOPE:-def}/${EMPTY:-e}/${EMPTY-u}", &env).unwrap(), "def/e/");
        assert!(interpolate("${NOPE:?need it}", &env).unwrap_err().contains("need it"));
        assert!(interpolate("${TAG", &env).is_err());
    }

    proptest::proptest! {
        #[test]
        fn text_without_dollars_is_unchanged(s in "[^$]*") {
            proptest::prop_assert_eq!(interpolate(&s, &env).unwrap(), s);
        }
    }
}
