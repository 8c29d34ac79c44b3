//! `ELECTRIC_MANUAL_TABLE_PUBLISHING=true` on the real binary with a least-privilege role:
//! ampere never alters the publication or a table; a shape on a table the operator has not
//! made replicable is refused with Electric's 503 envelope naming the exact SQL to run, and no
//! shape is created; once the operator runs it, the same request syncs and later inserts
//! arrive.
//!
//! Method as in `metrics.rs`: the real binary as a child process with only the variables under
//! test, ports picked by binding `127.0.0.1:0`, the child killed by PID, every wait bounded.
//! Postgres is this test binary's shared throwaway cluster; ampere logs in as a role with
//! `REPLICATION`, `SELECT` on the tables and `CREATE` on the database (Electric's documented
//! minimum: it creates and so owns the publication), owning no table, so it could not add
//! one to the publication or change its replica identity even if it tried. The operator is
//! the cluster's superuser, through `psql`.

use std::fs;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

mod common;

use ampere_io_real::embedded_pg::EmbeddedPostgres;
use common::{free_port, http_get, shared_database, wait_for_health, Ampere, Reply, Scratch};

const DB: &str = "manual_publishing";
const ROLE: &str = "ampere_manual";
const PUBLICATION: &str = "electric_publication_default";

/// The tables `PUBLICATION` publishes, as `schema.table` lines in order.
fn published(cluster: &EmbeddedPostgres) -> String {
    cluster
        .psql(
            DB,
            &format!(
                "SELECT schemaname || '.' || tablename FROM pg_publication_tables \
                 WHERE pubname = '{PUBLICATION}' ORDER BY 1"
            ),
        )
        .expect("read pg_publication_tables")
}

/// `relreplident` of `table`.
fn replica_identity(cluster: &EmbeddedPostgres, table: &str) -> String {
    cluster
        .psql(
            DB,
            &format!("SELECT relreplident FROM pg_class WHERE oid = 'public.{table}'::regclass"),
        )
        .expect("read relreplident")
}

/// Shape directories under the storage dir (the store keeps them in a `shapes` directory).
fn shape_dirs(dir: &Path, depth: u32) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| {
            if e.file_name() == "shapes" {
                fs::read_dir(e.path()).map_or(0, Iterator::count)
            } else if depth > 0 {
                shape_dirs(&e.path(), depth - 1)
            } else {
                0
            }
        })
        .sum()
}

/// `{"message":"<message>"}` as Electric and ampere write it.
fn message_body(message: &str) -> String {
    format!(
        "{{\"message\":\"{}\"}}",
        message.replace('\\', "\\\\").replace('"', "\\\"")
    )
}

fn assert_refused(reply: &Reply, lacks: &str, sql: &str) {
    assert_eq!(reply.status, 503, "{reply:?}");
    let message = format!(
        "Database table \"public\".\"items\" {lacks}, and ELECTRIC_MANUAL_TABLE_PUBLISHING=true \
         keeps ampere from changing that. As the table's owner (or a superuser), run: {sql}"
    );
    assert_eq!(reply.body, message_body(&message));
    assert_eq!(reply.header("retry-after"), Some("10"));
    assert_eq!(reply.header("electric-internal-known-error"), Some("true"));
    assert_eq!(reply.header("electric-handle"), None, "no shape, no handle");
}

/// The tables, the least-privilege role, and ampere logged in as it with manual publishing.
fn start(cluster: &EmbeddedPostgres, scratch: &Scratch, port: u16) -> Ampere {
    cluster
        .psql(
            DB,
            &format!(
                "CREATE TABLE items (id int PRIMARY KEY, title text); \
                 INSERT INTO items VALUES (1, 'one'); \
                 CREATE TABLE other (id int PRIMARY KEY); \
                 CREATE ROLE {ROLE} LOGIN REPLICATION; \
                 GRANT SELECT ON items, other TO {ROLE}; \
                 GRANT CREATE ON DATABASE {DB} TO {ROLE}"
            ),
        )
        .expect("set up tables and the role");
    let storage = scratch.storage();
    let port_text = port.to_string();
    let url = cluster.url(ROLE, DB);
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("ELECTRIC_STORAGE_DIR", storage.to_str().expect("utf-8")),
        ("ELECTRIC_INSECURE", "true"),
        ("ELECTRIC_PORT", port_text.as_str()),
        ("ELECTRIC_MANUAL_TABLE_PUBLISHING", "true"),
    ];
    let mut ampere = Ampere::spawn(scratch, &vars);
    wait_for_health(&mut ampere, port, 200, Duration::from_secs(20));
    ampere
}

/// Reads the shape after `offset` until a row titled `title` arrives (within 15 s).
fn wait_for_title(ampere: &Ampere, port: u16, handle: &str, offset: &str, title: &str) {
    let later = format!("/v1/shape?table=items&handle={handle}&offset={offset}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = http_get(port, &later).expect("catch-up request");
        assert_eq!(reply.status, 200, "{reply:?}");
        if reply.body.contains(&format!(r#""title":"{title}""#)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{title} never arrived: {reply:?}\n{}",
            ampere.output()
        );
        sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_table_the_operator_has_not_published_is_refused_with_the_sql_then_syncs_once_they_run_it() {
    let cluster = shared_database(DB);
    let scratch = Scratch::new("manual");
    let storage = scratch.storage();
    let port = free_port();
    let mut ampere = start(cluster, &scratch, port);
    assert_eq!(
        published(cluster),
        "",
        "ampere created an empty publication"
    );
    let owner = cluster
        .psql(
            DB,
            "SELECT relowner::regrole FROM pg_class WHERE relname = 'items'",
        )
        .expect("read the owner");
    assert_eq!(owner, "postgres", "ampere's role owns no table");

    let shape = "/v1/shape?table=items&offset=-1";
    let both = "is missing from the publication \"electric_publication_default\" and does not \
                have its replica identity set to FULL";
    let add = "ALTER PUBLICATION \"electric_publication_default\" ADD TABLE \"public\".\"items\";";
    let full = "ALTER TABLE \"public\".\"items\" REPLICA IDENTITY FULL;";
    let reply = http_get(port, shape).expect("shape request");
    assert_refused(&reply, both, &format!("{add} {full}"));
    assert_eq!(shape_dirs(&storage, 3), 0, "no shape storage");

    // The operator runs the first statement: only the second is left to name.
    cluster.psql(DB, add).expect("operator adds the table");
    let reply = http_get(port, shape).expect("shape request");
    assert_refused(
        &reply,
        "does not have its replica identity set to FULL",
        full,
    );

    cluster
        .psql(DB, full)
        .expect("operator sets the replica identity");
    let reply = http_get(port, shape).expect("shape request");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.contains(r#""title":"one""#), "{}", reply.body);
    let handle = reply.header("electric-handle").expect("a handle");
    let offset = reply.header("electric-offset").expect("an offset");
    assert_eq!(shape_dirs(&storage, 3), 1, "one shape");
    cluster
        .psql(DB, "INSERT INTO items VALUES (2, 'two')")
        .expect("insert");
    wait_for_title(&ampere, port, handle, offset, "two");

    // Another table ampere may not touch: refused too, and left exactly as it was.
    let reply = http_get(port, "/v1/shape?table=other&offset=-1").expect("shape request");
    assert_eq!(reply.status, 503, "{reply:?}");
    let add_other =
        r#"ALTER PUBLICATION \"electric_publication_default\" ADD TABLE \"public\".\"other\";"#;
    assert!(reply.body.contains(add_other), "{}", reply.body);
    assert_eq!(
        published(cluster),
        "public.items",
        "only what the operator added"
    );
    assert_eq!(replica_identity(cluster, "other"), "d");
    assert_eq!(shape_dirs(&storage, 3), 1);

    ampere.terminate();
    let status = ampere.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "SIGTERM: {status}:\n{}", ampere.output());
}

#[test]
fn a_publication_the_operator_created_and_owns_serves_shapes_with_one_warning_about_handle_stamps()
{
    const DB: &str = "manual_publishing_owned";
    const ROLE: &str = "ampere_least";
    const PUBLICATION: &str = "electric_publication_least";
    let cluster = shared_database(DB);
    // The operator makes everything ready; ampere's role may create nothing in the database.
    cluster
        .psql(
            DB,
            &format!(
                "CREATE TABLE items (id int PRIMARY KEY, title text); \
                 INSERT INTO items VALUES (1, 'one'); \
                 ALTER TABLE items REPLICA IDENTITY FULL; \
                 CREATE PUBLICATION {PUBLICATION} FOR TABLE items; \
                 CREATE ROLE {ROLE} LOGIN REPLICATION; \
                 GRANT SELECT ON items TO {ROLE}; \
                 REVOKE CREATE ON DATABASE {DB} FROM PUBLIC"
            ),
        )
        .expect("set up the table, the publication and the role");
    let scratch = Scratch::new("manual-owned");
    let storage = scratch.storage();
    let port = free_port();
    let port_text = port.to_string();
    let url = cluster.url(ROLE, DB);
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("ELECTRIC_STORAGE_DIR", storage.to_str().expect("utf-8")),
        ("ELECTRIC_INSECURE", "true"),
        ("ELECTRIC_PORT", port_text.as_str()),
        ("ELECTRIC_MANUAL_TABLE_PUBLISHING", "true"),
        ("ELECTRIC_REPLICATION_STREAM_ID", "least"),
    ];
    let mut ampere = Ampere::spawn(&scratch, &vars);
    wait_for_health(&mut ampere, port, 200, Duration::from_secs(20));

    let reply = http_get(port, "/v1/shape?table=items&offset=-1").expect("shape request");
    assert_eq!(reply.status, 200, "{reply:?}\n{}", ampere.output());
    assert!(reply.body.contains(r#""title":"one""#), "{}", reply.body);
    let handle = reply.header("electric-handle").expect("a handle");
    let offset = reply.header("electric-offset").expect("an offset");
    cluster
        .psql(DB, "INSERT INTO items VALUES (2, 'two')")
        .expect("insert");
    wait_for_title(&ampere, port, handle, offset, "two");

    assert_operator_kept_the_publication_and_ampere_said_what_it_skipped(cluster, &ampere.output());
    ampere.terminate();
    let status = ampere.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "SIGTERM: {status}:\n{}", ampere.output());
}

/// After a run on `manual_publishing_owned`: the operator still owns the publication, and
/// ampere's `log` warned once about handle stamps, and (from 18) about generated columns,
/// each naming the SQL that would close the gap.
fn assert_operator_kept_the_publication_and_ampere_said_what_it_skipped(
    cluster: &EmbeddedPostgres,
    log: &str,
) {
    const DB: &str = "manual_publishing_owned";
    const ROLE: &str = "ampere_least";
    const PUBLICATION: &str = "electric_publication_least";
    let owner = cluster
        .psql(
            DB,
            &format!(
                "SELECT pubowner::regrole FROM pg_publication WHERE pubname = '{PUBLICATION}'"
            ),
        )
        .expect("read the publication's owner");
    assert_eq!(owner, "postgres", "ampere took over the publication");
    let warnings = log
        .lines()
        .filter(|l| l.contains("handle stamps are not reserved in Postgres"))
        .count();
    assert_eq!(warnings, 1, "{log}");
    let server_version: u32 = cluster
        .psql(DB, "SHOW server_version_num")
        .expect("read the server version")
        .parse()
        .expect("a number");
    // From 18 the operator's publication should also publish stored generated columns, which
    // ampere may not set in this mode: it says so, with the SQL, and goes on.
    let gencols = format!(
        r#"run: ALTER PUBLICATION "{PUBLICATION}" SET (publish_generated_columns = stored);"#
    );
    assert_eq!(log.contains(&gencols), server_version >= 180_000, "{log}");
    assert!(
        log.contains(&format!(
            r#"ALTER PUBLICATION "{PUBLICATION}" OWNER TO "{ROLE}""#
        )),
        "{log}"
    );
}
