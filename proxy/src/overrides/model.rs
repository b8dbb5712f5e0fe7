//! What an override changes ([`Kind`]), one override ([`Override`]), the layers they sit in
//! with the audit trail ([`AdminState`]), and the config they make with the file
//! ([`effective_config`]).

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::time::{Duration, SystemTime};

use floodgate_admin::reply::{Layer, Value};
use floodgate_config::{Config, Level};
use tracing::{error, info};

/// Audit entries kept in memory for `floodgatectl audit`.
const AUDIT_KEPT: usize = 1000;

/// What an override changes.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A limit's `max_requests` per window.
    Limit {
        /// Limit name.
        name: String,
        /// max_requests in force.
        max_requests: u64,
    },
    /// A limit's window: a knob of its own, so raising the count for an hour does not also
    /// pin a window somebody changed for another reason.
    Window {
        /// Limit name.
        name: String,
        /// Window in force.
        window: Duration,
    },
    /// The degradation level.
    Level(Level),
    /// One feature on or off.
    Feature {
        /// Feature.
        name: String,
        /// On.
        enabled: bool,
    },
    /// `queue.max_size`: requests that may wait.
    QueueSize(u32),
    /// `queue.max_concurrency`: requests in flight to the upstream ("workers").
    QueueWorkers(u32),
    /// The aggressive caching switch (the runbook's aggressive mode).
    Aggressive(bool),
    /// A breaker held open (`true`) or closed: `upstream` or `feature:<name>`.
    Breaker {
        /// The breaker.
        name: String,
        /// Held open; else held closed.
        open: bool,
    },
}

impl Kind {
    /// The key an override of this kind is stored and listed under.
    pub fn key(&self) -> String {
        match self {
            Kind::Limit { name, .. } => format!("limit:{name}"),
            // Not `limit:NAME.window`: a limit's name may hold a dot.
            Kind::Window { name, .. } => format!("window:{name}"),
            Kind::Level(_) => "level".into(),
            Kind::Aggressive(_) => "aggressive_cache".into(),
            Kind::Feature { name, .. } => format!("feature:{name}"),
            Kind::QueueSize(_) => "queue.max_size".into(),
            Kind::QueueWorkers(_) => "queue.max_concurrency".into(),
            Kind::Breaker { name, .. } => format!("breaker:{name}"),
        }
    }

    /// True when applying it means rebuilding the snapshot from the config (limits, queue);
    /// the others only change the degradation state.
    pub(crate) fn is_structural(&self) -> bool {
        matches!(
            self,
            Kind::Limit { .. } | Kind::Window { .. } | Kind::QueueSize(_) | Kind::QueueWorkers(_)
        )
    }

    /// The value it sets, typed (what the admin plane reports).
    pub fn value(&self) -> Value {
        match self {
            Kind::Limit { max_requests, .. } => Value::MaxRequests(*max_requests),
            Kind::Window { window, .. } => Value::Window(*window),
            Kind::Level(l) => Value::Level(*l),
            Kind::Aggressive(on) => Value::Aggressive(*on),
            Kind::Feature { enabled, .. } => Value::Feature(*enabled),
            Kind::QueueSize(n) => Value::QueueSize(*n),
            Kind::QueueWorkers(n) => Value::QueueWorkers(*n),
            Kind::Breaker { open, .. } => Value::Breaker(*open),
        }
    }

    /// The value in words, as listings, reports and the audit log say it.
    pub(crate) fn describe(&self) -> String {
        self.value().to_string()
    }
}

/// One override in force.
#[derive(Debug, Clone)]
pub struct Override {
    /// What.
    pub kind: Kind,
    /// Why.
    pub reason: String,
    /// Who.
    pub author: String,
    /// When made.
    pub created: SystemTime,
    /// When it reverts.
    pub expires: Option<SystemTime>,
}

/// Overrides and the audit trail.
#[derive(Debug, Default)]
pub struct AdminState {
    /// This sidecar's own overrides (they win over the fleet's on the same key).
    pub(crate) overrides: BTreeMap<String, Override>,
    /// The fleet's overrides, as last read from Redis.
    pub(crate) fleet: BTreeMap<String, Override>,
    /// Overrides of the config's `schedules` holding now (the fleet's and the sidecar's win).
    pub(crate) scheduled: BTreeMap<String, Override>,
    /// Keys whose schedule activation an operator's `clear`/`restore` suspended: the
    /// schedule's name and when it next starts (it holds the key again from then).
    pub(crate) suspended: BTreeMap<String, (String, SystemTime)>,
    /// Schedules holding now, by name, for one audit entry when each starts and ends.
    pub(crate) active_schedules: std::collections::BTreeSet<String>,
    pub(crate) fleet_version: u64,
    fleet_state: String,
    pub(crate) audit: VecDeque<String>,
    audit_file: Option<String>,
}

impl AdminState {
    /// State writing its audit lines to `audit_file`, if any; `fleet` says whether Redis is
    /// configured for fleet sync.
    pub fn new(audit_file: Option<String>, fleet: bool) -> Self {
        Self {
            audit_file,
            fleet_state: if fleet { "starting" } else { "off" }.into(),
            ..Self::default()
        }
    }

    /// The override in force for `key` and its layer, the highest of local, fleet and
    /// schedule (`None`: the config's baseline).
    pub fn holder(&self, key: &str) -> Option<(&Override, Layer)> {
        self.overrides
            .get(key)
            .map(|o| (o, Layer::Local))
            .or_else(|| self.fleet.get(key).map(|o| (o, Layer::Fleet)))
            .or_else(|| self.scheduled.get(key).map(|o| (o, Layer::Schedule)))
    }

    /// The fleet override version applied here.
    pub fn fleet_version(&self) -> u64 {
        self.fleet_version
    }

    /// `off`, `starting`, `ok`, or why the fleet cannot be reached.
    pub fn fleet_state(&self) -> &str {
        &self.fleet_state
    }

    /// Records the fleet sync's state.
    pub fn set_fleet_state(&mut self, s: String) {
        self.fleet_state = s;
    }

    /// For each knob, the override in force at `now`: the highest layer's (local over fleet
    /// over schedule) whose TTL has not run out, so a person's change beats the clock's and
    /// an expired one gives way at once, before the sweeper removes it.
    pub(crate) fn in_force(&self, now: SystemTime) -> impl Iterator<Item = &Override> {
        let keys: std::collections::BTreeSet<&String> = self
            .overrides
            .keys()
            .chain(self.fleet.keys())
            .chain(self.scheduled.keys())
            .collect();
        keys.into_iter().filter_map(move |k| {
            [
                self.overrides.get(k),
                self.fleet.get(k),
                self.scheduled.get(k),
            ]
            .into_iter()
            .flatten()
            .find(|o| o.expires.is_none_or(|e| e > now))
        })
    }

    pub(crate) fn record(&mut self, entry: serde_json::Value) {
        let line = entry.to_string();
        info!(target: "audit", "{line}");
        if let Some(path) = &self.audit_file {
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| writeln!(f, "{line}"));
            if let Err(e) = written {
                error!(path, "cannot append to admin.audit_log: {e}");
            }
        }
        if self.audit.len() == AUDIT_KEPT {
            self.audit.pop_front();
        }
        self.audit.push_back(line);
    }
}

/// `max` × `multiplier`, rounded, at least 1 and at most the config's cap
/// ([`floodgate_config::MAX_REQUESTS`]).
pub(crate) fn scaled(max: u64, multiplier: f64) -> u64 {
    ((max as f64 * multiplier).round().max(1.0) as u64).min(floodgate_config::MAX_REQUESTS)
}

/// What the config file alone gives `key`, for "before -> after" reports.
pub fn baseline(file: &Config, key: &str) -> String {
    let on = |b: bool| if b { "on" } else { "off" }.to_string();
    if let Some(name) = key.strip_prefix("limit:") {
        return file
            .limits
            .iter()
            .find(|l| l.name == name)
            .map_or("none".into(), |l| {
                format!("max_requests {}", l.max_requests)
            });
    }
    if let Some(name) = key.strip_prefix("window:") {
        return file
            .limits
            .iter()
            .find(|l| l.name == name)
            .map_or("none".into(), |l| {
                format!("window {} s", l.window.as_secs())
            });
    }
    if let Some(name) = key.strip_prefix("feature:") {
        return match file.degradation.features.get(name) {
            Some(&b) => if b { "enabled" } else { "disabled" }.into(),
            None => "as the level says".into(),
        };
    }
    if key.starts_with("breaker:") {
        return "not forced".into();
    }
    match key {
        "level" => file.degradation.level.as_str().to_string(),
        "aggressive_cache" => on(file.degradation.aggressive_cache.enabled),
        "queue.max_size" => file
            .queue
            .as_ref()
            .map_or("none".into(), |q| format!("max_size {}", q.max_size)),
        "queue.max_concurrency" => file.queue.as_ref().map_or("none".into(), |q| {
            format!("max_concurrency {}", q.max_concurrency)
        }),
        _ => "baseline".into(),
    }
}

/// Every knob an operator can change in `file`: each limit's size and window, the level, each feature, the
/// queue's two sizes (with a queue), aggressive caching, each breaker's forced state.
pub fn knobs(file: &Config, features: &[String]) -> Vec<String> {
    let mut out: Vec<String> = file
        .limits
        .iter()
        .flat_map(|l| [format!("limit:{}", l.name), format!("window:{}", l.name)])
        .collect();
    out.push("level".into());
    out.extend(features.iter().map(|f| format!("feature:{f}")));
    if file.queue.is_some() {
        out.push("queue.max_size".into());
        out.push("queue.max_concurrency".into());
    }
    out.push("aggressive_cache".into());
    if file.circuit_breaker.is_some() {
        out.push("breaker:upstream".into());
    }
    out.extend(
        file.degradation
            .feature_breakers
            .keys()
            .map(|f| format!("breaker:feature:{f}")),
    );
    out
}

/// `key`'s layers from the top: each override holding it (local, fleet, schedule), then
/// the baseline. The first is in force; the next is what it falls back to.
pub fn chain<'a>(admin: &'a AdminState, key: &str) -> Vec<(&'a Override, Layer)> {
    [
        (admin.overrides.get(key), Layer::Local),
        (admin.fleet.get(key), Layer::Fleet),
        (admin.scheduled.get(key), Layer::Schedule),
    ]
    .into_iter()
    .filter_map(|(o, layer)| o.map(|o| (o, layer)))
    .collect()
}

/// `key`'s value in force and where it comes from, as `value (layer: who)`.
pub fn in_effect(file: &Config, admin: &AdminState, key: &str) -> (String, Layer) {
    match admin.holder(key) {
        Some((o, layer)) => (o.kind.describe(), layer),
        None => (baseline(file, key), Layer::Baseline),
    }
}

/// The file's config with the limit and queue overrides in force at `now` applied: a pure
/// function of the baseline, the layers and the clock.
pub fn effective_config(file: &Config, admin: &AdminState, now: SystemTime) -> Config {
    let mut cfg = file.clone();
    for o in admin.in_force(now) {
        match &o.kind {
            Kind::Limit { name, max_requests } => {
                if let (Some(l), Some(n)) = (
                    cfg.limits.iter_mut().find(|l| &l.name == name),
                    std::num::NonZeroU64::new(*max_requests),
                ) {
                    l.max_requests = n;
                }
            }
            Kind::Window { name, window } => {
                if let Some(l) = cfg.limits.iter_mut().find(|l| &l.name == name) {
                    l.window = *window;
                }
            }
            Kind::QueueSize(n) => {
                if let Some(q) = cfg.queue.as_mut() {
                    q.max_size = *n;
                }
            }
            Kind::QueueWorkers(n) => {
                if let (Some(q), Some(c)) = (cfg.queue.as_mut(), std::num::NonZeroU32::new(*n)) {
                    q.max_concurrency = c;
                }
            }
            Kind::Level(_) | Kind::Feature { .. } | Kind::Aggressive(_) | Kind::Breaker { .. } => {}
        }
    }
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let src = format!(
            "listen: 127.0.0.1:8080\nupstream: {{ address: 127.0.0.1:3000 }}\nlimits:\n  - {{ name: api, max_requests: 100, window_seconds: 60 }}\n{extra}"
        );
        floodgate_config::parse(&src, std::path::Path::new("t.yaml")).unwrap()
    }

    /// Every combination of the three layers holding a limit, with every order of their
    /// expiries, read at each moment between them: the highest layer whose TTL has not run
    /// out is in force, else the baseline.
    #[test]
    fn effective_is_the_highest_unexpired_layer_for_every_combination_and_expiry_order() {
        use std::time::Duration;
        let base = config("");
        let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        // Values per layer: local 400, fleet 300, schedule 200; baseline 100.
        let layers = [("local", 400u64), ("fleet", 300), ("schedule", 200)];
        let orders: [[u64; 3]; 6] = [
            [10, 20, 30],
            [10, 30, 20],
            [20, 10, 30],
            [20, 30, 10],
            [30, 10, 20],
            [30, 20, 10],
        ];
        for present in 0u8..8 {
            for expiries in orders {
                let mut admin = AdminState::new(None, false);
                for (i, (layer, max)) in layers.iter().enumerate() {
                    if present & (1 << i) == 0 {
                        continue;
                    }
                    let o = Override {
                        kind: Kind::Limit {
                            name: "api".into(),
                            max_requests: *max,
                        },
                        reason: String::new(),
                        author: (*layer).into(),
                        created: at(0),
                        expires: Some(at(expiries[i])),
                    };
                    let map = match *layer {
                        "local" => &mut admin.overrides,
                        "fleet" => &mut admin.fleet,
                        _ => &mut admin.scheduled,
                    };
                    map.insert("limit:api".into(), o);
                }
                for now in [0, 15, 25, 35] {
                    let want = layers
                        .iter()
                        .enumerate()
                        .find(|(i, _)| present & (1 << i) != 0 && expiries[*i] > now)
                        .map_or(100, |(_, (_, max))| *max);
                    let got = effective_config(&base, &admin, at(now)).limits[0]
                        .max_requests
                        .get();
                    assert_eq!(
                        got, want,
                        "layers {present:03b}, expiries {expiries:?}, at {now} s"
                    );
                }
            }
        }
    }

    #[test]
    fn a_limits_count_and_window_are_two_knobs_each_with_its_own_expiry() {
        let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let base = config("");
        let mut admin = AdminState::new(None, false);
        let made = |kind: Kind, expires: u64| Override {
            kind,
            reason: String::new(),
            author: "sre".into(),
            created: at(0),
            expires: Some(at(expires)),
        };
        for o in [
            made(
                Kind::Limit {
                    name: "api".into(),
                    max_requests: 2000,
                },
                10,
            ),
            made(
                Kind::Window {
                    name: "api".into(),
                    window: Duration::from_secs(30),
                },
                20,
            ),
        ] {
            admin.overrides.insert(o.kind.key(), o);
        }
        assert_eq!(
            admin.overrides.keys().collect::<Vec<_>>(),
            ["limit:api", "window:api"]
        );
        let limit = |now| {
            let l = effective_config(&base, &admin, at(now)).limits[0].clone();
            (l.max_requests.get(), l.window.as_secs())
        };
        assert_eq!(limit(5), (2000, 30));
        assert_eq!(
            limit(15),
            (100, 30),
            "the count ran out, the window did not"
        );
        assert_eq!(limit(25), (100, 60));
        assert_eq!(baseline(&base, "window:api"), "window 60 s");
        assert!(knobs(&base, &[]).contains(&"window:api".to_string()));
    }

    #[test]
    fn people_win_over_the_fleet_and_the_fleet_over_schedules() {
        let mut admin = AdminState::new(None, false);
        let o = |max, author: &str| Override {
            kind: Kind::Limit {
                name: "api".into(),
                max_requests: max,
            },
            reason: String::new(),
            author: author.into(),
            created: SystemTime::UNIX_EPOCH,
            expires: None,
        };
        let base = config("");
        admin
            .scheduled
            .insert("limit:api".into(), o(200, "schedule"));
        assert_eq!(
            effective_config(&base, &admin, SystemTime::UNIX_EPOCH).limits[0]
                .max_requests
                .get(),
            200
        );
        admin.fleet.insert("limit:api".into(), o(300, "fleet"));
        assert_eq!(
            effective_config(&base, &admin, SystemTime::UNIX_EPOCH).limits[0]
                .max_requests
                .get(),
            300
        );
        admin.overrides.insert("limit:api".into(), o(400, "local"));
        assert_eq!(
            effective_config(&base, &admin, SystemTime::UNIX_EPOCH).limits[0]
                .max_requests
                .get(),
            400
        );
        admin.overrides.clear();
        admin.fleet.clear();
        assert_eq!(
            effective_config(&base, &admin, SystemTime::UNIX_EPOCH).limits[0]
                .max_requests
                .get(),
            200
        );
    }
}
