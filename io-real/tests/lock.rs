//! The advisory lock on the replication connection (deploy-semantics §1.2) and the lock
//! breaker's query (§1.3), against a real throwaway PostgreSQL.
//!
//! Method: one shared cluster for the test binary with a database per test
//! (`embedded_pg::shared_for_tests`). Every test uses its own slot name: slot names are
//! cluster-wide.

// Helpers outside `#[test]` fns panic on failure too: this whole file is test code.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use ampere_core::ports::{
    DisconnectKind, PgError, PgPort, ReplicationSession, ReplicationTarget, SlotPersistence,
};
use ampere_io_real::embedded_pg::shared_for_tests;
use ampere_io_real::pg::{PgPortError, RealPg, RealSession};

/// How often the tests poll, and how many times at most (5 s).
const POLL: Duration = Duration::from_millis(50);
const POLLS_MAX: u32 = 100;

/// A fresh database on the shared cluster: a port for it and a superuser client.
async fn database(name: &str) -> (RealPg, Client) {
    let cluster = shared_for_tests().expect("shared test cluster starts");
    let url = cluster.create_database(name).expect("CREATE DATABASE");
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await.expect("connect");
    tokio::spawn(connection);
    (RealPg::from_url(&url).expect("valid url"), client)
}

async fn session(pg: &RealPg) -> RealSession {
    pg.connect_replication()
        .await
        .expect("connect replication")
        .0
}

async fn try_lock(session: RealSession, slot: &str) -> (RealSession, bool) {
    let (session, locked) = session.try_advisory_lock(slot.to_owned()).await;
    (session, locked.expect("pg_try_advisory_lock"))
}

/// Polls the lock as the driver does (LK-4), until granted; panics after [`POLLS_MAX`].
async fn lock_within_polls(mut session: RealSession, slot: &str) -> (RealSession, u32) {
    for poll in 1..=POLLS_MAX {
        let (again, locked) = try_lock(session, slot).await;
        if locked {
            return (again, poll);
        }
        session = again;
        tokio::time::sleep(POLL).await;
    }
    panic!("the lock of {slot} was not granted within {POLLS_MAX} polls");
}

/// An inactive logical slot, as a crashed or stalled holder leaves it.
async fn create_inactive_slot(client: &Client, slot: &str) {
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .unwrap();
}

fn target(slot: &str) -> ReplicationTarget {
    ReplicationTarget {
        slot: slot.to_owned(),
        publication: format!("{slot}_publication"),
        slot_persistence: SlotPersistence::Persistent,
    }
}

#[tokio::test]
async fn lk3_connect_replication_reports_identity_and_pid_and_mutates_nothing() {
    let (pg, client) = database("lk3_identity").await;
    let (session, identity) = pg.connect_replication().await.unwrap();
    assert_eq!(session.backend_pid(), identity.backend_pid);
    let row = client
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(identity.system_id, row.get::<_, String>(0));
    assert_eq!(identity.timeline, 1);
    let row = client
        .query_one(
            "SELECT backend_type, datname FROM pg_stat_activity WHERE pid = $1",
            &[&identity.backend_pid],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("walsender".to_owned(), "lk3_identity".to_owned()),
        "the pid is the replication connection's backend"
    );
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_publication), \
                    (SELECT count(*) FROM pg_replication_slots \
                     WHERE database = current_database()), \
                    (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1)",
            &[&identity.backend_pid],
        )
        .await
        .unwrap();
    let counts: (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(counts, (0, 0, 0), "no publication, slot or lock yet");
}

#[tokio::test]
async fn lk1_the_lock_key_is_the_servers_hashtext_of_the_slot() {
    // Goal: the same key as Electric (LK-1): hashtext evaluated by the server, widened to the
    // single bigint key form (objsubid = 1), in our database, on the replication connection.
    let (pg, client) = database("lk1_key").await;
    let slot = "electric_slot_lk1_key";
    let (session, locked) = try_lock(session(&pg).await, slot).await;
    assert!(locked);
    assert_eq!(session.locked_slot(), Some(slot));
    let rows = client
        .query(
            "SELECT l.objsubid::int4, \
                    ((l.classid::bigint << 32) | l.objid::bigint) = hashtext($1), \
                    d.datname::text \
             FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
             WHERE l.locktype = 'advisory' AND l.granted AND l.pid = $2",
            &[&slot, &session.backend_pid()],
        )
        .await
        .unwrap();
    let locks: Vec<(i32, bool, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(locks, vec![(1, true, "lk1_key".to_owned())]);
}

#[tokio::test]
async fn lk1_two_sessions_exclude_each_other_on_the_slot_lock() {
    let (pg, _client) = database("lk1_exclusion").await;
    let slot = "electric_slot_lk1_exclusion";
    let (_first, first_locked) = try_lock(session(&pg).await, slot).await;
    assert!(first_locked);
    let (second, second_locked) = try_lock(session(&pg).await, slot).await;
    assert!(!second_locked);
    let (second, still_locked) = try_lock(second, slot).await;
    assert!(!still_locked, "polling again changes nothing");
    assert_eq!(second.locked_slot(), None);
    let (_other, other_locked) = try_lock(session(&pg).await, "electric_slot_lk1_other").await;
    assert!(other_locked, "another slot name is another lock");
}

#[tokio::test]
async fn lk2_the_lock_frees_when_the_holding_connection_closes() {
    let (pg, _client) = database("lk2_release").await;
    let slot = "electric_slot_lk2_release";
    let (first, locked) = try_lock(session(&pg).await, slot).await;
    assert!(locked);
    let (second, locked) = try_lock(session(&pg).await, slot).await;
    assert!(!locked);
    drop(first);
    let (second, polls) = lock_within_polls(second, slot).await;
    assert!(polls <= 20, "granted only after {polls} polls");
    assert_eq!(second.locked_slot(), Some(slot));
}

#[tokio::test]
async fn lb1_stale_lock_holders_names_a_holder_only_while_its_slot_is_inactive() {
    // Goal: LB-1's condition: the holder is named only while the slot of the same name exists
    // in our database and is inactive; never our own backend; never a streaming holder.
    // Method: one holder; look with no slot, with the slot in another database, with it
    // inactive here (as ourselves and as a waiter), and while the holder streams from it.
    let (pg, client) = database("lb1_holders").await;
    let (_, other_db) = database("lb1_holders_other").await;
    let slot = "electric_slot_lb1_holders";
    let (holder, locked) = try_lock(session(&pg).await, slot).await;
    assert!(locked);
    let holder_pid = holder.backend_pid();
    let waiter_pid = session(&pg).await.backend_pid();
    let stale = |own_pid: i32| pg.stale_lock_holders(slot.to_owned(), own_pid);

    assert_eq!(
        stale(waiter_pid).await.unwrap(),
        Vec::<i32>::new(),
        "no slot"
    );
    create_inactive_slot(&other_db, slot).await;
    assert_eq!(
        stale(waiter_pid).await.unwrap(),
        Vec::<i32>::new(),
        "slot elsewhere"
    );
    other_db
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .unwrap();

    create_inactive_slot(&client, slot).await;
    assert_eq!(stale(waiter_pid).await.unwrap(), vec![holder_pid]);
    assert_eq!(
        stale(0).await.unwrap(),
        vec![holder_pid],
        "own pid not known yet"
    );
    assert_eq!(
        stale(holder_pid).await.unwrap(),
        Vec::<i32>::new(),
        "never ourselves"
    );

    let (_stream, _) = holder.start_streaming(target(slot)).await.unwrap();
    for _ in 0..POLLS_MAX {
        let row = client
            .query_one(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap();
        if row.get::<_, bool>(0) {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(
        stale(waiter_pid).await.unwrap(),
        Vec::<i32>::new(),
        "a streaming holder is healthy"
    );
}

#[tokio::test]
async fn lb1_terminating_a_stale_holder_frees_the_lock() {
    let (pg, client) = database("lb1_terminate").await;
    let slot = "electric_slot_lb1_terminate";
    let (holder, locked) = try_lock(session(&pg).await, slot).await;
    assert!(locked);
    create_inactive_slot(&client, slot).await;
    let (waiter, locked) = try_lock(session(&pg).await, slot).await;
    assert!(!locked);

    let stale = pg
        .stale_lock_holders(slot.to_owned(), waiter.backend_pid())
        .await
        .unwrap();
    assert_eq!(stale, vec![holder.backend_pid()]);
    assert!(pg.terminate_backend(holder.backend_pid()).await.unwrap());
    let (waiter, _) = lock_within_polls(waiter, slot).await;
    assert_eq!(waiter.locked_slot(), Some(slot));
    let result = holder.start_streaming(target(slot)).await;
    let err = result
        .err()
        .expect("the terminated holder's connection is gone");
    assert_eq!(err.kind(), DisconnectKind::Transient, "{err}");
}

#[tokio::test]
async fn a_slot_name_that_cannot_be_a_literal_is_refused() {
    // LK-3: the slot is inlined on the walsender, safe only for `[a-z0-9_]` (NM-2).
    let (pg, _client) = database("lock_bad_literal").await;
    let mut session = session(&pg).await;
    let long = "a".repeat(64);
    for bad in [
        "x'); SELECT pg_sleep(10); --",
        "Electric_slot",
        "slot-1",
        "",
        &long,
    ] {
        let (again, result) = session.try_advisory_lock(bad.to_owned()).await;
        let err = result.expect_err(bad);
        assert!(
            matches!(err, PgPortError::InvalidSlotName { .. }),
            "{err:?}"
        );
        assert_eq!(err.kind(), DisconnectKind::Fatal);
        let err = pg.stale_lock_holders(bad.to_owned(), 0).await.unwrap_err();
        assert!(
            matches!(err, PgPortError::InvalidSlotName { .. }),
            "{err:?}"
        );
        session = again;
    }
    let (_session, locked) = try_lock(session, &"a".repeat(63)).await;
    assert!(locked, "the session stays usable");
}

#[tokio::test]
#[should_panic(expected = "lock-once")]
async fn asking_for_a_granted_lock_again_is_a_bug() {
    let (pg, _client) = database("lock_once").await;
    let slot = "electric_slot_lock_once";
    let (session, locked) = try_lock(session(&pg).await, slot).await;
    assert!(locked);
    let _ = session.try_advisory_lock(slot.to_owned()).await;
}

#[tokio::test]
#[should_panic(expected = "lock-before-mutation")]
async fn streaming_without_the_lock_is_a_bug() {
    let (pg, _client) = database("lock_before_mutation").await;
    let slot = "electric_slot_lock_before_mutation";
    let _ = session(&pg).await.start_streaming(target(slot)).await;
}
