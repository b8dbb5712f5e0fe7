//! Rate-limit response fields: the IETF draft's `RateLimit-Policy` / `RateLimit`
//! (draft-ietf-httpapi-ratelimit-headers-11: structured-field lists of `"name";q=..;w=..` and
//! `"name";r=..;t=..`), the legacy `X-RateLimit-*` trio, and `Retry-After`.

use std::time::Duration;

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

/// Appends `n` in decimal without going through `core::fmt` (this runs on every limited
/// route's response).
fn push_u64(out: &mut String, mut n: u64) {
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
    out.extend(buf[i..].iter().map(|b| char::from(*b)));
}

/// `RateLimit-Policy` as a header value.
pub fn policy_value(name: &str, o: &Outcome) -> Option<HeaderValue> {
    let mut s = String::with_capacity(name.len() + 32);
    s.push('"');
    s.push_str(&sf_escape(name));
    s.push_str("\";q=");
    push_u64(&mut s, o.limit);
    s.push_str(";w=");
    push_u64(&mut s, ceil_secs(o.window));
    HeaderValue::try_from(s).ok()
}

/// `RateLimit` as a header value.
pub fn current_value(name: &str, o: &Outcome) -> Option<HeaderValue> {
    let mut s = String::with_capacity(name.len() + 32);
    s.push('"');
    s.push_str(&sf_escape(name));
    s.push_str("\";r=");
    push_u64(&mut s, o.remaining);
    s.push_str(";t=");
    push_u64(&mut s, ceil_secs(o.reset));
    HeaderValue::try_from(s).ok()
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
    fn fields_follow_the_draft() {
        let o = Outcome {
            allowed: true,
            limit: 100,
            remaining: 42,
            reset: Duration::from_millis(29_100),
            retry_after: Duration::ZERO,
            window: Duration::from_secs(60),
        };
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
