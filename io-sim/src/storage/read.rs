//! Answering a read from durable state, exactly as io-real's `LogState::plan` does
//! (protocol.md §6.2). Pure.

use bytes::Bytes;

use ampere_core::chunk::count_entries;
use ampere_core::offset::OpIndex;
use ampere_core::ports::{ChunkRead, LogEntry, ReadOutcome};
use ampere_core::LogOffset;

/// The snapshot as one reader may see it.
#[derive(Clone, Copy, Debug)]
pub(super) struct SnapshotView<'a> {
    /// The chunks this reader may serve.
    pub(super) chunks: &'a [String],
    /// Whether the snapshot is complete for this reader.
    pub(super) complete: bool,
}

/// The answer for a read at `after`:
///
/// - `-1`: snapshot chunk 0, `end` = `0_0`.
/// - `0_i`: chunk `i+1` while `i` is below the last chunk (pending if not durable yet); once
///   the snapshot is complete and `i` is at or past its last chunk, the log from its start.
/// - `0_inf` and replicated offsets: pending until the snapshot is complete; then the
///   entries in `(after, E]`, E the first chunk boundary above `after` or the latest entry.
/// - Nothing after `after`: an empty body with `end` = the latest durable offset (`0_inf`
///   with no entries), also when `after` is above it (the HTTP layer decides bounds).
pub(super) fn answer(
    snapshot: SnapshotView<'_>,
    log: &[LogEntry],
    after: LogOffset,
) -> ReadOutcome {
    match after {
        LogOffset::BeforeAll => snapshot_chunk(snapshot, 0),
        LogOffset::At {
            tx: 0,
            op: OpIndex::Index(i),
        } => {
            // Complete implies at least one chunk (`finish` refuses otherwise).
            let last_chunk = (snapshot.chunks.len() as u64).saturating_sub(1);
            if snapshot.complete && i >= last_chunk {
                log_chunk(log, after)
            } else {
                i.checked_add(1)
                    .map_or(ReadOutcome::SnapshotPending, |next| {
                        snapshot_chunk(snapshot, next)
                    })
            }
        }
        _ if !snapshot.complete => ReadOutcome::SnapshotPending,
        _ => log_chunk(log, after),
    }
}

fn snapshot_chunk(snapshot: SnapshotView<'_>, index: u64) -> ReadOutcome {
    let chunk = usize::try_from(index)
        .ok()
        .and_then(|i| snapshot.chunks.get(i));
    match chunk {
        Some(body) => ReadOutcome::Chunk(ChunkRead {
            body: Bytes::from(body.clone()),
            entries: count_entries(body.as_bytes()),
            end: LogOffset::snapshot_chunk(index),
        }),
        None => ReadOutcome::SnapshotPending,
    }
}

/// Entries in `(after, E]`, E the first chunk boundary at or after the first entry, or the
/// latest entry.
fn log_chunk(log: &[LogEntry], after: LogOffset) -> ReadOutcome {
    let start = log.partition_point(|entry| entry.offset <= after);
    let rest = &log[start..];
    let taken = rest
        .iter()
        .position(|entry| entry.chunk_end)
        .map_or(rest, |i| &rest[..=i]);
    let end = taken
        .last()
        .or(log.last())
        .map_or(LogOffset::SNAPSHOT_END, |entry| entry.offset);
    let mut body = Vec::new();
    for (i, entry) in taken.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(entry.json.as_bytes());
    }
    ReadOutcome::Chunk(ChunkRead {
        body: Bytes::from(body),
        entries: taken.len(),
        end,
    })
}

/// The entries readers may see: the durable log up to its last whole transaction. A crash
/// mid-flush can leave a prefix of a transaction durable (kept, and completed by the next
/// writer's replay, RC-3); serving it would show a client part of a transaction, even as
/// up-to-date (RO-1: never a torn or partially written transaction).
pub(super) fn readable(log: &[LogEntry]) -> &[LogEntry] {
    let end = log
        .iter()
        .rposition(LogEntry::ends_transaction)
        .map_or(0, |i| i + 1);
    &log[..end]
}

/// Bytes (each entry plus its separator) durable after the last closed chunk, as io-real's
/// recovery reports them.
pub(super) fn open_chunk_bytes(log: &[LogEntry]) -> u64 {
    let first_open = log
        .iter()
        .rposition(|entry| entry.chunk_end)
        .map_or(0, |i| i + 1);
    log[first_open..]
        .iter()
        .map(|entry| entry.json.len() as u64 + 1)
        .sum()
}
