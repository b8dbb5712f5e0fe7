//! The sync of global limits in `mode: approximate` ([`floodgate_policy::approx`]): every
//! `sync_interval_ms`, each such limit's keys that were asked or owe counts are pushed to
//! Redis and their views read back, in one pipeline per shard. The service sleeps while no
//! key asks (the first request after a quiet spell wakes it), so an idle sidecar sends Redis
//! nothing for these limits.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use floodgate_policy::approx::Share;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::global::GlobalLimits;
use crate::state::Runtime;

/// The sync as a pingora background service.
pub struct Syncer {
    rt: Arc<Runtime>,
}

impl Syncer {
    /// Syncs `rt`'s current approximate limits.
    pub fn new(rt: Arc<Runtime>) -> Self {
        Self { rt }
    }
}

#[async_trait]
impl BackgroundService for Syncer {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(g) = self.rt.global.clone() else {
            return;
        };
        // When each limit (by its state's address) last synced.
        let mut last: HashMap<usize, Instant> = HashMap::new();
        loop {
            tokio::select! {
                _ = g.sync_asked() => {}
                _ = shutdown.changed() => return,
            }
            // Work until a round finds nothing asked and nothing owed.
            while let Some(tick) = shortest_interval(&self.rt) {
                tokio::select! {
                    _ = tokio::time::sleep(tick) => {}
                    _ = shutdown.changed() => return,
                }
                if !round(&self.rt, &g, &mut last).await {
                    break;
                }
            }
        }
    }
}

/// The shortest `sync_interval` of the current snapshot's approximate limits.
fn shortest_interval(rt: &Runtime) -> Option<Duration> {
    let snap = rt.current.load();
    snap.limits
        .limiters()
        .iter()
        .filter_map(|l| l.approx.as_ref().map(|a| a.interval()))
        .min()
}

/// Syncs every approximate limit whose interval has passed; false when none had work (and
/// none is waiting for its interval with work).
async fn round(rt: &Runtime, g: &Arc<GlobalLimits>, last: &mut HashMap<usize, Instant>) -> bool {
    let snap = rt.current.load_full();
    let replicas = snap
        .config
        .redis
        .as_ref()
        .map_or(1, |r| u64::from(r.expected_replicas.get()));
    let mut worked = false;
    let now = Instant::now();
    // The file's definitions: a global limit's limiter holds its Redis-outage share.
    for (l, def) in snap.limits.limiters().iter().zip(&snap.config.limits) {
        let Some(share) = &l.approx else { continue };
        let id = Arc::as_ptr(share) as usize;
        if last
            .get(&id)
            .is_some_and(|t| now.duration_since(*t) + Duration::from_millis(1) < share.interval())
        {
            // Not due yet: the next round looks again.
            worked = true;
            continue;
        }
        let batch = share.drain();
        if batch.is_empty() {
            continue;
        }
        worked = true;
        last.insert(id, now);
        sync(g, def, share, &batch, replicas).await;
    }
    // Forget limits a reload replaced.
    last.retain(|id, _| {
        snap.limits.limiters().iter().any(|l| {
            l.approx
                .as_ref()
                .is_some_and(|a| Arc::as_ptr(a) as usize == *id)
        })
    });
    worked
}

async fn sync(
    g: &Arc<GlobalLimits>,
    def: &floodgate_config::Limit,
    share: &Share,
    batch: &[(u64, u64)],
    replicas: u64,
) {
    let answers = g.sync(def, batch).await;
    let mut failed = 0usize;
    for (&(key, count), answer) in batch.iter().zip(answers) {
        match answer {
            Ok(d) => share.view(key, crate::global::view_of(&d), replicas),
            Err(_) => {
                failed += 1;
                share.restore(key, count);
            }
        }
    }
    if failed > 0 {
        tracing::debug!(
            limit = def.name.as_str(),
            keys = failed,
            "approximate sync failed; the counts are owed again and those keys decide in \
             Redis (or locally) until a sync succeeds"
        );
    }
}
