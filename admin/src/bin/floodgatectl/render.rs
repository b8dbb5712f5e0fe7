//! Replies as people read them: sentences and tables, every table with its header row.
//! Each function returns the text; writing it is `out`'s job. (JSON and YAML are serde's.)

use floodgate_admin::pb;

use crate::table::{Align::Left, Align::Right, Table};

/// A threshold the indicator has, or `-` (the proto sends NaN for none).
fn threshold(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v}")
    }
}

/// `secs` as a person reads a time left: `45s`, `9h 36m`, `2d 3h`, the two largest units.
pub(crate) fn human_duration(secs: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let Some(i) = UNITS.iter().position(|(n, _)| secs >= *n) else {
        return "0s".into();
    };
    let mut units = UNITS.iter().skip(i);
    let mut out = String::new();
    if let Some((n, u)) = units.next() {
        out = format!("{}{u}", secs / n);
        if let Some((m, v)) = units.next() {
            let rest = secs % n / m;
            if rest > 0 {
                out.push_str(&format!(" {rest}{v}"));
            }
        }
    }
    out
}

/// Unix seconds now, for the time left of overrides.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn status(s: &pb::StatusReply) -> String {
    let d = s.degradation.clone().unwrap_or_default();
    let mut out = format!(
        "config version {}   upstream {}   load {}\n",
        s.config_version,
        s.upstream,
        s.level.to_uppercase()
    );
    let manual = if d.manual_level.is_empty() {
        String::new()
    } else {
        format!(" (manual {})", d.manual_level)
    };
    let off = if d.disabled_features.is_empty() {
        "none".to_string()
    } else {
        d.disabled_features.join(", ")
    };
    out += &format!(
        "degradation {}{manual}, automatic {}; features off: {off}; aggressive cache {}\n",
        d.level,
        d.auto_level,
        if d.aggressive_cache { "on" } else { "off" }
    );
    if let Some(q) = &s.queue {
        if q.configured {
            out += &format!(
                "queue {}/{} waiting, {}/{} in flight, draining {:.1}/s\n",
                q.depth, q.max_size, q.inflight, q.max_concurrency, q.drain_rate_per_second
            );
        }
    }
    out += &format!(
        "overrides in force: {}   fleet sync: {} (version {})\n",
        s.overrides, s.fleet, s.fleet_version
    );
    out += &schedules(&s.schedules, unix_now());
    out += "\n";
    out += &listeners(&s.listeners);
    out += "\n";
    out += &limits(&s.limits);
    if !s.breakers.is_empty() {
        out += "\n";
        out += &breakers(&s.breakers);
    }
    out += "\n";
    let mut t = Table::new(&[
        ("indicator", Left),
        ("value", Right),
        ("warning", Right),
        ("critical", Right),
        ("level", Left),
    ]);
    for i in &s.indicators {
        t.row(vec![
            i.name.clone(),
            format!("{:.3}", i.value),
            threshold(i.warning),
            threshold(i.critical),
            i.level.clone(),
        ]);
    }
    out + &t.render()
}

/// One line per schedule: `schedule weekday_peak: active, ends in 3h 2m (...); next start
/// in 2d 20h (...)`. Times in UTC, as the config's cron patterns are.
fn schedules(schedules: &[pb::Schedule], now: u64) -> String {
    let at = |unix: u64| {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix);
        humantime::format_rfc3339_seconds(t).to_string()
    };
    schedules
        .iter()
        .map(|c| {
            let held = match c.active_until {
                0 => "not active".to_string(),
                end => format!(
                    "active, ends in {} ({})",
                    human_duration(end.saturating_sub(now)),
                    at(end)
                ),
            };
            let next = match c.next_start {
                0 => "never starts again".to_string(),
                start => format!(
                    "next start in {} ({})",
                    human_duration(start.saturating_sub(now)),
                    at(start)
                ),
            };
            format!("schedule {}: {held}; {next}\n", c.name)
        })
        .collect()
}

/// Each listener with its upstream, queue and breaker (a sidecar older than listeners sends
/// none: nothing is printed).
fn listeners(listeners: &[pb::Listener]) -> String {
    if listeners.is_empty() {
        return String::new();
    }
    let mut t = Table::new(&[
        ("listener", Left),
        ("listen", Left),
        ("upstream", Left),
        ("queue", Right),
        ("in_flight", Right),
        ("breaker", Left),
    ]);
    for l in listeners {
        let or_dash = |v: &str| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.to_string()
            }
        };
        t.row(vec![
            l.name.clone(),
            l.listen.clone(),
            if l.upstream.is_empty() {
                "(removed: restart to free the port)".into()
            } else {
                l.upstream.clone()
            },
            l.queue_depth.to_string(),
            l.inflight.to_string(),
            or_dash(&l.breaker),
        ]);
    }
    t.render()
}

pub(crate) fn limits(limits: &[pb::Limit]) -> String {
    if limits.is_empty() {
        return "no rate limits configured\n".into();
    }
    let mut t = Table::new(&[
        ("limit", Left),
        ("scope", Left),
        ("max_requests", Right),
        ("window_s", Right),
        ("baseline", Right),
        ("baseline_window_s", Right),
        ("used", Right),
    ]);
    for l in limits {
        t.row(vec![
            l.name.clone(),
            l.scope.clone(),
            l.max_requests.to_string(),
            l.window_seconds.to_string(),
            l.baseline_max_requests.to_string(),
            l.baseline_window_seconds.to_string(),
            format!("{:.0}%", l.utilization * 100.0),
        ]);
    }
    t.render()
}

pub(crate) fn breakers(breakers: &[pb::Breaker]) -> String {
    if breakers.is_empty() {
        return "no circuit breakers configured\n".into();
    }
    let mut t = Table::new(&[("breaker", Left), ("state", Left)]);
    for b in breakers {
        t.row(vec![b.name.clone(), b.state.clone()]);
    }
    t.render()
}

pub(crate) fn queue(q: &pb::Queue) -> String {
    if q.configured {
        format!(
            "Queue size: {}/{}  in flight: {}/{}  drain: {:.1}/s\n",
            q.depth, q.max_size, q.inflight, q.max_concurrency, q.drain_rate_per_second
        )
    } else {
        format!(
            "no queue configured (in flight to the app: {})\n",
            q.inflight
        )
    }
}

/// `fleet status`: every expected sidecar, stale ones marked, with what it applied.
pub(crate) fn fleet(f: &pb::FleetStatusReply) -> String {
    let applied = crate::fleet_wait::Applied::of(f, f.version);
    let mut out = format!("fleet override version {}: {}\n", f.version, applied.line());
    let mut t = Table::new(&[
        ("sidecar", Left),
        ("pod", Left),
        ("state", Left),
        ("seen", Right),
        ("config", Right),
        ("applied", Right),
        ("rps", Right),
        ("errors", Right),
        ("p95_ms", Right),
    ]);
    for s in &f.sidecars {
        t.row(vec![
            s.id.clone(),
            s.pod.clone(),
            if s.stale { "STALE" } else { "live" }.into(),
            format!("{} ago", human_duration(s.seen_seconds_ago)),
            s.config_version.to_string(),
            s.applied_version.to_string(),
            format!("{:.1}", s.rps),
            format!("{:.2}%", s.error_rate * 100.0),
            format!("{:.1}", s.p95_ms),
        ]);
    }
    out += &t.render();
    // A stale sidecar's load is as old as its last heartbeat: leave it out of the sums.
    let live: Vec<&pb::Sidecar> = f.sidecars.iter().filter(|s| !s.stale).collect();
    let total: f64 = live.iter().map(|s| s.rps).sum();
    if total > 0.0 && !live.is_empty() {
        let mean = total / live.len() as f64;
        let max = live.iter().map(|s| s.rps).fold(0.0, f64::max);
        out += &format!(
            "load distribution: {total:.1} rps in all, busiest at {:.0}% of the mean\n",
            max / mean * 100.0
        );
    }
    if f.expected_seconds > 0 {
        out += &format!(
            "expected: every sidecar heard from in the last {}; stale: silent for {} or more\n",
            human_duration(f.expected_seconds),
            human_duration(f.stale_seconds)
        );
    }
    out
}

/// One knob of `floodgatectl explain`, for -o json/yaml.
#[derive(serde::Serialize, PartialEq, Debug)]
pub(crate) struct KnobView {
    pub key: String,
    pub value: String,
    pub layer: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub author: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Unix seconds; absent without an expiry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub falls_back_to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub falls_back_layer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspended_schedule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspended_until: Option<u64>,
}

impl KnobView {
    pub(crate) fn new(k: &pb::Knob) -> Self {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Self {
            key: k.key.clone(),
            value: k.value.clone(),
            layer: k.layer.clone(),
            author: k.author.clone(),
            reason: k.reason.clone(),
            expires_at: (k.expires_at > 0).then_some(k.expires_at),
            falls_back_to: some(&k.falls_back_to),
            falls_back_layer: some(&k.falls_back_layer),
            suspended_schedule: some(&k.suspended_schedule),
            suspended_until: (k.suspended_until > 0).then_some(k.suspended_until),
        }
    }
}

/// `floodgatectl explain`, as of `now` (Unix seconds).
pub(crate) fn knobs(k: &[KnobView], now: u64) -> String {
    let mut t = Table::new(&[
        ("knob", Left),
        ("value", Left),
        ("set by", Left),
        ("time left", Left),
        ("then", Left),
    ]);
    for k in k {
        let set_by = match (k.layer.as_str(), k.author.is_empty()) {
            ("baseline", _) => "config file".to_string(),
            (layer, false) => format!("{layer}: {} ({})", k.author, k.reason),
            (layer, true) => layer.to_string(),
        };
        let left = match k.expires_at {
            None if k.layer == "baseline" => String::new(),
            None => "until cleared".into(),
            Some(e) if e > now => format!("{} left", human_duration(e - now)),
            Some(_) => "expiring".into(),
        };
        let then = match (&k.falls_back_to, &k.falls_back_layer) {
            (Some(v), Some(l)) => format!("{v} ({l})"),
            _ => String::new(),
        };
        t.row(vec![k.key.clone(), k.value.clone(), set_by, left, then]);
        if let (Some(s), Some(until)) = (&k.suspended_schedule, k.suspended_until) {
            t.row(vec![
                String::new(),
                format!(
                    "schedule `{s}` suspended for {}",
                    if until > now {
                        human_duration(until - now)
                    } else {
                        "a moment".into()
                    }
                ),
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
    }
    t.render()
}

/// The overrides in force, as of `now` (Unix seconds).
pub(crate) fn overrides(o: &[pb::Override], now: u64) -> String {
    if o.is_empty() {
        return "no overrides: everything is as the config file says\n".into();
    }
    let mut t = Table::new(&[
        ("key", Left),
        ("value", Left),
        ("expires", Left),
        ("scope", Left),
        ("author", Left),
        ("reason", Left),
    ]);
    for o in o {
        let expires = if o.expires_at == 0 {
            "until cleared".to_string()
        } else if o.expires_at > now {
            format!("{} left", human_duration(o.expires_at - now))
        } else {
            // Expiry runs every second; until then it is still in force.
            "expiring".to_string()
        };
        t.row(vec![
            o.key.clone(),
            o.value.clone(),
            expires,
            o.scope.clone(),
            o.author.clone(),
            o.reason.clone(),
        ]);
    }
    t.render()
}

/// A change's reply: what changed, then the overrides in force after it.
pub(crate) fn change(reply: &pb::ChangeReply, now: u64) -> String {
    format!("{}\n{}", reply.summary, overrides(&reply.overrides, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_says_whether_it_holds_and_when_it_starts_next() {
        let c = |active_until, next_start| pb::Schedule {
            name: "weekday_peak".into(),
            active_until,
            next_start,
        };
        let now = 1_764_576_000; // 2025-12-01T08:00:00Z
        assert_eq!(
            schedules(&[c(now + 3 * 3600, now + 86_400)], now),
            "schedule weekday_peak: active, ends in 3h (2025-12-01T11:00:00Z); next start in 1d (2025-12-02T08:00:00Z)\n"
        );
        assert_eq!(
            schedules(&[c(0, 0)], now),
            "schedule weekday_peak: not active; never starts again\n"
        );
    }

    #[test]
    fn time_left_reads_in_its_two_largest_units() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(60), "1m");
        assert_eq!(human_duration(90), "1m 30s");
        assert_eq!(human_duration(9 * 3600 + 36 * 60 + 59), "9h 36m");
        assert_eq!(human_duration(2 * 86_400 + 3 * 3600 + 59), "2d 3h");
        assert_eq!(human_duration(86_400 + 59), "1d");
        assert_eq!(human_duration(34_560_000), "400d");
    }

    #[test]
    fn overrides_have_a_header_and_a_human_time_left() {
        let o = |key: &str, expires_at| pb::Override {
            key: key.into(),
            value: "degraded".into(),
            scope: "local".into(),
            author: "operator:op.token".into(),
            reason: "INC-1".into(),
            expires_at,
            ..Default::default()
        };
        let now = 1_000_000;
        let text = overrides(
            &[
                o("level", now + 9 * 3600 + 36 * 60),
                o("queue", 0),
                o("x", now),
            ],
            now,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("key    value     expires"), "{text}");
        assert!(lines[1].contains("9h 36m left"), "{text}");
        assert!(lines[2].contains("until cleared"), "{text}");
        assert!(lines[3].contains("expiring"), "{text}");
    }

    #[test]
    fn breakers_and_limits_have_a_header() {
        let b = breakers(&[pb::Breaker {
            name: "upstream".into(),
            state: "closed".into(),
        }]);
        assert_eq!(b, "breaker   state\nupstream  closed\n");
        let l = limits(&[pb::Limit {
            name: "api".into(),
            ..Default::default()
        }]);
        assert!(l.starts_with("limit  scope  max_requests"), "{l}");
    }
}
