//! The agent's configuration (`kiln agent --config F`): one serde struct, unknown fields
//! refused, defaults on each field, units in the names. Command-line flags override it.

use kiln_shared::Platform;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

fn default_agent_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}
fn default_entitlements() -> Vec<String> {
    vec!["network.host".to_string()]
}

fn default_slots() -> u32 {
    std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1)
}

macro_rules! defaults {
    ($($name:ident: $ty:ty = $value:expr;)*) => { $( fn $name() -> $ty { $value } )* };
}

defaults! {
    default_register_deadline_ms: u64 = 10_000;
    default_register_patience_ms: u64 = 60_000;
    default_poll_wait_ms: u32 = 1_000;
    default_poll_deadline_ms: u64 = 2_500;
    default_poll_patience_ms: u64 = 5_000;
    default_poll_retry_ms: u64 = 200;
    default_report_deadline_ms: u64 = 10_000;
    default_report_patience_ms: u64 = 300_000;
    default_events_deadline_ms: u64 = 5_000;
    default_event_batch_ms: u64 = 50;
    default_session_deadline_ms: u64 = 45_000;
    default_advertise_interval_ms: u64 = 2_000;
    default_advertise_deadline_ms: u64 = 10_000;
    default_locate_deadline_ms: u64 = 5_000;
    default_locate_patience_ms: u64 = 10_000;
    default_return_blobs_deadline_ms: u64 = 30_000;
    default_cache_measure_interval_secs: u64 = 30;
    default_gc_interval_secs: u64 = 60;
    default_farm_connect_timeout_ms: u64 = 3_000;
    default_blob_chunk_timeout_ms: u64 = 30_000;
    default_peer_connect_timeout_ms: u64 = 3_000;
    default_peer_chunk_timeout_ms: u64 = 30_000;
    default_peer_record_timeout_ms: u64 = 10_000;
    default_peer_table_timeout_ms: u64 = 20_000;
    default_peer_table_refresh_timeout_ms: u64 = 10_000;
    default_peer_stall_timeout_secs: u64 = 30;
    default_quic_idle_timeout_ms: u32 = 5_000;
    default_quic_keep_alive_ms: u64 = 1_000;
    default_agent_shutdown_drain_ms: u64 = 5_000;
}

/// An agent: a build host.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The agent's name; it becomes a context of that name.
    pub name: String,
    /// Coordinators to register with (any of them; followers forward to the leader).
    pub hosts: Vec<SocketAddr>,
    /// Where the agent's join token is read from (the content of `agent.token`).
    pub token_file: PathBuf,
    /// Content store, snapshots, step cache.
    pub data_dir: PathBuf,
    /// The agent's private key, made on its first start: its registration is bound to it
    /// (default `DATA_DIR/agent.key`).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Address peers fetch cache from (default 127.0.0.1:0, any free port).
    #[serde(default = "default_agent_listen")]
    pub listen: SocketAddr,
    /// Platforms this host runs natively, overriding detection (emulated ones are still probed).
    #[serde(default)]
    pub platforms: Vec<Platform>,
    /// Slices run at once (default: the number of CPUs).
    #[serde(default = "default_slots")]
    pub slots: u32,
    /// The entitlements builds may ask of this agent with `--allow` (buildkitd's
    /// `--allow-insecure-entitlement`; default `network.host`, as buildx's builders allow it).
    #[serde(default = "default_entitlements")]
    pub allow_insecure_entitlements: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// GC: keep at most this many bytes of cache (0: no limit).
    #[serde(default)]
    pub gc_keep_bytes: u64,
    /// GC: drop cache unused for this long (0: never).
    #[serde(default)]
    pub gc_keep_duration_s: u64,
    /// Cap on what peers may fetch from this agent, bytes per second (0: no cap).
    #[serde(default)]
    pub bandwidth_limit_bytes_per_s: u64,
    /// Where to serve Prometheus metrics, `/healthz` and `/readyz` over plain HTTP (TCP; default:
    /// not served).
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,

    // How long the agent waits, by what for. Defaults in parentheses.
    /// Registering: per attempt (10000 ms) and in all, with retries (60000 ms).
    #[serde(default = "default_register_deadline_ms")]
    pub register_deadline_ms: u64,
    #[serde(default = "default_register_patience_ms")]
    pub register_patience_ms: u64,
    /// The long poll, which is also the heartbeat: how long the coordinator may hold it
    /// (1000 ms), its deadline per attempt (2500 ms) and in all (5000 ms), and the pause after a
    /// failed one (200 ms). A coordinator that died must not hold the heartbeat past the lease:
    /// keep `poll_patience_ms` well under the coordinators' `lease_timeout_ms`.
    #[serde(default = "default_poll_wait_ms")]
    pub poll_wait_ms: u32,
    #[serde(default = "default_poll_deadline_ms")]
    pub poll_deadline_ms: u64,
    #[serde(default = "default_poll_patience_ms")]
    pub poll_patience_ms: u64,
    #[serde(default = "default_poll_retry_ms")]
    pub poll_retry_ms: u64,
    /// A slice's report: per attempt (10000 ms) and in all (300000 ms).
    #[serde(default = "default_report_deadline_ms")]
    pub report_deadline_ms: u64,
    #[serde(default = "default_report_patience_ms")]
    pub report_patience_ms: u64,
    /// Progress events: each batch's send (5000 ms), and how far apart batches go (50 ms).
    #[serde(default = "default_events_deadline_ms")]
    pub events_deadline_ms: u64,
    #[serde(default = "default_event_batch_ms")]
    pub event_batch_ms: u64,
    /// A step's question to the build's client (a secret, an ssh-agent message), through the
    /// coordinators: how long it may take in all (45000 ms).
    #[serde(default = "default_session_deadline_ms")]
    pub session_deadline_ms: u64,
    /// Telling the tracker what this agent holds: how often (2000 ms), and each send (10000 ms).
    #[serde(default = "default_advertise_interval_ms")]
    pub advertise_interval_ms: u64,
    #[serde(default = "default_advertise_deadline_ms")]
    pub advertise_deadline_ms: u64,
    /// Asking the tracker who holds a blob or record: per attempt (5000 ms) and in all (10000 ms).
    #[serde(default = "default_locate_deadline_ms")]
    pub locate_deadline_ms: u64,
    #[serde(default = "default_locate_patience_ms")]
    pub locate_patience_ms: u64,
    /// Asking the origin coordinator which returned blobs it lacks (30000 ms).
    #[serde(default = "default_return_blobs_deadline_ms")]
    pub return_blobs_deadline_ms: u64,
    /// How often the cache's size is measured (30 s) and the GC policy applied (60 s).
    #[serde(default = "default_cache_measure_interval_secs")]
    pub cache_measure_interval_secs: u64,
    #[serde(default = "default_gc_interval_secs")]
    pub gc_interval_secs: u64,
    /// Connecting to a coordinator (3000 ms); each blob chunk to or from one (30000 ms).
    #[serde(default = "default_farm_connect_timeout_ms")]
    pub farm_connect_timeout_ms: u64,
    #[serde(default = "default_blob_chunk_timeout_ms")]
    pub blob_chunk_timeout_ms: u64,
    /// Fetching from other agents: connecting (3000 ms), a chunk (30000 ms), a record
    /// (10000 ms), a chunk table (20000 ms; 10000 ms when asked again of a source that is
    /// itself fetching), and giving up on a fetch that keeps nothing (30 s).
    #[serde(default = "default_peer_connect_timeout_ms")]
    pub peer_connect_timeout_ms: u64,
    #[serde(default = "default_peer_chunk_timeout_ms")]
    pub peer_chunk_timeout_ms: u64,
    #[serde(default = "default_peer_record_timeout_ms")]
    pub peer_record_timeout_ms: u64,
    #[serde(default = "default_peer_table_timeout_ms")]
    pub peer_table_timeout_ms: u64,
    #[serde(default = "default_peer_table_refresh_timeout_ms")]
    pub peer_table_refresh_timeout_ms: u64,
    #[serde(default = "default_peer_stall_timeout_secs")]
    pub peer_stall_timeout_secs: u64,
    /// QUIC: a connection silent this long is dead (5000 ms); keep-alives every (1000 ms).
    #[serde(default = "default_quic_idle_timeout_ms")]
    pub quic_idle_timeout_ms: u32,
    #[serde(default = "default_quic_keep_alive_ms")]
    pub quic_keep_alive_ms: u64,
    /// On shutdown, how long running slices may take to finish and report (5000 ms). The agent
    /// stops polling when it stops, so its lease runs out `lease_timeout_ms` later and what is
    /// still running is given to another agent: keep this under the coordinators' lease.
    #[serde(default = "default_agent_shutdown_drain_ms")]
    pub shutdown_drain_ms: u64,
}

impl AgentConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(format!("agent name {:?}: use letters, digits, '-', '_' and '.'", self.name));
        }
        if self.hosts.is_empty() {
            return Err("an agent needs at least one coordinator in hosts".into());
        }
        if self.slots == 0 {
            return Err("slots must be at least 1".into());
        }
        if self.quic_keep_alive_ms == 0 || self.quic_keep_alive_ms >= u64::from(self.quic_idle_timeout_ms) {
            return Err(format!(
                "quic_keep_alive_ms ({}) must be above 0 and below quic_idle_timeout_ms ({})",
                self.quic_keep_alive_ms, self.quic_idle_timeout_ms
            ));
        }
        if self.advertise_interval_ms == 0 || self.cache_measure_interval_secs == 0 || self.gc_interval_secs == 0 {
            return Err("advertise_interval_ms, cache_measure_interval_secs and gc_interval_secs must be above 0".into());
        }
        Ok(())
    }

    pub fn quic(&self) -> kiln_shared::transport::Timeouts {
        kiln_shared::transport::Timeouts { idle_ms: self.quic_idle_timeout_ms, keep_alive_ms: self.quic_keep_alive_ms }
    }

    /// The farm client's timeouts.
    pub fn client_timeouts(&self) -> kiln_shared::client::Timeouts {
        kiln_shared::client::Timeouts {
            connect_ms: self.farm_connect_timeout_ms,
            blob_chunk_ms: self.blob_chunk_timeout_ms,
            quic: self.quic(),
            ..Default::default()
        }
    }

    pub fn peer_timeouts(&self) -> crate::peer::PeerTimeouts {
        crate::peer::PeerTimeouts {
            connect_ms: self.peer_connect_timeout_ms,
            chunk_ms: self.peer_chunk_timeout_ms,
            record_ms: self.peer_record_timeout_ms,
            table_ms: self.peer_table_timeout_ms,
            table_refresh_ms: self.peer_table_refresh_timeout_ms,
            stall_secs: self.peer_stall_timeout_secs,
            quic: self.quic(),
        }
    }
}
