//! Shape metadata is an index rebuilt from the shape directories by the lock holder
//! (deploy-semantics MD-3): every `put_shape` leaves a `shape.json` in the shape's directory;
//! when the metadata file is missing or corrupt, `promote` moves a corrupt file aside (never
//! deletes it), recreates the database and restores every row from those copies, with the
//! handle-stamp high-water mark above every shape directory's stamp. Shape data is never
//! removed or truncated. Each test works in its own directory under /tmp.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use ampere_core::ports::{MetadataStore, ShapeLogStore, SnapshotWriter as _, StoredShape};
use ampere_core::shape::{HandleStamp, LogMode, Replica, ShapeHandle};
use ampere_core::snapshot::{FullXid, PgSnapshot};
use ampere_io_real::metadata::{
    decode_stored_shape, encode_stored_shape, MetadataOptions, METADATA_FILE,
};
use ampere_io_real::standby_metadata::StandbyMetadata;
use ampere_io_real::store::FileStore;

mod common;
use common::TempDir;

const MAX_STAMP: u64 = 1_721_812_114_261_123;

fn shape(handle: &str, table: &str, snapshot: bool) -> StoredShape {
    let mut shape = common::stored_shape(ShapeHandle::from_string(handle.to_owned()), table);
    shape.definition.columns = Some(vec!["id".to_owned()]);
    shape.definition.replica = Replica::Full;
    shape.schema.columns[0].modifiers = vec![("k".to_owned(), "v".to_owned())];
    shape.snapshot = snapshot.then(|| PgSnapshot {
        xmin: FullXid(10),
        xmax: FullXid(20),
        xip: vec![FullXid(11)],
    });
    shape.snapshot_filter_done = snapshot;
    shape
}

/// Two shapes, the second `log=changes_only` (its log mode must survive every copy).
fn shapes() -> Vec<StoredShape> {
    let mut changes_only = shape(&format!("3833821-{MAX_STAMP}"), "b", true);
    changes_only.definition.log = LogMode::ChangesOnly;
    vec![shape("1-5", "a", false), changes_only]
}

fn stamp_of(shape: &StoredShape) -> HandleStamp {
    let (_, stamp) = shape.handle.as_str().rsplit_once('-').expect("minted");
    HandleStamp(stamp.parse().expect("stamp"))
}

fn open_meta(dir: &Path) -> StandbyMetadata {
    StandbyMetadata::open_with_shape_dir(dir, MetadataOptions::default(), dir).expect("open")
}

/// A lock holder that created `shapes()` (snapshot recorded later, as the driver does) with
/// some shape data, then shut down.
async fn populated(dir: &Path) -> Vec<StoredShape> {
    let store = FileStore::open(dir).expect("store");
    let meta = open_meta(dir);
    meta.promote().await.expect("promote");
    for stored in shapes() {
        store.create_shape(&stored.handle).await.expect("create");
        let mut first = stored.clone();
        first.snapshot = None;
        first.snapshot_filter_done = false;
        meta.put_shape(first, stamp_of(&stored)).await.expect("put");
        let mut writer = store.snapshot_writer(&stored.handle);
        writer
            .write_chunk(0, r#"{"key":"1"}"#.to_owned())
            .await
            .expect("chunk");
        writer.finish().await.expect("finish");
        meta.put_shape(stored.clone(), HandleStamp::default())
            .await
            .expect("put recorded");
    }
    shapes()
}

/// Every file under `shapes/` except the descriptions, with its contents.
fn shape_data(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(path: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in fs::read_dir(path).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.file_name().and_then(|n| n.to_str()) != Some("shape.json") {
                out.insert(path.clone(), fs::read(&path).expect("read"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&dir.join("shapes"), &mut out);
    out
}

fn remove_metadata_files(dir: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = fs::remove_file(dir.join(format!("{METADATA_FILE}{suffix}")));
    }
}

#[test]
fn a_shape_description_round_trips_through_its_json_encoding() {
    for stored in shapes() {
        let text = encode_stored_shape(&stored);
        assert_eq!(decode_stored_shape(&text).expect("decode"), stored);
        let is_changes_only = stored.definition.log == LogMode::ChangesOnly;
        assert_eq!(
            text.contains(r#""log":"changes_only""#),
            is_changes_only,
            "{text}"
        );
    }
}

#[tokio::test]
async fn every_put_shape_leaves_the_latest_row_in_the_shape_directory_md3() {
    let dir = TempDir::new("rebuild-desc");
    for stored in populated(dir.path()).await {
        let path = dir
            .path()
            .join("shapes")
            .join(stored.handle.as_str())
            .join("shape.json");
        let text = fs::read_to_string(path).expect("shape.json");
        assert_eq!(decode_stored_shape(&text).expect("decode"), stored);
    }
}

#[tokio::test]
async fn a_deleted_metadata_file_is_rebuilt_from_the_shape_directories_md3() {
    let dir = TempDir::new("rebuild-deleted");
    let originals = populated(dir.path()).await;
    let data = shape_data(dir.path());
    remove_metadata_files(dir.path());

    let meta = open_meta(dir.path());
    meta.promote().await.expect("promote rebuilds");
    let (rows, stamp) = meta.load().await.expect("load");

    assert_eq!(rows, originals);
    assert!(stamp >= HandleStamp(MAX_STAMP), "stamp {stamp:?}");
    assert_eq!(shape_data(dir.path()), data, "shape data untouched");
}

#[tokio::test]
async fn a_garbage_metadata_file_is_moved_aside_not_deleted_and_rows_are_rebuilt_md3() {
    let dir = TempDir::new("rebuild-garbage");
    let originals = populated(dir.path()).await;
    let data = shape_data(dir.path());
    remove_metadata_files(dir.path());
    let garbage = vec![0x5a_u8; 8192];
    fs::write(dir.path().join(METADATA_FILE), &garbage).expect("garbage");

    // A standby opening it must not fail to start; the lock holder repairs it.
    let meta = open_meta(dir.path());
    meta.promote().await.expect("promote rebuilds");
    let (rows, stamp) = meta.load().await.expect("load");

    assert_eq!(rows, originals);
    assert!(stamp >= HandleStamp(MAX_STAMP), "stamp {stamp:?}");
    let aside: Vec<PathBuf> = fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{METADATA_FILE}.corrupt-")))
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(fs::read(&aside[0]).expect("aside"), garbage);
    assert_eq!(shape_data(dir.path()), data, "shape data untouched");
}

#[tokio::test]
async fn a_shape_directory_without_a_description_is_left_untouched_but_its_stamp_is_never_reissued_md3(
) {
    let dir = TempDir::new("rebuild-nodesc");
    let originals = populated(dir.path()).await;
    let bare = dir.path().join("shapes").join("77-9999999999999999");
    fs::create_dir_all(&bare).expect("bare dir");
    fs::write(bare.join("log.json"), b"{\"x\":1},").expect("data");
    let data = shape_data(dir.path());
    remove_metadata_files(dir.path());

    let meta = open_meta(dir.path());
    meta.promote().await.expect("promote");
    let (rows, stamp) = meta.load().await.expect("load");

    assert_eq!(rows, originals, "no row invented for the bare directory");
    assert!(
        stamp >= HandleStamp(9_999_999_999_999_999),
        "stamp {stamp:?}"
    );
    assert!(bare.is_dir());
    assert_eq!(shape_data(dir.path()), data, "shape data untouched");
}

#[tokio::test]
async fn rows_that_exist_are_kept_as_they_are_when_promoting_md3() {
    let dir = TempDir::new("rebuild-keep");
    let originals = populated(dir.path()).await;
    // An intact database: promote changes nothing.
    let meta = open_meta(dir.path());
    meta.promote().await.expect("promote");
    let (rows, stamp) = meta.load().await.expect("load");
    assert_eq!(rows, originals);
    assert_eq!(stamp, HandleStamp(MAX_STAMP));
}
