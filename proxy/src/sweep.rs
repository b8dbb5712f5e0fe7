//! Once a second: runs automatic degradation over the load indicators, forgets limiter keys
//! whose windows are over (so local state stays bounded by the keys active in the last window
//! or two) and publishes each limit's busiest key's utilisation and key count.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::state::Runtime;

/// The sweeping background service.
pub struct Sweeper {
    rt: Arc<Runtime>,
}

impl Sweeper {
    /// Sweeps `rt`'s current limits.
    pub fn new(rt: Arc<Runtime>) -> Self {
        Self { rt }
    }
}

#[async_trait]
impl BackgroundService for Sweeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let rt = self.rt.clone();
                    // Sweeping a million keys takes milliseconds: keep it off the async workers.
                    let _ = tokio::task::spawn_blocking(move || sweep(&rt)).await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

fn sweep(rt: &Runtime) {
    // Admin overrides whose TTL ran out revert, even with nobody and nothing else reachable.
    crate::lifecycle::expire(rt);
    crate::lifecycle::run_schedules(rt);
    // An open period that ran out turns half-open here, logged and counted, even with no
    // request to notice it (status reads only look).
    let snap = rt.current.load_full();
    if snap.config.circuit_breaker.is_some() {
        for (i, lane) in rt.lanes.iter().enumerate() {
            if let ((_, Some(t)), Some(address)) = (lane.breaker.tick(), snap.lane_upstream(i)) {
                rt.breaker_moved(i, address, t);
            }
        }
    }
    // Automatic degradation looks at the indicators once a second.
    let status = crate::status::Status::read(rt);
    crate::lifecycle::tick_degradation(rt, &status.indicators, status.breaker_open());
    let snap = rt.current.load_full();
    // Where each global limit is decided right now (local ones never change).
    let redis_up = rt.global.as_ref().is_some_and(|g| g.is_healthy());
    for l in snap
        .config
        .limits
        .iter()
        .filter(|l| l.scope == floodgate_config::Scope::Global)
    {
        if snap.config.redis.is_some() {
            let b = &rt.metrics.rl_backend;
            b.with_label_values(&[l.name.as_str(), "redis"])
                .set(i64::from(redis_up));
            b.with_label_values(&[l.name.as_str(), "local_fallback"])
                .set(i64::from(!redis_up));
        }
    }
    for (i, l) in snap.limits.limiters().iter().enumerate() {
        let mut busiest = l.sweep();
        // A global limit decided in Redis leaves no local state: use what Redis reported.
        if l.def.scope == floodgate_config::Scope::Global && redis_up {
            let remote = snap.remote_use[i].swap(0, std::sync::atomic::Ordering::Relaxed);
            busiest = remote as f64 / 1_000_000.0;
        }
        let name = l.def.name.as_str();
        rt.metrics
            .rl_utilization
            .with_label_values(&[name])
            .set(busiest);
        rt.metrics
            .rl_keys
            .with_label_values(&[name])
            .set(i64::try_from(l.keys()).unwrap_or(i64::MAX));
    }
}
