//! The files under `deploy/`, checked by the tools operators run them with: the alert rules
//! with `promtool check rules` and their unit tests with `promtool test rules`, and a real
//! sidecar's `/metrics` (with queue, breaker, degradation and an override in force) with
//! `promtool check metrics`. `scripts/test.sh` installs promtool (Debian's `prometheus`).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::support::{http_get, Upstream};

fn deploy(path: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(deploy("prometheus"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("promtool not found ({e}): run scripts/test.sh, which installs Debian's prometheus package")
        });
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn alert_rules_are_valid_and_their_unit_tests_pass() {
    let (ok, out) = promtool(&["check", "rules", "floodgate-rules.yaml"], None);
    assert!(ok, "{out}");
    assert!(out.contains("15 rules found"), "{out}");
    let (ok, out) = promtool(&["test", "rules", "floodgate-rules.test.yaml"], None);
    assert!(ok, "{out}");
}

#[tokio::test]
async fn a_real_sidecars_metrics_pass_promtool() {
    let up = Upstream::start("app").await;
    let extra = "routes:
  - { name: reco, match: { path_prefix: /reco }, feature: recommendations }
limits:
  - { name: per_client, key: [client_ip], max_requests: 100, window_seconds: 60 }
queue: { max_concurrency: 8, max_size: 100, timeout_ms: 2000 }
circuit_breaker: { consecutive_failures: 5, open_ms: 1000 }
degradation:
  level: degraded
  levels: { degraded: [recommendations] }
schedules:
  - { name: always, cron: \"* * * * *\", duration_minutes: 60, limits_multiplier: 2 }
";
    let fg = crate::support::Sidecar::start(up.port, extra).await;
    for path in ["/", "/reco/x", "/other"] {
        http_get(fg.port, path).await.unwrap();
    }
    // The schedule's override, with its expiry, appears after the first sweep.
    crate::support::eventually(std::time::Duration::from_secs(5), "scheduled override", || async {
        fg.metric(
            "floodgate_override_expiry_timestamp_seconds{key=\"limit:per_client\",scope=\"schedule\"}",
        )
        .await
        .is_some_and(|v| v > 0.0)
    })
    .await;
    let (_, _, metrics) = http_get(fg.metrics_port, "/metrics").await.unwrap();
    let (ok, out) = promtool(&["check", "metrics"], Some(&metrics));
    assert!(ok, "promtool check metrics:\n{out}");
}
