//! Subset requests (protocol.md §3.6, §5.7, §6.10): a shape request with `subset__*`
//! parameters or a POST body answers one read of some of the shape's rows, with the snapshot
//! it was read at, instead of the log.

use ampere_core::error_chain;
use ampere_core::offset::RequestOffset;
use ampere_core::ports::SnapshotError;
use ampere_core::shape::LogMode;
use ampere_core::subset::{Subset, SubsetQuery};
use axum::body::Body;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use super::errors::{ApiError, ELECTRIC_HANDLE};
use super::headers::JSON;
use super::params::{ShapeParams, SubsetParams};
use super::schema::electric_schema;
use super::shape::{status_or_refetch, wait_for, ELECTRIC_OFFSET, ELECTRIC_SCHEMA};
use super::AppState;
use crate::api::{ShapeApi, ShapeInfo};

const ELECTRIC_SNAPSHOT: HeaderName = HeaderName::from_static("electric-snapshot");

/// How long a subset request on a changes_only shape waits for the shape's own snapshot.
const SNAPSHOT_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// Answers a subset request for `info`'s shape, resolved as a log request would be.
pub(super) async fn serve<A: ShapeApi>(
    state: &AppState<A>,
    params: &ShapeParams,
    info: &ShapeInfo,
    subset: &SubsetParams,
) -> Result<Response, ApiError> {
    let bound = Subset::bind(
        &info.schema,
        subset.where_text.as_deref(),
        &subset.params,
        subset.order_by.as_deref(),
        subset.limit,
        subset.offset,
    )
    .map_err(|errors| {
        ApiError::InvalidSubset(errors.into_iter().map(|e| (e.field, e.message)).collect())
    })?;
    let offset = response_offset(state, params, info).await?;
    let snapshot_mark = u32::try_from(state.rng.next() % (1 << 31)).unwrap_or(0);
    let query = SubsetQuery {
        definition: info.definition.clone(),
        schema: (*info.schema).clone(),
        subset: bound,
        snapshot_mark,
    };
    let rows = state.api.query_subset(query).await.map_err(query_error)?;
    let mut headers = HeaderMap::new();
    let value = |text: &str| {
        HeaderValue::from_str(text)
            .map_err(|_| ApiError::Internal(format!("not a header value: {text:?}")))
    };
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(ELECTRIC_HANDLE, value(info.handle.as_str())?);
    headers.insert(ELECTRIC_OFFSET, value(&offset)?);
    let schema = electric_schema(&info.schema, info.definition.columns.as_deref());
    headers.insert(ELECTRIC_SCHEMA, value(&schema)?);
    headers.insert(ELECTRIC_SNAPSHOT, HeaderValue::from_static("true"));
    let body = rows.body(snapshot_mark);
    Ok((StatusCode::OK, headers, Body::from(body)).into_response())
}

/// The `electric-offset` of a subset answer, decided before the read. The official client
/// moves its stream to it, so it is never past what the client has read: a log offset is
/// echoed (Electric answers the end of that offset's chunk, which skips the changes in the
/// rest of the chunk to rows outside the subset), and `now` is the shape's latest offset, as
/// a log request would answer it.
///
/// On a changes_only shape the read waits for the shape's own snapshot first: the log holds
/// every change after that snapshot, so a subset read at or after it leaves no gap between
/// the rows it returns and the changes the client reads next.
async fn response_offset<A: ShapeApi>(
    state: &AppState<A>,
    params: &ShapeParams,
    info: &ShapeInfo,
) -> Result<String, ApiError> {
    let api = &state.api;
    let deadline = Instant::now() + SNAPSHOT_WAIT_MAX;
    let must_wait = info.definition.log == LogMode::ChangesOnly;
    let status = wait_for(api, &info.handle, deadline, || {
        let status = status_or_refetch(api, params, &info.handle)?;
        Ok((!must_wait || status.snapshot_complete).then_some(status))
    })
    .await?
    .ok_or_else(ApiError::snapshot_wait_timed_out)?;
    Ok(match params.offset {
        RequestOffset::Log(offset) => offset,
        RequestOffset::Now => status.latest,
    }
    .to_string())
}

/// A failed subset read: the request's fault (400), a refusal (403/400), or transient (503).
fn query_error(error: SnapshotError) -> ApiError {
    match error {
        SnapshotError::QueryRejected { message } => ApiError::SubsetQueryRefused(message),
        SnapshotError::Refused(refusal) => ApiError::refused(refusal),
        SnapshotError::SchemaChanged { message } => {
            tracing::info!(%message, "a subset read found the table changed");
            ApiError::unavailable(
                "The table changed while reading the subset, please retry",
                1,
            )
        }
        other => {
            tracing::warn!(error = %error_chain(&other), "a subset read failed");
            ApiError::known_unavailable("Snapshot query failed, please retry", 10)
        }
    }
}
