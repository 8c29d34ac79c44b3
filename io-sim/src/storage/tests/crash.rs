//! Power loss: only durable writes survive a crash, a crash mid-flush leaves a prefix per
//! shape, and restoring an old copy brings its state back.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use ampere_core::ports::{ShapeLogStore, SnapshotWriter};

use super::*;
use crate::storage::{Mutation, MutationKind, SimDisk, SimStoreError};

#[test]
fn flushed_entries_survive_a_crash_and_unflushed_ones_do_not() {
    in_sim(async {
        let disk = SimDisk::new(11);
        disk.set_fsync_latency(Duration::from_millis(1), Duration::from_millis(4));
        let h = handle(1);
        let store = store_with_snapshot(&disk, &h).await;
        append_and_flush(
            &store,
            &h,
            vec![entry("100_0", false), entry("100_2", true)],
        )
        .await;
        append_and_flush(&store, &h, vec![entry("200_0", false)]).await;
        store
            .append(&h, vec![entry("300_0", false)])
            .expect("append");
        drop(store); // The host dies with its buffer.
        disk.crash("a", 99);

        assert_eq!(
            offsets(&disk.durable_log(h.as_str())),
            ["100_0", "100_2", "200_0"]
        );
        let again = writer(&disk, "a").await;
        let recovered = again.recover(&h).await.expect("recover");
        assert_eq!(recovered.latest, off("200_0"));
        assert_eq!(read(&again, &h, "100_2"), expected(&["200_0"], "200_0"));
    });
}

#[test]
fn a_crash_mid_flush_leaves_a_prefix_of_each_batch_never_a_gap() {
    // Goal: F6 — whatever a crash leaves of an in-flight group commit is, per shape, a prefix
    // of that shape's batch; every prefix length is possible.
    // Method: for many entropies, flush two shapes and crash during the fsync latency.
    let outcomes = Arc::new(Mutex::new(BTreeSet::new()));
    let seen = Arc::clone(&outcomes);
    in_sim(async move {
        for entropy in 0..40u64 {
            let disk = SimDisk::new(entropy);
            disk.set_fsync_latency(Duration::from_millis(10), Duration::from_millis(10));
            let (h1, h2) = (handle(1), handle(2));
            let store = store_with_snapshot(&disk, &h1).await;
            create_with_snapshot(&store, &h2).await;
            append_and_flush(&store, &h1, vec![entry("100_0", false)]).await;
            let batch = ["200_0", "200_2", "200_4", "300_0"];
            for h in [&h1, &h2] {
                let entries = batch.iter().map(|o| entry(o, false)).collect();
                store.append(h, entries).expect("append");
            }
            let flush = tokio::spawn(store.flush());
            tokio::time::sleep(Duration::from_millis(5)).await;
            disk.crash("a", entropy);
            let err = flush.await.expect("join").expect_err("lost");
            assert!(matches!(err, SimStoreError::Lost { .. }), "{err}");
            assert_eq!(disk.in_flight("a"), 0);

            let log1 = offsets(&disk.durable_log(h1.as_str()));
            assert_eq!(log1[0], "100_0", "durable before the crash");
            let kept1 = &log1[1..];
            let kept2 = offsets(&disk.durable_log(h2.as_str()));
            for kept in [kept1, &kept2[..]] {
                assert_eq!(kept, &batch[..kept.len()], "a prefix, never a gap");
            }
            seen.lock().expect("lock").insert(kept2.len());
            // The poisoned store refuses more appends to the shapes it lost writes of.
            let err = store
                .append(&h2, vec![entry("400_0", false)])
                .expect_err("poisoned");
            assert!(matches!(err, SimStoreError::ShapeFailed { .. }));
        }
    });
    let outcomes = outcomes.lock().expect("lock").clone();
    assert_eq!(outcomes, (0..=4).collect(), "every prefix length occurs");
}

#[test]
fn snapshot_chunks_and_metadata_in_flight_are_lost_whole() {
    in_sim(async {
        let disk = SimDisk::new(12);
        disk.set_fsync_latency(Duration::from_millis(10), Duration::from_millis(10));
        let h = handle(1);
        let store = writer(&disk, "a").await;
        store.create_shape(&h).await.expect("create");
        let mut snapshot = store.snapshot_writer(&h);
        snapshot
            .write_chunk(0, "{}".to_owned())
            .await
            .expect("chunk 0");
        let chunk = tokio::spawn(async move { snapshot.write_chunk(1, "{}".to_owned()).await });
        tokio::time::sleep(Duration::from_millis(5)).await;
        disk.crash("a", 1);
        assert!(chunk.await.expect("join").is_err());
        assert_eq!(
            disk.durable_snapshot(h.as_str()),
            Some((vec!["{}".to_owned()], false))
        );
    });
}

#[test]
fn a_dropped_flush_future_loses_nothing() {
    in_sim(async {
        let disk = SimDisk::new(13);
        disk.set_fsync_latency(Duration::from_millis(4), Duration::from_millis(4));
        let h = handle(1);
        let store = store_with_snapshot(&disk, &h).await;
        store
            .append(&h, vec![entry("100_0", false)])
            .expect("append");
        drop(store.flush()); // Never polled: its batch waits for the next flush.
        store
            .append(&h, vec![entry("200_0", false)])
            .expect("append");
        let started = store.flush();
        let abandoned = tokio::time::timeout(Duration::from_millis(1), started).await;
        assert!(abandoned.is_err(), "dropped mid-latency");
        store
            .append(&h, vec![entry("300_0", false)])
            .expect("append");
        store.flush().await.expect("flush");
        assert_eq!(
            offsets(&disk.durable_log(h.as_str())),
            ["100_0", "200_0", "300_0"]
        );
    });
}

#[test]
fn entries_appended_while_a_flush_is_in_flight_are_durable_after_the_next_flush() {
    in_sim(async {
        let disk = SimDisk::new(14);
        disk.set_fsync_latency(Duration::from_millis(1), Duration::from_millis(9));
        let h = handle(1);
        let store = store_with_snapshot(&disk, &h).await;
        let mut all = Vec::new();
        for round in 1..=20u64 {
            let first = format!("{}_0", round * 10);
            let second = format!("{}_2", round * 10);
            store
                .append(&h, vec![entry(&first, false)])
                .expect("append");
            let in_flight = tokio::spawn(store.flush());
            store
                .append(&h, vec![entry(&second, false)])
                .expect("append");
            let next = tokio::spawn(store.flush());
            next.await.expect("join").expect("flush");
            in_flight.await.expect("join").expect("flush");
            all.push(first);
            all.push(second);
        }
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let last = *all.last().expect("entries");
        assert_eq!(read(&store, &h, "0_inf"), expected(&all, last));
    });
}

#[test]
fn a_disk_stall_holds_every_write_until_it_ends() {
    in_sim(async {
        let disk = SimDisk::new(15);
        let h = handle(1);
        let store = store_with_snapshot(&disk, &h).await;
        store
            .append(&h, vec![entry("100_0", false)])
            .expect("append");
        let now = turmoil::sim_elapsed().expect("in a simulation");
        disk.stall_until(now + Duration::from_secs(2));
        let flush = tokio::spawn(store.flush());
        tokio::time::sleep(Duration::from_millis(1900)).await;
        assert!(disk.durable_log(h.as_str()).is_empty(), "frozen");
        flush.await.expect("join").expect("flush");
        let done = turmoil::sim_elapsed().expect("in a simulation");
        assert!(done >= now + Duration::from_secs(2), "{done:?}");
        assert_eq!(offsets(&disk.durable_log(h.as_str())), ["100_0"]);
    });
}

#[test]
fn restore_from_an_older_copy_brings_back_the_old_durable_state() {
    // Goal: §2 item 3 — copy the storage at t0, keep writing, restore the copy.
    in_sim(async {
        let disk = SimDisk::new(16);
        let (h1, h2) = (handle(1), handle(2));
        let store = store_with_snapshot(&disk, &h1).await;
        append_and_flush(&store, &h1, vec![entry("100_0", false)]).await;
        let copy = disk.snapshot_copy();
        append_and_flush(&store, &h1, vec![entry("200_0", false)]).await;
        create_with_snapshot(&store, &h2).await;
        store.remove_shape(&h1).await.expect("remove");
        assert_eq!(disk.durable_shapes(), [h2.as_str()]);

        disk.restore_from(&copy);
        assert_eq!(disk.durable_shapes(), [h1.as_str()]);
        assert_eq!(offsets(&disk.durable_log(h1.as_str())), ["100_0"]);
        assert!(copy.handles_ever_created().len() < disk.handles_ever_created().len());
        let again = writer(&disk, "b").await;
        assert_eq!(
            again.recover(&h1).await.expect("recover").latest,
            off("100_0")
        );
        // The copy itself is independent of the disk it came from.
        append_and_flush(&again, &h1, vec![entry("300_0", false)]).await;
        assert_eq!(offsets(&copy.durable_log(h1.as_str())), ["100_0"]);
    });
}

#[test]
fn the_audit_hook_sees_every_mutation_with_its_writer_before_it_takes_effect() {
    in_sim(async {
        let disk = SimDisk::new(17);
        let seen: Arc<Mutex<Vec<(Mutation, usize)>>> = Arc::default();
        let (log, probe) = (Arc::clone(&seen), disk.clone());
        disk.set_audit_hook(Box::new(move |m| {
            // Called before the effect: a create's shape is not there yet.
            let shapes = probe.durable_shapes().len();
            log.lock().expect("lock").push((m.clone(), shapes));
        }));
        let h = handle(1);
        let store = store_with_snapshot(&disk, &h).await;
        append_and_flush(
            &store,
            &h,
            vec![entry("100_0", false), entry("100_2", true)],
        )
        .await;
        store.remove_shape(&h).await.expect("remove");

        let seen = seen.lock().expect("lock").clone();
        let kinds: Vec<MutationKind> = seen.iter().map(|(m, _)| m.kind.clone()).collect();
        assert_eq!(
            kinds,
            [
                MutationKind::LeaseAcquired { generation: 1 },
                MutationKind::CreateShape,
                MutationKind::SnapshotChunk { index: 0 },
                MutationKind::SnapshotChunk { index: 1 },
                MutationKind::SnapshotComplete,
                MutationKind::AppendDurable {
                    entries: 2,
                    last: off("100_2")
                },
                MutationKind::RemoveShape,
            ]
        );
        assert_eq!(seen[1].1, 0, "the hook runs before the shape exists");
        for (m, _) in &seen {
            assert_eq!(m.writer, "a");
        }
        for (m, _) in &seen[1..] {
            assert_eq!(m.handle.as_deref(), Some(h.as_str()));
        }
    });
}

#[test]
fn a_crash_mid_create_or_remove_leaves_debris_that_promotion_clears_audited() {
    in_sim(async {
        let disk = SimDisk::new(18);
        disk.set_fsync_latency(Duration::from_millis(10), Duration::from_millis(10));
        // Find entropies that leave debris for both: the coin is the crash's first draw.
        let store = writer(&disk, "a").await;
        create_with_snapshot(&store, &handle(1)).await;
        let mut entropy = 0;
        loop {
            let h = handle(100 + entropy);
            let create = tokio::spawn(store.create_shape(&h));
            tokio::time::sleep(Duration::from_millis(5)).await;
            disk.crash("a", u64::from(entropy));
            assert!(create.await.expect("join").is_err());
            if !disk.debris().0.is_empty() {
                break;
            }
            entropy += 1;
        }
        let kinds: Arc<Mutex<Vec<(String, MutationKind)>>> = Arc::default();
        let log = Arc::clone(&kinds);
        disk.set_audit_hook(Box::new(move |m| {
            log.lock()
                .expect("lock")
                .push((m.writer.clone(), m.kind.clone()));
        }));
        let follower = SimStore::open(disk.clone(), "b");
        assert_eq!(disk.debris().0.len(), 1, "a follower clears nothing");
        follower.promote().await.expect("promote");
        assert_eq!(disk.debris(), (vec![], vec![]));
        assert_eq!(
            kinds.lock().expect("lock").clone(),
            [
                (
                    "b".to_owned(),
                    MutationKind::LeaseAcquired { generation: 2 }
                ),
                ("b".to_owned(), MutationKind::PromoteCleanup)
            ]
        );
        assert_eq!(disk.durable_shapes(), [handle(1).as_str()]);
    });
}

#[test]
fn a_crash_mid_remove_either_keeps_the_shape_or_leaves_it_in_the_trash() {
    in_sim(async {
        let mut outcomes = BTreeSet::new();
        for entropy in 0..16u64 {
            let disk = SimDisk::new(entropy);
            disk.set_fsync_latency(Duration::from_millis(10), Duration::from_millis(10));
            let h = handle(1);
            let store = store_with_snapshot(&disk, &h).await;
            let removal = tokio::spawn(store.remove_shape(&h));
            tokio::time::sleep(Duration::from_millis(5)).await;
            disk.crash("a", entropy);
            assert!(removal.await.expect("join").is_err());
            let outcome = (disk.durable_shapes().len(), disk.debris().1.len());
            assert!([(1, 0), (0, 1)].contains(&outcome), "{outcome:?}");
            outcomes.insert(outcome);
        }
        assert_eq!(outcomes.len(), 2, "both outcomes occur");
    });
}

/// One scripted run's audit trail, times included.
fn audit_trail(seed: u64) -> Vec<Mutation> {
    let trail: Arc<Mutex<Vec<Mutation>>> = Arc::default();
    let log = Arc::clone(&trail);
    in_sim(async move {
        let disk = SimDisk::new(seed);
        disk.set_fsync_latency(Duration::from_millis(1), Duration::from_millis(30));
        disk.set_audit_hook(Box::new(move |m| log.lock().expect("lock").push(m.clone())));
        let h = handle(1);
        let store = store_with_snapshot(&disk, &h).await;
        for tx in 1..=5u64 {
            store
                .append(&h, vec![entry(&format!("{tx}_0"), false)])
                .expect("append");
            let flush = tokio::spawn(store.flush());
            if tx == 4 {
                tokio::time::sleep(Duration::from_millis(2)).await;
                disk.crash("a", seed);
                let _ = flush.await.expect("join");
                break; // The host is gone.
            }
            flush.await.expect("join").expect("flush");
        }
    });
    let trail = trail.lock().expect("lock").clone();
    trail
}

#[test]
fn the_same_seed_gives_the_same_audit_trail_to_the_nanosecond() {
    assert_eq!(audit_trail(0x5eed), audit_trail(0x5eed));
    assert_ne!(
        audit_trail(0x5eed),
        audit_trail(0x5eee),
        "latencies depend on the seed"
    );
}
