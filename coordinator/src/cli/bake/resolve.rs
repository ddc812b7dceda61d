//! From a definition and the names on the command line to the targets to build: groups
//! expanded (nested, each target once), `inherits` merged in order (the last parent wins), the
//! `--set` overrides applied at every level as buildx applies them, and the defaults filled in.

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
        let mut t = target(cfg, &name, overrides, &mut Vec::new())?;
        t.context.get_or_insert_with(|| ".".into());
        t.dockerfile.get_or_insert_with(|| "Dockerfile".into());
        out.targets.insert(name, t);
    }
    Ok(out)
}

/// The targets in an order that builds every `target:` link before the targets that use it.
pub fn build_order(r: &Resolved) -> Result<Vec<String>, BakeError> {
    fn visit(r: &Resolved, n: &str, stack: &mut Vec<String>, out: &mut Vec<String>) -> Result<(), BakeError> {
        // A linked target outside the selection is not built here (its link is refused later).
        if out.iter().any(|o| o == n) || !r.targets.contains_key(n) {
            return Ok(());
        }
        if stack.iter().any(|s| s == n) {
            return Err(BakeError::Cycle { chain: format!("{} -> {n}", stack.join(" -> ")) });
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
