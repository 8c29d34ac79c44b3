//! Simulated adapters for ampere's ports, on turmoil hosts.
//!
//! Everything here is deterministic given the seed turmoil runs with: no OS clock, no OS
//! randomness, no `HashMap` iteration. The simulation (`sim-tests`) runs the production driver
//! and HTTP router over these ports.
//!
//! - [`pg`]: a Postgres *model* (WAL, xids with epochs, MVCC snapshots, logical slots,
//!   advisory locks, publication) served over a small framed protocol on `turmoil::net`, and
//!   [`pg::SimPg`], the `PgPort` that talks to it.
//! - [`storage`]: shape logs and metadata on a disk with power-loss semantics (writes pending
//!   until synced; a crash drops or tears what is pending), with an audit of every mutation.
//! - [`clock`]: the `Clock` port on turmoil's virtual time, with steppable wall clock (F10).
//! - [`faults`]: swarm fault profiles chosen per seed.
//! - [`oracle`]: what every shape must contain at every offset.

pub mod clock;
pub mod faults;
pub mod oracle;
pub mod pg;
pub mod storage;
