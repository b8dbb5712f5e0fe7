//! The files under `deploy/`, checked by the tools operators run them with: the alert rules
//! with `promtool check rules` and their unit tests with `promtool test rules`, the Grafana
//! dashboard's every query evaluated by `promtool test rules` on known series, and a real
//! sidecar's `/metrics` (with queue, breaker, degradation and an override in force) with
//! `promtool check metrics`; the prometheus-adapter rule behind the HPA; the image's
//! Containerfile with hadolint. `scripts/test.sh` installs promtool (Debian's `prometheus`) and
//! hadolint. The Kubernetes manifests are checked in `inject.rs`, the image in `image.rs`.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::support::{http_get, run_ok, Upstream};

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
fn dashboard_is_what_build_py_writes() {
    let path = deploy("grafana/floodgate.json");
    let text = std::fs::read_to_string(&path).unwrap();
    run_ok(Command::new("python3").arg(deploy("grafana/build.py")));
    let rebuilt = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text, rebuilt,
        "deploy/grafana/floodgate.json is stale: run deploy/grafana/build.py"
    );
}

/// Every query of the dashboard, taken from its JSON with Grafana's variables put in, is
/// evaluated by `promtool test rules` over the synthetic series of
/// `deploy/grafana/floodgate.test.yaml` and must return exactly the samples it gives (an error
/// rate of 10% for 540/min of 200 and 60/min of 503, quantiles over the pods' summed buckets,
/// nothing from another namespace). A query without an answer there fails the test.
#[test]
fn every_dashboard_query_gives_the_known_answer_on_synthetic_series() {
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana/floodgate.json")).unwrap())
            .unwrap();
    let spec: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(deploy("grafana/floodgate.test.yaml")).unwrap(),
    )
    .unwrap();

    // The dashboard's variables (but the data source) are exactly the ones given values.
    let mut vars: Vec<(String, String)> = spec["variables"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().into(), v.as_str().unwrap().into()))
        .collect();
    let mut declared: Vec<String> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["type"] != "datasource")
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    declared.sort();
    let mut given: Vec<String> = vars.iter().map(|(k, _)| k.clone()).collect();
    given.sort();
    assert_eq!(declared, given, "floodgate.test.yaml `variables`");
    // Longest first, so that `$name` never eats the start of `$namespace`.
    vars.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
    let namespace = format!(
        "namespace=~\"{}\"",
        spec["variables"]["namespace"].as_str().unwrap()
    );
    let selector =
        regex::Regex::new(r"\b(?:http|floodgate|kube|container|process)_[a-z0-9_:]*(\{[^}]*\})?")
            .unwrap();

    // (panel title, refId, expression with the variables' values)
    let mut queries = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap();
        for target in panel["targets"].as_array().unwrap() {
            let mut expr = target["expr"].as_str().unwrap().to_string();
            for (k, v) in &vars {
                expr = expr
                    .replace(&format!("${{{k}}}"), v)
                    .replace(&format!("${k}"), v);
            }
            assert!(
                !expr.contains('$'),
                "{title}: an unknown variable in {expr}"
            );
            // Every series it reads is limited to the namespace selected.
            for m in selector.captures_iter(&expr) {
                assert!(
                    m.get(1).is_some_and(|l| l.as_str().contains(&namespace)),
                    "{title}: `{}` ignores $namespace in {expr}",
                    &m[0]
                );
            }
            let ref_id = target["refId"].as_str().unwrap().to_string();
            queries.push((title.to_string(), ref_id, expr));
        }
    }
    assert!(queries.len() >= 19, "{} queries", queries.len());

    let mut answered = std::collections::HashSet::new();
    let mut tests = Vec::new();
    for test in spec["tests"].as_sequence().unwrap() {
        let expect = test["expect"].as_mapping().unwrap();
        let mut exprs = Vec::new();
        for (title, by_ref) in expect {
            let title = title.as_str().unwrap();
            for (ref_id, samples) in by_ref.as_mapping().unwrap() {
                let ref_id = ref_id.as_str().unwrap();
                let (_, _, expr) = queries
                    .iter()
                    .find(|(t, r, _)| t == title && r == ref_id)
                    .unwrap_or_else(|| {
                        panic!("floodgate.test.yaml expects `{title}` {ref_id}, which the dashboard does not have")
                    });
                answered.insert((title.to_string(), ref_id.to_string()));
                let mut case = serde_yaml::Mapping::new();
                // Rounded, so that an answer is written as a decimal and not to the last bit.
                case.insert("expr".into(), format!("round(({expr}), 0.000001)").into());
                case.insert("eval_time".into(), test["eval_time"].clone());
                case.insert("exp_samples".into(), samples.clone());
                exprs.push(serde_yaml::Value::Mapping(case));
            }
        }
        let mut t = serde_yaml::Mapping::new();
        t.insert("interval".into(), test["interval"].clone());
        t.insert("input_series".into(), test["input_series"].clone());
        t.insert("promql_expr_test".into(), exprs.into());
        tests.push(serde_yaml::Value::Mapping(t));
    }
    for (title, ref_id, expr) in &queries {
        assert!(
            answered.contains(&(title.clone(), ref_id.clone())),
            "`{title}` {ref_id} ({expr}) has no expected answer in deploy/grafana/floodgate.test.yaml"
        );
    }
    let mut file = serde_yaml::Mapping::new();
    file.insert("rule_files".into(), serde_yaml::Value::Sequence(vec![]));
    file.insert("tests".into(), tests.into());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard.test.yaml");
    std::fs::write(&path, serde_yaml::to_string(&file).unwrap()).unwrap();
    let (ok, out) = promtool(&["test", "rules", path.to_str().unwrap()], None);
    assert!(
        ok,
        "the dashboard's queries against deploy/grafana/floodgate.test.yaml:\n{out}"
    );
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

/// The prometheus-adapter rule behind the runbook's HPA: its queries parse (its template
/// filled in the way the adapter fills it), it serves the metric name the HPA asks for, and it
/// reads a series a real sidecar exports with the labels it selects on.
#[tokio::test]
async fn the_hpa_metric_comes_from_a_valid_adapter_rule_over_a_real_series() {
    let cm: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(deploy("kubernetes/prometheus-adapter.yaml")).unwrap(),
    )
    .unwrap();
    let config: serde_yaml::Value =
        serde_yaml::from_str(cm["data"]["config.yaml"].as_str().unwrap()).unwrap();
    let rule = &config["rules"][0];
    let hpa: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(deploy("kubernetes/hpa.yaml")).unwrap())
            .unwrap();
    let wanted = hpa["spec"]["metrics"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["type"] == "Pods")
        .unwrap()["pods"]["metric"]["name"]
        .clone();
    assert_eq!(rule["name"]["as"], wanted);
    assert_eq!(wanted, "http_requests_per_second");

    let series = rule["seriesQuery"].as_str().unwrap();
    let query = rule["metricsQuery"]
        .as_str()
        .unwrap()
        .replace("<<.Series>>", "http_requests_total")
        .replace(
            "<<.LabelMatchers>>",
            "namespace=\"production\",pod=~\"api-server-.*\"",
        )
        .replace("<<.GroupBy>>", "pod");
    let rules = format!(
        "groups:\n  - name: adapter\n    rules:\n      - record: adapter_series\n        expr: {}\n      - record: adapter_metric\n        expr: {}\n",
        serde_json::to_string(series).unwrap(),
        serde_json::to_string(&query).unwrap()
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("adapter-rules.yaml");
    std::fs::write(&file, rules).unwrap();
    let (ok, out) = promtool(&["check", "rules", file.to_str().unwrap()], None);
    assert!(ok, "{out}");

    // The series is the sidecar's own, by that name (namespace/pod/container come from the
    // PodMonitor's scrape).
    let up = Upstream::start("app").await;
    let fg = crate::support::Sidecar::start(up.port, "").await;
    http_get(fg.port, "/").await.unwrap();
    // Recorded after the response is sent: wait for it rather than race it.
    fg.wait_metric(
        "http_requests_total{method=\"GET\",route=\"default\",status=\"200\"}",
        1.0,
    )
    .await;
    let (_, _, metrics) = http_get(fg.metrics_port, "/metrics").await.unwrap();
    let name = rule["name"]["matches"]
        .as_str()
        .unwrap()
        .trim_matches(['^', '$']);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with(&format!("# TYPE {name} counter"))),
        "{metrics}"
    );
}

/// The image's Containerfile passes hadolint. `image.rs` checks the image built from it: its
/// config against the injector's, and the sidecar run from its root filesystem.
#[test]
fn containerfile_lints() {
    run_ok(Command::new("hadolint").arg(deploy("image/Containerfile")));
}
