//! One configured limit: its definition and its per-key state, for any of the three
//! strategies. `token_bucket` is governor's GCRA; the window strategies are [`WindowTable`].

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use floodgate_config::{Limit, Mode, Scope, Strategy};
use governor::clock::Clock as _;
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use crate::approx::Share;
use crate::clock::Clock;
use crate::window::WindowTable;

type Gcra = RateLimiter<u64, DashMapStateStore<u64>, Clock, StateInformationMiddleware>;

/// The answer of one limit for one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    /// The limit would admit the request (shadow limits report what they would do).
    pub allowed: bool,
    /// Requests per window.
    pub limit: u64,
    /// Requests still admissible.
    pub remaining: u64,
    /// Until the quota is whole again (window end, or a full bucket).
    pub reset: Duration,
    /// When a rejected request may succeed.
    pub retry_after: Duration,
    /// Length of the window this outcome is about (limits may have several).
    pub window: Duration,
}

enum State {
    /// Shared with the limiter of the next snapshot when only the size changes.
    Window(Arc<WindowTable>),
    Gcra(Box<Gcra>),
}

/// One window of a limit with its per-key state.
struct Window {
    max: u64,
    length: Duration,
    state: State,
}

/// A limit with its counters.
pub struct Limiter {
    /// The definition it was built from; reloads keep the counters while it is unchanged.
    pub def: Limit,
    /// The main window and any extra ones, shortest first.
    windows: Vec<Window>,
    /// A global limit in `mode: approximate`: its keys' views of the fleet's count (the
    /// windows above then hold only what the Redis-outage fallback counts).
    pub approx: Option<Arc<Share>>,
    clock: Clock,
}

impl Limiter {
    /// Fresh counters for `def`.
    pub fn new(def: Limit, clock: Clock) -> Self {
        let mut windows: Vec<Window> = std::iter::once((def.max_requests.get(), def.window))
            .chain(def.extra_windows.iter().map(|(m, w)| (m.get(), *w)))
            .map(|(max, length)| Window {
                max,
                length,
                state: State::new(def.strategy, max, length, &clock),
            })
            .collect();
        windows.sort_by_key(|w| w.length);
        let approx = (def.scope == Scope::Global && def.mode == Mode::Approximate).then(|| {
            let sliding = def.strategy == Strategy::SlidingWindow;
            Arc::new(Share::new(def.sync_interval, sliding, clock.clone()))
        });
        Self {
            def,
            windows,
            approx,
            clock,
        }
    }

    /// A limiter for `def` that keeps this one's counts, when `def` differs from this one's
    /// definition only in its sizes (`max_requests`, the extra windows' maxima): what
    /// `floodgatectl limits set/scale/restore` and an edited file usually change. The counts
    /// are shared (each limiter decides with its own size), so requests still finishing on the
    /// old snapshot count in the same windows, and a reload that fails after this leaves the
    /// old limiter as it was.
    /// `None` for any other change, and for `token_bucket` (governor's quota is fixed).
    pub fn carried(&self, def: &Limit) -> Option<Limiter> {
        if def.strategy == Strategy::TokenBucket
            || def.extra_windows.len() != self.def.extra_windows.len()
        {
            return None;
        }
        let mut same = def.clone();
        same.max_requests = self.def.max_requests;
        for (mine, old) in same.extra_windows.iter_mut().zip(&self.def.extra_windows) {
            mine.0 = old.0;
        }
        if same != self.def {
            return None;
        }
        let mut sizes: Vec<(u64, Duration)> = std::iter::once((def.max_requests.get(), def.window))
            .chain(def.extra_windows.iter().map(|(m, w)| (m.get(), *w)))
            .collect();
        sizes.sort_by_key(|(_, w)| *w);
        let windows = self
            .windows
            .iter()
            .zip(sizes)
            .map(|(w, (max, length))| {
                let State::Window(table) = &w.state else {
                    return None;
                };
                Some(Window {
                    max,
                    length,
                    state: State::Window(table.clone()),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Limiter {
            def: def.clone(),
            windows,
            // Same key, same fleet count: the next sync reads it against the new size.
            approx: self.approx.clone(),
            clock: self.clock.clone(),
        })
    }

    /// Counts a request for `key` in every window, shortest first, stopping at the first that
    /// rejects it (longer windows are not charged for a rejected request). The outcome is the
    /// rejecting window's, or else the window with the least share left.
    pub fn check(&self, key: u64) -> Outcome {
        let mut best: Option<Outcome> = None;
        for w in &self.windows {
            let o = w.check(key, &self.clock);
            if !o.allowed {
                return o;
            }
            let share = |o: &Outcome| o.remaining as f64 / o.limit as f64;
            if best.as_ref().is_none_or(|b| share(&o) < share(b)) {
                best = Some(o);
            }
        }
        // `windows` always holds the main window, so `best` is set.
        best.unwrap_or(Outcome {
            allowed: true,
            limit: self.def.max_requests.get(),
            remaining: self.def.max_requests.get(),
            reset: Duration::ZERO,
            retry_after: Duration::ZERO,
            window: self.def.window,
        })
    }

    /// Forgets keys whose state can no longer matter; returns the busiest key's use (0..=1)
    /// of its tightest window limit (GCRA reports 0: its state does not count requests).
    pub fn sweep(&self) -> f64 {
        if let Some(a) = &self.approx {
            a.sweep();
        }
        self.windows
            .iter()
            .map(|w| w.state.sweep(&self.clock, w.max))
            .fold(0.0, f64::max)
    }

    /// Hands `key`'s local counts over (see [`WindowTable::take`]): one count per window,
    /// shortest first, as Redis's script takes them; `None` when there is nothing to hand
    /// over, cheaply while no key has counts. `token_bucket` hands nothing over (governor's
    /// state cannot be read back), so its first window back in Redis may admit up to the local
    /// share on top of the limit.
    pub fn take(&self, key: impl FnOnce() -> u64) -> Option<Vec<u64>> {
        let may = |w: &Window| matches!(&w.state, State::Window(t) if t.may_have_counts());
        if !self.windows.iter().any(may) {
            return None;
        }
        let (key, now) = (key(), self.clock.elapsed());
        let counts: Vec<u64> = self
            .windows
            .iter()
            .map(|w| match &w.state {
                State::Window(t) => t.take(key, now),
                State::Gcra(_) => 0,
            })
            .collect();
        counts.iter().any(|&c| c > 0).then_some(counts)
    }

    /// Keys with state now (in the main window).
    pub fn keys(&self) -> usize {
        self.windows
            .iter()
            .map(|w| w.state.keys())
            .chain(self.approx.as_ref().map(|a| a.len()))
            .max()
            .unwrap_or(0)
    }
}

// === impl State ===

impl State {
    fn new(strategy: Strategy, max: u64, window: Duration, clock: &Clock) -> Self {
        match strategy {
            Strategy::FixedWindow => State::Window(Arc::new(WindowTable::new(window, false))),
            Strategy::SlidingWindow => State::Window(Arc::new(WindowTable::new(window, true))),
            Strategy::TokenBucket => {
                // A bucket of `max` tokens refilled evenly over the window: the same long-run
                // rate as the windows, with bursts up to `max`.
                let burst = NonZeroU32::new(u32::try_from(max).unwrap_or(u32::MAX))
                    .unwrap_or(NonZeroU32::MIN);
                let period = (window / burst.get()).max(Duration::from_nanos(1));
                let quota = Quota::with_period(period)
                    .unwrap_or_else(|| Quota::per_second(burst))
                    .allow_burst(burst);
                State::Gcra(Box::new(
                    RateLimiter::dashmap_with_clock(quota, clock.clone())
                        .with_middleware::<StateInformationMiddleware>(),
                ))
            }
        }
    }

    fn sweep(&self, clock: &Clock, max: u64) -> f64 {
        match self {
            State::Window(t) => t.sweep(clock.elapsed(), max),
            State::Gcra(g) => {
                g.retain_recent();
                g.shrink_to_fit();
                0.0
            }
        }
    }

    fn keys(&self) -> usize {
        match self {
            State::Window(t) => t.len(),
            State::Gcra(g) => g.len(),
        }
    }
}

// === impl Window ===

impl Window {
    fn check(&self, key: u64, clock: &Clock) -> Outcome {
        let (limit, window) = (self.max, self.length);
        match &self.state {
            State::Window(t) => {
                let o = t.check(key, clock.elapsed(), limit);
                Outcome {
                    allowed: o.allowed,
                    limit,
                    remaining: o.remaining,
                    reset: o.reset,
                    retry_after: o.retry_after,
                    window,
                }
            }
            State::Gcra(g) => {
                let per_token = window.as_secs_f64() / limit as f64;
                match g.check_key(&key) {
                    Ok(snap) => {
                        let remaining = u64::from(snap.remaining_burst_capacity());
                        let missing = limit.saturating_sub(remaining) as f64;
                        Outcome {
                            allowed: true,
                            limit,
                            remaining,
                            reset: Duration::from_secs_f64(missing * per_token),
                            retry_after: Duration::ZERO,
                            window,
                        }
                    }
                    Err(not_until) => Outcome {
                        allowed: false,
                        limit,
                        remaining: 0,
                        reset: Duration::from_secs_f64(limit as f64 * per_token),
                        retry_after: not_until.wait_time_from(clock.now()),
                        window,
                    },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use floodgate_config::Scope;
    use std::num::NonZeroU64;

    fn def(strategy: Strategy, max: u64, secs: u64) -> Limit {
        Limit {
            name: "l".into(),
            routes: None,
            key: vec![],
            max_requests: NonZeroU64::new(max).unwrap(),
            window: Duration::from_secs(secs),
            strategy,
            scope: Scope::Local,
            shadow: false,
            extra_windows: vec![],
            failure_mode: floodgate_config::FailureMode::Open,
            mode: floodgate_config::Mode::Exact,
            sync_interval: Duration::from_millis(100),
        }
    }

    #[test]
    fn token_bucket_bursts_then_refills_at_the_window_rate() {
        let clock = Clock::manual();
        let l = Limiter::new(def(Strategy::TokenBucket, 10, 10), clock.clone());
        for i in 0..10 {
            let o = l.check(1);
            assert!(o.allowed, "burst request {i}");
            assert_eq!(o.remaining, 9 - i);
        }
        let o = l.check(1);
        assert!(!o.allowed);
        assert_eq!(
            o.retry_after,
            Duration::from_secs(1),
            "one token per second"
        );
        clock.advance(Duration::from_secs(1));
        assert!(l.check(1).allowed);
        assert!(!l.check(1).allowed);
        assert!(l.check(2).allowed, "keys are independent");
    }

    #[test]
    fn several_windows_are_checked_together_shortest_first() {
        let clock = Clock::manual();
        let mut d = def(Strategy::FixedWindow, 2, 1); // 2 per second
        d.extra_windows = vec![(NonZeroU64::new(5).unwrap(), Duration::from_secs(60))]; // and 5 per minute
        let l = Limiter::new(d, clock.clone());
        let mut admitted = 0;
        for second in 0..10u64 {
            for _ in 0..4 {
                let o = l.check(1);
                if o.allowed {
                    admitted += 1;
                } else if o.window == Duration::from_secs(1) {
                    assert!(o.retry_after <= Duration::from_secs(1));
                } else {
                    // Only once the minute's 5 are used, and it says when the minute ends.
                    assert_eq!(o.window, Duration::from_secs(60));
                    assert_eq!(admitted, 5);
                    assert_eq!(o.retry_after, Duration::from_secs(60 - second));
                }
            }
            clock.advance(Duration::from_secs(1));
        }
        // 2/s for 2 s, then 1 more: the minute window's 5, never more.
        assert_eq!(admitted, 5);
    }

    #[test]
    fn strategies_admit_the_same_long_run_rate() {
        for strategy in [
            Strategy::FixedWindow,
            Strategy::SlidingWindow,
            Strategy::TokenBucket,
        ] {
            let clock = Clock::manual();
            let l = Limiter::new(def(strategy, 50, 10), clock.clone());
            let mut passed = 0;
            // 3× the limit, evenly, for 100 s.
            for _ in 0..1500 {
                if l.check(3).allowed {
                    passed += 1;
                }
                clock.advance(Duration::from_millis(1000 / 15));
            }
            // The sliding estimate runs ~3% under the limit under steady overload (it rounds
            // the weighted count up); the others admit the limit plus their first burst.
            assert!(
                (480..=560).contains(&passed),
                "{strategy:?}: {passed} of 1500 for 500 allowed"
            );
        }
    }
}

#[cfg(test)]
mod memory {
    use super::*;
    use floodgate_config::Scope;
    use std::num::NonZeroU64;

    /// Same measure as the window table's: RSS growth of this test's own process.
    #[test]
    fn a_million_token_bucket_keys_cost_under_150_mib() {
        let before = crate::rss_bytes();
        let def = Limit {
            name: "m".into(),
            routes: None,
            key: vec![],
            max_requests: NonZeroU64::new(100).unwrap(),
            window: Duration::from_secs(60),
            strategy: Strategy::TokenBucket,
            scope: Scope::Local,
            shadow: false,
            extra_windows: vec![],
            failure_mode: floodgate_config::FailureMode::Open,
            mode: floodgate_config::Mode::Exact,
            sync_interval: Duration::from_millis(100),
        };
        let l = Limiter::new(def, Clock::manual());
        for k in 0..1_000_000u64 {
            l.check(k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        }
        assert_eq!(l.keys(), 1_000_000);
        let grown = crate::rss_bytes().saturating_sub(before);
        assert!(
            grown < 150 * 1024 * 1024,
            "1M keys took {} MiB",
            grown / (1024 * 1024)
        );
        eprintln!("1M GCRA keys: {} MiB", grown / (1024 * 1024));
    }
}
