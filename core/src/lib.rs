//! ampere's sans-I/O core.
#![forbid(unsafe_code)]

pub mod lsn;
pub mod pgoutput;

pub use lsn::Lsn;
