//! Talking to a farm from the CLI: which farm (`--host`, else `KILN_HOST`), with which token
//! (`--token`, else `KILN_TOKEN`), and the builder in use (`kiln use`, kept per farm in
//! `$KILN_HOME/client.json`).

use super::build::kiln_home;
use anyhow::{anyhow, bail, Context as _};
use clap::Args;
use kiln_shared::api::{Request, Response};
use kiln_shared::client::{parse_hosts, Farm};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, Args)]
pub struct FarmArgs {
    /// The farm's coordinators (`ADDR[,ADDR..]`); without it, the embedded farm.
    #[arg(long, env = "KILN_HOST")]
    pub host: Option<String>,
    /// The token to join with (the content of admin.token, or a user token).
    #[arg(long, env = "KILN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl FarmArgs {
    pub fn hosts(&self) -> anyhow::Result<Option<Vec<SocketAddr>>> {
        match self.host.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(h) => Ok(Some(parse_hosts(h).map_err(anyhow::Error::msg)?)),
        }
    }

    /// The farm, or an error saying how to name one.
    pub fn require(&self, what: &str) -> anyhow::Result<Vec<SocketAddr>> {
        self.hosts()?.ok_or_else(|| anyhow!("{what} needs a farm: pass --host ADDR[,ADDR..] or set KILN_HOST (and KILN_TOKEN)"))
    }
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // More workers than cores: redb's fsyncs block a worker for a while, and Raft heartbeats
    // must not wait behind them.
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().context("starting the async runtime")
}

/// Joins the farm with the token.
pub async fn connect(hosts: &[SocketAddr], args: &FarmArgs) -> anyhow::Result<Farm> {
    let token = args.token.as_deref().map(str::trim).filter(|t| !t.is_empty());
    let token = token
        .ok_or_else(|| anyhow!("talking to a farm needs a token: pass --token or set KILN_TOKEN (e.g. the content of c1/admin.token)"))?;
    let list = hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>().join(",");
    Farm::join(hosts, token, "").await.map_err(|e| anyhow!("cannot join the farm at {list}: {e}"))
}

/// One request with the usual patience (a leader election takes a few seconds).
pub async fn call(farm: &Farm, req: &Request) -> anyhow::Result<Response> {
    farm.call(req, Duration::from_secs(30), Duration::from_secs(20)).await.map_err(|e| anyhow!("{e}"))
}

fn client_file() -> std::path::PathBuf {
    kiln_home().join("client.json")
}

fn farm_key(hosts: &[SocketAddr]) -> String {
    let mut v: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
    v.sort();
    v.join(",")
}

/// The builder `kiln use` chose for this farm.
pub fn current_builder(hosts: &[SocketAddr]) -> Option<String> {
    let text = std::fs::read_to_string(client_file()).ok()?;
    let map: BTreeMap<String, String> = serde_json::from_str(&text).ok()?;
    map.get(&farm_key(hosts)).cloned()
}

pub fn set_current_builder(hosts: &[SocketAddr], name: Option<&str>) -> anyhow::Result<()> {
    let path = client_file();
    let mut map: BTreeMap<String, String> =
        std::fs::read_to_string(&path).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
    match name {
        Some(n) => map.insert(farm_key(hosts), n.to_string()),
        None => map.remove(&farm_key(hosts)),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&map)?).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

pub fn unexpected(r: Response) -> anyhow::Error {
    anyhow!("unexpected answer from the farm: {r:?}")
}

pub fn expect_ok(r: Response) -> anyhow::Result<()> {
    match r {
        Response::Ok => Ok(()),
        other => bail!(unexpected(other)),
    }
}
