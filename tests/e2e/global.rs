//! Fleet-wide limits through real `redis-server`s: several real sidecars share one limit
//! exactly, a Redis outage costs no 5xx and falls back to the local share, Redis coming back
//! is picked up by itself, and the cluster path spreads keys over three masters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::redis_support::*;
use crate::support::*;

fn global_yaml(redis: &str, name: &str, max: u64, window: u64, key: &str, extra: &str) -> String {
    format!(
        "redis:\n{redis}  timeout_ms: 500\n  expected_replicas: 4\nlimits:\n  - name: {name}\n    key: {key}\n    max_requests: {max}\n    window_seconds: {window}\n    strategy: fixed_window\n    scope: global\n{extra}"
    )
}

async fn on_redis(fg: &Sidecar, limit: &str) {
    fg.wait_metric(
        &format!("floodgate_ratelimit_backend{{limit=\"{limit}\",mode=\"redis\"}}"),
        1.0,
    )
    .await;
}

/// Sends `n` GETs to `port` on `conns` keep-alive connections; returns (admitted, rejected),
/// panicking on any other answer.
async fn drive(port: u16, n: u64, conns: u64) -> (u64, u64) {
    let ok = Arc::new(AtomicU64::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let (ok, limited) = (ok.clone(), limited.clone());
            tokio::spawn(async move {
                let c = client();
                for _ in 0..n / conns {
                    let resp = c
                        .get(format!("http://127.0.0.1:{port}/").parse().unwrap())
                        .await
                        .unwrap();
                    match resp.status().as_u16() {
                        200 => ok.fetch_add(1, Ordering::Relaxed),
                        429 => limited.fetch_add(1, Ordering::Relaxed),
                        other => panic!("unexpected status {other}"),
                    };
                    let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (ok.load(Ordering::Relaxed), limited.load(Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sidecars_share_one_limit_exactly() {
    let redis = RedisServer::start().await;
    let up = Upstream::start("app").await;
    let cfg = global_yaml(
        &format!("  url: {}\n", redis.url()),
        "fleet",
        1000,
        10,
        "[]",
        "",
    );
    let fleet = [
        Sidecar::start(up.port, &cfg).await,
        Sidecar::start(up.port, &cfg).await,
        Sidecar::start(up.port, &cfg).await,
    ];
    for fg in &fleet {
        on_redis(fg, "fleet").await;
    }
    // Run inside one 10 s window of Redis's clock: if less than 7 s are left, start the next.
    let into = redis.time_ms().await % 10_000;
    if into > 3_000 {
        tokio::time::sleep(Duration::from_millis(10_000 - into + 50)).await;
    }
    let window = redis.time_ms().await / 10_000;
    // ~3× the limit, all three sidecars at once.
    let runs = fleet.iter().map(|fg| drive(fg.port, 1000, 8));
    let results = futures_util::future::join_all(runs).await;
    assert_eq!(
        redis.time_ms().await / 10_000,
        window,
        "the load did not fit in one window; rerun"
    );
    let admitted: u64 = results.iter().map(|r| r.0).sum();
    let rejected: u64 = results.iter().map(|r| r.1).sum();
    assert_eq!(admitted + rejected, 3000);
    assert!(
        (980..=1020).contains(&admitted),
        "{admitted} admitted across the fleet for a limit of 1000"
    );
    assert_eq!(up.stats.requests.load(Ordering::Relaxed), admitted);
}

/// A sidecar with the global limit `g`, 40 an hour on Redis at `url`, 4 expected replicas,
/// whose every admitted answer says where it was decided (its policy's quota); once the
/// limit is decided in Redis.
async fn hourly(url: &str, up: &Upstream) -> Sidecar {
    let cfg = global_yaml(
        &format!("  url: {url}\n"),
        "g",
        40,
        3600,
        "[]",
        "rate_limit_headers: { on_admitted: always }\n",
    );
    let fg = Sidecar::start(up.port, &cfg).await;
    on_redis(&fg, "g").await;
    fg
}

/// Requests of one key at once on one sidecar, whose decisions may share one script call
/// (the wire joins like calls not yet written; how many do is timing): exactly the limit is admitted, the admitted
/// answers leave 39 down to 0 (each once, as decisions in turn would), every other one is
/// turned away with a Retry-After, and Redis holds the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_one_key_at_once_are_decided_as_if_in_turn() {
    let redis = RedisServer::start().await;
    let up = Upstream::start("app").await;
    let fg = hourly(&redis.url(), &up).await;
    // In one hour of Redis's clock (the fixed window): not in its last 10 s.
    let into = redis.time_ms().await % 3_600_000;
    if into > 3_590_000 {
        tokio::time::sleep(Duration::from_millis(3_600_000 - into + 50)).await;
    }
    let answers = futures_util::future::join_all((0..100).map(|_| http_get(fg.port, "/"))).await;
    let mut left = Vec::new();
    let mut turned_away = 0;
    for answer in answers {
        let (status, h, _) = answer.unwrap();
        match status {
            200 => {
                let field = h["ratelimit"].to_str().unwrap();
                let r = field
                    .split(';')
                    .find_map(|p| p.strip_prefix("r="))
                    .unwrap_or_else(|| panic!("{field}"));
                left.push(r.parse::<u64>().unwrap());
            }
            429 => {
                assert!(h.contains_key("retry-after"), "{h:?}");
                turned_away += 1;
            }
            other => panic!("status {other}"),
        }
    }
    left.sort_unstable();
    assert_eq!(left, (0..40).collect::<Vec<_>>(), "each left count once");
    assert_eq!(turned_away, 60);
    let keys = command(redis.port, &["KEYS", "fg:{g:*"]).await.unwrap();
    let key = keys.lines().nth(2).unwrap_or_else(|| panic!("{keys:?}"));
    assert_eq!(count_of(&redis, key).await, 40);
    // How many calls the decisions shared is timing (11 script runs for the 100 in a run here,
    // 100 when the tests around it slowed the requests' arrival): not asserted. That like
    // calls are joined is `wire`'s tests'; this one holds whether or not they were.
    eprintln!(
        "100 decisions, {} script calls",
        evalsha_calls(redis.port).await
    );
    // A flushed script while calls are shared: each is sent again as EVAL (joining again),
    // and all are decided in Redis, which has none left to give (the outage share would
    // admit some).
    let flushed = command(redis.port, &["SCRIPT", "FLUSH"]).await.unwrap();
    assert!(flushed.starts_with("+OK"), "{flushed}");
    let again = futures_util::future::join_all((0..20).map(|_| http_get(fg.port, "/"))).await;
    for answer in again {
        assert_eq!(answer.unwrap().0, 429);
    }
    assert_eq!(count_of(&redis, key).await, 40);
}

/// The count `c1` of the hash `key`.
async fn count_of(redis: &RedisServer, key: &str) -> u64 {
    let count = command(redis.port, &["HGET", key, "c1"]).await.unwrap();
    count
        .lines()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{count:?}"))
}

/// The URL's password and database reach every connection: decisions (on their own
/// connection, not redis-rs's) are counted in Redis, in that database, with no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_and_database_in_the_url_are_used_for_decisions() {
    let redis = RedisServer::start().await;
    let r = command(redis.port, &["CONFIG", "SET", "requirepass", "s3cret"])
        .await
        .unwrap();
    assert!(r.starts_with("+OK"), "{r}");
    let up = Upstream::start("app").await;
    let fg = hourly(&format!("redis://:s3cret@127.0.0.1:{}/3", redis.port), &up).await;
    for left in [39, 38, 37] {
        let (status, h, _) = http_get(fg.port, "/").await.unwrap();
        assert_eq!(status, 200);
        let current = h["ratelimit"].to_str().unwrap().to_string();
        assert!(
            current.starts_with(&format!("\"g\";r={left};")),
            "{current}: decided in Redis"
        );
    }
    let keys = |db: &'static str| {
        let out = std::process::Command::new("redis-cli")
            .args([
                "-p",
                &redis.port.to_string(),
                "-a",
                "s3cret",
                "--no-auth-warning",
            ])
            .args(["-n", db, "KEYS", "fg:*"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // The prober's key is there too (`fg:probe:{..}`): KEYS lists in no order.
    let in_3 = keys("3");
    assert!(
        in_3.lines().any(|k| k.starts_with("fg:{g:")),
        "the limit's key in database 3: {in_3}"
    );
    assert_eq!(keys("0"), "", "nothing in database 0");
    assert_eq!(
        fg.metric("floodgate_redis_errors_total{kind=\"other\"}")
            .await
            .unwrap_or(0.0),
        0.0
    );
    assert_eq!(
        fg.metric("floodgate_ratelimit_backend{limit=\"g\",mode=\"redis\"}")
            .await,
        Some(1.0),
        "still decided in Redis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_falls_back_to_the_local_share_then_recovers() {
    let mut redis = RedisServer::start().await;
    let up = Upstream::start("app").await;
    // 40 per hour fleet-wide; 4 expected replicas: 10 each while Redis is gone.
    let fg = hourly(&redis.url(), &up).await;
    let (_, h, _) = http_get(fg.port, "/").await.unwrap();
    assert_eq!(
        h["ratelimit-policy"], "\"g\";q=40;w=3600",
        "decided in Redis"
    );
    // The busiest key's use comes from Redis's answers: 1 of 40.
    eventually(Duration::from_secs(5), "utilisation from Redis", || async {
        fg.metric("floodgate_ratelimit_utilization_ratio{limit=\"g\"}")
            .await
            == Some(0.025)
    })
    .await;
    // A flushed script cache (a Redis restart or failover does that) is reloaded by itself.
    assert!(command(redis.port, &["SCRIPT", "FLUSH"])
        .await
        .unwrap()
        .starts_with("+OK"));
    let (status, h, _) = http_get(fg.port, "/").await.unwrap();
    assert_eq!(status, 200);
    let current = h["ratelimit"].to_str().unwrap().to_string();
    assert!(
        current.starts_with("\"g\";r=38;"),
        "{current}: still decided in Redis after NOSCRIPT"
    );

    redis.kill();
    let (admitted, rejected) = drive(fg.port, 30, 3).await; // any 5xx panics in drive
    assert_eq!(
        (admitted, rejected),
        (10, 20),
        "the local share, and no error"
    );
    let (status, h, _) = http_get(fg.port, "/").await.unwrap();
    assert_eq!(status, 429);
    assert_eq!(
        h["ratelimit-policy"], "\"g\";q=10;w=3600",
        "the fields state the local share while it decides"
    );
    assert_eq!(h["x-ratelimit-limit"], "10");
    fg.wait_metric(
        "floodgate_ratelimit_backend{limit=\"g\",mode=\"local_fallback\"}",
        1.0,
    )
    .await;
    assert!(
        fg.metric("floodgate_redis_errors_total{kind=\"io\"}")
            .await
            .unwrap_or(0.0)
            + fg.metric("floodgate_redis_errors_total{kind=\"refused\"}")
                .await
                .unwrap_or(0.0)
            + fg.metric("floodgate_redis_errors_total{kind=\"timeout\"}")
                .await
                .unwrap_or(0.0)
            >= 1.0
    );

    redis.restart().await;
    let back = eventually(Duration::from_secs(5), "back on Redis", || async {
        fg.metric("floodgate_ratelimit_backend{limit=\"g\",mode=\"redis\"}")
            .await
            == Some(1.0)
    })
    .await;
    assert!(back < Duration::from_secs(5));
    let (status, h, _) = http_get(fg.port, "/").await.unwrap();
    assert_eq!(status, 200);
    let current = h["ratelimit"].to_str().unwrap().to_string();
    // The 10 admitted locally in this window are handed to Redis with this decision (it used
    // to answer r=39, admitting the local share on top of the limit).
    assert!(
        current.starts_with("\"g\";r=29;"),
        "{current}: a fresh Redis decides again, counting the fallback's 10"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_limit_rejects_while_redis_is_unreachable() {
    let up = Upstream::start("app").await;
    let dead = free_port();
    let cfg = global_yaml(
        &format!("  url: redis://127.0.0.1:{dead}\n"),
        "strict",
        100,
        60,
        "[]",
        "    failure_mode: deny\n",
    );
    let fg = Sidecar::start(up.port, &cfg).await;
    for _ in 0..3 {
        let (status, h, _) = http_get(fg.port, "/").await.unwrap();
        assert_eq!(status, 429);
        assert_eq!(h["floodgate-reason"], "rate_limited");
    }
    assert_eq!(up.stats.requests.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_spreads_keys_and_decides_each_exactly() {
    let cluster = RedisCluster::start().await;
    let up = Upstream::start("app").await;
    let nodes: Vec<String> = cluster.urls();
    let redis = format!("  cluster: [{}]\n", nodes.join(", "));
    // Exactness is under test here, not the fallback: a 500 ms budget missed once on a fully
    // loaded machine would decide on the local share and admit a different count.
    let cfg = global_yaml(&redis, "per_user", 10, 3600, "[\"header:x-user\"]", "")
        .replace("timeout_ms: 500", "timeout_ms: 3000");
    let a = Sidecar::start(up.port, &cfg).await;
    let b = Sidecar::start(up.port, &cfg).await;
    on_redis(&a, "per_user").await;
    on_redis(&b, "per_user").await;
    let c = client();
    for user in 0..20 {
        let mut admitted = 0;
        for i in 0..15 {
            let port = if i % 2 == 0 { a.port } else { b.port };
            let req = http::Request::builder()
                .uri(format!("http://127.0.0.1:{port}/"))
                .header("x-user", format!("user-{user}"))
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap();
            let status = c.request(req).await.unwrap().status().as_u16();
            assert!(status == 200 || status == 429, "status {status}");
            admitted += u32::from(status == 200);
        }
        // Seen once under a fully loaded 2-core machine (before the longer budget above), not
        // reproduced since: say why if again.
        assert_eq!(
            admitted,
            10,
            "user-{user}\nsidecar A:\n{}\nsidecar B:\n{}",
            a.log(),
            b.log()
        );
    }
    // 20 keys over 3 masters: each master holds some (all on one would be 3^-19 likely).
    // Only the limits' keys (`fg:{name:hash}`) count: the fleet sync keeps its own
    // `{floodgate}:*` keys too, and the prober its `fg:probe:{tag}` ones.
    let mut sizes = Vec::new();
    for n in &cluster.nodes {
        let r = command(
            n.port,
            &["EVAL", "return #redis.call('keys', 'fg:{*')", "0"],
        )
        .await
        .unwrap();
        sizes.push(r.trim().trim_start_matches(':').parse::<u64>().unwrap());
    }
    assert_eq!(sizes.iter().sum::<u64>(), 20, "{sizes:?}");
    assert!(sizes.iter().filter(|s| **s > 0).count() >= 2, "{sizes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_the_fallback_admits_no_more_than_the_limit() {
    let redis = RedisServer::start().await;
    let up = Upstream::start("app").await;
    // 40 per hour fleet-wide; 4 expected replicas: 10 locally while Redis is away.
    let cfg = global_yaml(
        &format!("  url: {}\n", redis.url()),
        "g",
        40,
        3600,
        "[]",
        "",
    );
    let fg = Sidecar::start(up.port, &cfg).await;
    on_redis(&fg, "g").await;
    assert_eq!(drive(fg.port, 5, 1).await, (5, 0), "5 decided in Redis");
    // A server that hangs keeps its counts: the fallback's admissions come on top of them.
    redis.signal(nix::sys::signal::Signal::SIGSTOP);
    assert_eq!(drive(fg.port, 15, 1).await, (10, 5), "the local share");
    fg.wait_metric("floodgate_redis_up{shard=\"0-16383\"}", 0.0)
        .await;
    redis.signal(nix::sys::signal::Signal::SIGCONT);
    eventually(Duration::from_secs(10), "back on Redis", || async {
        fg.metric("floodgate_redis_up{shard=\"0-16383\"}").await == Some(1.0)
    })
    .await;
    // Redis holds 5; the first decision back adds the 10 admitted locally: 25 are left. The
    // decision that timed out against the stopped server ran when it resumed and counts
    // there too (it was also admitted locally): 24 then. Never more than the limit.
    let (admitted, rejected) = drive(fg.port, 40, 1).await;
    assert_eq!(admitted + rejected, 40);
    assert!(
        (24..=25).contains(&admitted),
        "{admitted} admitted back on Redis: 5 + 10 + {admitted} in a window of 40"
    );
    assert!(up.stats.requests.load(Ordering::Relaxed) <= 40);
}

/// The integer count in field `field` of the hash `key` (0 when absent).
async fn hash_field(port: u16, key: &str, field: &str) -> u64 {
    let reply = command(port, &["HGET", key, field]).await.unwrap();
    // `$n\r\nVALUE\r\n`, or `$-1\r\n` for none.
    reply
        .lines()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The one Redis key of limit `name` (its key shape is `[]`).
async fn limit_key(port: u16, name: &str) -> String {
    let keys = command(port, &["KEYS", &format!("fg:{{{name}:*")])
        .await
        .unwrap();
    keys.lines()
        .find(|l| l.starts_with("fg:"))
        .unwrap_or_else(|| panic!("no key of limit {name} in Redis: {keys:?}"))
        .to_owned()
}

/// Waits until the current window's count of `key` is at least `n` (syncs push it within an
/// interval or two); returns it.
async fn count_reaches(port: u16, key: &str, n: u64) -> u64 {
    eventually(
        Duration::from_secs(5),
        &format!("{key} counts {n}"),
        || async move { hash_field(port, key, "c1").await >= n },
    )
    .await;
    hash_field(port, key, "c1").await
}

/// `mode: approximate` (issue 17): three sidecars decide a shared limit each on its own, sync
/// their counts every 100 ms, and the fleet admits its quota within the stated bound
/// (`sidecars x ceil(max / expected_replicas)` over it however bursty the load), with every
/// admission counted in Redis and no round trip per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_approximate_sidecars_admit_within_the_bound() {
    let redis = RedisServer::start().await;
    let up = Upstream::start("app").await;
    let cfg = format!(
        "redis:\n  url: {}\n  timeout_ms: 500\n  expected_replicas: 3\nlimits:\n  - name: approx\n    key: []\n    max_requests: 300\n    window_seconds: 20\n    strategy: fixed_window\n    scope: global\n    mode: approximate\n    sync_interval_ms: 100\n",
        redis.url()
    );
    let fleet = [
        Sidecar::start(up.port, &cfg).await,
        Sidecar::start(up.port, &cfg).await,
        Sidecar::start(up.port, &cfg).await,
    ];
    for fg in &fleet {
        on_redis(fg, "approx").await;
    }
    // Inside one 20 s window of Redis's clock: if less than 15 s are left, wait for the next.
    eventually(
        Duration::from_secs(25),
        "the start of a 20 s window",
        || async { redis.time_ms().await % 20_000 < 5_000 },
    )
    .await;
    let window = redis.time_ms().await / 20_000;
    let calls_before = evalsha_calls(redis.port).await;
    // 10x the limit, all three at once.
    let runs = fleet.iter().map(|fg| drive(fg.port, 1000, 8));
    let results = futures_util::future::join_all(runs).await;
    let admitted: u64 = results.iter().map(|r| r.0).sum();
    let rejected: u64 = results.iter().map(|r| r.1).sum();
    assert_eq!(admitted + rejected, 3000);
    assert_eq!(up.stats.requests.load(Ordering::Relaxed), admitted);
    let bound = 300 + 3 * 300u64.div_ceil(3);
    assert!(
        (300..=bound).contains(&admitted),
        "{admitted} admitted across the fleet for a limit of 300 (bound {bound})"
    );
    // Every admission reaches Redis's count within a few syncs.
    let key = limit_key(redis.port, "approx").await;
    assert_eq!(
        redis.time_ms().await / 20_000,
        window,
        "the load did not fit in one window; rerun"
    );
    assert_eq!(
        count_reaches(redis.port, &key, admitted).await,
        admitted,
        "counted once each"
    );
    // Decisions are local: the script ran once per sync (and once per sidecar for the key's
    // first request), not once per request.
    let calls = evalsha_calls(redis.port).await - calls_before;
    assert!(
        calls < 3000 / 4,
        "{calls} script calls for 3000 requests: decisions went to Redis"
    );
}

/// `EVALSHA` calls the server has run (`INFO commandstats`).
async fn evalsha_calls(port: u16) -> u64 {
    let info = command(port, &["INFO", "commandstats"]).await.unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|v| v.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// An approximate limit's sync survives a Redis that lost its scripts (a restart, `SCRIPT
/// FLUSH`): the counts arrive all the same, loaded and sent again, and none is counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approximate_sync_reloads_a_flushed_script_and_counts_once() {
    let redis = RedisServer::start().await;
    let up = Upstream::start("app").await;
    let cfg = format!(
        "redis:\n  url: {}\n  expected_replicas: 1\nlimits:\n  - name: flushed\n    key: []\n    max_requests: 100000\n    window_seconds: 3600\n    strategy: fixed_window\n    scope: global\n    mode: approximate\n    sync_interval_ms: 1000\n",
        redis.url()
    );
    let fg = Sidecar::start(up.port, &cfg).await;
    on_redis(&fg, "flushed").await;
    let (ok, _) = drive(fg.port, 20, 2).await;
    assert_eq!(ok, 20);
    let key = limit_key(redis.port, "flushed").await;
    assert_eq!(count_reaches(redis.port, &key, 20).await, 20);
    // Views stay fresh for three 1 s intervals, so the next 30 are decided on the sidecar
    // and only its sync meets the flushed server.
    let refused = noscript_errors(redis.port).await;
    let calls = evalsha_calls(redis.port).await;
    assert!(command(redis.port, &["SCRIPT", "FLUSH"])
        .await
        .unwrap()
        .starts_with("+OK"));
    let (ok, _) = drive(fg.port, 30, 2).await;
    assert_eq!(ok, 30);
    assert!(
        evalsha_calls(redis.port).await - calls <= 2,
        "decided on the sidecar, not in Redis"
    );
    assert_eq!(count_reaches(redis.port, &key, 50).await, 50);
    assert!(
        noscript_errors(redis.port).await > refused,
        "the flush was met (by the sync, or the prober first) and the script reloaded"
    );
    // Nothing was owed twice: counts pushed again would ride with the next sync, so one more
    // request, once counted, leaves the count at exactly 51.
    let (ok, _) = drive(fg.port, 1, 1).await;
    assert_eq!(ok, 1);
    assert_eq!(count_reaches(redis.port, &key, 51).await, 51);
}

/// `NOSCRIPT` errors the server has answered (`INFO errorstats`).
async fn noscript_errors(port: u16) -> u64 {
    let info = command(port, &["INFO", "errorstats"]).await.unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("errorstat_NOSCRIPT:count="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}
