//! Builders and contexts with `docker buildx` semantics: the model the coordinator cluster
//! keeps (in Raft) so a whole organisation shares them. Pure: no I/O.
//!
//! Every agent that joins is a context of its own name, and every context has an implicit
//! builder of the same name that cannot be removed while the context exists. The builder
//! `default` is every agent of the farm. Named builders are sets of nodes, each a context with
//! optional platform pins (`kiln create`, `--append`, `--leave`, `--platform`).

use kiln_shared::Platform;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const DEFAULT_BUILDER: &str = "default";
/// Drivers kiln has; `docker-container` is accepted as an alias of `runc` for buildx habits.
pub const DRIVERS: &[&str] = &["runc", "docker-container"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuilderError {
    #[error("context builder cannot be removed, run `kiln context rm {0}` to remove this context")]
    ContextBuilder(String),
    #[error("default builder cannot be removed")]
    DefaultBuilder,
    #[error("no builder {0:?} found")]
    NoBuilder(String),
    #[error("no context {0:?} found (contexts: {1})")]
    NoContext(String, String),
    #[error("builder {0:?} already exists: use --append to add a node to it")]
    Exists(String),
    #[error("builder {builder:?} has no node {node:?}")]
    NoNode { builder: String, node: String },
    #[error("node {node:?} already exists in builder {builder:?}")]
    NodeExists { builder: String, node: String },
    #[error("driver {0:?} is not supported (kiln has: runc, docker-container as its alias)")]
    Driver(String),
    #[error("invalid name {0:?}: use letters, digits, '-', '_' and '.'")]
    BadName(String),
}

/// An agent, as registered: what it told the farm about itself (the wire type, stored as is).
pub use kiln_shared::api::AgentInfo as Context;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub context: String,
    /// Platforms pinned on this node (`--platform`): only these are scheduled on it.
    pub platforms: Vec<Platform>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Builder {
    pub name: String,
    pub driver: String,
    pub nodes: Vec<Node>,
    /// Builds on this builder share step cache records across tenants (`--driver-opt
    /// share-cache=true`); otherwise each tenant sees only its own.
    #[serde(default)]
    pub share_cache: bool,
}

/// What `kiln create` asks for (the wire type, used as is).
pub use kiln_shared::api::CreateSpec as CreateRequest;

/// The farm's contexts and named builders.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Farm {
    pub contexts: BTreeMap<String, Context>,
    pub builders: BTreeMap<String, Builder>,
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 128 && n.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

impl Farm {
    pub fn register(&mut self, ctx: Context) -> Result<(), BuilderError> {
        if !valid_name(&ctx.name) {
            return Err(BuilderError::BadName(ctx.name));
        }
        self.contexts.insert(ctx.name.clone(), ctx);
        Ok(())
    }

    /// Removes a context (after it was drained) and its nodes from every builder; builders
    /// left without nodes go too.
    pub fn remove_context(&mut self, name: &str) -> Result<Context, BuilderError> {
        let ctx = self.contexts.remove(name).ok_or_else(|| self.no_context(name))?;
        for b in self.builders.values_mut() {
            b.nodes.retain(|n| n.context != name);
        }
        self.builders.retain(|_, b| !b.nodes.is_empty());
        Ok(ctx)
    }

    fn no_context(&self, name: &str) -> BuilderError {
        BuilderError::NoContext(name.to_string(), self.contexts.keys().cloned().collect::<Vec<_>>().join(", "))
    }

    /// `kiln create`: a new builder, `--append` a node, or `--leave` one. Returns the builder's name.
    pub fn create(&mut self, req: &CreateRequest, generated_name: &str) -> Result<String, BuilderError> {
        let driver = req.driver.clone().unwrap_or_else(|| "runc".into());
        if !DRIVERS.contains(&driver.as_str()) {
            return Err(BuilderError::Driver(driver));
        }
        let name = req.name.clone().unwrap_or_else(|| generated_name.to_string());
        if !valid_name(&name) {
            return Err(BuilderError::BadName(name));
        }
        if req.leave {
            let node = req.node.clone().ok_or_else(|| BuilderError::NoNode { builder: name.clone(), node: String::new() })?;
            let b = self.builders.get_mut(&name).ok_or_else(|| BuilderError::NoBuilder(name.clone()))?;
            let before = b.nodes.len();
            b.nodes.retain(|n| n.name != node);
            if b.nodes.len() == before {
                return Err(BuilderError::NoNode { builder: name, node });
            }
            if b.nodes.is_empty() {
                self.builders.remove(&name);
            }
            return Ok(name);
        }
        if name == DEFAULT_BUILDER || self.contexts.contains_key(&name) {
            return Err(BuilderError::Exists(name));
        }
        let context = match &req.context {
            Some(c) if self.contexts.contains_key(c) => c.clone(),
            Some(c) => return Err(self.no_context(c)),
            None => self.contexts.keys().next().cloned().ok_or_else(|| self.no_context("(none registered)"))?,
        };
        let existing = self.builders.get(&name);
        if existing.is_some() && !req.append {
            return Err(BuilderError::Exists(name));
        }
        let index = existing.map_or(0, |b| b.nodes.len());
        let node = Node { name: req.node.clone().unwrap_or_else(|| format!("{name}{index}")), context, platforms: req.platforms.clone() };
        let b = self.builders.entry(name.clone()).or_insert_with(|| Builder {
            name: name.clone(),
            driver: driver.clone(),
            nodes: vec![],
            share_cache: req.share_cache,
        });
        if b.nodes.iter().any(|n| n.name == node.name) {
            return Err(BuilderError::NodeExists { builder: name, node: node.name });
        }
        b.nodes.push(node);
        Ok(name)
    }

    /// `kiln rm NAME`.
    pub fn remove(&mut self, name: &str) -> Result<(), BuilderError> {
        if name == DEFAULT_BUILDER {
            return Err(BuilderError::DefaultBuilder);
        }
        if self.contexts.contains_key(name) && !self.builders.contains_key(name) {
            return Err(BuilderError::ContextBuilder(name.to_string()));
        }
        self.builders.remove(name).map(|_| ()).ok_or_else(|| BuilderError::NoBuilder(name.to_string()))
    }

    /// A builder by name: a named one, a context's implicit builder, or `default`.
    pub fn builder(&self, name: &str) -> Result<Builder, BuilderError> {
        if let Some(b) = self.builders.get(name) {
            return Ok(b.clone());
        }
        let node = |c: &Context| Node { name: c.name.clone(), context: c.name.clone(), platforms: vec![] };
        if let Some(c) = self.contexts.get(name) {
            return Ok(Builder { name: name.to_string(), driver: "runc".into(), nodes: vec![node(c)], share_cache: false });
        }
        if name == DEFAULT_BUILDER {
            return Ok(Builder {
                name: name.to_string(),
                driver: "runc".into(),
                nodes: self.contexts.values().map(node).collect(),
                share_cache: false,
            });
        }
        Err(BuilderError::NoBuilder(name.to_string()))
    }

    /// Every builder `kiln ls` shows: `default`, the contexts' own, then the named ones.
    pub fn list(&self) -> Vec<Builder> {
        let mut names = vec![DEFAULT_BUILDER.to_string()];
        names.extend(self.contexts.keys().cloned());
        names.extend(self.builders.keys().filter(|n| !self.contexts.contains_key(*n)).cloned());
        names.iter().filter_map(|n| self.builder(n).ok()).collect()
    }

    /// The agents a build on `builder` may use, each with the platforms it may run for it,
    /// borrowed from the farm: a submit asks this of `default`, every agent, per platform.
    pub fn candidates(&self, builder: &str) -> Result<Vec<Candidate<'_>>, BuilderError> {
        if let Some(b) = self.builders.get(builder) {
            return Ok(b
                .nodes
                .iter()
                .filter_map(|n| Some(Candidate { context: self.contexts.get(&n.context)?, pins: &n.platforms }))
                .collect());
        }
        if let Some(c) = self.contexts.get(builder) {
            return Ok(vec![Candidate { context: c, pins: &[] }]);
        }
        if builder == DEFAULT_BUILDER {
            return Ok(self.contexts.values().map(|c| Candidate { context: c, pins: &[] }).collect());
        }
        Err(BuilderError::NoBuilder(builder.to_string()))
    }

    /// Whether builds on `builder` share step cache records across tenants (only a named
    /// builder can: `--driver-opt share-cache=true`).
    pub fn shares_cache(&self, builder: &str) -> bool {
        self.builders.get(builder).is_some_and(|b| b.share_cache)
    }
}

/// An agent a build on some builder may use ([`Farm::candidates`]).
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    pub context: &'a Context,
    /// The node's platform pins; empty: everything the context runs.
    pins: &'a [Platform],
}

impl<'a> Candidate<'a> {
    pub fn name(&self) -> &'a str {
        &self.context.name
    }

    /// The platforms this agent may run for the builder: its pins that the context runs (in
    /// the pins' order), else everything the context runs, natively then emulated.
    pub fn platforms(&self) -> impl Iterator<Item = &'a Platform> + 'a {
        let (c, pins) = (self.context, self.pins);
        let pinned = pins.iter().filter(move |p| c.native.contains(p) || c.emulated.contains(p));
        // The pins, or everything when there are none: one of the two is empty.
        let everything = c.native.iter().chain(&c.emulated).take(if pins.is_empty() { usize::MAX } else { 0 });
        pinned.chain(everything)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    fn ctx(name: &str, native: &[&str], emulated: &[&str]) -> Context {
        Context {
            name: name.into(),
            endpoint: "127.0.0.1:1".into(),
            native: native.iter().map(|s| p(s)).collect(),
            emulated: emulated.iter().map(|s| p(s)).collect(),
            slots: 2,
            labels: BTreeMap::new(),
            version: "0.1.0".into(),
        }
    }

    fn farm() -> Farm {
        let mut f = Farm::default();
        f.register(ctx("a1", &["linux/amd64"], &["linux/arm64"])).unwrap();
        f.register(ctx("a2", &["linux/arm64"], &[])).unwrap();
        f
    }

    #[test]
    fn context_builders_cannot_be_removed() {
        let mut f = farm();
        assert_eq!(
            f.remove("a1").unwrap_err().to_string(),
            "context builder cannot be removed, run `kiln context rm a1` to remove this context"
        );
        assert_eq!(f.remove("default"), Err(BuilderError::DefaultBuilder));
        assert_eq!(f.remove("nope"), Err(BuilderError::NoBuilder("nope".into())));
    }

    #[test]
    fn create_append_leave_rm() {
        let mut f = farm();
        let req = CreateRequest { context: Some("a1".into()), name: Some("mixed".into()), ..Default::default() };
        assert_eq!(f.create(&req, "unused").unwrap(), "mixed");
        assert_eq!(f.create(&req, "unused"), Err(BuilderError::Exists("mixed".into())));
        let append = CreateRequest {
            context: Some("a2".into()),
            name: Some("mixed".into()),
            append: true,
            platforms: vec![p("linux/arm64")],
            ..Default::default()
        };
        f.create(&append, "x").unwrap();
        let b = f.builder("mixed").unwrap();
        assert_eq!(b.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), vec!["mixed0", "mixed1"]);
        let candidates: Vec<(&str, Vec<Platform>)> =
            f.candidates("mixed").unwrap().iter().map(|c| (c.name(), c.platforms().cloned().collect())).collect();
        assert_eq!(candidates, vec![("a1", vec![p("linux/amd64"), p("linux/arm64")]), ("a2", vec![p("linux/arm64")])]);
        let leave = CreateRequest { name: Some("mixed".into()), node: Some("mixed0".into()), leave: true, ..Default::default() };
        f.create(&leave, "x").unwrap();
        assert_eq!(f.builder("mixed").unwrap().nodes.len(), 1);
        f.remove("mixed").unwrap();
        assert!(f.builder("mixed").is_err());
    }

    #[test]
    fn drivers_names_and_listing() {
        let mut f = farm();
        let bad = CreateRequest { driver: Some("kubernetes".into()), ..Default::default() };
        assert_eq!(
            f.create(&bad, "b").unwrap_err().to_string(),
            "driver \"kubernetes\" is not supported (kiln has: runc, docker-container as its alias)"
        );
        let alias = CreateRequest { driver: Some("docker-container".into()), ..Default::default() };
        assert_eq!(f.create(&alias, "builder-1").unwrap(), "builder-1");
        let names: Vec<String> = f.list().into_iter().map(|b| b.name).collect();
        assert_eq!(names, vec!["default", "a1", "a2", "builder-1"]);
        assert_eq!(f.builder("default").unwrap().nodes.len(), 2);
        assert!(matches!(f.create(&CreateRequest { name: Some("a1".into()), ..Default::default() }, "x"), Err(BuilderError::Exists(_))));
        assert!(matches!(
            f.create(&CreateRequest { context: Some("zz".into()), ..Default::default() }, "x"),
            Err(BuilderError::NoContext(..))
        ));
    }

    #[test]
    fn removing_a_context_drops_its_nodes() {
        let mut f = farm();
        f.create(&CreateRequest { context: Some("a2".into()), name: Some("arm".into()), ..Default::default() }, "x").unwrap();
        f.remove_context("a2").unwrap();
        assert!(f.builder("arm").is_err(), "a builder left without nodes goes");
        assert!(f.builder("a2").is_err());
    }
}
