//! The API's accept loop: hyper's HTTP/1 server over any [`axum::serve::Listener`] (the
//! `ampere` binary's [`TimeoutListener`](super::TimeoutListener), the simulation's turmoil
//! listener), with two bounds `axum::serve` does not give.
//!
//! - **A cap on open connections** ([`ConnectionLimits::max_connections`]). Each connection
//!   is a file descriptor; without a cap, idle connections took the last one and the next
//!   storage call failed (`EMFILE`), stopping ampere. At the cap a new connection evicts the
//!   oldest connection that is waiting for a request (idle between requests, or still sending
//!   its headers), since a client that sends its request at once is worth more than one that
//!   holds a socket and sends nothing; when every connection is handling a request (long polls
//!   included), the new one is closed at once. Either way a warning is logged (at most every
//!   10 s) and the shed connection counted (`ampere_http_connections_shed`).
//! - **A deadline for each request's headers** ([`ConnectionLimits::header_read_timeout`],
//!   hyper's `header_read_timeout`), counted from when the connection starts waiting for a
//!   request — accepted, or its last response written — so a client that trickles a header a
//!   byte at a time (slowloris) is cut like an idle one.
//!
//! hyper's read buffer stops at [`READ_BUFFER_MAX`] (hyper's default is 400 KiB): headers
//! larger than that are refused, and an idle or slow connection holds little memory.
//!
//! The same loop serves the Prometheus port ([`ServedPort::Metrics`]), with a small fixed cap
//! ([`metrics::MAX_CONNECTIONS`](crate::metrics::MAX_CONNECTIONS)) and the API's header-read
//! and idle timeouts, so that port is no unbounded side door into the descriptor budget.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use axum::Router;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout, Instant};
use tracing::{debug, warn};

use super::fd_limit::MAX_CONNECTIONS_CEILING;
use super::memory::Release;
use crate::metrics::Metrics;

/// The most hyper buffers per connection while reading: the largest request head accepted
/// (Electric's Bandit refuses a request line or a header over 10,000 bytes).
pub const READ_BUFFER_MAX: usize = 64 * 1024;

/// How long the accept loop waits for an evicted connection to close before refusing the new
/// one instead (an evicted connection closes as soon as its task runs).
const EVICTION_WAIT: Duration = Duration::from_millis(100);

/// Shed connections are logged at most this often.
const SHED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Memory is handed back to the OS after open connections fall from a peak of this many.
const TRIM_AFTER_CONNECTIONS: usize = 64;

/// The bounds of [`serve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections at most (the API: `AMPERE_MAX_CONNECTIONS`, by default derived from
    /// the fd limit, [`FdBudget`](super::FdBudget); the metrics port: a fixed
    /// [`metrics::MAX_CONNECTIONS`](crate::metrics::MAX_CONNECTIONS)).
    pub max_connections: usize,
    /// How long a connection may wait for a request's headers to be complete, from when it
    /// starts waiting for a request (the binary: `ELECTRIC_TCP_READ_TIMEOUT`); `None`: as
    /// long as it takes.
    pub header_read_timeout: Option<Duration>,
    /// Which port's connections these are, for the warning at the cap.
    pub port: ServedPort,
}

impl Default for ConnectionLimits {
    /// [`MAX_CONNECTIONS_CEILING`] connections, and no header deadline: what `axum::serve`
    /// did, and what the simulation's clients, which keep idle connections pooled, expect.
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS_CEILING,
            header_read_timeout: None,
            port: ServedPort::Api,
        }
    }
}

/// The port a [`serve`] loop accepts on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServedPort {
    /// `ELECTRIC_PORT`: the shape API.
    #[default]
    Api,
    /// `ELECTRIC_PROMETHEUS_PORT`: `/metrics` alone.
    Metrics,
}

/// Serves `router` on connections from `listener` within `limits` until `shutdown` flips (or
/// its sender is dropped): then stops accepting, lets each connection finish its request in
/// progress, and returns once all have closed.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    limits: ConnectionLimits,
    metrics: Option<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) where
    L: axum::serve::Listener,
    L::Addr: fmt::Debug,
{
    assert!(
        limits.max_connections > 0,
        "a connection cap of 0 serves nothing"
    );
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let tracker = Arc::new(Tracker::default());
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(READ_BUFFER_MAX);
    let mut shed_log = ShedLog::new(limits.max_connections, limits.port);
    loop {
        let (io, addr) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let permit = match Arc::clone(&open).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let room = make_room(&open, &tracker).await;
                let is_evicted = room.is_some();
                shed_log.record(is_evicted);
                if let Some(metrics) = &metrics {
                    metrics.connection_shed(is_evicted);
                }
                match room {
                    Some(permit) => permit,
                    None => {
                        debug!(?addr, "connection refused: every connection is busy");
                        drop(io);
                        continue;
                    }
                }
            }
        };
        let connection = tracker.register();
        tokio::spawn(serve_connection(
            builder.clone(),
            io,
            router.clone(),
            Arc::clone(&tracker),
            connection,
            permit,
            shutdown.clone(),
        ));
    }
    // Every permit back: every connection closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = open.acquire_many(all).await;
}

/// Asks the oldest connection waiting for a request to close, and waits (briefly) for its
/// permit. None: no connection is waiting for a request, or it did not close in time.
async fn make_room(open: &Arc<Semaphore>, tracker: &Tracker) -> Option<OwnedSemaphorePermit> {
    let victim = tracker.oldest_waiting()?;
    victim.evict.notify_one();
    timeout(EVICTION_WAIT, Arc::clone(open).acquire_owned())
        .await
        .ok()?
        .ok()
}

/// One connection's task: serves requests until the client or hyper closes it, it is
/// evicted while waiting for a request, or shutdown lets its request in progress finish.
async fn serve_connection<I>(
    builder: http1::Builder,
    io: I,
    router: Router,
    tracker: Arc<Tracker>,
    connection: Arc<Connection>,
    _permit: OwnedSemaphorePermit,
    mut shutdown: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let in_requests = Arc::clone(&connection);
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let handling = Handling::start(Arc::clone(&in_requests));
        let mut router = router.clone();
        async move {
            let response =
                tower_service::Service::call(&mut router, request.map(Body::new)).await?;
            Ok::<_, Infallible>(held_until_sent(response, handling))
        }
    });
    let served = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(served);
    let mut is_draining = false;
    loop {
        tokio::select! {
            result = served.as_mut() => {
                if let Err(e) = result {
                    debug!(error = %e, "HTTP connection ended with an error");
                }
                break;
            }
            () = connection.evict.notified() => {
                if connection.is_waiting_for_request() {
                    break;
                }
            }
            _ = shutdown.wait_for(|stop| *stop), if !is_draining => {
                served.as_mut().graceful_shutdown();
                is_draining = true;
            }
        }
    }
    tracker.remove(connection.id);
}

/// `response` with its body keeping `handling` alive until the body is sent or dropped: the
/// connection handles a request until its response is written out.
fn held_until_sent(response: Response, handling: Handling) -> Response {
    response.map(|body| {
        Body::new(body.map_frame(move |frame| {
            let _ = &handling;
            frame
        }))
    })
}

/// An open connection, as the accept loop sees it.
#[derive(Debug)]
struct Connection {
    /// Accept order: lower is older.
    id: u64,
    /// Requests being handled now (dispatched by hyper, response not yet sent).
    requests: AtomicUsize,
    /// Asks the connection's task to close the connection if it waits for a request.
    evict: Notify,
}

impl Connection {
    fn is_waiting_for_request(&self) -> bool {
        self.requests.load(Ordering::Acquire) == 0
    }
}

/// A request being handled on a connection, until dropped.
struct Handling(Arc<Connection>);

impl Handling {
    fn start(connection: Arc<Connection>) -> Self {
        connection.requests.fetch_add(1, Ordering::AcqRel);
        Self(connection)
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The open connections, oldest first, and memory release as they close.
#[derive(Debug)]
struct Tracker {
    next_id: AtomicU64,
    open: Mutex<BTreeMap<u64, Arc<Connection>>>,
    release: Release,
}

impl Default for Tracker {
    fn default() -> Self {
        Self {
            next_id: AtomicU64::new(0),
            open: Mutex::default(),
            release: Release::new(TRIM_AFTER_CONNECTIONS),
        }
    }
}

impl Tracker {
    fn register(&self) -> Arc<Connection> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let connection = Arc::new(Connection {
            id,
            requests: AtomicUsize::new(0),
            evict: Notify::new(),
        });
        let now = {
            let mut open = self.lock();
            open.insert(id, Arc::clone(&connection));
            open.len()
        };
        self.release.rose_to(now);
        connection
    }

    fn remove(&self, id: u64) {
        let now = {
            let mut open = self.lock();
            open.remove(&id);
            open.len()
        };
        self.release.fell_to(now);
    }

    /// The oldest connection waiting for a request.
    fn oldest_waiting(&self) -> Option<Arc<Connection>> {
        self.lock()
            .values()
            .find(|c| c.is_waiting_for_request())
            .cloned()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<Connection>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Connections shed at the cap since the last warning, warned about every
/// [`SHED_LOG_INTERVAL`] at most.
struct ShedLog {
    max_connections: usize,
    port: ServedPort,
    evicted: u64,
    refused: u64,
    last_warning: Option<Instant>,
}

impl ShedLog {
    fn new(max_connections: usize, port: ServedPort) -> Self {
        Self {
            max_connections,
            port,
            evicted: 0,
            refused: 0,
            last_warning: None,
        }
    }

    fn record(&mut self, is_evicted: bool) {
        if is_evicted {
            self.evicted += 1;
        } else {
            self.refused += 1;
        }
        let is_due = self
            .last_warning
            .is_none_or(|at| at.elapsed() >= SHED_LOG_INTERVAL);
        if is_due {
            let (max_connections, evicted, refused) =
                (self.max_connections, self.evicted, self.refused);
            match self.port {
                ServedPort::Api => warn!(
                    max_connections,
                    evicted,
                    refused,
                    "HTTP connection cap reached (AMPERE_MAX_CONNECTIONS): closed the oldest \
                     connections waiting for a request, and refused new ones while every \
                     connection was handling one"
                ),
                ServedPort::Metrics => warn!(
                    max_connections,
                    evicted,
                    refused,
                    "metrics connection cap reached (ELECTRIC_PROMETHEUS_PORT): closed the \
                     oldest connections waiting for a request, and refused new ones while \
                     every connection was handling one"
                ),
            }
            self.evicted = 0;
            self.refused = 0;
            self.last_warning = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// Serves a router whose `/slow` answers after 5 s, with a cap of 2 connections.
    async fn capped_server() -> (std::net::SocketAddr, watch::Sender<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = Router::new().route("/", get(|| async { "ok" })).route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "slow"
            }),
        );
        let limits = ConnectionLimits {
            max_connections: 2,
            header_read_timeout: Some(Duration::from_secs(30)),
            port: ServedPort::Api,
        };
        let (stop, shutdown) = watch::channel(false);
        tokio::spawn(serve(listener, router, limits, None, shutdown));
        (addr, stop)
    }

    /// Whether the server closed `stream` within `within` (reading whatever it sent).
    async fn is_closed(stream: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 256];
        loop {
            match timeout(within, stream.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }

    async fn get_root(stream: &mut TcpStream) -> String {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("request");
        let mut reply = String::new();
        let read = timeout(Duration::from_secs(5), stream.read_to_string(&mut reply)).await;
        read.expect("answered in time").expect("read");
        reply
    }

    #[tokio::test]
    async fn at_the_cap_a_new_connection_evicts_the_oldest_one_waiting_for_a_request() {
        let (addr, _stop) = capped_server().await;
        let mut oldest = TcpStream::connect(addr).await.expect("connect");
        let mut partial = TcpStream::connect(addr).await.expect("connect");
        partial
            .write_all(b"GET / HTTP/1.1\r\n")
            .await
            .expect("half a head");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut fresh = TcpStream::connect(addr).await.expect("connect");
        assert!(get_root(&mut fresh).await.starts_with("HTTP/1.1 200"));
        assert!(is_closed(&mut oldest, Duration::from_secs(2)).await);
        assert!(!is_closed(&mut partial, Duration::from_millis(200)).await);
    }

    #[tokio::test]
    async fn at_the_cap_a_new_connection_is_refused_while_every_connection_handles_a_request() {
        let (addr, _stop) = capped_server().await;
        let mut busy = Vec::new();
        for _ in 0..2 {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream
                .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .expect("request");
            busy.push(stream);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut refused = TcpStream::connect(addr).await.expect("connect");
        assert!(is_closed(&mut refused, Duration::from_secs(2)).await);
        for stream in &mut busy {
            assert!(!is_closed(stream, Duration::from_millis(100)).await);
        }
    }
}
