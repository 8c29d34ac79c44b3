//! Container-based integration tests: the real `ampere` binary against PostgreSQL in Docker,
//! with faults injected from outside (kill -9, SIGTERM, Postgres restart, partition, slot drop,
//! backend termination, stale storage, stale lock holder) and a protocol client that checks
//! every change arrives exactly once and the client's rows equal `SELECT` on Postgres.
//!
//! Run (CI / this machine, no container registry):
//! ```sh
//! scripts/docker-up.sh                 # a Docker engine (installs docker.io, starts dockerd --storage-driver=vfs)
//! scripts/build-pg-image.sh            # ampere-pg-local:15, FROM scratch out of the host's postgresql-15
//! cargo test -p ampere-server --test containers -- --test-threads=1
//! ```
//! On a laptop with Docker and a registry, only the last line is needed: `AMPERE_TEST_PG_IMAGE`
//! defaults to the official `postgres:15`, which is pulled on first use and found locally after
//! that; when it can be neither found nor pulled (offline CI), the harness falls back to
//! `ampere-pg-local:15` (see `docker.rs`). Set `AMPERE_TEST_PG_IMAGE=ampere-pg-local:15` to use
//! the local image directly.
//!
//! Scenarios run one at a time (a process-wide lock; `--test-threads=1` is recommended but not
//! required): each starts its own container, which under the vfs storage driver costs a copy of
//! the image. Each cleans up after itself: ampere processes killed by PID (and by the kernel if
//! this process dies: `PR_SET_PDEATHSIG`), the container removed on drop, the scratch dir under
//! `/tmp/ampere-ct-*` removed (`AMPERE_TEST_KEEP=1` keeps it); leftovers of killed test runs are
//! swept at the next start. `AMPERE_SKIP_CONTAINER_TESTS=1` skips them all.
//!
//! Every scenario prints one line, `SUMMARY <name>: PASS|FAIL (stage) writes=… rows_verified=…
//! 409s=… recover=… time=… | notes`, also on failure (then followed by the process logs).
//! Show it with `-- --nocapture` (or look at the failure output), or collect the lines in a
//! file with `AMPERE_TEST_SUMMARY=/path/to/file` (appended to).

mod ampere;
mod client;
mod deploy;
mod docker;
mod faults;
mod harness;
mod http;
mod image;
mod recipe;
mod util;

use std::future::Future;
use std::time::Duration;

use harness::setup;

/// Bounds a scenario; on timeout the scenario is dropped (its Drop prints the summary with the
/// stage it was in and the logs), then the test fails.
async fn bounded(limit_secs: u64, scenario: impl Future<Output = ()>) {
    if tokio::time::timeout(Duration::from_secs(limit_secs), scenario)
        .await
        .is_err()
    {
        panic!("scenario exceeded its {limit_secs} s budget");
    }
}

/// The harness itself: the selected image runs a Postgres with logical replication and the
/// settings the scenarios rely on, reachable on 127.0.0.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infra_postgres_container_has_logical_replication() {
    let Some(mut ctx) = setup("infra_postgres_container_has_logical_replication").await else {
        return;
    };
    let settings = ctx
        .pg
        .sql_ok(
            "SELECT current_setting('wal_level'), current_setting('max_replication_slots'), \
             current_setting('max_wal_senders'), current_setting('wal_sender_timeout')",
        )
        .await;
    assert_eq!(
        settings[0],
        ["logical", "20", "20", "10s"]
            .map(|s| Some(s.to_owned()))
            .to_vec(),
        "server settings"
    );
    ctx.pg
        .sql_ok("SELECT pg_create_logical_replication_slot('infra_check', 'pgoutput')")
        .await;
    ctx.pg
        .sql_ok("SELECT pg_drop_replication_slot('infra_check')")
        .await;
    ctx.note(format!("image {}", ctx.pg.image));
    ctx.pass();
}

/// a. Rolling upgrade, shared storage (lock + standby).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_on_shared_storage_hands_over_without_refetch() {
    let Some(ctx) = setup("a_rolling_upgrade_on_shared_storage_hands_over_without_refetch").await
    else {
        return;
    };
    bounded(180, deploy::rolling_upgrade_shared_storage(ctx)).await;
}

/// b. Separate storage dirs, temporary randomly named slots: both active, 409 on switching.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_separate_storages_with_temporary_slots_refetch_on_switch() {
    let Some(ctx) = setup("b_separate_storages_with_temporary_slots_refetch_on_switch").await
    else {
        return;
    };
    bounded(150, deploy::separate_storage_temporary_slots(ctx)).await;
}

/// c. kill -9 during ingest of 5 × 20k-row transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_kill9_during_ingest_loses_and_duplicates_nothing() {
    let Some(ctx) = setup("c_kill9_during_ingest_loses_and_duplicates_nothing").await else {
        return;
    };
    bounded(300, faults::kill9_during_ingest(ctx)).await;
}

/// d. Postgres container restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_postgres_restart_keeps_reads_served_and_reconnects() {
    let Some(ctx) = setup("d_postgres_restart_keeps_reads_served_and_reconnects").await else {
        return;
    };
    bounded(150, faults::postgres_restart(ctx)).await;
}

/// e. Network partition (docker pause for 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_partition_by_pause_keeps_reads_served_and_reconnects() {
    let Some(ctx) = setup("e_partition_by_pause_keeps_reads_served_and_reconnects").await else {
        return;
    };
    bounded(150, faults::network_partition(ctx)).await;
}

/// e2. Network partition by `docker network disconnect` for 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2_network_disconnect_keeps_reads_served_and_reconnects() {
    let Some(ctx) = setup("e2_network_disconnect_keeps_reads_served_and_reconnects").await else {
        return;
    };
    bounded(150, faults::network_disconnect(ctx)).await;
}

/// f. Slot dropped externally: exactly one 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_slot_dropped_externally_gives_exactly_one_refetch() {
    let Some(ctx) = setup("f_slot_dropped_externally_gives_exactly_one_refetch").await else {
        return;
    };
    bounded(150, faults::slot_dropped_externally(ctx)).await;
}

/// g. An old copy of the storage dir put back: 409, never a silent gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g_restored_old_storage_is_detected_not_a_silent_gap() {
    let Some(ctx) = setup("g_restored_old_storage_is_detected_not_a_silent_gap").await else {
        return;
    };
    bounded(180, deploy::stale_storage_restored(ctx)).await;
}

/// h. pg_terminate_backend of the walsender: reconnect, no 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h_terminated_walsender_reconnects_without_refetch() {
    let Some(ctx) = setup("h_terminated_walsender_reconnects_without_refetch").await else {
        return;
    };
    bounded(150, faults::walsender_terminated(ctx)).await;
}

/// i. A stale session holding the advisory lock is broken within 45 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i_stale_lock_holder_is_terminated_by_the_lock_breaker() {
    let Some(ctx) = setup("i_stale_lock_holder_is_terminated_by_the_lock_breaker").await else {
        return;
    };
    bounded(150, deploy::stale_lock_holder_broken(ctx)).await;
}

/// j. The registry-free image has the Dockerfile's runtime layout (user, workdir, ports, env,
/// entrypoint, HEALTHCHECK): the two are kept in step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn j_image_has_the_dockerfile_runtime_layout() {
    const NAME: &str = "j_image_has_the_dockerfile_runtime_layout";
    if std::env::var("AMPERE_SKIP_CONTAINER_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("SUMMARY {NAME}: SKIPPED (AMPERE_SKIP_CONTAINER_TESTS=1)");
        return;
    }
    bounded(400, image::layout_matches_dockerfile(NAME)).await;
}

/// k. Rolling upgrade with deploy/compose/shared-storage.yaml: two containers of the image on
/// one volume hand over without a 409 or a lost row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k_compose_rolling_upgrade_on_a_shared_volume_hands_over_without_refetch() {
    let Some(ctx) =
        setup("k_compose_rolling_upgrade_on_a_shared_volume_hands_over_without_refetch").await
    else {
        return;
    };
    bounded(400, recipe::compose_rolling_upgrade(ctx)).await;
}
