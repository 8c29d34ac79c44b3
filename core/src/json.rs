//! Log entries as pre-serialised JSON lines (protocol.md §5).
//!
//! Entries are encoded once, when they enter a shape log, and copied to every reader as bytes.
//! Values are Postgres text output (JSON strings) or `null`; never numbers or objects.

use std::fmt::Write as _;

use crate::lsn::Lsn;
use crate::shape::{Replica, TableSchema};

/// A row as text values in the table's column order (`None` is SQL `NULL`).
pub type Row = [Option<String>];

/// Encodes one shape's entries: knows the relation, the selected columns and the key. Its
/// output is a function of its fields and the arguments, so shapes whose encoders are equal
/// share one (`shapes::Encoders`) and a change is encoded once for all of them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct EntryEncoder {
    relation_json: String,
    key_prefix: String,
    /// `(column index, JSON-escaped name)` of the selected columns, in output order.
    selected: Vec<(usize, String)>,
    key_columns: Vec<usize>,
    replica: Replica,
}

/// Replication headers of a change entry.
#[derive(Clone, Copy, Debug)]
pub struct ChangeHeaders {
    /// Commit LSN of the transaction.
    pub lsn: Lsn,
    /// The op part of the entry's offset.
    pub op_position: u64,
    /// The 32-bit transaction id.
    pub xid: u32,
}

/// How the last entry a transaction adds to a shape ends (`"last":true` closes its headers).
pub(crate) const LAST_SUFFIX: &str = ",\"last\":true}}";

/// An encoded change whose `last` flag is not known yet: call [`PartialEntry::finish`].
#[derive(Debug, PartialEq, Eq)]
pub struct PartialEntry {
    json: String,
}

impl Clone for PartialEntry {
    /// A copy with room for the longest ending, so that `finish` does not reallocate (one
    /// entry is copied to every shape sharing its encoder).
    fn clone(&self) -> Self {
        let mut json = String::with_capacity(self.json.len() + LAST_SUFFIX.len());
        json.push_str(&self.json);
        Self { json }
    }
}

impl PartialEntry {
    /// Closes the JSON object; `last` marks the transaction's last change in this shape.
    pub fn finish(mut self, last: bool) -> String {
        self.json.push_str(if last { LAST_SUFFIX } else { "}}" });
        self.json
    }
}

/// The operation a change entry carries.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Operation {
    Insert,
    Update,
    Delete,
}

impl EntryEncoder {
    /// An encoder for a shape on `schema` selecting `selected` (column indices, output order).
    pub fn new(schema: &TableSchema, selected: &[usize], replica: Replica) -> Self {
        let rel = &schema.relation;
        let mut relation_json = String::from("[");
        push_json_string(&mut relation_json, &rel.schema);
        relation_json.push(',');
        push_json_string(&mut relation_json, &rel.table);
        relation_json.push(']');
        let escape_name = |n: &str| n.replace('/', "//").replace('.', "..");
        let key_prefix = format!(
            "\"{}\".\"{}\"",
            escape_name(&rel.schema),
            escape_name(&rel.table)
        );
        let selected = selected
            .iter()
            .map(|&i| {
                let mut name = String::new();
                push_json_string(&mut name, &schema.columns[i].name);
                (i, name)
            })
            .collect();
        Self {
            relation_json,
            key_prefix,
            selected,
            key_columns: schema.key_columns(),
            replica,
        }
    }

    /// The row's key: `"<schema>"."<table>"/"<pk value>"…` (protocol.md §5.3).
    pub fn key(&self, row: &Row) -> String {
        let mut key = self.key_prefix.clone();
        for &i in &self.key_columns {
            match row.get(i).and_then(Option::as_deref) {
                Some(v) => {
                    key.push_str("/\"");
                    key.push_str(&v.replace('/', "//"));
                    key.push('"');
                }
                None => key.push_str("/_"),
            }
        }
        key
    }

    /// A snapshot row: an `insert` with only `operation` and `relation` headers.
    pub fn snapshot_row(&self, row: &Row) -> String {
        let mut out = self.open(&self.key(row), Some(row), None, Operation::Insert, |_| true);
        out.push_str("}}");
        out
    }

    /// A subset snapshot row (protocol.md §5.7): an `insert` with `operation`, `relation`
    /// and the read's `snapshot_mark`.
    pub fn subset_row(&self, row: &Row, snapshot_mark: u32) -> String {
        let mut out = self.open(&self.key(row), Some(row), None, Operation::Insert, |_| true);
        let _ = write!(out, ",\"snapshot_mark\":{snapshot_mark}}}}}");
        out
    }

    /// A replicated insert.
    pub fn insert(
        &self,
        new: &Row,
        h: ChangeHeaders,
        key_change_from: Option<&str>,
    ) -> PartialEntry {
        let mut json = self.open(&self.key(new), Some(new), None, Operation::Insert, |_| true);
        self.push_change_headers(&mut json, h);
        if let Some(from) = key_change_from {
            json.push_str(",\"key_change_from\":");
            push_json_string(&mut json, from);
        }
        PartialEntry { json }
    }

    /// A replicated delete: key columns only, or the full old row with `replica=full`.
    pub fn delete(&self, old: &Row, h: ChangeHeaders, key_change_to: Option<&str>) -> PartialEntry {
        let full = self.replica == Replica::Full;
        let keys = &self.key_columns;
        let mut json = self.open(&self.key(old), Some(old), None, Operation::Delete, |i| {
            full || keys.contains(&i)
        });
        self.push_change_headers(&mut json, h);
        if let Some(to) = key_change_to {
            json.push_str(",\"key_change_to\":");
            push_json_string(&mut json, to);
        }
        PartialEntry { json }
    }

    /// A replicated update of a row whose key did not change; `None` when no selected column
    /// changed (such an update is dropped). Callers split key changes into delete + insert.
    pub fn update(&self, old: &Row, new: &Row, h: ChangeHeaders) -> Option<PartialEntry> {
        let changed = |i: usize| old.get(i) != new.get(i);
        if !self.selected.iter().any(|&(i, _)| changed(i)) {
            return None;
        }
        let key = self.key(new);
        let keys = &self.key_columns;
        let mut json = match self.replica {
            Replica::Full => self.open(&key, Some(new), Some(old), Operation::Update, |_| true),
            Replica::Default => self.open(&key, Some(new), None, Operation::Update, |i| {
                keys.contains(&i) || changed(i)
            }),
        };
        self.push_change_headers(&mut json, h);
        Some(PartialEntry { json })
    }

    /// Whether the key columns differ between `old` and `new`.
    pub fn key_changed(&self, old: &Row, new: &Row) -> bool {
        self.key_columns.iter().any(|&i| old.get(i) != new.get(i))
    }

    /// `{"key":…,"value":{…}[,"old_value":{…}],"headers":{"operation":…,"relation":[…]` —
    /// left open for more headers.
    fn open(
        &self,
        key: &str,
        value: Option<&Row>,
        old_value: Option<&Row>,
        op: Operation,
        include: impl Fn(usize) -> bool,
    ) -> String {
        let mut out = String::with_capacity(64 + key.len() + 16 * self.selected.len());
        out.push_str("{\"key\":");
        push_json_string(&mut out, key);
        if let Some(row) = value {
            out.push_str(",\"value\":");
            self.push_values(&mut out, row, &include);
        }
        if let Some(old) = old_value {
            // `old_value` holds the old values of the changed columns only.
            let new = value.unwrap_or(old);
            out.push_str(",\"old_value\":");
            self.push_values(&mut out, old, &|i| old.get(i) != new.get(i));
        }
        out.push_str(",\"headers\":{\"operation\":\"");
        out.push_str(match op {
            Operation::Insert => "insert",
            Operation::Update => "update",
            Operation::Delete => "delete",
        });
        out.push_str("\",\"relation\":");
        out.push_str(&self.relation_json);
        out
    }

    fn push_values(&self, out: &mut String, row: &Row, include: &dyn Fn(usize) -> bool) {
        out.push('{');
        let mut first = true;
        for (i, name) in self.selected.iter().filter(|(i, _)| include(*i)) {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(name);
            out.push(':');
            match row.get(*i).and_then(Option::as_deref) {
                Some(v) => push_json_string(out, v),
                None => out.push_str("null"),
            }
        }
        out.push('}');
    }

    fn push_change_headers(&self, out: &mut String, h: ChangeHeaders) {
        let _ = write!(
            out,
            ",\"lsn\":\"{}\",\"op_position\":{},\"txids\":[{}]",
            h.lsn.as_u64(),
            h.op_position,
            h.xid
        );
    }
}

/// Appends `s` as a JSON string literal.
pub fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0x00..=0x1f => None,
            _ => continue,
        };
        out.push_str(&s[start..i]);
        match escape {
            Some(e) => out.push_str(e),
            None => {
                let _ = write!(out, "\\u{b:04x}");
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::Oid;
    use crate::shape::{ColumnSchema, RelationName};

    fn schema(pk: bool) -> TableSchema {
        let col = |name: &str, pk_index: Option<u32>| ColumnSchema {
            name: name.into(),
            type_oid: 25,
            typname: "text".into(),
            dims: 0,
            not_null: pk_index.is_some(),
            pk_index,
            modifiers: vec![],
            is_enum: false,
        };
        TableSchema {
            server_version: crate::shape::ServerVersion::PG_15,
            oid: Oid(1),
            relation: RelationName {
                schema: "public".into(),
                table: "items".into(),
            },
            columns: vec![
                col("id", pk.then_some(0)),
                col("title", None),
                col("n", None),
            ],
        }
    }

    fn row(vals: &[Option<&str>]) -> Vec<Option<String>> {
        vals.iter().map(|v| v.map(str::to_owned)).collect()
    }

    const H: ChangeHeaders = ChangeHeaders {
        lsn: Lsn(24_187_768),
        op_position: 2,
        xid: 745,
    };

    #[test]
    fn snapshot_rows_carry_only_operation_and_relation() {
        let e = EntryEncoder::new(&schema(true), &[0, 1, 2], Replica::Default);
        assert_eq!(
            e.snapshot_row(&row(&[Some("42"), Some("foo"), None])),
            r#"{"key":"\"public\".\"items\"/\"42\"","value":{"id":"42","title":"foo","n":null},"headers":{"operation":"insert","relation":["public","items"]}}"#
        );
    }

    #[test]
    fn subset_rows_carry_the_snapshot_mark() {
        let e = EntryEncoder::new(&schema(true), &[0, 1], Replica::Default);
        assert_eq!(
            e.subset_row(&row(&[Some("7"), Some("b"), None]), 99),
            r#"{"key":"\"public\".\"items\"/\"7\"","value":{"id":"7","title":"b"},"headers":{"operation":"insert","relation":["public","items"],"snapshot_mark":99}}"#
        );
    }

    #[test]
    fn inserts_carry_decimal_lsn_op_position_txids_and_last() {
        let e = EntryEncoder::new(&schema(true), &[0, 1], Replica::Default);
        let json = e
            .insert(&row(&[Some("1"), Some("a"), Some("x")]), H, None)
            .finish(true);
        assert_eq!(
            json,
            r#"{"key":"\"public\".\"items\"/\"1\"","value":{"id":"1","title":"a"},"headers":{"operation":"insert","relation":["public","items"],"lsn":"24187768","op_position":2,"txids":[745],"last":true}}"#
        );
    }

    // Found by sim: seed 0x9f
    #[test]
    fn only_a_transactions_last_entry_in_a_shape_ends_the_transaction() {
        let e = EntryEncoder::new(&schema(true), &[0, 1], Replica::Default);
        let entry = |last: bool| crate::ports::LogEntry {
            offset: crate::LogOffset::change(H.lsn, H.op_position),
            json: e
                .insert(&row(&[Some("1"), Some("a"), None]), H, None)
                .finish(last),
            chunk_end: false,
        };
        assert!(entry(true).ends_transaction());
        assert!(!entry(false).ends_transaction());
    }

    #[test]
    fn default_updates_carry_key_and_changed_columns_only() {
        let e = EntryEncoder::new(&schema(true), &[0, 1, 2], Replica::Default);
        let old = row(&[Some("1"), Some("a"), Some("x")]);
        let new = row(&[Some("1"), Some("b"), Some("x")]);
        let json = e.update(&old, &new, H).expect("changed").finish(false);
        assert!(
            json.contains(r#""value":{"id":"1","title":"b"},"headers""#),
            "{json}"
        );
        assert!(e.update(&old, &old, H).is_none());
    }

    #[test]
    fn full_updates_carry_new_row_and_old_values_of_changed_columns() {
        let e = EntryEncoder::new(&schema(true), &[0, 1, 2], Replica::Full);
        let old = row(&[Some("1"), Some("a"), None]);
        let new = row(&[Some("1"), Some("b"), None]);
        let json = e.update(&old, &new, H).expect("changed").finish(false);
        assert!(
            json.contains(r#""value":{"id":"1","title":"b","n":null},"old_value":{"title":"a"}"#),
            "{json}"
        );
    }

    #[test]
    fn deletes_carry_key_columns_or_full_row() {
        let old = row(&[Some("1"), Some("a"), None]);
        let d = EntryEncoder::new(&schema(true), &[0, 1, 2], Replica::Default);
        assert!(d
            .delete(&old, H, None)
            .finish(false)
            .contains(r#""value":{"id":"1"},"#));
        let f = EntryEncoder::new(&schema(true), &[0, 1, 2], Replica::Full);
        assert!(f
            .delete(&old, H, None)
            .finish(false)
            .contains(r#""value":{"id":"1","title":"a","n":null},"#));
    }

    #[test]
    fn keys_double_slashes_and_mark_nulls_for_tables_without_primary_key() {
        let e = EntryEncoder::new(&schema(false), &[0, 1, 2], Replica::Default);
        // no PK: all columns sorted by name (id, n, title)
        assert_eq!(
            e.key(&row(&[Some("a/b"), Some("x"), None])),
            r#""public"."items"/"a//b"/_/"x""#
        );
    }

    #[test]
    fn relation_names_escape_dots_and_slashes_in_keys() {
        let mut s = schema(true);
        s.relation = RelationName {
            schema: "a.b".into(),
            table: "c/d".into(),
        };
        let e = EntryEncoder::new(&s, &[0], Replica::Default);
        assert_eq!(
            e.key(&row(&[Some("1"), None, None])),
            r#""a..b"."c//d"/"1""#
        );
    }

    #[test]
    fn json_strings_escape_quotes_backslashes_and_control_characters() {
        let mut out = String::new();
        push_json_string(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(out, r#""a\"b\\c\nd\u0001é""#);
    }
}
