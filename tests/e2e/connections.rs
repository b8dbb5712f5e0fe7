//! The client's connection as a raw-socket HTTP/1.1 keep-alive client sees it: an answer that
//! promises keep-alive is followed by an answered next request on the same socket, and an
//! answer after which the sidecar closes says `Connection: close` (a keep-alive client never
//! finds EOF where it was promised a reusable connection). Also the connection bounds:
//! header deadline, idle keep-alive timeout and the connection cap.

use std::time::Duration;

use crate::support::*;

const GET: &[u8] = b"GET /x HTTP/1.1\r\nhost: app\r\n\r\n";

/// Sends `n` requests one after another through a pooled keep-alive client (hyper's, as
/// most HTTP clients pool): every one must be answered with `status`, none lost to a
/// connection closed under it.
async fn every_request_answered(port: u16, path: &str, n: usize, status: u16) {
    let client = client();
    for i in 0..n {
        let r = client
            .get(format!("http://127.0.0.1:{port}{path}").parse().unwrap())
            .await
            .unwrap_or_else(|e| panic!("request {i} lost: {e:?}"));
        assert_eq!(r.status(), status, "request {i}");
        http_body_util::BodyExt::collect(r.into_body())
            .await
            .unwrap();
    }
}

/// One request on a raw connection: the answer must say `Connection: close`, and the
/// sidecar must then close.
async fn says_close_and_closes(port: u16, path: &str, status: u16) {
    let mut c = RawConn::connect(port).await;
    c.send(format!("GET {path} HTTP/1.1\r\nhost: app\r\n\r\n").as_bytes())
        .await;
    let r = c.response().await.unwrap();
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    let body = String::from_utf8_lossy(&r.body);
    assert!(body.contains(&format!("\"status\":{status}")), "{body}");
    assert!(c.closed().await, "closed as it said");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_502_says_close_so_no_keep_alive_request_is_lost() {
    let fg = Sidecar::start(free_port(), "").await;
    says_close_and_closes(fg.port, "/x", 502).await;
    every_request_answered(fg.port, "/x", 20, 502).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_504_says_close_so_no_keep_alive_request_is_lost() {
    let up = Upstream::start("app").await;
    let fg = Sidecar::start_custom(|port, metrics_port| {
        config_yaml(port, metrics_port, up.port, "")
            .replace("read_timeout_ms: 2000", "read_timeout_ms: 200")
    })
    .await;
    says_close_and_closes(fg.port, "/sleep/5000", 504).await;
    // Alternating: the pooled connection of each 200 must not be the one a 504 closed.
    let client = client();
    for i in 0..6 {
        let path = if i % 2 == 0 { "/" } else { "/sleep/5000" };
        let r = client
            .get(
                format!("http://127.0.0.1:{}{path}", fg.port)
                    .parse()
                    .unwrap(),
            )
            .await
            .unwrap_or_else(|e| panic!("request {i} ({path}) lost: {e:?}"));
        assert_eq!(r.status(), if i % 2 == 0 { 200 } else { 504 }, "{path}");
        http_body_util::BodyExt::collect(r.into_body())
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_with_the_request_body_unread_says_close_and_closes() {
    let fg = Sidecar::start(free_port(), "").await;
    let mut c = RawConn::connect(fg.port).await;
    // Only 10 of the 100 body bytes: the sidecar cannot know where the next request starts.
    c.send(b"POST /x HTTP/1.1\r\nhost: app\r\ncontent-length: 100\r\n\r\n0123456789")
        .await;
    let r = c.response().await.unwrap();
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    assert!(c.closed().await, "closed as it said");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_written_while_draining_say_close() {
    let up = Upstream::start("app").await;
    let fg = Sidecar::start(up.port, "").await;
    let mut c = RawConn::connect(fg.port).await;
    c.send(GET).await;
    assert_eq!(
        c.response().await.unwrap().header("connection"),
        Some("keep-alive")
    );
    c.send(b"GET /hold/a HTTP/1.1\r\nhost: app\r\n\r\n").await;
    eventually(Duration::from_secs(5), "request in flight", || async {
        fg.metric("floodgate_inflight_requests").await == Some(1.0)
    })
    .await;
    fg.signal(nix::sys::signal::Signal::SIGTERM);
    eventually(Duration::from_secs(5), "draining", || async {
        fg.metric("floodgate_draining").await == Some(1.0)
    })
    .await;
    up.stats.release(1);
    let r = c.response().await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    assert!(c.closed().await);
}

/// A sidecar with the given `server:` settings (added to the test config's own).
async fn bounded(upstream: u16, server: &str) -> Sidecar {
    Sidecar::start_custom(|port, metrics_port| {
        config_yaml(port, metrics_port, upstream, "")
            .replace("server:\n", &format!("server:\n{server}"))
    })
    .await
}

fn open_fds(fg: &Sidecar) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", fg.child.id()))
        .unwrap()
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_trickling_connections_are_closed_at_the_head_deadline() {
    let up = Upstream::start("app").await;
    let fg = bounded(up.port, "  header_read_timeout_ms: 500\n").await;
    let before = open_fds(&fg);
    // 200 connections that send nothing, and one that sends 8 bytes (fewer than the 24 of
    // the HTTP/2 preface pingora waits for).
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(RawConn::connect(fg.port).await);
    }
    let mut short = RawConn::connect(fg.port).await;
    short.send(b"GET / HT").await;
    // One that sends its head a byte every 50 ms: 1.4 s for the whole head.
    let port = fg.port;
    let trickling = tokio::spawn(async move {
        let mut c = RawConn::connect(port).await;
        for &b in b"GET / HTTP/1.1\r\nhost: app\r\n\r\n" {
            if c.try_send(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        c.response().await
    });
    // Meanwhile a normal client is served.
    assert_eq!(http_get(fg.port, "/").await.unwrap().0, 200);
    let r = short.response().await.expect("a 408 for the partial head");
    assert_eq!(r.status, 408, "{r:?}");
    assert!(short.closed().await);
    let r = trickling
        .await
        .unwrap()
        .expect("a 408 for the trickled head");
    assert_eq!(r.status, 408, "{r:?}");
    for c in &mut silent {
        assert!(c.closed().await, "a silent connection is closed");
    }
    fg.wait_metric("floodgate_header_timeouts_total{head=\"idle\"}", 200.0)
        .await;
    fg.wait_metric("floodgate_header_timeouts_total{head=\"partial\"}", 2.0)
        .await;
    eventually(
        Duration::from_secs(5),
        "the sidecar's fds are given back",
        || async { open_fds(&fg) <= before + 5 },
    )
    .await;
    assert_eq!(http_get(fg.port, "/").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_shorter_than_the_http2_preface_is_answered_at_once() {
    let up = Upstream::start("app").await;
    let fg = Sidecar::start(up.port, "").await;
    let mut c = RawConn::connect(fg.port).await;
    // 18 bytes: pingora alone waits for 24 to compare with the HTTP/2 preface.
    c.send(b"GET / HTTP/1.0\r\n\r\n").await;
    let r = c
        .response()
        .await
        .expect("answered without waiting for more bytes");
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_gets_the_deadline_for_its_next_head_and_its_idle_timeout() {
    let up = Upstream::start("app").await;
    let fg = bounded(
        up.port,
        "  header_read_timeout_ms: 400\n  keepalive_timeout_ms: 1000\n",
    )
    .await;
    // A first request, then a second head that trickles: 408.
    let mut c = RawConn::connect(fg.port).await;
    c.send(GET).await;
    assert_eq!(c.response().await.unwrap().status, 200);
    let mut got = None;
    for &b in b"GET /second HTTP/1.1\r\nhost: app\r\n\r\n" {
        if c.try_send(&[b]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if got.is_none() {
            got = c.poll_response().await;
        }
    }
    let r = match got {
        Some(r) => r,
        None => c.response().await.unwrap(),
    };
    assert_eq!(r.status, 408, "{r:?}");
    // Waiting idle between requests is not a slow head: kept for keepalive_timeout_ms.
    let mut idle = RawConn::connect(fg.port).await;
    idle.send(GET).await;
    assert_eq!(idle.response().await.unwrap().status, 200);
    let start = std::time::Instant::now();
    assert!(idle.closed().await, "closed after the idle timeout");
    let idle_for = start.elapsed();
    assert!(
        idle_for >= Duration::from_millis(900),
        "closed after {idle_for:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_are_closed_and_counted() {
    let up = Upstream::start("app").await;
    let fg = bounded(up.port, "  max_connections: 3\n").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = RawConn::connect(fg.port).await;
        c.send(GET).await;
        assert_eq!(c.response().await.unwrap().status, 200);
        held.push(c);
    }
    fg.wait_metric("floodgate_connections_open", 3.0).await;
    let mut over = RawConn::connect(fg.port).await;
    assert!(
        over.closed().await,
        "the fourth connection is closed at once"
    );
    fg.wait_metric("floodgate_connections_refused_total", 1.0)
        .await;
    // A place freed is a place taken again.
    drop(held.pop());
    fg.wait_metric("floodgate_connections_open", 2.0).await;
    let mut c = RawConn::connect(fg.port).await;
    c.send(GET).await;
    assert_eq!(c.response().await.unwrap().status, 200);
}
