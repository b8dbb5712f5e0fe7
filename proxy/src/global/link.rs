//! Connections to one shard's master: the decisions' ([`super::wire`]), the prober's and the
//! approximate sync's (redis-rs; the prober's is lent to decisions until theirs is open).
//! Each shard has its own,
//! so a dead master stalls nothing but its own keys: redis-rs's cluster connection holds every
//! request while it refreshes its slot map or reconnects a lost node, which sent live shards'
//! decisions past their budget too when one master died.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, ConnectionInfo};
use tokio::sync::oneshot;

use super::wire::{Answer, Arg, Wire, WireError};

/// The connections to one master, reopened when the master changes.
pub struct Link {
    /// Where the master is (a failover moves it).
    info: ArcSwap<ConnectionInfo>,
    /// The decisions' connection, opened from the proxy's runtime, so that its I/O is driven
    /// where the requests are.
    decisions: ArcSwapOption<Wire>,
    /// A task is opening `decisions`.
    opening: AtomicBool,
    /// The prober's connection, opened and driven on the prober's runtime.
    probe: ArcSwapOption<ConnectionManager>,
    /// `mode: approximate`'s sync: its pipelines of up to 256 scripts would hold a probe (and
    /// its `redis.timeout_ms` budget) behind them on the prober's.
    sync: ArcSwapOption<ConnectionManager>,
}

impl Link {
    /// Connections to `info`, none open yet.
    pub fn new(info: ConnectionInfo) -> Self {
        Self {
            info: ArcSwap::from_pointee(info),
            decisions: ArcSwapOption::empty(),
            opening: AtomicBool::new(false),
            probe: ArcSwapOption::empty(),
            sync: ArcSwapOption::empty(),
        }
    }

    /// Points at `info`; if that is another server, both connections are dropped, to be
    /// reopened there.
    pub fn retarget(&self, info: &ConnectionInfo) {
        if self.info.load().addr() == info.addr() {
            return;
        }
        self.info.store(Arc::new(info.clone()));
        self.probe.store(None);
        self.sync.store(None);
        self.decisions.store(None);
    }

    /// Queues a decision's command, `count` arguments, on the decisions' connection, to be
    /// answered by `deadline` (or told it was not: [`super::wire::WireError::Timeout`]). With a
    /// `join` tag the command takes one more argument, the count of callers sharing it, and
    /// joins a like call not yet written ([`Wire::join`]); the place returned is this
    /// caller's among them (1 otherwise). `None`: that connection is not open (not yet, or it
    /// ended, or the address is not plain TCP); it is being opened on the current runtime,
    /// and [`Link::lent`] is the one to use now.
    pub fn call<'a>(
        self: &Arc<Self>,
        join: Option<u64>,
        count: usize,
        args: impl Iterator<Item = Arg<'a>>,
        deadline: tokio::time::Instant,
    ) -> Option<(oneshot::Receiver<Answer>, u32)> {
        self.queue(|wire| match join {
            Some(tag) => wire.join(tag, count, args, deadline),
            None => wire.call(count, args, deadline).map(|rx| (rx, 1)),
        })
    }

    /// [`Link::call`] with a `join` tag, for a command encoded already ([`Wire::join_encoded`]).
    pub fn join_encoded(
        self: &Arc<Self>,
        tag: u64,
        write: impl FnOnce(&mut Vec<u8>),
        deadline: tokio::time::Instant,
    ) -> Option<(oneshot::Receiver<Answer>, u32)> {
        self.queue(|wire| wire.join_encoded(tag, write, deadline))
    }

    fn queue(
        self: &Arc<Self>,
        on: impl FnOnce(&Wire) -> Result<(oneshot::Receiver<Answer>, u32), WireError>,
    ) -> Option<(oneshot::Receiver<Answer>, u32)> {
        let current = self.decisions.load();
        if let Some(wire) = current.as_ref() {
            match on(wire) {
                Ok(queued) => return Some(queued),
                // Over: make way for a new one (unless another caller already did).
                Err(_) => {
                    self.decisions.compare_and_swap(&*current, None);
                }
            }
        }
        self.open_decisions();
        None
    }

    /// The prober's connection, lent to decisions while theirs is not open. `None`: neither is.
    pub fn lent(&self) -> Option<ConnectionManager> {
        self.probe.load().as_deref().cloned()
    }

    fn open_decisions(self: &Arc<Self>) {
        // Only plain TCP has a connection of its own; the rest stay on redis-rs's.
        if !matches!(self.info.load().addr(), ConnectionAddr::Tcp(..)) {
            return;
        }
        if self.opening.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let info = this.info.load_full();
            match Wire::connect(&info, Duration::from_secs(1)).await {
                // Only if the master did not move meanwhile.
                Some(Ok(w)) if this.info.load().addr() == info.addr() => {
                    this.decisions.store(Some(Arc::new(w)));
                }
                Some(Ok(_)) | None => {}
                Some(Err(e)) => {
                    tracing::debug!("redis connect for decisions failed: {e}");
                    // The master may refuse new connections while the prober's still works
                    // (say, at maxclients): decisions go on over that one, and the next
                    // attempt waits instead of following every failure at once.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            this.opening.store(false, Ordering::Release);
        });
    }

    /// Drops the decisions' connection: after an outage it may be one the outage broke, and
    /// the probe proved only the prober's.
    pub fn reset_decisions(&self) {
        self.decisions.store(None);
    }

    /// The prober's connection, opened if there is none.
    pub async fn for_probe(&self) -> Result<ConnectionManager, redis::RedisError> {
        self.opened(&self.probe).await
    }

    /// The approximate sync's connection, opened if there is none.
    pub async fn for_sync(&self) -> Result<ConnectionManager, redis::RedisError> {
        self.opened(&self.sync).await
    }

    async fn opened(
        &self,
        slot: &ArcSwapOption<ConnectionManager>,
    ) -> Result<ConnectionManager, redis::RedisError> {
        if let Some(c) = slot.load().as_deref() {
            return Ok(c.clone());
        }
        let info = self.info.load_full();
        let c = connect(&info).await?;
        if self.info.load().addr() == info.addr() {
            slot.store(Some(Arc::new(c.clone())));
        }
        Ok(c)
    }
}

/// A multiplexed, self-reconnecting connection to one server.
pub async fn connect(info: &ConnectionInfo) -> Result<ConnectionManager, redis::RedisError> {
    let client = redis::Client::open(info.clone())?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(1)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_with_config(client, config).await
}
