//! `floodgatectl`: the on-call engineer's command line for a Floodgate sidecar's admin plane.
//! `args` is the command line, `client` the connection and its failures, `render` and
//! `table` what people read, `override_view` what scripts read, `out` the only writer of
//! standard output, `inject_cmd` the offline `inject`, `webhook` its admission webhook, `fleet_wait` the wait for "applied on
//! N/N" after a fleet change, `top` the live load table; this file runs the commands.

mod args;
mod client;
mod fleet_wait;
mod inject_cmd;
mod out;
mod override_view;
mod render;
mod table;
mod top;
mod webhook;

use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches};
use floodgate_admin::pb;
use floodgate_admin::pb::admin_client::AdminClient;
use serde::Serialize;
use tonic::transport::Channel;

use crate::args::{
    BreakersCmd, CacheCmd, Cli, Command, ConfigCmd, DegradeCmd, FeatureCmd, FleetCmd, Global,
    LimitsCmd, Output, OverridesCmd, QueueCmd, WebhookCmd,
};
use crate::client::{connect, explain, request, stream_request, token, Failure, Stop};
use crate::out::{encode, encode_one, Out};
use crate::override_view::{ChangeView, OverrideView};
use crate::render::unix_now;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // Only a flag typed on the command line beats FLOODGATE_TOKEN, not FLOODGATE_TOKEN_FILE.
    let token_flag =
        matches.value_source("token_file") == Some(clap::parser::ValueSource::CommandLine);
    let addr = cli.global.addr.clone();
    let mut out = Out::new();
    let failure = match run(cli, token_flag, &mut out).await {
        Ok(()) | Err(Stop::PipeClosed) => return ExitCode::SUCCESS,
        Err(Stop::Fail(f)) => f,
        Err(Stop::Call(s)) => explain(&s, &addr),
    };
    let Failure(code, msg) = failure;
    eprintln!("floodgatectl: {msg}");
    ExitCode::from(code)
}

/// `floodgatectl version`'s reply.
#[derive(Serialize)]
struct Versions {
    /// This floodgatectl.
    client: String,
    /// The sidecar at --addr; absent with --client, empty from a sidecar too old to say.
    #[serde(skip_serializing_if = "Option::is_none")]
    sidecar: Option<String>,
}

/// Prints `v` as -o asks, or `table` as people read it.
fn show<T: Serialize>(
    out: &mut Out,
    format: Output,
    v: &T,
    table: impl FnOnce(&T) -> String,
) -> Result<(), Stop> {
    match encode(format, v)? {
        Some(text) => out.put(&text),
        None => out.put(&table(v)),
    }
}

/// Commands that need no sidecar; `None` when `command` needs one.
fn offline(command: &Command, format: Output, out: &mut Out) -> Option<Result<(), Stop>> {
    Some(match command {
        Command::Inject(a) => match &a.webhook {
            None => inject_cmd::inject(a)
                .map_err(Stop::from)
                .and_then(|text| out.put(&text)),
            Some(WebhookCmd::ServeCert(c)) => webhook::cert::serve_cert(c)
                .map_err(Stop::from)
                .and_then(|text| out.put(&text)),
            // Served by `run`: it is the one that waits.
            Some(WebhookCmd::Serve(_)) => return None,
        },
        Command::Config(ConfigCmd::Validate { file }) => match floodgate_config::load(file) {
            Ok(cfg) => out.put(&format!("{}: ok\n", file.display())).map(|()| {
                for n in floodgate_config::notes(&cfg) {
                    eprintln!("{}: note: {n}", file.display());
                }
            }),
            Err(e) => Err(Failure(5, e.to_string()).into()),
        },
        Command::Completion { shell } => {
            // Into a buffer: clap_complete panics on a failed write, `out` does not.
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "floodgatectl", &mut script);
            out.put_bytes(&script)
        }
        Command::Version { client: true } => show(out, format, &client_version(), version_table),
        _ => return None,
    })
}

fn client_version() -> Versions {
    Versions {
        client: env!("CARGO_PKG_VERSION").into(),
        sidecar: None,
    }
}

fn version_table(v: &Versions) -> String {
    let mut text = format!("floodgatectl {} (client)\n", v.client);
    match v.sidecar.as_deref() {
        None => {}
        Some("") => text += "floodgate (sidecar): version not reported (older than this field)\n",
        Some(s) => text += &format!("floodgate {s} (sidecar)\n"),
    }
    text
}

async fn run(cli: Cli, token_flag: bool, out: &mut Out) -> Result<(), Stop> {
    let g = &cli.global;
    let format = g.output;
    if let Some(done) = offline(&cli.command, format, out) {
        return done;
    }
    if let Command::Inject(a) = &cli.command {
        if let Some(WebhookCmd::Serve(s)) = &a.webhook {
            return webhook::serve(s).await.map_err(Stop::from);
        }
    }
    check_change(&cli.command, g)?;
    let token = token(g, token_flag)?;
    let connected = connect(g).await;
    if let Command::Version { .. } = cli.command {
        // The client's version is worth printing even when the sidecar cannot be asked.
        let mut v = client_version();
        let sidecar = match connected {
            Ok(mut c) => c
                .status(request(pb::StatusRequest {}, &token)?)
                .await
                .map_err(Stop::from),
            Err(f) => Err(f.into()),
        };
        return match sidecar {
            Ok(s) => {
                v.sidecar = Some(s.into_inner().version);
                show(out, format, &v, version_table)
            }
            Err(stop) => {
                show(out, format, &v, version_table)?;
                Err(stop)
            }
        };
    }
    let mut c = connected?;
    let (fleet, dry_run) = (g.fleet, g.dry_run);
    // A change's reply is shown after the match, once the fleet has been waited for.
    let mut changed: Option<pb::ChangeReply> = None;
    let mut change = |reply: pb::ChangeReply| -> Result<(), Stop> {
        changed = Some(reply);
        Ok(())
    };
    match cli.command {
        Command::Status => status(&mut c, &token, format, out).await?,
        Command::Limits(LimitsCmd::Show) => {
            let s = c.status(request(pb::StatusRequest {}, &token)?).await?;
            show(out, format, &s.into_inner().limits, |l| render::limits(l))?;
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
                change: Some(a.pb(g)),
            };
            change(c.set_limit(request(req, &token)?).await?.into_inner())?;
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
                change: Some(a.pb(g)),
            };
            change(c.scale_limits(request(req, &token)?).await?.into_inner())?;
        }
        Command::Limits(LimitsCmd::Restore { name, reason, .. }) => {
            let req = pb::RestoreLimitsRequest {
                name: name.unwrap_or_default(),
                reason,
                fleet,
                dry_run,
            };
            change(c.restore_limits(request(req, &token)?).await?.into_inner())?;
        }
        Command::Degrade(DegradeCmd::Set { level, change: a }) => {
            let req = pb::SetLevelRequest {
                level,
                change: Some(a.pb(g)),
            };
            change(c.set_level(request(req, &token)?).await?.into_inner())?;
        }
        Command::Degrade(DegradeCmd::Clear { reason }) => {
            let req = pb::ClearOverrideRequest {
                key: "level".into(),
                reason,
                fleet,
                dry_run,
            };
            change(c.clear_override(request(req, &token)?).await?.into_inner())?;
        }
        Command::Feature(FeatureCmd::Reset { name, reason }) => {
            let req = pb::ClearOverrideRequest {
                key: format!("feature:{name}"),
                reason,
                fleet,
                dry_run,
            };
            change(c.clear_override(request(req, &token)?).await?.into_inner())?;
        }
        Command::Feature(FeatureCmd::Disable { name, change: a }) => {
            let req = pb::SetFeatureRequest {
                name,
                enabled: false,
                change: Some(a.pb(g)),
            };
            change(c.set_feature(request(req, &token)?).await?.into_inner())?;
        }
        Command::Feature(FeatureCmd::Enable { name, change: a }) => {
            let req = pb::SetFeatureRequest {
                name,
                enabled: true,
                change: Some(a.pb(g)),
            };
            change(c.set_feature(request(req, &token)?).await?.into_inner())?;
        }
        Command::Queue(QueueCmd::Metrics) => {
            let s = c.status(request(pb::StatusRequest {}, &token)?).await?;
            let q = s.into_inner().queue.unwrap_or_default();
            show(out, format, &q, render::queue)?;
        }
        Command::Queue(QueueCmd::Resize { size, change: a }) => {
            let req = pb::SetQueueRequest {
                max_size: size,
                max_concurrency: 0,
                change: Some(a.pb(g)),
            };
            change(c.set_queue(request(req, &token)?).await?.into_inner())?;
        }
        Command::Queue(QueueCmd::Workers { count, change: a }) => {
            let req = pb::SetQueueRequest {
                max_size: 0,
                max_concurrency: count,
                change: Some(a.pb(g)),
            };
            change(c.set_queue(request(req, &token)?).await?.into_inner())?;
        }
        Command::Cache(CacheCmd::Aggressive { state, change: a }) => {
            let req = pb::SetAggressiveCacheRequest {
                enabled: state == "on",
                change: Some(a.pb(g)),
            };
            change(
                c.set_aggressive_cache(request(req, &token)?)
                    .await?
                    .into_inner(),
            )?;
        }
        Command::Breakers { cmd: None } => {
            let s = c.status(request(pb::StatusRequest {}, &token)?).await?;
            show(out, format, &s.into_inner().breakers, |b| {
                render::breakers(b)
            })?;
        }
        Command::Breakers {
            cmd:
                Some(BreakersCmd::Force {
                    name,
                    state,
                    change: a,
                }),
        } => {
            let req = pb::ForceBreakerRequest {
                name,
                open: state == "open",
                change: Some(a.pb(g)),
            };
            change(c.force_breaker(request(req, &token)?).await?.into_inner())?;
        }
        Command::Breakers {
            cmd: Some(BreakersCmd::Reset { name, reason }),
        } => {
            let req = pb::ResetBreakerRequest { name, reason };
            change(c.reset_breaker(request(req, &token)?).await?.into_inner())?;
        }
        Command::Overrides { cmd: None } => {
            let o = c
                .list_overrides(request(pb::ListOverridesRequest {}, &token)?)
                .await?
                .into_inner();
            let typed: Vec<OverrideView> = o.overrides.iter().map(OverrideView::new).collect();
            show(out, format, &typed, |_| {
                render::overrides(&o.overrides, unix_now())
            })?;
        }
        Command::Overrides {
            cmd: Some(OverridesCmd::Clear { key, reason }),
        } => {
            let req = pb::ClearOverrideRequest {
                key,
                reason,
                fleet,
                dry_run,
            };
            change(c.clear_override(request(req, &token)?).await?.into_inner())?;
        }
        Command::Explain { knob } => {
            let req = pb::ExplainRequest {
                knob: knob.unwrap_or_default(),
            };
            let reply = c.explain(request(req, &token)?).await?.into_inner();
            let views: Vec<render::KnobView> =
                reply.knobs.iter().map(render::KnobView::new).collect();
            show(out, format, &views, |v| render::knobs(v, unix_now()))?;
        }
        Command::Audit { limit } => {
            let a = c
                .audit(request(pb::AuditRequest { limit }, &token)?)
                .await?
                .into_inner();
            // Each entry is a JSON line; -o json/yaml give them as one list of objects.
            let entries: Vec<serde_json::Value> = a
                .entries
                .iter()
                .map(|e| serde_json::from_str(e).unwrap_or_else(|_| e.as_str().into()))
                .collect();
            show(out, format, &entries, |_| {
                a.entries.iter().map(|e| format!("{e}\n")).collect()
            })?;
        }
        Command::Fleet(FleetCmd::Status) => {
            let f = c
                .fleet_status(request(pb::FleetStatusRequest {}, &token)?)
                .await?
                .into_inner();
            show(out, format, &f, render::fleet)?;
        }
        Command::Top { interval, once } => {
            let o = top::Options {
                addr: g.addr.clone(),
                fleet,
                interval,
                once,
                format,
            };
            top::top(&mut c, &token, &o, out).await?;
        }
        Command::Watch => {
            let mut stream = c
                .watch(stream_request(pb::WatchRequest {}, &token)?)
                .await?
                .into_inner();
            while let Some(e) = stream.message().await? {
                let text = match encode_one(format, &e)? {
                    Some(text) => text,
                    None => {
                        let t = std::time::UNIX_EPOCH + Duration::from_millis(e.time_ms);
                        format!(
                            "{} {:<8} {}\n",
                            humantime::format_rfc3339_seconds(t),
                            e.kind,
                            e.summary
                        )
                    }
                };
                out.put(&text)?;
            }
        }
        Command::Version { .. }
        | Command::Completion { .. }
        | Command::Config(_)
        | Command::Inject(_) => {}
    }
    match changed {
        Some(reply) => confirm(&mut c, &token, g, &reply, out).await,
        None => Ok(()),
    }
}

/// The `--reason` a change takes; `None` for commands that change nothing (and for
/// `breakers reset`, which is never a fleet change).
fn reason_of(command: &Command) -> Option<&str> {
    fn r(a: &args::ChangeArgs) -> &str {
        &a.reason
    }
    Some(match command {
        Command::Limits(LimitsCmd::Set { change, .. } | LimitsCmd::Scale { change, .. }) => {
            r(change)
        }
        Command::Limits(LimitsCmd::Restore { reason, .. })
        | Command::Degrade(DegradeCmd::Clear { reason })
        | Command::Feature(FeatureCmd::Reset { reason, .. })
        | Command::Overrides {
            cmd: Some(OverridesCmd::Clear { reason, .. }),
        } => reason,
        Command::Degrade(DegradeCmd::Set { change, .. })
        | Command::Feature(
            FeatureCmd::Disable { change, .. } | FeatureCmd::Enable { change, .. },
        )
        | Command::Queue(QueueCmd::Resize { change, .. } | QueueCmd::Workers { change, .. })
        | Command::Cache(CacheCmd::Aggressive { change, .. })
        | Command::Breakers {
            cmd: Some(BreakersCmd::Force { change, .. }),
        } => r(change),
        _ => return None,
    })
}

/// Refuses, before any call, a fleet change without a reason and a dry run of anything but
/// a fleet change (exit 2, as clap does for its own argument errors).
fn check_change(command: &Command, g: &Global) -> Result<(), Failure> {
    let reason = reason_of(command);
    if g.fleet && reason.is_some_and(|r| r.trim().is_empty()) {
        return Err(Failure(
            2,
            "--reason is required with --fleet: the change reaches every sidecar and its \
             reason goes into each one's audit log (e.g. --reason \"INC-4211: launch spike\")"
                .into(),
        ));
    }
    if g.dry_run && !(g.fleet && reason.is_some()) {
        return Err(Failure(
            2,
            "--dry-run previews a --fleet change (limits, degrade, feature, queue, cache, \
             overrides clear); give --fleet and one of those"
                .into(),
        ));
    }
    Ok(())
}

/// Shows a change's reply and, for a fleet change, waits for every expected sidecar to
/// apply it: `applied on N/M`, the missing named, exit 6 if not all did within --wait.
async fn confirm(
    c: &mut AdminClient<Channel>,
    token: &Option<String>,
    g: &Global,
    reply: &pb::ChangeReply,
    out: &mut Out,
) -> Result<(), Stop> {
    let limit = g.wait();
    let waits = g.fleet && !reply.dry_run && reply.fleet_version > 0 && !limit.is_zero();
    let table = g.output == Output::Table;
    if table {
        out.put(&render::change(reply, unix_now()))?;
    }
    if g.fleet && !reply.dry_run {
        if reply.fleet_version == 0 {
            // A sidecar older than the field: nothing to wait for by number.
            out.put("the sidecar did not say which fleet version the change made; see `floodgatectl fleet status`\n")?;
        } else if !waits && table {
            out.put(&format!(
                "not waiting: `floodgatectl fleet status` shows who applied fleet version {}\n",
                reply.fleet_version
            ))?;
        }
    }
    let applied = if waits {
        Some(fleet_wait::wait(c, token, reply.fleet_version, limit).await?)
    } else {
        None
    };
    if table {
        if let Some(a) = &applied {
            out.put(&format!("fleet version {}: {}\n", a.version, a.line()))?;
        }
    } else {
        let mut view = ChangeView::new(reply);
        view.applied = applied.as_ref();
        if let Some(text) = encode(g.output, &view)? {
            out.put(&text)?;
        }
    }
    match applied {
        Some(a) if !a.everywhere() => Err(Failure(
            6,
            format!(
                "fleet version {} not applied on every expected sidecar within {}: {}",
                a.version,
                humantime::format_duration(limit),
                a.line()
            ),
        )
        .into()),
        _ => Ok(()),
    }
}

/// `floodgatectl status`: the sidecar's state and, for people, the overrides behind it.
async fn status(
    c: &mut AdminClient<Channel>,
    token: &Option<String>,
    format: Output,
    out: &mut Out,
) -> Result<(), Stop> {
    let s = c
        .status(request(pb::StatusRequest {}, token)?)
        .await?
        .into_inner();
    if let Some(text) = encode(format, &s)? {
        return out.put(&text);
    }
    out.put(&render::status(&s))?;
    if s.overrides > 0 {
        // Which overrides, scheduled ones included, with their expiry.
        let o = c
            .list_overrides(request(pb::ListOverridesRequest {}, token)?)
            .await?
            .into_inner();
        out.put("\n")?;
        out.put(&render::overrides(&o.overrides, unix_now()))?;
    }
    Ok(())
}
