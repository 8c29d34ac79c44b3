//! io-real's snapshot steps against a real throwaway PostgreSQL, held to the contract suite
//! both adapters run (`ampere_core::snapshot_steps::contract`). One database per case on the
//! shared test cluster, one case at a time.

// Helpers outside `#[test]` fns panic on failure too: this whole file is test code.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

use ampere_core::ports::{PgPort, SnapshotRequest, SnapshotWriter};
use ampere_core::shape::{
    HandleStamp, LogMode, RelationName, Replica, ShapeDefinition, ShapeHandle, TableSchema,
};
use ampere_core::snapshot::FullXid;
use ampere_core::snapshot_steps::contract::{self, ContractHarness, PUBLICATION};
use ampere_core::snapshot_steps::{take, TablePublishing};
use ampere_io_real::embedded_pg::shared_for_tests;
use ampere_io_real::pg::RealPg;
use ampere_io_real::snapshot::SnapshotConnection;

/// SQLSTATE `lock_not_available`: `lock_timeout` expired.
const LOCK_NOT_AVAILABLE: &str = "55P03";

struct RealHarness {
    url: String,
    pg: RealPg,
    admin: Client,
    /// The connection of the transaction `begin_insert` left open.
    writer: Option<Client>,
}

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

fn items() -> RelationName {
    RelationName {
        schema: "public".into(),
        table: "items".into(),
    }
}

impl RealHarness {
    async fn new(database: &str) -> Self {
        let cluster = shared_for_tests().expect("shared test cluster starts");
        let url = cluster.create_database(database).expect("CREATE DATABASE");
        let admin = connect(&url).await;
        admin
            .batch_execute(&format!(
                "CREATE TABLE items (id int8 PRIMARY KEY, title text); \
                 CREATE PUBLICATION {PUBLICATION}"
            ))
            .await
            .unwrap();
        Self {
            pg: RealPg::from_url(&url).unwrap(),
            url,
            admin,
            writer: None,
        }
    }
}

impl ContractHarness for RealHarness {
    type Steps = SnapshotConnection;

    async fn schema(&mut self) -> TableSchema {
        self.pg
            .table_schema(items())
            .await
            .expect("catalog lookup")
            .expect("items exists")
            .schema
    }

    async fn steps(&mut self) -> SnapshotConnection {
        SnapshotConnection::new(connect(&self.url).await)
    }

    async fn insert(&mut self, id: i64, title: Option<&str>) {
        self.admin
            .execute("INSERT INTO items VALUES ($1, $2)", &[&id, &title])
            .await
            .unwrap();
    }

    async fn begin_insert(&mut self, id: i64) -> FullXid {
        assert!(self.writer.is_none(), "one open writer at a time");
        let writer = connect(&self.url).await;
        writer.batch_execute("BEGIN").await.unwrap();
        writer
            .execute("INSERT INTO items VALUES ($1, NULL)", &[&id])
            .await
            .unwrap();
        let row = writer
            .query_one("SELECT pg_current_xact_id()::text", &[])
            .await
            .unwrap();
        self.writer = Some(writer);
        FullXid(row.get::<_, String>(0).parse().unwrap())
    }

    async fn commit_insert(&mut self) {
        let writer = self.writer.take().expect("an open writer");
        writer.batch_execute("COMMIT").await.unwrap();
    }

    async fn try_add_column(&mut self, name: &str) -> bool {
        self.admin
            .batch_execute("SET lock_timeout = '300ms'")
            .await
            .unwrap();
        let alter = format!("ALTER TABLE items ADD COLUMN {name} text");
        match self.admin.batch_execute(&alter).await {
            Ok(()) => true,
            Err(e)
                if e.code().map(tokio_postgres::error::SqlState::code)
                    == Some(LOCK_NOT_AVAILABLE) =>
            {
                false
            }
            Err(e) => panic!("{alter}: {e}"),
        }
    }

    async fn is_published(&mut self) -> bool {
        let row = self
            .admin
            .query_one(
                "SELECT c.relreplident = 'f' AND EXISTS (SELECT 1 FROM pg_publication_tables \
                 WHERE pubname = $1 AND schemaname = 'public' AND tablename = 'items') \
                 FROM pg_class c WHERE c.oid = 'public.items'::regclass",
                &[&PUBLICATION],
            )
            .await
            .unwrap();
        row.get(0)
    }
}

/// Held by the case that runs: a snapshot's in-progress list is the whole cluster's, so a case
/// counting open writers must not see another case's transaction.
static ONE_CASE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Case `case` on a database of its own, one case at a time.
fn run_case(case: &'static str) {
    // A case that failed poisons the lock; the others still run and report on their own.
    let _one_at_a_time = ONE_CASE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Case names exceed Postgres's 63-byte identifiers: number the databases.
    let index = contract::CASES
        .iter()
        .position(|&c| c == case)
        .expect("a contract case");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let harness = RealHarness::new(&format!("snapshot_contract_{index}")).await;
        contract::run(case, harness).await;
    });
}

ampere_core::snapshot_contract_tests!(run_case);

/// Rows in the table of [`a_changes_only_snapshot_reads_none_of_the_tables_rows`].
const MANY_ROWS: i64 = 20_000;

#[test]
fn a_changes_only_snapshot_reads_none_of_the_tables_rows() {
    // Goal: a changes_only shape on a big table is as quick to create as on an empty one:
    // its snapshot transaction runs (publication, wait, lock, pg_current_snapshot(), catalog
    // check) but reads no row, while a full snapshot reads each row once.
    // Method: MANY_ROWS rows; a changes_only take, then a full take, each on a connection of
    // its own closed afterwards (a backend flushes its table statistics when it exits); then
    // the table's tuples-read statistics (`seq_tup_read + idx_tup_fetch`) have grown by the
    // full take's rows exactly.
    let _one_at_a_time = ONE_CASE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let mut h = RealHarness::new("snapshot_changes_only_reads").await;
        h.admin
            .execute(
                "INSERT INTO items SELECT g, 'row ' || g FROM generate_series(1, $1::int8) g",
                &[&MANY_ROWS],
            )
            .await
            .unwrap();
        let schema = h.schema().await;
        let before = tuples_read(&h.admin).await;

        let started = Instant::now();
        let (chunks, taken) =
            take_closed(&h, snapshot_request(&schema, LogMode::ChangesOnly)).await;
        let changes_only_took = started.elapsed();
        let sizes: Vec<(u64, usize)> = chunks.iter().map(|(i, body)| (*i, body.len())).collect();
        assert!(
            chunks == [(0, taken.snapshot_end_json())],
            "chunk 0_0 must hold snapshot-end alone; chunks (index, bytes): {sizes:?}"
        );

        let started = Instant::now();
        let (chunks, _) = take_closed(&h, snapshot_request(&schema, LogMode::Full)).await;
        let full_took = started.elapsed();
        let rows = chunks
            .iter()
            .map(|(_, body)| body.matches(r#""key":"#).count());
        assert_eq!(rows.sum::<usize>(), MANY_ROWS as usize);

        let full_reads = u64::try_from(MANY_ROWS).unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while tuples_read(&h.admin).await - before < full_reads && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            tuples_read(&h.admin).await - before,
            full_reads,
            "the full snapshot read every row once and the changes_only one none"
        );
        eprintln!(
            "{MANY_ROWS} rows: changes_only snapshot {changes_only_took:?}, full {full_took:?}"
        );
    });
}

fn snapshot_request(schema: &TableSchema, log: LogMode) -> SnapshotRequest {
    let definition = ShapeDefinition {
        relation: schema.relation.clone(),
        columns: None,
        replica: Replica::Default,
        where_clause: None,
        log,
    };
    SnapshotRequest {
        handle: ShapeHandle::mint(definition.identity(), HandleStamp(1)),
        definition,
        schema: schema.clone(),
        publication: PUBLICATION.into(),
        chunk_bytes_threshold: 1 << 20,
    }
}

/// Takes `request`'s snapshot on a new connection, then closes it and waits until its backend
/// has exited; returns the chunks written and the snapshot.
async fn take_closed(
    h: &RealHarness,
    request: SnapshotRequest,
) -> (Vec<(u64, String)>, ampere_core::snapshot::PgSnapshot) {
    let client = connect(&h.url).await;
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let mut steps = SnapshotConnection::new(client);
    let writer = ChunkList::default();
    let taken = take(
        &mut steps,
        &request,
        &TablePublishing::Automatic,
        writer.clone(),
    )
    .await
    .expect("snapshot");
    drop(steps);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let row = h
            .admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .unwrap();
        if row.get::<_, i64>(0) == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "backend {pid} still running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let chunks = writer.0.lock().unwrap().clone();
    (chunks, taken)
}

/// Tuples read from `items` by scans so far, as the statistics system has them.
async fn tuples_read(admin: &Client) -> u64 {
    let row = admin
        .query_one(
            "SELECT (coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0))::int8 \
             FROM pg_stat_user_tables WHERE relid = 'public.items'::regclass",
            &[],
        )
        .await
        .unwrap();
    u64::try_from(row.get::<_, i64>(0)).unwrap()
}

/// Chunks in memory, in the order written.
#[derive(Clone, Default)]
struct ChunkList(Arc<std::sync::Mutex<Vec<(u64, String)>>>);

impl SnapshotWriter for ChunkList {
    type Error = std::convert::Infallible;

    async fn write_chunk(&mut self, index: u64, body: String) -> Result<(), Self::Error> {
        self.0.lock().unwrap().push((index, body));
        Ok(())
    }

    async fn finish(self) -> Result<(), Self::Error> {
        Ok(())
    }
}
