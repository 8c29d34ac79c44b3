//! The `ampere` binary: configuration, storage recovery, the HTTP server and the driver loop
//! over the real ports.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ampere_core::instance::Config as CoreConfig;
use ampere_core::ports::{Clock, ReplicationTarget};
use ampere_io_real::clock::TokioClock;
use ampere_io_real::embedded_pg::{EmbeddedOptions, EmbeddedPostgres};
use ampere_io_real::metadata::{MetadataMode, MetadataOptions};
use ampere_io_real::pg::RealPg;
use ampere_io_real::standby_metadata::StandbyMetadata;
use ampere_io_real::store::{probe_writable, FileStore};
use ampere_server::app;
use ampere_server::cleanup;
use ampere_server::config::{self, Cli, Command, Config, ShapeDbDir};
use ampere_server::driver::Ports;
use ampere_server::http::fd_limit;
use ampere_server::http::{
    serve_connections, BodyLimits, ConnectionLimits, ConnectionTimeouts, FdBudget, HttpConfig,
    ServedPort, SseTimings, TimeoutListener,
};
use ampere_server::logging::{self, LogFormat, LogStream};
use ampere_server::metrics::{self, Metrics};
use ampere_server::ops;
use ampere_server::registry::Registry;
use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

fn main() -> ExitCode {
    // First, before any thread or file: every connection and shape log is a descriptor, and
    // the soft limit (often 1024) is far below what the hard limit allows.
    let fd_limit = fd_limit::raise_to_hard_limit();
    let (cli, given) = Cli::parse_given();
    let is_serve = matches!(cli.command, None | Some(Command::Serve));
    if is_serve {
        if let Err(e) = cli.config.validate() {
            eprintln!("ampere: {e}");
            return ExitCode::from(2);
        }
    }
    let log_format = match LogFormat::from_env() {
        Ok(format) => format,
        Err(e) => {
            eprintln!("ampere: {e}");
            return ExitCode::from(2);
        }
    };
    // The service logs on stdout; the other commands report there, so they log on stderr.
    let log_stream = if is_serve {
        LogStream::Stdout
    } else {
        LogStream::Stderr
    };
    logging::init(
        log_format,
        cli.config.log_colors,
        cli.config.tracing_filter(),
        log_stream,
    );
    if is_serve {
        // One line per variable ampere does not honour (config::VARIABLES says which).
        for warning in config::startup_warnings(&cli.config, &given) {
            warn!(variable = %warning.variable, "{}", warning.message);
        }
    }
    let fd_limit = log_fd_limit(fd_limit, is_serve);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ampere: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => runtime.block_on(serve(cli.config, fd_limit.unwrap_or(1024))),
        Command::Cleanup(args) => runtime.block_on(cleanup::run(&cli.config, &args)),
        // Exit 0 healthy, 1 a check failed, 2 a configuration error (ops::Verdict).
        Command::Status(args) => return runtime.block_on(ops::status::run(&cli.config, &args)),
        Command::CheckDb(args) => return runtime.block_on(ops::check_db::run(&cli.config, &args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line on stderr, where a terminal or supervisor shows it (the log is on
            // stdout).
            eprintln!("ampere: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(mut config: Config, fd_limit: u64) -> anyhow::Result<()> {
    config.storage_dir = absolute("ELECTRIC_STORAGE_DIR", &config.storage_dir)?;
    if let Some(ShapeDbDir::Path(dir)) = &mut config.shape_db_storage_dir {
        *dir = absolute("ELECTRIC_SHAPE_DB_STORAGE_DIR", dir)?;
    }
    let (store, meta) = open_storage(&config)?;
    let (embedded, database_url) = database(&config).await?;
    let pg = config.real_pg(&database_url)?;

    let clock = TokioClock::new();
    let core_config = CoreConfig::new(
        replication_target(&config),
        config.shape_chunk_bytes_threshold,
    );
    let registry = Registry::new();
    let metrics = config
        .prometheus_port
        .map(|_| Metrics::of_service(registry.clone(), store.clone()));
    let http_config = http_config(&config, fd_limit, clock.unix_micros(), metrics.clone());
    let listener = listen(&config).await?.with_metrics(metrics.clone());
    let metrics_listener = match config.prometheus_port {
        Some(port) => Some(listen_metrics(&config, port).await?),
        None => None,
    };

    let (shutdown_tx, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutting down");
        let _ = shutdown_tx.send(true);
    });
    if let (Some(metrics), Some(listener)) = (metrics, metrics_listener) {
        let slot = core_config.target.slot.clone();
        let limits = metrics_limits(&config);
        spawn_metrics(
            metrics,
            (listener, limits),
            (pg.clone(), slot),
            &registry,
            &shutdown,
        );
    }
    let ports = Ports {
        pg,
        store,
        meta,
        clock,
    };
    let served = app::serve(
        ports,
        core_config,
        http_config,
        config.max_shapes,
        listener,
        registry,
        shutdown,
    )
    .await;
    if let Some(embedded) = embedded {
        let _ = tokio::task::spawn_blocking(move || drop(embedded)).await;
    }
    served.context("replication")
}

/// The HTTP layer's settings from `config`: timeouts, caching, the connection cap for
/// `fd_limit`, the body bounds, the admission limits and whether shapes may be deleted;
/// `seed` seeds request ids and cursor jitter.
fn http_config(config: &Config, fd_limit: u64, seed: u64, metrics: Option<Metrics>) -> HttpConfig {
    HttpConfig {
        long_poll_timeout: config.long_poll_timeout,
        sse: SseTimings {
            stream: config.sse_timeout,
            ..SseTimings::default()
        },
        cache_max_age: config.cache_max_age,
        cache_stale_age: config.cache_stale_age,
        rng_seed: seed ^ u64::from(std::process::id()),
        metrics,
        connections: ConnectionLimits {
            max_connections: max_connections(config, fd_limit),
            header_read_timeout: Some(config.tcp_read_timeout),
            port: ServedPort::Api,
        },
        bodies: BodyLimits {
            read_timeout: config.tcp_read_timeout,
            ..BodyLimits::default()
        },
        admission: config.max_concurrent_requests,
        is_shape_deletion_enabled: config.enable_integration_testing,
        ..HttpConfig::new(config.effective_secret())
    }
}

/// Logs the outcome of raising `RLIMIT_NOFILE` (for the service: the other commands open
/// few files) and returns the soft limit in force, if known.
fn log_fd_limit(raised: std::io::Result<fd_limit::FdLimit>, is_serve: bool) -> Option<u64> {
    match raised {
        Ok(limit) => {
            if is_serve {
                info!(
                    initial_soft = limit.initial_soft,
                    soft = limit.soft,
                    hard = limit.hard,
                    "RLIMIT_NOFILE: raised the soft file-descriptor limit to the hard limit"
                );
            }
            Some(limit.soft)
        }
        Err(e) => {
            warn!(error = %e, "cannot read or raise RLIMIT_NOFILE; the connection cap assumes 1024");
            None
        }
    }
}

/// A derived connection cap below this gets a startup warning.
const LOW_CONNECTION_CAP: usize = 1024;

/// `AMPERE_MAX_CONNECTIONS`, or the share of `fd_limit` storage and Postgres leave
/// ([`FdBudget`]); warns when that share is small or the configured cap exceeds it.
fn max_connections(config: &Config, fd_limit: u64) -> usize {
    let budget = FdBudget {
        fd_limit,
        db_pool_size: config.db_pool_size,
        metrics_connections: config
            .prometheus_port
            .map_or(0, |_| metrics::MAX_CONNECTIONS),
    };
    let derived = budget.default_max_connections();
    let cap = config
        .max_connections
        .map_or(derived, |n| usize::try_from(n).unwrap_or(usize::MAX));
    info!(
        max_connections = cap,
        fd_limit,
        reserved_fds = budget.reserved(),
        "HTTP connection cap (AMPERE_MAX_CONNECTIONS)"
    );
    if config.max_connections.is_some() && budget.is_low_for(cap) {
        warn!(
            max_connections = cap,
            fd_limit,
            reserved_fds = budget.reserved(),
            "AMPERE_MAX_CONNECTIONS is high for the file-descriptor limit: connections at the \
             cap leave too few descriptors for shape logs and Postgres; \
             lower it or raise RLIMIT_NOFILE's hard limit (ulimit -Hn, systemd LimitNOFILE=, \
             docker --ulimit nofile=)"
        );
    } else if config.max_connections.is_none() && cap < LOW_CONNECTION_CAP {
        warn!(
            max_connections = cap,
            fd_limit,
            reserved_fds = budget.reserved(),
            "the file-descriptor limit allows few API connections: connections, open shape \
             logs and Postgres share RLIMIT_NOFILE; raise its hard limit \
             (ulimit -Hn, systemd LimitNOFILE=, docker --ulimit nofile=)"
        );
    }
    cap
}

fn replication_target(config: &Config) -> ReplicationTarget {
    if config.temporary_replication_slot_use_random_name
        && !config.cleanup_replication_slots_on_shutdown
    {
        warn!(
            "ELECTRIC_TEMPORARY_REPLICATION_SLOT_USE_RANDOM_NAME has no effect without \
             CLEANUP_REPLICATION_SLOTS_ON_SHUTDOWN=true"
        );
    }
    let slot = config.effective_slot_name(random_bytes());
    if slot != config.slot_name() {
        warn!(
            %slot,
            "random temporary slot: instances do not exclude each other; each needs its own \
             storage, which must not outlive this instance"
        );
    }
    ReplicationTarget {
        slot,
        publication: config.publication_name(),
        slot_persistence: config.slot_persistence(),
    }
}

/// 16 bytes from the OS's random source (only for random slot names).
fn random_bytes() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    if let Ok(mut urandom) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut urandom, &mut bytes);
    }
    if bytes == [0; 16] {
        // No /dev/urandom: the clock still makes names differ between processes.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = (nanos ^ u128::from(std::process::id())).to_le_bytes();
    }
    bytes
}

/// `path` made absolute, naming `variable` if it cannot be. From here on paths are absolute:
/// the embedded cluster's initdb runs as another user in another working directory, where the
/// default `./persistent` would name a different place.
fn absolute(variable: &str, path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| {
        format!(
            "{variable}={} cannot be made absolute; give an absolute path",
            path.display()
        )
    })
}

/// Binds `ELECTRIC_PORT` on every IPv4 address, or with `ELECTRIC_LISTEN_ON_IPV6` on `[::]`
/// (IPv6, and IPv4 too where the OS is dual-stack), applying Electric's socket timeouts.
async fn listen(config: &Config) -> anyhow::Result<TimeoutListener> {
    let listener = bind(config.listen_on_ipv6, config.port, "ELECTRIC_PORT").await?;
    info!(addr = %listener.local_addr()?, "HTTP API listening");
    Ok(TimeoutListener::new(listener, connection_timeouts(config)))
}

/// `ELECTRIC_TCP_READ_TIMEOUT` and `ELECTRIC_TCP_SEND_TIMEOUT`, for every accepted connection.
fn connection_timeouts(config: &Config) -> ConnectionTimeouts {
    ConnectionTimeouts {
        read: config.tcp_read_timeout,
        send: config.tcp_send_timeout,
    }
}

/// Binds `port` on every IPv4 address, or with `ipv6` on `[::]`; an error names `variable`
/// (the port's variable) and `ELECTRIC_LISTEN_ON_IPV6`.
async fn bind(ipv6: bool, port: u16, variable: &str) -> anyhow::Result<TcpListener> {
    let addr = if ipv6 {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))
    } else {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))
    };
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} ({variable}={port}, ELECTRIC_LISTEN_ON_IPV6={ipv6})")
    })
}

/// Serves `/metrics` on `listener` within `limits` and polls the replication slot's
/// statistics, until `shutdown` flips.
fn spawn_metrics(
    metrics: Metrics,
    (listener, limits): (TimeoutListener, ConnectionLimits),
    (pg, slot): (RealPg, String),
    registry: &Registry,
    shutdown: &watch::Receiver<bool>,
) {
    tokio::spawn(metrics::poll_slot(
        metrics.clone(),
        pg,
        slot,
        registry.clone(),
        shutdown.clone(),
    ));
    // Shed connections are not counted: `ampere_http_connections_shed` is the API's.
    let router = metrics.router();
    tokio::spawn(serve_connections(
        listener,
        router,
        limits,
        None,
        shutdown.clone(),
    ));
}

/// Binds `ELECTRIC_PROMETHEUS_PORT` on the same addresses as the API (`ELECTRIC_LISTEN_ON_IPV6`),
/// applying the API's socket timeouts (its connections are not counted as the API's).
async fn listen_metrics(config: &Config, port: u16) -> anyhow::Result<TimeoutListener> {
    let listener = bind(config.listen_on_ipv6, port, "ELECTRIC_PROMETHEUS_PORT").await?;
    info!(addr = %listener.local_addr()?, "Prometheus metrics listening on /metrics");
    Ok(TimeoutListener::new(listener, connection_timeouts(config)))
}

/// The metrics port's bounds: [`metrics::MAX_CONNECTIONS`] connections, the API's header-read
/// timeout (`ELECTRIC_TCP_READ_TIMEOUT`).
fn metrics_limits(config: &Config) -> ConnectionLimits {
    ConnectionLimits {
        max_connections: metrics::MAX_CONNECTIONS,
        header_read_timeout: Some(config.tcp_read_timeout),
        port: ServedPort::Metrics,
    }
}

/// Probes `ELECTRIC_STORAGE_DIR` and `ELECTRIC_SHAPE_DB_STORAGE_DIR` (before any Postgres
/// connection), then opens the shape-log store in the first and the metadata database in the
/// second (the first, unless set).
fn open_storage(config: &Config) -> anyhow::Result<(FileStore, StandbyMetadata)> {
    let storage = &config.storage_dir;
    probe_storage_dir("ELECTRIC_STORAGE_DIR", storage)?;
    let metadata_dir = config.shape_db_dir();
    if metadata_dir != storage {
        probe_storage_dir("ELECTRIC_SHAPE_DB_STORAGE_DIR", metadata_dir)?;
    }
    let store = FileStore::open_follower(storage).context("opening shape storage")?;
    let mode = if config.shape_db_exclusive_mode {
        MetadataMode::Exclusive
    } else {
        MetadataMode::Wal
    };
    let options = MetadataOptions {
        mode,
        synchronous: config.shape_db_synchronous,
        cache_size_kib: config.shape_db_cache_kib(),
        ..MetadataOptions::default()
    };
    // Shape directories carry their own description, so the lock holder can rebuild lost or
    // corrupt metadata from them (MD-3).
    let meta = StandbyMetadata::open_with_shape_dir(metadata_dir, options, storage)
        .context("opening shape metadata")?;
    Ok((store, meta))
}

/// Probes a storage directory (ST-1). A full disk, the descriptor limit or a device error
/// does not stop startup: ampere starts read-only (existing shapes are served, creation is
/// answered 503) and becomes active by itself once a write succeeds. Any other failure stops
/// it, naming the cause before the fix.
fn probe_storage_dir(variable: &str, dir: &Path) -> anyhow::Result<()> {
    let Err(e) = probe_writable(dir) else {
        return Ok(());
    };
    if let Some(fault) = e.fault() {
        warn!(
            "{variable}={}: {fault}: starting read-only; shapes become writable once storage \
             accepts writes again",
            dir.display()
        );
        return Ok(());
    }
    Err(e).with_context(|| format!("{variable}={} is not usable", dir.display()))
}

/// `DATABASE_URL`, or an embedded PostgreSQL started inside the storage directory.
async fn database(config: &Config) -> anyhow::Result<(Option<EmbeddedPostgres>, String)> {
    if let Some(url) = config.external_database_url() {
        return Ok((None, url.to_owned()));
    }
    let options = EmbeddedOptions::product(&config.storage_dir);
    let embedded = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(options))
        .await
        .context("starting the embedded PostgreSQL")?
        .context("DATABASE_URL is unset and the embedded PostgreSQL could not start")?;
    // the password stays out of logs and terminals: say where it is instead
    let shown = embedded.admin_url_without_password();
    let password_note = embedded
        .password_file()
        .map(|p| format!(" (password in {})", p.display()))
        .unwrap_or_default();
    info!(url = %shown, "DATABASE_URL unset: started embedded PostgreSQL{password_note}");
    // and once for the person at the terminal, on stderr so JSON logs on stdout stay JSON
    eprintln!("ampere: embedded PostgreSQL at {shown}{password_note}");
    let url = embedded.admin_url();
    Ok((Some(embedded), url))
}

async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
