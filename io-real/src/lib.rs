//! ampere's real adapters for the core's ports.

pub mod embedded_pg;
pub mod replication;
