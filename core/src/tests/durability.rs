//! The durability order (deploy-semantics RP-1..RP-5, CT-5): append → flush → durable →
//! persist the acked position → status. Every status in every scenario is also checked by
//! the harness's ledger (`ack-after-durable`, `persist-before-ack`); these tests pin the
//! positions themselves.

use std::time::Duration;

use super::harness::{
    entries, flushes, items, kinds, offsets, others, statuses, Harness, Txn, START_LSN,
};
use crate::instance::Input;
use crate::lsn::Lsn;

fn insert(xid: u32, commit_lsn: u64, id: &str) -> Txn {
    Txn::new(xid, commit_lsn).insert(&items(), &[id, "title", "1"])
}

#[test]
fn a_transaction_on_a_live_shape_is_acknowledged_only_after_its_flush() {
    // Goal: RP-1: append, then FlushLogs, and no status confirms the commit until
    // LogsFlushed; then flush = commit_lsn + 1 (RP-2's +1 rule).
    // Method: commit one transaction, let status timers fire while the flush runs, answer it.
    let mut h = Harness::active();
    h.live_shape(&items());
    h.commit(&insert(700, 0x2000, "1"));
    assert_eq!(kinds(&h.take()), ["Append", "FlushLogs"]);

    h.advance(Duration::from_secs(25));
    let waiting = h.take();
    assert_eq!(
        flushes(&waiting),
        [START_LSN, START_LSN],
        "timer statuses do not move flush"
    );

    h.complete_flush();
    assert_eq!(flushes(&h.take()), [Lsn(0x2001)]);
    assert_eq!(h.core().durable_lsn(), Lsn(0x2000));
}

#[test]
fn transactions_arriving_during_a_flush_share_the_next_flush() {
    // Goal: group commit: appends made while a flush runs are covered by one more flush,
    // issued when the running one completes.
    // Method: T1 starts a flush; T2 and T3 arrive before it completes.
    let mut h = Harness::active();
    h.live_shape(&items());
    h.commit(&insert(700, 0x2000, "1"));
    assert!(kinds(&h.take()).contains(&"FlushLogs"));
    h.commit(&insert(701, 0x3000, "2"));
    h.commit(&insert(702, 0x4000, "3"));
    assert_eq!(
        kinds(&h.take()),
        ["Append", "Append"],
        "no flush while one is in flight"
    );

    h.complete_flush();
    let out = h.take();
    // CT-5: each status that moves the acked position is preceded by its PersistIdentity;
    // T1 ended the shape's filtering, persisted once T1 is durable (`filter-end-durable`),
    // after the acknowledgement, which needs only the logs durable.
    assert_eq!(
        kinds(&out),
        [
            "PersistIdentity",
            "SendStandbyStatus",
            "PersistShape",
            "FlushLogs"
        ]
    );
    assert_eq!(
        flushes(&out),
        [Lsn(0x2001)],
        "T1 is durable, T2 and T3 are not yet"
    );

    h.complete_flush();
    let out = h.take();
    assert_eq!(kinds(&out), ["PersistIdentity", "SendStandbyStatus"]);
    assert_eq!(flushes(&out), [Lsn(0x4001)]);
}

#[test]
fn a_transaction_touching_no_shape_is_confirmed_without_a_flush() {
    // Goal: RP-3: a transaction no shape needs is durable at once.
    // Method: a shape on items; commit a transaction on another table.
    let mut h = Harness::active();
    h.live_shape(&items());
    h.commit(&Txn::new(700, 0x2000).insert(&others(), &["1", "v"]));
    let out = h.take();
    assert_eq!(kinds(&out), ["PersistIdentity", "SendStandbyStatus"]);
    assert_eq!(flushes(&out), [Lsn(0x2001)]);
}

#[test]
fn an_untouched_transaction_behind_a_pending_flush_waits_for_it() {
    // Goal: RP-3 lag-by-one: a transaction no shape needs cannot move the boundary past an
    // older one that is not durable yet.
    // Method: T1 on the shape (flush running), then T2 on another table, then the flush.
    let mut h = Harness::active();
    h.live_shape(&items());
    h.commit(&insert(700, 0x2000, "1"));
    h.commit(&Txn::new(701, 0x3000).insert(&others(), &["1", "v"]));
    assert!(flushes(&h.take()).is_empty());

    h.complete_flush();
    let out = h.take();
    assert_eq!(flushes(&out).last(), Some(&Lsn(0x3001)));
    assert!(!kinds(&out).contains(&"FlushLogs"), "nothing more to flush");
}

#[test]
fn a_keepalive_while_idle_confirms_wal_end_itself() {
    // Goal: RP-5 (ampere): with nothing pending, a keepalive confirms its wal_end, not +1.
    // Method: stream with no shapes and receive a keepalive ahead of the slot.
    let mut h = Harness::active();
    h.keepalive(Lsn(0x5000), false);
    let out = h.take();
    assert_eq!(flushes(&out), [Lsn(0x5000)]);
    assert_eq!(statuses(&out)[0].write, Lsn(0x5000));

    h.keepalive(Lsn(0x5000), false);
    assert!(h.take().is_empty(), "no news, no status");
}

#[test]
fn a_keepalive_while_a_flush_is_pending_does_not_move_flush() {
    // Goal: RP-5: durable advances to wal_end only if nothing is pending.
    // Method: T1 on a shape with its flush running; keepalives far ahead, with and without
    // a reply request.
    let mut h = Harness::active();
    h.live_shape(&items());
    h.commit(&insert(700, 0x2000, "1"));
    h.take();
    h.keepalive(Lsn(0x9000), false);
    assert!(h.take().is_empty());

    h.keepalive(Lsn(0x9000), true);
    let out = statuses(&h.take());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].flush, START_LSN);
    assert_eq!(
        out[0].write, START_LSN,
        "write is the durable position too: a caught-up walsender pings only while write \
         and flush are both behind what it sent"
    );

    h.complete_flush();
    assert_eq!(
        flushes(&h.take()),
        [Lsn(0x9000)],
        "idle again: the keepalive's wal_end is confirmed with the flush"
    );
    h.keepalive(Lsn(0x9000), false);
    assert!(h.take().is_empty(), "no news, no status");
}

#[test]
fn a_keepalive_during_a_transaction_is_confirmed_only_once_nothing_is_pending() {
    // Goal: RP-5 after a backlog: the WAL behind the last keepalive is confirmed when the
    // flush that empties the pipeline completes, not a keepalive interval later, and never
    // while a transaction is open or a flush pending.
    // Method: a keepalive between T1's commit and T2's begin, with T1's flush running; T2
    // begins; the flush completes (T2 open: only T1 confirmed); T2 commits and is flushed.
    let mut h = Harness::active();
    h.live_shape(&items());
    h.commit(&insert(700, 0x2000, "1"));
    h.take();
    h.keepalive(Lsn(0x3000), false);
    let t2_end = Lsn(0x4030);
    h.xlog(t2_end, super::harness::wire::begin(Lsn(0x4000), 701));
    h.complete_flush();
    assert_eq!(
        flushes(&h.take()),
        [Lsn(0x2001)],
        "T2 is open: only T1's end"
    );
    let row = vec!["2".to_owned(), "t".to_owned(), "0".to_owned()];
    h.xlog(t2_end, super::harness::wire::insert(&items(), &row));
    h.xlog(t2_end, super::harness::wire::commit(Lsn(0x4000), t2_end));
    h.take();
    h.complete_flush();
    assert_eq!(flushes(&h.take()), [Lsn(0x4001)]);
}

#[test]
fn a_keepalive_asking_for_a_reply_forces_a_status() {
    // Goal: RP-4: reply_requested = 1 is answered at once even when nothing changed.
    // Method: stream, then a keepalive at the confirmed position asking for a reply.
    let mut h = Harness::active();
    h.keepalive(START_LSN, true);
    assert_eq!(flushes(&h.take()), [START_LSN]);
}

#[test]
fn a_keepalive_inside_an_open_transaction_does_not_move_flush() {
    // Goal: RP-5: only outside a transaction may wal_end be confirmed: the open
    // transaction's commit record may lie before it.
    // Method: send Begin and a change, then a keepalive ahead, then the Commit.
    let mut h = Harness::active();
    h.live_shape(&items());
    let wal_end = Lsn(0x2030);
    h.xlog(wal_end, super::harness::wire::begin(Lsn(0x2000), 700));
    h.xlog(wal_end, super::harness::wire::relation(&items()));
    let row = ["1".to_owned(), "a".to_owned(), "1".to_owned()];
    h.xlog(wal_end, super::harness::wire::insert(&items(), &row));
    h.keepalive(Lsn(0x2100), false);
    assert!(h.take().is_empty());
    h.xlog(wal_end, super::harness::wire::commit(Lsn(0x2000), wal_end));
    assert_eq!(kinds(&h.take()), ["Append", "FlushLogs"]);
}

#[test]
fn statuses_are_sent_every_status_interval_while_active() {
    // Goal: RP-4: a status on a timer keeps wal_sender_timeout from firing.
    // Method: stream and let 35 s pass with a 10 s interval.
    let mut h = Harness::active();
    let start = h.now();
    h.advance(Duration::from_secs(35));
    assert_eq!(flushes(&h.take()), [START_LSN; 3]);
    assert_eq!(
        h.core().poll_timeout(),
        Some(start + Duration::from_secs(40))
    );
}

#[test]
fn every_status_of_a_busy_stream_is_ack_after_durable() {
    // Goal: ack-after-durable over an interleaving of commits on shaped and unshaped tables,
    // keepalives, timers and slow flushes (the harness's ledger checks each status).
    // Method: a fixed script; assert the end position once everything is flushed.
    let mut h = Harness::active();
    h.live_shape(&items());
    let mut lsn = 0x2000;
    for i in 0..12u32 {
        let txn = if i % 3 == 0 {
            Txn::new(700 + i, lsn).insert(&others(), &[&i.to_string(), "v"])
        } else {
            insert(700 + i, lsn, &i.to_string())
        };
        h.commit(&txn);
        h.keepalive(Lsn(lsn + 0x40), i % 4 == 0);
        h.advance(Duration::from_secs(4));
        if i % 5 == 4 {
            h.complete_flush();
        }
        lsn += 0x100;
    }
    while h.pending_flush().is_some() {
        h.complete_flush();
    }
    h.keepalive(Lsn(lsn), false);
    assert_eq!(h.core().acked_lsn(), Lsn(lsn));
}

#[test]
fn a_failed_flush_acknowledges_nothing_and_restarts_replication_to_replay() {
    // Goal: a flush error must neither confirm what it covered nor leave the core waiting for
    // a reply that never comes (which stalled every later flush); the replay after the
    // reconnect appends the transaction again, since storage never made it durable.
    // Method: commit, fail the flush, check the outputs, then reconnect: the storage model
    // lost the append, the slot replays T1 from its position.
    let mut h = Harness::active();
    let handle = h.live_shape(&items());
    let t1 = insert(700, 0x2000, "1");
    h.commit(&t1);
    h.take();
    let op = h.pending_flush().expect("a FlushLogs awaits its reply");
    h.input(Input::LogsFlushFailed { op });
    let outputs = h.take();
    assert_eq!(kinds(&outputs), ["StopReplication", "RefreshReadModel"]);
    assert!(!h.core().is_active());
    assert!(!h.core().has_flush_in_flight());

    h.advance(Duration::from_secs(1));
    h.start(START_LSN);
    h.commit(&t1);
    let out = h.take();
    assert_eq!(offsets(&entries(&out, &handle)), ["8192_0"], "T1 again");
    assert!(kinds(&out).contains(&"FlushLogs"), "{:?}", kinds(&out));
    h.complete_flush();
    assert_eq!(flushes(&h.take()), [Lsn(0x2001)]);
}
