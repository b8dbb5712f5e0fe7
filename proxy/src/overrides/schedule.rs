//! The config's `schedules` as a layer computed from the clock: the overrides each asks for
//! at a given time, when each starts next, and what an operator's suspension leaves of them.
//! [`crate::lifecycle::run_schedules`] brings the layer in and out.

use std::collections::BTreeMap;
use std::time::SystemTime;

use floodgate_config::{Config, Schedule};

use super::model::{scaled, Kind, Override};

/// The activation of `s` holding at `now`: when it started and when it ends. A pattern
/// that fails to parse (the config was validated, so it should not) holds never.
fn activation(
    s: &Schedule,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> {
    let cron = s.cron.parse::<croner::Cron>().ok()?;
    let start = cron.find_previous_occurrence(&now, true).ok()?;
    let end = start + chrono::Duration::from_std(s.duration).ok()?;
    (now < end).then_some((start, end))
}

/// The overrides the config's schedules ask for at `now`.
pub fn scheduled_at(
    file: &Config,
    now: chrono::DateTime<chrono::Utc>,
) -> BTreeMap<String, Override> {
    let mut out = BTreeMap::new();
    for s in &file.schedules {
        let Some((start, end)) = activation(s, now) else {
            continue;
        };
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
                });
                out.insert(o.kind.key(), o);
            }
        }
        if let Some(level) = s.level {
            let o = made(Kind::Level(level));
            out.insert(o.kind.key(), o);
        }
        if let Some(n) = s.queue_max_size {
            let o = made(Kind::QueueSize(n));
            out.insert(o.kind.key(), o);
        }
        if let Some(n) = s.queue_max_concurrency {
            let o = made(Kind::QueueWorkers(n));
            out.insert(o.kind.key(), o);
        }
    }
    out
}

/// When the schedule `name` next starts after `now` (`None`: never again, or unknown).
pub fn next_start(
    file: &Config,
    name: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<SystemTime> {
    let s = file.schedules.iter().find(|s| s.name == name)?;
    let cron = s.cron.parse::<croner::Cron>().ok()?;
    cron.find_next_occurrence(&now, false)
        .ok()
        .map(SystemTime::from)
}

/// Each of the config's schedules at `now`: its name, when the activation holding now ends
/// (`None`: not active), and when it next starts (`None`: never again).
pub fn timeline(
    file: &Config,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<(String, Option<SystemTime>, Option<SystemTime>)> {
    file.schedules
        .iter()
        .map(|s| {
            let ends = activation(s, now).map(|(_, end)| SystemTime::from(end));
            (s.name.clone(), ends, next_start(file, &s.name, now))
        })
        .collect()
}

/// The schedule an override of the schedule layer comes from (its author is
/// `schedule:NAME`).
pub fn schedule_of(o: &Override) -> Option<&str> {
    o.author.strip_prefix("schedule:")
}

/// `wanted` less the keys an operator suspended from the schedule holding them; suspensions
/// whose time has come (the schedule started again) are dropped first.
pub fn unsuspended(
    wanted: BTreeMap<String, Override>,
    suspended: &mut BTreeMap<String, (String, SystemTime)>,
    now: SystemTime,
) -> BTreeMap<String, Override> {
    suspended.retain(|_, (_, until)| *until > now);
    wanted
        .into_iter()
        .filter(|(k, o)| {
            suspended
                .get(k)
                .is_none_or(|(name, _)| Some(name.as_str()) != schedule_of(o))
        })
        .collect()
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
                max_requests: 200
            }
        );
        assert_eq!(on["level"].kind, Kind::Level(Level::Degraded));
        assert_eq!(
            on["level"].expires,
            Some(SystemTime::from(at(30, 20, 0))),
            "ends 720 minutes after 08:00"
        );
        assert_eq!(on["level"].author, "schedule:weekday_peak");
        let t = |d, h, m| timeline(&cfg, at(d, h, m));
        assert_eq!(
            t(30, 9, 30),
            [(
                "weekday_peak".to_string(),
                Some(SystemTime::from(at(30, 20, 0))),
                Some(SystemTime::from(
                    chrono::Utc.with_ymd_and_hms(2026, 12, 1, 8, 0, 0).unwrap()
                ))
            )],
            "active until 20:00, next on Tuesday at 08:00"
        );
        assert_eq!(t(29, 9, 0)[0].1, None, "not active on a Sunday");
        assert_eq!(t(29, 9, 0)[0].2, Some(SystemTime::from(at(30, 8, 0))));
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
    fn a_suspended_key_stays_out_until_its_schedule_starts_again() {
        let cfg = config(
            "schedules:\n  - { name: peak, cron: \"0 8 * * *\", duration_minutes: 720, limits_multiplier: 2, level: degraded }\n",
        );
        let at = |d, h, m| chrono::Utc.with_ymd_and_hms(2026, 11, d, h, m, 0).unwrap();
        let now = at(30, 9, 0);
        let next = next_start(&cfg, "peak", now).unwrap();
        assert_eq!(
            next,
            SystemTime::from(chrono::Utc.with_ymd_and_hms(2026, 12, 1, 8, 0, 0).unwrap())
        );
        let mut suspended = BTreeMap::from([("limit:api".to_string(), ("peak".to_string(), next))]);
        let held = unsuspended(
            scheduled_at(&cfg, now),
            &mut suspended,
            SystemTime::from(now),
        );
        assert!(!held.contains_key("limit:api"), "suspended");
        assert!(held.contains_key("level"), "only the key that was cleared");
        // The next day's activation holds it again.
        let tomorrow = chrono::Utc.with_ymd_and_hms(2026, 12, 1, 8, 30, 0).unwrap();
        let held = unsuspended(
            scheduled_at(&cfg, tomorrow),
            &mut suspended,
            SystemTime::from(tomorrow),
        );
        assert_eq!(held["limit:api"].kind.describe(), "max_requests 200");
        assert!(suspended.is_empty());
    }
}
