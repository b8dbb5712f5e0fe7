//! How replies print: tables for people, JSON for scripts.

use floodgate_admin::pb;

pub(crate) fn print_json<T: serde::Serialize>(v: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    );
}

fn threshold(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v}")
    }
}

pub(crate) fn print_status(s: &pb::StatusReply) {
    let d = s.degradation.clone().unwrap_or_default();
    println!(
        "config version {}   upstream {}   load {}",
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
    println!(
        "degradation {}{manual}, automatic {}; features off: {off}; aggressive cache {}",
        d.level,
        d.auto_level,
        if d.aggressive_cache { "on" } else { "off" }
    );
    if let Some(q) = &s.queue {
        if q.configured {
            println!(
                "queue {}/{} waiting, {}/{} in flight, draining {:.1}/s",
                q.depth, q.max_size, q.inflight, q.max_concurrency, q.drain_rate_per_second
            );
        }
    }
    for b in &s.breakers {
        println!("breaker {} {}", b.name, b.state);
    }
    println!(
        "overrides in force: {}   fleet sync: {} (version {})",
        s.overrides, s.fleet, s.fleet_version
    );
    println!();
    print_limits(&s.limits);
    println!();
    println!(
        "{:<16} {:>12} {:>10} {:>10}  level",
        "indicator", "value", "warning", "critical"
    );
    for i in &s.indicators {
        println!(
            "{:<16} {:>12.3} {:>10} {:>10}  {}",
            i.name,
            i.value,
            threshold(i.warning),
            threshold(i.critical),
            i.level
        );
    }
}

pub(crate) fn print_limits(limits: &[pb::Limit]) {
    if limits.is_empty() {
        println!("no rate limits configured");
        return;
    }
    println!(
        "{:<24} {:<7} {:>14} {:>9} {:>14} {:>9} {:>6}",
        "limit", "scope", "max_requests", "window_s", "baseline", "window_s", "used"
    );
    for l in limits {
        println!(
            "{:<24} {:<7} {:>14} {:>9} {:>14} {:>9} {:>5.0}%",
            l.name,
            l.scope,
            l.max_requests,
            l.window_seconds,
            l.baseline_max_requests,
            l.baseline_window_seconds,
            l.utilization * 100.0
        );
    }
}

pub(crate) fn print_fleet(f: &pb::FleetStatusReply) {
    let applied = f
        .sidecars
        .iter()
        .filter(|s| s.applied_version >= f.version)
        .count();
    println!(
        "fleet override version {}: applied on {applied}/{}",
        f.version,
        f.sidecars.len()
    );
    println!(
        "{:<40} {:<20} {:>8} {:>8} {:>10} {:>8} {:>9} {:>5}",
        "sidecar", "pod", "config", "applied", "rps", "errors", "p95_ms", "seen"
    );
    for s in &f.sidecars {
        println!(
            "{:<40} {:<20} {:>8} {:>8} {:>10.1} {:>7.2}% {:>9.1} {:>4}s",
            s.id,
            s.pod,
            s.config_version,
            s.applied_version,
            s.rps,
            s.error_rate * 100.0,
            s.p95_ms,
            s.seen_seconds_ago
        );
    }
    let total: f64 = f.sidecars.iter().map(|s| s.rps).sum();
    if total > 0.0 && !f.sidecars.is_empty() {
        let mean = total / f.sidecars.len() as f64;
        let max = f.sidecars.iter().map(|s| s.rps).fold(0.0, f64::max);
        println!(
            "load distribution: {total:.1} rps in all, busiest at {:.0}% of the mean",
            max / mean * 100.0
        );
    }
}

pub(crate) fn print_overrides(o: &[pb::Override]) {
    for o in o {
        let expires = if o.expires_at == 0 {
            "until cleared".to_string()
        } else {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            format!("{} s left", o.expires_at.saturating_sub(now))
        };
        println!(
            "  {:<24} {:<36} {:<16} {:<6} by {} ({})",
            o.key, o.value, expires, o.scope, o.author, o.reason
        );
    }
}
