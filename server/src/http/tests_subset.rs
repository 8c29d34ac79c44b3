//! Handler tests of subset requests (protocol.md §3.6, §5.7, §6.10): the whole router over
//! the in-memory `FakeApi` (the harness of `tests`), tokio's clock paused. The rows a subset
//! selects are Postgres's to compute: io-real's and the conformance tests check those; here
//! the request's validation, the query the service is asked and the answer's form.

use ampere_core::ports::{DisconnectKind, SnapshotError};
use axum::body::Body;
use axum::http::{Method, StatusCode};
use proptest::prelude::*;

use super::fake::row;
use super::tests::{send, Harness};

const SUBSET_GET: &str = "/v1/shape?table=items&offset=-1&subset__where=title%20%3D%20%241\
     &subset__params=%7B%221%22%3A%22a%22%7D&subset__order_by=id%20DESC\
     &subset__limit=10&subset__offset=1";

#[tokio::test(start_paused = true)]
async fn a_subset_get_answers_the_rows_with_their_snapshot_and_no_caching() {
    let h = Harness::with_config(super::HttpConfig::new(None));
    let reply = h.get(SUBSET_GET).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let [query] = h.api.subset_queries().try_into().expect("one subset read");
    let mark = query.snapshot_mark;
    assert!(mark < 1 << 31);
    assert_eq!(
        reply.body,
        format!(
            r#"{{"metadata":{{"database_lsn":"4096","snapshot_mark":{mark},"xip_list":["751"],"xmax":"752","xmin":"750"}}, "data": [{},{}]}}"#,
            row(1, "a"),
            row(2, "b")
        )
    );
    assert_eq!(
        query.subset.sql_tail(&query.schema.relation, None),
        " WHERE ((\"title\" = 'a'::pg_catalog.text)) ORDER BY \"public\".\"items\".\"id\" DESC LIMIT 10 OFFSET 1"
    );
    assert_eq!(
        reply.header("electric-handle"),
        Some(reply.handle().as_str())
    );
    assert_eq!(reply.header("electric-offset"), Some("-1"));
    assert_eq!(reply.header("electric-snapshot"), Some("true"));
    assert_eq!(reply.header("cache-control"), Some("no-cache"));
    assert_eq!(
        reply.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert!(reply
        .header("electric-schema")
        .is_some_and(|s| s.contains("\"title\"")));
    for absent in [
        "etag",
        "electric-cursor",
        "electric-up-to-date",
        "electric-has-data",
    ] {
        assert_eq!(reply.header(absent), None, "{absent}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_subset_post_reads_the_body_and_keeps_the_log_offset_of_the_query() {
    let h = Harness::with_config(super::HttpConfig::new(None));
    let handle = h.initial_sync().await;
    let uri = format!("/v1/shape?table=items&offset=0_0&handle={handle}");
    let body = r#"{"where":"id > $1","params":{"1":"1"},"order_by":"title","limit":1,"offset":0}"#;
    let reply = send(h.app.clone(), Method::POST, &uri, &[], Body::from(body)).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    // The client moves its stream to this offset: never past what it has read.
    assert_eq!(reply.header("electric-offset"), Some("0_0"));
    let [query] = h.api.subset_queries().try_into().expect("one subset read");
    assert_eq!(
        query.subset.sql_tail(&query.schema.relation, None),
        " WHERE ((\"id\" > '1'::pg_catalog.int4)) ORDER BY \"public\".\"items\".\"title\" LIMIT 1 OFFSET 0"
    );
}

#[tokio::test(start_paused = true)]
async fn a_subset_naming_unknown_columns_is_a_400_naming_each_field() {
    let h = Harness::with_config(super::HttpConfig::new(None));
    let reply = h
        .get("/v1/shape?table=items&offset=-1&subset__where=nope%3D1&subset__order_by=gone")
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.body,
        r#"{"message":"Invalid request","errors":{"subset":{"order_by":["At location 0: column \"gone\" does not exist"],"where":["At location 0: unknown reference nope"]}}}"#
    );
    assert!(h.api.subset_queries().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_subset_query_postgres_refuses_for_its_values_is_a_400_on_where() {
    let h = Harness::with_config(super::HttpConfig::new(None));
    h.api.fail_subsets(|| SnapshotError::QueryRejected {
        message: "division by zero".into(),
    });
    let reply = h
        .get("/v1/shape?table=items&offset=-1&subset__where=id%2F0%3D1")
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.body,
        r#"{"message":"Invalid request","errors":{"subset":{"where":"division by zero"}}}"#
    );
}

#[tokio::test(start_paused = true)]
async fn a_subset_read_that_fails_in_postgres_is_a_503_to_retry() {
    let h = Harness::with_config(super::HttpConfig::new(None));
    h.api.fail_subsets(|| SnapshotError::Postgres {
        message: "connection reset".into(),
        kind: DisconnectKind::Transient,
    });
    let reply = h.get(SUBSET_GET).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.header("retry-after"), Some("10"));
    assert_eq!(reply.header("electric-internal-known-error"), Some("true"));
}

fn subset_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("id".to_owned()),
        Just("id%20DESC%20NULLS%20FIRST".to_owned()),
        Just("title%20%3D%20%241".to_owned()),
        Just("%7B%221%22%3A%22a%22%7D".to_owned()),
        Just("-1".to_owned()),
        Just("0".to_owned()),
        Just("10".to_owned()),
        Just(String::new()),
        "[0-9-]{0,24}",
        "[a-z%._,=+$()-]{0,24}",
        "(%[0-9A-Fa-f]{2}){1,8}",
    ]
}

fn subset_query() -> impl Strategy<Value = String> {
    let keys = prop::sample::select(vec![
        "subset__where",
        "subset__params",
        "subset__params[1]",
        "subset__params[x]",
        "subset__order_by",
        "subset__limit",
        "subset__offset",
    ]);
    prop::collection::vec((keys, subset_value()), 1..6).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(k, v)| format!("&{k}={v}"))
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever subset parameters a client sends, the answer is a 200 or a 400, never a 5xx.
    #[test]
    fn random_subset_parameters_never_yield_a_5xx(extra in subset_query()) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        let status = runtime.block_on(async {
            let h = Harness::with_config(super::HttpConfig::new(None));
            h.get(&format!("/v1/shape?table=items&offset=-1{extra}")).await.status
        });
        prop_assert!(
            status == StatusCode::OK || status == StatusCode::BAD_REQUEST,
            "{extra}: {status}"
        );
    }
}
