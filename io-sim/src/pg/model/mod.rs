//! The Postgres model: WAL, transactions with 64-bit xids, MVCC snapshots, tables, and (in
//! [`session`]) backends, advisory locks, publications and logical slots.
//!
//! Pure and synchronous: no I/O, no clock. Times arrive as sim-elapsed `Duration`s
//! ([`PgModel::observe_time`]); events that happen without one (a restart, a fault) are stamped
//! with the latest time the model has seen.
//!
//! Shared as [`SharedPg`]; every mutation bumps a `tokio::sync::watch` counter
//! ([`PgModel::subscribe`]) so walsender and backend tasks on the `pg` host wake up, whichever
//! host (or the test body) mutated it.

mod read;
pub mod session;
pub mod table;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use ampere_core::lsn::Lsn;
use ampere_core::shape::RelationName;
use ampere_core::snapshot::{FullXid, PgSnapshot};

use self::session::{AckEvent, AdvisoryLock, Backend, LockEvent, PublicationEvent, Slot};
use self::table::TableState;
pub use self::table::{Key, ModelColumn, Row, TableDef, INT8_OID, TEXT_OID};

/// The model shared by the `pg` host, the simulation's workload and its checkers. turmoil runs
/// every host on one thread, so a std `Mutex` is fine; never hold it across an `.await`, nor
/// while calling `Sim::crash` / `Sim::bounce` (dropped backend tasks lock it).
pub type SharedPg = Arc<Mutex<PgModel>>;

/// Locks the shared model, ignoring poisoning (a panicking test already failed).
pub fn lock(pg: &SharedPg) -> MutexGuard<'_, PgModel> {
    pg.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The first WAL position of a fresh model (`0/1000000`).
pub const WAL_START: Lsn = Lsn(0x0100_0000);
/// WAL bytes of a commit record: `end_lsn = commit_lsn + COMMIT_RECORD_LEN`.
const COMMIT_RECORD_LEN: u64 = 0x20;
/// WAL bytes of a change record's header; its row data comes on top.
const CHANGE_RECORD_LEN: u64 = 0x30;
/// The first pid handed to a backend.
const FIRST_PID: i32 = 1000;

/// What a fresh model looks like.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PgModelConfig {
    /// `IDENTIFY_SYSTEM`'s system identifier.
    pub system_id: u64,
    /// `IDENTIFY_SYSTEM`'s timeline.
    pub timeline: u32,
    /// The first xid handed out, full 64 bits: the epoch may be above 0, and a value a few
    /// below a multiple of 2^32 makes xids straddle an epoch boundary.
    pub first_xid: u64,
    /// The tables that exist (none is in a publication yet).
    pub tables: Vec<TableDef>,
}

/// Settings the `pg` host's server reads on every use, so a run may change them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PgSettings {
    /// A walsender that hears nothing from its client for this long disconnects (0: never).
    pub wal_sender_timeout: Duration,
    /// How often a walsender sends a primary keepalive.
    pub keepalive_interval: Duration,
    /// How often the server checkpoints (persists slots' `confirmed_flush_lsn`).
    pub checkpoint_interval: Duration,
    /// Whether transactions without a published change are streamed as `Begin`/`Commit`
    /// (Postgres < 15) or skipped (Postgres ≥ 15).
    pub send_empty_transactions: bool,
}

impl Default for PgSettings {
    fn default() -> Self {
        Self {
            wal_sender_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(10),
            checkpoint_interval: Duration::from_secs(5),
            send_empty_transactions: true,
        }
    }
}

/// One change of a transaction, as the workload wrote it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ModelChange {
    /// A row inserted.
    Insert {
        /// The table.
        relation: RelationName,
        /// The new row.
        row: Row,
    },
    /// A row updated (same primary key).
    Update {
        /// The table.
        relation: RelationName,
        /// The row before.
        old: Row,
        /// The row after.
        new: Row,
    },
    /// A row deleted.
    Delete {
        /// The table.
        relation: RelationName,
        /// The deleted row.
        old: Row,
    },
    /// `TRUNCATE` of one or more tables.
    Truncate {
        /// The tables.
        relations: Vec<RelationName>,
    },
    /// `ALTER TABLE … ADD COLUMN <column> text` (its own transaction; existing rows get NULL).
    AddColumn {
        /// The table.
        relation: RelationName,
        /// The new column.
        column: ModelColumn,
    },
}

/// A committed transaction, in commit order.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CommittedTxn {
    /// The full 64-bit xid.
    pub xid: u64,
    /// Where its commit record starts.
    pub commit_lsn: Lsn,
    /// Where its commit record ends (the next record may start right there).
    pub end_lsn: Lsn,
    /// The changes, in order.
    pub changes: Vec<ModelChange>,
    /// The WAL position each change was written at (parallel to `changes`).
    pub change_lsns: Vec<Lsn>,
}

/// Where a transaction is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum XactStatus {
    /// Begun, not ended.
    InProgress,
    /// Committed.
    Committed,
    /// Aborted, explicitly or by a restart.
    Aborted,
}

/// Why a workload operation on the model failed.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum ModelError {
    /// The xid is not in progress (never begun, committed, or aborted by a restart).
    #[error("transaction {xid} is not in progress")]
    NotInProgress {
        /// The xid.
        xid: u64,
    },
    /// The table does not exist.
    #[error("relation {relation} does not exist")]
    NoSuchTable {
        /// The table.
        relation: RelationName,
    },
    /// A row of the wrong width, or without its primary key.
    #[error(
        "row for {relation} has {found} values or a NULL key; the table has {expected} columns"
    )]
    BadRow {
        /// The table.
        relation: RelationName,
        /// Values given.
        found: usize,
        /// Columns of the table.
        expected: usize,
    },
    /// Insert of a primary key that exists (23505).
    #[error("duplicate key in {relation}")]
    UniqueViolation {
        /// The table.
        relation: RelationName,
    },
    /// Another transaction holds a conflicting row or table lock (Postgres would wait; the
    /// model refuses: retry later or abort).
    #[error("{relation} is locked by transaction {holder}")]
    Locked {
        /// The table.
        relation: RelationName,
        /// The transaction holding the lock.
        holder: u64,
    },
    /// A read transaction (a snapshot's) holds the table `ACCESS SHARE` (DDL would wait).
    #[error("{relation} is locked by backend {pid}'s read")]
    ShareLocked {
        /// The table.
        relation: RelationName,
        /// The backend whose read transaction holds the lock.
        pid: i32,
    },
}

/// A transaction in progress: its changes and its view of the rows it wrote.
#[derive(Clone, Debug, Default)]
struct OpenTxn {
    changes: Vec<ModelChange>,
    change_lsns: Vec<Lsn>,
    /// Rows this transaction wrote (`None`: deleted), over the committed state.
    writes: BTreeMap<(RelationName, Key), Option<Row>>,
    /// Tables this transaction truncated: committed rows are gone for it.
    truncated: BTreeSet<RelationName>,
}

/// The Postgres model. See the module docs.
pub struct PgModel {
    system_id: u64,
    timeline: u32,
    settings: PgSettings,
    /// Where the next WAL record starts.
    wal_end: Lsn,
    next_xid: u64,
    tables: BTreeMap<RelationName, TableState>,
    in_progress: BTreeMap<u64, OpenTxn>,
    committed: Vec<CommittedTxn>,
    committed_xids: BTreeSet<u64>,
    /// Row locks of transactions in progress.
    row_locks: BTreeMap<(RelationName, Key), u64>,
    /// Table locks (`TRUNCATE`) of transactions in progress.
    table_locks: BTreeMap<RelationName, u64>,
    /// Current publication membership by name.
    publications: BTreeMap<String, BTreeSet<u32>>,
    /// `COMMENT ON PUBLICATION` texts by publication (ampere's stamp reservations).
    publication_comments: BTreeMap<String, String>,
    /// Every publication change, at its WAL position (membership at write time).
    publication_log: Vec<PublicationEvent>,
    slots: BTreeMap<String, Slot>,
    backends: BTreeMap<i32, Backend>,
    next_pid: i32,
    advisory_locks: BTreeMap<i64, AdvisoryLock>,
    lock_events: Vec<LockEvent>,
    ack_events: Vec<AckEvent>,
    on_ack: Option<AckHook>,
    /// The latest sim-elapsed time seen.
    now: Duration,
    /// Bumped by every restart.
    incarnation: u64,
    /// The incarnation the `pg` host's server last started in.
    serving_incarnation: Option<u64>,
    changed: watch::Sender<u64>,
}

/// Called on every standby status update, with read access to the model.
pub type AckHook = Box<dyn FnMut(&PgModel, &AckEvent) + Send>;

impl PgModel {
    /// A fresh cluster: WAL at [`WAL_START`], xids from `first_xid`, the tables empty.
    pub fn new(config: PgModelConfig) -> Self {
        let tables = config
            .tables
            .into_iter()
            .map(|def| {
                // rows are addressed by primary key; a table without one is a test-setup bug
                assert!(
                    !def.key_indices().is_empty(),
                    "model table {} needs a primary key",
                    def.relation
                );
                (def.relation.clone(), TableState::new(def))
            })
            .collect();
        Self {
            system_id: config.system_id,
            timeline: config.timeline,
            settings: PgSettings::default(),
            wal_end: WAL_START,
            next_xid: normal_xid(config.first_xid),
            tables,
            in_progress: BTreeMap::new(),
            committed: Vec::new(),
            committed_xids: BTreeSet::new(),
            row_locks: BTreeMap::new(),
            table_locks: BTreeMap::new(),
            publications: BTreeMap::new(),
            publication_comments: BTreeMap::new(),
            publication_log: Vec::new(),
            slots: BTreeMap::new(),
            backends: BTreeMap::new(),
            next_pid: FIRST_PID,
            advisory_locks: BTreeMap::new(),
            lock_events: Vec::new(),
            ack_events: Vec::new(),
            on_ack: None,
            now: Duration::ZERO,
            incarnation: 0,
            serving_incarnation: None,
            changed: watch::Sender::new(0),
        }
    }

    /// The model wrapped for sharing.
    pub fn shared(config: PgModelConfig) -> SharedPg {
        Arc::new(Mutex::new(Self::new(config)))
    }

    /// `IDENTIFY_SYSTEM`'s system identifier.
    pub fn system_id(&self) -> u64 {
        self.system_id
    }

    /// `IDENTIFY_SYSTEM`'s timeline.
    pub fn timeline(&self) -> u32 {
        self.timeline
    }

    /// The server's settings.
    pub fn settings(&self) -> PgSettings {
        self.settings
    }

    /// Replaces the server's settings (read by walsenders on their next wakeup).
    pub fn set_settings(&mut self, settings: PgSettings) {
        self.settings = settings;
        self.bump();
    }

    /// `ALTER SYSTEM SET wal_sender_timeout` + reload.
    pub fn set_wal_sender_timeout(&mut self, timeout: Duration) {
        self.settings.wal_sender_timeout = timeout;
        self.bump();
    }

    /// Wakes on every mutation of the model (the value is a counter).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Advances the model's notion of time (never backwards); events are stamped with it.
    pub fn observe_time(&mut self, at: Duration) {
        self.now = self.now.max(at);
    }

    /// The latest sim-elapsed time seen.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Where the next WAL record starts (`pg_current_wal_lsn()`).
    pub fn wal_end(&self) -> Lsn {
        self.wal_end
    }

    /// Every committed transaction, in commit order (the oracle replays these).
    pub fn committed(&self) -> &[CommittedTxn] {
        &self.committed
    }

    /// A table's current definition.
    pub fn table(&self, relation: &RelationName) -> Option<&TableDef> {
        self.tables.get(relation).map(|t| &t.def)
    }

    /// Every table's current definition, by name.
    pub fn tables(&self) -> impl Iterator<Item = &TableDef> {
        self.tables.values().map(|t| &t.def)
    }

    /// A table's committed rows in primary-key order.
    pub fn rows(&self, relation: &RelationName) -> Vec<Row> {
        self.tables
            .get(relation)
            .map(|t| t.rows.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The oid and columns of `relation` for a change written at `lsn`, with the schema
    /// version (which changes with every `ADD COLUMN`).
    pub(crate) fn schema_at(
        &self,
        relation: &RelationName,
        lsn: Lsn,
    ) -> Option<(u32, usize, &[ModelColumn])> {
        let table = self.tables.get(relation)?;
        let version = table.schema_version_at(lsn);
        let columns = table.schemas.get(version)?.1.as_slice();
        Some((table.def.oid, version, columns))
    }

    /// Starts a transaction; its full xid is assigned now.
    pub fn begin(&mut self) -> u64 {
        let xid = self.assign_xid();
        self.in_progress.insert(xid, OpenTxn::default());
        self.bump();
        xid
    }

    /// Transactions in progress, by xid.
    pub fn in_progress(&self) -> Vec<u64> {
        self.in_progress.keys().copied().collect()
    }

    /// `INSERT`: fails on a duplicate key or a lock held by another transaction.
    pub fn insert(
        &mut self,
        xid: u64,
        relation: &RelationName,
        row: Row,
    ) -> Result<(), ModelError> {
        let key = self.checked_key(relation, &row)?;
        self.check_row_lock(xid, relation, &key)?;
        if self.visible_row(xid, relation, &key).is_some() {
            return Err(ModelError::UniqueViolation {
                relation: relation.clone(),
            });
        }
        let change = ModelChange::Insert {
            relation: relation.clone(),
            row: row.clone(),
        };
        self.write(xid, change, vec![(relation.clone(), key, Some(row))]);
        Ok(())
    }

    /// `UPDATE … WHERE <pk> = <new's pk>`: whether a row was updated.
    pub fn update(
        &mut self,
        xid: u64,
        relation: &RelationName,
        new: Row,
    ) -> Result<bool, ModelError> {
        let key = self.checked_key(relation, &new)?;
        self.check_row_lock(xid, relation, &key)?;
        let Some(old) = self.visible_row(xid, relation, &key) else {
            return Ok(false);
        };
        let change = ModelChange::Update {
            relation: relation.clone(),
            old,
            new: new.clone(),
        };
        self.write(xid, change, vec![(relation.clone(), key, Some(new))]);
        Ok(true)
    }

    /// `DELETE … WHERE <pk> = <pk>` (key columns as text, in key order): whether a row was
    /// deleted.
    pub fn delete(
        &mut self,
        xid: u64,
        relation: &RelationName,
        pk: &[&str],
    ) -> Result<bool, ModelError> {
        self.open_txn(xid)?;
        let def = self.table_def(relation)?;
        let key = def.key_from_text(pk).ok_or_else(|| ModelError::BadRow {
            relation: relation.clone(),
            found: pk.len(),
            expected: def.key_indices().len(),
        })?;
        self.check_row_lock(xid, relation, &key)?;
        let Some(old) = self.visible_row(xid, relation, &key) else {
            return Ok(false);
        };
        let change = ModelChange::Delete {
            relation: relation.clone(),
            old,
        };
        self.write(xid, change, vec![(relation.clone(), key, None)]);
        Ok(true)
    }

    /// `TRUNCATE`: takes each table's lock (fails if another transaction wrote to it).
    pub fn truncate(&mut self, xid: u64, relations: &[RelationName]) -> Result<(), ModelError> {
        self.open_txn(xid)?;
        for relation in relations {
            self.table_def(relation)?;
            self.check_table_free(xid, relation)?;
        }
        for relation in relations {
            self.table_locks.insert(relation.clone(), xid);
        }
        let txn = self.open_txn_mut(xid)?;
        for relation in relations {
            txn.truncated.insert(relation.clone());
            txn.writes.retain(|(r, _), _| r != relation);
        }
        let change = ModelChange::Truncate {
            relations: relations.to_vec(),
        };
        self.write(xid, change, Vec::new());
        Ok(())
    }

    /// Commits: the changes reach the tables at this instant. Returns the commit LSN.
    pub fn commit(&mut self, xid: u64) -> Result<Lsn, ModelError> {
        let txn = self
            .in_progress
            .remove(&xid)
            .ok_or(ModelError::NotInProgress { xid })?;
        self.release_txn_locks(xid);
        for change in &txn.changes {
            self.apply(change);
        }
        let commit_lsn = self.commit_record(xid, txn.changes, txn.change_lsns);
        self.bump();
        Ok(commit_lsn)
    }

    /// Aborts: the changes vanish.
    pub fn abort(&mut self, xid: u64) -> Result<(), ModelError> {
        self.in_progress
            .remove(&xid)
            .ok_or(ModelError::NotInProgress { xid })?;
        self.release_txn_locks(xid);
        self.bump();
        Ok(())
    }

    /// `ALTER TABLE … ADD COLUMN <name> text`, committed at once in its own transaction.
    /// Existing rows get NULL. Fails while a transaction in progress wrote to the table (its
    /// `ACCESS EXCLUSIVE` lock would wait).
    pub fn add_column(&mut self, relation: &RelationName, name: &str) -> Result<Lsn, ModelError> {
        self.table_def(relation)?;
        let holder = self
            .row_locks
            .iter()
            .find(|((r, _), _)| r == relation)
            .map(|(_, xid)| *xid)
            .or_else(|| self.table_locks.get(relation).copied());
        if let Some(holder) = holder {
            return Err(ModelError::Locked {
                relation: relation.clone(),
                holder,
            });
        }
        if let Some(pid) = self.share_locker(relation) {
            return Err(ModelError::ShareLocked {
                relation: relation.clone(),
                pid,
            });
        }
        let xid = self.assign_xid();
        let column = ModelColumn::text(name);
        let lsn = self.append_wal(CHANGE_RECORD_LEN);
        let table = self
            .tables
            .get_mut(relation)
            .expect("invariant: table_def found the table above");
        table.def.columns.push(column.clone());
        table.schemas.push((lsn, table.def.columns.clone()));
        for row in table.rows.values_mut() {
            row.push(None);
        }
        let change = ModelChange::AddColumn {
            relation: relation.clone(),
            column,
        };
        let commit_lsn = self.commit_record(xid, vec![change], vec![lsn]);
        self.bump();
        Ok(commit_lsn)
    }

    /// `pg_current_snapshot()`: xmin = oldest xid in progress (or the next xid), xmax = the
    /// next xid, xip = the xids in progress.
    pub fn current_snapshot(&self) -> PgSnapshot {
        let xip: Vec<FullXid> = self.in_progress.keys().map(|&x| FullXid(x)).collect();
        let xmax = FullXid(self.next_xid);
        PgSnapshot {
            xmin: xip.first().copied().unwrap_or(xmax),
            xmax,
            xip,
        }
    }

    /// `pg_xact_status(xid)`.
    pub fn xact_status(&self, xid: u64) -> XactStatus {
        if self.in_progress.contains_key(&xid) {
            XactStatus::InProgress
        } else if self.committed_xids.contains(&xid) {
            XactStatus::Committed
        } else {
            XactStatus::Aborted
        }
    }

    /// `pg_xact_status(xid) = 'in progress'`.
    pub fn xact_in_progress(&self, xid: u64) -> bool {
        self.in_progress.contains_key(&xid)
    }

    /// Postgres restarts: every backend is terminated, transactions in progress abort,
    /// temporary slots vanish, advisory locks are released, slots become inactive. A fast
    /// restart checkpoints first; a crash reverts every slot's `confirmed_flush_lsn` to the
    /// last checkpointed one. Committed transactions survive either way.
    pub fn restart(&mut self, crash: bool) {
        if !crash {
            self.checkpoint();
        }
        let pids: Vec<i32> = self.backends.keys().copied().collect();
        for pid in pids {
            self.close_backend(pid);
        }
        self.in_progress.clear();
        self.row_locks.clear();
        self.table_locks.clear();
        self.slots.retain(|_, slot| !slot.is_temporary());
        for slot in self.slots.values_mut() {
            slot.active_pid = None;
            if crash {
                slot.confirmed_flush_lsn = slot.persisted_confirmed_flush_lsn;
            }
        }
        self.incarnation += 1;
        tracing::debug!(crash, incarnation = self.incarnation, "pg model restarted");
        self.bump();
    }

    /// How many times the model restarted.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Called by the server when it starts: a server that starts again in the incarnation of
    /// an earlier start was killed without [`Self::restart`], which is a crash.
    pub(crate) fn server_started(&mut self) {
        if self.serving_incarnation == Some(self.incarnation) {
            tracing::debug!("pg server restarted without a model restart: crash semantics");
            self.restart(true);
        }
        self.serving_incarnation = Some(self.incarnation);
    }

    /// Installs the hook called on every standby status update.
    pub fn set_on_ack(&mut self, hook: Option<AckHook>) {
        self.on_ack = hook;
    }

    /// Hands out the next xid. Like Postgres, skips the special 32-bit xids 0, 1 and 2 in
    /// every epoch, so a wraparound goes from `e:4294967295` to `e+1:3`.
    fn assign_xid(&mut self) -> u64 {
        let xid = self.next_xid;
        self.next_xid = normal_xid(xid + 1);
        xid
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Reserves `len` bytes of WAL; returns where the record starts.
    fn append_wal(&mut self, len: u64) -> Lsn {
        let at = self.wal_end;
        self.wal_end = Lsn(at.0 + len);
        at
    }

    /// Writes the commit record of `xid` and records the transaction as committed.
    fn commit_record(&mut self, xid: u64, changes: Vec<ModelChange>, lsns: Vec<Lsn>) -> Lsn {
        let commit_lsn = self.append_wal(COMMIT_RECORD_LEN);
        self.committed.push(CommittedTxn {
            xid,
            commit_lsn,
            end_lsn: self.wal_end,
            changes,
            change_lsns: lsns,
        });
        self.committed_xids.insert(xid);
        commit_lsn
    }

    fn table_def(&self, relation: &RelationName) -> Result<&TableDef, ModelError> {
        self.table(relation).ok_or_else(|| ModelError::NoSuchTable {
            relation: relation.clone(),
        })
    }

    fn open_txn(&self, xid: u64) -> Result<&OpenTxn, ModelError> {
        self.in_progress
            .get(&xid)
            .ok_or(ModelError::NotInProgress { xid })
    }

    fn open_txn_mut(&mut self, xid: u64) -> Result<&mut OpenTxn, ModelError> {
        self.in_progress
            .get_mut(&xid)
            .ok_or(ModelError::NotInProgress { xid })
    }

    /// The key of a full-width row for `relation`, with `xid` in progress.
    fn checked_key(
        &self,
        relation: &RelationName,
        row: &[Option<String>],
    ) -> Result<Key, ModelError> {
        let def = self.table_def(relation)?;
        let bad = || ModelError::BadRow {
            relation: relation.clone(),
            found: row.len(),
            expected: def.columns.len(),
        };
        if row.len() != def.columns.len() {
            return Err(bad());
        }
        def.key_of(row).ok_or_else(bad)
    }

    fn check_row_lock(
        &self,
        xid: u64,
        relation: &RelationName,
        key: &Key,
    ) -> Result<(), ModelError> {
        self.open_txn(xid)?;
        let holder = self.row_locks.get(&(relation.clone(), key.clone()));
        let holder = holder.or_else(|| self.table_locks.get(relation));
        match holder {
            Some(&holder) if holder != xid => Err(ModelError::Locked {
                relation: relation.clone(),
                holder,
            }),
            _ => Ok(()),
        }
    }

    fn check_table_free(&self, xid: u64, relation: &RelationName) -> Result<(), ModelError> {
        let row_holder = self
            .row_locks
            .iter()
            .find(|((r, _), holder)| r == relation && **holder != xid)
            .map(|(_, holder)| *holder);
        let table_holder = self
            .table_locks
            .get(relation)
            .copied()
            .filter(|h| *h != xid);
        match (row_holder.or(table_holder), self.share_locker(relation)) {
            (Some(holder), _) => Err(ModelError::Locked {
                relation: relation.clone(),
                holder,
            }),
            (None, Some(pid)) => Err(ModelError::ShareLocked {
                relation: relation.clone(),
                pid,
            }),
            (None, None) => Ok(()),
        }
    }

    /// The row `xid` sees at `key`: its own writes over the committed state.
    fn visible_row(&self, xid: u64, relation: &RelationName, key: &Key) -> Option<Row> {
        let txn = self.in_progress.get(&xid)?;
        if let Some(written) = txn.writes.get(&(relation.clone(), key.clone())) {
            return written.clone();
        }
        if txn.truncated.contains(relation) {
            return None;
        }
        self.tables.get(relation)?.rows.get(key).cloned()
    }

    /// Appends a change record to `xid` and applies its row writes to the transaction's view.
    fn write(
        &mut self,
        xid: u64,
        change: ModelChange,
        rows: Vec<(RelationName, Key, Option<Row>)>,
    ) {
        let len = CHANGE_RECORD_LEN + change_bytes(&change);
        let lsn = self.append_wal(len);
        let txn = self
            .in_progress
            .get_mut(&xid)
            .expect("invariant: callers checked the transaction is in progress");
        for (relation, key, row) in rows {
            txn.writes.insert((relation.clone(), key.clone()), row);
            self.row_locks.insert((relation, key), xid);
        }
        txn.changes.push(change);
        txn.change_lsns.push(lsn);
        self.bump();
    }

    fn release_txn_locks(&mut self, xid: u64) {
        self.row_locks.retain(|_, holder| *holder != xid);
        self.table_locks.retain(|_, holder| *holder != xid);
    }

    /// Applies a committed change to the tables.
    fn apply(&mut self, change: &ModelChange) {
        match change {
            ModelChange::Insert { relation, row: new }
            | ModelChange::Update { relation, new, .. } => {
                if let Some(table) = self.tables.get_mut(relation) {
                    let key = table.def.key_of(new).expect("invariant: checked at write");
                    table.rows.insert(key, new.clone());
                }
            }
            ModelChange::Delete { relation, old } => {
                if let Some(table) = self.tables.get_mut(relation) {
                    let key = table.def.key_of(old).expect("invariant: checked at write");
                    table.rows.remove(&key);
                }
            }
            ModelChange::Truncate { relations } => {
                for relation in relations {
                    if let Some(table) = self.tables.get_mut(relation) {
                        table.rows.clear();
                    }
                }
            }
            ModelChange::AddColumn { .. } => {}
        }
    }
}

/// `xid`, or the first normal xid of its epoch when its low 32 bits are special (0, 1, 2).
fn normal_xid(xid: u64) -> u64 {
    const FIRST_NORMAL_XID: u64 = 3;
    if xid & 0xFFFF_FFFF < FIRST_NORMAL_XID {
        (xid & !0xFFFF_FFFF) | FIRST_NORMAL_XID
    } else {
        xid
    }
}

impl std::fmt::Debug for PgModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgModel")
            .field("wal_end", &self.wal_end)
            .field("next_xid", &self.next_xid)
            .field("in_progress", &self.in_progress.keys().collect::<Vec<_>>())
            .field("committed", &self.committed.len())
            .field("publications", &self.publications)
            .field("slots", &self.slots)
            .field("backends", &self.backends)
            .field("incarnation", &self.incarnation)
            .finish_non_exhaustive()
    }
}

/// A rough size of a change's row data, so WAL positions spread like real ones.
fn change_bytes(change: &ModelChange) -> u64 {
    let row_len = |row: &Row| -> u64 {
        row.iter()
            .map(|v| v.as_ref().map_or(1, |s| s.len() as u64 + 4))
            .sum()
    };
    let len = match change {
        ModelChange::Insert { row, .. } => row_len(row),
        ModelChange::Update { old, new, .. } => row_len(old) + row_len(new),
        ModelChange::Delete { old, .. } => row_len(old),
        ModelChange::Truncate { relations } => 4 * relations.len() as u64,
        ModelChange::AddColumn { .. } => 0,
    };
    len.next_multiple_of(8)
}

#[cfg(test)]
mod tests;
