//! The admin plane's view of this sidecar: [`RuntimeControl`] implements
//! `floodgate_admin::control::Control` over the runtime, in terms of the overrides model
//! ([`crate::overrides`]): a change is an override layered on the config file, applied
//! through the lifecycle, audited, and reported back.

use std::sync::Arc;
use std::time::SystemTime;

use floodgate_admin::control::{Control, ControlError, Op, Request};
use floodgate_admin::reply::{
    self, BreakerStatus, Degradation, Event, FleetStatus, IndicatorStatus, Knob, KnobChange, Layer,
    LimitStatus, ListenerStatus, Outcome, QueueStatus, ScheduleStatus, Status,
};
use floodgate_config::Config;

use crate::global::GlobalLimits;
use crate::lifecycle::{apply_degradation, apply_fleet, rebuild};
use crate::overrides::audit::AuditCtx;
use crate::overrides::model::{
    baseline, chain, in_effect, knobs, scaled, AdminState, Kind, Override,
};
use crate::overrides::schedule::{next_start, schedule_of, timeline};
use crate::state::Runtime;

/// The admin plane's handle on the runtime.
pub struct RuntimeControl(pub Arc<Runtime>);

impl RuntimeControl {
    fn admin(&self) -> std::sync::MutexGuard<'_, AdminState> {
        self.0.admin.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn reply_override(o: &Override, layer: Layer) -> reply::Override {
    reply::Override {
        key: o.kind.key(),
        value: o.kind.value(),
        reason: o.reason.clone(),
        author: o.author.clone(),
        created: o.created,
        expires: o.expires,
        layer,
    }
}

/// What a change does, worked out from the request before anything is written.
struct Plan {
    /// Overrides to set (one per knob).
    set: Vec<Override>,
    /// Keys to remove from the change's layer.
    remove: Vec<String>,
    /// Knobs a local restore or clear of everything asks to be at the baseline but that
    /// the fleet layer holds: reported (and the command fails naming the fleet), not removed.
    fleet_held: Vec<String>,
    /// What the change does, in words.
    summary: String,
}

impl Plan {
    /// Every key the change sets or removes, in that order.
    fn keys(&self) -> Vec<String> {
        self.set
            .iter()
            .map(|o| o.kind.key())
            .chain(self.remove.iter().cloned())
            .collect()
    }
}

/// How a change's lines say that a layer holds nothing for a key.
const NONE: &str = "none";

/// Each touched key's fleet-layer value before (as Redis held it) and after the change.
fn knob_changes(
    keys: &[String],
    before: &crate::overrides::fleet_store::Layer,
    set: &[Override],
) -> Vec<KnobChange> {
    keys.iter()
        .map(|k| KnobChange {
            key: k.clone(),
            before: before
                .get(k)
                .cloned()
                .flatten()
                .unwrap_or_else(|| NONE.into()),
            after: set
                .iter()
                .find(|o| o.kind.key() == *k)
                .map_or_else(|| NONE.into(), |o| o.kind.describe()),
        })
        .collect()
}

/// One line of a fleet change's reply: `limit:api (fleet layer): none -> max_requests 6`.
fn describe_change(c: &KnobChange, tense: &str) -> String {
    let same = if c.before == c.after {
        format!(" ({tense} unchanged)")
    } else {
        String::new()
    };
    format!("{} (fleet layer): {} -> {}{same}", c.key, c.before, c.after)
}

/// Every override in force, scheduled, fleet and local, for listing.
fn listed(admin: &AdminState) -> Vec<reply::Override> {
    admin
        .scheduled
        .values()
        .map(|o| reply_override(o, Layer::Schedule))
        .chain(
            admin
                .fleet
                .values()
                .map(|o| reply_override(o, Layer::Fleet)),
        )
        .chain(
            admin
                .overrides
                .values()
                .map(|o| reply_override(o, Layer::Local)),
        )
        .collect()
}

impl RuntimeControl {
    /// Override keys in force in a change's scope (the fleet's, from Redis, or this
    /// sidecar's) that start with `prefix`.
    async fn existing(
        &self,
        fleet: Option<Arc<crate::global::GlobalLimits>>,
        prefix: &str,
    ) -> Result<Vec<String>, ControlError> {
        match fleet {
            Some(g) => crate::overrides::fleet_store::keys(&g, prefix)
                .await
                .map_err(|e| ControlError::Failed(format!("redis: {e}"))),
            None => Ok(self
                .admin()
                .overrides
                .keys()
                .filter(|k| k.starts_with(prefix))
                .cloned()
                .collect()),
        }
    }

    /// Runs blocking snapshot work (a rebuild resolves the upstream) off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Runtime) -> T + Send + 'static,
    ) -> Result<T, ControlError> {
        let rt = self.0.clone();
        tokio::task::spawn_blocking(move || f(&rt))
            .await
            .map_err(|e| ControlError::Failed(format!("the change did not complete: {e}")))
    }

    /// Keys the fleet layer holds here now that start with `prefix`.
    fn fleet_keys(&self, prefix: &str) -> Vec<String> {
        self.admin()
            .fleet
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Keys the schedule layer holds now that start with `prefix`.
    fn scheduled_keys(&self, prefix: &str) -> Vec<String> {
        self.admin()
            .scheduled
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect()
    }

    fn fleet_backend(&self) -> Result<Arc<crate::global::GlobalLimits>, ControlError> {
        self.0.global.clone().ok_or_else(|| {
            ControlError::Failed(
                "fleet changes go through Redis, and this sidecar has no `redis` section".into(),
            )
        })
    }

    /// What `req` does, worked out before anything is written: the overrides to set, the
    /// keys to remove, and the knobs another layer holds.
    async fn plan(
        &self,
        req: &Request,
        file: &Config,
        fleet: Option<&Arc<GlobalLimits>>,
        now: SystemTime,
    ) -> Result<Plan, ControlError> {
        let rt = &self.0;
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
        let scope = if fleet.is_some() { "fleet" } else { "local" };
        let existing = |prefix: &'static str| self.existing(fleet.cloned(), prefix);
        // What to set and what to remove; applied below under one lock.
        let mut set: Vec<Override> = Vec::new();
        let mut remove: Vec<String> = Vec::new();
        // Knobs a local restore or clear of everything asks to be at the baseline but that
        // the fleet layer holds: reported (and the command fails naming the fleet), not removed.
        let mut fleet_held: Vec<String> = Vec::new();
        let summary: String;
        match &req.op {
            Op::SetLimit {
                name,
                max_requests,
                window,
            } => {
                limit_named(name)?;
                // Two knobs: the count, and the window only when one is given, so each
                // keeps its own TTL and reason.
                set.push(made(Kind::Limit {
                    name: name.clone(),
                    max_requests: *max_requests,
                }));
                if let Some(w) = window {
                    set.push(made(Kind::Window {
                        name: name.clone(),
                        window: *w,
                    }));
                }
                let words: Vec<String> = set.iter().map(|o| o.kind.describe()).collect();
                summary = format!("limit `{name}` set to {}", words.join(", "));
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
                    // The window too, when any layer changed it.
                    let window = format!("window:{n}");
                    let held = existing("window:").await?.contains(&window)
                        || (fleet.is_none() && self.admin().holder(&window).is_some());
                    if held {
                        remove.push(window);
                    }
                    summary = format!("limit `{n}` back to its config baseline");
                } else {
                    for prefix in ["limit:", "window:"] {
                        remove.extend(existing(prefix).await?);
                        if fleet.is_none() {
                            remove.extend(self.scheduled_keys(prefix));
                            fleet_held.extend(self.fleet_keys(prefix));
                        }
                    }
                    remove.sort();
                    remove.dedup();
                    summary = "every limit back to its config baseline".into();
                }
            }
            Op::SetLevel { level } => {
                summary = format!(
                    "degradation level set to {} by hand (pinned: automatic degradation cannot change it until {}`floodgatectl {}degrade clear`)",
                    level.as_str(),
                    if req.ttl.is_some() { "the TTL runs out or " } else { "" },
                    if req.fleet { "--fleet " } else { "" }
                );
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
                    "feature `{name}` {} at every level until {}`floodgatectl {}feature reset {name}`",
                    if *enabled { "enabled" } else { "disabled" },
                    if req.ttl.is_some() { "the TTL runs out or " } else { "" },
                    if req.fleet { "--fleet " } else { "" }
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
                // One override per knob: resizing the queue keeps a workers override (its
                // TTL and reason) as it was.
                let mut parts = Vec::new();
                if let Some(n) = max_size {
                    parts.push(format!("max_size {n}"));
                    set.push(made(Kind::QueueSize(*n)));
                }
                if let Some(n) = max_concurrency {
                    parts.push(format!("max_concurrency {n}"));
                    set.push(made(Kind::QueueWorkers(*n)));
                }
                summary = format!("queue set to {}", parts.join(", "));
            }
            Op::ForceBreaker { name, open } => {
                let snap = rt.current.load();
                let known = (name == "upstream" && snap.config.circuit_breaker.is_some())
                    || name
                        .strip_prefix("feature:")
                        .is_some_and(|f| snap.routes.feature_breakers().any(|(n, _)| n == f));
                if !known {
                    return Err(ControlError::NotFound(format!(
                        "no breaker `{name}`; use `upstream` (with a circuit_breaker section) or `feature:<name>` (see `floodgatectl breakers`)"
                    )));
                }
                summary = format!(
                    "breaker `{name}` held {} until {}`floodgatectl overrides clear breaker:{name}`",
                    if *open { "open: every request gets 503 circuit_open" } else { "closed: failures are not counted" },
                    if req.ttl.is_some() { "the TTL runs out or " } else { "" }
                );
                set.push(made(Kind::Breaker {
                    name: name.clone(),
                    open: *open,
                }));
            }
            Op::ResetBreaker { name } => {
                if fleet.is_some() {
                    return Err(ControlError::Invalid(
                        "breakers reset applies to one sidecar; run it without --fleet".into(),
                    ));
                }
                let snap = rt.current.load();
                if name == "upstream" {
                    for lane in &rt.lanes {
                        lane.breaker.reset();
                    }
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
                // A reset also ends this sidecar's force on it.
                let key = format!("breaker:{name}");
                if self.admin().overrides.contains_key(&key) {
                    remove.push(key);
                }
                summary = format!("breaker `{name}` reset: closed, counts cleared");
            }
            Op::ClearOverride { key } => {
                let mut keys = existing("").await?;
                if fleet.is_none() {
                    keys.extend(self.scheduled_keys(""));
                    keys.sort();
                    keys.dedup();
                    if key == "all" {
                        fleet_held.extend(self.fleet_keys(""));
                    }
                }
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
                summary = if key == "all" {
                    format!("every {scope} override cleared")
                } else {
                    format!("{scope} override `{key}` cleared")
                };
            }
        }
        Ok(Plan {
            set,
            remove,
            fleet_held,
            summary,
        })
    }

    /// Writes `plan` to the fleet layer in Redis (or, on a dry run, only says what it would
    /// change), then applies the fleet's new set here at once.
    async fn change_fleet(
        &self,
        req: &Request,
        g: &GlobalLimits,
        plan: Plan,
        now: SystemTime,
    ) -> Result<Outcome, ControlError> {
        let rt = &self.0;
        let keys = plan.keys();
        let Plan {
            set,
            remove,
            mut summary,
            ..
        } = plan;
        if let Some(t) = req.ttl {
            summary.push_str(&format!(" for {}", humantime::format_duration(t)));
        }
        if req.dry_run {
            let (version, before) = crate::overrides::fleet_store::preview(g, &keys)
                .await
                .map_err(|e| ControlError::Failed(format!("cannot read redis: {e}")))?;
            let changes = knob_changes(&keys, &before, &set);
            let mut lines = vec![format!(
                "dry run, nothing changed: {summary} on the fleet (at version {version})"
            )];
            lines.extend(changes.iter().map(|c| describe_change(c, "would be")));
            return Ok(Outcome {
                summary: lines.join("\n"),
                overrides: listed(&self.admin()),
                fleet_version: version,
                dry_run: true,
                changes,
            });
        }
        let (version, before) = crate::overrides::fleet_store::publish(g, &set, &remove)
            .await
            .map_err(|e| ControlError::Failed(format!("cannot write to redis: {e}")))?;
        let changes = knob_changes(&keys, &before, &set);
        let fleet_ctx = AuditCtx {
            now,
            caller: &req.caller.name,
            operation: req.op.name(),
            reason: &req.reason,
            scope: "fleet",
            ttl: req.ttl,
            fleet_version: Some(version),
        };
        {
            // `baseline` for "the layer holds nothing", as the audit has always said.
            let mut admin = self.admin();
            for c in &changes {
                let word = |v: &str| {
                    if v == NONE {
                        "baseline".to_string()
                    } else {
                        v.to_string()
                    }
                };
                admin.record(fleet_ctx.entry(&c.key, &word(&c.before), &word(&c.after)));
            }
        }
        // Apply here at once; the others follow on the announcement.
        let (current, set) = crate::overrides::fleet_store::fetch(g)
            .await
            .map_err(|e| ControlError::Failed(format!("cannot read back from redis: {e}")))?;
        self.blocking(move |rt| apply_fleet(rt, current, set))
            .await?;
        summary.push_str(&format!(" on the fleet (version {version})"));
        rt.event("override", format!("{summary} by {}", req.caller.name));
        let mut lines = vec![summary];
        lines.extend(changes.iter().map(|c| describe_change(c, "now")));
        return Ok(Outcome {
            summary: lines.join("\n"),
            overrides: listed(&self.admin()),
            fleet_version: version,
            dry_run: false,
            changes,
        });
    }

    /// Applies `plan` to this sidecar's own layer, reporting each touched knob before ->
    /// after, and fails naming the layer that still holds a knob the operator cleared.
    async fn change_local(
        &self,
        req: &Request,
        file: &Config,
        plan: Plan,
        now: SystemTime,
    ) -> Result<Outcome, ControlError> {
        let rt = &self.0;
        let keys = plan.keys();
        let Plan {
            set,
            remove,
            fleet_held,
            mut summary,
        } = plan;
        let ctx = AuditCtx {
            now,
            caller: &req.caller.name,
            operation: req.op.name(),
            reason: &req.reason,
            scope: "local",
            ttl: req.ttl,
            fleet_version: None,
        };
        let mut touched = keys;
        touched.extend(fleet_held.iter().filter(|k| !remove.contains(k)).cloned());
        let before: Vec<(String, Layer)> = {
            let admin = self.admin();
            touched.iter().map(|k| in_effect(file, &admin, k)).collect()
        };
        let mut suspended: Vec<String> = Vec::new();
        // What the local layer held before, to put back if the new snapshot cannot be built.
        let prior: Vec<(String, Option<Override>)> = {
            let admin = self.admin();
            touched
                .iter()
                .map(|k| (k.clone(), admin.overrides.get(k).cloned()))
                .collect()
        };
        let (gone, overrides) = {
            let mut admin = self.admin();
            let mut gone = Vec::new();
            for k in &remove {
                if let Some(o) = admin.overrides.remove(k) {
                    gone.push(o);
                }
                // Clearing or restoring a key the schedule layer holds suspends that
                // schedule for the key until its next start: the operator asked for the
                // baseline, and a command must not report it while the clock holds another.
                if let Some(o) = admin.scheduled.remove(k) {
                    if let Some(name) = schedule_of(&o).map(str::to_string) {
                        // A schedule that never fires again stays out until its hold ends.
                        let until = next_start(file, &name, chrono::Utc::now())
                            .or(o.expires)
                            .unwrap_or(now);
                        suspended.push(format!(
                            "schedule `{name}` held {k} ({}); suspended until {}",
                            o.kind.describe(),
                            humantime::format_rfc3339_seconds(until)
                        ));
                        admin.suspended.insert(k.clone(), (name, until));
                    }
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
            if let Err(e) = self.blocking(rebuild).await? {
                // Not in force, so not listed either: the local layer goes back to what it
                // was (a suspended schedule resumes at its next start as planned).
                let mut admin = self.admin();
                for (k, o) in prior {
                    match o {
                        Some(o) => admin.overrides.insert(k, o),
                        None => admin.overrides.remove(&k),
                    };
                }
                return Err(ControlError::Failed(format!(
                    "not applied: the new snapshot could not be built ({e}); the local overrides are as they were"
                )));
            }
        }
        // A reset drops every force on the breaker; a force another layer holds comes back.
        if matches!(req.op, Op::ResetBreaker { .. })
            || set
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
        let after: Vec<(String, Layer)> = {
            let admin = self.admin();
            touched.iter().map(|k| in_effect(file, &admin, k)).collect()
        };
        let mut lines = vec![summary];
        lines.extend(suspended);
        let mut held = Vec::new();
        for ((k, (b, bl)), (a, al)) in touched.iter().zip(&before).zip(&after) {
            lines.push(format!("{k}: {b} ({bl}) -> {a} ({al})"));
            // A removal that leaves another layer's value in force changed nothing here.
            if (remove.contains(k) || fleet_held.contains(k)) && b == a && *al != Layer::Baseline {
                held.push(format!("{k} is still {a}: the {al} layer holds it"));
            }
        }
        if !held.is_empty() {
            return Err(ControlError::Failed(format!(
                "{}; {}",
                lines.join("; "),
                held.join("; ")
            )));
        }
        Ok(Outcome {
            summary: lines.join("\n"),
            overrides,
            ..Default::default()
        })
    }
}

#[async_trait::async_trait]
impl Control for RuntimeControl {
    async fn status(&self) -> Status {
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
                LimitStatus {
                    name: l.name.clone(),
                    scope: l.scope,
                    max_requests: l.max_requests.get(),
                    window: l.window,
                    baseline_max_requests: base.max_requests.get(),
                    baseline_window: base.window,
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
            breakers.push(BreakerStatus {
                name: "upstream".into(),
                state: state.as_str().into(),
            });
        }
        for (feature, b) in snap.routes.feature_breakers() {
            breakers.push(BreakerStatus {
                name: format!("feature:{feature}"),
                state: b.state().0.as_str().into(),
            });
        }
        let shed = [
            "rate_limited",
            "queue_full",
            "queue_timeout",
            "circuit_open",
            "degraded",
        ]
        .into_iter()
        .map(|reason| (reason.to_string(), rt.metrics.shed_total(reason)))
        .collect();
        let (level, auto_level, manual_level) = st.degradation;
        Status {
            config_version: st.version,
            upstream: st.upstream.clone(),
            load_level: report.level.into(),
            degradation: Degradation {
                level,
                auto_level,
                manual_level,
                disabled_features: report.degradation.disabled_features.clone(),
                aggressive_cache: report.degradation.aggressive_cache,
            },
            limits,
            queue: st.queue_configured.then_some(QueueStatus {
                depth: q.depth,
                max_size: q.max_size,
                inflight: q.inflight,
                max_concurrency: q.max_concurrency,
                drain_rate_per_second: st.drain_rate,
            }),
            breakers,
            indicators: st
                .indicators
                .iter()
                .map(|r| IndicatorStatus {
                    name: r.indicator.as_str().into(),
                    value: r.value,
                    level: r.level.as_str().into(),
                    warning: r.thresholds.warning,
                    critical: r.thresholds.critical,
                })
                .collect(),
            overrides,
            fleet,
            fleet_version,
            version: env!("CARGO_PKG_VERSION").into(),
            shed,
            listeners: st
                .listeners
                .iter()
                .map(|l| ListenerStatus {
                    name: l.name.clone(),
                    listen: l.listen.to_string(),
                    upstream: l.upstream.clone(),
                    queue_depth: l.queue.depth,
                    inflight: l.queue.inflight,
                    breaker: l.breaker.map(|(state, _)| state.as_str().to_string()),
                })
                .collect(),
            schedules: timeline(&file, chrono::Utc::now())
                .into_iter()
                .map(|(name, active_until, next_start)| ScheduleStatus {
                    name,
                    active_until,
                    next_start,
                })
                .collect(),
        }
    }

    async fn change(&self, req: Request) -> Result<Outcome, ControlError> {
        let now = SystemTime::now();
        let file = self
            .0
            .file_config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let fleet = if req.fleet {
            Some(self.fleet_backend()?)
        } else {
            None
        };
        let plan = self.plan(&req, &file, fleet.as_ref(), now).await?;
        match &fleet {
            Some(g) => self.change_fleet(&req, g, plan, now).await,
            None => self.change_local(&req, &file, plan, now).await,
        }
    }

    async fn explain(&self, knob: &str) -> Result<Vec<Knob>, ControlError> {
        let rt = &self.0;
        let file = rt
            .file_config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let features = rt.current.load().routes.features.clone();
        let all = knobs(&file, &features);
        let wanted: Vec<String> = if knob.is_empty() {
            all
        } else if all.iter().any(|k| k == knob) {
            vec![knob.to_string()]
        } else {
            return Err(ControlError::NotFound(format!(
                "no knob `{knob}`; this sidecar's: {}",
                all.join(", ")
            )));
        };
        let admin = self.admin();
        Ok(wanted
            .into_iter()
            .map(|key| {
                let layers = chain(&admin, &key);
                let below = |i: usize| {
                    layers.get(i).map_or_else(
                        || (baseline(&file, &key), Layer::Baseline),
                        |(o, l)| (o.kind.describe(), *l),
                    )
                };
                let (value, layer) = below(0);
                let falls_back = (!layers.is_empty()).then(|| below(1));
                let top = layers.first().map(|(o, _)| *o);
                Knob {
                    value,
                    layer,
                    author: top.map_or(String::new(), |o| o.author.clone()),
                    reason: top.map_or(String::new(), |o| o.reason.clone()),
                    expires: top.and_then(|o| o.expires),
                    falls_back,
                    suspended: admin.suspended.get(&key).cloned(),
                    key,
                }
            })
            .collect())
    }

    async fn overrides(&self) -> Vec<reply::Override> {
        listed(&self.admin())
    }

    async fn watch(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.0.events.subscribe()
    }

    async fn fleet_status(&self) -> Result<FleetStatus, ControlError> {
        let g = self.fleet_backend()?;
        crate::overrides::fleet_store::list(&g)
            .await
            .map_err(|e| ControlError::Failed(format!("cannot read the fleet from redis: {e}")))
    }

    async fn audit(&self, limit: usize) -> Vec<String> {
        let admin = self.admin();
        let skip = admin.audit.len().saturating_sub(limit);
        admin.audit.iter().skip(skip).cloned().collect()
    }
}
