//! The circuit breaker on the upstream. Closed, it lets everything through and counts
//! outcomes; it opens after `consecutive_failures` failures in a row, or when the failure share
//! over the last `window` reaches `error_rate` once `min_requests` were seen. Open, it rejects at
//! once; after `open` it half-opens and lets `half_open_probes` requests through: all succeed
//! and it closes, one fails and it opens again.
//!
//! Each admitted request carries a [`Ticket`] naming the breaker period (generation) it was
//! admitted in; outcomes of an earlier period are ignored, so a slow request admitted before the
//! breaker opened cannot close it later. A probe whose ticket is dropped without an outcome
//! (the client left, the queue timed it out) gives its probe place back.
//!
//! The admin plane's hooks: [`Breaker::force_open`], [`Breaker::force_close`] (both hold until
//! [`Breaker::reset`]) and [`Breaker::reset`].

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use floodgate_config::CircuitBreaker;

use crate::clock::Clock;
use crate::ring::Ring;

/// Buckets the error-rate window is divided into.
const BUCKETS: usize = 10;

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Passing requests.
    Closed,
    /// Letting probes through.
    HalfOpen,
    /// Rejecting.
    Open,
}

impl State {
    /// Value of `floodgate_circuit_breaker_state`: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        }
    }

    /// Name for logs and status.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::HalfOpen => "half_open",
            State::Open => "open",
        }
    }
}

/// A manual override from the admin plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forced {
    /// Held open until reset.
    Open,
    /// Held closed (outcomes ignored) until reset.
    Closed,
}

/// The breaker's answer to one request.
#[derive(Debug)]
pub enum Admit {
    /// Go ahead; report the outcome on the ticket.
    Pass(Ticket),
    /// Open (or half-open with every probe out): reject.
    Reject {
        /// Until the breaker half-opens, at least one second.
        retry_after: Duration,
    },
}

/// A state change, for the log line and the gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// Before.
    pub from: State,
    /// After.
    pub to: State,
}

/// The breaker of one upstream.
#[derive(Debug)]
pub struct Breaker {
    inner: Mutex<Inner>,
    clock: Clock,
}

#[derive(Debug)]
struct Inner {
    cfg: CircuitBreaker,
    state: State,
    forced: Option<Forced>,
    /// Bumped on every state change; tickets of an older generation are ignored.
    generation: u64,
    opened_at: Duration,
    consecutive: u32,
    probes_out: u32,
    probes_ok: u32,
    window: OutcomeWindow,
}

/// Proof of admission. Report with [`Ticket::success`] or [`Ticket::failure`]; dropping it
/// unreported means the request never reached the upstream.
#[derive(Debug)]
pub struct Ticket {
    breaker: Arc<Breaker>,
    generation: u64,
    probe: bool,
    reported: bool,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(cfg: CircuitBreaker, clock: Clock) -> Arc<Self> {
        let window = OutcomeWindow::new(cfg.window, clock.elapsed());
        Arc::new(Self {
            inner: Mutex::new(Inner {
                cfg,
                state: State::Closed,
                forced: None,
                generation: 0,
                opened_at: Duration::ZERO,
                consecutive: 0,
                probes_out: 0,
                probes_ok: 0,
                window,
            }),
            clock,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// New settings (config reload). The state and its counts carry over; a new error-rate
    /// window length starts its window afresh.
    pub fn configure(&self, cfg: CircuitBreaker) {
        let now = self.clock.elapsed();
        let mut inner = self.lock();
        if cfg.window != inner.cfg.window {
            inner.window = OutcomeWindow::new(cfg.window, now);
        }
        inner.cfg = cfg;
    }

    /// Decides one request. Returns the transition it caused (open → half-open), if any.
    pub fn admit(self: &Arc<Self>) -> (Admit, Option<Transition>) {
        let now = self.clock.elapsed();
        let mut inner = self.lock();
        let ticket = |generation, probe| Ticket {
            breaker: self.clone(),
            generation,
            probe,
            reported: false,
        };
        match inner.forced {
            Some(Forced::Open) => {
                return (
                    Admit::Reject {
                        retry_after: Duration::from_secs(1),
                    },
                    None,
                )
            }
            Some(Forced::Closed) => return (Admit::Pass(ticket(inner.generation, false)), None),
            None => {}
        }
        let t = inner.half_open_if_due(now);
        match inner.state {
            State::Closed => (Admit::Pass(ticket(inner.generation, false)), t),
            State::HalfOpen if inner.probes_out < inner.cfg.half_open_probes.get() => {
                inner.probes_out += 1;
                (Admit::Pass(ticket(inner.generation, true)), t)
            }
            State::HalfOpen => (
                // Every probe is out; their answers decide soon.
                Admit::Reject {
                    retry_after: Duration::from_secs(1),
                },
                t,
            ),
            State::Open => {
                let left = (inner.opened_at + inner.cfg.open).saturating_sub(now);
                (
                    Admit::Reject {
                        retry_after: left.max(Duration::from_secs(1)),
                    },
                    t,
                )
            }
        }
    }

    /// The state now and any override, without changing anything: an open period that ran
    /// out reads as half-open (the next admission or [`Breaker::tick`] makes it so). For
    /// status reads, which must not move state or emit transitions.
    pub fn state(&self) -> (State, Option<Forced>) {
        let now = self.clock.elapsed();
        let inner = self.lock();
        let state = match inner.forced {
            Some(Forced::Open) => State::Open,
            Some(Forced::Closed) => State::Closed,
            None if inner.state == State::Open && now >= inner.opened_at + inner.cfg.open => {
                State::HalfOpen
            }
            None => inner.state,
        };
        (state, inner.forced)
    }

    /// Like [`Breaker::state`], also returning the change time made since the last look
    /// (an open period that ran out is half-open now), for the log and the counters.
    pub fn tick(&self) -> ((State, Option<Forced>), Option<Transition>) {
        let now = self.clock.elapsed();
        let mut inner = self.lock();
        let moved = inner.half_open_if_due(now);
        let state = match inner.forced {
            Some(Forced::Open) => State::Open,
            Some(Forced::Closed) => State::Closed,
            None => inner.state,
        };
        ((state, inner.forced), moved)
    }

    /// Holds the breaker open until [`Breaker::reset`].
    pub fn force_open(&self) {
        let mut inner = self.lock();
        inner.forced = Some(Forced::Open);
        inner.generation += 1;
    }

    /// Holds the breaker closed, ignoring failures, until [`Breaker::reset`].
    pub fn force_close(&self) {
        let mut inner = self.lock();
        inner.forced = Some(Forced::Closed);
        inner.generation += 1;
    }

    /// Drops a force (open or closed), keeping the state and counts it had under it.
    pub fn unforce(&self) {
        let mut inner = self.lock();
        if inner.forced.take().is_some() {
            inner.generation += 1;
        }
    }

    /// Drops any override and starts closed with clean counts.
    pub fn reset(&self) {
        let now = self.clock.elapsed();
        let mut inner = self.lock();
        inner.forced = None;
        inner.to(State::Closed, now);
    }

    fn report(&self, t: &Ticket, ok: bool) -> Option<Transition> {
        let now = self.clock.elapsed();
        let mut inner = self.lock();
        if t.generation != inner.generation || inner.forced.is_some() {
            return None;
        }
        match (inner.state, t.probe) {
            (State::Closed, false) => {
                inner.window.add(now, ok);
                if ok {
                    inner.consecutive = 0;
                    return None;
                }
                inner.consecutive += 1;
                let by_count = inner.consecutive >= inner.cfg.consecutive_failures.get();
                let by_rate = inner.cfg.error_rate.is_some_and(|rate| {
                    let (total, failed) = inner.window.totals(now);
                    total >= u64::from(inner.cfg.min_requests.get())
                        && failed as f64 >= rate * total as f64
                });
                (by_count || by_rate).then(|| inner.to(State::Open, now))
            }
            (State::HalfOpen, true) if !ok => Some(inner.to(State::Open, now)),
            (State::HalfOpen, true) => {
                inner.probes_ok += 1;
                (inner.probes_ok >= inner.cfg.half_open_probes.get())
                    .then(|| inner.to(State::Closed, now))
            }
            _ => None,
        }
    }

    fn abandon(&self, t: &Ticket) {
        let mut inner = self.lock();
        if t.probe && t.generation == inner.generation && inner.state == State::HalfOpen {
            inner.probes_out = inner.probes_out.saturating_sub(1);
        }
    }
}

impl Inner {
    fn to(&mut self, state: State, now: Duration) -> Transition {
        let from = self.state;
        self.state = state;
        self.generation += 1;
        self.consecutive = 0;
        self.probes_out = 0;
        self.probes_ok = 0;
        match state {
            State::Open => self.opened_at = now,
            State::Closed => self.window = OutcomeWindow::new(self.cfg.window, now),
            State::HalfOpen => {}
        }
        Transition { from, to: state }
    }

    fn half_open_if_due(&mut self, now: Duration) -> Option<Transition> {
        (self.state == State::Open && now >= self.opened_at + self.cfg.open)
            .then(|| self.to(State::HalfOpen, now))
    }
}

impl Ticket {
    /// True when this request is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The upstream answered well (any status below 500).
    pub fn success(mut self) -> Option<Transition> {
        self.reported = true;
        self.breaker.report(&self, true)
    }

    /// The upstream failed: a 5xx, a refused or timed-out connection, a timeout.
    pub fn failure(mut self) -> Option<Transition> {
        self.reported = true;
        self.breaker.report(&self, false)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.reported {
            self.breaker.abandon(self);
        }
    }
}

/// Outcomes over a sliding span, in [`BUCKETS`] buckets of (requests, failures).
#[derive(Debug)]
struct OutcomeWindow(Ring<(u32, u32)>);

impl OutcomeWindow {
    fn new(span: Duration, now: Duration) -> Self {
        Self(Ring::new(span, BUCKETS, now))
    }

    fn add(&mut self, now: Duration, ok: bool) {
        let b = self.0.current(now);
        b.0 = b.0.saturating_add(1);
        if !ok {
            b.1 = b.1.saturating_add(1);
        }
    }

    fn totals(&mut self, now: Duration) -> (u64, u64) {
        self.0
            .buckets(now)
            .iter()
            .fold((0, 0), |(t, f), &(bt, bf)| {
                (t + u64::from(bt), f + u64::from(bf))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn cfg(consecutive: u32, error_rate: Option<f64>) -> CircuitBreaker {
        CircuitBreaker {
            consecutive_failures: NonZeroU32::new(consecutive).unwrap(),
            open: Duration::from_secs(10),
            error_rate,
            min_requests: NonZeroU32::new(10).unwrap(),
            window: Duration::from_secs(10),
            half_open_probes: NonZeroU32::new(2).unwrap(),
        }
    }

    fn pass(b: &Arc<Breaker>) -> Ticket {
        match b.admit().0 {
            Admit::Pass(t) => t,
            other => panic!("expected to pass, got {other:?}"),
        }
    }

    fn rejected(b: &Arc<Breaker>) -> Duration {
        match b.admit().0 {
            Admit::Reject { retry_after } => retry_after,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn reading_the_state_moves_nothing_and_tick_still_reports_the_change() {
        let clock = Clock::manual();
        let b = Breaker::new(cfg(1, None), clock.clone());
        pass(&b).failure();
        assert_eq!(b.state().0, State::Open);
        clock.advance(Duration::from_secs(10));
        // Due to half-open: a read says so, and leaves the change to report.
        assert_eq!(b.state().0, State::HalfOpen);
        assert_eq!(b.state().0, State::HalfOpen);
        assert_eq!(
            b.tick(),
            (
                (State::HalfOpen, None),
                Some(Transition {
                    from: State::Open,
                    to: State::HalfOpen
                })
            )
        );
        assert_eq!(b.tick().1, None, "reported once");
    }

    #[test]
    fn walks_closed_open_half_open_closed() {
        let clock = Clock::manual();
        let b = Breaker::new(cfg(3, None), clock.clone());
        pass(&b).failure();
        pass(&b).failure();
        pass(&b).success(); // the run is broken
        pass(&b).failure();
        pass(&b).failure();
        assert_eq!(b.state().0, State::Closed);
        let t = pass(&b).failure();
        assert_eq!(
            t,
            Some(Transition {
                from: State::Closed,
                to: State::Open
            })
        );
        assert_eq!(rejected(&b), Duration::from_secs(10));
        clock.advance(Duration::from_secs(4));
        assert_eq!(rejected(&b), Duration::from_secs(6));
        clock.advance(Duration::from_secs(6));
        // Half-open: two probes, a third is turned away while they are out.
        let p1 = pass(&b);
        let p2 = pass(&b);
        assert!(p1.is_probe() && p2.is_probe());
        assert_eq!(b.state().0, State::HalfOpen);
        rejected(&b);
        assert_eq!(p1.success(), None);
        assert_eq!(
            p2.success(),
            Some(Transition {
                from: State::HalfOpen,
                to: State::Closed
            })
        );
        assert!(!pass(&b).is_probe());
    }

    #[test]
    fn a_failed_probe_reopens() {
        let clock = Clock::manual();
        let b = Breaker::new(cfg(1, None), clock.clone());
        pass(&b).failure();
        clock.advance(Duration::from_secs(10));
        let p = pass(&b);
        assert_eq!(
            p.failure(),
            Some(Transition {
                from: State::HalfOpen,
                to: State::Open
            })
        );
        assert_eq!(rejected(&b), Duration::from_secs(10));
    }

    #[test]
    fn an_abandoned_probe_gives_its_place_back() {
        let clock = Clock::manual();
        let b = Breaker::new(cfg(1, None), clock.clone());
        pass(&b).failure();
        clock.advance(Duration::from_secs(10));
        let p1 = pass(&b);
        let p2 = pass(&b);
        rejected(&b);
        drop(p1);
        let p3 = pass(&b);
        assert!(p3.is_probe());
        drop(p2);
        drop(p3);
    }

    #[test]
    fn opens_on_error_rate_once_enough_requests_were_seen() {
        let clock = Clock::manual();
        let b = Breaker::new(cfg(100, Some(0.5)), clock.clone());
        // 4 failures in 8: 50%, but below min_requests (10).
        for i in 0..8 {
            let t = pass(&b);
            if i % 2 == 0 {
                t.failure();
            } else {
                t.success();
            }
        }
        assert_eq!(b.state().0, State::Closed);
        pass(&b).success(); // 9 seen, 4 failed
        let t = pass(&b).failure(); // 10 seen, 5 failed: 50%
        assert_eq!(t.map(|t| t.to), Some(State::Open));
    }

    #[test]
    fn old_outcomes_leave_the_error_rate_window() {
        let clock = Clock::manual();
        let b = Breaker::new(cfg(100, Some(0.5)), clock.clone());
        for _ in 0..9 {
            pass(&b).failure();
        }
        clock.advance(Duration::from_secs(11));
        // The nine failures aged out: one more is 1 of 1, below min_requests.
        assert_eq!(pass(&b).failure(), None);
        assert_eq!(b.state().0, State::Closed);
    }

    #[test]
    fn outcomes_from_before_a_state_change_are_ignored() {
        let clock = Clock::manual();
        let b = Breaker::new(cfg(1, None), clock.clone());
        let slow = pass(&b);
        pass(&b).failure();
        clock.advance(Duration::from_secs(10));
        let probe = pass(&b);
        // The slow request admitted while closed finishes well: it is no probe, it closes nothing.
        assert_eq!(slow.success(), None);
        assert_eq!(b.state().0, State::HalfOpen);
        drop(probe);
    }

    #[test]
    fn manual_overrides_hold_until_reset() {
        let clock = Clock::manual();
        let b = Breaker::new(cfg(1, None), clock.clone());
        b.force_open();
        assert_eq!(b.state(), (State::Open, Some(Forced::Open)));
        clock.advance(Duration::from_secs(60));
        rejected(&b);
        b.force_close();
        for _ in 0..5 {
            pass(&b).failure();
        }
        assert_eq!(b.state(), (State::Closed, Some(Forced::Closed)));
        b.reset();
        assert_eq!(b.state(), (State::Closed, None));
        pass(&b).failure();
        assert_eq!(b.state().0, State::Open);
        b.reset();
        assert_eq!(b.state().0, State::Closed);
    }
}
