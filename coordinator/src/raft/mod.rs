//! The coordinator cluster's replicated state: the Raft type configuration, the commands that
//! are proposed through the log and the state machine they are applied to.
//!
//! Every coordinator holds the same [`ClusterState`] because every one applies the same
//! committed [`Command`]s in the same order; [`ClusterState::apply`] must therefore be
//! deterministic (no clock, no randomness, no `HashMap` iteration). Validation that needs
//! context (the buildx rules of [`crate::builders`], authorisation) happens on the leader
//! before a command is proposed; `apply` only records, and reports what it could not do.
//! Durable storage of the log and of this state is in [`store`].

mod history;
pub mod ids;
pub mod network;
pub mod store;

pub use ids::{Attempt, BuildId, SliceAttempt, SliceKey};

use crate::builders::{Builder, Context, Farm};
use kiln_shared::api::{BuildSpec, SliceOutcome};
pub use kiln_shared::api::{BuildState, SliceState};
use kiln_shared::oci::Descriptor;
use kiln_shared::Platform;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::net::SocketAddr;

openraft::declare_raft_types!(
    /// Openraft's type configuration for the coordinator cluster.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// Coordinator node ids in the Raft cluster.
pub type NodeId = u64;

/// A change to the cluster state, proposed by the leader and applied on every coordinator once
/// committed. Times (`at_ms`, milliseconds since the Unix epoch) come from the proposer, so that
/// applying stays deterministic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Tokens are stored by hash only, so that neither the log nor a snapshot holds a secret.
    PutToken {
        token_hash: String,
        role: String,
        tenant: String,
    },
    RegisterAgent {
        context: Context,
        /// The key fingerprint of the agent's certificate: the name is bound to it.
        #[serde(default)]
        key: Option<String>,
    },
    /// `kiln context rm --revoke`: the agent is removed and its key refused from now on.
    RevokeAgent {
        name: String,
    },
    /// `kiln context rm`: no new slices go to the agent; it is removed once idle.
    DrainContext {
        name: String,
    },
    RemoveContext {
        name: String,
    },
    PutBuilder {
        builder: Builder,
    },
    RemoveBuilder {
        name: String,
    },
    /// `kiln create` (a new builder, `--append`, `--leave`), decided on the state it applies
    /// to: concurrent changes of one builder are ordered by the log, and a second create of a
    /// name is refused ("already exists") even when both were sent at once.
    CreateBuilder {
        spec: kiln_shared::api::CreateSpec,
        generated_name: String,
    },
    /// A new build; its id is the state's next id, returned in the result's `value`.
    Submit {
        build: Box<BuildRecord>,
        /// Slices placed at once (the build of their `slice` is ignored: the id is made here).
        #[serde(default)]
        assignments: Vec<SliceAssignment>,
    },
    Assign {
        at_ms: u64,
        assignments: Vec<SliceAssignment>,
    },
    SliceDone {
        at_ms: u64,
        outcome: SliceOutcome,
    },
    SliceFailed {
        at_ms: u64,
        slice: SliceKey,
        attempt: Attempt,
        message: String,
    },
    /// Slices whose agent lost its lease go back to the queue (or fail after `max_attempts`).
    Requeue {
        at_ms: u64,
        slices: Vec<SliceAttempt>,
        reason: String,
        max_attempts: u32,
    },
    /// A client cancelled the build (Ctrl-C, as buildx): it fails, its slices stop.
    CancelBuild {
        at_ms: u64,
        build: BuildId,
        reason: String,
    },
    /// Finished builds leave the history (`kiln history rm`, or the retention policy).
    ForgetBuilds {
        builds: Vec<BuildId>,
    },
    /// The index is pushed (or the build failed after its slices were done).
    FinishBuild {
        at_ms: u64,
        build: BuildId,
        /// The index as pushed (see [`kiln_shared::api::BuildView::index`]).
        index: Vec<u8>,
        index_digest: String,
        error: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SliceAssignment {
    pub slice: SliceKey,
    /// The attempt this assignment starts (the slice's current attempt + 1).
    pub attempt: Attempt,
    pub agent: String,
    pub emulated: bool,
    pub reason: String,
}

/// What applying one log entry did, returned to the proposer by `client_write`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    /// `false` when the command was committed but changed nothing (e.g. removing an absent name,
    /// or a report from an attempt that was superseded).
    pub ok: bool,
    /// Why `ok` is false, as a sentence a user can act on.
    pub message: Option<String>,
    /// A value the command produced (a new build's id).
    pub value: u64,
}

impl CommandResult {
    pub fn ok() -> Self {
        CommandResult { ok: true, message: None, value: 0 }
    }

    pub fn rejected(message: impl Into<String>) -> Self {
        CommandResult { ok: false, message: Some(message.into()), value: 0 }
    }
}

/// A registered API token: who may do what, for which tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub role: String,
    pub tenant: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SliceRecord {
    pub platform: Platform,
    pub state: SliceState,
    pub agent: String,
    pub emulated: bool,
    #[serde(default)]
    pub emulated_steps: Vec<String>,
    pub attempt: Attempt,
    /// When it was (last) queued and when it was (last) assigned.
    pub queued_at_ms: u64,
    pub assigned_at_ms: u64,
    pub finished_at_ms: u64,
    /// The manifest's descriptor, once done.
    pub manifest: Option<Descriptor>,
    /// Its attestation manifest, once done (when the build attaches attestations).
    pub attestation: Option<Descriptor>,
    pub duration_ms: u64,
    pub cache_hits: u32,
    pub cache_misses: u32,
    #[serde(default)]
    pub cache_peer_hits: u32,
    /// Records to export (`--cache-to`).
    #[serde(default)]
    pub records: Vec<kiln_shared::api::CacheRecord>,
    /// Why it went where it went, or why it failed.
    pub reason: String,
    /// Every step, as it happened (build history), once done.
    #[serde(default)]
    pub steps: Vec<kiln_shared::api::StepRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildRecord {
    pub id: BuildId,
    pub tenant: String,
    pub spec: BuildSpec,
    /// Coordinators holding the context blobs.
    pub context_origin: Vec<SocketAddr>,
    pub submitted_at_ms: u64,
    pub state: BuildState,
    pub slices: Vec<SliceRecord>,
    /// The index as pushed, once done: `index_digest` is over these bytes.
    pub index: Vec<u8>,
    pub index_digest: String,
    pub error: String,
    /// When it finished (0 while running).
    #[serde(default)]
    pub finished_at_ms: u64,
    /// A client cancelled it.
    #[serde(default)]
    pub cancelled: bool,
}

impl BuildRecord {
    pub fn new(tenant: &str, spec: BuildSpec, context_origin: Vec<SocketAddr>, at_ms: u64) -> BuildRecord {
        let slices = spec
            .platforms
            .iter()
            .map(|p| SliceRecord {
                platform: p.clone(),
                state: SliceState::Queued,
                agent: String::new(),
                emulated: false,
                emulated_steps: vec![],
                attempt: Attempt::NONE,
                queued_at_ms: at_ms,
                assigned_at_ms: 0,
                finished_at_ms: 0,
                manifest: None,
                attestation: None,
                duration_ms: 0,
                cache_hits: 0,
                cache_misses: 0,
                cache_peer_hits: 0,
                records: vec![],
                reason: String::new(),
                steps: vec![],
            })
            .collect();
        BuildRecord {
            id: BuildId::UNNUMBERED,
            tenant: tenant.to_string(),
            spec,
            context_origin,
            submitted_at_ms: at_ms,
            state: BuildState::Running,
            slices,
            index: Vec::new(),
            index_digest: String::new(),
            error: String::new(),
            finished_at_ms: 0,
            cancelled: false,
        }
    }

    /// The build's slices with their keys, in platform order.
    pub fn keyed_slices(&self) -> impl Iterator<Item = (SliceKey, &SliceRecord)> {
        self.slices.iter().enumerate().map(|(i, s)| (SliceKey::new(self.id, i as u32), s))
    }
}

/// Finished slices per architecture and mode: how the emulation slowdown is measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunTimes {
    pub native_ms: u64,
    pub native_count: u64,
    pub emulated_ms: u64,
    pub emulated_count: u64,
}

/// The state machine data replicated by Raft. `BTreeMap`s keep iteration, and thus snapshots,
/// byte-for-byte identical on every coordinator.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Contexts (registered agents) and named builders.
    pub farm: Farm,
    /// Contexts being drained by `kiln context rm`.
    pub draining: BTreeSet<String>,
    pub builds: BTreeMap<BuildId, BuildRecord>,
    /// The id of the last build submitted.
    pub next_build: BuildId,
    /// Keyed by token hash.
    pub tokens: BTreeMap<String, TokenRecord>,
    /// Keyed by architecture.
    pub run_times: BTreeMap<String, RunTimes>,
    /// Agent name → the key fingerprint its registration is bound to.
    #[serde(default)]
    pub agent_keys: BTreeMap<String, String>,
    /// Key fingerprints of revoked agents: refused by every coordinator and agent.
    #[serde(default)]
    pub revoked_keys: BTreeSet<String>,
}

impl ClusterState {
    /// Binds agent `name` to `key`, or says why not: a revoked key, or another agent's name.
    pub fn bind_agent(&mut self, name: &str, key: &str) -> Result<(), String> {
        self.agent_may_join(name, key)?;
        self.agent_keys.insert(name.to_string(), key.to_string());
        Ok(())
    }

    /// Whether an agent with `key` may be `name`: the key is not revoked, and the name is free
    /// or already bound to it.
    pub fn agent_may_join(&self, name: &str, key: &str) -> Result<(), String> {
        if self.revoked_keys.contains(key) {
            return Err(format!("the key of agent {name} was revoked (`kiln context rm --revoke`)"));
        }
        match self.agent_keys.get(name) {
            Some(bound) if bound != key => Err(format!(
                "agent name {name} is registered to another key: a second agent may not join under it (`kiln context rm {name}` frees the name)"
            )),
            _ => Ok(()),
        }
    }

    /// Applies one committed command. Never fails: a command that cannot take effect is still
    /// committed, so it is answered with `ok: false` rather than an error that would stop Raft.
    pub fn apply(&mut self, command: &Command) -> CommandResult {
        match command {
            Command::PutToken { token_hash, role, tenant } => {
                self.tokens.insert(token_hash.clone(), TokenRecord { role: role.clone(), tenant: tenant.clone() });
                CommandResult::ok()
            }
            Command::RegisterAgent { context, key } => {
                if let Some(key) = key {
                    if let Err(why) = self.bind_agent(&context.name, key) {
                        return CommandResult::rejected(why);
                    }
                }
                match self.farm.register(context.clone()) {
                    Ok(()) => {
                        self.draining.remove(&context.name);
                        CommandResult::ok()
                    }
                    Err(e) => CommandResult::rejected(e.to_string()),
                }
            }
            Command::RevokeAgent { name } => {
                let Some(key) = self.agent_keys.remove(name) else {
                    return CommandResult::rejected(format!("agent {name:?} has no registered key to revoke"));
                };
                self.revoked_keys.insert(key);
                self.draining.remove(name);
                let _ = self.farm.remove_context(name);
                CommandResult::ok()
            }
            Command::DrainContext { name } => {
                if !self.farm.contexts.contains_key(name) {
                    return CommandResult::rejected(format!("no context {name:?} found"));
                }
                self.draining.insert(name.clone());
                CommandResult::ok()
            }
            Command::RemoveContext { name } => {
                self.draining.remove(name);
                // The name is free again: the next agent to register under it binds it.
                self.agent_keys.remove(name);
                match self.farm.remove_context(name) {
                    Ok(_) => CommandResult::ok(),
                    Err(e) => CommandResult::rejected(e.to_string()),
                }
            }
            Command::PutBuilder { builder } => {
                self.farm.builders.insert(builder.name.clone(), builder.clone());
                CommandResult::ok()
            }
            Command::CreateBuilder { spec, generated_name } => match self.farm.create(spec, generated_name) {
                Ok(_) => CommandResult::ok(),
                Err(e) => CommandResult::rejected(e.to_string()),
            },
            Command::RemoveBuilder { name } => match self.farm.builders.remove(name) {
                Some(_) => CommandResult::ok(),
                None => CommandResult::rejected(format!("no builder {name:?} found")),
            },
            Command::Submit { build, assignments } => {
                self.next_build = self.next_build.next();
                let id = self.next_build;
                let mut build = (**build).clone();
                build.id = id;
                let at_ms = build.submitted_at_ms;
                self.builds.insert(id, build);
                let assignments: Vec<SliceAssignment> =
                    assignments.iter().map(|a| SliceAssignment { slice: SliceKey::new(id, a.slice.index), ..a.clone() }).collect();
                if !assignments.is_empty() {
                    self.apply(&Command::Assign { at_ms, assignments });
                }
                CommandResult { value: id.to_wire(), ..CommandResult::ok() }
            }
            Command::Assign { at_ms, assignments } => {
                let mut done = 0;
                for a in assignments {
                    let Some(s) = self.slice_mut(a.slice) else { continue };
                    if s.state != SliceState::Queued || a.attempt != s.attempt.next() {
                        continue;
                    }
                    s.state = SliceState::Running;
                    s.attempt = a.attempt;
                    s.agent = a.agent.clone();
                    s.emulated = a.emulated;
                    s.assigned_at_ms = *at_ms;
                    s.reason = a.reason.clone();
                    done += 1;
                }
                CommandResult { value: done, ..CommandResult::ok() }
            }
            Command::SliceDone { at_ms, outcome } => {
                let Some(s) = self.slice_mut(SliceKey::from_wire(outcome.build, outcome.slice)) else {
                    return CommandResult::rejected("no such slice");
                };
                if s.state != SliceState::Running || s.attempt != Attempt::from_wire(outcome.attempt) {
                    // A partitioned agent reporting an attempt that was given to another agent.
                    return CommandResult::rejected(format!("attempt {} of this slice is no longer current", outcome.attempt));
                }
                s.state = SliceState::Done;
                s.finished_at_ms = *at_ms;
                s.manifest = Some(outcome.manifest.clone());
                s.attestation = outcome.attestation.as_deref().cloned();
                s.duration_ms = outcome.duration_ms;
                s.cache_hits = outcome.cache_hits;
                s.cache_misses = outcome.cache_misses;
                s.cache_peer_hits = outcome.cache_peer_hits;
                s.records = outcome.records.clone();
                s.emulated = outcome.emulated;
                s.emulated_steps = outcome.emulated_steps.clone();
                s.steps = outcome.steps.clone();
                // Only slices that executed steps say anything about speed.
                if outcome.cache_misses > 0 {
                    let arch = s.platform.arch().to_string();
                    let t = self.run_times.entry(arch).or_default();
                    if outcome.emulated {
                        t.emulated_ms += outcome.duration_ms;
                        t.emulated_count += 1;
                    } else {
                        t.native_ms += outcome.duration_ms;
                        t.native_count += 1;
                    }
                }
                CommandResult::ok()
            }
            Command::SliceFailed { at_ms, slice, attempt, message } => {
                let Some(s) = self.slice_mut(*slice) else {
                    return CommandResult::rejected("no such slice");
                };
                if s.state != SliceState::Running || s.attempt != *attempt {
                    return CommandResult::rejected(format!("attempt {attempt} of this slice is no longer current"));
                }
                s.state = SliceState::Failed;
                s.finished_at_ms = *at_ms;
                s.reason = message.clone();
                let platform = s.platform.clone();
                if let Some(b) = self.builds.get_mut(&slice.build) {
                    b.state = BuildState::Failed;
                    b.finished_at_ms = *at_ms;
                    // Engine errors name their platform already (`[linux/arm64 stage-0] ...`).
                    b.error =
                        if message.contains(platform.to_string().as_str()) { message.clone() } else { format!("{platform}: {message}") };
                }
                CommandResult::ok()
            }
            Command::Requeue { at_ms, slices, reason, max_attempts } => {
                let mut moved = 0;
                for SliceAttempt { slice, attempt } in slices {
                    let Some(s) = self.slice_mut(*slice) else { continue };
                    if s.state != SliceState::Running || s.attempt != *attempt {
                        continue;
                    }
                    moved += 1;
                    if s.attempt.to_wire() >= *max_attempts {
                        s.state = SliceState::Failed;
                        s.reason = format!("{reason}; gave up after {} attempts", s.attempt);
                        let message = format!("{}: {}", s.platform, s.reason);
                        if let Some(b) = self.builds.get_mut(&slice.build) {
                            b.state = BuildState::Failed;
                            b.finished_at_ms = *at_ms;
                            b.error = message;
                        }
                    } else {
                        s.state = SliceState::Queued;
                        s.queued_at_ms = *at_ms;
                        s.reason = reason.clone();
                    }
                }
                CommandResult { value: moved, ..CommandResult::ok() }
            }
            Command::CancelBuild { at_ms, build, reason } => self.cancel(*at_ms, *build, reason),
            Command::ForgetBuilds { builds } => self.forget(builds),
            Command::FinishBuild { at_ms, build, index, index_digest, error } => {
                let Some(b) = self.builds.get_mut(build) else { return CommandResult::rejected("no such build") };
                if b.state != BuildState::Running {
                    return CommandResult::rejected("the build is already finished");
                }
                b.finished_at_ms = *at_ms;
                match error {
                    Some(e) => {
                        b.state = BuildState::Failed;
                        b.error = e.clone();
                    }
                    None => {
                        b.state = BuildState::Done;
                        b.index = index.clone();
                        b.index_digest = index_digest.clone();
                    }
                }
                CommandResult::ok()
            }
        }
    }

    /// A slice of any build, running or finished.
    pub fn slice(&self, key: SliceKey) -> Option<&SliceRecord> {
        self.builds.get(&key.build)?.slices.get(key.index as usize)
    }

    /// A slice of a running build: the only kind a command may change.
    fn slice_mut(&mut self, key: SliceKey) -> Option<&mut SliceRecord> {
        let b = self.builds.get_mut(&key.build)?;
        if b.state != BuildState::Running {
            return None;
        }
        b.slices.get_mut(key.index as usize)
    }

    /// Emulation slowdown per architecture, from finished slices of both kinds.
    pub fn slowdowns(&self) -> std::collections::HashMap<String, f64> {
        self.run_times
            .iter()
            .filter(|(_, t)| t.native_count > 0 && t.emulated_count > 0 && t.native_ms > 0)
            .map(|(arch, t)| {
                let native = t.native_ms as f64 / t.native_count as f64;
                let emulated = t.emulated_ms as f64 / t.emulated_count as f64;
                (arch.clone(), (emulated / native).max(1.0))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(platforms: &[&str]) -> BuildSpec {
        BuildSpec {
            dockerfile: "FROM scratch\n".into(),
            dockerfile_name: "Dockerfile".into(),
            platforms: platforms.iter().map(|p| p.parse().unwrap()).collect(),
            ..Default::default()
        }
    }

    fn outcome(build: u64, slice: u32, attempt: u32) -> SliceOutcome {
        SliceOutcome {
            build,
            slice,
            attempt,
            manifest: Descriptor::new(kiln_shared::oci::MEDIA_MANIFEST, kiln_shared::Digest::of(b"{}"), 2),
            attestation: None,
            emulated: false,
            emulated_steps: vec![],
            duration_ms: 10,
            cache_hits: 0,
            cache_misses: 1,
            cache_peer_hits: 0,
            records: vec![],
            step_records: vec![],
            steps: vec![],
        }
    }

    fn key(build: u64, slice: u32) -> SliceKey {
        SliceKey::from_wire(build, slice)
    }

    fn requeue(build: u64, slice: u32, attempt: u32) -> SliceAttempt {
        SliceAttempt::from_wire((build, slice, attempt))
    }

    fn build(st: &ClusterState, id: u64) -> &BuildRecord {
        &st.builds[&BuildId::from_wire(id)]
    }

    fn assign(build: u64, slice: u32, attempt: u32, agent: &str) -> Command {
        let a = SliceAssignment {
            slice: key(build, slice),
            attempt: Attempt::from_wire(attempt),
            agent: agent.into(),
            emulated: false,
            reason: "native".into(),
        };
        Command::Assign { at_ms: 5, assignments: vec![a] }
    }

    #[test]
    fn two_creates_of_one_builder_sent_at_once_make_it_once() {
        // Both were checked against a state without it (the chaos suite's history showed both
        // answered "done"); the log orders them and the second is refused where it applies.
        let mut st = ClusterState::default();
        let ctx = crate::builders::Context {
            name: "a1".into(),
            endpoint: "127.0.0.1:1".into(),
            native: vec![],
            emulated: vec![],
            slots: 1,
            labels: Default::default(),
            version: "0".into(),
        };
        assert!(st.apply(&Command::RegisterAgent { context: ctx, key: None }).ok);
        let create = |value: &str| Command::CreateBuilder {
            spec: kiln_shared::api::CreateSpec {
                context: Some("a1".into()),
                name: Some("b".into()),
                node: Some(value.into()),
                ..Default::default()
            },
            generated_name: "builder-0".into(),
        };
        assert!(st.apply(&create("n1")).ok);
        let second = st.apply(&create("n2"));
        assert!(!second.ok && second.message.as_deref().unwrap_or_default().contains("already exists"), "{second:?}");
        assert_eq!(st.farm.builders["b"].nodes.len(), 1);
    }

    #[test]
    fn slices_are_fenced_by_attempt() {
        let mut st = ClusterState::default();
        let id = st
            .apply(&Command::Submit {
                assignments: vec![],
                build: Box::new(BuildRecord::new("t", spec(&["linux/amd64", "linux/arm64"]), vec![], 1)),
            })
            .value;
        assert_eq!(id, 1);
        assert_eq!(st.apply(&assign(1, 0, 1, "a1")).value, 1);
        // The same assignment twice (a leader retrying) changes nothing.
        assert_eq!(st.apply(&assign(1, 0, 1, "a2")).value, 0);
        assert_eq!(build(&st, 1).slices[0].agent, "a1");
        // a1 loses its lease: the slice goes back, attempt 2 goes to a2.
        let requeue = Command::Requeue { at_ms: 9, slices: vec![requeue(1, 0, 1)], reason: "a1 lost".into(), max_attempts: 3 };
        assert_eq!(st.apply(&requeue).value, 1);
        assert_eq!(build(&st, 1).slices[0].state, SliceState::Queued);
        assert_eq!(st.apply(&assign(1, 0, 2, "a2")).value, 1);
        // The partitioned a1 comes back and reports attempt 1: refused, a2's attempt stands.
        assert!(!st.apply(&Command::SliceDone { at_ms: 10, outcome: outcome(1, 0, 1) }).ok);
        assert!(st.apply(&Command::SliceDone { at_ms: 11, outcome: outcome(1, 0, 2) }).ok);
        assert!(!st.apply(&Command::SliceDone { at_ms: 12, outcome: outcome(1, 0, 2) }).ok, "no double report");
        assert_eq!(build(&st, 1).slices[0].state, SliceState::Done);
        assert_eq!(st.run_times["amd64"].native_count, 1);
    }

    #[test]
    fn attempts_are_bounded_and_failures_fail_the_build() {
        let mut st = ClusterState::default();
        st.apply(&Command::Submit { assignments: vec![], build: Box::new(BuildRecord::new("t", spec(&["linux/amd64"]), vec![], 1)) });
        for attempt in 1..=2 {
            st.apply(&assign(1, 0, attempt, "a1"));
            st.apply(&Command::Requeue { at_ms: 9, slices: vec![requeue(1, 0, attempt)], reason: "lost".into(), max_attempts: 2 });
        }
        assert_eq!(build(&st, 1).state, BuildState::Failed);
        assert!(build(&st, 1).error.contains("gave up after 2 attempts"), "{}", build(&st, 1).error);

        st.apply(&Command::Submit { assignments: vec![], build: Box::new(BuildRecord::new("t", spec(&["linux/amd64"]), vec![], 1)) });
        st.apply(&assign(2, 0, 1, "a1"));
        let failed = Command::SliceFailed { at_ms: 3, slice: key(2, 0), attempt: Attempt::FIRST, message: "RUN false: exit 1".into() };
        assert!(st.apply(&failed).ok);
        assert_eq!(build(&st, 2).error, "linux/amd64: RUN false: exit 1");
        let finish =
            Command::FinishBuild { at_ms: 4, build: BuildId::from_wire(2), index: Vec::new(), index_digest: String::new(), error: None };
        assert!(!st.apply(&finish).ok, "a failed build stays failed");
    }

    #[test]
    fn command_json_round_trip() -> Result<(), serde_json::Error> {
        let command = Command::Submit {
            assignments: vec![],
            build: Box::new(BuildRecord::new("t", spec(&["linux/arm64"]), vec!["127.0.0.1:1".parse().unwrap()], 4)),
        };
        let bytes = serde_json::to_vec(&command)?;
        assert_eq!(serde_json::from_slice::<Command>(&bytes)?, command);
        let mut state = ClusterState::default();
        state.apply(&command);
        state.apply(&assign(1, 0, 1, "a1"));
        state.apply(&Command::Requeue { at_ms: 9, slices: vec![requeue(1, 0, 1)], reason: "lost".into(), max_attempts: 3 });
        assert_eq!(serde_json::from_slice::<ClusterState>(&serde_json::to_vec(&state)?)?, state);
        Ok(())
    }
}
