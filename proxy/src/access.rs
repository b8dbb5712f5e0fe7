//! The access log: one line per request, text or JSON, in the same shape the `tracing` lines
//! have, but formatted here into one reused buffer and handed to the log writer thread in one
//! write. Through `tracing-subscriber` the line cost ~15–20% of the proxy's throughput at
//! saturation (event dispatch, field visitors, per-field formatting); this way it is one
//! buffer fill and one channel send.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use floodgate_config::LogFormat;
use tracing_appender::non_blocking::NonBlocking;

static SINK: OnceLock<(NonBlocking, LogFormat)> = OnceLock::new();

thread_local! {
    static LINE: RefCell<(String, Option<NonBlocking>)> = const { RefCell::new((String::new(), None)) };
    /// The date-and-time part of the last timestamp, valid for one second: most lines reuse it.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Where access lines go (the log writer thread) and in which format. Set once at start-up.
pub fn init(writer: NonBlocking, format: LogFormat) {
    let _ = SINK.set((writer, format));
}

/// One request's line.
pub struct Entry<'a> {
    /// Client address.
    pub client: Option<IpAddr>,
    /// The listener it came in on; `None` in the one-listener form (no field).
    pub listener: Option<&'a str>,
    /// Method.
    pub method: &'a str,
    /// Path (no query).
    pub path: &'a str,
    /// Matched route.
    pub route: &'a str,
    /// Status sent (0: none).
    pub status: u16,
    /// Time to the end of the response.
    pub duration: Duration,
    /// Why the sidecar answered itself, or "".
    pub reason: &'a str,
    /// The error that ended the request, if any.
    pub error: Option<&'a dyn std::fmt::Display>,
}

/// Writes `entry` if an access log sink is set. Never blocks on I/O: the writer thread does it.
pub fn log(entry: &Entry<'_>) {
    let Some((sink, format)) = SINK.get() else {
        return;
    };
    LINE.with(|cell| {
        let Ok(mut cell) = cell.try_borrow_mut() else {
            return;
        };
        let (buf, writer) = &mut *cell;
        buf.clear();
        match format {
            LogFormat::Text => text(buf, entry),
            LogFormat::Json => json(buf, entry),
        }
        let w = writer.get_or_insert_with(|| sink.clone());
        let _ = w.write_all(buf.as_bytes());
    });
}

fn text(buf: &mut String, e: &Entry<'_>) {
    timestamp(buf, SystemTime::now());
    buf.push_str("  INFO access: client=");
    if let Some(ip) = e.client {
        let _ = write!(buf, "{ip}");
    }
    if let Some(l) = e.listener {
        buf.push_str(" listener=");
        quoted(buf, l);
    }
    buf.push_str(" method=");
    quoted(buf, e.method);
    buf.push_str(" path=");
    quoted(buf, e.path);
    buf.push_str(" route=");
    quoted(buf, e.route);
    buf.push_str(" status=");
    push_num(buf, u64::from(e.status), 1);
    buf.push_str(" duration_ms=");
    millis(buf, e.duration);
    buf.push_str(" reason=");
    quoted(buf, e.reason);
    buf.push_str(" error=");
    match e.error {
        Some(err) => {
            let _ = write!(buf, "{:?}", err.to_string());
        }
        None => buf.push_str("\"\""),
    }
    buf.push('\n');
}

fn json(buf: &mut String, e: &Entry<'_>) {
    buf.push_str("{\"timestamp\":\"");
    timestamp(buf, SystemTime::now());
    buf.push_str("\",\"level\":\"INFO\",\"target\":\"access\",\"client\":\"");
    if let Some(ip) = e.client {
        let _ = write!(buf, "{ip}");
    }
    buf.push('"');
    if let Some(l) = e.listener {
        buf.push_str(",\"listener\":");
        json_str(buf, l);
    }
    buf.push_str(",\"method\":");
    json_str(buf, e.method);
    buf.push_str(",\"path\":");
    json_str(buf, e.path);
    buf.push_str(",\"route\":");
    json_str(buf, e.route);
    buf.push_str(",\"status\":");
    push_num(buf, u64::from(e.status), 1);
    buf.push_str(",\"duration_ms\":");
    millis(buf, e.duration);
    buf.push_str(",\"reason\":");
    json_str(buf, e.reason);
    buf.push_str(",\"error\":");
    match e.error {
        Some(err) => json_str(buf, &err.to_string()),
        None => buf.push_str("\"\""),
    }
    buf.push_str("}\n");
}

/// True when `s` can go between quotes as it is, in text and in JSON.
fn plain(s: &str) -> bool {
    s.bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x7f)
}

/// `s` quoted as `{:?}` would, without `core::fmt` for the common plain case.
fn quoted(buf: &mut String, s: &str) {
    if plain(s) {
        buf.push('"');
        buf.push_str(s);
        buf.push('"');
    } else {
        let _ = write!(buf, "{s:?}");
    }
}

/// A JSON string literal; anything but plain ASCII is escaped by serde_json (paths may hold
/// any byte pingora accepted).
fn json_str(buf: &mut String, s: &str) {
    if plain(s) {
        buf.push('"');
        buf.push_str(s);
        buf.push('"');
        return;
    }
    match serde_json::to_string(s) {
        Ok(q) => buf.push_str(&q),
        Err(_) => buf.push_str("\"\""),
    }
}

/// `n` in decimal, zero-padded to `width` digits.
fn push_num(buf: &mut String, mut n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut i = digits.len();
    while n > 0 || digits.len() - i < width.max(1) {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    buf.extend(digits[i..].iter().map(|d| char::from(*d)));
}

/// Milliseconds with three decimals (microsecond precision), e.g. `1.500`.
fn millis(buf: &mut String, d: Duration) {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    push_num(buf, micros / 1000, 1);
    buf.push('.');
    push_num(buf, micros % 1000, 3);
}

/// RFC 3339 UTC with microseconds, e.g. `2026-11-28T14:24:58.702499Z`.
fn timestamp(buf: &mut String, t: SystemTime) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|cell| {
        let Ok(mut cell) = cell.try_borrow_mut() else {
            return;
        };
        let (cached, text) = &mut *cell;
        if *cached != secs {
            let (days, rem) = (secs / 86_400, secs % 86_400);
            let (y, m, d) = civil_from_days(days);
            text.clear();
            let _ = write!(
                text,
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.",
                rem / 3600,
                rem % 3600 / 60,
                rem % 60
            );
            *cached = secs;
        }
        buf.push_str(text);
    });
    push_num(buf, u64::from(since.subsec_micros()), 6);
    buf.push('Z');
}

/// Days since 1970-01-01 to (year, month, day): Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let mut s = String::new();
        timestamp(&mut s, UNIX_EPOCH);
        assert_eq!(s, "1970-01-01T00:00:00.000000Z");
        s.clear();
        // 2026-11-28T14:24:58.702499Z
        timestamp(
            &mut s,
            UNIX_EPOCH + Duration::new(1_795_875_898, 702_499_000),
        );
        assert_eq!(s, "2026-11-28T14:24:58.702499Z");
        s.clear();
        timestamp(&mut s, UNIX_EPOCH + Duration::from_secs(951_782_400)); // leap day 2000
        assert_eq!(s, "2000-02-29T00:00:00.000000Z");
    }

    fn entry() -> Entry<'static> {
        Entry {
            client: "10.0.0.7".parse().ok(),
            listener: None,
            method: "GET",
            path: "/a\"b\\c",
            route: "api",
            status: 429,
            duration: Duration::from_micros(1500),
            reason: "rate_limited",
            error: None,
        }
    }

    #[test]
    fn text_line_quotes_what_could_break_it() {
        let mut s = String::new();
        text(&mut s, &entry());
        let tail = s.split_once("  INFO access: ").unwrap().1;
        assert_eq!(
            tail,
            "client=10.0.0.7 method=\"GET\" path=\"/a\\\"b\\\\c\" route=\"api\" status=429 duration_ms=1.500 reason=\"rate_limited\" error=\"\"\n"
        );
    }

    #[test]
    fn named_listeners_put_the_listener_on_the_line() {
        let e = Entry {
            listener: Some("grpc"),
            ..entry()
        };
        let mut s = String::new();
        text(&mut s, &e);
        assert!(
            s.contains("access: client=10.0.0.7 listener=\"grpc\" method=\"GET\""),
            "{s}"
        );
        s.clear();
        json(&mut s, &e);
        let v: serde_json::Value = serde_json::from_str(s.trim_end()).unwrap();
        assert_eq!(v["listener"], "grpc");
        assert_eq!(v["client"], "10.0.0.7");
        s.clear();
        json(&mut s, &entry());
        assert!(!s.contains("listener"), "{s}");
    }

    #[test]
    fn json_line_parses_back() {
        let mut s = String::new();
        json(&mut s, &entry());
        let v: serde_json::Value = serde_json::from_str(s.trim_end()).unwrap();
        assert_eq!(v["target"], "access");
        assert_eq!(v["path"], "/a\"b\\c");
        assert_eq!(v["status"], 429);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["client"], "10.0.0.7");
    }

    #[test]
    fn numbers_and_quoting_match_the_formatter() {
        for (n, w) in [(0u64, 1usize), (7, 3), (42, 6), (1234567, 1), (u64::MAX, 1)] {
            let mut s = String::new();
            push_num(&mut s, n, w);
            assert_eq!(s, format!("{n:0w$}"));
        }
        let mut s = String::new();
        millis(&mut s, Duration::from_nanos(12_345_678));
        assert_eq!(s, "12.345");
        for raw in ["/plain/path", "/q\"uote", "/tab\t", "/é"] {
            let mut s = String::new();
            quoted(&mut s, raw);
            assert_eq!(s, format!("{raw:?}"));
            let mut j = String::new();
            json_str(&mut j, raw);
            assert_eq!(serde_json::from_str::<String>(&j).unwrap(), raw);
        }
    }
}
