//! `GET /v1/health` (protocol.md §1.4).

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::headers::JSON;
use crate::api::Health;

/// `200 {"status":"active"}` when shapes can be served and created, else
/// `202 {"status":"starting"}`; never cached.
pub(crate) fn respond(health: Health) -> Response {
    let (status, body) = match health {
        Health::Active => (StatusCode::OK, r#"{"status":"active"}"#),
        Health::Starting => (StatusCode::ACCEPTED, r#"{"status":"starting"}"#),
    };
    let headers = [
        (CONTENT_TYPE, HeaderValue::from_static(JSON)),
        (
            CACHE_CONTROL,
            HeaderValue::from_static("no-cache, no-store, must-revalidate"),
        ),
    ];
    (status, headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_is_200_and_starting_is_202() {
        let active = respond(Health::Active);
        assert_eq!(active.status(), StatusCode::OK);
        assert_eq!(
            active.headers()[CACHE_CONTROL],
            "no-cache, no-store, must-revalidate"
        );
        assert_eq!(active.headers()[CONTENT_TYPE], JSON);
        assert_eq!(respond(Health::Starting).status(), StatusCode::ACCEPTED);
    }
}
