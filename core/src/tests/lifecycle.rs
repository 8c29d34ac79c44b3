//! The connection lifecycle (deploy-semantics §1.1–1.3, §1.10): polling the advisory lock,
//! the lock breaker, `waiting` versus `active`, what stops when the lock is lost, and the
//! continuity check that decides a purge.

use std::time::Duration;

use super::harness::{
    count, early_snapshot, entries, flushes, identity, items, kind, kinds, offsets, others,
    persisted_identities, removed, selecting, snapshot, system, table, whole, Harness, Step, Txn,
    COMMIT_RECORD, START_LSN,
};
use crate::instance::{Health, Output, RecoveredShape};
use crate::lsn::Lsn;
use crate::offset::LogOffset;
use crate::ports::{DisconnectKind, RecoveredLog, StorageIdentity, StoredShape, SystemIdentity};
use crate::shape::{HandleStamp, ShapeHandle, TableSchema};
use crate::OpId;

const STAMP: HandleStamp = HandleStamp(1_700_000_000_000_000);
const SECOND: Duration = Duration::from_secs(1);

/// A stored whole-table shape on `schema`: live if `complete`, else its snapshot never
/// finished.
fn stored(schema: &TableSchema, complete: bool) -> RecoveredShape {
    let definition = whole(schema);
    RecoveredShape {
        stored: StoredShape {
            handle: ShapeHandle::mint(definition.identity(), STAMP),
            definition,
            schema: schema.clone(),
            snapshot: complete.then(early_snapshot),
            snapshot_filter_done: complete,
        },
        log: RecoveredLog {
            latest: LogOffset::SNAPSHOT_END,
            open_chunk_bytes: 0,
        },
    }
}

/// An instance over a storage directory holding `shapes` and `identity`; not connected.
fn over(shapes: Vec<RecoveredShape>, identity: Option<StorageIdentity>) -> Harness {
    Harness::with_storage(Harness::config(), shapes, STAMP, identity)
}

fn insert(xid: u32, commit_lsn: u64, id: &str) -> Txn {
    Txn::new(xid, commit_lsn).insert(&items(), &[id, "t", "1"])
}

fn position(out: &[Output], of: &str) -> Option<usize> {
    out.iter().position(|o| kind(o) == of)
}

/// What [`keep_lock_busy`] saw.
#[derive(Debug, Default)]
struct Busy {
    /// Seconds after the start at which the breaker's query was issued.
    queries: Vec<u64>,
    /// The `own_pid` of each query.
    own_pids: Vec<i32>,
    /// Seconds after the start at which a backend was terminated, and its pid.
    terminated: Vec<(u64, i32)>,
    /// Every output.
    out: Vec<Output>,
}

impl Busy {
    fn saw(&mut self, outputs: Vec<Output>, t: u64) {
        for o in outputs {
            match &o {
                Output::FindStaleLockHolders { slot, own_pid, .. } => {
                    assert_eq!(
                        slot,
                        &Harness::config().target.slot,
                        "LK-1: keyed by the slot"
                    );
                    self.queries.push(t);
                    self.own_pids.push(*own_pid);
                }
                Output::TerminateBackend { pid } => self.terminated.push((t, *pid)),
                _ => {}
            }
            self.out.push(o);
        }
    }
}

/// For `secs` seconds, answers every lock attempt "busy" and every breaker query with
/// `holders(second)`, at once. Ends with a lock attempt awaiting its reply.
fn keep_lock_busy(h: &mut Harness, secs: u64, mut holders: impl FnMut(u64) -> Vec<i32>) -> Busy {
    let start = h.now();
    let mut busy = Busy::default();
    for _ in 0..secs {
        let t = h.now().saturating_duration_since(start).as_secs();
        busy.saw(h.take(), t);
        if h.awaiting(Step::Breaker).is_some() {
            h.stale_holders(&holders(t));
            busy.saw(h.take(), t);
        }
        if h.awaiting(Step::Lock).is_some() {
            h.lock(false);
        }
        h.advance(SECOND);
    }
    let t = h.now().saturating_duration_since(start).as_secs();
    busy.saw(h.take(), t);
    busy
}

#[test]
fn lk4_a_busy_lock_is_polled_every_second_and_never_re_asked_after_success() {
    // Goal: LK-4 (ampere): pg_try_advisory_lock on the slot's name is polled every 1 s while
    // busy, one attempt at a time, and once it returned true never asked again on that
    // connection (these locks stack and would need two unlocks).
    // Method: connect; answer three attempts "busy", timing the next one; leave one
    // unanswered for 3 s; then "acquired", and run the setup and a minute of streaming.
    let mut h = Harness::new();
    h.take();
    h.connect();
    let out = h.take();
    assert_eq!(kinds(&out), ["TryLock"]);
    let slot = Harness::config().target.slot;
    assert!(matches!(&out[0], Output::TryLock { slot: s, .. } if *s == slot));
    for _ in 0..3 {
        h.lock(false);
        h.advance(Duration::from_millis(999));
        assert_eq!(count(&h.take(), "TryLock"), 0, "not before a second passed");
        h.advance(Duration::from_millis(1));
        assert_eq!(count(&h.take(), "TryLock"), 1);
    }
    h.advance(3 * SECOND);
    assert_eq!(count(&h.take(), "TryLock"), 0, "one attempt at a time");

    h.lock(true);
    h.advance(30 * SECOND);
    h.load_storage();
    h.start_streaming(START_LSN, false);
    h.advance(30 * SECOND);
    h.keepalive(START_LSN, false);
    h.advance(30 * SECOND);
    assert_eq!(
        count(&h.take(), "TryLock"),
        0,
        "never again on this connection"
    );
    assert!(h.core().is_active());
}

#[test]
fn lc3_every_non_active_phase_reports_waiting() {
    // Goal: LC-3 (ampere): once metadata is loaded the instance never reports `starting`:
    // backing off, connecting, lock busy, and the setup after the lock (waiting for a flush
    // from before a disconnect, loading, starting) all report `waiting`; only holding the
    // lock and streaming is `active`.
    // Method: walk every phase, twice, the second time with a flush running at a loss.
    let mut h = Harness::new();
    let waiting = |h: &Harness, phase: &str| {
        assert_eq!(h.core().health(), Health::Waiting, "{phase}");
        assert!(!h.core().is_active(), "{phase}");
    };
    waiting(&h, "connecting");
    h.fail_step(DisconnectKind::Transient);
    waiting(&h, "backing off");
    h.advance(SECOND);
    h.connect();
    waiting(&h, "lock asked");
    h.lock(false);
    waiting(&h, "lock busy");
    h.advance(SECOND);
    h.lock(true);
    waiting(&h, "loading");
    h.load_storage();
    waiting(&h, "starting");
    h.start_streaming(START_LSN, false);
    assert_eq!(h.core().health(), Health::Active);

    h.live_shape(&items());
    h.commit(&insert(700, 0x2000, "1"));
    h.lose_replication();
    waiting(&h, "backing off after a loss");
    h.advance(2 * SECOND); // the second failure in a row: 2 s
    h.connect();
    h.lock(true);
    waiting(&h, "lock held, an old flush running");
    h.complete_flush();
    h.load_storage();
    waiting(&h, "starting again");
    h.start_streaming(START_LSN, false);
    assert_eq!(h.core().health(), Health::Active);
}

#[test]
fn lb1_the_breaker_runs_every_ten_seconds_only_while_waiting_for_the_lock() {
    // Goal: LB-1: while the lock is busy the breaker's query runs every 10 s, the first 10 s
    // after connecting; never while connecting or backing off, never once the lock is held
    // (loading, starting, active).
    // Method: leave the first connection unanswered for 25 s; connect and keep the lock busy
    // for 35 s; take it and stay active for a minute; lose the stream and reconnect.
    let mut h = Harness::new();
    h.advance(25 * SECOND);
    assert_eq!(
        count(&h.take(), "FindStaleLockHolders"),
        0,
        "not while connecting"
    );
    h.connect();
    let busy = keep_lock_busy(&mut h, 35, |_| Vec::new());
    assert_eq!(busy.queries, [10, 20, 30]);
    assert_eq!(busy.own_pids, [system().backend_pid; 3]);

    h.lock(true);
    h.advance(20 * SECOND);
    h.load_storage();
    h.start_streaming(START_LSN, false);
    h.advance(60 * SECOND);
    assert_eq!(
        count(&h.take(), "FindStaleLockHolders"),
        0,
        "not with the lock held"
    );

    h.lose_replication();
    h.advance(20 * SECOND);
    assert_eq!(
        count(&h.take(), "FindStaleLockHolders"),
        0,
        "not before connecting"
    );
    h.connect();
    let busy = keep_lock_busy(&mut h, 25, |_| Vec::new());
    assert_eq!(
        busy.queries,
        [10, 20],
        "the first again 10 s after connecting"
    );
}

#[test]
fn lb3_a_holder_is_terminated_only_after_thirty_seconds_of_consecutive_sightings() {
    // Goal: LB-3 (ampere): a holder pid is terminated only once consecutive checks have seen
    // it for ≥ 30 s (4 checks 10 s apart); one missing from a check starts over. Every query
    // passes the pid of our own replication connection as `own_pid` (LB-1).
    // Method: our backend is pid 5151. Pid 77 is seen at 10, 20, 30 and 40 s (terminated at
    // 40, then gone). Pid 88 is seen at 50 and 60, missing at 70, seen from 80 on: it is
    // terminated at 110, not at 80.
    let mut h = Harness::new();
    h.set_system(SystemIdentity {
        backend_pid: 5151,
        ..system()
    });
    h.connect();
    let busy = keep_lock_busy(&mut h, 115, |t| match t {
        10..=40 => vec![77],
        50 | 60 | 80.. => vec![88],
        _ => Vec::new(),
    });
    assert_eq!(busy.terminated, [(40, 77), (110, 88)]);
    assert_eq!(busy.queries.len(), 11);
    assert!(
        busy.own_pids.iter().all(|p| *p == 5151),
        "{:?}",
        busy.own_pids
    );
}

#[test]
fn lb1_a_breaker_reply_arriving_after_the_lock_was_taken_terminates_nothing() {
    // Goal: LB-1, LB-3: the breaker acts only while waiting for the lock; a query that was
    // running when the lock was taken is forgotten, whatever it returns.
    // Method: pid 77 is seen at 10, 20 and 30 s; the query of 40 s is issued, the lock is
    // taken before it returns, then it returns [77] (a fourth sighting).
    let mut h = Harness::new();
    h.connect();
    let busy = keep_lock_busy(&mut h, 40, |_| vec![77]);
    assert_eq!(busy.queries, [10, 20, 30, 40]);
    assert!(busy.terminated.is_empty());
    h.lock(true);
    h.stale_holders(&[77]);
    let out = h.take();
    assert_eq!(count(&out, "TerminateBackend"), 0, "{:?}", kinds(&out));
}

/// Asserts CT-2's order for a purge in `out`: the decision is persisted (`purge_pending`)
/// before any shape is removed, exactly `gone` are removed, and the pending flag is cleared
/// (with `acked`) after the last removal and before the first status.
fn assert_purged(out: &[Output], gone: &[ShapeHandle], acked: Lsn) {
    let decided = out
        .iter()
        .position(|o| matches!(o, Output::PersistIdentity { identity } if identity.purge_pending))
        .unwrap_or_else(|| panic!("CT-2: purge not persisted first: {:?}", kinds(out)));
    assert_purge_finished(out, gone, acked, decided);
}

/// The part of [`assert_purged`] after the decision, persisted before output `decided`
/// (before all of `out` if it was found in storage).
fn assert_purge_finished(out: &[Output], gone: &[ShapeHandle], acked: Lsn, decided: usize) {
    assert_eq!(count(out, "Purged"), 1, "{:?}", kinds(out));
    let removals: Vec<usize> = (0..out.len())
        .filter(|i| kind(&out[*i]) == "RemoveShape")
        .collect();
    assert!(removals.iter().all(|i| *i >= decided), "{:?}", kinds(out));
    let mut removed = removed(out);
    removed.sort();
    let mut gone = gone.to_vec();
    gone.sort();
    assert_eq!(removed, gone);
    let identities = persisted_identities(out);
    let last = identities.last().expect("an identity is persisted");
    assert_eq!(last.acked, acked);
    assert!(
        !last.purge_pending,
        "CT-2: the marker is cleared at the end"
    );
    let cleared = out
        .iter()
        .rposition(|o| kind(o) == "PersistIdentity")
        .expect("persisted");
    assert!(removals.iter().all(|i| *i < cleared), "{:?}", kinds(out));
    if let Some(status) = position(out, "SendStandbyStatus") {
        assert!(cleared < status, "{:?}", kinds(out));
    }
}

#[test]
fn ct4_a_first_boot_purges_nothing() {
    // Goal: CT-4: a storage directory without a persisted identity (first boot) purges
    // nothing, even on a slot created just now; it persists the identity it follows from
    // now on (CT-5) before its first status.
    // Method: empty storage; the setup creates the slot at 0/5000.
    let mut h = Harness::new();
    h.start_with(Lsn(0x5000), true);
    let out = h.take();
    assert_eq!(count(&out, "Purged"), 0);
    assert!(removed(&out).is_empty());
    assert_eq!(persisted_identities(&out), [identity(Lsn(0x5000))]);
    let persisted = position(&out, "PersistIdentity").expect("persisted");
    let status = position(&out, "SendStandbyStatus").expect("a status");
    assert!(persisted < status);
    assert_eq!(h.stored_identity(), Some(&identity(Lsn(0x5000))));
}

#[test]
fn ct1_a_recreated_slot_with_shapes_purges_once() {
    // Goal: CT-1, CT-2: a slot created anew under storage holding shapes breaks continuity:
    // the purge is persisted first (purge_pending), every shape removed, the marker cleared;
    // a retried setup afterwards (the slot now exists) does not purge again.
    // Method: storage with a live shape following the slot up to 0/1000; the setup creates
    // the slot at 0/5000; then the stream drops and the setup reruns on the existing slot.
    let shape = stored(&items(), true);
    let handle = shape.stored.handle.clone();
    let mut h = over(vec![shape], Some(identity(START_LSN)));
    h.start_with(Lsn(0x5000), true);
    let out = h.take();
    assert_purged(&out, &[handle], Lsn(0x5000));
    assert!(h.stored_handles().is_empty());
    assert_eq!(h.stored_identity(), Some(&identity(Lsn(0x5000))));

    h.lose_replication();
    h.advance(SECOND);
    h.start(Lsn(0x5000));
    let out = h.take();
    assert_eq!(count(&out, "Purged"), 0, "{:?}", kinds(&out));
    assert!(removed(&out).is_empty());
}

#[test]
fn ct1_another_system_id_or_timeline_purges() {
    // Goal: CT-1: storage built from another cluster (system identifier) or another timeline
    // (failover, PITR) does not continue the slot's history: purge, then follow the new one.
    // Method: (a) storage recorded another system id; (b) the connection reports timeline 2
    // where storage recorded 1. The slot exists in both cases.
    let other_cluster = StorageIdentity {
        system_id: "6999999999999999999".to_owned(),
        ..identity(START_LSN)
    };
    let timeline_2 = SystemIdentity {
        timeline: 2,
        ..system()
    };
    for (stored_identity, connection) in
        [(other_cluster, system()), (identity(START_LSN), timeline_2)]
    {
        let shape = stored(&items(), true);
        let handle = shape.stored.handle.clone();
        let mut h = over(vec![shape], Some(stored_identity));
        h.set_system(connection.clone());
        h.start(START_LSN);
        assert_purged(&h.take(), &[handle], START_LSN);
        let now_follows = h.stored_identity().expect("persisted");
        assert_eq!(now_follows.system_id, connection.system_id);
        assert_eq!(now_follows.timeline, connection.timeline);
    }
}

#[test]
fn ct1_storage_behind_the_slot_purges() {
    // Goal: CT-1 (ampere, B3): a slot whose confirmed_flush_lsn is beyond what storage
    // acknowledged has discarded WAL storage never saw (an older copy of the directory, or a
    // slot created by a setup that failed before streaming): purge. A slot at or behind the
    // stored position (Postgres had not received the last status) is continuity.
    // Method: storage acked 0/2000; slots at 0/3000, 0/2000 and 0/1800.
    for (slot_at, purges) in [(0x3000, true), (0x2000, false), (0x1800, false)] {
        let shape = stored(&items(), true);
        let handle = shape.stored.handle.clone();
        let mut h = over(vec![shape], Some(identity(Lsn(0x2000))));
        h.start(Lsn(slot_at));
        let out = h.take();
        if purges {
            assert_purged(&out, &[handle], Lsn(slot_at));
        } else {
            assert_eq!(count(&out, "Purged"), 0, "slot at {slot_at:#x}");
            assert!(removed(&out).is_empty());
            assert_eq!(h.stored_handles(), [handle]);
        }
    }
}

#[test]
fn ct2_a_pending_purge_is_finished_by_the_next_lock_holder() {
    // Goal: CT-2: a purge interrupted by a crash (purge_pending persisted, a shape left) is
    // finished by the next lock holder, whatever the slot says, exactly once; a waiting
    // instance does not touch it (RO-4).
    // Method: storage with purge_pending and one live shape; an instance waits 15 s for the
    // lock, takes it, starts on the existing slot; then a retried setup.
    let shape = stored(&items(), true);
    let handle = shape.stored.handle.clone();
    let pending = StorageIdentity {
        purge_pending: true,
        ..identity(START_LSN)
    };
    let mut h = over(vec![shape], Some(pending.clone()));
    h.connect();
    let busy = keep_lock_busy(&mut h, 15, |_| Vec::new());
    assert_eq!(count(&busy.out, "Purged"), 0);
    assert_eq!(h.stored_handles(), std::slice::from_ref(&handle));
    assert_eq!(h.stored_identity(), Some(&pending));

    h.lock(true);
    h.load_storage();
    h.start_streaming(START_LSN, false);
    let out = h.take();
    // The decision is in storage already: it is not persisted again, only finished.
    assert!(persisted_identities(&out).iter().all(|i| !i.purge_pending));
    assert_purge_finished(&out, &[handle], START_LSN, 0);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Purged { reason } if reason.contains("earlier purge"))),
        "{out:?}"
    );

    h.lose_replication();
    h.advance(SECOND);
    h.start(START_LSN);
    assert_eq!(count(&h.take(), "Purged"), 0, "once");
    assert!(
        h.writes_outside_active().is_empty(),
        "{:#?}",
        h.writes_outside_active()
    );
}

#[test]
fn ct5_the_acked_position_is_persisted_before_it_is_sent() {
    // Goal: CT-5, RP-1: a status that acknowledges a new position is preceded by a
    // PersistIdentity recording exactly that position (with the connection's system,
    // timeline and slot); statuses that move nothing persist nothing.
    // Method: a flushed transaction; an idle keepalive ahead; timer statuses; a keepalive
    // asking for a reply at the acknowledged position.
    let mut h = Harness::active();
    h.live_shape(&items());
    h.commit(&insert(700, 0x2000, "1"));
    h.take();
    h.complete_flush();
    let out = h.take();
    // (700 ended the shape's filtering: persisted once durable, `filter-end-durable`, after
    // the acknowledgement.)
    assert_eq!(
        kinds(&out),
        ["PersistIdentity", "SendStandbyStatus", "PersistShape"]
    );
    assert_eq!(persisted_identities(&out), [identity(Lsn(0x2001))]);
    assert_eq!(flushes(&out), [Lsn(0x2001)]);

    h.keepalive(Lsn(0x5000), false);
    let out = h.take();
    assert_eq!(kinds(&out), ["PersistIdentity", "SendStandbyStatus"]);
    assert_eq!(persisted_identities(&out), [identity(Lsn(0x5000))]);

    h.advance(25 * SECOND);
    // (The shape's periodic relation check runs meanwhile; it persists nothing.)
    let statuses: Vec<_> = kinds(&h.take())
        .into_iter()
        .filter(|k| *k != "CheckRelations")
        .collect();
    assert_eq!(statuses, ["SendStandbyStatus", "SendStandbyStatus"]);
    h.keepalive(Lsn(0x5000), true);
    assert_eq!(kinds(&h.take()), ["SendStandbyStatus"]);
    assert_eq!(h.stored_identity(), Some(&identity(Lsn(0x5000))));
}

#[test]
fn sn6_incomplete_shapes_are_removed_only_by_the_lock_holder() {
    // Goal: SN-6, RO-4: a shape whose snapshot never completed is discarded only by the lock
    // holder, and (LK-5) only once it streams: between the lock and START_REPLICATION the slot
    // is inactive, so a waiting instance's breaker may legally terminate this one and take
    // over while it is still deleting. Complete shapes stay.
    // Method: storage with an incomplete shape on others and a live one on items; wait 40 s
    // for the lock (breaker included), take it, load, then start streaming.
    let incomplete = stored(&others(), false);
    let live = stored(&items(), true);
    let (gone, kept) = (incomplete.stored.handle.clone(), live.stored.handle.clone());
    let mut h = over(vec![incomplete, live], Some(identity(START_LSN)));
    h.connect();
    let busy = keep_lock_busy(&mut h, 40, |_| Vec::new());
    assert!(
        removed(&busy.out).is_empty(),
        "a waiting instance removes nothing"
    );

    h.lock(true);
    h.load_storage();
    let loaded = h.take();
    h.start_streaming(START_LSN, false);
    let started = h.take();
    assert!(
        removed(&loaded).is_empty(),
        "LK-5: removed before START_REPLICATION: {:?}",
        kinds(&loaded)
    );
    assert_eq!(removed(&started), [gone]);
    assert_eq!(h.stored_handles(), std::slice::from_ref(&kept));
    assert_eq!(h.core().shape_handles().collect::<Vec<_>>(), [&kept]);
    assert!(
        h.writes_outside_active().is_empty(),
        "{:#?}",
        h.writes_outside_active()
    );
}

#[test]
fn a_flush_in_flight_at_disconnect_delays_load_storage_until_it_returns() {
    // Goal: storage is loaded only once no flush from before the disconnect is still writing
    // (else the reload could miss, or race, what it makes durable); meanwhile the held lock
    // is not asked again and nothing is written. The reloaded shape then holds the flushed
    // transaction, so its replay is confirmed without an append.
    // Method: T1 appended, its flush running; lose the stream; reconnect and take the lock;
    // wait 10 s; complete the flush; load; replay T1 from the slot's position.
    let mut h = Harness::active();
    let handle = h.live_shape(&items());
    let t1 = insert(700, 0x2000, "1");
    h.commit(&t1);
    h.take();
    h.lose_replication();
    h.advance(SECOND);
    h.connect();
    h.lock(true);
    h.advance(10 * SECOND);
    let out = h.take();
    assert_eq!(count(&out, "LoadStorage"), 0, "{:?}", kinds(&out));
    assert_eq!(count(&out, "TryLock"), 1, "asked once, before it was held");
    assert!(
        h.writes_outside_active().is_empty(),
        "{:#?}",
        h.writes_outside_active()
    );

    h.complete_flush();
    assert_eq!(kinds(&h.take()), ["LoadStorage"]);
    h.load_storage();
    h.start_streaming(START_LSN, false);
    h.commit(&t1);
    let out = h.take();
    assert!(entries(&out, &handle).is_empty(), "{:?}", kinds(&out));
    assert_eq!(flushes(&out).last(), Some(&Lsn(0x2001)));
}

#[test]
fn a_flush_failing_after_the_disconnect_lets_the_replay_append_again() {
    // Goal: a pre-disconnect flush that fails made nothing durable: storage is loaded once it
    // returned, without its appends, and the slot's replay appends the transaction again.
    // Method: T1 appended, its flush running; lose the stream; take the lock; fail the flush;
    // load; replay T1.
    let mut h = Harness::active();
    let handle = h.live_shape(&items());
    let t1 = insert(700, 0x2000, "1");
    h.commit(&t1);
    h.take();
    h.lose_replication();
    h.advance(SECOND);
    h.connect();
    h.lock(true);
    assert_eq!(h.awaiting(Step::Load), None);
    h.fail_flush();
    assert!(h.awaiting(Step::Load).is_some());
    h.load_storage();
    h.start_streaming(START_LSN, false);
    h.commit(&t1);
    let out = h.take();
    assert_eq!(offsets(&entries(&out, &handle)), ["8192_0"]);
    h.complete_flush();
    assert_eq!(flushes(&h.take()), [Lsn(0x2001)]);
}

#[test]
fn refresh_read_model_runs_every_second_while_not_active_and_never_while_active() {
    // Goal: RO-1: a non-active instance re-reads the shapes the lock holder made every second
    // (at once when it loses the stream); an active one never does.
    // Method: 3.5 s unconnected; a minute active; lose the stream, 3.5 s more.
    let mut h = Harness::new();
    h.take();
    h.advance(Duration::from_millis(3_500));
    assert_eq!(count(&h.take(), "RefreshReadModel"), 3);
    h.start(START_LSN);
    h.advance(30 * SECOND);
    h.keepalive(START_LSN, false);
    h.advance(30 * SECOND);
    assert_eq!(count(&h.take(), "RefreshReadModel"), 0);
    h.lose_replication();
    assert_eq!(kinds(&h.take()), ["StopReplication", "RefreshReadModel"]);
    h.advance(Duration::from_millis(3_500));
    assert_eq!(count(&h.take(), "RefreshReadModel"), 3);
}

#[test]
fn a_fatal_error_stops_every_timer() {
    // Goal: a Fatal ends the instance (the driver exits): no timer stays armed and nothing
    // more is asked; in particular no timer stays due after firing (which spins a loop).
    // Method: fail a lock attempt fatally while waiting for the lock (breaker timer armed).
    let mut h = Harness::new();
    h.connect();
    h.lock(false);
    h.advance(SECOND);
    h.take();
    h.fail_step(DisconnectKind::Fatal);
    assert_eq!(kinds(&h.take()), ["Fatal"]);
    assert_eq!(h.core().poll_timeout(), None, "no timer after Fatal");
    h.advance(60 * SECOND);
    assert_eq!(kinds(&h.take()), Vec::<&str>::new());
}

/// A scripted Postgres for the long LK-6 script: the WAL of committed transactions and the
/// slot's confirmed position, driven by one seed.
struct World {
    seed: u64,
    rng: u64,
    wal: Vec<(Lsn, Txn)>,
    next_lsn: u64,
    next_xid: u32,
    /// What the slot confirmed: the last status Postgres received.
    slot: Lsn,
    /// `CreateShape` requests without a snapshot reply yet.
    snapshots: Vec<OpId>,
}

impl World {
    fn new(seed: u64) -> Self {
        Self {
            seed,
            rng: seed,
            wal: Vec::new(),
            next_lsn: 0x2000,
            next_xid: 700,
            slot: START_LSN,
            snapshots: Vec::new(),
        }
    }

    /// xorshift64*: uniform enough, and nothing but the seed decides it.
    fn roll(&mut self, below: u64) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) % below
    }

    fn wal_end(&self) -> Lsn {
        self.wal
            .last()
            .map_or(START_LSN, |(lsn, _)| Lsn(lsn.0 + COMMIT_RECORD))
    }

    fn tables() -> [TableSchema; 3] {
        let third = table(16_386, "third", &[("id", 23, true), ("v", 25, false)]);
        [items(), others(), third]
    }

    /// Takes the outputs so far: new snapshot requests, the slot's position.
    fn observe(&mut self, h: &mut Harness) -> Vec<Output> {
        let out = h.take();
        for o in &out {
            match o {
                Output::CreateShape { op, .. } => self.snapshots.push(*op),
                Output::SendStandbyStatus(status) => self.slot = status.flush,
                _ => {}
            }
        }
        out
    }

    /// The walsender sends a new transaction: an insert, a delete or (rarely) a truncate.
    fn commit_new(&mut self, h: &mut Harness) {
        let tables = Self::tables();
        let t = &tables[usize::try_from(self.roll(3)).expect("small")];
        let id = self.next_xid.to_string();
        let row: Vec<&str> = (0..t.columns.len())
            .map(|i| if i == 0 { id.as_str() } else { "1" })
            .collect();
        let txn = Txn::new(self.next_xid, self.next_lsn);
        let txn = match self.roll(50) {
            0 => txn.truncate(&[t]),
            1..=10 => txn.delete(t, &row),
            _ => txn.insert(t, &row).insert(&items(), &[&id, "x", "2"]),
        };
        self.wal.push((Lsn(self.next_lsn), txn.clone()));
        self.next_lsn += 0x100;
        self.next_xid += 1;
        h.commit(&txn);
    }

    /// A client asks for one of a few definitions.
    fn request(&mut self, h: &mut Harness) -> OpId {
        let tables = Self::tables();
        match self.roll(4) {
            3 => h.request(selecting(&items(), &["id", "title"]), &items()),
            i => {
                let t = &tables[usize::try_from(i).expect("small")];
                h.request(whole(t), t)
            }
        }
    }

    /// A snapshot reply for some request: taken (seeing everything committed, or nothing),
    /// or failed.
    fn answer_snapshot(&mut self, h: &mut Harness) {
        if self.snapshots.is_empty() {
            return;
        }
        let i = usize::try_from(self.roll(self.snapshots.len() as u64)).expect("small");
        let op = self.snapshots.swap_remove(i);
        match self.roll(10) {
            0 => h.input(crate::instance::Input::SnapshotFailed { op, refusal: None }),
            1..=4 => h.snapshot_taken(op, early_snapshot()),
            _ => h.snapshot_taken(op, snapshot(&format!("{0}:{0}:", self.next_xid))),
        }
    }
}

/// The script's moves.
impl World {
    /// One move while the core is active.
    fn active_move(&mut self, h: &mut Harness) {
        match self.roll(100) {
            0..=34 => self.commit_new(h),
            35..=44 => {
                let reply = self.roll(3) == 0;
                h.keepalive(self.wal_end(), reply);
            }
            45..=59 if h.pending_flush().is_some() => h.complete_flush(),
            60 if h.pending_flush().is_some() => h.fail_flush(),
            61..=67 => {
                self.request(h);
            }
            68..=76 => self.answer_snapshot(h),
            77..=93 => h.advance(Duration::from_millis(self.roll(3_000))),
            94..=95 => h.lose_replication(),
            _ => {}
        }
    }

    /// Things a non-active instance may still receive: an old flush's reply, requests,
    /// late snapshot replies, stale stream messages. None may make it write.
    fn distraction(&mut self, h: &mut Harness) {
        match self.roll(10) {
            0 | 1 if h.pending_flush().is_some() => h.complete_flush(),
            2 if h.pending_flush().is_some() => h.fail_flush(),
            3 => {
                let op = self.request(h);
                let out = self.observe(h);
                if !h.holds_lock() {
                    let refused = out
                        .iter()
                        .any(|o| matches!(o, Output::ShapeRefused { op: o, .. } if *o == op));
                    assert!(refused, "correctness: seed {:#x}: LK-6: {out:?}", self.seed);
                }
            }
            4 => self.answer_snapshot(h),
            5 if !self.wal.is_empty() => {
                let i = usize::try_from(self.roll(self.wal.len() as u64)).expect("small");
                let txn = self.wal[i].1.clone();
                h.commit(&txn);
                h.keepalive(self.wal_end(), true);
            }
            _ => {}
        }
    }

    /// One step of the setup: answer what the core awaits, mostly with success.
    fn setup_move(&mut self, h: &mut Harness) {
        if h.awaiting(Step::Connect).is_some() {
            if self.roll(5) == 0 {
                h.fail_step(DisconnectKind::Transient);
            } else {
                h.connect();
            }
        } else if h.awaiting(Step::Breaker).is_some() {
            let pids = if self.roll(2) == 0 { vec![] } else { vec![77] };
            h.stale_holders(&pids);
        } else if h.awaiting(Step::Lock).is_some() {
            match self.roll(10) {
                0..=3 => h.lock(false),
                4 => h.fail_step(DisconnectKind::Transient),
                _ => h.lock(true),
            }
        } else if h.awaiting(Step::Load).is_some() {
            h.load_storage();
        } else if h.awaiting(Step::Stream).is_some() {
            match self.roll(10) {
                0 => h.fail_step(DisconnectKind::Transient),
                1 => self.stream(h, true),
                _ => self.stream(h, false),
            }
        } else {
            h.advance(Duration::from_millis(self.roll(1_500)));
        }
    }

    /// Streaming starts at the slot's position (a new slot: at the end of WAL) and the
    /// walsender re-sends every transaction from there.
    fn stream(&mut self, h: &mut Harness, slot_created: bool) {
        if slot_created {
            self.slot = self.wal_end();
        }
        h.start_streaming(self.slot, slot_created);
        let replay: Vec<Txn> = self
            .wal
            .iter()
            .filter(|(lsn, _)| *lsn >= self.slot)
            .map(|(_, t)| t.clone())
            .collect();
        for txn in replay {
            if h.core().is_active() {
                h.commit(&txn);
            }
        }
    }

    /// Faults stop: reach active, answer every snapshot and flush; the slot then reaches
    /// the end of WAL (liveness).
    fn heal(&mut self, h: &mut Harness) {
        for _ in 0..1_000 {
            if h.core().is_active() {
                break;
            }
            if h.pending_flush().is_some() {
                h.complete_flush();
            } else if h.awaiting(Step::Connect).is_some() {
                h.connect();
            } else if h.awaiting(Step::Lock).is_some() {
                h.lock(true);
            } else if h.awaiting(Step::Load).is_some() {
                h.load_storage();
            } else if h.awaiting(Step::Stream).is_some() {
                self.stream(h, false);
            } else {
                h.advance(SECOND);
            }
            self.observe(h);
        }
        assert!(h.core().is_active(), "liveness: seed {:#x}", self.seed);
        let x = self.next_xid;
        for op in std::mem::take(&mut self.snapshots) {
            h.snapshot_taken(op, snapshot(&format!("{x}:{x}:")));
        }
        while h.pending_flush().is_some() {
            h.complete_flush();
        }
        h.keepalive(self.wal_end(), false);
        self.observe(h);
        assert_eq!(
            h.core().acked_lsn(),
            self.wal_end(),
            "liveness: seed {:#x}",
            self.seed
        );
    }
}

#[test]
fn lk6_losing_the_stream_stops_writes_and_drops_shapes_until_the_lock_is_held_again() {
    // Goal: LK-6: the lock is gone with the replication connection: from StopReplication on,
    // no storage or stream write (Append, FlushLogs, CreateShape, Persist*, Purged,
    // RemoveShape, statuses) until the core is active again; the in-memory shapes are
    // dropped (requests are refused) until storage is reloaded under the lock. The ledger
    // checks every status (ack-after-durable, persist-before-ack) on the way.
    // Method: long seeded scripts mixing commits, keepalives, flushes (some failing),
    // shape requests and snapshot replies with stream losses, setup failures, a busy lock,
    // the breaker and recreated slots; the slot replays from its confirmed position. After
    // each move: no shapes without the lock. At the end: no write outside `active`, then heal.
    for seed in [0x5eed_1e55_u64, 0x0dd_ba11, 0xfee1_900d] {
        let mut world = World::new(seed);
        let mut h = Harness::new();
        for _ in 0..3_000 {
            if h.core().is_active() {
                world.active_move(&mut h);
            } else {
                world.distraction(&mut h);
                world.observe(&mut h);
                world.setup_move(&mut h);
            }
            world.observe(&mut h);
            if !h.holds_lock() {
                let held = h.core().shape_handles().count();
                assert_eq!(held, 0, "correctness: seed {seed:#x}: LK-6: shapes kept");
            }
        }
        assert!(
            h.writes_outside_active().is_empty(),
            "correctness: seed {seed:#x}: LK-6: writes while not active: {:#?}",
            h.writes_outside_active()
        );
        world.heal(&mut h);
    }
}

#[test]
fn a_silent_stream_is_presumed_dead_after_the_replication_timeout() {
    // Goal: a half-open replication connection (Postgres already dropped it and may have
    // handed the lock on) must not keep the instance active: with no message for the
    // replication timeout, it stops replication and reconnects. Keepalives keep it alive.
    // Method: an active harness hears keepalives for two minutes, then nothing.
    let mut h = Harness::active();
    let timeout = Harness::config().replication_timeout;
    for _ in 0..12 {
        h.advance(Duration::from_secs(10));
        h.keepalive(Lsn(0x100), false);
    }
    assert!(h.core().is_active(), "keepalives keep the stream alive");
    h.take();
    h.advance(timeout - Duration::from_millis(1));
    assert!(h.core().is_active(), "not before the timeout");
    h.advance(Duration::from_millis(1));
    assert!(
        !h.core().is_active(),
        "silent for the timeout: stepped down"
    );
    let out = h.take();
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::StopReplication { .. })),
        "replication stopped: {out:?}"
    );
}
