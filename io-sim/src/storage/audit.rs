//! The audit of every storage mutation (deploy-semantics §2 item 2, §3 invariant 6): the
//! simulation checks, in a hook called just before each mutation takes effect, that the
//! writer holds the advisory lock.

use std::time::Duration;

use ampere_core::{LogOffset, Lsn};

/// One mutation of a [`super::SimDisk`], reported to the audit hook before it takes effect.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Mutation {
    /// Simulated time the mutation takes effect (`turmoil::sim_elapsed`, zero outside a sim).
    pub at: Duration,
    /// Simulated time the write was issued (before its fsync latency); equals `at` for
    /// mutations without latency. For crash-time effects (`Torn*`, `*Leftover`) it is when
    /// the interrupted write began.
    pub issued_at: Duration,
    /// The store or metadata instance that issued it (its `writer` name).
    pub writer: String,
    /// What changes.
    pub kind: MutationKind,
    /// The shape it concerns, if any.
    pub handle: Option<String>,
}

/// What a [`Mutation`] changes.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum MutationKind {
    /// A shape's empty log becomes durable (its directory renamed into place).
    CreateShape,
    /// Flushed entries become durable (data, then index records).
    AppendDurable {
        /// Entries made durable.
        entries: usize,
        /// The last of them.
        last: LogOffset,
    },
    /// A shape is removed (renamed into the trash, then deleted).
    RemoveShape,
    /// Snapshot chunk `index` becomes durable.
    SnapshotChunk {
        /// The chunk.
        index: u64,
    },
    /// The snapshot's completion marker becomes durable.
    SnapshotComplete,
    /// A shape's metadata row is written (and the stamp high-water mark raised).
    MetadataPut,
    /// A shape's metadata row is deleted.
    MetadataDelete,
    /// Rows restored from shape descriptions and the stamp raised to the shape directories'
    /// (MD-3), when a promoted metadata store finds them missing.
    MetadataRebuild {
        /// Rows restored.
        rows: usize,
    },
    /// The storage identity row is written (CT-5).
    IdentityPut {
        /// The acknowledged position it records.
        acked: Lsn,
        /// Whether it records a pending purge.
        purge_pending: bool,
    },
    /// A shape's own copy of its metadata row (`shape.json`, MD-3) is written.
    DescriptionPut,
    /// A promoted store clears a half-created shape or a trash entry left by a crash.
    PromoteCleanup,
    /// The storage lease (fencing generation) taken by a promoting writer.
    LeaseAcquired {
        /// The new generation.
        generation: u64,
    },
    /// A crash left this prefix of an in-flight flush durable.
    TornAppend {
        /// Entries that survived.
        entries: usize,
        /// The last of them.
        last: LogOffset,
    },
    /// A crash left a half-created shape directory behind (not a readable shape).
    CreateLeftover,
    /// A crash made an in-flight removal's rename durable: the shape is gone, its files
    /// linger in the trash.
    RemovedToTrash,
}

/// The audit hook: called synchronously, outside the disk's lock, before each mutation.
pub type AuditHook = Box<dyn Fn(&Mutation) + Send + Sync>;
