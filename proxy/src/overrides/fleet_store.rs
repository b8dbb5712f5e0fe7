//! The fleet's overrides and sidecar list in Redis, and nothing else: a `--fleet` change is
//! written to one hash with a version counter bumped in the same transaction and announced on
//! pub/sub; each sidecar's heartbeat is a score in a sorted set (when it was last heard from)
//! and a JSON line of what it reported. What the sidecar does with what it reads is
//! [`crate::fleet`]'s business; this module only reads and writes.
//!
//! All keys share the `{floodgate}` hash tag, so in a Redis Cluster they live in one slot and
//! the transaction is valid.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use floodgate_admin::reply::{FleetStatus, Sidecar};
use serde_json::{json, Value};
use tracing::warn;

use crate::global::GlobalLimits;
use crate::overrides::{Kind, Override};

const OVERRIDES: &str = "{floodgate}:overrides";
const VERSION: &str = "{floodgate}:version";
const SIDECARS: &str = "{floodgate}:sidecars";
const INFO: &str = "{floodgate}:sidecar-info";
/// Pub/sub channel of version announcements.
pub const ANNOUNCE: &str = "floodgate:fleet:announce";
/// A sidecar heard from within this long is expected to apply fleet changes: long enough
/// that a pod killed mid-incident is still named as missing, short enough that pods replaced
/// by a rollout (which shut down cleanly and leave at once anyway) do not linger.
pub const EXPECTED: Duration = Duration::from_secs(300);
/// A sidecar not heard from for this long is stale. Heartbeats are a second apart, so this
/// is several missed in a row, not one slow round trip.
pub const STALE: Duration = Duration::from_secs(5);

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// An override as stored in Redis.
pub fn to_json(o: &Override) -> String {
    let mut v = json!({
        "reason": o.reason,
        "author": o.author,
        "created_ms": unix_ms(o.created),
        "expires_ms": o.expires.map_or(0, unix_ms),
    });
    let kind = match &o.kind {
        Kind::Limit { name, max_requests } => {
            json!({"kind": "limit", "name": name, "max_requests": max_requests})
        }
        Kind::Window { name, window } => {
            json!({"kind": "window", "name": name, "window_seconds": window.as_secs()})
        }
        Kind::Level(l) => {
            json!({"kind": "level", "level": l.as_str()})
        }
        Kind::Aggressive(on) => json!({"kind": "aggressive_cache", "enabled": on}),
        Kind::Feature { name, enabled } => {
            json!({"kind": "feature", "name": name, "enabled": enabled})
        }
        Kind::QueueSize(n) => json!({"kind": "queue_size", "value": n}),
        Kind::QueueWorkers(n) => json!({"kind": "queue_workers", "value": n}),
        Kind::Breaker { name, open } => json!({"kind": "breaker", "name": name, "open": open}),
    };
    if let (Value::Object(m), Value::Object(k)) = (&mut v, kind) {
        m.extend(k);
    }
    v.to_string()
}

/// An override read back from Redis; `None` if it is not one this version understands.
pub fn from_json(text: &str) -> Option<Override> {
    let v: Value = serde_json::from_str(text).ok()?;
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let u = |k: &str| v.get(k).and_then(Value::as_u64);
    let kind = match v.get("kind")?.as_str()? {
        // A sidecar older than the window knob also wrote `window_seconds` here; its
        // count is read, its window not (that version's fleet window changes are lost on
        // an upgrade: set them again).
        "limit" => Kind::Limit {
            name: s("name")?,
            max_requests: u("max_requests")?,
        },
        "window" => Kind::Window {
            name: s("name")?,
            window: Duration::from_secs(u("window_seconds").filter(|&w| w > 0)?),
        },
        "level" => Kind::Level(s("level")?.parse().ok()?),
        "aggressive_cache" => Kind::Aggressive(v.get("enabled")?.as_bool()?),
        "feature" => Kind::Feature {
            name: s("name")?,
            enabled: v.get("enabled")?.as_bool()?,
        },
        "queue_size" => Kind::QueueSize(u32::try_from(u("value")?).ok()?),
        "queue_workers" => Kind::QueueWorkers(u32::try_from(u("value")?).ok()?),
        "breaker" => Kind::Breaker {
            name: s("name")?,
            open: v.get("open")?.as_bool()?,
        },
        _ => return None,
    };
    let at = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
    Some(Override {
        kind,
        reason: s("reason").unwrap_or_default(),
        author: s("author").unwrap_or_default(),
        created: at(u("created_ms").unwrap_or(0)),
        expires: u("expires_ms").filter(|&e| e > 0).map(at),
    })
}

/// The fleet layer's value of each key a change touches, as it was read, in words; `None`
/// where the layer holds nothing (or only an expired override) for the key.
pub type Layer = BTreeMap<String, Option<String>>;

/// `keys` paired with their stored overrides (`HMGET`'s answer), described.
fn layer(keys: &[String], stored: Vec<Option<String>>) -> Layer {
    let now = SystemTime::now();
    keys.iter()
        .cloned()
        .zip(stored.into_iter().chain(std::iter::repeat(None)))
        .map(|(k, v)| {
            let value = v.map(|text| match from_json(&text) {
                Some(o) if o.expires.is_none_or(|e| e > now) => Some(o.kind.describe()),
                Some(_) => None,
                None => Some("(not understood by this version)".to_string()),
            });
            (k, value.flatten())
        })
        .collect()
}

/// Writes `set` and removes `remove` (keys) in one transaction, bumps the version and
/// announces it. Returns the new version and what the layer held for those keys just
/// before, read in the same transaction so no other change can slip in between.
pub async fn publish(
    g: &GlobalLimits,
    set: &[Override],
    remove: &[String],
) -> Result<(u64, Layer), String> {
    let keys: Vec<String> = set
        .iter()
        .map(|o| o.kind.key())
        .chain(remove.iter().cloned())
        .collect();
    let mut pipe = redis::pipe();
    pipe.atomic();
    if !keys.is_empty() {
        pipe.cmd("HMGET").arg(OVERRIDES).arg(&keys);
    }
    for o in set {
        pipe.hset(OVERRIDES, o.kind.key(), to_json(o)).ignore();
    }
    for k in remove {
        pipe.hdel(OVERRIDES, k).ignore();
    }
    pipe.incr(VERSION, 1);
    let (stored, version) = if keys.is_empty() {
        let (version,): (u64,) = g.query(&pipe).await.map_err(|e| e.to_string())?;
        (Vec::new(), version)
    } else {
        g.query::<(Vec<Option<String>>, u64)>(&pipe)
            .await
            .map_err(|e| e.to_string())?
    };
    let mut announce = redis::pipe();
    announce.publish(ANNOUNCE, version).ignore();
    // The version is what matters; a lost announcement is caught by the next poll.
    let _: Result<(), _> = g.query(&announce).await;
    Ok((version, layer(&keys, stored)))
}

/// What [`publish`] would return, writing nothing: the current version and the layer's
/// values of `keys` (a dry run).
pub async fn preview(g: &GlobalLimits, keys: &[String]) -> Result<(u64, Layer), String> {
    let mut pipe = redis::pipe();
    pipe.get(VERSION);
    if keys.is_empty() {
        let (version,): (Option<u64>,) = g.query(&pipe).await.map_err(|e| e.to_string())?;
        return Ok((version.unwrap_or(0), Layer::new()));
    }
    pipe.cmd("HMGET").arg(OVERRIDES).arg(keys);
    let (version, stored): (Option<u64>, Vec<Option<String>>) =
        g.query(&pipe).await.map_err(|e| e.to_string())?;
    Ok((version.unwrap_or(0), layer(keys, stored)))
}

/// The fleet's keys of the overrides whose key starts with `prefix`.
pub async fn keys(g: &GlobalLimits, prefix: &str) -> Result<Vec<String>, String> {
    let mut pipe = redis::pipe();
    pipe.hkeys(OVERRIDES);
    let (keys,): (Vec<String>,) = g.query(&pipe).await.map_err(|e| e.to_string())?;
    Ok(keys.into_iter().filter(|k| k.starts_with(prefix)).collect())
}

/// The current version and overrides (expired ones left out).
pub async fn fetch(g: &GlobalLimits) -> Result<(u64, BTreeMap<String, Override>), String> {
    let mut pipe = redis::pipe();
    pipe.get(VERSION).hgetall(OVERRIDES);
    let (version, all): (Option<u64>, BTreeMap<String, String>) =
        g.query(&pipe).await.map_err(|e| e.to_string())?;
    let now = SystemTime::now();
    let set = all
        .iter()
        .filter_map(|(k, v)| {
            let o = from_json(v);
            if o.is_none() {
                warn!(
                    key = k,
                    "ignoring a fleet override this version does not understand"
                );
            }
            o
        })
        .filter(|o| o.expires.is_none_or(|e| e > now))
        .map(|o| (o.kind.key(), o))
        .collect();
    Ok((version.unwrap_or(0), set))
}

/// What one [`beat`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    /// The fleet's version (0 before the first change).
    pub version: u64,
    /// The sidecar was not on the list before this beat (its first, or it had been forgotten
    /// or had left): its info must be written, whatever was asked.
    pub joined: bool,
}

/// One round trip of the fleet sync: reads the fleet's version and, given `id`, records one
/// heartbeat of that sidecar (its score in the list: when it was last heard from) with
/// `info` (what it reports about itself) when given, and with `gc` forgets the sidecars
/// silent for longer than [`EXPECTED`] (their info too; rarely any, so the second round trip
/// is rare).
pub async fn beat(
    g: &GlobalLimits,
    id: Option<&str>,
    info: Option<&str>,
    gc: bool,
) -> Result<Beat, String> {
    let now = unix_ms(SystemTime::now());
    let gone_before = now.saturating_sub(ms(EXPECTED));
    let mut pipe = redis::pipe();
    pipe.get(VERSION);
    let Some(id) = id else {
        let (version,): (Option<u64>,) = g.query(&pipe).await.map_err(|e| e.to_string())?;
        return Ok(Beat {
            version: version.unwrap_or(0),
            joined: false,
        });
    };
    pipe.zadd(SIDECARS, id, now);
    if let Some(info) = info {
        pipe.hset(INFO, id, info).ignore();
    }
    let (version, added, gone) = if gc {
        pipe.cmd("ZRANGEBYSCORE")
            .arg(SIDECARS)
            .arg(0)
            .arg(gone_before);
        g.query::<(Option<u64>, u64, Vec<String>)>(&pipe)
            .await
            .map_err(|e| e.to_string())?
    } else {
        let (version, added): (Option<u64>, u64) =
            g.query(&pipe).await.map_err(|e| e.to_string())?;
        (version, added, Vec::new())
    };
    if !gone.is_empty() {
        let mut pipe = redis::pipe();
        pipe.zrem(SIDECARS, &gone)
            .ignore()
            .hdel(INFO, &gone)
            .ignore();
        g.query::<()>(&pipe).await.map_err(|e| e.to_string())?;
    }
    Ok(Beat {
        version: version.unwrap_or(0),
        joined: added > 0,
    })
}

/// Writes what sidecar `id` reports about itself (its score is [`beat`]'s).
pub async fn write_info(g: &GlobalLimits, id: &str, info: &str) -> Result<(), String> {
    let mut pipe = redis::pipe();
    pipe.hset(INFO, id, info).ignore();
    g.query::<()>(&pipe).await.map_err(|e| e.to_string())
}

/// Takes sidecar `id` off the list.
pub async fn leave(g: &GlobalLimits, id: &str) -> Result<(), String> {
    let mut pipe = redis::pipe();
    pipe.zrem(SIDECARS, id).ignore().hdel(INFO, id).ignore();
    g.query::<()>(&pipe).await.map_err(|e| e.to_string())
}

/// Every expected sidecar (heard from within [`EXPECTED`]), those silent for [`STALE`]
/// marked stale, by id.
pub async fn list(g: &GlobalLimits) -> Result<FleetStatus, String> {
    let now = unix_ms(SystemTime::now());
    let since = now.saturating_sub(ms(EXPECTED));
    let mut pipe = redis::pipe();
    pipe.get(VERSION)
        .cmd("ZRANGEBYSCORE")
        .arg(SIDECARS)
        .arg(since)
        .arg("+inf")
        .arg("WITHSCORES");
    let (version, alive): (Option<u64>, Vec<(String, u64)>) =
        g.query(&pipe).await.map_err(|e| e.to_string())?;
    let mut sidecars = Vec::new();
    if !alive.is_empty() {
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET")
            .arg(INFO)
            .arg(alive.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>());
        let (infos,): (Vec<Option<String>>,) = g.query(&pipe).await.map_err(|e| e.to_string())?;
        for ((id, seen), info) in alive.iter().zip(infos) {
            let v: Value = info
                .and_then(|i| serde_json::from_str(&i).ok())
                .unwrap_or(Value::Null);
            let f = |k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(0.0);
            let u = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
            let silent = now.saturating_sub(*seen);
            sidecars.push(Sidecar {
                id: id.clone(),
                pod: v.get("pod").and_then(Value::as_str).unwrap_or("").into(),
                config_version: u("config_version"),
                applied_version: u("applied_version"),
                rps: f("rps"),
                error_rate: f("error_rate"),
                p95_ms: f("p95_ms"),
                silent_for: Duration::from_millis(silent),
                stale: silent >= ms(STALE),
            });
        }
    }
    sidecars.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(FleetStatus {
        version: version.unwrap_or(0),
        sidecars,
        expected: EXPECTED,
        stale: STALE,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_override_reads_back_as_it_was_written() {
        let at = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let kinds = [
            Kind::Limit {
                name: "api".into(),
                max_requests: 2000,
            },
            Kind::Window {
                name: "api".into(),
                window: Duration::from_secs(30),
            },
            Kind::Level(floodgate_config::Level::Degraded),
            Kind::Feature {
                name: "reco".into(),
                enabled: false,
            },
            Kind::QueueSize(5000),
            Kind::QueueWorkers(20),
            Kind::Aggressive(true),
            Kind::Breaker {
                name: "upstream".into(),
                open: true,
            },
        ];
        for kind in kinds {
            let o = Override {
                kind: kind.clone(),
                reason: "INC".into(),
                author: "sre".into(),
                created: at(100),
                expires: Some(at(700)),
            };
            let back = from_json(&to_json(&o)).unwrap_or_else(|| panic!("{kind:?}"));
            assert_eq!(back.kind, kind);
            assert_eq!((back.created, back.expires), (at(100), Some(at(700))));
            assert_eq!((back.reason.as_str(), back.author.as_str()), ("INC", "sre"));
        }
    }

    #[test]
    fn an_older_sidecars_limit_with_a_window_reads_as_its_count() {
        let old = r#"{"kind":"limit","name":"api","max_requests":50,"window_seconds":30,"reason":"","author":"","created_ms":0,"expires_ms":0}"#;
        assert_eq!(
            from_json(old).map(|o| o.kind),
            Some(Kind::Limit {
                name: "api".into(),
                max_requests: 50
            })
        );
        assert!(from_json(r#"{"kind":"something_new"}"#).is_none());
    }
}
