//! The `ampere` binary at startup, run as a child process with a controlled environment:
//! configuration errors, unusable storage, Postgres configurations that need an operator
//! (fatal), an unreachable database (retried, not fatal), and a clean start and stop.
//!
//! Method: every test runs the real binary with `env_clear()` plus `PATH` and only the
//! variables under test, a fresh `ELECTRIC_STORAGE_DIR` under `/tmp` (removed afterwards) and
//! an HTTP port picked by binding `127.0.0.1:0`. Children are killed by PID when a test ends
//! early, and every wait is bounded. Postgres is the shared throwaway cluster of this test
//! binary (a database per test), or a dedicated cluster for `wal_level=replica`. HTTP is a
//! minimal HTTP/1.1 GET over `TcpStream` (no client dependency).

use std::fs;
use std::io;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use ampere_io_real::embedded_pg::{EmbeddedOptions, EmbeddedPostgres};

/// A configuration error must stop the process about at once.
const CONFIG_EXIT: Duration = Duration::from_secs(5);
/// A fatal Postgres configuration is found on the first connection.
const FATAL_EXIT: Duration = Duration::from_secs(15);

mod common;

use common::{
    free_port, http_get, items_database, parse_reply, shared_database, wait_for_health, Ampere,
    Scratch,
};

/// Runs ampere, expecting a non-zero exit within `within`; returns its output (the log on
/// stdout, then stderr).
fn run_to_failure(scratch: &Scratch, vars: &[(&str, &str)], within: Duration) -> String {
    let mut ampere = Ampere::spawn(scratch, vars);
    let status = ampere.wait_exit(within);
    let output = ampere.output();
    assert!(
        !status.success(),
        "ampere exited with {status}; output:\n{output}"
    );
    output
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// Asserts that nothing connected to `listener` (a stand-in for Postgres).
fn assert_never_connected(listener: &TcpListener, context: &str) {
    listener.set_nonblocking(true).expect("nonblocking");
    match listener.accept() {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => panic!("accept on the stand-in Postgres failed: {e}"),
        Ok((_, from)) => panic!("{context}: ampere connected to Postgres (from {from})"),
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration

#[test]
fn without_a_secret_or_insecure_mode_startup_fails_at_once_naming_both_variables() {
    let scratch = Scratch::new("nosecret");
    let storage = scratch.storage();
    let port = free_port().to_string();
    let vars = [
        ("ELECTRIC_STORAGE_DIR", storage.to_str().expect("utf-8")),
        ("ELECTRIC_PORT", port.as_str()),
    ];
    let output = run_to_failure(&scratch, &vars, CONFIG_EXIT);
    assert!(output.contains("ELECTRIC_SECRET"), "{output}");
    assert!(output.contains("ELECTRIC_INSECURE"), "{output}");
    assert!(
        !storage.exists(),
        "storage dir created before config checks"
    );
}

#[test]
fn each_invalid_setting_stops_startup_with_a_message_naming_its_variable() {
    let cases = [
        ("ELECTRIC_PORT", "abc"),
        ("ELECTRIC_LONG_POLL_TIMEOUT", "soon"),
        ("ELECTRIC_SHAPE_CHUNK_BYTES_THRESHOLD", "0"),
        ("ELECTRIC_REPLICATION_STREAM_ID", "bad.id"),
        ("ELECTRIC_INSECURE", "maybe"),
        ("ELECTRIC_LOG_LEVEL", "loud"),
    ];
    // Everything else valid; a database nothing listens on, should startup go that far.
    let database_url = format!("postgresql://postgres@127.0.0.1:{}/postgres", free_port());
    let running: Vec<_> = cases
        .iter()
        .map(|&(var, value)| {
            let scratch = Scratch::new("badvalue");
            let storage = scratch.storage();
            let port = free_port().to_string();
            let mut vars = vec![
                ("ELECTRIC_STORAGE_DIR", storage.to_str().expect("utf-8")),
                ("DATABASE_URL", database_url.as_str()),
                ("ELECTRIC_PORT", port.as_str()),
            ];
            if var != "ELECTRIC_INSECURE" {
                vars.push(("ELECTRIC_INSECURE", "true"));
            }
            vars.retain(|(name, _)| *name != var);
            vars.push((var, value));
            let ampere = Ampere::spawn(&scratch, &vars);
            (var, value, scratch, ampere)
        })
        .collect();
    for (var, value, scratch, mut ampere) in running {
        let status = ampere.wait_exit(CONFIG_EXIT);
        let stderr = ampere.stderr();
        assert!(
            !status.success(),
            "{var}={value}: exited {status}:\n{stderr}"
        );
        assert!(stderr.contains(var), "{var}={value}: stderr:\n{stderr}");
        assert!(
            !scratch.storage().exists(),
            "{var}={value}: storage touched"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Storage

#[test]
fn an_unusable_storage_dir_stops_startup_before_connecting_to_postgres() {
    let scratch = Scratch::new("badstorage");
    let file = scratch.root.join("a-file");
    fs::write(&file, b"not a directory").expect("write file");
    let cases = [
        // a path under a regular file: cannot be created (root included)
        file.join("sub"),
        // procfs: cannot be created, and an existing dir refuses new files (root included)
        PathBuf::from(format!("/proc/ampere-startup-{}/sub", std::process::id())),
        PathBuf::from("/proc/self/fdinfo"),
    ];
    for storage in &cases {
        // A stand-in Postgres that records whether ampere connected.
        let postgres = TcpListener::bind("127.0.0.1:0").expect("bind stand-in");
        let pg_port = postgres.local_addr().expect("addr").port();
        let database_url = format!("postgresql://postgres@127.0.0.1:{pg_port}/postgres");
        let port = free_port().to_string();
        let path = storage.to_str().expect("utf-8");
        let vars = [
            ("ELECTRIC_STORAGE_DIR", path),
            ("ELECTRIC_INSECURE", "true"),
            ("ELECTRIC_PORT", port.as_str()),
            ("DATABASE_URL", database_url.as_str()),
        ];
        let output = run_to_failure(&scratch, &vars, CONFIG_EXIT);
        assert!(output.contains("ELECTRIC_STORAGE_DIR"), "{path}: {output}");
        assert!(
            output.contains(path),
            "{path}: output does not name it:\n{output}"
        );
        assert_never_connected(&postgres, path);
    }
    assert!(file.is_file(), "the regular file was replaced");
}

// ---------------------------------------------------------------------------------------------
// Postgres configuration

#[test]
fn postgres_without_logical_wal_level_is_fatal_and_the_message_says_how_to_fix_it() {
    let mut options = EmbeddedOptions::for_tests();
    options
        .settings
        .push(("wal_level".to_owned(), "replica".to_owned()));
    let cluster = EmbeddedPostgres::start(options).expect("wal_level=replica cluster starts");
    let scratch = Scratch::new("walreplica");
    let storage = scratch.storage();
    let port = free_port().to_string();
    let url = cluster.admin_url();
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("ELECTRIC_STORAGE_DIR", storage.to_str().expect("utf-8")),
        ("ELECTRIC_INSECURE", "true"),
        ("ELECTRIC_PORT", port.as_str()),
    ];
    let output = run_to_failure(&scratch, &vars, FATAL_EXIT);
    assert!(output.contains("wal_level"), "{output}");
    assert!(
        output.contains("\"replica\""),
        "names the current value: {output}"
    );
    assert!(
        output.contains("wal_level = logical"),
        "names the fix: {output}"
    );
    assert!(output.contains("restart PostgreSQL"), "{output}");
}

#[test]
fn a_role_without_replication_is_fatal_and_the_message_says_how_to_grant_it() {
    let cluster = shared_database("startup_norep");
    cluster
        .psql("postgres", "CREATE ROLE norep LOGIN PASSWORD 'x'")
        .expect("CREATE ROLE norep");
    let scratch = Scratch::new("norep");
    let storage = scratch.storage();
    let port = free_port().to_string();
    let url = format!(
        "postgresql://norep:x@127.0.0.1:{}/startup_norep",
        cluster.port()
    );
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("ELECTRIC_STORAGE_DIR", storage.to_str().expect("utf-8")),
        ("ELECTRIC_INSECURE", "true"),
        ("ELECTRIC_PORT", port.as_str()),
        // the slot namespace is cluster-wide: stay clear of other tests' slots
        ("ELECTRIC_REPLICATION_STREAM_ID", "norep"),
    ];
    let output = run_to_failure(&scratch, &vars, FATAL_EXIT);
    assert!(output.contains("REPLICATION"), "{output}");
    assert!(
        output.contains("ALTER ROLE norep WITH REPLICATION"),
        "names the fix: {output}"
    );
}

#[test]
fn an_unreachable_database_is_retried_while_health_says_waiting_and_shapes_get_503() {
    // LC-3 (ampere): once metadata is loaded every non-active condition is `waiting`, and
    // existing shapes are served read-only meanwhile.
    let scratch = Scratch::new("unreachable");
    let storage = scratch.storage();
    let port = free_port();
    let port_text = port.to_string();
    let url = format!("postgresql://postgres@127.0.0.1:{}/postgres", free_port());
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("ELECTRIC_STORAGE_DIR", storage.to_str().expect("utf-8")),
        ("ELECTRIC_INSECURE", "true"),
        ("ELECTRIC_PORT", port_text.as_str()),
    ];
    let mut ampere = Ampere::spawn(&scratch, &vars);
    let first = wait_for_health(&mut ampere, port, 202, Duration::from_secs(10));
    assert_eq!(first.body, r#"{"status":"waiting"}"#);

    let shape = http_get(port, "/v1/shape?table=items&offset=-1").expect("shape request");
    assert_eq!(shape.status, 503, "{shape:?}");
    let retry_after = shape.header("retry-after").expect("retry-after header");
    assert!(retry_after.parse::<u32>().is_ok_and(|s| s > 0), "{shape:?}");

    // Several seconds: still running, still waiting.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        assert!(
            ampere.try_status().is_none(),
            "an unreachable database must not be fatal:\n{}",
            ampere.output()
        );
        let health = http_get(port, "/v1/health").expect("health");
        assert_eq!(
            (health.status, health.body.as_str()),
            (202, r#"{"status":"waiting"}"#)
        );
        sleep(Duration::from_millis(500));
    }
    let log = ampere.stdout();
    let attempts = log.matches("replication setup failed").count();
    assert!(attempts >= 2, "expected retries in the log:\n{log}");
    assert!(log.contains("Connection refused"), "{log}");
    assert!(ampere.try_status().is_none(), "exited:\n{log}");
}

// ---------------------------------------------------------------------------------------------
// The happy path

#[test]
fn a_clean_start_serves_shapes_and_sigterm_exits_zero_leaving_an_inactive_slot() {
    let cluster = items_database("startup_happy");
    let scratch = Scratch::new("happy");
    let storage = scratch.storage();
    let port = free_port();
    let port_text = port.to_string();
    let url = cluster.url("postgres", "startup_happy");
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("ELECTRIC_STORAGE_DIR", storage.to_str().expect("utf-8")),
        ("ELECTRIC_INSECURE", "true"),
        ("ELECTRIC_PORT", port_text.as_str()),
    ];
    let mut ampere = Ampere::spawn(&scratch, &vars);
    let health = wait_for_health(&mut ampere, port, 200, Duration::from_secs(15));
    assert_eq!(health.body, r#"{"status":"active"}"#);

    let shape = http_get(port, "/v1/shape?table=items&offset=-1").expect("shape request");
    assert_eq!(shape.status, 200, "{shape:?}\n{}", ampere.output());
    assert!(
        shape
            .header("electric-handle")
            .is_some_and(|h| !h.is_empty()),
        "{shape:?}"
    );
    assert_eq!(shape.header("electric-offset"), Some("0_0"), "{shape:?}");
    let schema = shape.header("electric-schema").expect("electric-schema");
    assert!(
        schema.contains(r#""id""#) && schema.contains(r#""title""#),
        "{schema}"
    );
    assert!(shape.body.contains(r#""title":"one""#), "{shape:?}");

    ampere.terminate();
    let status = ampere.wait_exit(Duration::from_secs(10));
    assert!(
        status.success(),
        "SIGTERM: exited {status}:\n{}",
        ampere.output()
    );
    assert_slot_inactive(cluster, "electric_slot_default", "startup_happy");
}

/// The slot exists for `database` and (within a few seconds: the walsender notices the
/// disconnection by itself) is inactive.
fn assert_slot_inactive(cluster: &EmbeddedPostgres, slot: &str, database: &str) {
    let sql =
        format!("SELECT database, active FROM pg_replication_slots WHERE slot_name = '{slot}'");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let row = cluster.psql("postgres", &sql).expect("query slots");
        assert!(!row.is_empty(), "slot {slot} does not exist");
        if row == format!("{database}|f") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "slot {slot}: {row:?}, expected inactive"
        );
        sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// No Postgres at all

#[test]
fn without_database_url_or_postgres_binaries_startup_fails_saying_how_to_install_postgresql() {
    let scratch = Scratch::new("nobinaries");
    let empty_bin = scratch.root.join("empty-bin");
    fs::create_dir(&empty_bin).expect("create empty bin dir");
    let storage = scratch.storage();
    let port = free_port().to_string();
    let vars = [
        ("PG_BIN", empty_bin.to_str().expect("utf-8")),
        ("ELECTRIC_STORAGE_DIR", storage.to_str().expect("utf-8")),
        ("ELECTRIC_INSECURE", "true"),
        ("ELECTRIC_PORT", port.as_str()),
    ];
    let output = run_to_failure(&scratch, &vars, FATAL_EXIT);
    assert!(output.contains("DATABASE_URL"), "{output}");
    assert!(output.contains("install PostgreSQL"), "{output}");
    assert!(output.contains("apt-get install postgresql"), "{output}");
    assert!(
        output.contains(empty_bin.to_str().expect("utf-8")),
        "names PG_BIN: {output}"
    );
}

#[test]
fn the_http_reply_parser_decodes_chunked_bodies() {
    let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n\
                3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
    let reply = parse_reply(raw).expect("parses");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-a"), Some("b"));
    assert_eq!(reply.body, "abcde");
}

/// Runs `ampere cleanup <args>` with `vars` and returns (success, stdout, stderr).
fn run_cleanup(vars: &[(&str, &str)], args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ampere"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(vars.iter().copied())
        .arg("cleanup")
        .args(args)
        .output()
        .expect("run ampere cleanup");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (
        output.status.success(),
        text(&output.stdout),
        text(&output.stderr),
    )
}

#[test]
fn cleanup_says_what_it_would_do_and_with_yes_drops_slot_publication_and_storage() {
    // Goal: decommissioning needs the slot dropped (an unused slot retains WAL forever) and,
    // on request, the storage; nothing happens without --yes.
    // Method: run ampere once to create slot, publication and storage, stop it, then cleanup.
    let cluster = shared_database("startup_cleanup");
    let scratch = Scratch::new("cleanup");
    let storage = scratch.storage();
    let port = free_port();
    let port_text = port.to_string();
    let url = cluster.url("postgres", "startup_cleanup");
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("ELECTRIC_STORAGE_DIR", storage.to_str().expect("utf-8")),
        ("ELECTRIC_INSECURE", "true"),
        ("ELECTRIC_PORT", port_text.as_str()),
        ("ELECTRIC_REPLICATION_STREAM_ID", "cleanup_test"),
    ];
    let mut ampere = Ampere::spawn(&scratch, &vars);
    wait_for_health(&mut ampere, port, 200, Duration::from_secs(15));
    ampere.terminate();
    assert!(ampere.wait_exit(Duration::from_secs(10)).success());
    let slot_sql =
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'electric_slot_cleanup_test'";
    let pub_sql =
        "SELECT count(*) FROM pg_publication WHERE pubname = 'electric_publication_cleanup_test'";
    let count = |sql: &str| cluster.psql("startup_cleanup", sql).expect("query");

    let (ok, stdout, stderr) = run_cleanup(&vars, &["--storage"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("would drop replication slot electric_slot_cleanup_test"),
        "{stdout}"
    );
    assert!(stdout.contains("pass --yes"), "{stdout}");
    assert_eq!(
        (count(slot_sql), count(pub_sql)),
        ("1".to_owned(), "1".to_owned())
    );
    assert!(storage.join("shapes.sqlite3").exists());

    let (ok, stdout, stderr) = run_cleanup(&vars, &["--storage", "--yes"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("dropped replication slot electric_slot_cleanup_test"),
        "{stdout}"
    );
    assert!(
        stdout.contains("dropped publication electric_publication_cleanup_test"),
        "{stdout}"
    );
    assert_eq!(
        (count(slot_sql), count(pub_sql)),
        ("0".to_owned(), "0".to_owned())
    );
    assert!(!storage.join("shapes.sqlite3").exists());
    assert!(!storage.join("shapes").exists());
}
