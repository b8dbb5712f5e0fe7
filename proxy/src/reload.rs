//! Hot reload: a file watcher and SIGHUP only *signal*; one task validates the file, builds a
//! snapshot and swaps it in. A bad file is logged with every error, counted, and the last good
//! config keeps serving. The watcher watches the file's directory, which sees editors that
//! write by rename and the Kubernetes ConfigMap `..data` symlink swap alike.
//!
//! Only changes of the config file (or of the `..data` symlink it resolves through) count as
//! events, never opens or reads: the reload's own read must not schedule another. A reload
//! waits until events have stopped for [`DEBOUNCE`], or at most [`MAX_WAIT`] while they keep
//! coming; while a writer has the file open (written to, not yet closed) it also waits for
//! the close, up to [`WRITER_GRACE`], and an empty file (truncated, the bytes still to come)
//! gets that grace too. A file that does not load is tried once more after a
//! quiet debounce before the failure is counted: an in-place write seen half-done is not an
//! invalid config.

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
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
/// Longest a reload waits, after the last event, for a writer that has the file open to
/// close it (a stalled or crashed writer must not stop reloads for good).
const WRITER_GRACE: Duration = Duration::from_secs(2);

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

/// A setting read only at start-up that a reload changed: its config key, and what the
/// running sidecar does about it until it is restarted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartOnly {
    /// The key, as `floodgate_config_restart_required_total{setting}` counts it.
    pub setting: String,
    /// What happens meanwhile.
    pub meanwhile: &'static str,
}

/// The settings read only at start-up that `file` has changed from the `running` ones.
/// Everything else a reload applies at once (a listener's upstream among them).
pub fn restart_only(
    running: &floodgate_config::Config,
    file: &floodgate_config::Config,
) -> Vec<RestartOnly> {
    let keeps = "the running sidecar keeps its start-up value until it is restarted";
    let mut out: Vec<RestartOnly> = Vec::new();
    // Listeners are bound at start: a port cannot open, move or close on reload.
    for l in &file.listeners {
        let meanwhile = match running.listener(&l.name) {
            None => "a new listener's port is opened only at start-up: it opens when the sidecar is restarted",
            Some(r) if r.listen != l.listen => {
                "the listener keeps accepting on its start-up address until the sidecar is restarted (its upstream changes now)"
            }
            Some(_) => continue,
        };
        out.push(RestartOnly {
            setting: file.listen_key(&l.name),
            meanwhile,
        });
    }
    for r in &running.listeners {
        if file.listener(&r.name).is_none() {
            out.push(RestartOnly {
                setting: running.listen_key(&r.name),
                meanwhile: "the removed listener's port stays open until the sidecar is restarted, answering 503",
            });
        }
    }
    let checks: [(&'static str, bool); 6] = [
        (
            "metrics.listen",
            running.metrics_listen != file.metrics_listen,
        ),
        ("admin", running.admin != file.admin),
        ("redis", running.redis != file.redis),
        (
            "server.threads",
            running.server.threads != file.server.threads,
        ),
        (
            "server.drain_timeout_ms",
            running.server.drain_timeout != file.server.drain_timeout,
        ),
        (
            "logging.format",
            running.logging.format != file.logging.format,
        ),
    ];
    out.extend(
        checks
            .into_iter()
            .filter(|(_, changed)| *changed)
            .map(|(name, _)| RestartOnly {
                setting: name.to_string(),
                meanwhile: keeps,
            }),
    );
    out
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

/// The file's size and modification time, to tell whether it changed between two looks.
fn stamp(path: &Path) -> Option<(u64, std::time::SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

/// One try; with `may_retry`, a file that does not load is left for another try instead of
/// being counted.
fn attempt(rt: &Runtime, may_retry: bool) -> Attempt {
    // From building the snapshot to installing it, no other writer may store one.
    let _w = crate::lifecycle::writer(rt);
    let read = stamp(&rt.config_path);
    let result = rt
        .wiring
        .load(&rt.config_path)
        .map_err(ReloadError::from)
        .and_then(|cfg| {
            // Admin overrides stay layered on the new file.
            let base = crate::lifecycle::build_base(rt, &cfg)?;
            // The new file is the baseline only once a snapshot could be built from it.
            *rt.file_config.lock().unwrap_or_else(|e| e.into_inner()) = cfg;
            Ok(base)
        });
    match result {
        Ok(snap) => {
            let version = snap.version;
            for RestartOnly { setting, meanwhile } in restart_only(&rt.boot, &snap.config) {
                rt.metrics
                    .restart_required
                    .with_label_values(&[setting.as_str()])
                    .inc();
                warn!(
                    setting = setting.as_str(),
                    path = %rt.config_path.display(),
                    "`{setting}` changed, but it is read only at start-up: {meanwhile}"
                );
            }
            crate::lifecycle::install(rt, snap);
            rt.metrics.reloads.with_label_values(&["success"]).inc();
            info!(version, path = %rt.config_path.display(), "config reloaded");
            Attempt::Applied(version)
        }
        // Changed while it was being judged: a newer write is there or on its way (its event
        // follows), so this content is not the file's final word.
        Err(e @ ReloadError::Load(_)) if may_retry || stamp(&rt.config_path) != read => {
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

/// An event that may have changed the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Bytes written to (or truncated off) the file in place: a writer has it open.
    Written,
    /// A writer closed the file: what it wrote is complete.
    Closed,
    /// Created, removed or renamed: the file as a whole changed.
    Replaced,
    /// Attributes (a truncating open reports one with its write): says nothing of a writer.
    Touched,
}

/// What `ev` means for the config, if anything: a write, close-after-write, create, remove,
/// rename or attribute change of a watched name. Opens and reads (the reload's own among them)
/// are nothing.
fn classify(ev: &notify::Event, names: &[OsString]) -> Option<Change> {
    let change = match ev.kind {
        EventKind::Modify(ModifyKind::Data(_)) => Change::Written,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Change::Closed,
        EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(_)) | EventKind::Remove(_) => {
            Change::Replaced
        }
        EventKind::Modify(_) => Change::Touched,
        EventKind::Access(_) | EventKind::Any | EventKind::Other => return None,
    };
    ev.paths
        .iter()
        .any(|p| p.file_name().is_some_and(|n| names.iter().any(|w| w == n)))
        .then_some(change)
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
    /// Written in place and not closed since: a writer is (probably) mid-file.
    writing: bool,
    /// The file was found empty once already: the next time it is judged as it is.
    empty_seen: bool,
}

impl Debounce {
    fn changed(&mut self, now: Instant, change: Change) {
        self.last = Some(now);
        self.first.get_or_insert(now);
        match change {
            Change::Written => self.writing = true,
            Change::Closed | Change::Replaced => self.writing = false,
            Change::Touched => {}
        }
    }

    /// When to try: a debounce after the last change, or `MAX_WAIT` after the first; while a
    /// writer has the file open, not before it closes it (or `WRITER_GRACE` passes).
    fn due(&self) -> Option<Instant> {
        let (last, first) = (self.last?, self.first?);
        let due = (last + DEBOUNCE).min(first + MAX_WAIT);
        Some(if self.writing {
            due.max(last + WRITER_GRACE)
        } else {
            due
        })
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
        let (tx, mut rx) = mpsc::unbounded_channel::<Change>();
        let path = self.rt.config_path.clone();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let names = watched_names(&path);
        let mut watcher =
            match notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
                if let Some(change) = ev.ok().and_then(|ev| classify(&ev, &names)) {
                    let _ = tx.send(change);
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
        self.rt
            .reloads_armed
            .store(true, std::sync::atomic::Ordering::Release);
        // The last file content tried, so a change that leaves the bytes as they were (a
        // `touch`, a rename of identical content) causes no reload.
        let mut last_seen = std::fs::read(&path).ok();
        let mut wait = Debounce::default();
        // A change written after the start-up load but before the watch was in place sent no
        // event (and is in `last_seen` already): compare what the file says now with what was
        // loaded, once, now that every later change will be seen.
        let missed = match self.rt.wiring.load(&path) {
            Ok(now) => {
                let loaded = self
                    .rt
                    .file_config
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                format!("{now:?}") != format!("{:?}", *loaded)
            }
            Err(_) => true,
        };
        if missed {
            info!(
                "{} changed while the sidecar started; reloading",
                path.display()
            );
            last_seen = None;
            wait.changed(Instant::now(), Change::Replaced);
        }
        loop {
            let due = wait.due();
            tokio::select! {
                Some(change) = rx.recv() => wait.changed(Instant::now(), change),
                () = sleep_until(due) => {
                    // Events already sent may put the reload off (a writer just reopened it).
                    while let Ok(change) = rx.try_recv() {
                        wait.changed(Instant::now(), change);
                    }
                    let now = Instant::now();
                    if wait.due().is_some_and(|d| d > now) {
                        continue;
                    }
                    // A second failure after a quiet debounce is a real one; while the file
                    // is still being written, a failure only means "not finished yet".
                    let last_try = wait.retry && wait.quiet(now);
                    let content = std::fs::read(&path).ok();
                    if content.is_none() || (!wait.retry && content == last_seen) {
                        wait.clear();
                        continue; // deleted mid-swap (a later event follows) or unchanged
                    }
                    if content.as_ref().is_some_and(Vec::is_empty) && !wait.empty_seen {
                        // Truncated by an in-place write whose bytes (or whose event) are
                        // still to come: give the writer its grace before judging it.
                        wait.empty_seen = true;
                        wait.changed(now, Change::Written);
                        continue;
                    }
                    last_seen = content;
                    let rt = self.rt.clone();
                    let done = tokio::task::spawn_blocking(move || attempt(&rt, !last_try)).await;
                    wait.clear();
                    if let Ok(Attempt::Retry(_)) = done {
                        wait.retry = true;
                        wait.changed(Instant::now(), Change::Replaced);
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
    use notify::event::{CreateKind, DataChange, MetadataKind, RenameMode};

    fn ev(kind: EventKind, name: &str) -> notify::Event {
        notify::Event::new(kind).add_path(Path::new("/etc/floodgate").join(name))
    }

    #[test]
    fn only_changes_of_the_config_or_its_data_link_are_events() {
        let names = watched_names(Path::new("/etc/floodgate/floodgate.yaml"));
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        let is = |kind, name| classify(&ev(kind, name), &names);
        assert_eq!(is(write, "floodgate.yaml"), Some(Change::Written));
        assert_eq!(
            is(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                "floodgate.yaml"
            ),
            Some(Change::Closed)
        );
        assert_eq!(
            is(EventKind::Create(CreateKind::File), "floodgate.yaml"),
            Some(Change::Replaced)
        );
        let attrib = EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any));
        assert_eq!(is(attrib, "floodgate.yaml"), Some(Change::Touched));
        // kubelet's swap: `..data_tmp` renamed over `..data`.
        let rename = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        assert_eq!(is(rename, "..data"), Some(Change::Replaced));
        // The reload's own read opens the file: that must not schedule another reload.
        for read in [
            AccessKind::Open(AccessMode::Any),
            AccessKind::Read,
            AccessKind::Close(AccessMode::Read),
        ] {
            assert_eq!(is(EventKind::Access(read), "floodgate.yaml"), None);
        }
        // Other files in the directory (an editor's swap file, the log) are not the config.
        assert_eq!(is(write, ".floodgate.yaml.swp"), None);
        assert_eq!(is(write, "floodgate.log"), None);
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
        let ms = |n| t0 + Duration::from_millis(n);
        let mut d = Debounce::default();
        assert_eq!(d.due(), None, "nothing waiting");
        d.changed(t0, Change::Replaced);
        assert_eq!(d.due(), Some(t0 + DEBOUNCE));
        // Each change restarts the debounce ...
        d.changed(ms(50), Change::Replaced);
        assert_eq!(d.due(), Some(ms(150)));
        assert!(!d.quiet(ms(120)));
        assert!(d.quiet(ms(150)));
        // ... but a file rewritten every 20 ms still reloads after MAX_WAIT.
        for n in (0..3000).step_by(20) {
            d.changed(ms(n), Change::Closed);
        }
        assert_eq!(d.due(), Some(t0 + MAX_WAIT));
        assert!(
            !d.quiet(t0 + MAX_WAIT),
            "a reload at MAX_WAIT is not after quiet"
        );
        d.clear();
        assert_eq!(d.due(), None);
    }

    #[test]
    fn an_open_writer_is_waited_for_until_it_closes_the_file() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut d = Debounce::default();
        // A truncating open (write + attributes), then the writer stalls mid-file.
        d.changed(t0, Change::Written);
        d.changed(t0, Change::Touched);
        assert_eq!(d.due(), Some(t0 + WRITER_GRACE), "not while it is open");
        d.changed(ms(300), Change::Written);
        assert_eq!(d.due(), Some(ms(300) + WRITER_GRACE));
        // Closed: complete, and past MAX_WAIT nothing more is waited for.
        d.changed(ms(1200), Change::Closed);
        assert_eq!(d.due(), Some(t0 + MAX_WAIT));
    }
}
