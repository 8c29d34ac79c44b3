//! [`RealPg`]: the core's [`PgPort`] over a real Postgres.
//!
//! Owns: parsing `DATABASE_URL` (its TLS parameters mean what [`crate::tls`] says; parameters
//! ampere does not use are ignored with one warning naming them, except those asking for a
//! protection it does not give, which stop startup), the pool of SQL connections
//! ([`crate::pool`], `ELECTRIC_DB_POOL_SIZE`, connecting to `ELECTRIC_POOLED_DATABASE_URL`
//! when set) that serves every SQL statement — catalog lookups, `CREATE PUBLICATION`, slot
//! checks and drops, the lock breaker's query, backend termination, stamp reservations and
//! snapshots, each of which holds a connection of its own for its transaction — and the
//! replication connection of deploy-semantics LK-1..LK-3, SL-1, SL-2 and SL-4 over
//! [`crate::replication`], always to `DATABASE_URL`: [`RealSession`] takes the advisory lock on
//! it (session state, so never on a pooled connection), creates the slot, then streams.
//!
//! Pooled connections carry no session state between uses: a statement leaves none, a
//! transaction (snapshots, stamp reservations, `SET LOCAL`) ends before its connection is
//! released, and a connection whose work failed or was cancelled is closed instead. Behind
//! PgBouncer the pooled URL may use transaction pooling, with one requirement: tokio-postgres
//! sends named prepared statements, which PgBouncer carries across server connections only
//! from version 1.21 with `max_prepared_statements` above 0 (session pooling needs nothing).
//!
//! Every socket, replication included, gets TCP keepalive and `TCP_USER_TIMEOUT` as
//! [`crate::tcp`] resolves them from `ELECTRIC_DATABASE_TCP_*` and the URL's libpq
//! parameters.
//!
//! Every connection, the replication connection included, encrypts as `sslmode` says and binds
//! SCRAM logins to the TLS session as `channel_binding` says ([`crate::tls`]: libpq's modes,
//! `prefer` by default for both; `docs/tls.md`), and every connect is bounded by
//! `connect_timeout` as a whole: TCP, TLS handshake and login.
//!
//! Never: retries, backs off or decides what a failure means for the instance. Every error
//! classifies itself ([`PgError::kind`]: Transient or Fatal) and the core decides.
//!
//! Asks of callers: run inside a tokio runtime (connection tasks are spawned on it).

use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, Connection, GenericClient, Socket};

use ampere_core::error_chain;
use ampere_core::lsn::Lsn;
use ampere_core::pgoutput::Oid;
use ampere_core::ports::{
    DisconnectKind, PgError, PgPort, ReplicationMessage, ReplicationSession, ReplicationStream,
    ReplicationTarget, SlotPersistence, SlotStarted, SnapshotError, SnapshotRequest,
    SnapshotWriter, StandbyStatus, SystemIdentity,
};
use ampere_core::shape::{quote_ident, HandleStamp, RelationName};
use ampere_core::slot_setup::{self, ExistingPublication, ExistingSlot, SlotReset, SlotSetup};
use ampere_core::snapshot::PgSnapshot;

use ampere_core::snapshot_steps::{self, TablePublishing};
use ampere_core::subset::{SubsetQuery, SubsetRows};

use crate::catalog::{self, CatalogError, CatalogTable};
use crate::pool::{Pool, PoolSize, Pooled, Reusable};
use crate::publication;
use crate::replication::{
    self, CreateSlotOutcome, ReplicationConfig, ReplicationConnection, ReplicationError,
    ReplicationErrorKind,
};
use crate::snapshot::SnapshotConnection;
use crate::tcp::{self, TcpOptions, TcpSettings, UrlTcp, UrlTcpError};
use crate::tls::{
    self, ChannelBindingMode, Encryption, MaybeTls, PgTls, RustlsStream, SslMode, TlsError,
    TlsOptions, TlsSettings,
};

/// Connect timeout of every connection (deploy-semantics RC-3), unless `DATABASE_URL` sets one.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// pgoutput protocol version asked for in `START_REPLICATION` (SL-4: v1, no streaming).
const PGOUTPUT_PROTO_VERSION: u32 = 1;
/// The oldest server ampere replicates from (`server_version_num` of PostgreSQL 14.0).
pub const MIN_SERVER_VERSION_NUM: u32 = 140_000;
/// SQLSTATE `insufficient_privilege`.
const INSUFFICIENT_PRIVILEGE: &str = "42501";
/// SQLSTATE `undefined_object` (`pg_drop_replication_slot` of a missing slot).
const UNDEFINED_OBJECT: &str = "42704";
/// SQLSTATE `object_in_use` (`pg_drop_replication_slot` of an active slot).
const OBJECT_IN_USE: &str = "55006";
/// Parameters passed through to tokio-postgres's `Config`, which parses them. It parses a few
/// more (`sslmode`, `sslnegotiation`, `channel_binding`, and the socket ones of
/// [`tcp::URL_PARAMETERS`]), which ampere reads itself or ignores, and refuses any other.
const DRIVER_PARAMETERS: [&str; 11] = [
    "user",
    "password",
    "dbname",
    "options",
    "application_name",
    "host",
    "hostaddr",
    "port",
    "connect_timeout",
    "target_session_attrs",
    "load_balance_hosts",
];
/// Postgres's longest identifier (`NAMEDATALEN - 1`), hence the longest slot name.
const SLOT_NAME_MAX: usize = 63;
/// LK-3: what the replication connection reads right after `IDENTIFY_SYSTEM`.
const SESSION_SETTINGS_SQL: &str = "SELECT current_setting('server_version_num'), \
    pg_backend_pid(), (SELECT setting FROM pg_settings WHERE name = 'wal_sender_timeout')";
/// LB-1: the lock breaker's query runs under this statement timeout.
const LOCK_BREAKER_STATEMENT_TIMEOUT: &str = "5s";
/// `ampere cleanup` waits this long for a terminated walsender to release the slot.
const CLEANUP_SLOT_WAIT: Duration = Duration::from_secs(10);
/// How often `ampere cleanup` looks at the slot while it waits.
const CLEANUP_SLOT_POLL: Duration = Duration::from_millis(50);

/// Postgres for the driver: replication setup, catalog lookups and snapshots.
///
/// Cheap to clone (an `Arc` inside); clones share the pool.
#[derive(Clone)]
pub struct RealPg {
    inner: Arc<Inner>,
}

/// How many of `pool_size` connections snapshots may hold at once: all but one, so that other
/// SQL always finds one (a pool of one is shared).
fn snapshot_slots(pool_size: PoolSize) -> usize {
    PoolSize::new(pool_size.get() - 1).map_or(1, PoolSize::permits)
}

/// How to reach Postgres besides `DATABASE_URL` itself.
#[derive(Clone, Default)]
pub struct PgOptions {
    /// Certificates from outside the URLs, for both.
    pub tls: TlsOptions,
    /// `ELECTRIC_POOLED_DATABASE_URL`: where the pool connects; `None`: `DATABASE_URL`. It
    /// holds a password: never logged.
    pub pooled_database_url: Option<String>,
    /// `ELECTRIC_DB_POOL_SIZE`.
    pub pool_size: PoolSize,
    /// `ELECTRIC_DATABASE_TCP_*`, for every socket.
    pub tcp: TcpOptions,
    /// `ELECTRIC_MANUAL_TABLE_PUBLISHING`: who adds shapes' tables to the publication.
    pub table_publishing: TablePublishing,
}

struct Inner {
    /// `DATABASE_URL`'s, for SQL connections when there is no pooled URL.
    sql: Config,
    /// For the replication connection.
    replication: ReplicationEndpoint,
    /// `DATABASE_URL`'s `sslmode` and certificates, for the replication connection (and SQL
    /// connections when there is no pooled URL).
    tls: PgTls,
    /// The replication socket's keepalive and `TCP_USER_TIMEOUT` (SQL sockets get theirs
    /// through their `Config`).
    tcp: TcpSettings,
    /// `ELECTRIC_POOLED_DATABASE_URL`'s config and TLS, when set.
    pooled: Option<SqlTarget>,
    /// Every SQL connection but those [`RealPg::connect_sql`] hands out.
    pool: Pool<Session>,
    /// Snapshots may hold all of the pool's connections but one (all of a pool of one), so
    /// catalog lookups, the lock breaker and slot statistics never queue behind slow
    /// snapshots (each may wait up to SN-2's bound for in-progress transactions).
    snapshot_slots: Arc<tokio::sync::Semaphore>,
    /// `prefer` fell back to plaintext once already (warned about; later ones are debug).
    has_downgraded: AtomicBool,
    /// The publication's owner is another role, so ID-2's reservation is skipped (warned
    /// about once).
    has_warned_stamps: AtomicBool,
    /// Who makes shapes' tables replicable (snapshot step 1, and the check before creation).
    table_publishing: TablePublishing,
}

/// Where SQL connections go when not to `DATABASE_URL`.
struct SqlTarget {
    config: Config,
    tls: PgTls,
}

/// A pooled connection, as its last user left it.
struct Session {
    client: Client,
    /// Set when the connection task ended: the socket is closed.
    ended: Arc<AtomicBool>,
}

impl Reusable for Session {
    fn is_alive(&self) -> bool {
        !self.ended.load(Ordering::Relaxed)
    }
}

/// A pooled SQL connection. [`Self::release`] it when done with no transaction open; dropping
/// it closes the connection (what every error path does).
pub struct PooledClient(Pooled<Session>);

impl PooledClient {
    /// Back to the pool for the next statement.
    pub fn release(self) {
        self.0.release();
    }

    /// `result`, releasing the connection when it is `Ok` and closing it otherwise.
    fn finish<T, E>(self, result: Result<T, E>) -> Result<T, E> {
        if result.is_ok() {
            self.release();
        }
        result
    }
}

impl std::ops::Deref for PooledClient {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.0.client
    }
}

impl std::ops::DerefMut for PooledClient {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.0.client
    }
}

/// Where and as whom the replication connection logs in.
#[derive(Clone, Debug)]
struct ReplicationEndpoint {
    host: Endpoint,
    port: u16,
    config: ReplicationConfig,
}

#[derive(Clone, Debug)]
enum Endpoint {
    Tcp {
        /// What to connect to: `hostaddr` if given, else `host`.
        address: String,
        /// What the certificate must name and SNI carries: `host` if given, else `hostaddr`.
        tls_name: String,
    },
    /// The socket directory; the socket is `<dir>/.s.PGSQL.<port>`. Never TLS (as libpq).
    Unix(PathBuf),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp { tls_name, .. } => f.write_str(tls_name),
            Self::Unix(dir) => write!(f, "{}", dir.display()),
        }
    }
}

impl RealPg {
    /// [`Self::from_url_with_tls`] without TLS settings from outside `DATABASE_URL`.
    pub fn from_url(database_url: &str) -> Result<Self, PgPortError> {
        Self::from_url_with_tls(database_url, &TlsOptions::default())
    }

    /// [`Self::with_options`] with TLS options only: no pooled URL, Electric's pool size, the
    /// URL's socket settings.
    pub fn from_url_with_tls(
        database_url: &str,
        options: &TlsOptions,
    ) -> Result<Self, PgPortError> {
        let options = PgOptions {
            tls: options.clone(),
            ..PgOptions::default()
        };
        Self::with_options(database_url, &options)
    }

    /// Parses `DATABASE_URL` and the pooled URL (each a `postgresql://` URL or a `key=value`
    /// string), their TLS parameters together with `options.tls`, and reads the certificate
    /// files they name. Parameters ampere does not use are dropped with one warning naming
    /// them. The first host, port, user, password and dbname of `DATABASE_URL` serve the
    /// replication connection. Connects nothing: connections open on first use.
    pub fn with_options(database_url: &str, options: &PgOptions) -> Result<Self, PgPortError> {
        let (config, tls, tcp) = parse_target("DATABASE_URL", database_url, options)?;
        let pooled = match &options.pooled_database_url {
            Some(url) => {
                let parsed = parse_target("ELECTRIC_POOLED_DATABASE_URL", url, options);
                let (config, tls, _) = parsed.map_err(|e| PgPortError::PooledUrl(Box::new(e)))?;
                Some(SqlTarget { config, tls })
            }
            None => None,
        };
        let mut replication = replication_endpoint(&config)?;
        replication.config.channel_binding = tls.channel_binding();
        Ok(Self {
            inner: Arc::new(Inner {
                sql: config,
                replication,
                tls,
                tcp,
                pooled,
                pool: Pool::new(options.pool_size),
                snapshot_slots: Arc::new(tokio::sync::Semaphore::new(snapshot_slots(
                    options.pool_size,
                ))),
                has_downgraded: AtomicBool::new(false),
                has_warned_stamps: AtomicBool::new(false),
                table_publishing: options.table_publishing.clone(),
            }),
        })
    }

    /// The role ampere logs in as.
    pub fn user(&self) -> &str {
        &self.inner.replication.config.user
    }

    /// The database ampere serves.
    pub fn database(&self) -> &str {
        &self.inner.replication.config.database
    }

    /// Who makes shapes' tables replicable (`ELECTRIC_MANUAL_TABLE_PUBLISHING`).
    pub fn table_publishing(&self) -> &TablePublishing {
        &self.inner.table_publishing
    }

    /// Looks `relation` up, including its generated columns (which
    /// [`PgPort::table_schema`] cannot report).
    pub async fn catalog_table(
        &self,
        relation: &RelationName,
    ) -> Result<Option<CatalogTable>, PgPortError> {
        let admin = self.admin().await?;
        let table = catalog::table(&*admin, relation).await;
        Ok(admin.finish(table)?)
    }

    /// A pooled connection for statements, waiting for one while all
    /// `ELECTRIC_DB_POOL_SIZE` are busy. Release it when done, or drop it to close it.
    pub async fn admin(&self) -> Result<PooledClient, PgPortError> {
        let (checkout, idle) = self.inner.pool.checkout().await;
        let session = match idle {
            Some(session) => session,
            None => self.open_session("sql").await?,
        };
        Ok(PooledClient(checkout.hold(session)))
    }

    /// A new SQL connection of its own, outside the pool, to where the pool connects; its
    /// connection task spawned on the runtime. Each attempt (`allow` and `prefer` may make
    /// two) is bounded by `connect_timeout`, once per host it may try.
    pub async fn connect_sql(&self, purpose: &'static str) -> Result<Client, PgPortError> {
        Ok(self.connect_tracked(purpose).await?.0)
    }

    /// A new connection for the pool.
    async fn open_session(&self, purpose: &'static str) -> Result<Session, PgPortError> {
        let (client, ended) = self.connect_tracked(purpose).await?;
        Ok(Session { client, ended })
    }

    /// [`Self::connect_sql`], with a flag the connection task sets when it ends.
    async fn connect_tracked(
        &self,
        purpose: &'static str,
    ) -> Result<(Client, Arc<AtomicBool>), PgPortError> {
        let (config, tls) = self.sql_target();
        let (client, connection) = match self.connect_sql_with(config).await {
            // sslmode=allow: plaintext first, TLS once the server refuses the plaintext login
            Err(e) if tls.mode() == SslMode::Allow && e.is_login_refused() => {
                let mut config = config.clone();
                config.ssl_mode(Encryption::Required.driver_mode());
                self.connect_sql_with(&config).await?
            }
            // sslmode=prefer with nothing to verify: plaintext after a failed handshake (libpq)
            Err(e) if tls.may_downgrade() && e.is_tls_handshake_failure() => {
                self.warn_downgrade(&host_name(config), &e);
                let mut config = config.clone();
                config.ssl_mode(Encryption::Off.driver_mode());
                self.connect_sql_with(&config).await?
            }
            connected => connected?,
        };
        let ended = Arc::new(AtomicBool::new(false));
        let set_ended = Arc::clone(&ended);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(purpose, error = %error_chain(&error), "Postgres connection ended");
            }
            set_ended.store(true, Ordering::Relaxed);
        });
        Ok((client, ended))
    }

    /// Where SQL connections go: the pooled URL's config and TLS, else `DATABASE_URL`'s.
    fn sql_target(&self) -> (&Config, &PgTls) {
        match &self.inner.pooled {
            Some(target) => (&target.config, &target.tls),
            None => (&self.inner.sql, &self.inner.tls),
        }
    }

    /// One connect attempt: TCP, the SSLRequest and handshake, and the login, bounded as a
    /// whole (tokio-postgres's own `connect_timeout` covers only the TCP connect, so a server
    /// that stalls the handshake would hang the caller, holding a pool permit meanwhile).
    async fn connect_sql_with(
        &self,
        config: &Config,
    ) -> Result<(Client, Connection<Socket, RustlsStream<Socket>>), PgPortError> {
        let timeout = sql_connect_timeout(config);
        let (_, tls) = self.sql_target();
        match tokio::time::timeout(timeout, config.connect(tls.connector())).await {
            Ok(connected) => connected.map_err(|source| self.sql_connect_error(config, source)),
            Err(_) => Err(PgPortError::ConnectTimeout {
                during: "connecting to Postgres",
                timeout,
            }),
        }
    }

    /// `connect_timeout` for each host tokio-postgres may try (libpq's `connect_timeout` is per
    /// host too).
    /// `connect_timeout` from `DATABASE_URL`, else [`CONNECT_TIMEOUT`] (for the replication
    /// connection).
    fn connect_timeout(&self) -> Duration {
        connect_timeout(&self.inner.sql)
    }

    /// The one warning that `prefer` continues in plaintext (each connection tries TLS again,
    /// as libpq's do: the later ones are logged at debug).
    fn warn_downgrade(&self, host: &str, error: &PgPortError) {
        let error = error_chain(error);
        if self.inner.has_downgraded.swap(true, Ordering::Relaxed) {
            tracing::debug!(%host, error, "TLS to Postgres failed again; continuing without TLS");
            return;
        }
        tracing::warn!(%host, error,
            "TLS to Postgres failed, so sslmode=prefer continues without TLS, as libpq does: \
             use sslmode=require to refuse plaintext, or sslmode=disable to skip TLS");
    }

    /// The TLS outcomes tokio-postgres reports in its own words, as [`TlsError`]s that name
    /// the fix.
    fn sql_connect_error(&self, config: &Config, source: tokio_postgres::Error) -> PgPortError {
        let host = || host_name(config);
        if let Some(db) = source.as_db_error() {
            if tls::is_plaintext_refused(db.code().code(), db.message()) {
                let message = db.message().to_owned();
                return TlsError::RequiredByServer {
                    host: host(),
                    message,
                }
                .into();
            }
        }
        // tokio-postgres has no typed error for these two (its error kinds are private, and
        // both come as a plain string cause), so its fixed English text is matched: the
        // driver's, never the server's, which may be localised.
        let cause = std::error::Error::source(&source).map(ToString::to_string);
        match cause.as_deref() {
            // sslmode=require (or stronger) and the server answered the SSLRequest with 'N'
            Some("server does not support TLS") => TlsError::Unsupported { host: host() }.into(),
            // channel_binding=require and the login did not use SCRAM-SHA-256-PLUS
            Some("server did not use channel binding")
                if self.sql_target().1.channel_binding() == ChannelBindingMode::Require =>
            {
                TlsError::ChannelBindingNotUsed {
                    host: host(),
                    why: "it did not offer SCRAM-SHA-256-PLUS, or asked for another \
                          authentication method",
                }
                .into()
            }
            _ => PgPortError::Sql {
                during: "connecting to Postgres",
                source,
            },
        }
    }

    /// For `ampere cleanup`: drops the slot of that name in our database, terminating the
    /// walsenders streaming from it first, then `DROP PUBLICATION IF EXISTS`. Run it only with
    /// every instance of the stream stopped: a running one would recreate both.
    pub async fn drop_slot_and_publication(
        &self,
        slot: &str,
        publication: &str,
    ) -> Result<CleanupReport, PgPortError> {
        let admin = self.admin().await?;
        let report = drop_slot_and_publication(&admin, slot, publication).await;
        admin.finish(report)
    }

    /// The named slot's WAL retention, from `pg_replication_slots` on a pooled connection
    /// (for metrics); `None` when no slot has that name. Fails on a server in recovery
    /// (`pg_current_wal_lsn()` is not available there).
    pub async fn slot_stats(&self, slot: &str) -> Result<Option<SlotStats>, PgPortError> {
        const STATS: &str = "SELECT (pg_current_wal_lsn() - restart_lsn)::int8, \
             (pg_current_wal_lsn() - confirmed_flush_lsn)::int8, active, wal_status \
             FROM pg_catalog.pg_replication_slots WHERE slot_name = $1";
        let during = "reading replication slot statistics";
        let admin = self.admin().await?;
        let row = admin.query_opt(STATS, &[&slot]).await.map_err(sql(during));
        let Some(row) = admin.finish(row)? else {
            return Ok(None);
        };
        Ok(Some(SlotStats {
            retained_wal_bytes: row.try_get(0).map_err(sql(during))?,
            confirmed_flush_lag_bytes: row.try_get(1).map_err(sql(during))?,
            active: row.try_get(2).map_err(sql(during))?,
            wal_status: row.try_get(3).map_err(sql(during))?,
        }))
    }

    /// A snapshot on a pooled connection (any idle one, a new one when none is); released
    /// after a snapshot that committed, closed after any failure (its transaction may be
    /// open) or cancellation.
    async fn snapshot<W: SnapshotWriter>(
        &self,
        request: &SnapshotRequest,
        writer: W,
    ) -> Result<PgSnapshot, SnapshotError> {
        let _slot = Arc::clone(&self.inner.snapshot_slots)
            .acquire_owned()
            .await
            .expect("the snapshot semaphore is never closed");
        let (checkout, idle) = self.inner.pool.checkout().await;
        let session = match idle {
            Some(session) => session,
            None => self
                .open_session("snapshot")
                .await
                .map_err(|e| SnapshotError::Postgres {
                    message: error_chain(&e),
                    kind: e.kind(),
                })?,
        };
        let Session { client, ended } = session;
        let mut steps = SnapshotConnection::new(client);
        let publishing = &self.inner.table_publishing;
        let snapshot = snapshot_steps::take(&mut steps, request, publishing, writer).await?;
        tracing::debug!(handle = %request.handle, relation = %request.schema.relation,
            ?snapshot, "snapshot taken");
        let client = steps.into_client();
        checkout.hold(Session { client, ended }).release();
        Ok(snapshot)
    }

    /// A subset read on a pooled connection, counted with the snapshots (it is as heavy a
    /// query), so one connection stays free for catalog lookups.
    async fn subset(&self, query: &SubsetQuery) -> Result<SubsetRows, SnapshotError> {
        let _slot = Arc::clone(&self.inner.snapshot_slots)
            .acquire_owned()
            .await
            .expect("the snapshot semaphore is never closed");
        let client = self.admin().await.map_err(|e| SnapshotError::Postgres {
            message: error_chain(&e),
            kind: e.kind(),
        })?;
        let read = crate::snapshot::query_subset(&client, query).await;
        client.finish(read)
    }

    /// LK-3 up to the lock: checks `wal_level` (a pooled connection), opens the replication
    /// connection, runs `IDENTIFY_SYSTEM` and reads the server version, the backend pid and
    /// `wal_sender_timeout` on it. Mutates nothing.
    async fn connect_session(&self) -> Result<(RealSession, SystemIdentity), PgPortError> {
        // Before the replication connection: with wal_level = minimal, max_wal_senders is 0
        // and the connection would fail with a (transient) "too many connections" instead.
        let admin = self.admin().await?;
        let checked = check_wal_level(&admin).await;
        admin.finish(checked)?;
        let mut conn = self.open_replication().await?;
        let identity = conn
            .identify_system()
            .await
            .map_err(repl("IDENTIFY_SYSTEM"))?;
        let rows = conn
            .simple_query(SESSION_SETTINGS_SQL)
            .await
            .map_err(repl("reading the backend pid"))?;
        let settings = SessionSettings::parse(rows).map_err(repl("reading the backend pid"))?;
        if settings.server_version_num < MIN_SERVER_VERSION_NUM {
            return Err(PgPortError::ServerVersion {
                server_version_num: settings.server_version_num,
            });
        }
        let database = identity
            .dbname
            .clone()
            .unwrap_or_else(|| self.database().to_owned());
        tracing::debug!(backend_pid = settings.backend_pid,
            server_version_num = settings.server_version_num,
            wal_sender_timeout = settings.wal_sender_timeout.as_deref().unwrap_or("?"),
            system_id = %identity.system_id, timeline = identity.timeline,
            "replication connection open");
        let system = SystemIdentity {
            system_id: identity.system_id,
            timeline: identity.timeline,
            backend_pid: settings.backend_pid,
        };
        let session = RealSession {
            pg: self.clone(),
            conn,
            backend_pid: settings.backend_pid,
            server_version_num: settings.server_version_num,
            database,
            locked_slot: None,
        };
        Ok((session, system))
    }

    /// LB-1's query without `pg_terminate_backend`, on a pooled connection under a 5 s
    /// statement timeout.
    async fn lock_holders(&self, slot: &str, own_pid: i32) -> Result<Vec<i32>, PgPortError> {
        let slot_literal = slot_literal(slot)?;
        // One simple-query message is one implicit transaction, so `SET LOCAL` bounds exactly
        // this query, and the pooled connection is released with no transaction open. The
        // database is the pooled connection's own, which is ours.
        let query = format!(
            "SET LOCAL statement_timeout = '{LOCK_BREAKER_STATEMENT_TIMEOUT}'; \
             WITH inactive_slot AS ( \
               SELECT slot_name FROM pg_catalog.pg_replication_slots \
               WHERE slot_name = {slot_literal} AND database = current_database() AND NOT active \
             ) \
             SELECT l.pid FROM pg_catalog.pg_locks l, inactive_slot s \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
               AND l.database = \
                 (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()) \
               AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtext(s.slot_name) \
               AND l.pid <> {own_pid} \
             ORDER BY l.pid"
        );
        let during = "looking for stale lock holders";
        let admin = self.admin().await?;
        let messages = admin.simple_query(&query).await.map_err(sql(during));
        let messages = admin.finish(messages)?;
        let mut pids = Vec::new();
        for message in messages {
            let tokio_postgres::SimpleQueryMessage::Row(row) = message else {
                continue;
            };
            let pid = row
                .try_get(0)
                .map_err(sql(during))?
                .and_then(|p| p.parse().ok());
            let pid = pid.ok_or(PgPortError::Unexpected {
                during,
                what: "pid is not an int4",
            })?;
            pids.push(pid);
        }
        Ok(pids)
    }

    /// `pg_terminate_backend(pid)` on a pooled connection.
    async fn terminate(&self, pid: i32) -> Result<bool, PgPortError> {
        let admin = self.admin().await?;
        let terminated = terminate_backend(&admin, pid).await;
        admin.finish(terminated)
    }

    /// A new replication connection (`replication=database`), encrypted as `sslmode` says,
    /// bounded by the connect timeout (both attempts of `allow` and `prefer` together).
    async fn open_replication(&self) -> Result<ReplicationConnection<PgSocket>, PgPortError> {
        let timeout = self.connect_timeout();
        let tls = &self.inner.tls;
        let connecting = async {
            match self.open_replication_with(tls.first_attempt()).await {
                // sslmode=allow: plaintext first, TLS once the server refuses the plaintext login
                Err(e) if tls.mode() == SslMode::Allow && e.is_login_refused() => {
                    self.open_replication_with(Encryption::Required).await
                }
                // sslmode=prefer with nothing to verify: plaintext after a failed handshake
                Err(e) if tls.may_downgrade() && e.is_tls_handshake_failure() => {
                    self.warn_downgrade(&self.inner.replication.host.to_string(), &e);
                    self.open_replication_with(Encryption::Off).await
                }
                opened => opened,
            }
        };
        tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| PgPortError::ConnectTimeout {
                during: "connecting for replication",
                timeout,
            })?
    }

    async fn open_replication_with(
        &self,
        encryption: Encryption,
    ) -> Result<ReplicationConnection<PgSocket>, PgPortError> {
        let endpoint = &self.inner.replication;
        let (socket, end_point) = self.replication_socket(encryption).await?;
        let connected = replication::connect_bound(socket, &endpoint.config, end_point).await;
        connected.map_err(|source| match source {
            ReplicationError::TlsRequired(e) => TlsError::RequiredByServer {
                host: endpoint.host.to_string(),
                message: e.message,
            }
            .into(),
            ReplicationError::ChannelBindingNotUsed { why } => TlsError::ChannelBindingNotUsed {
                host: endpoint.host.to_string(),
                why,
            }
            .into(),
            // "must be superuser or replication role to start walsender". Not checked ahead in
            // pg_roles: managed services grant it through role membership (rds_replication).
            source if source.code() == Some(INSUFFICIENT_PRIVILEGE) => {
                PgPortError::ReplicationRole {
                    user: self.user().into(),
                }
            }
            source => PgPortError::Replication {
                during: "connecting for replication",
                source,
            },
        })
    }

    /// The replication connection's socket, after the SSLRequest exchange and handshake that
    /// `encryption` asks for (none on a unix socket, as libpq), with the TLS session's
    /// channel-binding data.
    async fn replication_socket(
        &self,
        encryption: Encryption,
    ) -> Result<(PgSocket, Option<Vec<u8>>), PgPortError> {
        let endpoint = &self.inner.replication;
        let failed = |e: io::Error| PgPortError::Replication {
            during: "connecting for replication",
            source: e.into(),
        };
        match &endpoint.host {
            Endpoint::Tcp { address, tls_name } => {
                let stream = TcpStream::connect((address.as_str(), endpoint.port))
                    .await
                    .map_err(failed)?;
                stream.set_nodelay(true).map_err(failed)?;
                self.inner.tcp.apply(&stream).map_err(failed)?;
                let negotiated = self
                    .inner
                    .tls
                    .negotiate(stream, tls_name, encryption)
                    .await?;
                Ok(match negotiated {
                    MaybeTls::Plain(stream) => (PgSocket::Tcp(stream), None),
                    MaybeTls::Tls { stream, end_point } => (PgSocket::Tls(stream), end_point),
                })
            }
            Endpoint::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{}", endpoint.port));
                let stream = UnixStream::connect(path).await.map_err(failed)?;
                Ok((PgSocket::Unix(stream), None))
            }
        }
    }
}

impl PgPort for RealPg {
    type Error = PgPortError;
    type Stream = RealReplicationStream;
    type Session = RealSession;

    fn connect_replication(
        &self,
    ) -> impl Future<Output = Result<(Self::Session, SystemIdentity), Self::Error>> + Send + 'static
    {
        let this = self.clone();
        async move { this.connect_session().await }
    }

    fn stale_lock_holders(
        &self,
        slot: String,
        own_pid: i32,
    ) -> impl Future<Output = Result<Vec<i32>, Self::Error>> + Send + 'static {
        let this = self.clone();
        async move { this.lock_holders(&slot, own_pid).await }
    }

    /// Also §1.16 step 3: after closing the replication connection, terminate its backend
    /// (`SystemIdentity::backend_pid`) so lock and slot are free even if the close is slow.
    fn terminate_backend(
        &self,
        pid: i32,
    ) -> impl Future<Output = Result<bool, Self::Error>> + Send + 'static {
        let this = self.clone();
        async move { this.terminate(pid).await }
    }

    fn table_schema(
        &self,
        relation: RelationName,
    ) -> impl Future<Output = Result<Option<CatalogTable>, Self::Error>> + Send + 'static {
        let this = self.clone();
        async move { this.catalog_table(&relation).await }
    }

    fn relation_names(
        &self,
        tables: Vec<Oid>,
        publication: String,
    ) -> impl Future<Output = Result<Vec<(Oid, RelationName)>, Self::Error>> + Send + 'static {
        let this = self.clone();
        async move {
            let admin = this.admin().await?;
            let found = catalog::relation_names(&*admin, &tables, &publication).await;
            admin.finish(found).map_err(|source| PgPortError::Sql {
                during: "looking up the shapes' tables",
                source,
            })
        }
    }

    fn time_zone_wall_clocks(
        &self,
        zone: String,
        instants: Vec<i64>,
    ) -> impl Future<Output = Result<Option<Vec<i64>>, Self::Error>> + Send + 'static {
        let this = self.clone();
        async move {
            let admin = this.admin().await?;
            let found = catalog::time_zone_wall_clocks(&*admin, &zone, &instants).await;
            admin.finish(found).map_err(|source| PgPortError::Sql {
                during: "reading the server's time zone data",
                source,
            })
        }
    }

    fn reserve_stamps(
        &self,
        publication: String,
        through: HandleStamp,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let this = self.clone();
        async move {
            let mut client = this.admin().await?;
            let reserved = reserve_stamps(&mut client, &publication, through).await;
            if matches!(reserved, Ok(StampReservation::NotOwner))
                && !this.inner.has_warned_stamps.swap(true, Ordering::Relaxed)
            {
                tracing::warn!(%publication, role = this.user(),
                    "the role does not own the publication, so handle stamps are not reserved \
                     in Postgres: a restored older copy of the storage directory could reissue \
                     a handle clients saw (ID-2); to close that gap run: ALTER PUBLICATION {} \
                     OWNER TO {}", quote_ident(&publication), quote_ident(this.user()));
            }
            client.finish(reserved.map(drop))
        }
    }

    fn check_table_published(
        &self,
        relation: RelationName,
    ) -> impl Future<Output = Result<(), SnapshotError>> + Send + 'static {
        let this = self.clone();
        async move { crate::snapshot::check_table_published(&this, &relation).await }
    }

    fn take_snapshot<W: SnapshotWriter>(
        &self,
        request: SnapshotRequest,
        writer: W,
    ) -> impl Future<Output = Result<PgSnapshot, SnapshotError>> + Send + 'static {
        let this = self.clone();
        async move { this.snapshot(&request, writer).await }
    }

    fn query_subset(
        &self,
        query: SubsetQuery,
    ) -> impl Future<Output = Result<SubsetRows, SnapshotError>> + Send + 'static {
        let this = self.clone();
        async move { this.subset(&query).await }
    }
}

/// A replication connection before streaming (LK-2): it may hold the advisory lock, which
/// Postgres releases exactly when this connection's backend ends (drop it to release).
pub struct RealSession {
    /// For pooled connections (publication and slot drops).
    pg: RealPg,
    conn: ReplicationConnection<PgSocket>,
    /// `pg_backend_pid()` of this connection (LK-3).
    backend_pid: i32,
    /// `server_version_num` (LK-3), for the publication options of SL-1.
    server_version_num: u32,
    /// The connected database (`IDENTIFY_SYSTEM`'s `dbname`).
    database: String,
    /// The slot whose advisory lock this connection holds, once `pg_try_advisory_lock` said
    /// so (LK-4: never asked again on this connection).
    locked_slot: Option<String>,
}

impl RealSession {
    /// `pg_backend_pid()` of the replication connection (LB-1's `own_pid`, §1.16's target).
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// The slot whose advisory lock this connection holds, if it took one.
    pub fn locked_slot(&self) -> Option<&str> {
        self.locked_slot.as_deref()
    }

    /// LK-1, LK-4: `SELECT pg_try_advisory_lock(hashtext('<slot>'))`, the key hashed by the
    /// server. Walsenders take only simple-query SQL, so the slot is inlined as a literal,
    /// which [`slot_literal`] allows only for `[a-z0-9_]` names.
    async fn try_lock(&mut self, slot: &str) -> Result<bool, PgPortError> {
        const DURING: &str = "pg_try_advisory_lock";
        let sql = format!(
            "SELECT pg_try_advisory_lock(hashtext({}))",
            slot_literal(slot)?
        );
        let rows = self.conn.simple_query(&sql).await.map_err(repl(DURING))?;
        let unexpected = |what| PgPortError::Unexpected {
            during: DURING,
            what,
        };
        let [row] = rows.as_slice() else {
            return Err(unexpected("not exactly one row"));
        };
        let is_locked = match row.first().and_then(Option::as_deref) {
            Some("t") => true,
            Some("f") => false,
            _ => return Err(unexpected("not a bool")),
        };
        if is_locked {
            self.locked_slot = Some(slot.to_owned());
        }
        Ok(is_locked)
    }

    /// SL-1, SL-2, SL-4 on this connection (the publication and slot drops on the admin
    /// connection), whether or not the lock is held.
    async fn stream(
        mut self,
        target: ReplicationTarget,
    ) -> Result<(RealReplicationStream, SlotStarted), PgPortError> {
        let started = slot_setup::prepare(&mut RealSlotSetup {
            conn: &mut self.conn,
            pg: &self.pg,
            target: &target,
            database: &self.database,
            server_version_num: self.server_version_num,
        })
        .await?;
        let (slot, persistence) = (&target.slot, target.slot_persistence);
        tracing::info!(%slot, slot_created = started.slot_created,
            confirmed_flush_lsn = %started.confirmed_flush_lsn, ?persistence,
            backend_pid = self.backend_pid, "starting replication");
        let stream = self
            .conn
            .start_replication(
                slot,
                Lsn::ZERO,
                &[target.publication.as_str()],
                PGOUTPUT_PROTO_VERSION,
            )
            .await
            .map_err(repl("START_REPLICATION"))?;
        Ok((RealReplicationStream { inner: stream }, started))
    }
}

impl ReplicationSession for RealSession {
    type Error = PgPortError;
    type Stream = RealReplicationStream;

    /// Not cancel-safe in the connection's sense: dropping the future drops the session (and
    /// so the connection, releasing any lock). After an error, drop the returned session.
    fn try_advisory_lock(
        mut self,
        slot: String,
    ) -> impl Future<Output = (Self, Result<bool, Self::Error>)> + Send + 'static {
        // LK-4: these locks stack; a second grant would need a second unlock.
        assert!(
            self.locked_slot.is_none(),
            "lock-once: pg_try_advisory_lock({slot}) after the lock of {:?} was granted",
            self.locked_slot
        );
        async move {
            let result = self.try_lock(&slot).await;
            (self, result)
        }
    }

    fn start_streaming(
        self,
        target: ReplicationTarget,
    ) -> impl Future<Output = Result<(Self::Stream, SlotStarted), Self::Error>> + Send + 'static
    {
        // LK-5: publication and slot are changed only under the lock of this very slot.
        assert_eq!(
            self.locked_slot.as_deref(),
            Some(target.slot.as_str()),
            "lock-before-mutation: start_streaming without the slot's advisory lock"
        );
        self.stream(target)
    }
}

/// LK-3's row: `server_version_num`, `pg_backend_pid()`, `wal_sender_timeout`.
struct SessionSettings {
    server_version_num: u32,
    backend_pid: i32,
    /// In milliseconds, as `pg_settings` shows it; only logged.
    wal_sender_timeout: Option<String>,
}

impl SessionSettings {
    fn parse(rows: Vec<Vec<Option<String>>>) -> Result<Self, ReplicationError> {
        let unexpected = |what| ReplicationError::UnexpectedResult {
            command: "SELECT pg_backend_pid()",
            what,
        };
        let [row] = rows.as_slice() else {
            return Err(unexpected("not exactly one row"));
        };
        let [version, pid, wal_sender_timeout] = row.as_slice() else {
            return Err(unexpected("not three columns"));
        };
        let server_version_num = version.as_deref().and_then(|v| v.parse().ok());
        let backend_pid = pid.as_deref().and_then(|p| p.parse().ok());
        Ok(Self {
            server_version_num: server_version_num
                .ok_or_else(|| unexpected("server_version_num is not a number"))?,
            backend_pid: backend_pid.ok_or_else(|| unexpected("pg_backend_pid is not an int4"))?,
            wal_sender_timeout: wal_sender_timeout.clone(),
        })
    }
}

/// A replication slot's row in `pg_replication_slots`, as [`RealPg::slot_stats`] reads it.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct SlotStats {
    /// `pg_current_wal_lsn() - restart_lsn`: WAL bytes the slot keeps on the server's disk
    /// (`None` when `restart_lsn` is null, e.g. the WAL was lost).
    pub retained_wal_bytes: Option<i64>,
    /// `pg_current_wal_lsn() - confirmed_flush_lsn`: WAL bytes not yet acknowledged.
    pub confirmed_flush_lag_bytes: Option<i64>,
    /// A walsender streams from the slot.
    pub active: bool,
    /// `reserved`, `extended`, `unreserved` or `lost` (`None` when `restart_lsn` is null).
    pub wal_status: Option<String>,
}

/// What [`RealPg::drop_slot_and_publication`] found and did.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct CleanupReport {
    /// A slot of that name existed in our database.
    pub slot_existed: bool,
    /// Walsenders that were streaming from the slot, terminated so it could be dropped.
    pub terminated_pids: Vec<i32>,
    /// This call dropped the slot (a temporary one vanishes with its walsender instead).
    pub slot_dropped: bool,
    /// The publication existed and was dropped.
    pub publication_dropped: bool,
}

/// `SHOW wal_level` must say `logical` (RC-1: fatal otherwise, naming the fix).
async fn check_wal_level(admin: &Client) -> Result<(), PgPortError> {
    let row = admin
        .query_one("SELECT current_setting('wal_level')", &[])
        .await
        .map_err(sql("reading wal_level"))?;
    let wal_level: String = row.try_get(0).map_err(sql("reading wal_level"))?;
    if wal_level == "logical" {
        return Ok(());
    }
    Err(PgPortError::WalLevel { wal_level })
}

/// ID-2: the handle-stamp reservation the publication's comment records (zero for none, or
/// for a comment ampere did not write); `None` when there is no publication.
async fn stamps_reserved<C: GenericClient>(
    client: &C,
    publication: &str,
) -> Result<Option<HandleStamp>, PgPortError> {
    const SQL: &str = "SELECT pg_catalog.obj_description(oid, 'pg_publication') \
                       FROM pg_catalog.pg_publication WHERE pubname = $1";
    let during = "reading the handle-stamp reservation";
    let rows = client
        .query(SQL, &[&publication])
        .await
        .map_err(sql(during))?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let comment: Option<&str> = row.try_get(0).map_err(sql(during))?;
    Ok(Some(HandleStamp::reserved_by(comment)))
}

/// Whether [`reserve_stamps`] could record the reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StampReservation {
    /// The publication's comment holds at least the stamp asked for.
    Recorded,
    /// The role does not own the publication (an administrator created it: least privilege,
    /// `ELECTRIC_MANUAL_TABLE_PUBLISHING`), so it may not comment on it: the storage
    /// directory's high-water mark alone keeps stamps increasing.
    NotOwner,
}

/// ID-2: raises the reservation to `through`, never lowers it. Read and write happen in one
/// transaction under a transaction-level advisory lock, so a deposed writer racing its
/// successor cannot put a lower reservation back.
async fn reserve_stamps(
    client: &mut Client,
    publication: &str,
    through: HandleStamp,
) -> Result<StampReservation, PgPortError> {
    let during = "reserving handle stamps";
    let tx = client.transaction().await.map_err(sql(during))?;
    let key = format!("ampere handle stamps {publication}");
    tx.execute(
        "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext($1))",
        &[&key],
    )
    .await
    .map_err(sql(during))?;
    if stamps_reserved(&tx, publication).await?.unwrap_or_default() < through {
        // The comment is ampere's own text (a fixed prefix and digits): nothing to escape.
        let comment = through.reservation_comment();
        debug_assert!(!comment.contains('\''));
        let set = format!(
            "COMMENT ON PUBLICATION {} IS '{comment}'",
            quote_ident(publication)
        );
        match tx.batch_execute(&set).await {
            Ok(()) => {}
            Err(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) =>
            {
                tx.rollback().await.map_err(sql(during))?;
                return Ok(StampReservation::NotOwner);
            }
            Err(e) => return Err(sql(during)(e)),
        }
    }
    tx.commit().await.map_err(sql(during))?;
    Ok(StampReservation::Recorded)
}

/// Drops the slot if it exists in `database` (a concurrent drop, 42704, is fine). Another
/// database's slot of the same name is left alone: reading it then fails fatally.
async fn drop_slot(admin: &Client, slot: &str, database: &str) -> Result<(), PgPortError> {
    const SQL: &str = "SELECT pg_catalog.pg_drop_replication_slot(slot_name) \
                       FROM pg_catalog.pg_replication_slots \
                       WHERE slot_name = $1 AND database = $2";
    match admin.query(SQL, &[&slot, &database]).await {
        Ok(_) => Ok(()),
        Err(e) if sqlstate(&e) == Some(UNDEFINED_OBJECT) => Ok(()),
        Err(source) => Err(PgPortError::Sql {
            during: "dropping the replication slot",
            source,
        }),
    }
}

/// [`slot_setup::prepare`]'s steps on the replication connection (slot creation and
/// reading) and pooled connections (publication, drops), in the connected database.
struct RealSlotSetup<'a> {
    conn: &'a mut ReplicationConnection<PgSocket>,
    /// Each step takes a pooled connection and releases it, so none is held while
    /// `CREATE_REPLICATION_SLOT` waits for running transactions.
    pg: &'a RealPg,
    target: &'a ReplicationTarget,
    database: &'a str,
    server_version_num: u32,
}

impl SlotSetup for RealSlotSetup<'_> {
    type Error = PgPortError;

    async fn ensure_publication(&mut self) -> Result<bool, PgPortError> {
        let admin = self.pg.admin().await?;
        let created = publication::ensure(
            &admin,
            &self.target.publication,
            self.server_version_num,
            self.pg.table_publishing(),
        )
        .await;
        admin.finish(created)
    }

    async fn existing_publication(&mut self) -> Result<Option<ExistingPublication>, PgPortError> {
        let admin = self.pg.admin().await?;
        let publishing = self.pg.table_publishing();
        let existing = publication::existing(&admin, &self.target.publication, publishing).await;
        admin.finish(existing)
    }

    async fn drop_slot(&mut self, why: SlotReset) -> Result<(), PgPortError> {
        let slot = &self.target.slot;
        match why {
            SlotReset::PublicationCreated => tracing::info!(%slot,
                publication = %self.target.publication,
                "the publication is missing: dropping the slot before creating it"),
            SlotReset::SlotLost => tracing::warn!(%slot,
                "the slot is invalidated (wal_status = lost); recreating it"),
            SlotReset::PublicationRerouted => tracing::warn!(%slot,
                publication = %self.target.publication,
                "the publication holds a partitioned table but lacks \
                 publish_via_partition_root, so shapes on that table missed its partitions' \
                 changes: dropping the slot before setting it (stored shapes are purged \
                 once, and their clients refetch)"),
        }
        let admin = self.pg.admin().await?;
        let dropped = drop_slot(&admin, slot, self.database).await;
        admin.finish(dropped)
    }

    async fn create_slot(&mut self) -> Result<Option<Lsn>, PgPortError> {
        match create_slot(self.conn, &self.target.slot, self.target.slot_persistence).await? {
            CreateSlotOutcome::Created(created) => Ok(Some(created.consistent_point)),
            CreateSlotOutcome::AlreadyExists => Ok(None),
        }
    }

    /// The slot of the connected database; another database's slot of the same name is a
    /// fatal error.
    async fn existing_slot(&mut self) -> Result<Option<ExistingSlot>, PgPortError> {
        let slot = &self.target.slot;
        let Some(info) = self
            .conn
            .slot_info(slot)
            .await
            .map_err(repl("reading the slot"))?
        else {
            return Ok(None);
        };
        if info.database.as_deref() != Some(self.database) {
            return Err(PgPortError::SlotInOtherDatabase {
                slot: slot.clone(),
                slot_database: info.database,
                database: self.database.to_owned(),
            });
        }
        Ok(Some(ExistingSlot {
            confirmed_flush_lsn: info.confirmed_flush_lsn,
            is_lost: info.is_lost(),
        }))
    }

    fn changed_concurrently(&self) -> PgPortError {
        PgPortError::SlotVanished {
            slot: self.target.slot.clone(),
        }
    }
}

/// SL-2: `CREATE_REPLICATION_SLOT`, `TEMPORARY` or not (§1.7).
async fn create_slot(
    conn: &mut ReplicationConnection<PgSocket>,
    slot: &str,
    persistence: SlotPersistence,
) -> Result<CreateSlotOutcome, PgPortError> {
    let persistence = match persistence {
        SlotPersistence::Persistent => replication::SlotPersistence::Persistent,
        SlotPersistence::Temporary => replication::SlotPersistence::Temporary,
    };
    conn.create_logical_slot(slot, persistence)
        .await
        .map_err(repl("CREATE_REPLICATION_SLOT"))
}

/// `ampere cleanup`: the slot (see [`drop_slot_terminating`]), then the publication.
async fn drop_slot_and_publication(
    admin: &Client,
    slot: &str,
    publication: &str,
) -> Result<CleanupReport, PgPortError> {
    const EXISTS: &str = "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1";
    let mut report = drop_slot_terminating(admin, slot).await?;
    let during = "dropping the publication";
    let rows = admin
        .query(EXISTS, &[&publication])
        .await
        .map_err(sql(during))?;
    admin
        .batch_execute(&format!(
            "DROP PUBLICATION IF EXISTS {}",
            quote_ident(publication)
        ))
        .await
        .map_err(sql(during))?;
    report.publication_dropped = !rows.is_empty();
    Ok(report)
}

/// `ampere cleanup`'s slot half: drops the slot of our database, first terminating whatever
/// walsender streams from it, until it is gone or [`CLEANUP_SLOT_WAIT`] passed.
async fn drop_slot_terminating(admin: &Client, slot: &str) -> Result<CleanupReport, PgPortError> {
    const FIND: &str = "SELECT active, active_pid FROM pg_catalog.pg_replication_slots \
                        WHERE slot_name = $1 AND database = current_database()";
    const DROP: &str = "SELECT pg_catalog.pg_drop_replication_slot(slot_name) \
                        FROM pg_catalog.pg_replication_slots \
                        WHERE slot_name = $1 AND database = current_database()";
    let during = "dropping the replication slot";
    let deadline = tokio::time::Instant::now() + CLEANUP_SLOT_WAIT;
    let mut report = CleanupReport::default();
    loop {
        let rows = admin.query(FIND, &[&slot]).await.map_err(sql(during))?;
        let Some(row) = rows.first() else {
            return Ok(report);
        };
        report.slot_existed = true;
        let is_active: bool = row.try_get(0).map_err(sql(during))?;
        let active_pid: Option<i32> = row.try_get(1).map_err(sql(during))?;
        match active_pid {
            Some(pid) if is_active => {
                if !report.terminated_pids.contains(&pid) {
                    tracing::warn!(%slot, pid, "terminating the walsender streaming from the slot");
                    terminate_backend(admin, pid).await?;
                    report.terminated_pids.push(pid);
                }
            }
            _ => match admin.query(DROP, &[&slot]).await {
                Ok(dropped) => {
                    report.slot_dropped = !dropped.is_empty();
                    return Ok(report);
                }
                // vanished meanwhile (a temporary slot with its walsender)
                Err(e) if sqlstate(&e) == Some(UNDEFINED_OBJECT) => return Ok(report),
                // a walsender took it meanwhile: terminate that one too
                Err(e) if sqlstate(&e) == Some(OBJECT_IN_USE) => {}
                Err(source) => return Err(PgPortError::Sql { during, source }),
            },
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(PgPortError::SlotBusy {
                slot: slot.to_owned(),
                waited: CLEANUP_SLOT_WAIT,
            });
        }
        tokio::time::sleep(CLEANUP_SLOT_POLL).await;
    }
}

/// `SELECT pg_terminate_backend(pid)`: whether a backend was signalled.
async fn terminate_backend(admin: &Client, pid: i32) -> Result<bool, PgPortError> {
    const SQL: &str = "SELECT pg_catalog.pg_terminate_backend($1)";
    let during = "terminating a backend";
    let row = admin.query_one(SQL, &[&pid]).await.map_err(sql(during))?;
    row.try_get(0).map_err(sql(during))
}

/// `'<slot>'` for SQL inlined on a walsender (LK-3), which takes no parameters: only for names
/// Postgres allows for slots (`[a-z0-9_]`, at most 63 bytes), so there is nothing to escape.
fn slot_literal(slot: &str) -> Result<String, PgPortError> {
    let is_valid = !slot.is_empty()
        && slot.len() <= SLOT_NAME_MAX
        && slot
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !is_valid {
        return Err(PgPortError::InvalidSlotName {
            slot: slot.to_owned(),
        });
    }
    Ok(format!("'{slot}'"))
}

fn sqlstate(error: &tokio_postgres::Error) -> Option<&str> {
    error.code().map(tokio_postgres::error::SqlState::code)
}

/// `DATABASE_URL` split by who reads each parameter.
#[derive(Default)]
struct UrlParts {
    /// For tokio-postgres: the URL (or `key=value` string) with only [`DRIVER_PARAMETERS`].
    /// It holds the password: never logged, and [`fmt::Debug`] leaves it out.
    driver: String,
    /// [`tls::URL_PARAMETERS`], decoded, in order.
    tls: Vec<(String, String)>,
    /// [`tcp::URL_PARAMETERS`], read.
    tcp: UrlTcp,
    /// The names of the other parameters (`pgbouncer`, `sslsni`…), in order, without repeats:
    /// ignored rather than refused, so URLs written for libpq or a provider's console work.
    ignored: Vec<String>,
}

impl fmt::Debug for UrlParts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UrlParts")
            .field("driver", &"<redacted>")
            .field("tls", &self.tls)
            .field("tcp", &self.tcp)
            .field("ignored", &self.ignored)
            .finish()
    }
}

impl UrlParts {
    /// Files `key` under TLS, TCP or ignored; `Ok(true)` when it is the driver's. A parameter
    /// that asks for a protection ampere does not give is an error
    /// ([`tls::refuse_unsupported`]), as is a socket setting that is not a number.
    fn route(&mut self, key: &str, value: String) -> Result<bool, PgPortError> {
        if DRIVER_PARAMETERS.contains(&key) {
            return Ok(true);
        }
        if tcp::URL_PARAMETERS.contains(&key) {
            self.tcp.set(key, &value)?;
        } else if tls::URL_PARAMETERS.contains(&key) {
            self.tls.push((key.to_owned(), value));
        } else {
            tls::refuse_unsupported(key, &value)?;
            if !self.ignored.iter().any(|k| k == key) {
                self.ignored.push(key.to_owned());
            }
        }
        Ok(false)
    }
}

/// Splits the parameters the way tokio-postgres's parser reads them. Text it would refuse is
/// left to it, so its error is the one reported; `key=value` text it reads but ampere's
/// tokenizer does not is an error, since its TLS parameters would go unread (a silent
/// `sslmode=require` → `prefer`).
fn split_database_url(url: &str) -> Result<UrlParts, PgPortError> {
    let rest = url
        .strip_prefix("postgresql://")
        .or_else(|| url.strip_prefix("postgres://"));
    if let Some(rest) = rest {
        return split_uri(url, rest);
    }
    match split_key_values(url)? {
        Some(parts) => Ok(parts),
        None if url.parse::<Config>().is_err() => Ok(UrlParts {
            driver: url.to_owned(),
            ..UrlParts::default()
        }),
        None => Err(PgPortError::Config {
            what: "ampere cannot split its key=value form into parameters (a trailing \
                   backslash?), so it cannot read sslmode and the other TLS parameters in it: \
                   quote values with '…', escape ' and \\ inside them with a backslash, or \
                   use a postgresql:// URL"
                .to_owned(),
        }),
    }
}

/// The URI form: the query starts at the first `?` after the credentials, which end at the
/// first `@` (so a password may hold a `?`), as in tokio-postgres.
fn split_uri(url: &str, rest: &str) -> Result<UrlParts, PgPortError> {
    let credentials_end = rest.find('@').map_or(0, |at| at + 1);
    let Some(query_at) = rest[credentials_end..].find('?') else {
        return Ok(UrlParts {
            driver: url.to_owned(),
            ..UrlParts::default()
        });
    };
    let base_len = url.len() - rest.len() + credentials_end + query_at;
    let mut parts = UrlParts::default();
    let mut kept = Vec::new();
    for param in url[base_len + 1..].split('&').filter(|p| !p.is_empty()) {
        let Some((key, value)) = param.split_once('=') else {
            kept.push(param);
            continue;
        };
        if parts.route(&percent_decode(key), percent_decode(value))? {
            kept.push(param);
        }
    }
    parts.driver = url[..base_len].to_owned();
    if !kept.is_empty() {
        parts.driver.push('?');
        parts.driver.push_str(&kept.join("&"));
    }
    Ok(parts)
}

/// The `key=value` form (values bare or single-quoted, `\` escaping); `Ok(None)` when it does
/// not tokenize.
fn split_key_values(text: &str) -> Result<Option<UrlParts>, PgPortError> {
    let Some(pairs) = key_values(text) else {
        return Ok(None);
    };
    let mut parts = UrlParts::default();
    let mut kept = Vec::new();
    for (key, value) in pairs {
        if parts.route(&key, value.clone())? {
            kept.push(format!(
                "{key}='{}'",
                value.replace('\\', "\\\\").replace('\'', "\\'")
            ));
        }
    }
    parts.driver = kept.join(" ");
    Ok(Some(parts))
}

/// The `key=value` pairs of `text`, unquoted and unescaped; `None` when it does not tokenize.
fn key_values(text: &str) -> Option<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    let skip_space = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_space(&mut chars);
        if chars.peek().is_none() {
            return Some(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        skip_space(&mut chars);
        if key.is_empty() || chars.next() != Some('=') {
            return None;
        }
        skip_space(&mut chars);
        let is_quoted = chars.next_if_eq(&'\'').is_some();
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\'') if is_quoted => break,
                Some(c) if !is_quoted && c.is_whitespace() => break,
                Some('\\') => value.push(chars.next()?),
                Some(c) => value.push(c),
                None if is_quoted => return None,
                None => break,
            }
        }
        if !is_quoted && value.is_empty() {
            return None;
        }
        pairs.push((key, value));
    }
}

/// `%XX` decoded (a malformed escape stays as it is); invalid UTF-8 replaced.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |i: usize| {
        bytes
            .get(i)
            .and_then(|b| char::from(*b).to_digit(16))
            .and_then(|d| u8::try_from(d).ok())
    };
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let (Some(high), Some(low)) = (hex(i + 1), hex(i + 2)) {
                decoded.push(high * 16 + low);
                i += 3;
                continue;
            }
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// One URL (`name` is the variable it came from, for the warning) parsed for connecting: the
/// driver's config with ampere's defaults, its TLS, and its sockets' settings.
fn parse_target(
    name: &'static str,
    url: &str,
    options: &PgOptions,
) -> Result<(Config, PgTls, TcpSettings), PgPortError> {
    let parts = split_database_url(url)?;
    if !parts.ignored.is_empty() {
        tracing::warn!(parameters = %parts.ignored.join(", "), url = name,
            "database URL parameters that ampere does not use are ignored");
    }
    let mut config: Config = parts.driver.parse().map_err(PgPortError::ConfigParse)?;
    let tls = PgTls::new(&TlsSettings::new(&parts.tls, &options.tls)?)?;
    let tcp = TcpSettings::resolve(&mut config, &parts.tcp, &options.tcp);
    complete_config(&mut config, &tls);
    Ok((config, tls, tcp))
}

/// Sets [`CONNECT_TIMEOUT`] and `application_name=ampere` unless given, and the driver's
/// sslmode and channel binding from `tls`.
fn complete_config(config: &mut Config, tls: &PgTls) {
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("ampere");
    }
    if config.get_hosts().is_empty() {
        // tokio-postgres verifies (and sends SNI for) `host`; with only `hostaddr` there is
        // none, and it refuses TLS. libpq verifies against the address then: do the same.
        for addr in config.get_hostaddrs().to_vec() {
            config.host(addr.to_string());
        }
    }
    let hosts = config.get_hosts();
    let is_unix_only = !hosts.is_empty() && hosts.iter().all(|h| matches!(h, Host::Unix(_)));
    // Postgres answers 'N' on unix sockets, so `require` would fail there; libpq skips
    // TLS on them. (A list mixing unix and TCP hosts keeps the mode for all.)
    let encryption = if is_unix_only {
        Encryption::Off
    } else {
        tls.first_attempt()
    };
    config.ssl_mode(encryption.driver_mode());
    config.channel_binding(tls.channel_binding().driver_mode());
}

/// `connect_timeout` from the URL, else [`CONNECT_TIMEOUT`].
fn connect_timeout(config: &Config) -> Duration {
    config
        .get_connect_timeout()
        .copied()
        .unwrap_or(CONNECT_TIMEOUT)
}

/// `connect_timeout` for each host tokio-postgres may try (libpq's `connect_timeout` is per
/// host too).
fn sql_connect_timeout(config: &Config) -> Duration {
    let hosts = u32::try_from(config.get_hosts().len()).unwrap_or(u32::MAX);
    connect_timeout(config).saturating_mul(hosts.max(1))
}

/// The first host, for messages.
fn host_name(config: &Config) -> String {
    match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        Some(Host::Unix(dir)) => dir.display().to_string(),
        None => String::new(),
    }
}

/// The replication connection's login, from the SQL config's first host.
fn replication_endpoint(config: &Config) -> Result<ReplicationEndpoint, PgPortError> {
    let invalid = |what: &str| PgPortError::Config {
        what: what.to_owned(),
    };
    let host = match (config.get_hosts().first(), config.get_hostaddrs().first()) {
        (Some(Host::Tcp(host)), Some(addr)) => Endpoint::Tcp {
            address: addr.to_string(),
            tls_name: host.clone(),
        },
        (_, Some(addr)) => Endpoint::Tcp {
            address: addr.to_string(),
            tls_name: addr.to_string(),
        },
        (Some(Host::Tcp(host)), None) => Endpoint::Tcp {
            address: host.clone(),
            tls_name: host.clone(),
        },
        (Some(Host::Unix(dir)), None) => Endpoint::Unix(dir.clone()),
        (None, None) => return Err(invalid("it names no host")),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config
        .get_user()
        .ok_or_else(|| invalid("it names no user"))?;
    let database = config.get_dbname().unwrap_or(user);
    let mut replication = ReplicationConfig::new(user, database);
    if let Some(password) = config.get_password() {
        let password = String::from_utf8(password.to_vec())
            .map_err(|_| invalid("the password is not UTF-8"))?;
        replication.password = Some(password);
    }
    if let Some(name) = config.get_application_name() {
        name.clone_into(&mut replication.application_name);
    }
    Ok(ReplicationEndpoint {
        host,
        port,
        config: replication,
    })
}

/// An open replication stream, for the core.
pub struct RealReplicationStream {
    inner: replication::ReplicationStream<PgSocket>,
}

impl RealReplicationStream {
    /// The walsender's process id, as in `pg_stat_replication.pid`.
    pub fn backend_pid(&self) -> i32 {
        self.inner.backend_pid()
    }

    /// Sends Terminate and closes the connection (§1.16 step 3; send the final standby status
    /// first). Then terminate [`Self::backend_pid`] in case the close is slow.
    pub async fn close(self) -> Result<(), PgPortError> {
        self.inner
            .close()
            .await
            .map_err(repl("closing the replication connection"))
    }
}

impl ReplicationStream for RealReplicationStream {
    type Error = PgPortError;

    /// Cancel-safe because the inner `recv` is, and nothing is awaited after it.
    async fn recv(&mut self) -> Result<ReplicationMessage, Self::Error> {
        let message = self
            .inner
            .recv()
            .await
            .map_err(repl("receiving replication"))?;
        Ok(match message {
            replication::ReplicationMessage::XLogData {
                wal_start,
                wal_end,
                data,
                ..
            } => ReplicationMessage::XLogData {
                wal_start,
                wal_end,
                data,
            },
            replication::ReplicationMessage::PrimaryKeepalive {
                wal_end,
                reply_requested,
                ..
            } => ReplicationMessage::PrimaryKeepalive {
                wal_end,
                reply_requested,
            },
        })
    }

    fn send_status(
        &mut self,
        status: StandbyStatus,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + '_ {
        let status = replication::StandbyStatus {
            write: status.write,
            flush: status.flush,
            apply: status.apply,
            client_clock_micros: replication::pg_clock_micros(SystemTime::now()),
            reply_requested: status.reply_requested,
        };
        async move {
            self.inner
                .send_standby_status(status)
                .await
                .map_err(repl("sending standby status"))
        }
    }
}

/// Why a Postgres operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PgPortError {
    /// `DATABASE_URL` does not parse.
    #[error("invalid DATABASE_URL")]
    ConfigParse(#[source] tokio_postgres::Error),
    /// `DATABASE_URL` parses but cannot be used.
    #[error("unusable DATABASE_URL: {what}")]
    Config {
        /// What is wrong with it.
        what: String,
    },
    /// A socket parameter of a database URL is not a number.
    #[error(transparent)]
    UrlTcp(#[from] UrlTcpError),
    /// `ELECTRIC_POOLED_DATABASE_URL` (or `ELECTRIC_QUERY_DATABASE_URL`) cannot be used; the
    /// source says why, in `DATABASE_URL`'s words.
    #[error("unusable ELECTRIC_POOLED_DATABASE_URL (or ELECTRIC_QUERY_DATABASE_URL)")]
    PooledUrl(#[source] Box<Self>),
    /// A query or an SQL connection failed.
    #[error("{during} failed")]
    Sql {
        /// What was being done.
        during: &'static str,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The replication connection failed.
    #[error("{during} failed")]
    Replication {
        /// What was being done.
        during: &'static str,
        /// The replication connection's error.
        #[source]
        source: ReplicationError,
    },
    /// A catalog lookup failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// TLS cannot be set up, or the server and `sslmode` disagree (the message names the fix).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Connecting (TCP, TLS handshake and login) took longer than `connect_timeout`.
    #[error("{during} timed out after {timeout:?} (connect_timeout)")]
    ConnectTimeout {
        /// Which connection.
        during: &'static str,
        /// The bound.
        timeout: Duration,
    },
    /// Logical replication is off.
    #[error(
        "wal_level is {wal_level:?} but logical replication needs \"logical\": set wal_level = \
         logical in postgresql.conf (or ALTER SYSTEM SET wal_level = logical) and restart \
         PostgreSQL"
    )]
    WalLevel {
        /// The server's `wal_level`.
        wal_level: String,
    },
    /// The role may not open a replication connection.
    #[error(
        "role {user:?} lacks the REPLICATION attribute: as a superuser run ALTER ROLE {} WITH \
         REPLICATION",
        sql_role(user)
    )]
    ReplicationRole {
        /// The role ampere logs in as.
        user: String,
    },
    /// The server is older than PostgreSQL 14, which Electric and ampere need.
    #[error(
        "PostgreSQL {}.{} is not supported: ampere needs PostgreSQL 14 or later (upgrade the \
         server, or point DATABASE_URL at one)",
        server_version_num / 10_000,
        server_version_num % 10_000
    )]
    ServerVersion {
        /// `server_version_num` (`130023` for 13.23).
        server_version_num: u32,
    },
    /// The publication cannot be created and the existing one is unusable (SL-1).
    #[error("publication {publication:?} is unusable: {missing}")]
    Publication {
        /// The publication's name.
        publication: String,
        /// What is missing.
        missing: String,
    },
    /// The slot exists for another database, or is a physical slot (SL-2).
    #[error(
        "replication slot {slot:?} belongs to database {slot_database:?}, not {database:?}: \
         use another replication stream id or drop the slot"
    )]
    SlotInOtherDatabase {
        /// The slot's name.
        slot: String,
        /// Its database (`None` for a physical slot).
        slot_database: Option<String>,
        /// Ours.
        database: String,
    },
    /// The slot was dropped or recreated concurrently while being set up.
    #[error("replication slot {slot:?} changed concurrently during setup")]
    SlotVanished {
        /// The slot's name.
        slot: String,
    },
    /// A slot name that SQL on a walsender cannot carry (it is inlined there, LK-3).
    #[error(
        "replication slot name {slot:?} is not 1 to 63 characters of [a-z0-9_] (NM-2): it \
         cannot be used as a slot name or inlined as a literal"
    )]
    InvalidSlotName {
        /// The refused name.
        slot: String,
    },
    /// Walsenders kept streaming from the slot while cleanup tried to drop it.
    #[error(
        "replication slot {slot:?} stayed active for {waited:?} although its walsenders were \
         terminated: stop every instance using it, then retry"
    )]
    SlotBusy {
        /// The slot's name.
        slot: String,
        /// How long cleanup tried.
        waited: Duration,
    },
    /// A query answered something of an unexpected shape.
    #[error("{during}: unexpected result: {what}")]
    Unexpected {
        /// What was being done.
        during: &'static str,
        /// What was wrong.
        what: &'static str,
    },
}

impl PgError for PgPortError {
    fn kind(&self) -> DisconnectKind {
        match self {
            Self::PooledUrl(source) => source.kind(),
            Self::ConfigParse(_)
            | Self::Config { .. }
            | Self::UrlTcp(_)
            | Self::WalLevel { .. }
            | Self::ReplicationRole { .. }
            | Self::ServerVersion { .. }
            | Self::Publication { .. }
            | Self::SlotInOtherDatabase { .. }
            | Self::InvalidSlotName { .. } => DisconnectKind::Fatal,
            Self::Sql { source, .. } => sql_error_kind(source),
            Self::Replication { source, .. } => match source.kind() {
                ReplicationErrorKind::Transient => DisconnectKind::Transient,
                ReplicationErrorKind::Fatal => DisconnectKind::Fatal,
            },
            Self::Catalog(e) => e
                .postgres_error()
                .map_or(DisconnectKind::Transient, sql_error_kind),
            Self::Tls(e) => e.kind(),
            Self::ConnectTimeout { .. }
            | Self::SlotVanished { .. }
            | Self::SlotBusy { .. }
            | Self::Unexpected { .. } => DisconnectKind::Transient,
        }
    }
}

impl PgPortError {
    /// The server refused the login with SQLSTATE 28000 (what `sslmode=allow` retries with
    /// TLS): `pg_hba.conf` has no line admitting it, for one none without TLS. The code, not the
    /// message, which the server may have localised.
    fn is_login_refused(&self) -> bool {
        match self {
            Self::Tls(TlsError::RequiredByServer { .. }) => true,
            Self::Sql { source, .. } => sqlstate(source) == Some(tls::LOGIN_REFUSED),
            Self::Replication { source, .. } => source.code() == Some(tls::LOGIN_REFUSED),
            _ => false,
        }
    }

    /// A TLS handshake that failed at the TLS level ([`TlsError::is_handshake_failure`]), on
    /// either kind of connection: our connector's error comes inside the driver's.
    fn is_tls_handshake_failure(&self) -> bool {
        let tls = match self {
            Self::Tls(e) => Some(e),
            Self::Sql { source, .. } => {
                std::error::Error::source(source).and_then(|e| e.downcast_ref::<TlsError>())
            }
            _ => None,
        };
        tls.is_some_and(TlsError::is_handshake_failure)
    }
}

/// Deploy-semantics RC-1 for the SQL driver's errors: configuration problems (authentication,
/// privileges, missing database, `wal_level`, TLS, bad configuration) are fatal; everything else
/// (refused, reset or timed-out connections, 57P01, 55006, 53300, …) is worth retrying.
pub(crate) fn sql_error_kind(error: &tokio_postgres::Error) -> DisconnectKind {
    if let Some(db) = error.as_db_error() {
        let code = db.code().code();
        let fatal = code.starts_with("28")
            || matches!(code, "42501" | "3D000")
            || (code == "55000" && db.message().contains("wal_level"));
        return if fatal {
            DisconnectKind::Fatal
        } else {
            DisconnectKind::Transient
        };
    }
    // Our TLS connector's errors classify themselves (a reset mid-handshake is transient).
    let tls = std::error::Error::source(error).and_then(|e| e.downcast_ref::<TlsError>());
    if let Some(tls) = tls {
        return tls.kind();
    }
    // tokio-postgres exposes its error kind only through Display.
    let text = error.to_string();
    let fatal = [
        "invalid configuration",
        "invalid connection string",
        "authentication error",
        "error performing TLS handshake",
    ]
    .iter()
    .any(|prefix| text.starts_with(prefix));
    if fatal {
        DisconnectKind::Fatal
    } else {
        DisconnectKind::Transient
    }
}

/// Wraps a SQL error with what was being done.
pub(crate) fn sql(during: &'static str) -> impl Fn(tokio_postgres::Error) -> PgPortError {
    move |source| PgPortError::Sql { during, source }
}

fn repl(during: &'static str) -> impl Fn(ReplicationError) -> PgPortError {
    move |source| PgPortError::Replication { during, source }
}

/// A role name as `ALTER ROLE` takes it: bare when that keeps it, else quoted.
fn sql_role(user: &str) -> String {
    let mut chars = user.chars();
    let bare = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if bare {
        user.to_owned()
    } else {
        quote_ident(user)
    }
}

/// The replication connection's socket: TCP, TLS over TCP, or a unix socket when
/// `DATABASE_URL` names a socket directory.
enum PgSocket {
    Tcp(TcpStream),
    /// Boxed: rustls's connection state is large.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Unix(UnixStream),
}

impl AsyncRead for PgSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PgSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_leave_one_pooled_connection_for_other_sql_unless_the_pool_has_one() {
        let slots = |n| snapshot_slots(PoolSize::new(n).unwrap());
        assert_eq!(slots(1), 1);
        assert_eq!(slots(2), 1);
        assert_eq!(slots(20), 19);
    }

    #[test]
    fn database_urls_give_the_replication_login() {
        let pg = RealPg::from_url("postgresql://amp:secret@db.example:6543/app").unwrap();
        let endpoint = &pg.inner.replication;
        assert!(matches!(&endpoint.host,
            Endpoint::Tcp { address, tls_name } if address == "db.example" && tls_name == address));
        assert_eq!(endpoint.port, 6543);
        assert_eq!(endpoint.config.user, "amp");
        assert_eq!(endpoint.config.password.as_deref(), Some("secret"));
        assert_eq!(endpoint.config.database, "app");
        assert_eq!(pg.inner.sql.get_connect_timeout(), Some(&CONNECT_TIMEOUT));

        let pg = RealPg::from_url("host=/var/run/postgresql user=amp").unwrap();
        assert!(matches!(&pg.inner.replication.host, Endpoint::Unix(_)));
        assert_eq!(pg.database(), "amp");
        assert_eq!(pg.inner.replication.port, 5432);
    }

    #[test]
    fn hostaddr_is_dialled_and_host_is_verified() {
        let pg = RealPg::from_url("host=db.example hostaddr=10.0.0.7 user=amp").unwrap();
        let Endpoint::Tcp { address, tls_name } = &pg.inner.replication.host else {
            panic!("a TCP endpoint");
        };
        assert_eq!(
            (address.as_str(), tls_name.as_str()),
            ("10.0.0.7", "db.example")
        );
        // without `host`, the address is what TLS verifies (tokio-postgres needs a host for it)
        let pg = RealPg::from_url("hostaddr=10.0.0.7 user=amp").unwrap();
        assert!(matches!(pg.inner.sql.get_hosts(), [Host::Tcp(h)] if h == "10.0.0.7"));
    }

    #[test]
    fn sslmode_sets_the_drivers_first_attempt_and_unix_sockets_skip_tls() {
        use tokio_postgres::config::SslMode as Driver;
        let mode = |url: &str| RealPg::from_url(url).unwrap().inner.sql.get_ssl_mode();
        assert_eq!(mode("postgresql://amp@db/app"), Driver::Prefer);
        assert_eq!(
            mode("postgresql://amp@db/app?sslmode=disable"),
            Driver::Disable
        );
        assert_eq!(
            mode("postgresql://amp@db/app?sslmode=allow"),
            Driver::Disable
        );
        assert_eq!(
            mode("postgresql://amp@db/app?sslmode=require"),
            Driver::Require
        );
        assert_eq!(
            mode("host=/run/postgresql user=amp sslmode=require"),
            Driver::Disable
        );
    }

    #[test]
    fn tls_parameters_leave_the_url_and_unknown_ones_are_ignored() {
        let parts = split_database_url(
            "postgresql://u:p%3Fw@db:5432/app?sslmode=verify-full&pgbouncer=true\
             &sslrootcert=%2Fetc%2Fca.pem&connect_timeout=5&sslsni=1&pgbouncer=1\
             &gssencmode=prefer&sslcrl=",
        )
        .unwrap();
        assert_eq!(
            parts.driver,
            "postgresql://u:p%3Fw@db:5432/app?connect_timeout=5"
        );
        let tls = [("sslmode", "verify-full"), ("sslrootcert", "/etc/ca.pem")];
        let tls: Vec<_> = tls
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        assert_eq!(parts.tls, tls);
        assert_eq!(
            parts.ignored,
            ["pgbouncer", "sslsni", "gssencmode", "sslcrl"]
        );

        // a `?` in the password is not the query
        let parts = split_database_url("postgres://u:a?b@db/app?sslmode=require").unwrap();
        assert_eq!(parts.driver, "postgres://u:a?b@db/app");
        assert_eq!(parts.tls.len(), 1);
        let parts = split_database_url("postgres://u:a?b@db/app").unwrap();
        assert_eq!(parts.driver, "postgres://u:a?b@db/app");
        assert!(parts.tls.is_empty());

        let text = r"host=db user=amp password='it\'s a \\ b' sslmode = require pgbouncer=true";
        let parts = split_database_url(&format!("{text} channel_binding=require")).unwrap();
        assert_eq!(parts.ignored, ["pgbouncer"]);
        let tls = [("sslmode", "require"), ("channel_binding", "require")];
        let tls: Vec<_> = tls
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        assert_eq!(parts.tls, tls);
        let config: Config = parts.driver.parse().unwrap();
        assert_eq!(config.get_password(), Some(&br"it's a \ b"[..]));
        assert_eq!(config.get_user(), Some("amp"));
    }

    #[test]
    fn url_parts_debug_hides_the_password() {
        let parts = split_database_url("postgresql://u:hunter2@db/app?sslmode=require").unwrap();
        let debug = format!("{parts:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("sslmode"), "{debug}");
    }

    #[test]
    fn parameters_asking_for_protection_ampere_lacks_stop_startup() {
        // Goal: revocation lists and GSSAPI encryption are not silently dropped; libpq's
        // defaults (gssencmode=prefer, an empty sslcrl) still pass.
        for (param, named) in [
            ("sslcrl=%2Fetc%2Fcrl.pem", "sslcrl"),
            ("sslcrldir=%2Fetc%2Fcrl", "sslcrldir"),
            ("gssencmode=require", "gssencmode=require"),
        ] {
            let url = format!("postgresql://amp@db/app?sslmode=require&{param}");
            let err = RealPg::from_url(&url).err().unwrap();
            assert_eq!(err.kind(), DisconnectKind::Fatal, "{param}");
            let message = err.to_string();
            assert!(message.contains(named), "{param}: {message}");
        }
        let err = RealPg::from_url("host=db user=amp sslcrl=/etc/crl.pem")
            .err()
            .unwrap();
        assert!(err.to_string().contains("revocation lists"), "{err}");
        for url in [
            "postgresql://amp@db/app?gssencmode=prefer&gssencmode=disable",
            "postgresql://amp@db/app?sslcrl=",
        ] {
            assert!(RealPg::from_url(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn channel_binding_reaches_both_connections() {
        use tokio_postgres::config::ChannelBinding as Driver;
        let pg = |url: &str| RealPg::from_url(url).unwrap();
        let default = pg("postgresql://amp@db/app");
        assert_eq!(default.inner.sql.get_channel_binding(), Driver::Prefer);
        assert_eq!(
            default.inner.replication.config.channel_binding,
            ChannelBindingMode::Prefer
        );
        let required = pg("postgresql://amp@db/app?sslmode=require&channel_binding=require");
        assert_eq!(required.inner.sql.get_channel_binding(), Driver::Require);
        assert_eq!(
            required.inner.replication.config.channel_binding,
            ChannelBindingMode::Require
        );
        let disabled = pg("host=db user=amp channel_binding=disable");
        assert_eq!(disabled.inner.sql.get_channel_binding(), Driver::Disable);
        // require without TLS can never log in: a startup error naming both settings
        let err =
            RealPg::from_url("postgresql://amp@db/app?sslmode=disable&channel_binding=require")
                .err()
                .unwrap();
        assert_eq!(err.kind(), DisconnectKind::Fatal);
        let message = err.to_string();
        assert!(
            message.contains("channel_binding=require") && message.contains("sslmode=disable"),
            "{message}"
        );
        let err = RealPg::from_url("postgresql://amp@db/app?channel_binding=yes")
            .err()
            .unwrap();
        assert!(err.to_string().contains("channel_binding=yes"), "{err}");
    }

    #[test]
    fn key_value_text_only_the_driver_can_split_is_refused_not_downgraded() {
        // Goal: a `key=value` DATABASE_URL whose sslmode=require ampere cannot read never
        // connects with the default prefer. Method: a trailing backslash, which tokio-postgres
        // drops and ampere's tokenizer refuses.
        let url = r"host=db user=amp sslmode=require password=s3cret\";
        assert!(url.parse::<Config>().is_ok(), "the driver reads it");
        let err = RealPg::from_url(url).err().unwrap();
        assert_eq!(err.kind(), DisconnectKind::Fatal);
        let message = err.to_string();
        assert!(
            message.contains("key=value") && message.contains("sslmode"),
            "{message}"
        );
        assert!(!message.contains("s3cret"), "{message}");
        // text the driver refuses too keeps the driver's error
        let err = RealPg::from_url("host=db user='amp").err().unwrap();
        assert!(matches!(err, PgPortError::ConfigParse(_)), "{err:?}");
    }

    #[test]
    fn urls_with_ignored_parameters_still_connect_where_they_pointed() {
        let pg = RealPg::from_url(
            "postgresql://amp@db.example/app?pgbouncer=true&sslmode=require&sslnegotiation=direct",
        )
        .unwrap();
        assert_eq!(pg.database(), "app");
        assert_eq!(pg.inner.tls.mode(), SslMode::Require);
        let bad = RealPg::from_url("postgresql://amp@db/app?sslmode=sometimes")
            .err()
            .unwrap();
        assert_eq!(bad.kind(), DisconnectKind::Fatal);
        assert!(bad.to_string().contains("sslmode=sometimes"), "{bad}");
    }

    /// What a fake server does with one connection.
    enum Fake {
        /// Answers the SSLRequest with 'N'.
        RefuseSsl,
        /// Answers the SSLRequest with 'S', then sends what is not TLS.
        BadTls,
        /// Refuses the plaintext startup packet with SQLSTATE 28000 and this message.
        RefuseLogin(&'static str),
        /// Lets the plaintext startup packet in (trust).
        AcceptLogin,
        /// Accepts the connection and never answers.
        Stall,
    }

    /// What `pg_hba.conf` without a plaintext line makes PG >= 14 answer.
    const NO_ENCRYPTION: &str =
        "no pg_hba.conf entry for host \"127.0.0.1\", user \"amp\", database \"app\", no encryption";

    /// A fake Postgres on a free port, serving one connection per step (and keeping each open
    /// until the test ends); its port.
    async fn fake_postgres(steps: Vec<Fake>) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const SSL_REQUEST_CODE: i32 = 80_877_103;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            for step in steps {
                let (mut socket, _) = listener.accept().await.unwrap();
                if matches!(step, Fake::Stall) {
                    held.push(socket);
                    continue;
                }
                let mut head = [0_u8; 8];
                socket.read_exact(&mut head).await.unwrap();
                let is_ssl_request = head[4..] == SSL_REQUEST_CODE.to_be_bytes();
                let reply = match step {
                    Fake::RefuseSsl => {
                        assert!(is_ssl_request, "expected an SSLRequest");
                        b"N".to_vec()
                    }
                    Fake::BadTls => {
                        assert!(is_ssl_request, "expected an SSLRequest");
                        b"S-- this is not a TLS record --\r\n".to_vec()
                    }
                    Fake::RefuseLogin(_) | Fake::AcceptLogin => {
                        assert!(!is_ssl_request, "expected a plaintext startup packet");
                        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
                        let mut rest = vec![0; usize::try_from(len).unwrap() - head.len()];
                        socket.read_exact(&mut rest).await.unwrap();
                        match step {
                            Fake::RefuseLogin(message) => login_refused(message),
                            _ => {
                                [message(b'R', &0_i32.to_be_bytes()), message(b'Z', b"I")].concat()
                            }
                        }
                    }
                    Fake::Stall => unreachable!("handled above"),
                };
                socket.write_all(&reply).await.unwrap();
                held.push(socket);
            }
            std::future::pending::<()>().await;
        });
        port
    }

    /// One backend message.
    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    /// The ErrorResponse of a login `pg_hba.conf` refuses (SQLSTATE 28000).
    fn login_refused(text: &str) -> Vec<u8> {
        let mut fields = b"SFATAL\0VFATAL\0C28000\0M".to_vec();
        fields.extend_from_slice(text.as_bytes());
        fields.extend_from_slice(b"\0\0");
        message(b'E', &fields)
    }

    #[tokio::test]
    async fn a_replication_connection_told_n_under_require_names_the_fix() {
        let port = fake_postgres(vec![Fake::RefuseSsl]).await;
        let url = format!("postgresql://amp@127.0.0.1:{port}/app?sslmode=require");
        let err = RealPg::from_url(&url).unwrap().open_replication().await;
        let err = err.err().unwrap();
        assert_eq!(err.kind(), DisconnectKind::Fatal, "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains("does not support SSL; use sslmode=disable or enable ssl"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_plaintext_replication_connection_refused_names_the_fix_and_allow_retries_with_tls() {
        let port = fake_postgres(vec![Fake::RefuseLogin(NO_ENCRYPTION)]).await;
        let url = format!("postgresql://amp@127.0.0.1:{port}/app?sslmode=disable");
        let err = RealPg::from_url(&url).unwrap().open_replication().await;
        let err = err.err().unwrap();
        assert_eq!(err.kind(), DisconnectKind::Fatal, "{err:?}");
        let message = err.to_string();
        assert!(message.contains("no encryption"), "{message}");
        assert!(message.contains("use sslmode=require"), "{message}");

        // allow: the second attempt asks for TLS (refused here, so its error is the last word)
        let port = fake_postgres(vec![Fake::RefuseLogin(NO_ENCRYPTION), Fake::RefuseSsl]).await;
        let url = format!("postgresql://amp@127.0.0.1:{port}/app?sslmode=allow");
        let err = RealPg::from_url(&url).unwrap().open_replication().await;
        let err = err.err().unwrap();
        assert!(err.to_string().contains("does not support SSL"), "{err}");
    }

    #[tokio::test]
    async fn allow_retries_with_tls_on_sqlstate_28000_in_any_language() {
        // Goal: allow's TLS retry follows the SQLSTATE, not English text. Method: a server
        // that refuses the plaintext login in German and answers the SSLRequest with 'N'
        // (whose error shows that the retry asked for TLS), for both kinds of connection.
        const GERMAN: &str = "kein pg_hba.conf-Eintrag für Host »127.0.0.1«, Benutzer »amp«, \
                              Datenbank »app«, keine Verschlüsselung";
        let steps = || vec![Fake::RefuseLogin(GERMAN), Fake::RefuseSsl];
        let port = fake_postgres(steps()).await;
        let url = format!("postgresql://amp@127.0.0.1:{port}/app?sslmode=allow");
        let err = RealPg::from_url(&url).unwrap().admin().await.err().unwrap();
        assert!(
            err.to_string().contains("does not support SSL"),
            "SQL: {err}"
        );
        let port = fake_postgres(steps()).await;
        let url = format!("postgresql://amp@127.0.0.1:{port}/app?sslmode=allow");
        let err = RealPg::from_url(&url).unwrap().open_replication().await;
        let err = err.err().unwrap();
        assert!(
            err.to_string().contains("does not support SSL"),
            "replication: {err}"
        );
    }

    #[tokio::test]
    async fn prefer_without_roots_retries_in_plaintext_after_a_failed_handshake() {
        // Goal: libpq's prefer: a server that says 'S' but whose TLS fails still gets a
        // plaintext login, on both kinds of connection, when nothing was to be verified.
        // Method: a fake that answers 'S' and then sends what is not TLS, then lets the
        // plaintext login in.
        let port = fake_postgres(vec![Fake::BadTls, Fake::AcceptLogin]).await;
        let url = format!("postgresql://amp@127.0.0.1:{port}/app");
        let pg = RealPg::from_url(&url).unwrap();
        pg.connect_sql("test").await.expect("SQL in plaintext");
        let port = fake_postgres(vec![Fake::BadTls, Fake::AcceptLogin]).await;
        let url = format!("postgresql://amp@127.0.0.1:{port}/app?sslmode=prefer");
        let pg = RealPg::from_url(&url).unwrap();
        pg.open_replication()
            .await
            .expect("replication in plaintext");
    }

    #[tokio::test]
    async fn prefer_with_roots_or_channel_binding_required_never_downgrades() {
        // Goal: a root certificate asks for verification, and channel_binding=require for a
        // TLS session: neither is given up for plaintext when the handshake fails.
        let ca = rcgen::generate_simple_self_signed(vec!["ca".to_owned()]).unwrap();
        let ca_file =
            std::env::temp_dir().join(format!("ampere-pg-test-ca-{}.pem", std::process::id()));
        std::fs::write(&ca_file, ca.cert.pem()).unwrap();
        let roots = format!("sslrootcert={}", ca_file.display());
        for params in [roots.as_str(), "channel_binding=require"] {
            let port = fake_postgres(vec![Fake::BadTls, Fake::BadTls]).await;
            let url = format!("postgresql://amp@127.0.0.1:{port}/app?sslmode=prefer&{params}");
            let pg = RealPg::from_url(&url).unwrap();
            let err = pg.connect_sql("test").await.err().unwrap();
            assert!(err.is_tls_handshake_failure(), "SQL, {params}: {err:?}");
            let err = pg.open_replication().await.err().unwrap();
            assert!(
                err.is_tls_handshake_failure(),
                "replication, {params}: {err:?}"
            );
            // a garbled TLS message may be a proxy's hiccup: retried, not fatal
            assert_eq!(err.kind(), DisconnectKind::Transient, "{err:?}");
        }
        std::fs::remove_file(&ca_file).unwrap();
    }

    #[tokio::test]
    async fn a_server_stalling_the_handshake_times_out_as_transient() {
        // Goal: connect_timeout bounds the whole SQL connect, TLS and login included (the
        // driver's bounds only the TCP connect), and the wait of a pool checkout with it.
        let port = fake_postgres(vec![Fake::Stall, Fake::Stall]).await;
        let url = format!("postgresql://amp@127.0.0.1:{port}/app?connect_timeout=1");
        let pg = RealPg::from_url(&url).unwrap();
        let started = std::time::Instant::now();
        let err = pg.admin().await.err().unwrap();
        assert!(matches!(err, PgPortError::ConnectTimeout { .. }), "{err:?}");
        assert_eq!(err.kind(), DisconnectKind::Transient);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        let err = pg.open_replication().await.err().unwrap();
        assert!(matches!(err, PgPortError::ConnectTimeout { .. }), "{err:?}");
    }

    #[test]
    fn the_pooled_url_serves_sql_and_database_url_replication() {
        let options = PgOptions {
            pooled_database_url: Some("postgresql://pooler@bouncer.example:6432/app".into()),
            ..PgOptions::default()
        };
        let pg = RealPg::with_options("postgresql://amp@db.example/app", &options).unwrap();
        let (sql, _) = pg.sql_target();
        assert!(matches!(sql.get_hosts(), [Host::Tcp(h)] if h == "bouncer.example"));
        assert_eq!(
            (sql.get_user(), sql.get_ports()),
            (Some("pooler"), &[6432][..])
        );
        assert_eq!(sql.get_application_name(), Some("ampere"));
        assert!(matches!(&pg.inner.replication.host,
            Endpoint::Tcp { address, .. } if address == "db.example"));
        assert_eq!(pg.user(), "amp");
    }

    #[test]
    fn socket_parameters_leave_the_driver_url_and_bad_ones_name_themselves() {
        let parts = split_database_url(
            "postgresql://amp@db/app?keepalives_idle=30&tcp_user_timeout=1500&connect_timeout=5",
        )
        .unwrap();
        assert_eq!(parts.driver, "postgresql://amp@db/app?connect_timeout=5");
        // libpq's unit: milliseconds (tokio-postgres alone would read 1500 s)
        let pg = RealPg::from_url("postgresql://amp@db/app?tcp_user_timeout=1500").unwrap();
        assert_eq!(pg.inner.tcp.user_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(
            pg.inner.sql.get_tcp_user_timeout(),
            Some(&Duration::from_millis(1500))
        );
        let err = RealPg::from_url("host=db user=amp keepalives_idle=abc")
            .err()
            .unwrap();
        assert_eq!(err.kind(), DisconnectKind::Fatal);
        assert!(err.to_string().contains("keepalives_idle=\"abc\""), "{err}");
    }

    #[test]
    fn an_unusable_pooled_url_is_fatal_and_names_its_variable() {
        let options = PgOptions {
            pooled_database_url: Some("postgresql://amp@pooler/app?sslmode=sometimes".into()),
            ..PgOptions::default()
        };
        let err = RealPg::with_options("postgresql://amp@db/app", &options)
            .err()
            .unwrap();
        assert!(matches!(err, PgPortError::PooledUrl(_)), "{err:?}");
        assert_eq!(err.kind(), DisconnectKind::Fatal);
        let chain = error_chain(&err);
        assert!(
            chain.contains("ELECTRIC_POOLED_DATABASE_URL") && chain.contains("sslmode=sometimes"),
            "{chain}"
        );
    }

    #[test]
    fn unusable_urls_are_fatal() {
        let no_user = RealPg::from_url("postgresql://db.example/app")
            .err()
            .unwrap();
        assert_eq!(no_user.kind(), DisconnectKind::Fatal);
        let garbage = RealPg::from_url("postgresql://a:b:c@").err().unwrap();
        assert_eq!(garbage.kind(), DisconnectKind::Fatal);
    }

    #[test]
    fn slot_literals_allow_only_postgres_slot_names() {
        assert_eq!(
            slot_literal("electric_slot_default_2").unwrap(),
            "'electric_slot_default_2'"
        );
        assert!(slot_literal(&"a".repeat(SLOT_NAME_MAX)).is_ok());
        let long = "a".repeat(SLOT_NAME_MAX + 1);
        for bad in ["", "a'b", "A", "a-b", "a b", "é", long.as_str()] {
            let err = slot_literal(bad).unwrap_err();
            assert_eq!(err.kind(), DisconnectKind::Fatal, "{bad:?}");
        }
    }

    #[test]
    fn session_settings_parse_the_lk3_row() {
        let row = |v: &str, p: &str| vec![vec![Some(v.into()), Some(p.into()), None]];
        let settings = SessionSettings::parse(row("170002", "4242")).unwrap();
        assert_eq!(settings.server_version_num, 170_002);
        assert_eq!(settings.backend_pid, 4242);
        assert!(SessionSettings::parse(row("17", "x")).is_err());
        assert!(SessionSettings::parse(Vec::new()).is_err());
    }

    #[test]
    fn a_server_older_than_14_is_refused_naming_its_version_and_fatal() {
        let e = PgPortError::ServerVersion {
            server_version_num: 130_023,
        };
        assert_eq!(
            e.to_string(),
            "PostgreSQL 13.23 is not supported: ampere needs PostgreSQL 14 or later (upgrade the \
             server, or point DATABASE_URL at one)"
        );
        assert_eq!(e.kind(), DisconnectKind::Fatal);
    }

    #[test]
    fn role_fix_names_the_role_as_sql() {
        let e = PgPortError::ReplicationRole {
            user: "ampere".into(),
        };
        assert!(
            e.to_string().contains("ALTER ROLE ampere WITH REPLICATION"),
            "{e}"
        );
        let e = PgPortError::ReplicationRole {
            user: "Amp Ere".into(),
        };
        assert!(
            e.to_string()
                .contains("ALTER ROLE \"Amp Ere\" WITH REPLICATION"),
            "{e}"
        );
    }
}
