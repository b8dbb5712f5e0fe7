//! The sync of global limits in `mode: approximate` ([`floodgate_policy::approx`]): every
//! `sync_interval_ms`, each such limit's keys that were asked or owe counts are pushed to
//! Redis and their views read back, in pipelines per shard, every limit's at once. The
//! service sleeps while no key asks (the first request after a quiet spell wakes it), so an
//! idle sidecar sends Redis nothing for these limits. A limit's state that a reload replaced,
//! and everything owed at shutdown, is pushed once more.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use floodgate_config::Limit;
use floodgate_policy::approx::Share;
use futures_util::future::join_all;
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
        let mut known = Known::new();
        loop {
            tokio::select! {
                _ = g.sync_asked() => {}
                _ = shutdown.changed() => break,
            }
            // Work until a round finds nothing asked and nothing owed.
            while let Some(tick) = shortest_interval(&self.rt) {
                tokio::select! {
                    _ = tokio::time::sleep(tick) => {}
                    _ = shutdown.changed() => {
                        // Shutting down: what is owed now goes to Redis before the sidecar
                        // stops (the grace period's last requests may still miss it).
                        round(&self.rt, &g, &mut known, true).await;
                        return;
                    }
                }
                if !round(&self.rt, &g, &mut known, false).await {
                    break;
                }
            }
        }
        round(&self.rt, &g, &mut known, true).await;
    }
}

/// The limits' states the sync has pushed for, by address: when each last synced, and what
/// it needs to push for one a reload has replaced.
struct Known(HashMap<usize, (Weak<Share>, Limit, Instant)>);

impl Known {
    fn new() -> Self {
        Self(HashMap::new())
    }
}

/// A limit's state with its definition and the batch drained from it.
type Due = (Arc<Share>, Limit, Vec<(u64, u64)>);

/// The shortest `sync_interval` of the current snapshot's approximate limits.
fn shortest_interval(rt: &Runtime) -> Option<Duration> {
    let snap = rt.current.load();
    snap.limits
        .limiters()
        .iter()
        .filter_map(|l| l.approx.as_ref().map(|a| a.interval()))
        .min()
}

/// Syncs every approximate limit whose interval has passed (every one with `all`), all
/// limits' pipelines at once, and once more a limit's state a reload has replaced or removed
/// (so what was admitted under it still reaches Redis); false when none had work (and none
/// is waiting for its interval with work).
async fn round(rt: &Runtime, g: &Arc<GlobalLimits>, known: &mut Known, all: bool) -> bool {
    let snap = rt.current.load_full();
    let replicas = snap
        .config
        .redis
        .as_ref()
        .map_or(1, |r| u64::from(r.expected_replicas.get()));
    let mut worked = false;
    let now = Instant::now();
    let mut due: Vec<Due> = Vec::new();
    let mut current = Vec::new();
    // The file's definitions: a global limit's limiter holds its Redis-outage share.
    for (l, def) in snap.limits.limiters().iter().zip(&snap.config.limits) {
        let Some(share) = &l.approx else { continue };
        let id = Arc::as_ptr(share) as usize;
        current.push(id);
        let waiting = known.0.get(&id).is_some_and(|(_, _, t)| {
            now.duration_since(*t) + Duration::from_millis(1) < share.interval()
        });
        if waiting && !all {
            // Not due yet: the next round looks again.
            worked = true;
            continue;
        }
        let batch = share.drain();
        if batch.is_empty() {
            continue;
        }
        worked = true;
        known
            .0
            .insert(id, (Arc::downgrade(share), def.clone(), now));
        due.push((share.clone(), def.clone(), batch));
    }
    // States a reload replaced: pushed one last time, then forgotten.
    let gone: Vec<usize> = known
        .0
        .keys()
        .filter(|id| !current.contains(id))
        .copied()
        .collect();
    for id in gone {
        if let Some((share, def, _)) = known.0.remove(&id) {
            if let Some(share) = share.upgrade() {
                let batch = share.drain();
                if !batch.is_empty() {
                    due.push((share, def, batch));
                }
            }
        }
    }
    let syncs = due
        .iter()
        .map(|(share, def, batch)| sync(g, def, share, batch, replicas));
    join_all(syncs).await;
    worked
}

async fn sync(
    g: &Arc<GlobalLimits>,
    def: &Limit,
    share: &Share,
    batch: &[(u64, u64)],
    replicas: u64,
) {
    let answers = g.sync(def, batch).await;
    let mut failed = 0usize;
    for (&(key, count), answer) in batch.iter().zip(answers) {
        match answer {
            Ok(d) => share.view(key, crate::global::view_of(&d), replicas, false),
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
