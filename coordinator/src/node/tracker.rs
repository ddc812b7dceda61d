//! The tracker: which agent holds which blob and which step cache record.
//!
//! Soft state on the leader. Agents advertise what they add and retract what they delete; a
//! new leader starts empty and asks every agent for its whole inventory (the poll's `resync`).
//! Record names are scoped to a tenant (see `BuildSpec::cache_scope`), so a lookup can only
//! find records of the caller's own scope.

use kiln_shared::api::Inventory;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

#[derive(Default)]
pub struct Tracker {
    blobs: HashMap<String, HashSet<Arc<str>>>,
    records: HashMap<String, HashSet<Arc<str>>>,
    /// Agents whose whole inventory this tracker has.
    known: HashMap<Arc<str>, (HashSet<String>, HashSet<String>)>,
}

fn add(map: &mut HashMap<String, HashSet<Arc<str>>>, key: &str, agent: &Arc<str>) {
    map.entry(key.to_string()).or_default().insert(agent.clone());
}

fn remove(map: &mut HashMap<String, HashSet<Arc<str>>>, key: &str, agent: &str) {
    if let Some(set) = map.get_mut(key) {
        set.remove(agent);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

impl Tracker {
    pub fn knows(&self, agent: &str) -> bool {
        self.known.contains_key(agent)
    }

    /// Applies an agent's advertisement; false when it is a change to an inventory this
    /// tracker never had (the agent must send everything).
    pub fn apply(&mut self, inv: &Inventory) -> bool {
        if inv.full {
            self.forget(&inv.agent);
        } else if !self.knows(&inv.agent) {
            return false;
        }
        let agent: Arc<str> = self.known.keys().find(|k| ***k == *inv.agent).cloned().unwrap_or_else(|| Arc::from(inv.agent.as_str()));
        let (mut blobs, mut records) = self.known.remove(&agent).unwrap_or_default();
        for b in &inv.blobs_added {
            add(&mut self.blobs, b, &agent);
            blobs.insert(b.clone());
        }
        for b in &inv.blobs_removed {
            remove(&mut self.blobs, b, &agent);
            blobs.remove(b);
        }
        for r in &inv.records_added {
            add(&mut self.records, r, &agent);
            records.insert(r.clone());
        }
        for r in &inv.records_removed {
            remove(&mut self.records, r, &agent);
            records.remove(r);
        }
        self.known.insert(agent, (blobs, records));
        true
    }

    /// Drops everything an agent advertised (it was removed, or is sending it all again).
    pub fn forget(&mut self, agent: &str) {
        if let Some((blobs, records)) = self.known.remove(agent) {
            blobs.iter().for_each(|b| remove(&mut self.blobs, b, agent));
            records.iter().for_each(|r| remove(&mut self.records, r, agent));
        }
    }

    pub fn blob_holders(&self, digest: &str) -> Vec<&str> {
        self.blobs.get(digest).map(|s| s.iter().map(|a| &**a).collect()).unwrap_or_default()
    }

    pub fn record_holders(&self, name: &str) -> Vec<&str> {
        self.records.get(name).map(|s| s.iter().map(|a| &**a).collect()).unwrap_or_default()
    }

    /// How many records an agent advertised; `None` until its inventory is known.
    pub fn record_count(&self, agent: &str) -> Option<usize> {
        self.known.get(agent).map(|(_, r)| r.len())
    }

    /// Records of `names` an agent holds (how warm its cache is for a build).
    pub fn records_held(&self, agent: &str, names: &[String]) -> usize {
        self.known.get(agent).map(|(_, r)| names.iter().filter(|n| r.contains(*n)).count()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(agent: &str, full: bool, blobs_added: &[&str], blobs_removed: &[&str], records_added: &[&str]) -> Inventory {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
        Inventory {
            agent: agent.into(),
            full,
            blobs_added: v(blobs_added),
            blobs_removed: v(blobs_removed),
            records_added: v(records_added),
            records_removed: vec![],
        }
    }

    #[test]
    fn advertise_retract_resync() {
        let mut t = Tracker::default();
        // A change before any full inventory is refused: the agent must resync.
        assert!(!t.apply(&inv("a", false, &["x"], &[], &[])));
        assert!(t.apply(&inv("a", true, &["x", "y"], &[], &["r"])));
        assert!(t.apply(&inv("b", true, &["x"], &[], &[])));
        let mut h = t.blob_holders("x");
        h.sort();
        assert_eq!(h, vec!["a", "b"]);
        assert_eq!(t.record_holders("r"), vec!["a"]);
        assert!(t.apply(&inv("a", false, &[], &["x"], &[])));
        assert_eq!(t.blob_holders("x"), vec!["b"]);
        // A full inventory replaces the old one.
        assert!(t.apply(&inv("a", true, &["z"], &[], &[])));
        assert!(t.blob_holders("y").is_empty() && t.record_holders("r").is_empty());
        t.forget("b");
        assert!(t.blob_holders("x").is_empty() && !t.knows("b"));
        assert_eq!(t.records_held("a", &["r".into()]), 0);
    }
}
