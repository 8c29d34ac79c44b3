//! Scenario tests of the core on a scripted harness.

pub(crate) mod harness;

mod durability;
mod entries;
mod lifecycle;
mod recovery;
mod replication;
mod shapes;
mod snapshot;
mod state_machine;
