//! Floodgate's request policies as plain Rust: rate limits, the admission queue, the circuit
//! breaker, the load indicators, degradation and the response cache. Time comes from an injectable [`Clock`]; nothing here touches pingora or sockets,
//! so every rule is unit-tested directly.

#![forbid(unsafe_code)]

pub mod approx;
pub mod breaker;
pub mod cache;
pub mod clock;
pub mod degrade;
pub mod headers;
pub mod key;
pub mod limiter;
pub mod load;
pub mod path;
pub mod queue;
pub mod ring;
pub mod set;
pub mod sharded;
pub mod window;

pub use clock::Clock;
pub use key::{HeaderLookup, RequestParts};
pub use limiter::{Limiter, Outcome};
pub use set::{decision, merge, Decision, LimitSet, Verdict};

/// Resident memory of this process, for the memory-bound tests (nextest runs each test in a
/// process of its own, so growth during a test is that test's).
#[cfg(test)]
pub(crate) fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    kb * 1024
}
