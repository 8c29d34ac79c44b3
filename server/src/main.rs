//! The `ampere` binary: configuration, storage recovery, the HTTP server and the driver loop
//! over the real ports.

use std::net::SocketAddr;
use std::process::ExitCode;

use ampere_core::instance::{Config as CoreConfig, Instance, RecoveredShape};
use ampere_core::ports::{Clock, MetadataStore, ReplicationTarget, ShapeLogStore};
use ampere_io_real::clock::TokioClock;
use ampere_io_real::embedded_pg::{EmbeddedOptions, EmbeddedPostgres};
use ampere_io_real::metadata::{MetadataMode, MetadataOptions, SqliteMetadata};
use ampere_io_real::pg::RealPg;
use ampere_io_real::store::{probe_writable, FileStore};
use ampere_server::api::ShapeInfo;
use ampere_server::config::{Cli, Command, Config};
use ampere_server::driver::{self, Ports};
use ampere_server::http::{router, HttpConfig};
use ampere_server::registry::Registry;
use ampere_server::service::Service;
use anyhow::Context as _;
use clap::Parser as _;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = cli.config.validate() {
        eprintln!("ampere: {e}");
        return ExitCode::from(2);
    }
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AMPERE_LOG")
                .unwrap_or_else(|_| cli.config.tracing_filter().into()),
        )
        .init();
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
        Command::Serve => runtime.block_on(serve(cli.config)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line on stderr (the log goes there too, so no `error!` as well).
            eprintln!("ampere: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let (store, meta) = open_storage(&config)?;
    let (embedded, database_url) = database(&config).await?;
    let pg =
        RealPg::from_url(&database_url).context("DATABASE_URL is not a valid PostgreSQL URL")?;

    let registry = Registry::new();
    let (recovered, stamp) = recover(&store, &meta, &registry).await?;
    let target = ReplicationTarget {
        slot: config.slot_name(),
        publication: config.publication_name(),
    };
    info!(slot = %target.slot, publication = %target.publication, shapes = recovered.len(), "starting");
    let clock = TokioClock::new();
    let core_config = CoreConfig::new(target, config.shape_chunk_bytes_threshold);
    let core = Instance::new(core_config, Clock::now(&clock), recovered, stamp);

    let (requests_tx, requests) = mpsc::channel(1024);
    let (shutdown_tx, shutdown) = watch::channel(false);
    let service = Service::new(pg.clone(), store.clone(), registry.clone(), requests_tx);
    let http = start_http(&config, service, &clock, shutdown.clone()).await?;
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutting down");
        let _ = shutdown_tx.send(true);
    });

    let ports = Ports {
        pg,
        store,
        meta,
        clock,
    };
    let driven = driver::run(ports, core, requests, shutdown, registry).await;
    http.abort();
    if let Some(embedded) = embedded {
        // Stopping waits for PostgreSQL's fast shutdown: keep it off the async workers.
        let _ = tokio::task::spawn_blocking(move || drop(embedded)).await;
    }
    driven.context("replication")
}

/// Probes `ELECTRIC_STORAGE_DIR` (before any Postgres connection), then opens the shape-log
/// store and the metadata database inside it.
fn open_storage(config: &Config) -> anyhow::Result<(FileStore, SqliteMetadata)> {
    let storage = &config.storage_dir;
    probe_writable(storage).with_context(|| {
        format!(
            "ELECTRIC_STORAGE_DIR={} is not usable; make it a writable directory for the user \
             running ampere (check the owner of its parent directory)",
            storage.display()
        )
    })?;
    let store = FileStore::open(storage).context("opening shape storage")?;
    let mode = if config.shape_db_exclusive_mode {
        MetadataMode::Exclusive
    } else {
        MetadataMode::Wal
    };
    let options = MetadataOptions {
        mode,
        ..MetadataOptions::default()
    };
    let meta = SqliteMetadata::open(storage, &options).context("opening shape metadata")?;
    Ok((store, meta))
}

/// Binds `ELECTRIC_PORT` and serves the API until `shutdown` flips.
async fn start_http(
    config: &Config,
    service: Service<RealPg, FileStore>,
    clock: &TokioClock,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let http_config = HttpConfig {
        long_poll_timeout: config.long_poll_timeout,
        cache_max_age: config.cache_max_age,
        cache_stale_age: config.cache_stale_age,
        // Request ids and cursor jitter only need to differ between processes.
        rng_seed: clock.unix_micros() ^ u64::from(std::process::id()),
        ..HttpConfig::new(config.effective_secret())
    };
    let app = router(service, http_config);
    let addr = SocketAddr::from(([0, 0, 0, 0], config.port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on ELECTRIC_PORT={}", config.port))?;
    info!(%addr, "HTTP API listening");
    Ok(tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            })
            .await
    }))
}

/// `DATABASE_URL`, or an embedded PostgreSQL inside the storage dir when it is unset.
async fn database(config: &Config) -> anyhow::Result<(Option<EmbeddedPostgres>, String)> {
    if let Some(url) = config.database_url.clone().filter(|u| !u.is_empty()) {
        return Ok((None, url));
    }
    let options = EmbeddedOptions::product(&config.storage_dir);
    let embedded = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(options))
        .await
        .context("starting the embedded PostgreSQL")?
        .context("DATABASE_URL is unset and the embedded PostgreSQL could not start")?;
    let url = embedded.admin_url();
    info!(url = %url, "DATABASE_URL unset: started embedded PostgreSQL");
    println!("ampere: embedded PostgreSQL at {url}");
    Ok((Some(embedded), url))
}

/// Loads shape metadata and logs; discards shapes whose snapshot never completed.
async fn recover(
    store: &FileStore,
    meta: &SqliteMetadata,
    registry: &Registry,
) -> anyhow::Result<(Vec<RecoveredShape>, ampere_core::shape::HandleStamp)> {
    let (stored, stamp) = meta.load().await.context("loading shape metadata")?;
    let mut recovered = Vec::with_capacity(stored.len());
    for shape in stored {
        let log = match shape.snapshot {
            Some(_) => Some(
                store
                    .recover(&shape.handle)
                    .await
                    .context("recovering shape log")?,
            ),
            None => None,
        };
        let complete = store
            .status(&shape.handle)
            .is_some_and(|s| s.snapshot_complete);
        let Some(log) = log.filter(|_| complete) else {
            warn!(handle = %shape.handle, "discarding shape whose snapshot did not complete");
            store
                .remove_shape(&shape.handle)
                .await
                .context("removing incomplete shape")?;
            meta.delete_shape(&shape.handle)
                .await
                .context("removing incomplete shape")?;
            continue;
        };
        registry.insert(ShapeInfo {
            handle: shape.handle.clone(),
            definition: shape.definition.clone(),
            schema: std::sync::Arc::new(shape.schema.clone()),
        });
        recovered.push(RecoveredShape { stored: shape, log });
    }
    Ok((recovered, stamp))
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
