//! The long-running verbs: `kiln coordinator` (a member of the Raft cluster, plus `add`,
//! `remove` and `status` for its membership) and `kiln agent` (a build host). Both turn flags
//! and an optional config file into a config and hand it to the library with a shutdown token
//! that SIGINT/SIGTERM cancel.

use super::remote::{self, expect_ok, unexpected, FarmArgs};
use crate::config::{self, AgentConfig, CoordinatorConfig};
use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Subcommand};
use kiln_shared::api::{ClientRequest, ClientResponse};
use kiln_shared::Platform;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CoordinatorArgs {
    #[command(subcommand)]
    pub action: Option<CoordinatorAction>,
    /// This member's id (a key of --peers).
    #[arg(long)]
    pub id: Option<u64>,
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The initial members: ID=ADDR,...
    #[arg(long)]
    pub peers: Option<String>,
    /// A TOML config file (flags override it); see deploy/config.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A member to get the cluster CA from when this data dir has none (default: the lowest id of --peers).
    #[arg(long)]
    pub join: Option<SocketAddr>,
    /// An admin token, to join a running cluster (`kiln coordinator add` makes it a member).
    #[arg(long, env = "KILN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[arg(long)]
    pub heartbeat_interval_ms: Option<u64>,
    #[arg(long)]
    pub election_timeout_min_ms: Option<u64>,
    #[arg(long)]
    pub election_timeout_max_ms: Option<u64>,
    #[arg(long)]
    pub lease_timeout_ms: Option<u64>,
    #[arg(long)]
    pub max_slice_attempts: Option<u32>,
    #[arg(long)]
    pub shutdown_drain_ms: Option<u64>,
    #[arg(long)]
    pub leader_tick_ms: Option<u64>,
    #[arg(long)]
    pub long_poll_max_ms: Option<u64>,
    #[arg(long)]
    pub poll_rate_max: Option<u64>,
    #[arg(long)]
    pub forward_timeout_ms: Option<u64>,
    #[arg(long)]
    pub forward_poll_slack_ms: Option<u64>,
    #[arg(long)]
    pub admin_call_timeout_ms: Option<u64>,
    #[arg(long)]
    pub context_drain_timeout_ms: Option<u64>,
    #[arg(long)]
    pub peer_connect_timeout_ms: Option<u64>,
    #[arg(long)]
    pub join_connect_timeout_ms: Option<u64>,
    #[arg(long)]
    pub join_request_timeout_ms: Option<u64>,
    #[arg(long)]
    pub join_retry_max_ms: Option<u64>,
    #[arg(long)]
    pub quic_idle_timeout_ms: Option<u32>,
    #[arg(long)]
    pub quic_keep_alive_ms: Option<u64>,
    #[arg(long)]
    pub usage_window_secs: Option<u64>,
    #[arg(long)]
    pub upload_abandon_secs: Option<u64>,
    #[arg(long)]
    pub blob_upload_grace_secs: Option<u64>,
    /// Serve Prometheus metrics, /healthz and /readyz over plain HTTP on this TCP address.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Serve the web console over plain HTTP on this TCP address (loopback only).
    #[arg(long)]
    pub console_listen: Option<SocketAddr>,
}

/// Flags override file values: `cfg.field = args.field.unwrap_or(cfg.field)` for each name.
macro_rules! override_with {
    ($cfg:ident, $args:ident: $($field:ident),* $(,)?) => {
        $( $cfg.$field = $args.$field.unwrap_or($cfg.$field); )*
    };
}

#[derive(Debug, Subcommand)]
pub enum CoordinatorAction {
    /// Add a coordinator (started with --join and an admin --token) to the cluster.
    Add {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        addr: SocketAddr,
        #[command(flatten)]
        farm: FarmArgs,
    },
    /// Remove a coordinator from the cluster.
    Remove {
        #[arg(long)]
        id: u64,
        #[command(flatten)]
        farm: FarmArgs,
    },
    /// Show the members, the leader and the term.
    Status {
        #[command(flatten)]
        farm: FarmArgs,
    },
    /// Make a join token: `--role user --tenant T` for a tenant's users (admin only).
    Token {
        #[arg(long, default_value = "user")]
        role: String,
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        farm: FarmArgs,
    },
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Coordinators to register with: ADDR[,ADDR..].
    #[arg(long, env = "KILN_HOST")]
    pub host: Option<String>,
    /// The agent token (the content of c1/agent.token).
    #[arg(long, env = "KILN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Where peers reach this agent.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Platforms this host runs natively (overrides detection; emulated ones are still probed).
    #[arg(long, value_delimiter = ',')]
    pub platform: Vec<String>,
    #[arg(long)]
    pub slots: Option<u32>,
    /// An entitlement builds may ask for with `kiln build --allow` (repeatable; default
    /// network.host; `none` allows none).
    #[arg(long = "allow-insecure-entitlement")]
    pub allow_insecure_entitlements: Vec<String>,
    /// Cap on peer transfers to and from this agent, bytes per second (e.g. 100MB; 0: none).
    #[arg(long)]
    pub max_bandwidth: Option<String>,
    /// GC policy: keep at most this much cache (e.g. 20GB).
    #[arg(long)]
    pub gc_keep_storage: Option<String>,
    /// GC policy: remove cache unused for this long (e.g. 168h).
    #[arg(long)]
    pub gc_keep_duration: Option<String>,
    /// A TOML config file (flags override it); see deploy/config.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// On shutdown, how long running slices may take to finish and report.
    #[arg(long)]
    pub shutdown_drain_ms: Option<u64>,
    /// Serve Prometheus metrics, /healthz and /readyz over plain HTTP on this TCP address.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Register this host's qemu-user-static interpreters with binfmt_misc where it lacks a
    /// handler (root; existing handlers are left alone), say which platforms now run
    /// emulated, and exit (as an init container or ExecStartPre= runs it).
    #[arg(long)]
    pub install_binfmt: bool,
}

/// Runs [`kiln_agent::binfmt::install`] with a scratch directory of its own for the probes.
pub fn install_binfmt() -> Result<kiln_agent::binfmt::Report, kiln_agent::binfmt::BinfmtError> {
    let scratch = std::env::temp_dir().join(format!("kiln-binfmt-{}", std::process::id()));
    let report = kiln_agent::binfmt::install(&scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    report
}

fn parse_peers(s: &str) -> anyhow::Result<BTreeMap<u64, SocketAddr>> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part.split_once('=').ok_or_else(|| anyhow!("--peers {part:?}: expected ID=ADDR"))?;
        let id: u64 = id.trim().parse().map_err(|e| anyhow!("--peers {part:?}: bad id: {e}"))?;
        out.insert(id, addr.trim().parse().map_err(|e| anyhow!("--peers {part:?}: bad address: {e}"))?);
    }
    Ok(out)
}

/// Runs `work` until it ends or SIGINT/SIGTERM asks for a clean stop.
fn serve<F>(work: impl FnOnce(CancellationToken) -> F) -> anyhow::Result<ExitCode>
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    remote::runtime()?.block_on(async {
        let stop = CancellationToken::new();
        let signals = stop.clone();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let watcher = kiln_shared::task::spawn("signals", async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            signals.cancel();
        });
        let result = work(stop).await;
        drop(watcher);
        result.map(|_| ExitCode::SUCCESS)
    })
}

pub fn coordinator(args: CoordinatorArgs) -> anyhow::Result<ExitCode> {
    if let Some(action) = args.action {
        return membership(action);
    }
    let mut cfg: CoordinatorConfig = match &args.config {
        Some(path) => config::load(path)?,
        None => {
            let need = |what: &str| anyhow!("kiln coordinator needs --{what} (or --config FILE)");
            let id = args.id.ok_or_else(|| need("id"))?;
            let listen = args.listen.ok_or_else(|| need("listen"))?;
            let data_dir = args.data_dir.clone().ok_or_else(|| need("data-dir"))?;
            let peers = match &args.peers {
                Some(p) => parse_peers(p)?,
                None => BTreeMap::from([(id, listen)]),
            };
            let toml = format!("id = {id}\nlisten = \"{listen}\"\ndata_dir = {:?}\n[peers]\n", data_dir.display().to_string());
            let mut cfg: CoordinatorConfig = toml::from_str(&toml).context("building the default config")?;
            cfg.peers = peers;
            cfg
        }
    };
    if let Some(v) = args.id {
        cfg.id = v;
    }
    if let Some(v) = args.listen {
        cfg.listen = v;
    }
    if let Some(v) = args.data_dir {
        cfg.data_dir = v;
    }
    if let Some(p) = &args.peers {
        cfg.peers = parse_peers(p)?;
    }
    if let Some(v) = args.metrics_listen {
        cfg.metrics_listen = Some(v);
    }
    if let Some(v) = args.console_listen {
        cfg.console_listen = Some(v);
    }
    override_with!(cfg, args:
        heartbeat_interval_ms,
        election_timeout_min_ms,
        election_timeout_max_ms,
        lease_timeout_ms,
        max_slice_attempts,
        shutdown_drain_ms,
        leader_tick_ms,
        long_poll_max_ms,
        poll_rate_max,
        forward_timeout_ms,
        forward_poll_slack_ms,
        admin_call_timeout_ms,
        context_drain_timeout_ms,
        peer_connect_timeout_ms,
        join_connect_timeout_ms,
        join_request_timeout_ms,
        join_retry_max_ms,
        quic_idle_timeout_ms,
        quic_keep_alive_ms,
        usage_window_secs,
        upload_abandon_secs,
        blob_upload_grace_secs,
    );
    cfg.validate()?;
    let (join, token) = (args.join, args.token.clone());
    serve(|stop| async move { crate::node::run(cfg, join, token, stop).await })
}

fn membership(action: CoordinatorAction) -> anyhow::Result<ExitCode> {
    let (farm, request) = match action {
        CoordinatorAction::Add { id, addr, farm } => (farm, Some(ClientRequest::AddCoordinator { id, addr: addr.to_string() })),
        CoordinatorAction::Remove { id, farm } => (farm, Some(ClientRequest::RemoveCoordinator { id })),
        CoordinatorAction::Status { farm } => (farm, None),
        CoordinatorAction::Token { role, tenant, farm } => {
            let role = kiln_shared::api::Role::parse(&role)
                .filter(|r| *r != kiln_shared::api::Role::Coordinator)
                .ok_or_else(|| anyhow!("--role {role:?}: expected user, admin or agent"))?;
            let hosts = farm.require("kiln coordinator token")?;
            return remote::runtime()?.block_on(async {
                let f = remote::connect(&hosts, &farm).await?;
                match remote::call(&f, &ClientRequest::CreateToken { role, tenant }).await? {
                    ClientResponse::Name(token) => {
                        println!("{token}");
                        Ok(ExitCode::SUCCESS)
                    }
                    other => bail!(unexpected(other)),
                }
            });
        }
    };
    let hosts = farm.require("kiln coordinator add|remove|status")?;
    remote::runtime()?.block_on(async {
        let f = remote::connect(&hosts, &farm).await?;
        if let Some(req) = request {
            expect_ok(remote::call(&f, &req).await?)?;
        }
        match remote::call(&f, &ClientRequest::Status).await? {
            ClientResponse::Status(s) => {
                println!(
                    "leader: {}   term: {}   applied: {}",
                    s.leader.map(|l| l.to_string()).unwrap_or("none".into()),
                    s.term,
                    s.last_applied
                );
                for m in s.members {
                    println!("  {} {} {}", m.id, m.addr, if m.voter { "voter" } else { "learner" });
                }
                Ok(ExitCode::SUCCESS)
            }
            other => bail!(unexpected(other)),
        }
    })
}

pub fn agent(args: AgentArgs) -> anyhow::Result<ExitCode> {
    if args.install_binfmt {
        println!("{}", install_binfmt()?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut cfg: AgentConfig = match &args.config {
        Some(path) => config::load(path)?,
        None => {
            let name = args.name.clone().ok_or_else(|| anyhow!("kiln agent needs --name (or --config FILE)"))?;
            let data_dir = args.data_dir.clone().ok_or_else(|| anyhow!("kiln agent needs --data-dir (or --config FILE)"))?;
            toml::from_str(&format!("name = {name:?}\nhosts = []\ntoken_file = \"\"\ndata_dir = {:?}\n", data_dir.display().to_string()))
                .context("building the default config")?
        }
    };
    if let Some(h) = &args.host {
        cfg.hosts = kiln_shared::client::parse_hosts(h).map_err(anyhow::Error::msg)?;
    }
    if let Some(v) = args.name {
        cfg.name = v;
    }
    if let Some(v) = args.data_dir {
        cfg.data_dir = v;
    }
    if let Some(v) = args.listen {
        cfg.listen = v;
    }
    if !args.platform.is_empty() {
        cfg.platforms = Platform::parse_list(&args.platform.join(","))?;
    }
    if !args.allow_insecure_entitlements.is_empty() {
        cfg.allow_insecure_entitlements = args.allow_insecure_entitlements.iter().filter(|e| *e != "none").cloned().collect();
    }
    if let Some(v) = args.slots {
        cfg.slots = v;
    }
    if let Some(v) = args.metrics_listen {
        cfg.metrics_listen = Some(v);
    }
    if let Some(v) = &args.max_bandwidth {
        cfg.bandwidth_limit_bytes_per_s = super::storage::parse_size(v)?;
    }
    if let Some(v) = &args.gc_keep_storage {
        cfg.gc_keep_bytes = super::storage::parse_size(v)?;
    }
    if let Some(v) = &args.gc_keep_duration {
        cfg.gc_keep_duration_s = super::storage::parse_duration(v)?.as_secs();
    }
    override_with!(cfg, args: shutdown_drain_ms);
    cfg.validate().map_err(anyhow::Error::msg)?;
    let token = match args.token {
        Some(t) => t,
        None if !cfg.token_file.as_os_str().is_empty() => {
            std::fs::read_to_string(&cfg.token_file).with_context(|| format!("reading the token from {}", cfg.token_file.display()))?
        }
        None => bail!("kiln agent needs --token (the content of c1/agent.token), KILN_TOKEN, or token_file in its config"),
    };
    serve(|stop| async move { kiln_agent::worker::run(cfg, token.trim().to_string(), stop, None).await.map_err(anyhow::Error::from) })
}
