//! The one writer of the snapshot requests see. A snapshot is built from the file's config
//! with the override layers on it and swapped in here, and so is every change of the
//! degradation state (an operator's, a schedule's, the fleet's, the automatic controller's,
//! a TTL running out); each transition is logged with its cause, counted and published.
//! Reads (status, metrics) never come through here.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use floodgate_config::{Config, Level};
use floodgate_policy::degrade::Cause;
use floodgate_policy::load::Reading;
use tracing::{error, info, warn};

use crate::degrade::Effective;
use crate::overrides::audit::AuditCtx;
use crate::overrides::model::{effective_config, Kind, Override};
use crate::overrides::schedule::{schedule_of, scheduled_at, unsuspended};
use crate::state::{Base, Runtime, Snapshot};

// === the snapshot ===

/// Holds the right to write the snapshot. Every writer reads the layers, builds and stores
/// under it, so a change that was listed is also the one in force: without it, a writer that
/// read the overrides before an operator's change (the sweeper's expiry, a reload resolving
/// the upstream) could store its older snapshot over the new one.
pub fn writer(rt: &Runtime) -> std::sync::MutexGuard<'_, ()> {
    rt.writer.lock().unwrap_or_else(|e| e.into_inner())
}

/// A snapshot of `file` with the admin overrides layered on (blocking: resolves the upstream).
pub fn build_base(rt: &Runtime, file: &Config) -> Result<Base, crate::state::BuildError> {
    let cfg = {
        let admin = rt.admin.lock().unwrap_or_else(|e| e.into_inner());
        effective_config(file, &admin, SystemTime::now())
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

/// Swaps in `base`, bringing the degradation state and the long-lived policies along. The
/// caller holds [`writer`] (a reload holds it across building `base` and this).
pub fn install(rt: &Runtime, base: Base) -> u64 {
    let old = rt.current.load_full();
    let version = base.version;
    let base = Arc::new(base);
    install_degradation(rt, base.clone());
    rt.apply_policies(&base, Some(&old.base));
    rt.metrics.config_version.set(version as i64);
    version
}

/// Rebuilds the snapshot from the file's config plus the overrides and swaps it in. The
/// config version stays (it counts reloads of the file); `floodgate_override_generation`
/// counts these rebuilds instead.
pub fn rebuild(rt: &Runtime) -> Result<u64, String> {
    let _w = writer(rt);
    rebuild_locked(rt)
}

fn rebuild_locked(rt: &Runtime) -> Result<u64, String> {
    let file = rt
        .file_config
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let cfg = {
        let admin = rt.admin.lock().unwrap_or_else(|e| e.into_inner());
        effective_config(&file, &admin, SystemTime::now())
    };
    let old = rt.current.load_full();
    let base = Base::build(cfg, old.version, &rt.metrics, Some(&old.base), &rt.clock)
        .map_err(|e| e.to_string())?;
    rt.metrics.override_generation.inc();
    Ok(install(rt, base))
}

/// Sets the degradation state from the level and feature overrides.
pub(crate) fn apply_degradation(rt: &Runtime, why: &str) {
    let _w = writer(rt);
    apply_degradation_locked(rt, why);
}

fn apply_degradation_locked(rt: &Runtime, why: &str) {
    apply_breakers(rt);
    let from = {
        let admin = rt.admin.lock().unwrap_or_else(|e| e.into_inner());
        let mut state = rt.degrade.lock().unwrap_or_else(|e| e.into_inner());
        let from = state.level();
        state.manual = None;
        state.flags.clear();
        state.aggressive = None;
        for o in admin.in_force(SystemTime::now()) {
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
    refresh(rt, from, Cause::Manual, why);
}

/// Holds each breaker open or closed as the breaker overrides in force say, and lets go of
/// one no override holds any more (its counts and state stay as they were).
fn apply_breakers(rt: &Runtime) {
    use floodgate_policy::breaker::Forced;
    let wanted: BTreeMap<String, bool> = {
        let admin = rt.admin.lock().unwrap_or_else(|e| e.into_inner());
        admin
            .in_force(SystemTime::now())
            .filter_map(|o| match &o.kind {
                Kind::Breaker { name, open } => Some((name.clone(), *open)),
                _ => None,
            })
            .collect()
    };
    let snap = rt.current.load_full();
    // `upstream` holds every listener's upstream breaker (the one-listener form has one).
    let upstreams = rt
        .lanes
        .iter()
        .map(|l| ("upstream".to_string(), &l.breaker));
    let breakers = upstreams.chain(
        snap.routes
            .feature_breakers()
            .map(|(f, b)| (format!("feature:{f}"), b)),
    );
    for (name, b) in breakers {
        let want = wanted
            .get(&name)
            .map(|&open| if open { Forced::Open } else { Forced::Closed });
        if b.state().1 == want {
            continue;
        }
        match want {
            Some(Forced::Open) => b.force_open(),
            Some(Forced::Closed) => b.force_close(),
            None => b.unforce(),
        }
        info!(breaker = name.as_str(), forced = ?want, "breaker override applied");
    }
}

/// Reverts overrides whose TTL ran out (the sweeper calls this every second).
pub fn expire(rt: &Runtime) {
    let _w = writer(rt);
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
pub(crate) fn revert(rt: &Runtime, gone: &[Override], why: &str) {
    let structural = gone.iter().any(|o| o.kind.is_structural());
    if structural {
        if let Err(e) = rebuild_locked(rt) {
            error!("cannot rebuild the snapshot after removing overrides: {e}");
        }
    }
    if gone.iter().any(|o| !o.kind.is_structural()) {
        apply_degradation_locked(rt, why);
    }
}

/// Applies the fleet's overrides read from Redis at `version`, if anything changed.
pub fn apply_fleet(rt: &Runtime, version: u64, set: BTreeMap<String, Override>) {
    let _w = writer(rt);
    let changed: Vec<Override> = {
        let mut admin = rt.admin.lock().unwrap_or_else(|e| e.into_inner());
        let same = |a: &Override, b: &Override| a.kind == b.kind && a.expires == b.expires;
        let differs = set.len() != admin.fleet.len()
            || set
                .iter()
                .any(|(k, o)| admin.fleet.get(k).is_none_or(|p| !same(p, o)));
        if !differs {
            admin.fleet_version = admin.fleet_version.max(version);
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
    // Reported (heartbeat, status) only once in force: `--wait`'s "applied on N/N" means
    // applied, not received.
    let mut admin = rt.admin.lock().unwrap_or_else(|e| e.into_inner());
    admin.fleet_version = admin.fleet_version.max(version);
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

// === the schedule layer ===

/// Brings the schedule layer up to date with the clock (the sweeper calls this every
/// second). The layer is computed, not stored as changes: one audit entry when a schedule
/// starts holding and one when it stops, and a new snapshot only when what the layer asks
/// for changed (not when only an end time moved, as a schedule that fires every minute
/// does). Keys an operator suspended stay out until the schedule's next start.
pub fn run_schedules(rt: &Runtime) {
    let _w = writer(rt);
    let now = chrono::Utc::now();
    let sys = SystemTime::from(now);
    let wanted = {
        let file = rt.file_config.lock().unwrap_or_else(|e| e.into_inner());
        let idle = rt.admin.lock().map_or(true, |a| {
            a.scheduled.is_empty() && a.active_schedules.is_empty()
        });
        if file.schedules.is_empty() && idle {
            return;
        }
        scheduled_at(&file, now)
    };
    let changed: Vec<Override> = {
        let mut admin = rt.admin.lock().unwrap_or_else(|e| e.into_inner());
        let active: std::collections::BTreeSet<String> = wanted
            .values()
            .filter_map(|o| schedule_of(o).map(str::to_string))
            .collect();
        let wanted = unsuspended(wanted, &mut admin.suspended, sys);
        let started: Vec<String> = active
            .difference(&admin.active_schedules)
            .cloned()
            .collect();
        let ended: Vec<String> = admin
            .active_schedules
            .difference(&active)
            .cloned()
            .collect();
        for name in &started {
            let knobs: Vec<String> = wanted
                .values()
                .filter(|o| schedule_of(o) == Some(name.as_str()))
                .map(|o| format!("{} {}", o.kind.key(), o.kind.describe()))
                .collect();
            let until = wanted
                .values()
                .find(|o| schedule_of(o) == Some(name.as_str()))
                .and_then(|o| o.expires);
            let ctx = AuditCtx {
                now: sys,
                caller: &format!("schedule:{name}"),
                operation: "schedule.start",
                reason: "cron",
                scope: "local",
                ttl: until.and_then(|e| e.duration_since(sys).ok()),
                fleet_version: None,
            };
            admin.record(ctx.entry(name, "", &knobs.join(", ")));
        }
        for name in &ended {
            let ctx = AuditCtx {
                now: sys,
                caller: &format!("schedule:{name}"),
                operation: "schedule.end",
                reason: "cron",
                scope: "local",
                ttl: None,
                fleet_version: None,
            };
            admin.record(ctx.entry(name, "", "baseline"));
        }
        admin.active_schedules = active;
        let same_effect = wanted.len() == admin.scheduled.len()
            && wanted
                .iter()
                .all(|(k, o)| admin.scheduled.get(k).is_some_and(|p| p.kind == o.kind));
        let old = std::mem::replace(&mut admin.scheduled, wanted);
        if same_effect {
            return;
        }
        let mut changed: Vec<Override> = old.into_values().collect();
        changed.extend(admin.scheduled.values().cloned());
        changed
    };
    rt.event("override", "scheduled overrides changed".into());
    revert(rt, &changed, "schedule");
}

// === the degradation state ===

/// Swaps in `base` (a new config) with the degradation state recomputed for it.
pub fn install_degradation(rt: &Runtime, base: Arc<Base>) {
    let (effective, from) = {
        let mut state = rt.degrade.lock().unwrap_or_else(|e| e.into_inner());
        let from = state.level();
        state.configure(&base.config);
        (Effective::compute(&base.config, &base.routes, &state), from)
    };
    swap(
        rt,
        base,
        effective,
        from,
        Cause::Config,
        "config file changed",
    );
}

/// Recomputes the degradation state after a change of `cause`.
pub fn refresh(rt: &Runtime, from: Level, cause: Cause, why: &str) {
    let base = rt.current.load().base.clone();
    let effective = {
        let state = rt.degrade.lock().unwrap_or_else(|e| e.into_inner());
        Effective::compute(&base.config, &base.routes, &state)
    };
    swap(rt, base, effective, from, cause, why);
}

fn swap(rt: &Runtime, base: Arc<Base>, effective: Effective, from: Level, cause: Cause, why: &str) {
    let to = effective.level;
    let snap = Arc::new(Snapshot {
        base,
        degrade: Arc::new(effective),
    });
    rt.current.store(snap.clone());
    if from != to {
        let (f, t) = (from.as_str(), to.as_str());
        rt.event(
            "level",
            format!("degradation {f} -> {t} ({}): {why}", cause.as_str()),
        );
        rt.metrics
            .degradation_transitions
            .with_label_values(&[f, t, cause.as_str()])
            .inc();
        if to > from {
            warn!(
                from = f,
                to = t,
                cause = cause.as_str(),
                why,
                "degradation level raised"
            );
        } else {
            info!(
                from = f,
                to = t,
                cause = cause.as_str(),
                why,
                "degradation level lowered"
            );
        }
    }
    snap.publish_degradation(&rt.metrics);
}

/// The sweeper's once-a-second look: runs the automatic controller over the indicators.
pub fn tick_degradation(rt: &Runtime, readings: &[Reading], breaker_open: bool) {
    let _w = writer(rt);
    let snap = rt.current.load();
    let (change, from) = {
        let mut state = rt.degrade.lock().unwrap_or_else(|e| e.into_inner());
        let from = state.level();
        let now = rt.clock.elapsed();
        let change = state
            .auto
            .evaluate(now, readings, breaker_open, &snap.config.load_indicators);
        (change, from)
    };
    if let Some(c) = change {
        info!(
            from = c.from.as_str(),
            to = c.to.as_str(),
            why = c.why.as_str(),
            "automatic degradation changed its level"
        );
        refresh(rt, from, c.cause, &c.why);
    }
}
