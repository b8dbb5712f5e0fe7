//! The admission queue against a real upstream that holds requests until the test lets them
//! go: the in-flight cap seen at the upstream, `queue_full` arithmetic, priority order, a
//! queued client that leaves, live resizes under load, timeouts and gRPC deadlines.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

use crate::support::{config_yaml, eventually, http_get, Sidecar, Upstream};

/// The tests' config with `extra`, and an upstream read timeout long enough that a request
/// the upstream holds stays held however slow the machine is.
fn yaml(port: u16, metrics_port: u16, upstream_port: u16, extra: &str) -> String {
    config_yaml(port, metrics_port, upstream_port, extra)
        .replace("read_timeout_ms: 2000", "read_timeout_ms: 120000")
}

async fn start(up: &Upstream, extra: &str) -> Sidecar {
    let upstream = up.port;
    Sidecar::start_custom(|p, m| yaml(p, m, upstream, extra)).await
}

type Answer = (u16, http::HeaderMap, String);

fn spawn_get(port: u16, path: &str) -> JoinHandle<Answer> {
    let path = path.to_string();
    tokio::spawn(async move { http_get(port, &path).await.unwrap() })
}

async fn depth(fg: &Sidecar) -> Option<f64> {
    fg.metric("floodgate_queue_depth").await
}

/// Waits until the queue holds `n` requests.
async fn wait_depth(fg: &Sidecar, n: u32) {
    let what = format!("queue depth {n}");
    eventually(Duration::from_secs(5), &what, || async {
        depth(fg).await == Some(f64::from(n))
    })
    .await;
}

/// Waits until the upstream is handling `n` requests.
async fn wait_upstream(up: &Upstream, n: u64) {
    let what = format!("{n} requests at the upstream");
    eventually(Duration::from_secs(5), &what, || async {
        up.stats.inflight.load(Ordering::SeqCst) == n
    })
    .await;
}

const QUEUE: &str = "queue:\n  max_concurrency: 2\n  max_size: 3\n  timeout_ms: 30000\n";

#[tokio::test]
async fn only_max_concurrency_requests_reach_the_upstream_and_the_rest_wait() {
    let up = Upstream::start("app").await;
    let fg = start(
        &up,
        "queue:\n  max_concurrency: 3\n  max_size: 100\n  timeout_ms: 30000\n",
    )
    .await;
    let calls: Vec<_> = (0..12)
        .map(|i| spawn_get(fg.port, &format!("/hold/{i}")))
        .collect();
    wait_upstream(&up, 3).await;
    wait_depth(&fg, 9).await;
    assert_eq!(fg.metric("floodgate_inflight_requests").await, Some(3.0));
    assert_eq!(fg.metric("floodgate_concurrency_limit").await, Some(3.0));
    assert_eq!(fg.metric("floodgate_queue_capacity").await, Some(100.0));
    let (_, _, status) = http_get(fg.metrics_port, "/status").await.unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["queue"]["depth"], 9);
    assert_eq!(status["queue"]["inflight"], 3);
    up.stats.release(12);
    for c in calls {
        assert_eq!(c.await.unwrap().0, 200);
    }
    assert_eq!(up.stats.max_inflight.load(Ordering::SeqCst), 3);
    assert_eq!(up.stats.requests.load(Ordering::SeqCst), 12);
    // Every request that waited is in the wait histogram.
    fg.wait_metric("floodgate_queue_wait_seconds_count", 9.0)
        .await;
}

#[tokio::test]
async fn a_full_queue_sheds_exactly_the_excess_with_retry_after() {
    let up = Upstream::start("app").await;
    let fg = start(&up, QUEUE).await;
    // 2 slots + 3 places: of 10 requests offered at once, 5 are admitted and 5 shed.
    let calls: Vec<_> = (0..10)
        .map(|i| spawn_get(fg.port, &format!("/hold/{i}")))
        .collect();
    wait_upstream(&up, 2).await;
    wait_depth(&fg, 3).await;
    fg.wait_metric("floodgate_shed_total{reason=\"queue_full\"}", 5.0)
        .await;
    up.stats.release(10);
    let mut ok = 0;
    let mut full = 0;
    for c in calls {
        let (status, headers, body) = c.await.unwrap();
        match status {
            200 => ok += 1,
            503 => {
                full += 1;
                assert_eq!(headers["floodgate-reason"], "queue_full");
                let secs: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
                assert!((1..=60).contains(&secs), "retry-after {secs}");
                assert!(body.contains("queue.max_size"), "{body}");
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((ok, full), (5, 5));
    assert_eq!(up.stats.requests.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn waiters_are_served_by_priority_then_arrival() {
    let up = Upstream::start("app").await;
    let routes = "routes:\n  - name: checkout\n    match: { path_prefix: /c }\n    priority: critical\n  - name: reco\n    match: { path_prefix: /l }\n    priority: low\nqueue:\n  max_concurrency: 1\n  max_size: 10\n  timeout_ms: 30000\n";
    let fg = start(&up, routes).await;
    let mut calls = vec![spawn_get(fg.port, "/hold/first")];
    wait_upstream(&up, 1).await;
    // Queued one at a time so their arrival order is known.
    for (i, path) in [
        "/l/hold/low-1",
        "/n/hold/normal-1",
        "/c/hold/critical-1",
        "/l/hold/low-2",
        "/c/hold/critical-2",
        "/n/hold/normal-2",
    ]
    .iter()
    .enumerate()
    {
        calls.push(spawn_get(fg.port, path));
        wait_depth(&fg, i as u32 + 1).await;
    }
    up.stats.release(7);
    for c in calls {
        assert_eq!(c.await.unwrap().0, 200);
    }
    assert_eq!(
        up.stats.paths(),
        [
            "/hold/first",
            "/c/hold/critical-1",
            "/c/hold/critical-2",
            "/n/hold/normal-1",
            "/n/hold/normal-2",
            "/l/hold/low-1",
            "/l/hold/low-2",
        ]
    );
}

#[tokio::test]
async fn a_client_that_leaves_the_queue_frees_its_place_at_once() {
    let up = Upstream::start("app").await;
    let fg = start(
        &up,
        "queue:\n  max_concurrency: 1\n  max_size: 1\n  timeout_ms: 30000\n",
    )
    .await;
    let first = spawn_get(fg.port, "/hold/first");
    wait_upstream(&up, 1).await;
    let mut leaver = tokio::net::TcpStream::connect(("127.0.0.1", fg.port))
        .await
        .unwrap();
    leaver
        .write_all(b"GET /hold/leaver HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    wait_depth(&fg, 1).await;
    assert_eq!(http_get(fg.port, "/full").await.unwrap().0, 503);
    drop(leaver);
    wait_depth(&fg, 0).await;
    fg.wait_metric("floodgate_queue_abandoned_total", 1.0).await;
    // The freed place takes the next request, which is served in turn.
    let next = spawn_get(fg.port, "/hold/next");
    wait_depth(&fg, 1).await;
    up.stats.release(2);
    assert_eq!(first.await.unwrap().0, 200);
    assert_eq!(next.await.unwrap().0, 200);
    assert!(!up.stats.paths().iter().any(|p| p.contains("leaver")));
    assert!(
        !fg.log().contains("ERROR"),
        "a client leaving is not an error:\n{}",
        fg.log()
    );
}

#[tokio::test]
async fn resizing_under_load_loses_and_reorders_nothing() {
    let up = Upstream::start("app").await;
    let fg = start(
        &up,
        "queue:\n  max_concurrency: 2\n  max_size: 20\n  timeout_ms: 30000\n",
    )
    .await;
    let mut calls = Vec::new();
    for i in 0..2 {
        calls.push(spawn_get(fg.port, &format!("/hold/{i}")));
    }
    wait_upstream(&up, 2).await;
    for i in 2..12 {
        calls.push(spawn_get(fg.port, &format!("/hold/{i}")));
        wait_depth(&fg, i - 1).await;
    }
    let yaml = |c: u32, s: u32| {
        yaml(
            fg.port,
            fg.metrics_port,
            up.port,
            &format!("queue:\n  max_concurrency: {c}\n  max_size: {s}\n  timeout_ms: 30000\n"),
        )
    };
    // Grow: three more go to the upstream at once.
    fg.write_config(&yaml(5, 20));
    wait_upstream(&up, 5).await;
    wait_depth(&fg, 7).await;
    // Shrink below what is in flight and waiting: nothing is dropped, new arrivals are shed.
    fg.write_config(&yaml(1, 2));
    fg.wait_metric("floodgate_concurrency_limit", 1.0).await;
    assert_eq!(depth(&fg).await, Some(7.0));
    assert_eq!(http_get(fg.port, "/late").await.unwrap().0, 503);
    // Let them all go: every admitted request succeeds, in arrival order, never more than
    // one at a time once the five in flight have finished.
    up.stats.release(12);
    for c in calls {
        assert_eq!(c.await.unwrap().0, 200);
    }
    // The first two (admitted at once) and the three let in together by the resize race
    // each other to the upstream; everyone else went in alone, in the order they queued.
    let paths = up.stats.paths();
    let mut first: Vec<&str> = paths[..2].iter().map(String::as_str).collect();
    first.sort_unstable();
    let mut grown: Vec<&str> = paths[2..5].iter().map(String::as_str).collect();
    grown.sort_unstable();
    assert_eq!(first, ["/hold/0", "/hold/1"]);
    assert_eq!(grown, ["/hold/2", "/hold/3", "/hold/4"]);
    let rest: Vec<String> = (5..12).map(|i| format!("/hold/{i}")).collect();
    assert_eq!(paths[5..], rest);
    assert_eq!(up.stats.max_inflight.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn a_wait_past_timeout_ms_is_answered_503_queue_timeout() {
    let up = Upstream::start("app").await;
    let fg = start(
        &up,
        "queue:\n  max_concurrency: 1\n  max_size: 5\n  timeout_ms: 200\n",
    )
    .await;
    let first = spawn_get(fg.port, "/hold/first");
    wait_upstream(&up, 1).await;
    let (status, headers, _) = http_get(fg.port, "/waits").await.unwrap();
    assert_eq!(status, 503);
    assert_eq!(headers["floodgate-reason"], "queue_timeout");
    assert!(headers.contains_key("retry-after"));
    fg.wait_metric("floodgate_shed_total{reason=\"queue_timeout\"}", 1.0)
        .await;
    up.stats.release(1);
    assert_eq!(first.await.unwrap().0, 200);
    assert!(!up.stats.paths().contains(&"/waits".to_string()));
}

/// Sends one gRPC-shaped request over h2c and returns the response head.
async fn grpc_call(port: u16, path: &str, timeout: Option<&str>) -> http::response::Parts {
    let client = crate::support::h2c_client();
    let mut req = http::Request::post(format!("http://127.0.0.1:{port}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(t) = timeout {
        req = req.header("grpc-timeout", t);
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"\0\0\0\0\0",
        )))
        .unwrap();
    client.request(req).await.unwrap().into_parts().0
}

#[tokio::test]
async fn grpc_callers_get_grpc_statuses_and_their_deadline_is_honoured() {
    let up = Upstream::start("app").await;
    let fg = start(
        &up,
        "queue:\n  max_concurrency: 1\n  max_size: 2\n  timeout_ms: 30000\n",
    )
    .await;
    // A drain rate to estimate waits from: a few quick requests.
    for _ in 0..5 {
        assert_eq!(http_get(fg.port, "/").await.unwrap().0, 200);
    }
    let mut calls = vec![spawn_get(fg.port, "/hold/first")];
    wait_upstream(&up, 1).await;
    calls.push(spawn_get(fg.port, "/hold/q1"));
    wait_depth(&fg, 1).await;
    // Its deadline (100 ms) is shorter than the wait behind one queued request at the
    // observed rate (at most 5 a second, so at least 400 ms): refused at once, not queued.
    let h = grpc_call(fg.port, "/svc/Method", Some("100m")).await;
    assert_eq!(h.status, 200);
    assert_eq!(h.headers["grpc-status"], "14");
    assert_eq!(h.headers["floodgate-reason"], "queue_timeout");
    assert_eq!(depth(&fg).await, Some(1.0));
    // A full queue is UNAVAILABLE, like every shedding answer (RESOURCE_EXHAUSTED is the
    // rate limit's alone).
    calls.push(spawn_get(fg.port, "/hold/q2"));
    wait_depth(&fg, 2).await;
    let h = grpc_call(fg.port, "/svc/Method", None).await;
    assert_eq!(h.headers["grpc-status"], "14");
    assert_eq!(h.headers["floodgate-reason"], "queue_full");
    up.stats.release(3);
    for c in calls {
        assert_eq!(c.await.unwrap().0, 200);
    }
}

#[tokio::test]
async fn a_grpc_call_whose_deadline_passes_while_queued_gets_deadline_exceeded() {
    let up = Upstream::start("app").await;
    let fg = start(
        &up,
        "queue:\n  max_concurrency: 1\n  max_size: 2\n  timeout_ms: 30000\n",
    )
    .await;
    let first = spawn_get(fg.port, "/hold/first");
    wait_upstream(&up, 1).await;
    // Nothing has drained yet, so no wait can be estimated: the call queues, and its own
    // deadline (200 ms, far inside queue.timeout_ms) ends the wait.
    let h = grpc_call(fg.port, "/svc/Method", Some("200m")).await;
    assert_eq!(h.status, 200);
    assert_eq!(h.headers["grpc-status"], "4", "DEADLINE_EXCEEDED");
    assert_eq!(h.headers["floodgate-reason"], "queue_timeout");
    up.stats.release(1);
    assert_eq!(first.await.unwrap().0, 200);
}

/// Resident memory of a process, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// Opens `n` connections that each send `request` (and `body`) and stay open; waits until the
/// queue holds `until` requests.
async fn park(
    fg: &Sidecar,
    n: usize,
    request: &[u8],
    body: &[u8],
    until: usize,
) -> Vec<tokio::net::TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for batch in 0..n / 500 {
        for _ in 0..500 {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", fg.port))
                .await
                .unwrap();
            s.write_all(request).await.unwrap();
            s.write_all(body).await.unwrap();
            conns.push(s);
        }
        let want = (until - n + (batch + 1) * 500) as u32;
        let what = format!("{want} queued");
        eventually(Duration::from_secs(30), &what, || async {
            depth(fg).await == Some(f64::from(want))
        })
        .await;
    }
    conns
}

/// 10,000 queued requests: what they cost in resident memory, and proof that a queued
/// request's body is left unread. These are served by the HTTP/1.1 fast path, where a queued
/// request measured 6.6 KiB on the release build (`bench/queued.py`; this debug build's futures
/// are larger); on pingora-proxy's path, pingora 0.9's own state for one parked request is ~23
/// KiB (DHAT: its proxy future 9.2 KiB, header buffer 4 KiB, app future 3.8 KiB, task 2 KiB).
/// The bound asserted here is the old path's measured ~26 KiB with headroom, kept.
#[tokio::test]
async fn ten_thousand_queued_requests_hold_no_bodies_and_bounded_memory() {
    const HALF: usize = 5_000;
    let up = Upstream::start("app").await;
    // 10,000 waiting connections are over server.max_connections' default.
    let upstream = up.port;
    let fg = Sidecar::start_custom(|p, m| {
        yaml(
            p,
            m,
            upstream,
            "queue:\n  max_concurrency: 1\n  max_size: 20000\n  timeout_ms: 120000\nlogging:\n  access_log: false\n",
        )
        .replace("server:\n", "server:\n  max_connections: 20000\n")
    })
    .await;
    // Its answer is lost when the sidecar is stopped at the end: not unwrapped.
    let port = fg.port;
    let first = tokio::spawn(async move { http_get(port, "/hold/first").await });
    wait_upstream(&up, 1).await;
    let idle = rss_bytes(fg.child.id());
    let gets = park(
        &fg,
        HALF,
        b"GET /queued HTTP/1.1\r\nhost: x\r\n\r\n",
        b"",
        HALF,
    )
    .await;
    let with_gets = rss_bytes(fg.child.id());
    // Each POST's 16 KiB body is sent in full: buffering it would add 16 KiB per request.
    let body = vec![b'x'; 16 * 1024];
    let posts = park(
        &fg,
        HALF,
        b"POST /queued HTTP/1.1\r\nhost: x\r\ncontent-length: 16384\r\n\r\n",
        &body,
        2 * HALF,
    )
    .await;
    let with_posts = rss_bytes(fg.child.id());
    let per_get = with_gets.saturating_sub(idle) / HALF as u64;
    let per_post = with_posts.saturating_sub(with_gets) / HALF as u64;
    let total = with_posts.saturating_sub(idle);
    eprintln!(
        "RSS idle {} KiB; +{} KiB for {} queued ({per_get} B per GET, {per_post} B per POST with a 16 KiB body)",
        idle / 1024,
        total / 1024,
        2 * HALF
    );
    assert!(
        per_post < per_get + 4096,
        "a queued POST costs {per_post} B against {per_get} B for a GET: its body is being read"
    );
    assert!(
        total < 2 * HALF as u64 * 32 * 1024,
        "10,000 queued requests grew RSS by {} MiB",
        total / (1024 * 1024)
    );
    // Unread bodies are not watched for disconnects (that would mean reading them), so these
    // would wait out their timeout: stop the sidecar instead.
    drop(fg);
    drop((gets, posts));
    up.stats.release(1);
    let _ = first.await;
}
