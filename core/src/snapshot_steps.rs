//! A new shape's initial snapshot (SL-5, SN-2, SN-3; protocol.md §6.2): the order, once.
//! Each Postgres adapter (io-real, io-sim) implements the steps on one connection of its own;
//! [`take`] runs them, so the simulation checks the order production runs.
//!
//! The order and why:
//! 1. SL-5: the table joins the publication (with `REPLICA IDENTITY FULL`, on every table of
//!    its partition tree for a partitioned table), so every change committed from here on is
//!    decoded for it, under its own relation ([`PublishedAs`]). With
//!    `ELECTRIC_MANUAL_TABLE_PUBLISHING` ([`TablePublishing::Manual`]) the operator does both:
//!    this step only checks that they did, and fails with [`SnapshotError::NotPublished`]
//!    naming the SQL to run. The same check runs alone before a shape is created
//!    ([`check_published`]).
//! 2. SN-2: wait until every transaction in progress *at that moment* has ended; a writer
//!    that began before the table joined may have changes pgoutput will not send.
//! 3. SN-3, one `REPEATABLE READ READ ONLY` transaction: lock the table against DDL
//!    (`ACCESS SHARE`; `LOCK` takes no snapshot), take `pg_current_snapshot()` (the first
//!    statement that needs one fixes the transaction's snapshot), read the table's catalog
//!    entry and check it against the shape's schema, then stream the rows through the
//!    rendered where clause. The lock makes the latest catalog (which the rows query and the
//!    check resolve columns with) the snapshot's catalog.
//! 4. Chunks are written as rows arrive; the last ends with `snapshot-end`; the transaction
//!    commits, then the writer finishes.
//!
//! A `log=changes_only` shape ([`LogMode::ChangesOnly`]) runs every step but the rows query:
//! its log starts with a chunk `0_0` holding `snapshot-end` alone (as Electric's does), and
//! the transaction still records the snapshot that replication is stitched to (transactions
//! it saw are skipped, SN-4), so no change from before it is served and none after it is
//! lost. Not reading the table keeps such a shape on a huge table as quick as on an empty one.
//!
//! Never: retries (the caller decides), holds all rows (at most two chunks, see
//! [`SnapshotChunks`]), reads a clock (the adapter's `pause` waits; the wait is counted in
//! polls), or alters the publication or a table in [`TablePublishing::Manual`].

use std::future::Future;
use std::time::Duration;

use crate::chunk::{check_schema_unchanged, SnapshotChunks, SnapshotColumns};
use crate::ports::{
    DisconnectKind, RefusalKind, SnapshotError, SnapshotRefusal, SnapshotRequest, SnapshotWriter,
};
use crate::shape::{quote_ident, LogMode, RelationName, TableSchema};
use crate::snapshot::PgSnapshot;

/// How long SN-2 waits for the transactions in progress after the publication change.
pub const XIP_WAIT_MAX: Duration = Duration::from_secs(30);
/// How often SN-2 asks whether they are still running.
pub const XIP_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A row in the table's column order; columns the query did not fetch are `None`.
pub type TextRow = Vec<Option<String>>;

/// Who makes a shape's table replicable (`ELECTRIC_MANUAL_TABLE_PUBLISHING`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TablePublishing {
    /// SL-5: ampere adds the table to the publication and sets `REPLICA IDENTITY FULL`.
    #[default]
    Automatic,
    /// The operator does both; ampere alters neither the publication nor any table and
    /// refuses a shape on a table that is not ready, naming the SQL to run.
    Manual {
        /// The publication ampere streams, for the check before a shape is created (the
        /// snapshot checks [`SnapshotRequest::publication`], the same configured name).
        publication: String,
    },
}

/// A table's standing with a publication, as the catalog says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    /// The publication publishes the table (listed, `FOR ALL TABLES` or its schema).
    pub is_published: bool,
    /// The tables whose replica identity is not `FULL` (`relreplident <> 'f'`): the table
    /// itself, and for a partitioned table each table of its partition tree (Postgres writes
    /// a partition's old rows by the partition's own setting, which its parent's does not
    /// change). Empty when updates and deletes carry whole old rows, which shapes need (SL-7).
    pub replica_identity_not_full: Vec<RelationName>,
    /// Under which relation the publication publishes the table's changes.
    pub published_as: PublishedAs,
}

/// Under which relation a publication publishes a table's changes: its own, unless
/// partitioning intervenes. pgoutput names one relation per change, so a shape sees a table's
/// changes only when they come under that table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublishedAs {
    /// The table's own: every table but the two cases below.
    Itself,
    /// A partitioned table whose publication does not publish via partition root
    /// (`publish_via_partition_root` off): its partitions' changes come under their own
    /// names, none under the partitioned table's.
    Partitions,
    /// A partition whose changes come under this partitioned table (an ancestor the
    /// publication publishes, with `publish_via_partition_root` on).
    Ancestor(RelationName),
}

impl Membership {
    /// `None` when the table is ready; otherwise what it lacks and the exact SQL, quoted, an
    /// administrator must run (the text of [`SnapshotError::NotPublished`]). A partition
    /// published under its ancestor is not for an administrator to fix: see
    /// [`require_published_as_itself`].
    pub(crate) fn not_ready_message(
        &self,
        publication: &str,
        relation: &RelationName,
    ) -> Option<String> {
        let quoted = quote_ident(publication);
        let mut lacks = Vec::new();
        let mut sql = Vec::new();
        if !self.is_published {
            lacks.push(format!("is missing from the publication {quoted}"));
            sql.push(format!("ALTER PUBLICATION {quoted} ADD TABLE {relation};"));
        }
        if self.published_as == PublishedAs::Partitions {
            lacks.push(format!(
                "is partitioned, and the publication {quoted} publishes its partitions' \
                 changes under their own names (publish_via_partition_root is off)"
            ));
            sql.push(via_partition_root_sql(publication));
        }
        if !self.replica_identity_not_full.is_empty() {
            let is_own = self.replica_identity_not_full == [relation.clone()];
            lacks.push(if is_own {
                "does not have its replica identity set to FULL".to_owned()
            } else {
                let tables: Vec<String> = self
                    .replica_identity_not_full
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                format!(
                    "has tables in its partition tree without replica identity FULL ({})",
                    tables.join(", ")
                )
            });
            for table in &self.replica_identity_not_full {
                sql.push(format!("ALTER TABLE {table} REPLICA IDENTITY FULL;"));
            }
        }
        if sql.is_empty() {
            return None;
        }
        Some(format!(
            "Database table {relation} {}, and ELECTRIC_MANUAL_TABLE_PUBLISHING=true keeps \
             ampere from changing that. As the table's owner (or a superuser), run: {}",
            lacks.join(" and "),
            sql.join(" ")
        ))
    }
}

/// `ALTER PUBLICATION … SET (publish_via_partition_root = true);` for `publication`.
fn via_partition_root_sql(publication: &str) -> String {
    format!(
        "ALTER PUBLICATION {} SET (publish_via_partition_root = true);",
        quote_ident(publication)
    )
}

/// Whether a shape on `relation` would see the changes `publication` publishes for it (see
/// [`PublishedAs`]), for [`TablePublishing::Automatic`], where ampere added the table itself
/// and would have turned `publish_via_partition_root` on at startup had it been allowed to.
///
/// Both are refusals ([`SnapshotError::Refused`]: retrying cannot help, so the shape's
/// clients get the reason, not a 409 that sends them round again).
/// [`PublishedAs::Partitions`] is [`RefusalKind::Privilege`] naming the SQL an administrator
/// must run (403: ampere's role may not alter the publication, or someone turned the option
/// off since startup); [`PublishedAs::Ancestor`] is [`RefusalKind::Unsupported`] (400 on
/// `table`): Postgres cannot publish a partition's changes under both relations, and shapes
/// on the partitioned table have them.
pub fn require_published_as_itself(
    published_as: &PublishedAs,
    publication: &str,
    relation: &RelationName,
) -> Result<(), SnapshotError> {
    match published_as {
        PublishedAs::Itself => Ok(()),
        PublishedAs::Partitions => Err(SnapshotError::Refused(SnapshotRefusal {
            kind: RefusalKind::Privilege,
            message: format!(
                "Database table {relation} is partitioned, and the publication {} publishes \
                 its partitions' changes under their own names (publish_via_partition_root \
                 is off), so a shape on it would miss them. ampere turns it on at startup \
                 only where its role owns the publication; as the publication's owner (or a \
                 superuser), run: {}",
                quote_ident(publication),
                via_partition_root_sql(publication)
            ),
        })),
        PublishedAs::Ancestor(ancestor) => Err(partition_published_under(relation, ancestor)),
    }
}

/// The refusal of a shape on `relation`, a partition whose changes the publication publishes
/// under its partitioned table `ancestor`.
fn partition_published_under(relation: &RelationName, ancestor: &RelationName) -> SnapshotError {
    SnapshotError::Refused(SnapshotRefusal {
        kind: RefusalKind::Unsupported,
        message: format!(
            "Database table {relation} is a partition of {ancestor}, which is in the \
             publication: Postgres publishes changes to {relation} as changes to {ancestor} \
             (publish_via_partition_root), so a shape on {relation} would miss them. Request \
             a shape on {ancestor}, with a where clause selecting this partition's rows"
        ),
    })
}

/// The steps of [`take`], on one adapter's connection (nobody else's: the steps run a
/// transaction on it). Errors come as [`SnapshotError`]s: a vanished table or column is
/// [`SnapshotError::SchemaChanged`].
pub trait SnapshotSteps: Send {
    /// SL-5, in one transaction under a short lock timeout: `ALTER PUBLICATION … ADD TABLE`
    /// (already a member is fine), then `REPLICA IDENTITY FULL` on the table and, for a
    /// partitioned table, on every table of its partition tree, each unless it has it. First
    /// fails as [`require_published_as_itself`] says when the publication would not publish
    /// the table's changes under it ([`PublishedAs`]), altering nothing.
    fn add_to_publication(
        &mut self,
        publication: &str,
        relation: &RelationName,
    ) -> impl Future<Output = Result<(), SnapshotError>> + Send;
    /// [`TablePublishing::Manual`]: the table's [`Membership`] in `publication` (a missing
    /// publication publishes nothing); `None` when the table does not exist. Alters nothing.
    fn membership(
        &mut self,
        publication: &str,
        relation: &RelationName,
    ) -> impl Future<Output = Result<Option<Membership>, SnapshotError>> + Send;
    /// SN-2: a snapshot whose `xip` lists every transaction in progress now, including one
    /// whose xid is above every completed one.
    fn in_progress(&mut self) -> impl Future<Output = Result<PgSnapshot, SnapshotError>> + Send;
    /// SN-2: how many of `in_progress.xip` are still in progress (`pg_xact_status`).
    fn still_running(
        &mut self,
        in_progress: &PgSnapshot,
    ) -> impl Future<Output = Result<u64, SnapshotError>> + Send;
    /// Waits `duration` on the adapter's clock.
    fn pause(&mut self, duration: Duration) -> impl Future<Output = ()> + Send;
    /// SN-3: `BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`, with SL-3's display settings
    /// for this transaction.
    fn begin_read(&mut self) -> impl Future<Output = Result<(), SnapshotError>> + Send;
    /// SN-3: `LOCK TABLE … IN ACCESS SHARE MODE`: DDL on the table waits for this
    /// transaction from here on.
    fn lock_table(
        &mut self,
        relation: &RelationName,
    ) -> impl Future<Output = Result<(), SnapshotError>> + Send;
    /// `pg_current_snapshot()`, which fixes the transaction's snapshot.
    fn current_snapshot(
        &mut self,
    ) -> impl Future<Output = Result<PgSnapshot, SnapshotError>> + Send;
    /// The table's catalog entry as the transaction sees it, `None` if it is gone.
    fn table_schema(
        &mut self,
        relation: &RelationName,
    ) -> impl Future<Output = Result<Option<TableSchema>, SnapshotError>> + Send;
    /// Starts the rows query: `columns.fetched` of `schema.relation`, as Postgres text,
    /// filtered by `columns.filter`.
    fn query_rows(
        &mut self,
        schema: &TableSchema,
        columns: &SnapshotColumns,
    ) -> impl Future<Output = Result<(), SnapshotError>> + Send;
    /// The rows query's next row, `None` after the last.
    fn next_row(&mut self) -> impl Future<Output = Result<Option<TextRow>, SnapshotError>> + Send;
    /// `COMMIT`: the read ends, the lock is released.
    fn commit(&mut self) -> impl Future<Output = Result<(), SnapshotError>> + Send;
}

/// Takes the snapshot of `request` with `steps`, the table made replicable as `publishing`
/// says: chunks `0_0 … 0_N` go to `writer` as they fill (for [`LogMode::ChangesOnly`], no rows
/// query and one chunk `0_0` holding `snapshot-end` alone), `writer.finish()` runs after the
/// transaction committed. Returns the transaction's `pg_current_snapshot()`.
pub async fn take<S: SnapshotSteps, W: SnapshotWriter>(
    steps: &mut S,
    request: &SnapshotRequest,
    publishing: &TablePublishing,
    writer: W,
) -> Result<PgSnapshot, SnapshotError> {
    let relation = &request.schema.relation;
    match publishing {
        TablePublishing::Automatic => {
            steps
                .add_to_publication(&request.publication, relation)
                .await?;
        }
        TablePublishing::Manual { .. } => {
            check_published(steps, &request.publication, relation).await?;
        }
    }
    wait_for_in_progress(steps).await?;
    let columns = SnapshotColumns::new(&request.definition, &request.schema)?;
    steps.begin_read().await?;
    steps.lock_table(relation).await?;
    let snapshot = steps.current_snapshot().await?;
    let seen = steps.table_schema(relation).await?;
    check_schema_unchanged(&request.schema, seen.as_ref())?;
    let mut chunks = SnapshotChunks::new(writer, request.chunk_bytes_threshold);
    if request.definition.log == LogMode::Full {
        steps.query_rows(&request.schema, &columns).await?;
        while let Some(row) = steps.next_row().await? {
            assert_eq!(
                row.len(),
                request.schema.columns.len(),
                "invariant: snapshot rows come in the table's column order"
            );
            chunks.push(columns.encoder.snapshot_row(&row)).await?;
        }
    }
    let writer = chunks.finish(&snapshot.snapshot_end_json()).await?;
    steps.commit().await?;
    writer.finish().await.map_err(|e| SnapshotError::Store {
        message: crate::error_chain(&e),
    })?;
    Ok(snapshot)
}

/// Step 1 in [`TablePublishing::Manual`]: `Ok` when `publication` publishes the table's
/// changes under it and every replica identity it needs is `FULL`;
/// [`SnapshotError::NotPublished`] naming the SQL to run when not; a refusal (400) for a
/// partition published under its partitioned table ([`PublishedAs::Ancestor`]);
/// [`SnapshotError::SchemaChanged`] when the table is gone.
pub async fn check_published<S: SnapshotSteps>(
    steps: &mut S,
    publication: &str,
    relation: &RelationName,
) -> Result<(), SnapshotError> {
    let membership = steps.membership(publication, relation).await?;
    require_ready(membership, publication, relation)
}

/// [`check_published`]'s verdict on a [`SnapshotSteps::membership`] answer, for an adapter
/// that reads membership on a connection of another kind.
pub fn require_ready(
    membership: Option<Membership>,
    publication: &str,
    relation: &RelationName,
) -> Result<(), SnapshotError> {
    let membership = membership.ok_or_else(|| SnapshotError::SchemaChanged {
        message: format!("table {relation} no longer exists"),
    })?;
    if let PublishedAs::Ancestor(ancestor) = &membership.published_as {
        return Err(partition_published_under(relation, ancestor));
    }
    match membership.not_ready_message(publication, relation) {
        None => Ok(()),
        Some(message) => Err(SnapshotError::NotPublished { message }),
    }
}

/// SN-2: polls every [`XIP_POLL_INTERVAL`] until none of the transactions in progress now is
/// running, for at most [`XIP_WAIT_MAX`] (then a transient error).
async fn wait_for_in_progress<S: SnapshotSteps>(steps: &mut S) -> Result<(), SnapshotError> {
    const MAX_POLLS: u128 = XIP_WAIT_MAX.as_millis() / XIP_POLL_INTERVAL.as_millis();
    let in_progress = steps.in_progress().await?;
    if in_progress.xip.is_empty() {
        return Ok(());
    }
    let mut polls = 0;
    loop {
        let running = steps.still_running(&in_progress).await?;
        if running == 0 {
            return Ok(());
        }
        if polls == MAX_POLLS {
            return Err(SnapshotError::Postgres {
                message: format!(
                    "{running} transaction(s) in progress at {in_progress} still running \
                     after {XIP_WAIT_MAX:?}"
                ),
                kind: DisconnectKind::Transient,
            });
        }
        steps.pause(XIP_POLL_INTERVAL).await;
        polls += 1;
    }
}

#[cfg(feature = "contract")]
pub mod contract;
#[cfg(test)]
mod tests;
