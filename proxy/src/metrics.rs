//! The Prometheus metrics Floodgate exports, in one registry. Names follow the runbook's
//! Grafana queries (`http_requests_total`, `http_request_duration_seconds`) and the
//! `floodgate_` prefix for everything that is the sidecar's own. With `listeners:` the
//! per-request and per-upstream series carry a `listener` label; the one-listener form's
//! series are as they always were (no label), so its dashboards and alerts see no change.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Buckets include the runbook's p95 thresholds (1 s warning, 2 s critical) as exact bounds.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
];

/// Every metric the sidecar updates.
pub struct Metrics {
    registry: Registry,
    /// The per-request and per-upstream series carry a `listener` label (first).
    listener_label: bool,
    /// `http_requests_total{route,method,status}`.
    pub requests: IntCounterVec,
    /// `http_request_duration_seconds{route}`.
    pub duration: HistogramVec,
    /// `floodgate_config_reloads_total{result}`.
    pub reloads: IntCounterVec,
    /// `floodgate_config_version`: increments with every config swapped in.
    pub config_version: IntGauge,
    /// `floodgate_local_responses_total{reason}`: answers the sidecar produced itself.
    pub local_responses: IntCounterVec,
    /// `floodgate_active_requests`: requests being served now, queued ones included.
    pub active: IntGauge,
    /// `floodgate_inflight_requests`: requests holding a slot to the upstream (set at scrape).
    pub inflight: IntGaugeVec,
    /// `floodgate_queue_depth`: requests waiting for a slot (set at scrape).
    pub queue_depth: IntGaugeVec,
    /// `floodgate_queue_capacity`: `queue.max_size` in force (0 without a queue).
    pub queue_capacity: IntGaugeVec,
    /// `floodgate_concurrency_limit`: `queue.max_concurrency` in force (0 = no limit).
    pub concurrency_limit: IntGaugeVec,
    /// `floodgate_queue_wait_seconds`: time queued, for requests that had to wait.
    pub queue_wait: HistogramVec,
    /// `floodgate_queue_abandoned_total`: clients that left while queued.
    pub queue_abandoned: IntCounterVec,
    /// `floodgate_shed_total{reason}`: requests the sidecar refused by policy.
    pub shed: IntCounterVec,
    /// `floodgate_circuit_breaker_state{upstream}`: 0 closed, 1 half-open, 2 open.
    pub breaker_state: IntGaugeVec,
    /// `floodgate_circuit_breaker_transitions_total{upstream,to}`.
    pub breaker_transitions: IntCounterVec,
    /// `floodgate_load_indicator{indicator,level}`: 1 for each indicator's current level.
    pub indicator_level: IntGaugeVec,
    /// `floodgate_load_indicator_value{indicator}`: the indicator's value.
    pub indicator_value: GaugeVec,
    /// `floodgate_degradation_level`: 0 full, 1 degraded, 2 minimal.
    pub degradation_level: IntGauge,
    /// `floodgate_feature_enabled{feature}`.
    pub feature_enabled: IntGaugeVec,
    /// `floodgate_degradation_transitions_total{from,to,cause}`.
    pub degradation_transitions: IntCounterVec,
    /// `floodgate_degraded_responses_total{feature}`: fallbacks and priority sheds.
    pub degraded_responses: IntCounterVec,
    /// `floodgate_cache_bytes`, `floodgate_cache_entries` (set at scrape).
    pub cache_bytes: IntGauge,
    /// See `cache_bytes`.
    pub cache_entries: IntGauge,
    /// `floodgate_cache_evictions_total` (brought up to date at scrape).
    pub cache_evictions: IntCounter,
    /// `floodgate_cache_lookups_total{result}`: `hit`, `miss`.
    pub cache_lookups: IntCounterVec,
    /// `floodgate_override_expiry_timestamp_seconds{key,scope}`: when each override with a
    /// TTL reverts (set at scrape).
    pub override_expiry: GaugeVec,
    /// `floodgate_fleet_override_version`: the fleet override version applied here.
    pub fleet_version: IntGauge,
    /// `floodgate_draining`: 1 once SIGTERM was received.
    pub draining: IntGauge,
    /// `floodgate_config_restart_required_total{setting}`: reloads that changed a setting
    /// read only at start-up.
    pub restart_required: IntCounterVec,
    /// `floodgate_override_generation`: snapshots rebuilt for override changes (the config
    /// version counts file reloads only).
    pub override_generation: IntGauge,
    /// `floodgate_connections_open`: client connections open now.
    pub connections_open: IntGauge,
    /// `floodgate_connections_refused_total`: connections closed at accept, over
    /// `server.max_connections`.
    pub connections_refused: IntCounter,
    /// `floodgate_header_timeouts_total`: connections closed because their request head did
    /// not arrive within `server.header_read_timeout_ms`, by whether part of it came.
    pub header_timeouts: IntCounterVec,
    /// `floodgate_http1_path_total{path}`: HTTP/1.1 requests served on the fast path
    /// (`fast`), and connections it handed to pingora-proxy (`handed_over`).
    pub http1_path: IntCounterVec,
    /// `floodgate_ratelimit_decisions_total{limit,decision}`.
    pub rl_decisions: IntCounterVec,
    /// `floodgate_ratelimit_utilization_ratio{limit}`: the busiest key's share of its limit.
    pub rl_utilization: GaugeVec,
    /// `floodgate_ratelimit_keys{limit}`: keys with state in this sidecar.
    pub rl_keys: IntGaugeVec,
    /// `floodgate_ratelimit_backend{limit,mode}`: 1 for the mode a limit runs in.
    pub rl_backend: IntGaugeVec,
    /// `floodgate_redis_call_duration_seconds`: one global decision's round trip.
    pub redis_latency: Histogram,
    /// `floodgate_redis_errors_total{kind}`: timeouts, refusals, I/O and other failures.
    pub redis_errors: IntCounterVec,
    /// `floodgate_redis_transitions_total{to,shard}`: each time a shard (the whole server when
    /// standalone) goes `up` or `down`, so flapping shows between scrapes.
    pub redis_transitions: IntCounterVec,
    /// `floodgate_redis_up{shard}`: 1 while a shard's keys are decided in Redis.
    pub redis_up: IntGaugeVec,
}

/// Label values of the `status` label for 0..=599, made once so recording a request formats nothing.
pub struct StatusLabels(Vec<String>);

impl StatusLabels {
    /// All labels.
    pub fn new() -> Self {
        Self((0..600).map(|s| s.to_string()).collect())
    }

    /// The label for `status` (codes past 599 are reported as `599`).
    pub fn get(&self, status: u16) -> &str {
        &self.0[usize::from(status.min(599))]
    }
}

impl Default for StatusLabels {
    fn default() -> Self {
        Self::new()
    }
}

/// Bounds the `method` label's cardinality: unknown methods are counted as `OTHER`.
pub fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

impl Metrics {
    /// Creates and registers every metric, plus process metrics (CPU, RSS, fds), for the
    /// one-listener form (no `listener` label).
    pub fn new() -> Result<Self, prometheus::Error> {
        Self::with_listener_label(false)
    }

    /// [`Metrics::new`], with the `listener` label on per-request and per-upstream series
    /// when `listener_label` (a config with `listeners:`).
    pub fn with_listener_label(listener_label: bool) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        // The `listener` label goes first, so one slice of values serves both forms
        // ([`Metrics::by_listener`]).
        let by = |names: &[&'static str]| -> Vec<&'static str> {
            let mut all = Vec::with_capacity(names.len() + 1);
            if listener_label {
                all.push("listener");
            }
            all.extend_from_slice(names);
            all
        };
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "Requests answered, by route, method and status.",
            ),
            &by(&["route", "method", "status"]),
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time from request received to response finished, by route.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &by(&["route"]),
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "floodgate_config_reloads_total",
                "Config reload attempts by result.",
            ),
            &["result"],
        )?;
        let config_version = IntGauge::new(
            "floodgate_config_version",
            "Sequence number of the config in force (1 = the file loaded at start).",
        )?;
        let local_responses = IntCounterVec::new(
            Opts::new(
                "floodgate_local_responses_total",
                "Responses produced by the sidecar itself instead of the upstream, by reason.",
            ),
            &by(&["reason"]),
        )?;
        let active = IntGauge::new(
            "floodgate_active_requests",
            "Requests being served now, queued ones included.",
        )?;
        let inflight = IntGaugeVec::new(
            Opts::new(
                "floodgate_inflight_requests",
                "Requests in flight to the upstream (holding an admission slot).",
            ),
            &by(&[]),
        )?;
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "floodgate_queue_depth",
                "Requests waiting in the admission queue.",
            ),
            &by(&[]),
        )?;
        let queue_capacity = IntGaugeVec::new(
            Opts::new(
                "floodgate_queue_capacity",
                "Requests the admission queue holds at most (queue.max_size; 0 without a queue).",
            ),
            &by(&[]),
        )?;
        let concurrency_limit = IntGaugeVec::new(
            Opts::new(
                "floodgate_concurrency_limit",
                "Requests allowed in flight to the upstream (queue.max_concurrency; 0 = no limit).",
            ),
            &by(&[]),
        )?;
        let queue_wait = HistogramVec::new(
            HistogramOpts::new(
                "floodgate_queue_wait_seconds",
                "Time spent in the admission queue by requests that had to wait, whatever the outcome.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
            ]),
            &by(&[]),
        )?;
        let queue_abandoned = IntCounterVec::new(
            Opts::new(
                "floodgate_queue_abandoned_total",
                "Clients that disconnected while their request was queued.",
            ),
            &by(&[]),
        )?;
        let shed = IntCounterVec::new(
            Opts::new(
                "floodgate_shed_total",
                "Requests refused by policy, by reason (rate_limited, queue_full, queue_timeout, circuit_open, degraded).",
            ),
            &by(&["reason"]),
        )?;
        let breaker_state = IntGaugeVec::new(
            Opts::new(
                "floodgate_circuit_breaker_state",
                "Circuit breaker state per upstream: 0 closed, 1 half-open, 2 open.",
            ),
            &by(&["upstream"]),
        )?;
        let breaker_transitions = IntCounterVec::new(
            Opts::new(
                "floodgate_circuit_breaker_transitions_total",
                "Circuit breaker state changes per upstream, by the state entered.",
            ),
            &by(&["upstream", "to"]),
        )?;
        let indicator_level = IntGaugeVec::new(
            Opts::new(
                "floodgate_load_indicator",
                "1 for the level (ok, warning, critical) each load indicator is at, 0 for the others.",
            ),
            &["indicator", "level"],
        )?;
        let indicator_value = GaugeVec::new(
            Opts::new(
                "floodgate_load_indicator_value",
                "Each load indicator's value: request_rate per second, latency_* in ms, error_rate as a share, queue_depth and inflight as counts.",
            ),
            &["indicator"],
        )?;
        let draining = IntGauge::new("floodgate_draining", "1 while shutting down after SIGTERM.")?;
        let connections_open =
            IntGauge::new("floodgate_connections_open", "Client connections open now.")?;
        let restart_required = IntCounterVec::new(
            Opts::new(
                "floodgate_config_restart_required_total",
                "Reloads that changed a setting read only at start-up (it keeps its start-up value until a restart), by setting.",
            ),
            &["setting"],
        )?;
        let override_generation = IntGauge::new(
            "floodgate_override_generation",
            "Snapshots rebuilt because overrides changed (limits, queue); floodgate_config_version counts file reloads only.",
        )?;
        let connections_refused = IntCounter::new(
            "floodgate_connections_refused_total",
            "Client connections closed at accept because server.max_connections were open.",
        )?;
        let http1_path = IntCounterVec::new(
            Opts::new(
                "floodgate_http1_path_total",
                "HTTP/1.1 requests served on the fast path (path=fast), and client connections the fast path handed to pingora-proxy (path=handed_over: h2c, upgrades, chunked request bodies, unusual heads, fallbacks and the cache).",
            ),
            &["path"],
        )?;
        let header_timeouts = IntCounterVec::new(
            Opts::new(
                "floodgate_header_timeouts_total",
                "Client connections closed because a request head did not arrive within server.header_read_timeout_ms (partial: some of it came, answered 408; idle: none came).",
            ),
            &["head"],
        )?;
        let rl_decisions = IntCounterVec::new(
            Opts::new(
                "floodgate_ratelimit_decisions_total",
                "Rate-limit decisions by limit.",
            ),
            &["limit", "decision"],
        )?;
        let rl_utilization = GaugeVec::new(
            Opts::new(
                "floodgate_ratelimit_utilization_ratio",
                "Busiest key's use of its limit in the current window (1 = at the limit).",
            ),
            &["limit"],
        )?;
        let rl_keys = IntGaugeVec::new(
            Opts::new("floodgate_ratelimit_keys", "Keys with limiter state."),
            &["limit"],
        )?;
        let rl_backend = IntGaugeVec::new(
            Opts::new(
                "floodgate_ratelimit_backend",
                "Where each limit is counted (1 = this mode).",
            ),
            &["limit", "mode"],
        )?;
        let redis_latency = Histogram::with_opts(
            HistogramOpts::new(
                "floodgate_redis_call_duration_seconds",
                "Round trip of one global rate-limit decision in Redis.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1,
            ]),
        )?;
        let redis_errors = IntCounterVec::new(
            Opts::new(
                "floodgate_redis_errors_total",
                "Failed Redis calls by kind.",
            ),
            &["kind"],
        )?;
        // `shard` is the shard's lowest slot range ("0-16383" for a standalone server): one
        // series per shard, as few as the cluster has masters, and stable across a failover.
        let redis_transitions = IntCounterVec::new(
            Opts::new(
                "floodgate_redis_transitions_total",
                "Redis health transitions (to = up | down), by shard (its lowest slot range).",
            ),
            &["to", "shard"],
        )?;
        let redis_up = IntGaugeVec::new(
            Opts::new(
                "floodgate_redis_up",
                "1 while a Redis shard (its lowest slot range) decides global limits.",
            ),
            &["shard"],
        )?;
        let info = IntGaugeVec::new(
            Opts::new("floodgate_build_info", "Version of the running sidecar."),
            &["version"],
        )?;
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(config_version.clone()))?;
        registry.register(Box::new(local_responses.clone()))?;
        let degradation_level = IntGauge::new(
            "floodgate_degradation_level",
            "Degradation level in force: 0 full, 1 degraded, 2 minimal.",
        )?;
        let feature_enabled = IntGaugeVec::new(
            Opts::new(
                "floodgate_feature_enabled",
                "1 while a feature is on, 0 while it is answered by its fallback.",
            ),
            &["feature"],
        )?;
        let degradation_transitions = IntCounterVec::new(
            Opts::new(
                "floodgate_degradation_transitions_total",
                "Degradation level changes by cause: config, manual, auto, recovered.",
            ),
            &["from", "to", "cause"],
        )?;
        let degraded_responses = IntCounterVec::new(
            Opts::new(
                "floodgate_degraded_responses_total",
                "Requests answered by a fallback or shed by priority, by feature (`none` for routes without one).",
            ),
            &["feature"],
        )?;
        let cache_bytes = IntGauge::new(
            "floodgate_cache_bytes",
            "Bytes held by the response cache (cached fallbacks, aggressive caching).",
        )?;
        let cache_entries = IntGauge::new(
            "floodgate_cache_entries",
            "Requests (method and URI) with an answer in the response cache.",
        )?;
        let cache_evictions = IntCounter::new(
            "floodgate_cache_evictions_total",
            "Cached answers evicted to stay under degradation.cache.max_bytes.",
        )?;
        let cache_lookups = IntCounterVec::new(
            Opts::new(
                "floodgate_cache_lookups_total",
                "Response cache lookups for fallbacks and aggressive caching, by result.",
            ),
            &["result"],
        )?;
        let override_expiry = GaugeVec::new(
            Opts::new(
                "floodgate_override_expiry_timestamp_seconds",
                "Unix time at which each admin override with a TTL reverts to the config baseline.",
            ),
            &["key", "scope"],
        )?;
        registry.register(Box::new(override_expiry.clone()))?;
        let fleet_version = IntGauge::new(
            "floodgate_fleet_override_version",
            "Version of the fleet-wide overrides (through Redis) this sidecar has applied.",
        )?;
        registry.register(Box::new(fleet_version.clone()))?;
        registry.register(Box::new(degradation_level.clone()))?;
        registry.register(Box::new(feature_enabled.clone()))?;
        registry.register(Box::new(degradation_transitions.clone()))?;
        registry.register(Box::new(degraded_responses.clone()))?;
        registry.register(Box::new(cache_bytes.clone()))?;
        registry.register(Box::new(cache_entries.clone()))?;
        registry.register(Box::new(cache_evictions.clone()))?;
        registry.register(Box::new(cache_lookups.clone()))?;
        registry.register(Box::new(active.clone()))?;
        registry.register(Box::new(inflight.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(queue_capacity.clone()))?;
        registry.register(Box::new(concurrency_limit.clone()))?;
        registry.register(Box::new(queue_wait.clone()))?;
        registry.register(Box::new(queue_abandoned.clone()))?;
        registry.register(Box::new(shed.clone()))?;
        registry.register(Box::new(breaker_state.clone()))?;
        registry.register(Box::new(breaker_transitions.clone()))?;
        registry.register(Box::new(indicator_level.clone()))?;
        registry.register(Box::new(indicator_value.clone()))?;
        registry.register(Box::new(draining.clone()))?;
        registry.register(Box::new(connections_open.clone()))?;
        registry.register(Box::new(override_generation.clone()))?;
        registry.register(Box::new(restart_required.clone()))?;
        registry.register(Box::new(connections_refused.clone()))?;
        registry.register(Box::new(header_timeouts.clone()))?;
        registry.register(Box::new(http1_path.clone()))?;
        registry.register(Box::new(info))?;
        registry.register(Box::new(rl_decisions.clone()))?;
        registry.register(Box::new(rl_utilization.clone()))?;
        registry.register(Box::new(rl_keys.clone()))?;
        registry.register(Box::new(rl_backend.clone()))?;
        registry.register(Box::new(redis_latency.clone()))?;
        registry.register(Box::new(redis_errors.clone()))?;
        registry.register(Box::new(redis_transitions.clone()))?;
        registry.register(Box::new(redis_up.clone()))?;
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        // Both results exist from the start so `rate()` and alerts see a zero, not a gap.
        reloads.with_label_values(&["success"]);
        reloads.with_label_values(&["failure"]);
        // (With a `listener` label, each listener's series start with its first count.)
        if !listener_label {
            for r in [
                "rate_limited",
                "queue_full",
                "queue_timeout",
                "circuit_open",
            ] {
                shed.with_label_values(&[r]);
            }
            queue_abandoned.with_label_values::<&str>(&[]);
        }
        Ok(Self {
            registry,
            listener_label,
            requests,
            duration,
            reloads,
            config_version,
            local_responses,
            active,
            inflight,
            queue_depth,
            queue_capacity,
            concurrency_limit,
            queue_wait,
            queue_abandoned,
            shed,
            breaker_state,
            breaker_transitions,
            indicator_level,
            indicator_value,
            degradation_level,
            feature_enabled,
            degradation_transitions,
            degraded_responses,
            cache_bytes,
            cache_entries,
            cache_evictions,
            cache_lookups,
            override_expiry,
            fleet_version,
            draining,
            override_generation,
            restart_required,
            connections_open,
            connections_refused,
            header_timeouts,
            http1_path,
            rl_decisions,
            rl_utilization,
            rl_keys,
            rl_backend,
            redis_latency,
            redis_errors,
            redis_transitions,
            redis_up,
        })
    }

    /// The latency histogram of one route on one listener, resolved once per snapshot
    /// rather than per request.
    pub fn route_duration(&self, listener: &str, route: &str) -> Histogram {
        self.duration
            .with_label_values(self.by_listener(&[listener, route]))
    }

    /// The label values for a series whose first value is the listener's name: all of them
    /// with a `listener` label, the rest without.
    pub fn by_listener<'a, 'b>(&self, values: &'b [&'a str]) -> &'b [&'a str] {
        match values.split_first() {
            Some((_, rest)) if !self.listener_label => rest,
            _ => values,
        }
    }

    /// `floodgate_shed_total{reason}` summed over the listeners.
    pub fn shed_total(&self, reason: &str) -> u64 {
        use prometheus::core::Collector;
        self.shed
            .collect()
            .iter()
            .flat_map(|f| f.get_metric())
            .filter(|m| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == "reason" && l.value() == reason)
            })
            .map(|m| m.get_counter().value() as u64)
            .sum()
    }

    /// Everything in Prometheus text format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}
