//! End-to-end tests: the real `floodgate` binary, started on free loopback ports in front of a
//! real HTTP upstream. Every test runs in parallel with the others.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod breaker;
mod cli;
mod connections;
mod degrade;
mod demo;
mod deploy;
mod examples;
mod fast_path;
mod global;
mod global_faults;
mod grpc;
mod image;
mod inject;
mod injector_webhook;
mod lifecycle;
mod limits;
mod listeners;
mod paths;
mod proxy;
mod queue;
mod redis_support;
mod reload;
mod repository;
mod runbook;
mod script;
mod support;
mod top;
