//! The protobuf form of [`crate::reply`]'s types: the one place that knows how the sidecar's
//! answers look on the wire (times as Unix seconds, "none" as 0 or an empty string, a
//! missing threshold as NaN, an override's value both in words and typed).

use std::time::SystemTime;

use crate::pb;
use crate::reply::{
    Event, FleetStatus, Knob, KnobChange, Outcome, Override, Sidecar, Status, Value,
};

fn unix_s(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl From<Override> for pb::Override {
    fn from(o: Override) -> Self {
        let mut out = pb::Override {
            key: o.key,
            value: o.value.to_string(),
            reason: o.reason,
            author: o.author,
            expires_at: o.expires.map_or(0, unix_s),
            created_at: unix_s(o.created),
            scope: o.layer.as_str().into(),
            ..Default::default()
        };
        match o.value {
            Value::MaxRequests(n) => out.max_requests = Some(n),
            Value::Window(w) => out.window_seconds = Some(w.as_secs()),
            Value::Level(l) => out.level = Some(l.as_str().into()),
            Value::Feature(on) | Value::Aggressive(on) => out.enabled = Some(on),
            Value::QueueSize(n) => out.max_size = Some(n),
            Value::QueueWorkers(n) => out.max_concurrency = Some(n),
            Value::Breaker(open) => out.open = Some(open),
        }
        out
    }
}

impl From<KnobChange> for pb::KnobChange {
    fn from(c: KnobChange) -> Self {
        pb::KnobChange {
            key: c.key,
            before: c.before,
            after: c.after,
        }
    }
}

impl From<Outcome> for pb::ChangeReply {
    fn from(o: Outcome) -> Self {
        pb::ChangeReply {
            summary: o.summary,
            overrides: o.overrides.into_iter().map(Into::into).collect(),
            fleet_version: o.fleet_version,
            dry_run: o.dry_run,
            changes: o.changes.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<Knob> for pb::Knob {
    fn from(k: Knob) -> Self {
        let (falls_back_to, falls_back_layer) = k
            .falls_back
            .map_or((String::new(), String::new()), |(v, l)| {
                (v, l.as_str().into())
            });
        let (suspended_schedule, suspended_until) = k
            .suspended
            .map_or((String::new(), 0), |(name, until)| (name, unix_s(until)));
        pb::Knob {
            key: k.key,
            value: k.value,
            layer: k.layer.as_str().into(),
            author: k.author,
            reason: k.reason,
            expires_at: k.expires.map_or(0, unix_s),
            falls_back_to,
            falls_back_layer,
            suspended_schedule,
            suspended_until,
        }
    }
}

impl From<Status> for pb::StatusReply {
    fn from(s: Status) -> Self {
        let d = s.degradation;
        let q = s.queue;
        pb::StatusReply {
            config_version: s.config_version,
            upstream: s.upstream,
            level: s.load_level,
            degradation: Some(pb::Degradation {
                level: d.level.as_str().into(),
                auto_level: d.auto_level.as_str().into(),
                manual_level: d.manual_level.map_or("", |l| l.as_str()).into(),
                disabled_features: d.disabled_features,
                aggressive_cache: d.aggressive_cache,
            }),
            limits: s
                .limits
                .into_iter()
                .map(|l| pb::Limit {
                    name: l.name,
                    scope: match l.scope {
                        floodgate_config::Scope::Global => "global".into(),
                        floodgate_config::Scope::Local => "local".into(),
                    },
                    max_requests: l.max_requests,
                    window_seconds: l.window.as_secs(),
                    baseline_max_requests: l.baseline_max_requests,
                    baseline_window_seconds: l.baseline_window.as_secs(),
                    utilization: l.utilization,
                })
                .collect(),
            queue: Some(pb::Queue {
                configured: q.is_some(),
                depth: q.map_or(0, |q| q.depth),
                max_size: q.map_or(0, |q| q.max_size),
                inflight: q.map_or(0, |q| q.inflight),
                max_concurrency: q.map_or(0, |q| q.max_concurrency),
                drain_rate_per_second: q.map_or(0.0, |q| q.drain_rate_per_second),
            }),
            breakers: s
                .breakers
                .into_iter()
                .map(|b| pb::Breaker {
                    name: b.name,
                    state: b.state,
                })
                .collect(),
            indicators: s
                .indicators
                .into_iter()
                .map(|i| pb::Indicator {
                    name: i.name,
                    value: i.value,
                    level: i.level,
                    warning: i.warning.unwrap_or(f64::NAN),
                    critical: i.critical.unwrap_or(f64::NAN),
                })
                .collect(),
            overrides: s.overrides,
            fleet: s.fleet,
            fleet_version: s.fleet_version,
            version: s.version,
            shed: s
                .shed
                .into_iter()
                .map(|(reason, total)| pb::Shed { reason, total })
                .collect(),
            schedules: s
                .schedules
                .into_iter()
                .map(|c| pb::Schedule {
                    name: c.name,
                    active_until: c.active_until.map_or(0, unix_s),
                    next_start: c.next_start.map_or(0, unix_s),
                })
                .collect(),
            listeners: s
                .listeners
                .into_iter()
                .map(|l| pb::Listener {
                    name: l.name,
                    listen: l.listen,
                    upstream: l.upstream.unwrap_or_default(),
                    queue_depth: l.queue_depth,
                    inflight: l.inflight,
                    breaker: l.breaker.unwrap_or_default(),
                })
                .collect(),
        }
    }
}

impl From<Sidecar> for pb::Sidecar {
    fn from(s: Sidecar) -> Self {
        pb::Sidecar {
            id: s.id,
            pod: s.pod,
            config_version: s.config_version,
            applied_version: s.applied_version,
            rps: s.rps,
            error_rate: s.error_rate,
            p95_ms: s.p95_ms,
            seen_seconds_ago: s.silent_for.as_secs(),
            stale: s.stale,
        }
    }
}

impl From<FleetStatus> for pb::FleetStatusReply {
    fn from(f: FleetStatus) -> Self {
        pb::FleetStatusReply {
            version: f.version,
            sidecars: f.sidecars.into_iter().map(Into::into).collect(),
            expected_seconds: f.expected.as_secs(),
            stale_seconds: f.stale.as_secs(),
        }
    }
}

impl From<Event> for pb::Event {
    fn from(e: Event) -> Self {
        pb::Event {
            time_ms: unix_ms(e.time),
            kind: e.kind,
            summary: e.summary,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::reply::Layer;

    #[test]
    fn an_override_goes_out_in_words_and_typed() {
        let o = Override {
            key: "window:api".into(),
            value: Value::Window(Duration::from_secs(30)),
            reason: "INC".into(),
            author: "sre".into(),
            created: SystemTime::UNIX_EPOCH + Duration::from_secs(10),
            expires: None,
            layer: Layer::Fleet,
        };
        let p = pb::Override::from(o);
        assert_eq!(
            (p.value.as_str(), p.window_seconds, p.max_requests),
            ("window 30 s", Some(30), None)
        );
        assert_eq!(
            (p.scope.as_str(), p.created_at, p.expires_at),
            ("fleet", 10, 0)
        );
        let level = pb::Override::from(Override {
            value: Value::Level(floodgate_config::Level::Minimal),
            key: "level".into(),
            layer: Layer::Local,
            ..Override {
                key: String::new(),
                value: Value::Breaker(true),
                reason: String::new(),
                author: String::new(),
                created: SystemTime::UNIX_EPOCH,
                expires: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(99)),
                layer: Layer::Local,
            }
        });
        assert_eq!(
            (level.level.as_deref(), level.open, level.expires_at),
            (Some("minimal"), None, 99)
        );
    }

    #[test]
    fn no_queue_and_no_threshold_read_as_the_wire_has_always_said() {
        let s = Status {
            config_version: 1,
            upstream: "127.0.0.1:1".into(),
            load_level: "ok".into(),
            degradation: crate::reply::Degradation {
                level: floodgate_config::Level::Full,
                auto_level: floodgate_config::Level::Full,
                manual_level: None,
                disabled_features: Vec::new(),
                aggressive_cache: false,
            },
            limits: Vec::new(),
            queue: None,
            breakers: Vec::new(),
            indicators: vec![crate::reply::IndicatorStatus {
                name: "error_rate".into(),
                value: 0.0,
                level: "ok".into(),
                warning: Some(0.05),
                critical: None,
            }],
            overrides: 0,
            fleet: "off".into(),
            fleet_version: 0,
            version: "0".into(),
            shed: vec![("rate_limited".into(), 3)],
            schedules: vec![crate::reply::ScheduleStatus {
                name: "peak".into(),
                active_until: None,
                next_start: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(60)),
            }],
            listeners: Vec::new(),
        };
        let p = pb::StatusReply::from(s);
        let q = p.queue.unwrap();
        assert!(!q.configured && q.max_size == 0);
        assert_eq!(p.degradation.unwrap().manual_level, "");
        assert!(p.indicators[0].critical.is_nan());
        assert_eq!(p.indicators[0].warning, 0.05);
        assert_eq!(
            (p.shed[0].reason.as_str(), p.shed[0].total),
            ("rate_limited", 3)
        );
    }
}
