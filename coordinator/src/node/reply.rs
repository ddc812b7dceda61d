//! The answer every request room returns (a response of the room's protocol, or an error), and
//! the two errors they build most.

use kiln_shared::wire::{ErrorCode, RemoteError};

pub type Answer<R> = Result<R, RemoteError>;

pub fn err(code: ErrorCode, message: impl Into<String>) -> RemoteError {
    RemoteError { code, message: message.into() }
}

pub fn bad(message: impl Into<String>) -> RemoteError {
    err(ErrorCode::BadRequest, message)
}
