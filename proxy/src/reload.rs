//! Hot reload: a file watcher and SIGHUP only *signal*; one task validates the file, builds a
//! snapshot and swaps it in. A bad file is logged with every error, counted, and the last good
//! config keeps serving. The watcher watches the file's directory, which sees editors that
//! write by rename and the Kubernetes ConfigMap `..data` symlink swap alike.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::state::Runtime;

/// Events closer together than this are one change (editors write in several steps).
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Why a reload did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// File unreadable or invalid.
    #[error(transparent)]
    Load(#[from] floodgate_config::LoadError),
    /// Valid but unusable (e.g. the upstream does not resolve).
    #[error(transparent)]
    Build(#[from] crate::state::BuildError),
}

/// Validates the file and swaps it in. Returns the new version.
pub fn reload(rt: &Runtime) -> Result<u64, ReloadError> {
    let result = rt
        .wiring
        .load(&rt.config_path)
        .map_err(ReloadError::from)
        .and_then(|cfg| {
            // Admin overrides stay layered on the new file.
            let base = crate::overrides::lifecycle::build_base(rt, &cfg)?;
            // The new file is the baseline only once a snapshot could be built from it.
            *rt.file_config.lock().unwrap_or_else(|e| e.into_inner()) = cfg;
            Ok(base)
        });
    match result {
        Ok(snap) => {
            let version = snap.version;
            let old = rt.current.load();
            if old.config.listen != snap.config.listen
                || old.config.metrics_listen != snap.config.metrics_listen
            {
                warn!(
                    "listen addresses changed in {}; they take effect only after a restart",
                    rt.config_path.display()
                );
            }
            if old.config.redis != snap.config.redis {
                warn!(
                    "`redis` changed in {}; the Redis connection is kept as it was until a restart",
                    rt.config_path.display()
                );
            }
            crate::overrides::lifecycle::install(rt, snap);
            rt.metrics.reloads.with_label_values(&["success"]).inc();
            info!(version, path = %rt.config_path.display(), "config reloaded");
            Ok(version)
        }
        Err(e) => {
            rt.metrics.reloads.with_label_values(&["failure"]).inc();
            error!(
                path = %rt.config_path.display(),
                "config reload rejected, keeping version {}:\n{e}",
                rt.current.load().version
            );
            Err(e)
        }
    }
}

/// Watches the config file and SIGHUP; runs as a pingora background service.
pub struct ReloadService {
    rt: Arc<Runtime>,
}

impl ReloadService {
    /// A service reloading `rt`'s config file.
    pub fn new(rt: Arc<Runtime>) -> Self {
        Self { rt }
    }
}

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let path = self.rt.config_path.clone();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let mut watcher =
            match notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
                if ev.is_ok() {
                    let _ = tx.send(());
                }
            }) {
                Ok(w) => Some(w),
                Err(e) => {
                    error!("cannot watch config files ({e}); reload with SIGHUP instead");
                    None
                }
            };
        if let Some(w) = watcher.as_mut() {
            if let Err(e) = w.watch(&dir, RecursiveMode::NonRecursive) {
                error!(
                    "cannot watch {} ({e}); reload with SIGHUP instead",
                    dir.display()
                );
            }
        }
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                error!("cannot listen for SIGHUP: {e}");
                None
            }
        };
        // The last file content tried, so the many events of one save cause one reload and
        // unrelated files in the same directory cause none.
        let mut last_seen = std::fs::read(&path).ok();
        loop {
            tokio::select! {
                Some(()) = rx.recv() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    while rx.try_recv().is_ok() {}
                    let now = std::fs::read(&path).ok();
                    if now.is_none() || now == last_seen {
                        continue; // deleted mid-swap (a later event follows) or unchanged
                    }
                    last_seen = now;
                    let rt = self.rt.clone();
                    let _ = tokio::task::spawn_blocking(move || reload(&rt)).await;
                }
                Some(()) = recv_hup(&mut hup) => {
                    info!("SIGHUP: reloading {}", path.display());
                    last_seen = std::fs::read(&path).ok();
                    let rt = self.rt.clone();
                    let _ = tokio::task::spawn_blocking(move || reload(&rt)).await;
                }
                _ = shutdown.changed() => break,
            }
        }
        drop(watcher);
    }
}

async fn recv_hup(hup: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match hup {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}
