//! Shape logs on real files, with group commit (deploy-semantics RP-1, RP-7, ST-1; protocol.md
//! §6.2).
//!
//! Owns everything under its root (`ELECTRIC_STORAGE_DIR`, or a stack's directory in it):
//!
//! ```text
//! shapes/<handle>/log.json             replicated entries, each JSON object followed by `,`
//! shapes/<handle>/log.idx              40-byte records: offset, position, length, chunk end
//! shapes/<handle>/snapshot/<i>.json    snapshot chunk i, entries joined by `,`
//! shapes/<handle>/snapshot/complete    written last: `<entries> <bytes>` per chunk
//! shapes/<handle>/shape.json           the shape's metadata row (MD-3; `description`)
//! shapes/.<handle>.creating            a shape being created (cleared by `open`)
//! trash/<handle>                       a removed shape being deleted (emptied by `open`)
//! lease                                the storage lease ([`crate::lease`])
//! ```
//!
//! Because every entry is stored followed by a `,`, consecutive entries `i..=j` are the single
//! byte range from entry `i`'s start to entry `j`'s end: already the comma-joined body a reader
//! serves, read with one `pread`.
//!
//! **Durability order.** [`ShapeLogStore::append`] only buffers in memory. [`FileStore::flush`]
//! takes every shape's buffered batch, writes each data file and makes them all durable, then
//! writes each index file and makes them all durable (the index never names data that is not
//! durable), and only then publishes the batches to readers and wakes
//! [`ShapeLogStore::changed`] futures, in one critical section per shape
//! ([`crate::watermark`]: no torn read, no lost wake-up). A flush of a few shapes `fdatasync`s
//! each file; one of many shapes syncs their file system once per phase (`syncfs`, `sync.rs`
//! says when and why). Readers therefore never see an entry a crash could erase (RP-7).
//! Flushes are serialised; recovery truncates whatever a crash left half-written.
//!
//! **Open files** (`cache.rs`): no shape keeps its files open. Reads, flushes and followers
//! take a shape's data or index file from one bounded cache ([`OpenFileBudget`], derived from
//! the fd limit at open), which reopens evicted files on demand; a file evicted while a read
//! or flush uses it stays open until that use ends. Creating and recovering a shape leave
//! nothing open, so descriptors grow with the logs in use, not with the shapes on disk (a
//! restart with thousands of shapes opens them one at a time). Snapshot chunks are opened,
//! read or written, and closed by each request.
//!
//! **Whole transactions** (RO-1). Readers (`read`, `status`) see the durable log up to its last
//! entry that ends its transaction ([`LogEntry::ends_transaction`]). A writer's flushes hold
//! whole transactions, but a crash mid-flush can leave the first entries of one durable: they
//! are kept, [`ShapeLogStore::recover`] reports the true durable end so the replay appends only
//! the rest, and until then no reader (the recovered writer or a follower) sees them. Where
//! transactions end is learnt once, when entries become durable or are loaded: from the
//! appended entries, or for a recovered or followed log from the tail of each new entry's
//! JSON in `log.json`, newest first (the on-disk format is unchanged).
//!
//! **Never:** serves a byte that is not durable; blocks a reader on a flush (readers hold a
//! shape's lock only to plan the read, then `pread` outside it); deletes files outside `shapes/`
//! and `trash/`.
//!
//! **Follower mode** ([`FileStore::open_follower`], deploy-semantics RO-1, RO-3, RO-4): a
//! standby reads what the lock holder (another process) made durable and never writes,
//! renames or deletes anything: no directory creation, no trash emptying, no torn-tail
//! truncation, no clearing of half-created shapes. Every write (`create_shape`, `append`,
//! `flush`, `remove_shape`, `recover`, snapshot writers) fails with [`StoreError::ReadOnly`].
//! A shape is found by handle when first asked for (`read`, `status`, `changed`) if its
//! directory exists, and re-read on every `read`/`status` (a `stat` of its index; new records
//! read only when it grew), so no pointer is trusted across requests (RO-1). What a follower
//! accepts as durable, and why a torn tail is never served, is in `follower.rs`'s docs.
//! `changed()` re-checks every [`FOLLOW_POLL_INTERVAL`] (RO-3). [`FileStore::promote`] turns
//! the same store (every clone) into the writer once the lock is held: it then does what
//! [`FileStore::open`] does (directories, trash, half-created shapes), and each shape is
//! written after [`ShapeLogStore::recover`] took it over (until then it stays a read-only
//! view: appends fail with [`StoreError::NotRecovered`]). The shapes on disk at the promotion
//! are *awaiting recovery* until `recover` or `remove_shape` names them: meanwhile the writer
//! still finds them as a follower would, so a restart never answers a read of a live shape
//! with `UnknownShape` (a 409 the client would take for lost continuity) in the moment between
//! taking the lease and recovering it.
//!
//! **Fencing** (deploy-semantics LK-6, §2 item 13; [`crate::lease`]): `open` and every
//! `promote` acquire the storage lease (a new generation in `<root>/lease`). Every mutation
//! that makes something durable or visible re-reads the lease first and, if another instance
//! acquired it since, fails with [`StoreError::Fenced`] having written nothing: a flush (before
//! the data files, again before the index files, again before publishing), `create_shape`
//! (before building, again before the rename into place), `remove_shape` (before the rename
//! to trash), each snapshot chunk and the completion marker, a torn-tail truncation in
//! `recover`, and the trash and half-created cleanup of a promotion. A fenced store drops every
//! shape it wrote (waking their waiters) and follows again: reads serve what the new writer
//! makes durable, every write fails with `Fenced` until [`FileStore::promote`] acquires the
//! lease anew. A promotion that finds its earlier generation taken over drops its stale
//! shapes the same way before acquiring. Cost: one `open` + small `read` of the lease per check
//! (three per non-empty flush, none for appends, reads or an empty flush), against at least
//! two syncs per flush. The lease is this process's handle on the root
//! ([`StorageLease::for_root`], shared with the metadata) unless given at open
//! ([`FileStore::open_follower_with_lease`]).
//!
//! **Asks of callers:** one [`FileSnapshotWriter`] per shape; [`ShapeLogStore::recover`] only on
//! the instance that writes (it truncates torn tails); a runtime for the async methods (their
//! I/O runs in `spawn_blocking`).

mod cache;
pub mod description;
mod error;
mod follower;
mod fsutil;
mod index;
mod shape;
mod shared_reads;
mod snapshot;
mod sync;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ampere_core::ports::{
    ChunkRead, LogEntry, LogStatus, ReadOutcome, RecoveredLog, ShapeLogStore,
};
use ampere_core::shape::ShapeHandle;
use ampere_core::LogOffset;

pub use cache::OpenFileBudget;
pub use error::StoreError;
pub use snapshot::FileSnapshotWriter;

use crate::lease::{Fenced, LeaseError, StorageLease};
use cache::{FileCache, FileId};
use follower::Refresh;
use fsutil::{io_err, lock, parent, read, run_blocking, sync_dir, write};
use index::RECORD_LEN;
use shape::{whole_transactions, Batch, LogState, Plan, Shape, ShapeFiles};
use shared_reads::{ReadKey, SharedReads};
use sync::GroupSync;

/// How often a follower's `changed()` re-checks the shape's files (RO-3 asks for ≤ 1 s).
pub const FOLLOW_POLL_INTERVAL: Duration = Duration::from_millis(500);

const _: () = assert!(
    FOLLOW_POLL_INTERVAL.as_millis() <= 1000,
    "RO-3: re-check every ≤ 1 s"
);

/// Names of the files and directories under a store's root.
pub mod layout {
    use std::path::{Path, PathBuf};

    /// Directory of shape directories.
    pub const SHAPES_DIR: &str = "shapes";
    /// Directory removed shapes pass through.
    pub const TRASH_DIR: &str = "trash";
    /// A shape's replicated entries, each followed by `,`.
    pub const LOG_DATA_FILE: &str = "log.json";
    /// A shape's index records.
    pub const LOG_INDEX_FILE: &str = "log.idx";
    /// Bytes per index record.
    pub const INDEX_RECORD_LEN: usize = super::RECORD_LEN;
    /// A shape's snapshot chunk directory.
    pub const SNAPSHOT_DIR: &str = "snapshot";
    /// Written in [`SNAPSHOT_DIR`] once the snapshot is complete.
    pub const SNAPSHOT_MARKER: &str = "complete";
    /// The shape's own copy of its metadata row (MD-3), written by the metadata store.
    pub const SHAPE_DESCRIPTION_FILE: &str = "shape.json";
    /// The storage lease in the root ([`crate::lease`]).
    pub const LEASE_FILE: &str = crate::lease::LEASE_FILE;

    /// `<shape_dir>/snapshot/<index>.json`.
    pub fn snapshot_chunk_path(shape_dir: &Path, index: u64) -> PathBuf {
        shape_dir.join(SNAPSHOT_DIR).join(format!("{index}.json"))
    }
}

/// Shape logs on files under a root directory. Cheap to clone: clones share one store.
#[derive(Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    shapes: RwLock<BTreeMap<ShapeHandle, Arc<Shape>>>,
    /// Shapes on disk when this store was promoted that neither `recover` nor `remove_shape`
    /// has named since: a writer reads them as followed views until then. Changed only with
    /// `shapes` write-locked (lock order: `shapes`, then this).
    awaiting_recovery: Mutex<BTreeSet<ShapeHandle>>,
    /// Every shape's open log files, bounded ([`OpenFileBudget`]).
    files: Arc<FileCache>,
    /// Large chunk bodies that responses hold, shared with the next reader of the same chunk.
    shared_reads: SharedReads,
    /// Serialises flushes (and recovery, which rewrites files a flush writes, and promotion).
    flush_lock: Mutex<()>,
    /// Whether this store may write: set by `open` and `promote`, cleared by `demote` and when
    /// fenced (a follower that was never promoted writes nothing, RO-4).
    is_writer: AtomicBool,
    /// The storage lease this store writes under: given at open, or this process's handle on
    /// the root ([`StorageLease::for_root`]), resolved at the first promotion.
    lease: Mutex<Option<Arc<StorageLease>>>,
    /// Why the store stopped writing, if another instance took the lease over (cleared by a
    /// promotion).
    fenced: Mutex<Option<Fenced>>,
}

/// Checks that `root` is a usable storage directory (deploy-semantics ST-1): creates it and its
/// parents if missing, then creates, `fsync`s and deletes a file in it. Blocking; call at
/// startup, before connecting to Postgres.
pub fn probe_writable(root: &Path) -> Result<(), StoreError> {
    let fail = |op, path: &Path| {
        let root = root.to_path_buf();
        let path = path.to_path_buf();
        move |error| StoreError::NotWritable {
            root,
            op,
            path,
            error,
        }
    };
    fs::create_dir_all(root).map_err(fail("create directory", root))?;
    let probe = root.join(format!(".ampere-probe-{}", std::process::id()));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&probe)
        .map_err(fail("create file", &probe))?;
    io::Write::write_all(&mut file, b"probe").map_err(fail("write", &probe))?;
    file.sync_all().map_err(fail("fsync", &probe))?;
    drop(file);
    fs::remove_file(&probe).map_err(fail("delete", &probe))?;
    File::open(root)
        .and_then(|dir| dir.sync_all())
        .map_err(fail("fsync directory", root))
}

impl FileStore {
    /// Opens the store under `root` as the writer, as a promotion does: creates `shapes/` and
    /// `trash/` if missing, acquires the storage lease (this process's handle on `root`),
    /// empties the trash and clears half-created shapes. Blocking; call at startup. The store
    /// writes no shape until [`ShapeLogStore::recover`] or [`ShapeLogStore::create_shape`]
    /// names it; until then the shapes on disk are read as a follower reads them.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        Self::open_with_budget(root, OpenFileBudget::from_fd_limit())
    }

    /// As [`FileStore::open`], keeping at most `budget` log files open (instead of the share
    /// of the fd limit [`OpenFileBudget::from_fd_limit`] derives). Blocking.
    pub fn open_with_budget(
        root: impl Into<PathBuf>,
        budget: OpenFileBudget,
    ) -> Result<Self, StoreError> {
        let store = Self::follower(root.into(), None, budget);
        store.inner.promote_blocking()?;
        Ok(store)
    }

    /// Opens the store under `root` as a follower of the process that writes it (module docs;
    /// RO-1, RO-4): creates, renames, truncates and deletes nothing, now or later, until
    /// [`FileStore::promote`]. A missing `root` is fine (the writer creates it; until then
    /// every shape is unknown). Blocking.
    pub fn open_follower(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        Self::open_follower_with_budget(root, None, OpenFileBudget::from_fd_limit())
    }

    /// As [`FileStore::open_follower`], writing under `lease` once promoted instead of this
    /// process's handle on the root: for running two instances in one process (tests), or
    /// sharing one handle explicitly with the metadata. Blocking.
    pub fn open_follower_with_lease(
        root: impl Into<PathBuf>,
        lease: Arc<StorageLease>,
    ) -> Result<Self, StoreError> {
        Self::open_follower_with_budget(root, Some(lease), OpenFileBudget::from_fd_limit())
    }

    /// As [`FileStore::open_follower`] (or [`FileStore::open_follower_with_lease`] with a
    /// `lease`), keeping at most `budget` log files open. Blocking.
    pub fn open_follower_with_budget(
        root: impl Into<PathBuf>,
        lease: Option<Arc<StorageLease>>,
        budget: OpenFileBudget,
    ) -> Result<Self, StoreError> {
        let root = root.into();
        match fs::metadata(&root) {
            Ok(meta) if !meta.is_dir() => {
                let not_dir = io::Error::new(io::ErrorKind::NotADirectory, "not a directory");
                return Err(io_err("open storage directory", &root)(not_dir));
            }
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_err("stat", &root)(err)),
        }
        Ok(Self::follower(root, lease, budget))
    }

    /// A store that writes nothing until promoted.
    fn follower(root: PathBuf, lease: Option<Arc<StorageLease>>, budget: OpenFileBudget) -> Self {
        Self {
            inner: Arc::new(Inner {
                root,
                shapes: RwLock::default(),
                awaiting_recovery: Mutex::default(),
                files: Arc::new(FileCache::new(budget)),
                shared_reads: SharedReads::default(),
                flush_lock: Mutex::new(()),
                is_writer: AtomicBool::new(false),
                lease: Mutex::new(lease),
                fenced: Mutex::new(None),
            }),
        }
    }

    /// Switches a follower (and every clone of it) to writing, once this instance holds the
    /// lock: creates `shapes/` and `trash/` if missing, acquires the storage lease (a new
    /// generation: another instance's store or metadata writing under an older one is fenced
    /// from now on), empties the trash and clears half-created shapes, as [`FileStore::open`]
    /// does. Shapes followed so far stay readable, and so do the others on disk (found as a
    /// follower finds them), until [`ShapeLogStore::recover`] takes them over (truncating
    /// torn tails) or `remove_shape` removes them. A writer acquires the lease again and
    /// otherwise stays as it is, unless another instance took the lease since its last
    /// promotion: it then drops its shapes and is promoted as a follower would be. If
    /// preparing the directory fails, the store stays a follower.
    pub fn promote(&self) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        async move { run_blocking(move || inner.promote_blocking()).await }
    }

    /// Stops writing because this instance gave up the lock (LK-6), as fencing does: every
    /// shape it knew is dropped and retired (waking their waiters), and readers find shapes
    /// afresh as a follower, the ones the next lock holder creates included (RO-1). A
    /// follower is unchanged. [`FileStore::promote`] makes it write again.
    pub fn demote(&self) {
        self.inner.step_down();
    }

    /// Whether this store only follows another process's writes (not promoted yet, demoted
    /// or fenced since).
    pub fn is_follower(&self) -> bool {
        !self.inner.is_writer()
    }

    /// The storage lease this store writes under, once known (given at open, or resolved at
    /// the first promotion).
    pub fn lease(&self) -> Option<Arc<StorageLease>> {
        lock(&self.inner.lease).clone()
    }

    /// Re-reads every shape this store follows: wakes the waiters of those that grew, and
    /// forgets those that are gone, closing their files. Reads do this for the shape they
    /// read; a follower calls this now and then (say when it reloads metadata) so that shapes
    /// the writer removed and nobody asks for again do not keep files open. A no-op for shapes
    /// this store writes.
    pub fn refresh_followed(
        &self,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        async move {
            run_blocking(move || {
                let shapes: Vec<Arc<Shape>> = read(&inner.shapes).values().cloned().collect();
                for shape in shapes.iter().filter(|shape| shape.is_follower()) {
                    inner.follow(shape);
                }
                Ok(())
            })
            .await
        }
    }

    /// Bytes of shape logs durable on disk (data, index and snapshot chunks), summed over the
    /// shapes this store has open: every live shape once the writer recovered them, only the
    /// shapes read so far on a follower. From memory, without I/O: cheap enough for every
    /// metrics scrape.
    pub fn durable_bytes(&self) -> u64 {
        let shapes = read(&self.inner.shapes);
        shapes.values().map(|s| s.state().durable_bytes()).sum()
    }

    /// Shape-log files the store holds open now: at most its [`OpenFileBudget`], whatever
    /// the number of shapes (a read or flush in progress may keep one more open until it
    /// ends).
    pub fn open_files(&self) -> usize {
        self.inner.files.len()
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The handles of every shape directory on disk, sorted; for reconciling with metadata
    /// at boot (a directory without a metadata row is removed, a row without a directory
    /// dropped). Blocking.
    pub fn list_shape_dirs(&self) -> Result<Vec<ShapeHandle>, StoreError> {
        self.inner.shape_dirs()
    }

    /// The directory of a shape (whether or not it exists).
    pub fn shape_dir(&self, handle: &ShapeHandle) -> Result<PathBuf, StoreError> {
        self.inner.shape_dir(handle)
    }

    fn read_now(&self, handle: &ShapeHandle, after: LogOffset) -> ReadOutcome {
        let Some(shape) = self.inner.current(handle) else {
            return ReadOutcome::UnknownShape;
        };
        let plan = shape.state().plan(after);
        let shared = &self.inner.shared_reads;
        let (body, entries, end) = match plan {
            Plan::Pending => return ReadOutcome::SnapshotPending,
            Plan::SnapshotChunk { index, entries } => {
                let path = shape.snapshot_chunk_path(index);
                let key = ReadKey::SnapshotChunk {
                    handle: handle.clone(),
                    index,
                };
                match shared.get_or_read(key, || fs::read(&path)) {
                    Ok(body) => (body, entries, LogOffset::snapshot_chunk(index)),
                    Err(err) => return self.read_failed(&shape, &path, &err),
                }
            }
            Plan::Log {
                pos,
                len,
                entries,
                end,
            } => {
                let key = ReadKey::Log {
                    handle: handle.clone(),
                    pos,
                    len,
                };
                match shared.get_or_read(key, || shape.read_log(pos, len)) {
                    Ok(body) => (body, entries, end),
                    Err(err) => {
                        let path = shape.dir.join(layout::LOG_DATA_FILE);
                        return self.read_failed(&shape, &path, &err);
                    }
                }
            }
        };
        ReadOutcome::Chunk(ChunkRead { body, entries, end })
    }

    /// A read's I/O failed. If the shape was removed meanwhile (its directory renamed away),
    /// that is the answer. Otherwise the port has no error outcome: report "pending", so the
    /// HTTP layer waits and retries instead of telling the client to refetch a shape that
    /// still exists, and log the error for the operator.
    fn read_failed(&self, shape: &Arc<Shape>, path: &Path, err: &io::Error) -> ReadOutcome {
        let handle = &shape.handle;
        if self.inner.shape(handle).is_none() || !self.inner.follow(shape) {
            return ReadOutcome::UnknownShape;
        }
        tracing::error!(%handle, path = %path.display(), error = %err, "shape log read failed");
        ReadOutcome::SnapshotPending
    }
}

impl ShapeLogStore for FileStore {
    fn promote(&self) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        Self::promote(self)
    }

    fn demote(&self) {
        Self::demote(self);
    }

    type Error = StoreError;
    type SnapshotWriter = FileSnapshotWriter;

    fn create_shape(
        &self,
        handle: &ShapeHandle,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        let handle = handle.clone();
        async move {
            inner.check_writer()?;
            run_blocking(move || inner.create_shape_blocking(&handle)).await
        }
    }

    fn append(&self, handle: &ShapeHandle, entries: Vec<LogEntry>) -> Result<(), StoreError> {
        let shape = self.inner.writable_shape(handle)?;
        let mut state = shape.state();
        state.append(handle, &entries)
    }

    fn flush(&self) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        // The batches are taken inside the blocking task, after the call: entries appended
        // before the call are covered, and a dropped future cannot lose a taken batch
        // (a started `spawn_blocking` task runs to the end).
        async move {
            inner.check_writer()?;
            run_blocking(move || inner.flush_blocking()).await
        }
    }

    fn remove_shape(
        &self,
        handle: &ShapeHandle,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        // Unregistered now, before the future runs: readers get `UnknownShape` at once and
        // `changed()` waiters wake. A follower unregisters nothing and refuses.
        let allowed = self.inner.check_writer();
        if allowed.is_ok() {
            let removed = {
                let mut shapes = write(&self.inner.shapes);
                lock(&self.inner.awaiting_recovery).remove(handle);
                shapes.remove(handle)
            };
            if let Some(shape) = removed {
                shape.retire();
            }
        }
        let inner = Arc::clone(&self.inner);
        let handle = handle.clone();
        async move {
            allowed?;
            run_blocking(move || inner.remove_dir_blocking(&handle)).await
        }
    }

    fn snapshot_writer(&self, handle: &ShapeHandle) -> FileSnapshotWriter {
        FileSnapshotWriter::new(self.clone(), handle.clone())
    }

    fn recover(
        &self,
        handle: &ShapeHandle,
    ) -> impl Future<Output = Result<RecoveredLog, StoreError>> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        let handle = handle.clone();
        async move {
            inner.check_writer()?;
            run_blocking(move || inner.recover_blocking(&handle)).await
        }
    }

    /// Answers per protocol.md §6.2:
    ///
    /// - `-1`: snapshot chunk 0, `end` = `0_0`.
    /// - `0_i`: chunk `i+1` (`end` = `0_(i+1)`) while `i` is below the last chunk, or
    ///   `SnapshotPending` if that chunk is not durable yet; once the snapshot is complete and
    ///   `i` is at or past its last chunk, the replicated log from its start.
    /// - `0_inf` and replicated offsets: `SnapshotPending` until the snapshot is complete;
    ///   then the entries in `(after, E]`, E the first chunk boundary above `after`, or the
    ///   latest readable entry while that chunk is open (the last durable one that ends its
    ///   transaction, module docs).
    /// - Nothing after `after`: an empty body with `end` = the latest readable offset (`0_inf`
    ///   with no entries). That holds when `after` is above the latest offset too, so `end`
    ///   is then below the request: the HTTP layer decides out-of-bounds (protocol.md §2).
    fn read(&self, handle: &ShapeHandle, after: LogOffset) -> ReadOutcome {
        self.read_now(handle, after)
    }

    fn status(&self, handle: &ShapeHandle) -> Option<LogStatus> {
        let status = self.inner.current(handle)?.state().status();
        Some(status)
    }

    /// Subscribes now, when called, not when first polled: a change that lands between this
    /// call and the first poll still resolves the future. Waiters therefore call `changed()`
    /// first, then check `read`/`status`, then await:
    ///
    /// ```text
    /// let wait = store.changed(&handle);        // subscribe
    /// match store.read(&handle, offset) { ... } // nothing new?
    /// wait.await;                               // cannot miss a flush in between
    /// ```
    ///
    /// Resolves at once for a shape the store does not know, and when the shape is removed or
    /// replaced by recovery. A follower's future also re-checks the files every
    /// [`FOLLOW_POLL_INTERVAL`] and resolves when they grew or vanished (RO-3).
    ///
    /// The shape found here may be replaced (or removed) before the caller reads; the old one
    /// is then retired, which resolves this future whether it subscribed before or after the
    /// retirement, so the caller never waits on a shape its read no longer sees.
    fn changed(&self, handle: &ShapeHandle) -> impl Future<Output = ()> + Send + 'static {
        let shape = self.inner.lookup(handle);
        let subscription = shape.as_ref().map(|shape| shape.subscribe());
        let inner = Arc::clone(&self.inner);
        async move {
            let (Some(shape), Some(subscription)) = (shape, subscription) else {
                return;
            };
            let mut changed = shape.changed(subscription);
            if !shape.is_follower() {
                changed.await;
                return;
            }
            loop {
                tokio::select! {
                    biased;
                    () = &mut changed => return,
                    () = tokio::time::sleep(FOLLOW_POLL_INTERVAL) => {
                        // Another waiter (or a read) just looked: its change would have woken
                        // us. Many long-polls on one shape share the checks.
                        if follower::is_fresh(&shape, FOLLOW_POLL_INTERVAL / 2) {
                            continue;
                        }
                        let (inner, shape) = (Arc::clone(&inner), Arc::clone(&shape));
                        // A change publishes, resolving `changed`; a failed join (runtime
                        // shutting down) ends the wait as a change would.
                        let check = tokio::task::spawn_blocking(move || inner.follow(&shape));
                        if check.await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
}

impl Inner {
    fn is_writer(&self) -> bool {
        self.is_writer.load(Ordering::SeqCst)
    }

    /// `Err(ReadOnly)` unless this store writes (RO-4); `Err(Fenced)` if it stopped writing
    /// because another instance took the lease over.
    fn check_writer(&self) -> Result<(), StoreError> {
        if self.is_writer() {
            return Ok(());
        }
        if let Some(source) = lock(&self.fenced).clone() {
            return Err(StoreError::Fenced { source });
        }
        Err(StoreError::ReadOnly {
            root: self.root.clone(),
        })
    }

    /// [`Inner::check_writer`], then the lease re-read: call right before every mutation that
    /// makes something durable or visible. A lease taken over demotes the store
    /// ([`Inner::demote`]) and fails with [`StoreError::Fenced`]. Blocking (one small read).
    fn check_lease(&self) -> Result<(), StoreError> {
        self.check_writer()?;
        let Some(lease) = lock(&self.lease).clone() else {
            // Unreachable: `open` and `promote` resolve the lease before the store writes.
            return Ok(());
        };
        match lease.check() {
            Ok(()) => Ok(()),
            Err(LeaseError::Fenced(source)) => {
                self.demote(&source);
                Err(StoreError::Fenced { source })
            }
            Err(err) => Err(lease_error(err)),
        }
    }

    /// Another instance took the lease over: stop writing at once (LK-6). Every shape this
    /// store knew is dropped (pending appends were never durable, so never acknowledged) and
    /// retired, so waiters wake and readers find the shapes afresh as a follower, reading what
    /// the new writer makes durable.
    fn demote(&self, fenced: &Fenced) {
        let dropped = {
            let mut shapes = write(&self.shapes);
            let was_writer = self.is_writer.swap(false, Ordering::SeqCst);
            *lock(&self.fenced) = Some(fenced.clone());
            if was_writer {
                tracing::error!(
                    root = %self.root.display(), error = %fenced,
                    "shape storage fenced: another instance holds the storage lease; \
                     writing nothing more until promoted again"
                );
            }
            lock(&self.awaiting_recovery).clear();
            std::mem::take(&mut *shapes)
        };
        for shape in dropped.into_values() {
            shape.retire();
        }
    }

    /// This instance gave up the lock: stop writing, like [`Inner::demote`] minus the fencing
    /// record (nobody took the lease; a promotion keeps or re-acquires it).
    fn step_down(&self) {
        let dropped = {
            let mut shapes = write(&self.shapes);
            if !self.is_writer.swap(false, Ordering::SeqCst) {
                return;
            }
            lock(&self.awaiting_recovery).clear();
            std::mem::take(&mut *shapes)
        };
        for shape in dropped.into_values() {
            shape.retire();
        }
    }

    /// The lease handle, resolving this process's handle on the root if none was given.
    fn lease_handle(&self) -> Arc<StorageLease> {
        let mut lease = lock(&self.lease);
        Arc::clone(lease.get_or_insert_with(|| StorageLease::for_root(&self.root)))
    }

    fn shape(&self, handle: &ShapeHandle) -> Option<Arc<Shape>> {
        read(&self.shapes).get(handle).cloned()
    }

    /// A registered shape, or for a follower (and a writer, for a shape awaiting recovery)
    /// one whose directory exists now (opened read-only and read to its end). Blocking for a
    /// shape not seen before.
    fn lookup(&self, handle: &ShapeHandle) -> Option<Arc<Shape>> {
        if let Some(shape) = self.shape(handle) {
            return Some(shape);
        }
        if !self.may_follow(handle) {
            return None;
        }
        let dir = self.shape_dir(handle).ok()?;
        let (data, index, follow) = match follower::open(&dir) {
            Ok(files) => files?,
            Err(err) => {
                tracing::warn!(%handle, error = %err, "cannot open a followed shape");
                return None;
            }
        };
        let files = ShapeFiles::new(Arc::clone(&self.files), false, data, index);
        let shape = Arc::new(Shape::follower(handle.clone(), dir, files, follow));
        // Opened now (kept in the cache while used): a shape looked up is about to be read,
        // and files replaced since the `stat` above are found here rather than mid-read.
        if let Err(err) = shape.data().and_then(|_| shape.index()) {
            if err.kind() != io::ErrorKind::NotFound {
                tracing::warn!(%handle, error = %err, "cannot open a followed shape");
            }
            return None;
        }
        if follower::refresh(&shape) == Refresh::Gone {
            return None;
        }
        let mut shapes = write(&self.shapes);
        if !self.may_follow(handle) {
            // Recovered or removed while its files were opened: the writer's answer stands.
            return shapes.get(handle).cloned();
        }
        Some(Arc::clone(shapes.entry(handle.clone()).or_insert(shape)))
    }

    /// Whether `lookup` may open `handle` as a followed view: always on a follower; on a
    /// writer only while it awaits recovery (a removed or unknown shape stays unknown).
    fn may_follow(&self, handle: &ShapeHandle) -> bool {
        !self.is_writer() || lock(&self.awaiting_recovery).contains(handle)
    }

    /// The handles of every shape directory on disk, sorted (`FileStore::list_shape_dirs`).
    fn shape_dirs(&self) -> Result<Vec<ShapeHandle>, StoreError> {
        let shapes_dir = self.root.join(layout::SHAPES_DIR);
        if !self.is_writer() && !shapes_dir.exists() {
            return Ok(Vec::new()); // A follower before the writer created the directory.
        }
        let mut handles: Vec<ShapeHandle> = read_dir(&shapes_dir)?
            .iter()
            .filter(|path| path.is_dir())
            .filter_map(|path| path.file_name()?.to_str())
            .filter(|name| is_valid_handle(name))
            .map(|name| ShapeHandle::from_string(name.to_owned()))
            .collect();
        handles.sort();
        Ok(handles)
    }

    /// The shape as its files are now: a followed one re-read first, and found afresh if its
    /// files were replaced. A shape this store writes as registered.
    fn current(&self, handle: &ShapeHandle) -> Option<Arc<Shape>> {
        let shape = self.lookup(handle)?;
        if self.follow(&shape) {
            return Some(shape);
        }
        // `follow` forgot the stale view; a follower opens the files at that path if any.
        self.lookup(handle)
    }

    /// Re-reads a followed shape's files (no-op for a shape this store writes), waking
    /// `changed()` waiters if it grew (the refresh published); forgets and retires it if it is
    /// gone. Whether the shape is still there.
    fn follow(&self, shape: &Arc<Shape>) -> bool {
        match follower::refresh(shape) {
            Refresh::Unchanged | Refresh::Changed => true,
            Refresh::Gone => {
                {
                    let mut shapes = write(&self.shapes);
                    if shapes
                        .get(&shape.handle)
                        .is_some_and(|known| Arc::ptr_eq(known, shape))
                    {
                        shapes.remove(&shape.handle);
                    }
                }
                // Stale whether or not it was still registered: nobody may wait on it.
                shape.retire();
                self.files.forget_under(&shape.dir);
                false
            }
        }
    }

    /// A shape this store may write to now: the store writes, and the shape is its own (not a
    /// followed view awaiting recovery).
    fn writable_shape(&self, handle: &ShapeHandle) -> Result<Arc<Shape>, StoreError> {
        self.check_writer()?;
        let shape = self.shape(handle).ok_or_else(|| StoreError::UnknownShape {
            handle: handle.clone(),
        })?;
        if shape.is_follower() {
            return Err(StoreError::NotRecovered {
                handle: handle.clone(),
            });
        }
        Ok(shape)
    }

    fn promote_blocking(&self) -> Result<(), StoreError> {
        let _serial = lock(&self.flush_lock);
        create_root_dirs(&self.root)?;
        let lease = self.lease_handle();
        if self.is_writer() {
            // Taken over since the last promotion: our shapes are stale; drop them.
            match lease.check() {
                Ok(()) => {}
                Err(LeaseError::Fenced(fenced)) => self.demote(&fenced),
                Err(err) => return Err(lease_error(err)),
            }
        }
        let was_writer = self.is_writer();
        lease.acquire().map_err(lease_error)?;
        if was_writer {
            return Ok(());
        }
        // The same check every mutation makes (cleanup deletes files).
        lease.check().map_err(lease_error)?;
        clean_root(&self.root)?;
        let on_disk = self.shape_dirs()?;
        *lock(&self.fenced) = None;
        {
            let _shapes = write(&self.shapes);
            *lock(&self.awaiting_recovery) = on_disk.into_iter().collect();
            self.is_writer.store(true, Ordering::SeqCst);
        }
        tracing::info!(root = %self.root.display(), "shape storage promoted to writer");
        Ok(())
    }

    fn shape_dir(&self, handle: &ShapeHandle) -> Result<PathBuf, StoreError> {
        if !is_valid_handle(handle.as_str()) {
            return Err(StoreError::InvalidHandle {
                handle: handle.clone(),
            });
        }
        Ok(self.root.join(layout::SHAPES_DIR).join(handle.as_str()))
    }

    /// Builds the shape in `shapes/.<handle>.creating`, makes it durable, renames it into
    /// place and `fsync`s `shapes/`: after a crash the shape exists whole or not at all.
    fn create_shape_blocking(&self, handle: &ShapeHandle) -> Result<(), StoreError> {
        let dir = self.shape_dir(handle)?;
        self.check_lease()?;
        if dir.exists() {
            return Err(StoreError::ShapeExists {
                handle: handle.clone(),
                path: dir,
            });
        }
        let shapes_dir = parent(&dir);
        let tmp = shapes_dir.join(format!(".{handle}.creating"));
        if tmp.exists() {
            remove_all(&tmp)?;
        }
        let snapshot_dir = tmp.join(layout::SNAPSHOT_DIR);
        fs::create_dir_all(&snapshot_dir).map_err(io_err("create directory", &snapshot_dir))?;
        for name in [layout::LOG_DATA_FILE, layout::LOG_INDEX_FILE] {
            let path = tmp.join(name);
            File::create_new(&path).map_err(io_err("create", &path))?;
        }
        sync_dir(&snapshot_dir)?;
        sync_dir(&tmp)?;
        self.check_lease()?;
        fs::rename(&tmp, &dir).map_err(io_err("rename into place", &dir))?;
        sync_dir(&shapes_dir)?;
        let files = self.writable_files(&dir)?;
        let shape = Shape::new(handle.clone(), dir, files, LogState::default());
        self.register(Arc::new(shape));
        Ok(())
    }

    /// Renames the shape's directory into `trash/` (durably: it never comes back after a
    /// crash), then deletes it. A missing directory is not an error.
    fn remove_dir_blocking(&self, handle: &ShapeHandle) -> Result<(), StoreError> {
        let dir = self.shape_dir(handle)?;
        self.check_lease()?;
        if !dir.exists() {
            return Ok(());
        }
        let trashed = self.root.join(layout::TRASH_DIR).join(handle.as_str());
        if trashed.exists() {
            remove_all(&trashed)?;
        }
        fs::rename(&dir, &trashed).map_err(io_err("move to trash", &dir))?;
        sync_dir(&parent(&dir))?;
        self.files.forget_under(&dir);
        remove_all(&trashed)
    }

    /// One group commit: data files first, then index files, then publish. Within a phase the
    /// shapes' writes run in parallel; each phase ends with its files durable, either each
    /// `fdatasync`ed after its write or, for a flush of many shapes, all at once by one
    /// `syncfs` ([`GroupSync`]). A shape whose write or sync fails is poisoned and left out;
    /// the others still commit. Returns the first error. The lease is re-read before each
    /// phase (module docs): fenced, the flush stops there (the store drops its shapes and the
    /// taken batches with them).
    fn flush_blocking(&self) -> Result<(), StoreError> {
        let _serial = lock(&self.flush_lock);
        let shapes: Vec<Arc<Shape>> = read(&self.shapes).values().cloned().collect();
        let batches: Vec<(Arc<Shape>, Batch)> = shapes
            .into_iter()
            .filter_map(|shape| {
                let batch = shape.state().take_pending()?;
                Some((shape, batch))
            })
            .collect();
        if batches.is_empty() {
            return Ok(());
        }
        let mut first_error = None;
        self.check_lease()?;
        // Chosen before the first write: a `syncfs` reports write-back errors since then.
        let group = GroupSync::for_flush(&self.root.join(layout::SHAPES_DIR), batches.len());
        let results = run_phase(&batches, |shape, batch| {
            shape.write_batch_data(batch, group.syncs_each(shape))
        });
        let batches = keep_written(batches, results, &mut first_error);
        let results = group.sync_the_rest(&batches);
        let batches = keep_written(batches, results, &mut first_error);
        self.check_lease()?;
        let results = run_phase(&batches, |shape, batch| {
            shape.write_batch_index(batch, group.syncs_each(shape))
        });
        let batches = keep_written(batches, results, &mut first_error);
        let results = group.sync_the_rest(&batches);
        let batches = keep_written(batches, results, &mut first_error);
        self.check_lease()?;
        for (shape, batch) in batches {
            shape.publish(|state| state.publish(batch));
        }
        first_error.map_or(Ok(()), Err)
    }

    /// A writer's view of the log files in `dir`, as they are now.
    fn writable_files(&self, dir: &Path) -> Result<ShapeFiles, StoreError> {
        let identify = |name: &str| {
            let path = dir.join(name);
            fs::metadata(&path)
                .map(|meta| FileId::of(&meta))
                .map_err(io_err("stat", &path))
        };
        let data = identify(layout::LOG_DATA_FILE)?;
        let index = identify(layout::LOG_INDEX_FILE)?;
        Ok(ShapeFiles::new(Arc::clone(&self.files), true, data, index))
    }

    /// Recovers `handle` ([`Inner::recover_log`]); one that cannot be recovered is no longer
    /// awaiting recovery, and a followed view of it is dropped: readers find it unknown.
    fn recover_blocking(&self, handle: &ShapeHandle) -> Result<RecoveredLog, StoreError> {
        let recovered = self.recover_log(handle);
        if recovered.is_err() {
            let dropped = {
                let mut shapes = write(&self.shapes);
                lock(&self.awaiting_recovery).remove(handle);
                let followed = shapes.get(handle).is_some_and(|shape| shape.is_follower());
                followed.then(|| shapes.remove(handle)).flatten()
            };
            if let Some(shape) = dropped {
                shape.retire();
            }
        }
        recovered
    }

    fn recover_log(&self, handle: &ShapeHandle) -> Result<RecoveredLog, StoreError> {
        let _serial = lock(&self.flush_lock);
        let dir = self.shape_dir(handle)?;
        let (data, index) = open_log_files(&dir)?;
        let index_path = dir.join(layout::LOG_INDEX_FILE);
        let data_path = dir.join(layout::LOG_DATA_FILE);
        let index_bytes = fs::read(&index_path).map_err(io_err("read", &index_path))?;
        let data_len = data.metadata().map_err(io_err("stat", &data_path))?.len();
        let scan = index::scan(&index_bytes, data_len).map_err(|detail| StoreError::Corrupt {
            path: index_path.clone(),
            detail,
        })?;
        if let Some(reason) = scan.torn {
            self.check_lease()?;
            tracing::warn!(
                %handle, reason, entries = scan.records.len(),
                "truncating a torn shape log tail left by a crash"
            );
            let index_len = (scan.records.len() * RECORD_LEN) as u64;
            index
                .set_len(index_len)
                .map_err(io_err("truncate", &index_path))?;
            index
                .sync_data()
                .map_err(io_err("fdatasync", &index_path))?;
            data.set_len(scan.data_len)
                .map_err(io_err("truncate", &data_path))?;
            data.sync_data().map_err(io_err("fdatasync", &data_path))?;
        }
        // Readers see whole transactions only; the replay appends after the durable end.
        let whole = whole_transactions(&data, &scan.records).map_err(io_err("read", &data_path))?;
        let snapshot = snapshot::load(&dir)?;
        let state = LogState::recovered(scan.records, whole, snapshot);
        let recovered = RecoveredLog {
            latest: state.durable_latest(),
            open_chunk_bytes: state.open_chunk_bytes(),
        };
        let identify = |file: &File, path: &Path| {
            file.metadata()
                .map(|meta| FileId::of(&meta))
                .map_err(io_err("stat", path))
        };
        let files = ShapeFiles::new(
            Arc::clone(&self.files),
            true,
            identify(&data, &data_path)?,
            identify(&index, &index_path)?,
        );
        // Closed now: a recovered shape opens its files when a flush or read needs them.
        drop((data, index));
        self.register(Arc::new(Shape::new(handle.clone(), dir, files, state)));
        Ok(recovered)
    }

    /// Adds (or replaces) a shape; a replaced one is retired (after the new one is in
    /// place), so its waiters wake and look the shape up afresh.
    fn register(&self, shape: Arc<Shape>) {
        let replaced = {
            let mut shapes = write(&self.shapes);
            lock(&self.awaiting_recovery).remove(&shape.handle);
            shapes.insert(shape.handle.clone(), shape)
        };
        if let Some(old) = replaced {
            old.retire();
        }
    }
}

/// Threads one flush phase uses at most.
const FLUSH_THREADS_MAX: usize = 8;

/// Runs `write` for every batch, spread over up to [`FLUSH_THREADS_MAX`] scoped threads;
/// results in batch order.
fn run_phase(
    batches: &[(Arc<Shape>, Batch)],
    write: impl Fn(&Shape, &Batch) -> Result<(), StoreError> + Sync,
) -> Vec<Result<(), StoreError>> {
    crate::parallel::map(batches, FLUSH_THREADS_MAX, |(shape, batch)| {
        write(shape, batch)
    })
}

/// Keeps the batches whose write succeeded; poisons the shapes whose write failed.
fn keep_written(
    batches: Vec<(Arc<Shape>, Batch)>,
    results: Vec<Result<(), StoreError>>,
    first_error: &mut Option<StoreError>,
) -> Vec<(Arc<Shape>, Batch)> {
    assert_eq!(batches.len(), results.len(), "one result per batch");
    batches
        .into_iter()
        .zip(results)
        .filter_map(|(entry, result)| match result {
            Ok(()) => Some(entry),
            Err(err) => {
                let shape = &entry.0;
                tracing::error!(handle = %shape.handle, error = %err, "shape log flush failed");
                shape.state().fail();
                first_error.get_or_insert(err);
                None
            }
        })
        .collect()
}

/// Creates `shapes/` and `trash/` (and the root) if missing: what the writer does first.
fn create_root_dirs(root: &Path) -> Result<(), StoreError> {
    for name in [layout::SHAPES_DIR, layout::TRASH_DIR] {
        let dir = root.join(name);
        fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
    }
    Ok(())
}

/// Empties the trash and clears half-created shapes: what the writer does, holding the
/// lease, before its first write.
fn clean_root(root: &Path) -> Result<(), StoreError> {
    let shapes_dir = root.join(layout::SHAPES_DIR);
    let trash_dir = root.join(layout::TRASH_DIR);
    for entry in read_dir(&trash_dir)? {
        remove_all(&entry)?;
    }
    for entry in read_dir(&shapes_dir)? {
        if is_creating(&entry) {
            remove_all(&entry)?;
        }
    }
    Ok(())
}

/// A lease failure as a store error (I/O keeps the operation and path).
fn lease_error(err: LeaseError) -> StoreError {
    match err {
        LeaseError::Fenced(source) => StoreError::Fenced { source },
        LeaseError::Io { path, op, source } => StoreError::Io { op, path, source },
    }
}

/// Handles name directories, so only `[A-Za-z0-9_-]` (minted handles are `<digits>-<digits>`).
fn is_valid_handle(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn is_creating(path: &Path) -> bool {
    path.file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.starts_with('.') && name.ends_with(".creating"))
}

fn open_log_files(dir: &Path) -> Result<(File, File), StoreError> {
    let open = |name: &str| {
        let path = dir.join(name);
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err("open", &path))
    };
    Ok((open(layout::LOG_DATA_FILE)?, open(layout::LOG_INDEX_FILE)?))
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    fs::read_dir(dir)
        .and_then(|entries| entries.map(|e| e.map(|e| e.path())).collect())
        .map_err(io_err("list directory", dir))
}

fn remove_all(path: &Path) -> Result<(), StoreError> {
    let result = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(io_err("delete", path)(err)),
        _ => Ok(()),
    }
}
