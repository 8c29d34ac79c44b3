//! Tables that go away under their shapes, and tables ampere can never snapshot (issue 12,
//! "Relations" and "Errors that do not loop").
//!
//! - A dropped table, a table dropped and created again under the same name, and a table
//!   renamed with a new one created under its name: a client long-polling the shape at its
//!   offset gets a 409 within the relation check's period (5 s), and its re-request converges
//!   on the new table's rows (a new handle), or gets the protocol's 400 when no table has the
//!   name any more (which a poll landing after the rotation gets at once). The same for a
//!   table dropped while ampere was down: the check runs as soon as streaming starts.
//! - A table ampere's role does not own (so `ALTER PUBLICATION … ADD TABLE` fails with
//!   SQLSTATE 42501) and a system catalog (Postgres refuses to publish it): one 4xx naming
//!   the reason, and 20 more requests within 2 s get the same 4xx without another
//!   `ALTER PUBLICATION`, counted by Postgres itself: an event trigger on
//!   `ddl_command_start` for that tag bumps a sequence, which (unlike a table) keeps counting
//!   when the failing statement's transaction rolls back. Once the owner hands the table
//!   over, the refusal's 10 s pass and the next request syncs it.
//!
//! Method as in `metrics.rs`: the real binary as a child process, loopback ports, the shared
//! throwaway cluster, every wait bounded; the figures (time to 409) are printed.

use std::time::{Duration, Instant};

use ampere_io_real::embedded_pg::EmbeddedPostgres;

use crate::common::{
    free_port, http_get, shared_database, wait_for_health, Ampere, Reply, Scratch,
};

/// The relation check's period (`core::instance::relation_check`), plus slack for the query
/// and a loaded machine: a client must see its 409 within this.
const ROTATION_BOUND: Duration = Duration::from_secs(10);
/// Long polls end well within `http_get`'s 15 s read timeout.
const LONG_POLL_MS: &str = "3000";

/// ampere on `db` as `user`, active.
fn spawn(cluster: &EmbeddedPostgres, scratch: &Scratch, db: &str, user: &str) -> (Ampere, u16) {
    let port = free_port();
    let url = cluster.url(user, db);
    let storage = scratch.storage();
    let port_text = port.to_string();
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("ELECTRIC_STORAGE_DIR", storage.to_str().expect("utf-8")),
        ("ELECTRIC_INSECURE", "true"),
        ("ELECTRIC_PORT", port_text.as_str()),
        ("ELECTRIC_LONG_POLL_TIMEOUT", LONG_POLL_MS),
        // Slots are cluster-wide: one per test's database.
        ("ELECTRIC_REPLICATION_STREAM_ID", db),
    ];
    let mut ampere = Ampere::spawn(scratch, &vars);
    wait_for_health(&mut ampere, port, 200, Duration::from_secs(20));
    (ampere, port)
}

fn get(ampere: &Ampere, port: u16, path: &str) -> Reply {
    http_get(port, path).unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", ampere.output()))
}

/// A client's first request and catch-up to up-to-date: its handle and offset.
fn sync(ampere: &Ampere, port: u16, table: &str) -> (String, String, String) {
    let first = get(ampere, port, &format!("/v1/shape?table={table}&offset=-1"));
    assert_eq!(first.status, 200, "{first:?}\n{}", ampere.output());
    let handle = first.header("electric-handle").expect("handle").to_owned();
    let mut offset = first.header("electric-offset").expect("offset").to_owned();
    let mut body = first.body.clone();
    for _ in 0..20 {
        let path = format!("/v1/shape?table={table}&handle={handle}&offset={offset}");
        let reply = get(ampere, port, &path);
        assert_eq!(reply.status, 200, "{reply:?}");
        offset = reply.header("electric-offset").expect("offset").to_owned();
        body.push_str(&reply.body);
        if reply.header("electric-up-to-date").is_some() {
            return (handle, offset, body);
        }
    }
    panic!("never up-to-date on {table}")
}

/// Long-polls the shape at its offset until a 409 (or, when `gone_for_good`, the 400 of a
/// table that does not exist), returning how long after `since` it came and its status.
fn poll_until_must_refetch(
    ampere: &Ampere,
    port: u16,
    (table, handle): (&str, &str),
    mut offset: String,
    since: Instant,
    gone_for_good: bool,
) -> (Duration, u16) {
    loop {
        let path = format!("/v1/shape?table={table}&handle={handle}&offset={offset}&live=true");
        let reply = get(ampere, port, &path);
        match reply.status {
            409 => return (since.elapsed(), 409),
            // The shape went between two polls and no table has its name: the request
            // resolves the name afresh (protocol.md §3.3), which is the end of it too.
            400 if gone_for_good => return (since.elapsed(), 400),
            200 => offset = reply.header("electric-offset").expect("offset").to_owned(),
            _ => panic!("long poll answered {reply:?}"),
        }
        assert!(
            since.elapsed() < ROTATION_BOUND,
            "no 409 within {ROTATION_BOUND:?} of the DDL; last {reply:?}\n{}",
            ampere.output()
        );
    }
}

/// The rotation scenario: `t` holds `('old')`, a client syncs and long-polls; `ddl` runs;
/// the client must get a 409 within [`ROTATION_BOUND`]; its re-request (with the
/// `expired_handle` the client sends) is returned.
fn rotate(db: &str, ddl: &str) -> (String, Reply, (Duration, u16)) {
    let cluster = shared_database(db);
    cluster
        .psql(
            db,
            "CREATE TABLE t (id int PRIMARY KEY, title text); INSERT INTO t VALUES (1, 'old')",
        )
        .expect("create t");
    let scratch = Scratch::new(db);
    let (ampere, port) = spawn(cluster, &scratch, db, "postgres");
    let (handle, offset, body) = sync(&ampere, port, "t");
    assert!(body.contains(r#""title":"old""#), "{body}");

    let ddl_at = Instant::now();
    cluster.psql(db, ddl).expect("the DDL");
    let gone_for_good = !ddl.contains("CREATE");
    let took =
        poll_until_must_refetch(&ampere, port, ("t", &handle), offset, ddl_at, gone_for_good);
    let again = get(
        &ampere,
        port,
        &format!("/v1/shape?table=t&offset=-1&expired_handle={handle}"),
    );
    assert!(
        ampere.output().contains("removing shape"),
        "{}",
        ampere.output()
    );
    (handle, again, took)
}

fn assert_converged_on_the_new_table(old_handle: &str, again: &Reply) {
    assert_eq!(again.status, 200, "{again:?}");
    let handle = again.header("electric-handle").expect("handle");
    assert_ne!(handle, old_handle, "a new shape on the new table");
    assert!(again.body.contains(r#""title":"new""#), "{again:?}");
    assert!(!again.body.contains(r#""title":"old""#), "{again:?}");
}

#[test]
fn a_dropped_tables_shape_rotates_and_the_name_then_gets_the_protocols_400() {
    let (_, again, took) = rotate("rel_drop", "DROP TABLE t");
    println!("DROP TABLE: {} after {:?}", took.1, took.0);
    assert_eq!(again.status, 400, "{again:?}");
    assert_eq!(
        again.body,
        r#"{"message":"Invalid request","errors":{"table":["Table \"public\".\"t\" does not exist. If the table name contains capitals or special characters you must quote it."]}}"#
    );
}

#[test]
fn a_table_dropped_and_created_again_rotates_its_shape_onto_the_new_rows() {
    let ddl = "DROP TABLE t; CREATE TABLE t (id int PRIMARY KEY, title text); \
               INSERT INTO t VALUES (2, 'new')";
    let (old, again, took) = rotate("rel_recreate", ddl);
    println!("DROP + CREATE: {} after {:?}", took.1, took.0);
    assert_eq!(took.1, 409);
    assert_converged_on_the_new_table(&old, &again);
}

#[test]
fn a_table_renamed_and_replaced_under_its_name_rotates_its_shape_onto_the_new_rows() {
    let ddl = "ALTER TABLE t RENAME TO t_old; CREATE TABLE t (id int PRIMARY KEY, title text); \
               INSERT INTO t VALUES (2, 'new')";
    let (old, again, took) = rotate("rel_rename", ddl);
    println!("RENAME + CREATE: {} after {:?}", took.1, took.0);
    assert_eq!(took.1, 409);
    assert_converged_on_the_new_table(&old, &again);
}

#[test]
fn a_table_dropped_while_ampere_was_down_rotates_its_shape_at_startup() {
    // The shape survives the restart on disk; the check right after streaming starts finds
    // its table gone, so the client holding its handle gets a 409, not the old rows forever.
    const DB: &str = "rel_restart";
    let cluster = shared_database(DB);
    cluster
        .psql(
            DB,
            "CREATE TABLE t (id int PRIMARY KEY, title text); INSERT INTO t VALUES (1, 'old')",
        )
        .expect("create t");
    let scratch = Scratch::new(DB);
    let (mut ampere, port) = spawn(cluster, &scratch, DB, "postgres");
    let (handle, offset, _) = sync(&ampere, port, "t");
    ampere.terminate();
    ampere.wait_exit(Duration::from_secs(15));
    cluster.psql(DB, "DROP TABLE t").expect("drop t");

    let restarted_at = Instant::now();
    let (ampere, port) = spawn(cluster, &scratch, DB, "postgres");
    let (took, status) =
        poll_until_must_refetch(&ampere, port, ("t", &handle), offset, restarted_at, true);
    println!("dropped while down: {status} {took:?} after the restart began");
    // Rotated by the startup check, not lost some other way (a purge would say so).
    assert!(
        ampere.output().contains("table dropped"),
        "{}",
        ampere.output()
    );
    let again = get(&ampere, port, "/v1/shape?table=t&offset=-1");
    assert_eq!(again.status, 400, "{again:?}");
}

/// `ALTER PUBLICATION` statements Postgres has started in `db` (see the module docs).
fn alter_publications(cluster: &EmbeddedPostgres, db: &str) -> i64 {
    let text = cluster
        .psql(
            db,
            "SELECT last_value - 1 + is_called::int FROM alter_publications",
        )
        .expect("read the counter");
    text.trim().parse().expect("a count")
}

/// Installs the `ALTER PUBLICATION` counter in `db` (superuser only: event triggers).
fn count_alter_publications(cluster: &EmbeddedPostgres, db: &str) {
    cluster
        .psql(
            db,
            "CREATE SEQUENCE alter_publications; \
             CREATE FUNCTION count_alter_publication() RETURNS event_trigger \
               LANGUAGE plpgsql SECURITY DEFINER AS \
               $$ BEGIN PERFORM nextval('public.alter_publications'); END $$; \
             CREATE EVENT TRIGGER count_alter_publication ON ddl_command_start \
               WHEN TAG IN ('ALTER PUBLICATION') EXECUTE FUNCTION count_alter_publication()",
        )
        .expect("install the counter");
}

/// 20 more requests for `path` within 2 s: each must answer exactly like `first`, and none
/// may start an `ALTER PUBLICATION`.
fn assert_refused_without_retrying(
    ampere: &Ampere,
    port: u16,
    cluster: &EmbeddedPostgres,
    db: &str,
    path: &str,
    first: &Reply,
) {
    let before = alter_publications(cluster, db);
    let started = Instant::now();
    for _ in 0..20 {
        let reply = get(ampere, port, path);
        assert_eq!(reply.status, first.status, "{reply:?}");
        assert_eq!(reply.body, first.body);
    }
    let took = started.elapsed();
    println!("20 repeated requests answered in {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(
        alter_publications(cluster, db),
        before,
        "a refused request ran ALTER PUBLICATION again"
    );
}

#[test]
fn a_table_ampere_may_not_publish_answers_403_with_the_reason_and_is_retried_only_after_10_s() {
    const DB: &str = "rel_forbidden";
    const ROLE: &str = "ampere_rel_forbidden";
    let cluster = shared_database(DB);
    count_alter_publications(cluster, DB);
    cluster
        .psql(
            DB,
            &format!(
                "CREATE ROLE {ROLE} LOGIN REPLICATION; \
                 GRANT CREATE ON DATABASE {DB} TO {ROLE}; GRANT CREATE ON SCHEMA public TO {ROLE}; \
                 CREATE TABLE theirs (id int PRIMARY KEY, title text); \
                 INSERT INTO theirs VALUES (1, 'secret'); GRANT SELECT ON theirs TO {ROLE}; \
                 SET ROLE {ROLE}; CREATE TABLE mine (id int PRIMARY KEY, title text); \
                 INSERT INTO mine VALUES (1, 'one')"
            ),
        )
        .expect("set up the role and its tables");
    let scratch = Scratch::new(DB);
    let (mut ampere, port) = spawn(cluster, &scratch, DB, ROLE);

    let before = alter_publications(cluster, DB);
    let path = "/v1/shape?table=theirs&offset=-1";
    let started = Instant::now();
    let first = get(&ampere, port, path);
    println!(
        "not the owner: {} after {:?}: {}",
        first.status,
        started.elapsed(),
        first.body
    );
    assert_eq!(first.status, 403, "{first:?}\n{}", ampere.output());
    assert!(
        first.body.starts_with(
            r#"{"message":"Unable to create initial snapshot: must be owner of table theirs"#
        ),
        "{first:?}"
    );
    assert_eq!(first.header("electric-handle"), None, "{first:?}");
    assert_eq!(first.header("cache-control"), Some("no-store"));
    assert_eq!(alter_publications(cluster, DB), before + 1, "one attempt");
    assert_refused_without_retrying(&ampere, port, cluster, DB, path, &first);

    // Other definitions on that table are refused from the same memory; its own table syncs.
    let columns = get(&ampere, port, "/v1/shape?table=theirs&offset=-1&columns=id");
    assert_eq!((columns.status, &columns.body), (403, &first.body));
    let (_, _, body) = sync(&ampere, port, "mine");
    assert!(body.contains(r#""title":"one""#), "{body}");

    // The refusal is remembered for a while, not forever: once the owner hands the table
    // over, a request after the refusal's 10 s syncs it (one more ALTER PUBLICATION).
    cluster
        .psql(DB, &format!("ALTER TABLE theirs OWNER TO {ROLE}"))
        .expect("hand the table over");
    let fixed_at = Instant::now();
    let before = alter_publications(cluster, DB);
    let synced = loop {
        let reply = get(&ampere, port, path);
        if reply.status == 200 {
            break reply;
        }
        assert_eq!((reply.status, &reply.body), (403, &first.body));
        assert!(
            fixed_at.elapsed() < Duration::from_secs(15),
            "still refused: {reply:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    println!("after the fix: 200 within {:?}", fixed_at.elapsed());
    assert!(synced.body.contains(r#""title":"secret""#), "{synced:?}");
    assert_eq!(alter_publications(cluster, DB), before + 1);
    assert!(ampere.try_status().is_none(), "{}", ampere.output());
}

#[test]
fn a_system_catalog_answers_400_with_the_reason_and_is_not_retried() {
    const DB: &str = "rel_catalog";
    let cluster = shared_database(DB);
    count_alter_publications(cluster, DB);
    let scratch = Scratch::new(DB);
    let (ampere, port) = spawn(cluster, &scratch, DB, "postgres");

    let path = "/v1/shape?table=pg_catalog.pg_am&offset=-1";
    let started = Instant::now();
    let first = get(&ampere, port, path);
    println!(
        "system catalog: {} after {:?}: {}",
        first.status,
        started.elapsed(),
        first.body
    );
    assert_eq!(first.status, 400, "{first:?}\n{}", ampere.output());
    assert!(
        first.body.starts_with(
            r#"{"message":"Invalid request","errors":{"table":["Unable to create initial snapshot: "#
        ),
        "{first:?}"
    );
    assert_refused_without_retrying(&ampere, port, cluster, DB, path, &first);
}
