//! Booting over shapes recovered from storage: the lock holder loads them (`LoadStorage`)
//! and continues their logs.

use super::harness::{
    entries, flushes, identity, items, kinds, offsets, removed, snapshot, whole, Harness, Txn,
    START_LSN,
};
use crate::instance::{Output, RecoveredShape};
use crate::lsn::Lsn;
use crate::offset::LogOffset;
use crate::ports::{RecoveredLog, StoredShape};
use crate::shape::{HandleStamp, ShapeHandle};
use crate::snapshot::PgSnapshot;

const STAMP: HandleStamp = HandleStamp(1_700_000_000_000_000);

fn stored_items(snapshot: Option<PgSnapshot>, filter_done: bool) -> StoredShape {
    let definition = whole(&items());
    StoredShape {
        handle: ShapeHandle::mint(definition.identity(), STAMP),
        definition,
        schema: items(),
        snapshot,
        snapshot_filter_done: filter_done,
    }
}

fn recovered(stored: StoredShape, latest: LogOffset, open_chunk_bytes: u64) -> RecoveredShape {
    RecoveredShape {
        stored,
        log: RecoveredLog {
            latest,
            open_chunk_bytes,
        },
    }
}

/// An instance over a storage directory holding `shapes` and following the default slot
/// up to [`START_LSN`]; not connected yet.
fn over(shapes: Vec<RecoveredShape>) -> Harness {
    over_with(Harness::config(), shapes)
}

fn over_with(config: crate::instance::Config, shapes: Vec<RecoveredShape>) -> Harness {
    Harness::with_storage(config, shapes, STAMP, Some(identity(START_LSN)))
}

/// An instance booted over `shapes`, active on the slot at [`START_LSN`], outputs taken.
fn booted(shapes: Vec<RecoveredShape>) -> Harness {
    let mut h = over(shapes);
    h.start(START_LSN);
    h.take();
    h
}

fn insert(xid: u32, commit_lsn: u64, ids: &[&str]) -> Txn {
    ids.iter().fold(Txn::new(xid, commit_lsn), |t, id| {
        t.insert(&items(), &[id, "t", "1"])
    })
}

#[test]
fn a_recovered_shape_drops_replayed_entries_and_continues_its_offsets() {
    // Goal: RC-3 after a restart: entries at or below the recovered latest offset are not
    // appended again, a transaction cut by a torn tail is completed, and later ones follow.
    // Method: recover a live shape whose log ends at 0x2000_2; the slot replays 0x2000
    // (three inserts), then 0x3000 arrives.
    let stored = stored_items(Some(snapshot("600:600:")), true);
    let handle = stored.handle.clone();
    let latest = LogOffset::change(Lsn(0x2000), 2);
    let mut h = booted(vec![recovered(stored, latest, 0)]);

    h.commit(&insert(700, 0x2000, &["1", "2", "3"]));
    let out = h.take();
    let replayed = entries(&out, &handle);
    assert_eq!(
        offsets(&replayed),
        ["8192_4"],
        "only the entry past the torn tail"
    );
    assert!(replayed[0].json.ends_with(r#""last":true}}"#));
    h.complete_flush();

    h.commit(&insert(701, 0x3000, &["4"]));
    assert_eq!(offsets(&entries(&h.take(), &handle)), ["12288_0"]);
}

#[test]
fn a_fully_replayed_transaction_is_confirmed_without_a_flush() {
    // Goal: a replay that a recovered shape already holds durably needs no flush.
    // Method: recover a shape ending at 0x2000_2; replay exactly those two entries.
    let stored = stored_items(Some(snapshot("600:600:")), true);
    let latest = LogOffset::change(Lsn(0x2000), 2);
    let mut h = booted(vec![recovered(stored, latest, 0)]);
    h.commit(&insert(700, 0x2000, &["1", "2"]));
    let out = h.take();
    assert_eq!(kinds(&out), ["PersistIdentity", "SendStandbyStatus"]);
    assert_eq!(flushes(&out), [Lsn(0x2001)]);
}

#[test]
fn a_recovered_shape_still_filtering_keeps_filtering_by_its_snapshot() {
    // Goal: the snapshot filter state survives a restart: visible transactions are skipped,
    // invisible ones appended, and an xid ≥ xmax ends filtering (persisted).
    // Method: recover a shape with snapshot 702:705:702, filtering not done; commit xids
    // 703 (visible), 702 (in xip), 705 (after).
    let stored = stored_items(Some(snapshot("702:705:702")), false);
    let handle = stored.handle.clone();
    let mut h = booted(vec![recovered(stored, LogOffset::SNAPSHOT_END, 0)]);
    h.commit(&insert(703, 0x2000, &["1"]));
    assert!(entries(&h.take(), &handle).is_empty());
    h.commit(&insert(702, 0x3000, &["2"]));
    h.complete_flush();
    h.commit(&insert(705, 0x4000, &["3"]));
    let out = h.take();
    assert_eq!(offsets(&entries(&out, &handle)), ["12288_0", "16384_0"]);
    let filter_done = |out: &[Output]| {
        out.iter().any(|o| {
            matches!(o, Output::PersistShape { shape } if shape.snapshot_filter_done && shape.handle == handle)
        })
    };
    // `filter-end-durable`: persisted only once 705's entry is durable.
    assert!(!filter_done(&out), "{:?}", kinds(&out));
    h.complete_flush();
    let out = h.take();
    assert!(filter_done(&out), "{:?}", kinds(&out));
}

#[test]
fn a_recovered_shape_is_refused_until_the_core_is_active() {
    // Goal: the core holds no shapes before it holds the lock and has loaded storage (LK-6,
    // RO-1: until then the driver serves existing shapes read-only from storage), so a
    // request is refused (503) even for a stored definition; once active, the stored shape
    // answers with its handle. (Formerly a recovered shape answered before streaming: the
    // core no longer receives shapes at boot.)
    // Method: storage holds a shape; request its definition while the lock is busy, then
    // after the whole setup.
    let stored = stored_items(Some(snapshot("600:600:")), true);
    let handle = stored.handle.clone();
    let mut h = over(vec![recovered(stored, LogOffset::SNAPSHOT_END, 0)]);
    h.connect();
    h.lock(false);
    h.take();
    h.request(whole(&items()), &items());
    assert_eq!(kinds(&h.take()), ["ShapeRefused"]);

    h.advance(std::time::Duration::from_secs(1));
    h.lock(true);
    h.load_storage();
    h.start_streaming(START_LSN, false);
    h.take();
    h.request(whole(&items()), &items());
    assert!(matches!(&h.take()[..], [Output::ShapeExists { handle: h, .. }] if *h == handle));
}

#[test]
fn a_recovered_shape_without_a_complete_snapshot_is_not_restored() {
    // Goal: SN-6: a shape whose snapshot never completed is not served but removed by the
    // lock holder; its definition gets a new shape.
    // Method: boot over a stored shape with no snapshot; request its definition.
    let stored = stored_items(None, false);
    let old = stored.handle.clone();
    let mut h = over(vec![recovered(stored, LogOffset::SNAPSHOT_END, 0)]);
    h.start(START_LSN);
    assert_eq!(removed(&h.take()), std::slice::from_ref(&old));
    assert!(h.stored_handles().is_empty());
    h.request(whole(&items()), &items());
    let out = h.take();
    let Some(Output::CreateShape { shape, stamp, .. }) = out.first() else {
        panic!("expected CreateShape: {:?}", kinds(&out))
    };
    assert_ne!(shape.handle, old);
    assert!(
        *stamp > STAMP,
        "stamps stay above the stored high-water mark"
    );
}

#[test]
fn new_handles_stay_above_the_recovered_stamp_even_if_the_clock_is_behind() {
    // Goal: a handle is never reissued across restarts, whatever the wall clock says.
    // Method: boot with the stored stamp; request with a wall clock far behind it.
    let mut h = booted(Vec::new());
    h.request_at(whole(&items()), &items(), 5);
    let out = h.take();
    let Some(Output::CreateShape { stamp, .. }) = out.first() else {
        panic!("expected CreateShape: {:?}", kinds(&out))
    };
    assert_eq!(*stamp, HandleStamp(STAMP.0 + 1));
}

#[test]
fn a_recovered_open_chunk_counts_toward_the_next_boundary() {
    // Goal: the chunk being filled when the process stopped keeps its byte count.
    // Method: 500-byte chunks, 450 bytes already open: the first new entry closes it.
    let mut config = Harness::config();
    config.chunk_bytes_threshold = 500;
    let stored = stored_items(Some(snapshot("600:600:")), true);
    let handle = stored.handle.clone();
    let mut h = over_with(
        config,
        vec![recovered(stored, LogOffset::SNAPSHOT_END, 450)],
    );
    h.start(START_LSN);
    h.take();
    h.commit(&insert(700, 0x2000, &["1", "2"]));
    let flags: Vec<bool> = entries(&h.take(), &handle)
        .iter()
        .map(|e| e.chunk_end)
        .collect();
    assert_eq!(flags, [true, false]);
}
