//! `GET /v1/health` (protocol.md §1.4).

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::headers::JSON;
use crate::api::{Health, PurgeInfo};
use crate::registry::StorageDegraded;

/// `200 {"status":"active"}` when shapes can be served and created, `202 {"status":"waiting"}`
/// for a read-only standby, else `202 {"status":"starting"}`; never cached. After a purge the
/// body also names it (`"purges":n,"last_purge_reason":"…"`, an allowed extra field), and
/// while storage writes fail it says why (`"storage":"full","storage_error":"…"`, likewise):
/// the status code stays the protocol's (a degraded instance is not active, so `202`).
pub(crate) fn respond(
    health: Health,
    purge: Option<PurgeInfo>,
    degraded: Option<StorageDegraded>,
) -> Response {
    let (status, word) = match health {
        Health::Active => (StatusCode::OK, "active"),
        Health::Waiting => (StatusCode::ACCEPTED, "waiting"),
        Health::Starting => (StatusCode::ACCEPTED, "starting"),
    };
    let mut body = format!(r#"{{"status":"{word}""#);
    if let Some(p) = purge {
        body.push_str(&format!(r#","purges":{},"last_purge_reason":"#, p.count));
        ampere_core::json::push_json_string(&mut body, p.reason);
    }
    if let Some(d) = degraded {
        body.push_str(&format!(r#","storage":"{}","storage_error":"#, d.reason));
        ampere_core::json::push_json_string(&mut body, &d.message);
    }
    body.push('}');
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
        let active = respond(Health::Active, None, None);
        assert_eq!(active.status(), StatusCode::OK);
        assert_eq!(
            active.headers()[CACHE_CONTROL],
            "no-cache, no-store, must-revalidate"
        );
        assert_eq!(active.headers()[CONTENT_TYPE], JSON);
        assert_eq!(
            respond(Health::Starting, None, None).status(),
            StatusCode::ACCEPTED
        );
        assert_eq!(
            respond(Health::Waiting, None, None).status(),
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
        let body = respond(Health::Active, Some(purge), None)
            .into_body()
            .collect()
            .await;
        let bytes = body.expect("body").to_bytes();
        assert_eq!(
            &bytes[..],
            br#"{"status":"active","purges":1,"last_purge_reason":"replication slot was created anew"}"#
        );
    }

    #[tokio::test]
    async fn degraded_storage_keeps_the_status_code_and_names_the_cause() {
        use http_body_util::BodyExt as _;
        let degraded = StorageDegraded {
            reason: "full",
            message: "storage is full (ENOSPC) at /s/lease while loading storage".into(),
        };
        let response = respond(Health::Waiting, None, Some(degraded));
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let body = response.into_body().collect().await;
        let bytes = body.expect("body").to_bytes();
        assert_eq!(
            &bytes[..],
            br#"{"status":"waiting","storage":"full","storage_error":"storage is full (ENOSPC) at /s/lease while loading storage"}"#
        );
    }
}
