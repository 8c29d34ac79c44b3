//! `FileStore` in follower mode (deploy-semantics RO-1, RO-3, RO-4): a standby reading what a
//! writer made durable in the same directory. The "other process" is a second `FileStore`
//! opened as the writer on the same root in this test process; the follower shares nothing
//! with it but the files. Every test works in its own directory under /tmp.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ampere_core::ports::{LogEntry, ReadOutcome, ShapeLogStore, SnapshotWriter};
use ampere_core::shape::ShapeHandle;

use ampere_io_real::store::{layout, FileStore, StoreError, FOLLOW_POLL_INTERVAL};

mod common;
use common::{
    chunk, entry, entry_json, expected, handle, mid_transaction_entry, off, read, TempDir,
    SNAPSHOT_END,
};

/// Creates a shape with a complete one-chunk snapshot through the writer.
async fn create_with_snapshot(writer: &FileStore, h: &ShapeHandle) {
    writer.create_shape(h).await.expect("create");
    let mut snapshot = writer.snapshot_writer(h);
    snapshot
        .write_chunk(0, SNAPSHOT_END.to_owned())
        .await
        .expect("chunk 0");
    snapshot.finish().await.expect("finish");
}

async fn append_and_flush(writer: &FileStore, h: &ShapeHandle, entries: Vec<LogEntry>) {
    writer.append(h, entries).expect("append");
    writer.flush().await.expect("flush");
}

fn shape_file(root: &Path, h: &ShapeHandle, name: &str) -> PathBuf {
    root.join(layout::SHAPES_DIR).join(h.as_str()).join(name)
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    let mut file = OpenOptions::new().append(true).open(path).expect("open");
    file.write_all(bytes).expect("append");
}

/// Every path under `root` with its kind, length and mtime (nanoseconds).
fn tree(root: &Path) -> BTreeMap<PathBuf, (bool, u64, i128)> {
    fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, (bool, u64, i128)>) {
        for entry in fs::read_dir(dir).expect("list") {
            let path = entry.expect("entry").path();
            let meta = fs::symlink_metadata(&path).expect("stat");
            let mtime = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
            out.insert(path.clone(), (meta.is_dir(), meta.len(), mtime));
            if meta.is_dir() {
                walk(&path, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, &mut out);
    out
}

fn is_read_only(err: &StoreError) -> bool {
    matches!(err, StoreError::ReadOnly { .. })
}

#[tokio::test]
async fn a_follower_sees_what_the_writer_flushed_and_never_what_it_did_not() {
    // Goal (RO-1): a standby serves exactly the durable log, re-reading it on every request.
    // Method: a writer flushes, appends without flushing, flushes again; the follower reads
    // after each step.
    let dir = TempDir::new("follow-flushed");
    let h = handle(1);
    let writer = FileStore::open(dir.path()).expect("open writer");
    create_with_snapshot(&writer, &h).await;
    append_and_flush(
        &writer,
        &h,
        vec![entry("100_0", false), entry("100_2", true)],
    )
    .await;

    let follower = FileStore::open_follower(dir.path()).expect("open follower");
    assert!(follower.is_follower());
    assert_eq!(
        read(&follower, &h, "-1"),
        (SNAPSHOT_END.into(), 1, "0_0".into())
    );
    let first = expected(&["100_0", "100_2"], "100_2");
    assert_eq!(read(&follower, &h, "0_inf"), first);

    writer
        .append(&h, vec![entry("200_0", false)])
        .expect("append");
    assert_eq!(read(&follower, &h, "100_2"), expected(&[], "100_2"));
    let status = follower.status(&h).expect("status");
    assert_eq!(status.latest, off("100_2"));
    assert!(status.snapshot_complete);

    writer.flush().await.expect("flush");
    assert_eq!(read(&follower, &h, "100_2"), expected(&["200_0"], "200_0"));
    assert_eq!(follower.status(&h).expect("status").latest, off("200_0"));
    assert_eq!(
        read(&follower, &h, "0_inf"),
        first,
        "chunks as the writer cut them"
    );
}

// Found by sim: seed 0x9f
#[tokio::test]
async fn a_follower_serves_no_part_of_a_transaction_until_its_last_entry_is_durable() {
    // Goal (RO-1): a crash mid-flush can leave the first entries of a transaction durable; a
    // follower serves none of them (nor reports them as latest) until the next writer's
    // replay made the transaction's last entry durable too.
    // Method: a writer flushes 100_0 (whole), then 200_0 alone, as a torn flush leaves it,
    // and crashes; followers opened before and after read; a new writer recovers and
    // replays 200_2.
    let dir = TempDir::new("follow-torn-transaction");
    let h = handle(1);
    let writer = FileStore::open(dir.path()).expect("open writer");
    create_with_snapshot(&writer, &h).await;
    append_and_flush(&writer, &h, vec![entry("100_0", false)]).await;
    let early = FileStore::open_follower(dir.path()).expect("open follower");
    assert_eq!(read(&early, &h, "0_inf"), expected(&["100_0"], "100_0"));
    append_and_flush(&writer, &h, vec![mid_transaction_entry("200_0")]).await;
    drop(writer); // The crash.

    let late = FileStore::open_follower(dir.path()).expect("open follower");
    for follower in [&early, &late] {
        assert_eq!(read(follower, &h, "0_inf"), expected(&["100_0"], "100_0"));
        assert_eq!(read(follower, &h, "100_0"), expected(&[], "100_0"));
        assert_eq!(follower.status(&h).expect("status").latest, off("100_0"));
    }

    let next = FileStore::open(dir.path()).expect("open the next writer");
    let recovered = next.recover(&h).await.expect("recover");
    assert_eq!(
        recovered.latest,
        off("200_0"),
        "the replay appends after it"
    );
    let waiter = early.changed(&h);
    append_and_flush(&next, &h, vec![entry("200_2", false)]).await;
    tokio::time::timeout(FOLLOW_POLL_INTERVAL * 4, waiter)
        .await
        .expect("the follower wakes once the transaction is whole");
    let torn = mid_transaction_entry("200_0").json;
    let whole = format!("{torn},{}", entry_json("200_2"));
    for follower in [&early, &late] {
        assert_eq!(
            read(follower, &h, "100_0"),
            (whole.clone(), 2, "200_2".into())
        );
        assert_eq!(follower.status(&h).expect("status").latest, off("200_2"));
    }
}

#[tokio::test]
async fn a_follower_never_serves_a_torn_tail_and_touches_no_file() {
    // Goal (RO-1, RO-4): a torn index tail (a crashed writer, or a record still being written)
    // is absent to a follower, and following writes, renames and deletes nothing.
    // Method: after a flush, add half a record and garbage to the index and unindexed bytes to
    // the data file; leave trash and a half-created shape behind; snapshot every path's kind,
    // length and mtime; use the follower in every way; compare.
    let dir = TempDir::new("follow-torn");
    let h = handle(1);
    let writer = FileStore::open(dir.path()).expect("open writer");
    create_with_snapshot(&writer, &h).await;
    append_and_flush(
        &writer,
        &h,
        vec![entry("100_0", false), entry("200_0", false)],
    )
    .await;
    drop(writer); // The crash.
    let index = shape_file(dir.path(), &h, layout::LOG_INDEX_FILE);
    let data = shape_file(dir.path(), &h, layout::LOG_DATA_FILE);
    let record = fs::read(&index).expect("index")[..layout::INDEX_RECORD_LEN].to_vec();
    append_bytes(&index, &record[..layout::INDEX_RECORD_LEN / 2]);
    append_bytes(&data, entry_json("300_0").as_bytes());
    fs::create_dir_all(dir.path().join(layout::TRASH_DIR).join("7-7")).expect("trash");
    fs::create_dir(dir.path().join(layout::SHAPES_DIR).join(".8-8.creating")).expect("mkdir");
    let before = tree(dir.path());

    let follower = FileStore::open_follower(dir.path()).expect("open follower");
    let waiter = follower.changed(&h);
    assert_eq!(
        read(&follower, &h, "0_inf"),
        expected(&["100_0", "200_0"], "200_0")
    );
    assert_eq!(follower.status(&h).expect("status").latest, off("200_0"));
    let idle = tokio::time::timeout(FOLLOW_POLL_INTERVAL * 3, waiter).await;
    assert!(idle.is_err(), "a torn tail is no change");
    // A full garbage record is no better than half of one.
    append_bytes(&index, &[0xa5; layout::INDEX_RECORD_LEN]);
    assert_eq!(
        read(&follower, &h, "200_0"),
        expected(&[], "200_0"),
        "garbage is not served"
    );
    assert_eq!(follower.list_shape_dirs().expect("list"), vec![h.clone()]);
    let after_garbage = tree(dir.path());
    drop(follower);

    let mut expected_tree = before;
    let grown = expected_tree.get_mut(&index).expect("index listed");
    grown.1 += layout::INDEX_RECORD_LEN as u64;
    grown.2 = after_garbage[&index].2;
    assert_eq!(
        after_garbage, expected_tree,
        "the follower created, changed or deleted a file"
    );
}

#[tokio::test]
async fn a_follower_reading_a_record_naming_missing_data_waits_for_the_data() {
    // Goal (RO-1): an index record whose data is not (yet) in the data file is not served.
    // Method: cut the data file short by a few bytes, read, restore the bytes, read again.
    let dir = TempDir::new("follow-data");
    let h = handle(1);
    let writer = FileStore::open(dir.path()).expect("open writer");
    create_with_snapshot(&writer, &h).await;
    append_and_flush(
        &writer,
        &h,
        vec![entry("100_0", false), entry("200_0", false)],
    )
    .await;
    let data = shape_file(dir.path(), &h, layout::LOG_DATA_FILE);
    let bytes = fs::read(&data).expect("data");
    fs::write(&data, &bytes[..bytes.len() - 5]).expect("cut");

    let follower = FileStore::open_follower(dir.path()).expect("open follower");
    assert_eq!(read(&follower, &h, "0_inf"), expected(&["100_0"], "100_0"));
    fs::write(&data, &bytes).expect("restore");
    assert_eq!(
        read(&follower, &h, "0_inf"),
        expected(&["100_0", "200_0"], "200_0")
    );
}

#[tokio::test]
async fn a_followers_changed_wakes_soon_after_the_writer_flushes() {
    // Goal (RO-3): a standby's long-poll learns of a flush within about a second, not at the
    // long-poll timeout. Method: wait on changed(), flush in the writer, time the wake-up.
    let dir = TempDir::new("follow-changed");
    let h = handle(1);
    let writer = FileStore::open(dir.path()).expect("open writer");
    create_with_snapshot(&writer, &h).await;
    let follower = FileStore::open_follower(dir.path()).expect("open follower");

    let waiter = follower.changed(&h);
    assert_eq!(read(&follower, &h, "0_inf"), expected(&[], "0_inf"));
    let idle = tokio::time::timeout(Duration::from_millis(700), waiter).await;
    assert!(idle.is_err(), "nothing was flushed");

    let waiter = follower.changed(&h);
    append_and_flush(&writer, &h, vec![entry("100_0", false)]).await;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_millis(1500), waiter)
        .await
        .expect("woken within 1.5 s of the flush");
    assert!(started.elapsed() <= Duration::from_millis(1500));
    assert_eq!(read(&follower, &h, "0_inf"), expected(&["100_0"], "100_0"));

    // Removal by the writer wakes waiters too, and the shape reads as unknown.
    let waiter = follower.changed(&h);
    writer.remove_shape(&h).await.expect("remove");
    tokio::time::timeout(Duration::from_millis(1500), waiter)
        .await
        .expect("woken by the removal");
    assert_eq!(follower.read(&h, off("-1")), ReadOutcome::UnknownShape);
    assert_eq!(follower.status(&h), None);
    tokio::time::timeout(Duration::from_millis(100), follower.changed(&h))
        .await
        .expect("an unknown shape resolves at once");
}

#[tokio::test]
async fn a_follower_picks_up_shapes_created_after_it_opened() {
    // Goal (RO-1): shapes the writer creates later are found by handle, snapshot chunks as
    // they become safe to serve (chunk i once chunk i+1 or the completion marker exists).
    // Method: open the follower on an empty root, then let the writer create a shape and
    // write its snapshot chunk by chunk.
    let dir = TempDir::new("follow-new");
    let root = dir.path().join("storage");
    let follower = FileStore::open_follower(&root).expect("a missing root is fine");
    let h = handle(2);
    assert_eq!(follower.read(&h, off("-1")), ReadOutcome::UnknownShape);
    assert_eq!(follower.list_shape_dirs().expect("list"), vec![]);
    assert!(!root.exists(), "the follower created nothing");

    let writer = FileStore::open(&root).expect("open writer");
    writer.create_shape(&h).await.expect("create");
    assert_eq!(follower.read(&h, off("-1")), ReadOutcome::SnapshotPending);
    let status = follower.status(&h).expect("found by handle");
    assert!(!status.snapshot_complete);
    assert_eq!(follower.list_shape_dirs().expect("list"), vec![h.clone()]);

    let mut snapshot = writer.snapshot_writer(&h);
    snapshot
        .write_chunk(0, r#"{"row":1},{"row":"2,}"}"#.to_owned())
        .await
        .expect("chunk 0");
    assert_eq!(
        follower.read(&h, off("-1")),
        ReadOutcome::SnapshotPending,
        "the chunk being written last is not served before its successor or the marker"
    );
    let waiter = follower.changed(&h);
    snapshot
        .write_chunk(1, SNAPSHOT_END.to_owned())
        .await
        .expect("chunk 1");
    tokio::time::timeout(Duration::from_millis(1500), waiter)
        .await
        .expect("a new chunk is a change");
    assert_eq!(
        read(&follower, &h, "-1"),
        (r#"{"row":1},{"row":"2,}"}"#.into(), 2, "0_0".into())
    );
    assert_eq!(follower.read(&h, off("0_0")), ReadOutcome::SnapshotPending);
    snapshot.finish().await.expect("finish");
    assert_eq!(
        read(&follower, &h, "0_0"),
        (SNAPSHOT_END.into(), 1, "0_1".into())
    );
    assert!(follower.status(&h).expect("status").snapshot_complete);
    append_and_flush(&writer, &h, vec![entry("100_0", false)]).await;
    assert_eq!(read(&follower, &h, "0_1"), expected(&["100_0"], "100_0"));
}

#[tokio::test]
async fn every_write_through_a_follower_is_refused_as_read_only() {
    // Goal (RO-4): a standby cannot write, rename or delete through the store, even by mistake.
    let dir = TempDir::new("follow-readonly");
    let h = handle(1);
    let writer = FileStore::open(dir.path()).expect("open writer");
    create_with_snapshot(&writer, &h).await;
    append_and_flush(&writer, &h, vec![entry("100_0", false)]).await;
    let before = tree(dir.path());

    let follower = FileStore::open_follower(dir.path()).expect("open follower");
    assert!(follower.status(&h).is_some(), "the shape is known");
    let err = follower.create_shape(&handle(3)).await.expect_err("create");
    assert!(is_read_only(&err), "{err}");
    let err = follower
        .append(&h, vec![entry("200_0", false)])
        .expect_err("append");
    assert!(is_read_only(&err), "{err}");
    let err = follower.flush().await.expect_err("flush");
    assert!(is_read_only(&err), "{err}");
    let err = follower.recover(&h).await.expect_err("recover");
    assert!(is_read_only(&err), "{err}");
    let err = follower.remove_shape(&h).await.expect_err("remove");
    assert!(is_read_only(&err), "{err}");
    assert!(
        follower.status(&h).is_some(),
        "a refused removal unregisters nothing"
    );
    let mut snapshot = follower.snapshot_writer(&h);
    let err = snapshot
        .write_chunk(0, "{}".to_owned())
        .await
        .expect_err("chunk");
    assert!(is_read_only(&err), "{err}");
    let err = snapshot.finish().await.expect_err("finish");
    assert!(is_read_only(&err), "{err}");
    assert_eq!(tree(dir.path()), before);
}

#[tokio::test]
async fn a_promoted_follower_empties_the_trash_recovers_torn_tails_and_appends() {
    // Goal: once the lock is held the same store becomes the writer: open()'s maintenance
    // runs, recover() truncates the torn tail it was ignoring, and appends work.
    // Method: a crashed writer leaves a torn index record, trash and a half-created shape; a
    // follower reads, is promoted, recovers, appends and flushes; a fresh writer checks disk.
    let dir = TempDir::new("follow-promote");
    let h = handle(1);
    let writer = FileStore::open(dir.path()).expect("open writer");
    create_with_snapshot(&writer, &h).await;
    append_and_flush(
        &writer,
        &h,
        vec![entry("100_0", false), entry("200_0", false)],
    )
    .await;
    drop(writer);
    let index = shape_file(dir.path(), &h, layout::LOG_INDEX_FILE);
    let rec = layout::INDEX_RECORD_LEN as u64;
    append_bytes(&index, &[0x5a; 13]);
    let trashed = dir.path().join(layout::TRASH_DIR).join("7-7");
    fs::create_dir_all(trashed.join("snapshot")).expect("trash");
    let creating = dir.path().join(layout::SHAPES_DIR).join(".8-8.creating");
    fs::create_dir(&creating).expect("mkdir");

    let store = FileStore::open_follower(dir.path()).expect("open follower");
    let reader = store.clone();
    assert_eq!(read(&store, &h, "100_0"), expected(&["200_0"], "200_0"));
    assert_eq!(fs::metadata(&index).expect("stat").len(), 2 * rec + 13);

    store.promote().await.expect("promote");
    assert!(!reader.is_follower(), "clones are promoted too");
    assert!(!trashed.exists(), "trash emptied");
    assert!(!creating.exists(), "half-created shape cleared");
    assert_eq!(
        read(&store, &h, "100_0"),
        expected(&["200_0"], "200_0"),
        "still readable before recovery"
    );
    let err = store
        .append(&h, vec![entry("300_0", false)])
        .expect_err("not recovered yet");
    assert!(matches!(err, StoreError::NotRecovered { .. }), "{err}");

    let recovered = store.recover(&h).await.expect("recover");
    assert_eq!(recovered.latest, off("200_0"));
    assert_eq!(
        fs::metadata(&index).expect("stat").len(),
        2 * rec,
        "torn tail cut"
    );
    append_and_flush(&store, &h, vec![entry("300_0", true)]).await;
    assert_eq!(
        read(&reader, &h, "100_0"),
        expected(&["200_0", "300_0"], "300_0")
    );
    store.promote().await.expect("promoting twice is fine");

    let again = FileStore::open(dir.path()).expect("reopen");
    assert_eq!(
        again.recover(&h).await.expect("recover").latest,
        off("300_0")
    );
}

#[tokio::test]
async fn a_promoted_store_serves_the_shapes_on_disk_before_recovering_them_and_never_a_removed_one()
{
    // Goal: a restart (a promotion) answers reads of a live shape between taking the lease and
    // recovering it, instead of `UnknownShape` (which the HTTP layer turns into a 409 the
    // client takes for lost continuity); a shape removed or never on disk stays unknown.
    // Method: a writer leaves two shapes; a new store is promoted without reading either,
    // reads both, removes one, recovers the other and writes it; `FileStore::open` (which
    // promotes at once) reads the recovered one before recovering it again.
    let dir = TempDir::new("promote-unread");
    let (kept, removed, never) = (handle(1), handle(2), handle(3));
    let old = FileStore::open(dir.path()).expect("open writer");
    create_with_snapshot(&old, &kept).await;
    create_with_snapshot(&old, &removed).await;
    append_and_flush(&old, &kept, vec![entry("100_0", false)]).await;
    drop(old);

    let next = FileStore::open_follower(dir.path()).expect("open follower");
    next.promote().await.expect("promote");
    assert_eq!(read(&next, &kept, "0_inf"), expected(&["100_0"], "100_0"));
    assert_eq!(next.status(&kept).expect("status").latest, off("100_0"));
    assert_eq!(read(&next, &removed, "0_inf"), expected(&[], "0_inf"));
    assert_eq!(next.read(&never, off("-1")), ReadOutcome::UnknownShape);

    next.remove_shape(&removed).await.expect("remove");
    assert_eq!(next.read(&removed, off("0_inf")), ReadOutcome::UnknownShape);
    assert_eq!(next.status(&removed), None);

    let err = next
        .append(&kept, vec![entry("200_0", false)])
        .expect_err("not recovered");
    assert!(matches!(err, StoreError::NotRecovered { .. }), "{err}");
    next.recover(&kept).await.expect("recover");
    append_and_flush(&next, &kept, vec![entry("200_0", false)]).await;
    assert_eq!(read(&next, &kept, "100_0"), expected(&["200_0"], "200_0"));
    drop(next);

    let reopened = FileStore::open(dir.path()).expect("reopen");
    assert_eq!(
        read(&reopened, &kept, "100_0"),
        expected(&["200_0"], "200_0")
    );
    assert_eq!(
        reopened.read(&removed, off("-1")),
        ReadOutcome::UnknownShape
    );
    assert_eq!(
        reopened.recover(&kept).await.expect("recover").latest,
        off("200_0")
    );
}

/// Open file descriptors of this process pointing under `root`.
fn open_files_under(root: &Path) -> usize {
    let root = format!("{}/", root.to_string_lossy());
    fs::read_dir("/proc/self/fd")
        .expect("list fds")
        .filter_map(|entry| fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with(&root))
        .count()
}

#[tokio::test]
async fn a_follower_closes_the_files_of_shapes_the_writer_removed() {
    // Goal: a long-running standby does not keep removed shapes' files open (RO-4 forbids it
    // to delete them; it must at least let them go). Method: follow two shapes, remove one in
    // the writer, refresh every followed shape, count descriptors under the root.
    let dir = TempDir::new("follow-sweep");
    let (kept, removed) = (handle(1), handle(2));
    let writer = FileStore::open(dir.path()).expect("open writer");
    create_with_snapshot(&writer, &kept).await;
    create_with_snapshot(&writer, &removed).await;
    drop(writer);
    let follower = FileStore::open_follower(dir.path()).expect("open follower");
    assert!(follower.status(&kept).is_some());
    assert!(follower.status(&removed).is_some());
    assert_eq!(open_files_under(dir.path()), 4, "data and index of each");

    let writer = FileStore::open(dir.path()).expect("reopen writer");
    writer.recover(&removed).await.expect("recover");
    let waiter = follower.changed(&removed);
    writer.remove_shape(&removed).await.expect("remove");
    drop(writer);
    follower.refresh_followed().await.expect("refresh");
    tokio::time::timeout(Duration::from_millis(100), waiter)
        .await
        .expect("the removal woke the waiter");
    assert_eq!(
        open_files_under(dir.path()),
        2,
        "only the kept shape's files"
    );
    assert!(follower.status(&kept).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_reading_during_flushes_only_ever_sees_whole_prefixes() {
    // Goal (RO-1): index records the writer is writing at that very moment are never served
    // half-read; what a follower sees only grows, entry by entry, in order.
    // Method: a writer task flushes 300 entries in small batches while the follower reads the
    // whole log in a loop, checking each answer is a prefix no shorter than the last.
    let dir = TempDir::new("follow-race");
    let h = handle(1);
    let writer = FileStore::open(dir.path()).expect("open writer");
    create_with_snapshot(&writer, &h).await;
    let offsets: Vec<String> = (1..=300u64).map(|tx| format!("{tx}_0")).collect();
    let writing = {
        let (writer, h, offsets) = (writer.clone(), h.clone(), offsets.clone());
        tokio::spawn(async move {
            for batch in offsets.chunks(3) {
                let entries = batch.iter().map(|o| entry(o, false)).collect();
                append_and_flush(&writer, &h, entries).await;
            }
        })
    };
    let follower = FileStore::open_follower(dir.path()).expect("open follower");
    let all: Vec<&str> = offsets.iter().map(String::as_str).collect();
    let mut seen = 0;
    while seen < all.len() {
        let c = chunk(follower.read(&h, off("0_inf")));
        let n = c.entries;
        assert!(n >= seen, "went back from {seen} to {n} entries");
        let end = if n == 0 { "0_inf" } else { all[n - 1] };
        let body = String::from_utf8(c.body.to_vec()).expect("utf-8");
        assert_eq!((body, n, c.end.to_string()), expected(&all[..n], end));
        seen = n;
        tokio::task::yield_now().await;
    }
    writing.await.expect("writer task");
}
