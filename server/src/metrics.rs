//! Prometheus metrics (docs/metrics.md), served only on `ELECTRIC_PROMETHEUS_PORT`, as
//! Electric does: never on the API port.
//!
//! One [`Metrics`] per process, no global state: the HTTP layer records requests into it
//! ([`HttpConfig::metrics`](crate::http::HttpConfig::metrics)), the driver records snapshot
//! and flush latencies ([`Metrics::observe_snapshot`], [`Metrics::observe_flush`], timed with
//! its clock port so the simulation runs the same code), eviction counts the shapes it removes
//! ([`Metrics::shape_evicted`]), the slot poller ([`poll_slot`])
//! stores the replication slot's statistics, and readiness, progress and the bytes of shape
//! logs on disk are read from the service at each scrape ([`ServiceStats`]).
//! [`Metrics::router`] serves the Prometheus text format (0.0.4), on the API's connection loop
//! ([`serve_connections`](crate::http::serve_connections)) with the API's header-read and
//! idle timeouts and at most [`MAX_CONNECTIONS`] connections, counted in the descriptor budget
//! ([`FdBudget`](crate::http::FdBudget)).

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ampere_core::Lsn;
use ampere_io_real::pg::{RealPg, SlotStats};
use ampere_io_real::store::FileStore;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::watch;
use tracing::debug;

use crate::api::Health;
use crate::registry::{Ingest, Registry};

/// Connections the metrics port holds open at most (`ELECTRIC_PROMETHEUS_PORT`): a scraper
/// or two need one each; at the cap a new connection closes the oldest one waiting for a
/// request, or is closed unread while every one is handling a request.
pub const MAX_CONNECTIONS: usize = 16;

/// How often [`poll_slot`] reads `pg_replication_slots`.
pub const SLOT_POLL_INTERVAL: Duration = Duration::from_secs(10);

/// How long one slot-statistics query may take before the poll gives up on it.
const SLOT_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Request-latency buckets, in seconds: up to a minute, so that long polls (20 s by default)
/// land in a bucket of their own.
const LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
];

/// Snapshot-latency buckets, in seconds: a small table's snapshot takes milliseconds, a large
/// one minutes.
const SNAPSHOT_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Flush-latency buckets, in seconds: a group commit is one `fdatasync` per file written, from
/// well under a millisecond on NVMe to seconds on a saturated network disk.
const FLUSH_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Readiness and progress, read from the service at each scrape.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ServiceStats {
    /// Current readiness.
    pub health: Health,
    /// Purges since start.
    pub purges: u64,
    /// The last commit LSN durable in every shape.
    pub durable_lsn: Lsn,
    /// The `flush` position last acknowledged to Postgres, where known.
    pub acknowledged_lsn: Option<Lsn>,
    /// Live shapes, where known.
    pub shapes: Option<usize>,
    /// Bytes of shape logs durable on disk, where known.
    pub shape_bytes: Option<u64>,
    /// Why storage writes fail, while they do ([`crate::registry::StorageDegraded::reason`]).
    pub storage_degraded: Option<&'static str>,
    /// What replication delivered, where known.
    pub ingest: Option<Ingest>,
}

impl ServiceStats {
    /// What the driver's read model says.
    pub fn of_registry(registry: &Registry) -> Self {
        let state = registry.state();
        Self {
            health: state.health,
            purges: registry.last_purge().map_or(0, |p| p.count),
            durable_lsn: state.durable_lsn,
            acknowledged_lsn: Some(registry.acknowledged_lsn()),
            shapes: Some(registry.len()),
            shape_bytes: None,
            storage_degraded: registry.degraded().map(|d| d.reason),
            ingest: Some(registry.ingest()),
        }
    }

    /// What the driver's read model and the shape-log store say.
    pub fn of_service(registry: &Registry, store: &FileStore) -> Self {
        Self {
            shape_bytes: Some(store.durable_bytes()),
            ..Self::of_registry(registry)
        }
    }

    /// What a [`ShapeApi`](crate::api::ShapeApi) says (no acknowledged LSN or shape count).
    #[cfg(test)]
    pub fn of_api(api: &impl crate::api::ShapeApi) -> Self {
        Self {
            health: api.health(),
            purges: api.last_purge().map_or(0, |p| p.count),
            durable_lsn: api.last_seen_lsn(),
            acknowledged_lsn: None,
            shapes: None,
            shape_bytes: None,
            storage_degraded: api.storage_degraded().map(|d| d.reason),
            ingest: None,
        }
    }
}

/// The process's metrics; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: prometheus_client::registry::Registry,
    http: HttpMetrics,
    /// Shape creation request → snapshot taken.
    snapshot_duration: Histogram,
    /// `FlushLogs` issued → logs flushed.
    flush_duration: Histogram,
    /// Shapes removed beyond `ELECTRIC_MAX_SHAPES`.
    shapes_evicted: Counter,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// HTTP series, recorded by the API's middleware.
#[derive(Clone)]
pub(crate) struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabel, Histogram>,
    in_flight: Family<RouteLabel, Gauge>,
    connections: Gauge,
    /// Connections closed to stay under the cap, by [`ShedLabel`].
    connections_shed: Family<ShedLabel, Counter>,
    slot: Arc<Mutex<Option<SlotStats>>>,
}

/// How a connection was shed at the connection cap: `refused` (a new connection closed at
/// once) or `evicted` (an older one waiting for a request, closed to make room).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShedLabel {
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

impl Metrics {
    /// Metrics reading readiness and progress from `stats` at each scrape.
    pub fn new(stats: impl Fn() -> ServiceStats + Send + Sync + 'static) -> Self {
        let mut registry = prometheus_client::registry::Registry::default();
        let http = HttpMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS)),
            in_flight: Family::default(),
            connections: Gauge::default(),
            connections_shed: Family::default(),
            slot: Arc::default(),
        };
        registry.register_collector(Box::new(ServiceCollector {
            stats: Box::new(stats),
            slot: Arc::clone(&http.slot),
        }));
        registry.register(
            "ampere_http_requests",
            "HTTP API requests answered, by route and status",
            http.requests.clone(),
        );
        registry.register(
            "ampere_http_request_duration_seconds",
            "HTTP API request latency until the response head, by route",
            http.duration.clone(),
        );
        registry.register(
            "ampere_http_requests_in_flight",
            "HTTP API requests being handled now (long polls under route shape_live)",
            http.in_flight.clone(),
        );
        registry.register(
            "ampere_http_connections",
            "Open TCP connections to the HTTP API port",
            http.connections.clone(),
        );
        registry.register(
            "ampere_http_connections_shed",
            "API connections closed at the connection cap (AMPERE_MAX_CONNECTIONS): refused \
             new ones, and evicted ones that waited for a request",
            http.connections_shed.clone(),
        );
        let snapshot_duration = Histogram::new(SNAPSHOT_BUCKETS);
        registry.register(
            "ampere_snapshot_duration_seconds",
            "Shape creation request to its snapshot taken (every row durable), for snapshots \
             that succeeded",
            snapshot_duration.clone(),
        );
        let flush_duration = Histogram::new(FLUSH_BUCKETS);
        registry.register(
            "ampere_flush_duration_seconds",
            "Shape-log group commits (write and fdatasync of every shape appended since the \
             last), from issue to durable, for flushes that succeeded",
            flush_duration.clone(),
        );
        let shapes_evicted = Counter::default();
        registry.register(
            "ampere_shapes_evicted",
            "Shapes removed as least recently used beyond ELECTRIC_MAX_SHAPES (their clients \
             get 409 and sync again), since start",
            shapes_evicted.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                registry,
                http,
                snapshot_duration,
                flush_duration,
                shapes_evicted,
            }),
        }
    }

    /// Metrics over the driver's read model and the shape-log store (the `ampere` binary).
    pub fn of_service(registry: Registry, store: FileStore) -> Self {
        Self::new(move || ServiceStats::of_service(&registry, &store))
    }

    /// Records a snapshot that succeeded, `elapsed` after its shape was requested.
    pub fn observe_snapshot(&self, elapsed: Duration) {
        self.inner.snapshot_duration.observe(elapsed.as_secs_f64());
    }

    /// Records a flush that succeeded, `elapsed` after it was issued.
    pub fn observe_flush(&self, elapsed: Duration) {
        self.inner.flush_duration.observe(elapsed.as_secs_f64());
    }

    /// Counts a shape removed as least recently used beyond `ELECTRIC_MAX_SHAPES`.
    pub fn shape_evicted(&self) {
        self.inner.shapes_evicted.inc();
    }

    /// The Prometheus text exposition (version 0.0.4).
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.inner.registry)
            .expect("invariant: writing to a String cannot fail");
        text
    }

    /// Stores the replication slot's statistics (`None`: unknown, not exposed).
    pub fn set_slot(&self, stats: Option<SlotStats>) {
        *lock(&self.inner.http.slot) = stats;
    }

    /// Counts an open API connection until the result drops.
    pub fn connection(&self) -> Connection {
        let gauge = self.inner.http.connections.clone();
        gauge.inc();
        Connection {
            _open: InFlight(gauge),
        }
    }

    /// Counts a connection shed at the connection cap: `evicted` (an older connection waiting
    /// for a request, closed to make room) or else refused.
    pub fn connection_shed(&self, evicted: bool) {
        let action = if evicted { "evicted" } else { "refused" };
        self.inner
            .http
            .connections_shed
            .get_or_create(&ShedLabel { action })
            .inc();
    }

    pub(crate) fn http(&self) -> &HttpMetrics {
        &self.inner.http
    }

    /// The router for `ELECTRIC_PROMETHEUS_PORT`: `GET|HEAD /metrics`, anything else 404.
    pub fn router(&self) -> Router {
        let metrics = self.clone();
        Router::new().fallback(move |method: Method, uri: axum::http::Uri| {
            let metrics = metrics.clone();
            async move {
                let is_read = method == Method::GET || method == Method::HEAD;
                if !is_read || uri.path().trim_end_matches('/') != "/metrics" {
                    return StatusCode::NOT_FOUND.into_response();
                }
                let body = if method == Method::HEAD {
                    String::new()
                } else {
                    metrics.render()
                };
                exposition(body)
            }
        })
    }
}

fn exposition(body: String) -> Response {
    let headers = [
        (
            CONTENT_TYPE,
            HeaderValue::from_static(prometheus_client::encoding::prometheus_text::CONTENT_TYPE),
        ),
        (
            CACHE_CONTROL,
            HeaderValue::from_static("no-cache, no-store, must-revalidate"),
        ),
    ];
    (StatusCode::OK, headers, body).into_response()
}

impl HttpMetrics {
    /// Counts a request in flight on `route` until the guard drops.
    pub(crate) fn start(&self, route: &'static str) -> InFlight {
        let gauge = self.in_flight.get_or_create_owned(&RouteLabel { route });
        gauge.inc();
        InFlight(gauge)
    }

    /// Records an answered request.
    pub(crate) fn finish(&self, route: &'static str, status: StatusCode, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route,
                status: status.as_u16(),
            })
            .inc();
        self.duration
            .get_or_create(&RouteLabel { route })
            .observe(elapsed.as_secs_f64());
    }
}

/// A request in flight; decrements its gauge when dropped (answered or abandoned).
#[derive(Debug)]
pub(crate) struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// An open API connection, counted until dropped.
#[derive(Debug)]
pub struct Connection {
    _open: InFlight,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Readiness, progress and slot statistics, read at each scrape.
struct ServiceCollector {
    stats: Box<dyn Fn() -> ServiceStats + Send + Sync>,
    slot: Arc<Mutex<Option<SlotStats>>>,
}

impl fmt::Debug for ServiceCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceCollector").finish_non_exhaustive()
    }
}

impl Collector for ServiceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let stats = (self.stats)();
        let is_active = stats.health == Health::Active;
        gauge(
            &mut encoder,
            "ampere_active",
            "Whether this instance holds the replication lock and streams (1) or not (0).",
            i64::from(is_active),
        )?;
        let purges = ConstCounter::new(stats.purges);
        purges.encode(encoder.encode_descriptor(
            "ampere_purges",
            "Purges of every shape after a replication continuity break, since start.",
            None,
            purges.metric_type(),
        )?)?;
        gauge(
            &mut encoder,
            "ampere_durable_lsn",
            "Last commit LSN durable in every shape (global_last_seen_lsn).",
            stats.durable_lsn.as_u64(),
        )?;
        if let Some(lsn) = stats.acknowledged_lsn {
            gauge(
                &mut encoder,
                "ampere_acknowledged_lsn",
                "WAL position last confirmed (flushed) to Postgres on the replication \
                 connection; 0 before the first.",
                lsn.as_u64(),
            )?;
        }
        if let Some(shapes) = stats.shapes {
            gauge(
                &mut encoder,
                "ampere_shapes",
                "Live shapes.",
                u64::try_from(shapes).unwrap_or(u64::MAX),
            )?;
        }
        if let Some(bytes) = stats.shape_bytes {
            gauge(
                &mut encoder,
                "ampere_shape_storage_bytes",
                "Bytes of shape logs durable on disk (log data, index and snapshot chunks), \
                 over every shape this instance has open.",
                bytes,
            )?;
        }
        if let Some(ingest) = stats.ingest {
            encode_ingest(&mut encoder, ingest)?;
        }
        let degraded = DegradedGauge {
            current: stats.storage_degraded,
        };
        degraded.encode(encoder.encode_descriptor(
            "ampere_storage_degraded",
            "Whether storage writes fail (1) for this reason (full: ENOSPC; fd_limit: \
             EMFILE/ENFILE; io: EIO or SQLite I/O; error: another write error) or not (0): \
             replication is stopped, durable shapes are served read-only, writes are retried.",
            None,
            degraded.metric_type(),
        )?)?;
        // Only while active: a standby's poller stops, and its last values would be stale.
        let slot = if is_active {
            lock(&self.slot).clone()
        } else {
            None
        };
        if let Some(slot) = slot {
            encode_slot(&mut encoder, &slot)?;
        }
        Ok(())
    }
}

fn encode_ingest(encoder: &mut DescriptorEncoder<'_>, ingest: Ingest) -> Result<(), fmt::Error> {
    let transactions = ConstCounter::new(ingest.transactions);
    transactions.encode(encoder.encode_descriptor(
        "ampere_transactions",
        "Transactions taken from the replication stream since start (replays of durable ones \
         not counted).",
        None,
        transactions.metric_type(),
    )?)?;
    let changes = ConstCounter::new(ingest.changes);
    changes.encode(encoder.encode_descriptor(
        "ampere_changes",
        "Row changes (inserts, updates, deletes, truncates) in those transactions.",
        None,
        changes.metric_type(),
    )?)?;
    if let Some(micros) = ingest.lag_micros {
        #[allow(clippy::cast_precision_loss)] // microseconds: exact far beyond any real lag
        let seconds = micros as f64 / 1e6;
        let lag = ConstGauge::new(seconds);
        lag.encode(encoder.encode_descriptor(
            "ampere_replication_lag_seconds",
            "Seconds from the last transaction's commit on the server to its processing here \
             (the two hosts' clocks compared; the lag in bytes is the slot's confirmed-flush \
             lag).",
            None,
            lag.metric_type(),
        )?)?;
    }
    Ok(())
}

fn encode_slot(encoder: &mut DescriptorEncoder<'_>, slot: &SlotStats) -> Result<(), fmt::Error> {
    if let Some(bytes) = slot.retained_wal_bytes {
        gauge(
            encoder,
            "ampere_slot_retained_wal_bytes",
            "WAL bytes the replication slot keeps on the Postgres server \
             (pg_current_wal_lsn() - restart_lsn).",
            bytes,
        )?;
    }
    if let Some(bytes) = slot.confirmed_flush_lag_bytes {
        gauge(
            encoder,
            "ampere_slot_confirmed_flush_lag_bytes",
            "WAL bytes written since the slot's confirmed_flush_lsn.",
            bytes,
        )?;
    }
    gauge(
        encoder,
        "ampere_slot_active",
        "Whether a walsender streams from the replication slot (1) or not (0).",
        i64::from(slot.active),
    )?;
    if let Some(status) = &slot.wal_status {
        let family = ConstFamily {
            labels: [("wal_status", status.as_str())],
            value: 1,
        };
        family.encode(encoder.encode_descriptor(
            "ampere_slot_wal_status",
            "The replication slot's wal_status (reserved, extended, unreserved, lost) as a \
             label; the value is always 1.",
            None,
            family.metric_type(),
        )?)?;
    }
    Ok(())
}

fn gauge<N: prometheus_client::encoding::EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: N,
) -> Result<(), fmt::Error> {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

/// One labelled gauge sample.
#[derive(Debug)]
struct ConstFamily<'a> {
    labels: [(&'a str, &'a str); 1],
    value: i64,
}

impl prometheus_client::metrics::TypedMetric for ConstFamily<'_> {
    const TYPE: prometheus_client::metrics::MetricType =
        prometheus_client::metrics::MetricType::Gauge;
}

impl EncodeMetric for ConstFamily<'_> {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder<'_>,
    ) -> Result<(), fmt::Error> {
        ConstGauge::new(self.value).encode(encoder.encode_family(&self.labels.as_slice())?)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        <Self as prometheus_client::metrics::TypedMetric>::TYPE
    }
}

/// `ampere_storage_degraded{reason}`: one sample per reason, 1 for the current one.
#[derive(Debug)]
struct DegradedGauge {
    current: Option<&'static str>,
}

impl DegradedGauge {
    /// Every reason the driver records, so each series exists (at 0) before it is needed.
    const REASONS: [&'static str; 4] = ["full", "fd_limit", "io", "error"];
}

impl prometheus_client::metrics::TypedMetric for DegradedGauge {
    const TYPE: prometheus_client::metrics::MetricType =
        prometheus_client::metrics::MetricType::Gauge;
}

impl EncodeMetric for DegradedGauge {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder<'_>,
    ) -> Result<(), fmt::Error> {
        for reason in Self::REASONS {
            let value = i64::from(self.current == Some(reason));
            let labels = [("reason", reason)];
            ConstGauge::new(value).encode(encoder.encode_family(&labels.as_slice())?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        <Self as prometheus_client::metrics::TypedMetric>::TYPE
    }
}

/// While this instance is active, reads the slot's statistics on the admin connection into
/// `metrics` at once and then every [`SLOT_POLL_INTERVAL`], until `shutdown` flips. A failed
/// query never touches replication: it is logged at debug and the slot series are dropped
/// until one succeeds (stale values would hide a growing backlog).
pub async fn poll_slot(
    metrics: Metrics,
    pg: RealPg,
    slot: String,
    registry: Registry,
    mut shutdown: watch::Receiver<bool>,
) {
    let polls = async {
        loop {
            if registry.state().health != Health::Active {
                metrics.set_slot(None);
                registry
                    .wait_for(|state| state.health == Health::Active)
                    .await;
            }
            let stats = match tokio::time::timeout(SLOT_QUERY_TIMEOUT, pg.slot_stats(&slot)).await {
                Ok(Ok(stats)) => stats,
                Ok(Err(e)) => {
                    debug!(error = %ampere_core::error_chain(&e), "slot statistics unavailable");
                    None
                }
                Err(_) => {
                    debug!("slot statistics query timed out");
                    None
                }
            };
            metrics.set_slot(stats);
            tokio::time::sleep(SLOT_POLL_INTERVAL).await;
        }
    };
    tokio::select! {
        () = polls => {}
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_series_appear_only_while_active() {
        let stats = Arc::new(Mutex::new(ServiceStats {
            health: Health::Active,
            purges: 2,
            durable_lsn: Lsn(42),
            acknowledged_lsn: Some(Lsn(43)),
            shapes: Some(3),
            shape_bytes: Some(4096),
            storage_degraded: None,
            ingest: Some(Ingest {
                transactions: 5,
                changes: 12,
                lag_micros: Some(1_250_000),
            }),
        }));
        let source = Arc::clone(&stats);
        let metrics = Metrics::new(move || *lock(&source));
        metrics.set_slot(Some(SlotStats {
            retained_wal_bytes: Some(1024),
            confirmed_flush_lag_bytes: Some(16),
            active: true,
            wal_status: Some("reserved".to_owned()),
        }));
        let text = metrics.render();
        for line in [
            "ampere_active 1\n",
            "ampere_purges_total 2\n",
            "ampere_durable_lsn 42\n",
            "ampere_acknowledged_lsn 43\n",
            "ampere_shapes 3\n",
            "ampere_shape_storage_bytes 4096\n",
            "ampere_slot_retained_wal_bytes 1024\n",
            "ampere_slot_confirmed_flush_lag_bytes 16\n",
            "ampere_slot_active 1\n",
            "ampere_slot_wal_status{wal_status=\"reserved\"} 1\n",
            "ampere_transactions_total 5\n",
            "ampere_changes_total 12\n",
            "ampere_replication_lag_seconds 1.25\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
        assert!(
            text.contains("ampere_storage_degraded{reason=\"full\"} 0\n"),
            "{text}"
        );
        lock(&stats).health = Health::Waiting;
        lock(&stats).storage_degraded = Some("full");
        let text = metrics.render();
        assert!(text.contains("ampere_active 0\n"), "{text}");
        assert!(
            text.contains("ampere_storage_degraded{reason=\"full\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("ampere_storage_degraded{reason=\"fd_limit\"} 0\n"),
            "{text}"
        );
        assert!(!text.contains("ampere_slot_"), "{text}");
    }

    #[test]
    fn evicted_shapes_are_counted_from_zero() {
        let metrics = Metrics::new(ServiceStats::default);
        let evicted = |metrics: &Metrics| {
            let families = text_format::parse(&metrics.render()).expect("valid exposition");
            let family = &families["ampere_shapes_evicted_total"];
            assert_eq!(family.kind, "counter");
            family.value("ampere_shapes_evicted_total", &[])
        };
        assert_eq!(evicted(&metrics), Some(0.0));
        metrics.shape_evicted();
        metrics.shape_evicted();
        assert_eq!(evicted(&metrics), Some(2.0));
    }

    #[test]
    fn snapshot_and_flush_latencies_land_in_their_buckets() {
        let metrics = Metrics::new(ServiceStats::default);
        metrics.observe_snapshot(Duration::from_millis(300));
        metrics.observe_flush(Duration::from_micros(700));
        metrics.observe_flush(Duration::from_secs(20));
        let families = text_format::parse(&metrics.render()).expect("valid exposition");
        let snapshot = &families["ampere_snapshot_duration_seconds"];
        assert_eq!(snapshot.kind, "histogram");
        let count = "ampere_snapshot_duration_seconds_count";
        assert_eq!(snapshot.value(count, &[]), Some(1.0));
        let bucket = "ampere_snapshot_duration_seconds_bucket";
        assert_eq!(snapshot.value(bucket, &[("le", "0.25")]), Some(0.0));
        assert_eq!(snapshot.value(bucket, &[("le", "0.5")]), Some(1.0));
        let flush = &families["ampere_flush_duration_seconds"];
        let bucket = "ampere_flush_duration_seconds_bucket";
        assert_eq!(flush.value(bucket, &[("le", "0.0005")]), Some(0.0));
        assert_eq!(flush.value(bucket, &[("le", "0.001")]), Some(1.0));
        assert_eq!(flush.value(bucket, &[("le", "10")]), Some(1.0));
        assert_eq!(flush.value(bucket, &[("le", "+Inf")]), Some(2.0));
        assert!(
            !families.contains_key("ampere_shape_storage_bytes"),
            "unknown bytes are not exported as 0"
        );
    }
}

/// A strict reader of the Prometheus text format (0.0.4), for tests: every family must have
/// `# HELP` and `# TYPE` before its samples, samples must be grouped under their family, and
/// histograms must be cumulative with `+Inf` equal to `_count`.
#[cfg(test)]
pub(crate) mod text_format {
    use std::collections::BTreeMap;

    /// A metric family: its help, type and samples.
    #[derive(Debug, Default)]
    pub(crate) struct MetricFamily {
        pub(crate) help: String,
        pub(crate) kind: String,
        pub(crate) samples: Vec<Sample>,
    }

    /// One sample line.
    #[derive(Debug)]
    pub(crate) struct Sample {
        pub(crate) name: String,
        pub(crate) labels: BTreeMap<String, String>,
        pub(crate) value: f64,
    }

    impl MetricFamily {
        /// The value of the sample named `name` with exactly these labels.
        pub(crate) fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
            let wanted: BTreeMap<String, String> = labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            self.samples
                .iter()
                .find(|s| s.name == name && s.labels == wanted)
                .map(|s| s.value)
        }
    }

    fn is_metric_name(name: &str) -> bool {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    fn is_label_name(name: &str) -> bool {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    }

    fn parse_value(text: &str) -> Result<f64, String> {
        match text {
            "+Inf" => Ok(f64::INFINITY),
            "-Inf" => Ok(f64::NEG_INFINITY),
            "NaN" => Ok(f64::NAN),
            _ => text.parse().map_err(|_| format!("bad value {text:?}")),
        }
    }

    /// `{a="x",b="y"}` at the start of `rest`; returns the labels and what follows.
    fn parse_labels(rest: &str) -> Result<(BTreeMap<String, String>, &str), String> {
        let mut labels = BTreeMap::new();
        let Some(mut rest) = rest.strip_prefix('{') else {
            return Ok((labels, rest));
        };
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                return Ok((labels, after));
            }
            let (name, after) = rest.split_once("=\"").ok_or("label without =\"")?;
            if !is_label_name(name) {
                return Err(format!("bad label name {name:?}"));
            }
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next().ok_or("unterminated label value")? {
                    (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        c => return Err(format!("bad escape \\{c}")),
                    },
                    (i, '"') => break i,
                    (_, c) => value.push(c),
                }
            };
            if labels.insert(name.to_owned(), value).is_some() {
                return Err(format!("label {name} repeated"));
            }
            rest = &after[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }

    /// Whether `sample` may appear in the family `family` of type `kind`.
    fn belongs(sample: &str, family: &str, kind: &str) -> bool {
        sample == family
            || (kind == "histogram"
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| sample.strip_suffix(suffix) == Some(family)))
    }

    /// One sample line: `name{labels} value [timestamp]`.
    fn parse_sample(line: &str) -> Result<Sample, String> {
        let end = line.find(['{', ' ']).ok_or("sample without value")?;
        let name = &line[..end];
        if !is_metric_name(name) {
            return Err(format!("bad metric name in {line:?}"));
        }
        let (labels, rest) = parse_labels(&line[end..])?;
        let mut fields = rest
            .strip_prefix(' ')
            .ok_or("no space before value")?
            .split(' ');
        let value = parse_value(fields.next().ok_or("no value")?)?;
        if let Some(timestamp) = fields.next() {
            timestamp
                .parse::<i64>()
                .map_err(|_| format!("bad timestamp in {line:?}"))?;
        }
        if fields.next().is_some() {
            return Err(format!("trailing fields in {line:?}"));
        }
        Ok(Sample {
            name: name.to_owned(),
            labels,
            value,
        })
    }

    /// Parses a whole exposition, by family name.
    pub(crate) fn parse(text: &str) -> Result<BTreeMap<String, MetricFamily>, String> {
        let mut families: BTreeMap<String, MetricFamily> = BTreeMap::new();
        let mut current: Option<String> = None;
        if !text.is_empty() && !text.ends_with('\n') {
            return Err("exposition does not end with a newline".to_owned());
        }
        for line in text.lines() {
            if let Some(help) = line.strip_prefix("# HELP ") {
                let (name, help) = help.split_once(' ').ok_or("HELP without text")?;
                if !is_metric_name(name) || families.contains_key(name) {
                    return Err(format!("bad or repeated HELP for {name:?}"));
                }
                families.insert(
                    name.to_owned(),
                    MetricFamily {
                        help: help.to_owned(),
                        ..MetricFamily::default()
                    },
                );
                current = Some(name.to_owned());
            } else if let Some(kind) = line.strip_prefix("# TYPE ") {
                let (name, kind) = kind.split_once(' ').ok_or("TYPE without type")?;
                if current.as_deref() != Some(name) {
                    return Err(format!("TYPE for {name} not right after its HELP"));
                }
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                    return Err(format!("bad type {kind:?} for {name}"));
                }
                let family = families.get_mut(name).ok_or("TYPE without HELP")?;
                if !family.kind.is_empty() || !family.samples.is_empty() {
                    return Err(format!("TYPE for {name} repeated or after samples"));
                }
                family.kind = kind.to_owned();
            } else if line.starts_with('#') || line.is_empty() {
                return Err(format!("unexpected line {line:?}"));
            } else {
                let Sample {
                    name,
                    labels,
                    value,
                } = parse_sample(line)?;
                let family_name = current.as_deref().ok_or("sample before any HELP")?;
                let family = families.get_mut(family_name).ok_or("no family")?;
                if family.kind.is_empty() || !belongs(&name, family_name, &family.kind) {
                    return Err(format!("sample {name} outside its family ({family_name})"));
                }
                if family
                    .samples
                    .iter()
                    .any(|s| s.name == name && s.labels == labels)
                {
                    return Err(format!("repeated series in {line:?}"));
                }
                family.samples.push(Sample {
                    name,
                    labels,
                    value,
                });
            }
        }
        for (name, family) in &families {
            if family.kind.is_empty() {
                return Err(format!("{name} has no TYPE"));
            }
            if family.kind == "histogram" {
                check_histogram(name, family)?;
            }
        }
        Ok(families)
    }

    /// Buckets ascend by `le` and are cumulative, and `+Inf` equals `_count`, per label set.
    fn check_histogram(name: &str, family: &MetricFamily) -> Result<(), String> {
        let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
        for sample in &family.samples {
            if sample.name.ends_with("_bucket") {
                let mut labels = sample.labels.clone();
                let le = labels.remove("le").ok_or("bucket without le")?;
                series
                    .entry(labels)
                    .or_default()
                    .push((parse_value(&le)?, sample.value));
            }
        }
        for (labels, buckets) in series {
            let ascending = buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1);
            let last = buckets.last().ok_or("no buckets")?;
            let count = family
                .samples
                .iter()
                .find(|s| s.name == format!("{name}_count") && s.labels == labels)
                .ok_or(format!("{name} has no _count for {labels:?}"))?;
            if !ascending || last.0 != f64::INFINITY || last.1 != count.value {
                return Err(format!("{name}{labels:?}: bad buckets {buckets:?}"));
            }
        }
        Ok(())
    }

    #[test]
    fn the_parser_rejects_what_prometheus_would() {
        let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\\\"\"} 1\n";
        let parsed = parse(good).expect("valid");
        assert_eq!(
            parsed["a_total"].value("a_total", &[("x", "1\"")]),
            Some(1.0)
        );
        for bad in [
            "a 1\n",
            "# HELP a A.\na 1\n",
            "# HELP a A.\n# TYPE a gauge\nb 1\n",
            "# HELP a A.\n# TYPE a gauge\na 1\na 2\n",
            "# HELP a A.\n# TYPE a gauge\na{1x=\"v\"} 1\n",
            "# HELP a A.\n# TYPE a gauge\na one\n",
            "# HELP a A.\n# TYPE a gauge\na 1",
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }
}
