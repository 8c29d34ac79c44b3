//! The access log: one structured line per API request, at `debug`, under this module's
//! target, so `AMPERE_LOG=info,ampere_server::http::access_log=debug` logs requests without
//! the rest of the debug output (docs/metrics.md, "Logs").
//!
//! Fields: `request_id` (the `x-request-id` the response carries: the client's, or the one
//! [`dispatch`](super::dispatch) generated), `method`, `route` (the metrics' route label),
//! `handle` (the request's `handle` parameter, else the `electric-handle` answered), `offset`
//! and `live` (the request's parameters), `status`, and `duration_ms` until the response head
//! (a body streamed after the head is not included). Time comes from `tokio::time`, which the
//! simulation drives. The request is parsed and timed once, for the metrics too, by
//! [`observe`](super::observe); with `debug` off for this target and no metrics, nothing is
//! parsed or timed.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, Method};
use axum::response::Response;
use tracing::Level;

use super::params::{self, Query};
use super::X_REQUEST_ID;

const ELECTRIC_HANDLE: HeaderName = HeaderName::from_static("electric-handle");

/// Whether requests are logged: `debug` is on for this module's target.
pub(super) fn enabled() -> bool {
    tracing::enabled!(Level::DEBUG)
}

/// Logs a request once answered: its `method`, `route` label and parsed `query`, the
/// `response` (its head) and the time until it, `elapsed`.
pub(super) fn log(
    method: &Method,
    route: &'static str,
    query: &Query,
    response: &Response,
    elapsed: Duration,
) {
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
}

/// A response header as text, if it is some.
fn header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Milliseconds, rounded to the microsecond.
fn milliseconds(elapsed: Duration) -> f64 {
    (elapsed.as_secs_f64() * 1e6).round() / 1e3
}
