//! Reads at every kind of offset, as io-real's `FileStore` answers them (its
//! `tests/store.rs`, mirrored).

use ampere_core::ports::{LogEntry, ReadOutcome, ShapeLogStore, SnapshotWriter};
use ampere_core::LogOffset;

use super::*;
use crate::storage::{SimDisk, SimStoreError};

/// Boundaries after 100_2, 200_2 and 300_0; 400_x open.
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

/// An independent model of §6.2 for replicated offsets.
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

#[test]
fn reads_walk_snapshot_chunks_then_log_chunks_exactly_per_protocol() {
    in_sim(async {
        let disk = SimDisk::new(1);
        let h = handle(1);
        let store = store_with_snapshot(&disk, &h).await;
        append_and_flush(&store, &h, sample_log()).await;

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
        let rest = expected(&["200_0", "200_2"], "200_2");
        assert_eq!(read(&store, &h, "100_inf"), rest);
        assert_eq!(read(&store, &h, "150_3"), rest);
        assert_eq!(read(&store, &h, "200_2"), expected(&["300_0"], "300_0"));
        let open = expected(&["400_0", "400_2"], "400_2");
        assert_eq!(read(&store, &h, "300_0"), open);
        assert_eq!(read(&store, &h, "399_7"), open);
        assert_eq!(read(&store, &h, "400_0"), expected(&["400_2"], "400_2"));
        // Nothing after: empty body, end = latest, also above the latest.
        assert_eq!(read(&store, &h, "400_2"), expected(&[], "400_2"));
        assert_eq!(read(&store, &h, "500_0"), expected(&[], "400_2"));
    });
}

#[test]
fn every_request_offset_gets_the_model_answer_and_the_same_answer_twice() {
    in_sim(async {
        let disk = SimDisk::new(2);
        let h = handle(1);
        let store = store_with_snapshot(&disk, &h).await;
        let log = sample_log();
        append_and_flush(&store, &h, log[..5].to_vec()).await;
        append_and_flush(&store, &h, log[5..].to_vec()).await;

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
    });
}

#[test]
fn unflushed_entries_are_invisible_to_readers() {
    in_sim(async {
        let disk = SimDisk::new(3);
        disk.set_fsync_latency(Duration::from_millis(5), Duration::from_millis(5));
        let h = handle(1);
        let store = store_with_snapshot(&disk, &h).await;
        store
            .append(&h, vec![entry("100_0", false)])
            .expect("append");
        assert_eq!(read(&store, &h, "0_inf"), expected(&[], "0_inf"));
        let flush = tokio::spawn(store.flush());
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(
            read(&store, &h, "0_inf"),
            expected(&[], "0_inf"),
            "in flight is not durable"
        );
        flush.await.expect("join").expect("flush");
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
    });
}

#[test]
fn append_rejects_offsets_that_do_not_increase() {
    in_sim(async {
        let disk = SimDisk::new(4);
        let h = handle(1);
        let store = store_with_snapshot(&disk, &h).await;
        store
            .append(&h, vec![entry("100_2", false)])
            .expect("append");
        for bad in ["100_2", "100_0", "0_inf"] {
            let err = store
                .append(&h, vec![entry(bad, false)])
                .expect_err("must increase");
            assert!(
                matches!(err, SimStoreError::OffsetNotIncreasing { .. }),
                "{err}"
            );
        }
        let err = store
            .append(&h, vec![entry("200_0", false), entry("150_0", false)])
            .expect_err("all or nothing");
        assert!(matches!(err, SimStoreError::OffsetNotIncreasing { .. }));
        store.flush().await.expect("flush");
        assert_eq!(offsets(&disk.durable_log(h.as_str())), ["100_2"]);
        let err = store
            .append(&handle(9), vec![entry("1_0", false)])
            .expect_err("unknown shape");
        assert!(matches!(err, SimStoreError::UnknownShape { .. }));
    });
}

#[test]
fn snapshot_chunks_are_pending_until_durable_and_the_log_until_complete() {
    in_sim(async {
        let disk = SimDisk::new(5);
        let h = handle(1);
        let store = writer(&disk, "a").await;
        store.create_shape(&h).await.expect("create");
        let pending = |after: &str| store.read(&h, off(after)) == ReadOutcome::SnapshotPending;
        assert!(pending("-1"));
        let status = store.status(&h).expect("status");
        assert_eq!(status.latest, LogOffset::SNAPSHOT_END);
        assert!(!status.snapshot_complete);

        let mut snapshot = store.snapshot_writer(&h);
        snapshot
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
        let err = snapshot
            .write_chunk(5, "{}".to_owned())
            .await
            .expect_err("out of order");
        assert!(matches!(err, SimStoreError::SnapshotChunkOutOfOrder { .. }));
        snapshot
            .write_chunk(1, SNAPSHOT_END.to_owned())
            .await
            .expect("chunk 1");
        assert_eq!(
            read(&store, &h, "0_0"),
            (SNAPSHOT_END.into(), 1, "0_1".into())
        );
        assert!(pending("0_1"), "the last chunk is unknown until finish");
        append_and_flush(&store, &h, vec![entry("100_0", false)]).await;
        assert!(
            pending("0_inf"),
            "flushed entries still wait for the snapshot"
        );
        snapshot.finish().await.expect("finish");
        assert!(store.status(&h).expect("status").snapshot_complete);
        for after in ["0_1", "0_9", "0_inf"] {
            assert_eq!(read(&store, &h, after), expected(&["100_0"], "100_0"));
        }

        // Completion and chunks survive a restart.
        let again = writer(&disk, "b").await;
        again.recover(&h).await.expect("recover");
        assert_eq!(
            read(&again, &h, "0_0"),
            (SNAPSHOT_END.into(), 1, "0_1".into())
        );
        assert!(again.status(&h).expect("status").snapshot_complete);
    });
}

#[test]
fn an_empty_table_has_one_chunk_holding_snapshot_end() {
    in_sim(async {
        let disk = SimDisk::new(6);
        let h = handle(1);
        let store = writer(&disk, "a").await;
        store.create_shape(&h).await.expect("create");
        let mut snapshot = store.snapshot_writer(&h);
        let err = store
            .snapshot_writer(&h)
            .finish()
            .await
            .expect_err("no chunk yet");
        assert!(matches!(err, SimStoreError::SnapshotEmpty { .. }));
        snapshot
            .write_chunk(0, SNAPSHOT_END.to_owned())
            .await
            .expect("chunk 0");
        snapshot.finish().await.expect("finish");
        assert_eq!(
            read(&store, &h, "-1"),
            (SNAPSHOT_END.into(), 1, "0_0".into())
        );
        assert_eq!(read(&store, &h, "0_0"), expected(&[], "0_inf"));
        assert_eq!(read(&store, &h, "0_inf"), expected(&[], "0_inf"));
    });
}

#[test]
fn an_unfinished_snapshot_is_not_served_after_a_restart() {
    in_sim(async {
        let disk = SimDisk::new(7);
        let h = handle(1);
        let store = writer(&disk, "a").await;
        store.create_shape(&h).await.expect("create");
        let mut snapshot = store.snapshot_writer(&h);
        snapshot
            .write_chunk(0, r#"{"row":1}"#.to_owned())
            .await
            .expect("chunk 0");
        drop(store);
        let again = writer(&disk, "b").await;
        again.recover(&h).await.expect("recover");
        assert_eq!(again.read(&h, off("-1")), ReadOutcome::SnapshotPending);
        assert!(!again.status(&h).expect("status").snapshot_complete);
        // Rewriting the snapshot starts again at chunk 0.
        let mut snapshot = again.snapshot_writer(&h);
        snapshot
            .write_chunk(0, SNAPSHOT_END.to_owned())
            .await
            .expect("chunk 0 again");
        assert_eq!(
            read(&again, &h, "-1"),
            (SNAPSHOT_END.into(), 1, "0_0".into())
        );
    });
}

#[test]
fn removed_shapes_read_as_unknown_at_once_and_leave_nothing_durable() {
    in_sim(async {
        let disk = SimDisk::new(8);
        disk.set_fsync_latency(Duration::from_millis(3), Duration::from_millis(3));
        let h = handle(1);
        let store = store_with_snapshot(&disk, &h).await;
        append_and_flush(&store, &h, vec![entry("100_0", false)]).await;
        let waiter = store.changed(&h);
        let removal = store.remove_shape(&h);
        assert_eq!(store.read(&h, off("-1")), ReadOutcome::UnknownShape);
        assert_eq!(store.status(&h), None);
        assert!(
            resolves(waiter, Duration::from_secs(5)).await,
            "removal wakes"
        );
        assert_eq!(
            disk.durable_shapes(),
            [h.as_str()],
            "not durable before it resolves"
        );
        removal.await.expect("remove");
        assert!(disk.durable_shapes().is_empty());
        assert_eq!(disk.debris(), (vec![], vec![]));
        let err = store
            .append(&h, vec![entry("200_0", false)])
            .expect_err("removed");
        assert!(matches!(err, SimStoreError::UnknownShape { .. }));
        store
            .remove_shape(&h)
            .await
            .expect("removing twice is fine");
    });
}

#[test]
fn shapes_are_created_once_and_listed_by_handle() {
    in_sim(async {
        let disk = SimDisk::new(9);
        let store = writer(&disk, "a").await;
        store.create_shape(&handle(2)).await.expect("create");
        store.create_shape(&handle(1)).await.expect("create");
        let err = store.create_shape(&handle(1)).await.expect_err("exists");
        assert!(matches!(err, SimStoreError::ShapeExists { .. }), "{err}");
        let bad = ShapeHandle::from_string("../escape".to_owned());
        let err = store.create_shape(&bad).await.expect_err("invalid");
        assert!(matches!(err, SimStoreError::InvalidHandle { .. }), "{err}");
        assert_eq!(store.list_shape_dirs(), vec![handle(1), handle(2)]);
        assert_eq!(
            disk.handles_ever_created(),
            [handle(2).as_str(), handle(1).as_str()]
        );
    });
}

#[test]
fn recovery_reports_the_latest_offset_and_the_open_chunk_bytes() {
    in_sim(async {
        let disk = SimDisk::new(10);
        let h = handle(1);
        let store = store_with_snapshot(&disk, &h).await;
        append_and_flush(&store, &h, sample_log()).await;
        let again = writer(&disk, "b").await;
        let recovered = again.recover(&h).await.expect("recover");
        assert_eq!(recovered.latest, off("400_2"));
        let open: u64 = ["400_0", "400_2"]
            .iter()
            .map(|o| entry_json(o).len() as u64 + 1)
            .sum();
        assert_eq!(recovered.open_chunk_bytes, open);
        // The log continues where recovery left it.
        append_and_flush(&again, &h, vec![entry("500_0", true)]).await;
        let recovered = writer(&disk, "c").await.recover(&h).await.expect("recover");
        assert_eq!(recovered.latest, off("500_0"));
        assert_eq!(recovered.open_chunk_bytes, 0);
        let err = again.recover(&handle(9)).await.expect_err("no such shape");
        assert!(matches!(err, SimStoreError::UnknownShape { .. }));
    });
}
