//! Who may join the cluster: API tokens (checked against the replicated token table, stored by
//! hash only), agents and users exchanging one for a certificate, coordinators joining as peers
//! (with an admin token, or once on first start as a listed peer), and new tokens for admins.

use super::reply::{bad, err, Answer};
use super::Node;
use crate::raft::{self, Command};
use kiln_shared::api::{ClientResponse, JoinResponse, Principal, Role, Token};
use kiln_shared::wire::{ErrorCode, RemoteError};
use std::net::SocketAddr;

fn token_record(node: &Node, token: &str) -> Result<(Token, raft::TokenRecord), RemoteError> {
    let refused = || err(ErrorCode::PermissionDenied, "the token is not valid for this cluster");
    let t = Token::parse(token).map_err(|e| err(ErrorCode::Unauthenticated, e))?;
    if t.ca_fingerprint != node.ca.fingerprint() {
        return Err(refused());
    }
    let record = node.read(|s| s.tokens.get(&t.hash()).cloned()).ok_or_else(refused)?;
    Ok((t, record))
}

/// Who a user or admin token names (the web console's sign-in): checked as [`join`] checks it,
/// against the replicated token table; agent and coordinator tokens are refused.
pub fn principal(node: &Node, token: &str) -> Result<Principal, RemoteError> {
    let (t, record) = token_record(node, token)?;
    match t.role {
        Role::Admin | Role::User => Ok(Principal { role: t.role, name: record.tenant }),
        other => Err(err(
            ErrorCode::PermissionDenied,
            format!("a {} token cannot sign in to the console: use a user or admin token", other.as_str()),
        )),
    }
}

pub fn join(node: &Node, token: &str, name: &str, csr: &[u8]) -> Answer<JoinResponse> {
    let (t, record) = token_record(node, token)?;
    let principal = match t.role {
        Role::Agent => {
            if name.is_empty() || name.len() > 128 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return Err(bad(format!("agent name {name:?}: use letters, digits, '-', '_' and '.'")));
            }
            Principal { role: Role::Agent, name: name.to_string() }
        }
        Role::Admin | Role::User => Principal { role: t.role.clone(), name: record.tenant.clone() },
        Role::Coordinator => return Err(err(ErrorCode::PermissionDenied, "coordinators join with `kiln coordinator --join`")),
    };
    let cert = node.ca.sign_request(csr, &principal.common_name()).map_err(|e| bad(format!("certificate request: {e}")))?;
    if principal.role == Role::Agent {
        // The name is bound to the key it registered with (see `agents::register`).
        let key = kiln_shared::transport::key_fingerprint(&cert).ok_or_else(|| bad("certificate request: no readable key"))?;
        node.read(|s| s.agent_may_join(name, &key)).map_err(|why| err(ErrorCode::PermissionDenied, why))?;
    }
    Ok(JoinResponse::Joined { cert_der: cert.to_vec(), ca_der: node.ca.cert_der().to_vec(), principal })
}

pub fn join_peer(node: &Node, remote: SocketAddr, id: u64, token: Option<&str>, csr: &[u8]) -> Answer<JoinResponse> {
    let granted = match token {
        Some(t) => token_record(node, t)?.0.role == Role::Admin,
        // Bootstrap: a member listed in --peers, calling from its listed address, once (trust
        // on first use): the CA key is not handed out again without a token.
        None => id != node.id && node.cfg.peers.get(&id).is_some_and(|a| a.ip() == remote.ip()) && first_grant(node, id),
    };
    if !granted {
        return Err(err(
            ErrorCode::PermissionDenied,
            format!(
                "coordinator {id} at {} is not a listed peer on its first start: start it with --token (an admin token) to join",
                remote.ip()
            ),
        ));
    }
    let cert = node.ca.sign_request(csr, &Principal { role: Role::Coordinator, name: id.to_string() }.common_name());
    let cert = cert.map_err(|e| bad(format!("certificate request: {e}")))?;
    Ok(JoinResponse::PeerJoined { ca_cert_pem: node.ca.cert_pem(), ca_key_pem: node.ca.key_pem(), cert_der: cert.to_vec() })
}

/// Records that `id` got the CA without a token; `false` if it already had.
fn first_grant(node: &Node, id: u64) -> bool {
    record_first_grant(&node.cfg.data_dir.join("bootstrap-granted"), id)
}

/// The check and the record under one lock, and the record as one `write`: members asking at
/// once (coordinators 2 and 3 of a new cluster) must neither both pass for one id nor interleave
/// their lines into one the check cannot read (`23\n\n`, which let a second "coordinator 2"
/// have the CA).
fn record_first_grant(path: &std::path::Path, id: u64) -> bool {
    use std::io::Write;
    static GRANTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _held = GRANTING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let granted = std::fs::read_to_string(path).unwrap_or_default();
    if granted.lines().any(|l| l.trim() == id.to_string()) {
        return false;
    }
    let line = format!("{id}\n");
    let recorded = std::fs::OpenOptions::new().create(true).append(true).open(path).and_then(|mut f| {
        f.write_all(line.as_bytes())?;
        f.sync_all()
    });
    recorded.is_ok()
}

pub async fn create_token(node: &Node, role: Role, tenant: String) -> Answer<ClientResponse> {
    if !matches!(role, Role::User | Role::Admin | Role::Agent) {
        return Err(bad("tokens are for users, admins and agents"));
    }
    if tenant.is_empty() || tenant.len() > 64 || !tenant.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(bad(format!("tenant {tenant:?}: use letters, digits, '-', '_' and '.'")));
    }
    let token = super::bootstrap::new_token(&node.ca, role.clone()).map_err(|e| err(ErrorCode::Internal, e.to_string()))?;
    node.commit(Command::PutToken { token_hash: token.hash(), role: role.as_str().into(), tenant }).await?;
    Ok(ClientResponse::Name(token.to_string()))
}

#[cfg(test)]
mod tests {
    use super::record_first_grant;

    #[test]
    fn each_member_gets_the_ca_without_a_token_once_even_when_they_ask_at_once() {
        let dir = std::env::temp_dir().join(format!("kiln-grant-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("bootstrap-granted");
        for round in 0..20u64 {
            let _ = std::fs::remove_file(&path);
            let ids: Vec<u64> = (2..10).map(|i| i + round * 100).collect();
            let first: Vec<bool> = std::thread::scope(|s| {
                let asks: Vec<_> = ids
                    .iter()
                    .map(|&id| {
                        s.spawn({
                            let path = path.clone();
                            move || record_first_grant(&path, id)
                        })
                    })
                    .collect();
                asks.into_iter().map(|h| h.join().expect("thread")).collect()
            });
            assert!(first.iter().all(|&g| g), "round {round}: every first ask is granted");
            for &id in &ids {
                assert!(
                    !record_first_grant(&path, id),
                    "round {round}: coordinator {id} got the CA twice: {:?}",
                    std::fs::read_to_string(&path)
                );
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
