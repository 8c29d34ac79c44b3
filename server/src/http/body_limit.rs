//! Request bodies (`POST /v1/shape`, up to [`BODY_BYTES_MAX`]) read before the handler runs,
//! within a deadline and a budget shared by every request.
//!
//! Before this, each body was buffered as it came, for as long as it took: 300 clients that
//! announced 8 MiB and stalled held 2.5 GB. Now a body must arrive in full within
//! [`BodyLimits::read_timeout`] (`ELECTRIC_TCP_READ_TIMEOUT`, as Electric's socket read
//! timeout bounds each read; else `408`, and the connection closes), and the bytes its request
//! may buffer are reserved first from [`BodyLimits::budget_bytes`] shared by all requests
//! (the announced `Content-Length`, or [`BODY_BYTES_MAX`] for a chunked body). A request that
//! gets no budget within [`BUDGET_WAIT`] is answered `503` with `Retry-After`; one that
//! announces more than [`BODY_BYTES_MAX`] is answered `413` without reading it. The handler
//! then gets the body whole and reads it at once.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use tokio::sync::Semaphore;
use tokio::time::{timeout, timeout_at, Instant};

use super::errors::ApiError;
use super::headers::{self, RouteKind};
use super::memory::Release;
use super::Route;

/// POST bodies above this are refused with 413 (`shape.rs` applies the same bound).
pub const BODY_BYTES_MAX: usize = 8 * 1024 * 1024;

/// How long a request waits for budget before it is answered 503.
const BUDGET_WAIT: Duration = Duration::from_secs(1);

/// `Retry-After` seconds of that 503.
const BUDGET_RETRY_AFTER_SECS: u32 = 1;

/// Memory is handed back to the OS after buffered bodies fall from a peak this large.
const TRIM_AFTER_BYTES: usize = 16 * 1024 * 1024;

/// The bounds on request bodies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyLimits {
    /// How long a body may take to arrive in full, from when its handler starts reading it.
    pub read_timeout: Duration,
    /// Bytes all request bodies being read or handled may buffer together: 8 bodies of the
    /// largest size, or thousands of ordinary subset requests.
    pub budget_bytes: usize,
}

impl Default for BodyLimits {
    /// Electric's 60 s read timeout, and a 64 MiB budget.
    fn default() -> Self {
        Self {
            read_timeout: Duration::from_secs(60),
            budget_bytes: 8 * BODY_BYTES_MAX,
        }
    }
}

/// The middleware's state: the limits and the budget left.
#[derive(Clone, Debug)]
pub(crate) struct BodyBudget {
    limits: BodyLimits,
    bytes: Arc<Semaphore>,
    release: Arc<Release>,
}

impl BodyBudget {
    pub(crate) fn new(limits: BodyLimits) -> Self {
        assert!(
            limits.budget_bytes >= BODY_BYTES_MAX,
            "the body budget must fit the largest body"
        );
        Self {
            limits,
            bytes: Arc::new(Semaphore::new(limits.budget_bytes)),
            release: Arc::new(Release::new(TRIM_AFTER_BYTES)),
        }
    }

    fn in_use(&self) -> usize {
        self.limits
            .budget_bytes
            .saturating_sub(self.bytes.available_permits())
    }
}

/// Reads a shape POST's body within its deadline and budget, then hands the request on with
/// the body whole; other requests pass untouched (no handler reads their bodies).
pub(crate) async fn limit_body(
    State(budget): State<BodyBudget>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() != Method::POST || Route::of(request.uri().path()) != Route::Shape {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let announced = announced_length(&parts.headers);
    let reserve = match announced {
        Some(Ok(0)) => return next.run(Request::from_parts(parts, Body::empty())).await,
        Some(Ok(length)) if length <= BODY_BYTES_MAX => length,
        Some(Ok(_)) => return refuse(ApiError::BodyTooLarge, &parts.headers),
        Some(Err(())) => {
            let invalid = ApiError::invalid("content-length", "must be a number of bytes");
            return refuse(invalid, &parts.headers);
        }
        None => BODY_BYTES_MAX,
    };
    let permits = u32::try_from(reserve).expect("invariant: at most BODY_BYTES_MAX");
    let Ok(Ok(permit)) = timeout(
        BUDGET_WAIT,
        Arc::clone(&budget.bytes).acquire_many_owned(permits),
    )
    .await
    else {
        let busy = ApiError::unavailable(
            "too many request bodies are being received; retry shortly",
            BUDGET_RETRY_AFTER_SECS,
        );
        return refuse(busy, &parts.headers);
    };
    budget.release.rose_to(budget.in_use());
    let deadline = Instant::now() + budget.limits.read_timeout;
    let read = read_whole(body, announced.and_then(Result::ok), deadline).await;
    let response = match read {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(BodyError::TooLarge) => refuse(ApiError::BodyTooLarge, &parts.headers),
        Err(BodyError::TimedOut) => timed_out(&parts.headers),
        Err(BodyError::Broken) => {
            let broken = ApiError::invalid("body", "the request body could not be read");
            refuse(broken, &parts.headers)
        }
    };
    drop(permit);
    budget.release.fell_to(budget.in_use());
    response
}

/// `Content-Length`, if sent: `Err` when it is not a number.
fn announced_length(headers: &HeaderMap) -> Option<Result<usize, ()>> {
    let value = headers.get(CONTENT_LENGTH)?;
    Some(
        value
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .map(|length| usize::try_from(length).unwrap_or(usize::MAX))
            .ok_or(()),
    )
}

/// Why a body was not read whole.
enum BodyError {
    /// Over [`BODY_BYTES_MAX`] (a chunked body; an announced length is checked first).
    TooLarge,
    /// Not complete by the deadline.
    TimedOut,
    /// The connection failed or the framing was invalid.
    Broken,
}

/// The whole body, read by `deadline`; `announced` bytes are allocated at once (the budget
/// covers them; pages not yet written take no memory).
async fn read_whole(
    mut body: Body,
    announced: Option<usize>,
    deadline: Instant,
) -> Result<Bytes, BodyError> {
    let mut bytes = Vec::with_capacity(announced.unwrap_or(0));
    loop {
        let frame = match timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(BodyError::TimedOut),
            Ok(None) => return Ok(Bytes::from(bytes)),
            Ok(Some(Err(_))) => return Err(BodyError::Broken),
            Ok(Some(Ok(frame))) => frame,
        };
        if let Some(data) = frame.data_ref() {
            if bytes.len() + data.len() > BODY_BYTES_MAX {
                return Err(BodyError::TooLarge);
            }
            bytes.extend_from_slice(data);
        }
    }
}

/// `error` with CORS headers, closing the connection (its body may be unread).
fn refuse(error: ApiError, request_headers: &HeaderMap) -> Response {
    finish(error.into_response(), request_headers)
}

/// `408`: the body did not arrive in time.
fn timed_out(request_headers: &HeaderMap) -> Response {
    let response = (
        StatusCode::REQUEST_TIMEOUT,
        [(CONTENT_TYPE, HeaderValue::from_static(headers::JSON))],
        "{\"error\":\"Request body not received in time\"}",
    )
        .into_response();
    finish(response, request_headers)
}

fn finish(mut response: Response, request_headers: &HeaderMap) -> Response {
    headers::apply_cors(response.headers_mut(), request_headers, RouteKind::Shape);
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(bytes: usize, read_timeout: Duration) -> BodyBudget {
        BodyBudget::new(BodyLimits {
            read_timeout,
            budget_bytes: bytes,
        })
    }

    #[test]
    fn an_announced_length_is_parsed_and_garbage_is_an_error() {
        let mut headers = HeaderMap::new();
        assert_eq!(announced_length(&headers), None);
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("12"));
        assert_eq!(announced_length(&headers), Some(Ok(12)));
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("twelve"));
        assert_eq!(announced_length(&headers), Some(Err(())));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_times_out_at_the_deadline() {
        use futures::StreamExt;
        let first = futures::stream::once(async {
            Ok::<_, std::io::Error>(Bytes::from_static(b"{\"where\""))
        });
        let body = Body::from_stream(first.chain(futures::stream::pending()));
        let start = Instant::now();
        let read = read_whole(body, Some(100), start + Duration::from_secs(2)).await;
        assert!(matches!(read, Err(BodyError::TimedOut)));
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test]
    async fn the_budget_is_returned_when_the_request_is_answered() {
        let budget = budget(BODY_BYTES_MAX, Duration::from_secs(1));
        let permit = Arc::clone(&budget.bytes)
            .acquire_many_owned(1000)
            .await
            .expect("budget");
        assert_eq!(budget.in_use(), 1000);
        drop(permit);
        assert_eq!(budget.in_use(), 0);
    }
}
