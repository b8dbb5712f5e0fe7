//! `floodgatectl`: the on-call engineer's command line for a Floodgate sidecar's admin plane.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use floodgate_admin::pb;
use floodgate_admin::pb::admin_client::AdminClient;
use tonic::transport::Channel;

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
///
/// Exit codes: 0 done, 2 bad arguments, 3 sidecar unreachable, 4 not authorised,
/// 5 refused (unknown name, invalid value), 1 anything else.
#[derive(Parser)]
#[command(version, verbatim_doc_comment)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Global {
    /// Admin address of the sidecar (its `admin.listen`).
    #[arg(
        long,
        global = true,
        env = "FLOODGATE_ADDR",
        default_value = "127.0.0.1:9901",
        help_heading = "Sidecar connection"
    )]
    addr: String,
    /// File holding the bearer token (an operator token to change, a viewer token to read).
    #[arg(
        long,
        global = true,
        env = "FLOODGATE_TOKEN_FILE",
        help_heading = "Sidecar connection"
    )]
    token_file: Option<String>,
    /// How to print: `table` for people, `json` for scripts.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table, help_heading = "Sidecar connection")]
    output: Output,
    /// Apply a change to every sidecar of the fleet (stored in Redis), not only this one.
    #[arg(long, global = true, help_heading = "Sidecar connection")]
    fleet: bool,
    /// CA certificate (PEM) to verify the sidecar's admin.tls certificate; turns on TLS.
    #[arg(
        long,
        global = true,
        env = "FLOODGATE_CA_FILE",
        help_heading = "Sidecar connection"
    )]
    ca_file: Option<String>,
    /// Client certificate (PEM) for a sidecar that requires mutual TLS (with --key-file).
    #[arg(
        long,
        global = true,
        env = "FLOODGATE_CERT_FILE",
        requires = "key_file",
        help_heading = "Sidecar connection"
    )]
    cert_file: Option<String>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        global = true,
        env = "FLOODGATE_KEY_FILE",
        requires = "cert_file",
        help_heading = "Sidecar connection"
    )]
    key_file: Option<String>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Output {
    Table,
    Json,
}

/// Why and for how long; every change takes these.
#[derive(Args, Clone)]
struct ChangeArgs {
    /// Revert by itself after this long (e.g. 30m, 1h, 90s); default: until cleared.
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,
    /// Why; recorded in the audit log.
    #[arg(long, default_value = "")]
    reason: String,
}

impl ChangeArgs {
    fn pb(&self, fleet: bool) -> pb::Change {
        pb::Change {
            reason: self.reason.clone(),
            ttl_seconds: self.ttl.map_or(0, |d| d.as_secs().max(1)),
            fleet,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Level, limits, queue, breakers and load indicators of the sidecar.
    Status,
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
        #[command(subcommand)]
        cmd: Option<BreakersCmd>,
    },
    /// Overrides in force: list, or `clear KEY|all`.
    Overrides {
        #[command(subcommand)]
        cmd: Option<OverridesCmd>,
    },
    /// The latest audit log entries (JSON lines).
    Audit {
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Print changes as they happen (overrides, levels, breakers) until interrupted.
    Watch,
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
    /// Floodgate takes over the name of the app's port (e.g. `http`) on a port of its own
    /// (--listen-port) and forwards to the app on 127.0.0.1; the app's port is renamed (`app-http`)
    /// and the app is not changed. Services that target the port by name keep working; Services in
    /// the same input that target it by number are pointed at the name. Also added: the config from
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
    Inject(InjectArgs),
}

#[derive(Args)]
struct InjectArgs {
    /// File to read, a directory (its .yaml and .yml files, by name, as one stream), or `-` for
    /// standard input.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    file: String,
    /// ConfigMap with the Floodgate config (key: --config-key).
    #[arg(long, value_name = "NAME", default_value = "floodgate-config")]
    config_map: String,
    /// Key of the config file in the ConfigMap.
    #[arg(long, value_name = "KEY", default_value = "floodgate.yaml")]
    config_key: String,
    /// Secret with the admin tokens (files referenced by admin.tokens[].file under
    /// /etc/floodgate/tokens); an empty name mounts none.
    #[arg(long, value_name = "NAME", default_value = "floodgate-admin-tokens")]
    admin_secret: String,
    /// The app's port Floodgate fronts (needed when the app has several or declares none).
    #[arg(long, value_name = "N")]
    upstream_port: Option<u16>,
    /// The app's container (needed when several containers have ports).
    #[arg(long, value_name = "NAME")]
    container: Option<String>,
    /// Floodgate's image.
    #[arg(long, value_name = "IMAGE")]
    image: Option<String>,
    /// Floodgate's inbound port.
    #[arg(long, value_name = "N", default_value_t = 15080)]
    listen_port: u16,
    /// Floodgate's metrics, /healthz and /readyz port.
    #[arg(long, value_name = "N", default_value_t = 15090)]
    metrics_port: u16,
    /// Serve the admin plane on this port of the pod IP; the config must then set admin.tls
    /// (or admin.allow_insecure: true). Default: the config's admin.listen, on loopback,
    /// reachable with `kubectl port-forward`.
    #[arg(long, value_name = "N")]
    admin_port: Option<u16>,
    /// Sidecar CPU request.
    #[arg(long, default_value = "100m")]
    cpu_request: String,
    /// Sidecar memory request.
    #[arg(long, default_value = "64Mi")]
    memory_request: String,
    /// Sidecar CPU limit (the runbook's CPU alerts are a share of it).
    #[arg(long, default_value = "1")]
    cpu_limit: String,
    /// Sidecar memory limit (a queued request costs ~27 KiB: 1000 queued ~ 27 MiB).
    #[arg(long, default_value = "256Mi")]
    memory_limit: String,
    /// Inject a Kubernetes native sidecar (an initContainer with restartPolicy: Always;
    /// Kubernetes 1.29+): Floodgate starts and is ready before the app and stops after it, so
    /// no request reaches the app around it and its drain finishes while the app still answers.
    #[arg(long)]
    native_sidecar: bool,
}

impl InjectArgs {
    fn options(&self) -> floodgate_admin::inject::Options {
        let defaults = floodgate_admin::inject::Options::default();
        floodgate_admin::inject::Options {
            image: self.image.clone().unwrap_or(defaults.image),
            config_map: self.config_map.clone(),
            config_key: self.config_key.clone(),
            admin_secret: (!self.admin_secret.is_empty()).then(|| self.admin_secret.clone()),
            upstream_port: self.upstream_port,
            container: self.container.clone(),
            listen_port: self.listen_port,
            metrics_port: self.metrics_port,
            admin_port: self.admin_port,
            cpu_request: self.cpu_request.clone(),
            memory_request: self.memory_request.clone(),
            cpu_limit: self.cpu_limit.clone(),
            memory_limit: self.memory_limit.clone(),
            native_sidecar: self.native_sidecar,
        }
    }
}

fn inject(a: &InjectArgs) -> Result<(), Failure> {
    use std::io::{Read, Write};
    let mut input = String::new();
    if a.file == "-" {
        std::io::stdin()
            .read_to_string(&mut input)
            .map_err(|e| Failure(2, format!("cannot read standard input: {e}")))?;
    } else if std::path::Path::new(&a.file).is_dir() {
        // As kubectl: every .yaml/.yml file of the directory (not below it), by name, as one
        // stream.
        let unreadable =
            |e: std::io::Error| Failure(2, format!("-f `{}` cannot be read: {e}", a.file));
        let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&a.file)
            .map_err(unreadable)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Failure(
                2,
                format!("-f `{}`: no .yaml or .yml files in it", a.file),
            ));
        }
        for f in files {
            let text = std::fs::read_to_string(&f)
                .map_err(|e| Failure(2, format!("`{}` cannot be read: {e}", f.display())))?;
            if !input.is_empty() {
                if !input.ends_with('\n') {
                    input.push('\n');
                }
                input.push_str("---\n");
            }
            input.push_str(&text);
        }
    } else {
        input = std::fs::read_to_string(&a.file)
            .map_err(|e| Failure(2, format!("-f `{}` cannot be read: {e}", a.file)))?;
    }
    let done = floodgate_admin::inject::inject(&input, &a.options())
        .map_err(|e| Failure(5, format!("nothing written: {e}")))?;
    for n in &done.notes {
        eprintln!("floodgatectl inject: {n}");
    }
    std::io::stdout()
        .write_all(done.output.as_bytes())
        .map_err(|e| Failure(1, format!("cannot write standard output: {e}")))
}

#[derive(Subcommand)]
enum FleetCmd {
    /// Every live sidecar, whether it applied the latest fleet overrides, and its load.
    Status,
}

#[derive(Subcommand)]
enum LimitsCmd {
    /// Show every limit with its current and baseline values.
    Show,
    /// Set one limit's max_requests (and window).
    Set {
        /// Limit name (as in the config's `limits[].name`).
        name: String,
        #[arg(long)]
        max_requests: u64,
        /// New window in seconds.
        #[arg(long)]
        window: Option<u64>,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Multiply limits from their config baseline (the runbook's "raise limits x2").
    Scale {
        /// One limit; or --all.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        multiplier: f64,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Back to the config baseline (the runbook's `--from-backup`).
    Restore {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        #[arg(long)]
        all: bool,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand)]
enum DegradeCmd {
    /// full | degraded | minimal.
    Set {
        #[arg(value_parser = ["full", "degraded", "minimal"])]
        level: String,
        #[command(flatten)]
        change: ChangeArgs,
    },
}

#[derive(Subcommand)]
enum FeatureCmd {
    /// Turn a feature off: its routes get their fallback.
    Disable {
        name: String,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Turn a feature on, even where the level turns it off.
    Enable {
        name: String,
        #[command(flatten)]
        change: ChangeArgs,
    },
}

#[derive(Subcommand)]
enum QueueCmd {
    /// Set how many requests may wait (queue.max_size).
    Resize {
        #[arg(value_parser = clap::value_parser!(u32).range(1..))]
        size: u32,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Set how many requests may be in flight to the app (queue.max_concurrency).
    Workers {
        #[arg(value_parser = clap::value_parser!(u32).range(1..))]
        count: u32,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Depth, capacity, in-flight and drain rate.
    Metrics,
}

#[derive(Subcommand)]
enum CacheCmd {
    /// Serve the aggressive_cache routes' GETs from the cache while fresh (the runbook's
    /// `aggressive_mode --ttl=300`): `cache aggressive on --ttl 5m`.
    Aggressive {
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[command(flatten)]
        change: ChangeArgs,
    },
}

#[derive(Subcommand)]
enum BreakersCmd {
    /// Close a breaker and clear its counts: `upstream` or `feature:<name>`.
    Reset {
        name: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand)]
enum OverridesCmd {
    /// Remove one override (`level`, `limit:NAME`, `feature:NAME`, `queue`) or `all`.
    Clear {
        key: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Check a config file; every problem is printed with its line.
    Validate { file: std::path::PathBuf },
}

/// A failure with the exit code scripts rely on.
struct Failure(u8, String);

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        use tonic::Code::*;
        let code = match s.code() {
            Unauthenticated | PermissionDenied => 4,
            InvalidArgument | NotFound | FailedPrecondition => 5,
            Unavailable | DeadlineExceeded => 3,
            _ => 1,
        };
        let what = match s.code() {
            Unauthenticated => "not authenticated",
            PermissionDenied => "not allowed",
            InvalidArgument => "invalid argument",
            NotFound => "not found",
            Unavailable => "sidecar unreachable",
            _ => "refused",
        };
        Failure(code, format!("{what}: {}", s.message()))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, msg)) => {
            eprintln!("floodgatectl: {msg}");
            ExitCode::from(code)
        }
    }
}

async fn connect(g: &Global) -> Result<AdminClient<Channel>, Failure> {
    let scheme = if g.ca_file.is_some() { "https" } else { "http" };
    let url = if g.addr.contains("://") {
        g.addr.clone()
    } else {
        format!("{scheme}://{}", g.addr)
    };
    let mut endpoint = Channel::from_shared(url.clone())
        .map_err(|e| Failure(2, format!("--addr `{}` is not an address: {e}", g.addr)))?
        .connect_timeout(Duration::from_secs(3));
    if let Some(ca) = &g.ca_file {
        let read = |f: &str, flag: &str| {
            std::fs::read(f).map_err(|e| Failure(2, format!("{flag} `{f}` cannot be read: {e}")))
        };
        let mut tls = tonic::transport::ClientTlsConfig::new().ca_certificate(
            tonic::transport::Certificate::from_pem(read(ca, "--ca-file")?),
        );
        if let (Some(c), Some(k)) = (&g.cert_file, &g.key_file) {
            tls = tls.identity(tonic::transport::Identity::from_pem(
                read(c, "--cert-file")?,
                read(k, "--key-file")?,
            ));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| Failure(2, format!("TLS settings refused: {e}")))?;
    }
    let channel = endpoint.connect().await.map_err(|e| {
        Failure(
            3,
            format!(
                "cannot reach the sidecar's admin plane at {url}: {e} (is admin.listen set, and is --addr right?)"
            ),
        )
    })?;
    Ok(AdminClient::new(channel))
}

fn token(g: &Global) -> Result<Option<String>, Failure> {
    if let Ok(t) = std::env::var("FLOODGATE_TOKEN") {
        return Ok(Some(t.trim().to_string()));
    }
    let Some(file) = &g.token_file else {
        return Ok(None);
    };
    let t = std::fs::read_to_string(file)
        .map_err(|e| Failure(2, format!("--token-file `{file}` cannot be read: {e}")))?;
    Ok(Some(t.trim().to_string()))
}

/// A unary call: answered within 10 s or failed.
fn request<T>(msg: T, token: &Option<String>) -> Result<tonic::Request<T>, Failure> {
    let mut r = stream_request(msg, token)?;
    r.set_timeout(Duration::from_secs(10));
    Ok(r)
}

/// A streaming call: open until interrupted.
fn stream_request<T>(msg: T, token: &Option<String>) -> Result<tonic::Request<T>, Failure> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = token {
        let v = format!("Bearer {t}")
            .parse()
            .map_err(|_| Failure(2, "the token holds characters a header cannot carry".into()))?;
        r.metadata_mut().insert("authorization", v);
    }
    Ok(r)
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    );
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let g = &cli.global;
    if let Command::Inject(a) = &cli.command {
        return inject(a);
    }
    if let Command::Config(ConfigCmd::Validate { file }) = &cli.command {
        return match floodgate_config::load(file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                Ok(())
            }
            Err(e) => Err(Failure(5, e.to_string())),
        };
    }
    let token = token(g)?;
    let mut c = connect(g).await?;
    let json = g.output == Output::Json;
    let fleet = g.fleet;
    let change = |reply: pb::ChangeReply| {
        if json {
            print_json(&reply);
        } else {
            println!("{}", reply.summary);
            print_overrides(&reply.overrides);
        }
    };
    match cli.command {
        Command::Status => {
            let s = c
                .status(request(pb::StatusRequest {}, &token)?)
                .await?
                .into_inner();
            if json {
                print_json(&s);
            } else {
                print_status(&s);
                if s.overrides > 0 {
                    // Which overrides, scheduled ones included, with their expiry.
                    let o = c
                        .list_overrides(request(pb::ListOverridesRequest {}, &token)?)
                        .await?
                        .into_inner();
                    println!();
                    println!("overrides:");
                    print_overrides(&o.overrides);
                }
            }
        }
        Command::Limits(LimitsCmd::Show) => {
            let s = c
                .status(request(pb::StatusRequest {}, &token)?)
                .await?
                .into_inner();
            if json {
                print_json(&s.limits);
            } else {
                print_limits(&s.limits);
            }
        }
        Command::Limits(LimitsCmd::Set {
            name,
            max_requests,
            window,
            change: a,
        }) => {
            let req = pb::SetLimitRequest {
                name,
                max_requests,
                window_seconds: window.unwrap_or(0),
                change: Some(a.pb(fleet)),
            };
            change(c.set_limit(request(req, &token)?).await?.into_inner());
        }
        Command::Limits(LimitsCmd::Scale {
            name,
            multiplier,
            change: a,
            ..
        }) => {
            let req = pb::ScaleLimitsRequest {
                name: name.unwrap_or_default(),
                multiplier,
                change: Some(a.pb(fleet)),
            };
            change(c.scale_limits(request(req, &token)?).await?.into_inner());
        }
        Command::Limits(LimitsCmd::Restore { name, reason, .. }) => {
            let req = pb::RestoreLimitsRequest {
                name: name.unwrap_or_default(),
                reason,
                fleet,
            };
            change(c.restore_limits(request(req, &token)?).await?.into_inner());
        }
        Command::Degrade(DegradeCmd::Set { level, change: a }) => {
            let req = pb::SetLevelRequest {
                level,
                change: Some(a.pb(fleet)),
            };
            change(c.set_level(request(req, &token)?).await?.into_inner());
        }
        Command::Feature(cmd) => {
            let (name, enabled, a) = match cmd {
                FeatureCmd::Disable { name, change } => (name, false, change),
                FeatureCmd::Enable { name, change } => (name, true, change),
            };
            let req = pb::SetFeatureRequest {
                name,
                enabled,
                change: Some(a.pb(fleet)),
            };
            change(c.set_feature(request(req, &token)?).await?.into_inner());
        }
        Command::Queue(QueueCmd::Metrics) => {
            let s = c
                .status(request(pb::StatusRequest {}, &token)?)
                .await?
                .into_inner();
            let q = s.queue.unwrap_or_default();
            if json {
                print_json(&q);
            } else if !q.configured {
                println!("no queue configured (in flight to the app: {})", q.inflight);
            } else {
                println!(
                    "Queue size: {}/{}  in flight: {}/{}  drain: {:.1}/s",
                    q.depth, q.max_size, q.inflight, q.max_concurrency, q.drain_rate_per_second
                );
            }
        }
        Command::Queue(QueueCmd::Resize { size, change: a }) => {
            let req = pb::SetQueueRequest {
                max_size: size,
                max_concurrency: 0,
                change: Some(a.pb(fleet)),
            };
            change(c.set_queue(request(req, &token)?).await?.into_inner());
        }
        Command::Queue(QueueCmd::Workers { count, change: a }) => {
            let req = pb::SetQueueRequest {
                max_size: 0,
                max_concurrency: count,
                change: Some(a.pb(fleet)),
            };
            change(c.set_queue(request(req, &token)?).await?.into_inner());
        }
        Command::Cache(CacheCmd::Aggressive { state, change: a }) => {
            let req = pb::SetAggressiveCacheRequest {
                enabled: state == "on",
                change: Some(a.pb(fleet)),
            };
            change(
                c.set_aggressive_cache(request(req, &token)?)
                    .await?
                    .into_inner(),
            );
        }
        Command::Breakers { cmd: None } => {
            let s = c
                .status(request(pb::StatusRequest {}, &token)?)
                .await?
                .into_inner();
            if json {
                print_json(&s.breakers);
            } else if s.breakers.is_empty() {
                println!("no circuit breakers configured");
            } else {
                for b in &s.breakers {
                    println!("{:<32} {}", b.name, b.state);
                }
            }
        }
        Command::Breakers {
            cmd: Some(BreakersCmd::Reset { name, reason }),
        } => {
            let req = pb::ResetBreakerRequest { name, reason };
            change(c.reset_breaker(request(req, &token)?).await?.into_inner());
        }
        Command::Overrides { cmd: None } => {
            let o = c
                .list_overrides(request(pb::ListOverridesRequest {}, &token)?)
                .await?
                .into_inner();
            if json {
                print_json(&o.overrides);
            } else if o.overrides.is_empty() {
                println!("no overrides: everything is as the config file says");
            } else {
                print_overrides(&o.overrides);
            }
        }
        Command::Overrides {
            cmd: Some(OverridesCmd::Clear { key, reason }),
        } => {
            let req = pb::ClearOverrideRequest { key, reason, fleet };
            change(c.clear_override(request(req, &token)?).await?.into_inner());
        }
        Command::Audit { limit } => {
            let a = c
                .audit(request(pb::AuditRequest { limit }, &token)?)
                .await?
                .into_inner();
            for e in a.entries {
                println!("{e}");
            }
        }
        Command::Fleet(FleetCmd::Status) => {
            let f = c
                .fleet_status(request(pb::FleetStatusRequest {}, &token)?)
                .await?
                .into_inner();
            if json {
                print_json(&f);
            } else {
                print_fleet(&f);
            }
        }
        Command::Watch => {
            let mut stream = c
                .watch(stream_request(pb::WatchRequest {}, &token)?)
                .await?
                .into_inner();
            use std::io::Write;
            let mut out = std::io::stdout();
            while let Some(e) = stream.message().await? {
                let line = if json {
                    serde_json::to_string(&e).unwrap_or_default()
                } else {
                    let t = std::time::UNIX_EPOCH + Duration::from_millis(e.time_ms);
                    format!(
                        "{} {:<8} {}",
                        humantime::format_rfc3339_seconds(t),
                        e.kind,
                        e.summary
                    )
                };
                // A closed pipe (`| head`) ends the watch quietly.
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    return Ok(());
                }
            }
        }
        Command::Config(_) | Command::Inject(_) => {}
    }
    Ok(())
}

fn threshold(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v}")
    }
}

fn print_status(s: &pb::StatusReply) {
    let d = s.degradation.clone().unwrap_or_default();
    println!(
        "config version {}   upstream {}   load {}",
        s.config_version,
        s.upstream,
        s.level.to_uppercase()
    );
    let manual = if d.manual_level.is_empty() {
        String::new()
    } else {
        format!(" (manual {})", d.manual_level)
    };
    let off = if d.disabled_features.is_empty() {
        "none".to_string()
    } else {
        d.disabled_features.join(", ")
    };
    println!(
        "degradation {}{manual}, automatic {}; features off: {off}; aggressive cache {}",
        d.level,
        d.auto_level,
        if d.aggressive_cache { "on" } else { "off" }
    );
    if let Some(q) = &s.queue {
        if q.configured {
            println!(
                "queue {}/{} waiting, {}/{} in flight, draining {:.1}/s",
                q.depth, q.max_size, q.inflight, q.max_concurrency, q.drain_rate_per_second
            );
        }
    }
    for b in &s.breakers {
        println!("breaker {} {}", b.name, b.state);
    }
    println!(
        "overrides in force: {}   fleet sync: {} (version {})",
        s.overrides, s.fleet, s.fleet_version
    );
    println!();
    print_limits(&s.limits);
    println!();
    println!(
        "{:<16} {:>12} {:>10} {:>10}  level",
        "indicator", "value", "warning", "critical"
    );
    for i in &s.indicators {
        println!(
            "{:<16} {:>12.3} {:>10} {:>10}  {}",
            i.name,
            i.value,
            threshold(i.warning),
            threshold(i.critical),
            i.level
        );
    }
}

fn print_limits(limits: &[pb::Limit]) {
    if limits.is_empty() {
        println!("no rate limits configured");
        return;
    }
    println!(
        "{:<24} {:<7} {:>14} {:>9} {:>14} {:>9} {:>6}",
        "limit", "scope", "max_requests", "window_s", "baseline", "window_s", "used"
    );
    for l in limits {
        println!(
            "{:<24} {:<7} {:>14} {:>9} {:>14} {:>9} {:>5.0}%",
            l.name,
            l.scope,
            l.max_requests,
            l.window_seconds,
            l.baseline_max_requests,
            l.baseline_window_seconds,
            l.utilization * 100.0
        );
    }
}

fn print_fleet(f: &pb::FleetStatusReply) {
    let applied = f
        .sidecars
        .iter()
        .filter(|s| s.applied_version >= f.version)
        .count();
    println!(
        "fleet override version {}: applied on {applied}/{}",
        f.version,
        f.sidecars.len()
    );
    println!(
        "{:<40} {:<20} {:>8} {:>8} {:>10} {:>8} {:>9} {:>5}",
        "sidecar", "pod", "config", "applied", "rps", "errors", "p95_ms", "seen"
    );
    for s in &f.sidecars {
        println!(
            "{:<40} {:<20} {:>8} {:>8} {:>10.1} {:>7.2}% {:>9.1} {:>4}s",
            s.id,
            s.pod,
            s.config_version,
            s.applied_version,
            s.rps,
            s.error_rate * 100.0,
            s.p95_ms,
            s.seen_seconds_ago
        );
    }
    let total: f64 = f.sidecars.iter().map(|s| s.rps).sum();
    if total > 0.0 && !f.sidecars.is_empty() {
        let mean = total / f.sidecars.len() as f64;
        let max = f.sidecars.iter().map(|s| s.rps).fold(0.0, f64::max);
        println!(
            "load distribution: {total:.1} rps in all, busiest at {:.0}% of the mean",
            max / mean * 100.0
        );
    }
}

fn print_overrides(o: &[pb::Override]) {
    for o in o {
        let expires = if o.expires_at == 0 {
            "until cleared".to_string()
        } else {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            format!("{} s left", o.expires_at.saturating_sub(now))
        };
        println!(
            "  {:<24} {:<36} {:<16} {:<6} by {} ({})",
            o.key, o.value, expires, o.scope, o.author, o.reason
        );
    }
}
