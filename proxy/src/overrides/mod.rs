//! Operator overrides on top of the config file, as plain data: the model (what an override
//! changes, the layers it comes from and the config they make together), the schedule layer
//! computed from the clock, the audit entries, and the fleet layer's store in Redis. Nothing
//! here touches the runtime: [`crate::lifecycle`] turns them into the snapshot requests see,
//! and [`crate::fleet`] keeps the fleet layer in step with Redis.

pub mod audit;
pub mod fleet_store;
pub mod model;
pub mod schedule;

pub use model::{effective_config, AdminState, Kind, Override};
