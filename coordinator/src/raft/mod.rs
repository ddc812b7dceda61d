//! The coordinator cluster's replicated state: the Raft type configuration, the commands that
//! are proposed through the log and the state machine they are applied to.
//!
//! Every coordinator holds the same [`ClusterState`] because every one applies the same
//! committed [`Command`]s in the same order; [`ClusterState::apply`] must therefore be
//! deterministic (no clock, no randomness, no `HashMap` iteration). Validation that needs
//! context (the buildx rules of [`crate::builders`], authorisation) happens on the leader
//! before a command is proposed; `apply` only records, and reports what it could not do.
//! Durable storage of the log and of this state is in [`store`].

pub mod store;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Cursor;

openraft::declare_raft_types!(
    /// Openraft's type configuration for the coordinator cluster.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// Coordinator node ids in the Raft cluster.
pub type NodeId = u64;

/// A change to the cluster state, proposed by the leader and applied on every coordinator once
/// committed. Values are kept as JSON so that the records they carry (builders, contexts,
/// builds) can evolve without a new log format; the log stores these as JSON too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    PutBuilder {
        name: String,
        value: serde_json::Value,
    },
    RemoveBuilder {
        name: String,
    },
    PutContext {
        name: String,
        value: serde_json::Value,
    },
    RemoveContext {
        name: String,
    },
    PutBuild {
        id: u64,
        value: serde_json::Value,
    },
    /// Tokens are stored by hash only, so that neither the log nor a snapshot holds a secret.
    PutToken {
        token_hash: String,
        role: String,
        tenant: String,
    },
}

/// What applying one log entry did, returned to the proposer by `client_write`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    /// `false` when the command was committed but changed nothing (e.g. removing an absent name).
    pub ok: bool,
    /// Why `ok` is false, as a sentence a user can act on.
    pub message: Option<String>,
}

impl CommandResult {
    pub fn ok() -> Self {
        CommandResult { ok: true, message: None }
    }

    pub fn rejected(message: impl Into<String>) -> Self {
        CommandResult { ok: false, message: Some(message.into()) }
    }
}

/// A registered API token: who may do what, for which tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub role: String,
    pub tenant: String,
}

/// The state machine data replicated by Raft. `BTreeMap`s keep iteration, and thus snapshots,
/// byte-for-byte identical on every coordinator.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    pub builders: BTreeMap<String, serde_json::Value>,
    pub contexts: BTreeMap<String, serde_json::Value>,
    pub builds: BTreeMap<u64, serde_json::Value>,
    /// Keyed by token hash.
    pub tokens: BTreeMap<String, TokenRecord>,
}

impl ClusterState {
    /// Applies one committed command. Never fails: a command that cannot take effect is still
    /// committed, so it is answered with `ok: false` rather than an error that would stop Raft.
    pub fn apply(&mut self, command: &Command) -> CommandResult {
        match command {
            Command::PutBuilder { name, value } => {
                self.builders.insert(name.clone(), value.clone());
                CommandResult::ok()
            }
            Command::RemoveBuilder { name } => match self.builders.remove(name) {
                Some(_) => CommandResult::ok(),
                None => CommandResult::rejected(format!("no builder {name:?} found")),
            },
            Command::PutContext { name, value } => {
                self.contexts.insert(name.clone(), value.clone());
                CommandResult::ok()
            }
            Command::RemoveContext { name } => match self.contexts.remove(name) {
                Some(_) => CommandResult::ok(),
                None => CommandResult::rejected(format!("no context {name:?} found")),
            },
            Command::PutBuild { id, value } => {
                self.builds.insert(*id, value.clone());
                CommandResult::ok()
            }
            Command::PutToken { token_hash, role, tenant } => {
                self.tokens.insert(token_hash.clone(), TokenRecord { role: role.clone(), tenant: tenant.clone() });
                CommandResult::ok()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn apply_puts_and_removes() {
        let mut state = ClusterState::default();
        assert!(state.apply(&Command::PutBuilder { name: "b".into(), value: json!({"nodes": []}) }).ok);
        assert!(state.apply(&Command::PutContext { name: "a1".into(), value: json!({"addr": "x"}) }).ok);
        assert!(state.apply(&Command::PutBuild { id: 7, value: json!({"state": "queued"}) }).ok);
        let token = Command::PutToken { token_hash: "h".into(), role: "admin".into(), tenant: "t".into() };
        assert!(state.apply(&token).ok);
        assert_eq!(state.tokens["h"], TokenRecord { role: "admin".into(), tenant: "t".into() });
        assert_eq!(state.builds[&7], json!({"state": "queued"}));

        assert!(state.apply(&Command::RemoveBuilder { name: "b".into() }).ok);
        let again = state.apply(&Command::RemoveBuilder { name: "b".into() });
        assert_eq!(again, CommandResult::rejected("no builder \"b\" found"));
        assert!(state.apply(&Command::RemoveContext { name: "a1".into() }).ok);
        assert!(!state.apply(&Command::RemoveContext { name: "a1".into() }).ok);
        assert!(state.builders.is_empty() && state.contexts.is_empty());
    }

    #[test]
    fn command_json_round_trip() -> Result<(), serde_json::Error> {
        let command = Command::PutBuild { id: 3, value: json!({"platforms": ["linux/arm64"]}) };
        let bytes = serde_json::to_vec(&command)?;
        assert_eq!(serde_json::from_slice::<Command>(&bytes)?, command);
        Ok(())
    }
}
