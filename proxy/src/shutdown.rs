//! SIGTERM drains: pingora stops accepting and closes idle connections, `/readyz` turns 503,
//! and the process exits 0 as soon as the last in-flight request finishes (or after
//! `server.drain_timeout_ms`). pingora's own graceful path waits its grace period out in
//! full, so the early exit on an empty sidecar is ours.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::state::Runtime;

/// Replaces pingora's signal handling so SIGTERM starts our drain.
pub struct Signals {
    rt: Arc<Runtime>,
    drain_timeout: Duration,
}

impl Signals {
    /// Signal handling for `rt`.
    pub fn new(rt: Arc<Runtime>, drain_timeout: Duration) -> Self {
        Self { rt, drain_timeout }
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            warn!("cannot install signal handlers; SIGTERM will not drain");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {
                info!(active = self.rt.active(), "SIGTERM: draining in-flight requests");
                self.rt.start_draining();
                // Before the exit can come: an idle sidecar exits at once.
                crate::fleet::leave(&self.rt).await;
                let rt = self.rt.clone();
                let limit = self.drain_timeout;
                std::thread::spawn(move || exit_when_drained(&rt, limit));
                ShutdownSignal::GracefulTerminate
            }
            _ = int.recv() => {
                info!("SIGINT: exiting now");
                ShutdownSignal::FastShutdown
            }
        }
    }
}

fn exit_when_drained(rt: &Runtime, limit: Duration) {
    let start = Instant::now();
    while rt.active() > 0 && start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(10));
    }
    let left = rt.active();
    if left > 0 {
        warn!(
            left,
            "drain timeout reached; exiting with requests still in flight"
        );
    } else {
        info!(
            elapsed_ms = start.elapsed().as_millis() as u64,
            "drained; exiting"
        );
    }
    crate::logging::flush();
    std::process::exit(0);
}
