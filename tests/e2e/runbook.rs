//! The scaling runbook's sequences replayed with `floodgatectl`, in the runbook's order, with
//! the effective state asserted after every step: no command may report success and leave
//! the sidecar somewhere nobody asked for.

use std::time::Duration;

use crate::admin::{admitted, max_requests, Admin, LIMITED};
use crate::support::Upstream;

fn json(a: &Admin, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    serde_json::from_str(&a.op(&all)).unwrap()
}

#[tokio::test]
async fn raise_limits_x2_with_a_ttl_then_restore() {
    let up = Upstream::start("app").await;
    let a = Admin::start(&up, LIMITED).await;
    let out = a.op(&[
        "limits",
        "scale",
        "--all",
        "--multiplier",
        "2",
        "--ttl",
        "30m",
        "--reason",
        "INC-1 spike",
    ]);
    assert!(
        out.contains("limit:per_client: max_requests 3 (baseline) -> max_requests 6 (local)"),
        "{out}"
    );
    assert_eq!(max_requests(&a), 6);
    assert_eq!(admitted(a.fg.port, 8).await, 6);
    let out = a.op(&["limits", "restore", "--all", "--reason", "INC-1 over"]);
    assert!(
        out.contains("limit:per_client: max_requests 6 (local) -> max_requests 3 (baseline)"),
        "{out}"
    );
    assert_eq!(max_requests(&a), 3);
    assert!(a.op(&["overrides"]).contains("no overrides"));
}

#[tokio::test]
async fn workers_with_a_ttl_then_a_resize_keeps_the_ttl_and_its_reason() {
    let up = Upstream::start("app").await;
    let a = Admin::start(&up, LIMITED).await;
    a.op(&[
        "queue", "workers", "20", "--ttl", "10m", "--reason", "INC temp",
    ]);
    a.op(&["queue", "resize", "5000", "--reason", "perm"]);
    let list = json(&a, &["overrides"]);
    let find = |key: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|o| o["key"] == key)
            .cloned()
            .unwrap_or_else(|| panic!("no {key} in {list}"))
    };
    let workers = find("queue.max_concurrency");
    assert_eq!(workers["reason"], "INC temp");
    assert!(workers["expires_at"].as_u64().unwrap() > 0, "{workers}");
    let size = find("queue.max_size");
    assert_eq!(size["reason"], "perm");
    assert_eq!(size["expires_at"].as_u64().unwrap_or(0), 0, "{size}");
    a.fg.wait_metric("floodgate_concurrency_limit", 20.0).await;
    assert_eq!(a.fg.metric("floodgate_queue_capacity").await, Some(5000.0));
    // Clearing one knob leaves the other.
    a.op(&["overrides", "clear", "queue.max_size", "--reason", "back"]);
    a.fg.wait_metric("floodgate_queue_capacity", 100.0).await;
    assert_eq!(a.fg.metric("floodgate_concurrency_limit").await, Some(20.0));
}

#[tokio::test]
async fn a_window_set_with_a_ttl_outlives_a_later_raise_of_the_count_and_restore_clears_both() {
    let up = Upstream::start("app").await;
    let a = Admin::start(&up, LIMITED).await;
    let window = |a: &Admin| json(a, &["limits", "show"])[0]["window_seconds"].as_u64();
    a.op(&[
        "limits",
        "set",
        "per_client",
        "--max-requests",
        "10",
        "--window",
        "30",
        "--ttl",
        "10m",
        "--reason",
        "INC-2 short window",
    ]);
    assert_eq!((max_requests(&a), window(&a)), (10, Some(30)));
    // Raising the count again, without a window, leaves the window's override as it was.
    let out = a.op(&[
        "limits",
        "set",
        "per_client",
        "--max-requests",
        "20",
        "--reason",
        "more",
    ]);
    assert!(
        out.contains("limit:per_client: max_requests 10 (local) -> max_requests 20 (local)"),
        "{out}"
    );
    assert_eq!((max_requests(&a), window(&a)), (20, Some(30)));
    let list = json(&a, &["overrides"]);
    let w = list
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["key"] == "window:per_client")
        .cloned()
        .unwrap_or_else(|| panic!("no window override in {list}"));
    assert_eq!(w["reason"], "INC-2 short window");
    assert!(w["expires_at"].as_u64().unwrap() > 0, "{w}");
    // One restore puts both knobs back.
    let out = a.op(&["limits", "restore", "per_client", "--reason", "over"]);
    assert!(
        out.contains("window:per_client: window 30 s (local) -> window 3600 s (baseline)"),
        "{out}"
    );
    assert_eq!((max_requests(&a), window(&a)), (3, Some(3600)));
    assert!(a.op(&["overrides"]).contains("no overrides"));
}

const ALWAYS: &str =
    "schedules:\n  - { name: always, cron: \"* * * * *\", duration_minutes: 60, limits_multiplier: 2 }\n";

#[tokio::test]
async fn a_schedule_active_then_a_rollback_puts_the_baseline_in_effect_and_says_so() {
    let up = Upstream::start("app").await;
    let a = Admin::start(&up, &format!("{LIMITED}{ALWAYS}")).await;
    crate::support::eventually(Duration::from_secs(5), "schedule holds", || async {
        max_requests(&a) == 6
    })
    .await;
    // `status` shows the schedule holding and when it starts next (every minute).
    let st = a.op(&["status"]);
    assert!(
        st.contains("schedule always: active, ends in ") && st.contains("; next start in "),
        "{st}"
    );
    let js = json(&a, &["status"]);
    let sch = &js["schedules"][0];
    assert_eq!(sch["name"], "always");
    let (until, next) = (
        sch["active_until"].as_u64().unwrap(),
        sch["next_start"].as_u64().unwrap(),
    );
    assert!(
        until > next && next > 0,
        "ends an hour after it started; {sch}"
    );
    let out = a.op(&["limits", "restore", "--all", "--reason", "rollback"]);
    assert!(
        out.contains("every limit back to its config baseline"),
        "{out}"
    );
    assert!(
        out.contains("schedule `always` held limit:per_client (max_requests 6); suspended until"),
        "{out}"
    );
    assert!(
        out.contains("limit:per_client: max_requests 6 (schedule) -> max_requests 3 (baseline)"),
        "{out}"
    );
    assert_eq!(max_requests(&a), 3, "the baseline is in effect");
    assert_eq!(admitted(a.fg.port, 5).await, 3);
}

#[tokio::test]
async fn a_schedule_holding_writes_one_audit_entry_and_leaves_the_config_version_alone() {
    let up = Upstream::start("app").await;
    let a = Admin::start(&up, &format!("{LIMITED}{ALWAYS}")).await;
    crate::support::eventually(Duration::from_secs(5), "schedule holds", || async {
        max_requests(&a) == 6
    })
    .await;
    // The sweeper runs every second: let it run a few times while the schedule holds.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let audit = a.op(&["audit"]);
    assert_eq!(audit.lines().count(), 1, "one schedule.start: {audit}");
    assert!(audit.contains("schedule.start"), "{audit}");
    assert_eq!(a.fg.metric("floodgate_config_version").await, Some(1.0));
}

const FEATURES: &str = "routes:
  - { name: reco, match: { path_prefix: /reco }, feature: recommendations }
  - { name: analytics, match: { path_prefix: /analytics }, feature: analytics }
  - { name: notify, match: { path_prefix: /notify }, feature: notifications }
degradation:
  levels: { degraded: [recommendations], minimal: [recommendations, analytics, notifications] }
  auto:
    enabled: true
    cooldown_seconds: 60
    rules:
      - { indicator: error_rate, above: 0.5, for_seconds: 1, level: degraded }
load_indicators:
  window_seconds: 2
  min_requests: 5
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degrade_and_three_features_off_then_restore_full_then_automatic_degradation_acts() {
    let up = Upstream::start("app").await;
    let a = Admin::start(&up, FEATURES).await;
    a.op(&["degrade", "set", "degraded", "--reason", "INC-2"]);
    for f in ["recommendations", "analytics", "notifications"] {
        a.op(&["feature", "disable", f, "--reason", "INC-2"]);
    }
    for path in ["/reco/x", "/analytics/x", "/notify/x"] {
        let (status, h, _) = crate::support::http_get(a.fg.port, path).await.unwrap();
        assert_eq!(
            (status, h["floodgate-reason"].to_str().unwrap()),
            (503, "degraded"),
            "{path}"
        );
    }
    // The runbook's "Restore FULL".
    let out = a.op(&["degrade", "clear", "--reason", "INC-2 over"]);
    assert!(
        out.contains("level: degraded (local) -> full (baseline)"),
        "{out}"
    );
    for f in ["recommendations", "analytics", "notifications"] {
        let out = a.op(&["feature", "reset", f, "--reason", "INC-2 over"]);
        assert!(
            out.contains(&format!("feature:{f}: disabled (local) ->")),
            "{out}"
        );
    }
    assert!(
        a.op(&["overrides"]).contains("no overrides"),
        "nothing pinned"
    );
    let s = json(&a, &["status"]);
    assert_eq!(s["degradation"]["level"], "full");
    assert_eq!(s["degradation"]["manual_level"], "");
    for path in ["/reco/x", "/analytics/x", "/notify/x"] {
        assert_eq!(
            crate::support::http_get(a.fg.port, path).await.unwrap().0,
            200
        );
    }
    // Nothing pins the level any more: the app failing degrades the sidecar by itself.
    up.stats
        .fail_with
        .store(500, std::sync::atomic::Ordering::SeqCst);
    let port = a.fg.port;
    crate::support::eventually(Duration::from_secs(10), "automatic degradation", || async {
        for _ in 0..10 {
            let _ = crate::support::http_get(port, "/x").await;
        }
        a.fg.metric("floodgate_degradation_level").await == Some(1.0)
    })
    .await;
    let s = json(&a, &["status"]);
    assert_eq!(s["degradation"]["auto_level"], "degraded", "{s}");
}

#[tokio::test]
async fn explain_says_which_layer_holds_each_knob_and_what_comes_after_it() {
    let up = Upstream::start("app").await;
    let a = Admin::start(&up, &format!("{LIMITED}{ALWAYS}")).await;
    crate::support::eventually(Duration::from_secs(5), "schedule holds", || async {
        max_requests(&a) == 6
    })
    .await;
    a.op(&[
        "limits",
        "set",
        "per_client",
        "--max-requests",
        "10",
        "--ttl",
        "1h",
        "--reason",
        "INC-3",
    ]);
    let k = json(&a, &["explain", "limit:per_client"]);
    let k = &k[0];
    assert_eq!(k["key"], "limit:per_client");
    assert_eq!(k["value"], "max_requests 10");
    assert_eq!(k["layer"], "local");
    assert_eq!(k["reason"], "INC-3");
    assert!(k["expires_at"].as_u64().unwrap() > 0);
    assert_eq!(k["falls_back_to"], "max_requests 6");
    assert_eq!(k["falls_back_layer"], "schedule");
    // Every knob, as a table with a header.
    let table = a.op(&["explain"]);
    assert!(table.starts_with("knob"), "{table}");
    for knob in [
        "limit:per_client",
        "level",
        "feature:recommendations",
        "queue.max_size",
    ] {
        assert!(table.contains(knob), "{knob}: {table}");
    }
    // After a rollback: the baseline, with the schedule's suspension shown.
    a.op(&["limits", "restore", "per_client", "--reason", "rollback"]);
    let k = json(&a, &["explain", "limit:per_client"]);
    assert_eq!(k[0]["layer"], "baseline");
    assert_eq!(k[0]["value"], "max_requests 3");
    assert_eq!(k[0]["suspended_schedule"], "always");
    let (code, _, err) = a.ctl(Some("op.token"), &["explain", "limit:nope"]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("no knob `limit:nope`"), "{err}");
}

#[tokio::test]
async fn a_breaker_forced_open_with_a_ttl_sheds_then_clears_like_any_knob() {
    let up = Upstream::start("app").await;
    let a = Admin::start(
        &up,
        &format!("{LIMITED}circuit_breaker: {{ consecutive_failures: 3, open_ms: 60000 }}\n"),
    )
    .await;
    let get = |path: &'static str| {
        let port = a.fg.port;
        async move { crate::support::http_get(port, path).await.unwrap() }
    };
    assert_eq!(get("/reco/x").await.0, 200);
    let out = a.op(&[
        "breakers",
        "force",
        "upstream",
        "open",
        "--ttl",
        "10m",
        "--reason",
        "INC-5 app sick",
    ]);
    assert!(
        out.contains("breaker:upstream: not forced (baseline) -> forced open (local)"),
        "{out}"
    );
    let (status, h, _) = get("/reco/x").await;
    assert_eq!(
        (status, h["floodgate-reason"].to_str().unwrap()),
        (503, "circuit_open")
    );
    assert!(
        a.op(&["breakers"]).contains("open"),
        "breakers shows it open"
    );
    let k = json(&a, &["explain", "breaker:upstream"]);
    assert_eq!(k[0]["value"], "forced open");
    assert!(k[0]["expires_at"].as_u64().unwrap() > 0);
    // Cleared like any other knob: the app is reached again, the breaker as it was (closed).
    a.op(&[
        "overrides",
        "clear",
        "breaker:upstream",
        "--reason",
        "INC-5 over",
    ]);
    assert_eq!(get("/reco/x").await.0, 200);
    let (code, _, err) = a.ctl(Some("op.token"), &["breakers", "force", "nope", "open"]);
    assert_eq!(code, 5, "{err}");
}
