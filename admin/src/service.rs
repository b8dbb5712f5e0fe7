//! The gRPC service: authenticates each call, turns requests into [`Op`]s, and awaits them
//! on the [`Control`].

use std::sync::Arc;
use std::time::Duration;

use floodgate_config::Level;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use crate::auth::{require_operator, Caller, Tokens};
use crate::control::{self, Control, Op};
use crate::pb;
use crate::pb::admin_server::Admin;

/// The admin service over a [`Control`].
pub struct AdminService<C> {
    control: Arc<C>,
    tokens: Tokens,
}

impl<C: Control> AdminService<C> {
    /// Serves `control` to holders of `tokens`.
    pub fn new(control: Arc<C>, tokens: Tokens) -> Self {
        Self { control, tokens }
    }

    /// The tonic server type for this service.
    pub fn into_server(self) -> pb::admin_server::AdminServer<Self> {
        pb::admin_server::AdminServer::new(self)
    }

    /// A router serving this service with gRPC health (`floodgate.admin.v1.Admin` SERVING)
    /// and server reflection (v1 and v1alpha), so stock tools work without the proto. Health
    /// and reflection need no token: they expose no state, only that the service exists and
    /// its schema.
    /// With `tls`, the port speaks TLS (mutual TLS when it names a client CA).
    pub async fn router(
        self,
        tls: Option<tonic::transport::ServerTlsConfig>,
    ) -> Result<tonic::transport::server::Router, String> {
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_serving::<pb::admin_server::AdminServer<AdminService<C>>>()
            .await;
        let v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| e.to_string())?;
        let v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| e.to_string())?;
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            server = server.tls_config(tls).map_err(|e| e.to_string())?;
        }
        Ok(server
            .add_service(health)
            .add_service(v1)
            .add_service(v1alpha)
            .add_service(self.into_server()))
    }

    async fn apply(
        &self,
        caller: Caller,
        op: Op,
        change: Option<pb::Change>,
    ) -> Result<Response<pb::ChangeReply>, Status> {
        require_operator(&caller)?;
        let change = change.unwrap_or_default();
        // Checked here, for every client, and in floodgatectl before it calls (exit 2 there).
        if change.fleet && change.reason.trim().is_empty() {
            return Err(Status::invalid_argument(
                "a fleet change needs a reason (floodgatectl --reason \"...\"): it is written \
                 to the audit log of every sidecar it reaches",
            ));
        }
        if change.dry_run && !change.fleet {
            return Err(Status::invalid_argument(
                "dry_run (floodgatectl --dry-run) is for fleet changes (--fleet)",
            ));
        }
        let ttl = (change.ttl_seconds > 0).then(|| Duration::from_secs(change.ttl_seconds));
        let req = control::Request {
            op,
            caller,
            reason: change.reason,
            ttl,
            fleet: change.fleet,
            dry_run: change.dry_run,
        };
        Ok(Response::new(self.control.change(req).await?.into()))
    }
}

fn parse_level(s: &str) -> Result<Level, Status> {
    s.parse()
        .map_err(|e: floodgate_config::UnknownLevel| Status::invalid_argument(e.to_string()))
}

/// A change that has a reason but no TTL (restores, resets, clears).
fn untimed(reason: String, fleet: bool, dry_run: bool) -> Option<pb::Change> {
    Some(pb::Change {
        reason,
        ttl_seconds: 0,
        fleet,
        dry_run,
    })
}

fn name_or_all(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

#[tonic::async_trait]
impl<C: Control> Admin for AdminService<C> {
    type WatchStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::Event, Status>> + Send + 'static>,
    >;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.tokens.authenticate(&req)?;
        let rx = self.control.watch().await;
        // A watcher too slow to keep up is told how many events it missed, not cut off.
        let stream = tokio_stream::wrappers::BroadcastStream::new(rx).map(|e| {
            Ok(e.map_or_else(
                |tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)| pb::Event {
                    time_ms: 0,
                    kind: "lagged".into(),
                    summary: format!("{n} events were missed by this watcher"),
                },
                pb::Event::from,
            ))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        self.tokens.authenticate(&req)?;
        Ok(Response::new(self.control.status().await.into()))
    }

    async fn set_limit(
        &self,
        req: Request<pb::SetLimitRequest>,
    ) -> Result<Response<pb::ChangeReply>, Status> {
        let caller = self.tokens.authenticate(&req)?;
        let r = req.into_inner();
        if r.max_requests == 0 {
            return Err(Status::invalid_argument(
                "max_requests must be at least 1 (to stop a route, use degradation)",
            ));
        }
        let op = Op::SetLimit {
            name: r.name,
            max_requests: r.max_requests,
            window: (r.window_seconds > 0).then(|| Duration::from_secs(r.window_seconds)),
        };
        self.apply(caller, op, r.change).await
    }

    async fn scale_limits(
        &self,
        req: Request<pb::ScaleLimitsRequest>,
    ) -> Result<Response<pb::ChangeReply>, Status> {
        let caller = self.tokens.authenticate(&req)?;
        let r = req.into_inner();
        if !(r.multiplier.is_finite() && r.multiplier > 0.0 && r.multiplier <= 1000.0) {
            return Err(Status::invalid_argument(format!(
                "multiplier must be above 0 and at most 1000, got {}",
                r.multiplier
            )));
        }
        let op = Op::ScaleLimits {
            name: name_or_all(r.name),
            multiplier: r.multiplier,
        };
        self.apply(caller, op, r.change).await
    }

    async fn restore_limits(
        &self,
        req: Request<pb::RestoreLimitsRequest>,
    ) -> Result<Response<pb::ChangeReply>, Status> {
        let caller = self.tokens.authenticate(&req)?;
        let r = req.into_inner();
        let change = untimed(r.reason, r.fleet, r.dry_run);
        let op = Op::RestoreLimits {
            name: name_or_all(r.name),
        };
        self.apply(caller, op, change).await
    }

    async fn set_level(
        &self,
        req: Request<pb::SetLevelRequest>,
    ) -> Result<Response<pb::ChangeReply>, Status> {
        let caller = self.tokens.authenticate(&req)?;
        let r = req.into_inner();
        let op = Op::SetLevel {
            level: parse_level(&r.level)?,
        };
        self.apply(caller, op, r.change).await
    }

    async fn set_feature(
        &self,
        req: Request<pb::SetFeatureRequest>,
    ) -> Result<Response<pb::ChangeReply>, Status> {
        let caller = self.tokens.authenticate(&req)?;
        let r = req.into_inner();
        let op = Op::SetFeature {
            name: r.name,
            enabled: r.enabled,
        };
        self.apply(caller, op, r.change).await
    }

    async fn set_aggressive_cache(
        &self,
        req: Request<pb::SetAggressiveCacheRequest>,
    ) -> Result<Response<pb::ChangeReply>, Status> {
        let caller = self.tokens.authenticate(&req)?;
        let r = req.into_inner();
        let op = Op::SetAggressiveCache { enabled: r.enabled };
        self.apply(caller, op, r.change).await
    }

    async fn set_queue(
        &self,
        req: Request<pb::SetQueueRequest>,
    ) -> Result<Response<pb::ChangeReply>, Status> {
        let caller = self.tokens.authenticate(&req)?;
        let r = req.into_inner();
        if r.max_size == 0 && r.max_concurrency == 0 {
            return Err(Status::invalid_argument(
                "give max_size (queue resize N) or max_concurrency (queue workers N)",
            ));
        }
        let op = Op::SetQueue {
            max_size: (r.max_size > 0).then_some(r.max_size),
            max_concurrency: (r.max_concurrency > 0).then_some(r.max_concurrency),
        };
        self.apply(caller, op, r.change).await
    }

    async fn force_breaker(
        &self,
        req: Request<pb::ForceBreakerRequest>,
    ) -> Result<Response<pb::ChangeReply>, Status> {
        let caller = self.tokens.authenticate(&req)?;
        let r = req.into_inner();
        let op = Op::ForceBreaker {
            name: r.name,
            open: r.open,
        };
        self.apply(caller, op, r.change).await
    }

    async fn reset_breaker(
        &self,
        req: Request<pb::ResetBreakerRequest>,
    ) -> Result<Response<pb::ChangeReply>, Status> {
        let caller = self.tokens.authenticate(&req)?;
        let r = req.into_inner();
        let change = untimed(r.reason, false, false);
        self.apply(caller, Op::ResetBreaker { name: r.name }, change)
            .await
    }

    async fn list_overrides(
        &self,
        req: Request<pb::ListOverridesRequest>,
    ) -> Result<Response<pb::OverridesReply>, Status> {
        self.tokens.authenticate(&req)?;
        Ok(Response::new(pb::OverridesReply {
            overrides: self
                .control
                .overrides()
                .await
                .into_iter()
                .map(Into::into)
                .collect(),
        }))
    }

    async fn explain(
        &self,
        req: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainReply>, Status> {
        self.tokens.authenticate(&req)?;
        let knobs = self.control.explain(&req.get_ref().knob).await?;
        Ok(Response::new(pb::ExplainReply {
            knobs: knobs.into_iter().map(Into::into).collect(),
        }))
    }

    async fn clear_override(
        &self,
        req: Request<pb::ClearOverrideRequest>,
    ) -> Result<Response<pb::ChangeReply>, Status> {
        let caller = self.tokens.authenticate(&req)?;
        let r = req.into_inner();
        let change = untimed(r.reason, r.fleet, r.dry_run);
        self.apply(caller, Op::ClearOverride { key: r.key }, change)
            .await
    }

    async fn fleet_status(
        &self,
        req: Request<pb::FleetStatusRequest>,
    ) -> Result<Response<pb::FleetStatusReply>, Status> {
        self.tokens.authenticate(&req)?;
        Ok(Response::new(self.control.fleet_status().await?.into()))
    }

    async fn audit(
        &self,
        req: Request<pb::AuditRequest>,
    ) -> Result<Response<pb::AuditReply>, Status> {
        self.tokens.authenticate(&req)?;
        let limit = match req.get_ref().limit {
            0 => 100,
            n => n as usize,
        };
        Ok(Response::new(pb::AuditReply {
            entries: self.control.audit(limit).await,
        }))
    }
}

/// The TLS settings of the admin port from PEM files (read now, so a bad file fails the
/// start with its name).
pub fn tls_config(
    cert_file: &str,
    key_file: &str,
    client_ca_file: Option<&str>,
) -> Result<tonic::transport::ServerTlsConfig, String> {
    let read = |f: &str, what: &str| {
        std::fs::read(f).map_err(|e| format!("admin.tls.{what} `{f}` cannot be read: {e}"))
    };
    let identity = tonic::transport::Identity::from_pem(
        read(cert_file, "cert_file")?,
        read(key_file, "key_file")?,
    );
    let mut tls = tonic::transport::ServerTlsConfig::new().identity(identity);
    if let Some(ca) = client_ca_file {
        tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(
            ca,
            "client_ca_file",
        )?));
    }
    Ok(tls)
}
