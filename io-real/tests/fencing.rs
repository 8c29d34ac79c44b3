//! The storage lease fences a deposed writer (deploy-semantics LK-6, §2 item 13): an instance
//! that lost the lock but has not noticed yet keeps flushing, persisting its acked position or
//! writing shape rows into the shared storage directory while the next lock holder writes
//! there too. Once the new holder's store (or metadata) is promoted, every write of the old
//! one fails with `is_fenced()` and changes nothing on disk; its readers follow the new
//! writer. The two "instances" are two stores (and metadata handles) in this test process, each
//! with its own lease handle (`StorageLease::new`, a distinct owner id), sharing nothing but
//! the files. Every test works in its own directory under /tmp.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ampere_core::ports::{
    LogEntry, MetadataStore, ShapeLogStore, SnapshotWriter, StorageIdentity, StoredShape,
};
use ampere_core::shape::{HandleStamp, ShapeHandle};
use ampere_core::Lsn;
use ampere_io_real::lease::{self, Generation, StorageLease, LEASE_FILE};
use ampere_io_real::metadata::MetadataOptions;
use ampere_io_real::standby_metadata::StandbyMetadata;
use ampere_io_real::store::{layout, FileStore, StoreError};

mod common;
use common::{entry, expected, handle, read, TempDir, SNAPSHOT_END};

/// One instance's view of the shared directory: a store and metadata under one lease handle,
/// both still followers.
struct Instance {
    lease: Arc<StorageLease>,
    store: FileStore,
    meta: StandbyMetadata,
}

impl Instance {
    fn open(root: &Path) -> Self {
        let lease = StorageLease::new(root);
        let store = FileStore::open_follower_with_lease(root, Arc::clone(&lease)).expect("store");
        let meta = StandbyMetadata::open_with_shape_dir(root, MetadataOptions::default(), root)
            .expect("metadata")
            .with_lease(Arc::clone(&lease));
        Self { lease, store, meta }
    }

    /// What the driver does with the lock: the store first, then the metadata.
    async fn promote(&self) {
        self.store.promote().await.expect("promote store");
        self.meta.promote().await.expect("promote metadata");
    }
}

async fn create_with_snapshot(store: &FileStore, h: &ShapeHandle) {
    store.create_shape(h).await.expect("create");
    let mut snapshot = store.snapshot_writer(h);
    snapshot
        .write_chunk(0, SNAPSHOT_END.to_owned())
        .await
        .expect("chunk 0");
    snapshot.finish().await.expect("finish");
}

async fn append_and_flush(store: &FileStore, h: &ShapeHandle, entries: Vec<LogEntry>) {
    store.append(h, entries).expect("append");
    store.flush().await.expect("flush");
}

fn assert_fenced(err: &StoreError) {
    assert!(err.is_fenced(), "expected fenced, got {err}");
}

/// Every path under `root` (the lease file aside) with its length and contents.
fn tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in fs::read_dir(dir).expect("list") {
            let path = entry.expect("entry").path();
            let rel = path.strip_prefix(root).expect("under root").to_path_buf();
            if path.is_dir() {
                out.insert(rel, Vec::new());
                walk(root, &path, out);
            } else if rel != Path::new(LEASE_FILE) {
                out.insert(rel, fs::read(&path).expect("read"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn lease_text(root: &Path) -> String {
    fs::read_to_string(root.join(LEASE_FILE)).expect("lease file")
}

fn stored_shape(h: &ShapeHandle) -> StoredShape {
    common::stored_shape(h.clone(), "items")
}

fn identity(acked: u64) -> StorageIdentity {
    StorageIdentity {
        system_id: "7000000000000000001".to_owned(),
        timeline: 1,
        slot: "electric_slot_default".to_owned(),
        acked: Lsn(acked),
        purge_pending: false,
    }
}

#[tokio::test]
async fn a_promoted_store_fences_the_previous_writer() {
    // Goal: once B is promoted, nothing A still does reaches the disk, and A's readers see
    // B's data. Method: A writes, leaves an append buffered and a snapshot half-written; B
    // promotes, recovers and writes; every A write must fail fenced and leave the tree as B
    // left it.
    let dir = TempDir::new("fence-store");
    let root = dir.path();
    let (h, removed, snapshotting, new) = (handle(1), handle(2), handle(3), handle(4));
    let a = Instance::open(root);
    a.promote().await;
    create_with_snapshot(&a.store, &h).await;
    create_with_snapshot(&a.store, &removed).await;
    a.store
        .create_shape(&snapshotting)
        .await
        .expect("create snapshotting");
    let mut a_snapshot = a.store.snapshot_writer(&snapshotting);
    append_and_flush(&a.store, &h, vec![entry("100_0", false)]).await;
    let a_reader = a.store.clone();
    // In flight when the lock moves: buffered, not flushed yet.
    a.store
        .append(&h, vec![entry("200_0", false)])
        .expect("append");

    let b = Instance::open(root);
    b.promote().await;
    assert!(
        b.lease.generation() > a.lease.generation(),
        "B acquired a later generation"
    );
    b.store.recover(&h).await.expect("recover");
    append_and_flush(&b.store, &h, vec![entry("300_0", false)]).await;
    let before = tree(root);
    let waiter = a.store.changed(&h);

    let err = a.store.flush().await.expect_err("A's flush is fenced");
    assert_fenced(&err);
    assert!(a.store.is_follower(), "a fenced store follows again");
    tokio::time::timeout(Duration::from_secs(1), waiter)
        .await
        .expect("fencing woke A's waiters");
    assert_fenced(&a.store.create_shape(&new).await.expect_err("create"));
    assert_fenced(&a.store.remove_shape(&removed).await.expect_err("remove"));
    assert_fenced(
        &a.store
            .append(&h, vec![entry("400_0", false)])
            .expect_err("append"),
    );
    assert_fenced(
        &a_snapshot
            .write_chunk(0, SNAPSHOT_END.to_owned())
            .await
            .expect_err("snapshot chunk"),
    );
    assert_fenced(&a_snapshot.finish().await.expect_err("finish"));
    assert_fenced(&a.store.recover(&h).await.expect_err("recover"));
    assert_eq!(tree(root), before, "A changed nothing on disk");

    append_and_flush(&b.store, &h, vec![entry("500_0", true)]).await;
    assert_eq!(
        read(&a_reader, &h, "100_0"),
        expected(&["300_0", "500_0"], "500_0"),
        "A's readers follow B (A's buffered 200_0 never landed)"
    );
    b.store.recover(&removed).await.expect("recover removed");
    b.store.remove_shape(&removed).await.expect("B removes");
    create_with_snapshot(&b.store, &new).await;
    assert_eq!(read(&a_reader, &new, "-1").1, 1, "A reads B's new shape");
}

#[tokio::test]
async fn metadata_writes_of_a_deposed_writer_are_fenced() {
    // Goal: the simulation's bug: a deposed writer's status timer overwrote the new writer's
    // acked position. Method: A records a shape and an identity; B promotes and records its
    // own; A's put_identity, put_shape and delete_shape fail fenced and B's rows are intact.
    let dir = TempDir::new("fence-meta");
    let root = dir.path();
    let (h, other) = (handle(1), handle(2));
    let a = Instance::open(root);
    a.promote().await;
    a.store.create_shape(&h).await.expect("create");
    a.store.create_shape(&other).await.expect("create other");
    a.meta
        .put_shape(stored_shape(&h), HandleStamp(1))
        .await
        .expect("put");
    a.meta.put_identity(identity(100)).await.expect("identity");

    let b = Instance::open(root);
    b.promote().await;
    b.meta
        .put_identity(identity(200))
        .await
        .expect("B's identity");
    let rows = b.meta.load().await.expect("load");
    assert_eq!(rows.0.len(), 1, "A's row for {h}");
    let description = root
        .join(layout::SHAPES_DIR)
        .join(other.as_str())
        .join(layout::SHAPE_DESCRIPTION_FILE);

    let err = a
        .meta
        .put_identity(identity(150))
        .await
        .expect_err("stale acked position");
    assert!(err.is_fenced(), "{err}");
    let err = a
        .meta
        .put_shape(stored_shape(&other), HandleStamp(2))
        .await
        .expect_err("put_shape");
    assert!(err.is_fenced(), "{err}");
    let err = a.meta.delete_shape(&h).await.expect_err("delete_shape");
    assert!(err.is_fenced(), "{err}");
    assert!(!err.is_corruption());

    let acked = |meta: &StandbyMetadata| {
        let meta = meta.clone();
        async move {
            meta.load_identity()
                .await
                .expect("load")
                .expect("some")
                .acked
        }
    };
    assert_eq!(acked(&b.meta).await, Lsn(200), "B's position stands");
    assert_eq!(acked(&a.meta).await, Lsn(200), "A still reads");
    assert_eq!(
        b.meta.load().await.expect("load"),
        rows,
        "no row added, none deleted"
    );
    assert!(!description.exists(), "no shape.json written");
}

#[tokio::test]
async fn a_writer_that_re_promotes_after_being_fenced_writes_again_and_fences_the_other() {
    // Goal: fencing is not permanent: the next lock holder is whoever promotes last.
    let dir = TempDir::new("fence-again");
    let root = dir.path();
    let h = handle(1);
    let a = Instance::open(root);
    a.promote().await;
    create_with_snapshot(&a.store, &h).await;
    append_and_flush(&a.store, &h, vec![entry("100_0", false)]).await;
    let b = Instance::open(root);
    b.promote().await;
    b.store.recover(&h).await.expect("B recovers");
    append_and_flush(&b.store, &h, vec![entry("200_0", false)]).await;
    a.store
        .append(&h, vec![entry("150_0", false)])
        .expect("append");
    assert_fenced(&a.store.flush().await.expect_err("fenced"));
    let err = a.meta.put_identity(identity(1)).await.expect_err("fenced");
    assert!(err.is_fenced(), "{err}");

    // B loses the lock; A takes it again.
    a.promote().await;
    assert!(!a.store.is_follower());
    let recovered = a.store.recover(&h).await.expect("A recovers B's log");
    assert_eq!(recovered.latest.to_string(), "200_0");
    append_and_flush(&a.store, &h, vec![entry("300_0", false)]).await;
    a.meta.put_identity(identity(300)).await.expect("identity");

    b.store
        .append(&h, vec![entry("400_0", false)])
        .expect("append");
    assert_fenced(&b.store.flush().await.expect_err("B is fenced now"));
    let err = b.meta.put_identity(identity(400)).await.expect_err("B");
    assert!(err.is_fenced(), "{err}");
    assert_eq!(
        read(&b.store, &h, "100_0"),
        expected(&["200_0", "300_0"], "300_0")
    );
    assert_eq!(
        b.meta
            .load_identity()
            .await
            .expect("load")
            .expect("some")
            .acked,
        Lsn(300)
    );
}

#[tokio::test]
async fn a_single_instance_promoting_repeatedly_across_restarts_keeps_working() {
    // Goal: the lease never fences its own holder: promotions within one process and across
    // restarts each take the next generation, persisted in the lease file, and writes go on.
    // The default wiring (no explicit lease, as the server opens them) shares one generation
    // between the store and the metadata: the metadata adopts what the store acquired.
    let dir = TempDir::new("fence-restarts");
    let root = dir.path();
    let h = handle(1);
    let mut expected_generation = 0;
    for restart in 0..3u64 {
        let store = FileStore::open_follower(root).expect("store");
        let meta = StandbyMetadata::open_with_shape_dir(root, MetadataOptions::default(), root)
            .expect("metadata");
        for _ in 0..2 {
            store.promote().await.expect("promote store");
            meta.promote().await.expect("promote metadata");
            expected_generation += 1;
            let lease = store.lease().expect("resolved at promotion");
            assert!(
                Arc::ptr_eq(&lease, &meta.lease().expect("metadata lease")),
                "one handle per process and root"
            );
            assert_eq!(lease.generation(), Some(Generation(expected_generation)));
            assert_eq!(
                lease_text(root),
                format!("ampere-lease v1 {expected_generation} {}\n", lease.owner()),
                "persisted"
            );
            lease::check(root, Generation(expected_generation), lease.owner()).expect("still ours");
        }
        if restart == 0 {
            create_with_snapshot(&store, &h).await;
        } else {
            store.recover(&h).await.expect("recover");
        }
        let offset = format!("{}_0", (restart + 1) * 100);
        append_and_flush(&store, &h, vec![entry(&offset, false)]).await;
        meta.put_shape(stored_shape(&h), HandleStamp(restart + 1))
            .await
            .expect("put_shape");
        meta.put_identity(identity((restart + 1) * 100))
            .await
            .expect("put_identity");
    }
    let store = FileStore::open(root).expect("reopen as writer");
    assert_eq!(
        store.recover(&h).await.expect("recover").latest.to_string(),
        "300_0"
    );
    assert!(lease_text(root).starts_with(&format!("ampere-lease v1 {}", expected_generation + 1)));
}

// Found by sim: seed 0x2a
#[tokio::test]
async fn a_writer_that_gave_up_the_lock_reads_what_the_next_writer_makes_durable() {
    // Goal: an instance that gave up the lock without being fenced serves the shapes the next
    // lock holder creates and appends to (RO-1), instead of 409 for shapes it never wrote.
    let dir = TempDir::new("demote-store");
    let root = dir.path();
    let (h, new) = (handle(1), handle(2));
    let a = Instance::open(root);
    a.promote().await;
    create_with_snapshot(&a.store, &h).await;
    append_and_flush(&a.store, &h, vec![entry("100_0", false)]).await;
    a.store.demote();
    assert!(a.store.is_follower(), "a demoted store follows");

    let b = Instance::open(root);
    b.promote().await;
    b.store.recover(&h).await.expect("recover");
    append_and_flush(&b.store, &h, vec![entry("200_0", true)]).await;
    create_with_snapshot(&b.store, &new).await;
    assert_eq!(read(&a.store, &new, "-1").1, 1, "A reads B's new shape");
    assert_eq!(
        read(&a.store, &h, "100_0"),
        expected(&["200_0"], "200_0"),
        "A reads B's appends to a shape A wrote"
    );
}
