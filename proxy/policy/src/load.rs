//! The runbook's load indicators, computed in the sidecar: request rate, p50/p95/p99 latency
//! and error rate over a sliding span (60 slots of span/60, each with a log-linear latency
//! histogram), plus queue depth and in-flight taken as they are now. Each is compared with its
//! warning and critical thresholds into an ok / warning / critical level; the list is the
//! status structure the admin plane serves and the metrics export.
//!
//! Latency buckets have 8 sub-buckets per power of two of microseconds, so a percentile is
//! reported as its bucket's upper edge: never below the true value, at most 12.5% above it.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use floodgate_config::{Indicator, LoadIndicators, Thresholds};

use crate::clock::Clock;
use crate::ring::Ring;

/// Slots the span is divided into.
const SLOTS: usize = 60;
/// Latency buckets: 16 exact ones for 0..16 µs, then 8 per power of two up to 2^36 µs (19 h).
const LATENCY_BUCKETS: usize = 16 + 32 * 8;

/// An indicator's level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Under every threshold.
    Ok,
    /// Above the warning threshold.
    Warning,
    /// Above the critical threshold.
    Critical,
}

impl Level {
    /// Every level, for metric labels.
    pub const ALL: [Level; 3] = [Level::Ok, Level::Warning, Level::Critical];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warning => "warning",
            Level::Critical => "critical",
        }
    }

    /// The level of `value` against `t` (strictly above a threshold reaches it).
    pub fn of(value: f64, t: Thresholds) -> Level {
        if t.critical.is_some_and(|c| value > c) {
            Level::Critical
        } else if t.warning.is_some_and(|w| value > w) {
            Level::Warning
        } else {
            Level::Ok
        }
    }
}

/// One indicator's reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// Which.
    pub indicator: Indicator,
    /// Its value (per second, milliseconds, share or count, as its name says).
    pub value: f64,
    /// Thresholds in force.
    pub thresholds: Thresholds,
    /// Level of the value.
    pub level: Level,
}

/// Requests finished over the last span.
#[derive(Debug)]
pub struct LoadWindow {
    inner: Mutex<Ring<Slot>>,
    clock: Clock,
    span: Duration,
    start: Duration,
}

#[derive(Debug, Clone)]
struct Slot {
    requests: u64,
    errors: u64,
    latency: [u32; LATENCY_BUCKETS],
}

impl Default for Slot {
    fn default() -> Self {
        Self {
            requests: 0,
            errors: 0,
            latency: [0; LATENCY_BUCKETS],
        }
    }
}

fn bucket_of(d: Duration) -> usize {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    if us < 16 {
        return us as usize;
    }
    let e = 63 - u64::from(us.leading_zeros()); // 4.. for us >= 16
    let sub = (us >> (e - 3)) & 7;
    (16 + (e - 4) * 8 + sub).min(LATENCY_BUCKETS as u64 - 1) as usize
}

/// Largest latency, in microseconds, that falls in bucket `i`.
fn upper_edge_us(i: usize) -> u64 {
    if i < 16 {
        return i as u64;
    }
    let e = (i - 16) / 8 + 4;
    let sub = ((i - 16) % 8) as u64;
    ((8 + sub + 1) << (e - 3)) - 1
}

impl LoadWindow {
    /// An empty window over `span`.
    pub fn new(span: Duration, clock: Clock) -> Self {
        let now = clock.elapsed();
        Self {
            inner: Mutex::new(Ring::new(span, SLOTS, now)),
            clock,
            span,
            start: now,
        }
    }

    /// The span it covers.
    pub fn span(&self) -> Duration {
        self.span
    }

    fn lock(&self) -> MutexGuard<'_, Ring<Slot>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one finished request.
    pub fn record(&self, latency: Duration, error: bool) {
        let now = self.clock.elapsed();
        let mut ring = self.lock();
        let s = ring.current(now);
        s.requests += 1;
        s.errors += u64::from(error);
        let b = &mut s.latency[bucket_of(latency)];
        *b = b.saturating_add(1);
    }

    /// Readings of every indicator, `queue_depth` and `inflight` given as they are now.
    pub fn readings(&self, cfg: &LoadIndicators, queue_depth: u32, inflight: u32) -> Vec<Reading> {
        let now = self.clock.elapsed();
        let (requests, errors, hist, covered) = {
            let mut ring = self.lock();
            let mut hist = [0u64; LATENCY_BUCKETS];
            let (mut requests, mut errors) = (0, 0);
            for s in ring.buckets(now) {
                requests += s.requests;
                errors += s.errors;
                for (h, &c) in hist.iter_mut().zip(s.latency.iter()) {
                    *h += u64::from(c);
                }
            }
            let covered = now.saturating_sub(self.start).min(self.span);
            (requests, errors, hist, covered)
        };
        let pct = |q: f64| -> f64 {
            if requests == 0 {
                return 0.0;
            }
            let rank = ((q * requests as f64).ceil() as u64).max(1);
            let mut seen = 0;
            for (i, &c) in hist.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return upper_edge_us(i) as f64 / 1000.0;
                }
            }
            upper_edge_us(LATENCY_BUCKETS - 1) as f64 / 1000.0
        };
        // Until a whole span has passed, the rate is over the time there is (at least 1 s).
        let secs = covered.as_secs_f64().max(1.0);
        Indicator::ALL
            .iter()
            .map(|&indicator| {
                let value = match indicator {
                    Indicator::RequestRate => requests as f64 / secs,
                    Indicator::LatencyP50Ms => pct(0.50),
                    Indicator::LatencyP95Ms => pct(0.95),
                    Indicator::LatencyP99Ms => pct(0.99),
                    Indicator::ErrorRate if requests == 0 => 0.0,
                    Indicator::ErrorRate => errors as f64 / requests as f64,
                    Indicator::QueueDepth => f64::from(queue_depth),
                    Indicator::Inflight => f64::from(inflight),
                };
                let thresholds = cfg.thresholds(indicator);
                Reading {
                    indicator,
                    value,
                    thresholds,
                    level: Level::of(value, thresholds),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(rs: &[Reading], i: Indicator) -> Reading {
        *rs.iter().find(|r| r.indicator == i).unwrap()
    }

    #[test]
    fn buckets_bound_the_value_within_an_eighth() {
        for us in [
            0u64,
            1,
            15,
            16,
            17,
            100,
            999,
            1000,
            65_535,
            1_000_000,
            2_000_000,
            1 << 35,
        ] {
            let i = bucket_of(Duration::from_micros(us));
            let hi = upper_edge_us(i);
            assert!(hi >= us, "{us} µs in bucket {i} ending at {hi}");
            assert!(hi as f64 <= us as f64 * 1.125 + 1.0, "{us} µs: edge {hi}");
            if i > 0 {
                assert!(
                    upper_edge_us(i - 1) < us,
                    "{us} µs belongs to an earlier bucket"
                );
            }
        }
    }

    #[test]
    fn percentiles_rate_and_errors_over_the_window() {
        let clock = Clock::manual();
        let w = LoadWindow::new(Duration::from_secs(60), clock.clone());
        // 100 requests over 10 s: 90 at 10 ms, 5 at 1.5 s, 5 at 3 s (errors).
        for i in 0..100u32 {
            let (lat, err) = match i {
                0..90 => (Duration::from_millis(10), false),
                90..95 => (Duration::from_millis(1500), false),
                _ => (Duration::from_secs(3), true),
            };
            w.record(lat, err);
            clock.advance(Duration::from_millis(100));
        }
        let cfg = LoadIndicators::default();
        let rs = w.readings(&cfg, 120, 7);
        assert!((reading(&rs, Indicator::RequestRate).value - 10.0).abs() < 1e-9);
        let p50 = reading(&rs, Indicator::LatencyP50Ms).value;
        assert!((10.0..=11.25).contains(&p50), "{p50}");
        let p95 = reading(&rs, Indicator::LatencyP95Ms);
        assert!((1500.0..=1687.5).contains(&p95.value), "{}", p95.value);
        assert_eq!(p95.level, Level::Warning, "p95 over 1000 ms, under 2000 ms");
        let p99 = reading(&rs, Indicator::LatencyP99Ms).value;
        assert!((3000.0..=3375.0).contains(&p99), "{p99}");
        let e = reading(&rs, Indicator::ErrorRate);
        assert_eq!(
            (e.value, e.level),
            (0.05, Level::Warning),
            "5% is not above 5%"
        );
        let q = reading(&rs, Indicator::QueueDepth);
        assert_eq!((q.value, q.level), (120.0, Level::Warning));
        assert_eq!(reading(&rs, Indicator::Inflight).value, 7.0);
        assert_eq!(w.readings(&cfg, 501, 0)[5].level, Level::Critical);
    }

    #[test]
    fn old_requests_leave_the_window() {
        let clock = Clock::manual();
        let w = LoadWindow::new(Duration::from_secs(60), clock.clone());
        for _ in 0..50 {
            w.record(Duration::from_secs(5), true);
        }
        clock.advance(Duration::from_secs(61));
        w.record(Duration::from_millis(1), false);
        let rs = w.readings(&LoadIndicators::default(), 0, 0);
        let e = reading(&rs, Indicator::ErrorRate);
        assert_eq!((e.value, e.level), (0.0, Level::Ok));
        assert!(reading(&rs, Indicator::LatencyP99Ms).value <= 1.125);
        assert!((reading(&rs, Indicator::RequestRate).value - 1.0 / 60.0).abs() < 1e-9);
    }

    #[test]
    fn levels_are_strictly_above_thresholds() {
        let t = Thresholds {
            warning: Some(100.0),
            critical: Some(500.0),
        };
        assert_eq!(Level::of(100.0, t), Level::Ok);
        assert_eq!(Level::of(100.5, t), Level::Warning);
        assert_eq!(Level::of(500.0, t), Level::Warning);
        assert_eq!(Level::of(501.0, t), Level::Critical);
        assert_eq!(Level::of(1e9, Thresholds::default()), Level::Ok);
    }
}
