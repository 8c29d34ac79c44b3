//! Subset snapshots (protocol.md §3.6, §5.7, §6.10): a one-off read of some of a shape's rows
//! — the shape's where clause AND the subset's, ordered, limited — from a `REPEATABLE READ
//! READ ONLY` transaction whose snapshot is returned with the rows, so a client can tell which
//! later changes the rows already reflect.
//!
//! Owns: the validated request ([`Subset`]: the where clause bound to the table, the
//! `ORDER BY` parsed to column references and re-rendered from that tree, `LIMIT`,
//! `OFFSET`), what the adapters are asked ([`SubsetQuery`]) and answer ([`SubsetRows`]), and
//! the response body.
//!
//! Never: passes the user's text to Postgres (the where clause and `ORDER BY` are rendered
//! from typed trees, as the shape's own where clause is), or reads anything but its inputs.

use std::fmt::Write as _;

use ampere_pg_parse::protobuf::{self, SortByDir, SortByNulls};
use ampere_pg_parse::NodeEnum;

use crate::lsn::Lsn;
use crate::shape::{quote_ident, RelationName, ShapeDefinition, TableSchema};
use crate::snapshot::PgSnapshot;
use crate::where_clause::{Params, WhereClause};

/// `SELECT 1 ORDER BY `: the statement an `order_by` is parsed inside.
const WRAP: &str = "SELECT 1 ORDER BY ";

/// A validated subset request on one shape.
#[derive(Clone, Debug, Default)]
pub struct Subset {
    /// The subset's row filter, ANDed with the shape's.
    pub filter: Option<WhereClause>,
    /// The row order.
    pub order_by: Option<OrderBy>,
    /// At most this many rows.
    pub limit: Option<u64>,
    /// Rows skipped before the first returned.
    pub offset: Option<u64>,
}

/// Why a subset request was refused, by the subset field at fault (the keys of
/// `errors.subset`).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SubsetFieldError {
    /// `where`, `order_by`, `limit`, `offset` or `params`.
    pub field: &'static str,
    /// The message.
    pub message: String,
}

impl Subset {
    /// Binds the subset's parts to `table`: `where_text` with `params` (its own `$n`, not the
    /// shape's) and `order_by_text`. Every part is checked, so each failing field is named.
    pub fn bind(
        table: &TableSchema,
        where_text: Option<&str>,
        params: &Params,
        order_by_text: Option<&str>,
        limit: Option<u64>,
        offset: Option<u64>,
    ) -> Result<Self, Vec<SubsetFieldError>> {
        let mut errors = Vec::new();
        let filter = match where_text {
            Some(text) => match WhereClause::compile(text, params, table) {
                Ok(clause) => Some(clause),
                Err(e) => {
                    errors.push(SubsetFieldError {
                        field: "where",
                        message: e.to_string(),
                    });
                    None
                }
            },
            None if !params.is_empty() => {
                errors.push(SubsetFieldError {
                    field: "params",
                    message: "params were given without a where clause".into(),
                });
                None
            }
            None => None,
        };
        let order_by = match order_by_text.map(|text| OrderBy::parse(text, table)) {
            Some(Ok(order_by)) => Some(order_by),
            Some(Err(message)) => {
                errors.push(SubsetFieldError {
                    field: "order_by",
                    message,
                });
                None
            }
            None => None,
        };
        if errors.is_empty() {
            Ok(Self {
                filter,
                order_by,
                limit,
                offset,
            })
        } else {
            Err(errors)
        }
    }

    /// ` WHERE (<shape's>) AND (<subset's>) ORDER BY … LIMIT n OFFSET m` for a query on
    /// `relation`, each part only when present; `shape_filter` is the shape's own clause.
    pub fn sql_tail(&self, relation: &RelationName, shape_filter: Option<&WhereClause>) -> String {
        let conditions: Vec<String> = shape_filter
            .into_iter()
            .chain(&self.filter)
            .map(|clause| format!("({})", clause.to_sql()))
            .collect();
        let mut sql = String::new();
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        if let Some(order_by) = &self.order_by {
            sql.push_str(" ORDER BY ");
            sql.push_str(&order_by.to_sql(relation));
        }
        if let Some(limit) = self.limit {
            let _ = write!(sql, " LIMIT {limit}");
        }
        if let Some(offset) = self.offset {
            let _ = write!(sql, " OFFSET {offset}");
        }
        sql
    }
}

/// An `ORDER BY` list: column references, each ascending or descending, nulls first or last.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct OrderBy {
    /// The sort keys, most significant first.
    pub keys: Vec<SortKey>,
}

/// One sort key of an [`OrderBy`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SortKey {
    /// The column's index in the table.
    pub column: usize,
    /// Its name.
    pub name: String,
    /// `DESC`.
    pub descending: bool,
    /// `NULLS FIRST` / `NULLS LAST`; Postgres's default (last ascending, first descending)
    /// when `None`.
    pub nulls: Option<NullsOrder>,
}

impl SortKey {
    /// Whether NULLs sort before every value under this key (Postgres: NULL is larger than
    /// any value, so first when descending unless told otherwise).
    pub fn nulls_first(&self) -> bool {
        match self.nulls {
            Some(NullsOrder::First) => true,
            Some(NullsOrder::Last) => false,
            None => self.descending,
        }
    }
}

/// Where NULLs go.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum NullsOrder {
    /// `NULLS FIRST`.
    First,
    /// `NULLS LAST`.
    Last,
}

/// What an `order_by` may hold, for refusals.
const ORDER_BY_FORM: &str =
    "order_by may only list columns of the table, each optionally followed by ASC or DESC and \
     NULLS FIRST or NULLS LAST";

impl OrderBy {
    /// Parses `text` with Postgres's grammar and binds each key to a column of `table`.
    pub fn parse(text: &str, table: &TableSchema) -> Result<Self, String> {
        let wrapped = format!("{WRAP}{text}");
        let at = |location: i32| {
            let inside = location.saturating_sub(WRAP.len() as i32).max(0);
            move |message: &str| format!("At location {inside}: {message}")
        };
        let tree = ampere_pg_parse::parse(&wrapped).map_err(|e| match e.cursor {
            // Postgres's cursor is 1-based and counts the wrapping.
            Some(cursor) => at(i32::try_from(cursor).unwrap_or(0) - 1)(&e.message),
            None => e.message,
        })?;
        let tokens = ampere_pg_parse::tokens(&wrapped).map_err(|e| e.message)?;
        if let Some(comment) = tokens.iter().find(|t| {
            matches!(
                t.kind,
                protobuf::Token::SqlComment | protobuf::Token::CComment
            )
        }) {
            let location = i32::try_from(comment.start).unwrap_or(0);
            return Err(at(location)("comments are not allowed in order_by"));
        }
        if tree.stmts.len() != 1 {
            return Err("unescaped \";\" causing statement split".into());
        }
        let Some(NodeEnum::SelectStmt(select)) =
            tree.stmts[0].stmt.as_ref().and_then(|s| s.node.as_ref())
        else {
            return Err(ORDER_BY_FORM.into());
        };
        let extra = select.limit_count.is_some()
            || select.limit_offset.is_some()
            || !select.locking_clause.is_empty()
            || select.where_clause.is_some()
            || select.larg.is_some();
        if extra || select.sort_clause.is_empty() {
            return Err(ORDER_BY_FORM.into());
        }
        let keys = select
            .sort_clause
            .iter()
            .map(|node| match node.node.as_ref() {
                Some(NodeEnum::SortBy(sort)) => sort_key(sort, table, &at),
                _ => Err(ORDER_BY_FORM.into()),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { keys })
    }

    /// `"s"."t"."a" DESC NULLS LAST, "s"."t"."b"`: rendered from the keys, never the user's
    /// text. Each column is qualified with its table: a bare name in `ORDER BY` means an
    /// output column of that name first, and the select list outputs each column as text
    /// (`"id"::text` is named `id`), which would order numbers as strings.
    pub fn to_sql(&self, relation: &RelationName) -> String {
        let keys: Vec<String> = self
            .keys
            .iter()
            .map(|key| {
                let mut sql = format!("{relation}.{}", quote_ident(&key.name));
                if key.descending {
                    sql.push_str(" DESC");
                }
                match key.nulls {
                    Some(NullsOrder::First) => sql.push_str(" NULLS FIRST"),
                    Some(NullsOrder::Last) => sql.push_str(" NULLS LAST"),
                    None => {}
                }
                sql
            })
            .collect();
        keys.join(", ")
    }
}

fn sort_key<F: Fn(&str) -> String>(
    sort: &protobuf::SortBy,
    table: &TableSchema,
    at: &impl Fn(i32) -> F,
) -> Result<SortKey, String> {
    let descending = match SortByDir::try_from(sort.sortby_dir) {
        Ok(SortByDir::SortbyDefault | SortByDir::SortbyAsc) => false,
        Ok(SortByDir::SortbyDesc) => true,
        _ => return Err(at(sort.location)(ORDER_BY_FORM)),
    };
    let nulls = match SortByNulls::try_from(sort.sortby_nulls) {
        Ok(SortByNulls::SortbyNullsDefault) => None,
        Ok(SortByNulls::SortbyNullsFirst) => Some(NullsOrder::First),
        Ok(SortByNulls::SortbyNullsLast) => Some(NullsOrder::Last),
        _ => return Err(at(sort.location)(ORDER_BY_FORM)),
    };
    let Some(NodeEnum::ColumnRef(column)) = sort.node.as_ref().and_then(|n| n.node.as_ref()) else {
        return Err(at(sort.location)(ORDER_BY_FORM));
    };
    let names: Vec<&str> = column
        .fields
        .iter()
        .map(|field| match field.node.as_ref() {
            Some(NodeEnum::String(s)) => s.sval.as_str(),
            _ => "*",
        })
        .collect();
    let [name] = names.as_slice() else {
        return Err(at(column.location)(ORDER_BY_FORM));
    };
    let index = table.column_index(name).ok_or_else(|| {
        at(column.location)(&format!("column {} does not exist", quote_ident(name)))
    })?;
    Ok(SortKey {
        column: index,
        name: (*name).to_owned(),
        descending,
        nulls,
    })
}

/// A subset read to run for one shape: what [`crate::ports::PgPort::query_subset`] is asked.
#[derive(Clone, Debug)]
pub struct SubsetQuery {
    /// The shape's definition (its columns, replica mode and where clause).
    pub definition: ShapeDefinition,
    /// The table as the shape knows it.
    pub schema: TableSchema,
    /// The subset.
    pub subset: Subset,
    /// Stamped into each row's headers and the metadata (`snapshot_mark`), so a client can
    /// tell which rows came from this read.
    pub snapshot_mark: u32,
}

/// What a subset read returned.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SubsetRows {
    /// The transaction's `pg_current_snapshot()`.
    pub snapshot: PgSnapshot,
    /// `pg_current_wal_lsn()` inside that transaction.
    pub database_lsn: Lsn,
    /// The rows as `insert` entries with a `snapshot_mark` header, joined by `,`.
    pub data: String,
    /// How many rows.
    pub rows: usize,
}

impl SubsetRows {
    /// The response body (§5.7): `{"metadata":{…}, "data": [<rows>]}`; the separator is
    /// Electric's, spaces included.
    pub fn body(&self, snapshot_mark: u32) -> String {
        let snapshot = &self.snapshot;
        let xip: Vec<String> = snapshot
            .xip
            .iter()
            .map(|x| format!("\"{}\"", x.0))
            .collect();
        let mut body = String::with_capacity(self.data.len() + 160);
        let _ = write!(
            body,
            "{{\"metadata\":{{\"database_lsn\":\"{}\",\"snapshot_mark\":{snapshot_mark},\
             \"xip_list\":[{}],\"xmax\":\"{}\",\"xmin\":\"{}\"}}, \"data\": [",
            self.database_lsn.as_u64(),
            xip.join(","),
            snapshot.xmax.0,
            snapshot.xmin.0,
        );
        body.push_str(&self.data);
        body.push_str("]}");
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::{ColumnSchema, ServerVersion};
    use crate::snapshot::FullXid;

    fn table() -> TableSchema {
        let column = |name: &str, type_oid: u32, typname: &str, pk: Option<u32>| ColumnSchema {
            name: name.into(),
            type_oid,
            typname: typname.into(),
            dims: 0,
            not_null: pk.is_some(),
            pk_index: pk,
            modifiers: vec![],
            is_enum: false,
        };
        TableSchema {
            oid: crate::pgoutput::Oid(1),
            relation: RelationName {
                schema: "public".into(),
                table: "items".into(),
            },
            columns: vec![
                column("id", 23, "int4", Some(0)),
                column("title", 25, "text", None),
                column("Mixed Case", 23, "int4", None),
            ],
            server_version: ServerVersion::PG_15,
        }
    }

    #[test]
    fn order_by_is_rendered_from_its_keys_not_the_text() {
        let order_by = OrderBy::parse(
            "title   desc nulls LAST, \"Mixed Case\" asc, id NULLS first",
            &table(),
        )
        .expect("valid");
        assert_eq!(
            order_by.to_sql(&table().relation),
            r#""public"."items"."title" DESC NULLS LAST, "public"."items"."Mixed Case", "public"."items"."id" NULLS FIRST"#
        );
        assert!(order_by.keys[0].descending && !order_by.keys[0].nulls_first());
        assert!(!order_by.keys[1].nulls_first());
        assert!(order_by.keys[2].nulls_first());
    }

    #[test]
    fn order_by_accepts_only_column_references() {
        for bad in [
            "lower(title)",
            "id + 1",
            "1",
            "items.id",
            "id USING <",
            "id LIMIT 1",
            "id; DROP TABLE items",
            "(SELECT 1)",
        ] {
            let refused = OrderBy::parse(bad, &table());
            assert!(refused.is_err(), "{bad}: {refused:?}");
        }
    }

    #[test]
    fn order_by_names_an_unknown_column_and_where_it_is() {
        assert_eq!(
            OrderBy::parse("id, nope DESC", &table()),
            Err("At location 4: column \"nope\" does not exist".into())
        );
        assert_eq!(
            OrderBy::parse("id,, title", &table()),
            Err("At location 3: syntax error at or near \",\"".into())
        );
        assert_eq!(
            OrderBy::parse("id -- x", &table()),
            Err("At location 3: comments are not allowed in order_by".into())
        );
    }

    #[test]
    fn the_query_tail_ands_the_shape_where_with_the_subset_where() {
        let table = table();
        let shape = WhereClause::compile("id > 1", &Params::new(), &table).expect("valid");
        let params = Params::from([(1, "a'b".to_owned())]);
        let subset = Subset::bind(
            &table,
            Some("title = $1"),
            &params,
            Some("id DESC"),
            Some(10),
            Some(5),
        )
        .expect("valid");
        assert_eq!(
            subset.sql_tail(&table.relation, Some(&shape)),
            " WHERE ((\"id\" > '1'::pg_catalog.int4)) AND ((\"title\" = 'a''b'::pg_catalog.text)) \
             ORDER BY \"public\".\"items\".\"id\" DESC LIMIT 10 OFFSET 5"
        );
        assert_eq!(Subset::default().sql_tail(&table.relation, None), "");
    }

    #[test]
    fn every_failing_subset_field_is_named() {
        let errors = Subset::bind(
            &table(),
            Some("nope = 1"),
            &Params::new(),
            Some("nope"),
            None,
            None,
        )
        .expect_err("refused");
        let fields: Vec<&str> = errors.iter().map(|e| e.field).collect();
        assert_eq!(fields, ["where", "order_by"]);
    }

    #[test]
    fn the_body_carries_the_snapshot_as_decimal_strings() {
        let rows = SubsetRows {
            snapshot: PgSnapshot {
                xmin: FullXid(1000),
                xmax: FullXid(1050),
                xip: vec![FullXid(1025)],
            },
            database_lsn: Lsn(24_187_768),
            data: r#"{"key":"k"}"#.into(),
            rows: 1,
        };
        assert_eq!(
            rows.body(123_456),
            r#"{"metadata":{"database_lsn":"24187768","snapshot_mark":123456,"xip_list":["1025"],"xmax":"1050","xmin":"1000"}, "data": [{"key":"k"}]}"#
        );
    }
}
