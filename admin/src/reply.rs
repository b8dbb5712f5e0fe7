//! What the sidecar answers the admin plane, in plain Rust types: the [`crate::control::Control`]
//! trait returns these, and [`crate::convert`] alone turns them into protobuf, so the sidecar
//! never builds a wire message and a proto change touches one file.

use std::fmt;
use std::time::{Duration, SystemTime};

use floodgate_config::{Level, Scope};

/// Where a knob's value comes from, lowest first: the config file, a schedule of the file's
/// in force now, the fleet's overrides (through Redis), this sidecar's own overrides. The
/// highest layer holding a knob wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Layer {
    /// The config file.
    Baseline,
    /// A `schedules:` entry of the file, active now.
    Schedule,
    /// A `--fleet` override, for every sidecar.
    Fleet,
    /// An override made on this sidecar.
    Local,
}

impl Layer {
    /// The layer's name, as `explain` and `overrides` print it.
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Baseline => "baseline",
            Layer::Schedule => "schedule",
            Layer::Fleet => "fleet",
            Layer::Local => "local",
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An override's value: what one knob is set to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// A limit's `max_requests` per window.
    MaxRequests(u64),
    /// A limit's window.
    Window(Duration),
    /// The degradation level.
    Level(Level),
    /// A feature forced on (`true`) or off at every level.
    Feature(bool),
    /// Aggressive caching on or off.
    Aggressive(bool),
    /// `queue.max_size`.
    QueueSize(u32),
    /// `queue.max_concurrency`.
    QueueWorkers(u32),
    /// A breaker held open (`true`) or closed.
    Breaker(bool),
}

impl fmt::Display for Value {
    /// The value in words, as every listing and audit entry says it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::MaxRequests(n) => write!(f, "max_requests {n}"),
            Value::Window(w) => write!(f, "window {} s", w.as_secs()),
            Value::Level(l) => f.write_str(l.as_str()),
            Value::Feature(on) => f.write_str(if *on { "enabled" } else { "disabled" }),
            Value::Aggressive(on) => f.write_str(if *on { "on" } else { "off" }),
            Value::QueueSize(n) => write!(f, "max_size {n}"),
            Value::QueueWorkers(n) => write!(f, "max_concurrency {n}"),
            Value::Breaker(open) => f.write_str(if *open {
                "forced open"
            } else {
                "forced closed"
            }),
        }
    }
}

/// One override in force.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// The knob: `limit:<name>`, `limit:<name>.window`, `level`, `feature:<name>`, ...
    pub key: String,
    /// What it is set to.
    pub value: Value,
    /// Why.
    pub reason: String,
    /// Who.
    pub author: String,
    /// When it was made.
    pub created: SystemTime,
    /// When it reverts by itself; `None`: until cleared.
    pub expires: Option<SystemTime>,
    /// The layer it sits in (never [`Layer::Baseline`]).
    pub layer: Layer,
}

/// One knob's fleet-layer value before and after a fleet change, in words (`none`: the
/// layer does not hold it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnobChange {
    /// The knob.
    pub key: String,
    /// Before.
    pub before: String,
    /// After.
    pub after: String,
}

/// What a change did (or, on a dry run, would do).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Outcome {
    /// In words, one line per touched knob after the first.
    pub summary: String,
    /// The overrides in force after it.
    pub overrides: Vec<Override>,
    /// A fleet change's fleet override version (a dry run: the current one); 0 for a local
    /// change.
    pub fleet_version: u64,
    /// Nothing was written.
    pub dry_run: bool,
    /// A fleet change: each knob's fleet-layer value before and after.
    pub changes: Vec<KnobChange>,
}

/// One knob, and why it is what it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Knob {
    /// The knob.
    pub key: String,
    /// The value in force, in words.
    pub value: String,
    /// The layer that set it.
    pub layer: Layer,
    /// Who set it (empty for the baseline).
    pub author: String,
    /// Why (empty for the baseline).
    pub reason: String,
    /// When that layer's value runs out.
    pub expires: Option<SystemTime>,
    /// What is in force once it expires or is cleared, and that value's layer; `None` when
    /// the value is the baseline's.
    pub falls_back: Option<(String, Layer)>,
    /// A schedule an operator suspended for this knob, and until when.
    pub suspended: Option<(String, SystemTime)>,
}

/// One limit as it is now, beside the file's.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitStatus {
    /// Name.
    pub name: String,
    /// Counted here or across the fleet.
    pub scope: Scope,
    /// In force.
    pub max_requests: u64,
    /// In force.
    pub window: Duration,
    /// The file's.
    pub baseline_max_requests: u64,
    /// The file's.
    pub baseline_window: Duration,
    /// Busiest key's use of the limit (1 = at the limit), from the last second's sweep.
    pub utilization: f64,
}

/// The degradation state.
#[derive(Debug, Clone, PartialEq)]
pub struct Degradation {
    /// In force.
    pub level: Level,
    /// What the load indicators ask for.
    pub auto_level: Level,
    /// Pinned by an operator.
    pub manual_level: Option<Level>,
    /// Features off now.
    pub disabled_features: Vec<String>,
    /// Aggressive caching.
    pub aggressive_cache: bool,
}

/// The admission queue (only with a `queue` section).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueStatus {
    /// Waiting now.
    pub depth: u32,
    /// May wait.
    pub max_size: u32,
    /// In flight to the upstream now.
    pub inflight: u32,
    /// May be in flight ("workers").
    pub max_concurrency: u32,
    /// Requests leaving the queue per second, lately.
    pub drain_rate_per_second: f64,
}

/// A circuit breaker's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerStatus {
    /// `upstream` or `feature:<name>`.
    pub name: String,
    /// `closed`, `half_open` or `open`.
    pub state: String,
}

/// A load indicator's reading.
#[derive(Debug, Clone, PartialEq)]
pub struct IndicatorStatus {
    /// Name, as the config spells it.
    pub name: String,
    /// Reading.
    pub value: f64,
    /// `ok`, `warning` or `critical`.
    pub level: String,
    /// Threshold, if configured.
    pub warning: Option<f64>,
    /// Threshold, if configured.
    pub critical: Option<f64>,
}

/// Everything `floodgatectl status` shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// Reloads applied (1 = the file as started).
    pub config_version: u64,
    /// The upstream's address.
    pub upstream: String,
    /// Worst load indicator level: `ok`, `warning` or `critical`.
    pub load_level: String,
    /// Degradation.
    pub degradation: Degradation,
    /// Limits.
    pub limits: Vec<LimitStatus>,
    /// The queue, if configured.
    pub queue: Option<QueueStatus>,
    /// Breakers.
    pub breakers: Vec<BreakerStatus>,
    /// Load indicators.
    pub indicators: Vec<IndicatorStatus>,
    /// Overrides in force, every layer.
    pub overrides: u32,
    /// Fleet sync: `off` (no redis), `ok`, or why not.
    pub fleet: String,
    /// Fleet override version applied here.
    pub fleet_version: u64,
    /// The sidecar's version.
    pub version: String,
    /// Requests refused by policy since start, by reason.
    pub shed: Vec<(String, u64)>,
    /// The config's schedules: which hold now and when each starts next.
    pub schedules: Vec<ScheduleStatus>,
    /// Each listener bound at start, with its upstream, queue and breaker.
    pub listeners: Vec<ListenerStatus>,
}

/// One listener (port) of the sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerStatus {
    /// Its name (`default` in the one-listener form).
    pub name: String,
    /// Where it listens.
    pub listen: String,
    /// Its upstream; `None` once a reload removed the listener (its port answers 503).
    pub upstream: Option<String>,
    /// Requests waiting in its queue.
    pub queue_depth: u32,
    /// Its requests in flight to its upstream.
    pub inflight: u32,
    /// Its breaker's state (`closed`, `half_open`, `open`); `None` without a breaker.
    pub breaker: Option<String>,
}

/// One of the config's `schedules`, seen from now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleStatus {
    /// Name.
    pub name: String,
    /// When the activation holding now ends; `None`: not active.
    pub active_until: Option<SystemTime>,
    /// When it next starts; `None`: never again.
    pub next_start: Option<SystemTime>,
}

/// One sidecar of the fleet, as its last heartbeat said.
#[derive(Debug, Clone, PartialEq)]
pub struct Sidecar {
    /// `pod/listen`.
    pub id: String,
    /// Pod.
    pub pod: String,
    /// Its config version.
    pub config_version: u64,
    /// The fleet override version it applied.
    pub applied_version: u64,
    /// Requests per second.
    pub rps: f64,
    /// 5xx share.
    pub error_rate: f64,
    /// p95 latency.
    pub p95_ms: f64,
    /// Since its last heartbeat.
    pub silent_for: Duration,
    /// Silent for too long: killed, hung or cut off.
    pub stale: bool,
}

/// The fleet, as Redis knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetStatus {
    /// The fleet's override version.
    pub version: u64,
    /// Every expected sidecar, by id.
    pub sidecars: Vec<Sidecar>,
    /// Heard from within this long: expected to apply fleet changes.
    pub expected: Duration,
    /// Not heard from for this long: stale.
    pub stale: Duration,
}

/// Something that happened on the sidecar, for `floodgatectl watch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// When.
    pub time: SystemTime,
    /// `override`, `level`, `breaker`, ...
    pub kind: String,
    /// In words.
    pub summary: String,
}
