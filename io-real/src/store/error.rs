//! The store's error type.

use std::io;
use std::path::{Path, PathBuf};

use ampere_core::ports::StorageFault;
use ampere_core::shape::ShapeHandle;
use ampere_core::LogOffset;

use crate::lease::{io_fault, Fenced};

/// Why a shape-log store operation failed.
///
/// File errors carry the operation, the path and the OS error (as the source): `EMFILE` when
/// the process is out of descriptors opening a log, `ENOSPC`, `EIO`. A failed write (or the
/// `open` before it), `fdatasync` or `syncfs` poisons the shapes it concerned
/// ([`StoreError::ShapeFailed`] afterwards): after a failed sync the page cache can no longer
/// be trusted, so the core must invalidate the shape (deploy-semantics RP-6) rather than retry.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file system call failed.
    #[error("cannot {op} {path}")]
    Io {
        /// What was being done (`"fdatasync"`, `"open"`, …).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The store has no such shape (never created, removed, or not recovered yet).
    #[error("shape {handle} is not in the store")]
    UnknownShape {
        /// The shape.
        handle: ShapeHandle,
    },
    /// `create_shape` found the shape's directory already there.
    #[error("shape {handle} already exists at {path}")]
    ShapeExists {
        /// The shape.
        handle: ShapeHandle,
        /// Its directory.
        path: PathBuf,
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
    /// An entry of 4 GiB or more (pgoutput cannot carry one; the index stores 32-bit lengths).
    #[error("append to shape {handle}: entry {offset} is {len} bytes, too large")]
    EntryTooLarge {
        /// The shape.
        handle: ShapeHandle,
        /// The entry's offset.
        offset: LogOffset,
        /// Its length.
        len: usize,
    },
    /// An earlier write or `fdatasync` of this shape failed; it accepts no more appends.
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
    /// Files that no crash can produce (damage in the middle of a log, a completion marker that
    /// disagrees with its chunks): the shape needs a new handle.
    #[error("{path} is corrupt: {detail}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong.
        detail: &'static str,
    },
    /// The storage directory probe failed (deploy-semantics ST-1). The message is meant for the
    /// operator: it names the path, the OS error and the usual fix.
    #[error(
        "storage directory {root} is not usable: cannot {op} {path}: {error}{}",
        not_writable_hint(error)
    )]
    NotWritable {
        /// The storage directory.
        root: PathBuf,
        /// What the probe was doing.
        op: &'static str,
        /// The path it failed on.
        path: PathBuf,
        /// The OS error (in the message, for the startup error).
        error: io::Error,
    },
    /// A write through a follower (deploy-semantics RO-4): only the lock holder writes, after
    /// [`super::FileStore::promote`]. Nothing was touched.
    #[error("shape storage {root} is read-only here: this instance does not hold the lock")]
    ReadOnly {
        /// The storage root.
        root: PathBuf,
    },
    /// A write to a shape this store only follows: after promotion, a shape is written once
    /// `recover` took it over.
    #[error("shape {handle} is followed read-only; recover it before writing")]
    NotRecovered {
        /// The shape.
        handle: ShapeHandle,
    },
    /// Another instance acquired the storage lease since this store was promoted (it lost
    /// the lock, and may not have noticed yet; deploy-semantics LK-6, §2 item 13). Nothing was
    /// written; the store follows again, refusing every write with this error, until promoted
    /// anew.
    #[error("shape storage writes refused: another instance took the storage lease")]
    Fenced {
        /// What the lease file says now.
        #[source]
        source: Fenced,
    },
    /// A blocking worker task panicked or was cancelled at runtime shutdown.
    #[error("storage worker task failed")]
    Worker {
        /// The join failure.
        #[source]
        source: tokio::task::JoinError,
    },
}

impl StoreError {
    /// Whether this instance was deposed: another instance took the storage lease, so it must
    /// stop writing and wait for the lock again ([`StoreError::Fenced`]).
    pub fn is_fenced(&self) -> bool {
        matches!(self, Self::Fenced { .. })
    }

    /// The resource a file operation ran out of (full disk, descriptor limit, device error):
    /// the instance degrades on these instead of stopping. `None` for every other error.
    pub fn fault(&self) -> Option<StorageFault> {
        match self {
            Self::Io { path, source, .. } => io_fault(source, path),
            Self::NotWritable { path, error, .. } => io_fault(error, path),
            _ => None,
        }
    }
}

/// The fix for a storage directory that failed the startup probe, after its cause: none for
/// a full disk, the descriptor limit or a device error (ownership is not the problem, and the
/// server starts read-only anyway), the ownership hint for everything else.
fn not_writable_hint(error: &io::Error) -> &'static str {
    if io_fault(error, Path::new("")).is_some() {
        return "";
    }
    ". Make sure it is a writable directory and that the user running ampere owns it (or can \
     create it in its parent directory)"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn not_writable(errno: i32) -> StoreError {
        StoreError::NotWritable {
            root: PathBuf::from("/s"),
            op: "write",
            path: PathBuf::from("/s/.probe"),
            error: io::Error::from_raw_os_error(errno),
        }
    }

    #[test]
    fn a_full_storage_directory_is_a_fault_named_before_any_ownership_hint() {
        let full = not_writable(libc::ENOSPC);
        let fault = full.fault().expect("a fault");
        assert_eq!(fault.code, "ENOSPC");
        assert_eq!(fault.path.as_deref(), Some("/s/.probe"));
        let message = full.to_string();
        assert!(message.contains("No space left on device"), "{message}");
        assert!(!message.contains("owns it"), "{message}");

        let denied = not_writable(libc::EACCES);
        assert_eq!(denied.fault(), None);
        let message = denied.to_string();
        let cause = message.find("Permission denied").expect("the cause");
        let hint = message.find("owns it").expect("the hint");
        assert!(cause < hint, "{message}");
    }

    #[test]
    fn only_file_errors_are_faults() {
        let io = StoreError::Io {
            op: "open",
            path: PathBuf::from("/s/shapes/h/log.json"),
            source: io::Error::from_raw_os_error(libc::EMFILE),
        };
        assert_eq!(io.fault().map(|f| f.code), Some("EMFILE"));
        let handle = ShapeHandle::from_string("1-2".to_owned());
        assert_eq!(StoreError::ShapeFailed { handle }.fault(), None);
    }
}
