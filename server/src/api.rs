//! The boundary between the HTTP layer and the rest of the server: what a request handler
//! may ask. The production implementation is backed by the driver loop and the shape-log
//! store; HTTP unit tests use a fake.

use std::future::Future;
use std::sync::Arc;

use ampere_core::ports::{CatalogTable, LogStatus, ReadOutcome, SnapshotError, SnapshotRefusal};
use ampere_core::shape::{RelationName, ShapeDefinition, ShapeHandle, TableSchema};
use ampere_core::subset::{SubsetQuery, SubsetRows};
use ampere_core::where_clause::tz::Zone;
use ampere_core::where_clause::ZoneMismatch;
use ampere_core::{LogOffset, Lsn};

/// A live shape, as readers see it.
#[derive(Clone, Debug)]
pub struct ShapeInfo {
    /// The shape's handle.
    pub handle: ShapeHandle,
    /// Its definition.
    pub definition: ShapeDefinition,
    /// The table as it was when the shape was created.
    pub schema: Arc<TableSchema>,
}

/// Readiness, for `/v1/health` and admission (deploy-semantics §1.1).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Health {
    /// Holding the lock and streaming: shapes can be created.
    Active,
    /// Metadata loaded, not the active replicator (lock busy, Postgres unreachable, setting
    /// up): existing shapes are served read-only.
    Waiting,
    /// Before metadata is loaded.
    #[default]
    Starting,
}

impl From<ampere_core::instance::Health> for Health {
    fn from(health: ampere_core::instance::Health) -> Self {
        match health {
            ampere_core::instance::Health::Active => Self::Active,
            ampere_core::instance::Health::Waiting => Self::Waiting,
        }
    }
}

/// The last continuity break, for the health body (deploy-semantics CT-2).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PurgeInfo {
    /// Purges since this process started.
    pub count: u64,
    /// Why the last one happened.
    pub reason: &'static str,
}

/// Why a shape could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateShapeError {
    /// The service is not active (starting, reconnecting): 503 Retry-After 5.
    #[error("{0}")]
    NotReady(String),
    /// Creation or its snapshot failed transiently: 503 Retry-After 1 or 10.
    #[error("{message}")]
    Failed {
        /// Text for the 503 body.
        message: String,
        /// `retry-after` seconds.
        retry_after_secs: u32,
    },
    /// `ELECTRIC_MANUAL_TABLE_PUBLISHING`: the table is not in the publication or lacks
    /// `REPLICA IDENTITY FULL`; no shape was created. 503 Retry-After 10, a known error, as
    /// Electric answers: clients retry until an administrator has run the SQL the message
    /// names.
    #[error("{0}")]
    TableNotPublished(String),
    /// The table's snapshot was refused moments ago (privileges, a relation Postgres will
    /// not publish): 403 or 400 with the reason, not retried on every request.
    #[error("{0}")]
    Refused(SnapshotRefusal),
}

/// The service did not become active within the readiness wait (starting, a standby, or
/// reconnecting): 503 Retry-After 5, as for shape creation (protocol.md §6.9).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct NotActive {
    /// Text for the 503 body.
    pub message: String,
}

/// Why a shape could not be deleted.
#[derive(Debug, thiserror::Error)]
pub enum DeleteShapeError {
    /// The service is not active (anymore): 503 Retry-After 5.
    #[error(transparent)]
    NotActive(#[from] NotActive),
    /// No live shape has that handle: 404.
    #[error("No existing shape found")]
    NotFound,
    /// Removing its log or row failed, or the driver stopped: 503 Retry-After 1.
    #[error("{0}")]
    Failed(String),
}

/// Why a catalog lookup failed.
#[derive(Debug, thiserror::Error)]
#[error("Cannot connect to the database to verify the shape. Please try again later.")]
pub struct CatalogUnavailable;

/// What the HTTP layer may ask of the server.
pub trait ShapeApi: Clone + Send + Sync + 'static {
    /// The live shape for a definition, if any.
    fn shape_for_definition(&self, definition: &ShapeDefinition) -> Option<ShapeInfo>;
    /// The live shape with this handle, if any.
    fn shape(&self, handle: &ShapeHandle) -> Option<ShapeInfo>;
    /// Records that a shape request is served for this shape (a log read, a long poll, an SSE
    /// stream, a HEAD): its last use, by which shapes beyond `ELECTRIC_MAX_SHAPES` are evicted,
    /// least recently used first. Cheap: called on every shape request.
    fn record_use(&self, handle: &ShapeHandle);
    /// Looks the table up in the catalog; `Ok(None)` when it does not exist.
    fn table_schema(
        &self,
        relation: RelationName,
    ) -> impl Future<Output = Result<Option<CatalogTable>, CatalogUnavailable>> + Send;
    /// Whether the database server reads time zone `zone` as ampere does (`zone_check`): a
    /// where clause naming a zone it reads otherwise is refused. `Ok(None)` if it does.
    fn check_time_zone(
        &self,
        zone: Zone,
    ) -> impl Future<Output = Result<Option<ZoneMismatch>, CatalogUnavailable>> + Send;
    /// Returns the live shape for the definition, creating it (and starting its snapshot)
    /// if none exists. Resolves once the shape is registered, not when its snapshot ends.
    fn create_shape(
        &self,
        definition: ShapeDefinition,
        schema: TableSchema,
    ) -> impl Future<Output = Result<ShapeInfo, CreateShapeError>> + Send;
    /// Reads a subset of a shape's rows (protocol.md §6.10) on the bounded pool.
    fn query_subset(
        &self,
        query: SubsetQuery,
    ) -> impl Future<Output = Result<SubsetRows, SnapshotError>> + Send;
    /// Resolves once the service is active (it may create and delete shapes), or fails
    /// after a bounded wait (§6.9: 5 s).
    fn until_active(&self) -> impl Future<Output = Result<(), NotActive>> + Send;
    /// Deletes the live shape with this handle (`DELETE /v1/shape`, §1.5): resolves once its
    /// log and row are gone and its handle retired for good.
    fn delete_shape(
        &self,
        handle: ShapeHandle,
    ) -> impl Future<Output = Result<(), DeleteShapeError>> + Send;
    /// Why the shape with this handle went away, if its snapshot was refused (its readers
    /// then answer with the refusal, not a 409 that would send the client round again).
    fn refusal(&self, handle: &ShapeHandle) -> Option<SnapshotRefusal> {
        let _ = handle;
        None
    }
    /// Reads after `after` up to the end of its chunk.
    fn read(&self, handle: &ShapeHandle, after: LogOffset) -> ReadOutcome;
    /// The shape's durable state.
    fn status(&self, handle: &ShapeHandle) -> Option<LogStatus>;
    /// Resolves when the shape's durable state changes (or it is removed). Interest starts
    /// when this is *called*, not when the future is first polled: call it before reading,
    /// so a change between the read and the wait is never missed. It resolves once per
    /// change, never repeatedly while nothing changes.
    fn changed(&self, handle: &ShapeHandle) -> impl Future<Output = ()> + Send;
    /// The last LSN whose changes are durable in every shape (`global_last_seen_lsn`).
    fn last_seen_lsn(&self) -> Lsn;
    /// Current readiness.
    fn health(&self) -> Health;
    /// The last purge, if any happened since start.
    fn last_purge(&self) -> Option<PurgeInfo> {
        None
    }
    /// Why storage writes fail, while they do.
    fn storage_degraded(&self) -> Option<crate::registry::StorageDegraded> {
        None
    }
}
