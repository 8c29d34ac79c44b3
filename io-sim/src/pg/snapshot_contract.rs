//! io-sim's snapshot steps against the served model, held to the contract suite both adapters
//! run (`ampere_core::snapshot_steps::contract`). One simulation per case.

use std::time::Duration;

use ampere_core::ports::PgPort;
use ampere_core::shape::{RelationName, TableSchema};
use ampere_core::snapshot::FullXid;
use ampere_core::snapshot_steps::contract::{self, ContractHarness, PUBLICATION};

use super::*;

const OID: u32 = 16_384;

fn items() -> RelationName {
    RelationName {
        schema: "public".into(),
        table: "items".into(),
    }
}

struct SimHarness {
    pg: SharedPg,
    port: SimPg,
    /// The transaction `begin_insert` left open.
    writer: Option<u64>,
}

impl SimHarness {
    fn insert_row(&self, xid: u64, id: i64, title: Option<&str>) {
        let row = vec![Some(id.to_string()), title.map(str::to_owned)];
        lock(&self.pg).insert(xid, &items(), row).expect("insert");
    }
}

impl ContractHarness for SimHarness {
    type Steps = SimSnapshotSteps;

    async fn schema(&mut self) -> TableSchema {
        self.port
            .table_schema(items())
            .await
            .expect("catalog lookup")
            .expect("items exists")
            .schema
    }

    async fn steps(&mut self) -> SimSnapshotSteps {
        SimSnapshotSteps::connect("pg").await.expect("connect")
    }

    async fn insert(&mut self, id: i64, title: Option<&str>) {
        let xid = lock(&self.pg).begin();
        self.insert_row(xid, id, title);
        lock(&self.pg).commit(xid).expect("commit");
    }

    async fn begin_insert(&mut self, id: i64) -> FullXid {
        assert!(self.writer.is_none(), "one open writer at a time");
        let xid = lock(&self.pg).begin();
        self.insert_row(xid, id, None);
        self.writer = Some(xid);
        FullXid(xid)
    }

    async fn commit_insert(&mut self) {
        let xid = self.writer.take().expect("an open writer");
        lock(&self.pg).commit(xid).expect("commit");
    }

    async fn try_add_column(&mut self, name: &str) -> bool {
        lock(&self.pg).add_column(&items(), name).is_ok()
    }

    async fn is_published(&mut self) -> bool {
        // The model has no replica identities: every old row is full.
        lock(&self.pg)
            .publication(PUBLICATION)
            .is_some_and(|members| members.contains(&OID))
    }
}

fn run_case(case: &'static str) {
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(60))
        .build();
    let pg = PgModel::shared(PgModelConfig {
        system_id: 7_000_000_000_000_000_002,
        timeline: 1,
        first_xid: 1_000,
        tables: vec![TableDef::with_text_columns(items(), OID, &["title"])],
    });
    assert!(lock(&pg).create_publication(PUBLICATION));
    let served = pg.clone();
    sim.host("pg", move || serve(served.clone()));
    sim.client("ampere", async move {
        let harness = SimHarness {
            pg,
            port: SimPg::new("pg"),
            writer: None,
        };
        contract::run(case, harness).await;
        Ok(())
    });
    sim.run().unwrap();
}

/// One `#[test]` per contract case.
macro_rules! contract_cases {
    ($($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                run_case(stringify!($case));
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
