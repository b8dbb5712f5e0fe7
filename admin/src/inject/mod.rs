//! `floodgatectl inject`: adds the Floodgate sidecar to Kubernetes workloads.
//!
//! Reads a multi-document YAML stream (what `kubectl get -o yaml` or a manifests directory
//! gives), finds each workload's pod template (Deployment, StatefulSet, DaemonSet, ReplicaSet,
//! Job, CronJob, Pod, or those inside a `List`) and puts the `floodgate` container in front of
//! the app: Floodgate takes over the app port's *name* on a port of its own and forwards to the
//! app on `127.0.0.1`, so Services that target the port by name go through it unchanged, and
//! Services in the same input that target it by number are pointed at the name. The app itself
//! is not touched: it keeps listening where it did.
//!
//! Documents that are not changed are written back byte for byte (comments included);
//! injecting twice changes nothing. What cannot be done safely is refused with the document,
//! the workload and what to do.

pub mod admission;
mod pod;
mod ports;
mod sidecar;
pub mod yaml;

pub use sidecar::Options;
use yaml::{Node, YamlError};

/// The annotation that opts a workload out (`floodgate.io/inject: disabled`).
pub const INJECT_ANNOTATION: &str = "floodgate.io/inject";

/// The result: the new YAML stream and what the operator should know about it.
#[derive(Debug)]
pub struct Injected {
    /// The stream with the sidecar added.
    pub output: String,
    /// One line per workload (injected, skipped and why) and per warning.
    pub notes: Vec<String>,
}

/// Why nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// A document is not YAML the injector can rewrite.
    #[error("document {doc}: {source}")]
    Yaml {
        /// 1-based document number in the stream.
        doc: usize,
        /// The problem.
        #[source]
        source: YamlError,
    },
    /// A workload cannot be injected as it is.
    #[error("document {doc} ({workload}): {reason}")]
    Refused {
        /// 1-based document number.
        doc: usize,
        /// `Kind/name`.
        workload: String,
        /// What is wrong and what to do.
        reason: String,
    },
}

/// One document of the stream as it was written.
struct Chunk<'a> {
    /// The `---` line that opened it, if any.
    separator: Option<&'a str>,
    /// Its text to parse: after the separator line, with any content of that line first.
    body: String,
    /// Bytes at the start of `body` taken from the separator line (not written again).
    head: usize,
}

/// Splits a stream at its `---` lines, keeping every byte. Content on the separator line
/// itself (`--- {a: 1}`) belongs to the document.
fn split(input: &str) -> Vec<Chunk<'_>> {
    let mut chunks = vec![Chunk {
        separator: None,
        body: String::new(),
        head: 0,
    }];
    for line in input.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        let is_sep = bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t");
        match chunks.last_mut() {
            Some(last) if !is_sep => last.body.push_str(line),
            _ => {
                let rest = bare.get(3..).unwrap_or("").trim_start();
                let mut body = String::new();
                if !rest.is_empty() && !rest.starts_with('#') {
                    body.push_str(rest);
                    body.push('\n');
                }
                let head = body.len();
                chunks.push(Chunk {
                    separator: Some(line),
                    body,
                    head,
                });
            }
        }
    }
    chunks
}

/// `Kind/name` of a document, for messages.
fn label(doc: &Node) -> String {
    format!(
        "{}/{}",
        doc.get("kind").and_then(Node::as_str).unwrap_or("?"),
        doc.at(&["metadata", "name"])
            .and_then(Node::as_str)
            .unwrap_or("?")
    )
}

/// The objects of a document: a `List`'s items, or the document itself.
fn objects_mut(doc: &mut Node) -> Vec<&mut Node> {
    if doc.get("kind").and_then(Node::as_str) == Some("List") {
        match doc.get_mut("items") {
            Some(Node::Seq(items)) => items.iter_mut().collect(),
            _ => Vec::new(),
        }
    } else {
        vec![doc]
    }
}

/// Adds the sidecar to every workload of `input`.
pub fn inject(input: &str, opts: &Options) -> Result<Injected, InjectError> {
    let chunks = split(input);
    let mut docs: Vec<Option<Node>> = Vec::with_capacity(chunks.len());
    let mut notes = Vec::new();
    let mut changed = vec![false; chunks.len()];
    let mut wired: Vec<(Option<String>, pod::Wired)> = Vec::new();
    let mut number = 0;
    let mut numbers = Vec::with_capacity(chunks.len());
    for c in &chunks {
        let doc = Node::parse(&c.body).map_err(|source| InjectError::Yaml {
            doc: number + 1,
            source,
        })?;
        if doc.is_some() || c.separator.is_some() {
            number += 1;
        }
        numbers.push(number);
        docs.push(doc);
    }

    // Workloads first: the Services' pass needs their labels and ports.
    for (i, doc) in docs.iter_mut().enumerate() {
        let Some(doc) = doc else { continue };
        for obj in objects_mut(doc) {
            let (name, namespace) = (label(obj), pod::namespace(obj));
            let wiring = pod::inject_workload(obj, opts, &mut notes).map_err(|reason| {
                InjectError::Refused {
                    doc: numbers[i],
                    workload: name,
                    reason,
                }
            })?;
            if let pod::Outcome::Injected(w) = wiring {
                changed[i] = true;
                wired.push((namespace, w));
            }
        }
    }

    // Then the Services that select an injected pod.
    for (i, doc) in docs.iter_mut().enumerate() {
        let Some(doc) = doc else { continue };
        for svc in objects_mut(doc) {
            if svc.get("kind").and_then(Node::as_str) == Some("Service")
                && pod::retarget_service(svc, &wired, &mut notes)
            {
                changed[i] = true;
            }
        }
    }

    if let (Some(port), false) = (opts.admin_port, wired.is_empty()) {
        // The sidecar refuses a non-loopback admin address without TLS (tokens are bearer
        // secrets); say so here rather than in a crash-looping pod's log.
        notes.push(format!(
            "--admin-port {port} puts the admin plane on the pod IP: the config must set \
             admin.tls (or admin.allow_insecure: true), or floodgate refuses to start; without \
             --admin-port it stays on the config's admin.listen (loopback, reach it with \
             kubectl port-forward)"
        ));
    }

    let mut output = String::with_capacity(input.len() + 2048);
    for ((chunk, doc), changed) in chunks.iter().zip(&docs).zip(&changed) {
        match (doc, changed) {
            (Some(doc), true) => {
                if chunk.separator.is_some() {
                    output.push_str("---\n");
                }
                if chunk.body.lines().any(|l| l.trim_start().starts_with('#')) {
                    notes.push(format!(
                        "{}: comments in this document are not kept in the rewritten YAML",
                        label(doc)
                    ));
                }
                output.push_str(&doc.to_yaml());
            }
            _ => {
                output.push_str(chunk.separator.unwrap_or(""));
                output.push_str(&chunk.body[chunk.head..]);
            }
        }
    }
    Ok(Injected { output, notes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_every_byte() {
        let s = "# head\na: 1\n---\nb: 2\n--- # c\nc: 3\n---\n";
        let chunks = split(s);
        let back: String = chunks
            .iter()
            .map(|c| format!("{}{}", c.separator.unwrap_or(""), &c.body[c.head..]))
            .collect();
        assert_eq!(back, s);
        assert_eq!(chunks.len(), 4);
        assert_eq!(chunks[2].body, "c: 3\n");
    }

    const DEPLOY: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: a}\nspec:\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n      - name: web\n        image: web\n        ports:\n        - containerPort: 8080\n";

    fn service(ns: &str) -> String {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: {ns}}}\nspec:\n  selector: {{app: web}}\n  ports:\n  - port: 80\n    targetPort: 8080\n")
    }

    #[test]
    fn a_stream_without_workloads_comes_back_byte_for_byte() {
        let text = "# only config\r\napiVersion: v1\r\nkind: ConfigMap\r\nmetadata: {name: x}\r\n--- {kind: Secret, apiVersion: v1, metadata: {name: y}}\r\n---\r\n# trailing comment\r\n";
        let out = inject(text, &Options::default()).expect("ok");
        assert_eq!(out.output, text);
        assert!(out.notes.is_empty());
    }

    #[test]
    fn only_services_in_the_workloads_namespace_are_repointed() {
        let text = format!("{DEPLOY}---\n{}---\n{}", service("a"), service("b"));
        let out = inject(&text, &Options::default()).expect("ok").output;
        let docs: Vec<&str> = out.split("---\n").collect();
        assert!(docs[1].contains("targetPort: http\n"), "{out}");
        assert_eq!(
            docs[2],
            service("b"),
            "another namespace's Service is not touched"
        );
    }

    #[test]
    fn opting_out_on_the_pod_template_skips_too() {
        let text = DEPLOY.replace(
            "      labels: {app: web}\n",
            "      labels: {app: web}\n      annotations: {floodgate.io/inject: disabled}\n",
        );
        let out = inject(&text, &Options::default()).expect("ok");
        assert_eq!(out.output, text);
        assert_eq!(
            out.notes,
            ["Deployment/web: skipped (floodgate.io/inject: disabled)"]
        );
    }

    #[test]
    fn the_admin_port_and_no_secret_are_options() {
        let opts = Options {
            admin_port: Some(15901),
            admin_secret: None,
            ..Options::default()
        };
        let done = inject(DEPLOY, &opts).expect("ok");
        let out = done.output;
        assert!(
            out.contains("- \"--admin-listen=0.0.0.0:15901\"\n"),
            "{out}"
        );
        // On the pod IP the sidecar needs admin.tls: the operator is told before the pod is.
        assert!(
            done.notes
                .iter()
                .any(|n| n.starts_with("--admin-port 15901 puts the admin plane on the pod IP: the config must set admin.tls")),
            "{:?}",
            done.notes
        );
        assert!(out.contains("name: fg-admin\n"), "{out}");
        assert!(!out.contains("floodgate-admin-tokens"), "{out}");
    }

    #[test]
    fn a_named_container_without_ports_needs_the_port() {
        let text = DEPLOY.replace(
            "      - name: web\n",
            "      - name: shipper\n        image: s\n      - name: web\n",
        );
        let text = text.replace("        ports:\n        - containerPort: 8080\n", "");
        let opts = Options {
            container: Some("shipper".into()),
            ..Options::default()
        };
        let e = inject(&text, &opts).expect_err("refused").to_string();
        assert!(
            e.contains("container `shipper` declares no containerPort; say which port"),
            "{e}"
        );
        let opts = Options {
            upstream_port: Some(9000),
            ..opts
        };
        let out = inject(&text, &opts).expect("ok").output;
        assert!(out.contains("--upstream=127.0.0.1:9000"), "{out}");
    }

    #[test]
    fn content_on_the_separator_line_is_the_documents() {
        let chunks = split("--- {kind: Pod}\n");
        assert_eq!(chunks[1].body, "{kind: Pod}\n");
    }
}
