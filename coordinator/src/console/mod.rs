//! The web console (`kiln coordinator --console-listen ADDR`, `console_listen` in the config):
//! the farm, the build list and one build with its timeline, log and cache-miss explanation,
//! served by every coordinator as plain HTTP on a loopback address (there is no TLS here:
//! [`crate::config::CoordinatorConfig::validate`] refuses any other address; put a TLS proxy in
//! front to reach it from elsewhere).
//!
//! Whom it talks to: the browser or a script over HTTP ([`http`]); its own coordinator, which
//! checks the caller's token against the replicated token table ([`auth`]) and answers every
//! read through the CLI's own dispatch ([`api`]): on a follower that means forwarding to the
//! leader, since the agents' liveness and the builds' logs are the leader's soft state. So
//! every console shows the same farm, and a console whose coordinator cannot reach a leader
//! says so (503) instead of showing stale data.
//!
//! - [`server`]: the listener and the routes; [`pages`] and [`timeline`]: the HTML;
//! - `static/`: the one script and style sheet, compiled into the binary (no CDN).

pub mod api;
pub mod auth;
pub mod http;
pub mod pages;
pub mod server;
pub mod timeline;

use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    // The io error is part of the message, not a source: a caller printing the chain would
    // say it twice.
    #[error("web console: cannot listen on {addr} (TCP): {error}")]
    Bind { addr: SocketAddr, error: std::io::Error },
    #[error("web console: {addr} is not a loopback address: the console serves plain HTTP, so only on 127.0.0.1 or ::1")]
    NotLoopback { addr: SocketAddr },
}

pub use server::{serve, Served};
