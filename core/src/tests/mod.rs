//! Scenario tests of the core on a scripted harness.

mod harness;

mod durability;
mod entries;
mod recovery;
mod replication;
mod shapes;
mod snapshot;
