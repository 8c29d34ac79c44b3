//! Port traits: what the outside world can do for the core (Postgres, storage, metadata,
//! clock). Declaring a trait is not I/O; `io-real` and a simulation implement them.
//!
//! Futures returned by ports are `Send + 'static` so the driver can keep them in one
//! loop-owned `FuturesUnordered` without borrowing the port.

use std::future::Future;

use crate::lsn::Lsn;
use crate::offset::LogOffset;
use crate::pgoutput::Oid;
use crate::shape::{HandleStamp, RelationName, ShapeDefinition, ShapeHandle, TableSchema};
use crate::snapshot::PgSnapshot;
use crate::subset::{SubsetQuery, SubsetRows};

/// One entry of a shape log: its offset, its JSON text, and whether a chunk closes after it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LogEntry {
    /// The entry's offset; strictly increasing within a shape.
    pub offset: LogOffset,
    /// The pre-serialised JSON object.
    pub json: String,
    /// Whether the byte rule closes a chunk after this entry.
    pub chunk_end: bool,
}

impl LogEntry {
    /// Whether this is its transaction's last entry in the shape (`"last":true`): a log
    /// ending here ends on a transaction boundary. A crash mid-flush can leave a log ending
    /// inside a transaction (the next writer's replay completes it); readers stop before that.
    pub fn ends_transaction(&self) -> bool {
        self.json.ends_with(crate::json::LAST_SUFFIX)
    }
}

/// What a reader gets for a request at some offset: the entries after it up to the end of
/// the chunk, already joined as `a,b,c` (no brackets).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ChunkRead {
    /// Comma-joined JSON entries (empty when none).
    pub body: bytes::Bytes,
    /// Number of entries in `body`.
    pub entries: usize,
    /// The offset a client sends next (`electric-offset`).
    pub end: LogOffset,
}

/// Why a read could not be answered from the store now.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ReadOutcome {
    /// Entries (or nothing new, with `end` = the latest durable offset).
    Chunk(ChunkRead),
    /// The requested snapshot chunk is not durable yet: wait and retry.
    SnapshotPending,
    /// The store holds no such shape.
    UnknownShape,
}

/// A shape's durable state as the store knows it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LogStatus {
    /// The last durable offset readers may see (`0_inf` with no changes yet).
    pub latest: LogOffset,
    /// Whether the snapshot (including `snapshot-end`) is durable.
    pub snapshot_complete: bool,
}

/// What the store recovered for one shape at boot.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RecoveredLog {
    /// The last durable replicated offset (`0_inf` if none).
    pub latest: LogOffset,
    /// Bytes in the open (not yet closed) replicated chunk.
    pub open_chunk_bytes: u64,
}

/// Errors from the storage ports carry the facts the driver acts on.
pub trait StorageError: std::error::Error + Send + Sync + 'static {
    /// Another instance took the storage lease since this one promoted: this instance is
    /// deposed (it lost the advisory lock and may not know yet) and must stop writing and
    /// fall back to waiting (deploy-semantics §2 item 13).
    fn is_fenced(&self) -> bool;

    /// The resource that ran out, when the failure is one that passes by itself or once an
    /// operator frees it (a full disk, the file-descriptor limit, a device error): the
    /// instance then degrades — stops writing and acknowledging, keeps serving what is
    /// durable, retries — instead of stopping. `None` for everything else.
    fn fault(&self) -> Option<StorageFault> {
        None
    }
}

/// Which resource a storage operation ran out of ([`StorageError::fault`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum StorageFaultKind {
    /// No space left (`ENOSPC`, `EDQUOT`, SQLite's `SQLITE_FULL`).
    Full,
    /// Out of file descriptors (`EMFILE` for the process, `ENFILE` for the system).
    FdLimit,
    /// The device failed the operation (`EIO`, SQLite's I/O and open errors).
    Io,
}

impl StorageFaultKind {
    /// The metric label and health word: `full`, `fd_limit` or `io`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::FdLimit => "fd_limit",
            Self::Io => "io",
        }
    }
}

/// A storage failure the instance degrades on instead of stopping ([`StorageError::fault`]).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct StorageFault {
    /// What ran out.
    pub kind: StorageFaultKind,
    /// The OS error's name (`ENOSPC`), or SQLite's code where SQLite hides the errno.
    pub code: &'static str,
    /// The file or directory the operation was on, when known.
    pub path: Option<String>,
}

impl std::fmt::Display for StorageFault {
    /// The cause first, for the log and the health body: "storage is full (ENOSPC) at /x".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.kind {
            StorageFaultKind::Full => "storage is full",
            StorageFaultKind::FdLimit => "out of file descriptors",
            StorageFaultKind::Io => "storage I/O error",
        };
        write!(f, "{what} ({})", self.code)?;
        if let Some(path) = &self.path {
            write!(f, " at {path}")?;
        }
        Ok(())
    }
}

/// Storage for shape logs. Appends are buffered; [`ShapeLogStore::flush`] makes everything
/// appended before the call durable (one fdatasync per file, group commit) and only then
/// visible to readers (deploy-semantics RP-7).
pub trait ShapeLogStore: Clone + Send + Sync + 'static {
    /// The store's error.
    type Error: StorageError;
    /// Writes one shape's snapshot chunks.
    type SnapshotWriter: SnapshotWriter<Error = Self::Error>;

    /// Creates an empty log for a new shape (durably, directory included).
    fn create_shape(
        &self,
        handle: &ShapeHandle,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static;
    /// Buffers entries at the end of a shape's log. Offsets must increase.
    fn append(&self, handle: &ShapeHandle, entries: Vec<LogEntry>) -> Result<(), Self::Error>;
    /// Makes every entry appended before this call durable, then visible to readers.
    fn flush(&self) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static;
    /// Removes a shape's log; readers see [`ReadOutcome::UnknownShape`] afterwards.
    fn remove_shape(
        &self,
        handle: &ShapeHandle,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static;
    /// A writer for the shape's snapshot chunks.
    fn snapshot_writer(&self, handle: &ShapeHandle) -> Self::SnapshotWriter;
    /// Scans every stored shape log, repairing torn tails, at boot.
    fn recover(
        &self,
        handle: &ShapeHandle,
    ) -> impl Future<Output = Result<RecoveredLog, Self::Error>> + Send + 'static;

    /// Switches to writing: called once the advisory lock is held, before `recover`. A store
    /// opened for a standby writes nothing before this (RO-4).
    fn promote(&self) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        std::future::ready(Ok(()))
    }
    /// Stops writing: called whenever the lock is given up (LK-6). The store follows again
    /// until the next [`ShapeLogStore::promote`]: the shapes it wrote are found afresh, so
    /// readers see what the next lock holder makes durable and the shapes it creates (RO-1).
    fn demote(&self) {}

    /// Reads the entries after `after` up to the end of its chunk (protocol.md §6.2).
    fn read(&self, handle: &ShapeHandle, after: LogOffset) -> ReadOutcome;
    /// The shape's durable state, if the store has the shape.
    fn status(&self, handle: &ShapeHandle) -> Option<LogStatus>;
    /// Resolves once the shape's durable state changes after this call (or it is removed).
    fn changed(&self, handle: &ShapeHandle) -> impl Future<Output = ()> + Send + 'static;
}

/// Writes snapshot chunks `0_0 … 0_N` of one shape, each durable before the next starts to be
/// served. The last chunk ends with the `snapshot-end` entry.
pub trait SnapshotWriter: Send + 'static {
    /// The store's error.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Writes chunk `index` (entries joined by `,`) durably and makes it readable.
    fn write_chunk(
        &mut self,
        index: u64,
        body: String,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Marks the snapshot complete after its last chunk (which holds `snapshot-end`).
    fn finish(self) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// A shape as the metadata store records it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct StoredShape {
    /// The shape's handle.
    pub handle: ShapeHandle,
    /// Its definition.
    pub definition: ShapeDefinition,
    /// The table as it was when the shape was created.
    pub schema: TableSchema,
    /// The snapshot, once complete; `None` while it runs (such shapes are discarded at boot).
    pub snapshot: Option<PgSnapshot>,
    /// Whether a transaction started after the snapshot was seen: visibility filtering ended.
    pub snapshot_filter_done: bool,
}

/// Shape metadata (SQLite in production). An index that can be rebuilt, never the truth about
/// log contents.
pub trait MetadataStore: Clone + Send + Sync + 'static {
    /// The store's error.
    type Error: StorageError;

    /// All stored shapes and the handle-stamp high-water mark.
    fn load(
        &self,
    ) -> impl Future<Output = Result<(Vec<StoredShape>, HandleStamp), Self::Error>> + Send + 'static;
    /// Switches to writing once the advisory lock is held (a standby opens read-only).
    fn promote(&self) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        std::future::ready(Ok(()))
    }
    /// What storage last recorded about the replication stream; `None` on a first boot.
    fn load_identity(
        &self,
    ) -> impl Future<Output = Result<Option<StorageIdentity>, Self::Error>> + Send + 'static;
    /// Records the replication identity (durably, before the position it names is acked).
    fn put_identity(
        &self,
        identity: StorageIdentity,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static;
    /// Inserts or replaces a shape row and raises the stamp high-water mark to `stamp`.
    fn put_shape(
        &self,
        shape: StoredShape,
        stamp: HandleStamp,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static;
    /// Inserts or replaces shape rows, in order, as one transaction where the store has
    /// transactions; the stamp high-water mark is untouched. One call for a run of
    /// [`Output::PersistShape`](crate::instance::Output::PersistShape)s: one commit, not one
    /// per shape.
    fn put_shapes(
        &self,
        shapes: Vec<StoredShape>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static;
    /// Deletes a shape row.
    fn delete_shape(
        &self,
        handle: &ShapeHandle,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static;
}

/// Where replication should stream from, and what to call things.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ReplicationTarget {
    /// `electric_slot_<id>` (or a random name for temporary slots, NM-3).
    pub slot: String,
    /// `electric_publication_<id>`.
    pub publication: String,
    /// Persistent, or `TEMPORARY` (dropped when the walsender exits, §1.7).
    pub slot_persistence: SlotPersistence,
}

/// Whether the replication slot outlives its connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum SlotPersistence {
    /// `CREATE_REPLICATION_SLOT … LOGICAL` (the default).
    #[default]
    Persistent,
    /// `CREATE_REPLICATION_SLOT … TEMPORARY LOGICAL` (`CLEANUP_REPLICATION_SLOTS_ON_SHUTDOWN`).
    Temporary,
}

/// What a fresh replication connection learned before taking the lock (LK-3).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SystemIdentity {
    /// `IDENTIFY_SYSTEM`'s system identifier (a u64, as decimal text).
    pub system_id: String,
    /// `IDENTIFY_SYSTEM`'s timeline.
    pub timeline: u32,
    /// `pg_backend_pid()` of the replication connection (never terminated by our breaker).
    pub backend_pid: i32,
}

/// What setting up the slot found, once streaming started.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SlotStarted {
    /// Whether the slot was created now (its history does not cover earlier storage).
    pub slot_created: bool,
    /// The slot's `confirmed_flush_lsn` (its `consistent_point` if just created).
    pub confirmed_flush_lsn: Lsn,
    /// The handle-stamp reservation Postgres holds for the publication (ID-2): every stamp
    /// issued under it is at most this, whatever became of the storage directory since.
    pub stamps_reserved: HandleStamp,
}

/// What storage last recorded about the replication stream it follows (CT-5).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct StorageIdentity {
    /// The system identifier the shapes were built from.
    pub system_id: String,
    /// The timeline they were built on.
    pub timeline: u32,
    /// The slot they follow.
    pub slot: String,
    /// The last `flush` position acknowledged to that slot (persisted before it is sent).
    pub acked: Lsn,
    /// A purge was decided but may not have finished: the next lock holder purges (CT-2).
    pub purge_pending: bool,
}

/// A message from the walsender.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ReplicationMessage {
    /// `XLogData`: a pgoutput message.
    XLogData {
        /// Start of the WAL data in this message.
        wal_start: Lsn,
        /// Current end of WAL on the server.
        wal_end: Lsn,
        /// The pgoutput payload.
        data: bytes::Bytes,
    },
    /// Primary keepalive.
    PrimaryKeepalive {
        /// Current end of WAL on the server.
        wal_end: Lsn,
        /// The server asks for a status update now.
        reply_requested: bool,
    },
}

/// A standby status update (`'r'`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct StandbyStatus {
    /// Written up to: ampere reports its durable position (= flush), so that a caught-up
    /// walsender sends the keepalive that confirms the WAL after the last commit.
    pub write: Lsn,
    /// Durable up to: Postgres may recycle WAL before this.
    pub flush: Lsn,
    /// Applied up to (= flush).
    pub apply: Lsn,
    /// Asks the walsender to answer at once with a keepalive (sent after a silence of half
    /// the replication timeout, so an idle but healthy stream is never presumed dead).
    pub reply_requested: bool,
}

/// How a connection to Postgres ended or failed, in the core's vocabulary.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DisconnectKind {
    /// Worth retrying with backoff (network, restart, admin shutdown, slot busy).
    Transient,
    /// Needs an operator (wal_level, privileges, authentication, missing database).
    Fatal,
}

/// Errors from the Postgres port carry a kind the core decides on.
pub trait PgError: std::error::Error + Send + Sync + 'static {
    /// Retry or give up.
    fn kind(&self) -> DisconnectKind;
}

/// An open logical replication stream.
pub trait ReplicationStream: Send + 'static {
    /// The stream's error.
    type Error: PgError;
    /// The next message. Cancel-safe: dropping the future loses nothing.
    fn recv(&mut self)
        -> impl Future<Output = Result<ReplicationMessage, Self::Error>> + Send + '_;
    /// Sends a standby status update.
    fn send_status(
        &mut self,
        status: StandbyStatus,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + '_;
}

/// A snapshot to take for a new shape.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SnapshotRequest {
    /// The new shape.
    pub handle: ShapeHandle,
    /// Its definition.
    pub definition: ShapeDefinition,
    /// The table as validated.
    pub schema: TableSchema,
    /// The publication to add the table to first.
    pub publication: String,
    /// `ELECTRIC_SHAPE_CHUNK_BYTES_THRESHOLD`.
    pub chunk_bytes_threshold: u64,
}

/// A table as the catalog describes it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CatalogTable {
    /// The columns pgoutput sends, so tuples line up with exactly these: without generated
    /// columns before PostgreSQL 18, with the stored ones from 18 (the publication publishes
    /// them).
    pub schema: TableSchema,
    /// Names of the generated columns pgoutput does not send (all before 18, virtual ones
    /// from 18), in `attnum` order; shapes cannot include them.
    pub generated: Vec<String>,
}

/// A replication connection (`replication=database`) that is not streaming yet: it may hold
/// the advisory lock (LK-2), released exactly when the connection ends. Methods take `self`
/// and hand it back, so the driver can keep the operation in flight without borrowing.
pub trait ReplicationSession: Send + Sized + 'static {
    /// The session's error.
    type Error: PgError;
    /// The stream it becomes.
    type Stream: ReplicationStream<Error = Self::Error>;

    /// `SELECT pg_try_advisory_lock(hashtext('<slot>'))` on this connection (LK-1, LK-4).
    /// Call again only while it answered `false`: these locks stack.
    fn try_advisory_lock(
        self,
        slot: String,
    ) -> impl Future<Output = (Self, Result<bool, Self::Error>)> + Send + 'static;

    /// With the lock held: ensure the publication (dropping the slot first when the
    /// publication is missing, SL-1), read its stamp reservation (ID-2), create or find the
    /// slot (SL-2), then `START_REPLICATION … 0/0` (SL-4); see [`crate::slot_setup`].
    fn start_streaming(
        self,
        target: ReplicationTarget,
    ) -> impl Future<Output = Result<(Self::Stream, SlotStarted), Self::Error>> + Send + 'static;
}

/// Postgres, for the driver: replication and snapshots.
pub trait PgPort: Clone + Send + Sync + 'static {
    /// The port's error.
    type Error: PgError;
    /// The replication stream type.
    type Stream: ReplicationStream;
    /// A replication connection before streaming.
    type Session: ReplicationSession<Error = Self::Error, Stream = Self::Stream>;

    /// Opens a replication connection, runs `IDENTIFY_SYSTEM` and reads its backend pid
    /// (LK-3). Mutates nothing in Postgres.
    fn connect_replication(
        &self,
    ) -> impl Future<Output = Result<(Self::Session, SystemIdentity), Self::Error>> + Send + 'static;

    /// Backends (other than `own_pid`) holding the advisory lock of `slot` while the slot of
    /// that name exists in our database and is inactive (LB-1's query, without terminating).
    fn stale_lock_holders(
        &self,
        slot: String,
        own_pid: i32,
    ) -> impl Future<Output = Result<Vec<i32>, Self::Error>> + Send + 'static;

    /// `pg_terminate_backend(pid)` on an admin connection; whether a backend was signalled.
    fn terminate_backend(
        &self,
        pid: i32,
    ) -> impl Future<Output = Result<bool, Self::Error>> + Send + 'static;

    /// Looks a table up in the catalog (columns, types, primary key); `None` if it does not
    /// exist or is not an ordinary or partitioned table.
    fn table_schema(
        &self,
        relation: RelationName,
    ) -> impl Future<Output = Result<Option<CatalogTable>, Self::Error>> + Send + 'static;

    /// The current name of each table among `tables` (`pg_class.oid`) that still exists and
    /// whose changes `publication` publishes under it; the others were dropped, or are
    /// partitions whose changes `publication` now publishes under a partitioned table it
    /// holds (`publish_via_partition_root`). One catalog query however many tables (the core
    /// checks every shape's table periodically: dropped, renamed and recreated tables, and
    /// partitions published under another, rotate their shapes).
    fn relation_names(
        &self,
        tables: Vec<Oid>,
        publication: String,
    ) -> impl Future<Output = Result<Vec<(Oid, RelationName)>, Self::Error>> + Send + 'static;

    /// The server's wall clock in time zone `zone` at each Unix second of `instants`, in
    /// order, as Unix seconds read as if UTC: `extract(epoch FROM to_timestamp(s) AT TIME
    /// ZONE zone)`; `None` if the server does not recognize the zone. Compared with ampere's
    /// own zone data before a shape whose where clause names the zone is created
    /// ([`crate::where_clause::zone_check`]).
    fn time_zone_wall_clocks(
        &self,
        zone: String,
        instants: Vec<i64>,
    ) -> impl Future<Output = Result<Option<Vec<i64>>, Self::Error>> + Send + 'static;

    /// Raises the publication's handle-stamp reservation to at least `through` (never lowers
    /// it), durably, before a handle stamped up to `through` is shown to anyone (ID-2: a
    /// restored storage directory rolls back its own stamp floor, Postgres does not).
    fn reserve_stamps(
        &self,
        publication: String,
        through: HandleStamp,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static;

    /// Before a shape on `relation` is created: with `ELECTRIC_MANUAL_TABLE_PUBLISHING`, the
    /// snapshot's first step alone ([`crate::snapshot_steps::check_published`]), so a table
    /// the operator has not made replicable gets [`SnapshotError::NotPublished`] and no
    /// shape; when ampere publishes tables itself, `Ok` without a query.
    fn check_table_published(
        &self,
        relation: RelationName,
    ) -> impl Future<Output = Result<(), SnapshotError>> + Send + 'static;

    /// Makes the table replicable as the adapter's [`crate::snapshot_steps::TablePublishing`]
    /// says (adds it to the publication, or checks that the operator did), then takes the
    /// snapshot in a `REPEATABLE READ` transaction, writing its chunks through `writer`;
    /// returns `pg_current_snapshot()`.
    fn take_snapshot<W: SnapshotWriter>(
        &self,
        request: SnapshotRequest,
        writer: W,
    ) -> impl Future<Output = Result<PgSnapshot, SnapshotError>> + Send + 'static;

    /// A subset read (protocol.md §6.10) on the bounded pool: in one `REPEATABLE READ READ
    /// ONLY` transaction, `pg_current_snapshot()`, the current WAL position, then the
    /// shape's rows the subset selects (`WHERE (shape) AND (subset) ORDER BY … LIMIT …
    /// OFFSET …`), encoded as inserts stamped with the query's snapshot mark. Alters nothing.
    fn query_subset(
        &self,
        query: SubsetQuery,
    ) -> impl Future<Output = Result<SubsetRows, SnapshotError>> + Send + 'static;
}

/// Why a snapshot failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Postgres failed or went away.
    #[error("snapshot query failed: {message}")]
    Postgres {
        /// The error chain, rendered.
        message: String,
        /// Retry or not.
        kind: DisconnectKind,
    },
    /// The table changed shape while we looked (409 for that request).
    #[error("table schema changed during the snapshot: {message}")]
    SchemaChanged {
        /// What changed.
        message: String,
    },
    /// `ELECTRIC_MANUAL_TABLE_PUBLISHING`: the table is not in the publication or lacks
    /// `REPLICA IDENTITY FULL`, and ampere may not change that (503 naming the SQL to run).
    #[error("table not ready for replication: {message}")]
    NotPublished {
        /// What the table lacks and the SQL an administrator must run.
        message: String,
    },
    /// Writing the chunks failed.
    #[error("writing snapshot chunks failed: {message}")]
    Store {
        /// The error chain, rendered.
        message: String,
    },
    /// The snapshot can never succeed as requested until an operator acts: retrying only
    /// repeats the failure (and its `ALTER PUBLICATION`), so the shape's clients get a 4xx
    /// naming the reason instead of a 409 that sends them round again.
    #[error("snapshot refused: {0}")]
    Refused(SnapshotRefusal),
    /// Postgres refused a subset read for what it computes (a data exception evaluating the
    /// subset's where clause: a division by zero, a value that does not cast): the request is
    /// at fault, so it is a 400 on `subset.where`, never retried.
    #[error("the subset query failed: {message}")]
    QueryRejected {
        /// Postgres's message.
        message: String,
    },
}

/// Why a table's snapshot can never succeed as things stand.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SnapshotRefusal {
    /// Whose move it is.
    pub kind: RefusalKind,
    /// Postgres's reason, for the client and the log.
    pub message: String,
}

impl std::fmt::Display for SnapshotRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The two kinds of [`SnapshotRefusal`], answered differently.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RefusalKind {
    /// SQLSTATE 42501: ampere's role may not publish or read the table (not its owner, no
    /// `SELECT`). An administrator can fix it: 403.
    Privilege,
    /// Postgres will not publish this relation (a system catalog, a temporary or unlogged
    /// table, another relation kind): the request itself cannot be served, 400 on `table`.
    Unsupported,
}

/// Time, for the driver: the only source of [`crate::time::Instant`]s and wall-clock stamps.
pub trait Clock: Clone + Send + Sync + 'static {
    /// The current monotonic instant.
    fn now(&self) -> crate::time::Instant;
    /// Wall-clock microseconds since the Unix epoch (handle stamps and the replication-lag
    /// metric; may step).
    fn unix_micros(&self) -> u64;
    /// Resolves at or after `deadline`.
    fn sleep_until(
        &self,
        deadline: crate::time::Instant,
    ) -> impl Future<Output = ()> + Send + 'static;
}
