//! Graceful degradation in the sidecar. The per-route view of the config ([`RouteDegradation`],
//! part of the config snapshot), the state in force ([`Effective`], swapped in with the
//! snapshot whenever the level or a flag changes), the runtime part an operator and the
//! automatic controller change ([`DegradeState`]), and the transitions: logged with their
//! cause, counted, and published as gauges. The decisions themselves are
//! `floodgate_policy::degrade`'s.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use floodgate_config::{Config, Fallback, Level, Priority};
use floodgate_policy::breaker::Breaker;
use floodgate_policy::cache::ResponseCache;
use floodgate_policy::degrade::{
    disabled_features, effective_level, level_gauge, level_str, AutoController, Cause,
};
use floodgate_policy::load::Reading;
use floodgate_policy::Clock;
use http::{HeaderName, HeaderValue};
use tracing::{info, warn};

use crate::router::Router;
use crate::state::{Base, Runtime, Snapshot};

/// Degradation's per-route view of one config.
pub struct RouteDegradation {
    /// Every feature the config names, sorted.
    pub features: Vec<String>,
    /// Feature name of each route index (default route last).
    pub feature: Vec<Option<String>>,
    /// Priority of each route index.
    pub priority: Vec<Priority>,
    /// Fallback of each route index's feature.
    pub fallback: Vec<Option<Fallback>>,
    /// The feature breaker of each route index.
    pub breaker: Vec<Option<Arc<Breaker>>>,
    /// Whether a route's answers are remembered for a cached fallback.
    pub remember: Vec<bool>,
    /// Whether a route is under `aggressive_cache.routes`.
    pub aggressive: Vec<bool>,
    /// The response cache (kept across reloads while its limits are unchanged).
    pub cache: Arc<ResponseCache>,
    /// Header names told to the app.
    pub level_header: Option<HeaderName>,
    /// See `level_header`.
    pub features_header: Option<HeaderName>,
    /// Feature breakers by feature, carried into the next config.
    breakers: BTreeMap<String, Arc<Breaker>>,
}

impl RouteDegradation {
    /// The view of `config`, keeping `previous`'s cache and feature breakers where they still
    /// apply.
    pub fn build(
        config: &Config,
        router: &Router,
        previous: Option<&RouteDegradation>,
        clock: &Clock,
    ) -> Self {
        let d = &config.degradation;
        let limits = (d.cache.max_bytes, d.cache.max_entry_bytes);
        let cache = match previous {
            Some(p) if p.cache.limits() == limits => p.cache.clone(),
            _ => Arc::new(ResponseCache::new(limits.0, limits.1)),
        };
        let mut breakers = BTreeMap::new();
        for (feature, cfg) in &d.feature_breakers {
            let b = match previous.and_then(|p| p.breakers.get(feature)) {
                Some(b) => {
                    b.configure(cfg.clone());
                    b.clone()
                }
                None => Breaker::new(cfg.clone(), clock.clone()),
            };
            breakers.insert(feature.clone(), b);
        }
        let feature: Vec<Option<String>> = router.all().map(|r| r.feature.clone()).collect();
        let fallback = feature
            .iter()
            .map(|f| f.as_ref().and_then(|f| d.fallbacks.get(f)).cloned())
            .collect::<Vec<_>>();
        let header = |h: &Option<String>| {
            h.as_ref()
                .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok())
        };
        Self {
            features: d.features_named(&config.routes),
            priority: router.all().map(|r| r.priority).collect(),
            breaker: feature
                .iter()
                .map(|f| f.as_ref().and_then(|f| breakers.get(f)).cloned())
                .collect(),
            remember: fallback
                .iter()
                .map(|f| f.as_ref().is_some_and(|f| f.cached.is_some()))
                .collect(),
            aggressive: router
                .all()
                .map(|r| d.aggressive_cache.routes.contains(&r.name))
                .collect(),
            fallback,
            feature,
            cache,
            level_header: header(&d.level_header),
            features_header: header(&d.features_header),
            breakers,
        }
    }
}

impl RouteDegradation {
    /// Every feature breaker, by feature.
    pub fn feature_breakers(&self) -> impl Iterator<Item = (&str, &Arc<Breaker>)> {
        self.breakers.iter().map(|(f, b)| (f.as_str(), b))
    }
}

/// The degradation state in force for new requests.
pub struct Effective {
    /// Level.
    pub level: Level,
    /// Features off.
    pub disabled: BTreeSet<String>,
    /// Per route index: its feature is off.
    pub route_off: Vec<bool>,
    /// Aggressive caching is on.
    pub aggressive: bool,
    /// Value of the level header.
    pub level_value: HeaderValue,
    /// Value of the disabled-features header (comma-separated, sorted).
    pub features_value: HeaderValue,
}

impl Effective {
    /// The state of `base`'s config under `state`.
    pub fn compute(base: &Base, state: &DegradeState) -> Self {
        let d = &base.config.degradation;
        let level = state.level();
        let disabled = disabled_features(d, level, &state.flags);
        let route_off = base
            .routes
            .feature
            .iter()
            .map(|f| f.as_ref().is_some_and(|f| disabled.contains(f)))
            .collect();
        let list = disabled
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(",");
        Self {
            level,
            route_off,
            aggressive: state.aggressive.unwrap_or(d.aggressive_cache.enabled),
            level_value: HeaderValue::from_static(level_str(level)),
            // Feature names come from the validated config; one that is not a valid header
            // value (a control character) is left out of the header rather than failing.
            features_value: HeaderValue::from_str(&list)
                .unwrap_or_else(|_| HeaderValue::from_static("")),
            disabled,
        }
    }
}

/// What an operator and the automatic controller have set; the config gives the rest.
pub struct DegradeState {
    baseline: Level,
    /// An operator's level, winning over everything until cleared.
    pub manual: Option<Level>,
    /// An operator's flag overrides, over the file's.
    pub flags: BTreeMap<String, bool>,
    /// An operator's aggressive-caching switch, over the file's.
    pub aggressive: Option<bool>,
    auto: AutoController,
}

impl DegradeState {
    /// The state for a first config.
    pub fn new(config: &Config) -> Self {
        Self {
            baseline: config.degradation.level,
            manual: None,
            flags: BTreeMap::new(),
            aggressive: None,
            auto: AutoController::new(config.degradation.auto.clone()),
        }
    }

    /// Takes a new config's baseline and automatic rules.
    pub fn configure(&mut self, config: &Config) {
        self.baseline = config.degradation.level;
        self.auto.configure(config.degradation.auto.clone());
    }

    /// The level in force.
    pub fn level(&self) -> Level {
        effective_level(self.baseline, self.manual, self.auto.level())
    }

    /// The automatic controller's level.
    pub fn auto_level(&self) -> Level {
        self.auto.level()
    }
}

/// Swaps in `base` (a new config) with the degradation state recomputed for it.
pub fn install(rt: &Runtime, base: Arc<Base>) {
    let (effective, from) = {
        let mut state = rt.degrade.lock().unwrap_or_else(|e| e.into_inner());
        let from = state.level();
        state.configure(&base.config);
        (Effective::compute(&base, &state), from)
    };
    swap(
        rt,
        base,
        effective,
        from,
        Cause::Config,
        "config file changed",
    );
}

/// Recomputes the degradation state after a change of `cause`.
pub fn refresh(rt: &Runtime, from: Level, cause: Cause, why: &str) {
    let base = rt.current.load().base.clone();
    let effective = {
        let state = rt.degrade.lock().unwrap_or_else(|e| e.into_inner());
        Effective::compute(&base, &state)
    };
    swap(rt, base, effective, from, cause, why);
}

fn swap(rt: &Runtime, base: Arc<Base>, effective: Effective, from: Level, cause: Cause, why: &str) {
    let to = effective.level;
    let snap = Arc::new(Snapshot {
        base,
        degrade: Arc::new(effective),
    });
    rt.current.store(snap.clone());
    if from != to {
        let (f, t) = (level_str(from), level_str(to));
        rt.event(
            "level",
            format!("degradation {f} -> {t} ({}): {why}", cause.as_str()),
        );
        rt.metrics
            .degradation_transitions
            .with_label_values(&[f, t, cause.as_str()])
            .inc();
        if to > from {
            warn!(
                from = f,
                to = t,
                cause = cause.as_str(),
                why,
                "degradation level raised"
            );
        } else {
            info!(
                from = f,
                to = t,
                cause = cause.as_str(),
                why,
                "degradation level lowered"
            );
        }
    }
    publish(rt, &snap);
}

/// Sets the level and feature gauges from `snap`.
pub fn publish(rt: &Runtime, snap: &Snapshot) {
    let m = &rt.metrics;
    m.degradation_level.set(level_gauge(snap.degrade.level));
    for f in &snap.routes.features {
        m.feature_enabled
            .with_label_values(&[f.as_str()])
            .set(i64::from(!snap.degrade.disabled.contains(f)));
    }
}

/// The sweeper's once-a-second look: runs the automatic controller over the indicators.
pub fn tick(rt: &Runtime, readings: &[Reading], breaker_open: bool) {
    let snap = rt.current.load();
    let (change, from) = {
        let mut state = rt.degrade.lock().unwrap_or_else(|e| e.into_inner());
        let from = state.level();
        let now = rt.clock.elapsed();
        let change = state
            .auto
            .evaluate(now, readings, breaker_open, &snap.config.load_indicators);
        (change, from)
    };
    if let Some(c) = change {
        info!(
            from = level_str(c.from),
            to = level_str(c.to),
            why = c.why.as_str(),
            "automatic degradation changed its level"
        );
        refresh(rt, from, c.cause, &c.why);
    }
}
