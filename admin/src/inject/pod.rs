//! Finding a workload's pod template, choosing the app's container, and putting the sidecar
//! in front of its ports; pointing Services that target an app port by number at Floodgate.

use super::ports;
use super::sidecar::{self, Options, CONTAINER};
use super::yaml::Node;
use super::{label, INJECT_ANNOTATION};

/// What one injected pod template looks like afterwards, for the Services' pass.
pub struct Wired {
    /// `Kind/name`.
    pub workload: String,
    /// The pod template's labels.
    pub labels: Vec<(String, String)>,
    /// Each fronted app port (which a Service may name by number) with Floodgate's port's
    /// name for it: the app port's former name, or `http`/`grpc`/`fg-<port>`.
    pub ports: Vec<(u16, String)>,
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

/// What [`inject_workload`] did with a document.
pub enum Outcome {
    /// Not a kind with a pod template: left alone.
    NotAWorkload,
    /// Annotated `floodgate.io/inject: disabled` (a note says so).
    OptedOut,
    /// Has the `floodgate` container already (a note says so).
    AlreadyInjected,
    /// The sidecar was added.
    Injected(Wired),
}

/// Adds the sidecar to `doc` if it is a workload: the one path of `floodgatectl inject` and of
/// the admission webhook (which hands it a Pod). `Err`: it cannot be done safely, and why.
pub fn inject_workload(
    doc: &mut Node,
    opts: &Options,
    notes: &mut Vec<String>,
) -> Result<Outcome, String> {
    let Some(kind) = doc.get("kind").and_then(Node::as_str) else {
        return Ok(Outcome::NotAWorkload);
    };
    let Some((meta_path, spec_path)) = template_paths(kind) else {
        return Ok(Outcome::NotAWorkload);
    };
    let workload = label(doc);
    if opted_out(doc.get("metadata")) || opted_out(doc.at(meta_path)) {
        notes.push(format!(
            "{workload}: skipped ({INJECT_ANNOTATION}: disabled)"
        ));
        return Ok(Outcome::OptedOut);
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
        return Ok(Outcome::AlreadyInjected);
    }
    if spec.get("hostNetwork").and_then(Node::as_str) == Some("true") {
        return Err(
            "uses `hostNetwork: true`: Floodgate's ports would be the node's, and \
                    two such pods on one node would collide; inject does not support it"
                .into(),
        );
    }

    // The app container: named, or the one with the wanted ports, or the only one with ports.
    let with_ports: Vec<usize> = (0..containers.len())
        .filter(|&i| !ports_of(&containers[i]).is_empty())
        .collect();
    let wanted: Vec<String> = match opts.upstream_port {
        Some(p) => vec![p.to_string()],
        None => opts.ports.clone(),
    };
    let declares = |i: usize, sel: &str| {
        ports_of(&containers[i]).iter().any(|p| {
            port_name(p) == Some(sel)
                || port_number(p).map(|n| n.to_string()).as_deref() == Some(sel)
        })
    };
    let app = match &opts.container {
        Some(name) => names.iter().position(|n| n == name).ok_or_else(|| {
            format!(
                "--container `{name}` is not one of its containers ({})",
                names.join(", ")
            )
        })?,
        None if !wanted.is_empty() => (0..containers.len())
            .find(|&i| wanted.iter().any(|w| declares(i, w)))
            .or((containers.len() == 1).then_some(0))
            .ok_or_else(|| {
                format!(
                    "no container declares port {}; name the app's with --container NAME",
                    wanted.join(", ")
                )
            })?,
        None => match with_ports.as_slice() {
            [one] => *one,
            [] => {
                return Err(
                    "no container declares a containerPort, so there is no port to put \
                            Floodgate in front of: add the app's port to its `ports`, or pass \
                            --upstream-port N (and --container NAME if it has several containers)"
                        .into(),
                )
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
    let plan = ports::plan(
        &containers[app],
        &app_name,
        doc.at(meta_path).and_then(|m| m.get("annotations")),
        ports::Choice {
            upstream_port: opts.upstream_port,
            only: &opts.ports,
            skip: &opts.skip_ports,
        },
    )?;

    let mut all_ports = pod_ports(containers);
    all_ports.extend(pod_ports(init));
    let used = |n: u16| all_ports.iter().find(|(_, _, p)| *p == Some(n));
    let is_app_port = |n: u16| plan.fronted.iter().any(|f| f.number == n);
    for (flag, mine) in [
        ("--listen-port", Some(opts.listen_port)),
        ("--metrics-port", Some(opts.metrics_port)),
        ("--admin-port", opts.admin_port),
    ] {
        let Some(mine) = mine else { continue };
        if let Some((c, _, _)) = used(mine) {
            return Err(format!(
                "port {mine} is already used by container `{c}`; give Floodgate another with {flag}"
            ));
        }
        if is_app_port(mine) {
            return Err(format!(
                "Floodgate cannot listen on the app's own port {mine}; choose another {flag}"
            ));
        }
    }
    let mut taken: Vec<String> = all_ports.iter().filter_map(|(_, n, _)| n.clone()).collect();
    for fixed in [sidecar::METRICS_PORT_NAME, sidecar::ADMIN_PORT_NAME] {
        if taken.iter().any(|t| t == fixed) {
            return Err(format!(
                "a container already has a port named `{fixed}`, which Floodgate uses"
            ));
        }
    }

    // Floodgate's ports: --listen-port, then the next free numbers; each takes the app
    // port's name (an unnamed one gets `http`/`grpc`, or `fg-<app port>` if that is taken).
    let mut listeners: Vec<sidecar::Listener> = Vec::with_capacity(plan.fronted.len());
    let mut renames: Vec<(String, String)> = Vec::new();
    let mut next = opts.listen_port;
    for f in &plan.fronted {
        while used(next).is_some()
            || next == opts.metrics_port
            || Some(next) == opts.admin_port
            || is_app_port(next)
            || listeners.iter().any(|l| l.port == next)
        {
            next = next
                .checked_add(1)
                .ok_or("no free port left above --listen-port")?;
        }
        let name = match &f.name {
            Some(old) => {
                let new = renamed(old, &taken);
                taken.push(new.clone());
                renames.push((old.clone(), new));
                old.clone()
            }
            None => {
                let base = if f.grpc { "grpc" } else { "http" };
                let name = if taken.iter().any(|t| t == base) {
                    format!("fg-{}", f.number)
                } else {
                    base.to_string()
                };
                taken.push(name.clone());
                name
            }
        };
        listeners.push(sidecar::Listener {
            name,
            port: next,
            app_port: f.number,
            h2c: f.grpc,
        });
        next = next
            .checked_add(1)
            .ok_or("no free port left above --listen-port")?;
    }
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
    let fg = sidecar::container(opts, &listeners);
    if let Some(Node::Seq(containers)) = spec.get_mut("containers") {
        for (old, new) in &renames {
            // The app's port gives its name to Floodgate's and takes a new one; the app's own
            // probes that named it follow (the kubelet probes the app itself).
            if let Some(Node::Seq(ports)) = containers[app].get_mut("ports") {
                for p in ports.iter_mut() {
                    if port_name(p) == Some(old.as_str()) {
                        p.set("name", Node::string(new.clone()));
                    }
                }
            }
            rename_probe_ports(&mut containers[app], old, new);
            notes.push(format!(
                "{workload}: container `{app_name}`'s port `{old}` is now `{new}`; `{old}` is Floodgate's"
            ));
        }
        if !opts.native_sidecar {
            containers.insert(0, fg.clone());
        }
    }
    if opts.native_sidecar {
        // A Kubernetes native sidecar (1.29+): started, and ready, before the app; stopped
        // after it, so the app never sees traffic without Floodgate in front, and Floodgate
        // drains while the app still answers.
        let mut c = fg;
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
    for l in &listeners {
        let grpc = match (l.h2c, listeners.len()) {
            (false, _) => "",
            (true, 1) => {
                "; gRPC: the config's upstream.protocol applies (`auto` forwards it as h2c)"
            }
            (true, _) => "; gRPC: upstream protocol h2c",
        };
        notes.push(format!(
            "{workload}: injected in front of container `{app_name}` port {}; Floodgate listens \
             on {} as port `{}`: Services must target `{}` (a numeric targetPort {} would bypass \
             it){grpc}",
            l.app_port, l.port, l.name, l.name, l.app_port,
        ));
    }
    for d in &plan.direct {
        notes.push(format!(
            "{workload}: port {} of container `{app_name}` bypasses Floodgate: {}; front it with \
             --ports",
            d.label(),
            d.why
        ));
    }
    if listeners.len() > 1 {
        notes.push(format!(
            "{workload}: {} listeners ({}) are in the {} variable: the sidecar needs a Floodgate \
             that reads `listeners:`",
            listeners.len(),
            listeners
                .iter()
                .map(|l| l.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            sidecar::LISTENERS_ENV
        ));
    }
    Ok(Outcome::Injected(Wired {
        workload,
        labels,
        ports: listeners
            .iter()
            .map(|l| (l.app_port, l.name.clone()))
            .collect(),
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
            let Some((app_port, fg_name)) = w.ports.iter().find(|(n, _)| Some(*n) == by_number)
            else {
                continue;
            };
            p.set("targetPort", Node::string(fg_name.clone()));
            notes.push(format!(
                "{name}: targetPort {app_port} is now `{fg_name}` (Floodgate in {})",
                w.workload
            ));
            changed = true;
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
