//! The sidecar's shared runtime state: the current config snapshot (swapped atomically on
//! reload), metrics, and the counters readiness and draining depend on.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use std::num::NonZeroU64;

use floodgate_config::{Config, Limit, Listener, Scope};
use floodgate_policy::breaker::{Breaker, State, Transition};
use floodgate_policy::headers::{self, Prepared};
use floodgate_policy::load::LoadWindow;
use floodgate_policy::queue::Admission;
use floodgate_policy::{Clock, Decision, LimitSet};
use prometheus::{Histogram, IntCounter};

use crate::degrade::{DegradeState, Effective, RouteDegradation};
use crate::metrics::{Metrics, StatusLabels};
use crate::router::Router;

/// What one request sees, loaded once per request: the config-derived [`Base`] and the
/// degradation state in force, swapped together so a request never mixes two of either.
pub struct Snapshot {
    /// Built from the config file (replaced on reload).
    pub base: Arc<Base>,
    /// Level and features off (replaced when the level, a flag or the config changes).
    pub degrade: Arc<Effective>,
}

impl Snapshot {
    /// Sets the level and feature gauges from this snapshot.
    pub fn publish_degradation(&self, m: &Metrics) {
        m.degradation_level
            .set(floodgate_policy::degrade::level_gauge(self.degrade.level));
        for f in &self.routes.features {
            m.feature_enabled
                .with_label_values(&[f.as_str()])
                .set(i64::from(!self.degrade.disabled.contains(f)));
        }
    }
}

impl std::ops::Deref for Snapshot {
    type Target = Base;

    fn deref(&self) -> &Base {
        &self.base
    }
}

/// Everything one request needs from the config file.
pub struct Base {
    /// Sequence number (1 = the file loaded at start).
    pub version: u64,
    /// The validated config.
    pub config: Config,
    /// Route table.
    pub router: Router,
    /// Latency histogram per bound listener ([`Runtime::lanes`]) and route index (default
    /// route last).
    pub route_duration: Vec<Vec<Histogram>>,
    /// Each listener's upstream (indexed like `config.listeners`), resolved when the snapshot
    /// was built.
    pub upstreams: Vec<SocketAddr>,
    /// The names of the listeners bound at start, in [`Runtime::lanes`] order (carried from
    /// snapshot to snapshot: ports are bound once).
    pub lane_names: Arc<[String]>,
    /// For each bound listener, its index in `config.listeners`; `None` once a reload
    /// removed it (its port stays open until a restart and answers 503).
    pub lanes: Vec<Option<usize>>,
    /// Rate limits, with counters carried over from the previous snapshot where unchanged.
    pub limits: LimitSet,
    /// Per limit, its response fields' values prepared for each window, as configured and
    /// (global limits) as the local share it falls back to.
    pub limit_fields: Vec<Box<[Prepared]>>,
    /// `floodgate_ratelimit_decisions_total` per limit, resolved once: allowed, limited, shadow.
    pub limit_decisions: Vec<[IntCounter; 3]>,
    /// Per limit, the highest use (in millionths of the limit) Redis reported since the last
    /// sweep: global limits' utilisation, which no local state sees.
    pub remote_use: Vec<AtomicU64>,
    /// Per limit, its decision call in Redis, encoded once ([`crate::global::Command`]): global
    /// limits of one window, fixed or sliding.
    pub remote_calls: Vec<Option<crate::global::Command>>,
    /// The load indicators' window, carried over from the previous snapshot while its span
    /// is unchanged.
    pub load: Arc<LoadWindow>,
    /// Degradation's per-route view of the config (features, fallbacks, cache, breakers).
    pub routes: RouteDegradation,
}

/// Why a snapshot could not be built from a valid config.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The upstream host did not resolve.
    #[error("{key} `{address}` does not resolve: {reason}")]
    Resolve {
        /// The config key (`upstream.address`, `listeners.NAME.upstream.address`).
        key: String,
        /// As configured.
        address: String,
        /// Resolver's answer.
        reason: String,
    },
}

impl Base {
    /// Builds a snapshot, resolving the upstream address (blocking: call off the request path).
    /// Limits whose definition is unchanged from `previous` keep their counters.
    pub fn build(
        config: Config,
        version: u64,
        metrics: &Metrics,
        previous: Option<&Base>,
        clock: &Clock,
    ) -> Result<Self, BuildError> {
        let upstreams = config
            .listeners
            .iter()
            .map(|l| resolve(&config, l))
            .collect::<Result<Vec<_>, _>>()?;
        let lane_names: Arc<[String]> = match previous {
            Some(p) => p.lane_names.clone(),
            None => config.listeners.iter().map(|l| l.name.clone()).collect(),
        };
        let lanes = lane_names
            .iter()
            .map(|n| config.listeners.iter().position(|l| &l.name == n))
            .collect();
        let router = Router::new(config.routes.clone());
        let route_duration = lane_names
            .iter()
            .map(|lane| {
                router
                    .all()
                    .map(|r| metrics.route_duration(lane, &r.name))
                    .collect()
            })
            .collect();
        let span = config.load_indicators.window;
        let load = match previous {
            Some(p) if p.load.span() == span => p.load.clone(),
            _ => Arc::new(LoadWindow::new(span, clock.clone())),
        };
        let effective = effective_limits(&config);
        let route_names: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
        let limits = LimitSet::new(&effective, &route_names, previous.map(|p| &p.limits), clock);
        let limit_fields = config
            .limits
            .iter()
            .zip(&effective)
            .map(|(def, local)| headers::prepare([def, local]))
            .collect();
        let limit_decisions = effective
            .iter()
            .map(|l| {
                let c = |d: Decision| {
                    metrics
                        .rl_decisions
                        .with_label_values(&[l.name.as_str(), d.as_str()])
                };
                [
                    c(Decision::Allowed),
                    c(Decision::Limited),
                    c(Decision::ShadowLimited),
                ]
            })
            .collect();
        for l in &config.limits {
            let (on, off) = match (l.scope, &config.redis) {
                (Scope::Global, Some(_)) => ("local_fallback", "redis"),
                _ => ("local", "local_fallback"),
            };
            metrics
                .rl_backend
                .with_label_values(&[l.name.as_str(), on])
                .set(1);
            metrics
                .rl_backend
                .with_label_values(&[l.name.as_str(), off])
                .set(0);
        }
        let routes = RouteDegradation::build(&config, &router, previous.map(|p| &p.routes), clock);
        let remote_calls = config
            .limits
            .iter()
            .map(|l| match l.scope {
                Scope::Global if config.redis.is_some() => crate::global::Command::of(l),
                _ => None,
            })
            .collect();
        Ok(Self {
            routes,
            version,
            config,
            router,
            route_duration,
            upstreams,
            lane_names,
            lanes,
            limits,
            remote_use: effective.iter().map(|_| AtomicU64::new(0)).collect(),
            remote_calls,
            limit_fields,
            limit_decisions,
            load,
        })
    }
}

impl Base {
    /// The upstream address (as configured) of the listener bound as lane `lane`, unless a
    /// reload removed that listener.
    pub fn lane_upstream(&self, lane: usize) -> Option<&str> {
        let i = self.lanes.get(lane).copied().flatten()?;
        Some(self.config.listeners.get(i)?.upstream.address.as_str())
    }
}

/// `listener`'s upstream address, resolved (blocking).
fn resolve(config: &Config, listener: &Listener) -> Result<SocketAddr, BuildError> {
    use std::net::ToSocketAddrs;
    let address = &listener.upstream.address;
    let fail = |reason: String| BuildError::Resolve {
        key: if config.named_listeners {
            format!("listeners.{}.upstream.address", listener.name)
        } else {
            "upstream.address".to_string()
        },
        address: address.clone(),
        reason,
    };
    address
        .to_socket_addrs()
        .map_err(|e| fail(e.to_string()))?
        .next()
        .ok_or_else(|| fail("no addresses".into()))
}

/// The limits as this sidecar counts them locally. A `scope: global` limit is decided in
/// Redis; its local limiter holds the Redis-outage share, `max_requests /
/// redis.expected_replicas` (at least 1), used whenever Redis is unreachable; with no `redis`
/// section at all there is nothing to divide by and it holds the full `max_requests`.
fn effective_limits(config: &Config) -> Vec<Limit> {
    let replicas = config
        .redis
        .as_ref()
        .map_or(1, |r| u64::from(r.expected_replicas.get()));
    config
        .limits
        .iter()
        .map(|l| match l.scope {
            Scope::Global => {
                let share = (l.max_requests.get() / replicas).max(1);
                Limit {
                    max_requests: NonZeroU64::new(share).unwrap_or(NonZeroU64::MIN),
                    ..l.clone()
                }
            }
            Scope::Local => l.clone(),
        })
        .collect()
}

/// One port bound at start, with the policies of its upstream that live across reloads: its
/// admission queue and circuit breaker are its own, so a slow port cannot starve another.
pub struct Lane {
    /// The listener's name (`default` in the one-listener form).
    pub name: String,
    /// Where it listens (bound at start; a reload does not move it).
    pub listen: SocketAddr,
    /// Its admission queue.
    pub admission: Arc<Admission>,
    /// Its upstream's circuit breaker; used when the snapshot has a `circuit_breaker`
    /// section.
    pub breaker: Arc<Breaker>,
}

/// Shared by the proxy, the reloader and the metrics endpoint.
pub struct Runtime {
    /// The config in force.
    pub current: ArcSwap<Snapshot>,
    /// Config file being watched.
    pub config_path: PathBuf,
    /// Addresses from the command line, laid over every load of the file.
    pub wiring: floodgate_config::Wiring,
    /// Metrics registry.
    pub metrics: Metrics,
    /// Preformatted status labels.
    pub status_labels: StatusLabels,
    /// Time for the policies.
    pub clock: Clock,
    /// The Redis backend of global limits, when `redis` is configured at start.
    pub global: Option<Arc<crate::global::GlobalLimits>>,
    /// The listeners bound at start, each with its queue and breaker; never empty.
    pub lanes: Vec<Arc<Lane>>,
    /// The first listener's admission queue (the one-listener form's only one); lives across
    /// reloads so nothing queued is lost when sizes change.
    pub admission: Arc<Admission>,
    /// The first listener's upstream circuit breaker (the one-listener form's only one).
    pub breaker: Arc<Breaker>,
    /// Degradation's runtime part: manual level, operator flags, the automatic controller.
    pub degrade: std::sync::Mutex<DegradeState>,
    /// The config file as last loaded: the baseline overrides are layered on.
    pub file_config: std::sync::Mutex<Config>,
    /// The config the sidecar started with, for the settings read only at start-up.
    pub boot: Config,
    /// Admin overrides and the audit trail.
    pub admin: std::sync::Mutex<crate::overrides::AdminState>,
    /// Changes as they happen, for `floodgatectl watch`.
    pub events: tokio::sync::broadcast::Sender<floodgate_admin::reply::Event>,
    /// Version counter for the next snapshot.
    next_version: AtomicU64,
    /// Held by whoever writes the snapshot ([`crate::lifecycle::writer`]).
    pub writer: std::sync::Mutex<()>,
    /// The reloader watches the file and handles SIGHUP (readiness waits for it: a SIGHUP
    /// before the handler is in place would end the process).
    pub reloads_armed: AtomicBool,
    /// Client connections open now, on every listener (`server.max_connections` bounds it).
    pub connections: std::sync::atomic::AtomicU32,
    /// Listeners are up (set once the server runs).
    ready: AtomicBool,
    /// SIGTERM received.
    draining: AtomicBool,
}

impl Runtime {
    /// State around the first snapshot.
    pub fn new(
        first: Base,
        config_path: PathBuf,
        wiring: floodgate_config::Wiring,
        metrics: Metrics,
        clock: Clock,
    ) -> Arc<Self> {
        // A URL that does not parse fails validation first; should one get here anyway, the
        // sidecar runs as without Redis (global limits at their local share) and says why.
        let global = first.config.redis.as_ref().and_then(|r| {
            crate::global::GlobalLimits::new(r, &metrics)
                .map_err(|e| tracing::error!("redis: {e}; global limits decide locally"))
                .ok()
        });
        metrics.config_version.set(first.version as i64);
        let lanes: Vec<Arc<Lane>> = first
            .config
            .listeners
            .iter()
            .map(|l| {
                Arc::new(Lane {
                    name: l.name.clone(),
                    listen: l.listen,
                    admission: Admission::new(u32::MAX, 0, clock.clone()),
                    breaker: Breaker::new(
                        first.config.circuit_breaker.clone().unwrap_or_default(),
                        clock.clone(),
                    ),
                })
            })
            .collect();
        let (admission, breaker) = (lanes[0].admission.clone(), lanes[0].breaker.clone());
        let degrade = DegradeState::new(&first.config);
        let file_config = std::sync::Mutex::new(first.config.clone());
        let boot = first.config.clone();
        let admin = std::sync::Mutex::new(crate::overrides::AdminState::new(
            first
                .config
                .admin
                .as_ref()
                .and_then(|a| a.audit_log.clone()),
            first.config.redis.is_some(),
        ));
        let effective = Effective::compute(&first.config, &first.routes, &degrade);
        let rt = Arc::new(Self {
            next_version: AtomicU64::new(first.version + 1),
            writer: std::sync::Mutex::new(()),
            reloads_armed: AtomicBool::new(false),
            boot,
            current: ArcSwap::from_pointee(Snapshot {
                base: Arc::new(first),
                degrade: Arc::new(effective),
            }),
            degrade: std::sync::Mutex::new(degrade),
            file_config,
            admin,
            events: tokio::sync::broadcast::channel(256).0,
            config_path,
            wiring,
            metrics,
            status_labels: StatusLabels::new(),
            clock,
            global,
            lanes,
            admission,
            breaker,
            connections: std::sync::atomic::AtomicU32::new(0),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        });
        rt.apply_policies(&rt.current.load(), None);
        rt.current.load().publish_degradation(&rt.metrics);
        rt
    }

    /// Reserves the version number of the next snapshot.
    pub fn next_version(&self) -> u64 {
        self.next_version.fetch_add(1, Ordering::Relaxed)
    }

    /// Marks the listeners as up.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Ready to take traffic: config loaded, listening, not draining.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_draining()
    }

    /// Starts draining (SIGTERM).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.metrics.draining.set(1);
    }

    /// True after SIGTERM.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Requests being served now, queued ones included.
    pub fn active(&self) -> i64 {
        self.metrics.active.get()
    }

    /// Tells watchers (`floodgatectl watch`) that something changed; nobody watching is fine.
    pub fn event(&self, kind: &str, summary: String) {
        let _ = self.events.send(floodgate_admin::reply::Event {
            time: std::time::SystemTime::now(),
            kind: kind.into(),
            summary,
        });
    }

    /// Logs and counts a state change of the breaker of lane `lane` (its upstream at
    /// `upstream`).
    pub fn breaker_moved(&self, lane: usize, upstream: &str, t: Transition) {
        let listener = self.lanes.get(lane).map_or("", |l| l.name.as_str());
        let named = self.boot.named_listeners;
        let (from, to) = (t.from.as_str(), t.to.as_str());
        self.event(
            "breaker",
            if named {
                format!("breaker upstream ({upstream}, listener {listener}) {from} -> {to}")
            } else {
                format!("breaker upstream ({upstream}) {from} -> {to}")
            },
        );
        let m = &self.metrics;
        m.breaker_state
            .with_label_values(m.by_listener(&[listener, upstream]))
            .set(t.to.gauge());
        m.breaker_transitions
            .with_label_values(m.by_listener(&[listener, upstream, to]))
            .inc();
        match t.to {
            State::Open => tracing::warn!(
                upstream,
                listener,
                from,
                "circuit breaker opened: answering 503 circuit_open until probes succeed"
            ),
            _ => tracing::info!(
                upstream,
                listener,
                from,
                to,
                "circuit breaker changed state"
            ),
        }
    }

    /// Brings the long-lived policies (each listener's queue sizes and breaker settings) in
    /// line with `snap`: called with the first snapshot and after every swap.
    pub fn apply_policies(&self, snap: &Base, previous: Option<&Base>) {
        let (max_concurrency, max_size) = match &snap.config.queue {
            Some(q) => (q.max_concurrency.get(), q.max_size),
            // No queue: every request gets a slot at once; waiters of a queue just removed
            // are let through.
            None => (u32::MAX, 0),
        };
        let m = &self.metrics;
        for (i, lane) in self.lanes.iter().enumerate() {
            lane.admission.resize(max_concurrency, max_size);
            let name = [lane.name.as_str()];
            m.queue_capacity
                .with_label_values(m.by_listener(&name))
                .set(i64::from(
                    snap.config.queue.as_ref().map_or(0, |q| q.max_size),
                ));
            m.concurrency_limit
                .with_label_values(m.by_listener(&name))
                .set(i64::from(
                    snap.config
                        .queue
                        .as_ref()
                        .map_or(0, |q| q.max_concurrency.get()),
                ));
            if let Some(cb) = &snap.config.circuit_breaker {
                lane.breaker.configure(cb.clone());
            }
            let address = snap.lane_upstream(i);
            if let Some(prev) = previous
                .and_then(|p| p.lane_upstream(i))
                .filter(|p| Some(*p) != address)
            {
                // Another app (or none): what the breaker learned about the old one does
                // not apply.
                lane.breaker.reset();
                let _ = m
                    .breaker_state
                    .remove_label_values(m.by_listener(&[lane.name.as_str(), prev]));
            }
            let Some(address) = address else { continue };
            let state = if snap.config.circuit_breaker.is_some() {
                lane.breaker.state().0.gauge()
            } else {
                0
            };
            m.breaker_state
                .with_label_values(m.by_listener(&[lane.name.as_str(), address]))
                .set(state);
        }
    }
}

/// Counts a request as active for as long as it lives (dropped with the request context).
pub struct ActiveGuard(Arc<Runtime>);

impl ActiveGuard {
    /// Counts one more request.
    pub fn new(rt: &Arc<Runtime>) -> Self {
        rt.metrics.active.inc();
        Self(rt.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.metrics.active.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_limits_run_at_their_redis_outage_share() {
        let src = "listen: 127.0.0.1:8080\nupstream: { address: 127.0.0.1:3000 }\nredis: { url: redis://127.0.0.1:6379, expected_replicas: 3 }\nlimits:\n  - { name: g, max_requests: 1000, window_seconds: 60, scope: global }\n  - { name: tiny, max_requests: 2, window_seconds: 60, scope: global }\n  - { name: l, max_requests: 1000, window_seconds: 60 }\n";
        let cfg = floodgate_config::parse(src, std::path::Path::new("t")).unwrap();
        let eff: Vec<u64> = effective_limits(&cfg)
            .iter()
            .map(|l| l.max_requests.get())
            .collect();
        assert_eq!(eff, [333, 1, 1000]);
    }
}
