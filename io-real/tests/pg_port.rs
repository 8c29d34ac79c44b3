//! `RealPg` against a real throwaway PostgreSQL: catalog lookups, snapshots (values, chunks,
//! in-progress transactions, publication membership), replication setup (publication, slot,
//! temporary slots) and `ampere cleanup`. The advisory lock and its breaker: `tests/lock.rs`.
//!
//! Method: one shared cluster for the test binary with a database per test
//! (`embedded_pg::shared_for_tests`), plus a dedicated `wal_level=replica` cluster for the
//! fatal-configuration test. Snapshot chunks go to an in-memory writer.

// Helpers outside `#[test]` fns panic on failure too: this whole file is test code.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio_postgres::{Client, NoTls};

use ampere_core::ports::{
    DisconnectKind, PgError, PgPort, RefusalKind, ReplicationMessage, ReplicationSession,
    ReplicationStream, ReplicationTarget, SlotPersistence, SlotStarted, SnapshotError,
    SnapshotRequest, SnapshotWriter, StandbyStatus, SystemIdentity,
};
use ampere_core::shape::{
    HandleStamp, RelationName, Replica, ServerVersion, ShapeDefinition, ShapeHandle, TableSchema,
};
use ampere_core::snapshot::FullXid;
use ampere_core::snapshot_steps::TablePublishing;
use ampere_core::where_clause::tz::Zone;
use ampere_core::Lsn;
use ampere_io_real::embedded_pg::{shared_for_tests, EmbeddedOptions, EmbeddedPostgres};
use ampere_io_real::pg::{CleanupReport, PgOptions, RealPg, RealReplicationStream};

const PUBLICATION: &str = "electric_publication_test";

/// A fresh database on the shared cluster: its superuser URL.
fn database(name: &str) -> String {
    let cluster = shared_for_tests().expect("shared test cluster starts");
    cluster.create_database(name).expect("CREATE DATABASE")
}

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

fn relation(table: &str) -> RelationName {
    RelationName {
        schema: "public".into(),
        table: table.into(),
    }
}

async fn schema_of(pg: &RealPg, table: &str) -> TableSchema {
    pg.table_schema(relation(table))
        .await
        .expect("catalog lookup")
        .expect("table exists")
        .schema
}

fn request(schema: TableSchema, columns: Option<&[&str]>, threshold: u64) -> SnapshotRequest {
    SnapshotRequest {
        handle: ShapeHandle::from_string("1-1".into()),
        definition: ShapeDefinition {
            relation: schema.relation.clone(),
            columns: columns.map(|c| c.iter().map(|s| (*s).to_owned()).collect()),
            replica: Replica::Default,
            where_clause: None,
            log: ampere_core::shape::LogMode::Full,
        },
        schema,
        publication: PUBLICATION.into(),
        chunk_bytes_threshold: threshold,
    }
}

/// Collects snapshot chunks in memory.
#[derive(Clone, Default)]
struct MemWriter(Arc<Mutex<Written>>);

#[derive(Default, Debug)]
struct Written {
    chunks: Vec<(u64, String)>,
    finished: bool,
}

impl MemWriter {
    fn chunks(&self) -> Vec<(u64, String)> {
        self.0.lock().unwrap().chunks.clone()
    }

    fn is_finished(&self) -> bool {
        self.0.lock().unwrap().finished
    }

    /// Every entry of every chunk, parsed, in order.
    fn entries(&self) -> Vec<Value> {
        self.chunks()
            .iter()
            .flat_map(|(_, body)| parse_chunk(body))
            .collect()
    }

    /// Row entries by key (snapshot-end excluded).
    fn rows(&self) -> BTreeMap<String, Value> {
        self.entries()
            .into_iter()
            .filter(|e| e.get("key").is_some())
            .map(|e| (e["key"].as_str().unwrap().to_owned(), e))
            .collect()
    }
}

impl SnapshotWriter for MemWriter {
    type Error = Infallible;

    async fn write_chunk(&mut self, index: u64, body: String) -> Result<(), Infallible> {
        self.0.lock().unwrap().chunks.push((index, body));
        Ok(())
    }

    async fn finish(self) -> Result<(), Infallible> {
        self.0.lock().unwrap().finished = true;
        Ok(())
    }
}

fn parse_chunk(body: &str) -> Vec<Value> {
    serde_json::from_str(&format!("[{body}]")).expect("chunk is comma-joined JSON")
}

fn is_snapshot_end(entry: &Value) -> bool {
    entry["headers"]["control"] == "snapshot-end"
}

const TYPES_DDL: &str = "
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE TABLE items (
    k2 int2, k8 int8, i4 int4, f4 float4, f8 float8, num numeric(10,2), flag bool, body text,
    name varchar(20), code bpchar(3), uid uuid, doc json, docb jsonb, day date,
    at timestamp(3), atz timestamptz, raw bytea, ints int4[], grid text[][], feel mood,
    bare _int4, span interval minute to second(3),
    PRIMARY KEY (k8, k2)
);
INSERT INTO items VALUES
    (1, 10, -7, 1.1, 0.1, 12.5, true, E'a\"b\\\\c\\nd é', 'x/y', 'ab', 
     'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"a\":  1}', '{\"b\": [1, 2]}', '2024-02-29',
     '2024-01-02 03:04:05.678', '2024-01-02 03:04:05+02', '\\x0102ff', '{1,2,3}',
     '{{a,b},{\"c d\",e}}', 'happy', '{4}', '1 minute 2.5 seconds'),
    (2, 20, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
     NULL, NULL, NULL, NULL, NULL, NULL);
CREATE VIEW items_view AS SELECT * FROM items;
CREATE TABLE parted (id int PRIMARY KEY) PARTITION BY RANGE (id);
CREATE TABLE with_generated (id int PRIMARY KEY, twice int GENERATED ALWAYS AS (id * 2) STORED);
";

async fn types_db(name: &str) -> (RealPg, Client) {
    let url = database(name);
    let client = connect(&url).await;
    client.batch_execute(TYPES_DDL).await.expect("DDL");
    client
        .batch_execute(&format!("CREATE PUBLICATION {PUBLICATION}"))
        .await
        .expect("publication");
    (RealPg::from_url(&url).expect("valid url"), client)
}

#[tokio::test]
async fn catalog_reports_types_dims_keys_and_modifiers() {
    let (pg, _client) = types_db("catalog_types").await;
    let schema = schema_of(&pg, "items").await;
    let render = |name: &str| {
        let c = &schema.columns[schema.column_index(name).expect(name)];
        let mods: Vec<String> = c
            .modifiers
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!(
            "{} dims={} pk={:?} nn={} [{}]",
            c.typname,
            c.dims,
            c.pk_index,
            c.not_null,
            mods.join(",")
        )
    };
    let expected = [
        ("k2", "int2 dims=0 pk=Some(1) nn=true []"),
        ("k8", "int8 dims=0 pk=Some(0) nn=true []"),
        ("i4", "int4 dims=0 pk=None nn=false []"),
        ("f4", "float4 dims=0 pk=None nn=false []"),
        ("f8", "float8 dims=0 pk=None nn=false []"),
        (
            "num",
            "numeric dims=0 pk=None nn=false [precision=10,scale=2]",
        ),
        ("flag", "bool dims=0 pk=None nn=false []"),
        ("body", "text dims=0 pk=None nn=false []"),
        ("name", "varchar dims=0 pk=None nn=false [max_length=20]"),
        ("code", "bpchar dims=0 pk=None nn=false [length=3]"),
        ("uid", "uuid dims=0 pk=None nn=false []"),
        ("doc", "json dims=0 pk=None nn=false []"),
        ("docb", "jsonb dims=0 pk=None nn=false []"),
        ("day", "date dims=0 pk=None nn=false []"),
        ("at", "timestamp dims=0 pk=None nn=false [precision=3]"),
        ("atz", "timestamptz dims=0 pk=None nn=false []"),
        ("raw", "bytea dims=0 pk=None nn=false []"),
        ("ints", "int4 dims=1 pk=None nn=false []"),
        ("grid", "text dims=2 pk=None nn=false []"),
        ("feel", "mood dims=0 pk=None nn=false []"),
        ("bare", "_int4 dims=0 pk=None nn=false []"),
        (
            "span",
            "interval dims=0 pk=None nn=false [fields=\"MINUTE TO SECOND\",precision=3]",
        ),
    ];
    let names: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
    let expected_names: Vec<&str> = expected.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, expected_names, "columns in attnum order");
    for (name, want) in expected {
        assert_eq!(render(name), want, "column {name}");
    }
    assert_eq!(schema.relation, relation("items"));
    assert_eq!(schema.key_columns(), vec![1, 0]);
    let int4_oid = schema.columns[2].type_oid;
    assert_eq!(int4_oid, 23);
}

#[tokio::test]
async fn catalog_finds_tables_only_and_names_generated_columns() {
    let (pg, client) = types_db("catalog_kinds").await;
    assert_eq!(pg.table_schema(relation("missing")).await.unwrap(), None);
    assert_eq!(
        pg.table_schema(relation("items_view")).await.unwrap(),
        None,
        "views are not tables"
    );
    assert_eq!(
        pg.table_schema(relation("Items")).await.unwrap(),
        None,
        "names are exact"
    );
    let parted = schema_of(&pg, "parted").await;
    assert_eq!(
        parted.columns[0].pk_index,
        Some(0),
        "partitioned tables count"
    );
    let generated = pg
        .catalog_table(&relation("with_generated"))
        .await
        .unwrap()
        .unwrap();
    if generated.schema.server_version >= ServerVersion::PG_18 {
        assert!(generated.generated.is_empty());
        assert_eq!(
            generated.schema.columns.len(),
            2,
            "from 18 pgoutput sends stored generated columns: they are in the schema"
        );
    } else {
        assert_eq!(generated.generated, vec!["twice".to_owned()]);
        assert_eq!(
            generated.schema.columns.len(),
            1,
            "before 18 generated columns are not in the schema"
        );
    }
    let items = pg.catalog_table(&relation("items")).await.unwrap().unwrap();
    assert!(items.generated.is_empty());
    // dropped columns disappear; the others keep their order
    client
        .batch_execute("DROP VIEW items_view; ALTER TABLE items DROP COLUMN f4")
        .await
        .unwrap();
    let after = schema_of(&pg, "items").await;
    assert_eq!(after.columns.len(), 21);
    assert_eq!(after.columns[3].name, "f8");
}

#[tokio::test]
async fn snapshot_values_are_postgres_text_output() {
    let (pg, client) = types_db("snapshot_values").await;
    let schema = schema_of(&pg, "items").await;
    let writer = MemWriter::default();
    let snapshot = pg
        .take_snapshot(request(schema.clone(), None, 10 << 20), writer.clone())
        .await;
    let snapshot = snapshot.expect("snapshot");
    assert!(writer.is_finished());
    let rows = writer.rows();
    assert_eq!(rows.len(), 2);

    // What Postgres itself prints, in a session with the same display settings.
    client
        .batch_execute(
            "SET DateStyle = 'ISO, DMY'; SET TimeZone = 'UTC'; SET extra_float_digits = 1; \
             SET bytea_output = 'hex'; SET IntervalStyle = 'iso_8601'",
        )
        .await
        .unwrap();
    for column in &schema.columns {
        let sql = format!(
            "SELECT k8::text, k2::text, \"{0}\"::text FROM items",
            column.name
        );
        for row in client.query(&sql, &[]).await.unwrap() {
            let (k8, k2): (String, String) = (row.get(0), row.get(1));
            let key = format!("\"public\".\"items\"/\"{k8}\"/\"{k2}\"");
            let entry = &rows[&key];
            let got = &entry["value"][&column.name];
            let want: Option<String> = row.get(2);
            match (column.name.as_str(), want) {
                // bpchar keeps its padding, which ::text strips
                ("code", Some(w)) => assert_eq!(got, &Value::from(format!("{w:<3}")), "code"),
                (_, Some(w)) => assert_eq!(got, &Value::from(w), "column {}", column.name),
                (_, None) => assert_eq!(got, &Value::Null, "column {}", column.name),
            }
        }
    }
    let first = &rows["\"public\".\"items\"/\"10\"/\"1\""];
    assert_eq!(first["value"]["code"], "ab ");
    assert_eq!(first["value"]["atz"], "2024-01-02 01:04:05+00");
    assert_eq!(first["value"]["raw"], "\\x0102ff");
    assert_eq!(first["value"]["span"], "PT1M2.5S");
    assert_eq!(first["value"]["f4"], "1.1");
    assert_eq!(first["value"]["flag"], "true");
    assert_eq!(first["value"]["body"], "a\"b\\c\nd é");
    assert_eq!(
        first["headers"],
        serde_json::json!({"operation":"insert","relation":["public","items"]})
    );

    let entries = writer.entries();
    let end = entries.last().unwrap();
    assert!(is_snapshot_end(end), "{end}");
    assert_eq!(end["headers"]["xmin"], snapshot.xmin.0.to_string());
    assert_eq!(end["headers"]["xmax"], snapshot.xmax.0.to_string());
}

#[tokio::test]
async fn snapshot_selects_columns_and_keeps_key_columns_out_of_values() {
    let (pg, _client) = types_db("snapshot_columns").await;
    let schema = schema_of(&pg, "items").await;
    let writer = MemWriter::default();
    pg.take_snapshot(
        request(schema, Some(&["body", "i4"]), 10 << 20),
        writer.clone(),
    )
    .await
    .expect("snapshot");
    let rows = writer.rows();
    let first = &rows["\"public\".\"items\"/\"10\"/\"1\""];
    assert_eq!(
        first["value"],
        serde_json::json!({"body": "a\"b\\c\nd é", "i4": "-7"})
    );
}

#[tokio::test]
async fn snapshot_chunks_by_bytes_and_ends_with_snapshot_end() {
    let url = database("snapshot_chunks");
    let client = connect(&url).await;
    client
        .batch_execute(&format!(
            "CREATE TABLE t (id int PRIMARY KEY, body text); \
             INSERT INTO t SELECT g, repeat('x', g) FROM generate_series(1, 40) g; \
             CREATE TABLE empty (id int PRIMARY KEY); \
             CREATE PUBLICATION {PUBLICATION}"
        ))
        .await
        .unwrap();
    let pg = RealPg::from_url(&url).unwrap();
    let threshold = 200;
    let writer = MemWriter::default();
    pg.take_snapshot(
        request(schema_of(&pg, "t").await, None, threshold),
        writer.clone(),
    )
    .await
    .expect("snapshot");
    let chunks = writer.chunks();
    assert!(chunks.len() > 3, "{} chunks", chunks.len());
    let indices: Vec<u64> = chunks.iter().map(|(i, _)| *i).collect();
    assert_eq!(
        indices,
        (0..chunks.len() as u64).collect::<Vec<_>>(),
        "chunks 0..N in order"
    );
    for (n, (_, body)) in chunks.iter().enumerate() {
        let entries = parse_chunk(body);
        let is_last = n + 1 == chunks.len();
        let ends = entries.iter().filter(|e| is_snapshot_end(e)).count();
        assert_eq!(
            ends,
            usize::from(is_last),
            "snapshot-end only in the last chunk"
        );
        if !is_last {
            // the byte rule: reached by the last entry, not before
            let sizes: Vec<usize> = entries
                .iter()
                .map(|e| serde_json::to_string(e).unwrap().len() + 1)
                .collect();
            let total: usize = sizes.iter().sum();
            assert!(total >= threshold as usize, "chunk {n}: {total} bytes");
            assert!(
                total - sizes.last().unwrap() < threshold as usize,
                "chunk {n} too long"
            );
        }
    }
    assert!(is_snapshot_end(writer.entries().last().unwrap()));
    assert_eq!(writer.rows().len(), 40);

    let empty = MemWriter::default();
    pg.take_snapshot(
        request(schema_of(&pg, "empty").await, None, threshold),
        empty.clone(),
    )
    .await
    .expect("snapshot of an empty table");
    let chunks = empty.chunks();
    assert_eq!(chunks.len(), 1);
    let entries = parse_chunk(&chunks[0].1);
    assert_eq!(entries.len(), 1);
    assert!(is_snapshot_end(&entries[0]));
}

#[tokio::test]
async fn snapshot_adds_the_table_to_the_publication_with_replica_identity_full() {
    let url = database("snapshot_membership");
    let client = connect(&url).await;
    client
        .batch_execute(&format!(
            "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION {PUBLICATION}"
        ))
        .await
        .unwrap();
    let pg = RealPg::from_url(&url).unwrap();
    let membership = "SELECT c.relreplident::text, \
        EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND tablename = 't') \
        FROM pg_class c WHERE c.relname = 't'";
    let before = client.query_one(membership, &[&PUBLICATION]).await.unwrap();
    assert_eq!(
        (before.get::<_, String>(0), before.get::<_, bool>(1)),
        ("d".into(), false)
    );
    for _ in 0..2 {
        // the second time the table is already a member with FULL: nothing to change
        let schema = schema_of(&pg, "t").await;
        pg.take_snapshot(request(schema, None, 1000), MemWriter::default())
            .await
            .expect("snapshot");
        let after = client.query_one(membership, &[&PUBLICATION]).await.unwrap();
        assert_eq!(
            (after.get::<_, String>(0), after.get::<_, bool>(1)),
            ("f".into(), true)
        );
    }
}

#[tokio::test]
async fn snapshot_waits_for_transactions_in_progress() {
    // Goal: a transaction open when the snapshot starts is waited for (SN-2), so its row is
    // in the snapshot. Method: insert without committing, start the snapshot, check it waits,
    // commit, check the row arrived.
    let url = database("snapshot_xip");
    let setup = connect(&url).await;
    setup
        .batch_execute(&format!(
            "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION {PUBLICATION}; \
             ALTER PUBLICATION {PUBLICATION} ADD TABLE t; ALTER TABLE t REPLICA IDENTITY FULL"
        ))
        .await
        .unwrap();
    let pg = RealPg::from_url(&url).unwrap();
    let schema = schema_of(&pg, "t").await;
    let writer_conn = connect(&url).await;
    writer_conn
        .batch_execute("BEGIN; INSERT INTO t VALUES (7)")
        .await
        .unwrap();
    let row = writer_conn
        .query_one("SELECT pg_current_xact_id()::text", &[])
        .await
        .unwrap();
    let writer_xid = FullXid(row.get::<_, String>(0).parse().unwrap());

    let writer = MemWriter::default();
    let snapshot = tokio::spawn(pg.take_snapshot(request(schema, None, 1000), writer.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    if snapshot.is_finished() {
        panic!(
            "the snapshot must wait for the open transaction: {:?}",
            snapshot.await
        );
    }
    assert!(writer.chunks().is_empty());

    writer_conn.batch_execute("COMMIT").await.unwrap();
    let taken = tokio::time::timeout(Duration::from_secs(10), snapshot)
        .await
        .expect("snapshot ends after the commit")
        .unwrap()
        .expect("snapshot");
    assert!(
        writer.rows().contains_key("\"public\".\"t\"/\"7\""),
        "{:?}",
        writer.chunks()
    );
    assert!(taken.xmax > writer_xid, "{taken:?}");
    assert!(!taken.xip.contains(&writer_xid), "{taken:?}");
}

#[tokio::test]
async fn snapshot_of_a_changed_table_reports_schema_changed() {
    let url = database("snapshot_schema_changed");
    let client = connect(&url).await;
    client
        .batch_execute(&format!(
            "CREATE TABLE t (id int PRIMARY KEY, gone text); CREATE PUBLICATION {PUBLICATION}"
        ))
        .await
        .unwrap();
    let pg = RealPg::from_url(&url).unwrap();
    let schema = schema_of(&pg, "t").await;
    client
        .batch_execute("ALTER TABLE t DROP COLUMN gone")
        .await
        .unwrap();
    let result = pg
        .take_snapshot(request(schema.clone(), None, 1000), MemWriter::default())
        .await;
    assert!(
        matches!(result, Err(SnapshotError::SchemaChanged { .. })),
        "{result:?}"
    );
    client.batch_execute("DROP TABLE t").await.unwrap();
    let result = pg
        .take_snapshot(request(schema, None, 1000), MemWriter::default())
        .await;
    assert!(
        matches!(result, Err(SnapshotError::SchemaChanged { .. })),
        "{result:?}"
    );
}

/// A column added after the shape's catalog read (a standby holding the creation, SN-2
/// waiting) is visible to the snapshot: its rows would lack it and, with the `Relation`
/// message already decoded, nothing would rotate the shape. The snapshot fails instead.
#[tokio::test]
async fn snapshot_of_a_table_with_a_column_added_since_the_catalog_read_reports_schema_changed() {
    let url = database("snapshot_column_added");
    let client = connect(&url).await;
    client
        .batch_execute(&format!(
            "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a'); \
             CREATE PUBLICATION {PUBLICATION}"
        ))
        .await
        .unwrap();
    let pg = RealPg::from_url(&url).unwrap();
    let schema = schema_of(&pg, "t").await;
    let unchanged = pg
        .take_snapshot(request(schema.clone(), None, 1000), MemWriter::default())
        .await;
    assert!(unchanged.is_ok(), "{unchanged:?}");
    client
        .batch_execute("ALTER TABLE t ADD COLUMN extra text; UPDATE t SET extra = 'x'")
        .await
        .unwrap();
    for columns in [None, Some(&["id", "v"][..])] {
        let result = pg
            .take_snapshot(request(schema.clone(), columns, 1000), MemWriter::default())
            .await;
        assert!(
            matches!(result, Err(SnapshotError::SchemaChanged { .. })),
            "{columns:?}: {result:?}"
        );
    }
}

fn target(id: &str) -> ReplicationTarget {
    ReplicationTarget {
        slot: format!("electric_slot_{id}"),
        publication: format!("electric_publication_{id}"),
        slot_persistence: SlotPersistence::Persistent,
    }
}

/// What the driver does: connect, take the lock (free in these tests), start streaming.
async fn start(
    pg: &RealPg,
    target: &ReplicationTarget,
) -> (RealReplicationStream, SlotStarted, SystemIdentity) {
    let (session, identity) = pg.connect_replication().await.expect("connect replication");
    let (session, locked) = session.try_advisory_lock(target.slot.clone()).await;
    assert!(locked.expect("pg_try_advisory_lock"), "the lock is free");
    let (stream, started) = session
        .start_streaming(target.clone())
        .await
        .expect("start streaming");
    (stream, started, identity)
}

/// Polls `pg_replication_slots` for the slot until `done` holds for its row (`None`: no slot).
async fn wait_slot(client: &Client, slot: &str, what: &str, done: impl Fn(Option<bool>) -> bool) {
    for _ in 0..200 {
        let rows = client
            .query(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap();
        if done(rows.first().map(|r| r.get::<_, bool>(0))) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("slot {slot} never became {what}");
}

/// Waits until no walsender uses the slot (the previous stream's backend has exited).
async fn wait_slot_inactive(client: &Client, slot: &str) {
    wait_slot(client, slot, "inactive", |active| active == Some(false)).await;
}

#[tokio::test]
async fn start_streaming_creates_the_slot_then_resumes_from_it() {
    let url = database("replication_slot");
    let client = connect(&url).await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let pg = RealPg::from_url(&url).unwrap();
    let target = target("slot_reuse");

    let (mut stream, started, identity) = start(&pg, &target).await;
    assert!(started.slot_created);
    assert!(started.confirmed_flush_lsn > Lsn::ZERO);
    assert!(!identity.system_id.is_empty());
    assert_eq!(identity.timeline, 1);
    assert_eq!(stream.backend_pid(), identity.backend_pid);

    // the stream delivers a committed insert on a published table
    let schema = schema_of(&pg, "t").await;
    let mut req = request(schema, None, 1000);
    req.publication.clone_from(&target.publication);
    pg.take_snapshot(req, MemWriter::default())
        .await
        .expect("publish t");
    client
        .batch_execute("INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let data = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.recv().await.expect("recv") {
                ReplicationMessage::XLogData { data, .. } => break data,
                ReplicationMessage::PrimaryKeepalive { .. } => {}
            }
        }
    })
    .await
    .expect("XLogData within 10 s");
    assert_eq!(
        data[0], b'B',
        "first pgoutput message of a transaction is Begin"
    );
    let status = StandbyStatus {
        write: started.confirmed_flush_lsn,
        flush: started.confirmed_flush_lsn,
        apply: started.confirmed_flush_lsn,
        reply_requested: true,
    };
    stream.send_status(status).await.expect("standby status");
    // A status asking for a reply is answered with a keepalive at once (the core asks after
    // half its replication timeout of silence, so an idle stream is never presumed dead).
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.recv().await.expect("stream open") {
                ReplicationMessage::PrimaryKeepalive { .. } => break,
                ReplicationMessage::XLogData { .. } => {}
            }
        }
    })
    .await
    .expect("a keepalive answers reply_requested within 5 s");
    stream.close().await.expect("close");

    // The second start resumes the existing slot, on the same system.
    wait_slot_inactive(&client, &target.slot).await;
    let (_stream, again, identity_again) = start(&pg, &target).await;
    assert!(!again.slot_created);
    assert_eq!(identity_again.system_id, identity.system_id);
    let row = client
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&target.slot],
        )
        .await
        .unwrap();
    let confirmed: Lsn = row.get::<_, String>(0).parse().unwrap();
    assert_eq!(again.confirmed_flush_lsn, confirmed);
}

#[tokio::test]
async fn stamp_reservations_only_rise_and_come_back_with_the_slot() {
    // Goal: ID-2: the handle-stamp reservation lives in Postgres (the publication's comment),
    // is raised and never lowered, and slot setup reads it back; an operator's comment
    // reserves nothing.
    // Method: start (no reservation), reserve 5000, then 3000, restart; overwrite the comment.
    let url = database("stamp_reservation");
    let client = connect(&url).await;
    let pg = RealPg::from_url(&url).unwrap();
    let target = target("stamps");
    let (stream, first, _) = start(&pg, &target).await;
    assert_eq!(
        first.stamps_reserved,
        HandleStamp(0),
        "nothing reserved yet"
    );
    pg.reserve_stamps(target.publication.clone(), HandleStamp(5_000))
        .await
        .expect("reserve 5000");
    pg.reserve_stamps(target.publication.clone(), HandleStamp(3_000))
        .await
        .expect("a lower reservation is not an error");
    let comment_sql = "SELECT obj_description(oid, 'pg_publication') FROM pg_publication \
                       WHERE pubname = $1";
    let row = client
        .query_one(comment_sql, &[&target.publication])
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, Option<String>>(0).as_deref(),
        Some("ampere: handle stamps reserved through 5000")
    );
    drop(stream);
    wait_slot_inactive(&client, &target.slot).await;
    let (stream, again, _) = start(&pg, &target).await;
    assert!(!again.slot_created);
    assert_eq!(again.stamps_reserved, HandleStamp(5_000));

    drop(stream);
    wait_slot_inactive(&client, &target.slot).await;
    let operator = format!("COMMENT ON PUBLICATION {} IS 'ours'", target.publication);
    client.batch_execute(&operator).await.unwrap();
    let (_stream, foreign, _) = start(&pg, &target).await;
    assert_eq!(foreign.stamps_reserved, HandleStamp(0));
}

#[tokio::test]
async fn sl1_a_new_publication_recreates_an_existing_slot() {
    // Goal: a publication created now makes the existing slot's history unusable (SL-1).
    // Method: create the slot by hand with no publication, start; then start once more with
    // both in place (resumes), and after dropping the publication (recreates again).
    let url = database("replication_new_publication");
    let client = connect(&url).await;
    let pg = RealPg::from_url(&url).unwrap();
    let target = target("new_pub");
    let row = client
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&target.slot],
        )
        .await
        .unwrap();
    let old_consistent_point: Lsn = row.get::<_, String>(0).parse().unwrap();

    let (stream, first, _) = start(&pg, &target).await;
    assert!(first.slot_created, "the slot is recreated");
    assert!(
        first.confirmed_flush_lsn > old_consistent_point,
        "a new slot starts after CREATE PUBLICATION: {first:?}, old {old_consistent_point}"
    );
    drop(stream);
    wait_slot_inactive(&client, &target.slot).await;
    let (stream, resumed, _) = start(&pg, &target).await;
    assert!(!resumed.slot_created, "publication and slot exist: resume");
    assert_eq!(resumed.confirmed_flush_lsn, first.confirmed_flush_lsn);
    drop(stream);

    wait_slot_inactive(&client, &target.slot).await;
    client
        .batch_execute(&format!("DROP PUBLICATION {}", target.publication))
        .await
        .unwrap();
    let (_stream, second, _) = start(&pg, &target).await;
    assert!(second.slot_created);
}

#[tokio::test]
async fn sl1_an_existing_publication_is_made_to_publish_stored_generated_columns_from_18() {
    // Goal: from PostgreSQL 18 the catalog puts stored generated columns in table schemas, so
    // the publication must publish them, also one made before (by an older ampere or by hand).
    // Method: create the publication without the option, start, read `pubgencols` back.
    let url = database("replication_gencols");
    let client = connect(&url).await;
    let pg = RealPg::from_url(&url).unwrap();
    let target = target("gencols");
    client
        .batch_execute(&format!("CREATE PUBLICATION {}", target.publication))
        .await
        .unwrap();
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await
        .unwrap()
        .get(0);
    let (_stream, _, _) = start(&pg, &target).await;
    if version < 180_000 {
        println!("server_version_num {version}: publications have no publish_generated_columns");
        return;
    }
    let gencols: String = client
        .query_one(
            "SELECT pubgencols::text FROM pg_publication WHERE pubname = $1",
            &[&target.publication],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(gencols, "s", "publish_generated_columns = stored");
}

#[tokio::test]
async fn temporary_slot_vanishes_when_its_stream_is_dropped() {
    // §1.7 / SL-2: `TEMPORARY` slots live exactly as long as their walsender.
    let url = database("replication_temporary");
    let client = connect(&url).await;
    let pg = RealPg::from_url(&url).unwrap();
    let mut target = target("temporary");
    target.slot_persistence = SlotPersistence::Temporary;

    let (stream, started, _) = start(&pg, &target).await;
    assert!(started.slot_created);
    let row = client
        .query_one(
            "SELECT temporary, active FROM pg_replication_slots WHERE slot_name = $1",
            &[&target.slot],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, bool>(0), row.get::<_, bool>(1)), (true, true));
    drop(stream);
    wait_slot(&client, &target.slot, "gone", |active| active.is_none()).await;
}

#[tokio::test]
async fn cleanup_drops_slot_and_publication_terminating_the_walsender() {
    // Goal: `ampere cleanup` leaves neither slot nor publication, even with a stream running,
    // and reports what it found. Method: stream from a persistent slot, clean up, check the
    // catalogs, clean up again (nothing left), then the same with a temporary slot.
    let url = database("replication_cleanup");
    let client = connect(&url).await;
    let pg = RealPg::from_url(&url).unwrap();
    let target = target("cleanup");
    let (stream, _, _) = start(&pg, &target).await;
    let walsender = stream.backend_pid();

    let report = pg
        .drop_slot_and_publication(&target.slot, &target.publication)
        .await
        .expect("cleanup");
    let expected = CleanupReport {
        slot_existed: true,
        terminated_pids: vec![walsender],
        slot_dropped: true,
        publication_dropped: true,
    };
    assert_eq!(report, expected);
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1), \
                    (SELECT count(*) FROM pg_publication WHERE pubname = $2)",
            &[&target.slot, &target.publication],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (0, 0));
    drop(stream);

    let again = pg
        .drop_slot_and_publication(&target.slot, &target.publication)
        .await
        .expect("cleanup of nothing");
    assert_eq!(again, CleanupReport::default());

    // A temporary slot goes with its walsender: found, walsender terminated, nothing to drop
    // (or dropped, if the check ran between the walsender's exit and the slot's removal).
    let mut temporary = target;
    temporary.slot_persistence = SlotPersistence::Temporary;
    let (stream, _, _) = start(&pg, &temporary).await;
    let walsender = stream.backend_pid();
    let report = pg
        .drop_slot_and_publication(&temporary.slot, &temporary.publication)
        .await
        .expect("cleanup");
    assert!(report.slot_existed);
    assert_eq!(report.terminated_pids, vec![walsender]);
    assert!(report.publication_dropped);
    wait_slot(&client, &temporary.slot, "gone", |active| active.is_none()).await;
}

#[tokio::test]
async fn a_slot_of_another_database_is_fatal() {
    let url_a = database("replication_db_a");
    let url_b = database("replication_db_b");
    let target = target("other_db");
    let (_stream, _, _) = start(&RealPg::from_url(&url_a).unwrap(), &target).await;
    // advisory locks are per database: the lock in db_b is free
    let (session, _) = RealPg::from_url(&url_b)
        .unwrap()
        .connect_replication()
        .await
        .unwrap();
    let (session, locked) = session.try_advisory_lock(target.slot.clone()).await;
    assert!(locked.unwrap());
    let err = session.start_streaming(target).await.err().unwrap();
    assert_eq!(err.kind(), DisconnectKind::Fatal, "{err}");
    assert!(err.to_string().contains("replication_db_a"), "{err}");
}

#[tokio::test]
async fn a_role_without_replication_is_fatal_and_names_the_fix() {
    let url = database("replication_role");
    let client = connect(&url).await;
    client
        .batch_execute("CREATE ROLE norepl LOGIN")
        .await
        .unwrap();
    let cluster = shared_for_tests().unwrap();
    let pg = RealPg::from_url(&cluster.url("norepl", "replication_role")).unwrap();
    let err = pg.connect_replication().await.err().unwrap();
    assert_eq!(err.kind(), DisconnectKind::Fatal, "{err}");
    assert!(
        err.to_string()
            .contains("ALTER ROLE norepl WITH REPLICATION"),
        "{err}"
    );
}

#[tokio::test]
async fn wal_level_replica_is_fatal_and_names_the_fix() {
    let cluster = tokio::task::spawn_blocking(|| {
        let mut opts = EmbeddedOptions::for_tests();
        opts.settings.push(("wal_level".into(), "replica".into()));
        EmbeddedPostgres::start(opts).expect("replica cluster starts")
    })
    .await
    .unwrap();
    let pg = RealPg::from_url(&cluster.admin_url()).unwrap();
    let err = pg.connect_replication().await.err().unwrap();
    assert_eq!(err.kind(), DisconnectKind::Fatal, "{err}");
    let message = err.to_string();
    assert!(message.contains("wal_level = logical"), "{message}");
    assert!(message.contains("restart PostgreSQL"), "{message}");
    drop(pg);
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}

#[tokio::test]
async fn connection_refused_is_transient() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let pg = RealPg::from_url(&format!("postgresql://postgres@127.0.0.1:{port}/postgres")).unwrap();
    let err = pg.table_schema(relation("t")).await.err().unwrap();
    assert_eq!(err.kind(), DisconnectKind::Transient, "{err}");
    let err = pg.connect_replication().await.err().unwrap();
    assert_eq!(err.kind(), DisconnectKind::Transient, "{err}");
    let err = pg
        .stale_lock_holders("electric_slot_refused".into(), 0)
        .await;
    assert_eq!(err.err().unwrap().kind(), DisconnectKind::Transient);
}

#[tokio::test]
async fn relation_names_follow_renames_and_omit_dropped_tables() {
    // Goal: the relation check's one query: the current name of each asked table that still
    // exists, by OID, whatever happened to its name; a dropped table has no row, and a new
    // table under an old name is not the asked OID.
    // Method: three tables; one renamed, one dropped and recreated under its name.
    let url = database("relation_names");
    let client = connect(&url).await;
    client
        .batch_execute(
            "CREATE TABLE kept (id int); CREATE TABLE moved (id int); CREATE TABLE gone (id int)",
        )
        .await
        .unwrap();
    let pg = RealPg::from_url(&url).unwrap();
    let oids = [
        schema_of(&pg, "kept").await.oid,
        schema_of(&pg, "moved").await.oid,
        schema_of(&pg, "gone").await.oid,
    ];
    client
        .batch_execute(
            "ALTER TABLE moved RENAME TO moved_away; DROP TABLE gone; CREATE TABLE gone (id int)",
        )
        .await
        .unwrap();
    let mut found = pg
        .relation_names(oids.to_vec(), PUBLICATION.to_owned())
        .await
        .expect("query");
    found.sort_by_key(|(oid, _)| *oid);
    assert_eq!(
        found,
        [
            (oids[0], relation("kept")),
            (oids[1], relation("moved_away"))
        ]
    );
}

#[tokio::test]
async fn snapshot_of_a_table_the_role_does_not_own_is_refused_for_privileges() {
    // Goal: `ALTER PUBLICATION … ADD TABLE` on a table ampere's role does not own can never
    // succeed: a refusal (403 to clients, not retried), not a transient error.
    // Method: a role owning the publication but not the table.
    let url = database("snapshot_not_owner");
    let client = connect(&url).await;
    let role = "ampere_port_not_owner";
    client
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; CREATE TABLE t (id int PRIMARY KEY); \
             GRANT SELECT ON t TO {role}; CREATE PUBLICATION {PUBLICATION}; \
             ALTER PUBLICATION {PUBLICATION} OWNER TO {role}"
        ))
        .await
        .unwrap();
    let cluster = shared_for_tests().expect("shared test cluster starts");
    let pg = RealPg::from_url(&cluster.url(role, "snapshot_not_owner")).unwrap();
    let schema = schema_of(&pg, "t").await;
    let result = pg
        .take_snapshot(request(schema, None, 1000), MemWriter::default())
        .await;
    let Err(SnapshotError::Refused(refusal)) = result else {
        panic!("expected a refusal: {result:?}");
    };
    assert_eq!(refusal.kind, RefusalKind::Privilege);
    assert!(
        refusal
            .message
            .starts_with("Unable to create initial snapshot: must be owner of table t."),
        "{}",
        refusal.message
    );
}

#[tokio::test]
async fn snapshot_of_a_system_catalog_is_refused_as_unsupported() {
    // Goal: Postgres never publishes a system catalog: a refusal (400), not a transient error.
    // Method: a superuser snapshots pg_catalog.pg_am.
    let url = database("snapshot_system_catalog");
    let client = connect(&url).await;
    client
        .batch_execute(&format!("CREATE PUBLICATION {PUBLICATION}"))
        .await
        .unwrap();
    let pg = RealPg::from_url(&url).unwrap();
    let pg_am = RelationName {
        schema: "pg_catalog".into(),
        table: "pg_am".into(),
    };
    let schema = pg
        .table_schema(pg_am)
        .await
        .expect("catalog lookup")
        .expect("pg_am is an ordinary table")
        .schema;
    let result = pg
        .take_snapshot(request(schema, None, 1000), MemWriter::default())
        .await;
    let Err(SnapshotError::Refused(refusal)) = result else {
        panic!("expected a refusal: {result:?}");
    };
    assert_eq!(refusal.kind, RefusalKind::Unsupported);
    // PG 15+: "cannot add relation … to publication … This operation is not supported for
    // system tables."; PG 14: "\"pg_am\" is a system table".
    assert!(
        refusal.message.to_lowercase().contains("system table"),
        "{}",
        refusal.message
    );
}

#[tokio::test]
async fn the_servers_time_zone_data_is_read_at_every_probe_and_compared_with_amperes() {
    // Goal: the port reads the server's wall clock at each probed instant, in order, whatever
    // the session's TimeZone; zones whose data the server shares with ampere agree; a zone
    // the server does not know is `None`, not an error.
    // Method: UTC and Asia/Tokyo (unchanged in tzdb for decades, and the same with Debian's
    // backzone history) through the port; an invented zone name.
    let url = database("time_zones");
    let client = connect(&url).await;
    client
        .batch_execute("ALTER DATABASE time_zones SET TimeZone = 'America/New_York'")
        .await
        .expect("session time zone");
    let pg = RealPg::from_url(&url).unwrap();
    for name in ["UTC", "Asia/Tokyo"] {
        let zone = Zone::lookup(name).expect("bundled");
        let probes = zone.probe_instants();
        let server = pg
            .time_zone_wall_clocks(name.to_owned(), probes.clone())
            .await
            .expect("query")
            .expect("the server knows the zone");
        assert_eq!(server.len(), probes.len());
        assert_eq!(zone.check_server(&probes, Some(&server)), Ok(()), "{name}");
    }
    let unknown = pg
        .time_zone_wall_clocks("Mars/Olympus_Mons".to_owned(), vec![0, 1])
        .await
        .expect("not an error");
    assert_eq!(unknown, None);
}

// ---------------------------------------------------------------------------------------------
// Partitioned tables

/// `m`, partitioned by region: `m_eu`, and `m_us`, itself partitioned by id into `m_us_low` and
/// `m_us_high`; one row in each leaf.
const PARTITIONED_DDL: &str = "
CREATE TABLE m (id int, region text, v text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu');
CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us') PARTITION BY RANGE (id);
CREATE TABLE m_us_low PARTITION OF m_us FOR VALUES FROM (MINVALUE) TO (100);
CREATE TABLE m_us_high PARTITION OF m_us FOR VALUES FROM (100) TO (MAXVALUE);
INSERT INTO m VALUES (1, 'eu', 'a'), (2, 'us', 'b'), (200, 'us', 'c');
";

/// A fresh database holding [`PARTITIONED_DDL`], and a publication `PUBLICATION` created with
/// `options` (an empty string for none).
async fn partitioned_db(name: &str, options: &str) -> (RealPg, Client) {
    let url = database(name);
    let client = connect(&url).await;
    client.batch_execute(PARTITIONED_DDL).await.expect("DDL");
    client
        .batch_execute(&format!("CREATE PUBLICATION {PUBLICATION} {options}"))
        .await
        .expect("publication");
    (RealPg::from_url(&url).unwrap(), client)
}

/// `relreplident` of each table named `m%`, as `name=code` in name order.
async fn replica_identities(client: &Client) -> String {
    let rows = client
        .query(
            "SELECT relname::text || '=' || relreplident::text FROM pg_class \
             WHERE relname LIKE 'm%' AND relkind IN ('r', 'p') ORDER BY relname",
            &[],
        )
        .await
        .unwrap();
    let pairs: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    pairs.join(" ")
}

/// The tables `publication` publishes, as `pg_publication_tables` names them.
async fn published_tables(client: &Client, publication: &str) -> Vec<String> {
    client
        .query(
            "SELECT tablename::text FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1",
            &[&publication],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// `pubviaroot` of `publication`.
async fn is_via_root(client: &Client, publication: &str) -> bool {
    client
        .query_one(
            "SELECT pubviaroot FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn snapshot_of_a_partitioned_table_publishes_it_with_replica_identity_full_on_every_partition(
) {
    // Goal: a shape on a partitioned table reads every partition's rows, its table joins the
    // publication (changes then come under it), and every table of its partition tree gets
    // REPLICA IDENTITY FULL: Postgres writes a partition's old rows by the partition's own
    // setting, which ALTER TABLE on the parent does not change.
    // Method: a two-level partition tree, a publication publishing via partition root.
    let (pg, client) = partitioned_db(
        "partitioned_snapshot",
        "WITH (publish_via_partition_root = true)",
    )
    .await;
    let schema = schema_of(&pg, "m").await;
    let writer = MemWriter::default();
    pg.take_snapshot(request(schema, None, 1_000_000), writer.clone())
        .await
        .expect("snapshot");
    let keys: Vec<String> = writer.rows().into_keys().collect();
    assert_eq!(
        keys,
        [
            r#""public"."m"/"1"/"eu""#,
            r#""public"."m"/"2"/"us""#,
            r#""public"."m"/"200"/"us""#
        ]
    );
    assert_eq!(
        replica_identities(&client).await,
        "m=f m_eu=f m_us=f m_us_high=f m_us_low=f"
    );
    assert_eq!(published_tables(&client, PUBLICATION).await, ["m"]);
}

#[tokio::test]
async fn a_partition_is_served_until_its_partitioned_table_joins_the_publication_then_refused() {
    // Goal: with publish_via_partition_root Postgres publishes a partition's changes under
    // the partitioned table once that is published, so a shape on the partition would see
    // none: its snapshot is refused (400, naming the table to ask for), and the relation
    // check leaves the partition out (its shapes rotate). Before that, it is a table as any.
    // Method: snapshot m_eu, check relation_names; snapshot m; again both.
    let (pg, client) = partitioned_db(
        "partition_then_parent",
        "WITH (publish_via_partition_root = true)",
    )
    .await;
    let leaf = schema_of(&pg, "m_eu").await;
    let parent = schema_of(&pg, "m").await;
    let oids = vec![leaf.oid, parent.oid];
    let names = || pg.relation_names(oids.clone(), PUBLICATION.to_owned());
    pg.take_snapshot(request(leaf.clone(), None, 1000), MemWriter::default())
        .await
        .expect("a partition on its own is a table as any");
    assert_eq!(names().await.expect("query").len(), 2);

    pg.take_snapshot(request(parent.clone(), None, 1000), MemWriter::default())
        .await
        .expect("snapshot of the partitioned table");
    let found = names().await.expect("query");
    assert_eq!(
        found,
        [(parent.oid, relation("m"))],
        "m_eu is published as m"
    );
    let result = pg
        .take_snapshot(request(leaf, None, 1000), MemWriter::default())
        .await;
    let Err(SnapshotError::Refused(refusal)) = result else {
        panic!("expected a refusal: {result:?}");
    };
    assert_eq!(refusal.kind, RefusalKind::Unsupported);
    assert!(
        refusal.message.starts_with(
            r#"Database table "public"."m_eu" is a partition of "public"."m", which is in the publication"#
        ),
        "{}",
        refusal.message
    );
    // Another publication does not publish m: there m_eu's changes still come under it.
    let elsewhere = pg
        .relation_names(oids.clone(), "electric_publication_other".to_owned())
        .await
        .expect("query");
    assert_eq!(elsewhere.len(), 2);
    drop(client);
}

#[tokio::test]
async fn snapshot_of_a_partitioned_table_without_publish_via_partition_root_names_the_alter() {
    // Goal: a publication ampere may not alter (its role does not own it) that publishes
    // partitions under their own names: a shape on the partitioned table would see no change,
    // so its snapshot is refused (403, not retried) naming the SQL, and alters nothing.
    // Method: a publication without the option; the snapshot as its owner would take it.
    let (pg, client) = partitioned_db("partitioned_without_via_root", "").await;
    let schema = schema_of(&pg, "m").await;
    let result = pg
        .take_snapshot(request(schema, None, 1000), MemWriter::default())
        .await;
    let Err(SnapshotError::Refused(refusal)) = result else {
        panic!("expected a refusal: {result:?}");
    };
    assert_eq!(refusal.kind, RefusalKind::Privilege);
    assert!(
        refusal.message.ends_with(&format!(
            r#"run: ALTER PUBLICATION "{PUBLICATION}" SET (publish_via_partition_root = true);"#
        )),
        "{}",
        refusal.message
    );
    assert!(published_tables(&client, PUBLICATION).await.is_empty());
    assert_eq!(
        replica_identities(&client).await,
        "m=d m_eu=d m_us=d m_us_high=d m_us_low=d"
    );
}

#[tokio::test]
async fn sl1_publications_publish_via_partition_root_and_an_old_one_holding_a_partitioned_table_recreates_the_slot(
) {
    // Goal: a new publication publishes via partition root; an older one without it is
    // altered, in place when it holds no partitioned table, and after dropping the slot when
    // it does (its history, and shapes built from it, missed the partitions' changes).
    // Method: three targets in one database: no publication; an old empty publication and
    // its slot; an old publication of `m` and its slot.
    let url = database("replication_via_root");
    let client = connect(&url).await;
    client.batch_execute(PARTITIONED_DDL).await.expect("DDL");
    let pg = RealPg::from_url(&url).unwrap();
    let fresh = target("via_root_new");
    let (_fresh_stream, started, _) = start(&pg, &fresh).await;
    assert!(started.slot_created);
    assert!(is_via_root(&client, &fresh.publication).await);

    for (target, tables, is_recreated) in [
        (target("via_root_old_empty"), "", false),
        (target("via_root_old_parted"), "FOR TABLE m", true),
    ] {
        let old = format!("CREATE PUBLICATION {} {tables}", target.publication);
        client.batch_execute(&old).await.unwrap();
        client
            .query_one(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&target.slot],
            )
            .await
            .unwrap();
        assert!(!is_via_root(&client, &target.publication).await);
        let (_stream, started, _) = start(&pg, &target).await;
        assert_eq!(started.slot_created, is_recreated, "{}", target.publication);
        assert!(is_via_root(&client, &target.publication).await);
    }
}

#[tokio::test]
async fn with_manual_publishing_an_old_publication_is_left_alone_and_a_partitioned_table_names_the_sql(
) {
    // Goal: ELECTRIC_MANUAL_TABLE_PUBLISHING: ampere alters neither the publication nor its
    // slot's history; a shape on a partitioned table is refused with every statement the
    // operator must run (publish_via_partition_root, then each table's replica identity).
    let url = database("manual_via_root");
    let client = connect(&url).await;
    client.batch_execute(PARTITIONED_DDL).await.expect("DDL");
    let target = target("manual_via_root");
    let manual = PgOptions {
        table_publishing: TablePublishing::Manual {
            publication: target.publication.clone(),
        },
        ..PgOptions::default()
    };
    let pg = RealPg::with_options(&url, &manual).unwrap();
    let old = format!("CREATE PUBLICATION {} FOR TABLE m", target.publication);
    client.batch_execute(&old).await.unwrap();
    client
        .query_one(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&target.slot],
        )
        .await
        .unwrap();
    let (_stream, started, _) = start(&pg, &target).await;
    assert!(!started.slot_created, "the slot is kept");
    assert!(!is_via_root(&client, &target.publication).await);

    let error = pg
        .check_table_published(relation("m"))
        .await
        .expect_err("not ready");
    let SnapshotError::NotPublished { message } = &error else {
        panic!("{error:?}");
    };
    let publication = &target.publication;
    assert!(
        message.ends_with(&format!(
            "run: ALTER PUBLICATION \"{publication}\" SET (publish_via_partition_root = true); \
             ALTER TABLE \"public\".\"m\" REPLICA IDENTITY FULL; \
             ALTER TABLE \"public\".\"m_eu\" REPLICA IDENTITY FULL; \
             ALTER TABLE \"public\".\"m_us\" REPLICA IDENTITY FULL; \
             ALTER TABLE \"public\".\"m_us_high\" REPLICA IDENTITY FULL; \
             ALTER TABLE \"public\".\"m_us_low\" REPLICA IDENTITY FULL;"
        )),
        "{message}"
    );
    assert!(!message.contains("ADD TABLE"), "m is listed: {message}");

    // The operator runs it: ready.
    let sql = message.split("run: ").nth(1).expect("the SQL");
    client.batch_execute(sql).await.expect("the operator's SQL");
    pg.check_table_published(relation("m"))
        .await
        .expect("ready once the operator ran it");
}
