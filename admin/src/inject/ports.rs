//! Which ports of the app container Floodgate fronts and which stay direct, with the reason
//! for each one left out: by default every TCP port but those that say metrics or health.

use super::yaml::Node;

/// An app port Floodgate will stand in front of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fronted {
    /// The app's port number (Floodgate forwards to `127.0.0.1:<this>`).
    pub number: u16,
    /// Its name in the manifest, if it has one (Floodgate's port takes it over).
    pub name: Option<String>,
    /// It speaks gRPC (a `grpc*` name, or `appProtocol: grpc` / `kubernetes.io/h2c`), so the
    /// listener's upstream protocol is `h2c`.
    pub grpc: bool,
}

/// A declared port that will not go through Floodgate, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Direct {
    /// The port number.
    pub number: u16,
    /// Its name, if any.
    pub name: Option<String>,
    /// Why it is left direct (for the notes).
    pub why: String,
}

impl Direct {
    /// `` `name` (9797) `` or `9797`, for messages.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("`{n}` ({})", self.number),
            None => self.number.to_string(),
        }
    }
}

/// What to do with each port of the app container.
#[derive(Debug, Default)]
pub struct Plan {
    /// Fronted, in declaration order.
    pub fronted: Vec<Fronted>,
    /// Left direct, in declaration order.
    pub direct: Vec<Direct>,
}

/// How ports are chosen (from the command line or the webhook's defaults).
#[derive(Debug, Clone, Copy)]
pub struct Choice<'a> {
    /// `--upstream-port N`: exactly this port, declared or not.
    pub upstream_port: Option<u16>,
    /// `--ports`: exactly these (names or numbers); empty: the default choice.
    pub only: &'a [String],
    /// `--skip-ports`: leave these out of the default choice.
    pub skip: &'a [String],
}

/// One declared port as read from the manifest.
struct Declared {
    number: u16,
    name: Option<String>,
    protocol: String,
    app_protocol: Option<String>,
}

impl Declared {
    fn matches(&self, sel: &str) -> bool {
        self.name.as_deref() == Some(sel) || sel.parse::<u16>().ok() == Some(self.number)
    }

    fn grpc(&self) -> bool {
        self.name.as_deref().is_some_and(|n| n.starts_with("grpc"))
            || self
                .app_protocol
                .as_deref()
                .is_some_and(|p| matches!(p, "grpc" | "kubernetes.io/h2c" | "h2c"))
    }

    fn fronted(&self) -> Fronted {
        Fronted {
            number: self.number,
            name: self.name.clone(),
            grpc: self.grpc(),
        }
    }

    fn direct(&self, why: impl Into<String>) -> Direct {
        Direct {
            number: self.number,
            name: self.name.clone(),
            why: why.into(),
        }
    }
}

/// Names that say a port serves the app's traffic, so a probe on it does not make it a
/// health port.
fn serving_name(name: &str) -> bool {
    ["http", "grpc", "h2c", "web", "api", "app", "tcp"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// The ports the container's probes target (by name or number), with the probe.
fn probe_targets(container: &Node) -> Vec<(String, &'static str)> {
    let mut out = Vec::new();
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        for handler in ["httpGet", "tcpSocket", "grpc"] {
            if let Some(port) = container
                .at(&[probe, handler, "port"])
                .and_then(Node::as_str)
            {
                out.push((port.to_string(), probe));
            }
        }
    }
    out
}

fn declared(container: &Node, cname: &str) -> Result<Vec<Declared>, String> {
    container
        .get("ports")
        .map(Node::items)
        .unwrap_or_default()
        .iter()
        .map(|p| {
            let number = p
                .get("containerPort")
                .and_then(Node::as_str)
                .and_then(|n| n.parse::<u16>().ok())
                .ok_or_else(|| {
                    format!("container `{cname}` has a port with no valid containerPort")
                })?;
            Ok(Declared {
                number,
                name: p.get("name").and_then(Node::as_str).map(str::to_string),
                protocol: p
                    .get("protocol")
                    .and_then(Node::as_str)
                    .unwrap_or("TCP")
                    .to_string(),
                app_protocol: p
                    .get("appProtocol")
                    .and_then(Node::as_str)
                    .map(str::to_string),
            })
        })
        .collect()
}

fn not_tcp(d: &Declared) -> Option<String> {
    (d.protocol != "TCP").then(|| {
        format!(
            "{}: Floodgate proxies HTTP and gRPC over TCP only",
            d.protocol
        )
    })
}

/// Chooses the ports of `container` (named `cname`) that Floodgate fronts. `annotations` are
/// the pod template's (its `prometheus.io/port` is the app's metrics port).
pub fn plan(
    container: &Node,
    cname: &str,
    annotations: Option<&Node>,
    choice: Choice<'_>,
) -> Result<Plan, String> {
    let ports = declared(container, cname)?;
    let names = || {
        ports
            .iter()
            .map(|d| match &d.name {
                Some(n) => format!("{n} {}", d.number),
                None => d.number.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut plan = Plan::default();

    // Exactly what was asked for: `--upstream-port N` or `--ports a,b`.
    let asked: Vec<String> = match choice.upstream_port {
        Some(n) => vec![n.to_string()],
        None => choice.only.to_vec(),
    };
    if !asked.is_empty() {
        let flag = if choice.upstream_port.is_some() {
            "--upstream-port"
        } else {
            "--ports"
        };
        for sel in &asked {
            match ports.iter().find(|d| d.matches(sel)) {
                Some(d) => {
                    if let Some(why) = not_tcp(d) {
                        return Err(format!("{flag} {sel}: the port is {why}"));
                    }
                    if !plan.fronted.iter().any(|f| f.number == d.number) {
                        plan.fronted.push(d.fronted());
                    }
                }
                // A number the manifest does not declare: the app listens there all the same.
                None => match sel.parse::<u16>() {
                    Ok(number) if number > 0 => plan.fronted.push(Fronted {
                        number,
                        name: None,
                        grpc: false,
                    }),
                    _ => {
                        return Err(format!(
                            "{flag}: container `{cname}` has no port named `{sel}` (its ports: {})",
                            names()
                        ))
                    }
                },
            }
        }
        for d in &ports {
            if !plan.fronted.iter().any(|f| f.number == d.number) {
                plan.direct.push(d.direct(format!("not chosen by {flag}")));
            }
        }
        return Ok(plan);
    }

    if ports.is_empty() {
        return Err(format!(
            "container `{cname}` declares no containerPort; say which port the app listens on \
             with --upstream-port N (or --ports N,M)"
        ));
    }
    for sel in choice.skip {
        if !ports.iter().any(|d| d.matches(sel)) {
            return Err(format!(
                "--skip-ports: container `{cname}` has no port `{sel}` (its ports: {})",
                names()
            ));
        }
    }
    let scrape_port = annotations
        .and_then(|a| a.get("prometheus.io/port"))
        .and_then(Node::as_str)
        .and_then(|p| p.parse::<u16>().ok());
    let probes = probe_targets(container);

    // Everything but what is skipped, not TCP, or says metrics or health; probe ports are
    // decided last, as they depend on what else is fronted.
    let mut probed = Vec::new();
    for d in &ports {
        let name = d.name.as_deref().unwrap_or("");
        let why = if choice.skip.iter().any(|s| d.matches(s)) {
            Some("--skip-ports".to_string())
        } else if let Some(why) = not_tcp(d) {
            Some(why)
        } else if name.contains("metrics") {
            Some("a metrics port (its name)".to_string())
        } else if scrape_port == Some(d.number) {
            Some("the app's metrics port (the pod's prometheus.io/port)".to_string())
        } else if name.contains("health") {
            Some("a health port (its name)".to_string())
        } else {
            None
        };
        match why {
            Some(why) => plan.direct.push(d.direct(why)),
            None => {
                let probe = probes
                    .iter()
                    .find(|(p, _)| d.matches(p))
                    .map(|(_, probe)| *probe);
                match probe {
                    Some(probe) if !serving_name(name) => probed.push((d, probe)),
                    _ => plan.fronted.push(d.fronted()),
                }
            }
        }
    }
    // A port only the kubelet's probes use is a health port, unless it is all there is.
    for (d, probe) in probed {
        if plan.fronted.is_empty() && plan.direct.iter().all(|x| x.number != d.number) {
            plan.fronted.push(d.fronted());
        } else {
            plan.direct
                .push(d.direct(format!("a health port (the app's {probe} uses it)")));
        }
    }
    if plan.fronted.is_empty() {
        let left: Vec<String> = plan
            .direct
            .iter()
            .map(|d| format!("{}: {}", d.label(), d.why))
            .collect();
        return Err(format!(
            "container `{cname}` has no port left for Floodgate to front ({}); choose with --ports",
            left.join("; ")
        ));
    }
    // Keep declaration order (probe ports may have been put last).
    plan.fronted
        .sort_by_key(|f| ports.iter().position(|d| d.number == f.number));
    plan.direct
        .sort_by_key(|x| ports.iter().position(|d| d.number == x.number));
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(ports: &str, extra: &str) -> Node {
        Node::parse(&format!("name: app\nports: {ports}\n{extra}"))
            .expect("yaml")
            .expect("a document")
    }

    const DEFAULT: Choice<'static> = Choice {
        upstream_port: None,
        only: &[],
        skip: &[],
    };

    fn fronted(p: &Plan) -> Vec<u16> {
        p.fronted.iter().map(|f| f.number).collect()
    }

    #[test]
    fn every_tcp_port_but_metrics_and_health_by_default() {
        let c = container(
            "[{name: http, containerPort: 9898}, {name: http-metrics, containerPort: 9797}, {name: grpc, containerPort: 9999}, {name: dns, containerPort: 53, protocol: UDP}, {containerPort: 8081}]",
            "livenessProbe: {httpGet: {path: /live, port: 8081}}\n",
        );
        let p = plan(&c, "app", None, DEFAULT).expect("plan");
        assert_eq!(fronted(&p), [9898, 9999]);
        assert!(p.fronted[1].grpc && !p.fronted[0].grpc);
        let why: Vec<(u16, &str)> = p
            .direct
            .iter()
            .map(|d| (d.number, d.why.as_str()))
            .collect();
        assert_eq!(
            why,
            [
                (9797, "a metrics port (its name)"),
                (53, "UDP: Floodgate proxies HTTP and gRPC over TCP only"),
                (8081, "a health port (the app's livenessProbe uses it)"),
            ]
        );
    }

    #[test]
    fn the_scrape_annotation_and_app_protocol_are_read() {
        let c = container(
            "[{name: web, containerPort: 8080}, {name: stats, containerPort: 9102}, {name: rpc, containerPort: 7000, appProtocol: kubernetes.io/h2c}]",
            "",
        );
        let ann = Node::parse("{prometheus.io/port: \"9102\"}").expect("yaml");
        let p = plan(&c, "app", ann.as_ref(), DEFAULT).expect("plan");
        assert_eq!(fronted(&p), [8080, 7000]);
        assert!(p.fronted[1].grpc);
        assert_eq!(p.direct[0].label(), "`stats` (9102)");
    }

    #[test]
    fn a_probed_serving_port_or_the_only_port_is_fronted() {
        let c = container(
            "[{name: http, containerPort: 8080}]",
            "readinessProbe: {httpGet: {path: /ready, port: http}}\n",
        );
        assert_eq!(
            fronted(&plan(&c, "app", None, DEFAULT).expect("plan")),
            [8080]
        );
        let c = container(
            "[{containerPort: 8080}]",
            "readinessProbe: {tcpSocket: {port: 8080}}\n",
        );
        assert_eq!(
            fronted(&plan(&c, "app", None, DEFAULT).expect("plan")),
            [8080]
        );
    }

    #[test]
    fn ports_and_skip_ports_choose() {
        let c = container(
            "[{name: http, containerPort: 9898}, {name: admin, containerPort: 9000}, {name: grpc, containerPort: 9999}]",
            "",
        );
        let only = ["grpc".to_string(), "9898".to_string()];
        let p = plan(
            &c,
            "app",
            None,
            Choice {
                only: &only,
                ..DEFAULT
            },
        )
        .expect("plan");
        assert_eq!(fronted(&p), [9999, 9898]);
        assert_eq!(p.direct[0].why, "not chosen by --ports");
        let skip = ["admin".to_string()];
        let p = plan(
            &c,
            "app",
            None,
            Choice {
                skip: &skip,
                ..DEFAULT
            },
        )
        .expect("plan");
        assert_eq!(fronted(&p), [9898, 9999]);
        assert_eq!(p.direct[0].why, "--skip-ports");
        let typo = ["amdin".to_string()];
        let e = plan(
            &c,
            "app",
            None,
            Choice {
                skip: &typo,
                ..DEFAULT
            },
        )
        .expect_err("typo");
        assert!(
            e.contains("no port `amdin` (its ports: http 9898, admin 9000, grpc 9999)"),
            "{e}"
        );
        let e = plan(
            &c,
            "app",
            None,
            Choice {
                only: &typo,
                ..DEFAULT
            },
        )
        .expect_err("typo");
        assert!(
            e.contains("--ports: container `app` has no port named `amdin`"),
            "{e}"
        );
    }

    #[test]
    fn nothing_left_to_front_is_refused_with_the_reasons() {
        let c = container("[{name: metrics, containerPort: 9090}]", "");
        let e = plan(&c, "app", None, DEFAULT).expect_err("refused");
        assert!(e.contains("no port left for Floodgate to front (`metrics` (9090): a metrics port (its name)); choose with --ports"), "{e}");
    }
}
