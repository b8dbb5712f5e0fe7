//! What adding the rate-limit fields to a proxied response costs inside pingora-http, apart
//! from the proxy: `bench/header_floor.sh` runs this under callgrind and prints instructions
//! per response for each variant.
//!
//! `header_floor VARIANT N` builds N responses the way pingora's HTTP/1 client builds an
//! upstream's (the five headers nginx sends, original case kept), adds VARIANT's fields and
//! writes each head as HTTP/1.1:
//! - `none`: nothing added (the baseline the others are compared with);
//! - `one-static`, `five-static`: one or five fields whose values are ready-made statics, the
//!   floor: only pingora's insert and the write remain;
//! - `two-floodgate`, `five-floodgate`: the IETF two or all five, made as Floodgate makes them
//!   (`headers::Prepared` and `headers::int_value`, as `shell.rs` calls them).

use std::hint::black_box;
use std::time::Duration;

use bytes::BytesMut;
use floodgate_policy::headers::{self, Prepared};
use floodgate_policy::Outcome;
use http::HeaderValue;
use pingora_http::ResponseHeader;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NAMES: [&str; 5] = [
    headers::RATELIMIT_POLICY,
    headers::RATELIMIT,
    headers::X_RATELIMIT_LIMIT,
    headers::X_RATELIMIT_REMAINING,
    headers::X_RATELIMIT_RESET,
];

/// An upstream's response head as pingora's HTTP/1 client builds it: sized to its headers.
fn upstream() -> pingora_error::Result<ResponseHeader> {
    let mut h = ResponseHeader::build(200, Some(5))?;
    for (k, v) in [
        ("Server", "nginx/1.22.1"),
        ("Date", "Sat, 28 Nov 2026 22:00:00 GMT"),
        ("Content-Type", "application/octet-stream"),
        ("Content-Length", "3"),
        ("Connection", "keep-alive"),
    ] {
        h.append_header(k, v)?;
    }
    Ok(h)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(variant), Some(n)) = (args.next(), args.next().and_then(|n| n.parse::<u64>().ok()))
    else {
        eprintln!("usage: header_floor none|one-static|five-static|two-floodgate|five-floodgate N");
        std::process::exit(2);
    };
    let prepared = Prepared::new("bench", 1_000_000_000, Duration::from_secs(60));
    let ready = HeaderValue::from_static("\"bench\";q=1000000000;w=60");
    for i in 0..n {
        let mut h = upstream()?;
        // Changes per response, as a real quota does.
        let o = Outcome {
            allowed: true,
            limit: 1_000_000_000,
            remaining: black_box(999_999_999 - i),
            reset: Duration::from_millis(black_box(29_100)),
            retry_after: Duration::ZERO,
            window: Duration::from_secs(60),
        };
        let mut add = |k: &'static str, v: HeaderValue| h.insert_header(k, v);
        match variant.as_str() {
            "none" => {}
            "one-static" => add(NAMES[0], ready.clone())?,
            "five-static" => {
                for k in NAMES {
                    add(k, ready.clone())?;
                }
            }
            "two-floodgate" | "five-floodgate" => {
                add(NAMES[0], prepared.policy().ok_or("policy")?)?;
                add(NAMES[1], prepared.current(&o).ok_or("current")?)?;
                if variant == "five-floodgate" {
                    add(NAMES[2], prepared.limit())?;
                    add(NAMES[3], headers::int_value(o.remaining))?;
                    add(NAMES[4], headers::int_value(headers::ceil_secs(o.reset)))?;
                }
            }
            other => {
                eprintln!("unknown variant {other}");
                std::process::exit(2);
            }
        }
        let mut buf = BytesMut::with_capacity(1024);
        h.header_to_h1_wire(&mut buf);
        black_box(&buf);
    }
    Ok(())
}
