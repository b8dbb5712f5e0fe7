//! The HTTP/1.1 fast path as a raw-socket client and a raw upstream see it: every framing an
//! upstream may answer with reaches the client intact on one keep-alive connection;
//! pipelined requests keep their order across the hand-over to pingora-proxy; a pooled
//! upstream connection the upstream closed is retried once, a request never sent twice; a
//! body sent after its head is streamed; and `floodgate_http1_path_total` says which path
//! served what.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

fn find(b: &[u8], what: &[u8]) -> Option<usize> {
    b.windows(what.len()).position(|w| w == what)
}

fn content_length(head: &str) -> usize {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// What the scripted upstream answers to a request for `path` with `body`, and whether it
/// closes the connection after (without saying so, for `/then-close`).
fn reply_for(method: &str, path: &str, body: &[u8]) -> (Vec<u8>, bool) {
    let r: (&[u8], bool) = match path {
        "/len" if method == "HEAD" => (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false),
        "/len" => (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", false),
        "/chunked" => (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nx-trailer: t\r\n\r\n",
            false,
        ),
        "/close" => (b"HTTP/1.1 200 OK\r\nx-kind: close\r\n\r\nuntil close", true),
        "/nocontent" => (b"HTTP/1.1 204 No Content\r\nx-kind: none\r\n\r\n", false),
        "/hints" => (
            b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            false,
        ),
        "/then-close" => (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", true),
        _ => {
            let mut r = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len())
                .into_bytes();
            r.extend_from_slice(body);
            return (r, false);
        }
    };
    (r.0.to_vec(), r.1)
}

/// A raw upstream answering from [`reply_for`]; it records every request head it reads and
/// counts its connections.
struct Scripted {
    port: u16,
    heads: Arc<Mutex<Vec<String>>>,
    conns: Arc<Mutex<usize>>,
}

impl Scripted {
    async fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(Mutex::new(0));
        let (h, c) = (heads.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                *c.lock().unwrap() += 1;
                tokio::spawn(Self::serve(s, h.clone()));
            }
        });
        Self { port, heads, conns }
    }

    async fn serve(mut s: TcpStream, heads: Arc<Mutex<Vec<String>>>) {
        let mut buf = Vec::new();
        loop {
            let end = loop {
                if let Some(i) = find(&buf, b"\r\n\r\n") {
                    break i + 4;
                }
                let mut chunk = [0u8; 4096];
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len = content_length(&head);
            while buf.len() < end + len {
                let mut chunk = [0u8; 4096];
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let body = buf[end..end + len].to_vec();
            buf.drain(..end + len);
            let mut words = head.split(' ');
            let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            let (reply, close) = reply_for(method, path, &body);
            heads.lock().unwrap().push(head);
            if s.write_all(&reply).await.is_err() || close {
                return;
            }
        }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

/// A scripted upstream, a sidecar in front of it with `extra` config, and a client.
async fn scripted(extra: &str) -> (Scripted, Sidecar, Client) {
    let up = Scripted::start().await;
    let fg = Sidecar::start(up.port, extra).await;
    let c = Client::connect(fg.port).await;
    (up, fg, c)
}

/// A response as a client decodes it: status, lower-cased headers, the body (chunked coding
/// undone, trailers dropped).
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A keep-alive client on a raw socket that reads any framing.
struct Client {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(port: u16) -> Self {
        Self {
            s: TcpStream::connect(("127.0.0.1", port)).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).await.unwrap();
    }

    /// Sends `b` (the write may fail: the sidecar may have closed) and reads to EOF.
    async fn send_body_and_expect_eof(&mut self, b: &[u8]) -> Vec<u8> {
        let _ = self.s.write_all(b).await;
        let mut rest = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            self.s.read_to_end(&mut rest),
        )
        .await;
        assert!(read.is_ok(), "the connection stayed open");
        rest
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), self.s.read(&mut chunk))
            .await
            .expect("no bytes within 10 s")
            .unwrap();
        assert!(n > 0, "EOF after {:?}", String::from_utf8_lossy(&self.buf));
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// Reads one response to a request of `method`.
    async fn reply(&mut self, method: &str) -> Reply {
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await;
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end);
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut r = Reply {
            status,
            headers,
            body: Vec::new(),
        };
        if method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status) {
            return r;
        }
        if r.header("transfer-encoding") == Some("chunked") {
            loop {
                let line = loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        break i;
                    }
                    self.fill().await;
                };
                let size_text = String::from_utf8_lossy(&self.buf[..line]).into_owned();
                let size =
                    usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
                self.buf.drain(..line + 2);
                if size == 0 {
                    // Trailers, up to the blank line.
                    let end = loop {
                        if self.buf.starts_with(b"\r\n") {
                            break 2;
                        }
                        if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                            break i + 4;
                        }
                        self.fill().await;
                    };
                    self.buf.drain(..end);
                    return r;
                }
                while self.buf.len() < size + 2 {
                    self.fill().await;
                }
                r.body.extend_from_slice(&self.buf[..size]);
                self.buf.drain(..size + 2);
            }
        }
        let len: usize = r
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while self.buf.len() < len {
            self.fill().await;
        }
        r.body = self.buf.drain(..len).collect();
        r
    }
}

fn fast(path: &str) -> String {
    format!("floodgate_http1_path_total{{path=\"{path}\"}}")
}

#[tokio::test]
async fn every_upstream_framing_reaches_a_keep_alive_client_intact() {
    let (up, fg, mut c) = scripted("").await;
    let cases: [(&str, &str, u16, &[u8]); 6] = [
        ("GET", "/len", 200, b"hello"),
        ("GET", "/chunked", 200, b"hello world"),
        ("HEAD", "/len", 200, b""),
        ("GET", "/nocontent", 204, b""),
        ("GET", "/hints", 200, b"ok"),
        // Close-delimited: re-framed as chunked, so the client's connection stays open.
        ("GET", "/close", 200, b"until close"),
    ];
    for (method, path, status, body) in cases {
        c.send(format!("{method} {path} HTTP/1.1\r\nhost: app\r\n\r\n").as_bytes())
            .await;
        if path == "/hints" {
            // An informational answer is passed on as it came (as pingora does), then the
            // final one.
            let hint = c.reply(method).await;
            assert_eq!(hint.status, 103, "{hint:?}");
            assert_eq!(hint.header("link"), Some("</s.css>"), "{hint:?}");
            assert_eq!(hint.header("connection"), None, "{hint:?}");
        }
        let r = c.reply(method).await;
        assert_eq!(r.status, status, "{method} {path}: {r:?}");
        assert_eq!(r.body, body, "{method} {path}: {r:?}");
        assert_eq!(r.header("connection"), Some("keep-alive"), "{path}: {r:?}");
        assert!(r.header("date").is_some(), "{path}: {r:?}");
    }
    // One upstream connection, pooled and reused, carried all six (the last one's answer
    // then closed it).
    assert_eq!(*up.conns.lock().unwrap(), 1, "{:?}", up.heads());
    fg.wait_metric(&fast("fast"), 6.0).await;
    assert_eq!(fg.metric(&fast("handed_over")).await, Some(0.0));
    // The app is told who asked, as on pingora's path.
    let heads = up.heads();
    assert!(
        heads
            .iter()
            .all(|h| h.contains("x-forwarded-for: 127.0.0.1\r\n")
                && h.contains("x-forwarded-proto: http\r\n")),
        "{heads:?}"
    );
}

#[tokio::test]
async fn pipelined_requests_keep_their_order_across_the_hand_over() {
    let (up, fg, mut c) = scripted("").await;
    // Two plain GETs and a POST with a `Connection` field (pingora's to negotiate), in one
    // write: the fast path answers the first two and hands the third, already read, over.
    c.send(
        b"GET /a HTTP/1.1\r\nhost: app\r\n\r\nGET /b HTTP/1.1\r\nhost: app\r\n\r\n\
POST /c HTTP/1.1\r\nhost: app\r\nconnection: keep-alive\r\ncontent-length: 3\r\n\r\nabc",
    )
    .await;
    for want in [&b""[..], b"", b"abc"] {
        let r = c.reply("GET").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body, want, "{r:?}");
        assert_eq!(r.header("connection"), Some("keep-alive"), "{r:?}");
    }
    // pingora-proxy serves the rest of the connection.
    c.send(b"GET /d HTTP/1.1\r\nhost: app\r\n\r\n").await;
    assert_eq!(c.reply("GET").await.status, 200);
    let order: Vec<String> = up
        .heads()
        .iter()
        .map(|h| h.split(' ').nth(1).unwrap_or("").to_string())
        .collect();
    assert_eq!(order, ["/a", "/b", "/c", "/d"]);
    fg.wait_metric(&fast("fast"), 2.0).await;
    assert_eq!(fg.metric(&fast("handed_over")).await, Some(1.0));
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_tried_once_more_on_a_new_one() {
    let (up, _fg, mut c) = scripted("").await;
    // The upstream closes after this answer without saying so: the sidecar pools the
    // connection and finds it closed at the next request.
    c.send(b"GET /then-close HTTP/1.1\r\nhost: app\r\n\r\n")
        .await;
    assert_eq!(c.reply("GET").await.status, 200);
    c.send(b"GET /len HTTP/1.1\r\nhost: app\r\n\r\n").await;
    let r = c.reply("GET").await;
    assert_eq!((r.status, &r.body[..]), (200, &b"hello"[..]), "{r:?}");
    assert_eq!(r.header("connection"), Some("keep-alive"));
    // Each request reached the app once.
    assert_eq!(up.heads().len(), 2, "{:?}", up.heads());
    assert_eq!(*up.conns.lock().unwrap(), 2);
}

#[tokio::test]
async fn a_body_sent_after_its_head_is_streamed_to_the_app() {
    let (up, fg, mut c) = scripted("").await;
    c.send(b"POST /echo HTTP/1.1\r\nhost: app\r\ncontent-length: 11\r\n\r\nhello")
        .await;
    // The app has the head and the body's first part, and waits for the rest.
    let start = std::time::Instant::now();
    while up.heads().is_empty() && *up.conns.lock().unwrap() == 0 {
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        tokio::task::yield_now().await;
    }
    c.send(b" world").await;
    let r = c.reply("POST").await;
    assert_eq!((r.status, &r.body[..]), (200, &b"hello world"[..]), "{r:?}");
    // The next request on the connection is read after the body, not inside it.
    c.send(b"GET /len HTTP/1.1\r\nhost: app\r\n\r\n").await;
    assert_eq!(c.reply("GET").await.body, b"hello");
    fg.wait_metric(&fast("fast"), 2.0).await;
}

#[tokio::test]
async fn an_upstream_that_breaks_its_answer_cuts_the_client_or_gets_a_502() {
    // A malformed head: 502 with the sidecar's problem body, and the connection closed.
    let (_fg, mut c, r) =
        through(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab").await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.header("floodgate-reason"), Some("upstream_error"));
    assert_eq!(r.header("connection"), Some("close"));
    let mut rest = Vec::new();
    let _ = c.s.read_to_end(&mut rest).await;
    assert!(rest.is_empty() && c.buf.is_empty(), "{rest:?}");
}

const ONE_A_MINUTE: &str = "limits:\n  - name: one\n    key: [client_ip]\n    max_requests: 1\n    window_seconds: 60\n    strategy: fixed_window\n";

#[tokio::test]
async fn a_refusal_before_the_body_is_read_closes_and_a_refused_head_has_no_body() {
    let (up, _fg, mut c) = scripted(ONE_A_MINUTE).await;
    c.send(b"GET /len HTTP/1.1\r\nhost: app\r\n\r\n").await;
    assert_eq!(c.reply("GET").await.status, 200);
    // Refused HEAD: the problem's fields, no body; the connection goes on.
    c.send(b"HEAD /len HTTP/1.1\r\nhost: app\r\n\r\n").await;
    let r = c.reply("HEAD").await;
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.header("connection"), Some("keep-alive"));
    // Refused POST whose body is not all here: the rest would be read as the next request
    // (a smuggled one, if it looks like one), so the answer closes the connection.
    c.send(
        b"POST /echo HTTP/1.1\r\nhost: app\r\ncontent-length: 38\r\n\r\nGET /smuggled HTTP/1.1\r\n",
    )
    .await;
    let r = c.reply("POST").await;
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    assert!(
        c.buf.is_empty(),
        "a body after the HEAD answer: {:?}",
        c.buf
    );
    let _ = c.send_body_and_expect_eof(b"host: app\r\n\r\n").await;
    assert!(!up.heads().iter().any(|h| h.contains("smuggled")));
}

#[tokio::test]
async fn a_post_after_the_upstream_closed_its_pooled_connection_is_sent_once_on_a_new_one() {
    let (up, _fg, mut c) = scripted("").await;
    c.send(b"GET /then-close HTTP/1.1\r\nhost: app\r\n\r\n")
        .await;
    assert_eq!(c.reply("GET").await.status, 200);
    c.send(b"POST /echo HTTP/1.1\r\nhost: app\r\ncontent-length: 4\r\n\r\nbody")
        .await;
    let r = c.reply("POST").await;
    assert_eq!((r.status, &r.body[..]), (200, &b"body"[..]), "{r:?}");
    let posts = up.heads().iter().filter(|h| h.starts_with("POST")).count();
    assert_eq!(posts, 1, "{:?}", up.heads());
}

/// A sidecar in front of an upstream that answers `reply`, a client, and its first GET's reply.
async fn through(reply: &'static [u8]) -> (Sidecar, Client, Reply) {
    let fg = Sidecar::start(answering(reply).await, "").await;
    let mut c = Client::connect(fg.port).await;
    c.send(b"GET /x HTTP/1.1\r\nhost: app\r\n\r\n").await;
    let r = c.reply("GET").await;
    (fg, c, r)
}

/// An upstream that answers every request with `reply`.
async fn answering(reply: &'static [u8]) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut b = [0u8; 4096];
                while s.read(&mut b).await.unwrap_or(0) > 0 {
                    if s.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn a_response_with_both_framings_or_bare_lf_lines_reaches_the_client_well_formed() {
    // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3); the client sees only one.
    let (_fg, _c, r) = through(
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]), "{r:?}");
    assert_eq!(r.header("content-length"), None, "{r:?}");
    // A chunked body broken before anything was sent: 502, not a cut.
    let (_fg, _c, r) =
        through(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n").await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.header("floodgate-reason"), Some("upstream_error"));
    // Bare LF line ends come out as CRLF.
    let port = answering(b"HTTP/1.1 200 OK\nx-a: 1\ncontent-length: 2\n\nok").await;
    let fg = Sidecar::start(port, "").await;
    let mut c = Client::connect(fg.port).await;
    for _ in 0..2 {
        c.send(b"GET /x HTTP/1.1\r\nhost: app\r\n\r\n").await;
        let r = c.reply("GET").await;
        assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]), "{r:?}");
        assert_eq!(r.header("x-a"), Some("1"), "{r:?}");
    }
}

#[tokio::test]
async fn a_pipelined_head_that_stops_halfway_is_closed_after_the_head_timeout() {
    let (up, fg, mut c) = scripted("  header_read_timeout_ms: 300\n").await;
    // A whole request, and the first bytes of the next, in one write; then nothing.
    c.send(b"GET /len HTTP/1.1\r\nhost: app\r\n\r\nGET /next HT")
        .await;
    assert_eq!(c.reply("GET").await.status, 200);
    // Answered as a partial head past its deadline is: 408, counted, then closed.
    let r = c.reply("GET").await;
    assert_eq!(r.status, 408, "{r:?}");
    assert_eq!(r.header("floodgate-reason"), Some("header_timeout"));
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        c.s.read_to_end(&mut rest),
    )
    .await;
    assert!(closed.is_ok(), "still open 10 s after a half head");
    assert!(!up.heads().iter().any(|h| h.contains("/next")));
    fg.wait_metric("floodgate_header_timeouts_total{head=\"partial\"}", 1.0)
        .await;
}

#[tokio::test]
async fn bytes_an_upstream_sends_after_its_response_never_reach_the_next_client() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (go, mut go_rx) = tokio::sync::mpsc::channel::<()>(1);
    let (sent, mut sent_rx) = tokio::sync::mpsc::channel::<()>(1);
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut s, _)) = l.accept().await {
            let stray = std::mem::take(&mut first);
            let (mut go_rx, sent) = (
                if stray {
                    Some(std::mem::replace(
                        &mut go_rx,
                        tokio::sync::mpsc::channel(1).1,
                    ))
                } else {
                    None
                },
                sent.clone(),
            );
            tokio::spawn(async move {
                let mut b = [0u8; 4096];
                let mut answered = 0;
                while s.read(&mut b).await.unwrap_or(0) > 0 {
                    let reply: &[u8] = match (stray, answered) {
                        (true, 0) => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                        (true, _) => b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nreused",
                        _ => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfresh",
                    };
                    s.write_all(reply).await.unwrap();
                    answered += 1;
                    if let Some(rx) = go_rx.as_mut().filter(|_| answered == 1) {
                        // After the response, once told: bytes of no response's.
                        rx.recv().await;
                        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nPOISON")
                            .await
                            .unwrap();
                        sent.send(()).await.unwrap();
                    }
                }
            });
        }
    });
    let fg = Sidecar::start(port, "").await;
    let mut a = Client::connect(fg.port).await;
    a.send(b"GET /a HTTP/1.1\r\nhost: app\r\n\r\n").await;
    assert_eq!(a.reply("GET").await.body, b"ok");
    go.send(()).await.unwrap();
    sent_rx.recv().await.unwrap();
    // Another client, on a connection of its own: the pooled upstream connection has bytes
    // waiting that are no answer to it.
    let mut b = Client::connect(fg.port).await;
    b.send(b"GET /b HTTP/1.1\r\nhost: app\r\n\r\n").await;
    let r = b.reply("GET").await;
    assert_eq!((r.status, &r.body[..]), (200, &b"fresh"[..]), "{r:?}");
}

#[tokio::test]
async fn a_switched_off_feature_is_answered_by_its_static_fallback_on_the_fast_path() {
    let up = Scripted::start().await;
    let extra = "routes:\n  - name: reco\n    match: { path_prefix: /reco }\n    feature: recommendations\ndegradation:\n  level: degraded\n  levels: { degraded: [recommendations] }\n  fallbacks:\n    recommendations: { status: 200, body: \"[]\", content_type: application/json }\n";
    let fg = Sidecar::start(up.port, extra).await;
    let mut c = Client::connect(fg.port).await;
    for method in ["GET", "HEAD", "GET"] {
        c.send(format!("{method} /reco/items HTTP/1.1\r\nhost: app\r\n\r\n").as_bytes())
            .await;
        let r = c.reply(method).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("floodgate-reason"), Some("degraded"), "{r:?}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("content-length"), Some("2"));
        assert_eq!(r.header("connection"), Some("keep-alive"));
        assert_eq!(r.body, if method == "HEAD" { &b""[..] } else { b"[]" });
    }
    assert!(up.heads().is_empty(), "{:?}", up.heads());
    fg.wait_metric(&fast("fast"), 3.0).await;
    assert_eq!(fg.metric(&fast("handed_over")).await, Some(0.0));
    fg.wait_metric(
        "floodgate_degraded_responses_total{feature=\"recommendations\"}",
        3.0,
    )
    .await;
}
