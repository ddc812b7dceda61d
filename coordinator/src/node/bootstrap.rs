//! A coordinator's credentials: the cluster CA and its own certificate, and on the very first
//! start of a cluster the join tokens.
//!
//! The member with the smallest id in `--peers` creates the CA the first time it starts. Every
//! other member, started with an empty data dir, asks that member (or `--join ADDR`) for the CA
//! with [`JoinRequest::Peer`]. That request is granted to an admin token, or, once per id, to a
//! listed peer id calling from its listed IP address (trust on first use, recorded in
//! `bootstrap-granted`); afterwards the CA stays in the member's data dir.

use super::random_hex;
use crate::config::CoordinatorConfig;
use anyhow::{bail, Context as _};
use kiln_shared::api::{JoinRequest, JoinResponse, Principal, Role, Token};
use kiln_shared::transport::{self, ClusterCa, Identity, KeyRequest};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub struct Credentials {
    pub ca: ClusterCa,
    pub identity: Identity,
    /// This start created the cluster: it must initialise Raft and commit the tokens.
    pub founder: bool,
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// A fresh token of `role` for this CA.
pub fn new_token(ca: &ClusterCa, role: Role) -> anyhow::Result<Token> {
    Ok(Token { ca_fingerprint: ca.fingerprint(), role, secret: random_hex(20)? })
}

pub async fn credentials(
    cfg: &CoordinatorConfig,
    join: Option<SocketAddr>,
    token: Option<&str>,
    stop: &CancellationToken,
) -> anyhow::Result<Credentials> {
    let dir = &cfg.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    let me = Principal { role: Role::Coordinator, name: cfg.id.to_string() };
    if cert_path.exists() {
        let ca = ClusterCa::from_pem(&std::fs::read_to_string(&cert_path)?, &std::fs::read_to_string(&key_path)?)
            .with_context(|| format!("reading the cluster CA in {}", dir.display()))?;
        let identity = ca.issue(&me.common_name(), &[cfg.listen.ip()])?;
        return Ok(Credentials { ca, identity, founder: false });
    }
    let first = *cfg.peers.keys().next().unwrap_or(&cfg.id);
    if first == cfg.id && join.is_none() {
        let ca = ClusterCa::generate("kiln cluster CA")?;
        write_private(&key_path, &ca.key_pem())?;
        write_private(&cert_path, &ca.cert_pem())?;
        let identity = ca.issue(&me.common_name(), &[cfg.listen.ip()])?;
        return Ok(Credentials { ca, identity, founder: true });
    }
    let target = match join {
        Some(a) => a,
        None => cfg.peers[&first],
    };
    let pin = match token {
        Some(t) => Some(Token::parse(t).map_err(anyhow::Error::msg)?.ca_fingerprint),
        None => None,
    };
    let endpoint = transport::joining_client(pin.as_deref())?;
    let timeouts = kiln_shared::client::Timeouts {
        join_connect_ms: cfg.join_connect_timeout_ms,
        join_request_ms: cfg.join_request_timeout_ms,
        ..Default::default()
    };
    let mut delay = Duration::from_millis(100);
    loop {
        let key = KeyRequest::new()?;
        let request = JoinRequest::Peer { id: cfg.id, token: token.map(str::to_string), csr_der: key.csr_der.clone() };
        match kiln_shared::client::join_at(&endpoint, target, &request, &timeouts).await {
            Ok(JoinResponse::PeerJoined { ca_cert_pem, ca_key_pem, cert_der }) => {
                let ca = ClusterCa::from_pem(&ca_cert_pem, &ca_key_pem)?;
                write_private(&key_path, &ca_key_pem)?;
                write_private(&cert_path, &ca_cert_pem)?;
                endpoint.close(0u32.into(), b"joined");
                return Ok(Credentials { ca, identity: key.into_identity(cert_der), founder: false });
            }
            Ok(other) => bail!("coordinator {target} answered the join with {other:?}"),
            Err(transport::TransportError::Remote(e)) if e.code == kiln_shared::wire::ErrorCode::PermissionDenied => {
                bail!("coordinator {target} refused to let coordinator {} join: {}", cfg.id, e.message)
            }
            Err(e) => {
                tracing::warn!(coordinator = cfg.id, "waiting for coordinator {target} to hand out the cluster CA: {e}");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => bail!("stopped while joining the cluster"),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_millis(cfg.join_retry_max_ms));
    }
}

/// Writes the first tokens where the by-hand instructions expect them (`c1/admin.token`,
/// `c1/agent.token`), once they are committed.
/// `agent.token` comes last: once it is there, both are.
pub fn write_tokens(dir: &Path, admin: &Token, agent: &Token) -> anyhow::Result<()> {
    write_private(&dir.join("admin.token"), &format!("{admin}\n"))?;
    write_private(&dir.join("agent.token"), &format!("{agent}\n"))?;
    Ok(())
}
