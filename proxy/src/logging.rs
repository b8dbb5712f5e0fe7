//! Log set-up: `tracing` to stderr, text or JSON, written by a background thread so a slow
//! terminal or log collector never blocks a request. `RUST_LOG` overrides the default filter
//! (of these logs; the access log is `logging.access_log`, see [`crate::access`]).

use std::sync::Mutex;

use floodgate_config::LogFormat;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

static GUARD: Mutex<Option<WorkerGuard>> = Mutex::new(None);

/// Installs the global subscriber. Call once, at start-up.
pub fn init(format: LogFormat) {
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    if let Ok(mut g) = GUARD.lock() {
        *g = Some(guard);
    }
    crate::access::init(writer.clone(), format);
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,pingora_core=warn,pingora_proxy=warn"));
    // Colour codes only on a terminal: they would litter files and log collectors.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// Writes out buffered lines; call before `process::exit`.
pub fn flush() {
    if let Ok(mut g) = GUARD.lock() {
        g.take();
    }
}
