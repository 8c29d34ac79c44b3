//! The HTTP API (protocol.md): Electric's shape protocol over a [`ShapeApi`].
//!
//! Owns routing, parameter validation, every response header and the long-poll waits. Never
//! touches storage or Postgres itself: all it knows comes from the [`ShapeApi`]. Time for the
//! cursor and ETags comes from [`HttpConfig::clock`], randomness from [`HttpConfig::rng_seed`],
//! so a simulation can make responses reproducible; waits use `tokio::time`.
//!
//! Routes (matched on the percent-decoded path with empty, `.` and `..` segments removed, so
//! `/v1//shape/` and `/v1/%73hape` are the shape route, secret check included):
//! `GET|HEAD /`, `GET|HEAD|POST|OPTIONS|DELETE /v1/shape`, `GET|HEAD /v1/health`; anything
//! else is `404 Not found` (`/metrics` included: metrics are served only on
//! `ELECTRIC_PROMETHEUS_PORT`, by [`crate::metrics`]). With [`HttpConfig::metrics`] set, every
//! request is counted and timed there. With `debug` logging, every request logs one line
//! (`access_log`).
//!
//! The `ampere` binary accepts connections through [`TimeoutListener`], which applies
//! Electric's socket timeouts (`ELECTRIC_TCP_READ_TIMEOUT`, `ELECTRIC_TCP_SEND_TIMEOUT`).
//! [`serve_connections`] serves the router on any listener within [`ConnectionLimits`] (a cap
//! on open connections, a deadline for request headers); the router reads shape POST bodies
//! within [`BodyLimits`] (a deadline, and a byte budget shared by all requests), and admits
//! at most [`AdmissionLimits`] shape requests at once (`admission`). `DELETE /v1/shape`
//! deletes a shape when [`HttpConfig::is_shape_deletion_enabled`] (`delete`).

mod access_log;
mod admission;
mod body_limit;
mod connections;
mod delete;
mod errors;
pub mod fd_limit;
mod headers;
mod health;
mod identifiers;
mod listener;
mod memory;
mod params;
mod pieces;
mod schema;
mod shape;
mod sse;
mod subset;

#[cfg(test)]
mod fake;

pub use admission::{AdmissionLimits, AdmissionLimitsError};
pub use body_limit::{BodyLimits, BODY_BYTES_MAX};
pub use connections::{serve as serve_connections, ConnectionLimits, ServedPort, READ_BUFFER_MAX};
pub use fd_limit::FdBudget;
pub use listener::{ConnectionTimeouts, TimeoutListener, TimeoutStream};

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::CACHE_CONTROL;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;

use crate::api::ShapeApi;
use crate::metrics::Metrics;
use errors::ApiError;
use headers::{RouteKind, SURROGATE_CONTROL};
use params::Query;
pub use sse::SseTimings;

/// How the HTTP layer behaves.
#[derive(Clone)]
pub struct HttpConfig {
    /// The shape route's secret (`secret` / `api_secret` query parameter); `None` only when
    /// the operator explicitly chose to run insecurely.
    pub secret: Option<String>,
    /// How long a live request waits for new data (Electric: 20 s). Also the cursor bucket,
    /// and half of it is the out-of-bounds grace.
    pub long_poll_timeout: Duration,
    /// Keep-alive and duration of live SSE responses.
    pub sse: SseTimings,
    /// Non-live `max-age` seconds (60).
    pub cache_max_age: u32,
    /// Non-live `stale-while-revalidate` seconds (300).
    pub cache_stale_age: u32,
    /// Sent as `electric-server: ampere/<server_version>`.
    pub server_version: String,
    /// Seeds request ids and cursor jitter.
    pub rng_seed: u64,
    /// Wall-clock time, for `electric-cursor` and unique ETags.
    pub clock: WallClock,
    /// Where requests are counted and timed (`ELECTRIC_PROMETHEUS_PORT` set), if anywhere;
    /// [`app::serve`](crate::app::serve) hands it to the driver too, for snapshot and flush
    /// latencies.
    pub metrics: Option<Metrics>,
    /// The connection cap and header deadline of [`serve_connections`], which
    /// [`app::serve`](crate::app::serve) runs.
    pub connections: ConnectionLimits,
    /// The deadline and shared budget of shape POST bodies.
    pub bodies: BodyLimits,
    /// Shape requests handled at once at most, per kind (`ELECTRIC_MAX_CONCURRENT_REQUESTS`).
    pub admission: AdmissionLimits,
    /// Whether `DELETE /v1/shape` deletes (`ELECTRIC_ENABLE_INTEGRATION_TESTING`); else 405.
    pub is_shape_deletion_enabled: bool,
}

impl HttpConfig {
    /// Electric's defaults with the given secret.
    pub fn new(secret: Option<String>) -> Self {
        Self {
            secret,
            long_poll_timeout: Duration::from_secs(20),
            sse: SseTimings::default(),
            cache_max_age: 60,
            cache_stale_age: 300,
            server_version: env!("CARGO_PKG_VERSION").to_owned(),
            rng_seed: 0,
            clock: WallClock::system(),
            metrics: None,
            connections: ConnectionLimits::default(),
            bodies: BodyLimits::default(),
            admission: AdmissionLimits::default(),
            is_shape_deletion_enabled: false,
        }
    }
}

impl fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConfig")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("long_poll_timeout", &self.long_poll_timeout)
            .field("sse", &self.sse)
            .field("cache_max_age", &self.cache_max_age)
            .field("cache_stale_age", &self.cache_stale_age)
            .field("server_version", &self.server_version)
            .field("rng_seed", &self.rng_seed)
            .field("metrics", &self.metrics.is_some())
            .field("connections", &self.connections)
            .field("bodies", &self.bodies)
            .field("admission", &self.admission)
            .field("is_shape_deletion_enabled", &self.is_shape_deletion_enabled)
            .finish_non_exhaustive()
    }
}

/// Time since the Unix epoch, injected so simulations control it.
#[derive(Clone)]
pub struct WallClock(Arc<dyn Fn() -> Duration + Send + Sync>);

impl WallClock {
    /// The operating system's clock.
    pub fn system() -> Self {
        Self::from_fn(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
        })
    }

    /// A clock reading `now`.
    pub fn from_fn(now: impl Fn() -> Duration + Send + Sync + 'static) -> Self {
        Self(Arc::new(now))
    }

    /// The current time since the Unix epoch.
    pub fn since_unix_epoch(&self) -> Duration {
        (self.0)()
    }
}

/// The router serving the whole API over `api`.
pub fn router<A: ShapeApi>(api: A, config: HttpConfig) -> Router {
    let metrics = config.metrics.clone();
    let bodies = body_limit::BodyBudget::new(config.bodies);
    let state = Arc::new(AppState {
        api,
        admission: admission::Admission::new(config.admission),
        rng: SplitMix64(AtomicU64::new(config.rng_seed)),
        unique_counter: AtomicU64::new(0),
        config,
    });
    Router::new()
        .fallback(dispatch::<A>)
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            bodies,
            body_limit::limit_body,
        ))
        .layer(axum::middleware::from_fn_with_state(metrics, observe))
}

/// Counts and times a request by [`route_label`] in `metrics` (when present; until its
/// response head), counting it in flight meanwhile, and logs it (`access_log`, when enabled),
/// from one parse of its route and query and one start instant. A request abandoned by its
/// client is only counted in flight, and logs nothing.
async fn observe(State(metrics): State<Option<Metrics>>, request: Request, next: Next) -> Response {
    let log = access_log::enabled();
    if metrics.is_none() && !log {
        return next.run(request).await;
    }
    let started = tokio::time::Instant::now();
    let query = Query::parse(request.uri().query());
    let route = route_label(request.uri(), &query);
    let method = log.then(|| request.method().clone());
    let _in_flight = metrics.as_ref().map(|metrics| metrics.http().start(route));
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    if let Some(method) = method {
        access_log::log(&method, route, &query, &response, elapsed);
    }
    if let Some(metrics) = &metrics {
        metrics.http().finish(route, response.status(), elapsed);
    }
    response
}

/// The `route` label: `root`, `shape`, `shape_live` (long polls), `health` or `other`;
/// `query` is `uri`'s, parsed.
fn route_label(uri: &axum::http::Uri, query: &Query) -> &'static str {
    match Route::of(uri.path()) {
        Route::Root => "root",
        Route::Shape => {
            if params::is_truthy(query.get("live")) {
                "shape_live"
            } else {
                "shape"
            }
        }
        Route::Health => "health",
        Route::Unknown => "other",
    }
}

/// What every handler shares.
struct AppState<A> {
    api: A,
    config: HttpConfig,
    /// Shape requests in flight, against `config.admission`.
    admission: admission::Admission,
    rng: SplitMix64,
    /// Makes no-change ETags unique.
    unique_counter: AtomicU64,
}

impl<A> AppState<A> {
    /// A fresh unique ETag suffix: wall-clock microseconds and a counter.
    fn unique_suffix(&self) -> String {
        let micros = self.config.clock.since_unix_epoch().as_micros();
        let n = self.unique_counter.fetch_add(1, Ordering::Relaxed);
        format!("{micros}.{n}")
    }
}

/// SplitMix64 over an atomic state: small, seedable, good enough for ids and jitter.
struct SplitMix64(AtomicU64);

impl SplitMix64 {
    const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

    fn next(&self) -> u64 {
        let state = self
            .0
            .fetch_add(Self::GAMMA, Ordering::Relaxed)
            .wrapping_add(Self::GAMMA);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A route, from the normalised path.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Route {
    Root,
    Shape,
    Health,
    Unknown,
}

impl Route {
    /// Matches the percent-decoded path with empty, `.` and `..` segments resolved.
    fn of(path: &str) -> Self {
        let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
        let mut segments: Vec<&str> = Vec::new();
        for segment in decoded.split('/') {
            match segment {
                "" | "." => {}
                ".." => {
                    segments.pop();
                }
                other => segments.push(other),
            }
        }
        match segments.as_slice() {
            [] => Self::Root,
            ["v1", "shape"] => Self::Shape,
            ["v1", "health"] => Self::Health,
            _ => Self::Unknown,
        }
    }
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const ELECTRIC_SERVER: HeaderName = HeaderName::from_static("electric-server");

async fn dispatch<A: ShapeApi>(
    State(state): State<Arc<AppState<A>>>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let route = Route::of(parts.uri.path());
    let method = &parts.method;
    let mut response = match route {
        Route::Shape => shape_route(&state, method, parts.uri.query(), &parts.headers, body).await,
        Route::Health if is_read(method) => {
            let degraded = state.api.storage_degraded();
            health::respond(state.api.health(), state.api.last_purge(), degraded)
        }
        Route::Root if is_read(method) => StatusCode::OK.into_response(),
        Route::Health | Route::Root | Route::Unknown => ApiError::NotFound.into_response(),
    };
    let kind = if route == Route::Shape {
        RouteKind::Shape
    } else {
        RouteKind::Other
    };
    headers::apply_cors(response.headers_mut(), &parts.headers, kind);
    let request_id = request_id(&state, &parts.headers);
    let server = format!("ampere/{}", state.config.server_version);
    let response_headers = response.headers_mut();
    response_headers.insert(X_REQUEST_ID, request_id);
    if let Ok(server) = HeaderValue::from_str(&server) {
        response_headers.insert(ELECTRIC_SERVER, server);
    }
    if method == Method::HEAD {
        *response.body_mut() = Body::empty();
    }
    response
}

fn is_read(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// `/v1/shape`: preflight, secret check, then the log within admission control, or a
/// deletion.
async fn shape_route<A: ShapeApi>(
    state: &AppState<A>,
    method: &Method,
    raw_query: Option<&str>,
    request_headers: &HeaderMap,
    body: Body,
) -> Response {
    if method == Method::OPTIONS {
        return headers::preflight(request_headers);
    }
    if ![Method::GET, Method::HEAD, Method::POST, Method::DELETE].contains(method) {
        return ApiError::NotFound.into_response();
    }
    let query = Query::parse(raw_query);
    let mut response = if !is_authorized(state.config.secret.as_deref(), query.secret()) {
        ApiError::Unauthorized.into_response()
    } else if method == Method::DELETE {
        delete::serve(state, &query).await
    } else {
        admitted(state, method, &query, request_headers, body).await
    };
    if !headers::is_get_like(method) {
        // Cache-control rule 1 outranks every other rule.
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response.headers_mut().remove(SURROGATE_CONTROL);
    }
    response
}

/// A shape request if its kind is under its concurrency limit (counted until the handler
/// returns), else the 503 Electric sends: a known error, retried after 6 to 10 s, spread so
/// that the refused clients do not all come back in the same second.
async fn admitted<A: ShapeApi>(
    state: &AppState<A>,
    method: &Method,
    query: &Query,
    request_headers: &HeaderMap,
    body: Body,
) -> Response {
    let permit = match state.admission.try_admit(admission::RequestKind::of(query)) {
        Ok(permit) => permit,
        Err(refused) => {
            let retry_after_secs = 6 + u32::try_from(state.rng.next() % 5).unwrap_or(0);
            return ApiError::Overloaded {
                kind: refused.kind.label(),
                limit: refused.limit,
                retry_after_secs,
            }
            .into_response();
        }
    };
    let response = shape::serve(state, method, query, request_headers, body).await;
    drop(permit);
    response
}

/// Whether the presented secret matches (always, when none is configured). Compares in time
/// independent of where the strings differ.
fn is_authorized(configured: Option<&str>, presented: Option<&str>) -> bool {
    let Some(configured) = configured else {
        return true;
    };
    let presented = presented.unwrap_or("");
    let (a, b) = (configured.as_bytes(), presented.as_bytes());
    let diff = a
        .iter()
        .zip(b)
        .fold(u8::from(a.len() != b.len()), |acc, (x, y)| acc | (x ^ y));
    diff == 0
}

/// The incoming `x-request-id` if it is reasonable, else a fresh one.
fn request_id<A>(state: &AppState<A>, request: &HeaderMap) -> HeaderValue {
    let incoming = request.get(X_REQUEST_ID).filter(|v| {
        let bytes = v.as_bytes();
        (1..=200).contains(&bytes.len()) && bytes.iter().all(u8::is_ascii_graphic)
    });
    match incoming {
        Some(value) => value.clone(),
        None => {
            let id = format!("{:016x}{:016x}", state.rng.next(), state.rng.next());
            HeaderValue::from_str(&id).expect("invariant: hex digits are a valid header value")
        }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_delete;
#[cfg(test)]
mod tests_subset;
