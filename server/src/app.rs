//! The assembled service: read model, core, HTTP API (served by
//! [`serve_connections`](crate::http::serve_connections), within its connection cap and
//! header deadline), driver loop and, with a shape limit, eviction ([`crate::eviction`]) over
//! any ports and any listener. The `ampere` binary runs it over io-real ports and a TCP
//! listener; the simulation runs the very same function over io-sim ports and a turmoil
//! listener.

use std::num::NonZeroUsize;
use std::sync::Arc;

use ampere_core::error_chain;
use ampere_core::instance::{Config as CoreConfig, Instance};
use ampere_core::ports::{Clock, MetadataStore, PgPort, ShapeLogStore};
use tokio::sync::{mpsc, watch};
use tracing::info;

use crate::api::ShapeInfo;
use crate::driver::{self, DriverError, Ports};
use crate::eviction::Eviction;
use crate::http::{router, serve_connections, HttpConfig};
use crate::registry::Registry;
use crate::service::Service;

/// Shape-creation and deletion requests queued for the driver at most.
const REQUEST_QUEUE: usize = 1024;

/// Why the service stopped.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Shape metadata could not be read at startup.
    #[error("loading shape metadata: {0}")]
    LoadMetadata(String),
    /// The driver stopped with an error.
    #[error(transparent)]
    Driver(#[from] DriverError),
}

/// Runs the service until `shutdown` flips to true (or the driver fails): existing shapes are
/// served from storage at once (read-only until the lock is held), then the driver takes over.
/// `registry` is the read model; callers may keep a clone to observe health. With `max_shapes`
/// (`ELECTRIC_MAX_SHAPES`), the active instance evicts the least recently used shapes beyond
/// it; `None` keeps every shape until it is invalidated.
pub async fn serve<P, S, M, C, L>(
    ports: Ports<P, S, M, C>,
    core_config: CoreConfig,
    http_config: HttpConfig,
    max_shapes: Option<NonZeroUsize>,
    listener: L,
    registry: Registry,
    shutdown: watch::Receiver<bool>,
) -> Result<(), AppError>
where
    P: PgPort,
    S: ShapeLogStore,
    M: MetadataStore,
    C: Clock,
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let (stored, _) = ports
        .meta
        .load()
        .await
        .map_err(|e| AppError::LoadMetadata(error_chain(&e)))?;
    registry.replace_all(stored.iter().map(|s| ShapeInfo {
        handle: s.handle.clone(),
        definition: s.definition.clone(),
        schema: Arc::new(s.schema.clone()),
    }));
    let target = &core_config.target;
    info!(slot = %target.slot, publication = %target.publication, shapes = registry.len(), "starting");
    let core = Instance::new(core_config, ports.clock.now());

    let (requests_tx, requests) = mpsc::channel(REQUEST_QUEUE);
    let service = Service::new(
        ports.pg.clone(),
        ports.store.clone(),
        registry.clone(),
        requests_tx.clone(),
    );
    let metrics = http_config.metrics.clone();
    let eviction = max_shapes.map(|max| {
        let eviction = Eviction {
            max,
            registry: registry.clone(),
            store: ports.store.clone(),
            requests: requests_tx,
            metrics: metrics.clone(),
        };
        tokio::spawn(eviction.run(shutdown.clone()))
    });
    let limits = http_config.connections;
    let app = router(service, http_config);
    let http = tokio::spawn(serve_connections(
        listener,
        app,
        limits,
        metrics.clone(),
        shutdown.clone(),
    ));
    let driven = driver::run(ports, core, requests, shutdown, registry, metrics).await;
    http.abort();
    if let Some(eviction) = eviction {
        eviction.abort();
    }
    Ok(driven?)
}
