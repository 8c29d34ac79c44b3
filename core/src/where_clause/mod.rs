//! Where clauses: a shape's row filter, parsed with Postgres's own grammar, typed against the
//! table, rendered back to SQL for the snapshot and compiled once for replication-time
//! evaluation (where-language.md).
//!
//! Owns: the request-time pipeline (parse, validate, type, fold, canonical text for shape
//! identity), the SQL Postgres runs, and the evaluator, which agrees with that SQL on every
//! row: where ampere cannot compute an operation exactly as Postgres does, the where clause is
//! refused at request time, never evaluated differently.
//!
//! Never: builds SQL from the user's text (every identifier and constant is rendered from the
//! typed tree), or reads anything but its inputs.

pub mod array_ops;
pub mod array_text;
mod bind;
pub mod datetime;
mod eval;
pub mod expr;
pub mod interval;
pub mod like;
pub mod numeric;
pub mod types;
pub mod tz;
pub mod value;
pub mod zone_check;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use ampere_pg_parse::protobuf;
use ampere_pg_parse::NodeEnum;

pub use eval::EvalError;
pub use expr::{CmpOp, Expr};
pub use types::{Dialect, Scalar, Type};
pub use value::Value;
pub use zone_check::ZoneMismatch;

use crate::shape::{ShapeDefinition, TableSchema};

/// `SELECT 1 WHERE `: the statement a where clause is parsed inside (Electric's wrapping).
const WRAP: &str = "SELECT 1 WHERE ";

/// `params[n]` values by `n`.
pub type Params = BTreeMap<u32, String>;

/// Why a where clause was refused: the 400 message, as Electric words it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct WhereError {
    /// 0-based position in the where text (or, for Postgres syntax errors, in the wrapped
    /// statement: Electric's quirk), when the message has one.
    pub location: Option<u32>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for WhereError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some(location) => write!(f, "At location {location}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for WhereError {}

impl WhereError {
    fn plain(message: impl Into<String>) -> Self {
        Self {
            location: None,
            message: message.into(),
        }
    }

    /// A refusal at `location` of the wrapped statement, reported in the user's text.
    fn at_wrapped(location: i32, message: impl Into<String>) -> Self {
        let inside = location.saturating_sub(WRAP.len() as i32).max(0);
        Self {
            location: Some(u32::try_from(inside).unwrap_or(0)),
            message: message.into(),
        }
    }
}

/// A validated, compiled where clause.
#[derive(Clone)]
pub struct WhereClause {
    canonical: String,
    expr: Arc<Expr>,
    compiled: Arc<eval::Compiled>,
    columns: Vec<usize>,
    /// The named time zones it reads, with where each is first named (wrapped location).
    zones: Arc<[(tz::Zone, i32)]>,
}

impl fmt::Debug for WhereClause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WhereClause")
            .field("canonical", &self.canonical)
            .finish_non_exhaustive()
    }
}

impl WhereClause {
    /// The canonical text of `text` with `params` inlined: Postgres's own spelling of the
    /// expression (layout, keyword case and redundant parentheses normalised), the part of
    /// shape identity a where clause contributes. Needs no catalog; refuses syntax errors,
    /// statement splits, trailing clauses, comments and parameter mistakes.
    pub fn canonicalize(text: &str, params: &Params) -> Result<String, WhereError> {
        // A syntax error names its position in the text as given, before values are inlined;
        // without `$n` the text is parsed once.
        let substituted = match substitute_params(text, params) {
            Ok(substituted) if substituted == text => substituted,
            outcome => {
                parse_where(text)?;
                outcome?
            }
        };
        let tree = parse_where(&substituted)?;
        let deparsed =
            ampere_pg_parse::deparse(tree.0).map_err(|e| WhereError::plain(e.message))?;
        deparsed
            .strip_prefix(WRAP)
            .map(str::to_owned)
            .ok_or_else(|| WhereError::plain(format!("unexpected canonical form: {deparsed}")))
    }

    /// Validates `text` (with `params`) against `table` and compiles it; errors name their
    /// position in `text`.
    pub fn compile(text: &str, params: &Params, table: &TableSchema) -> Result<Self, WhereError> {
        let canonical = Self::canonicalize(text, params)?;
        let tree = parse_where(text)?;
        let mut binder = bind::Binder::new(table, params);
        let expr = binder
            .bind_root(tree.where_node())
            .map_err(|e| WhereError::at_wrapped(e.location, e.message))?;
        Ok(Self::from_expr(canonical, expr, binder.into_zones()))
    }

    /// Compiles a canonical text read back from storage against the shape's schema.
    pub fn from_canonical(canonical: &str, table: &TableSchema) -> Result<Self, WhereError> {
        Self::compile(canonical, &Params::new(), table)
    }

    fn from_expr(canonical: String, expr: Expr, zones: Vec<(tz::Zone, i32)>) -> Self {
        let mut columns = Vec::new();
        expr.visit(&mut |e| {
            if let Expr::Column { index, .. } = e {
                columns.push(*index);
            }
        });
        columns.sort_unstable();
        columns.dedup();
        let compiled = Arc::new(eval::compile(&expr));
        Self {
            canonical,
            expr: Arc::new(expr),
            compiled,
            columns,
            zones: zones.into(),
        }
    }

    /// The named time zones the clause reads (`AT TIME ZONE`, `timezone()`), each once, even
    /// where constant folding computed the result already. Before a shape with one is created,
    /// the server must read each as ampere does (`zone_check`).
    pub fn time_zones(&self) -> impl Iterator<Item = &tz::Zone> {
        self.zones.iter().map(|(zone, _)| zone)
    }

    /// The refusal of this clause because the server reads `zone` otherwise, placed where the
    /// clause first names it.
    pub fn zone_refused(&self, zone: &tz::Zone, mismatch: &ZoneMismatch) -> WhereError {
        let location = self
            .zones
            .iter()
            .find(|(known, _)| known == zone)
            .map_or(0, |(_, location)| *location);
        WhereError::at_wrapped(location, mismatch.to_string())
    }

    /// The canonical text (params inlined).
    pub fn canonical_text(&self) -> &str {
        &self.canonical
    }

    /// The SQL condition the snapshot runs, rendered from the typed tree.
    pub fn to_sql(&self) -> String {
        self.expr.to_sql()
    }

    /// The typed tree.
    pub fn expr(&self) -> &Expr {
        &self.expr
    }

    /// Indices of the table columns the clause reads.
    pub fn columns(&self) -> &[usize] {
        &self.columns
    }

    /// The clause's value on a row of text values in table column order (`NULL` as `None`).
    pub fn evaluate(&self, row: &[Option<String>]) -> Result<Option<bool>, EvalError> {
        Ok(match (self.compiled)(row)? {
            Value::Bool(b) => Some(b),
            _ => None,
        })
    }

    /// Whether the row is in the shape: the clause is exactly true (NULL, false or an
    /// evaluation error leave it out).
    pub fn matches(&self, row: &[Option<String>]) -> bool {
        matches!(self.evaluate(row), Ok(Some(true)))
    }
}

/// A shape's row filter, compiled from the canonical where clause its definition stores.
#[derive(Clone, Debug)]
pub enum RowFilter {
    /// No where clause: every row.
    Every,
    /// The where clause.
    Where(WhereClause),
    /// The stored clause no longer compiles against the shape's schema: the shape must be
    /// invalidated, never fed unfiltered rows.
    Broken,
}

impl RowFilter {
    /// The filter of `definition` on a table with `schema`.
    pub fn of(definition: &ShapeDefinition, schema: &TableSchema) -> Self {
        match &definition.where_clause {
            None => Self::Every,
            Some(text) => {
                WhereClause::from_canonical(text, schema).map_or(Self::Broken, Self::Where)
            }
        }
    }

    /// Whether `row` (text values in table column order) is in the shape; never for
    /// [`Self::Broken`].
    pub fn admits(&self, row: &[Option<String>]) -> bool {
        match self {
            Self::Every => true,
            Self::Where(clause) => clause.matches(row),
            Self::Broken => false,
        }
    }

    /// The compiled clause, if there is one.
    pub fn clause(&self) -> Option<&WhereClause> {
        match self {
            Self::Where(clause) => Some(clause),
            Self::Every | Self::Broken => None,
        }
    }
}

/// A parsed `SELECT 1 WHERE …`, checked to be nothing more.
struct WhereTree(protobuf::ParseResult);

impl WhereTree {
    fn where_node(&self) -> &protobuf::Node {
        let Some(NodeEnum::SelectStmt(select)) =
            self.0.stmts[0].stmt.as_ref().and_then(|s| s.node.as_ref())
        else {
            unreachable!("parse_where checked the statement");
        };
        select
            .where_clause
            .as_deref()
            .expect("invariant: parse_where checked the where clause")
    }
}

fn parse_where(text: &str) -> Result<WhereTree, WhereError> {
    let wrapped = format!("{WRAP}{text}");
    let tree = ampere_pg_parse::parse(&wrapped).map_err(|e| WhereError {
        location: e.cursor.map(|c| c.saturating_sub(1)),
        message: e.message,
    })?;
    let tokens = ampere_pg_parse::tokens(&wrapped).map_err(|e| WhereError::plain(e.message))?;
    let comment = tokens.iter().find(|t| {
        matches!(
            t.kind,
            protobuf::Token::SqlComment | protobuf::Token::CComment
        )
    });
    if let Some(comment) = comment {
        return Err(WhereError::at_wrapped(
            i32::try_from(comment.start).unwrap_or(0),
            "comments are not allowed in a where clause",
        ));
    }
    if tree.stmts.len() != 1 {
        return Err(WhereError::plain("unescaped \";\" causing statement split"));
    }
    let Some(NodeEnum::SelectStmt(select)) =
        tree.stmts[0].stmt.as_ref().and_then(|s| s.node.as_ref())
    else {
        return Err(WhereError::plain("malformed query ending with SQL clauses"));
    };
    let has_clauses = !select.from_clause.is_empty()
        || !select.window_clause.is_empty()
        || !select.group_clause.is_empty()
        || !select.sort_clause.is_empty()
        || !select.locking_clause.is_empty()
        || !select.distinct_clause.is_empty()
        || select.having_clause.is_some()
        || select.limit_count.is_some()
        || select.limit_offset.is_some()
        || select.with_clause.is_some()
        || select.larg.is_some()
        || select.target_list.len() != 1;
    if has_clauses {
        return Err(WhereError::plain("malformed query ending with SQL clauses"));
    }
    if select.where_clause.is_none() {
        return Err(WhereError::plain("the where clause is empty"));
    }
    Ok(WhereTree(tree))
}

/// `text` with each `$n` token replaced by its value as a string literal; checks that every
/// parameter is provided, used, and numbered from 1 without gaps (Electric's rules).
fn substitute_params(text: &str, params: &Params) -> Result<String, WhereError> {
    let wrapped = format!("{WRAP}{text}");
    let tokens = ampere_pg_parse::tokens(&wrapped).map_err(|e| WhereError::plain(e.message))?;
    let mut out = String::with_capacity(wrapped.len());
    let mut used = BTreeMap::new();
    let mut at = 0;
    let params_at = tokens
        .iter()
        .filter(|t| t.kind == protobuf::Token::Param)
        .map(|t| (t.start, t.end));
    for (start, end) in params_at {
        let number: u32 = wrapped[start + 1..end].parse().unwrap_or(0);
        let Some(value) = params.get(&number) else {
            return Err(WhereError::at_wrapped(
                i32::try_from(start).unwrap_or(0),
                format!("parameter ${number} was not provided"),
            ));
        };
        used.insert(number, ());
        out.push_str(&wrapped[at..start]);
        out.push_str(&value::quote_literal(value));
        at = end;
    }
    out.push_str(&wrapped[at..]);
    if let Some(unused) = params.keys().find(|n| !used.contains_key(n)) {
        return Err(WhereError {
            location: Some(0),
            message: format!("parameter value for ${unused} was not used"),
        });
    }
    Ok(out[WRAP.len()..].to_owned())
}

#[cfg(test)]
mod tests;
