//! The answer every request room returns, and the two errors they build most.

use kiln_shared::api::Response;
use kiln_shared::wire::{ErrorCode, RemoteError};

pub type Answer = Result<Response, RemoteError>;

pub fn err(code: ErrorCode, message: impl Into<String>) -> RemoteError {
    RemoteError { code, message: message.into() }
}

pub fn bad(message: impl Into<String>) -> RemoteError {
    err(ErrorCode::BadRequest, message)
}
