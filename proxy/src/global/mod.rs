//! Fleet-wide limits in Redis. Each decision is one `EVALSHA` of `limit.lua` (reloaded on
//! `NOSCRIPT` by redis-rs) on one multiplexed connection to the key's master ([`link`]), so
//! concurrent decisions are pipelined and no request waits on more than one round trip.
//! Decisions have connections of their own, opened from the runtime that serves requests so
//! that their I/O is driven there; the prober has others. Every call has the
//! `redis.timeout_ms` budget;
//! past it, or on any error, the key's shard ([`health`]) is marked down and its keys decide
//! locally at the Redis-outage share, until the prober ([`probe`]), which runs the very
//! script decisions run, on every shard, brings it back.

pub mod health;
mod link;
mod probe;
pub mod slot;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use floodgate_config::{Limit, Redis, RedisTarget, Strategy};
use floodgate_policy::Outcome;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use prometheus::{Histogram, IntCounterVec};
use redis::aio::ConnectionManager;
use redis::IntoConnectionInfo;

use health::Health;

const SCRIPT: &str = include_str!("limit.lua");

/// A connection to a standalone server or a cluster; both multiplex and reconnect.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

/// Why a global decision could not be made.
#[derive(Debug, thiserror::Error)]
pub enum GlobalError {
    /// The key's shard is marked down (or there is no connection); not tried.
    #[error("redis is marked unavailable")]
    Down,
    /// Past `redis.timeout_ms`.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The script answered something unexpected.
    #[error("unexpected script reply: {0:?}")]
    Reply(String),
}

/// The Redis backend shared by every request.
pub struct GlobalLimits {
    target: RedisTarget,
    timeout: Duration,
    /// The fleet sync's connection (and, in a cluster, where the prober reads the slot map):
    /// for a standalone server the prober's own, for a cluster redis-rs's cluster connection.
    /// Decisions and probes go to each shard's master directly ([`link::Link`]).
    conn: ArcSwapOption<Conn>,
    health: Health,
    script: redis::Script,
    latency: Histogram,
    errors: IntCounterVec,
}

impl GlobalLimits {
    /// A backend for `cfg`; it connects once its prober service runs.
    pub fn new(cfg: &Redis, metrics: &crate::metrics::Metrics) -> Result<Arc<Self>, GlobalError> {
        let (transitions, up) = (metrics.redis_transitions.clone(), metrics.redis_up.clone());
        let health = match &cfg.target {
            RedisTarget::Standalone(url) => {
                Health::standalone(url.as_str().into_connection_info()?, transitions, up)
            }
            RedisTarget::Cluster(_) => Health::cluster(transitions, up),
        };
        Ok(Arc::new(Self {
            target: cfg.target.clone(),
            timeout: cfg.timeout,
            conn: ArcSwapOption::empty(),
            health,
            script: redis::Script::new(SCRIPT),
            latency: metrics.redis_latency.clone(),
            errors: metrics.redis_errors.clone(),
        }))
    }

    /// Every shard is up: no global limit decides locally now.
    pub fn is_healthy(&self) -> bool {
        self.health.all_up()
    }

    /// Some shard is up: global limits are worth sending to Redis (keys of a down shard are
    /// answered [`GlobalError::Down`] without a round trip).
    pub fn any_healthy(&self) -> bool {
        self.health.any_up()
    }

    /// The cluster slot of `key` (0 for a standalone server: one shard holds everything).
    fn slot(&self, key: &str) -> u16 {
        match self.target {
            RedisTarget::Standalone(_) => 0,
            RedisTarget::Cluster(_) => slot::of_key(key.as_bytes()),
        }
    }

    /// One decision for the key `key_hash` of `limit`. `carry` hands over what this sidecar
    /// admitted locally for the key while its shard was down, one count per window, shortest
    /// first ([`floodgate_policy::LimitSet::take_local`]); Redis adds it before deciding. It
    /// is called only once the key's shard is known to be up, so a key that stays local keeps
    /// its local counts. (Should this very call fail, the handed-over counts are lost: the key
    /// starts its local share afresh, once, on a shard that failed right after coming back.)
    pub async fn check(
        self: &Arc<Self>,
        limit: &Limit,
        key_hash: u64,
        carry: impl FnOnce() -> Option<Vec<u64>>,
    ) -> Result<Outcome, GlobalError> {
        // The hash tag is the whole key: one key's windows share a slot, keys spread over slots.
        let key = format!("fg:{{{}:{key_hash:016x}}}", limit.name);
        let shard = self
            .health
            .up_shard(self.slot(&key))
            .ok_or(GlobalError::Down)?;
        let conn = shard.link.for_decision().ok_or(GlobalError::Down)?;
        let mut windows: Vec<(u64, Duration)> =
            std::iter::once((limit.max_requests.get(), limit.window))
                .chain(limit.extra_windows.iter().map(|(m, w)| (m.get(), *w)))
                .collect();
        windows.sort_by_key(|w| w.1);
        let carry = carry().filter(|c| c.len() == windows.len());
        let kind = match (limit.strategy, carry.is_some()) {
            (Strategy::FixedWindow, false) => "f",
            (Strategy::FixedWindow, true) => "f+",
            (Strategy::SlidingWindow, false) => "s",
            (Strategy::SlidingWindow, true) => "s+",
            (Strategy::TokenBucket, _) => "t",
        };
        let mut inv = self.script.key(key);
        inv.arg(kind);
        for (max, w) in &windows {
            inv.arg(*max)
                .arg(u64::try_from(w.as_millis()).unwrap_or(u64::MAX));
        }
        if kind.len() > 1 {
            for c in carry.unwrap_or_default() {
                inv.arg(c);
            }
        }
        let start = Instant::now();
        let reply = self.run(conn, &inv).await;
        self.latency.observe(start.elapsed().as_secs_f64());
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                self.count_error(&e);
                self.health.decision_failed(&shard, &e);
                return Err(e);
            }
        };
        let mut fields = [0i64; 5];
        let mut n = 0;
        for (slot, text) in fields.iter_mut().zip(reply.split(' ')) {
            // Lua prints integral numbers without a fraction; anything else is a bad reply.
            *slot = text
                .parse()
                .map_err(|_| GlobalError::Reply(reply.clone()))?;
            n += 1;
        }
        let [allowed, window, remaining, reset_ms, retry_ms] = fields;
        if n != 5 {
            return Err(GlobalError::Reply(reply));
        }
        let ms = |v: i64| Duration::from_millis(u64::try_from(v).unwrap_or(0));
        let (max, window) = usize::try_from(window - 1)
            .ok()
            .and_then(|i| windows.get(i))
            .copied()
            .unwrap_or((limit.max_requests.get(), limit.window));
        Ok(Outcome {
            allowed: allowed == 1,
            limit: max,
            remaining: u64::try_from(remaining).unwrap_or(0),
            reset: ms(reset_ms),
            retry_after: ms(retry_ms),
            window,
        })
    }

    /// Runs the limit script `inv` on `conn` within `redis.timeout_ms`.
    async fn run(
        &self,
        mut conn: ConnectionManager,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<String, GlobalError> {
        match tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn)).await {
            Ok(r) => r.map_err(GlobalError::from),
            Err(_) => Err(GlobalError::Timeout(self.timeout)),
        }
    }

    /// Runs `pipe` on the backend's connection (the fleet sync shares it), within 1 s.
    pub async fn query<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, GlobalError> {
        let Some(conn) = self.conn.load_full() else {
            return Err(GlobalError::Down);
        };
        let fut = async {
            match conn.as_ref().clone() {
                Conn::Single(mut c) => pipe.query_async(&mut c).await,
                Conn::Cluster(mut c) => pipe.query_async(&mut c).await,
            }
        };
        match tokio::time::timeout(Duration::from_secs(1), fut).await {
            Ok(r) => r.map_err(GlobalError::from),
            Err(_) => Err(GlobalError::Timeout(Duration::from_secs(1))),
        }
    }

    /// A server to subscribe to for fleet announcements (in a cluster, any node: PUBLISH
    /// reaches every node).
    pub fn pubsub_url(&self) -> &str {
        match &self.target {
            RedisTarget::Standalone(url) => url,
            RedisTarget::Cluster(nodes) => nodes.first().map_or("", String::as_str),
        }
    }

    fn count_error(&self, e: &GlobalError) {
        let kind = match e {
            // Not a call: nothing failed.
            GlobalError::Down => return,
            GlobalError::Timeout(_) => "timeout",
            GlobalError::Redis(r) if r.is_connection_refusal() => "refused",
            GlobalError::Redis(r) if r.is_io_error() || r.is_connection_dropped() => "io",
            _ => "other",
        };
        self.errors.with_label_values(&[kind]).inc();
    }

    /// redis-rs's cluster connection (fleet sync, slot map), for a cluster of `nodes`.
    async fn connect_cluster(
        nodes: &[String],
    ) -> Result<redis::cluster_async::ClusterConnection, redis::RedisError> {
        redis::cluster::ClusterClient::builder(nodes.iter().map(String::as_str))
            .connection_timeout(Duration::from_secs(1))
            .response_timeout(Duration::from_secs(1))
            .retries(1)
            .build()?
            .get_async_connection()
            .await
    }
}

/// Runs the prober ([`probe::run`]) as a pingora background service, until shutdown.
pub struct Prober(pub Arc<GlobalLimits>);

#[async_trait]
impl BackgroundService for Prober {
    async fn start(&self, shutdown: ShutdownWatch) {
        probe::run(&self.0, shutdown).await;
    }
}
