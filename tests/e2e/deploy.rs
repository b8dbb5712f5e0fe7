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

#[test]
fn dashboard_is_current_and_every_expression_parses() {
    let path = deploy("grafana/floodgate.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    // The JSON is generated: it must be what build.py writes now.
    let out = Command::new("python3")
        .arg(deploy("grafana/build.py"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rebuilt = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text, rebuilt,
        "deploy/grafana/floodgate.json is stale: run deploy/grafana/build.py"
    );
    // Every panel query, with Grafana's variables given values, as a recording rule promtool parses.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut n = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$namespace", "shop")
                .replace("$deployment", "api-server");
            rules.push_str(&format!(
                "      - record: dashboard_panel_{n}\n        expr: {}\n",
                serde_json::to_string(&expr).unwrap()
            ));
            n += 1;
        }
    }
    assert!(n >= 15, "{n} expressions");
    for needed in [
        "rate(http_requests_total[5m])",
        "histogram_quantile(0.95, rate(http_request_duration_seconds_bucket[5m]))",
        "rate(http_requests_total{status=~\"5..\"}[5m]) / rate(http_requests_total[5m])",
        "kube_hpa_status_current_replicas",
    ] {
        assert!(
            text.contains(&needed.replace('"', "\\\"")) || text.contains(needed),
            "the runbook's query `{needed}` is on the dashboard"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-rules.yaml");
    std::fs::write(&file, rules).unwrap();
    let (ok, out) = promtool(&["check", "rules", file.to_str().unwrap()], None);
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
