//! Shape metadata in SQLite (deploy-semantics MD-1 … MD-4).
//!
//! Owns one file, `<dir>/shapes.sqlite3`: a row per shape (handle, identity digest, relation
//! OID, definition, table schema and snapshot as JSON text, the filter flag) and a key/value
//! table holding the handle-stamp high-water mark. Versioned with `PRAGMA user_version`.
//!
//! Never: holds facts the shape directories lack (the metadata is an index that can be rebuilt,
//! MD-3), or runs SQLite on an async thread: every call runs in `spawn_blocking` with the one
//! connection behind a mutex. Writes use `BEGIN IMMEDIATE` (MD-1).
//!
//! Modes (MD-2): [`MetadataMode::Wal`] (default) uses `journal_mode=WAL`;
//! [`MetadataMode::Exclusive`] (`ELECTRIC_SHAPE_DB_EXCLUSIVE_MODE=true`, needed on NFS/EFS,
//! whose locks WAL's shared-memory index cannot trust) uses `journal_mode=DELETE` and
//! `locking_mode=EXCLUSIVE`, keeping the file locked while the store lives; only this mode
//! may be in memory. Both modes use one connection here; MD-2's read-only pool is not needed
//! while every read is a short query at boot.

use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

use ampere_core::pgoutput::Oid;
use ampere_core::ports::{MetadataStore, StoredShape};
use ampere_core::shape::{
    ColumnSchema, HandleStamp, RelationName, Replica, ShapeDefinition, ShapeHandle, TableSchema,
};
use ampere_core::snapshot::{FullXid, PgSnapshot};

/// The metadata file's name inside its directory.
pub const METADATA_FILE: &str = "shapes.sqlite3";

/// The schema version this code writes and reads (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

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
    /// WAL or exclusive (`ELECTRIC_SHAPE_DB_EXCLUSIVE_MODE`).
    pub mode: MetadataMode,
    /// `ELECTRIC_SHAPE_DB_SYNCHRONOUS`.
    pub synchronous: Synchronous,
    /// `ELECTRIC_SHAPE_DB_CACHE_SIZE`, in KiB.
    pub cache_size_kib: u32,
    /// How long a statement waits for another process's lock before failing with "busy".
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

/// Shape metadata in one SQLite database. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct SqliteMetadata {
    inner: Arc<Shared>,
}

struct Shared {
    /// The file, or `:memory:`; named in errors.
    path: PathBuf,
    connection: Mutex<Connection>,
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
        source: std::io::Error,
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
    /// The blocking worker panicked or was cancelled at runtime shutdown.
    #[error("shape metadata worker task failed")]
    Worker {
        /// The join failure.
        #[source]
        source: tokio::task::JoinError,
    },
}

impl SqliteMetadata {
    /// Opens (creating if needed) `<dir>/shapes.sqlite3`, applies the mode's pragmas and
    /// migrates the schema. Blocking; call at startup.
    pub fn open(dir: &Path, options: &MetadataOptions) -> Result<Self, MetadataError> {
        fs::create_dir_all(dir).map_err(|source| MetadataError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(METADATA_FILE);
        let connection = Connection::open(&path).map_err(sqlite_err(&path, "open"))?;
        Self::init(path, connection, options)
    }

    /// An in-memory database (`ELECTRIC_SHAPE_DB_STORAGE_DIR=:memory:`), only in
    /// [`MetadataMode::Exclusive`] (MD-2). Nothing survives the process.
    pub fn open_in_memory(options: &MetadataOptions) -> Result<Self, MetadataError> {
        if options.mode != MetadataMode::Exclusive {
            return Err(MetadataError::MemoryNeedsExclusive);
        }
        let path = PathBuf::from(":memory:");
        let connection = Connection::open_in_memory().map_err(sqlite_err(&path, "open"))?;
        Self::init(path, connection, options)
    }

    /// The database file (`:memory:` for an in-memory one).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn init(
        path: PathBuf,
        mut connection: Connection,
        options: &MetadataOptions,
    ) -> Result<Self, MetadataError> {
        configure(&path, &connection, options)?;
        migrate(&path, &mut connection)?;
        Ok(Self {
            inner: Arc::new(Shared {
                path,
                connection: Mutex::new(connection),
            }),
        })
    }

    /// Runs `work` on the connection in a blocking task.
    fn with_connection<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Path, &mut Connection) -> Result<T, MetadataError> + Send + 'static,
    ) -> impl Future<Output = Result<T, MetadataError>> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        async move {
            tokio::task::spawn_blocking(move || {
                // A panic mid-statement leaves SQLite consistent (the transaction rolls back on
                // drop), so a poisoned lock is still a usable connection.
                let mut connection = inner
                    .connection
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                work(&inner.path, &mut connection)
            })
            .await
            .map_err(|source| MetadataError::Worker { source })?
        }
    }
}

impl MetadataStore for SqliteMetadata {
    type Error = MetadataError;

    fn load(
        &self,
    ) -> impl Future<Output = Result<(Vec<StoredShape>, HandleStamp), MetadataError>> + Send + 'static
    {
        self.with_connection(load_blocking)
    }

    fn put_shape(
        &self,
        shape: StoredShape,
        stamp: HandleStamp,
    ) -> impl Future<Output = Result<(), MetadataError>> + Send + 'static {
        self.with_connection(move |path, connection| {
            put_shape_blocking(path, connection, &shape, stamp)
        })
    }

    fn delete_shape(
        &self,
        handle: &ShapeHandle,
    ) -> impl Future<Output = Result<(), MetadataError>> + Send + 'static {
        let handle = handle.clone();
        self.with_connection(move |path, connection| {
            let tx = connection
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sqlite_err(path, "begin"))?;
            tx.execute("DELETE FROM shapes WHERE handle = ?1", [handle.as_str()])
                .map_err(sqlite_err(path, "delete shape"))?;
            tx.commit().map_err(sqlite_err(path, "commit"))
        })
    }
}

fn sqlite_err(path: &Path, op: &'static str) -> impl FnOnce(rusqlite::Error) -> MetadataError {
    let path = path.to_path_buf();
    move |source| MetadataError::Sqlite { path, op, source }
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

/// Creates or checks the schema, in one `BEGIN IMMEDIATE` transaction.
fn migrate(path: &Path, connection: &mut Connection) -> Result<(), MetadataError> {
    let tx = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sqlite_err(path, "begin"))?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(sqlite_err(path, "read user_version"))?;
    match version {
        0 => {
            tx.execute_batch(SCHEMA_V1)
                .map_err(sqlite_err(path, "create schema"))?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(sqlite_err(path, "set user_version"))?;
        }
        SCHEMA_VERSION => {}
        found => {
            return Err(MetadataError::UnsupportedVersion {
                path: path.to_path_buf(),
                found,
                supported: SCHEMA_VERSION,
            })
        }
    }
    tx.commit().map_err(sqlite_err(path, "commit"))
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

fn put_shape_blocking(
    path: &Path,
    connection: &mut Connection,
    shape: &StoredShape,
    stamp: HandleStamp,
) -> Result<(), MetadataError> {
    let stamp_value = i64::try_from(stamp.0).map_err(|_| MetadataError::OutOfRange {
        what: "handle stamp",
        value: stamp.0,
    })?;
    let encoded = EncodedShape::new(shape);
    let tx = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sqlite_err(path, "begin"))?;
    tx.execute(
        "INSERT OR REPLACE INTO shapes \
         (handle, identity, relation_oid, definition, table_schema, snapshot, \
          snapshot_filter_done) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
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
    .map_err(sqlite_err(path, "put shape"))?;
    // The high-water mark only rises, whatever order puts arrive in.
    tx.execute(
        "INSERT INTO settings (key, value) VALUES (?1, ?2) \
         ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
        params![STAMP_HWM_KEY, stamp_value],
    )
    .map_err(sqlite_err(path, "raise stamp high-water mark"))?;
    tx.commit().map_err(sqlite_err(path, "commit"))
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
