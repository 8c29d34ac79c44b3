//! Shapes on partitioned tables against the real binary: the publication publishes
//! partitions' changes under the partitioned table (`publish_via_partition_root`), so a shape
//! on it follows inserts, updates, deletes and rows moving between partitions (Postgres's
//! delete and insert on the leaves, which arrive as a delete and an insert on the root) — on a
//! publication ampere created, and on one an older ampere created without the option, which
//! it alters (after dropping the slot when that publication already publishes a partitioned
//! table: the shapes built from it are purged once and refetched). Where it may not (`ELECTRIC_MANUAL_TABLE_PUBLISHING`), such a shape is refused
//! naming the SQL instead of silently missing changes; a shape on a partition whose
//! partitioned table joins the publication is rotated, then refused naming the table to ask
//! for; a partition attached later rotates the shape at its first update, and the refetch
//! covers it.
//!
//! Method: this test binary's shared throwaway cluster, a database and a replication stream per
//! test; the real `ampere` as a child process (`common::spawn_active`); each shape read without
//! `live` and its log applied to a map of rows until it equals `SELECT … FROM m`, every wait
//! bounded.

use std::collections::BTreeMap;
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use ampere_io_real::embedded_pg::EmbeddedPostgres;
use common::{
    free_port, handle_of, http_get, shared_database, spawn_active, wait_for_health, Ampere, Reply,
    Scratch,
};

/// `m`, partitioned by region into `m_eu` and `m_us`, three rows.
const DDL: &str = "\
CREATE TABLE m (id int, region text, v text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu');
CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us');
INSERT INTO m VALUES (1, 'eu', 'one'), (2, 'us', 'two'), (3, 'eu', 'three');";

/// Inserts into both partitions, an update in place, an update that moves a row from `m_eu`
/// to `m_us`, a delete; one transaction each.
const WRITES: [&str; 5] = [
    "INSERT INTO m VALUES (4, 'eu', 'four'), (5, 'us', 'five')",
    "UPDATE m SET v = 'uno' WHERE id = 1",
    "UPDATE m SET region = 'us', v = 'tres' WHERE id = 3",
    "DELETE FROM m WHERE id = 2",
    "INSERT INTO m VALUES (6, 'us', 'six')",
];

/// How long a shape may take to converge after the writes.
const CONVERGE_WITHIN: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// A client that applies the log

/// A shape read without `live` from `offset=-1`, its log applied to rows by key.
struct Follower {
    table: String,
    handle: String,
    offset: String,
    /// Row values by key.
    rows: BTreeMap<String, BTreeMap<String, Value>>,
    /// Every operation applied, as `<operation> <key>`.
    operations: Vec<String>,
}

/// What a read answered besides rows.
#[derive(Debug)]
enum Read {
    /// 200: applied.
    Applied,
    /// 409: the shape was rotated.
    MustRefetch,
}

impl Follower {
    /// Requests the shape of `table` and applies its first response.
    fn start(ampere: &Ampere, port: u16, table: &str) -> Self {
        let reply = get(ampere, port, &format!("/v1/shape?table={table}&offset=-1"));
        assert_eq!(reply.status, 200, "{reply:?}\n{}", ampere.output());
        let mut follower = Self {
            table: table.to_owned(),
            handle: handle_of(&reply),
            offset: String::new(),
            rows: BTreeMap::new(),
            operations: Vec::new(),
        };
        follower.apply(&reply);
        follower
    }

    /// One read from the current offset.
    fn read(&mut self, ampere: &Ampere, port: u16) -> Read {
        let path = format!(
            "/v1/shape?table={}&handle={}&offset={}",
            self.table, self.handle, self.offset
        );
        let reply = get(ampere, port, &path);
        match reply.status {
            200 => {
                self.apply(&reply);
                Read::Applied
            }
            409 => Read::MustRefetch,
            _ => panic!("{path}: {reply:?}\n{}", ampere.output()),
        }
    }

    /// Applies a 200's messages and moves the offset on.
    fn apply(&mut self, reply: &Reply) {
        self.offset = reply
            .header("electric-offset")
            .expect("electric-offset")
            .to_owned();
        let messages: Vec<Value> = serde_json::from_str(&reply.body).expect("a JSON array");
        for message in messages {
            let Some(key) = message["key"].as_str() else {
                continue; // a control message
            };
            let operation = message["headers"]["operation"].as_str().expect("operation");
            self.operations.push(format!("{operation} {key}"));
            let value = message["value"].as_object().cloned().unwrap_or_default();
            match operation {
                "insert" => {
                    self.rows
                        .insert(key.to_owned(), value.into_iter().collect());
                }
                "update" => self
                    .rows
                    .get_mut(key)
                    .unwrap_or_else(|| panic!("update of {key}, never inserted"))
                    .extend(value),
                "delete" => {
                    self.rows.remove(key);
                }
                other => panic!("operation {other}"),
            }
        }
    }

    /// The rows as `id|region|v` lines, sorted (as [`table_rows`] prints them).
    fn lines(&self) -> Vec<String> {
        let text = |row: &BTreeMap<String, Value>, column: &str| {
            row.get(column)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let mut lines: Vec<String> = self
            .rows
            .values()
            .map(|row| {
                let columns = ["id", "region", "v"].map(|c| text(row, c));
                columns.join("|")
            })
            .collect();
        lines.sort();
        lines
    }

    /// Reads until the rows are `SELECT … FROM m`'s; fails on a 409 or after
    /// [`CONVERGE_WITHIN`].
    fn converge(&mut self, ampere: &Ampere, port: u16, cluster: &EmbeddedPostgres, db: &str) {
        let expected = table_rows(cluster, db);
        let deadline = Instant::now() + CONVERGE_WITHIN;
        while self.lines() != expected {
            assert!(
                Instant::now() < deadline,
                "the shape never converged: {:?} != {expected:?}; applied {:?}\n{}",
                self.lines(),
                self.operations,
                ampere.output()
            );
            let read = self.read(ampere, port);
            assert!(matches!(read, Read::Applied), "{read:?}");
            sleep(Duration::from_millis(50));
        }
    }

    /// Reads until the shape is rotated (409); fails after `within`.
    fn wait_for_refetch(&mut self, ampere: &Ampere, port: u16, within: Duration) {
        let deadline = Instant::now() + within;
        while !matches!(self.read(ampere, port), Read::MustRefetch) {
            assert!(
                Instant::now() < deadline,
                "{} was never rotated\n{}",
                self.table,
                ampere.output()
            );
            sleep(Duration::from_millis(100));
        }
    }
}

fn get(ampere: &Ampere, port: u16, path: &str) -> Reply {
    http_get(port, path).unwrap_or_else(|e| panic!("{path}: {e}\n{}", ampere.output()))
}

/// `SELECT id, region, v FROM m` as `id|region|v` lines, sorted.
fn table_rows(cluster: &EmbeddedPostgres, db: &str) -> Vec<String> {
    let text = cluster
        .psql(db, "SELECT id || '|' || region || '|' || v FROM m")
        .expect("read m");
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

/// A database holding [`DDL`] (and `setup` after it).
fn database(name: &str, setup: &str) -> &'static EmbeddedPostgres {
    let cluster = shared_database(name);
    cluster
        .psql(name, &format!("{DDL} {setup}"))
        .expect("create m");
    cluster
}

/// `relreplident` of each table of `m`'s partition tree, as `name=code` in name order.
fn replica_identities(cluster: &EmbeddedPostgres, db: &str) -> String {
    let text = cluster
        .psql(
            db,
            "SELECT string_agg(relname || '=' || relreplident::text, ' ' ORDER BY relname) \
             FROM pg_class WHERE oid IN (SELECT relid FROM pg_partition_tree('m'))",
        )
        .expect("read relreplident");
    text.trim().to_owned()
}

/// `pubviaroot` of ampere's publication on `db` (stream id `db`).
fn is_via_root(cluster: &EmbeddedPostgres, db: &str) -> bool {
    let text = cluster
        .psql(
            db,
            &format!(
                "SELECT pubviaroot FROM pg_publication WHERE pubname = 'electric_publication_{db}'"
            ),
        )
        .expect("read pubviaroot");
    text.trim() == "t"
}

/// Runs every statement of [`WRITES`], one transaction each.
fn write(cluster: &EmbeddedPostgres, db: &str) {
    for statement in WRITES {
        cluster.psql(db, statement).expect(statement);
    }
}

fn stop(mut ampere: Ampere) {
    ampere.terminate();
    let status = ampere.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "SIGTERM: {status}:\n{}", ampere.output());
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn a_shape_on_a_partitioned_table_converges_through_inserts_updates_moves_and_deletes() {
    const DB: &str = "partitioned_fresh";
    let cluster = database(DB, "");
    let scratch = Scratch::new("partitioned");
    let port = free_port();
    let ampere = spawn_active(cluster, &scratch, DB, port, &[]);
    assert!(
        is_via_root(cluster, DB),
        "a new publication publishes via root"
    );

    let mut shape = Follower::start(&ampere, port, "m");
    assert_eq!(shape.lines(), table_rows(cluster, DB), "the snapshot");
    assert_eq!(
        replica_identities(cluster, DB),
        "m=f m_eu=f m_us=f",
        "FULL on every partition, not only the parent"
    );
    write(cluster, DB);
    shape.converge(&ampere, port, cluster, DB);
    // The move is Postgres's delete from m_eu and insert into m_us, both under m.
    let moved = [
        r#"delete "public"."m"/"3"/"eu""#,
        r#"insert "public"."m"/"3"/"us""#,
    ];
    for operation in moved {
        assert!(
            shape.operations.iter().any(|o| o == operation),
            "{operation} missing: {:?}",
            shape.operations
        );
    }
    stop(ampere);
}

#[test]
fn a_publication_an_older_ampere_made_without_publish_via_partition_root_is_altered_and_serves() {
    // The upgrade: the publication exists, named as ampere names it, without the option.
    const DB: &str = "partitioned_upgrade";
    let cluster = database(
        DB,
        &format!("CREATE PUBLICATION electric_publication_{DB};"),
    );
    assert!(!is_via_root(cluster, DB));
    let scratch = Scratch::new("partitioned-upgrade");
    let port = free_port();
    let ampere = spawn_active(cluster, &scratch, DB, port, &[]);
    assert!(is_via_root(cluster, DB), "ampere altered its publication");
    assert!(
        ampere
            .stdout()
            .contains("altered the publication: publish_via_partition_root = true"),
        "{}",
        ampere.output()
    );

    let mut shape = Follower::start(&ampere, port, "m");
    write(cluster, DB);
    shape.converge(&ampere, port, cluster, DB);
    stop(ampere);
}

#[test]
fn an_older_publication_that_already_publishes_a_partitioned_table_purges_its_shapes_once() {
    // The upgrade with shapes: an older ampere published m without publish_via_partition_root,
    // so its shape on m missed m's changes, and so would the slot's unconsumed ones. Simulated
    // by turning the option off while ampere is down, and writing meanwhile. On start ampere
    // drops the slot before setting the option: storage is purged, the old handle must
    // refetch, and the new shape converges.
    const DB: &str = "partitioned_upgrade_shapes";
    let cluster = database(DB, "");
    let scratch = Scratch::new("partitioned-upgrade-shapes");
    let port = free_port();
    let ampere = spawn_active(cluster, &scratch, DB, port, &[]);
    let mut old = Follower::start(&ampere, port, "m");
    stop(ampere);
    cluster
        .psql(
            DB,
            &format!(
                "ALTER PUBLICATION electric_publication_{DB} \
                 SET (publish_via_partition_root = false); \
                 INSERT INTO m VALUES (8, 'us', 'eight')"
            ),
        )
        .expect("the older ampere's publication");

    let ampere = spawn_active(cluster, &scratch, DB, port, &[]);
    assert!(is_via_root(cluster, DB));
    assert!(
        ampere
            .stdout()
            .contains("dropping the slot before setting it"),
        "{}",
        ampere.output()
    );
    old.wait_for_refetch(&ampere, port, Duration::from_secs(10));
    let mut shape = Follower::start(&ampere, port, "m");
    assert_ne!(shape.handle, old.handle);
    write(cluster, DB);
    shape.converge(&ampere, port, cluster, DB);
    stop(ampere);
}

#[test]
fn with_manual_publishing_a_partitioned_shape_is_refused_naming_the_sql_until_the_operator_runs_it()
{
    // The operator published m and set FULL everywhere, but with a publication that
    // publishes partitions under their own names, which ampere may not change.
    const DB: &str = "partitioned_manual";
    let publication = format!("electric_publication_{DB}");
    let setup = format!(
        "ALTER TABLE m REPLICA IDENTITY FULL; ALTER TABLE m_eu REPLICA IDENTITY FULL; \
         ALTER TABLE m_us REPLICA IDENTITY FULL; CREATE PUBLICATION {publication} FOR TABLE m;"
    );
    let cluster = database(DB, &setup);
    let scratch = Scratch::new("partitioned-manual");
    let port = free_port();
    let manual = [("ELECTRIC_MANUAL_TABLE_PUBLISHING", "true")];
    let ampere = spawn_active(cluster, &scratch, DB, port, &manual);
    let sql =
        format!(r#"ALTER PUBLICATION "{publication}" SET (publish_via_partition_root = true);"#);
    assert!(
        ampere.stdout().contains(&format!("run: {sql}")),
        "a warning names the SQL at startup:\n{}",
        ampere.output()
    );
    assert!(!is_via_root(cluster, DB), "ampere altered nothing");

    let refused = get(&ampere, port, "/v1/shape?table=m&offset=-1");
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(
        refused.body.contains(&sql.replace('"', "\\\"")),
        "{}",
        refused.body
    );
    assert_eq!(refused.header("electric-handle"), None, "no shape");

    cluster.psql(DB, &sql).expect("the operator runs it");
    let mut shape = Follower::start(&ampere, port, "m");
    write(cluster, DB);
    shape.converge(&ampere, port, cluster, DB);
    stop(ampere);
}

#[test]
fn a_publication_another_role_owns_is_left_alone_and_a_partitioned_shape_is_refused_naming_the_sql()
{
    // ampere publishes tables itself but logs in as a role that owns the tables, not the
    // publication an administrator made without the option: it says so at startup, and a
    // shape on m gets a 403 naming the SQL rather than a shape that misses every change.
    const DB: &str = "partitioned_not_owner";
    const ROLE: &str = "ampere_partitioned";
    let publication = format!("electric_publication_{DB}");
    let setup = format!(
        "CREATE PUBLICATION {publication}; CREATE ROLE {ROLE} LOGIN REPLICATION; \
         ALTER TABLE m OWNER TO {ROLE}; ALTER TABLE m_eu OWNER TO {ROLE}; \
         ALTER TABLE m_us OWNER TO {ROLE};"
    );
    let cluster = database(DB, &setup);
    let scratch = Scratch::new("partitioned-not-owner");
    let storage = scratch.storage();
    let port = free_port();
    let (port_text, url) = (port.to_string(), cluster.url(ROLE, DB));
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("ELECTRIC_REPLICATION_STREAM_ID", DB),
        ("ELECTRIC_STORAGE_DIR", storage.to_str().expect("utf-8")),
        ("ELECTRIC_INSECURE", "true"),
        ("ELECTRIC_PORT", port_text.as_str()),
    ];
    let mut ampere = Ampere::spawn(&scratch, &vars);
    wait_for_health(&mut ampere, port, 200, Duration::from_secs(30));
    let sql =
        format!(r#"ALTER PUBLICATION "{publication}" SET (publish_via_partition_root = true);"#);
    assert!(
        ampere.stdout().contains(&format!("run: {sql}")),
        "a warning names the SQL at startup:\n{}",
        ampere.output()
    );
    assert!(!is_via_root(cluster, DB));

    let refused = get(&ampere, port, "/v1/shape?table=m&offset=-1");
    assert_eq!(refused.status, 403, "{refused:?}");
    assert!(
        refused.body.contains(&sql.replace('"', "\\\"")),
        "{}",
        refused.body
    );
    stop(ampere);
}

#[test]
fn a_shape_on_a_partition_is_rotated_when_its_partitioned_table_joins_then_refused_naming_it() {
    const DB: &str = "partitioned_leaf";
    let cluster = database(DB, "");
    let scratch = Scratch::new("partitioned-leaf");
    let port = free_port();
    let ampere = spawn_active(cluster, &scratch, DB, port, &[]);
    let mut leaf = Follower::start(&ampere, port, "m_eu");
    assert_eq!(leaf.rows.len(), 2, "{:?}", leaf.rows);

    let _parent = Follower::start(&ampere, port, "m");
    // The relation check runs every 5 s.
    leaf.wait_for_refetch(&ampere, port, Duration::from_secs(15));
    let refused = get(&ampere, port, "/v1/shape?table=m_eu&offset=-1");
    assert_eq!(refused.status, 400, "{refused:?}");
    assert!(
        refused
            .body
            .contains(r#"is a partition of \"public\".\"m\", which is in the publication"#),
        "{}",
        refused.body
    );
    stop(ampere);
}

#[test]
fn a_partition_attached_later_rotates_the_shape_at_its_first_update_and_the_refetch_covers_it() {
    // A partition attached after the snapshot has the replica identity it came with (the
    // default: the key), so its first update arrives without the old row: the shape on m is
    // rotated (SL-7), and its re-request sets FULL on the new partition too.
    const DB: &str = "partitioned_attached";
    let cluster = database(DB, "");
    let scratch = Scratch::new("partitioned-attached");
    let port = free_port();
    let ampere = spawn_active(cluster, &scratch, DB, port, &[]);
    let mut shape = Follower::start(&ampere, port, "m");
    cluster
        .psql(
            DB,
            "CREATE TABLE m_asia PARTITION OF m FOR VALUES IN ('asia'); \
             INSERT INTO m VALUES (7, 'asia', 'seven')",
        )
        .expect("attach a partition");
    shape.converge(&ampere, port, cluster, DB);
    cluster
        .psql(DB, "UPDATE m SET v = 'sieben' WHERE id = 7")
        .expect("update in the new partition");
    shape.wait_for_refetch(&ampere, port, Duration::from_secs(10));

    let mut again = Follower::start(&ampere, port, "m");
    assert_ne!(again.handle, shape.handle, "a new shape");
    assert_eq!(
        replica_identities(cluster, DB),
        "m=f m_asia=f m_eu=f m_us=f"
    );
    write(cluster, DB);
    cluster
        .psql(DB, "UPDATE m SET v = 'seven' WHERE id = 7")
        .expect("update in the new partition");
    again.converge(&ampere, port, cluster, DB);
    stop(ampere);
}
