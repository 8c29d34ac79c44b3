//! The scripted harness: one [`Instance`] on virtual time, a scripted walsender that speaks
//! real pgoutput bytes, a model of the shared storage, and a ledger that checks every
//! standby status: `ack-after-durable` (RP-1) and `persist-before-ack` (CT-5).
//!
//! Every action feeds one fact, drains the outputs into `out` (take them with
//! [`Harness::take`]) and fires the timers that are due, as the server's loop does. Nothing is
//! answered automatically: a test replies to `ConnectReplication`, `TryLock`,
//! `FindStaleLockHolders`, `LoadStorage`, `StartStreaming`, `FlushLogs` and `CreateShape`
//! itself ([`Harness::start`] walks the whole connection setup), so it can place replies
//! wherever the scenario needs them.
//!
//! The storage model executes the outputs as the driver would: rows from `CreateShape`,
//! `PersistShape` and `RemoveShape`; entries from `Append`, durable once a `FlushLogs` issued
//! after them is answered and lost if still unflushed when replication stops (LK-6: nothing
//! is written any more) or when their flush fails; the identity from `PersistIdentity`.
//! `LoadStorage` is answered from it, as `LoadedStorage` (incomplete shapes without a log).
//!
//! The harness also records every storage or stream write (`Append`, `FlushLogs`,
//! `CreateShape`, `PersistShape`, `PersistIdentity`, `Purged`, `RemoveShape`, statuses) made
//! while the core is not active (LK-5, LK-6, RO-4); see [`Harness::writes_outside_active`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;

use crate::instance::{
    Config, Input, Instance, LoadedShape, LoadedStorage, Output, RecoveredShape,
};
use crate::lsn::Lsn;
use crate::offset::LogOffset;
use crate::pgoutput::Oid;
use crate::ports::{
    DisconnectKind, LogEntry, RecoveredLog, ReplicationTarget, SlotPersistence, SlotStarted,
    StandbyStatus, StorageIdentity, StoredShape, SystemIdentity,
};
use crate::shape::{
    ColumnSchema, HandleStamp, RelationName, Replica, ShapeDefinition, ShapeHandle, TableSchema,
};
use crate::snapshot::PgSnapshot;
use crate::time::Instant;
use crate::OpId;

/// Where the scripted slot starts streaming by default.
pub(crate) const START_LSN: Lsn = Lsn(0x1000);

/// Size of every scripted commit record: `end_lsn = commit_lsn + COMMIT_RECORD`.
pub(crate) const COMMIT_RECORD: u64 = 0x30;

/// `public.items (id int4 primary key, title text, n int4)`.
pub(crate) fn items() -> TableSchema {
    table(
        16_384,
        "items",
        &[("id", 23, true), ("title", 25, false), ("n", 23, false)],
    )
}

/// `public.others (id int4 primary key, v text)`: a table no shape is on.
pub(crate) fn others() -> TableSchema {
    table(16_385, "others", &[("id", 23, true), ("v", 25, false)])
}

/// A table in `public` with `(name, type oid, is primary key)` columns.
pub(crate) fn table(oid: u32, name: &str, columns: &[(&str, u32, bool)]) -> TableSchema {
    let mut pk = 0;
    let columns = columns
        .iter()
        .map(|&(name, type_oid, is_pk)| {
            let pk_index = is_pk.then(|| {
                pk += 1;
                pk - 1
            });
            ColumnSchema {
                name: name.to_owned(),
                type_oid,
                typname: if type_oid == 23 { "int4" } else { "text" }.to_owned(),
                dims: 0,
                not_null: is_pk,
                pk_index,
                modifiers: Vec::new(),
                is_enum: false,
            }
        })
        .collect();
    let relation = RelationName {
        schema: "public".to_owned(),
        table: name.to_owned(),
    };
    TableSchema {
        server_version: crate::shape::ServerVersion::PG_15,
        oid: Oid(oid),
        relation,
        columns,
    }
}

/// The shape of every column of `schema`, `replica=default`.
pub(crate) fn whole(schema: &TableSchema) -> ShapeDefinition {
    ShapeDefinition {
        relation: schema.relation.clone(),
        columns: None,
        replica: Replica::Default,
        where_clause: None,
        log: crate::shape::LogMode::Full,
    }
}

/// The shape of some columns of `schema` (sorted by name, as requests normalise them).
pub(crate) fn selecting(schema: &TableSchema, columns: &[&str]) -> ShapeDefinition {
    let mut columns: Vec<String> = columns.iter().map(|c| (*c).to_owned()).collect();
    columns.sort();
    ShapeDefinition {
        columns: Some(columns),
        ..whole(schema)
    }
}

/// `pg_current_snapshot()` in Postgres's text form, `xmin:xmax:xip,…`.
pub(crate) fn snapshot(text: &str) -> PgSnapshot {
    PgSnapshot::parse(text).expect("valid snapshot text")
}

/// A snapshot before every xid the tests use (xids start at 700): filtering ends with the
/// first routed transaction.
pub(crate) fn early_snapshot() -> PgSnapshot {
    snapshot("600:600:")
}

/// One committed transaction, scripted as the changes pgoutput will carry.
#[derive(Clone, Debug)]
pub(crate) struct Txn {
    xid: u32,
    commit_lsn: Lsn,
    messages: Vec<Message>,
}

#[derive(Clone, Debug)]
enum Message {
    /// An explicit `Relation` message (schema announcement, e.g. after DDL).
    Relation(TableSchema),
    Insert(TableSchema, Vec<String>),
    /// The full old row, or none (`REPLICA IDENTITY DEFAULT`, key unchanged).
    Update(TableSchema, Option<Vec<String>>, Vec<String>),
    Delete(TableSchema, Vec<String>),
    Truncate(Vec<TableSchema>),
}

fn row(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| (*v).to_owned()).collect()
}

impl Txn {
    /// Transaction `xid` whose commit record is at `commit_lsn`.
    pub(crate) fn new(xid: u32, commit_lsn: u64) -> Self {
        Self {
            xid,
            commit_lsn: Lsn(commit_lsn),
            messages: Vec::new(),
        }
    }

    /// `INSERT INTO t VALUES (row)`.
    pub(crate) fn insert(mut self, t: &TableSchema, new: &[&str]) -> Self {
        self.messages.push(Message::Insert(t.clone(), row(new)));
        self
    }

    /// `UPDATE t` from `old` to `new`, with the full old row (`REPLICA IDENTITY FULL`).
    pub(crate) fn update(mut self, t: &TableSchema, old: &[&str], new: &[&str]) -> Self {
        self.messages
            .push(Message::Update(t.clone(), Some(row(old)), row(new)));
        self
    }

    /// `UPDATE t` to `new` without the old row, as Postgres sends it when the table's
    /// replica identity is not `FULL` and the key did not change.
    pub(crate) fn update_without_old_row(mut self, t: &TableSchema, new: &[&str]) -> Self {
        self.messages
            .push(Message::Update(t.clone(), None, row(new)));
        self
    }

    /// `DELETE FROM t` of the full old row.
    pub(crate) fn delete(mut self, t: &TableSchema, old: &[&str]) -> Self {
        self.messages.push(Message::Delete(t.clone(), row(old)));
        self
    }

    /// `TRUNCATE` of the tables.
    pub(crate) fn truncate(mut self, tables: &[&TableSchema]) -> Self {
        self.messages.push(Message::Truncate(
            tables.iter().map(|t| (*t).clone()).collect(),
        ));
        self
    }

    /// An explicit `Relation` message describing `t` as it is now.
    pub(crate) fn relation(mut self, t: &TableSchema) -> Self {
        self.messages.push(Message::Relation(t.clone()));
        self
    }

    fn tables(&self) -> BTreeSet<Oid> {
        let mut oids = BTreeSet::new();
        for m in &self.messages {
            match m {
                Message::Relation(_) => {}
                Message::Insert(t, _) | Message::Update(t, _, _) | Message::Delete(t, _) => {
                    oids.insert(t.oid);
                }
                Message::Truncate(ts) => oids.extend(ts.iter().map(|t| t.oid)),
            }
        }
        oids
    }
}

/// A test-only pgoutput (protocol v1) encoder: the inverse of `pgoutput::decode` for the
/// messages a walsender sends for one committed transaction.
pub(crate) mod wire {
    use crate::lsn::Lsn;
    use crate::shape::TableSchema;

    fn u16_of(n: usize) -> [u8; 2] {
        u16::try_from(n).expect("small count").to_be_bytes()
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    fn tuple(out: &mut Vec<u8>, values: &[String]) {
        out.extend_from_slice(&u16_of(values.len()));
        for v in values {
            out.push(b't');
            out.extend_from_slice(&i32::try_from(v.len()).expect("small value").to_be_bytes());
            out.extend_from_slice(v.as_bytes());
        }
    }

    /// `Begin`: final LSN, commit time, xid.
    pub(crate) fn begin(final_lsn: Lsn, xid: u32) -> Vec<u8> {
        let mut out = vec![b'B'];
        out.extend_from_slice(&final_lsn.0.to_be_bytes());
        out.extend_from_slice(&0i64.to_be_bytes());
        out.extend_from_slice(&xid.to_be_bytes());
        out
    }

    /// `Commit`: flags, commit LSN, end LSN, commit time.
    pub(crate) fn commit(commit_lsn: Lsn, end_lsn: Lsn) -> Vec<u8> {
        let mut out = vec![b'C', 0];
        out.extend_from_slice(&commit_lsn.0.to_be_bytes());
        out.extend_from_slice(&end_lsn.0.to_be_bytes());
        out.extend_from_slice(&0i64.to_be_bytes());
        out
    }

    /// `Relation` with `REPLICA IDENTITY FULL` (every column flagged as key).
    pub(crate) fn relation(t: &TableSchema) -> Vec<u8> {
        let mut out = vec![b'R'];
        out.extend_from_slice(&t.oid.0.to_be_bytes());
        string(&mut out, &t.relation.schema);
        string(&mut out, &t.relation.table);
        out.push(b'f');
        out.extend_from_slice(&u16_of(t.columns.len()));
        for c in &t.columns {
            out.push(1);
            string(&mut out, &c.name);
            out.extend_from_slice(&c.type_oid.to_be_bytes());
            out.extend_from_slice(&(-1i32).to_be_bytes());
        }
        out
    }

    /// `Insert` of a new tuple.
    pub(crate) fn insert(t: &TableSchema, new: &[String]) -> Vec<u8> {
        let mut out = vec![b'I'];
        out.extend_from_slice(&t.oid.0.to_be_bytes());
        out.push(b'N');
        tuple(&mut out, new);
        out
    }

    /// `Update` with the full old tuple (`'O'`), if given, and the new one.
    pub(crate) fn update(t: &TableSchema, old: Option<&[String]>, new: &[String]) -> Vec<u8> {
        let mut out = vec![b'U'];
        out.extend_from_slice(&t.oid.0.to_be_bytes());
        if let Some(old) = old {
            out.push(b'O');
            tuple(&mut out, old);
        }
        out.push(b'N');
        tuple(&mut out, new);
        out
    }

    /// `Delete` with the full old tuple (`'O'`).
    pub(crate) fn delete(t: &TableSchema, old: &[String]) -> Vec<u8> {
        let mut out = vec![b'D'];
        out.extend_from_slice(&t.oid.0.to_be_bytes());
        out.push(b'O');
        tuple(&mut out, old);
        out
    }

    /// `Truncate` of the tables, no options.
    pub(crate) fn truncate(tables: &[TableSchema]) -> Vec<u8> {
        let mut out = vec![b'T'];
        out.extend_from_slice(&u32::try_from(tables.len()).expect("few").to_be_bytes());
        out.push(0);
        for t in tables {
            out.extend_from_slice(&t.oid.0.to_be_bytes());
        }
        out
    }
}

/// The system every scripted connection reports unless a test says otherwise.
pub(crate) fn system() -> SystemIdentity {
    SystemIdentity {
        system_id: "7000000000000000001".to_owned(),
        timeline: 1,
        backend_pid: 4242,
    }
}

/// What storage records after following [`system`]'s default slot up to `acked`.
pub(crate) fn identity(acked: Lsn) -> StorageIdentity {
    let system = system();
    StorageIdentity {
        system_id: system.system_id,
        timeline: system.timeline,
        slot: Harness::config().target.slot,
        acked,
        purge_pending: false,
    }
}

/// A claim of an `Append` that was lost before it became durable.
const LOST: u64 = u64::MAX;

/// What keeps one commit from being durable, as the harness sees the conversation.
#[derive(Debug, Default)]
struct Pending {
    /// Snapshot ops of shapes that were snapshotting on a touched table when it was fed.
    snapshots: BTreeSet<OpId>,
    /// Per shape, the sequence number of the last `Append` holding one of its entries
    /// ([`LOST`] if that append was lost).
    appends: BTreeMap<ShapeHandle, u64>,
}

/// An independent model of durability, used to check every status the core sends: a
/// commit is durable once no snapshot it waits on is pending and, in every shape still
/// existing, the last `Append` with its entries precedes a `FlushLogs` that was answered.
#[derive(Debug, Default)]
struct Ledger {
    commits: BTreeMap<Lsn, Pending>,
    /// Shapes still snapshotting: snapshot op → (handle, table).
    snapshotting: BTreeMap<OpId, (ShapeHandle, Oid)>,
    appends: u64,
    /// Issued and unanswered flushes: op and the number of appends they cover.
    flushes: Vec<(OpId, u64)>,
    durable_appends: u64,
    /// Highest WAL end received on the current connection.
    received: Lsn,
    /// The last `flush` sent on the current connection (its start position at first).
    last_flush: Lsn,
}

impl Ledger {
    fn fed(&mut self, commit_lsn: Lsn, tables: &BTreeSet<Oid>) {
        // A replay waits on the shapes snapshotting now as well as on those of its first
        // delivery that are still snapshotting.
        let snapshots: Vec<OpId> = self
            .snapshotting
            .iter()
            .filter(|(_, (_, oid))| tables.contains(oid))
            .map(|(op, _)| *op)
            .collect();
        let pending = self.commits.entry(commit_lsn).or_default();
        pending.snapshots.extend(snapshots);
    }

    /// Records an `Append`; returns its sequence number.
    fn appended(&mut self, handle: &ShapeHandle, entries: &[LogEntry]) -> u64 {
        let seq = self.appends;
        for e in entries {
            let pending = self.commits.entry(Lsn(e.offset.tx())).or_default();
            pending.appends.insert(handle.clone(), seq);
        }
        self.appends += 1;
        seq
    }

    /// A removed shape needs nothing any more.
    fn removed(&mut self, handle: &ShapeHandle) {
        let ops: Vec<OpId> = self
            .snapshotting
            .iter()
            .filter(|(_, (h, _))| h == handle)
            .map(|(op, _)| *op)
            .collect();
        ops.into_iter().for_each(|op| self.snapshot_done(op));
        for pending in self.commits.values_mut() {
            pending.appends.remove(handle);
        }
    }

    fn snapshot_done(&mut self, op: OpId) {
        self.snapshotting.remove(&op);
        for pending in self.commits.values_mut() {
            pending.snapshots.remove(&op);
        }
    }

    fn flushed(&mut self, op: OpId) {
        if let Some(i) = self.flushes.iter().position(|(o, _)| *o == op) {
            let (_, covers) = self.flushes.remove(i);
            self.durable_appends = self.durable_appends.max(covers);
        }
    }

    /// A failed flush made nothing durable: every append not durable yet is lost. Returns
    /// the first lost sequence number.
    fn flush_failed(&mut self, op: OpId) -> u64 {
        self.flushes.retain(|(o, _)| *o != op);
        self.lose_from(self.durable_appends)
    }

    /// Replication stopped: appends no running flush covers are never written. Returns the
    /// first lost sequence number.
    fn stopped(&mut self) -> u64 {
        let covered = self.flushes.iter().map(|(_, c)| *c).max().unwrap_or(0);
        self.lose_from(self.durable_appends.max(covered))
    }

    fn lose_from(&mut self, seq: u64) -> u64 {
        for pending in self.commits.values_mut() {
            for claim in pending.appends.values_mut() {
                if *claim >= seq {
                    *claim = LOST;
                }
            }
        }
        seq
    }

    /// Streaming (re)started at `slot`: positions are those of this connection now.
    fn restarted(&mut self, slot: SlotStarted) {
        self.received = slot.confirmed_flush_lsn;
        self.last_flush = slot.confirmed_flush_lsn;
        if slot.slot_created {
            self.commits.clear(); // another history: its LSNs may repeat old ones
        }
    }

    fn is_durable(&self, pending: &Pending) -> bool {
        pending.snapshots.is_empty()
            && pending
                .appends
                .values()
                .all(|seq| *seq < self.durable_appends)
    }

    fn check(&mut self, status: StandbyStatus, stored: Option<&StorageIdentity>, on: &Connection) {
        let flush = status.flush;
        for (commit, pending) in self.commits.range(..flush) {
            assert!(
                self.is_durable(pending),
                "ack-after-durable: flush={flush} but commit {commit} is not durable \
                 ({pending:?}, durable appends {})",
                self.durable_appends
            );
        }
        assert!(
            flush <= self.received,
            "ack-received: flush={flush} received={}",
            self.received
        );
        assert!(
            flush >= self.last_flush,
            "ack-monotonic: flush={flush} last={}",
            self.last_flush
        );
        assert_eq!(status.apply, flush, "apply-equals-flush");
        assert!(status.write >= flush, "write-covers-flush: {status:?}");
        let stored = stored.unwrap_or_else(|| {
            panic!("persist-before-ack (CT-5): flush={flush} sent before any PersistIdentity")
        });
        assert!(
            flush <= stored.acked,
            "persist-before-ack (CT-5, RP-1): flush={flush} sent but storage has acked={}",
            stored.acked
        );
        let system = on
            .system
            .as_ref()
            .expect("status-on-connection: a status needs a connection");
        assert_eq!(
            stored.system_id, system.system_id,
            "identity-current (CT-5): storage follows another system"
        );
        assert_eq!(
            stored.timeline, system.timeline,
            "identity-current (CT-5): storage follows another timeline"
        );
        assert_eq!(
            stored.slot, on.slot,
            "identity-current (CT-5): storage follows another slot"
        );
        self.last_flush = flush;
    }
}

/// One shape as the storage model holds it.
#[derive(Debug)]
struct StoredModel {
    row: StoredShape,
    /// What its log held before the harness started.
    base: RecoveredLog,
    /// Appended entries with the sequence number of their `Append`.
    entries: Vec<(u64, LogEntry)>,
}

/// The shared storage directory, as the outputs so far left it.
#[derive(Debug, Default)]
struct Storage {
    shapes: BTreeMap<ShapeHandle, StoredModel>,
    stamp: HandleStamp,
    identity: Option<StorageIdentity>,
}

impl Storage {
    /// What `LoadStorage` finds: entries of answered flushes only.
    fn loaded(&self, durable_appends: u64) -> LoadedStorage {
        let shapes = self
            .shapes
            .values()
            .map(|s| {
                let mut log = s.base;
                for (_, e) in s.entries.iter().filter(|(seq, _)| *seq < durable_appends) {
                    log.latest = e.offset;
                    log.open_chunk_bytes = if e.chunk_end {
                        0
                    } else {
                        log.open_chunk_bytes + e.json.len() as u64 + 1
                    };
                }
                LoadedShape {
                    stored: s.row.clone(),
                    log: s.row.snapshot.is_some().then_some(log),
                }
            })
            .collect();
        LoadedStorage {
            shapes,
            stamp: self.stamp,
            identity: self.identity.clone(),
        }
    }

    fn lose_from(&mut self, seq: u64) {
        for shape in self.shapes.values_mut() {
            shape.entries.retain(|(s, _)| *s < seq);
        }
    }
}

/// The replication connection as the scripted driver holds it.
#[derive(Debug, Default)]
struct Connection {
    /// What the open connection reported, if one is open.
    system: Option<SystemIdentity>,
    /// Whether it holds the advisory lock.
    holds_lock: bool,
    /// The configured slot name.
    slot: String,
}

/// A step of the connection lifecycle that awaits a reply.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) enum Step {
    /// `ConnectReplication`.
    Connect,
    /// `TryLock`.
    Lock,
    /// `FindStaleLockHolders`.
    Breaker,
    /// `LoadStorage`.
    Load,
    /// `StartStreaming`.
    Stream,
}

/// One instance driven by a script. See the module docs.
pub(crate) struct Harness {
    core: Instance,
    now: Instant,
    out: Vec<Output>,
    ledger: Ledger,
    storage: Storage,
    connection: Connection,
    /// What the next connection reports.
    system: SystemIdentity,
    awaiting: BTreeMap<Step, OpId>,
    /// Every handle ever shown, across restarts and restores (ID-2: never reissued).
    issued: BTreeSet<ShapeHandle>,
    /// The publication's stamp reservation in Postgres: outlives restarts and restores.
    pg_stamps_reserved: HandleStamp,
    /// Writes made while the core was not active (see the module docs).
    off_duty_writes: Vec<String>,
    /// Relations announced on the current connection (pgoutput re-announces after a restart).
    announced: BTreeMap<Oid, TableSchema>,
    next_request: u64,
    unix_micros: u64,
    trace: Vec<String>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- harness trace ({} lines) ---", self.trace.len());
            for line in &self.trace {
                eprintln!("{line}");
            }
        }
    }
}

/// Construction and inspection.
impl Harness {
    /// The default configuration: persistent slot `electric_slot_default`, 10 MiB chunks,
    /// 10 s status interval, 1 s … 10 s backoff.
    pub(crate) fn config() -> Config {
        let target = ReplicationTarget {
            slot: "electric_slot_default".to_owned(),
            publication: "electric_publication_default".to_owned(),
            slot_persistence: SlotPersistence::Persistent,
        };
        Config::new(target, 10 * 1024 * 1024)
    }

    /// A fresh instance over empty storage that has just asked to connect replication.
    pub(crate) fn new() -> Self {
        Self::with(Self::config(), Vec::new(), HandleStamp::default())
    }

    /// An instance whose storage holds `recovered` shapes, a stamp high-water mark and no
    /// identity (as left by a version that did not persist one).
    pub(crate) fn with(config: Config, recovered: Vec<RecoveredShape>, stamp: HandleStamp) -> Self {
        Self::with_storage(config, recovered, stamp, None)
    }

    /// An instance whose storage holds `recovered` shapes, a stamp high-water mark and the
    /// replication `identity` they follow. The core learns all this only from `StorageLoaded`
    /// once it holds the lock.
    pub(crate) fn with_storage(
        config: Config,
        recovered: Vec<RecoveredShape>,
        stamp: HandleStamp,
        identity: Option<StorageIdentity>,
    ) -> Self {
        let now = Instant(1_000_000_000);
        let shapes: BTreeMap<ShapeHandle, StoredModel> = recovered
            .into_iter()
            .map(|r| {
                let model = StoredModel {
                    row: r.stored,
                    base: r.log,
                    entries: Vec::new(),
                };
                (model.row.handle.clone(), model)
            })
            .collect();
        let connection = Connection {
            slot: config.target.slot.clone(),
            ..Connection::default()
        };
        let mut h = Self {
            core: Instance::new(config, now),
            now,
            out: Vec::new(),
            ledger: Ledger::default(),
            issued: shapes.keys().cloned().collect(),
            pg_stamps_reserved: HandleStamp::default(),
            storage: Storage {
                shapes,
                stamp,
                identity,
            },
            connection,
            system: system(),
            awaiting: BTreeMap::new(),
            off_duty_writes: Vec::new(),
            announced: BTreeMap::new(),
            next_request: 1_000,
            unix_micros: 1_700_000_000_000_000,
            trace: vec![format!("{now:?} Instance::new")],
        };
        h.drain(false);
        h.settle();
        h
    }

    /// A fresh instance, active on a slot at [`START_LSN`], its outputs taken.
    pub(crate) fn active() -> Self {
        Self::active_with(Self::config())
    }

    /// Like [`Harness::active`] with another configuration.
    pub(crate) fn active_with(config: Config) -> Self {
        let mut h = Self::with(config, Vec::new(), HandleStamp::default());
        h.start(START_LSN);
        h.take();
        h
    }

    /// A crash-restart: a new instance (another process, [`Harness::config`]) over what
    /// storage holds durably now (entries of answered flushes only; incomplete shapes are
    /// gone), not connected yet.
    pub(crate) fn crashed(&self) -> Self {
        self.restarted_over(self.backup())
    }

    /// A copy of what the storage directory holds durably now (an operator's backup).
    pub(crate) fn backup(&self) -> LoadedStorage {
        self.storage.loaded(self.ledger.durable_appends)
    }

    /// A crash-restart over `backup`, an earlier copy of the storage directory restored in
    /// its place; Postgres (its slot and stamp reservation) is not rolled back.
    pub(crate) fn restored(&self, backup: LoadedStorage) -> Self {
        self.restarted_over(backup)
    }

    fn restarted_over(&self, loaded: LoadedStorage) -> Self {
        let recovered = loaded
            .shapes
            .into_iter()
            .filter_map(|s| {
                let log = s.log?;
                let stored = s.stored;
                Some(RecoveredShape { stored, log })
            })
            .collect();
        let mut h = Self::with_storage(Self::config(), recovered, loaded.stamp, loaded.identity);
        h.issued.extend(self.issued.iter().cloned());
        h.pg_stamps_reserved = self.pg_stamps_reserved;
        h
    }

    /// The instance under test.
    pub(crate) fn core(&self) -> &Instance {
        &self.core
    }

    /// Virtual now.
    pub(crate) fn now(&self) -> Instant {
        self.now
    }

    /// The outputs since the last call, in order.
    pub(crate) fn take(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    /// The op of the `step` awaiting its reply, if one does.
    pub(crate) fn awaiting(&self, step: Step) -> Option<OpId> {
        self.awaiting.get(&step).copied()
    }

    /// Whether the scripted replication connection holds the advisory lock.
    pub(crate) fn holds_lock(&self) -> bool {
        self.connection.holds_lock
    }

    /// The identity storage holds now.
    pub(crate) fn stored_identity(&self) -> Option<&StorageIdentity> {
        self.storage.identity.as_ref()
    }

    /// The handles of the shapes storage holds now.
    pub(crate) fn stored_handles(&self) -> Vec<ShapeHandle> {
        self.storage.shapes.keys().cloned().collect()
    }

    /// Makes the next connections report `system` (another cluster, a new timeline).
    pub(crate) fn set_system(&mut self, system: SystemIdentity) {
        self.system = system;
    }

    /// Every write the core asked for while it was not active, as trace lines.
    pub(crate) fn writes_outside_active(&self) -> &[String] {
        &self.off_duty_writes
    }
}

/// Time and the connection lifecycle.
impl Harness {
    /// Feeds one fact, drains, and fires the timers already due.
    pub(crate) fn input(&mut self, input: Input) {
        self.step(Some(input));
        self.settle();
    }

    /// Moves virtual time forward by `by`, firing each timer at its deadline.
    pub(crate) fn advance(&mut self, by: Duration) {
        let target = self.now + by;
        for _ in 0..10_000 {
            match self.core.poll_timeout() {
                Some(at) if at <= target => {
                    self.now = self.now.max(at);
                    self.step(None);
                }
                _ => {
                    self.now = target;
                    return;
                }
            }
        }
        panic!("timer-progress: timers kept firing without time passing");
    }

    /// Calls `handle_timeout` with a `now` `by` earlier than the last one.
    pub(crate) fn rewind_clock(&mut self, by: Duration) {
        self.now = Instant(self.now.0 - u64::try_from(by.as_nanos()).expect("short"));
        self.step(None);
    }

    fn awaited(&mut self, step: Step) -> OpId {
        self.awaiting.remove(&step).unwrap_or_else(|| {
            panic!(
                "no {step:?} awaits its reply (awaiting {:?})",
                self.awaiting
            )
        })
    }

    /// Answers `ConnectReplication`: the connection reports the harness's system.
    pub(crate) fn connect(&mut self) {
        let identity = self.system.clone();
        let op = self.awaited(Step::Connect);
        self.connection.system = Some(identity.clone());
        self.input(Input::ReplicationConnected { op, identity });
    }

    /// Answers `TryLock`.
    pub(crate) fn lock(&mut self, acquired: bool) {
        let op = self.awaited(Step::Lock);
        self.connection.holds_lock = acquired;
        self.input(Input::LockAttempted { op, acquired });
    }

    /// Answers `FindStaleLockHolders` with these holder pids.
    pub(crate) fn stale_holders(&mut self, pids: &[i32]) {
        let op = self.awaited(Step::Breaker);
        let pids = pids.to_vec();
        self.input(Input::StaleLockHolders { op, pids });
    }

    /// Answers `LoadStorage` with what the storage model holds.
    pub(crate) fn load_storage(&mut self) {
        let op = self.awaiting(Step::Load).unwrap_or_else(|| {
            panic!("no LoadStorage awaits its reply (is a flush from before the disconnect still running?)")
        });
        self.awaiting.remove(&Step::Load);
        let storage = self.storage.loaded(self.ledger.durable_appends);
        self.input(Input::StorageLoaded { op, storage });
    }

    /// Answers `StartStreaming`: the slot streams from `confirmed_flush_lsn`, created now or
    /// not.
    pub(crate) fn start_streaming(&mut self, confirmed_flush_lsn: Lsn, slot_created: bool) {
        let op = self.awaited(Step::Stream);
        let slot = SlotStarted {
            slot_created,
            confirmed_flush_lsn,
            stamps_reserved: self.pg_stamps_reserved,
        };
        self.ledger.restarted(slot);
        self.announced.clear();
        self.input(Input::ReplicationStarted { op, slot });
    }

    /// Walks the whole setup on an existing slot streaming from `confirmed_flush_lsn`.
    pub(crate) fn start(&mut self, confirmed_flush_lsn: Lsn) {
        self.start_with(confirmed_flush_lsn, false);
    }

    /// Walks the whole setup: `ConnectReplication` → `TryLock` (acquired) → `LoadStorage` →
    /// `StartStreaming`, the slot created now or not.
    pub(crate) fn start_with(&mut self, confirmed_flush_lsn: Lsn, slot_created: bool) {
        self.connect();
        self.lock(true);
        self.load_storage();
        self.start_streaming(confirmed_flush_lsn, slot_created);
    }

    /// Fails the connection step the core awaits (connect, lock or start) with `kind`.
    pub(crate) fn fail_step(&mut self, kind: DisconnectKind) {
        let step = [Step::Connect, Step::Lock, Step::Stream]
            .into_iter()
            .find(|s| self.awaiting.contains_key(s))
            .unwrap_or_else(|| panic!("no connection step awaits a reply: {:?}", self.awaiting));
        let op = self.awaited(step);
        let message = "connection refused".to_owned();
        self.input(Input::ReplicationFailed { op, kind, message });
    }

    /// The replication stream breaks (transient).
    pub(crate) fn lose_replication(&mut self) {
        self.input(Input::ReplicationLost {
            kind: DisconnectKind::Transient,
        });
    }
}

/// Shapes, the walsender and flushes.
impl Harness {
    /// A client asks for `definition` on `schema`; returns the request's op.
    pub(crate) fn request(&mut self, definition: ShapeDefinition, schema: &TableSchema) -> OpId {
        self.unix_micros += 1_000;
        let unix_micros = self.unix_micros;
        self.request_at(definition, schema, unix_micros)
    }

    /// Like [`Harness::request`] with the wall clock reading `unix_micros`.
    pub(crate) fn request_at(
        &mut self,
        definition: ShapeDefinition,
        schema: &TableSchema,
        unix_micros: u64,
    ) -> OpId {
        self.next_request += 1;
        let op = OpId(self.next_request);
        let schema = schema.clone();
        self.input(Input::ShapeRequested {
            op,
            definition,
            schema,
            unix_micros,
        });
        op
    }

    /// Requests the whole-table shape of `schema`, expects `CreateShape` and leaves the shape
    /// snapshotting. Returns its handle and snapshot op; other outputs stay in `out`.
    pub(crate) fn create_shape(&mut self, schema: &TableSchema) -> (ShapeHandle, OpId) {
        let op = self.request(whole(schema), schema);
        let handle = self
            .out
            .iter()
            .find_map(|o| match o {
                Output::CreateShape { op: o, shape, .. } if *o == op => Some(shape.handle.clone()),
                _ => None,
            })
            .expect("CreateShape for the request");
        (handle, op)
    }

    /// A whole-table shape of `schema` whose snapshot finished before any scripted xid
    /// ([`early_snapshot`]); outputs taken.
    pub(crate) fn live_shape(&mut self, schema: &TableSchema) -> ShapeHandle {
        let (handle, op) = self.create_shape(schema);
        self.snapshot_taken(op, early_snapshot());
        self.take();
        handle
    }

    /// The snapshot of request `op` finished with `pg_current_snapshot()` = `snapshot`.
    pub(crate) fn snapshot_taken(&mut self, op: OpId, snapshot: PgSnapshot) {
        self.input(Input::SnapshotTaken { op, snapshot });
    }

    /// The walsender sends `txn` as pgoutput messages, `wal_end` at its commit record's end.
    pub(crate) fn commit(&mut self, txn: &Txn) {
        let end = Lsn(txn.commit_lsn.0 + COMMIT_RECORD);
        self.xlog(end, wire::begin(txn.commit_lsn, txn.xid));
        for m in &txn.messages {
            for t in Self::described(m) {
                if self.announced.get(&t.oid) != Some(t) {
                    self.announced.insert(t.oid, t.clone());
                    self.xlog(end, wire::relation(t));
                }
            }
            let bytes = match m {
                Message::Relation(_) => continue,
                Message::Insert(t, new) => wire::insert(t, new),
                Message::Update(t, old, new) => wire::update(t, old.as_deref(), new),
                Message::Delete(t, old) => wire::delete(t, old),
                Message::Truncate(ts) => wire::truncate(ts),
            };
            self.xlog(end, bytes);
        }
        if self.core.is_active() {
            self.ledger.fed(txn.commit_lsn, &txn.tables());
        }
        self.xlog(end, wire::commit(txn.commit_lsn, end));
    }

    /// Tables a message needs announced first (an explicit `Relation` announces itself).
    fn described(m: &Message) -> &[TableSchema] {
        match m {
            Message::Relation(t)
            | Message::Insert(t, _)
            | Message::Update(t, _, _)
            | Message::Delete(t, _) => std::slice::from_ref(t),
            Message::Truncate(ts) => ts,
        }
    }

    /// One raw `XLogData` message.
    pub(crate) fn xlog(&mut self, wal_end: Lsn, data: Vec<u8>) {
        self.input(Input::XLogData {
            wal_end,
            data: Bytes::from(data),
        });
    }

    /// A primary keepalive.
    pub(crate) fn keepalive(&mut self, wal_end: Lsn, reply_requested: bool) {
        self.input(Input::PrimaryKeepalive {
            wal_end,
            reply_requested,
        });
    }

    /// The oldest unanswered `FlushLogs`, if any.
    pub(crate) fn pending_flush(&self) -> Option<OpId> {
        self.ledger.flushes.first().map(|(op, _)| *op)
    }

    /// Answers the oldest unanswered `FlushLogs`: everything appended before it is durable.
    pub(crate) fn complete_flush(&mut self) {
        let op = self.pending_flush().expect("a FlushLogs awaits its reply");
        self.input(Input::LogsFlushed { op });
    }

    /// Fails the oldest unanswered `FlushLogs`: nothing it covered is known to be durable.
    pub(crate) fn fail_flush(&mut self) {
        let op = self.pending_flush().expect("a FlushLogs awaits its reply");
        self.input(Input::LogsFlushFailed { op });
    }
}

/// Stepping the core and following its outputs.
impl Harness {
    fn settle(&mut self) {
        for _ in 0..100 {
            match self.core.poll_timeout() {
                Some(at) if at <= self.now => self.step(None),
                _ => return,
            }
        }
        panic!("timer-progress: a due timer stayed due after firing");
    }

    fn step(&mut self, input: Option<Input>) {
        let was_active = self.core.is_active();
        match input {
            Some(input) => {
                self.before(&input);
                self.trace
                    .push(format!("{:?} → {}", self.now, brief_input(&input)));
                let done = match input {
                    Input::SnapshotTaken { op, .. } | Input::SnapshotFailed { op, .. } => Some(op),
                    _ => None,
                };
                self.core.handle_input(self.now, input);
                if let Some(op) = done {
                    self.ledger.snapshot_done(op);
                }
            }
            None => {
                self.trace.push(format!("{:?} → timeout", self.now));
                self.core.handle_timeout(self.now);
            }
        }
        self.drain(was_active);
    }

    /// The driver's side of an input, before the core sees it.
    fn before(&mut self, input: &Input) {
        match input {
            Input::LogsFlushed { op } => self.ledger.flushed(*op),
            Input::LogsFlushFailed { op } => {
                let lost = self.ledger.flush_failed(*op);
                self.storage.lose_from(lost);
            }
            Input::XLogData { wal_end, .. } | Input::PrimaryKeepalive { wal_end, .. } => {
                self.ledger.received = self.ledger.received.max(*wal_end);
            }
            // Connection state is the helpers' business: made-up replies change nothing.
            Input::ReplicationConnected { .. }
            | Input::LockAttempted { .. }
            | Input::ReplicationStarted { .. }
            | Input::StaleLockHolders { .. }
            | Input::StorageLoaded { .. }
            | Input::ReplicationFailed { .. }
            | Input::ReplicationLost { .. }
            | Input::ShapeRequested { .. }
            | Input::SnapshotTaken { .. }
            | Input::RelationsChecked { .. }
            | Input::SnapshotFailed { .. }
            | Input::ShapeDeletionRequested { .. } => {}
        }
    }

    /// Drains the outputs of one step, auditing writes: allowed while the core was active
    /// (until it stops replication) or once the step made it active.
    fn drain(&mut self, was_active: bool) {
        let now_active = self.core.is_active();
        let mut stopped = false;
        while let Some(output) = self.core.poll_output() {
            self.trace.push(format!("    ← {output:?}"));
            let allowed = if was_active { !stopped } else { now_active };
            if is_write(&output) && !allowed {
                let line = format!("{:?}: {output:?}", self.now);
                self.off_duty_writes.push(line);
            }
            stopped |= matches!(
                output,
                Output::StopReplication { .. } | Output::Fatal { .. }
            );
            self.follow(&output);
            self.out.push(output);
        }
    }

    /// Executes `output` on the scripted world: ops awaiting replies, storage, the ledger.
    fn follow(&mut self, output: &Output) {
        match output {
            Output::ConnectReplication { op } => self.expect_reply(Step::Connect, *op),
            Output::TryLock { op, .. } => self.expect_reply(Step::Lock, *op),
            Output::FindStaleLockHolders { op, .. } => self.expect_reply(Step::Breaker, *op),
            Output::LoadStorage { op } => self.expect_reply(Step::Load, *op),
            Output::StartStreaming { op, .. } => self.expect_reply(Step::Stream, *op),
            Output::StopReplication { .. } | Output::Fatal { .. } => self.stop(),
            Output::PersistIdentity { identity } => self.storage.identity = Some(identity.clone()),
            Output::Purged { .. } => self.ledger.commits.clear(),
            Output::SendStandbyStatus(status) => {
                let stored = self.storage.identity.as_ref();
                self.ledger.check(*status, stored, &self.connection);
            }
            Output::Append { handle, entries } => self.append(handle, entries),
            Output::FlushLogs { op } => self.ledger.flushes.push((*op, self.ledger.appends)),
            Output::CreateShape {
                op,
                shape,
                stamp,
                reserve_stamps,
                snapshot,
            } => {
                if let Some(through) = *reserve_stamps {
                    self.pg_stamps_reserved = self.pg_stamps_reserved.max(through);
                }
                self.create(*op, shape, *stamp, snapshot.schema.oid);
            }
            Output::PersistShape { shape } => {
                let stored = self.storage.shapes.get_mut(&shape.handle);
                let stored = stored.unwrap_or_else(|| {
                    panic!(
                        "persist-existing: PersistShape of {} not in storage",
                        shape.handle
                    )
                });
                stored.row = shape.clone();
            }
            Output::RemoveShape { handle, .. } => {
                self.ledger.removed(handle);
                self.storage.shapes.remove(handle);
            }
            Output::TerminateBackend { .. }
            | Output::RefreshReadModel
            | Output::ShapeExists { .. }
            | Output::ShapeRefused { .. }
            | Output::ShapeDenied { .. }
            | Output::RefuseShape { .. }
            | Output::AnswerDeletion { .. }
            | Output::CheckRelations { .. } => {}
        }
    }

    fn expect_reply(&mut self, step: Step, op: OpId) {
        self.awaiting.insert(step, op);
    }

    /// The replication connection is closed: the lock is gone, replies of its steps never
    /// come, and appends no running flush covers are never written (LK-6).
    fn stop(&mut self) {
        self.connection.system = None;
        self.connection.holds_lock = false;
        for step in [Step::Connect, Step::Lock, Step::Load, Step::Stream] {
            self.awaiting.remove(&step);
        }
        self.announced.clear();
        let lost = self.ledger.stopped();
        self.storage.lose_from(lost);
    }

    fn append(&mut self, handle: &ShapeHandle, entries: &[LogEntry]) {
        let seq = self.ledger.appended(handle, entries);
        let stored = self.storage.shapes.get_mut(handle);
        let stored =
            stored.unwrap_or_else(|| panic!("append-existing: Append to {handle}, not in storage"));
        stored
            .entries
            .extend(entries.iter().map(|e| (seq, e.clone())));
    }

    fn create(&mut self, op: OpId, shape: &StoredShape, stamp: HandleStamp, table: Oid) {
        let handle = shape.handle.clone();
        assert!(
            self.issued.insert(handle.clone()),
            "handles-never-reissued (ID-2): {handle}"
        );
        assert!(
            stamp > self.storage.stamp,
            "stamp-increases (ID-2): {stamp:?} after {:?}",
            self.storage.stamp
        );
        assert!(
            stamp <= self.pg_stamps_reserved,
            "stamp-reserved (ID-2): {stamp:?} shown beyond Postgres's reservation {:?}",
            self.pg_stamps_reserved
        );
        self.storage.stamp = stamp;
        self.ledger.snapshotting.insert(op, (handle.clone(), table));
        let model = StoredModel {
            row: shape.clone(),
            base: RecoveredLog {
                latest: LogOffset::SNAPSHOT_END,
                open_chunk_bytes: 0,
            },
            entries: Vec::new(),
        };
        self.storage.shapes.insert(handle, model);
    }
}

/// Whether `output` writes storage or the replication stream.
fn is_write(output: &Output) -> bool {
    matches!(
        output,
        Output::Append { .. }
            | Output::FlushLogs { .. }
            | Output::CreateShape { .. }
            | Output::PersistShape { .. }
            | Output::PersistIdentity { .. }
            | Output::Purged { .. }
            | Output::RemoveShape { .. }
            | Output::SendStandbyStatus(_)
    )
}

fn brief_input(input: &Input) -> String {
    match input {
        Input::XLogData { wal_end, data } => {
            let tag = data.first().map_or('?', |b| char::from(*b));
            format!(
                "XLogData {{ wal_end: {wal_end}, tag: '{tag}', len: {} }}",
                data.len()
            )
        }
        other => format!("{other:?}"),
    }
}

/// The variant name of an output, for asserting conversations.
pub(crate) fn kind(output: &Output) -> &'static str {
    match output {
        Output::ConnectReplication { .. } => "ConnectReplication",
        Output::TryLock { .. } => "TryLock",
        Output::FindStaleLockHolders { .. } => "FindStaleLockHolders",
        Output::TerminateBackend { .. } => "TerminateBackend",
        Output::LoadStorage { .. } => "LoadStorage",
        Output::StartStreaming { .. } => "StartStreaming",
        Output::StopReplication { .. } => "StopReplication",
        Output::RefreshReadModel => "RefreshReadModel",
        Output::PersistIdentity { .. } => "PersistIdentity",
        Output::Purged { .. } => "Purged",
        Output::SendStandbyStatus(_) => "SendStandbyStatus",
        Output::Append { .. } => "Append",
        Output::FlushLogs { .. } => "FlushLogs",
        Output::CreateShape { .. } => "CreateShape",
        Output::ShapeExists { .. } => "ShapeExists",
        Output::ShapeRefused { .. } => "ShapeRefused",
        Output::ShapeDenied { .. } => "ShapeDenied",
        Output::RefuseShape { .. } => "RefuseShape",
        Output::CheckRelations { .. } => "CheckRelations",
        Output::PersistShape { .. } => "PersistShape",
        Output::RemoveShape { .. } => "RemoveShape",
        Output::AnswerDeletion { .. } => "AnswerDeletion",
        Output::Fatal { .. } => "Fatal",
    }
}

/// The variant names of `outputs`, in order.
pub(crate) fn kinds(outputs: &[Output]) -> Vec<&'static str> {
    outputs.iter().map(kind).collect()
}

/// How many of `outputs` are of `kind`.
pub(crate) fn count(outputs: &[Output], of: &str) -> usize {
    outputs.iter().filter(|o| kind(o) == of).count()
}

/// The standby statuses among `outputs`.
pub(crate) fn statuses(outputs: &[Output]) -> Vec<StandbyStatus> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::SendStandbyStatus(s) => Some(*s),
            _ => None,
        })
        .collect()
}

/// The `flush` positions of the standby statuses among `outputs`.
pub(crate) fn flushes(outputs: &[Output]) -> Vec<Lsn> {
    statuses(outputs).iter().map(|s| s.flush).collect()
}

/// The identities persisted among `outputs`, in order.
pub(crate) fn persisted_identities(outputs: &[Output]) -> Vec<StorageIdentity> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::PersistIdentity { identity } => Some(identity.clone()),
            _ => None,
        })
        .collect()
}

/// Every entry appended to `handle` among `outputs`, in order.
pub(crate) fn entries(outputs: &[Output], handle: &ShapeHandle) -> Vec<LogEntry> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Append { handle: h, entries } if h == handle => Some(entries.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// The offsets of `entries` as the wire shows them (`<tx>_<op>`).
pub(crate) fn offsets(entries: &[LogEntry]) -> Vec<String> {
    entries.iter().map(|e| e.offset.to_string()).collect()
}

/// The handles of the `RemoveShape` outputs among `outputs`.
pub(crate) fn removed(outputs: &[Output]) -> Vec<ShapeHandle> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::RemoveShape { handle, .. } => Some(handle.clone()),
            _ => None,
        })
        .collect()
}
