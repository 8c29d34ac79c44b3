//! [`SimStore`]: the `ShapeLogStore` port on a [`SimDisk`], with io-real's `FileStore`
//! semantics (follower until promoted, group-commit flushes, reads of durable state only).
//!
//! **Views.** Like `FileStore`, a store knows a shape once it created or recovered it (a
//! writer), or — for a follower, and for a writer until it recovers or removes the shapes the
//! disk held at its promotion — as soon as it is asked about a shape the disk holds. The
//! view decides which snapshot chunks a reader sees: the store's own shapes every durable
//! chunk; a shape recovered with an unfinished snapshot none (the snapshot cannot be resumed);
//! a followed shape chunk `i` once chunk `i + 1` or the completion marker is durable (a
//! follower of real files cannot tell a chunk still being written from a whole one).
//! Entries are always served from the disk's durable log, up to its last whole transaction
//! (`read::readable`), so every reader, on any host, sees exactly what is durable and never
//! part of a transaction.
//!
//! **Flushes.** [`ShapeLogStore::append`] buffers in the store (process memory). `flush()`
//! takes every buffered batch when called, then (serialised with other flushes, recovery and
//! promotion) issues them to the disk as one group commit; after the fsync latency they
//! become durable and visible together and `changed()` waiters wake. A crash in between
//! leaves a prefix per shape (see [`SimDisk::crash`]). Dropping a flush future loses
//! nothing: untaken batches go with the next flush, issued ones complete in their own task.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ampere_core::ports::{LogEntry, LogStatus, ReadOutcome, RecoveredLog, ShapeLogStore};
use ampere_core::shape::ShapeHandle;
use ampere_core::LogOffset;

use super::disk::SimDisk;
use super::durable::{DurableShape, FlushBatch, Write};
use super::error::SimStoreError;
use super::read::{self, SnapshotView};
use super::snapshot::SimSnapshotWriter;

/// Shape logs on a [`SimDisk`], written as one `writer`. Cheap to clone: clones share one
/// store (and see a promotion).
#[derive(Clone)]
pub struct SimStore {
    pub(super) inner: Arc<StoreInner>,
}

pub(super) struct StoreInner {
    pub(super) disk: SimDisk,
    pub(super) writer: String,
    /// Set by `promote`, cleared by `demote` (RO-4, LK-6).
    is_writer: AtomicBool,
    state: Mutex<StoreState>,
    /// Serialises flushes, recovery and promotion (io-real's `flush_lock`).
    serial: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct StoreState {
    views: BTreeMap<String, View>,
    /// Shapes on the disk when this store was promoted that neither `recover` nor
    /// `remove_shape` has named since: the writer reads them as followed views until then,
    /// as io-real's store does (a restart never answers a live shape with `UnknownShape`).
    awaiting_recovery: BTreeSet<String>,
    /// Batches taken by `flush()` calls, not yet issued to the disk, by call order.
    queue: Vec<Job>,
    next_seq: u64,
}

/// What one `flush()` call took.
struct Job {
    seq: u64,
    batches: Vec<FlushBatch>,
}

/// A shape as this store knows it.
struct View {
    kind: ViewKind,
    /// Entries handed to flushes so far (durable or in flight): where the next batch starts.
    written: usize,
    /// The last offset appended (durable or not).
    last_appended: Option<LogOffset>,
    /// Appended, not yet taken by a flush.
    pending: Vec<LogEntry>,
    /// A write was lost: no more appends (io-real poisons a shape whose write failed).
    failed: bool,
}

/// Which snapshot chunks a view serves (module docs).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum ViewKind {
    /// Created or recovered (complete) by this store: every durable chunk.
    Own,
    /// Recovered with an unfinished snapshot: no chunk until this store writes one.
    Stale,
    /// Another writer's shape: chunk `i` once chunk `i + 1` or the marker is durable.
    Followed,
}

impl ViewKind {
    pub(super) fn snapshot(self, shape: &DurableShape) -> SnapshotView<'_> {
        let (chunks, complete): (&[String], bool) = match self {
            Self::Own => (&shape.chunks, shape.complete),
            Self::Stale => (&[], false),
            Self::Followed if shape.complete => (&shape.chunks, true),
            Self::Followed => {
                let whole = shape.chunks.len().saturating_sub(1);
                (&shape.chunks[..whole], false)
            }
        };
        SnapshotView { chunks, complete }
    }
}

impl View {
    fn of(kind: ViewKind, log: &[LogEntry]) -> Self {
        Self {
            kind,
            written: log.len(),
            last_appended: log.last().map(|entry| entry.offset),
            pending: Vec::new(),
            failed: false,
        }
    }
}

impl SimStore {
    /// Opens the store on `disk` as a follower writing as `writer` (its name in the audit
    /// and in [`SimDisk::crash`]): it reads what any writer made durable and writes nothing
    /// until [`ShapeLogStore::promote`].
    pub fn open(disk: SimDisk, writer: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(StoreInner {
                disk,
                writer: writer.into(),
                is_writer: AtomicBool::new(false),
                state: Mutex::new(StoreState::default()),
                serial: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Whether this store only follows (not promoted yet).
    pub fn is_follower(&self) -> bool {
        !self.inner.is_writer()
    }

    /// The name this store writes as.
    pub fn writer(&self) -> &str {
        &self.inner.writer
    }

    /// The disk it reads and writes.
    pub fn disk(&self) -> &SimDisk {
        &self.inner.disk
    }

    /// Handles of every durable shape, sorted (io-real's `list_shape_dirs`).
    pub fn list_shape_dirs(&self) -> Vec<ShapeHandle> {
        self.inner
            .disk
            .durable_shapes()
            .into_iter()
            .map(ShapeHandle::from_string)
            .collect()
    }

    /// Runs `read` on the shape as this store's view of it shows it; `None` if the store
    /// does not know it or its files are gone.
    fn with_view<R>(
        &self,
        handle: &ShapeHandle,
        read: impl FnOnce(ViewKind, &DurableShape) -> R,
    ) -> Option<R> {
        let kind = self.inner.lookup(handle.as_str())?;
        let answer = self
            .inner
            .disk
            .with_shape(handle.as_str(), |shape| read(kind, shape));
        if answer.is_none() {
            self.inner.forget_followed(handle.as_str());
        }
        answer
    }
}

impl ShapeLogStore for SimStore {
    type Error = SimStoreError;
    type SnapshotWriter = SimSnapshotWriter;

    fn create_shape(
        &self,
        handle: &ShapeHandle,
    ) -> impl Future<Output = Result<(), SimStoreError>> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        let handle = handle.clone();
        async move {
            inner.check_writer()?;
            if !is_valid_handle(handle.as_str()) {
                return Err(SimStoreError::InvalidHandle { handle });
            }
            if inner.disk.with_shape(handle.as_str(), |_| ()).is_some() {
                return Err(SimStoreError::ShapeExists { handle });
            }
            let write = Write::CreateShape {
                handle: handle.as_str().to_owned(),
            };
            inner
                .disk
                .write(&inner.writer, write)
                .await
                .map_err(|e| inner.write_error(e, "create shape", Some(&handle)))?;
            inner.register(handle.as_str(), View::of(ViewKind::Own, &[]));
            Ok(())
        }
    }

    fn append(&self, handle: &ShapeHandle, entries: Vec<LogEntry>) -> Result<(), SimStoreError> {
        self.inner.check_writer()?;
        let mut state = self.inner.state();
        let view =
            state
                .views
                .get_mut(handle.as_str())
                .ok_or_else(|| SimStoreError::UnknownShape {
                    handle: handle.clone(),
                })?;
        if view.kind == ViewKind::Followed {
            return Err(SimStoreError::NotRecovered {
                handle: handle.clone(),
            });
        }
        if view.failed {
            return Err(SimStoreError::ShapeFailed {
                handle: handle.clone(),
            });
        }
        // All or nothing: check every offset first (offsets-contiguous, append side).
        let mut last = view.last_appended.unwrap_or(LogOffset::SNAPSHOT_END);
        for entry in &entries {
            if entry.offset <= last {
                return Err(SimStoreError::OffsetNotIncreasing {
                    handle: handle.clone(),
                    offset: entry.offset,
                    last,
                });
            }
            last = entry.offset;
        }
        if !entries.is_empty() {
            view.last_appended = Some(last);
        }
        view.pending.extend(entries);
        Ok(())
    }

    fn flush(&self) -> impl Future<Output = Result<(), SimStoreError>> + Send + 'static {
        // Taken now: the entries appended before this call are in this flush (or an
        // earlier one still running).
        let seq = self.inner.queue_flush();
        let inner = Arc::clone(&self.inner);
        async move {
            let seq = seq?;
            let task = tokio::spawn(async move { inner.run_flush(seq).await });
            task.await
                .map_err(|source| SimStoreError::Worker { source })?
        }
    }

    fn remove_shape(
        &self,
        handle: &ShapeHandle,
    ) -> impl Future<Output = Result<(), SimStoreError>> + Send + 'static {
        // Unregistered now, before the future runs: readers get `UnknownShape` at once and
        // `changed()` waiters wake. A follower unregisters nothing and refuses.
        let allowed = self.inner.check_writer();
        if allowed.is_ok() {
            let removed = {
                let mut state = self.inner.state();
                state.awaiting_recovery.remove(handle.as_str());
                state.views.remove(handle.as_str()).is_some()
            };
            if removed {
                self.inner.disk.notify(handle.as_str());
            }
        }
        let inner = Arc::clone(&self.inner);
        let handle = handle.clone();
        async move {
            allowed?;
            if inner.disk.with_shape(handle.as_str(), |_| ()).is_none() {
                return Ok(()); // Never created, or removed already.
            }
            let write = Write::RemoveShape {
                handle: handle.as_str().to_owned(),
            };
            inner
                .disk
                .write(&inner.writer, write)
                .await
                .map_err(|e| inner.write_error(e, "remove shape", Some(&handle)))
        }
    }

    fn snapshot_writer(&self, handle: &ShapeHandle) -> SimSnapshotWriter {
        SimSnapshotWriter::new(self.clone(), handle.clone())
    }

    fn recover(
        &self,
        handle: &ShapeHandle,
    ) -> impl Future<Output = Result<RecoveredLog, SimStoreError>> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        let handle = handle.clone();
        async move {
            inner.check_writer()?;
            let _serial = inner.serial.lock().await;
            inner.disk.wait_stall().await;
            inner.disk.read_latency().await;
            let recovered = inner.disk.with_shape(handle.as_str(), |shape| {
                check_offsets(handle.as_str(), &shape.log);
                let kind = if shape.complete {
                    ViewKind::Own
                } else {
                    ViewKind::Stale
                };
                let log = RecoveredLog {
                    latest: shape.latest(),
                    open_chunk_bytes: read::open_chunk_bytes(&shape.log),
                };
                (View::of(kind, &shape.log), log)
            });
            let (view, log) = recovered.ok_or_else(|| SimStoreError::UnknownShape {
                handle: handle.clone(),
            })?;
            inner.register(handle.as_str(), view);
            Ok(log)
        }
    }

    /// Switches this store (every clone) to writing; clears what crashes left half-done
    /// (half-created shapes, trash), as `FileStore::promote` does — audited. If that fails
    /// the store stays a follower.
    fn promote(&self) -> impl Future<Output = Result<(), SimStoreError>> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        async move {
            let _serial = inner.serial.lock().await;
            // Every promotion (each time the lock is taken) takes the lease anew, fencing
            // whoever wrote before: a write, which a full disk refuses (F12), as io-real's.
            if inner.disk.is_full() {
                let writer = inner.writer.clone();
                let op = "take the storage lease";
                return Err(SimStoreError::Full { writer, op });
            }
            inner.disk.acquire_lease(&inner.writer);
            if inner.is_writer() {
                return Ok(());
            }
            let has_debris = inner
                .disk
                .with_durable(|d| !d.creating.is_empty() || !d.trash.is_empty());
            if has_debris {
                inner
                    .disk
                    .write(&inner.writer, Write::PromoteCleanup)
                    .await
                    .map_err(|e| inner.write_error(e, "clear half-done shapes", None))?;
            }
            {
                let mut state = inner.state();
                state.awaiting_recovery = inner.disk.durable_shapes().into_iter().collect();
                inner.is_writer.store(true, Ordering::SeqCst);
            }
            tracing::info!(writer = %inner.writer, "simulated shape storage promoted to writer");
            Ok(())
        }
    }

    /// Follows again, as io-real's `FileStore::demote` does: every view is dropped (waiters
    /// wake), so each shape is found afresh as a followed one, the next writer's included.
    fn demote(&self) {
        self.inner.demote();
    }

    fn read(&self, handle: &ShapeHandle, after: LogOffset) -> ReadOutcome {
        self.with_view(handle, |kind, shape| {
            read::answer(kind.snapshot(shape), read::readable(&shape.log), after)
        })
        .unwrap_or(ReadOutcome::UnknownShape)
    }

    fn status(&self, handle: &ShapeHandle) -> Option<LogStatus> {
        self.with_view(handle, |kind, shape| LogStatus {
            latest: read::readable(&shape.log)
                .last()
                .map_or(LogOffset::SNAPSHOT_END, |entry| entry.offset),
            snapshot_complete: kind.snapshot(shape).complete,
        })
    }

    /// Subscribes now, when called, not when first polled. Resolves at once for a shape the
    /// store does not know; else on the shape's next durable change (flush, chunk, marker),
    /// its removal (by any writer on the disk) or its replacement by recovery.
    fn changed(&self, handle: &ShapeHandle) -> impl Future<Output = ()> + Send + 'static {
        let receiver = self
            .with_view(handle, |_, _| ())
            .map(|()| self.inner.disk.subscribe(handle.as_str()));
        async move {
            if let Some(mut receiver) = receiver {
                // An error means the sender is gone: done either way.
                let _ = receiver.changed().await;
            }
        }
    }
}

impl StoreInner {
    fn is_writer(&self) -> bool {
        self.is_writer.load(Ordering::SeqCst)
    }

    /// `Err(ReadOnly)` unless this store writes (RO-4).
    pub(super) fn check_writer(&self) -> Result<(), SimStoreError> {
        if self.is_writer() {
            return Ok(());
        }
        Err(SimStoreError::ReadOnly {
            writer: self.writer.clone(),
        })
    }

    fn state(&self) -> MutexGuard<'_, StoreState> {
        // Every change under this lock is a single step; a poisoned one is still sound.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn write_error(
        &self,
        err: super::disk::WriteError,
        op: &'static str,
        handle: Option<&ShapeHandle>,
    ) -> SimStoreError {
        SimStoreError::from_write(err, &self.writer, op, handle)
    }

    /// The view of a known shape; for a follower (and a writer, for a shape awaiting
    /// recovery), a shape the disk holds is known from the first question on (as `FileStore`
    /// finds a directory).
    fn lookup(&self, handle: &str) -> Option<ViewKind> {
        let mut state = self.state();
        if let Some(view) = state.views.get(handle) {
            return Some(view.kind);
        }
        let awaiting = state.awaiting_recovery.contains(handle);
        let awaiting = awaiting
            && !ampere_core::mutant::is_active(
                ampere_core::mutant::Mutant::ForgetUnrecoveredShapes,
            );
        if self.is_writer() && !awaiting {
            return None;
        }
        let view = self
            .disk
            .with_shape(handle, |shape| View::of(ViewKind::Followed, &shape.log))?;
        state.views.insert(handle.to_owned(), view);
        Some(ViewKind::Followed)
    }

    /// Stops writing (the lock was given up) and forgets every view; a follower is unchanged.
    fn demote(&self) {
        let dropped = {
            let mut state = self.state();
            if !self.is_writer.swap(false, Ordering::SeqCst) {
                return;
            }
            state.awaiting_recovery.clear();
            std::mem::take(&mut state.views)
        };
        for handle in dropped.keys() {
            self.disk.notify(handle);
        }
    }

    /// Forgets a followed shape whose files are gone.
    fn forget_followed(&self, handle: &str) {
        let mut state = self.state();
        if state
            .views
            .get(handle)
            .is_some_and(|view| view.kind == ViewKind::Followed)
        {
            state.views.remove(handle);
        }
    }

    /// Adds (or replaces) a view; waiters on a replaced one wake.
    fn register(&self, handle: &str, view: View) {
        let replaced = {
            let mut state = self.state();
            state.awaiting_recovery.remove(handle);
            state.views.insert(handle.to_owned(), view)
        };
        if replaced.is_some() {
            self.disk.notify(handle);
        }
    }

    /// The view `handle` has if this store may write its snapshot: `UnknownShape` or
    /// `NotRecovered` otherwise.
    pub(super) fn writable_kind(&self, handle: &ShapeHandle) -> Result<ViewKind, SimStoreError> {
        self.check_writer()?;
        let kind = self
            .state()
            .views
            .get(handle.as_str())
            .map(|view| view.kind)
            .ok_or_else(|| SimStoreError::UnknownShape {
                handle: handle.clone(),
            })?;
        if kind == ViewKind::Followed {
            return Err(SimStoreError::NotRecovered {
                handle: handle.clone(),
            });
        }
        Ok(kind)
    }

    /// A recovered shape whose snapshot is rewritten becomes this store's own.
    pub(super) fn adopt(&self, handle: &ShapeHandle) {
        if let Some(view) = self.state().views.get_mut(handle.as_str()) {
            if view.kind == ViewKind::Stale {
                view.kind = ViewKind::Own;
            }
        }
    }

    /// Takes every buffered batch into a job; returns its sequence number.
    fn queue_flush(&self) -> Result<u64, SimStoreError> {
        self.check_writer()?;
        let mut state = self.state();
        let batches: Vec<FlushBatch> = state
            .views
            .iter_mut()
            .filter(|(_, view)| !view.pending.is_empty())
            .map(|(handle, view)| {
                let entries = std::mem::take(&mut view.pending);
                let batch = FlushBatch {
                    handle: handle.clone(),
                    index_start: view.written,
                    entries,
                };
                view.written += batch.entries.len();
                batch
            })
            .collect();
        let seq = state.next_seq;
        state.next_seq += 1;
        state.queue.push(Job { seq, batches });
        Ok(seq)
    }

    /// Issues every queued job up to `seq` as one group commit. A job a later flush already
    /// issued is durable once the serial lock is ours (that flush held it until then).
    async fn run_flush(self: Arc<Self>, seq: u64) -> Result<(), SimStoreError> {
        let _serial = self.serial.lock().await;
        let batches = self.take_jobs(seq);
        if batches.is_empty() {
            return Ok(());
        }
        let handles: Vec<String> = batches.iter().map(|b| b.handle.clone()).collect();
        let result = self
            .disk
            .write(&self.writer, Write::Flush { batches })
            .await;
        result.map_err(|e| {
            tracing::error!(writer = %self.writer, error = %e, "simulated flush lost");
            let mut state = self.state();
            for handle in &handles {
                if let Some(view) = state.views.get_mut(handle) {
                    view.failed = true;
                    view.pending.clear();
                }
            }
            self.write_error(e, "flush", None)
        })
    }

    /// The queued jobs up to `seq`, merged into one batch per shape (in offset order).
    fn take_jobs(&self, seq: u64) -> Vec<FlushBatch> {
        let mut state = self.state();
        let split = state.queue.partition_point(|job| job.seq <= seq);
        let jobs: Vec<Job> = state.queue.drain(..split).collect();
        let mut merged: BTreeMap<String, FlushBatch> = BTreeMap::new();
        for batch in jobs.into_iter().flat_map(|job| job.batches) {
            match merged.get_mut(&batch.handle) {
                Some(earlier) => {
                    let next = earlier.index_start + earlier.entries.len();
                    assert_eq!(
                        batch.index_start, next,
                        "offsets-contiguous: batch of {} starts at {} after {next}",
                        batch.handle, batch.index_start
                    );
                    earlier.entries.extend(batch.entries);
                }
                None => {
                    merged.insert(batch.handle.clone(), batch);
                }
            }
        }
        merged.into_values().collect()
    }
}

/// offsets-contiguous (recovery side): a durable log's offsets strictly increase.
fn check_offsets(handle: &str, log: &[LogEntry]) {
    for pair in log.windows(2) {
        assert!(
            pair[0].offset < pair[1].offset,
            "offsets-contiguous: {} after {} in {handle}",
            pair[1].offset,
            pair[0].offset
        );
    }
}

/// Handles name directories in io-real, so only `[A-Za-z0-9_-]`.
fn is_valid_handle(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
