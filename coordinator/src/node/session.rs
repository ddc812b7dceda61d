//! The build's session (BuildKit's word), on the leader: a running step asks the client that
//! submitted its build for a secret's bytes or relays an ssh-agent message; the question waits
//! here, in memory only, until the client's `kiln build` (which is following the build) picks it
//! up with its next watch and answers. Nothing of it is committed, logged or stored; an
//! unanswered question is dropped when it times out.

use super::agents::owned_by;
use super::reply::{err, Answer};
use super::Node;
use crate::raft::{BuildId, SliceAttempt};
use kiln_shared::api::{AgentResponse, ClientResponse, Principal, SessionAnswer, SessionAsk};
use kiln_shared::wire::ErrorCode;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::oneshot;

/// Questions waiting for their build's client.
#[derive(Default)]
pub struct Sessions {
    next: u64,
    pending: BTreeMap<u64, Pending>,
}

struct Pending {
    build: BuildId,
    ask: SessionAsk,
    reply: oneshot::Sender<SessionAnswer>,
}

/// Questions waiting at once, at most (a step asks one at a time; this bounds a misbehaving agent).
const MAX_PENDING: usize = 4096;

impl Sessions {
    /// The questions of `build` not yet answered, by id.
    pub fn asks_of(&self, build: BuildId) -> Vec<(u64, SessionAsk)> {
        self.pending.iter().filter(|(_, p)| p.build == build).map(|(id, p)| (*id, p.ask.clone())).collect()
    }

    fn add(&mut self, build: BuildId, ask: SessionAsk, reply: oneshot::Sender<SessionAnswer>) -> Option<u64> {
        if self.pending.len() >= MAX_PENDING {
            return None;
        }
        self.next += 1;
        self.pending.insert(self.next, Pending { build, ask, reply });
        Some(self.next)
    }

    fn take(&mut self, id: u64, build: BuildId) -> Option<oneshot::Sender<SessionAnswer>> {
        match self.pending.get(&id) {
            Some(p) if p.build == build => self.pending.remove(&id).map(|p| p.reply),
            _ => None,
        }
    }
}

/// A step of a slice `p` runs asks its build's client; waits for the answer.
pub async fn ask(node: &Node, p: &Principal, at: SliceAttempt, ask: SessionAsk) -> Answer<AgentResponse> {
    owned_by(node, p, at)?;
    let build = at.slice.build;
    // Only what the client offered is asked for: the others are missing without a round trip.
    let offered = node.read(|s| {
        s.builds.get(&build).is_some_and(|b| match &ask {
            SessionAsk::Secret { id } => b.spec.secrets.contains(id),
            SessionAsk::Ssh { id, .. } => b.spec.ssh.contains(id),
        })
    });
    if !offered {
        return Ok(AgentResponse::Session(SessionAnswer::Missing));
    }
    let (tx, rx) = oneshot::channel();
    let id =
        node.soft().sessions.add(build, ask, tx).ok_or_else(|| err(ErrorCode::Unavailable, "too many session questions waiting; retry"))?;
    node.bump();
    let wait = Duration::from_millis(node.cfg.session_answer_timeout_ms);
    let answer = tokio::select! {
        a = tokio::time::timeout(wait, rx) => a.ok().and_then(Result::ok),
        _ = node.stop.cancelled() => None,
    };
    node.soft().sessions.take(id, build);
    let answer = answer.unwrap_or_else(|| {
        SessionAnswer::Failed(format!(
            "the client that submitted build {build} did not answer within {} s (it must keep following the build: is `kiln build` still running?)",
            wait.as_secs()
        ))
    });
    Ok(AgentResponse::Session(answer))
}

/// The build's client answers question `id`.
pub fn answer(node: &Node, p: &Principal, build: BuildId, id: u64, answer: SessionAnswer) -> Answer<ClientResponse> {
    let owner = node.read(|s| s.builds.get(&build).map(|b| b.tenant.clone()));
    // Only the submitting tenant answers (an admin watching another tenant's build may not
    // slip it a secret).
    if owner.as_deref() != Some(p.tenant()) {
        return Err(err(ErrorCode::NotFound, format!("no build {build}")));
    }
    let reply = node.soft().sessions.take(id, build);
    // A question that timed out meanwhile has nobody waiting: the answer is dropped.
    if let Some(reply) = reply {
        let _ = reply.send(answer);
    }
    Ok(ClientResponse::Ok)
}
