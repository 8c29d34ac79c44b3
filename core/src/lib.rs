//! ampere's sans-I/O core.
//!
//! Everything here is deterministic: no I/O, no clock, no randomness. Facts arrive as
//! [`instance::Input`]s with the current [`time::Instant`]; commands leave as
//! [`instance::Output`]s. The drain rule: after every `handle_*` call, drain
//! [`instance::Instance::poll_output`] to `None`, then read `poll_timeout`.
//!
//! ```no_run
//! # use ampere_core::instance::{Config, Instance};
//! # use ampere_core::time::Instant;
//! # fn run(config: Config, now: impl Fn() -> Instant) {
//! let mut core = Instance::new(config, now());
//! loop {
//!     while let Some(output) = core.poll_output() {
//!         // execute `output` through the ports
//!     }
//!     let _deadline = core.poll_timeout();
//!     // wait for a completion (→ handle_input) or the deadline (→ handle_timeout)
//!     core.handle_timeout(now());
//! }
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod chunk;
pub mod instance;
pub mod json;
pub mod lsn;
#[cfg(feature = "sim")]
pub mod mutant;
pub mod offset;
pub mod pgoutput;
pub mod ports;
mod routing;
pub mod shape;
mod shapes;
pub mod slot_setup;
pub mod snapshot;
pub mod snapshot_steps;
pub mod subset;
pub mod time;
pub mod txn;
pub mod where_clause;

pub use lsn::Lsn;
pub use offset::LogOffset;
pub use shapes::selected_columns;

/// An error and its sources, joined by `: ` (top-level messages of wrapped errors say little).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// Identifies a command that expects a reply; the reply echoes it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct OpId(pub u64);

#[cfg(test)]
mod tests;
