//! `GET`/`HEAD`/`POST /v1/shape`: resolving the shape, reading its log, long-poll waits and
//! the log response (protocol.md §4, §5.6, §6.2–6.4, §6.7, §6.8).

use std::time::Duration;

use ampere_core::offset::RequestOffset;
use ampere_core::ports::{CatalogTable, ChunkRead, LogStatus, ReadOutcome};
use ampere_core::shape::{LogMode, ShapeHandle};
use ampere_core::where_clause::WhereClause;
use ampere_core::LogOffset;
use axum::body::Body;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use tokio::time::Instant;

use super::errors::{ApiError, ELECTRIC_HANDLE};
use super::headers::{self, CacheAges, Freshness, JSON, SURROGATE_CONTROL};
use super::params::{self, Query, RawSubset, ShapeParams};
use super::pieces::Pieces;
use super::schema::electric_schema;
use super::AppState;
use crate::api::{CreateShapeError, Health, ShapeApi, ShapeInfo};

/// How long a request waits for a snapshot chunk that is still being written.
const SNAPSHOT_WAIT_MAX: Duration = Duration::from_secs(60);
/// POST bodies above this are refused with 413.
const BODY_BYTES_MAX: usize = 8 * 1024 * 1024;

pub(super) const ELECTRIC_OFFSET: HeaderName = HeaderName::from_static("electric-offset");
pub(super) const ELECTRIC_SCHEMA: HeaderName = HeaderName::from_static("electric-schema");
pub(super) const ELECTRIC_CURSOR: HeaderName = HeaderName::from_static("electric-cursor");
const ELECTRIC_UP_TO_DATE: HeaderName = HeaderName::from_static("electric-up-to-date");
pub(super) const ELECTRIC_HAS_DATA: HeaderName = HeaderName::from_static("electric-has-data");

/// Answers a shape request whose secret has been checked.
pub(crate) async fn serve<A: ShapeApi>(
    state: &AppState<A>,
    method: &Method,
    query: &Query,
    request_headers: &HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let body = if *method == Method::POST {
            read_body(body).await?
        } else {
            None
        };
        let query = match &body {
            Some(object) => query.overridden_by(object),
            None => query.clone(),
        };
        let body_subset = body.as_ref().and_then(RawSubset::from_body);
        let params = params::shape_params(&query, body_subset)?;
        let info = resolve(&state.api, &params).await?;
        state.api.record_use(&info.handle);
        if let Some(subset) = &params.subset {
            return super::subset::serve(state, &params, &info, subset).await;
        }
        if params.is_sse {
            return super::sse::serve(state, &params, &info).await;
        }
        let answer = answer(state, &params, &info).await?;
        log_response(state, &params, &info, answer, request_headers)
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

/// Reads a POST body: empty (`None`), or a JSON object.
async fn read_body(
    body: Body,
) -> Result<Option<serde_json::Map<String, serde_json::Value>>, ApiError> {
    let bytes = axum::body::to_bytes(body, BODY_BYTES_MAX)
        .await
        .map_err(|_| ApiError::BodyTooLarge)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::BodyInvalidJson {
            details: e.to_string(),
        })?;
    match value {
        serde_json::Value::Object(object) => Ok(Some(object)),
        _ => Err(ApiError::BodyNotObject),
    }
}

/// The shape to serve (§6.8): the handle's shape if it has the requested definition;
/// otherwise 409 pointing to the definition's shape, created if needed. `offset=-1`/`now`
/// carry no handle and get the definition's shape directly.
async fn resolve<A: ShapeApi>(api: &A, params: &ShapeParams) -> Result<ShapeInfo, ApiError> {
    let Some(sent) = &params.handle else {
        let target = find_or_create(api, params).await?;
        return not_behind_the_client(api, params, target);
    };
    if let Some(info) = api.shape(sent) {
        if info.definition == params.definition {
            return Ok(info);
        }
    }
    let target = find_or_create(api, params).await?;
    // The sent handle's shape after all: this instance's read model had not seen it yet (a
    // standby between metadata refreshes) and the lock holder's storage has it.
    if target.handle == *sent {
        return Ok(target);
    }
    let target = not_behind_the_client(api, params, target)?;
    Err(ApiError::MustRefetch {
        handle: Some(target.handle),
    })
}

/// `target`, unless a non-active instance would name a handle the client has moved past.
///
/// A non-active instance answers from its read model: a standby's metadata as of its last
/// refresh, or the storage a lock holder loaded and has not purged yet, which may be a
/// restored older copy that only the lock holder can detect (stale storage, §2 item 3). When
/// the client reports `target` retired (`expired_handle`) or holds a later handle of the
/// definition, that read model is behind the client: naming `target` would hand back a handle
/// the client saw retired (ID-2), which the official client takes for a stale cache copy and
/// soon gives up on (protocol.md §7). The next refresh or the lock holder's purge catches up,
/// so it is a 503 (like an offset beyond a standby's log), never a 200 or 409 naming it.
fn not_behind_the_client<A: ShapeApi>(
    api: &A,
    params: &ShapeParams,
    target: ShapeInfo,
) -> Result<ShapeInfo, ApiError> {
    if api.health() == Health::Active || !has_moved_past(params, &target.handle) {
        return Ok(target);
    }
    Err(ApiError::unavailable(
        "The service is not ready: its shapes are older than the client's",
        5,
    ))
}

/// Whether the request shows the client already left `target` behind: it holds a handle that
/// superseded it, or a 409 retired `target` (or a later handle) for it.
fn has_moved_past(params: &ShapeParams, target: &ShapeHandle) -> bool {
    let holds_later = params.handle.as_ref().is_some_and(|h| h.supersedes(target));
    let saw_retired = params
        .expired_handle
        .as_ref()
        .is_some_and(|h| h == target || h.supersedes(target));
    holds_later || saw_retired
}

async fn find_or_create<A: ShapeApi>(api: &A, params: &ShapeParams) -> Result<ShapeInfo, ApiError> {
    if let Some(info) = api.shape_for_definition(&params.definition) {
        return Ok(info);
    }
    let table = checked_table(api, params).await?;
    api.create_shape(params.definition.clone(), table.schema)
        .await
        .map_err(|error| match error {
            CreateShapeError::NotReady(message) => ApiError::unavailable(message, 5),
            CreateShapeError::Failed {
                message,
                retry_after_secs,
            } => ApiError::unavailable(message, retry_after_secs),
            CreateShapeError::TableNotPublished(message) => {
                ApiError::known_unavailable(message, 10)
            }
            CreateShapeError::Refused(refusal) => ApiError::refused(refusal),
        })
}

/// The request's table from the catalog, checked as a new shape on it is (§3.3, §3.4): it
/// exists, and the selected columns and the where clause fit it.
pub(super) async fn checked_table<A: ShapeApi>(
    api: &A,
    params: &ShapeParams,
) -> Result<CatalogTable, ApiError> {
    let relation = &params.definition.relation;
    let table = api
        .table_schema(relation.clone())
        .await
        .map_err(|unavailable| ApiError::unavailable(unavailable.to_string(), 1))?
        .ok_or_else(|| {
            ApiError::invalid(
                "table",
                format!(
                    "Table {relation} does not exist. If the table name contains capitals or \
                     special characters you must quote it."
                ),
            )
        })?;
    validate_columns(&table, params.columns.as_deref())?;
    if let Some(text) = &params.where_text {
        let clause = WhereClause::compile(text, &params.params, &table.schema)
            .map_err(|e| ApiError::invalid("where", e.to_string()))?;
        check_time_zones(api, &clause).await?;
    }
    Ok(table)
}

/// Refuses a where clause naming a time zone the server reads otherwise than ampere
/// (`zone_check`): the snapshot would follow the server's zone data and replication ampere's.
async fn check_time_zones<A: ShapeApi>(api: &A, clause: &WhereClause) -> Result<(), ApiError> {
    for zone in clause.time_zones() {
        let verdict = api
            .check_time_zone(zone.clone())
            .await
            .map_err(|unavailable| ApiError::unavailable(unavailable.to_string(), 1))?;
        if let Some(mismatch) = verdict {
            let refusal = clause.zone_refused(zone, &mismatch);
            return Err(ApiError::invalid("where", refusal.to_string()));
        }
    }
    Ok(())
}

/// Checks a `columns` selection against the table (§3.3), in Electric's order: missing key
/// columns, generated columns, unknown columns, empty list. Without a selection, a table
/// with generated columns is refused too (pgoutput before PostgreSQL 18 cannot send them).
pub(crate) fn validate_columns(
    table: &CatalogTable,
    requested: Option<&[String]>,
) -> Result<(), ApiError> {
    let schema = &table.schema;
    let invalid = |message: String| Err(ApiError::invalid("columns", message));
    let generated_message = |names: &[&str]| {
        format!(
            "The following columns are generated and cannot be included in the shape: {}",
            names.join(", ")
        )
    };
    let Some(requested) = requested else {
        if table.generated.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = table.generated.iter().map(String::as_str).collect();
        return invalid(format!(
            "{}. You can exclude them from the shape by explicitly listing which columns to \
             fetch in the 'columns' query param",
            generated_message(&names)
        ));
    };
    let missing_key: Vec<&str> = schema
        .key_columns()
        .into_iter()
        .map(|i| schema.columns[i].name.as_str())
        .filter(|name| !requested.iter().any(|r| r == name))
        .collect();
    if !missing_key.is_empty() {
        return invalid(format!(
            "The list of columns must include all primary key columns, missing: {}",
            missing_key.join(", ")
        ));
    }
    let generated: Vec<&str> = table
        .generated
        .iter()
        .map(String::as_str)
        .filter(|g| requested.iter().any(|r| r == g))
        .collect();
    if !generated.is_empty() {
        return invalid(generated_message(&generated));
    }
    let mut unknown: Vec<&str> = Vec::new();
    for name in requested {
        if schema.column_index(name).is_none() && !unknown.contains(&name.as_str()) {
            unknown.push(name);
        }
    }
    if !unknown.is_empty() {
        return invalid(format!(
            "The following columns are not found on the table: {}",
            unknown.join(", ")
        ));
    }
    if requested.is_empty() {
        return invalid("The list of columns must not be empty".to_owned());
    }
    Ok(())
}

/// What a log response says, before it is rendered.
#[derive(Clone, PartialEq, Eq, Debug)]
struct Answer {
    /// `electric-offset`.
    end: LogOffset,
    /// Entries joined by `,` (no brackets).
    entries: Bytes,
    /// `global_last_seen_lsn` of the `up-to-date` message, when there is one.
    up_to_date_lsn: Option<u64>,
    /// `false` for "nothing new" answers, which also get a unique ETag.
    has_data: bool,
}

async fn answer<A: ShapeApi>(
    state: &AppState<A>,
    params: &ShapeParams,
    info: &ShapeInfo,
) -> Result<Answer, ApiError> {
    let api = &state.api;
    let offset = match params.offset {
        RequestOffset::Now => {
            let status = now_status(api, params, &info.handle).await?;
            return Ok(nothing_new(api, status));
        }
        RequestOffset::Log(offset) => offset,
    };
    if offset != LogOffset::BEFORE_ALL {
        wait_in_bounds(state, params, &info.handle, offset).await?;
    }
    if params.is_live {
        return answer_live(state, params, &info.handle, offset).await;
    }
    let deadline = Instant::now() + SNAPSHOT_WAIT_MAX;
    let read = wait_for(api, &info.handle, deadline, || {
        read_chunk(api, params, &info.handle, offset)
    })
    .await?;
    let Some((status, chunk)) = read else {
        return Err(ApiError::snapshot_wait_timed_out());
    };
    let up_to_date_lsn = is_up_to_date(offset, &status, &chunk)
        .then(|| api.last_seen_lsn().as_u64().max(chunk.end.tx()));
    Ok(Answer {
        end: chunk.end,
        entries: chunk.body,
        up_to_date_lsn,
        has_data: true,
    })
}

/// The status an `offset=now` answer reports (§6.4). Replication skips what a shape's
/// snapshot saw, so a client answered before the snapshot misses a change committed between
/// its answer and the snapshot. A changes_only shape's snapshot reads no rows and is quick, so
/// it is waited for: every change committed after the answer then reaches the client. A full
/// shape answers at once, as Electric's does: its snapshot may take minutes.
async fn now_status<A: ShapeApi>(
    api: &A,
    params: &ShapeParams,
    handle: &ShapeHandle,
) -> Result<LogStatus, ApiError> {
    if params.definition.log == LogMode::Full {
        return status_or_refetch(api, params, handle);
    }
    let deadline = Instant::now() + SNAPSHOT_WAIT_MAX;
    let taken = wait_for(api, handle, deadline, || {
        let status = status_or_refetch(api, params, handle)?;
        Ok(status.snapshot_complete.then_some(status))
    })
    .await?;
    taken.ok_or_else(ApiError::snapshot_wait_timed_out)
}

/// A live request: answers at once if entries follow `offset`, else waits up to the
/// long-poll timeout for some (§6.3).
async fn answer_live<A: ShapeApi>(
    state: &AppState<A>,
    params: &ShapeParams,
    handle: &ShapeHandle,
    offset: LogOffset,
) -> Result<Answer, ApiError> {
    let api = &state.api;
    let deadline = Instant::now() + state.config.long_poll_timeout;
    let read = wait_for(api, handle, deadline, || {
        let read = read_chunk(api, params, handle, offset)?;
        Ok(read.filter(|(_, chunk)| chunk.entries > 0))
    })
    .await?;
    if let Some((status, chunk)) = read {
        let up_to_date_lsn = is_up_to_date(offset, &status, &chunk).then_some(chunk.end.tx());
        return Ok(Answer {
            end: chunk.end,
            entries: chunk.body,
            up_to_date_lsn,
            has_data: true,
        });
    }
    if api.health() != Health::Active {
        return Err(ApiError::unavailable(
            "The service is not ready: replication is not streaming",
            10,
        ));
    }
    let status = status_or_refetch(api, params, handle)?;
    Ok(nothing_new(api, status))
}

/// `[up-to-date]` at the shape's latest offset, for `offset=now` and long-poll timeouts.
fn nothing_new<A: ShapeApi>(api: &A, status: LogStatus) -> Answer {
    Answer {
        end: status.latest,
        entries: Bytes::new(),
        up_to_date_lsn: Some(api.last_seen_lsn().as_u64().max(status.latest.tx())),
        has_data: false,
    }
}

/// §6.2: up-to-date exactly when the request is not `-1` and the chunk reaches the end.
fn is_up_to_date(offset: LogOffset, status: &LogStatus, chunk: &ChunkRead) -> bool {
    offset != LogOffset::BEFORE_ALL && chunk.end >= status.latest.max(offset)
}

/// An offset above the shape's latest is given half the long-poll timeout to become valid
/// (the client may have talked to a server further ahead), then it is a 400 (§2). Only the
/// active instance can tell: a standby's storage may be older than the slot (stale storage,
/// §2 item 3), which the next lock holder turns into a purge and 409s, so it answers 503.
pub(super) async fn wait_in_bounds<A: ShapeApi>(
    state: &AppState<A>,
    params: &ShapeParams,
    handle: &ShapeHandle,
    offset: LogOffset,
) -> Result<(), ApiError> {
    let api = &state.api;
    let deadline = Instant::now() + state.config.long_poll_timeout / 2;
    let in_bounds = wait_for(api, handle, deadline, || {
        let status = status_or_refetch(api, params, handle)?;
        // Snapshot offsets are governed by the snapshot wait, not by `latest`.
        let is_pending_snapshot = offset.is_snapshot() && !status.snapshot_complete;
        Ok((offset <= status.latest || is_pending_snapshot).then_some(()))
    })
    .await?;
    in_bounds.ok_or_else(|| {
        if api.health() == Health::Active {
            ApiError::invalid("offset", "out of bounds for this shape")
        } else {
            ApiError::unavailable("The service is not ready: replication is not streaming", 10)
        }
    })
}

/// One read attempt: the status and the chunk, `None` while the snapshot chunk is pending.
fn read_chunk<A: ShapeApi>(
    api: &A,
    params: &ShapeParams,
    handle: &ShapeHandle,
    offset: LogOffset,
) -> Result<Option<(LogStatus, ChunkRead)>, ApiError> {
    let status = status_or_refetch(api, params, handle)?;
    match api.read(handle, offset) {
        ReadOutcome::Chunk(chunk) => Ok(Some((status, chunk))),
        ReadOutcome::SnapshotPending => Ok(None),
        ReadOutcome::UnknownShape => Err(refetch(api, params, handle)),
    }
}

pub(super) fn status_or_refetch<A: ShapeApi>(
    api: &A,
    params: &ShapeParams,
    handle: &ShapeHandle,
) -> Result<LogStatus, ApiError> {
    api.status(handle)
        .ok_or_else(|| refetch(api, params, handle))
}

/// The shape went away under us: 409, pointing to the definition's current shape if there
/// is another one; or, if its snapshot was refused, the refusal (a 409 would send the client
/// round to the same refusal, forever).
fn refetch<A: ShapeApi>(api: &A, params: &ShapeParams, gone: &ShapeHandle) -> ApiError {
    if let Some(refusal) = api.refusal(gone) {
        return ApiError::refused(refusal);
    }
    let handle = api
        .shape_for_definition(&params.definition)
        .map(|info| info.handle)
        .filter(|handle| handle != gone);
    ApiError::MustRefetch { handle }
}

/// Runs `check` until it yields a value, re-running it whenever the shape changes, until
/// `deadline` (then one last time). `changed()` is called before each check, so a change
/// between the check and the wait is not missed.
pub(super) async fn wait_for<A: ShapeApi, T>(
    api: &A,
    handle: &ShapeHandle,
    deadline: Instant,
    mut check: impl FnMut() -> Result<Option<T>, ApiError>,
) -> Result<Option<T>, ApiError> {
    loop {
        let changed = api.changed(handle);
        if let Some(value) = check()? {
            return Ok(Some(value));
        }
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            return check();
        }
    }
}

/// Renders an answer: headers, 304 on a matching `If-None-Match`, the JSON array body.
fn log_response<A: ShapeApi>(
    state: &AppState<A>,
    params: &ShapeParams,
    info: &ShapeInfo,
    answer: Answer,
    request_headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let unique = (!answer.has_data).then(|| state.unique_suffix());
    let etag = headers::etag(
        info.handle.as_str(),
        &params.offset_text(),
        answer.end,
        unique.as_deref(),
    );
    let is_not_modified =
        unique.is_none() && headers::if_none_match_matches(request_headers, &etag);
    let status = if is_not_modified {
        StatusCode::NOT_MODIFIED
    } else {
        StatusCode::OK
    };
    let mut headers = HeaderMap::new();
    let value = |text: &str| {
        HeaderValue::from_str(text)
            .map_err(|_| ApiError::Internal(format!("not a header value: {text:?}")))
    };
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
    headers.insert(ELECTRIC_HANDLE, value(info.handle.as_str())?);
    headers.insert(ELECTRIC_OFFSET, value(&answer.end.to_string())?);
    let has_data = if answer.has_data { "true" } else { "false" };
    headers.insert(ELECTRIC_HAS_DATA, HeaderValue::from_static(has_data));
    headers.insert(ETAG, value(&format!("\"{etag}\""))?);
    if answer.up_to_date_lsn.is_some() {
        headers.insert(ELECTRIC_UP_TO_DATE, HeaderValue::from_static(""));
    }
    if params.is_live {
        let cursor = headers::next_cursor(
            state.config.clock.since_unix_epoch().as_secs(),
            state.config.long_poll_timeout,
            params.cursor.as_deref(),
            || state.rng.next(),
        );
        headers.insert(ELECTRIC_CURSOR, HeaderValue::from(cursor));
    } else if status == StatusCode::OK {
        let schema = electric_schema(&info.schema, info.definition.columns.as_deref());
        headers.insert(ELECTRIC_SCHEMA, value(&schema)?);
    }
    insert_cache_control(&mut headers, state, params, status);
    if is_not_modified {
        return Ok((status, headers).into_response());
    }
    Ok((status, headers, Body::new(render_body(&answer))).into_response())
}

fn insert_cache_control<A>(
    headers: &mut HeaderMap,
    state: &AppState<A>,
    params: &ShapeParams,
    status: StatusCode,
) {
    let freshness = if params.offset == RequestOffset::Log(LogOffset::BEFORE_ALL) {
        Freshness::InitialSync
    } else if params.is_live {
        Freshness::LiveLongPoll
    } else {
        Freshness::Other
    };
    let ages = CacheAges {
        max_age: state.config.cache_max_age,
        stale_age: state.config.cache_stale_age,
    };
    let policy = headers::cache_control(true, status, false, freshness, ages);
    headers.insert(CACHE_CONTROL, policy.value);
    if policy.is_surrogate_no_store {
        headers.insert(SURROGATE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// `[` entries, then the `up-to-date` control message if due, `]`.
/// The JSON array: `[`, the entries as the store handed them over (never copied: a large
/// chunk is shared by every response sending it at once), the control message, `]`.
fn render_body(answer: &Answer) -> Pieces {
    let mut tail = BytesMut::with_capacity(96);
    if let Some(lsn) = answer.up_to_date_lsn {
        if !answer.entries.is_empty() {
            tail.put_u8(b',');
        }
        tail.put_slice(b"{\"headers\":{\"control\":\"up-to-date\",\"global_last_seen_lsn\":\"");
        tail.put_slice(lsn.to_string().as_bytes());
        tail.put_slice(b"\"}}");
    }
    tail.put_u8(b']');
    Pieces::new([
        Bytes::from_static(b"["),
        answer.entries.clone(),
        tail.freeze(),
    ])
}

#[cfg(test)]
mod tests {
    use ampere_core::pgoutput::Oid;
    use ampere_core::shape::{ColumnSchema, RelationName, TableSchema};

    use super::*;

    fn table(columns: &[(&str, Option<u32>)]) -> CatalogTable {
        let schema = TableSchema {
            server_version: ampere_core::shape::ServerVersion::PG_15,
            oid: Oid(1),
            relation: RelationName {
                schema: "public".to_owned(),
                table: "t".to_owned(),
            },
            columns: columns
                .iter()
                .map(|(name, pk_index)| ColumnSchema {
                    name: (*name).to_owned(),
                    type_oid: 23,
                    typname: "int4".to_owned(),
                    dims: 0,
                    not_null: false,
                    pk_index: *pk_index,
                    modifiers: vec![],
                    is_enum: false,
                })
                .collect(),
        };
        CatalogTable {
            schema,
            generated: Vec::new(),
        }
    }

    fn columns_error(schema: &CatalogTable, requested: &[&str]) -> String {
        let requested: Vec<String> = requested.iter().map(|s| (*s).to_owned()).collect();
        match validate_columns(schema, Some(&requested)) {
            Err(ApiError::Invalid {
                field: "columns",
                message,
            }) => message,
            other => panic!("expected a columns error, got {other:?}"),
        }
    }

    #[test]
    fn columns_must_include_every_key_column_listed_in_key_order() {
        let t = table(&[("b", Some(1)), ("a", Some(0)), ("v", None)]);
        assert_eq!(
            columns_error(&t, &["v"]),
            "The list of columns must include all primary key columns, missing: a, b"
        );
        assert_eq!(
            columns_error(&t, &["b", "v"]),
            "The list of columns must include all primary key columns, missing: a"
        );
    }

    #[test]
    fn a_table_without_primary_key_needs_every_column() {
        let t = table(&[("y", None), ("x", None)]);
        assert_eq!(
            columns_error(&t, &["y"]),
            "The list of columns must include all primary key columns, missing: x"
        );
    }

    #[test]
    fn unknown_columns_are_listed_in_request_order_after_the_key_check() {
        let t = table(&[("id", Some(0)), ("v", None)]);
        assert_eq!(
            columns_error(&t, &["zz", "id", "aa", "zz"]),
            "The following columns are not found on the table: zz, aa"
        );
    }

    #[test]
    fn an_empty_column_list_is_rejected() {
        let t = table(&[]);
        assert_eq!(
            columns_error(&t, &[]),
            "The list of columns must not be empty"
        );
    }

    #[test]
    fn generated_columns_cannot_be_selected_or_implied() {
        let mut t = table(&[("id", Some(0)), ("v", None)]);
        t.generated = vec!["twice".to_owned()];
        assert_eq!(
            columns_error(&t, &["id", "twice"]),
            "The following columns are generated and cannot be included in the shape: twice"
        );
        let Err(ApiError::Invalid { message, .. }) = validate_columns(&t, None) else {
            panic!("a table with generated columns needs an explicit selection");
        };
        assert!(message.ends_with(
            "twice. You can exclude them from the shape by explicitly listing which columns \
             to fetch in the 'columns' query param"
        ));
        let ok = vec!["id".to_owned(), "v".to_owned()];
        assert_eq!(validate_columns(&t, Some(&ok)), Ok(()));
    }

    #[test]
    fn a_valid_selection_or_none_passes() {
        let t = table(&[("id", Some(0)), ("v", None)]);
        let ok = vec!["v".to_owned(), "id".to_owned()];
        assert_eq!(validate_columns(&t, Some(&ok)), Ok(()));
        assert_eq!(validate_columns(&t, None), Ok(()));
    }

    #[test]
    fn up_to_date_needs_a_non_initial_request_reaching_the_end() {
        let off = |s: &str| s.parse::<LogOffset>().expect("offset");
        let status = LogStatus {
            latest: off("10_4"),
            snapshot_complete: true,
        };
        let chunk = |end: &str| ChunkRead {
            body: Bytes::new(),
            entries: 0,
            end: off(end),
        };
        assert!(is_up_to_date(off("10_2"), &status, &chunk("10_4")));
        assert!(!is_up_to_date(off("10_0"), &status, &chunk("10_2")));
        assert!(!is_up_to_date(
            LogOffset::BEFORE_ALL,
            &status,
            &chunk("10_4")
        ));
        // A request beyond latest is up-to-date only if the chunk reaches the request.
        assert!(!is_up_to_date(off("11_0"), &status, &chunk("10_4")));
    }

    #[test]
    fn body_appends_up_to_date_after_entries() {
        let answer = Answer {
            end: LogOffset::SNAPSHOT_END,
            entries: Bytes::from_static(b"{\"a\":1},{\"b\":2}"),
            up_to_date_lsn: Some(42),
            has_data: true,
        };
        assert_eq!(
            &render_body(&answer).concat()[..],
            br#"[{"a":1},{"b":2},{"headers":{"control":"up-to-date","global_last_seen_lsn":"42"}}]"#
        );
        let empty = Answer {
            entries: Bytes::new(),
            up_to_date_lsn: None,
            ..answer
        };
        assert_eq!(&render_body(&empty).concat()[..], b"[]");
    }
}
