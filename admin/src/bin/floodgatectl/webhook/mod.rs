//! `floodgatectl inject serve`: the admission webhook over HTTPS. `POST /mutate` answers an
//! AdmissionReview with `floodgate_admin::inject::admission` (the injector's own code);
//! `/healthz`, `/readyz` and `/metrics` are for the kubelet and Prometheus. `tls` keeps the
//! certificate current, `metrics` counts, `cert` is `serve-cert`.

pub(crate) mod cert;
mod metrics;
mod tls;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use floodgate_admin::inject::{admission, Options};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::args::ServeArgs;
use crate::client::Failure;
use metrics::Metrics;

/// The largest AdmissionReview read: just above the API server's own limit on an object
/// (3 MiB), so every real review fits and a stray client cannot make it hold more.
const MAX_BODY: usize = (3 << 20) + (512 << 10);
/// Connections served at once; more wait in the kernel's backlog. The API server keeps a few
/// open; this only bounds what anyone else who reaches the port can make it hold.
const MAX_CONNECTIONS: usize = 256;
/// A TLS handshake, a request head or a body that takes longer is dropped: the API server
/// sends a review at once, and gives up on the webhook after its own timeout (10 s at most).
const DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);
/// HTTP/2 streams one connection may have open at once (each may hold a body of MAX_BODY).
const MAX_STREAMS: u32 = 16;

struct State {
    opts: Options,
    metrics: Metrics,
}

/// Runs the webhook until the process is stopped; returns only on a start-up failure.
pub(crate) async fn serve(a: &ServeArgs) -> Result<(), Failure> {
    let fail =
        |what: &str, e: &dyn std::fmt::Display| Failure(2, format!("inject serve: {what}: {e}"));
    let metrics = Metrics::new().map_err(|e| fail("metrics", &e))?;
    let state = Arc::new(State {
        opts: a.how.options(),
        metrics,
    });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let on_reload = {
        let state = Arc::clone(&state);
        move |r: Result<(), String>| {
            state.metrics.reloaded(r.is_ok());
            match r {
                Ok(()) => eprintln!("floodgatectl inject serve: certificate reloaded"),
                Err(e) => eprintln!(
                    "floodgatectl inject serve: certificate files changed but cannot be used \
                     (keeping the previous pair): {e}"
                ),
            }
        }
    };
    let (resolver, _watcher) = tls::watch(&a.cert, &a.key, Arc::clone(&provider), on_reload)
        .map_err(|e| fail("certificate", &e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail("TLS", &e))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(a.listen)
        .await
        .map_err(|e| fail(&format!("cannot listen on {}", a.listen), &e))?;
    let local = listener.local_addr().map_err(|e| fail("listen", &e))?;
    eprintln!("floodgatectl inject serve: listening on https://{local} (POST /mutate)");
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        // Wait for a free slot before accepting: a flood queues in the backlog, not here.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return Ok(());
        };
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            // Out of file descriptors and the like: the next accept may work.
            Err(e) => {
                eprintln!("floodgatectl inject serve: accept: {e}");
                continue;
            }
        };
        let (acceptor, state) = (acceptor.clone(), Arc::clone(&state));
        tokio::spawn(async move {
            let _slot = slot;
            let Ok(Ok(stream)) = tokio::time::timeout(DEADLINE, acceptor.accept(tcp)).await else {
                return;
            };
            let service = hyper::service::service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(route(&state, req).await) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(DEADLINE);
            builder
                .http2()
                .timer(hyper_util::rt::TokioTimer::new())
                .max_concurrent_streams(MAX_STREAMS);
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn text(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

async fn route(state: &State, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/mutate") => {
            let started = Instant::now();
            let read =
                tokio::time::timeout(DEADLINE, Limited::new(req.into_body(), MAX_BODY).collect());
            let body = match read.await {
                Ok(Ok(b)) => b.to_bytes(),
                Err(_) => {
                    state.metrics.malformed();
                    return text(
                        StatusCode::REQUEST_TIMEOUT,
                        PLAIN,
                        format!("the body did not arrive within {} s\n", DEADLINE.as_secs()),
                    );
                }
                Ok(Err(e)) => {
                    state.metrics.malformed();
                    return text(
                        StatusCode::BAD_REQUEST,
                        PLAIN,
                        format!("cannot read the body: {e}\n"),
                    );
                }
            };
            match admission::review(&body, &state.opts) {
                Ok(answer) => {
                    state
                        .metrics
                        .answered(answer.skipped, started.elapsed().as_secs_f64());
                    text(
                        StatusCode::OK,
                        "application/json",
                        answer.review.to_string(),
                    )
                }
                Err(e) => {
                    state.metrics.malformed();
                    text(StatusCode::BAD_REQUEST, PLAIN, format!("{e}\n"))
                }
            }
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, PLAIN, "ok\n"),
        // Ready once listening: the certificate was loaded before the socket was opened.
        (&Method::GET, "/readyz") => text(StatusCode::OK, PLAIN, "ready\n"),
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            state.metrics.render(),
        ),
        (_, "/mutate") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "POST an AdmissionReview\n",
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: POST /mutate, GET /healthz, /readyz, /metrics\n",
        ),
    }
}
