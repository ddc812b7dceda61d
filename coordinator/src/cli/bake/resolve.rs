//! From a definition and the names on the command line to the targets to build: groups
//! expanded (nested, each target once), `inherits` merged in order (the last parent wins), the
//! `--set` overrides applied at every level as buildx applies them, the defaults filled in, and
//! the targets `target:NAME` contexts link loaded.

use super::model::{Config, Group, Target};
use super::set::{self, Override};
use super::BakeError;
use std::collections::BTreeMap;

/// What a bake invocation builds, as `--print` shows it.
#[derive(Debug, Default)]
pub struct Resolved {
    pub groups: BTreeMap<String, Group>,
    pub targets: BTreeMap<String, Target>,
    /// The targets in the order the names asked for them.
    pub order: Vec<String>,
}

fn expand(cfg: &Config, name: &str, stack: &mut Vec<String>, out: &mut Resolved) -> Result<(), BakeError> {
    if let Some(g) = cfg.groups.get(name) {
        if stack.iter().any(|s| s == name) {
            return Err(BakeError::Cycle { chain: format!("{} -> {name}", stack.join(" -> ")) });
        }
        out.groups.insert(name.to_string(), g.clone());
        stack.push(name.to_string());
        for t in &g.targets {
            expand(cfg, t, stack, out)?;
        }
        stack.pop();
        return Ok(());
    }
    if cfg.targets.contains_key(name) {
        if !out.order.iter().any(|o| o == name) {
            out.order.push(name.to_string());
        }
        return Ok(());
    }
    Err(BakeError::UnknownTarget { name: name.to_string() })
}

/// One target with its parents merged in and the overrides applied (no defaults).
fn target(cfg: &Config, name: &str, overrides: &[Override], stack: &mut Vec<String>) -> Result<Target, BakeError> {
    if stack.iter().any(|s| s == name) {
        return Err(BakeError::Cycle { chain: format!("{} -> {name}", stack.join(" -> ")) });
    }
    let own = cfg.targets.get(name).ok_or_else(|| BakeError::UnknownTarget { name: name.to_string() })?;
    stack.push(name.to_string());
    let mut t = Target::default();
    for parent in &own.inherits {
        let p = target(cfg, parent, overrides, stack)?;
        t.merge(&p);
    }
    stack.pop();
    t.merge(own);
    t.inherits.clear();
    set::apply(&mut t, name, overrides)?;
    Ok(t)
}

/// Resolves `names` (the group `default` when there are none).
pub fn resolve(cfg: &Config, names: &[String], overrides: &[Override]) -> Result<Resolved, BakeError> {
    for o in overrides {
        if !cfg.targets.keys().any(|t| set::matches(&o.pattern, t)) {
            return Err(BakeError::Set {
                spec: format!("{}.{}={}", o.pattern, o.key, o.value),
                message: format!("could not find any target matching {:?}", o.pattern),
            });
        }
    }
    let names: Vec<String> = if names.is_empty() { vec!["default".into()] } else { names.to_vec() };
    let mut out = Resolved::default();
    for n in &names {
        expand(cfg, n, &mut Vec::new(), &mut out)?;
    }
    // As buildx prints it: the names asked for make up the group `default`.
    for n in names.iter().filter(|n| *n != "default") {
        let g = out.groups.entry("default".into()).or_default();
        if !g.targets.contains(n) {
            g.targets.push(n.clone());
        }
    }
    for name in out.order.clone() {
        let t = target(cfg, &name, overrides, &mut Vec::new())?;
        out.targets.insert(name, with_defaults(t));
    }
    for name in out.order.clone() {
        load_links(cfg, overrides, &name, &mut Vec::new(), &mut out)?;
    }
    Ok(out)
}

fn with_defaults(mut t: Target) -> Target {
    t.context.get_or_insert_with(|| ".".into());
    t.dockerfile.get_or_insert_with(|| "Dockerfile".into());
    t
}

/// buildx's `loadLinks`: every target a `target:NAME` context names joins the definition (one
/// not asked for builds into the cache alone: `output = ["type=cacheonly"]`); a chain that
/// comes back to a target is refused, and so are two multi-platform targets whose platforms differ.
fn load_links(cfg: &Config, overrides: &[Override], name: &str, visited: &mut Vec<String>, out: &mut Resolved) -> Result<(), BakeError> {
    visited.push(name.to_string());
    let links: Vec<String> = out.targets.get(name).map(|t| t.linked().into_iter().map(str::to_string).collect()).unwrap_or_default();
    for l in links {
        if visited.contains(&l) {
            return Err(BakeError::LinkCycle { chain: format!("{} -> {l}", visited.join(" -> ")) });
        }
        if !out.targets.contains_key(&l) {
            let mut t = with_defaults(target(cfg, &l, overrides, &mut Vec::new())?);
            t.outputs = Some(vec!["type=cacheonly".into()]);
            out.targets.insert(l.clone(), t);
        }
        load_links(cfg, overrides, &l, visited, out)?;
        let platforms = |n: &str| out.targets.get(n).and_then(|t| t.platforms.clone()).unwrap_or_default();
        let (mine, theirs) = (platforms(name), platforms(&l));
        let sorted = |p: &[String]| {
            let mut p = p.to_vec();
            p.sort();
            p
        };
        if mine.len() > 1 && theirs.len() > 1 && sorted(&mine) != sorted(&theirs) {
            return Err(BakeError::LinkPlatforms {
                linked: l.clone(),
                target: name.to_string(),
                theirs: theirs.join(" "),
                mine: mine.join(" "),
            });
        }
    }
    visited.pop();
    Ok(())
}

/// The targets in an order that builds every `target:` link before the targets that use it.
pub fn build_order(r: &Resolved) -> Result<Vec<String>, BakeError> {
    fn visit(r: &Resolved, n: &str, stack: &mut Vec<String>, out: &mut Vec<String>) -> Result<(), BakeError> {
        // Every linked target is in the definition (resolve loads them).
        if out.iter().any(|o| o == n) || !r.targets.contains_key(n) {
            return Ok(());
        }
        if stack.iter().any(|s| s == n) {
            return Err(BakeError::LinkCycle { chain: format!("{} -> {n}", stack.join(" -> ")) });
        }
        stack.push(n.to_string());
        if let Some(t) = r.targets.get(n) {
            for l in t.linked() {
                visit(r, l, stack, out)?;
            }
        }
        stack.pop();
        out.push(n.to_string());
        Ok(())
    }
    let mut out = Vec::new();
    for n in &r.order {
        visit(r, n, &mut Vec::new(), &mut out)?;
    }
    Ok(out)
}
