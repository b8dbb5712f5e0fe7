//! The Floodgate sidecar: a pingora reverse proxy in front of one application instance.
//! `router` and (later) the policy modules are plain Rust; `shell` is the pingora adapter.

#![forbid(unsafe_code)]

pub mod access;
pub mod demo;
pub mod endpoint;
pub mod forwarded;
pub mod global;
pub mod logging;
pub mod metrics;
pub mod reload;
pub mod respond;
pub mod router;
pub mod shell;
pub mod shutdown;
pub mod state;
pub mod sweep;
