//! A standby beside an exclusive-mode writer (`ELECTRIC_SHAPE_DB_EXCLUSIVE_MODE=true`, MD-2,
//! MD-4, LC-1): the lock holder's connection keeps `shapes.sqlite3` locked, so a second
//! instance on the same storage cannot read it. It must still start (as a read-only standby),
//! never take a SQLite lock that could hold up the writer, serve the shapes the shape
//! directories describe (MD-3), and open the file exclusively once promoted, waiting briefly
//! for a predecessor still closing it. The two "instances" are two stores and metadata handles
//! in this test process, each with its own lease handle, sharing only the files (as in
//! `fencing.rs`). Every test works in its own directory under /tmp.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ampere_core::ports::StoredShape;
use ampere_core::ports::{MetadataStore, ShapeLogStore, SnapshotWriter as _, StorageIdentity};
use ampere_core::shape::{HandleStamp, ShapeHandle};
use ampere_core::snapshot::{FullXid, PgSnapshot};
use ampere_core::Lsn;
use ampere_io_real::lease::StorageLease;
use ampere_io_real::metadata::{MetadataError, MetadataMode, MetadataOptions, SqliteMetadata};
use ampere_io_real::standby_metadata::StandbyMetadata;
use ampere_io_real::store::FileStore;

mod common;
use common::{TempDir, SNAPSHOT_END};

fn exclusive() -> MetadataOptions {
    MetadataOptions {
        mode: MetadataMode::Exclusive,
        busy_timeout: Duration::from_millis(50),
        ..MetadataOptions::default()
    }
}

fn shape(stamp: u64, table: &str) -> StoredShape {
    let handle = ShapeHandle::from_string(format!("3833821-{stamp}"));
    StoredShape {
        snapshot: Some(PgSnapshot {
            xmin: FullXid(10),
            xmax: FullXid(20),
            xip: vec![],
        }),
        snapshot_filter_done: true,
        ..common::stored_shape(handle, table)
    }
}

fn identity(acked: u64) -> StorageIdentity {
    StorageIdentity {
        system_id: "7390000000000000001".to_owned(),
        timeline: 1,
        slot: "electric_slot_default".to_owned(),
        acked: Lsn(acked),
        purge_pending: false,
    }
}

/// One instance's view of the shared directory, as `server::main` opens it in exclusive mode.
struct Instance {
    store: FileStore,
    meta: StandbyMetadata,
}

impl Instance {
    fn open(root: &Path) -> Self {
        let lease = StorageLease::new(root);
        let store = FileStore::open_follower_with_lease(root, Arc::clone(&lease)).expect("store");
        let meta = StandbyMetadata::open_with_shape_dir(root, exclusive(), root)
            .expect("a standby starts beside an exclusive writer")
            .with_lease(lease);
        Self { store, meta }
    }

    /// What the driver does with the lock: the store first, then the metadata.
    async fn promote(&self) {
        self.store.promote().await.expect("promote store");
        self.meta.promote().await.expect("promote metadata");
    }

    /// What the driver does for a new shape: directory, row, snapshot, row with the snapshot.
    async fn create(&self, stored: &StoredShape) {
        self.store
            .create_shape(&stored.handle)
            .await
            .expect("create");
        let mut pending = stored.clone();
        pending.snapshot = None;
        pending.snapshot_filter_done = false;
        let (_, stamp) = stored.handle.as_str().rsplit_once('-').expect("minted");
        let stamp = HandleStamp(stamp.parse().expect("stamp"));
        self.meta.put_shape(pending, stamp).await.expect("put");
        let mut writer = self.store.snapshot_writer(&stored.handle);
        writer
            .write_chunk(0, SNAPSHOT_END.to_owned())
            .await
            .expect("chunk");
        writer.finish().await.expect("finish");
        self.meta
            .put_shapes(vec![stored.clone()])
            .await
            .expect("put with snapshot");
    }
}

/// The file is really held: a plain read-only open cannot read it.
fn assert_held_exclusively(root: &Path) {
    let err = SqliteMetadata::open_read_only(root, &exclusive()).err();
    assert!(
        matches!(err, Some(MetadataError::Transient { .. })),
        "the writer holds the file exclusively: {err:?}"
    );
}

#[tokio::test]
async fn a_standby_starts_beside_an_exclusive_writer_serves_described_shapes_then_takes_over() {
    // Goal (LC-1, MD-4): a second instance on the storage an exclusive-mode writer holds starts
    // as a standby instead of exiting with "database is locked", serves the writer's shapes
    // from their directories (MD-3) without holding up the writer, and becomes the writer once
    // the first one closes.
    // Method: promote A and create two shapes; open B; B's loads follow A's later writes; A
    // keeps writing; close A; promote B; B reads A's rows and identity, and writes.
    let dir = TempDir::new("excl-standby");
    let root = dir.path();
    let a = Instance::open(root);
    a.promote().await;
    a.create(&shape(5, "items")).await;
    a.create(&shape(7, "other")).await;
    a.meta.put_identity(identity(100)).await.expect("identity");
    assert_held_exclusively(root);

    let b = Instance::open(root);
    assert!(!b.meta.is_promoted());
    let (shapes, stamp) = b.meta.load().await.expect("standby load");
    assert_eq!(shapes, vec![shape(5, "items"), shape(7, "other")]);
    assert_eq!(stamp, HandleStamp(7));
    assert_eq!(b.meta.load_identity().await.expect("identity"), None);
    let refused = b.meta.put_identity(identity(1)).await.err();
    assert!(
        matches!(refused, Some(MetadataError::ReadOnly { .. })),
        "{refused:?}"
    );

    // The writer is not held up by the standby (its busy_timeout is 50 ms).
    a.create(&shape(9, "third")).await;
    a.meta.put_identity(identity(200)).await.expect("identity");
    a.store
        .remove_shape(&shape(5, "items").handle)
        .await
        .expect("remove dir");
    a.meta
        .delete_shape(&shape(5, "items").handle)
        .await
        .expect("delete row");
    let (shapes, _) = b.meta.load().await.expect("standby load");
    assert_eq!(shapes, vec![shape(7, "other"), shape(9, "third")]);
    assert_held_exclusively(root);

    drop(a); // The old lock holder exits.
    b.promote().await;
    assert!(b.meta.is_promoted());
    let (shapes, stamp) = b.meta.load().await.expect("load");
    assert_eq!(shapes, vec![shape(7, "other"), shape(9, "third")]);
    assert_eq!(stamp, HandleStamp(9));
    assert_eq!(
        b.meta.load_identity().await.expect("identity"),
        Some(identity(200))
    );
    b.create(&shape(11, "fourth")).await;
    assert_held_exclusively(root);
}

#[tokio::test]
async fn promotion_waits_for_the_previous_exclusive_holder_to_close_the_file() {
    // Goal: the lock can pass before the old holder's process has closed the file (it frees
    // the lock first, then exits); the new holder's promotion waits for it instead of failing.
    // Method: A holds the file; B is promoted while A closes 100 ms later, on another thread.
    let dir = TempDir::new("excl-handover");
    let root = dir.path();
    let a = Instance::open(root);
    a.promote().await;
    a.create(&shape(5, "items")).await;
    let b = Instance::open(root);
    let closing = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        drop(a);
    });
    b.promote().await;
    closing.join().expect("closing thread");
    assert_eq!(
        b.meta.load().await.expect("load").0,
        vec![shape(5, "items")]
    );
}

#[tokio::test]
async fn without_a_shape_root_a_standby_starts_and_reads_the_file_once_it_is_free() {
    // Goal (MD-4): the busy file at startup is transient, not fatal, also without shape
    // directories to serve from; reads report it as transient, backing off between attempts
    // to open it, and promotion opens it as soon as it is free.
    // Method: open a standby beside an exclusive writer; two loads fail as transient, the
    // second without an attempt; close the writer; promote; read and write.
    let dir = TempDir::new("excl-plain");
    let root = dir.path();
    let writer = SqliteMetadata::open(root, &exclusive()).expect("writer");
    writer
        .put_shape(shape(5, "items"), HandleStamp(5))
        .await
        .expect("put");
    let standby = StandbyMetadata::open(root, exclusive()).expect("standby starts");
    let first = standby.load().await.err();
    assert!(
        matches!(first, Some(MetadataError::Transient { .. })),
        "{first:?}"
    );
    let backing_off = standby.load().await.err();
    assert!(
        matches!(
            backing_off,
            Some(MetadataError::Transient { attempts: 0, .. })
        ),
        "{backing_off:?}"
    );

    drop(writer);
    standby.promote().await.expect("promote");
    assert_eq!(
        standby.load().await.expect("load"),
        (vec![shape(5, "items")], HandleStamp(5))
    );
    standby
        .put_shape(shape(7, "other"), HandleStamp(7))
        .await
        .expect("put");
}
