//! Which keys may be decided in Redis right now: health per shard (a standalone server is one
//! shard owning every slot; in a cluster, each master's slot ranges), its transitions (one log
//! line and one count each), and the prober's backoff. A dead master sends only its own keys
//! to the local fallback; the decision path reads one `AtomicBool` found through its key's slot.

use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec};
use redis::ConnectionInfo;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{info, warn};

use super::link::Link;
use super::slot;

/// One shard: the slot ranges one master serves, and whether its keys go to Redis now.
pub struct Shard {
    /// Its lowest slot range, `start-end`: the metrics' `shard` label, stable across a
    /// failover (the ranges stay, the master changes).
    pub label: String,
    /// Slot ranges, inclusive, sorted.
    ranges: Vec<(u16, u16)>,
    /// Hash tag of its probe key: a slot it serves, so the probe lands where its decisions do.
    pub tag: String,
    /// Connections to its master.
    pub link: Arc<Link>,
    up: AtomicBool,
    gauge: IntGauge,
    to_up: IntCounter,
    to_down: IntCounter,
}

/// The shards and which one serves each slot.
struct Topology {
    /// Index into `shards` per slot (`NONE`: no master serves it); `None` for a standalone
    /// server, whose one shard serves every slot.
    slots: Option<Box<[u16]>>,
    shards: Vec<Arc<Shard>>,
}

const NONE: u16 = u16::MAX;

/// Health of every shard, shared by decisions and the prober.
pub struct Health {
    topo: ArcSwap<Topology>,
    /// Wakes the prober when a decision takes a shard down.
    wake: Notify,
    transitions: IntCounterVec,
    up: IntGaugeVec,
}

impl Health {
    /// A standalone server: one shard, all slots, down until the prober's first probe passes.
    pub fn standalone(server: ConnectionInfo, transitions: IntCounterVec, up: IntGaugeVec) -> Self {
        let h = Self::empty(transitions, up);
        let shard = h.shard(vec![(0, slot::SLOTS - 1)], &server);
        h.topo.store(Arc::new(Topology {
            slots: None,
            shards: vec![shard],
        }));
        h
    }

    /// A cluster: no shard until the prober reads the slot map ([`Health::set_masters`]).
    pub fn cluster(transitions: IntCounterVec, up: IntGaugeVec) -> Self {
        Self::empty(transitions, up)
    }

    fn empty(transitions: IntCounterVec, up: IntGaugeVec) -> Self {
        Self {
            topo: ArcSwap::from_pointee(Topology {
                slots: Some(vec![NONE; usize::from(slot::SLOTS)].into_boxed_slice()),
                shards: Vec::new(),
            }),
            wake: Notify::new(),
            transitions,
            up,
        }
    }

    fn shard(&self, mut ranges: Vec<(u16, u16)>, master: &ConnectionInfo) -> Arc<Shard> {
        ranges.sort_unstable();
        let (lo, hi) = ranges.first().copied().unwrap_or((0, 0));
        let label = format!("{lo}-{hi}");
        let gauge = self.up.with_label_values(&[label.as_str()]);
        gauge.set(0);
        Arc::new(Shard {
            tag: slot::tag_for(lo),
            link: Arc::new(Link::new(master.clone())),
            to_up: self.transitions.with_label_values(&["up", label.as_str()]),
            to_down: self
                .transitions
                .with_label_values(&["down", label.as_str()]),
            label,
            ranges,
            up: AtomicBool::new(false),
            gauge,
        })
    }

    /// Whether a key in `slot` is decided in Redis now. Cheap: one `ArcSwap` load, one index,
    /// one atomic load; no lock.
    pub fn is_up(&self, slot: u16) -> bool {
        self.topo.load().shard(slot).is_some_and(|s| s.is_up())
    }

    /// The shard serving `slot`, if it is up.
    pub fn up_shard(&self, slot: u16) -> Option<Arc<Shard>> {
        self.topo.load().shard(slot).filter(|s| s.is_up()).cloned()
    }

    /// Some shard is up: a request's global limits are worth sending to Redis.
    pub fn any_up(&self) -> bool {
        self.topo.load().shards.iter().any(|s| s.is_up())
    }

    /// Every shard is up (and there is one): no key is decided locally.
    pub fn all_up(&self) -> bool {
        let t = self.topo.load();
        !t.shards.is_empty() && t.shards.iter().all(|s| s.is_up())
    }

    /// The shards now, for the prober.
    pub fn shards(&self) -> Vec<Arc<Shard>> {
        self.topo.load().shards.clone()
    }

    /// A decision on `s` failed: it goes down and the prober wakes.
    pub fn decision_failed(&self, s: &Shard, why: &dyn Display) {
        if self.mark_down(s, why) {
            self.wake.notify_one();
        }
    }

    /// Marks `s` down; true if it was up (then logged and counted, once per transition).
    pub fn mark_down(&self, s: &Shard, why: &dyn Display) -> bool {
        if !s.up.swap(false, Ordering::AcqRel) {
            return false;
        }
        s.gauge.set(0);
        s.to_down.inc();
        warn!(shard = %s.label, error = %why, "redis unavailable: global limits of this shard now decide locally at max_requests / expected_replicas");
        true
    }

    /// Marks `s` up; true if it was down (then logged and counted).
    pub fn mark_up(&self, s: &Shard) -> bool {
        if s.up.swap(true, Ordering::AcqRel) {
            return false;
        }
        s.gauge.set(1);
        s.to_up.inc();
        info!(shard = %s.label, "redis reachable: global limits of this shard are decided in redis");
        true
    }

    /// Waits until a decision takes a shard down (a wake-up while the prober was busy is kept).
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Installs a cluster's slot map: the slot ranges of each master and where it is. Shards
    /// whose ranges are unchanged keep their state (a failover moves no slot; their link
    /// follows the new master); new ones start down, for the prober to try at once.
    pub fn set_masters(&self, masters: Vec<(Vec<(u16, u16)>, ConnectionInfo)>) {
        let old = self.topo.load_full();
        let shards: Vec<Arc<Shard>> = masters
            .into_iter()
            .map(|(mut ranges, master)| {
                ranges.sort_unstable();
                match old.shards.iter().find(|s| s.ranges == ranges) {
                    Some(s) => {
                        s.link.retarget(&master);
                        s.clone()
                    }
                    None => self.shard(ranges, &master),
                }
            })
            .collect();
        let same = shards.len() == old.shards.len()
            && shards
                .iter()
                .all(|s| old.shards.iter().any(|o| Arc::ptr_eq(s, o)));
        if same {
            return;
        }
        let mut slots = vec![NONE; usize::from(slot::SLOTS)].into_boxed_slice();
        for (i, s) in shards.iter().enumerate() {
            for &(lo, hi) in &s.ranges {
                let hi = hi.min(slot::SLOTS - 1);
                for n in lo..=hi {
                    slots[usize::from(n)] = u16::try_from(i).unwrap_or(NONE);
                }
            }
        }
        self.topo.store(Arc::new(Topology {
            slots: Some(slots),
            shards,
        }));
    }
}

// === impl Topology ===

impl Topology {
    fn shard(&self, slot: u16) -> Option<&Arc<Shard>> {
        let i = match &self.slots {
            None => 0,
            Some(slots) => usize::from(slots.get(usize::from(slot)).copied().unwrap_or(NONE)),
        };
        self.shards.get(i)
    }
}

// === impl Shard ===

impl Shard {
    /// Its keys are decided in Redis now.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
}

/// First wait of a probe series.
pub const FIRST: Duration = Duration::from_millis(250);
/// Longest wait between probes of a shard that is simply down.
const DOWN_MAX: Duration = Duration::from_secs(1);
/// Longest wait before probing a shard that failed right after its probe passed (flapping).
const FLAP_MAX: Duration = Duration::from_secs(5);
/// Up this long, a shard's next failure is a new incident, not flapping.
const SETTLED: Duration = Duration::from_secs(30);
/// Probe interval of a shard that is up (and, in a cluster, of re-reading the slot map).
pub const HEALTHY: Duration = Duration::from_secs(1);

/// When to probe one shard next. A shard that goes down soon after its probe passed (a backend
/// that answers the probe but not decisions) doubles the floor of its waits each time, up to
/// [`FLAP_MAX`]; up for [`SETTLED`], the floor is back to [`FIRST`]. Time is given, not read,
/// so the logic is tested without a clock.
#[derive(Debug, Clone)]
pub struct Backoff {
    floor: Duration,
    delay: Duration,
    passed_at: Option<Instant>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            floor: FIRST,
            delay: FIRST,
            passed_at: None,
        }
    }
}

impl Backoff {
    /// The shard went down at `now` (a decision or a probe failed). Returns when to probe:
    /// at once after a settled period, else after the (grown) floor.
    pub fn went_down(&mut self, now: Instant) -> Instant {
        match self.passed_at.take() {
            Some(t) if now.saturating_duration_since(t) < SETTLED => {
                self.floor = (self.floor * 2).min(FLAP_MAX);
                self.delay = self.floor;
                now + self.floor
            }
            _ => {
                self.floor = FIRST;
                self.delay = FIRST;
                now
            }
        }
    }

    /// A probe of the down shard failed at `now`; returns when to probe again.
    pub fn failed(&mut self, now: Instant) -> Instant {
        let wait = self.delay;
        self.delay = (self.delay * 2).min(DOWN_MAX.max(self.floor));
        now + wait
    }

    /// A probe passed at `now` and the shard went up.
    pub fn passed(&mut self, now: Instant) {
        self.passed_at = Some(now);
        self.delay = self.floor;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_server_that_is_down_is_probed_more_slowly_up_to_a_second() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        assert_eq!(b.went_down(t0), t0, "a first failure is probed at once");
        let waits: Vec<Duration> = (0..6).map(|_| b.failed(t0) - t0).collect();
        assert_eq!(
            waits,
            [ms(250), ms(500), ms(1000), ms(1000), ms(1000), ms(1000)]
        );
    }

    #[test]
    fn failing_right_after_passing_grows_the_wait_up_to_five_seconds() {
        let mut now = Instant::now();
        let mut b = Backoff::default();
        b.went_down(now);
        let mut waits = Vec::new();
        for _ in 0..7 {
            b.passed(now);
            now += ms(100); // a decision fails 100 ms after the probe passed
            let next = b.went_down(now);
            waits.push(next - now);
            now = next;
        }
        assert_eq!(
            waits,
            [
                ms(500),
                ms(1000),
                ms(2000),
                ms(4000),
                ms(5000),
                ms(5000),
                ms(5000)
            ]
        );
        // While flapping, a failing probe waits at least the floor.
        assert_eq!(b.failed(now) - now, ms(5000));
    }

    #[test]
    fn a_settled_shard_starts_over() {
        let mut now = Instant::now();
        let mut b = Backoff::default();
        b.went_down(now);
        for _ in 0..4 {
            b.passed(now);
            now = b.went_down(now + ms(10));
        }
        b.passed(now);
        now += SETTLED;
        assert_eq!(
            b.went_down(now),
            now,
            "up for 30 s: a new incident, probed at once"
        );
        assert_eq!(b.failed(now) - now, FIRST);
    }

    fn masters(ranges: &[&[(u16, u16)]]) -> Vec<(Vec<(u16, u16)>, ConnectionInfo)> {
        use redis::IntoConnectionInfo;
        ranges
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let url = format!("redis://127.0.0.1:{}", 7000 + i);
                (r.to_vec(), url.into_connection_info().unwrap())
            })
            .collect()
    }

    fn health() -> Health {
        Health::cluster(
            IntCounterVec::new(prometheus::Opts::new("t", "t"), &["to", "shard"]).unwrap(),
            IntGaugeVec::new(prometheus::Opts::new("u", "u"), &["shard"]).unwrap(),
        )
    }

    #[test]
    fn a_down_shard_takes_only_its_own_slots() {
        let h = health();
        assert!(!h.any_up() && !h.all_up(), "no slot map yet: nothing is up");
        h.set_masters(masters(&[
            &[(0, 5460)],
            &[(10923, 16383)],
            &[(5461, 10922)],
        ]));
        for s in h.shards() {
            assert!(h.mark_up(&s));
            assert!(!h.mark_up(&s), "one transition");
        }
        assert!(h.all_up());
        let s = h.up_shard(7000).unwrap();
        h.decision_failed(&s, &"boom");
        assert!(h.is_up(0) && h.is_up(16383) && !h.is_up(5461) && !h.is_up(10922));
        assert!(h.any_up() && !h.all_up());
        let down: Vec<String> = h
            .shards()
            .iter()
            .filter(|s| !s.is_up())
            .map(|s| s.label.clone())
            .collect();
        assert_eq!(down, ["5461-10922"]);
        assert_eq!(
            h.transitions
                .with_label_values(&["down", "5461-10922"])
                .get(),
            1
        );
        assert!(h.up_shard(7001).is_none());
        h.decision_failed(&s, &"again");
        assert_eq!(
            h.transitions
                .with_label_values(&["down", "5461-10922"])
                .get(),
            1
        );
    }

    #[test]
    fn a_failover_keeps_the_shards_state() {
        let h = health();
        h.set_masters(masters(&[&[(0, 8191)], &[(8192, 16383)]]));
        let before = h.shards();
        h.mark_up(&before[0]);
        // Same ranges, other masters (and another order): the same shards.
        h.set_masters(masters(&[&[(8192, 16383)], &[(0, 8191)]]));
        assert!(h.is_up(100) && !h.is_up(9000));
        // A slot moved: both shards are new and start down.
        h.set_masters(masters(&[&[(0, 8000)], &[(8001, 16383)]]));
        assert!(!h.is_up(100));
        assert_eq!(
            slot::of_key(format!("{{{}}}", h.shards()[1].tag).as_bytes()),
            8001
        );
    }
}
