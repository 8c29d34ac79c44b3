//! The driver: the one loop that feeds the core its inputs and executes its outputs through
//! the ports. Production runs it over io-real ports. It holds no domain state: every `if`
//! about Postgres or shapes lives in the core.
//!
//! With [`Metrics`] it times snapshots (shape requested → snapshot taken) and flushes
//! (`FlushLogs` issued → flushed) with its clock port, the one time source it has, so the
//! simulation measures in simulated time and the binary in the tokio clock's.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use ampere_core::instance::{Deletion, DeletionCause, IngestStats, Input, Instance, Output};
use ampere_core::instance::{LoadedShape, LoadedStorage};
use ampere_core::pgoutput::Oid;
use ampere_core::ports::{
    Clock, DisconnectKind, MetadataStore, PgError, PgPort, ReplicationMessage, ReplicationSession,
    ReplicationStream, ShapeLogStore, SlotStarted, SnapshotError, StorageError, StorageFault,
    StoredShape, SystemIdentity,
};
use ampere_core::shape::{HandleStamp, RelationName, ShapeDefinition, ShapeHandle, TableSchema};
use ampere_core::snapshot::PgSnapshot;
use ampere_core::time::Instant;
use ampere_core::{error_chain, OpId};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::api::{CreateShapeError, DeleteShapeError, NotActive, ShapeInfo};
use crate::metrics::Metrics;
use crate::registry::{Ingest, ReadState, Registry, StorageDegraded};

mod filter_ends;

use filter_ends::FilterEndLane;

/// How long shutdown waits for in-flight flushes.
const SHUTDOWN_FLUSH_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// In-flight operations (flushes, snapshots, connects) at most.
pub const IN_FLIGHT_MAX: usize = 64;

/// The ports the driver runs over.
#[derive(Clone, Debug)]
pub struct Ports<P, S, M, C> {
    /// Postgres.
    pub pg: P,
    /// Shape logs.
    pub store: S,
    /// Shape metadata.
    pub meta: M,
    /// Time.
    pub clock: C,
}

/// A request from the HTTP layer.
#[derive(Debug)]
pub enum Request {
    /// Find or create the shape for a definition.
    CreateShape {
        /// The definition.
        definition: ShapeDefinition,
        /// The table as validated.
        schema: TableSchema,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<ShapeInfo, CreateShapeError>>,
    },
    /// Delete the shape with this handle (`DELETE /v1/shape`, or an eviction beyond
    /// `ELECTRIC_MAX_SHAPES`).
    DeleteShape {
        /// The shape.
        handle: ShapeHandle,
        /// Why, for the log.
        cause: DeletionCause,
        /// Where the answer goes, once the shape's log and row are gone.
        reply: oneshot::Sender<Result<(), DeleteShapeError>>,
    },
}

/// Why the driver stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The core asked for an operator (configuration, privileges).
    #[error("{0}")]
    Fatal(String),
    /// Storage could not be loaded for a reason that does not pass by itself (a corrupt or
    /// foreign storage directory, a refused permission): an operator must look. A full disk,
    /// the descriptor limit or a device error degrade instead ([`StorageError::fault`]).
    #[error("shape storage failed: {0}")]
    Storage(String),
}

type Task<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A failed Postgres step, in the core's words.
type StepError = (DisconnectKind, String);

/// A failed storage operation: whether storage fenced us, the resource that ran out (if
/// that is why), and the error rendered.
type StorageFailure = (bool, Option<StorageFault>, String);

fn storage_failure<E: StorageError>(e: &E) -> StorageFailure {
    (e.is_fenced(), e.fault(), error_chain(e))
}

/// Completed in-flight work, turned into an input by the loop.
enum Completion<Se, St> {
    Connected {
        op: OpId,
        result: Result<(Se, SystemIdentity), StepError>,
    },
    Locked {
        op: OpId,
        session: Se,
        result: Result<bool, StepError>,
    },
    LockHolders {
        op: OpId,
        result: Result<Vec<i32>, String>,
    },
    Relations {
        op: OpId,
        result: Result<Vec<(Oid, RelationName)>, String>,
    },
    Terminated {
        pid: i32,
        result: Result<bool, String>,
    },
    Started {
        op: OpId,
        result: Result<(St, SlotStarted), StepError>,
    },
    Flushed {
        op: OpId,
        /// When `FlushLogs` was issued.
        issued: Instant,
        /// On failure: whether storage fenced us (another instance took the lease), and why.
        result: Result<(), StorageFailure>,
    },
    Snapshot {
        op: OpId,
        /// When the shape was requested.
        requested: Instant,
        result: Result<PgSnapshot, SnapshotError>,
    },
}

/// A shape-creation request waiting for its answer.
struct PendingReply {
    reply: oneshot::Sender<Result<ShapeInfo, CreateShapeError>>,
    /// When the request reached the core (snapshot latency starts here).
    requested: Instant,
}

/// Runs the loop until `shutdown` flips to true or a fatal error, recording snapshot and
/// flush latencies into `metrics` if given.
pub async fn run<P, S, M, C>(
    ports: Ports<P, S, M, C>,
    mut core: Instance,
    mut requests: mpsc::Receiver<Request>,
    mut shutdown: watch::Receiver<bool>,
    registry: Registry,
    metrics: Option<Metrics>,
) -> Result<(), DriverError>
where
    P: PgPort,
    S: ShapeLogStore,
    M: MetadataStore,
    C: Clock,
{
    let mut driver = Driver {
        ports,
        session: None,
        stream: None,
        in_flight: FuturesUnordered::new(),
        replies: BTreeMap::new(),
        deletions: BTreeMap::new(),
        filter_ends: FilterEndLane::new(),
        has_removal_failed: false,
        next_request: 0,
        pending: VecDeque::new(),
        registry,
        metrics,
        ingest: Ingest::default(),
    };
    loop {
        driver.drain(&mut core).await?;
        let deadline = core.poll_timeout();
        let clock = driver.ports.clock.clone();
        let sleep = async move {
            match deadline {
                Some(d) => clock.sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let can_accept = driver.in_flight.len() < IN_FLIGHT_MAX;
        // Requests and due timers rank above replication messages: while the walsender
        // works off a backlog a message is always ready, and ranking it first starved shape
        // creations and the status timer for as long as the backlog lasted (RP-4: never the
        // timer). Both are rare and cheap; the stream is read again on the next turn.
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            Some(done) = driver.in_flight.next() => driver.complete(&mut core, done),
            result = driver.filter_ends.finished() => {
                driver.storage(result, "persisting ended snapshot filters");
                driver.filter_ends.start_next(&driver.ports.meta);
            }
            Some(req) = requests.recv(), if can_accept => driver.request(&mut core, req),
            () = sleep => {
                let now = driver.ports.clock.now();
                if deadline.is_some_and(|d| now >= d) {
                    core.handle_timeout(now);
                }
            }
            msg = recv(&mut driver.stream), if can_accept => driver.received(&mut core, msg),
        }
    }
    driver.shutdown(&mut core).await
}

async fn recv<St: ReplicationStream>(
    stream: &mut Option<St>,
) -> Result<ReplicationMessage, St::Error> {
    match stream {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

struct Driver<P: PgPort, S, M: MetadataStore, C> {
    ports: Ports<P, S, M, C>,
    /// The replication connection before it streams (it may hold the lock).
    session: Option<P::Session>,
    stream: Option<P::Stream>,
    in_flight: FuturesUnordered<Task<Completion<P::Session, P::Stream>>>,
    replies: BTreeMap<OpId, PendingReply>,
    /// Deletion requests waiting for the core's answer.
    deletions: BTreeMap<OpId, oneshot::Sender<Result<(), DeleteShapeError>>>,
    /// Rows recording ended snapshot filters, written in the background (`filter_ends`).
    filter_ends: FilterEndLane<M::Error>,
    /// Whether the last shape removal failed to delete its log or row: a deletion answered
    /// right after it must not report success, since a reload of storage would bring the
    /// shape back (the degraded instance reloads, and the client's retry deletes it then).
    has_removal_failed: bool,
    next_request: u64,
    /// Inputs produced while executing outputs, fed after the drain.
    pending: VecDeque<Input>,
    registry: Registry,
    metrics: Option<Metrics>,
    /// What replication delivered, as last published.
    ingest: Ingest,
}

/// 2000-01-01 00:00:00 UTC (Postgres's epoch, which commit times count from) in Unix
/// microseconds.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

impl<P, S, M, C> Driver<P, S, M, C>
where
    P: PgPort,
    S: ShapeLogStore,
    M: MetadataStore,
    C: Clock,
{
    /// Writes `shapes` in one metadata transaction: rows recording a snapshot in place, so
    /// metadata writes land in the order the core issued them; rows recording an ended
    /// snapshot filter behind the driver's back, in order among themselves
    /// ([`FilterEndLane`]).
    async fn persist_shapes(&mut self, shapes: Vec<StoredShape>) {
        let (filter_ends, snapshots): (Vec<_>, Vec<_>) =
            shapes.into_iter().partition(|s| s.snapshot_filter_done);
        if !filter_ends.is_empty() {
            debug!(
                shapes = filter_ends.len(),
                "persisting ended snapshot filters"
            );
            self.filter_ends.push(&self.ports.meta, filter_ends);
        }
        if !snapshots.is_empty() {
            debug!(shapes = snapshots.len(), "persisting shapes");
            let result = self.ports.meta.put_shapes(snapshots).await;
            self.storage(result, "persisting shapes");
        }
    }

    /// Waits until every queued filter-end row is written: before a metadata write that may
    /// touch the same rows (a removal, the identity after a purge), a reload, and shutdown.
    async fn settle_filter_ends(&mut self) {
        for result in self.filter_ends.settle(&self.ports.meta).await {
            self.storage(result, "persisting ended snapshot filters");
        }
    }

    /// Executes outputs until the core has none, feeding inputs produced meanwhile.
    async fn drain(&mut self, core: &mut Instance) -> Result<(), DriverError> {
        loop {
            while let Some(output) = core.poll_output() {
                if let Output::PersistShape { shape } = output {
                    // A run of them (one per shape whose filtering ended, after a flush) is
                    // one metadata transaction.
                    let mut shapes = vec![shape];
                    shapes.extend(std::iter::from_fn(|| core.poll_persist_shape()));
                    self.persist_shapes(shapes).await;
                    continue;
                }
                self.execute(output).await?;
            }
            let Some(input) = self.pending.pop_front() else {
                break;
            };
            core.handle_input(self.ports.clock.now(), input);
        }
        self.registry.publish(ReadState {
            health: core.health().into(),
            durable_lsn: core.durable_lsn(),
        });
        self.registry.set_acknowledged_lsn(core.acked_lsn());
        self.publish_ingest(core.ingest_stats());
        Ok(())
    }

    /// Publishes the core's ingest counters once a transaction was taken since the last
    /// publish, with the replication lag: the last one's commit time on the server to now.
    fn publish_ingest(&mut self, stats: IngestStats) {
        if stats.transactions == self.ingest.transactions {
            return; // Changes and the commit time move only with a transaction.
        }
        let now = i64::try_from(self.ports.clock.unix_micros()).unwrap_or(i64::MAX);
        let lag_micros = stats
            .last_commit_time_micros
            .map(|commit| now.saturating_sub(commit.saturating_add(PG_EPOCH_UNIX_MICROS)));
        self.ingest = Ingest {
            transactions: stats.transactions,
            changes: stats.changes,
            lag_micros,
        };
        self.registry.set_ingest(self.ingest);
    }

    #[allow(clippy::too_many_lines)] // one arm per output; splitting hides the mapping
    async fn execute(&mut self, output: Output) -> Result<(), DriverError> {
        debug!(?output, "output");
        match output {
            Output::ConnectReplication { op } => {
                self.stop_replication();
                let connect = self.ports.pg.connect_replication();
                self.in_flight.push(Box::pin(async move {
                    let result = connect.await.map_err(|e| (e.kind(), error_chain(&e)));
                    Completion::Connected { op, result }
                }));
            }
            Output::TryLock { op, slot } => {
                let session = self
                    .session
                    .take()
                    .expect("invariant: TryLock follows Connected");
                let attempt = session.try_advisory_lock(slot);
                self.in_flight.push(Box::pin(async move {
                    let (session, result) = attempt.await;
                    let result = result.map_err(|e| (e.kind(), error_chain(&e)));
                    Completion::Locked {
                        op,
                        session,
                        result,
                    }
                }));
            }
            Output::FindStaleLockHolders { op, slot, own_pid } => {
                info!(%slot, "waiting for the replication lock");
                let find = self.ports.pg.stale_lock_holders(slot, own_pid);
                self.in_flight.push(Box::pin(async move {
                    let result = find.await.map_err(|e| error_chain(&e));
                    Completion::LockHolders { op, result }
                }));
            }
            Output::TerminateBackend { pid } => {
                warn!(
                    pid,
                    "terminating a backend holding the lock of an inactive slot"
                );
                let terminate = self.ports.pg.terminate_backend(pid);
                self.in_flight.push(Box::pin(async move {
                    let result = terminate.await.map_err(|e| error_chain(&e));
                    Completion::Terminated { pid, result }
                }));
            }
            Output::LoadStorage { op } => match self.load_storage().await {
                Ok(storage) => {
                    self.registry.storage_recovered();
                    self.pending.push_back(Input::StorageLoaded { op, storage });
                }
                // Another instance promoted since this one took the lock, so it holds the
                // lock now: a lost lock, not broken storage.
                Err((true, _, message)) => {
                    warn!(error = %message, "storage lease taken while loading: stepping down");
                    let kind = DisconnectKind::Transient;
                    let failed = Input::ReplicationFailed { op, kind, message };
                    self.pending.push_back(failed);
                }
                // A full disk (the lease write is the first to fail), the descriptor limit or
                // a device error: stay read-only and try again after the core's back-off.
                Err((false, Some(fault), message)) => {
                    self.record_degraded("loading storage", Some(&fault), &message);
                    let kind = DisconnectKind::Transient;
                    let failed = Input::ReplicationFailed { op, kind, message };
                    self.pending.push_back(failed);
                }
                Err((false, None, message)) => return Err(DriverError::Storage(message)),
            },
            Output::StartStreaming { op, target } => {
                let session = self
                    .session
                    .take()
                    .expect("invariant: StartStreaming holds the lock");
                let start = session.start_streaming(target);
                self.in_flight.push(Box::pin(async move {
                    let result = start.await.map_err(|e| (e.kind(), error_chain(&e)));
                    Completion::Started { op, result }
                }));
            }
            Output::StopReplication { reason } => {
                warn!(%reason, "replication stopped; serving read-only until the lock is held again");
                self.stop_replication();
            }
            Output::RefreshReadModel => self.refresh_read_model().await,
            Output::PersistIdentity { identity } => {
                self.settle_filter_ends().await;
                let put = self.ports.meta.put_identity(identity);
                let result = put.await;
                self.storage(result, "persisting the replication identity");
            }
            Output::Purged { reason } => {
                warn!(
                    reason,
                    "continuity lost: purging every shape; clients will refetch"
                );
                self.registry.record_purge(reason);
            }
            Output::SendStandbyStatus(status) => {
                if let Some(stream) = self.stream.as_mut() {
                    if let Err(e) = stream.send_status(status).await {
                        warn!(error = %error_chain(&e), "sending standby status failed");
                        self.stream = None;
                        self.pending
                            .push_back(Input::ReplicationLost { kind: e.kind() });
                    }
                }
            }
            Output::Append { handle, entries } => {
                // Fenced: a store that found the lease taken (a flush whose failure the core
                // has not heard of yet) refuses appends until promoted again.
                let result = self.ports.store.append(&handle, entries);
                self.storage(result, "appending to a shape log");
            }
            Output::FlushLogs { op } => {
                let issued = self.ports.clock.now();
                let flush = self.ports.store.flush();
                self.in_flight.push(Box::pin(async move {
                    let result = flush.await.map_err(|e| storage_failure(&e));
                    Completion::Flushed { op, issued, result }
                }));
            }
            Output::CreateShape {
                op,
                shape,
                stamp,
                reserve_stamps,
                snapshot,
            } => {
                self.create_shape(op, shape, stamp, reserve_stamps, snapshot)
                    .await;
            }
            Output::ShapeExists { op, handle } => {
                let info = self.registry.by_handle(&handle);
                if let Some(pending) = self.replies.remove(&op) {
                    let answer = info.ok_or_else(|| CreateShapeError::Failed {
                        message: "Failed to create shape, please retry".into(),
                        retry_after_secs: 1,
                    });
                    let _ = pending.reply.send(answer);
                }
            }
            Output::ShapeRefused { op, reason } => {
                if let Some(pending) = self.replies.remove(&op) {
                    let _ = pending
                        .reply
                        .send(Err(CreateShapeError::NotReady(reason.into())));
                }
            }
            Output::ShapeDenied { op, refusal } => {
                if let Some(pending) = self.replies.remove(&op) {
                    let _ = pending.reply.send(Err(CreateShapeError::Refused(refusal)));
                }
            }
            Output::RefuseShape { handle, refusal } => {
                warn!(%handle, reason = %refusal, "snapshot refused: answered with the reason");
                self.registry.refuse(&handle, refusal);
            }
            Output::CheckRelations {
                op,
                tables,
                publication,
            } => {
                debug!(tables = tables.len(), "checking the shapes' tables");
                let check = self.ports.pg.relation_names(tables, publication);
                self.in_flight.push(Box::pin(async move {
                    let result = check.await.map_err(|e| error_chain(&e));
                    Completion::Relations { op, result }
                }));
            }
            Output::PersistShape { shape } => self.persist_shapes(vec![shape]).await,
            Output::RemoveShape { handle, reason } => {
                info!(%handle, reason, "removing shape");
                self.settle_filter_ends().await;
                self.registry.remove(&handle);
                let remove = self.ports.store.remove_shape(&handle);
                let removed = remove.await;
                let is_log_removed = removed.is_ok();
                self.storage(removed, "removing a shape log");
                let delete = self.ports.meta.delete_shape(&handle);
                let deleted = delete.await;
                let is_row_deleted = deleted.is_ok();
                self.storage(deleted, "deleting a shape row");
                self.has_removal_failed = !(is_log_removed && is_row_deleted);
            }
            Output::AnswerDeletion { op, outcome } => self.answer_deletion(op, outcome),
            Output::Fatal { message } => return Err(DriverError::Fatal(message)),
        }
        Ok(())
    }

    /// Answers a deletion request with the core's outcome, unless the removal it follows
    /// failed to reach storage.
    fn answer_deletion(&mut self, op: OpId, outcome: Deletion) {
        let Some(reply) = self.deletions.remove(&op) else {
            return;
        };
        let answer = match outcome {
            Deletion::Removed if self.has_removal_failed => Err(DeleteShapeError::Failed(
                "Failed to delete shape, please retry".into(),
            )),
            Deletion::Removed => Ok(()),
            Deletion::NotFound => Err(DeleteShapeError::NotFound),
            Deletion::NotActive => Err(DeleteShapeError::NotActive(NotActive {
                message: "Timeout waiting for the replication stream to start".into(),
            })),
        };
        let _ = reply.send(answer);
    }

    /// The stamp reservation in Postgres when asked (ID-2), then log directory, then
    /// metadata row, then the answer, then the snapshot (SN-1).
    async fn create_shape(
        &mut self,
        op: OpId,
        shape: StoredShape,
        stamp: HandleStamp,
        reserve_stamps: Option<HandleStamp>,
        snapshot: ampere_core::ports::SnapshotRequest,
    ) {
        let handle = shape.handle.clone();
        let requested = self
            .replies
            .get(&op)
            .map_or_else(|| self.ports.clock.now(), |pending| pending.requested);
        let info = ShapeInfo {
            handle: handle.clone(),
            definition: shape.definition.clone(),
            schema: Arc::new(shape.schema.clone()),
        };
        let publication = snapshot.publication.clone();
        let prepared = async {
            if let Some(through) = reserve_stamps {
                let reserve = self.ports.pg.reserve_stamps(publication, through);
                reserve.await.map_err(|e| (false, error_chain(&e)))?;
            }
            self.ports
                .store
                .create_shape(&handle)
                .await
                .map_err(|e| (e.is_fenced(), error_chain(&e)))?;
            self.ports
                .meta
                .put_shape(shape, stamp)
                .await
                .map_err(|e| (e.is_fenced(), error_chain(&e)))
        };
        if let Err((fenced, e)) = prepared.await {
            error!(%handle, error = %e, "creating the shape failed");
            if fenced {
                self.fenced("creating a shape");
            }
            if let Some(pending) = self.replies.remove(&op) {
                let _ = pending.reply.send(Err(CreateShapeError::Failed {
                    message: "Failed to create shape, please retry".into(),
                    retry_after_secs: 1,
                }));
            }
            let refusal = None;
            self.pending
                .push_back(Input::SnapshotFailed { op, refusal });
            return;
        }
        info!(%handle, table = %info.schema.relation, "created shape");
        self.registry.insert(info.clone());
        if let Some(pending) = self.replies.remove(&op) {
            let _ = pending.reply.send(Ok(info));
        }
        let writer = self.ports.store.snapshot_writer(&handle);
        let take = self.ports.pg.take_snapshot(snapshot, writer);
        self.in_flight.push(Box::pin(async move {
            Completion::Snapshot {
                op,
                requested,
                result: take.await,
            }
        }));
    }

    /// The outcome of a storage write: a fenced write means another instance took the
    /// storage lease, so this one lost the lock (and may not have heard yet): it steps down
    /// instead of failing. Any other failure degrades ([`Driver::degrade`]).
    fn storage<E: StorageError>(&mut self, result: Result<(), E>, what: &'static str) {
        match result {
            Ok(()) => {}
            Err(e) if e.is_fenced() => self.fenced(what),
            Err(e) => self.degrade(what, e.fault().as_ref(), &error_chain(&e)),
        }
    }

    /// A storage write failed (a full disk, the descriptor limit, a device error, or an
    /// append refused because an earlier flush of the shape failed): what follows it may
    /// depend on it — a standby status after the acked position it names (CT-5), a flush
    /// after an append — so no status goes out any more (the stream is dropped here, before
    /// any output queued behind the failed one runs) and the core is told the stream is
    /// lost. It stops replication (the store follows again and serves what is durable),
    /// backs off, and reloads storage once a promotion can write again; recovery truncates
    /// what the failure left half-written and the slot re-sends everything unconfirmed.
    /// Exiting instead stopped the reads too, and a restart on a full disk could not start.
    fn degrade(&mut self, what: &'static str, fault: Option<&StorageFault>, error: &str) {
        self.record_degraded(what, fault, error);
        self.stream = None;
        self.pending.push_back(Input::ReplicationLost {
            kind: DisconnectKind::Transient,
        });
    }

    /// Says why storage is degraded: a warning naming the cause first (errno and path), and
    /// the reason `/v1/health` and the `ampere_storage_degraded` gauge show until a
    /// promotion writes again.
    fn record_degraded(&mut self, what: &'static str, fault: Option<&StorageFault>, error: &str) {
        let (reason, message) = match fault {
            Some(fault) => (fault.kind.label(), format!("{fault} while {what}")),
            None => ("error", format!("storage write failed while {what}")),
        };
        warn!(
            reason,
            error, "{message}: acknowledging nothing, serving durable shapes read-only, retrying"
        );
        self.registry
            .storage_degraded(StorageDegraded { reason, message });
    }

    /// Another instance took the storage lease (deploy-semantics §2 item 13): this one lost
    /// the lock and may not have heard yet. No status goes out any more and the core is told;
    /// if active, it stops replication (`StopReplication` demotes the store) after the outputs
    /// it queued as the writer, which do no harm meanwhile: the lease refuses their durable
    /// writes and appends are only buffered until the demotion drops them. (Demoting here made
    /// those appends fail as read-only, which stopped the process: seed 0x11d.) The session is
    /// kept: before streaming it is the next term's lock attempt, not this term's.
    fn fenced(&mut self, what: &'static str) {
        warn!(
            what,
            "storage lease taken by another instance: stepping down"
        );
        self.stream = None;
        self.pending.push_back(Input::ReplicationLost {
            kind: DisconnectKind::Transient,
        });
    }

    /// Drops the replication connection (releasing the lock) and turns the store back into a
    /// follower (LK-6, RO-1). The core issues no storage writes until it holds the lock again.
    fn stop_replication(&mut self) {
        self.stream = None;
        self.session = None;
        self.ports.store.demote();
    }

    /// With the lock held: storage switches to writing, then shapes, logs and the replication
    /// identity are loaded for the core, which decides what to keep. On failure: whether
    /// storage fenced us (another instance took the lease meanwhile), and why.
    async fn load_storage(&mut self) -> Result<LoadedStorage, StorageFailure> {
        fn failed<E: StorageError>(e: E) -> StorageFailure {
            storage_failure(&e)
        }
        // Rows queued by an earlier term land before the reload reads them. One that failed
        // is only a warning here: the reload finds that shape still filtering, and the core
        // records its filter's end again.
        for result in self.filter_ends.settle(&self.ports.meta).await {
            if let Err(e) = result {
                warn!(error = %error_chain(&e), "persisting ended snapshot filters failed");
            }
        }
        self.ports.store.promote().await.map_err(failed)?;
        self.ports.meta.promote().await.map_err(failed)?;
        let (stored, stamp) = self.ports.meta.load().await.map_err(failed)?;
        let identity = self.ports.meta.load_identity().await.map_err(failed)?;
        let mut shapes = Vec::with_capacity(stored.len());
        for shape in stored {
            let log = match shape.snapshot {
                Some(_) => match self.ports.store.recover(&shape.handle).await {
                    Ok(log) => Some(log),
                    // Not unreadable: the next lock holder must find it, not discard it. Nor
                    // is a log that failed for want of space or descriptors: the load is
                    // retried once they are back, instead of discarding the shape.
                    Err(e) if e.is_fenced() || e.fault().is_some() => return Err(failed(e)),
                    Err(e) => {
                        error!(handle = %shape.handle, error = %error_chain(&e), "unreadable shape log");
                        None
                    }
                },
                None => None,
            };
            shapes.push(LoadedShape { stored: shape, log });
        }
        self.registry
            .replace_all(shapes.iter().map(|s| shape_info(&s.stored)));
        Ok(LoadedStorage {
            shapes,
            stamp,
            identity,
        })
    }

    /// A standby re-reads the shapes the lock holder made (RO-1); failures are transient.
    async fn refresh_read_model(&mut self) {
        match self.ports.meta.load().await {
            Ok((stored, _)) => self.registry.replace_all(stored.iter().map(shape_info)),
            Err(e) => debug!(error = %error_chain(&e), "refreshing shapes from metadata failed"),
        }
    }

    #[allow(clippy::too_many_lines)] // one arm per completion; splitting hides the mapping
    fn complete(&mut self, core: &mut Instance, done: Completion<P::Session, P::Stream>) {
        let now = self.ports.clock.now();
        let input = match done {
            Completion::Connected {
                op,
                result: Ok((session, identity)),
            } => {
                self.session = Some(session);
                Input::ReplicationConnected { op, identity }
            }
            Completion::Locked {
                op,
                session,
                result: Ok(acquired),
            } => {
                self.session = Some(session);
                if acquired {
                    info!("holding the replication lock");
                }
                Input::LockAttempted { op, acquired }
            }
            Completion::LockHolders { op, result } => {
                let pids = result.unwrap_or_else(|e| {
                    warn!(error = %e, "lock breaker query failed");
                    Vec::new()
                });
                Input::StaleLockHolders { op, pids }
            }
            Completion::Relations { op, result } => {
                let found = result
                    .map_err(|e| warn!(error = %e, "looking up the shapes' tables failed"))
                    .ok();
                Input::RelationsChecked { op, found }
            }
            Completion::Terminated { pid, result } => {
                match result {
                    Ok(signalled) => info!(pid, signalled, "lock breaker terminated a backend"),
                    Err(e) => warn!(pid, error = %e, "lock breaker could not terminate a backend"),
                }
                return;
            }
            Completion::Started {
                op,
                result: Ok((stream, slot)),
            } => {
                info!(
                    slot_created = slot.slot_created,
                    confirmed_flush_lsn = %slot.confirmed_flush_lsn,
                    "replication streaming"
                );
                self.stream = Some(stream);
                Input::ReplicationStarted { op, slot }
            }
            Completion::Connected {
                op,
                result: Err((kind, message)),
            }
            | Completion::Locked {
                op,
                result: Err((kind, message)),
                ..
            }
            | Completion::Started {
                op,
                result: Err((kind, message)),
            } => {
                warn!(error = %message, ?kind, "replication setup failed");
                Input::ReplicationFailed { op, kind, message }
            }
            Completion::Flushed {
                op,
                issued,
                result: Ok(()),
            } => {
                if let Some(metrics) = &self.metrics {
                    metrics.observe_flush(now.saturating_duration_since(issued));
                }
                Input::LogsFlushed { op }
            }
            Completion::Flushed {
                op,
                result: Err((fenced, fault, e)),
                ..
            } => {
                // Unflushed data was never acknowledged; the core replays it from the slot.
                if fenced {
                    error!(error = %e, "flushing shape logs failed");
                    self.fenced("flushing shape logs");
                } else {
                    self.record_degraded("flushing shape logs", fault.as_ref(), &e);
                }
                Input::LogsFlushFailed { op }
            }
            Completion::Snapshot {
                op,
                requested,
                result: Ok(snapshot),
            } => {
                if let Some(metrics) = &self.metrics {
                    metrics.observe_snapshot(now.saturating_duration_since(requested));
                }
                Input::SnapshotTaken { op, snapshot }
            }
            Completion::Snapshot {
                op, result: Err(e), ..
            } => {
                warn!(error = %e, "snapshot failed");
                let refusal = match e {
                    SnapshotError::Refused(refusal) => Some(refusal),
                    _ => None,
                };
                Input::SnapshotFailed { op, refusal }
            }
        };
        core.handle_input(now, input);
    }

    fn received(
        &mut self,
        core: &mut Instance,
        msg: Result<ReplicationMessage, <P::Stream as ReplicationStream>::Error>,
    ) {
        let now = self.ports.clock.now();
        let input = match msg {
            Ok(ReplicationMessage::XLogData { wal_end, data, .. }) => {
                Input::XLogData { wal_end, data }
            }
            Ok(ReplicationMessage::PrimaryKeepalive {
                wal_end,
                reply_requested,
            }) => Input::PrimaryKeepalive {
                wal_end,
                reply_requested,
            },
            Err(e) => {
                warn!(error = %error_chain(&e), "replication stream ended");
                self.stream = None;
                Input::ReplicationLost { kind: e.kind() }
            }
        };
        core.handle_input(now, input);
    }

    fn request(&mut self, core: &mut Instance, request: Request) {
        // Request ids live in the upper half so traces never confuse them with core ops.
        self.next_request += 1;
        let op = OpId((1 << 63) | self.next_request);
        let now = self.ports.clock.now();
        let input = match request {
            Request::CreateShape {
                definition,
                schema,
                reply,
            } => {
                let pending = PendingReply {
                    reply,
                    requested: now,
                };
                self.replies.insert(op, pending);
                Input::ShapeRequested {
                    op,
                    definition,
                    schema,
                    unix_micros: self.ports.clock.unix_micros(),
                }
            }
            Request::DeleteShape {
                handle,
                cause,
                reply,
            } => {
                self.deletions.insert(op, reply);
                // Only the removal this request causes (in the drain that follows) counts.
                self.has_removal_failed = false;
                Input::ShapeDeletionRequested { op, handle, cause }
            }
        };
        core.handle_input(now, input);
    }

    /// Graceful stop: give in-flight flushes a bounded time to finish so their status can be
    /// sent (unflushed data was never acknowledged), then close replication.
    async fn shutdown(mut self, core: &mut Instance) -> Result<(), DriverError> {
        let clock = self.ports.clock.clone();
        let deadline = clock.now() + SHUTDOWN_FLUSH_GRACE;
        let mut grace = std::pin::pin!(clock.sleep_until(deadline));
        while core.has_flush_in_flight() {
            tokio::select! {
                biased;
                Some(done) = self.in_flight.next() => {
                    self.complete(core, done);
                    self.drain(core).await?;
                }
                () = &mut grace => break,
                else => break,
            }
        }
        self.settle_filter_ends().await;
        self.stream = None;
        info!(acked = %core.acked_lsn(), "driver stopped");
        Ok(())
    }
}

/// The read model's view of a stored shape.
fn shape_info(stored: &StoredShape) -> ShapeInfo {
    ShapeInfo {
        handle: stored.handle.clone(),
        definition: stored.definition.clone(),
        schema: Arc::new(stored.schema.clone()),
    }
}
