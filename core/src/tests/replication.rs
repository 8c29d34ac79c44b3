//! Replication lifecycle: starting, backing off, failing, reconnecting and replaying.

use std::time::Duration;

use super::harness::{entries, flushes, items, kinds, offsets, Harness, Txn, START_LSN};
use crate::instance::{Input, Output};
use crate::lsn::Lsn;
use crate::ports::{DisconnectKind, ReplicationStarted};
use crate::OpId;

/// Advances one millisecond at a time (up to `limit`) until a `StartReplication` appears;
/// returns how long that took.
fn time_to_next_start(h: &mut Harness, limit: Duration) -> Duration {
    let step = Duration::from_millis(1);
    let mut waited = Duration::ZERO;
    while waited <= limit {
        if kinds(&h.take()).contains(&"StartReplication") {
            return waited;
        }
        h.advance(step);
        waited += step;
    }
    panic!("no StartReplication within {limit:?}");
}

#[test]
fn reaching_streaming_starts_replication_first_and_confirms_the_slot_position() {
    // Goal: a new instance's first command is StartReplication for its slot and publication,
    // and once streaming it confirms the slot's own position, nothing beyond.
    // Method: build an instance, look at its first outputs, answer the start.
    let mut h = Harness::new();
    let out = h.take();
    assert_eq!(kinds(&out), ["StartReplication"]);
    let Output::StartReplication { target, .. } = &out[0] else {
        unreachable!()
    };
    assert_eq!(target, &Harness::config().target);
    assert!(!h.core().is_streaming());
    assert_eq!(h.core().poll_timeout(), None, "no timer while connecting");

    h.start(START_LSN);
    assert!(h.core().is_streaming());
    assert_eq!(flushes(&h.take()), [START_LSN]);
}

#[test]
fn failed_starts_back_off_doubling_from_one_second_capped_at_ten() {
    // Goal: RC-2 backoff: 1 s, 2 s, 4 s, 8 s, then 10 s for good.
    // Method: fail every start and measure the virtual time to the next StartReplication.
    let mut h = Harness::new();
    h.take();
    let mut delays = Vec::new();
    for _ in 0..7 {
        h.fail_start(DisconnectKind::Transient);
        delays.push(time_to_next_start(&mut h, Duration::from_secs(11)).as_secs_f64());
    }
    assert_eq!(delays, [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]);
}

#[test]
fn a_fatal_start_failure_emits_fatal_and_never_retries() {
    // Goal: an error that needs an operator ends the instance instead of retrying.
    // Method: fail the first start as Fatal, then let a minute pass.
    let mut h = Harness::new();
    h.take();
    h.fail_start(DisconnectKind::Fatal);
    let out = h.take();
    assert_eq!(kinds(&out), ["Fatal"]);
    let Output::Fatal { message } = &out[0] else {
        unreachable!()
    };
    assert_eq!(message, "connection refused");
    assert_eq!(h.core().poll_timeout(), None);
    h.advance(Duration::from_secs(60));
    assert!(h.take().is_empty());
}

#[test]
fn a_fatal_loss_while_streaming_emits_fatal() {
    // Goal: a fatal error on an established stream is fatal too.
    // Method: stream, then report the stream lost with a Fatal kind.
    let mut h = Harness::streaming();
    h.input(Input::ReplicationLost {
        kind: DisconnectKind::Fatal,
    });
    assert_eq!(kinds(&h.take()), ["Fatal"]);
    h.advance(Duration::from_secs(60));
    assert!(h.take().is_empty());
}

#[test]
fn backoff_resets_after_five_seconds_of_streaming() {
    // Goal: RC-2: the delay resets only after 5 s of continuous streaming.
    // Method: fail twice (next delay would be 4 s), stream for 5 s, lose the stream.
    let mut h = Harness::new();
    h.take();
    h.fail_start(DisconnectKind::Transient);
    time_to_next_start(&mut h, Duration::from_secs(2));
    h.fail_start(DisconnectKind::Transient);
    time_to_next_start(&mut h, Duration::from_secs(3));
    h.start(START_LSN);
    h.advance(Duration::from_secs(5));
    h.lose_replication();
    assert_eq!(
        time_to_next_start(&mut h, Duration::from_secs(11)),
        Duration::from_secs(1)
    );
}

#[test]
fn a_short_streaming_spell_keeps_the_backoff_growing() {
    // Goal: a connection that drops within 5 s does not reset the backoff (no tight loop
    // against a server that accepts and then kills the stream).
    // Method: fail once (1 s), stream for 1 s, lose the stream: the next delay is 2 s.
    let mut h = Harness::new();
    h.take();
    h.fail_start(DisconnectKind::Transient);
    time_to_next_start(&mut h, Duration::from_secs(2));
    h.start(START_LSN);
    h.advance(Duration::from_secs(1));
    h.lose_replication();
    assert_eq!(
        time_to_next_start(&mut h, Duration::from_secs(11)),
        Duration::from_secs(2)
    );
}

#[test]
fn a_reply_to_a_start_the_core_no_longer_waits_for_is_dropped() {
    // Goal: replies are matched by op; a stale or made-up one changes nothing.
    // Method: answer with an op that was never issued, then with the right one.
    let mut h = Harness::new();
    h.take();
    let stale = OpId(h.start_op().0 + 100);
    let started = ReplicationStarted {
        system_id: "1".to_owned(),
        timeline: 1,
        slot_created: false,
        confirmed_flush_lsn: START_LSN,
    };
    h.input(Input::ReplicationStarted { op: stale, started });
    assert!(!h.core().is_streaming());
    assert!(h.take().is_empty());
    h.start(START_LSN);
    assert!(h.core().is_streaming());
}

#[test]
fn malformed_pgoutput_stops_replication_and_reconnects() {
    // Goal: bad peer data is a state change, not a panic: stop, back off, reconnect.
    // Method: feed an unknown message tag while streaming.
    let mut h = Harness::streaming();
    h.xlog(Lsn(0x2000), vec![b'?', 1, 2, 3]);
    let out = h.take();
    assert_eq!(kinds(&out), ["StopReplication"]);
    assert!(!h.core().is_streaming());
    assert_eq!(
        time_to_next_start(&mut h, Duration::from_secs(2)),
        Duration::from_secs(1)
    );
}

#[test]
fn a_replayed_transaction_that_was_confirmed_is_dropped() {
    // Goal: RC-3: after a reconnect the slot may resend a transaction whose confirmation
    // it never received; it must not be appended again.
    // Method: append and flush T1, lose the stream, restart from the slot's stale position
    // and resend T1, then a new T2.
    let mut h = Harness::streaming();
    let handle = h.live_shape(&items());
    let t1 = Txn::new(700, 0x2000).insert(&items(), &["1", "a", "5"]);
    h.commit(&t1);
    h.complete_flush();
    assert_eq!(flushes(&h.take()), [Lsn(0x2001)]);

    h.lose_replication();
    h.advance(Duration::from_secs(1));
    h.start(START_LSN);
    assert_eq!(
        flushes(&h.take()),
        [Lsn(0x2001)],
        "confirms what it knows, not the slot's"
    );
    h.commit(&t1);
    assert_eq!(kinds(&h.take()), Vec::<&str>::new(), "T1 replay is dropped");

    h.commit(&Txn::new(701, 0x3000).insert(&items(), &["2", "b", "6"]));
    assert_eq!(offsets(&entries(&h.take(), &handle)), ["12288_0"]);
}

#[test]
fn a_replayed_transaction_appended_but_not_yet_durable_is_not_appended_again() {
    // Goal: RC-3 per shape: a transaction appended before the stream broke, whose flush is
    // still running, is not appended again when replayed; its flush then confirms it.
    // Method: commit T1, lose the stream before LogsFlushed, restart, replay T1, then
    // complete the original flush.
    let mut h = Harness::streaming();
    let handle = h.live_shape(&items());
    let t1 = Txn::new(700, 0x2000).insert(&items(), &["1", "a", "5"]);
    h.commit(&t1);
    assert_eq!(kinds(&h.take()), ["PersistShape", "Append", "FlushLogs"]);

    h.lose_replication();
    h.advance(Duration::from_secs(1));
    h.start(START_LSN);
    h.commit(&t1);
    let out = h.take();
    assert!(
        entries(&out, &handle).is_empty(),
        "no duplicate Append: {:?}",
        kinds(&out)
    );
    assert!(
        !kinds(&out).contains(&"FlushLogs"),
        "the first flush is still running"
    );
    assert!(flushes(&out).iter().all(|f| *f <= START_LSN));

    h.complete_flush();
    assert_eq!(flushes(&h.take()), [Lsn(0x2001)]);
}

#[test]
#[should_panic(expected = "time-monotonic")]
fn time_going_backwards_is_a_contract_violation() {
    // Goal: every handle_* asserts that `now` never goes backwards (the assertion is the
    // contract between driver and core).
    // Method: stream, then call handle_timeout with an earlier instant.
    let mut h = Harness::streaming();
    h.advance(Duration::from_secs(2));
    h.keepalive(START_LSN, false);
    h.rewind_clock(Duration::from_secs(1));
}
