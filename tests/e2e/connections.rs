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
