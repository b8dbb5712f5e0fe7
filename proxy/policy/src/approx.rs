//! This sidecar's half of a global limit in `mode: approximate`: requests decided here,
//! against the fleet's count as of this sidecar's last sync, and the counts it owes Redis.
//!
//! Each key has a *view*: what the whole fleet had left of the limit at the last sync, read
//! back in the same round trip that pushed this sidecar's counts. Until the next view the
//! sidecar admits at most its *allowance*, `ceil(left / replicas)` (`redis.expected_replicas`)
//! less its exact decisions for the key still in flight, so sidecars that see the same view
//! together admit no more than was left.
//!
//! A key with no view, or a view older than [`STALE_AFTER`] intervals (a sync that failed, a
//! key idle for a while), is not decided here: the caller decides that request exactly in
//! Redis and gives the answer to [`Share::view`] (or [`Share::abandon`] if it failed), so a
//! sparse key costs what `mode: exact` costs and a hot one costs no round trip.
//!
//! The bound: an exact decision never takes Redis's count past the limit, so the fleet goes
//! over only by admissions made under allowances and not yet in Redis's count when it filled:
//! at most each sidecar's current allowance, and at most what it is offered while a view ages
//! (a sync interval and a round trip). Overshoot per window ≤ Σ over the sidecars of
//! `min(ceil(left / replicas), rate × (interval + RTT))`: at most
//! `sidecars × ceil(max_requests / replicas)` however bursty, and about
//! `sidecars × rate × interval` at an even rate below that. (A sync that times out after Redis
//! ran it is pushed again: those admissions count twice, which errs on the strict side.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::clock::Clock;
use crate::limiter::Outcome;
use crate::sharded::Sharded;

/// A view older than this many sync intervals is not decided on.
pub const STALE_AFTER: u32 = 3;

/// What the fleet had left of a limit for one key, as Redis reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// Requests the fleet may still admit in the window (after what this view counted).
    pub left: u64,
    /// The window's limit.
    pub limit: u64,
    /// The window's length.
    pub window: Duration,
    /// Until the window ends.
    pub reset: Duration,
}

/// One key's state.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Admitted here since the view was taken (not in it): counted against `allowance`.
    admitted: u64,
    /// Admitted here and not pushed to Redis yet.
    unsent: u64,
    /// What this sidecar may admit until the next view.
    allowance: u64,
    /// The fleet's quota left at the view.
    left: u64,
    limit: u64,
    window: Duration,
    /// Clock time the view's window ends.
    reset_at: Duration,
    /// Clock time the view was taken; `None`: no view yet.
    seen_at: Option<Duration>,
    /// Asked since the last drain: the next sync reads a fresh view for it.
    asked: bool,
    /// Requests for this key being decided exactly in Redis now: each may be admitted there
    /// after the view was read, so each takes one off the allowance until it answers.
    inflight: u64,
}

impl Entry {
    fn empty() -> Self {
        Entry {
            admitted: 0,
            unsent: 0,
            allowance: 0,
            left: 0,
            limit: 0,
            window: Duration::ZERO,
            reset_at: Duration::ZERO,
            seen_at: None,
            asked: false,
            inflight: 0,
        }
    }
}

/// The approximate state of one limit: every key this sidecar has seen recently.
pub struct Share {
    interval: Duration,
    /// Sliding windows free quota as the previous window's weight falls: a rejection's
    /// retry is the next view, not the window's end.
    sliding: bool,
    clock: Clock,
    keys: Sharded<Entry>,
    /// Some key was asked since the last drain: the sync has work.
    busy: AtomicBool,
}

/// A decision made here: the outcome, and whether it is the first since the last drain (the
/// caller then wakes the sync, which sleeps while nothing is asked).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Local {
    /// The answer, in the same terms as an exact decision's.
    pub outcome: Outcome,
    /// The sync was idle: wake it.
    pub wake: bool,
}

impl Share {
    /// State for a limit that syncs every `interval`, with sliding or fixed windows.
    pub fn new(interval: Duration, sliding: bool, clock: Clock) -> Self {
        Self {
            interval: interval.max(Duration::from_millis(1)),
            sliding,
            clock,
            keys: Sharded::default(),
            busy: AtomicBool::new(false),
        }
    }

    /// How often this limit syncs.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    fn stale(&self, e: &Entry, now: Duration) -> bool {
        e.seen_at
            .is_none_or(|t| now.saturating_sub(t) > self.interval * STALE_AFTER)
    }

    /// Decides a request for `key` here, if its view is fresh. `None`: decide it exactly, then
    /// hand the answer to [`Share::view`], or call [`Share::abandon`] if there is none (until
    /// then it counts as in flight).
    pub fn decide(&self, key: u64) -> Option<Local> {
        let now = self.clock.elapsed();
        let outcome = {
            let mut map = self.keys.lock(key);
            let e = map.entry(key).or_insert_with(Entry::empty);
            if self.stale(e, now) {
                e.inflight += 1;
                return None;
            }
            e.asked = true;
            let reset = e.reset_at.saturating_sub(now);
            if e.admitted + e.inflight < e.allowance {
                e.admitted += 1;
                e.unsent += 1;
                // What the fleet has left if every sidecar admits at this one's pace: zero
                // exactly when this sidecar's allowance is spent.
                let remaining = u64::try_from(
                    u128::from(e.left) * u128::from(e.allowance - e.admitted - e.inflight)
                        / u128::from(e.allowance),
                )
                .unwrap_or(u64::MAX);
                Outcome {
                    allowed: true,
                    limit: e.limit,
                    remaining,
                    reset,
                    retry_after: Duration::ZERO,
                    window: e.window,
                }
            } else {
                // Nothing left in a fixed window: not before it ends. Something left (others'
                // share, a window that has ended since), or a sliding window, whose quota
                // comes back as the previous window's weight falls: the next view may give it.
                let retry_after = if e.left == 0 && !self.sliding && !reset.is_zero() {
                    reset
                } else {
                    self.interval
                };
                Outcome {
                    allowed: false,
                    limit: e.limit,
                    remaining: 0,
                    reset,
                    retry_after,
                    window: e.window,
                }
            }
        };
        let wake = !self.busy.load(Ordering::Relaxed) && !self.busy.swap(true, Ordering::AcqRel);
        Some(Local { outcome, wake })
    }

    /// Takes `view` for `key`, divided among `replicas` sidecars; `exact`: it is the answer
    /// of one of this key's exact decisions (no longer in flight). Whatever this sidecar
    /// admitted and has not pushed is not in it, and counts against the new allowance.
    pub fn view(&self, key: u64, view: View, replicas: u64, exact: bool) {
        let now = self.clock.elapsed();
        let replicas = replicas.max(1);
        let mut map = self.keys.lock(key);
        let e = map.entry(key).or_insert_with(Entry::empty);
        if exact {
            e.inflight = e.inflight.saturating_sub(1);
        }
        e.admitted = e.unsent;
        e.allowance = view.left.div_ceil(replicas);
        e.left = view.left;
        e.limit = view.limit;
        e.window = view.window;
        e.reset_at = now + view.reset;
        e.seen_at = Some(now);
    }

    /// An exact decision for `key` got no answer (Redis down, a timeout): no longer in flight.
    pub fn abandon(&self, key: u64) {
        if let Some(e) = self.keys.lock(key).get_mut(&key) {
            e.inflight = e.inflight.saturating_sub(1);
        }
    }

    /// The keys the next sync pushes and reads: each asked since the last drain, or owing
    /// counts, with its count (now handed over: on failure, give it back with
    /// [`Share::restore`]).
    pub fn drain(&self) -> Vec<(u64, u64)> {
        self.busy.store(false, Ordering::Release);
        let mut out = Vec::new();
        self.keys.each(|map| {
            for (&key, e) in map.iter_mut() {
                if e.asked || e.unsent > 0 {
                    out.push((key, e.unsent));
                    e.unsent = 0;
                    e.asked = false;
                }
            }
        });
        out
    }

    /// A push of `count` for `key` failed: it is owed again (and the key's view ages, so its
    /// requests go to Redis, and from there to the local fallback while Redis is down).
    pub fn restore(&self, key: u64, count: u64) {
        if count == 0 {
            return;
        }
        // The entry may have been swept while its push was out: owe it on a fresh one.
        self.keys
            .lock(key)
            .entry(key)
            .or_insert_with(Entry::empty)
            .unsent += count;
    }

    /// Forgets keys whose view is stale and that owe nothing and wait for nothing: they would
    /// be decided exactly again anyway. Keeps the table bounded by the keys active in the last
    /// few intervals.
    pub fn sweep(&self) {
        let now = self.clock.elapsed();
        self.keys.each(|map| {
            map.retain(|_, e| e.unsent > 0 || e.inflight > 0 || !self.stale(e, now));
            if map.capacity() > 64 && map.len() < map.capacity() / 4 {
                map.shrink_to_fit();
            }
        });
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// No key held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn view(left: u64) -> View {
        View {
            left,
            limit: 300,
            window: Duration::from_secs(60),
            reset: Duration::from_secs(30),
        }
    }

    #[test]
    fn a_key_without_a_fresh_view_is_decided_exactly() {
        let clock = Clock::manual();
        let s = Share::new(100 * MS, false, clock.clone());
        assert!(s.decide(7).is_none(), "no view yet");
        s.view(7, view(300), 3, true);
        assert!(s.decide(7).is_some());
        clock.advance(301 * MS);
        assert!(s.decide(7).is_none(), "older than three intervals");
    }

    #[test]
    fn a_sidecar_admits_its_share_of_what_was_left_then_rejects_until_the_next_view() {
        let clock = Clock::manual();
        let s = Share::new(100 * MS, false, clock.clone());
        s.view(1, view(30), 3, false);
        let answers: Vec<Local> = (0..11).map(|_| s.decide(1).unwrap()).collect();
        assert!(answers[..10].iter().all(|a| a.outcome.allowed));
        assert_eq!(answers[0].outcome.remaining, 27, "30 x 9/10");
        assert_eq!(answers[9].outcome.remaining, 0);
        let no = answers[10].outcome;
        assert!(!no.allowed);
        assert_eq!(
            no.retry_after,
            100 * MS,
            "the fleet had some left: next view"
        );
        assert_eq!(no.reset, Duration::from_secs(30));
        assert!(answers[0].wake && !answers[1].wake, "wakes the sync once");
        assert_eq!(s.drain(), vec![(1, 10)]);
        // The view comes back with two more admitted meanwhile: they count against it.
        s.decide(1).unwrap();
        s.view(1, view(9), 3, false);
        let more = (0..5)
            .filter(|_| s.decide(1).unwrap().outcome.allowed)
            .count();
        assert_eq!(
            more, 3,
            "allowance 3 less the one admitted during the round trip"
        );
    }

    #[test]
    fn nothing_left_in_the_fleet_waits_for_the_window() {
        let s = Share::new(100 * MS, false, Clock::manual());
        s.view(1, view(0), 3, false);
        let no = s.decide(1).unwrap().outcome;
        assert!(!no.allowed);
        assert_eq!(no.retry_after, Duration::from_secs(30));
    }

    #[test]
    fn a_failed_push_is_owed_again_and_counts_against_the_next_view() {
        let s = Share::new(100 * MS, false, Clock::manual());
        s.view(1, view(300), 3, false);
        for _ in 0..4 {
            s.decide(1).unwrap();
        }
        let batch = s.drain();
        assert_eq!(batch, vec![(1, 4)]);
        s.restore(1, 4);
        assert_eq!(s.drain(), vec![(1, 4)], "pushed again next time");
        assert!(s.drain().is_empty(), "nothing asked, nothing owed: no work");
    }

    #[test]
    fn the_sweep_forgets_stale_keys_that_owe_nothing() {
        let clock = Clock::manual();
        let s = Share::new(100 * MS, false, clock.clone());
        s.view(1, view(300), 3, false);
        s.view(2, view(300), 3, false);
        s.decide(2).unwrap();
        clock.advance(Duration::from_secs(1));
        s.sweep();
        assert_eq!(s.len(), 1, "key 2 still owes its count");
        s.drain();
        s.sweep();
        assert!(s.is_empty());
    }

    /// Three sidecars, each offered far more than the limit, syncing in turn against one
    /// shared count (what Redis keeps): the fleet admits its quota and overshoots it by at
    /// most the sidecars' allowances, `sidecars x ceil(max / replicas)`. (This run admits 401
    /// of 300; `mode: exact` would admit 300.)
    #[test]
    fn three_sidecars_admit_within_the_bound() {
        let clock = Clock::manual();
        let sidecars: Vec<Share> = (0..3)
            .map(|_| Share::new(100 * MS, false, clock.clone()))
            .collect();
        let max = 300u64;
        let mut redis = 0u64; // the fleet's count in the window
        let mut admitted = 0u64;
        let left = |count: u64| max.saturating_sub(count);
        for s in &sidecars {
            s.view(9, view(left(redis)), 3, false);
        }
        // 2 s of 1 ms steps; sidecar i syncs at i × 33 ms into each 100 ms interval.
        for step in 0..2000u64 {
            for (i, s) in sidecars.iter().enumerate() {
                // Each sidecar is offered 5 requests per millisecond.
                for _ in 0..5 {
                    if s.decide(9).is_some_and(|l| l.outcome.allowed) {
                        admitted += 1;
                    }
                }
                if step % 100 == i as u64 * 33 {
                    for (key, n) in s.drain() {
                        redis += n;
                        s.view(key, view(left(redis)), 3, false);
                    }
                }
            }
            clock.advance(MS);
        }
        for s in &sidecars {
            redis += s.drain().iter().map(|(_, n)| n).sum::<u64>();
        }
        assert_eq!(redis, admitted, "every admission reaches the count");
        assert!(admitted >= max, "the fleet gets its quota: {admitted}");
        // Bound: the allowances of views taken before the quota ran out (the module's doc).
        let bound = max + 3 * max.div_ceil(3);
        assert!(admitted <= bound, "{admitted} over the bound {bound}");
    }

    /// A burst on a sidecar with no view goes to Redis request by request; the first answer
    /// back must not hand out an allowance the others in flight are about to spend.
    #[test]
    fn exact_decisions_in_flight_take_off_the_allowance() {
        let s = Share::new(100 * MS, false, Clock::manual());
        for _ in 0..298 {
            assert!(s.decide(3).is_none());
        }
        // The first answer: 297 left after it, 297 more in flight.
        s.view(3, view(297), 3, true);
        assert!(
            !s.decide(3).unwrap().outcome.allowed,
            "99 - 297 in flight: none"
        );
        for left in (0..297).rev() {
            s.view(3, view(left), 3, true);
        }
        assert!(!s.decide(3).unwrap().outcome.allowed, "nothing left");
        // A failed exact decision stops counting as in flight.
        let s = Share::new(100 * MS, false, Clock::manual());
        assert!(s.decide(4).is_none());
        assert!(s.decide(4).is_none());
        s.view(4, view(30), 3, true);
        assert_eq!(
            s.decide(4).unwrap().outcome.remaining,
            24,
            "30 x (10 - 1 admitted - 1 in flight) / 10"
        );
        s.abandon(4);
        let admitted = (0..20)
            .filter(|_| s.decide(4).unwrap().outcome.allowed)
            .count();
        assert_eq!(admitted, 9, "the rest of the allowance of 10");
    }

    #[test]
    fn a_sliding_window_rejection_retries_at_the_next_view() {
        let s = Share::new(100 * MS, true, Clock::manual());
        s.view(1, view(0), 3, false);
        assert_eq!(s.decide(1).unwrap().outcome.retry_after, 100 * MS);
    }

    #[test]
    fn a_count_given_back_after_its_key_was_swept_is_still_owed() {
        let clock = Clock::manual();
        let s = Share::new(100 * MS, false, clock.clone());
        s.view(1, view(300), 3, false);
        s.decide(1).unwrap();
        let batch = s.drain();
        clock.advance(Duration::from_secs(1));
        s.sweep();
        assert!(s.is_empty(), "stale, owing nothing while its push is out");
        s.restore(1, batch[0].1);
        assert_eq!(s.drain(), vec![(1, 1)]);
    }
}
