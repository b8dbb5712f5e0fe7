//! Rate-limit response fields: the IETF draft's `RateLimit-Policy` / `RateLimit`
//! (draft-ietf-httpapi-ratelimit-headers-11: structured-field lists of `"name";q=..;w=..` and
//! `"name";r=..;t=..`), the legacy `X-RateLimit-*` trio, and `Retry-After`. Built for every
//! response a limit describes, so what does not change per response is [`prepare`]d once per
//! config snapshot and the rest is assembled without `core::fmt`.

use std::borrow::Cow;
use std::sync::LazyLock;
use std::time::Duration;

use floodgate_config::{Limit, OnAdmitted};
use http::HeaderValue;

use crate::limiter::Outcome;

// Names as static strings, not `HeaderName`s: pingora turns every name into its
// case-preserving form and parses it back, and from a `&'static str` that costs one
// allocation fewer than from a custom `HeaderName` (measured with callgrind).
/// `RateLimit-Policy`.
pub const RATELIMIT_POLICY: &str = "ratelimit-policy";
/// `RateLimit`.
pub const RATELIMIT: &str = "ratelimit";
/// `X-RateLimit-Limit`.
pub const X_RATELIMIT_LIMIT: &str = "x-ratelimit-limit";
/// `X-RateLimit-Remaining`.
pub const X_RATELIMIT_REMAINING: &str = "x-ratelimit-remaining";
/// `X-RateLimit-Reset`.
pub const X_RATELIMIT_RESET: &str = "x-ratelimit-reset";

/// `n` in decimal, in a stack buffer: the digits are `buf[start..]` of `(buf, start)`.
fn digits(mut n: u64) -> ([u8; 20], usize) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    (buf, i)
}

/// A header value made of `parts` in order. Assembled on the stack, so the value's own
/// buffer is the only allocation (a `String` grown and then converted makes two); this runs
/// for every response a limit describes.
fn value_of(parts: &[&[u8]]) -> Option<HeaderValue> {
    let mut buf = [0u8; 192];
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len > buf.len() {
        return HeaderValue::from_bytes(&parts.concat()).ok();
    }
    let mut at = 0;
    for p in parts {
        buf[at..at + p.len()].copy_from_slice(p);
        at += p.len();
    }
    HeaderValue::from_bytes(&buf[..at]).ok()
}

/// Integers below this come from a table of ready values: `X-RateLimit-Reset` and, near the
/// end of a quota, `X-RateLimit-Remaining` nearly always are.
const SMALL: usize = 1024;

/// `0..SMALL` as static header values. Their text (the numbers written one after another, 2.9
/// KB) is allocated once and kept for the life of the process, so handing one out copies a
/// pointer: no allocation, and no reference count that every thread would write to. The table
/// itself is 40 KiB.
static SMALL_VALUES: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    let text: String = (0..SMALL).map(|n| n.to_string()).collect();
    let text: &'static str = Box::leak(text.into_boxed_str());
    let mut at = 0;
    (0..SMALL)
        .map(|n| {
            let len = n.checked_ilog10().map_or(1, |l| l as usize + 1);
            let v = HeaderValue::from_static(&text[at..at + len]);
            at += len;
            v
        })
        .collect()
});

/// `n` as a header value.
pub fn int_value(n: u64) -> HeaderValue {
    match usize::try_from(n).ok().and_then(|i| SMALL_VALUES.get(i)) {
        Some(v) => v.clone(),
        None => {
            let (d, i) = digits(n);
            // Digits are always a valid value; the fallback is never taken.
            value_of(&[&d[i..]]).unwrap_or_else(|| HeaderValue::from(n))
        }
    }
}

/// The parts of a limit window's fields that are the same on every response it describes,
/// made once per config snapshot ([`prepare`]) instead of per response: `RateLimit-Policy`
/// and `X-RateLimit-Limit` whole, and the start of `RateLimit` (the quoted, escaped name).
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The quota (requests per window) these values state.
    limit: u64,
    /// The window's length.
    window: Duration,
    policy: Option<HeaderValue>,
    limit_value: HeaderValue,
    /// `"name";r=`.
    current_prefix: Box<[u8]>,
}

impl Prepared {
    /// The values for a window of `limit` requests per `window` of the limit `name`.
    pub fn new(name: &str, limit: u64, window: Duration) -> Self {
        let name = sf_escape(name);
        let (q, qi) = digits(limit);
        let (w, wi) = digits(ceil_secs(window));
        Self {
            limit,
            window,
            policy: value_of(&[b"\"", name.as_bytes(), b"\";q=", &q[qi..], b";w=", &w[wi..]]),
            limit_value: int_value(limit),
            current_prefix: [b"\"", name.as_bytes(), b"\";r="]
                .concat()
                .into_boxed_slice(),
        }
    }

    /// Whether these values describe `o`: same quota, same window.
    pub fn describes(&self, o: &Outcome) -> bool {
        self.limit == o.limit && self.window == o.window
    }

    /// `RateLimit-Policy`; `None` if the name cannot be in a header value.
    pub fn policy(&self) -> Option<HeaderValue> {
        self.policy.clone()
    }

    /// `X-RateLimit-Limit`.
    pub fn limit(&self) -> HeaderValue {
        self.limit_value.clone()
    }

    /// `RateLimit` for `o`; `None` if the name cannot be in a header value.
    pub fn current(&self, o: &Outcome) -> Option<HeaderValue> {
        let (r, ri) = digits(o.remaining);
        let (t, ti) = digits(ceil_secs(o.reset));
        value_of(&[&self.current_prefix, &r[ri..], b";t=", &t[ti..]])
    }
}

/// The prepared values for every window of each of `defs`, one per distinct quota and window:
/// for a global limit, its definition (what Redis decides with) and the local share it falls
/// back to.
pub fn prepare<'a>(defs: impl IntoIterator<Item = &'a Limit>) -> Box<[Prepared]> {
    let mut out: Vec<Prepared> = Vec::new();
    for def in defs {
        let windows = std::iter::once((def.max_requests.get(), def.window))
            .chain(def.extra_windows.iter().map(|(m, w)| (m.get(), *w)));
        for (max, window) in windows {
            if !out.iter().any(|p| p.limit == max && p.window == window) {
                out.push(Prepared::new(&def.name, max, window));
            }
        }
    }
    out.into_boxed_slice()
}

/// The values for `o` of the limit `name`: the one of `prepared` that describes it, or else
/// (an outcome no window of the snapshot states; not expected) made now.
pub fn lookup<'a>(prepared: &'a [Prepared], name: &str, o: &Outcome) -> Cow<'a, Prepared> {
    match prepared.iter().find(|p| p.describes(o)) {
        Some(p) => Cow::Borrowed(p),
        None => Cow::Owned(Prepared::new(name, o.limit, o.window)),
    }
}

/// Whether an admitted response carries the rate-limit fields: always, never, or once the
/// quota left is below `near_limit_ratio` of the limit (a client close to it learns so; one
/// far from it is not sent five fields per response it has no use for).
pub fn on_admitted(mode: OnAdmitted, near_limit_ratio: f64, o: &Outcome) -> bool {
    match mode {
        OnAdmitted::Always => true,
        OnAdmitted::Never => false,
        OnAdmitted::NearLimit => (o.remaining as f64) < near_limit_ratio * o.limit as f64,
    }
}

/// Whole seconds, rounded up: a client that waits this long will not be early.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `Retry-After` seconds: the wait rounded up, plus `jitter_secs` so that clients rejected
/// together do not all come back in the same second.
pub fn retry_after(o: &Outcome, jitter_secs: u64) -> u64 {
    ceil_secs(o.retry_after).max(1) + jitter_secs
}

/// Escapes a name for a structured-field string (`\` and `"`).
fn sf_escape(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains(['"', '\\']) {
        s.replace('\\', "\\\\").replace('"', "\\\"").into()
    } else {
        s.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_limit_sends_the_fields_once_less_than_the_ratio_of_the_quota_is_left() {
        let o = |remaining| Outcome {
            allowed: true,
            limit: 100,
            remaining,
            reset: Duration::from_secs(60),
            retry_after: Duration::ZERO,
            window: Duration::from_secs(60),
        };
        let near = |r| on_admitted(OnAdmitted::NearLimit, 0.2, &o(r));
        assert!(!near(99) && !near(20), "20 of 100 left is not below 0.2");
        assert!(near(19) && near(0));
        assert!(on_admitted(OnAdmitted::Always, 0.2, &o(99)));
        assert!(!on_admitted(OnAdmitted::Never, 0.2, &o(0)));
        assert!(
            on_admitted(OnAdmitted::NearLimit, 1.0, &o(99)),
            "1.0: all but a full quota"
        );
    }

    /// The fields for an outcome no prepared value describes, made per response.
    fn policy_value(name: &str, o: &Outcome) -> Option<HeaderValue> {
        lookup(&[], name, o).policy()
    }

    /// See `policy_value`.
    fn current_value(name: &str, o: &Outcome) -> Option<HeaderValue> {
        lookup(&[], name, o).current(o)
    }

    /// 100 per minute, 42 left, 29.1 s to go.
    fn sample() -> Outcome {
        Outcome {
            allowed: true,
            limit: 100,
            remaining: 42,
            reset: Duration::from_millis(29_100),
            retry_after: Duration::ZERO,
            window: Duration::from_secs(60),
        }
    }

    #[test]
    fn ready_made_values_equal_the_ones_built_per_response() {
        let o = sample();
        let long = "n".repeat(300); // past the stack buffer: built on the heap instead
        for name in ["api", "a\"b\\c", long.as_str()] {
            let f = Prepared::new(name, 100, Duration::from_secs(60));
            assert!(f.describes(&o));
            assert_eq!(f.policy(), policy_value(name, &o));
            assert_eq!(f.current(&o), current_value(name, &o));
            assert_eq!(f.limit(), "100");
        }
        assert_eq!(
            Prepared::new("api", 100, Duration::from_secs(60))
                .current(&o)
                .unwrap(),
            "\"api\";r=42;t=30"
        );
        assert_eq!(
            policy_value(&long, &o).unwrap().len(),
            long.len() + "\"\";q=100;w=60".len()
        );
        // The local share a global limit falls back to is another quota: not described.
        let share = Outcome { limit: 50, ..o };
        assert!(!Prepared::new("api", 100, Duration::from_secs(60)).describes(&share));
        let other_window = Outcome {
            window: Duration::from_secs(1),
            ..o
        };
        assert!(!Prepared::new("api", 100, Duration::from_secs(60)).describes(&other_window));
    }

    #[test]
    fn prepared_for_every_window_of_a_limit_and_its_share() {
        use floodgate_config::{FailureMode, Scope, Strategy};
        use std::num::NonZeroU64;
        let n = |v| NonZeroU64::new(v).unwrap();
        let def = Limit {
            name: "g".into(),
            routes: None,
            key: vec![],
            max_requests: n(40),
            window: Duration::from_secs(1),
            strategy: Strategy::FixedWindow,
            scope: Scope::Global,
            shadow: false,
            extra_windows: vec![(n(400), Duration::from_secs(60))],
            failure_mode: FailureMode::Open,
            mode: floodgate_config::Mode::Exact,
            sync_interval: Duration::from_millis(100),
        };
        let share = Limit {
            max_requests: n(10),
            ..def.clone()
        };
        let all = prepare([&def, &share]);
        assert_eq!(
            all.len(),
            3,
            "the share's minute window is the definition's: once"
        );
        let policy = |limit, secs| {
            let o = Outcome {
                limit,
                window: Duration::from_secs(secs),
                ..sample()
            };
            // Only what was prepared: `None` when the values had to be made now.
            match lookup(&all, "g", &o) {
                Cow::Borrowed(p) => p.policy(),
                Cow::Owned(_) => None,
            }
        };
        assert_eq!(policy(40, 1).unwrap(), "\"g\";q=40;w=1");
        assert_eq!(policy(400, 60).unwrap(), "\"g\";q=400;w=60");
        assert_eq!(policy(10, 1).unwrap(), "\"g\";q=10;w=1");
        assert_eq!(policy(20, 1), None, "a quota no window has");
        assert_eq!(policy(40, 60), None, "a window with another quota");
    }

    #[test]
    fn integers_from_the_table_and_past_it() {
        for n in (0..1100).chain([99_999, u64::MAX]) {
            assert_eq!(int_value(n), n.to_string().as_str(), "{n}");
        }
    }

    #[test]
    fn fields_follow_the_draft() {
        let o = sample();
        assert_eq!(policy_value("api", &o).unwrap(), "\"api\";q=100;w=60");
        assert_eq!(current_value("api", &o).unwrap(), "\"api\";r=42;t=30");
        assert_eq!(current_value("a\"b", &o).unwrap(), "\"a\\\"b\";r=42;t=30");
        let big = Outcome {
            remaining: u64::MAX,
            reset: Duration::ZERO,
            ..o
        };
        assert_eq!(
            current_value("x", &big).unwrap(),
            format!("\"x\";r={};t=0", u64::MAX).as_str()
        );
        let denied = Outcome {
            allowed: false,
            retry_after: Duration::from_millis(1500),
            ..o
        };
        assert_eq!(retry_after(&denied, 0), 2);
        assert_eq!(
            retry_after(
                &Outcome {
                    retry_after: Duration::ZERO,
                    ..denied
                },
                1
            ),
            2
        );
    }
}
