//! All limits of one config snapshot, and the per-request check: every limit that applies to
//! the request's route is counted; the tightest non-shadow one decides and names the headers.

use std::collections::hash_map::RandomState;
use std::sync::Arc;

use floodgate_config::{Limit, DEFAULT_ROUTE};

use crate::clock::Clock;
use crate::key::{key_hash, RequestParts};
use crate::limiter::{Limiter, Outcome};

/// What a limit did with a request, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Within the limit.
    Allowed,
    /// Over the limit: rejected.
    Limited,
    /// Over a shadow limit: counted, not rejected.
    ShadowLimited,
}

impl Decision {
    /// Metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Limited => "limited",
            Decision::ShadowLimited => "shadow_limited",
        }
    }
}

/// The result for a request: the limit whose outcome the response reports, if any applies.
#[derive(Debug, Clone, Copy)]
pub struct Verdict {
    /// Index of the deciding limit in [`LimitSet::limiters`].
    pub limit: usize,
    /// Its outcome; `allowed == false` means reject.
    pub outcome: Outcome,
}

/// The limits of a snapshot.
pub struct LimitSet {
    limiters: Vec<Arc<Limiter>>,
    /// For each route index (default route last), the limiters that apply.
    by_route: Vec<Vec<usize>>,
    hasher: RandomState,
}

impl LimitSet {
    /// Builds the set for `limits` over `route_names` (in router order, without `default`).
    /// Limiters of `previous` whose definition is unchanged are carried over with their
    /// counters, and so are the counts of those whose only change is their size (see
    /// [`Limiter::carried`]).
    pub fn new(
        limits: &[Limit],
        route_names: &[&str],
        previous: Option<&LimitSet>,
        clock: &Clock,
    ) -> Self {
        let limiters: Vec<Arc<Limiter>> = limits
            .iter()
            .map(|def| {
                let previous = previous.map_or(&[][..], |p| p.limiters.as_slice());
                previous
                    .iter()
                    .find(|l| l.def == *def)
                    .cloned()
                    .or_else(|| previous.iter().find_map(|l| l.carried(def)).map(Arc::new))
                    .unwrap_or_else(|| Arc::new(Limiter::new(def.clone(), clock.clone())))
            })
            .collect();
        let names = route_names
            .iter()
            .copied()
            .chain(std::iter::once(DEFAULT_ROUTE));
        let by_route = names
            .map(|route| {
                limits
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| {
                        l.routes
                            .as_ref()
                            .is_none_or(|rs| rs.iter().any(|r| r == route))
                    })
                    .map(|(i, _)| i)
                    .collect()
            })
            .collect();
        // Keep the hasher across reloads so carried-over counters keep their keys.
        let hasher = previous.map_or_else(RandomState::new, |p| p.hasher.clone());
        Self {
            limiters,
            by_route,
            hasher,
        }
    }

    /// The limiters, in config order.
    pub fn limiters(&self) -> &[Arc<Limiter>] {
        &self.limiters
    }

    /// True when no limit applies to route `route`.
    pub fn is_empty_for(&self, route: usize) -> bool {
        self.by_route.get(route).is_none_or(Vec::is_empty)
    }

    /// Indices of the limits that apply to route `route`.
    pub fn applicable(&self, route: usize) -> &[usize] {
        self.by_route.get(route).map_or(&[][..], Vec::as_slice)
    }

    /// Checks every limit of route `route` (an index as the router gives it), reporting each
    /// decision to `record`. Returns the deciding outcome: the longest wait among rejecting
    /// limits, else the least remaining share among admitting ones; shadow limits never decide.
    pub fn check(
        &self,
        route: usize,
        parts: &RequestParts<'_>,
        record: impl FnMut(usize, &Limiter, Decision),
    ) -> Option<Verdict> {
        self.check_where(route, parts, |_| true, record)
    }

    /// Hands over what limit `i` counted locally for the request's key (see
    /// [`Limiter::take`]): a global limit decided in Redis again after the local fallback.
    pub fn take_local(&self, i: usize, parts: &RequestParts<'_>) -> Option<Vec<u64>> {
        let l = self.limiters.get(i)?;
        l.take(|| key_hash(&self.hasher, &l.def.key, parts))
    }

    /// Like [`LimitSet::check`], for the limits `include` accepts (the others are decided
    /// elsewhere, e.g. in Redis, and merged with [`merge`]).
    pub fn check_where(
        &self,
        route: usize,
        parts: &RequestParts<'_>,
        include: impl Fn(usize) -> bool,
        mut record: impl FnMut(usize, &Limiter, Decision),
    ) -> Option<Verdict> {
        let mut best: Option<Verdict> = None;
        for &i in self.applicable(route) {
            if !include(i) {
                continue;
            }
            let l = &self.limiters[i];
            let o = l.check(key_hash(&self.hasher, &l.def.key, parts));
            record(i, l, decision(l, &o));
            if !l.def.shadow {
                merge(
                    &mut best,
                    Verdict {
                        limit: i,
                        outcome: o,
                    },
                );
            }
        }
        best
    }
}

/// What `outcome` means for limit `l` (shadow limits never reject).
pub fn decision(l: &Limiter, o: &Outcome) -> Decision {
    match (o.allowed, l.def.shadow) {
        (true, _) => Decision::Allowed,
        (false, false) => Decision::Limited,
        (false, true) => Decision::ShadowLimited,
    }
}

/// Keeps the tighter of `best` and `candidate`: a rejection beats an admission, the longer
/// wait beats the shorter, and among admissions the smaller share left wins.
pub fn merge(best: &mut Option<Verdict>, candidate: Verdict) {
    let (o, tighter) = (&candidate.outcome, &mut true);
    if let Some(b) = best.as_ref() {
        *tighter = match (b.outcome.allowed, o.allowed) {
            (true, false) => true,
            (false, true) => false,
            (false, false) => o.retry_after > b.outcome.retry_after,
            (true, true) => {
                (o.remaining as f64 / o.limit as f64)
                    < (b.outcome.remaining as f64 / b.outcome.limit as f64)
            }
        };
    }
    if *tighter {
        *best = Some(candidate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use floodgate_config::{KeyPart, Scope, Strategy};
    use http::{HeaderMap, Method};
    use std::num::NonZeroU64;
    use std::time::Duration;

    fn limit(name: &str, routes: Option<&[&str]>, max: u64, shadow: bool) -> Limit {
        Limit {
            name: name.into(),
            routes: routes.map(|r| r.iter().map(|s| s.to_string()).collect()),
            key: vec![KeyPart::ClientIp],
            max_requests: NonZeroU64::new(max).unwrap(),
            window: Duration::from_secs(60),
            strategy: Strategy::FixedWindow,
            scope: Scope::Local,
            shadow,
            extra_windows: vec![],
            failure_mode: floodgate_config::FailureMode::Open,
            mode: floodgate_config::Mode::Exact,
            sync_interval: Duration::from_millis(100),
        }
    }

    fn req(h: &HeaderMap) -> RequestParts<'_> {
        RequestParts {
            client_ip: "10.0.0.1".parse().ok(),
            route: "api",
            method: &Method::GET,
            path: "/",
            headers: h,
        }
    }

    #[test]
    fn routes_select_limits_and_the_tightest_decides() {
        let clock = Clock::manual();
        let limits = [
            limit("wide", None, 5, false),
            limit("api", Some(&["api"]), 2, false),
            limit("dflt", Some(&["default"]), 1, false),
        ];
        let set = LimitSet::new(&limits, &["api", "web"], None, &clock);
        assert!(!set.is_empty_for(1) && set.by_route[1] == vec![0]);
        assert_eq!(set.by_route[2], vec![0, 2], "default route");
        let h = HeaderMap::new();
        let mut seen = Vec::new();
        let v = set
            .check(0, &req(&h), |_, l, d| seen.push((l.def.name.clone(), d)))
            .unwrap();
        assert_eq!(
            seen,
            [
                ("wide".to_string(), Decision::Allowed),
                ("api".to_string(), Decision::Allowed)
            ]
        );
        assert_eq!(
            (v.limit, v.outcome.remaining),
            (1, 1),
            "api has the least share left"
        );
        set.check(0, &req(&h), |_, _, _| {});
        let v = set.check(0, &req(&h), |_, _, _| {}).unwrap();
        assert!(!v.outcome.allowed);
        assert_eq!(set.limiters()[v.limit].def.name, "api");
    }

    #[test]
    fn shadow_limits_count_but_never_decide() {
        let clock = Clock::manual();
        let set = LimitSet::new(&[limit("shadow", None, 1, true)], &[], None, &clock);
        let h = HeaderMap::new();
        let mut decisions = Vec::new();
        for _ in 0..3 {
            assert!(set
                .check(0, &req(&h), |_, _, d| decisions.push(d))
                .is_none());
        }
        assert_eq!(
            decisions,
            [
                Decision::Allowed,
                Decision::ShadowLimited,
                Decision::ShadowLimited
            ]
        );
    }

    #[test]
    fn reload_keeps_counters_of_unchanged_and_resized_limits_only() {
        let clock = Clock::manual();
        let h = HeaderMap::new();
        let mut longer = limit("longer", None, 2, false);
        let a = [
            limit("same", None, 2, false),
            limit("resized", None, 2, false),
            longer.clone(),
        ];
        let set1 = LimitSet::new(&a, &[], None, &clock);
        set1.check(0, &req(&h), |_, _, _| {});
        set1.check(0, &req(&h), |_, _, _| {});
        // `resized` raised to 3 keeps its 2 counted (one left, not three); `longer`'s window
        // changed, so it starts afresh (allowed although it had used its 2).
        longer.window = Duration::from_secs(120);
        let b = [
            limit("same", None, 2, false),
            limit("resized", None, 3, false),
            longer,
        ];
        let set2 = LimitSet::new(&b, &[], Some(&set1), &clock);
        let mut d = Vec::new();
        set2.check(0, &req(&h), |_, l, dec| d.push((l.def.name.clone(), dec)));
        assert_eq!(
            d,
            [
                ("same".to_string(), Decision::Limited),
                ("resized".to_string(), Decision::Allowed),
                ("longer".to_string(), Decision::Allowed),
            ]
        );
        let resized = [limit("resized", None, 3, false)];
        let set3 = LimitSet::new(&resized, &[], Some(&set2), &clock);
        let mut d = Vec::new();
        set3.check(0, &req(&h), |_, l, dec| d.push((l.def.name.clone(), dec)));
        assert_eq!(
            d,
            [("resized".to_string(), Decision::Limited)],
            "3 of 3 used"
        );
        // Restored to 2: the three counted are over it; no fresh window.
        let set4 = LimitSet::new(
            &[limit("resized", None, 2, false)],
            &[],
            Some(&set3),
            &clock,
        );
        let mut d = Vec::new();
        set4.check(0, &req(&h), |_, l, dec| d.push((l.def.name.clone(), dec)));
        assert_eq!(d, [("resized".to_string(), Decision::Limited)]);
    }

    #[test]
    fn only_a_size_change_of_a_window_limit_carries_counts() {
        let clock = Clock::manual();
        let base = limit("l", None, 2, false);
        let old = Limiter::new(base.clone(), clock.clone());
        let mut bigger = base.clone();
        bigger.max_requests = NonZeroU64::new(5).unwrap();
        assert!(old.carried(&bigger).is_some());
        let mut longer = base.clone();
        longer.window = Duration::from_secs(61);
        assert!(old.carried(&longer).is_none());
        let mut rekeyed = bigger.clone();
        rekeyed.key = vec![KeyPart::Route];
        assert!(old.carried(&rekeyed).is_none());
        let mut bucket = base;
        bucket.strategy = Strategy::TokenBucket;
        let old_bucket = Limiter::new(bucket.clone(), clock);
        bucket.max_requests = NonZeroU64::new(5).unwrap();
        assert!(
            old_bucket.carried(&bucket).is_none(),
            "governor's quota is fixed"
        );
    }
}
