//! The `ampere` binary's log: on stdout, as text by default or as JSON lines with
//! `AMPERE_LOG_FORMAT=json`, one line per API request at debug, and an unknown format stops
//! startup.
//!
//! Method as in `startup.rs`: the real binary as a child process with only the variables
//! under test, ports picked by binding `127.0.0.1:0`, children killed by PID, every wait
//! bounded; Postgres is this test binary's shared throwaway cluster or an address nothing
//! listens on.

use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::{free_port, http_get, items_database, wait_for_health, Ampere, Scratch};

/// A configuration error must stop the process about at once.
const CONFIG_EXIT: Duration = Duration::from_secs(5);

/// Every stdout line as JSON; panics on a line that is not a JSON object.
fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(value) if value.is_object() => value,
            _ => panic!("not a JSON object on stdout: {line:?}\n{stdout}"),
        })
        .collect()
}

#[test]
fn with_json_logs_at_debug_a_shape_request_logs_exactly_one_json_line_with_its_fields() {
    let cluster = items_database("logging_json");
    let scratch = Scratch::new("json");
    let storage = scratch.storage();
    let port = free_port();
    let port_text = port.to_string();
    let url = cluster.url("postgres", "logging_json");
    let vars = [
        ("DATABASE_URL", url.as_str()),
        // Slots are per cluster, and other tests here stream from other databases.
        ("ELECTRIC_REPLICATION_STREAM_ID", "logging_json"),
        ("ELECTRIC_STORAGE_DIR", storage.to_str().expect("utf-8")),
        ("ELECTRIC_INSECURE", "true"),
        ("ELECTRIC_PORT", port_text.as_str()),
        ("ELECTRIC_LOG_LEVEL", "debug"),
        ("AMPERE_LOG_FORMAT", "json"),
    ];
    let mut ampere = Ampere::spawn(&scratch, &vars);
    wait_for_health(&mut ampere, port, 200, Duration::from_secs(15));
    let shape = http_get(port, "/v1/shape?table=items&offset=-1").expect("shape request");
    assert_eq!(shape.status, 200, "{shape:?}");
    let request_id = shape.header("x-request-id").expect("x-request-id");
    let handle = shape.header("electric-handle").expect("electric-handle");

    let of_request = |lines: &[Value]| -> Vec<Value> {
        lines
            .iter()
            .filter(|line| line["request_id"] == request_id)
            .cloned()
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let lines = of_request(&json_lines(&ampere.stdout()));
        if !lines.is_empty() || Instant::now() >= deadline {
            break lines;
        }
        sleep(Duration::from_millis(50));
    };
    assert_eq!(lines.len(), 1, "{lines:#?}\n{}", ampere.stdout());
    let line = &lines[0];
    assert_eq!(line["level"], "DEBUG", "{line}");
    assert_eq!(line["message"], "request", "{line}");
    assert_eq!(line["method"], "GET", "{line}");
    assert_eq!(line["route"], "shape", "{line}");
    assert_eq!(line["handle"], handle, "{line}");
    assert_eq!(line["offset"], "-1", "{line}");
    assert_eq!(line["live"], false, "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert!(
        line["duration_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
        "{line}"
    );
    assert!(line["timestamp"].is_string(), "{line}");

    ampere.terminate();
    let status = ampere.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "SIGTERM: {status}:\n{}", ampere.output());
    json_lines(&ampere.stdout());
    assert_eq!(ampere.stderr(), "", "nothing but JSON lines, on stdout");
}

#[test]
fn by_default_the_log_is_text_on_stdout_and_stderr_stays_empty() {
    let scratch = Scratch::new("text");
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
    wait_for_health(&mut ampere, port, 202, Duration::from_secs(10));
    ampere.terminate();
    let status = ampere.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "SIGTERM: {status}:\n{}", ampere.output());
    let log = ampere.stdout();
    assert!(log.contains("HTTP API listening"), "{log}");
    assert!(
        serde_json::from_str::<Value>(log.lines().next().unwrap_or_default()).is_err(),
        "text, not JSON: {log}"
    );
    assert_eq!(ampere.stderr(), "", "the log goes to stdout");
}

#[test]
fn an_unknown_log_format_stops_startup_with_exit_2_naming_the_variable_and_the_formats() {
    let scratch = Scratch::new("xml");
    let storage = scratch.storage();
    let vars = [
        ("ELECTRIC_STORAGE_DIR", storage.to_str().expect("utf-8")),
        ("ELECTRIC_INSECURE", "true"),
        ("ELECTRIC_PORT", "1"),
        ("AMPERE_LOG_FORMAT", "xml"),
    ];
    let mut ampere = Ampere::spawn(&scratch, &vars);
    let status = ampere.wait_exit(CONFIG_EXIT);
    let stderr = ampere.stderr();
    assert_eq!(status.code(), Some(2), "{}", ampere.output());
    assert!(stderr.contains("AMPERE_LOG_FORMAT"), "{stderr}");
    assert!(stderr.contains("text or json"), "{stderr}");
    assert!(!storage.exists(), "storage touched");
}

#[test]
fn an_invalid_ampere_log_filter_is_ignored_with_a_warning_naming_it() {
    let scratch = Scratch::new("bad_filter");
    let storage = scratch.storage();
    let port = free_port().to_string();
    // Nothing listens there: the process keeps retrying Postgres, and logs meanwhile.
    let url = format!("postgresql://postgres@127.0.0.1:{}/postgres", free_port());
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("ELECTRIC_STORAGE_DIR", storage.to_str().expect("utf-8")),
        ("ELECTRIC_INSECURE", "true"),
        ("ELECTRIC_PORT", port.as_str()),
        ("AMPERE_LOG", "info,ampere_server=loud"),
    ];
    let ampere = Ampere::spawn(&scratch, &vars);
    let deadline = Instant::now() + CONFIG_EXIT;
    while !ampere.stdout().contains("HTTP API listening") {
        assert!(Instant::now() < deadline, "{}", ampere.output());
        sleep(Duration::from_millis(50));
    }
    let stdout = ampere.stdout();
    let warning = stdout
        .lines()
        .find(|line| line.contains("AMPERE_LOG="))
        .unwrap_or_else(|| panic!("no warning about AMPERE_LOG:\n{stdout}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("ampere_server=loud"), "{warning}");
    assert!(
        warning.contains(r#"logging at "info" instead"#),
        "{warning}"
    );
    ampere.terminate();
}
