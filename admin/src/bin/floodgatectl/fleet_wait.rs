//! "Applied on 47/48": which expected sidecars report a fleet version, and waiting for all of
//! them after a `--fleet` change. The CLI polls `FleetStatus` rather than asking the sidecar
//! to block: the deadline is the caller's, no sidecar thread is held for it, a viewer token
//! can run the same check, and the wait needs nothing a sidecar does not already serve.

use std::time::{Duration, Instant};

use floodgate_admin::pb;
use floodgate_admin::pb::admin_client::AdminClient;
use serde::Serialize;
use tonic::transport::Channel;

use crate::client::{request, Stop};
use crate::render::human_duration;

/// How often the wait asks again. Sidecars report on the change's announcement, so most
/// answers come in the first poll or two; this keeps a slow one from costing a second.
const POLL: Duration = Duration::from_millis(200);

/// An expected sidecar that has not applied the version.
#[derive(Serialize, Debug, PartialEq)]
pub(crate) struct Missing {
    pub(crate) id: String,
    pub(crate) applied_version: u64,
    pub(crate) seen_seconds_ago: u64,
    pub(crate) stale: bool,
}

/// Who applied `version`, of the sidecars expected to.
#[derive(Serialize, Debug, PartialEq)]
pub(crate) struct Applied {
    pub(crate) version: u64,
    pub(crate) applied: usize,
    pub(crate) expected: usize,
    pub(crate) missing: Vec<Missing>,
}

impl Applied {
    /// Tallies `f`'s sidecars against `version`. A later version counts: a sidecar applies
    /// the fleet's whole set, so it has this change too.
    pub(crate) fn of(f: &pb::FleetStatusReply, version: u64) -> Self {
        let missing: Vec<Missing> = f
            .sidecars
            .iter()
            .filter(|s| s.applied_version < version)
            .map(|s| Missing {
                id: s.id.clone(),
                applied_version: s.applied_version,
                seen_seconds_ago: s.seen_seconds_ago,
                stale: s.stale,
            })
            .collect();
        Self {
            version,
            applied: f.sidecars.len() - missing.len(),
            expected: f.sidecars.len(),
            missing,
        }
    }

    /// Every expected sidecar has it. No sidecar at all is not confirmation: even the one
    /// that made the change has not reported yet.
    pub(crate) fn everywhere(&self) -> bool {
        self.expected > 0 && self.missing.is_empty()
    }

    /// `applied on 2/3; missing: pod-x (last seen 12s ago)`.
    pub(crate) fn line(&self) -> String {
        let mut line = format!("applied on {}/{}", self.applied, self.expected);
        if !self.missing.is_empty() {
            let names: Vec<String> = self
                .missing
                .iter()
                .map(|m| {
                    let seen = human_duration(m.seen_seconds_ago);
                    if m.stale {
                        format!("{} (last seen {seen} ago)", m.id)
                    } else {
                        format!(
                            "{} (at version {}, last seen {seen} ago)",
                            m.id, m.applied_version
                        )
                    }
                })
                .collect();
            line.push_str(&format!("; missing: {}", names.join(", ")));
        }
        line
    }
}

/// Polls the fleet until every expected sidecar reports `version` or `limit` passes, and
/// returns the last tally.
pub(crate) async fn wait(
    c: &mut AdminClient<Channel>,
    token: &Option<String>,
    version: u64,
    limit: Duration,
) -> Result<Applied, Stop> {
    let start = Instant::now();
    loop {
        let f = c
            .fleet_status(request(pb::FleetStatusRequest {}, token)?)
            .await?
            .into_inner();
        let a = Applied::of(&f, version);
        let left = limit.saturating_sub(start.elapsed());
        if a.everywhere() || left.is_zero() {
            return Ok(a);
        }
        tokio::time::sleep(POLL.min(left)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar(id: &str, applied_version: u64, seen: u64, stale: bool) -> pb::Sidecar {
        pb::Sidecar {
            id: id.into(),
            applied_version,
            seen_seconds_ago: seen,
            stale,
            ..Default::default()
        }
    }

    #[test]
    fn the_missing_are_named_with_their_age_stale_or_behind() {
        let f = pb::FleetStatusReply {
            version: 9,
            sidecars: vec![
                sidecar("a", 8, 0, false),
                sidecar("b", 9, 0, false),
                sidecar("c", 9, 1, false),
                sidecar("d", 7, 12, true),
                sidecar("e", 10, 0, false),
            ],
            ..Default::default()
        };
        let a = Applied::of(&f, 8);
        assert_eq!(a.line(), "applied on 4/5; missing: d (last seen 12s ago)");
        assert!(!a.everywhere());
        let a = Applied::of(&f, 9);
        assert_eq!(
            a.line(),
            "applied on 3/5; missing: a (at version 8, last seen 0s ago), d (last seen 12s ago)"
        );
        let a = Applied::of(&f, 7);
        assert_eq!(a.line(), "applied on 5/5");
        assert!(a.everywhere());
    }

    #[test]
    fn no_sidecar_at_all_is_not_applied_everywhere() {
        let a = Applied::of(&pb::FleetStatusReply::default(), 1);
        assert_eq!(a.line(), "applied on 0/0");
        assert!(!a.everywhere());
    }
}
