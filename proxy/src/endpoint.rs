//! The metrics port: `GET /metrics` (Prometheus text), `/status` (queue, breaker and load
//! indicators as JSON), `/healthz` (the process is alive) and `/readyz` (config loaded,
//! listening, not draining). Served by hyper, off the data path.

use std::convert::Infallible;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tracing::{debug, error};

use crate::state::Runtime;
use crate::status::Status;

/// Serves the metrics port on a listener bound at start-up (so a busy port fails the start).
pub struct EndpointService {
    rt: Arc<Runtime>,
    listener: std::sync::Mutex<Option<std::net::TcpListener>>,
}

impl EndpointService {
    /// A service answering on `listener`.
    pub fn new(rt: Arc<Runtime>, listener: std::net::TcpListener) -> Self {
        Self {
            rt,
            listener: std::sync::Mutex::new(Some(listener)),
        }
    }
}

fn answer(rt: &Runtime, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let (status, ctype, body): (StatusCode, &str, Bytes) = match req.uri().path() {
        "/metrics" => {
            Status::read(rt).publish(rt);
            crate::lifecycle::publish_expiries(rt);
            (
                StatusCode::OK,
                "text/plain; version=0.0.4",
                rt.metrics.render().into(),
            )
        }
        "/status" => {
            let mut body =
                serde_json::to_vec_pretty(&Status::read(rt).report()).unwrap_or_default();
            body.push(b'\n');
            (StatusCode::OK, "application/json", body.into())
        }
        "/healthz" => (StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n")),
        "/readyz" if rt.is_ready() => {
            (StatusCode::OK, "text/plain", Bytes::from_static(b"ready\n"))
        }
        "/readyz" if rt.is_draining() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            Bytes::from_static(b"draining\n"),
        ),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            Bytes::from_static(b"starting\n"),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"not found: try /metrics, /status, /healthz or /readyz\n"),
        ),
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_str(ctype).unwrap_or(http::HeaderValue::from_static("text/plain")),
    );
    resp
}

#[async_trait]
impl BackgroundService for EndpointService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(std_listener) = self.listener.lock().ok().and_then(|mut l| l.take()) else {
            return;
        };
        let Some(listener) = into_tokio(std_listener, "metrics") else {
            return;
        };
        // Keeps answering through a drain, so /readyz can say "draining" until the exit.
        let _ = &mut shutdown;
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    debug!("metrics accept failed: {e}");
                    continue;
                }
            };
            let rt = self.rt.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let resp = answer(&rt, &req);
                    async move { Ok::<_, Infallible>(resp) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                {
                    debug!("metrics connection: {e}");
                }
            });
        }
    }
}

/// A listener bound at start-up, handed to tokio; `None` (logged) if it cannot be.
pub fn into_tokio(l: std::net::TcpListener, what: &str) -> Option<tokio::net::TcpListener> {
    match l
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(l))
    {
        Ok(l) => Some(l),
        Err(e) => {
            error!("{what} listener unusable: {e}");
            None
        }
    }
}

/// Why [`probe`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No connection, or it broke.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Answered, but not 200.
    #[error("answered `{0}`")]
    Status(String),
}

/// `GET path` on `addr` with a plain blocking socket: `Ok` on a 200. Used by `floodgate health`,
/// a container health check for images without curl.
pub fn probe(
    addr: std::net::SocketAddr,
    path: &str,
    timeout: std::time::Duration,
) -> Result<(), ProbeError> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head)?;
    let line = String::from_utf8_lossy(&head[..n]);
    let status = line.lines().next().unwrap_or("").trim().to_string();
    if status.starts_with("HTTP/1.1 200") || status.starts_with("HTTP/1.0 200") {
        Ok(())
    } else {
        Err(ProbeError::Status(status))
    }
}
