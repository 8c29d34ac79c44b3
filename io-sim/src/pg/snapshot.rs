//! Initial snapshots over the model, mirroring `io-real/src/snapshot.rs` step by step: add
//! the table to the publication (SL-5), wait out the transactions in progress at that moment
//! (SN-2), then read `pg_current_snapshot()`, the rows and the table's catalog entry at one
//! instant (SN-3), check that entry against the shape's schema, encode each row with the core's
//! [`EntryEncoder`] and write byte-cut chunks through the [`SnapshotWriter`], the last ending
//! with `snapshot-end`.
//!
//! Deviations from io-real, none observable in the chunks: the rows arrive in one reply (the
//! model takes them atomically) and the connection closes before the chunks are written, and
//! SN-2 does not first burn an xid of its own (the model's `xip` lists every running xid).

use std::time::Duration;

use ampere_core::chunk::{check_schema_unchanged, SnapshotChunks, SnapshotColumns};
use ampere_core::error_chain;
use ampere_core::ports::{DisconnectKind, PgError, SnapshotError, SnapshotRequest, SnapshotWriter};
use ampere_core::snapshot::PgSnapshot;

use super::port::{catalog_table, Client, SimPgError};
use super::wire::{ClientMessage, ServerMessage, WireRelation};

/// How long SN-2 waits for the transactions in progress after the publication change.
pub const XIP_WAIT_MAX: Duration = Duration::from_secs(30);
/// How often SN-2 polls `pg_xact_status`.
const XIP_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Takes the snapshot of `request` on `client` (a connection of its own); see the module docs.
pub(crate) async fn take_snapshot<W: SnapshotWriter>(
    mut client: Client,
    request: &SnapshotRequest,
    writer: W,
) -> Result<PgSnapshot, SnapshotError> {
    let relation = WireRelation {
        schema: request.schema.relation.schema.clone(),
        table: request.schema.relation.table.clone(),
    };
    let add = ClientMessage::AddTable {
        publication: request.publication.clone(),
        relation: relation.clone(),
    };
    expect_done(
        client
            .call(add)
            .await
            .map_err(pg("ALTER PUBLICATION … ADD TABLE"))?,
    )?;
    wait_for_in_progress(&mut client, XIP_WAIT_MAX).await?;
    let query = SnapshotColumns::new(&request.definition, &request.schema)?;
    // The model returns rows and the filter runs here, with the core's evaluator: a real
    // Postgres runs the rendered SQL instead, which io-real's differential test holds equal.
    let mut wanted = query.fetched.clone();
    if let Some(filter) = &query.filter {
        wanted.extend_from_slice(filter.columns());
        wanted.sort_unstable();
        wanted.dedup();
    }
    let columns = wanted
        .iter()
        .map(|&i| request.schema.columns[i].name.clone())
        .collect();
    let reply = client
        .call(ClientMessage::SnapshotRows { relation, columns })
        .await
        .map_err(pg("snapshot query"))?;
    drop(client);
    let ServerMessage::Rows {
        snapshot,
        rows,
        table,
    } = reply
    else {
        return Err(unexpected("snapshot query"));
    };
    let seen = catalog_table(request.schema.relation.clone(), table).schema;
    check_schema_unchanged(&request.schema, Some(&seen))?;
    let snapshot = PgSnapshot::parse(&snapshot).ok_or_else(|| SnapshotError::Postgres {
        message: format!("pg_current_snapshot() returned {snapshot:?}, not xmin:xmax:xip"),
        kind: DisconnectKind::Transient,
    })?;
    let mut chunks = SnapshotChunks::new(writer, request.chunk_bytes_threshold);
    for row in rows {
        let values = decode(&query, &wanted, row)?;
        if query.filter.as_ref().is_some_and(|f| !f.matches(&values)) {
            continue;
        }
        chunks.push(query.encoder.snapshot_row(&values)).await?;
    }
    let writer = chunks.finish(&snapshot.snapshot_end_json()).await?;
    writer.finish().await.map_err(store)?;
    tracing::debug!(handle = %request.handle, relation = %request.schema.relation, ?snapshot,
        "snapshot taken");
    Ok(snapshot)
}

/// SN-2: waits until every transaction in progress now has ended, polling every 50 ms, for at
/// most `wait_max` (then a transient error).
async fn wait_for_in_progress(
    client: &mut Client,
    wait_max: Duration,
) -> Result<(), SnapshotError> {
    let reply = client
        .call(ClientMessage::CurrentSnapshot)
        .await
        .map_err(pg("pg_current_snapshot()"))?;
    let ServerMessage::Snapshot(text) = reply else {
        return Err(unexpected("pg_current_snapshot()"));
    };
    let snapshot = PgSnapshot::parse(&text).ok_or_else(|| unexpected("pg_current_snapshot()"))?;
    let xids: Vec<u64> = snapshot.xip.iter().map(|x| x.0).collect();
    let deadline = tokio::time::Instant::now() + wait_max;
    loop {
        let reply = client
            .call(ClientMessage::XactsInProgress { xids: xids.clone() })
            .await
            .map_err(pg("pg_xact_status"))?;
        let ServerMessage::Count(running) = reply else {
            return Err(unexpected("pg_xact_status"));
        };
        if running == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(SnapshotError::Postgres {
                message: format!(
                    "{running} transaction(s) in progress at {text} still running after \
                     {wait_max:?}"
                ),
                kind: DisconnectKind::Transient,
            });
        }
        tokio::time::sleep(XIP_POLL_INTERVAL).await;
    }
}

/// A result row as values in the table's column order (unfetched columns `None`).
fn decode(
    columns: &SnapshotColumns,
    wanted: &[usize],
    row: Vec<Option<String>>,
) -> Result<Vec<Option<String>>, SnapshotError> {
    if row.len() != wanted.len() {
        return Err(unexpected("a snapshot row"));
    }
    let mut values = columns.empty_row();
    for (&column, value) in wanted.iter().zip(row) {
        values[column] = value;
    }
    Ok(values)
}

fn expect_done(reply: ServerMessage) -> Result<(), SnapshotError> {
    match reply {
        ServerMessage::Done => Ok(()),
        _ => Err(unexpected("ALTER PUBLICATION … ADD TABLE")),
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

fn store(error: impl std::error::Error) -> SnapshotError {
    SnapshotError::Store {
        message: error_chain(&error),
    }
}
