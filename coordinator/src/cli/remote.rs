//! Talking to a farm from the CLI: which farm (`--host`, else `KILN_HOST`), with which token
//! (`--token`, else `KILN_TOKEN`), with neither the embedded farm started in this process, and the
//! builder in use (`kiln use`, kept per farm in `$KILN_HOME/client.json`).

use super::home::kiln_home;
use crate::embedded::Embedded;
use anyhow::{anyhow, bail, Context as _};
use clap::Args;
use kiln_shared::api::{ClientRequest, ClientResponse};
use kiln_shared::client::{parse_hosts, ClientFarm};
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

    /// The farm, or an error saying how to name one (for verbs without an embedded form).
    pub fn require(&self, what: &str) -> anyhow::Result<Vec<SocketAddr>> {
        self.hosts()?.ok_or_else(|| anyhow!("{what} needs a farm: pass --host ADDR[,ADDR..] or set KILN_HOST (and KILN_TOKEN)"))
    }

    /// The farm named by `--host`/`KILN_HOST`, else the embedded farm, started in this process.
    pub fn open(&self) -> anyhow::Result<Session> {
        let runtime = runtime()?;
        match self.hosts()? {
            Some(hosts) => Ok(Session { embedded: None, hosts, token: self.token.clone(), runtime }),
            None => {
                let farm = Embedded::start(&kiln_home(), &runtime)?;
                let (hosts, token) = (farm.hosts.clone(), Some(farm.token.clone()));
                Ok(Session { embedded: Some(farm), hosts, token, runtime })
            }
        }
    }
}

/// The farm a verb talks to, and the runtime its calls (and an embedded farm) run on.
pub struct Session {
    /// Declared first: it stops before the runtime it runs on is dropped.
    embedded: Option<Embedded>,
    pub hosts: Vec<SocketAddr>,
    token: Option<String>,
    runtime: tokio::runtime::Runtime,
}

impl Session {
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    pub fn is_embedded(&self) -> bool {
        self.embedded.is_some()
    }

    /// Joins the farm with the token.
    pub async fn connect(&self) -> anyhow::Result<ClientFarm> {
        join(&self.hosts, self.token.as_deref()).await
    }

    /// Joins one coordinator of the farm alone (a request each member serves for itself).
    pub async fn connect_to(&self, host: SocketAddr) -> anyhow::Result<ClientFarm> {
        join(&[host], self.token.as_deref()).await.with_context(|| format!("coordinator {host}"))
    }

    /// Names this farm in `client.json`: its coordinators, or `embedded` (whose port changes).
    fn key(&self) -> String {
        if self.is_embedded() {
            return crate::embedded::AGENT_NAME.to_string();
        }
        let mut v: Vec<String> = self.hosts.iter().map(|h| h.to_string()).collect();
        v.sort();
        v.join(",")
    }

    /// The builder `kiln use` chose for this farm.
    pub fn current_builder(&self) -> Option<String> {
        let text = std::fs::read_to_string(client_file()).ok()?;
        let map: BTreeMap<String, String> = serde_json::from_str(&text).ok()?;
        map.get(&self.key()).cloned()
    }

    pub fn set_current_builder(&self, name: Option<&str>) -> anyhow::Result<()> {
        let path = client_file();
        let mut map: BTreeMap<String, String> =
            std::fs::read_to_string(&path).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
        match name {
            Some(n) => map.insert(self.key(), n.to_string()),
            None => map.remove(&self.key()),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&map)?).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // More workers than cores: redb's fsyncs block a worker for a while, and Raft heartbeats
    // must not wait behind them.
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().context("starting the async runtime")
}

/// Joins the farm at `hosts` with the token of `args` (membership verbs, which need a farm).
pub async fn connect(hosts: &[SocketAddr], args: &FarmArgs) -> anyhow::Result<ClientFarm> {
    join(hosts, args.token.as_deref()).await
}

async fn join(hosts: &[SocketAddr], token: Option<&str>) -> anyhow::Result<ClientFarm> {
    let token = token.map(str::trim).filter(|t| !t.is_empty());
    let token = token
        .ok_or_else(|| anyhow!("talking to a farm needs a token: pass --token or set KILN_TOKEN (e.g. the content of c1/admin.token)"))?;
    let list = hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>().join(",");
    ClientFarm::join(hosts, token, "").await.map_err(|e| anyhow!("cannot join the farm at {list}: {e}"))
}

/// One request with the usual patience (a leader election takes a few seconds).
pub async fn call(farm: &ClientFarm, req: &ClientRequest) -> anyhow::Result<ClientResponse> {
    farm.call(req, Duration::from_secs(30), Duration::from_secs(20)).await.map_err(|e| anyhow!("{e}"))
}

fn client_file() -> std::path::PathBuf {
    kiln_home().join("client.json")
}

pub fn unexpected(r: ClientResponse) -> anyhow::Error {
    anyhow!("unexpected answer from the farm: {r:?}")
}

pub fn expect_ok(r: ClientResponse) -> anyhow::Result<()> {
    match r {
        ClientResponse::Ok => Ok(()),
        other => bail!(unexpected(other)),
    }
}
