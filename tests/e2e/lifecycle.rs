//! Start-up and shutdown: SIGTERM drains in-flight requests and exits 0; start-up problems
//! are clear errors, not hangs.

use std::time::{Duration, Instant};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_0() {
    let up = Upstream::start("app").await;
    let mut fg = Sidecar::start(up.port, "").await;
    let port = fg.port;
    let slow = tokio::spawn(async move { http_get(port, "/sleep/1500").await });
    eventually(Duration::from_secs(5), "request in flight", || async {
        fg.metric("floodgate_inflight_requests").await == Some(1.0)
    })
    .await;
    fg.signal(nix::sys::signal::Signal::SIGTERM);
    eventually(Duration::from_secs(5), "readyz turns 503", || async {
        matches!(http_get(fg.metrics_port, "/readyz").await, Ok((503, _, _)))
    })
    .await;
    let (status, _, body) = slow.await.unwrap().unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "app slept 1500 ms\n"),
        "in-flight request completed"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let code = loop {
        if let Some(s) = fg.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "still running 5 s after the drain:\n{}",
            fg.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(code.success(), "exit status {code}:\n{}", fg.log());
    assert!(fg.log().contains("drained; exiting"), "{}", fg.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_is_a_clear_start_up_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("f.yaml");
    std::fs::write(&cfg, config_yaml(port, free_port(), free_port(), "")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_floodgate"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on `listen` 127.0.0.1:{port}")),
        "{err}"
    );
}

/// The names of process `pid`'s threads.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect()
}

/// pingora-timeout's clock thread ("Timer thread") wakes every 10 ms for the life of the
/// process once a "fast" timeout starts it, which was nearly all of an idle sidecar's CPU.
/// With every pingora timeout of 1 s or more on tokio's timer, HTTP/1.1 traffic with the
/// default timeouts never starts it (bench/README.md, "Peers and idle CPU").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_traffic_with_the_default_timeouts_starts_no_10ms_clock_thread() {
    let up = Upstream::start("app").await;
    let upstream = up.port;
    // The upstream's default timeouts (the tests' usual 500 ms connect timeout would start
    // it: a timeout under 1 s stays on pingora's fast timer).
    let fg = Sidecar::start_custom(|p, m| {
        format!("listen: 127.0.0.1:{p}\nupstream: {{ address: 127.0.0.1:{upstream} }}\nmetrics: {{ listen: 127.0.0.1:{m} }}\n")
    })
    .await;
    // Keep-alive and new connections, and the upstream connections pooled between them.
    let c = client();
    for i in 0..20 {
        let uri: http::Uri = format!("http://127.0.0.1:{}/r{i}", fg.port)
            .parse()
            .unwrap();
        assert_eq!(c.get(uri).await.unwrap().status(), 200);
        assert_eq!(http_get(fg.port, "/").await.unwrap().0, 200);
    }
    let threads = thread_names(fg.child.id());
    assert!(threads.iter().any(|t| t.starts_with("BG ")), "{threads:?}");
    assert!(
        !threads.iter().any(|t| t == "Timer thread"),
        "pingora-timeout's clock thread started: {threads:?}"
    );
}
