//! Live mode over server-sent events (`live=true&live_sse=true`, protocol.md §6.5): one long
//! response carries every batch of changes as it becomes durable, instead of one long-poll
//! request per batch.
//!
//! - Each log entry is one event, `data: <json>\n\n`; a batch ends with an `up-to-date` event,
//!   since the client hands messages to subscribers only at `up-to-date`. Its
//!   `global_last_seen_lsn` is the commit LSN of the batch's last entry, never a global LSN
//!   beyond the shape's log: the client resumes from `<lsn>_0`.
//! - On an instance that is not streaming (a standby, or reconnecting), a request that finds
//!   no backlog waits for changes as a long-poll would, then gets the long-poll's 503, so the
//!   client moves to a server that is (a standby with storage of its own never gets more).
//! - A backlog found when the request arrives is sent at once, up to the shape's latest offset.
//!   Then the stream waits for changes, sends `: keep-alive` after [`SseTimings::keepalive`] of
//!   silence, and ends after [`SseTimings::stream`], or when the shape goes away (the reconnect
//!   gets the 409).
//! - **A backlog does not end the response** (Electric ends it, and protocol.md §6.5 describes
//!   that): the official client counts a stream that ends within a second as a proxy buffering
//!   it, and after three in a row gives up SSE for long polling for good. With Electric's
//!   behaviour a restart was enough — the broken stream, then a reconnect finding the changes
//!   made meanwhile, then the next — and the client fell back (seen in the conformance test).
//! - **Resuming without duplicates** (better than Electric, which re-sends the rest of the
//!   transaction): in SSE mode the client's offset only ever comes from an `up-to-date`
//!   (`<lsn>_0`, a transaction it holds whole) or from the latest offset of an up-to-date
//!   long-poll answer (which ends a transaction), so a request at `<lsn>_0` reads after the
//!   whole transaction `<lsn>`.
//!
//! The response holds one chunk of the log at a time, so a stream costs little memory
//! between batches: its task, the handle and two offsets.

use std::time::Duration;

use ampere_core::offset::{OpIndex, RequestOffset};
use ampere_core::ports::{ChunkRead, ReadOutcome};
use ampere_core::shape::ShapeHandle;
use ampere_core::LogOffset;
use axum::body::Body;
use axum::http::header::{CACHE_CONTROL, CONNECTION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use tokio::time::Instant;

use super::errors::{ApiError, ELECTRIC_HANDLE};
use super::params::ShapeParams;
use super::AppState;
use crate::api::{Health, ShapeApi, ShapeInfo};

/// How long a stream may stay silent and how long it lasts (Electric: 21 s and 60 s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SseTimings {
    /// Silence after which a `: keep-alive` comment is sent, so that proxies and the client
    /// see the connection alive.
    pub keepalive: Duration,
    /// How long one response streams before it ends and the client reconnects.
    pub stream: Duration,
}

impl Default for SseTimings {
    fn default() -> Self {
        Self {
            keepalive: Duration::from_secs(21),
            stream: Duration::from_secs(60),
        }
    }
}

const EVENT_STREAM: &str = "text/event-stream";
const KEEPALIVE_EVENT: &[u8] = b": keep-alive\n\n";
/// Tells nginx-style proxies not to buffer the stream (they would hold every event back).
const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// Answers a live SSE request whose shape is resolved: the errors of the long-poll path
/// (out of bounds, a shape gone) as ordinary JSON responses, else the event stream.
pub(super) async fn serve<A: ShapeApi>(
    state: &AppState<A>,
    params: &ShapeParams,
    info: &ShapeInfo,
) -> Result<Response, ApiError> {
    let RequestOffset::Log(offset) = params.offset else {
        return Err(ApiError::Internal(
            "live SSE without a log offset passed validation".to_owned(),
        ));
    };
    super::shape::wait_in_bounds(state, params, &info.handle, offset).await?;
    // A shape gone before the first byte is the long-poll path's 409, not an empty stream.
    super::shape::status_or_refetch(&state.api, params, &info.handle)?;
    let mut stream = Stream {
        api: state.api.clone(),
        handle: info.handle.clone(),
        after: resume_point(offset),
        timings: state.config.sse,
        started: Instant::now(),
        last_output: Instant::now(),
        mode: Mode::Live,
        pending: None,
    };
    let first = first_batch(state, params, info, &mut stream).await?;
    if let Some(events) = first {
        stream.mode = Mode::Backlog;
        stream.pending = Some(events);
    }
    let body = futures::stream::unfold(stream, |mut stream| async move {
        let bytes = stream.next_output().await?;
        Some((Ok::<_, std::convert::Infallible>(bytes), stream))
    });
    let cursor = super::headers::next_cursor(
        state.config.clock.since_unix_epoch().as_secs(),
        state.config.long_poll_timeout,
        params.cursor.as_deref(),
        || state.rng.next(),
    );
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(EVENT_STREAM));
    headers.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=59"),
    );
    headers.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
    headers.insert(
        ELECTRIC_HANDLE,
        HeaderValue::from_str(info.handle.as_str())
            .map_err(|_| ApiError::Internal("a handle that is no header value".to_owned()))?,
    );
    headers.insert(
        super::shape::ELECTRIC_OFFSET,
        HeaderValue::from_str(&offset.to_string()).expect("offsets are ASCII"),
    );
    headers.insert(super::shape::ELECTRIC_CURSOR, HeaderValue::from(cursor));
    Ok((headers, Body::from_stream(body)).into_response())
}

/// The backlog's first batch, if any. On an instance that is not streaming, as a long-poll
/// there: wait for changes up to the long-poll timeout, else 503 so the client tries another
/// server. An event stream would only keep it here, on storage nothing may ever write to again
/// (a standby with storage of its own), sending keep-alives.
async fn first_batch<A: ShapeApi>(
    state: &AppState<A>,
    params: &ShapeParams,
    info: &ShapeInfo,
    stream: &mut Stream<A>,
) -> Result<Option<Bytes>, ApiError> {
    let first = stream.read_batch();
    if first.is_some() || state.api.health() == Health::Active {
        return Ok(first);
    }
    let deadline = Instant::now() + state.config.long_poll_timeout;
    let (api, handle) = (&state.api, &info.handle);
    let first = super::shape::wait_for(api, handle, deadline, || {
        match read_batch(api, handle, &mut stream.after) {
            Read::Events(events) => Ok(Some(events)),
            Read::Nothing => Ok(None),
            // Never waited on: a store wakes every waiter on a shape it does not hold at
            // once. The long-poll path's answer (409), else a 503.
            Read::Gone => Err(super::shape::status_or_refetch(api, params, handle)
                .err()
                .unwrap_or_else(|| {
                    ApiError::unavailable(
                        "The service is not ready: replication is not streaming",
                        10,
                    )
                })),
        }
    })
    .await?;
    first.map(Some).ok_or_else(|| {
        ApiError::unavailable("The service is not ready: replication is not streaming", 10)
    })
}

/// Where reading resumes for a request at `offset`: after the whole transaction for
/// `<lsn>_0` (see the module doc), else after `offset` itself.
fn resume_point(offset: LogOffset) -> LogOffset {
    match offset {
        LogOffset::At {
            tx,
            op: OpIndex::Index(0),
        } if tx > 0 => LogOffset::At {
            tx,
            op: OpIndex::Inf,
        },
        other => other,
    }
}

/// What the stream does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Sending what was waiting when the request arrived, up to the latest offset; then live.
    Backlog,
    /// Waiting for and sending new batches until the stream's time is up.
    Live,
    /// Nothing more to send.
    Done,
}

/// One SSE response's state.
struct Stream<A> {
    api: A,
    handle: ShapeHandle,
    /// The last offset sent (or the request's resume point).
    after: LogOffset,
    timings: SseTimings,
    started: Instant,
    last_output: Instant,
    mode: Mode,
    /// Events read but not sent yet (the backlog's first batch).
    pending: Option<Bytes>,
}

impl<A: ShapeApi> Stream<A> {
    /// The next bytes of the body, `None` at its end.
    async fn next_output(&mut self) -> Option<Bytes> {
        if let Some(events) = self.pending.take() {
            return Some(self.sent(events));
        }
        loop {
            match self.mode {
                Mode::Done => return None,
                Mode::Backlog => {
                    if let Some(events) = self.read_batch() {
                        return Some(self.sent(events));
                    }
                    self.mode = Mode::Live;
                }
                Mode::Live => return self.next_live_output().await,
            }
        }
    }

    /// Waits for the next batch, a keep-alive or the end of the stream.
    async fn next_live_output(&mut self) -> Option<Bytes> {
        let end = self.started + self.timings.stream;
        loop {
            let changed = self.api.changed(&self.handle);
            if self.api.status(&self.handle).is_none() {
                // Rotated or removed: just end; the reconnect gets the 409 (§6.5).
                self.mode = Mode::Done;
                return None;
            }
            match read_batch(&self.api, &self.handle, &mut self.after) {
                Read::Events(events) => {
                    self.last_output = Instant::now();
                    return Some(events);
                }
                Read::Gone => {
                    self.mode = Mode::Done;
                    return None;
                }
                Read::Nothing => {}
            }
            let keepalive_at = self.last_output + self.timings.keepalive;
            let wake = keepalive_at.min(end);
            if tokio::time::timeout_at(wake, changed).await.is_err() {
                let now = Instant::now();
                if now >= end {
                    self.mode = Mode::Done;
                    return None;
                }
                if now >= keepalive_at {
                    self.last_output = now;
                    return Some(Bytes::from_static(KEEPALIVE_EVENT));
                }
            }
        }
    }

    /// The next batch of the backlog, if there is one (a shape gone ends the backlog; the live
    /// loop then ends the stream).
    fn read_batch(&mut self) -> Option<Bytes> {
        match read_batch(&self.api, &self.handle, &mut self.after) {
            Read::Events(events) => Some(events),
            Read::Nothing | Read::Gone => None,
        }
    }

    fn sent(&mut self, bytes: Bytes) -> Bytes {
        self.last_output = Instant::now();
        bytes
    }
}

/// What one read of the log found for the stream.
enum Read {
    /// Events to send.
    Events(Bytes),
    /// Nothing after the stream's offset yet.
    Nothing,
    /// The store no longer has the shape (removed, rotated, or not readable here any more):
    /// the stream ends and the reconnect gets the long-poll path's answer (a 409). Waiting
    /// instead would spin: a store wakes every waiter on a shape it does not hold at once.
    Gone,
}

/// The events of the entries after `after`, up to the end of their chunk, and an `up-to-date`
/// event when that reaches the shape's latest offset; advances `after`.
fn read_batch<A: ShapeApi>(api: &A, handle: &ShapeHandle, after: &mut LogOffset) -> Read {
    let Some(status) = api.status(handle) else {
        return Read::Gone;
    };
    let chunk = match api.read(handle, *after) {
        ReadOutcome::Chunk(chunk) if chunk.entries > 0 => chunk,
        ReadOutcome::Chunk(_) | ReadOutcome::SnapshotPending => return Read::Nothing,
        ReadOutcome::UnknownShape => return Read::Gone,
    };
    *after = chunk.end;
    let is_up_to_date = chunk.end >= status.latest;
    Read::Events(render_events(&chunk, is_up_to_date))
}

/// `data: <entry>\n\n` per entry of `chunk`, then the `up-to-date` event if `is_up_to_date`.
fn render_events(chunk: &ChunkRead, is_up_to_date: bool) -> Bytes {
    let mut out = BytesMut::with_capacity(chunk.body.len() + chunk.entries * 8 + 96);
    for entry in split_entries(&chunk.body) {
        out.put_slice(b"data: ");
        out.put_slice(entry);
        out.put_slice(b"\n\n");
    }
    if is_up_to_date {
        out.put_slice(
            b"data: {\"headers\":{\"control\":\"up-to-date\",\"global_last_seen_lsn\":\"",
        );
        out.put_slice(chunk.end.tx().to_string().as_bytes());
        out.put_slice(b"\"}}\n\n");
    }
    out.freeze()
}

/// The JSON objects of a chunk body (`{…},{…},…`, as the store joins them): splits at the
/// commas between top-level objects, skipping braces and commas inside strings.
fn split_entries(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = body;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (mut depth, mut in_string, mut escaped) = (0_usize, false, false);
        let mut end = rest.len();
        for (i, &byte) in rest.iter().enumerate() {
            if in_string {
                match byte {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => in_string = false,
                    _ => {}
                }
                continue;
            }
            match byte {
                b'"' => in_string = true,
                b'{' | b'[' => depth += 1,
                b'}' | b']' => depth = depth.saturating_sub(1),
                b',' if depth == 0 => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        let entry = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or_default();
        Some(entry)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_split_at_top_level_commas_only() {
        let body = br#"{"key":"a,b","value":{"x":"{,}"}},{"v":["1,2",{"q":"\","}]},{"z":1}"#;
        let entries: Vec<&[u8]> = split_entries(body).collect();
        assert_eq!(
            entries,
            [
                &br#"{"key":"a,b","value":{"x":"{,}"}}"#[..],
                br#"{"v":["1,2",{"q":"\","}]}"#,
                br#"{"z":1}"#,
            ]
        );
        assert_eq!(split_entries(b"").count(), 0);
    }

    #[test]
    fn events_frame_each_entry_and_end_an_up_to_date_batch_with_the_batch_lsn() {
        let chunk = ChunkRead {
            body: Bytes::from_static(br#"{"a":1},{"b":2}"#),
            entries: 2,
            end: "100_4".parse().expect("offset"),
        };
        assert_eq!(
            &render_events(&chunk, true)[..],
            b"data: {\"a\":1}\n\ndata: {\"b\":2}\n\n\
              data: {\"headers\":{\"control\":\"up-to-date\",\"global_last_seen_lsn\":\"100\"}}\n\n"
        );
        assert_eq!(
            &render_events(&chunk, false)[..],
            b"data: {\"a\":1}\n\ndata: {\"b\":2}\n\n"
        );
    }

    #[test]
    fn a_resume_at_lsn_0_reads_after_the_whole_transaction() {
        let offset = |s: &str| s.parse::<LogOffset>().expect("offset");
        assert_eq!(resume_point(offset("100_0")), offset("100_inf"));
        assert_eq!(resume_point(offset("100_4")), offset("100_4"));
        assert_eq!(resume_point(offset("0_0")), offset("0_0"));
        assert_eq!(resume_point(offset("0_inf")), offset("0_inf"));
    }
}
