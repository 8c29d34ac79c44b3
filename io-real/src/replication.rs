//! A hand-rolled Postgres logical-replication connection (`replication=database`).
//!
//! Owns: the startup handshake (trust, cleartext, MD5 and SCRAM-SHA-256 authentication, the
//! latter bound to the TLS session as SCRAM-SHA-256-PLUS when the caller passes the session's
//! `tls-server-end-point` and [`ReplicationConfig::channel_binding`] allows it), the
//! replication commands ampere uses (`IDENTIFY_SYSTEM`, `CREATE_REPLICATION_SLOT`,
//! `START_REPLICATION`), plain SQL over the simple-query protocol, and the CopyBoth stream
//! (`XLogData`, primary keepalive, standby status update).
//!
//! Never: decodes pgoutput (callers get the raw `XLogData` payload), retries, reconnects or reads
//! the clock (standby status takes the client clock as an argument), or negotiates TLS: the
//! caller runs the SSLRequest exchange and handshake first (`crate::tls`, as `RealPg` does) and
//! passes the encrypted stream with its channel-binding data ([`connect_bound`]). A server
//! refusing a plaintext stream is reported as [`ReplicationError::TlsRequired`]; a login
//! without channel binding under `channel_binding=require` as
//! [`ReplicationError::ChannelBindingNotUsed`], before any password is sent.
//!
//! Asks of callers: the stream is any `AsyncRead + AsyncWrite + Unpin + Send`, so a simulation can
//! plug in its own. [`ReplicationStream::recv`] is cancel-safe; the request/response methods of
//! [`ReplicationConnection`] are not (a dropped call leaves replies unread: discard the
//! connection). Errors classify themselves with [`ReplicationError::kind`].
//!
//! Message encoding and the authentication maths come from `postgres-protocol`; backend messages
//! are decoded here because its decoder knows no CopyBothResponse and exposes error fields only
//! through `fallible-iterator`.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{
    ChannelBinding, ScramSha256, SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};
use postgres_protocol::escape::escape_literal;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{lookup_host, TcpStream};

use ampere_core::lsn::Lsn;

use crate::tls::ChannelBindingMode;

/// Display settings sent as startup parameters (SL-3), so the walsender renders pgoutput values
/// exactly as snapshot transactions do. Postgres applies unknown startup parameters as GUCs;
/// this avoids the backslash escaping that the `options` parameter would need for `ISO, DMY`.
pub const DISPLAY_SETTINGS: [(&str, &str); 5] = [
    ("DateStyle", "ISO, DMY"),
    ("TimeZone", "UTC"),
    ("IntervalStyle", "iso_8601"),
    ("extra_float_digits", "1"),
    ("bytea_output", "hex"),
];

/// Bytes reserved ahead of each socket read.
const READ_CHUNK: usize = 16 * 1024;

/// Postgres's epoch (2000-01-01 00:00 UTC) in seconds after the Unix epoch.
const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;

/// SQLSTATE `duplicate_object`: `CREATE_REPLICATION_SLOT` of a slot that exists.
const SQLSTATE_DUPLICATE_OBJECT: &str = "42710";

/// How to log in and what to ask for in the startup packet.
#[derive(Clone)]
pub struct ReplicationConfig {
    /// Role name; needs `REPLICATION` (or superuser).
    pub user: String,
    /// Used when the server asks for cleartext, MD5 or SCRAM-SHA-256; `None` fails such a request.
    pub password: Option<String>,
    /// Database of the logical slot.
    pub database: String,
    /// Shown in `pg_stat_replication` / `pg_stat_activity`.
    pub application_name: String,
    /// Extra startup parameters (GUCs), sent after [`DISPLAY_SETTINGS`] (the last value wins).
    pub options: Vec<(String, String)>,
    /// Whether SCRAM binds the login to the TLS session (`channel_binding`, libpq's meaning).
    pub channel_binding: ChannelBindingMode,
}

impl ReplicationConfig {
    /// A config with no password, application name `ampere`, no extra options and
    /// `channel_binding=prefer`.
    pub fn new(user: impl Into<String>, database: impl Into<String>) -> Self {
        Self {
            user: user.into(),
            password: None,
            database: database.into(),
            application_name: "ampere".to_owned(),
            options: Vec::new(),
            channel_binding: ChannelBindingMode::default(),
        }
    }

    fn startup_params(&self) -> Vec<(&str, &str)> {
        let mut params = vec![
            ("user", self.user.as_str()),
            ("database", self.database.as_str()),
            ("replication", "database"),
            ("application_name", self.application_name.as_str()),
            ("client_encoding", "UTF8"),
        ];
        params.extend(DISPLAY_SETTINGS);
        params.extend(self.options.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        params
    }
}

impl fmt::Debug for ReplicationConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationConfig")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .field("application_name", &self.application_name)
            .field("options", &self.options)
            .field("channel_binding", &self.channel_binding)
            .finish()
    }
}

/// Resolves `host`, opens a TCP connection (with `TCP_NODELAY`) and runs [`connect`] over it.
/// No timeout of its own: bound it with `tokio::time::timeout` (RC-3: 30 s). For tools and
/// tests: the socket keeps the OS's keepalive settings, where `RealPg` dials its own socket
/// and applies `ELECTRIC_DATABASE_TCP_*` to it ([`crate::tcp`]).
pub async fn connect_tcp(
    host: &str,
    port: u16,
    cfg: &ReplicationConfig,
) -> Result<ReplicationConnection<TcpStream>, ReplicationError> {
    let lookup_failed = |source| ReplicationError::HostLookup {
        host: host.to_owned(),
        source,
    };
    let addrs: Vec<SocketAddr> = lookup_host((host, port))
        .await
        .map_err(lookup_failed)?
        .collect();
    if addrs.is_empty() {
        return Err(lookup_failed(io::ErrorKind::NotFound.into()));
    }
    let stream = TcpStream::connect(&addrs[..]).await?;
    stream.set_nodelay(true)?;
    connect(stream, cfg).await
}

/// Runs the startup handshake over `stream`, which offers no channel binding (plaintext, or TLS
/// whose binding data the caller does not pass), and waits for the first ReadyForQuery.
pub async fn connect<S>(
    stream: S,
    cfg: &ReplicationConfig,
) -> Result<ReplicationConnection<S>, ReplicationError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    connect_bound(stream, cfg, None).await
}

/// [`connect`] over a TLS stream whose `tls-server-end-point` (RFC 5929) is `end_point`, to
/// which SCRAM binds the login as [`ReplicationConfig::channel_binding`] says (`None`: the
/// stream offers no binding).
pub async fn connect_bound<S>(
    stream: S,
    cfg: &ReplicationConfig,
    end_point: Option<Vec<u8>>,
) -> Result<ReplicationConnection<S>, ReplicationError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut wire = Wire::new(stream);
    frontend::startup_message(cfg.startup_params(), &mut wire.write_buf)
        .map_err(ReplicationError::Encode)?;
    wire.flush().await?;
    authenticate(&mut wire, cfg, end_point).await?;
    let mut conn = ReplicationConnection {
        wire,
        backend_pid: 0,
        parameters: BTreeMap::new(),
    };
    conn.await_ready().await?;
    Ok(conn)
}

/// A replication connection in command mode, ready for a query.
pub struct ReplicationConnection<S> {
    wire: Wire<S>,
    backend_pid: i32,
    parameters: BTreeMap<String, String>,
}

impl<S> ReplicationConnection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// The walsender's process id (BackendKeyData), as in `pg_stat_replication.pid`.
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// A run-time parameter the server reported (ParameterStatus), e.g. `server_version`.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// `server_version` as `server_version_num` would give it (`15.4` → `150004`), if parseable.
    pub fn server_version_num(&self) -> Option<u32> {
        parse_server_version_num(self.parameter("server_version")?)
    }

    /// Runs `sql` with the simple-query protocol and returns every data row as text (`None` for
    /// NULL). An ErrorResponse becomes [`ReplicationError::Server`] after the server is ready
    /// again, so the connection stays usable. Not cancel-safe.
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, ReplicationError> {
        frontend::query(sql, &mut self.wire.write_buf).map_err(ReplicationError::Encode)?;
        self.wire.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let frame = self.wire.read_frame().await?;
            match frame.tag {
                b'T' | b'C' | b'I' => {}
                b'D' => rows.push(parse_data_row(frame.body)?),
                b'E' => {
                    // the first error aborts the query string; later ones cannot occur
                    error = error.or(Some(parse_error_fields(frame.body)?));
                }
                b'N' => log_notice(frame.body),
                b'S' => self.record_parameter(frame.body)?,
                b'Z' => break,
                tag => return Err(ReplicationError::unexpected(tag, "simple query")),
            }
        }
        match error {
            Some(e) => Err(ReplicationError::Server(Box::new(e))),
            None => Ok(rows),
        }
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity, ReplicationError> {
        const CMD: &str = "IDENTIFY_SYSTEM";
        let rows = self.simple_query(CMD).await?;
        let row = single_row(rows, CMD, 4)?;
        Ok(SystemIdentity {
            system_id: required(&row, 0, CMD, "systemid is NULL")?.to_owned(),
            timeline: required(&row, 1, CMD, "timeline is NULL")?
                .parse()
                .map_err(|_| ReplicationError::unexpected_result(CMD, "timeline not a u32"))?,
            xlogpos: parse_lsn(
                required(&row, 2, CMD, "xlogpos is NULL")?,
                CMD,
                "bad xlogpos",
            )?,
            dbname: row[3].clone(),
        })
    }

    /// `CREATE_REPLICATION_SLOT "<slot>" [TEMPORARY] LOGICAL pgoutput NOEXPORT_SNAPSHOT` (SL-2).
    /// An existing slot (SQLSTATE 42710) is [`CreateSlotOutcome::AlreadyExists`]; read its resume
    /// point with [`Self::slot_info`].
    pub async fn create_logical_slot(
        &mut self,
        slot: &str,
        persistence: SlotPersistence,
    ) -> Result<CreateSlotOutcome, ReplicationError> {
        const CMD: &str = "CREATE_REPLICATION_SLOT";
        let temporary = match persistence {
            SlotPersistence::Persistent => "",
            SlotPersistence::Temporary => " TEMPORARY",
        };
        let sql = format!(
            "CREATE_REPLICATION_SLOT {}{temporary} LOGICAL pgoutput NOEXPORT_SNAPSHOT",
            quote_identifier(slot)
        );
        let rows = match self.simple_query(&sql).await {
            Ok(rows) => rows,
            Err(e) if e.code() == Some(SQLSTATE_DUPLICATE_OBJECT) => {
                return Ok(CreateSlotOutcome::AlreadyExists)
            }
            Err(e) => return Err(e),
        };
        let row = single_row(rows, CMD, 4)?;
        Ok(CreateSlotOutcome::Created(CreatedSlot {
            slot_name: required(&row, 0, CMD, "slot_name is NULL")?.to_owned(),
            consistent_point: parse_lsn(
                required(&row, 1, CMD, "consistent_point is NULL")?,
                CMD,
                "bad consistent_point",
            )?,
        }))
    }

    /// The slot's row in `pg_replication_slots` (SL-2), or `None` when there is no such slot.
    pub async fn slot_info(&mut self, slot: &str) -> Result<Option<SlotInfo>, ReplicationError> {
        const CMD: &str = "SELECT FROM pg_replication_slots";
        let sql = format!(
            "SELECT confirmed_flush_lsn, database, active, wal_status \
             FROM pg_replication_slots WHERE slot_name = {}",
            escape_literal(slot)
        );
        let rows = self.simple_query(&sql).await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let row = single_row(rows, CMD, 4)?;
        let confirmed_flush_lsn = match &row[0] {
            Some(text) => Some(parse_lsn(text, CMD, "bad confirmed_flush_lsn")?),
            None => None,
        };
        let is_active = match required(&row, 2, CMD, "active is NULL")? {
            "t" => true,
            "f" => false,
            _ => {
                return Err(ReplicationError::unexpected_result(
                    CMD,
                    "active not a bool",
                ))
            }
        };
        Ok(Some(SlotInfo {
            confirmed_flush_lsn,
            database: row[1].clone(),
            is_active,
            wal_status: row[3].clone(),
        }))
    }

    /// `START_REPLICATION SLOT "<slot>" LOGICAL <start> (proto_version '<v>', publication_names
    /// '"<pub>",…')` (SL-4); `start = Lsn::ZERO` resumes at the slot's `confirmed_flush_lsn`.
    /// Consumes the connection: on an error (55006 slot active, 42704 no slot…) drop it and
    /// reconnect.
    pub async fn start_replication(
        mut self,
        slot: &str,
        start: Lsn,
        publication_names: &[&str],
        proto_version: u32,
    ) -> Result<ReplicationStream<S>, ReplicationError> {
        let publications: Vec<String> = publication_names
            .iter()
            .map(|p| quote_identifier(p))
            .collect();
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {start} (proto_version '{proto_version}', \
             publication_names {})",
            quote_identifier(slot),
            quote_command_literal(&publications.join(","))
        );
        frontend::query(&sql, &mut self.wire.write_buf).map_err(ReplicationError::Encode)?;
        self.wire.flush().await?;
        loop {
            let frame = self.wire.read_frame().await?;
            match frame.tag {
                // CopyBothResponse: streaming has begun; any XLogData already read stays buffered
                b'W' => break,
                b'E' => {
                    return Err(ReplicationError::Server(Box::new(parse_error_fields(
                        frame.body,
                    )?)))
                }
                b'N' => log_notice(frame.body),
                b'S' => self.record_parameter(frame.body)?,
                tag => return Err(ReplicationError::unexpected(tag, "START_REPLICATION")),
            }
        }
        Ok(ReplicationStream {
            wire: self.wire,
            backend_pid: self.backend_pid,
        })
    }

    /// Sends Terminate and closes the stream.
    pub async fn close(mut self) -> Result<(), ReplicationError> {
        self.wire.terminate().await
    }

    /// Reads ParameterStatus and BackendKeyData until ReadyForQuery ends the startup.
    async fn await_ready(&mut self) -> Result<(), ReplicationError> {
        loop {
            let frame = self.wire.read_frame().await?;
            match frame.tag {
                b'S' => self.record_parameter(frame.body)?,
                b'K' => {
                    let mut body = Reader::new(frame.body, "BackendKeyData");
                    self.backend_pid = body.i32()?;
                }
                b'N' => log_notice(frame.body),
                b'E' => return Err(startup_error(parse_error_fields(frame.body)?)),
                b'Z' => return Ok(()),
                tag => return Err(ReplicationError::unexpected(tag, "startup")),
            }
        }
    }

    fn record_parameter(&mut self, body: Bytes) -> Result<(), ReplicationError> {
        let mut body = Reader::new(body, "ParameterStatus");
        let name = body.cstr()?;
        let value = body.cstr()?;
        self.parameters.insert(name, value);
        Ok(())
    }
}

/// The walsender in CopyBoth mode after `START_REPLICATION`.
pub struct ReplicationStream<S> {
    wire: Wire<S>,
    backend_pid: i32,
}

impl<S> ReplicationStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// The walsender's process id, as in `pg_stat_replication.pid`.
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// The next `XLogData` or primary keepalive.
    ///
    /// Cancel-safe: the only await is a socket read into an internal buffer, and a message is
    /// parsed and returned only once complete, with no await after it leaves the buffer. A `recv`
    /// dropped mid-way (a losing `tokio::select!` arm) loses nothing; the next call continues.
    ///
    /// CopyDone, CommandComplete (a server shutting down), an ErrorResponse and EOF end the
    /// stream as errors; notices are skipped.
    pub async fn recv(&mut self) -> Result<ReplicationMessage, ReplicationError> {
        loop {
            let frame = self.wire.read_frame().await?;
            match frame.tag {
                b'd' => return parse_copy_data(frame.body),
                b'c' => return Err(ReplicationError::CopyDone),
                // The walsender's last words at a clean shutdown (`WalSndDone`): once the
                // client has confirmed everything it sent, it ends the COPY with
                // CommandComplete and exits, without CopyDone.
                b'C' => return Err(ReplicationError::ServerShuttingDown),
                b'E' => {
                    return Err(ReplicationError::Server(Box::new(parse_error_fields(
                        frame.body,
                    )?)))
                }
                b'N' => log_notice(frame.body),
                b'S' => {}
                tag => return Err(ReplicationError::unexpected(tag, "replication stream")),
            }
        }
    }

    /// Sends a standby status update (`'r'` in CopyData; RP-2).
    ///
    /// Dropping this future mid-write corrupts nothing: the unsent rest stays buffered and goes
    /// out first on the next call (which also sends its own update).
    pub async fn send_standby_status(
        &mut self,
        status: StandbyStatus,
    ) -> Result<(), ReplicationError> {
        let mut msg = [0_u8; 34];
        msg[0] = b'r';
        msg[1..9].copy_from_slice(&status.write.as_u64().to_be_bytes());
        msg[9..17].copy_from_slice(&status.flush.as_u64().to_be_bytes());
        msg[17..25].copy_from_slice(&status.apply.as_u64().to_be_bytes());
        msg[25..33].copy_from_slice(&status.client_clock_micros.to_be_bytes());
        msg[33] = u8::from(status.reply_requested);
        frontend::CopyData::new(&msg[..])
            .map_err(ReplicationError::Encode)?
            .write(&mut self.wire.write_buf);
        self.wire.flush().await
    }

    /// Sends Terminate, which the walsender honours even while streaming, and closes the
    /// stream (§1.16 step 3). Send the final standby status first.
    pub async fn close(mut self) -> Result<(), ReplicationError> {
        self.wire.terminate().await
    }
}

/// The result of `IDENTIFY_SYSTEM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    /// The cluster's system identifier: a `u64` as decimal text.
    pub system_id: String,
    /// The current timeline.
    pub timeline: u32,
    /// The current WAL flush position.
    pub xlogpos: Lsn,
    /// The connected database (`replication=database`).
    pub dbname: Option<String>,
}

/// Whether `CREATE_REPLICATION_SLOT` makes a slot that survives the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotPersistence {
    /// A normal slot.
    Persistent,
    /// `TEMPORARY`: dropped when the connection ends.
    Temporary,
}

/// What `CREATE_REPLICATION_SLOT` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateSlotOutcome {
    /// A new slot: its history starts at `consistent_point`.
    Created(CreatedSlot),
    /// SQLSTATE 42710: the slot exists; its resume point is in [`SlotInfo`].
    AlreadyExists,
}

/// A slot just created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    /// The slot's name as Postgres reports it.
    pub slot_name: String,
    /// The first position the slot can stream; the initial flushed position.
    pub consistent_point: Lsn,
}

/// A slot's row in `pg_replication_slots`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// Where `START_REPLICATION … 0/0` resumes; `None` for a physical slot.
    pub confirmed_flush_lsn: Option<Lsn>,
    /// The slot's database; `None` for a physical slot.
    pub database: Option<String>,
    /// Whether a walsender is streaming from it now.
    pub is_active: bool,
    /// `reserved`, `extended`, `unreserved` or `lost` (invalidated); `None` if never reserved.
    pub wal_status: Option<String>,
}

impl SlotInfo {
    /// `wal_status = 'lost'`: the slot is invalidated and cannot stream (SL-2, CT-1).
    pub fn is_lost(&self) -> bool {
        self.wal_status.as_deref() == Some("lost")
    }
}

/// A message of the replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// `'w'`: WAL data; `data` is one pgoutput message.
    XLogData {
        /// Start of the WAL this message covers.
        wal_start: Lsn,
        /// The server's WAL end when it sent this message.
        wal_end: Lsn,
        /// Server clock, µs since 2000-01-01 00:00 UTC.
        server_clock_micros: i64,
        /// The pgoutput message.
        data: Bytes,
    },
    /// `'k'`: primary keepalive.
    PrimaryKeepalive {
        /// The server's WAL end.
        wal_end: Lsn,
        /// Server clock, µs since 2000-01-01 00:00 UTC.
        server_clock_micros: i64,
        /// The server wants a standby status update now, or it disconnects at
        /// `wal_sender_timeout`.
        reply_requested: bool,
    },
}

/// A standby status update (`'r'`). RP-2: `write = received + 1`, `flush = apply = durable + 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandbyStatus {
    /// Last WAL position received (+1 rule).
    pub write: Lsn,
    /// Last WAL position durable (+1 rule); becomes the slot's `confirmed_flush_lsn`.
    pub flush: Lsn,
    /// Last WAL position applied (+1 rule).
    pub apply: Lsn,
    /// Client clock, µs since 2000-01-01 00:00 UTC; see [`pg_clock_micros`].
    pub client_clock_micros: i64,
    /// Ask the server for an immediate keepalive (ampere sends `false`).
    pub reply_requested: bool,
}

/// `time` as µs since 2000-01-01 00:00 UTC, the replication protocol's clock; saturates.
pub fn pg_clock_micros(time: SystemTime) -> i64 {
    let pg_epoch = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS);
    match time.duration_since(pg_epoch) {
        Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_micros()).map_or(i64::MIN, |m| -m),
    }
}

/// An ErrorResponse's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// Non-localized severity (`ERROR`, `FATAL`, `PANIC`).
    pub severity: String,
    /// SQLSTATE, e.g. `55006`.
    pub code: String,
    /// Primary message.
    pub message: String,
    /// Optional detail.
    pub detail: Option<String>,
    /// Optional hint.
    pub hint: Option<String>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, " (detail: {detail})")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

/// How a caller should react to a [`ReplicationError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicationErrorKind {
    /// Reconnecting later may succeed.
    Transient,
    /// A configuration problem: retrying the same way cannot succeed.
    Fatal,
}

/// Why a replication connection or command failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// Reading or writing the stream failed.
    #[error("replication connection i/o failed")]
    Io(#[from] io::Error),
    /// `connect_tcp` could not resolve the host.
    #[error("cannot resolve host {host:?}")]
    HostLookup {
        /// The host name.
        host: String,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },
    /// The server closed the connection (EOF).
    #[error("the server closed the replication connection")]
    Closed,
    /// A frontend message could not be encoded (a NUL byte in a parameter or query).
    #[error("cannot encode a message for the server")]
    Encode(#[source] io::Error),
    /// The server rejected the login (SQLSTATE class 28).
    #[error("authentication failed: {0}")]
    Auth(Box<ServerError>),
    /// The server asked for a password and the config has none.
    #[error("the server requires a password for {user:?} and none is configured")]
    PasswordMissing {
        /// The role that tried to log in.
        user: String,
    },
    /// The server asked for an authentication method this client does not speak.
    #[error("unsupported authentication method {method}")]
    AuthMethodUnsupported {
        /// The method's name (or `AuthenticationRequest` code).
        method: String,
    },
    /// The SCRAM-SHA-256 exchange failed on the client side (bad server proof or message).
    #[error("SCRAM-SHA-256 exchange failed")]
    Scram(#[source] io::Error),
    /// `pg_hba.conf` only admits encrypted connections, and the stream is plaintext.
    #[error("the server accepts only SSL connections here ({0}): use sslmode=require")]
    TlsRequired(Box<ServerError>),
    /// `channel_binding=require`, and the server would authenticate without it; no password
    /// was sent.
    #[error(
        "the server would authenticate without channel binding ({why}), which \
         channel_binding=require refuses"
    )]
    ChannelBindingNotUsed {
        /// What the server did instead.
        why: &'static str,
    },
    /// An ErrorResponse after login. (Boxed, like the other server errors, to keep results
    /// small.)
    #[error("server error: {0}")]
    Server(Box<ServerError>),
    /// The server ended the replication stream with CopyDone.
    #[error("the server ended the replication stream (CopyDone)")]
    CopyDone,
    /// The walsender ended the stream because Postgres is shutting down (smart or fast
    /// shutdown, after everything sent was confirmed).
    #[error("the server is shutting down and ended the replication stream")]
    ServerShuttingDown,
    /// A message the protocol does not allow at this point.
    #[error("unexpected message {tag:?} during {during}")]
    UnexpectedMessage {
        /// The backend message type.
        tag: char,
        /// The protocol phase.
        during: &'static str,
    },
    /// A message too short or otherwise not decodable.
    #[error("malformed {message} message")]
    Malformed {
        /// The message being decoded.
        message: &'static str,
    },
    /// A command returned rows of an unexpected shape.
    #[error("unexpected result from {command}: {what}")]
    UnexpectedResult {
        /// The command.
        command: &'static str,
        /// What was wrong.
        what: &'static str,
    },
}

impl ReplicationError {
    /// Fatal for configuration problems (RC-1: authentication, TLS required, unknown host,
    /// missing `REPLICATION` privilege 42501, unknown database 3D000, `wal_level` or
    /// `max_replication_slots` too low, a NUL byte in a name);
    /// Transient otherwise, including slot invalidated (55000), slot active (55006) and admin
    /// shutdown (57P01), which callers distinguish by [`Self::code`].
    pub fn kind(&self) -> ReplicationErrorKind {
        match self {
            Self::Auth(_)
            | Self::HostLookup { .. }
            | Self::Encode(_)
            | Self::PasswordMissing { .. }
            | Self::AuthMethodUnsupported { .. }
            | Self::Scram(_)
            | Self::TlsRequired(_)
            | Self::ChannelBindingNotUsed { .. } => ReplicationErrorKind::Fatal,
            Self::Server(e) if is_configuration_error(e) => ReplicationErrorKind::Fatal,
            // A protocol violation may be a proxy or a bug: backoff and retry shows up in logs.
            Self::Io(_)
            | Self::Closed
            | Self::Server(_)
            | Self::CopyDone
            | Self::ServerShuttingDown
            | Self::UnexpectedMessage { .. }
            | Self::Malformed { .. }
            | Self::UnexpectedResult { .. } => ReplicationErrorKind::Transient,
        }
    }

    /// The SQLSTATE of a server error.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Auth(e) | Self::TlsRequired(e) | Self::Server(e) => Some(&e.code),
            _ => None,
        }
    }

    /// The ErrorResponse behind this error, if the server sent one.
    pub fn server_error(&self) -> Option<&ServerError> {
        match self {
            Self::Auth(e) | Self::TlsRequired(e) | Self::Server(e) => Some(e.as_ref()),
            _ => None,
        }
    }

    fn unexpected(tag: u8, during: &'static str) -> Self {
        Self::UnexpectedMessage {
            tag: char::from(tag),
            during,
        }
    }

    fn unexpected_result(command: &'static str, what: &'static str) -> Self {
        Self::UnexpectedResult { command, what }
    }
}

// Small enough to return by value everywhere (clippy's `result_large_err` is 128 bytes, and
// callers wrap it in their own errors).
const _: () = assert!(size_of::<ReplicationError>() <= 48);

fn is_configuration_error(e: &ServerError) -> bool {
    match e.code.as_str() {
        // insufficient_privilege (no REPLICATION), invalid_catalog_name (no such database)
        "42501" | "3D000" => true,
        // object_not_in_prerequisite_state also means "slot invalidated": only the settings
        // messages ("logical decoding requires wal_level >= logical", "replication slots can only
        // be used if max_replication_slots > 0") are configuration
        "55000" => e.message.contains("wal_level") || e.message.contains("max_replication_slots"),
        code => code.starts_with("28"),
    }
}

/// Class 28 during startup is a rejected login; one naming missing encryption asks for TLS.
fn startup_error(e: ServerError) -> ReplicationError {
    let e = Box::new(e);
    if crate::tls::is_plaintext_refused(&e.code, &e.message) {
        ReplicationError::TlsRequired(e)
    } else if e.code.starts_with("28") {
        ReplicationError::Auth(e)
    } else {
        ReplicationError::Server(e)
    }
}

/// Answers authentication requests until AuthenticationOk. Under `channel_binding=require`
/// only SCRAM-SHA-256-PLUS may log in: anything else fails before a password goes out (libpq).
async fn authenticate<S>(
    wire: &mut Wire<S>,
    cfg: &ReplicationConfig,
    end_point: Option<Vec<u8>>,
) -> Result<(), ReplicationError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let must_bind = cfg.channel_binding == ChannelBindingMode::Require;
    let unbound = |why| ReplicationError::ChannelBindingNotUsed { why };
    loop {
        let frame = wire.read_frame().await?;
        match frame.tag {
            b'R' => {}
            b'E' => return Err(startup_error(parse_error_fields(frame.body)?)),
            b'N' => {
                log_notice(frame.body);
                continue;
            }
            tag => return Err(ReplicationError::unexpected(tag, "authentication")),
        }
        let mut body = Reader::new(frame.body, "Authentication");
        let password = || {
            let missing = || ReplicationError::PasswordMissing {
                user: cfg.user.clone(),
            };
            cfg.password
                .as_deref()
                .map(str::as_bytes)
                .ok_or_else(missing)
        };
        match body.i32()? {
            0 if must_bind => return Err(unbound("it let the role in without a password")),
            0 => return Ok(()),
            3 if must_bind => return Err(unbound("it asked for a cleartext password")),
            3 => frontend::password_message(password()?, &mut wire.write_buf)
                .map_err(ReplicationError::Encode)?,
            5 if must_bind => return Err(unbound("it asked for an MD5 password")),
            5 => {
                let salt = body.array::<4>()?;
                let hash = md5_hash(cfg.user.as_bytes(), password()?, salt);
                frontend::password_message(hash.as_bytes(), &mut wire.write_buf)
                    .map_err(ReplicationError::Encode)?;
            }
            10 => {
                let (mechanism, binding) = scram_mechanism(&body.rest(), cfg, end_point)?;
                return sasl_exchange(wire, mechanism, binding, password()?).await;
            }
            code => {
                return Err(ReplicationError::AuthMethodUnsupported {
                    method: auth_method_name(code),
                })
            }
        }
        wire.flush().await?;
    }
}

/// The SASL mechanism and channel binding to use among the server's `mechanisms`, as libpq
/// picks them: SCRAM-SHA-256-PLUS when offered and there is binding data (unless `disable`),
/// else SCRAM-SHA-256, telling the server whether the client could have bound ('y': a server
/// that offers no -PLUS over TLS may be a man in the middle who stripped it, which it then
/// detects; 'n': no binding data). `require` refuses all but -PLUS.
fn scram_mechanism(
    mechanisms: &[u8],
    cfg: &ReplicationConfig,
    end_point: Option<Vec<u8>>,
) -> Result<(&'static str, ChannelBinding), ReplicationError> {
    let offered = |name: &str| mechanisms.split(|b| *b == 0).any(|m| m == name.as_bytes());
    let end_point = end_point.filter(|_| cfg.channel_binding != ChannelBindingMode::Disable);
    let chosen = match end_point {
        Some(data) if offered(SCRAM_SHA_256_PLUS) => {
            return Ok((
                SCRAM_SHA_256_PLUS,
                ChannelBinding::tls_server_end_point(data),
            ))
        }
        Some(_) if offered(SCRAM_SHA_256) => (SCRAM_SHA_256, ChannelBinding::unrequested()),
        None if offered(SCRAM_SHA_256) => (SCRAM_SHA_256, ChannelBinding::unsupported()),
        _ => {
            let list = String::from_utf8_lossy(mechanisms).replace('\0', " ");
            return Err(ReplicationError::AuthMethodUnsupported {
                method: list.trim().to_owned(),
            });
        }
    };
    if cfg.channel_binding == ChannelBindingMode::Require {
        return Err(ReplicationError::ChannelBindingNotUsed {
            why: "it did not offer SCRAM-SHA-256-PLUS, which needs a TLS connection",
        });
    }
    Ok(chosen)
}

/// SCRAM-SHA-256(-PLUS): AuthenticationSASL → SASLContinue → SASLFinal → Ok.
async fn sasl_exchange<S>(
    wire: &mut Wire<S>,
    mechanism: &str,
    binding: ChannelBinding,
    password: &[u8],
) -> Result<(), ReplicationError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut scram = ScramSha256::new(password, binding);
    frontend::sasl_initial_response(mechanism, scram.message(), &mut wire.write_buf)
        .map_err(ReplicationError::Encode)?;
    wire.flush().await?;
    let data = expect_auth(wire, 11).await?;
    scram.update(&data).map_err(ReplicationError::Scram)?;
    frontend::sasl_response(scram.message(), &mut wire.write_buf)
        .map_err(ReplicationError::Encode)?;
    wire.flush().await?;
    let data = expect_auth(wire, 12).await?;
    scram.finish(&data).map_err(ReplicationError::Scram)?;
    expect_auth(wire, 0).await?;
    Ok(())
}

/// Reads the next authentication request, which must carry `code`; returns its payload.
async fn expect_auth<S>(wire: &mut Wire<S>, code: i32) -> Result<Bytes, ReplicationError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    loop {
        let frame = wire.read_frame().await?;
        match frame.tag {
            b'R' => {
                let mut body = Reader::new(frame.body, "Authentication");
                if body.i32()? != code {
                    return Err(ReplicationError::unexpected(b'R', "SCRAM-SHA-256 exchange"));
                }
                return Ok(body.rest());
            }
            b'E' => return Err(startup_error(parse_error_fields(frame.body)?)),
            b'N' => log_notice(frame.body),
            tag => return Err(ReplicationError::unexpected(tag, "SCRAM-SHA-256 exchange")),
        }
    }
}

fn auth_method_name(code: i32) -> String {
    match code {
        2 => "Kerberos V5".to_owned(),
        6 => "SCM credentials".to_owned(),
        7 | 8 => "GSSAPI".to_owned(),
        9 => "SSPI".to_owned(),
        code => format!("AuthenticationRequest {code}"),
    }
}

/// The byte stream with its read and write buffers.
struct Wire<S> {
    stream: S,
    read_buf: BytesMut,
    write_buf: BytesMut,
}

/// One backend message: type byte and body (length word removed).
struct Frame {
    tag: u8,
    body: Bytes,
}

impl<S> Wire<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    fn new(stream: S) -> Self {
        Self {
            stream,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            write_buf: BytesMut::with_capacity(1024),
        }
    }

    /// Cancel-safe: `read_buf` either appends bytes or leaves the buffer unchanged, and a frame
    /// leaves the buffer only when complete, after the last await.
    async fn read_frame(&mut self) -> Result<Frame, ReplicationError> {
        loop {
            if let Some(frame) = split_frame(&mut self.read_buf)? {
                return Ok(frame);
            }
            self.read_buf.reserve(READ_CHUNK);
            if self.stream.read_buf(&mut self.read_buf).await? == 0 {
                return Err(ReplicationError::Closed);
            }
        }
    }

    /// Writes out `write_buf`; bytes leave the buffer only once written, so a dropped call
    /// resumes where it stopped.
    async fn flush(&mut self) -> Result<(), ReplicationError> {
        while !self.write_buf.is_empty() {
            if self.stream.write_buf(&mut self.write_buf).await? == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero).into());
            }
        }
        self.stream.flush().await?;
        Ok(())
    }

    async fn terminate(&mut self) -> Result<(), ReplicationError> {
        frontend::terminate(&mut self.write_buf);
        self.flush().await?;
        self.stream.shutdown().await?;
        Ok(())
    }
}

/// Splits one complete backend message off `buf`, or reserves room for the rest of it.
fn split_frame(buf: &mut BytesMut) -> Result<Option<Frame>, ReplicationError> {
    let Some(header) = buf.get(..5) else {
        return Ok(None);
    };
    let tag = header[0];
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    // the length counts itself; Int32 on the wire, so above i32::MAX is garbage
    if !(4..=i32::MAX as u32).contains(&len) {
        return Err(ReplicationError::Malformed {
            message: "backend message header",
        });
    }
    let total = len as usize + 1;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let mut body = buf.split_to(total).freeze();
    body.advance(5);
    Ok(Some(Frame { tag, body }))
}

/// A CopyData payload of the replication stream.
fn parse_copy_data(payload: Bytes) -> Result<ReplicationMessage, ReplicationError> {
    let mut body = Reader::new(payload, "replication CopyData");
    match body.u8()? {
        b'w' => Ok(ReplicationMessage::XLogData {
            wal_start: Lsn(body.u64()?),
            wal_end: Lsn(body.u64()?),
            server_clock_micros: body.i64()?,
            data: body.rest(),
        }),
        b'k' => Ok(ReplicationMessage::PrimaryKeepalive {
            wal_end: Lsn(body.u64()?),
            server_clock_micros: body.i64()?,
            reply_requested: body.u8()? != 0,
        }),
        _ => Err(ReplicationError::Malformed {
            message: "replication CopyData",
        }),
    }
}

fn parse_data_row(body: Bytes) -> Result<Vec<Option<String>>, ReplicationError> {
    let mut body = Reader::new(body, "DataRow");
    let count = body.i16()?;
    let mut row = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for _ in 0..count {
        let len = body.i32()?;
        let value = match usize::try_from(len) {
            Ok(len) => Some(body.utf8(len)?),
            Err(_) => None, // -1: NULL
        };
        row.push(value);
    }
    Ok(row)
}

fn parse_error_fields(body: Bytes) -> Result<ServerError, ReplicationError> {
    let mut body = Reader::new(body, "ErrorResponse");
    let mut fields = BTreeMap::new();
    loop {
        let field = body.u8()?;
        if field == 0 {
            break;
        }
        fields.insert(field, body.cstr()?);
    }
    let mut take = |field: u8| fields.remove(&field);
    Ok(ServerError {
        // 'V' (non-localized) exists since 9.6; 'S' may be translated
        severity: take(b'V').or_else(|| take(b'S')).unwrap_or_default(),
        code: take(b'C').unwrap_or_default(),
        message: take(b'M').unwrap_or_default(),
        detail: take(b'D'),
        hint: take(b'H'),
    })
}

fn log_notice(body: Bytes) {
    match parse_error_fields(body) {
        Ok(notice) => tracing::debug!(%notice, "replication connection notice"),
        Err(e) => tracing::debug!(error = %e, "undecodable notice"),
    }
}

/// Bounds-checked big-endian reads over a message body.
struct Reader {
    buf: Bytes,
    message: &'static str,
}

impl Reader {
    fn new(buf: Bytes, message: &'static str) -> Self {
        Self { buf, message }
    }

    fn malformed(&self) -> ReplicationError {
        ReplicationError::Malformed {
            message: self.message,
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ReplicationError> {
        let mut out = [0_u8; N];
        if self.buf.len() < N {
            return Err(self.malformed());
        }
        self.buf.copy_to_slice(&mut out);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, ReplicationError> {
        Ok(self.array::<1>()?[0])
    }

    fn i16(&mut self) -> Result<i16, ReplicationError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32, ReplicationError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, ReplicationError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, ReplicationError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    fn utf8(&mut self, len: usize) -> Result<String, ReplicationError> {
        if self.buf.len() < len {
            return Err(self.malformed());
        }
        let bytes = self.buf.split_to(len);
        String::from_utf8(bytes.to_vec()).map_err(|_| self.malformed())
    }

    fn cstr(&mut self) -> Result<String, ReplicationError> {
        let end = self
            .buf
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| self.malformed())?;
        let text = self.utf8(end)?;
        self.buf.advance(1);
        Ok(text)
    }

    fn rest(self) -> Bytes {
        self.buf
    }
}

fn single_row(
    mut rows: Vec<Vec<Option<String>>>,
    command: &'static str,
    columns: usize,
) -> Result<Vec<Option<String>>, ReplicationError> {
    if rows.len() != 1 {
        return Err(ReplicationError::unexpected_result(
            command,
            "expected exactly one row",
        ));
    }
    let row = rows.remove(0);
    if row.len() != columns {
        return Err(ReplicationError::unexpected_result(
            command,
            "unexpected column count",
        ));
    }
    Ok(row)
}

fn required<'a>(
    row: &'a [Option<String>],
    column: usize,
    command: &'static str,
    what: &'static str,
) -> Result<&'a str, ReplicationError> {
    row.get(column)
        .and_then(Option::as_deref)
        .ok_or(ReplicationError::UnexpectedResult { command, what })
}

fn parse_lsn(
    text: &str,
    command: &'static str,
    what: &'static str,
) -> Result<Lsn, ReplicationError> {
    text.parse()
        .map_err(|_| ReplicationError::UnexpectedResult { command, what })
}

/// `"name"` with embedded quotes doubled, for SQL and replication commands alike.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A string literal for the replication command grammar, which knows `''` but no backslash
/// escapes and no `E'…'` (so not `escape_literal`).
fn quote_command_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `15.4 (Debian 15.4-1)` → 150004, `9.6.24` → 90624, `16beta1` → 160000.
fn parse_server_version_num(version: &str) -> Option<u32> {
    let mut parts = version.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    if major >= 10 {
        return Some(major * 10_000 + minor);
    }
    let patch: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    Some(major * 10_000 + minor * 100 + patch)
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::duplex;

    fn copy_data_frame(payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        frontend::CopyData::new(payload)
            .expect("small payload")
            .write(&mut out);
        out.to_vec()
    }

    fn xlog_data(wal_start: u64, data: &[u8]) -> Vec<u8> {
        let mut payload = vec![b'w'];
        payload.extend(wal_start.to_be_bytes());
        payload.extend((wal_start + 100).to_be_bytes());
        payload.extend(7_i64.to_be_bytes());
        payload.extend(data);
        copy_data_frame(&payload)
    }

    fn stream_over<S>(stream: S) -> ReplicationStream<S>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        ReplicationStream {
            wire: Wire::new(stream),
            backend_pid: 1,
        }
    }

    #[tokio::test]
    async fn recv_dropped_mid_message_loses_nothing() {
        // Goal: recv is cancel-safe. Method: deliver a frame in two halves and drop the first
        // recv (via a losing select arm) while only the first half has arrived.
        let (mut server, client) = duplex(1024);
        let mut stream = stream_over(client);
        let frame = xlog_data(0x10, b"BEGIN");
        let (head, tail) = frame.split_at(9);
        server.write_all(head).await.expect("write head");
        tokio::select! {
            biased;
            _ = stream.recv() => panic!("half a frame must not complete recv"),
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        server.write_all(tail).await.expect("write tail");
        let msg = stream.recv().await.expect("complete frame");
        let expected = ReplicationMessage::XLogData {
            wal_start: Lsn(0x10),
            wal_end: Lsn(0x10 + 100),
            server_clock_micros: 7,
            data: Bytes::from_static(b"BEGIN"),
        };
        assert_eq!(msg, expected);
    }

    #[tokio::test]
    async fn recv_reports_error_response_with_code_message_and_detail() {
        let (mut server, client) = duplex(1024);
        let mut stream = stream_over(client);
        let mut body = Vec::new();
        for (field, value) in [
            (b'S', "FEHLER"),
            (b'V', "ERROR"),
            (b'C', "55000"),
            (b'M', "gone"),
        ] {
            body.push(field);
            body.extend(value.as_bytes());
            body.push(0);
        }
        body.extend(b"Dwhy\0\0");
        let mut frame = vec![b'E'];
        frame.extend(u32::try_from(body.len() + 4).expect("small").to_be_bytes());
        frame.extend(body);
        server.write_all(&frame).await.expect("write");
        let err = stream.recv().await.expect_err("error response");
        let server_error = err.server_error().expect("server error");
        assert_eq!(server_error.severity, "ERROR");
        assert_eq!(server_error.code, "55000");
        assert_eq!(server_error.message, "gone");
        assert_eq!(server_error.detail.as_deref(), Some("why"));
        assert_eq!(err.kind(), ReplicationErrorKind::Transient);
    }

    #[tokio::test]
    async fn recv_after_eof_is_closed() {
        let (server, client) = duplex(64);
        drop(server);
        let err = stream_over(client).recv().await.expect_err("eof");
        assert!(matches!(err, ReplicationError::Closed), "{err:?}");
    }

    #[test]
    fn standby_status_clock_counts_from_2000() {
        let pg_epoch = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS);
        assert_eq!(pg_clock_micros(pg_epoch), 0);
        assert_eq!(pg_clock_micros(pg_epoch + Duration::from_millis(1)), 1_000);
        assert_eq!(
            pg_clock_micros(pg_epoch - Duration::from_secs(1)),
            -1_000_000
        );
    }

    #[test]
    fn server_version_parses_like_server_version_num() {
        assert_eq!(
            parse_server_version_num("15.4 (Debian 15.4-1.pgdg120+1)"),
            Some(150_004)
        );
        assert_eq!(parse_server_version_num("9.6.24"), Some(90_624));
        assert_eq!(parse_server_version_num("16beta1"), Some(160_000));
        assert_eq!(parse_server_version_num("x"), None);
    }

    #[test]
    fn wal_level_error_is_fatal_but_slot_invalidation_is_not() {
        let server = |code: &str, message: &str| {
            ReplicationError::Server(Box::new(ServerError {
                severity: "ERROR".into(),
                code: code.into(),
                message: message.into(),
                detail: None,
                hint: None,
            }))
        };
        let wal_level = server("55000", "logical decoding requires wal_level >= logical");
        assert_eq!(wal_level.kind(), ReplicationErrorKind::Fatal);
        let invalidated = server(
            "55000",
            "can no longer get changes from replication slot \"s\"",
        );
        assert_eq!(invalidated.kind(), ReplicationErrorKind::Transient);
        assert_eq!(
            server("42501", "permission denied").kind(),
            ReplicationErrorKind::Fatal
        );
        assert_eq!(
            server("55006", "slot active").kind(),
            ReplicationErrorKind::Transient
        );
    }

    /// One backend message.
    fn backend(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend(u32::try_from(body.len() + 4).expect("small").to_be_bytes());
        out.extend(body);
        out
    }

    /// Runs [`authenticate`] against a server that sends `request` (an Authentication
    /// message's body); the client's first answer as (type byte, body), `None` when it logged
    /// in without one, or its error when it sent nothing.
    async fn first_answer(
        request: Vec<u8>,
        mode: ChannelBindingMode,
        end_point: Option<Vec<u8>>,
    ) -> Result<Option<(u8, Vec<u8>)>, ReplicationError> {
        let (mut server, client) = duplex(4096);
        server
            .write_all(&backend(b'R', &request))
            .await
            .expect("write");
        let mut cfg = ReplicationConfig::new("amp", "app");
        cfg.password = Some("secret".into());
        cfg.channel_binding = mode;
        let client = tokio::spawn(async move {
            let mut wire = Wire::new(client);
            authenticate(&mut wire, &cfg, end_point).await
        });
        let mut head = [0_u8; 5];
        if server.read_exact(&mut head).await.is_err() {
            // EOF: the client finished without answering
            return client.await.expect("joins").map(|()| None);
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        let mut body = vec![0; usize::try_from(len).expect("small") - 4];
        server.read_exact(&mut body).await.expect("the answer");
        drop(server);
        let _closed = client.await.expect("joins");
        Ok(Some((head[0], body)))
    }

    /// The SASL mechanism and GS2 channel-binding flag a client picks from `offered`.
    async fn sasl_choice(
        offered: &[&str],
        mode: ChannelBindingMode,
        end_point: Option<Vec<u8>>,
    ) -> Result<(String, String), ReplicationError> {
        let mut request = 10_i32.to_be_bytes().to_vec();
        for mechanism in offered {
            request.extend(mechanism.as_bytes());
            request.push(0);
        }
        request.push(0);
        let (tag, body) = first_answer(request, mode, end_point)
            .await?
            .expect("an answer");
        assert_eq!(tag, b'p', "SASLInitialResponse");
        let mut body = Reader::new(Bytes::from(body), "SASLInitialResponse");
        let mechanism = body.cstr().expect("mechanism");
        let _len = body.i32().expect("length");
        let data = String::from_utf8(body.rest().to_vec()).expect("UTF-8");
        let flag = data.split(',').next().expect("a GS2 header").to_owned();
        Ok((mechanism, flag))
    }

    #[tokio::test]
    async fn scram_binds_to_the_tls_session_as_channel_binding_says() {
        // Goal: libpq's choice: -PLUS whenever offered with binding data (unless disable);
        // else plain SCRAM flagged 'y' (could have bound: a stripped -PLUS is detected) or 'n'
        // (no data); require accepts nothing but -PLUS.
        use ChannelBindingMode::{Disable, Prefer, Require};
        let both = [SCRAM_SHA_256_PLUS, SCRAM_SHA_256];
        let data = || Some(vec![7_u8; 32]);
        let choice = |mechanism: &str, flag: &str| (mechanism.to_owned(), flag.to_owned());
        let cases = [
            (
                &both[..],
                Prefer,
                data(),
                choice(SCRAM_SHA_256_PLUS, "p=tls-server-end-point"),
            ),
            (
                &both[..],
                Require,
                data(),
                choice(SCRAM_SHA_256_PLUS, "p=tls-server-end-point"),
            ),
            (&both[1..], Prefer, data(), choice(SCRAM_SHA_256, "y")),
            (&both[..], Prefer, None, choice(SCRAM_SHA_256, "n")),
            (&both[..], Disable, data(), choice(SCRAM_SHA_256, "n")),
        ];
        for (offered, mode, end_point, expected) in cases {
            let got = sasl_choice(offered, mode, end_point).await;
            assert_eq!(got.ok(), Some(expected), "{offered:?} {mode:?}");
        }
        for (offered, end_point) in [(&both[1..], data()), (&both[..], None)] {
            let err = sasl_choice(offered, Require, end_point).await.unwrap_err();
            assert!(
                matches!(err, ReplicationError::ChannelBindingNotUsed { .. }),
                "{err:?}"
            );
            assert_eq!(err.kind(), ReplicationErrorKind::Fatal);
        }
    }

    #[tokio::test]
    async fn channel_binding_require_sends_no_password_to_other_methods() {
        // Goal: under require, trust, cleartext and MD5 fail before a password goes out (a man
        // in the middle could ask for one). Method: the client must answer with nothing.
        let requests = [
            0_i32.to_be_bytes().to_vec(),
            3_i32.to_be_bytes().to_vec(),
            [5_i32.to_be_bytes(), *b"salt"].concat(),
        ];
        for request in requests {
            let code = request[3];
            let err = first_answer(
                request.clone(),
                ChannelBindingMode::Require,
                Some(vec![1; 32]),
            )
            .await
            .unwrap_err();
            assert!(
                matches!(err, ReplicationError::ChannelBindingNotUsed { .. }),
                "{code}: {err:?}"
            );
            // prefer still answers them (trust: logs in without an answer)
            let prefer = first_answer(request, ChannelBindingMode::Prefer, None).await;
            let answer = prefer.expect("no error").map(|(tag, _)| tag);
            assert_eq!(answer, (code != 0).then_some(b'p'), "{code}");
        }
    }

    #[test]
    fn identifiers_and_command_literals_are_quoted() {
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_command_literal("\"p'1\",\"q\""), "'\"p''1\",\"q\"'");
    }
}
