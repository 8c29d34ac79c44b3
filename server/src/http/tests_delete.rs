//! Handler tests of `DELETE /v1/shape` (protocol.md §1.5) and of admission control
//! (`ELECTRIC_MAX_CONCURRENT_REQUESTS`, §6.9): the whole router over the in-memory
//! `FakeApi` (the harness of `tests`), tokio's clock paused so waits take no real time.

use std::time::Duration;

use ampere_core::shape::ShapeHandle;
use axum::body::Body;
use axum::http::{Method, StatusCode};

use super::fake::{row, SNAPSHOT_END};
use super::tests::{send, Harness, Reply};
use super::{AdmissionLimits, HttpConfig};

const JSON: &str = "application/json; charset=utf-8";
const NOT_FOUND: &str = r#"{"message":"No existing shape found"}"#;

/// Electric's defaults, with shape deletion on.
fn deleting() -> HttpConfig {
    HttpConfig {
        is_shape_deletion_enabled: true,
        ..HttpConfig::new(None)
    }
}

/// `offset=-1` on `items` with the secret `s3cret`; returns the handle.
async fn initial_sync_with_secret(h: &Harness) -> ShapeHandle {
    let reply = h.get("/v1/shape?table=items&offset=-1&secret=s3cret").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.handle()
}

/// A successful deletion, exactly as §1.5 has it.
fn assert_accepted(reply: &Reply) {
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
    assert_eq!(reply.body, "");
    assert_eq!(reply.header("content-type"), Some(JSON));
    assert_eq!(reply.header("cache-control"), Some("no-cache"));
    assert_eq!(reply.header("electric-has-data"), Some("true"));
    assert_eq!(reply.header("electric-handle"), None);
    assert_eq!(reply.header("etag"), None);
    assert_eq!(reply.header("surrogate-control"), None);
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
}

/// A 400 with `body`, uncached as every DELETE answer is.
fn assert_bad_request(reply: &Reply, body: &str) {
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");
    assert_eq!(reply.body, body);
    assert_eq!(reply.header("content-type"), Some(JSON));
    assert_eq!(reply.header("cache-control"), Some("no-cache"));
}

// ---------------------------------------------------------------------------------------------
// DELETE /v1/shape

#[tokio::test(start_paused = true)]
async fn delete_is_405_while_integration_testing_is_off_and_the_shape_stays() {
    let h = Harness::with_config(HttpConfig::new(None));
    h.initial_sync().await;
    let reply = h.delete("/v1/shape?table=items").await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.body, r#"{"message":"DELETE not allowed"}"#);
    assert_eq!(h.api.shape_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn deleting_by_definition_answers_202_with_an_empty_body_and_no_handle() {
    let h = Harness::with_config(deleting());
    h.initial_sync().await;
    // `offset` and `live` are ignored, not validated.
    let reply = h
        .delete("/v1/shape?table=items&offset=nonsense&live=true")
        .await;
    assert_accepted(&reply);
    assert_eq!(h.api.shape_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn deleting_by_handle_alone_or_with_its_definition_answers_202() {
    let h = Harness::with_config(deleting());
    let handle = h.initial_sync().await;
    assert_accepted(&h.delete(&format!("/v1/shape?handle={handle}")).await);
    assert_eq!(h.api.shape_count(), 0);

    let handle = h.initial_sync().await;
    let both = format!("/v1/shape?table=items&handle={handle}");
    assert_accepted(&h.delete(&both).await);
    assert_eq!(h.api.shape_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_deleted_handle_gets_409_to_a_new_handle_and_the_old_one_is_never_reissued() {
    let h = Harness::with_config(deleting());
    let old = h.initial_sync().await;
    assert_accepted(&h.delete("/v1/shape?table=items").await);

    let stale = h
        .get(&format!("/v1/shape?table=items&handle={old}&offset=0_0"))
        .await;
    assert_eq!(stale.status, StatusCode::CONFLICT, "{stale:?}");
    assert_eq!(stale.body, r#"[{"headers":{"control":"must-refetch"}}]"#);
    let new = stale.handle();
    assert_ne!(new, old);
    assert!(new.supersedes(&old), "{new} after {old}");
    // The client's restart at -1 gets the new shape, with its snapshot.
    let restart = h
        .get(&format!(
            "/v1/shape?table=items&offset=-1&expired_handle={old}"
        ))
        .await;
    assert_eq!(restart.status, StatusCode::OK);
    assert_eq!(restart.handle(), new);
    assert_eq!(
        restart.body,
        format!("[{},{},{SNAPSHOT_END}]", row(1, "a"), row(2, "b"))
    );
    // The old handle alone names nothing any more.
    let again = h.delete(&format!("/v1/shape?handle={old}")).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
}

#[tokio::test(start_paused = true)]
async fn a_live_reader_of_a_deleted_shape_gets_409() {
    let h = Harness::with_config(deleting());
    let handle = h.initial_sync().await;
    let app = h.app.clone();
    let uri = format!("/v1/shape?table=items&handle={handle}&offset=0_inf&live=true");
    let reader =
        tokio::spawn(async move { send(app, Method::GET, &uri, &[], Body::empty()).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_accepted(&h.delete("/v1/shape?table=items").await);
    let reply = reader.await.expect("reader");
    assert_eq!(reply.status, StatusCode::CONFLICT, "{reply:?}");
}

#[tokio::test(start_paused = true)]
async fn a_handle_that_is_not_the_definitions_is_400_and_nothing_is_deleted() {
    let h = Harness::with_config(deleting());
    let handle = h.initial_sync().await;
    let other = h
        .get("/v1/shape?table=items&offset=-1&columns=id")
        .await
        .handle();
    let reply = h
        .delete(&format!("/v1/shape?table=items&handle={other}"))
        .await;
    assert_bad_request(
        &reply,
        r#"{"message":"The specified shape definition and handle do not match. Please ensure the shape definition is correct or omit the shape handle from the request to obtain a new one."}"#,
    );
    assert_eq!(h.api.shape_count(), 2);
    assert_ne!(handle, other);
}

#[tokio::test(start_paused = true)]
async fn without_a_table_the_handle_is_required() {
    let h = Harness::with_config(deleting());
    for uri in [
        "/v1/shape",
        "/v1/shape?table=&handle=",
        "/v1/shape?where=id%3D1",
    ] {
        assert_bad_request(
            &h.delete(uri).await,
            r#"{"message":"Invalid request","errors":{"handle":["can't be blank when shape definition is missing"]}}"#,
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_definition_is_validated_as_for_a_get() {
    let h = Harness::with_config(deleting());
    h.initial_sync().await;
    let cases = [
        (
            "table=items&replica=teapot",
            r#"{"message":"Invalid request","errors":{"replica":["is invalid"]}}"#,
        ),
        (
            "table=it-ems",
            r#"{"message":"Invalid request","errors":{"table":["Invalid unquoted identifier contains special characters: it-ems"]}}"#,
        ),
        (
            "table=items&where=1%20x%201",
            r#"{"message":"Invalid request","errors":{"where":["At location 17: syntax error at or near \"x\""]}}"#,
        ),
        (
            "table=items&where=id%3D%242&params[2]=1",
            r#"{"message":"Invalid request","errors":{"params":["Parameters must be numbered sequentially, starting from 1"]}}"#,
        ),
        // Checks that need the catalog, for a definition no shape has.
        (
            "table=nope",
            r#"{"message":"Invalid request","errors":{"table":["Table \"public\".\"nope\" does not exist. If the table name contains capitals or special characters you must quote it."]}}"#,
        ),
        (
            "table=items&columns=title",
            r#"{"message":"Invalid request","errors":{"columns":["The list of columns must include all primary key columns, missing: id"]}}"#,
        ),
    ];
    for (query, body) in cases {
        assert_bad_request(&h.delete(&format!("/v1/shape?{query}")).await, body);
    }
    assert_eq!(h.api.shape_count(), 1, "nothing deleted");
}

#[tokio::test(start_paused = true)]
async fn no_shape_for_the_definition_or_the_handle_is_404() {
    let h = Harness::with_config(deleting());
    for uri in [
        "/v1/shape?table=items",
        "/v1/shape?table=items&columns=id",
        "/v1/shape?handle=123-456",
    ] {
        let reply = h.delete(uri).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{uri}");
        assert_eq!(reply.body, NOT_FOUND);
        assert_eq!(reply.header("content-type"), Some(JSON));
        assert_eq!(reply.header("cache-control"), Some("no-cache"));
    }
}

#[tokio::test(start_paused = true)]
async fn a_standby_answers_503_retry_after_5_after_waiting_5_s_for_the_service() {
    let h = Harness::with_config(deleting());
    h.initial_sync().await;
    h.api.set_starting(true);
    let started = tokio::time::Instant::now();
    // Even an invalid request: readiness is awaited before validation, as in Electric.
    for uri in ["/v1/shape?table=items", "/v1/shape"] {
        let reply = h.delete(uri).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{uri}");
        assert_eq!(reply.header("retry-after"), Some("5"));
        assert_eq!(
            reply.body,
            r#"{"message":"Timeout waiting for Postgres lock acquisition"}"#
        );
    }
    assert_eq!(started.elapsed(), Duration::from_secs(10));
    assert_eq!(h.api.shape_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_deletion_waits_for_the_service_to_become_active_then_deletes() {
    let h = Harness::with_config(deleting());
    h.initial_sync().await;
    h.api.set_starting(true);
    let api = h.api.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        api.set_starting(false);
    });
    let started = tokio::time::Instant::now();
    assert_accepted(&h.delete("/v1/shape?table=items").await);
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(h.api.shape_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn delete_needs_the_secret() {
    let h = Harness::with_config(HttpConfig {
        secret: Some("s3cret".to_owned()),
        ..deleting()
    });
    h.get("/v1/shape?table=items&offset=-1&secret=s3cret").await;
    let denied = h.delete("/v1/shape?table=items").await;
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED);
    assert_eq!(h.api.shape_count(), 1);
    assert_accepted(&h.delete("/v1/shape?table=items&secret=s3cret").await);
}

// ---------------------------------------------------------------------------------------------
// Admission control

/// Electric's defaults with `initial` and `existing` limits.
fn limited(initial: u32, existing: u32) -> HttpConfig {
    HttpConfig {
        admission: AdmissionLimits { initial, existing },
        ..HttpConfig::new(None)
    }
}

/// Electric's 503 for a request over the `kind` limit, with every header §6.9 names.
fn assert_overloaded(reply: &Reply, kind: &str, limit: u32) {
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    assert_eq!(
        reply.body,
        format!(
            r#"{{"code":"concurrent_request_limit_exceeded","message":"Concurrent {kind} request limit exceeded (limit: {limit}), please retry"}}"#
        )
    );
    let retry_after: u32 = reply
        .header("retry-after")
        .expect("retry-after")
        .parse()
        .expect("seconds");
    assert!((6..=10).contains(&retry_after), "{retry_after}");
    assert_eq!(reply.header("electric-internal-known-error"), Some("true"));
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(reply.header("surrogate-control"), Some("no-store"));
    assert_eq!(reply.header("content-type"), Some(JSON));
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
    assert_eq!(reply.header("electric-handle"), None);
}

#[tokio::test(start_paused = true)]
async fn a_third_concurrent_initial_request_over_a_limit_of_two_gets_electrics_503() {
    let h = Harness::with_config(limited(2, 10_000));
    let handle = h.initial_sync().await;
    // Requests at -1 now wait for a snapshot chunk that is not written yet.
    h.api.set_snapshot(&handle, Vec::new(), false);
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let app = h.app.clone();
            tokio::spawn(async move {
                send(
                    app,
                    Method::GET,
                    "/v1/shape?table=items&offset=-1",
                    &[],
                    Body::empty(),
                )
                .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;

    assert_overloaded(
        &h.get("/v1/shape?table=items&offset=-1").await,
        "initial",
        2,
    );
    // Existing requests count against their own limit.
    let existing = h
        .get(&format!(
            "/v1/shape?table=items&handle={handle}&offset=0_inf"
        ))
        .await;
    assert_eq!(existing.status, StatusCode::OK, "{existing:?}");

    h.api.set_snapshot(&handle, vec![row(1, "a")], true);
    for task in waiting {
        let reply = task.await.expect("request");
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_eq!(reply.header("electric-offset"), Some("0_0"));
    }
    // Their places are free again.
    h.initial_sync().await;
}

#[tokio::test(start_paused = true)]
async fn live_long_polls_count_against_the_existing_limit_while_they_wait() {
    let h = Harness::with_config(limited(300, 1));
    let handle = h.initial_sync().await;
    let live = format!("/v1/shape?table=items&handle={handle}&offset=0_inf&live=true");
    let app = h.app.clone();
    let uri = live.clone();
    let poll = tokio::spawn(async move { send(app, Method::GET, &uri, &[], Body::empty()).await });
    tokio::time::sleep(Duration::from_secs(1)).await;

    assert_overloaded(&h.get(&live).await, "existing", 1);
    let paging = format!("/v1/shape?table=items&handle={handle}&offset=0_0");
    assert_overloaded(&h.get(&paging).await, "existing", 1);
    // Initial requests are not held up by it.
    assert_eq!(
        h.get("/v1/shape?table=items&offset=-1").await.status,
        StatusCode::OK
    );

    let timed_out = poll.await.expect("long poll");
    assert_eq!(timed_out.status, StatusCode::OK);
    assert_eq!(timed_out.header("electric-has-data"), Some("false"));
    assert_eq!(h.get(&paging).await.status, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn the_secret_is_checked_before_the_limit_and_a_post_is_counted_too() {
    let h = Harness::with_config(HttpConfig {
        secret: Some("s3cret".to_owned()),
        ..limited(1, 10_000)
    });
    let handle = initial_sync_with_secret(&h).await;
    h.api.set_snapshot(&handle, Vec::new(), false);
    let app = h.app.clone();
    let waiting = tokio::spawn(async move {
        send(
            app,
            Method::POST,
            "/v1/shape?table=items&offset=-1&secret=s3cret",
            &[],
            Body::empty(),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let denied = h.get("/v1/shape?table=items&offset=-1").await;
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED);
    let over = h.get("/v1/shape?table=items&offset=-1&secret=s3cret").await;
    assert_overloaded(&over, "initial", 1);
    h.api.set_snapshot(&handle, vec![row(1, "a")], true);
    assert_eq!(waiting.await.expect("post").status, StatusCode::OK);
}
