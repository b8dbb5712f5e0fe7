//! Hot reload: a file watcher and SIGHUP only *signal*; one task validates the file, builds a
//! snapshot and swaps it in. A bad file is logged with every error, counted, and the last good
//! config keeps serving. The watcher watches the file's directory, which sees editors that
//! write by rename and the Kubernetes ConfigMap `..data` symlink swap alike.
//!
//! Only changes of the config file (or of the `..data` symlink it resolves through) count as
//! events, never opens or reads: the reload's own read must not schedule another. A reload
//! waits until events have stopped for [`DEBOUNCE`], or at most [`MAX_WAIT`] while they keep
//! coming. A file that does not load is tried once more after a quiet debounce before the
//! failure is counted: an in-place write seen half-done is not an invalid config.

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecursiveMode, Watcher};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::state::Runtime;

/// Quiet time after the last event before a reload (editors write in several steps).
const DEBOUNCE: Duration = Duration::from_millis(100);
/// Longest a reload waits for events to stop, so a file rewritten without pause still
/// reloads about once a second.
const MAX_WAIT: Duration = Duration::from_secs(1);

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
    match attempt(rt, false) {
        Attempt::Applied(v) => Ok(v),
        Attempt::Failed(e) | Attempt::Retry(e) => Err(e),
    }
}

/// What one try at reloading did.
enum Attempt {
    /// Swapped in; the new version.
    Applied(u64),
    /// Counted and logged as a failure.
    Failed(ReloadError),
    /// The file did not load, and it may be mid-write: not counted yet, to be tried again.
    Retry(ReloadError),
}

/// One try; with `may_retry`, a file that does not load is left for another try instead of
/// being counted.
fn attempt(rt: &Runtime, may_retry: bool) -> Attempt {
    let result = rt
        .wiring
        .load(&rt.config_path)
        .map_err(ReloadError::from)
        .and_then(|cfg| {
            // Admin overrides stay layered on the new file.
            let base = crate::control::build_base(rt, &cfg)?;
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
            crate::control::install(rt, snap);
            rt.metrics.reloads.with_label_values(&["success"]).inc();
            info!(version, path = %rt.config_path.display(), "config reloaded");
            Attempt::Applied(version)
        }
        Err(e @ ReloadError::Load(_)) if may_retry => {
            info!(
                path = %rt.config_path.display(),
                "config did not load, trying again once it has been quiet for {} ms (it may be mid-write): {e}",
                DEBOUNCE.as_millis()
            );
            Attempt::Retry(e)
        }
        Err(e) => {
            rt.metrics.reloads.with_label_values(&["failure"]).inc();
            error!(
                path = %rt.config_path.display(),
                "config reload rejected, keeping version {}:\n{e}",
                rt.current.load().version
            );
            Attempt::Failed(e)
        }
    }
}

/// Names in the config file's directory whose changes can change the config: the file, and
/// the first step of a symlink it is (kubelet's `..data`, swapped by rename on update).
fn watched_names(path: &Path) -> Vec<OsString> {
    let mut names: Vec<OsString> = path.file_name().map(OsString::from).into_iter().collect();
    names.push(OsString::from("..data"));
    if let Ok(target) = std::fs::read_link(path) {
        if let Some(std::path::Component::Normal(first)) = target.components().next() {
            names.push(first.to_os_string());
        }
    }
    names
}

/// True for an event that may have changed the config: a write, create, remove, rename or
/// attribute change of a watched name. Opens and reads (the reload's own among them) are not.
fn is_change(ev: &notify::Event, names: &[OsString]) -> bool {
    let kind = match ev.kind {
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Any | EventKind::Other => false,
    };
    kind && ev
        .paths
        .iter()
        .any(|p| p.file_name().is_some_and(|n| names.iter().any(|w| w == n)))
}

/// When the watcher should next try a reload.
#[derive(Debug, Default)]
struct Debounce {
    /// Last change seen, if one is waiting.
    last: Option<Instant>,
    /// First change of the waiting burst.
    first: Option<Instant>,
    /// The previous try did not load: the next one after a quiet debounce is the last.
    retry: bool,
}

impl Debounce {
    fn changed(&mut self, now: Instant) {
        self.last = Some(now);
        self.first.get_or_insert(now);
    }

    /// When to try: a debounce after the last change, or `MAX_WAIT` after the first.
    fn due(&self) -> Option<Instant> {
        Some((self.last? + DEBOUNCE).min(self.first? + MAX_WAIT))
    }

    /// Events stopped for a whole debounce before `now`.
    fn quiet(&self, now: Instant) -> bool {
        self.last.is_none_or(|l| now >= l + DEBOUNCE)
    }

    fn clear(&mut self) {
        *self = Self::default();
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
        let names = watched_names(&path);
        let mut watcher =
            match notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
                if ev.is_ok_and(|ev| is_change(&ev, &names)) {
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
        // The last file content tried, so a change that leaves the bytes as they were (a
        // `touch`, a rename of identical content) causes no reload.
        let mut last_seen = std::fs::read(&path).ok();
        let mut wait = Debounce::default();
        loop {
            let due = wait.due();
            tokio::select! {
                Some(()) = rx.recv() => wait.changed(Instant::now()),
                () = sleep_until(due) => {
                    let now = Instant::now();
                    // A second failure after a quiet debounce is a real one; while the file
                    // is still being written, a failure only means "not finished yet".
                    let last_try = wait.retry && wait.quiet(now);
                    let content = std::fs::read(&path).ok();
                    if content.is_none() || (!wait.retry && content == last_seen) {
                        wait.clear();
                        continue; // deleted mid-swap (a later event follows) or unchanged
                    }
                    last_seen = content;
                    let rt = self.rt.clone();
                    let done = tokio::task::spawn_blocking(move || attempt(&rt, !last_try)).await;
                    wait.clear();
                    if let Ok(Attempt::Retry(_)) = done {
                        wait.retry = true;
                        wait.changed(Instant::now());
                    }
                }
                Some(()) = recv_hup(&mut hup) => {
                    info!("SIGHUP: reloading {}", path.display());
                    last_seen = std::fs::read(&path).ok();
                    wait.clear();
                    let rt = self.rt.clone();
                    let _ = tokio::task::spawn_blocking(move || reload(&rt)).await;
                }
                _ = shutdown.changed() => break,
            }
        }
        drop(watcher);
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn recv_hup(hup: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match hup {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, ModifyKind, RenameMode};

    fn ev(kind: EventKind, name: &str) -> notify::Event {
        notify::Event::new(kind).add_path(Path::new("/etc/floodgate").join(name))
    }

    #[test]
    fn only_changes_of_the_config_or_its_data_link_are_events() {
        let names = watched_names(Path::new("/etc/floodgate/floodgate.yaml"));
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        assert!(is_change(&ev(write, "floodgate.yaml"), &names));
        assert!(is_change(
            &ev(EventKind::Create(CreateKind::File), "floodgate.yaml"),
            &names
        ));
        assert!(is_change(
            &ev(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                "floodgate.yaml"
            ),
            &names
        ));
        // kubelet's swap: `..data_tmp` renamed over `..data`.
        let rename = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        assert!(is_change(&ev(rename, "..data"), &names));
        // The reload's own read opens the file: that must not schedule another reload.
        for read in [
            AccessKind::Open(AccessMode::Read),
            AccessKind::Read,
            AccessKind::Close(AccessMode::Read),
        ] {
            assert!(!is_change(
                &ev(EventKind::Access(read), "floodgate.yaml"),
                &names
            ));
        }
        // Other files in the directory (an editor's swap file, the log) are not the config.
        assert!(!is_change(&ev(write, ".floodgate.yaml.swp"), &names));
        assert!(!is_change(&ev(write, "floodgate.log"), &names));
    }

    #[test]
    fn a_symlinked_config_also_watches_the_first_step_of_its_target() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("..v1/conf/f.yaml", dir.path().join("f.yaml")).unwrap();
        let names = watched_names(&dir.path().join("f.yaml"));
        assert!(names.contains(&OsString::from("f.yaml")));
        assert!(names.contains(&OsString::from("..v1")));
        assert!(names.contains(&OsString::from("..data")));
    }

    #[test]
    fn a_reload_waits_for_quiet_or_at_most_max_wait() {
        let t0 = Instant::now();
        let mut d = Debounce::default();
        assert_eq!(d.due(), None, "nothing waiting");
        d.changed(t0);
        assert_eq!(d.due(), Some(t0 + DEBOUNCE));
        // Each change restarts the debounce ...
        d.changed(t0 + Duration::from_millis(50));
        assert_eq!(d.due(), Some(t0 + Duration::from_millis(150)));
        assert!(!d.quiet(t0 + Duration::from_millis(120)));
        assert!(d.quiet(t0 + Duration::from_millis(150)));
        // ... but a file rewritten every 20 ms still reloads after MAX_WAIT.
        for ms in (0..3000).step_by(20) {
            d.changed(t0 + Duration::from_millis(ms));
        }
        assert_eq!(d.due(), Some(t0 + MAX_WAIT));
        assert!(
            !d.quiet(t0 + MAX_WAIT),
            "a reload at MAX_WAIT is not after quiet"
        );
        d.clear();
        assert_eq!(d.due(), None);
    }
}
