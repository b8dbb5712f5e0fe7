//! A small real HTTP server (HTTP/1.1 and h2c) to put behind the sidecar: the README's demo
//! app and the end-to-end tests' upstream. `/` answers with the server's name, `/echo`
//! streams the request body back and reports what arrived in `echo-*` headers, and
//! `/sleep/<ms>` answers after a delay, `/ws` accepts an upgrade and echoes raw bytes.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

/// Counts what the demo upstream has received.
#[derive(Default)]
pub struct DemoStats {
    /// Requests received.
    pub requests: AtomicU64,
}

type Body = BoxBody<Bytes, hyper::Error>;

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
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path().to_string();
    let mut resp = if path == "/echo" {
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
    } else if path == "/ws" {
        return Ok(upgrade_echo(req));
    } else if let Some(ms) = path.strip_prefix("/sleep/") {
        let ms: u64 = ms.parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Response::new(full(format!("{name} slept {ms} ms\n")))
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
