//! Operator overrides on top of the config file: the model (what an override changes, the
//! layers it comes from and the config they make together), the schedules that add
//! overrides by the clock, the audit trail, and the lifecycle that turns them into the
//! snapshot requests see.

pub mod audit;
pub mod lifecycle;
pub mod model;
pub mod schedule;

pub use model::{effective_config, AdminState, Kind, Override};
