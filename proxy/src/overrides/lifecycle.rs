//! The one writer of the snapshot for override changes: builds it from the file's config
//! with the overrides layered on, installs it, and re-applies the degradation state; TTL
//! expiry and fleet updates come through here too.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use floodgate_config::Config;
use floodgate_policy::degrade::Cause;
use tracing::{error, info};

use super::audit::AuditCtx;
use super::model::{effective_config, Kind, Override};
use crate::state::{Base, Runtime};

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

/// Rebuilds the snapshot from the file's config plus the overrides and swaps it in. The
/// config version stays (it counts reloads of the file); `floodgate_override_generation`
/// counts these rebuilds instead.
pub fn rebuild(rt: &Runtime) -> Result<u64, String> {
    let file = rt
        .file_config
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let cfg = {
        let admin = rt.admin.lock().unwrap_or_else(|e| e.into_inner());
        effective_config(&file, &admin)
    };
    let old = rt.current.load_full();
    let base = Base::build(cfg, old.version, &rt.metrics, Some(&old.base), &rt.clock)
        .map_err(|e| e.to_string())?;
    rt.metrics.override_generation.inc();
    Ok(install(rt, base))
}

/// Sets the degradation state from the level and feature overrides.
pub(crate) fn apply_degradation(rt: &Runtime, why: &str) {
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
pub(crate) fn revert(rt: &Runtime, gone: &[Override], why: &str) {
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
