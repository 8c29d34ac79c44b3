//! The scripted harness: one [`Instance`] on virtual time, a scripted walsender that speaks
//! real pgoutput bytes, and a ledger that checks `ack-after-durable` on every standby status.
//!
//! Every action feeds one fact, drains the outputs into `out` (take them with
//! [`Harness::take`]) and fires the timers that are due, as the server's loop does. Nothing is
//! answered automatically: a test replies to `FlushLogs`, `CreateShape` and `StartReplication`
//! itself, so it can place replies wherever the scenario needs them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;

use crate::instance::{Config, Input, Instance, Output, RecoveredShape};
use crate::lsn::Lsn;
use crate::pgoutput::Oid;
use crate::ports::{
    DisconnectKind, LogEntry, ReplicationStarted, ReplicationTarget, StandbyStatus,
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
            }
        })
        .collect();
    let relation = RelationName {
        schema: "public".to_owned(),
        table: name.to_owned(),
    };
    TableSchema {
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

/// What keeps one commit from being durable, as the harness sees the conversation.
#[derive(Debug, Default)]
struct Pending {
    /// Snapshot ops of shapes that were snapshotting on a touched table when it was fed.
    snapshots: BTreeSet<OpId>,
    /// Sequence number of the last `Append` holding one of its entries.
    last_append: Option<u64>,
}

/// An independent model of durability, used to check every status the core sends: a
/// commit is durable once no snapshot it waits on is pending and every `Append` with its
/// entries precedes a `FlushLogs` that was answered.
#[derive(Debug, Default)]
struct Ledger {
    commits: BTreeMap<Lsn, Pending>,
    /// Shapes still snapshotting: snapshot op → (handle, table).
    snapshotting: BTreeMap<OpId, (ShapeHandle, Oid)>,
    appends: u64,
    /// Issued and unanswered flushes: op and the number of appends they cover.
    flushes: Vec<(OpId, u64)>,
    durable_appends: u64,
    received: Lsn,
    last_flush: Lsn,
}

impl Ledger {
    fn fed(&mut self, commit_lsn: Lsn, tables: &BTreeSet<Oid>) {
        if self.commits.contains_key(&commit_lsn) {
            return; // a replay: the first delivery decided what it waits on
        }
        let snapshots = self
            .snapshotting
            .iter()
            .filter(|(_, (_, oid))| tables.contains(oid))
            .map(|(op, _)| *op)
            .collect();
        self.commits.insert(
            commit_lsn,
            Pending {
                snapshots,
                last_append: None,
            },
        );
    }

    fn output(&mut self, output: &Output) {
        match output {
            Output::Append { entries, .. } => {
                for e in entries {
                    let pending = self.commits.entry(Lsn(e.offset.tx())).or_default();
                    pending.last_append = Some(self.appends);
                }
                self.appends += 1;
            }
            Output::FlushLogs { op } => self.flushes.push((*op, self.appends)),
            Output::CreateShape { op, snapshot, .. } => {
                self.snapshotting
                    .insert(*op, (snapshot.handle.clone(), snapshot.schema.oid));
            }
            Output::RemoveShape { handle, .. } => {
                let ops: Vec<OpId> = self
                    .snapshotting
                    .iter()
                    .filter(|(_, (h, _))| h == handle)
                    .map(|(op, _)| *op)
                    .collect();
                ops.into_iter().for_each(|op| self.snapshot_done(op));
            }
            Output::StartReplication { .. }
            | Output::StopReplication { .. }
            | Output::SendStandbyStatus(_)
            | Output::ShapeExists { .. }
            | Output::ShapeRefused { .. }
            | Output::PersistShape { .. }
            | Output::Fatal { .. } => {}
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

    fn is_durable(&self, pending: &Pending) -> bool {
        pending.snapshots.is_empty()
            && pending
                .last_append
                .is_none_or(|seq| seq < self.durable_appends)
    }

    fn check(&mut self, status: StandbyStatus) {
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
        self.last_flush = flush;
    }
}

/// One instance driven by a script. See the module docs.
pub(crate) struct Harness {
    core: Instance,
    now: Instant,
    out: Vec<Output>,
    ledger: Ledger,
    /// Relations announced on the current connection (pgoutput re-announces after a restart).
    announced: BTreeMap<Oid, TableSchema>,
    start_op: Option<OpId>,
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

impl Harness {
    /// The default configuration: 10 MiB chunks, 10 s status interval, 1 s … 10 s backoff.
    pub(crate) fn config() -> Config {
        let target = ReplicationTarget {
            slot: "electric_slot_default".to_owned(),
            publication: "electric_publication_default".to_owned(),
        };
        Config::new(target, 10 * 1024 * 1024)
    }

    /// A fresh instance (no stored shapes) that has just asked to start replication.
    pub(crate) fn new() -> Self {
        Self::with(Self::config(), Vec::new(), HandleStamp::default())
    }

    /// An instance over `recovered` shapes and a stored stamp high-water mark.
    pub(crate) fn with(config: Config, recovered: Vec<RecoveredShape>, stamp: HandleStamp) -> Self {
        let now = Instant(1_000_000_000);
        let mut h = Self {
            core: Instance::new(config, now, recovered, stamp),
            now,
            out: Vec::new(),
            ledger: Ledger::default(),
            announced: BTreeMap::new(),
            start_op: None,
            next_request: 1_000,
            unix_micros: 1_700_000_000_000_000,
            trace: vec![format!("{now:?} Instance::new")],
        };
        h.drain(None);
        h.settle();
        h
    }

    /// A fresh instance streaming from [`START_LSN`], its outputs taken.
    pub(crate) fn streaming() -> Self {
        let mut h = Self::new();
        h.start(START_LSN);
        h.take();
        h
    }

    /// Like [`Harness::streaming`] with another configuration.
    pub(crate) fn streaming_with(config: Config) -> Self {
        let mut h = Self::with(config, Vec::new(), HandleStamp::default());
        h.start(START_LSN);
        h.take();
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

    /// The op of the `StartReplication` awaiting a reply.
    pub(crate) fn start_op(&self) -> OpId {
        self.start_op.expect("a StartReplication awaits its reply")
    }

    /// Answers `StartReplication`: the existing slot streams from `confirmed_flush_lsn`.
    pub(crate) fn start(&mut self, confirmed_flush_lsn: Lsn) {
        self.start_with(confirmed_flush_lsn, false);
    }

    /// Answers `StartReplication`, saying whether the slot was created just now.
    pub(crate) fn start_with(&mut self, confirmed_flush_lsn: Lsn, slot_created: bool) {
        let op = self
            .start_op
            .take()
            .expect("a StartReplication awaits its reply");
        let started = ReplicationStarted {
            system_id: "7000000000000000001".to_owned(),
            timeline: 1,
            slot_created,
            confirmed_flush_lsn,
        };
        if slot_created {
            self.ledger.last_flush = Lsn::ZERO;
        }
        self.input(Input::ReplicationStarted { op, started });
    }

    /// Answers `StartReplication` with a failure of `kind`.
    pub(crate) fn fail_start(&mut self, kind: DisconnectKind) {
        let op = self
            .start_op
            .take()
            .expect("a StartReplication awaits its reply");
        let message = "connection refused".to_owned();
        self.input(Input::ReplicationFailed { op, kind, message });
    }

    /// The replication stream breaks (transient).
    pub(crate) fn lose_replication(&mut self) {
        self.input(Input::ReplicationLost {
            kind: DisconnectKind::Transient,
        });
    }

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
        self.ledger.fed(txn.commit_lsn, &txn.tables());
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
        let mut snapshot_done = None;
        match input {
            Some(input) => {
                match &input {
                    Input::LogsFlushed { op } => self.ledger.flushed(*op),
                    Input::XLogData { wal_end, .. } | Input::PrimaryKeepalive { wal_end, .. } => {
                        self.ledger.received = self.ledger.received.max(*wal_end);
                    }
                    Input::ReplicationStarted { started, .. } => {
                        let lsn = started.confirmed_flush_lsn;
                        self.ledger.received = self.ledger.received.max(lsn);
                        self.announced.clear();
                    }
                    // A failed flush restarts replication: tables are announced again.
                    Input::ReplicationLost { .. } | Input::LogsFlushFailed { .. } => {
                        self.announced.clear();
                    }
                    Input::SnapshotTaken { op, .. } | Input::SnapshotFailed { op } => {
                        snapshot_done = Some(*op);
                    }
                    Input::ReplicationFailed { .. } | Input::ShapeRequested { .. } => {}
                }
                self.trace
                    .push(format!("{:?} → {}", self.now, brief_input(&input)));
                self.core.handle_input(self.now, input);
            }
            None => {
                self.trace.push(format!("{:?} → timeout", self.now));
                self.core.handle_timeout(self.now);
            }
        }
        self.drain(snapshot_done);
    }

    fn drain(&mut self, snapshot_done: Option<OpId>) {
        let mut batch = Vec::new();
        while let Some(output) = self.core.poll_output() {
            batch.push(output);
        }
        for output in &batch {
            self.ledger.output(output);
        }
        if let Some(op) = snapshot_done {
            self.ledger.snapshot_done(op);
        }
        for output in &batch {
            self.trace.push(format!("    ← {output:?}"));
            match output {
                Output::SendStandbyStatus(status) => self.ledger.check(*status),
                Output::StartReplication { op, .. } => self.start_op = Some(*op),
                _ => {}
            }
        }
        self.out.extend(batch);
    }
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
        Output::StartReplication { .. } => "StartReplication",
        Output::StopReplication { .. } => "StopReplication",
        Output::SendStandbyStatus(_) => "SendStandbyStatus",
        Output::Append { .. } => "Append",
        Output::FlushLogs { .. } => "FlushLogs",
        Output::CreateShape { .. } => "CreateShape",
        Output::ShapeExists { .. } => "ShapeExists",
        Output::ShapeRefused { .. } => "ShapeRefused",
        Output::PersistShape { .. } => "PersistShape",
        Output::RemoveShape { .. } => "RemoveShape",
        Output::Fatal { .. } => "Fatal",
    }
}

/// The variant names of `outputs`, in order.
pub(crate) fn kinds(outputs: &[Output]) -> Vec<&'static str> {
    outputs.iter().map(kind).collect()
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
