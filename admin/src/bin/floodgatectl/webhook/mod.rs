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

/// The largest AdmissionReview read (the API server's own limit on a request is 3 MiB).
const MAX_BODY: usize = 8 << 20;

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
    loop {
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
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(route(&state, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
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
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
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
