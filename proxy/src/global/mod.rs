//! Fleet-wide limits in Redis. A decision is an `EVALSHA` of `limit.lua` (sent again as
//! `EVAL` on `NOSCRIPT`) on one pipelined connection to the key's master ([`wire`], per shard
//! in [`link`]), so concurrent decisions share its writes: a decision waits for its own round
//! trip, and on a busy connection for the rest of the one in flight before it is sent (one
//! batch in flight at most). Decisions of one key (of a limit of one window, fixed or sliding)
//! queued together on a busy connection share one call, which the script answers as if it had
//! decided them in turn (`wire::Wire::join`): Redis runs the script once for all of them.
//! Such a limit's call is encoded once per config snapshot ([`Command`]) and copied, with the
//! key's hash written in, for each decision.
//! (On redis-rs's connection, lent while the decisions' own is not open, each decision is a
//! call of its own.)
//! Decisions have connections of their own, opened from the runtime that serves requests so
//! that their I/O is driven there; the prober has others. Every call has the
//! `redis.timeout_ms` budget; past it, or on any error, the key's shard ([`health`]) is
//! marked down and its keys decide locally at the Redis-outage share, until the prober
//! ([`probe`]), which runs the very script decisions run, on every shard, brings it back.

pub mod health;
mod link;
mod probe;
pub mod slot;
mod wire;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use floodgate_config::{Limit, Redis, RedisTarget, Strategy};
use floodgate_policy::Outcome;
use futures_util::future::join_all;
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
    /// The decisions' connection failed, or Redis refused the call.
    #[error("{0}")]
    Wire(#[from] wire::WireError),
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
    /// Wakes `mode: approximate`'s sync, which sleeps while no key asks for it.
    sync_wake: tokio::sync::Notify,
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
            sync_wake: tokio::sync::Notify::new(),
        }))
    }

    /// A `mode: approximate` key asked for a view while the sync slept.
    pub fn wake_sync(&self) {
        self.sync_wake.notify_one();
    }

    /// Until [`GlobalLimits::wake_sync`] (at once if it was called since the last wait).
    pub async fn sync_asked(&self) {
        self.sync_wake.notified().await;
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

    /// The cluster slot of `limit`'s key `key_hash` (0 for a standalone server: one shard
    /// holds everything, and no key is built).
    fn slot(&self, limit: &Limit, key_hash: u64) -> u16 {
        match self.target {
            RedisTarget::Standalone(_) => 0,
            RedisTarget::Cluster(_) => slot::of_key(&redis_key(&limit.name, key_hash)),
        }
    }

    /// One decision for the key `key_hash` of `limit`; `command` is the limit's call as the
    /// config snapshot prepared it ([`Command::of`]), if it has one. `carry` hands over what
    /// this sidecar admitted locally for the key while its shard was down, one count per
    /// window, shortest first ([`floodgate_policy::LimitSet::take_local`]); Redis adds it
    /// before deciding. It is called only once the key's shard is known to be up, so a key
    /// that stays local keeps its local counts. (Should this very call fail, the handed-over
    /// counts are lost: the key starts its local share afresh, once, on a shard that failed
    /// right after coming back.)
    pub async fn check(
        self: &Arc<Self>,
        limit: &Limit,
        command: Option<&Command>,
        key_hash: u64,
        carry: impl FnOnce() -> Option<Vec<u64>>,
    ) -> Result<Decided, GlobalError> {
        let shard = self
            .health
            .up_shard(self.slot(limit, key_hash))
            .ok_or(GlobalError::Down)?;
        let own: Windows;
        let windows: &[(u64, Duration)] = match command {
            Some(c) => &c.windows,
            None => {
                own = windows(limit);
                &own
            }
        };
        let carry = carry().filter(|c| c.len() == windows.len());
        let kind = match (limit.strategy, carry.is_some()) {
            (Strategy::FixedWindow, false) => "f",
            (Strategy::FixedWindow, true) => "f+",
            (Strategy::SlidingWindow, false) => "s",
            (Strategy::SlidingWindow, true) => "s+",
            (Strategy::TokenBucket, _) => "t",
        };
        let carry = if kind.len() > 1 {
            carry.unwrap_or_default()
        } else {
            Vec::new()
        };
        // A limit of one window decides the requests of one key that come together in one call
        // (`join`): the script's 'F' / 'S' answers them as if each had been decided in turn.
        let kind = match kind {
            "f" if windows.len() == 1 => "F",
            "s" if windows.len() == 1 => "S",
            other => other,
        };
        let ask = Ask {
            name: &limit.name,
            key_hash,
            kind,
            windows,
            carry: &carry,
            // Prepared for exactly this call: one window, nothing carried.
            command: command.filter(|c| c.kind == kind),
        };
        let start = Instant::now();
        let reply = match self.decide(&shard, &ask, start).await {
            Some(r) => r,
            // No connection of its own yet: on the prober's, through redis-rs.
            None => match shard.link.lent() {
                Some(conn) => {
                    let key = redis_key(&limit.name, key_hash);
                    let mut inv = self.script.key(&key);
                    inv.arg(kind.to_ascii_lowercase());
                    for (max, w) in windows {
                        inv.arg(*max).arg(millis(*w));
                    }
                    for c in &carry {
                        inv.arg(*c);
                    }
                    // Boxed: this future is rare, and large; in line it would be part of the
                    // size of every decision's future, which is moved as it is made.
                    Box::pin(self.run(conn, &inv))
                        .await
                        .map(|r| (r.into_bytes(), 1))
                }
                // No connection at all (a failover retargeted the shard a moment ago): not a
                // call, so nothing failed, and the shard stays up.
                None => return Err(GlobalError::Down),
            },
        };
        self.latency.observe(start.elapsed().as_secs_f64());
        let (reply, place) = match reply {
            Ok(r) => r,
            Err(e) => {
                self.count_error(&e);
                self.health.decision_failed(&shard, &e);
                return Err(e);
            }
        };
        parse(&reply, windows, limit, place)
    }

    /// The decision's script on `shard`'s decisions connection within `redis.timeout_ms`: by
    /// hash (the prepared command, if `ask` has one), and once more with its text if the
    /// server does not have it. A joining kind ('F' or 'S') joins like calls not yet
    /// written, and the reply comes with this decision's place among them (else 1). `None`:
    /// that connection is not open (see [`link::Link::call`]).
    async fn decide(
        &self,
        shard: &health::Shard,
        ask: &Ask<'_>,
        start: Instant,
    ) -> Option<Result<(Vec<u8>, u32), GlobalError>> {
        let join = matches!(ask.kind, "F" | "S").then_some(ask.key_hash);
        let count = arg_count(ask);
        // From the clock read `check` made for its latency metric: one read less per decision.
        let deadline = tokio::time::Instant::from_std(start) + self.timeout;
        let queued = match ask.command {
            Some(c) => {
                shard
                    .link
                    .join_encoded(ask.key_hash, |out| c.write(out, ask.key_hash), deadline)
            }
            None => {
                let key = redis_key(ask.name, ask.key_hash);
                shard.link.call(
                    join,
                    count,
                    script_args(
                        ask,
                        &key,
                        wire::Arg::Bytes(self.script.get_hash().as_bytes()),
                        b"EVALSHA",
                    ),
                    deadline,
                )
            }
        }?;
        // The connection's driver keeps the deadline (one timer for all its calls, see
        // `wire::State::alarm`), so there is no timer here.
        let answer = |(rx, place): (tokio::sync::oneshot::Receiver<wire::Answer>, u32)| async move {
            match rx.await {
                Ok(Err(wire::WireError::Timeout)) => Err(GlobalError::Timeout(self.timeout)),
                Ok(answer) => answer.map(|r| (r, place)).map_err(GlobalError::from),
                // The driver ended without a word: the connection is gone.
                Err(_) => Err(GlobalError::Wire(wire::WireError::Lost(
                    "the connection's task ended".into(),
                ))),
            }
        };
        let reply = match answer(queued).await {
            Err(GlobalError::Wire(e)) if e.is_no_script() => {
                // A restarted or flushed server: EVAL runs the script and keeps it for the
                // next EVALSHA (the calls that had joined this one retry too, and join again).
                let key = redis_key(ask.name, ask.key_hash);
                match shard.link.call(
                    join,
                    count,
                    script_args(ask, &key, wire::Arg::Bytes(SCRIPT.as_bytes()), b"EVAL"),
                    deadline,
                ) {
                    Some(queued) => answer(queued).await,
                    None => Err(GlobalError::Wire(e)),
                }
            }
            other => other,
        };
        Some(reply.and_then(|(r, place)| match r {
            wire::Reply::Text(t) => Ok((t, place)),
            other => Err(GlobalError::Reply(format!("{other:?}"))),
        }))
    }

    /// `mode: approximate`'s sync of `limit`: adds each `(key hash, count)` of `batch` to the
    /// fleet's count and reads back what the fleet has left, in one pipeline per shard (one
    /// round trip for a standalone server however many keys). One answer per entry of
    /// `batch`, in order; an error leaves its count unpushed (the caller owes it again).
    pub async fn sync(
        self: &Arc<Self>,
        limit: &Limit,
        batch: &[(u64, u64)],
    ) -> Vec<Result<Decided, GlobalError>> {
        let windows = windows(limit);
        let kind = match limit.strategy {
            Strategy::FixedWindow => "f=",
            _ => "s=",
        };
        let mut answers: Vec<Option<Result<Decided, GlobalError>>> =
            batch.iter().map(|_| None).collect();
        // Entries by shard, each with its script call.
        let mut by_shard: Vec<(Arc<health::Shard>, Calls)> = Vec::new();
        for (i, &(key_hash, count)) in batch.iter().enumerate() {
            let Some(shard) = self.health.up_shard(self.slot(limit, key_hash)) else {
                answers[i] = Some(Err(GlobalError::Down));
                continue;
            };
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(self.script.get_hash())
                .arg(1)
                .arg(redis_key(&limit.name, key_hash))
                .arg(kind);
            for (max, w) in &windows {
                cmd.arg(*max).arg(millis(*w));
            }
            for _ in &windows {
                cmd.arg(count);
            }
            match by_shard.iter_mut().find(|(s, _)| Arc::ptr_eq(s, &shard)) {
                Some((_, cmds)) => cmds.push((i, cmd)),
                None => by_shard.push((shard, vec![(i, cmd)])),
            }
        }
        // At most SYNC_CHUNK calls per pipeline: Redis runs a pipeline's scripts back to back,
        // and other clients' decisions slip in between.
        let runs = by_shard.into_iter().flat_map(|(shard, cmds)| {
            let mut chunks = Vec::new();
            let mut cmds = cmds.into_iter().peekable();
            while cmds.peek().is_some() {
                chunks.push((
                    shard.clone(),
                    cmds.by_ref().take(SYNC_CHUNK).collect::<Calls>(),
                ));
            }
            chunks
        });
        let runs = runs.map(|(shard, cmds)| async move {
            let replies = self.pipeline(&shard, &cmds).await;
            (cmds, replies)
        });
        for (cmds, replies) in join_all(runs).await {
            match replies {
                Ok(replies) => {
                    for ((i, _), reply) in cmds.iter().zip(replies) {
                        answers[*i] = Some(
                            reply
                                .map_err(GlobalError::from)
                                .and_then(|r| parse(r.as_bytes(), &windows, limit, 1)),
                        );
                    }
                }
                Err(e) => {
                    // Health is the decisions' and the prober's to judge: a sync that fails
                    // only ages its keys' views, and their next requests go to Redis, which
                    // marks the shard down if it really is.
                    self.count_error(&e);
                    for (i, _) in &cmds {
                        answers[*i] = Some(Err(GlobalError::Down));
                    }
                }
            }
        }
        answers
            .into_iter()
            .map(|a| a.unwrap_or(Err(GlobalError::Down)))
            .collect()
    }

    /// Runs `cmds` (script calls by hash) on `shard`'s decisions connection as one pipeline
    /// within 1 s (a sync is off the request path and may be many calls); loads the script
    /// and runs again those a server without it refused (`NOSCRIPT`: a restarted or flushed
    /// server).
    async fn pipeline(
        &self,
        shard: &health::Shard,
        cmds: &[(usize, redis::Cmd)],
    ) -> Result<Vec<redis::RedisResult<String>>, GlobalError> {
        // A connection of the sync's own: the decisions' is for decisions alone, and on the
        // prober's a pipeline would hold a probe behind it.
        let mut conn = shard.link.for_sync().await?;
        let budget = Duration::from_secs(1);
        let run = |conn: &mut ConnectionManager, which: Vec<usize>| {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for &j in &which {
                pipe.add_command(cmds[j].1.clone());
            }
            let mut conn = conn.clone();
            async move {
                let r: redis::RedisResult<Vec<redis::RedisResult<String>>> =
                    match tokio::time::timeout(budget, pipe.query_async(&mut conn)).await {
                        Ok(r) => r,
                        Err(_) => return Err(GlobalError::Timeout(budget)),
                    };
                r.map_err(GlobalError::from)
            }
        };
        let mut replies = run(&mut conn, (0..cmds.len()).collect()).await?;
        let no_script = |r: &redis::RedisResult<String>| {
            let refused = redis::ErrorKind::Server(redis::ServerErrorKind::NoScript);
            matches!(r, Err(e) if e.kind() == refused)
        };
        let missing: Vec<usize> = (0..replies.len())
            .filter(|&j| no_script(&replies[j]))
            .collect();
        if !missing.is_empty() {
            // Those the first run answered stand whatever happens to the second (they were
            // counted); only the refused ones are retried, and fail if the retry does.
            let again = match self.script.prepare_invoke().load_async(&mut conn).await {
                Ok(_) => run(&mut conn, missing.clone()).await,
                Err(e) => Err(GlobalError::from(e)),
            };
            match again {
                Ok(again) => {
                    for (&j, r) in missing.iter().zip(again) {
                        replies[j] = r;
                    }
                }
                Err(e) => {
                    self.count_error(&e);
                    tracing::debug!("approximate sync: reloading the script failed: {e}");
                }
            }
        }
        Ok(replies)
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
            GlobalError::Wire(wire::WireError::Lost(_)) => "io",
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

/// Most script calls in one sync pipeline.
const SYNC_CHUNK: usize = 256;

/// Script calls for one shard, each with the index of its entry in the batch.
type Calls = Vec<(usize, redis::Cmd)>;

/// A decision (or an approximate sync's view) and the fewest requests any window of the
/// limit has left.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decided {
    /// The answer for the request (after a sync: the window with the fewest left).
    pub outcome: Outcome,
    /// The fewest requests left in any window (0 on a rejection).
    pub least: u64,
}

/// What an approximate sidecar takes from a decision or a sync: the fewest any window has
/// left, with the reported window's terms.
pub fn view_of(d: &Decided) -> floodgate_policy::approx::View {
    floodgate_policy::approx::View {
        left: d.least,
        limit: d.outcome.limit,
        window: d.outcome.window,
        reset: d.outcome.reset,
    }
}

/// The Redis key of `key_hash` of `limit`. The hash tag is the whole key: one key's windows
/// share a slot, keys spread over slots. Bytes: it goes to the wire and the slot hash as such.
fn redis_key(name: &str, key_hash: u64) -> Vec<u8> {
    // Built by hand: `format!` with `{:016x}` was ~1.2k instructions of every decision.
    let mut key = Vec::with_capacity(name.len() + 6 + KEY_DIGITS);
    key.extend_from_slice(b"fg:{");
    key.extend_from_slice(name.as_bytes());
    key.push(b':');
    let mut digits = [0; KEY_DIGITS];
    hex(&mut digits, key_hash);
    key.extend_from_slice(&digits);
    key.push(b'}');
    key
}

/// One decision's terms, as `GlobalLimits::decide` sends them.
struct Ask<'a> {
    name: &'a str,
    key_hash: u64,
    /// The script's kind: 'F' / 'S' (one window, joined), else 'f', 'f+', 's', 's+' or 't'.
    kind: &'static str,
    windows: &'a [(u64, Duration)],
    carry: &'a [u64],
    command: Option<&'a Command>,
}

/// How many arguments [`script_args`] gives for `ask`.
fn arg_count(ask: &Ask<'_>) -> usize {
    5 + ask.windows.len() * 2 + ask.carry.len()
}

/// The script call's arguments for `ask` with its Redis key `key`: `how` (`EVALSHA` or
/// `EVAL`), `script` (its hash or its text), one key, the kind, each window's max and length,
/// the carried counts. A joining kind's count of callers is not among them (`wire` adds it).
fn script_args<'a>(
    ask: &'a Ask<'_>,
    key: &'a [u8],
    script: wire::Arg<'a>,
    how: &'static [u8],
) -> impl Iterator<Item = wire::Arg<'a>> {
    [
        wire::Arg::Bytes(how),
        script,
        wire::Arg::Bytes(b"1"),
        wire::Arg::Bytes(key),
        wire::Arg::Bytes(ask.kind.as_bytes()),
    ]
    .into_iter()
    .chain(
        ask.windows
            .iter()
            .flat_map(|(max, w)| [wire::Arg::Int(*max), wire::Arg::Int(millis(*w))]),
    )
    .chain(ask.carry.iter().map(|c| wire::Arg::Int(*c)))
}

/// The digits of a key's hash in its Redis key.
const KEY_DIGITS: usize = 16;

/// A limit's decision call, encoded once per config snapshot: every decision of a limit of
/// one window, fixed or sliding, sends `EVALSHA <hash> 1 fg:{<name>:<key's hash>} F|S <max>
/// <ms> <count>`, the same bytes but for the key's 16 hex digits (and the count of decisions
/// joined, which `wire` appends). Copying them costs ~0.1k instructions; encoding them
/// argument by argument, and the key into a `Vec` of its own, cost ~1.3k of every decision
/// (callgrind).
pub struct Command {
    /// All of the call but its joined count, with zeros for the key's hash.
    bytes: Box<[u8]>,
    /// Where the key's hash digits are in `bytes`.
    digits: usize,
    kind: &'static str,
    windows: Windows,
}

impl Command {
    /// `limit`'s call, if Redis decides it with a joining kind: a limit of one window, fixed
    /// or sliding (kept for global limits only, by the snapshot).
    pub fn of(limit: &Limit) -> Option<Self> {
        let kind = match limit.strategy {
            Strategy::FixedWindow => "F",
            Strategy::SlidingWindow => "S",
            Strategy::TokenBucket => return None,
        };
        let windows = windows(limit);
        if windows.len() != 1 {
            return None;
        }
        let ask = Ask {
            name: &limit.name,
            key_hash: 0,
            kind,
            windows: &windows,
            carry: &[],
            command: None,
        };
        // Exactly what `decide` sends for it without a prepared call, as `Wire::join` encodes
        // it (its length counts the joined count): calls are joined on these bytes.
        let key = redis_key(&limit.name, 0);
        let hash = redis::Script::new(SCRIPT).get_hash().to_owned();
        let mut bytes = Vec::new();
        wire::encode(
            &mut bytes,
            arg_count(&ask) + 1,
            script_args(&ask, &key, wire::Arg::Bytes(hash.as_bytes()), b"EVALSHA"),
        );
        // The key's digits end just before its closing brace.
        let digits = bytes.windows(key.len()).position(|w| w == key.as_slice())? + key.len()
            - 1
            - KEY_DIGITS;
        Some(Self {
            bytes: bytes.into_boxed_slice(),
            digits,
            kind,
            windows,
        })
    }

    /// Appends the call for the key `key_hash`.
    fn write(&self, out: &mut Vec<u8>, key_hash: u64) {
        let at = out.len() + self.digits;
        out.extend_from_slice(&self.bytes);
        let digits = out
            .get_mut(at..at + KEY_DIGITS)
            .and_then(|d| <&mut [u8; KEY_DIGITS]>::try_from(d).ok());
        debug_assert!(digits.is_some(), "the digits are inside the prepared call");
        if let Some(d) = digits {
            hex(d, key_hash);
        }
    }
}

/// `key_hash` in 16 lowercase hex digits, into `out`.
fn hex(out: &mut [u8; KEY_DIGITS], key_hash: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[((key_hash >> ((15 - i) * 4)) & 0xf) as usize];
    }
}

/// A window's length as the script takes it.
fn millis(w: Duration) -> u64 {
    u64::try_from(w.as_millis()).unwrap_or(u64::MAX)
}

/// A limit's windows, `(max, length)`: a few, on the stack.
type Windows = smallvec::SmallVec<[(u64, Duration); 4]>;

/// `limit`'s windows as the script takes them, `(max, length)`, shortest first.
fn windows(limit: &Limit) -> Windows {
    let mut windows: Windows = std::iter::once((limit.max_requests.get(), limit.window))
        .chain(limit.extra_windows.iter().map(|(m, w)| (m.get(), *w)))
        .collect();
    windows.sort_by_key(|w| w.1);
    windows
}

/// Most fields in a script's reply.
const FIELDS: usize = 6;

/// The reply's space-separated decimal integers, each optionally negative, and how many
/// there are; `None` if it is anything else (Lua prints integral numbers without a fraction),
/// or has more than [`FIELDS`]. One pass over the bytes: splitting them first, and `str::parse`
/// (for cases Lua never prints), cost more.
fn fields(reply: &[u8]) -> Option<([i64; FIELDS], usize)> {
    let mut out = [0i64; FIELDS];
    let mut n = 0;
    let (mut v, mut digits, mut negative) = (0i64, 0usize, false);
    let mut end = |v: i64, digits: usize, negative: bool| {
        if digits == 0 {
            return None;
        }
        *out.get_mut(n)? = if negative { -v } else { v };
        n += 1;
        Some(())
    };
    for &b in reply {
        match b {
            // 18 digits fit an i64 whatever they are.
            b'0'..=b'9' if digits < 18 => {
                v = v * 10 + i64::from(b - b'0');
                digits += 1;
            }
            b'-' if digits == 0 && !negative => negative = true,
            b' ' => {
                end(v, digits, negative)?;
                (v, digits, negative) = (0, 0, false);
            }
            _ => return None,
        }
    }
    end(v, digits, negative)?;
    Some((out, n))
}

/// One decimal integer, as [`fields`] reads each.
#[cfg(test)]
fn integer(text: &[u8]) -> Option<i64> {
    match fields(text)? {
        (f, 1) => Some(f[0]),
        _ => None,
    }
}

/// Reads the script's reply, "allowed window remaining reset_ms retry_after_ms [least]", for
/// the decision in `place` (1-based) of those that shared the call: the first `allowed` are
/// admitted, the k-th leaving k - 1 fewer than `remaining`; the rest are turned away with
/// `retry_after_ms` (a call of one decision: `allowed` is 0 or 1). On bytes: a `str` split
/// and UTF-8 check cost ~0.6k instructions of every decision.
fn parse(
    reply: &[u8],
    windows: &[(u64, Duration)],
    limit: &Limit,
    place: u32,
) -> Result<Decided, GlobalError> {
    let bad = || GlobalError::Reply(String::from_utf8_lossy(reply).into_owned());
    let (fields, n) = fields(reply).ok_or_else(bad)?;
    let [admitted, window, first_left, reset_ms, rest_retry_ms, least] = fields;
    let behind = i64::from(place) - 1;
    let allowed = admitted > behind;
    let (remaining, retry_ms) = if allowed {
        (first_left - behind, 0)
    } else {
        (0, rest_retry_ms)
    };
    // One window: `least` is not sent, it is `remaining`. (Only calls of one window are
    // shared: with several, `place` is 1.)
    let least = match n {
        5 => remaining,
        6 if place == 1 => least,
        _ => return Err(bad()),
    };
    let ms = |v: i64| Duration::from_millis(u64::try_from(v).unwrap_or(0));
    let (max, window) = usize::try_from(window - 1)
        .ok()
        .and_then(|i| windows.get(i))
        .copied()
        .unwrap_or((limit.max_requests.get(), limit.window));
    Ok(Decided {
        outcome: Outcome {
            allowed,
            limit: max,
            remaining: u64::try_from(remaining).unwrap_or(0),
            reset: ms(reset_ms),
            retry_after: ms(retry_ms),
            window,
        },
        least: u64::try_from(least).unwrap_or(0),
    })
}

/// Runs the prober ([`probe::run`]) as a pingora background service, until shutdown.
pub struct Prober(pub Arc<GlobalLimits>);

#[async_trait]
impl BackgroundService for Prober {
    async fn start(&self, shutdown: ShutdownWatch) {
        probe::run(&self.0, shutdown).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_the_limit_and_the_hash_in_sixteen_hex_digits() {
        for hash in [0, 1, 0xabc, u64::MAX, 0x0123_4567_89ab_cdef] {
            assert_eq!(
                redis_key("per_user", hash),
                format!("fg:{{per_user:{hash:016x}}}").into_bytes()
            );
        }
    }

    fn limit_of(strategy: Strategy, extra: bool) -> Limit {
        use std::num::NonZeroU64;
        Limit {
            name: "per_user".into(),
            routes: None,
            key: Vec::new(),
            max_requests: NonZeroU64::new(1_000).unwrap(),
            window: Duration::from_millis(1_500),
            strategy,
            scope: floodgate_config::Scope::Global,
            shadow: false,
            failure_mode: floodgate_config::FailureMode::Open,
            mode: floodgate_config::Mode::Exact,
            sync_interval: Duration::from_millis(100),
            extra_windows: if extra {
                vec![(NonZeroU64::new(100).unwrap(), Duration::from_secs(60))]
            } else {
                Vec::new()
            },
        }
    }

    #[test]
    fn a_prepared_call_is_the_call_encoded_argument_by_argument() {
        use std::num::NonZeroU64;
        let hash = redis::Script::new(SCRIPT).get_hash().to_owned();
        for (strategy, kind) in [(Strategy::FixedWindow, "F"), (Strategy::SlidingWindow, "S")] {
            for (name, max, window) in [
                ("per_user", 1_000, Duration::from_millis(1_500)),
                ("a", 7, Duration::from_secs(3_600)),
                (
                    "checkout_per_tenant_hourly",
                    123_456_789,
                    Duration::from_millis(1),
                ),
            ] {
                let limit = Limit {
                    name: name.into(),
                    max_requests: NonZeroU64::new(max).unwrap(),
                    window,
                    ..limit_of(strategy, false)
                };
                let c = Command::of(&limit).unwrap();
                for key_hash in [0, 7, 0xabc, u64::MAX, 0x0123_4567_89ab_cdef] {
                    // What `decide` sends without a prepared call, as `Wire::join` encodes it.
                    let windows = windows(&limit);
                    let ask = Ask {
                        name,
                        key_hash,
                        kind,
                        windows: &windows,
                        carry: &[],
                        command: None,
                    };
                    let key = redis_key(name, key_hash);
                    let mut expected = Vec::new();
                    wire::encode(
                        &mut expected,
                        arg_count(&ask) + 1,
                        script_args(&ask, &key, wire::Arg::Bytes(hash.as_bytes()), b"EVALSHA"),
                    );
                    assert!(
                        String::from_utf8_lossy(&expected).contains(&format!(
                            "${}\r\n{max}\r\n${}\r\n{}\r\n",
                            max.to_string().len(),
                            window.as_millis().to_string().len(),
                            window.as_millis()
                        )),
                        "the window's terms are in the call"
                    );
                    // Appended after whatever the buffer holds already.
                    let mut out = b"earlier".to_vec();
                    c.write(&mut out, key_hash);
                    assert_eq!(
                        String::from_utf8_lossy(&out[7..]),
                        String::from_utf8_lossy(&expected),
                        "{name} {kind} {key_hash:x}"
                    );
                    assert_eq!(&out[..7], b"earlier");
                }
            }
        }
        // Token buckets and limits of several windows are not joined: nothing is prepared.
        assert!(Command::of(&limit_of(Strategy::TokenBucket, false)).is_none());
        assert!(Command::of(&limit_of(Strategy::SlidingWindow, true)).is_none());
        assert!(Command::of(&limit_of(Strategy::FixedWindow, true)).is_none());
    }

    #[test]
    fn integers_read_as_lua_prints_them() {
        for (text, v) in [
            ("0", Some(0)),
            ("42", Some(42)),
            ("-7", Some(-7)),
            ("-0", Some(0)),
        ] {
            assert_eq!(integer(text.as_bytes()), v, "{text}");
        }
        for bad in [
            "",
            "-",
            "1.5",
            "1e3",
            "+1",
            " 1",
            "1 ",
            "1-",
            "--1",
            "1234567890123456789",
        ] {
            assert_eq!(integer(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(
            integer(b"999999999999999999"),
            Some(999_999_999_999_999_999)
        );
    }

    #[test]
    fn a_reply_is_read_field_by_field_and_a_bad_one_is_named_in_full() {
        use std::num::NonZeroU64;
        let limit = Limit {
            name: "per_user".into(),
            routes: None,
            key: Vec::new(),
            max_requests: NonZeroU64::new(10).unwrap(),
            window: Duration::from_secs(1),
            strategy: Strategy::SlidingWindow,
            scope: floodgate_config::Scope::Global,
            shadow: false,
            failure_mode: floodgate_config::FailureMode::Open,
            mode: floodgate_config::Mode::Exact,
            sync_interval: Duration::from_millis(100),
            extra_windows: vec![(NonZeroU64::new(100).unwrap(), Duration::from_secs(60))],
        };
        let w = windows(&limit);
        assert_eq!(
            w.as_slice(),
            [(10, Duration::from_secs(1)), (100, Duration::from_secs(60))]
        );
        // One window's reply: `least` is `remaining`.
        let d = parse(b"1 1 7 900 0", &w, &limit, 1).unwrap();
        assert!(d.outcome.allowed);
        assert_eq!(
            (d.outcome.limit, d.outcome.window),
            (10, Duration::from_secs(1))
        );
        assert_eq!((d.outcome.remaining, d.least), (7, 7));
        assert_eq!(d.outcome.reset, Duration::from_millis(900));
        // The second window reported, with the fewest left of any window.
        let d = parse(b"0 2 0 30000 1500 0", &w, &limit, 1).unwrap();
        assert!(!d.outcome.allowed);
        assert_eq!(
            (d.outcome.limit, d.outcome.window),
            (100, Duration::from_secs(60))
        );
        assert_eq!(d.outcome.retry_after, Duration::from_millis(1500));
        for bad in [
            &b"1 1 7 900"[..],
            b"1 1 7 900 0 0 0",
            b"1 1 7.5 900 0",
            b"",
            b"1  1 7 900 0",
            b"ok",
        ] {
            match parse(bad, &w, &limit, 1) {
                Err(GlobalError::Reply(text)) => {
                    assert_eq!(
                        text,
                        String::from_utf8_lossy(bad),
                        "the whole reply is named"
                    )
                }
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bad)),
            }
        }
        // A reply several decisions shared: 3 of them admitted, the first leaving 7, the
        // others turned away with its retry.
        let one = Limit {
            extra_windows: Vec::new(),
            ..limit
        };
        let w = windows(&one);
        let each: Vec<_> = (1..=5)
            .map(|place| parse(b"3 1 7 900 250", &w, &one, place).unwrap())
            .map(|d| {
                let o = d.outcome;
                (o.allowed, o.remaining, d.least, o.retry_after.as_millis())
            })
            .collect();
        assert_eq!(
            each,
            [
                (true, 7, 7, 0),
                (true, 6, 6, 0),
                (true, 5, 5, 0),
                (false, 0, 0, 250),
                (false, 0, 0, 250)
            ]
        );
    }
}
