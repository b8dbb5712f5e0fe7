//! Keeps this sidecar in step with the fleet through Redis ([`crate::overrides::fleet_store`]):
//! every sidecar applies the fleet's whole set of overrides on each announcement (and checks
//! the version every second in case it missed one, and at start), so a sidecar that starts
//! later gets the current set. Each sidecar also heartbeats its id, config and applied
//! versions and load, which is what `floodgatectl fleet status` lists and what a fleet change
//! waits on ("applied on 47/48"). A sidecar heard from in the last
//! [`fleet_store::EXPECTED`] is expected to apply every change: one that stops heartbeating
//! (killed, hung, cut off) is listed as stale, with its age, rather than dropped; one that
//! shuts down cleanly takes itself off the list. A sidecar that cannot reach Redis keeps the
//! overrides it has (their TTLs still run out locally) and says so in its status.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use serde_json::json;
use tracing::{info, warn};

use crate::global::GlobalLimits;
use crate::overrides::fleet_store::{self, ANNOUNCE};
use crate::state::Runtime;

/// Fetches the fleet's overrides and applies them if their version is new. Applying may
/// rebuild the snapshot, which resolves the upstream (blocking), so it runs off the async
/// workers, as a reload does.
pub async fn sync(rt: &Arc<Runtime>, g: &GlobalLimits) -> Result<(), String> {
    let (version, set) = fleet_store::fetch(g).await?;
    let rt = rt.clone();
    tokio::task::spawn_blocking(move || crate::lifecycle::apply_fleet(&rt, version, set))
        .await
        .map_err(|e| format!("applying fleet overrides did not complete: {e}"))
}

/// This sidecar's identity in the fleet: its pod (`POD_NAME`, else `HOSTNAME`) and listen address.
pub fn identity(rt: &Runtime) -> (String, String) {
    let pod = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let listen = rt.boot.listeners[0].listen;
    (format!("{pod}/{listen}"), pod)
}

async fn heartbeat(rt: &Runtime, g: &GlobalLimits) -> Result<(), String> {
    // A draining sidecar has left the list (see `leave`) and must not join it again.
    if rt.is_draining() {
        return Ok(());
    }
    let (id, pod) = identity(rt);
    let st = crate::status::Status::read(rt);
    let value = |i: floodgate_config::Indicator| {
        st.indicators
            .iter()
            .find(|r| r.indicator == i)
            .map_or(0.0, |r| r.value)
    };
    let applied = rt.admin.lock().map_or(0, |a| a.fleet_version());
    let info = json!({
        "id": id,
        "pod": pod,
        "config_version": st.version,
        "applied_version": applied,
        "rps": value(floodgate_config::Indicator::RequestRate),
        "error_rate": value(floodgate_config::Indicator::ErrorRate),
        "p95_ms": value(floodgate_config::Indicator::LatencyP95Ms),
    });
    fleet_store::heartbeat(g, &id, &info).await
}

/// Takes this sidecar off the fleet's list as it shuts down cleanly (SIGTERM, once it has
/// stopped heartbeating): fleet changes from now on are not expected to reach it, so a
/// rollout does not leave "missing" pods behind. Best effort and brief, as it holds up the
/// drain: a sidecar that cannot say goodbye is listed as stale until [`fleet_store::EXPECTED`] passes,
/// which is the truth as far as anyone can tell.
pub async fn leave(rt: &Runtime) {
    let Some(g) = rt.global.as_ref() else {
        return;
    };
    let (id, _) = identity(rt);
    match tokio::time::timeout(Duration::from_millis(500), fleet_store::leave(g, &id)).await {
        Ok(Ok(())) => info!("left the fleet's list of sidecars"),
        Ok(Err(e)) => warn!(error = %e, "could not leave the fleet's list of sidecars"),
        Err(_) => warn!("could not leave the fleet's list of sidecars within 500 ms"),
    }
}

/// Keeps this sidecar in step with the fleet: subscribes to announcements, checks the
/// version and heartbeats every second, until shutdown.
pub struct FleetSync {
    rt: Arc<Runtime>,
    global: Arc<GlobalLimits>,
}

impl FleetSync {
    /// Syncs `rt` through `global`'s Redis.
    pub fn new(rt: Arc<Runtime>, global: Arc<GlobalLimits>) -> Self {
        Self { rt, global }
    }

    fn report(&self, r: Result<(), String>) {
        let mut admin = match self.rt.admin.lock() {
            Ok(a) => a,
            Err(e) => e.into_inner(),
        };
        match r {
            Ok(()) => {
                if admin.fleet_state() != "ok" {
                    info!("fleet sync through redis working");
                }
                admin.set_fleet_state("ok".into());
            }
            Err(e) => {
                if admin.fleet_state() == "ok" || admin.fleet_state() == "starting" {
                    warn!(error = %e, "fleet sync: redis unreachable; keeping the overrides this sidecar has");
                }
                admin.set_fleet_state(format!("redis unreachable: {e}"));
            }
        }
    }
}

#[async_trait]
impl BackgroundService for FleetSync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (rt, g) = (&self.rt, &self.global);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut messages: Option<futures_util::stream::BoxStream<'static, redis::Msg>> = None;
        loop {
            if messages.is_none() {
                if let Ok(client) = redis::Client::open(g.pubsub_url()) {
                    if let Ok(Ok(mut ps)) =
                        tokio::time::timeout(Duration::from_secs(1), client.get_async_pubsub())
                            .await
                    {
                        if ps.subscribe(ANNOUNCE).await.is_ok() {
                            messages = Some(ps.into_on_message().boxed());
                        }
                    }
                }
            }
            tokio::select! {
                m = async {
                    match messages.as_mut() {
                        Some(s) => s.next().await,
                        None => std::future::pending().await,
                    }
                } => {
                    match m {
                        // Heartbeat right away, so `fleet status` shows the new version applied.
                        Some(_) => {
                            let r = match sync(rt, g).await {
                                Ok(()) => heartbeat(rt, g).await,
                                e => e,
                            };
                            self.report(r);
                        }
                        // The subscription dropped: resubscribe on the next turn.
                        None => messages = None,
                    }
                }
                _ = tick.tick() => {
                    let r = match sync(rt, g).await {
                        Ok(()) => heartbeat(rt, g).await,
                        e => e,
                    };
                    self.report(r);
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
