//! `FileStore` on real files: chunked reads per protocol.md §6.2, durability (only flushed
//! entries are visible or survive), crash recovery of torn tails, snapshot chunks, removal and
//! change notification. Every test works in its own directory under /tmp, removed at the end.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ampere_core::ports::{LogEntry, ReadOutcome, ShapeLogStore, SnapshotWriter};
use ampere_core::shape::ShapeHandle;
use ampere_core::LogOffset;
use ampere_io_real::store::{layout, probe_writable, FileStore, OpenFileBudget, StoreError};

mod common;
use common::{
    chunk, entry, entry_json, expected, handle, mid_transaction_entry, off, read, TempDir,
    SNAPSHOT_END,
};

/// A store with one shape whose two-chunk snapshot is complete.
async fn store_with_snapshot(dir: &TempDir, h: &ShapeHandle) -> FileStore {
    let store = FileStore::open(dir.path()).expect("open");
    store.create_shape(h).await.expect("create");
    let mut writer = store.snapshot_writer(h);
    writer
        .write_chunk(0, r#"{"row":1},{"row":"2,}"}"#.to_owned())
        .await
        .expect("chunk 0");
    writer
        .write_chunk(1, format!(r#"{{"row":3}},{SNAPSHOT_END}"#))
        .await
        .expect("chunk 1");
    writer.finish().await.expect("finish");
    store
}

/// The log used by the chunking tests: boundaries after 100_2, 200_2 and 300_0; 400_x open.
fn sample_log() -> Vec<LogEntry> {
    vec![
        entry("100_0", false),
        entry("100_2", true),
        entry("100_4", false),
        entry("200_0", false),
        entry("200_2", true),
        entry("300_0", true),
        entry("400_0", false),
        entry("400_2", false),
    ]
}

/// An independent model of §6.2 for replicated offsets: entries in (after, E], E the first
/// boundary above `after` or the last entry.
fn model(log: &[LogEntry], after: LogOffset) -> (String, usize, String) {
    let rest: Vec<&LogEntry> = log.iter().filter(|e| e.offset > after).collect();
    let stop = rest
        .iter()
        .position(|e| e.chunk_end)
        .map_or(rest.len(), |i| i + 1);
    let taken = &rest[..stop];
    let end = taken
        .last()
        .map(|e| e.offset)
        .or(log.last().map(|e| e.offset))
        .unwrap_or(LogOffset::SNAPSHOT_END);
    let body = taken
        .iter()
        .map(|e| e.json.as_str())
        .collect::<Vec<_>>()
        .join(",");
    (body, taken.len(), end.to_string())
}

#[tokio::test]
async fn reads_walk_snapshot_chunks_then_log_chunks_exactly_per_protocol() {
    // Goal: the documented answer for each kind of request offset (protocol.md §6.2).
    // Method: a complete two-chunk snapshot and a log with three boundaries and an open chunk.
    let dir = TempDir::new("chunks");
    let h = handle(1);
    let store = store_with_snapshot(&dir, &h).await;
    store.append(&h, sample_log()).expect("append");
    store.flush().await.expect("flush");

    let snapshot0 = (r#"{"row":1},{"row":"2,}"}"#.to_owned(), 2, "0_0".to_owned());
    let snapshot1 = (
        format!(r#"{{"row":3}},{SNAPSHOT_END}"#),
        2,
        "0_1".to_owned(),
    );
    assert_eq!(read(&store, &h, "-1"), snapshot0);
    assert_eq!(read(&store, &h, "0_0"), snapshot1);
    let first_chunk = expected(&["100_0", "100_2"], "100_2");
    for from_start in ["0_1", "0_2", "0_inf", "99_7", "99_inf"] {
        assert_eq!(read(&store, &h, from_start), first_chunk, "at {from_start}");
    }
    assert_eq!(read(&store, &h, "100_0"), expected(&["100_2"], "100_2"));
    assert_eq!(read(&store, &h, "100_1"), expected(&["100_2"], "100_2"));
    let second = expected(&["100_4", "200_0", "200_2"], "200_2");
    assert_eq!(read(&store, &h, "100_2"), second);
    assert_eq!(
        read(&store, &h, "100_inf"),
        expected(&["200_0", "200_2"], "200_2")
    );
    assert_eq!(
        read(&store, &h, "150_3"),
        expected(&["200_0", "200_2"], "200_2")
    );
    assert_eq!(read(&store, &h, "200_2"), expected(&["300_0"], "300_0"));
    let open = expected(&["400_0", "400_2"], "400_2");
    assert_eq!(read(&store, &h, "300_0"), open);
    assert_eq!(read(&store, &h, "399_7"), open);
    assert_eq!(read(&store, &h, "400_0"), expected(&["400_2"], "400_2"));
    // Nothing after: empty body, end = latest, also above the latest (HTTP decides bounds).
    assert_eq!(read(&store, &h, "400_2"), expected(&[], "400_2"));
    assert_eq!(read(&store, &h, "500_0"), expected(&[], "400_2"));
}

#[tokio::test]
async fn every_request_offset_gets_the_model_answer_and_the_same_answer_twice() {
    // Goal: deterministic answers at entry offsets and at offsets between entries.
    // Method: sweep offsets around every entry, compare with an independent model.
    let dir = TempDir::new("sweep");
    let h = handle(1);
    let store = store_with_snapshot(&dir, &h).await;
    let log = sample_log();
    store.append(&h, log[..5].to_vec()).expect("append");
    store.flush().await.expect("flush");
    store.append(&h, log[5..].to_vec()).expect("append");
    store.flush().await.expect("flush");

    let mut requests = vec![off("0_1"), off("0_inf")];
    for e in &log {
        let tx = e.offset.tx();
        for text in [
            format!("{}_7", tx - 1),
            format!("{tx}_0"),
            format!("{tx}_1"),
            format!("{tx}_3"),
            format!("{tx}_inf"),
            e.offset.to_string(),
        ] {
            requests.push(off(&text));
        }
    }
    for after in requests {
        let first = store.read(&h, after);
        assert_eq!(first, store.read(&h, after), "same answer twice at {after}");
        let c = chunk(first);
        let got = (
            String::from_utf8(c.body.to_vec()).expect("utf-8"),
            c.entries,
            c.end.to_string(),
        );
        assert_eq!(got, model(&log, after), "at {after}");
    }
}

#[tokio::test]
async fn unflushed_entries_are_invisible_to_readers() {
    let dir = TempDir::new("unflushed");
    let h = handle(1);
    let store = store_with_snapshot(&dir, &h).await;
    store
        .append(&h, vec![entry("100_0", false)])
        .expect("append");
    assert_eq!(read(&store, &h, "0_inf"), expected(&[], "0_inf"));
    store.flush().await.expect("flush");
    store
        .append(&h, vec![entry("200_0", false)])
        .expect("append");
    assert_eq!(read(&store, &h, "0_inf"), expected(&["100_0"], "100_0"));
    assert_eq!(read(&store, &h, "100_0"), expected(&[], "100_0"));
    let status = store.status(&h).expect("status");
    assert_eq!(status.latest, off("100_0"));
    assert!(status.snapshot_complete);
    store.flush().await.expect("flush");
    assert_eq!(read(&store, &h, "100_0"), expected(&["200_0"], "200_0"));
}

#[tokio::test]
async fn append_rejects_offsets_that_do_not_increase() {
    let dir = TempDir::new("order");
    let h = handle(1);
    let store = store_with_snapshot(&dir, &h).await;
    store
        .append(&h, vec![entry("100_2", false)])
        .expect("append");
    for bad in ["100_2", "100_0", "0_inf"] {
        let err = store
            .append(&h, vec![entry(bad, false)])
            .expect_err("must increase");
        assert!(
            matches!(err, StoreError::OffsetNotIncreasing { .. }),
            "{err}"
        );
    }
    let err = store
        .append(&handle(9), vec![entry("1_0", false)])
        .expect_err("unknown shape");
    assert!(matches!(err, StoreError::UnknownShape { .. }));
}

fn shape_file(dir: &TempDir, h: &ShapeHandle, name: &str) -> PathBuf {
    dir.path()
        .join(layout::SHAPES_DIR)
        .join(h.as_str())
        .join(name)
}

fn truncate(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open")
        .set_len(len)
        .expect("truncate");
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).expect("stat").len()
}

/// Writes 100_0, 100_2 (boundary), 200_0 in one flush and 300_0 in another, appends 400_0
/// without flushing, then drops the store: a crash after the second flush.
async fn crashed_store(dir: &TempDir, h: &ShapeHandle) {
    let store = store_with_snapshot(dir, h).await;
    let first = vec![
        entry("100_0", false),
        entry("100_2", true),
        entry("200_0", false),
    ];
    store.append(h, first).expect("append");
    store.flush().await.expect("flush");
    store
        .append(h, vec![entry("300_0", false)])
        .expect("append");
    store.flush().await.expect("flush");
    store
        .append(h, vec![entry("400_0", false)])
        .expect("append");
}

fn entry_bytes(offsets: &[&str]) -> u64 {
    offsets.iter().map(|o| entry_json(o).len() as u64 + 1).sum()
}

#[tokio::test]
async fn recovery_keeps_only_durable_entries_and_cuts_a_torn_index_record() {
    // Goal: a crash mid-index-write loses only the torn entry; unflushed entries never existed.
    // Method: crash after two flushes, cut the last index record in half, reopen and recover.
    let dir = TempDir::new("torn-index");
    let h = handle(1);
    crashed_store(&dir, &h).await;
    let index = shape_file(&dir, &h, layout::LOG_INDEX_FILE);
    let data = shape_file(&dir, &h, layout::LOG_DATA_FILE);
    let rec = layout::INDEX_RECORD_LEN as u64;
    assert_eq!(file_len(&index), 4 * rec, "400_0 was never flushed");
    truncate(&index, 3 * rec + 13);

    let store = FileStore::open(dir.path()).expect("reopen");
    let recovered = store.recover(&h).await.expect("recover");
    assert_eq!(recovered.latest, off("200_0"));
    assert_eq!(recovered.open_chunk_bytes, entry_bytes(&["200_0"]));
    assert_eq!(file_len(&index), 3 * rec);
    assert_eq!(file_len(&data), entry_bytes(&["100_0", "100_2", "200_0"]));
    assert_eq!(read(&store, &h, "100_2"), expected(&["200_0"], "200_0"));
    assert!(store.status(&h).expect("status").snapshot_complete);

    // The log continues where recovery left it.
    store
        .append(&h, vec![entry("300_0", true)])
        .expect("append");
    store.flush().await.expect("flush");
    assert_eq!(
        read(&store, &h, "100_2"),
        expected(&["200_0", "300_0"], "300_0")
    );
    let again = FileStore::open(dir.path()).expect("reopen");
    let recovered = again.recover(&h).await.expect("recover");
    assert_eq!(recovered.latest, off("300_0"));
    assert_eq!(recovered.open_chunk_bytes, 0);
}

#[tokio::test]
async fn recovery_drops_index_records_naming_data_past_the_end_of_the_data_file() {
    let dir = TempDir::new("torn-data");
    let h = handle(1);
    crashed_store(&dir, &h).await;
    let data = shape_file(&dir, &h, layout::LOG_DATA_FILE);
    truncate(&data, file_len(&data) - 5);

    let store = FileStore::open(dir.path()).expect("reopen");
    let recovered = store.recover(&h).await.expect("recover");
    assert_eq!(recovered.latest, off("200_0"));
    let index = shape_file(&dir, &h, layout::LOG_INDEX_FILE);
    assert_eq!(file_len(&index), 3 * layout::INDEX_RECORD_LEN as u64);
    assert_eq!(file_len(&data), entry_bytes(&["100_0", "100_2", "200_0"]));
}

#[tokio::test]
async fn recovery_drops_a_zeroed_last_record_and_unindexed_data() {
    // A crash can leave a file longer than what was written (zeros) or data no index names.
    let dir = TempDir::new("zeroed");
    let h = handle(1);
    crashed_store(&dir, &h).await;
    let index = shape_file(&dir, &h, layout::LOG_INDEX_FILE);
    let data = shape_file(&dir, &h, layout::LOG_DATA_FILE);
    truncate(&index, 5 * layout::INDEX_RECORD_LEN as u64);
    truncate(&data, file_len(&data) + 100);

    let store = FileStore::open(dir.path()).expect("reopen");
    let recovered = store.recover(&h).await.expect("recover");
    assert_eq!(recovered.latest, off("300_0"));
    assert_eq!(
        file_len(&data),
        entry_bytes(&["100_0", "100_2", "200_0", "300_0"])
    );
}

#[tokio::test]
async fn recovery_refuses_damage_in_the_middle_of_the_index() {
    let dir = TempDir::new("corrupt");
    let h = handle(1);
    crashed_store(&dir, &h).await;
    let index = shape_file(&dir, &h, layout::LOG_INDEX_FILE);
    let mut bytes = fs::read(&index).expect("read");
    bytes[3] ^= 0xff;
    fs::write(&index, bytes).expect("write");

    let store = FileStore::open(dir.path()).expect("reopen");
    let err = store.recover(&h).await.expect_err("corrupt");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(store.status(&h).is_none());
}

// Found by sim: seed 0x9f
#[tokio::test]
async fn a_recovered_writer_serves_no_part_of_a_transaction_until_the_replay_makes_it_whole() {
    // Goal (RO-1): a crash mid-flush can leave the first entries of a transaction durable; the
    // recovered writer keeps them and reports them to the replay, but serves none of them
    // (nor reports them as latest) before the transaction's last entry is durable too.
    // Method: flush 100_0 (whole), then 200_0 and 200_2 (one transaction); cut the index
    // before 200_2, as a crash mid-flush leaves it; recover, read, replay 200_2.
    let dir = TempDir::new("torn-transaction");
    let h = handle(1);
    let store = store_with_snapshot(&dir, &h).await;
    store
        .append(&h, vec![entry("100_0", false)])
        .expect("append");
    store.flush().await.expect("flush");
    let transaction = vec![mid_transaction_entry("200_0"), entry("200_2", false)];
    store.append(&h, transaction.clone()).expect("append");
    store.flush().await.expect("flush");
    drop(store);
    let index = shape_file(&dir, &h, layout::LOG_INDEX_FILE);
    truncate(&index, 2 * layout::INDEX_RECORD_LEN as u64);

    let store = FileStore::open(dir.path()).expect("reopen");
    let recovered = store.recover(&h).await.expect("recover");
    assert_eq!(recovered.latest, off("200_0"), "the true durable end");
    let torn = &transaction[0].json;
    assert_eq!(
        recovered.open_chunk_bytes,
        entry_bytes(&["100_0"]) + torn.len() as u64 + 1
    );
    assert_eq!(read(&store, &h, "0_inf"), expected(&["100_0"], "100_0"));
    assert_eq!(read(&store, &h, "100_0"), expected(&[], "100_0"));
    assert_eq!(store.status(&h).expect("status").latest, off("100_0"));

    // The replay appends only what is missing; then the whole transaction is served.
    let waiter = store.changed(&h);
    store
        .append(&h, vec![transaction[1].clone()])
        .expect("append");
    store.flush().await.expect("flush");
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woken by the flush that completes the transaction");
    let whole = format!("{torn},{}", entry_json("200_2"));
    assert_eq!(read(&store, &h, "100_0"), (whole, 2, "200_2".to_owned()));
    assert_eq!(store.status(&h).expect("status").latest, off("200_2"));
}

#[tokio::test]
async fn snapshot_chunks_are_pending_until_durable_and_the_log_until_complete() {
    let dir = TempDir::new("snapshot");
    let h = handle(1);
    let store = FileStore::open(dir.path()).expect("open");
    store.create_shape(&h).await.expect("create");
    let pending = |after: &str| store.read(&h, off(after)) == ReadOutcome::SnapshotPending;
    assert!(pending("-1"));
    let status = store.status(&h).expect("status");
    assert_eq!(status.latest, LogOffset::SNAPSHOT_END);
    assert!(!status.snapshot_complete);

    let mut writer = store.snapshot_writer(&h);
    writer
        .write_chunk(0, r#"{"row":1}"#.to_owned())
        .await
        .expect("chunk 0");
    assert_eq!(
        read(&store, &h, "-1"),
        (r#"{"row":1}"#.into(), 1, "0_0".into())
    );
    for after in ["0_0", "0_1", "0_inf", "100_0"] {
        assert!(pending(after), "{after} before chunk 1 and completion");
    }
    let err = writer
        .write_chunk(5, "{}".to_owned())
        .await
        .expect_err("out of order");
    assert!(matches!(err, StoreError::SnapshotChunkOutOfOrder { .. }));
    writer
        .write_chunk(1, SNAPSHOT_END.to_owned())
        .await
        .expect("chunk 1");
    assert_eq!(
        read(&store, &h, "0_0"),
        (SNAPSHOT_END.into(), 1, "0_1".into())
    );
    assert!(pending("0_1"), "the last chunk is unknown until finish");
    store
        .append(&h, vec![entry("100_0", false)])
        .expect("append");
    store.flush().await.expect("flush");
    assert!(
        pending("0_inf"),
        "flushed entries still wait for the snapshot"
    );
    writer.finish().await.expect("finish");
    assert!(store.status(&h).expect("status").snapshot_complete);
    for after in ["0_1", "0_9", "0_inf"] {
        assert_eq!(read(&store, &h, after), expected(&["100_0"], "100_0"));
    }

    // Completion and chunk sizes survive a restart.
    let again = FileStore::open(dir.path()).expect("reopen");
    again.recover(&h).await.expect("recover");
    assert_eq!(
        read(&again, &h, "0_0"),
        (SNAPSHOT_END.into(), 1, "0_1".into())
    );
    assert!(again.status(&h).expect("status").snapshot_complete);
}

#[tokio::test]
async fn an_empty_table_has_one_chunk_holding_snapshot_end() {
    let dir = TempDir::new("empty");
    let h = handle(1);
    let store = FileStore::open(dir.path()).expect("open");
    store.create_shape(&h).await.expect("create");
    let mut writer = store.snapshot_writer(&h);
    writer
        .write_chunk(0, SNAPSHOT_END.to_owned())
        .await
        .expect("chunk 0");
    writer.finish().await.expect("finish");
    assert_eq!(
        read(&store, &h, "-1"),
        (SNAPSHOT_END.into(), 1, "0_0".into())
    );
    assert_eq!(read(&store, &h, "0_0"), expected(&[], "0_inf"));
    assert_eq!(read(&store, &h, "0_inf"), expected(&[], "0_inf"));
}

#[tokio::test]
async fn an_unfinished_snapshot_is_not_served_after_a_restart() {
    let dir = TempDir::new("unfinished");
    let h = handle(1);
    let store = FileStore::open(dir.path()).expect("open");
    store.create_shape(&h).await.expect("create");
    let mut writer = store.snapshot_writer(&h);
    writer
        .write_chunk(0, r#"{"row":1}"#.to_owned())
        .await
        .expect("chunk 0");
    drop(store);
    let again = FileStore::open(dir.path()).expect("reopen");
    again.recover(&h).await.expect("recover");
    assert_eq!(again.read(&h, off("-1")), ReadOutcome::SnapshotPending);
    assert!(!again.status(&h).expect("status").snapshot_complete);
}

#[tokio::test]
async fn removed_shapes_read_as_unknown_at_once_and_leave_no_files() {
    let dir = TempDir::new("remove");
    let h = handle(1);
    let store = store_with_snapshot(&dir, &h).await;
    store
        .append(&h, vec![entry("100_0", false)])
        .expect("append");
    store.flush().await.expect("flush");
    let waiter = store.changed(&h);
    let removal = store.remove_shape(&h);
    assert_eq!(store.read(&h, off("-1")), ReadOutcome::UnknownShape);
    assert_eq!(store.status(&h), None);
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("removal wakes waiters");
    removal.await.expect("remove");
    assert!(!dir
        .path()
        .join(layout::SHAPES_DIR)
        .join(h.as_str())
        .exists());
    let trash = fs::read_dir(dir.path().join(layout::TRASH_DIR)).expect("trash");
    assert_eq!(trash.count(), 0);
    assert_eq!(store.list_shape_dirs().expect("list"), vec![]);
    let err = store
        .append(&h, vec![entry("200_0", false)])
        .expect_err("removed");
    assert!(matches!(err, StoreError::UnknownShape { .. }));
    store
        .remove_shape(&h)
        .await
        .expect("removing twice is fine");
}

#[tokio::test]
async fn changed_resolves_on_the_next_flush_even_if_polled_after_it() {
    let dir = TempDir::new("changed");
    let h = handle(1);
    let store = store_with_snapshot(&dir, &h).await;
    let idle = tokio::time::timeout(Duration::from_millis(50), store.changed(&h)).await;
    assert!(idle.is_err(), "nothing changed yet");

    // Subscribed at call time: a flush before the first poll is not lost.
    let waiter = store.changed(&h);
    store
        .append(&h, vec![entry("100_0", false)])
        .expect("append");
    store.flush().await.expect("flush");
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woken by the flush");

    // Flushing with nothing appended to this shape is no change.
    let waiter = store.changed(&h);
    store.flush().await.expect("flush");
    let idle = tokio::time::timeout(Duration::from_millis(50), waiter).await;
    assert!(idle.is_err(), "no durable change");

    // Unknown shapes resolve at once.
    tokio::time::timeout(Duration::from_secs(5), store.changed(&handle(9)))
        .await
        .expect("unknown shape");
}

#[tokio::test]
async fn recovering_a_shape_again_wakes_the_replaced_views_waiters_only() {
    // Goal: once recovery replaces a shape, nobody is left waiting on the replaced view (it is
    // retired), while waits on the new one still sleep until its next flush (no busy loop).
    // Method: wait on changed(), recover the shape again, then wait anew and flush.
    let dir = TempDir::new("changed-recover");
    let h = handle(1);
    let store = store_with_snapshot(&dir, &h).await;
    let on_replaced = store.changed(&h);
    store.recover(&h).await.expect("recover");
    tokio::time::timeout(Duration::from_secs(5), on_replaced)
        .await
        .expect("the replaced view's waiters wake");
    let idle = tokio::time::timeout(Duration::from_millis(50), store.changed(&h)).await;
    assert!(idle.is_err(), "the recovered shape has not changed");
    let waiter = store.changed(&h);
    store
        .append(&h, vec![entry("100_0", false)])
        .expect("append");
    store.flush().await.expect("flush");
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woken by the flush");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_and_flushes_lose_nothing() {
    // Goal: flush() is safe to call concurrently; every shape ends with every entry, in order.
    // Method: one task per shape appends and flushes 40 times; then recover from disk.
    let dir = TempDir::new("concurrent");
    let store = FileStore::open(dir.path()).expect("open");
    let handles: Vec<ShapeHandle> = (1..=4).map(handle).collect();
    for h in &handles {
        store.create_shape(h).await.expect("create");
    }
    let tasks: Vec<_> = handles
        .iter()
        .cloned()
        .map(|h| {
            let store = store.clone();
            tokio::spawn(async move {
                for tx in 1..=40u64 {
                    let e = entry(&format!("{tx}_0"), tx % 7 == 0);
                    store.append(&h, vec![e]).expect("append");
                    store.flush().await.expect("flush");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    let again = FileStore::open(dir.path()).expect("reopen");
    for h in &handles {
        let recovered = again.recover(h).await.expect("recover");
        assert_eq!(recovered.latest, off("40_0"));
        assert_eq!(
            recovered.open_chunk_bytes,
            entry_bytes(&["36_0", "37_0", "38_0", "39_0", "40_0"])
        );
    }
}

#[tokio::test]
async fn one_flush_commits_every_shape_with_appended_entries() {
    // Goal: group commit covers many shapes at once, each only its own entries.
    let dir = TempDir::new("group");
    let store = FileStore::open(dir.path()).expect("open");
    let handles: Vec<ShapeHandle> = (1..=20).map(handle).collect();
    for h in &handles {
        store.create_shape(h).await.expect("create");
        let mut writer = store.snapshot_writer(h);
        writer
            .write_chunk(0, SNAPSHOT_END.to_owned())
            .await
            .expect("chunk 0");
        writer.finish().await.expect("finish");
    }
    for (i, h) in handles.iter().enumerate() {
        let entries = (0..=i as u64)
            .map(|op| entry(&format!("100_{}", op * 2), false))
            .collect();
        store.append(h, entries).expect("append");
    }
    let waiters: Vec<_> = handles.iter().map(|h| store.changed(h)).collect();
    store.flush().await.expect("flush");
    for waiter in waiters {
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("every flushed shape wakes");
    }
    for (i, h) in handles.iter().enumerate() {
        let c = chunk(store.read(h, LogOffset::SNAPSHOT_END));
        assert_eq!(c.entries, i + 1);
        assert_eq!(c.end.to_string(), format!("100_{}", i * 2));
    }
}

#[tokio::test]
async fn shapes_are_created_once_and_listed_by_handle() {
    let dir = TempDir::new("create");
    let store = FileStore::open(dir.path()).expect("open");
    store.create_shape(&handle(2)).await.expect("create");
    store.create_shape(&handle(1)).await.expect("create");
    let err = store.create_shape(&handle(1)).await.expect_err("exists");
    assert!(matches!(err, StoreError::ShapeExists { .. }), "{err}");
    let bad = ShapeHandle::from_string("../escape".to_owned());
    let err = store.create_shape(&bad).await.expect_err("invalid");
    assert!(matches!(err, StoreError::InvalidHandle { .. }), "{err}");
    // A half-created shape from a crash is cleared at open and never listed.
    fs::create_dir(dir.path().join(layout::SHAPES_DIR).join(".3-1.creating")).expect("mkdir");
    let again = FileStore::open(dir.path()).expect("reopen");
    assert_eq!(
        again.list_shape_dirs().expect("list"),
        vec![handle(1), handle(2)]
    );
}

#[test]
fn probe_accepts_a_new_directory_and_names_the_path_when_unusable() {
    let dir = TempDir::new("probe");
    let root = dir.path().join("a/b/storage");
    probe_writable(&root).expect("creates and probes");
    assert_eq!(
        fs::read_dir(&root).expect("list").count(),
        0,
        "probe file removed"
    );

    let file = dir.path().join("not-a-dir");
    fs::write(&file, b"x").expect("write");
    let err = probe_writable(&file.join("storage")).expect_err("parent is a file");
    let message = err.to_string();
    assert!(message.contains(&file.display().to_string()), "{message}");
    assert!(message.contains("owns it"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_appended_while_a_flush_is_in_flight_are_durable_after_the_next_flush() {
    // Goal: appends racing a running flush land in the next batch at the right index position
    // (found by the conformance suite: the batch counted only the records durable at its first
    // append, and publishing it panicked). Method: many rounds of flush-in-flight + append.
    let dir = TempDir::new("inflight");
    let h = handle(1);
    let store = store_with_snapshot(&dir, &h).await;
    let mut offsets = Vec::new();
    for round in 1..=40u64 {
        let first = format!("{}_0", round * 10);
        let second = format!("{}_2", round * 10);
        store
            .append(&h, vec![entry(&first, false)])
            .expect("append");
        let in_flight = tokio::spawn(store.flush());
        store
            .append(&h, vec![entry(&second, false)])
            .expect("append");
        in_flight.await.expect("join").expect("flush");
        store.flush().await.expect("flush");
        offsets.push(first);
        offsets.push(second);
    }
    let all: Vec<&str> = offsets.iter().map(String::as_str).collect();
    let last = *all.last().expect("entries");
    assert_eq!(read(&store, &h, "0_inf"), expected(&all, last));
}

/// Creates `handles` in `store`, each with a one-chunk complete snapshot.
async fn create_complete(store: &FileStore, handles: &[ShapeHandle]) {
    for h in handles {
        store.create_shape(h).await.expect("create");
        let mut writer = store.snapshot_writer(h);
        writer
            .write_chunk(0, SNAPSHOT_END.to_owned())
            .await
            .expect("chunk 0");
        writer.finish().await.expect("finish");
    }
}

/// The offsets of `txs` transactions of one entry each, from `100_0` on.
fn offsets(txs: u64) -> Vec<String> {
    (0..txs).map(|tx| format!("{}_0", 100 + tx)).collect()
}

/// Every entry of `h` from the snapshot's end, as the store must serve it.
fn assert_log(store: &FileStore, h: &ShapeHandle, offsets: &[String]) {
    let offsets: Vec<&str> = offsets.iter().map(String::as_str).collect();
    let last = offsets.last().copied().unwrap_or("0_inf");
    assert_eq!(
        read(store, h, "0_inf"),
        expected(&offsets, last),
        "shape {h}"
    );
}

#[tokio::test]
async fn many_shapes_behind_a_small_file_cache_are_written_flushed_read_back_and_reopened() {
    // Goal (issue 12): the store keeps at most its budget of log files open whatever the
    // number of shapes, and serves, flushes and recovers every shape through that budget.
    // Method: 200 shapes with room for 8 open files; one flush of all of them (a file-system
    // sync), one of three (a sync per file); read everything back; reopen and recover.
    let dir = TempDir::new("many-small-cache");
    let budget = OpenFileBudget::new(8);
    let store = FileStore::open_with_budget(dir.path(), budget).expect("open");
    let handles: Vec<ShapeHandle> = (1..=200).map(handle).collect();
    create_complete(&store, &handles).await;
    assert_eq!(
        store.open_files(),
        0,
        "creating a shape leaves no file open"
    );
    let all = offsets(2);
    for h in &handles {
        store
            .append(h, vec![entry(&all[0], false)])
            .expect("append");
    }
    store.flush().await.expect("flush every shape");
    assert!(store.open_files() <= 8, "{} open", store.open_files());
    for h in &handles[..3] {
        store
            .append(h, vec![entry(&all[1], false)])
            .expect("append");
    }
    store.flush().await.expect("flush three shapes");
    for (i, h) in handles.iter().enumerate() {
        let written = if i < 3 { &all[..] } else { &all[..1] };
        assert_log(&store, h, written);
    }
    assert!(store.open_files() <= 8, "{} open", store.open_files());
    drop(store);

    let store = FileStore::open_with_budget(dir.path(), budget).expect("reopen");
    for (i, h) in handles.iter().enumerate() {
        let recovered = store.recover(h).await.expect("recover");
        let latest = if i < 3 { &all[1] } else { &all[0] };
        assert_eq!(recovered.latest, off(latest));
    }
    assert_eq!(store.open_files(), 0, "recovery leaves no file open");
    for h in &handles {
        store
            .append(h, vec![entry("300_0", false)])
            .expect("append");
    }
    store.flush().await.expect("flush after recovery");
    let first = &handles[0];
    assert_eq!(read(&store, first, &all[1]), expected(&["300_0"], "300_0"));
    assert!(store.open_files() <= 8, "{} open", store.open_files());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_racing_evictions_of_their_files_always_get_the_whole_answer() {
    // Goal: a file the cache evicts while a read uses it stays valid for that read, and the
    // next read reopens it. Method: a cache of one file, four threads reading four shapes in
    // turn (every read evicts another's file) while flushes keep appending to a fifth.
    let dir = TempDir::new("evict-during-read");
    let store = FileStore::open_with_budget(dir.path(), OpenFileBudget::new(1)).expect("open");
    let handles: Vec<ShapeHandle> = (1..=5).map(handle).collect();
    create_complete(&store, &handles).await;
    let written = offsets(50);
    for h in &handles[..4] {
        let entries = written.iter().map(|o| entry(o, false)).collect();
        store.append(h, entries).expect("append");
    }
    store.flush().await.expect("flush");
    let writer = {
        let store = store.clone();
        let h = handles[4].clone();
        tokio::spawn(async move {
            for tx in 0..200 {
                let offset = format!("{}_0", 100 + tx);
                store
                    .append(&h, vec![entry(&offset, false)])
                    .expect("append");
                store.flush().await.expect("flush");
            }
        })
    };
    let readers: Vec<_> = handles[..4]
        .iter()
        .map(|h| {
            let (store, h, written) = (store.clone(), h.clone(), written.clone());
            tokio::task::spawn_blocking(move || {
                for _ in 0..300 {
                    assert_log(&store, &h, &written);
                }
            })
        })
        .collect();
    for reader in readers {
        reader.await.expect("reader");
    }
    writer.await.expect("writer");
    assert_log(&store, &handles[4], &offsets(200));
    assert!(store.open_files() <= 1, "{} open", store.open_files());
}

#[tokio::test]
async fn recovery_cuts_torn_tails_through_a_small_file_cache() {
    // Goal: torn-tail recovery works when the logs' files are not kept open. Method: 30
    // shapes flushed twice with room for 2 open files, one shape's last index record torn
    // and another's data cut, then reopened with the same budget and recovered.
    let dir = TempDir::new("torn-small-cache");
    let budget = OpenFileBudget::new(2);
    let handles: Vec<ShapeHandle> = (1..=30).map(handle).collect();
    let written = offsets(2);
    {
        let store = FileStore::open_with_budget(dir.path(), budget).expect("open");
        create_complete(&store, &handles).await;
        for offset in &written {
            for h in &handles {
                store.append(h, vec![entry(offset, false)]).expect("append");
            }
            store.flush().await.expect("flush");
        }
    }
    let (torn_index, torn_data) = (&handles[3], &handles[17]);
    let index = shape_file(&dir, torn_index, layout::LOG_INDEX_FILE);
    truncate(&index, file_len(&index) - 7);
    let data = shape_file(&dir, torn_data, layout::LOG_DATA_FILE);
    truncate(&data, file_len(&data) - 3);

    let store = FileStore::open_with_budget(dir.path(), budget).expect("reopen");
    for h in &handles {
        let recovered = store.recover(h).await.expect("recover");
        let torn = h == torn_index || h == torn_data;
        let kept = if torn { &written[..1] } else { &written[..] };
        assert_eq!(recovered.latest, off(kept.last().expect("one kept")), "{h}");
        assert_log(&store, h, kept);
    }
    assert_eq!(
        file_len(&index),
        layout::INDEX_RECORD_LEN as u64,
        "torn record cut"
    );
    assert_eq!(
        file_len(&data),
        entry_bytes(&[&written[0]]),
        "torn data cut"
    );
    for h in &handles {
        store
            .append(h, vec![entry("300_0", false)])
            .expect("append");
    }
    store.flush().await.expect("flush after recovery");
    assert_eq!(
        read(&store, torn_index, &written[0]),
        expected(&["300_0"], "300_0")
    );
}

/// Shapes in the flush-cost measurement (issue 12: one transaction touching 2,000 shapes).
const MANY_SHAPES: u32 = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn a_flush_of_two_thousand_shapes_measured() {
    // Prints how long flushes of 100 entries into each of 2,000 shapes take (the store's share
    // of acknowledging such a transaction), and checks every entry is durable and served.
    let dir = TempDir::new("flush-many");
    let store = FileStore::open(dir.path()).expect("open");
    let handles: Vec<ShapeHandle> = (1..=MANY_SHAPES).map(handle).collect();
    create_complete(&store, &handles).await;
    for round in 0..3u64 {
        for h in &handles {
            let entries = (0..100)
                .map(|op| entry(&format!("{}_{}", 100 + round, op * 2), false))
                .collect();
            store.append(h, entries).expect("append");
        }
        let started = std::time::Instant::now();
        store.flush().await.expect("flush");
        println!(
            "flush {round}: {MANY_SHAPES} shapes x 100 entries in {:.3} s",
            started.elapsed().as_secs_f64()
        );
    }
    for h in [&handles[0], &handles[1999]] {
        let c = chunk(store.read(h, LogOffset::SNAPSHOT_END));
        assert_eq!(c.end, off("102_198"), "{h}");
    }
}
