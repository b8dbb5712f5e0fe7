//! Keeps this sidecar in step with the fleet through Redis ([`crate::overrides::fleet_store`]):
//! every sidecar applies the fleet's whole set of overrides on each announcement (and checks
//! the version every second in case it missed one, and at start), so a sidecar that starts
//! later gets the current set. Each sidecar also heartbeats every second its id, config and
//! applied versions and load, which is what `floodgatectl fleet status` lists and what a fleet
//! change waits on ("applied on 47/48").
//!
//! An idle sidecar's second costs Redis two commands in one round trip: the version read and
//! the heartbeat's score. The set itself is read only when the version moved (or a minute
//! passed), the info line only written when what it says changed (or the sidecar was not on
//! the list), and sidecars gone for longer than [`fleet_store::EXPECTED`] swept every
//! [`GC_EVERY`]: [`Pacing`] decides, from the times it is given. A sidecar heard from in the last
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

use floodgate_policy::clock::Clock;

use crate::global::GlobalLimits;
use crate::overrides::fleet_store::{self, ANNOUNCE};
use crate::state::Runtime;

/// How often the sidecars silent for longer than [`fleet_store::EXPECTED`] are forgotten.
/// `fleet status` never lists them anyway (it reads only the last `EXPECTED` of scores): this
/// only keeps the list from growing.
pub const GC_EVERY: Duration = Duration::from_secs(30);
/// How often the whole set is read even though the version did not move: a bound on how long
/// anything the version does not show (a server flushed and written again to the same version
/// between two checks, with the announcement lost) can go unseen.
pub const REFETCH: Duration = Duration::from_secs(60);

/// Fetches the fleet's overrides and applies them if they differ from this sidecar's.
/// Applying may rebuild the snapshot, which resolves the upstream (blocking), so it runs off
/// the async workers, as a reload does. Returns the version read.
pub async fn sync(rt: &Arc<Runtime>, g: &GlobalLimits) -> Result<u64, String> {
    let (version, set) = fleet_store::fetch(g).await?;
    let rt = rt.clone();
    tokio::task::spawn_blocking(move || crate::lifecycle::apply_fleet(&rt, version, set))
        .await
        .map_err(|e| format!("applying fleet overrides did not complete: {e}"))?;
    Ok(version)
}

/// What the fleet sync must send this second beside the version read and the heartbeat's
/// score, decided from what it sent before and when. Times are a monotonic clock's, given.
#[derive(Debug, Default)]
pub struct Pacing {
    /// The info line last written and known to have arrived.
    info: Option<String>,
    /// When the list was last swept of sidecars gone for good.
    swept: Option<Duration>,
    /// The version last fetched and applied, and when.
    fetched: Option<(u64, Duration)>,
}

/// [`Pacing::plan`]'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Write the info line (it changed, or was never written, or may have been lost).
    pub info: bool,
    /// Forget the sidecars gone for longer than [`fleet_store::EXPECTED`].
    pub gc: bool,
}

impl Pacing {
    /// What a beat at `now` reporting `info` must carry.
    pub fn plan(&self, now: Duration, info: &str) -> Plan {
        Plan {
            info: self.info.as_deref() != Some(info),
            gc: self
                .swept
                .is_none_or(|at| now.saturating_sub(at) >= GC_EVERY),
        }
    }

    /// A beat at `now` made as `plan` said, reporting `info`, arrived.
    pub fn sent(&mut self, now: Duration, plan: Plan, info: &str) {
        if plan.info {
            self.info = Some(info.to_string());
        }
        if plan.gc {
            self.swept = Some(now);
        }
    }

    /// The info line `info` was written on its own.
    pub fn wrote(&mut self, info: &str) {
        self.info = Some(info.to_string());
    }

    /// The sidecar was not on the list: whatever was written before is gone.
    pub fn forgotten(&mut self) {
        self.info = None;
    }

    /// Whether the set must be fetched, the fleet being at `version` at `now`.
    pub fn must_fetch(&self, now: Duration, version: u64) -> bool {
        self.fetched
            .is_none_or(|(v, at)| v != version || now.saturating_sub(at) >= REFETCH)
    }

    /// The set at `version` was fetched and applied at `now`.
    pub fn fetched(&mut self, now: Duration, version: u64) {
        self.fetched = Some((version, now));
    }

    /// A round trip failed: what it wrote may or may not have arrived, so write it all again.
    pub fn failed(&mut self) {
        self.info = None;
    }
}

/// This sidecar's identity in the fleet: its pod (`POD_NAME`, else `HOSTNAME`) and listen address.
pub fn identity(rt: &Runtime) -> (String, String) {
    let pod = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let listen = rt.boot.listeners[0].listen;
    (format!("{pod}/{listen}"), pod)
}

/// What this sidecar reports about itself in its heartbeat: the line `fleet status` shows.
fn info(rt: &Runtime, id: &str, pod: &str) -> String {
    let st = crate::status::Status::read(rt);
    let value = |i: floodgate_config::Indicator| {
        st.indicators
            .iter()
            .find(|r| r.indicator == i)
            .map_or(0.0, |r| r.value)
    };
    let applied = rt.admin.lock().map_or(0, |a| a.fleet_version());
    json!({
        "id": id,
        "pod": pod,
        "config_version": st.version,
        "applied_version": applied,
        "rps": value(floodgate_config::Indicator::RequestRate),
        "error_rate": value(floodgate_config::Indicator::ErrorRate),
        "p95_ms": value(floodgate_config::Indicator::LatencyP95Ms),
    })
    .to_string()
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
    clock: Clock,
}

impl FleetSync {
    /// Syncs `rt` through `global`'s Redis.
    pub fn new(rt: Arc<Runtime>, global: Arc<GlobalLimits>) -> Self {
        Self {
            rt,
            global,
            clock: Clock::monotonic(),
        }
    }

    /// One turn: the version read and the heartbeat in one round trip, then the set if the
    /// version moved (or `announced`: an announcement came), then the info line if applying
    /// changed what it says. A draining sidecar has left the list (see [`leave`]) and must
    /// not join it again: it only reads.
    async fn turn(&self, pacing: &mut Pacing, announced: bool) -> Result<(), String> {
        let (rt, g) = (&self.rt, &self.global);
        let now = self.clock.elapsed();
        let draining = rt.is_draining();
        let (id, pod) = identity(rt);
        let line = info(rt, &id, &pod);
        let plan = pacing.plan(now, &line);
        let plan = Plan {
            info: plan.info && !draining,
            gc: plan.gc && !draining,
        };
        let beat = fleet_store::beat(
            g,
            (!draining).then_some(id.as_str()),
            plan.info.then_some(line.as_str()),
            plan.gc,
        )
        .await
        .inspect_err(|_| pacing.failed())?;
        pacing.sent(now, plan, &line);
        if beat.joined && !plan.info {
            pacing.forgotten();
        }
        let mut line = line;
        if announced || pacing.must_fetch(now, beat.version) {
            let version = sync(rt, g).await.inspect_err(|_| pacing.failed())?;
            pacing.fetched(now, version);
            // Heartbeat at once what was applied, so `fleet status` shows the new version.
            line = info(rt, &id, &pod);
        }
        if !draining && pacing.plan(now, &line).info {
            fleet_store::write_info(g, &id, &line)
                .await
                .inspect_err(|_| pacing.failed())?;
            pacing.wrote(&line);
        }
        Ok(())
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
        let g = &self.global;
        let mut pacing = Pacing::default();
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
                        Some(_) => {
                            let r = self.turn(&mut pacing, true).await;
                            self.report(r);
                        }
                        // The subscription dropped: resubscribe on the next turn.
                        None => messages = None,
                    }
                }
                _ = tick.tick() => {
                    let r = self.turn(&mut pacing, false).await;
                    self.report(r);
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn an_idle_sidecar_writes_its_info_once_and_sweeps_the_list_every_half_minute() {
        let mut p = Pacing::default();
        // The first beat writes everything.
        let first = p.plan(s(0), "idle");
        assert_eq!(
            first,
            Plan {
                info: true,
                gc: true
            }
        );
        p.sent(s(0), first, "idle");
        // Then, while nothing changes, only the score (and the version read) goes out.
        for t in 1..30 {
            assert_eq!(
                p.plan(s(t), "idle"),
                Plan {
                    info: false,
                    gc: false
                },
                "at {t} s"
            );
            p.sent(s(t), p.plan(s(t), "idle"), "idle");
        }
        assert_eq!(
            p.plan(s(30), "idle"),
            Plan {
                info: false,
                gc: true
            }
        );
        p.sent(s(30), p.plan(s(30), "idle"), "idle");
        assert!(!p.plan(s(59), "idle").gc);
        assert!(p.plan(s(60), "idle").gc);
    }

    #[test]
    fn the_info_is_written_again_when_it_changes_or_may_have_been_lost() {
        let mut p = Pacing::default();
        p.sent(s(0), p.plan(s(0), "a"), "a");
        assert!(p.plan(s(1), "b").info, "changed");
        p.sent(s(1), p.plan(s(1), "b"), "b");
        assert!(!p.plan(s(2), "b").info);
        // A round trip that failed may or may not have written it.
        p.failed();
        assert!(p.plan(s(3), "b").info);
        p.sent(s(3), p.plan(s(3), "b"), "b");
        // Forgotten by the list (say, swept by another sidecar after a long pause).
        p.forgotten();
        assert!(p.plan(s(4), "b").info);
        p.wrote("b");
        assert!(!p.plan(s(5), "b").info);
        // Not written when the plan said not to.
        let mut q = Pacing::default();
        q.sent(
            s(0),
            Plan {
                info: false,
                gc: false,
            },
            "a",
        );
        assert!(q.plan(s(1), "a").info);
    }

    #[test]
    fn the_set_is_fetched_when_the_version_moves_and_at_least_every_minute() {
        let mut p = Pacing::default();
        assert!(p.must_fetch(s(0), 0), "at start");
        p.fetched(s(0), 0);
        assert!(!p.must_fetch(s(1), 0));
        assert!(p.must_fetch(s(1), 1), "a newer version");
        p.fetched(s(1), 1);
        // A server flushed reads as an older version: that is a change too.
        assert!(p.must_fetch(s(2), 0));
        assert!(!p.must_fetch(s(60), 1));
        assert!(p.must_fetch(s(61), 1), "a minute without a fetch");
    }
}
