//! `floodgate`: runs the sidecar (`floodgate --config FILE`) or checks config files
//! (`floodgate validate FILE...`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use floodgate::endpoint::EndpointService;
use floodgate::metrics::Metrics;
use floodgate::reload::ReloadService;
use floodgate::shell::Floodgate;
use floodgate::shutdown::Signals;
use floodgate::state::{Base, Runtime};
use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;
use tracing::{error, info};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Floodgate: a rate-limiting and degradation sidecar proxy.
///
/// Runs in front of one application instance and forwards its inbound HTTP/1.1 and h2c
/// (gRPC) traffic. The config file is watched: a valid change is applied within a second
/// without dropping requests, an invalid one is logged and ignored (SIGHUP forces a reload).
/// SIGTERM drains in-flight requests, then exits 0.
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true, after_help = EXAMPLES)]
struct Cli {
    /// Config file to run with (YAML; see config/reference.yaml).
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Inbound address, replacing the file's `listen` (a sidecar injector sets the pod's port
    /// here, so one ConfigMap can serve apps on different ports).
    #[arg(long, value_name = "ADDR", env = "FLOODGATE_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// The app's `host:port`, replacing the file's `upstream.address`.
    #[arg(long, value_name = "HOST:PORT", env = "FLOODGATE_UPSTREAM")]
    upstream: Option<String>,
    /// A listener `NAME=LISTEN,UPSTREAM[,PROTOCOL]` (e.g. `grpc=0.0.0.0:15081,127.0.0.1:9999,h2c`);
    /// repeat for each port. Given, the listeners are exactly these, each keeping the timeouts
    /// and protocol of the file's listener of that name (the one-listener form's is `default`);
    /// PROTOCOL (auto, http1 or h2c) replaces the protocol.
    /// The environment takes several separated by spaces. Not with --listen/--upstream.
    #[arg(
        long = "listener",
        value_name = "NAME=LISTEN,UPSTREAM[,PROTOCOL]",
        env = "FLOODGATE_LISTENERS",
        value_delimiter = ' ',
        conflicts_with_all = ["listen", "upstream"]
    )]
    listeners: Vec<floodgate_config::ListenerWiring>,
    /// Metrics, /healthz and /readyz address, replacing (or setting) `metrics.listen`.
    #[arg(long, value_name = "ADDR", env = "FLOODGATE_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Admin plane address, replacing `admin.listen` (the file must have an `admin` section).
    #[arg(long, value_name = "ADDR", env = "FLOODGATE_ADMIN_LISTEN")]
    admin_listen: Option<std::net::SocketAddr>,
    #[command(subcommand)]
    command: Option<Command>,
}

const EXAMPLES: &str = "Examples:
  floodgate --config config/examples/quickstart.yaml
  floodgate --config /etc/floodgate/config/floodgate.yaml \\
      --listen 0.0.0.0:15080 --upstream 127.0.0.1:8080 --metrics-listen 0.0.0.0:15090
  floodgate --config floodgate.yaml --listener http=0.0.0.0:15080,127.0.0.1:9898 \\
      --listener grpc=0.0.0.0:15081,127.0.0.1:9999
  floodgate validate /etc/floodgate/floodgate.yaml
  floodgate schema > floodgate.schema.json
  floodgate health --addr 127.0.0.1:15090     (exit 0 when /readyz answers 200)

Metrics, /healthz and /readyz are served on `metrics.listen`. Logs go to stderr; set
RUST_LOG (e.g. RUST_LOG=debug) to change what is logged.";

#[derive(Subcommand)]
enum Command {
    /// Check config files: prints every error with file, line, field and reason; exit 1 if any.
    Validate {
        /// Files to check.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Print the JSON Schema of the config file (for editor completion and checks).
    Schema,
    /// Ask a running sidecar's /readyz (or /healthz): exit 0 if it answers 200, 1 if not.
    /// For container health checks in images that have no curl.
    Health {
        /// The sidecar's metrics address.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15090")]
        addr: std::net::SocketAddr,
        /// Ask /healthz (the process answers) instead of /readyz (ready for traffic).
        #[arg(long)]
        live: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let wiring = floodgate_config::Wiring {
        listen: cli.listen,
        upstream: cli.upstream,
        metrics_listen: cli.metrics_listen,
        admin_listen: cli.admin_listen,
        listeners: cli.listeners,
    };
    match (cli.command, cli.config) {
        (Some(Command::Validate { files }), _) => validate(&files),
        (Some(Command::Health { addr, live }), _) => {
            let path = if live { "/healthz" } else { "/readyz" };
            match floodgate::endpoint::probe(addr, path, Duration::from_secs(2)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("floodgate health: {addr}{path}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        (Some(Command::Schema), _) => {
            print!("{}", floodgate_config::json_schema());
            ExitCode::SUCCESS
        }
        (None, Some(config)) => run(config, wiring),
        (None, None) => {
            eprintln!("floodgate: nothing to do; give --config FILE to run, or `floodgate validate FILE`.\nTry `floodgate --help`.");
            ExitCode::from(2)
        }
    }
}

fn validate(files: &[PathBuf]) -> ExitCode {
    let mut bad = false;
    for f in files {
        match floodgate_config::load(f) {
            Ok(cfg) => {
                println!("{}: ok", f.display());
                for n in floodgate_config::notes(&cfg) {
                    eprintln!("{}: note: {n}", f.display());
                }
            }
            Err(e) => {
                bad = true;
                eprint!("{e}");
                if matches!(e, floodgate_config::LoadError::Io { .. }) {
                    eprintln!();
                }
            }
        }
    }
    if bad {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn run(path: PathBuf, wiring: floodgate_config::Wiring) -> ExitCode {
    let config = match wiring.load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("floodgate: not starting: {e}");
            return ExitCode::FAILURE;
        }
    };
    floodgate::logging::init(config.logging.format);
    match start(path, wiring, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            error!("not starting: {msg}");
            floodgate::logging::flush();
            eprintln!("floodgate: not starting: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn start(
    path: PathBuf,
    wiring: floodgate_config::Wiring,
    config: floodgate_config::Config,
) -> Result<(), String> {
    let metrics = Metrics::with_listener_label(config.named_listeners)
        .map_err(|e| format!("metrics: {e}"))?;
    for n in floodgate_config::notes(&config) {
        tracing::info!("config note: {n}");
    }
    let listens: Vec<(String, std::net::SocketAddr)> = config
        .listeners
        .iter()
        .map(|l| (config.listen_key(&l.name), l.listen))
        .collect();
    let metrics_listen = config.metrics_listen;
    let server_cfg = config.server.clone();
    let clock = floodgate_policy::Clock::monotonic();
    let snapshot = Base::build(config, 1, &metrics, None, &clock).map_err(|e| e.to_string())?;
    let global_limits = snapshot
        .config
        .limits
        .iter()
        .any(|l| l.scope == floodgate_config::Scope::Global);
    if global_limits && snapshot.config.redis.is_none() {
        tracing::warn!(
            "no `redis` configured: scope: global limits are enforced per sidecar, each at its full max_requests"
        );
    }
    let admin = match &snapshot.config.admin {
        Some(a) => {
            let tls = match &a.tls {
                Some(t) => Some(floodgate_admin::service::tls_config(
                    &t.cert_file,
                    &t.key_file,
                    t.client_ca_file.as_deref(),
                )?),
                None => {
                    // Validation refuses this unless `admin.allow_insecure` says it is meant.
                    if !a.listen.ip().to_canonical().is_loopback() {
                        tracing::warn!(
                            listen = %a.listen,
                            "admin.allow_insecure: admin.listen is not on loopback and has no admin.tls: tokens cross the network in the clear"
                        );
                    }
                    None
                }
            };
            Some((
                floodgate_admin::auth::Tokens::load(&a.tokens).map_err(|e| e.to_string())?,
                tls,
                std::net::TcpListener::bind(a.listen)
                    .map_err(|e| format!("cannot listen on `admin.listen` {}: {e}", a.listen))?,
            ))
        }
        None => None,
    };
    let rt = Runtime::new(snapshot, path, wiring, metrics, clock);

    // Bind what we can up front so a taken port is a clear start-up error, not a log line.
    for (key, listen) in &listens {
        std::net::TcpListener::bind(listen)
            .map_err(|e| format!("cannot listen on `{key}` {listen}: {e}"))?;
    }
    let metrics_listener = match metrics_listen {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .map_err(|e| format!("cannot listen on `metrics.listen` {addr}: {e}"))?,
        ),
        None => None,
    };

    let conf = ServerConf {
        threads: server_cfg.threads,
        grace_period_seconds: Some(server_cfg.drain_timeout.as_secs().max(1)),
        graceful_shutdown_timeout_seconds: Some(1),
        // Every pingora timeout of 1 s or more on tokio's timer, none on pingora-timeout's
        // "fast" one: that one's clock thread, started by the first fast timeout (every
        // accepted connection's 60 s handshake timeout, so the readiness check's), wakes every
        // 10 ms for the life of the process, which was nearly all of an idle sidecar's CPU.
        // Sub-second timeouts and pingora's own `sleep`s (HTTP/2 idle connections) still
        // start it: see bench/README.md, "Peers and idle CPU".
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    // One pingora service per listener: each port's requests know their listener, and with
    // it their upstream, queue and breaker.
    for (index, (_, listen)) in listens.iter().enumerate() {
        let shell = Floodgate::new(rt.clone(), index)
            .ok_or_else(|| format!("listener {index} has no runtime state"))?;
        let mut app = pingora_proxy::http_proxy(&server.configuration, shell);
        let mut opts = HttpServerOptions::default();
        opts.h2c = true;
        // An idle h2c connection would otherwise hold one of server.max_connections for ever.
        opts.h2_idle_timeout = Some(server_cfg.keepalive_timeout);
        app.server_options = Some(opts);
        // The connection cap and head deadline stand in front of pingora's HTTP handling.
        let name = &rt.lanes[index].name;
        // HTTP/1.1's plain requests take the fast path; the rest go on to pingora-proxy.
        let fast = floodgate::lean::Lean::new(
            Floodgate::new(rt.clone(), index)
                .ok_or_else(|| format!("listener {index} has no runtime state"))?,
            app,
        );
        let mut proxy = Service::new(
            format!("floodgate proxy ({name})"),
            floodgate::conn::Bounded::new(fast, rt.clone()),
        );
        // No L4 read buffer: pingora's default is 64 KiB per connection, which made each queued
        // request cost ~94 KB of resident memory (10,000 queued: ~900 MiB). Plaintext HTTP reads
        // into pingora's own header buffer directly, so the buffer saves no syscalls here.
        // No L4 write buffer either: the fast path writes each head and body in one call,
        // and pingora's 1.4 KiB buffer was held by every open connection, queued or idle.
        proxy.add_listener(
            ListenerConfig::tcp(listen.to_string())
                .l4_buffer(L4BufferSettings::default().read(0).write(0)),
        );
        server.add_service(proxy);
    }
    server.add_service(background_service(
        "config reload",
        ReloadService::new(rt.clone()),
    ));
    if let Some(l) = metrics_listener {
        server.add_service(background_service(
            "metrics",
            EndpointService::new(rt.clone(), l),
        ));
    }
    if let Some((tokens, tls, l)) = admin {
        server.add_service(background_service(
            "admin plane",
            floodgate::admin::AdminPlane::new(rt.clone(), tokens, tls, l),
        ));
    }
    if let Some(g) = &rt.global {
        server.add_service(background_service(
            "redis prober",
            floodgate::global::Prober(g.clone()),
        ));
        server.add_service(background_service(
            "fleet sync",
            floodgate::fleet::FleetSync::new(rt.clone(), g.clone()),
        ));
        server.add_service(background_service(
            "approximate limits sync",
            floodgate::approx::Syncer::new(rt.clone()),
        ));
    }
    server.add_service(background_service(
        "limit sweeper",
        floodgate::sweep::Sweeper::new(rt.clone()),
    ));
    server.add_service(background_service(
        "readiness",
        Readiness {
            rt: rt.clone(),
            listens: listens.iter().map(|(_, a)| *a).collect(),
        },
    ));

    for (l, upstream) in rt.boot.listeners.iter().zip(&rt.current.load().upstreams) {
        info!(listener = l.name.as_str(), listen = %l.listen, %upstream, "floodgate starting");
    }
    let signals = Signals::new(rt.clone(), server_cfg.drain_timeout);
    server.run(RunArgs {
        shutdown_signal: Box::new(signals),
    });
    floodgate::logging::flush();
    Ok(())
}

/// Marks the sidecar ready once every data port accepts connections and the reloader is
/// watching (so a config change or SIGHUP right after ready is not missed or fatal).
struct Readiness {
    rt: Arc<Runtime>,
    listens: Vec<std::net::SocketAddr>,
}

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for Readiness {
    async fn start(&self, _shutdown: pingora_core::server::ShutdownWatch) {
        loop {
            let armed = self
                .rt
                .reloads_armed
                .load(std::sync::atomic::Ordering::Acquire);
            if armed && accepting(&self.listens).await {
                self.rt.set_ready();
                info!(listen = ?self.listens, "ready");
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Every one of `listens` accepts a connection now.
async fn accepting(listens: &[std::net::SocketAddr]) -> bool {
    for a in listens {
        if tokio::net::TcpStream::connect(a).await.is_err() {
            return false;
        }
    }
    true
}
