//! Floodgate's admin plane. The gRPC service ([`service::AdminService`]) is written against
//! the small [`control::Control`] trait, which the sidecar implements over its runtime state
//! in plain Rust types ([`reply`]); the service alone speaks protobuf. So this crate knows
//! nothing of pingora, and the sidecar nothing of the wire. Calls are authenticated by bearer tokens
//! ([`auth`]); `floodgatectl` is the CLI over the same proto. [`inject`] is `floodgatectl
//! inject`, which adds the sidecar to Kubernetes workloads (offline, no sidecar needed).

#![forbid(unsafe_code)]

pub mod auth;
pub mod control;
mod convert;
pub mod inject;
pub mod reply;
pub mod service;

/// The admin proto's encoded `FileDescriptorSet`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/admin_descriptor.bin"));

/// The generated protobuf and gRPC types of `floodgate.admin.v1`.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used
)]
pub mod pb {
    tonic::include_proto!("floodgate.admin.v1");
}
