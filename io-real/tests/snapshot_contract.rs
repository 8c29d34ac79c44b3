//! io-real's snapshot steps against a real throwaway PostgreSQL, held to the contract suite
//! both adapters run (`ampere_core::snapshot_steps::contract`). One database per case on the
//! shared test cluster, one case at a time.

// Helpers outside `#[test]` fns panic on failure too: this whole file is test code.
#![allow(clippy::unwrap_used)]

use tokio_postgres::{Client, NoTls};

use ampere_core::ports::PgPort;
use ampere_core::shape::{RelationName, TableSchema};
use ampere_core::snapshot::FullXid;
use ampere_core::snapshot_steps::contract::{self, ContractHarness, PUBLICATION};
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
