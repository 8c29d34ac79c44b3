//! ampere server library: the driver loop, the HTTP API, configuration.

pub mod api;
pub mod http;
