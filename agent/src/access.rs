//! Who may read what from this agent's peer endpoint, and what it presents to other agents'.
//!
//! An agent certificate alone reads nothing: another agent's request carries the grants of
//! the slices it runs (signed by the cluster CA, see [`Grant`]), and is served only
//! - a step cache record of a grant's cache scope (its name is the scope's hash of the key it
//!   holds, see [`crate::engine::record_name`]);
//! - a blob a grant names, a context blob this agent holds for the grant's tenant, or a layer
//!   of a record of the grant's scope that this agent holds.
//!
//! A revoked agent's key (the leader's list, from the polls) is refused outright.

use crate::state::State;
use kiln_shared::api::{Grant, GrantError};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// A running slice: (build, slice, attempt).
pub type SliceKey = (u64, u32, u32);

/// Context blobs remembered per tenant, at most (the map starts over beyond it).
const MAX_TENANT_BLOBS: usize = 1 << 20;

/// blob → (record name, record key) of each record that lists it as a layer.
type LayerIndex = HashMap<String, Vec<(String, String)>>;

pub struct Access {
    ca_der: Vec<u8>,
    cache_dir: PathBuf,
    /// This agent's grants, one per running slice: what it presents to peers.
    held: Mutex<BTreeMap<SliceKey, Grant>>,
    /// Key fingerprints of revoked agents.
    revoked: Mutex<HashSet<String>>,
    /// Context blobs this agent holds, by the tenants whose slices used them.
    tenant_blobs: Mutex<HashMap<String, HashSet<String>>>,
    /// blob → (record name, record key) of the records here that list it as a layer, as of
    /// the cache directory's modification time (a record written or removed changes it).
    layers: Mutex<(Option<SystemTime>, LayerIndex)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Access {
    pub fn new(ca_der: &[u8], root: &Path) -> Access {
        Access {
            ca_der: ca_der.to_vec(),
            cache_dir: root.join("cache"),
            held: Mutex::default(),
            revoked: Mutex::default(),
            tenant_blobs: Mutex::default(),
            layers: Mutex::default(),
        }
    }

    pub fn hold(&self, slice: SliceKey, grant: Grant) {
        lock(&self.held).insert(slice, grant);
    }

    pub fn release(&self, slice: SliceKey) {
        lock(&self.held).remove(&slice);
    }

    /// The grants this agent presents to its peers.
    pub fn presented(&self) -> Vec<Grant> {
        lock(&self.held).values().cloned().collect()
    }

    pub fn set_revoked(&self, keys: Vec<String>) {
        *lock(&self.revoked) = keys.into_iter().collect();
    }

    pub fn is_revoked(&self, key: &str) -> bool {
        lock(&self.revoked).contains(key)
    }

    /// Context blobs of a slice for `tenant`: peers running that tenant's slices may fetch them.
    pub fn note_tenant_blobs<'a>(&self, tenant: &str, digests: impl IntoIterator<Item = &'a str>) {
        let mut map = lock(&self.tenant_blobs);
        if map.len() > MAX_TENANT_BLOBS {
            map.clear();
        }
        for d in digests {
            map.entry(d.to_string()).or_default().insert(tenant.to_string());
        }
    }

    /// The grants of `agent`'s request that hold now, or why none does.
    pub fn valid<'a>(&self, grants: &'a [Grant], agent: &str) -> Result<Vec<&'a Grant>, GrantError> {
        Grant::valid(grants, &self.ca_der, agent, now_ms())
    }

    /// Whether record `name` (its bytes as stored) is of one of the grants' scopes.
    pub fn may_read_record(grants: &[&Grant], name: &str, bytes: &[u8]) -> bool {
        let Ok(state) = serde_json::from_slice::<State>(bytes) else { return false };
        grants.iter().any(|g| crate::engine::record_name(&g.scope, &state.key) == name)
    }

    /// Whether blob `digest` may go to a holder of `grants`.
    pub fn may_read_blob(&self, grants: &[&Grant], digest: &str) -> bool {
        if grants.iter().any(|g| g.blobs.iter().any(|b| b == digest)) {
            return true;
        }
        if lock(&self.tenant_blobs).get(digest).is_some_and(|t| grants.iter().any(|g| t.contains(&g.tenant))) {
            return true;
        }
        let in_scope = |index: &LayerIndex| {
            index.get(digest).is_some_and(|records| {
                records.iter().any(|(name, key)| grants.iter().any(|g| crate::engine::record_name(&g.scope, key) == *name))
            })
        };
        let mut layers = lock(&self.layers);
        if in_scope(&layers.1) {
            return true;
        }
        let changed = std::fs::metadata(&self.cache_dir).and_then(|m| m.modified()).ok();
        if changed.is_none() || layers.0 == changed {
            return false;
        }
        *layers = (changed, index(&self.cache_dir));
        in_scope(&layers.1)
    }
}

/// Every record's layers: blob → (record name, record key).
fn index(dir: &Path) -> LayerIndex {
    let mut out = LayerIndex::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let file = e.file_name().to_string_lossy().to_string();
        let Some(name) = file.strip_suffix(".json") else { continue };
        let Some(state) = std::fs::read(e.path()).ok().and_then(|b| serde_json::from_slice::<State>(&b).ok()) else { continue };
        for l in &state.layers {
            out.entry(l.digest.to_string()).or_default().push((name.to_string(), state.key.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Layer;
    use kiln_shared::digest::Digest;

    fn grant(tenant: &str, scope: &str) -> Grant {
        Grant { agent: "a".into(), tenant: tenant.into(), scope: scope.into(), ..Default::default() }
    }

    #[test]
    fn records_and_layers_of_the_grants_scope_only() {
        let root = std::env::temp_dir().join(format!("kiln-access-{}", std::process::id()));
        std::fs::create_dir_all(root.join("cache")).expect("dir");
        let layer = Digest::of(b"layer");
        let state = State {
            config: Default::default(),
            layers: vec![Layer { digest: layer.clone(), diff_id: layer.clone(), size: 5, media_type: String::new() }],
            key: "k1".into(),
        };
        let bytes = serde_json::to_vec(&state).expect("json");
        let name = crate::engine::record_name("tenant:t", "k1");
        std::fs::write(root.join("cache").join(format!("{name}.json")), &bytes).expect("record");
        let access = Access::new(b"", &root);
        let (mine, theirs) = (grant("t", "tenant:t"), grant("u", "tenant:u"));

        assert!(Access::may_read_record(&[&mine], &name, &bytes));
        assert!(!Access::may_read_record(&[&theirs], &name, &bytes));
        assert!(access.may_read_blob(&[&mine], layer.as_str()));
        assert!(!access.may_read_blob(&[&theirs], layer.as_str()));

        // Context blobs go to the tenant whose slices used them, and what a grant names to it.
        let context = Digest::of(b"context");
        assert!(!access.may_read_blob(&[&mine], context.as_str()));
        access.note_tenant_blobs("t", [context.as_str()]);
        assert!(access.may_read_blob(&[&mine], context.as_str()));
        assert!(!access.may_read_blob(&[&theirs], context.as_str()));
        let named = Grant { blobs: vec![context.to_string()], ..theirs.clone() };
        assert!(access.may_read_blob(&[&named], context.as_str()));
        let _ = std::fs::remove_dir_all(&root);
    }
}
