//! The order of [`take`] against scripted steps; what each adapter's steps do is the contract
//! suite's business (`io-real/tests/snapshot_contract.rs`, `io-sim`'s `snapshot_contract`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use super::*;
use crate::shape::{ColumnSchema, HandleStamp, ShapeHandle};
use crate::tests::harness::{items, snapshot, whole};
use crate::tests::poll_once;

/// Scripted answers; records every step and chunk in one log.
#[derive(Default)]
struct Script {
    in_progress: Option<PgSnapshot>,
    /// `still_running` answers, in order (then 0).
    running: VecDeque<u64>,
    /// The catalog entry inside the read (the request's schema when `None`).
    seen: Option<Option<TableSchema>>,
    rows: VecDeque<TextRow>,
    fail_commit: bool,
    /// The table's membership for `membership` (published with `FULL` when `None`).
    membership: Option<Option<Membership>>,
    log: Log,
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, step: impl Into<String>) {
        self.0.lock().unwrap().push(step.into());
    }
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

impl SnapshotSteps for Script {
    async fn add_to_publication(
        &mut self,
        publication: &str,
        relation: &RelationName,
    ) -> Result<(), SnapshotError> {
        self.log
            .push(format!("publish {relation} in {publication}"));
        Ok(())
    }
    async fn membership(
        &mut self,
        publication: &str,
        relation: &RelationName,
    ) -> Result<Option<Membership>, SnapshotError> {
        self.log
            .push(format!("membership of {relation} in {publication}"));
        Ok(self.membership.clone().unwrap_or(Some(Membership {
            is_published: true,
            replica_identity_not_full: vec![],
            published_as: PublishedAs::Itself,
        })))
    }
    async fn in_progress(&mut self) -> Result<PgSnapshot, SnapshotError> {
        self.log.push("in progress");
        Ok(self.in_progress.clone().unwrap_or_else(|| snapshot("5:5:")))
    }
    async fn still_running(&mut self, _: &PgSnapshot) -> Result<u64, SnapshotError> {
        self.log.push("still running");
        Ok(self.running.pop_front().unwrap_or(0))
    }
    async fn pause(&mut self, duration: Duration) {
        assert_eq!(duration, XIP_POLL_INTERVAL);
        self.log.push("pause");
    }
    async fn begin_read(&mut self) -> Result<(), SnapshotError> {
        self.log.push("begin");
        Ok(())
    }
    async fn lock_table(&mut self, relation: &RelationName) -> Result<(), SnapshotError> {
        self.log.push(format!("lock {relation}"));
        Ok(())
    }
    async fn current_snapshot(&mut self) -> Result<PgSnapshot, SnapshotError> {
        self.log.push("snapshot");
        Ok(snapshot("10:12:11"))
    }
    async fn table_schema(
        &mut self,
        _: &RelationName,
    ) -> Result<Option<TableSchema>, SnapshotError> {
        self.log.push("catalog");
        Ok(self.seen.clone().unwrap_or_else(|| Some(items())))
    }
    async fn query_rows(
        &mut self,
        schema: &TableSchema,
        columns: &SnapshotColumns,
    ) -> Result<(), SnapshotError> {
        assert_eq!(schema, &items());
        self.log.push(format!(
            "query {:?}{}",
            columns.fetched,
            columns.where_sql()
        ));
        Ok(())
    }
    async fn next_row(&mut self) -> Result<Option<TextRow>, SnapshotError> {
        Ok(self.rows.pop_front())
    }
    async fn commit(&mut self) -> Result<(), SnapshotError> {
        self.log.push("commit");
        if self.fail_commit {
            return Err(SnapshotError::Postgres {
                message: "connection lost".into(),
                kind: DisconnectKind::Transient,
            });
        }
        Ok(())
    }
}

/// Logs chunks and the finish into the script's log.
struct LogWriter(Log);

impl SnapshotWriter for LogWriter {
    type Error = Infallible;

    async fn write_chunk(&mut self, index: u64, body: String) -> Result<(), Infallible> {
        self.0.push(format!("chunk {index}: {body}"));
        Ok(())
    }

    async fn finish(self) -> Result<(), Infallible> {
        self.0.push("finish");
        Ok(())
    }
}

fn request(where_clause: Option<&str>) -> SnapshotRequest {
    let schema = items();
    let mut definition = whole(&schema);
    definition.where_clause = where_clause.map(str::to_owned);
    SnapshotRequest {
        handle: ShapeHandle::mint(definition.identity(), HandleStamp(1)),
        definition,
        schema,
        publication: "pub".into(),
        chunk_bytes_threshold: 1 << 20,
    }
}

fn run(script: &mut Script, request: &SnapshotRequest) -> Result<PgSnapshot, SnapshotError> {
    let writer = LogWriter(script.log.clone());
    poll_once(take(script, request, &TablePublishing::Automatic, writer))
}

fn run_manual(script: &mut Script, request: &SnapshotRequest) -> Result<PgSnapshot, SnapshotError> {
    let writer = LogWriter(script.log.clone());
    let manual = TablePublishing::Manual {
        publication: request.publication.clone(),
    };
    poll_once(take(script, request, &manual, writer))
}

/// The membership of `items` (published or not, `FULL` or not).
fn membership(is_published: bool, is_replica_identity_full: bool) -> Membership {
    membership_of(&items().relation, is_published, is_replica_identity_full)
}

fn membership_of(
    relation: &RelationName,
    is_published: bool,
    is_replica_identity_full: bool,
) -> Membership {
    Membership {
        is_published,
        replica_identity_not_full: if is_replica_identity_full {
            vec![]
        } else {
            vec![relation.clone()]
        },
        published_as: PublishedAs::Itself,
    }
}

fn public(table: &str) -> RelationName {
    RelationName {
        schema: "public".into(),
        table: table.into(),
    }
}

fn row(id: &str, title: &str, n: &str) -> TextRow {
    vec![Some(id.into()), Some(title.into()), Some(n.into())]
}

#[test]
fn publication_then_wait_then_lock_snapshot_catalog_rows_then_commit_then_finish() {
    let mut script = Script {
        in_progress: Some(snapshot("7:9:7,8")),
        running: [2, 1].into(),
        rows: [row("1", "a", "7")].into(),
        ..Script::default()
    };
    let taken = run(&mut script, &request(Some("n = '7'"))).expect("snapshot");
    assert_eq!(taken, snapshot("10:12:11"));
    let end = r#"{"headers":{"control":"snapshot-end","xip_list":["11"],"xmax":"12","xmin":"10"}}"#;
    assert_eq!(
        script.log.take(),
        [
            r#"publish "public"."items" in pub"#.to_owned(),
            "in progress".into(),
            "still running".into(),
            "pause".into(),
            "still running".into(),
            "pause".into(),
            "still running".into(),
            "begin".into(),
            r#"lock "public"."items""#.into(),
            "snapshot".into(),
            "catalog".into(),
            r#"query [0, 1, 2] WHERE ("n" = '7'::pg_catalog.int4)"#.into(),
            format!(
                "chunk 0: {},{end}",
                r#"{"key":"\"public\".\"items\"/\"1\"","value":{"id":"1","title":"a","n":"7"},"headers":{"operation":"insert","relation":["public","items"]}}"#
            ),
            "commit".into(),
            "finish".into(),
        ]
    );
}

#[test]
fn a_changes_only_snapshot_runs_every_step_but_the_rows_query_and_logs_snapshot_end_alone() {
    // Goal: `log=changes_only` keeps the publication step, the wait and the snapshot
    // transaction (its pg_current_snapshot() is what replication is stitched to) but never
    // asks for a row, so its log is chunk 0_0 = [snapshot-end], whatever the table holds.
    // Method: a table with rows and a writer in progress; a where-filtered changes_only request.
    let mut script = Script {
        in_progress: Some(snapshot("7:9:7,8")),
        running: [1].into(),
        rows: [row("1", "a", "7"), row("2", "b", "7")].into(),
        ..Script::default()
    };
    let mut changes_only = request(Some("n = '7'"));
    changes_only.definition.log = LogMode::ChangesOnly;
    let taken = run(&mut script, &changes_only).expect("snapshot");
    assert_eq!(taken, snapshot("10:12:11"));
    assert_eq!(
        script.log.take(),
        [
            r#"publish "public"."items" in pub"#,
            "in progress",
            "still running",
            "pause",
            "still running",
            "begin",
            r#"lock "public"."items""#,
            "snapshot",
            "catalog",
            r#"chunk 0: {"headers":{"control":"snapshot-end","xip_list":["11"],"xmax":"12","xmin":"10"}}"#,
            "commit",
            "finish",
        ]
    );
    assert_eq!(script.rows.len(), 2, "no row was taken from the query");
}

#[test]
fn a_changes_only_snapshot_still_fails_on_a_table_changed_since_the_request() {
    // Goal: skipping the rows does not skip the schema check (SN-3): a column change the
    // shape never heard of must still fail its snapshot (409), or nothing would invalidate it.
    // Method: a changes_only request; the catalog inside the read has an extra column.
    let mut changed = items();
    changed.columns.push(ColumnSchema {
        name: "extra".into(),
        ..changed.columns[1].clone()
    });
    let mut script = Script {
        seen: Some(Some(changed)),
        ..Script::default()
    };
    let mut changes_only = request(None);
    changes_only.definition.log = LogMode::ChangesOnly;
    let error = run(&mut script, &changes_only).expect_err("schema changed");
    assert!(
        matches!(error, SnapshotError::SchemaChanged { .. }),
        "{error:?}"
    );
    assert!(
        !script
            .log
            .take()
            .iter()
            .any(|step| step.starts_with("chunk")),
        "no chunk for a failed snapshot"
    );
}

#[test]
fn nothing_in_progress_is_not_polled() {
    let mut script = Script::default();
    run(&mut script, &request(None)).expect("snapshot");
    let log = script.log.take();
    assert_eq!(
        log[..3],
        [r#"publish "public"."items" in pub"#, "in progress", "begin"]
    );
}

#[test]
fn a_writer_running_past_the_wait_is_a_transient_error_before_the_read_begins() {
    let polls = (XIP_WAIT_MAX.as_millis() / XIP_POLL_INTERVAL.as_millis()) as usize;
    let mut script = Script {
        in_progress: Some(snapshot("7:8:7")),
        running: std::iter::repeat_n(1, polls + 1).collect(),
        ..Script::default()
    };
    let error = run(&mut script, &request(None)).expect_err("times out");
    assert!(
        matches!(&error, SnapshotError::Postgres { kind: DisconnectKind::Transient, message }
            if message == "1 transaction(s) in progress at 7:8:7 still running after 30s"),
        "{error:?}"
    );
    let log = script.log.take();
    assert_eq!(log.iter().filter(|s| *s == "pause").count(), polls);
    assert!(!log.contains(&"begin".to_owned()));
}

#[test]
fn a_table_changed_since_the_request_fails_before_the_rows_query() {
    let mut changed = items();
    changed.columns.push(ColumnSchema {
        name: "extra".into(),
        ..changed.columns[1].clone()
    });
    for seen in [None, Some(changed)] {
        let mut script = Script {
            seen: Some(seen),
            rows: [row("1", "a", "7")].into(),
            ..Script::default()
        };
        let error = run(&mut script, &request(None)).expect_err("schema changed");
        assert!(
            matches!(error, SnapshotError::SchemaChanged { .. }),
            "{error:?}"
        );
        let log = script.log.take();
        assert_eq!(log.last().map(String::as_str), Some("catalog"), "{log:?}");
    }
}

#[test]
fn a_failed_commit_leaves_the_snapshot_unfinished() {
    let mut script = Script {
        fail_commit: true,
        ..Script::default()
    };
    let error = run(&mut script, &request(None)).expect_err("commit fails");
    assert!(matches!(error, SnapshotError::Postgres { .. }), "{error:?}");
    let log = script.log.take();
    assert_eq!(log.last().map(String::as_str), Some("commit"), "{log:?}");
}

#[test]
fn a_where_clause_that_no_longer_compiles_fails_before_the_read_begins() {
    let mut script = Script::default();
    let error = run(&mut script, &request(Some("missing = 1"))).expect_err("broken where");
    assert!(
        matches!(error, SnapshotError::SchemaChanged { .. }),
        "{error:?}"
    );
    assert!(!script.log.take().contains(&"begin".to_owned()));
}

#[test]
fn manual_publishing_checks_the_table_instead_of_publishing_it_then_snapshots_alike() {
    let mut script = Script::default();
    run_manual(&mut script, &request(None)).expect("snapshot");
    let log = script.log.take();
    assert_eq!(
        log[..3],
        [
            r#"membership of "public"."items" in pub"#,
            "in progress",
            "begin"
        ]
    );
    assert!(
        !log.iter().any(|step| step.starts_with("publish")),
        "{log:?}"
    );
    assert_eq!(log.last().map(String::as_str), Some("finish"));
}

#[test]
fn manual_publishing_refuses_a_table_not_ready_with_the_sql_to_run_and_stops_there() {
    for (lacking, expected) in [
        (
            membership(false, true),
            r#"is missing from the publication "pub", and ELECTRIC_MANUAL_TABLE_PUBLISHING=true keeps ampere from changing that. As the table's owner (or a superuser), run: ALTER PUBLICATION "pub" ADD TABLE "public"."items";"#,
        ),
        (
            membership(true, false),
            r#"does not have its replica identity set to FULL, and ELECTRIC_MANUAL_TABLE_PUBLISHING=true keeps ampere from changing that. As the table's owner (or a superuser), run: ALTER TABLE "public"."items" REPLICA IDENTITY FULL;"#,
        ),
        (
            membership(false, false),
            r#"is missing from the publication "pub" and does not have its replica identity set to FULL, and ELECTRIC_MANUAL_TABLE_PUBLISHING=true keeps ampere from changing that. As the table's owner (or a superuser), run: ALTER PUBLICATION "pub" ADD TABLE "public"."items"; ALTER TABLE "public"."items" REPLICA IDENTITY FULL;"#,
        ),
    ] {
        let mut script = Script {
            membership: Some(Some(lacking)),
            ..Script::default()
        };
        let error = run_manual(&mut script, &request(None)).expect_err("not ready");
        let SnapshotError::NotPublished { message } = &error else {
            panic!("{error:?}");
        };
        assert_eq!(
            message,
            &format!(r#"Database table "public"."items" {expected}"#)
        );
        assert_eq!(
            script.log.take(),
            [r#"membership of "public"."items" in pub"#],
            "nothing after the check: no wait, no read, no chunk"
        );
    }
}

#[test]
fn manual_publishing_of_a_vanished_table_is_schema_changed() {
    let mut script = Script {
        membership: Some(None),
        ..Script::default()
    };
    let error = run_manual(&mut script, &request(None)).expect_err("gone");
    assert!(
        matches!(error, SnapshotError::SchemaChanged { .. }),
        "{error:?}"
    );
}

#[test]
fn the_sql_to_run_quotes_odd_identifiers() {
    let relation = RelationName {
        schema: "My Schema".into(),
        table: r#"it"ems"#.into(),
    };
    let message = membership_of(&relation, false, false)
        .not_ready_message(r#"pub "x""#, &relation)
        .expect("not ready");
    assert!(
        message.ends_with(
            r#"run: ALTER PUBLICATION "pub ""x""" ADD TABLE "My Schema"."it""ems"; ALTER TABLE "My Schema"."it""ems" REPLICA IDENTITY FULL;"#
        ),
        "{message}"
    );
    assert_eq!(
        membership_of(&relation, true, true).not_ready_message("pub", &relation),
        None
    );
}

#[test]
fn manual_publishing_of_a_partitioned_table_names_publish_via_partition_root_and_each_partition() {
    // Goal: a partitioned table needs its partitions' changes published under it and every
    // partition's replica identity FULL (ALTER TABLE on the parent does not reach them); the
    // message names each statement. Method: a published partitioned table, option off, two
    // partitions without FULL.
    let relation = public("m");
    let lacking = Membership {
        is_published: true,
        replica_identity_not_full: vec![public("m_a"), public("m_b")],
        published_as: PublishedAs::Partitions,
    };
    let message = lacking
        .not_ready_message("pub", &relation)
        .expect("not ready");
    assert_eq!(
        message,
        r#"Database table "public"."m" is partitioned, and the publication "pub" publishes its partitions' changes under their own names (publish_via_partition_root is off) and has tables in its partition tree without replica identity FULL ("public"."m_a", "public"."m_b"), and ELECTRIC_MANUAL_TABLE_PUBLISHING=true keeps ampere from changing that. As the table's owner (or a superuser), run: ALTER PUBLICATION "pub" SET (publish_via_partition_root = true); ALTER TABLE "public"."m_a" REPLICA IDENTITY FULL; ALTER TABLE "public"."m_b" REPLICA IDENTITY FULL;"#
    );
}

#[test]
fn a_partition_published_under_its_partitioned_table_is_refused_in_both_modes() {
    // Goal: Postgres publishes a partition's changes under one relation only; once its
    // partitioned table is published (via partition root) a shape on the partition would
    // see none, so it is refused (400), naming the table to ask for instead.
    let ancestor = PublishedAs::Ancestor(public("m"));
    let error = require_published_as_itself(&ancestor, "pub", &public("m_a"))
        .expect_err("automatic: refused");
    let SnapshotError::Refused(refusal) = &error else {
        panic!("{error:?}");
    };
    assert_eq!(refusal.kind, RefusalKind::Unsupported);
    assert!(
        refusal.message.starts_with(
            r#"Database table "public"."m_a" is a partition of "public"."m", which is in the publication"#
        ),
        "{}",
        refusal.message
    );
    let manual = Membership {
        is_published: true,
        replica_identity_not_full: vec![],
        published_as: ancestor,
    };
    let error = require_ready(Some(manual), "pub", &public("m_a")).expect_err("manual: refused");
    assert!(matches!(error, SnapshotError::Refused(_)), "{error:?}");
}

#[test]
fn a_partitioned_table_without_publish_via_partition_root_names_the_alter_in_automatic_mode() {
    let error = require_published_as_itself(&PublishedAs::Partitions, "pub", &public("m"))
        .expect_err("not published as itself");
    let SnapshotError::Refused(refusal) = &error else {
        panic!("{error:?}");
    };
    assert_eq!(
        refusal.kind,
        RefusalKind::Privilege,
        "403: an administrator's to fix"
    );
    let message = &refusal.message;
    assert!(
        message
            .ends_with(r#"run: ALTER PUBLICATION "pub" SET (publish_via_partition_root = true);"#),
        "{message}"
    );
    assert_eq!(
        require_published_as_itself(&PublishedAs::Itself, "pub", &public("m"))
            .map_err(|e| e.to_string()),
        Ok(())
    );
}
