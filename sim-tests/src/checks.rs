//! The invariants of deploy-semantics §3, checked during and at the end of every run. Each
//! check records failures instead of panicking inside a host, so the run ends with the seed,
//! the profile and a replay line (the harness panics with the first failure).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use ampere_core::offset::LogOffset;
use ampere_core::shape::{RelationName, ShapeDefinition};
use ampere_core::where_clause::RowFilter;
use ampere_io_sim::oracle::{self, Change, TableHistory, Txn};
use ampere_io_sim::pg::{AckEvent, CommittedTxn, ModelChange, PgModel};
use ampere_io_sim::storage::{Mutation, MutationKind, SimDisk};

use crate::host::SLOT;

/// Failures and counters shared by hooks running inside hosts and the harness.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Invariant violations, in the order found (`correctness: …` / `liveness: …`).
    pub failures: Vec<String>,
    /// Checks performed, by invariant.
    pub checks: BTreeMap<&'static str, u64>,
    /// Storage mutations seen, by writer.
    pub mutations: BTreeMap<String, u64>,
    /// A running digest of everything observable (determinism self-test).
    pub trace: u64,
}

impl Ledger {
    /// Counts one check of `invariant`.
    pub fn checked(&mut self, invariant: &'static str) {
        *self.checks.entry(invariant).or_insert(0) += 1;
    }

    /// Records a violation.
    pub fn fail(&mut self, what: String) {
        if self.failures.len() < 20 {
            self.failures.push(what);
        }
    }

    /// Folds an observation into the trace digest (FNV-1a).
    pub fn trace(&mut self, what: &str) {
        let mut h = if self.trace == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.trace
        };
        for b in what.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.trace = h;
    }
}

/// The ledger, shared with hooks.
pub type SharedLedger = Arc<Mutex<Ledger>>;

/// The slot's advisory lock as Postgres sees it when a mutation takes effect.
#[derive(Debug, Default)]
pub struct LockView {
    /// The host whose backend holds it.
    pub holder: Option<String>,
    /// The host it was last granted to (its backend may have ended since).
    pub last_granted: Option<String>,
}

impl LockView {
    /// The lock of the simulation's slot in `model`.
    pub fn of(model: &PgModel) -> Self {
        let key = ampere_io_sim::pg::advisory_key(SLOT);
        Self {
            holder: model.lock_holder_host(SLOT),
            last_granted: model
                .lock_events()
                .iter()
                .rev()
                .find(|e| e.acquired && e.key == key)
                .map(|e| e.client_host.clone()),
        }
    }
}

/// Invariants 1 and 6 on one storage directory. A writer takes the storage lease when it
/// promotes, which it may do only while its replication connection holds the advisory lock;
/// every other mutation must come from the writer holding the lease (a deposed writer that
/// has not yet heard of its loss is fenced by the lease).
#[derive(Debug, Default)]
pub struct StorageAudit {
    lease_holder: Option<String>,
}

impl StorageAudit {
    /// Checks one mutation; `lock` tells who holds the advisory lock now and who was
    /// granted it last.
    pub fn mutation(&mut self, ledger: &SharedLedger, lock: &LockView, m: &Mutation) {
        let lock_holder = lock.holder.as_deref();
        let mut ledger = ledger.lock().expect("ledger");
        ledger.checked("mutual-exclusion");
        *ledger.mutations.entry(m.writer.clone()).or_insert(0) += 1;
        ledger.trace(&format!("{m:?}"));
        if std::env::var_os("SIM_AUDIT").is_some() {
            eprintln!("audit: {m:?}");
        }
        if let MutationKind::LeaseAcquired { .. } = m.kind {
            // A Postgres crash ends the holder's session while the grant may still be on
            // its way: the writer cannot know yet, and the lease fences it from whoever
            // takes the lock next. Any other grant since makes this promotion a violation.
            let granted_then_lost =
                lock_holder.is_none() && lock.last_granted.as_deref() == Some(m.writer.as_str());
            if lock_holder != Some(m.writer.as_str()) && !granted_then_lost {
                ledger.fail(format!(
                    "correctness: invariant 1/6 (mutual exclusion): {} took the storage lease \
                     at {:?} without holding the advisory lock (holder: {lock_holder:?})",
                    m.writer, m.at
                ));
            }
            self.lease_holder = Some(m.writer.clone());
            return;
        }
        // Crash-time effects are what reached the disk before power was lost.
        let crash_effect = matches!(
            m.kind,
            MutationKind::TornAppend { .. }
                | MutationKind::CreateLeftover
                | MutationKind::RemovedToTrash
        );
        if !crash_effect && self.lease_holder.as_deref() != Some(m.writer.as_str()) {
            ledger.fail(format!(
                "correctness: invariant 1/6 (mutual exclusion): {} mutated storage ({:?}, \
                 handle {:?}) at {:?} while {:?} holds the storage lease",
                m.writer, m.kind, m.handle, m.at, self.lease_holder
            ));
        }
    }
}

/// Invariant 2: for every `flush` position F a host sends, every transaction committing
/// before F is durable in every (complete) shape on that host's storage that routes it, and
/// storage's persisted acked position is at least F.
pub fn audit_ack(ledger: &SharedLedger, model: &PgModel, ack: &AckEvent, disk: &SimDisk) {
    let mut ledger = ledger.lock().expect("ledger");
    ledger.checked("ack-le-durable");
    ledger.trace(&format!("{ack:?}"));
    if ack.slot != SLOT {
        return;
    }
    let (shapes, _, identity) = disk.durable_metadata();
    if let Some(identity) = identity.filter(|i| i.slot == ack.slot) {
        if identity.acked < ack.flush {
            ledger.fail(format!(
                "correctness: invariant 2 (ack ≤ durable): {} acked {} but storage persisted only \
                 {} (CT-5: persist before send)",
                ack.client_host, ack.flush, identity.acked
            ));
        }
    }
    for shape in shapes {
        let Some(snapshot) = shape.snapshot.as_ref() else {
            continue; // incomplete: discarded at boot, owes nothing
        };
        if disk.durable_snapshot(shape.handle.as_str()).is_none() {
            // Removed (invalidated or purged): the driver deletes the log before the row, so
            // for a moment the row outlives it. No client reads it again (invariant 5 judges
            // the 409), and the next lock holder discards the row, finding no log to recover.
            continue;
        }
        let log = disk.durable_log(shape.handle.as_str());
        let latest = log.last().map_or(LogOffset::SNAPSHOT_END, |e| e.offset);
        let filter = RowFilter::of(&shape.definition, &shape.schema);
        let owed = model
            .committed()
            .iter()
            .rev()
            .filter(|t| t.commit_lsn < ack.flush && !oracle::is_visible(snapshot, t.xid))
            .find(|t| produces_entry(t, &shape.definition, &shape.schema.columns, &filter));
        if let Some(txn) = owed {
            if latest < LogOffset::change(txn.commit_lsn, 0) {
                ledger.fail(format!(
                    "correctness: invariant 2 (ack ≤ durable): {} acked {} but shape {} holds \
                     only up to {latest} (transaction {} committed at {} is not durable in it)",
                    ack.client_host, ack.flush, shape.handle, txn.xid, txn.commit_lsn
                ));
            }
        }
    }
}

/// Whether a committed transaction adds at least one entry to a shape's log (or, for
/// TRUNCATE, for the first change written under a column the shape lacks, and for any change
/// of a shape whose stored where clause no longer compiles, must have invalidated it). With a
/// where clause: an insert owes an entry iff the new row matches, a delete iff the old row
/// did, an update iff the row moves in or out, or stays in with a selected column changed.
fn produces_entry(
    txn: &CommittedTxn,
    definition: &ShapeDefinition,
    columns: &[ampere_core::shape::ColumnSchema],
    filter: &RowFilter,
) -> bool {
    let selected = |i: usize| match &definition.columns {
        None => true,
        Some(names) => columns.get(i).is_some_and(|c| names.contains(&c.name)),
    };
    // A wider row follows a `Relation` message that invalidates the shape whatever its filter.
    let invalidates =
        |row: &[Option<String>]| row.len() != columns.len() || matches!(filter, RowFilter::Broken);
    txn.changes.iter().any(|change| match change {
        ModelChange::Insert { relation, row } => {
            *relation == definition.relation && (invalidates(row) || filter.admits(row))
        }
        ModelChange::Delete { relation, old } => {
            *relation == definition.relation && (invalidates(old) || filter.admits(old))
        }
        ModelChange::Update { relation, old, new } => {
            *relation == definition.relation
                && (invalidates(new)
                    || match (filter.admits(old), filter.admits(new)) {
                        (true, true) => old
                            .iter()
                            .zip(new)
                            .enumerate()
                            .any(|(i, (a, b))| a != b && selected(i)),
                        (false, false) => false,
                        // Moved in (an insert) or out (a delete).
                        _ => true,
                    })
        }
        ModelChange::Truncate { relations } => relations.contains(&definition.relation),
        // DDL is not decoded: ampere learns of the column from the `Relation` message before
        // the table's next change, so that change (its row is wider) is what owes it.
        ModelChange::AddColumn { .. } => false,
    })
}

/// The oracle's per-table histories, fed incrementally from the model's commits.
#[derive(Debug, Default)]
pub struct Histories {
    tables: BTreeMap<RelationName, TableHistory>,
    seen: usize,
}

impl Histories {
    /// Histories of `tables` as the model defines them.
    pub fn new(model: &PgModel) -> Self {
        let tables = model
            .tables()
            .map(|t| (t.relation.clone(), TableHistory::new(t.schema())))
            .collect();
        Self { tables, seen: 0 }
    }

    /// Takes in commits made since the last call.
    pub fn update(&mut self, model: &PgModel) {
        let committed = model.committed();
        for txn in &committed[self.seen..] {
            for (relation, history) in &mut self.tables {
                let changes: Vec<Change> = txn
                    .changes
                    .iter()
                    .filter_map(|c| oracle_change(c, relation))
                    .collect();
                if !changes.is_empty() {
                    history.push(Txn {
                        xid: txn.xid,
                        commit_lsn: txn.commit_lsn,
                        changes,
                    });
                }
            }
        }
        self.seen = committed.len();
    }

    /// The history of `relation`.
    pub fn table(&self, relation: &RelationName) -> Option<&TableHistory> {
        self.tables.get(relation)
    }
}

fn oracle_change(change: &ModelChange, table: &RelationName) -> Option<Change> {
    match change {
        ModelChange::Insert { relation, row } if relation == table => {
            Some(Change::Insert(row.clone()))
        }
        ModelChange::Update { relation, old, new } if relation == table => Some(Change::Update {
            old: old.clone(),
            new: new.clone(),
        }),
        ModelChange::Delete { relation, old } if relation == table => {
            Some(Change::Delete(old.clone()))
        }
        ModelChange::Truncate { relations } if relations.contains(table) => Some(Change::Truncate),
        ModelChange::AddColumn { relation, column } if relation == table => {
            Some(Change::AddColumn(column.name.clone()))
        }
        _ => None,
    }
}

/// Invariant 4: no handle was ever created twice on one storage.
pub fn handles_unique(ledger: &SharedLedger, disk: &SimDisk, disk_name: &str) {
    let mut ledger = ledger.lock().expect("ledger");
    ledger.checked("handles-never-reissued");
    let mut seen = BTreeSet::new();
    for handle in disk.handles_ever_created() {
        if !seen.insert(handle.clone()) {
            ledger.fail(format!(
                "correctness: invariant 4 (handles never reissued): {handle} was created twice \
                 on storage {disk_name}"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use ampere_core::lsn::Lsn;
    use ampere_core::shape::{ColumnSchema, Replica, TableSchema};
    use ampere_io_sim::pg::ModelColumn;

    use super::*;

    fn items() -> RelationName {
        RelationName {
            schema: "public".into(),
            table: "items".into(),
        }
    }

    fn column(name: &str, pk_index: Option<u32>) -> ColumnSchema {
        ColumnSchema {
            name: name.into(),
            type_oid: 25,
            typname: "text".into(),
            dims: 0,
            not_null: pk_index.is_some(),
            pk_index,
            modifiers: Vec::new(),
            is_enum: false,
        }
    }

    fn committed(xid: u64, at: u64, change: ModelChange) -> CommittedTxn {
        CommittedTxn {
            xid,
            commit_lsn: Lsn(at),
            end_lsn: Lsn(at + 0x20),
            changes: vec![change],
            change_lsns: vec![Lsn(at - 0x30)],
        }
    }

    fn text(v: &str) -> Option<String> {
        Some(v.to_owned())
    }

    /// `items (id text, value text, n int4)` and a shape `n > 5` selecting `id, n`.
    fn where_fixture() -> (Vec<ColumnSchema>, TableSchema, ShapeDefinition) {
        let mut columns = vec![column("id", Some(0)), column("value", None)];
        columns.push(ColumnSchema {
            name: "n".into(),
            type_oid: 23,
            typname: "int4".into(),
            dims: 0,
            not_null: false,
            pk_index: None,
            modifiers: Vec::new(),
            is_enum: false,
        });
        let schema = TableSchema {
            server_version: ampere_core::shape::ServerVersion::PG_15,
            oid: ampere_core::pgoutput::Oid(16_384),
            relation: items(),
            columns: columns.clone(),
        };
        let definition = ShapeDefinition {
            relation: items(),
            columns: Some(vec!["id".into(), "n".into()]),
            replica: Replica::Default,
            where_clause: Some("n > 5".into()),
            log: ampere_core::shape::LogMode::Full,
        };
        (columns, schema, definition)
    }

    #[test]
    fn a_where_shape_owes_entries_only_for_rows_in_it_before_or_after() {
        let (columns, schema, definition) = where_fixture();
        let filter = RowFilter::of(&definition, &schema);
        assert!(matches!(filter, RowFilter::Where(_)));
        let row = |n: Option<&str>, value: &str| vec![text("1"), text(value), n.map(str::to_owned)];
        let update = |old, new| {
            committed(
                20,
                0x400,
                ModelChange::Update {
                    relation: items(),
                    old,
                    new,
                },
            )
        };
        let owes = |txn: &CommittedTxn| produces_entry(txn, &definition, &columns, &filter);
        let insert = |r| {
            committed(
                21,
                0x500,
                ModelChange::Insert {
                    relation: items(),
                    row: r,
                },
            )
        };
        let delete = |r| {
            committed(
                22,
                0x600,
                ModelChange::Delete {
                    relation: items(),
                    old: r,
                },
            )
        };
        assert!(owes(&insert(row(Some("6"), "a"))));
        assert!(!owes(&insert(row(Some("5"), "a"))));
        assert!(!owes(&insert(row(None, "a"))));
        assert!(owes(&delete(row(Some("9"), "a"))));
        assert!(!owes(&delete(row(Some("1"), "a"))));
        // In → in: only a change of a selected column.
        assert!(owes(&update(row(Some("6"), "a"), row(Some("7"), "a"))));
        assert!(!owes(&update(row(Some("6"), "a"), row(Some("6"), "b"))));
        // In → out (a delete), out → in (an insert), out → out (nothing).
        assert!(owes(&update(row(Some("6"), "a"), row(Some("2"), "a"))));
        assert!(owes(&update(row(None, "a"), row(Some("8"), "b"))));
        assert!(!owes(&update(row(Some("1"), "a"), row(Some("2"), "b"))));
        // A wider row invalidates the shape even outside its filter.
        let mut wide = row(Some("1"), "a");
        wide.push(None);
        assert!(owes(&insert(wide)));
    }

    #[test]
    fn a_where_shape_whose_clause_no_longer_compiles_owes_every_change_of_its_table() {
        let (columns, schema, definition) = where_fixture();
        let row = |n: Option<&str>, value: &str| vec![text("1"), text(value), n.map(str::to_owned)];
        let insert = |r| {
            committed(
                21,
                0x500,
                ModelChange::Insert {
                    relation: items(),
                    row: r,
                },
            )
        };
        let broken = ShapeDefinition {
            where_clause: Some("missing = 1".into()),
            log: ampere_core::shape::LogMode::Full,
            ..definition.clone()
        };
        let broken_filter = RowFilter::of(&broken, &schema);
        assert!(matches!(broken_filter, RowFilter::Broken));
        assert!(produces_entry(
            &insert(row(Some("1"), "a")),
            &broken,
            &columns,
            &broken_filter
        ));
    }

    // Found by sim: seeds 0x20, 0x26, 0x52, 0x98, 0xc2
    #[test]
    fn an_add_column_owes_nothing_until_the_next_change_of_its_table() {
        let definition = ShapeDefinition {
            relation: items(),
            columns: Some(vec!["id".into(), "value".into()]),
            replica: Replica::Default,
            where_clause: None,
            log: ampere_core::shape::LogMode::Full,
        };
        let columns = [
            column("id", Some(0)),
            column("value", None),
            column("note", None),
        ];
        // pgoutput decodes no DDL: ampere cannot see this transaction, and may ack past it.
        let add = committed(
            10,
            0x100,
            ModelChange::AddColumn {
                relation: items(),
                column: ModelColumn::text("extra1"),
            },
        );
        assert!(!produces_entry(
            &add,
            &definition,
            &columns,
            &RowFilter::Every
        ));
        // The next change is preceded by a `Relation` message with the new column: it owes
        // the shape's invalidation, even when it changes only the column the shape lacks.
        let update = committed(
            11,
            0x200,
            ModelChange::Update {
                relation: items(),
                old: vec![text("1"), text("a"), None, None],
                new: vec![text("1"), text("a"), None, text("x")],
            },
        );
        assert!(produces_entry(
            &update,
            &definition,
            &columns,
            &RowFilter::Every
        ));
        // Without a new column, an update of unselected columns only owes nothing.
        let unselected = committed(
            12,
            0x300,
            ModelChange::Update {
                relation: items(),
                old: vec![text("1"), text("a"), None],
                new: vec![text("1"), text("a"), text("x")],
            },
        );
        assert!(!produces_entry(
            &unselected,
            &definition,
            &columns,
            &RowFilter::Every
        ));
    }
}
