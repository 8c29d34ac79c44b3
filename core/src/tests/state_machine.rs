//! A `proptest-state-machine` test of the core against a reference model of the world.
//!
//! Goal: deploy-semantics §3 invariants 2 (ack ≤ durable) and 3 (oracle equality), RP-1..RP-5,
//! SN-1..SN-6 and CT-5 under random interleavings of everything the world can do to one
//! instance: commits on three tables (one never shaped; some transactions large), xids left
//! in progress across snapshots and committing later, xids above epoch 0 and across a 32-bit
//! wraparound, keepalives (with and without a reply request, inside a transaction, while the
//! stream lags), flush completions and failures, shapes requested mid-stream whose snapshots
//! begin, end or fail while transactions stream, replication loss (the last status lost in
//! transit or not), reconnects, replication timeouts and crash-restarts (a running flush
//! landing whole, not at all or torn per shape).
//!
//! Method: the reference state ([`World`]) is Postgres: table contents, the WAL of committed
//! transactions (each with the table contents after it), xids in progress and the WAL end,
//! plus the case's fault profile (swarm testing: each fault class off, rare or frequent;
//! fast or slow flushes and delivery) and the shapes that exist before the first commit.
//! Its transitions ([`Event`]) are the world's events; abstract ones (a commit's changes,
//! which xid commits, which snapshot) are resolved against the state when applied, so any
//! shrunk sequence stays valid. The system under test ([`Sut`]) is a real [`Instance`] on
//! the scripted [`Harness`], plus the driver's side of the world: the walsender (the slot's
//! `confirmed_flush_lsn`, what it has sent), running snapshots, and a model of what is
//! durable (shape rows, log entries, the identity) built only from the core's outputs and
//! the faults; a crash restarts a new instance over it. From them and the world, at every
//! status and after every transition:
//!
//! * `ack-after-durable` (a): every standby status `flush` F is ≤ the commit LSN of the first
//!   transaction not yet durable in every shape that routed it (for a shape still
//!   snapshotting: the first transaction on its table since it subscribed), ≤ the WAL end,
//!   and never below an earlier F of the connection;
//! * `oracle-equality` (b): each shape's durable log is a prefix of the log the world
//!   dictates (its snapshot's rows, then every transaction committed after the snapshot
//!   that changes its rows, exactly once, in commit order, at `<commit_lsn>_<2i>` offsets),
//!   and replaying it gives, at every transaction boundary, the table's rows after that
//!   transaction; chunk boundaries follow the byte rule across restarts;
//! * `persist-before-ack` (c): the persisted identity's acked position is ≥ every F sent
//!   and ≥ the slot's position;
//! * no purge, no unexplained shape removal, no `Fatal`, no write while not active, handles
//!   never reissued across crash-restarts, and the core's acked position is the slot's.
//!
//! The harness's own ledger checks every status as well. At the end of a case every fault
//! heals (liveness): the instance must become active, every snapshot finish, every shape
//! catch up with the world exactly and the slot be confirmed at the WAL end.
//!
//! Replay a longer sweep with `PROPTEST_CASES=5000 cargo test -p ampere-core --lib
//! state_machine`; a failure prints the minimal sequence of events.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;
use proptest::strategy::Union;
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};

use super::harness::{
    entries, flushes, items, kinds, offsets, selecting, snapshot, table, whole, wire, Harness,
    Step, Txn, COMMIT_RECORD, START_LSN,
};
use crate::instance::{Config, Input, Instance, Output, RecoveredShape};
use crate::lsn::Lsn;
use crate::offset::LogOffset;
use crate::ports::{LogEntry, RecoveredLog, StandbyStatus, StorageIdentity, StoredShape};
use crate::shape::{HandleStamp, ShapeDefinition, ShapeHandle, TableSchema};
use crate::snapshot::PgSnapshot;
use crate::OpId;

/// Chunks close after about five entries, so boundaries fall inside large transactions.
const CHUNK_BYTES: u64 = 1024;
/// At most this many transactions in progress at once.
const OPEN_MAX: usize = 3;
/// Titles, some needing JSON escapes.
const TITLES: [&str; 6] = ["a", "b", "it's", "q\"uote", "back\\slash", "tab\tü"];

prop_state_machine! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 8192,
        // Failures are pinned as scripted tests below, not as files in the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn core_matches_reference_under_random_faults(sequential 1..200 => CoreUnderFaults);
}

/// `PROPTEST_CASES` for longer sweeps; 256 by default (a few seconds in debug).
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn config() -> Config {
    let mut config = Harness::config();
    config.chunk_bytes_threshold = CHUNK_BYTES;
    config
}

// ---------------------------------------------------------------------------------------
// The reference model: Postgres.
// ---------------------------------------------------------------------------------------

/// `(id, title, n)` as pgoutput's text values.
type Row = Vec<String>;
/// A table's rows by id.
type Rows = BTreeMap<i64, Row>;
/// A shape's rows as its log describes them: key → column → value.
type Projected = BTreeMap<String, BTreeMap<String, String>>;

const COLUMNS: [&str; 3] = ["id", "title", "n"];

/// The three tables, all `(id int4 primary key, title text, n int4)`; no shape is ever on
/// the last one.
fn schema(t: usize) -> TableSchema {
    let columns = &[("id", 23, true), ("title", 25, false), ("n", 23, false)];
    match t {
        0 => items(),
        1 => table(16_390, "notes", columns),
        _ => table(16_391, "audit", columns),
    }
}

/// The shapes a client may ask for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ShapeDef {
    Items,
    Notes,
    /// `items`, columns `id` and `title` only (updates of `n` alone are dropped).
    ItemTitles,
    /// `notes`, columns `id` and `n` only.
    NoteNumbers,
}

impl ShapeDef {
    const ALL: [Self; 4] = [
        Self::Items,
        Self::Notes,
        Self::ItemTitles,
        Self::NoteNumbers,
    ];

    fn table(self) -> usize {
        match self {
            Self::Items | Self::ItemTitles => 0,
            Self::Notes | Self::NoteNumbers => 1,
        }
    }

    fn columns(self) -> &'static [usize] {
        match self {
            Self::Items | Self::Notes => &[0, 1, 2],
            Self::ItemTitles => &[0, 1],
            Self::NoteNumbers => &[0, 2],
        }
    }

    fn definition(self) -> ShapeDefinition {
        match self {
            Self::Items | Self::Notes => whole(&schema(self.table())),
            Self::ItemTitles => selecting(&schema(0), &["id", "title"]),
            Self::NoteNumbers => selecting(&schema(1), &["id", "n"]),
        }
    }

    fn of(definition: &ShapeDefinition) -> Self {
        *Self::ALL
            .iter()
            .find(|d| d.definition() == *definition)
            .expect("only the three definitions are requested")
    }

    /// `rows` as this shape's log must describe them.
    fn project(self, rows: &Rows) -> Projected {
        let name = &schema(self.table()).relation.table;
        rows.iter()
            .map(|(id, row)| {
                let key = format!("\"public\".\"{name}\"/\"{id}\"");
                let values = self
                    .columns()
                    .iter()
                    .map(|&c| (COLUMNS[c].to_owned(), row[c].clone()))
                    .collect();
                (key, values)
            })
            .collect()
    }

    /// The offsets `txn` must add to this shape's log (json.rs: a key change is a delete
    /// and an insert; an update changing no selected column adds nothing).
    fn offsets(self, txn: &WalTxn) -> Vec<LogOffset> {
        let mut out = Vec::new();
        for (i, change) in txn.changes.iter().enumerate() {
            if change.table != self.table() {
                continue;
            }
            let op = 2 * i as u64;
            match (&change.old, &change.new) {
                (Some(old), Some(new)) if old[0] != new[0] => {
                    out.push(LogOffset::change(txn.commit_lsn, op));
                    out.push(LogOffset::change(txn.commit_lsn, op + 1));
                }
                (Some(old), Some(new)) => {
                    if self.columns().iter().any(|&c| old[c] != new[c]) {
                        out.push(LogOffset::change(txn.commit_lsn, op));
                    }
                }
                _ => out.push(LogOffset::change(txn.commit_lsn, op)),
            }
        }
        out
    }
}

/// One row change: insert (`new` only), update (both, full old row), delete (`old` only).
#[derive(Clone, Debug)]
struct Change {
    table: usize,
    old: Option<Row>,
    new: Option<Row>,
}

fn strs(row: &Row) -> Vec<&str> {
    row.iter().map(String::as_str).collect()
}

/// A committed transaction as the WAL holds it.
#[derive(Clone, Debug)]
struct WalTxn {
    xid: u64,
    commit_lsn: Lsn,
    changes: Vec<Change>,
    /// Every table's rows after this transaction.
    after: Vec<Rows>,
}

impl WalTxn {
    fn touches(&self, table: usize) -> bool {
        self.changes.iter().any(|c| c.table == table)
    }

    /// The 32-bit xid pgoutput carries.
    fn xid32(&self) -> u32 {
        // Truncation is the point: `Begin` carries the low 32 bits (SN-5).
        #[allow(clippy::cast_possible_truncation)]
        let xid = self.xid as u32;
        xid
    }

    /// As the harness scripts it.
    fn scripted(&self) -> Txn {
        let mut txn = Txn::new(self.xid32(), self.commit_lsn.0);
        for c in &self.changes {
            let t = schema(c.table);
            txn = match (&c.old, &c.new) {
                (None, Some(new)) => txn.insert(&t, &strs(new)),
                (Some(old), Some(new)) => txn.update(&t, &strs(old), &strs(new)),
                (Some(old), None) => txn.delete(&t, &strs(old)),
                (None, None) => unreachable!("a change has a row"),
            };
        }
        txn
    }

    /// Its pgoutput messages: `Begin`, per change its table's `Relation` and the change,
    /// `Commit`.
    fn messages(&self) -> Vec<Vec<u8>> {
        let mut out = vec![wire::begin(self.commit_lsn, self.xid32())];
        for c in &self.changes {
            let t = schema(c.table);
            out.push(wire::relation(&t));
            out.push(match (&c.old, &c.new) {
                (None, Some(new)) => wire::insert(&t, new),
                (Some(old), Some(new)) => wire::update(&t, Some(old), new),
                (Some(old), None) => wire::delete(&t, old),
                (None, None) => unreachable!("a change has a row"),
            });
        }
        out.push(wire::commit(self.commit_lsn, self.end()));
        out
    }

    fn end(&self) -> Lsn {
        Lsn(self.commit_lsn.0 + COMMIT_RECORD)
    }
}

/// Which fault classes a case uses (swarm testing: many cases switch some off, so a fault
/// can repeat without the others interfering).
#[derive(Clone, Copy, Debug)]
struct Profile {
    /// Weights of the fault events (0: off).
    crashes: u32,
    flush_failures: u32,
    losses: u32,
    snapshot_failures: u32,
    /// Weights of flush completions and deliveries: low means long flushes, a lagging
    /// stream.
    flush_speed: u32,
    delivery: u32,
}

/// The reference state: Postgres.
#[derive(Clone, Debug)]
struct World {
    profile: Profile,
    /// Shapes clients asked for before the first transaction (snapshotted at once).
    initial_shapes: Vec<ShapeDef>,
    tables: Vec<Rows>,
    next_id: i64,
    /// The next xid to assign (64 bits; the low 32 bits skip 0..=2 as Postgres does).
    next_xid: u64,
    /// Xids in progress, in assignment order.
    open: Vec<u64>,
    wal: Vec<WalTxn>,
    /// The end of WAL written so far: the next commit record starts at or after it.
    wal_end: Lsn,
}

impl World {
    fn new(first_xid: u64, profile: Profile, initial_shapes: Vec<ShapeDef>) -> Self {
        Self {
            profile,
            initial_shapes,
            tables: vec![Rows::new(); 3],
            next_id: 1,
            next_xid: first_xid,
            open: Vec::new(),
            wal: Vec::new(),
            wal_end: START_LSN,
        }
    }

    fn assign_xid(&mut self) -> u64 {
        let xid = self.next_xid;
        self.next_xid += 1;
        if (self.next_xid & 0xFFFF_FFFF) < 3 {
            self.next_xid = (self.next_xid & !0xFFFF_FFFF) + 3;
        }
        xid
    }

    /// `pg_current_snapshot()` now.
    fn snapshot(&self) -> PgSnapshot {
        let xmax = self.next_xid;
        let xmin = self.open.iter().copied().min().unwrap_or(xmax);
        let mut xip = self.open.clone();
        xip.sort_unstable();
        let xip: Vec<String> = xip.iter().map(u64::to_string).collect();
        let text = format!("{xmin}:{xmax}:{}", xip.join(","));
        PgSnapshot::parse(&text).expect("a well-formed snapshot")
    }

    fn commit(&mut self, open: Option<u8>, gap: u16, specs: &[ChangeSpec]) {
        let xid = match open {
            Some(i) if !self.open.is_empty() => self.open.remove(usize::from(i) % self.open.len()),
            _ => self.assign_xid(),
        };
        let changes = specs.iter().map(|s| self.resolve(s)).collect();
        let commit_lsn = Lsn(self.wal_end.0 + 8 * u64::from(gap));
        let txn = WalTxn {
            xid,
            commit_lsn,
            changes,
            after: self.tables.clone(),
        };
        self.wal_end = txn.end();
        self.wal.push(txn);
    }

    /// Applies one abstract change to the tables; returns it concretely.
    fn resolve(&mut self, spec: &ChangeSpec) -> Change {
        let table = usize::from(spec.table);
        let rows = &mut self.tables[table];
        let picked = (!rows.is_empty()).then(|| {
            *rows
                .keys()
                .nth(usize::from(spec.pick) % rows.len())
                .expect("in range")
        });
        let fresh = |id: i64| {
            let title = TITLES[usize::from(spec.title) % TITLES.len()];
            vec![id.to_string(), title.to_owned(), (spec.n % 4).to_string()]
        };
        let (old, new) = match (spec.kind, picked) {
            (Kind::Insert, _) | (_, None) => {
                let id = self.next_id;
                self.next_id += 1;
                (None, Some(fresh(id)))
            }
            (Kind::Update, Some(id)) => (rows.remove(&id), Some(fresh(id))),
            (Kind::UpdateKey, Some(id)) => {
                let new_id = self.next_id;
                self.next_id += 1;
                (rows.remove(&id), Some(fresh(new_id)))
            }
            (Kind::Delete, Some(id)) => (rows.remove(&id), None),
        };
        if let Some(new) = &new {
            let id = new[0].parse().expect("numeric id");
            self.tables[table].insert(id, new.clone());
        }
        Change { table, old, new }
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Insert,
    Update,
    /// An update of the primary key.
    UpdateKey,
    Delete,
}

/// A change before it meets the tables: which table, what, which existing row (`pick`
/// modulo the row count; an insert when the table is empty) and the new values.
#[derive(Clone, Debug)]
struct ChangeSpec {
    table: u8,
    kind: Kind,
    pick: u8,
    title: u8,
    n: u8,
}

/// The world's events.
#[derive(Clone, Debug)]
enum Event {
    /// A transaction starts (its xid is in progress until it commits).
    Begin,
    /// A transaction commits: one in progress (`open`, modulo their count) or a new one;
    /// its commit record starts `8 * gap` bytes after the WAL end.
    Commit {
        open: Option<u8>,
        gap: u16,
        changes: Vec<ChangeSpec>,
    },
    /// WAL that touches no published table (e.g. a provider's heartbeat), then a keepalive.
    Keepalive { growth: u16, reply_requested: bool },
    /// The walsender sends up to `count` transactions.
    Deliver { count: u8 },
    /// The walsender sends the first messages of the next transaction (not its `Commit`).
    DeliverPart { messages: u8 },
    /// Time passes (status timers, backoff, the replication timeout).
    Advance { secs: u8 },
    /// The oldest `FlushLogs` completes.
    CompleteFlush,
    /// The oldest `FlushLogs` fails.
    FailFlush,
    /// A client asks for a shape.
    RequestShape(ShapeDef),
    /// The transaction of a snapshot (`pick` modulo those not begun) begins: Postgres
    /// records `pg_current_snapshot()`, and the rows it sees are those committed now.
    SnapshotBegins { pick: u8 },
    /// A begun snapshot's rows are durable: the driver reports `SnapshotTaken`.
    SnapshotEnds { pick: u8 },
    /// A running snapshot fails.
    FailSnapshot { pick: u8 },
    /// The replication connection breaks, the last standby status lost in transit or not.
    LoseReplication { status_lost: bool },
    /// The driver walks as far through the connection setup as it can.
    Reconnect,
    /// The process dies (power loss): a running flush lands a prefix of each shape's part
    /// (chosen by `torn`), everything else unflushed is lost; it restarts over storage.
    Crash { torn: u32, status_lost: bool },
}

fn change_spec() -> impl Strategy<Value = ChangeSpec> {
    let table = prop_oneof![5 => Just(0u8), 3 => Just(1u8), 2 => Just(2u8)];
    let kind = prop_oneof![
        4 => Just(Kind::Insert),
        3 => Just(Kind::Update),
        1 => Just(Kind::UpdateKey),
        2 => Just(Kind::Delete),
    ];
    (table, kind, any::<u8>(), any::<u8>(), any::<u8>()).prop_map(
        |(table, kind, pick, title, n)| ChangeSpec {
            table,
            kind,
            pick,
            title,
            n,
        },
    )
}

/// A commit: mostly a few changes, sometimes a large transaction.
fn commit() -> impl Strategy<Value = Event> {
    let changes = prop_oneof![
        9 => prop::collection::vec(change_spec(), 1..5),
        1 => prop::collection::vec(change_spec(), 15..40),
    ];
    (prop::option::of(any::<u8>()), 0..64u16, changes)
        .prop_map(|(open, gap, changes)| Event::Commit { open, gap, changes })
}

/// A keepalive, after no WAL growth (a commit may start exactly at its `wal_end`) or some.
fn keepalive() -> impl Strategy<Value = Event> {
    (prop_oneof![Just(0u16), 1..512u16], any::<bool>()).prop_map(|(growth, reply_requested)| {
        Event::Keepalive {
            growth,
            reply_requested,
        }
    })
}

/// The reference state machine.
struct Postgres;

impl ReferenceStateMachine for Postgres {
    type State = World;
    type Transition = Event;

    fn init_state() -> BoxedStrategy<World> {
        let first_xid = prop_oneof![
            Just(700u64),
            Just((1u64 << 32) + 700),
            // Crosses a wraparound of the 32-bit xid into epoch 3 within a few commits.
            Just((3u64 << 32) - 6),
        ];
        let fault = || prop::sample::select(vec![0u32, 1, 1, 3]);
        let speed = || prop::sample::select(vec![3u32, 10, 14]);
        let profile = (fault(), fault(), fault(), fault(), speed(), speed()).prop_map(
            |(crashes, flush_failures, losses, snapshot_failures, flush_speed, delivery)| Profile {
                crashes,
                flush_failures,
                losses,
                snapshot_failures,
                flush_speed,
                delivery,
            },
        );
        let initial = prop::sample::subsequence(ShapeDef::ALL.to_vec(), 0..=2);
        (first_xid, profile, initial)
            .prop_map(|(xid, profile, initial)| World::new(xid, profile, initial))
            .boxed()
    }

    fn transitions(world: &World) -> BoxedStrategy<Event> {
        let p = world.profile;
        let pick = || any::<u8>();
        let lost = || any::<bool>();
        let arms: Vec<(u32, BoxedStrategy<Event>)> = vec![
            (3, Just(Event::Begin).boxed()),
            (18, commit().boxed()),
            (6, keepalive().boxed()),
            (
                p.delivery,
                (1..4u8).prop_map(|count| Event::Deliver { count }).boxed(),
            ),
            (
                3,
                (1..6u8)
                    .prop_map(|messages| Event::DeliverPart { messages })
                    .boxed(),
            ),
            (
                4,
                (1..16u8).prop_map(|secs| Event::Advance { secs }).boxed(),
            ),
            (p.flush_speed, Just(Event::CompleteFlush).boxed()),
            (p.flush_failures, Just(Event::FailFlush).boxed()),
            (
                4,
                prop::sample::select(ShapeDef::ALL.to_vec())
                    .prop_map(Event::RequestShape)
                    .boxed(),
            ),
            (
                4,
                pick()
                    .prop_map(|pick| Event::SnapshotBegins { pick })
                    .boxed(),
            ),
            (
                4,
                pick().prop_map(|pick| Event::SnapshotEnds { pick }).boxed(),
            ),
            (
                p.snapshot_failures,
                pick().prop_map(|pick| Event::FailSnapshot { pick }).boxed(),
            ),
            (
                p.losses,
                lost()
                    .prop_map(|status_lost| Event::LoseReplication { status_lost })
                    .boxed(),
            ),
            (8, Just(Event::Reconnect).boxed()),
            (
                p.crashes,
                (any::<u32>(), lost())
                    .prop_map(|(torn, status_lost)| Event::Crash { torn, status_lost })
                    .boxed(),
            ),
        ];
        let arms: Vec<_> = arms.into_iter().filter(|(w, _)| *w > 0).collect();
        Union::new_weighted(arms).boxed()
    }

    fn apply(mut world: World, event: &Event) -> World {
        match event {
            Event::Begin => {
                if world.open.len() < OPEN_MAX {
                    let xid = world.assign_xid();
                    world.open.push(xid);
                }
            }
            Event::Commit { open, gap, changes } => world.commit(*open, *gap, changes),
            Event::Keepalive { growth, .. } => world.wal_end.0 += 8 * u64::from(*growth),
            Event::Deliver { .. }
            | Event::DeliverPart { .. }
            | Event::Advance { .. }
            | Event::CompleteFlush
            | Event::FailFlush
            | Event::RequestShape(_)
            | Event::SnapshotBegins { .. }
            | Event::SnapshotEnds { .. }
            | Event::FailSnapshot { .. }
            | Event::LoseReplication { .. }
            | Event::Reconnect
            | Event::Crash { .. } => {}
        }
        world
    }
}

// ---------------------------------------------------------------------------------------
// The system under test: the core on the harness, and the driver's side of the world.
// ---------------------------------------------------------------------------------------

/// What storage holds, as the core's outputs and the faults left it.
#[derive(Debug, Default)]
struct Disk {
    rows: BTreeMap<ShapeHandle, StoredShape>,
    durable: BTreeMap<ShapeHandle, Vec<LogEntry>>,
    /// Buffered entries with the sequence number of their `Append`.
    pending: Vec<(u64, ShapeHandle, LogEntry)>,
    appends: u64,
    /// Issued, unanswered flushes and the number of appends each covers.
    flushes: Vec<(OpId, u64)>,
    identity: Option<StorageIdentity>,
    stamp: HandleStamp,
}

impl Disk {
    /// Everything appended before flush `op` is durable.
    fn flushed(&mut self, op: OpId) {
        let i = self.flushes.iter().position(|(o, _)| *o == op);
        let (_, covers) = self
            .flushes
            .remove(i.expect("a flush the disk model knows"));
        for (seq, handle, entry) in std::mem::take(&mut self.pending) {
            if seq < covers {
                self.durable.entry(handle).or_default().push(entry);
            } else {
                self.pending.push((seq, handle, entry));
            }
        }
    }

    /// A failed flush made nothing durable: every buffered entry is lost.
    fn flush_failed(&mut self, op: OpId) {
        self.flushes.retain(|(o, _)| *o != op);
        self.pending.clear();
    }

    /// Replication stopped: appends no running flush covers are never written (LK-6).
    fn stopped(&mut self) {
        let covered = self.flushes.iter().map(|(_, c)| *c).max().unwrap_or(0);
        self.pending.retain(|(seq, _, _)| *seq < covered);
    }

    /// Power loss: of the entries a running flush covers, each shape keeps a prefix (a
    /// torn tail is truncated at a record); nothing else buffered survives.
    fn crash(&mut self, torn: u32) {
        let covered = self.flushes.iter().map(|(_, c)| *c).max().unwrap_or(0);
        let mut counts: BTreeMap<ShapeHandle, usize> = BTreeMap::new();
        for (seq, handle, _) in &self.pending {
            if *seq < covered {
                *counts.entry(handle.clone()).or_default() += 1;
            }
        }
        let keep: BTreeMap<ShapeHandle, usize> = counts
            .into_iter()
            .enumerate()
            .map(|(k, (handle, n))| {
                let selector = (torn >> ((4 * k) % 32)) & 0xF;
                // All, nothing, or a torn prefix.
                let kept = match selector % 3 {
                    0 => n,
                    1 => 0,
                    _ if n < 2 => n,
                    _ => 1 + (selector as usize / 3) % (n - 1),
                };
                (handle, kept)
            })
            .collect();
        let mut seen: BTreeMap<ShapeHandle, usize> = BTreeMap::new();
        let pending = std::mem::take(&mut self.pending);
        for (seq, handle, entry) in pending {
            let n = seen.entry(handle.clone()).or_default();
            *n += 1;
            if seq < covered && *n <= keep.get(&handle).copied().unwrap_or(0) {
                self.durable.entry(handle).or_default().push(entry);
            }
        }
        self.flushes.clear();
    }

    /// What a restarted process recovers (harness `Storage::loaded` computes the same).
    fn recovered(&self) -> Vec<RecoveredShape> {
        self.rows
            .values()
            .map(|row| {
                let mut log = RecoveredLog {
                    latest: LogOffset::SNAPSHOT_END,
                    open_chunk_bytes: 0,
                };
                for e in self.durable.get(&row.handle).into_iter().flatten() {
                    log.latest = e.offset;
                    log.open_chunk_bytes = if e.chunk_end {
                        0
                    } else {
                        log.open_chunk_bytes + e.json.len() as u64 + 1
                    };
                }
                RecoveredShape {
                    stored: row.clone(),
                    log,
                }
            })
            .collect()
    }
}

/// The scripted walsender of the current connection and the slot.
#[derive(Debug)]
struct Walsender {
    streaming: bool,
    /// WAL index of the next transaction whose `Commit` was not sent.
    cursor: usize,
    /// How many messages of `wal[cursor]` were sent (`DeliverPart`).
    sent_of_next: usize,
    /// The slot's `confirmed_flush_lsn`: the highest `flush` Postgres received.
    confirmed_flush_lsn: Lsn,
    /// The slot's position before the last status of this connection.
    before_last_status: Lsn,
    /// The last `flush` sent on this connection (its start position at first).
    last_flush: Lsn,
}

impl Walsender {
    /// Postgres received a status.
    fn received(&mut self, flush: Lsn) {
        self.before_last_status = self.confirmed_flush_lsn;
        self.confirmed_flush_lsn = self.confirmed_flush_lsn.max(flush);
        self.last_flush = flush;
    }

    /// The connection breaks; if `status_lost`, its last status never reached Postgres.
    fn lose_last_status(&mut self, status_lost: bool) {
        if status_lost {
            self.confirmed_flush_lsn = self.before_last_status;
        }
    }
}

/// What the world dictates for one shape the core created.
#[derive(Debug)]
struct Tracked {
    def: ShapeDef,
    /// WAL index of the first transaction routed to it (its subscription).
    subscribed_at: usize,
    snapshot: Option<Snap>,
    /// `Some(reason)`: the core must remove it, for this reason.
    doomed: Option<&'static str>,
}

/// A snapshot the driver runs for a `CreateShape`.
#[derive(Debug)]
struct Running {
    op: OpId,
    handle: ShapeHandle,
    def: ShapeDef,
    /// `pg_current_snapshot()` and what it saw, once its transaction began.
    begun: Option<(PgSnapshot, Snap)>,
}

/// A completed snapshot: the WAL length when it was taken and the rows it saw.
#[derive(Clone, Debug)]
struct Snap {
    at: usize,
    rows: Projected,
}

/// How far a shape's durable log has been checked against the world.
#[derive(Debug)]
struct Verified {
    /// Durable entries checked.
    entries: usize,
    /// WAL index of the transaction being matched, and its entries matched so far.
    wal: usize,
    in_txn: usize,
    rows: Projected,
    open_chunk_bytes: u64,
}

/// The system under test.
struct Sut {
    h: Harness,
    disk: Disk,
    pg: Walsender,
    shapes: BTreeMap<ShapeHandle, Tracked>,
    /// Snapshots running (`CreateShape` issued, not answered), stale ones included.
    snapshots: Vec<Running>,
    /// Every handle ever created, across restarts (ID-2).
    issued: BTreeSet<ShapeHandle>,
    /// The snapshot being answered now, recorded once the core accepts it.
    taking: Option<(ShapeHandle, Snap)>,
    verified: RefCell<BTreeMap<ShapeHandle, Verified>>,
}

impl Sut {
    fn new(world: &World) -> Self {
        let h = Harness::with_storage(config(), Vec::new(), HandleStamp::default(), None);
        let mut sut = Self {
            h,
            disk: Disk::default(),
            pg: Walsender {
                streaming: false,
                cursor: 0,
                sent_of_next: 0,
                confirmed_flush_lsn: START_LSN,
                before_last_status: START_LSN,
                last_flush: START_LSN,
            },
            shapes: BTreeMap::new(),
            snapshots: Vec::new(),
            issued: BTreeSet::new(),
            taking: None,
            verified: RefCell::new(BTreeMap::new()),
        };
        sut.absorb(world);
        sut.reconnect(world);
        for def in &world.initial_shapes {
            sut.h.request(def.definition(), &schema(def.table()));
            sut.absorb(world);
            sut.begin_snapshot(world, 0);
            sut.end_snapshot(world, 0);
        }
        sut
    }

    fn core(&self) -> &Instance {
        self.h.core()
    }

    fn apply(&mut self, world: &World, event: Event) {
        match event {
            // Postgres-only events: the core learns of them through the stream.
            Event::Begin | Event::Commit { .. } => {}
            Event::Keepalive {
                reply_requested, ..
            } => self.keepalive(world, reply_requested),
            Event::Deliver { count } => self.deliver(world, usize::from(count)),
            Event::DeliverPart { messages } => self.deliver_part(world, usize::from(messages)),
            Event::Advance { secs } => {
                self.h.advance(Duration::from_secs(u64::from(secs)));
                self.absorb(world);
            }
            Event::CompleteFlush => self.complete_flush(world),
            Event::FailFlush => {
                if let Some(op) = self.h.pending_flush() {
                    self.disk.flush_failed(op);
                    self.h.fail_flush();
                    self.absorb(world);
                }
            }
            Event::RequestShape(def) => {
                self.h.request(def.definition(), &schema(def.table()));
                self.absorb(world);
            }
            Event::SnapshotBegins { pick } => self.begin_snapshot(world, pick),
            Event::SnapshotEnds { pick } => self.end_snapshot(world, pick),
            Event::FailSnapshot { pick } => self.fail_snapshot(world, pick),
            Event::LoseReplication { status_lost } => {
                if self.pg.streaming {
                    self.pg.lose_last_status(status_lost);
                    self.h.lose_replication();
                    self.absorb(world);
                }
            }
            Event::Reconnect => self.reconnect(world),
            Event::Crash { torn, status_lost } => {
                self.pg.lose_last_status(status_lost);
                self.crash(world, torn);
            }
        }
    }

    fn complete_flush(&mut self, world: &World) {
        if let Some(op) = self.h.pending_flush() {
            self.disk.flushed(op);
            self.h.complete_flush();
            self.absorb(world);
        }
    }

    /// The driver walks the connection setup as far as the core lets it: backoff, connect,
    /// lock, load storage (after any flush from before the disconnect), start streaming
    /// from the slot's `confirmed_flush_lsn`.
    fn reconnect(&mut self, world: &World) {
        if self.core().is_active() {
            return;
        }
        let steps = [Step::Connect, Step::Lock, Step::Load, Step::Stream];
        for _ in 0..20 {
            if steps.iter().any(|s| self.h.awaiting(*s).is_some()) {
                break;
            }
            self.h.advance(Duration::from_secs(1));
            self.absorb(world);
        }
        if self.h.awaiting(Step::Connect).is_some() {
            self.h.connect();
            self.absorb(world);
        }
        if self.h.awaiting(Step::Lock).is_some() {
            self.h.lock(true);
            self.absorb(world);
        }
        if self.h.awaiting(Step::Load).is_some() {
            self.h.load_storage();
            self.absorb(world);
        }
        if self.h.awaiting(Step::Stream).is_some() {
            // Postgres re-sends every transaction whose commit LSN is ≥ the position.
            let start = self.pg.confirmed_flush_lsn;
            self.pg.streaming = true;
            self.pg.before_last_status = start;
            self.pg.last_flush = start;
            self.pg.cursor = world.wal.partition_point(|t| t.commit_lsn < start);
            self.pg.sent_of_next = 0;
            self.h.start_streaming(start, false);
            self.absorb(world);
        }
    }

    fn deliver(&mut self, world: &World, count: usize) {
        for _ in 0..count {
            if !self.pg.streaming || self.pg.cursor >= world.wal.len() {
                return;
            }
            let txn = &world.wal[self.pg.cursor];
            if self.pg.sent_of_next == 0 {
                self.h.commit(&txn.scripted());
            } else {
                for m in txn.messages().into_iter().skip(self.pg.sent_of_next) {
                    self.h.xlog(txn.end(), m);
                }
            }
            self.pg.cursor += 1;
            self.pg.sent_of_next = 0;
            self.absorb(world);
        }
    }

    fn deliver_part(&mut self, world: &World, messages: usize) {
        if !self.pg.streaming || self.pg.cursor >= world.wal.len() {
            return;
        }
        let txn = &world.wal[self.pg.cursor];
        let all = txn.messages();
        let upto = (self.pg.sent_of_next + messages).min(all.len() - 1);
        for m in all.into_iter().take(upto).skip(self.pg.sent_of_next) {
            self.h.xlog(txn.end(), m);
        }
        self.pg.sent_of_next = upto;
        self.absorb(world);
    }

    /// A keepalive carries how far the walsender has read WAL: inside a transaction, past
    /// its commit record; lagging, up to the next commit record; caught up, the WAL end.
    fn keepalive(&mut self, world: &World, reply_requested: bool) {
        if !self.pg.streaming {
            return;
        }
        let wal_end = match world.wal.get(self.pg.cursor) {
            Some(txn) if self.pg.sent_of_next > 0 => txn.end(),
            Some(txn) => txn.commit_lsn,
            None => world.wal_end,
        };
        self.h.keepalive(wal_end, reply_requested);
        self.absorb(world);
    }

    fn begin_snapshot(&mut self, world: &World, pick: u8) {
        let mut waiting: Vec<&mut Running> = self
            .snapshots
            .iter_mut()
            .filter(|r| r.begun.is_none())
            .collect();
        if waiting.is_empty() {
            return;
        }
        let n = waiting.len();
        let r = &mut waiting[usize::from(pick) % n];
        let snap = Snap {
            at: world.wal.len(),
            rows: r.def.project(&world.tables[r.def.table()]),
        };
        r.begun = Some((world.snapshot(), snap));
    }

    fn end_snapshot(&mut self, world: &World, pick: u8) {
        let begun: Vec<usize> = (0..self.snapshots.len())
            .filter(|i| self.snapshots[*i].begun.is_some())
            .collect();
        if begun.is_empty() {
            return;
        }
        let r = self
            .snapshots
            .remove(begun[usize::from(pick) % begun.len()]);
        let (snapshot, snap) = r.begun.expect("begun");
        self.taking = Some((r.handle, snap));
        self.h.snapshot_taken(r.op, snapshot);
        self.absorb(world);
        self.taking = None;
    }

    fn fail_snapshot(&mut self, world: &World, pick: u8) {
        if self.snapshots.is_empty() {
            return;
        }
        let r = self
            .snapshots
            .remove(usize::from(pick) % self.snapshots.len());
        if let Some(t) = self.shapes.get_mut(&r.handle) {
            t.doomed.get_or_insert("snapshot failed");
        }
        self.h.input(Input::SnapshotFailed {
            op: r.op,
            refusal: None,
        });
        self.absorb(world);
    }

    fn crash(&mut self, world: &World, torn: u32) {
        self.check_audit();
        self.disk.crash(torn);
        self.lost_connection();
        self.snapshots.clear();
        let recovered = self.disk.recovered();
        let identity = self.disk.identity.clone();
        self.h = Harness::with_storage(config(), recovered, self.disk.stamp, identity);
        self.absorb(world);
    }

    /// The connection is gone: the walsender stops, and shapes still snapshotting will be
    /// discarded by the next lock holder (SN-6).
    fn lost_connection(&mut self) {
        self.pg.streaming = false;
        self.pg.sent_of_next = 0;
        for t in self.shapes.values_mut() {
            if t.snapshot.is_none() {
                t.doomed.get_or_insert("snapshot did not complete");
            }
        }
    }

    fn check_audit(&self) {
        assert!(
            self.h.writes_outside_active().is_empty(),
            "correctness: write while not active: {:?}",
            self.h.writes_outside_active()
        );
    }
}

/// Following the core's outputs.
impl Sut {
    /// Executes the outputs since the last call on the model, checking each.
    fn absorb(&mut self, world: &World) {
        for output in self.h.take() {
            match output {
                Output::StopReplication { .. } => {
                    self.disk.stopped();
                    self.lost_connection();
                }
                Output::Fatal { message } => panic!("correctness: unexpected Fatal: {message}"),
                Output::Purged { reason } => {
                    panic!("correctness: purge without a continuity break: {reason}")
                }
                Output::PersistIdentity { identity } => self.disk.identity = Some(identity),
                Output::SendStandbyStatus(status) => self.check_status(world, status),
                Output::Append { handle, entries } => {
                    assert!(
                        self.disk.rows.contains_key(&handle),
                        "correctness: append to {handle}, not in storage"
                    );
                    let seq = self.disk.appends;
                    self.disk.appends += 1;
                    let entries = entries.into_iter().map(|e| (seq, handle.clone(), e));
                    self.disk.pending.extend(entries);
                }
                Output::FlushLogs { op } => self.disk.flushes.push((op, self.disk.appends)),
                Output::CreateShape {
                    op, shape, stamp, ..
                } => self.created(op, shape, stamp),
                Output::PersistShape { shape } => self.persisted(shape),
                Output::RemoveShape { handle, reason } => self.removed(&handle, reason),
                Output::ConnectReplication { .. }
                | Output::TryLock { .. }
                | Output::FindStaleLockHolders { .. }
                | Output::TerminateBackend { .. }
                | Output::LoadStorage { .. }
                | Output::StartStreaming { .. }
                | Output::RefreshReadModel
                | Output::ShapeExists { .. }
                | Output::ShapeRefused { .. }
                | Output::ShapeDenied { .. }
                | Output::RefuseShape { .. }
                | Output::AnswerDeletion { .. }
                | Output::CheckRelations { .. } => {}
            }
        }
    }

    fn created(&mut self, op: OpId, shape: StoredShape, stamp: HandleStamp) {
        let handle = shape.handle.clone();
        assert!(
            self.issued.insert(handle.clone()),
            "correctness: handles-never-reissued: {handle}"
        );
        self.disk.stamp = stamp;
        let tracked_def = ShapeDef::of(&shape.definition);
        let tracked = Tracked {
            def: tracked_def,
            subscribed_at: self.pg.cursor,
            snapshot: None,
            doomed: None,
        };
        self.shapes.insert(handle.clone(), tracked);
        self.snapshots.push(Running {
            op,
            handle: handle.clone(),
            def: tracked_def,
            begun: None,
        });
        self.disk.rows.insert(handle, shape);
    }

    fn persisted(&mut self, shape: StoredShape) {
        let handle = shape.handle.clone();
        let accepted = shape.snapshot.is_some() && !shape.snapshot_filter_done;
        if let Some((taking, snap)) = self.taking.take() {
            if accepted && taking == handle {
                let t = self.shapes.get_mut(&handle).expect("a tracked shape");
                assert!(t.snapshot.is_none(), "correctness: snapshot recorded twice");
                t.snapshot = Some(snap);
            } else {
                self.taking = Some((taking, snap));
            }
        }
        let row = self.disk.rows.get_mut(&handle);
        *row.unwrap_or_else(|| panic!("correctness: PersistShape of {handle}, not stored")) = shape;
    }

    fn removed(&mut self, handle: &ShapeHandle, reason: &'static str) {
        let t = self.shapes.remove(handle);
        let expected = t.as_ref().and_then(|t| t.doomed);
        assert_eq!(
            expected,
            Some(reason),
            "correctness: {handle} removed for no cause the world gave ({reason})"
        );
        self.disk.rows.remove(handle);
        self.disk.durable.remove(handle);
        self.disk.pending.retain(|(_, h, _)| h != handle);
        self.verified.borrow_mut().remove(handle);
    }

    /// (a) `ack-after-durable`, (c) `persist-before-ack`, `ack-monotonic`.
    fn check_status(&mut self, world: &World, status: StandbyStatus) {
        let flush = status.flush;
        let last = self.pg.last_flush;
        assert!(
            flush >= last,
            "correctness: ack-monotonic: flush={flush} after {last}"
        );
        assert!(
            flush <= world.wal_end,
            "correctness: ack-received: flush={flush} beyond the WAL end {}",
            world.wal_end
        );
        let acked = self.disk.identity.as_ref().map(|i| i.acked);
        assert!(
            acked.is_some_and(|a| flush <= a),
            "correctness: persist-before-ack: flush={flush} but storage has acked={acked:?}"
        );
        for (handle, t) in &self.shapes {
            if t.doomed.is_some() {
                continue;
            }
            if let Some((lsn, why)) = self.first_not_durable(world, handle, t) {
                assert!(
                    flush <= lsn,
                    "correctness: ack-after-durable: flush={flush} but commit {lsn} is not \
                     durable in {handle} ({why})"
                );
            }
        }
        self.pg.received(flush);
    }

    /// The commit LSN of the first transaction `handle` still owes, if any.
    fn first_not_durable(
        &self,
        world: &World,
        handle: &ShapeHandle,
        t: &Tracked,
    ) -> Option<(Lsn, &'static str)> {
        let table = t.def.table();
        let Some(snap) = &t.snapshot else {
            let held = world.wal[t.subscribed_at.min(world.wal.len())..]
                .iter()
                .find(|txn| txn.touches(table));
            return held.map(|txn| (txn.commit_lsn, "held by the running snapshot"));
        };
        self.verify(world, handle, t.def, snap);
        let verified = self.verified.borrow();
        let v = verified.get(handle).expect("verified just now");
        world.wal[v.wal..]
            .iter()
            .find(|txn| !t.def.offsets(txn).is_empty())
            .map(|txn| (txn.commit_lsn, "its entries are not all durable"))
    }
}

/// (b) `oracle-equality`.
impl Sut {
    fn check_logs(&self, world: &World) {
        for (handle, t) in &self.shapes {
            if let Some(snap) = &t.snapshot {
                self.verify(world, handle, t.def, snap);
            }
        }
    }

    /// Matches the durable entries not checked yet against the log the world dictates.
    fn verify(&self, world: &World, handle: &ShapeHandle, def: ShapeDef, snap: &Snap) {
        let mut verified = self.verified.borrow_mut();
        let v = verified.entry(handle.clone()).or_insert_with(|| Verified {
            entries: 0,
            wal: snap.at,
            in_txn: 0,
            rows: snap.rows.clone(),
            open_chunk_bytes: 0,
        });
        let durable = self.disk.durable.get(handle).map_or(&[][..], Vec::as_slice);
        while v.entries < durable.len() {
            let entry = &durable[v.entries];
            let expected = loop {
                let Some(txn) = world.wal.get(v.wal) else {
                    panic!(
                        "correctness: oracle-equality: {handle} holds {} but the world \
                         dictates nothing after {} (a duplicate or phantom entry)",
                        entry.offset, v.wal
                    );
                };
                let offsets = def.offsets(txn);
                if !offsets.is_empty() {
                    break offsets;
                }
                v.wal += 1;
            };
            assert_eq!(
                entry.offset, expected[v.in_txn],
                "correctness: oracle-equality: {handle} entry {} (expected offsets {:?})",
                v.entries, expected
            );
            replay(&mut v.rows, &entry.json, handle);
            v.open_chunk_bytes += entry.json.len() as u64 + 1;
            let chunk_end = v.open_chunk_bytes >= CHUNK_BYTES;
            assert_eq!(
                entry.chunk_end, chunk_end,
                "correctness: chunk boundaries: {handle} entry {}",
                entry.offset
            );
            if chunk_end {
                v.open_chunk_bytes = 0;
            }
            v.entries += 1;
            v.in_txn += 1;
            if v.in_txn == expected.len() {
                let txn = &world.wal[v.wal];
                let want = def.project(&txn.after[def.table()]);
                assert!(
                    v.rows == want,
                    "correctness: oracle-equality: {handle} after commit {}: log gives \
                     {:?}, table holds {want:?}",
                    txn.commit_lsn,
                    v.rows
                );
                v.wal += 1;
                v.in_txn = 0;
            }
        }
    }
}

/// Applies one log entry to `rows`: insert a new key, merge an update, remove a delete.
fn replay(rows: &mut Projected, json: &str, handle: &ShapeHandle) {
    let entry = Json::parse(json);
    let key = entry.get("key").and_then(Json::as_str).expect("a key");
    let operation = entry
        .get("headers")
        .and_then(|h| h.get("operation"))
        .and_then(Json::as_str)
        .expect("an operation");
    let value: BTreeMap<String, String> = match entry.get("value") {
        Some(Json::Obj(fields)) => fields
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().expect("text values").to_owned()))
            .collect(),
        _ => BTreeMap::new(),
    };
    match operation {
        "insert" => {
            let before = rows.insert(key.to_owned(), value);
            assert!(
                before.is_none(),
                "correctness: oracle-equality: {handle}: insert of existing {key}"
            );
        }
        "update" => {
            let row = rows.get_mut(key);
            let row = row.unwrap_or_else(|| {
                panic!("correctness: oracle-equality: {handle}: update of missing {key}")
            });
            row.extend(value);
        }
        "delete" => {
            let row = rows.remove(key);
            assert!(
                row.is_some(),
                "correctness: oracle-equality: {handle}: delete of missing {key}"
            );
        }
        other => panic!("correctness: unknown operation {other} in {json}"),
    }
}

/// The state machine test: the core against the world.
struct CoreUnderFaults;

impl StateMachineTest for CoreUnderFaults {
    type SystemUnderTest = Sut;
    type Reference = Postgres;

    fn init_test(world: &World) -> Sut {
        Sut::new(world)
    }

    fn apply(mut sut: Sut, world: &World, event: Event) -> Sut {
        sut.apply(world, event);
        sut
    }

    fn check_invariants(sut: &Sut, world: &World) {
        sut.check_audit();
        sut.check_logs(world);
        if let Some(identity) = &sut.disk.identity {
            assert!(
                sut.pg.confirmed_flush_lsn <= identity.acked,
                "correctness: persist-before-ack: slot at {} but storage has acked={}",
                sut.pg.confirmed_flush_lsn,
                identity.acked
            );
        }
        if sut.core().is_active() {
            assert_eq!(
                sut.core().acked_lsn(),
                sut.pg.confirmed_flush_lsn,
                "correctness: the core's acked position is the slot's"
            );
        }
    }

    fn teardown(mut sut: Sut, world: World) {
        sut.heal(&world);
    }
}

/// Liveness: once faults stop, everything converges.
impl Sut {
    fn heal(&mut self, world: &World) {
        for _ in 0..8 {
            self.reconnect(world);
            while self.h.pending_flush().is_some() {
                self.complete_flush(world);
            }
            self.reconnect(world);
            self.deliver(world, world.wal.len() + 1);
            while !self.snapshots.is_empty() {
                self.begin_snapshot(world, 0);
                self.end_snapshot(world, 0);
            }
            while self.h.pending_flush().is_some() {
                self.complete_flush(world);
            }
            self.keepalive(world, true);
            if self.pg.confirmed_flush_lsn == world.wal_end && self.core().is_active() {
                break;
            }
        }
        assert!(
            self.core().is_active(),
            "liveness: not active after healing"
        );
        assert_eq!(
            self.pg.confirmed_flush_lsn, world.wal_end,
            "liveness: confirmed_flush_lsn is not at the WAL end"
        );
        self.check_logs(world);
        for (handle, t) in &self.shapes {
            assert!(
                t.doomed.is_none(),
                "liveness: {handle} was not removed ({:?})",
                t.doomed
            );
            assert!(t.snapshot.is_some(), "liveness: {handle} has no snapshot");
            let owed = self.first_not_durable(world, handle, t);
            assert!(owed.is_none(), "liveness: {handle} still owes {owed:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// A small JSON reader for log entries (the core has no JSON dependency to lean on).
// ---------------------------------------------------------------------------------------

#[derive(Debug, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Arr(Vec<Self>),
    Obj(Vec<(String, Self)>),
}

impl Json {
    fn parse(text: &str) -> Self {
        let mut p = JsonReader {
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value();
        assert_eq!(p.i, p.s.len(), "trailing bytes in {text}");
        v
    }

    fn get(&self, key: &str) -> Option<&Self> {
        match self {
            Self::Obj(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }
}

struct JsonReader<'a> {
    s: &'a [u8],
    i: usize,
}

impl JsonReader<'_> {
    fn peek(&self) -> u8 {
        *self.s.get(self.i).expect("unexpected end of JSON")
    }

    fn eat(&mut self, b: u8) {
        assert_eq!(
            self.peek(),
            b,
            "JSON: expected {:?} at {}",
            b as char,
            self.i
        );
        self.i += 1;
    }

    fn literal(&mut self, word: &str) {
        assert!(
            self.s[self.i..].starts_with(word.as_bytes()),
            "JSON literal"
        );
        self.i += word.len();
    }

    fn value(&mut self) -> Json {
        match self.peek() {
            b'{' => {
                self.eat(b'{');
                let mut fields = Vec::new();
                while self.peek() != b'}' {
                    if !fields.is_empty() {
                        self.eat(b',');
                    }
                    let k = self.string();
                    self.eat(b':');
                    fields.push((k, self.value()));
                }
                self.eat(b'}');
                Json::Obj(fields)
            }
            b'[' => {
                self.eat(b'[');
                let mut items = Vec::new();
                while self.peek() != b']' {
                    if !items.is_empty() {
                        self.eat(b',');
                    }
                    items.push(self.value());
                }
                self.eat(b']');
                Json::Arr(items)
            }
            b'"' => Json::Str(self.string()),
            b't' => {
                self.literal("true");
                Json::Bool(true)
            }
            b'f' => {
                self.literal("false");
                Json::Bool(false)
            }
            b'n' => {
                self.literal("null");
                Json::Null
            }
            _ => {
                let start = self.i;
                while self.i < self.s.len() && b"-+.eE0123456789".contains(&self.s[self.i]) {
                    self.i += 1;
                }
                assert!(self.i > start, "JSON: unexpected byte at {start}");
                Json::Num(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
            }
        }
    }

    fn string(&mut self) -> String {
        self.eat(b'"');
        let mut out = Vec::new();
        loop {
            let b = self.peek();
            self.i += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let e = self.peek();
                    self.i += 1;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'u' => {
                            let hex = std::str::from_utf8(&self.s[self.i..self.i + 4])
                                .expect("ascii hex");
                            self.i += 4;
                            let code = u32::from_str_radix(hex, 16).expect("hex");
                            char::from_u32(code).expect("a BMP scalar")
                        }
                        _ => panic!("JSON: bad escape"),
                    };
                    let mut buf = [0; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                _ => out.push(b),
            }
        }
        String::from_utf8(out).expect("UTF-8 JSON string")
    }
}

#[test]
fn the_json_reader_reads_what_the_encoder_writes() {
    // Goal: the replay is only as good as its reader: escapes and nesting round-trip.
    // Method: parse an entry the encoder wrote for awkward values.
    let json = r#"{"key":"\"public\".\"items\"/\"1\"","value":{"id":"1","title":"q\"u\\o\tt\u0001ü"},"headers":{"operation":"insert","txids":[7],"last":true,"x":null}}"#;
    let v = Json::parse(json);
    assert_eq!(
        v.get("key").and_then(Json::as_str),
        Some("\"public\".\"items\"/\"1\"")
    );
    let title = v.get("value").and_then(|v| v.get("title"));
    assert_eq!(title.and_then(Json::as_str), Some("q\"u\\o\tt\u{1}ü"));
    let headers = v.get("headers").expect("headers");
    assert_eq!(
        headers.get("txids"),
        Some(&Json::Arr(vec![Json::Num("7".into())]))
    );
    assert_eq!(headers.get("last"), Some(&Json::Bool(true)));
}

// ---------------------------------------------------------------------------------------
// Regressions.
// ---------------------------------------------------------------------------------------

fn insert_item(xid: u32, commit_lsn: u64, id: &str) -> Txn {
    Txn::new(xid, commit_lsn).insert(&items(), &[id, "a", "1"])
}

// Found by the state-machine test.
#[test]
fn a_replayed_transaction_the_snapshot_saw_is_not_appended_after_filtering_ended() {
    // Goal: oracle equality (SN-4, RC-3) across a reconnect: a transaction visible to the
    // shape's snapshot is skipped when the slot re-sends it, even though a later
    // transaction already ended filtering (`snapshot_filter_done` persisted) before
    // anything was acknowledged past the visible one.
    // Method: the snapshot (701:701:) sees xid 700 but not 701; both were buffered; the
    // flush of 701's entry fails, so the slot replays from 700's commit. (The test found it
    // through a crash-restart too: any reload of a shape whose filter-ending transaction is
    // not yet durable, while the slot is still below a visible transaction.)
    let mut h = Harness::active();
    let (handle, op) = h.create_shape(&items());
    h.commit(&insert_item(700, 0x2000, "1"));
    h.commit(&insert_item(701, 0x3000, "2"));
    h.snapshot_taken(op, snapshot("701:701:"));
    h.take();
    let confirmed = h.core().acked_lsn();
    assert_eq!(
        confirmed,
        Lsn(0x2000),
        "700 was held by the snapshot, never confirmed"
    );
    h.fail_flush();
    h.advance(Duration::from_secs(1));
    h.start(confirmed);
    h.commit(&insert_item(700, 0x2000, "1"));
    let out = h.take();
    let appended = entries(&out, &handle);
    assert!(
        appended.is_empty(),
        "row 1 is in the snapshot; appending it again duplicates it: {:?}",
        offsets(&appended)
    );
}

/// Whether `out` persists `snapshot_filter_done` of `handle`.
fn persists_filter_done(out: &[Output], handle: &ShapeHandle) -> bool {
    out.iter().any(|o| {
        matches!(o, Output::PersistShape { shape } if shape.snapshot_filter_done && shape.handle == *handle)
    })
}

#[test]
fn a_replayed_transaction_the_snapshot_saw_is_not_appended_after_a_crash() {
    // Goal: the crash-restart path of the regression above (`filter-end-durable`): the
    // shape's row says "filtering ended" only once the filter-ending transaction is durable
    // in its log, so a restart before that filters the slot's replays by visibility again.
    // Method: as above, but the process crashes with 701's flush unanswered; a new instance
    // over the durable storage restarts from the slot (still at 700's commit), which re-sends
    // 700 (visible: skipped) and 701 (appended once, then filtering is persisted as done).
    let mut h = Harness::active();
    let (handle, op) = h.create_shape(&items());
    h.commit(&insert_item(700, 0x2000, "1"));
    h.commit(&insert_item(701, 0x3000, "2"));
    h.snapshot_taken(op, snapshot("701:701:"));
    let out = h.take();
    assert_eq!(offsets(&entries(&out, &handle)), ["12288_0"]);
    assert!(
        !persists_filter_done(&out, &handle),
        "701's entry is not durable yet"
    );
    let confirmed = h.core().acked_lsn();
    assert_eq!(confirmed, Lsn(0x2000));

    let mut h = h.crashed();
    h.start(confirmed);
    h.take();
    h.commit(&insert_item(700, 0x2000, "1"));
    let out = h.take();
    assert!(
        entries(&out, &handle).is_empty(),
        "row 1 is in the snapshot: {:?}",
        offsets(&entries(&out, &handle))
    );
    h.commit(&insert_item(701, 0x3000, "2"));
    let out = h.take();
    assert_eq!(offsets(&entries(&out, &handle)), ["12288_0"]);
    assert!(!persists_filter_done(&out, &handle));
    h.complete_flush();
    let out = h.take();
    assert!(persists_filter_done(&out, &handle), "{:?}", kinds(&out));
    assert_eq!(flushes(&out), [Lsn(0x3001)]);
}

#[test]
fn a_replay_below_a_lost_status_is_dropped_once_filtering_is_persisted() {
    // Goal: once `snapshot_filter_done` is persisted, replays of transactions the snapshot
    // saw are dropped by the log's latest offset (RC-3), even when the slot restarts below
    // the acknowledged position (the last status lost in transit).
    // Method: 701's flush lands (status 0x3001, filtering persisted as done); the
    // connection is lost and the slot restarts from 700's commit, re-sending 700 and 701.
    let mut h = Harness::active();
    let (handle, op) = h.create_shape(&items());
    h.commit(&insert_item(700, 0x2000, "1"));
    h.commit(&insert_item(701, 0x3000, "2"));
    h.snapshot_taken(op, snapshot("701:701:"));
    h.take();
    h.complete_flush();
    let out = h.take();
    assert!(persists_filter_done(&out, &handle), "{:?}", kinds(&out));
    assert_eq!(flushes(&out), [Lsn(0x3001)]);

    h.lose_replication();
    h.advance(Duration::from_secs(1));
    h.start(Lsn(0x2000));
    h.take();
    h.commit(&insert_item(700, 0x2000, "1"));
    h.commit(&insert_item(701, 0x3000, "2"));
    assert!(entries(&h.take(), &handle).is_empty());
}

#[test]
fn filtering_ended_by_a_transaction_without_entries_is_persisted_with_the_next_durable_entry() {
    // Goal: `filter-end-durable` when the filter-ending transaction adds nothing to the
    // shape (an update of a column it does not select): the fact waits for the next entry
    // of the shape to be durable, so a crash before it still filters replays by visibility.
    // Method: a shape on (id, title); 700 (visible) inserts row 1, 701 (after the snapshot)
    // changes only `n` of row 1; crash; replay; then 702 inserts row 2 and is flushed.
    let mut h = Harness::active();
    let definition = selecting(&items(), &["id", "title"]);
    let op = h.request(definition, &items());
    let handle = h
        .take()
        .iter()
        .find_map(|o| match o {
            Output::CreateShape { shape, .. } => Some(shape.handle.clone()),
            _ => None,
        })
        .expect("CreateShape");
    h.commit(&insert_item(700, 0x2000, "1"));
    let only_n = Txn::new(701, 0x3000).update(&items(), &["1", "a", "1"], &["1", "a", "2"]);
    h.commit(&only_n);
    h.snapshot_taken(op, snapshot("701:701:"));
    let out = h.take();
    assert!(entries(&out, &handle).is_empty());
    assert!(!persists_filter_done(&out, &handle), "{:?}", kinds(&out));
    let confirmed = h.core().acked_lsn();

    let mut h = h.crashed();
    h.start(Lsn(0x2000).min(confirmed));
    h.take();
    h.commit(&insert_item(700, 0x2000, "1"));
    h.commit(&only_n);
    let out = h.take();
    assert!(entries(&out, &handle).is_empty(), "{:?}", kinds(&out));
    assert!(!persists_filter_done(&out, &handle), "{:?}", kinds(&out));
    h.commit(&insert_item(702, 0x4000, "2"));
    let out = h.take();
    assert_eq!(offsets(&entries(&out, &handle)), ["16384_0"]);
    assert!(!persists_filter_done(&out, &handle));
    h.complete_flush();
    assert!(persists_filter_done(&h.take(), &handle));
}
