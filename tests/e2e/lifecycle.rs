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
