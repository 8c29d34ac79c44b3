//! What Postgres hears back: after a burst of transactions the slot's `confirmed_flush_lsn`
//! reaches the WAL end promptly, so a restart does not make the walsender decode the burst
//! again (issue 14).
//!
//! Method: the real binary streams from a database of this test binary's shared throwaway
//! cluster with one shape on the table whose where clause admits only the burst's last row;
//! the burst is one server-side loop committing every 100 rows. Once the shape serves that
//! row (the whole burst is durable: readers see only durable entries), the clock starts, and
//! a server-side loop reads `pg_replication_slots` every 5 ms (a `psql` per poll would take a
//! core from the process under test).

use std::time::{Duration, Instant};

mod common;

use common::{
    free_port, http_get, items_database, slot_confirmed_to_wal_end, spawn_active, Scratch,
};

/// Rows in the burst, committed 100 at a time.
const BURST_ROWS: u32 = 100_000;

/// How long after the burst's last row is durable in its shape the slot may take to confirm
/// the WAL end (it was up to `wal_sender_timeout / 2`, 30 s by default).
const CONFIRM_WITHIN: Duration = Duration::from_secs(2);

#[test]
fn after_a_burst_the_slots_confirmed_flush_lsn_reaches_the_wal_end_within_two_seconds() {
    let db = "ack_after_burst";
    let cluster = items_database(db);
    let scratch = Scratch::new("ack-after-burst");
    let port = free_port();
    let mut ampere = spawn_active(cluster, &scratch, db, port, &[]);
    let path = format!("/v1/shape?table=items&where=id%20%3E%20{BURST_ROWS}");
    let reply = http_get(port, &format!("{path}&offset=-1")).expect("create the shape");
    assert_eq!(reply.status, 200, "{reply:?}");
    let handle = reply.header("electric-handle").expect("handle").to_owned();
    let offset = reply.header("electric-offset").expect("offset").to_owned();
    let slot = format!("electric_slot_{db}");
    assert!(
        slot_confirmed_to_wal_end(cluster, db, &slot, Duration::from_secs(20)).is_some(),
        "the slot never caught up before the burst:\n{}",
        ampere.output()
    );

    let burst = format!(
        "DO $$ BEGIN FOR batch IN 0..{} LOOP \
           INSERT INTO items SELECT g, 'row ' || g \
             FROM generate_series(2 + batch * 100, 101 + batch * 100) g; \
           COMMIT; \
         END LOOP; END $$",
        BURST_ROWS / 100 - 1
    );
    let started = Instant::now();
    cluster.psql(db, &burst).expect("burst");
    let burst_took = started.elapsed();
    let last_row = format!("\"id\":\"{}\"", BURST_ROWS + 1);
    let mut served = String::new();
    while !served.contains(&last_row) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the burst's last row was not served within 120 s:\n{}",
            ampere.output()
        );
        let reply = http_get(port, &format!("{path}&handle={handle}&offset={offset}"))
            .expect("follow the shape");
        assert_eq!(reply.status, 200, "{reply:?}");
        served = reply.body;
    }
    let durable_after = started.elapsed();
    let confirmed = slot_confirmed_to_wal_end(cluster, db, &slot, CONFIRM_WITHIN);
    println!(
        "{BURST_ROWS} rows in {} transactions committed in {:.2} s, durable in the shape after \
         {:.2} s; WAL end confirmed {:?} after that",
        BURST_ROWS / 100,
        burst_took.as_secs_f64(),
        durable_after.as_secs_f64(),
        confirmed
    );
    assert!(
        ampere.try_status().is_none(),
        "ampere exited:\n{}",
        ampere.output()
    );
    assert!(
        confirmed.is_some(),
        "confirmed_flush_lsn still short of the WAL end {CONFIRM_WITHIN:?} after the burst \
         ({}):\n{}",
        cluster
            .psql(
                db,
                &format!(
                    "SELECT confirmed_flush_lsn, pg_current_wal_lsn() FROM pg_replication_slots \
                     WHERE slot_name = '{slot}'"
                )
            )
            .unwrap_or_default(),
        ampere.output()
    );
}
