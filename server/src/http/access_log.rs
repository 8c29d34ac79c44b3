//! The access log: one structured line per API request, at `debug`, under this module's
//! target, so `AMPERE_LOG=info,ampere_server::http::access_log=debug` logs requests without
//! the rest of the debug output (docs/metrics.md, "Logs").
//!
//! Fields: `request_id` (the `x-request-id` the response carries: the client's, or the one
//! [`dispatch`](super::dispatch) generated), `method`, `route` (the metrics' route label),
//! `handle` (the request's `handle` parameter, else the `electric-handle` answered), `offset`
//! and `live` (the request's parameters), `status`, and `duration_ms` until the response head
//! (a body streamed after the head is not included). Time comes from `tokio::time`, which the
//! simulation drives. With `debug` off for this target nothing is parsed or timed.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Level;

use super::params::{self, Query};
use super::{route_label, X_REQUEST_ID};

const ELECTRIC_HANDLE: HeaderName = HeaderName::from_static("electric-handle");

/// Logs `request` once answered (a request its client abandons logs nothing).
pub(super) async fn log_request(request: Request, next: Next) -> Response {
    if !tracing::enabled!(Level::DEBUG) {
        return next.run(request).await;
    }
    let started = tokio::time::Instant::now();
    let method = request.method().clone();
    let route = route_label(request.uri());
    let query = Query::parse(request.uri().query());
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    let headers = response.headers();
    let handle = query
        .get("handle")
        .or_else(|| header(headers, &ELECTRIC_HANDLE));
    tracing::debug!(
        request_id = header(headers, &X_REQUEST_ID),
        %method,
        route,
        handle,
        offset = query.get("offset"),
        live = params::is_truthy(query.get("live")),
        status = response.status().as_u16(),
        duration_ms = milliseconds(elapsed),
        "request"
    );
    response
}

/// A response header as text, if it is some.
fn header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Milliseconds, rounded to the microsecond.
fn milliseconds(elapsed: std::time::Duration) -> f64 {
    (elapsed.as_secs_f64() * 1e6).round() / 1e3
}
