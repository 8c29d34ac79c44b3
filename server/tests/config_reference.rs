//! The `ampere` binary given Electric's configuration: every variable of Electric's reference
//! at once, and the storage variables against a real database.
//!
//! Method: as `startup.rs` — the real binary with `env_clear()` plus `PATH` and only the
//! variables under test, fresh directories under `/tmp` (removed afterwards), HTTP ports picked
//! by binding port 0, output captured, every wait bounded, the child killed by PID if a test
//! ends early. The warnings are read from the log: ampere tags each configuration warning with
//! `variable=<name>`, and the set of names must be exactly the variables that
//! `config::VARIABLES` does not mark honoured, each once.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use ampere_server::config::{Support, VARIABLES};

mod common;

use common::{free_port, http_get_at, items_database, Ampere, Scratch};

const POLL: Duration = Duration::from_millis(100);
/// Until `/v1/health` answers.
const START: Duration = Duration::from_secs(20);
/// From SIGTERM to exit.
const STOP: Duration = Duration::from_secs(10);
/// A PEM bundle ampere can read for `ELECTRIC_DATABASE_CA_CERTIFICATE_FILE` (Debian/Ubuntu's
/// system roots, which Electric's docs suggest pointing it at).
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

#[test]
fn every_variable_of_electrics_reference_is_accepted_and_each_one_ampere_does_not_honour_warns_once(
) {
    // Goal: an Electric deployment's environment starts ampere, and the log says once for each
    // variable that ampere does not honour what it does instead; unknown ELECTRIC_* names warn
    // as typos. Method: every variable of config::VARIABLES set (its documented example, or a
    // value this machine needs), plus two unknown names. The CA file turns verification on, as
    // in Electric, so DATABASE_URL names a port nothing listens on: a database that is not
    // there is retried (health 202), where a server without TLS would stop ampere.
    let scratch = Scratch::new("every");
    let port = free_port();
    let ipv6 = can_bind_ipv6();
    let vars = every_variable(&scratch, port, ipv6);
    let mut ampere = Ampere::spawn(&scratch, &as_strs(&vars));
    let v4 = SocketAddr::from(([127, 0, 0, 1], port));
    let health = wait_for_health(&mut ampere, v4, START);
    assert_eq!(health.0, 202, "{health:?}");
    if ipv6 {
        let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
        let reply = http_get(v6, "/v1/health").expect("ELECTRIC_LISTEN_ON_IPV6: [::1] answers");
        assert_eq!(reply.0, 202, "{reply:?}");
    }
    ampere.terminate();
    let status = ampere.wait_exit(STOP);
    let log = ampere.stdout();
    assert!(status.success(), "SIGTERM: exited {status}:\n{log}");

    let mut expected: Vec<&str> = VARIABLES
        .iter()
        .filter(|v| !matches!(v.support, Support::Honoured { .. } | Support::ClientSide))
        .map(|v| v.name)
        .chain(["ELECTRIC_FOO", "ELECTRIC_CACHE_MAX_AG"])
        .collect();
    expected.sort_unstable();
    let warnings = variable_warnings(&log);
    let mut warned: Vec<&str> = warnings.iter().map(|(name, _)| name.as_str()).collect();
    warned.sort_unstable();
    assert_eq!(warned, expected, "log:\n{log}");
    let line = |name: &str| &warnings.iter().find(|(n, _)| n == name).expect("warned").1;
    assert!(line("ELECTRIC_FOO").contains("a typo?"), "{log}");
    let near = "Did you mean ELECTRIC_CACHE_MAX_AGE?";
    assert!(line("ELECTRIC_CACHE_MAX_AG").contains(near), "{log}");
    assert!(line("ELECTRIC_USAGE_REPORTING").contains("ampere sends no telemetry"));
    assert!(line("STORAGE_DIR").contains("ELECTRIC_STORAGE_DIR is set too"));
    let old_storage = scratch.path("old-storage");
    assert!(
        !old_storage.exists(),
        "STORAGE_DIR used although ELECTRIC_STORAGE_DIR is set"
    );
    assert!(
        scratch.path("shape-db").is_dir(),
        "ELECTRIC_SHAPE_DB_STORAGE_DIR not probed"
    );
}

/// Every variable of `config::VARIABLES` with its example, except those this test must set
/// (ports, directories, database URLs, files), plus two unknown `ELECTRIC_*` names.
fn every_variable(scratch: &Scratch, port: u16, ipv6: bool) -> Vec<(&'static str, String)> {
    let url = format!("postgresql://postgres@127.0.0.1:{}/postgres", free_port());
    assert!(
        Path::new(SYSTEM_ROOTS).is_file(),
        "{SYSTEM_ROOTS} is missing"
    );
    let overrides: Vec<(&str, String)> = vec![
        ("DATABASE_URL", url.clone()),
        ("ELECTRIC_POOLED_DATABASE_URL", url.clone()),
        ("ELECTRIC_QUERY_DATABASE_URL", url),
        (
            "ELECTRIC_DATABASE_CA_CERTIFICATE_FILE",
            SYSTEM_ROOTS.to_owned(),
        ),
        ("ELECTRIC_PORT", port.to_string()),
        ("ELECTRIC_PROMETHEUS_PORT", free_port().to_string()),
        ("ELECTRIC_LISTEN_ON_IPV6", ipv6.to_string()),
        ("ELECTRIC_STORAGE_DIR", text(&scratch.path("storage"))),
        ("STORAGE_DIR", text(&scratch.path("old-storage"))),
        (
            "ELECTRIC_SHAPE_DB_STORAGE_DIR",
            text(&scratch.path("shape-db")),
        ),
        // Electric refuses a secret together with insecure mode.
        ("ELECTRIC_INSECURE", "false".to_owned()),
        (
            "ELECTRIC_REPLICATION_STREAM_ID",
            "config-reference".to_owned(),
        ),
        // Electric's `notice`, which stopped ampere before; warnings still show.
        ("ELECTRIC_LOG_LEVEL", "notice".to_owned()),
        ("ELECTRIC_LOG_COLORS", "false".to_owned()),
    ];
    let mut vars: Vec<(&str, String)> = VARIABLES
        .iter()
        .filter(|v| !overrides.iter().any(|(name, _)| *name == v.name))
        .map(|v| (v.name, v.example.to_owned()))
        .collect();
    vars.extend(overrides);
    vars.push(("ELECTRIC_FOO", "1".to_owned()));
    vars.push(("ELECTRIC_CACHE_MAX_AG", "5".to_owned()));
    vars
}

#[test]
fn the_old_storage_dir_name_and_a_separate_shape_db_dir_put_logs_and_metadata_where_electric_would()
{
    // Goal: STORAGE_DIR (the name before Electric 1.0) still locates the shape logs, and
    // ELECTRIC_SHAPE_DB_STORAGE_DIR moves the metadata database out of it; the other storage
    // and socket variables take effect. Method: a real database, a shape created, then look at
    // the directories; an idle connection is closed after ELECTRIC_TCP_READ_TIMEOUT.
    let cluster = items_database("config_storage");
    let scratch = Scratch::new("storage");
    let port = free_port();
    let storage = scratch.path("logs");
    let shape_db = scratch.path("local-db");
    let vars: Vec<(&str, String)> = vec![
        ("DATABASE_URL", cluster.url("postgres", "config_storage")),
        ("ELECTRIC_INSECURE", "true".to_owned()),
        ("ELECTRIC_PORT", port.to_string()),
        (
            "ELECTRIC_REPLICATION_STREAM_ID",
            "config_storage".to_owned(),
        ),
        ("STORAGE_DIR", text(&storage)),
        ("ELECTRIC_SHAPE_DB_STORAGE_DIR", text(&shape_db)),
        ("ELECTRIC_SHAPE_DB_SYNCHRONOUS", "FULL".to_owned()),
        ("ELECTRIC_SHAPE_DB_CACHE_SIZE", "8MiB".to_owned()),
        ("ELECTRIC_TCP_READ_TIMEOUT", "2s".to_owned()),
        ("ELECTRIC_TCP_SEND_TIMEOUT", "10s".to_owned()),
        ("ELECTRIC_LOG_LEVEL", "notice".to_owned()),
    ];
    let mut ampere = Ampere::spawn(&scratch, &as_strs(&vars));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // 202 (waiting) until the lock, publication and slot are set up, which may outlast a poll
    common::wait_for_health(&mut ampere, port, 200, START);
    let shape = http_get(addr, "/v1/shape?table=items&offset=-1").expect("shape request");
    assert_eq!(shape.0, 200, "{shape:?}\n{}", ampere.output());
    assert!(shape.1.contains(r#""title":"one""#), "{shape:?}");

    let started = Instant::now();
    let idle = idle_connection_lifetime(addr);
    assert!(
        idle >= Duration::from_millis(1500) && idle < Duration::from_secs(6),
        "an idle connection lived {idle:?} (ELECTRIC_TCP_READ_TIMEOUT=2s)"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    ampere.terminate();
    let status = ampere.wait_exit(STOP);
    let log = ampere.stdout();
    assert!(status.success(), "SIGTERM: exited {status}:\n{log}");
    assert!(
        storage.join("shapes").is_dir(),
        "shape logs not in STORAGE_DIR:\n{log}"
    );
    assert!(
        shape_db.join("shapes.sqlite3").is_file(),
        "metadata not moved:\n{log}"
    );
    assert!(
        !storage.join("shapes.sqlite3").exists(),
        "metadata left in the storage dir"
    );
    assert!(
        !scratch.path("persistent").exists(),
        "the default storage dir was used"
    );
    let warned: Vec<String> = variable_warnings(&log)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(warned, ["STORAGE_DIR"], "log:\n{log}");
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// `(variable, line)` for every warning line tagged `variable=<name>`.
fn variable_warnings(log: &str) -> Vec<(String, String)> {
    log.lines()
        .filter(|line| line.contains(" WARN "))
        .filter_map(|line| {
            let (_, rest) = line.split_once(" variable=")?;
            let name = rest.split_whitespace().next()?.trim_matches('"');
            Some((name.to_owned(), line.to_owned()))
        })
        .collect()
}

/// How long ampere keeps a connection open on which nothing is sent (bounded at 15 s).
fn idle_connection_lifetime(addr: SocketAddr) -> Duration {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("read timeout");
    let opened = Instant::now();
    let mut buf = [0u8; 16];
    match stream.read(&mut buf) {
        Ok(0) => opened.elapsed(),
        Ok(n) => panic!("ampere sent {n} bytes unasked"),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => opened.elapsed(),
        Err(e) => panic!("the idle connection stayed open ({e})"),
    }
}

/// Whether this machine can listen on IPv6 (`[::1]`).
fn can_bind_ipv6() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

fn text(path: &Path) -> String {
    path.to_str().expect("utf-8 path").to_owned()
}

/// `GET path` with `Connection: close`: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    http_get_at(addr, path).map(|reply| (reply.status, reply.body))
}

/// Polls `/v1/health` until it answers 200 or 202; panics if ampere exits or `within` passes.
fn wait_for_health(ampere: &mut Ampere, addr: SocketAddr, within: Duration) -> (u16, String) {
    let deadline = Instant::now() + within;
    loop {
        if let Some(exit) = ampere.try_status() {
            panic!(
                "ampere exited ({exit}) before answering:\n{}",
                ampere.output()
            );
        }
        let last = match http_get(addr, "/v1/health") {
            Ok(reply) if matches!(reply.0, 200 | 202) => return reply,
            Ok(reply) => format!("{reply:?}"),
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "/v1/health did not answer within {within:?} (last: {last}); output:\n{}",
            ampere.output()
        );
        sleep(POLL);
    }
}

fn as_strs<'a>(vars: &'a [(&'a str, String)]) -> Vec<(&'a str, &'a str)> {
    vars.iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect()
}
