//! The global limit's Redis script (`proxy/src/global/limit.lua`), run with `EVAL` on a real
//! `redis-server`: each strategy's decisions, several windows on one key, and the key's
//! expiry. The sidecar tests drive fixed windows end to end; these pin down the arithmetic of
//! every strategy, with the window state set directly where a test needs a past window.

use crate::redis_support::*;

const SCRIPT: &str = include_str!("../../proxy/src/global/limit.lua");

/// The script's answer: "allowed window remaining reset_ms retry_after_ms [least]" (`least`
/// only with several windows; it is `remaining` with one).
#[derive(Debug)]
struct Reply {
    allowed: bool,
    window: u64,
    remaining: u64,
    reset_ms: u64,
    retry_ms: u64,
    /// The fewest requests left in any window (0 on a rejection).
    least: u64,
}

async fn decide(r: &RedisServer, key: &str, kind: &str, windows: &[(u64, u64)]) -> Reply {
    let mut args = vec![
        "EVAL".to_string(),
        SCRIPT.to_string(),
        "1".into(),
        key.into(),
        kind.into(),
    ];
    for (max, ms) in windows {
        args.push(max.to_string());
        args.push(ms.to_string());
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (raw, f) = fields(r, &argv).await;
    assert_eq!(
        f.len(),
        if windows.len() > 1 { 6 } else { 5 },
        "reply {raw:?}"
    );
    Reply {
        allowed: f[0] == 1,
        window: f[1],
        remaining: f[2],
        reset_ms: f[3],
        retry_ms: f[4],
        least: f.get(5).copied().unwrap_or(f[2]),
    }
}

/// Runs `argv` and reads the script's reply, a string of integers: the raw reply and them.
async fn fields(r: &RedisServer, argv: &[&str]) -> (String, Vec<u64>) {
    let raw = command(r.port, argv).await.unwrap();
    let text = raw
        .lines()
        .nth(1)
        .unwrap_or_else(|| panic!("reply {raw:?}"));
    let f = text
        .split(' ')
        .map(|v| v.parse().unwrap_or_else(|_| panic!("reply {raw:?}")))
        .collect();
    (raw, f)
}

/// An integer reply (`:n`) or an integer in a bulk string, as a number.
async fn int(r: &RedisServer, args: &[&str]) -> i64 {
    let raw = command(r.port, args).await.unwrap();
    let v = raw
        .strip_prefix(':')
        .map(str::trim)
        .or_else(|| raw.lines().nth(1))
        .unwrap_or_else(|| panic!("{args:?}: {raw:?}"));
    v.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{args:?}: {raw:?}"))
}

const HOUR: u64 = 3_600_000;

#[tokio::test]
async fn fixed_window_admits_its_maximum_then_rejects_until_the_window_ends() {
    let r = RedisServer::start().await;
    for want in [2, 1, 0] {
        let d = decide(&r, "fg:{f}", "f", &[(3, HOUR)]).await;
        assert!(d.allowed && d.remaining == want && d.window == 1, "{d:?}");
        assert!(d.reset_ms > 0 && d.reset_ms <= HOUR, "{d:?}");
    }
    let d = decide(&r, "fg:{f}", "f", &[(3, HOUR)]).await;
    assert!(!d.allowed && d.remaining == 0, "{d:?}");
    // A fixed window's client waits for the window to end.
    assert!(d.retry_ms == d.reset_ms && d.retry_ms > 0, "{d:?}");
    assert_eq!(
        int(&r, &["HGET", "fg:{f}", "c1"]).await,
        3,
        "rejections are not counted"
    );
    let ttl = int(&r, &["PTTL", "fg:{f}"]).await;
    assert!(ttl > 0 && ttl <= 2 * HOUR as i64, "expiry {ttl}");
}

/// A window length for which Redis's clock is between 35% and 65% into the current window,
/// so that the test's own few milliseconds cannot cross into the next one.
fn mid_window(now: u64) -> u64 {
    (600_000..)
        .find(|w| (35..=65).contains(&(now % w * 100 / w)))
        .unwrap()
}

#[tokio::test]
async fn sliding_window_weighs_the_previous_window_by_what_is_left_of_it() {
    let r = RedisServer::start().await;
    let before = r.time_ms().await;
    let w = mid_window(before);
    let idx = before / w;
    // The previous window used all 10.
    let prev = (idx - 1).to_string();
    command(
        r.port,
        &["HSET", "fg:{s}", "w1", &prev, "c1", "10", "p1", "0"],
    )
    .await
    .unwrap();
    let mut admitted = 0;
    let mut last = None;
    for _ in 0..12 {
        let d = decide(&r, "fg:{s}", "s", &[(10, w)]).await;
        admitted += u64::from(d.allowed);
        last = Some(d);
    }
    let after = r.time_ms().await;
    assert_eq!(after / w, idx, "the window changed under the test");
    // Request j+1 fits while 10 * (1 - into/w) + j + 1 <= 10, that is j + 1 <= 10 * into / w.
    let fits = |t: u64| 10 * (t % w) / w;
    assert!(
        (fits(before)..=fits(after)).contains(&admitted),
        "{admitted} admitted at {}% into the window",
        (before % w) * 100 / w
    );
    let last = last.unwrap();
    assert!(!last.allowed, "{last:?}");
    // The next request fits once enough of the previous window has slid out, before this
    // window ends.
    assert!(
        last.retry_ms > 0 && last.retry_ms <= last.reset_ms,
        "{last:?}"
    );
    // The first admitted request started the window: the old count moved to `p1`, and the
    // key's expiry was renewed from then.
    assert_eq!(int(&r, &["HGET", "fg:{s}", "w1"]).await, idx as i64);
    assert_eq!(int(&r, &["HGET", "fg:{s}", "p1"]).await, 10);
    assert_eq!(int(&r, &["HGET", "fg:{s}", "c1"]).await, admitted as i64);
    let ttl = int(&r, &["PTTL", "fg:{s}"]).await;
    assert!(ttl > 0 && ttl <= 2 * w as i64, "expiry {ttl}");
}

#[tokio::test]
async fn sliding_window_forgets_windows_older_than_the_previous_one() {
    let r = RedisServer::start().await;
    let now = r.time_ms().await;
    let w = mid_window(now);
    let old = (now / w - 2).to_string();
    command(
        r.port,
        &["HSET", "fg:{o}", "w1", &old, "c1", "10", "p1", "10"],
    )
    .await
    .unwrap();
    for want in (0..10).rev() {
        let d = decide(&r, "fg:{o}", "s", &[(10, w)]).await;
        assert!(d.allowed && d.remaining == want, "{d:?}");
    }
    assert!(!decide(&r, "fg:{o}", "s", &[(10, w)]).await.allowed);
}

#[tokio::test]
async fn token_bucket_spaces_requests_and_says_when_the_next_one_fits() {
    let r = RedisServer::start().await;
    // 5 per hour: one every 720 s, a burst of 5.
    for want in [4, 3, 2, 1, 0] {
        let d = decide(&r, "fg:{t}", "t", &[(5, HOUR)]).await;
        assert!(d.allowed && d.remaining == want, "{d:?}");
    }
    let d = decide(&r, "fg:{t}", "t", &[(5, HOUR)]).await;
    assert!(!d.allowed, "{d:?}");
    assert!(
        (715_000..=720_000).contains(&d.retry_ms),
        "the next token is 720 s away: {d:?}"
    );
    let ttl = int(&r, &["PTTL", "fg:{t}"]).await;
    assert!(ttl > 0 && ttl <= 2 * HOUR as i64, "expiry {ttl}");
}

#[tokio::test]
async fn several_windows_decide_together_and_the_tightest_answers() {
    let r = RedisServer::start().await;
    // 5 per hour and 3 per two hours on one key, shortest first as the sidecar sends them.
    let windows = [(5, HOUR), (3, 2 * HOUR)];
    let d = decide(&r, "fg:{m}", "f", &windows).await;
    // 4 of 5 left against 2 of 3: the two-hour window has the least share left, and the
    // fewest requests left.
    assert!(d.allowed && d.window == 2 && d.remaining == 2, "{d:?}");
    assert_eq!(d.least, 2, "{d:?}");
    for _ in 0..2 {
        assert!(decide(&r, "fg:{m}", "f", &windows).await.allowed);
    }
    let d = decide(&r, "fg:{m}", "f", &windows).await;
    assert!(
        !d.allowed && d.window == 2,
        "the two-hour window rejects: {d:?}"
    );
    // Windows are charged shortest first, and the rejecting one stops the walk.
    assert_eq!(int(&r, &["HGET", "fg:{m}", "c1"]).await, 4);
    assert_eq!(int(&r, &["HGET", "fg:{m}", "c2"]).await, 3);
    let ttl = int(&r, &["PTTL", "fg:{m}"]).await;
    assert!(
        ttl > 2 * HOUR as i64 && ttl <= 4 * HOUR as i64,
        "expiry follows the longest window: {ttl}"
    );
}

#[tokio::test]
async fn counts_handed_over_from_the_fallback_fill_the_window_first() {
    let r = RedisServer::start().await;
    // Two windows; the sidecar admitted 6 (short window) and 8 (long window) locally.
    let mut args: Vec<String> = ["EVAL", SCRIPT, "1", "fg:{h:1}", "f+"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for v in ["10", "60000", "20", "3600000", "6", "8"] {
        args.push(v.into());
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let raw = command(r.port, &argv).await.unwrap();
    assert!(raw.contains("1 1 3 "), "admitted, 10 - 6 - 1 left: {raw:?}");
    assert_eq!(
        int(&r, &["HGET", "fg:{h:1}", "c2"]).await,
        9,
        "8 + this one"
    );
    // The hand-over is charged once: the next decisions go on from there.
    for left in (0..3).rev() {
        let d = decide(&r, "fg:{h:1}", "f", &[(10, 60_000), (20, 3_600_000)]).await;
        assert!(d.allowed);
        assert_eq!((d.window, d.remaining), (1, left));
    }
    let d = decide(&r, "fg:{h:1}", "f", &[(10, 60_000), (20, 3_600_000)]).await;
    assert!(
        !d.allowed,
        "10 in the window, 6 of them admitted in the fallback"
    );
    // Expiry follows the longest window (the counts are not mistaken for one).
    let ttl = int(&r, &["PTTL", "fg:{h:1}"]).await;
    assert!(ttl > 3_600_000, "{ttl}");
}

/// `mode: approximate`'s sync ('f=' / 's='): a sidecar's counts since its last sync are added
/// to every window, nothing is decided (even past the limit: those requests were admitted),
/// and the answer is the window with the fewest requests left.
#[tokio::test]
async fn an_approximate_sync_adds_its_counts_and_reports_the_fewest_left() {
    let r = RedisServer::start().await;
    let windows = [(10, 60_000), (100, HOUR)];
    let sync = |count: u64| {
        let mut args: Vec<String> = ["EVAL", SCRIPT, "1", "fg:{a:1}", "f="]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for (max, ms) in windows {
            args.push(max.to_string());
            args.push(ms.to_string());
        }
        for _ in windows {
            args.push(count.to_string());
        }
        let r = &r;
        async move {
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let raw = command(r.port, &argv).await.unwrap();
            let f: Vec<u64> = raw
                .lines()
                .nth(1)
                .unwrap()
                .split(' ')
                .map(|v| v.parse().unwrap())
                .collect();
            f
        }
    };
    // Seven admitted: 3 left of 10 (the minute), 93 of 100 (the hour).
    let f = sync(7).await;
    assert_eq!((f[0], f[1], f[2], f[5]), (1, 1, 3, 3), "{f:?}");
    assert_eq!(int(&r, &["HGET", "fg:{a:1}", "c2"]).await, 7);
    // A sync with nothing to push only reads.
    assert_eq!(sync(0).await[2], 3);
    assert_eq!(int(&r, &["HGET", "fg:{a:1}", "c1"]).await, 7);
    // Past the limit: counted all the same, nothing left, not "allowed".
    let f = sync(5).await;
    assert_eq!((f[0], f[2], f[5]), (0, 0, 0), "{f:?}");
    assert_eq!(int(&r, &["HGET", "fg:{a:1}", "c1"]).await, 12);
    // An exact decision on the same key sees the approximate counts.
    let d = decide(&r, "fg:{a:1}", "f", &windows).await;
    assert!(!d.allowed, "{d:?}");
    let ttl = int(&r, &["PTTL", "fg:{a:1}"]).await;
    assert!(
        ttl > HOUR as i64,
        "expiry follows the longest window: {ttl}"
    );
}

/// 'F' / 'S' with a count of requests (the sidecar's joined decisions of one key), expanded
/// as the sidecar reads it: for each request in turn, (allowed, remaining, retry_ms).
async fn decide_many(
    r: &RedisServer,
    key: &str,
    kind: &str,
    window: (u64, u64),
    hits: u64,
) -> Vec<(bool, u64, u64)> {
    let (max, ms) = (window.0.to_string(), window.1.to_string());
    let hits_text = format!("{hits:05}");
    let argv = ["EVAL", SCRIPT, "1", key, kind, &max, &ms, &hits_text];
    let (raw, f) = fields(r, &argv).await;
    assert_eq!(f.len(), 5, "reply {raw:?}");
    (0..hits)
        .map(|k| {
            if k < f[0] {
                (true, f[2] - k, 0)
            } else {
                (false, 0, f[4])
            }
        })
        .collect()
}

/// A count of requests in one call is answered as that many decisions made in turn: the
/// same admitted, the same left after each, the same retry for those turned away, the same
/// counts stored. Checked against a twin key decided one by one, from a fresh window and from
/// a sliding window whose previous window is full, in batches that fit, that straddle the
/// limit and that find it full.
#[tokio::test]
async fn a_count_of_requests_is_decided_as_that_many_in_turn() {
    let r = RedisServer::start().await;
    let now = r.time_ms().await;
    // Mid-window, and with the previous window's 10 weighing a fraction well away from a
    // whole number, so that the twin, decided milliseconds later, meets the same tests.
    let w = (600_000..)
        .find(|w| {
            let into = now % w;
            let weighed = 10.0 * (w - into) as f64 / *w as f64;
            (35..=65).contains(&(into * 100 / w)) && (0.2..=0.8).contains(&weighed.fract())
        })
        .unwrap();
    let prev = (now / w - 1).to_string();
    for (kind, counted, full_before) in [("f", "F", false), ("s", "S", false), ("s", "S", true)] {
        let (one, many) = (
            format!("fg:{{one{kind}{full_before}}}"),
            format!("fg:{{many{kind}{full_before}}}"),
        );
        if full_before {
            for key in [&one, &many] {
                command(r.port, &["HSET", key, "w1", &prev, "c1", "10", "p1", "0"])
                    .await
                    .unwrap();
            }
        }
        for hits in [4, 10, 3] {
            let together = decide_many(&r, &many, counted, (12, w), hits).await;
            let mut in_turn = Vec::new();
            for _ in 0..hits {
                let d = decide(&r, &one, kind, &[(12, w)]).await;
                in_turn.push((d.allowed, d.remaining, d.retry_ms));
            }
            for (k, (a, b)) in together.iter().zip(&in_turn).enumerate() {
                let what = format!("{kind} previous full {full_before}, {hits} at once, #{k}");
                assert_eq!((a.0, a.1), (b.0, b.1), "{what}: {together:?} {in_turn:?}");
                // The twin is decided a few milliseconds later.
                assert!(a.2.abs_diff(b.2) <= 100, "{what}: {together:?} {in_turn:?}");
            }
            // The same fields stored (a rejection writes nothing), and the expiry renewed alike.
            let stored = |key: String| {
                let r = &r;
                async move {
                    let mut fields: Vec<String> = command(r.port, &["HGETALL", &key])
                        .await
                        .unwrap()
                        .lines()
                        .skip(1)
                        .map(String::from)
                        .collect();
                    fields.retain(|l| !l.starts_with('$'));
                    fields
                }
            };
            assert_eq!(
                stored(many.clone()).await,
                stored(one.clone()).await,
                "{kind}: the same fields"
            );
            let (ttl_many, ttl_one) = (
                int(&r, &["PTTL", &many]).await,
                int(&r, &["PTTL", &one]).await,
            );
            assert!(
                ttl_many > 0 && ttl_many.abs_diff(ttl_one) <= 1000,
                "{kind}: expiry {ttl_many} {ttl_one}"
            );
        }
        assert_eq!(
            r.time_ms().await / w,
            now / w,
            "the window changed under the test"
        );
    }
}

/// A count of requests is refused for a limit of several windows (whose requests could be
/// turned away by different windows, each with its terms) and for a count below 1.
#[tokio::test]
async fn a_count_of_requests_needs_one_window_and_a_count() {
    let r = RedisServer::start().await;
    for argv in [
        &[
            "EVAL", SCRIPT, "1", "fg:{c}", "F", "5", "1000", "10", "2000", "00002",
        ][..],
        &["EVAL", SCRIPT, "1", "fg:{c}", "S", "5", "1000", "00000"],
        &["EVAL", SCRIPT, "1", "fg:{c}", "S", "5", "1000", "x"],
    ] {
        let raw = command(r.port, argv).await.unwrap();
        assert!(
            raw.starts_with("-a count of requests needs a limit of one window"),
            "{argv:?}: {raw:?}"
        );
    }
    assert_eq!(int(&r, &["EXISTS", "fg:{c}"]).await, 0, "nothing written");
}
