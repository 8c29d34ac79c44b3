//! Replication lifecycle: connecting, backing off, failing, reconnecting and replaying.
//! (Lock, breaker and continuity rules: `lifecycle.rs`.)

use std::time::Duration;

use super::harness::{entries, flushes, items, kinds, offsets, Harness, Step, Txn, START_LSN};
use crate::instance::{Input, LoadedStorage, Output};
use crate::lsn::Lsn;
use crate::ports::{DisconnectKind, SlotStarted};
use crate::shape::HandleStamp;
use crate::OpId;

/// Advances one millisecond at a time (up to `limit`) until a `ConnectReplication` appears;
/// returns how long that took.
fn time_to_next_connect(h: &mut Harness, limit: Duration) -> Duration {
    let step = Duration::from_millis(1);
    let mut waited = Duration::ZERO;
    while waited <= limit {
        if kinds(&h.take()).contains(&"ConnectReplication") {
            return waited;
        }
        h.advance(step);
        waited += step;
    }
    panic!("no ConnectReplication within {limit:?}");
}

#[test]
fn connecting_locking_loading_and_starting_lead_to_active_and_confirm_the_slot_position() {
    // Goal: a new instance's first command is ConnectReplication (LC-1: storage needs no
    // Postgres, so nothing else comes first); the setup then runs TryLock → LoadStorage →
    // StartStreaming for its slot and publication, and once active the core confirms the
    // slot's own position, nothing beyond.
    // Method: build an instance, look at its first outputs, walk the setup.
    let mut h = Harness::new();
    let out = h.take();
    assert_eq!(kinds(&out), ["ConnectReplication"]);
    assert!(!h.core().is_active());
    assert_eq!(
        h.core().poll_timeout(),
        Some(h.now() + Duration::from_secs(1)),
        "while connecting only the read-model refresh is timed"
    );

    h.start(START_LSN);
    assert!(h.core().is_active());
    let out = h.take();
    assert_eq!(
        kinds(&out),
        [
            "TryLock",
            "LoadStorage",
            "StartStreaming",
            "PersistIdentity",
            "SendStandbyStatus"
        ]
    );
    let Some(Output::StartStreaming { target, .. }) = out.get(2) else {
        unreachable!()
    };
    assert_eq!(target, &Harness::config().target);
    assert_eq!(flushes(&out), [START_LSN]);
}

#[test]
fn failed_starts_back_off_doubling_from_one_second_capped_at_ten() {
    // Goal: RC-2 backoff: 1 s, 2 s, 4 s, 8 s, then 10 s for good.
    // Method: fail every connection attempt and measure the virtual time to the next
    // ConnectReplication.
    let mut h = Harness::new();
    h.take();
    let mut delays = Vec::new();
    for _ in 0..7 {
        h.fail_step(DisconnectKind::Transient);
        delays.push(time_to_next_connect(&mut h, Duration::from_secs(11)).as_secs_f64());
    }
    assert_eq!(delays, [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]);
}

#[test]
fn a_fatal_connection_failure_emits_fatal_and_never_retries() {
    // Goal: an error that needs an operator ends the instance instead of retrying.
    // Method: fail the first connection as Fatal, then let a minute pass. (That the failed
    // instance also goes quiet is `lifecycle::a_fatal_error_stops_every_timer`.)
    let mut h = Harness::new();
    h.take();
    h.fail_step(DisconnectKind::Fatal);
    let out = h.take();
    assert_eq!(kinds(&out), ["Fatal"]);
    let Output::Fatal { message } = &out[0] else {
        unreachable!()
    };
    assert_eq!(message, "connection refused");
    h.advance(Duration::from_secs(60));
    assert!(!kinds(&h.take()).contains(&"ConnectReplication"));
}

#[test]
fn a_fatal_loss_while_active_emits_fatal() {
    // Goal: a fatal error on an established stream is fatal too: no StopReplication and
    // reconnect, just Fatal.
    // Method: reach active, then report the stream lost with a Fatal kind.
    let mut h = Harness::active();
    h.input(Input::ReplicationLost {
        kind: DisconnectKind::Fatal,
    });
    assert_eq!(kinds(&h.take()), ["Fatal"]);
    h.advance(Duration::from_secs(60));
    assert!(!kinds(&h.take()).contains(&"ConnectReplication"));
}

#[test]
fn backoff_resets_after_five_seconds_of_streaming() {
    // Goal: RC-2: the delay resets only after 5 s of continuous streaming.
    // Method: fail twice (next delay would be 4 s), stream for 5 s, lose the stream.
    let mut h = Harness::new();
    h.take();
    h.fail_step(DisconnectKind::Transient);
    time_to_next_connect(&mut h, Duration::from_secs(2));
    h.fail_step(DisconnectKind::Transient);
    time_to_next_connect(&mut h, Duration::from_secs(3));
    h.start(START_LSN);
    h.advance(Duration::from_secs(5));
    h.lose_replication();
    assert_eq!(
        time_to_next_connect(&mut h, Duration::from_secs(11)),
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
    h.fail_step(DisconnectKind::Transient);
    time_to_next_connect(&mut h, Duration::from_secs(2));
    h.start(START_LSN);
    h.advance(Duration::from_secs(1));
    h.lose_replication();
    assert_eq!(
        time_to_next_connect(&mut h, Duration::from_secs(11)),
        Duration::from_secs(2)
    );
}

#[test]
fn replies_to_steps_the_core_no_longer_waits_for_are_dropped() {
    // Goal: replies are matched by op; a stale or made-up one changes nothing at any step
    // of the setup.
    // Method: before each real reply, answer with an op that was never issued.
    let mut h = Harness::new();
    h.take();
    let stale = |h: &Harness, step| OpId(h.awaiting(step).expect("awaited").0 + 100);
    let op = stale(&h, Step::Connect);
    let identity = super::harness::system();
    h.input(Input::ReplicationConnected { op, identity });
    assert!(h.take().is_empty());
    h.connect();
    h.take();

    let op = stale(&h, Step::Lock);
    h.input(Input::LockAttempted { op, acquired: true });
    assert!(h.take().is_empty(), "a made-up lock is not held");
    h.lock(true);
    h.take();

    let op = stale(&h, Step::Load);
    let storage = LoadedStorage::default();
    h.input(Input::StorageLoaded { op, storage });
    assert!(h.take().is_empty());
    h.load_storage();
    h.take();

    let op = stale(&h, Step::Stream);
    let slot = SlotStarted {
        slot_created: false,
        confirmed_flush_lsn: START_LSN,
        stamps_reserved: HandleStamp::default(),
    };
    h.input(Input::ReplicationStarted { op, slot });
    assert!(!h.core().is_active());
    assert!(h.take().is_empty());
    h.start_streaming(START_LSN, false);
    assert!(h.core().is_active());
}

#[test]
fn malformed_pgoutput_stops_replication_and_reconnects() {
    // Goal: bad peer data is a state change, not a panic: stop, back off, reconnect.
    // Method: feed an unknown message tag while active.
    let mut h = Harness::active();
    h.xlog(Lsn(0x2000), vec![b'?', 1, 2, 3]);
    let out = h.take();
    assert_eq!(kinds(&out), ["StopReplication", "RefreshReadModel"]);
    assert!(!h.core().is_active());
    assert_eq!(
        time_to_next_connect(&mut h, Duration::from_secs(2)),
        Duration::from_secs(1)
    );
}

#[test]
fn a_replayed_transaction_already_durable_in_storage_is_not_appended_again() {
    // Goal: RC-3: after a reconnect the slot may resend a transaction whose confirmation it
    // never received; the shape reloaded from storage already holds it, so it is not
    // appended again and is confirmed at once. (Formerly the core kept its in-memory
    // position across the reconnect and confirmed 0/2001 at once; now it starts from what
    // the slot and storage say, since another instance may have written meanwhile.)
    // Method: append and flush T1, lose the stream, restart from the slot's stale position
    // and resend T1, then a new T2.
    let mut h = Harness::active();
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
        [START_LSN],
        "confirms the slot's own position first"
    );
    h.commit(&t1);
    let out = h.take();
    assert!(entries(&out, &handle).is_empty(), "T1 replay is dropped");
    assert!(!kinds(&out).contains(&"FlushLogs"));
    assert_eq!(flushes(&out), [Lsn(0x2001)]);

    h.commit(&Txn::new(701, 0x3000).insert(&items(), &["2", "b", "6"]));
    assert_eq!(offsets(&entries(&h.take(), &handle)), ["12288_0"]);
}

#[test]
fn a_transaction_whose_flush_was_running_at_the_disconnect_is_not_appended_again() {
    // Goal: RC-3 per shape: a transaction appended before the stream broke, whose flush was
    // still running, is not appended again when replayed. (Formerly the core kept the shape
    // in memory and waited for the old flush; now storage is loaded only once that flush
    // has returned, so the reloaded shape holds the transaction.)
    // Method: commit T1, lose the stream before LogsFlushed, reconnect and take the lock,
    // complete the original flush, load, restart from the slot's position, replay T1.
    let mut h = Harness::active();
    let handle = h.live_shape(&items());
    let t1 = Txn::new(700, 0x2000).insert(&items(), &["1", "a", "5"]);
    h.commit(&t1);
    assert_eq!(kinds(&h.take()), ["Append", "FlushLogs"]);

    h.lose_replication();
    h.advance(Duration::from_secs(1));
    h.connect();
    h.lock(true);
    assert_eq!(h.awaiting(Step::Load), None, "not while the old flush runs");
    h.complete_flush();
    h.load_storage();
    h.start_streaming(START_LSN, false);
    h.take();
    h.commit(&t1);
    let out = h.take();
    assert!(
        entries(&out, &handle).is_empty(),
        "no duplicate Append: {:?}",
        kinds(&out)
    );
    assert!(!kinds(&out).contains(&"FlushLogs"));
    assert_eq!(flushes(&out), [Lsn(0x2001)]);
}

#[test]
#[should_panic(expected = "time-monotonic")]
fn time_going_backwards_is_a_contract_violation() {
    // Goal: every handle_* asserts that `now` never goes backwards (the assertion is the
    // contract between driver and core).
    // Method: reach active, then call handle_timeout with an earlier instant.
    let mut h = Harness::active();
    h.advance(Duration::from_secs(2));
    h.keepalive(START_LSN, false);
    h.rewind_clock(Duration::from_secs(1));
}
