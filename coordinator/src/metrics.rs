//! The coordinator's metric families, in the process's registry
//! ([`kiln_shared::metrics::global`]). Counters and histograms count events on the coordinator
//! that handled them, which is the leader (submits, slice reports, builds finished, slices taken
//! back): summed over every coordinator they give the farm's totals across leader changes.
//! The gauges are set from the Raft state and the leader's soft state at each scrape (see
//! `node::probes`).

use kiln_shared::metrics::{self, Counter, Gauge, Histogram, DURATION_BUCKETS};
use std::sync::OnceLock;

pub struct CoordinatorMetrics {
    /// `tenant`.
    pub builds_submitted: Counter,
    /// `state` (succeeded, failed), `tenant`.
    pub builds_finished: Counter,
    /// `state` (succeeded, failed, lost: taken back from an agent whose lease ran out),
    /// `tenant`, `platform`, `emulated`.
    pub slices_finished: Counter,
    /// `platform`, `emulated`: from queued to assigned, and from assigned to reported.
    pub slice_queue_seconds: Histogram,
    pub slice_run_seconds: Histogram,
    /// Blob bytes uploaded to this coordinator (contexts from the CLI, images agents return),
    /// and those the uploader did not have to send because it had them (`result`: sent, skipped).
    pub upload_bytes: Counter,
    /// Leader only (each value once for the farm): `state`.
    pub builds: Gauge,
    /// Leader only: `state`, `tenant`, `platform`.
    pub slices: Gauge,
    /// Leader only: `state` (ready, draining, lost).
    pub agents: Gauge,
    /// Leader only, per agent as the leader last heard: `agent`.
    pub agent_slots: Gauge,
    pub agent_running: Gauge,
    pub agent_cache_bytes: Gauge,
    /// This member's view of Raft.
    pub raft_term: Gauge,
    pub raft_is_leader: Gauge,
    pub raft_leader_id: Gauge,
    pub raft_last_log_index: Gauge,
    pub raft_commit_index: Gauge,
    pub raft_applied_index: Gauge,
    pub raft_apply_lag: Gauge,
}

pub fn get() -> &'static CoordinatorMetrics {
    static M: OnceLock<CoordinatorMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let r = metrics::global();
        let slice_labels: &[&'static str] = &["platform", "emulated"];
        let m = CoordinatorMetrics {
            builds_submitted: r.counter(
                "kiln_builds_submitted_total",
                "Builds submitted (new ones, not a client's retry), by tenant.",
                &["tenant"],
            ),
            builds_finished: r.counter(
                "kiln_builds_finished_total",
                "Builds finished, by outcome (succeeded, failed) and tenant.",
                &["state", "tenant"],
            ),
            slices_finished: r.counter(
                "kiln_slices_finished_total",
                "Slice attempts ended, by outcome (succeeded, failed, lost: the agent's lease ran out), tenant, platform and emulation.",
                &["state", "tenant", "platform", "emulated"],
            ),
            slice_queue_seconds: r.histogram(
                "kiln_slice_queue_seconds",
                "Time a slice waited from queued to assigned, by platform and emulation.",
                slice_labels,
                DURATION_BUCKETS,
            ),
            slice_run_seconds: r.histogram(
                "kiln_slice_run_seconds",
                "Time a slice ran, from assigned to reported done, by platform and emulation.",
                slice_labels,
                DURATION_BUCKETS,
            ),
            upload_bytes: r.counter(
                "kiln_blob_upload_bytes_total",
                "Blob bytes uploaded to this coordinator (build contexts, returned images): sent, or skipped because it had them.",
                &["result"],
            ),
            builds: r.gauge("kiln_builds", "Builds in the Raft state, by state (reported by the leader only).", &["state"]),
            slices: r.gauge(
                "kiln_slices",
                "Slices in the Raft state, by state, tenant and platform (reported by the leader only).",
                &["state", "tenant", "platform"],
            ),
            agents: r.gauge("kiln_agents", "Registered agents, by state: ready, draining, lost (reported by the leader only).", &["state"]),
            agent_slots: r.gauge("kiln_farm_agent_slots", "Each agent's slots (reported by the leader only).", &["agent"]),
            agent_running: r.gauge(
                "kiln_farm_agent_running_slices",
                "Slices running on each agent (reported by the leader only).",
                &["agent"],
            ),
            agent_cache_bytes: r.gauge(
                "kiln_farm_agent_cache_bytes",
                "Each agent's cache size, as its last poll said (reported by the leader only).",
                &["agent"],
            ),
            raft_term: r.gauge("kiln_raft_term", "This member's current Raft term.", &[]),
            raft_is_leader: r.gauge("kiln_raft_is_leader", "1 when this member is the leader.", &[]),
            raft_leader_id: r.gauge("kiln_raft_leader_id", "The leader's id as this member knows it (0: none).", &[]),
            raft_last_log_index: r.gauge("kiln_raft_last_log_index", "The last index in this member's log.", &[]),
            raft_commit_index: r.gauge("kiln_raft_commit_index", "The last index this member knows committed.", &[]),
            raft_applied_index: r.gauge("kiln_raft_applied_index", "The last index this member's state machine applied.", &[]),
            raft_apply_lag: r.gauge("kiln_raft_apply_lag", "Committed entries not yet applied by this member.", &[]),
        };
        for result in ["sent", "skipped"] {
            m.upload_bytes.touch(&[result]);
        }
        m
    })
}
