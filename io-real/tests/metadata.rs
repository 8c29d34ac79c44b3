//! `SqliteMetadata` on a real file: every field of a stored shape round-trips, the handle-stamp
//! high-water mark only rises, rows survive reopening, and exclusive mode owns the file. Each
//! test works in its own directory under /tmp, removed at the end.

use std::time::Duration;

use ampere_core::pgoutput::Oid;
use ampere_core::ports::{MetadataStore, StoredShape};
use ampere_core::shape::{
    ColumnSchema, HandleStamp, RelationName, Replica, ShapeDefinition, ShapeHandle, TableSchema,
};
use ampere_core::snapshot::{FullXid, PgSnapshot};
use ampere_io_real::metadata::{
    MetadataError, MetadataMode, MetadataOptions, SqliteMetadata, METADATA_FILE,
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
        },
        schema: TableSchema {
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
        },
        schema: TableSchema {
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
