//! io-real's snapshot steps against a real throwaway PostgreSQL, held to the contract suite
//! both adapters run (`ampere_core::snapshot_steps::contract`). One database per case on the
//! shared test cluster.

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

/// One `#[tokio::test]` per contract case, each on a database of its own.
macro_rules! contract_cases {
    ($($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                // Case names exceed Postgres's 63-byte identifiers: number the databases.
                let case = contract::CASES
                    .iter()
                    .position(|&c| c == stringify!($case))
                    .expect("a contract case");
                let harness = RealHarness::new(&format!("snapshot_contract_{case}")).await;
                contract::run(stringify!($case), harness).await;
            }
        )*

        #[test]
        fn every_contract_case_runs_here() {
            assert_eq!([$(stringify!($case)),*], contract::CASES);
        }
    };
}

contract_cases!(
    add_to_publication_makes_the_table_a_member_and_may_repeat,
    add_to_publication_of_a_missing_table_is_schema_changed,
    in_progress_lists_an_open_writer_until_it_ends,
    the_read_sees_the_rows_committed_before_its_snapshot_only,
    lock_table_holds_off_ddl_until_commit,
    table_schema_inside_the_read_is_the_catalogs,
    query_rows_gives_the_fetched_columns_of_the_rows_the_where_clause_admits,
    take_writes_the_admitted_rows_then_snapshot_end,
    take_of_a_table_changed_since_the_request_is_schema_changed,
);
