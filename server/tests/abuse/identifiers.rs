//! Hostile identifiers on the real binary (issue 12, "Errors that do not loop"): a NUL in a
//! `table` name is a 400 (it was a 503 the client retried forever), a CR or LF in a name that
//! does not exist is the protocol's 400, and a table whose name really holds a line break and a
//! forged log line is served while the log keeps one line per event.
//!
//! Method as in `relations.rs`: the real binary, loopback, the shared throwaway cluster.

use std::time::Duration;

use crate::common::{
    free_port, http_get, shared_database, wait_for_health, Ampere, Reply, Scratch,
};

/// What a forged line would start with, if a name reached the log raw.
const FORGED: &str = "2026-12-07T00:00:00.000000Z  INFO ampere: forged";

fn get(ampere: &Ampere, port: u16, path: &str) -> Reply {
    http_get(port, path).unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", ampere.output()))
}

#[test]
fn nul_cr_and_lf_in_table_names_are_client_errors_and_never_forge_a_log_line() {
    let db = "abuse_identifiers";
    let cluster = shared_database(db);
    cluster
        .psql(
            db,
            &format!(
                "CREATE TABLE \"evil\r\n{FORGED}\" (id int PRIMARY KEY); \
                 INSERT INTO \"evil\r\n{FORGED}\" VALUES (1)"
            ),
        )
        .expect("a table whose name holds CR LF");
    let scratch = Scratch::new("identifiers");
    let storage = scratch.storage();
    let port = free_port();
    let port_text = port.to_string();
    let url = cluster.url("postgres", db);
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("ELECTRIC_STORAGE_DIR", storage.to_str().expect("utf-8")),
        ("ELECTRIC_INSECURE", "true"),
        ("ELECTRIC_PORT", port_text.as_str()),
        ("ELECTRIC_REPLICATION_STREAM_ID", db),
        // Every request logged, with its parameters.
        ("AMPERE_LOG", "info,ampere_server::http::access_log=debug"),
    ];
    let mut ampere = Ampere::spawn(&scratch, &vars);
    wait_for_health(&mut ampere, port, 200, Duration::from_secs(20));

    let nul = get(&ampere, port, "/v1/shape?table=%22ite%00ms%22&offset=-1");
    assert_eq!(nul.status, 400, "{nul:?}");
    assert!(nul.body.contains("NUL byte"), "{nul:?}");
    let unquoted = get(&ampere, port, "/v1/shape?table=items%00&offset=-1");
    assert_eq!(unquoted.status, 400, "{unquoted:?}");
    let missing = get(
        &ampere,
        port,
        "/v1/shape?table=%22no%0D%0Asuch%22&offset=-1",
    );
    assert_eq!(missing.status, 400, "{missing:?}");
    assert!(missing.body.contains("does not exist"), "{missing:?}");

    let forged_name: String = format!("\"evil\r\n{FORGED}\"")
        .bytes()
        .map(|b| format!("%{b:02X}"))
        .collect();
    let evil = get(
        &ampere,
        port,
        &format!("/v1/shape?table={forged_name}&offset=-1"),
    );
    assert_eq!(evil.status, 200, "{evil:?}\n{}", ampere.output());
    assert!(evil.body.contains(r#""id":"1""#), "{evil:?}");

    ampere.terminate();
    ampere.wait_exit(Duration::from_secs(15));
    let log = ampere.stdout();
    assert!(
        log.contains(r"evil\r\n2026-12-07T00:00:00.000000Z  INFO ampere: forged"),
        "the shape's log line names the table, escaped:\n{log}"
    );
    for line in log.lines() {
        assert!(!line.starts_with(FORGED), "a forged log line:\n{log}");
        assert!(!line.contains('\0'), "a NUL in the log:\n{log}");
    }
    eprintln!(
        "identifiers: NUL 400, unquoted NUL 400, CR LF unknown table 400, CR LF table served; \
         {} log lines, none forged",
        log.lines().count()
    );
}
