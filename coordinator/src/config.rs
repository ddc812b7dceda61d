//! Configuration files of `kiln coordinator --config F` and `kiln agent --config F`.
//!
//! One serde struct per service, unknown fields refused, defaults documented on each field,
//! units in the field names, and `validate()` for what types cannot say. Command-line flags
//! override file values. The examples in `deploy/` are parsed by a test.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

fn default_heartbeat_interval_ms() -> u64 {
    500
}
fn default_election_timeout_min_ms() -> u64 {
    1500
}
fn default_election_timeout_max_ms() -> u64 {
    3000
}
fn default_lease_timeout_ms() -> u64 {
    10_000
}
fn default_max_slice_attempts() -> u32 {
    3
}
fn default_emulation_slowdown() -> f64 {
    5.0
}
fn default_snapshot_every_entries() -> u64 {
    5000
}
fn default_shutdown_drain_ms() -> u64 {
    2000
}
fn default_leader_tick_ms() -> u64 {
    100
}
fn default_long_poll_max_ms() -> u64 {
    30_000
}
fn default_poll_rate_max() -> u64 {
    1_000
}
fn default_session_answer_timeout_ms() -> u64 {
    20_000
}
fn default_forward_timeout_ms() -> u64 {
    30_000
}
fn default_forward_poll_slack_ms() -> u64 {
    1_500
}
fn default_admin_call_timeout_ms() -> u64 {
    120_000
}
fn default_context_drain_timeout_ms() -> u64 {
    110_000
}
fn default_peer_connect_timeout_ms() -> u64 {
    2_000
}
fn default_join_connect_timeout_ms() -> u64 {
    5_000
}
fn default_join_request_timeout_ms() -> u64 {
    10_000
}
fn default_join_retry_max_ms() -> u64 {
    2_000
}
fn default_quic_idle_timeout_ms() -> u32 {
    5_000
}
fn default_quic_keep_alive_ms() -> u64 {
    1_000
}
fn default_usage_window_secs() -> u64 {
    600
}
fn default_upload_abandon_secs() -> u64 {
    3_600
}
fn default_slice_grant_ttl_secs() -> u64 {
    24 * 3_600
}

fn default_blob_keep_secs() -> u64 {
    7 * 24 * 3_600
}

fn default_blob_gc_interval_secs() -> u64 {
    300
}

fn default_blob_upload_grace_secs() -> u64 {
    600
}

fn default_history_keep_builds() -> usize {
    1_000
}

fn default_history_keep_secs() -> u64 {
    30 * 24 * 3_600
}

/// A coordinator: one member of the Raft cluster.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// This member's Raft id; must be a key of `peers`.
    pub id: u64,
    /// Address for CLI, agents and peers (QUIC).
    pub listen: SocketAddr,
    /// Raft log, snapshots, the cluster CA and the tokens.
    pub data_dir: PathBuf,
    /// Every member of the initial cluster: id → address (TOML keys are strings: `1 = "..."`).
    #[serde(deserialize_with = "peer_map")]
    pub peers: BTreeMap<u64, SocketAddr>,
    /// Leader heartbeats (default 500 ms).
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// Election timeout range (default 1500–3000 ms).
    #[serde(default = "default_election_timeout_min_ms")]
    pub election_timeout_min_ms: u64,
    #[serde(default = "default_election_timeout_max_ms")]
    pub election_timeout_max_ms: u64,
    /// An agent silent this long loses its slices (default 10 s).
    #[serde(default = "default_lease_timeout_ms")]
    pub lease_timeout_ms: u64,
    /// How often a slice is tried before its build fails (default 3).
    #[serde(default = "default_max_slice_attempts")]
    pub max_slice_attempts: u32,
    /// Emulation slowdown assumed until one is measured (default 5.0).
    #[serde(default = "default_emulation_slowdown")]
    pub emulation_slowdown: f64,
    /// Log entries between snapshots (default 5000).
    #[serde(default = "default_snapshot_every_entries")]
    pub snapshot_every_entries: u64,
    /// On shutdown, how long requests in flight may take to finish (new ones are refused
    /// meanwhile), and then connections to close (default 2000 ms).
    #[serde(default = "default_shutdown_drain_ms")]
    pub shutdown_drain_ms: u64,
    /// The leader's tick: leases checked, queued slices placed, builds finished, at least this
    /// often (default 100 ms; events wake it sooner).
    #[serde(default = "default_leader_tick_ms")]
    pub leader_tick_ms: u64,
    /// Longest wait of a long poll (an agent's poll, `kiln build` following a build), whatever
    /// the client asks (default 30000 ms).
    #[serde(default = "default_long_poll_max_ms")]
    pub long_poll_max_ms: u64,
    /// Agents' polls the leader answers per second at most (default 1000): with more agents
    /// than this (those it heard from since its election), each is told to ask for a longer
    /// hold (agents / rate seconds, at most a third of `lease_timeout_ms`). A held poll still gets its work at once; a dead agent
    /// is noticed that much later at worst.
    #[serde(default = "default_poll_rate_max")]
    pub poll_rate_max: u64,
    /// How long a step's question to the build's client (a secret, an ssh-agent message) waits
    /// for the answer before the step fails (default 20000 ms; below `forward_timeout_ms`).
    #[serde(default = "default_session_answer_timeout_ms")]
    pub session_answer_timeout_ms: u64,
    /// How long a request forwarded to the leader may take (default 30000 ms).
    #[serde(default = "default_forward_timeout_ms")]
    pub forward_timeout_ms: u64,
    /// A forwarded long poll may take its wait plus this (default 1500 ms).
    #[serde(default = "default_forward_poll_slack_ms")]
    pub forward_poll_slack_ms: u64,
    /// Slow admin requests: a forwarded `kiln context rm`, storage requests to each agent
    /// (default 120000 ms).
    #[serde(default = "default_admin_call_timeout_ms")]
    pub admin_call_timeout_ms: u64,
    /// How long `kiln context rm` waits for the context's slices to finish; under
    /// `admin_call_timeout_ms`, so that the answer arrives before a forwarded call gives up
    /// (default 110000 ms).
    #[serde(default = "default_context_drain_timeout_ms")]
    pub context_drain_timeout_ms: u64,
    /// Connecting to another coordinator (default 2000 ms).
    #[serde(default = "default_peer_connect_timeout_ms")]
    pub peer_connect_timeout_ms: u64,
    /// A new member asking a running one for the cluster CA: connecting, the request, and the
    /// longest pause between tries (defaults 5000, 10000 and 2000 ms).
    #[serde(default = "default_join_connect_timeout_ms")]
    pub join_connect_timeout_ms: u64,
    #[serde(default = "default_join_request_timeout_ms")]
    pub join_request_timeout_ms: u64,
    #[serde(default = "default_join_retry_max_ms")]
    pub join_retry_max_ms: u64,
    /// QUIC: a connection silent this long is dead (default 5000 ms), and keep-alives
    /// every (default 1000 ms). Agents notice a dead leader within the idle timeout: keep it
    /// well under `lease_timeout_ms`.
    #[serde(default = "default_quic_idle_timeout_ms")]
    pub quic_idle_timeout_ms: u32,
    #[serde(default = "default_quic_keep_alive_ms")]
    pub quic_keep_alive_ms: u64,
    /// Fair share: the window over which each tenant's recent slot-seconds are counted
    /// (default 600 s).
    #[serde(default = "default_usage_window_secs")]
    pub usage_window_secs: u64,
    /// A partial upload no chunk has continued for this long is given up and its file removed
    /// (default 3600 s).
    #[serde(default = "default_upload_abandon_secs")]
    pub upload_abandon_secs: u64,
    /// How long the grant an agent gets with a slice (what it may read from coordinators and
    /// peers) stays valid (default 86400 s).
    #[serde(default = "default_slice_grant_ttl_secs")]
    pub slice_grant_ttl_secs: u64,
    /// Where to serve Prometheus metrics, `/healthz` and `/readyz` over plain HTTP (TCP;
    /// default: not served).
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Where to serve the web console (plain HTTP on TCP; default: not served). Loopback
    /// addresses only: the console carries tokens and has no TLS of its own.
    #[serde(default)]
    pub console_listen: Option<SocketAddr>,
    /// Build history: finished builds kept per tenant (default 1000), and for how long
    /// (default 30 days); their logs go with them.
    #[serde(default = "default_history_keep_builds")]
    pub history_keep_builds: usize,
    #[serde(default = "default_history_keep_secs")]
    pub history_keep_secs: u64,
    /// This coordinator's blob store: blobs no running build names go once unused this long
    /// (default 604800 s, 7 days; 0 keeps them), and the oldest beyond `blob_keep_bytes`
    /// (default 0: no limit), checked every `blob_gc_interval_secs` (default 300).
    #[serde(default = "default_blob_keep_secs")]
    pub blob_keep_secs: u64,
    #[serde(default)]
    pub blob_keep_bytes: u64,
    #[serde(default = "default_blob_gc_interval_secs")]
    pub blob_gc_interval_secs: u64,
    /// A blob uploaded or found present by a client's missing-blobs check within this long
    /// is kept by the blob GC and by `kiln prune --coordinators` alike (default 600 s): the
    /// build it was sent for may not be submitted yet, and no build names it until it is.
    #[serde(default = "default_blob_upload_grace_secs")]
    pub blob_upload_grace_secs: u64,
}

impl CoordinatorConfig {
    /// The QUIC clocks of this coordinator's endpoints.
    pub fn quic(&self) -> kiln_shared::transport::Timeouts {
        kiln_shared::transport::Timeouts { idle_ms: self.quic_idle_timeout_ms, keep_alive_ms: self.quic_keep_alive_ms }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        match self.peers.get(&self.id) {
            None => return bad(format!("id {} is not among the peers ({:?})", self.id, self.peers.keys().collect::<Vec<_>>())),
            Some(addr) if addr.port() != self.listen.port() => {
                return bad(format!("peer {} is listed at {addr} but this coordinator listens on {}", self.id, self.listen))
            }
            Some(_) => {}
        }
        if self.heartbeat_interval_ms == 0 || self.heartbeat_interval_ms * 2 >= self.election_timeout_min_ms {
            return bad(format!(
                "heartbeat_interval_ms ({}) must be above 0 and under half of election_timeout_min_ms ({})",
                self.heartbeat_interval_ms, self.election_timeout_min_ms
            ));
        }
        if self.election_timeout_min_ms >= self.election_timeout_max_ms {
            return bad(format!(
                "election_timeout_min_ms ({}) must be below election_timeout_max_ms ({})",
                self.election_timeout_min_ms, self.election_timeout_max_ms
            ));
        }
        if self.lease_timeout_ms < self.election_timeout_max_ms {
            return bad(format!(
                "lease_timeout_ms ({}) must be at least election_timeout_max_ms ({}) so a failover does not expire leases",
                self.lease_timeout_ms, self.election_timeout_max_ms
            ));
        }
        if self.max_slice_attempts == 0 || !(1.0..=100.0).contains(&self.emulation_slowdown) {
            return bad("max_slice_attempts must be at least 1 and emulation_slowdown between 1 and 100".into());
        }
        if self.leader_tick_ms == 0
            || self.long_poll_max_ms == 0
            || self.poll_rate_max == 0
            || self.forward_timeout_ms == 0
            || self.peer_connect_timeout_ms == 0
        {
            return bad(
                "leader_tick_ms, long_poll_max_ms, poll_rate_max, forward_timeout_ms and peer_connect_timeout_ms must be above 0".into()
            );
        }
        if self.session_answer_timeout_ms == 0 || self.session_answer_timeout_ms >= self.forward_timeout_ms {
            return bad(format!(
                "session_answer_timeout_ms ({}) must be above 0 and below forward_timeout_ms ({})",
                self.session_answer_timeout_ms, self.forward_timeout_ms
            ));
        }
        if self.context_drain_timeout_ms >= self.admin_call_timeout_ms {
            return bad(format!(
                "context_drain_timeout_ms ({}) must be below admin_call_timeout_ms ({}) so that `kiln context rm` is answered in time",
                self.context_drain_timeout_ms, self.admin_call_timeout_ms
            ));
        }
        if self.quic_keep_alive_ms == 0 || self.quic_keep_alive_ms >= u64::from(self.quic_idle_timeout_ms) {
            return bad(format!(
                "quic_keep_alive_ms ({}) must be above 0 and below quic_idle_timeout_ms ({})",
                self.quic_keep_alive_ms, self.quic_idle_timeout_ms
            ));
        }
        if let Some(addr) = self.console_listen.filter(|a| !a.ip().is_loopback()) {
            return bad(format!(
                "console_listen {addr}: the console serves plain HTTP, so only on a loopback address (127.0.0.1, ::1); put a TLS proxy in front of it to reach it from elsewhere"
            ));
        }
        Ok(())
    }
}

fn peer_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<u64, SocketAddr>, D::Error> {
    let raw = BTreeMap::<String, SocketAddr>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| k.parse::<u64>().map(|id| (id, v)).map_err(|_| serde::de::Error::custom(format!("peer id {k:?} is not a number"))))
        .collect()
}

pub use kiln_agent::config::AgentConfig;

/// Reads and validates a config file of either kind.
pub fn load<T: for<'de> Deserialize<'de>>(path: &std::path::Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string().trim().replace('\n', " ") })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
    }

    #[test]
    fn deploy_examples_parse_and_validate() {
        let mut seen = 0;
        for entry in std::fs::read_dir(deploy().join("config")).expect("deploy/config") {
            let path = entry.expect("entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            if name.starts_with("coordinator") {
                load::<CoordinatorConfig>(&path).unwrap_or_else(|e| panic!("{e}")).validate().unwrap_or_else(|e| panic!("{name}: {e}"));
                seen += 1;
            } else if name.starts_with("agent") {
                load::<AgentConfig>(&path).unwrap_or_else(|e| panic!("{e}")).validate().unwrap_or_else(|e| panic!("{name}: {e}"));
                seen += 1;
            }
        }
        assert!(seen >= 5, "expected 3 coordinator and 2 agent examples, found {seen}");
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        let base = "id = 1\nlisten = \"127.0.0.1:7401\"\ndata_dir = \"c1\"\n[peers]\n1 = \"127.0.0.1:7401\"\n";
        let ok: CoordinatorConfig = toml::from_str(base).unwrap();
        ok.validate().unwrap();
        assert_eq!(ok.lease_timeout_ms, 10_000);
        assert_eq!(ok.metrics_listen, None, "metrics are off by default");
        let with: CoordinatorConfig = toml::from_str(&format!("metrics_listen = \"127.0.0.1:9401\"\n{base}")).unwrap();
        assert_eq!(with.metrics_listen, Some("127.0.0.1:9401".parse().unwrap()));
        assert!(toml::from_str::<CoordinatorConfig>(&format!("metrics_listen = \"nowhere\"\n{base}")).is_err());
        assert_eq!(ok.console_listen, None, "the console is off by default");
        let console: CoordinatorConfig = toml::from_str(&format!("console_listen = \"127.0.0.1:7480\"\n{base}")).unwrap();
        console.validate().unwrap();
        let open: CoordinatorConfig = toml::from_str(&format!("console_listen = \"0.0.0.0:7480\"\n{base}")).unwrap();
        assert!(open.validate().unwrap_err().to_string().contains("only on a loopback address"));
        assert!(toml::from_str::<CoordinatorConfig>(&format!("{base}typo_ms = 3\n")).is_err());
        let mut c = ok.clone();
        c.id = 9;
        assert!(c.validate().unwrap_err().to_string().contains("not among the peers"));
        let mut c = ok.clone();
        c.heartbeat_interval_ms = 1000;
        assert!(c.validate().is_err());
        let mut c = ok;
        c.lease_timeout_ms = 100;
        assert!(c.validate().unwrap_err().to_string().contains("lease_timeout_ms"));
        let a: Result<AgentConfig, _> =
            toml::from_str("name = \"a1\"\nhosts = []\ntoken_file = \"t\"\ndata_dir = \"a1\"\nplatforms = [\"linux/sparc\"]\n");
        assert!(a.is_err(), "an unknown platform is refused when the file is read");
    }
}
