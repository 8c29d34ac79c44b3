//! `DELETE /v1/shape` (protocol.md §1.5): removes a shape, for test suites that reset state
//! between cases. Off unless `ELECTRIC_ENABLE_INTEGRATION_TESTING` (405); when on, it waits
//! for the service to be active as shape creation does (503 after 5 s), then finds the shape
//! by its definition (`table` and the GET's other definition parameters, validated as a GET's)
//! or by `handle`, and removes it through the core like an invalidated shape: its clients get
//! 409, and its handle is never issued again (stamps only increase, ID-2).

use ampere_core::shape::ShapeHandle;
use axum::body::Body;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::errors::ApiError;
use super::headers::JSON;
use super::params::{self, Query};
use super::shape::{self, ELECTRIC_HAS_DATA};
use super::AppState;
use crate::api::{DeleteShapeError, ShapeApi};

/// Answers a DELETE whose secret has been checked: 202 with an empty body once the shape is
/// gone (the shape route adds `cache-control: no-cache`, rule 1), else the error.
pub(super) async fn serve<A: ShapeApi>(state: &AppState<A>, query: &Query) -> Response {
    match delete(state, query).await {
        Ok(()) => {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
            headers.insert(ELECTRIC_HAS_DATA, HeaderValue::from_static("true"));
            (StatusCode::ACCEPTED, headers, Body::empty()).into_response()
        }
        Err(error) => error.into_response(),
    }
}

async fn delete<A: ShapeApi>(state: &AppState<A>, query: &Query) -> Result<(), ApiError> {
    if !state.config.is_shape_deletion_enabled {
        return Err(ApiError::DeleteNotAllowed);
    }
    let api = &state.api;
    // Before validation, as Electric does: a standby answers 503, whatever the parameters.
    api.until_active()
        .await
        .map_err(|not_active| ApiError::unavailable(not_active.message, 5))?;
    let handle = target(api, query).await?;
    api.delete_shape(handle).await.map_err(|error| match error {
        DeleteShapeError::NotActive(not_active) => ApiError::unavailable(not_active.message, 5),
        DeleteShapeError::NotFound => ApiError::ShapeNotFound,
        DeleteShapeError::Failed(message) => ApiError::unavailable(message, 1),
    })
}

/// The handle to delete: with `table`, the shape of the definition the parameters name (which
/// `handle`, if given, must be); without, the shape `handle` names.
async fn target<A: ShapeApi>(api: &A, query: &Query) -> Result<ShapeHandle, ApiError> {
    let handle = query
        .get("handle")
        .filter(|h| !h.trim().is_empty())
        .map(|h| ShapeHandle::from_string(h.to_owned()));
    let has_definition = query.get("table").is_some_and(|t| !t.trim().is_empty());
    if !has_definition {
        let handle = handle.ok_or_else(|| {
            ApiError::invalid("handle", "can't be blank when shape definition is missing")
        })?;
        return match api.shape(&handle) {
            Some(info) => Ok(info.handle),
            None => Err(ApiError::ShapeNotFound),
        };
    }
    let params = params::shape_params(&query.definition_only(), None)?;
    let Some(info) = api.shape_for_definition(&params.definition) else {
        // As for a GET, a table that does not exist, or columns or a where clause it refutes,
        // are 400s; only a valid definition with no shape is "not found".
        shape::checked_table(api, &params).await?;
        return Err(ApiError::ShapeNotFound);
    };
    match handle {
        Some(handle) if handle != info.handle => Err(ApiError::DefinitionHandleMismatch),
        _ => Ok(info.handle),
    }
}
