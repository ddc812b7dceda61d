//! The embedded farm: with no `--host`/`KILN_HOST`, every farm verb starts a real single-member
//! coordinator (Raft log and snapshots under `$KILN_HOME/coordinator`) and a real agent worker
//! (`$KILN_HOME/agent`) in this process, on loopback QUIC with the farm's own CA. The CLI then
//! talks to them with the same client, requests and code as to any farm: there is one build path.
//!
//! One process at a time serves a `$KILN_HOME`: the farm holds `$KILN_HOME/embedded.lock`, and
//! a second `kiln` on the same home waits for it.

use crate::config::CoordinatorConfig;
use anyhow::{anyhow, bail, Context as _};
use kiln_agent::config::AgentConfig;
use kiln_shared::task::{spawn_on, TaskHandle};
use nix::fcntl::{Flock, FlockArg};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The name of the embedded farm's one agent (and of its context and builder).
pub const AGENT_NAME: &str = "embedded";

/// Raft timings of a one-member cluster: it elects itself, so a short election timeout only
/// shortens the wait after a restart; nothing else depends on it.
const HEARTBEAT_INTERVAL_MS: u64 = 50;
const ELECTION_TIMEOUT_MIN_MS: u64 = 150;
const ELECTION_TIMEOUT_MAX_MS: u64 = 300;
/// How long the coordinator and agent may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a clean stop may take before the tasks are dropped.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running embedded farm. Dropping it stops the agent, then the coordinator.
pub struct Embedded {
    pub hosts: Vec<SocketAddr>,
    /// The admin token: the embedded farm's one user is its admin.
    pub token: String,
    stop: CancellationToken,
    coordinator: Option<TaskHandle<anyhow::Result<()>>>,
    agent: Option<TaskHandle<Result<(), kiln_agent::worker::WorkerError>>>,
    handle: tokio::runtime::Handle,
    _lock: Flock<std::fs::File>,
}

fn lock(home: &Path) -> anyhow::Result<Flock<std::fs::File>> {
    std::fs::create_dir_all(home).with_context(|| format!("creating {}", home.display()))?;
    let path = home.join("embedded.lock");
    let open = || std::fs::File::options().create(true).truncate(false).write(true).open(&path);
    let file = open().with_context(|| format!("opening {}", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(l),
        Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
            eprintln!("waiting for another kiln process using {}", home.display());
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| anyhow!("locking {}: {e}", path.display()))
        }
        Err((_, e)) => bail!("locking {}: {e}", path.display()),
    }
}

/// A free loopback UDP port for a QUIC endpoint: `preferred` if it is free.
fn free_port(preferred: Option<SocketAddr>) -> anyhow::Result<SocketAddr> {
    if let Some(s) = preferred.filter(|a| a.ip().is_loopback()).and_then(|a| std::net::UdpSocket::bind(a).ok()) {
        return s.local_addr().context("finding a free loopback port");
    }
    let s = std::net::UdpSocket::bind("127.0.0.1:0").context("finding a free loopback port")?;
    s.local_addr().context("finding a free loopback port")
}

/// Where the agent listened last time. The same address again means the registration is
/// unchanged, and the agent's start commits nothing.
fn last_agent_endpoint(home: &Path) -> Option<SocketAddr> {
    std::fs::read_to_string(home.join("agent/endpoint")).ok()?.trim().parse().ok()
}

fn coordinator_config(dir: PathBuf, listen: SocketAddr) -> anyhow::Result<CoordinatorConfig> {
    let toml = format!("id = 1\nlisten = \"{listen}\"\ndata_dir = {:?}\n[peers]\n1 = \"{listen}\"\n", dir.display().to_string());
    let mut cfg: CoordinatorConfig = toml::from_str(&toml).context("the embedded coordinator's config")?;
    cfg.heartbeat_interval_ms = HEARTBEAT_INTERVAL_MS;
    cfg.election_timeout_min_ms = ELECTION_TIMEOUT_MIN_MS;
    cfg.election_timeout_max_ms = ELECTION_TIMEOUT_MAX_MS;
    // Every client of this coordinator is in this process and stopping with it.
    cfg.shutdown_drain_ms = 0;
    cfg.validate()?;
    Ok(cfg)
}

fn agent_config(dir: PathBuf, host: SocketAddr, listen: SocketAddr) -> anyhow::Result<AgentConfig> {
    let toml = format!("name = {AGENT_NAME:?}\nhosts = [\"{host}\"]\ntoken_file = \"\"\ndata_dir = {:?}\n", dir.display().to_string());
    let mut cfg: AgentConfig = toml::from_str(&toml).context("the embedded agent's config")?;
    // Every platform of a build runs at once, as on a farm with an agent per platform.
    cfg.slots = cfg.slots.max(8);
    cfg.listen = listen;
    // The key goes with the coordinator's state, which holds the name's binding to it: a
    // removed agent dir (a cache wiped by hand) does not leave the name bound to a lost key.
    cfg.key_file = dir.parent().map(|home| home.join("coordinator").join("embedded-agent.key"));
    // As the coordinator's: its one client is this process, stopping with it.
    cfg.shutdown_drain_ms = 0;
    cfg.validate().map_err(anyhow::Error::msg)?;
    Ok(cfg)
}

/// Waits for a file the founding coordinator writes once its tokens are committed.
async fn read_token(path: &Path, coordinator: &TaskHandle<anyhow::Result<()>>) -> anyhow::Result<String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(t) = std::fs::read_to_string(path) {
            return Ok(t.trim().to_string());
        }
        if coordinator.is_finished() {
            bail!("the embedded coordinator stopped before writing {}", path.display());
        }
        if Instant::now() > deadline {
            bail!("the embedded coordinator wrote no {} within {START_TIMEOUT:?}", path.display());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

impl Embedded {
    /// Starts the farm of `home` on `runtime` and returns once its agent is registered.
    pub fn start(home: &Path, runtime: &tokio::runtime::Runtime) -> anyhow::Result<Embedded> {
        let lock = lock(home)?;
        let home = home.canonicalize().with_context(|| format!("resolving {}", home.display()))?;
        // State an older kiln wrote is kept, moved aside, and the embedded farm starts afresh.
        let state = home.join("coordinator");
        if let Some(found) = crate::node::other_state_format(&state) {
            let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            let aside = home.join(format!("coordinator.format-{found}.{secs}"));
            std::fs::rename(&state, &aside).with_context(|| format!("moving {} aside", state.display()))?;
            tracing::warn!(
                "the embedded farm's state in {} was written by another kiln version (format {found}); it was moved to {} and the farm starts afresh (builders made here must be created again)",
                state.display(),
                aside.display()
            );
        }
        let listen = free_port(None)?;
        let ccfg = coordinator_config(home.join("coordinator"), listen)?;
        let acfg = agent_config(home.join("agent"), listen, free_port(last_agent_endpoint(&home))?)?;
        let stop = CancellationToken::new();
        let handle = runtime.handle().clone();
        let coordinator = spawn_on(&handle, "embedded coordinator", crate::node::run(ccfg, None, None, stop.clone()));
        let mut farm = Embedded {
            hosts: vec![listen],
            token: String::new(),
            stop: stop.clone(),
            coordinator: Some(coordinator),
            agent: None,
            handle: handle.clone(),
            _lock: lock,
        };
        let dir = home.join("coordinator");
        let (admin, agent_token) = runtime.block_on(async {
            let c = farm.coordinator.as_ref().ok_or_else(|| anyhow!("no coordinator"))?;
            anyhow::Ok((read_token(&dir.join("admin.token"), c).await?, read_token(&dir.join("agent.token"), c).await?))
        })?;
        farm.token = admin;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        farm.agent = Some(spawn_on(&handle, "embedded agent", kiln_agent::worker::run(acfg, agent_token, stop, Some(ready_tx))));
        runtime.block_on(async {
            match tokio::time::timeout(START_TIMEOUT, ready_rx).await {
                Ok(Ok(info)) => {
                    let _ = std::fs::write(home.join("agent/endpoint"), info.endpoint);
                    Ok(())
                }
                Ok(Err(_)) => {
                    // A coordinator that stopped is the cause; else the worker's error says why.
                    if let Some(e) = coordinator_failure(&mut farm).await {
                        return Err(e);
                    }
                    let agent = farm.agent.take().ok_or_else(|| anyhow!("no agent"))?;
                    match agent.await {
                        Ok(Err(e)) => Err(anyhow!("the embedded agent: {e}")),
                        _ => Err(anyhow!("the embedded agent stopped before registering")),
                    }
                }
                Err(_) => match coordinator_failure(&mut farm).await {
                    Some(e) => Err(e),
                    None => Err(anyhow!("the embedded agent did not register within {START_TIMEOUT:?}")),
                },
            }
        })?;
        Ok(farm)
    }
}

/// The embedded coordinator's error, if it has stopped.
async fn coordinator_failure(farm: &mut Embedded) -> Option<anyhow::Error> {
    if !farm.coordinator.as_ref().is_some_and(|c| c.is_finished()) {
        return None;
    }
    let c = farm.coordinator.take()?;
    Some(match c.await {
        Ok(Err(e)) => anyhow!("the embedded coordinator: {e}"),
        Ok(Ok(())) => anyhow!("the embedded coordinator stopped"),
        Err(e) => anyhow!("the embedded coordinator failed: {e}"),
    })
}

impl Drop for Embedded {
    fn drop(&mut self) {
        self.stop.cancel();
        let (agent, coordinator) = (self.agent.take(), self.coordinator.take());
        // Drop runs outside the runtime (the CLI's verbs block on it from the main thread).
        if tokio::runtime::Handle::try_current().is_ok() {
            return;
        }
        self.handle.block_on(async {
            let _ = tokio::time::timeout(STOP_TIMEOUT, async {
                if let Some(a) = agent {
                    let _ = a.await;
                }
                if let Some(c) = coordinator {
                    let _ = c.await;
                }
            })
            .await;
        });
    }
}
