//! `SqliteMetadata` on a real file: every field of a stored shape round-trips, the handle-stamp
//! high-water mark only rises, rows survive reopening, and exclusive mode owns the file; the
//! storage identity (CT-5) round-trips and v1 files migrate; a standby's read-only handle
//! (RO-1, RO-4, MD-4) sees later commits, writes nothing and reports what it cannot read yet.
//! Each test works in its own directory under /tmp, removed at the end.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::Duration;

use ampere_core::pgoutput::Oid;
use ampere_core::ports::{MetadataStore, StorageIdentity, StoredShape};
use ampere_core::shape::{
    ColumnSchema, HandleStamp, RelationName, Replica, ServerVersion, ShapeDefinition, ShapeHandle,
    TableSchema,
};
use ampere_core::snapshot::{FullXid, PgSnapshot};
use ampere_core::Lsn;
use ampere_io_real::metadata::{
    decode_stored_shape, encode_stored_shape, MetadataError, MetadataMode, MetadataOptions,
    SqliteMetadata, METADATA_FILE,
};

mod common;
use common::TempDir;

fn column(name: &str, type_oid: u32, typname: &str) -> ColumnSchema {
    ColumnSchema {
        name: name.to_owned(),
        type_oid,
        typname: typname.to_owned(),
        dims: 0,
        not_null: false,
        pk_index: None,
        modifiers: vec![],
        is_enum: false,
    }
}

/// A shape using every field: column selection, replica full, array dims, modifiers, a
/// composite key, a snapshot with in-progress xids above epoch 0, the filter flag.
fn full_shape() -> StoredShape {
    let relation = RelationName {
        schema: "app".to_owned(),
        table: "Issues \"for\" x_1".to_owned(),
    };
    let mut id = column("id", 23, "int4");
    id.not_null = true;
    id.pk_index = Some(1);
    let mut tenant = column("tenant", 25, "text");
    tenant.pk_index = Some(0);
    let mut title = column("title", 1043, "varchar");
    title.modifiers = vec![("max_length".to_owned(), "10".to_owned())];
    let mut tags = column("tags", 1009, "text");
    tags.dims = 2;
    let mut price = column("price", 1700, "numeric");
    price.modifiers = vec![
        ("precision".to_owned(), "10".to_owned()),
        ("scale".to_owned(), "2".to_owned()),
    ];
    let epoch = 3u64 << 32;
    StoredShape {
        handle: ShapeHandle::from_string("3833821-1721812114261123".to_owned()),
        definition: ShapeDefinition {
            relation: relation.clone(),
            columns: Some(vec![
                "id".to_owned(),
                "tenant".to_owned(),
                "title".to_owned(),
            ]),
            replica: Replica::Full,
            where_clause: Some("tenant = 'a' AND id > '7'".to_owned()),
            log: ampere_core::shape::LogMode::ChangesOnly,
        },
        schema: TableSchema {
            // Not the default a row without a version reads as: the round trips keep it.
            server_version: ServerVersion(170_002),
            oid: Oid(u32::MAX),
            relation,
            columns: vec![id, tenant, title, tags, price],
        },
        snapshot: Some(PgSnapshot {
            xmin: FullXid(epoch + 10),
            xmax: FullXid(epoch + 20),
            xip: vec![FullXid(epoch + 11), FullXid(epoch + 15)],
        }),
        snapshot_filter_done: true,
    }
}

/// A shape using the other choices: all columns, replica default, no snapshot yet.
fn plain_shape() -> StoredShape {
    let relation = RelationName {
        schema: "public".to_owned(),
        table: "items".to_owned(),
    };
    StoredShape {
        handle: ShapeHandle::from_string("1-1".to_owned()),
        definition: ShapeDefinition {
            relation: relation.clone(),
            columns: None,
            replica: Replica::Default,
            where_clause: None,
            log: ampere_core::shape::LogMode::Full,
        },
        schema: TableSchema {
            server_version: ServerVersion::PG_15,
            oid: Oid(16_384),
            relation,
            columns: vec![column("id", 23, "int4")],
        },
        snapshot: None,
        snapshot_filter_done: false,
    }
}

fn open(dir: &TempDir) -> SqliteMetadata {
    SqliteMetadata::open(dir.path(), &MetadataOptions::default()).expect("open")
}

fn exclusive() -> MetadataOptions {
    MetadataOptions {
        mode: MetadataMode::Exclusive,
        busy_timeout: Duration::from_millis(50),
        ..MetadataOptions::default()
    }
}

#[tokio::test]
async fn every_field_of_a_stored_shape_round_trips() {
    let dir = TempDir::new("round-trip");
    let metadata = open(&dir);
    assert_eq!(
        metadata.load().await.expect("load"),
        (vec![], HandleStamp(0))
    );
    metadata
        .put_shape(full_shape(), HandleStamp(1_721_812_114_261_123))
        .await
        .expect("put");
    metadata
        .put_shape(plain_shape(), HandleStamp(1))
        .await
        .expect("put");
    let (shapes, stamp) = metadata.load().await.expect("load");
    // Loaded in handle order.
    assert_eq!(shapes, vec![plain_shape(), full_shape()]);
    assert_eq!(stamp, HandleStamp(1_721_812_114_261_123));
}

#[tokio::test]
async fn putting_a_shape_again_replaces_its_row() {
    let dir = TempDir::new("replace");
    let metadata = open(&dir);
    let mut shape = plain_shape();
    metadata
        .put_shape(shape.clone(), HandleStamp(1))
        .await
        .expect("put");
    shape.snapshot = full_shape().snapshot;
    shape.snapshot_filter_done = true;
    metadata
        .put_shape(shape.clone(), HandleStamp(1))
        .await
        .expect("put");
    assert_eq!(metadata.load().await.expect("load").0, vec![shape]);
}

#[tokio::test]
async fn a_run_of_shapes_is_put_in_order_without_touching_the_stamp() {
    let dir = TempDir::new("put-shapes");
    let metadata = open(&dir);
    metadata
        .put_shape(plain_shape(), HandleStamp(7))
        .await
        .expect("put");
    let mut done = plain_shape();
    done.snapshot = full_shape().snapshot;
    done.snapshot_filter_done = true;
    // The same handle twice in one run: the later row wins, as sequential puts would.
    metadata
        .put_shapes(vec![plain_shape(), full_shape(), done.clone()])
        .await
        .expect("put shapes");
    assert_eq!(
        metadata.load().await.expect("load"),
        (vec![done, full_shape()], HandleStamp(7))
    );
}

#[tokio::test]
async fn the_stamp_high_water_mark_only_rises() {
    let dir = TempDir::new("stamp");
    let metadata = open(&dir);
    for (put, hwm) in [(100, 100), (50, 100), (100, 100), (200, 200), (0, 200)] {
        metadata
            .put_shape(plain_shape(), HandleStamp(put))
            .await
            .expect("put");
        assert_eq!(metadata.load().await.expect("load").1, HandleStamp(hwm));
    }
    let err = metadata
        .put_shape(plain_shape(), HandleStamp(u64::MAX))
        .await
        .expect_err("above i64::MAX");
    assert!(matches!(err, MetadataError::OutOfRange { .. }), "{err}");
}

#[tokio::test]
async fn deleting_a_shape_keeps_the_others_and_the_stamp() {
    let dir = TempDir::new("delete");
    let metadata = open(&dir);
    metadata
        .put_shape(full_shape(), HandleStamp(7))
        .await
        .expect("put");
    metadata
        .put_shape(plain_shape(), HandleStamp(5))
        .await
        .expect("put");
    metadata
        .delete_shape(&plain_shape().handle)
        .await
        .expect("delete");
    metadata
        .delete_shape(&ShapeHandle::from_string("9-9".to_owned()))
        .await
        .expect("deleting an unknown handle is fine");
    assert_eq!(
        metadata.load().await.expect("load"),
        (vec![full_shape()], HandleStamp(7))
    );
}

#[tokio::test]
async fn rows_survive_closing_and_reopening_the_file() {
    let dir = TempDir::new("reopen");
    let metadata = open(&dir);
    metadata
        .put_shape(full_shape(), HandleStamp(42))
        .await
        .expect("put");
    drop(metadata);
    let reopened = open(&dir);
    assert_eq!(
        reopened.load().await.expect("load"),
        (vec![full_shape()], HandleStamp(42))
    );
    assert_eq!(reopened.path(), dir.path().join(METADATA_FILE));
    let journal: String = rusqlite::Connection::open(reopened.path())
        .expect("open")
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .expect("journal_mode");
    assert_eq!(journal, "wal");
}

#[tokio::test]
async fn exclusive_mode_owns_the_file_until_closed() {
    let dir = TempDir::new("exclusive");
    let metadata = SqliteMetadata::open(dir.path(), &exclusive()).expect("open");
    metadata
        .put_shape(full_shape(), HandleStamp(3))
        .await
        .expect("put");
    assert_eq!(metadata.load().await.expect("load").0, vec![full_shape()]);
    assert!(
        !dir.path().join(format!("{METADATA_FILE}-wal")).exists(),
        "no WAL in exclusive mode"
    );
    let second = SqliteMetadata::open(dir.path(), &exclusive());
    assert!(second.is_err(), "a second opener is locked out");

    drop(metadata);
    let reopened = SqliteMetadata::open(dir.path(), &exclusive()).expect("reopen");
    assert_eq!(
        reopened.load().await.expect("load"),
        (vec![full_shape()], HandleStamp(3))
    );
}

#[tokio::test]
async fn in_memory_databases_need_exclusive_mode() {
    let err = SqliteMetadata::open_in_memory(&MetadataOptions::default()).err();
    assert!(matches!(err, Some(MetadataError::MemoryNeedsExclusive)));
    let metadata = SqliteMetadata::open_in_memory(&exclusive()).expect("open");
    metadata
        .put_shape(plain_shape(), HandleStamp(1))
        .await
        .expect("put");
    assert_eq!(
        metadata.load().await.expect("load"),
        (vec![plain_shape()], HandleStamp(1))
    );
}

#[test]
fn a_file_from_a_newer_schema_version_is_refused() {
    let dir = TempDir::new("version");
    let conn = rusqlite::Connection::open(dir.path().join(METADATA_FILE)).expect("open");
    conn.pragma_update(None, "user_version", 99)
        .expect("user_version");
    drop(conn);
    let err = SqliteMetadata::open(dir.path(), &MetadataOptions::default()).err();
    assert!(
        matches!(
            err,
            Some(MetadataError::UnsupportedVersion { found: 99, .. })
        ),
        "{err:?}"
    );
}

fn identity(acked: u64) -> StorageIdentity {
    StorageIdentity {
        system_id: "7444539137935196200".to_owned(),
        timeline: 3,
        slot: "electric_slot_default".to_owned(),
        acked: Lsn(acked),
        purge_pending: false,
    }
}

fn open_read_only(dir: &TempDir) -> SqliteMetadata {
    SqliteMetadata::open_read_only(dir.path(), &MetadataOptions::default()).expect("open ro")
}

fn user_version(path: &Path) -> i64 {
    rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open")
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .expect("user_version")
}

/// Every file in `dir` with its length and mtime, leaving out the `-shm` shared-memory index
/// (WAL readers take read marks in it: locking state, not data).
fn files(dir: &Path) -> BTreeMap<String, (u64, i128)> {
    fs::read_dir(dir)
        .expect("list")
        .map(|entry| {
            let entry = entry.expect("entry");
            let meta = entry.metadata().expect("stat");
            let mtime = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
            let name = entry.file_name().to_string_lossy().into_owned();
            (name, (meta.len(), mtime))
        })
        .filter(|(name, _)| !name.ends_with("-shm"))
        .collect()
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn the_storage_identity_round_trips_is_replaced_and_survives_reopening() {
    // Goal (CT-5): what storage follows is recorded, replaced in place, and outlives the
    // process; a first boot has none.
    let dir = TempDir::new("identity");
    let metadata = open(&dir);
    assert_eq!(metadata.load_identity().await.expect("load"), None);
    metadata
        .put_identity(identity(0x16_B374_D848))
        .await
        .expect("put");
    assert_eq!(
        metadata.load_identity().await.expect("load"),
        Some(identity(0x16_B374_D848))
    );
    let mut purging = identity(0x17_0000_0000);
    purging.purge_pending = true;
    metadata.put_identity(purging.clone()).await.expect("put");
    metadata
        .put_shape(plain_shape(), HandleStamp(9))
        .await
        .expect("put shape");
    drop(metadata);

    let reopened = open(&dir);
    assert_eq!(reopened.load_identity().await.expect("load"), Some(purging));
    assert_eq!(
        reopened.load().await.expect("load"),
        (vec![plain_shape()], HandleStamp(9)),
        "shapes and identity live side by side"
    );
    let err = reopened
        .put_identity(identity(u64::MAX))
        .await
        .expect_err("above i64::MAX");
    assert!(matches!(err, MetadataError::OutOfRange { .. }), "{err}");
}

#[tokio::test]
async fn a_v1_file_is_migrated_in_place_keeping_its_shapes_and_stamp() {
    // Goal: upgrading ampere keeps every shape (B14: upgrades must not orphan shapes).
    // Method: write shapes, turn the file back into v1 (v2 only added `storage_identity`),
    // read it read-only as an older writer would leave it, then open it for writing.
    let dir = TempDir::new("migrate");
    let metadata = open(&dir);
    metadata
        .put_shape(full_shape(), HandleStamp(42))
        .await
        .expect("put");
    metadata
        .put_shape(plain_shape(), HandleStamp(7))
        .await
        .expect("put");
    let path = metadata.path().to_path_buf();
    drop(metadata);
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.execute_batch("DROP TABLE storage_identity; PRAGMA user_version = 1;")
        .expect("downgrade to v1");
    drop(conn);
    let stored = (vec![plain_shape(), full_shape()], HandleStamp(42));

    let standby = open_read_only(&dir);
    assert_eq!(standby.load().await.expect("load v1"), stored);
    assert_eq!(standby.load_identity().await.expect("identity"), None);
    assert_eq!(user_version(&path), 1, "a standby never migrates");
    drop(standby);

    let migrated = open(&dir);
    assert_eq!(user_version(&path), 3);
    assert_eq!(migrated.load().await.expect("load"), stored);
    assert_eq!(migrated.load_identity().await.expect("identity"), None);
    migrated.put_identity(identity(5)).await.expect("put");
    drop(migrated);
    assert_eq!(
        open(&dir).load_identity().await.expect("identity"),
        Some(identity(5))
    );
}

#[tokio::test]
async fn a_read_only_handle_sees_rows_a_writer_commits_later() {
    // Goal (RO-1): a standby resolves shapes the active instance created after it opened.
    // Method: a writer and a read-only handle on one file; commit through the writer, load
    // through the standby each time.
    let dir = TempDir::new("ro-later");
    let writer = open(&dir);
    let standby = open_read_only(&dir);
    assert!(standby.is_read_only());
    assert_eq!(
        standby.load().await.expect("load"),
        (vec![], HandleStamp(0))
    );
    assert_eq!(standby.load_identity().await.expect("identity"), None);

    writer
        .put_shape(full_shape(), HandleStamp(11))
        .await
        .expect("put");
    writer.put_identity(identity(77)).await.expect("put");
    assert_eq!(
        standby.load().await.expect("load"),
        (vec![full_shape()], HandleStamp(11))
    );
    assert_eq!(
        standby.load_identity().await.expect("identity"),
        Some(identity(77))
    );
    writer
        .delete_shape(&full_shape().handle)
        .await
        .expect("delete");
    assert_eq!(standby.load().await.expect("load").0, vec![]);
}

#[tokio::test]
async fn writes_through_a_read_only_handle_are_refused_and_touch_no_file() {
    // Goal (RO-4): a standby never writes metadata: not rows, not the schema, not a checkpoint
    // when it closes. Method: leave committed frames in the WAL, snapshot the directory, write
    // through the standby, close the writer while the standby still reads, then close it.
    let dir = TempDir::new("ro-refused");
    let writer = open(&dir);
    writer
        .put_shape(plain_shape(), HandleStamp(1))
        .await
        .expect("put");
    let standby = open_read_only(&dir);
    assert_eq!(standby.load().await.expect("load").0, vec![plain_shape()]);
    let before = files(dir.path());

    let refused = |err: MetadataError| assert!(matches!(err, MetadataError::ReadOnly { .. }));
    refused(
        standby
            .put_shape(full_shape(), HandleStamp(2))
            .await
            .expect_err("put"),
    );
    refused(
        standby
            .delete_shape(&plain_shape().handle)
            .await
            .expect_err("delete"),
    );
    refused(
        standby
            .put_identity(identity(1))
            .await
            .expect_err("identity"),
    );
    assert_eq!(files(dir.path()), before);

    // The writer cannot checkpoint while the standby reads, and the standby never does.
    drop(writer);
    assert_eq!(standby.load().await.expect("load").0, vec![plain_shape()]);
    drop(standby);
    assert_eq!(files(dir.path()), before, "nothing checkpointed or removed");
    assert_eq!(
        open(&dir).load().await.expect("load").0,
        vec![plain_shape()]
    );
}

#[tokio::test]
async fn a_read_only_open_before_the_writer_created_the_file_is_not_created_yet() {
    // Goal: a standby booting first treats metadata as "no shapes" and creates nothing.
    let dir = TempDir::new("ro-missing");
    let options = MetadataOptions::default();
    let missing_dir = dir.path().join("not-there");
    for where_ in [dir.path(), missing_dir.as_path()] {
        let err = SqliteMetadata::open_read_only(where_, &options).err();
        assert!(
            matches!(err, Some(MetadataError::NotCreatedYet { .. })),
            "{err:?}"
        );
    }
    // A writer that created the file but not the schema yet.
    fs::write(dir.path().join(METADATA_FILE), b"").expect("empty file");
    let err = SqliteMetadata::open_read_only(dir.path(), &options).err();
    assert!(
        matches!(err, Some(MetadataError::NotCreatedYet { .. })),
        "{err:?}"
    );
    assert_eq!(names(dir.path()), vec![METADATA_FILE.to_owned()]);
    assert!(!missing_dir.exists());
}

#[tokio::test]
async fn a_read_only_handle_reads_a_cleanly_closed_database_without_creating_files() {
    // Goal (RO-4): SQLite would create `-wal`/`-shm` for a read-only connection to a WAL
    // database whose writer closed cleanly; the standby reads without them, and switches to an
    // ordinary connection once a writer is back. Rollback-journal files read alike.
    let tmp = TempDir::new("ro-closed");
    // A name that must be escaped in the `file:` URI the standby opens.
    let dir = tmp.path().join("meta dir?x=%41#y");
    let options = MetadataOptions::default();
    let writer = SqliteMetadata::open(&dir, &options).expect("open");
    writer
        .put_shape(plain_shape(), HandleStamp(3))
        .await
        .expect("put");
    drop(writer);
    assert_eq!(names(&dir), vec![METADATA_FILE.to_owned()]);

    let standby = SqliteMetadata::open_read_only(&dir, &options).expect("open ro");
    assert_eq!(
        standby.load().await.expect("load"),
        (vec![plain_shape()], HandleStamp(3))
    );
    assert_eq!(standby.load_identity().await.expect("identity"), None);
    assert_eq!(names(&dir), vec![METADATA_FILE.to_owned()]);

    let writer = SqliteMetadata::open(&dir, &options).expect("open");
    writer
        .put_shape(full_shape(), HandleStamp(4))
        .await
        .expect("put");
    assert_eq!(
        standby.load().await.expect("load"),
        (vec![plain_shape(), full_shape()], HandleStamp(4))
    );
    drop((writer, standby));

    let rollback = TempDir::new("ro-rollback");
    let writer = SqliteMetadata::open(rollback.path(), &exclusive()).expect("open");
    writer
        .put_shape(plain_shape(), HandleStamp(5))
        .await
        .expect("put");
    drop(writer);
    let standby = open_read_only(&rollback);
    assert_eq!(standby.load().await.expect("load").0, vec![plain_shape()]);
    assert_eq!(names(rollback.path()), vec![METADATA_FILE.to_owned()]);
}

#[tokio::test]
async fn a_standby_reports_transient_while_an_exclusive_writer_holds_the_file() {
    // Goal (MD-4): busy is retried briefly, then reported as transient, never as a hard error.
    let dir = TempDir::new("ro-busy");
    let writer = SqliteMetadata::open(dir.path(), &exclusive()).expect("open");
    writer
        .put_shape(plain_shape(), HandleStamp(1))
        .await
        .expect("put");
    let options = MetadataOptions {
        busy_timeout: Duration::from_millis(10),
        ..MetadataOptions::default()
    };
    let err = SqliteMetadata::open_read_only(dir.path(), &options).err();
    assert!(
        matches!(err, Some(MetadataError::Transient { .. })),
        "{err:?}"
    );
    drop(writer);
    let standby = SqliteMetadata::open_read_only(dir.path(), &options).expect("open");
    assert_eq!(standby.load().await.expect("load").0, vec![plain_shape()]);
}

#[tokio::test]
async fn a_promoted_read_only_handle_writes_through_every_clone() {
    // Goal: the standby that takes the lock keeps its handle (the driver holds clones) and
    // writes from then on.
    let dir = TempDir::new("ro-promote");
    let writer = open(&dir);
    writer
        .put_shape(plain_shape(), HandleStamp(1))
        .await
        .expect("put");
    let standby = open_read_only(&dir);
    let clone = standby.clone();
    drop(writer); // The old lock holder exits.

    standby
        .promote(&MetadataOptions::default())
        .await
        .expect("promote");
    assert!(!clone.is_read_only());
    clone.put_identity(identity(9)).await.expect("put");
    clone
        .put_shape(full_shape(), HandleStamp(2))
        .await
        .expect("put");
    assert_eq!(
        standby.load().await.expect("load").0,
        vec![plain_shape(), full_shape()]
    );
    assert_eq!(
        open(&dir).load_identity().await.expect("identity"),
        Some(identity(9))
    );
}

#[test]
fn a_shape_description_written_before_server_versions_were_recorded_reads_as_postgres_15() {
    // Goal: shape.json files and metadata rows from before ampere stored the server version
    // stay readable, and their where clauses keep the semantics they were compiled with.
    let shape = full_shape();
    let text = encode_stored_shape(&shape);
    assert!(text.contains(r#""server_version":170002"#), "{text}");
    assert_eq!(decode_stored_shape(&text).expect("decode"), shape);
    let old = text.replace(r#","server_version":170002"#, "");
    assert_ne!(old, text);
    let read = decode_stored_shape(&old).expect("an old description decodes");
    assert_eq!(read.schema.server_version, ServerVersion::PG_15);
    assert_eq!(read.schema.columns, shape.schema.columns);
}
