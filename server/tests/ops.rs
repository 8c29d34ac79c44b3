//! `ampere check-db` and `ampere status` on the real binary against real PostgreSQL clusters.
//!
//! Method: the binary runs as a child process with `env_clear()` plus `PATH` and only the
//! variables under test, every run bounded in time and killed by PID when it overruns.
//! Postgres is this test binary's shared throwaway cluster (a database and a stream id per
//! test, since replication slots are cluster-wide), or a dedicated throwaway cluster with
//! `wal_level=replica`. `status` is read while a real `ampere serve` streams, and again after
//! it stopped. `--json` output is the whole of stdout (the commands log on stderr).

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread::{self, sleep};
use std::time::{Duration, Instant};

use ampere_io_real::embedded_pg::{EmbeddedOptions, EmbeddedPostgres};
use serde_json::Value;

mod common;

use common::{
    free_port, http_get, items_database, shared_database, wait_for_health, Ampere, Scratch,
};

/// A subcommand run: bounded by the connect timeout's order of magnitude.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// What one run of a subcommand left.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The `--json` object: the whole of stdout (the log is on stderr).
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {self:?}"))
    }
}

/// Runs `ampere <args>` in `scratch` with only `PATH` and `vars`, waiting at most
/// [`RUN_LIMIT`] (then SIGKILL by PID, and a panic).
fn run(scratch: &Scratch, args: &[&str], vars: &[(&str, &str)]) -> Run {
    let child = Command::new(env!("CARGO_BIN_EXE_ampere"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(vars.iter().copied())
        .current_dir(&scratch.root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ampere");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(RUN_LIMIT) {
        Ok(output) => {
            let output = output.expect("wait for ampere");
            Run {
                code: output.status.code(),
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            }
        }
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-s", "KILL", &pid.to_string()])
                .status();
            panic!("ampere {args:?} still running after {RUN_LIMIT:?}");
        }
    }
}

/// The check named `name` in check-db's JSON.
fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .expect("checks is an array")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {report}"))
}

#[test]
fn check_db_passes_on_a_logical_cluster_and_opens_a_replication_connection() {
    let cluster = shared_database("ops_check_ok");
    let scratch = Scratch::new("checkok");
    let storage = scratch.storage();
    let url = cluster.url("postgres", "ops_check_ok");
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("ELECTRIC_STORAGE_DIR", storage.to_str().expect("utf-8")),
        ("ELECTRIC_REPLICATION_STREAM_ID", "ops_check_ok"),
    ];

    let json = run(&scratch, &["check-db", "--json"], &vars);
    assert_eq!(json.code, Some(0), "{json:?}");
    let report = json.json();
    assert_eq!(report["passed"], true, "{report}");
    for name in [
        "connect",
        "server version",
        "wal_level",
        "replication role",
        "replication connection",
        "publication",
        "replication slots",
        "walsenders",
    ] {
        assert_eq!(check(&report, name)["verdict"], "PASS", "{name}: {report}");
    }
    assert!(
        check(&report, "replication connection")["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("IDENTIFY_SYSTEM: system ")),
        "{report}"
    );
    // The throwaway cluster has no TLS: a warning, which does not fail the check.
    assert_eq!(check(&report, "TLS")["verdict"], "WARN", "{report}");

    let text = run(&scratch, &["check-db"], &vars);
    assert_eq!(text.code, Some(0), "{text:?}");
    assert!(
        text.stdout.contains("PASS wal_level: wal_level is logical"),
        "{text:?}"
    );
    assert!(text.stdout.contains("check-db: passed"), "{text:?}");
    assert!(!storage.exists(), "check-db created the storage directory");
    let slots = cluster
        .psql(
            "ops_check_ok",
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'electric_slot_ops_check_ok'",
        )
        .expect("count slots");
    assert_eq!(slots, "0", "check-db created a slot");
    let publications = cluster
        .psql(
            "ops_check_ok",
            "SELECT count(*) FROM pg_publication WHERE pubname = 'electric_publication_ops_check_ok'",
        )
        .expect("count publications");
    assert_eq!(publications, "0", "check-db created a publication");
}

#[test]
fn check_db_fails_on_wal_level_replica_and_prints_the_fix() {
    let mut options = EmbeddedOptions::for_tests();
    options
        .settings
        .push(("wal_level".to_owned(), "replica".to_owned()));
    let cluster = EmbeddedPostgres::start(options).expect("wal_level=replica cluster starts");
    let scratch = Scratch::new("checkreplica");
    let storage = scratch.storage();
    let url = cluster.admin_url();
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("ELECTRIC_STORAGE_DIR", storage.to_str().expect("utf-8")),
    ];

    let text = run(&scratch, &["check-db"], &vars);
    assert_eq!(text.code, Some(1), "{text:?}");
    assert!(
        text.stdout.contains("FAIL wal_level: wal_level is replica"),
        "{text:?}"
    );
    assert!(
        text.stdout
            .contains("set wal_level = logical in postgresql.conf"),
        "names the fix: {text:?}"
    );
    assert!(text.stdout.contains("check-db: FAILED"), "{text:?}");

    let report = run(&scratch, &["check-db", "--json"], &vars).json();
    assert_eq!(report["passed"], false, "{report}");
    assert_eq!(check(&report, "wal_level")["verdict"], "FAIL", "{report}");
    assert_eq!(
        check(&report, "replication connection")["verdict"],
        "SKIP",
        "{report}"
    );
    assert_eq!(
        check(&report, "server version")["verdict"],
        "PASS",
        "{report}"
    );
}

#[test]
fn check_db_fails_for_a_role_without_replication_and_prints_the_grant() {
    let cluster = shared_database("ops_check_role");
    cluster
        .psql("ops_check_role", "CREATE ROLE ops_plain LOGIN")
        .expect("create role");
    let scratch = Scratch::new("checkrole");
    let storage = scratch.storage();
    let url = cluster.url("ops_plain", "ops_check_role");
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("ELECTRIC_STORAGE_DIR", storage.to_str().expect("utf-8")),
        ("ELECTRIC_REPLICATION_STREAM_ID", "ops_check_role"),
    ];

    let run = run(&scratch, &["check-db", "--json"], &vars);
    assert_eq!(run.code, Some(1), "{run:?}");
    let report = run.json();
    let role = check(&report, "replication role");
    assert_eq!(role["verdict"], "FAIL", "{report}");
    assert!(
        role["fix"]
            .as_str()
            .is_some_and(|f| f.contains("ALTER ROLE ops_plain WITH REPLICATION")),
        "{report}"
    );
    assert_eq!(
        check(&report, "replication connection")["verdict"],
        "FAIL",
        "{report}"
    );
    assert_eq!(check(&report, "wal_level")["verdict"], "PASS", "{report}");
}

#[test]
fn a_bad_database_url_is_a_configuration_error_with_exit_status_2() {
    let scratch = Scratch::new("checkbadurl");
    let storage = scratch.storage();
    let vars = [
        ("DATABASE_URL", "postgresql://h/db?sslmode=sometimes"),
        ("ELECTRIC_STORAGE_DIR", storage.to_str().expect("utf-8")),
    ];
    for command in ["check-db", "status"] {
        let run = run(&scratch, &[command], &vars);
        assert_eq!(run.code, Some(2), "{command}: {run:?}");
        assert!(run.stderr.contains("DATABASE_URL"), "{command}: {run:?}");
    }
}

/// A fresh database `db` with a table `items` of one row; its URL.
fn database_with_items(db: &str) -> String {
    let cluster = items_database(db);
    cluster.url("postgres", db)
}

/// `ampere serve` with `vars` (plus insecure mode and a free port), healthy and serving one
/// shape of `items`.
fn serve_one_shape(scratch: &Scratch, vars: &[(&str, &str)]) -> (Ampere, u16) {
    let port = free_port();
    let port_text = port.to_string();
    let mut serve_vars = vars.to_vec();
    serve_vars.extend([("ELECTRIC_INSECURE", "true"), ("ELECTRIC_PORT", &port_text)]);
    let mut ampere = Ampere::spawn(scratch, &serve_vars);
    wait_for_health(&mut ampere, port, 200, Duration::from_secs(15));
    let shape = http_get(port, "/v1/shape?table=items&offset=-1").expect("shape request");
    assert_eq!(shape.status, 200, "{shape:?}");
    (ampere, port)
}

/// `status --json` of an instance streaming with one shape on `items`.
fn assert_streaming(report: &Value) {
    let slot = &report["slot"];
    assert_eq!(slot["exists"], true, "{report}");
    assert_eq!(slot["active"], true, "{report}");
    assert!(slot["retained_wal_bytes"].as_i64().is_some(), "{report}");
    assert!(slot["confirmed_flush_lsn"].as_str().is_some(), "{report}");
    let walsender = slot["active_pid"].as_i64().expect("active_pid");
    let holders = report["lock"]["holders"].as_array().expect("holders");
    assert_eq!(holders.len(), 1, "{report}");
    assert_eq!(
        holders[0]["pid"].as_i64(),
        Some(walsender),
        "the lock is held by ampere's replication backend: {report}"
    );
    assert_eq!(holders[0]["application_name"], "ampere", "{report}");
    let tables = report["publication"]["tables"].as_array().expect("tables");
    assert_eq!(tables.len(), 1, "{report}");
    assert_eq!(tables[0]["name"], "items", "{report}");
    assert_eq!(tables[0]["replica_identity"], "full", "{report}");
    assert_eq!(report["storage"]["shapes"], 1, "{report}");
    assert!(
        report["storage"]["shape_bytes"]
            .as_u64()
            .is_some_and(|b| b > 0),
        "{report}"
    );
    assert!(
        report["storage"]["lease"]["generation"].as_u64().is_some(),
        "{report}"
    );
}

#[test]
fn status_shows_the_active_slot_lock_holder_and_shape_then_the_slot_idle_after_ampere_stops() {
    let scratch = Scratch::new("status");
    let storage = scratch.storage();
    let url = database_with_items("ops_status");
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("ELECTRIC_STORAGE_DIR", storage.to_str().expect("utf-8")),
        ("ELECTRIC_REPLICATION_STREAM_ID", "ops_status"),
    ];
    let (mut ampere, _) = serve_one_shape(&scratch, &vars);
    let active = run(&scratch, &["status", "--json"], &vars);
    assert_eq!(active.code, Some(0), "{active:?}");
    let report = active.json();
    assert_eq!(report["slot_name"], "electric_slot_ops_status", "{report}");
    assert_streaming(&report);
    assert_eq!(report["storage"]["metadata"]["state"], "read", "{report}");
    let text = run(&scratch, &["status"], &vars);
    assert!(
        text.stdout
            .contains("slot electric_slot_ops_status: active"),
        "{text:?}"
    );
    assert!(text.stdout.contains("status: healthy"), "{text:?}");

    ampere.terminate();
    let exit = ampere.wait_exit(Duration::from_secs(15));
    assert!(exit.success(), "ampere stopped with {exit}");
    // The backend ends just after the connection closes: poll briefly for the lock to go.
    let deadline = Instant::now() + Duration::from_secs(10);
    let report = loop {
        let stopped = run(&scratch, &["status", "--json"], &vars);
        assert_eq!(stopped.code, Some(0), "{stopped:?}");
        let report = stopped.json();
        if report["lock"]["held"] == false && report["slot"]["active"] == false {
            break report;
        }
        assert!(
            Instant::now() < deadline,
            "lock or slot still busy: {report}"
        );
        sleep(Duration::from_millis(200));
    };
    assert_eq!(report["slot"]["exists"], true, "{report}");
    assert_eq!(
        report["storage"]["shapes"], 1,
        "storage outlives the process: {report}"
    );
    let warnings = report["warnings"].as_array().expect("warnings");
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().is_some_and(|w| w.contains("inactive"))),
        "{report}"
    );
}

#[test]
fn status_in_exclusive_mode_counts_shapes_from_shape_json_without_opening_the_metadata() {
    let scratch = Scratch::new("exclusive");
    let storage = scratch.storage();
    let url = database_with_items("ops_exclusive");
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("ELECTRIC_STORAGE_DIR", storage.to_str().expect("utf-8")),
        ("ELECTRIC_REPLICATION_STREAM_ID", "ops_exclusive"),
        ("ELECTRIC_SHAPE_DB_EXCLUSIVE_MODE", "true"),
    ];
    let (mut ampere, port) = serve_one_shape(&scratch, &vars);
    let report = run(&scratch, &["status", "--json"], &vars).json();
    assert_eq!(
        report["storage"]["metadata"]["state"], "skipped_exclusive_mode",
        "{report}"
    );
    assert_streaming(&report);
    // The writer still holds its exclusive connection: a shape creation still commits.
    let second = http_get(port, "/v1/shape?table=items&offset=-1&where=id%3D1").expect("shape");
    assert_eq!(second.status, 200, "{second:?}");
    ampere.terminate();
    let exit = ampere.wait_exit(Duration::from_secs(15));
    assert!(exit.success(), "ampere stopped with {exit}");
}

#[test]
fn without_database_url_both_commands_use_the_running_embedded_cluster_and_never_start_one() {
    let scratch = Scratch::new("embedded");
    let storage = scratch.storage();
    let vars = [("ELECTRIC_STORAGE_DIR", storage.to_str().expect("utf-8"))];

    let idle = run(&scratch, &["status", "--json"], &vars);
    assert_eq!(idle.code, Some(0), "{idle:?}");
    let report = idle.json();
    assert_eq!(
        report["database"]["source"], "embedded (not running)",
        "{report}"
    );
    assert_eq!(report["storage"]["exists"], false, "{report}");
    let binaries = run(&scratch, &["check-db", "--json"], &vars);
    assert_eq!(binaries.code, Some(0), "{binaries:?}");
    assert_eq!(
        check(&binaries.json(), "embedded PostgreSQL")["verdict"],
        "PASS",
        "{binaries:?}"
    );
    assert!(
        !storage.exists(),
        "a read-only command created the storage directory"
    );

    let port = free_port();
    let port_text = port.to_string();
    let serve_vars = [
        vars[0],
        ("ELECTRIC_INSECURE", "true"),
        ("ELECTRIC_PORT", port_text.as_str()),
    ];
    let mut ampere = Ampere::spawn(&scratch, &serve_vars);
    wait_for_health(&mut ampere, port, 200, Duration::from_secs(120));
    let running = run(&scratch, &["status", "--json"], &vars);
    assert_eq!(running.code, Some(0), "{running:?}");
    let report = running.json();
    assert_eq!(
        report["database"]["source"], "embedded (running)",
        "{report}"
    );
    assert_eq!(report["slot"]["active"], true, "{report}");
    assert_eq!(report["lock"]["held"], true, "{report}");
    let checked = run(&scratch, &["check-db", "--json"], &vars);
    assert_eq!(checked.code, Some(0), "{checked:?}");
    assert_eq!(
        check(&checked.json(), "replication slots")["verdict"],
        "PASS",
        "{checked:?}"
    );
    ampere.terminate();
    let exit = ampere.wait_exit(Duration::from_secs(60));
    assert!(exit.success(), "ampere stopped with {exit}");
}
