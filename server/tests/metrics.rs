//! `ELECTRIC_PROMETHEUS_PORT` on the real binary: `/metrics` is served there only (the API
//! port answers 404), its text is well-formed Prometheus exposition, request counters move,
//! while active the replication slot's statistics appear, and snapshots, flushes and the
//! bytes of shape logs on disk are measured; the port holds at most 16 connections and closes
//! idle ones after `ELECTRIC_TCP_READ_TIMEOUT`, as the API port does.
//!
//! Method as in `startup.rs` (whose harness this copies): the real binary as a child process
//! with only the variables under test, ports picked by binding `127.0.0.1:0`, children killed
//! by PID, every wait bounded; Postgres is this test binary's shared throwaway cluster or, for
//! the standby case, an address nothing listens on.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::thread::sleep;
use std::time::{Duration, Instant};

mod common;

use common::sockets::{closed_by_server, connect_many, wait_all_closed};
use common::{free_port, http_get, items_database, wait_for_health, Ampere, Scratch};

// ---------------------------------------------------------------------------------------------
// HTTP

// ---------------------------------------------------------------------------------------------
// Prometheus text

/// Samples by `name{labels}`, and types by family name.
type Exposition = (BTreeMap<String, f64>, BTreeMap<String, String>);

/// Samples by `name{labels}` (labels as written, sorted by the exporter), after checking that
/// every sample's family was introduced by `# HELP` then `# TYPE` and that families are not
/// interleaved. The in-crate parser (`metrics::text_format`) is the strict one; this checks
/// what crosses the wire.
fn parse_exposition(text: &str) -> Result<Exposition, String> {
    let mut samples = BTreeMap::new();
    let mut types = BTreeMap::new();
    let mut helped: Option<&str> = None;
    let mut current: Option<(&str, &str)> = None;
    if !text.ends_with('\n') {
        return Err("no final newline".to_owned());
    }
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            if types.contains_key(name) {
                return Err(format!("family {name} repeated"));
            }
            helped = Some(name);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or("TYPE without a type")?;
            if helped != Some(name) {
                return Err(format!("TYPE {name} not right after its HELP"));
            }
            types.insert(name.to_owned(), kind.to_owned());
            current = Some((name, kind));
        } else {
            let (series, value) = line.rsplit_once(' ').ok_or("sample without a value")?;
            let name = series.split('{').next().unwrap_or_default();
            let (family, kind) = current.ok_or("sample before any TYPE")?;
            let is_member = name == family
                || (kind == "histogram"
                    && ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name.strip_suffix(s) == Some(family)));
            if !is_member {
                return Err(format!("{name} outside its family {family}"));
            }
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().map_err(|_| format!("bad value in {line:?}"))?,
            };
            if samples.insert(series.to_owned(), value).is_some() {
                return Err(format!("repeated series {series}"));
            }
        }
    }
    Ok((samples, types))
}

/// Scrapes `/metrics` on `port` and parses it.
fn scrape(port: u16) -> Exposition {
    let reply = http_get(port, "/metrics").expect("scrape");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    parse_exposition(&reply.body).unwrap_or_else(|e| panic!("{e}:\n{}", reply.body))
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn an_active_instance_exposes_progress_requests_and_its_slot_on_the_prometheus_port_only() {
    let cluster = items_database("metrics_active");
    let scratch = Scratch::new("active");
    let storage = scratch.storage();
    let (port, metrics_port) = (free_port(), free_port());
    let (port_text, metrics_text) = (port.to_string(), metrics_port.to_string());
    let url = cluster.url("postgres", "metrics_active");
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("ELECTRIC_STORAGE_DIR", storage.to_str().expect("utf-8")),
        ("ELECTRIC_INSECURE", "true"),
        ("ELECTRIC_PORT", port_text.as_str()),
        ("ELECTRIC_PROMETHEUS_PORT", metrics_text.as_str()),
    ];
    let mut ampere = Ampere::spawn(&scratch, &vars);
    wait_for_health(&mut ampere, port, 200, Duration::from_secs(15));
    let shape = http_get(port, "/v1/shape?table=items&offset=-1").expect("shape request");
    assert_eq!(shape.status, 200, "{shape:?}");
    assert_eq!(
        http_get(port, "/metrics").expect("API /metrics").status,
        404
    );

    let (samples, types) = scrape(metrics_port);
    for (name, kind) in [
        ("ampere_active", "gauge"),
        ("ampere_purges_total", "counter"),
        ("ampere_durable_lsn", "gauge"),
        ("ampere_acknowledged_lsn", "gauge"),
        ("ampere_shapes", "gauge"),
        ("ampere_shapes_evicted_total", "counter"),
        ("ampere_http_requests_total", "counter"),
        ("ampere_http_request_duration_seconds", "histogram"),
        ("ampere_http_requests_in_flight", "gauge"),
        ("ampere_http_connections", "gauge"),
    ] {
        assert_eq!(types.get(name).map(String::as_str), Some(kind), "{name}");
    }
    assert_eq!(samples.get("ampere_active"), Some(&1.0));
    assert_eq!(samples.get("ampere_shapes"), Some(&1.0));
    assert_eq!(
        samples.get("ampere_shapes_evicted_total"),
        Some(&0.0),
        "no limit, no eviction"
    );
    assert!(samples.contains_key("ampere_http_connections"));
    let shape_ok = r#"ampere_http_requests_total{route="shape",status="200"}"#;
    assert_eq!(samples.get(shape_ok), Some(&1.0), "{samples:?}");
    let not_found = r#"ampere_http_requests_total{route="other",status="404"}"#;
    assert_eq!(samples.get(not_found), Some(&1.0), "{samples:?}");
    http_get(port, "/v1/shape?table=items&offset=-1").expect("second shape request");
    assert_eq!(scrape(metrics_port).0.get(shape_ok), Some(&2.0));
    // An open connection counts until it closes.
    let open = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).expect("connect");
    wait_for_sample(metrics_port, "ampere_http_connections", 1.0);
    drop(open);
    wait_for_sample(metrics_port, "ampere_http_connections", 0.0);

    assert_slot_series(metrics_port);
    ampere.terminate();
    let status = ampere.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "SIGTERM: {status}:\n{}", ampere.output());
}

/// Scrapes until `series` reads `value` (within 5 s).
fn wait_for_sample(metrics_port: u16, series: &str, value: f64) {
    wait_for(metrics_port, series, |v| v == value);
}

/// Scrapes until `series` has a value `accept`s (within 10 s); returns that value.
fn wait_for(metrics_port: u16, series: &str, accept: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (samples, _) = scrape(metrics_port);
        if let Some(value) = samples.get(series).copied().filter(|v| accept(*v)) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never as expected: {samples:?}"
        );
        sleep(Duration::from_millis(50));
    }
}

#[test]
fn snapshots_and_flushes_are_timed_and_shape_bytes_on_disk_grow_with_writes() {
    let cluster = items_database("metrics_storage");
    let scratch = Scratch::new("storage");
    let storage = scratch.storage();
    let (port, metrics_port) = (free_port(), free_port());
    let (port_text, metrics_text) = (port.to_string(), metrics_port.to_string());
    let url = cluster.url("postgres", "metrics_storage");
    let vars = [
        ("DATABASE_URL", url.as_str()),
        // Slots are per cluster, and other tests here stream from other databases.
        ("ELECTRIC_REPLICATION_STREAM_ID", "metrics_storage"),
        ("ELECTRIC_STORAGE_DIR", storage.to_str().expect("utf-8")),
        ("ELECTRIC_INSECURE", "true"),
        ("ELECTRIC_PORT", port_text.as_str()),
        ("ELECTRIC_PROMETHEUS_PORT", metrics_text.as_str()),
    ];
    let mut ampere = Ampere::spawn(&scratch, &vars);
    wait_for_health(&mut ampere, port, 200, Duration::from_secs(15));
    let (samples, types) = scrape(metrics_port);
    for (name, kind) in [
        ("ampere_shape_storage_bytes", "gauge"),
        ("ampere_snapshot_duration_seconds", "histogram"),
        ("ampere_flush_duration_seconds", "histogram"),
        ("ampere_transactions_total", "counter"),
        ("ampere_changes_total", "counter"),
    ] {
        assert_eq!(types.get(name).map(String::as_str), Some(kind), "{name}");
    }
    assert_eq!(
        scrape(metrics_port).0.get("ampere_shape_storage_bytes"),
        Some(&0.0),
        "no shape yet"
    );
    assert!(
        !samples.contains_key("ampere_replication_lag_seconds"),
        "no lag before the first transaction: {samples:?}"
    );
    let transactions_before = samples["ampere_transactions_total"];
    let changes_before = samples["ampere_changes_total"];

    let shape = http_get(port, "/v1/shape?table=items&offset=-1").expect("shape request");
    assert_eq!(shape.status, 200, "{shape:?}");
    wait_for(
        metrics_port,
        "ampere_snapshot_duration_seconds_count",
        |n| n >= 1.0,
    );
    let after_snapshot = wait_for(metrics_port, "ampere_shape_storage_bytes", |b| b > 0.0);

    cluster
        .psql(
            "metrics_storage",
            "INSERT INTO items SELECT i, 'row ' || i FROM generate_series(2, 50) AS i",
        )
        .expect("insert rows");
    wait_for(metrics_port, "ampere_flush_duration_seconds_count", |n| {
        n >= 1.0
    });
    wait_for(metrics_port, "ampere_shape_storage_bytes", |b| {
        b > after_snapshot
    });
    // One transaction of 49 inserts (others may come from the shape's own setup).
    wait_for(metrics_port, "ampere_transactions_total", |n| {
        n >= transactions_before + 1.0
    });
    wait_for(metrics_port, "ampere_changes_total", |n| {
        n >= changes_before + 49.0
    });
    // The same host's clock on both ends: the commit was processed within seconds.
    let lag = wait_for(metrics_port, "ampere_replication_lag_seconds", |s| {
        s > -1.0 && s < 10.0
    });
    assert!(lag.is_finite(), "{lag}");

    ampere.terminate();
    let status = ampere.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "SIGTERM: {status}:\n{}", ampere.output());
}

/// The slot poller reads `pg_replication_slots` as soon as the instance is active.
fn assert_slot_series(metrics_port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let samples = loop {
        let (samples, _) = scrape(metrics_port);
        if samples.contains_key("ampere_slot_active") {
            break samples;
        }
        assert!(Instant::now() < deadline, "no slot series: {samples:?}");
        sleep(Duration::from_millis(200));
    };
    assert_eq!(samples.get("ampere_slot_active"), Some(&1.0));
    assert!(samples
        .get("ampere_slot_retained_wal_bytes")
        .is_some_and(|b| *b >= 0.0));
    assert!(samples.contains_key("ampere_slot_confirmed_flush_lag_bytes"));
    assert_eq!(
        samples.get(r#"ampere_slot_wal_status{wal_status="reserved"}"#),
        Some(&1.0),
        "{samples:?}"
    );
}

#[test]
fn a_waiting_instance_reports_inactive_without_slot_series_and_metrics_are_off_by_default() {
    let scratch = Scratch::new("waiting");
    let storage = scratch.storage();
    let (port, metrics_port) = (free_port(), free_port());
    let (port_text, metrics_text) = (port.to_string(), metrics_port.to_string());
    let url = format!("postgresql://postgres@127.0.0.1:{}/postgres", free_port());
    let storage_text = storage.to_str().expect("utf-8");
    let mut vars = vec![
        ("DATABASE_URL", url.as_str()),
        ("ELECTRIC_STORAGE_DIR", storage_text),
        ("ELECTRIC_INSECURE", "true"),
        ("ELECTRIC_PORT", port_text.as_str()),
        ("ELECTRIC_PROMETHEUS_PORT", metrics_text.as_str()),
    ];
    let mut ampere = Ampere::spawn(&scratch, &vars);
    wait_for_health(&mut ampere, port, 202, Duration::from_secs(10));
    let (samples, _) = scrape(metrics_port);
    assert_eq!(samples.get("ampere_active"), Some(&0.0));
    assert!(
        !samples.keys().any(|k| k.starts_with("ampere_slot_")),
        "{samples:?}"
    );
    let health = r#"ampere_http_requests_total{route="health",status="202"}"#;
    assert!(
        samples.get(health).is_some_and(|n| *n >= 1.0),
        "{samples:?}"
    );
    drop(ampere);

    // Unset: nothing listens on a Prometheus port, and the API port has no /metrics.
    vars.pop();
    let mut ampere = Ampere::spawn(&scratch, &vars);
    wait_for_health(&mut ampere, port, 202, Duration::from_secs(10));
    assert_eq!(
        http_get(port, "/metrics").expect("API /metrics").status,
        404
    );
    assert!(http_get(metrics_port, "/metrics").is_err());
}

#[test]
fn idle_connections_to_the_metrics_port_are_capped_and_closed_by_the_read_timeout() {
    // Goal: the metrics port is no unbounded side door: of many idle connections it keeps at
    // most 16 open (the rest are closed unread, or close older idle ones), closes those within
    // ELECTRIC_TCP_READ_TIMEOUT, and meanwhile ampere stays up, the API port answers, and a
    // fresh scrape works once they are gone.
    // Method: 200 idle connections to the metrics port with a 2 s read timeout; after half a
    // second count those the server still holds and ampere's descriptors; then wait for all
    // to close, ask the API for its health and scrape.
    const DB: &str = "metrics_idle";
    const IDLE: usize = 200;
    const CAP: usize = 16;
    const READ_TIMEOUT: Duration = Duration::from_secs(2);
    let cluster = items_database(DB);
    let scratch = Scratch::new("idle");
    let storage = scratch.storage();
    let (port, metrics_port) = (free_port(), free_port());
    let (port_text, metrics_text) = (port.to_string(), metrics_port.to_string());
    let url = cluster.url("postgres", DB);
    let read_timeout = format!("{}ms", READ_TIMEOUT.as_millis());
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("ELECTRIC_REPLICATION_STREAM_ID", DB),
        ("ELECTRIC_STORAGE_DIR", storage.to_str().expect("utf-8")),
        ("ELECTRIC_INSECURE", "true"),
        ("ELECTRIC_PORT", port_text.as_str()),
        ("ELECTRIC_PROMETHEUS_PORT", metrics_text.as_str()),
        ("ELECTRIC_TCP_READ_TIMEOUT", read_timeout.as_str()),
    ];
    let mut ampere = Ampere::spawn(&scratch, &vars);
    wait_for_health(&mut ampere, port, 200, Duration::from_secs(15));
    scrape(metrics_port);
    let fds_before = ampere.open_fds();

    let started = Instant::now();
    let (mut idle, failed) = connect_many(SocketAddr::from(([127, 0, 0, 1], metrics_port)), IDLE);
    assert!(idle.len() >= IDLE / 2, "{failed} of {IDLE} connects failed");
    sleep(Duration::from_millis(500));
    let held = idle
        .iter_mut()
        .map(|stream| closed_by_server(stream).0)
        .filter(|is_closed| !is_closed)
        .count();
    let fds_during = ampere.open_fds();
    assert!(held <= CAP, "the metrics port holds {held} connections");
    assert!(
        fds_during <= fds_before + CAP + 4,
        "ampere's descriptors went from {fds_before} to {fds_during}"
    );
    assert!(
        ampere.try_status().is_none(),
        "ampere exited:\n{}",
        ampere.output()
    );
    let health = http_get(port, "/v1/health").expect("the API answers meanwhile");
    assert_eq!(health.status, 200, "{health:?}");

    let (open, _) = wait_all_closed(&mut idle, READ_TIMEOUT + Duration::from_secs(3));
    assert_eq!(
        open,
        0,
        "idle connections still open {:?} after the first connect",
        started.elapsed()
    );
    drop(idle);
    let (samples, _) = scrape(metrics_port);
    assert_eq!(samples.get("ampere_active"), Some(&1.0));
    assert_eq!(http_get(port, "/v1/health").expect("health").status, 200);
    assert!(
        ampere.stdout().contains("metrics connection cap reached"),
        "{}",
        ampere.output()
    );
    println!(
        "metrics port: {} idle connections ({failed} connects failed), {held} held after 0.5 s, \
         descriptors {fds_before} -> {fds_during}",
        IDLE - failed
    );
    ampere.terminate();
    let status = ampere.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "SIGTERM: {status}:\n{}", ampere.output());
}
