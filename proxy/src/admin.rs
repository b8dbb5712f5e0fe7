//! Serves the gRPC admin plane (`floodgate_admin`) on `admin.listen`, over
//! [`crate::control::RuntimeControl`], as a background service of the sidecar.

use std::sync::Arc;

use async_trait::async_trait;
use floodgate_admin::auth::Tokens;
use floodgate_admin::service::AdminService;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tracing::{error, info, warn};

use crate::control::RuntimeControl;
use crate::state::Runtime;

/// The admin plane, on a listener bound at start-up (a taken port fails the start).
pub struct AdminPlane {
    rt: Arc<Runtime>,
    tokens: Tokens,
    tls: Option<tonic::transport::ServerTlsConfig>,
    listener: std::sync::Mutex<Option<std::net::TcpListener>>,
}

impl AdminPlane {
    /// Serves `rt` to holders of `tokens` on `listener`, over TLS when `tls` is set.
    pub fn new(
        rt: Arc<Runtime>,
        tokens: Tokens,
        tls: Option<tonic::transport::ServerTlsConfig>,
        listener: std::net::TcpListener,
    ) -> Self {
        Self {
            rt,
            tokens,
            tls,
            listener: std::sync::Mutex::new(Some(listener)),
        }
    }
}

#[async_trait]
impl BackgroundService for AdminPlane {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(std_listener) = self.listener.lock().ok().and_then(|mut l| l.take()) else {
            return;
        };
        let Some(listener) = crate::endpoint::into_tokio(std_listener, "admin") else {
            return;
        };
        if self.tokens.is_empty() {
            warn!("admin.tokens is empty: the admin plane refuses every call");
        }
        let addr = listener.local_addr().ok();
        let router = match AdminService::new(
            Arc::new(RuntimeControl(self.rt.clone())),
            self.tokens.clone(),
        )
        .router(self.tls.clone())
        .await
        {
            Ok(r) => r,
            Err(e) => {
                error!("admin plane cannot start: {e}");
                return;
            }
        };
        info!(?addr, "admin plane listening");
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let result = router
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = shutdown.changed().await;
            })
            .await;
        if let Err(e) = result {
            error!("admin plane stopped: {e}");
        }
    }
}
