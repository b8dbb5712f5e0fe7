//! The config's `schedules`: the overrides each asks for at a given time, and the sweep
//! that brings them in and out.

use std::collections::BTreeMap;
use std::time::SystemTime;

use floodgate_config::Config;

use super::audit::AuditCtx;
use super::lifecycle::revert;
use super::model::{scaled, Kind, Override};
use crate::state::Runtime;

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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use floodgate_config::Level;

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
}
