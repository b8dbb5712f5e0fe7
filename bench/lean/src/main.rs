//! Floor experiment: what a plain HTTP/1.1 forward costs on pingora, step by step.
//! usage: lean MODE LISTEN UPSTREAM
//!
//! Modes, each adding one step to the one before (see README.md):
//!   proxy  the smallest pingora_proxy::ProxyHttp (only upstream_peer)
//!   s0     HttpServerApp on pingora-core: pingora's v1 server and client sessions, the
//!          connector's pool; request and response heads cloned (the original floor)
//!   s1     s0, the request head moved to the upstream session instead of cloned (the response
//!          head cannot be: pingora-core 0.9.1's client session only hands out a clone)
//!   s2     s1, an own upstream pool (a Vec of idle streams) instead of the connector's: no task
//!          spawned per request to watch the idle connection, no hash lookups, no test reads
//!   s3     s2, no timer armed per request (keep-alive wait without pingora's 60 s timeout)
//!   r0     pingora-core's server, listener, runtime and Stream, but its own HTTP/1.1 loop:
//!          httparse on a buffer kept per connection, heads forwarded as read (no header maps,
//!          no case map, no serializing), head and body in one write each way, the own pool;
//!          one pingora fast timer on the keep-alive wait, as pingora's session arms
//!   r1     r0 without that timer
//! The r modes frame by Content-Length only (no chunked, no upgrades, no hop-by-hop handling):
//! a floor, not a proxy.
use async_trait::async_trait;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream, ServerApp};
use pingora_core::connectors::http::v1::Connector;
use pingora_core::connectors::TransportConnector;
use pingora_core::protocols::http::v1::client::HttpSession as ClientSession;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::{Server, ShutdownWatch};
use pingora_core::services::listening::Service;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::{RequestHeader, ResponseHeader};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Idle upstream streams, last in first out. Used by s2, s3 and the r modes. A stream the
/// upstream closed while idle is found on its next use (the floor does not retry).
struct Pool(Mutex<Vec<Stream>>);

impl Pool {
    fn take(&self) -> Option<Stream> {
        self.0.lock().unwrap().pop()
    }
    fn put(&self, s: Stream) {
        self.0.lock().unwrap().push(s)
    }
}

struct Lean {
    step: u8,
    conn: Connector,
    tc: TransportConnector,
    pool: Pool,
    peer: HttpPeer,
}

impl Lean {
    async fn upstream(&self) -> Option<ClientSession> {
        if self.step < 2 {
            return Some(self.conn.get_http_session(&self.peer).await.ok()?.0);
        }
        let s = match self.pool.take() {
            Some(s) => s,
            None => self.tc.new_stream(&self.peer).await.ok()?,
        };
        Some(ClientSession::new(s))
    }

    async fn release(&self, mut us: ClientSession) {
        if self.step < 2 {
            self.conn.release_http_session(us, &self.peer, Some(Duration::from_secs(60))).await;
        } else {
            us.respect_keepalive();
            if let Some(s) = us.reuse().await {
                self.pool.put(s);
            }
        }
    }
}

#[async_trait]
impl HttpServerApp for Lean {
    async fn process_new_http(self: &Arc<Self>, mut ds: ServerSession, _s: &ShutdownWatch) -> Option<ReusedHttpStream> {
        if self.step >= 3 {
            // Some(0) = keep-alive without a timeout: pingora's session then awaits the next
            // request's read without wrapping it in a timer.
            ds.set_keepalive(Some(0));
        }
        if !ds.read_request().await.ok()? {
            return None;
        }
        let mut us = self.upstream().await?;
        let req = if self.step >= 1 {
            // The body reader is set up from the request's framing headers: do it before they
            // leave. Then the head moves out, leaving a header-less head of the same method.
            ds.is_body_empty();
            let placeholder = RequestHeader::build_no_case(ds.req_header().method.clone(), b"/", Some(0)).ok()?;
            Box::new(std::mem::replace(ds.req_header_mut(), placeholder))
        } else {
            Box::new(ds.req_header().clone())
        };
        us.write_request_header(req).await.ok()?;
        while let Some(b) = ds.read_request_body().await.ok()? {
            us.write_body(&b).await.ok()?;
        }
        us.finish_body().await.ok()?;
        us.read_response().await.ok()?;
        let resp: Box<ResponseHeader> = Box::new(us.resp_header()?.clone());
        ds.write_response_header(resp).await.ok()?;
        loop {
            match us.read_body_bytes().await.ok()? {
                Some(b) => ds.write_response_body(b, false).await.ok()?,
                None => break,
            }
        }
        self.release(us).await;
        ds.set_keepalive(Some(if self.step >= 3 { 0 } else { 60 }));
        let ps = HttpPersistentSettings::for_session(&ds);
        ds.finish().await.ok()?.map(|s| ReusedHttpStream::from_reusable_stream(s, ps))
    }
}

/// A byte buffer kept for a connection's life: data lives in buf[start..end].
struct Buf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Buf {
    fn new() -> Self {
        Buf { buf: vec![0; 16 * 1024], start: 0, end: 0 }
    }
    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }
    /// One read into the free tail; Some(0) at end of stream, None on error or a full buffer.
    async fn read(&mut self, s: &mut Stream, timer: bool) -> Option<usize> {
        if self.end == self.buf.len() {
            if self.start == 0 {
                return None; // a head or body larger than the buffer: beyond this floor
            }
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let end = self.end;
        let n = if timer {
            pingora_timeout::timeout(Duration::from_secs(60), s.read(&mut self.buf[end..])).await.ok()?.ok()?
        } else {
            s.read(&mut self.buf[end..]).await.ok()?
        };
        self.end += n;
        Some(n)
    }
}

fn content_length(headers: &[httparse::Header]) -> Option<Option<usize>> {
    let mut len = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            len = Some(std::str::from_utf8(h.value).ok()?.trim().parse().ok()?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return None; // chunked framing: not in this floor
        }
    }
    Some(len)
}

fn wants_close(headers: &[httparse::Header]) -> bool {
    headers.iter().any(|h| h.name.eq_ignore_ascii_case("connection") && h.value.eq_ignore_ascii_case(b"close"))
}

/// Request head: (head length, body length, HEAD method, close after).
fn parse_request(b: &[u8]) -> Option<Option<(usize, usize, bool, bool)>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(b).ok()? {
        httparse::Status::Partial => Some(None),
        httparse::Status::Complete(n) => {
            let body = content_length(req.headers)?.unwrap_or(0);
            let close = req.version == Some(0) || wants_close(req.headers);
            Some(Some((n, body, req.method == Some("HEAD"), close)))
        }
    }
}

/// Response head: (head length, body length, close after).
fn parse_response(b: &[u8], head_req: bool) -> Option<Option<(usize, usize, bool)>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(b).ok()? {
        httparse::Status::Partial => Some(None),
        httparse::Status::Complete(n) => {
            let code = resp.code?;
            if (100..200).contains(&code) {
                return None; // informational answers: not in this floor
            }
            let len = content_length(resp.headers)?;
            let body = if head_req || code == 204 || code == 304 { 0 } else { len? };
            Some(Some((n, body, wants_close(resp.headers))))
        }
    }
}

struct Raw {
    timer: bool,
    tc: TransportConnector,
    pool: Pool,
    peer: HttpPeer,
}

#[async_trait]
impl ServerApp for Raw {
    async fn process_new(self: &Arc<Self>, mut ds: Stream, _s: &ShutdownWatch) -> Option<Stream> {
        let (mut rb, mut ub) = (Buf::new(), Buf::new());
        loop {
            // The request head, then its whole body (Content-Length), from the downstream.
            let (head, body, head_req, close) = loop {
                if let Some(r) = parse_request(rb.data())? {
                    break r;
                }
                if rb.read(&mut ds, self.timer).await? == 0 {
                    return None;
                }
            };
            while rb.data().len() < head + body {
                if rb.read(&mut ds, false).await? == 0 {
                    return None;
                }
            }
            let mut us = match self.pool.take() {
                Some(s) => s,
                None => self.tc.new_stream(&self.peer).await.ok()?,
            };
            // Forwarded as read: head and body in one write.
            us.write_all(&rb.data()[..head + body]).await.ok()?;
            us.flush().await.ok()?;
            rb.consume(head + body);
            let (rhead, rbody, rclose) = loop {
                if let Some(r) = parse_response(ub.data(), head_req)? {
                    break r;
                }
                if ub.read(&mut us, false).await? == 0 {
                    return None;
                }
            };
            while ub.data().len() < rhead + rbody {
                if ub.read(&mut us, false).await? == 0 {
                    return None;
                }
            }
            let reusable = !rclose && ub.data().len() == rhead + rbody;
            ds.write_all(&ub.data()[..rhead + rbody]).await.ok()?;
            ds.flush().await.ok()?;
            ub.consume(rhead + rbody);
            if reusable {
                self.pool.put(us);
            }
            if close || rclose {
                return None;
            }
        }
    }
}

struct P {
    peer: String,
}

#[async_trait]
impl pingora_proxy::ProxyHttp for P {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(&self, _s: &mut pingora_proxy::Session, _c: &mut ()) -> pingora_core::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.peer.as_str(), false, String::new())))
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 4 {
        eprintln!("usage: lean proxy|s0|s1|s2|s3|r0|r1 LISTEN UPSTREAM");
        std::process::exit(2);
    }
    let mut server = Server::new(None).unwrap();
    server.bootstrap();
    let peer = HttpPeer::new(a[3].as_str(), false, String::new());
    let pool = || Pool(Mutex::new(Vec::new()));
    match a[1].as_str() {
        "proxy" => {
            let mut svc = pingora_proxy::http_proxy_service(&server.configuration, P { peer: a[3].clone() });
            svc.add_tcp(&a[2]);
            server.add_service(svc);
        }
        m @ ("s0" | "s1" | "s2" | "s3") => {
            let app = Lean {
                step: m[1..].parse().unwrap(),
                conn: Connector::new(None),
                tc: TransportConnector::new(None),
                pool: pool(),
                peer,
            };
            let mut svc = Service::new("lean".to_string(), app);
            svc.add_tcp(&a[2]);
            server.add_service(svc);
        }
        m @ ("r0" | "r1") => {
            let app = Raw { timer: m == "r0", tc: TransportConnector::new(None), pool: pool(), peer };
            let mut svc = Service::new("raw".to_string(), app);
            svc.add_tcp(&a[2]);
            server.add_service(svc);
        }
        m => {
            eprintln!("unknown mode {m}");
            std::process::exit(2);
        }
    }
    server.run_forever();
}
