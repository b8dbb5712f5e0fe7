//! Every config in config/examples/ but the shape file (whose admin tokens are files in
//! /etc/floodgate) starts: the real `floodgate` runs on the file as shipped
//! (its addresses replaced by `--listen`/`--upstream`/`--metrics-listen` (`--listener` for a
//! file with `listeners:`), and `--admin-listen`
//! where it has an admin plane, the way a sidecar injector wires a pod), answers `/readyz`
//! with 200 and proxies a request to a real upstream. Validation alone would not catch an
//! example that is valid but cannot run (a Redis it cannot reach, a protocol the app does not
//! speak). config/tests/examples.rs checks that every file here is listed.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use crate::redis_support::RedisServer;
use crate::support::{free_port, h2c_client, http_get, Sidecar, Upstream};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config/examples")
        .join(name)
}

/// Starts floodgate on a copy of `name` with `edit` applied to its text, in front of a fresh
/// upstream, and returns both once `/readyz` answers 200.
async fn start(name: &str, edit: impl Fn(String) -> String) -> (Sidecar, Upstream) {
    let upstream = Upstream::start(name).await;
    let text = edit(std::fs::read_to_string(example(name)).unwrap());
    let has_admin = text.lines().any(|l| l.starts_with("admin:"));
    // A file with `listeners:` is wired per listener: the first on the sidecar's port, the
    // others on ports of their own, all in front of the one upstream.
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let names: Vec<String> = doc["listeners"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|l| l["name"].as_str().map(str::to_string))
        .collect();
    let named = !names.is_empty();
    let up = upstream.port;
    let sidecar = Sidecar::start_retrying(|port, metrics_port| {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join(name);
        std::fs::write(&config, &text).unwrap();
        let mut args = if named {
            names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let p = if i == 0 { port } else { free_port() };
                    format!("--listener={n}=127.0.0.1:{p},127.0.0.1:{up}")
                })
                .collect()
        } else {
            vec![
                format!("--listen=127.0.0.1:{port}"),
                format!("--upstream=127.0.0.1:{up}"),
            ]
        };
        args.push(format!("--metrics-listen=127.0.0.1:{metrics_port}"));
        if has_admin {
            args.push(format!("--admin-listen=127.0.0.1:{}", free_port()));
        }
        (dir, config, args)
    })
    .await;
    (sidecar, upstream)
}

/// One HTTP/1.1 GET through the sidecar reaches the upstream and comes back 200.
async fn proxies(sidecar: &Sidecar, upstream: &Upstream, path: &str) {
    let (status, _, body) = http_get(sidecar.port, path).await.unwrap();
    assert_eq!(status, 200, "{path}: {body}\n{}", sidecar.log());
    assert_eq!(upstream.stats.requests.load(Ordering::SeqCst), 1);
    assert_eq!(upstream.stats.log.lock().unwrap().as_slice(), [path]);
}

#[tokio::test]
async fn api_keys_redis_starts_and_proxies() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let (sidecar, upstream) = start("api-keys-redis.yaml", |t| {
        assert!(
            t.contains("redis://127.0.0.1:6379"),
            "the example's Redis URL moved"
        );
        t.replace("redis://127.0.0.1:6379", &url)
    })
    .await;
    proxies(&sidecar, &upstream, "/api/orders").await;
}

#[tokio::test]
async fn grpc_service_starts_and_proxies_over_h2c() {
    let (sidecar, upstream) = start("grpc-service.yaml", |t| t).await;
    // An h2c caller, as a gRPC client is, on a method of the `shop` route.
    let path = "/shop.v1.Catalog/List";
    let resp = h2c_client()
        .get(
            format!("http://127.0.0.1:{}{path}", sidecar.port)
                .parse()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", sidecar.log());
    assert_eq!(upstream.stats.log.lock().unwrap().as_slice(), [path]);
}

#[tokio::test]
async fn cached_fallback_starts_and_proxies() {
    let (sidecar, upstream) = start("cached-fallback.yaml", |t| t).await;
    proxies(&sidecar, &upstream, "/api/recommendations").await;
}

#[tokio::test]
async fn slow_app_queue_starts_and_proxies() {
    let (sidecar, upstream) = start("slow-app-queue.yaml", |t| t).await;
    proxies(&sidecar, &upstream, "/api/items").await;
}

#[tokio::test]
async fn scheduled_event_starts_and_proxies() {
    let (sidecar, upstream) = start("scheduled-event.yaml", |t| t).await;
    proxies(&sidecar, &upstream, "/api/items").await;
}

#[tokio::test]
async fn quickstart_starts_and_proxies() {
    let (sidecar, upstream) = start("quickstart.yaml", |t| t).await;
    proxies(&sidecar, &upstream, "/api/items").await;
}

#[tokio::test]
async fn http_and_grpc_starts_and_proxies_each_listener() {
    let (sidecar, upstream) = start("http-and-grpc.yaml", |t| t).await;
    proxies(&sidecar, &upstream, "/api/items").await;
}
