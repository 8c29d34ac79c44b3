//! Stored generated columns against the real binary, on whichever major `PG_BIN` runs
//! (`scripts/test-pg-versions.sh` runs it on 14, 16, 17 and 18; `cargo test` on 15).
//!
//! Goal: from PostgreSQL 18, whose pgoutput sends stored generated columns (the publication
//! publishes them), a shape includes them in its snapshot and in every change, and changes
//! never turn into a must-refetch (409) for a relation that disagrees with the catalog.
//! Before 18 pgoutput cannot send them, so a shape that would include one is refused with
//! Electric's message, and one that leaves them out streams as usual.
//!
//! Method: a table with `g int GENERATED ALWAYS AS (a * 2) STORED` and a row, the binary
//! started on it, a shape requested, then an insert and an update; the shape is read
//! (non-live) until both changes arrive, failing on any other status than 200.

mod common;

use std::time::{Duration, Instant};

use ampere_io_real::embedded_pg::EmbeddedPostgres;
use common::{free_port, http_get, shared_database, wait_for_health, Ampere, Reply, Scratch};

const DB: &str = "generated_columns";

#[test]
fn stored_generated_columns_stream_from_postgres_18_and_are_refused_before() {
    let cluster = shared_database(DB);
    cluster
        .psql(
            DB,
            "CREATE TABLE gen_items (id int PRIMARY KEY, a int, \
             g int GENERATED ALWAYS AS (a * 2) STORED); \
             INSERT INTO gen_items (id, a) VALUES (1, 10)",
        )
        .expect("create gen_items");
    let version: u32 = cluster
        .psql(DB, "SHOW server_version_num")
        .expect("server_version_num")
        .parse()
        .expect("a number");
    let scratch = Scratch::new("generated");
    let storage = scratch.storage();
    let port = free_port();
    let port_text = port.to_string();
    let url = cluster.url("postgres", DB);
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("ELECTRIC_STORAGE_DIR", storage.to_str().expect("utf-8")),
        ("ELECTRIC_INSECURE", "true"),
        ("ELECTRIC_PORT", port_text.as_str()),
    ];
    let mut ampere = Ampere::spawn(&scratch, &vars);
    wait_for_health(&mut ampere, port, 200, Duration::from_secs(15));

    if version >= 180_000 {
        streams_with_generated_columns(cluster, &ampere, port);
    } else {
        refuses_generated_columns_and_streams_without(cluster, &ampere, port);
    }
    ampere.terminate();
    ampere.wait_exit(Duration::from_secs(10));
}

/// From 18: the snapshot and both changes carry `g`; a shape that leaves `g` out streams
/// too (the relation pgoutput sends has `g` either way: no must-refetch).
fn streams_with_generated_columns(cluster: &EmbeddedPostgres, ampere: &Ampere, port: u16) {
    let whole = get(ampere, port, "/v1/shape?table=gen_items&offset=-1");
    assert!(whole.body.contains(r#""g":"20""#), "{whole:?}");
    let schema = whole.header("electric-schema").expect("electric-schema");
    assert!(schema.contains(r#""g""#), "{schema}");
    let selected = "table=gen_items&columns=id,a";
    let without_g = get(ampere, port, &format!("/v1/shape?{selected}&offset=-1"));
    write_changes(cluster);
    let changes = read_until(ampere, port, &whole, "table=gen_items", |seen| {
        seen.contains(r#""g":"42""#) && seen.contains(r#""g":"22""#)
    });
    assert!(changes.contains(r#""a":"21""#), "{changes}");
    let changes = read_until(ampere, port, &without_g, selected, |seen| {
        seen.contains(r#""a":"21""#) && seen.contains(r#""a":"11""#)
    });
    assert!(!changes.contains(r#""g""#), "{changes}");
}

/// Before 18: Electric's refusal, then a shape without `g` that streams.
fn refuses_generated_columns_and_streams_without(
    cluster: &EmbeddedPostgres,
    ampere: &Ampere,
    port: u16,
) {
    let refused = http_get(port, "/v1/shape?table=gen_items&offset=-1").expect("request");
    assert_eq!(refused.status, 400, "{refused:?}");
    assert!(
        refused.body.contains(
            "The following columns are generated and cannot be included in the shape: g. \
             You can exclude them from the shape by explicitly listing which columns to \
             fetch in the 'columns' query param"
        ),
        "{refused:?}"
    );
    let selected = "table=gen_items&columns=id,a";
    let shape = get(ampere, port, &format!("/v1/shape?{selected}&offset=-1"));
    assert!(shape.body.contains(r#""a":"10""#), "{shape:?}");
    write_changes(cluster);
    let changes = read_until(ampere, port, &shape, selected, |seen| {
        seen.contains(r#""a":"21""#) && seen.contains(r#""a":"11""#)
    });
    assert!(!changes.contains(r#""g""#), "{changes}");
}

/// A 200 reply to `path`, or a failure naming the reply and ampere's log.
fn get(ampere: &Ampere, port: u16, path: &str) -> Reply {
    let reply = http_get(port, path).expect("shape request");
    assert_eq!(reply.status, 200, "{path}: {reply:?}\n{}", ampere.stderr());
    reply
}

/// Inserts row 2 (`a = 21`) and updates row 1 to `a = 11`.
fn write_changes(cluster: &EmbeddedPostgres) {
    cluster
        .psql(
            DB,
            "INSERT INTO gen_items (id, a) VALUES (2, 21); UPDATE gen_items SET a = 11 WHERE id = 1",
        )
        .expect("insert and update");
}

/// Reads the shape (`query` names it) from where `first` ended until `arrived` holds for
/// the bodies read (concatenated), which it returns; any status but 200 fails.
fn read_until(
    ampere: &Ampere,
    port: u16,
    first: &Reply,
    query: &str,
    arrived: impl Fn(&str) -> bool,
) -> String {
    let handle = first.header("electric-handle").expect("electric-handle");
    let mut offset = first
        .header("electric-offset")
        .expect("electric-offset")
        .to_owned();
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !arrived(&seen) {
        assert!(
            Instant::now() < deadline,
            "the changes never arrived; read so far: {seen}\n{}",
            ampere.stderr()
        );
        let path = format!("/v1/shape?{query}&handle={handle}&offset={offset}");
        let reply = get(ampere, port, &path);
        seen.push_str(&reply.body);
        offset = reply
            .header("electric-offset")
            .expect("electric-offset")
            .to_owned();
        std::thread::sleep(Duration::from_millis(100));
    }
    seen
}
