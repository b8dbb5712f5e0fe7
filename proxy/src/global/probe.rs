//! The prober: runs the decisions' own script on every shard (a key hash-tagged to a slot of
//! each), so any error a decision would get (OOM, READONLY, NOAUTH, a paused or stopped server)
//! keeps that shard down, where `PING` passed. It wakes when a decision takes a shard down and
//! backs off further each time a shard fails right after passing ([`Backoff`]).

use std::sync::Arc;

use futures_util::future::join_all;
use pingora_core::server::ShutdownWatch;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Value};
use tokio::time::Instant;

use super::health::{Backoff, Shard, FIRST, HEALTHY};
use super::{Conn, GlobalError, GlobalLimits};
use floodgate_config::RedisTarget;

/// Admits every probe (so every probe writes, as an admitted decision does: a script that
/// writes nothing passes under OOM and on a replica).
const PROBE_MAX: u64 = 1 << 50;
/// The probe key's window: the script expires a key after two windows, so a probe key
/// outlives its last probe by at most 2 s.
const PROBE_WINDOW_MS: u64 = 1000;

/// The prober's view of one shard.
struct Probed {
    shard: Arc<Shard>,
    backoff: Backoff,
    next: Instant,
    /// Up as of the last probe: up then and down now means a decision took it down.
    seen_up: bool,
}

/// Probes until shutdown.
pub(super) async fn run(g: &GlobalLimits, mut shutdown: ShutdownWatch) {
    let cluster = matches!(g.target, RedisTarget::Cluster(_));
    let mut probed: Vec<Probed> = Vec::new();
    let mut connect_wait = FIRST;
    let mut next_map = Instant::now();
    loop {
        let conn = connection(g).await;
        let now = Instant::now();
        match &conn {
            Some(_) => connect_wait = FIRST,
            None => connect_wait = (connect_wait * 2).min(HEALTHY),
        }
        if let (RedisTarget::Cluster(seeds), Some(Conn::Cluster(c))) = (&g.target, conn.as_deref())
        {
            if now >= next_map {
                // Re-read every round: a failover or a resharding shows here, and a shard
                // whose ranges stay keeps its state.
                match slot_map(g, seeds, c.clone()).await {
                    Ok(m) => g.health.set_masters(m),
                    Err(e) => tracing::debug!("redis CLUSTER SLOTS failed: {e}"),
                }
                next_map = now + HEALTHY;
            }
        }
        let shards = g.health.shards();
        probed.retain(|p| shards.iter().any(|s| Arc::ptr_eq(s, &p.shard)));
        for s in shards {
            if !probed.iter().any(|p| Arc::ptr_eq(&s, &p.shard)) {
                probed.push(Probed {
                    seen_up: s.is_up(),
                    shard: s,
                    backoff: Backoff::default(),
                    next: now,
                });
            }
        }
        for p in &mut probed {
            if p.seen_up && !p.shard.is_up() {
                p.seen_up = false;
                p.next = p.backoff.went_down(now);
            }
        }
        let due: Vec<usize> = (0..probed.len())
            .filter(|&i| probed[i].next <= now)
            .collect();
        let results = join_all(due.iter().map(|&i| probe(g, &probed[i].shard))).await;
        let now = Instant::now();
        for (i, result) in due.into_iter().zip(results) {
            let p = &mut probed[i];
            match result {
                Ok(()) => {
                    if g.health.mark_up(&p.shard) {
                        p.backoff.passed(now);
                        p.shard.link.reset_decisions();
                    }
                    p.seen_up = true;
                    p.next = now + HEALTHY;
                }
                Err(e) => {
                    tracing::debug!(shard = %p.shard.label, "redis probe failed: {e}");
                    // Probes are Redis calls too: an outage with no traffic still shows.
                    g.count_error(&e);
                    p.next = if g.health.mark_down(&p.shard, &e) {
                        p.backoff.went_down(now)
                    } else {
                        p.backoff.failed(now)
                    };
                    p.seen_up = false;
                }
            }
        }
        let mut wake = probed
            .iter()
            .map(|p| p.next)
            .min()
            .unwrap_or(now + connect_wait);
        if conn.is_none() {
            wake = wake.min(now + connect_wait);
        }
        if cluster {
            wake = wake.min(next_map);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = g.health.woken() => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// The fleet sync's connection, opened if there is none: for a standalone server the
/// prober's own, for a cluster redis-rs's cluster connection.
async fn connection(g: &GlobalLimits) -> Option<Arc<Conn>> {
    if let Some(c) = g.conn.load_full() {
        return Some(c);
    }
    let conn = match &g.target {
        RedisTarget::Standalone(_) => {
            let shard = g.health.shards().into_iter().next()?;
            shard.link.for_probe().await.map(Conn::Single)
        }
        RedisTarget::Cluster(nodes) => GlobalLimits::connect_cluster(nodes)
            .await
            .map(Conn::Cluster),
    };
    match conn {
        Ok(c) => {
            let c = Arc::new(c);
            g.conn.store(Some(c.clone()));
            Some(c)
        }
        Err(e) => {
            g.errors.with_label_values(&["connect"]).inc();
            tracing::debug!("redis connect failed: {e}");
            None
        }
    }
}

/// One probe of `shard`: the limit script on `fg:probe:{tag}`, a key no limit uses (limits'
/// keys are `fg:{name:hash}`), on the prober's connection to its master, with the decisions'
/// budget.
async fn probe(g: &GlobalLimits, shard: &Shard) -> Result<(), GlobalError> {
    let conn = shard.link.for_probe().await?;
    let mut inv = g.script.key(format!("fg:probe:{{{}}}", shard.tag));
    inv.arg("f").arg(PROBE_MAX).arg(PROBE_WINDOW_MS);
    let reply = g.run(conn, &inv).await?;
    if reply.starts_with("1 ") {
        Ok(())
    } else {
        Err(GlobalError::Reply(reply))
    }
}

/// Each master's slot ranges and address, from `CLUSTER SLOTS`: asked of the shards' masters
/// over the prober's own connections (a shard that is up first), redis-rs's cluster
/// connection last (it stalls while it repairs itself). Masters are reached with the first
/// seed's settings (user, password, database), at the address the cluster gives.
async fn slot_map(
    g: &GlobalLimits,
    seeds: &[String],
    cluster: redis::cluster_async::ClusterConnection,
) -> Result<Vec<(Ranges, ConnectionInfo)>, GlobalError> {
    let seed = seeds
        .first()
        .map(|s| s.as_str().into_connection_info())
        .transpose()?
        .ok_or(GlobalError::Down)?;
    let budget = g.timeout.max(std::time::Duration::from_millis(200));
    let mut shards = g.health.shards();
    shards.sort_by_key(|s| !s.is_up());
    let mut cmd = redis::cmd("CLUSTER");
    cmd.arg("SLOTS");
    let mut reply = None;
    for s in &shards {
        let Ok(mut c) = s.link.for_probe().await else {
            continue;
        };
        let call = cmd.query_async::<Value>(&mut c);
        if let Ok(Ok(v)) = tokio::time::timeout(budget, call).await {
            reply = Some(v);
            break;
        }
    }
    let v = match reply {
        Some(v) => v,
        None => {
            let mut c = cluster;
            let call = c.route_command(cmd, RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random));
            tokio::time::timeout(HEALTHY, call)
                .await
                .map_err(|_| GlobalError::Timeout(HEALTHY))??
        }
    };
    let masters = masters(&v).ok_or_else(|| GlobalError::Reply(format!("{v:?}")))?;
    let seed_host = match seed.addr() {
        ConnectionAddr::Tcp(h, _) => h.clone(),
        _ => String::new(),
    };
    Ok(masters
        .into_iter()
        .map(|(ranges, host, port)| {
            // An empty host means "the node you asked": the seeds are on one host in practice.
            let host = if host.is_empty() {
                seed_host.clone()
            } else {
                host
            };
            (
                ranges,
                seed.clone().set_addr(ConnectionAddr::Tcp(host, port)),
            )
        })
        .collect())
}

/// Slot ranges, inclusive, of one master.
type Ranges = Vec<(u16, u16)>;

/// Groups `CLUSTER SLOTS`'s ranges by master (`[start, end, [host, port, ...], replicas...]`).
fn masters(v: &Value) -> Option<Vec<(Ranges, String, u16)>> {
    let Value::Array(entries) = v else {
        return None;
    };
    let mut by_master: Vec<(Ranges, String, u16)> = Vec::new();
    for e in entries {
        let Value::Array(f) = e else { return None };
        let int = |v: Option<&Value>| match v {
            Some(Value::Int(n)) => u16::try_from(*n).ok(),
            _ => None,
        };
        let (lo, hi) = (int(f.first())?, int(f.get(1))?);
        let Some(Value::Array(node)) = f.get(2) else {
            return None;
        };
        let host = match node.first() {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(Value::SimpleString(s)) => s.clone(),
            _ => return None,
        };
        let port = int(node.get(1))?;
        match by_master
            .iter_mut()
            .find(|(_, h, p)| *h == host && *p == port)
        {
            Some((ranges, _, _)) => ranges.push((lo, hi)),
            None => by_master.push((vec![(lo, hi)], host, port)),
        }
    }
    Some(by_master)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(b"127.0.0.1".to_vec()),
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    #[test]
    fn groups_ranges_by_master() {
        let entry = |lo, hi, master, replica| {
            Value::Array(vec![
                Value::Int(lo),
                Value::Int(hi),
                node(master),
                node(replica),
            ])
        };
        let v = Value::Array(vec![
            entry(0, 5460, 7000, 7003),
            entry(5461, 10922, 7001, 7004),
            entry(10923, 15999, 7002, 7005),
            entry(16000, 16383, 7000, 7003),
        ]);
        let host = String::from("127.0.0.1");
        assert_eq!(
            masters(&v).unwrap(),
            [
                (vec![(0, 5460), (16000, 16383)], host.clone(), 7000),
                (vec![(5461, 10922)], host.clone(), 7001),
                (vec![(10923, 15999)], host, 7002)
            ]
        );
        assert!(masters(&Value::Nil).is_none());
    }
}
