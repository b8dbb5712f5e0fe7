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
}

impl Kind {
    fn key(&self) -> String {
        match self {
            Kind::Limit { name, .. } => format!("limit:{name}"),
            Kind::Level(_) => "level".into(),
            Kind::Feature { name, .. } => format!("feature:{name}"),
            Kind::Queue { .. } => "queue".into(),
        }
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
    overrides: BTreeMap<String, Override>,
    audit: VecDeque<String>,
    audit_file: Option<String>,
}

impl AdminState {
    /// State writing its audit lines to `audit_file`, if any.
    pub fn new(audit_file: Option<String>) -> Self {
        Self {
            audit_file,
            ..Self::default()
        }
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

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The file's config with the limit and queue overrides applied.
pub fn effective_config(file: &Config, admin: &AdminState) -> Config {
    let mut cfg = file.clone();
    for o in admin.overrides.values() {
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
            Kind::Level(_) | Kind::Feature { .. } => {}
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
        for o in admin.overrides.values() {
            match &o.kind {
                Kind::Level(l) => state.manual = Some(*l),
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
        let gone: Vec<Override> = keys
            .iter()
            .filter_map(|k| admin.overrides.remove(k))
            .collect();
        for o in &gone {
            admin.record(json!({
                "time": humantime::format_rfc3339_seconds(now).to_string(),
                "caller": "floodgate:ttl",
                "operation": "expired",
                "target": o.kind.key(),
                "before": o.kind.describe(),
                "after": "baseline",
                "reason": o.reason,
                "scope": "local",
            }));
        }
        gone
    };
    if expired.is_empty() {
        return;
    }
    revert(rt, &expired, "override expired");
}

/// Re-applies state after `gone` overrides were removed.
fn revert(rt: &Runtime, gone: &[Override], why: &str) {
    let structural = gone
        .iter()
        .any(|o| matches!(o.kind, Kind::Limit { .. } | Kind::Queue { .. }));
    if structural {
        if let Err(e) = rebuild(rt) {
            error!("cannot rebuild the snapshot after removing overrides: {e}");
        }
    }
    if gone
        .iter()
        .any(|o| matches!(o.kind, Kind::Level(_) | Kind::Feature { .. }))
    {
        apply_degradation(rt, why);
    }
}

fn pb_override(o: &Override) -> pb::Override {
    pb::Override {
        key: o.kind.key(),
        value: o.kind.describe(),
        reason: o.reason.clone(),
        author: o.author.clone(),
        expires_at: o.expires.map_or(0, unix),
        created_at: unix(o.created),
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
            overrides: self.admin().overrides.len() as u32,
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
                    let scaled = ((l.max_requests.get() as f64) * multiplier)
                        .round()
                        .max(1.0);
                    let max = (scaled as u64).min(1_000_000_000_000);
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
                    remove.extend(
                        self.admin()
                            .overrides
                            .keys()
                            .filter(|k| k.starts_with("limit:"))
                            .cloned(),
                    );
                    summary = "every limit back to its config baseline".into();
                }
            }
            Op::SetLevel { level } => {
                summary = format!("degradation level set to {} by hand", level_str(*level));
                set.push(made(Kind::Level(*level)));
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
                if let Some(Kind::Queue {
                    max_size: s0,
                    max_concurrency: c0,
                }) = self.admin().overrides.get("queue").map(|o| o.kind.clone())
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
                let admin = self.admin();
                if key == "all" {
                    remove.extend(admin.overrides.keys().cloned());
                } else if admin.overrides.contains_key(key) {
                    remove.push(key.clone());
                } else {
                    let keys: Vec<&str> = admin.overrides.keys().map(String::as_str).collect();
                    return Err(ControlError::NotFound(format!(
                        "no override `{key}`; in force: {}",
                        if keys.is_empty() {
                            "none".to_string()
                        } else {
                            keys.join(", ")
                        }
                    )));
                }
                summary = format!("override `{key}` cleared");
            }
        }
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
                admin.record(json!({
                    "time": humantime::format_rfc3339_seconds(now).to_string(),
                    "caller": req.caller.name,
                    "operation": req.op.name(),
                    "target": o.kind.key(),
                    "before": before,
                    "after": o.kind.describe(),
                    "ttl_seconds": req.ttl.map(|t| t.as_secs()),
                    "reason": reason,
                    "scope": "local",
                }));
                admin.overrides.insert(o.kind.key(), o.clone());
            }
            for o in &gone {
                admin.record(json!({
                    "time": humantime::format_rfc3339_seconds(now).to_string(),
                    "caller": req.caller.name,
                    "operation": req.op.name(),
                    "target": o.kind.key(),
                    "before": o.kind.describe(),
                    "after": "baseline",
                    "reason": reason,
                    "scope": "local",
                }));
            }
            if let Op::ResetBreaker { name } = &req.op {
                admin.record(json!({
                    "time": humantime::format_rfc3339_seconds(now).to_string(),
                    "caller": req.caller.name,
                    "operation": req.op.name(),
                    "target": name,
                    "reason": reason,
                    "scope": "local",
                }));
            }
            let overrides: Vec<pb::Override> = admin.overrides.values().map(pb_override).collect();
            (gone, overrides)
        };
        let structural = set
            .iter()
            .chain(gone.iter())
            .any(|o| matches!(o.kind, Kind::Limit { .. } | Kind::Queue { .. }));
        if structural {
            rebuild(rt).map_err(ControlError::Failed)?;
        }
        if set
            .iter()
            .chain(gone.iter())
            .any(|o| matches!(o.kind, Kind::Level(_) | Kind::Feature { .. }))
        {
            apply_degradation(rt, &summary);
        }
        if let Some(t) = req.ttl {
            summary.push_str(&format!(" for {}", humantime::format_duration(t)));
        }
        Ok(pb::ChangeReply { summary, overrides })
    }

    fn overrides(&self) -> Vec<pb::Override> {
        self.admin().overrides.values().map(pb_override).collect()
    }

    fn audit(&self, limit: usize) -> Vec<String> {
        let admin = self.admin();
        let skip = admin.audit.len().saturating_sub(limit);
        admin.audit.iter().skip(skip).cloned().collect()
    }
}
