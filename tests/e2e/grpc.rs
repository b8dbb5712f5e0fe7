//! gRPC through the sidecar as stock clients see it: Python `grpcio` (gRPC C-core, the client
//! of Python, C++, Ruby and PHP services) and `tonic`, against a real grpcio server. Every
//! answer the sidecar writes itself must arrive as a gRPC status (never UNKNOWN, CANCELLED
//! or INTERNAL), with `floodgate-reason` readable, and the channel must go on working.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::{eventually, Sidecar};

fn peer_script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/grpc_peer.py")
}

/// A real gRPC server (grpcio), killed when dropped.
pub struct GrpcServer {
    child: Child,
    pub port: u16,
}

impl GrpcServer {
    /// Starts one on a free port, or on `port` (grpcio binds with SO_REUSEPORT, so a server
    /// restarted on its old port binds again at once).
    pub fn start(port: Option<u16>) -> Self {
        let mut child = Command::new("python3")
            .arg(peer_script())
            .arg("server")
            .arg(port.unwrap_or(0).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 (scripts/test.sh installs grpcio)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| {
            panic!("the grpcio server did not start (printed {line:?}); scripts/test.sh installs grpcio")
        });
        Self { child, port }
    }

    /// Waits until the process has exited (after a `Die` call).
    pub fn wait_exit(&mut self) {
        let _ = self.child.wait();
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A grpcio client with one channel for its whole life.
pub struct GrpcClient {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// What one call ended with.
#[derive(Debug)]
pub struct Reply {
    pub code: String,
    pub details: String,
    pub reason: Option<String>,
    pub retry_after: Option<String>,
}

impl GrpcClient {
    pub fn connect(port: u16) -> Self {
        let mut child = Command::new("python3")
            .arg(peer_script())
            .arg("client")
            .arg(format!("127.0.0.1:{port}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            stdin,
            stdout,
        }
    }

    /// One unary call; blocks (tests call it from `spawn_blocking` when calls overlap).
    pub fn call(&mut self, method: &str, body: &str, timeout_s: f64) -> Reply {
        let req = serde_json::json!({"method": method, "body": body, "timeout": timeout_s});
        writeln!(self.stdin, "{req}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("grpcio client printed {line:?}: {e}"));
        let md = |k: &str| v["metadata"][k].as_str().map(str::to_string);
        Reply {
            code: v["code"].as_str().unwrap().to_string(),
            details: v["details"].as_str().unwrap_or("").to_string(),
            reason: md("floodgate-reason"),
            retry_after: md("retry-after"),
        }
    }

    pub fn health(&mut self) -> Reply {
        self.call("/grpc.health.v1.Health/Check", "", 5.0)
    }
}

impl Drop for GrpcClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SLEEP: &str = "/floodgate.test.Test/Sleep";

/// Routes: the health check limited to 3 a minute, `Sleep` through the queue, `Reco` off.
fn config(extra: &str) -> String {
    format!(
        "routes:
  - name: health
    match: {{ path_prefix: /grpc.health.v1.Health/ }}
  - name: reco
    match: {{ path_prefix: /floodgate.test.Reco/ }}
    feature: recommendations
  - name: search
    match: {{ path_prefix: /floodgate.test.Search/ }}
    feature: search
limits:
  - name: health_calls
    routes: [health]
    key: []
    max_requests: 3
    window_seconds: 60
    strategy: fixed_window
degradation:
  level: degraded
  levels:
    degraded: [recommendations, search]
  fallbacks:
    search: {{ status: 200, body: \"[]\", grpc_status: 5, grpc_message: \"search is off; try later\" }}
{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_reads_every_sidecar_answer_as_a_grpc_status_and_the_channel_goes_on() {
    let server = GrpcServer::start(None);
    let fg = Sidecar::start(
        server.port,
        &config("queue:\n  max_concurrency: 1\n  max_size: 1\n  timeout_ms: 1000\n"),
    )
    .await;
    let port = fg.port;
    tokio::task::spawn_blocking(move || {
        let mut c = GrpcClient::connect(port);
        // Rate limit: 3 pass, then RESOURCE_EXHAUSTED with the reason and Retry-After.
        for _ in 0..3 {
            let r = c.health();
            assert_eq!(r.code, "OK", "{r:?}");
        }
        for _ in 0..2 {
            let r = c.health();
            assert_eq!(r.code, "RESOURCE_EXHAUSTED", "{r:?}");
            assert_eq!(r.reason.as_deref(), Some("rate_limited"));
            assert!(r.details.contains("health_calls"), "{r:?}");
            assert!(r.retry_after.is_some(), "{r:?}");
        }
        // The same channel still works for an unlimited method.
        assert_eq!(c.call(SLEEP, "0", 5.0).code, "OK");
        // A disabled feature without a gRPC answer configured: UNAVAILABLE.
        let r = c.call("/floodgate.test.Reco/Get", "", 5.0);
        assert_eq!(r.code, "UNAVAILABLE", "{r:?}");
        assert_eq!(r.reason.as_deref(), Some("degraded"));
        // With one configured: its status and message.
        let r = c.call("/floodgate.test.Search/Find", "", 5.0);
        assert_eq!(r.code, "NOT_FOUND", "{r:?}");
        assert_eq!(r.details, "search is off; try later");
        assert_eq!(r.reason.as_deref(), Some("degraded"));
        assert_eq!(c.call(SLEEP, "0", 5.0).code, "OK");
    })
    .await
    .unwrap();

    // The queue: one worker busy for 1.8 s (inside read_timeout_ms), one call waiting, the
    // next refused (queue_full);
    // the waiting one times out after 1 s (queue_timeout). Both UNAVAILABLE. The clients
    // start (and make a first call) before any of it, so none is late to its part.
    let (mut busy, mut waiter, mut refused) = tokio::task::spawn_blocking(move || {
        let warm = || {
            let mut c = GrpcClient::connect(port);
            assert_eq!(c.call(SLEEP, "0", 10.0).code, "OK");
            c
        };
        (warm(), warm(), warm())
    })
    .await
    .unwrap();
    let busy = tokio::task::spawn_blocking(move || busy.call(SLEEP, "1800", 10.0));
    eventually(
        Duration::from_secs(5),
        "the slow call holds the worker",
        || async { fg.metric("floodgate_inflight_requests").await == Some(1.0) },
    )
    .await;
    let waiting = tokio::task::spawn_blocking(move || waiter.call(SLEEP, "0", 10.0));
    eventually(Duration::from_secs(5), "one call waits", || async {
        fg.metric("floodgate_queue_depth").await == Some(1.0)
    })
    .await;
    let (r, mut c) = tokio::task::spawn_blocking(move || (refused.call(SLEEP, "0", 10.0), refused))
        .await
        .unwrap();
    assert_eq!(r.code, "UNAVAILABLE", "{r:?}");
    assert_eq!(r.reason.as_deref(), Some("queue_full"));
    let r = waiting.await.unwrap();
    assert_eq!(r.code, "UNAVAILABLE", "{r:?}");
    assert_eq!(r.reason.as_deref(), Some("queue_timeout"));
    assert_eq!(busy.await.unwrap().code, "OK");
    let r = tokio::task::spawn_blocking(move || c.call(SLEEP, "0", 5.0))
        .await
        .unwrap();
    assert_eq!(
        r.code, "OK",
        "the channel that got queue_full goes on: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_dies_mid_call_or_is_gone_is_unavailable_then_the_breaker_opens() {
    let mut server = GrpcServer::start(None);
    let upstream_port = server.port;
    let fg = Sidecar::start(
        upstream_port,
        &config("circuit_breaker:\n  consecutive_failures: 3\n  open_ms: 60000\n"),
    )
    .await;
    let port = fg.port;
    let (mut c, server) = tokio::task::spawn_blocking(move || {
        let mut c = GrpcClient::connect(port);
        assert_eq!(c.call(SLEEP, "0", 5.0).code, "OK");
        // The app exits while serving the call.
        let r = c.call("/floodgate.test.Test/Die", "", 5.0);
        assert_eq!(r.code, "UNAVAILABLE", "not CANCELLED: {r:?}");
        server.wait_exit();
        // Nobody listens: connection refused.
        let r = c.call(SLEEP, "0", 5.0);
        assert_eq!(r.code, "UNAVAILABLE", "{r:?}");
        assert_eq!(r.reason.as_deref(), Some("upstream_unavailable"));
        let r = c.call(SLEEP, "0", 5.0);
        assert_eq!(r.reason.as_deref(), Some("upstream_unavailable"), "{r:?}");
        // Three failures in a row: the breaker is open and answers for the app.
        let r = c.call(SLEEP, "0", 5.0);
        assert_eq!(r.code, "UNAVAILABLE", "{r:?}");
        assert_eq!(r.reason.as_deref(), Some("circuit_open"));
        assert!(r.retry_after.is_some());
        (c, server)
    })
    .await
    .unwrap();
    drop(server);
    // The app comes back on its port; the channel that saw all of the above still works
    // for a call the breaker does not judge (a disabled feature's fallback).
    let _again = GrpcServer::start(Some(upstream_port));
    let r = tokio::task::spawn_blocking(move || c.call("/floodgate.test.Reco/Get", "", 5.0))
        .await
        .unwrap();
    assert_eq!(r.reason.as_deref(), Some("degraded"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_reads_the_sidecar_answers_as_grpc_statuses() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let server = GrpcServer::start(None);
    let fg = Sidecar::start(server.port, &config("")).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", fg.port))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    for _ in 0..3 {
        health
            .check(HealthCheckRequest::default())
            .await
            .expect("under the limit");
    }
    let e = health
        .check(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert_eq!(
        e.metadata().get("floodgate-reason").unwrap(),
        "rate_limited"
    );
    assert!(e.message().starts_with("rate_limited: "), "{e:?}");
    // A disabled feature, on the same channel: UNAVAILABLE from a generic call.
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/floodgate.test.Reco/Get");
    let e = grpc
        .unary::<_, (), _>(
            tonic::Request::new(()),
            path,
            tonic_prost::ProstCodec::<(), ()>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert_eq!(e.metadata().get("floodgate-reason").unwrap(), "degraded");
}
