//! Shape metadata in SQLite (deploy-semantics MD-1 … MD-4, CT-5).
//!
//! Owns one file, `<dir>/shapes.sqlite3`: a row per shape (handle, identity digest, relation
//! OID, definition, table schema and snapshot as JSON text, the filter flag), a key/value
//! table holding the handle-stamp high-water mark, and one `storage_identity` row (CT-5: the
//! system, timeline and slot the shapes follow, the acknowledged position, a pending purge).
//! Versioned with `PRAGMA user_version`: v1 had no identity table; v2 adds it, and opening a
//! v1 file for writing migrates it in place, keeping every row.
//!
//! Never: holds facts the shape directories lack (the metadata is an index that can be rebuilt,
//! MD-3; the storage identity is the one exception, and losing it makes the next lock holder
//! purge rather than serve gaps), or runs SQLite on an async thread: every call runs in
//! `spawn_blocking` with the one connection behind a mutex. Writes use `BEGIN IMMEDIATE` (MD-1).
//!
//! Modes (MD-2): [`MetadataMode::Wal`] (default) uses `journal_mode=WAL`;
//! [`MetadataMode::Exclusive`] (`ELECTRIC_SHAPE_DB_EXCLUSIVE_MODE=true`, needed on NFS/EFS,
//! whose locks WAL's shared-memory index cannot trust) uses `journal_mode=DELETE` and
//! `locking_mode=EXCLUSIVE`, keeping the file locked while the store lives; only this mode
//! may be in memory. Both modes use one connection here; MD-2's read-only pool is not needed
//! while every read is a short query.
//!
//! **Durability.** Commits are as durable as `synchronous` makes them (MD-3, `OFF` by
//! default): every commit survives a crash of the process (SQLite has handed it to the OS, in
//! the WAL or the database file), but with `OFF` a power loss or kernel crash may lose the
//! latest ones. For [`MetadataStore::put_identity`] that loss is safe, not silent: the acked
//! position read back is then older than the slot's `confirmed_flush_lsn`, and CT-1 (B3) purges.
//! Set `synchronous=FULL` to avoid such purges after a power loss.
//!
//! **Standby** ([`SqliteMetadata::open_read_only`], RO-1, RO-4, MD-4): a connection opened with
//! `SQLITE_OPEN_READONLY` that never creates the schema, migrates, checkpoints or writes a row;
//! writes through it fail with [`MetadataError::ReadOnly`] before touching the file. How it reads
//! depends on what the writer left (SQLite itself would create the `-wal`/`-shm` files, which
//! would be a write to shared storage):
//!
//! - Rollback journal (`journal_mode=DELETE`, exclusive mode): an ordinary read-only connection.
//!   While an exclusive-mode writer lives it holds the file locked, so reads are busy (MD-2:
//!   that mode serves one process); a standby in that mode therefore reads the shape
//!   directories instead ([`crate::standby_metadata`]), and a promotion waits briefly for the
//!   previous holder to close the file (`WRITER_OPEN_ATTEMPTS`).
//! - WAL with its `-wal` and `-shm` files present (a writer is running or crashed): an ordinary
//!   read-only connection, kept open. Like every WAL reader it takes read marks in the `-shm`
//!   shared-memory index (locking state, not data); while it is open a writer that closes
//!   cleanly leaves both files in place, so they cannot vanish under it.
//! - WAL without a `-wal` file (the writer closed cleanly: everything is in the database file):
//!   each read opens the file `immutable=1` (no locks, no `-wal`/`-shm`) and is kept only if
//!   the file's identity, length and mtime are unchanged afterwards and no `-wal` appeared (a
//!   writer must create it before it can change the file); otherwise it is retried, normally
//!   as an ordinary connection. A microsecond window remains between seeing both files and
//!   SQLite opening them, in which a writer closing cleanly makes SQLite recreate them empty:
//!   SQLite's own files, harmless to any later writer.
//!
//! **Fencing** ([`SqliteMetadata::set_lease`], deploy-semantics LK-6, §2 item 13): with a
//! storage lease set (the lock holder's [`crate::standby_metadata::StandbyMetadata`] sets it
//! at promotion), every write re-reads the lease in its blocking task, holding the connection,
//! right before its transaction, and fails with [`MetadataError::Fenced`] without touching the
//! file once another instance acquired it: a deposed writer cannot overwrite the new writer's
//! identity or rows (beyond the microseconds between that read and the commit).
//!
//! Reads on a standby treat busy, locked, "database disk image is malformed" (NFS lock gaps),
//! schema changes and hot journals it may not roll back as transient: a few attempts with
//! short sleeps, then [`MetadataError::Transient`] (the caller retries later).

use std::fs;
use std::future::Future;
use std::io::{self, Read as _};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

use ampere_core::pgoutput::Oid;
use ampere_core::ports::{
    MetadataStore, StorageFault, StorageFaultKind, StorageIdentity, StoredShape,
};
use ampere_core::shape::{
    ColumnSchema, HandleStamp, LogMode, RelationName, Replica, ServerVersion, ShapeDefinition,
    ShapeHandle, TableSchema,
};
use ampere_core::snapshot::{FullXid, PgSnapshot};
use ampere_core::Lsn;

use crate::lease::{io_fault, Fenced, LeaseError, StorageLease};

/// The metadata file's name inside its directory.
pub const METADATA_FILE: &str = "shapes.sqlite3";

/// The schema version this code writes and reads (`PRAGMA user_version`). Version 3 lets a
/// shape's definition carry a where clause (a JSON member, no table change): an older ampere,
/// which would read such a shape as the whole table, refuses the file instead.
const SCHEMA_VERSION: i64 = 3;

/// The version that introduced `storage_identity`; older files have no identity.
const IDENTITY_VERSION: i64 = 2;

/// Key of the handle-stamp high-water mark in `settings`.
const STAMP_HWM_KEY: &str = "handle_stamp_hwm";

const SCHEMA_V1: &str = "
    CREATE TABLE shapes (
        handle TEXT PRIMARY KEY NOT NULL,
        identity TEXT NOT NULL,
        relation_oid INTEGER NOT NULL,
        definition TEXT NOT NULL,
        table_schema TEXT NOT NULL,
        snapshot TEXT,
        snapshot_filter_done INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX shapes_by_relation_oid ON shapes (relation_oid);
    CREATE TABLE settings (
        key TEXT PRIMARY KEY NOT NULL,
        value INTEGER NOT NULL
    ) STRICT;
";

/// v1 → v2: the storage identity, at most one row (`id = 1`).
const SCHEMA_V2: &str = "
    CREATE TABLE storage_identity (
        id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
        system_id TEXT NOT NULL,
        timeline INTEGER NOT NULL,
        slot TEXT NOT NULL,
        acked_lsn INTEGER NOT NULL,
        purge_pending INTEGER NOT NULL
    ) STRICT;
";

/// Attempts opening the file for writing makes while another process holds it locked, each
/// waiting up to `busy_timeout`: a promoted instance whose predecessor (in exclusive mode, the
/// holder of the file lock) is still closing it waits for it rather than fail the promotion.
const WRITER_OPEN_ATTEMPTS: u32 = 3;

/// Pause between those attempts.
const WRITER_OPEN_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Attempts a standby read makes before reporting [`MetadataError::Transient`] (MD-4).
const READ_ATTEMPTS: u32 = 4;

/// Pause between a standby's read attempts.
const READ_RETRY_DELAY: Duration = Duration::from_millis(50);

/// A standby waits at most this long per attempt for a writer's lock: with
/// [`READ_ATTEMPTS`] a read gives up within about a second instead of holding a request for
/// attempts × the writer's `busy_timeout`.
const READ_BUSY_TIMEOUT_MAX: Duration = Duration::from_millis(200);

const _: () = assert!(READ_ATTEMPTS >= 2, "MD-4 retries at least once");

/// How the database file is shared (MD-2).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum MetadataMode {
    /// `journal_mode=WAL`: other processes (a standby) may read alongside.
    #[default]
    Wal,
    /// `journal_mode=DELETE`, `locking_mode=EXCLUSIVE`: one connection owns the file.
    Exclusive,
}

/// SQLite's `synchronous` setting (MD-3: a tunable, `OFF` by default, because the metadata can
/// be rebuilt from the shape directories).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Synchronous {
    /// No `fsync`: a power loss may lose the latest writes (not a process crash).
    #[default]
    Off,
    /// `fsync` at checkpoints (WAL) or each commit (DELETE).
    Normal,
    /// `fsync` at every commit.
    Full,
}

impl Synchronous {
    const fn as_sql(self) -> &'static str {
        match self {
            Self::Off => "OFF",
            Self::Normal => "NORMAL",
            Self::Full => "FULL",
        }
    }
}

/// How to open the metadata database.
#[derive(Clone, Debug)]
pub struct MetadataOptions {
    /// WAL or exclusive (`ELECTRIC_SHAPE_DB_EXCLUSIVE_MODE`). A read-only handle ignores it and
    /// follows the journal mode the file is in.
    pub mode: MetadataMode,
    /// `ELECTRIC_SHAPE_DB_SYNCHRONOUS`.
    pub synchronous: Synchronous,
    /// `ELECTRIC_SHAPE_DB_CACHE_SIZE`, in KiB.
    pub cache_size_kib: u32,
    /// How long a statement waits for another process's lock before failing with "busy" (a
    /// read-only handle waits at most 200 ms per attempt).
    pub busy_timeout: Duration,
}

impl Default for MetadataOptions {
    fn default() -> Self {
        Self {
            mode: MetadataMode::default(),
            synchronous: Synchronous::default(),
            cache_size_kib: 4096,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// Shape metadata in one SQLite database. Cheap to clone: clones share the connection (and
/// see a [`SqliteMetadata::promote`]).
#[derive(Clone)]
pub struct SqliteMetadata {
    inner: Arc<Shared>,
}

struct Shared {
    /// The file, or `:memory:`; named in errors.
    path: PathBuf,
    access: Mutex<Access>,
    /// The storage lease every write re-reads first, once set ([`SqliteMetadata::set_lease`]).
    lease: Mutex<Option<Arc<StorageLease>>>,
}

/// What the handle may do with the file.
enum Access {
    /// The lock holder's read-write connection.
    Writer(Connection),
    /// A standby's read-only view (RO-4).
    Reader(Reader),
}

/// A standby's connection state: opened lazily, dropped after a transient failure.
struct Reader {
    busy_timeout: Duration,
    cache_size_kib: u32,
    /// The kept ordinary read-only connection, once the file's layout allows one.
    connection: Option<Connection>,
}

/// Why a metadata operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// The directory for the database could not be created.
    #[error("cannot create shape metadata directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// SQLite failed.
    #[error("shape metadata {path}: {op} failed")]
    Sqlite {
        /// The database.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// Looking at the database's files (a standby deciding how to read) failed.
    #[error("shape metadata {path}: cannot {op}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A read-only handle has no database to read yet: the writer has not created it (or
    /// not its schema). A standby treats this as "no shapes" and looks again later.
    #[error("shape metadata {path} does not exist yet")]
    NotCreatedYet {
        /// The database.
        path: PathBuf,
    },
    /// A write through a read-only handle (RO-4); the file was not touched.
    #[error("shape metadata {path} is open read-only (not the lock holder)")]
    ReadOnly {
        /// The database.
        path: PathBuf,
    },
    /// A standby's read kept failing in a way a writer causes briefly (MD-4): busy or locked,
    /// "database disk image is malformed" across an NFS lock gap, a hot journal it may not
    /// roll back, or the file changing under a snapshot read. Retry later.
    #[error("shape metadata {path}: still unreadable after {attempts} attempts ({reason})")]
    Transient {
        /// The database.
        path: PathBuf,
        /// Attempts made.
        attempts: u32,
        /// What the last attempt ran into.
        reason: &'static str,
        /// SQLite's error, when the last attempt got one.
        #[source]
        source: Option<rusqlite::Error>,
    },
    /// SQLite refused a journal mode (for example WAL on a file system without shared memory).
    #[error("shape metadata {path}: journal_mode={wanted} was refused (got {got})")]
    JournalMode {
        /// The database.
        path: PathBuf,
        /// The mode asked for.
        wanted: &'static str,
        /// The mode SQLite reports.
        got: String,
    },
    /// The file was written by a newer ampere.
    #[error(
        "shape metadata {path} has schema version {found}; this ampere reads up to {supported}"
    )]
    UnsupportedVersion {
        /// The database.
        path: PathBuf,
        /// Its `user_version`.
        found: i64,
        /// The newest version this code knows.
        supported: i64,
    },
    /// A stored row could not be decoded.
    #[error("shape metadata {path}: the {field} of shape {handle} cannot be decoded")]
    Decode {
        /// The database.
        path: PathBuf,
        /// The row's handle.
        handle: String,
        /// The column.
        field: &'static str,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A stored integer is outside its type's range (only a hand edit can do that).
    #[error("shape metadata {path}: stored {what} {value} is out of range")]
    InvalidValue {
        /// The database.
        path: PathBuf,
        /// What the value is.
        what: &'static str,
        /// The stored value.
        value: i64,
    },
    /// A value does not fit SQLite's signed 64-bit INTEGER.
    #[error("shape metadata: {what} {value} does not fit SQLite's INTEGER")]
    OutOfRange {
        /// What the value is.
        what: &'static str,
        /// The value.
        value: u64,
    },
    /// `:memory:` needs exclusive mode (MD-2).
    #[error(
        "an in-memory shape metadata database needs exclusive mode \
         (ELECTRIC_SHAPE_DB_EXCLUSIVE_MODE=true)"
    )]
    MemoryNeedsExclusive,
    /// Another instance acquired the storage lease since this one was promoted (it lost the
    /// lock, and may not have noticed yet; deploy-semantics LK-6, §2 item 13). Nothing was
    /// written; every write fails so until the lease is acquired again.
    #[error("shape metadata writes refused: another instance took the storage lease")]
    Fenced {
        /// What the lease file says now.
        #[source]
        source: Fenced,
    },
    /// The blocking worker panicked or was cancelled at runtime shutdown.
    #[error("shape metadata worker task failed")]
    Worker {
        /// The join failure.
        #[source]
        source: tokio::task::JoinError,
    },
}

impl SqliteMetadata {
    /// Opens (creating if needed) `<dir>/shapes.sqlite3` for writing, applies the mode's
    /// pragmas and migrates the schema. Blocking; call at startup, on the lock holder only.
    pub fn open(dir: &Path, options: &MetadataOptions) -> Result<Self, MetadataError> {
        let (path, connection) = open_writer(dir, options)?;
        Ok(Self::with_access(path, Access::Writer(connection)))
    }

    /// An in-memory database (`ELECTRIC_SHAPE_DB_STORAGE_DIR=:memory:`), only in
    /// [`MetadataMode::Exclusive`] (MD-2). Nothing survives the process.
    pub fn open_in_memory(options: &MetadataOptions) -> Result<Self, MetadataError> {
        if options.mode != MetadataMode::Exclusive {
            return Err(MetadataError::MemoryNeedsExclusive);
        }
        let path = PathBuf::from(":memory:");
        let mut connection = Connection::open_in_memory().map_err(sqlite_err(&path, "open"))?;
        configure(&path, &connection, options)?;
        migrate(&path, &mut connection)?;
        Ok(Self::with_access(path, Access::Writer(connection)))
    }

    /// Opens `<dir>/shapes.sqlite3` read-only for a standby (RO-1, RO-4, MD-4): no directory
    /// or file is created, no schema created or migrated, nothing written, not even at close.
    /// [`MetadataError::NotCreatedYet`] if the writer has not created the database (or its
    /// schema) yet: the caller treats that as "no shapes" and opens again later. Reads the
    /// schema version once (transient failures are retried, then reported). Blocking.
    pub fn open_read_only(dir: &Path, options: &MetadataOptions) -> Result<Self, MetadataError> {
        let path = dir.join(METADATA_FILE);
        let mut reader = Reader {
            busy_timeout: options.busy_timeout.min(READ_BUSY_TIMEOUT_MAX),
            cache_size_kib: options.cache_size_kib,
            connection: None,
        };
        reader.read(&path, |path, connection| {
            let tx = connection
                .transaction()
                .map_err(sqlite_err(path, "begin"))?;
            readable_version(path, &tx).map(drop)
        })?;
        Ok(Self::with_access(path, Access::Reader(reader)))
    }

    /// Turns a read-only handle into the writer once this instance holds the lock: opens the
    /// file read-write (creating it if needed), applies the pragmas and migrates, exactly as
    /// [`SqliteMetadata::open`]; every clone writes from then on. A writer stays as it is.
    pub fn promote(
        &self,
        options: &MetadataOptions,
    ) -> impl Future<Output = Result<(), MetadataError>> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        let options = options.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let mut access = inner.access();
                let Access::Reader(reader) = &mut *access else {
                    return Ok(());
                };
                // Close the read-only connection first: exclusive mode locks the file.
                reader.connection = None;
                let dir = inner.path.parent().unwrap_or_else(|| Path::new("."));
                let (_, connection) = open_writer(dir, &options)?;
                *access = Access::Writer(connection);
                Ok(())
            })
            .await
            .map_err(|source| MetadataError::Worker { source })?
        }
    }

    /// The database file (`:memory:` for an in-memory one).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Whether this handle refuses writes (opened with [`SqliteMetadata::open_read_only`] and
    /// not promoted).
    pub fn is_read_only(&self) -> bool {
        matches!(*self.inner.access(), Access::Reader(_))
    }

    fn with_access(path: PathBuf, access: Access) -> Self {
        Self {
            inner: Arc::new(Shared {
                path,
                access: Mutex::new(access),
                lease: Mutex::new(None),
            }),
        }
    }

    /// Fences every later write (through every clone) with `lease` (deploy-semantics LK-6,
    /// §2 item 13; [`crate::lease`]): each write re-reads the lease in its blocking task,
    /// holding the connection, right before its transaction, and fails with
    /// [`MetadataError::Fenced`] without touching the file once another instance acquired it.
    /// Reads are unaffected. Without a lease (the default) writes are not fenced.
    pub fn set_lease(&self, lease: Arc<StorageLease>) {
        *self
            .inner
            .lease
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(lease);
    }

    /// Runs a read in a blocking task: once on the writer's connection; on a standby with
    /// MD-4's retries.
    fn read<T: Send + 'static>(
        &self,
        work: fn(&Path, &mut Connection) -> Result<T, MetadataError>,
    ) -> impl Future<Output = Result<T, MetadataError>> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        async move {
            tokio::task::spawn_blocking(move || match &mut *inner.access() {
                Access::Writer(connection) => work(&inner.path, connection),
                Access::Reader(reader) => reader.read(&inner.path, work),
            })
            .await
            .map_err(|source| MetadataError::Worker { source })?
        }
    }

    /// Runs a write in a blocking task; a read-only handle refuses it without touching the
    /// file (RO-4), and so does a writer whose lease another instance took
    /// ([`SqliteMetadata::set_lease`]).
    fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Path, &mut Connection) -> Result<T, MetadataError> + Send + 'static,
    ) -> impl Future<Output = Result<T, MetadataError>> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        async move {
            tokio::task::spawn_blocking(move || match &mut *inner.access() {
                Access::Writer(connection) => {
                    inner.check_lease()?;
                    work(&inner.path, connection)
                }
                Access::Reader(_) => Err(MetadataError::ReadOnly {
                    path: inner.path.clone(),
                }),
            })
            .await
            .map_err(|source| MetadataError::Worker { source })?
        }
    }
}

impl Shared {
    /// `Err(Fenced)` if a lease is set and another instance acquired it since. Blocking.
    fn check_lease(&self) -> Result<(), MetadataError> {
        let lease = self
            .lease
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match lease {
            Some(lease) => lease.check().map_err(lease_error),
            None => Ok(()),
        }
    }

    fn access(&self) -> MutexGuard<'_, Access> {
        // A panic mid-statement leaves SQLite consistent (the transaction rolls back on drop),
        // so a poisoned lock is still a usable connection.
        self.access.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl MetadataStore for SqliteMetadata {
    type Error = MetadataError;

    fn load(
        &self,
    ) -> impl Future<Output = Result<(Vec<StoredShape>, HandleStamp), MetadataError>> + Send + 'static
    {
        self.read(load_blocking)
    }

    fn load_identity(
        &self,
    ) -> impl Future<Output = Result<Option<StorageIdentity>, MetadataError>> + Send + 'static {
        self.read(load_identity_blocking)
    }

    /// Replaces the one identity row in a `BEGIN IMMEDIATE` transaction: durable against a
    /// process crash once this resolves, against power loss per `synchronous` (module docs).
    fn put_identity(
        &self,
        identity: StorageIdentity,
    ) -> impl Future<Output = Result<(), MetadataError>> + Send + 'static {
        self.write(move |path, connection| put_identity_blocking(path, connection, &identity))
    }

    fn put_shape(
        &self,
        shape: StoredShape,
        stamp: HandleStamp,
    ) -> impl Future<Output = Result<(), MetadataError>> + Send + 'static {
        self.write(move |path, connection| put_shape_blocking(path, connection, &shape, stamp))
    }

    fn put_shapes(
        &self,
        shapes: Vec<StoredShape>,
    ) -> impl Future<Output = Result<(), MetadataError>> + Send + 'static {
        self.write(move |path, connection| {
            let tx = connection
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sqlite_err(path, "begin"))?;
            for shape in &shapes {
                insert_shape(&tx, path, shape, OnConflict::Replace)?;
            }
            tx.commit().map_err(sqlite_err(path, "commit"))
        })
    }

    fn delete_shape(
        &self,
        handle: &ShapeHandle,
    ) -> impl Future<Output = Result<(), MetadataError>> + Send + 'static {
        let handle = handle.clone();
        self.write(move |path, connection| {
            let tx = connection
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sqlite_err(path, "begin"))?;
            tx.execute("DELETE FROM shapes WHERE handle = ?1", [handle.as_str()])
                .map_err(sqlite_err(path, "delete shape"))?;
            tx.commit().map_err(sqlite_err(path, "commit"))
        })
    }
}

impl Reader {
    /// One read with MD-4's retries: transient failures drop the connection (a fresh one
    /// rereads the file's state), sleep briefly and try again.
    fn read<T>(
        &mut self,
        path: &Path,
        work: impl Fn(&Path, &mut Connection) -> Result<T, MetadataError>,
    ) -> Result<T, MetadataError> {
        let mut last = ("not attempted", None::<rusqlite::Error>);
        for attempt in 0..READ_ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(READ_RETRY_DELAY);
            }
            match self.attempt(path, &work) {
                Ok(value) => return Ok(value),
                Err(Attempt::Fail(err)) => return Err(err),
                Err(Attempt::Retry { reason, source }) => {
                    tracing::debug!(path = %path.display(), reason, "shape metadata read retried");
                    self.connection = None;
                    last = (reason, source);
                }
            }
        }
        Err(MetadataError::Transient {
            path: path.to_path_buf(),
            attempts: READ_ATTEMPTS,
            reason: last.0,
            source: last.1,
        })
    }

    fn attempt<T>(
        &mut self,
        path: &Path,
        work: &impl Fn(&Path, &mut Connection) -> Result<T, MetadataError>,
    ) -> Result<T, Attempt> {
        if self.connection.is_none() {
            match Layout::inspect(path)? {
                Layout::Missing => {
                    return Err(Attempt::Fail(MetadataError::NotCreatedYet {
                        path: path.to_path_buf(),
                    }))
                }
                Layout::Live => {
                    let connection = self.open(path, &path_uri(path, false))?;
                    self.connection = Some(connection);
                }
                Layout::Checkpointed(before) => return self.snapshot_read(path, before, work),
                Layout::WalWithoutIndex => {
                    return Err(Attempt::Retry {
                        reason: "a WAL file without its shared-memory index",
                        source: None,
                    })
                }
            }
        }
        let connection = self
            .connection
            .as_mut()
            .expect("invariant: opened just above or kept from an earlier read");
        work(path, connection).map_err(Attempt::classify)
    }

    /// Reads a checkpointed WAL database with `immutable=1` and keeps the answer only if the
    /// file did not change meanwhile (module docs).
    fn snapshot_read<T>(
        &self,
        path: &Path,
        before: FileStamp,
        work: &impl Fn(&Path, &mut Connection) -> Result<T, MetadataError>,
    ) -> Result<T, Attempt> {
        let mut connection = self.open(path, &path_uri(path, true))?;
        let result = work(path, &mut connection).map_err(Attempt::classify);
        drop(connection);
        match Layout::inspect(path)? {
            Layout::Checkpointed(after) if after == before => result,
            _ => Err(Attempt::Retry {
                reason: "the database changed during a snapshot read",
                source: None,
            }),
        }
    }

    /// Opens a read-only connection that never checkpoints at close and refuses writes.
    fn open(&self, path: &Path, uri: &str) -> Result<Connection, Attempt> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let fail = |op| move |source| Attempt::classify(sqlite_err(path, op)(source));
        let connection = Connection::open_with_flags(uri, flags).map_err(fail("open read-only"))?;
        connection
            .busy_timeout(self.busy_timeout)
            .map_err(fail("set busy_timeout"))?;
        connection
            .set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .map_err(fail("disable checkpoint on close"))?;
        connection
            .pragma_update(None, "query_only", true)
            .map_err(fail("set query_only"))?;
        connection
            .pragma_update(None, "cache_size", -i64::from(self.cache_size_kib))
            .map_err(fail("set cache_size"))?;
        Ok(connection)
    }
}

/// One read attempt's failure: worth another attempt, or final.
enum Attempt {
    Retry {
        reason: &'static str,
        source: Option<rusqlite::Error>,
    },
    Fail(MetadataError),
}

impl Attempt {
    fn classify(err: MetadataError) -> Self {
        let reason = match &err {
            MetadataError::Sqlite { source, .. } => transient_reason(source),
            _ => None,
        };
        match (reason, err) {
            (Some(reason), MetadataError::Sqlite { source, .. }) => Self::Retry {
                reason,
                source: Some(source),
            },
            (_, err) => Self::Fail(err),
        }
    }
}

impl From<MetadataError> for Attempt {
    fn from(err: MetadataError) -> Self {
        Self::classify(err)
    }
}

/// Why a SQLite error on a standby is worth retrying (MD-4), if it is.
fn transient_reason(err: &rusqlite::Error) -> Option<&'static str> {
    // Extended result codes of SQLITE_READONLY (sqlite3.h).
    const READONLY_RECOVERY: i32 = rusqlite::ffi::SQLITE_READONLY | (1 << 8);
    const READONLY_CANTLOCK: i32 = rusqlite::ffi::SQLITE_READONLY | (2 << 8);
    const READONLY_ROLLBACK: i32 = rusqlite::ffi::SQLITE_READONLY | (3 << 8);
    const READONLY_CANTINIT: i32 = rusqlite::ffi::SQLITE_READONLY | (5 << 8);
    let rusqlite::Error::SqliteFailure(failure, _) = err else {
        return None;
    };
    match failure.code {
        ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => Some("busy"),
        ErrorCode::DatabaseCorrupt => Some("database disk image is malformed"),
        ErrorCode::SchemaChanged => Some("schema changed"),
        ErrorCode::FileLockingProtocolFailed => Some("WAL locking protocol"),
        ErrorCode::ReadOnly
            if matches!(
                failure.extended_code,
                READONLY_RECOVERY | READONLY_CANTLOCK | READONLY_ROLLBACK | READONLY_CANTINIT
            ) =>
        {
            Some("needs recovery by a writer")
        }
        _ => None,
    }
}

/// What a standby finds on disk before opening a connection.
#[derive(Debug)]
enum Layout {
    /// No database file, or one too short to hold a header: the writer has not created it.
    Missing,
    /// A rollback-journal database, or WAL with both `-wal` and `-shm`: open normally.
    Live,
    /// WAL without a `-wal` file: the database file holds everything.
    Checkpointed(FileStamp),
    /// A non-empty `-wal` without `-shm`: committed frames only a writer can index.
    WalWithoutIndex,
}

/// What identifies a version of the database file for a snapshot read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// Bytes of the SQLite header read to tell the journal mode (bytes 18 and 19: 1 rollback,
/// 2 WAL).
const HEADER_LEN: usize = 100;

impl Layout {
    fn inspect(path: &Path) -> Result<Self, MetadataError> {
        let io_fail = |op| {
            move |source| MetadataError::Io {
                path: path.to_path_buf(),
                op,
                source,
            }
        };
        let mut header = [0u8; HEADER_LEN];
        let stamp = match fs::File::open(path) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Self::Missing),
            Err(err) => return Err(io_fail("open")(err)),
            Ok(mut file) => {
                let meta = file.metadata().map_err(io_fail("stat"))?;
                if meta.len() < HEADER_LEN as u64 {
                    return Ok(Self::Missing);
                }
                file.read_exact(&mut header)
                    .map_err(io_fail("read header"))?;
                FileStamp {
                    dev: meta.dev(),
                    ino: meta.ino(),
                    len: meta.len(),
                    mtime: (meta.mtime(), meta.mtime_nsec()),
                    ctime: (meta.ctime(), meta.ctime_nsec()),
                }
            }
        };
        let is_wal = header[18] == 2 || header[19] == 2;
        if !is_wal {
            return Ok(Self::Live);
        }
        let sibling = |suffix: &str| {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            fs::metadata(PathBuf::from(name))
        };
        let wal = match sibling("-wal") {
            Ok(meta) => Some(meta.len()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(err) => return Err(io_fail("stat the -wal file")(err)),
        };
        let shm = match sibling("-shm") {
            Ok(_) => true,
            Err(err) if err.kind() == io::ErrorKind::NotFound => false,
            Err(err) => return Err(io_fail("stat the -shm file")(err)),
        };
        Ok(match (wal, shm) {
            (Some(_), true) => Self::Live,
            (None, _) | (Some(0), false) => Self::Checkpointed(stamp),
            (Some(_), false) => Self::WalWithoutIndex,
        })
    }
}

/// `file:` URI for `path` (percent-encoded), read-only, `immutable=1` if asked.
fn path_uri(path: &Path, immutable: bool) -> String {
    let mut uri = String::from("file:");
    for &byte in path.as_os_str().as_bytes() {
        if byte.is_ascii_alphanumeric() || b"/-._~".contains(&byte) {
            uri.push(char::from(byte));
        } else {
            uri.push_str(&format!("%{byte:02X}"));
        }
    }
    uri.push_str("?mode=ro");
    if immutable {
        uri.push_str("&immutable=1");
    }
    uri
}

fn sqlite_err(path: &Path, op: &'static str) -> impl FnOnce(rusqlite::Error) -> MetadataError {
    let path = path.to_path_buf();
    move |source| MetadataError::Sqlite { path, op, source }
}

/// Creates the directory, opens the file read-write, configures and migrates it; while another
/// process holds it locked, up to [`WRITER_OPEN_ATTEMPTS`] times.
fn open_writer(
    dir: &Path,
    options: &MetadataOptions,
) -> Result<(PathBuf, Connection), MetadataError> {
    let mut attempt = 1;
    loop {
        match open_writer_once(dir, options) {
            Err(err) if err.is_busy() && attempt < WRITER_OPEN_ATTEMPTS => {
                tracing::info!(
                    error = %err,
                    attempt,
                    "shape metadata is still locked by another process; waiting for it"
                );
                std::thread::sleep(WRITER_OPEN_RETRY_DELAY);
                attempt += 1;
            }
            other => return other,
        }
    }
}

fn open_writer_once(
    dir: &Path,
    options: &MetadataOptions,
) -> Result<(PathBuf, Connection), MetadataError> {
    fs::create_dir_all(dir).map_err(|source| MetadataError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join(METADATA_FILE);
    let mut connection = Connection::open(&path).map_err(sqlite_err(&path, "open"))?;
    configure(&path, &connection, options)?;
    migrate(&path, &mut connection)?;
    Ok((path, connection))
}

/// Journal and locking mode, durability and cache pragmas.
fn configure(
    path: &Path,
    connection: &Connection,
    options: &MetadataOptions,
) -> Result<(), MetadataError> {
    connection
        .busy_timeout(options.busy_timeout)
        .map_err(sqlite_err(path, "set busy_timeout"))?;
    let wanted = match options.mode {
        MetadataMode::Wal => "wal",
        MetadataMode::Exclusive => {
            // Before journal_mode: the lock must be exclusive from the first access on.
            connection
                .pragma_update(None, "locking_mode", "EXCLUSIVE")
                .map_err(sqlite_err(path, "set locking_mode"))?;
            "delete"
        }
    };
    let got: String = connection
        .pragma_update_and_check(None, "journal_mode", wanted, |row| row.get(0))
        .map_err(sqlite_err(path, "set journal_mode"))?;
    // An in-memory database only knows `memory`, which is fine: nothing is on disk.
    if !got.eq_ignore_ascii_case(wanted) && !got.eq_ignore_ascii_case("memory") {
        return Err(MetadataError::JournalMode {
            path: path.to_path_buf(),
            wanted,
            got,
        });
    }
    connection
        .pragma_update(None, "synchronous", options.synchronous.as_sql())
        .map_err(sqlite_err(path, "set synchronous"))?;
    // Negative: KiB rather than pages.
    connection
        .pragma_update(None, "cache_size", -i64::from(options.cache_size_kib))
        .map_err(sqlite_err(path, "set cache_size"))
}

/// Creates or upgrades the schema, in one `BEGIN IMMEDIATE` transaction: a crash leaves the
/// old version or the new one, and every row of the old one is kept.
fn migrate(path: &Path, connection: &mut Connection) -> Result<(), MetadataError> {
    let tx = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sqlite_err(path, "begin"))?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(sqlite_err(path, "read user_version"))?;
    if !(0..=SCHEMA_VERSION).contains(&version) {
        return Err(MetadataError::UnsupportedVersion {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version < 1 {
        tx.execute_batch(SCHEMA_V1)
            .map_err(sqlite_err(path, "create schema"))?;
    }
    if version < IDENTITY_VERSION {
        tx.execute_batch(SCHEMA_V2)
            .map_err(sqlite_err(path, "migrate schema to v2"))?;
    }
    if version != SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(sqlite_err(path, "set user_version"))?;
    }
    tx.commit().map_err(sqlite_err(path, "commit"))
}

/// The schema version inside a read transaction, if this code can read it: `NotCreatedYet`
/// for an empty database (a standby looking before the writer created the schema).
fn readable_version(path: &Path, tx: &rusqlite::Transaction<'_>) -> Result<i64, MetadataError> {
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(sqlite_err(path, "read user_version"))?;
    match version {
        0 => Err(MetadataError::NotCreatedYet {
            path: path.to_path_buf(),
        }),
        1..=SCHEMA_VERSION => Ok(version),
        found => Err(MetadataError::UnsupportedVersion {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        }),
    }
}

/// A shape row as stored, before decoding.
struct Row {
    handle: String,
    definition: String,
    table_schema: String,
    snapshot: Option<String>,
    snapshot_filter_done: bool,
}

fn load_blocking(
    path: &Path,
    connection: &mut Connection,
) -> Result<(Vec<StoredShape>, HandleStamp), MetadataError> {
    // One read transaction: the rows and the stamp come from the same state.
    let tx = connection
        .transaction()
        .map_err(sqlite_err(path, "begin"))?;
    // Versions 1 and 2 store shapes alike (a standby cannot migrate an older file).
    readable_version(path, &tx)?;
    let rows = {
        let mut statement = tx
            .prepare(
                "SELECT handle, definition, table_schema, snapshot, snapshot_filter_done \
                 FROM shapes ORDER BY handle",
            )
            .map_err(sqlite_err(path, "prepare load"))?;
        let rows = statement
            .query_map([], |row| {
                Ok(Row {
                    handle: row.get(0)?,
                    definition: row.get(1)?,
                    table_schema: row.get(2)?,
                    snapshot: row.get(3)?,
                    snapshot_filter_done: row.get(4)?,
                })
            })
            .map_err(sqlite_err(path, "load shapes"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(sqlite_err(path, "load shapes"))?
    };
    let stamp: Option<i64> = tx
        .query_row(
            "SELECT value FROM settings WHERE key = ?1",
            [STAMP_HWM_KEY],
            |row| row.get(0),
        )
        .optional()
        .map_err(sqlite_err(path, "load stamp high-water mark"))?;
    tx.commit().map_err(sqlite_err(path, "commit"))?;
    let shapes = rows
        .into_iter()
        .map(|row| decode_row(path, row))
        .collect::<Result<Vec<_>, _>>()?;
    // Stored from a u64 by `put_shape`, so never negative unless edited by hand.
    let stamp = HandleStamp(stamp.map_or(0, |s| u64::try_from(s).unwrap_or(0)));
    Ok((shapes, stamp))
}

fn load_identity_blocking(
    path: &Path,
    connection: &mut Connection,
) -> Result<Option<StorageIdentity>, MetadataError> {
    let tx = connection
        .transaction()
        .map_err(sqlite_err(path, "begin"))?;
    if readable_version(path, &tx)? < IDENTITY_VERSION {
        return Ok(None); // A v1 file (read by a standby): no identity recorded yet.
    }
    let row = tx
        .query_row(
            "SELECT system_id, timeline, slot, acked_lsn, purge_pending \
             FROM storage_identity WHERE id = 1",
            [],
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, bool>(4)?,
                ))
            },
        )
        .optional()
        .map_err(sqlite_err(path, "load storage identity"))?;
    tx.commit().map_err(sqlite_err(path, "commit"))?;
    let Some((system_id, timeline, slot, acked, purge_pending)) = row else {
        return Ok(None);
    };
    let invalid = |what, value| MetadataError::InvalidValue {
        path: path.to_path_buf(),
        what,
        value,
    };
    Ok(Some(StorageIdentity {
        system_id,
        timeline: u32::try_from(timeline).map_err(|_| invalid("timeline", timeline))?,
        slot,
        acked: Lsn(u64::try_from(acked).map_err(|_| invalid("acked LSN", acked))?),
        purge_pending,
    }))
}

fn put_identity_blocking(
    path: &Path,
    connection: &mut Connection,
    identity: &StorageIdentity,
) -> Result<(), MetadataError> {
    let acked = i64::try_from(identity.acked.as_u64()).map_err(|_| MetadataError::OutOfRange {
        what: "acked LSN",
        value: identity.acked.as_u64(),
    })?;
    let tx = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sqlite_err(path, "begin"))?;
    tx.execute(
        "INSERT OR REPLACE INTO storage_identity \
         (id, system_id, timeline, slot, acked_lsn, purge_pending) \
         VALUES (1, ?1, ?2, ?3, ?4, ?5)",
        params![
            identity.system_id,
            identity.timeline,
            identity.slot,
            acked,
            identity.purge_pending,
        ],
    )
    .map_err(sqlite_err(path, "put storage identity"))?;
    tx.commit().map_err(sqlite_err(path, "commit"))
}

fn put_shape_blocking(
    path: &Path,
    connection: &mut Connection,
    shape: &StoredShape,
    stamp: HandleStamp,
) -> Result<(), MetadataError> {
    let tx = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sqlite_err(path, "begin"))?;
    insert_shape(&tx, path, shape, OnConflict::Replace)?;
    raise_stamp(&tx, path, stamp)?;
    tx.commit().map_err(sqlite_err(path, "commit"))
}

/// What inserting a row whose handle already exists does.
#[derive(Clone, Copy)]
enum OnConflict {
    /// Overwrite it (a put).
    Replace,
    /// Keep it (a rebuild never overrides a row that survived).
    Ignore,
}

/// Inserts one shape row; returns whether a row was written.
fn insert_shape(
    tx: &rusqlite::Transaction<'_>,
    path: &Path,
    shape: &StoredShape,
    on_conflict: OnConflict,
) -> Result<bool, MetadataError> {
    let (sql, op) = match on_conflict {
        OnConflict::Replace => ("INSERT OR REPLACE", "put shape"),
        OnConflict::Ignore => ("INSERT OR IGNORE", "rebuild shape"),
    };
    let encoded = EncodedShape::new(shape);
    let changed = tx
        .execute(
            &format!(
                "{sql} INTO shapes \
                 (handle, identity, relation_oid, definition, table_schema, snapshot, \
                  snapshot_filter_done) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
            ),
            params![
                shape.handle.as_str(),
                encoded.identity,
                shape.schema.oid.0,
                encoded.definition,
                encoded.table_schema,
                encoded.snapshot,
                shape.snapshot_filter_done,
            ],
        )
        .map_err(sqlite_err(path, op))?;
    Ok(changed > 0)
}

/// Raises the handle-stamp high-water mark to `stamp`; it only rises, whatever order writes
/// arrive in.
fn raise_stamp(
    tx: &rusqlite::Transaction<'_>,
    path: &Path,
    stamp: HandleStamp,
) -> Result<(), MetadataError> {
    let stamp_value = i64::try_from(stamp.0).map_err(|_| MetadataError::OutOfRange {
        what: "handle stamp",
        value: stamp.0,
    })?;
    tx.execute(
        "INSERT INTO settings (key, value) VALUES (?1, ?2) \
         ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
        params![STAMP_HWM_KEY, stamp_value],
    )
    .map_err(sqlite_err(path, "raise stamp high-water mark"))?;
    Ok(())
}

/// A shape's row as one JSON document, the copy each shape directory keeps (MD-3) so the
/// metadata can be rebuilt from the shape directories. Same field encodings as the row.
pub fn encode_stored_shape(shape: &StoredShape) -> String {
    to_json(&StoredShapeDto {
        version: DESCRIPTION_VERSION,
        handle: shape.handle.as_str().to_owned(),
        definition: DefinitionDto::from(&shape.definition),
        table_schema: TableSchemaDto::from(&shape.schema),
        snapshot: shape.snapshot.as_ref().map(SnapshotDto::from),
        snapshot_filter_done: shape.snapshot_filter_done,
    })
}

/// Reads back what [`encode_stored_shape`] wrote.
pub fn decode_stored_shape(text: &str) -> Result<StoredShape, serde_json::Error> {
    let dto: StoredShapeDto = serde_json::from_str(text)?;
    if dto.version != DESCRIPTION_VERSION {
        return Err(serde::de::Error::custom(format!(
            "unsupported shape description version {}",
            dto.version
        )));
    }
    Ok(StoredShape {
        handle: ShapeHandle::from_string(dto.handle),
        definition: dto.definition.into(),
        schema: dto.table_schema.into(),
        snapshot: dto.snapshot.map(Into::into),
        snapshot_filter_done: dto.snapshot_filter_done,
    })
}

/// Version of the [`encode_stored_shape`] document.
const DESCRIPTION_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct StoredShapeDto {
    version: u32,
    handle: String,
    definition: DefinitionDto,
    table_schema: TableSchemaDto,
    snapshot: Option<SnapshotDto>,
    snapshot_filter_done: bool,
}

/// Renames `<dir>/shapes.sqlite3` and its `-wal`, `-shm` and `-journal` files aside to
/// `shapes.sqlite3.corrupt-<unix seconds>[-<n>]…` (never deletes them), for a lock holder that
/// found the database corrupt (MD-3). Returns the new name of the database file, or `None` if
/// there was none. Blocking; the caller must have closed every connection to it.
pub fn move_aside_corrupt(dir: &Path) -> Result<Option<PathBuf>, MetadataError> {
    let path = dir.join(METADATA_FILE);
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let io_fail = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| MetadataError::Io { path, op, source }
    };
    let with_suffix = |base: &Path, suffix: &str| {
        let mut name = base.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    let mut aside = with_suffix(&path, &format!(".corrupt-{unix}"));
    let mut n = 1;
    while fs::symlink_metadata(&aside).is_ok() {
        aside = with_suffix(&path, &format!(".corrupt-{unix}-{n}"));
        n += 1;
    }
    let mut moved = None;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let from = with_suffix(&path, suffix);
        let to = with_suffix(&aside, suffix);
        match fs::rename(&from, &to) {
            Ok(()) => {
                if suffix.is_empty() {
                    moved = Some(to);
                }
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_fail("move the corrupt database aside", &from)(err)),
        }
    }
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_fail("fsync directory", dir))?;
    Ok(moved)
}

/// A storage-lease failure as a metadata error (I/O keeps the operation and path).
pub(crate) fn lease_error(err: LeaseError) -> MetadataError {
    match err {
        LeaseError::Fenced(source) => MetadataError::Fenced { source },
        LeaseError::Io { path, op, source } => MetadataError::Io { path, op, source },
    }
}

impl MetadataError {
    /// Whether this instance was deposed: another instance took the storage lease, so it must
    /// stop writing and wait for the lock again ([`MetadataError::Fenced`]).
    pub fn is_fenced(&self) -> bool {
        matches!(self, Self::Fenced { .. })
    }

    /// The resource a write ran out of (full disk, descriptor limit, device error): the
    /// instance degrades on these instead of stopping. SQLite reports a full disk as
    /// `SQLITE_FULL` and hides the errno of its other I/O failures, so those count as device
    /// errors (`SQLITE_IOERR`, and `SQLITE_CANTOPEN`, which is how `EMFILE` reaches it).
    pub fn fault(&self) -> Option<StorageFault> {
        match self {
            Self::Io { path, source, .. } | Self::CreateDir { path, source } => {
                io_fault(source, path)
            }
            Self::Sqlite {
                path,
                source: rusqlite::Error::SqliteFailure(err, _),
                ..
            } => {
                let (kind, code) = match err.code {
                    ErrorCode::DiskFull => (StorageFaultKind::Full, "SQLITE_FULL"),
                    ErrorCode::SystemIoFailure => (StorageFaultKind::Io, "SQLITE_IOERR"),
                    ErrorCode::CannotOpen => (StorageFaultKind::Io, "SQLITE_CANTOPEN"),
                    _ => return None,
                };
                let path = Some(path.display().to_string());
                Some(StorageFault { kind, code, path })
            }
            _ => None,
        }
    }

    /// Whether a standby's read failed in a way a writer causes briefly (MD-4): retry later.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }

    /// Whether SQLite found the file locked by another connection ("database is locked").
    pub fn is_busy(&self) -> bool {
        matches!(
            self,
            Self::Sqlite {
                source: rusqlite::Error::SqliteFailure(err, _),
                ..
            } if matches!(err.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
        )
    }

    /// Whether the database itself is damaged (not a database, "malformed", a row that does
    /// not decode): the lock holder moves it aside and rebuilds it (MD-3), rather than retry.
    pub fn is_corruption(&self) -> bool {
        match self {
            Self::Sqlite {
                source: rusqlite::Error::SqliteFailure(err, _),
                ..
            } => matches!(
                err.code,
                ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase
            ),
            Self::Decode { .. } | Self::InvalidValue { .. } => true,
            _ => false,
        }
    }
}

impl SqliteMetadata {
    /// Re-inserts the rows of `shapes` that have no row (existing rows are kept as they are)
    /// and raises the stamp high-water mark to at least `min_stamp`, in one transaction.
    /// Returns the handles inserted. For a lock holder rebuilding from shape directories (MD-3).
    pub fn rebuild(
        &self,
        shapes: Vec<StoredShape>,
        min_stamp: HandleStamp,
    ) -> impl Future<Output = Result<Vec<ShapeHandle>, MetadataError>> + Send + 'static {
        self.write(move |path, connection| rebuild_blocking(path, connection, &shapes, min_stamp))
    }
}

fn rebuild_blocking(
    path: &Path,
    connection: &mut Connection,
    shapes: &[StoredShape],
    min_stamp: HandleStamp,
) -> Result<Vec<ShapeHandle>, MetadataError> {
    let tx = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sqlite_err(path, "begin"))?;
    let mut inserted = Vec::new();
    for shape in shapes {
        if insert_shape(&tx, path, shape, OnConflict::Ignore)? {
            inserted.push(shape.handle.clone());
        }
    }
    raise_stamp(&tx, path, min_stamp)?;
    tx.commit().map_err(sqlite_err(path, "commit"))?;
    Ok(inserted)
}

/// The text columns of a shape row.
struct EncodedShape {
    identity: String,
    definition: String,
    table_schema: String,
    snapshot: Option<String>,
}

impl EncodedShape {
    fn new(shape: &StoredShape) -> Self {
        Self {
            identity: format!("{:016x}", shape.definition.identity().0),
            definition: to_json(&DefinitionDto::from(&shape.definition)),
            table_schema: to_json(&TableSchemaDto::from(&shape.schema)),
            snapshot: shape
                .snapshot
                .as_ref()
                .map(|s| to_json(&SnapshotDto::from(s))),
        }
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    // Plain structs of strings, integers, booleans, options and vectors: serialising them to a
    // string cannot fail (no maps with non-string keys, no custom `Serialize`).
    serde_json::to_string(value).expect("invariant: metadata DTOs always serialise")
}

fn decode_row(path: &Path, row: Row) -> Result<StoredShape, MetadataError> {
    let err = |field| {
        let path = path.to_path_buf();
        let handle = row.handle.clone();
        move |source| MetadataError::Decode {
            path,
            handle,
            field,
            source,
        }
    };
    let definition: DefinitionDto =
        serde_json::from_str(&row.definition).map_err(err("definition"))?;
    let schema: TableSchemaDto =
        serde_json::from_str(&row.table_schema).map_err(err("table schema"))?;
    let snapshot: Option<SnapshotDto> = row
        .snapshot
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(err("snapshot"))?;
    Ok(StoredShape {
        handle: ShapeHandle::from_string(row.handle),
        definition: definition.into(),
        schema: schema.into(),
        snapshot: snapshot.map(Into::into),
        snapshot_filter_done: row.snapshot_filter_done,
    })
}

// Private JSON encodings. The core's types carry no serde on purpose; these mirror them field
// for field, and changing one is a schema change (bump `SCHEMA_VERSION` and migrate).

#[derive(Serialize, Deserialize)]
struct DefinitionDto {
    schema: String,
    table: String,
    columns: Option<Vec<String>>,
    replica: ReplicaDto,
    /// Absent before schema v3 and for where-less shapes.
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    where_clause: Option<String>,
    /// Absent before schema v3 and for full logs.
    #[serde(default, skip_serializing_if = "LogDto::is_full")]
    log: LogDto,
}

#[derive(Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum LogDto {
    #[default]
    Full,
    ChangesOnly,
}

impl LogDto {
    fn is_full(&self) -> bool {
        *self == Self::Full
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ReplicaDto {
    Default,
    Full,
}

#[derive(Serialize, Deserialize)]
struct TableSchemaDto {
    oid: u32,
    schema: String,
    table: String,
    columns: Vec<ColumnDto>,
    /// `server_version_num`. Absent in rows and `shape.json` files written before ampere
    /// recorded it: those shapes' where clauses were compiled with Postgres 15's semantics,
    /// and keep them.
    #[serde(default = "pg_15")]
    server_version: u32,
}

fn pg_15() -> u32 {
    ServerVersion::PG_15.0
}

#[derive(Serialize, Deserialize)]
struct ColumnDto {
    name: String,
    type_oid: u32,
    typname: String,
    dims: u32,
    not_null: bool,
    pk_index: Option<u32>,
    modifiers: Vec<(String, String)>,
    /// Absent (false) in rows written before ampere read it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    is_enum: bool,
}

#[derive(Serialize, Deserialize)]
struct SnapshotDto {
    xmin: u64,
    xmax: u64,
    xip: Vec<u64>,
}

impl From<&ShapeDefinition> for DefinitionDto {
    fn from(d: &ShapeDefinition) -> Self {
        Self {
            schema: d.relation.schema.clone(),
            table: d.relation.table.clone(),
            columns: d.columns.clone(),
            replica: match d.replica {
                Replica::Default => ReplicaDto::Default,
                Replica::Full => ReplicaDto::Full,
            },
            where_clause: d.where_clause.clone(),
            log: match d.log {
                LogMode::Full => LogDto::Full,
                LogMode::ChangesOnly => LogDto::ChangesOnly,
            },
        }
    }
}

impl From<DefinitionDto> for ShapeDefinition {
    fn from(d: DefinitionDto) -> Self {
        Self {
            relation: RelationName {
                schema: d.schema,
                table: d.table,
            },
            columns: d.columns,
            replica: match d.replica {
                ReplicaDto::Default => Replica::Default,
                ReplicaDto::Full => Replica::Full,
            },
            where_clause: d.where_clause,
            log: match d.log {
                LogDto::Full => LogMode::Full,
                LogDto::ChangesOnly => LogMode::ChangesOnly,
            },
        }
    }
}

impl From<&TableSchema> for TableSchemaDto {
    fn from(t: &TableSchema) -> Self {
        Self {
            oid: t.oid.0,
            schema: t.relation.schema.clone(),
            table: t.relation.table.clone(),
            columns: t.columns.iter().map(ColumnDto::from).collect(),
            server_version: t.server_version.0,
        }
    }
}

impl From<TableSchemaDto> for TableSchema {
    fn from(t: TableSchemaDto) -> Self {
        Self {
            oid: Oid(t.oid),
            relation: RelationName {
                schema: t.schema,
                table: t.table,
            },
            columns: t.columns.into_iter().map(Into::into).collect(),
            server_version: ServerVersion(t.server_version),
        }
    }
}

impl From<&ColumnSchema> for ColumnDto {
    fn from(c: &ColumnSchema) -> Self {
        Self {
            name: c.name.clone(),
            type_oid: c.type_oid,
            typname: c.typname.clone(),
            dims: c.dims,
            not_null: c.not_null,
            pk_index: c.pk_index,
            modifiers: c.modifiers.clone(),
            is_enum: c.is_enum,
        }
    }
}

impl From<ColumnDto> for ColumnSchema {
    fn from(c: ColumnDto) -> Self {
        Self {
            name: c.name,
            type_oid: c.type_oid,
            typname: c.typname,
            dims: c.dims,
            not_null: c.not_null,
            pk_index: c.pk_index,
            modifiers: c.modifiers,
            is_enum: c.is_enum,
        }
    }
}

impl From<&PgSnapshot> for SnapshotDto {
    fn from(s: &PgSnapshot) -> Self {
        Self {
            xmin: s.xmin.0,
            xmax: s.xmax.0,
            xip: s.xip.iter().map(|x| x.0).collect(),
        }
    }
}

impl From<SnapshotDto> for PgSnapshot {
    fn from(s: SnapshotDto) -> Self {
        Self {
            xmin: FullXid(s.xmin),
            xmax: FullXid(s.xmax),
            xip: s.xip.into_iter().map(FullXid).collect(),
        }
    }
}

#[cfg(test)]
mod fault_tests {
    use super::*;

    fn sqlite(code: i32) -> MetadataError {
        MetadataError::Sqlite {
            path: PathBuf::from("/s/shapes.sqlite3"),
            op: "commit",
            source: rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None),
        }
    }

    #[test]
    fn sqlite_reports_a_full_disk_and_io_failures_as_faults_and_corruption_as_none() {
        let full = sqlite(rusqlite::ffi::SQLITE_FULL).fault().expect("a fault");
        assert_eq!(
            (full.kind, full.code),
            (StorageFaultKind::Full, "SQLITE_FULL")
        );
        assert_eq!(full.path.as_deref(), Some("/s/shapes.sqlite3"));
        let io = sqlite(rusqlite::ffi::SQLITE_IOERR)
            .fault()
            .expect("a fault");
        assert_eq!(io.kind, StorageFaultKind::Io);
        assert_eq!(sqlite(rusqlite::ffi::SQLITE_CORRUPT).fault(), None);
        let file = MetadataError::Io {
            path: PathBuf::from("/s/shapes/h/shape.json"),
            op: "write",
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert_eq!(file.fault().map(|f| f.code), Some("ENOSPC"));
    }
}
