//! Local rate limits through the real binary: exact admission per window, the standard
//! headers on both answers, shadow mode, gRPC callers, keys, and counters across reloads.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use crate::support::*;

/// Admitted answers carry the fields too (the default sends them near the limit only).
const ALWAYS: &str = "rate_limit_headers: { on_admitted: always }\n";

fn limit_yaml(name: &str, max: u64, extra: &str) -> String {
    format!(
        "limits:\n  - name: {name}\n    key: [client_ip]\n    max_requests: {max}\n    window_seconds: 60\n    strategy: fixed_window\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_window_admits_exactly_n_of_3n_with_headers_on_both_answers() {
    let up = Upstream::start("app").await;
    // Fields on every admitted answer, to check each one (the default is near_limit).
    let fg = Sidecar::start(up.port, &limit_yaml("per_client", 5, ALWAYS)).await;
    let mut statuses = Vec::new();
    for i in 0..15u64 {
        let (status, h, body) = http_get(fg.port, "/x").await.unwrap();
        statuses.push(status);
        assert_eq!(h["ratelimit-policy"], "\"per_client\";q=5;w=60");
        assert_eq!(h["x-ratelimit-limit"], "5");
        if status == 200 {
            assert_eq!(
                h["ratelimit"].to_str().unwrap().split(';').nth(1),
                Some(format!("r={}", 4 - i).as_str())
            );
            assert_eq!(h["x-ratelimit-remaining"], (4 - i).to_string().as_str());
        } else {
            assert_eq!(status, 429);
            assert_eq!(h["floodgate-reason"], "rate_limited");
            assert_eq!(h["x-ratelimit-remaining"], "0");
            assert_eq!(h["content-type"], "application/problem+json");
            let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=61).contains(&retry), "retry-after {retry}");
            assert!(
                body.contains("over the limit `per_client`: 5 requests per 60 s"),
                "{body}"
            );
        }
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(&statuses[..5], &[200; 5]);
    assert_eq!(
        up.stats.requests.load(Ordering::Relaxed),
        5,
        "rejected requests never reach the app"
    );
    let d = |x: &str| {
        format!("floodgate_ratelimit_decisions_total{{decision=\"{x}\",limit=\"per_client\"}}")
    };
    fg.wait_metric(&d("allowed"), 5.0).await;
    fg.wait_metric(&d("limited"), 10.0).await;
    fg.wait_metric(
        "floodgate_local_responses_total{reason=\"rate_limited\"}",
        10.0,
    )
    .await;
    eventually(Duration::from_secs(3), "utilisation published", || async {
        fg.metric("floodgate_ratelimit_utilization_ratio{limit=\"per_client\"}")
            .await
            == Some(1.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_limit_counts_but_rejects_nothing() {
    let up = Upstream::start("app").await;
    let fg = Sidecar::start(up.port, &limit_yaml("trial", 2, "    shadow: true\n")).await;
    for _ in 0..6 {
        let (status, h, _) = http_get(fg.port, "/x").await.unwrap();
        assert_eq!(status, 200);
        assert!(
            h.get("ratelimit").is_none(),
            "a shadow limit does not speak to clients"
        );
    }
    assert_eq!(up.stats.requests.load(Ordering::Relaxed), 6);
    let d = |x: &str| {
        format!("floodgate_ratelimit_decisions_total{{decision=\"{x}\",limit=\"trial\"}}")
    };
    fg.wait_metric(&d("shadow_limited"), 4.0).await;
    fg.wait_metric(&d("allowed"), 2.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_caller_gets_resource_exhausted() {
    let up = Upstream::start("app").await;
    let fg = Sidecar::start(up.port, &limit_yaml("rpc", 1, "")).await;
    let h2 = h2c_client();
    let call = || {
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://127.0.0.1:{}/pkg.Svc/Get", fg.port))
            .header("content-type", "application/grpc")
            .body(http_body_util::Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap();
        h2.request(req)
    };
    assert!(
        call().await.unwrap().headers().get("grpc-status").is_none(),
        "first call reaches the app"
    );
    let resp = call().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["grpc-status"], "8", "RESOURCE_EXHAUSTED");
    assert_eq!(resp.headers()["floodgate-reason"], "rate_limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_keys_make_separate_buckets_and_a_missing_header_is_one_bucket() {
    let up = Upstream::start("app").await;
    let extra = "limits:\n  - name: per_key\n    key: [\"header:x-api-key\"]\n    max_requests: 1\n    window_seconds: 60\n";
    let fg = Sidecar::start(up.port, extra).await;
    let c = client();
    let get = |key: Option<&'static str>| {
        let mut b = http::Request::builder().uri(format!("http://127.0.0.1:{}/", fg.port));
        if let Some(k) = key {
            b = b.header("x-api-key", k);
        }
        c.request(b.body(http_body_util::Full::new(Bytes::new())).unwrap())
    };
    assert_eq!(get(Some("a")).await.unwrap().status(), 200);
    assert_eq!(get(Some("a")).await.unwrap().status(), 429);
    assert_eq!(get(Some("b")).await.unwrap().status(), 200);
    assert_eq!(get(None).await.unwrap().status(), 200);
    assert_eq!(get(None).await.unwrap().status(), 429);
}

/// By default an admitted answer carries the fields only once less than a fifth of the
/// quota is left; a rejection always does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_the_fields_come_near_the_limit_and_on_every_rejection() {
    let up = Upstream::start("app").await;
    let fg = Sidecar::start(up.port, &limit_yaml("per_client", 10, "")).await;
    let mut carried = Vec::new();
    for _ in 0..11 {
        let (status, h, _) = http_get(fg.port, "/x").await.unwrap();
        carried.push((
            status,
            h.get("x-ratelimit-remaining")
                .map(|v| v.to_str().unwrap().to_string()),
            h.contains_key("ratelimit-policy"),
        ));
    }
    let want: Vec<(u16, Option<String>, bool)> = (0..11u64)
        .map(|i| match i {
            // 9 .. 2 left of 10: not below 0.2 of it.
            0..=7 => (200, None, false),
            8 | 9 => (200, Some((9 - i).to_string()), true),
            _ => (429, Some("0".to_string()), true),
        })
        .collect();
    assert_eq!(carried, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_counts_of_unchanged_and_resized_limits_and_resets_redefined_ones() {
    let up = Upstream::start("app").await;
    let fg = Sidecar::start(up.port, &limit_yaml("steady", 2, ALWAYS)).await;
    for _ in 0..2 {
        assert_eq!(http_get(fg.port, "/x").await.unwrap().0, 200);
    }
    assert_eq!(http_get(fg.port, "/x").await.unwrap().0, 429);
    // An unrelated change: the limit's counters survive.
    let routes = "routes:\n  - name: api\n    match: { path_prefix: /api }\n";
    let config = |limit: String| {
        config_yaml(
            fg.port,
            fg.metrics_port,
            up.port,
            &format!("{routes}{limit}"),
        )
    };
    fg.write_config(&config(limit_yaml("steady", 2, ALWAYS)));
    fg.wait_metric("floodgate_config_version", 2.0).await;
    assert_eq!(
        http_get(fg.port, "/x").await.unwrap().0,
        429,
        "still limited after the reload"
    );
    // Only its size changes (2 -> 3): the 2 counted still count, one more passes.
    fg.write_config(&config(limit_yaml("steady", 3, ALWAYS)));
    fg.wait_metric("floodgate_config_version", 3.0).await;
    let (status, h, _) = http_get(fg.port, "/x").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(h["x-ratelimit-limit"], "3");
    assert_eq!(h["x-ratelimit-remaining"], "0");
    assert_eq!(http_get(fg.port, "/x").await.unwrap().0, 429);
    // Redefined (another window length): it starts afresh.
    fg.write_config(&config(
        limit_yaml("steady", 3, ALWAYS).replace("window_seconds: 60", "window_seconds: 30"),
    ));
    fg.wait_metric("floodgate_config_version", 4.0).await;
    let (status, h, _) = http_get(fg.port, "/x").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(h["x-ratelimit-remaining"], "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_headers_can_be_switched_off() {
    let up = Upstream::start("app").await;
    let fg = Sidecar::start(
        up.port,
        &format!(
            "rate_limit_headers: {{ legacy: false, on_admitted: always }}\n{}",
            limit_yaml("l", 5, "")
        ),
    )
    .await;
    let (_, h, _) = http_get(fg.port, "/").await.unwrap();
    assert!(h.get("x-ratelimit-limit").is_none());
    assert_eq!(h["ratelimit"], "\"l\";r=4;t=60");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_can_be_kept_for_rejections_only() {
    let up = Upstream::start("app").await;
    let fg = Sidecar::start(
        up.port,
        &format!(
            "rate_limit_headers: {{ on_admitted: false }}\n{}",
            limit_yaml("r", 1, "")
        ),
    )
    .await;
    let (status, h, _) = http_get(fg.port, "/").await.unwrap();
    assert_eq!(status, 200);
    for name in ["ratelimit", "ratelimit-policy", "x-ratelimit-limit"] {
        assert!(h.get(name).is_none(), "{name} on an admitted response");
    }
    let (status, h, _) = http_get(fg.port, "/").await.unwrap();
    assert_eq!(status, 429);
    assert_eq!(h["ratelimit-policy"], "\"r\";q=1;w=60");
    assert_eq!(h["x-ratelimit-remaining"], "0");
    assert!(h.contains_key("retry-after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_with_several_windows_is_decided_by_the_tightest() {
    let up = Upstream::start("app").await;
    let extra = "rate_limit_headers: { on_admitted: always }\nlimits:\n  - name: two\n    max_requests: 5\n    window_seconds: 60\n    strategy: fixed_window\n    windows:\n      - { max_requests: 2, window_seconds: 3600 }\n";
    let fg = Sidecar::start(up.port, extra).await;
    let (_, h, _) = http_get(fg.port, "/").await.unwrap();
    assert_eq!(
        h["ratelimit-policy"], "\"two\";q=2;w=3600",
        "the hour has the least share left"
    );
    assert_eq!(http_get(fg.port, "/").await.unwrap().0, 200);
    let (status, h, body) = http_get(fg.port, "/").await.unwrap();
    assert_eq!(status, 429);
    assert_eq!(h["ratelimit-policy"], "\"two\";q=2;w=3600");
    assert!(body.contains("2 requests per 3600 s"), "{body}");
}
