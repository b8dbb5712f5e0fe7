//! What the admin plane asks of the sidecar: a small trait the `floodgate` binary implements
//! over its runtime state, so the service and its tests need no proxy.

use std::time::Duration;

use crate::auth::Caller;
use crate::reply::{Event, FleetStatus, Knob, Outcome, Override, Status};

/// One change an operator asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// `limits set`.
    SetLimit {
        /// Limit name.
        name: String,
        /// New max_requests.
        max_requests: u64,
        /// New window, if changed.
        window: Option<Duration>,
    },
    /// `limits scale`: baseline × multiplier, for one limit or all (`None`).
    ScaleLimits {
        /// Limit name, or all.
        name: Option<String>,
        /// Factor, > 0.
        multiplier: f64,
    },
    /// `limits restore`: drop limit overrides, one or all.
    RestoreLimits {
        /// Limit name, or all.
        name: Option<String>,
    },
    /// `degrade set`.
    SetLevel {
        /// full, degraded or minimal.
        level: floodgate_config::Level,
    },
    /// `feature enable|disable`.
    SetFeature {
        /// Feature name.
        name: String,
        /// On or off.
        enabled: bool,
    },
    /// `cache aggressive on|off`: the runbook's aggressive mode.
    SetAggressiveCache {
        /// On or off.
        enabled: bool,
    },
    /// `queue resize` / `queue workers`.
    SetQueue {
        /// New max_size.
        max_size: Option<u32>,
        /// New max_concurrency.
        max_concurrency: Option<u32>,
    },
    /// `breakers force`: hold a breaker open or closed.
    ForceBreaker {
        /// `upstream` or `feature:<name>`.
        name: String,
        /// Held open (true) or closed.
        open: bool,
    },
    /// `breakers reset`.
    ResetBreaker {
        /// `upstream` or `feature:<name>`.
        name: String,
    },
    /// `overrides clear`.
    ClearOverride {
        /// Override key, or `all`.
        key: String,
    },
}

impl Op {
    /// The operation's name in the audit log.
    pub fn name(&self) -> &'static str {
        match self {
            Op::SetLimit { .. } => "limits.set",
            Op::ScaleLimits { .. } => "limits.scale",
            Op::RestoreLimits { .. } => "limits.restore",
            Op::SetLevel { .. } => "degrade.set",
            Op::SetFeature { .. } => "feature.set",
            Op::SetAggressiveCache { .. } => "cache.aggressive",
            Op::SetQueue { .. } => "queue.set",
            Op::ForceBreaker { .. } => "breakers.force",
            Op::ResetBreaker { .. } => "breakers.reset",
            Op::ClearOverride { .. } => "overrides.clear",
        }
    }
}

/// A change, with who asked, why, and for how long.
#[derive(Debug, Clone)]
pub struct Request {
    /// The operation.
    pub op: Op,
    /// Who.
    pub caller: Caller,
    /// Why.
    pub reason: String,
    /// Reverts by itself after this long.
    pub ttl: Option<Duration>,
    /// For every sidecar of the fleet (through Redis), not only this one.
    pub fleet: bool,
    /// Compute and report the change without making it. Only with `fleet`: the service
    /// refuses it otherwise, so a [`Control`] may ignore it on local changes.
    pub dry_run: bool,
}

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Names something that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A value out of range or contradictory.
    #[error("{0}")]
    Invalid(String),
    /// The sidecar could not apply it.
    #[error("{0}")]
    Failed(String),
}

impl From<ControlError> for tonic::Status {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::NotFound(m) => tonic::Status::not_found(m),
            ControlError::Invalid(m) => tonic::Status::invalid_argument(m),
            ControlError::Failed(m) => tonic::Status::failed_precondition(m),
        }
    }
}

/// The sidecar, as the admin plane sees it, in plain types ([`crate::reply`]). Async:
/// changes wait on Redis (fleet scope) and on a snapshot rebuild, which the implementation
/// runs off the async workers itself.
#[async_trait::async_trait]
pub trait Control: Send + Sync + 'static {
    /// Everything `status` shows.
    async fn status(&self) -> Status;
    /// Applies a change.
    async fn change(&self, req: Request) -> Result<Outcome, ControlError>;
    /// Overrides in force, every layer.
    async fn overrides(&self) -> Vec<Override>;
    /// Every knob (or the one named) with its value, layer and what it falls back to.
    async fn explain(&self, knob: &str) -> Result<Vec<Knob>, ControlError>;
    /// The latest `limit` audit entries, oldest first.
    async fn audit(&self, limit: usize) -> Vec<String>;
    /// Every expected sidecar of the fleet (reads Redis).
    async fn fleet_status(&self) -> Result<FleetStatus, ControlError>;
    /// Changes from now on, as they happen.
    async fn watch(&self) -> tokio::sync::broadcast::Receiver<Event>;
}
