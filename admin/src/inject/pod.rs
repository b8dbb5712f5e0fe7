//! Finding a workload's pod template, choosing the app's container and port, and putting the
//! sidecar in front of it; pointing Services that target the app port by number at Floodgate.

use super::sidecar::{self, Options, CONTAINER};
use super::yaml::Node;
use super::{label, INJECT_ANNOTATION};

/// What one injected pod template looks like afterwards, for the Services' pass.
pub struct Wired {
    /// `Kind/name`.
    pub workload: String,
    /// The pod template's labels.
    pub labels: Vec<(String, String)>,
    /// The app's port, which a Service may name by number.
    pub app_port: u16,
    /// Floodgate's port's name: the app port's former name, or `http`.
    pub port_name: String,
}

/// The metadata and pod spec paths of each kind that has a pod template.
fn template_paths(kind: &str) -> Option<(&'static [&'static str], &'static [&'static str])> {
    Some(match kind {
        "Pod" => (&["metadata"], &["spec"]),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => (
            &["spec", "template", "metadata"],
            &["spec", "template", "spec"],
        ),
        "CronJob" => (
            &["spec", "jobTemplate", "spec", "template", "metadata"],
            &["spec", "jobTemplate", "spec", "template", "spec"],
        ),
        _ => return None,
    })
}

/// The document's `metadata.namespace`.
pub fn namespace(doc: &Node) -> Option<String> {
    doc.at(&["metadata", "namespace"])
        .and_then(Node::as_str)
        .map(str::to_string)
}

fn opted_out(meta: Option<&Node>) -> bool {
    meta.and_then(|m| m.at(&["annotations", INJECT_ANNOTATION]))
        .and_then(Node::as_str)
        .is_some_and(|v| matches!(v, "disabled" | "false" | "off" | "no"))
}

/// A container's `ports` (empty when it declares none).
fn ports_of(container: &Node) -> &[Node] {
    container.get("ports").map(Node::items).unwrap_or_default()
}

/// A mapping of strings (labels, a selector) as pairs; other entries are left out.
fn string_pairs(node: Option<&Node>) -> Vec<(String, String)> {
    match node {
        Some(Node::Map(m)) => m
            .iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string())))
            .collect(),
        _ => Vec::new(),
    }
}

fn port_number(port: &Node) -> Option<u16> {
    port.get("containerPort")?.as_str()?.parse().ok()
}

fn port_name(port: &Node) -> Option<&str> {
    port.get("name").and_then(Node::as_str)
}

/// Every port name and number declared in the pod, with its container.
fn pod_ports(containers: &[Node]) -> Vec<(String, Option<String>, Option<u16>)> {
    containers
        .iter()
        .flat_map(|c| {
            let cname = c.get("name").and_then(Node::as_str).unwrap_or("?");
            ports_of(c).iter().map(move |p| {
                (
                    cname.to_string(),
                    port_name(p).map(str::to_string),
                    port_number(p),
                )
            })
        })
        .collect()
}

/// A valid port name (IANA service name: at most 15 of `a-z0-9-`, a letter, no `--`, no
/// leading or trailing `-`) for the app's renamed port, unused in the pod.
fn renamed(old: &str, taken: &[String]) -> String {
    let mut name: String = format!("app-{old}").chars().take(15).collect();
    while name.ends_with('-') {
        name.pop();
    }
    if name.contains("--") || taken.contains(&name) {
        name = "app-port".to_string();
        let mut n = 2;
        while taken.contains(&name) {
            name = format!("app-port-{n}");
            n += 1;
        }
    }
    name
}

/// Adds the sidecar to `doc` if it is a workload. `Ok(None)`: not a workload, opted out, or
/// already injected (with a note for the last two).
pub fn inject_workload(
    doc: &mut Node,
    opts: &Options,
    notes: &mut Vec<String>,
) -> Result<Option<Wired>, String> {
    let Some(kind) = doc.get("kind").and_then(Node::as_str) else {
        return Ok(None);
    };
    let Some((meta_path, spec_path)) = template_paths(kind) else {
        return Ok(None);
    };
    let workload = label(doc);
    if opted_out(doc.get("metadata")) || opted_out(doc.at(meta_path)) {
        notes.push(format!(
            "{workload}: skipped ({INJECT_ANNOTATION}: disabled)"
        ));
        return Ok(None);
    }
    let spec_where = spec_path.join(".");
    let spec = doc
        .at(spec_path)
        .ok_or_else(|| format!("no pod spec at `{spec_where}`; is this a complete {kind}?"))?;
    let containers = spec.get("containers").map(Node::items).unwrap_or_default();
    if containers.is_empty() {
        return Err(format!("`{spec_where}.containers` is empty"));
    }
    // One entry per container (indices are shared with `containers`).
    let names: Vec<&str> = containers
        .iter()
        .map(|c| c.get("name").and_then(Node::as_str).unwrap_or("?"))
        .collect();
    let init = spec
        .get("initContainers")
        .map(Node::items)
        .unwrap_or_default();
    if names.contains(&CONTAINER)
        || init
            .iter()
            .any(|c| c.get("name").and_then(Node::as_str) == Some(CONTAINER))
    {
        notes.push(format!(
            "{workload}: already has the `{CONTAINER}` container; left as it is"
        ));
        return Ok(None);
    }
    if spec.get("hostNetwork").and_then(Node::as_str) == Some("true") {
        return Err(
            "uses `hostNetwork: true`: Floodgate's ports would be the node's, and \
                    two such pods on one node would collide; inject does not support it"
                .into(),
        );
    }

    // The app container: named, or the one with the wanted port, or the only one with ports.
    let with_ports: Vec<usize> = (0..containers.len())
        .filter(|&i| !ports_of(&containers[i]).is_empty())
        .collect();
    let app = match (&opts.container, opts.upstream_port) {
        (Some(name), _) => names.iter().position(|n| n == name).ok_or_else(|| {
            format!("--container `{name}` is not one of its containers ({})", names.join(", "))
        })?,
        (None, Some(port)) => with_ports
            .iter()
            .copied()
            .find(|&i| ports_of(&containers[i]).iter().any(|p| port_number(p) == Some(port)))
            .or((containers.len() == 1).then_some(0))
            .ok_or_else(|| {
                format!(
                    "no container declares containerPort {port}; name the app's with --container NAME"
                )
            })?,
        (None, None) => match with_ports.as_slice() {
            [one] => *one,
            [] => {
                return Err("no container declares a containerPort, so there is no port to put \
                            Floodgate in front of: add the app's port to its `ports`, or pass \
                            --upstream-port N (and --container NAME if it has several containers)"
                    .into())
            }
            _ => {
                return Err(format!(
                    "several containers have ports ({}); say which is the app with --container NAME",
                    with_ports
                        .iter()
                        .map(|&i| names.get(i).copied().unwrap_or("?"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
        },
    };
    let app_name = names.get(app).copied().unwrap_or("?").to_string();
    let app_ports = ports_of(&containers[app]);

    // The app port: asked for, or the only one, or the one named `http`.
    let chosen: Option<usize> = match opts.upstream_port {
        Some(port) => app_ports.iter().position(|p| port_number(p) == Some(port)),
        None => match app_ports {
            [] => {
                return Err(format!(
                    "container `{app_name}` declares no containerPort; say which port the app \
                     listens on with --upstream-port N"
                ))
            }
            [_] => Some(0),
            _ => Some(
                app_ports
                    .iter()
                    .position(|p| port_name(p) == Some("http"))
                    .ok_or_else(|| {
                        format!(
                            "container `{app_name}` has several ports ({}); say which one Floodgate \
                             fronts with --upstream-port N",
                            app_ports
                                .iter()
                                .filter_map(port_number)
                                .map(|p| p.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    })?,
            ),
        },
    };
    let (app_port, old_name) = match (chosen, opts.upstream_port) {
        (Some(i), _) => {
            let p = &app_ports[i];
            if let Some(proto) = p.get("protocol").and_then(Node::as_str) {
                if proto != "TCP" {
                    return Err(format!(
                        "the app port is {proto}; Floodgate proxies HTTP and gRPC over TCP only"
                    ));
                }
            }
            let n = port_number(p).ok_or_else(|| {
                format!("container `{app_name}`'s port has no valid containerPort")
            })?;
            (n, port_name(p).map(str::to_string))
        }
        (None, Some(n)) => (n, None),
        (None, None) => return Err("no app port".into()),
    };

    let mut all_ports = pod_ports(containers);
    all_ports.extend(pod_ports(init));
    for (flag, mine) in [
        ("--listen-port", Some(opts.listen_port)),
        ("--metrics-port", Some(opts.metrics_port)),
        ("--admin-port", opts.admin_port),
    ] {
        let Some(mine) = mine else { continue };
        if let Some((c, _, _)) = all_ports.iter().find(|(_, _, n)| *n == Some(mine)) {
            return Err(format!(
                "port {mine} is already used by container `{c}`; give Floodgate another with {flag}"
            ));
        }
        if mine == app_port {
            return Err(format!(
                "Floodgate cannot listen on the app's own port {mine}; choose another {flag}"
            ));
        }
    }
    let taken: Vec<String> = all_ports.iter().filter_map(|(_, n, _)| n.clone()).collect();
    for fixed in [sidecar::METRICS_PORT_NAME, sidecar::ADMIN_PORT_NAME] {
        if taken.iter().any(|t| t == fixed) {
            return Err(format!(
                "a container already has a port named `{fixed}`, which Floodgate uses"
            ));
        }
    }
    let fg_port = match &old_name {
        Some(n) => n.clone(),
        None if taken.iter().any(|t| t == "http") => "fg-http".to_string(),
        None => "http".to_string(),
    };
    let volumes = sidecar::volumes(opts);
    let existing_volumes: Vec<&str> = spec
        .get("volumes")
        .map(Node::items)
        .unwrap_or_default()
        .iter()
        .filter_map(|v| v.get("name").and_then(Node::as_str))
        .collect();
    for v in &volumes {
        if let Some(n) = v.get("name").and_then(Node::as_str) {
            if existing_volumes.contains(&n) {
                return Err(format!(
                    "a volume named `{n}` exists already; Floodgate's volumes need that name"
                ));
            }
        }
    }

    // Checks done; change the document.
    let spec = doc
        .at_mut(spec_path)
        .ok_or_else(|| format!("no pod spec at `{spec_where}`"))?;
    if let Some(Node::Seq(containers)) = spec.get_mut("containers") {
        if let (Some(old), Some(Node::Seq(ports))) = (&old_name, containers[app].get_mut("ports")) {
            // The app's port gives its name to Floodgate's and takes a new one; the app's own
            // probes that named it follow.
            let new = renamed(old, &taken);
            for p in ports.iter_mut() {
                if port_name(p) == Some(old.as_str()) {
                    p.set("name", Node::string(new.clone()));
                }
            }
            rename_probe_ports(&mut containers[app], old, &new);
            notes.push(format!(
                "{workload}: container `{app_name}`'s port `{old}` is now `{new}`; `{old}` is Floodgate's"
            ));
        }
        if !opts.native_sidecar {
            containers.insert(0, sidecar::container(opts, app_port, &fg_port));
        }
    }
    if opts.native_sidecar {
        // A Kubernetes native sidecar (1.29+): started, and ready, before the app; stopped
        // after it, so the app never sees traffic without Floodgate in front, and Floodgate
        // drains while the app still answers.
        let mut c = sidecar::container(opts, app_port, &fg_port);
        c.set("restartPolicy", Node::string("Always"));
        match spec.entry("initContainers", || Node::Seq(Vec::new())) {
            Some(Node::Seq(v)) => v.insert(0, c),
            _ => return Err("`initContainers` is not a list".into()),
        }
    }
    match spec.entry("volumes", || Node::Seq(Vec::new())) {
        Some(Node::Seq(v)) => v.extend(volumes),
        _ => return Err("`volumes` is not a list".into()),
    }

    // Scrape annotations on the pod, unless the app has its own.
    let meta = ensure_path(doc, meta_path)?;
    let annotations = meta
        .entry("annotations", || Node::Map(Vec::new()))
        .ok_or("`metadata` is not a mapping")?;
    if let Some(port) = annotations.get("prometheus.io/port").and_then(Node::as_str) {
        notes.push(format!(
            "{workload}: the pod already has prometheus.io/port={port} (the app's); left as it is: \
             scrape Floodgate through port `{}` (deploy/kubernetes/podmonitor.yaml)",
            sidecar::METRICS_PORT_NAME
        ));
    } else {
        for (k, v) in sidecar::annotations(opts) {
            annotations.set(k, Node::string(v));
        }
    }
    annotations.set(
        "floodgate.io/injected",
        Node::string(env!("CARGO_PKG_VERSION")),
    );
    // What the PodMonitor selects (deploy/kubernetes/podmonitor.yaml). Read the labels
    // before: Services select on the app's own.
    let labels = string_pairs(meta.get("labels"));
    meta.entry("labels", || Node::Map(Vec::new()))
        .ok_or("`metadata` is not a mapping")?
        .set(sidecar::POD_LABEL, Node::string("true"));
    notes.push(format!(
        "{workload}: injected in front of container `{app_name}` port {app_port}; Floodgate listens \
         on {} as port `{fg_port}`: Services must target `{fg_port}` (a numeric targetPort \
         {app_port} would bypass it)",
        opts.listen_port
    ));
    Ok(Some(Wired {
        workload,
        labels,
        app_port,
        port_name: fg_port,
    }))
}

/// The mapping at `path`, created (as empty mappings) where missing.
fn ensure_path<'a>(doc: &'a mut Node, path: &[&str]) -> Result<&'a mut Node, String> {
    let mut node = doc;
    for key in path {
        node = node
            .entry(key, || Node::Map(Vec::new()))
            .ok_or_else(|| format!("`{}` is not a mapping", path.join(".")))?;
    }
    Ok(node)
}

fn rename_probe_ports(container: &mut Node, old: &str, new: &str) {
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        for handler in ["httpGet", "tcpSocket"] {
            if let Some(port) = container.at_mut(&[probe, handler, "port"]) {
                if port.as_str() == Some(old) {
                    *port = Node::string(new);
                }
            }
        }
    }
}

/// Points the ports of a Service that selects an injected pod and targets the app port by
/// number at Floodgate's port name. Returns whether it changed anything.
pub fn retarget_service(
    svc: &mut Node,
    wired: &[(Option<String>, Wired)],
    notes: &mut Vec<String>,
) -> bool {
    let ns = namespace(svc);
    let name = label(svc);
    let selector = string_pairs(svc.at(&["spec", "selector"]));
    if selector.is_empty() {
        return false;
    }
    let Some(Node::Seq(ports)) = svc.at_mut(&["spec", "ports"]) else {
        return false;
    };
    let mut changed = false;
    for (wns, w) in wired {
        if *wns != ns || !selector.iter().all(|s| w.labels.contains(s)) {
            continue;
        }
        for p in ports.iter_mut() {
            let target = p.get("targetPort").or_else(|| p.get("port"));
            let by_number = target
                .and_then(Node::as_str)
                .and_then(|t| t.parse::<u16>().ok());
            if by_number == Some(w.app_port) {
                p.set("targetPort", Node::string(w.port_name.clone()));
                notes.push(format!(
                    "{name}: targetPort {} is now `{}` (Floodgate in {})",
                    w.app_port, w.port_name, w.workload
                ));
                changed = true;
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renamed_ports_are_valid_and_unused() {
        assert_eq!(renamed("http", &[]), "app-http");
        assert_eq!(renamed("very-long-name1", &[]), "app-very-long-n");
        assert_eq!(renamed("web-", &[]), "app-web");
        assert_eq!(renamed("http", &["app-http".into()]), "app-port");
        assert_eq!(
            renamed("http", &["app-http".into(), "app-port".into()]),
            "app-port-2"
        );
        assert_eq!(renamed("a-b-c-d-e-f-g", &[]), "app-a-b-c-d-e-f");
    }
}
