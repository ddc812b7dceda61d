//! The bake target as buildx defines it (`bake.Target`): every attribute optional, merged along
//! `inherits` with buildx's rules (maps merge key by key, some lists append, the rest replace).
//! Field order is buildx's struct order, which is the key order of `--print`.

use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Target {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Only in blocks: a resolved target has none (they are merged in).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inherits: Vec<String>,
    #[serde(skip_serializing_if = "empty_list")]
    pub annotations: Option<Vec<String>>,
    #[serde(skip_serializing_if = "empty_list")]
    pub attest: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    #[serde(skip_serializing_if = "empty_map")]
    pub contexts: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dockerfile_inline: Option<String>,
    #[serde(skip_serializing_if = "empty_map")]
    pub args: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "empty_map")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "empty_list")]
    pub tags: Option<Vec<String>>,
    #[serde(skip_serializing_if = "empty_list")]
    pub cache_from: Option<Vec<String>>,
    #[serde(skip_serializing_if = "empty_list")]
    pub cache_to: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(rename = "secret", skip_serializing_if = "empty_list")]
    pub secrets: Option<Vec<String>>,
    #[serde(skip_serializing_if = "empty_list")]
    pub ssh: Option<Vec<String>>,
    #[serde(skip_serializing_if = "empty_list")]
    pub platforms: Option<Vec<String>>,
    #[serde(rename = "output", skip_serializing_if = "empty_list")]
    pub outputs: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_cache: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(skip_serializing_if = "empty_list")]
    pub no_cache_filter: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<String>,
    #[serde(skip_serializing_if = "empty_list")]
    pub ulimits: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call: Option<String>,
    #[serde(skip_serializing_if = "empty_list")]
    pub entitlements: Option<Vec<String>>,
    #[serde(skip_serializing_if = "empty_map")]
    pub extra_hosts: Option<BTreeMap<String, String>>,
}

/// Go's `omitempty`: an empty list or map is not printed, as a missing one is not.
fn empty_list(v: &Option<Vec<String>>) -> bool {
    v.as_ref().is_none_or(Vec::is_empty)
}

fn empty_map(v: &Option<BTreeMap<String, String>>) -> bool {
    v.as_ref().is_none_or(BTreeMap::is_empty)
}

fn merge_map(into: &mut Option<BTreeMap<String, String>>, from: &Option<BTreeMap<String, String>>) {
    if let Some(from) = from {
        let m = into.get_or_insert_with(BTreeMap::new);
        m.extend(from.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
}

fn append(into: &mut Option<Vec<String>>, from: &Option<Vec<String>>) {
    if let Some(from) = from {
        into.get_or_insert_with(Vec::new).extend(from.iter().cloned());
    }
}

fn replace<T: Clone>(into: &mut Option<T>, from: &Option<T>) {
    if from.is_some() {
        into.clone_from(from);
    }
}

/// Appends `from` to `into`, an entry with the same key (`type=` for attest, `id=` for secrets
/// and ssh) replacing the earlier one, as buildx's `Attests.Merge` and `Secrets.Merge` do.
fn merge_keyed(into: &mut Option<Vec<String>>, from: &Option<Vec<String>>, key: &str, default: &str) {
    let Some(from) = from else { return };
    let id = |s: &str| -> String {
        s.split(',').find_map(|f| f.strip_prefix(key).and_then(|r| r.strip_prefix('='))).unwrap_or(default).to_string()
    };
    let list = into.get_or_insert_with(Vec::new);
    for f in from {
        let k = id(f);
        list.retain(|e| id(e) != k);
        list.push(f.clone());
    }
}

impl Target {
    /// buildx's `Target.Merge(t2)`: `other` wins where it says something.
    pub fn merge(&mut self, other: &Target) {
        replace(&mut self.context, &other.context);
        replace(&mut self.dockerfile, &other.dockerfile);
        replace(&mut self.dockerfile_inline, &other.dockerfile_inline);
        merge_map(&mut self.args, &other.args);
        merge_map(&mut self.contexts, &other.contexts);
        merge_map(&mut self.labels, &other.labels);
        replace(&mut self.tags, &other.tags);
        replace(&mut self.target, &other.target);
        replace(&mut self.call, &other.call);
        append(&mut self.annotations, &other.annotations);
        merge_keyed(&mut self.attest, &other.attest, "type", "");
        merge_keyed(&mut self.secrets, &other.secrets, "id", "");
        merge_keyed(&mut self.ssh, &other.ssh, "id", "default");
        replace(&mut self.platforms, &other.platforms);
        append(&mut self.cache_from, &other.cache_from);
        if let Some(c) = &mut self.cache_from {
            let mut seen = std::collections::HashSet::new();
            c.retain(|e| seen.insert(e.clone()));
        }
        replace(&mut self.cache_to, &other.cache_to);
        replace(&mut self.outputs, &other.outputs);
        replace(&mut self.pull, &other.pull);
        replace(&mut self.no_cache, &other.no_cache);
        replace(&mut self.network, &other.network);
        append(&mut self.no_cache_filter, &other.no_cache_filter);
        replace(&mut self.shm_size, &other.shm_size);
        append(&mut self.ulimits, &other.ulimits);
        replace(&mut self.description, &other.description);
        append(&mut self.entitlements, &other.entitlements);
        merge_map(&mut self.extra_hosts, &other.extra_hosts);
    }

    /// The names of the targets this one links with `target:NAME` contexts.
    pub fn linked(&self) -> Vec<&str> {
        self.contexts.iter().flatten().filter_map(|(_, v)| v.strip_prefix("target:")).collect()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Group {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub targets: Vec<String>,
}

/// What the files say, before a selection is resolved: target blocks (after matrix expansion)
/// and groups, in the order they were first declared.
#[derive(Clone, Debug, Default)]
pub struct Config {
    pub targets: indexmap::IndexMap<String, Target>,
    pub groups: indexmap::IndexMap<String, Group>,
    pub variables: Vec<Variable>,
}

/// A variable and the value it took (for `--list variables`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variable {
    pub name: String,
    pub value: Option<String>,
    pub description: Option<String>,
}

impl Config {
    /// Later files win: a block of the same name adds to and overrides the earlier one.
    pub fn merge(&mut self, other: Config) {
        for (name, t) in other.targets {
            match self.targets.get_mut(&name) {
                Some(mine) => {
                    mine.merge(&t);
                    if !t.inherits.is_empty() {
                        mine.inherits = t.inherits;
                    }
                }
                None => {
                    self.targets.insert(name, t);
                }
            }
        }
        for (name, g) in other.groups {
            self.groups.insert(name, g);
        }
        for v in other.variables {
            self.variables.retain(|w| w.name != v.name);
            self.variables.push(v);
        }
    }
}
