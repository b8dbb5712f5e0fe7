//! Traffic through the sidecar: bytes, headers, streaming, protocols, and the sidecar's own
//! answers when the upstream or the request is at fault.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_path_query_and_headers_pass_and_forwarded_headers_are_added() {
    let up = Upstream::start("app").await;
    let fg = Sidecar::start(up.port, "").await;
    let req = http::Request::builder()
        .method("PUT")
        .uri(format!("http://127.0.0.1:{}/echo?a=1&b=%20x", fg.port))
        .header("x-custom", "kept")
        .header("x-forwarded-for", "203.0.113.7")
        .header("content-type", "text/plain")
        .body(http_body_util::Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["echo-method"], "PUT");
    assert_eq!(h["echo-uri"], "/echo?a=1&b=%20x");
    assert_eq!(h["echo-x-custom"], "kept");
    assert_eq!(h["echo-x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["echo-x-forwarded-proto"], "http");
    assert_eq!(h["content-type"], "text/plain");
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        Bytes::from_static(b"payload")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mib_streamed_body_goes_through_unchanged_both_ways() {
    let up = Upstream::start("app").await;
    let fg = Sidecar::start(up.port, "").await;
    // Chunked upload of 10 MiB of non-repeating bytes, echoed back by the upstream as it arrives.
    let chunk_count = 160usize;
    let chunks: Vec<Vec<u8>> = (0..chunk_count)
        .map(|c| {
            (0..65536usize)
                .map(|i| ((i * 31 + c * 7) % 251) as u8)
                .collect()
        })
        .collect();
    let expected: Vec<u8> = chunks.concat();
    assert_eq!(expected.len(), 10 * 1024 * 1024);
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", fg.port))
        .await
        .unwrap();
    let head = "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ncontent-type: application/octet-stream\r\nconnection: close\r\n\r\n";
    let (mut rd, mut wr) = s.split();
    let writer = async {
        wr.write_all(head.as_bytes()).await.unwrap();
        for c in &chunks {
            wr.write_all(format!("{:x}\r\n", c.len()).as_bytes())
                .await
                .unwrap();
            wr.write_all(c).await.unwrap();
            wr.write_all(b"\r\n").await.unwrap();
        }
        wr.write_all(b"0\r\n\r\n").await.unwrap();
    };
    let reader = async {
        let mut out = Vec::new();
        rd.read_to_end(&mut out).await.unwrap();
        out
    };
    let ((), raw_resp) = tokio::join!(writer, reader);
    let split = raw_resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw_resp[..split]).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let body = &raw_resp[split + 4..];
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_vec()
    };
    assert_eq!(body.len(), expected.len());
    assert!(body == expected, "body bytes differ");
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        b = &b[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_is_502_upstream_unavailable() {
    let dead = free_port();
    let fg = Sidecar::start(dead, "").await;
    let (status, h, body) = http_get(fg.port, "/x").await.unwrap();
    assert_eq!(status, 502);
    assert_eq!(h["floodgate-reason"], "upstream_unavailable");
    assert_eq!(h["content-type"], "application/problem+json");
    assert!(body.contains("\"status\":502"), "{body}");
    fg.wait_metric(
        "floodgate_local_responses_total{reason=\"upstream_unavailable\"}",
        1.0,
    )
    .await;
    fg.wait_metric(
        "http_requests_total{method=\"GET\",route=\"default\",status=\"502\"}",
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_upstream_is_504_upstream_timeout_within_read_timeout() {
    let up = Upstream::start("app").await;
    let fg = Sidecar::start(up.port, "").await; // read_timeout_ms: 2000
    let start = std::time::Instant::now();
    let (status, h, _) = http_get(fg.port, "/sleep/10000").await.unwrap();
    let took = start.elapsed();
    assert_eq!(status, 504);
    assert_eq!(h["floodgate-reason"], "upstream_timeout");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http_is_400_and_oversized_headers_are_431() {
    let up = Upstream::start("app").await;
    let fg = Sidecar::start(up.port, "").await;
    let bad = raw(
        fg.port,
        b"GET / HTTP/1.1\r\nhost: x\r\nbad header line\r\n\r\n",
    )
    .await;
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    let big = "a".repeat(70 * 1024);
    let resp = raw(
        fg.port,
        format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    assert!(resp.to_lowercase().contains("connection: close"), "{resp}");
    assert!(
        resp.to_lowercase()
            .contains("floodgate-reason: headers_too_large"),
        "{resp}"
    );
    assert_eq!(
        up.stats.requests.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "nothing bad reached the app"
    );
    // And a normal request on the same sidecar still passes.
    assert_eq!(http_get(fg.port, "/").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_requests_reach_the_upstream_as_http2() {
    let up = Upstream::start("app").await;
    let fg = Sidecar::start(up.port, "").await;
    let h2 = h2c_client();
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://127.0.0.1:{}/echo", fg.port))
        .header("content-type", "application/grpc")
        .body(http_body_util::Full::new(Bytes::from_static(
            b"\0\0\0\0\x02hi",
        )))
        .unwrap();
    let resp = h2.request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.headers()["echo-version"], "HTTP/2.0");
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        Bytes::from_static(b"\0\0\0\0\x02hi")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_protocol_can_be_forced() {
    let up = Upstream::start("app").await;
    // http1: an h2c client still reaches an HTTP/1.1-only app.
    let fg = Sidecar::start(up.port, "").await;
    fg.write_config(&config_yaml(fg.port, fg.metrics_port, up.port, "").replace(
        "read_timeout_ms: 2000",
        "read_timeout_ms: 2000\n  protocol: http1",
    ));
    fg.wait_metric("floodgate_config_version", 2.0).await;
    let h2 = h2c_client();
    let resp = h2
        .get(
            format!("http://127.0.0.1:{}/echo", fg.port)
                .parse()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.headers()["echo-version"], "HTTP/1.1");
    // h2c: an HTTP/1.1 client's request goes upstream as HTTP/2.
    fg.write_config(&config_yaml(fg.port, fg.metrics_port, up.port, "").replace(
        "read_timeout_ms: 2000",
        "read_timeout_ms: 2000\n  protocol: h2c",
    ));
    fg.wait_metric("floodgate_config_version", 3.0).await;
    let (status, h, _) = http_get(fg.port, "/echo").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(h["echo-version"], "HTTP/2.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_caller_gets_grpc_status_when_upstream_is_down() {
    let fg = Sidecar::start(free_port(), "").await;
    let h2 = h2c_client();
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://127.0.0.1:{}/pkg.Svc/Method", fg.port))
        .header("content-type", "application/grpc")
        .body(http_body_util::Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let resp = h2.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["grpc-status"], "14", "UNAVAILABLE");
    assert_eq!(resp.headers()["floodgate-reason"], "upstream_unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_passes_through() {
    let up = Upstream::start("app").await;
    let fg = Sidecar::start(up.port, "").await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", fg.port))
        .await
        .unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 1024];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before the 101");
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    s.write_all(b"ping over the upgraded connection")
        .await
        .unwrap();
    let mut echoed = vec![0u8; 33];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"ping over the upgraded connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness_endpoints() {
    let up = Upstream::start("app").await;
    let routes = "routes:\n  - name: api\n    match: { path_prefix: /api }\n";
    let fg = Sidecar::start(up.port, routes).await;
    for _ in 0..3 {
        assert_eq!(http_get(fg.port, "/api/x").await.unwrap().0, 200);
    }
    assert_eq!(http_get(fg.metrics_port, "/healthz").await.unwrap().0, 200);
    assert_eq!(http_get(fg.metrics_port, "/readyz").await.unwrap().0, 200);
    fg.wait_metric("http_request_duration_seconds_count{route=\"api\"}", 3.0)
        .await;
    let (_, h, body) = http_get(fg.metrics_port, "/metrics").await.unwrap();
    assert!(h["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert!(
        body.contains("http_requests_total{method=\"GET\",route=\"api\",status=\"200\"} 3"),
        "{body}"
    );
    assert!(
        body.contains("http_request_duration_seconds_bucket{route=\"api\",le=\"1\"} 3"),
        "{body}"
    );
    assert!(
        body.contains("http_request_duration_seconds_count{route=\"api\"} 3"),
        "{body}"
    );
    assert!(body.contains("floodgate_config_version 1"), "{body}");
    assert!(
        body.contains("floodgate_config_reloads_total{result=\"failure\"} 0"),
        "{body}"
    );
    assert!(body.contains("process_resident_memory_bytes"), "{body}");
    eventually(Duration::from_secs(5), "access log line", || async {
        fg.log().lines().any(|l| {
            l.contains("access") && l.contains("path=\"/api/x\"") && l.contains("status=200")
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_log_has_one_object_per_request() {
    let up = Upstream::start("app").await;
    let fg = Sidecar::start(up.port, "logging:\n  format: json\n").await;
    assert_eq!(http_get(fg.port, "/hello?q=1").await.unwrap().0, 200);
    eventually(
        Duration::from_secs(5),
        "access log line written",
        || async { fg.log().lines().any(|l| l.contains("\"path\":\"/hello\"")) },
    )
    .await;
    let line = fg
        .log()
        .lines()
        .find(|l| l.contains("\"path\":\"/hello\""))
        .unwrap()
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["target"], "access");
    assert_eq!(v["status"], 200);
    assert_eq!(v["method"], "GET");
    assert_eq!(v["route"], "default");
}
