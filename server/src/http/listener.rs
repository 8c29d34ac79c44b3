//! The `ampere` binary's TCP listener, with Electric's socket timeouts: what ThousandIsland's
//! `send_timeout` and `read_timeout` do in Electric (`ELECTRIC_TCP_SEND_TIMEOUT`,
//! `ELECTRIC_TCP_READ_TIMEOUT`), applied to each accepted connection's reads and writes.
//!
//! - **Send.** A write the client does not drain for `send` (its receive window stays full)
//!   fails the connection.
//! - **Read.** A connection that waits `read` for a request — after being accepted, or after
//!   the last bytes of a response were written — is closed as if the client had closed it:
//!   the HTTP keep-alive idle timeout, which behind a pooling proxy must exceed the proxy's.
//!   While a request is handled (its bytes were the last to move) hyper still reads, but only
//!   to notice a disconnect; that read is not timed, so long polls and slow snapshots are
//!   never cut, as in Electric. A request whose headers stall half-way looks to the socket
//!   like a request being handled; hyper's header-read timeout, which
//!   [`serve_connections`](super::serve_connections) sets to the same duration, cuts it, and
//!   a stalled request body is cut by [`BodyLimits`](super::BodyLimits).
//!
//! The timers live in the connection's own task: hyper polls reads and writes from one task, so
//! the read timer armed by a write wakes the task that will poll the read.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep_until, Instant, Sleep};

use crate::metrics::{Connection, Metrics};

/// `ELECTRIC_TCP_READ_TIMEOUT` and `ELECTRIC_TCP_SEND_TIMEOUT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionTimeouts {
    /// How long a connection may wait for a request.
    pub read: Duration,
    /// How long a write may wait for the client to drain it.
    pub send: Duration,
}

/// A TCP listener whose connections apply [`ConnectionTimeouts`].
#[derive(Debug)]
pub struct TimeoutListener {
    inner: TcpListener,
    timeouts: ConnectionTimeouts,
    /// Counts open connections, when metrics are on.
    metrics: Option<Metrics>,
}

impl TimeoutListener {
    /// Wraps a bound listener.
    pub fn new(inner: TcpListener, timeouts: ConnectionTimeouts) -> Self {
        Self {
            inner,
            timeouts,
            metrics: None,
        }
    }

    /// Counts the open connections in `metrics` (`ampere_http_connections`).
    #[must_use]
    pub fn with_metrics(mut self, metrics: Option<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }
}

impl axum::serve::Listener for TimeoutListener {
    type Io = TimeoutStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        let mut stream = TimeoutStream::new(stream, self.timeouts);
        stream.connection = self.metrics.as_ref().map(Metrics::connection);
        (stream, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection applying [`ConnectionTimeouts`] (module docs). Needs a tokio runtime with
/// time enabled.
#[derive(Debug)]
pub struct TimeoutStream<T> {
    inner: T,
    timeouts: ConnectionTimeouts,
    /// Whether the connection waits for a request: nothing was read since it was accepted or
    /// since the last write.
    is_awaiting_request: bool,
    /// `timeouts.read` after the connection began waiting for a request.
    read_deadline: Pin<Box<Sleep>>,
    /// Whether the last write could not proceed; `write_deadline` then runs.
    is_write_blocked: bool,
    /// `timeouts.send` after the write became blocked.
    write_deadline: Pin<Box<Sleep>>,
    /// Counted open while it lives, when metrics are on.
    connection: Option<Connection>,
}

impl<T> TimeoutStream<T> {
    /// Wraps a freshly accepted connection: it waits for its first request from now on.
    pub fn new(inner: T, timeouts: ConnectionTimeouts) -> Self {
        let now = Instant::now();
        Self {
            inner,
            timeouts,
            is_awaiting_request: true,
            read_deadline: Box::pin(sleep_until(now + timeouts.read)),
            is_write_blocked: false,
            write_deadline: Box::pin(sleep_until(now + timeouts.send)),
            connection: None,
        }
    }

    /// Tracks a write's outcome: progress starts the wait for the next request (and arms its
    /// timer in this task); no progress for `send` fails the write.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match written {
            Poll::Ready(Ok(n)) if n > 0 => {
                self.is_write_blocked = false;
                self.is_awaiting_request = true;
                let deadline = Instant::now() + self.timeouts.read;
                self.read_deadline.as_mut().reset(deadline);
                // Registers this task's waker: hyper may not poll the read again before the
                // deadline (it did, and got Pending, before writing).
                let _ = self.read_deadline.as_mut().poll(cx);
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                if !self.is_write_blocked {
                    self.is_write_blocked = true;
                    let deadline = Instant::now() + self.timeouts.send;
                    self.write_deadline.as_mut().reset(deadline);
                }
                if self.write_deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client read nothing for ELECTRIC_TCP_SEND_TIMEOUT",
                    )));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TimeoutStream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let filled = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > filled {
                    this.is_awaiting_request = false;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let is_idle = this.is_awaiting_request && !this.is_write_blocked;
                if is_idle && this.read_deadline.as_mut().poll(cx).is_ready() {
                    // Read nothing: the end of the stream, as if the client had closed.
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimeoutStream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.after_write(cx, written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::time::timeout;

    use super::*;

    const TIMEOUTS: ConnectionTimeouts = ConnectionTimeouts {
        read: Duration::from_secs(60),
        send: Duration::from_secs(30),
    };

    /// A client end and a server end wrapped as ampere wraps accepted connections.
    fn connection(buffer: usize) -> (DuplexStream, TimeoutStream<DuplexStream>) {
        let (client, server) = duplex(buffer);
        (client, TimeoutStream::new(server, TIMEOUTS))
    }

    /// Reads once from `server`, giving up after `within` (None: still waiting).
    async fn read_within(
        server: &mut TimeoutStream<DuplexStream>,
        within: Duration,
    ) -> Option<io::Result<usize>> {
        let mut buf = [0u8; 64];
        timeout(within, server.read(&mut buf)).await.ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_no_request_is_closed_after_the_read_timeout() {
        let (_client, mut server) = connection(64);
        assert!(read_within(&mut server, Duration::from_secs(59))
            .await
            .is_none());
        let read = read_within(&mut server, Duration::from_secs(2)).await;
        assert_eq!(
            read.expect("closed by now").expect("as an end of stream"),
            0
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_being_handled_is_not_timed_but_the_idle_wait_after_its_response_is() {
        let (mut client, mut server) = connection(64);
        client.write_all(b"GET /v1/shape").await.expect("request");
        let read = read_within(&mut server, Duration::from_secs(1)).await;
        assert_eq!(read.expect("request arrives").expect("read"), 13);
        // Handling it (a long poll): hyper keeps reading to notice a disconnect.
        assert!(read_within(&mut server, Duration::from_secs(600))
            .await
            .is_none());

        server
            .write_all(b"HTTP/1.1 200 OK")
            .await
            .expect("response");
        let start = Instant::now();
        let read = read_within(&mut server, Duration::from_secs(120)).await;
        assert_eq!(read.expect("closed").expect("end of stream"), 0);
        assert_eq!(start.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_after_a_response_restarts_the_wait() {
        let (mut client, mut server) = connection(64);
        server
            .write_all(b"HTTP/1.1 200 OK")
            .await
            .expect("response");
        tokio::time::sleep(Duration::from_secs(50)).await;
        client.write_all(b"GET /").await.expect("next request");
        assert_eq!(
            read_within(&mut server, Duration::from_secs(1))
                .await
                .expect("arrives")
                .expect("read"),
            5
        );
        assert!(read_within(&mut server, Duration::from_secs(600))
            .await
            .is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_the_client_does_not_drain_fails_after_the_send_timeout() {
        let (_client, mut server) = connection(16);
        let start = Instant::now();
        let written = server.write_all(&[b'x'; 1024]).await;
        let error = written.expect_err("the client never reads");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_client_that_keeps_draining_is_not_cut() {
        let (mut client, mut server) = connection(16);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let mut total = 0;
            while total < 1024 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                total += client.read(&mut buf).await.expect("read");
            }
            total
        });
        server
            .write_all(&[b'x'; 1024])
            .await
            .expect("drained slowly");
        assert_eq!(reader.await.expect("reader"), 1024);
    }
}
