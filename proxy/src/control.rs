//! The admin plane's view of this sidecar: [`RuntimeControl`] implements
//! `floodgate_admin::control::Control` over the runtime. Changes are overrides layered on the
//! config file: limit and queue overrides are applied to the file's config and a new snapshot
//! is built (the file stays the baseline, and a reload keeps the overrides); level and feature
//! overrides set the degradation state. Each may carry a TTL, checked every second by the
//! sweeper, after which it reverts by itself. Every change and every expiry is audited.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use floodgate_admin::control::{Control, ControlError, Op, Request};
use floodgate_admin::pb;
use floodgate_config::{Config, Level, Scope};
use floodgate_policy::degrade::{level_str, Cause};
use serde_json::json;
use tracing::{error, info};

use crate::state::{Base, Runtime};

/// Audit entries kept in memory for `floodgatectl audit`.
const AUDIT_KEPT: usize = 1000;

/// What an override changes.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A limit's size.
    Limit {
        /// Limit name.
        name: String,
        /// max_requests in force.
        max_requests: u64,
        /// Window in force, when changed.
        window: Option<Duration>,
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
    /// Queue sizes.
    Queue {
        /// max_size.
        max_size: Option<u32>,
        /// max_concurrency.
        max_concurrency: Option<u32>,
    },
    /// The aggressive caching switch (the runbook's aggressive mode).
    Aggressive(bool),
}

impl Kind {
    /// The key an override of this kind is stored and listed under.
    pub fn key(&self) -> String {
        match self {
            Kind::Limit { name, .. } => format!("limit:{name}"),
            Kind::Level(_) => "level".into(),
            Kind::Aggressive(_) => "aggressive_cache".into(),
            Kind::Feature { name, .. } => format!("feature:{name}"),
            Kind::Queue { .. } => "queue".into(),
        }
    }

    /// True when applying it means rebuilding the snapshot from the config (limits, queue);
    /// the others only change the degradation state.
    fn is_structural(&self) -> bool {
        matches!(self, Kind::Limit { .. } | Kind::Queue { .. })
    }

    fn describe(&self) -> String {
        match self {
            Kind::Limit {
                max_requests,
                window,
                ..
            } => match window {
                Some(w) => format!("max_requests {max_requests} per {} s", w.as_secs()),
                None => format!("max_requests {max_requests}"),
            },
            Kind::Level(l) => level_str(*l).to_string(),
            Kind::Aggressive(on) => if *on { "on" } else { "off" }.into(),
            Kind::Feature { enabled, .. } => if *enabled { "enabled" } else { "disabled" }.into(),
            Kind::Queue {
                max_size,
                max_concurrency,
            } => {
                let mut parts = Vec::new();
                if let Some(s) = max_size {
                    parts.push(format!("max_size {s}"));
                }
                if let Some(c) = max_concurrency {
                    parts.push(format!("max_concurrency {c}"));
                }
                parts.join(", ")
            }
        }
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
    overrides: BTreeMap<String, Override>,
    /// The fleet's overrides, as last read from Redis.
    fleet: BTreeMap<String, Override>,
    /// Overrides of the config's `schedules` holding now (the fleet's and the sidecar's win).
    scheduled: BTreeMap<String, Override>,
    fleet_version: u64,
    fleet_state: String,
    audit: VecDeque<String>,
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

    /// Scheduled overrides first, then the fleet's, then this sidecar's: a later one wins
    /// on the same key, so a person's change beats the clock's.
    fn in_force(&self) -> impl Iterator<Item = &Override> {
        let shadowed = |k: &String| self.overrides.contains_key(k) || self.fleet.contains_key(k);
        self.scheduled
            .iter()
            .filter(move |(k, _)| !shadowed(k))
            .map(|(_, o)| o)
            .chain(
                self.fleet
                    .iter()
                    .filter(|(k, _)| !self.overrides.contains_key(*k))
                    .map(|(_, o)| o),
            )
            .chain(self.overrides.values())
    }

    fn record(&mut self, entry: serde_json::Value) {
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

/// The fields every audit entry of one change shares.
struct AuditCtx<'a> {
    now: SystemTime,
    caller: &'a str,
    operation: &'a str,
    reason: &'a str,
    scope: &'a str,
    ttl: Option<Duration>,
    fleet_version: Option<u64>,
}

impl AuditCtx<'_> {
    /// One JSON line: `target` went from `before` to `after`.
    fn entry(&self, target: &str, before: &str, after: &str) -> serde_json::Value {
        let mut v = json!({
            "time": humantime::format_rfc3339_seconds(self.now).to_string(),
            "caller": self.caller,
            "operation": self.operation,
            "target": target,
            "before": before,
            "after": after,
            "reason": self.reason,
            "scope": self.scope,
        });
        if let Some(m) = v.as_object_mut() {
            if let Some(t) = self.ttl {
                m.insert("ttl_seconds".into(), t.as_secs().into());
            }
            if let Some(n) = self.fleet_version {
                m.insert("fleet_version".into(), n.into());
            }
        }
        v
    }
}

/// `max` × `multiplier`, rounded, at least 1 and at most the config's cap (10^12).
fn scaled(max: u64, multiplier: f64) -> u64 {
    ((max as f64 * multiplier).round().max(1.0) as u64).min(1_000_000_000_000)
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The file's config with the limit and queue overrides applied.
pub fn effective_config(file: &Config, admin: &AdminState) -> Config {
    let mut cfg = file.clone();
    for o in admin.in_force() {
        match &o.kind {
            Kind::Limit {
                name,
                max_requests,
                window,
            } => {
                if let Some(l) = cfg.limits.iter_mut().find(|l| &l.name == name) {
                    if let Some(n) = std::num::NonZeroU64::new(*max_requests) {
                        l.max_requests = n;
                    }
                    if let Some(w) = window {
                        l.window = *w;
                    }
                }
            }
            Kind::Queue {
                max_size,
                max_concurrency,
            } => {
                if let Some(q) = cfg.queue.as_mut() {
                    if let Some(s) = max_size {
                        q.max_size = *s;
                    }
                    if let Some(c) = max_concurrency.and_then(std::num::NonZeroU32::new) {
                        q.max_concurrency = c;
                    }
                }
            }
            Kind::Level(_) | Kind::Feature { .. } | Kind::Aggressive(_) => {}
        }
    }
    cfg
}

/// The admin plane's handle on the runtime.
pub struct RuntimeControl(pub Arc<Runtime>);

impl RuntimeControl {
    fn admin(&self) -> std::sync::MutexGuard<'_, AdminState> {
        self.0.admin.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A snapshot of `file` with the admin overrides layered on (blocking: resolves the upstream).
pub fn build_base(rt: &Runtime, file: &Config) -> Result<Base, crate::state::BuildError> {
    let cfg = {
        let admin = rt.admin.lock().unwrap_or_else(|e| e.into_inner());
        effective_config(file, &admin)
    };
    let old = rt.current.load();
    Base::build(
        cfg,
        rt.next_version(),
        &rt.metrics,
        Some(&old.base),
        &rt.clock,
    )
}

/// Swaps in `base`, bringing the degradation state and the long-lived policies along.
pub fn install(rt: &Runtime, base: Base) -> u64 {
    let old = rt.current.load_full();
    let version = base.version;
    let base = Arc::new(base);
    crate::degrade::install(rt, base.clone());
    rt.apply_policies(&base, Some(&old.base));
    rt.metrics.config_version.set(version as i64);
    version
}

/// Rebuilds the snapshot from the file's config plus the overrides and swaps it in.
pub fn rebuild(rt: &Runtime) -> Result<u64, String> {
    let file = rt
        .file_config
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let base = build_base(rt, &file).map_err(|e| e.to_string())?;
    Ok(install(rt, base))
}

/// Sets the degradation state from the level and feature overrides.
fn apply_degradation(rt: &Runtime, why: &str) {
    let from = {
        let admin = rt.admin.lock().unwrap_or_else(|e| e.into_inner());
        let mut state = rt.degrade.lock().unwrap_or_else(|e| e.into_inner());
        let from = state.level();
        state.manual = None;
        state.flags.clear();
        state.aggressive = None;
        for o in admin.in_force() {
            match &o.kind {
                Kind::Level(l) => state.manual = Some(*l),
                Kind::Aggressive(on) => state.aggressive = Some(*on),
                Kind::Feature { name, enabled } => {
                    state.flags.insert(name.clone(), *enabled);
                }
                _ => {}
            }
        }
        from
    };
    crate::degrade::refresh(rt, from, Cause::Manual, why);
}

/// Reverts overrides whose TTL ran out (the sweeper calls this every second).
pub fn expire(rt: &Runtime) {
    let now = SystemTime::now();
    let expired: Vec<Override> = {
        let mut admin = rt.admin.lock().unwrap_or_else(|e| e.into_inner());
        let keys: Vec<String> = admin
            .overrides
            .iter()
            .filter(|(_, o)| o.expires.is_some_and(|e| e <= now))
            .map(|(k, _)| k.clone())
            .collect();
        let mut gone: Vec<(Override, &str)> = keys
            .iter()
            .filter_map(|k| admin.overrides.remove(k))
            .map(|o| (o, "local"))
            .collect();
        // Fleet overrides run out here too, whether or not Redis can be reached.
        let fleet_keys: Vec<String> = admin
            .fleet
            .iter()
            .filter(|(_, o)| o.expires.is_some_and(|e| e <= now))
            .map(|(k, _)| k.clone())
            .collect();
        gone.extend(
            fleet_keys
                .iter()
                .filter_map(|k| admin.fleet.remove(k))
                .map(|o| (o, "fleet")),
        );
        for (o, scope) in &gone {
            let ctx = AuditCtx {
                now,
                caller: "floodgate:ttl",
                operation: "expired",
                reason: &o.reason,
                scope,
                ttl: None,
                fleet_version: None,
            };
            admin.record(ctx.entry(&o.kind.key(), &o.kind.describe(), "baseline"));
        }
        gone.into_iter().map(|(o, _)| o).collect()
    };
    if expired.is_empty() {
        return;
    }
    for o in &expired {
        rt.event(
            "override",
            format!(
                "{} ({}) expired: back to the baseline",
                o.kind.key(),
                o.kind.describe()
            ),
        );
    }
    revert(rt, &expired, "override expired");
}

/// Re-applies state after `gone` overrides were removed.
fn revert(rt: &Runtime, gone: &[Override], why: &str) {
    let structural = gone.iter().any(|o| o.kind.is_structural());
    if structural {
        if let Err(e) = rebuild(rt) {
            error!("cannot rebuild the snapshot after removing overrides: {e}");
        }
    }
    if gone.iter().any(|o| !o.kind.is_structural()) {
        apply_degradation(rt, why);
    }
}

/// Applies the fleet's overrides read from Redis at `version`, if anything changed.
pub fn apply_fleet(rt: &Runtime, version: u64, set: BTreeMap<String, Override>) {
    let changed: Vec<Override> = {
        let mut admin = rt.admin.lock().unwrap_or_else(|e| e.into_inner());
        let same = |a: &Override, b: &Override| a.kind == b.kind && a.expires == b.expires;
        let differs = set.len() != admin.fleet.len()
            || set
                .iter()
                .any(|(k, o)| admin.fleet.get(k).is_none_or(|p| !same(p, o)));
        admin.fleet_version = admin.fleet_version.max(version);
        if !differs {
            return;
        }
        let old = std::mem::replace(&mut admin.fleet, set);
        let mut changed: Vec<Override> = old.into_values().collect();
        changed.extend(admin.fleet.values().cloned());
        changed
    };
    info!(version, "fleet overrides applied");
    rt.event(
        "override",
        format!("fleet overrides version {version} applied"),
    );
    revert(rt, &changed, "fleet overrides changed");
}

fn pb_override(o: &Override, scope: &str) -> pb::Override {
    pb::Override {
        scope: scope.into(),
        key: o.kind.key(),
        value: o.kind.describe(),
        reason: o.reason.clone(),
        author: o.author.clone(),
        expires_at: o.expires.map_or(0, unix),
        created_at: unix(o.created),
    }
}

/// Sets `floodgate_override_expiry_timestamp_seconds` from the overrides in force and
/// `floodgate_fleet_override_version` (at scrape).
pub fn publish_expiries(rt: &Runtime) {
    let admin = rt.admin.lock().unwrap_or_else(|e| e.into_inner());
    rt.metrics
        .fleet_version
        .set(i64::try_from(admin.fleet_version).unwrap_or(i64::MAX));
    let g = &rt.metrics.override_expiry;
    g.reset();
    for (map, scope) in [
        (&admin.scheduled, "schedule"),
        (&admin.fleet, "fleet"),
        (&admin.overrides, "local"),
    ] {
        for (k, o) in map {
            if let Some(e) = o.expires {
                let secs = e
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                g.with_label_values(&[k.as_str(), scope]).set(secs);
            }
        }
    }
}

/// Every override in force, scheduled, fleet and local, for listing.
fn listed(admin: &AdminState) -> Vec<pb::Override> {
    admin
        .scheduled
        .values()
        .map(|o| pb_override(o, "schedule"))
        .chain(admin.fleet.values().map(|o| pb_override(o, "fleet")))
        .chain(admin.overrides.values().map(|o| pb_override(o, "local")))
        .collect()
}

/// The overrides the config's schedules ask for at `now`.
fn scheduled_at(file: &Config, now: chrono::DateTime<chrono::Utc>) -> BTreeMap<String, Override> {
    let mut out = BTreeMap::new();
    for s in &file.schedules {
        // Validated with the config; a pattern that still fails is skipped.
        let Ok(cron) = s.cron.parse::<croner::Cron>() else {
            continue;
        };
        let Ok(start) = cron.find_previous_occurrence(&now, true) else {
            continue;
        };
        let Ok(duration) = chrono::Duration::from_std(s.duration) else {
            continue;
        };
        let end = start + duration;
        if now >= end {
            continue;
        }
        let made = |kind: Kind| Override {
            kind,
            reason: format!(
                "schedule `{}` ({}, {} min)",
                s.name,
                s.cron,
                s.duration.as_secs() / 60
            ),
            author: format!("schedule:{}", s.name),
            created: SystemTime::from(start),
            expires: Some(SystemTime::from(end)),
        };
        if let Some(m) = s.limits_multiplier {
            for l in &file.limits {
                let o = made(Kind::Limit {
                    name: l.name.clone(),
                    max_requests: scaled(l.max_requests.get(), m),
                    window: None,
                });
                out.insert(o.kind.key(), o);
            }
        }
        if let Some(level) = s.level {
            let o = made(Kind::Level(level));
            out.insert(o.kind.key(), o);
        }
        if s.queue_max_concurrency.is_some() || s.queue_max_size.is_some() {
            let o = made(Kind::Queue {
                max_size: s.queue_max_size,
                max_concurrency: s.queue_max_concurrency,
            });
            out.insert(o.kind.key(), o);
        }
    }
    out
}

/// Applies the config's schedules: what they ask for now comes in, what they no longer ask
/// for goes (the sweeper calls this every second).
pub fn run_schedules(rt: &Runtime) {
    let wanted = {
        let file = rt.file_config.lock().unwrap_or_else(|e| e.into_inner());
        if file.schedules.is_empty() && rt.admin.lock().map_or(true, |a| a.scheduled.is_empty()) {
            return;
        }
        scheduled_at(&file, chrono::Utc::now())
    };
    let changed: Vec<Override> = {
        let mut admin = rt.admin.lock().unwrap_or_else(|e| e.into_inner());
        let same = |a: &Override, b: &Override| a.kind == b.kind && a.expires == b.expires;
        let differs = wanted.len() != admin.scheduled.len()
            || wanted
                .iter()
                .any(|(k, o)| admin.scheduled.get(k).is_none_or(|p| !same(p, o)));
        if !differs {
            return;
        }
        let now = SystemTime::now();
        let old = std::mem::replace(&mut admin.scheduled, wanted);
        for (k, o) in &admin.scheduled.clone() {
            if old.get(k).is_none_or(|p| !same(p, o)) {
                let ctx = AuditCtx {
                    now,
                    caller: &o.author,
                    operation: "schedule.start",
                    reason: &o.reason,
                    scope: "local",
                    ttl: o.expires.and_then(|e| e.duration_since(now).ok()),
                    fleet_version: None,
                };
                let before = old
                    .get(k)
                    .map_or("baseline".to_string(), |p| p.kind.describe());
                admin.record(ctx.entry(k, &before, &o.kind.describe()));
            }
        }
        for (k, o) in &old {
            if !admin.scheduled.contains_key(k) {
                let ctx = AuditCtx {
                    now,
                    caller: &o.author,
                    operation: "schedule.end",
                    reason: &o.reason,
                    scope: "local",
                    ttl: None,
                    fleet_version: None,
                };
                admin.record(ctx.entry(k, &o.kind.describe(), "baseline"));
            }
        }
        let mut changed: Vec<Override> = old.into_values().collect();
        changed.extend(admin.scheduled.values().cloned());
        changed
    };
    rt.event("override", "scheduled overrides changed".into());
    revert(rt, &changed, "schedule");
}

impl RuntimeControl {
    fn fleet_backend(&self) -> Result<Arc<crate::global::GlobalLimits>, ControlError> {
        self.0.global.clone().ok_or_else(|| {
            ControlError::Failed(
                "fleet changes go through Redis, and this sidecar has no `redis` section".into(),
            )
        })
    }
}

impl Control for RuntimeControl {
    fn status(&self) -> pb::StatusReply {
        let rt = &self.0;
        let st = crate::status::Status::read(rt);
        let snap = rt.current.load();
        let file = rt
            .file_config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let limits = snap
            .config
            .limits
            .iter()
            .map(|l| {
                let base = file.limits.iter().find(|b| b.name == l.name).unwrap_or(l);
                pb::Limit {
                    name: l.name.clone(),
                    scope: match l.scope {
                        Scope::Global => "global".into(),
                        Scope::Local => "local".into(),
                    },
                    max_requests: l.max_requests.get(),
                    window_seconds: l.window.as_secs(),
                    baseline_max_requests: base.max_requests.get(),
                    baseline_window_seconds: base.window.as_secs(),
                    utilization: rt
                        .metrics
                        .rl_utilization
                        .with_label_values(&[l.name.as_str()])
                        .get(),
                }
            })
            .collect();
        let report = st.report();
        let q = &st.queue;
        let (overrides, fleet, fleet_version) = {
            let admin = self.admin();
            (
                (admin.overrides.len() + admin.fleet.len() + admin.scheduled.len()) as u32,
                admin.fleet_state().to_string(),
                admin.fleet_version(),
            )
        };
        let mut breakers = Vec::new();
        if let Some((state, _)) = st.breaker {
            breakers.push(pb::Breaker {
                name: "upstream".into(),
                state: state.as_str().into(),
            });
        }
        for (feature, b) in snap.routes.feature_breakers() {
            breakers.push(pb::Breaker {
                name: format!("feature:{feature}"),
                state: b.state().0.as_str().into(),
            });
        }
        pb::StatusReply {
            config_version: st.version,
            upstream: st.upstream.clone(),
            level: report.level.into(),
            degradation: Some(pb::Degradation {
                level: report.degradation.level.into(),
                auto_level: report.degradation.auto_level.into(),
                manual_level: report.degradation.manual_level.unwrap_or("").into(),
                disabled_features: report.degradation.disabled_features.clone(),
                aggressive_cache: report.degradation.aggressive_cache,
            }),
            limits,
            queue: Some(pb::Queue {
                configured: st.queue_configured,
                depth: q.depth,
                max_size: if st.queue_configured { q.max_size } else { 0 },
                inflight: q.inflight,
                max_concurrency: if st.queue_configured {
                    q.max_concurrency
                } else {
                    0
                },
                drain_rate_per_second: st.drain_rate,
            }),
            breakers,
            indicators: st
                .indicators
                .iter()
                .map(|r| pb::Indicator {
                    name: r.indicator.as_str().into(),
                    value: r.value,
                    level: r.level.as_str().into(),
                    warning: r.thresholds.warning.unwrap_or(f64::NAN),
                    critical: r.thresholds.critical.unwrap_or(f64::NAN),
                })
                .collect(),
            overrides,
            fleet,
            fleet_version,
        }
    }

    fn change(&self, req: Request) -> Result<pb::ChangeReply, ControlError> {
        let rt = &self.0;
        let now = SystemTime::now();
        let file = rt
            .file_config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let reason = req.reason.clone();
        let made = |kind: Kind| Override {
            kind,
            reason: req.reason.clone(),
            author: req.caller.name.clone(),
            created: now,
            expires: req.ttl.map(|t| now + t),
        };
        let limit_named = |name: &str| {
            file.limits.iter().find(|l| l.name == name).ok_or_else(|| {
                let names: Vec<&str> = file.limits.iter().map(|l| l.name.as_str()).collect();
                ControlError::NotFound(format!(
                    "no limit named `{name}`; the config has: {}",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                ))
            })
        };
        let fleet = if req.fleet {
            Some(self.fleet_backend()?)
        } else {
            None
        };
        let scope = if fleet.is_some() { "fleet" } else { "local" };
        // Override keys in force in the change's scope that start with `prefix`.
        let existing = |prefix: &str| -> Result<Vec<String>, ControlError> {
            match &fleet {
                Some(g) => tokio::runtime::Handle::current()
                    .block_on(crate::fleet::keys(g, prefix))
                    .map_err(|e| ControlError::Failed(format!("redis: {e}"))),
                None => Ok(self
                    .admin()
                    .overrides
                    .keys()
                    .filter(|k| k.starts_with(prefix))
                    .cloned()
                    .collect()),
            }
        };
        // What to set and what to remove; applied below under one lock.
        let mut set: Vec<Override> = Vec::new();
        let mut remove: Vec<String> = Vec::new();
        let mut summary: String;
        match &req.op {
            Op::SetLimit {
                name,
                max_requests,
                window,
            } => {
                limit_named(name)?;
                let kind = Kind::Limit {
                    name: name.clone(),
                    max_requests: *max_requests,
                    window: *window,
                };
                summary = format!("limit `{name}` set to {}", kind.describe());
                set.push(made(kind));
            }
            Op::ScaleLimits { name, multiplier } => {
                let targets: Vec<&floodgate_config::Limit> = match name {
                    Some(n) => vec![limit_named(n)?],
                    None => file.limits.iter().collect(),
                };
                if targets.is_empty() {
                    return Err(ControlError::NotFound(
                        "the config has no limits to scale".into(),
                    ));
                }
                let mut parts = Vec::new();
                for l in targets {
                    let max = scaled(l.max_requests.get(), *multiplier);
                    parts.push(format!("{} {} -> {max}", l.name, l.max_requests.get()));
                    set.push(made(Kind::Limit {
                        name: l.name.clone(),
                        max_requests: max,
                        window: None,
                    }));
                }
                summary = format!(
                    "scaled x{multiplier} from the baseline: {}",
                    parts.join(", ")
                );
            }
            Op::RestoreLimits { name } => {
                if let Some(n) = name {
                    limit_named(n)?;
                    remove.push(format!("limit:{n}"));
                    summary = format!("limit `{n}` back to its config baseline");
                } else {
                    remove.extend(existing("limit:")?);
                    summary = "every limit back to its config baseline".into();
                }
            }
            Op::SetLevel { level } => {
                summary = format!("degradation level set to {} by hand", level_str(*level));
                set.push(made(Kind::Level(*level)));
            }
            Op::SetAggressiveCache { enabled } => {
                summary = format!("aggressive caching {}", if *enabled { "on" } else { "off" });
                set.push(made(Kind::Aggressive(*enabled)));
            }
            Op::SetFeature { name, enabled } => {
                let known = rt.current.load().routes.features.clone();
                if !known.contains(name) {
                    return Err(ControlError::NotFound(format!(
                        "no feature named `{name}`; the config names: {}",
                        known.join(", ")
                    )));
                }
                summary = format!(
                    "feature `{name}` {}",
                    if *enabled { "enabled" } else { "disabled" }
                );
                set.push(made(Kind::Feature {
                    name: name.clone(),
                    enabled: *enabled,
                }));
            }
            Op::SetQueue {
                max_size,
                max_concurrency,
            } => {
                if file.queue.is_none() {
                    return Err(ControlError::Failed(
                        "the config has no `queue` section, so there is no queue to size; add one (it can then be resized live)".into(),
                    ));
                }
                // Merge with a queue override already in force.
                let (mut s, mut c) = (*max_size, *max_concurrency);
                let current = {
                    let admin = self.admin();
                    let map = if fleet.is_some() {
                        &admin.fleet
                    } else {
                        &admin.overrides
                    };
                    map.get("queue").map(|o| o.kind.clone())
                };
                if let Some(Kind::Queue {
                    max_size: s0,
                    max_concurrency: c0,
                }) = current
                {
                    s = s.or(s0);
                    c = c.or(c0);
                }
                let kind = Kind::Queue {
                    max_size: s,
                    max_concurrency: c,
                };
                summary = format!("queue set to {}", kind.describe());
                set.push(made(kind));
            }
            Op::ResetBreaker { name } => {
                if fleet.is_some() {
                    return Err(ControlError::Invalid(
                        "breakers reset applies to one sidecar; run it without --fleet".into(),
                    ));
                }
                let snap = rt.current.load();
                if name == "upstream" {
                    rt.breaker.reset();
                } else if let Some(b) = name
                    .strip_prefix("feature:")
                    .and_then(|f| snap.routes.feature_breakers().find(|(n, _)| *n == f))
                    .map(|(_, b)| b)
                {
                    b.reset();
                } else {
                    return Err(ControlError::NotFound(format!(
                        "no breaker `{name}`; use `upstream` or `feature:<name>` (see `floodgatectl breakers`)"
                    )));
                }
                summary = format!("breaker `{name}` reset: closed, counts cleared");
            }
            Op::ClearOverride { key } => {
                let keys = existing("")?;
                if key == "all" {
                    remove.extend(keys);
                } else if keys.contains(key) {
                    remove.push(key.clone());
                } else {
                    return Err(ControlError::NotFound(format!(
                        "no {scope} override `{key}`; in force: {}",
                        if keys.is_empty() {
                            "none".to_string()
                        } else {
                            keys.join(", ")
                        }
                    )));
                }
                summary = format!("{scope} override `{key}` cleared");
            }
        }
        if let Some(g) = &fleet {
            let handle = tokio::runtime::Handle::current();
            let version = handle
                .block_on(crate::fleet::publish(g, &set, &remove))
                .map_err(|e| ControlError::Failed(format!("cannot write to redis: {e}")))?;
            let fleet_ctx = AuditCtx {
                now,
                caller: &req.caller.name,
                operation: req.op.name(),
                reason: &reason,
                scope: "fleet",
                ttl: req.ttl,
                fleet_version: Some(version),
            };
            {
                let mut admin = self.admin();
                for o in &set {
                    let before = admin
                        .fleet
                        .get(&o.kind.key())
                        .map_or("baseline".to_string(), |p| p.kind.describe());
                    admin.record(fleet_ctx.entry(&o.kind.key(), &before, &o.kind.describe()));
                }
                for k in &remove {
                    let before = admin
                        .fleet
                        .get(k)
                        .map_or("baseline".to_string(), |p| p.kind.describe());
                    admin.record(fleet_ctx.entry(k, &before, "baseline"));
                }
            }
            // Apply here at once (this runs off the async workers already); the others follow
            // on the announcement.
            let (current, set) = handle
                .block_on(crate::fleet::fetch(g))
                .map_err(|e| ControlError::Failed(format!("cannot read back from redis: {e}")))?;
            apply_fleet(rt, current, set);
            summary.push_str(&format!(" on the fleet (version {version})"));
            if let Some(t) = req.ttl {
                summary.push_str(&format!(" for {}", humantime::format_duration(t)));
            }
            rt.event("override", format!("{summary} by {}", req.caller.name));
            return Ok(pb::ChangeReply {
                summary,
                overrides: listed(&self.admin()),
            });
        }
        let ctx = AuditCtx {
            now,
            caller: &req.caller.name,
            operation: req.op.name(),
            reason: &reason,
            scope: "local",
            ttl: req.ttl,
            fleet_version: None,
        };
        let (gone, overrides) = {
            let mut admin = self.admin();
            let mut gone = Vec::new();
            for k in &remove {
                if let Some(o) = admin.overrides.remove(k) {
                    gone.push(o);
                }
            }
            for o in &set {
                let before = admin
                    .overrides
                    .get(&o.kind.key())
                    .map_or("baseline".to_string(), |p| p.kind.describe());
                admin.record(ctx.entry(&o.kind.key(), &before, &o.kind.describe()));
                admin.overrides.insert(o.kind.key(), o.clone());
            }
            for o in &gone {
                admin.record(ctx.entry(&o.kind.key(), &o.kind.describe(), "baseline"));
            }
            if let Op::ResetBreaker { name } = &req.op {
                admin.record(ctx.entry(name, "", "reset"));
            }
            let overrides = listed(&admin);
            (gone, overrides)
        };
        let structural = set
            .iter()
            .chain(gone.iter())
            .any(|o| o.kind.is_structural());
        if structural {
            rebuild(rt).map_err(ControlError::Failed)?;
        }
        if set
            .iter()
            .chain(gone.iter())
            .any(|o| !o.kind.is_structural())
        {
            apply_degradation(rt, &summary);
        }
        if let Some(t) = req.ttl {
            summary.push_str(&format!(" for {}", humantime::format_duration(t)));
        }
        rt.event("override", format!("{summary} by {}", req.caller.name));
        Ok(pb::ChangeReply { summary, overrides })
    }

    fn overrides(&self) -> Vec<pb::Override> {
        listed(&self.admin())
    }

    fn watch(&self) -> tokio::sync::broadcast::Receiver<pb::Event> {
        self.0.events.subscribe()
    }

    fn fleet_status(&self) -> Result<pb::FleetStatusReply, ControlError> {
        let g = self.fleet_backend()?;
        tokio::runtime::Handle::current()
            .block_on(crate::fleet::list(&g))
            .map_err(|e| ControlError::Failed(format!("cannot read the fleet from redis: {e}")))
    }

    fn audit(&self, limit: usize) -> Vec<String> {
        let admin = self.admin();
        let skip = admin.audit.len().saturating_sub(limit);
        admin.audit.iter().skip(skip).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn config(extra: &str) -> Config {
        let src = format!(
            "listen: 127.0.0.1:8080\nupstream: {{ address: 127.0.0.1:3000 }}\nlimits:\n  - {{ name: api, max_requests: 100, window_seconds: 60 }}\n{extra}"
        );
        floodgate_config::parse(&src, std::path::Path::new("t.yaml")).unwrap()
    }

    #[test]
    fn a_schedule_holds_from_each_firing_for_its_duration() {
        let cfg = config(
            "schedules:\n  - { name: weekday_peak, cron: \"0 8 * * 1-5\", duration_minutes: 720, limits_multiplier: 2, level: degraded }\n",
        );
        // 2026-11-30 is a Monday.
        let at = |d, h, m| chrono::Utc.with_ymd_and_hms(2026, 11, d, h, m, 0).unwrap();
        let on = scheduled_at(&cfg, at(30, 9, 30));
        assert_eq!(
            on["limit:api"].kind,
            Kind::Limit {
                name: "api".into(),
                max_requests: 200,
                window: None
            }
        );
        assert_eq!(on["level"].kind, Kind::Level(Level::Degraded));
        assert_eq!(
            on["level"].expires,
            Some(SystemTime::from(at(30, 20, 0))),
            "ends 720 minutes after 08:00"
        );
        assert_eq!(on["level"].author, "schedule:weekday_peak");
        assert!(
            scheduled_at(&cfg, at(30, 7, 59)).is_empty(),
            "before it fires"
        );
        assert!(
            scheduled_at(&cfg, at(30, 20, 0)).is_empty(),
            "after it ends"
        );
        assert!(
            scheduled_at(&cfg, at(29, 9, 0)).is_empty(),
            "not on a Sunday"
        );
    }

    #[test]
    fn people_win_over_the_fleet_and_the_fleet_over_schedules() {
        let mut admin = AdminState::new(None, false);
        let o = |max, author: &str| Override {
            kind: Kind::Limit {
                name: "api".into(),
                max_requests: max,
                window: None,
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
            effective_config(&base, &admin).limits[0].max_requests.get(),
            200
        );
        admin.fleet.insert("limit:api".into(), o(300, "fleet"));
        assert_eq!(
            effective_config(&base, &admin).limits[0].max_requests.get(),
            300
        );
        admin.overrides.insert("limit:api".into(), o(400, "local"));
        assert_eq!(
            effective_config(&base, &admin).limits[0].max_requests.get(),
            400
        );
        admin.overrides.clear();
        admin.fleet.clear();
        assert_eq!(
            effective_config(&base, &admin).limits[0].max_requests.get(),
            200
        );
    }
}
