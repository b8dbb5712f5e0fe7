//! Floodgate's request policies as plain Rust: rate limits now (queue, breaker and degradation
//! follow). Time comes from an injectable [`Clock`]; nothing here touches pingora or sockets,
//! so every rule is unit-tested directly.

#![forbid(unsafe_code)]

pub mod clock;
pub mod headers;
pub mod key;
pub mod limiter;
pub mod set;
pub mod window;

pub use clock::Clock;
pub use key::RequestParts;
pub use limiter::{Limiter, Outcome};
pub use set::{decision, merge, Decision, LimitSet, Verdict};
