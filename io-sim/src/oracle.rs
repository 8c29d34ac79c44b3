//! The oracle: what a client must hold for a shape at a given offset.
//!
//! A shape's log is its snapshot followed by every later committed transaction on its table,
//! so the rows a client holds after applying the log up to offset `L` are the table's rows
//! after exactly these transactions: those visible to the shape's snapshot, and those whose
//! commit LSN is at most `L` (offsets name commit LSNs, protocol.md §2). Commits are atomic in
//! the Postgres model, so the visible set is a prefix of the commit order and this is exactly
//! `SELECT … FROM table` at the transaction boundary of `L` (deploy-semantics §3 invariant 3).
//!
//! Visibility is computed here, in 64 bits, from the snapshot's `xmin`/`xmax`/`xip` — never
//! with the core's own `PgSnapshot::is_visible`, so a wrong core (the `mutant-skip-xip-filter`
//! mutant) cannot agree with itself.

use std::collections::BTreeMap;

use ampere_core::json::EntryEncoder;
use ampere_core::lsn::Lsn;
use ampere_core::offset::LogOffset;
use ampere_core::shape::{Replica, TableSchema};
use ampere_core::snapshot::PgSnapshot;
use ampere_core::where_clause::WhereClause;

/// A row as the model stores it: text values in column order (`None` = NULL).
pub type Row = Vec<Option<String>>;

/// Rows as a client materialises them: key → column → value.
pub type Rows = BTreeMap<String, BTreeMap<String, Option<String>>>;

/// One change to the oracle's table.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Change {
    /// A new row.
    Insert(Row),
    /// A row replaced (the old row names the key that goes away).
    Update {
        /// The row before.
        old: Row,
        /// The row after.
        new: Row,
    },
    /// A row removed.
    Delete(Row),
    /// Every row removed.
    Truncate,
    /// A column appended (existing rows read NULL in it).
    AddColumn(String),
}

/// A committed transaction, restricted to the oracle's table.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Txn {
    /// Its full (64-bit) xid.
    pub xid: u64,
    /// Its commit LSN (the `tx` part of its offsets).
    pub commit_lsn: Lsn,
    /// Its changes to this table, in order.
    pub changes: Vec<Change>,
}

/// Every committed transaction that touched one table, in commit order.
#[derive(Clone, Debug)]
pub struct TableHistory {
    schema: TableSchema,
    txns: Vec<Txn>,
}

impl TableHistory {
    /// A history of the table as created with `schema`.
    pub fn new(schema: TableSchema) -> Self {
        Self {
            schema,
            txns: Vec::new(),
        }
    }

    /// Records a commit; commit LSNs must increase.
    pub fn push(&mut self, txn: Txn) {
        if let Some(last) = self.txns.last() {
            assert!(
                txn.commit_lsn > last.commit_lsn,
                "oracle: commits out of order: {} after {}",
                txn.commit_lsn,
                last.commit_lsn
            );
        }
        self.txns.push(txn);
    }

    /// The table's initial schema.
    pub fn schema(&self) -> &TableSchema {
        &self.schema
    }

    /// The last commit LSN recorded.
    pub fn last_commit(&self) -> Option<Lsn> {
        self.txns.last().map(|t| t.commit_lsn)
    }

    /// The last commit that adds an entry to (or invalidates) a shape with `filter` selecting
    /// `columns` (`None`: every column): a shape's log, and so a converged client's offset,
    /// ends there. A where-shape skips changes to rows outside it; any shape skips updates
    /// that change none of its columns.
    pub fn last_commit_for(
        &self,
        columns: Option<&[String]>,
        filter: Option<&WhereClause>,
    ) -> Option<Lsn> {
        let mut names: Vec<String> = self.schema.columns.iter().map(|c| c.name.clone()).collect();
        let admits = |row: &Row| filter.is_none_or(|f| f.matches(row));
        let mut last = None;
        for txn in &self.txns {
            let mut produces = false;
            for change in &txn.changes {
                produces |= match change {
                    Change::Insert(row) | Change::Delete(row) => admits(row),
                    Change::Update { old, new } => match (admits(old), admits(new)) {
                        (true, true) => old.iter().zip(new).enumerate().any(|(i, (a, b))| {
                            a != b
                                && names
                                    .get(i)
                                    .is_none_or(|n| columns.is_none_or(|cols| cols.contains(n)))
                        }),
                        (false, false) => false,
                        _ => true,
                    },
                    Change::Truncate => true,
                    Change::AddColumn(name) => {
                        names.push(name.clone());
                        true
                    }
                };
            }
            if produces {
                last = Some(txn.commit_lsn);
            }
        }
        last
    }

    /// What a client of a shape with `snapshot` holds at `offset`, projected to `columns`
    /// (`None`: every column the snapshot saw).
    pub fn rows_at(
        &self,
        snapshot: &PgSnapshot,
        offset: LogOffset,
        columns: Option<&[String]>,
    ) -> Rows {
        self.rows_where(snapshot, offset, columns, None)
    }

    /// [`rows_at`](Self::rows_at) of a shape with a where clause: only the rows `filter`
    /// matches, evaluated on the whole row (every column in table order) before projection.
    /// A shape's log routes each change through the filter (insert iff the new row matches,
    /// delete iff the old one did, an update moving a row in or out as an insert or delete),
    /// so what a client holds is the filter applied to the table at that offset.
    pub fn rows_where(
        &self,
        snapshot: &PgSnapshot,
        offset: LogOffset,
        columns: Option<&[String]>,
        filter: Option<&WhereClause>,
    ) -> Rows {
        let upto = match offset {
            LogOffset::At { tx, .. } if tx > 0 => Some(Lsn(tx)),
            _ => None,
        };
        let mut names: Vec<String> = self.schema.columns.iter().map(|c| c.name.clone()).collect();
        let mut snapshot_names: Option<Vec<String>> = None;
        let mut rows: BTreeMap<String, Row> = BTreeMap::new();
        let encoder = EntryEncoder::new(&self.schema, &[], Replica::Default);
        for txn in &self.txns {
            let visible = is_visible(snapshot, txn.xid);
            if !visible && snapshot_names.is_none() {
                snapshot_names = Some(names.clone());
            }
            if !(visible || upto.is_some_and(|l| txn.commit_lsn <= l)) {
                continue;
            }
            for change in &txn.changes {
                match change {
                    Change::Insert(row) => {
                        rows.insert(encoder.key(row), row.clone());
                    }
                    Change::Update { old, new } => {
                        rows.remove(&encoder.key(old));
                        rows.insert(encoder.key(new), new.clone());
                    }
                    Change::Delete(old) => {
                        rows.remove(&encoder.key(old));
                    }
                    Change::Truncate => rows.clear(),
                    Change::AddColumn(name) => {
                        names.push(name.clone());
                        for row in rows.values_mut() {
                            row.push(None);
                        }
                    }
                }
            }
        }
        let shape_names = snapshot_names.unwrap_or_else(|| names.clone());
        let selected: Vec<&String> = match columns {
            Some(cols) => shape_names.iter().filter(|n| cols.contains(n)).collect(),
            None => shape_names.iter().collect(),
        };
        rows.into_iter()
            .filter(|(_, row)| filter.is_none_or(|f| f.matches(row)))
            .map(|(key, row)| {
                let values = selected
                    .iter()
                    .filter_map(|name| {
                        let i = names.iter().position(|n| n == *name)?;
                        Some(((*name).clone(), row.get(i).cloned().flatten()))
                    })
                    .collect();
                (key, values)
            })
            .collect()
    }
}

/// Whether a transaction with full xid `xid` is in the snapshot's rows.
pub fn is_visible(snapshot: &PgSnapshot, xid: u64) -> bool {
    if xid < snapshot.xmin.0 {
        return true;
    }
    if xid >= snapshot.xmax.0 {
        return false;
    }
    !snapshot.xip.iter().any(|x| x.0 == xid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ampere_core::shape::{ColumnSchema, RelationName};
    use ampere_core::snapshot::FullXid;

    fn schema() -> TableSchema {
        let column = |name: &str, pk: Option<u32>| ColumnSchema {
            name: name.into(),
            type_oid: if pk.is_some() { 20 } else { 25 },
            typname: if pk.is_some() { "int8" } else { "text" }.into(),
            dims: 0,
            not_null: pk.is_some(),
            pk_index: pk,
            modifiers: Vec::new(),
            is_enum: false,
        };
        TableSchema {
            server_version: ampere_core::shape::ServerVersion::PG_15,
            oid: ampere_core::pgoutput::Oid(16384),
            relation: RelationName {
                schema: "public".into(),
                table: "items".into(),
            },
            columns: vec![column("id", Some(0)), column("value", None)],
        }
    }

    fn row(id: &str, value: &str) -> Row {
        vec![Some(id.into()), Some(value.into())]
    }

    fn snapshot(xmin: u64, xmax: u64, xip: &[u64]) -> PgSnapshot {
        PgSnapshot {
            xmin: FullXid(xmin),
            xmax: FullXid(xmax),
            xip: xip.iter().copied().map(FullXid).collect(),
        }
    }

    fn history() -> TableHistory {
        let mut h = TableHistory::new(schema());
        let txn = |xid, lsn, changes| Txn {
            xid,
            commit_lsn: Lsn(lsn),
            changes,
        };
        h.push(txn(10, 100, vec![Change::Insert(row("1", "a"))]));
        h.push(txn(12, 200, vec![Change::Insert(row("2", "b"))]));
        h.push(txn(
            11,
            300,
            vec![Change::Update {
                old: row("1", "a"),
                new: row("1", "c"),
            }],
        ));
        h.push(txn(13, 400, vec![Change::Delete(row("2", "b"))]));
        h
    }

    fn values(rows: &Rows) -> Vec<(String, Option<String>)> {
        rows.values()
            .map(|r| (r["id"].clone().unwrap_or_default(), r["value"].clone()))
            .collect()
    }

    #[test]
    fn a_transaction_in_progress_at_the_snapshot_appears_only_once_the_offset_passes_it() {
        // xid 11 was in progress at the snapshot (10 and 12 committed before it).
        let s = snapshot(11, 13, &[11]);
        let at_snapshot = history().rows_at(&s, LogOffset::SNAPSHOT_END, None);
        assert_eq!(
            values(&at_snapshot),
            [
                ("1".into(), Some("a".into())),
                ("2".into(), Some("b".into()))
            ]
        );
        let after = history().rows_at(&s, LogOffset::change(Lsn(300), 0), None);
        assert_eq!(
            values(&after),
            [
                ("1".into(), Some("c".into())),
                ("2".into(), Some("b".into()))
            ]
        );
        let end = history().rows_at(&s, LogOffset::change(Lsn(400), 2), None);
        assert_eq!(values(&end), [("1".into(), Some("c".into()))]);
    }

    #[test]
    fn keys_use_the_protocol_format_and_columns_project() {
        let s = snapshot(20, 20, &[]);
        let only_id = ["id".to_string()];
        let rows = history().rows_at(&s, LogOffset::SNAPSHOT_END, Some(&only_id));
        assert_eq!(rows.keys().collect::<Vec<_>>(), [r#""public"."items"/"1""#]);
        assert_eq!(rows.values().next().map(BTreeMap::len), Some(1));
    }

    #[test]
    fn a_where_clause_keeps_the_rows_it_matches_as_updates_move_them_in_and_out() {
        let s = snapshot(11, 13, &[11]);
        let canonical = WhereClause::canonicalize("value IN ('a', 'c')", &Default::default())
            .expect("canonical");
        let filter = WhereClause::from_canonical(&canonical, &schema()).expect("compiles");
        let at = |lsn| history().rows_where(&s, lsn, None, Some(&filter));
        // Snapshot: 1 = a (in), 2 = b (out).
        assert_eq!(
            values(&at(LogOffset::SNAPSHOT_END)),
            [("1".into(), Some("a".into()))]
        );
        // 1 becomes c: still in.
        assert_eq!(
            values(&at(LogOffset::change(Lsn(300), 0))),
            [("1".into(), Some("c".into()))]
        );
        let only_b = WhereClause::from_canonical("value = 'b'", &schema()).expect("compiles");
        let rows = history().rows_where(&s, LogOffset::SNAPSHOT_END, None, Some(&only_b));
        assert_eq!(values(&rows), [("2".into(), Some("b".into()))]);
        // Projection happens after the filter: the filter's column need not be selected.
        let only_id = ["id".to_string()];
        let rows = history().rows_where(&s, LogOffset::SNAPSHOT_END, Some(&only_id), Some(&only_b));
        assert_eq!(rows.keys().collect::<Vec<_>>(), [r#""public"."items"/"2""#]);
        let end = history().rows_where(&s, LogOffset::change(Lsn(400), 2), None, Some(&only_b));
        assert!(end.is_empty());
    }

    #[test]
    fn a_shape_log_ends_at_the_last_commit_that_reaches_it() {
        let only_b = WhereClause::from_canonical("value = 'b'", &schema()).expect("compiles");
        let h = history();
        assert_eq!(h.last_commit_for(None, None), Some(Lsn(400)));
        // Row 2 (b) is inserted at 200 and deleted at 400.
        assert_eq!(h.last_commit_for(None, Some(&only_b)), Some(Lsn(400)));
        let only_a = WhereClause::from_canonical("value = 'a'", &schema()).expect("compiles");
        // Row 1 leaves the shape (a → c) at 300.
        assert_eq!(h.last_commit_for(None, Some(&only_a)), Some(Lsn(300)));
        let only_z = WhereClause::from_canonical("value = 'z'", &schema()).expect("compiles");
        assert_eq!(h.last_commit_for(None, Some(&only_z)), None);
        // An update of an unselected column only adds nothing.
        let only_id = ["id".to_string()];
        let mut h = TableHistory::new(schema());
        h.push(Txn {
            xid: 10,
            commit_lsn: Lsn(100),
            changes: vec![Change::Insert(row("1", "a"))],
        });
        h.push(Txn {
            xid: 11,
            commit_lsn: Lsn(200),
            changes: vec![Change::Update {
                old: row("1", "a"),
                new: row("1", "b"),
            }],
        });
        assert_eq!(h.last_commit_for(Some(&only_id), None), Some(Lsn(100)));
    }

    #[test]
    fn an_added_column_reads_null_for_rows_that_existed() {
        let mut h = history();
        h.push(Txn {
            xid: 14,
            commit_lsn: Lsn(500),
            changes: vec![Change::AddColumn("extra".into())],
        });
        let s = snapshot(20, 20, &[]);
        let rows = h.rows_at(&s, LogOffset::SNAPSHOT_END, None);
        let row = rows.values().next().expect("one row");
        assert_eq!(row.get("extra"), Some(&None));
    }

    #[test]
    fn visibility_compares_full_xids_across_an_epoch() {
        let epoch = 1u64 << 32;
        let s = snapshot(epoch - 2, epoch + 3, &[epoch + 1]);
        assert!(is_visible(&s, epoch - 3));
        assert!(is_visible(&s, epoch));
        assert!(!is_visible(&s, epoch + 1));
        assert!(!is_visible(&s, epoch + 3));
    }
}
