//! The farm as submits see it: one view of the live agents and their load, kept for a short
//! while and shared by the submits placed meanwhile, instead of a fresh look at every agent
//! for each of them (with thousands of agents that look was most of a submit's cost).
//!
//! What each submit places is added to the load it sees. What the view misses while it is
//! kept (a slice that ended, an agent that came or went) costs nothing lasting: a slice it
//! cannot place stays queued for the leader's next tick, which looks afresh. Whatever changes
//! which agents may be used (a registration, a drain, a tick's own placements, a lost agent)
//! drops the view.

use super::plan::FarmView;
use crate::node::tracker::Tracker;
use crate::raft::SliceAssignment;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long submits share one view.
pub const KEPT: Duration = Duration::from_millis(100);

pub struct Placing {
    made: Instant,
    pub view: FarmView<'static>,
    /// Agent name → its index in `view.agents`.
    index: HashMap<String, usize>,
    /// The agents whose cache records were set for the submit being placed.
    warm: Vec<usize>,
}

impl Placing {
    pub fn new(view: FarmView<'static>) -> Placing {
        let index = view.agents.iter().enumerate().map(|(i, a)| (a.name.to_string(), i)).collect();
        Placing { made: Instant::now(), view, index, warm: Vec::new() }
    }

    pub fn fresh(&self) -> bool {
        self.made.elapsed() < KEPT
    }

    /// Sets, for one submit, the records each agent holds of what its slices would use
    /// (affinity key, record names): the holders the tracker names, not a look at every agent.
    pub fn warm_for(&mut self, tracker: &Tracker, wanted: &[(u64, &[String])]) {
        for (key, names) in wanted {
            for name in names.iter() {
                for holder in tracker.record_holders(name) {
                    if let Some(&i) = self.index.get(holder) {
                        *self.view.agents[i].cache_records.entry(*key).or_default() += 1;
                        self.warm.push(i);
                    }
                }
            }
        }
    }

    /// Ends a submit: its cache records are cleared and what it placed counts as running.
    pub fn placed(&mut self, assignments: &[SliceAssignment]) {
        for i in self.warm.drain(..) {
            self.view.agents[i].cache_records.clear();
        }
        for a in assignments {
            if let Some(&i) = self.index.get(&a.agent) {
                self.view.agents[i].running += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{Attempt, BuildId, SliceKey};
    use crate::scheduler::AgentSnapshot;
    use kiln_shared::api::Inventory;
    use std::borrow::Cow;

    fn agent(name: &str, running: u32) -> AgentSnapshot<'static> {
        AgentSnapshot {
            name: Cow::Owned(name.into()),
            native: Cow::Owned(vec!["linux/amd64".parse().expect("platform")]),
            emulated: Cow::Owned(vec![]),
            slots: 4,
            running,
            cache_records: HashMap::new(),
        }
    }

    fn assignment(agent: &str) -> SliceAssignment {
        SliceAssignment {
            slice: SliceKey::new(BuildId::UNNUMBERED, 0),
            attempt: Attempt::FIRST,
            agent: agent.into(),
            emulated: false,
            reason: String::new(),
        }
    }

    #[test]
    fn a_submit_sees_its_own_cache_holders_and_the_next_sees_its_placements() {
        let view = FarmView { agents: vec![agent("a", 0), agent("b", 1)], absent: vec![], usage: HashMap::new() };
        let mut p = Placing::new(view);
        let mut tracker = Tracker::default();
        let records = vec!["r1".to_string(), "r2".to_string()];
        let inv = Inventory { agent: "b".into(), full: true, records_added: records.clone(), ..Default::default() };
        assert!(tracker.apply(&inv));
        p.warm_for(&tracker, &[(0, records.as_slice()), (1, &[])]);
        assert_eq!(p.view.agents[1].cache_records.get(&0), Some(&2), "b holds both records slice 0 would use");
        assert!(p.view.agents[0].cache_records.is_empty());
        p.placed(&[assignment("b"), assignment("b"), assignment("gone")]);
        assert!(p.view.agents[1].cache_records.is_empty(), "the next submit's records are its own");
        assert_eq!((p.view.agents[0].running, p.view.agents[1].running), (0, 3));
        assert!(p.fresh());
    }
}
