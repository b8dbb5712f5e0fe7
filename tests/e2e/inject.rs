//! `floodgatectl inject` on real shapes of workloads (tests/e2e/inject/*.yaml), the manifests
//! under `deploy/kubernetes/` and the kustomize component, checked with the tools operators use:
//! `kubernetes-validate --strict` (the Kubernetes OpenAPI schemas, offline) and `kustomize
//! build`, both installed by `scripts/test.sh`. And the injected container, run for real with
//! the arguments the injector wrote.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_yaml::Value;

use crate::support::*;

pub(crate) fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(p)
}

pub(crate) fn fixture(name: &str) -> PathBuf {
    repo("tests/e2e/inject").join(name)
}

/// Runs `floodgatectl inject` with `args`, `input` on stdin: (exit code, stdout, stderr).
pub(crate) fn inject(input: &str, args: &[&str]) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(floodgatectl())
        .args(["inject", "-f", "-"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

pub(crate) fn inject_ok(input: &str, args: &[&str]) -> (String, String) {
    let (code, out, err) = inject(input, args);
    assert_eq!(code, 0, "{err}");
    (out, err)
}

pub(crate) fn docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// Every leaf of a document by path; list items that have a `name` (containers, volumes,
/// env, mounts) are keyed by it, container ports by number, so inserting one does not shift
/// the others.
fn flatten(v: &Value, path: String, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Mapping(m) => {
            for (k, v) in m {
                let k = k.as_str().map_or_else(|| format!("{k:?}"), str::to_string);
                flatten(v, format!("{path}.{k}"), out);
            }
        }
        Value::Sequence(s) => {
            for (i, item) in s.iter().enumerate() {
                // Container ports by number: injection renames them.
                let key = item
                    .get("containerPort")
                    .map(|p| format!("{p:?}"))
                    .or_else(|| item.get("name").and_then(Value::as_str).map(str::to_string))
                    .unwrap_or_else(|| i.to_string());
                flatten(item, format!("{path}[{key}]"), out);
            }
        }
        other => {
            out.insert(path, serde_yaml::to_string(other).unwrap());
        }
    }
}

/// The paths injection may add or change; anything else that differs is a bug.
fn allowed(path: &str) -> bool {
    let patterns = [
        r"\.(initContainers|containers)\[floodgate\]\.",
        r"\.volumes\[floodgate-(config|admin-tokens|tmp)\]\.",
        r"\.metadata\.annotations\.(prometheus\.io/(scrape|port|path)|floodgate\.io/injected)$",
        r"\.metadata\.labels\.floodgate\.io/injected$",
        r"\.containers\[[^\]]+\]\.ports\[[^\]]+\]\.name$",
        r"\.containers\[[^\]]+\]\.(readinessProbe|livenessProbe|startupProbe)\.(httpGet|tcpSocket)\.port$",
        r"^\.spec\.ports\[[^\]]+\]\.targetPort$",
        r"^\.items\[[^\]]+\]\.spec\.ports\[[^\]]+\]\.targetPort$",
    ];
    patterns
        .iter()
        .any(|p| regex::Regex::new(p).unwrap().is_match(path))
}

/// The pod spec of a workload document.
pub(crate) fn pod_spec(doc: &Value) -> Option<&Value> {
    let spec = doc.get("spec")?;
    match doc.get("kind")?.as_str()? {
        "Pod" => Some(spec),
        "CronJob" => spec
            .get("jobTemplate")?
            .get("spec")?
            .get("template")?
            .get("spec"),
        _ => spec.get("template")?.get("spec"),
    }
}

/// A list of the pod spec (`containers`, `initContainers`), empty when absent.
fn pod_list(doc: &Value, key: &str) -> Vec<Value> {
    pod_spec(doc)
        .and_then(|s| s.get(key))
        .and_then(Value::as_sequence)
        .cloned()
        .unwrap_or_default()
}

pub(crate) fn containers(doc: &Value) -> Vec<Value> {
    pod_list(doc, "containers")
}

fn init_containers(doc: &Value) -> Vec<Value> {
    pod_list(doc, "initContainers")
}

/// The `floodgate` container of a workload: a native sidecar (the first init container) by
/// default, the first container with `--classic-sidecar`.
pub(crate) fn sidecar_of(doc: &Value) -> Value {
    init_containers(doc)
        .into_iter()
        .chain(containers(doc))
        .find(|c| c["name"] == "floodgate")
        .unwrap_or_else(|| panic!("no floodgate container in {doc:?}"))
}

fn args_of(container: &Value) -> Vec<String> {
    container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// A fixture, extra flags, the workloads that get the sidecar with the app port it fronts, and
/// the Services whose targetPort must afterwards be Floodgate's port name.
type Shape = (
    &'static str,
    &'static [&'static str],
    &'static [(&'static str, u16)],
    &'static [(&'static str, &'static str)],
);

const SHAPES: &[Shape] = &[
    ("deployment.yaml", &[], &[("web", 8080)], &[("web", "http")]),
    (
        "statefulset.yaml",
        &[],
        &[("ledger", 9000)],
        &[("ledger", "http"), ("ledger-public", "http")],
    ),
    (
        "daemonset.yaml",
        &["--upstream-port", "8080"],
        &[("edge", 8080)],
        &[],
    ),
    ("cronjob.yaml", &[], &[("report", 7000)], &[]),
    ("pod.yaml", &[], &[("debug", 50051)], &[]),
    ("list.yaml", &[], &[("api", 3000)], &[("api", "http")]),
];

/// Workloads and Services of a stream, `List` items included.
pub(crate) fn objects(text: &str) -> Vec<Value> {
    docs(text)
        .into_iter()
        .flat_map(|d| {
            if d["kind"] == "List" {
                d["items"].as_sequence().cloned().unwrap_or_default()
            } else {
                vec![d]
            }
        })
        .collect()
}

#[test]
fn every_workload_shape_gets_the_sidecar_and_nothing_else_changes() {
    for (file, flags, workloads, services) in SHAPES {
        let input = std::fs::read_to_string(fixture(file)).unwrap();
        let (out, notes) = inject_ok(&input, flags);
        let (before, after) = (docs(&input), docs(&out));
        assert_eq!(before.len(), after.len(), "{file}: same documents");
        for (b, a) in before.iter().zip(&after) {
            let (mut fb, mut fa) = (BTreeMap::new(), BTreeMap::new());
            flatten(b, String::new(), &mut fb);
            flatten(a, String::new(), &mut fa);
            for (path, value) in &fb {
                if fa.get(path) != Some(value) {
                    assert!(
                        allowed(path),
                        "{file}: {path} changed from {value:?} to {:?}",
                        fa.get(path)
                    );
                }
            }
            for path in fa.keys().filter(|p| !fb.contains_key(*p)) {
                assert!(allowed(path), "{file}: {path} was added");
            }
        }
        let objs = objects(&out);
        for (name, app_port) in *workloads {
            let w = objs
                .iter()
                .find(|o| o["metadata"]["name"] == *name && o["kind"] != "Service")
                .unwrap_or_else(|| panic!("{file}: no workload {name}"));
            let init = init_containers(w);
            assert_eq!(
                init[0]["name"], "floodgate",
                "{file}: Floodgate starts first"
            );
            assert_eq!(
                init[0]["restartPolicy"], "Always",
                "{file}: a native sidecar"
            );
            assert!(
                containers(w).iter().all(|c| c["name"] != "floodgate"),
                "{file}: only once"
            );
            let args = args_of(&init[0]);
            assert!(
                args.contains(&format!("--upstream=127.0.0.1:{app_port}")),
                "{file}: {args:?}"
            );
            assert!(
                notes.contains(&format!("port {app_port}; Floodgate listens")),
                "{notes}"
            );
        }
        for (name, target) in *services {
            let s = objs
                .iter()
                .find(|o| o["kind"] == "Service" && o["metadata"]["name"] == *name)
                .unwrap();
            for p in s["spec"]["ports"].as_sequence().unwrap() {
                assert_eq!(p["targetPort"], *target, "{file}: Service {name}");
            }
        }
    }
}

#[test]
fn named_ports_pass_to_floodgate_and_the_apps_probes_follow_the_rename() {
    let input = std::fs::read_to_string(fixture("deployment.yaml")).unwrap();
    let (out, _) = inject_ok(&input, &[]);
    let d = &objects(&out)[1];
    let fg = sidecar_of(d);
    assert_eq!(fg["ports"][0]["name"], "http");
    assert_eq!(fg["ports"][0]["containerPort"], 15080);
    let cs = containers(d);
    assert_eq!(cs[0]["ports"][0]["name"], "app-http");
    assert_eq!(cs[0]["ports"][0]["containerPort"], 8080);
    assert_eq!(cs[0]["readinessProbe"]["httpGet"]["port"], "app-http");
    assert_eq!(cs[0]["livenessProbe"]["tcpSocket"]["port"], "app-http");
    // YAML 1.1 values Kubernetes reads survive: octal modes, `yes` strings.
    assert!(out.contains("defaultMode: 0440\n"), "{out}");
    assert!(out.contains("value: \"yes\"\n"), "{out}");
    // Documents it did not change are there byte for byte, comments included.
    let configmap = input.split("---\n").next().unwrap();
    assert!(out.starts_with(configmap));
    let ingress = input.rsplit("---\n").next().unwrap();
    assert!(out.ends_with(ingress));
}

#[test]
fn injecting_twice_changes_nothing() {
    for (file, flags, _, _) in SHAPES {
        let input = std::fs::read_to_string(fixture(file)).unwrap();
        let (once, _) = inject_ok(&input, flags);
        let (twice, notes) = inject_ok(&once, flags);
        assert_eq!(twice, once, "{file}");
        assert!(
            notes.contains("already has the `floodgate` container"),
            "{notes}"
        );
    }
}

#[test]
fn opted_out_workloads_are_left_alone() {
    let input = std::fs::read_to_string(fixture("cronjob.yaml")).unwrap();
    let (out, notes) = inject_ok(&input, &[]);
    let job = input.split("---\n").nth(1).unwrap();
    assert!(out.ends_with(job), "{out}");
    assert!(
        notes.contains("Job/migrate: skipped (floodgate.io/inject: disabled)"),
        "{notes}"
    );
}

#[test]
fn what_cannot_be_injected_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("two-ports.yaml"),
        "kind: Pod\napiVersion: v1\nmetadata: {name: p}\nspec:\n  containers:\n  - name: app\n    image: a\n    ports: [{name: api, containerPort: 7000}, {name: admin, containerPort: 7001}]\n",
    )
    .unwrap();
    let read = |file: &str| {
        std::fs::read_to_string(dir.path().join(file))
            .or_else(|_| std::fs::read_to_string(fixture(file)))
            .unwrap()
    };
    for (file, flags, want) in [
        ("refuse-no-ports.yaml", &[][..], "document 1 (Deployment/worker): no container declares a containerPort, so there is no port to put Floodgate in front of: add the app's port to its `ports`, or pass --upstream-port N"),
        ("refuse-host-network.yaml", &[], "document 1 (Pod/node-agent): uses `hostNetwork: true`"),
        ("refuse-two-apps.yaml", &[], "several containers have ports (front, back); say which is the app with --container NAME"),
        ("deployment.yaml", &["--listen-port", "8080"], "document 2 (Deployment/web): port 8080 is already used by container `web`; give Floodgate another with --listen-port"),
        ("two-ports.yaml", &["--ports", "api,web"], "--ports: container `app` has no port named `web` (its ports: api 7000, admin 7001)"),
        ("two-ports.yaml", &["--skip-ports", "7002"], "--skip-ports: container `app` has no port `7002`"),
        ("two-ports.yaml", &["--skip-ports", "api,admin"], "container `app` has no port left for Floodgate to front (`api` (7000): --skip-ports; `admin` (7001): --skip-ports); choose with --ports"),
        ("pod.yaml", &["--container", "sidecar"], "--container `sidecar` is not one of its containers (log-shipper, app)"),
    ] {
        let (code, out, err) = inject(&read(file), flags);
        assert_eq!(code, 5, "{file}: {err}");
        assert!(out.is_empty(), "{file}: nothing written on a refusal");
        assert!(err.contains(want), "{file}: {err}");
    }
    // A workload with no ports can still be injected when the port is given.
    let input = std::fs::read_to_string(fixture("refuse-no-ports.yaml")).unwrap();
    let (out, _) = inject_ok(&input, &["--upstream-port", "8000"]);
    assert!(out.contains("--upstream=127.0.0.1:8000"), "{out}");
    let (code, _, err) = inject("a: [unclosed\n", &[]);
    assert_eq!(code, 5);
    assert!(err.contains("document 1: line"), "{err}");
}

fn tool(name: &str) -> Command {
    let probe = Command::new(name).arg("--help").output();
    assert!(
        probe.is_ok(),
        "`{name}` not found: run scripts/test.sh, which installs it"
    );
    Command::new(name)
}

/// `kubernetes-validate --strict` on a YAML stream (List items as their own documents; the
/// validator has no schema for `List`). Returns its report; fails on any error. Documents of
/// kinds without a Kubernetes schema (the Prometheus Operator's PodMonitor) are only allowed
/// to be warned about.
pub(crate) fn validate_k8s(what: &str, text: &str) -> String {
    // Written back only when there is a List to unpack: serde_yaml writes YAML 1.2, and a
    // string like "yes" would come out as a YAML 1.1 bool to the validator.
    let mut flat = String::new();
    if docs(text).iter().any(|d| d["kind"] == "List") {
        for o in objects(text) {
            flat.push_str("---\n");
            flat.push_str(&serde_yaml::to_string(&o).unwrap());
        }
    } else {
        flat.push_str(text);
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("manifests.yaml");
    std::fs::write(&file, &flat).unwrap();
    let mut report = String::new();
    // The newest schemas the validator has, and an older cluster's.
    for version in ["1.37.0", "1.29.0"] {
        let out = tool("kubernetes-validate")
            .args(["--strict", "-k", version])
            .arg(&file)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "{what} (k8s {version}):\n{text}\n{flat}"
        );
        // CRDs have no schema there: the Prometheus Operator's PodMonitor, cert-manager's
        // Certificate and Issuer (the injector's).
        for line in text.lines().filter(|l| l.starts_with("WARN")) {
            assert!(
                ["kind PodMonitor ", "kind Certificate ", "kind Issuer "]
                    .iter()
                    .any(|k| line.contains(k)),
                "{what}: {line}"
            );
        }
        report.push_str(&text);
    }
    report
}

#[test]
fn injector_output_passes_the_kubernetes_schemas() {
    for (file, flags, workloads, _) in SHAPES {
        let input = std::fs::read_to_string(fixture(file)).unwrap();
        let (out, _) = inject_ok(&input, flags);
        let report = validate_k8s(file, &out);
        for (name, _) in *workloads {
            assert!(
                report.contains(&format!("/{name} against version 1.37")),
                "{report}"
            );
        }
    }
}

#[test]
fn a_broken_manifest_is_caught_by_the_validator() {
    // The check above can fail: the same output with one wrong type does.
    let input = std::fs::read_to_string(fixture("pod.yaml")).unwrap();
    let (out, _) = inject_ok(&input, &[]);
    let broken = out.replace("containerPort: 15080", "containerPort: fifteen");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.yaml"), broken).unwrap();
    let out = tool("kubernetes-validate")
        .arg("--strict")
        .arg(dir.path().join("m.yaml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("'fifteen' is not of type 'integer'"));
}

pub(crate) fn kustomize(dir: &str) -> String {
    run_ok(tool("kustomize").arg("build").arg(repo(dir)))
}

/// The scaling runbook's `hpa-config.yaml`, as the runbook gives it (the runbook is not in this
/// repository).
const RUNBOOK_HPA: &str = r#"
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: api-server
  namespace: production
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: api-server
  minReplicas: 3
  maxReplicas: 20
  metrics:
  - type: Resource
    resource:
      name: cpu
      target:
        type: Utilization
        averageUtilization: 70
  - type: Resource
    resource:
      name: memory
      target:
        type: Utilization
        averageUtilization: 80
  - type: Pods
    pods:
      metric:
        name: http_requests_per_second
      target:
        type: AverageValue
        averageValue: "1000"
  behavior:
    scaleDown:
      stabilizationWindowSeconds: 300
      policies:
      - type: Percent
        value: 50
        periodSeconds: 60
    scaleUp:
      stabilizationWindowSeconds: 60
      policies:
      - type: Percent
        value: 100
        periodSeconds: 30
      - type: Pods
        value: 5
        periodSeconds: 30
      selectPolicy: Max
"#;

#[test]
fn shipped_manifests_build_with_kustomize_and_pass_the_schemas() {
    let built = kustomize("deploy/kubernetes");
    let report = validate_k8s("deploy/kubernetes", &built);
    for kind in [
        "configmap/api-server-floodgate",
        "secret/api-server-floodgate-tokens",
        "deployment/api-server",
        "service/api-server",
        "poddisruptionbudget/api-server",
        "horizontalpodautoscaler/api-server",
    ] {
        assert!(
            report.contains(&format!("passed for resource {kind}")),
            "{report}"
        );
    }
    let objs = objects(&built);
    assert!(objs
        .iter()
        .all(|o| o["metadata"]["namespace"] == "production"));
    validate_k8s(
        "prometheus-adapter.yaml",
        &std::fs::read_to_string(repo("deploy/kubernetes/prometheus-adapter.yaml")).unwrap(),
    );

    // The HPA is the scaling runbook's ("HPA Configuration File"), to the letter.
    let want: Value = serde_yaml::from_str(RUNBOOK_HPA).unwrap();
    let hpa = objs
        .iter()
        .find(|o| o["kind"] == "HorizontalPodAutoscaler")
        .unwrap();
    assert_eq!(*hpa, want);

    // The PodMonitor scrapes what the injector labels and names.
    let pm = objs.iter().find(|o| o["kind"] == "PodMonitor").unwrap();
    let deployment = objs.iter().find(|o| o["kind"] == "Deployment").unwrap();
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (k, v) in pm["spec"]["selector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(&labels[k.as_str().unwrap()], v);
    }
    let port = &pm["spec"]["podMetricsEndpoints"][0]["port"];
    let fg = &sidecar_of(deployment);
    assert!(fg["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|p| &p["name"] == port));
}

#[test]
fn shipped_deployment_is_the_injectors_output() {
    let src = std::fs::read_to_string(repo("deploy/kubernetes/src/api-server.yaml")).unwrap();
    let (out, _) = inject_ok(
        &src,
        &[
            "--config-map",
            "api-server-floodgate",
            "--admin-secret",
            "api-server-floodgate-tokens",
        ],
    );
    let shipped = std::fs::read_to_string(repo("deploy/kubernetes/deployment.yaml")).unwrap();
    let body: String = shipped
        .split_inclusive('\n')
        .skip_while(|l| l.starts_with('#'))
        .collect();
    assert_eq!(
        body, out,
        "deploy/kubernetes/deployment.yaml is stale: regenerate it with the command at its top"
    );
}

#[test]
fn component_adds_the_same_sidecar_as_the_injector() {
    let built = kustomize("deploy/kubernetes/examples/component");
    validate_k8s("examples/component", &built);
    let objs = objects(&built);
    let d = objs.iter().find(|o| o["kind"] == "Deployment").unwrap();
    run_ok(
        Command::new(env!("CARGO_BIN_EXE_floodgate"))
            .arg("validate")
            .arg(repo("deploy/kubernetes/examples/component/floodgate.yaml")),
    );
    let from_component = init_containers(d)[0].clone();
    assert_eq!(from_component["name"], "floodgate");
    let env = from_component["env"].as_sequence().unwrap();
    assert!(env
        .iter()
        .any(|e| e["name"] == "FLOODGATE_UPSTREAM" && e["value"] == "127.0.0.1:3000"));

    // The injector on the same app, without the component.
    let app =
        std::fs::read_to_string(repo("deploy/kubernetes/examples/component/app.yaml")).unwrap();
    let (out, _) = inject_ok(&app, &[]);
    let injected = objects(&out)
        .into_iter()
        .find(|o| o["kind"] == "Deployment")
        .unwrap();
    let from_injector = sidecar_of(&injected);
    for field in [
        "restartPolicy",
        "image",
        "imagePullPolicy",
        "readinessProbe",
        "livenessProbe",
        "resources",
        "securityContext",
        "volumeMounts",
    ] {
        assert_eq!(from_component[field], from_injector[field], "{field}");
    }
    assert_eq!(
        from_component["ports"][1], from_injector["ports"][1],
        "metrics port"
    );
    let vols = |o: &Value| {
        pod_spec(o).unwrap()["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter(|v| v["name"].as_str().unwrap().starts_with("floodgate-"))
            .map(|v| {
                (
                    v["name"].clone(),
                    v.get("secret").or(v.get("emptyDir")).cloned(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(vols(d), vols(&injected));
    let meta = |o: &Value| o["spec"]["template"]["metadata"].clone();
    assert_eq!(meta(d)["annotations"], meta(&injected)["annotations"]);
    assert_eq!(meta(d)["labels"], meta(&injected)["labels"]);
}

/// The container the injector writes, run for real: its own arguments (config path and ports
/// moved into a temp dir and free ports), the shipped ConfigMap's config, tokens from files
/// like the Secret's. Traffic reaches the app and both probes answer 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_injected_container_runs_with_the_shipped_config() {
    let app = Upstream::start("app").await;
    let src = std::fs::read_to_string(repo("deploy/kubernetes/src/api-server.yaml"))
        .unwrap()
        .replace(
            "containerPort: 8080",
            &format!("containerPort: {}", app.port),
        );
    let injected = |port: u16, metrics_port: u16| {
        let (out, _) = inject_ok(
            &src,
            &[
                "--listen-port",
                &port.to_string(),
                "--metrics-port",
                &metrics_port.to_string(),
            ],
        );
        sidecar_of(&objects(&out)[0])
    };
    let fg_proc = Sidecar::start_retrying(|port, metrics_port| {
        let fg = injected(port, metrics_port);
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap().to_string();
        let cm: Value = serde_yaml::from_str(
            &std::fs::read_to_string(repo("deploy/kubernetes/configmap.yaml")).unwrap(),
        )
        .unwrap();
        let config = cm["data"]["floodgate.yaml"]
            .as_str()
            .unwrap()
            .replace("/etc/floodgate/", &format!("{root}/"));
        std::fs::create_dir_all(dir.path().join("config")).unwrap();
        std::fs::create_dir_all(dir.path().join("tokens")).unwrap();
        std::fs::write(dir.path().join("config/floodgate.yaml"), config).unwrap();
        std::fs::write(dir.path().join("tokens/operator.token"), "op-token\n").unwrap();
        std::fs::write(dir.path().join("tokens/viewer.token"), "view-token\n").unwrap();
        // The injected arguments, with the config moved into the temp dir and the pod-wide
        // 0.0.0.0 on loopback.
        let args: Vec<String> = args_of(&fg)
            .into_iter()
            .map(|a| {
                a.replace("/etc/floodgate/", &format!("{root}/"))
                    .replace("0.0.0.0:", "127.0.0.1:")
            })
            .collect();
        assert_eq!(args[0], "--config");
        (dir, PathBuf::from(&args[1]), args[2..].to_vec())
    })
    .await;
    let (port, metrics_port) = (fg_proc.port, fg_proc.metrics_port);
    let fg = injected(port, metrics_port);

    let (status, _, body) = http_get(port, "/api/orders").await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "hello from app\n"),
        "{}",
        fg_proc.log()
    );
    for probe in ["readinessProbe", "livenessProbe"] {
        let path = fg[probe]["httpGet"]["path"].as_str().unwrap();
        let (status, _, _) = http_get(metrics_port, path).await.unwrap();
        assert_eq!(status, 200, "{probe} {path}");
    }
    // The image's health check command answers the same.
    run_ok(Command::new(env!("CARGO_BIN_EXE_floodgate")).args([
        "health",
        "--addr",
        &format!("127.0.0.1:{metrics_port}"),
    ]));
    eventually(Duration::from_secs(5), "the access is counted", || async {
        fg_proc
            .metric("http_requests_total{method=\"GET\",route=\"api\",status=\"200\"}")
            .await
            == Some(1.0)
    })
    .await;
}

#[test]
fn inject_help_teaches_with_examples_and_exit_codes() {
    let out = Command::new(floodgatectl())
        .args(["inject", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for needed in [
        "floodgatectl inject -f deployment.yaml | kubectl apply -f -",
        "floodgatectl inject -f k8s/",
        "floodgate.io/inject: disabled",
        "Exit codes: 0 written, 2 input unreadable, 5 refused",
        "--upstream-port <N>",
        "--config-map <NAME>",
    ] {
        assert!(help.contains(needed), "`{needed}` missing from:\n{help}");
    }
    // The sidecar-connection flags are grouped away from inject's own.
    let options = help.split("Sidecar connection:").next().unwrap();
    assert!(!options.contains("--token-file"), "{help}");
}

#[test]
fn a_directory_is_read_as_one_stream_of_its_yaml_files() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["deployment.yaml", "statefulset.yaml"] {
        std::fs::copy(fixture(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(dir.path().join("README.md"), "not yaml: [").unwrap();
    let text = run_ok(
        Command::new(floodgatectl())
            .args(["inject", "-f"])
            .arg(dir.path()),
    );
    let kinds: Vec<String> = objects(&text)
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "ConfigMap/web-settings",
            "Deployment/web",
            "Service/web",
            "Ingress/web",
            "StatefulSet/ledger",
            "Service/ledger",
            "Service/ledger-public"
        ]
    );
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(floodgatectl())
        .args(["inject", "-f"])
        .arg(empty.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no .yaml or .yml files in it"));
}

#[test]
fn native_sidecar_is_the_default_and_classic_sidecar_keeps_a_plain_container() {
    let input = std::fs::read_to_string(fixture("deployment.yaml")).unwrap();
    let (native, _) = inject_ok(&input, &[]);
    // `--native-sidecar`, the default now, is still accepted and changes nothing.
    assert_eq!(inject_ok(&input, &["--native-sidecar"]).0, native);
    let d = &objects(&native)[1];
    let init = init_containers(d);
    assert_eq!(init[0]["name"], "floodgate");
    assert_eq!(init[0]["restartPolicy"], "Always");
    assert!(args_of(&init[0]).contains(&"--upstream=127.0.0.1:8080".to_string()));
    let names: Vec<String> = containers(d)
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["web"], "the app's containers are as they were");

    let (classic, _) = inject_ok(&input, &["--classic-sidecar"]);
    let d = &objects(&classic)[1];
    assert!(init_containers(d).is_empty());
    let cs = containers(d);
    assert_eq!(cs[0]["name"], "floodgate", "a classic sidecar goes first");
    assert!(cs[0].get("restartPolicy").is_none());
    assert_eq!(cs[1]["name"], "web");
    let (again, notes) = inject_ok(&classic, &[]);
    assert_eq!(again, classic, "a classic sidecar is recognised too");
    assert!(notes.contains("already has the `floodgate` container"));
    validate_k8s("classic sidecar", &classic);

    let (code, _, err) = inject(&input, &["--native-sidecar", "--classic-sidecar"]);
    assert_eq!(code, 2, "{err}");
}

/// `kubectl get -o json` output is YAML too: injected the same, written back as YAML.
#[test]
fn json_input_from_kubectl_is_injected_and_valid() {
    let list = docs(&std::fs::read_to_string(fixture("list.yaml")).unwrap()).remove(0);
    let json = serde_json::to_string_pretty(&list).unwrap();
    let (out, notes) = inject_ok(&json, &[]);
    assert!(
        notes.contains("Service/api: targetPort 3000 is now `http`"),
        "{notes}"
    );
    let objs = objects(&out);
    assert_eq!(init_containers(&objs[0])[0]["name"], "floodgate");
    assert_eq!(objs[1]["spec"]["ports"][0]["targetPort"], "http");
    validate_k8s("json input", &out);
    let (again, _) = inject_ok(&out, &[]);
    assert_eq!(again, out);
}

/// Issue 19's shape (tests/e2e/inject/every-port.yaml): HTTP, gRPC and a Prometheus-scraped
/// metrics port, exec probes, Services that target `http` and `grpc` by name. With defaults
/// both serving ports go through Floodgate, each on its own port under the app port's name,
/// and the metrics port is left direct and named on stderr.
#[test]
fn every_tcp_port_is_fronted_and_the_metrics_port_is_left_direct_and_listed() {
    let input = std::fs::read_to_string(fixture("every-port.yaml")).unwrap();
    let (out, notes) = inject_ok(&input, &[]);
    let objs = objects(&out);
    let fg = sidecar_of(&objs[0]);
    let ports: Vec<(String, u64)> = fg["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    let want = [("http", 15080), ("grpc", 15081), ("fg-metrics", 15090)];
    assert_eq!(
        ports,
        want.map(|(n, p)| (n.to_string(), p)),
        "Floodgate's ports take the app ports' names"
    );
    // Several ports: `--listener` values in FLOODGATE_LISTENERS, gRPC over h2c; no
    // one-listener flags.
    let args = args_of(&fg);
    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("--listen=") || a.starts_with("--upstream=")),
        "{args:?}"
    );
    assert_eq!(
        listeners_of(&fg),
        "http=0.0.0.0:15080,127.0.0.1:9898 grpc=0.0.0.0:15081,127.0.0.1:9999,h2c"
    );
    let app = &containers(&objs[0])[0];
    let app_ports: Vec<(&str, u64)> = app["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        app_ports,
        [
            ("app-http", 9898),
            ("http-metrics", 9797),
            ("app-grpc", 9999)
        ]
    );
    // The Services still target `http` and `grpc`: now Floodgate's.
    for svc in objs.iter().filter(|o| o["kind"] == "Service") {
        for p in svc["spec"]["ports"].as_sequence().unwrap() {
            assert!(["http", "grpc"].contains(&p["targetPort"].as_str().unwrap()));
        }
    }
    assert_eq!(objs[1], docs(&input)[1], "Services by name are not touched");
    assert!(
        notes.contains(
            "port `http-metrics` (9797) of container `podinfod` bypasses Floodgate: a metrics port (its name); front it with --ports"
        ),
        "{notes}"
    );
    assert!(
        notes.contains("a numeric targetPort 9999 would bypass it); gRPC: upstream protocol h2c"),
        "{notes}"
    );
    validate_k8s("every-port.yaml", &out);
    let (twice, again) = inject_ok(&out, &[]);
    assert_eq!(twice, out, "idempotent");
    assert!(
        again.contains("already has the `floodgate` container"),
        "{again}"
    );

    // --ports chooses exactly; --skip-ports leaves some out; either way what bypasses is named.
    for (flags, reason) in [
        (&["--ports", "http"][..], "not chosen by --ports"),
        (&["--skip-ports", "grpc"], "--skip-ports"),
    ] {
        let (out, notes) = inject_ok(&input, flags);
        let fg = sidecar_of(&objects(&out)[0]);
        let args = args_of(&fg);
        assert!(
            args.contains(&"--listen=0.0.0.0:15080".to_string()),
            "{args:?}"
        );
        assert!(
            args.contains(&"--upstream=127.0.0.1:9898".to_string()),
            "{args:?}"
        );
        assert!(fg["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .all(|e| e["name"] != "FLOODGATE_LISTENERS"));
        assert!(
            notes.contains(&format!(
                "port `grpc` (9999) of container `podinfod` bypasses Floodgate: {reason}"
            )),
            "{flags:?}: {notes}"
        );
        assert!(notes.contains("port `http-metrics` (9797)"), "{notes}");
        validate_k8s("every-port.yaml --ports", &out);
    }
}

/// What the injector put in the sidecar's `FLOODGATE_LISTENERS`.
fn listeners_of(fg: &Value) -> String {
    let env = fg["env"].as_sequence().unwrap();
    env.iter()
        .find(|e| e["name"] == "FLOODGATE_LISTENERS")
        .unwrap_or_else(|| panic!("no FLOODGATE_LISTENERS in {env:?}"))["value"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The sidecar as injected for several ports, really started: the shipped policy ConfigMap
/// and the injected `FLOODGATE_LISTENERS` (its ports moved to free ones, its app ports to real
/// upstreams). Both listeners come up, the HTTP one proxies, the gRPC one forwards as h2c.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_injected_listeners_start_the_sidecar_on_every_fronted_port() {
    let input = std::fs::read_to_string(fixture("every-port.yaml")).unwrap();
    let (out, _) = inject_ok(&input, &[]);
    let value = listeners_of(&sidecar_of(&objects(&out)[0]));
    assert_eq!(
        value,
        "http=0.0.0.0:15080,127.0.0.1:9898 grpc=0.0.0.0:15081,127.0.0.1:9999,h2c"
    );
    let (web, rpc) = (
        crate::support::Upstream::start("web").await,
        crate::support::Upstream::start("rpc").await,
    );
    let policy = repo("deploy/kubernetes/examples/component/floodgate.yaml");
    let grpc_port = std::sync::Mutex::new(0);
    let fg = crate::support::Sidecar::start_retrying_env(|port, metrics_port| {
        let other = crate::support::free_port();
        *grpc_port.lock().unwrap() = other;
        let wired = value
            .replace("0.0.0.0:15080", &format!("127.0.0.1:{port}"))
            .replace("0.0.0.0:15081", &format!("127.0.0.1:{other}"))
            .replace("127.0.0.1:9898", &format!("127.0.0.1:{}", web.port))
            .replace("127.0.0.1:9999", &format!("127.0.0.1:{}", rpc.port));
        let dir = tempfile::tempdir().unwrap();
        let args = vec![format!("--metrics-listen=127.0.0.1:{metrics_port}")];
        // As the pod has it: in the environment, the values separated by spaces.
        let env = vec![("FLOODGATE_LISTENERS".to_string(), wired)];
        (dir, policy.clone(), args, env)
    })
    .await;
    let (status, _, body) = crate::support::http_get(fg.port, "/").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "hello from web\n"));
    let (_, _, st) = crate::support::http_get(fg.metrics_port, "/status")
        .await
        .unwrap();
    let st: serde_json::Value = serde_json::from_str(&st).unwrap();
    let names: Vec<&str> = st["listeners"]
        .as_array()
        .unwrap_or_else(|| panic!("no listeners in {st}"))
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["http", "grpc"], "{st}");
    let grpc = *grpc_port.lock().unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", grpc)).is_ok(),
        "the grpc listener accepts on {grpc}"
    );
}
