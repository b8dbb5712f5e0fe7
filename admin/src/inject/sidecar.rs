//! The Floodgate container, its volumes and the pod's scrape annotations, as injected.
//!
//! The sidecar runs as a non-root user on a read-only root filesystem with every capability
//! dropped; its addresses come from the pod spec, not the ConfigMap, so the ConfigMap holds
//! only policy and can be shared by apps on different ports: one fronted port is the
//! one-listener form on the command line (`--listen`, `--upstream`), several are `--listener`
//! values in the `FLOODGATE_LISTENERS` variable.

use super::yaml::Node;

/// The injected container's name (its presence makes injection a no-op).
pub const CONTAINER: &str = "floodgate";
/// The pod label an injected pod carries (`"true"`), which the PodMonitor selects.
pub const POD_LABEL: &str = "floodgate.io/injected";
/// Name of the metrics, /healthz and /readyz port.
pub const METRICS_PORT_NAME: &str = "fg-metrics";
/// Name of the admin port (when `--admin-port` is given).
pub const ADMIN_PORT_NAME: &str = "fg-admin";
/// Where the ConfigMap is mounted; the config is `<this>/<config_key>`.
pub const CONFIG_DIR: &str = "/etc/floodgate/config";
/// Where the admin tokens Secret is mounted (point `admin.tokens[].file` here).
pub const TOKENS_DIR: &str = "/etc/floodgate/tokens";

/// The variable that carries the `--listener` values when Floodgate fronts several ports.
pub const LISTENERS_ENV: &str = "FLOODGATE_LISTENERS";

/// One port Floodgate listens on, in front of one app port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// The listener's name: Floodgate's port name (the app port's former name).
    pub name: String,
    /// Floodgate's port.
    pub port: u16,
    /// The app's port on `127.0.0.1`.
    pub app_port: u16,
    /// The app speaks gRPC: `upstream.protocol: h2c`.
    pub h2c: bool,
}

/// What `floodgatectl inject` puts in.
#[derive(Debug, Clone)]
pub struct Options {
    /// Container image.
    pub image: String,
    /// ConfigMap holding the config.
    pub config_map: String,
    /// Key of the config in the ConfigMap.
    pub config_key: String,
    /// Secret with the admin tokens; `None`: no admin tokens mounted.
    pub admin_secret: Option<String>,
    /// The one app port Floodgate fronts, declared or not (`--upstream-port`).
    pub upstream_port: Option<u16>,
    /// Exactly the app ports Floodgate fronts, by name or number (`--ports`); empty: every
    /// TCP port but metrics and health ports.
    pub ports: Vec<String>,
    /// Ports left out of the default choice, by name or number (`--skip-ports`).
    pub skip_ports: Vec<String>,
    /// The app container (needed when several containers have ports).
    pub container: Option<String>,
    /// Floodgate's first inbound port (the next ones follow it: 15080, 15081, ...).
    pub listen_port: u16,
    /// Floodgate's metrics port.
    pub metrics_port: u16,
    /// Floodgate's admin port on the pod IP; `None`: the config's `admin.listen`.
    pub admin_port: Option<u16>,
    /// CPU request.
    pub cpu_request: String,
    /// Memory request.
    pub memory_request: String,
    /// CPU limit.
    pub cpu_limit: String,
    /// Memory limit.
    pub memory_limit: String,
    /// Put Floodgate in `initContainers` with `restartPolicy: Always` (a native sidecar:
    /// Kubernetes 1.29+, GA in 1.33); `false`: a plain container beside the app, for older
    /// clusters.
    pub native_sidecar: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            image: format!("ghcr.io/floodgate/floodgate:{}", env!("CARGO_PKG_VERSION")),
            config_map: "floodgate-config".into(),
            config_key: "floodgate.yaml".into(),
            admin_secret: Some("floodgate-admin-tokens".into()),
            upstream_port: None,
            ports: Vec::new(),
            skip_ports: Vec::new(),
            container: None,
            listen_port: 15080,
            metrics_port: 15090,
            admin_port: None,
            cpu_request: "100m".into(),
            memory_request: "64Mi".into(),
            cpu_limit: "1".into(),
            memory_limit: "256Mi".into(),
            native_sidecar: true,
        }
    }
}

fn port(name: &str, number: u16) -> Node {
    Node::map([
        ("name", Node::string(name)),
        ("containerPort", Node::plain(number.to_string())),
        ("protocol", Node::string("TCP")),
    ])
}

fn probe(path: &str, period: u16, failures: u16) -> Node {
    Node::map([
        (
            "httpGet",
            Node::map([
                ("path", Node::string(path)),
                ("port", Node::string(METRICS_PORT_NAME)),
            ]),
        ),
        ("periodSeconds", Node::plain(period.to_string())),
        ("failureThreshold", Node::plain(failures.to_string())),
    ])
}

fn mount(name: &str, path: &str, read_only: bool) -> Node {
    let mut m = Node::map([
        ("name", Node::string(name)),
        ("mountPath", Node::string(path)),
    ]);
    if read_only {
        m.set("readOnly", Node::plain("true"));
    }
    m
}

/// `FLOODGATE_LISTENERS`' value for `listeners`: the sidecar's `--listener` values,
/// `NAME=LISTEN,UPSTREAM[,h2c]`, separated by spaces. Each listener takes the ConfigMap's
/// upstream settings (its listener of that name, or its one-listener form's upstream), so the
/// ConfigMap stays policy only.
pub fn listeners_value(listeners: &[Listener]) -> String {
    listeners
        .iter()
        .map(|l| {
            format!(
                "{}=0.0.0.0:{},127.0.0.1:{}{}",
                l.name,
                l.port,
                l.app_port,
                if l.h2c { ",h2c" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The Floodgate container, each listener forwarding to its app port on `127.0.0.1`.
pub fn container(o: &Options, listeners: &[Listener]) -> Node {
    let mut args = vec![
        "--config".to_string(),
        format!("{CONFIG_DIR}/{}", o.config_key),
    ];
    let mut env = vec![Node::map([
        ("name", Node::string("RUST_LOG")),
        ("value", Node::string("info")),
    ])];
    match listeners {
        [one] => {
            args.push(format!("--listen=0.0.0.0:{}", one.port));
            args.push(format!("--upstream=127.0.0.1:{}", one.app_port));
        }
        several => env.push(Node::map([
            ("name", Node::string(LISTENERS_ENV)),
            ("value", Node::string(listeners_value(several))),
        ])),
    }
    args.push(format!("--metrics-listen=0.0.0.0:{}", o.metrics_port));
    let mut ports: Vec<Node> = listeners.iter().map(|l| port(&l.name, l.port)).collect();
    ports.push(port(METRICS_PORT_NAME, o.metrics_port));
    if let Some(a) = o.admin_port {
        args.push(format!("--admin-listen=0.0.0.0:{a}"));
        ports.push(port(ADMIN_PORT_NAME, a));
    }
    let mut mounts = vec![mount("floodgate-config", CONFIG_DIR, true)];
    if o.admin_secret.is_some() {
        mounts.push(mount("floodgate-admin-tokens", TOKENS_DIR, true));
    }
    mounts.push(mount("floodgate-tmp", "/tmp", false));
    Node::map([
        ("name", Node::string(CONTAINER)),
        ("image", Node::string(o.image.clone())),
        ("imagePullPolicy", Node::string("IfNotPresent")),
        (
            "args",
            Node::Seq(args.into_iter().map(Node::string).collect()),
        ),
        ("ports", Node::Seq(ports)),
        ("env", Node::Seq(env)),
        ("readinessProbe", probe("/readyz", 5, 3)),
        ("livenessProbe", probe("/healthz", 10, 3)),
        (
            "resources",
            Node::map([
                (
                    "requests",
                    Node::map([
                        ("cpu", Node::string(o.cpu_request.clone())),
                        ("memory", Node::string(o.memory_request.clone())),
                    ]),
                ),
                (
                    "limits",
                    Node::map([
                        ("cpu", Node::string(o.cpu_limit.clone())),
                        ("memory", Node::string(o.memory_limit.clone())),
                    ]),
                ),
            ]),
        ),
        (
            "securityContext",
            Node::map([
                ("runAsNonRoot", Node::plain("true")),
                ("runAsUser", Node::plain("65532")),
                ("runAsGroup", Node::plain("65532")),
                ("allowPrivilegeEscalation", Node::plain("false")),
                ("readOnlyRootFilesystem", Node::plain("true")),
                (
                    "capabilities",
                    Node::map([("drop", Node::Seq(vec![Node::string("ALL")]))]),
                ),
                (
                    "seccompProfile",
                    Node::map([("type", Node::string("RuntimeDefault"))]),
                ),
            ]),
        ),
        ("volumeMounts", Node::Seq(mounts)),
    ])
}

/// The pod volumes the container mounts.
pub fn volumes(o: &Options) -> Vec<Node> {
    let mut v = vec![Node::map([
        ("name", Node::string("floodgate-config")),
        (
            "configMap",
            Node::map([("name", Node::string(o.config_map.clone()))]),
        ),
    ])];
    if let Some(secret) = &o.admin_secret {
        v.push(Node::map([
            ("name", Node::string("floodgate-admin-tokens")),
            (
                "secret",
                // Default mode (0644): the sidecar's non-root user must read the files, and only
                // the Floodgate container mounts them. Optional: without the Secret the pod
                // still starts, and floodgate says which token file it cannot read.
                Node::map([
                    ("secretName", Node::string(secret.clone())),
                    ("optional", Node::plain("true")),
                ]),
            ),
        ]));
    }
    v.push(Node::map([
        ("name", Node::string("floodgate-tmp")),
        ("emptyDir", Node::map([("sizeLimit", Node::string("16Mi"))])),
    ]));
    v
}

/// Prometheus' annotation-based scrape of the sidecar's metrics port.
pub fn annotations(o: &Options) -> [(&'static str, String); 3] {
    [
        ("prometheus.io/scrape", "true".to_string()),
        ("prometheus.io/port", o.metrics_port.to_string()),
        ("prometheus.io/path", "/metrics".to_string()),
    ]
}
