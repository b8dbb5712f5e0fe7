//! The admission queue: at most `max_concurrency` requests in flight to the upstream, up to
//! `max_size` more waiting, served by priority (critical, normal, low) and in arrival order
//! within a priority.
//!
//! A waiting request is a future ([`Waiting`]); dropping it (the client left, its wait timed
//! out) takes it out of the queue at once, or, if a slot was granted to it in the meantime,
//! passes that slot on. Slots are granted by whoever frees one (a [`Permit`] dropped) or by a
//! resize, never by a timer, so nothing here needs a runtime: the shell adds the timeout and
//! the disconnect watch around the future. One short `std::sync::Mutex` section per
//! operation; it is never held across an await.
//!
//! Both sizes change live ([`Admission::resize`]): growing `max_concurrency` admits waiters at
//! once; shrinking either only stops new admissions, nothing already in flight or waiting is
//! dropped or reordered.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use floodgate_config::Priority;

use crate::clock::Clock;
use crate::ring::Ring;

/// Seconds of history behind the drain rate.
const DRAIN_SECONDS: usize = 10;

/// Position in the queue: priority rank first (critical = 0), then arrival.
type Key = (u8, u64);

/// The shared queue of one sidecar.
#[derive(Debug)]
pub struct Admission {
    inner: Mutex<Inner>,
    clock: Clock,
}

#[derive(Debug)]
struct Inner {
    max_concurrency: u32,
    max_size: u32,
    inflight: u32,
    waiting: BTreeMap<Key, Waker>,
    /// Waiting requests per priority rank, for the expected-wait estimate.
    per_rank: [u32; 3],
    next_seq: u64,
    drain: DrainRate,
}

/// What [`Admission::try_acquire`] decided.
#[derive(Debug)]
pub enum Admit {
    /// A slot was free.
    Now(Permit),
    /// The request is queued; await the future for its slot.
    Wait(Waiting),
    /// The queue is full.
    Full {
        /// When a retry is likely to find room, from the observed drain rate; `None` when
        /// nothing drained in the last ten seconds, so there is nothing to estimate from.
        retry_after: Option<Duration>,
    },
}

/// A slot in flight to the upstream; dropping it frees the slot for the next waiter.
#[derive(Debug)]
pub struct Permit {
    queue: Arc<Admission>,
}

/// A queued request: resolves to a [`Permit`] when its turn comes. Dropping it leaves the queue.
#[derive(Debug)]
pub struct Waiting {
    queue: Arc<Admission>,
    key: Key,
    done: bool,
}

/// The queue's numbers at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Requests waiting.
    pub depth: u32,
    /// Requests holding a slot.
    pub inflight: u32,
    /// Slot limit.
    pub max_concurrency: u32,
    /// Waiting limit.
    pub max_size: u32,
}

fn rank(p: Priority) -> u8 {
    match p {
        Priority::Critical => 0,
        Priority::Normal => 1,
        Priority::Low => 2,
    }
}

impl Admission {
    /// A queue with `max_concurrency` slots and room for `max_size` waiters.
    pub fn new(max_concurrency: u32, max_size: u32, clock: Clock) -> Arc<Self> {
        let start = clock.elapsed();
        Arc::new(Self {
            inner: Mutex::new(Inner {
                max_concurrency,
                max_size,
                inflight: 0,
                waiting: BTreeMap::new(),
                per_rank: [0; 3],
                next_seq: 0,
                drain: DrainRate::new(start),
            }),
            clock,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves counts that are still consistent
        // (every update is a few plain assignments), so carry on rather than wedge the proxy.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a slot if one is free, else a place in the queue, else reports it full.
    pub fn try_acquire(self: &Arc<Self>, priority: Priority) -> Admit {
        let mut inner = self.lock();
        if inner.inflight < inner.max_concurrency && inner.waiting.is_empty() {
            inner.inflight += 1;
            return Admit::Now(Permit {
                queue: self.clone(),
            });
        }
        let depth = inner.waiting.len() as u64;
        if depth >= u64::from(inner.max_size) {
            let now = self.clock.elapsed();
            return Admit::Full {
                retry_after: inner.drain.time_for(depth + 1, now),
            };
        }
        let key = (rank(priority), inner.next_seq);
        inner.next_seq += 1;
        inner.per_rank[usize::from(key.0)] += 1;
        inner.waiting.insert(key, Waker::noop().clone());
        Admit::Wait(Waiting {
            queue: self.clone(),
            key,
            done: false,
        })
    }

    /// Sets new limits. Waiters are admitted at once if there are now free slots; nothing
    /// already admitted or waiting is dropped when a limit shrinks.
    pub fn resize(&self, max_concurrency: u32, max_size: u32) {
        let wake = {
            let mut inner = self.lock();
            inner.max_concurrency = max_concurrency;
            inner.max_size = max_size;
            inner.grant()
        };
        wake.into_iter().for_each(Waker::wake);
    }

    /// Current numbers.
    pub fn stats(&self) -> QueueStats {
        let inner = self.lock();
        QueueStats {
            depth: inner.waiting.len() as u32,
            inflight: inner.inflight,
            max_concurrency: inner.max_concurrency,
            max_size: inner.max_size,
        }
    }

    /// Requests that left the in-flight set per second, over the last ten seconds.
    pub fn drain_rate(&self) -> f64 {
        let now = self.clock.elapsed();
        self.lock().drain.rate(now)
    }

    /// How long the queued request would wait at the observed drain rate: its place (everyone
    /// of the same or higher priority ahead of it) over the rate. `None` while nothing has
    /// drained recently, when there is nothing to estimate from.
    pub fn expected_wait(&self, w: &Waiting) -> Option<Duration> {
        let now = self.clock.elapsed();
        let mut inner = self.lock();
        let ahead: u32 = inner.per_rank[..=usize::from(w.key.0)].iter().sum();
        inner.drain.time_for(u64::from(ahead), now)
    }

    /// When a request turned away now should retry: the time for everyone waiting plus one
    /// to drain at the observed rate (`None` while nothing drains).
    pub fn retry_after(&self) -> Option<Duration> {
        let now = self.clock.elapsed();
        let mut inner = self.lock();
        let n = inner.waiting.len() as u64 + 1;
        inner.drain.time_for(n, now)
    }

    /// A waiter's or permit's slot is free again.
    fn release(&self) {
        let now = self.clock.elapsed();
        let wake = {
            let mut inner = self.lock();
            inner.inflight = inner.inflight.saturating_sub(1);
            inner.drain.record(now);
            inner.grant()
        };
        wake.into_iter().for_each(Waker::wake);
    }
}

impl Inner {
    /// Hands free slots to the first waiters. Returns their wakers, to be woken after the
    /// lock is released.
    fn grant(&mut self) -> Vec<Waker> {
        let mut wake = Vec::new();
        while self.inflight < self.max_concurrency {
            let Some((key, waker)) = self.waiting.pop_first() else {
                break;
            };
            self.per_rank[usize::from(key.0)] -= 1;
            self.inflight += 1;
            wake.push(waker);
        }
        wake
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.queue.release();
    }
}

impl Future for Waiting {
    type Output = Permit;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Permit> {
        let this = &mut *self;
        let mut inner = this.queue.lock();
        match inner.waiting.get_mut(&this.key) {
            Some(waker) => {
                if !waker.will_wake(cx.waker()) {
                    waker.clone_from(cx.waker());
                }
                Poll::Pending
            }
            // Only a grant removes a waiter other than itself: the slot is ours.
            None => {
                drop(inner);
                this.done = true;
                Poll::Ready(Permit {
                    queue: this.queue.clone(),
                })
            }
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut inner = self.queue.lock();
        if inner.waiting.remove(&self.key).is_some() {
            inner.per_rank[usize::from(self.key.0)] -= 1;
        } else {
            // Granted a slot it will never use: pass it on.
            drop(inner);
            self.queue.release();
        }
    }
}

/// Completions per second over the last [`DRAIN_SECONDS`] seconds, in one-second buckets.
#[derive(Debug)]
struct DrainRate {
    ring: Ring<u32>,
    start: Duration,
}

impl DrainRate {
    fn new(start: Duration) -> Self {
        Self {
            ring: Ring::new(
                Duration::from_secs(DRAIN_SECONDS as u64),
                DRAIN_SECONDS,
                start,
            ),
            start,
        }
    }

    fn record(&mut self, now: Duration) {
        let b = self.ring.current(now);
        *b = b.saturating_add(1);
    }

    fn rate(&mut self, now: Duration) -> f64 {
        let total: u64 = self.ring.buckets(now).iter().map(|&c| u64::from(c)).sum();
        // Over the whole history once there are ten seconds of it; before that, over what
        // there is (at least one second, so a first burst does not read as a huge rate).
        let span = now
            .saturating_sub(self.start)
            .as_secs_f64()
            .clamp(1.0, DRAIN_SECONDS as f64);
        total as f64 / span
    }

    /// Time for `n` more completions at the current rate, rounded up to whole seconds and
    /// capped at a minute; `None` when nothing completed recently.
    fn time_for(&mut self, n: u64, now: Duration) -> Option<Duration> {
        let rate = self.rate(now);
        if rate <= 0.0 {
            return None;
        }
        let secs = (n as f64 / rate).ceil().clamp(1.0, 60.0);
        Some(Duration::from_secs(secs as u64))
    }
}

/// Parses a gRPC `grpc-timeout` value (`"100m"`: up to 8 digits and a unit of H, M, S, m, u
/// or n). `None` if malformed, which gRPC says to treat as no deadline.
pub fn parse_grpc_timeout(v: &[u8]) -> Option<Duration> {
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    /// A waker that counts its wake-ups.
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(w: &mut Waiting, waker: &Waker) -> Option<Permit> {
        match Pin::new(w).poll(&mut Context::from_waker(waker)) {
            Poll::Ready(p) => Some(p),
            Poll::Pending => None,
        }
    }

    fn now(a: Admit) -> Permit {
        match a {
            Admit::Now(p) => p,
            other => panic!("expected a free slot, got {other:?}"),
        }
    }

    fn queued(a: Admit) -> Waiting {
        match a {
            Admit::Wait(w) => w,
            other => panic!("expected to queue, got {other:?}"),
        }
    }

    fn noop() -> Waker {
        Waker::noop().clone()
    }

    #[test]
    fn admits_up_to_the_concurrency_then_queues_then_refuses() {
        let q = Admission::new(2, 1, Clock::manual());
        let _a = now(q.try_acquire(Priority::Normal));
        let _b = now(q.try_acquire(Priority::Normal));
        let _c = queued(q.try_acquire(Priority::Normal));
        assert!(matches!(
            q.try_acquire(Priority::Critical),
            Admit::Full { .. }
        ));
        assert_eq!(
            q.stats(),
            QueueStats {
                depth: 1,
                inflight: 2,
                max_concurrency: 2,
                max_size: 1
            }
        );
    }

    #[test]
    fn a_freed_slot_goes_to_the_first_waiter_and_wakes_it() {
        let q = Admission::new(1, 10, Clock::manual());
        let a = now(q.try_acquire(Priority::Normal));
        let mut w = queued(q.try_acquire(Priority::Normal));
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        assert!(poll(&mut w, &waker).is_none());
        drop(a);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        let p = poll(&mut w, &waker).expect("granted");
        assert_eq!(q.stats().inflight, 1);
        drop(p);
        assert_eq!(q.stats().inflight, 0);
    }

    #[test]
    fn serves_by_priority_then_arrival() {
        let q = Admission::new(1, 10, Clock::manual());
        let mut held = now(q.try_acquire(Priority::Normal));
        let mut waiting = vec![
            ("low-1", queued(q.try_acquire(Priority::Low))),
            ("normal-1", queued(q.try_acquire(Priority::Normal))),
            ("critical-1", queued(q.try_acquire(Priority::Critical))),
            ("low-2", queued(q.try_acquire(Priority::Low))),
            ("normal-2", queued(q.try_acquire(Priority::Normal))),
            ("critical-2", queued(q.try_acquire(Priority::Critical))),
        ];
        let mut served = Vec::new();
        while !waiting.is_empty() {
            // Finishing the request in flight hands its one slot to exactly one waiter.
            drop(held);
            let mut granted: Vec<(usize, Permit)> = waiting
                .iter_mut()
                .enumerate()
                .filter_map(|(i, (_, w))| poll(w, &noop()).map(|p| (i, p)))
                .collect();
            assert_eq!(granted.len(), 1);
            let (i, p) = granted.remove(0);
            served.push(waiting.remove(i).0);
            held = p;
        }
        assert_eq!(
            served,
            [
                "critical-1",
                "critical-2",
                "normal-1",
                "normal-2",
                "low-1",
                "low-2"
            ]
        );
    }

    #[test]
    fn a_waiter_that_leaves_frees_its_place_at_once() {
        let q = Admission::new(1, 1, Clock::manual());
        let _a = now(q.try_acquire(Priority::Normal));
        let w = queued(q.try_acquire(Priority::Normal));
        assert!(matches!(
            q.try_acquire(Priority::Normal),
            Admit::Full { .. }
        ));
        drop(w);
        assert_eq!(q.stats().depth, 0);
        let _w2 = queued(q.try_acquire(Priority::Normal));
    }

    #[test]
    fn a_slot_granted_to_a_waiter_that_left_passes_to_the_next() {
        let q = Admission::new(1, 5, Clock::manual());
        let a = now(q.try_acquire(Priority::Normal));
        let w1 = queued(q.try_acquire(Priority::Normal));
        let mut w2 = queued(q.try_acquire(Priority::Normal));
        drop(a); // granted to w1, which never polls again
        drop(w1); // gone: the slot moves to w2
        assert!(poll(&mut w2, &noop()).is_some());
    }

    #[test]
    fn growing_concurrency_admits_waiters_and_shrinking_drops_nothing() {
        let q = Admission::new(1, 10, Clock::manual());
        let a = now(q.try_acquire(Priority::Normal));
        let mut ws: Vec<Waiting> = (0..4)
            .map(|_| queued(q.try_acquire(Priority::Normal)))
            .collect();
        q.resize(3, 10);
        let granted: Vec<Permit> = ws.iter_mut().filter_map(|w| poll(w, &noop())).collect();
        assert_eq!(granted.len(), 2, "two new slots, two waiters in");
        assert_eq!(q.stats().depth, 2);
        // Shrink below what is in flight and waiting: nobody is dropped, nobody new admitted.
        q.resize(1, 0);
        assert_eq!(q.stats().inflight, 3);
        assert_eq!(q.stats().depth, 2);
        assert!(matches!(
            q.try_acquire(Priority::Critical),
            Admit::Full { .. }
        ));
        drop(granted);
        drop(a);
        // Back to one slot: exactly one waiter goes in, in arrival order.
        assert_eq!(q.stats().inflight, 1);
        assert_eq!(q.stats().depth, 1);
        let _third = poll(&mut ws[2], &noop()).expect("first in line");
        assert!(poll(&mut ws[3], &noop()).is_none());
    }

    #[test]
    fn retry_after_follows_the_drain_rate() {
        let clock = Clock::manual();
        let q = Admission::new(1, 4, clock.clone());
        let full = |q: &Arc<Admission>| match q.try_acquire(Priority::Normal) {
            Admit::Full { retry_after } => retry_after,
            other => panic!("expected a full queue, got {other:?}"),
        };
        // Ten completions per second for ten seconds.
        for _ in 0..100 {
            drop(now(q.try_acquire(Priority::Normal)));
            clock.advance(Duration::from_millis(100));
        }
        // The window is the ten seconds up to now, the current one included: at t = 10.0 s it
        // holds seconds 1..=10, so the completions of second 0 have aged out.
        assert_eq!(q.drain_rate(), 9.0);
        let busy = now(q.try_acquire(Priority::Normal));
        let waiting: Vec<Waiting> = (0..4)
            .map(|_| queued(q.try_acquire(Priority::Normal)))
            .collect();
        // 5 ahead of a retry at 9/s: about half a second, rounded up to Retry-After's whole second.
        assert_eq!(full(&q), Some(Duration::from_secs(1)));
        // Ten quiet seconds: nothing to estimate from.
        clock.advance(Duration::from_secs(10));
        assert_eq!(q.drain_rate(), 0.0);
        assert_eq!(full(&q), None);
        // Then one completion a second (0.9/s in the window): 5 ahead take 5.6 s, so 6.
        drop(waiting);
        drop(busy);
        for _ in 0..10 {
            drop(now(q.try_acquire(Priority::Normal)));
            clock.advance(Duration::from_secs(1));
        }
        let _busy = now(q.try_acquire(Priority::Normal));
        let _waiting: Vec<Waiting> = (0..4)
            .map(|_| queued(q.try_acquire(Priority::Normal)))
            .collect();
        assert_eq!(full(&q), Some(Duration::from_secs(6)));
    }

    #[test]
    fn expected_wait_counts_only_those_ahead() {
        let clock = Clock::manual();
        let q = Admission::new(1, 100, clock.clone());
        for _ in 0..20 {
            drop(now(q.try_acquire(Priority::Normal)));
            clock.advance(Duration::from_millis(500));
        }
        // Two a second, but the window at t = 10.0 s holds seconds 1..=10: 18 in 10 s.
        assert_eq!(q.drain_rate(), 1.8);
        let _busy = now(q.try_acquire(Priority::Normal));
        let _normals: Vec<Waiting> = (0..9)
            .map(|_| queued(q.try_acquire(Priority::Normal)))
            .collect();
        let crit = queued(q.try_acquire(Priority::Critical));
        let low = queued(q.try_acquire(Priority::Low));
        assert_eq!(q.expected_wait(&crit), Some(Duration::from_secs(1)));
        // 9 normals, the critical and itself: 11 / 1.8 = 6.1 s.
        assert_eq!(q.expected_wait(&low), Some(Duration::from_secs(7)));
    }

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(
            parse_grpc_timeout(b"100m"),
            Some(Duration::from_millis(100))
        );
        assert_eq!(parse_grpc_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout(b"5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse_grpc_timeout(b"m"), None);
        assert_eq!(parse_grpc_timeout(b"123456789S"), None);
        assert_eq!(parse_grpc_timeout(b"10x"), None);
        assert_eq!(parse_grpc_timeout(b"-1S"), None);
    }
}
