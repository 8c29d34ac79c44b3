//! Simulated storage: shape logs ([`SimStore`]) and metadata ([`SimMetadata`]) on a
//! [`SimDisk`] with power-loss semantics, and an audit of every mutation.
//!
//! One [`SimDisk`] is one storage directory; hosts that share storage share the disk (its
//! clones), hosts with their own storage each get one. Each host opens a [`SimStore`] and a
//! [`SimMetadata`] on it under its writer name; both are read-only followers until the
//! driver promotes them with the advisory lock held (RO-4), exactly as io-real's
//! `FileStore::open_follower` and `StandbyMetadata` are.
//!
//! **Durability model** (deploy-semantics RP-1, RP-7, §3 F1/F6/F9): appends live in the
//! store (process memory); a flush, a snapshot chunk, a completion marker, a metadata
//! transaction or a rename is *in flight* for its fsync latency and then durable in one step.
//! Readers on every host only ever see durable state. [`SimDisk::crash`] models power loss
//! for one writer: a flush in flight leaves a prefix of each shape's batch (entry
//! granularity, never a gap), renames may or may not stick, everything else in flight is
//! lost.
//!
//! **Audit** (§2 item 2, §3 invariant 6): [`SimDisk::set_audit_hook`] sees every
//! [`Mutation`] with its writer name just before it takes effect.
//!
//! **Never:** serves a non-durable byte; writes before promotion; uses OS time or
//! randomness (latencies come from the disk's seeded PRNG, crash outcomes from the caller's
//! entropy); iterates a `HashMap`.

mod audit;
mod disk;
mod durable;
mod error;
mod metadata;
mod read;
mod rng;
mod snapshot;
mod store;

#[cfg(test)]
mod tests;

pub use audit::{AuditHook, Mutation, MutationKind};
pub use disk::SimDisk;
pub use error::{SimMetadataError, SimStoreError};
pub use metadata::SimMetadata;
pub use snapshot::SimSnapshotWriter;
pub use store::SimStore;
