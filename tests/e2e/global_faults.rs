//! Redis faults that answer `PING` but fail every decision (OOM, READONLY, NOAUTH, writes
//! paused) and a server that hangs (SIGSTOP): the sidecar goes to the local fallback once,
//! stays there while the fault lasts (one transition down, none up, read from
//! `floodgate_redis_transitions_total`), and comes back once the fault is lifted.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::redis_support::*;
use crate::support::*;

/// The one shard of a standalone server.
const ALL: &str = "0-16383";

/// How long load runs against a fault: the old prober (PING every 250 ms) flipped about ten
/// times in this long.
const FAULT: Duration = Duration::from_secs(3);

/// A sidecar with one global limit no test load reaches (so every answer is 200), on `url`.
async fn sidecar(url: &str) -> (Sidecar, Upstream) {
    let up = Upstream::start("app").await;
    let cfg = format!(
        "redis:\n  url: {url}\n  timeout_ms: 500\n  expected_replicas: 4\nlimits:\n  - name: g\n    key: []\n    max_requests: 1000000\n    window_seconds: 60\n    strategy: fixed_window\n    scope: global\n"
    );
    let fg = Sidecar::start(up.port, &cfg).await;
    fg.wait_metric(&format!("floodgate_redis_up{{shard=\"{ALL}\"}}"), 1.0)
        .await;
    (fg, up)
}

/// `floodgate_redis_transitions_total` of `shard` towards `to` ("up" or "down").
pub async fn transitions(fg: &Sidecar, shard: &str, to: &str) -> u64 {
    fg.metric(&format!(
        "floodgate_redis_transitions_total{{shard=\"{shard}\",to=\"{to}\"}}"
    ))
    .await
    .unwrap_or(0.0) as u64
}

pub async fn shard_up(fg: &Sidecar, shard: &str) -> bool {
    fg.metric(&format!("floodgate_redis_up{{shard=\"{shard}\"}}"))
        .await
        == Some(1.0)
}

/// Sends GETs on two connections for `span`, each answered 200 (any other status panics);
/// returns how many were sent.
pub async fn load_for(port: u16, span: Duration) -> u64 {
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let (sent, stop) = (sent.clone(), stop.clone());
            tokio::spawn(async move {
                let c = client();
                while !stop.load(Ordering::Relaxed) {
                    let resp = c
                        .get(format!("http://127.0.0.1:{port}/").parse().unwrap())
                        .await
                        .unwrap();
                    assert_eq!(resp.status().as_u16(), 200);
                    let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // A span of observation, not a synchronisation: the load runs for its whole length.
    tokio::time::sleep(span).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    sent.load(Ordering::Relaxed)
}

/// Runs one incident: `inject` the fault, load the sidecar for [`FAULT`], expect it in the
/// fallback all along with one transition, `lift` the fault, expect it back with one more.
async fn incident(
    fg: &Sidecar,
    inject: impl std::future::Future<Output = ()>,
    lift: impl std::future::Future<Output = ()>,
) {
    let (down0, up0) = (
        transitions(fg, ALL, "down").await,
        transitions(fg, ALL, "up").await,
    );
    inject.await;
    let start = Instant::now();
    let sent = load_for(fg.port, FAULT).await;
    assert!(sent > 10, "only {sent} requests in {FAULT:?}");
    assert!(!shard_up(fg, ALL).await, "in the fallback during the fault");
    let (down, up) = (
        transitions(fg, ALL, "down").await - down0,
        transitions(fg, ALL, "up").await - up0,
    );
    assert_eq!(
        (down, up),
        (1, 0),
        "one transition, down, in {:?} of fault\n{}",
        start.elapsed(),
        fg.log()
    );
    lift.await;
    eventually(Duration::from_secs(10), "back on Redis", || async {
        shard_up(fg, ALL).await
    })
    .await;
    load_for(fg.port, Duration::from_millis(300)).await;
    assert_eq!(transitions(fg, ALL, "down").await - down0, 1);
    assert_eq!(transitions(fg, ALL, "up").await - up0, 1);
    let lines = fg.log().matches("redis unavailable").count();
    assert!(lines <= 2, "{lines} log lines for one incident");
}

async fn ok(port: u16, args: &[&str]) {
    let r = command(port, args).await.unwrap();
    assert!(r.starts_with('+'), "{args:?}: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_out_of_memory_stays_in_the_fallback() {
    let redis = RedisServer::start().await;
    let (fg, _up) = sidecar(&redis.url()).await;
    let p = redis.port;
    incident(
        &fg,
        async {
            ok(p, &["CONFIG", "SET", "maxmemory-policy", "noeviction"]).await;
            ok(p, &["CONFIG", "SET", "maxmemory", "1"]).await;
        },
        async { ok(p, &["CONFIG", "SET", "maxmemory", "0"]).await },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_read_only_replica_stays_in_the_fallback() {
    let redis = RedisServer::start().await;
    let master = RedisServer::start().await;
    let (fg, _up) = sidecar(&redis.url()).await;
    let p = redis.port;
    let m = master.port.to_string();
    incident(
        &fg,
        async {
            ok(p, &["REPLICAOF", "127.0.0.1", &m]).await;
        },
        async { ok(p, &["REPLICAOF", "NO", "ONE"]).await },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_lost_authentication_stays_in_the_fallback() {
    let redis = RedisServer::start().await;
    let (fg, _up) = sidecar(&redis.url()).await;
    let p = redis.port;
    incident(
        &fg,
        async {
            ok(p, &["CONFIG", "SET", "requirepass", "s3cret"]).await;
            // Connections made before keep their login; the sidecar's next ones get NOAUTH.
            let r = command(p, &["AUTH", "s3cret"]).await.unwrap();
            assert!(r.starts_with("+OK"), "{r}");
            let out = std::process::Command::new("redis-cli")
                .args(["-p", &p.to_string(), "-a", "s3cret", "--no-auth-warning"])
                .args(["CLIENT", "KILL", "TYPE", "normal"])
                .output()
                .unwrap();
            assert!(out.status.success());
        },
        async {
            let out = std::process::Command::new("redis-cli")
                .args(["-p", &p.to_string(), "-a", "s3cret", "--no-auth-warning"])
                .args(["CONFIG", "SET", "requirepass", ""])
                .output()
                .unwrap();
            assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_paused_writes_stay_in_the_fallback() {
    let redis = RedisServer::start().await;
    let (fg, _up) = sidecar(&redis.url()).await;
    let p = redis.port;
    incident(
        &fg,
        async { ok(p, &["CLIENT", "PAUSE", "60000", "WRITE"]).await },
        async { ok(p, &["CLIENT", "UNPAUSE"]).await },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_stopped_server_stays_in_the_fallback() {
    let redis = RedisServer::start().await;
    let (fg, _up) = sidecar(&redis.url()).await;
    incident(
        &fg,
        async { redis.signal(nix::sys::signal::Signal::SIGSTOP) },
        async { redis.signal(nix::sys::signal::Signal::SIGCONT) },
    )
    .await;
}
