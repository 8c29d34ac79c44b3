//! A Postgres model served over `turmoil::net`, and [`SimPg`], the core's `PgPort` talking to
//! it.
//!
//! - [`model`]: the model itself, pure and synchronous — WAL, transactions with full 64-bit
//!   xids, MVCC snapshots, tables, publications (membership recorded at write time),
//!   logical slots, backends and advisory locks — shared as [`SharedPg`]. The simulation's
//!   workload writes through it directly, injects faults through it ([`PgModel::restart`],
//!   [`PgModel::drop_slot`], [`PgModel::invalidate_slot`], [`PgModel::drop_publication`],
//!   [`PgModel::terminate_backend`], [`PgModel::set_wal_sender_timeout`]) and checks
//!   invariants on it ([`PgModel::lock_events`], [`PgModel::lock_holder_host`],
//!   [`PgModel::ack_events`], [`PgModel::committed`]).
//! - [`walsender`] and [`encode`]: logical decoding of the model into pgoutput v1 messages.
//! - [`serve`]: the body of the `pg` host (port [`PG_PORT`]), speaking a small framed
//!   protocol (`wire`): u32 length, u32 sequence, u32 checksum, JSON body.
//! - [`SimPg`]: the port, mirroring io-real's `RealPg` (see `port` for the differences).
//!
//! # What turmoil does to the connections
//!
//! turmoil 0.7 numbers the segments of each TCP stream and the receiver delivers them only in
//! order (a reorder buffer keyed by sequence number). So:
//!
//! - `partition(a, b)` drops every segment sent while it lasts, and clears segments in
//!   flight. A dropped segment is never retransmitted: every later segment of that stream
//!   waits forever in the receiver's reorder buffer. The stream is *silently dead* — no
//!   error, no EOF, on either side — and after `repair` it stays dead; the sender's writes
//!   block once the 64-segment flow-control window fills (credits return only as the peer
//!   reads). Connection attempts during a partition fail at once (`ConnectionRefused`: the
//!   SYN's reply channel is dropped). The framing's sequence numbers and checksums would
//!   catch a hole or garbage if one ever got through; none should.
//! - `hold(a, b)` keeps segments on the link and `release` delivers them in order: a
//!   half-open or stalled connection that recovers, the sim's tool for PG link faults.
//!   A walsender whose client is held for `wal_sender_timeout` closes its connection (its
//!   FIN is held too) and releases the lock and slot in the model at once.
//! - `Sim::crash(host)` drops the host's runtime and so every socket on it: each sends FIN
//!   (or RST when unread data was pending) to its peer, which sees EOF or `ConnectionReset`
//!   promptly unless the link is partitioned or held. Crashing `pg` therefore looks like a
//!   killed postmaster whose kernel closed the sockets. Backend tasks dropped by a crash
//!   close their backends in the model (locks released, slots inactive, temporary slots
//!   dropped). The model (an `Arc`) survives; committed transactions are durable.
//!
//! # Restarting `pg`
//!
//! `sim.crash("pg")` then `sim.bounce("pg")`: the new [`serve`] notices it starts in the same
//! model incarnation as the crashed one and applies `restart(true)` itself (in-progress
//! transactions aborted, slots' `confirmed_flush_lsn` reverted to the last checkpoint).
//! For a fast restart call `model.restart(false)` before `bounce`. `restart` alone, without
//! touching the host, terminates every backend in place (clients get `57P01`) — a restart the
//! clients see without the listener going away. Never hold the model's lock across
//! `Sim::crash`.

pub mod encode;
pub mod model;
mod port;
mod server;
mod snapshot;
pub mod walsender;
mod wire;

pub use model::session::{advisory_key, hashtext, AckEvent, Backend, LockEvent, Slot, SqlError};
pub use model::{
    lock, AckHook, CommittedTxn, ModelChange, ModelColumn, ModelError, PgModel, PgModelConfig,
    PgSettings, Row, SharedPg, TableDef, XactStatus, WAL_START,
};
pub use port::{SimPg, SimPgError, SimReplicationStream, SimSession, CONNECT_TIMEOUT};
pub use server::{serve, PG_PORT};
pub use snapshot::SimSnapshotSteps;

#[cfg(test)]
mod snapshot_contract;
#[cfg(test)]
mod tests;
