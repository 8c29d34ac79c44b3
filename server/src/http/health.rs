//! `GET /v1/health` (protocol.md §1.4).

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::headers::JSON;
use crate::api::{Health, PurgeInfo};

/// `200 {"status":"active"}` when shapes can be served and created, `202 {"status":"waiting"}`
/// for a read-only standby, else `202 {"status":"starting"}`; never cached. After a purge the
/// body also names it (`"purges":n,"last_purge_reason":"…"`, an allowed extra field).
pub(crate) fn respond(health: Health, purge: Option<PurgeInfo>) -> Response {
    let (status, word) = match health {
        Health::Active => (StatusCode::OK, "active"),
        Health::Waiting => (StatusCode::ACCEPTED, "waiting"),
        Health::Starting => (StatusCode::ACCEPTED, "starting"),
    };
    let body = match purge {
        None => format!(r#"{{"status":"{word}"}}"#),
        Some(p) => {
            let mut reason = String::new();
            ampere_core::json::push_json_string(&mut reason, p.reason);
            format!(
                r#"{{"status":"{word}","purges":{},"last_purge_reason":{reason}}}"#,
                p.count
            )
        }
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
        let active = respond(Health::Active, None);
        assert_eq!(active.status(), StatusCode::OK);
        assert_eq!(
            active.headers()[CACHE_CONTROL],
            "no-cache, no-store, must-revalidate"
        );
        assert_eq!(active.headers()[CONTENT_TYPE], JSON);
        assert_eq!(
            respond(Health::Starting, None).status(),
            StatusCode::ACCEPTED
        );
        assert_eq!(
            respond(Health::Waiting, None).status(),
            StatusCode::ACCEPTED
        );
    }

    #[tokio::test]
    async fn a_purge_is_named_in_the_health_body() {
        use http_body_util::BodyExt as _;
        let purge = PurgeInfo {
            count: 1,
            reason: "replication slot was created anew",
        };
        let body = respond(Health::Active, Some(purge))
            .into_body()
            .collect()
            .await;
        let bytes = body.expect("body").to_bytes();
        assert_eq!(
            &bytes[..],
            br#"{"status":"active","purges":1,"last_purge_reason":"replication slot was created anew"}"#
        );
    }
}
