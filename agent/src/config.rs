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
fn default_slots() -> u32 {
    std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1)
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
    /// Address peers fetch cache from (default 127.0.0.1:0, any free port).
    #[serde(default = "default_agent_listen")]
    pub listen: SocketAddr,
    /// Platforms this host runs natively, overriding detection (emulated ones are still probed).
    #[serde(default)]
    pub platforms: Vec<Platform>,
    /// Slices run at once (default: the number of CPUs).
    #[serde(default = "default_slots")]
    pub slots: u32,
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
        Ok(())
    }
}
