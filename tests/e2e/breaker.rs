//! The circuit breaker against a real upstream that fails and recovers, and one that is not
//! there at all; and the load indicators read from real traffic.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::{eventually, free_port, http_get, Sidecar, Upstream};

fn state_sample(upstream_port: u16) -> String {
    format!("floodgate_circuit_breaker_state{{upstream=\"127.0.0.1:{upstream_port}\"}}")
}

#[tokio::test]
async fn breaker_walks_closed_open_half_open_closed() {
    let up = Upstream::start("app").await;
    let fg = Sidecar::start(
        up.port,
        "circuit_breaker:\n  consecutive_failures: 3\n  open_ms: 300\n  half_open_probes: 2\n",
    )
    .await;
    let state = state_sample(up.port);
    fg.wait_metric(&state, 0.0).await;

    up.stats.fail_with.store(500, Ordering::SeqCst);
    for _ in 0..3 {
        assert_eq!(http_get(fg.port, "/").await.unwrap().0, 500);
    }
    fg.wait_metric(&state, 2.0).await;
    // Open: answered at once, the upstream is spared.
    let (status, headers, body) = http_get(fg.port, "/").await.unwrap();
    assert_eq!(status, 503);
    assert_eq!(headers["floodgate-reason"], "circuit_open");
    assert!(headers.contains_key("retry-after"));
    assert!(body.contains("circuit breaker is open"), "{body}");
    assert_eq!(up.stats.requests.load(Ordering::SeqCst), 3);

    // The app recovers; after open_ms the breaker half-opens and two good probes close it.
    up.stats.fail_with.store(0, Ordering::SeqCst);
    eventually(Duration::from_secs(5), "half-open", || async {
        fg.metric(&state).await == Some(1.0)
    })
    .await;
    for _ in 0..2 {
        assert_eq!(http_get(fg.port, "/").await.unwrap().0, 200);
    }
    fg.wait_metric(&state, 0.0).await;
    assert_eq!(http_get(fg.port, "/").await.unwrap().0, 200);
    let t = |to: &str| {
        format!(
            "floodgate_circuit_breaker_transitions_total{{to=\"{to}\",upstream=\"127.0.0.1:{}\"}}",
            up.port
        )
    };
    assert_eq!(fg.metric(&t("open")).await, Some(1.0));
    assert_eq!(fg.metric(&t("half_open")).await, Some(1.0));
    assert_eq!(fg.metric(&t("closed")).await, Some(1.0));
    fg.wait_metric("floodgate_shed_total{reason=\"circuit_open\"}", 1.0)
        .await;
    assert!(fg.log().contains("circuit breaker opened"), "{}", fg.log());
}

#[tokio::test]
async fn refused_connections_open_the_breaker() {
    let nobody = free_port();
    let fg = Sidecar::start(
        nobody,
        "circuit_breaker:\n  consecutive_failures: 2\n  open_ms: 60000\n",
    )
    .await;
    for _ in 0..2 {
        let (status, headers, _) = http_get(fg.port, "/").await.unwrap();
        assert_eq!(status, 502);
        assert_eq!(headers["floodgate-reason"], "upstream_unavailable");
    }
    let (status, headers, _) = http_get(fg.port, "/").await.unwrap();
    assert_eq!(status, 503);
    assert_eq!(headers["floodgate-reason"], "circuit_open");
    let secs: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        (50..=60).contains(&secs),
        "retry-after {secs} of a 60 s open period"
    );
}

#[tokio::test]
async fn status_reports_the_runbook_indicators_from_real_traffic() {
    let up = Upstream::start("app").await;
    let fg = Sidecar::start(
        up.port,
        "queue:\n  max_concurrency: 1\n  max_size: 10\n  timeout_ms: 30000\nload_indicators:\n  queue_depth: { warning: 1, critical: 2 }\n",
    )
    .await;
    for _ in 0..18 {
        assert_eq!(http_get(fg.port, "/").await.unwrap().0, 200);
    }
    up.stats.fail_with.store(503, Ordering::SeqCst);
    for _ in 0..2 {
        assert_eq!(http_get(fg.port, "/").await.unwrap().0, 503);
    }
    up.stats.fail_with.store(0, Ordering::SeqCst);
    let held: Vec<_> = (0..3)
        .map(|i| {
            let port = fg.port;
            tokio::spawn(async move { http_get(port, &format!("/hold/{i}")).await.unwrap() })
        })
        .collect();
    eventually(Duration::from_secs(5), "two queued", || async {
        fg.metric("floodgate_queue_depth").await == Some(2.0)
    })
    .await;
    let (_, _, body) = http_get(fg.metrics_port, "/status").await.unwrap();
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ind = |name: &str| {
        status["indicators"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .unwrap()
            .clone()
    };
    // 2 of 20 answers were 5xx: 10%, over the runbook's 5% critical line.
    assert_eq!(ind("error_rate")["value"], 0.1);
    assert_eq!(ind("error_rate")["level"], "critical");
    assert_eq!(ind("error_rate")["critical"], 0.05);
    // Two waiting: above warning (1), not above critical (2).
    assert_eq!(ind("queue_depth")["value"], 2.0);
    assert_eq!(ind("queue_depth")["level"], "warning");
    assert_eq!(ind("inflight")["value"], 1.0);
    assert_eq!(ind("latency_p95_ms")["level"], "ok");
    assert_eq!(ind("latency_p95_ms")["warning"], 1000.0);
    assert_eq!(status["level"], "critical");
    let m =
        |i: &str, l: &str| format!("floodgate_load_indicator{{indicator=\"{i}\",level=\"{l}\"}}");
    assert_eq!(fg.metric(&m("error_rate", "critical")).await, Some(1.0));
    assert_eq!(fg.metric(&m("error_rate", "ok")).await, Some(0.0));
    assert_eq!(fg.metric(&m("queue_depth", "warning")).await, Some(1.0));
    assert_eq!(
        fg.metric("floodgate_load_indicator_value{indicator=\"error_rate\"}")
            .await,
        Some(0.1)
    );
    up.stats.release(3);
    for h in held {
        assert_eq!(h.await.unwrap().0, 200);
    }
}
