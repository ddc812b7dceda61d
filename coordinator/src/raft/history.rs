//! The history's changes to the cluster state: a build cancelled by its client, and finished
//! builds forgotten (`kiln history rm`, or the retention policy the leader applies).

use super::{BuildId, BuildState, ClusterState, CommandResult, SliceState};

impl ClusterState {
    /// A running build fails as cancelled; its queued and running slices fail with it (an
    /// agent still running one learns it on its next poll and stops).
    pub(super) fn cancel(&mut self, at_ms: u64, build: BuildId, reason: &str) -> CommandResult {
        let Some(b) = self.builds.get_mut(&build) else { return CommandResult::rejected(format!("no build {build}")) };
        if b.state != BuildState::Running {
            return CommandResult::rejected(format!("build {build} has already finished"));
        }
        b.state = BuildState::Failed;
        b.cancelled = true;
        b.finished_at_ms = at_ms;
        b.error = reason.to_string();
        for s in b.slices.iter_mut().filter(|s| matches!(s.state, SliceState::Queued | SliceState::Running)) {
            s.state = SliceState::Failed;
            s.finished_at_ms = at_ms;
            s.reason = reason.to_string();
        }
        CommandResult::ok()
    }

    /// Finished builds leave the state; a running one stays (cancel it first).
    pub(super) fn forget(&mut self, builds: &[BuildId]) -> CommandResult {
        let mut removed = 0;
        for id in builds {
            if self.builds.get(id).is_some_and(|b| b.state != BuildState::Running) {
                self.builds.remove(id);
                removed += 1;
            }
        }
        CommandResult { value: removed, ..CommandResult::ok() }
    }

    /// The finished builds a retention policy lets go: per tenant, those beyond the newest
    /// `keep` and those finished before `older_than_ms`.
    pub fn expired(&self, keep: usize, older_than_ms: u64) -> Vec<BuildId> {
        let mut per_tenant: std::collections::BTreeMap<&str, usize> = Default::default();
        let mut out = Vec::new();
        for b in self.builds.values().rev().filter(|b| b.state != BuildState::Running) {
            let n = per_tenant.entry(b.tenant.as_str()).or_default();
            *n += 1;
            if *n > keep || b.finished_at_ms.max(b.submitted_at_ms) < older_than_ms {
                out.push(b.id);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::{BuildRecord, Command};
    use super::*;

    fn state_with(builds: &[(&str, u64)]) -> ClusterState {
        let mut st = ClusterState::default();
        for (tenant, at) in builds {
            let spec = kiln_shared::api::BuildSpec { platforms: vec!["linux/amd64".parse().unwrap()], ..Default::default() };
            st.apply(&Command::Submit { build: Box::new(BuildRecord::new(tenant, spec, vec![], *at)), assignments: vec![] });
        }
        st
    }

    #[test]
    fn cancel_fails_the_build_and_its_open_slices() {
        let mut st = state_with(&[("t", 1)]);
        let id = st.next_build;
        assert!(st.apply(&Command::CancelBuild { at_ms: 5, build: id, reason: "cancelled".into() }).ok);
        let b = &st.builds[&id];
        assert!(b.cancelled && b.state == BuildState::Failed && b.finished_at_ms == 5);
        assert!(b.slices.iter().all(|s| s.state == SliceState::Failed));
        assert!(!st.apply(&Command::CancelBuild { at_ms: 6, build: id, reason: "again".into() }).ok, "only once");
    }

    #[test]
    fn retention_keeps_the_newest_per_tenant_and_never_a_running_build() {
        let mut st = state_with(&[("a", 1), ("a", 2), ("b", 3), ("a", 4), ("a", 5)]);
        let ids: Vec<BuildId> = st.builds.keys().copied().collect();
        for id in &ids[..4] {
            st.apply(&Command::CancelBuild { at_ms: 10, build: *id, reason: "x".into() });
        }
        // Build 5 runs: never expired. Of a's finished builds (1, 2, 4) keep the newest two.
        assert_eq!(st.expired(2, 0), vec![ids[0]]);
        // By age: everything finished before 11.
        let mut old = st.expired(100, 11);
        old.sort();
        assert_eq!(old, ids[..4].to_vec());
        assert_eq!(st.apply(&Command::ForgetBuilds { builds: ids.clone() }).value, 4);
        assert_eq!(st.builds.len(), 1, "the running build stays");
    }
}
