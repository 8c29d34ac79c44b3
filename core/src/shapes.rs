//! Live shapes: routing committed transactions into per-shape log entries.

use std::sync::Arc;

use crate::chunk::ChunkCutter;
use crate::json::{ChangeHeaders, EntryEncoder, PartialEntry};
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
    encoder: EntryEncoder,
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
        let encoder = EntryEncoder::new(&schema, &selected, definition.replica);
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
    ) -> Result<Vec<LogEntry>, Invalidation> {
        let parts = self.encode(txn, only)?;
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
    ) -> Result<Vec<(LogOffset, PartialEntry)>, Invalidation> {
        if matches!(self.filter, RowFilter::Broken) {
            return Err(Invalidation::WhereClause);
        }
        let mut parts = Vec::new();
        match only {
            Some(indices) => {
                for &i in indices {
                    self.encode_change(txn, i, &mut parts)?;
                }
            }
            None => {
                for i in 0..txn.changes.len() {
                    self.encode_change(txn, i, &mut parts)?;
                }
            }
        }
        Ok(parts)
    }

    /// Adds the entries of `txn.changes[i]` to `parts`, if it is on this table and passes the
    /// filter (protocol.md §5.5).
    fn encode_change(
        &self,
        txn: &Transaction,
        i: usize,
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
        match change {
            Change::Insert { new, .. } => {
                if self.filter.admits(new) {
                    let (offset, h) = at(op);
                    parts.push((offset, enc.insert(new, h, None)));
                }
            }
            Change::Update {
                old: Some(old),
                new,
                ..
            } => match (self.filter.admits(old), self.filter.admits(new)) {
                (true, true) if enc.key_changed(old, new) => {
                    let (old_key, new_key) = (enc.key(old), enc.key(new));
                    let (offset, h) = at(op);
                    parts.push((offset, enc.delete(old, h, Some(&new_key))));
                    let (offset, h) = at(op + 1);
                    parts.push((offset, enc.insert(new, h, Some(&old_key))));
                }
                (true, true) => {
                    let (offset, h) = at(op);
                    parts.extend(enc.update(old, new, h).map(|e| (offset, e)));
                }
                // Moved out of the shape: a delete of the old row.
                (true, false) => {
                    let (offset, h) = at(op);
                    parts.push((offset, enc.delete(old, h, None)));
                }
                // Moved in: an insert of the whole new row.
                (false, true) => {
                    let (offset, h) = at(op);
                    parts.push((offset, enc.insert(new, h, None)));
                }
                (false, false) => {}
            },
            Change::Delete { old: Some(old), .. } => {
                if self.filter.admits(old) {
                    let (offset, h) = at(op);
                    parts.push((offset, enc.delete(old, h, None)));
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
