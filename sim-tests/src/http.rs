//! A minimal HTTP/1.1 GET over turmoil's simulated TCP: one connection per request, the whole
//! body read before returning, bounded by a timeout on tokio's (simulated) clock.

use std::fmt;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::http::header::HOST;
use hyper::Request;
use hyper_util::rt::TokioIo;

/// A complete HTTP response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The headers in arrival order, names lowercased; values are decoded lossily as UTF-8.
    pub headers: Vec<(String, String)>,
    /// The whole body.
    pub body: Bytes,
}

impl HttpResponse {
    /// The first value of header `name` (compared case-insensitively), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request produced no response.
#[derive(Debug)]
pub enum HttpError {
    /// The host refused the connection (nothing listening, or the host is down).
    Refused {
        /// The host that refused.
        host: String,
    },
    /// Connecting failed for another reason (unknown host, partition, …).
    Connect {
        /// The host we tried.
        host: String,
        /// The socket error.
        source: io::Error,
    },
    /// The request could not be built (bad path or header value).
    InvalidRequest(hyper::http::Error),
    /// The connection broke before or while the response head arrived (reset, closed, bad
    /// HTTP).
    Request(hyper::Error),
    /// The connection broke while the body was being read.
    Body(hyper::Error),
    /// No complete response within the timeout.
    Timeout,
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused { host } => write!(f, "connection to {host} refused"),
            Self::Connect { host, source } => write!(f, "cannot connect to {host}: {source}"),
            Self::InvalidRequest(e) => write!(f, "invalid request: {e}"),
            Self::Request(e) => write!(f, "request failed: {e}"),
            Self::Body(e) => write!(f, "response body failed: {e}"),
            Self::Timeout => f.write_str("request timed out"),
        }
    }
}

impl std::error::Error for HttpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect { source, .. } => Some(source),
            Self::InvalidRequest(e) => Some(e),
            Self::Request(e) | Self::Body(e) => Some(e),
            Self::Refused { .. } | Self::Timeout => None,
        }
    }
}

/// `GET path_and_query` on `host:port` over a fresh `turmoil::net::TcpStream`, with a `Host`
/// header. The whole exchange (connect, head, body) must finish within `timeout`.
pub async fn get(
    host: &str,
    port: u16,
    path_and_query: &str,
    timeout: Duration,
) -> Result<HttpResponse, HttpError> {
    let (received, outcome) = get_streamed(host, port, path_and_query, timeout).await;
    outcome.map(|()| received.into_response())
}

/// What a streamed response delivered: its head, and the body up to where it ended, broke or
/// timed out.
#[derive(Debug, Default)]
pub struct Received {
    /// The status and headers, once the head arrived.
    pub head: Option<(u16, Vec<(String, String)>)>,
    /// The body bytes received so far.
    pub body: Vec<u8>,
}

impl Received {
    fn into_response(self) -> HttpResponse {
        let (status, headers) = self.head.unwrap_or_default();
        HttpResponse {
            status,
            headers,
            body: Bytes::from(self.body),
        }
    }
}

/// [`get`] for a long response (server-sent events): what arrived before the body ended, broke
/// or `timeout` passed is kept, with why it stopped (`Ok` when the server ended it).
pub async fn get_streamed(
    host: &str,
    port: u16,
    path_and_query: &str,
    timeout: Duration,
) -> (Received, Result<(), HttpError>) {
    let mut received = Received::default();
    let outcome = tokio::time::timeout(
        timeout,
        get_unbounded(host, port, path_and_query, &mut received),
    )
    .await
    .unwrap_or(Err(HttpError::Timeout));
    (received, outcome)
}

async fn get_unbounded(
    host: &str,
    port: u16,
    path_and_query: &str,
    received: &mut Received,
) -> Result<(), HttpError> {
    let request = Request::get(path_and_query)
        .header(HOST, format!("{host}:{port}"))
        .body(Empty::<Bytes>::new())
        .map_err(HttpError::InvalidRequest)?;
    let stream = turmoil::net::TcpStream::connect((host, port))
        .await
        .map_err(|source| match source.kind() {
            io::ErrorKind::ConnectionRefused => HttpError::Refused {
                host: host.to_owned(),
            },
            _ => HttpError::Connect {
                host: host.to_owned(),
                source,
            },
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(HttpError::Request)?;
    // The exchange owns the sender; the connection is driven alongside it and dropped (closing
    // the socket) as soon as the exchange is done.
    let exchange = async move {
        let response = sender
            .send_request(request)
            .await
            .map_err(HttpError::Request)?;
        let (parts, mut body) = response.into_parts();
        let headers = parts
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect();
        received.head = Some((parts.status.as_u16(), headers));
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(HttpError::Body)?;
            if let Some(data) = frame.data_ref() {
                received.body.extend_from_slice(data);
            }
        }
        Ok(())
    };
    tokio::pin!(exchange);
    tokio::pin!(conn);
    let mut conn_done = false;
    loop {
        tokio::select! {
            biased;
            result = &mut exchange => return result,
            // An ended connection (cleanly or not) surfaces through the exchange; keep
            // polling it alone.
            _ = &mut conn, if !conn_done => conn_done = true,
        }
    }
}
