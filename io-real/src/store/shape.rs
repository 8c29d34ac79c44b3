//! One shape's files and in-memory log state: the durable index, the appended-but-not-yet
//! durable batch, snapshot chunks, and read planning (protocol.md §6.2).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ampere_core::offset::OpIndex;
use ampere_core::ports::{LogEntry, LogStatus};
use ampere_core::shape::ShapeHandle;
use ampere_core::LogOffset;

use super::cache::{FileCache, FileId};
use super::follower::Follow;
use super::fsutil::io_err;
use super::index::{IndexRecord, RECORD_LEN};
use super::{layout, StoreError};
use crate::watermark::{Changed, Subscription, Watermark, WatermarkGuard};

/// A shape's files and state. Shared (`Arc`) between the store's map, readers and flushes.
///
/// `data` and `index` are only written by flushes, which the store serialises; readers use
/// positioned reads (`pread`) of durable ranges, which never change once written, so neither
/// file needs a lock. Neither is held open: each use takes it from the store's
/// [`FileCache`] (opening it again if it was evicted) and keeps it only for that use.
///
/// `log` is the shape's durable state published to readers (`watermark`): a flush publishes a
/// batch only after its data and index are durable, in one critical section with the version
/// bump that wakes `changed()` waiters; a reader plans its read from one consistent state.
///
/// A follower's view of another process's shape (`follow` is `Some`) opens both files
/// read-only and learns its state from them (`follower::refresh`); it never has pending
/// entries and is never flushed.
pub(super) struct Shape {
    pub(super) handle: ShapeHandle,
    pub(super) dir: PathBuf,
    pub(super) files: ShapeFiles,
    log: Watermark<LogState>,
    /// How far a follower has read the files; `None` for a shape this store writes.
    pub(super) follow: Option<Mutex<Follow>>,
}

/// Which files a shape's log is, and where to open them.
pub(super) struct ShapeFiles {
    cache: Arc<FileCache>,
    /// Read-write for a shape this store writes, read-only for a followed one.
    writable: bool,
    /// `log.json` as it was when the shape was opened.
    pub(super) data_id: FileId,
    /// `log.idx` as it was when the shape was opened.
    pub(super) index_id: FileId,
}

impl ShapeFiles {
    /// The files of the shape in `dir`, as `data_id` and `index_id` name them.
    pub(super) fn new(
        cache: Arc<FileCache>,
        writable: bool,
        data_id: FileId,
        index_id: FileId,
    ) -> Self {
        Self {
            cache,
            writable,
            data_id,
            index_id,
        }
    }
}

impl Shape {
    pub(super) fn new(
        handle: ShapeHandle,
        dir: PathBuf,
        files: ShapeFiles,
        state: LogState,
    ) -> Self {
        Self {
            handle,
            dir,
            files,
            log: Watermark::new(state),
            follow: None,
        }
    }

    /// A follower's view of a shape another process writes: nothing known until refreshed.
    pub(super) fn follower(
        handle: ShapeHandle,
        dir: PathBuf,
        files: ShapeFiles,
        follow: Follow,
    ) -> Self {
        Self {
            follow: Some(Mutex::new(follow)),
            ..Self::new(handle, dir, files, LogState::default())
        }
    }

    /// `log.json`, open for as long as the caller holds it. `NotFound` if the path holds
    /// another file now. Blocking when it opens.
    pub(super) fn data(&self) -> std::io::Result<Arc<File>> {
        let path = self.dir.join(layout::LOG_DATA_FILE);
        self.files
            .cache
            .get(&path, self.files.writable, self.files.data_id)
    }

    /// `log.idx`, as [`Shape::data`].
    pub(super) fn index(&self) -> std::io::Result<Arc<File>> {
        let path = self.dir.join(layout::LOG_INDEX_FILE);
        self.files
            .cache
            .get(&path, self.files.writable, self.files.index_id)
    }

    /// The device both log files live on (`create_shape` and `recover` find them in one
    /// directory).
    pub(super) fn dev(&self) -> u64 {
        self.files.data_id.dev
    }

    /// Whether this is a follower's read-only view (never appended to or flushed).
    pub(super) fn is_follower(&self) -> bool {
        self.follow.is_some()
    }

    /// The log state, under a short lock (never held across I/O). Changes made through it
    /// wake nobody: only for what readers cannot see (pending entries, a failed write).
    pub(super) fn state(&self) -> WatermarkGuard<'_, LogState> {
        self.log.lock()
    }

    /// Changes what readers see (durable entries, snapshot chunks) and wakes every
    /// `changed()` future subscribed so far.
    pub(super) fn publish<R>(&self, change: impl FnOnce(&mut LogState) -> R) -> R {
        self.log.publish(change)
    }

    /// This view of the shape is replaced or gone: wakes its waiters, and every later wait on
    /// it resolves at once (the caller looks the shape up afresh).
    pub(super) fn retire(&self) {
        self.log.retire();
    }

    /// Take before reading: [`Shape::changed`] then resolves on the next publish, however
    /// soon it happens.
    pub(super) fn subscribe(&self) -> Subscription {
        self.log.subscribe()
    }

    /// Resolves once a publish after `subscription` happened, or the shape was retired.
    pub(super) fn changed(&self, subscription: Subscription) -> Changed<'_, LogState> {
        self.log.changed(subscription)
    }

    /// Reads `len` durable bytes of `log.json` at `pos`. The file stays open for the read
    /// even if the cache evicts it meanwhile.
    pub(super) fn read_log(&self, pos: u64, len: u64) -> std::io::Result<Vec<u8>> {
        let len = usize::try_from(len).map_err(std::io::Error::other)?;
        let mut buf = vec![0u8; len];
        self.data()?.read_exact_at(&mut buf, pos)?;
        Ok(buf)
    }

    /// Writes a batch's bytes at the end of `log.json`, and makes them durable if `sync`
    /// (else the flush syncs the whole file system after every shape's write). Write and
    /// `fdatasync` use one descriptor: a write-back error is reported to the descriptors open
    /// when it happens, so a file reopened in between could miss it.
    pub(super) fn write_batch_data(&self, batch: &Batch, sync: bool) -> Result<(), StoreError> {
        let path = self.dir.join(layout::LOG_DATA_FILE);
        let data = self.data().map_err(io_err("open", &path))?;
        data.write_all_at(&batch.bytes, batch.data_pos)
            .map_err(io_err("write", &path))?;
        if sync {
            data.sync_data().map_err(io_err("fdatasync", &path))?;
        }
        Ok(())
    }

    /// Writes a batch's index records, and makes them durable if `sync` (as
    /// [`Shape::write_batch_data`]; after its data is durable: the index never names bytes
    /// that are not).
    pub(super) fn write_batch_index(&self, batch: &Batch, sync: bool) -> Result<(), StoreError> {
        let path = self.dir.join(layout::LOG_INDEX_FILE);
        let mut buf = Vec::with_capacity(batch.records.len() * RECORD_LEN);
        for record in &batch.records {
            buf.extend_from_slice(&record.encode());
        }
        let at = batch.index_start * RECORD_LEN as u64;
        let index = self.index().map_err(io_err("open", &path))?;
        index
            .write_all_at(&buf, at)
            .map_err(io_err("write", &path))?;
        if sync {
            index.sync_data().map_err(io_err("fdatasync", &path))?;
        }
        Ok(())
    }

    /// The path of snapshot chunk `index`.
    pub(super) fn snapshot_chunk_path(&self, index: u64) -> PathBuf {
        layout::snapshot_chunk_path(&self.dir, index)
    }
}

/// Bytes of an entry's JSON that tell whether it ends its transaction: more than the
/// `"last":true` suffix [`LogEntry::ends_transaction`] looks for.
const TAIL_LEN: u32 = 64;

/// How many of `records`, which continue the durable log in `data` (`log.json`), end on a
/// transaction boundary: up to the last whose JSON ends its transaction, 0 if none does.
/// Reads the JSON tail of each record from the last back to that one: a single small `pread`
/// when `records` end with a whole transaction, as a writer flushes them.
pub(super) fn whole_transactions(data: &File, records: &[IndexRecord]) -> std::io::Result<usize> {
    let mut tail = [0u8; TAIL_LEN as usize];
    for (i, record) in records.iter().enumerate().rev() {
        let len = record.len.min(TAIL_LEN);
        let tail = &mut tail[..len as usize];
        data.read_exact_at(tail, record.json_end() - u64::from(len))?;
        if ends_transaction(tail) {
            return Ok(i + 1);
        }
    }
    Ok(0)
}

/// Whether an entry whose JSON ends with `tail` ends its transaction, as
/// [`LogEntry::ends_transaction`] decides for the whole entry.
fn ends_transaction(tail: &[u8]) -> bool {
    LogEntry {
        offset: LogOffset::SNAPSHOT_END,
        json: String::from_utf8_lossy(tail).into_owned(),
        chunk_end: false,
    }
    .ends_transaction()
}

/// Entries appended since the last flush, laid out exactly as they will sit in the files.
#[derive(Debug, Default)]
pub(super) struct Batch {
    /// `json,json,…,` ready to write at `data_pos`.
    pub(super) bytes: Vec<u8>,
    pub(super) records: Vec<IndexRecord>,
    /// How many of `records` end on a transaction boundary: up to the last entry that ends
    /// its transaction (0 if none does). A writer's batches hold whole transactions.
    pub(super) whole: usize,
    /// Where `bytes` goes in `log.json`.
    pub(super) data_pos: u64,
    /// The record number of `records[0]` in `log.idx`.
    pub(super) index_start: u64,
}

/// One snapshot chunk known to be durable.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct SnapshotChunk {
    pub(super) entries: usize,
    pub(super) bytes: u64,
}

/// The snapshot's durable chunks and whether it is complete.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub(super) struct SnapshotState {
    pub(super) chunks: Vec<SnapshotChunk>,
    pub(super) complete: bool,
}

/// What a read should return, decided under the state lock; the I/O happens after it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Plan {
    /// The snapshot part requested is not durable yet.
    Pending,
    /// Serve snapshot chunk `index`.
    SnapshotChunk { index: u64, entries: usize },
    /// Serve `len` bytes of `log.json` from `pos` (`len == 0`: an empty body).
    Log {
        pos: u64,
        len: u64,
        entries: usize,
        end: LogOffset,
    },
}

/// A shape's log state. Pure: no I/O, unit-tested below.
#[derive(Debug, Default)]
pub(super) struct LogState {
    /// Durable entries.
    durable: Vec<IndexRecord>,
    /// How many `durable` entries readers see: up to the last that ends its transaction. A
    /// crash mid-flush can leave the first entries of a transaction durable; they are kept
    /// (the next writer's replay appends the rest) but never served before the transaction's
    /// last entry is durable too (RO-1: never a torn or partially written transaction).
    readable: usize,
    /// Indices into `durable` of entries with `chunk_end`, ascending.
    chunk_ends: Vec<usize>,
    /// Appended, not yet handed to a flush.
    pending: Batch,
    /// Length of `log.json` once everything appended so far is written.
    appended_end: u64,
    /// The last offset appended (durable or not); `None` before the first entry.
    last_appended: Option<LogOffset>,
    pub(super) snapshot: SnapshotState,
    /// A write failed: no more appends (see `StoreError::ShapeFailed`).
    failed: bool,
}

impl LogState {
    /// State rebuilt from a scanned index (its first `whole` records whole transactions,
    /// [`whole_transactions`]) and a loaded snapshot.
    pub(super) fn recovered(
        records: Vec<IndexRecord>,
        whole: usize,
        snapshot: SnapshotState,
    ) -> Self {
        let chunk_ends = chunk_end_indices(&records);
        let appended_end = records.last().map_or(0, IndexRecord::end);
        let last_appended = records.last().map(|r| r.offset);
        Self {
            durable: records,
            readable: whole,
            chunk_ends,
            appended_end,
            last_appended,
            snapshot,
            ..Self::default()
        }
    }

    /// Buffers entries: all of them or, on error, none.
    pub(super) fn append(
        &mut self,
        handle: &ShapeHandle,
        entries: &[LogEntry],
    ) -> Result<(), StoreError> {
        if self.failed {
            return Err(StoreError::ShapeFailed {
                handle: handle.clone(),
            });
        }
        let mut last = self.last_appended.unwrap_or(LogOffset::SNAPSHOT_END);
        for entry in entries {
            if entry.offset <= last {
                return Err(StoreError::OffsetNotIncreasing {
                    handle: handle.clone(),
                    offset: entry.offset,
                    last,
                });
            }
            if u32::try_from(entry.json.len()).is_err() {
                return Err(StoreError::EntryTooLarge {
                    handle: handle.clone(),
                    offset: entry.offset,
                    len: entry.json.len(),
                });
            }
            last = entry.offset;
        }
        for entry in entries {
            self.push(entry);
        }
        Ok(())
    }

    fn push(&mut self, entry: &LogEntry) {
        let len = u32::try_from(entry.json.len()).expect("invariant: append checked the length");
        if self.pending.records.is_empty() {
            self.pending.data_pos = self.appended_end;
        }
        let record = IndexRecord {
            offset: entry.offset,
            pos: self.appended_end,
            len,
            chunk_end: entry.chunk_end,
        };
        self.pending.bytes.extend_from_slice(entry.json.as_bytes());
        self.pending.bytes.push(b',');
        self.pending.records.push(record);
        if entry.ends_transaction() {
            self.pending.whole = self.pending.records.len();
        }
        self.appended_end = record.end();
        self.last_appended = Some(entry.offset);
    }

    /// Hands the pending batch to a flush. The store serialises flushes and publishes each
    /// before the next takes its batch, so the batch starts where the durable log ends.
    pub(super) fn take_pending(&mut self) -> Option<Batch> {
        if self.pending.records.is_empty() {
            return None;
        }
        // Decided here, not at the first append: entries appended while an earlier flush was
        // in flight would otherwise count only the records durable at that time.
        self.pending.index_start = self.durable.len() as u64;
        Some(std::mem::take(&mut self.pending))
    }

    /// A flush made `batch` durable: readers may see it now, up to its last whole
    /// transaction.
    pub(super) fn publish(&mut self, batch: Batch) {
        let durable_end = self.durable.last().map_or(0, IndexRecord::end);
        // offsets-contiguous (publish side; `index::scan` checks it again on recovery).
        assert_eq!(
            batch.data_pos, durable_end,
            "offsets-contiguous: batch data_pos={} durable_end={durable_end}",
            batch.data_pos
        );
        assert_eq!(
            batch.index_start,
            self.durable.len() as u64,
            "offsets-contiguous: batch index_start={} durable records={}",
            batch.index_start,
            self.durable.len()
        );
        let start = self.durable.len();
        for record in batch.records {
            if let Some(prev) = self.durable.last() {
                assert!(
                    record.offset > prev.offset,
                    "offsets-contiguous: {} after {}",
                    record.offset,
                    prev.offset
                );
            }
            if record.chunk_end {
                self.chunk_ends.push(self.durable.len());
            }
            self.durable.push(record);
        }
        if batch.whole > 0 {
            self.readable = start + batch.whole;
        }
    }

    /// A follower read `records` (complete, valid, continuing the durable log; the first
    /// `whole` end on a transaction boundary) from files another process wrote: readers may
    /// see them now, up to that boundary.
    pub(super) fn extend_followed(&mut self, records: Vec<IndexRecord>, whole: usize) {
        assert!(
            self.pending.records.is_empty(),
            "follower-never-appends: {} pending records",
            self.pending.records.len()
        );
        let (Some(first), Some(last)) = (records.first().copied(), records.last().copied()) else {
            return;
        };
        let batch = Batch {
            bytes: Vec::new(),
            records,
            data_pos: first.pos,
            index_start: self.durable.len() as u64,
            whole,
        };
        self.publish(batch);
        self.appended_end = last.end();
        self.last_appended = Some(last.offset);
    }

    /// A write failed: drop what is pending and refuse further appends.
    pub(super) fn fail(&mut self) {
        self.failed = true;
        self.pending = Batch::default();
    }

    /// The entries readers see: the durable log up to its last whole transaction.
    fn readable(&self) -> &[IndexRecord] {
        &self.durable[..self.readable]
    }

    /// Bytes of the shape's durable files, from memory: `log.json` and `log.idx` up to the
    /// last durable entry, and the durable snapshot chunks.
    pub(super) fn durable_bytes(&self) -> u64 {
        let data = self.durable.last().map_or(0, IndexRecord::end);
        let index = self.durable.len() as u64 * RECORD_LEN as u64;
        let snapshot: u64 = self.snapshot.chunks.iter().map(|c| c.bytes).sum();
        data + index + snapshot
    }

    /// The last offset readers see (`0_inf` with no replicated entries readable).
    pub(super) fn latest(&self) -> LogOffset {
        self.readable()
            .last()
            .map_or(LogOffset::SNAPSHOT_END, |r| r.offset)
    }

    /// The last durable offset, readable or not: where a recovered log ends, for the replay
    /// to append only what is missing.
    pub(super) fn durable_latest(&self) -> LogOffset {
        self.durable
            .last()
            .map_or(LogOffset::SNAPSHOT_END, |r| r.offset)
    }

    pub(super) fn status(&self) -> LogStatus {
        LogStatus {
            latest: self.latest(),
            snapshot_complete: self.snapshot.complete,
        }
    }

    /// Bytes (each entry plus one) durable after the last closed chunk, readable or not.
    pub(super) fn open_chunk_bytes(&self) -> u64 {
        let first_open = self.chunk_ends.last().map_or(0, |&i| i + 1);
        self.durable[first_open..]
            .iter()
            .map(|r| u64::from(r.len) + 1)
            .sum()
    }

    /// Decides what a read at `after` returns (protocol.md §6.2).
    pub(super) fn plan(&self, after: LogOffset) -> Plan {
        match after {
            LogOffset::BeforeAll => self.snapshot_chunk(0),
            LogOffset::At {
                tx: 0,
                op: OpIndex::Index(i),
            } => {
                // Complete implies at least one chunk (`finish` refuses otherwise).
                let last_chunk = (self.snapshot.chunks.len() as u64).saturating_sub(1);
                if self.snapshot.complete && i >= last_chunk {
                    self.plan_log(after)
                } else {
                    i.checked_add(1)
                        .map_or(Plan::Pending, |next| self.snapshot_chunk(next))
                }
            }
            _ if !self.snapshot.complete => Plan::Pending,
            _ => self.plan_log(after),
        }
    }

    fn snapshot_chunk(&self, index: u64) -> Plan {
        let chunk = usize::try_from(index)
            .ok()
            .and_then(|i| self.snapshot.chunks.get(i));
        match chunk {
            Some(chunk) => Plan::SnapshotChunk {
                index,
                entries: chunk.entries,
            },
            None => Plan::Pending,
        }
    }

    /// Entries in `(after, E]`, E the first chunk boundary above `after` or the latest
    /// readable entry.
    fn plan_log(&self, after: LogOffset) -> Plan {
        let readable = self.readable();
        let start = readable.partition_point(|r| r.offset <= after);
        let Some(first) = readable.get(start) else {
            // Nothing after `after`. Also when `after` is above the latest offset: `end` is
            // then the latest offset, below the request; the HTTP layer decides whether that
            // is out of bounds (protocol.md §2).
            return Plan::Log {
                pos: 0,
                len: 0,
                entries: 0,
                end: self.latest(),
            };
        };
        let boundary = self.chunk_ends.partition_point(|&i| i < start);
        let latest = readable.len() - 1;
        let stop = self
            .chunk_ends
            .get(boundary)
            .map_or(latest, |&i| i.min(latest));
        let last = &readable[stop];
        Plan::Log {
            pos: first.pos,
            len: last.json_end() - first.pos,
            entries: stop - start + 1,
            end: last.offset,
        }
    }
}

fn chunk_end_indices(records: &[IndexRecord]) -> Vec<usize> {
    records
        .iter()
        .enumerate()
        .filter(|(_, r)| r.chunk_end)
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn off(text: &str) -> LogOffset {
        text.parse().expect("valid offset")
    }

    /// An entry that is a whole transaction: `{"h":{"o":"<offset>","last":true}}`.
    fn entry(offset: &str, chunk_end: bool) -> LogEntry {
        LogEntry {
            offset: off(offset),
            json: format!("{{\"h\":{{\"o\":\"{offset}\",\"last\":true}}}}"),
            chunk_end,
        }
    }

    /// An entry that does not end its transaction.
    fn mid_transaction(offset: &str, chunk_end: bool) -> LogEntry {
        LogEntry {
            json: format!("{{\"h\":{{\"o\":\"{offset}\"}}}}"),
            ..entry(offset, chunk_end)
        }
    }

    fn handle() -> ShapeHandle {
        ShapeHandle::from_string("1-1".into())
    }

    fn complete_snapshot(chunks: usize) -> SnapshotState {
        SnapshotState {
            chunks: vec![
                SnapshotChunk {
                    entries: 1,
                    bytes: 1
                };
                chunks
            ],
            complete: true,
        }
    }

    fn flushed(entries: &[LogEntry]) -> LogState {
        let mut state = LogState {
            snapshot: complete_snapshot(2),
            ..LogState::default()
        };
        state.append(&handle(), entries).expect("append");
        let batch = state.take_pending().expect("pending");
        state.publish(batch);
        state
    }

    #[test]
    fn appended_entries_are_invisible_until_published() {
        let mut state = flushed(&[entry("5_0", false)]);
        state
            .append(&handle(), &[entry("6_0", false)])
            .expect("append");
        assert_eq!(state.latest(), off("5_0"));
        let batch = state.take_pending().expect("pending");
        assert_eq!(batch.data_pos, 30);
        assert_eq!(batch.index_start, 1);
        assert_eq!(batch.bytes, b"{\"h\":{\"o\":\"6_0\",\"last\":true}},");
        state.publish(batch);
        assert_eq!(state.latest(), off("6_0"));
    }

    #[test]
    fn append_is_all_or_nothing() {
        let mut state = flushed(&[entry("5_0", false)]);
        let err = state
            .append(&handle(), &[entry("6_0", false), entry("5_2", false)])
            .expect_err("5_2 is below 6_0");
        assert!(matches!(err, StoreError::OffsetNotIncreasing { .. }));
        assert!(state.take_pending().is_none());
        let err = LogState::default()
            .append(&handle(), &[entry("0_inf", false)])
            .expect_err("replicated entries start above 0_inf");
        assert!(matches!(err, StoreError::OffsetNotIncreasing { .. }));
    }

    #[test]
    fn plan_serves_snapshot_chunks_then_the_log() {
        let state = flushed(&[entry("5_0", true), entry("5_2", false)]);
        let chunk = |index| Plan::SnapshotChunk { index, entries: 1 };
        assert_eq!(state.plan(LogOffset::BEFORE_ALL), chunk(0));
        assert_eq!(state.plan(off("0_0")), chunk(1));
        let first = Plan::Log {
            pos: 0,
            len: 29,
            entries: 1,
            end: off("5_0"),
        };
        assert_eq!(state.plan(off("0_1")), first);
        assert_eq!(state.plan(off("0_7")), first);
        assert_eq!(state.plan(off("0_inf")), first);
        assert_eq!(state.plan(off("4_inf")), first);
    }

    #[test]
    fn plan_waits_for_snapshot_chunks_not_yet_durable() {
        let mut state = LogState::default();
        assert_eq!(state.plan(LogOffset::BEFORE_ALL), Plan::Pending);
        state.snapshot.chunks.push(SnapshotChunk {
            entries: 2,
            bytes: 9,
        });
        let chunk0 = Plan::SnapshotChunk {
            index: 0,
            entries: 2,
        };
        assert_eq!(state.plan(LogOffset::BEFORE_ALL), chunk0);
        assert_eq!(state.plan(off("0_0")), Plan::Pending);
        assert_eq!(state.plan(off("0_inf")), Plan::Pending);
        assert_eq!(state.plan(off("7_0")), Plan::Pending);
        assert_eq!(state.plan(off("0_18446744073709551615")), Plan::Pending);
        state.snapshot.complete = true;
        let empty = Plan::Log {
            pos: 0,
            len: 0,
            entries: 0,
            end: LogOffset::SNAPSHOT_END,
        };
        assert_eq!(state.plan(off("0_0")), empty);
        assert_eq!(state.plan(off("7_0")), empty);
    }

    #[test]
    fn open_chunk_bytes_counts_entries_after_the_last_boundary() {
        let state = flushed(&[entry("5_0", true), entry("5_2", false), entry("6_0", false)]);
        assert_eq!(state.open_chunk_bytes(), 60);
    }

    // Found by sim: seed 0x9f
    #[test]
    fn durable_entries_after_the_last_whole_transaction_are_not_readable_until_it_ends() {
        let mut state = flushed(&[
            entry("5_0", false),
            entry("5_2", false),
            mid_transaction("6_0", true),
        ]);
        assert_eq!(state.latest(), off("5_2"));
        assert_eq!(state.durable_latest(), off("6_0"));
        assert_eq!(state.open_chunk_bytes(), 0);
        let whole = Plan::Log {
            pos: 0,
            len: 59,
            entries: 2,
            end: off("5_2"),
        };
        assert_eq!(
            state.plan(off("0_inf")),
            whole,
            "stops before 6_0, a chunk end"
        );
        let nothing = Plan::Log {
            pos: 0,
            len: 0,
            entries: 0,
            end: off("5_2"),
        };
        assert_eq!(state.plan(off("5_2")), nothing);

        state
            .append(&handle(), &[mid_transaction("6_2", false)])
            .expect("append");
        let batch = state.take_pending().expect("pending");
        state.publish(batch);
        assert_eq!(state.plan(off("5_2")), nothing, "still not whole");
        state
            .append(&handle(), &[entry("6_4", false)])
            .expect("append");
        let batch = state.take_pending().expect("pending");
        state.publish(batch);
        assert_eq!(state.latest(), off("6_4"));
        let chunk = Plan::Log {
            pos: 60,
            len: 17,
            entries: 1,
            end: off("6_0"),
        };
        assert_eq!(state.plan(off("5_2")), chunk, "the chunk 6_0 closes");
    }

    // Found by sim: seed 0x9f
    #[test]
    fn a_recovered_or_followed_log_is_readable_up_to_its_last_whole_transaction() {
        let records = flushed(&[
            entry("5_0", false),
            mid_transaction("6_0", false),
            entry("6_2", false),
        ])
        .durable;
        let torn = records[..2].to_vec();
        let recovered = LogState::recovered(torn.clone(), 1, complete_snapshot(2));
        assert_eq!(recovered.latest(), off("5_0"));
        assert_eq!(recovered.durable_latest(), off("6_0"));
        assert_eq!(recovered.open_chunk_bytes(), 48);
        let nothing = Plan::Log {
            pos: 0,
            len: 0,
            entries: 0,
            end: off("5_0"),
        };
        assert_eq!(recovered.plan(off("5_0")), nothing);

        let mut followed = LogState {
            snapshot: complete_snapshot(2),
            ..LogState::default()
        };
        followed.extend_followed(torn, 1);
        assert_eq!(followed.latest(), off("5_0"));
        followed.extend_followed(records[2..].to_vec(), 1);
        assert_eq!(followed.latest(), off("6_2"));
    }
}

/// Loom model (`scripts/loom.sh`) of a flush publishing batches while a long-poll reads: the
/// production `LogState` behind the production watermark, in every interleaving.
#[cfg(all(test, feature = "loom"))]
mod loom_tests {
    use loom::future::block_on;
    use loom::sync::Arc;
    use loom::thread;

    use super::*;

    const ENTRIES_PER_BATCH: usize = 2;
    const BATCHES: u64 = 2;
    /// `{"h":{"o":"1_0","last":true}}` (or `null`) and its `,`.
    const ENTRY_BYTES: u64 = 30;

    fn handle() -> ShapeHandle {
        ShapeHandle::from_string("1-1".into())
    }

    /// Batch `tx`: entries `tx_0` and `tx_2`, as one transaction routes them (the last
    /// `"last":true`, the other `"last":null`, of the same length).
    fn batch_entries(tx: u64) -> Vec<LogEntry> {
        (0..ENTRIES_PER_BATCH as u64)
            .map(|i| {
                let last = if i + 1 == ENTRIES_PER_BATCH as u64 {
                    "true"
                } else {
                    "null"
                };
                LogEntry {
                    offset: format!("{tx}_{}", 2 * i).parse().expect("valid offset"),
                    json: format!("{{\"h\":{{\"o\":\"{tx}_{}\",\"last\":{last}}}}}", 2 * i),
                    chunk_end: false,
                }
            })
            .collect()
    }

    /// Plans a read from the snapshot's end and checks it names whole batches only: the
    /// entries, the bytes and the end offset of the same publish. How many entries it saw.
    fn read_whole_batches(log: &Watermark<LogState>) -> usize {
        let state = log.lock();
        let Plan::Log {
            pos,
            len,
            entries,
            end,
        } = state.plan(LogOffset::SNAPSHOT_END)
        else {
            panic!("the snapshot is complete: the log is readable");
        };
        assert_eq!(end, state.latest(), "watermark-whole: plan end vs latest");
        assert_eq!(
            entries % ENTRIES_PER_BATCH,
            0,
            "watermark-whole: {entries} entries"
        );
        assert_eq!(pos, 0);
        if entries == 0 {
            assert_eq!(len, 0);
            assert_eq!(end, LogOffset::SNAPSHOT_END);
        } else {
            let tx = (entries / ENTRIES_PER_BATCH) as u64;
            assert_eq!(end, format!("{tx}_2").parse().expect("valid offset"));
            assert_eq!(
                len,
                entries as u64 * ENTRY_BYTES - 1,
                "watermark-whole: bytes"
            );
        }
        entries
    }

    #[test]
    fn a_long_poll_reads_whole_batches_and_wakes_for_the_last_flush() {
        loom::model(|| {
            let snapshot = SnapshotState {
                chunks: vec![SnapshotChunk {
                    entries: 1,
                    bytes: 1,
                }],
                complete: true,
            };
            let log = Arc::new(Watermark::new(LogState {
                snapshot,
                ..LogState::default()
            }));
            let reader = {
                let log = Arc::clone(&log);
                thread::spawn(move || {
                    let mut seen = 0;
                    loop {
                        let subscription = log.subscribe();
                        let now = read_whole_batches(&log);
                        assert!(seen <= now, "watermark-monotonic: {seen} then {now}");
                        seen = now;
                        if seen == BATCHES as usize * ENTRIES_PER_BATCH {
                            return;
                        }
                        block_on(log.changed(subscription));
                    }
                })
            };
            // What `ShapeLogStore::append` and `Inner::flush_blocking` do, minus the files.
            for tx in 1..=BATCHES {
                log.lock()
                    .append(&handle(), &batch_entries(tx))
                    .expect("append");
                let batch = log.lock().take_pending().expect("pending");
                log.publish(|state| state.publish(batch));
            }
            reader.join().expect("reader");
        });
    }
}
