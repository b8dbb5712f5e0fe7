//! The command line itself: every flag, subcommand and argument `floodgatectl` takes, with the
//! help text people read. Parsing only; the commands run in `main.rs`.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use floodgate_admin::pb;

/// Change a running Floodgate sidecar during an incident: raise limits, switch degradation
/// levels, turn features off, resize the queue. Every change takes --reason and --ttl and is
/// written to the sidecar's audit log.
///
/// Examples:
///   floodgatectl status
///   floodgatectl limits scale --all --multiplier 2 --ttl 30m --reason "launch spike"
///   floodgatectl degrade set degraded --ttl 1h --reason "INC-4211: p95 over 2 s"
///   floodgatectl feature disable recommendations --reason "shed load"
///   floodgatectl queue workers 20 && floodgatectl queue resize 5000
///   floodgatectl limits restore --all
///   floodgatectl --fleet limits scale --all --multiplier 2 --ttl 30m --reason "INC-4211" --dry-run
///   floodgatectl --fleet degrade set degraded --ttl 1h --reason "INC-4211"   (waits: applied on 48/48)
///
/// The token: --token-file FILE, or FLOODGATE_TOKEN=<the token itself> (for CI secrets),
/// or FLOODGATE_TOKEN_FILE=FILE; a --token-file given on the command line wins over both.
///
/// Exit codes: 0 done, 2 bad arguments (a --fleet change without --reason, too), 3 sidecar
/// unreachable (or --addr is not an admin port), 4 not authorised, 5 refused (unknown name,
/// invalid value), 6 a --fleet change made but not applied on every expected sidecar
/// within --wait, 1 anything else.
/// A closed standard output (`| head`) ends the command quietly with 0.
#[derive(Parser)]
#[command(version, verbatim_doc_comment)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Args)]
pub(crate) struct Global {
    /// Admin address of the sidecar (its `admin.listen`; not the proxy port).
    #[arg(
        long,
        global = true,
        env = "FLOODGATE_ADDR",
        default_value = DEFAULT_ADDR,
        help_heading = "Sidecar connection"
    )]
    pub(crate) addr: String,
    /// File holding the bearer token (an operator token to change, a viewer token to read).
    /// FLOODGATE_TOKEN, the token itself, is used when this flag is not on the command line.
    #[arg(
        long,
        global = true,
        env = "FLOODGATE_TOKEN_FILE",
        help_heading = "Sidecar connection"
    )]
    pub(crate) token_file: Option<String>,
    /// How to print: `table` for people; `json` or `yaml` (the same fields) for scripts.
    #[arg(
        short = 'o',
        long,
        global = true,
        value_enum,
        default_value_t = Output::Table,
        help_heading = "Output"
    )]
    pub(crate) output: Output,
    /// Apply a change to every sidecar of the fleet (stored in Redis), not only this one.
    /// Needs --reason; waits for the sidecars to apply it (see --wait). With `top`: show
    /// every sidecar of the fleet.
    #[arg(long, global = true, help_heading = "Fleet changes")]
    pub(crate) fleet: bool,
    /// After a --fleet change, wait up to DURATION (5s if none is given, and by default) for
    /// every expected sidecar (heard from in the last 5 minutes) to report the change's fleet
    /// version, then print `applied on N/M` and name the missing with their last-seen age;
    /// exit 6 if some did not apply it in time. `--wait 0` does not wait. A change without
    /// --fleet is applied when the command returns, so there it waits for nothing.
    #[arg(
        long,
        global = true,
        value_name = "DURATION",
        num_args = 0..=1,
        default_missing_value = "5s",
        value_parser = parse_wait,
        help_heading = "Fleet changes"
    )]
    pub(crate) wait: Option<Duration>,
    /// Do not wait for a --fleet change to be applied (as --wait 0).
    #[arg(
        long,
        global = true,
        conflicts_with = "wait",
        help_heading = "Fleet changes"
    )]
    pub(crate) no_wait: bool,
    /// Show what a --fleet change would do, each key's fleet-layer value before -> after,
    /// and change nothing.
    #[arg(long, global = true, help_heading = "Fleet changes")]
    pub(crate) dry_run: bool,
    /// CA certificate (PEM) to verify the sidecar's admin.tls certificate; turns on TLS.
    #[arg(
        long,
        global = true,
        env = "FLOODGATE_CA_FILE",
        help_heading = "Sidecar connection"
    )]
    pub(crate) ca_file: Option<String>,
    /// Client certificate (PEM) for a sidecar that requires mutual TLS (with --key-file).
    #[arg(
        long,
        global = true,
        env = "FLOODGATE_CERT_FILE",
        requires = "key_file",
        help_heading = "Sidecar connection"
    )]
    pub(crate) cert_file: Option<String>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        global = true,
        env = "FLOODGATE_KEY_FILE",
        requires = "cert_file",
        help_heading = "Sidecar connection"
    )]
    pub(crate) key_file: Option<String>,
}

/// The admin plane's default `admin.listen`.
pub(crate) const DEFAULT_ADDR: &str = "127.0.0.1:9901";

/// How replies print.
#[derive(Clone, Copy, ValueEnum, PartialEq, Debug)]
pub(crate) enum Output {
    /// Tables and sentences, for people.
    Table,
    /// Pretty JSON (one object per line for `watch`).
    Json,
    /// YAML, with the same fields as JSON (one document per event for `watch`).
    Yaml,
}

/// The longest --ttl. An override meant to outlive a month belongs in the config file, and
/// a typo such as `400d` should not quietly hold an incident change for a year.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(30 * 86_400);

/// Parses --ttl: a humantime duration (`90s`, `30m`, `1h`, `2d`) of whole seconds from 1 s
/// to [`MAX_TTL`]. Nothing is rounded: `0s` or `500ms` is an error, not one second.
pub(crate) fn parse_ttl(s: &str) -> Result<Duration, String> {
    const RANGE: &str = "from 1s to 30d, e.g. 90s, 30m, 1h, 2d";
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (a duration {RANGE})"))?;
    if d < Duration::from_secs(1) || d > MAX_TTL {
        return Err(format!("out of range: a TTL is {RANGE}"));
    }
    if d.subsec_nanos() != 0 {
        return Err(format!("not whole seconds: a TTL is {RANGE}"));
    }
    Ok(d)
}

/// How long a --fleet change waits to be applied everywhere when --wait gives no time.
pub(crate) const DEFAULT_WAIT: Duration = Duration::from_secs(5);

impl Global {
    /// How long a fleet change waits for the fleet; zero for not at all.
    pub(crate) fn wait(&self) -> Duration {
        if self.no_wait {
            Duration::ZERO
        } else {
            self.wait.unwrap_or(DEFAULT_WAIT)
        }
    }
}

/// Parses --wait: a humantime duration (`3s`, `500ms`, `1m`) up to 10 minutes, or `0`.
pub(crate) fn parse_wait(s: &str) -> Result<Duration, String> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{e} (a duration such as 3s, 30s, 1m; 0 for no wait)"))?;
    if d > Duration::from_secs(600) {
        return Err("out of range: --wait is at most 10m".into());
    }
    Ok(d)
}

/// Parses `top --interval`: a humantime duration from 100 ms (a sidecar's indicators move
/// once a second; faster only costs calls) to an hour.
pub(crate) fn parse_interval(s: &str) -> Result<Duration, String> {
    const RANGE: &str = "from 100ms to 1h, e.g. 500ms, 1s, 5s";
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (a duration {RANGE})"))?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
        return Err(format!("out of range: --interval is {RANGE}"));
    }
    Ok(d)
}

/// Why and for how long; every change takes these.
#[derive(Args, Clone)]
pub(crate) struct ChangeArgs {
    /// Revert by itself after this long, from 1s to 30d (e.g. 90s, 30m, 1h, 2d); default:
    /// until cleared.
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
    pub(crate) ttl: Option<Duration>,
    /// Why; recorded in the audit log. Required with --fleet.
    #[arg(long, default_value = "")]
    pub(crate) reason: String,
}

impl ChangeArgs {
    pub(crate) fn pb(&self, g: &Global) -> pb::Change {
        pb::Change {
            reason: self.reason.clone(),
            // parse_ttl admits whole seconds from 1 only, so 0 keeps meaning "until cleared".
            ttl_seconds: self.ttl.map_or(0, |d| d.as_secs()),
            fleet: g.fleet,
            dry_run: g.dry_run,
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Level, limits, queue, breakers and load indicators of the sidecar.
    Status,
    /// This floodgatectl's version and the sidecar's (when --addr answers).
    Version {
        /// Only this floodgatectl's version; no sidecar is asked.
        #[arg(long)]
        client: bool,
    },
    /// Print a shell completion script: `source <(floodgatectl completion bash)`, or
    /// `floodgatectl completion zsh > "${fpath[1]}/_floodgatectl"`,
    /// `floodgatectl completion fish > ~/.config/fish/completions/floodgatectl.fish`.
    Completion {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Read and change rate limits.
    #[command(subcommand)]
    Limits(LimitsCmd),
    /// Set the degradation level by hand (wins over automatic degradation until cleared).
    #[command(subcommand)]
    Degrade(DegradeCmd),
    /// Turn one feature on or off, whatever the level.
    #[command(subcommand)]
    Feature(FeatureCmd),
    /// The admission queue.
    #[command(subcommand)]
    Queue(QueueCmd),
    /// The response cache.
    #[command(subcommand)]
    Cache(CacheCmd),
    /// Circuit breakers: list, or `reset NAME`.
    Breakers {
        /// Without one: list the breakers and their states.
        #[command(subcommand)]
        cmd: Option<BreakersCmd>,
    },
    /// Overrides in force: list, or `clear KEY|all`.
    Overrides {
        /// Without one: list the overrides in force.
        #[command(subcommand)]
        cmd: Option<OverridesCmd>,
    },
    /// Why each knob has the value it has: the layer that set it (local, fleet, schedule,
    /// or the config file's baseline), who, why, the time left, and what it falls back to
    /// when that runs out or is cleared.
    Explain {
        /// One knob: `limit:NAME`, `level`, `feature:NAME`, `queue.max_size`,
        /// `queue.max_concurrency` or `aggressive_cache`; every knob when absent.
        knob: Option<String>,
    },
    /// The latest audit log entries (JSON lines; an array with -o json or yaml).
    Audit {
        /// How many entries, the most recent ones.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Print changes as they happen (overrides, levels, breakers) until interrupted.
    Watch,
    /// A live table of the sidecar's load, or with --fleet every sidecar's, like `kubectl top`.
    ///
    /// One sidecar: degradation level, load level, rps, error rate, p50/p95/p99, queue
    /// depth/capacity, in flight/workers and its breakers. With --fleet (through the sidecar's
    /// Redis): one row per expected sidecar, busiest first, with rps, error rate, p95, the
    /// config and fleet versions and STALE for one not heard from.
    ///
    /// On a terminal it redraws every --interval until `q`, Esc or Ctrl-C. With --once,
    /// with -o json|yaml, or when standard output is not a terminal, it prints one table
    /// (header row first) or document and exits.
    ///
    /// Examples:
    ///   floodgatectl top
    ///   floodgatectl --fleet top --interval 5s
    ///   floodgatectl top --once -o json | jq .p95_ms
    #[command(verbatim_doc_comment)]
    Top {
        /// Time between refreshes of the live view (e.g. 500ms, 1s, 5s), from 100ms to 1h.
        #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_interval)]
        interval: Duration,
        /// Print one snapshot (a table, or -o json|yaml) and exit, for scripts.
        #[arg(long)]
        once: bool,
    },
    /// The fleet, through the sidecar's Redis.
    #[command(subcommand)]
    Fleet(FleetCmd),
    /// Local config file checks (no sidecar needed).
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Add the Floodgate sidecar to Kubernetes workloads (offline; no sidecar needed).
    ///
    /// Reads Kubernetes YAML (several documents; Deployment, StatefulSet, DaemonSet, ReplicaSet,
    /// Job, CronJob, Pod, or a List of them) and writes it to standard output with the `floodgate`
    /// container in front of each workload's app.
    ///
    /// Floodgate fronts every TCP port of the app container, each on a port of its own
    /// (--listen-port, then the next ones), taking over its name (e.g. `http`, `grpc`) and
    /// forwarding to the app on 127.0.0.1; the app's port is renamed (`app-http`) and the app is
    /// not changed. Metrics and health ports stay direct and are named on standard error
    /// (--ports and --skip-ports choose); a gRPC port is forwarded as h2c. Floodgate is a native
    /// sidecar (Kubernetes 1.29+; --classic-sidecar for older clusters). Services that target a
    /// port by name keep working; Services in the same input that target it by number are
    /// pointed at the name. Also added: the config from
    /// a ConfigMap (--config-map, mounted at /etc/floodgate/config), the admin tokens from a Secret
    /// (--admin-secret, at /etc/floodgate/tokens), /healthz and /readyz probes, resources, a
    /// non-root read-only securityContext and Prometheus scrape annotations.
    ///
    /// Documents it does not change are written back byte for byte; injecting twice changes
    /// nothing. A workload annotated `floodgate.io/inject: disabled` is skipped. Notes (what was
    /// done, what to check) go to standard error.
    ///
    /// Examples:
    ///   floodgatectl inject -f deployment.yaml | kubectl apply -f -
    ///   kubectl get deploy web -o yaml | floodgatectl inject -f - --upstream-port 8080 | kubectl apply -f -
    ///   floodgatectl inject -f k8s/ --config-map web-floodgate > injected.yaml   (every .yaml/.yml in k8s/)
    ///
    /// Exit codes: 0 written, 2 input unreadable, 5 refused (nothing written; the message names
    /// the document, the workload and the fix).
    #[command(verbatim_doc_comment)]
    Inject(Box<InjectArgs>),
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct InjectArgs {
    /// The admission webhook instead of files (`serve`, `serve-cert`).
    #[command(subcommand)]
    pub(crate) webhook: Option<WebhookCmd>,
    /// File to read, a directory (its .yaml and .yml files, by name, as one stream), or `-` for
    /// standard input.
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
    pub(crate) file: Option<String>,
    #[command(flatten)]
    pub(crate) how: InjectOptions,
}

/// `floodgatectl inject serve` and `serve-cert`: injection by an admission webhook.
#[derive(Subcommand)]
pub(crate) enum WebhookCmd {
    /// Run the admission webhook: HTTPS, `POST /mutate` answers an admission.k8s.io/v1
    /// AdmissionReview for a Pod with the JSON Patch that `floodgatectl inject` would make of
    /// it (the same code does both; the injection flags below apply to every pod).
    ///
    /// The MutatingWebhookConfiguration (deploy/kubernetes/injector/) sends the pods of
    /// namespaces labelled `floodgate.io/inject: enabled`; a pod annotated
    /// `floodgate.io/inject: disabled` is left alone, an injected one gets no patch, and a pod
    /// it cannot inject safely is allowed unchanged with a warning that says why: it never
    /// blocks a pod. A request that is not an AdmissionReview gets 400.
    ///
    /// Also served: /healthz, /readyz and /metrics (pods injected, skipped by reason,
    /// answer times; Prometheus text). The certificate and key files are read again when they
    /// change (a renewed cert-manager Secret), without a restart.
    ///
    /// Examples:
    ///   floodgatectl inject serve --listen 0.0.0.0:8443 --cert /tls/tls.crt --key /tls/tls.key
    ///   floodgatectl inject serve --listen 127.0.0.1:8443 --cert tls.crt --key tls.key --config-map web-floodgate
    #[command(verbatim_doc_comment)]
    Serve(Box<ServeArgs>),
    /// Make a self-signed certificate and key for the webhook (for clusters without
    /// cert-manager), write them as tls.crt and tls.key, and print the caBundle (the
    /// certificate, base64) for the MutatingWebhookConfiguration.
    ///
    /// Examples:
    ///   floodgatectl inject serve-cert --out-dir certs/
    ///   floodgatectl inject serve-cert --namespace floodgate-system --service floodgate-injector --out-dir certs/
    #[command(verbatim_doc_comment)]
    ServeCert(ServeCertArgs),
}

#[derive(Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on (HTTPS).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8443")]
    pub(crate) listen: std::net::SocketAddr,
    /// Certificate chain file (PEM; the Secret's tls.crt). Read again when it changes.
    #[arg(long, value_name = "FILE")]
    pub(crate) cert: std::path::PathBuf,
    /// Private key file (PEM; the Secret's tls.key). Read again when it changes.
    #[arg(long, value_name = "FILE")]
    pub(crate) key: std::path::PathBuf,
    #[command(flatten)]
    pub(crate) how: InjectOptions,
}

#[derive(Args)]
pub(crate) struct ServeCertArgs {
    /// The webhook Service's namespace (the certificate names
    /// SERVICE.NAMESPACE.svc and SERVICE.NAMESPACE.svc.cluster.local).
    #[arg(long, value_name = "NAME", default_value = "floodgate-system")]
    pub(crate) namespace: String,
    /// The webhook Service's name.
    #[arg(long, value_name = "NAME", default_value = "floodgate-injector")]
    pub(crate) service: String,
    /// More names the certificate is for (DNS names or IP addresses; repeatable), e.g.
    /// 127.0.0.1 for a local test.
    #[arg(long, value_name = "NAME")]
    pub(crate) extra_name: Vec<String>,
    /// Directory to write tls.crt and tls.key in (created if missing).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub(crate) out_dir: std::path::PathBuf,
}

/// How pods are injected: the same for files and for the webhook.
#[derive(Args)]
pub(crate) struct InjectOptions {
    /// ConfigMap with the Floodgate config (key: --config-key).
    #[arg(long, value_name = "NAME", default_value = "floodgate-config")]
    pub(crate) config_map: String,
    /// Key of the config file in the ConfigMap.
    #[arg(long, value_name = "KEY", default_value = "floodgate.yaml")]
    pub(crate) config_key: String,
    /// Secret with the admin tokens (files referenced by admin.tokens[].file under
    /// /etc/floodgate/tokens); an empty name mounts none.
    #[arg(long, value_name = "NAME", default_value = "floodgate-admin-tokens")]
    pub(crate) admin_secret: String,
    /// Front only this app port, declared or not (for an app that declares none); the same
    /// as --ports N.
    #[arg(long, value_name = "N", conflicts_with_all = ["ports", "skip_ports"])]
    pub(crate) upstream_port: Option<u16>,
    /// Front exactly these app ports (names or numbers, comma-separated: --ports http,grpc),
    /// each on its own Floodgate port. Default: every TCP port of the app container except
    /// metrics and health ports (a name with `metrics` or `health`, the pod's
    /// prometheus.io/port, a port only the app's probes use); every port left direct is named
    /// on standard error.
    #[arg(
        long,
        value_name = "PORTS",
        value_delimiter = ',',
        conflicts_with = "skip_ports"
    )]
    pub(crate) ports: Vec<String>,
    /// Leave these app ports (names or numbers, comma-separated) out of the default choice:
    /// they stay direct, bypassing Floodgate, and the notes say so.
    #[arg(long, value_name = "PORTS", value_delimiter = ',')]
    pub(crate) skip_ports: Vec<String>,
    /// The app's container (needed when several containers have ports).
    #[arg(long, value_name = "NAME")]
    pub(crate) container: Option<String>,
    /// Floodgate's image.
    #[arg(long, value_name = "IMAGE")]
    pub(crate) image: Option<String>,
    /// Floodgate's first inbound port; each further fronted app port gets the next free one
    /// (15081, 15082, ...).
    #[arg(long, value_name = "N", default_value_t = 15080)]
    pub(crate) listen_port: u16,
    /// Floodgate's metrics, /healthz and /readyz port.
    #[arg(long, value_name = "N", default_value_t = 15090)]
    pub(crate) metrics_port: u16,
    /// Serve the admin plane on this port of the pod IP; the config must then set admin.tls
    /// (or admin.allow_insecure: true). Default: the config's admin.listen, on loopback,
    /// reachable with `kubectl port-forward`.
    #[arg(long, value_name = "N")]
    pub(crate) admin_port: Option<u16>,
    /// Sidecar CPU request.
    #[arg(long, default_value = "100m")]
    pub(crate) cpu_request: String,
    /// Sidecar memory request.
    #[arg(long, default_value = "64Mi")]
    pub(crate) memory_request: String,
    /// Sidecar CPU limit (the runbook's CPU alerts are a share of it).
    #[arg(long, default_value = "1")]
    pub(crate) cpu_limit: String,
    /// Sidecar memory limit (a queued request costs ~27 KiB: 1000 queued ~ 27 MiB).
    #[arg(long, default_value = "256Mi")]
    pub(crate) memory_limit: String,
    /// Inject Floodgate as a plain container beside the app, for clusters older than
    /// Kubernetes 1.29 (1.28 with the SidecarContainers feature gate off). The default is a
    /// native sidecar (an initContainer with restartPolicy: Always; beta and on by default
    /// from 1.29, GA in 1.33): Floodgate starts and is ready before the app and stops after
    /// it, so no request reaches the app around it and its drain finishes while the app still
    /// answers. A classic sidecar gets SIGTERM together with the app.
    #[arg(long)]
    pub(crate) classic_sidecar: bool,
    /// The default since native sidecars became it; accepted so scripts that pass it keep
    /// working.
    #[arg(long, hide = true, conflicts_with = "classic_sidecar")]
    pub(crate) native_sidecar: bool,
}

impl InjectOptions {
    pub(crate) fn options(&self) -> floodgate_admin::inject::Options {
        let defaults = floodgate_admin::inject::Options::default();
        floodgate_admin::inject::Options {
            image: self.image.clone().unwrap_or(defaults.image),
            config_map: self.config_map.clone(),
            config_key: self.config_key.clone(),
            admin_secret: (!self.admin_secret.is_empty()).then(|| self.admin_secret.clone()),
            upstream_port: self.upstream_port,
            ports: self.ports.clone(),
            skip_ports: self.skip_ports.clone(),
            container: self.container.clone(),
            listen_port: self.listen_port,
            metrics_port: self.metrics_port,
            admin_port: self.admin_port,
            cpu_request: self.cpu_request.clone(),
            memory_request: self.memory_request.clone(),
            cpu_limit: self.cpu_limit.clone(),
            memory_limit: self.memory_limit.clone(),
            native_sidecar: self.native_sidecar || !self.classic_sidecar,
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum FleetCmd {
    /// Every expected sidecar (heard from in the last 5 minutes; stale ones, silent for 5 s,
    /// marked), its last-seen age, the fleet version it applied, and its load.
    Status,
}

#[derive(Subcommand)]
pub(crate) enum LimitsCmd {
    /// Show every limit with its current and baseline values.
    Show,
    /// Set one limit's max_requests (and window). Each is a knob of its own (`limit:NAME`,
    /// `window:NAME`) with its own TTL and reason: a later `set` without --window leaves a
    /// window override alone; `limits restore NAME` clears both.
    Set {
        /// Limit name (as in the config's `limits[].name`).
        name: String,
        /// New max_requests per window (at least 1; to stop a route, degrade it).
        #[arg(long)]
        max_requests: u64,
        /// New window in seconds (`window:NAME`); left as it is when not given.
        #[arg(long)]
        window: Option<u64>,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Multiply limits from their config baseline (the runbook's "raise limits x2").
    Scale {
        /// One limit (as in the config's `limits[].name`); or --all.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        /// Every limit.
        #[arg(long)]
        all: bool,
        /// Factor applied to the config baseline (2 doubles it, 0.5 halves it); above 0.
        #[arg(long)]
        multiplier: f64,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Back to the config baseline (the runbook's `--from-backup`).
    Restore {
        /// One limit (as in the config's `limits[].name`); or --all.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        /// Every limit.
        #[arg(long)]
        all: bool,
        /// Why; recorded in the audit log. Required with --fleet.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum DegradeCmd {
    /// Pin the level: full | degraded | minimal. The pin wins over automatic degradation
    /// until its --ttl runs out or `degrade clear` removes it.
    Set {
        /// The level: `full` (everything on), `degraded` or `minimal` (their features off).
        #[arg(value_parser = ["full", "degraded", "minimal"])]
        level: String,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Remove the pinned level (a schedule holding one is suspended until it next starts):
    /// the config's level and automatic degradation decide again. "Restore FULL" in the
    /// runbook is this, with `feature reset` for each feature switched by hand.
    Clear {
        /// Why; recorded in the audit log. Required with --fleet.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum FeatureCmd {
    /// Turn a feature off: its routes get their fallback.
    Disable {
        /// Feature name (as in the config's `routes[].feature`).
        name: String,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Turn a feature on, even where the level turns it off.
    Enable {
        /// Feature name (as in the config's `routes[].feature`).
        name: String,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Remove the feature's enable/disable override: the level in force decides again.
    Reset {
        /// Feature name (as in the config's `routes[].feature`).
        name: String,
        /// Why; recorded in the audit log. Required with --fleet.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum QueueCmd {
    /// Set how many requests may wait (queue.max_size).
    Resize {
        /// Requests that may wait, at least 1.
        #[arg(value_parser = clap::value_parser!(u32).range(1..))]
        size: u32,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Set how many requests may be in flight to the app (queue.max_concurrency).
    Workers {
        /// Requests that may be in flight at once, at least 1.
        #[arg(value_parser = clap::value_parser!(u32).range(1..))]
        count: u32,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Depth, capacity, in-flight and drain rate.
    Metrics,
}

#[derive(Subcommand)]
pub(crate) enum CacheCmd {
    /// Serve the aggressive_cache routes' GETs from the cache while fresh (the runbook's
    /// `aggressive_mode --ttl=300`): `cache aggressive on --ttl 5m`.
    Aggressive {
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[command(flatten)]
        change: ChangeArgs,
    },
}

#[derive(Subcommand)]
pub(crate) enum BreakersCmd {
    /// Hold a breaker open (the sidecar answers 503 circuit_open without calling the app) or
    /// closed (failures are not counted), until --ttl runs out or `overrides clear
    /// breaker:NAME` / `breakers reset NAME`.
    Force {
        /// The breaker: `upstream` or `feature:<name>` (as `floodgatectl breakers` lists them).
        name: String,
        /// `open` or `closed`.
        #[arg(value_parser = ["open", "closed"])]
        state: String,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Close a breaker and clear its counts: `upstream` or `feature:<name>`.
    Reset {
        /// The breaker: `upstream` or `feature:<name>` (as `floodgatectl breakers` lists them).
        name: String,
        /// Why; recorded in the audit log.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum OverridesCmd {
    /// Remove one override (`level`, `limit:NAME`, `feature:NAME`, `queue.max_size`,
    /// `queue.max_concurrency`, `aggressive_cache`) or `all`; a schedule holding the key is
    /// suspended until it next starts.
    Clear {
        /// The override's key (as `floodgatectl overrides` lists them), or `all`.
        key: String,
        /// Why; recorded in the audit log. Required with --fleet.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum ConfigCmd {
    /// Check a config file; every problem is printed with its line.
    Validate {
        /// The config file (YAML).
        file: std::path::PathBuf,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every subcommand, flag and argument says what it is for in `--help`.
    #[test]
    fn every_argument_and_subcommand_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let builtin = matches!(a.get_id().as_str(), "help" | "version");
                if !builtin && a.get_help().is_none() && !a.is_hide_set() {
                    missing.push(format!("{path} {}", a.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                let path = format!("{path} {}", sub.get_name());
                if sub.get_name() != "help" && sub.get_about().is_none() {
                    missing.push(path.clone());
                }
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "floodgatectl", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }

    #[test]
    fn ttl_is_whole_seconds_from_one_second_to_thirty_days() {
        assert_eq!(parse_ttl("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl("30d"), Ok(MAX_TTL));
        for bad in ["0s", "500ms", "31d", "400d", "1s 500ms"] {
            let e = parse_ttl(bad).unwrap_err();
            assert!(e.contains("from 1s to 30d"), "{bad}: {e}");
        }
        assert!(parse_ttl("soon").unwrap_err().contains("from 1s to 30d"));
    }

    #[test]
    fn top_polls_every_second_by_default_and_takes_fleet_after_the_subcommand() {
        let top = |args: &[&str]| {
            Cli::try_parse_from([&["floodgatectl"][..], args].concat()).map(|c| {
                let fleet = c.global.fleet;
                match c.command {
                    Command::Top { interval, once } => (interval, once, fleet),
                    _ => panic!("not top"),
                }
            })
        };
        assert_eq!(
            top(&["top"]).unwrap(),
            (Duration::from_secs(1), false, false)
        );
        assert_eq!(
            top(&["top", "--fleet", "--once", "--interval", "500ms"]).unwrap(),
            (Duration::from_millis(500), true, true)
        );
        for bad in ["50ms", "2h", "soon"] {
            assert!(top(&["top", "--interval", bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn wait_defaults_to_five_seconds_for_the_fleet_and_zero_turns_it_off() {
        let parse = |args: &[&str]| {
            let mut all = vec!["floodgatectl", "--fleet"];
            all.extend(args);
            Cli::try_parse_from(all).map(|c| c.global.wait())
        };
        let change = ["degrade", "set", "degraded", "--reason", "r"];
        assert_eq!(parse(&change).unwrap(), DEFAULT_WAIT);
        let with = |extra: &[&'static str]| {
            let mut v = change.to_vec();
            v.extend(extra);
            parse(&v)
        };
        assert_eq!(with(&["--wait"]).unwrap(), DEFAULT_WAIT);
        assert_eq!(with(&["--wait", "3s"]).unwrap(), Duration::from_secs(3));
        assert_eq!(with(&["--wait", "0"]).unwrap(), Duration::ZERO);
        assert_eq!(with(&["--no-wait"]).unwrap(), Duration::ZERO);
        assert!(with(&["--wait", "1h"]).is_err());
        assert!(with(&["--wait", "3s", "--no-wait"]).is_err());
    }
}
