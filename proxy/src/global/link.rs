//! Connections to one shard's master: the decisions' and the prober's. Each shard has its own,
//! so a dead master stalls nothing but its own keys: redis-rs's cluster connection holds every
//! request while it refreshes its slot map or reconnects a lost node, which sent live shards'
//! decisions past their budget too when one master died.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::ConnectionInfo;

/// The connections to one master, reopened when the master changes.
pub struct Link {
    /// Where the master is (a failover moves it).
    info: ArcSwap<ConnectionInfo>,
    /// The decisions' connection, opened from the proxy's runtime (see
    /// `GlobalLimits::decisions`'s reasoning: its I/O is driven where the requests are).
    decisions: ArcSwapOption<ConnectionManager>,
    /// A task is opening `decisions`.
    opening: AtomicBool,
    /// The prober's connection, opened and driven on the prober's runtime.
    probe: ArcSwapOption<ConnectionManager>,
}

impl Link {
    /// Connections to `info`, none open yet.
    pub fn new(info: ConnectionInfo) -> Self {
        Self {
            info: ArcSwap::from_pointee(info),
            decisions: ArcSwapOption::empty(),
            opening: AtomicBool::new(false),
            probe: ArcSwapOption::empty(),
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
        self.decisions.store(None);
    }

    /// The decisions' connection; while it is not open yet, starts opening it on the current
    /// runtime and lends the prober's. `None`: neither is open.
    pub fn for_decision(self: &Arc<Self>) -> Option<ConnectionManager> {
        if let Some(c) = self.decisions.load().as_deref() {
            return Some(c.clone());
        }
        self.open_decisions();
        self.probe.load().as_deref().cloned()
    }

    fn open_decisions(self: &Arc<Self>) {
        if self.opening.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let info = this.info.load_full();
            match connect(&info).await {
                // Only if the master did not move meanwhile.
                Ok(c) if this.info.load().addr() == info.addr() => {
                    this.decisions.store(Some(Arc::new(c)));
                }
                Ok(_) => {}
                Err(e) => {
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
        if let Some(c) = self.probe.load().as_deref() {
            return Ok(c.clone());
        }
        let info = self.info.load_full();
        let c = connect(&info).await?;
        if self.info.load().addr() == info.addr() {
            self.probe.store(Some(Arc::new(c.clone())));
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
