//! Initial snapshots of new shapes (deploy-semantics SL-5, SN-2, SN-3; protocol.md §6.2): the
//! steps of [`ampere_core::snapshot_steps`] on a real Postgres connection, and the
//! publication check of `ELECTRIC_MANUAL_TABLE_PUBLISHING` before a shape is created.
//!
//! Never: builds JSON in SQL (values come back as Postgres text, JSON is encoded by the
//! core's encoder), holds all rows in memory (the rows stream in), retries, or runs
//! `ALTER PUBLICATION`/`ALTER TABLE` unless [`TablePublishing::Automatic`] asks for SL-5.
//!
//! Asks of callers: a connection nobody else uses (the steps run transactions on it, which a
//! failure leaves open: drop the connection after an error).

use std::pin::Pin;
use std::time::Duration;

use futures::TryStreamExt;
use postgres_protocol::escape::escape_literal;
use tokio_postgres::{Client, RowStream};

use ampere_core::chunk::{check_schema_unchanged, SnapshotColumns};
use ampere_core::ports::{DisconnectKind, PgError, RefusalKind, SnapshotError, SnapshotRefusal};
use ampere_core::shape::{quote_ident, ColumnSchema, RelationName, TableSchema};
use ampere_core::snapshot::PgSnapshot;
use ampere_core::snapshot_steps::{self, Membership, SnapshotSteps, TablePublishing, TextRow};
use ampere_core::subset::{SubsetQuery, SubsetRows};
use ampere_core::Lsn;

use ampere_core::error_chain;

use crate::catalog::{self, CatalogError};
use crate::membership;
use crate::pg::{sql_error_kind, RealPg};
use crate::replication::DISPLAY_SETTINGS;

/// SL-5's lock timeout for `ALTER PUBLICATION` / `ALTER TABLE`.
const MEMBERSHIP_LOCK_TIMEOUT: &str = "5s";
/// SQLSTATE `duplicate_object`: the table is already in the publication.
const DUPLICATE_OBJECT: &str = "42710";
/// SQLSTATE `insufficient_privilege`: not the table's owner (`ALTER PUBLICATION … ADD TABLE`,
/// `ALTER TABLE`), or no `SELECT` on it.
const INSUFFICIENT_PRIVILEGE: &str = "42501";
/// SQLSTATEs with which `ALTER PUBLICATION … ADD TABLE` refuses a relation it will never
/// publish: `invalid_parameter_value` (a system, temporary or unlogged table),
/// `wrong_object_type` (not a table), `feature_not_supported`.
const UNPUBLISHABLE: [&str; 3] = ["22023", "42809", "0A000"];

/// The snapshot steps on one connection.
pub struct SnapshotConnection {
    client: Client,
    /// The rows query in flight, with the column each result column fills.
    rows: Option<(Pin<Box<RowStream>>, Vec<usize>)>,
    /// The table's column count.
    width: usize,
}

impl SnapshotConnection {
    /// Steps on `client`, which nobody else uses meanwhile.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            rows: None,
            width: 0,
        }
    }

    /// The connection back, for other statements once the steps are done (nothing of the
    /// steps outlives their transaction: the settings are `SET LOCAL`).
    pub(crate) fn into_client(self) -> Client {
        self.client
    }
}

impl SnapshotSteps for SnapshotConnection {
    async fn add_to_publication(
        &mut self,
        publication: &str,
        relation: &RelationName,
    ) -> Result<(), SnapshotError> {
        add_to_publication(&mut self.client, publication, relation).await
    }

    async fn membership(
        &mut self,
        publication: &str,
        relation: &RelationName,
    ) -> Result<Option<Membership>, SnapshotError> {
        membership(&self.client, publication, relation).await
    }

    async fn in_progress(&mut self) -> Result<PgSnapshot, SnapshotError> {
        in_progress(&self.client).await
    }

    async fn still_running(&mut self, in_progress: &PgSnapshot) -> Result<u64, SnapshotError> {
        const STILL_RUNNING: &str = "SELECT count(*) \
             FROM pg_catalog.pg_snapshot_xip($1::text::pg_snapshot) AS x \
             WHERE pg_catalog.pg_xact_status(x) = 'in progress'";
        let row = self
            .client
            .query_one(STILL_RUNNING, &[&in_progress.to_string()])
            .await
            .map_err(pg("pg_xact_status"))?;
        let running: i64 = row.try_get(0).map_err(pg("pg_xact_status"))?;
        Ok(running.unsigned_abs())
    }

    async fn pause(&mut self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }

    async fn begin_read(&mut self) -> Result<(), SnapshotError> {
        let begin = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; {}",
            display_settings_sql()
        );
        self.client
            .batch_execute(&begin)
            .await
            .map_err(pg("BEGIN REPEATABLE READ"))
    }

    async fn lock_table(&mut self, relation: &RelationName) -> Result<(), SnapshotError> {
        self.client
            .batch_execute(&format!("LOCK TABLE {relation} IN ACCESS SHARE MODE"))
            .await
            .map_err(pg("LOCK TABLE … IN ACCESS SHARE MODE"))
    }

    async fn current_snapshot(&mut self) -> Result<PgSnapshot, SnapshotError> {
        current_snapshot(&self.client).await
    }

    async fn table_schema(
        &mut self,
        relation: &RelationName,
    ) -> Result<Option<TableSchema>, SnapshotError> {
        catalog::table_schema(&self.client, relation)
            .await
            .map_err(catalog_error)
    }

    async fn query_rows(
        &mut self,
        schema: &TableSchema,
        columns: &SnapshotColumns,
    ) -> Result<(), SnapshotError> {
        let sql = rows_sql(schema, columns);
        let rows = self
            .client
            .query_raw(sql.as_str(), std::iter::empty::<&str>())
            .await
            .map_err(pg("snapshot query"))?;
        self.rows = Some((Box::pin(rows), columns.fetched.clone()));
        self.width = schema.columns.len();
        Ok(())
    }

    async fn next_row(&mut self) -> Result<Option<TextRow>, SnapshotError> {
        let (rows, fetched) = self
            .rows
            .as_mut()
            .expect("invariant: next_row follows query_rows");
        let Some(row) = rows.try_next().await.map_err(pg("reading snapshot rows"))? else {
            return Ok(None);
        };
        let mut values = vec![None; self.width];
        for (position, &column) in fetched.iter().enumerate() {
            let value: Option<&str> = row
                .try_get(position)
                .map_err(pg("decoding a snapshot row"))?;
            values[column] = value.map(str::to_owned);
        }
        Ok(Some(values))
    }

    async fn commit(&mut self) -> Result<(), SnapshotError> {
        self.rows = None;
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(pg("COMMIT"))
    }
}

/// A subset read (protocol.md §6.10) on `client`, which nobody else uses meanwhile: one
/// `REPEATABLE READ READ ONLY` transaction that locks the table against DDL, records
/// `pg_current_snapshot()` and the WAL position, checks the table is still the shape's, and
/// streams the rows through the shape's and the subset's where clauses, ordered and limited.
/// A failure leaves the transaction open: drop the connection after an error.
pub(crate) async fn query_subset(
    client: &Client,
    query: &SubsetQuery,
) -> Result<SubsetRows, SnapshotError> {
    let columns = SnapshotColumns::new(&query.definition, &query.schema)?;
    let begin = format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; {}",
        display_settings_sql()
    );
    client
        .batch_execute(&begin)
        .await
        .map_err(pg("BEGIN REPEATABLE READ"))?;
    let relation = &query.schema.relation;
    client
        .batch_execute(&format!("LOCK TABLE {relation} IN ACCESS SHARE MODE"))
        .await
        .map_err(pg("LOCK TABLE … IN ACCESS SHARE MODE"))?;
    let snapshot = current_snapshot(client).await?;
    // A standby (Postgres 16+ decodes on one) has no insert position: its replay position
    // is the WAL its snapshot reflects.
    const WAL_POSITION: &str = "SELECT (CASE WHEN pg_catalog.pg_is_in_recovery() \
         THEN pg_catalog.pg_last_wal_replay_lsn() ELSE pg_catalog.pg_current_wal_lsn() END)::text";
    let row = client
        .query_one(WAL_POSITION, &[])
        .await
        .map_err(pg("pg_current_wal_lsn()"))?;
    let text: String = row.try_get(0).map_err(pg("pg_current_wal_lsn()"))?;
    let database_lsn: Lsn = text.parse().map_err(|_| SnapshotError::Postgres {
        message: format!("pg_current_wal_lsn() returned {text:?}, not an LSN"),
        kind: DisconnectKind::Transient,
    })?;
    let seen = catalog::table_schema(client, relation)
        .await
        .map_err(catalog_error)?;
    check_schema_unchanged(&query.schema, seen.as_ref())?;
    let sql = subset_sql(query, &columns);
    let rows = client
        .query_raw(sql.as_str(), std::iter::empty::<&str>())
        .await
        .map_err(subset_error)?;
    let mut rows = std::pin::pin!(rows);
    let mut data = String::new();
    let mut count = 0;
    while let Some(row) = rows.try_next().await.map_err(subset_error)? {
        let mut values = columns.empty_row();
        for (position, &column) in columns.fetched.iter().enumerate() {
            let value: Option<&str> = row.try_get(position).map_err(pg("decoding a subset row"))?;
            values[column] = value.map(str::to_owned);
        }
        if count > 0 {
            data.push(',');
        }
        data.push_str(&columns.encoder.subset_row(&values, query.snapshot_mark));
        count += 1;
    }
    client.batch_execute("COMMIT").await.map_err(pg("COMMIT"))?;
    Ok(SubsetRows {
        snapshot,
        database_lsn,
        data,
        rows: count,
    })
}

/// `SELECT <text of each fetched column> FROM <relation> WHERE (shape) AND (subset) ORDER BY …
/// LIMIT … OFFSET …`, every part rendered from typed trees.
fn subset_sql(query: &SubsetQuery, columns: &SnapshotColumns) -> String {
    let texts: Vec<String> = columns
        .fetched
        .iter()
        .map(|&i| text_expression(&query.schema.columns[i]))
        .collect();
    format!(
        "SELECT {} FROM {}{}",
        texts.join(", "),
        query.schema.relation,
        query
            .subset
            .sql_tail(&query.schema.relation, columns.filter.as_ref())
    )
}

/// A failure of the subset's rows query: a data exception (SQLSTATE class 22: a division by
/// zero, a value that does not cast) is the request's fault; the rest maps as any snapshot
/// query's.
fn subset_error(error: tokio_postgres::Error) -> SnapshotError {
    let code = error.code().map(tokio_postgres::error::SqlState::code);
    match (code, error.as_db_error()) {
        (Some(code), Some(db)) if code.starts_with("22") => SnapshotError::QueryRejected {
            message: db.message().to_owned(),
        },
        _ => pg("subset query")(error),
    }
}

/// SL-5, one transaction under a 5 s lock timeout: first the publication's standing
/// ([`membership::standing`]): a table whose changes it would not publish under the table
/// itself fails as [`snapshot_steps::require_published_as_itself`] says, altering nothing;
/// then `ALTER PUBLICATION … ADD TABLE` (already a member is fine), then `REPLICA IDENTITY
/// FULL` on each of the table and, for a partitioned table, the tables of its partition tree
/// that lack it (Postgres writes a partition's old rows by the partition's own setting). A
/// failure of the latter fails the whole step: without full old rows updates cannot be
/// served (SL-7).
///
/// A partition attached after this ran has the replica identity it came with: its first
/// update or delete without a whole old row rotates the partitioned table's shapes (SL-7),
/// and their re-request runs this again, which sets it.
pub async fn add_to_publication(
    client: &mut Client,
    publication: &str,
    relation: &RelationName,
) -> Result<(), SnapshotError> {
    let mut tx = client.transaction().await.map_err(pg("BEGIN"))?;
    let lock_timeout = format!("SET LOCAL lock_timeout = '{MEMBERSHIP_LOCK_TIMEOUT}'");
    tx.batch_execute(&lock_timeout)
        .await
        .map_err(pg("SET lock_timeout"))?;
    let (_, published_as) = membership::standing(&tx, publication, relation)
        .await
        .map_err(pg("reading the publication's tables"))?
        .ok_or_else(|| gone(relation))?;
    snapshot_steps::require_published_as_itself(&published_as, publication, relation)?;
    let add = format!(
        "ALTER PUBLICATION {} ADD TABLE {relation}",
        quote_ident(publication)
    );
    let savepoint = tx
        .savepoint("ampere_add_table")
        .await
        .map_err(pg("SAVEPOINT"))?;
    match savepoint.batch_execute(&add).await {
        Ok(()) => savepoint.commit().await.map_err(pg("RELEASE SAVEPOINT"))?,
        Err(e) if e.code().map(tokio_postgres::error::SqlState::code) == Some(DUPLICATE_OBJECT) => {
            savepoint
                .rollback()
                .await
                .map_err(pg("ROLLBACK TO SAVEPOINT"))?;
        }
        Err(e) => {
            return Err(membership_error(
                "ALTER PUBLICATION … ADD TABLE",
                relation,
                e,
            ))
        }
    }
    let not_full = membership::replica_identity_not_full(&tx, relation)
        .await
        .map_err(pg("reading relreplident"))?;
    for table in &not_full {
        let full = format!("ALTER TABLE {table} REPLICA IDENTITY FULL");
        tx.batch_execute(&full)
            .await
            .map_err(|e| membership_error("ALTER TABLE … REPLICA IDENTITY FULL", table, e))?;
    }
    tx.commit().await.map_err(pg("COMMIT"))
}

/// The error for a table that vanished since the shape was requested.
fn gone(relation: &RelationName) -> SnapshotError {
    SnapshotError::SchemaChanged {
        message: format!("table {relation} no longer exists"),
    }
}

/// [`PgPort::check_table_published`](ampere_core::ports::PgPort::check_table_published) for
/// `pg`: with [`TablePublishing::Manual`], the snapshot's first step on a pooled connection
/// (read-only: one catalog query); otherwise nothing.
pub(crate) async fn check_table_published(
    pg: &RealPg,
    relation: &RelationName,
) -> Result<(), SnapshotError> {
    let TablePublishing::Manual { publication } = pg.table_publishing() else {
        return Ok(());
    };
    let admin = pg.admin().await.map_err(|e| SnapshotError::Postgres {
        message: error_chain(&e),
        kind: e.kind(),
    })?;
    let read = membership(&admin, publication, relation).await;
    if read.is_ok() {
        admin.release();
    }
    snapshot_steps::require_ready(read?, publication, relation)
}

/// [`membership::membership`], its failure mapped as any snapshot query's.
async fn membership(
    client: &Client,
    publication: &str,
    relation: &RelationName,
) -> Result<Option<Membership>, SnapshotError> {
    membership::membership(client, publication, relation)
        .await
        .map_err(pg("reading the publication's tables"))
}

/// SN-2's snapshot of the transactions in progress now.
///
/// `pg_current_snapshot()` lists in `xip` only running xids below its `xmax`, which is
/// `latestCompletedXid + 1`: a running transaction whose xid is above every completed one is
/// missing from it (seen: `727:727:` while 727 was inserting). So first assign and commit an xid
/// of our own: every transaction that had an xid before is then below the next snapshot's
/// `xmax`, so in its `xip` if still running. One xid per snapshot is the price.
async fn in_progress(client: &Client) -> Result<PgSnapshot, SnapshotError> {
    client
        .query_one("SELECT pg_catalog.pg_current_xact_id()", &[])
        .await
        .map_err(pg("pg_current_xact_id()"))?;
    current_snapshot(client).await
}

async fn current_snapshot(client: &Client) -> Result<PgSnapshot, SnapshotError> {
    let row = client
        .query_one("SELECT pg_catalog.pg_current_snapshot()::text", &[])
        .await
        .map_err(pg("pg_current_snapshot()"))?;
    let text: String = row.try_get(0).map_err(pg("pg_current_snapshot()"))?;
    PgSnapshot::parse(&text).ok_or_else(|| SnapshotError::Postgres {
        message: format!("pg_current_snapshot() returned {text:?}, not xmin:xmax:xip"),
        kind: DisconnectKind::Transient,
    })
}

/// `SELECT <text of each fetched column> FROM <relation> [WHERE <rendered filter>]`.
fn rows_sql(schema: &TableSchema, columns: &SnapshotColumns) -> String {
    let texts: Vec<String> = columns
        .fetched
        .iter()
        .map(|&i| text_expression(&schema.columns[i]))
        .collect();
    format!(
        "SELECT {} FROM {}{}",
        texts.join(", "),
        schema.relation,
        columns.where_sql()
    )
}

/// A column as Postgres text output. `bpchar::text` strips the padding, `concat` keeps it
/// (protocol.md §5.4); `concat` also turns NULL into `''`, hence the CASE.
fn text_expression(column: &ColumnSchema) -> String {
    let name = quote_ident(&column.name);
    if column.typname == "bpchar" && column.dims == 0 {
        format!("CASE WHEN {name} IS NULL THEN NULL ELSE concat({name}, '') END")
    } else {
        format!("{name}::text")
    }
}

/// SL-3's display settings for this transaction only, identical to the replication
/// connection's startup parameters so both paths render values alike.
fn display_settings_sql() -> String {
    DISPLAY_SETTINGS
        .iter()
        .map(|(name, value)| format!("SET LOCAL {name} = {};", escape_literal(value)))
        .collect()
}

/// Maps a failure of SL-5's statements: on top of [`pg`]'s mapping, a relation Postgres will
/// never publish is refused (400), and a missing privilege names the way out (403).
fn membership_error(
    during: &'static str,
    relation: &RelationName,
    error: tokio_postgres::Error,
) -> SnapshotError {
    let code = error.code().map(tokio_postgres::error::SqlState::code);
    let Some(db) = error.as_db_error() else {
        return pg(during)(error);
    };
    let reason = match db.detail() {
        Some(detail) => format!("{} ({detail})", db.message()),
        None => db.message().to_owned(),
    };
    match code {
        Some(INSUFFICIENT_PRIVILEGE) => SnapshotError::Refused(SnapshotRefusal {
            kind: RefusalKind::Privilege,
            message: format!(
                "Unable to create initial snapshot: {reason}. ampere's database role must own \
                 {relation} to add it to the publication and set its replica identity to FULL \
                 (or an administrator does both and runs ampere with \
                 ELECTRIC_MANUAL_TABLE_PUBLISHING=true)"
            ),
        }),
        Some(code) if UNPUBLISHABLE.contains(&code) => SnapshotError::Refused(SnapshotRefusal {
            kind: RefusalKind::Unsupported,
            message: format!("Unable to create initial snapshot: {reason}"),
        }),
        _ => pg(during)(error),
    }
}

/// Maps a driver error: a vanished table or column (42P01, 42703) means the schema changed;
/// a missing privilege (no `SELECT` on the table) is refused, as retrying cannot help.
fn pg(during: &'static str) -> impl Fn(tokio_postgres::Error) -> SnapshotError {
    move |error| {
        let message = format!("{during}: {}", error_chain(&error));
        let code = error.code().map(tokio_postgres::error::SqlState::code);
        if code == Some(INSUFFICIENT_PRIVILEGE) {
            let reason = error
                .as_db_error()
                .map_or_else(|| error_chain(&error), |db| db.message().to_owned());
            return SnapshotError::Refused(SnapshotRefusal {
                kind: RefusalKind::Privilege,
                message: format!("Unable to create initial snapshot: {reason}"),
            });
        }
        match code {
            Some("42P01" | "42703") => SnapshotError::SchemaChanged { message },
            _ => SnapshotError::Postgres {
                message,
                kind: sql_error_kind(&error),
            },
        }
    }
}

/// Maps a failed catalog read inside the snapshot transaction like any of its queries.
fn catalog_error(error: CatalogError) -> SnapshotError {
    match error {
        CatalogError::Query { source, .. } => pg("reading the catalog")(source),
        malformed @ CatalogError::Malformed { .. } => SnapshotError::Postgres {
            message: error_chain(&malformed),
            kind: DisconnectKind::Transient,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpchar_keeps_its_padding_and_nulls() {
        let column = |typname: &str, dims| ColumnSchema {
            name: "c".into(),
            type_oid: 0,
            typname: typname.into(),
            dims,
            not_null: false,
            pk_index: None,
            modifiers: vec![],
            is_enum: false,
        };
        assert_eq!(
            text_expression(&column("bpchar", 0)),
            r#"CASE WHEN "c" IS NULL THEN NULL ELSE concat("c", '') END"#
        );
        assert_eq!(text_expression(&column("bpchar", 1)), r#""c"::text"#);
        assert_eq!(text_expression(&column("int4", 0)), r#""c"::text"#);
    }
}
