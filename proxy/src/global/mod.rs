//! Fleet-wide limits in Redis. Each decision is one `EVALSHA` of `limit.lua` (reloaded on
//! `NOSCRIPT` by redis-rs) on one multiplexed connection, so concurrent decisions are
//! pipelined and no request waits on more than one round trip. Decisions have a connection of
//! their own, opened from the runtime that serves requests so that its I/O is driven there;
//! the prober and the fleet sync share another. Every call has the `redis.timeout_ms` budget;
//! past it, or on any error, the key's shard ([`health`]) is marked down and its keys decide
//! locally at the Redis-outage share, until the prober ([`probe`]), which runs the very
//! script decisions run, on every shard, brings it back.

pub mod health;
mod probe;
pub mod slot;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use floodgate_config::{Limit, Redis, RedisTarget, Strategy};
use floodgate_policy::Outcome;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use prometheus::{Histogram, IntCounterVec};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

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
    /// The prober's and fleet sync's connection, driven on the prober's runtime.
    conn: ArcSwapOption<Conn>,
    /// The decisions' connection. A multiplexed connection's I/O task runs on the runtime
    /// that opened it; opened by the prober it would sit on the prober's own thread, and
    /// every decision would cross threads twice (an eventfd wake-up each way and no batching
    /// of concurrent commands into one write). So the first decision that finds none starts
    /// opening one from the proxy's runtime, in a task of its own (not against any request's
    /// `redis.timeout_ms`: a budget shorter than a connection handshake must not keep Redis
    /// away for good), and decisions use the prober's connection until it is ready. Measured:
    /// 0.55 -> 0.68 of the no-limit throughput on the bench's loopback Redis, 79 -> 68 us of
    /// proxy CPU per request. Emptied each time a shard comes back, so decisions do not find
    /// the connection broken by the outage (the prober only proves its own).
    decisions: ArcSwapOption<Conn>,
    /// A task is opening the decisions' connection.
    opening: AtomicBool,
    health: Health,
    script: redis::Script,
    latency: Histogram,
    errors: IntCounterVec,
}

impl GlobalLimits {
    /// A backend for `cfg`; it connects once its prober service runs.
    pub fn new(cfg: &Redis, metrics: &crate::metrics::Metrics) -> Arc<Self> {
        let (transitions, up) = (metrics.redis_transitions.clone(), metrics.redis_up.clone());
        let health = match cfg.target {
            RedisTarget::Standalone(_) => Health::standalone(transitions, up),
            RedisTarget::Cluster(_) => Health::cluster(transitions, up),
        };
        Arc::new(Self {
            target: cfg.target.clone(),
            timeout: cfg.timeout,
            conn: ArcSwapOption::empty(),
            decisions: ArcSwapOption::empty(),
            opening: AtomicBool::new(false),
            health,
            script: redis::Script::new(SCRIPT),
            latency: metrics.redis_latency.clone(),
            errors: metrics.redis_errors.clone(),
        })
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

    /// One decision for the key `key_hash` of `limit`.
    pub async fn check(
        self: &Arc<Self>,
        limit: &Limit,
        key_hash: u64,
    ) -> Result<Outcome, GlobalError> {
        // The hash tag is the whole key: one key's windows share a slot, keys spread over slots.
        let key = format!("fg:{{{}:{key_hash:016x}}}", limit.name);
        let slot = self.slot(&key);
        if !self.health.is_up(slot) {
            return Err(GlobalError::Down);
        }
        let conn = match self.decisions.load_full() {
            Some(c) => c,
            None => {
                self.open_decisions();
                self.conn.load_full().ok_or(GlobalError::Down)?
            }
        };
        let mut windows: Vec<(u64, Duration)> =
            std::iter::once((limit.max_requests.get(), limit.window))
                .chain(limit.extra_windows.iter().map(|(m, w)| (m.get(), *w)))
                .collect();
        windows.sort_by_key(|w| w.1);
        let kind = match limit.strategy {
            Strategy::FixedWindow => "f",
            Strategy::SlidingWindow => "s",
            Strategy::TokenBucket => "t",
        };
        let mut inv = self.script.key(key);
        inv.arg(kind);
        for (max, w) in &windows {
            inv.arg(*max)
                .arg(u64::try_from(w.as_millis()).unwrap_or(u64::MAX));
        }
        let start = Instant::now();
        let reply = self.run(&conn, &inv).await;
        self.latency.observe(start.elapsed().as_secs_f64());
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                self.count_error(&e);
                self.health.decision_failed(slot, &e);
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
        conn: &Conn,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<String, GlobalError> {
        let call = async {
            match conn.clone() {
                Conn::Single(mut c) => inv.invoke_async(&mut c).await,
                Conn::Cluster(mut c) => inv.invoke_async(&mut c).await,
            }
        };
        match tokio::time::timeout(self.timeout, call).await {
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

    /// Starts opening the decisions' connection on the current (the proxy's) runtime, unless
    /// a task is at it already.
    fn open_decisions(self: &Arc<Self>) {
        if self.opening.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            match this.connect().await {
                Ok(c) => this.decisions.store(Some(Arc::new(c))),
                Err(e) => {
                    this.errors.with_label_values(&["connect"]).inc();
                    tracing::debug!("redis connect for decisions failed: {e}");
                    // Redis may refuse new connections while the prober's still works (say,
                    // at maxclients): decisions go on over that one, and the next attempt
                    // waits instead of following every failure at once.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            this.opening.store(false, Ordering::Release);
        });
    }

    fn count_error(&self, e: &GlobalError) {
        let kind = match e {
            GlobalError::Timeout(_) => "timeout",
            GlobalError::Redis(r) if r.is_connection_refusal() => "refused",
            GlobalError::Redis(r) if r.is_io_error() || r.is_connection_dropped() => "io",
            _ => "other",
        };
        self.errors.with_label_values(&[kind]).inc();
    }

    async fn connect(&self) -> Result<Conn, redis::RedisError> {
        match &self.target {
            RedisTarget::Standalone(url) => {
                let client = redis::Client::open(url.as_str())?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(1)))
                    .set_response_timeout(Some(Duration::from_secs(1)))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                Ok(Conn::Single(
                    ConnectionManager::new_with_config(client, config).await?,
                ))
            }
            RedisTarget::Cluster(nodes) => {
                let client =
                    redis::cluster::ClusterClient::builder(nodes.iter().map(String::as_str))
                        .connection_timeout(Duration::from_secs(1))
                        .response_timeout(Duration::from_secs(1))
                        .retries(1)
                        .build()?;
                Ok(Conn::Cluster(client.get_async_connection().await?))
            }
        }
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
