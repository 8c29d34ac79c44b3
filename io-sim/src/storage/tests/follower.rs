//! Followers (standbys): they never write and see what a writer on the same disk made
//! durable (io-real's `tests/follower.rs`, mirrored).

use ampere_core::ports::{ReadOutcome, ShapeLogStore, SnapshotWriter};

use super::*;
use crate::storage::{SimDisk, SimStoreError};

fn is_read_only(err: &SimStoreError) -> bool {
    matches!(err, SimStoreError::ReadOnly { .. })
}

#[test]
fn a_follower_sees_what_the_writer_flushed_and_never_what_it_did_not() {
    in_sim(async {
        let disk = SimDisk::new(21);
        let h = handle(1);
        let writer = store_with_snapshot(&disk, &h).await;
        append_and_flush(
            &writer,
            &h,
            vec![entry("100_0", false), entry("100_2", true)],
        )
        .await;

        let follower = SimStore::open(disk.clone(), "b");
        assert!(follower.is_follower());
        assert_eq!(
            read(&follower, &h, "-1"),
            (r#"{"row":1},{"row":"2,}"}"#.into(), 2, "0_0".into())
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
    });
}

// Found by sim: seed 0x9f
#[test]
fn a_transaction_only_partly_durable_is_served_to_no_reader_until_its_last_entry_is() {
    // Goal: RO-1 — a crash mid-flush can leave the first entries of a transaction durable;
    // neither a follower nor the writer serves them (nor reports them as latest) before the
    // transaction's last entry is durable too.
    // Method: flush 100_0 (whole), then 200_0 alone, as a torn flush leaves it; then 200_2.
    in_sim(async {
        let disk = SimDisk::new(22);
        let h = handle(1);
        let writer = store_with_snapshot(&disk, &h).await;
        append_and_flush(&writer, &h, vec![entry("100_0", false)]).await;
        append_and_flush(&writer, &h, vec![mid_transaction_entry("200_0")]).await;
        assert_eq!(offsets(&disk.durable_log(h.as_str())), ["100_0", "200_0"]);

        let follower = SimStore::open(disk.clone(), "b");
        for store in [&follower, &writer] {
            assert_eq!(read(store, &h, "0_inf"), expected(&["100_0"], "100_0"));
            assert_eq!(read(store, &h, "100_0"), expected(&[], "100_0"));
            assert_eq!(store.status(&h).expect("status").latest, off("100_0"));
        }

        append_and_flush(&writer, &h, vec![entry("200_2", false)]).await;
        let torn = mid_transaction_entry("200_0").json;
        let whole = format!("{torn},{}", entry_json("200_2"));
        for store in [&follower, &writer] {
            assert_eq!(read(store, &h, "100_0"), (whole.clone(), 2, "200_2".into()));
            assert_eq!(store.status(&h).expect("status").latest, off("200_2"));
        }
    });
}

#[test]
fn every_write_through_a_follower_is_refused_as_read_only() {
    in_sim(async {
        let disk = SimDisk::new(22);
        let h = handle(1);
        let writer = store_with_snapshot(&disk, &h).await;
        let mutations = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = std::sync::Arc::clone(&mutations);
        disk.set_audit_hook(Box::new(move |m| log.lock().expect("lock").push(m.clone())));

        let follower = SimStore::open(disk.clone(), "b");
        let h2 = handle(2);
        assert!(is_read_only(
            &follower.create_shape(&h2).await.expect_err("create")
        ));
        let err = follower
            .append(&h, vec![entry("100_0", false)])
            .expect_err("append");
        assert!(is_read_only(&err));
        assert!(is_read_only(&follower.flush().await.expect_err("flush")));
        assert!(is_read_only(
            &follower.remove_shape(&h).await.expect_err("remove")
        ));
        assert!(is_read_only(
            &follower.recover(&h).await.expect_err("recover")
        ));
        let mut snapshot = follower.snapshot_writer(&h);
        let err = snapshot
            .write_chunk(0, "{}".into())
            .await
            .expect_err("chunk");
        assert!(is_read_only(&err));
        assert!(is_read_only(&snapshot.finish().await.expect_err("finish")));
        assert!(
            mutations.lock().expect("lock").is_empty(),
            "no mutation at all"
        );
        assert_eq!(read(&follower, &h, "0_inf"), expected(&[], "0_inf"));
        drop(writer);
    });
}

#[test]
fn a_follower_serves_a_snapshot_chunk_once_the_next_one_or_the_marker_is_durable() {
    in_sim(async {
        let disk = SimDisk::new(23);
        let h = handle(1);
        let writer = writer(&disk, "a").await;
        writer.create_shape(&h).await.expect("create");
        let follower = SimStore::open(disk.clone(), "b");
        assert_eq!(follower.read(&h, off("-1")), ReadOutcome::SnapshotPending);
        let mut snapshot = writer.snapshot_writer(&h);
        snapshot.write_chunk(0, "{}".into()).await.expect("chunk 0");
        assert_eq!(follower.read(&h, off("-1")), ReadOutcome::SnapshotPending);
        snapshot
            .write_chunk(1, SNAPSHOT_END.into())
            .await
            .expect("chunk 1");
        assert_eq!(read(&follower, &h, "-1"), ("{}".into(), 1, "0_0".into()));
        assert_eq!(follower.read(&h, off("0_0")), ReadOutcome::SnapshotPending);
        snapshot.finish().await.expect("finish");
        assert_eq!(
            read(&follower, &h, "0_0"),
            (SNAPSHOT_END.into(), 1, "0_1".into())
        );
        assert_eq!(read(&follower, &h, "0_1"), expected(&[], "0_inf"));
    });
}

#[test]
fn changed_fires_once_per_flush_and_on_removal_across_stores_sharing_the_disk() {
    in_sim(async {
        let disk = SimDisk::new(24);
        let h = handle(1);
        let writer = store_with_snapshot(&disk, &h).await;
        let follower = SimStore::open(disk.clone(), "b");
        let quiet = Duration::from_millis(50);
        assert!(
            !resolves(writer.changed(&h), quiet).await,
            "nothing changed yet"
        );

        // Subscribed at call time: a flush before the first poll is not lost.
        let mine = writer.changed(&h);
        let theirs = follower.changed(&h);
        append_and_flush(&writer, &h, vec![entry("100_0", false)]).await;
        assert!(resolves(mine, quiet).await, "the writer's waiter wakes");
        assert!(resolves(theirs, quiet).await, "the follower's waiter wakes");

        // A flush with nothing for this shape is no change.
        let mine = writer.changed(&h);
        let theirs = follower.changed(&h);
        writer.flush().await.expect("flush");
        let (mine_woke, theirs_woke) = tokio::join!(resolves(mine, quiet), resolves(theirs, quiet));
        assert!(!mine_woke, "no durable change");
        assert!(!theirs_woke, "no durable change");

        // Removal wakes both; unknown shapes resolve at once.
        let mine = writer.changed(&h);
        let theirs = follower.changed(&h);
        writer.remove_shape(&h).await.expect("remove");
        assert!(resolves(mine, quiet).await);
        assert!(resolves(theirs, quiet).await);
        assert_eq!(follower.read(&h, off("-1")), ReadOutcome::UnknownShape);
        assert!(resolves(follower.changed(&h), Duration::ZERO).await);
        assert!(resolves(writer.changed(&handle(9)), Duration::ZERO).await);
    });
}

#[test]
fn a_follower_picks_up_shapes_created_after_it_opened_and_promotion_makes_it_write() {
    in_sim(async {
        let disk = SimDisk::new(25);
        let follower = SimStore::open(disk.clone(), "b");
        let h = handle(1);
        assert_eq!(follower.read(&h, off("-1")), ReadOutcome::UnknownShape);
        assert_eq!(follower.status(&h), None);
        let writer = store_with_snapshot(&disk, &h).await;
        append_and_flush(&writer, &h, vec![entry("100_0", false)]).await;
        assert_eq!(read(&follower, &h, "0_inf"), expected(&["100_0"], "100_0"));
        drop(writer);

        // Promoted: a followed shape stays readable, is written only after recovery.
        follower.promote().await.expect("promote");
        assert!(!follower.is_follower());
        assert_eq!(read(&follower, &h, "0_inf"), expected(&["100_0"], "100_0"));
        let err = follower
            .append(&h, vec![entry("200_0", false)])
            .expect_err("not recovered");
        assert!(matches!(err, SimStoreError::NotRecovered { .. }));
        follower.recover(&h).await.expect("recover");
        append_and_flush(&follower, &h, vec![entry("200_0", false)]).await;
        assert_eq!(read(&follower, &h, "100_0"), expected(&["200_0"], "200_0"));
    });
}

// Found by sim: seed 0x2a
#[test]
fn a_writer_that_gave_up_the_lock_follows_the_shapes_the_next_writer_creates() {
    in_sim(async {
        let disk = SimDisk::new(26);
        let h = handle(1);
        let old = store_with_snapshot(&disk, &h).await;
        old.demote();
        assert!(old.is_follower());
        let err = old
            .append(&h, vec![entry("100_0", false)])
            .expect_err("append");
        assert!(is_read_only(&err));

        let next = writer(&disk, "b").await;
        let created = handle(2);
        create_with_snapshot(&next, &created).await;
        append_and_flush(&next, &created, vec![entry("100_0", false)]).await;
        assert_eq!(read(&old, &created, "0_inf"), expected(&["100_0"], "100_0"));

        // Promoted again, it writes the shape once it recovered it.
        old.promote().await.expect("promote");
        old.recover(&created).await.expect("recover");
        append_and_flush(&old, &created, vec![entry("200_0", false)]).await;
        assert_eq!(read(&old, &created, "100_0"), expected(&["200_0"], "200_0"));
    });
}

#[test]
fn a_promoted_store_serves_the_shapes_on_disk_before_recovering_them_and_never_a_removed_one() {
    // Goal: a restart (a promotion) answers reads of a live shape between taking the lease and
    // recovering it, instead of `UnknownShape` (which the HTTP layer turns into a 409 the
    // client takes for lost continuity); a shape removed or never on disk stays unknown.
    // Method: a writer leaves two shapes; a new store is promoted without reading either,
    // reads both, removes one, recovers the other and writes it.
    in_sim(async {
        let disk = SimDisk::new(27);
        let (kept, removed, never) = (handle(1), handle(2), handle(3));
        let old = store_with_snapshot(&disk, &kept).await;
        create_with_snapshot(&old, &removed).await;
        append_and_flush(&old, &kept, vec![entry("100_0", false)]).await;
        drop(old);

        let next = SimStore::open(disk.clone(), "b");
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
        assert!(matches!(err, SimStoreError::NotRecovered { .. }), "{err}");
        next.recover(&kept).await.expect("recover");
        append_and_flush(&next, &kept, vec![entry("200_0", false)]).await;
        assert_eq!(read(&next, &kept, "100_0"), expected(&["200_0"], "200_0"));
    });
}
