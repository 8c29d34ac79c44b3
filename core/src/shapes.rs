//! Live shapes: routing committed transactions into per-shape log entries.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use crate::chunk::ChunkCutter;
use crate::json::{ChangeHeaders, EntryEncoder, PartialEntry};
use crate::lsn::Lsn;
use crate::offset::LogOffset;
use crate::pgoutput::Relation;
use crate::ports::LogEntry;
use crate::shape::{ShapeDefinition, ShapeHandle, TableSchema};
use crate::snapshot::PgSnapshot;
use crate::txn::{Change, Transaction};
use crate::where_clause::{RowFilter, WhereClause};
use crate::OpId;

/// Where a shape is in its life.
#[derive(Debug)]
pub(crate) enum Stage {
    /// Its snapshot runs; routed transactions wait here until it is known what it saw.
    Snapshotting {
        /// The snapshot operation.
        op: OpId,
        /// Transactions routed to the shape meanwhile, in commit order.
        buffered: Vec<Arc<Transaction>>,
    },
    /// Snapshot done; transactions visible to it are skipped until one starts after it.
    Filtering(PgSnapshot),
    /// Every routed transaction is appended.
    Live,
}

/// Why a shape must be invalidated (its clients get 409).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Invalidation {
    /// `TRUNCATE` of the table.
    Truncated,
    /// Postgres sent a change ampere cannot represent (REPLICA IDENTITY not FULL).
    Unrepresentable(&'static str),
    /// The stored where clause no longer compiles against the shape's schema.
    WhereClause,
}

/// One shape's routing state.
#[derive(Debug)]
pub(crate) struct Shape {
    pub(crate) handle: ShapeHandle,
    pub(crate) definition: ShapeDefinition,
    pub(crate) schema: TableSchema,
    pub(crate) stage: Stage,
    /// The last offset appended (durable or not); replayed entries at or below it are dropped.
    pub(crate) latest: LogOffset,
    /// Shared with every shape whose encoder is equal ([`Encoders`]).
    encoder: Arc<EntryEncoder>,
    cutter: ChunkCutter,
    /// The row filter; a broken one invalidates the shape at its next change.
    filter: RowFilter,
}

impl Shape {
    pub(crate) fn new(
        handle: ShapeHandle,
        definition: ShapeDefinition,
        schema: TableSchema,
        stage: Stage,
        latest: LogOffset,
        cutter: ChunkCutter,
    ) -> Self {
        let selected = selected_columns(&definition, &schema);
        let encoder = Arc::new(EntryEncoder::new(&schema, &selected, definition.replica));
        let filter = RowFilter::of(&definition, &schema);
        Self {
            handle,
            definition,
            schema,
            stage,
            latest,
            encoder,
            cutter,
            filter,
        }
    }

    /// Takes the encoder equal to its own from `encoders` (or lends its own to them).
    pub(crate) fn share_encoder(&mut self, encoders: &mut Encoders) {
        self.encoder = encoders.share(&self.encoder);
    }

    /// The compiled where clause, if the shape has one that compiles.
    pub(crate) fn where_clause(&self) -> Option<&WhereClause> {
        self.filter.clause()
    }

    /// Whether `relation` carries the name of the shape's table (whatever its OID).
    pub(crate) fn names(&self, relation: &Relation) -> bool {
        relation.namespace == self.schema.relation.schema
            && relation.name == self.schema.relation.table
    }

    /// Whether Postgres's description of the table still matches the shape's schema.
    pub(crate) fn relation_matches(&self, relation: &Relation) -> bool {
        let s = &self.schema;
        relation.namespace == s.relation.schema
            && relation.name == s.relation.table
            && relation.columns.len() == s.columns.len()
            && relation
                .columns
                .iter()
                .zip(&s.columns)
                .all(|(r, c)| r.name == c.name && r.type_oid.0 == c.type_oid)
    }

    /// The log entries `txn` adds to this shape (none if it does not touch the table or was
    /// appended before), with chunk boundaries decided.
    pub(crate) fn entries_for(
        &mut self,
        txn: &Transaction,
        only: Option<&[usize]>,
        memo: &mut EntryMemo,
    ) -> Result<Vec<LogEntry>, Invalidation> {
        let parts = self.encode(txn, only, memo)?;
        let fresh: Vec<_> = parts
            .into_iter()
            .filter(|(offset, _)| *offset > self.latest)
            .collect();
        let count = fresh.len();
        let mut entries = Vec::with_capacity(count);
        for (i, (offset, part)) in fresh.into_iter().enumerate() {
            let json = part.finish(i + 1 == count);
            let chunk_end = self.cutter.push(json.len());
            entries.push(LogEntry {
                offset,
                json,
                chunk_end,
            });
        }
        if let Some(last) = entries.last() {
            assert!(
                last.offset > self.latest,
                "offsets-increase: {:?}",
                self.handle
            );
            self.latest = last.offset;
        }
        Ok(entries)
    }

    /// The entries of `txn`'s changes at `only` (every change when `None`) on this table.
    fn encode(
        &self,
        txn: &Transaction,
        only: Option<&[usize]>,
        memo: &mut EntryMemo,
    ) -> Result<Vec<(LogOffset, PartialEntry)>, Invalidation> {
        if matches!(self.filter, RowFilter::Broken) {
            return Err(Invalidation::WhereClause);
        }
        let mut parts = Vec::new();
        match only {
            Some(indices) => {
                for &i in indices {
                    self.encode_change(txn, i, memo, &mut parts)?;
                }
            }
            None => {
                for i in 0..txn.changes.len() {
                    self.encode_change(txn, i, memo, &mut parts)?;
                }
            }
        }
        Ok(parts)
    }

    /// Adds the entries of `txn.changes[i]` to `parts`, if it is on this table and passes the
    /// filter (protocol.md §5.5). Each entry is encoded once per encoder and transaction
    /// (`memo`): the filter decides per shape which entries it gets, never what they say.
    fn encode_change(
        &self,
        txn: &Transaction,
        i: usize,
        memo: &mut EntryMemo,
        parts: &mut Vec<(LogOffset, PartialEntry)>,
    ) -> Result<(), Invalidation> {
        let change = &txn.changes[i];
        if !change.relations().contains(&self.schema.oid) {
            return Ok(());
        }
        let enc = &self.encoder;
        let op = 2 * i as u64;
        let at = |op: u64| {
            let h = ChangeHeaders {
                lsn: txn.commit_lsn,
                op_position: op,
                xid: txn.xid.0,
            };
            (LogOffset::change(txn.commit_lsn, op), h)
        };
        let mut push =
            |part: Part, op: u64, encode: &dyn Fn(ChangeHeaders) -> Option<PartialEntry>| {
                let (offset, h) = at(op);
                if let Some(entry) = memo.entry(enc, (txn.commit_lsn, i, part), || encode(h)) {
                    parts.push((offset, entry));
                }
            };
        match change {
            Change::Insert { new, .. } => {
                if self.filter.admits(new) {
                    push(Part::Insert, op, &|h| Some(enc.insert(new, h, None)));
                }
            }
            Change::Update {
                old: Some(old),
                new,
                ..
            } => match (self.filter.admits(old), self.filter.admits(new)) {
                (true, true) if enc.key_changed(old, new) => {
                    push(Part::KeyChangeDelete, op, &|h| {
                        Some(enc.delete(old, h, Some(&enc.key(new))))
                    });
                    push(Part::KeyChangeInsert, op + 1, &|h| {
                        Some(enc.insert(new, h, Some(&enc.key(old))))
                    });
                }
                (true, true) => push(Part::Update, op, &|h| enc.update(old, new, h)),
                // Moved out of the shape: a delete of the old row.
                (true, false) => push(Part::Delete, op, &|h| Some(enc.delete(old, h, None))),
                // Moved in: an insert of the whole new row.
                (false, true) => push(Part::Insert, op, &|h| Some(enc.insert(new, h, None))),
                (false, false) => {}
            },
            Change::Delete { old: Some(old), .. } => {
                if self.filter.admits(old) {
                    push(Part::Delete, op, &|h| Some(enc.delete(old, h, None)));
                }
            }
            Change::Update { old: None, .. } | Change::Delete { old: None, .. } => {
                return Err(Invalidation::Unrepresentable(
                    "change without the full old row",
                ));
            }
            Change::Truncate { .. } => return Err(Invalidation::Truncated),
            Change::Unrepresentable { reason, .. } => {
                return Err(Invalidation::Unrepresentable(reason))
            }
        }
        Ok(())
    }
}

/// Which entry of a change: a change gives one entry, or two for a key change.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Part {
    /// The whole new row (an insert, or an update moving the row into the shape).
    Insert,
    /// The old row (a delete, or an update moving the row out of the shape).
    Delete,
    /// The changed columns (`None`: no selected column changed).
    Update,
    /// A key change's delete of the old key, then its insert of the new one.
    KeyChangeDelete,
    KeyChangeInsert,
}

/// The shapes' encoders, one per distinct value: shapes on one table selecting the same
/// columns in the same replica mode hold the same `Arc`, whatever their where clauses.
#[derive(Debug, Default)]
pub(crate) struct Encoders {
    by_value: BTreeMap<EntryEncoder, Weak<EntryEncoder>>,
    /// Size of `by_value` after its last sweep of encoders no shape holds any more.
    swept_len: usize,
}

impl Encoders {
    /// The shared encoder equal to `encoder`.
    fn share(&mut self, encoder: &Arc<EntryEncoder>) -> Arc<EntryEncoder> {
        if let Some(shared) = self.by_value.get(&**encoder).and_then(Weak::upgrade) {
            return shared;
        }
        if self.by_value.len() >= 2 * self.swept_len.max(32) {
            self.by_value.retain(|_, held| held.strong_count() > 0);
            self.swept_len = self.by_value.len();
        }
        self.by_value
            .insert((**encoder).clone(), Arc::downgrade(encoder));
        Arc::clone(encoder)
    }
}

/// Entries encoded once per shared encoder and reused by every shape that gets them: with
/// 2,000 shapes on one table a change was encoded 2,000 times. Cleared after each
/// transaction is routed.
#[derive(Debug, Default)]
pub(crate) struct EntryMemo {
    /// `(encoder address, commit LSN, change index, part)` → the entry, and the encoder,
    /// held so that its address names it until the memo is cleared. Only encoders that more
    /// than one shape holds are memoised.
    entries: BTreeMap<MemoKey, (Arc<EntryEncoder>, Option<PartialEntry>)>,
}

/// `(encoder address, commit LSN, change index, part)`.
type MemoKey = (usize, Lsn, usize, Part);

impl EntryMemo {
    /// The entry `encoder` gives for `part` of change `change` of the transaction committed
    /// at `commit_lsn`, encoded by `encode` once.
    fn entry(
        &mut self,
        encoder: &Arc<EntryEncoder>,
        (commit_lsn, change, part): (Lsn, usize, Part),
        encode: impl FnOnce() -> Option<PartialEntry>,
    ) -> Option<PartialEntry> {
        if Arc::strong_count(encoder) == 1 {
            return encode();
        }
        let key = (Arc::as_ptr(encoder) as usize, commit_lsn, change, part);
        let (_, entry) = self
            .entries
            .entry(key)
            .or_insert_with(|| (Arc::clone(encoder), encode()));
        entry.clone()
    }

    /// Forgets the transaction's entries.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }
}

/// The column indices a shape selects, in output order: the `columns` list (sorted by name)
/// or every column in `attnum` order.
pub fn selected_columns(definition: &ShapeDefinition, schema: &TableSchema) -> Vec<usize> {
    match &definition.columns {
        None => (0..schema.columns.len()).collect(),
        Some(names) => names
            .iter()
            .filter_map(|n| schema.column_index(n))
            .collect(),
    }
}
