//! One sidecar in front of two ports of an app (issue 19): an HTTP listener before a real
//! HTTP app and an h2c listener before a real grpcio server, each with its own upstream,
//! queue and breaker. A limit on the gRPC route leaves HTTP alone, the HTTP breaker opening
//! leaves gRPC alone, and a reload that moves one listener's upstream leaves the other's
//! in-flight calls alone.

use std::cell::Cell;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::grpc::{GrpcClient, GrpcServer};
use crate::support::{eventually, free_port, http_get, Sidecar, Upstream};

const SLEEP: &str = "/floodgate.test.Test/Sleep";

/// Both listeners, `http` on `port` and `grpc` on `grpc_port`, with `extra` appended.
fn yaml(
    port: u16,
    grpc_port: u16,
    metrics_port: u16,
    http_up: u16,
    grpc_up: u16,
    extra: &str,
) -> String {
    format!(
        "listeners:
  - name: http
    listen: 127.0.0.1:{port}
    upstream: {{ address: 127.0.0.1:{http_up}, connect_timeout_ms: 500, read_timeout_ms: 5000 }}
  - name: grpc
    listen: 127.0.0.1:{grpc_port}
    upstream: {{ address: 127.0.0.1:{grpc_up}, protocol: h2c, read_timeout_ms: 5000 }}
metrics:
  listen: 127.0.0.1:{metrics_port}
routes:
  - name: rpc
    match: {{ listener: grpc }}
{extra}"
    )
}

/// Starts the sidecar with both listeners; returns it and the gRPC listener's port.
async fn start(http_up: u16, grpc_up: u16, extra: &str) -> (Sidecar, u16) {
    let grpc_port = Cell::new(0);
    let fg = Sidecar::start_retrying(|port, metrics_port| {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("floodgate.yaml");
        grpc_port.set(free_port());
        let text = yaml(port, grpc_port.get(), metrics_port, http_up, grpc_up, extra);
        std::fs::write(&config, text).unwrap();
        (dir, config, Vec::new())
    })
    .await;
    (fg, grpc_port.get())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_on_the_grpc_route_exhausts_grpc_and_leaves_http_alone() {
    let app = Upstream::start("app").await;
    let server = GrpcServer::start(None);
    let limit = "limits:
  - name: rpc_calls
    routes: [rpc]
    key: []
    max_requests: 2
    window_seconds: 60
    strategy: fixed_window
";
    let (fg, grpc_port) = start(app.port, server.port, limit).await;
    for _ in 0..5 {
        let (status, _, body) = http_get(fg.port, "/count").await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with("app request"), "{body}");
    }
    let replies = tokio::task::spawn_blocking(move || {
        let mut c = GrpcClient::connect(grpc_port);
        (0..3).map(|_| c.health()).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert_eq!(replies[0].code, "OK", "{replies:?}");
    assert_eq!(replies[1].code, "OK", "{replies:?}");
    assert_eq!(replies[2].code, "RESOURCE_EXHAUSTED", "{replies:?}");
    assert_eq!(replies[2].reason.as_deref(), Some("rate_limited"));
    // HTTP after the gRPC limit ran out: still served.
    assert_eq!(http_get(fg.port, "/count").await.unwrap().0, 200);
    fg.wait_metric(
        "http_requests_total{listener=\"http\",method=\"GET\",route=\"default\",status=\"200\"}",
        6.0,
    )
    .await;
    fg.wait_metric(
        "http_requests_total{listener=\"grpc\",method=\"POST\",route=\"rpc\",status=\"200\"}",
        3.0,
    )
    .await;
    fg.wait_metric(
        "floodgate_shed_total{listener=\"grpc\",reason=\"rate_limited\"}",
        1.0,
    )
    .await;
    assert_eq!(
        fg.metric("floodgate_shed_total{listener=\"http\",reason=\"rate_limited\"}")
            .await,
        None,
        "nothing shed on http"
    );
    eventually(
        Duration::from_secs(5),
        "access lines name the listener",
        || async {
            let log = fg.log();
            log.contains("access: client=127.0.0.1 listener=\"grpc\" method=\"POST\"")
                && log.contains("access: client=127.0.0.1 listener=\"http\" method=\"GET\"")
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_listeners_breaker_opening_leaves_the_grpc_listener_alone() {
    let app = Upstream::start("app").await;
    let server = GrpcServer::start(None);
    // With an admin plane, for `floodgatectl status`.
    let tokens = tempfile::tempdir().unwrap();
    let token = tokens.path().join("view.token");
    std::fs::write(&token, "view-token-1\n").unwrap();
    let admin_port = free_port();
    let extra = format!(
        "circuit_breaker:\n  consecutive_failures: 2\n  open_ms: 60000\nadmin:\n  listen: 127.0.0.1:{admin_port}\n  tokens:\n    - {{ file: {}, role: viewer }}\n",
        token.display()
    );
    let (fg, grpc_port) = start(app.port, server.port, &extra).await;
    app.stats.fail_with.store(500, Ordering::SeqCst);
    for _ in 0..2 {
        assert_eq!(http_get(fg.port, "/count").await.unwrap().0, 500);
    }
    let http_breaker = format!(
        "floodgate_circuit_breaker_state{{listener=\"http\",upstream=\"127.0.0.1:{}\"}}",
        app.port
    );
    fg.wait_metric(&http_breaker, 2.0).await;
    let (status, headers, _) = http_get(fg.port, "/count").await.unwrap();
    assert_eq!(status, 503);
    assert_eq!(headers["floodgate-reason"], "circuit_open");
    // The gRPC port's upstream has its own breaker, closed: every call goes through.
    let replies = tokio::task::spawn_blocking(move || {
        let mut c = GrpcClient::connect(grpc_port);
        (0..3).map(|_| c.health()).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(replies.iter().all(|r| r.code == "OK"), "{replies:?}");
    let grpc_breaker = format!(
        "floodgate_circuit_breaker_state{{listener=\"grpc\",upstream=\"127.0.0.1:{}\"}}",
        server.port
    );
    assert_eq!(fg.metric(&grpc_breaker).await, Some(0.0));
    assert_eq!(fg.metric(&http_breaker).await, Some(2.0));
    // `/status` shows each listener with its upstream and its breaker.
    let (_, _, body) = http_get(fg.metrics_port, "/status").await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let listeners = v["listeners"].as_array().unwrap();
    let (http, grpc) = (&listeners[0], &listeners[1]);
    assert_eq!(http["name"], "http", "{body}");
    assert_eq!(http["upstream"], format!("127.0.0.1:{}", app.port));
    assert_eq!(http["circuit_breaker"]["state"], "open", "{body}");
    assert_eq!(grpc["name"], "grpc");
    assert_eq!(grpc["upstream"], format!("127.0.0.1:{}", server.port));
    assert_eq!(grpc["listen"], format!("127.0.0.1:{grpc_port}"));
    assert_eq!(grpc["circuit_breaker"]["state"], "closed", "{body}");
    // floodgatectl says the same, in its table and in JSON.
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new(crate::support::floodgatectl())
            .arg("--addr")
            .arg(format!("127.0.0.1:{admin_port}"))
            .arg("--token-file")
            .arg(&token)
            .args(args)
            .env_remove("FLOODGATE_TOKEN")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let table = ctl(&["status"]);
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} row in\n{table}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        row("http"),
        [
            "http",
            &format!("127.0.0.1:{}", fg.port),
            &format!("127.0.0.1:{}", app.port),
            "0",
            "0",
            "open"
        ]
    );
    assert_eq!(row("grpc")[5], "closed", "{table}");
    let js: serde_json::Value = serde_json::from_str(&ctl(&["-o", "json", "status"])).unwrap();
    assert_eq!(js["listeners"][1]["name"], "grpc", "{js}");
    assert_eq!(js["listeners"][1]["breaker"], "closed", "{js}");
    assert_eq!(js["listeners"][0]["breaker"], "open", "{js}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moving_one_listeners_upstream_leaves_the_others_in_flight_call_alone() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let server = GrpcServer::start(None);
    // One worker per listener's upstream: a queue shared by both would hold HTTP back.
    let queue = "queue:\n  max_concurrency: 1\n  max_size: 5\n  timeout_ms: 500\n";
    let (fg, grpc_port) = start(a.port, server.port, queue).await;
    assert!(http_get(fg.port, "/count")
        .await
        .unwrap()
        .2
        .starts_with("a request"));
    // A slow call in flight on the gRPC listener ...
    let slow = tokio::task::spawn_blocking(move || {
        GrpcClient::connect(grpc_port).call(SLEEP, "3000", 10.0)
    });
    eventually(
        Duration::from_secs(5),
        "the gRPC call is in flight",
        || async {
            fg.metric("floodgate_inflight_requests{listener=\"grpc\"}")
                .await
                == Some(1.0)
        },
    )
    .await;
    // The gRPC call holds its listener's only worker; the HTTP listener has its own.
    let (status, _, body) = http_get(fg.port, "/count").await.unwrap();
    assert_eq!(status, 200, "{body}");
    // ... while the HTTP listener's upstream moves to `b`, and a listener is added.
    let text = std::fs::read_to_string(&fg.config).unwrap();
    let extra_port = free_port();
    let moved = text
        .replace(&format!("127.0.0.1:{},", a.port), &format!("127.0.0.1:{},", b.port))
        .replace(
            "metrics:",
            &format!("  - name: extra\n    listen: 127.0.0.1:{extra_port}\n    upstream: {{ address: 127.0.0.1:{} }}\nmetrics:", a.port),
        );
    assert_ne!(moved, text);
    fg.write_config(&moved);
    fg.wait_metric("floodgate_config_version", 2.0).await;
    assert!(http_get(fg.port, "/count")
        .await
        .unwrap()
        .2
        .starts_with("b request"));
    assert!(
        !slow.is_finished(),
        "the slow call should still be in flight after the swap"
    );
    let reply = slow.await.unwrap();
    assert_eq!(reply.code, "OK", "{reply:?}");
    // A new listener cannot be bound by a reload: said and counted, its port still closed.
    fg.wait_metric(
        "floodgate_config_restart_required_total{setting=\"listeners.extra.listen\"}",
        1.0,
    )
    .await;
    assert!(
        fg.log().contains("`listeners.extra.listen` changed, but it is read only at start-up: a new listener's port is opened only at start-up"),
        "{}",
        fg.log()
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", extra_port)).is_err());
}
