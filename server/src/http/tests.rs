//! Handler-level tests: the whole router over the in-memory [`FakeApi`], driven with
//! `tower::ServiceExt::oneshot`. Tokio's clock is paused, so long-poll waits take no real time.

use std::collections::BTreeMap;
use std::time::Duration;

use ampere_core::shape::ShapeHandle;
use ampere_core::where_clause::ZoneMismatch;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use proptest::prelude::*;
use tower::ServiceExt;

use super::fake::{row, FakeApi, SNAPSHOT_END};
use super::{router, HttpConfig, Route, WallClock};
use crate::metrics::text_format::{self, MetricFamily};
use crate::metrics::{Metrics, ServiceStats};

/// 35 340 055 s after the cursor epoch: the 20 s bucket ends at 35 340 060.
const NOW_SECS: u64 = 1_728_432_000 + 35_340_055;
const WEEK: &str = "public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746";
const LIVE: &str = "public, max-age=5, stale-while-revalidate=5";
const NON_LIVE: &str = "public, max-age=60, stale-while-revalidate=300";

fn config() -> HttpConfig {
    let mut config = HttpConfig::new(None);
    config.clock = WallClock::from_fn(|| Duration::from_secs(NOW_SECS));
    config.server_version = "9.9.9".to_owned();
    config
}

/// The router over an in-memory [`FakeApi`] holding `items` (shared with the handler tests of
/// `DELETE` and admission control, `tests_delete`).
pub(super) struct Harness {
    pub(super) api: FakeApi,
    pub(super) app: Router,
}

#[derive(Debug)]
pub(super) struct Reply {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: String,
}

impl Reply {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ascii header"))
    }

    pub(super) fn handle(&self) -> ShapeHandle {
        ShapeHandle::from_string(self.header("electric-handle").expect("handle").to_owned())
    }
}

/// Sends one request through `app` (owned, so a spawned task can send it too) and reads the
/// whole answer.
pub(super) async fn send(
    app: Router,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: Body,
) -> Reply {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(body).expect("request");
    let response = app.oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let body = String::from_utf8(bytes.to_vec()).expect("utf-8 body");
    Reply {
        status,
        headers,
        body,
    }
}

impl Harness {
    pub(super) fn new() -> Self {
        Self::with_config(config())
    }

    pub(super) fn with_config(config: HttpConfig) -> Self {
        let api = FakeApi::with_items();
        let app = router(api.clone(), config);
        Self { api, app }
    }

    pub(super) async fn get(&self, uri: &str) -> Reply {
        self.send(Method::GET, uri, &[], Body::empty()).await
    }

    pub(super) async fn delete(&self, uri: &str) -> Reply {
        self.send(Method::DELETE, uri, &[], Body::empty()).await
    }

    async fn send(&self, method: Method, uri: &str, headers: &[(&str, &str)], body: Body) -> Reply {
        send(self.app.clone(), method, uri, headers, body).await
    }

    /// `offset=-1` on `items`; returns the handle.
    pub(super) async fn initial_sync(&self) -> ShapeHandle {
        let reply = self.get("/v1/shape?table=items&offset=-1").await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        reply.handle()
    }
}

fn up_to_date(lsn: u64) -> String {
    format!(r#"{{"headers":{{"control":"up-to-date","global_last_seen_lsn":"{lsn}"}}}}"#)
}

#[tokio::test(start_paused = true)]
async fn initial_sync_returns_chunk_zero_with_schema_and_week_long_caching() {
    let h = Harness::new();
    let reply = h.get("/v1/shape?table=items&offset=-1&log=full").await;
    assert_eq!(reply.status, StatusCode::OK);
    let handle = reply.handle();
    assert_eq!(reply.header("electric-offset"), Some("0_0"));
    assert_eq!(reply.header("electric-has-data"), Some("true"));
    assert_eq!(
        reply.header("electric-schema"),
        Some(r#"{"id":{"type":"int4","pk_index":0,"not_null":true},"title":{"type":"text"}}"#)
    );
    assert_eq!(
        reply.header("etag"),
        Some(format!("\"{handle}:-1:0_0\"").as_str())
    );
    assert_eq!(reply.header("cache-control"), Some(WEEK));
    assert_eq!(
        reply.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(reply.header("electric-up-to-date"), None);
    assert_eq!(reply.header("electric-cursor"), None);
    assert_eq!(
        reply.body,
        format!("[{},{},{SNAPSHOT_END}]", row(1, "a"), row(2, "b"))
    );
}

#[tokio::test(start_paused = true)]
async fn second_request_at_0_0_is_up_to_date_at_0_inf() {
    let h = Harness::new();
    let handle = h.initial_sync().await;
    h.api.set_last_seen_lsn(24_187_768);
    let reply = h
        .get(&format!(
            "/v1/shape?handle={handle}&log=full&offset=0_0&table=items"
        ))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("electric-offset"), Some("0_inf"));
    assert_eq!(reply.header("electric-up-to-date"), Some(""));
    assert_eq!(reply.header("electric-has-data"), Some("true"));
    assert!(reply.header("electric-schema").is_some());
    assert_eq!(
        reply.header("etag"),
        Some(format!("\"{handle}:0_0:0_inf\"").as_str())
    );
    assert_eq!(reply.header("cache-control"), Some(NON_LIVE));
    assert_eq!(reply.body, format!("[{}]", up_to_date(24_187_768)));
}

#[tokio::test(start_paused = true)]
async fn live_long_poll_timeout_answers_up_to_date_without_data() {
    let h = Harness::new();
    let handle = h.initial_sync().await;
    let uri = format!("/v1/shape?cursor=&handle={handle}&live=true&offset=0_inf&table=items");
    let reply = h.get(&uri).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("electric-has-data"), Some("false"));
    assert_eq!(reply.header("electric-up-to-date"), Some(""));
    assert_eq!(reply.header("electric-offset"), Some("0_inf"));
    assert_eq!(reply.header("electric-cursor"), Some("35340060"));
    assert_eq!(reply.header("cache-control"), Some(LIVE));
    assert_eq!(reply.header("electric-schema"), None);
    let etag = reply.header("etag").expect("etag");
    assert!(
        etag.starts_with(&format!("\"{handle}:0_inf:0_inf:")),
        "{etag}"
    );
    assert_eq!(reply.body, format!("[{}]", up_to_date(0)));
    // Every no-change answer has its own ETag.
    let again = h.get(&uri).await;
    assert_ne!(again.header("etag"), Some(etag));
}

#[tokio::test(start_paused = true)]
async fn live_request_answers_when_a_change_arrives_during_the_wait() {
    let h = Harness::new();
    let handle = h.initial_sync().await;
    let api = h.api.clone();
    let writer = handle.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        api.append(&writer, "24187800_0", r#"{"v":1}"#, false);
    });
    let uri =
        format!("/v1/shape?cursor=35340060&handle={handle}&live=true&offset=0_inf&table=items");
    let reply = h.get(&uri).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("electric-offset"), Some("24187800_0"));
    assert_eq!(reply.header("electric-has-data"), Some("true"));
    assert_eq!(reply.header("electric-up-to-date"), Some(""));
    // The bucket equals the previous cursor, so the cursor jumps ahead by 1..=3600.
    let cursor: u64 = reply
        .header("electric-cursor")
        .expect("cursor")
        .parse()
        .expect("int");
    assert!((35_340_061..=35_343_660).contains(&cursor), "{cursor}");
    assert_eq!(
        reply.header("etag"),
        Some(format!("\"{handle}:0_inf:24187800_0\"").as_str())
    );
    assert_eq!(
        reply.body,
        format!(r#"[{{"v":1}},{}]"#, up_to_date(24_187_800))
    );
}

#[tokio::test(start_paused = true)]
async fn live_request_with_entries_waiting_answers_at_once_up_to_the_chunk_end() {
    let h = Harness::new();
    let handle = h.initial_sync().await;
    h.api.append(&handle, "10_0", r#"{"a":0}"#, true);
    h.api.append(&handle, "10_2", r#"{"a":2}"#, false);
    let base = format!("/v1/shape?handle={handle}&live=true&table=items");
    let first = h.get(&format!("{base}&offset=0_inf")).await;
    assert_eq!(first.header("electric-offset"), Some("10_0"));
    assert_eq!(first.header("electric-up-to-date"), None);
    assert_eq!(first.body, r#"[{"a":0}]"#);
    let second = h.get(&format!("{base}&offset=10_0")).await;
    assert_eq!(second.header("electric-offset"), Some("10_2"));
    assert_eq!(second.body, format!(r#"[{{"a":2}},{}]"#, up_to_date(10)));
}

#[tokio::test(start_paused = true)]
async fn unknown_handle_gets_409_pointing_to_the_definitions_shape() {
    let h = Harness::new();
    let reply = h
        .get("/v1/shape?table=items&offset=0_0&handle=gone-1")
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    let new_handle = reply.handle();
    assert_ne!(new_handle.as_str(), "gone-1");
    assert_eq!(
        reply.header("etag"),
        Some(format!("\"{new_handle}::\"").as_str())
    );
    assert_eq!(
        reply.header("cache-control"),
        Some("public, max-age=60, must-revalidate")
    );
    assert_eq!(reply.body, r#"[{"headers":{"control":"must-refetch"}}]"#);
    // The shape was created on demand and is what offset=-1 now serves.
    assert_eq!(h.initial_sync().await, new_handle);
}

#[tokio::test(start_paused = true)]
async fn handle_of_another_definition_gets_409_to_the_requested_one() {
    let h = Harness::new();
    let all_columns = h.initial_sync().await;
    let uri = format!("/v1/shape?table=items&columns=id&offset=0_0&handle={all_columns}");
    let reply = h.get(&uri).await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    let projected = reply.handle();
    assert_ne!(projected, all_columns);
    let follow = h.get("/v1/shape?table=items&columns=id&offset=-1").await;
    assert_eq!(follow.handle(), projected);
    assert_eq!(
        follow.header("electric-schema"),
        Some(r#"{"id":{"type":"int4","pk_index":0,"not_null":true}}"#)
    );
}

#[tokio::test(start_paused = true)]
async fn a_409_never_points_back_to_the_handle_just_sent() {
    let h = Harness::new();
    let handle = h.initial_sync().await;
    h.api.lose_log(&handle);
    let reply = h
        .get(&format!("/v1/shape?table=items&offset=0_0&handle={handle}"))
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(reply.header("electric-handle"), None);
    assert_eq!(reply.header("etag"), None);
    assert_eq!(
        reply.header("cache-control"),
        Some("public, max-age=1, must-revalidate")
    );
}

#[tokio::test(start_paused = true)]
async fn shape_removed_during_a_live_wait_gets_409() {
    let h = Harness::new();
    let handle = h.initial_sync().await;
    let api = h.api.clone();
    let victim = handle.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        api.remove(&victim);
    });
    let uri = format!("/v1/shape?handle={handle}&live=true&offset=0_inf&table=items");
    let reply = h.get(&uri).await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
}

#[tokio::test(start_paused = true)]
async fn matching_if_none_match_gets_304_without_body_or_schema() {
    let h = Harness::new();
    let handle = h.initial_sync().await;
    let tag = format!("\"other\", \"{handle}:-1:0_0\"");
    let reply = h
        .send(
            Method::GET,
            "/v1/shape?table=items&offset=-1",
            &[("if-none-match", &tag)],
            Body::empty(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_MODIFIED);
    assert_eq!(reply.body, "");
    assert_eq!(reply.header("electric-schema"), None);
    assert_eq!(reply.header("electric-offset"), Some("0_0"));
    assert_eq!(reply.header("cache-control"), Some(WEEK));
}

#[tokio::test(start_paused = true)]
async fn offset_now_answers_the_latest_offset_without_data() {
    let h = Harness::new();
    let reply = h
        .get("/v1/shape?table=items&offset=now&handle=ignored")
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("electric-offset"), Some("0_inf"));
    assert_eq!(reply.header("electric-has-data"), Some("false"));
    assert_eq!(reply.header("electric-up-to-date"), Some(""));
    assert!(reply.header("electric-schema").is_some());
    assert_eq!(reply.header("cache-control"), Some(NON_LIVE));
    let etag = reply.header("etag").expect("etag");
    assert!(
        etag.starts_with(&format!("\"{}:now:0_inf:", reply.handle())),
        "{etag}"
    );
}

#[tokio::test(start_paused = true)]
async fn offset_now_on_a_changes_only_shape_answers_once_its_snapshot_is_taken() {
    // Goal: a changes_only client starting at offset=now gets every change committed after
    // the answer: the answer waits for the shape's snapshot (which reads no rows), since a
    // change committed before the snapshot is skipped as one it saw. A full shape does not
    // wait (§6.4).
    // Method: a changes_only shape whose snapshot stays pending for 3 s; then offset=now on
    // the full shape of the same table while its snapshot is pending.
    let h = Harness::new();
    let first = h
        .get("/v1/shape?table=items&offset=-1&log=changes_only")
        .await;
    let changes_only = first.handle();
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    assert_ne!(
        changes_only,
        h.initial_sync().await,
        "full is another shape"
    );
    h.api.set_snapshot(&changes_only, vec![], false);
    let api = h.api.clone();
    let writer = changes_only.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        api.set_snapshot(&writer, vec![SNAPSHOT_END.to_owned()], true);
    });
    let started = tokio::time::Instant::now();
    let reply = h
        .get("/v1/shape?table=items&offset=now&log=changes_only")
        .await;
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.handle(), changes_only);
    assert_eq!(reply.header("electric-offset"), Some("0_inf"));
    assert_eq!(reply.header("electric-up-to-date"), Some(""));

    let full = h.initial_sync().await;
    h.api.set_snapshot(&full, vec![], false);
    let started = tokio::time::Instant::now();
    let reply = h.get("/v1/shape?table=items&offset=now").await;
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.handle(), full);
}

#[tokio::test(start_paused = true)]
async fn offset_beyond_the_log_is_out_of_bounds_after_a_grace_wait() {
    let h = Harness::new();
    let handle = h.initial_sync().await;
    let started = tokio::time::Instant::now();
    let reply = h
        .get(&format!(
            "/v1/shape?table=items&offset=999_0&handle={handle}"
        ))
        .await;
    assert!(started.elapsed() >= Duration::from_secs(10));
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.body,
        r#"{"message":"Invalid request","errors":{"offset":["out of bounds for this shape"]}}"#
    );
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(reply.header("surrogate-control"), Some("no-store"));
}

// Found by sim: seed 0xbb
#[tokio::test(start_paused = true)]
async fn offset_beyond_the_log_of_a_standby_is_503_not_400_since_its_storage_may_be_stale() {
    let h = Harness::new();
    let handle = h.initial_sync().await;
    h.api.set_starting(true);
    let reply = h
        .get(&format!(
            "/v1/shape?table=items&offset=999_0&handle={handle}"
        ))
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    assert_eq!(reply.header("retry-after"), Some("10"));
}

#[tokio::test(start_paused = true)]
async fn offset_beyond_the_log_is_served_if_data_reaches_it_in_the_grace_period() {
    let h = Harness::new();
    let handle = h.initial_sync().await;
    let api = h.api.clone();
    let writer = handle.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        api.append(&writer, "999_0", "{}", false);
        api.append(&writer, "999_2", r#"{"n":2}"#, false);
    });
    let reply = h
        .get(&format!(
            "/v1/shape?table=items&offset=999_0&handle={handle}"
        ))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("electric-offset"), Some("999_2"));
}

#[tokio::test(start_paused = true)]
async fn pending_snapshot_chunks_are_waited_for() {
    let h = Harness::new();
    let handle = h.initial_sync().await;
    h.api.set_snapshot(&handle, vec![row(1, "a")], false);
    let api = h.api.clone();
    let writer = handle.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        api.set_snapshot(&writer, vec![row(1, "a"), SNAPSHOT_END.to_owned()], true);
    });
    let reply = h
        .get(&format!("/v1/shape?table=items&offset=0_0&handle={handle}"))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("electric-offset"), Some("0_1"));
    assert_eq!(reply.header("electric-up-to-date"), None);
    assert_eq!(reply.body, format!("[{SNAPSHOT_END}]"));
}

#[tokio::test(start_paused = true)]
async fn missing_table_and_bad_columns_use_the_exact_messages() {
    let h = Harness::new();
    let reply = h.get("/v1/shape?table=nonexistent&offset=-1").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.body,
        r#"{"message":"Invalid request","errors":{"table":["Table \"public\".\"nonexistent\" does not exist. If the table name contains capitals or special characters you must quote it."]}}"#
    );
    let reply = h.get("/v1/shape?table=items&offset=-1&columns=title").await;
    assert_eq!(
        reply.body,
        r#"{"message":"Invalid request","errors":{"columns":["The list of columns must include all primary key columns, missing: id"]}}"#
    );
    let reply = h
        .get("/v1/shape?table=items&offset=-1&columns=id,nope")
        .await;
    assert_eq!(
        reply.body,
        r#"{"message":"Invalid request","errors":{"columns":["The following columns are not found on the table: nope"]}}"#
    );
    assert_eq!(h.api.shape_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn creating_a_shape_while_not_ready_is_503_retry_after_5() {
    let h = Harness::new();
    h.api.set_starting(true);
    let reply = h.get("/v1/shape?table=items&offset=-1").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.header("retry-after"), Some("5"));
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(reply.header("surrogate-control"), Some("no-store"));
    assert_eq!(
        reply.body,
        r#"{"message":"Timeout waiting for Postgres lock acquisition"}"#
    );
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
}

#[tokio::test(start_paused = true)]
async fn catalog_outage_is_503_retry_after_1() {
    let h = Harness::new();
    h.api.set_catalog_down(true);
    let reply = h.get("/v1/shape?table=items&offset=-1").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(
        reply.body,
        r#"{"message":"Cannot connect to the database to verify the shape. Please try again later."}"#
    );
}

#[tokio::test(start_paused = true)]
async fn long_poll_timeout_while_degraded_is_503_retry_after_10() {
    let h = Harness::new();
    let handle = h.initial_sync().await;
    h.api.set_starting(true);
    let reply = h
        .get(&format!(
            "/v1/shape?handle={handle}&live&offset=0_inf&table=items"
        ))
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.header("retry-after"), Some("10"));
}

// Found by sim: seed 0x68 (an SSE client on a standby with storage of its own heard only
// keep-alives, reconnecting to it forever).
#[tokio::test(start_paused = true)]
async fn an_event_stream_on_an_instance_not_streaming_is_a_503_after_the_long_poll_wait() {
    let h = Harness::new();
    let handle = h.initial_sync().await;
    h.api.set_starting(true);
    let uri = format!("/v1/shape?handle={handle}&live&live_sse=true&offset=0_inf&table=items");
    let reply = h.get(&uri).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.header("retry-after"), Some("10"));
    // A change arriving within the wait is streamed.
    let app = h.app.clone();
    let waiting =
        tokio::spawn(async move { send(app, Method::GET, &uri, &[], Body::empty()).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    h.api.append(
        &handle,
        "10_0",
        &row(3, "c").replace(
            "\"insert\"",
            "\"insert\",\"lsn\":\"10\",\"op_position\":0,\"txids\":[1],\"last\":true",
        ),
        false,
    );
    let reply = waiting.await.expect("request");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    assert!(reply.body.contains("\"id\":\"3\""), "{}", reply.body);
}

// Found by sim: seed 0x55
#[tokio::test(start_paused = true)]
async fn a_handle_the_read_model_has_not_seen_yet_is_served_once_creation_finds_its_shape() {
    let h = Harness::new();
    let handle = h.initial_sync().await;
    h.api.hide_from_read_model(&handle);
    let reply = h
        .get(&format!(
            "/v1/shape?handle={handle}&offset=0_inf&table=items"
        ))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.handle(), handle);
}

/// A handle of the same definition minted `by` microseconds after (or before) `handle`.
fn stamped_later(handle: &ShapeHandle, by: i64) -> ShapeHandle {
    let (digest, stamp) = handle.as_str().split_once('-').expect("<digest>-<stamp>");
    let stamp: i64 = stamp.parse().expect("numeric stamp");
    ShapeHandle::from_string(format!("{digest}-{}", stamp + by))
}

// Found by sim: seeds 0xef, 0x2dc, 0x414 (a standby reading a restored storage copy)
#[tokio::test(start_paused = true)]
async fn a_standby_whose_shape_the_client_saw_retired_answers_503_not_that_handle() {
    let h = Harness::new();
    let retired = h.initial_sync().await;
    h.api.set_starting(true);
    let uri = format!("/v1/shape?expired_handle={retired}&offset=-1&table=items");
    let reply = h.get(&uri).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    assert_eq!(reply.header("retry-after"), Some("5"));
    assert_eq!(reply.header("electric-handle"), None);
    // The active instance is the authority on which shape is live: it serves it.
    h.api.set_starting(false);
    assert_eq!(h.get(&uri).await.status, StatusCode::OK);
}

// Found by sim: seeds 0x2dc, 0x392, 0x46f
#[tokio::test(start_paused = true)]
async fn a_standby_never_points_a_client_back_from_a_later_handle_to_an_earlier_one() {
    let h = Harness::new();
    let current = h.initial_sync().await;
    h.api.set_starting(true);
    let later = stamped_later(&current, 1);
    let reply = h
        .get(&format!("/v1/shape?handle={later}&offset=0_0&table=items"))
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    assert_eq!(reply.header("retry-after"), Some("5"));
    // RO-2 still holds for a handle older than the definition's shape: 409 to the current one.
    let earlier = stamped_later(&current, -1);
    let reply = h
        .get(&format!(
            "/v1/shape?handle={earlier}&offset=0_0&table=items"
        ))
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{reply:?}");
    assert_eq!(reply.handle(), current);
}

#[tokio::test(start_paused = true)]
async fn existing_shapes_are_served_while_starting() {
    let h = Harness::new();
    let handle = h.initial_sync().await;
    h.api.set_starting(true);
    let reply = h
        .get(&format!("/v1/shape?handle={handle}&offset=0_0&table=items"))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
}

fn secured() -> Harness {
    let mut config = config();
    config.secret = Some("s3cret".to_owned());
    Harness::with_config(config)
}

#[tokio::test(start_paused = true)]
async fn wrong_or_missing_secret_is_401_with_cors_and_json() {
    let h = secured();
    for uri in [
        "/v1/shape?table=items&offset=-1",
        "/v1/shape?table=items&offset=-1&secret=nope",
        "/v1/shape?table=items&offset=-1&api_secret=s3cre",
    ] {
        let reply = h.get(uri).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{uri}");
        assert_eq!(
            reply.body,
            r#"{"message":"Unauthorized - Invalid API secret"}"#
        );
        assert_eq!(
            reply.header("content-type"),
            Some("application/json; charset=utf-8")
        );
        assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
        assert!(reply.header("access-control-expose-headers").is_some());
    }
    // Checked before validation: a bad request with a bad secret is a 401.
    assert_eq!(h.get("/v1/shape").await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(start_paused = true)]
async fn right_secret_or_legacy_name_is_served() {
    let h = secured();
    let ok = h.get("/v1/shape?table=items&offset=-1&secret=s3cret").await;
    assert_eq!(ok.status, StatusCode::OK);
    let legacy = h
        .get("/v1/shape?table=items&offset=-1&api_secret=s3cret")
        .await;
    assert_eq!(legacy.status, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn without_a_configured_secret_any_secret_parameter_is_ignored() {
    let h = Harness::new();
    let reply = h
        .get("/v1/shape?table=items&offset=-1&secret=whatever")
        .await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn secret_is_not_required_for_options_root_or_health() {
    let h = secured();
    let options = h
        .send(Method::OPTIONS, "/v1/shape", &[], Body::empty())
        .await;
    assert_eq!(options.status, StatusCode::NO_CONTENT);
    assert_eq!(h.get("/").await.status, StatusCode::OK);
    assert_eq!(h.get("/v1/health").await.status, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn normalised_path_variants_are_the_shape_route_and_need_the_secret() {
    let h = secured();
    for path in [
        "/v1/shape/",
        "/v1//shape",
        "/v1/%73hape",
        "//v1/./shape",
        "/v1/x/../shape",
    ] {
        let denied = h.get(&format!("{path}?table=items&offset=-1")).await;
        assert_eq!(denied.status, StatusCode::UNAUTHORIZED, "{path}");
        let served = h
            .get(&format!("{path}?table=items&offset=-1&secret=s3cret"))
            .await;
        assert_eq!(served.status, StatusCode::OK, "{path}");
    }
}

#[tokio::test(start_paused = true)]
async fn other_paths_and_methods_are_404_not_found() {
    let h = Harness::new();
    for path in [
        "/v1/shapes",
        "/v2/shape",
        "/foo",
        "/v1",
        "/v1/shape/x",
        "/v1/health/x",
    ] {
        let reply = h.get(path).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply.body, "Not found");
        assert_eq!(
            reply.header("access-control-allow-methods"),
            Some("GET, HEAD")
        );
    }
    for method in [Method::PUT, Method::PATCH] {
        let reply = h
            .send(
                method,
                "/v1/shape?table=items&offset=-1",
                &[],
                Body::empty(),
            )
            .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
    }
    let post_root = h.send(Method::POST, "/", &[], Body::empty()).await;
    assert_eq!(post_root.status, StatusCode::NOT_FOUND);
}

#[test]
fn routes_match_the_decoded_normalised_path() {
    assert_eq!(Route::of("/"), Route::Root);
    assert_eq!(Route::of(""), Route::Root);
    assert_eq!(Route::of("/v1/shape"), Route::Shape);
    assert_eq!(Route::of("/v1%2Fshape"), Route::Shape);
    assert_eq!(Route::of("/v1/health/"), Route::Health);
    assert_eq!(Route::of("/v1/Shape"), Route::Unknown);
    assert_eq!(Route::of("/metrics"), Route::Unknown);
}

#[tokio::test(start_paused = true)]
async fn health_reports_active_then_starting() {
    let h = Harness::new();
    let reply = h.get("/v1/health").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, r#"{"status":"active"}"#)
    );
    assert_eq!(
        reply.header("cache-control"),
        Some("no-cache, no-store, must-revalidate")
    );
    assert_eq!(
        reply.header("access-control-allow-methods"),
        Some("GET, HEAD")
    );
    h.api.set_starting(true);
    let reply = h.get("/v1/health").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::ACCEPTED, r#"{"status":"starting"}"#)
    );
}

/// The API with metrics recorded, and the router `ELECTRIC_PROMETHEUS_PORT` would serve.
fn with_metrics() -> (Harness, Router) {
    let api = FakeApi::with_items();
    let source = api.clone();
    let metrics = Metrics::new(move || ServiceStats::of_api(&source));
    let app = router(
        api.clone(),
        HttpConfig {
            metrics: Some(metrics.clone()),
            ..config()
        },
    );
    (Harness { api, app }, metrics.router())
}

/// Scrapes the metrics router and parses the exposition strictly.
async fn scrape(metrics: &Router) -> BTreeMap<String, MetricFamily> {
    let reply = Harness {
        api: FakeApi::default(),
        app: metrics.clone(),
    }
    .get("/metrics")
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    text_format::parse(&reply.body).unwrap_or_else(|e| panic!("{e}:\n{}", reply.body))
}

fn requests(families: &BTreeMap<String, MetricFamily>, route: &str, status: &str) -> f64 {
    families["ampere_http_requests_total"]
        .value(
            "ampere_http_requests_total",
            &[("route", route), ("status", status)],
        )
        .unwrap_or(0.0)
}

#[tokio::test(start_paused = true)]
async fn metrics_expose_readiness_purges_and_progress_in_prometheus_text() {
    let (h, metrics) = with_metrics();
    // Only on the Prometheus port: the API answers 404.
    assert_eq!(h.get("/metrics").await.status, StatusCode::NOT_FOUND);
    let families = scrape(&metrics).await;
    for (name, kind) in [
        ("ampere_active", "gauge"),
        ("ampere_purges_total", "counter"),
        ("ampere_durable_lsn", "gauge"),
        ("ampere_http_requests_total", "counter"),
        ("ampere_http_request_duration_seconds", "histogram"),
        ("ampere_http_requests_in_flight", "gauge"),
    ] {
        let family = families
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(family.kind, kind, "{name}");
        assert!(family.help.ends_with('.'), "{name}: {:?}", family.help);
    }
    assert_eq!(
        families["ampere_active"].value("ampere_active", &[]),
        Some(1.0)
    );
    assert_eq!(
        families["ampere_purges_total"].value("ampere_purges_total", &[]),
        Some(0.0)
    );
    assert_eq!(requests(&families, "other", "404"), 1.0);
    h.api.set_starting(true);
    let families = scrape(&metrics).await;
    assert_eq!(
        families["ampere_active"].value("ampere_active", &[]),
        Some(0.0)
    );
    // Another port's scrapes are not API requests.
    assert_eq!(requests(&families, "other", "404"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn request_counters_latency_and_in_flight_move_with_requests() {
    let (h, metrics) = with_metrics();
    let handle = h.initial_sync().await;
    assert_eq!(h.get("/v1/health").await.status, StatusCode::OK);
    assert_eq!(h.get("/v1/health").await.status, StatusCode::OK);
    let families = scrape(&metrics).await;
    assert_eq!(requests(&families, "shape", "200"), 1.0);
    assert_eq!(requests(&families, "health", "200"), 2.0);
    let latency = &families["ampere_http_request_duration_seconds"];
    assert_eq!(
        latency.value(
            "ampere_http_request_duration_seconds_count",
            &[("route", "health")]
        ),
        Some(2.0)
    );

    // A long poll is in flight (route shape_live) until it times out after 20 s.
    let live = format!("/v1/shape?table=items&handle={handle}&offset=0_inf&live=true");
    let poll = tokio::spawn({
        let app = h.app.clone();
        let live = live.clone();
        async move {
            Harness {
                api: FakeApi::default(),
                app,
            }
            .get(&live)
            .await
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let in_flight = |families: &BTreeMap<String, MetricFamily>| {
        families["ampere_http_requests_in_flight"]
            .value("ampere_http_requests_in_flight", &[("route", "shape_live")])
    };
    assert_eq!(in_flight(&scrape(&metrics).await), Some(1.0));
    let reply = poll.await.expect("poll task");
    let families = scrape(&metrics).await;
    assert_eq!(in_flight(&families), Some(0.0));
    let status = reply.status.as_str().to_owned();
    assert_eq!(requests(&families, "shape_live", &status), 1.0);
    let latency = &families["ampere_http_request_duration_seconds"];
    let long = latency
        .value(
            "ampere_http_request_duration_seconds_bucket",
            &[("route", "shape_live"), ("le", "10")],
        )
        .unwrap_or_else(|| panic!("no bucket in {latency:?}"));
    assert_eq!(long, 0.0, "a 20 s long poll is above the 10 s bucket");
}

#[tokio::test(start_paused = true)]
async fn the_prometheus_router_serves_only_metrics() {
    let (_, metrics) = with_metrics();
    let h = Harness {
        api: FakeApi::default(),
        app: metrics,
    };
    assert_eq!(h.get("/").await.status, StatusCode::NOT_FOUND);
    assert_eq!(h.get("/v1/health").await.status, StatusCode::NOT_FOUND);
    let post = h.send(Method::POST, "/metrics", &[], Body::empty()).await;
    assert_eq!(post.status, StatusCode::NOT_FOUND);
    let head = h.send(Method::HEAD, "/metrics", &[], Body::empty()).await;
    assert_eq!((head.status, head.body.as_str()), (StatusCode::OK, ""));
}

#[tokio::test(start_paused = true)]
async fn root_answers_200_empty_to_get_and_head() {
    let h = Harness::new();
    for method in [Method::GET, Method::HEAD] {
        let reply = h.send(method, "/", &[], Body::empty()).await;
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, ""));
    }
}

#[tokio::test(start_paused = true)]
async fn head_is_get_without_the_body() {
    let h = Harness::new();
    let reply = h
        .send(
            Method::HEAD,
            "/v1/shape?table=items&offset=-1",
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "");
    assert_eq!(reply.header("electric-offset"), Some("0_0"));
    assert_eq!(reply.header("cache-control"), Some(WEEK));
}

#[tokio::test(start_paused = true)]
async fn every_shape_request_served_counts_as_a_use_of_its_shape_and_a_409_does_not() {
    // Goal: the last use that eviction beyond ELECTRIC_MAX_SHAPES ranks shapes by sees every
    // kind of request served for a shape. Method: an initial sync, a catch-up read, a HEAD, a
    // long poll that times out and an SSE stream that ends, each recorded once; then a
    // request with an unknown handle, answered 409, which records nothing.
    let h = Harness::new();
    let handle = h.initial_sync().await;
    let read = format!("/v1/shape?table=items&handle={handle}&offset=0_0");
    assert_eq!(h.get(&read).await.status, StatusCode::OK);
    let head = h.send(Method::HEAD, &read, &[], Body::empty()).await;
    assert_eq!(head.status, StatusCode::OK);
    let live = format!("/v1/shape?table=items&handle={handle}&offset=0_inf&live=true");
    assert_eq!(h.get(&live).await.status, StatusCode::OK);
    let sse = format!("{live}&live_sse=true");
    assert_eq!(h.get(&sse).await.status, StatusCode::OK);
    assert_eq!(h.api.uses(), vec![handle.clone(); 5]);

    let unknown = h.get("/v1/shape?table=items&handle=1-1&offset=0_0").await;
    assert_eq!(unknown.status, StatusCode::CONFLICT);
    assert_eq!(h.api.uses().len(), 5, "a 409 serves no shape");
}

#[tokio::test(start_paused = true)]
async fn delete_is_405_and_not_cached() {
    let h = Harness::new();
    let reply = h
        .send(Method::DELETE, "/v1/shape?table=items", &[], Body::empty())
        .await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.body, r#"{"message":"DELETE not allowed"}"#);
    assert_eq!(reply.header("cache-control"), Some("no-cache"));
    assert_eq!(reply.header("surrogate-control"), None);
    assert_eq!(
        secured()
            .send(Method::DELETE, "/v1/shape", &[], Body::empty())
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(start_paused = true)]
async fn post_serves_the_log_uncached_unless_its_body_asks_for_a_subset() {
    let h = Harness::new();
    let uri = "/v1/shape?table=items&offset=-1";
    for body in ["", "  ", "{}", r#"{"unrelated":1}"#] {
        let reply = h.send(Method::POST, uri, &[], Body::from(body)).await;
        assert_eq!(reply.status, StatusCode::OK, "{body:?}");
        assert_eq!(reply.header("cache-control"), Some("no-cache"));
        assert_eq!(reply.header("electric-offset"), Some("0_0"));
    }
    let subset = h
        .send(Method::POST, uri, &[], Body::from(r#"{"where":"id=1"}"#))
        .await;
    assert_eq!(subset.status, StatusCode::OK);
    assert_eq!(subset.header("electric-snapshot"), Some("true"));
    assert_eq!(subset.header("cache-control"), Some("no-cache"));
    let array = h.send(Method::POST, uri, &[], Body::from("[1]")).await;
    assert_eq!(
        array.body,
        r#"{"error":"Request body must be a JSON object"}"#
    );
    let broken = h.send(Method::POST, uri, &[], Body::from("{")).await;
    assert_eq!(broken.status, StatusCode::BAD_REQUEST);
    assert!(broken
        .body
        .starts_with(r#"{"error":"Invalid JSON in request body","details":"#));
    let huge = Body::from(vec![b' '; 8 * 1024 * 1024 + 1]);
    assert_eq!(
        h.send(Method::POST, uri, &[], huge).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
}

#[tokio::test(start_paused = true)]
async fn preflight_is_204_with_cors_and_no_cache_control() {
    let h = Harness::new();
    let headers = [
        ("origin", "https://app.example"),
        ("access-control-request-headers", "if-none-match"),
    ];
    let reply = h
        .send(Method::OPTIONS, "/v1/shape", &headers, Body::empty())
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        reply.header("access-control-allow-headers"),
        Some("if-none-match")
    );
    assert_eq!(reply.header("access-control-max-age"), Some("86400"));
    assert_eq!(
        reply.header("access-control-allow-methods"),
        Some("GET, POST, HEAD, DELETE, OPTIONS")
    );
    assert_eq!(reply.header("cache-control"), None);
}

#[tokio::test(start_paused = true)]
async fn every_response_has_a_request_id_and_the_server_name() {
    let h = Harness::new();
    let echoed = h
        .send(
            Method::GET,
            "/nope",
            &[("x-request-id", "abc-123")],
            Body::empty(),
        )
        .await;
    assert_eq!(echoed.header("x-request-id"), Some("abc-123"));
    assert_eq!(echoed.header("electric-server"), Some("ampere/9.9.9"));
    let first = h.get("/v1/health").await;
    let second = h.get("/v1/health").await;
    let id = first.header("x-request-id").expect("generated");
    assert_eq!(id.len(), 32);
    assert_ne!(Some(id), second.header("x-request-id"));
}

#[tokio::test(start_paused = true)]
async fn sub_second_long_poll_timeout_sends_cursor_zero() {
    let mut config = config();
    config.long_poll_timeout = Duration::from_millis(50);
    let h = Harness::with_config(config);
    let handle = h.initial_sync().await;
    let reply = h
        .get(&format!(
            "/v1/shape?handle={handle}&live=true&offset=0_inf&table=items"
        ))
        .await;
    assert_eq!(reply.header("electric-cursor"), Some("0"));
    assert_eq!(reply.header("electric-has-data"), Some("false"));
}

/// Query keys the property test draws from: every known parameter plus junk.
const KEYS: [&str; 20] = [
    "table",
    "offset",
    "handle",
    "live",
    "live_sse",
    "experimental_live_sse",
    "cursor",
    "columns",
    "replica",
    "log",
    "where",
    "params[1]",
    "params",
    "secret",
    "api_secret",
    "subset__limit",
    "subset__where_expr",
    "cache-buster",
    "x[",
    "%74able",
];

fn value_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("-1".to_owned()),
        Just("now".to_owned()),
        Just("0_0".to_owned()),
        Just("0_inf".to_owned()),
        Just("items".to_owned()),
        Just("%22items%22".to_owned()),
        Just("true".to_owned()),
        Just("false".to_owned()),
        Just(String::new()),
        "[0-9_]{0,24}",
        "[a-z%\\[\\]\"._,=+&-]{0,16}",
        any::<String>().prop_map(|s| s.chars().take(40).collect()),
        "(%[0-9A-Fa-f]{2}){1,6}",
    ]
}

fn query_strategy() -> impl Strategy<Value = String> {
    let pair = (prop::sample::select(KEYS.to_vec()), value_strategy());
    prop::collection::vec(pair, 0..8).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(k, v)| {
                let v: String = v
                    .chars()
                    .map(|c| {
                        if c == '#' || c.is_whitespace() {
                            '+'
                        } else {
                            c
                        }
                    })
                    .collect();
                format!("{k}={v}")
            })
            .collect::<Vec<_>>()
            .join("&")
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_queries_never_cause_a_server_error(query in query_strategy()) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        let status = runtime.block_on(async {
            let mut config = config();
            config.long_poll_timeout = Duration::from_millis(50);
            let h = Harness::with_config(config);
            h.initial_sync().await;
            let uri = format!("/v1/shape?{}", percent_encode_unsafe(&query));
            h.get(&uri).await.status
        });
        prop_assert!(!status.is_server_error(), "{query} -> {status}");
    }
}

/// Escapes what a URI cannot carry raw (non-ASCII, controls, spaces, quotes), keeping `%`, `&`
/// and `=` so the generated escapes and structure survive.
fn percent_encode_unsafe(query: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
        .add(b' ')
        .add(b'"')
        .add(b'#')
        .add(b'<')
        .add(b'>')
        .add(b'[')
        .add(b']')
        .add(b'`')
        .add(b'{')
        .add(b'}')
        .add(b'|')
        .add(b'\\')
        .add(b'^');
    percent_encoding::utf8_percent_encode(query, SET).to_string()
}

// ---------------------------------------------------------------------------------------------
// Live SSE (§6.5)

/// `data: <json>\n\n` for each message.
fn events(messages: &[&str]) -> String {
    messages.iter().map(|m| format!("data: {m}\n\n")).collect()
}

const KEEPALIVE: &str = ": keep-alive\n\n";

#[tokio::test(start_paused = true)]
async fn sse_with_a_backlog_sends_it_at_once_framed_up_to_date_and_keeps_streaming() {
    let h = Harness::new();
    let handle = h.initial_sync().await;
    h.api.append(&handle, "10_0", r#"{"a":0}"#, true);
    h.api.append(&handle, "10_2", r#"{"a":2}"#, false);
    let (api, writer) = (h.api.clone(), handle.clone());
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        api.append(&writer, "11_0", r#"{"a":4}"#, false);
    });
    let started = tokio::time::Instant::now();
    let request = Request::builder()
        .uri(format!(
            "/v1/shape?cursor=&experimental_live_sse=true&handle={handle}&live=true\
             &live_sse=true&offset=0_inf&table=items"
        ))
        .body(Body::empty())
        .expect("request");
    let response = h.app.clone().oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().expect("ascii"))
    };
    assert_eq!(header("content-type"), Some("text/event-stream"));
    assert_eq!(header("cache-control"), Some("public, max-age=59"));
    assert_eq!(header("connection"), Some("keep-alive"));
    assert_eq!(header("electric-handle"), Some(handle.as_str()));
    assert_eq!(header("electric-offset"), Some("0_inf"));
    assert_eq!(header("electric-cursor"), Some("35340060"));
    assert_eq!(header("electric-schema"), None);
    let mut body = response.into_body();
    let first = body.frame().await.expect("a frame").expect("no error");
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "a backlog is sent at once"
    );
    let mut text = String::from_utf8(first.into_data().expect("data").to_vec()).expect("utf-8");
    let rest = body.collect().await.expect("body").to_bytes();
    text.push_str(std::str::from_utf8(&rest).expect("utf-8"));
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(60),
        "then it streams live"
    );
    // Both chunks of the backlog, though the first ends before the latest offset (a batch
    // without its up-to-date would be dropped by the client and re-requested forever), then
    // the change at 5 s, then keep-alives at 26 s and 47 s.
    let expected = [
        events(&[r#"{"a":0}"#, r#"{"a":2}"#, &up_to_date(10)]),
        events(&[r#"{"a":4}"#, &up_to_date(11)]),
        KEEPALIVE.to_owned(),
        KEEPALIVE.to_owned(),
    ]
    .concat();
    assert_eq!(text, expected);
}

#[tokio::test(start_paused = true)]
async fn sse_streams_each_batch_as_it_arrives_with_keep_alives_and_ends_after_60_s() {
    let h = Harness::new();
    let handle = h.initial_sync().await;
    let (api, writer) = (h.api.clone(), handle.clone());
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        api.append(&writer, "20_0", r#"{"v":1}"#, false);
        tokio::time::sleep(Duration::from_secs(27)).await;
        api.append(&writer, "30_0", r#"{"v":2}"#, false);
        api.append(&writer, "30_2", r#"{"v":3}"#, false);
    });
    let started = tokio::time::Instant::now();
    let reply = h
        .get(&format!(
            "/v1/shape?handle={handle}&live=true&live_sse=true&offset=0_inf&table=items"
        ))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    // 3 s: the first batch; 24 s: 21 s of silence; 30 s: the second; 51 s; then the end.
    let expected = [
        events(&[r#"{"v":1}"#, &up_to_date(20)]),
        KEEPALIVE.to_owned(),
        events(&[r#"{"v":2}"#, r#"{"v":3}"#, &up_to_date(30)]),
        KEEPALIVE.to_owned(),
    ]
    .concat();
    assert_eq!(reply.body, expected);
    assert_eq!(started.elapsed(), Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn sse_resuming_at_lsn_0_does_not_resend_the_rest_of_that_transaction() {
    let h = Harness::new();
    let handle = h.initial_sync().await;
    h.api.append(&handle, "10_0", r#"{"t":"10.0"}"#, false);
    h.api.append(&handle, "10_2", r#"{"t":"10.2"}"#, false);
    h.api.append(&handle, "12_0", r#"{"t":"12.0"}"#, false);
    // The client's resume offset after an up-to-date naming LSN 10.
    let reply = h
        .get(&format!(
            "/v1/shape?handle={handle}&live=true&live_sse=true&offset=10_0&table=items"
        ))
        .await;
    assert_eq!(reply.header("electric-offset"), Some("10_0"));
    let expected = [
        events(&[r#"{"t":"12.0"}"#, &up_to_date(12)]),
        KEEPALIVE.to_owned(),
        KEEPALIVE.to_owned(),
    ]
    .concat();
    assert_eq!(reply.body, expected);
}

#[tokio::test(start_paused = true)]
async fn sse_ends_the_stream_when_the_shape_goes_away_and_the_reconnect_gets_409() {
    let h = Harness::new();
    let handle = h.initial_sync().await;
    let (api, removed) = (h.api.clone(), handle.clone());
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        api.remove(&removed);
    });
    let uri = format!("/v1/shape?handle={handle}&live=true&live_sse=true&offset=0_inf&table=items");
    let started = tokio::time::Instant::now();
    let reply = h.get(&uri).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "", "no must-refetch event");
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    let again = h.get(&uri).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(
        again.header("content-type"),
        Some("application/json; charset=utf-8")
    );
}

#[tokio::test(start_paused = true)]
async fn sse_errors_before_streaming_are_ordinary_json_responses() {
    let h = Harness::new();
    let handle = h.initial_sync().await;
    let out_of_bounds = h
        .get(&format!(
            "/v1/shape?handle={handle}&live=true&live_sse=true&offset=99_0&table=items"
        ))
        .await;
    assert_eq!(out_of_bounds.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        out_of_bounds.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let not_live = h
        .get(&format!(
            "/v1/shape?handle={handle}&live_sse=true&offset=0_inf&table=items"
        ))
        .await;
    assert_eq!(not_live.status, StatusCode::BAD_REQUEST);
    assert!(not_live
        .body
        .contains("can't be true unless live is also true"));
}

#[tokio::test(start_paused = true)]
async fn a_where_naming_a_time_zone_the_server_reads_otherwise_is_a_400_at_the_zone() {
    let h = Harness::new();
    let mismatch = ZoneMismatch::Differs {
        zone: "America/Vancouver".into(),
        unix: 1_794_132_000,
        ampere: 1_794_132_000 - 7 * 3600,
        server: Some(1_794_132_000 - 8 * 3600),
    };
    h.api
        .set_zone_mismatch("America/Vancouver", mismatch.clone());
    // Folded to a constant at bind time, yet still checked: the zone is named.
    let clause = "('2026-11-08 10:00:00'::timestamp AT TIME ZONE 'america/vancouver') IS NOT NULL";
    let uri = format!("/v1/shape?table=items&offset=-1&where={clause}");
    let reply = h.get(&percent_encode_unsafe(&uri)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");
    let location = clause
        .find("'america/vancouver'")
        .expect("zone in the clause");
    let expected = serde_json::json!({
        "message": "Invalid request",
        "errors": {"where": [format!("At location {location}: {mismatch}")]},
    });
    let body: serde_json::Value = serde_json::from_str(&reply.body).expect("json");
    assert_eq!(body, expected);
    assert_eq!(h.api.shape_count(), 0, "no shape for a refused clause");

    let agreed = "('2026-11-08 10:00:00'::timestamp AT TIME ZONE 'Europe/Paris') IS NOT NULL";
    let uri = format!("/v1/shape?table=items&offset=-1&where={agreed}");
    let reply = h.get(&percent_encode_unsafe(&uri)).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(h.api.shape_count(), 1);
}
