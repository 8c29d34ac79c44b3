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

ampere_core::snapshot_contract_tests!(run_case);
