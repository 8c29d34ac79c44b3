//! Initial snapshots over the model: the steps of [`ampere_core::snapshot_steps`] as requests
//! to the model, one statement each as io-real runs them, so the simulation runs the order
//! production runs.
//!
//! Deviations from io-real, none observable in the chunks: the rows query answers all rows in
//! one reply (the model has no cursors), the where clause is applied here with the core's
//! evaluator (the model has no SQL; a real Postgres runs the rendered SQL, which io-real's
//! differential test holds equal), and SN-2 does not first burn an xid of its own (the
//! model's `xip` lists every running xid).

use std::collections::VecDeque;
use std::time::Duration;

use std::cmp::Ordering;

use ampere_core::chunk::{check_schema_unchanged, SnapshotColumns};
use ampere_core::error_chain;
use ampere_core::lsn::Lsn;
use ampere_core::ports::{DisconnectKind, PgError, SnapshotError, SnapshotRequest, SnapshotWriter};
use ampere_core::shape::{RelationName, TableSchema};
use ampere_core::snapshot::PgSnapshot;
use ampere_core::snapshot_steps::{
    self, Membership, PublishedAs, SnapshotSteps, TablePublishing, TextRow,
};
use ampere_core::subset::{OrderBy, SubsetQuery, SubsetRows};
use ampere_core::where_clause::value::parse_scalar;
use ampere_core::where_clause::Type;

use super::port::{catalog_table, wire_relation, Client, SimPgError};
use super::wire::{ClientMessage, ServerMessage};

/// Takes the snapshot of `request` with `steps` (a connection of their own).
pub(crate) async fn take_snapshot<W: SnapshotWriter>(
    mut steps: SimSnapshotSteps,
    request: &SnapshotRequest,
    publishing: &TablePublishing,
    writer: W,
) -> Result<PgSnapshot, SnapshotError> {
    let snapshot = snapshot_steps::take(&mut steps, request, publishing, writer).await?;
    tracing::debug!(handle = %request.handle, relation = %request.schema.relation, ?snapshot,
        "snapshot taken");
    Ok(snapshot)
}

/// A subset read over the model, as io-real runs it: a read transaction that locks the table,
/// records its snapshot and the WAL end, checks the table is still the shape's, and reads the
/// rows; the where clauses, the order and the limit are applied here (the model has no SQL).
/// The order compares values as Postgres compares their types, text bytewise (the `C`
/// collation); ties keep the model's row order, which Postgres leaves unspecified too.
pub(crate) async fn query_subset(
    mut steps: SimSnapshotSteps,
    query: &SubsetQuery,
) -> Result<SubsetRows, SnapshotError> {
    let columns = SnapshotColumns::new(&query.definition, &query.schema)?;
    let schema = &query.schema;
    steps.begin_read().await?;
    steps.lock_table(&schema.relation).await?;
    let snapshot = steps.current_snapshot().await?;
    const DURING: &str = "pg_current_wal_lsn()";
    let ServerMessage::Lsn(database_lsn) = steps.call(DURING, ClientMessage::CurrentWalLsn).await?
    else {
        return Err(unexpected(DURING));
    };
    let seen = steps.table_schema(&schema.relation).await?;
    check_schema_unchanged(schema, seen.as_ref())?;
    let subset = &query.subset;
    let mut extra: Vec<usize> = subset
        .filter
        .iter()
        .flat_map(|f| f.columns().iter().copied())
        .chain(
            subset
                .order_by
                .iter()
                .flat_map(|o| o.keys.iter().map(|k| k.column)),
        )
        .collect();
    extra.sort_unstable();
    let mut rows = steps.filtered_rows(schema, &columns, &extra).await?;
    if let Some(filter) = &subset.filter {
        rows.retain(|row| filter.matches(row));
    }
    if let Some(order_by) = &subset.order_by {
        rows.sort_by(|a, b| compare_rows(schema, order_by, a, b));
    }
    let skip = usize::try_from(subset.offset.unwrap_or(0)).unwrap_or(usize::MAX);
    let take = subset
        .limit
        .map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
    let mut data = String::new();
    let mut count = 0;
    for mut row in rows.into_iter().skip(skip).take(take) {
        steps.keep_fetched(&columns, &mut row);
        if count > 0 {
            data.push(',');
        }
        data.push_str(&columns.encoder.subset_row(&row, query.snapshot_mark));
        count += 1;
    }
    steps.commit().await?;
    Ok(SubsetRows {
        snapshot,
        database_lsn: Lsn(database_lsn),
        data,
        rows: count,
    })
}

/// Postgres's order of two rows under `order_by`: each key's values compared as their type
/// compares them, NULLs first or last as the key says.
fn compare_rows(schema: &TableSchema, order_by: &OrderBy, a: &TextRow, b: &TextRow) -> Ordering {
    for key in &order_by.keys {
        let ordering = match (&a[key.column], &b[key.column]) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) if key.nulls_first() => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) if key.nulls_first() => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(x), Some(y)) => {
                let values = match Type::of_column(&schema.columns[key.column]) {
                    Type::Scalar(scalar) => parse_scalar(x.into(), scalar)
                        .ok()
                        .zip(parse_scalar(y.into(), scalar).ok()),
                    _ => None,
                };
                let by_value = match values {
                    Some((x, y)) => x.pg_cmp(&y),
                    None => x.as_bytes().cmp(y.as_bytes()),
                };
                if key.descending {
                    by_value.reverse()
                } else {
                    by_value
                }
            }
        };
        if ordering != Ordering::Equal {
            return ordering;
        }
    }
    Ordering::Equal
}

/// The snapshot steps on one connection to the model.
#[derive(Debug)]
pub struct SimSnapshotSteps {
    client: Client,
    /// The rows query's answer, not yet taken.
    rows: VecDeque<TextRow>,
}

impl SimSnapshotSteps {
    /// Connects to the model on `host` for a snapshot.
    pub async fn connect(host: &str) -> Result<Self, SnapshotError> {
        let client = Client::connect(host, false)
            .await
            .map_err(|e| SnapshotError::Postgres {
                message: e.message.clone(),
                kind: e.kind(),
            })?;
        Ok(Self {
            client,
            rows: VecDeque::new(),
        })
    }

    async fn call(
        &mut self,
        during: &'static str,
        request: ClientMessage,
    ) -> Result<ServerMessage, SnapshotError> {
        self.client.call(request).await.map_err(pg(during))
    }

    async fn done(
        &mut self,
        during: &'static str,
        request: ClientMessage,
    ) -> Result<(), SnapshotError> {
        match self.call(during, request).await? {
            ServerMessage::Done => Ok(()),
            _ => Err(unexpected(during)),
        }
    }

    async fn snapshot(&mut self) -> Result<PgSnapshot, SnapshotError> {
        const DURING: &str = "pg_current_snapshot()";
        let ServerMessage::Snapshot(text) =
            self.call(DURING, ClientMessage::CurrentSnapshot).await?
        else {
            return Err(unexpected(DURING));
        };
        PgSnapshot::parse(&text).ok_or_else(|| SnapshotError::Postgres {
            message: format!("pg_current_snapshot() returned {text:?}, not xmin:xmax:xip"),
            kind: DisconnectKind::Transient,
        })
    }
}

impl SimSnapshotSteps {
    /// The rows the read transaction sees that the shape's where clause admits, with the
    /// fetched columns, the filter's and `extra` (sorted) filled in.
    async fn filtered_rows(
        &mut self,
        schema: &TableSchema,
        columns: &SnapshotColumns,
        extra: &[usize],
    ) -> Result<Vec<TextRow>, SnapshotError> {
        const DURING: &str = "snapshot query";
        let mut wanted = columns.fetched.clone();
        wanted.extend_from_slice(extra);
        if let Some(filter) = &columns.filter {
            wanted.extend_from_slice(filter.columns());
        }
        wanted.sort_unstable();
        wanted.dedup();
        let query = ClientMessage::SnapshotRows {
            relation: wire_relation(&schema.relation),
            columns: wanted
                .iter()
                .map(|&i| schema.columns[i].name.clone())
                .collect(),
        };
        let ServerMessage::Rows(rows) = self.call(DURING, query).await? else {
            return Err(unexpected(DURING));
        };
        let mut admitted = Vec::with_capacity(rows.len());
        for row in rows {
            if row.len() != wanted.len() {
                return Err(unexpected(DURING));
            }
            let mut values = columns.empty_row();
            for (&column, value) in wanted.iter().zip(row) {
                values[column] = value;
            }
            if columns.filter.as_ref().is_some_and(|f| !f.matches(&values)) {
                continue;
            }
            admitted.push(values);
        }
        Ok(admitted)
    }

    /// Only the fetched columns leave the query, as io-real's SELECT list.
    fn keep_fetched(&self, columns: &SnapshotColumns, row: &mut TextRow) {
        for (column, value) in row.iter_mut().enumerate() {
            if columns.fetched.binary_search(&column).is_err() {
                *value = None;
            }
        }
    }
}

impl SnapshotSteps for SimSnapshotSteps {
    async fn add_to_publication(
        &mut self,
        publication: &str,
        relation: &RelationName,
    ) -> Result<(), SnapshotError> {
        let add = ClientMessage::AddTable {
            publication: publication.to_owned(),
            relation: wire_relation(relation),
        };
        self.done("ALTER PUBLICATION … ADD TABLE", add).await
    }

    async fn membership(
        &mut self,
        publication: &str,
        relation: &RelationName,
    ) -> Result<Option<Membership>, SnapshotError> {
        const DURING: &str = "reading the publication's tables";
        let read = ClientMessage::PublicationMembership {
            publication: publication.to_owned(),
            relation: wire_relation(relation),
        };
        match self.call(DURING, read).await? {
            // The model has no replica identities (every old row is full) and no partitions
            // (every table's changes come under it).
            ServerMessage::Membership(member) => Ok(member.map(|is_published| Membership {
                is_published,
                replica_identity_not_full: vec![],
                published_as: PublishedAs::Itself,
            })),
            _ => Err(unexpected(DURING)),
        }
    }

    async fn in_progress(&mut self) -> Result<PgSnapshot, SnapshotError> {
        self.snapshot().await
    }

    async fn still_running(&mut self, in_progress: &PgSnapshot) -> Result<u64, SnapshotError> {
        const DURING: &str = "pg_xact_status";
        let xids = in_progress.xip.iter().map(|x| x.0).collect();
        match self
            .call(DURING, ClientMessage::XactsInProgress { xids })
            .await?
        {
            ServerMessage::Count(running) => Ok(running),
            _ => Err(unexpected(DURING)),
        }
    }

    async fn pause(&mut self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }

    async fn begin_read(&mut self) -> Result<(), SnapshotError> {
        self.done("BEGIN REPEATABLE READ", ClientMessage::BeginRead)
            .await
    }

    async fn lock_table(&mut self, relation: &RelationName) -> Result<(), SnapshotError> {
        let lock = ClientMessage::LockTable {
            relation: wire_relation(relation),
        };
        self.done("LOCK TABLE … IN ACCESS SHARE MODE", lock).await
    }

    async fn current_snapshot(&mut self) -> Result<PgSnapshot, SnapshotError> {
        self.snapshot().await
    }

    async fn table_schema(
        &mut self,
        relation: &RelationName,
    ) -> Result<Option<TableSchema>, SnapshotError> {
        const DURING: &str = "reading the catalog";
        let lookup = ClientMessage::TableSchema {
            relation: wire_relation(relation),
        };
        match self.call(DURING, lookup).await? {
            ServerMessage::Table(table) => {
                Ok(table.map(|t| catalog_table(relation.clone(), t).schema))
            }
            _ => Err(unexpected(DURING)),
        }
    }

    async fn query_rows(
        &mut self,
        schema: &TableSchema,
        columns: &SnapshotColumns,
    ) -> Result<(), SnapshotError> {
        let rows = self.filtered_rows(schema, columns, &[]).await?;
        self.rows.clear();
        for mut row in rows {
            self.keep_fetched(columns, &mut row);
            self.rows.push_back(row);
        }
        Ok(())
    }

    async fn next_row(&mut self) -> Result<Option<TextRow>, SnapshotError> {
        Ok(self.rows.pop_front())
    }

    async fn commit(&mut self) -> Result<(), SnapshotError> {
        self.rows.clear();
        self.done("COMMIT", ClientMessage::Commit).await
    }
}

/// Maps a port error: a vanished table or column (42P01, 42703) means the schema changed.
fn pg(during: &'static str) -> impl Fn(SimPgError) -> SnapshotError {
    move |error| {
        let message = format!("{during}: {}", error_chain(&error));
        match error.sqlstate.as_deref() {
            Some("42P01" | "42703") => SnapshotError::SchemaChanged { message },
            _ => SnapshotError::Postgres {
                message,
                kind: error.kind(),
            },
        }
    }
}

fn unexpected(during: &str) -> SnapshotError {
    SnapshotError::Postgres {
        message: format!("{during}: unexpected reply"),
        kind: DisconnectKind::Transient,
    }
}
