//! Floodgate's configuration: the YAML file's shape ([`raw`]), the checked model the proxy
//! runs on ([`Config`]), and validation that reports every problem with its line and field.
//! Pure data: no networking, no async.

#![forbid(unsafe_code)]

mod decode;
pub mod error;
mod locate;
pub mod model;
mod notes;
pub mod raw;
mod validate;
mod wiring;
mod words;

use std::path::Path;

pub use error::{ConfigErrors, FieldError, LoadError};
pub use model::*;
pub use notes::notes;
pub use validate::{parse, DEFAULT_ROUTE, TOP_LEVEL};
pub use wiring::{BadListener, ListenerWiring, Wiring};

/// Reads and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(parse(&text, path)?)
}

/// The JSON Schema of the config file, for editors (`config/floodgate.schema.json`).
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(raw::RawConfig);
    let mut s = serde_json::to_string_pretty(&schema).unwrap_or_default();
    s.push('\n');
    s
}
