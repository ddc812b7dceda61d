//! Joining: the only protocol served on a connection without a client certificate. A caller
//! exchanges a token for a certificate; the key it made stays with it.

use super::Principal;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum JoinRequest {
    /// Exchange a token for a certificate (the CSR's key stays with the caller).
    /// `name` is the agent's name (agents only; users get their token's tenant).
    Token { token: String, name: String, csr_der: Vec<u8> },
    /// A coordinator's first start: get the cluster CA from the first member.
    Peer { id: u64, token: Option<String>, csr_der: Vec<u8> },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum JoinResponse {
    /// For [`JoinRequest::Token`].
    Joined { cert_der: Vec<u8>, ca_der: Vec<u8>, principal: Principal },
    /// For [`JoinRequest::Peer`].
    PeerJoined { ca_cert_pem: String, ca_key_pem: String, cert_der: Vec<u8> },
}
