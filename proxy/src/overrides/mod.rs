//! Operator overrides on top of the config file, as plain data: the model (what an override
//! changes, the layers it comes from and the config they make together), the schedule layer
//! computed from the clock, and the audit entries. Nothing here touches the runtime;
//! [`crate::lifecycle`] turns them into the snapshot requests see.

pub mod audit;
pub mod model;
pub mod schedule;

pub use model::{effective_config, AdminState, Kind, Override};
