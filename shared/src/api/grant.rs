//! Slice grants: what the leader hands an agent with each slice, signed with the cluster CA's
//! key. A coordinator or a peer serves an agent a blob or a step cache record only if a grant
//! the agent presents names it, so that an agent certificate alone (or a stolen agent token)
//! reads nothing of any tenant's.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The agent it is for: only that agent's certificate may present it.
    pub agent: String,
    pub build: u64,
    pub slice: u32,
    pub attempt: u32,
    /// The build's tenant: the agent may read what that tenant uploaded and return results
    /// for it.
    pub tenant: String,
    /// The build's cache scope: peers serve records of that scope only.
    pub scope: String,
    /// Blobs it names besides the tenant's uploads (an OCI layout's, an uploaded cache's).
    pub blobs: Vec<String>,
    /// Milliseconds since the epoch after which it is void.
    pub expires_ms: u64,
    /// The CA's signature over [`Grant::signed_bytes`].
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// Why a grant was not taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("no slice grant was presented: an agent reads only what a slice it runs needs")]
    Missing,
    #[error("the slice grant is for agent {for_agent}, not {agent}")]
    OtherAgent { for_agent: String, agent: String },
    #[error("the slice grant of build {build} expired")]
    Expired { build: u64 },
    #[error("the slice grant's signature is not the cluster CA's")]
    Forged,
}

impl Grant {
    /// What the signature covers: every field but the signature, in a fixed encoding.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let unsigned = Grant { signature: vec![], ..self.clone() };
        let mut out = b"kiln slice grant 1\n".to_vec();
        out.extend(serde_json::to_vec(&unsigned).unwrap_or_default());
        out
    }

    /// Checks that the CA signed it, that it is `agent`'s and still valid at `now_ms`.
    pub fn check(&self, ca_der: &[u8], agent: &str, now_ms: u64) -> Result<(), GrantError> {
        if self.agent != agent {
            return Err(GrantError::OtherAgent { for_agent: self.agent.clone(), agent: agent.to_string() });
        }
        if now_ms > self.expires_ms {
            return Err(GrantError::Expired { build: self.build });
        }
        if !crate::transport::verify_signed(ca_der, &self.signed_bytes(), &self.signature) {
            return Err(GrantError::Forged);
        }
        Ok(())
    }

    /// The grants of `grants` that `agent` may present now, or why none is.
    pub fn valid<'a>(grants: &'a [Grant], ca_der: &[u8], agent: &str, now_ms: u64) -> Result<Vec<&'a Grant>, GrantError> {
        let mut last = GrantError::Missing;
        let mut ok = Vec::new();
        for g in grants {
            match g.check(ca_der, agent, now_ms) {
                Ok(()) => ok.push(g),
                Err(e) => last = e,
            }
        }
        if ok.is_empty() {
            Err(last)
        } else {
            Ok(ok)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::ClusterCa;

    fn signed(ca: &ClusterCa) -> Grant {
        let mut g =
            Grant { agent: "a1".into(), build: 7, tenant: "t".into(), scope: "tenant:t".into(), expires_ms: 2_000, ..Default::default() };
        g.signature = ca.sign(&g.signed_bytes()).expect("sign");
        g
    }

    #[test]
    fn the_cas_signature_is_checked() {
        let ca = ClusterCa::generate("test CA").expect("ca");
        let other = ClusterCa::generate("another CA").expect("ca");
        let der = ca.cert_der();
        let g = signed(&ca);
        assert_eq!(g.check(&der, "a1", 1_000), Ok(()));
        assert_eq!(g.check(&der, "a2", 1_000), Err(GrantError::OtherAgent { for_agent: "a1".into(), agent: "a2".into() }));
        assert_eq!(g.check(&der, "a1", 3_000), Err(GrantError::Expired { build: 7 }));
        // Any field changed voids it, and so does another CA's signature.
        let widened = Grant { tenant: "other".into(), ..g.clone() };
        assert_eq!(widened.check(&der, "a1", 1_000), Err(GrantError::Forged));
        assert_eq!(signed(&other).check(&der, "a1", 1_000), Err(GrantError::Forged));
        assert_eq!(Grant::valid(&[widened, g.clone()], &der, "a1", 1_000).map(|v| v.len()), Ok(1));
        assert_eq!(Grant::valid(&[], &der, "a1", 1_000), Err(GrantError::Missing));
    }
}
