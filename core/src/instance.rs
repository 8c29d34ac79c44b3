//! `Instance`: the composition of the core's sub-machines, driven by the server's loop.
//!
//! Owns replication progress (received / durable / acknowledged), transaction assembly,
//! the live shapes and the durability order:
//! append → flush (fdatasync) → durable → standby status `flush` (never beyond durable).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::chunk::ChunkCutter;
use crate::lsn::Lsn;
use crate::offset::LogOffset;
use crate::pgoutput::{Decoder, Oid, ProtoVersion};
use crate::ports::{
    DisconnectKind, LogEntry, RecoveredLog, ReplicationTarget, SlotStarted, SnapshotRefusal,
    SnapshotRequest, StandbyStatus, StorageIdentity, StoredShape, SystemIdentity,
};
use crate::routing::{invalidates, TableRoutes};
use crate::shape::{HandleStamp, RelationName, ShapeDefinition, ShapeHandle, TableSchema};
use crate::shapes::{Encoders, EntryMemo, Invalidation, Shape, Stage};
use crate::snapshot::PgSnapshot;
use crate::time::Instant;
use crate::txn::{Transaction, TxnAssembler};
use crate::OpId;

mod lifecycle;
mod relation_check;

use relation_check::RelationCheck;

/// How often a non-active instance re-reads the shapes the lock holder made (RO-1).
const READ_MODEL_REFRESH: Duration = Duration::from_secs(1);
/// How often a waiting instance polls the advisory lock (LK-4).
const LOCK_POLL: Duration = Duration::from_secs(1);
/// Period of the lock breaker's check (LB-1).
const LOCK_BREAKER_PERIOD: Duration = Duration::from_secs(10);
/// How long a holder must be seen before the breaker terminates it (LB-3).
const LOCK_BREAKER_GRACE: Duration = Duration::from_secs(30);
/// How far past the stamp in hand a Postgres stamp reservation reaches (ID-2), in
/// microseconds: a minute of wall time, so minting writes to Postgres about once a minute at
/// most, and a restart moves stamps at most a minute ahead of the clock.
const STAMP_RESERVATION_MICROS: u64 = 60_000_000;
/// How long a table whose snapshot was refused (privileges, a relation Postgres will not
/// publish) answers new shape requests with the refusal instead of trying again: long enough
/// that a client retrying in a loop costs no `ALTER PUBLICATION` per request, short enough
/// that an operator's fix (a grant, an owner change) is picked up without a restart.
const REFUSAL_TTL: Duration = Duration::from_secs(10);

/// Static configuration of an instance.
#[derive(Clone, Debug)]
pub struct Config {
    /// Slot and publication names.
    pub target: ReplicationTarget,
    /// `ELECTRIC_SHAPE_CHUNK_BYTES_THRESHOLD`.
    pub chunk_bytes_threshold: u64,
    /// Period of unsolicited standby status updates (well under `wal_sender_timeout`).
    pub status_interval: Duration,
    /// First reconnect delay; doubles up to `reconnect_delay_max`.
    pub reconnect_delay_min: Duration,
    /// Cap of the reconnect delay.
    pub reconnect_delay_max: Duration,
    /// With no message from the walsender for this long, the stream is presumed dead (a
    /// half-open connection: Postgres may already have handed the lock to another instance)
    /// and the instance steps down (Postgres's `wal_receiver_timeout`; the walsender sends
    /// keepalives well within it).
    pub replication_timeout: Duration,
}

impl Config {
    /// Electric's defaults for the given names and threshold.
    pub fn new(target: ReplicationTarget, chunk_bytes_threshold: u64) -> Self {
        Self {
            target,
            chunk_bytes_threshold,
            status_interval: Duration::from_secs(10),
            reconnect_delay_min: Duration::from_secs(1),
            reconnect_delay_max: Duration::from_secs(10),
            replication_timeout: Duration::from_secs(60),
        }
    }
}

/// A shape recovered from storage at boot.
#[derive(Clone, Debug)]
pub struct RecoveredShape {
    /// Its metadata row.
    pub stored: StoredShape,
    /// What its log holds.
    pub log: RecoveredLog,
}

/// A shape as loaded by the lock holder: its row, and its log if the snapshot completed and
/// the log recovered (`None`: incomplete or unreadable, to be discarded).
#[derive(Clone, Debug)]
pub struct LoadedShape {
    /// Its metadata row.
    pub stored: StoredShape,
    /// What its log holds.
    pub log: Option<RecoveredLog>,
}

/// What the lock holder found in storage.
#[derive(Clone, Debug, Default)]
pub struct LoadedStorage {
    /// Every shape row.
    pub shapes: Vec<LoadedShape>,
    /// The handle-stamp high-water mark.
    pub stamp: HandleStamp,
    /// The replication identity storage follows; `None` on a first boot.
    pub identity: Option<StorageIdentity>,
}

/// Readiness as `/v1/health` reports it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Health {
    /// Holding the lock and streaming: shapes can be created.
    Active,
    /// Anything else once metadata is loaded: existing shapes are served read-only.
    Waiting,
}

/// What a deletion request did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Deletion {
    /// The shape was removed: its handle is retired for good (handles are never reissued),
    /// its clients get 409, and the definition's next request creates a new shape.
    Removed,
    /// No live shape has that handle (never existed, or already removed).
    NotFound,
    /// Not the active instance: only the lock holder writes storage, and a standby's read
    /// model may name shapes the core does not hold; the client retries (503).
    NotActive,
}

/// Why a shape is deleted on request, for the log ([`Output::RemoveShape`]'s reason).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DeletionCause {
    /// A client asked (`DELETE /v1/shape`).
    Request,
    /// More shapes are live than `ELECTRIC_MAX_SHAPES` allows and this one was among the
    /// least recently used (the server picks them: it knows which shapes clients read).
    Eviction,
}

impl DeletionCause {
    /// The removal's reason, as [`Output::RemoveShape`] carries it.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Request => "deleted by request",
            Self::Eviction => "evicted: least recently used beyond the shape limit",
        }
    }
}

/// Facts the driver reports.
#[derive(Debug)]
pub enum Input {
    /// A replication connection is open (not streaming, no lock yet).
    ReplicationConnected {
        /// Echo of [`Output::ConnectReplication`].
        op: OpId,
        /// What `IDENTIFY_SYSTEM` and the session query found.
        identity: SystemIdentity,
    },
    /// A lock attempt returned.
    LockAttempted {
        /// Echo of [`Output::TryLock`].
        op: OpId,
        /// Whether this connection now holds the lock.
        acquired: bool,
    },
    /// The lock breaker's query returned these holder pids (LB-1).
    StaleLockHolders {
        /// Echo of [`Output::FindStaleLockHolders`].
        op: OpId,
        /// Backends holding our lock while our slot is inactive.
        pids: Vec<i32>,
    },
    /// Storage was promoted and loaded.
    StorageLoaded {
        /// Echo of [`Output::LoadStorage`].
        op: OpId,
        /// What it holds.
        storage: LoadedStorage,
    },
    /// Replication is streaming.
    ReplicationStarted {
        /// Echo of [`Output::StartStreaming`].
        op: OpId,
        /// What setting up the slot found.
        slot: SlotStarted,
    },
    /// A step of connecting, locking, loading or starting failed.
    ReplicationFailed {
        /// Echo of the step's output.
        op: OpId,
        /// Retry or give up.
        kind: DisconnectKind,
        /// The error, rendered, for a fatal exit.
        message: String,
    },
    /// The replication stream ended or failed.
    ReplicationLost {
        /// Retry or give up.
        kind: DisconnectKind,
    },
    /// An `XLogData` message arrived.
    XLogData {
        /// Current end of WAL on the server.
        wal_end: Lsn,
        /// The pgoutput message.
        data: Bytes,
    },
    /// A primary keepalive arrived.
    PrimaryKeepalive {
        /// Current end of WAL on the server.
        wal_end: Lsn,
        /// The server wants a status update now.
        reply_requested: bool,
    },
    /// Everything appended before [`Output::FlushLogs`] `op` is durable.
    LogsFlushed {
        /// Echo of the flush.
        op: OpId,
    },
    /// The flush `op` failed: what it covered is not known to be durable.
    LogsFlushFailed {
        /// Echo of the flush.
        op: OpId,
    },
    /// A client asked for a shape (created unless it exists).
    ShapeRequested {
        /// Echoed in the reply.
        op: OpId,
        /// The definition.
        definition: ShapeDefinition,
        /// The table as validated against the catalog.
        schema: TableSchema,
        /// Wall-clock microseconds since the Unix epoch, for the handle stamp.
        unix_micros: u64,
    },
    /// A snapshot completed and its chunks are durable.
    SnapshotTaken {
        /// Echo of [`Output::CreateShape`].
        op: OpId,
        /// `pg_current_snapshot()` of the snapshot transaction.
        snapshot: PgSnapshot,
    },
    /// The catalog's current names of the tables [`Output::CheckRelations`] asked about.
    RelationsChecked {
        /// Echo of [`Output::CheckRelations`].
        op: OpId,
        /// `(pg_class.oid, name)` of each asked table that still exists and whose changes
        /// the publication publishes under it (`PgPort::relation_names`); `None` if the query
        /// failed (nothing is concluded: the next period asks again).
        found: Option<Vec<(Oid, RelationName)>>,
    },
    /// A snapshot failed.
    SnapshotFailed {
        /// Echo of [`Output::CreateShape`].
        op: OpId,
        /// Set when it can never succeed as things stand (not a transient failure).
        refusal: Option<SnapshotRefusal>,
    },
    /// A client asked to delete a shape (`DELETE /v1/shape`, protocol.md §1.5), or the server
    /// evicts it (`ELECTRIC_MAX_SHAPES`): either way it is removed as an invalidated one.
    ShapeDeletionRequested {
        /// Echoed in [`Output::AnswerDeletion`].
        op: OpId,
        /// The shape.
        handle: ShapeHandle,
        /// Why, for the log.
        cause: DeletionCause,
    },
}

/// Commands for the driver.
// `CreateShape` is large, but outputs live only between `poll_output` and execution.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Output {
    /// Open a replication connection; reply `ReplicationConnected` or `ReplicationFailed`.
    ConnectReplication {
        /// Echoed in the reply.
        op: OpId,
    },
    /// Try the advisory lock on that connection; reply `LockAttempted` or `ReplicationFailed`.
    TryLock {
        /// Echoed in the reply.
        op: OpId,
        /// The slot whose name keys the lock.
        slot: String,
    },
    /// Run the lock breaker's query; reply `StaleLockHolders` (failures are ignored).
    FindStaleLockHolders {
        /// Echoed in the reply.
        op: OpId,
        /// The slot whose name keys the lock.
        slot: String,
        /// Our own replication backend, never a suspect.
        own_pid: i32,
    },
    /// Terminate a backend that held the lock of an inactive slot for the whole grace period.
    TerminateBackend {
        /// The backend.
        pid: i32,
    },
    /// With the lock held: switch storage to writing and load it; reply `StorageLoaded`, or
    /// `ReplicationFailed` (transient) if storage was fenced meanwhile (another instance took
    /// the lease, so the lock is lost) or ran out of a resource that comes back (a full disk,
    /// the descriptor limit, a device error: the instance stays read-only and retries after
    /// its back-off); any other failure is fatal (a corrupt or foreign storage directory
    /// needs an operator).
    LoadStorage {
        /// Echoed in the reply.
        op: OpId,
    },
    /// Set up the slot and start streaming; reply `ReplicationStarted` or `ReplicationFailed`.
    StartStreaming {
        /// Echoed in the reply.
        op: OpId,
        /// Slot and publication.
        target: ReplicationTarget,
    },
    /// Close the replication connection (lock released), stop every storage write, and serve
    /// read-only until the core has the lock again (LK-6).
    StopReplication {
        /// Why, for the log.
        reason: String,
    },
    /// Re-read the shapes other instances made, for read-only serving (RO-1).
    RefreshReadModel,
    /// Record the replication identity storage follows (before any ack it names, CT-5).
    PersistIdentity {
        /// The identity.
        identity: StorageIdentity,
    },
    /// Every shape is being purged; for the log, metrics and health.
    Purged {
        /// Why continuity was lost.
        reason: &'static str,
    },
    /// Send a standby status update on the replication stream.
    SendStandbyStatus(StandbyStatus),
    /// Buffer entries at the end of a shape's log.
    Append {
        /// The shape.
        handle: ShapeHandle,
        /// Its new entries, offsets increasing.
        entries: Vec<LogEntry>,
    },
    /// Make every append so far durable; reply with `LogsFlushed`.
    FlushLogs {
        /// Echoed in the reply.
        op: OpId,
    },
    /// Create the shape's log and metadata row (in that order), answer the request with the
    /// handle, then take the snapshot; reply with `SnapshotTaken` or `SnapshotFailed`.
    CreateShape {
        /// The request, echoed in the snapshot reply.
        op: OpId,
        /// The metadata row (snapshot not yet taken).
        shape: StoredShape,
        /// The new handle-stamp high-water mark.
        stamp: HandleStamp,
        /// First raise the publication's stamp reservation to this (ID-2), when the new
        /// stamp passed the last one; failing that, answer 503 and report `SnapshotFailed`.
        reserve_stamps: Option<HandleStamp>,
        /// The snapshot to take.
        snapshot: SnapshotRequest,
    },
    /// The request is answered by an existing shape.
    ShapeExists {
        /// The request.
        op: OpId,
        /// The shape for its definition.
        handle: ShapeHandle,
    },
    /// The request cannot be served now (not streaming): 503.
    ShapeRefused {
        /// The request.
        op: OpId,
        /// Why, for the 503 body.
        reason: &'static str,
    },
    /// The request's table had its snapshot refused moments ago (see [`REFUSAL_TTL`]):
    /// answer it with the refusal (4xx), creating nothing.
    ShapeDenied {
        /// The request.
        op: OpId,
        /// Why.
        refusal: SnapshotRefusal,
    },
    /// The shape's snapshot was refused: from now on a reader that finds the shape gone
    /// gets the refusal (4xx), not a 409. Issued before the shape's [`Output::RemoveShape`],
    /// so a reader waiting for its snapshot wakes to the refusal.
    RefuseShape {
        /// The shape.
        handle: ShapeHandle,
        /// Why.
        refusal: SnapshotRefusal,
    },
    /// Rewrite a shape's metadata row (snapshot recorded, filtering ended).
    PersistShape {
        /// The row.
        shape: StoredShape,
    },
    /// Look up the current names of these tables (`pg_class.oid`) whose changes the
    /// publication still publishes under them; reply `RelationsChecked`.
    CheckRelations {
        /// Echoed in the reply.
        op: OpId,
        /// The tables the live shapes follow.
        tables: Vec<Oid>,
        /// The publication ampere streams.
        publication: String,
    },
    /// Remove a shape's log and metadata; its clients get 409.
    RemoveShape {
        /// The shape.
        handle: ShapeHandle,
        /// Why, for the log.
        reason: &'static str,
    },
    /// Answer a deletion request. Issued after the shape's [`Output::RemoveShape`] when it
    /// was removed, so the client hears of the deletion only once its log and row are gone.
    AnswerDeletion {
        /// The request.
        op: OpId,
        /// What became of the shape.
        outcome: Deletion,
    },
    /// An operator must act; the process should exit non-zero with this message.
    Fatal {
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// Replication connection phase: `Backoff → Connecting → Locking → Loading → Starting →
/// Active`, back to `Backoff` on any failure. Everything but `Active` is `waiting`.
#[derive(Debug)]
enum Phase {
    /// Waiting to (re)connect at `at`.
    Backoff { at: Instant },
    /// `ConnectReplication` in flight.
    Connecting { op: OpId },
    /// Polling the advisory lock: `attempt` in flight, or the next at `next_try`.
    Locking {
        system: SystemIdentity,
        attempt: Option<OpId>,
        next_try: Instant,
    },
    /// Lock held; `LoadStorage` in flight (`issued`), or waiting for a flush from before the
    /// last disconnect to finish first.
    Loading {
        op: OpId,
        system: SystemIdentity,
        issued: bool,
    },
    /// Storage loaded; `StartStreaming` in flight. `incomplete`: stored shapes whose snapshot
    /// did not complete, removed once streaming (LK-5: not while the slot is inactive).
    Starting {
        op: OpId,
        system: SystemIdentity,
        incomplete: Vec<ShapeHandle>,
    },
    /// Holding the lock and streaming; `since` for resetting the backoff.
    Active { since: Instant },
    /// A fatal error was reported.
    Failed,
}

/// What the replication stream delivered while active, since start (metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngestStats {
    /// Transactions taken from the stream (replays of durable ones not counted).
    pub transactions: u64,
    /// Their row changes (inserts, updates, deletes, truncates).
    pub changes: u64,
    /// The last one's commit time on the server: microseconds since 2000-01-01 UTC.
    pub last_commit_time_micros: Option<i64>,
}

/// The core state machine. See the crate docs for the drain rule.
#[derive(Debug)]
pub struct Instance {
    config: Config,
    now: Instant,
    phase: Phase,
    reconnect_attempts: u32,
    decoder: Decoder,
    assembler: TxnAssembler,
    shapes: BTreeMap<ShapeHandle, Shape>,
    by_definition: BTreeMap<ShapeDefinition, ShapeHandle>,
    /// The shapes on each table and the routing index over their where clauses.
    by_relation: BTreeMap<Oid, TableRoutes>,
    snapshots: BTreeMap<OpId, ShapeHandle>,
    stamp: HandleStamp,
    /// The stamp reservation Postgres holds (or is being asked to hold) for the publication:
    /// a handle is only minted at or below it (ID-2).
    stamps_reserved: HandleStamp,
    durability: Durability,
    /// Transactions and changes taken from the stream while active, since start.
    ingest: IngestStats,
    next_status_at: Instant,
    next_op: u64,
    outputs: VecDeque<Output>,
    /// The identity storage follows, once loaded (and what was last persisted).
    identity: Option<StorageIdentity>,
    /// Lock-breaker state (LB-1, LB-3).
    breaker: LockBreaker,
    /// While not active: when to refresh the read model next.
    next_refresh_at: Instant,
    /// While active: when the walsender was last heard from.
    last_received_at: Instant,
    /// Tables whose snapshot was refused, with the refusal and when it stops being answered
    /// from here (keyed by `pg_class.oid`: a table recreated under the same name is tried).
    refused_tables: BTreeMap<Oid, (SnapshotRefusal, Instant)>,
    /// The periodic check that the live shapes' tables still exist under their names.
    relation_check: RelationCheck,
    /// Shapes whose filtering ended but whose `snapshot_filter_done` is not persisted yet
    /// (invariant `filter-end-durable`, see [`FilterEnd`]).
    filter_ends: BTreeMap<ShapeHandle, FilterEnd>,
    /// The shapes' encoders, shared between shapes that encode alike.
    encoders: Encoders,
    /// The routed transaction's entries, encoded once per shared encoder.
    memo: EntryMemo,
    /// MUTANT bookkeeping: handles of purged shapes, by definition.
    #[cfg(feature = "sim")]
    purged: BTreeMap<ShapeDefinition, ShapeHandle>,
}

/// Filtering of a shape ended in memory (the first transaction started after its snapshot
/// was routed, SN-4), but the fact is not persisted yet.
///
/// Invariant `filter-end-durable`: a shape's row says `snapshot_filter_done` only once its
/// log durably holds an entry at or after `at`, the commit that ended filtering. Every
/// transaction the snapshot saw committed before the snapshot was taken, so before `at`:
/// once such an entry is durable, a replay of any of them is dropped by the reloaded log's
/// latest offset (RC-3) like every other replay. Until then the row still says "filtering",
/// so a reload (failed flush, lost connection, crash) restores the shape as
/// [`Stage::Filtering`] and the slot's replays of visible transactions — still unconfirmed
/// whenever `at` is not durable, because a snapshotting shape held them — are skipped by
/// visibility again instead of being appended a second time. (Persisting the fact at once,
/// as before, restored such a shape as live with an empty log, and replayed visible
/// transactions were appended as duplicates.) This does not depend on what the slot
/// confirmed: a status can be lost in transit, and Postgres may re-send below it.
#[derive(Debug)]
struct FilterEnd {
    /// The shape's snapshot, for the row.
    snapshot: PgSnapshot,
    /// Commit LSN of the transaction that ended filtering.
    at: Lsn,
    /// The append generation after which the shape's log holds an entry at or after `at`
    /// (durable once `flushed_gen` reaches it); `None` until it holds one.
    gen: Option<u64>,
}

/// The lock breaker: suspects seen holding the lock while our slot is inactive.
#[derive(Debug, Default)]
struct LockBreaker {
    /// The query in flight and when it was issued (sightings are timed by issue, so reply
    /// latency never stretches the grace period).
    query: Option<(OpId, Instant)>,
    /// When to run the query next.
    next_at: Option<Instant>,
    /// Holder pid → when it was first seen in an unbroken run of checks.
    suspects: BTreeMap<i32, Instant>,
}

/// Replication positions and the durable boundary (deploy-semantics RP-1..RP-5).
#[derive(Debug, Default)]
struct Durability {
    /// Highest `wal_end` of a primary keepalive received between transactions on this
    /// stream: every transaction committing before it was sent before the keepalive.
    keepalive_end: Lsn,
    /// Commit LSN of the last transaction fully processed.
    processed: Lsn,
    /// Appends issued so far (a generation counter).
    appended_gen: u64,
    /// Generation covered by the last completed flush, and `processed` when it was issued.
    flushed_gen: u64,
    flushed_upto: Lsn,
    /// The flush in flight: its op, generation and `processed` at issue.
    flush_in_flight: Option<(OpId, u64, Lsn)>,
    /// Commit LSNs of transactions held by snapshotting shapes (count of holders).
    held: BTreeMap<Lsn, u32>,
    /// Commit LSNs released from holds, durable once `flushed_gen` reaches the generation.
    released: Vec<(u64, Lsn)>,
    /// The `flush` position confirmed to Postgres: transactions committing before it are
    /// durable in every shape.
    confirmed: Lsn,
    /// The last `flush` value sent.
    acked: Lsn,
}

impl Durability {
    /// The highest position that may be confirmed now.
    fn boundary(&self) -> Lsn {
        let mut upto = if self.flushed_upto == Lsn::ZERO {
            self.confirmed
        } else {
            self.confirmed.max(self.flushed_upto.next())
        };
        let released = self
            .released
            .iter()
            .filter(|(g, _)| *g > self.flushed_gen)
            .map(|(_, l)| *l);
        if let Some(floor) = self.held.keys().copied().chain(released).min() {
            upto = upto.min(floor).max(self.confirmed);
        }
        upto
    }

    /// Nothing appended, held or flushing: every processed transaction is durable.
    fn is_idle(&self) -> bool {
        self.held.is_empty()
            && self.flush_in_flight.is_none()
            && self.appended_gen == self.flushed_gen
            && self.released.iter().all(|(g, _)| *g <= self.flushed_gen)
    }
}

impl Instance {
    /// A new instance. It holds no shapes until it has the lock and has loaded storage;
    /// until then readers are served read-only from storage by the driver.
    pub fn new(config: Config, now: Instant) -> Self {
        let mut instance = Self {
            config,
            now,
            phase: Phase::Backoff { at: now },
            reconnect_attempts: 0,
            decoder: Decoder::new(ProtoVersion::V1),
            assembler: TxnAssembler::new(),
            shapes: BTreeMap::new(),
            by_definition: BTreeMap::new(),
            by_relation: BTreeMap::new(),
            snapshots: BTreeMap::new(),
            stamp: HandleStamp::default(),
            stamps_reserved: HandleStamp::default(),
            durability: Durability::default(),
            ingest: IngestStats::default(),
            next_status_at: now,
            next_op: 0,
            outputs: VecDeque::new(),
            identity: None,
            breaker: LockBreaker::default(),
            next_refresh_at: now + READ_MODEL_REFRESH,
            last_received_at: now,
            refused_tables: BTreeMap::new(),
            relation_check: RelationCheck::new(now),
            filter_ends: BTreeMap::new(),
            encoders: Encoders::default(),
            memo: EntryMemo::default(),
            #[cfg(feature = "sim")]
            purged: BTreeMap::new(),
        };
        instance.handle_timeout(now);
        instance
    }

    /// Feeds a fact. Drain [`Instance::poll_output`] afterwards.
    pub fn handle_input(&mut self, now: Instant, input: Input) {
        self.advance_clock(now);
        match input {
            Input::ReplicationConnected { op, identity } => self.on_connected(op, identity),
            Input::LockAttempted { op, acquired } => self.on_lock_attempted(op, acquired),
            Input::StaleLockHolders { op, pids } => self.on_stale_lock_holders(op, pids),
            Input::StorageLoaded { op, storage } => self.on_storage_loaded(op, storage),
            Input::ReplicationStarted { op, slot } => self.on_started(op, slot),
            Input::ReplicationFailed { op, kind, message } => {
                if self.awaits_step(op) {
                    self.on_disconnected(kind, message);
                }
            }
            Input::ReplicationLost { kind } => {
                if self.is_active() {
                    self.on_disconnected(kind, "replication stream lost".into());
                }
            }
            Input::XLogData { data, .. } => self.on_xlog_data(&data),
            Input::PrimaryKeepalive {
                wal_end,
                reply_requested,
            } => {
                self.on_keepalive(wal_end, reply_requested);
            }
            Input::LogsFlushed { op } => self.on_flushed(op),
            Input::LogsFlushFailed { op } => self.on_flush_failed(op),
            Input::ShapeRequested {
                op,
                definition,
                schema,
                unix_micros,
            } => {
                self.on_shape_requested(op, definition, schema, unix_micros);
            }
            Input::SnapshotTaken { op, snapshot } => self.on_snapshot_taken(op, snapshot),
            Input::RelationsChecked { op, found } => self.on_relations_checked(op, found),
            Input::SnapshotFailed { op, refusal } => self.on_snapshot_failed(op, refusal),
            Input::ShapeDeletionRequested { op, handle, cause } => {
                self.on_deletion_requested(op, &handle, cause);
            }
        }
        self.check_invariants();
    }

    /// Fires due timers. Call when [`Instance::poll_timeout`] has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance_clock(now);
        match self.phase {
            Phase::Backoff { at } if now >= at => {
                let op = self.op();
                self.phase = Phase::Connecting { op };
                self.outputs.push_back(Output::ConnectReplication { op });
            }
            Phase::Locking {
                attempt: None,
                next_try,
                ..
            } if now >= next_try => self.try_lock(),
            Phase::Active { .. } if now >= self.replication_deadline() => {
                let message = "no message from Postgres within the replication timeout";
                self.on_disconnected(DisconnectKind::Transient, message.into());
            }
            Phase::Active { .. } if now >= self.next_status_at => self.send_status(),
            _ => {}
        }
        self.run_lock_breaker_if_due();
        self.check_relations_if_due();
        let failed = matches!(self.phase, Phase::Failed);
        if !self.is_active() && !failed && now >= self.next_refresh_at {
            self.next_refresh_at = now + READ_MODEL_REFRESH;
            self.outputs.push_back(Output::RefreshReadModel);
        }
        self.check_invariants();
    }

    /// The next command for the driver, until `None`.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The next output's shape if it is a [`Output::PersistShape`] (which it consumes), so a
    /// driver can write a run of them as one metadata transaction, in order.
    pub fn poll_persist_shape(&mut self) -> Option<StoredShape> {
        match self.outputs.front() {
            Some(Output::PersistShape { .. }) => match self.outputs.pop_front() {
                Some(Output::PersistShape { shape }) => Some(shape),
                _ => unreachable!("the front was a PersistShape"),
            },
            _ => None,
        }
    }

    /// When to call [`Instance::handle_timeout`] next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if matches!(self.phase, Phase::Failed) {
            return None; // the driver exits on Fatal: nothing is timed any more
        }
        let phase = match self.phase {
            Phase::Backoff { at } => Some(at),
            Phase::Locking {
                attempt: None,
                next_try,
                ..
            } => Some(next_try),
            Phase::Active { .. } => Some(self.next_status_at.min(self.replication_deadline())),
            Phase::Connecting { .. }
            | Phase::Locking { .. }
            | Phase::Loading { .. }
            | Phase::Starting { .. }
            | Phase::Failed => None,
        };
        let refresh = (!self.is_active()).then_some(self.next_refresh_at);
        let breaker = self
            .breaker
            .next_at
            .filter(|_| self.breaker.query.is_none());
        let relations = self.relation_check_due_at();
        [phase, refresh, breaker, relations]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whether this instance holds the lock and streams (shapes can be created).
    pub fn is_active(&self) -> bool {
        matches!(self.phase, Phase::Active { .. })
    }

    /// Readiness for `/v1/health`.
    pub fn health(&self) -> Health {
        if self.is_active() {
            Health::Active
        } else {
            Health::Waiting
        }
    }

    /// The last commit LSN durable in every shape (`global_last_seen_lsn`).
    pub fn durable_lsn(&self) -> Lsn {
        Lsn(self.durability.confirmed.0.saturating_sub(1))
    }

    /// Transactions and changes taken from the replication stream since start.
    pub fn ingest_stats(&self) -> IngestStats {
        self.ingest
    }

    /// The `flush` position last acknowledged to Postgres.
    pub fn acked_lsn(&self) -> Lsn {
        self.durability.acked
    }

    /// Whether a `FlushLogs` awaits its reply.
    pub fn has_flush_in_flight(&self) -> bool {
        self.durability.flush_in_flight.is_some()
    }

    /// Handles of live shapes.
    pub fn shape_handles(&self) -> impl Iterator<Item = &ShapeHandle> {
        self.shapes.keys()
    }

    /// When an active instance presumes its stream dead.
    fn replication_deadline(&self) -> Instant {
        self.last_received_at + self.config.replication_timeout
    }

    fn advance_clock(&mut self, now: Instant) {
        assert!(
            now >= self.now,
            "time-monotonic: now={now:?} before {:?}",
            self.now
        );
        self.now = now;
    }

    fn op(&mut self) -> OpId {
        self.next_op += 1;
        OpId(self.next_op)
    }

    fn restore(&mut self, recovered: RecoveredShape) {
        let RecoveredShape { stored, log } = recovered;
        let stage = match (&stored.snapshot, stored.snapshot_filter_done) {
            (Some(_), true) => Stage::Live,
            (Some(snapshot), false) => Stage::Filtering(snapshot.clone()),
            // Incomplete snapshots are discarded by the caller before recovery.
            (None, _) => return,
        };
        let cutter = ChunkCutter::new(self.config.chunk_bytes_threshold, log.open_chunk_bytes);
        let shape = Shape::new(
            stored.handle,
            stored.definition,
            stored.schema,
            stage,
            log.latest,
            cutter,
        );
        self.index(shape);
    }

    fn index(&mut self, mut shape: Shape) {
        shape.share_encoder(&mut self.encoders);
        let handle = shape.handle.clone();
        self.by_definition
            .insert(shape.definition.clone(), handle.clone());
        self.by_relation
            .entry(shape.schema.oid)
            .or_default()
            .insert(&handle, shape.where_clause());
        self.shapes.insert(handle, shape);
    }
}

/// Replication events.
impl Instance {
    fn reconnect_delay(&self) -> Duration {
        let factor = 1u32 << self.reconnect_attempts.min(16);
        self.config
            .reconnect_delay_min
            .saturating_mul(factor)
            .min(self.config.reconnect_delay_max)
    }

    fn on_xlog_data(&mut self, data: &[u8]) {
        if !matches!(self.phase, Phase::Active { .. }) {
            return;
        }
        self.last_received_at = self.now;
        let message = match self.decoder.decode(data) {
            Ok(m) => m,
            Err(e) => return self.protocol_violation(&e.to_string()),
        };
        match self.assembler.push(message) {
            Ok(Some(txn)) => self.on_transaction(txn),
            Ok(None) => {}
            Err(e) => self.protocol_violation(&e.to_string()),
        }
    }

    fn protocol_violation(&mut self, what: &str) {
        // Bad peer data is a state change, not a panic: reconnect and replay.
        self.on_disconnected(DisconnectKind::Transient, format!("pgoutput: {what}"));
    }

    fn on_transaction(&mut self, txn: Transaction) {
        if txn.commit_lsn < self.durability.confirmed {
            return; // replayed and already durable everywhere
        }
        self.ingest.transactions += 1;
        self.ingest.changes += txn.changes.len() as u64;
        self.ingest.last_commit_time_micros = Some(txn.commit_time_micros);
        self.invalidate_changed_relations(&txn);
        let txn = Arc::new(txn);
        for (handle, changes) in self.reached_shapes(&txn) {
            self.route(&handle, &txn, changes.as_deref());
        }
        self.memo.clear();
        self.durability.processed = txn.commit_lsn;
        self.maybe_flush();
    }

    /// Each shape `txn` may concern, with the indices of the changes it may concern (`None`:
    /// every change on its table): unindexed shapes and shapes an invalidating change reaches
    /// take the whole transaction; indexed ones the changes whose values name them. The
    /// shape's own filter decides after.
    fn reached_shapes(&self, txn: &Transaction) -> BTreeMap<ShapeHandle, Option<Vec<usize>>> {
        let mut reached: BTreeMap<ShapeHandle, Option<Vec<usize>>> = BTreeMap::new();
        let whole = |handle: &ShapeHandle, reached: &mut BTreeMap<_, _>| {
            reached.insert(handle.clone(), None);
        };
        let tables: BTreeSet<Oid> = txn
            .changes
            .iter()
            .flat_map(|c| c.relations())
            .copied()
            .collect();
        for routes in tables.iter().filter_map(|oid| self.by_relation.get(oid)) {
            routes
                .unindexed()
                .iter()
                .for_each(|h| whole(h, &mut reached));
        }
        for (i, change) in txn.changes.iter().enumerate() {
            let tables = change
                .relations()
                .iter()
                .filter_map(|oid| self.by_relation.get(oid));
            for routes in tables {
                if invalidates(change) {
                    routes.shapes().iter().for_each(|h| whole(h, &mut reached));
                    continue;
                }
                routes.indexed_candidates(change, |handle| match reached.get_mut(handle) {
                    Some(None) => {}
                    Some(Some(changes)) => {
                        if changes.last() != Some(&i) {
                            changes.push(i);
                        }
                    }
                    None => {
                        reached.insert(handle.clone(), Some(vec![i]));
                    }
                });
            }
        }
        reached
    }

    fn invalidate_changed_relations(&mut self, txn: &Transaction) {
        for relation in &txn.relations {
            let stale: Vec<ShapeHandle> = self
                .by_relation
                .get(&relation.oid)
                .into_iter()
                .flat_map(TableRoutes::shapes)
                .filter(|h| {
                    self.shapes
                        .get(*h)
                        .is_some_and(|s| !s.relation_matches(relation))
                })
                .cloned()
                .collect();
            for handle in stale {
                self.remove_shape(&handle, "table schema changed");
            }
            // A table now published under a shape's name with another OID: the shape's table
            // was dropped or renamed and this one took its name.
            let replaced: Vec<ShapeHandle> = self
                .shapes
                .values()
                .filter(|s| s.schema.oid != relation.oid && s.names(relation))
                .map(|s| s.handle.clone())
                .collect();
            for handle in replaced {
                self.remove_shape(&handle, "table dropped or renamed and its name reused");
            }
        }
    }

    /// Routes `txn` to a shape; `changes` are the indices of the changes the routing index
    /// found it may concern (`None`: every change, as for a transaction buffered during the
    /// snapshot).
    fn route(&mut self, handle: &ShapeHandle, txn: &Arc<Transaction>, changes: Option<&[usize]>) {
        let Some(shape) = self.shapes.get_mut(handle) else {
            return;
        };
        match &mut shape.stage {
            Stage::Snapshotting { buffered, .. } => {
                if buffered
                    .last()
                    .is_some_and(|b| b.commit_lsn >= txn.commit_lsn)
                {
                    return; // a replay of a buffered transaction
                }
                buffered.push(Arc::clone(txn));
                *self.durability.held.entry(txn.commit_lsn).or_insert(0) += 1;
                return;
            }
            Stage::Filtering(snapshot) => {
                if snapshot.is_visible(txn.xid) {
                    return;
                }
                if snapshot.is_after(txn.xid) {
                    // Live in memory now (this stream never re-sends an earlier commit);
                    // persisted only once durable (`filter-end-durable`, see `FilterEnd`).
                    let end = FilterEnd {
                        snapshot: snapshot.clone(),
                        at: txn.commit_lsn,
                        gen: None,
                    };
                    shape.stage = Stage::Live;
                    self.filter_ends.insert(handle.clone(), end);
                }
            }
            Stage::Live => {}
        }
        self.append(handle, txn, changes);
    }

    /// Appends `txn`'s entries to a shape that is past its snapshot: of the changes at
    /// `only`, or of every change.
    fn append(&mut self, handle: &ShapeHandle, txn: &Transaction, only: Option<&[usize]>) {
        let Some(shape) = self.shapes.get_mut(handle) else {
            return;
        };
        let result = shape.entries_for(txn, only, &mut self.memo);
        let latest = shape.latest;
        match result {
            Ok(entries) if entries.is_empty() => {}
            Ok(entries) => {
                self.durability.appended_gen += 1;
                self.outputs.push_back(Output::Append {
                    handle: handle.clone(),
                    entries,
                });
            }
            Err(why) => return self.remove_shape(handle, invalidation_reason(why)),
        }
        if let Some(end) = self.filter_ends.get_mut(handle) {
            // The log (durable, or appended by now) reaches the filter-ending commit.
            if end.gen.is_none() && latest >= LogOffset::change(end.at, 0) {
                end.gen = Some(self.durability.appended_gen);
            }
        }
    }

    /// Persists `snapshot_filter_done` of every shape whose log durably reaches the commit
    /// that ended its filtering (`filter-end-durable`).
    fn persist_durable_filter_ends(&mut self) {
        let flushed_gen = self.durability.flushed_gen;
        let durable: Vec<ShapeHandle> = self
            .filter_ends
            .iter()
            .filter(|(_, end)| end.gen.is_some_and(|g| g <= flushed_gen))
            .map(|(handle, _)| handle.clone())
            .collect();
        for handle in durable {
            let Some(end) = self.filter_ends.remove(&handle) else {
                continue;
            };
            if let Some(shape) = self.shapes.get(&handle) {
                let stored = stored_shape(shape, Some(end.snapshot), true);
                self.outputs
                    .push_back(Output::PersistShape { shape: stored });
            }
        }
    }

    fn on_keepalive(&mut self, wal_end: Lsn, reply_requested: bool) {
        if !matches!(self.phase, Phase::Active { .. }) {
            return;
        }
        self.last_received_at = self.now;
        let d = &mut self.durability;
        if !self.assembler.in_transaction() {
            // Between transactions: every transaction committing before `wal_end` arrived.
            d.keepalive_end = d.keepalive_end.max(wal_end);
        }
        self.confirm_quiet_wal();
        if reply_requested || self.durability.confirmed > self.durability.acked {
            self.send_status();
        }
    }

    /// RP-5: with no transaction open and nothing appended, held or flushing, no shape owes
    /// anything for the WAL up to the last keepalive's end, so it is confirmed — at the
    /// keepalive, or at the flush that makes the instance idle after it (else a backlog's
    /// trailing WAL would wait for the next keepalive, up to `wal_sender_timeout / 2`).
    /// `wal_end` itself, not +1: a commit record may start exactly there.
    fn confirm_quiet_wal(&mut self) {
        let d = &mut self.durability;
        if !self.assembler.in_transaction() && d.is_idle() && d.keepalive_end > d.confirmed {
            d.confirmed = d.keepalive_end;
            d.processed = d.processed.max(Lsn(d.keepalive_end.0.saturating_sub(1)));
        }
    }

    fn maybe_flush(&mut self) {
        let d = &mut self.durability;
        if d.flush_in_flight.is_some() {
            return;
        }
        if d.appended_gen == d.flushed_gen {
            // Nothing to make durable: processed transactions are durable already.
            d.flushed_upto = d.flushed_upto.max(d.processed);
            self.advance_confirmed();
            self.persist_durable_filter_ends();
            return;
        }
        let op = self.op();
        let d = &mut self.durability;
        d.flush_in_flight = Some((op, d.appended_gen, d.processed));
        self.outputs.push_back(Output::FlushLogs { op });
    }

    fn on_flushed(&mut self, op: OpId) {
        let d = &mut self.durability;
        let Some((expected, gen, upto)) = d.flush_in_flight else {
            return;
        };
        assert_eq!(op, expected, "reply-issued: flush {op:?} was never issued");
        d.flush_in_flight = None;
        if !self.is_active() {
            // A flush from before a disconnect: its data is reloaded from storage.
            self.issue_load_storage();
            return;
        }
        let d = &mut self.durability;
        d.flushed_gen = d.flushed_gen.max(gen);
        d.flushed_upto = d.flushed_upto.max(upto);
        let flushed_gen = d.flushed_gen;
        d.released.retain(|(g, _)| *g > flushed_gen);
        // The acknowledgement first: it needs only the logs durable, and the metadata writes
        // that follow (one `shape.json` and row per shape whose filtering ended) took 1.6 s
        // for 2,000 shapes created just before one transaction.
        self.advance_confirmed();
        self.persist_durable_filter_ends();
        self.maybe_flush();
    }

    /// Nothing the failed flush covered may be acknowledged. Restart replication: the slot
    /// re-sends every transaction not yet confirmed, and the next flush covers it again.
    fn on_flush_failed(&mut self, op: OpId) {
        let Some((expected, _, _)) = self.durability.flush_in_flight else {
            return;
        };
        assert_eq!(op, expected, "reply-issued: flush {op:?} was never issued");
        self.durability.flush_in_flight = None;
        if self.is_active() {
            // Nothing it covered may be acknowledged: reconnect, reload storage (its durable
            // part) and let the slot re-send the rest.
            let reason = "flushing shape logs failed".to_owned();
            self.on_disconnected(DisconnectKind::Transient, reason);
        } else {
            self.issue_load_storage();
        }
    }

    fn advance_confirmed(&mut self) {
        let d = &mut self.durability;
        let boundary = d.boundary();
        d.confirmed = d.confirmed.max(boundary);
        self.confirm_quiet_wal();
        if self.durability.confirmed > self.durability.acked {
            self.send_status();
        }
    }

    fn send_status(&mut self) {
        #[cfg(feature = "sim")]
        if crate::mutant::is_active(crate::mutant::Mutant::AckBeforeFsync) {
            // MUTANT (never on by default): acknowledges what was processed, flushed or not.
            let d = &mut self.durability;
            d.confirmed = d.confirmed.max(d.processed.next());
        }
        self.persist_acked(self.durability.confirmed);
        let d = &mut self.durability;
        assert!(
            d.confirmed >= d.acked,
            "ack-monotonic: confirmed={} acked={}",
            d.confirmed,
            d.acked
        );
        d.acked = d.confirmed;
        let silent_for = self.now.saturating_duration_since(self.last_received_at);
        // `write` is the durable position too, not what was received: a walsender that has
        // caught up pings (a keepalive carrying its WAL end) only while both `write` and
        // `flush` are behind what it sent, and that keepalive is what lets the WAL after the
        // last commit (RP-5) be confirmed. Reporting `write` = received kept the slot's
        // `confirmed_flush_lsn` short of the WAL end for up to `wal_sender_timeout / 2`.
        let status = StandbyStatus {
            write: d.confirmed,
            flush: d.confirmed,
            apply: d.confirmed,
            reply_requested: silent_for >= self.config.replication_timeout / 2,
        };
        self.outputs.push_back(Output::SendStandbyStatus(status));
        self.next_status_at = self.now + self.config.status_interval;
    }
}

/// Shape lifecycle.
impl Instance {
    fn on_shape_requested(
        &mut self,
        op: OpId,
        definition: ShapeDefinition,
        schema: TableSchema,
        unix_micros: u64,
    ) {
        if let Some(handle) = self.by_definition.get(&definition) {
            let handle = handle.clone();
            self.outputs.push_back(Output::ShapeExists { op, handle });
            return;
        }
        if !self.is_active() {
            let reason = "Timeout waiting for the replication stream to start";
            self.outputs.push_back(Output::ShapeRefused { op, reason });
            return;
        }
        if let Some(refusal) = self.recent_refusal(schema.oid) {
            self.outputs.push_back(Output::ShapeDenied { op, refusal });
            return;
        }
        self.stamp = self.stamp.next(unix_micros);
        let reserve_stamps = (self.stamp > self.stamps_reserved).then(|| {
            self.stamps_reserved = self.stamp.plus(STAMP_RESERVATION_MICROS);
            self.stamps_reserved
        });
        let handle = ShapeHandle::mint(definition.identity(), self.stamp);
        #[cfg(feature = "sim")]
        // MUTANT (never on by default): a purged definition gets its old handle back.
        let handle = match self.purged.get(&definition) {
            Some(old) if crate::mutant::is_active(crate::mutant::Mutant::ReuseHandleAfterPurge) => {
                old.clone()
            }
            _ => handle,
        };
        assert!(
            !self.shapes.contains_key(&handle),
            "handle-unique: {handle:?} reissued"
        );
        let cutter = ChunkCutter::new(self.config.chunk_bytes_threshold, 0);
        let stage = Stage::Snapshotting {
            op,
            buffered: Vec::new(),
        };
        let shape = Shape::new(
            handle.clone(),
            definition.clone(),
            schema.clone(),
            stage,
            LogOffset::SNAPSHOT_END,
            cutter,
        );
        let stored = stored_shape(&shape, None, false);
        self.schedule_relation_check_for_first_shape();
        self.index(shape);
        self.snapshots.insert(op, handle.clone());
        let snapshot = SnapshotRequest {
            handle,
            definition,
            schema,
            publication: self.config.target.publication.clone(),
            chunk_bytes_threshold: self.config.chunk_bytes_threshold,
        };
        self.outputs.push_back(Output::CreateShape {
            op,
            shape: stored,
            stamp: self.stamp,
            reserve_stamps,
            snapshot,
        });
    }

    /// Removes the shape if this instance holds it and may write, then answers. A shape
    /// still snapshotting is removed like one invalidated then: its snapshot's answer is
    /// dropped and the transactions it held are released.
    fn on_deletion_requested(&mut self, op: OpId, handle: &ShapeHandle, cause: DeletionCause) {
        let outcome = if !self.is_active() {
            Deletion::NotActive
        } else if self.shapes.contains_key(handle) {
            self.remove_shape(handle, cause.reason());
            Deletion::Removed
        } else {
            Deletion::NotFound
        };
        self.outputs
            .push_back(Output::AnswerDeletion { op, outcome });
    }

    fn on_snapshot_failed(&mut self, op: OpId, refusal: Option<SnapshotRefusal>) {
        // The reservation asked for may not have reached Postgres: ask again.
        self.stamps_reserved = HandleStamp::default();
        let Some(handle) = self.snapshots.remove(&op) else {
            return;
        };
        let table = self.shapes.get(&handle).map(|s| s.schema.oid);
        match (refusal, table) {
            (Some(refusal), Some(oid)) => {
                let now = self.now;
                self.refused_tables.retain(|_, (_, until)| *until > now);
                let until = now + REFUSAL_TTL;
                self.refused_tables.insert(oid, (refusal.clone(), until));
                self.outputs.push_back(Output::RefuseShape {
                    handle: handle.clone(),
                    refusal,
                });
                self.remove_shape(&handle, "snapshot refused");
            }
            _ => self.remove_shape(&handle, "snapshot failed"),
        }
    }

    /// The refusal of `table`'s last snapshot, unless it is older than [`REFUSAL_TTL`].
    fn recent_refusal(&mut self, table: Oid) -> Option<SnapshotRefusal> {
        let (refusal, until) = self.refused_tables.get(&table)?;
        if self.now < *until {
            return Some(refusal.clone());
        }
        self.refused_tables.remove(&table);
        None
    }

    fn on_snapshot_taken(&mut self, op: OpId, snapshot: PgSnapshot) {
        let Some(handle) = self.snapshots.remove(&op) else {
            return;
        };
        let Some(shape) = self.shapes.get_mut(&handle) else {
            return;
        };
        let Stage::Snapshotting { buffered, .. } =
            std::mem::replace(&mut shape.stage, Stage::Filtering(snapshot.clone()))
        else {
            unreachable!(
                "snapshots-tracked: {handle:?} had a snapshot op but was not snapshotting"
            );
        };
        let stored = stored_shape(shape, Some(snapshot), false);
        self.outputs
            .push_back(Output::PersistShape { shape: stored });
        for txn in &buffered {
            let before = self.durability.appended_gen;
            self.route(&handle, txn, None);
            let appended = self.durability.appended_gen > before;
            self.release_hold(txn.commit_lsn, appended);
        }
        self.memo.clear();
        self.maybe_flush();
    }

    /// A held transaction is no longer waiting on a snapshot; it is durable for this shape
    /// after the next flush (generation after its appends).
    fn release_hold(&mut self, commit_lsn: Lsn, appended: bool) {
        let d = &mut self.durability;
        if let Some(count) = d.held.get_mut(&commit_lsn) {
            *count -= 1;
            if *count == 0 {
                d.held.remove(&commit_lsn);
            }
        }
        // Its entries (if any) were appended at `appended_gen`: durable once that is flushed.
        if appended {
            d.released.push((d.appended_gen, commit_lsn));
        }
    }

    fn remove_shape(&mut self, handle: &ShapeHandle, reason: &'static str) {
        let Some(shape) = self.shapes.remove(handle) else {
            return;
        };
        self.by_definition.remove(&shape.definition);
        self.filter_ends.remove(handle);
        if let Some(routes) = self.by_relation.get_mut(&shape.schema.oid) {
            if routes.remove(handle) {
                self.by_relation.remove(&shape.schema.oid);
            }
        }
        if let Stage::Snapshotting { op, buffered } = shape.stage {
            self.snapshots.remove(&op);
            for txn in buffered {
                self.release_hold(txn.commit_lsn, false);
            }
        }
        self.outputs.push_back(Output::RemoveShape {
            handle: handle.clone(),
            reason,
        });
        self.maybe_flush();
    }

    /// Whole-state invariants, checked after every `handle_*` in tests and simulation.
    fn check_invariants(&self) {
        #[cfg(any(test, feature = "sim"))]
        {
            let d = &self.durability;
            assert!(
                d.acked <= d.confirmed,
                "ack-after-durable: acked={} confirmed={}",
                d.acked,
                d.confirmed
            );
            for lsn in d.held.keys() {
                assert!(
                    *lsn >= d.confirmed,
                    "held-not-confirmed: held={lsn} confirmed={}",
                    d.confirmed
                );
            }
            for (definition, handle) in &self.by_definition {
                let shape = self
                    .shapes
                    .get(handle)
                    .expect("index-consistent: by_definition");
                assert_eq!(
                    &shape.definition, definition,
                    "index-consistent: definition"
                );
            }
            assert_eq!(
                self.by_definition.len(),
                self.shapes.len(),
                "index-consistent: counts"
            );
            for handle in self.filter_ends.keys() {
                let shape = self.shapes.get(handle);
                assert!(
                    shape.is_some_and(|s| matches!(s.stage, Stage::Live)),
                    "filter-end-durable: {handle:?} pending but not a live shape"
                );
            }
        }
    }
}

fn stored_shape(shape: &Shape, snapshot: Option<PgSnapshot>, filter_done: bool) -> StoredShape {
    StoredShape {
        handle: shape.handle.clone(),
        definition: shape.definition.clone(),
        schema: shape.schema.clone(),
        snapshot,
        snapshot_filter_done: filter_done,
    }
}

fn invalidation_reason(why: Invalidation) -> &'static str {
    match why {
        Invalidation::Truncated => "table truncated",
        Invalidation::Unrepresentable(reason) => reason,
        Invalidation::WhereClause => "where clause no longer compiles against the table",
    }
}
