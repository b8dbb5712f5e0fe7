//! Graceful degradation in the sidecar. The per-route view of the config ([`RouteDegradation`],
//! part of the config snapshot), the state in force ([`Effective`], swapped in with the
//! snapshot whenever the level or a flag changes) and the runtime part an operator and the
//! automatic controller change ([`DegradeState`]). Transitions are
//! [`crate::lifecycle`]'s; the decisions themselves are `floodgate_policy::degrade`'s.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use floodgate_config::{Config, Fallback, Level, Priority};
use floodgate_policy::breaker::Breaker;
use floodgate_policy::cache::ResponseCache;
use floodgate_policy::degrade::{disabled_features, effective_level, AutoController};
use floodgate_policy::Clock;
use http::{HeaderName, HeaderValue};

use crate::router::Router;

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
    /// The state of `config` (whose routes' features `routes` is) under `state`.
    pub fn compute(config: &Config, routes: &RouteDegradation, state: &DegradeState) -> Self {
        let d = &config.degradation;
        let level = state.level();
        let disabled = disabled_features(d, level, &state.flags);
        let route_off = routes
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
            level_value: HeaderValue::from_static(level.as_str()),
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
    pub(crate) auto: AutoController,
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
