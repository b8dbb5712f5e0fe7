//! Time for policies: a monotonic clock in production, a hand-driven one in tests. It is also
//! governor's clock, so the GCRA limiter and the window limiters agree on what "now" is.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::clock::Clock as GovernorClock;
use governor::nanos::Nanos;

/// A monotonic clock, or a manual one that only moves when a test advances it.
#[derive(Debug, Clone)]
pub enum Clock {
    /// Time since the clock was made.
    Monotonic(Instant),
    /// Nanoseconds set by hand.
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// The production clock.
    pub fn monotonic() -> Self {
        Clock::Monotonic(Instant::now())
    }

    /// A clock standing at zero until [`Clock::advance`] moves it.
    pub fn manual() -> Self {
        Clock::Manual(Arc::new(AtomicU64::new(0)))
    }

    /// Moves a manual clock forward (no effect on the monotonic one).
    pub fn advance(&self, by: Duration) {
        if let Clock::Manual(n) = self {
            n.fetch_add(
                u64::try_from(by.as_nanos()).unwrap_or(u64::MAX),
                Ordering::SeqCst,
            );
        }
    }

    /// Time since the clock's zero.
    pub fn elapsed(&self) -> Duration {
        match self {
            Clock::Monotonic(start) => start.elapsed(),
            Clock::Manual(n) => Duration::from_nanos(n.load(Ordering::SeqCst)),
        }
    }
}

impl GovernorClock for Clock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.elapsed())
    }
}
