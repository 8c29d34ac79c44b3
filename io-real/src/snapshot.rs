//! Initial snapshots of new shapes (deploy-semantics SL-5, SN-2, SN-3; protocol.md §6.2).
//!
//! Owns, on one dedicated connection: adding the table to the publication with
//! `REPLICA IDENTITY FULL`, waiting out the transactions in progress at that moment, then
//! reading the rows in a `REPEATABLE READ READ ONLY` transaction that first locks the table
//! against DDL and checks its catalog entry against the shape's schema, encoding each row as
//! a snapshot entry and writing byte-cut chunks as the rows stream in, the last one ending
//! with `snapshot-end`.
//!
//! Never: builds JSON in SQL (values come back as Postgres text, JSON is encoded here with the
//! core's encoder), holds all rows in memory (at most two chunks), or retries.
//!
//! Asks of callers: a connection nobody else uses (the function runs transactions on it) and a
//! schema read from the catalog; a schema that no longer matches the table the snapshot reads
//! gives [`SnapshotError::SchemaChanged`].

use std::time::Duration;

use futures::TryStreamExt;
use postgres_protocol::escape::escape_literal;
use tokio_postgres::{Client, IsolationLevel, RowStream};

use ampere_core::chunk::{check_schema_unchanged, SnapshotChunks, SnapshotColumns};
use ampere_core::ports::{DisconnectKind, SnapshotError, SnapshotRequest, SnapshotWriter};
use ampere_core::shape::{quote_ident, ColumnSchema, RelationName, ShapeDefinition, TableSchema};
use ampere_core::snapshot::PgSnapshot;

use ampere_core::error_chain;

use crate::catalog::{self, CatalogError};
use crate::pg::sql_error_kind;
use crate::replication::DISPLAY_SETTINGS;

/// How long SN-2 waits for the transactions in progress after the publication change.
pub const XIP_WAIT_MAX: Duration = Duration::from_secs(30);
/// How often SN-2 polls `pg_xact_status`.
const XIP_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// SL-5's lock timeout for `ALTER PUBLICATION` / `ALTER TABLE`.
const MEMBERSHIP_LOCK_TIMEOUT: &str = "5s";
/// SQLSTATE `duplicate_object`: the table is already in the publication.
const DUPLICATE_OBJECT: &str = "42710";

/// Takes the snapshot of `request` on `client` (a connection of its own): SL-5 membership,
/// SN-2 wait, SN-3 rows. Chunks `0_0 … 0_N` go to `writer` as they fill; `writer.finish()` runs
/// after the last one. Returns the transaction's `pg_current_snapshot()`.
pub async fn take_snapshot<W: SnapshotWriter>(
    client: &mut Client,
    request: &SnapshotRequest,
    writer: W,
) -> Result<PgSnapshot, SnapshotError> {
    let relation = &request.schema.relation;
    add_to_publication(client, &request.publication, relation).await?;
    wait_for_in_progress(client, XIP_WAIT_MAX).await?;
    let query = SnapshotQuery::new(&request.definition, &request.schema)?;
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg("BEGIN REPEATABLE READ"))?;
    tx.batch_execute(&display_settings_sql())
        .await
        .map_err(pg("SET display settings"))?;
    // Before the snapshot is taken (LOCK takes none): every DDL on the table (ACCESS
    // EXCLUSIVE) has then either committed before the snapshot, so the catalog read below
    // sees it, or waits for this transaction to end. The rows query resolves its columns with
    // the latest catalog, not the snapshot's; the lock makes the two the same.
    tx.batch_execute(&format!("LOCK TABLE {relation} IN ACCESS SHARE MODE"))
        .await
        .map_err(pg("LOCK TABLE … IN ACCESS SHARE MODE"))?;
    let row = tx
        .query_one("SELECT pg_catalog.pg_current_snapshot()::text", &[])
        .await
        .map_err(pg("pg_current_snapshot()"))?;
    let snapshot = parse_snapshot(&row)?;
    let seen = catalog::table_schema(&tx, relation)
        .await
        .map_err(catalog_error)?;
    check_schema_unchanged(&request.schema, seen.as_ref())?;
    let rows = tx
        .query_raw(query.sql.as_str(), std::iter::empty::<&str>())
        .await
        .map_err(pg("snapshot query"))?;
    let writer = write_rows(
        rows,
        &query,
        &snapshot,
        request.chunk_bytes_threshold,
        writer,
    )
    .await?;
    tx.commit().await.map_err(pg("COMMIT"))?;
    writer.finish().await.map_err(store)?;
    tracing::debug!(handle = %request.handle, %relation, ?snapshot, "snapshot taken");
    Ok(snapshot)
}

/// SL-5, one transaction under a 5 s lock timeout: `ALTER PUBLICATION … ADD TABLE` (already a
/// member is fine), then `REPLICA IDENTITY FULL` unless the table has it. A failure of the
/// latter fails the whole step: without full old rows updates cannot be served (SL-7).
pub async fn add_to_publication(
    client: &mut Client,
    publication: &str,
    relation: &RelationName,
) -> Result<(), SnapshotError> {
    const REPLIDENT: &str = "SELECT c.relreplident::text FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname = $2";
    let mut tx = client.transaction().await.map_err(pg("BEGIN"))?;
    let lock_timeout = format!("SET LOCAL lock_timeout = '{MEMBERSHIP_LOCK_TIMEOUT}'");
    tx.batch_execute(&lock_timeout)
        .await
        .map_err(pg("SET lock_timeout"))?;
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
        Err(e) => return Err(pg("ALTER PUBLICATION … ADD TABLE")(e)),
    }
    let row = tx
        .query_opt(REPLIDENT, &[&relation.schema, &relation.table])
        .await
        .map_err(pg("reading relreplident"))?
        .ok_or_else(|| SnapshotError::SchemaChanged {
            message: format!("table {relation} no longer exists"),
        })?;
    let replident: String = row.try_get(0).map_err(pg("reading relreplident"))?;
    if replident != "f" {
        let full = format!("ALTER TABLE {relation} REPLICA IDENTITY FULL");
        tx.batch_execute(&full)
            .await
            .map_err(pg("ALTER TABLE … REPLICA IDENTITY FULL"))?;
    }
    tx.commit().await.map_err(pg("COMMIT"))
}

/// SN-2: waits until every transaction in progress now has ended, polling every 50 ms, for at
/// most `wait_max` (then a transient error).
///
/// `pg_current_snapshot()` lists in `xip` only running xids below its `xmax`, which is
/// `latestCompletedXid + 1`: a running transaction whose xid is above every completed one is
/// missing from it (seen: `727:727:` while 727 was inserting). So first assign and commit an xid
/// of our own: every transaction that had an xid before is then below the next snapshot's
/// `xmax`, so in its `xip` if still running. One xid per snapshot is the price.
pub async fn wait_for_in_progress(
    client: &Client,
    wait_max: Duration,
) -> Result<(), SnapshotError> {
    const STILL_RUNNING: &str = "SELECT count(*) \
         FROM pg_catalog.pg_snapshot_xip($1::text::pg_snapshot) AS x \
         WHERE pg_catalog.pg_xact_status(x) = 'in progress'";
    client
        .query_one("SELECT pg_catalog.pg_current_xact_id()", &[])
        .await
        .map_err(pg("pg_current_xact_id()"))?;
    let row = client
        .query_one("SELECT pg_catalog.pg_current_snapshot()::text", &[])
        .await
        .map_err(pg("pg_current_snapshot()"))?;
    let snapshot: String = row.try_get(0).map_err(pg("pg_current_snapshot()"))?;
    let deadline = tokio::time::Instant::now() + wait_max;
    loop {
        let row = client
            .query_one(STILL_RUNNING, &[&snapshot])
            .await
            .map_err(pg("pg_xact_status"))?;
        let running: i64 = row.try_get(0).map_err(pg("pg_xact_status"))?;
        if running == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(SnapshotError::Postgres {
                message: format!(
                    "{running} transaction(s) in progress at {snapshot} still running after \
                     {wait_max:?}"
                ),
                kind: DisconnectKind::Transient,
            });
        }
        tokio::time::sleep(XIP_POLL_INTERVAL).await;
    }
}

/// The rows query of one shape and how to turn its rows into entries.
struct SnapshotQuery {
    /// `SELECT <text of each fetched column> FROM <relation> [WHERE <rendered filter>]`.
    sql: String,
    columns: SnapshotColumns,
}

impl SnapshotQuery {
    fn new(definition: &ShapeDefinition, schema: &TableSchema) -> Result<Self, SnapshotError> {
        let columns = SnapshotColumns::new(definition, schema)?;
        let texts: Vec<String> = columns
            .fetched
            .iter()
            .map(|&i| text_expression(&schema.columns[i]))
            .collect();
        let sql = format!(
            "SELECT {} FROM {}{}",
            texts.join(", "),
            schema.relation,
            columns.where_sql()
        );
        Ok(Self { sql, columns })
    }

    /// A result row as text values in the table's column order (unfetched columns `None`).
    fn decode(&self, row: &tokio_postgres::Row) -> Result<Vec<Option<String>>, SnapshotError> {
        let mut values = self.columns.empty_row();
        for (position, &column) in self.columns.fetched.iter().enumerate() {
            let value: Option<&str> = row
                .try_get(position)
                .map_err(pg("decoding a snapshot row"))?;
            values[column] = value.map(str::to_owned);
        }
        Ok(values)
    }
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

fn parse_snapshot(row: &tokio_postgres::Row) -> Result<PgSnapshot, SnapshotError> {
    let text: String = row.try_get(0).map_err(pg("pg_current_snapshot()"))?;
    PgSnapshot::parse(&text).ok_or_else(|| SnapshotError::Postgres {
        message: format!("pg_current_snapshot() returned {text:?}, not xmin:xmax:xip"),
        kind: DisconnectKind::Transient,
    })
}

/// Encodes the streamed rows and writes them in chunks; returns the writer, every chunk
/// written, not yet finished.
async fn write_rows<W: SnapshotWriter>(
    rows: RowStream,
    query: &SnapshotQuery,
    snapshot: &PgSnapshot,
    chunk_bytes_threshold: u64,
    writer: W,
) -> Result<W, SnapshotError> {
    let mut rows = std::pin::pin!(rows);
    let mut chunks = SnapshotChunks::new(writer, chunk_bytes_threshold);
    while let Some(row) = rows.try_next().await.map_err(pg("reading snapshot rows"))? {
        let values = query.decode(&row)?;
        chunks
            .push(query.columns.encoder.snapshot_row(&values))
            .await?;
    }
    chunks.finish(&snapshot.snapshot_end_json()).await
}

/// Maps a driver error: a vanished table or column (42P01, 42703) means the schema changed.
fn pg(during: &'static str) -> impl Fn(tokio_postgres::Error) -> SnapshotError {
    move |error| {
        let message = format!("{during}: {}", error_chain(&error));
        match error.code().map(tokio_postgres::error::SqlState::code) {
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

fn store(error: impl std::error::Error) -> SnapshotError {
    SnapshotError::Store {
        message: error_chain(&error),
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects chunks in memory.
    #[derive(Clone, Default)]
    struct MemWriter(Arc<Mutex<Vec<(u64, String)>>>);

    impl SnapshotWriter for MemWriter {
        type Error = Infallible;

        async fn write_chunk(&mut self, index: u64, body: String) -> Result<(), Infallible> {
            self.0.lock().unwrap().push((index, body));
            Ok(())
        }

        async fn finish(self) -> Result<(), Infallible> {
            Ok(())
        }
    }

    async fn cut(threshold: u64, entries: &[&str]) -> Vec<(u64, String)> {
        let chunks = MemWriter::default();
        let mut writer = SnapshotChunks::new(chunks.clone(), threshold);
        for e in entries {
            writer.push((*e).to_owned()).await.unwrap();
        }
        writer.finish("END").await.unwrap();
        let out = chunks.0.lock().unwrap().clone();
        out
    }

    #[tokio::test]
    async fn chunks_close_at_the_threshold_and_the_last_one_ends_with_snapshot_end() {
        // "aaa" counts 4 bytes: the second entry reaches 8 and closes the chunk.
        let chunks = cut(8, &["aaa", "bbb", "ccc"]).await;
        assert_eq!(chunks, vec![(0, "aaa,bbb".into()), (1, "ccc,END".into())]);
    }

    #[tokio::test]
    async fn snapshot_end_joins_a_chunk_closed_by_the_last_row() {
        let chunks = cut(8, &["aaa", "bbb"]).await;
        assert_eq!(chunks, vec![(0, "aaa,bbb,END".into())]);
    }

    #[tokio::test]
    async fn an_empty_table_gives_one_chunk_with_snapshot_end_only() {
        assert_eq!(cut(8, &[]).await, vec![(0, "END".into())]);
    }

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
