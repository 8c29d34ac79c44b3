//! Following shapes another process writes (deploy-semantics RO-1, RO-3, RO-4): what a standby
//! learns from the writer's files, without ever writing to them.
//!
//! **Log.** The writer `fdatasync`s data before it writes the index records naming it, so a
//! complete, checksum-valid index record whose data lies within the data file names bytes that
//! are already written. A refresh `stat`s `log.idx` by path (gone or replaced: the shape is
//! gone); if it grew past what was accepted, it reads the new bytes and accepts the records
//! that continue the log (offsets increasing, data contiguous and within `log.json`), stopping
//! at the first that does not: a torn tail (a crashed writer) and a record still being written
//! look alike and are both left out until they read whole, so nothing torn is ever served.
//! Only an unchanged length is cached: bytes past the accepted records are read again on the
//! next refresh. Accepted records are served up to the last whose entry ends its transaction
//! (`"last":true`, read from the tail of its JSON in `log.json`, from the newest record back):
//! a writer that crashed mid-flush can leave part of a transaction durable, which readers see
//! only once the next writer's replay made the rest durable (RO-1).
//!
//! One window remains: between the writer's `write` of index records and their `fdatasync` a
//! follower may already serve them. Their data is durable; the records survive any crash of
//! the writer's process; only a machine failure before the `fdatasync` can lose them, and the
//! transactions they hold are then not acknowledged to Postgres yet, so they come back at the
//! same offsets when replication resumes.
//!
//! **Snapshot.** Chunks are files the writer creates and fills in place, in order, each made
//! durable before the next is created; the `complete` marker is renamed into place last. So
//! chunk `i` is served once chunk `i + 1` exists or the marker does (the marker's chunk list
//! then replaces what was inferred). The last chunk thus waits for the marker.

use std::fs;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::TryLockError;
use std::time::{Duration, Instant};

use super::cache::FileId;
use super::fsutil::lock;
use super::index::{self, Cursor, Stop, RECORD_LEN};
use super::shape::{whole_transactions, Shape, SnapshotChunk};
use super::{layout, snapshot};

/// How far a follower has read one shape's files.
#[derive(Debug)]
pub(super) struct Follow {
    /// Bytes of `log.idx` accepted as complete, valid records.
    index_accepted: u64,
    /// Where the accepted records end.
    cursor: Cursor,
    /// A record breaking order or contiguity was logged (once per shape).
    corrupt_reported: bool,
    /// When the last refresh started.
    checked_at: Option<Instant>,
}

/// What a refresh found.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Refresh {
    /// Nothing new.
    Unchanged,
    /// New records or snapshot chunks are readable.
    Changed,
    /// The shape's files are gone or were replaced (removed, purged, or rewritten by a new
    /// writer's recovery): forget this view; a later request finds the shape afresh if it
    /// still exists.
    Gone,
}

/// Identifies a shape's data and index files (another file at either path later is another
/// shape: the view is gone), with what a follower needs to know about them; `Ok(None)` if the
/// shape has no files (never created, or removed). Opens nothing: reads open the files
/// read-only through the store's cache.
pub(super) fn open(dir: &Path) -> io::Result<Option<(FileId, FileId, Follow)>> {
    let identify = |name: &str| match fs::metadata(dir.join(name)) {
        Ok(meta) => Ok(Some(FileId::of(&meta))),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    };
    let (Some(data), Some(index)) = (
        identify(layout::LOG_DATA_FILE)?,
        identify(layout::LOG_INDEX_FILE)?,
    ) else {
        return Ok(None);
    };
    let follow = Follow {
        index_accepted: 0,
        cursor: Cursor::START,
        corrupt_reported: false,
        checked_at: None,
    };
    Ok(Some((data, index, follow)))
}

/// Brings a follower's view of `shape` up to what its files hold now. A shape this store
/// writes is always `Unchanged`. Blocking (a `stat`, and reads of whatever is new).
pub(super) fn refresh(shape: &Shape) -> Refresh {
    let Some(follow) = &shape.follow else {
        return Refresh::Unchanged;
    };
    // Held across the reads: refreshes of one shape take turns, so records are accepted once.
    let mut follow = lock(follow);
    follow.checked_at = Some(Instant::now());
    let index_path = shape.dir.join(layout::LOG_INDEX_FILE);
    let meta = match fs::metadata(&index_path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Refresh::Gone,
        Err(err) => {
            tracing::warn!(handle = %shape.handle, error = %err, "cannot stat a followed shape");
            return Refresh::Unchanged;
        }
    };
    if FileId::of(&meta) != shape.files.index_id || meta.len() < follow.index_accepted {
        // Not the file we read: nothing we accepted can be trusted to still be there.
        return Refresh::Gone;
    }
    let mut changed = false;
    if meta.len() > follow.index_accepted {
        changed |= read_index_tail(shape, &mut follow, meta.len());
    }
    if !shape.state().snapshot.complete {
        changed |= refresh_snapshot(shape);
    }
    if changed {
        Refresh::Changed
    } else {
        Refresh::Unchanged
    }
}

/// Whether a refresh of `shape` started less than `max_age` ago or is running now (then a
/// poll may skip its own). Never blocks.
pub(super) fn is_fresh(shape: &Shape, max_age: Duration) -> bool {
    let Some(follow) = &shape.follow else {
        return true;
    };
    let follow = match follow.try_lock() {
        Ok(follow) => follow,
        Err(TryLockError::WouldBlock) => return true,
        Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
    };
    follow
        .checked_at
        .is_some_and(|checked| checked.elapsed() < max_age)
}

/// Reads `log.idx` from the accepted records to `len` and accepts what continues the log.
fn read_index_tail(shape: &Shape, follow: &mut Follow, len: u64) -> bool {
    let Ok(want) = usize::try_from(len - follow.index_accepted) else {
        return false;
    };
    let mut bytes = vec![0u8; want - want % RECORD_LEN];
    if bytes.is_empty() {
        return false; // Only part of the next record so far.
    }
    let read = shape
        .index()
        .and_then(|index| index.read_exact_at(&mut bytes, follow.index_accepted));
    if let Err(err) = read {
        // Shrunk between the stat and the read (a new writer's recovery), or replaced: the
        // next refresh sees the new length or file.
        tracing::debug!(handle = %shape.handle, error = %err, "followed index read short");
        return false;
    }
    // After the index: whatever the index names was written before it.
    let data = match shape.data() {
        Ok(data) => data,
        Err(err) => {
            tracing::debug!(handle = %shape.handle, error = %err, "cannot open a followed log");
            return false;
        }
    };
    let data_len = match data.metadata() {
        Ok(meta) => meta.len(),
        Err(err) => {
            tracing::warn!(handle = %shape.handle, error = %err, "cannot stat a followed log");
            return false;
        }
    };
    let tail = index::scan_tail(&bytes, follow.cursor, data_len);
    if let Some(Stop::Corrupt(detail)) = tail.stop {
        if !follow.corrupt_reported {
            follow.corrupt_reported = true;
            tracing::error!(
                handle = %shape.handle, detail,
                "followed shape log is corrupt; serving the entries before the damage"
            );
        }
    }
    if tail.records.is_empty() {
        return false;
    }
    let whole = match whole_transactions(&data, &tail.records) {
        Ok(whole) => whole,
        Err(err) => {
            tracing::warn!(handle = %shape.handle, error = %err, "cannot read a followed log");
            return false;
        }
    };
    follow.index_accepted += (tail.records.len() * RECORD_LEN) as u64;
    follow.cursor = tail.cursor;
    shape.publish(|state| state.extend_followed(tail.records, whole));
    true
}

/// Learns snapshot chunks that are complete: all of them once the marker exists, else each
/// chunk whose successor exists.
fn refresh_snapshot(shape: &Shape) -> bool {
    let marker = shape
        .dir
        .join(layout::SNAPSHOT_DIR)
        .join(layout::SNAPSHOT_MARKER);
    if marker.exists() {
        match snapshot::load(&shape.dir) {
            Ok(loaded) if loaded.complete => {
                shape.publish(|state| state.snapshot = loaded);
                return true;
            }
            Ok(_) => return false, // The marker went away meanwhile: the shape is being removed.
            Err(err) => {
                tracing::warn!(handle = %shape.handle, error = %err, "followed snapshot unreadable");
                return false;
            }
        }
    }
    let mut changed = false;
    loop {
        let next = shape.state().snapshot.chunks.len() as u64;
        if !layout::snapshot_chunk_path(&shape.dir, next + 1).exists() {
            return changed;
        }
        let Ok(body) = fs::read(layout::snapshot_chunk_path(&shape.dir, next)) else {
            return changed;
        };
        let chunk = SnapshotChunk {
            entries: ampere_core::chunk::count_entries(&body),
            bytes: body.len() as u64,
        };
        shape.publish(|state| state.snapshot.chunks.push(chunk));
        changed = true;
    }
}
