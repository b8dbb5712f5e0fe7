//! The config file's shape, one serde type per YAML mapping. These mirror the file exactly
//! (unknown keys rejected); [`crate::validate`] turns them into the checked [`crate::Config`].
//! Doc comments here become the descriptions of the generated JSON Schema; its names drop the
//! `Raw` prefix (`schemars(rename)`, which leaves the file's shape alone): editors show them.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A Floodgate sidecar configuration file.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Floodgate sidecar configuration", rename = "FloodgateConfig")]
pub struct RawConfig {
    /// Address the sidecar accepts the app's inbound traffic on (the pod's service port),
    /// `ip:port`. With `upstream`, the one-listener form (a listener named `default`);
    /// required unless `listeners` is given, and not allowed with it.
    #[serde(default)]
    pub listen: Option<String>,
    /// The app the sidecar forwards to (the one-listener form, with `listen`).
    #[serde(default)]
    pub upstream: Option<RawUpstream>,
    /// Several ports, each with its own upstream, queue and circuit breaker (an app with an
    /// HTTP and a gRPC port): instead of `listen` + `upstream`. Read at start-up for the
    /// ports; a reload changes upstreams live.
    #[serde(default)]
    pub listeners: Vec<RawListener>,
    /// Prometheus `/metrics`, `/healthz` and `/readyz`.
    #[serde(default)]
    pub metrics: Option<RawMetrics>,
    /// The gRPC admin plane for `floodgatectl` (read at start-up).
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    /// Redis for fleet-wide limits (read at start-up). Absent = every limit is per sidecar.
    #[serde(default)]
    pub redis: Option<RawRedis>,
    /// Route table; first match wins; unmatched requests use the route `default`.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// Rate limits; `scope: global` ones are decided in Redis when `redis` is configured.
    #[serde(default)]
    pub limits: Vec<RawLimit>,
    /// Which rate-limit response fields are sent.
    #[serde(default)]
    pub rate_limit_headers: Option<RawRateLimitHeaders>,
    /// Admission queue: a cap on requests in flight to the app, and a bounded, prioritised
    /// wait beyond it. Absent = no cap.
    #[serde(default)]
    pub queue: Option<RawQueue>,
    /// Circuit breaker on the upstream. Absent = never opens.
    #[serde(default)]
    pub circuit_breaker: Option<RawCircuitBreaker>,
    /// The runbook's load indicators and their warning/critical thresholds.
    #[serde(default)]
    pub load_indicators: Option<RawLoadIndicators>,
    /// Graceful degradation (accepted and validated, not yet enforced).
    #[serde(default)]
    pub degradation: Option<RawDegradation>,
    /// Scheduled overrides (the runbook's pre-emptive scaling), applied and reverted by
    /// the clock.
    #[serde(default)]
    pub schedules: Vec<RawSchedule>,
    /// Logging: format and access log.
    #[serde(default)]
    pub logging: Option<RawLogging>,
    /// Process-level settings of the proxy.
    #[serde(default)]
    pub server: Option<RawServer>,
}

/// One port of the sidecar and the app port behind it.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Listener")]
pub struct RawListener {
    /// Unique name (letters, digits, `-`, `_`): the `listener` label of metrics and access
    /// lines, and what a route's `match.listener` names.
    pub name: String,
    /// `ip:port` this listener accepts traffic on (read at start-up: a change needs a restart).
    pub listen: String,
    /// The app port it forwards to; its queue and circuit breaker are this listener's own.
    pub upstream: RawUpstream,
}

/// The upstream application.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Upstream")]
pub struct RawUpstream {
    /// `host:port` of the app, usually `127.0.0.1:<port>` in the same pod.
    pub address: String,
    /// Longest wait for a TCP connection to the app, in milliseconds (default 1000).
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
    /// Longest wait for the app to send the next bytes of a response, in milliseconds (default 30000).
    #[serde(default)]
    pub read_timeout_ms: Option<u64>,
    /// Longest wait to write request bytes to the app, in milliseconds (default 30000).
    #[serde(default)]
    pub write_timeout_ms: Option<u64>,
    /// How long an idle pooled keep-alive connection to the app is kept, in milliseconds (default 60000).
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
    /// Protocol to the app: `auto` (default: h2c clients such as gRPC are forwarded as h2c,
    /// HTTP/1.1 clients as HTTP/1.1), `http1` (always HTTP/1.1) or `h2c` (always HTTP/2 cleartext).
    #[serde(default)]
    pub protocol: UpstreamProtocol,
}

/// Protocol spoken to the upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// Same as the client: h2c for h2c clients, HTTP/1.1 otherwise.
    #[default]
    Auto,
    /// Always HTTP/1.1 (an app that cannot speak HTTP/2; gRPC will not work).
    Http1,
    /// Always HTTP/2 with prior knowledge.
    H2c,
}

/// The metrics and health endpoint.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Metrics")]
pub struct RawMetrics {
    /// `ip:port` serving `GET /metrics`, `/healthz`, `/readyz`.
    pub listen: String,
}

/// The admin plane.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Admin")]
pub struct RawAdmin {
    /// `ip:port` of the gRPC admin plane.
    pub listen: String,
    /// Bearer tokens read from files (at start); none configured = every call refused.
    #[serde(default)]
    pub tokens: Vec<RawToken>,
    /// File every change is appended to as a JSON line (default: none; the last 1000 entries
    /// are always kept in memory for `floodgatectl audit`).
    #[serde(default)]
    pub audit_log: Option<String>,
    /// TLS for the admin port; with `client_ca_file`, mutual TLS. Absent = plaintext, which
    /// is only allowed on loopback (see `allow_insecure`).
    #[serde(default)]
    pub tls: Option<RawAdminTls>,
    /// Allow a non-loopback `listen` without `tls`, bearer tokens in clear text on the
    /// network (default false: such a file is invalid). For a network you trust on purpose.
    #[serde(default)]
    pub allow_insecure: bool,
}

/// TLS of the admin port, PEM files read at start.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "AdminTls")]
pub struct RawAdminTls {
    /// Server certificate chain.
    pub cert_file: String,
    /// Its private key.
    pub key_file: String,
    /// CA that client certificates must chain to; set = mutual TLS, clients without a
    /// certificate from it are refused before any call.
    #[serde(default)]
    pub client_ca_file: Option<String>,
}

/// One admin bearer token.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Token")]
pub struct RawToken {
    /// File holding the token.
    pub file: String,
    /// What the token's holder may do.
    pub role: Role,
}

/// Admin role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// May read and change.
    Operator,
    /// May only read.
    Viewer,
}

/// Redis connection.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Redis")]
pub struct RawRedis {
    /// A standalone server, `redis://host:port` (or `rediss://`). Exactly one of `url`, `cluster`.
    #[serde(default)]
    pub url: Option<String>,
    /// Seed nodes of a Redis Cluster.
    #[serde(default)]
    pub cluster: Option<Vec<String>>,
    /// Budget of one limit decision in Redis, in milliseconds (default 20).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Sidecars sharing a global limit; each keeps `max_requests / expected_replicas` while
    /// Redis is unreachable (default 1).
    #[serde(default)]
    pub expected_replicas: Option<u32>,
}

/// One route.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Route")]
pub struct RawRoute {
    /// Unique name, used in metrics and limits.
    pub name: String,
    /// What requests belong to this route; an empty match takes every request.
    #[serde(default, rename = "match")]
    pub matcher: RawMatch,
    /// Degradation feature the route belongs to.
    #[serde(default)]
    pub feature: Option<String>,
    /// `critical` | `normal` | `low` (default `normal`).
    #[serde(default)]
    pub priority: Priority,
}

/// Request matcher of a route; all given conditions must hold.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Match")]
pub struct RawMatch {
    /// Path starts with this (segment-aware is not implied: `/api` also matches `/apix`).
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Path equals this.
    #[serde(default)]
    pub path_exact: Option<String>,
    /// Path matches this regular expression (Rust `regex` syntax, unanchored unless you anchor it).
    #[serde(default)]
    pub path_regex: Option<String>,
    /// Request method is one of these (upper case).
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// `Host` header (port stripped) equals this, case-insensitively.
    #[serde(default)]
    pub host: Option<String>,
    /// Each named header is present with exactly this value.
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    /// The request came in on this listener (a name under `listeners`; `default` in the
    /// one-listener form).
    #[serde(default)]
    pub listener: Option<String>,
}

/// Route priority.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Deserialize,
    Serialize,
    JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Served first, shed last.
    Critical,
    /// The default.
    #[default]
    Normal,
    /// Shed first.
    Low,
}

/// One rate limit.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Limit")]
pub struct RawLimit {
    /// Unique name, used in metrics, headers and the admin plane.
    pub name: String,
    /// Routes the limit applies to; absent = every route.
    #[serde(default)]
    pub routes: Option<Vec<String>>,
    /// What a bucket is keyed on: any of `client_ip`, `route`, `method`, `path`, `header:<name>`.
    /// Empty = one bucket for all requests.
    #[serde(default)]
    pub key: Vec<String>,
    /// Requests allowed per window.
    pub max_requests: u64,
    /// Window length in seconds.
    pub window_seconds: u64,
    /// `sliding_window` (default) | `fixed_window` | `token_bucket`.
    #[serde(default)]
    pub strategy: Strategy,
    /// `local` (default) | `global`.
    #[serde(default)]
    pub scope: Scope,
    /// Count and report, never reject.
    #[serde(default)]
    pub shadow: bool,
    /// With `scope: global`, what to do while Redis is unreachable: `open` (default) decides
    /// locally at `max_requests / redis.expected_replicas`; `deny` rejects (fail closed).
    #[serde(default)]
    pub failure_mode: FailureMode,
    /// With `scope: global`: `exact` (default) decides every request in Redis;
    /// `approximate` decides on this sidecar against the fleet's count as of its last sync,
    /// and pushes its own counts every `sync_interval_ms` (no Redis round trip per request;
    /// the fleet may admit a little over the limit, see the README's bound).
    #[serde(default)]
    pub mode: Mode,
    /// With `mode: approximate`: how often this sidecar pushes its counts to Redis and reads
    /// the fleet's back, in milliseconds; default 100.
    #[serde(default)]
    pub sync_interval_ms: Option<u64>,
    /// More windows on the same key, checked together with the main one (e.g. 10 per second
    /// *and* 1000 per hour). Shortest first; a request rejected by one window is not counted
    /// by longer ones.
    #[serde(default)]
    pub windows: Vec<RawWindow>,
}

/// What a global limit does without Redis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Decide locally at the Redis-outage share.
    #[default]
    Open,
    /// Reject every request the limit applies to.
    Deny,
}

/// How a global limit is decided.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Every request in Redis: one round trip per decision, never over the limit.
    #[default]
    Exact,
    /// On the sidecar against the fleet's count at the last sync; counts pushed in batches.
    Approximate,
}

/// An additional window of a limit.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Window")]
pub struct RawWindow {
    /// Requests allowed per this window.
    pub max_requests: u64,
    /// Its length in seconds.
    pub window_seconds: u64,
}

/// Limit algorithm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Weighted two-window counter.
    #[default]
    SlidingWindow,
    /// Counter reset at each window boundary.
    FixedWindow,
    /// GCRA token bucket.
    TokenBucket,
}

/// Where a limit's state lives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// In this sidecar.
    #[default]
    Local,
    /// In Redis, shared by every sidecar.
    Global,
}

/// Rate-limit response fields.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "RateLimitHeaders")]
pub struct RawRateLimitHeaders {
    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers-11); default true.
    #[serde(default)]
    pub ietf: Option<bool>,
    /// `X-RateLimit-Limit`, `-Remaining`, `-Reset`; default true.
    #[serde(default)]
    pub legacy: Option<bool>,
    /// Which admitted responses carry the fields (rejections always do): `near_limit`
    /// (default: once a limit's remaining quota is below `near_limit_ratio` of it), `always`,
    /// or `never`; `true` and `false` are read as `always` and `never`.
    #[serde(default)]
    pub on_admitted: Option<RawOnAdmitted>,
    /// With `on_admitted: near_limit`, the share of the quota left below which admitted
    /// responses carry the fields; above 0, at most 1 (default 0.2).
    #[serde(default)]
    pub near_limit_ratio: Option<f64>,
}

/// `on_admitted`: a mode's name, or the older true/false.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(untagged)]
#[schemars(rename = "OnAdmitted")]
pub enum RawOnAdmitted {
    /// `true` = `always`, `false` = `never`.
    Flag(bool),
    /// `near_limit`, `always` or `never`.
    Mode(String),
}

// By hand rather than `untagged`, whose error ("did not match any variant") names no choice.
impl<'de> Deserialize<'de> for RawOnAdmitted {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RawOnAdmitted;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("near_limit, always or never")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(RawOnAdmitted::Flag(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawOnAdmitted::Mode(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Admission queue.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Queue")]
pub struct RawQueue {
    /// Requests in flight to the upstream ("workers"); changes apply live.
    pub max_concurrency: u32,
    /// Requests waiting beyond that (0 = no waiting: shed at once); changes apply live.
    pub max_size: u32,
    /// Longest wait in the queue, in milliseconds.
    pub timeout_ms: u64,
}

/// Circuit breaker.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "CircuitBreaker")]
pub struct RawCircuitBreaker {
    /// 5xx or connect errors in a row that open it.
    pub consecutive_failures: u32,
    /// How long it stays open before half-open probes, in milliseconds.
    pub open_ms: u64,
    /// Also open when this share of requests (0 < rate <= 1) failed within `window_ms`, once
    /// `min_requests` were seen there. Absent = consecutive failures only.
    #[serde(default)]
    pub error_rate: Option<f64>,
    /// Requests within `window_ms` before `error_rate` is judged (default 20).
    #[serde(default)]
    pub min_requests: Option<u32>,
    /// Span over which `error_rate` is measured, in milliseconds (default 10000).
    #[serde(default)]
    pub window_ms: Option<u64>,
    /// Requests let through while half-open; all must succeed to close (default 3).
    #[serde(default)]
    pub half_open_probes: Option<u32>,
}

/// The load indicators the sidecar computes, with the levels they alarm at. Each threshold is
/// exceeded when the value is strictly above it, as in the runbook ("> 100 requests queued").
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "LoadIndicators")]
pub struct RawLoadIndicators {
    /// Span the rate, latency and error indicators are computed over, in seconds (default 60).
    #[serde(default)]
    pub window_seconds: Option<u64>,
    /// Answers from the app within the span before error rate and latency are judged
    /// (default 20); with fewer they stay `ok` and automatic degradation ignores them.
    #[serde(default)]
    pub min_requests: Option<u32>,
    /// Requests per second answered (default: no thresholds).
    #[serde(default)]
    pub request_rate: Option<RawThresholds>,
    /// Median latency of the app's answers in milliseconds (default: no thresholds).
    #[serde(default)]
    pub latency_p50_ms: Option<RawThresholds>,
    /// 95th percentile latency in milliseconds (default warning 1000, critical 2000).
    #[serde(default)]
    pub latency_p95_ms: Option<RawThresholds>,
    /// 99th percentile latency in milliseconds (default: no thresholds).
    #[serde(default)]
    pub latency_p99_ms: Option<RawThresholds>,
    /// Share of the app's answers that failed (5xx from the app, connect/read failures,
    /// timeouts), 0..1; the sidecar's own answers are not counted (default warning 0.01,
    /// critical 0.05).
    #[serde(default)]
    pub error_rate: Option<RawThresholds>,
    /// Requests waiting in the admission queue (default warning 100, critical 500).
    #[serde(default)]
    pub queue_depth: Option<RawThresholds>,
    /// Requests in flight to the upstream (default: no thresholds).
    #[serde(default)]
    pub inflight: Option<RawThresholds>,
}

/// Warning and critical levels of one indicator; either may be left out.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Thresholds")]
pub struct RawThresholds {
    /// Above this the indicator is `warning`.
    #[serde(default)]
    pub warning: Option<f64>,
    /// Above this the indicator is `critical`.
    #[serde(default)]
    pub critical: Option<f64>,
}

/// Degradation level.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Deserialize,
    Serialize,
    JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Everything on.
    #[default]
    Full,
    /// Features listed under `levels.degraded` off.
    Degraded,
    /// Features listed under `levels.minimal` off.
    Minimal,
}

impl Level {
    /// Every level, lowest first.
    pub const ALL: [Level; 3] = [Level::Full, Level::Degraded, Level::Minimal];

    /// The level's name, as the config file, the admin plane and the metrics spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Full => "full",
            Level::Degraded => "degraded",
            Level::Minimal => "minimal",
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a level.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown level `{0}`; use full, degraded or minimal")]
pub struct UnknownLevel(pub String);

impl std::str::FromStr for Level {
    type Err = UnknownLevel;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Level::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| UnknownLevel(s.to_string()))
    }
}

/// Graceful degradation.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Degradation")]
pub struct RawDegradation {
    /// Current level (default `full`).
    #[serde(default)]
    pub level: Level,
    /// Features turned off at each level.
    #[serde(default)]
    pub levels: RawLevels,
    /// What a disabled feature's routes answer; default 503.
    #[serde(default)]
    pub fallbacks: BTreeMap<String, RawFallback>,
    /// Flag overrides: feature -> enabled (`true`/`false`), whatever the level says.
    #[serde(default)]
    pub features: BTreeMap<String, bool>,
    /// Request headers that tell the app the level and the features that are off.
    #[serde(default)]
    pub headers: Option<RawDegradationHeaders>,
    /// The response cache behind `cached` fallbacks and `aggressive_cache`.
    #[serde(default)]
    pub cache: Option<RawCache>,
    /// Serve chosen routes' GET answers from the cache even at `full` (runbook: aggressive mode).
    #[serde(default)]
    pub aggressive_cache: Option<RawAggressiveCache>,
    /// Automatic degradation from the load indicators (off by default).
    #[serde(default)]
    pub auto: Option<RawAuto>,
    /// Per-feature circuit breakers: a feature whose requests keep failing is switched to its
    /// fallback alone.
    #[serde(default)]
    pub feature_breakers: BTreeMap<String, RawCircuitBreaker>,
}

/// Names of the headers added to every request forwarded to the app; `""` sends none.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "DegradationHeaders")]
pub struct RawDegradationHeaders {
    /// Carries `full`, `degraded` or `minimal` (default `floodgate-degradation-level`).
    #[serde(default)]
    pub level: Option<String>,
    /// Carries the comma-separated features that are off (default `floodgate-disabled-features`).
    #[serde(default)]
    pub disabled_features: Option<String>,
}

/// Response cache limits.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Cache")]
pub struct RawCache {
    /// Total bytes of cached responses, least recently used evicted first (default 64 MiB).
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Largest single response cached (default 1 MiB).
    #[serde(default)]
    pub max_entry_bytes: Option<u64>,
}

/// The aggressive caching switch.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "AggressiveCache")]
pub struct RawAggressiveCache {
    /// On: GET answers of `routes` come from the cache while fresh (default false).
    #[serde(default)]
    pub enabled: bool,
    /// How long a cached answer is served, in seconds (default 300).
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    /// Routes it applies to.
    #[serde(default)]
    pub routes: Vec<String>,
}

/// Automatic degradation.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Auto")]
pub struct RawAuto {
    /// Off by default.
    #[serde(default)]
    pub enabled: bool,
    /// Calm time before stepping back one level: every rule's indicator at or below its
    /// warning threshold (and the breaker closed), in seconds (default 120).
    #[serde(default)]
    pub cooldown_seconds: Option<u64>,
    /// Default: p95 > 2000 ms, error rate > 0.05 or queue depth > 500 for 60 s -> degraded.
    #[serde(default)]
    pub rules: Option<Vec<RawAutoRule>>,
}

/// "`indicator` above `above` for `for_seconds` -> `level`".
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "AutoRule")]
pub struct RawAutoRule {
    /// A load indicator (`latency_p95_ms`, `error_rate`, `queue_depth`, ...) or `breaker_open`.
    pub indicator: String,
    /// Threshold (not used by `breaker_open`).
    #[serde(default)]
    pub above: Option<f64>,
    /// How long it must hold, in seconds.
    pub for_seconds: u64,
    /// `degraded` or `minimal`.
    pub level: Level,
}

/// Features turned off per level.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Levels")]
pub struct RawLevels {
    /// Features off at `degraded`.
    #[serde(default)]
    pub degraded: Vec<String>,
    /// Features off at `minimal`.
    #[serde(default)]
    pub minimal: Vec<String>,
}

/// What a disabled feature's routes answer: a static answer, and/or the last good answer.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Fallback")]
pub struct RawFallback {
    /// Serve the last good upstream answer to the same GET/HEAD request, remembered while
    /// the feature was on; the static answer (or 503) when there is none.
    #[serde(default)]
    pub cached: bool,
    /// How long a remembered answer may be served, in seconds (default 300).
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    /// HTTP status (default 503).
    #[serde(default)]
    pub status: Option<u16>,
    /// Response body.
    #[serde(default)]
    pub body: Option<String>,
    /// `Content-Type` of the body.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Extra response headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// For gRPC callers: the `grpc-status` to answer with (0..=16; default 14, UNAVAILABLE).
    /// gRPC callers never get the HTTP status or body above: they could not read them.
    #[serde(default)]
    pub grpc_status: Option<u8>,
    /// For gRPC callers: the `grpc-message` (default `degraded`).
    #[serde(default)]
    pub grpc_message: Option<String>,
}

/// Logging.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Logging")]
pub struct RawLogging {
    /// `text` (default) | `json`. Read at start-up only.
    #[serde(default)]
    pub format: LogFormat,
    /// One line per request at INFO, target `access` (default true).
    #[serde(default)]
    pub access_log: Option<bool>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Process settings (read at start-up only; a reload does not change them).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Server")]
pub struct RawServer {
    /// Proxy worker threads (default 1: a sidecar shares the pod's CPU with its app).
    #[serde(default)]
    pub threads: Option<usize>,
    /// On SIGTERM, longest wait for in-flight requests to finish, in milliseconds (default 30000).
    #[serde(default)]
    pub drain_timeout_ms: Option<u64>,
    /// Largest request header block accepted, in bytes; larger gets 431 (default 65536).
    #[serde(default)]
    pub max_request_header_bytes: Option<usize>,
    /// How request paths are judged: `normalize` (default: dot segments removed, slashes
    /// merged, unreserved characters decoded, and that path forwarded), `strict` (400 for any
    /// path that is not already canonical) or `off` (the raw path, as the client spelled it).
    #[serde(default)]
    pub path_normalization: Option<PathNormalization>,
    /// Longest time a client may take to send a whole request head, in milliseconds, from
    /// its first byte (a new connection: from accept); past it the connection is closed, with
    /// a 408 when part of a head was sent (default 10000).
    #[serde(default)]
    pub header_read_timeout_ms: Option<u64>,
    /// How long an idle keep-alive connection is kept for its next request, in milliseconds
    /// (default 60000; rounded up to whole seconds).
    #[serde(default)]
    pub keepalive_timeout_ms: Option<u64>,
    /// Most client connections open at once; more are closed as they arrive and counted in
    /// `floodgate_connections_refused_total` (default 10000).
    #[serde(default)]
    pub max_connections: Option<u32>,
}

/// `server.path_normalization`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PathNormalization {
    /// Canonicalise and forward the canonical path.
    #[default]
    Normalize,
    /// Refuse (400) any path that is not already canonical.
    Strict,
    /// Judge and forward the raw path. A path respelled with `..`, `//` or `%61` can then walk
    /// past a route's policy: only for apps that treat such paths as distinct.
    Off,
}

/// A scheduled override set: from each time `cron` fires, for `duration_minutes`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Schedule")]
pub struct RawSchedule {
    /// Unique name, shown in status and the audit log.
    pub name: String,
    /// When it starts: a cron expression in UTC (`minute hour day-of-month month day-of-week`,
    /// e.g. `0 8 * * 1-5` for weekdays at 08:00).
    pub cron: String,
    /// How long it holds each time, in minutes.
    pub duration_minutes: u64,
    /// Every limit's max_requests times this while it holds.
    #[serde(default)]
    pub limits_multiplier: Option<f64>,
    /// Degradation level while it holds.
    #[serde(default)]
    pub level: Option<Level>,
    /// Queue sizes while it holds.
    #[serde(default)]
    pub queue: Option<RawScheduleQueue>,
}

/// Queue sizes a schedule sets.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "ScheduleQueue")]
pub struct RawScheduleQueue {
    /// Workers.
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    /// Waiting room.
    #[serde(default)]
    pub max_size: Option<u32>,
}
