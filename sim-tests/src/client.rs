//! A simulated shape client that follows the HTTP shape protocol the way `@electric-sql/client`
//! does (protocol.md §7), materialises the shape, and checks every response against the
//! protocol while it goes.
//!
//! It pages with `offset`/`handle` until a batch ends with an `up-to-date` control message, then
//! long-polls with `live=true` and `cursor`. A 409 (or a `must-refetch` message) drops the rows
//! and restarts at `offset=-1`; a 503/429 or a broken connection is retried after `retry-after`
//! (or a seeded backoff) on the next server, keeping handle and offset. Everything the official
//! client would reject, and everything the protocol forbids that we can see from the outside, is
//! recorded as a [`ClientEvent::Violation`], after which the client stops.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ampere_core::snapshot::PgSnapshot;
use ampere_core::{LogOffset, Lsn};
use serde_json::{Map, Value};

use crate::http::{self, HttpResponse};
use crate::sse;
use crate::subset::{self, SubsetRead};

/// One row: column name → text value or null.
pub type Row = BTreeMap<String, Option<String>>;

/// The materialised shape: key → row.
pub type Rows = BTreeMap<String, Row>;

/// Timeout of non-live requests: a non-live answer may legitimately wait up to 60 s for a
/// snapshot chunk (protocol.md §6.2), so it is never shorter than this.
pub const NON_LIVE_TIMEOUT_MIN: Duration = Duration::from_secs(75);

/// First retry delay without `retry-after`; doubles per consecutive failure.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(100);

/// Cap of the retry delay without `retry-after`.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Timeout of a live SSE request: the server ends each stream after its stream duration (20 s
/// in the simulation), so only a stuck stream or a partition reaches it.
pub const SSE_TIMEOUT: Duration = Duration::from_secs(45);

/// What the client is and where it looks.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Name used in logs.
    pub name: String,
    /// Ampere host names, tried round-robin on unavailability.
    pub servers: Vec<String>,
    /// The HTTP port of every server.
    pub port: u16,
    /// The `table` parameter, e.g. `public.items` or `items`.
    pub table: String,
    /// The `columns` parameter (sent quoted, like the official client), or all columns.
    pub columns: Option<Vec<String>>,
    /// The `where` parameter (sent URL-encoded), or every row.
    pub where_clause: Option<String>,
    /// `params[n]` values of the where clause, by `n`.
    pub params: BTreeMap<u32, String>,
    /// Timeout of live requests; must exceed the server's long-poll timeout.
    pub live_timeout: Duration,
    /// Seeds backoff jitter and cache-busters.
    pub seed: u64,
    /// Live mode streams server-sent events (`live_sse=true`) instead of long-polling.
    pub live_sse: bool,
    /// Once live, some steps read a subset of the shape (protocol.md §6.10) instead; the
    /// world checks each against the oracle.
    pub subset_reads: bool,
    /// Server → the storage it serves. Handles are unique per storage only (separate storage
    /// gives one definition a handle per instance, deploy-semantics ID-3), so a 409 expires a
    /// handle for its server's storage only. Servers not listed share one storage.
    pub storage: BTreeMap<String, usize>,
}

/// Something the client observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// An up-to-date control message was applied: the materialised rows at `offset`.
    UpToDate {
        /// Simulated time (`turmoil::sim_elapsed()`).
        at: Duration,
        /// The server that sent the batch.
        server: String,
        /// The shape handle.
        handle: String,
        /// The offset the client holds after the batch.
        offset: LogOffset,
        /// From the `snapshot-end` control entry of this handle's log, once seen.
        snapshot: Option<PgSnapshot>,
        /// The materialised rows.
        rows: Rows,
    },
    /// 409 (or a `must-refetch` message): the handle is gone; the client reset and refetches.
    MustRefetch {
        /// Simulated time.
        at: Duration,
        /// The server that answered.
        server: String,
        /// The handle the client held (empty if it held none).
        old_handle: String,
        /// The handle the 409 named in `electric-handle`, if any.
        new_handle: Option<String>,
    },
    /// 503/429 (with its `retry-after`) or a connection failure or timeout: retried.
    Unavailable {
        /// Simulated time.
        at: Duration,
        /// The server that failed.
        server: String,
        /// The HTTP status, `None` for a connection failure or timeout.
        status: Option<u16>,
        /// `retry-after` in seconds, if sent as an integer.
        retry_after: Option<u64>,
    },
    /// A subset read answered: its rows in the order served, and the snapshot they were read
    /// at.
    Subset {
        /// Simulated time.
        at: Duration,
        /// The server that answered.
        server: String,
        /// The shape's handle.
        handle: String,
        /// What was asked.
        read: SubsetRead,
        /// The read's snapshot (`metadata`).
        snapshot: PgSnapshot,
        /// The rows, in order.
        rows: Vec<(String, Row)>,
    },
    /// The server broke the protocol. The client stops after recording this.
    Violation {
        /// Simulated time.
        at: Duration,
        /// The server at fault.
        server: String,
        /// What was wrong, with the request URL.
        what: String,
    },
}

/// Everything a client observed, in order. Shared as `Arc<Mutex<ClientLog>>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientLog {
    /// The events, oldest first. `UpToDate` is stored only when handle or offset changed since
    /// the previous `UpToDate`.
    pub events: Vec<ClientEvent>,
}

impl ClientLog {
    /// The violations recorded so far.
    pub fn violations(&self) -> impl Iterator<Item = &ClientEvent> {
        self.events
            .iter()
            .filter(|e| matches!(e, ClientEvent::Violation { .. }))
    }

    /// The latest `UpToDate` event, if any.
    pub fn last_up_to_date(&self) -> Option<&ClientEvent> {
        self.events
            .iter()
            .rev()
            .find(|e| matches!(e, ClientEvent::UpToDate { .. }))
    }
}

/// Runs the client forever (the simulation stops it). After a violation it records it and
/// stops issuing requests, like the official client on a fatal error.
pub async fn run(config: ClientConfig, log: Arc<Mutex<ClientLog>>) {
    if config.servers.is_empty() {
        record(
            &log,
            ClientEvent::Violation {
                at: now(),
                server: String::new(),
                what: format!("client {}: no servers configured", config.name),
            },
        );
        return std::future::pending().await;
    }
    let mut client = Client::new(config, log);
    loop {
        match client.step().await {
            Next::Continue => {}
            Next::Retry { retry_after } => client.retry(retry_after).await,
            Next::Stop => return std::future::pending().await,
        }
    }
}

/// What the loop does after one request.
enum Next {
    Continue,
    Retry { retry_after: Option<u64> },
    Stop,
}

/// The stream position and materialised shape for the current handle.
#[derive(Default)]
struct Stream {
    handle: Option<String>,
    offset: Option<LogOffset>,
    live: bool,
    cursor: Option<String>,
    rows: Rows,
    snapshot: Option<PgSnapshot>,
    /// The offset of the last replicated entry applied for this handle.
    last_entry: Option<LogOffset>,
}

impl Stream {
    fn offset(&self) -> LogOffset {
        self.offset.unwrap_or(LogOffset::BEFORE_ALL)
    }
}

/// The parameters of one request, kept to check its response.
struct Request {
    url: String,
    offset: LogOffset,
    handle: Option<String>,
    live: bool,
    cursor: Option<String>,
    /// The subset read this request is, if it is one.
    subset: Option<SubsetRead>,
}

/// What a 200 batch asks for after it was applied.
enum Applied {
    Done { up_to_date: bool },
    MustRefetch,
}

struct Client {
    config: ClientConfig,
    log: Arc<Mutex<ClientLog>>,
    rng: SplitMix64,
    server: usize,
    stream: Stream,
    /// Handles expired by a 409, by storage.
    expired: BTreeMap<usize, BTreeSet<String>>,
    expired_param: Option<String>,
    cache_buster: Option<String>,
    failures: u32,
    last_recorded: Option<(String, LogOffset)>,
}

impl Client {
    fn new(config: ClientConfig, log: Arc<Mutex<ClientLog>>) -> Self {
        let rng = SplitMix64(config.seed);
        Self {
            config,
            log,
            rng,
            server: 0,
            stream: Stream::default(),
            expired: BTreeMap::new(),
            expired_param: None,
            cache_buster: None,
            failures: 0,
            last_recorded: None,
        }
    }

    fn server_name(&self) -> String {
        self.config.servers[self.server % self.config.servers.len()].clone()
    }

    /// The storage `server` serves.
    fn storage_of(&self, server: &str) -> usize {
        self.config.storage.get(server).copied().unwrap_or_default()
    }

    /// The handles a 409 expired on `server`'s storage.
    fn expired_on(&self, server: &str) -> Option<&BTreeSet<String>> {
        self.expired.get(&self.storage_of(server))
    }

    /// One request and its handling.
    async fn step(&mut self) -> Next {
        let server = self.server_name();
        if self.config.subset_reads
            && self.stream.live
            && self.stream.handle.is_some()
            && self.rng.below(4) == 0
        {
            return self.subset_step(server).await;
        }
        let request = self.request(None);
        if request.live && self.config.live_sse {
            return self.sse_step(server, request).await;
        }
        let timeout = if request.live {
            self.config.live_timeout
        } else {
            self.config.live_timeout.max(NON_LIVE_TIMEOUT_MIN)
        };
        tracing::trace!(client = %self.config.name, %server, url = %request.url, "shape request");
        let response = match http::get(&server, self.config.port, &request.url, timeout).await {
            Ok(response) => response,
            Err(error) => {
                tracing::debug!(client = %self.config.name, %server, %error, "request failed");
                return self.unreachable(server);
            }
        };
        self.on_response(server, &request, &response, Self::on_ok)
    }

    /// No answer from `server` (connection failed, broke or timed out): recorded, and retried
    /// after a backoff on the next server.
    fn unreachable(&mut self, server: String) -> Next {
        self.event(ClientEvent::Unavailable {
            at: now(),
            server,
            status: None,
            retry_after: None,
        });
        Next::Retry { retry_after: None }
    }

    /// Handles an answer by status: `ok` for a 200, a 409 as a must-refetch, a 429/503 by
    /// retrying, anything else as a violation.
    fn on_response(
        &mut self,
        server: String,
        request: &Request,
        response: &HttpResponse,
        ok: fn(&mut Self, &str, &Request, &HttpResponse) -> Result<(), String>,
    ) -> Next {
        let outcome = match response.status {
            200 => ok(self, &server, request, response),
            409 => self.on_conflict(&server, request, response),
            429 | 503 => {
                let retry_after = response
                    .header("retry-after")
                    .and_then(|v| v.trim().parse().ok());
                self.event(ClientEvent::Unavailable {
                    at: now(),
                    server,
                    status: Some(response.status),
                    retry_after,
                });
                return Next::Retry { retry_after };
            }
            status => Err(format!(
                "unexpected status {status} with body {}",
                String::from_utf8_lossy(&response.body)
            )),
        };
        match outcome {
            Ok(()) => {
                self.failures = 0;
                Next::Continue
            }
            Err(what) => {
                self.event(ClientEvent::Violation {
                    at: now(),
                    server,
                    what: format!("{what} (GET {})", request.url),
                });
                Next::Stop
            }
        }
    }

    /// Waits `retry_after` seconds or a jittered exponential backoff, then moves to the next
    /// server.
    async fn retry(&mut self, retry_after: Option<u64>) {
        let delay = match retry_after {
            Some(seconds) => Duration::from_secs(seconds),
            None => {
                let exp = BACKOFF_INITIAL
                    .saturating_mul(1u32 << self.failures.min(16))
                    .min(BACKOFF_MAX);
                let half = exp / 2;
                let jitter_ms = self
                    .rng
                    .below(u64::try_from(half.as_millis()).unwrap_or(0) + 1);
                half + Duration::from_millis(jitter_ms)
            }
        };
        self.failures = self.failures.saturating_add(1);
        tokio::time::sleep(delay).await;
        self.server = (self.server + 1) % self.config.servers.len();
    }

    /// A subset read of the shape at the stream's position (not live); the answer leaves the
    /// stream as it is.
    async fn subset_step(&mut self, server: String) -> Next {
        let read = SubsetRead {
            max_id: i64::try_from(self.rng.below(60)).unwrap_or(0),
            limit: 1 + self.rng.below(8),
            offset: self.rng.below(3),
        };
        let request = self.request(Some(&read));
        let timeout = self.config.live_timeout.max(NON_LIVE_TIMEOUT_MIN);
        let response = match http::get(&server, self.config.port, &request.url, timeout).await {
            Ok(response) => response,
            Err(error) => {
                tracing::debug!(client = %self.config.name, %server, %error, "subset read failed");
                return self.unreachable(server);
            }
        };
        let on_ok =
            |client: &mut Self, server: &str, request: &Request, response: &HttpResponse| {
                client.on_subset(server, request, response)
            };
        self.on_response(server, &request, &response, on_ok)
    }

    /// A subset answer (§6.10): the stream's handle, its offset echoed, `electric-snapshot`,
    /// and a body whose rows carry the read's mark. Recorded for the oracle.
    fn on_subset(
        &mut self,
        server: &str,
        request: &Request,
        response: &HttpResponse,
    ) -> Result<(), String> {
        if response.header("electric-snapshot") != Some("true") {
            return Err("subset answer without electric-snapshot: true".to_owned());
        }
        let handle = response.header("electric-handle").unwrap_or_default();
        if request.handle.as_deref() != Some(handle) {
            return Err(format!(
                "subset answer for handle {:?} carries handle {handle:?}",
                request.handle
            ));
        }
        let offset = response.header("electric-offset").unwrap_or_default();
        if offset != request.offset.to_string() {
            return Err(format!(
                "subset answer's electric-offset {offset:?} is not the request's {}",
                request.offset
            ));
        }
        let (snapshot, rows) = subset::parse_answer(&response.body)?;
        let read = request.subset.ok_or("a subset answer to a log request")?;
        self.event(ClientEvent::Subset {
            at: now(),
            server: server.to_owned(),
            handle: handle.to_owned(),
            read,
            snapshot,
            rows,
        });
        Ok(())
    }

    /// A live request as server-sent events: every complete batch (up to its `up-to-date`)
    /// that arrived is applied, even when the stream then breaks, as the official client
    /// applies them; it resumes from the last batch's `<lsn>_0`.
    async fn sse_step(&mut self, server: String, request: Request) -> Next {
        tracing::trace!(client = %self.config.name, %server, url = %request.url, "event stream request");
        let (received, outcome) =
            http::get_streamed(&server, self.config.port, &request.url, SSE_TIMEOUT).await;
        tracing::trace!(client = %self.config.name, %server, status = ?received.head.as_ref().map(|h| h.0),
            bytes = received.body.len(), ?outcome, "event stream ended");
        let Some((status, headers)) = received.head.clone() else {
            return self.unreachable(server);
        };
        if status != 200 || outcome.is_err() && received.body.is_empty() {
            if outcome.is_err() {
                return self.unreachable(server);
            }
            let response = HttpResponse {
                status,
                headers,
                body: received.body.into(),
            };
            return self.on_response(server, &request, &response, Self::on_ok);
        }
        let head = HttpResponse {
            status,
            headers,
            body: bytes::Bytes::new(),
        };
        if let Err(what) = self.on_events(&server, &request, &head, &received.body) {
            self.event(ClientEvent::Violation {
                at: now(),
                server,
                what: format!("{what} (GET {})", request.url),
            });
            return Next::Stop;
        }
        match outcome {
            Ok(()) => {
                self.failures = 0;
                Next::Continue
            }
            Err(error) => {
                tracing::debug!(client = %self.config.name, %server, %error, "event stream broke");
                self.unreachable(server)
            }
        }
    }

    /// Applies the complete batches of an event stream's `body` (protocol.md §6.5).
    fn on_events(
        &mut self,
        server: &str,
        request: &Request,
        head: &HttpResponse,
        body: &[u8],
    ) -> Result<(), String> {
        let content_type = head.header("content-type").unwrap_or_default();
        if !content_type.starts_with("text/event-stream") {
            return Err(format!(
                "live_sse answered with content-type {content_type:?}"
            ));
        }
        let handle = head.header("electric-handle").unwrap_or_default();
        if request.handle.as_deref() != Some(handle) {
            return Err(format!(
                "event stream for handle {:?} carries handle {handle:?}",
                request.handle
            ));
        }
        check_cursor(request, head)?;
        for batch in sse::batches(body)? {
            let current = self.stream.offset();
            let resume = LogOffset::change(Lsn(batch.lsn), 0);
            if resume.tx() < current.tx() {
                return Err(format!(
                    "up-to-date at lsn {} is behind the client's offset {current}",
                    batch.lsn
                ));
            }
            let ctx = BatchContext {
                request_offset: current,
                response_offset: LogOffset::change(Lsn(batch.lsn), u64::MAX),
            };
            match self.stream.apply(&batch.messages, &ctx)? {
                Applied::MustRefetch => {
                    self.must_refetch(server, None);
                    return Ok(());
                }
                Applied::Done { up_to_date } => debug_assert!(up_to_date),
            }
            self.stream.offset = Some(resume);
            self.record_up_to_date(server, handle, resume);
        }
        if let Some(cursor) = head.header("electric-cursor") {
            self.stream.cursor = Some(cursor.to_owned());
        }
        Ok(())
    }

    /// The next request (a subset read when `subset` is given), with its parameters sorted
    /// like the official client's.
    fn request(&mut self, subset: Option<&SubsetRead>) -> Request {
        let offset = self.stream.offset();
        let live = self.stream.live && subset.is_none();
        let mut params: Vec<(&str, String)> = Vec::new();
        if let Some(buster) = &self.cache_buster {
            params.push(("cache-buster", buster.clone()));
        }
        if let Some(columns) = &self.config.columns {
            let quoted: Vec<String> = columns
                .iter()
                .map(|c| format!("\"{}\"", c.replace('"', "\"\"")))
                .collect();
            params.push(("columns", quoted.join(",")));
        }
        if live {
            params.push(("cursor", self.stream.cursor.clone().unwrap_or_default()));
        }
        if let Some(expired) = &self.expired_param {
            params.push(("expired_handle", expired.clone()));
        }
        if let Some(handle) = &self.stream.handle {
            params.push(("handle", handle.clone()));
        }
        if live {
            params.push(("live", "true".to_owned()));
            if self.config.live_sse {
                params.push(("live_sse", "true".to_owned()));
            }
        }
        params.push(("log", "full".to_owned()));
        params.push(("offset", offset.to_string()));
        let numbered: Vec<(String, String)> = self
            .config
            .params
            .iter()
            .map(|(n, v)| (format!("params[{n}]"), v.clone()))
            .collect();
        for (k, v) in &numbered {
            params.push((k.as_str(), v.clone()));
        }
        if let Some(read) = subset {
            params.extend(read.query_params());
        }
        params.push(("table", self.config.table.clone()));
        if let Some(clause) = &self.config.where_clause {
            params.push(("where", clause.clone()));
        }
        debug_assert!(params.windows(2).all(|w| w[0].0 <= w[1].0), "sorted");
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        Request {
            url: format!("/v1/shape?{}", query.join("&")),
            offset,
            handle: self.stream.handle.clone(),
            live,
            cursor: self.stream.cursor.clone(),
            subset: subset.copied(),
        }
    }

    /// A 409: forget the handle and its rows, restart at `-1` with the handle the server named.
    fn on_conflict(
        &mut self,
        server: &str,
        request: &Request,
        response: &HttpResponse,
    ) -> Result<(), String> {
        let new_handle = response.header("electric-handle").map(str::to_owned);
        if new_handle.is_some() && new_handle == request.handle {
            return Err("409 names the handle the client just sent".to_owned());
        }
        let expired = self.expired_on(server);
        if let Some(new) = new_handle
            .as_ref()
            .filter(|h| expired.is_some_and(|e| e.contains(*h)))
        {
            return Err(format!("409 names the expired handle {new}"));
        }
        self.must_refetch(server, new_handle);
        Ok(())
    }

    fn must_refetch(&mut self, server: &str, new_handle: Option<String>) {
        let old_handle = self.stream.handle.clone().unwrap_or_default();
        if !old_handle.is_empty() {
            let storage = self.storage_of(server);
            self.expired
                .entry(storage)
                .or_default()
                .insert(old_handle.clone());
            self.expired_param = Some(old_handle.clone());
        }
        self.stream = Stream {
            handle: new_handle.clone(),
            ..Stream::default()
        };
        let buster = self.rng.next();
        self.cache_buster = Some(format!("{}-{buster}", now().as_millis()));
        self.event(ClientEvent::MustRefetch {
            at: now(),
            server: server.to_owned(),
            old_handle,
            new_handle,
        });
    }

    /// A 200: check the headers and the offsets, apply the batch, record up-to-date.
    fn on_ok(
        &mut self,
        server: &str,
        request: &Request,
        response: &HttpResponse,
    ) -> Result<(), String> {
        let (handle, offset) = check_headers(request, response, self.expired_on(server))?;
        let batch = parse_batch(&response.body)?;
        let up_to_date = check_up_to_date(request, response, &batch, offset)?;
        if self.stream.handle.as_deref() != Some(handle) {
            // A fresh shape (only reachable from an `offset=-1` request).
            self.stream.handle = Some(handle.to_owned());
            self.stream.last_entry = None;
        }
        let ctx = BatchContext {
            request_offset: request.offset,
            response_offset: offset,
        };
        match self.stream.apply(&batch, &ctx)? {
            Applied::MustRefetch => {
                self.must_refetch(server, None);
                return Ok(());
            }
            Applied::Done { up_to_date: ok } => debug_assert_eq!(ok, up_to_date),
        }
        self.stream.offset = Some(offset);
        if let Some(cursor) = response.header("electric-cursor") {
            self.stream.cursor = Some(cursor.to_owned());
        }
        self.cache_buster = None;
        if up_to_date {
            self.stream.live = true;
            self.expired_param = None;
            self.record_up_to_date(server, handle, offset);
        }
        Ok(())
    }

    fn record_up_to_date(&mut self, server: &str, handle: &str, offset: LogOffset) {
        let key = (handle.to_owned(), offset);
        if self.last_recorded.as_ref() == Some(&key) {
            return;
        }
        self.last_recorded = Some(key);
        self.event(ClientEvent::UpToDate {
            at: now(),
            server: server.to_owned(),
            handle: handle.to_owned(),
            offset,
            snapshot: self.stream.snapshot.clone(),
            rows: self.stream.rows.clone(),
        });
    }

    fn event(&self, event: ClientEvent) {
        if let ClientEvent::Violation { what, server, .. } = &event {
            tracing::warn!(client = %self.config.name, %server, %what, "protocol violation");
        }
        record(&self.log, event);
    }
}

fn record(log: &Mutex<ClientLog>, event: ClientEvent) {
    log.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .events
        .push(event);
}

fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// Checks the headers the official client requires (protocol.md §7) and the handle/offset
/// rules; returns the response's handle and offset.
fn check_headers<'r>(
    request: &Request,
    response: &'r HttpResponse,
    expired: Option<&BTreeSet<String>>,
) -> Result<(&'r str, LogOffset), String> {
    let mut required = vec!["electric-offset", "electric-handle"];
    required.push(if request.live {
        "electric-cursor"
    } else {
        "electric-schema"
    });
    let missing: Vec<&str> = required
        .into_iter()
        .filter(|h| response.header(h).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "200 without required header(s) {}",
            missing.join(", ")
        ));
    }
    let handle = response.header("electric-handle").unwrap_or_default();
    let offset_text = response.header("electric-offset").unwrap_or_default();
    let offset: LogOffset = offset_text
        .parse()
        .map_err(|_| format!("unparsable electric-offset {offset_text:?}"))?;
    if offset == LogOffset::BEFORE_ALL {
        return Err("electric-offset is -1".to_owned());
    }
    if handle.is_empty() {
        return Err("empty electric-handle".to_owned());
    }
    if expired.is_some_and(|e| e.contains(handle)) {
        return Err(format!(
            "200 carries the expired handle {handle} (handles are never reissued)"
        ));
    }
    if request.offset != LogOffset::BEFORE_ALL && request.handle.as_deref() != Some(handle) {
        return Err(format!(
            "200 for handle {:?} carries handle {handle}",
            request.handle
        ));
    }
    if offset < request.offset {
        return Err(format!(
            "electric-offset {offset} is below the request offset {}",
            request.offset
        ));
    }
    if request.live {
        check_cursor(request, response)?;
    } else if let Some(schema) = response.header("electric-schema") {
        match serde_json::from_str::<Value>(schema) {
            Ok(Value::Object(_)) => {}
            _ => return Err(format!("electric-schema is not a JSON object: {schema:?}")),
        }
    }
    Ok((handle, offset))
}

/// `electric-cursor` must be a decimal integer strictly above the one sent (protocol.md §6.6).
fn check_cursor(request: &Request, response: &HttpResponse) -> Result<(), String> {
    let text = response.header("electric-cursor").unwrap_or_default();
    let Ok(cursor) = text.parse::<u64>() else {
        return Err(format!("electric-cursor {text:?} is not a decimal integer"));
    };
    let previous = request
        .cursor
        .as_deref()
        .and_then(|c| c.parse::<u64>().ok())
        .unwrap_or(0);
    if cursor <= previous {
        return Err(format!(
            "electric-cursor {cursor} does not exceed the request cursor {previous}"
        ));
    }
    Ok(())
}

/// A 200 log body: a JSON array of objects (empty body = `[]`).
fn parse_batch(body: &[u8]) -> Result<Vec<Map<String, Value>>, String> {
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        format!(
            "body is not JSON ({e}): {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )
    })?;
    let Value::Array(items) = value else {
        return Err("body is not a JSON array".to_owned());
    };
    items
        .into_iter()
        .map(|item| match item {
            Value::Object(map) => Ok(map),
            other => Err(format!("log entry is not an object: {other}")),
        })
        .collect()
}

fn control(entry: &Map<String, Value>) -> Option<&str> {
    entry.get("headers")?.get("control")?.as_str()
}

/// Whether the batch ends with `up-to-date`, checked against the header and the offset rules
/// (protocol.md §5.6, §6.2, §7).
fn check_up_to_date(
    request: &Request,
    response: &HttpResponse,
    batch: &[Map<String, Value>],
    offset: LogOffset,
) -> Result<bool, String> {
    let up_to_date = batch.last().and_then(control) == Some("up-to-date");
    let header = response.header("electric-up-to-date").is_some();
    if up_to_date != header {
        return Err(format!(
            "electric-up-to-date header present: {header}, but body ends with up-to-date: \
             {up_to_date}"
        ));
    }
    if up_to_date && request.offset == LogOffset::BEFORE_ALL {
        return Err("an offset=-1 response is up-to-date".to_owned());
    }
    if !request.live && !up_to_date && offset <= request.offset {
        return Err(format!(
            "non-live response neither advances the offset ({} -> {offset}) nor is up-to-date",
            request.offset
        ));
    }
    Ok(up_to_date)
}

/// The offsets a batch was served between: its entries must lie in `(request, response]`.
struct BatchContext {
    request_offset: LogOffset,
    response_offset: LogOffset,
}

impl Stream {
    /// Applies a batch in order. Stops at a `must-refetch` message.
    fn apply(
        &mut self,
        batch: &[Map<String, Value>],
        ctx: &BatchContext,
    ) -> Result<Applied, String> {
        let last = batch.len().saturating_sub(1);
        let mut up_to_date = false;
        for (i, entry) in batch.iter().enumerate() {
            if entry
                .get("headers")
                .is_some_and(|h| h.get("control").is_some())
            {
                match control(entry) {
                    Some("up-to-date") if i == last => up_to_date = true,
                    Some("up-to-date") => {
                        return Err("up-to-date before the end of the batch".to_owned())
                    }
                    Some("snapshot-end") => self.snapshot_end(entry, ctx)?,
                    Some("must-refetch") => return Ok(Applied::MustRefetch),
                    _ => {
                        return Err(format!(
                            "unknown control message {}",
                            Value::Object(entry.clone())
                        ))
                    }
                }
            } else {
                self.apply_change(entry, ctx)
                    .map_err(|e| format!("{e} in entry {}", Value::Object(entry.clone())))?;
            }
        }
        Ok(Applied::Done { up_to_date })
    }

    fn snapshot_end(
        &mut self,
        entry: &Map<String, Value>,
        ctx: &BatchContext,
    ) -> Result<(), String> {
        if ctx.response_offset.snapshot_chunk_index().is_none() {
            return Err(format!(
                "snapshot-end in a response ending at {}, not a snapshot chunk",
                ctx.response_offset
            ));
        }
        if self.snapshot.is_some() {
            return Err("a second snapshot-end for this handle".to_owned());
        }
        let headers = entry.get("headers").unwrap_or(&Value::Null);
        let decimal = |name: &str| -> Result<String, String> {
            match headers.get(name) {
                Some(Value::String(s))
                    if s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() =>
                {
                    Ok(s.clone())
                }
                other => Err(format!(
                    "snapshot-end {name} is not a decimal string: {other:?}"
                )),
            }
        };
        let xmin = decimal("xmin")?;
        let xmax = decimal("xmax")?;
        let Some(Value::Array(xips)) = headers.get("xip_list") else {
            return Err("snapshot-end without an xip_list array".to_owned());
        };
        let mut xip = Vec::new();
        for x in xips {
            match x {
                Value::String(s) => xip.push(s.clone()),
                other => return Err(format!("snapshot-end xip {other} is not a string")),
            }
        }
        let text = format!("{xmin}:{xmax}:{}", xip.join(","));
        let snapshot =
            PgSnapshot::parse(&text).ok_or_else(|| format!("invalid snapshot {text}"))?;
        self.snapshot = Some(snapshot);
        Ok(())
    }

    /// Checks where a change entry may appear: snapshot rows only in snapshot chunks before
    /// `snapshot-end`; replicated changes inside `(request, response]`, strictly increasing.
    fn check_entry_offset(
        &mut self,
        headers: &Map<String, Value>,
        ctx: &BatchContext,
    ) -> Result<(), String> {
        let Some(lsn) = headers.get("lsn") else {
            if ctx.response_offset.snapshot_chunk_index().is_none() || self.snapshot.is_some() {
                return Err(format!(
                    "snapshot row (no lsn) outside the snapshot, response ends at {}",
                    ctx.response_offset
                ));
            }
            return Ok(());
        };
        let lsn = lsn
            .as_str()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or("lsn is not a decimal string")?;
        let op = headers
            .get("op_position")
            .and_then(Value::as_u64)
            .ok_or("op_position is not a non-negative integer")?;
        let at = LogOffset::change(Lsn(lsn), op);
        if at <= ctx.request_offset || at > ctx.response_offset {
            return Err(format!(
                "entry at {at} outside the served range ({}, {}]",
                ctx.request_offset, ctx.response_offset
            ));
        }
        if let Some(last) = self.last_entry.filter(|last| at <= *last) {
            return Err(format!("entry at {at} repeats or precedes entry at {last}"));
        }
        self.last_entry = Some(at);
        Ok(())
    }

    fn apply_change(
        &mut self,
        entry: &Map<String, Value>,
        ctx: &BatchContext,
    ) -> Result<(), String> {
        let Some(Value::String(key)) = entry.get("key") else {
            return Err("change without a string key".to_owned());
        };
        let Some(Value::Object(headers)) = entry.get("headers") else {
            return Err("change without headers".to_owned());
        };
        let operation = headers
            .get("operation")
            .and_then(Value::as_str)
            .ok_or("change without operation")?;
        self.check_entry_offset(headers, ctx)?;
        let value = match entry.get("value") {
            Some(Value::Object(value)) => Some(parse_value(value)?),
            None if operation == "delete" => None,
            _ => return Err("value is missing or not an object".to_owned()),
        };
        match operation {
            "insert" => {
                if self.rows.contains_key(key) {
                    return Err(format!("insert of existing key {key}"));
                }
                self.rows.insert(key.clone(), value.unwrap_or_default());
            }
            "update" => {
                let row = self
                    .rows
                    .get_mut(key)
                    .ok_or_else(|| format!("update of missing key {key}"))?;
                row.extend(value.unwrap_or_default());
            }
            "delete" => {
                if self.rows.remove(key).is_none() {
                    return Err(format!("delete of missing key {key}"));
                }
            }
            other => return Err(format!("unknown operation {other:?}")),
        }
        Ok(())
    }
}

/// A `value` object: every column a string or null (protocol.md §5.4).
fn parse_value(value: &Map<String, Value>) -> Result<Row, String> {
    value
        .iter()
        .map(|(column, v)| match v {
            Value::String(s) => Ok((column.clone(), Some(s.clone()))),
            Value::Null => Ok((column.clone(), None)),
            other => Err(format!("column {column} has non-string value {other}")),
        })
        .collect()
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Deterministic PRNG for jitter and cache-busters.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::net::SocketAddr;

    use axum::extract::State;
    use axum::http::Uri;
    use axum::response::Response;

    use super::*;

    const PORT: u16 = 3000;
    const SCHEMA: &str =
        r#"{"id":{"type":"int4","pk_index":0,"not_null":true},"title":{"type":"text"}}"#;

    /// A scripted answer of the fake server.
    struct Reply {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
        delay: Duration,
    }

    impl Reply {
        /// A 200 log response; `cursor` marks a live answer (no schema).
        fn ok(handle: &str, offset: &str, cursor: Option<&str>, entries: &[String]) -> Self {
            let mut headers = vec![
                ("electric-handle", handle.to_owned()),
                ("electric-offset", offset.to_owned()),
                ("electric-has-data", "true".to_owned()),
            ];
            match cursor {
                Some(c) => headers.push(("electric-cursor", c.to_owned())),
                None => headers.push(("electric-schema", SCHEMA.to_owned())),
            }
            if entries.last().is_some_and(|e| e.contains("\"up-to-date\"")) {
                headers.push(("electric-up-to-date", String::new()));
            }
            Self {
                status: 200,
                headers,
                body: format!("[{}]", entries.join(",")),
                delay: Duration::ZERO,
            }
        }

        fn status(status: u16, headers: &[(&'static str, &str)], body: &str) -> Self {
            Self {
                status,
                headers: headers.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
                body: body.to_owned(),
                delay: Duration::ZERO,
            }
        }

        fn after(mut self, delay: Duration) -> Self {
            self.delay = delay;
            self
        }

        fn without(mut self, header: &str) -> Self {
            self.headers.retain(|(k, _)| *k != header);
            self
        }
    }

    /// The fake server's script and the request targets it saw.
    #[derive(Default)]
    struct Script {
        replies: Mutex<VecDeque<Reply>>,
        requests: Mutex<Vec<String>>,
    }

    impl Script {
        fn new(replies: Vec<Reply>) -> Arc<Self> {
            Arc::new(Self {
                replies: Mutex::new(replies.into()),
                requests: Mutex::default(),
            })
        }

        fn requests(&self) -> Vec<String> {
            self.requests.lock().expect("requests").clone()
        }
    }

    struct SimListener(turmoil::net::TcpListener);

    impl axum::serve::Listener for SimListener {
        type Io = turmoil::net::TcpStream;
        type Addr = SocketAddr;

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            loop {
                if let Ok(accepted) = self.0.accept().await {
                    return accepted;
                }
            }
        }

        fn local_addr(&self) -> std::io::Result<Self::Addr> {
            self.0.local_addr()
        }
    }

    /// Answers each request with the next scripted reply; hangs once the script is exhausted.
    async fn answer(State(script): State<Arc<Script>>, uri: Uri) -> Response {
        script
            .requests
            .lock()
            .expect("requests")
            .push(uri.to_string());
        let next = script.replies.lock().expect("replies").pop_front();
        let Some(reply) = next else {
            return std::future::pending().await;
        };
        tokio::time::sleep(reply.delay).await;
        let mut builder = Response::builder().status(reply.status);
        for (name, value) in reply.headers {
            builder = builder.header(name, value);
        }
        builder
            .body(axum::body::Body::from(reply.body))
            .expect("response")
    }

    fn serve(sim: &mut turmoil::Sim<'_>, host: &str, script: &Arc<Script>) {
        let script = Arc::clone(script);
        sim.host(host, move || {
            let script = Arc::clone(&script);
            async move {
                let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
                let router = axum::Router::new()
                    .route("/v1/shape", axum::routing::get(answer))
                    .with_state(script);
                axum::serve(SimListener(listener), router).await?;
                Ok(())
            }
        });
    }

    fn config(servers: &[&str]) -> ClientConfig {
        ClientConfig {
            name: "c1".to_owned(),
            servers: servers.iter().map(|s| (*s).to_owned()).collect(),
            port: PORT,
            table: "items".to_owned(),
            columns: None,
            where_clause: None,
            params: BTreeMap::new(),
            live_timeout: Duration::from_secs(30),
            seed: 7,
            live_sse: false,
            subset_reads: false,
            storage: BTreeMap::new(),
        }
    }

    #[test]
    fn a_where_shape_sends_its_clause_and_params_url_encoded() {
        let mut config = config(&["s1"]);
        config.where_clause = Some("n = $1 OR value LIKE 'a%'".into());
        config.params = BTreeMap::from([(1, "7".to_owned())]);
        let mut client = Client::new(config, Arc::default());
        assert_eq!(
            client.request(None).url,
            "/v1/shape?log=full&offset=-1&params%5B1%5D=7&table=items\
             &where=n%20%3D%20%241%20OR%20value%20LIKE%20%27a%25%27"
        );
    }

    /// Runs the client for `duration` of simulated time and returns its log.
    fn run_client(
        sim: &mut turmoil::Sim<'_>,
        config: ClientConfig,
        duration: Duration,
    ) -> ClientLog {
        let log = Arc::new(Mutex::new(ClientLog::default()));
        let shared = Arc::clone(&log);
        sim.client("client", async move {
            let _ = tokio::time::timeout(duration, run(config, shared)).await;
            Ok(())
        });
        sim.run().expect("simulation");
        Arc::try_unwrap(log)
            .expect("the finished client released its log")
            .into_inner()
            .expect("log")
    }

    fn sim() -> turmoil::Sim<'static> {
        turmoil::Builder::new()
            .simulation_duration(Duration::from_secs(600))
            .rng_seed(1)
            .build()
    }

    fn insert(id: &str, title: &str, lsn: Option<(u64, u64)>) -> String {
        let key = format!(r#""\"public\".\"items\"/\"{id}\"""#);
        let value = format!(r#"{{"id":"{id}","title":"{title}"}}"#);
        match lsn {
            None => format!(
                r#"{{"key":{key},"value":{value},"headers":{{"operation":"insert","relation":["public","items"]}}}}"#
            ),
            Some((lsn, op)) => format!(
                r#"{{"key":{key},"value":{value},"headers":{{"operation":"insert","relation":["public","items"],"lsn":"{lsn}","op_position":{op},"txids":[9]}}}}"#
            ),
        }
    }

    fn change(operation: &str, id: &str, value: &str, lsn: u64, op: u64) -> String {
        format!(
            r#"{{"key":"\"public\".\"items\"/\"{id}\"","value":{value},"headers":{{"operation":"{operation}","relation":["public","items"],"lsn":"{lsn}","op_position":{op},"txids":[9],"last":true}}}}"#
        )
    }

    fn snapshot_end() -> String {
        PgSnapshot::parse("750:752:751")
            .expect("snapshot")
            .snapshot_end_json()
    }

    fn up_to_date(lsn: u64) -> String {
        format!(r#"{{"headers":{{"control":"up-to-date","global_last_seen_lsn":"{lsn}"}}}}"#)
    }

    fn row(id: &str, title: Option<&str>) -> (String, Row) {
        let mut row = Row::new();
        row.insert("id".to_owned(), Some(id.to_owned()));
        if let Some(title) = title {
            row.insert("title".to_owned(), Some(title.to_owned()));
        }
        (format!(r#""public"."items"/"{id}""#), row)
    }

    fn off(text: &str) -> LogOffset {
        text.parse().expect("offset")
    }

    /// The events without their timestamps, for comparison.
    fn untimed(log: &ClientLog) -> Vec<ClientEvent> {
        log.events
            .iter()
            .cloned()
            .map(|mut e| {
                match &mut e {
                    ClientEvent::UpToDate { at, .. }
                    | ClientEvent::Subset { at, .. }
                    | ClientEvent::MustRefetch { at, .. }
                    | ClientEvent::Unavailable { at, .. }
                    | ClientEvent::Violation { at, .. } => *at = Duration::ZERO,
                }
                e
            })
            .collect()
    }

    fn up_to_date_event(handle: &str, offset: &str, rows: &[(String, Row)]) -> ClientEvent {
        ClientEvent::UpToDate {
            at: Duration::ZERO,
            server: "s1".to_owned(),
            handle: handle.to_owned(),
            offset: off(offset),
            snapshot: PgSnapshot::parse("750:752:751"),
            rows: rows.iter().cloned().collect(),
        }
    }

    /// Snapshot, live insert/update/delete, a long-poll timeout, a 409 and the refetch.
    fn refetch_script() -> Arc<Script> {
        Script::new(vec![
            Reply::ok(
                "h1",
                "0_0",
                None,
                &[
                    insert("1", "a", None),
                    insert("2", "b", None),
                    snapshot_end(),
                ],
            ),
            Reply::ok("h1", "0_inf", None, &[up_to_date(90)]),
            Reply::ok(
                "h1",
                "100_2",
                Some("20"),
                &[
                    insert("3", "c", Some((100, 0))),
                    change("update", "1", r#"{"id":"1","title":"a2"}"#, 100, 2),
                    up_to_date(100),
                ],
            ),
            Reply::ok(
                "h1",
                "200_0",
                Some("40"),
                &[
                    change("delete", "2", r#"{"id":"2"}"#, 200, 0),
                    up_to_date(200),
                ],
            ),
            // A long-poll timeout: nothing new, so no new UpToDate event.
            Reply::ok("h1", "200_0", Some("60"), &[up_to_date(200)])
                .without("electric-has-data")
                .after(Duration::from_secs(20)),
            Reply::status(
                409,
                &[("electric-handle", "h2")],
                r#"[{"headers":{"control":"must-refetch"}}]"#,
            ),
            Reply::ok("h2", "0_0", None, &[insert("9", "z", None), snapshot_end()]),
            Reply::ok("h2", "0_inf", None, &[up_to_date(200)]),
        ])
    }

    /// The URLs the client sent for [`refetch_script`], sorted parameters as the official client.
    fn assert_refetch_requests(requests: &[String]) {
        assert_eq!(requests[0], "/v1/shape?log=full&offset=-1&table=items");
        assert_eq!(
            requests[1],
            "/v1/shape?handle=h1&log=full&offset=0_0&table=items"
        );
        assert_eq!(
            requests[2],
            "/v1/shape?cursor=&handle=h1&live=true&log=full&offset=0_inf&table=items"
        );
        assert_eq!(
            requests[3],
            "/v1/shape?cursor=20&handle=h1&live=true&log=full&offset=100_2&table=items"
        );
        assert_eq!(
            requests[5],
            "/v1/shape?cursor=60&handle=h1&live=true&log=full&offset=200_0&table=items"
        );
        assert!(
            requests[6].starts_with("/v1/shape?cache-buster=")
                && requests[6]
                    .ends_with("&expired_handle=h1&handle=h2&log=full&offset=-1&table=items"),
            "{}",
            requests[6]
        );
        assert_eq!(
            requests[7],
            "/v1/shape?expired_handle=h1&handle=h2&log=full&offset=0_0&table=items"
        );
        assert_eq!(
            requests.len(),
            9,
            "then a live request that is never answered"
        );
    }

    #[test]
    fn client_materialises_snapshot_and_live_changes_and_refetches_after_409() {
        let script = refetch_script();
        let mut sim = sim();
        serve(&mut sim, "s1", &script);
        let log = run_client(&mut sim, config(&["s1"]), Duration::from_secs(40));

        assert_eq!(
            untimed(&log),
            vec![
                up_to_date_event("h1", "0_inf", &[row("1", Some("a")), row("2", Some("b"))]),
                up_to_date_event(
                    "h1",
                    "100_2",
                    &[
                        row("1", Some("a2")),
                        row("2", Some("b")),
                        row("3", Some("c"))
                    ]
                ),
                up_to_date_event("h1", "200_0", &[row("1", Some("a2")), row("3", Some("c"))]),
                ClientEvent::MustRefetch {
                    at: Duration::ZERO,
                    server: "s1".to_owned(),
                    old_handle: "h1".to_owned(),
                    new_handle: Some("h2".to_owned()),
                },
                up_to_date_event("h2", "0_inf", &[row("9", Some("z"))]),
            ]
        );
        assert_refetch_requests(&script.requests());
    }

    #[test]
    fn unavailable_servers_are_retried_on_the_next_server_keeping_handle_and_offset() {
        let first = Script::new(vec![
            Reply::ok("h1", "0_0", None, &[insert("1", "a", None), snapshot_end()]),
            Reply::status(503, &[("retry-after", "2")], r#"{"message":"starting"}"#),
        ]);
        let last = Script::new(vec![Reply::ok("h1", "0_inf", None, &[up_to_date(90)])]);
        let mut sim = sim();
        serve(&mut sim, "s1", &first);
        sim.host("down", || async {
            std::future::pending::<()>().await;
            Ok(())
        });
        serve(&mut sim, "s3", &last);
        let mut config = config(&["s1", "down", "s3"]);
        config.columns = Some(vec!["id".to_owned(), "ti\"tle".to_owned()]);
        let log = run_client(&mut sim, config, Duration::from_secs(10));

        let events = untimed(&log);
        assert_eq!(events.len(), 3, "{events:?}");
        assert_eq!(
            events[0],
            ClientEvent::Unavailable {
                at: Duration::ZERO,
                server: "s1".to_owned(),
                status: Some(503),
                retry_after: Some(2),
            }
        );
        assert_eq!(
            events[1],
            ClientEvent::Unavailable {
                at: Duration::ZERO,
                server: "down".to_owned(),
                status: None,
                retry_after: None,
            }
        );
        let ClientEvent::UpToDate {
            at,
            server,
            handle,
            offset,
            ..
        } = &log.events[2]
        else {
            panic!("expected up-to-date, got {:?}", log.events[2]);
        };
        assert!(
            *at >= Duration::from_secs(2) + BACKOFF_INITIAL / 2,
            "{at:?}"
        );
        assert_eq!(
            (server.as_str(), handle.as_str(), *offset),
            ("s3", "h1", off("0_inf"))
        );
        assert_eq!(
            last.requests()[0],
            "/v1/shape?columns=%22id%22%2C%22ti%22%22tle%22&handle=h1&log=full&offset=0_0&table=items"
        );
    }

    // Found by sim: seeds 0x6c, 0x7d, 0x1e, 0xa1
    #[test]
    fn a_handle_expired_by_one_storage_is_not_expired_on_another_with_separate_storage() {
        // ID-3: s2 (its own storage) answers 409 for s1's h1; back on s1, h1 is still s1's
        // shape for the definition, so s1 may name it in a 409 and serve it.
        let live_503 = || Reply::status(503, &[("retry-after", "1")], r#"{"message":"x"}"#);
        let first = Script::new(vec![
            snapshot_chunk(),
            Reply::ok("h1", "0_inf", None, &[up_to_date(90)]),
            live_503(),
            Reply::status(409, &[("electric-handle", "h1")], "[]"),
            snapshot_chunk(),
            Reply::ok("h1", "0_inf", None, &[up_to_date(90)]),
        ]);
        let second = Script::new(vec![
            Reply::status(409, &[("electric-handle", "h2")], "[]"),
            Reply::ok("h2", "0_0", None, &[insert("1", "a", None), snapshot_end()]),
            Reply::ok("h2", "0_inf", None, &[up_to_date(90)]),
            live_503(),
        ]);
        let mut sim = sim();
        serve(&mut sim, "s1", &first);
        serve(&mut sim, "s2", &second);
        let mut config = config(&["s1", "s2"]);
        config.storage = [("s1".to_owned(), 1), ("s2".to_owned(), 2)].into();
        let log = run_client(&mut sim, config, Duration::from_secs(10));

        assert_eq!(log.violations().count(), 0, "{:?}", log.events);
        assert_eq!(first.requests().len(), 7, "then a live request on s1");
        let Some(ClientEvent::UpToDate { server, handle, .. }) = log.last_up_to_date() else {
            panic!("no up-to-date: {:?}", log.events);
        };
        assert_eq!((server.as_str(), handle.as_str()), ("s1", "h1"));
    }

    /// Runs the client against one scripted server and returns the single violation's text,
    /// asserting the client stopped making requests after it.
    fn violation_for(replies: Vec<Reply>) -> String {
        let count = replies.len();
        let script = Script::new(replies);
        let mut sim = sim();
        serve(&mut sim, "s1", &script);
        let log = run_client(&mut sim, config(&["s1"]), Duration::from_secs(30));
        let violations: Vec<&ClientEvent> = log.violations().collect();
        assert_eq!(violations.len(), 1, "{:?}", log.events);
        assert_eq!(log.events.last(), Some(violations[0]));
        assert_eq!(
            script.requests().len(),
            count,
            "no request after the violation"
        );
        let ClientEvent::Violation { what, .. } = violations[0] else {
            unreachable!()
        };
        what.clone()
    }

    fn snapshot_chunk() -> Reply {
        Reply::ok("h1", "0_0", None, &[insert("1", "a", None), snapshot_end()])
    }

    #[test]
    fn a_missing_schema_header_on_a_non_live_response_is_a_violation() {
        let what = violation_for(vec![snapshot_chunk().without("electric-schema")]);
        assert!(
            what.contains("required header(s) electric-schema"),
            "{what}"
        );
    }

    #[test]
    fn a_missing_cursor_header_on_a_live_response_is_a_violation() {
        let what = violation_for(vec![
            snapshot_chunk(),
            Reply::ok("h1", "0_inf", None, &[up_to_date(90)]),
            Reply::ok(
                "h1",
                "100_0",
                Some("20"),
                &[insert("2", "b", Some((100, 0))), up_to_date(100)],
            )
            .without("electric-cursor"),
        ]);
        assert!(
            what.contains("required header(s) electric-cursor"),
            "{what}"
        );
    }

    #[test]
    fn inserting_an_existing_key_is_a_violation() {
        let what = violation_for(vec![
            snapshot_chunk(),
            Reply::ok("h1", "0_inf", None, &[up_to_date(90)]),
            Reply::ok(
                "h1",
                "100_0",
                Some("20"),
                &[insert("1", "b", Some((100, 0))), up_to_date(100)],
            ),
        ]);
        assert!(what.contains("insert of existing key"), "{what}");
    }

    #[test]
    fn updating_a_missing_key_is_a_violation() {
        let what = violation_for(vec![
            snapshot_chunk(),
            Reply::ok("h1", "0_inf", None, &[up_to_date(90)]),
            Reply::ok(
                "h1",
                "100_0",
                Some("20"),
                &[
                    change("update", "7", r#"{"id":"7"}"#, 100, 0),
                    up_to_date(100),
                ],
            ),
        ]);
        assert!(what.contains("update of missing key"), "{what}");
    }

    #[test]
    fn an_offset_below_the_request_offset_is_a_violation() {
        let what = violation_for(vec![
            snapshot_chunk(),
            Reply::ok("h1", "0_inf", None, &[up_to_date(90)]),
            Reply::ok("h1", "0_0", Some("20"), &[up_to_date(90)]),
        ]);
        assert!(what.contains("below the request offset"), "{what}");
    }

    #[test]
    fn a_replayed_entry_is_a_violation() {
        let what = violation_for(vec![
            snapshot_chunk(),
            Reply::ok("h1", "0_inf", None, &[up_to_date(90)]),
            Reply::ok(
                "h1",
                "100_0",
                Some("20"),
                &[insert("2", "b", Some((100, 0))), up_to_date(100)],
            ),
            Reply::ok(
                "h1",
                "100_2",
                Some("40"),
                &[
                    change("delete", "2", r#"{"id":"2"}"#, 100, 0),
                    up_to_date(100),
                ],
            ),
        ]);
        assert!(what.contains("outside the served range"), "{what}");
    }

    #[test]
    fn a_non_array_body_is_a_violation() {
        let mut reply = snapshot_chunk();
        reply.body = r#"{"rows":[]}"#.to_owned();
        let what = violation_for(vec![reply]);
        assert!(what.contains("not a JSON array"), "{what}");
    }

    #[test]
    fn an_up_to_date_initial_response_is_a_violation() {
        let what = violation_for(vec![Reply::ok(
            "h1",
            "0_inf",
            None,
            &[snapshot_end(), up_to_date(90)],
        )]);
        assert!(what.contains("offset=-1 response is up-to-date"), "{what}");
    }

    #[test]
    fn a_bad_request_status_is_a_violation() {
        let what = violation_for(vec![Reply::status(
            400,
            &[],
            r#"{"message":"Invalid request","errors":{"offset":["has invalid format"]}}"#,
        )]);
        assert!(what.starts_with("unexpected status 400"), "{what}");
    }

    #[test]
    fn a_409_naming_the_same_handle_is_a_violation() {
        let what = violation_for(vec![
            snapshot_chunk(),
            Reply::status(409, &[("electric-handle", "h1")], "[]"),
        ]);
        assert!(
            what.contains("409 names the handle the client just sent"),
            "{what}"
        );
    }
}
