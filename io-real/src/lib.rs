//! ampere's real adapters for the core's ports.

pub mod catalog;
pub mod clock;
pub mod embedded_pg;
pub mod metadata;
pub mod pg;
pub mod replication;
pub mod snapshot;
pub mod standby_metadata;
pub mod store;
