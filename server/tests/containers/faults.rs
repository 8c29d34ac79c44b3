//! Single-instance fault scenarios (issue items c, d, e, f, h): each must end with the client
//! equal to `SELECT` on Postgres, with no duplicate, gap or reorder, and with exactly the 409s
//! the fault calls for (none, except for a dropped slot: one).

use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::ampere::HealthMonitor;
use crate::client::{Background, ShapeClient};
use crate::docker::query;
use crate::harness::Ctx;
use crate::http;
use crate::util::{poll_until, secs};

pub(crate) const ACTIVE_TIMEOUT: Duration = Duration::from_secs(60);
pub(crate) const CONVERGE_TIMEOUT: Duration = Duration::from_secs(90);

/// Starts an instance and waits for health 200.
pub(crate) async fn start_active(ctx: &mut Ctx, name: &str, storage: &str, stream: &str) -> usize {
    let config = ctx.config(storage, stream, &[]);
    let i = ctx.spawn(name, config);
    ctx.stage(format!("waiting for {name} to become active (health 200)"));
    let took = ctx
        .proc_mut(i)
        .wait_health(200, None, ACTIVE_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("[{}] {name} active after {}", ctx.name, secs(took));
    i
}

/// Runs `client` until it equals Postgres; records the rows verified.
pub(crate) async fn converge(ctx: &mut Ctx, client: &mut ShapeClient) {
    ctx.stage(format!(
        "{}: converging with SELECT on postgres",
        client.name
    ));
    let result = client.converge(&ctx.pg, CONVERGE_TIMEOUT).await;
    ctx.summary.refetches = client.stats.must_refetch;
    ctx.summary.rows_verified = result.unwrap_or_else(|e| panic!("{e}"));
}

/// The checks every scenario ends with.
pub(crate) fn assert_clean(ctx: &mut Ctx, client: &ShapeClient, expected_409s: u32) {
    ctx.stage(format!("{}: final checks", client.name));
    ctx.summary.refetches = client.stats.must_refetch;
    ctx.note(format!(
        "{}: {} requests, statuses {:?} (5xx: {} live, {} non-live), {} network errors, {} changes",
        client.name,
        client.stats.requests,
        client.stats.statuses,
        client.stats.live_5xx,
        client.stats.nonlive_5xx,
        client.stats.network_errors,
        client.changes.len()
    ));
    assert!(
        client.anomalies.is_empty(),
        "{}: {} anomalies, first: {:?}",
        client.name,
        client.anomalies.len(),
        client.anomalies.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(
        client.stats.must_refetch, expected_409s,
        "{}: expected {expected_409s} 409s, saw {} (handles {:?})",
        client.name, client.stats.must_refetch, client.handles
    );
}

/// Every replicated insert exactly once: the ids received equal `expected` as a multiset.
fn assert_each_insert_once(client: &ShapeClient, expected: usize) {
    let ids = client.inserted_ids();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        (ids.len(), sorted.len()),
        (expected, expected),
        "replicated inserts: {} received, {} distinct, {expected} written",
        ids.len(),
        sorted.len()
    );
}

/// Non-live reads of one shape at a fixed offset, every 250 ms, in the background: during an
/// outage they must all be answered 200 from storage.
struct Prober {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<(Duration, Result<u16, String>)>>,
}

impl Prober {
    fn spawn(port: u16, table: &str, handle: &str, offset: &str) -> Self {
        let url = format!(
            "/v1/shape?handle={}&offset={}&table={}",
            http::encode(handle),
            http::encode(offset),
            http::encode(table)
        );
        let (stop, mut rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let t = Instant::now();
            let mut results = Vec::new();
            loop {
                let r = http::get(port, &url, Duration::from_secs(10)).await;
                results.push((t.elapsed(), r.map(|r| r.status).map_err(|e| e.to_string())));
                tokio::select! {
                    _ = rx.changed() => break,
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
            results
        });
        Self { stop, task }
    }

    /// `(reads, failures)`; a failure is anything but 200.
    async fn finish(self) -> (usize, Vec<String>) {
        let _ = self.stop.send(true);
        let results = self.task.await.unwrap_or_default();
        let failures = results
            .iter()
            .filter(|(_, r)| *r != Ok(200))
            .map(|(t, r)| format!("t={:.1}s {r:?}", t.as_secs_f64()))
            .collect();
        (results.len(), failures)
    }
}

/// c. `kill -9` of the active instance while 5 × 20k-row transactions stream in (twice: after
/// the 2nd commit, and again mid catch-up) → restart on the same storage → the client converges
/// with every row exactly once and no 409.
#[allow(clippy::too_many_lines)] // one scenario, read top to bottom as its script
pub(crate) async fn kill9_during_ingest(mut ctx: Ctx) {
    const TXNS: i64 = 5;
    const ROWS: i64 = 20_000;
    ctx.create_table("items").await;
    let a = start_active(&mut ctx, "ampere", "storage", "kill9").await;
    let port = ctx.proc(a).port;
    let mut client = ShapeClient::new("client", port, "items");
    converge(&mut ctx, &mut client).await;
    let mut bg = client.spawn();

    ctx.stage("ingest 5 × 20k-row transactions; kill -9 after the 2nd commit");
    let conn = ctx.pg.connect().await.unwrap_or_else(|e| panic!("{e}"));
    let (done_tx, mut committed) = watch::channel(0i64);
    let writer = tokio::spawn(async move {
        for t in 0..TXNS {
            let (from, to) = (t * ROWS + 1, (t + 1) * ROWS);
            query(
                &conn,
                &format!(
                    "INSERT INTO items SELECT g, md5(g::text), (g % 1000)::int FROM generate_series({from}, {to}) g"
                ),
            )
            .await?;
            let _ = done_tx.send(t + 1);
        }
        Ok::<(), String>(())
    });
    committed
        .wait_for(|n| *n >= 2)
        .await
        .unwrap_or_else(|_| panic!("writer failed before its 2nd commit"));
    ctx.proc_mut(a).kill9();
    let killed_at = Instant::now();
    let p = bg.progress();
    ctx.note(format!(
        "kill -9 #1 with {} txns committed, client at {} rows",
        *committed.borrow(),
        p.rows
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    ctx.stage("restart #1 (same storage, same port)");
    ctx.proc_mut(a).start();

    ctx.stage("kill -9 #2 once the client is mid catch-up (≥ 50k rows, or after 20 s)");
    let mid = bg
        .wait_for("50k rows", Duration::from_secs(20), |p| p.rows >= 50_000)
        .await;
    ctx.proc_mut(a).kill9();
    let p = bg.progress();
    ctx.note(format!(
        "kill -9 #2 with {} txns committed, client at {} rows{}",
        *committed.borrow(),
        p.rows,
        if mid.is_err() {
            " (50k not reached in 20 s)"
        } else {
            ""
        }
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    ctx.stage("restart #2");
    ctx.proc_mut(a).start();

    ctx.stage("waiting for the writer to commit all 100k rows");
    writer
        .await
        .unwrap_or_else(|e| panic!("writer task: {e}"))
        .unwrap_or_else(|e| panic!("writer: {e}"));
    ctx.summary.writes = u64::try_from(TXNS * ROWS).unwrap_or(0);
    ctx.proc_mut(a)
        .wait_health(200, None, ACTIVE_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    ctx.stage("client catching up with 100k rows");
    let caught_up = bg
        .wait_for("100k rows", CONVERGE_TIMEOUT, |p| {
            p.rows >= 100_000 && p.up_to_date
        })
        .await;
    let mut client = bg.stop().await;
    caught_up.unwrap_or_else(|e| panic!("{e}"));
    converge(&mut ctx, &mut client).await;
    ctx.summary.recover = Some(killed_at.elapsed());
    assert_clean(&mut ctx, &client, 0);
    assert_each_insert_once(&client, 100_000);
    ctx.pass();
}

/// The shared first part of d, e, f, h: 1000 rows, one active instance, a client that is up
/// to date and then keeps polling live in the background.
async fn live_client_on_1000_rows(
    ctx: &mut Ctx,
    stream: &str,
) -> (usize, Background, String, String) {
    ctx.create_table("items").await;
    ctx.insert_range("items", 1, 1000).await;
    let a = start_active(ctx, "ampere", "storage", stream).await;
    let mut client = ShapeClient::new("client", ctx.proc(a).port, "items");
    converge(ctx, &mut client).await;
    let handle = client.handle.clone().unwrap_or_default();
    let offset = client.offset.clone();
    (a, client.spawn(), handle, offset)
}

/// After an outage: waits for `rows` rows at the client, then checks that every read of the
/// existing shape was answered 200 throughout, that no non-live request got a 5xx (live
/// long-polls may get a 503 while degraded), and that the client equals Postgres with no 409.
async fn finish_outage(
    ctx: &mut Ctx,
    mut bg: Background,
    prober: Prober,
    monitor: HealthMonitor,
    rows: usize,
    min_reads: usize,
) {
    let caught_up = bg
        .wait_for(&format!("{rows} rows"), CONVERGE_TIMEOUT, |p| {
            p.rows >= rows && p.up_to_date
        })
        .await;
    let (reads, failures) = prober.finish().await;
    let health = monitor.finish().await;
    ctx.note(format!("health: {health}"));
    ctx.note(format!(
        "non-live reads of the existing shape during the fault: {reads}, non-200: {}",
        failures.len()
    ));
    let mut client = bg.stop().await;
    caught_up.unwrap_or_else(|e| panic!("{e}"));
    converge(ctx, &mut client).await;
    assert_clean(ctx, &client, 0);
    assert!(
        failures.is_empty(),
        "reads of the existing shape must be served during the fault; failures: {:?}",
        failures.iter().take(10).collect::<Vec<_>>()
    );
    assert_eq!(
        client.stats.nonlive_5xx, 0,
        "non-live requests answered 5xx: {:?}",
        client.stats.retry_after
    );
    assert!(reads >= min_reads, "too few probe reads ({reads})");
}

/// d. Postgres container restarts: a `docker restart`, then a longer outage (`docker stop`,
/// 5 s down, `docker start`). Reads of the existing shape keep being answered 200 throughout,
/// ampere reconnects (health 200 again), writes made after each restart arrive, no 409.
pub(crate) async fn postgres_restart(mut ctx: Ctx) {
    let (a, mut bg, handle, offset) = live_client_on_1000_rows(&mut ctx, "pgrestart").await;
    let port = ctx.proc(a).port;
    let monitor = HealthMonitor::spawn(port);
    let prober = Prober::spawn(port, "items", &handle, &offset);

    ctx.stage("docker restart of the postgres container");
    let t0 = Instant::now();
    let took = ctx.pg.restart().await;
    ctx.proc_mut(a)
        .wait_health(200, None, ACTIVE_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    ctx.note(format!(
        "docker restart took {}, ampere active again {} after it began",
        secs(took),
        secs(t0.elapsed())
    ));
    ctx.insert_range("items", 1001, 1050).await;
    bg.wait_for("1050 rows", CONVERGE_TIMEOUT, |p| {
        p.rows >= 1050 && p.up_to_date
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    ctx.stage("docker stop of the postgres container (5 s outage)");
    let t1 = Instant::now();
    ctx.pg.stop().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    ctx.stage("docker start");
    let pg_up = ctx.pg.start_again().await;
    ctx.note(format!(
        "postgres down {} (start took {})",
        secs(t1.elapsed()),
        secs(pg_up)
    ));
    ctx.stage("waiting for ampere to be active again");
    ctx.proc_mut(a)
        .wait_health(200, None, ACTIVE_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    ctx.summary.recover = Some(t1.elapsed());

    ctx.stage("writes after the restart");
    for k in 0..4 {
        ctx.insert_range("items", 1051 + k * 50, 1100 + k * 50)
            .await;
    }
    finish_outage(&mut ctx, bg, prober, monitor, 1250, 20).await;
    ctx.pass();
}

/// e. Network partition, silent: the Postgres container frozen with `docker pause` for 10 s
/// (TCP connections stay open, nothing answers). Reads served throughout, ampere carries on
/// (or reconnects), the first write after the partition arrives, converge, no 409.
pub(crate) async fn network_partition(mut ctx: Ctx) {
    let (a, bg, handle, offset) = live_client_on_1000_rows(&mut ctx, "partition").await;
    let port = ctx.proc(a).port;
    let monitor = HealthMonitor::spawn(port);
    let prober = Prober::spawn(port, "items", &handle, &offset);

    ctx.stage("docker pause of the postgres container for 10 s");
    ctx.pg.pause().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    ctx.stage("docker unpause; a write right away");
    ctx.pg.unpause().await;
    after_partition(&mut ctx, a, bg, prober, monitor).await;
    ctx.pass();
}

/// e2. Network partition, loud: `docker network disconnect` of the Postgres container for
/// 10 s (connections through the published port are cut, new ones refused), then reconnect.
/// Same expectations as e.
pub(crate) async fn network_disconnect(mut ctx: Ctx) {
    let (a, bg, handle, offset) = live_client_on_1000_rows(&mut ctx, "disconnect").await;
    let port = ctx.proc(a).port;
    let monitor = HealthMonitor::spawn(port);
    let prober = Prober::spawn(port, "items", &handle, &offset);

    ctx.stage("docker network disconnect of the postgres container for 10 s");
    ctx.pg.disconnect_network().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    ctx.stage("docker network connect; a write right away");
    ctx.pg.reconnect_network().await;
    ctx.pg
        .wait_connectable(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("after reconnect: {e}"));
    after_partition(&mut ctx, a, bg, prober, monitor).await;
    ctx.pass();
}

async fn after_partition(
    ctx: &mut Ctx,
    a: usize,
    mut bg: Background,
    prober: Prober,
    monitor: HealthMonitor,
) {
    let t0 = Instant::now();
    ctx.insert_range("items", 1001, 1001).await;
    bg.wait_for(
        "the first write after the partition",
        CONVERGE_TIMEOUT,
        |p| p.rows >= 1001,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    ctx.summary.recover = Some(t0.elapsed());
    ctx.proc_mut(a)
        .wait_health(200, None, ACTIVE_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    ctx.stage("more writes");
    for k in 0..4 {
        ctx.insert_range("items", 1002 + k * 50, 1051 + k * 50)
            .await;
    }
    finish_outage(ctx, bg, prober, monitor, 1201, 30).await;
}

/// f. The slot dropped externally (`pg_terminate_backend(active_pid)` +
/// `pg_drop_replication_slot`): ampere purges once, the client sees exactly one 409 and
/// re-converges (then keeps going on the new handle without another 409).
pub(crate) async fn slot_dropped_externally(mut ctx: Ctx) {
    let (a, mut bg, handle, _) = live_client_on_1000_rows(&mut ctx, "slotdrop").await;
    let slot = "electric_slot_slotdrop";

    ctx.stage("terminate the walsender and drop the slot");
    let pg = &ctx.pg;
    let dropped = poll_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async move {
            let _ = pg
                .sql(&format!(
                    "SELECT pg_terminate_backend(active_pid, 5000) FROM pg_replication_slots \
                 WHERE slot_name = '{slot}' AND active_pid IS NOT NULL"
                ))
                .await;
            match pg
                .sql(&format!("SELECT pg_drop_replication_slot('{slot}')"))
                .await
            {
                Ok(_) => Some(Ok(())),
                Err(e) if e.contains("is active") => None,
                Err(e) => Some(Err(e)),
            }
        },
    )
    .await;
    match dropped {
        Some(Ok(())) => {}
        Some(Err(e)) => panic!("drop slot: {e}"),
        None => panic!("could not drop {slot} within 30 s (ampere kept re-acquiring it)"),
    }
    let t0 = Instant::now();
    ctx.insert_range("items", 1001, 1100).await;

    ctx.stage("waiting for the 409 and the re-sync");
    bg.wait_for("a 409 and 1100 rows", CONVERGE_TIMEOUT, |p| {
        p.must_refetch >= 1 && p.rows >= 1100 && p.up_to_date
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    ctx.summary.recover = Some(t0.elapsed());
    ctx.stage("more writes on the new handle");
    ctx.insert_range("items", 1101, 1150).await;
    bg.wait_for("1150 rows", CONVERGE_TIMEOUT, |p| {
        p.rows >= 1150 && p.up_to_date
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let mut client = bg.stop().await;
    converge(&mut ctx, &mut client).await;
    let recreated = ctx
        .pg
        .scalar(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ))
        .await;
    ctx.note(format!(
        "handles {:?} (first {handle}); slot recreated: {recreated:?}; health {:?}",
        client.handles,
        ctx.proc(a).health().await
    ));
    assert_clean(&mut ctx, &client, 1);
    assert_ne!(
        client.handle.as_deref(),
        Some(handle.as_str()),
        "the 409 must lead to a new handle"
    );
    ctx.pass();
}

/// h. `pg_terminate_backend` of the replication backend: ampere reconnects to the same slot,
/// the client sees no 409 and converges.
pub(crate) async fn walsender_terminated(mut ctx: Ctx) {
    let (_a, mut bg, _, _) = live_client_on_1000_rows(&mut ctx, "walterm").await;
    let slot = "electric_slot_walterm";
    let pid_sql = format!("SELECT active_pid FROM pg_replication_slots WHERE slot_name = '{slot}'");
    let old_pid = ctx
        .pg
        .scalar(&pid_sql)
        .await
        .unwrap_or_else(|| panic!("{slot} is not active"));

    ctx.stage(format!("pg_terminate_backend({old_pid}) (the walsender)"));
    let t0 = Instant::now();
    ctx.pg
        .sql_ok(&format!("SELECT pg_terminate_backend({old_pid})"))
        .await;
    ctx.insert_range("items", 1001, 1100).await;
    ctx.stage("waiting for ampere to stream again from a new backend");
    let (pg, pid_sql_ref, old) = (&ctx.pg, pid_sql.as_str(), old_pid.as_str());
    let new_pid = poll_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async move {
            pg.sql(pid_sql_ref)
                .await
                .ok()
                .and_then(|r| r.into_iter().next())
                .and_then(|r| r.into_iter().next().flatten())
                .filter(|p| p != old)
        },
    )
    .await
    .unwrap_or_else(|| panic!("{slot} not active again within 30 s"));
    ctx.note(format!(
        "walsender {old_pid} → {new_pid} after {}",
        secs(t0.elapsed())
    ));
    bg.wait_for("1100 rows", CONVERGE_TIMEOUT, |p| {
        p.rows >= 1100 && p.up_to_date
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    ctx.summary.recover = Some(t0.elapsed());
    ctx.insert_range("items", 1101, 1150).await;
    let mut client = bg.stop().await;
    converge(&mut ctx, &mut client).await;
    assert_clean(&mut ctx, &client, 0);
    assert_eq!(
        client.handles.len(),
        1,
        "same handle throughout: {:?}",
        client.handles
    );
    ctx.pass();
}
