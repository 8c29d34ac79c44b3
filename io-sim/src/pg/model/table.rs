//! Tables of the Postgres model: definitions, primary keys, and the committed rows.

use std::collections::BTreeMap;

use ampere_core::lsn::Lsn;
use ampere_core::pgoutput::Oid;
use ampere_core::shape::{ColumnSchema, RelationName, TableSchema};

/// A row as text values in the table's column order; `None` is SQL `NULL`.
pub type Row = Vec<Option<String>>;

/// `pg_type.oid` of `int8`.
pub const INT8_OID: u32 = 20;
/// `pg_type.oid` of `text`.
pub const TEXT_OID: u32 = 25;

/// One column of a model table.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ModelColumn {
    /// `attname`.
    pub name: String,
    /// `atttypid`.
    pub type_oid: u32,
    /// `pg_type.typname`.
    pub typname: String,
    /// `attnotnull`.
    pub not_null: bool,
    /// 0-based position in the primary key.
    pub pk_index: Option<u32>,
}

impl ModelColumn {
    /// An `int8 NOT NULL` column, `pk_index`-th in the primary key.
    pub fn int8_key(name: impl Into<String>, pk_index: u32) -> Self {
        Self {
            name: name.into(),
            type_oid: INT8_OID,
            typname: "int8".to_owned(),
            not_null: true,
            pk_index: Some(pk_index),
        }
    }

    /// A nullable `text` column outside the key.
    pub fn text(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            type_oid: TEXT_OID,
            typname: "text".to_owned(),
            not_null: false,
            pk_index: None,
        }
    }

    /// The column as the catalog describes it (no array dimensions, no type modifiers).
    pub fn schema(&self) -> ColumnSchema {
        ColumnSchema {
            name: self.name.clone(),
            type_oid: self.type_oid,
            typname: self.typname.clone(),
            dims: 0,
            not_null: self.not_null,
            pk_index: self.pk_index,
            modifiers: Vec::new(),
            is_enum: false,
        }
    }

    /// Whether values of this column order as integers.
    fn is_integer(&self) -> bool {
        matches!(self.typname.as_str(), "int2" | "int4" | "int8")
    }
}

/// A table of the model: a primary key is required (updates and deletes address rows by it).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TableDef {
    /// The table's name.
    pub relation: RelationName,
    /// `pg_class.oid`.
    pub oid: u32,
    /// Columns in `attnum` order.
    pub columns: Vec<ModelColumn>,
}

impl TableDef {
    /// `<schema>.<table> (id int8 PRIMARY KEY, <text columns>…)`, what the simulation uses.
    pub fn with_text_columns(relation: RelationName, oid: u32, text_columns: &[&str]) -> Self {
        let mut columns = vec![ModelColumn::int8_key("id", 0)];
        columns.extend(text_columns.iter().map(|name| ModelColumn::text(*name)));
        Self {
            relation,
            oid,
            columns,
        }
    }

    /// The table as the catalog describes it.
    pub fn schema(&self) -> TableSchema {
        TableSchema {
            // The model is Postgres 15: its where-clause semantics, no generated columns.
            server_version: ampere_core::shape::ServerVersion::PG_15,
            oid: Oid(self.oid),
            relation: self.relation.clone(),
            columns: self.columns.iter().map(ModelColumn::schema).collect(),
        }
    }

    /// Indices of the primary-key columns, in key order.
    pub fn key_indices(&self) -> Vec<usize> {
        let mut pk: Vec<(u32, usize)> = self
            .columns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.pk_index.map(|k| (k, i)))
            .collect();
        pk.sort_unstable();
        pk.into_iter().map(|(_, i)| i).collect()
    }

    /// The primary key of `row`; `None` when a key column is NULL.
    pub fn key_of(&self, row: &[Option<String>]) -> Option<Key> {
        let mut parts = Vec::new();
        for i in self.key_indices() {
            let text = row.get(i)?.as_deref()?;
            parts.push(KeyPart::new(&self.columns[i], text));
        }
        Some(Key(parts))
    }

    /// The key given as the text of each key column, in key order.
    pub fn key_from_text(&self, key: &[&str]) -> Option<Key> {
        let indices = self.key_indices();
        if indices.len() != key.len() {
            return None;
        }
        let parts = indices
            .iter()
            .zip(key)
            .map(|(&i, text)| KeyPart::new(&self.columns[i], text))
            .collect();
        Some(Key(parts))
    }
}

/// A primary-key value, ordered as Postgres orders it for integer and text keys.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct Key(Vec<KeyPart>);

/// One column of a [`Key`].
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum KeyPart {
    /// An integer column's value (numeric order).
    Int(i64),
    /// Any other value, or an integer column's unparsable text (byte order).
    Text(String),
}

impl KeyPart {
    fn new(column: &ModelColumn, text: &str) -> Self {
        match text.parse() {
            Ok(value) if column.is_integer() => Self::Int(value),
            _ => Self::Text(text.to_owned()),
        }
    }
}

/// A table's committed state and schema history.
#[derive(Clone, Debug)]
pub(crate) struct TableState {
    /// The current definition.
    pub(crate) def: TableDef,
    /// Committed rows by primary key.
    pub(crate) rows: BTreeMap<Key, Row>,
    /// `(from, columns)`: the columns of changes written after `from`, oldest first.
    pub(crate) schemas: Vec<(Lsn, Vec<ModelColumn>)>,
}

impl TableState {
    pub(crate) fn new(def: TableDef) -> Self {
        let schemas = vec![(Lsn::ZERO, def.columns.clone())];
        Self {
            def,
            rows: BTreeMap::new(),
            schemas,
        }
    }

    /// The schema version (index into `schemas`) of a change written at `lsn`.
    pub(crate) fn schema_version_at(&self, lsn: Lsn) -> usize {
        self.schemas
            .iter()
            .rposition(|(from, _)| *from < lsn)
            .unwrap_or(0)
    }
}
