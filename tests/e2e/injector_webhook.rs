//! `floodgatectl inject serve`, the admission webhook, over real HTTPS with a certificate
//! made by `floodgatectl inject serve-cert`: AdmissionReviews built from the pod templates
//! of tests/e2e/inject/ and from `kubectl get -o json`-style pods; the JSON Patch applied
//! gives what `floodgatectl inject` writes for the same pod, passes the Kubernetes schemas
//! and is idempotent; opt-out, malformed reviews, pods it cannot inject, metrics, and a
//! certificate renewed on disk.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use rustls::pki_types::pem::PemObject as _;
use serde_json::{json, Value};

use crate::inject::{
    containers, docs, fixture, inject_ok, kustomize, objects, pod_spec, sidecar_of, validate_k8s,
};
use crate::support::*;

/// A running webhook and the directory of its certificate.
struct Webhook {
    child: Child,
    addr: std::net::SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve_cert(dir: &Path) -> String {
    run_ok(
        Command::new(floodgatectl())
            .args([
                "inject",
                "serve-cert",
                "--extra-name",
                "127.0.0.1",
                "--out-dir",
            ])
            .arg(dir),
    )
}

impl Webhook {
    /// Makes a certificate, starts the webhook on a port the OS picks and reads which.
    fn start() -> Webhook {
        let dir = tempfile::tempdir().unwrap();
        let ca = serve_cert(dir.path());
        let pem = std::fs::read(dir.path().join("tls.crt")).unwrap();
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(ca.trim())
                .unwrap(),
            pem,
            "the caBundle is the certificate"
        );
        let mut child = Command::new(floodgatectl())
            .args(["inject", "serve", "--listen", "127.0.0.1:0", "--cert"])
            .arg(dir.path().join("tls.crt"))
            .arg("--key")
            .arg(dir.path().join("tls.key"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let addr = first
            .split("https://")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in {first:?}"))
            .parse()
            .unwrap();
        // Keep draining its stderr so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Webhook { child, addr, dir }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }

    /// One HTTPS request trusting `ca` only: (status, body).
    async fn call(
        &self,
        ca: &Path,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, String), String> {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .body(Full::new(bytes::Bytes::from(body)))
            .unwrap();
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    async fn post(&self, body: Vec<u8>) -> (u16, String) {
        self.call(&self.ca(), "POST", "/mutate", body)
            .await
            .unwrap()
    }

    /// The response of an AdmissionReview for `pod`.
    async fn review(&self, pod: &Value) -> Value {
        let (status, body) = self
            .post(serde_json::to_vec(&review_of(pod)).unwrap())
            .await;
        assert_eq!(status, 200, "{body}");
        let review: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(review["kind"], "AdmissionReview");
        let response = review["response"].clone();
        assert_eq!(response["uid"], "3b6f0a4e-7c1d-4e2a-9f00-000000000001");
        assert_eq!(response["allowed"], true, "it never blocks a pod");
        response
    }
}

fn review_of(pod: &Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "3b6f0a4e-7c1d-4e2a-9f00-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": pod["metadata"]["namespace"].as_str().unwrap_or("default"),
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

/// The patch of a response applied to `pod`.
fn patched(pod: &Value, response: &Value) -> Value {
    assert_eq!(response["patchType"], "JSONPatch", "{response}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut out = pod.clone();
    json_patch::patch(&mut out, &patch).unwrap();
    out
}

/// `pod` with the name the API server gives a `generateName` (the schema wants one).
fn named(pod: &Value) -> Value {
    let mut pod = pod.clone();
    if pod["metadata"].get("name").is_none() {
        let generated = format!("{}x7k2p", pod["metadata"]["generateName"].as_str().unwrap());
        pod["metadata"]["name"] = json!(generated);
    }
    pod
}

/// The Pod a workload's template makes (what the API server sends the webhook).
fn pod_of(workload: &serde_yaml::Value) -> Value {
    let yaml = |v: &serde_yaml::Value| serde_json::to_value(v).unwrap();
    let meta = match workload["kind"].as_str().unwrap() {
        "Pod" => workload["metadata"].clone(),
        "CronJob" => workload["spec"]["jobTemplate"]["spec"]["template"]["metadata"].clone(),
        _ => workload["spec"]["template"]["metadata"].clone(),
    };
    let mut meta = yaml(&meta);
    if meta.is_null() {
        meta = json!({});
    }
    let name = workload["metadata"]["name"].as_str().unwrap();
    meta["generateName"] = json!(format!("{name}-"));
    if let Some(ns) = workload["metadata"]["namespace"].as_str() {
        meta["namespace"] = json!(ns);
    }
    let mut spec = yaml(pod_spec(workload).unwrap());
    octal_modes(&mut spec);
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": spec,
    })
}

/// serde_yaml reads by YAML 1.2, where `0440` is a string; the API server (YAML 1.1) reads
/// the number 288 and sends that.
fn octal_modes(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                match (k.as_str(), v.as_str().map(|s| u64::from_str_radix(s, 8))) {
                    ("defaultMode" | "mode", Some(Ok(n))) => *v = json!(n),
                    _ => octal_modes(v),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(octal_modes),
        _ => {}
    }
}

/// What `floodgatectl inject` writes for `pod`, as JSON.
fn cli(pod: &Value) -> Value {
    let (out, _) = inject_ok(&serde_json::to_string_pretty(pod).unwrap(), &[]);
    let docs = docs(&out);
    assert_eq!(docs.len(), 1);
    serde_json::to_value(&docs[0]).unwrap()
}

/// The injectable workloads of the fixtures (as the webhook's defaults see them).
fn workload_pods() -> Vec<(String, Value)> {
    let mut pods = Vec::new();
    for file in [
        "deployment.yaml",
        "statefulset.yaml",
        "cronjob.yaml",
        "pod.yaml",
        "list.yaml",
        "every-port.yaml",
    ] {
        let text = std::fs::read_to_string(fixture(file)).unwrap();
        for o in objects(&text) {
            let opted_out = o["spec"]["template"]["metadata"]["annotations"]["floodgate.io/inject"]
                == "disabled"
                || o["metadata"]["annotations"]["floodgate.io/inject"] == "disabled";
            if pod_spec(&o).is_some() && o["kind"] != "Service" && !opted_out {
                pods.push((
                    format!("{file} {}", o["metadata"]["name"].as_str().unwrap()),
                    pod_of(&o),
                ));
            }
        }
    }
    pods
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhooks_patch_is_what_the_cli_writes_valid_and_idempotent() {
    let hook = Webhook::start();
    let pods = workload_pods();
    assert!(pods.len() >= 6, "{}", pods.len());
    let mut all = String::new();
    for (what, pod) in &pods {
        let response = hook.review(pod).await;
        let after = patched(pod, &response);
        assert_eq!(after, cli(pod), "{what}: the webhook's pod is the CLI's");
        assert_eq!(
            after["spec"]["initContainers"][0]["name"], "floodgate",
            "{what}"
        );
        // Reviewed again (reinvocationPolicy: IfNeeded): nothing more to do.
        let again = hook.review(&after).await;
        assert!(again.get("patch").is_none(), "{what}: {again}");
        all.push_str("---\n");
        // As JSON: serde_yaml would write `yes` bare, a YAML 1.1 bool to the validator.
        all.push_str(&serde_json::to_string(&named(&after)).unwrap());
        all.push('\n');
    }
    let report = validate_k8s("webhook pods", &all);
    assert!(report.contains("against version 1.37"), "{report}");

    // The bypassing metrics port is named to whoever creates the pod.
    let every = &pods
        .iter()
        .find(|(w, _)| w.starts_with("every-port"))
        .unwrap()
        .1;
    let response = hook.review(every).await;
    let warnings = response["warnings"].to_string();
    assert!(
        warnings.contains("port `http-metrics` (9797) of container `podinfod` bypasses Floodgate"),
        "{warnings}"
    );
}

/// A pod as `kubectl get pod -o json` shows it, with what the API server fills in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubectl_style_pod_is_patched_like_the_cli_output() {
    let hook = Webhook::start();
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "creationTimestamp": null,
            "generateName": "checkout-5f7d8c9b4-",
            "labels": {"app": "checkout", "pod-template-hash": "5f7d8c9b4"},
            "namespace": "shop",
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "checkout-5f7d8c9b4",
                "uid": "0d4c1f7e-2b1a-4c3d-8e9f-000000000002",
                "controller": true, "blockOwnerDeletion": true
            }]
        },
        "spec": {
            "containers": [{
                "name": "checkout",
                "image": "registry.example.com/checkout:3.2.1",
                "imagePullPolicy": "IfNotPresent",
                "ports": [
                    {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                    {"name": "grpc", "containerPort": 9090, "protocol": "TCP"},
                    {"name": "metrics", "containerPort": 9100, "protocol": "TCP"}
                ],
                "readinessProbe": {
                    "httpGet": {"path": "/ready", "port": "http", "scheme": "HTTP"},
                    "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3,
                    "timeoutSeconds": 1
                },
                "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "volumeMounts": [{
                    "name": "kube-api-access-x7k2p",
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                    "readOnly": true
                }]
            }],
            "dnsPolicy": "ClusterFirst",
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority",
            "priority": 0,
            "restartPolicy": "Always",
            "schedulerName": "default-scheduler",
            "securityContext": {},
            "serviceAccountName": "default",
            "terminationGracePeriodSeconds": 30,
            "tolerations": [{
                "effect": "NoExecute", "key": "node.kubernetes.io/not-ready",
                "operator": "Exists", "tolerationSeconds": 300
            }],
            "volumes": [{
                "name": "kube-api-access-x7k2p",
                "projected": {"defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}
                ]}
            }]
        },
        "status": {"phase": "Pending", "qosClass": "Burstable"}
    });
    let response = hook.review(&pod).await;
    let after = patched(&pod, &response);
    assert_eq!(after, cli(&pod));
    let fg = &after["spec"]["initContainers"][0];
    let listeners = fg["env"][1]["value"].as_str().unwrap();
    assert!(
        listeners
            .split(' ')
            .nth(1)
            .is_some_and(|g| g.ends_with(",h2c")),
        "the gRPC port's listener speaks h2c to the app: {listeners}"
    );
    assert_eq!(
        after["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"],
        "app-http"
    );
    assert_eq!(after["status"], pod["status"], "the rest is untouched");
    validate_k8s(
        "kubectl-style pod",
        &serde_json::to_string(&named(&after)).unwrap(),
    );
    assert!(hook.review(&after).await.get("patch").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opt_out_refusals_malformed_reviews_health_and_metrics() {
    let hook = Webhook::start();
    let mut pod = workload_pods().remove(0).1;
    pod["metadata"]["annotations"]["floodgate.io/inject"] = json!("disabled");
    let response = hook.review(&pod).await;
    assert!(response.get("patch").is_none(), "{response}");

    // What the CLI refuses is allowed unchanged, with a warning that says why.
    for (file, why) in [
        ("refuse-host-network.yaml", "uses `hostNetwork: true`"),
        (
            "refuse-no-ports.yaml",
            "no container declares a containerPort",
        ),
        (
            "refuse-two-apps.yaml",
            "several containers have ports (front, back)",
        ),
    ] {
        let text = std::fs::read_to_string(fixture(file)).unwrap();
        let workload = objects(&text).remove(0);
        let response = hook.review(&pod_of(&workload)).await;
        assert!(response.get("patch").is_none(), "{file}: {response}");
        let w = response["warnings"][0].as_str().unwrap_or_default();
        assert!(
            w.starts_with("floodgate: Pod ") && w.contains("not injected: "),
            "{file}: {w}"
        );
        assert!(w.contains(why), "{file}: {w}");
    }

    for body in [
        &b"{not json"[..],
        br#"{"apiVersion":"v1","kind":"Pod"}"#,
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x"}}"#,
    ] {
        let (status, text) = hook.post(body.to_vec()).await;
        assert_eq!(status, 400, "{text}");
    }
    for (path, want) in [("/healthz", "ok\n"), ("/readyz", "ready\n")] {
        let got = hook
            .call(&hook.ca(), "GET", path, Vec::new())
            .await
            .unwrap();
        assert_eq!(got, (200, want.to_string()), "{path}");
    }
    let (status, metrics) = hook
        .call(&hook.ca(), "GET", "/metrics", Vec::new())
        .await
        .unwrap();
    assert_eq!(status, 200);
    for line in [
        "floodgate_injector_pods_skipped_total{reason=\"opted_out\"} 1",
        "floodgate_injector_pods_skipped_total{reason=\"refused\"} 3",
        "floodgate_injector_pods_injected_total 0",
        "floodgate_injector_malformed_reviews_total 3",
        "floodgate_injector_review_duration_seconds_count 4",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let hook = Webhook::start();
    let old = tempfile::tempdir().unwrap();
    std::fs::copy(hook.ca(), old.path().join("old.crt")).unwrap();
    assert_eq!(
        hook.call(&hook.ca(), "GET", "/healthz", Vec::new())
            .await
            .unwrap()
            .0,
        200
    );
    // A new pair written where the old one was (as a renewed Secret is).
    serve_cert(hook.dir.path());
    let new_ca = hook.ca();
    eventually(
        Duration::from_secs(10),
        "the new certificate is served",
        || async {
            hook.call(&new_ca, "GET", "/healthz", Vec::new())
                .await
                .is_ok()
        },
    )
    .await;
    let err = hook
        .call(&old.path().join("old.crt"), "GET", "/healthz", Vec::new())
        .await
        .expect_err("the old certificate is no longer served");
    assert!(err.contains("certificate"), "{err}");
}

/// deploy/kubernetes/injector (with cert-manager) and its base/ (without): the Kubernetes
/// schemas pass for everything they know (cert-manager's Certificate and Issuer are CRDs the
/// validator has no schema for: they are checked here against the Deployment and the webhook
/// instead), and the pieces name each other consistently.
#[test]
fn the_injector_manifests_pass_the_schemas_and_agree_with_each_other() {
    let built = kustomize("deploy/kubernetes/injector");
    let report = validate_k8s("deploy/kubernetes/injector", &built);
    for kind in [
        "namespace/floodgate-system",
        "service/floodgate-injector",
        "deployment/floodgate-injector",
        "poddisruptionbudget/floodgate-injector",
        "mutatingwebhookconfiguration/floodgate-injector",
    ] {
        assert!(
            report.contains(&format!("passed for resource {kind} against version 1.37")),
            "{report}"
        );
        assert!(
            report.contains(&format!("passed for resource {kind} against version 1.29")),
            "{report}"
        );
    }
    let objs = objects(&built);
    let find = |kind: &str| {
        objs.iter()
            .find(|o| o["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
            .clone()
    };
    let (deploy, svc, hook, cert, pdb) = (
        find("Deployment"),
        find("Service"),
        find("MutatingWebhookConfiguration"),
        find("Certificate"),
        find("PodDisruptionBudget"),
    );
    assert_eq!(deploy["spec"]["replicas"], 2);
    let c = &containers(&deploy)[0];
    // The same image as the injector puts in pods.
    let (out, _) = inject_ok(&std::fs::read_to_string(fixture("pod.yaml")).unwrap(), &[]);
    assert_eq!(c["image"], sidecar_of(&objects(&out)[0])["image"]);
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(&args[..2], ["inject", "serve"]);
    let labels = &deploy["spec"]["template"]["metadata"]["labels"];
    for (k, v) in svc["spec"]["selector"].as_mapping().unwrap() {
        assert_eq!(&labels[k.as_str().unwrap()], v);
    }
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        deploy["spec"]["selector"]["matchLabels"]
    );
    let target = &svc["spec"]["ports"][0]["targetPort"];
    assert!(c["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|p| &p["name"] == target));

    let w = &hook["webhooks"][0];
    assert_eq!(w["failurePolicy"], "Ignore");
    assert_eq!(w["sideEffects"], "None");
    assert_eq!(w["reinvocationPolicy"], "IfNeeded");
    assert_eq!(
        w["admissionReviewVersions"],
        serde_yaml::from_str::<serde_yaml::Value>("[v1]").unwrap()
    );
    assert_eq!(
        w["namespaceSelector"]["matchLabels"]["floodgate.io/inject"],
        "enabled"
    );
    assert_eq!(w["rules"][0]["operations"][0], "CREATE");
    assert_eq!(w["rules"][0]["resources"][0], "pods");
    let to = &w["clientConfig"]["service"];
    assert_eq!(to["name"], svc["metadata"]["name"]);
    assert_eq!(to["namespace"], svc["metadata"]["namespace"]);
    assert_eq!(to["path"], "/mutate");
    assert_eq!(to["port"], svc["spec"]["ports"][0]["port"]);

    // cert-manager: the Secret the Deployment mounts, for the Service's name, injected into
    // the webhook's caBundle.
    let secret = pod_spec(&deploy).unwrap()["volumes"][0]["secret"]["secretName"].clone();
    assert_eq!(cert["spec"]["secretName"], secret);
    let dns = format!(
        "{}.{}.svc",
        svc["metadata"]["name"].as_str().unwrap(),
        svc["metadata"]["namespace"].as_str().unwrap()
    );
    assert!(cert["spec"]["dnsNames"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|d| d == dns.as_str()));
    assert_eq!(
        hook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        format!(
            "{}/{}",
            cert["metadata"]["namespace"].as_str().unwrap(),
            cert["metadata"]["name"].as_str().unwrap()
        )
    );
    let issuer = find("Issuer");
    assert_eq!(
        cert["spec"]["issuerRef"]["name"],
        issuer["metadata"]["name"]
    );

    // Without cert-manager: the same objects, no CRDs, no annotation.
    let base = kustomize("deploy/kubernetes/injector/base");
    validate_k8s("deploy/kubernetes/injector/base", &base);
    let base = objects(&base);
    assert!(base
        .iter()
        .all(|o| o["kind"] != "Certificate" && o["kind"] != "Issuer"));
    let hook = base
        .iter()
        .find(|o| o["kind"] == "MutatingWebhookConfiguration")
        .unwrap();
    assert!(hook["metadata"].get("annotations").is_none());
}
