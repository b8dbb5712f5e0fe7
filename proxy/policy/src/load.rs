//! The runbook's load indicators, computed in the sidecar: request rate, p50/p95/p99 latency
//! and error rate over a sliding span (60 slots of span/60, each with a log-linear latency
//! histogram), plus queue depth and in-flight taken as they are now. Each is compared with its
//! warning and critical thresholds into an ok / warning / critical level; the list is the
//! status structure the admin plane serves and the metrics export.
//!
//! Only the app's answers feed error rate and latency: the sidecar's own refusals (429, 503,
//! fallbacks, cached answers) are instant and caused by the sidecar, so counting them would let
//! shedding raise the error rate that triggers more shedding. They still count in the request
//! rate. Error rate and latency are judged (may leave `ok`, may trigger automatic degradation)
//! only once `min_requests` app answers are in the span: one failure in three is noise.
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
    /// False while too few app answers are in the span to judge this indicator: its level is
    /// `ok` whatever the value, and automatic degradation rules ignore it.
    pub judged: bool,
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
    /// Every answer, the sidecar's own included (the request rate).
    requests: u64,
    /// Answers from the app, or failures to get one (error rate and latency are over these).
    app: u64,
    /// Of `app`, the failures.
    errors: u64,
    latency: [u32; LATENCY_BUCKETS],
}

impl Default for Slot {
    fn default() -> Self {
        Self {
            requests: 0,
            app: 0,
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

    /// Counts one request that went to the app: `failed` for a 5xx from it, or no usable
    /// answer at all (connect or read failure, timeout).
    pub fn record_app(&self, latency: Duration, failed: bool) {
        let now = self.clock.elapsed();
        let mut ring = self.lock();
        let s = ring.current(now);
        s.requests += 1;
        s.app += 1;
        s.errors += u64::from(failed);
        let b = &mut s.latency[bucket_of(latency)];
        *b = b.saturating_add(1);
    }

    /// Counts one request the sidecar answered itself (a refusal, a fallback, a cached
    /// answer): in the request rate only.
    pub fn record_own(&self) {
        let now = self.clock.elapsed();
        self.lock().current(now).requests += 1;
    }

    /// Readings of every indicator, `queue_depth` and `inflight` given as they are now.
    pub fn readings(&self, cfg: &LoadIndicators, queue_depth: u32, inflight: u32) -> Vec<Reading> {
        let now = self.clock.elapsed();
        let (requests, app, errors, hist, covered) = {
            let mut ring = self.lock();
            let mut hist = [0u64; LATENCY_BUCKETS];
            let (mut requests, mut app, mut errors) = (0, 0, 0);
            for s in ring.buckets(now) {
                requests += s.requests;
                app += s.app;
                errors += s.errors;
                for (h, &c) in hist.iter_mut().zip(s.latency.iter()) {
                    *h += u64::from(c);
                }
            }
            let covered = now.saturating_sub(self.start).min(self.span);
            (requests, app, errors, hist, covered)
        };
        let pct = |q: f64| -> f64 {
            if app == 0 {
                return 0.0;
            }
            let rank = ((q * app as f64).ceil() as u64).max(1);
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
        let enough = app >= u64::from(cfg.min_requests);
        Indicator::ALL
            .iter()
            .map(|&indicator| {
                let value = match indicator {
                    Indicator::RequestRate => requests as f64 / secs,
                    Indicator::LatencyP50Ms => pct(0.50),
                    Indicator::LatencyP95Ms => pct(0.95),
                    Indicator::LatencyP99Ms => pct(0.99),
                    Indicator::ErrorRate if app == 0 => 0.0,
                    Indicator::ErrorRate => errors as f64 / app as f64,
                    Indicator::QueueDepth => f64::from(queue_depth),
                    Indicator::Inflight => f64::from(inflight),
                };
                let thresholds = cfg.thresholds(indicator);
                let judged = enough || !from_app_answers(indicator);
                Reading {
                    indicator,
                    value,
                    thresholds,
                    level: if judged {
                        Level::of(value, thresholds)
                    } else {
                        Level::Ok
                    },
                    judged,
                }
            })
            .collect()
    }
}

/// Indicators computed from the app's answers, which need `min_requests` of them.
fn from_app_answers(i: Indicator) -> bool {
    matches!(
        i,
        Indicator::LatencyP50Ms
            | Indicator::LatencyP95Ms
            | Indicator::LatencyP99Ms
            | Indicator::ErrorRate
    )
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
            w.record_app(lat, err);
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
            w.record_app(Duration::from_secs(5), true);
        }
        clock.advance(Duration::from_secs(61));
        w.record_app(Duration::from_millis(1), false);
        let rs = w.readings(&LoadIndicators::default(), 0, 0);
        let e = reading(&rs, Indicator::ErrorRate);
        assert_eq!((e.value, e.level), (0.0, Level::Ok));
        assert!(reading(&rs, Indicator::LatencyP99Ms).value <= 1.125);
        assert!((reading(&rs, Indicator::RequestRate).value - 1.0 / 60.0).abs() < 1e-9);
    }

    #[test]
    fn the_sidecars_own_answers_count_in_the_rate_only() {
        let clock = Clock::manual();
        let w = LoadWindow::new(Duration::from_secs(60), clock.clone());
        // Shedding answers 100 requests at once; the app answers 30 in 10 ms, all fine.
        for _ in 0..100 {
            w.record_own();
        }
        for _ in 0..30 {
            w.record_app(Duration::from_millis(10), false);
        }
        clock.advance(Duration::from_secs(10));
        let rs = w.readings(&LoadIndicators::default(), 0, 0);
        let e = reading(&rs, Indicator::ErrorRate);
        assert_eq!((e.value, e.level, e.judged), (0.0, Level::Ok, true));
        // The instant refusals do not pull the percentiles down to zero.
        let p50 = reading(&rs, Indicator::LatencyP50Ms).value;
        assert!((10.0..=11.25).contains(&p50), "{p50}");
        assert!((reading(&rs, Indicator::RequestRate).value - 13.0).abs() < 1e-9);
    }

    #[test]
    fn a_window_of_only_own_answers_reads_zero_errors() {
        // The case: a degraded 503 among three requests must not read as 33% errors.
        let w = LoadWindow::new(Duration::from_secs(60), Clock::manual());
        w.record_own();
        let cfg = LoadIndicators {
            min_requests: 1,
            ..LoadIndicators::default()
        };
        w.record_app(Duration::from_millis(5), false);
        w.record_app(Duration::from_millis(5), false);
        let e = reading(&w.readings(&cfg, 0, 0), Indicator::ErrorRate);
        assert_eq!((e.value, e.level), (0.0, Level::Ok));
    }

    #[test]
    fn error_rate_and_latency_wait_for_min_requests() {
        let w = LoadWindow::new(Duration::from_secs(60), Clock::manual());
        let cfg = LoadIndicators::default();
        assert_eq!(cfg.min_requests, 20);
        // 19 app answers, 3 failed and all slow: 16% errors, p95 3 s, but too few to judge.
        for i in 0..19 {
            w.record_app(Duration::from_secs(3), i < 3);
        }
        for _ in 0..100 {
            w.record_own(); // the sidecar's own answers do not make up the number
        }
        let rs = w.readings(&cfg, 600, 0);
        let e = reading(&rs, Indicator::ErrorRate);
        assert!(
            (e.value - 3.0 / 19.0).abs() < 1e-9,
            "the value is still shown"
        );
        assert_eq!((e.level, e.judged), (Level::Ok, false));
        let p95 = reading(&rs, Indicator::LatencyP95Ms);
        assert_eq!((p95.level, p95.judged), (Level::Ok, false));
        // Queue depth is a count now, not a sample: judged at once.
        let q = reading(&rs, Indicator::QueueDepth);
        assert_eq!((q.level, q.judged), (Level::Critical, true));
        // The 20th answer makes the sample: both are judged.
        w.record_app(Duration::from_secs(3), false);
        let rs = w.readings(&cfg, 0, 0);
        let e = reading(&rs, Indicator::ErrorRate);
        assert_eq!((e.value, e.level, e.judged), (0.15, Level::Critical, true));
        let p95 = reading(&rs, Indicator::LatencyP95Ms);
        assert_eq!((p95.level, p95.judged), (Level::Critical, true));
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
