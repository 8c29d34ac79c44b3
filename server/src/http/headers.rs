//! Header rules as pure functions: cache-control (protocol.md §4.1), `electric-cursor` (§6.6),
//! ETag and `If-None-Match` (§6.7), CORS (§1.2, §1.3).

use std::time::Duration;

use ampere_core::LogOffset;
use axum::http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS,
    CONNECTION, IF_NONE_MATCH, ORIGIN,
};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

/// `content-type` of every JSON answer.
pub(crate) const JSON: &str = "application/json; charset=utf-8";
/// `surrogate-control`, sent with `no-store` on errors.
pub(crate) const SURROGATE_CONTROL: HeaderName = HeaderName::from_static("surrogate-control");
/// `access-control-expose-headers`, exactly as Electric sends it.
pub(crate) const EXPOSE_HEADERS: &str = "electric-cursor,electric-handle,electric-has-data,\
electric-offset,electric-schema,electric-up-to-date,electric-internal-known-error,retry-after";

/// The non-live `max-age` / `stale-while-revalidate` pair (cache-control rule 7).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct CacheAges {
    /// `max-age` seconds.
    pub(crate) max_age: u32,
    /// `stale-while-revalidate` seconds.
    pub(crate) stale_age: u32,
}

impl Default for CacheAges {
    fn default() -> Self {
        Self {
            max_age: 60,
            stale_age: 300,
        }
    }
}

/// What kind of log answer a successful response is, for cache-control rules 4–7.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Freshness {
    /// The request had `offset=-1`.
    InitialSync,
    /// Live server-sent events.
    #[allow(dead_code)] // SSE is not served yet; its rule is kept (and tested) for when it is.
    LiveSse,
    /// Live long-poll.
    LiveLongPoll,
    /// Anything else (non-live, `offset=now` included).
    Other,
}

/// A `cache-control` value and whether `surrogate-control: no-store` goes with it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct CachePolicy {
    /// The `cache-control` value.
    pub(crate) value: HeaderValue,
    /// Whether to add `surrogate-control: no-store`.
    pub(crate) is_surrogate_no_store: bool,
}

/// Cache-control for a shape-route response; the first matching rule of §4.1 wins.
pub(crate) fn cache_control(
    is_get_like: bool,
    status: StatusCode,
    is_refetch_with_handle: bool,
    freshness: Freshness,
    ages: CacheAges,
) -> CachePolicy {
    let policy = |value: String, is_surrogate_no_store| CachePolicy {
        value: HeaderValue::try_from(value).expect("invariant: built from ASCII and digits"),
        is_surrogate_no_store,
    };
    if !is_get_like {
        return policy("no-cache".into(), false);
    }
    if status == StatusCode::CONFLICT {
        let max_age = if is_refetch_with_handle { 60 } else { 1 };
        return policy(format!("public, max-age={max_age}, must-revalidate"), false);
    }
    if status.as_u16() >= 400 {
        return policy("no-store".into(), true);
    }
    let value = match freshness {
        Freshness::InitialSync => {
            "public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746".into()
        }
        Freshness::LiveSse => "public, max-age=59".into(),
        Freshness::LiveLongPoll => "public, max-age=5, stale-while-revalidate=5".into(),
        Freshness::Other => format!(
            "public, max-age={}, stale-while-revalidate={}",
            ages.max_age, ages.stale_age
        ),
    };
    policy(value, false)
}

/// Whether cache-control rule 1 spares the method (GET, HEAD, OPTIONS).
pub(crate) fn is_get_like(method: &Method) -> bool {
    [Method::GET, Method::HEAD, Method::OPTIONS].contains(method)
}

/// `2024-10-09T00:00:00Z`, the cursor's epoch.
const CURSOR_EPOCH_UNIX_SECS: u64 = 1_728_432_000;
/// Jitter added when the time bucket would not move the cursor forward.
const CURSOR_JITTER_MAX_SECS: u64 = 3600;

/// The `electric-cursor` for a live answer (§6.6): the end of the current long-poll-sized
/// bucket of seconds since the epoch, or, if that is not above the request's `cursor`, the
/// request's cursor plus 1..=3600 drawn from `random`. Always above a parseable `previous`,
/// except when the timeout is under a second (then `0`, as Electric sends).
pub(crate) fn next_cursor(
    unix_secs: u64,
    long_poll_timeout: Duration,
    previous: Option<&str>,
    random: impl FnOnce() -> u64,
) -> u64 {
    let bucket = long_poll_timeout.as_secs();
    if bucket == 0 {
        return 0;
    }
    let since_epoch = unix_secs.saturating_sub(CURSOR_EPOCH_UNIX_SECS);
    let next = since_epoch.div_ceil(bucket).saturating_mul(bucket);
    let previous = previous.and_then(parse_clean_integer).unwrap_or(0);
    if next > previous {
        next
    } else {
        previous.saturating_add(1 + random() % CURSOR_JITTER_MAX_SECS)
    }
}

fn parse_clean_integer(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The unquoted ETag `<handle>:<request offset>:<response offset>[:<unique>]`.
pub(crate) fn etag(
    handle: &str,
    request_offset: &str,
    response_offset: LogOffset,
    unique: Option<&str>,
) -> String {
    match unique {
        Some(unique) => format!("{handle}:{request_offset}:{response_offset}:{unique}"),
        None => format!("{handle}:{request_offset}:{response_offset}"),
    }
}

/// Whether any `If-None-Match` entry equals `etag` (unquoted): every header value is split
/// on commas and each piece trimmed of spaces and `"`. A `W/` prefix is accepted too (an
/// improvement Electric allows).
pub(crate) fn if_none_match_matches(request: &HeaderMap, etag: &str) -> bool {
    request
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|piece| {
            let piece = piece.trim_matches(' ');
            piece
                .strip_prefix("W/")
                .unwrap_or(piece)
                .trim_matches([' ', '"'])
        })
        .any(|piece| piece == etag)
}

/// Which CORS method list a route gets.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum RouteKind {
    /// `/v1/shape`.
    Shape,
    /// Everything else.
    Other,
}

/// Adds the CORS headers every response carries (§1.2).
pub(crate) fn apply_cors(response: &mut HeaderMap, request: &HeaderMap, route: RouteKind) {
    let mut origins = request.get_all(ORIGIN).iter();
    let origin = match (origins.next(), origins.next()) {
        (Some(only), None) => only.clone(),
        // None, or several (Electric fails with a 500 on several; `*` is allowed).
        _ => HeaderValue::from_static("*"),
    };
    response.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    response.insert(
        ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSE_HEADERS),
    );
    let methods = match route {
        RouteKind::Shape => "GET, POST, HEAD, DELETE, OPTIONS",
        RouteKind::Other => "GET, HEAD",
    };
    response.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(methods),
    );
}

/// `OPTIONS /v1/shape` (§1.3), before the CORS headers are added: 204, `max-age`,
/// `keep-alive`, and the allowed request headers echoed. Lists are split and their allowed
/// members echoed (an allowed improvement over Electric, which compares the whole value).
pub(crate) fn preflight(request: &HeaderMap) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    headers.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
    if let Some(allowed) = preflight_allowed_headers(request) {
        if let Ok(value) = HeaderValue::from_str(&allowed) {
            headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, value);
        }
    }
    (StatusCode::NO_CONTENT, headers).into_response()
}

/// The requested headers the client may send: `if-none-match` and `traceparent`, as
/// spelled in the request, joined by `,`; `None` when there are none.
pub(crate) fn preflight_allowed_headers(request: &HeaderMap) -> Option<String> {
    let allowed: Vec<&str> = request
        .get_all(ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|name| {
            name.eq_ignore_ascii_case("if-none-match") || name.eq_ignore_ascii_case("traceparent")
        })
        .collect();
    (!allowed.is_empty()).then(|| allowed.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(method: Method, status: u16, with_handle: bool, freshness: Freshness) -> String {
        let status = StatusCode::from_u16(status).expect("valid status");
        let ages = CacheAges::default();
        let policy = cache_control(is_get_like(&method), status, with_handle, freshness, ages);
        let value = policy.value.to_str().expect("ascii").to_owned();
        if policy.is_surrogate_no_store {
            format!("{value} +surrogate")
        } else {
            value
        }
    }

    #[test]
    fn rule_1_post_and_delete_are_never_cached_whatever_the_status() {
        for status in [200, 400, 409, 503] {
            assert_eq!(
                rule(Method::POST, status, true, Freshness::Other),
                "no-cache"
            );
            assert_eq!(
                rule(Method::DELETE, status, false, Freshness::Other),
                "no-cache"
            );
        }
    }

    #[test]
    fn rule_2_conflicts_revalidate_after_60s_or_1s_without_a_handle() {
        let live = Freshness::LiveLongPoll;
        assert_eq!(
            rule(Method::GET, 409, true, live),
            "public, max-age=60, must-revalidate"
        );
        assert_eq!(
            rule(Method::HEAD, 409, false, live),
            "public, max-age=1, must-revalidate"
        );
    }

    #[test]
    fn rule_3_errors_are_no_store_with_surrogate_control() {
        for status in [400, 401, 404, 500, 503] {
            let value = rule(Method::GET, status, false, Freshness::InitialSync);
            assert_eq!(value, "no-store +surrogate");
        }
    }

    #[test]
    fn rules_4_to_7_pick_by_request_kind() {
        let get = |f| rule(Method::GET, 200, false, f);
        assert_eq!(
            get(Freshness::InitialSync),
            "public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746"
        );
        assert_eq!(get(Freshness::LiveSse), "public, max-age=59");
        assert_eq!(
            get(Freshness::LiveLongPoll),
            "public, max-age=5, stale-while-revalidate=5"
        );
        assert_eq!(
            get(Freshness::Other),
            "public, max-age=60, stale-while-revalidate=300"
        );
        assert_eq!(
            rule(Method::GET, 304, false, Freshness::LiveLongPoll),
            "public, max-age=5, stale-while-revalidate=5"
        );
    }

    #[test]
    fn rule_7_uses_the_configured_ages() {
        let ages = CacheAges {
            max_age: 7,
            stale_age: 9,
        };
        let policy = cache_control(true, StatusCode::OK, false, Freshness::Other, ages);
        assert_eq!(policy.value, "public, max-age=7, stale-while-revalidate=9");
    }

    const TWENTY: Duration = Duration::from_secs(20);
    const EPOCH: u64 = CURSOR_EPOCH_UNIX_SECS;

    #[test]
    fn cursor_is_the_end_of_the_current_timeout_bucket() {
        let never = || panic!("no jitter needed");
        assert_eq!(next_cursor(EPOCH + 1, TWENTY, None, never), 20);
        assert_eq!(next_cursor(EPOCH + 20, TWENTY, Some(""), never), 20);
        assert_eq!(next_cursor(EPOCH + 21, TWENTY, Some("20x"), never), 40);
        assert_eq!(
            next_cursor(EPOCH + 35_340_055, TWENTY, None, never),
            35_340_060
        );
    }

    #[test]
    fn cursor_jumps_ahead_when_the_bucket_does_not_pass_the_previous_cursor() {
        // Same bucket as the previous cursor: not strictly greater, so jitter.
        assert_eq!(next_cursor(EPOCH + 15, TWENTY, Some("20"), || 0), 21);
        assert_eq!(next_cursor(EPOCH + 15, TWENTY, Some("20"), || 3599), 3620);
        assert_eq!(next_cursor(EPOCH + 15, TWENTY, Some("20"), || 3600), 21);
        // A cursor from the future (another server's clock) still moves forward.
        assert_eq!(next_cursor(EPOCH + 15, TWENTY, Some("1000"), || 41), 1042);
        // Before the epoch the bucket is 0 and any previous value is passed.
        assert_eq!(next_cursor(5, TWENTY, None, || 0), 1);
    }

    #[test]
    fn cursor_is_always_strictly_greater_than_a_clean_previous_value() {
        for prev in [0_u64, 1, 19, 20, 21, 99_999_999] {
            for now in [EPOCH, EPOCH + 1, EPOCH + 19, EPOCH + 20, EPOCH + 40] {
                let text = prev.to_string();
                let next = next_cursor(now, TWENTY, Some(&text), || 12_345);
                assert!(next > prev, "prev={prev} now={now} next={next}");
            }
        }
    }

    #[test]
    fn cursor_is_zero_when_the_timeout_is_under_a_second() {
        let never = || panic!("no jitter needed");
        assert_eq!(
            next_cursor(EPOCH + 99, Duration::from_millis(50), Some("7"), never),
            0
        );
    }

    #[test]
    fn unclean_previous_cursors_count_as_zero() {
        for prev in ["-5", "+5", " 5", "5 ", "abc", "99999999999999999999999"] {
            assert_eq!(
                next_cursor(EPOCH + 1, TWENTY, Some(prev), || 0),
                20,
                "{prev}"
            );
        }
    }

    #[test]
    fn etag_joins_handle_and_offsets_with_an_optional_unique_part() {
        let end = "0_0".parse().expect("offset");
        assert_eq!(etag("h-1", "-1", end, None), "h-1:-1:0_0");
        assert_eq!(etag("h-1", "now", end, Some("77")), "h-1:now:0_0:77");
    }

    fn inm(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(IF_NONE_MATCH, HeaderValue::from_str(v).expect("header"));
        }
        headers
    }

    #[test]
    fn if_none_match_splits_on_commas_and_trims_quotes_and_spaces() {
        let tag = "h:-1:0_0";
        assert!(if_none_match_matches(&inm(&["\"h:-1:0_0\""]), tag));
        assert!(if_none_match_matches(&inm(&["\"x\", \"h:-1:0_0\""]), tag));
        assert!(if_none_match_matches(&inm(&["\"x\"", " h:-1:0_0 "]), tag));
        assert!(if_none_match_matches(&inm(&["W/\"h:-1:0_0\""]), tag));
        assert!(!if_none_match_matches(&inm(&["\"h:-1:0_1\""]), tag));
        assert!(!if_none_match_matches(&inm(&[]), tag));
        assert!(!if_none_match_matches(&inm(&["*"]), tag));
    }

    #[test]
    fn cors_echoes_a_single_origin_and_falls_back_to_star() {
        let mut request = HeaderMap::new();
        let mut response = HeaderMap::new();
        apply_cors(&mut response, &request, RouteKind::Shape);
        assert_eq!(response[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(response[ACCESS_CONTROL_EXPOSE_HEADERS], EXPOSE_HEADERS);
        assert_eq!(
            response[ACCESS_CONTROL_ALLOW_METHODS],
            "GET, POST, HEAD, DELETE, OPTIONS"
        );
        request.insert(ORIGIN, HeaderValue::from_static("https://app.example"));
        apply_cors(&mut response, &request, RouteKind::Other);
        assert_eq!(response[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example");
        assert_eq!(response[ACCESS_CONTROL_ALLOW_METHODS], "GET, HEAD");
        request.append(ORIGIN, HeaderValue::from_static("https://other.example"));
        apply_cors(&mut response, &request, RouteKind::Other);
        assert_eq!(response[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    }

    #[test]
    fn preflight_answers_204_with_max_age_and_allowed_request_headers() {
        let mut request = HeaderMap::new();
        let response = preflight(&request);
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        assert_eq!(response.headers()[ACCESS_CONTROL_MAX_AGE], "86400");
        assert_eq!(response.headers()[CONNECTION], "keep-alive");
        assert!(!response
            .headers()
            .contains_key(ACCESS_CONTROL_ALLOW_HEADERS));

        request.append(
            ACCESS_CONTROL_REQUEST_HEADERS,
            HeaderValue::from_static("If-None-Match"),
        );
        request.append(
            ACCESS_CONTROL_REQUEST_HEADERS,
            HeaderValue::from_static("authorization, traceparent"),
        );
        let response = preflight(&request);
        assert_eq!(
            response.headers()[ACCESS_CONTROL_ALLOW_HEADERS],
            "If-None-Match,traceparent"
        );
        assert!(!response.headers().contains_key("cache-control"));
    }

    #[test]
    fn preflight_allows_nothing_for_unrelated_headers() {
        let mut request = HeaderMap::new();
        request.insert(
            ACCESS_CONTROL_REQUEST_HEADERS,
            HeaderValue::from_static("authorization, x-custom"),
        );
        assert_eq!(preflight_allowed_headers(&request), None);
    }
}
