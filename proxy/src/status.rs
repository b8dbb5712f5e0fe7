//! The sidecar's live status: queue, circuit breaker and the runbook's load indicators, read
//! at one moment. It is what `GET /status` on the metrics port returns as JSON (and what the
//! admin plane will serve). Reading changes nothing; [`Status::publish`] refreshes the
//! gauges that are only read at scrape time, so the request path never touches them.

use floodgate_config::Level as DegradeLevel;
use floodgate_policy::breaker::{Forced, State};
use floodgate_policy::cache::CacheStats;
use floodgate_policy::load::{Level, Reading};
use floodgate_policy::queue::QueueStats;
use serde::Serialize;

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
    /// Queue numbers, every listener's together (`max_concurrency` is `u32::MAX` without a
    /// queue).
    pub queue: QueueStats,
    /// Requests leaving the in-flight set per second, over ten seconds.
    pub drain_rate: f64,
    /// Breaker state, `None` when no breaker is configured.
    pub breaker: Option<(State, Option<Forced>)>,
    /// Every load indicator.
    pub indicators: Vec<Reading>,
    /// Degradation level in force, the automatic controller's, an operator's.
    pub degradation: (DegradeLevel, DegradeLevel, Option<DegradeLevel>),
    /// Features off now.
    pub disabled_features: Vec<String>,
    /// Aggressive caching on.
    pub aggressive_cache: bool,
    /// Response cache counts.
    pub cache: CacheStats,
    /// Each listener bound at start: its upstream, queue and breaker.
    pub listeners: Vec<ListenerStatus>,
}

/// One listener's part of [`Status`].
#[derive(Debug, Clone)]
pub struct ListenerStatus {
    /// Its name (`default` in the one-listener form).
    pub name: String,
    /// Where it listens.
    pub listen: std::net::SocketAddr,
    /// Its upstream's address; `None` once a reload removed the listener.
    pub upstream: Option<String>,
    /// Its queue's numbers.
    pub queue: QueueStats,
    /// Its breaker's state, `None` when no breaker is configured.
    pub breaker: Option<(State, Option<Forced>)>,
}

impl Status {
    /// Reads the status of `rt` now.
    pub fn read(rt: &Runtime) -> Self {
        let snap = rt.current.load_full();
        let breakers = snap.config.circuit_breaker.is_some();
        let listeners: Vec<ListenerStatus> = rt
            .lanes
            .iter()
            .enumerate()
            .map(|(i, lane)| ListenerStatus {
                name: lane.name.clone(),
                listen: lane.listen,
                upstream: snap.lane_upstream(i).map(str::to_string),
                queue: lane.admission.stats(),
                // A read: it moves no state and emits nothing (the sweeper ticks the breaker).
                breaker: breakers.then(|| lane.breaker.state()),
            })
            .collect();
        // The sidecar's queue is every listener's together (each has the same sizes).
        let queue = listeners
            .iter()
            .map(|l| l.queue)
            .reduce(|a, b| QueueStats {
                depth: a.depth.saturating_add(b.depth),
                inflight: a.inflight.saturating_add(b.inflight),
                max_concurrency: a.max_concurrency.saturating_add(b.max_concurrency),
                max_size: a.max_size.saturating_add(b.max_size),
            })
            .unwrap_or_else(|| rt.admission.stats());
        let indicators =
            snap.load
                .readings(&snap.config.load_indicators, queue.depth, queue.inflight);
        let (auto, manual) = {
            let d = rt.degrade.lock().unwrap_or_else(|e| e.into_inner());
            (d.auto_level(), d.manual)
        };
        Self {
            degradation: (snap.degrade.level, auto, manual),
            disabled_features: snap.degrade.disabled.iter().cloned().collect(),
            aggressive_cache: snap.degrade.aggressive,
            cache: snap.routes.cache.stats(),
            version: snap.version,
            upstream: snap.config.listeners[0].upstream.address.clone(),
            queue_configured: snap.config.queue.is_some(),
            queue,
            drain_rate: rt.lanes.iter().map(|l| l.admission.drain_rate()).sum(),
            // `upstream`'s state is the worst of every listener's breaker (open, then
            // half-open), as `breakers force|reset upstream` acts on all of them.
            breaker: listeners.iter().filter_map(|l| l.breaker).max_by_key(
                |(state, _)| match state {
                    State::Closed => 0,
                    State::HalfOpen => 1,
                    State::Open => 2,
                },
            ),
            indicators,
            listeners,
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

    /// True when an upstream's breaker (any listener's) is open now.
    pub fn breaker_open(&self) -> bool {
        matches!(self.breaker, Some((State::Open, _)))
            || self
                .listeners
                .iter()
                .any(|l| matches!(l.breaker, Some((State::Open, _))))
    }

    /// Sets the scrape-time gauges.
    pub fn publish(&self, rt: &Runtime) {
        let m = &rt.metrics;
        m.cache_bytes
            .set(i64::try_from(self.cache.bytes).unwrap_or(i64::MAX));
        m.cache_entries
            .set(i64::try_from(self.cache.entries).unwrap_or(i64::MAX));
        let counted = m.cache_evictions.get();
        m.cache_evictions
            .inc_by(self.cache.evictions.saturating_sub(counted));
        let snap = rt.current.load();
        for (i, lane) in rt.lanes.iter().enumerate() {
            let name = [lane.name.as_str()];
            let q = lane.admission.stats();
            m.queue_depth
                .with_label_values(m.by_listener(&name))
                .set(i64::from(q.depth));
            m.inflight
                .with_label_values(m.by_listener(&name))
                .set(i64::from(q.inflight));
            if let (Some(_), Some(upstream)) = (&snap.config.circuit_breaker, snap.lane_upstream(i))
            {
                m.breaker_state
                    .with_label_values(m.by_listener(&[lane.name.as_str(), upstream]))
                    .set(lane.breaker.state().0.gauge());
            }
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

    /// The body of `GET /status`, fields in the order an operator reads them.
    pub fn report(&self) -> Report<'_> {
        let q = &self.queue;
        Report {
            level: self.level().as_str(),
            config_version: self.version,
            upstream: &self.upstream,
            queue: QueueReport {
                configured: self.queue_configured,
                depth: q.depth,
                max_size: self.queue_configured.then_some(q.max_size),
                inflight: q.inflight,
                max_concurrency: self.queue_configured.then_some(q.max_concurrency),
                drain_rate_per_second: self.drain_rate,
            },
            degradation: DegradationReport {
                level: self.degradation.0.as_str(),
                auto_level: self.degradation.1.as_str(),
                manual_level: self.degradation.2.map(DegradeLevel::as_str),
                disabled_features: self.disabled_features.clone(),
                aggressive_cache: self.aggressive_cache,
                cache_bytes: self.cache.bytes,
                cache_entries: self.cache.entries,
            },
            circuit_breaker: BreakerReport::of(self.breaker),
            listeners: self
                .listeners
                .iter()
                .map(|l| ListenerReport {
                    name: &l.name,
                    listen: l.listen.to_string(),
                    upstream: l.upstream.as_deref(),
                    queue_depth: l.queue.depth,
                    inflight: l.queue.inflight,
                    circuit_breaker: BreakerReport::of(l.breaker),
                })
                .collect(),
            indicators: self
                .indicators
                .iter()
                .map(|r| IndicatorReport {
                    name: r.indicator.as_str(),
                    value: r.value,
                    level: r.level.as_str(),
                    warning: r.thresholds.warning,
                    critical: r.thresholds.critical,
                    judged: r.judged,
                })
                .collect(),
        }
    }
}

/// `GET /status`.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    /// Worst indicator level: `ok`, `warning` or `critical`.
    pub level: &'static str,
    /// Config version in force.
    pub config_version: u64,
    /// The app.
    pub upstream: &'a str,
    /// Degradation.
    pub degradation: DegradationReport,
    /// Admission queue.
    pub queue: QueueReport,
    /// Circuit breaker (the first listener's: the one-listener form's only one).
    pub circuit_breaker: BreakerReport,
    /// Every listener, with its upstream, queue and breaker.
    pub listeners: Vec<ListenerReport<'a>>,
    /// Load indicators.
    pub indicators: Vec<IndicatorReport>,
}

/// The queue part of [`Report`]; limits are `null` without a queue.
#[derive(Debug, Serialize)]
pub struct QueueReport {
    /// A `queue` section is in force.
    pub configured: bool,
    /// Waiting.
    pub depth: u32,
    /// `queue.max_size`.
    pub max_size: Option<u32>,
    /// Holding a slot to the app.
    pub inflight: u32,
    /// `queue.max_concurrency`.
    pub max_concurrency: Option<u32>,
    /// Completions per second over ten seconds.
    pub drain_rate_per_second: f64,
}

/// The degradation part of [`Report`].
#[derive(Debug, Serialize)]
pub struct DegradationReport {
    /// In force.
    pub level: &'static str,
    /// The automatic controller's.
    pub auto_level: &'static str,
    /// An operator's, winning while set.
    pub manual_level: Option<&'static str>,
    /// Features answered by their fallback.
    pub disabled_features: Vec<String>,
    /// Aggressive caching on.
    pub aggressive_cache: bool,
    /// Bytes in the response cache.
    pub cache_bytes: u64,
    /// Requests with a cached answer.
    pub cache_entries: u64,
}

/// One listener in [`Report`].
#[derive(Debug, Serialize)]
pub struct ListenerReport<'a> {
    /// Its name.
    pub name: &'a str,
    /// Where it listens.
    pub listen: String,
    /// Its upstream; `null` once a reload removed the listener (its port answers 503).
    pub upstream: Option<&'a str>,
    /// Requests waiting in its queue.
    pub queue_depth: u32,
    /// Its requests holding a slot to its upstream.
    pub inflight: u32,
    /// Its upstream's breaker.
    pub circuit_breaker: BreakerReport,
}

/// The breaker part of [`Report`].
#[derive(Debug, Serialize)]
pub struct BreakerReport {
    /// A `circuit_breaker` section is in force.
    pub configured: bool,
    /// `closed`, `half_open` or `open`.
    pub state: Option<&'static str>,
    /// A manual override, `open` or `closed`.
    pub forced: Option<&'static str>,
}

/// One indicator in [`Report`].
#[derive(Debug, Serialize)]
pub struct IndicatorReport {
    /// Indicator name.
    pub name: &'static str,
    /// Value.
    pub value: f64,
    /// `ok`, `warning` or `critical`.
    pub level: &'static str,
    /// Warning threshold.
    pub warning: Option<f64>,
    /// Critical threshold.
    pub critical: Option<f64>,
    /// False while fewer than `load_indicators.min_requests` app answers are in the window:
    /// the level stays `ok` and automatic degradation ignores the value.
    pub judged: bool,
}

impl BreakerReport {
    /// The report of a breaker in `state` (`None`: no breaker configured).
    fn of(state: Option<(State, Option<Forced>)>) -> Self {
        Self {
            configured: state.is_some(),
            state: state.map(|(s, _)| s.as_str()),
            forced: state.and_then(|(_, f)| f).map(|f| match f {
                Forced::Open => "open",
                Forced::Closed => "closed",
            }),
        }
    }
}
