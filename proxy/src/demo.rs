//! A small real HTTP server (HTTP/1.1 and h2c) to put behind the sidecar: the README's demo
//! app and the end-to-end tests' upstream. `/` answers with the server's name, `/echo`
//! streams the request body back and reports what arrived in `echo-*` headers, `/count…`
//! answers with the number of requests so far (every answer differs),
//! `/sleep/<ms>` and `/slow?ms=<ms>` answer after a delay (at most [`MAX_SLOW_MS`]), `/fail`
//! answers 500 (to open the sidecar's circuit breaker by hand), `/ws` accepts an upgrade and
//! echoes raw bytes, and any path containing `/hold` waits until [`DemoStats::release`] lets it
//! go. It counts
//! requests in progress (and the most at once), logs the paths it saw in arrival order, and
//! answers every request with [`DemoStats::fail_with`]'s status while that is set.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

/// Counts what the demo upstream has received, and steers it.
pub struct DemoStats {
    /// Requests received.
    pub requests: AtomicU64,
    /// Requests being handled now.
    pub inflight: AtomicU64,
    /// The most requests handled at once.
    pub max_inflight: AtomicU64,
    /// Paths (with query) of every request, in arrival order.
    pub log: Mutex<Vec<String>>,
    /// When non-zero, every request is answered with this status.
    pub fail_with: AtomicU16,
    /// Permits for `/hold` requests: each takes one before answering.
    pub hold: tokio::sync::Semaphore,
    /// Headers of the latest request.
    pub last_headers: Mutex<http::HeaderMap>,
}

impl Default for DemoStats {
    fn default() -> Self {
        Self {
            requests: AtomicU64::new(0),
            inflight: AtomicU64::new(0),
            max_inflight: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            fail_with: AtomicU16::new(0),
            hold: tokio::sync::Semaphore::new(0),
            last_headers: Mutex::new(http::HeaderMap::new()),
        }
    }
}

impl DemoStats {
    /// Lets `n` held requests answer.
    pub fn release(&self, n: usize) {
        self.hold.add_permits(n);
    }

    /// The latest request's value of header `name`, if it had one.
    pub fn last_header(&self, name: &str) -> Option<String> {
        let h = self.last_headers.lock().ok()?;
        h.get(name)?.to_str().ok().map(str::to_string)
    }

    /// Paths seen so far.
    pub fn paths(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// Counts a request in progress until the handler returns (before its response is written,
/// so a proxy that saw the response end never sees the count include that request).
struct InProgress<'a>(&'a DemoStats);

impl<'a> InProgress<'a> {
    fn new(s: &'a DemoStats) -> Self {
        let now = s.inflight.fetch_add(1, Ordering::SeqCst) + 1;
        s.max_inflight.fetch_max(now, Ordering::SeqCst);
        Self(s)
    }
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

type Body = BoxBody<Bytes, hyper::Error>;

/// The longest delay `/slow?ms=` and `/sleep/` wait (60 s); larger values are cut to it.
pub const MAX_SLOW_MS: u64 = 60_000;

/// The `ms` parameter of a query string (`ms=250&x=1`), 0 when absent or not a number.
fn query_ms(query: Option<&str>) -> u64 {
    query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("ms="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn header_str(req: &Request<Incoming>, name: &str) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

async fn handle(
    name: Arc<str>,
    stats: Arc<DemoStats>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let n = stats.requests.fetch_add(1, Ordering::Relaxed) + 1;
    if let Ok(mut h) = stats.last_headers.lock() {
        h.clone_from(req.headers());
    }
    let _in_progress = InProgress::new(&stats);
    let path = req.uri().path().to_string();
    if let Ok(mut log) = stats.log.lock() {
        log.push(
            req.uri()
                .path_and_query()
                .map_or(path.clone(), |p| p.to_string()),
        );
    }
    if path.contains("/hold") {
        if let Ok(p) = stats.hold.acquire().await {
            p.forget();
        }
    }
    let fail = stats.fail_with.load(Ordering::SeqCst);
    let mut resp = if fail != 0 {
        let mut r = Response::new(full(format!("{name} failing with {fail}\n")));
        *r.status_mut() =
            http::StatusCode::from_u16(fail).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        r
    } else if path == "/echo" {
        let mut b = Response::builder()
            .header("echo-method", req.method().as_str())
            .header(
                "echo-uri",
                req.uri().path_and_query().map_or("/", |p| p.as_str()),
            )
            .header("echo-version", format!("{:?}", req.version()))
            .header("echo-x-forwarded-for", header_str(&req, "x-forwarded-for"))
            .header(
                "echo-x-forwarded-proto",
                header_str(&req, "x-forwarded-proto"),
            )
            .header("echo-x-custom", header_str(&req, "x-custom"));
        if let Some(ct) = req.headers().get("content-type") {
            b = b.header("content-type", ct.clone());
        }
        // Stream the body back as it arrives: nothing is buffered whole.
        b.body(req.into_body().boxed())
            .unwrap_or_else(|_| Response::new(full("bad echo")))
    } else if path.starts_with("/count") {
        Response::new(full(format!("{name} request {n}\n")))
    } else if path == "/ws" {
        return Ok(upgrade_echo(req));
    } else if let Some(ms) = path.strip_prefix("/sleep/") {
        let ms = ms.parse().unwrap_or(0_u64).min(MAX_SLOW_MS);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Response::new(full(format!("{name} slept {ms} ms\n")))
    } else if path == "/slow" {
        let ms = query_ms(req.uri().query()).min(MAX_SLOW_MS);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Response::new(full(format!("{name} slept {ms} ms\n")))
    } else if path == "/fail" {
        let mut r = Response::new(full(format!("{name}: /fail always fails\n")));
        *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        r
    } else {
        Response::new(full(format!("hello from {name}\n")))
    };
    resp.headers_mut().insert(
        "server",
        http::HeaderValue::from_static("floodgate-demo-upstream"),
    );
    Ok(resp)
}

/// Accepts an `Upgrade` (e.g. WebSocket) and echoes raw bytes on the upgraded connection;
/// enough to prove the sidecar passes upgrades through.
fn upgrade_echo(mut req: Request<Incoming>) -> Response<Body> {
    let proto = req.headers().get("upgrade").cloned();
    let Some(proto) = proto else {
        let mut r = Response::new(full("expected an Upgrade header\n"));
        *r.status_mut() = http::StatusCode::BAD_REQUEST;
        return r;
    };
    tokio::spawn(async move {
        if let Ok(upgraded) = hyper::upgrade::on(&mut req).await {
            let mut io = TokioIo::new(upgraded);
            let (mut r, mut w) = tokio::io::split(&mut io);
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    });
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut().insert("upgrade", proto);
    r.headers_mut()
        .insert("connection", http::HeaderValue::from_static("upgrade"));
    r
}

/// Serves on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, name: &str, stats: Arc<DemoStats>) {
    let name: Arc<str> = Arc::from(name);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (name, stats) = (name.clone(), stats.clone());
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req| handle(name.clone(), stats.clone(), req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
    }
}
