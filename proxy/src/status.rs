//! The sidecar's live status: queue, circuit breaker and the runbook's load indicators, read
//! at one moment. It is what `GET /status` on the metrics port returns as JSON (and what the
//! admin plane will serve), and it refreshes the gauges that are only read at scrape time, so
//! the request path never touches them.

use floodgate_policy::breaker::{Forced, State};
use floodgate_policy::load::{Level, Reading};
use floodgate_policy::queue::QueueStats;
use serde_json::json;

use crate::state::Runtime;

/// One reading of everything an on-call engineer checks first.
#[derive(Debug, Clone)]
pub struct Status {
    /// Config version in force.
    pub version: u64,
    /// Upstream address.
    pub upstream: String,
    /// Whether a queue is configured, and its numbers.
    pub queue_configured: bool,
    /// Queue numbers (`max_concurrency` is `u32::MAX` without a queue).
    pub queue: QueueStats,
    /// Requests leaving the in-flight set per second, over ten seconds.
    pub drain_rate: f64,
    /// Breaker state, `None` when no breaker is configured.
    pub breaker: Option<(State, Option<Forced>)>,
    /// Every load indicator.
    pub indicators: Vec<Reading>,
}

impl Status {
    /// Reads the status of `rt` now.
    pub fn read(rt: &Runtime) -> Self {
        let snap = rt.current.load_full();
        let queue = rt.admission.stats();
        let indicators =
            snap.load
                .readings(&snap.config.load_indicators, queue.depth, queue.inflight);
        Self {
            version: snap.version,
            upstream: snap.config.upstream.address.clone(),
            queue_configured: snap.config.queue.is_some(),
            queue,
            drain_rate: rt.admission.drain_rate(),
            breaker: snap.config.circuit_breaker.as_ref().map(|_| {
                let (state, moved) = rt.breaker.tick();
                if let Some(t) = moved {
                    rt.breaker_moved(&snap.config.upstream.address, t);
                }
                state
            }),
            indicators,
        }
    }

    /// The worst level of any indicator.
    pub fn level(&self) -> Level {
        self.indicators
            .iter()
            .map(|r| r.level)
            .max()
            .unwrap_or(Level::Ok)
    }

    /// Sets the scrape-time gauges.
    pub fn publish(&self, rt: &Runtime) {
        let m = &rt.metrics;
        m.queue_depth.set(i64::from(self.queue.depth));
        m.inflight.set(i64::from(self.queue.inflight));
        if let Some((state, _)) = self.breaker {
            m.breaker_state
                .with_label_values(&[self.upstream.as_str()])
                .set(state.gauge());
        }
        for r in &self.indicators {
            let name = r.indicator.as_str();
            m.indicator_value.with_label_values(&[name]).set(r.value);
            for level in Level::ALL {
                m.indicator_level
                    .with_label_values(&[name, level.as_str()])
                    .set(i64::from(level == r.level));
            }
        }
    }

    /// The JSON body of `GET /status`.
    pub fn to_json(&self) -> serde_json::Value {
        let q = &self.queue;
        let queue = if self.queue_configured {
            json!({
                "depth": q.depth,
                "max_size": q.max_size,
                "inflight": q.inflight,
                "max_concurrency": q.max_concurrency,
                "drain_rate_per_second": self.drain_rate,
            })
        } else {
            json!({ "configured": false, "inflight": q.inflight })
        };
        let breaker = match self.breaker {
            None => json!({ "configured": false }),
            Some((state, forced)) => json!({
                "state": state.as_str(),
                "forced": forced.map(|f| match f {
                    Forced::Open => "open",
                    Forced::Closed => "closed",
                }),
            }),
        };
        let indicators: Vec<_> = self
            .indicators
            .iter()
            .map(|r| {
                json!({
                    "name": r.indicator.as_str(),
                    "value": r.value,
                    "warning": r.thresholds.warning,
                    "critical": r.thresholds.critical,
                    "level": r.level.as_str(),
                })
            })
            .collect();
        json!({
            "config_version": self.version,
            "upstream": self.upstream,
            "level": self.level().as_str(),
            "queue": queue,
            "circuit_breaker": breaker,
            "indicators": indicators,
        })
    }
}
