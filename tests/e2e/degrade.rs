//! Graceful degradation against a real upstream that counts what reaches it: disabled
//! features never reach it and get their fallbacks, the app is told the state, switching back
//! resumes forwarding, cached fallbacks replay the last good answer within their TTL,
//! aggressive caching, priority shedding, feature breakers, and automatic degradation that
//! needs a sustained cause and a cool-down.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::support::{config_yaml, eventually, http_get, Sidecar, Upstream};

const ROUTES: &str = "routes:
  - name: reco
    match: { path_prefix: /reco }
    feature: recommendations
    priority: low
  - name: analytics
    match: { path_prefix: /analytics }
    feature: analytics
  - name: count
    match: { path_prefix: /count }
    feature: counter
  - name: checkout
    match: { path_prefix: /checkout }
    priority: critical
  - name: bulk
    match: { path_prefix: /bulk }
    priority: low
";

fn degradation(level: &str, extra: &str) -> String {
    format!(
        "{ROUTES}degradation:
  level: {level}
  levels:
    degraded: [recommendations, analytics]
    minimal: [recommendations, analytics]
  fallbacks:
    recommendations: {{ status: 200, body: \"[]\", content_type: application/json }}
{extra}"
    )
}

fn upstream_saw(up: &Upstream, prefix: &str) -> usize {
    up.stats
        .paths()
        .iter()
        .filter(|p| p.starts_with(prefix))
        .count()
}

#[tokio::test]
async fn disabled_features_never_reach_the_app_and_switching_back_resumes() {
    let up = Upstream::start("app").await;
    let fg = Sidecar::start(up.port, &degradation("degraded", "")).await;
    for _ in 0..5 {
        let (status, h, body) = http_get(fg.port, "/reco/items").await.unwrap();
        assert_eq!((status, body.as_str()), (200, "[]"));
        assert_eq!(h["floodgate-reason"], "degraded");
        assert_eq!(h["content-type"], "application/json");
    }
    // No fallback configured: 503, Retry-After, the reduced-capacity problem type.
    let (status, h, body) = http_get(fg.port, "/analytics/event").await.unwrap();
    assert_eq!(status, 503);
    assert_eq!(h["floodgate-reason"], "degraded");
    assert!(h.contains_key("retry-after"));
    assert!(body.contains("temporary-reduced-capacity"), "{body}");
    assert_eq!(
        upstream_saw(&up, "/reco") + upstream_saw(&up, "/analytics"),
        0
    );
    // An enabled feature passes, and the app is told the state.
    let (status, _, body) = http_get(fg.port, "/other").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "hello from app\n"));
    assert_eq!(
        up.stats
            .last_header("floodgate-degradation-level")
            .as_deref(),
        Some("degraded")
    );
    assert_eq!(
        up.stats
            .last_header("floodgate-disabled-features")
            .as_deref(),
        Some("analytics,recommendations")
    );
    fg.wait_metric(
        "floodgate_degraded_responses_total{feature=\"recommendations\"}",
        5.0,
    )
    .await;
    assert_eq!(fg.metric("floodgate_degradation_level").await, Some(1.0));
    assert_eq!(
        fg.metric("floodgate_feature_enabled{feature=\"recommendations\"}")
            .await,
        Some(0.0)
    );
    // Back to full: the next request is forwarded.
    fg.write_config(&config_yaml(
        fg.port,
        fg.metrics_port,
        up.port,
        &degradation("full", ""),
    ));
    fg.wait_metric("floodgate_degradation_level", 0.0).await;
    let (status, _, body) = http_get(fg.port, "/reco/items").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "hello from app\n"));
    assert_eq!(upstream_saw(&up, "/reco"), 1);
    assert_eq!(
        up.stats
            .last_header("floodgate-degradation-level")
            .as_deref(),
        Some("full")
    );
    assert_eq!(
        up.stats
            .last_header("floodgate-disabled-features")
            .as_deref(),
        Some("")
    );
    assert_eq!(
        fg.metric(
            "floodgate_degradation_transitions_total{cause=\"config\",from=\"degraded\",to=\"full\"}"
        )
        .await,
        Some(1.0)
    );
    assert!(
        fg.log().contains("degradation level lowered"),
        "{}",
        fg.log()
    );
}

#[tokio::test]
async fn a_flag_override_turns_one_feature_off_at_full() {
    let up = Upstream::start("app").await;
    let fg = Sidecar::start(
        up.port,
        &degradation("full", "  features: { analytics: false }\n"),
    )
    .await;
    assert_eq!(http_get(fg.port, "/analytics/x").await.unwrap().0, 503);
    assert_eq!(http_get(fg.port, "/reco/x").await.unwrap().0, 200);
    assert_eq!(upstream_saw(&up, "/analytics"), 0);
    assert_eq!(upstream_saw(&up, "/reco"), 1);
    assert_eq!(
        up.stats
            .last_header("floodgate-disabled-features")
            .as_deref(),
        Some("analytics")
    );
}

#[tokio::test]
async fn a_cached_fallback_replays_the_last_good_answer_until_its_ttl() {
    let up = Upstream::start("app").await;
    let cached = "  features: { counter: {on} }
  fallbacks:
    counter: { cached: true, ttl_seconds: 3, status: 200, body: \"static\" }
";
    let fg = Sidecar::start(
        up.port,
        &format!("{ROUTES}degradation:\n{}", cached.replace("{on}", "true")),
    )
    .await;
    assert_eq!(
        http_get(fg.port, "/count?x=1").await.unwrap().2,
        "app request 1\n"
    );
    assert_eq!(
        http_get(fg.port, "/count?x=1").await.unwrap().2,
        "app request 2\n"
    );
    let stored = Instant::now();
    fg.write_config(&config_yaml(
        fg.port,
        fg.metrics_port,
        up.port,
        &format!("{ROUTES}degradation:\n{}", cached.replace("{on}", "false")),
    ));
    fg.wait_metric("floodgate_feature_enabled{feature=\"counter\"}", 0.0)
        .await;
    let (status, h, body) = http_get(fg.port, "/count?x=1").await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "app request 2\n"),
        "the last good answer, byte for byte"
    );
    assert_eq!(h["floodgate-reason"], "degraded");
    assert!(h.contains_key("age"));
    assert_eq!(up.stats.requests.load(Ordering::SeqCst), 2);
    // Another query was never answered: the static fallback.
    assert_eq!(http_get(fg.port, "/count?x=2").await.unwrap().2, "static");
    // Past the TTL the remembered answer is no longer served.
    let age = eventually(Duration::from_secs(10), "ttl expiry", || async {
        http_get(fg.port, "/count?x=1").await.unwrap().2 == "static"
    })
    .await;
    assert!(
        stored.elapsed() >= Duration::from_secs(3),
        "served a 3 s answer for only {age:?}"
    );
    assert_eq!(up.stats.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn aggressive_caching_answers_fresh_gets_without_the_app() {
    let up = Upstream::start("app").await;
    let fg = Sidecar::start(
        up.port,
        &format!("{ROUTES}degradation:\n  aggressive_cache: {{ enabled: true, ttl_seconds: 60, routes: [count] }}\n"),
    )
    .await;
    assert_eq!(
        http_get(fg.port, "/count").await.unwrap().2,
        "app request 1\n"
    );
    let (status, h, body) = http_get(fg.port, "/count").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "app request 1\n"));
    assert_eq!(h["floodgate-reason"], "cached");
    assert_eq!(up.stats.requests.load(Ordering::SeqCst), 1);
    // Other routes are not cached.
    http_get(fg.port, "/other").await.unwrap();
    http_get(fg.port, "/other").await.unwrap();
    assert_eq!(up.stats.requests.load(Ordering::SeqCst), 3);
    fg.wait_metric("floodgate_cache_lookups_total{result=\"hit\"}", 1.0)
        .await;
    assert_eq!(fg.metric("floodgate_cache_entries").await, Some(1.0));
}

#[tokio::test]
async fn at_minimal_only_critical_routes_reach_the_app() {
    let up = Upstream::start("app").await;
    let fg = Sidecar::start(up.port, &degradation("minimal", "")).await;
    assert_eq!(http_get(fg.port, "/checkout/pay").await.unwrap().0, 200);
    let (status, h, _) = http_get(fg.port, "/other").await.unwrap();
    assert_eq!(status, 503);
    assert_eq!(h["floodgate-reason"], "degraded");
    assert_eq!(up.stats.paths(), ["/checkout/pay"]);
    fg.wait_metric("floodgate_shed_total{reason=\"degraded\"}", 1.0)
        .await;
}

#[tokio::test]
async fn at_degraded_low_priority_is_shed_while_the_queue_is_past_its_warning_depth() {
    let up = Upstream::start("app").await;
    let fg = Sidecar::start_custom(|p, m| {
        config_yaml(
            p,
            m,
            up.port,
            &degradation(
                "degraded",
                "queue: { max_concurrency: 1, max_size: 10, timeout_ms: 30000 }\nload_indicators:\n  queue_depth: { warning: 1, critical: 5 }\n",
            ),
        )
        .replace("read_timeout_ms: 2000", "read_timeout_ms: 60000")
    })
    .await;
    // Queue empty: a low-priority route without a disabled feature passes.
    assert_eq!(http_get(fg.port, "/bulk/a").await.unwrap().0, 200);
    let port = fg.port;
    let held: Vec<_> = ["/checkout/hold/1", "/checkout/hold/2", "/checkout/hold/3"]
        .into_iter()
        .map(|p| tokio::spawn(async move { http_get(port, p).await.unwrap().0 }))
        .collect();
    eventually(Duration::from_secs(5), "two queued", || async {
        fg.metric("floodgate_queue_depth").await == Some(2.0)
    })
    .await;
    // Two waiting, over the warning depth of 1: low priority is shed, not queued.
    let (status, h, _) = http_get(fg.port, "/bulk/b").await.unwrap();
    assert_eq!(
        (status, h["floodgate-reason"].to_str().unwrap()),
        (503, "degraded")
    );
    assert_eq!(fg.metric("floodgate_queue_depth").await, Some(2.0));
    up.stats.release(3);
    for h in held {
        assert_eq!(h.await.unwrap(), 200);
    }
    assert_eq!(upstream_saw(&up, "/bulk"), 1);
    fg.wait_metric("floodgate_shed_total{reason=\"degraded\"}", 1.0)
        .await;
}

#[tokio::test]
async fn grpc_calls_to_a_disabled_feature_get_unavailable() {
    let up = Upstream::start("app").await;
    let fg = Sidecar::start(up.port, &degradation("degraded", "")).await;
    let client = crate::support::h2c_client();
    let req = http::Request::post(format!("http://127.0.0.1:{}/reco.Svc/Get", fg.port))
        .header("content-type", "application/grpc")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"\0\0\0\0\0",
        )))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["grpc-status"], "14");
    assert_eq!(resp.headers()["floodgate-reason"], "degraded");
    assert_eq!(up.stats.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_failing_feature_is_switched_to_its_fallback_alone() {
    let up = Upstream::start("app").await;
    let fg = Sidecar::start(
        up.port,
        &degradation(
            "full",
            "  feature_breakers:\n    recommendations: { consecutive_failures: 2, open_ms: 60000 }\n",
        ),
    )
    .await;
    up.stats.fail_with.store(500, Ordering::SeqCst);
    for _ in 0..2 {
        assert_eq!(http_get(fg.port, "/reco/x").await.unwrap().0, 500);
    }
    let (status, h, body) = http_get(fg.port, "/reco/x").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "[]"));
    assert_eq!(h["floodgate-reason"], "degraded");
    assert_eq!(upstream_saw(&up, "/reco"), 2);
    // The rest of the app still gets its traffic.
    assert_eq!(http_get(fg.port, "/other").await.unwrap().0, 500);
    assert_eq!(upstream_saw(&up, "/other"), 1);
}

#[tokio::test]
async fn auto_degradation_needs_a_sustained_cause_and_a_cool_down() {
    let up = Upstream::start("app").await;
    let fg = Sidecar::start(
        up.port,
        &degradation(
            "full",
            "  auto:
    enabled: true
    cooldown_seconds: 2
    rules:
      - { indicator: latency_p95_ms, above: 200, for_seconds: 1, level: degraded }
load_indicators:
  window_seconds: 2
  latency_p95_ms: { warning: 100, critical: 1000 }
",
        ),
    )
    .await;
    // One slow request among many fast ones is a spike: p95 stays low, nothing changes.
    let slow = tokio::spawn({
        let port = fg.port;
        async move { http_get(port, "/sleep/400").await.unwrap() }
    });
    for _ in 0..60 {
        http_get(fg.port, "/other").await.unwrap();
    }
    slow.await.unwrap();
    for _ in 0..20 {
        http_get(fg.port, "/other").await.unwrap();
    }
    assert_eq!(fg.metric("floodgate_degradation_level").await, Some(0.0));
    // Every request slow: p95 over 200 ms for over a second -> degraded.
    let started = Instant::now();
    let slow_load = {
        let port = fg.port;
        tokio::spawn(async move {
            let calls: Vec<_> = (0..4)
                .map(|_| {
                    tokio::spawn(async move {
                        let until = Instant::now() + Duration::from_secs(4);
                        while Instant::now() < until {
                            let _ = http_get(port, "/sleep/300").await;
                        }
                    })
                })
                .collect();
            for c in calls {
                c.await.unwrap();
            }
        })
    };
    eventually(Duration::from_secs(10), "degraded", || async {
        fg.metric("floodgate_degradation_level").await == Some(1.0)
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "before the sustain time"
    );
    assert_eq!(http_get(fg.port, "/reco/x").await.unwrap().2, "[]");
    slow_load.await.unwrap();
    // Fast traffic again: recovery waits for the slow answers to leave the 2 s window and then
    // a 2 s calm.
    let calm_from = Instant::now();
    let fast = {
        let port = fg.port;
        tokio::spawn(async move {
            loop {
                let _ = http_get(port, "/other").await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    eventually(Duration::from_secs(15), "back to full", || async {
        fg.metric("floodgate_degradation_level").await == Some(0.0)
    })
    .await;
    fast.abort();
    assert!(
        calm_from.elapsed() >= Duration::from_secs(2),
        "left degraded after {:?}, before the cool-down",
        calm_from.elapsed()
    );
    assert_eq!(
        fg.metric(
            "floodgate_degradation_transitions_total{cause=\"auto\",from=\"full\",to=\"degraded\"}"
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        fg.metric(
            "floodgate_degradation_transitions_total{cause=\"recovered\",from=\"degraded\",to=\"full\"}"
        )
        .await,
        Some(1.0)
    );
    assert!(fg.log().contains("latency_p95_ms"), "{}", fg.log());
}

/// The value and `judged` flag of one indicator in `GET /status`.
async fn indicator(fg: &Sidecar, name: &str) -> (f64, bool) {
    let (_, _, body) = http_get(fg.metrics_port, "/status").await.unwrap();
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let i = status["indicators"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap()
        .clone();
    (i["value"].as_f64().unwrap(), i["judged"].as_bool().unwrap())
}

/// A feature answered by its 503 fallback is the sidecar refusing, not the app failing: under
/// load it leaves `error_rate` at 0 and the error-rate rule of automatic degradation never
/// fires on it, where before every such 503 counted and shedding fed on itself. The same rule
/// does fire once the app itself fails.
#[tokio::test]
async fn the_sidecars_own_503s_never_feed_error_rate_or_auto_degradation() {
    let up = Upstream::start("app").await;
    let fg = Sidecar::start(
        up.port,
        &degradation(
            "full",
            "  features: { analytics: false }
  auto:
    enabled: true
    rules:
      - { indicator: error_rate, above: 0.05, for_seconds: 1, level: degraded }
load_indicators:
  window_seconds: 10
",
        ),
    )
    .await;
    let load = |path: &'static str, n: usize, want: u16| {
        let port = fg.port;
        async move {
            let calls: Vec<_> = (0..5)
                .map(|_| {
                    tokio::spawn(async move {
                        for _ in 0..n / 5 {
                            assert_eq!(http_get(port, path).await.unwrap().0, want, "{path}");
                        }
                    })
                })
                .collect();
            for c in calls {
                c.await.unwrap();
            }
        }
    };
    // 50 refusals by the sidecar, and 25 good answers from the app (over min_requests, 20).
    load("/analytics/x", 50, 503).await;
    load("/other", 25, 200).await;
    assert_eq!(upstream_saw(&up, "/analytics"), 0);
    fg.wait_metric("floodgate_local_responses_total{reason=\"degraded\"}", 50.0)
        .await;
    // Answers are counted just after they are sent: wait for the app's 25 to be in.
    eventually(Duration::from_secs(5), "app answers counted", || async {
        indicator(&fg, "error_rate").await == (0.0, true)
    })
    .await;
    // The rule needs its cause for 1 s, judged once a second: keep refusing for 3 s and the
    // level must stay `full` throughout.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        load("/analytics/x", 10, 503).await;
        assert_eq!(fg.metric("floodgate_degradation_level").await, Some(0.0));
        assert_eq!(indicator(&fg, "error_rate").await.0, 0.0);
    }
    // The app failing is what the rule is for: 25 of its 50 answers are 500s.
    up.stats.fail_with.store(500, Ordering::SeqCst);
    load("/other", 25, 500).await;
    eventually(
        Duration::from_secs(5),
        "25 of 50 app answers failed",
        || async {
            let (rate, judged) = indicator(&fg, "error_rate").await;
            judged && (rate - 0.5).abs() < 1e-9
        },
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "degraded by the app's errors",
        || async { fg.metric("floodgate_degradation_level").await == Some(1.0) },
    )
    .await;
}
