//! ampere's sans-I/O core.
#![forbid(unsafe_code)]

pub mod chunk;
pub mod json;
pub mod lsn;
pub mod offset;
pub mod pgoutput;
pub mod ports;
pub mod shape;
pub mod snapshot;

pub use lsn::Lsn;
pub use offset::LogOffset;
