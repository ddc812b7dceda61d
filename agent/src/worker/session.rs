//! The engine's [`Session`] on a farm: a step's question goes to the leader, which relays it to
//! the client following the build (BuildKit's session, over the farm's mutually authenticated
//! connections); the answer comes back the same way. Nothing of it is kept here.

use super::Worker;
use crate::engine::Session;
use kiln_shared::api::{AgentRequest, AgentResponse, SessionAnswer, SessionAsk};
use std::sync::Arc;
use std::time::Duration;

pub(super) struct FarmSession {
    pub worker: Arc<Worker>,
    pub handle: tokio::runtime::Handle,
    pub build: u64,
    pub slice: u32,
    pub attempt: u32,
}

impl FarmSession {
    fn ask(&self, ask: SessionAsk) -> Result<Option<Vec<u8>>, String> {
        let w = &self.worker;
        let req = AgentRequest::Session { build: self.build, slice: self.slice, attempt: self.attempt, ask };
        let deadline = Duration::from_millis(w.cfg.session_deadline_ms);
        // Called from the engine's blocking threads, never from the runtime's own.
        match self.handle.block_on(w.farm.call(&req, deadline, deadline)) {
            Ok(AgentResponse::Session(SessionAnswer::Bytes(b))) => Ok(Some(b)),
            Ok(AgentResponse::Session(SessionAnswer::Missing)) => Ok(None),
            Ok(AgentResponse::Session(SessionAnswer::Failed(m))) => Err(m),
            Ok(_) => Err("the farm answered a session question with something else".to_string()),
            Err(e) => Err(format!("asking the build's client through the farm: {e}")),
        }
    }
}

impl Session for FarmSession {
    fn secret(&self, id: &str) -> Result<Option<Vec<u8>>, String> {
        self.ask(SessionAsk::Secret { id: id.to_string() })
    }

    fn ssh(&self, id: &str, message: &[u8]) -> Result<Option<Vec<u8>>, String> {
        self.ask(SessionAsk::Ssh { id: id.to_string(), message: message.to_vec() })
    }
}
