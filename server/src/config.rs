//! Configuration from Electric's environment variables (and matching `--flags`), so ampere
//! drops into existing deployments. Invalid values stop startup with one line naming the
//! variable and the accepted form.
//!
//! [`VARIABLES`] is the one list of every variable Electric reads and what ampere does with
//! it: honoured; ignored, saying what ampere does instead; or an older name of another. [`startup_warnings`] turns that list into exactly one warning per variable that is
//! set and not honoured, plus one per unknown `ELECTRIC_*` name (a probable typo). An ignored
//! variable never stops startup: its value is checked as Electric would, and a value Electric
//! would refuse only makes its warning say so. `docs/config.md` is rendered from the list
//! ([`reference_markdown`]; a test keeps the two equal).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ampere_core::ports::SlotPersistence;
use ampere_core::snapshot_steps::TablePublishing;
use ampere_io_real::metadata::Synchronous;
use ampere_io_real::pg::{PgOptions, PgPortError, RealPg};
use ampere_io_real::pool::PoolSize;
use ampere_io_real::tcp::TcpOptions;
use ampere_io_real::tls::TlsOptions;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use Grammar as G;
use Source::{Legacy, Reference, Runtime};

use crate::http::AdmissionLimits;

/// ampere: Postgres sync over Electric's HTTP shape protocol.
#[derive(Parser, Debug)]
#[command(name = "ampere", version, about, long_about = None)]
pub struct Cli {
    /// What to run (default: the service).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Service settings.
    #[command(flatten)]
    pub config: Config,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the sync service (the default).
    Serve,
    /// Drop this stream's replication slot and publication (an unused slot retains WAL
    /// forever), and with --storage the storage directory.
    Cleanup(CleanupArgs),
    /// Show this stream's replication slot, publication, lock holder and storage (read-only).
    Status(ReportArgs),
    /// Check that DATABASE_URL is ready for ampere before deploying (read-only).
    CheckDb(ReportArgs),
}

/// `ampere status` and `ampere check-db` options.
#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `ampere cleanup` options.
#[derive(Args, Debug, Clone)]
pub struct CleanupArgs {
    /// Also delete ELECTRIC_STORAGE_DIR.
    #[arg(long)]
    pub storage: bool,
    /// Really do it (without this, cleanup only says what it would do).
    #[arg(long)]
    pub yes: bool,
}

/// Service settings. Every flag also reads Electric's environment variable; [`VARIABLES`] says
/// which of them ampere honours.
#[derive(Args, Debug, Clone)]
pub struct Config {
    /// Postgres connection URL. Unset: start an embedded PostgreSQL inside the storage dir.
    /// `sslmode` (default prefer), `sslrootcert`, `sslcert`, `sslkey` and `channel_binding` as
    /// in libpq; protection ampere cannot give (`sslcrl`, `gssencmode=require`) stops startup,
    /// other parameters it does not use are ignored with a warning (docs/tls.md).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// PEM file of the CA(s) to verify the database server against. As in Electric, this turns
    /// full verification on (sslmode=verify-full, or verify-ca when DATABASE_URL says so).
    #[arg(long, env = "ELECTRIC_DATABASE_CA_CERTIFICATE_FILE")]
    pub database_ca_certificate_file: Option<PathBuf>,

    /// HTTP port for the shape API and /v1/health.
    #[arg(long, env = "ELECTRIC_PORT", default_value = "3000", value_parser = port("ELECTRIC_PORT"))]
    pub port: u16,

    /// Listen on `[::]` (IPv6 and, dual-stack, IPv4) instead of `0.0.0.0`.
    #[arg(long, env = "ELECTRIC_LISTEN_ON_IPV6", default_value = "false", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, value_parser = boolean("ELECTRIC_LISTEN_ON_IPV6"))]
    pub listen_on_ipv6: bool,

    /// An HTTP connection that waits this long for a request (before its first one, or after
    /// a response: the keep-alive idle timeout), or for the rest of a request's headers, is
    /// closed; a request body must arrive in full within it too (else 408).
    #[arg(long, env = "ELECTRIC_TCP_READ_TIMEOUT", default_value = "60s", value_parser = time("ELECTRIC_TCP_READ_TIMEOUT"))]
    pub tcp_read_timeout: Duration,

    /// A response write the client does not drain for this long closes the connection.
    #[arg(long, env = "ELECTRIC_TCP_SEND_TIMEOUT", default_value = "30s", value_parser = time("ELECTRIC_TCP_SEND_TIMEOUT"))]
    pub tcp_send_timeout: Duration,

    /// Where shape logs and metadata live (created if missing). `STORAGE_DIR`, its name
    /// before Electric 1.0, is read when this is unset.
    #[arg(long, env = "ELECTRIC_STORAGE_DIR", default_value = "./persistent")]
    pub storage_dir: PathBuf,

    /// Where the shape metadata database (`shapes.sqlite3`) lives, if not in the storage dir
    /// (for example local disk while shape logs are on NFS/EFS).
    #[arg(long, env = "ELECTRIC_SHAPE_DB_STORAGE_DIR", value_parser = shape_db_dir)]
    pub shape_db_storage_dir: Option<ShapeDbDir>,

    /// Secret clients must pass as `secret` (or `api_secret`).
    #[arg(long, env = "ELECTRIC_SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    /// Run without a secret (development only).
    #[arg(long, env = "ELECTRIC_INSECURE", default_value = "false", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, value_parser = boolean("ELECTRIC_INSECURE"))]
    pub insecure: bool,

    /// Names the slot `electric_slot_<id>` and publication `electric_publication_<id>`.
    #[arg(long, env = "ELECTRIC_REPLICATION_STREAM_ID", default_value = "default", value_parser = stream_id)]
    pub replication_stream_id: String,

    /// Long-poll timeout: milliseconds, or with a unit (`20s`).
    #[arg(long, env = "ELECTRIC_LONG_POLL_TIMEOUT", default_value = "20000", value_parser = time("ELECTRIC_LONG_POLL_TIMEOUT"))]
    pub long_poll_timeout: Duration,

    /// How long one live SSE response streams before it ends and the client reconnects
    /// (Electric: 60 s, not configurable there).
    #[arg(long, env = "AMPERE_SSE_TIMEOUT", default_value = "60s", value_parser = time("AMPERE_SSE_TIMEOUT"))]
    pub sse_timeout: Duration,

    /// Snapshot and log chunk size, in bytes.
    #[arg(long, env = "ELECTRIC_SHAPE_CHUNK_BYTES_THRESHOLD", default_value = "10485760", value_parser = positive_u64("ELECTRIC_SHAPE_CHUNK_BYTES_THRESHOLD"))]
    pub shape_chunk_bytes_threshold: u64,

    /// `max-age` of non-live responses, in seconds.
    #[arg(long, env = "ELECTRIC_CACHE_MAX_AGE", default_value = "60", value_parser = seconds("ELECTRIC_CACHE_MAX_AGE"))]
    pub cache_max_age: u32,

    /// `stale-while-revalidate` of non-live responses, in seconds.
    #[arg(long, env = "ELECTRIC_CACHE_STALE_AGE", default_value = "300", value_parser = seconds("ELECTRIC_CACHE_STALE_AGE"))]
    pub cache_stale_age: u32,

    /// Log level: emergency, alert, critical, error, warning, notice, info or debug.
    #[arg(long, env = "ELECTRIC_LOG_LEVEL", default_value = "info", value_parser = log_level)]
    pub log_level: LogLevel,

    /// Colour the log (default: when stdout, where it goes, is a terminal).
    #[arg(long, env = "ELECTRIC_LOG_COLORS", num_args = 0..=1, default_missing_value = "true", value_parser = boolean("ELECTRIC_LOG_COLORS"))]
    pub log_colors: Option<bool>,

    /// Use a TEMPORARY replication slot, dropped when ampere disconnects (every restart then
    /// starts from a new slot: clients refetch). For ephemeral storage.
    #[arg(long, env = "CLEANUP_REPLICATION_SLOTS_ON_SHUTDOWN", default_value = "false", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, value_parser = boolean("CLEANUP_REPLICATION_SLOTS_ON_SHUTDOWN"))]
    pub cleanup_replication_slots_on_shutdown: bool,

    /// With temporary slots: a random slot name per process. Instances then do not exclude
    /// each other (no shared lock), so each needs its own storage.
    #[arg(long, env = "ELECTRIC_TEMPORARY_REPLICATION_SLOT_USE_RANDOM_NAME", default_value = "false", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, value_parser = boolean("ELECTRIC_TEMPORARY_REPLICATION_SLOT_USE_RANDOM_NAME"))]
    pub temporary_replication_slot_use_random_name: bool,

    /// One exclusive SQLite connection with a rollback journal (for NFS/EFS storage).
    #[arg(long, env = "ELECTRIC_SHAPE_DB_EXCLUSIVE_MODE", default_value = "false", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, value_parser = boolean("ELECTRIC_SHAPE_DB_EXCLUSIVE_MODE"))]
    pub shape_db_exclusive_mode: bool,

    /// SQLite `synchronous` for the metadata database: OFF, NORMAL, FULL (EXTRA is FULL).
    #[arg(long, env = "ELECTRIC_SHAPE_DB_SYNCHRONOUS", default_value = "OFF", value_parser = synchronous)]
    pub shape_db_synchronous: Synchronous,

    /// SQLite page cache of the metadata database: bytes, or with KB, KiB, MB, MiB, GB, GiB.
    #[arg(long, env = "ELECTRIC_SHAPE_DB_CACHE_SIZE", default_value = "4096KiB", value_parser = size("ELECTRIC_SHAPE_DB_CACHE_SIZE"))]
    pub shape_db_cache_size: u64,

    /// Connection URL for the pool (snapshots and every SQL query); replication and its
    /// advisory lock use `DATABASE_URL`.
    #[arg(long, env = "ELECTRIC_POOLED_DATABASE_URL", hide_env_values = true, value_parser = postgres_url("ELECTRIC_POOLED_DATABASE_URL"))]
    pub pooled_database_url: Option<String>,

    /// SQL connections for snapshots and other queries, open at once at most.
    #[arg(long, env = "ELECTRIC_DB_POOL_SIZE", default_value = "20", value_parser = positive_u32("ELECTRIC_DB_POOL_SIZE"))]
    pub db_pool_size: u32,

    /// Open HTTP API connections at most (ampere's own; default: half the file descriptors
    /// left under RLIMIT_NOFILE after storage and Postgres, at most 65536). At the cap a new
    /// connection closes the oldest one waiting for a request, or is closed itself.
    #[arg(long, env = "AMPERE_MAX_CONNECTIONS", value_parser = positive_u32("AMPERE_MAX_CONNECTIONS"))]
    pub max_connections: Option<u32>,

    /// Shape requests handled at once at most, per kind, as Electric's JSON: "initial" ones
    /// (no handle yet: offset=-1 or now) and "existing" ones (the rest, live long-polls
    /// included). One more gets 503 with a random retry-after of 6 to 10 s.
    #[arg(long, env = "ELECTRIC_MAX_CONCURRENT_REQUESTS", default_value = r#"{"initial": 300, "existing": 10000}"#, value_parser = admission_limits)]
    pub max_concurrent_requests: AdmissionLimits,

    /// Live shapes at most (default: unlimited). Beyond it, the active instance removes the
    /// least recently used ones (by their last request, or creation) as `DELETE /v1/shape`
    /// does: their clients get 409 and sync again with a new handle.
    #[arg(long, env = "ELECTRIC_MAX_SHAPES", value_parser = positive_usize("ELECTRIC_MAX_SHAPES"))]
    pub max_shapes: Option<NonZeroUsize>,

    /// Let `DELETE /v1/shape` delete shapes (for test suites that reset state between cases);
    /// otherwise it answers 405.
    #[arg(long, env = "ELECTRIC_ENABLE_INTEGRATION_TESTING", default_value = "false", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, value_parser = boolean("ELECTRIC_ENABLE_INTEGRATION_TESTING"))]
    pub enable_integration_testing: bool,

    /// Serve Prometheus metrics (`/metrics`, docs/metrics.md) on this port; off when unset.
    #[arg(long, env = "ELECTRIC_PROMETHEUS_PORT", value_parser = port("ELECTRIC_PROMETHEUS_PORT"))]
    pub prometheus_port: Option<u16>,

    /// Leave the publication's table list and replica identities to the operator.
    #[arg(long, env = "ELECTRIC_MANUAL_TABLE_PUBLISHING", default_value = "false", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, value_parser = boolean("ELECTRIC_MANUAL_TABLE_PUBLISHING"))]
    pub manual_table_publishing: bool,

    /// TCP keepalive idle time on database connections.
    #[arg(long, env = "ELECTRIC_DATABASE_TCP_KEEPALIVE_IDLE", value_parser = time("ELECTRIC_DATABASE_TCP_KEEPALIVE_IDLE"))]
    pub database_tcp_keepalive_idle: Option<Duration>,

    /// TCP keepalive probe interval on database connections.
    #[arg(long, env = "ELECTRIC_DATABASE_TCP_KEEPALIVE_INTERVAL", value_parser = time("ELECTRIC_DATABASE_TCP_KEEPALIVE_INTERVAL"))]
    pub database_tcp_keepalive_interval: Option<Duration>,

    /// Unanswered TCP keepalive probes before a database connection drops.
    #[arg(long, env = "ELECTRIC_DATABASE_TCP_KEEPALIVE_COUNT", value_parser = positive_u32("ELECTRIC_DATABASE_TCP_KEEPALIVE_COUNT"))]
    pub database_tcp_keepalive_count: Option<u32>,

    /// TCP_USER_TIMEOUT on database connections.
    #[arg(long, env = "ELECTRIC_DATABASE_TCP_USER_TIMEOUT", value_parser = time("ELECTRIC_DATABASE_TCP_USER_TIMEOUT"))]
    pub database_tcp_user_timeout: Option<Duration>,
}

/// `ELECTRIC_SHAPE_DB_STORAGE_DIR`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShapeDbDir {
    /// A directory for `shapes.sqlite3`.
    Path(PathBuf),
    /// `:memory:` (Electric: an in-memory database, with exclusive mode).
    Memory,
}

/// Electric's log levels (Elixir's Logger levels), most severe first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// `emergency`.
    Emergency,
    /// `alert`.
    Alert,
    /// `critical`.
    Critical,
    /// `error`.
    Error,
    /// `warning` (or `warn`).
    Warning,
    /// `notice`.
    Notice,
    /// `info`.
    Info,
    /// `debug`.
    Debug,
}

/// A configuration that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Neither a secret nor insecure mode.
    #[error(
        "set ELECTRIC_SECRET to the secret clients must send, or ELECTRIC_INSECURE=true to run \
         without one (development only)"
    )]
    NoSecret,
    /// A secret of only whitespace: almost surely a templating or quoting mistake, and one a
    /// client can hardly send.
    #[error(
        "ELECTRIC_SECRET is only whitespace: set the secret clients must send, or unset it and \
         set ELECTRIC_INSECURE=true to run without one (development only)"
    )]
    BlankSecret,
}

/// A Postgres URL [`Config::real_pg`] cannot use.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseUrlError {
    /// `ELECTRIC_POOLED_DATABASE_URL` is unusable (the error names it itself).
    #[error(transparent)]
    Pooled(PgPortError),
    /// `DATABASE_URL` is unusable.
    #[error(
        "DATABASE_URL (with ELECTRIC_DATABASE_CA_CERTIFICATE_FILE) is not a usable PostgreSQL URL"
    )]
    Database(#[source] PgPortError),
}

impl Cli {
    /// Parses the command line and the environment as `Cli::parse` does (exiting with clap's
    /// message on an error), applies Electric's older variable names, and returns which of
    /// Electric's variables were given, for [`startup_warnings`].
    pub fn parse_given() -> (Self, Given) {
        let environment = Given::from_vars(std::env::vars_os());
        Self::try_parse_given(std::env::args_os(), environment).unwrap_or_else(|e| e.exit())
    }

    /// [`Cli::parse_given`] over `args`, with `environment` describing the environment (clap
    /// still reads each flag's variable from the process environment itself).
    pub fn try_parse_given<I, T>(args: I, environment: Given) -> Result<(Self, Given), clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = Self::command().try_get_matches_from(args)?;
        let mut cli = Self::from_arg_matches(&matches)?;
        let given = Given {
            flags: flags_on_command_line(&matches),
            ..environment
        };
        cli.config.apply_older_names(&given)?;
        Ok((cli, given))
    }
}

impl Config {
    /// Cross-field checks clap cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(secret) = &self.secret {
            if !secret.is_empty() && secret.trim().is_empty() {
                return Err(ConfigError::BlankSecret);
            }
        }
        if self.secret.as_deref().is_none_or(str::is_empty) && !self.insecure {
            return Err(ConfigError::NoSecret);
        }
        Ok(())
    }

    /// `DATABASE_URL` when set and not empty; `None` means the embedded PostgreSQL.
    pub fn external_database_url(&self) -> Option<&str> {
        self.database_url.as_deref().filter(|u| !u.is_empty())
    }

    /// Postgres at `database_url` as the database variables say ([`Config::pg_options`]).
    pub fn real_pg(&self, database_url: &str) -> Result<RealPg, DatabaseUrlError> {
        RealPg::with_options(database_url, &self.pg_options()).map_err(|e| match e {
            PgPortError::PooledUrl(_) => DatabaseUrlError::Pooled(e),
            e => DatabaseUrlError::Database(e),
        })
    }

    /// TLS settings for `DATABASE_URL` from outside it. None for the embedded PostgreSQL
    /// (no `DATABASE_URL`), which is local and has no certificate to verify.
    pub fn tls_options(&self) -> TlsOptions {
        let is_external = self.external_database_url().is_some();
        TlsOptions {
            ca_certificate_file: self
                .database_ca_certificate_file
                .clone()
                .filter(|_| is_external),
        }
    }

    /// How every command reaches Postgres besides `DATABASE_URL` itself: TLS, the pool
    /// (`ELECTRIC_DB_POOL_SIZE`, on `ELECTRIC_POOLED_DATABASE_URL` when set), TCP keepalive and
    /// `TCP_USER_TIMEOUT`, and who publishes shapes' tables.
    pub fn pg_options(&self) -> PgOptions {
        PgOptions {
            tls: self.tls_options(),
            pooled_database_url: self.pooled_database_url.clone(),
            pool_size: PoolSize::new(self.db_pool_size)
                .expect("ELECTRIC_DB_POOL_SIZE is parsed as a positive integer"),
            tcp: TcpOptions {
                keepalive_idle: self.database_tcp_keepalive_idle,
                keepalive_interval: self.database_tcp_keepalive_interval,
                keepalive_count: self.database_tcp_keepalive_count,
                user_timeout: self.database_tcp_user_timeout,
            },
            table_publishing: if self.manual_table_publishing {
                TablePublishing::Manual {
                    publication: self.publication_name(),
                }
            } else {
                TablePublishing::Automatic
            },
        }
    }

    /// The secret, unless running insecure.
    pub fn effective_secret(&self) -> Option<String> {
        self.secret.clone().filter(|s| !s.is_empty())
    }

    /// `electric_slot_<id>`.
    pub fn slot_name(&self) -> String {
        format!("electric_slot_{}", self.replication_stream_id)
    }

    /// Whether the slot is TEMPORARY (§1.7).
    pub fn slot_persistence(&self) -> SlotPersistence {
        if self.cleanup_replication_slots_on_shutdown {
            SlotPersistence::Temporary
        } else {
            SlotPersistence::Persistent
        }
    }

    /// The slot this process uses: `electric_slot_<id>`, or with temporary slots and random
    /// names `electric_slot_` + 32 hex characters from `random` (NM-3).
    pub fn effective_slot_name(&self, random: [u8; 16]) -> String {
        if self.cleanup_replication_slots_on_shutdown
            && self.temporary_replication_slot_use_random_name
        {
            let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
            return format!("electric_slot_{hex}");
        }
        self.slot_name()
    }

    /// `electric_publication_<id>`.
    pub fn publication_name(&self) -> String {
        format!("electric_publication_{}", self.replication_stream_id)
    }

    /// The directory of the shape metadata database: `ELECTRIC_SHAPE_DB_STORAGE_DIR`, else
    /// the storage dir (also for `:memory:`, which ampere cannot open yet).
    pub fn shape_db_dir(&self) -> &Path {
        match &self.shape_db_storage_dir {
            Some(ShapeDbDir::Path(dir)) => dir,
            Some(ShapeDbDir::Memory) | None => &self.storage_dir,
        }
    }

    /// `ELECTRIC_SHAPE_DB_CACHE_SIZE` in KiB, as SQLite's `cache_size` takes it (rounded up).
    pub fn shape_db_cache_kib(&self) -> u32 {
        u32::try_from(self.shape_db_cache_size.div_ceil(1024)).unwrap_or(u32::MAX)
    }

    /// The `tracing` filter for the log level. tracing has no `notice`: it logs as `info`
    /// (ampere's info lines are the lifecycle events Electric logs at notice); the levels
    /// above `error` log as `error`.
    pub fn tracing_filter(&self) -> &'static str {
        match self.log_level {
            LogLevel::Emergency | LogLevel::Alert | LogLevel::Critical | LogLevel::Error => "error",
            LogLevel::Warning => "warn",
            LogLevel::Notice | LogLevel::Info => "info",
            LogLevel::Debug => "debug,hyper=info,tokio_postgres=info",
        }
    }

    /// Reads the names Electric used before: `STORAGE_DIR` (before 1.0) when
    /// `ELECTRIC_STORAGE_DIR` is not given, `ELECTRIC_QUERY_DATABASE_URL` (deprecated) when
    /// `ELECTRIC_POOLED_DATABASE_URL` is not, `ELECTRIC_EXPERIMENTAL_MAX_SHAPES` when
    /// `ELECTRIC_MAX_SHAPES` is not.
    fn apply_older_names(&mut self, given: &Given) -> Result<(), clap::Error> {
        let invalid = |e| clap::Error::raw(clap::error::ErrorKind::ValueValidation, e);
        if !given.is_set("ELECTRIC_STORAGE_DIR") {
            if let Some(dir) = given.value("STORAGE_DIR").filter(|d| !d.is_empty()) {
                self.storage_dir = PathBuf::from(dir);
            }
        }
        if !given.is_set("ELECTRIC_POOLED_DATABASE_URL") {
            if let Some(url) = given.value("ELECTRIC_QUERY_DATABASE_URL") {
                let parse = postgres_url("ELECTRIC_QUERY_DATABASE_URL");
                self.pooled_database_url = Some(parse(url).map_err(invalid)?);
            }
        }
        if !given.is_set("ELECTRIC_MAX_SHAPES") {
            let old = "ELECTRIC_EXPERIMENTAL_MAX_SHAPES";
            if let Some(max) = given.value(old).filter(|m| !m.trim().is_empty()) {
                self.max_shapes = Some(positive_usize(old)(max).map_err(invalid)?);
            }
        }
        Ok(())
    }
}

/// The environment variables named in [`VARIABLES`] or starting with `ELECTRIC_` (with their
/// values), and the variables whose flag was on the command line.
#[derive(Clone, Debug, Default)]
pub struct Given {
    env: BTreeMap<String, String>,
    flags: BTreeSet<&'static str>,
}

impl Given {
    /// From `(name, value)` pairs such as `std::env::vars_os()`; values need not be UTF-8.
    pub fn from_vars<I, K, V>(vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        let env = vars
            .into_iter()
            .filter_map(|(name, value)| {
                let name = name.into().into_string().ok()?;
                let is_ours = name.starts_with("ELECTRIC_") || variable(&name).is_some();
                is_ours.then(|| (name, value.into().to_string_lossy().into_owned()))
            })
            .collect();
        Self {
            env,
            flags: BTreeSet::new(),
        }
    }

    /// Whether `name` is in the environment or its flag was given.
    fn is_set(&self, name: &str) -> bool {
        self.env.contains_key(name) || self.flags.contains(name)
    }

    /// `name`'s value in the environment.
    fn value(&self, name: &str) -> Option<&str> {
        self.env.get(name).map(String::as_str)
    }
}

/// The names of the variables whose flag was given on the command line.
fn flags_on_command_line(matches: &ArgMatches) -> BTreeSet<&'static str> {
    Cli::command()
        .get_arguments()
        .filter(|arg| matches.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine))
        .filter_map(|arg| arg.get_env()?.to_str().and_then(variable))
        .map(|v| v.name)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The reference: every variable Electric reads, and what ampere does with it

/// One of Electric's variables and what ampere does with it.
#[derive(Clone, Copy, Debug)]
pub struct Variable {
    /// The environment variable.
    pub name: &'static str,
    /// Electric's default, as its reference states it.
    pub electric_default: &'static str,
    /// A valid value (Electric's documented example where it gives one).
    pub example: &'static str,
    /// The values Electric accepts.
    pub grammar: Grammar,
    /// What ampere does with it.
    pub support: Support,
    /// Where Electric defines it.
    pub source: Source,
}

/// What ampere does with a variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Support {
    /// Honoured as Electric documents it; `how` notes any difference in detail. No warning.
    Honoured {
        /// How ampere applies it, where that needs saying.
        how: &'static str,
    },
    /// Accepted (its value checked as Electric would) and ignored; warned about.
    Ignored {
        /// What ampere does instead.
        instead: &'static str,
    },
    /// An older or deprecated name of `of`, which wins when both are set; warned about.
    Alias {
        /// The current name.
        of: &'static str,
    },
    /// Read by Electric's clients (often from a shared env file), not by the sync service:
    /// neither used nor warned about.
    ClientSide,
}

/// Where Electric defines a variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Electric's configuration reference (`website/docs/sync/api/config.md`, and the
    /// changesets that added `ELECTRIC_TCP_READ_TIMEOUT` and the database TCP keepalive
    /// options to it).
    Reference,
    /// Read by Electric's `config/runtime.exs` but not in its reference.
    Runtime,
    /// Electric 0.x (deploy-semantics §4); Electric 1.x ignores it.
    Legacy,
    /// Electric's client libraries and examples.
    Client,
}

/// The values Electric accepts for a variable (its `runtime.exs` parsers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grammar {
    /// Any text.
    Text,
    /// `true` or `false` (Electric, via Dotenvy: `false`, `0` and empty are false, anything
    /// else true; ampere's honoured flags take true/false, 1/0, yes/no, on/off).
    Boolean,
    /// A whole number.
    Integer,
    /// A whole number above zero.
    PositiveInteger,
    /// A whole number of seconds.
    Seconds,
    /// A TCP port, 1 to 65535.
    Port,
    /// A decimal number.
    Float,
    /// `Electric.Config.parse_human_readable_time`: a positive number with an optional unit
    /// (`ms`, `msec`, `s`, `sec`, `m`, `min`, `h`, `hr`; none: milliseconds).
    Time,
    /// `0` (off) or a [`Grammar::Time`].
    TimeOrZero,
    /// `Electric.Config.parse_human_readable_size`: a positive number of bytes with an
    /// optional unit (`KB`, `KiB`, `MB`, `MiB`, `GB`, `GiB`).
    Size,
    /// One of these words, in any case.
    OneOf(&'static [&'static str]),
    /// Electric's log levels.
    LogLevel,
    /// A JSON object.
    JsonObject,
    /// A `postgres://` or `postgresql://` URL.
    PostgresUrl,
    /// An `http://` or `https://` URL.
    HttpUrl,
    /// A path.
    Path,
    /// A directory, or `:memory:`.
    ShapeDbDir,
    /// A replication stream id.
    StreamId,
}

const LOG_LEVELS: &[&str] = &[
    "emergency",
    "alert",
    "critical",
    "error",
    "warning",
    "notice",
    "info",
    "debug",
];
const SYNCHRONOUS_VALUES: &[&str] = &["OFF", "NORMAL", "FULL", "EXTRA"];

/// Why telemetry variables are ignored.
const NO_TELEMETRY: &str = "ampere sends no telemetry";
/// Why the BEAM's process and scheduler knobs are ignored.
const NOT_BEAM: &str = "tunes Electric's Erlang processes; ampere has none to tune";
/// Why Electric 0.x's variables are ignored.
const ELECTRIC_0X: &str = "an Electric 0.x setting; Electric 1.x and ampere have no such part";

/// Shorthand for the table below.
const fn var(
    name: &'static str,
    electric_default: &'static str,
    example: &'static str,
    grammar: Grammar,
    support: Support,
    source: Source,
) -> Variable {
    Variable {
        name,
        electric_default,
        example,
        grammar,
        support,
        source,
    }
}

const fn honoured(how: &'static str) -> Support {
    Support::Honoured { how }
}
const fn ignored(instead: &'static str) -> Support {
    Support::Ignored { instead }
}
const fn alias(of: &'static str) -> Support {
    Support::Alias { of }
}

/// How the `ELECTRIC_DATABASE_TCP_*` variables apply.
const TCP_HOW: &str = "on every database socket, replication included; over libpq's keepalives_* and tcp_user_timeout in the URLs";

/// Every variable Electric reads (its reference, then what only `runtime.exs` reads, then
/// Electric 0.x's), and what ampere does with it. The one place that decides what ampere
/// honours and which startup warnings it prints.
#[rustfmt::skip]
pub const VARIABLES: &[Variable] = &[
    // Database
    var("DATABASE_URL", "— (required)", "postgresql://user:password@example.com:54321/electric", G::PostgresUrl,
        honoured("unset: ampere starts an embedded PostgreSQL in the storage dir; libpq's sslmode and sslrootcert/sslcert/sslkey too (docs/tls.md)"), Reference),
    var("ELECTRIC_POOLED_DATABASE_URL", "DATABASE_URL", "postgresql://user:password@example-pooled.com:54321/electric", G::PostgresUrl,
        honoured("snapshots and every SQL query; replication (and its advisory lock) stays on DATABASE_URL. Behind PgBouncer's transaction pooling: version 1.21+ with max_prepared_statements > 0"), Reference),
    var("ELECTRIC_QUERY_DATABASE_URL", "DATABASE_URL", "postgresql://user:password@example-pooled.com:54321/electric", G::PostgresUrl,
        alias("ELECTRIC_POOLED_DATABASE_URL"), Reference),
    var("ELECTRIC_DATABASE_USE_IPV6", "false", "true", G::Boolean,
        ignored("ampere tries every address the database host resolves to, IPv6 and IPv4, in the resolver's order"), Reference),
    var("ELECTRIC_DB_POOL_SIZE", "20", "10", G::PositiveInteger,
        honoured("SQL connections open at once (snapshots wait for a free one); the replication connection is not counted"), Reference),
    var("ELECTRIC_DATABASE_CA_CERTIFICATE_FILE", "unset", "/root/.postgresql/root.crt", G::Path,
        honoured("turns verification on: verify-full, or verify-ca when DATABASE_URL says so (docs/tls.md)"), Reference),
    var("ELECTRIC_REPLICATION_STREAM_ID", "default", "my-app", G::StreamId,
        honoured("`-` becomes `_`, as Electric's docs name the slot; other invalid ids stop startup"), Reference),
    var("CLEANUP_REPLICATION_SLOTS_ON_SHUTDOWN", "false", "true", G::Boolean, honoured(""), Reference),
    var("ELECTRIC_TEMPORARY_REPLICATION_SLOT_USE_RANDOM_NAME", "false", "true", G::Boolean, honoured(""), Reference),
    var("ELECTRIC_REPLICATION_IDLE_TIMEOUT", "0", "5min", G::TimeOrZero,
        ignored("ampere keeps its database connections open (no scale-to-zero)"), Reference),
    var("ELECTRIC_MANUAL_TABLE_PUBLISHING", "false", "true", G::Boolean,
        honoured("ampere never alters the publication or a table; a shape on a table not in the publication or without REPLICA IDENTITY FULL (for a partitioned table: on each partition, and the publication needs `publish_via_partition_root = true`) gets 503 naming the SQL to run"), Reference),
    var("ELECTRIC_DATABASE_TCP_KEEPALIVE_IDLE", "OS default", "30s", G::Time,
        honoured(TCP_HOW), Reference),
    var("ELECTRIC_DATABASE_TCP_KEEPALIVE_INTERVAL", "OS default", "10s", G::Time,
        honoured(TCP_HOW), Reference),
    var("ELECTRIC_DATABASE_TCP_KEEPALIVE_COUNT", "OS default", "3", G::PositiveInteger,
        honoured(TCP_HOW), Reference),
    var("ELECTRIC_DATABASE_TCP_USER_TIMEOUT", "OS default", "60s", G::Time,
        honoured(TCP_HOW), Reference),
    // Electric
    var("ELECTRIC_SECRET", "— (required unless insecure)", "1U6ItbhoQb4kGUU5wXBLbxvNf", G::Text,
        honoured("also accepted as the legacy `api_secret` parameter"), Reference),
    var("ELECTRIC_INSECURE", "false", "true", G::Boolean, honoured(""), Reference),
    var("ELECTRIC_INSTANCE_ID", "a random UUID", "some-unique-instance-identifier", G::Text,
        ignored("ampere sends no telemetry, the only place Electric uses it"), Reference),
    var("ELECTRIC_SERVICE_NAME", "electric", "my-electric-service", G::Text,
        ignored("ampere sends no telemetry (it names Electric's OTEL resources)"), Reference),
    var("ELECTRIC_LISTEN_ON_IPV6", "false", "true", G::Boolean,
        honoured("binds `[::]`, which takes IPv4 too where the OS is dual-stack (Linux's default)"), Reference),
    var("ELECTRIC_TCP_SEND_TIMEOUT", "30s", "60s", G::Time,
        honoured("a response write the client does not drain for this long closes the connection"), Reference),
    var("ELECTRIC_TCP_READ_TIMEOUT", "60s", "75s", G::Time,
        honoured("closes a connection idle this long before its first request or after a response (the keep-alive idle timeout), or whose request headers are not complete by then; a POST body must arrive in full within it too (else 408); never cuts a request being handled"), Reference),
    var("ELECTRIC_SHAPE_CHUNK_BYTES_THRESHOLD", "10485760", "20971520", G::PositiveInteger, honoured(""), Reference),
    var("ELECTRIC_PORT", "3000", "8080", G::Port, honoured(""), Reference),
    var("ELECTRIC_SHAPE_SUSPEND_CONSUMER", "false", "true", G::Boolean, ignored(NOT_BEAM), Reference),
    var("ELECTRIC_SHAPE_HIBERNATE_AFTER", "30s", "5000ms", G::Time, ignored(NOT_BEAM), Reference),
    var("ELECTRIC_SHAPE_DB_EXCLUSIVE_MODE", "false", "true", G::Boolean, honoured(""), Reference),
    var("ELECTRIC_SHAPE_DB_STORAGE_DIR", "ELECTRIC_STORAGE_DIR", "/var/db/electric", G::ShapeDbDir,
        honoured("`:memory:` is not supported yet: the metadata then stays in ELECTRIC_STORAGE_DIR, with a warning"), Reference),
    var("ELECTRIC_SHAPE_DB_SYNCHRONOUS", "OFF", "NORMAL", G::OneOf(SYNCHRONOUS_VALUES),
        honoured("EXTRA applies as FULL"), Reference),
    var("ELECTRIC_SHAPE_DB_CACHE_SIZE", "4096KiB", "8MiB", G::Size, honoured(""), Reference),
    var("ELECTRIC_SHAPE_DB_ENABLE_STATS", "false", "true", G::Boolean,
        ignored("ampere collects no SQLite statistics"), Reference),
    var("ELECTRIC_SHAPE_DB_ENABLE_MEMORY_STATS", "false", "true", G::Boolean,
        ignored("ampere collects no SQLite statistics"), Reference),
    var("ELECTRIC_MAX_CONCURRENT_REQUESTS", r#"{"initial": 300, "existing": 10000}"#, r#"{"initial": 500, "existing": 30000}"#, G::JsonObject,
        honoured("\"initial\" counts shape requests without a handle to use (offset=-1 or now), \"existing\" the rest, live long-polls included, until their response head; a key left out keeps its default, other keys are ignored with a warning (as Electric ignores them), a limit that is not a whole number above 0 stops startup"), Reference),
    var("ELECTRIC_MAX_SHAPES", "unlimited", "10000", G::PositiveInteger,
        honoured("beyond it, right after each creation and every 5 s, the active instance removes the least recently used shapes (by last request or creation; those still snapshotting last) as DELETE /v1/shape does: their clients get 409 and sync again"), Reference),
    var("ELECTRIC_EXPERIMENTAL_MAX_SHAPES", "unlimited", "10000", G::PositiveInteger,
        alias("ELECTRIC_MAX_SHAPES"), Reference),
    var("ELECTRIC_CONSUMER_PARTITIONS", "CPU cores", "128", G::PositiveInteger, ignored(NOT_BEAM), Reference),
    var("ELECTRIC_FEATURE_FLAGS", "none", "allow_subqueries,tagged_subqueries", G::Text,
        ignored("ampere has no feature flags; subqueries in `where` answer 400 (not supported yet)"), Reference),
    // Caching
    var("ELECTRIC_CACHE_MAX_AGE", "60", "5", G::Seconds, honoured(""), Reference),
    var("ELECTRIC_CACHE_STALE_AGE", "300", "5", G::Seconds, honoured(""), Reference),
    // Storage
    var("ELECTRIC_PERSISTENT_STATE", "FILE", "MEMORY", G::OneOf(&["MEMORY", "FILE"]),
        ignored("ampere keeps its state on disk in ELECTRIC_STORAGE_DIR"), Reference),
    var("ELECTRIC_STORAGE", "FAST_FILE", "MEMORY", G::OneOf(&["MEMORY", "FAST_FILE"]),
        ignored("ampere keeps shape logs on disk in ELECTRIC_STORAGE_DIR"), Reference),
    var("ELECTRIC_STORAGE_DIR", "./persistent", "/var/example", G::Path, honoured(""), Reference),
    var("STORAGE_DIR", "./persistent", "/var/example", G::Path, alias("ELECTRIC_STORAGE_DIR"), Legacy),
    // Telemetry
    var("ELECTRIC_OTLP_ENDPOINT", "unset", "https://example.com", G::Text, ignored(NO_TELEMETRY), Reference),
    var("ELECTRIC_OTEL_DEBUG", "false", "true", G::Boolean, ignored(NO_TELEMETRY), Reference),
    var("ELECTRIC_HNY_API_KEY", "unset", "your-api-key", G::Text, ignored(NO_TELEMETRY), Reference),
    var("ELECTRIC_HNY_DATASET", "unset", "your-dataset-name", G::Text, ignored(NO_TELEMETRY), Reference),
    var("ELECTRIC_PROMETHEUS_PORT", "unset", "9090", G::Port,
        honoured("serves /metrics (Prometheus text, docs/metrics.md) on this port only"), Reference),
    var("ELECTRIC_STATSD_HOST", "unset", "https://example.com", G::Text, ignored(NO_TELEMETRY), Reference),
    var("SENTRY_DSN", "unset", "https://key@o0.ingest.sentry.io/0", G::Text,
        ignored("ampere reports errors to no one; they are in its log"), Reference),
    // Logging
    var("ELECTRIC_LOG_LEVEL", "info", "debug", G::LogLevel,
        honoured("notice logs as info, and emergency, alert and critical as error (tracing's levels); AMPERE_LOG, a tracing filter, overrides it"), Reference),
    var("ELECTRIC_LOG_COLORS", "when the log goes to a terminal", "false", G::Boolean, honoured(""), Reference),
    var("ELECTRIC_LOG_OTP_REPORTS", "false", "true", G::Boolean,
        ignored("reports of Erlang/OTP; ampere is not an Erlang application"), Reference),
    // Usage reporting
    var("ELECTRIC_USAGE_REPORTING", "true", "false", G::Boolean, ignored(NO_TELEMETRY), Reference),
    // Read by Electric's runtime.exs, not in its reference
    var("ELECTRIC_LONG_POLL_TIMEOUT", "20000", "20s", G::Time, honoured(""), Runtime),
    var("ELECTRIC_ENABLE_INTEGRATION_TESTING", "false", "true", G::Boolean,
        honoured("enables DELETE /v1/shape (else 405), the only thing Electric uses it for: the shape's log and row are removed, its clients get 409 and its handle is never issued again"), Runtime),
    var("ELECTRIC_DATABASE_ID", "single_stack", "single_stack", G::Text,
        ignored("ampere keeps one stack per ELECTRIC_STORAGE_DIR and needs no id for it"), Runtime),
    var("ELECTRIC_EXPERIMENTAL_MAX_TXN_SIZE", "262144000", "262144000", G::PositiveInteger,
        ignored("ampere applies no transaction size limit"), Runtime),
    var("ELECTRIC_EXPERIMENTAL_MAX_BATCH_SIZE", "100", "100", G::PositiveInteger, ignored(NOT_BEAM), Runtime),
    var("ELECTRIC_TELEMETRY_URL", "https://checkpoint.electric-sql.com", "https://checkpoint.electric-sql.com", G::HttpUrl,
        ignored(NO_TELEMETRY), Runtime),
    var("ELECTRIC_SYSTEM_METRICS_POLL_INTERVAL", "5s", "5s", G::Time, ignored(NO_TELEMETRY), Runtime),
    var("ELECTRIC_OTEL_EXPORT_PERIOD", "30s", "30s", G::Time, ignored(NO_TELEMETRY), Runtime),
    var("ELECTRIC_OTEL_SAMPLING_RATIO", "0.01", "0.01", G::Float, ignored(NO_TELEMETRY), Runtime),
    var("ELECTRIC_METRICS_SAMPLING_RATIO", "1", "1", G::Float, ignored(NO_TELEMETRY), Runtime),
    var("ELECTRIC_TELEMETRY_TOP_PROCESS_COUNT", "5", "5", G::Integer, ignored(NO_TELEMETRY), Runtime),
    var("ELECTRIC_TELEMETRY_LONG_GC_THRESHOLD", "500", "500", G::Integer, ignored(NO_TELEMETRY), Runtime),
    var("ELECTRIC_TELEMETRY_LONG_SCHEDULE_THRESHOLD", "500", "500", G::Integer, ignored(NO_TELEMETRY), Runtime),
    var("ELECTRIC_TELEMETRY_LONG_MESSAGE_QUEUE_ENABLE_THRESHOLD", "1000", "1000", G::Integer, ignored(NO_TELEMETRY), Runtime),
    var("ELECTRIC_TELEMETRY_LONG_MESSAGE_QUEUE_DISABLE_THRESHOLD", "100", "100", G::Integer, ignored(NO_TELEMETRY), Runtime),
    var("ELECTRIC_CLEANUP_INTERVAL_MS", "10000", "10000", G::Time,
        ignored("ampere deletes a removed shape's files when it removes the shape, and on the next start if interrupted"), Runtime),
    var("ELECTRIC_PROFILE_WHERE_CLAUSES", "false", "true", G::Boolean,
        ignored("ampere has no where-clause profiler"), Runtime),
    var("ELECTRIC_PUBLICATION_ALTER_DEBOUNCE_TIME", "0", "1s", G::TimeOrZero,
        ignored("ampere alters the publication when a shape needs it, without a debounce"), Runtime),
    var("ELECTRIC_TWEAKS_PUBLICATION_REFRESH_PERIOD", "60s", "60s", G::Time,
        ignored("ampere checks publication membership when it creates a shape, not periodically"), Runtime),
    var("ELECTRIC_TWEAKS_SCHEMA_RECONCILER_PERIOD", "60s", "60s", G::Time,
        ignored("ampere sees schema changes in the replication stream, not by polling"), Runtime),
    var("ELECTRIC_TWEAKS_PROCESS_REGISTRY_PARTITIONS", "CPU cores", "8", G::PositiveInteger, ignored(NOT_BEAM), Runtime),
    var("ELECTRIC_TWEAKS_HTTP_API_NUM_ACCEPTORS", "100", "100", G::PositiveInteger, ignored(NOT_BEAM), Runtime),
    var("ELECTRIC_TWEAKS_CONN_MAX_REQUESTS", "unlimited", "1000", G::PositiveInteger,
        ignored("ampere does not cap the requests per connection"), Runtime),
    var("ELECTRIC_TWEAKS_HANDLER_FULLSWEEP_AFTER", "unset", "100", G::Text, ignored(NOT_BEAM), Runtime),
    var("ELECTRIC_PROCESS_SPAWN_OPTS", "{}", r#"{"shape_log_collector": {"priority": "high"}}"#, G::Text, ignored(NOT_BEAM), Runtime),
    var("ELECTRIC_CONSUMER_GC_HEAP_THRESHOLD", "unset", "100000", G::Text, ignored(NOT_BEAM), Runtime),
    var("ELECTRIC_SHAPE_SUSPEND_AFTER", "unset", "30s", G::Text, ignored(NOT_BEAM), Runtime),
    var("ELECTRIC_LIVE_DASHBOARD_PORT", "unset", "4000", G::Port,
        ignored("ampere has no Phoenix LiveDashboard"), Runtime),
    var("ELECTRIC_FLUSH_STALL_GRACE_PERIOD", "1min", "1min", G::Time,
        ignored("ampere has no flush-stall detector yet"), Runtime),
    var("ELECTRIC_SUBQUERY_BUFFER_MAX_TRANSACTIONS", "1000", "1000", G::PositiveInteger,
        ignored("subqueries in `where` are not supported yet"), Runtime),
    // Electric 0.x (deploy-semantics §4)
    var("PG_PROXY_PORT", "65432", "65432", G::Text, ignored(ELECTRIC_0X), Legacy),
    var("PG_PROXY_PASSWORD", "— (0.x: required)", "proxy_password", G::Text, ignored(ELECTRIC_0X), Legacy),
    var("ELECTRIC_WRITE_TO_PG_MODE", "logical_replication", "direct_writes", G::Text, ignored(ELECTRIC_0X), Legacy),
    var("LOGICAL_PUBLISHER_HOST", "—", "electric", G::Text, ignored(ELECTRIC_0X), Legacy),
    var("LOGICAL_PUBLISHER_PORT", "5433", "5433", G::Text, ignored(ELECTRIC_0X), Legacy),
    var("HTTP_PORT", "5133", "5133", G::Text, ignored(ELECTRIC_0X), Legacy),
    // Electric's clients
    var("ELECTRIC_URL", "—", "http://localhost:3000", G::Text, Support::ClientSide, Source::Client),
    var("ELECTRIC_SOURCE_ID", "—", "my-source", G::Text, Support::ClientSide, Source::Client),
    var("ELECTRIC_SOURCE_SECRET", "—", "my-source-secret", G::Text, Support::ClientSide, Source::Client),
];

/// The table entry for `name`.
pub fn variable(name: &str) -> Option<&'static Variable> {
    VARIABLES.iter().find(|v| v.name == name)
}

// ---------------------------------------------------------------------------------------------
// Startup warnings

/// A startup warning about one variable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigWarning {
    /// The variable it is about.
    pub variable: String,
    /// What ampere does about it.
    pub message: String,
}

/// Exactly one warning per variable that is set and not honoured (ignored, an older name) and per unknown `ELECTRIC_*` variable (a probable typo, with the closest
/// known name when it is near); none for an honoured variable, except for a value ampere
/// cannot honour yet (`ELECTRIC_SHAPE_DB_STORAGE_DIR=:memory:`). In [`VARIABLES`] order,
/// then unknown names in order.
pub fn startup_warnings(config: &Config, given: &Given) -> Vec<ConfigWarning> {
    let mut warnings: Vec<ConfigWarning> = VARIABLES
        .iter()
        .filter(|v| given.is_set(v.name))
        .filter_map(|v| warning_for(v, config, given).map(|message| (v.name, message)))
        .map(|(name, message)| ConfigWarning {
            variable: name.to_owned(),
            message,
        })
        .collect();
    for name in given.env.keys().filter(|name| variable(name).is_none()) {
        warnings.push(ConfigWarning {
            variable: name.clone(),
            message: unknown_variable_message(name),
        });
    }
    warnings
}

/// The warning for `v`, which is set, or none when ampere honours it.
fn warning_for(v: &Variable, config: &Config, given: &Given) -> Option<String> {
    let name = v.name;
    match v.support {
        Support::Honoured { .. } if name == "ELECTRIC_MAX_CONCURRENT_REQUESTS" => {
            let unknown = AdmissionLimits::unknown_keys(given.value(name).unwrap_or_default());
            (!unknown.is_empty()).then(|| {
                format!(
                    "{name}: ignoring {} (it takes \"initial\" and \"existing\"; Electric \
                     ignores other keys too)",
                    unknown
                        .iter()
                        .map(|key| format!("{key:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
        }
        Support::Honoured { .. } => {
            let is_memory = config.shape_db_storage_dir == Some(ShapeDbDir::Memory);
            (name == "ELECTRIC_SHAPE_DB_STORAGE_DIR" && is_memory).then(|| {
                format!(
                    "{name}=:memory: is not supported yet; the shape metadata stays on disk in \
                     ELECTRIC_STORAGE_DIR ({})",
                    config.storage_dir.display()
                )
            })
        }
        Support::Ignored { instead } => {
            let refused = given
                .value(name)
                .and_then(|value| v.grammar.check(value).err().map(|form| (value, form)));
            Some(match refused {
                None => format!("{name} is ignored: {instead}"),
                Some((value, form)) => format!(
                    "{name} is ignored: {instead} (Electric would refuse {value:?}: it takes \
                     {form})"
                ),
            })
        }
        Support::Alias { of } => Some(alias_message(name, of, given)),
        Support::ClientSide => None,
    }
}

fn alias_message(name: &str, of: &str, given: &Given) -> String {
    if given.is_set(of) {
        return format!("{name} is ignored: {of} is set too, and wins");
    }
    let current = variable(of).map(|v| v.support);
    match current {
        Some(Support::Honoured { .. }) => {
            format!("{name} is the old name of {of}; ampere reads it as {of} (rename it)")
        }
        Some(Support::Ignored { instead }) => {
            format!("{name} is the old name of {of}, which is ignored: {instead}")
        }
        Some(Support::Alias { .. } | Support::ClientSide) | None => {
            format!("{name} is the old name of {of}")
        }
    }
}

fn unknown_variable_message(name: &str) -> String {
    let known = "is not a variable of Electric's sync service or ampere (a typo?); ignored";
    match closest_known(name) {
        Some(near) => format!("{name} {known}. Did you mean {near}?"),
        None => format!("{name} {known}"),
    }
}

/// The known variable nearest to `name`, if near enough to be what was meant: an edit
/// distance (transpositions count one) of at most a quarter of the name's length after
/// `ELECTRIC_`, at least 1 and at most 3.
fn closest_known(name: &str) -> Option<&'static str> {
    let stem = name.strip_prefix("ELECTRIC_").unwrap_or(name);
    let limit = (stem.len() / 4).clamp(1, 3);
    VARIABLES
        .iter()
        .filter(|v| v.support != Support::ClientSide)
        .map(|v| (edit_distance(name, v.name), v.name))
        .filter(|&(distance, _)| distance <= limit)
        .min()
        .map(|(_, near)| near)
}

/// Optimal-string-alignment distance: insertions, deletions, substitutions and adjacent
/// transpositions each cost one.
fn edit_distance(a: &str, b: &str) -> usize {
    strsim::osa_distance(a, b)
}

// ---------------------------------------------------------------------------------------------
// Grammars

impl Grammar {
    /// The accepted form, for error messages and the docs.
    pub fn form(self) -> String {
        let text = match self {
            Self::Text => "any text",
            Self::Boolean => "true or false",
            Self::Integer => "a whole number",
            Self::PositiveInteger => "a whole number above 0",
            Self::Seconds => "a whole number of seconds",
            Self::Port => "a port number from 1 to 65535",
            Self::Float => "a number",
            Self::Time => {
                "a duration: a positive number with ms, msec, s, sec, m, min, h or hr (no unit: \
                 milliseconds), e.g. 20s or 20000"
            }
            Self::TimeOrZero => "0 (off) or a duration such as 500ms, 30s, 5min or 1h",
            Self::Size => "a size: bytes, or a number with KB, KiB, MB, MiB, GB or GiB",
            Self::OneOf(words) => return format!("one of {}", words.join(", ")),
            Self::LogLevel => return format!("one of {}", LOG_LEVELS.join(", ")),
            Self::JsonObject => "a JSON object",
            Self::PostgresUrl => "a postgresql:// (or postgres://) URL",
            Self::HttpUrl => "an http:// or https:// URL",
            Self::Path => "a path",
            Self::ShapeDbDir => "a directory, or :memory:",
            Self::StreamId => {
                "letters a-z, digits and _ (- becomes _), not starting with a digit, at most 42 \
                 bytes"
            }
        };
        text.to_owned()
    }

    /// A short name for the docs' table (`docs/config.md` explains each).
    pub fn doc_name(self) -> String {
        let text = match self {
            Self::Text => "text",
            Self::Boolean => "boolean",
            Self::Integer => "integer",
            Self::PositiveInteger => "integer > 0",
            Self::Seconds => "seconds",
            Self::Port => "port",
            Self::Float => "number",
            Self::Time => "duration",
            Self::TimeOrZero => "0 or duration",
            Self::Size => "size",
            Self::OneOf(words) => return words.join(", "),
            Self::LogLevel => "log level",
            Self::JsonObject => "JSON object",
            Self::PostgresUrl => "postgresql:// URL",
            Self::HttpUrl => "http(s):// URL",
            Self::Path => "path",
            Self::ShapeDbDir => "path or `:memory:`",
            Self::StreamId => "stream id",
        };
        text.to_owned()
    }

    /// Whether Electric would accept `text`; the accepted form if not. Booleans always pass:
    /// Electric takes any value other than `false`, `0` and empty as true.
    pub fn check(self, text: &str) -> Result<(), String> {
        let t = text.trim();
        let is_valid = match self {
            Self::Text | Self::Boolean | Self::Path => true,
            Self::Integer => t.is_empty() || t.parse::<i64>().is_ok(),
            Self::PositiveInteger => parse_positive_u64(t).is_some(),
            Self::Seconds => t.parse::<u32>().is_ok(),
            Self::Port => parse_port(t).is_some(),
            Self::Float => t.is_empty() || t.parse::<f64>().is_ok_and(f64::is_finite),
            Self::Time => parse_time(t).is_some(),
            Self::TimeOrZero => parse_time_or_zero(t).is_some(),
            Self::Size => parse_size(t).is_some(),
            Self::OneOf(words) => words.iter().any(|w| w.eq_ignore_ascii_case(t)),
            Self::LogLevel => parse_log_level(t).is_some(),
            Self::JsonObject => {
                serde_json::from_str::<serde_json::Value>(t).is_ok_and(|value| value.is_object())
            }
            Self::PostgresUrl => is_postgres_url(t),
            Self::HttpUrl => t.starts_with("http://") || t.starts_with("https://"),
            Self::ShapeDbDir => !t.is_empty(),
            Self::StreamId => stream_id(t).is_ok(),
        };
        if is_valid {
            Ok(())
        } else {
            Err(self.form())
        }
    }
}

/// `text` in `grammar` for `var`, as a clap value parser: the error names the variable and
/// the accepted form.
fn parsed<T: 'static>(
    var: &'static str,
    grammar: Grammar,
    parse: fn(&str) -> Option<T>,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static {
    move |text| {
        parse(text.trim()).ok_or_else(|| format!("{var} must be {}; got {text:?}", grammar.form()))
    }
}

fn port(var: &'static str) -> impl Fn(&str) -> Result<u16, String> + Clone {
    parsed(var, Grammar::Port, parse_port)
}

fn time(var: &'static str) -> impl Fn(&str) -> Result<Duration, String> + Clone {
    parsed(var, Grammar::Time, parse_time)
}

fn size(var: &'static str) -> impl Fn(&str) -> Result<u64, String> + Clone {
    parsed(var, Grammar::Size, parse_size)
}

fn seconds(var: &'static str) -> impl Fn(&str) -> Result<u32, String> + Clone {
    parsed(var, Grammar::Seconds, |t| t.parse().ok())
}

fn positive_u64(var: &'static str) -> impl Fn(&str) -> Result<u64, String> + Clone {
    parsed(var, Grammar::PositiveInteger, parse_positive_u64)
}

fn positive_usize(var: &'static str) -> impl Fn(&str) -> Result<NonZeroUsize, String> + Clone {
    parsed(var, Grammar::PositiveInteger, |t| {
        parse_positive_u64(t)
            .and_then(|n| usize::try_from(n).ok())
            .and_then(NonZeroUsize::new)
    })
}

fn positive_u32(var: &'static str) -> impl Fn(&str) -> Result<u32, String> + Clone {
    parsed(var, Grammar::PositiveInteger, |t| {
        parse_positive_u64(t).and_then(|n| u32::try_from(n).ok())
    })
}

fn postgres_url(var: &'static str) -> impl Fn(&str) -> Result<String, String> + Clone {
    parsed(var, Grammar::PostgresUrl, |t| {
        is_postgres_url(t).then(|| t.to_owned())
    })
}

/// ampere's booleans: true/false, 1/0, yes/no, on/off (any case); empty is false.
fn boolean(var: &'static str) -> impl Fn(&str) -> Result<bool, String> + Clone {
    parsed(var, Grammar::Boolean, |t| {
        match t.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Some(true),
            "false" | "0" | "no" | "off" | "" => Some(false),
            _ => None,
        }
    })
}

/// `ELECTRIC_MAX_CONCURRENT_REQUESTS`: Electric's JSON object, refused with the reason.
fn admission_limits(text: &str) -> Result<AdmissionLimits, String> {
    AdmissionLimits::parse(text.trim()).map_err(|reason| {
        format!(
            "ELECTRIC_MAX_CONCURRENT_REQUESTS must be a JSON object such as \
             {{\"initial\": 300, \"existing\": 10000}} (whole numbers above 0); {reason}: got \
             {text:?}"
        )
    })
}

fn log_level(text: &str) -> Result<LogLevel, String> {
    parsed("ELECTRIC_LOG_LEVEL", Grammar::LogLevel, parse_log_level)(text)
}

fn synchronous(text: &str) -> Result<Synchronous, String> {
    let grammar = Grammar::OneOf(SYNCHRONOUS_VALUES);
    parsed("ELECTRIC_SHAPE_DB_SYNCHRONOUS", grammar, |t| {
        match t.to_ascii_uppercase().as_str() {
            "OFF" | "0" => Some(Synchronous::Off),
            "NORMAL" | "1" => Some(Synchronous::Normal),
            // EXTRA also syncs the directory after deleting a rollback journal; FULL is the
            // strongest io-real offers.
            "FULL" | "2" | "EXTRA" | "3" => Some(Synchronous::Full),
            _ => None,
        }
    })(text)
}

fn shape_db_dir(text: &str) -> Result<ShapeDbDir, String> {
    parsed(
        "ELECTRIC_SHAPE_DB_STORAGE_DIR",
        Grammar::ShapeDbDir,
        |t| match t {
            "" => None,
            ":memory:" => Some(ShapeDbDir::Memory),
            dir => Some(ShapeDbDir::Path(PathBuf::from(dir))),
        },
    )(text)
}

fn parse_port(t: &str) -> Option<u16> {
    t.parse::<u16>().ok().filter(|&p| p > 0)
}

fn parse_positive_u64(t: &str) -> Option<u64> {
    t.parse::<u64>().ok().filter(|&n| n > 0)
}

fn is_postgres_url(t: &str) -> bool {
    t.starts_with("postgresql://") || t.starts_with("postgres://")
}

fn parse_log_level(t: &str) -> Option<LogLevel> {
    Some(match t.to_ascii_lowercase().as_str() {
        "emergency" => LogLevel::Emergency,
        "alert" => LogLevel::Alert,
        "critical" => LogLevel::Critical,
        "error" => LogLevel::Error,
        "warning" | "warn" => LogLevel::Warning,
        "notice" => LogLevel::Notice,
        "info" => LogLevel::Info,
        "debug" => LogLevel::Debug,
        _ => return None,
    })
}

/// `Electric.Config.parse_human_readable_time`: a number (as Elixir's `Float.parse` reads
/// it), above 0, then optional spaces and a unit; the result is whole milliseconds, rounded
/// down, and must be at least 1.
fn parse_time(t: &str) -> Option<Duration> {
    let (number, unit) = split_number(t)?;
    let scale = match unit.trim() {
        "" | "ms" | "msec" => 1.0,
        "s" | "sec" => 1_000.0,
        "m" | "min" => 60_000.0,
        "h" | "hr" => 3_600_000.0,
        _ => return None,
    };
    let millis = (number * scale).trunc();
    // u64::MAX as f64 rounds up to 2^64, which `<` then excludes.
    let is_in_range = number > 0.0 && millis >= 1.0 && millis < u64::MAX as f64;
    is_in_range.then(|| Duration::from_millis(millis as u64))
}

/// `0` (off), or [`parse_time`].
fn parse_time_or_zero(t: &str) -> Option<Duration> {
    match split_number(t) {
        Some((number, unit)) if number == 0.0 && unit.trim().is_empty() => Some(Duration::ZERO),
        _ => parse_time(t),
    }
}

/// `Electric.Config.parse_human_readable_size`: a number above 0, then optional spaces and
/// KB, KiB, MB, MiB, GB or GiB (none: bytes); whole bytes, rounded down, at least 1.
fn parse_size(t: &str) -> Option<u64> {
    let (number, unit) = split_number(t)?;
    let scale = match unit.trim() {
        "" => 1.0,
        "KB" => 1e3,
        "KiB" => 1024.0,
        "MB" => 1e6,
        "MiB" => 1024.0 * 1024.0,
        "GB" => 1e9,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = (number * scale).trunc();
    let is_in_range = number > 0.0 && bytes >= 1.0 && bytes < u64::MAX as f64;
    is_in_range.then_some(bytes as u64)
}

/// The leading number of `t` as Elixir's `Float.parse` reads it (an optional sign, digits,
/// an optional fraction and exponent) and the rest.
fn split_number(t: &str) -> Option<(f64, &str)> {
    let bytes = t.as_bytes();
    let digits_from = |mut i: usize| {
        while bytes.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    let start = usize::from(matches!(bytes.first(), Some(b'+' | b'-')));
    let mut end = digits_from(start);
    if end == start {
        return None;
    }
    if bytes.get(end) == Some(&b'.') && bytes.get(end + 1).is_some_and(u8::is_ascii_digit) {
        end = digits_from(end + 1);
    }
    if matches!(bytes.get(end), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(bytes.get(end + 1), Some(b'+' | b'-')));
        let exponent_end = digits_from(end + 1 + sign);
        if exponent_end > end + 1 + sign {
            end = exponent_end;
        }
    }
    let number: f64 = t[..end].parse().ok()?;
    number.is_finite().then(|| (number, &t[end..]))
}

/// `ELECTRIC_REPLICATION_STREAM_ID`: after mapping `-` to `_` and lowercasing ASCII, it
/// must match `^[a-z_][a-z0-9_]*$` and be at most 42 bytes, so that
/// `electric_publication_<id>` fits Postgres's 63-byte identifiers (deploy-semantics NM-2).
fn stream_id(text: &str) -> Result<String, String> {
    const MAX: usize = 42;
    let id = text.trim().replace('-', "_").to_ascii_lowercase();
    let id = if id.is_empty() {
        "default".to_owned()
    } else {
        id
    };
    let form = "accepted form: letters a-z, digits and _ (- becomes _), not starting with a digit";
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        return Err(format!(
            "ELECTRIC_REPLICATION_STREAM_ID contains {bad:?}; {form}, at most {MAX} bytes"
        ));
    }
    if id.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!(
            "ELECTRIC_REPLICATION_STREAM_ID starts with a digit; {form}"
        ));
    }
    if id.len() > MAX {
        return Err(format!(
            "ELECTRIC_REPLICATION_STREAM_ID is {} bytes long; at most {MAX} ({form})",
            id.len()
        ));
    }
    Ok(id)
}

// ---------------------------------------------------------------------------------------------
// docs/config.md

/// The Markdown table of [`VARIABLES`] that `docs/config.md` carries.
pub fn reference_markdown() -> String {
    let mut out = String::new();
    let sections = [
        (Reference, "Electric's configuration reference"),
        (
            Runtime,
            "Also read by Electric (`config/runtime.exs`), not in its reference",
        ),
        (Legacy, "Electric 0.x and pre-1.0 names"),
        (
            Source::Client,
            "Read by Electric's clients, not by the sync service",
        ),
    ];
    for (source, title) in sections {
        let vars = || VARIABLES.iter().filter(move |v| v.source == source);
        let _ = writeln!(out, "### {title}\n\n{}.\n", support_summary(vars()));
        out.push_str("| variable | Electric's default | values | ampere |\n|---|---|---|---|\n");
        for v in vars() {
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} |",
                v.name,
                markdown_cell(v.electric_default),
                markdown_cell(&v.grammar.doc_name()),
                markdown_cell(&support_text(v.support)),
            );
        }
        out.push('\n');
    }
    out
}

/// "12 honoured, 3 ignored, …" for `vars`.
fn support_summary<'a>(vars: impl Iterator<Item = &'a Variable>) -> String {
    let mut counts = [0usize; 4];
    for v in vars {
        let slot = match v.support {
            Support::Honoured { .. } => 0,
            Support::Ignored { .. } => 1,
            Support::Alias { .. } => 2,
            Support::ClientSide => 3,
        };
        counts[slot] += 1;
    }
    let labels = [
        "honoured",
        "ignored",
        "older names",
        "not for the sync service",
    ];
    let parts: Vec<String> = counts
        .iter()
        .zip(labels)
        .filter(|(&n, _)| n > 0)
        .map(|(n, label)| format!("{n} {label}"))
        .collect();
    parts.join(", ")
}

fn support_text(support: Support) -> String {
    match support {
        Support::Honoured { how: "" } => "**honoured**".to_owned(),
        Support::Honoured { how } => format!("**honoured**; {how}"),
        Support::Ignored { instead } => format!("accepted, **ignored**: {instead}"),
        Support::Alias { of } => format!("older name of `{of}` (which wins when both are set)"),
        Support::ClientSide => "not read by the sync service; no warning".to_owned(),
    }
}

/// `text` safe inside a Markdown table cell.
fn markdown_cell(text: &str) -> String {
    text.replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ampere").chain(args.iter().copied()))
    }

    fn parse_given(args: &[&str], env: &[(&str, &str)]) -> (Config, Given) {
        let args = std::iter::once("ampere").chain(args.iter().copied());
        let (cli, given) =
            Cli::try_parse_given(args, Given::from_vars(env.iter().copied())).expect("parses");
        (cli.config, given)
    }

    fn warned(config: &Config, given: &Given) -> Vec<String> {
        startup_warnings(config, given)
            .into_iter()
            .map(|w| w.variable)
            .collect()
    }

    #[test]
    fn defaults_match_electric() {
        let cli = parse(&["--insecure", "true"]).expect("parses");
        let c = cli.config;
        assert_eq!(c.port, 3000);
        assert_eq!(c.storage_dir, PathBuf::from("./persistent"));
        assert_eq!(c.long_poll_timeout, Duration::from_secs(20));
        assert_eq!(c.shape_chunk_bytes_threshold, 10_485_760);
        assert_eq!((c.cache_max_age, c.cache_stale_age), (60, 300));
        assert_eq!(c.slot_name(), "electric_slot_default");
        assert_eq!(c.publication_name(), "electric_publication_default");
        assert_eq!(c.tcp_read_timeout, Duration::from_secs(60));
        assert_eq!(c.tcp_send_timeout, Duration::from_secs(30));
        assert!(!c.listen_on_ipv6);
        assert_eq!(c.shape_db_synchronous, Synchronous::Off);
        assert_eq!(c.shape_db_cache_kib(), 4096);
        assert_eq!(c.shape_db_dir(), Path::new("./persistent"));
        assert_eq!(c.db_pool_size, 20);
        assert_eq!(c.log_level, LogLevel::Info);
        assert_eq!(c.max_concurrent_requests, AdmissionLimits::default());
        assert_eq!(c.max_shapes, None, "unlimited");
        assert!(!c.enable_integration_testing);
    }

    #[test]
    fn concurrency_limits_and_shape_deletion_are_read_from_electrics_variables() {
        let cli = parse(&[
            "--insecure",
            r#"--max-concurrent-requests={"initial": 100, "existing": 20000}"#,
            "--enable-integration-testing",
        ])
        .expect("parses");
        let limits = cli.config.max_concurrent_requests;
        assert_eq!((limits.initial, limits.existing), (100, 20_000));
        assert!(cli.config.enable_integration_testing);
    }

    #[test]
    fn a_whitespace_secret_is_refused_even_when_insecure() {
        for args in [&["--secret", "  "][..], &["--secret", "\t\n", "--insecure"]] {
            let cli = parse(args).expect("parses");
            let err = cli.config.validate().expect_err("must refuse");
            assert!(matches!(err, ConfigError::BlankSecret), "{args:?}");
            assert!(err
                .to_string()
                .starts_with("ELECTRIC_SECRET is only whitespace"));
        }
        let padded = parse(&["--secret", " s3cret "]).expect("parses");
        assert!(
            padded.config.validate().is_ok(),
            "a secret with spaces around it is a secret"
        );
    }

    #[test]
    fn refuses_to_run_without_secret_or_insecure() {
        let cli = parse(&[]).expect("parses");
        let err = cli.config.validate().expect_err("must refuse");
        assert!(err.to_string().contains("ELECTRIC_SECRET"));
        assert!(err.to_string().contains("ELECTRIC_INSECURE"));
        assert!(parse(&["--secret", "s"])
            .expect("parses")
            .config
            .validate()
            .is_ok());
    }

    #[test]
    fn random_slot_names_need_temporary_slots() {
        let random = [0xab; 16];
        let plain = parse(&["--insecure", "--temporary-replication-slot-use-random-name"]);
        let plain = plain.expect("parses").config;
        assert_eq!(plain.effective_slot_name(random), "electric_slot_default");
        assert_eq!(plain.slot_persistence(), SlotPersistence::Persistent);
        let temp = parse(&[
            "--insecure",
            "--cleanup-replication-slots-on-shutdown",
            "--temporary-replication-slot-use-random-name=true",
        ]);
        let temp = temp.expect("parses").config;
        assert_eq!(temp.slot_persistence(), SlotPersistence::Temporary);
        assert_eq!(
            temp.effective_slot_name(random),
            format!("electric_slot_{}", "ab".repeat(16))
        );
    }

    #[test]
    fn stream_ids_map_dashes_and_reject_other_characters() {
        assert_eq!(stream_id("deploy-blue"), Ok("deploy_blue".into()));
        assert_eq!(stream_id("Blue"), Ok("blue".into()));
        assert!(stream_id("a.b")
            .expect_err("dot")
            .contains("ELECTRIC_REPLICATION_STREAM_ID"));
        assert!(stream_id("1abc").is_err());
        assert!(stream_id(&"a".repeat(43))
            .expect_err("long")
            .contains("43 bytes"));
    }

    /// (flag, invalid value, its variable, a word of the accepted form).
    #[rustfmt::skip]
    const INVALID: &[(&str, &str, &str, &str)] = &[
        ("--port", "70000", "ELECTRIC_PORT", "1 to 65535"),
        ("--long-poll-timeout", "soon", "ELECTRIC_LONG_POLL_TIMEOUT", "ms, msec"),
        ("--long-poll-timeout", "0", "ELECTRIC_LONG_POLL_TIMEOUT", "positive"),
        ("--tcp-read-timeout", "5 parsecs", "ELECTRIC_TCP_READ_TIMEOUT", "min"),
        ("--shape-chunk-bytes-threshold", "0", "ELECTRIC_SHAPE_CHUNK_BYTES_THRESHOLD", "above 0"),
        ("--insecure", "maybe", "ELECTRIC_INSECURE", "true or false"),
        ("--log-level", "loud", "ELECTRIC_LOG_LEVEL", "notice"),
        ("--cache-max-age", "-1", "ELECTRIC_CACHE_MAX_AGE", "seconds"),
        ("--shape-db-synchronous", "SOMETIMES", "ELECTRIC_SHAPE_DB_SYNCHRONOUS", "NORMAL"),
        ("--shape-db-cache-size", "8 MiBs", "ELECTRIC_SHAPE_DB_CACHE_SIZE", "KiB"),
        ("--db-pool-size", "0", "ELECTRIC_DB_POOL_SIZE", "above 0"),
        ("--max-shapes", "0", "ELECTRIC_MAX_SHAPES", "above 0"),
        ("--max-shapes", "lots", "ELECTRIC_MAX_SHAPES", "whole number"),
        ("--prometheus-port", "metrics", "ELECTRIC_PROMETHEUS_PORT", "port"),
        ("--pooled-database-url", "mysql://x", "ELECTRIC_POOLED_DATABASE_URL", "postgresql://"),
        ("--database-tcp-keepalive-count", "-3", "ELECTRIC_DATABASE_TCP_KEEPALIVE_COUNT", "above 0"),
        ("--database-tcp-user-timeout", "1y", "ELECTRIC_DATABASE_TCP_USER_TIMEOUT", "duration"),
        ("--max-concurrent-requests", "300", "ELECTRIC_MAX_CONCURRENT_REQUESTS", "not a JSON object"),
        ("--max-concurrent-requests", r#"{"initial":0}"#, "ELECTRIC_MAX_CONCURRENT_REQUESTS", "\"initial\" must be a whole number above 0"),
        ("--enable-integration-testing", "perhaps", "ELECTRIC_ENABLE_INTEGRATION_TESTING", "true or false"),
    ];

    #[test]
    fn invalid_values_name_the_variable_and_the_accepted_form() {
        for &(flag, value, var, form) in INVALID {
            let arg = format!("{flag}={value}");
            let err = parse(&[&arg]).expect_err("invalid").to_string();
            assert!(err.contains(var), "{flag}={value}: {err}");
            assert!(err.contains(form), "{flag}={value}: {err}");
        }
    }

    #[test]
    fn the_ca_file_applies_to_database_url_only() {
        let ca = "--database-ca-certificate-file=/etc/ca.pem";
        let external = parse(&["--insecure", "--database-url=postgresql://a@db/x", ca]);
        let options = external.expect("parses").config.tls_options();
        assert_eq!(
            options.ca_certificate_file,
            Some(PathBuf::from("/etc/ca.pem"))
        );
        let embedded = parse(&["--insecure", ca]).expect("parses").config;
        assert_eq!(embedded.tls_options(), TlsOptions::default());
    }

    #[test]
    fn durations_follow_electrics_human_readable_time() {
        let ms = Duration::from_millis;
        for (text, expected) in [
            ("500", ms(500)),
            ("20000", ms(20_000)),
            ("250ms", ms(250)),
            ("250msec", ms(250)),
            ("20s", ms(20_000)),
            ("20 sec", ms(20_000)),
            ("1.5s", ms(1_500)),
            ("5min", ms(300_000)),
            ("5m", ms(300_000)),
            ("2h", ms(7_200_000)),
            ("1hr", ms(3_600_000)),
            ("2e3", ms(2_000)),
            ("1.9", ms(1)),
        ] {
            assert_eq!(parse_time(text), Some(expected), "{text}");
        }
        for text in [
            "",
            "0",
            "-5s",
            "0.5",
            "s",
            "5 parsecs",
            "5S",
            "5 d",
            ".5s",
            "5s5",
            "1e400",
        ] {
            assert_eq!(parse_time(text), None, "{text:?}");
        }
        assert_eq!(parse_time_or_zero("0"), Some(Duration::ZERO));
        assert_eq!(parse_time_or_zero("5min"), Some(ms(300_000)));
        assert_eq!(
            parse_time_or_zero("0s"),
            None,
            "0 with a unit is not Electric's off"
        );
    }

    #[test]
    fn sizes_follow_electrics_human_readable_size() {
        for (text, expected) in [
            ("123456789", 123_456_789),
            ("1GiB", 1 << 30),
            ("2.23GB", 2_230_000_000),
            ("256MiB", 256 << 20),
            ("377MB", 377_000_000),
            ("430KiB", 430 * 1024),
            ("142888KB", 142_888_000),
            ("8 MiB", 8 << 20),
        ] {
            assert_eq!(parse_size(text), Some(expected), "{text}");
        }
        for text in ["", "foo", "0", "-1KiB", "1TB", "1kib", "0.1"] {
            assert_eq!(parse_size(text), None, "{text:?}");
        }
        let (c, _) = parse_given(&["--insecure", "--shape-db-cache-size=1025"], &[]);
        assert_eq!(c.shape_db_cache_kib(), 2, "rounded up to whole KiB");
    }

    #[test]
    fn log_levels_are_electrics_and_map_onto_tracing() {
        for (level, filter) in [
            ("emergency", "error"),
            ("alert", "error"),
            ("critical", "error"),
            ("error", "error"),
            ("warning", "warn"),
            ("warn", "warn"),
            ("notice", "info"),
            ("info", "info"),
            ("DEBUG", "debug,hyper=info,tokio_postgres=info"),
        ] {
            let arg = format!("--log-level={level}");
            let (c, _) = parse_given(&["--insecure", &arg], &[]);
            assert_eq!(c.tracing_filter(), filter, "{level}");
        }
        let levels: Vec<_> = LOG_LEVELS
            .iter()
            .filter_map(|l| parse_log_level(l))
            .collect();
        assert!(levels.windows(2).all(|w| w[0] < w[1]), "most severe first");
    }

    #[test]
    fn booleans_ports_integers_and_other_grammars_check_as_electric_would() {
        let ok = |g: Grammar, t: &str| g.check(t).is_ok();
        assert!(
            ok(Grammar::Boolean, "maybe"),
            "Electric reads any other value as true"
        );
        assert!(ok(Grammar::Port, "9090") && !ok(Grammar::Port, "0"));
        assert!(!ok(Grammar::Port, "65536"));
        assert!(
            ok(Grammar::Integer, "-5") && ok(Grammar::Integer, "") && !ok(Grammar::Integer, "5.0")
        );
        assert!(ok(Grammar::PositiveInteger, "5") && !ok(Grammar::PositiveInteger, "0"));
        assert!(ok(Grammar::Float, "0.01") && ok(Grammar::Float, "1") && !ok(Grammar::Float, "x"));
        let storage = Grammar::OneOf(&["MEMORY", "FAST_FILE"]);
        assert!(
            ok(storage, "memory") && !ok(storage, "file"),
            "Electric refuses legacy FILE"
        );
        assert!(ok(Grammar::JsonObject, r#"{"initial": 1}"#));
        assert!(!ok(Grammar::JsonObject, "[1]") && !ok(Grammar::JsonObject, "{"));
        assert!(ok(Grammar::HttpUrl, "https://x") && !ok(Grammar::HttpUrl, "ftp://x"));
        assert!(Grammar::Time
            .check("soon")
            .expect_err("form")
            .contains("ms, msec"));
    }

    #[test]
    fn shape_db_storage_dir_takes_a_directory_or_memory() {
        let (c, _) = parse_given(&["--insecure", "--shape-db-storage-dir=/local/db"], &[]);
        assert_eq!(c.shape_db_dir(), Path::new("/local/db"));
        let (c, given) = parse_given(&["--insecure", "--shape-db-storage-dir=:memory:"], &[]);
        assert_eq!(c.shape_db_storage_dir, Some(ShapeDbDir::Memory));
        assert_eq!(
            c.shape_db_dir(),
            Path::new("./persistent"),
            "not supported yet"
        );
        let warnings = startup_warnings(&c, &given);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0]
            .message
            .contains(":memory: is not supported yet"));
    }

    #[test]
    fn storage_dir_is_read_as_the_old_name_of_electric_storage_dir() {
        let (c, given) = parse_given(&["--insecure"], &[("STORAGE_DIR", "/old")]);
        assert_eq!(c.storage_dir, PathBuf::from("/old"));
        let warnings = startup_warnings(&c, &given);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0]
            .message
            .contains("reads it as ELECTRIC_STORAGE_DIR"));

        // The current name wins (here as a flag; the environment works alike).
        let (c, given) = parse_given(
            &["--insecure", "--storage-dir=/new"],
            &[("STORAGE_DIR", "/old")],
        );
        assert_eq!(c.storage_dir, PathBuf::from("/new"));
        let warnings = startup_warnings(&c, &given);
        assert_eq!(warned(&c, &given), ["STORAGE_DIR"]);
        assert!(warnings[0]
            .message
            .contains("ELECTRIC_STORAGE_DIR is set too"));
    }

    #[test]
    fn query_database_url_is_read_as_the_pooled_url_and_validated() {
        let url = "postgresql://u@pooler/db";
        let (c, given) = parse_given(&["--insecure"], &[("ELECTRIC_QUERY_DATABASE_URL", url)]);
        assert_eq!(c.pooled_database_url.as_deref(), Some(url));
        let warnings = startup_warnings(&c, &given);
        assert!(
            warnings[0]
                .message
                .contains("reads it as ELECTRIC_POOLED_DATABASE_URL (rename it)"),
            "{warnings:?}"
        );
        let env = Given::from_vars([("ELECTRIC_QUERY_DATABASE_URL", "http://x")]);
        let err = Cli::try_parse_given(["ampere", "--insecure"], env).expect_err("invalid");
        assert!(
            err.to_string().contains("ELECTRIC_QUERY_DATABASE_URL"),
            "{err}"
        );
    }

    #[test]
    fn max_shapes_is_read_from_its_experimental_name_too_and_must_be_a_positive_integer() {
        let (c, given) = parse_given(&["--insecure", "--max-shapes=3"], &[]);
        assert_eq!(c.max_shapes.map(NonZeroUsize::get), Some(3));
        assert!(startup_warnings(&c, &given).is_empty());

        let old = "ELECTRIC_EXPERIMENTAL_MAX_SHAPES";
        let (c, given) = parse_given(&["--insecure"], &[(old, "7")]);
        assert_eq!(c.max_shapes.map(NonZeroUsize::get), Some(7));
        let warnings = startup_warnings(&c, &given);
        assert_eq!(warned(&c, &given), [old]);
        assert!(
            warnings[0]
                .message
                .contains("reads it as ELECTRIC_MAX_SHAPES (rename it)"),
            "{warnings:?}"
        );
        // The current name wins.
        let (c, _) = parse_given(&["--insecure", "--max-shapes=2"], &[(old, "7")]);
        assert_eq!(c.max_shapes.map(NonZeroUsize::get), Some(2));

        for bad in ["0", "-1", "2.5", "many"] {
            let env = Given::from_vars([(old, bad)]);
            let err = Cli::try_parse_given(["ampere", "--insecure"], env).expect_err(bad);
            let err = err.to_string();
            assert!(err.contains(old), "{bad}: {err}");
            assert!(err.contains("a whole number above 0"), "{bad}: {err}");
        }
    }

    #[test]
    fn each_set_variable_ampere_does_not_honour_warns_once_and_honoured_ones_never() {
        let env: Vec<(&str, &str)> = VARIABLES.iter().map(|v| (v.name, v.example)).collect();
        let (c, given) = parse_given(&["--insecure"], &env);
        let expected: Vec<&str> = VARIABLES
            .iter()
            .filter(|v| !matches!(v.support, Support::Honoured { .. } | Support::ClientSide))
            .map(|v| v.name)
            .collect();
        assert_eq!(warned(&c, &given), expected);
        let (c, given) = parse_given(&["--insecure"], &[]);
        assert!(startup_warnings(&c, &given).is_empty());
    }

    #[test]
    fn unknown_keys_of_max_concurrent_requests_are_ignored_with_a_warning_as_electric_runs_them() {
        let value = r#"{"intial":5,"existing":7}"#;
        // clap reads the variable from the process environment: the flag stands for it here.
        let flag = format!("--max-concurrent-requests={value}");
        let env = [("ELECTRIC_MAX_CONCURRENT_REQUESTS", value)];
        let (c, given) = parse_given(&["--insecure", &flag], &env);
        assert_eq!(
            c.max_concurrent_requests,
            AdmissionLimits {
                initial: 300,
                existing: 7
            }
        );
        let warnings = startup_warnings(&c, &given);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].variable, "ELECTRIC_MAX_CONCURRENT_REQUESTS");
        assert!(
            warnings[0].message.contains(r#"ignoring "intial""#),
            "{warnings:?}"
        );
    }

    #[test]
    fn the_connection_cap_is_derived_unless_ampere_max_connections_sets_it() {
        let (c, given) = parse_given(&["--insecure"], &[]);
        assert_eq!(c.max_connections, None);
        assert!(startup_warnings(&c, &given).is_empty());
        let (c, given) = parse_given(&["--insecure", "--max-connections=500"], &[]);
        assert_eq!(c.max_connections, Some(500));
        assert!(startup_warnings(&c, &given).is_empty());
        let zero = parse(&["--insecure", "--max-connections=0"]).expect_err("0 is refused");
        assert!(
            zero.to_string().contains("AMPERE_MAX_CONNECTIONS"),
            "{zero}"
        );
    }

    #[test]
    fn a_flag_given_on_the_command_line_counts_as_set() {
        let (c, given) = parse_given(&["--insecure", "--db-pool-size=5", "--port=4000"], &[]);
        assert_eq!(c.db_pool_size, 5);
        assert!(given.is_set("ELECTRIC_DB_POOL_SIZE"));
        assert!(given.is_set("ELECTRIC_PORT"));
        assert!(!given.is_set("ELECTRIC_SECRET"));
    }

    #[test]
    fn an_ignored_variable_with_a_value_electric_would_refuse_still_starts_and_says_so() {
        let env = [
            ("ELECTRIC_STORAGE", "FILE"),
            ("ELECTRIC_USAGE_REPORTING", "false"),
        ];
        let (c, given) = parse_given(&["--insecure"], &env);
        let warnings = startup_warnings(&c, &given);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0]
            .message
            .contains("Electric would refuse \"FILE\""));
        assert!(warnings[0].message.contains("MEMORY, FAST_FILE"));
        assert_eq!(
            warnings[1].message,
            "ELECTRIC_USAGE_REPORTING is ignored: ampere sends no telemetry"
        );
    }

    #[test]
    fn unknown_electric_variables_warn_as_typos_naming_a_near_known_one() {
        let env = [
            ("ELECTRIC_FOO", "1"),
            ("ELECTRIC_CACHE_MAX_AG", "5"),
            ("ELECTRIC_SECERT", "s"),
            ("ELECTRIC_LOG_LEVL", "debug"),
            ("ELECTRIC_URL", "http://localhost:3000"),
            ("PATH", "/bin"),
        ];
        let (c, given) = parse_given(&["--insecure"], &env);
        let warnings = startup_warnings(&c, &given);
        let by_name: BTreeMap<_, _> = warnings
            .iter()
            .map(|w| (w.variable.as_str(), w.message.as_str()))
            .collect();
        assert_eq!(by_name.len(), 4, "{warnings:?}");
        assert!(by_name["ELECTRIC_FOO"].contains("a typo?"));
        assert!(
            !by_name["ELECTRIC_FOO"].contains("Did you mean"),
            "nothing is near FOO"
        );
        assert!(by_name["ELECTRIC_CACHE_MAX_AG"].ends_with("Did you mean ELECTRIC_CACHE_MAX_AGE?"));
        assert!(by_name["ELECTRIC_SECERT"].ends_with("Did you mean ELECTRIC_SECRET?"));
        assert!(by_name["ELECTRIC_LOG_LEVL"].ends_with("Did you mean ELECTRIC_LOG_LEVEL?"));
    }

    #[test]
    fn edit_distance_counts_transpositions_once() {
        assert_eq!(edit_distance("SECRET", "SECERT"), 1);
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn the_table_names_each_variable_once_with_a_valid_example() {
        let mut names = BTreeSet::new();
        for v in VARIABLES {
            assert!(names.insert(v.name), "{} twice", v.name);
            assert_eq!(
                v.grammar.check(v.example),
                Ok(()),
                "{}={}",
                v.name,
                v.example
            );
            if let Support::Alias { of } = v.support {
                let current = variable(of).expect("an alias names a known variable");
                assert_eq!(current.grammar, v.grammar, "{}", v.name);
            }
        }
    }

    #[test]
    fn every_flag_reads_a_variable_the_table_marks_honoured_and_its_example_parses() {
        let command = Cli::command();
        let mut with_flags = BTreeSet::new();
        for arg in command.get_arguments() {
            let Some(env) = arg.get_env().and_then(|e| e.to_str()) else {
                continue;
            };
            if env.starts_with("AMPERE_") {
                // ampere's own, documented apart from Electric's (docs/config.md).
                continue;
            }
            let v = variable(env).unwrap_or_else(|| panic!("{env} is not in VARIABLES"));
            assert!(
                matches!(v.support, Support::Honoured { .. }),
                "{env} has a flag but is {:?}",
                v.support
            );
            let long = arg.get_long().expect("every setting has a long flag");
            let flag = format!("--{long}={}", v.example);
            let args: &[&str] = if long == "insecure" {
                &[&flag]
            } else {
                &["--insecure", &flag]
            };
            let parsed = parse(args);
            assert!(parsed.is_ok(), "{flag}: {:?}", parsed.err());
            with_flags.insert(env);
        }
        for v in VARIABLES {
            if matches!(v.support, Support::Honoured { .. }) {
                assert!(with_flags.contains(v.name), "{} has no flag", v.name);
            }
        }
    }

    #[test]
    fn docs_config_md_carries_the_table() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config.md");
        let table = reference_markdown();
        if std::env::var_os("AMPERE_BLESS_DOCS").is_some() {
            let text = std::fs::read_to_string(&path).expect("read docs/config.md");
            let (head, rest) = text.split_once(TABLE_START).expect("start marker");
            let (_, tail) = rest.split_once(TABLE_END).expect("end marker");
            let text = format!("{head}{TABLE_START}\n{table}{TABLE_END}{tail}");
            std::fs::write(&path, text).expect("write docs/config.md");
        }
        let text = std::fs::read_to_string(&path).expect("read docs/config.md");
        let expected = format!("{TABLE_START}\n{table}{TABLE_END}");
        assert!(
            text.contains(&expected),
            "docs/config.md is out of date: rerun with AMPERE_BLESS_DOCS=1"
        );
    }

    const TABLE_START: &str = "<!-- table: generated from server/src/config.rs VARIABLES -->";
    const TABLE_END: &str = "<!-- end of table -->";
}
