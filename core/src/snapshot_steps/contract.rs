//! The contract every adapter's [`SnapshotSteps`] meets, as one suite: io-real runs it against
//! a real Postgres (`io-real/tests/snapshot_contract.rs`), io-sim against its model
//! (`io-sim/src/pg/snapshot_contract.rs`). Each case takes a fresh [`ContractHarness`]: a
//! database whose table [`ContractHarness::schema`] is `(id int8 primary key, title text)`,
//! empty, with publication [`PUBLICATION`] and the table not in it.
//!
//! The order of the steps is [`take`]'s, unit-tested with scripted steps; this suite holds
//! each step to what the order relies on.

use std::future::Future;
use std::sync::{Arc, Mutex};

use super::{take, Membership, PublishedAs, SnapshotSteps, TablePublishing, TextRow};
use crate::chunk::SnapshotColumns;
use crate::ports::{SnapshotError, SnapshotRequest, SnapshotWriter};
use crate::shape::{
    HandleStamp, LogMode, RelationName, Replica, ShapeDefinition, ShapeHandle, TableSchema,
};
use crate::snapshot::FullXid;
use crate::where_clause::{Params, WhereClause};

/// The publication each harness starts with.
pub const PUBLICATION: &str = "contract_publication";

/// An adapter's test setup around its steps. Panics on setup failures (test code).
pub trait ContractHarness: Send {
    /// The adapter's steps.
    type Steps: SnapshotSteps;

    /// The table's schema as the catalog describes it now.
    fn schema(&mut self) -> impl Future<Output = TableSchema> + Send;
    /// Steps on a new connection of their own.
    fn steps(&mut self) -> impl Future<Output = Self::Steps> + Send;
    /// Inserts a row and commits.
    fn insert(&mut self, id: i64, title: Option<&str>) -> impl Future<Output = ()> + Send;
    /// Inserts a row in a transaction left open (one at a time); returns its xid.
    fn begin_insert(&mut self, id: i64) -> impl Future<Output = FullXid> + Send;
    /// Commits the transaction [`Self::begin_insert`] left open.
    fn commit_insert(&mut self) -> impl Future<Output = ()> + Send;
    /// `ALTER TABLE … ADD COLUMN name text` under a short lock timeout: whether it committed.
    fn try_add_column(&mut self, name: &str) -> impl Future<Output = bool> + Send;
    /// Whether the table is a member of [`PUBLICATION`] (with `REPLICA IDENTITY FULL` where
    /// the adapter has replica identities).
    fn is_published(&mut self) -> impl Future<Output = bool> + Send;
}

/// Every case, by name, for adapters to run one by one.
pub const CASES: &[&str] = &[
    "add_to_publication_makes_the_table_a_member_and_may_repeat",
    "add_to_publication_of_a_missing_table_is_schema_changed",
    "in_progress_lists_an_open_writer_until_it_ends",
    "the_read_sees_the_rows_committed_before_its_snapshot_only",
    "lock_table_holds_off_ddl_until_commit",
    "table_schema_inside_the_read_is_the_catalogs",
    "query_rows_gives_the_fetched_columns_of_the_rows_the_where_clause_admits",
    "take_writes_the_admitted_rows_then_snapshot_end",
    "take_of_a_changes_only_shape_writes_snapshot_end_alone",
    "take_of_a_table_changed_since_the_request_is_schema_changed",
    "membership_reports_publication_and_alters_nothing",
    "manual_take_refuses_an_unpublished_table_then_succeeds_once_published",
];

/// One `#[test]` per case of [`CASES`], each calling `$runner(case_name)` (a plain
/// `fn(&'static str)` that builds a harness and awaits [`run`] on the adapter's runtime), and
/// one test that the list here is [`CASES`].
#[macro_export]
macro_rules! snapshot_contract_tests {
    ($runner:path) => {
        $crate::snapshot_contract_tests!(@cases $runner;
            add_to_publication_makes_the_table_a_member_and_may_repeat,
            add_to_publication_of_a_missing_table_is_schema_changed,
            in_progress_lists_an_open_writer_until_it_ends,
            the_read_sees_the_rows_committed_before_its_snapshot_only,
            lock_table_holds_off_ddl_until_commit,
            table_schema_inside_the_read_is_the_catalogs,
            query_rows_gives_the_fetched_columns_of_the_rows_the_where_clause_admits,
            take_writes_the_admitted_rows_then_snapshot_end,
            take_of_a_changes_only_shape_writes_snapshot_end_alone,
            take_of_a_table_changed_since_the_request_is_schema_changed,
            membership_reports_publication_and_alters_nothing,
            manual_take_refuses_an_unpublished_table_then_succeeds_once_published,
        );
    };
    (@cases $runner:path; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $runner(stringify!($case));
            }
        )*

        #[test]
        fn every_contract_case_runs_here() {
            assert_eq!(
                [$(stringify!($case)),*],
                $crate::snapshot_steps::contract::CASES
            );
        }
    };
}

/// Runs case `name` of [`CASES`] on `harness`.
pub async fn run<H: ContractHarness>(name: &str, harness: H) {
    match name {
        "add_to_publication_makes_the_table_a_member_and_may_repeat" => {
            add_to_publication_makes_the_table_a_member_and_may_repeat(harness).await;
        }
        "add_to_publication_of_a_missing_table_is_schema_changed" => {
            add_to_publication_of_a_missing_table_is_schema_changed(harness).await;
        }
        "in_progress_lists_an_open_writer_until_it_ends" => {
            in_progress_lists_an_open_writer_until_it_ends(harness).await;
        }
        "the_read_sees_the_rows_committed_before_its_snapshot_only" => {
            the_read_sees_the_rows_committed_before_its_snapshot_only(harness).await;
        }
        "lock_table_holds_off_ddl_until_commit" => {
            lock_table_holds_off_ddl_until_commit(harness).await;
        }
        "table_schema_inside_the_read_is_the_catalogs" => {
            table_schema_inside_the_read_is_the_catalogs(harness).await;
        }
        "query_rows_gives_the_fetched_columns_of_the_rows_the_where_clause_admits" => {
            query_rows_gives_the_fetched_columns_of_the_rows_the_where_clause_admits(harness).await;
        }
        "take_writes_the_admitted_rows_then_snapshot_end" => {
            take_writes_the_admitted_rows_then_snapshot_end(harness).await;
        }
        "take_of_a_changes_only_shape_writes_snapshot_end_alone" => {
            take_of_a_changes_only_shape_writes_snapshot_end_alone(harness).await;
        }
        "take_of_a_table_changed_since_the_request_is_schema_changed" => {
            take_of_a_table_changed_since_the_request_is_schema_changed(harness).await;
        }
        "membership_reports_publication_and_alters_nothing" => {
            membership_reports_publication_and_alters_nothing(harness).await;
        }
        "manual_take_refuses_an_unpublished_table_then_succeeds_once_published" => {
            manual_take_refuses_an_unpublished_table_then_succeeds_once_published(harness).await;
        }
        other => panic!("no contract case {other:?}"),
    }
}

async fn add_to_publication_makes_the_table_a_member_and_may_repeat<H: ContractHarness>(mut h: H) {
    let relation = h.schema().await.relation;
    assert!(!h.is_published().await, "a fresh table is not published");
    let mut steps = h.steps().await;
    for _ in 0..2 {
        steps
            .add_to_publication(PUBLICATION, &relation)
            .await
            .expect("ALTER PUBLICATION … ADD TABLE");
        assert!(h.is_published().await);
    }
}

async fn add_to_publication_of_a_missing_table_is_schema_changed<H: ContractHarness>(mut h: H) {
    let missing = RelationName {
        schema: "public".into(),
        table: "contract_missing".into(),
    };
    let error = h
        .steps()
        .await
        .add_to_publication(PUBLICATION, &missing)
        .await
        .expect_err("no such table");
    assert!(
        matches!(error, SnapshotError::SchemaChanged { .. }),
        "{error:?}"
    );
}

async fn in_progress_lists_an_open_writer_until_it_ends<H: ContractHarness>(mut h: H) {
    let xid = h.begin_insert(1).await;
    let mut steps = h.steps().await;
    let in_progress = steps.in_progress().await.expect("in progress");
    assert!(in_progress.xip.contains(&xid), "{xid:?} in {in_progress}");
    assert_eq!(steps.still_running(&in_progress).await.expect("status"), 1);
    h.commit_insert().await;
    assert_eq!(steps.still_running(&in_progress).await.expect("status"), 0);
}

async fn the_read_sees_the_rows_committed_before_its_snapshot_only<H: ContractHarness>(mut h: H) {
    h.insert(1, Some("before")).await;
    let schema = h.schema().await;
    let mut steps = h.steps().await;
    steps.begin_read().await.expect("BEGIN");
    steps.lock_table(&schema.relation).await.expect("LOCK");
    let snapshot = steps.current_snapshot().await.expect("snapshot");
    let late = h.begin_insert(2).await;
    h.commit_insert().await;
    assert!(
        late >= snapshot.xmax || snapshot.xip.contains(&late),
        "{late:?} committed after {snapshot}"
    );
    let rows = read_all(&mut steps, &schema, &columns(&schema, None, None)).await;
    assert_eq!(rows, [text_row(&["1", "before"])]);
    steps.commit().await.expect("COMMIT");
}

async fn lock_table_holds_off_ddl_until_commit<H: ContractHarness>(mut h: H) {
    let schema = h.schema().await;
    let mut steps = h.steps().await;
    steps.begin_read().await.expect("BEGIN");
    steps.lock_table(&schema.relation).await.expect("LOCK");
    assert!(
        !h.try_add_column("during").await,
        "DDL must wait for the snapshot's lock"
    );
    steps.current_snapshot().await.expect("snapshot");
    assert!(!h.try_add_column("during").await);
    steps.commit().await.expect("COMMIT");
    assert!(h.try_add_column("after").await, "COMMIT releases the lock");
}

async fn table_schema_inside_the_read_is_the_catalogs<H: ContractHarness>(mut h: H) {
    let schema = h.schema().await;
    let mut steps = h.steps().await;
    steps.begin_read().await.expect("BEGIN");
    steps.lock_table(&schema.relation).await.expect("LOCK");
    steps.current_snapshot().await.expect("snapshot");
    let seen = steps.table_schema(&schema.relation).await.expect("catalog");
    assert_eq!(seen.as_ref(), Some(&schema));
    let missing = RelationName {
        schema: "public".into(),
        table: "contract_missing".into(),
    };
    assert_eq!(steps.table_schema(&missing).await.expect("catalog"), None);
    steps.commit().await.expect("COMMIT");
}

async fn query_rows_gives_the_fetched_columns_of_the_rows_the_where_clause_admits<
    H: ContractHarness,
>(
    mut h: H,
) {
    for (id, title) in [
        (1, Some("apple")),
        (2, Some("banana")),
        (3, Some("avocado")),
    ] {
        h.insert(id, title).await;
    }
    h.insert(4, None).await;
    let schema = h.schema().await;
    let mut steps = h.steps().await;
    steps.begin_read().await.expect("BEGIN");
    let only_id = columns(&schema, Some(&["id"]), Some("title LIKE 'a%'"));
    let mut rows = read_all(&mut steps, &schema, &only_id).await;
    rows.sort();
    assert_eq!(
        rows,
        [vec![Some("1".into()), None], vec![Some("3".into()), None]]
    );
    let is_null = columns(&schema, None, Some("title IS NULL"));
    assert_eq!(
        read_all(&mut steps, &schema, &is_null).await,
        [vec![Some("4".into()), None]]
    );
    steps.commit().await.expect("COMMIT");
}

async fn take_writes_the_admitted_rows_then_snapshot_end<H: ContractHarness>(mut h: H) {
    h.insert(1, Some("apple")).await;
    h.insert(2, Some("banana")).await;
    let schema = h.schema().await;
    let writer = MemWriter::default();
    let taken = take(
        &mut h.steps().await,
        &request(schema, Some("title <> 'banana'")),
        &TablePublishing::Automatic,
        writer.clone(),
    )
    .await
    .expect("snapshot");
    let (chunks, finished) = writer.written();
    assert!(finished);
    let [(0, body)] = &chunks[..] else {
        panic!("one chunk expected: {chunks:?}");
    };
    assert!(
        body.contains(r#""value":{"id":"1","title":"apple"}"#),
        "{body}"
    );
    assert!(!body.contains("banana"), "{body}");
    assert!(body.ends_with(&taken.snapshot_end_json()), "{body}");
    assert!(h.is_published().await);
}

async fn take_of_a_changes_only_shape_writes_snapshot_end_alone<H: ContractHarness>(mut h: H) {
    h.insert(1, Some("apple")).await;
    h.insert(2, Some("banana")).await;
    let schema = h.schema().await;
    let mut changes_only = request(schema, Some("title <> 'banana'"));
    changes_only.definition.log = LogMode::ChangesOnly;
    let writer = MemWriter::default();
    let taken = take(
        &mut h.steps().await,
        &changes_only,
        &TablePublishing::Automatic,
        writer.clone(),
    )
    .await
    .expect("snapshot");
    assert_eq!(
        writer.written(),
        (vec![(0, taken.snapshot_end_json())], true),
        "chunk 0_0 holds snapshot-end alone"
    );
    assert!(h.is_published().await, "the table joined the publication");
    // The snapshot is the database's current one: a transaction that starts afterwards is
    // not visible to it, so replication delivers its changes.
    let late = h.begin_insert(3).await;
    h.commit_insert().await;
    assert!(late >= taken.xmax, "{late:?} began after {taken}");
}

async fn take_of_a_table_changed_since_the_request_is_schema_changed<H: ContractHarness>(mut h: H) {
    let schema = h.schema().await;
    assert!(h.try_add_column("extra").await);
    let writer = MemWriter::default();
    let error = take(
        &mut h.steps().await,
        &request(schema, None),
        &TablePublishing::Automatic,
        writer.clone(),
    )
    .await
    .expect_err("the table changed");
    assert!(
        matches!(error, SnapshotError::SchemaChanged { .. }),
        "{error:?}"
    );
    assert_eq!(writer.written(), (vec![], false));
}

async fn membership_reports_publication_and_alters_nothing<H: ContractHarness>(mut h: H) {
    let relation = h.schema().await.relation;
    let mut steps = h.steps().await;
    let before = steps
        .membership(PUBLICATION, &relation)
        .await
        .expect("membership")
        .expect("the table exists");
    assert!(!before.is_published, "{before:?}");
    assert!(!h.is_published().await, "reading membership alters nothing");
    let elsewhere = steps
        .membership("contract_no_such_publication", &relation)
        .await
        .expect("membership");
    assert!(
        elsewhere.as_ref().is_some_and(|m| !m.is_published),
        "{elsewhere:?}"
    );
    steps
        .add_to_publication(PUBLICATION, &relation)
        .await
        .expect("ALTER PUBLICATION … ADD TABLE");
    let after = steps.membership(PUBLICATION, &relation).await;
    let ready = Membership {
        is_published: true,
        replica_identity_not_full: vec![],
        published_as: PublishedAs::Itself,
    };
    assert_eq!(after.expect("membership"), Some(ready));
    let missing = RelationName {
        schema: "public".into(),
        table: "contract_missing".into(),
    };
    assert_eq!(
        steps
            .membership(PUBLICATION, &missing)
            .await
            .expect("membership"),
        None
    );
}

async fn manual_take_refuses_an_unpublished_table_then_succeeds_once_published<
    H: ContractHarness,
>(
    mut h: H,
) {
    h.insert(1, Some("apple")).await;
    let schema = h.schema().await;
    let relation = schema.relation.clone();
    let manual = TablePublishing::Manual {
        publication: PUBLICATION.into(),
    };
    let writer = MemWriter::default();
    let error = take(
        &mut h.steps().await,
        &request(schema.clone(), None),
        &manual,
        writer.clone(),
    )
    .await
    .expect_err("not published");
    let SnapshotError::NotPublished { message } = &error else {
        panic!("{error:?}");
    };
    let sql = format!("ALTER PUBLICATION \"{PUBLICATION}\" ADD TABLE {relation};");
    assert!(message.contains(&sql), "{message}");
    assert_eq!(writer.written(), (vec![], false));
    assert!(!h.is_published().await, "manual publishing alters nothing");

    // The operator runs the SQL (here through the automatic step, which does just that).
    let mut operator = h.steps().await;
    operator
        .add_to_publication(PUBLICATION, &relation)
        .await
        .expect("ALTER PUBLICATION … ADD TABLE");
    let writer = MemWriter::default();
    take(
        &mut h.steps().await,
        &request(schema, None),
        &manual,
        writer.clone(),
    )
    .await
    .expect("published now");
    let (chunks, finished) = writer.written();
    assert!(finished);
    assert!(
        chunks
            .iter()
            .any(|(_, body)| body.contains(r#""title":"apple""#)),
        "{chunks:?}"
    );
}

async fn read_all<S: SnapshotSteps>(
    steps: &mut S,
    schema: &TableSchema,
    columns: &SnapshotColumns,
) -> Vec<TextRow> {
    steps.query_rows(schema, columns).await.expect("rows query");
    let mut rows = Vec::new();
    while let Some(row) = steps.next_row().await.expect("row") {
        rows.push(row);
    }
    rows
}

fn definition(
    schema: &TableSchema,
    selected: Option<&[&str]>,
    where_text: Option<&str>,
) -> ShapeDefinition {
    ShapeDefinition {
        relation: schema.relation.clone(),
        columns: selected.map(|c| c.iter().map(|&s| s.to_owned()).collect()),
        replica: Replica::Default,
        where_clause: where_text.map(|text| {
            WhereClause::canonicalize(text, &Params::default()).expect("a valid where clause")
        }),
        log: LogMode::Full,
    }
}

fn columns(
    schema: &TableSchema,
    selected: Option<&[&str]>,
    where_text: Option<&str>,
) -> SnapshotColumns {
    SnapshotColumns::new(&definition(schema, selected, where_text), schema)
        .expect("the contract table has the columns")
}

fn request(schema: TableSchema, where_text: Option<&str>) -> SnapshotRequest {
    let definition = definition(&schema, None, where_text);
    SnapshotRequest {
        handle: ShapeHandle::mint(definition.identity(), HandleStamp(1)),
        definition,
        schema,
        publication: PUBLICATION.into(),
        chunk_bytes_threshold: 1 << 20,
    }
}

fn text_row(values: &[&str]) -> TextRow {
    values.iter().map(|&v| Some(v.to_owned())).collect()
}

/// Chunks `(index, body)` written so far, and whether the snapshot finished.
type Written = (Vec<(u64, String)>, bool);

/// Chunks in memory.
#[derive(Clone, Default)]
struct MemWriter(Arc<Mutex<Written>>);

impl MemWriter {
    fn written(&self) -> Written {
        self.0.lock().expect("writer lock").clone()
    }
}

impl SnapshotWriter for MemWriter {
    type Error = std::convert::Infallible;

    async fn write_chunk(&mut self, index: u64, body: String) -> Result<(), Self::Error> {
        self.0.lock().expect("writer lock").0.push((index, body));
        Ok(())
    }

    async fn finish(self) -> Result<(), Self::Error> {
        self.0.lock().expect("writer lock").1 = true;
        Ok(())
    }
}
