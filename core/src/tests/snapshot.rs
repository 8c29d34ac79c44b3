//! Stitching a shape's initial snapshot to the replication stream (deploy-semantics
//! SN-1..SN-6): buffering, holding the confirmed position, visibility filtering.

use std::time::Duration;

use super::harness::{
    entries, flushes, items, kinds, offsets, others, removed, snapshot, Harness, Txn, COMMIT_RECORD,
};
use crate::instance::{Input, Output};
use crate::lsn::Lsn;
use crate::snapshot::{FullXid, PgSnapshot};

fn insert(xid: u32, commit_lsn: u64, id: &str) -> Txn {
    Txn::new(xid, commit_lsn).insert(&items(), &[id, "t", "1"])
}

/// The `(snapshot recorded, filter done)` of each `PersistShape` among `out`.
fn persisted(out: &[Output]) -> Vec<(bool, bool)> {
    out.iter()
        .filter_map(|o| match o {
            Output::PersistShape { shape } => {
                Some((shape.snapshot.is_some(), shape.snapshot_filter_done))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_snapshotting_shape_buffers_transactions_and_holds_the_position_below_them() {
    // Goal: SN-4 / RP-3: while the snapshot runs, routed transactions are buffered, not
    // appended, and the confirmed position stays at or below the oldest of them, whatever
    // else commits or the server reports.
    // Method: a snapshotting shape; commits on its table and on another; keepalives ahead.
    let mut h = Harness::active();
    h.create_shape(&items());
    h.take();
    h.commit(&insert(700, 0x2000, "1"));
    h.commit(&Txn::new(701, 0x3000).insert(&others(), &["1", "v"]));
    h.commit(&insert(702, 0x4000, "2"));
    h.keepalive(Lsn(0x5000), true);
    h.advance(Duration::from_secs(30));
    let out = h.take();
    assert!(!kinds(&out).contains(&"Append"), "{:?}", kinds(&out));
    assert!(!kinds(&out).contains(&"FlushLogs"));
    assert!(!flushes(&out).is_empty());
    assert!(
        flushes(&out).iter().all(|f| *f <= Lsn(0x2000)),
        "{:?}",
        flushes(&out)
    );
}

#[test]
fn transactions_on_other_tables_do_not_wait_for_a_snapshot() {
    // Goal: only transactions routed to a snapshotting shape are held.
    // Method: a snapshotting shape on items; a commit on others.
    let mut h = Harness::active();
    h.create_shape(&items());
    h.take();
    h.commit(&Txn::new(700, 0x2000).insert(&others(), &["1", "v"]));
    assert_eq!(flushes(&h.take()), [Lsn(0x2001)]);
}

#[test]
fn a_taken_snapshot_skips_visible_transactions_and_appends_the_others() {
    // Goal: SN-4: once (xmin, xmax, xip) is known, buffered transactions the snapshot saw
    // are skipped and the rest appended (an xid in xip included), then flushed, and only
    // then does the position pass them.
    // Method: buffer xids 700 (< xmin), 702 (in xip) and 703 (in range, not in xip); the
    // snapshot is 702:705:702.
    let mut h = Harness::active();
    let (handle, op) = h.create_shape(&items());
    h.take();
    h.commit(&insert(700, 0x2000, "1"));
    h.commit(&insert(702, 0x3000, "2"));
    h.commit(&insert(703, 0x4000, "3"));
    h.take();

    h.snapshot_taken(op, snapshot("702:705:702"));
    let out = h.take();
    assert_eq!(kinds(&out), ["PersistShape", "Append", "FlushLogs"]);
    assert_eq!(persisted(&out), [(true, false)]);
    assert_eq!(
        offsets(&entries(&out, &handle)),
        ["12288_0"],
        "only xid 702"
    );

    h.complete_flush();
    assert_eq!(flushes(&h.take()), [Lsn(0x4001)]);
}

#[test]
fn an_xid_at_or_above_xmax_ends_filtering_for_good() {
    // Goal: SN-4: the first transaction that started after the snapshot ends filtering, and
    // that fact is persisted once (PersistShape with snapshot_filter_done = true), when its
    // entry is durable (`filter-end-durable`).
    // Method: snapshot 702:705:702 taken with nothing buffered; commit xids 703 (visible:
    // skipped), 705 (after: appended, filtering ends), 702 (in xip), 706.
    let mut h = Harness::active();
    let (handle, op) = h.create_shape(&items());
    h.snapshot_taken(op, snapshot("702:705:702"));
    h.take();
    h.commit(&insert(703, 0x2000, "1"));
    let out = h.take();
    assert!(entries(&out, &handle).is_empty());
    assert_eq!(
        flushes(&out),
        [Lsn(0x2001)],
        "a skipped transaction is durable at once"
    );

    h.commit(&insert(705, 0x3000, "2"));
    let out = h.take();
    assert_eq!(kinds(&out), ["Append", "FlushLogs"]);
    assert!(persisted(&out).is_empty(), "not durable yet");
    h.complete_flush();
    assert_eq!(persisted(&h.take()), [(true, true)]);
    h.commit(&insert(702, 0x4000, "3"));
    h.commit(&insert(706, 0x5000, "4"));
    let out = h.take();
    assert!(persisted(&out).is_empty(), "persisted once");
    assert_eq!(offsets(&entries(&out, &handle)), ["16384_0", "20480_0"]);
}

#[test]
fn visibility_is_decided_in_64_bits_across_an_epoch_boundary() {
    // Goal: SN-5: pgoutput's 32-bit xids are widened against xmax's epoch before comparing.
    // Method: a snapshot in epoch 1 whose xip holds (1 << 32) + 3; buffer xid 3 (in xip:
    // appended) and xid u32::MAX (epoch 0, long finished: skipped).
    let mut h = Harness::active();
    let (handle, op) = h.create_shape(&items());
    h.take();
    h.commit(&insert(u32::MAX, 0x2000, "1"));
    h.commit(&insert(3, 0x3000, "2"));
    let e = 1u64 << 32;
    let snap = PgSnapshot {
        xmin: FullXid(e + 2),
        xmax: FullXid(e + 5),
        xip: vec![FullXid(e + 3)],
    };
    h.snapshot_taken(op, snap);
    assert_eq!(offsets(&entries(&h.take(), &handle)), ["12288_0"]);
}

#[test]
fn a_snapshot_that_saw_every_buffered_transaction_releases_the_position() {
    // Goal: RP-3 / SN-4 liveness: transactions the snapshot already contains need no flush;
    // once the snapshot is known they are durable and the position moves past them (else
    // the slot pins WAL until some unrelated append happens).
    // Method: buffer one transaction, take a snapshot that saw it, then a keepalive.
    let mut h = Harness::active();
    let (handle, op) = h.create_shape(&items());
    h.take();
    h.commit(&insert(700, 0x2000, "1"));
    h.snapshot_taken(op, snapshot("800:800:"));
    h.keepalive(Lsn(0x2000 + COMMIT_RECORD), false);
    while h.pending_flush().is_some() {
        h.complete_flush();
    }
    assert!(entries(&h.take(), &handle).is_empty());
    assert!(
        h.core().acked_lsn() > Lsn(0x2000),
        "position stuck at {} after the snapshot saw commit 0/2000",
        h.core().acked_lsn()
    );
}

#[test]
fn a_failed_snapshot_releases_the_transactions_it_held() {
    // Goal: a shape whose snapshot fails is removed, and what it held no longer pins the
    // position.
    // Method: buffer one transaction, fail the snapshot, then a keepalive.
    let mut h = Harness::active();
    let (handle, op) = h.create_shape(&items());
    h.take();
    h.commit(&insert(700, 0x2000, "1"));
    h.input(Input::SnapshotFailed { op, refusal: None });
    assert_eq!(removed(&h.take()), [handle]);
    h.keepalive(Lsn(0x2000 + COMMIT_RECORD), false);
    while h.pending_flush().is_some() {
        h.complete_flush();
    }
    assert!(
        h.core().acked_lsn() > Lsn(0x2000),
        "position stuck at {} after the snapshot failed",
        h.core().acked_lsn()
    );
}

#[test]
fn after_a_reconnect_buffered_transactions_are_replayed_to_the_reloaded_shape() {
    // Goal: ack-after-durable across a reconnect. Formerly a hold survived the reconnect in
    // memory; now every in-memory shape is dropped (LK-6): the snapshotting shape is gone
    // (its snapshot never completed: the next lock holder removes it, SN-6), the live one is
    // reloaded from storage, and the slot re-delivers what was not acknowledged, so the
    // reloaded shape gets what it had not made durable.
    // Method: L live on items (whole), S snapshotting on items (some columns). T0 appends to
    // L and starts a flush; T1 appends to L behind it and is buffered by S. The stream drops,
    // the running flush completes (T0 durable, T1 never flushed), the setup reruns and the
    // slot replays T0 and T1 from its position; S's late snapshot reply is ignored.
    let mut h = Harness::active();
    let l = h.live_shape(&items());
    let s_op = h.request(
        super::harness::selecting(&items(), &["id", "title"]),
        &items(),
    );
    let s = created_for(&h.take(), s_op);
    let t0 = insert(700, 0x2000, "1");
    let t1 = insert(701, 0x3000, "2");
    h.commit(&t0);
    h.commit(&t1);
    let out = h.take();
    assert_eq!(offsets(&entries(&out, &l)), ["8192_0", "12288_0"]);
    assert!(
        flushes(&out).iter().all(|f| *f <= Lsn(0x2000)),
        "S holds T0"
    );

    h.lose_replication();
    h.complete_flush(); // the ledger fails here if a status passed T1
    h.advance(Duration::from_secs(1));
    h.start(super::harness::START_LSN); // the last status the slot received
    let out = h.take();
    assert_eq!(removed(&out), [s], "incomplete: removed by the lock holder");
    h.commit(&t0);
    h.commit(&t1);
    h.snapshot_taken(s_op, snapshot("700:702:700"));
    let out = h.take();
    assert_eq!(
        offsets(&entries(&out, &l)),
        ["12288_0"],
        "T0 is durable in L, T1 reaches it again: {:?}",
        kinds(&out)
    );
    while h.pending_flush().is_some() {
        h.complete_flush();
    }
    assert_eq!(h.core().acked_lsn(), Lsn(0x3001));
}

/// The handle of the shape `CreateShape` made for request `op`.
fn created_for(out: &[Output], op: crate::OpId) -> crate::shape::ShapeHandle {
    out.iter()
        .find_map(|o| match o {
            Output::CreateShape { op: o, shape, .. } if *o == op => Some(shape.handle.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("expected CreateShape: {:?}", kinds(out)))
}

#[test]
fn a_truncate_after_the_snapshot_removes_the_shape_once_the_snapshot_is_known() {
    // Goal: a TRUNCATE buffered during the snapshot invalidates the shape if the snapshot
    // did not see it.
    // Method: buffer a TRUNCATE by xid 705; the snapshot is 702:705:.
    let mut h = Harness::active();
    let (handle, op) = h.create_shape(&items());
    h.take();
    h.commit(&Txn::new(705, 0x2000).truncate(&[&items()]));
    assert!(
        removed(&h.take()).is_empty(),
        "not before the snapshot is known"
    );
    h.snapshot_taken(op, snapshot("702:705:"));
    let out = h.take();
    assert_eq!(removed(&out), std::slice::from_ref(&handle));
    assert!(entries(&out, &handle).is_empty());
}

#[test]
fn a_truncate_the_snapshot_already_saw_keeps_the_shape() {
    // Goal: the snapshot's rows already reflect a TRUNCATE it saw: no invalidation.
    // Method: buffer a TRUNCATE by xid 700; the snapshot is 702:705:.
    let mut h = Harness::active();
    let (handle, op) = h.create_shape(&items());
    h.take();
    h.commit(&Txn::new(700, 0x2000).truncate(&[&items()]));
    h.snapshot_taken(op, snapshot("702:705:"));
    assert!(removed(&h.take()).is_empty());
    h.commit(&insert(705, 0x3000, "1"));
    assert_eq!(offsets(&entries(&h.take(), &handle)), ["12288_0"]);
}

/// The `log=changes_only` shape of every column of `items`.
fn changes_only_items() -> crate::shape::ShapeDefinition {
    crate::shape::ShapeDefinition {
        log: crate::shape::LogMode::ChangesOnly,
        ..super::harness::whole(&items())
    }
}

#[test]
fn a_changes_only_shape_is_its_own_shape_and_asks_for_a_changes_only_snapshot() {
    // Goal: ID-1: the log mode is part of a shape's identity: a changes_only request beside a
    // full shape of the same table gets a shape (and handle) of its own, a second request for
    // it gets that same handle, and its snapshot request says changes_only, so the adapter
    // reads no rows (`snapshot_steps::take`).
    // Method: a full shape of items, then the changes_only definition twice.
    let mut h = Harness::active();
    let (full, _) = h.create_shape(&items());
    h.take();
    let op = h.request(changes_only_items(), &items());
    let out = h.take();
    let [Output::CreateShape {
        shape, snapshot, ..
    }] = &out[..]
    else {
        panic!("expected one CreateShape: {:?}", kinds(&out));
    };
    assert_ne!(shape.handle, full);
    assert_eq!(shape.definition, changes_only_items());
    assert_eq!(snapshot.definition.log, crate::shape::LogMode::ChangesOnly);
    let handle = created_for(&out, op);
    h.request(changes_only_items(), &items());
    assert!(
        matches!(&h.take()[..], [Output::ShapeExists { handle: again, .. }] if *again == handle)
    );
}

#[test]
fn a_changes_only_shape_skips_what_its_snapshot_saw_and_logs_only_what_came_after() {
    // Goal: SN-4 holds for changes_only as for full shapes: its snapshot logged no rows, so
    // a transaction it saw must not reach the log either (it would hand the client a change
    // from before the snapshot), and every one it did not see must (else it is lost).
    // Method: a changes_only shape; buffer xids 700 (< xmin), 702 (in xip), 703 (in range,
    // not in xip); the snapshot is 702:705:702; then 704 (seen: skipped) and 705 (after).
    let mut h = Harness::active();
    let op = h.request(changes_only_items(), &items());
    let handle = created_for(&h.take(), op);
    h.commit(&insert(700, 0x2000, "1"));
    h.commit(&insert(702, 0x3000, "2"));
    h.commit(&insert(703, 0x4000, "3"));
    h.take();
    h.snapshot_taken(op, snapshot("702:705:702"));
    let out = h.take();
    assert_eq!(
        offsets(&entries(&out, &handle)),
        ["12288_0"],
        "only xid 702, which the snapshot did not see"
    );
    h.complete_flush();
    h.take();
    h.commit(&insert(704, 0x5000, "4"));
    assert!(entries(&h.take(), &handle).is_empty(), "xid 704: seen");
    h.commit(&Txn::new(705, 0x6000).update(&items(), &["1", "t", "1"], &["1", "u", "1"]));
    let out = h.take();
    let appended = entries(&out, &handle);
    assert_eq!(offsets(&appended), ["24576_0"]);
    assert!(
        appended[0].json.contains(r#""operation":"update""#),
        "{}",
        appended[0].json
    );
}
