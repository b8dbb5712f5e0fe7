//! The validated config: what the proxy runs on. Every reference is resolved and every number
//! is in range, so nothing downstream re-checks the file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64};
use std::time::Duration;

pub use crate::raw::{
    FailureMode, Level, LogFormat, Mode, PathNormalization, Priority, Role, Scope, Strategy,
    UnknownLevel, UpstreamProtocol,
};

/// A checked Floodgate configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The ports the sidecar accepts traffic on, each with its own upstream; never empty.
    /// The one-listener form (top-level `listen` + `upstream`) is one named `default`.
    pub listeners: Vec<Listener>,
    /// The file used `listeners:` (or the command line `--listener`) rather than the
    /// one-listener form; metrics then carry a `listener` label.
    pub named_listeners: bool,
    /// Metrics/health listen address, if any.
    pub metrics_listen: Option<SocketAddr>,
    /// Admin plane.
    pub admin: Option<Admin>,
    /// Redis (accepted, not yet enforced).
    pub redis: Option<Redis>,
    /// Routes in match order.
    pub routes: Vec<Route>,
    /// Rate limits (accepted, not yet enforced).
    pub limits: Vec<Limit>,
    /// Rate-limit response fields to send.
    pub rate_limit_headers: RateLimitHeaders,
    /// Admission queue; `None` = no cap on requests to the app.
    pub queue: Option<Queue>,
    /// Circuit breaker; `None` = never opens.
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Load indicators and thresholds (defaults from the runbook).
    pub load_indicators: LoadIndicators,
    /// Degradation (accepted, not yet enforced).
    pub degradation: Degradation,
    /// Scheduled overrides.
    pub schedules: Vec<Schedule>,
    /// Logging.
    pub logging: Logging,
    /// Process settings, read at start-up only.
    pub server: Server,
}

/// Name of the one listener of the one-listener form (top-level `listen` + `upstream`).
pub const DEFAULT_LISTENER: &str = "default";

/// One port the sidecar accepts traffic on, and the app port it forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Unique name (`default` in the one-listener form); routes may match on it.
    pub name: String,
    /// Inbound listen address.
    pub listen: SocketAddr,
    /// The app port behind it.
    pub upstream: Upstream,
}

impl Config {
    /// The listener named `name`, if any.
    pub fn listener(&self, name: &str) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.name == name)
    }

    /// The config key of `listener`'s `listen` as the file spells it: `listen` in the
    /// one-listener form, `listeners.NAME.listen` otherwise.
    pub fn listen_key(&self, listener: &str) -> String {
        if self.named_listeners {
            format!("listeners.{listener}.listen")
        } else {
            "listen".to_string()
        }
    }
}

/// The app behind the sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `host:port` as written; the proxy resolves it when it loads the config.
    pub address: String,
    /// TCP connect budget.
    pub connect_timeout: Duration,
    /// Budget between two reads of the response.
    pub read_timeout: Duration,
    /// Budget between two writes of the request.
    pub write_timeout: Duration,
    /// Idle time after which a pooled connection is closed.
    pub idle_timeout: Duration,
    /// Protocol to the app.
    pub protocol: UpstreamProtocol,
}

impl Upstream {
    /// An upstream at `address` with the documented defaults: connect 1 s, read and write
    /// 30 s, idle 60 s, protocol `auto`.
    pub fn with_address(address: String) -> Self {
        Self {
            address,
            connect_timeout: Duration::from_millis(1000),
            read_timeout: Duration::from_millis(30_000),
            write_timeout: Duration::from_millis(30_000),
            idle_timeout: Duration::from_millis(60_000),
            protocol: UpstreamProtocol::Auto,
        }
    }
}

/// Admin plane settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Token files and roles.
    pub tokens: Vec<(String, Role)>,
    /// Audit log file.
    pub audit_log: Option<String>,
    /// TLS of the admin port.
    pub tls: Option<AdminTls>,
    /// A non-loopback `listen` without TLS was allowed on purpose.
    pub allow_insecure: bool,
}

/// TLS of the admin port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTls {
    /// Server certificate chain (PEM).
    pub cert_file: String,
    /// Private key (PEM).
    pub key_file: String,
    /// Client CA (PEM): mutual TLS when set.
    pub client_ca_file: Option<String>,
}

/// Where Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server.
    Standalone(String),
    /// Cluster seed nodes.
    Cluster(Vec<String>),
}

/// Redis settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redis {
    /// Server or cluster.
    pub target: RedisTarget,
    /// Per-decision budget.
    pub timeout: Duration,
    /// Share divisor while Redis is unreachable.
    pub expected_replicas: NonZeroU32,
}

/// A route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Unique name.
    pub name: String,
    /// Path condition.
    pub path: PathMatch,
    /// Allowed methods (upper case); `None` = any.
    pub methods: Option<Vec<String>>,
    /// Host condition (lower case, no port).
    pub host: Option<String>,
    /// Header conditions (lower-case names).
    pub headers: Vec<(String, String)>,
    /// The listener the request came in on, when the route is for one only.
    pub listener: Option<String>,
    /// Degradation feature.
    pub feature: Option<String>,
    /// Priority.
    pub priority: Priority,
}

/// How a route matches the path.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// Any path.
    Any,
    /// Starts with.
    Prefix(String),
    /// Equals.
    Exact(String),
    /// Regular expression, already compiled.
    Regex(regex::Regex),
}

/// One component of a limit key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyPart {
    /// Peer address of the client.
    ClientIp,
    /// Route name.
    Route,
    /// Request method.
    Method,
    /// Request path.
    Path,
    /// A request header's value (lower-case name); a missing header is its own bucket.
    Header(String),
}

/// A rate limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// Unique name.
    pub name: String,
    /// Routes it applies to; `None` = all.
    pub routes: Option<Vec<String>>,
    /// Key shape.
    pub key: Vec<KeyPart>,
    /// Requests per window.
    pub max_requests: NonZeroU64,
    /// Window length.
    pub window: Duration,
    /// Algorithm.
    pub strategy: Strategy,
    /// Local or global.
    pub scope: Scope,
    /// Report only.
    pub shadow: bool,
    /// Global limits without Redis: decide locally or reject.
    pub failure_mode: FailureMode,
    /// Global limits: decided per request in Redis, or approximately on the sidecar.
    pub mode: Mode,
    /// With [`Mode::Approximate`]: how often counts are pushed and the fleet's read back.
    pub sync_interval: Duration,
    /// More windows on the same key: `(max_requests, window)`.
    pub extra_windows: Vec<(NonZeroU64, Duration)>,
}

/// Rate-limit response fields to send.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitHeaders {
    /// `RateLimit-Policy` / `RateLimit`.
    pub ietf: bool,
    /// `X-RateLimit-*`.
    pub legacy: bool,
    /// Which admitted responses carry them (rejections always do).
    pub on_admitted: OnAdmitted,
    /// With [`OnAdmitted::NearLimit`]: the share of the quota left below which they do.
    pub near_limit_ratio: f64,
}

/// Which admitted responses carry the rate-limit fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnAdmitted {
    /// Once the quota left is below `near_limit_ratio` of the limit, as Envoy's ratelimit
    /// service reports "near limit": a client learns it is close, and the fields cost nothing
    /// while it is not.
    NearLimit,
    /// Every admitted response.
    Always,
    /// None: only rejections (429).
    Never,
}

impl OnAdmitted {
    /// The name the config spells it with.
    pub fn as_str(self) -> &'static str {
        match self {
            OnAdmitted::NearLimit => "near_limit",
            OnAdmitted::Always => "always",
            OnAdmitted::Never => "never",
        }
    }
}

/// Admission queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queue {
    /// In-flight cap.
    pub max_concurrency: NonZeroU32,
    /// Waiting cap.
    pub max_size: u32,
    /// Longest wait.
    pub timeout: Duration,
}

/// Largest `max_requests`, in the file and by any override: counts must stay exact as Redis's
/// Lua numbers (doubles, printed with 14 significant digits), and no real limit comes near it.
pub const MAX_REQUESTS: u64 = 1_000_000_000_000;

/// Circuit breaker.
#[derive(Debug, Clone, PartialEq)]
pub struct CircuitBreaker {
    /// Failures in a row that open it.
    pub consecutive_failures: NonZeroU32,
    /// Open time before probes.
    pub open: Duration,
    /// Failure share that opens it, when set (0 < rate <= 1).
    pub error_rate: Option<f64>,
    /// Requests in the window before the rate is judged.
    pub min_requests: NonZeroU32,
    /// Span the rate is measured over.
    pub window: Duration,
    /// Probes let through while half-open.
    pub half_open_probes: NonZeroU32,
}

impl Default for CircuitBreaker {
    /// The documented defaults of the optional fields (`min_requests` 20, `window_ms` 10000,
    /// `half_open_probes` 3), with 5 failures in a row and 10 s open for the required ones.
    fn default() -> Self {
        Self {
            consecutive_failures: NonZeroU32::MIN.saturating_add(4),
            open: Duration::from_secs(10),
            error_rate: None,
            min_requests: NonZeroU32::MIN.saturating_add(19),
            window: Duration::from_secs(10),
            half_open_probes: NonZeroU32::MIN.saturating_add(2),
        }
    }
}

/// A load indicator the sidecar computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Indicator {
    /// Responses per second.
    RequestRate,
    /// Median latency, ms.
    LatencyP50Ms,
    /// 95th percentile latency, ms.
    LatencyP95Ms,
    /// 99th percentile latency, ms.
    LatencyP99Ms,
    /// Share of the app's answers that failed (the sidecar's own refusals excluded).
    ErrorRate,
    /// Requests waiting in the queue.
    QueueDepth,
    /// Requests in flight to the app.
    Inflight,
}

impl Indicator {
    /// Every indicator, in the order status reports list them.
    pub const ALL: [Indicator; 7] = [
        Indicator::RequestRate,
        Indicator::LatencyP50Ms,
        Indicator::LatencyP95Ms,
        Indicator::LatencyP99Ms,
        Indicator::ErrorRate,
        Indicator::QueueDepth,
        Indicator::Inflight,
    ];

    /// The config key and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Indicator::RequestRate => "request_rate",
            Indicator::LatencyP50Ms => "latency_p50_ms",
            Indicator::LatencyP95Ms => "latency_p95_ms",
            Indicator::LatencyP99Ms => "latency_p99_ms",
            Indicator::ErrorRate => "error_rate",
            Indicator::QueueDepth => "queue_depth",
            Indicator::Inflight => "inflight",
        }
    }
}

/// Warning and critical levels of one indicator (exceeded when strictly above).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Thresholds {
    /// Warning level.
    pub warning: Option<f64>,
    /// Critical level.
    pub critical: Option<f64>,
}

/// Load indicator settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadIndicators {
    /// Span of the rate, latency and error indicators.
    pub window: Duration,
    /// App answers within the span before error rate and latency may leave `ok` (>= 1).
    pub min_requests: u32,
    /// Thresholds, indexed like [`Indicator::ALL`].
    pub thresholds: [Thresholds; 7],
}

impl LoadIndicators {
    /// The thresholds of `i`.
    pub fn thresholds(&self, i: Indicator) -> Thresholds {
        self.thresholds[Indicator::ALL.iter().position(|&x| x == i).unwrap_or(0)]
    }
}

impl Default for LoadIndicators {
    /// The runbook's: queue depth 100/500, p95 1000/2000 ms, error rate 1%/5%, over 60 s,
    /// judged once 20 answers from the app are in the span.
    fn default() -> Self {
        let t = |w, c| Thresholds {
            warning: Some(w),
            critical: Some(c),
        };
        let none = Thresholds::default();
        Self {
            window: Duration::from_secs(60),
            min_requests: 20,
            thresholds: [
                none,
                none,
                t(1000.0, 2000.0),
                none,
                t(0.01, 0.05),
                t(100.0, 500.0),
                none,
            ],
        }
    }
}

/// Degradation settings.
#[derive(Debug, Clone, Default)]
pub struct Degradation {
    /// Baseline level.
    pub level: Level,
    /// Features off at `degraded`.
    pub degraded: Vec<String>,
    /// Features off at `minimal`.
    pub minimal: Vec<String>,
    /// Fallbacks per feature.
    pub fallbacks: BTreeMap<String, Fallback>,
    /// Flag overrides: feature -> enabled.
    pub features: BTreeMap<String, bool>,
    /// Header carrying the level to the app (`None` = not sent).
    pub level_header: Option<String>,
    /// Header carrying the disabled features to the app (`None` = not sent).
    pub features_header: Option<String>,
    /// Response cache limits.
    pub cache: CacheLimits,
    /// Aggressive caching switch.
    pub aggressive_cache: AggressiveCache,
    /// Automatic degradation.
    pub auto: AutoDegradation,
    /// Per-feature breakers.
    pub feature_breakers: BTreeMap<String, CircuitBreaker>,
}

impl Degradation {
    /// Every feature the file names (routes, levels, fallbacks, flags, breakers), sorted.
    pub fn features_named(&self, routes: &[Route]) -> Vec<String> {
        let mut all: std::collections::BTreeSet<String> =
            routes.iter().filter_map(|r| r.feature.clone()).collect();
        all.extend(self.degraded.iter().cloned());
        all.extend(self.minimal.iter().cloned());
        all.extend(self.fallbacks.keys().cloned());
        all.extend(self.features.keys().cloned());
        all.extend(self.feature_breakers.keys().cloned());
        all.into_iter().collect()
    }
}

/// What a disabled feature's routes answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fallback {
    /// Serve the last good answer for up to this long, when set.
    pub cached: Option<Duration>,
    /// The static answer, when one is configured (else a 503 problem).
    pub answer: Option<StaticAnswer>,
    /// What gRPC callers get instead (they cannot read an HTTP status or body).
    pub grpc: GrpcAnswer,
}

/// The gRPC status and message of a fallback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcAnswer {
    /// `grpc-status` (default 14, UNAVAILABLE).
    pub status: u8,
    /// `grpc-message`, when configured (else `degraded`).
    pub message: Option<String>,
}

impl Default for GrpcAnswer {
    fn default() -> Self {
        Self {
            status: 14,
            message: None,
        }
    }
}

/// A static fallback answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticAnswer {
    /// Status code.
    pub status: u16,
    /// Body.
    pub body: String,
    /// Content type.
    pub content_type: Option<String>,
    /// Extra headers (lower-case names).
    pub headers: Vec<(String, String)>,
}

/// Response cache limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Total bytes.
    pub max_bytes: u64,
    /// Largest entry.
    pub max_entry_bytes: u64,
}

impl Default for CacheLimits {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            max_entry_bytes: 1 << 20,
        }
    }
}

/// The aggressive caching switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggressiveCache {
    /// On.
    pub enabled: bool,
    /// Freshness.
    pub ttl: Duration,
    /// Routes it applies to.
    pub routes: Vec<String>,
}

impl Default for AggressiveCache {
    fn default() -> Self {
        Self {
            enabled: false,
            ttl: Duration::from_secs(300),
            routes: Vec::new(),
        }
    }
}

/// Automatic degradation.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoDegradation {
    /// On.
    pub enabled: bool,
    /// Calm time before stepping back one level.
    pub cooldown: Duration,
    /// Rules.
    pub rules: Vec<AutoRule>,
}

impl Default for AutoDegradation {
    fn default() -> Self {
        let rule = |i, above| AutoRule {
            trigger: Trigger::Above(i, above),
            sustain: Duration::from_secs(60),
            level: Level::Degraded,
        };
        Self {
            enabled: false,
            cooldown: Duration::from_secs(120),
            rules: vec![
                rule(Indicator::LatencyP95Ms, 2000.0),
                rule(Indicator::ErrorRate, 0.05),
                rule(Indicator::QueueDepth, 500.0),
            ],
        }
    }
}

/// One automatic degradation rule.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoRule {
    /// What must hold.
    pub trigger: Trigger,
    /// For how long.
    pub sustain: Duration,
    /// The level it asks for.
    pub level: Level,
}

/// The condition of an [`AutoRule`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Trigger {
    /// An indicator strictly above a value.
    Above(Indicator, f64),
    /// The upstream's circuit breaker is open.
    BreakerOpen,
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logging {
    /// Line format.
    pub format: LogFormat,
    /// Access log on.
    pub access_log: bool,
}

/// Process settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// Proxy worker threads.
    pub threads: usize,
    /// SIGTERM drain budget.
    pub drain_timeout: Duration,
    /// Request header block cap (431 past it).
    pub max_request_header_bytes: usize,
    /// How request paths are canonicalised.
    pub path_normalization: PathNormalization,
    /// Deadline for a whole request head.
    pub header_read_timeout: Duration,
    /// Idle keep-alive time between requests.
    pub keepalive_timeout: Duration,
    /// Most client connections at once.
    pub max_connections: u32,
}

/// A scheduled override set.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// Name.
    pub name: String,
    /// Cron expression (validated), UTC.
    pub cron: String,
    /// How long it holds.
    pub duration: Duration,
    /// Limits multiplier.
    pub limits_multiplier: Option<f64>,
    /// Level.
    pub level: Option<Level>,
    /// Queue workers.
    pub queue_max_concurrency: Option<u32>,
    /// Queue size.
    pub queue_max_size: Option<u32>,
}
