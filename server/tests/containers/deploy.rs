//! Deployment scenarios around the advisory lock, standby mode, temporary slots and storage
//! continuity (issue items a, b, g, i; deploy-semantics.md §1.1–1.5, §1.10, §2 B3). They are
//! written to the spec; until the lock/standby work lands some of them fail, at the first
//! expectation that is not met (the failure message says which).

use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::ampere::HealthMonitor;
use crate::client::{Background, ShapeClient};
use crate::docker::query;
use crate::faults::{assert_clean, converge, start_active, ACTIVE_TIMEOUT, CONVERGE_TIMEOUT};
use crate::harness::Ctx;
use crate::http;
use crate::util::{copy_dir, poll_until, secs};

const TEMP_SLOTS: [(&str, &str); 2] = [
    ("CLEANUP_REPLICATION_SLOTS_ON_SHUTDOWN", "true"),
    (
        "ELECTRIC_TEMPORARY_REPLICATION_SLOT_USE_RANDOM_NAME",
        "true",
    ),
];

/// a. Rolling upgrade on shared storage. A is active with a live client; B starts with the
/// same storage dir and stream id → B reports 202 `{"status":"waiting"}`, serves the existing
/// shape with the same handle, answers a new shape with 503 `Retry-After: 5`; SIGTERM A →
/// B reports 200 within 15 s; the client (switched to B once A is gone) sees no 409 and every
/// one of 500 writes made across the handover exactly once, in order.
pub(crate) async fn rolling_upgrade_shared_storage(mut ctx: Ctx) {
    ctx.create_table("items").await;
    ctx.create_table("other").await;
    ctx.insert_range("items", 1, 100).await;
    let a = start_active(&mut ctx, "a", "shared", "roll").await;
    let mut client = ShapeClient::new("client", ctx.proc(a).port, "items");
    converge(&mut ctx, &mut client).await;
    let handle = client.handle.clone().unwrap_or_default();
    let switch = client.target();
    let bg = client.spawn();

    let b_config = ctx.config("shared", "roll", &[]);
    let b = ctx.spawn("b", b_config);
    let b_health = HealthMonitor::spawn(ctx.proc(b).port);
    standby_serves_reads_only(&mut ctx, b, &b_health, &handle, &bg.progress().offset).await;
    handover_under_writes(&mut ctx, a, b, b_health, &switch).await;

    let mut client = finish_background(&mut ctx, bg, 600).await;
    converge(&mut ctx, &mut client).await;
    assert_clean(&mut ctx, &client, 0);
    assert_eq!(
        client.handles,
        vec![handle.clone()],
        "one handle across the handover"
    );
    let ids: Vec<i64> = client
        .inserted_ids()
        .into_iter()
        .filter(|i| *i > 100)
        .collect();
    let expected: Vec<i64> = (101..=600).collect();
    assert!(
        ids == expected,
        "each of the 500 writes exactly once, in order: got {} ids, first mismatch at {:?}",
        ids.len(),
        ids.iter().zip(&expected).position(|(a, b)| a != b)
    );
    ctx.pass();
}

/// a, part 1: B (same storage, same stream id) waits: health 202 `waiting`, the existing shape
/// served with A's handle (from `offset=-1` and at the client's offset), a new shape refused
/// with 503 `Retry-After: 5` after the 5 s admission wait.
async fn standby_serves_reads_only(
    ctx: &mut Ctx,
    b: usize,
    b_health: &HealthMonitor,
    handle: &str,
    offset: &str,
) {
    let pb = ctx.proc(b).port;
    ctx.stage("B (same storage, same stream id): health 202 {\"status\":\"waiting\"}");
    let waited = ctx
        .proc_mut(b)
        .wait_health(202, Some("\"waiting\""), Duration::from_secs(20))
        .await;
    if let Err(e) = waited {
        panic!("{e}; B's health so far: {}", b_health.seen());
    }

    ctx.stage("B serves the existing shape with the same handle");
    let r = http::get(
        pb,
        "/v1/shape?offset=-1&table=items",
        Duration::from_secs(20),
    )
    .await
    .unwrap_or_else(|e| panic!("GET on B: {e}"));
    assert_eq!(
        (r.status, r.header("electric-handle")),
        (200, Some(handle)),
        "B must serve the existing shape (offset=-1) with A's handle; body {}",
        r.body_text()
    );
    let url = format!(
        "/v1/shape?handle={}&offset={}&table=items",
        http::encode(handle),
        http::encode(offset)
    );
    let r = http::get(pb, &url, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("GET on B: {e}"));
    assert_eq!(
        r.status,
        200,
        "B must serve the handle at offset {offset}: {}",
        r.body_text()
    );

    ctx.stage("B: a new shape → 503 Retry-After 5 (within ~5 s)");
    let t = Instant::now();
    let r = http::get(
        pb,
        "/v1/shape?offset=-1&table=other",
        Duration::from_secs(20),
    )
    .await
    .unwrap_or_else(|e| panic!("GET on B: {e}"));
    let took = t.elapsed();
    assert_eq!(
        (r.status, r.header("retry-after")),
        (503, Some("5")),
        "a new shape on a waiting instance: 503 Retry-After 5; got {} after {}: {}",
        r.status,
        secs(took),
        r.body_text()
    );
    assert!(
        took <= Duration::from_secs(8),
        "503 after {} (expected ≤ 5 s)",
        secs(took)
    );
}

/// a, part 2: 500 single-row writes, 20 ms apart; after the 200th, SIGTERM A; once A has
/// exited the client is switched to B, which must report 200 within 15 s of the SIGTERM.
async fn handover_under_writes(
    ctx: &mut Ctx,
    a: usize,
    b: usize,
    b_health: HealthMonitor,
    switch: &AtomicU16,
) {
    ctx.stage("500 writes across the handover; SIGTERM A after the 200th");
    let conn = ctx.pg.connect().await.unwrap_or_else(|e| panic!("{e}"));
    let (written_tx, mut written) = watch::channel(0i64);
    let writer = tokio::spawn(async move {
        for i in 1..=500i64 {
            let id = 100 + i;
            query(
                &conn,
                &format!("INSERT INTO items VALUES ({id}, 'w{i}', {i})"),
            )
            .await?;
            let _ = written_tx.send(i);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok::<(), String>(())
    });
    written
        .wait_for(|n| *n >= 200)
        .await
        .unwrap_or_else(|_| panic!("writer failed before 200 writes"));
    let t_term = Instant::now();
    let status = ctx.proc_mut(a).sigterm(Duration::from_secs(20)).await;
    ctx.note(format!(
        "A exited {} after SIGTERM ({status:?})",
        secs(t_term.elapsed())
    ));
    switch.store(ctx.proc(b).port, Ordering::SeqCst);
    ctx.stage("B: health 200 within 15 s of SIGTERM to A");
    let left = Duration::from_secs(15).saturating_sub(t_term.elapsed());
    let became = ctx.proc_mut(b).wait_health(200, None, left).await;
    ctx.note(format!("B health: {}", b_health.finish().await));
    became.unwrap_or_else(|e| panic!("{e}"));
    ctx.summary.recover = Some(t_term.elapsed());
    writer
        .await
        .unwrap_or_else(|e| panic!("writer task: {e}"))
        .unwrap_or_else(|e| panic!("writer: {e}"));
    ctx.summary.writes += 500;
}

/// Waits until the background client holds `rows` rows and is up to date, then stops it.
pub(crate) async fn finish_background(
    ctx: &mut Ctx,
    mut bg: Background,
    rows: usize,
) -> ShapeClient {
    ctx.stage(format!("client catching up to {rows} rows"));
    let r = bg
        .wait_for(&format!("{rows} rows"), CONVERGE_TIMEOUT, |p| {
            p.rows >= rows && p.up_to_date
        })
        .await;
    let client = bg.stop().await;
    r.unwrap_or_else(|e| panic!("{e}"));
    client
}

/// b. Separate storage dirs with temporary, randomly named slots
/// (`CLEANUP_REPLICATION_SLOTS_ON_SHUTDOWN=true` + `ELECTRIC_TEMPORARY_REPLICATION_SLOT_USE_RANDOM_NAME=true`):
/// both instances are active, each on its own `electric_slot_<32 hex>` temporary slot; a client
/// moved from one to the other gets one 409 and re-converges.
#[allow(clippy::too_many_lines)] // one scenario, read top to bottom as its script
pub(crate) async fn separate_storage_temporary_slots(mut ctx: Ctx) {
    ctx.create_table("items").await;
    ctx.insert_range("items", 1, 100).await;
    let a_config = ctx.config("storage-a", "sep", &TEMP_SLOTS);
    let b_config = ctx.config("storage-b", "sep", &TEMP_SLOTS);
    let a = ctx.spawn("a", a_config);
    let b = ctx.spawn("b", b_config);
    ctx.stage("both instances active (health 200)");
    for i in [a, b] {
        ctx.proc_mut(i)
            .wait_health(200, None, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    ctx.stage("two temporary slots electric_slot_<32 hex>, both active");
    let slots = ctx
        .pg
        .sql_ok(
            "SELECT slot_name, temporary::text, active::text FROM pg_replication_slots ORDER BY 1",
        )
        .await;
    ctx.note(format!("slots: {slots:?}"));
    let random = |name: &str| {
        name.strip_prefix("electric_slot_").is_some_and(|h| {
            h.len() == 32
                && h.bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        })
    };
    let good = slots
        .iter()
        .filter(|r| {
            r[0].as_deref().is_some_and(random)
                && r[1].as_deref() == Some("true")
                && r[2].as_deref() == Some("true")
        })
        .count();
    assert_eq!(
        good, 2,
        "expected two active temporary random slots, got {slots:?}"
    );

    let (pa, pb) = (ctx.proc(a).port, ctx.proc(b).port);
    let mut client = ShapeClient::new("client", pa, "items");
    converge(&mut ctx, &mut client).await;
    ctx.insert_range("items", 101, 150).await;
    converge(&mut ctx, &mut client).await;
    let handle_a = client.handle.clone();

    ctx.stage("client moved from A to B");
    client.target().store(pb, Ordering::SeqCst);
    client.at_up_to_date = false;
    let t0 = Instant::now();
    ctx.insert_range("items", 151, 200).await;
    converge(&mut ctx, &mut client).await;
    ctx.summary.recover = Some(t0.elapsed());
    assert_ne!(
        client.handle, handle_a,
        "B has its own handle for the shape"
    );

    ctx.stage("SIGTERM A: its temporary slot goes away");
    let slot_count = "SELECT count(*) FROM pg_replication_slots";
    ctx.proc_mut(a).sigterm(Duration::from_secs(20)).await;
    let pg = &ctx.pg;
    let gone = poll_until(
        Duration::from_secs(15),
        Duration::from_millis(200),
        || async move { pg.scalar(slot_count).await.filter(|n| n == "1") },
    )
    .await;
    ctx.note(format!(
        "after SIGTERM of A, one slot left: {}",
        gone.is_some()
    ));
    assert_clean(&mut ctx, &client, 1);
    assert!(
        gone.is_some(),
        "A's temporary slot must be dropped when A shuts down"
    );
    ctx.pass();
}

/// g. An old copy of the storage dir put back: copy the dir while ampere is stopped, run more
/// writes through a restarted ampere (the slot moves on), stop it, restore the old copy, start
/// → ampere must detect storage behind the slot (purge `slot_ahead_of_storage`): the client gets
/// a 409 and re-converges, and a fresh client sees no gap.
#[allow(clippy::too_many_lines)] // one scenario, read top to bottom as its script
pub(crate) async fn stale_storage_restored(mut ctx: Ctx) {
    ctx.create_table("items").await;
    ctx.insert_range("items", 1, 100).await;
    let a = start_active(&mut ctx, "ampere", "storage", "stale").await;
    let port = ctx.proc(a).port;
    let mut client = ShapeClient::new("client", port, "items");
    converge(&mut ctx, &mut client).await;
    let slot_lsn = "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'electric_slot_stale'";

    ctx.stage("stop ampere, copy the storage dir");
    ctx.proc_mut(a).sigterm(Duration::from_secs(20)).await;
    let lsn_copy = ctx.pg.scalar(slot_lsn).await;
    copy_dir(&ctx.storage("storage"), &ctx.storage("storage-old"));

    ctx.stage("restart, more writes through it, stop");
    ctx.proc_mut(a).start();
    ctx.proc_mut(a)
        .wait_health(200, None, ACTIVE_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    ctx.insert_range("items", 101, 150).await;
    ctx.insert_range("items", 151, 200).await;
    converge(&mut ctx, &mut client).await;
    let handle = client.handle.clone();
    tokio::time::sleep(Duration::from_secs(1)).await; // let the acknowledgement go out
    ctx.proc_mut(a).sigterm(Duration::from_secs(20)).await;
    let lsn_after = ctx.pg.scalar(slot_lsn).await;
    ctx.note(format!(
        "slot confirmed_flush_lsn at copy {lsn_copy:?}, after more writes {lsn_after:?}"
    ));
    assert_ne!(
        lsn_copy, lsn_after,
        "precondition: the slot must have moved past the copy"
    );

    ctx.stage("restore the old copy and start");
    std::fs::remove_dir_all(ctx.storage("storage")).unwrap_or_else(|e| panic!("rm storage: {e}"));
    copy_dir(&ctx.storage("storage-old"), &ctx.storage("storage"));
    let monitor = HealthMonitor::spawn(port);
    ctx.proc_mut(a).start();
    let t0 = Instant::now();
    let active = ctx.proc_mut(a).wait_health(200, None, ACTIVE_TIMEOUT).await;
    let health = ctx.proc(a).health().await;
    ctx.note(format!("health after restore: {health:?}"));
    active.unwrap_or_else(|e| panic!("{e}"));

    ctx.stage("the old client (ahead of the restored storage) must get a 409, then converge");
    let mut problems = Vec::new();
    client.at_up_to_date = false; // make it ask: it holds rows the restored storage lacks
    if let Err(e) = client.converge(&ctx.pg, CONVERGE_TIMEOUT).await {
        problems.push(format!("old client: {e}"));
    }
    ctx.summary.recover = Some(t0.elapsed());
    if client.stats.must_refetch == 0 {
        problems.push(format!(
            "old client saw no 409 (handles {:?}, was {handle:?})",
            client.handles
        ));
    }
    ctx.stage("a fresh client must see every row (no silent gap)");
    let mut fresh = ShapeClient::new("fresh", port, "items");
    match fresh.converge(&ctx.pg, Duration::from_secs(30)).await {
        Ok(rows) => ctx.summary.rows_verified = rows,
        Err(e) => problems.push(format!("fresh client: {e}")),
    }
    ctx.note(format!("health: {}", monitor.finish().await));
    ctx.summary.refetches = client.stats.must_refetch;
    assert!(
        problems.is_empty(),
        "stale storage not detected: {}",
        problems.join(" | ")
    );
    assert_clean(&mut ctx, &client, 1);
    assert!(
        fresh.anomalies.is_empty(),
        "fresh client anomalies: {:?}",
        fresh.anomalies
    );
    ctx.pass();
}

/// i. A stale session holds the advisory lock (`pg_advisory_lock(hashtext('electric_slot_<id>'))`
/// from a plain, idle session) while the slot exists and is inactive → ampere waits, its lock
/// breaker terminates that session within 45 s, and ampere becomes active holding the lock on
/// its replication connection; no 409.
#[allow(clippy::too_many_lines)] // one scenario, read top to bottom as its script
pub(crate) async fn stale_lock_holder_broken(mut ctx: Ctx) {
    ctx.create_table("items").await;
    ctx.insert_range("items", 1, 100).await;
    let slot = "electric_slot_lockbreak";
    let a = start_active(&mut ctx, "ampere", "storage", "lockbreak").await;
    let port = ctx.proc(a).port;
    let mut client = ShapeClient::new("client", port, "items");
    converge(&mut ctx, &mut client).await;

    ctx.stage("stop ampere; the slot stays, inactive");
    ctx.proc_mut(a).sigterm(Duration::from_secs(20)).await;
    let inactive_sql =
        format!("SELECT active::text FROM pg_replication_slots WHERE slot_name = '{slot}'");
    let (pg, inactive_sql_ref) = (&ctx.pg, inactive_sql.as_str());
    poll_until(
        Duration::from_secs(15),
        Duration::from_millis(100),
        || async move { pg.scalar(inactive_sql_ref).await.filter(|a| a == "false") },
    )
    .await
    .unwrap_or_else(|| panic!("{slot} missing or still active after ampere stopped"));

    ctx.stage("a stale idle session takes the advisory lock");
    let stale = ctx.pg.connect().await.unwrap_or_else(|e| panic!("{e}"));
    let stale_pid = query(&stale, "SELECT pg_backend_pid()::text")
        .await
        .unwrap_or_else(|e| panic!("{e}"))[0][0]
        .clone()
        .unwrap_or_default();
    query(
        &stale,
        &format!("SELECT pg_advisory_lock(hashtext('{slot}'))"),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let holder_sql = format!(
        "SELECT pid::text FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
         AND ((classid::bigint << 32) | objid::bigint) = hashtext('{slot}')"
    );
    let holder = ctx.pg.scalar(&holder_sql).await;
    assert_eq!(
        holder.as_deref(),
        Some(stale_pid.as_str()),
        "the stale session must hold the lock"
    );

    let monitor = HealthMonitor::spawn(port);
    ctx.proc_mut(a).start();
    let t0 = Instant::now();
    ctx.stage(format!(
        "the lock breaker must terminate the stale session (pid {stale_pid}) within 45 s"
    ));
    let alive_sql = format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {stale_pid}");
    let (pg, alive_sql_ref) = (&ctx.pg, alive_sql.as_str());
    let terminated = poll_until(
        Duration::from_secs(45),
        Duration::from_millis(250),
        || async move { pg.scalar(alive_sql_ref).await.filter(|n| n == "0") },
    )
    .await;
    let took = t0.elapsed();
    if terminated.is_none() {
        let seen = monitor.finish().await;
        let holder = ctx.pg.scalar(&holder_sql).await;
        let active = ctx.pg.scalar(&inactive_sql).await;
        panic!(
            "stale lock holder {stale_pid} still alive after {}; lock holder now {holder:?}, slot active {active:?}; ampere health: {seen}",
            secs(took)
        );
    }
    ctx.note(format!("stale session terminated after {}", secs(took)));
    ctx.stage("ampere active, holding the lock on its replication connection");
    let left = Duration::from_secs(60).saturating_sub(t0.elapsed());
    ctx.proc_mut(a)
        .wait_health(200, None, left)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    ctx.summary.recover = Some(t0.elapsed());
    let seen = monitor.finish().await;
    ctx.note(format!("health: {seen}"));
    let holder = ctx.pg.scalar(&holder_sql).await;
    let walsender = ctx
        .pg
        .scalar(&format!(
            "SELECT active_pid::text FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ))
        .await;
    assert!(
        holder.is_some() && holder == walsender,
        "the lock must be held by the slot's walsender: holder {holder:?}, walsender {walsender:?}"
    );
    ctx.insert_range("items", 101, 150).await;
    converge(&mut ctx, &mut client).await;
    assert_clean(&mut ctx, &client, 0);
    ctx.pass();
}
