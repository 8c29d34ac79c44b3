//! Which shapes a change can concern: per table, an index from column values to the shapes
//! whose where clause pins that column (`col = c`, `col IN (…)`, `col = ANY('{…}')`,
//! `c = ANY(arr_col)`, `arr_col @> '{…}'`, alone or under `AND`), plus the shapes with no
//! such atom. A change is routed to the shapes its old and new rows' values name and to the
//! unindexed ones, so a change that matches no shape costs a few lookups, not one
//! evaluation per shape (where-language.md §2.11). Routing only: every candidate shape still
//! evaluates its whole clause.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use crate::shape::ShapeHandle;
use crate::txn::{Change, RowValues};
use crate::where_clause::expr::{ArrayOp, CmpOp, Expr};
use crate::where_clause::numeric::Numeric;
use crate::where_clause::types::{Scalar, Type};
use crate::where_clause::value::{parse_array, parse_scalar, Value};
use crate::where_clause::WhereClause;

/// The shapes on one table and their index.
#[derive(Debug, Default)]
pub(crate) struct TableRoutes {
    /// Every shape on the table.
    shapes: BTreeSet<ShapeHandle>,
    /// Shapes without an indexable atom: candidates for every change.
    unindexed: BTreeSet<ShapeHandle>,
    /// Per indexed column, value → shapes.
    indexes: BTreeMap<IndexColumn, BTreeMap<IndexKey, BTreeSet<ShapeHandle>>>,
    /// Where each indexed shape is registered, for removal.
    registered: BTreeMap<ShapeHandle, (IndexColumn, Vec<IndexKey>)>,
}

/// A column an index reads: its value, or each element of its array value.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum IndexColumn {
    /// The column's value (`col = c`).
    Value { index: usize, scalar: ScalarKey },
    /// The elements of an array column (`c = ANY(col)`, `col @> '{c,…}'`).
    Elements { index: usize, scalar: ScalarKey },
}

/// `Scalar` with an order, for index keys.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
struct ScalarKey(u8);

/// A value as an index key: equal keys iff Postgres's `=` holds.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum IndexKey {
    Bool(bool),
    Int(i64),
    Numeric(Numeric),
    Text(String),
    Uuid(u128),
    Date(i32),
    Time(i64),
    Timestamp(i64),
}

impl TableRoutes {
    /// Adds `handle`, filtered by `clause` (`None`: every row).
    pub(crate) fn insert(&mut self, handle: &ShapeHandle, clause: Option<&WhereClause>) {
        self.shapes.insert(handle.clone());
        match clause.and_then(|c| indexable(c.expr())) {
            Some((column, keys)) => {
                let index = self.indexes.entry(column).or_default();
                for key in &keys {
                    index.entry(key.clone()).or_default().insert(handle.clone());
                }
                self.registered.insert(handle.clone(), (column, keys));
            }
            None => {
                self.unindexed.insert(handle.clone());
            }
        }
    }

    /// Removes `handle`; whether the table has no shape left.
    pub(crate) fn remove(&mut self, handle: &ShapeHandle) -> bool {
        self.shapes.remove(handle);
        self.unindexed.remove(handle);
        if let Some((column, keys)) = self.registered.remove(handle) {
            if let Some(index) = self.indexes.get_mut(&column) {
                for key in keys {
                    if let Some(set) = index.get_mut(&key) {
                        set.remove(handle);
                        if set.is_empty() {
                            index.remove(&key);
                        }
                    }
                }
                if index.is_empty() {
                    self.indexes.remove(&column);
                }
            }
        }
        self.shapes.is_empty()
    }

    /// Every shape on the table.
    pub(crate) fn shapes(&self) -> &BTreeSet<ShapeHandle> {
        &self.shapes
    }

    /// The shapes every change on the table may concern: those without an indexable atom.
    pub(crate) fn unindexed(&self) -> &BTreeSet<ShapeHandle> {
        &self.unindexed
    }

    /// Calls `found` for each shape `change` may concern (a shape may be named twice).
    #[cfg(test)]
    fn candidates(&self, change: &Change, mut found: impl FnMut(&ShapeHandle)) {
        if invalidates(change) {
            self.shapes.iter().for_each(found);
            return;
        }
        self.unindexed.iter().for_each(&mut found);
        self.indexed_candidates(change, found);
    }

    /// Calls `found` for each indexed shape the old and new values of `change` name (a shape
    /// may be named twice); nothing for a change that [`invalidates`].
    pub(crate) fn indexed_candidates(&self, change: &Change, mut found: impl FnMut(&ShapeHandle)) {
        let rows: [Option<&RowValues>; 2] = match change {
            Change::Insert { new, .. } => [Some(new), None],
            Change::Update {
                old: Some(old),
                new,
                ..
            } => [Some(old), Some(new)],
            Change::Delete { old: Some(old), .. } => [Some(old), None],
            Change::Update { old: None, .. }
            | Change::Delete { old: None, .. }
            | Change::Truncate { .. }
            | Change::Unrepresentable { .. } => return,
        };
        for (column, index) in &self.indexes {
            for row in rows.iter().flatten() {
                for key in row_keys(*column, row) {
                    if let Some(shapes) = index.get(&key) {
                        shapes.iter().for_each(&mut found);
                    }
                }
            }
        }
    }
}

/// Whether `change` concerns every shape on its tables (they are invalidated).
pub(crate) const fn invalidates(change: &Change) -> bool {
    matches!(
        change,
        Change::Update { old: None, .. }
            | Change::Delete { old: None, .. }
            | Change::Truncate { .. }
            | Change::Unrepresentable { .. }
    )
}

/// The index keys a row has for `column` (none for NULL or a value that does not parse).
fn row_keys(column: IndexColumn, row: &RowValues) -> Vec<IndexKey> {
    match column {
        IndexColumn::Value { index, scalar } => {
            let Some(Some(text)) = row.get(index) else {
                return Vec::new();
            };
            parse_scalar(Cow::Borrowed(text), scalar_of(scalar))
                .ok()
                .and_then(|v| key(&v))
                .into_iter()
                .collect()
        }
        IndexColumn::Elements { index, scalar } => {
            let Some(Some(text)) = row.get(index) else {
                return Vec::new();
            };
            match parse_array(text, scalar_of(scalar)) {
                Ok(Value::Array(array)) => {
                    array.elements.iter().flatten().filter_map(key).collect()
                }
                _ => Vec::new(),
            }
        }
    }
}

/// The indexable atom of a clause and the keys a matching row must have, if there is one.
fn indexable(expr: &Expr) -> Option<(IndexColumn, Vec<IndexKey>)> {
    match expr {
        Expr::And(args) => args.iter().find_map(indexable),
        Expr::Or(args) => {
            let mut parts = args.iter().map(indexable);
            let (column, mut keys) = parts.next()??;
            for part in parts {
                let (other, more) = part?;
                if other != column {
                    return None;
                }
                keys.extend(more);
            }
            Some((column, keys))
        }
        Expr::Compare {
            op: CmpOp::Eq,
            left,
            right,
        } => match (left.as_ref(), right.as_ref()) {
            (column @ Expr::Column { .. }, Expr::Const { value, .. })
            | (Expr::Const { value, .. }, column @ Expr::Column { .. }) => {
                Some((value_column(column)?, vec![key(value)?]))
            }
            _ => None,
        },
        Expr::Quantified {
            op: CmpOp::Eq,
            left,
            array,
            all: false,
        } => match (left.as_ref(), array.as_ref()) {
            (
                column @ Expr::Column { .. },
                Expr::Const {
                    value: Value::Array(a),
                    ..
                },
            ) => {
                let keys = a
                    .elements
                    .iter()
                    .flatten()
                    .map(key)
                    .collect::<Option<Vec<_>>>()?;
                Some((value_column(column)?, keys))
            }
            (Expr::Const { value, .. }, column @ Expr::Column { .. }) => {
                Some((elements_column(column)?, vec![key(value)?]))
            }
            _ => None,
        },
        Expr::ArrayOp { op, left, right } => {
            let ((ArrayOp::Contains, column @ Expr::Column { .. }, Expr::Const { value, .. })
            | (ArrayOp::ContainedBy, Expr::Const { value, .. }, column @ Expr::Column { .. })) =
                (op, left.as_ref(), right.as_ref())
            else {
                return None;
            };
            let Value::Array(array) = value else {
                return None;
            };
            // Containing `{a, b}` needs `a`; an empty (or NULL-holding) constant pins nothing.
            let first = array.elements.first()?.as_ref()?;
            Some((elements_column(column)?, vec![key(first)?]))
        }
        _ => None,
    }
}

fn value_column(expr: &Expr) -> Option<IndexColumn> {
    let Expr::Column {
        index,
        ty: Type::Scalar(scalar),
        ..
    } = expr
    else {
        return None;
    };
    Some(IndexColumn::Value {
        index: *index,
        scalar: scalar_key(*scalar)?,
    })
}

fn elements_column(expr: &Expr) -> Option<IndexColumn> {
    let Expr::Column {
        index,
        ty: Type::Array(scalar),
        ..
    } = expr
    else {
        return None;
    };
    Some(IndexColumn::Elements {
        index: *index,
        scalar: scalar_key(*scalar)?,
    })
}

/// The indexable scalars: those whose `=` is plain equality of the key (not floats: NaN).
const INDEXABLE: [Scalar; 13] = [
    Scalar::Bool,
    Scalar::Int2,
    Scalar::Int4,
    Scalar::Int8,
    Scalar::Numeric,
    Scalar::Text,
    Scalar::Varchar,
    Scalar::Bpchar,
    Scalar::Uuid,
    Scalar::Date,
    Scalar::Time,
    Scalar::Timestamp,
    Scalar::Timestamptz,
];

fn scalar_key(scalar: Scalar) -> Option<ScalarKey> {
    INDEXABLE
        .iter()
        .position(|s| *s == scalar)
        .and_then(|i| u8::try_from(i).ok())
        .map(ScalarKey)
}

fn scalar_of(key: ScalarKey) -> Scalar {
    INDEXABLE[usize::from(key.0)]
}

fn key(value: &Value<'_>) -> Option<IndexKey> {
    Some(match value {
        Value::Bool(b) => IndexKey::Bool(*b),
        Value::Int(i) => IndexKey::Int(*i),
        Value::Numeric(n) => IndexKey::Numeric(n.clone()),
        Value::Text(t) => IndexKey::Text(t.to_string()),
        // bpchar equality ignores trailing blanks.
        Value::Bpchar(t) => IndexKey::Text(t.trim_end_matches(' ').to_owned()),
        Value::Uuid(u) => IndexKey::Uuid(*u),
        Value::Date(d) => IndexKey::Date(d.0),
        Value::Time(t) => IndexKey::Time(t.0),
        Value::Timestamp(t) => IndexKey::Timestamp(t.0),
        Value::Timestamptz(t) => IndexKey::Timestamp(t.0),
        // Intervals equal across representations (`1 mon` = `30 days`): not indexed.
        Value::Null | Value::Float(_) | Value::Interval(_) | Value::Array(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::Oid;
    use crate::shape::{ColumnSchema, RelationName, TableSchema};
    use crate::where_clause::Params;

    fn table() -> TableSchema {
        let column = |name: &str, type_oid: u32, typname: &str| ColumnSchema {
            name: name.into(),
            type_oid,
            typname: typname.into(),
            dims: 0,
            not_null: false,
            pk_index: None,
            modifiers: vec![],
            is_enum: false,
        };
        TableSchema {
            server_version: crate::shape::ServerVersion::PG_15,
            oid: Oid(1),
            relation: RelationName {
                schema: "public".into(),
                table: "t".into(),
            },
            columns: vec![
                column("id", 23, "int4"),
                column("n", 23, "int4"),
                column("tags", 1009, "text"),
                column("price", 1700, "numeric"),
            ],
        }
    }

    fn routes(clauses: &[&str]) -> (TableRoutes, Vec<ShapeHandle>) {
        let mut routes = TableRoutes::default();
        let mut handles = Vec::new();
        for (i, text) in clauses.iter().enumerate() {
            let handle = ShapeHandle::from_string(format!("h{i}"));
            let clause = WhereClause::compile(text, &Params::new(), &table()).expect("valid");
            routes.insert(&handle, Some(&clause));
            handles.push(handle);
        }
        (routes, handles)
    }

    fn candidates(routes: &TableRoutes, change: &Change) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        routes.candidates(change, |h| {
            found.insert(h.as_str().to_owned());
        });
        found
    }

    fn row(values: &[Option<&str>]) -> RowValues {
        values.iter().map(|v| v.map(str::to_owned)).collect()
    }

    fn insert(values: &[Option<&str>]) -> Change {
        Change::Insert {
            relation: Oid(1),
            new: row(values),
        }
    }

    #[test]
    fn a_change_reaches_only_the_shapes_its_values_name_and_the_unindexed_ones() {
        let (routes, _) = routes(&[
            "n = 1",
            "n IN (2, 3) AND id > 0",
            "'x' = ANY(tags)",
            "tags @> '{y,z}'",
            "price = 1.50",
            "n > 5",
        ]);
        let names = |c: &Change| candidates(&routes, c);
        assert_eq!(
            names(&insert(&[Some("1"), Some("1"), None, None])),
            ["h0", "h5"].map(String::from).into()
        );
        assert_eq!(
            names(&insert(&[Some("1"), Some("3"), None, None])),
            ["h1", "h5"].map(String::from).into()
        );
        assert_eq!(
            names(&insert(&[Some("1"), Some("9"), Some("{x,y}"), Some("1.5")])),
            ["h2", "h3", "h4", "h5"].map(String::from).into()
        );
        assert_eq!(
            names(&insert(&[None, None, None, None])),
            ["h5"].map(String::from).into()
        );
    }

    #[test]
    fn an_update_reaches_the_shapes_of_its_old_and_new_values() {
        let (routes, _) = routes(&["n = 1", "n = 2", "n = 3"]);
        let update = Change::Update {
            relation: Oid(1),
            old: Some(row(&[Some("1"), Some("1"), None, None])),
            new: row(&[Some("1"), Some("2"), None, None]),
        };
        assert_eq!(
            candidates(&routes, &update),
            ["h0", "h1"].map(String::from).into()
        );
    }

    #[test]
    fn invalidating_changes_reach_every_shape_and_removal_unindexes() {
        let (mut routes, handles) = routes(&["n = 1", "n > 1"]);
        let truncate = Change::Truncate {
            relations: vec![Oid(1)],
        };
        assert_eq!(candidates(&routes, &truncate).len(), 2);
        assert!(!routes.remove(&handles[0]));
        assert!(
            candidates(&routes, &insert(&[None, Some("1"), None, None]))
                == ["h1".to_owned()].into()
        );
        assert!(routes.remove(&handles[1]));
        assert!(routes.indexes.is_empty());
    }
}
