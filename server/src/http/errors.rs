//! Every error answer of the HTTP API, as one type (protocol.md §3.7, §6.8, §6.9).

use ampere_core::json::push_json_string;
use ampere_core::ports::{RefusalKind, SnapshotRefusal};
use ampere_core::shape::ShapeHandle;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::headers::{self, Freshness, JSON, SURROGATE_CONTROL};

pub(crate) const ELECTRIC_HANDLE: HeaderName = HeaderName::from_static("electric-handle");
const KNOWN_ERROR: HeaderName = HeaderName::from_static("electric-internal-known-error");

/// Why a request gets no log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ApiError {
    /// `400 {"message":"Invalid request","errors":{"<field>":["<message>"]}}`.
    #[error("invalid request: {field}: {message}")]
    Invalid {
        /// The parameter at fault.
        field: &'static str,
        /// The exact wire message.
        message: String,
    },
    /// `400` naming several fields, each with its messages, sorted by field (as Electric's
    /// map is encoded).
    #[error("invalid request: {0:?}")]
    InvalidFields(Vec<(&'static str, String)>),
    /// `400 {"message":"Invalid request","errors":{"subset":{"<field>":["<message>"]}}}`:
    /// the subset's parameters, each failing one named.
    #[error("invalid subset: {0:?}")]
    InvalidSubset(Vec<(&'static str, String)>),
    /// `400 {"message":"Invalid request","errors":{"subset":{"where":"<message>"}}}`:
    /// Postgres refused the subset query for what it computes (a string, not a list, as
    /// Electric answers errors raised while the query runs).
    #[error("subset query refused: {0}")]
    SubsetQueryRefused(String),
    /// `401`: the secret is missing or wrong.
    #[error("invalid API secret")]
    Unauthorized,
    /// `403 {"message":…}`: ampere's role may not publish or read the table; an
    /// administrator must grant it (never retried as a 409 or 503 would be).
    #[error("forbidden: {message}")]
    Forbidden {
        /// Postgres's reason.
        message: String,
    },
    /// `409` must-refetch, pointing to `handle` when known.
    #[error("must refetch (new handle: {handle:?})")]
    MustRefetch {
        /// The handle to use instead; never the one the client sent.
        handle: Option<ShapeHandle>,
    },
    /// `503` with `retry-after`: anything transient.
    #[error("unavailable: {message}")]
    Unavailable {
        /// Text for `{"message":…}`.
        message: String,
        /// `retry-after` seconds.
        retry_after_secs: u32,
        /// Whether to send `electric-internal-known-error: true`.
        is_known_error: bool,
    },
    /// `503` with a random `retry-after`: too many shape requests of this kind in flight
    /// (`ELECTRIC_MAX_CONCURRENT_REQUESTS`).
    #[error("concurrent {kind} request limit exceeded (limit: {limit})")]
    Overloaded {
        /// `initial` or `existing`.
        kind: &'static str,
        /// The limit of that kind.
        limit: u32,
        /// `retry-after` seconds (6 to 10, random, so rejected clients do not return at once).
        retry_after_secs: u32,
    },
    /// `405`: shape deletion is disabled.
    #[error("DELETE not allowed")]
    DeleteNotAllowed,
    /// `404 {"message":"No existing shape found"}`: a DELETE names no live shape.
    #[error("no existing shape found")]
    ShapeNotFound,
    /// `400`: a DELETE's `handle` is not the handle of its definition's shape.
    #[error("shape definition and handle do not match")]
    DefinitionHandleMismatch,
    /// `400`: a POST body that is JSON but not an object.
    #[error("request body must be a JSON object")]
    BodyNotObject,
    /// `400`: a POST body that is not JSON.
    #[error("invalid JSON in request body: {details}")]
    BodyInvalidJson {
        /// The parser's message.
        details: String,
    },
    /// `413`.
    #[error("request body too large")]
    BodyTooLarge,
    /// `404 Not found` (plain text).
    #[error("not found")]
    NotFound,
    /// `500`: a bug or an impossible state; details go to the log, not the client.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A 400 on `field`.
    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            message: message.into(),
        }
    }

    /// One 400 naming every field of `errors` (each an [`ApiError::Invalid`]; anything else
    /// is kept as it is when alone, which callers never pass).
    pub(crate) fn merge(errors: impl IntoIterator<Item = Self>) -> Self {
        let mut fields = Vec::new();
        let mut other = None;
        for error in errors {
            match error {
                Self::Invalid { field, message } => fields.push((field, message)),
                Self::InvalidFields(more) => fields.extend(more),
                error => other = Some(error),
            }
        }
        match (fields.len(), other) {
            (0, Some(error)) => error,
            (1, _) => {
                let (field, message) = fields.remove(0);
                Self::Invalid { field, message }
            }
            _ => Self::InvalidFields(fields),
        }
    }

    /// A snapshot that can never succeed as things stand: 403 when privileges are missing,
    /// else 400 on `table` (Postgres will not publish that relation).
    pub(crate) fn refused(refusal: SnapshotRefusal) -> Self {
        match refusal.kind {
            RefusalKind::Privilege => Self::Forbidden {
                message: refusal.message,
            },
            RefusalKind::Unsupported => Self::invalid("table", refusal.message),
        }
    }

    /// A 503 that clients retry after `retry_after_secs`.
    pub(crate) fn unavailable(message: impl Into<String>, retry_after_secs: u32) -> Self {
        Self::Unavailable {
            message: message.into(),
            retry_after_secs,
            is_known_error: false,
        }
    }

    /// A 503 that clients retry after `retry_after_secs`, marked a known error (Electric's
    /// `known_error`): the operator's to fix, not a bug.
    pub(crate) fn known_unavailable(message: impl Into<String>, retry_after_secs: u32) -> Self {
        Self::Unavailable {
            message: message.into(),
            retry_after_secs,
            is_known_error: true,
        }
    }

    /// The shape's snapshot did not become readable within the wait (§6.2): a known 503,
    /// retried after 10 s.
    pub(crate) fn snapshot_wait_timed_out() -> Self {
        Self::known_unavailable(
            "Timed out waiting for the shape's snapshot, please retry",
            10,
        )
    }

    /// The response status.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::Invalid { .. }
            | Self::InvalidFields(_)
            | Self::InvalidSubset(_)
            | Self::SubsetQueryRefused(_)
            | Self::BodyNotObject
            | Self::BodyInvalidJson { .. }
            | Self::DefinitionHandleMismatch => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::MustRefetch { .. } => StatusCode::CONFLICT,
            Self::Unavailable { .. } | Self::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::DeleteNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::ShapeNotFound => StatusCode::NOT_FOUND,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A 503's `retry-after` seconds and whether it is a known error.
    fn retry_after(&self) -> Option<(u32, bool)> {
        match self {
            Self::Unavailable {
                retry_after_secs,
                is_known_error,
                ..
            } => Some((*retry_after_secs, *is_known_error)),
            Self::Overloaded {
                retry_after_secs, ..
            } => Some((*retry_after_secs, true)),
            _ => None,
        }
    }

    /// The exact body text.
    pub(crate) fn body(&self) -> String {
        match self {
            Self::Invalid { field, message } => {
                let mut body = String::from("{\"message\":\"Invalid request\",\"errors\":{");
                push_json_string(&mut body, field);
                body.push_str(":[");
                push_json_string(&mut body, message);
                body.push_str("]}}");
                body
            }
            Self::InvalidFields(fields) => {
                let mut body = String::from("{\"message\":\"Invalid request\",\"errors\":");
                push_field_map(&mut body, fields);
                body.push('}');
                body
            }
            Self::InvalidSubset(fields) => {
                let mut body =
                    String::from("{\"message\":\"Invalid request\",\"errors\":{\"subset\":");
                push_field_map(&mut body, fields);
                body.push_str("}}");
                body
            }
            Self::SubsetQueryRefused(message) => {
                let mut body = String::from(
                    "{\"message\":\"Invalid request\",\"errors\":{\"subset\":{\"where\":",
                );
                push_json_string(&mut body, message);
                body.push_str("}}}");
                body
            }
            Self::Unauthorized => message_body("Unauthorized - Invalid API secret"),
            Self::Forbidden { message } => message_body(message),
            Self::MustRefetch { .. } => "[{\"headers\":{\"control\":\"must-refetch\"}}]".into(),
            Self::Unavailable { message, .. } => message_body(message),
            Self::Overloaded { kind, limit, .. } => {
                let mut body = String::from("{\"code\":\"concurrent_request_limit_exceeded\",");
                body.push_str("\"message\":");
                let message = format!(
                    "Concurrent {kind} request limit exceeded (limit: {limit}), please retry"
                );
                push_json_string(&mut body, &message);
                body.push('}');
                body
            }
            Self::DeleteNotAllowed => message_body("DELETE not allowed"),
            Self::ShapeNotFound => message_body("No existing shape found"),
            Self::DefinitionHandleMismatch => message_body(
                "The specified shape definition and handle do not match. Please ensure the \
                 shape definition is correct or omit the shape handle from the request to \
                 obtain a new one.",
            ),
            Self::BodyNotObject => "{\"error\":\"Request body must be a JSON object\"}".into(),
            Self::BodyInvalidJson { details } => {
                let mut body = String::from("{\"error\":\"Invalid JSON in request body\"");
                body.push_str(",\"details\":");
                push_json_string(&mut body, details);
                body.push('}');
                body
            }
            Self::BodyTooLarge => "{\"error\":\"Request body too large\"}".into(),
            Self::NotFound => "Not found".into(),
            Self::Internal(_) => "{\"error\":\"Internal server error\"}".into(),
        }
    }
}

/// `{"<field>":["<message>",…],…}`, fields sorted, each field's messages in order.
fn push_field_map(out: &mut String, fields: &[(&'static str, String)]) {
    let mut by_field: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for (field, message) in fields {
        by_field.entry(field).or_default().push(message);
    }
    out.push('{');
    for (i, (field, messages)) in by_field.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(out, field);
        out.push_str(":[");
        for (j, message) in messages.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            push_json_string(out, message);
        }
        out.push(']');
    }
    out.push('}');
}

fn message_body(message: &str) -> String {
    let mut body = String::from("{\"message\":");
    push_json_string(&mut body, message);
    body.push('}');
    body
}

impl IntoResponse for ApiError {
    /// The full error response for a GET; the shape route swaps in `no-cache` for other
    /// methods (cache-control rule 1).
    fn into_response(self) -> Response {
        if let Self::Internal(detail) = &self {
            tracing::error!(%detail, "internal error answering an HTTP request");
        }
        let status = self.status();
        let mut headers = HeaderMap::new();
        let content_type = if self == Self::NotFound {
            HeaderValue::from_static("text/plain; charset=utf-8")
        } else {
            HeaderValue::from_static(JSON)
        };
        headers.insert(CONTENT_TYPE, content_type);
        let new_handle = match &self {
            Self::MustRefetch { handle } => handle.as_ref(),
            _ => None,
        };
        if let Some(handle) = new_handle {
            if let Ok(value) = HeaderValue::from_str(handle.as_str()) {
                headers.insert(ELECTRIC_HANDLE, value);
            }
            if let Ok(value) = HeaderValue::from_str(&format!("\"{handle}::\"")) {
                headers.insert(ETAG, value);
            }
        }
        if let Some((retry_after_secs, is_known_error)) = self.retry_after() {
            headers.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
            if is_known_error {
                headers.insert(KNOWN_ERROR, HeaderValue::from_static("true"));
            }
        }
        if self != Self::NotFound {
            let policy = headers::cache_control(
                true,
                status,
                headers.contains_key(ELECTRIC_HANDLE),
                Freshness::Other,
                headers::CacheAges::default(),
            );
            headers.insert(CACHE_CONTROL, policy.value);
            if policy.is_surrogate_no_store {
                headers.insert(SURROGATE_CONTROL, HeaderValue::from_static("no-store"));
            }
        }
        (status, headers, self.body()).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_request_uses_the_electric_envelope() {
        let err = ApiError::invalid("offset", "has invalid format");
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            err.body(),
            r#"{"message":"Invalid request","errors":{"offset":["has invalid format"]}}"#
        );
    }

    #[test]
    fn refetch_with_a_handle_carries_it_and_a_handle_only_etag() {
        let handle = ShapeHandle::from_string("7-1".to_owned());
        let response = ApiError::MustRefetch {
            handle: Some(handle),
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::CONFLICT);
        let h = response.headers();
        assert_eq!(h[ELECTRIC_HANDLE], "7-1");
        assert_eq!(h[ETAG], "\"7-1::\"");
        assert_eq!(h[CACHE_CONTROL], "public, max-age=60, must-revalidate");
        assert!(!h.contains_key(SURROGATE_CONTROL));
    }

    #[test]
    fn refetch_without_a_handle_is_cached_for_one_second_and_has_no_etag() {
        let response = ApiError::MustRefetch { handle: None }.into_response();
        let h = response.headers();
        assert!(!h.contains_key(ELECTRIC_HANDLE));
        assert!(!h.contains_key(ETAG));
        assert_eq!(h[CACHE_CONTROL], "public, max-age=1, must-revalidate");
    }

    #[test]
    fn unavailable_carries_retry_after_and_no_store() {
        let err = ApiError::known_unavailable("starting", 5);
        assert_eq!(err.body(), r#"{"message":"starting"}"#);
        let response = err.into_response();
        let h = response.headers();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(h[RETRY_AFTER], "5");
        assert_eq!(h[CACHE_CONTROL], "no-store");
        assert_eq!(h[SURROGATE_CONTROL], "no-store");
        assert_eq!(h[KNOWN_ERROR], "true");
        assert_eq!(h[CONTENT_TYPE], JSON);
    }

    #[test]
    fn overload_is_a_known_503_with_electrics_code_and_its_retry_after() {
        let err = ApiError::Overloaded {
            kind: "initial",
            limit: 300,
            retry_after_secs: 7,
        };
        assert_eq!(
            err.body(),
            r#"{"code":"concurrent_request_limit_exceeded","message":"Concurrent initial request limit exceeded (limit: 300), please retry"}"#
        );
        let response = err.into_response();
        let h = response.headers();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(h[RETRY_AFTER], "7");
        assert_eq!(h[KNOWN_ERROR], "true");
        assert_eq!(h[CACHE_CONTROL], "no-store");
        assert_eq!(h[SURROGATE_CONTROL], "no-store");
    }

    #[test]
    fn body_errors_use_the_error_key() {
        assert_eq!(
            ApiError::BodyInvalidJson {
                details: "EOF \"x\"".to_owned()
            }
            .body(),
            r#"{"error":"Invalid JSON in request body","details":"EOF \"x\""}"#
        );
        assert_eq!(
            ApiError::BodyTooLarge.status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
