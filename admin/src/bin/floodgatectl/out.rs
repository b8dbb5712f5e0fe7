//! Standard output that never panics. `println!` panics when the reader has gone
//! (`floodgatectl status | head -1`); here a closed pipe ends the command quietly instead.
//!
//! Why not restore the default SIGPIPE disposition at start, as C programs live with? It needs
//! `unsafe` (`libc::signal`, or nix's `unsafe fn signal`) in a crate that forbids it, it would
//! kill the process mid-write with status 141 where scripts expect 0, and it is Unix-only.
//! Handling `BrokenPipe` where the bytes are written is portable and ends with the same quiet.

use std::io::Write;

use serde::Serialize;

use crate::args::Output;
use crate::client::{Failure, Stop};

/// Locked standard output; every write is flushed so a closed pipe shows at once.
pub(crate) struct Out(std::io::StdoutLock<'static>);

impl Out {
    pub(crate) fn new() -> Self {
        Self(std::io::stdout().lock())
    }

    /// Writes `text` as it is.
    pub(crate) fn put(&mut self, text: &str) -> Result<(), Stop> {
        self.put_bytes(text.as_bytes())
    }

    /// The stream itself, for `top`'s live view, which writes terminal commands through
    /// crossterm and flushes each frame itself.
    pub(crate) fn writer(&mut self) -> &mut impl Write {
        &mut self.0
    }

    /// Writes `bytes` as they are.
    pub(crate) fn put_bytes(&mut self, bytes: &[u8]) -> Result<(), Stop> {
        match self.0.write_all(bytes).and_then(|()| self.0.flush()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Stop::PipeClosed),
            Err(e) => Err(Failure(1, format!("cannot write standard output: {e}")).into()),
        }
    }
}

/// `v` as the machine-readable `format` asks: pretty JSON, or YAML from the same fields.
/// `None` for `table`, which each command renders itself.
pub(crate) fn encode<T: Serialize>(format: Output, v: &T) -> Result<Option<String>, Failure> {
    let text = match format {
        Output::Table => return Ok(None),
        Output::Json => serde_json::to_string_pretty(v).map(|mut s| {
            s.push('\n');
            s
        }),
        Output::Yaml => return serde_yaml::to_string(v).map(Some).map_err(cannot_encode),
    };
    text.map(Some).map_err(cannot_encode)
}

/// One event of a stream (`watch`): a JSON line, or a YAML document of its own.
pub(crate) fn encode_one<T: Serialize>(format: Output, v: &T) -> Result<Option<String>, Failure> {
    match format {
        Output::Table => Ok(None),
        Output::Json => serde_json::to_string(v)
            .map(|s| Some(s + "\n"))
            .map_err(cannot_encode),
        Output::Yaml => serde_yaml::to_string(v)
            .map(|s| Some(format!("---\n{s}")))
            .map_err(cannot_encode),
    }
}

fn cannot_encode(e: impl std::fmt::Display) -> Failure {
    Failure(1, format!("cannot encode the reply: {e}"))
}
