//! ampere server library: the driver loop, the HTTP API, configuration.

pub mod api;
pub mod app;
pub mod cleanup;
pub mod config;
pub mod driver;
pub mod eviction;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod ops;
pub mod registry;
pub mod service;
