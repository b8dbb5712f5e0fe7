//! `floodgatectl`: the on-call engineer's command line for a Floodgate sidecar's admin plane.

mod args;
mod client;
mod inject_cmd;
mod render;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use floodgate_admin::pb;

use crate::args::{
    BreakersCmd, CacheCmd, Cli, Command, ConfigCmd, DegradeCmd, FeatureCmd, FleetCmd, LimitsCmd,
    Output, OverridesCmd, QueueCmd,
};
use crate::client::{connect, request, stream_request, token, Failure};
use crate::render::{print_fleet, print_json, print_limits, print_overrides, print_status};

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

async fn run(cli: Cli) -> Result<(), Failure> {
    let g = &cli.global;
    if let Command::Inject(a) = &cli.command {
        return inject_cmd::inject(a);
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
