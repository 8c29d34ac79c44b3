//! The simulated stores' errors (io-real's `StoreError` and `MetadataError`, as far as a
//! simulated disk can fail).

use ampere_core::ports::{StorageFault, StorageFaultKind};
use ampere_core::shape::ShapeHandle;
use ampere_core::LogOffset;

use super::disk::WriteError;
use super::durable::Refused;

/// Why a [`super::SimStore`] operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SimStoreError {
    /// A write through a store that was not promoted (deploy-semantics RO-4). Nothing was
    /// touched.
    #[error("shape storage is read-only for {writer}: it does not hold the lock")]
    ReadOnly {
        /// The store's writer name.
        writer: String,
    },
    /// The store has no such shape (never created, removed, or not recovered yet).
    #[error("shape {handle} is not in the store")]
    UnknownShape {
        /// The shape.
        handle: ShapeHandle,
    },
    /// `create_shape` found the shape already there.
    #[error("shape {handle} already exists")]
    ShapeExists {
        /// The shape.
        handle: ShapeHandle,
    },
    /// A handle that cannot name a directory (only ASCII letters, digits, `-` and `_` can).
    #[error("shape handle {handle:?} cannot name a directory")]
    InvalidHandle {
        /// The handle.
        handle: ShapeHandle,
    },
    /// An appended entry's offset is not above the previous one (or not above `0_inf`).
    #[error("append to shape {handle}: offset {offset} is not after {last}")]
    OffsetNotIncreasing {
        /// The shape.
        handle: ShapeHandle,
        /// The offending offset.
        offset: LogOffset,
        /// The last offset appended before it (`0_inf` if none).
        last: LogOffset,
    },
    /// An earlier write of this shape was lost; it accepts no more appends.
    #[error("shape {handle} failed an earlier write and accepts no more")]
    ShapeFailed {
        /// The shape.
        handle: ShapeHandle,
    },
    /// Snapshot chunks must be written in order `0, 1, …` and only before `finish`.
    #[error("shape {handle}: snapshot chunk {index} out of order (next is {expected:?})")]
    SnapshotChunkOutOfOrder {
        /// The shape.
        handle: ShapeHandle,
        /// The chunk written.
        index: u64,
        /// The chunk expected next, `None` once the snapshot is complete.
        expected: Option<u64>,
    },
    /// `finish` before any chunk: even an empty table has chunk 0 with `snapshot-end`.
    #[error("shape {handle}: snapshot finished without chunks")]
    SnapshotEmpty {
        /// The shape.
        handle: ShapeHandle,
    },
    /// A write to a shape this store only follows: after promotion, a shape is written once
    /// `recover` took it over.
    #[error("shape {handle} is followed read-only; recover it before writing")]
    NotRecovered {
        /// The shape.
        handle: ShapeHandle,
    },
    /// The disk lost the write (a crash, or an older copy restored) before it was durable.
    #[error("{op} by {writer} was lost before it was durable")]
    Lost {
        /// The store's writer name.
        writer: String,
        /// What was being written.
        op: &'static str,
    },
    /// The disk was full (F12): nothing was written.
    #[error("{op} by {writer} failed: no space left on the disk (ENOSPC)")]
    Full {
        /// The store's writer name.
        writer: String,
        /// What was being written.
        op: &'static str,
    },
    /// The task completing a write failed (runtime shutting down).
    #[error("storage worker task failed")]
    Worker {
        /// The join failure.
        #[source]
        source: tokio::task::JoinError,
    },
    /// Another instance took the storage lease: this one is deposed and must not write.
    #[error("{op} by {writer} refused: another instance took the storage lease (fenced)")]
    Fenced {
        /// The deposed writer.
        writer: String,
        /// What it tried.
        op: &'static str,
    },
}

impl ampere_core::ports::StorageError for SimStoreError {
    fn is_fenced(&self) -> bool {
        matches!(self, Self::Fenced { .. })
    }

    fn fault(&self) -> Option<StorageFault> {
        matches!(self, Self::Full { .. }).then(full)
    }
}

/// What io-real reports for `ENOSPC` (the simulated disk has no paths).
fn full() -> StorageFault {
    StorageFault {
        kind: StorageFaultKind::Full,
        code: "ENOSPC",
        path: None,
    }
}

impl SimStoreError {
    /// Maps a disk write failure of `op` (concerning `handle`, if one shape).
    pub(super) fn from_write(
        err: WriteError,
        writer: &str,
        op: &'static str,
        handle: Option<&ShapeHandle>,
    ) -> Self {
        match (err, handle) {
            (WriteError::Refused(Refused::ShapeExists), Some(handle)) => Self::ShapeExists {
                handle: handle.clone(),
            },
            (WriteError::Refused(Refused::ShapeGone), Some(handle)) => Self::UnknownShape {
                handle: handle.clone(),
            },
            (WriteError::Worker(source), _) => Self::Worker { source },
            (WriteError::Full, _) => Self::Full {
                writer: writer.to_owned(),
                op,
            },
            (WriteError::Refused(Refused::Fenced), _) => Self::Fenced {
                writer: writer.to_owned(),
                op,
            },
            (WriteError::Lost | WriteError::Refused(_), _) => Self::Lost {
                writer: writer.to_owned(),
                op,
            },
        }
    }
}

/// Why a [`super::SimMetadata`] operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SimMetadataError {
    /// A write before [`super::SimMetadata::promote`] (RO-4). Nothing was touched.
    #[error("shape metadata is read-only for {writer}: it does not hold the lock")]
    ReadOnly {
        /// The metadata store's writer name.
        writer: String,
    },
    /// The disk lost the transaction (a crash before it committed).
    #[error("{op} by {writer} was lost before it committed")]
    Lost {
        /// The metadata store's writer name.
        writer: String,
        /// What was being written.
        op: &'static str,
    },
    /// The disk was full (F12): nothing was written.
    #[error("{op} by {writer} failed: no space left on the disk (ENOSPC)")]
    Full {
        /// The metadata store's writer name.
        writer: String,
        /// What was being written.
        op: &'static str,
    },
    /// The task completing a write failed (runtime shutting down).
    #[error("metadata worker task failed")]
    Worker {
        /// The join failure.
        #[source]
        source: tokio::task::JoinError,
    },
    /// Another instance took the storage lease: this one is deposed and must not write.
    #[error("{op} by {writer} refused: another instance took the storage lease (fenced)")]
    Fenced {
        /// The deposed writer.
        writer: String,
        /// What it tried.
        op: &'static str,
    },
}

impl ampere_core::ports::StorageError for SimMetadataError {
    fn is_fenced(&self) -> bool {
        matches!(self, Self::Fenced { .. })
    }

    fn fault(&self) -> Option<StorageFault> {
        matches!(self, Self::Full { .. }).then(full)
    }
}

impl SimMetadataError {
    /// Maps a disk write failure (metadata writes are never refused).
    pub(super) fn from_write(err: WriteError, writer: &str, op: &'static str) -> Self {
        match err {
            WriteError::Worker(source) => Self::Worker { source },
            WriteError::Full => Self::Full {
                writer: writer.to_owned(),
                op,
            },
            WriteError::Refused(Refused::Fenced) => Self::Fenced {
                writer: writer.to_owned(),
                op,
            },
            WriteError::Lost | WriteError::Refused(_) => Self::Lost {
                writer: writer.to_owned(),
                op,
            },
        }
    }
}
