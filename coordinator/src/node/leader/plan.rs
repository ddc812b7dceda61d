//! The leader's decisions for one tick, without I/O: the replicated state, what the leader's
//! soft state says about the agents and `now` in; a [`Plan`] out. No `Node`, no clock, no
//! Raft: [`super`] gathers the inputs under the locks and commits what the plan says.
//!
//! A tick takes back the slices of agents whose lease ran out, places queued slices with the
//! pure [`crate::scheduler`] (the slices just taken back included, as the state will be once
//! the requeue is committed), fails builds with a platform no registered agent can run, and
//! names the builds whose slices are all done and the drained contexts that can go.

use crate::node::live::{alive, Live};
use crate::node::tracker::Tracker;
use crate::raft::{Attempt, BuildId, BuildRecord, BuildState, ClusterState, Command, SliceAssignment, SliceAttempt, SliceKey, SliceState};
use crate::scheduler::{self, AgentSnapshot, Params, PendingSlice, TenantUsage};
use kiln_shared::api::BuildSpec;
use kiln_shared::digest::Digest;
use kiln_shared::Platform;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

/// Expected native run time of a slice whose architecture has no history yet.
const DEFAULT_EXPECTED_MS: u64 = 60_000;

/// The configuration a plan follows (from the coordinator's config).
#[derive(Clone, Debug)]
pub struct Settings {
    pub lease_timeout_ms: u64,
    pub max_slice_attempts: u32,
    /// Emulation slowdown assumed until one is measured.
    pub emulation_slowdown: f64,
    /// Fair share counts each tenant's slot time over this window.
    pub usage_window_ms: u64,
}

/// What the leader's soft state says about the agents.
#[derive(Clone, Copy)]
pub struct Agents<'a> {
    /// When each agent last polled.
    pub live: &'a HashMap<String, Live>,
    /// When this coordinator became leader: agents it has not heard from yet get a grace period.
    pub leader_since: Option<Instant>,
    /// Slots taken by decisions being committed, per agent.
    pub inflight: &'a HashMap<String, u32>,
    /// Who holds which step cache record.
    pub tracker: &'a Tracker,
    /// Per lineage (see [`lineage`]), the records its last finished slice used or made.
    pub lineage: &'a HashMap<String, Vec<String>>,
    /// The wall clock, in the unit of the slices' recorded times (for recent usage).
    pub now_ms: u64,
}

impl Agents<'_> {
    fn alive(&self, agent: &str, settings: &Settings, now: Instant) -> bool {
        alive(settings.lease_timeout_ms, self.leader_since, self.live.get(agent), now)
    }
}

/// The running slices of an agent whose lease ran out: back to the queue, in one command.
#[derive(Clone, Debug, PartialEq)]
pub struct Lost {
    pub agent: String,
    pub slices: Vec<SliceAttempt>,
    pub reason: String,
}

impl Lost {
    /// The command that takes the slices back (or fails them after `max_slice_attempts`).
    pub fn requeue(&self, at_ms: u64, settings: &Settings) -> Command {
        Command::Requeue { at_ms, slices: self.slices.clone(), reason: self.reason.clone(), max_attempts: settings.max_slice_attempts }
    }
}

/// What one tick does, in this order: requeue, assign, fail, finish, remove.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Per lost agent (by name), its slices to take back; each comes back at `attempt + 1`.
    pub lost: Vec<Lost>,
    /// Queued slices placed on live agents, each starting its slice's next attempt.
    pub assignments: Vec<SliceAssignment>,
    /// Builds that fail at once, with the reason: a slice no registered agent can run.
    pub failures: Vec<(BuildId, String)>,
    /// Running builds whose slices are all done (and that are not being finished already).
    pub finished: Vec<BuildId>,
    /// Draining contexts with no running slice: they can be removed.
    pub drained: Vec<String>,
    /// Queued slices that stay queued, and why.
    pub waiting: Vec<(SliceKey, String)>,
}

/// The agents the scheduler may use now, what they run, and each tenant's usage.
pub struct FarmView<'a> {
    pub agents: Vec<AgentSnapshot<'a>>,
    /// Registered agents that are not alive, with what they run.
    pub absent: Vec<Vec<Platform>>,
    pub usage: HashMap<String, TenantUsage>,
}

impl FarmView<'_> {
    /// The view with its own copies, to outlive the state it was read from.
    pub fn into_owned(self) -> FarmView<'static> {
        FarmView { agents: self.agents.into_iter().map(AgentSnapshot::into_owned).collect(), absent: self.absent, usage: self.usage }
    }
}

/// Everything a plan is decided from, gathered while the state is read; [`decide`] (the
/// scheduler) needs no lock.
pub struct Survey {
    lost: Vec<Lost>,
    finished: Vec<BuildId>,
    drained: Vec<String>,
    pending: Vec<PendingSlice>,
    /// The slice of each pending id (the scheduler's ids index this list) and the attempt an
    /// assignment starts.
    keys: Vec<(SliceKey, Attempt)>,
    /// `None` when nothing is queued.
    view: Option<FarmView<'static>>,
    params: Params,
}

/// The plan of one tick (see [`survey`] and [`decide`]).
pub fn plan(state: &ClusterState, agents: Agents, finishing: &HashSet<BuildId>, now: Instant, settings: &Settings) -> Plan {
    decide(survey(state, agents, finishing, now, settings))
}

pub fn survey(state: &ClusterState, agents: Agents, finishing: &HashSet<BuildId>, now: Instant, settings: &Settings) -> Survey {
    let mut lost: BTreeMap<&str, Vec<SliceAttempt>> = BTreeMap::new();
    let mut finished = Vec::new();
    let mut busy = HashSet::new();
    for b in running_builds(state) {
        for (key, sl) in b.keyed_slices() {
            if sl.state == SliceState::Running {
                busy.insert(sl.agent.as_str());
                if !agents.alive(&sl.agent, settings, now) {
                    lost.entry(sl.agent.as_str()).or_default().push(SliceAttempt::new(key, sl.attempt));
                }
            }
        }
        if b.slices.iter().all(|sl| sl.state == SliceState::Done) && !finishing.contains(&b.id) {
            finished.push(b.id);
        }
    }
    let drained = state.draining.iter().filter(|n| !busy.contains(n.as_str())).cloned().collect();
    let lost: Vec<Lost> = lost
        .into_iter()
        .map(|(agent, slices)| Lost {
            reason: format!("agent {agent} stopped answering (its lease of {} ms ran out)", settings.lease_timeout_ms),
            agent: agent.to_string(),
            slices,
        })
        .collect();

    // Scheduling sees the state as it will be once the lost slices are back in the queue.
    let after = if lost.is_empty() {
        Cow::Borrowed(state)
    } else {
        let mut after = state.clone();
        for l in &lost {
            after.apply(&l.requeue(0, settings));
        }
        Cow::Owned(after)
    };
    let mut pending = Vec::new();
    let mut keys = Vec::new();
    let mut wanted = Vec::new();
    for b in running_builds(&after) {
        if b.slices.iter().any(|sl| sl.state == SliceState::Queued) {
            let candidates = candidates(&after, b);
            for (key, sl) in b.keyed_slices().filter(|(_, sl)| sl.state == SliceState::Queued) {
                let id = keys.len() as u64;
                pending.push(pending_slice(&after, b, key.index, id, candidates.clone()));
                wanted.push((id, agents.lineage.get(&lineage(&b.spec, &sl.platform)).map(Vec::as_slice).unwrap_or(&[])));
                keys.push((key, sl.attempt.next()));
            }
        }
    }
    let view = (!pending.is_empty()).then(|| farm_view(&after, agents, now, settings, &wanted).into_owned());
    Survey { lost, finished, drained, pending, keys, view, params: params(&after, settings) }
}

pub fn decide(survey: Survey) -> Plan {
    let Survey { lost, finished, drained, pending, keys, view, params } = survey;
    let mut plan = Plan { lost, finished, drained, ..Plan::default() };
    let Some(view) = view else { return plan };
    let decisions = scheduler::schedule(&pending, &view.agents, &view.usage, &params);
    plan.assignments = decisions
        .assignments
        .into_iter()
        .map(|a| {
            let (slice, attempt) = keys[a.slice as usize];
            SliceAssignment { slice, attempt, agent: a.agent, emulated: a.emulated, reason: a.reason }
        })
        .collect();
    plan.waiting = decisions.waiting.into_iter().map(|(id, reason)| (keys[id as usize].0, reason)).collect();
    for (id, reason) in decisions.impossible {
        // A registered agent that is away might run it when it is back: wait for it.
        let platform = &pending[id as usize].platform;
        let away = view.absent.iter().filter(|runs| scheduler::runs(runs, platform)).count();
        if away > 0 {
            let who = if away == 1 { "the 1 agent that runs".to_string() } else { format!("the {away} agents that run") };
            plan.waiting.push((
                keys[id as usize].0,
                format!("{who} {platform} {} not answering; waiting for it to come back", if away == 1 { "is" } else { "are" }),
            ));
            continue;
        }
        // The first reason fails the build; a second would find it failed already.
        let build = keys[id as usize].0.build;
        if !plan.failures.iter().any(|(b, _)| *b == build) {
            plan.failures.push((build, reason));
        }
    }
    plan
}

/// Places the slices of a build about to be submitted, so that submitting and assigning are
/// one commit (the build of each assignment is left for `Command::Submit` to number).
pub fn place_new(state: &ClusterState, view: &FarmView<'_>, record: &BuildRecord, settings: &Settings) -> Vec<SliceAssignment> {
    let candidates = candidates(state, record);
    let pending: Vec<PendingSlice> =
        (0..record.slices.len() as u32).map(|i| pending_slice(state, record, i, u64::from(i), candidates.clone())).collect();
    scheduler::schedule(&pending, &view.agents, &view.usage, &params(state, settings))
        .assignments
        .into_iter()
        .map(|a| SliceAssignment {
            slice: SliceKey::new(BuildId::UNNUMBERED, a.slice as u32),
            attempt: Attempt::FIRST,
            agent: a.agent,
            emulated: a.emulated,
            reason: a.reason,
        })
        .collect()
}

/// The live agents that are not draining, with their load and the records each holds of what
/// the `wanted` slices (affinity key, record names) would use, and each tenant's usage.
pub fn farm_view<'s>(
    state: &'s ClusterState,
    agents: Agents,
    now: Instant,
    settings: &Settings,
    wanted: &[(u64, &[String])],
) -> FarmView<'s> {
    // One pass over the builds, one entry per build (not per slice) and no copied names:
    // this runs on every submit, over every running slice and the whole history.
    let mut running: HashMap<&str, u32> = HashMap::new();
    let mut usage: HashMap<&str, TenantUsage> = HashMap::new();
    // Recent usage: slot-seconds each tenant's slices held within the window, running ones
    // counted up to now.
    let since = agents.now_ms.saturating_sub(settings.usage_window_ms);
    for b in state.builds.values() {
        let mut used = TenantUsage::default();
        for sl in &b.slices {
            if b.state == BuildState::Running && sl.state == SliceState::Running {
                *running.entry(sl.agent.as_str()).or_default() += 1;
                used.running += 1;
            }
            if sl.assigned_at_ms == 0 || (sl.state != SliceState::Running && sl.finished_at_ms < since) {
                continue;
            }
            let end = if sl.state == SliceState::Running { agents.now_ms } else { sl.finished_at_ms.max(sl.assigned_at_ms) };
            used.recent += end.saturating_sub(sl.assigned_at_ms.max(since)) / 1000;
        }
        if used.running > 0 || used.recent > 0 {
            let u = usage.entry(b.tenant.as_str()).or_default();
            u.running += used.running;
            u.recent += used.recent;
        }
    }
    let usage = usage.into_iter().map(|(t, u)| (t.to_string(), u)).collect();
    let mut snapshots = Vec::new();
    let mut absent = Vec::new();
    for c in state.farm.contexts.values().filter(|c| !state.draining.contains(&c.name)) {
        if !agents.alive(&c.name, settings, now) {
            absent.push(c.native.iter().chain(&c.emulated).cloned().collect());
            continue;
        }
        snapshots.push(AgentSnapshot {
            name: Cow::Borrowed(c.name.as_str()),
            native: Cow::Borrowed(c.native.as_slice()),
            emulated: Cow::Borrowed(c.emulated.as_slice()),
            slots: c.slots,
            running: running.get(c.name.as_str()).copied().unwrap_or(0) + agents.inflight.get(&c.name).copied().unwrap_or(0),
            cache_records: wanted
                .iter()
                .filter(|(_, names)| !names.is_empty())
                .filter_map(|(key, names)| {
                    let held = agents.tracker.records_held(&c.name, names);
                    (held > 0).then(|| (*key, u32::try_from(held).unwrap_or(u32::MAX)))
                })
                .collect(),
        });
    }
    FarmView { agents: snapshots, absent, usage }
}

/// What makes builds share step cache records: the same Dockerfile, target, build arguments and
/// cache scope, on the same platform, from a context with the same files (their names, not
/// their contents: an edited file leaves the steps before its COPY cached). A context whose
/// entries are in a manifest blob (too many to travel inline) counts by the manifest's digest:
/// the leader need not hold the blob.
pub fn lineage(spec: &BuildSpec, platform: &Platform) -> String {
    let mut text = format!("{}\n{}\n{}\n{:?}\n{:?}\n", spec.cache_scope, platform, spec.dockerfile_name, spec.target, spec.build_args);
    text.push_str(&spec.dockerfile);
    if let Some(m) = &spec.context_manifest {
        text.push('\n');
        text.push_str(m);
    }
    for e in &spec.context {
        text.push('\n');
        text.push_str(&String::from_utf8_lossy(&e.path));
    }
    Digest::of(text.as_bytes()).hex().to_string()
}

fn running_builds(state: &ClusterState) -> impl Iterator<Item = &BuildRecord> {
    state.builds.values().filter(|b| b.state == BuildState::Running)
}

fn params(state: &ClusterState, settings: &Settings) -> Params {
    Params { slowdown: state.slowdowns(), default_slowdown: settings.emulation_slowdown }
}

/// The agents a build's builder allows (`None`: every agent).
fn candidates(state: &ClusterState, b: &BuildRecord) -> Option<Vec<String>> {
    let name = b.spec.builder.as_ref()?;
    state.farm.candidates(name).ok().map(|c| c.iter().map(|c| c.name().to_string()).collect())
}

/// Slice `index` of `b` as the scheduler sees it, under the caller's opaque `id`. Ids are
/// handed out in queue order (builds by id, then slices), which is the order of arrival.
fn pending_slice(state: &ClusterState, b: &BuildRecord, index: u32, id: u64, candidates: Option<Vec<String>>) -> PendingSlice {
    let platform = b.slices[index as usize].platform.clone();
    let expected = state.run_times.get(platform.arch()).filter(|t| t.native_count > 0).map(|t| t.native_ms / t.native_count);
    PendingSlice {
        id,
        // Records are per platform: each slice is its own affinity key.
        affinity: id,
        tenant: b.tenant.clone(),
        queued_seq: id,
        candidates,
        expected_native_ms: expected.unwrap_or(DEFAULT_EXPECTED_MS),
        platform,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::Context;
    use kiln_shared::api::BuildSpec;
    use std::time::Duration;

    const LEASE_MS: u64 = 1_000;

    fn settings() -> Settings {
        Settings { lease_timeout_ms: LEASE_MS, max_slice_attempts: 3, emulation_slowdown: 5.0, usage_window_ms: 600_000 }
    }

    fn platforms(list: &[&str]) -> Vec<Platform> {
        list.iter().map(|p| p.parse().unwrap()).collect()
    }

    fn context(name: &str, native: &[&str], emulated: &[&str]) -> Context {
        Context {
            name: name.into(),
            endpoint: String::new(),
            native: platforms(native),
            emulated: platforms(emulated),
            slots: 2,
            labels: Default::default(),
            version: String::new(),
        }
    }

    fn spec(list: &[&str], builder: Option<&str>) -> BuildSpec {
        BuildSpec {
            dockerfile: "FROM scratch\n".into(),
            dockerfile_name: "Dockerfile".into(),
            platforms: platforms(list),
            builder: builder.map(str::to_string),
            ..Default::default()
        }
    }

    /// A farm of `contexts` and a world where `live` polled at `now`.
    struct World {
        state: ClusterState,
        live: HashMap<String, Live>,
        inflight: HashMap<String, u32>,
        tracker: Tracker,
        lineage: HashMap<String, Vec<String>>,
        now: Instant,
        now_ms: u64,
    }

    impl World {
        fn new(contexts: &[Context]) -> World {
            let mut state = ClusterState::default();
            for c in contexts {
                assert!(state.apply(&Command::RegisterAgent { context: c.clone(), key: None }).ok);
            }
            World {
                state,
                live: HashMap::new(),
                inflight: HashMap::new(),
                tracker: Tracker::default(),
                lineage: HashMap::new(),
                now: Instant::now(),
                now_ms: 1_000_000,
            }
        }

        fn agents(&self, leader_since: Option<Instant>) -> Agents<'_> {
            Agents {
                live: &self.live,
                leader_since,
                inflight: &self.inflight,
                tracker: &self.tracker,
                lineage: &self.lineage,
                now_ms: self.now_ms,
            }
        }

        /// `agent` last polled `ago` before now.
        fn seen(&mut self, agent: &str, ago: Duration) {
            let last_seen = self.now.checked_sub(ago).expect("a monotonic clock this far from its origin");
            self.live.insert(agent.into(), Live { last_seen, running: vec![], cache_bytes: 0 });
        }

        fn submit(&mut self, spec: BuildSpec) -> BuildId {
            self.submit_as("t", spec)
        }

        fn submit_as(&mut self, tenant: &str, spec: BuildSpec) -> BuildId {
            let build = Box::new(BuildRecord::new(tenant, spec, vec![], 1));
            BuildId::from_wire(self.state.apply(&Command::Submit { build, assignments: vec![] }).value)
        }

        fn assign(&mut self, slice: SliceKey, agent: &str) {
            self.assign_at(slice, agent, 2);
        }

        fn assign_at(&mut self, slice: SliceKey, agent: &str, at_ms: u64) {
            let attempt = self.state.slice(slice).unwrap().attempt.next();
            let a = SliceAssignment { slice, attempt, agent: agent.into(), emulated: false, reason: String::new() };
            assert_eq!(self.state.apply(&Command::Assign { at_ms, assignments: vec![a] }).value, 1);
        }

        fn done_at(&mut self, slice: SliceKey, at_ms: u64) {
            let (build, index) = slice.to_wire();
            let attempt = self.state.slice(slice).unwrap().attempt.to_wire();
            let outcome = kiln_shared::api::SliceOutcome {
                build,
                slice: index,
                attempt,
                manifest: kiln_shared::oci::Descriptor::new(kiln_shared::oci::MEDIA_MANIFEST, kiln_shared::Digest::of(b"m"), 1),
                attestation: None,
                emulated: false,
                emulated_steps: vec![],
                duration_ms: 1,
                cache_hits: 0,
                cache_misses: 0,
                cache_peer_hits: 0,
                records: vec![],
                step_records: vec![],
                steps: vec![],
            };
            assert!(self.state.apply(&Command::SliceDone { at_ms, outcome }).ok);
        }

        /// `agent` advertised `records` as its whole step cache.
        fn holds(&mut self, agent: &str, records: &[String]) {
            let inv =
                kiln_shared::api::Inventory { agent: agent.into(), full: true, records_added: records.to_vec(), ..Default::default() };
            assert!(self.tracker.apply(&inv));
        }

        fn plan(&self) -> Plan {
            // Long enough a leader that no agent is still in its grace period.
            let leader_since = self.now.checked_sub(Duration::from_millis(10 * LEASE_MS));
            plan(&self.state, self.agents(leader_since), &HashSet::new(), self.now, &settings())
        }
    }

    #[test]
    fn a_pending_slice_goes_to_a_live_native_agent_over_an_emulating_one() {
        let mut w = World::new(&[context("x86", &["linux/amd64"], &["linux/arm64"]), context("arm", &["linux/arm64"], &[])]);
        w.seen("x86", Duration::ZERO);
        w.seen("arm", Duration::ZERO);
        let build = w.submit(spec(&["linux/arm64"], None));
        let plan = w.plan();
        assert_eq!(plan.assignments.len(), 1, "{plan:?}");
        let a = &plan.assignments[0];
        assert_eq!((a.slice, a.attempt, a.agent.as_str(), a.emulated), (SliceKey::new(build, 0), Attempt::FIRST, "arm", false));
        assert!(plan.lost.is_empty() && plan.failures.is_empty() && plan.finished.is_empty(), "{plan:?}");
    }

    #[test]
    fn a_slice_on_an_agent_whose_lease_ran_out_is_requeued_and_comes_back_at_the_next_attempt() {
        let mut w = World::new(&[context("a1", &["linux/amd64"], &[]), context("a2", &["linux/amd64"], &[])]);
        let build = w.submit(spec(&["linux/amd64"], None));
        let slice = SliceKey::new(build, 0);
        w.assign(slice, "a1");
        w.seen("a1", Duration::from_millis(2 * LEASE_MS));
        w.seen("a2", Duration::ZERO);
        let plan = w.plan();
        assert_eq!(plan.lost.len(), 1, "{plan:?}");
        assert_eq!(plan.lost[0].agent, "a1");
        assert_eq!(plan.lost[0].slices, vec![SliceAttempt::new(slice, Attempt::FIRST)]);
        assert!(plan.lost[0].reason.contains("lease of 1000 ms ran out"), "{}", plan.lost[0].reason);
        // Placed again in the same tick, on the agent that answers, as attempt 2.
        assert_eq!(plan.assignments.len(), 1, "{plan:?}");
        assert_eq!((plan.assignments[0].slice, plan.assignments[0].attempt), (slice, Attempt::FIRST.next()));
        assert_eq!(plan.assignments[0].agent, "a2");
        // The requeue and the assignment apply as planned: the slice runs attempt 2 on a2.
        let mut st = w.state.clone();
        st.apply(&plan.lost[0].requeue(3, &settings()));
        st.apply(&Command::Assign { at_ms: 4, assignments: plan.assignments.clone() });
        let sl = st.slice(slice).unwrap();
        assert_eq!((sl.state, sl.attempt, sl.agent.as_str()), (SliceState::Running, Attempt::from_wire(2), "a2"));
    }

    #[test]
    fn a_build_whose_slices_are_all_done_is_finished() {
        let mut w = World::new(&[context("a1", &["linux/amd64", "linux/arm64"], &[])]);
        w.seen("a1", Duration::ZERO);
        let done = w.submit(spec(&["linux/amd64", "linux/arm64"], None));
        let half = w.submit(spec(&["linux/amd64", "linux/arm64"], None));
        for slice in [SliceKey::new(done, 0), SliceKey::new(done, 1), SliceKey::new(half, 0), SliceKey::new(half, 1)] {
            w.assign(slice, "a1");
        }
        for slice in [SliceKey::new(done, 0), SliceKey::new(done, 1), SliceKey::new(half, 0)] {
            let (build, index) = slice.to_wire();
            let outcome = kiln_shared::api::SliceOutcome {
                build,
                slice: index,
                attempt: 1,
                manifest: kiln_shared::oci::Descriptor::new(kiln_shared::oci::MEDIA_MANIFEST, kiln_shared::Digest::of(b"{}"), 2),
                attestation: None,
                emulated: false,
                emulated_steps: vec![],
                duration_ms: 1,
                cache_hits: 0,
                cache_misses: 0,
                cache_peer_hits: 0,
                records: vec![],
                step_records: vec![],
                steps: vec![],
            };
            assert!(w.state.apply(&Command::SliceDone { at_ms: 3, outcome }).ok);
        }
        assert_eq!(w.plan().finished, vec![done]);
        // A build being finished already is not named again.
        assert!(plan(&w.state, w.agents(None), &[done].into(), w.now, &settings()).finished.is_empty());
    }

    #[test]
    fn a_draining_context_with_no_running_slice_is_drained() {
        let mut w = World::new(&[context("busy", &["linux/amd64"], &[]), context("idle", &["linux/amd64"], &[])]);
        w.seen("busy", Duration::ZERO);
        w.seen("idle", Duration::ZERO);
        let build = w.submit(spec(&["linux/amd64"], None));
        w.assign(SliceKey::new(build, 0), "busy");
        for name in ["busy", "idle"] {
            assert!(w.state.apply(&Command::DrainContext { name: name.into() }).ok);
        }
        assert_eq!(w.plan().drained, vec!["idle".to_string()]);
    }

    #[test]
    fn a_platform_no_agent_of_the_builder_can_run_fails_the_build() {
        let mut w = World::new(&[context("x86", &["linux/amd64"], &[])]);
        w.seen("x86", Duration::ZERO);
        let build = w.submit(spec(&["linux/s390x"], Some("default")));
        let plan = w.plan();
        assert!(plan.assignments.is_empty(), "{plan:?}");
        // The scheduler's sentence, as `kiln build` prints it for a build that fails after
        // submit (the refusal at submit has its own, naming the builder).
        assert_eq!(plan.failures, vec![(build, "no agent of the builder can run linux/s390x (natively or under emulation)".to_string())]);
    }

    #[test]
    fn a_platform_only_an_absent_agent_runs_waits_for_it() {
        let mut w = World::new(&[context("x86", &["linux/amd64"], &[]), context("s390", &["linux/s390x"], &[])]);
        w.seen("x86", Duration::ZERO);
        w.seen("s390", Duration::from_millis(2 * LEASE_MS));
        let build = w.submit(spec(&["linux/s390x"], None));
        let plan = w.plan();
        assert!(plan.assignments.is_empty() && plan.failures.is_empty(), "{plan:?}");
        assert_eq!(
            plan.waiting,
            vec![(SliceKey::new(build, 0), "the 1 agent that runs linux/s390x is not answering; waiting for it to come back".to_string())]
        );
    }

    fn record_names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{i:064x}")).collect()
    }

    #[test]
    fn cache_affinity_prefers_the_idle_agent_holding_the_records_of_the_last_build() {
        let mut w = World::new(&[context("a1", &["linux/amd64"], &[]), context("a2", &["linux/amd64"], &[])]);
        w.seen("a1", Duration::ZERO);
        w.seen("a2", Duration::ZERO);
        let sp = spec(&["linux/amd64"], None);
        w.submit(sp.clone());
        // Nothing remembered: the tie goes to the first agent.
        assert_eq!(w.plan().assignments[0].agent, "a1");
        // The previous build of this Dockerfile and platform made 12 records, and a2 holds them.
        let names = record_names(12);
        w.lineage.insert(lineage(&sp, &"linux/amd64".parse().unwrap()), names.clone());
        w.holds("a2", &names);
        w.holds("a1", &record_names(0));
        let plan = w.plan();
        assert_eq!(plan.assignments[0].agent, "a2", "{plan:?}");
        assert!(plan.assignments[0].reason.contains("12 cache records"), "{}", plan.assignments[0].reason);
        // Another platform of the same Dockerfile is another lineage: no affinity.
        assert_ne!(lineage(&sp, &"linux/arm64".parse().unwrap()), lineage(&sp, &"linux/amd64".parse().unwrap()));
    }

    #[test]
    fn a_tenant_with_heavy_recent_usage_yields_to_a_light_one() {
        let mut w = World::new(&[context("a1", &["linux/amd64"], &[])]);
        w.seen("a1", Duration::ZERO);
        // "heavy" held a slot for 500 s of the last 10 minutes.
        let old = w.submit_as("heavy", spec(&["linux/amd64"], None));
        w.assign_at(SliceKey::new(old, 0), "a1", w.now_ms - 501_000);
        w.done_at(SliceKey::new(old, 0), w.now_ms - 1_000);
        // One of a1's two slots is taken by a third tenant; heavy queued first, light after.
        let other = w.submit_as("other", spec(&["linux/amd64"], None));
        w.assign_at(SliceKey::new(other, 0), "a1", w.now_ms);
        let heavy = w.submit_as("heavy", spec(&["linux/amd64"], None));
        let light = w.submit_as("light", spec(&["linux/amd64"], None));
        let view = farm_view(&w.state, w.agents(None), w.now, &settings(), &[]);
        assert_eq!(view.usage["heavy"].recent, 500);
        assert_eq!(view.usage.get("light").map_or(0, |u| u.recent), 0);
        let plan = w.plan();
        assert_eq!(plan.assignments.iter().map(|a| a.slice).collect::<Vec<_>>(), vec![SliceKey::new(light, 0)], "{plan:?}");
        assert_eq!(plan.waiting.iter().map(|(k, _)| *k).collect::<Vec<_>>(), vec![SliceKey::new(heavy, 0)]);
        // Usage older than the window does not count.
        let mut s = settings();
        s.usage_window_ms = 1_000;
        assert_eq!(farm_view(&w.state, w.agents(None), w.now, &s, &[]).usage.get("heavy").map_or(0, |u| u.recent), 0);
    }

    #[test]
    fn a_waiting_slice_says_which_agents_are_busy_and_who_holds_its_cache() {
        let mut w = World::new(&[context("arm1", &["linux/arm64"], &[]), context("arm2", &["linux/arm64"], &[])]);
        w.seen("arm1", Duration::ZERO);
        w.seen("arm2", Duration::ZERO);
        let sp = spec(&["linux/arm64"], None);
        for agent in ["arm1", "arm1", "arm2", "arm2"] {
            let b = w.submit(sp.clone());
            w.assign(SliceKey::new(b, 0), agent);
        }
        let queued = w.submit(sp.clone());
        let plan = w.plan();
        assert!(plan.assignments.is_empty(), "{plan:?}");
        assert_eq!(
            plan.waiting,
            vec![(SliceKey::new(queued, 0), "all 2 agents that run linux/arm64 natively are busy (4/4 slots)".to_string())]
        );
        let names = record_names(12);
        w.lineage.insert(lineage(&sp, &"linux/arm64".parse().unwrap()), names.clone());
        w.holds("arm2", &names);
        assert_eq!(
            w.plan().waiting[0].1,
            "all 2 agents that run linux/arm64 natively are busy (4/4 slots); waiting for agent arm2 holding 12 cached steps"
        );
    }
}
