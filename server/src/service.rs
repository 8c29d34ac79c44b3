//! The production [`ShapeApi`]: the registry for lookups, the store for reads, Postgres for
//! catalog lookups, the manual-publishing check and time zone checks, and the driver (through
//! a channel) for shape creation and deletion.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ampere_core::instance::DeletionCause;
use ampere_core::ports::{
    CatalogTable, LogStatus, PgPort, ReadOutcome, ShapeLogStore, SnapshotError, SnapshotRefusal,
};
use ampere_core::shape::{RelationName, ShapeDefinition, ShapeHandle, TableSchema};
use ampere_core::subset::{SubsetQuery, SubsetRows};
use ampere_core::where_clause::tz::Zone;
use ampere_core::where_clause::ZoneMismatch;
use ampere_core::{LogOffset, Lsn};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::api::{
    CatalogUnavailable, CreateShapeError, DeleteShapeError, Health, NotActive, PurgeInfo, ShapeApi,
    ShapeInfo,
};
use crate::driver::Request;
use crate::registry::{ReadState, Registry, StorageDegraded};
use ampere_core::error_chain;

/// How long a shape creation or deletion waits for the service to become active (then 503).
const READY_WAIT: Duration = Duration::from_secs(5);

/// The server's [`ShapeApi`].
#[derive(Clone, Debug)]
pub struct Service<P, S> {
    pg: P,
    store: S,
    registry: Registry,
    requests: mpsc::Sender<Request>,
    /// Each time zone checked against the server so far, by canonical name: `None` if the
    /// server reads it as ampere does. A server's zone data changes only with a restart of
    /// Postgres after a tzdata upgrade, which this process does not see (docs/where.md).
    zones: Arc<Mutex<HashMap<String, Option<ZoneMismatch>>>>,
}

impl<P: PgPort, S: ShapeLogStore> Service<P, S> {
    /// A service over the driver's registry and request channel.
    pub fn new(pg: P, store: S, registry: Registry, requests: mpsc::Sender<Request>) -> Self {
        Self {
            pg,
            store,
            registry,
            requests,
            zones: Arc::default(),
        }
    }

    async fn wait_until_streaming(&self) -> bool {
        let active = |s: &ReadState| s.health == Health::Active;
        let ready = tokio::time::timeout(READY_WAIT, self.registry.wait_for(active)).await;
        ready.is_ok()
    }
}

impl<P: PgPort, S: ShapeLogStore> ShapeApi for Service<P, S> {
    fn shape_for_definition(&self, definition: &ShapeDefinition) -> Option<ShapeInfo> {
        self.registry.by_definition(definition)
    }

    fn shape(&self, handle: &ShapeHandle) -> Option<ShapeInfo> {
        self.registry.by_handle(handle)
    }

    fn record_use(&self, handle: &ShapeHandle) {
        self.registry.record_use(handle);
    }

    async fn table_schema(
        &self,
        relation: RelationName,
    ) -> Result<Option<CatalogTable>, CatalogUnavailable> {
        self.pg.table_schema(relation).await.map_err(|e| {
            warn!(error = %error_chain(&e), "catalog lookup failed");
            CatalogUnavailable
        })
    }

    async fn check_time_zone(
        &self,
        zone: Zone,
    ) -> Result<Option<ZoneMismatch>, CatalogUnavailable> {
        let zones = || self.zones.lock().unwrap_or_else(PoisonError::into_inner);
        let cached = zones().get(zone.name()).cloned();
        if let Some(verdict) = cached {
            return Ok(verdict);
        }
        let instants = zone.probe_instants();
        let server = self
            .pg
            .time_zone_wall_clocks(zone.name().to_owned(), instants.clone())
            .await
            .map_err(|e| {
                warn!(zone = zone.name(), error = %error_chain(&e), "reading the server's time zone data failed");
                CatalogUnavailable
            })?;
        let verdict = zone.check_server(&instants, server.as_deref()).err();
        if let Some(mismatch) = &verdict {
            warn!(%mismatch, "a where clause names a time zone the server reads otherwise");
        }
        zones().insert(zone.name().to_owned(), verdict.clone());
        Ok(verdict)
    }

    async fn create_shape(
        &self,
        definition: ShapeDefinition,
        schema: TableSchema,
    ) -> Result<ShapeInfo, CreateShapeError> {
        if let Some(info) = self.registry.by_definition(&definition) {
            return Ok(info);
        }
        if !self.wait_until_streaming().await {
            return Err(CreateShapeError::NotReady(
                "Timeout waiting for the replication stream to start".into(),
            ));
        }
        // ELECTRIC_MANUAL_TABLE_PUBLISHING: the snapshot's first step, before any handle or
        // storage exists (the snapshot checks again: the operator may undo it meanwhile).
        let relation = schema.relation.clone();
        self.pg
            .check_table_published(relation)
            .await
            .map_err(not_published)?;
        let (reply, answer) = oneshot::channel();
        let request = Request::CreateShape {
            definition,
            schema,
            reply,
        };
        let stopped = || CreateShapeError::Failed {
            message: "Failed to create shape, please retry".into(),
            retry_after_secs: 1,
        };
        self.requests.send(request).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    fn query_subset(
        &self,
        query: SubsetQuery,
    ) -> impl std::future::Future<Output = Result<SubsetRows, SnapshotError>> + Send {
        self.pg.query_subset(query)
    }

    async fn until_active(&self) -> Result<(), NotActive> {
        if self.wait_until_streaming().await {
            return Ok(());
        }
        Err(NotActive {
            message: "Timeout waiting for the replication stream to start".into(),
        })
    }

    async fn delete_shape(&self, handle: ShapeHandle) -> Result<(), DeleteShapeError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || DeleteShapeError::Failed("Failed to delete shape, please retry".into());
        let request = Request::DeleteShape {
            handle,
            cause: DeletionCause::Request,
            reply,
        };
        self.requests.send(request).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    fn refusal(&self, handle: &ShapeHandle) -> Option<SnapshotRefusal> {
        self.registry.refusal(handle)
    }

    fn read(&self, handle: &ShapeHandle, after: LogOffset) -> ReadOutcome {
        self.store.read(handle, after)
    }

    fn status(&self, handle: &ShapeHandle) -> Option<LogStatus> {
        self.registry.by_handle(handle)?;
        self.store.status(handle)
    }

    fn changed(&self, handle: &ShapeHandle) -> impl std::future::Future<Output = ()> + Send {
        // Not `async fn`: the store subscribes when called, before the caller's next read.
        self.store.changed(handle)
    }

    fn last_seen_lsn(&self) -> Lsn {
        self.registry.state().durable_lsn
    }

    fn health(&self) -> Health {
        self.registry.state().health
    }

    fn last_purge(&self) -> Option<PurgeInfo> {
        self.registry.last_purge()
    }

    fn storage_degraded(&self) -> Option<StorageDegraded> {
        self.registry.degraded()
    }
}

/// A failed publication check: the operator's part is named, anything else is transient.
fn not_published(error: SnapshotError) -> CreateShapeError {
    match error {
        SnapshotError::NotPublished { message } => CreateShapeError::TableNotPublished(message),
        other => {
            warn!(error = %error_chain(&other), "checking the publication failed");
            CreateShapeError::Failed {
                message: "Failed to create shape, please retry".into(),
                retry_after_secs: 1,
            }
        }
    }
}
