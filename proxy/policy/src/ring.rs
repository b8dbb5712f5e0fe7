//! A sliding window of time buckets: the span is cut into `n` equal buckets, the newest one
//! collects what happens now, and buckets that fall out of the span are cleared as time moves
//! on. The queue's drain rate, the breaker's error rate and the load indicators all count
//! over one of these.

use std::time::Duration;

/// `n` buckets of `bucket` each, newest at `head`.
#[derive(Debug, Clone)]
pub struct Ring<T> {
    bucket: Duration,
    /// Index (time / bucket) of the newest bucket.
    head: u64,
    slots: Vec<T>,
}

impl<T: Default + Clone> Ring<T> {
    /// `n` empty buckets over `span`, the newest at `now`.
    pub fn new(span: Duration, n: usize, now: Duration) -> Self {
        let n = n.max(1);
        let bucket = (span / u32::try_from(n).unwrap_or(u32::MAX)).max(Duration::from_millis(1));
        Self {
            bucket,
            head: index(now, bucket),
            slots: vec![T::default(); n],
        }
    }

    /// Moves the newest bucket to `now`, emptying the buckets that left the span.
    fn advance(&mut self, now: Duration) {
        let idx = index(now, self.bucket);
        if idx <= self.head {
            return;
        }
        let n = self.slots.len() as u64;
        for i in 1..=(idx - self.head).min(n) {
            self.slots[((self.head + i) % n) as usize] = T::default();
        }
        self.head = idx;
    }

    /// The bucket for `now`.
    pub fn current(&mut self, now: Duration) -> &mut T {
        self.advance(now);
        let n = self.slots.len() as u64;
        &mut self.slots[(self.head % n) as usize]
    }

    /// Every bucket still in the span at `now`, in no particular order.
    pub fn buckets(&mut self, now: Duration) -> &[T] {
        self.advance(now);
        &self.slots
    }
}

fn index(t: Duration, bucket: Duration) -> u64 {
    u64::try_from(t.as_nanos() / bucket.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_fall_out_of_the_span_bucket_by_bucket() {
        let mut r: Ring<u32> = Ring::new(Duration::from_secs(10), 10, Duration::ZERO);
        for s in 0..10 {
            *r.current(Duration::from_secs(s)) += 1;
        }
        assert_eq!(r.buckets(Duration::from_secs(9)).iter().sum::<u32>(), 10);
        // At 12 s the buckets of seconds 0, 1 and 2 are gone.
        assert_eq!(r.buckets(Duration::from_secs(12)).iter().sum::<u32>(), 7);
        // A long silence empties everything.
        assert_eq!(r.buckets(Duration::from_secs(1000)).iter().sum::<u32>(), 0);
    }
}
