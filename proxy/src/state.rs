//! The sidecar's shared runtime state: the current config snapshot (swapped atomically on
//! reload), metrics, and the counters readiness and draining depend on.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use floodgate_config::Config;
use prometheus::Histogram;

use crate::metrics::{Metrics, StatusLabels};
use crate::router::Router;

/// Everything one request needs from the config, loaded once per request.
pub struct Snapshot {
    /// Sequence number (1 = the file loaded at start).
    pub version: u64,
    /// The validated config.
    pub config: Config,
    /// Route table.
    pub router: Router,
    /// Latency histogram per route index (default route last).
    pub route_duration: Vec<Histogram>,
    /// The upstream, resolved when the snapshot was built.
    pub upstream: SocketAddr,
}

/// Why a snapshot could not be built from a valid config.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The upstream host did not resolve.
    #[error("upstream.address `{address}` does not resolve: {reason}")]
    Resolve {
        /// As configured.
        address: String,
        /// Resolver's answer.
        reason: String,
    },
}

impl Snapshot {
    /// Builds a snapshot, resolving the upstream address (blocking: call off the request path).
    pub fn build(config: Config, version: u64, metrics: &Metrics) -> Result<Self, BuildError> {
        use std::net::ToSocketAddrs;
        let address = &config.upstream.address;
        let upstream = address
            .to_socket_addrs()
            .map_err(|e| BuildError::Resolve {
                address: address.clone(),
                reason: e.to_string(),
            })?
            .next()
            .ok_or_else(|| BuildError::Resolve {
                address: address.clone(),
                reason: "no addresses".into(),
            })?;
        let router = Router::new(config.routes.clone());
        let route_duration = router
            .all()
            .map(|r| metrics.route_duration(&r.name))
            .collect();
        Ok(Self {
            version,
            config,
            router,
            route_duration,
            upstream,
        })
    }
}

/// Shared by the proxy, the reloader and the metrics endpoint.
pub struct Runtime {
    /// The config in force.
    pub current: ArcSwap<Snapshot>,
    /// Config file being watched.
    pub config_path: PathBuf,
    /// Metrics registry.
    pub metrics: Metrics,
    /// Preformatted status labels.
    pub status_labels: StatusLabels,
    /// Version counter for the next snapshot.
    next_version: AtomicU64,
    /// Listeners are up (set once the server runs).
    ready: AtomicBool,
    /// SIGTERM received.
    draining: AtomicBool,
}

impl Runtime {
    /// State around the first snapshot.
    pub fn new(first: Snapshot, config_path: PathBuf, metrics: Metrics) -> Arc<Self> {
        metrics.config_version.set(first.version as i64);
        Arc::new(Self {
            next_version: AtomicU64::new(first.version + 1),
            current: ArcSwap::from_pointee(first),
            config_path,
            metrics,
            status_labels: StatusLabels::new(),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        })
    }

    /// Reserves the version number of the next snapshot.
    pub fn next_version(&self) -> u64 {
        self.next_version.fetch_add(1, Ordering::Relaxed)
    }

    /// Marks the listeners as up.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Ready to take traffic: config loaded, listening, not draining.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_draining()
    }

    /// Starts draining (SIGTERM).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.metrics.draining.set(1);
    }

    /// True after SIGTERM.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Requests being served now.
    pub fn inflight(&self) -> i64 {
        self.metrics.inflight.get()
    }
}

/// Counts a request as in flight for as long as it lives (dropped with the request context).
pub struct InflightGuard(Arc<Runtime>);

impl InflightGuard {
    /// Counts one more request.
    pub fn new(rt: &Arc<Runtime>) -> Self {
        rt.metrics.inflight.inc();
        Self(rt.clone())
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.metrics.inflight.dec();
    }
}
