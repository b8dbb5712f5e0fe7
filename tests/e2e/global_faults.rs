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

/// The slot of `user`'s key of the limit `per_user` (keyed on `x-user`), as the sidecar
/// computes it.
fn user_slot(user: &str) -> u16 {
    use floodgate_config::KeyPart;
    use floodgate_policy::key::{stable_key_hash, RequestParts};
    let mut headers = http::HeaderMap::new();
    headers.insert("x-user", user.parse().unwrap());
    let parts = RequestParts {
        client_ip: None,
        route: "default",
        method: &http::Method::GET,
        path: "/",
        headers: &headers,
    };
    let hash = stable_key_hash(&[KeyPart::Header("x-user".into())], &parts);
    floodgate::global::slot::of_key(format!("fg:{{per_user:{hash:016x}}}").as_bytes())
}

/// The `q` of `per_user`'s RateLimit-Policy in the answer to `user` on `port`: the limit
/// (1000) when decided in Redis, the local share (500) in the fallback.
async fn quota(port: u16, user: &str) -> u64 {
    let req = http::Request::builder()
        .uri(format!("http://127.0.0.1:{port}/"))
        .header("x-user", user)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let policy = resp.headers()["ratelimit-policy"]
        .to_str()
        .unwrap()
        .to_string();
    policy
        .split(';')
        .find_map(|p| p.strip_prefix("q="))
        .and_then(|q| q.parse().ok())
        .unwrap_or_else(|| panic!("no quota in {policy}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_cluster_master_killed_sends_only_its_keys_local() {
    let mut cluster = RedisCluster::start_with(1, Some(1000)).await;
    let up = Upstream::start("app").await;
    let redis = format!("  cluster: [{}]\n", cluster.urls().join(", "));
    let cfg = format!(
        "redis:\n{redis}  timeout_ms: 1000\n  expected_replicas: 2\nlimits:\n  - name: per_user\n    key: [\"header:x-user\"]\n    max_requests: 1000\n    window_seconds: 3600\n    strategy: fixed_window\n    scope: global\nrate_limit_headers: {{ on_admitted: always }}\n"
    );
    let fleet = [
        Sidecar::start(up.port, &cfg).await,
        Sidecar::start(up.port, &cfg).await,
    ];
    // `redis-cli --cluster create` gives three masters these ranges.
    let shards = ["0-5460", "5461-10922", "10923-16383"];
    for fg in &fleet {
        for s in shards {
            eventually(Duration::from_secs(10), "every shard up", || async {
                shard_up(fg, s).await
            })
            .await;
        }
    }
    // One user per shard: the first of user-0, user-1, ... whose key lands there.
    let mut users: Vec<(String, &str, usize)> = Vec::new();
    for s in shards {
        let (lo, hi) = s.split_once('-').unwrap();
        let range = lo.parse::<u16>().unwrap()..=hi.parse::<u16>().unwrap();
        let user = (0..)
            .map(|n| format!("user-{n}"))
            .find(|u| range.contains(&user_slot(u)))
            .unwrap();
        let master = cluster.master_of(0, user_slot(&user)).await.unwrap();
        users.push((user, s, master));
    }
    for fg in &fleet {
        for (u, _, _) in &users {
            assert_eq!(quota(fg.port, u).await, 1000, "{u} decided in Redis");
        }
    }
    let before: Vec<Vec<(u64, u64)>> =
        futures_util::future::join_all(fleet.iter().map(|fg| async {
            let mut v = Vec::new();
            for s in shards {
                v.push((
                    transitions(fg, s, "down").await,
                    transitions(fg, s, "up").await,
                ));
            }
            v
        }))
        .await;

    // The first shard's master dies; its replica takes over after cluster-node-timeout.
    let (dead_user, dead_shard, dead_master) = users[0].clone();
    cluster.nodes[dead_master].kill();
    let start = Instant::now();
    let mut local_answers = 0;
    loop {
        for fg in &fleet {
            for (u, s, _) in &users[1..] {
                assert_eq!(
                    quota(fg.port, u).await,
                    1000,
                    "{u} (shard {s}) left Redis {:?} after the kill\n{}",
                    start.elapsed(),
                    fg.log()
                );
            }
            local_answers += u32::from(quota(fg.port, &dead_user).await == 500);
        }
        let mut back = true;
        for fg in &fleet {
            back &= shard_up(fg, dead_shard).await;
        }
        if back {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(25),
            "shard {dead_shard} not back within 25 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let failover = start.elapsed();
    eprintln!("failover: {failover:?}, {local_answers} answers for the dead shard's key local");
    assert!(local_answers > 0, "the dead shard's key went local");
    for (fg, before) in fleet.iter().zip(&before) {
        for (s, (down0, up0)) in shards.iter().zip(before) {
            let moved = (
                transitions(fg, s, "down").await - down0,
                transitions(fg, s, "up").await - up0,
            );
            let want = if s == &dead_shard { (1, 1) } else { (0, 0) };
            assert_eq!(
                moved,
                want,
                "shard {s}, failover took {failover:?}\n{}",
                fg.log()
            );
        }
        assert_eq!(quota(fg.port, &dead_user).await, 1000, "back in Redis");
    }
}
