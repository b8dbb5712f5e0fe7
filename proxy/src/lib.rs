//! The Floodgate sidecar: a pingora reverse proxy in front of one application instance.
//! `router` is plain Rust and the policies live in `floodgate-policy`; `shell` is the pingora
//! adapter and `status` the live view of queue, breaker and load indicators.

#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod approx;
pub mod conn;
pub mod control;
pub mod degrade;
pub mod demo;
pub mod endpoint;
pub mod fleet;
pub mod forwarded;
pub mod global;
pub mod lean;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod overrides;
pub mod reload;
pub mod respond;
pub mod router;
pub mod shell;
pub mod shutdown;
pub mod state;
pub mod status;
pub mod sweep;

#[cfg(test)]
mod structure;
