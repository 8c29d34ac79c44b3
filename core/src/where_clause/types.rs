//! The types a where clause computes with, named as Postgres names them (`pg_type.typname`).

use std::fmt;

use crate::shape::{ColumnSchema, ServerVersion};

/// Which Postgres's rules a where clause follows where Postgres versions differ: the version
/// of the server that holds the table ([`crate::shape::TableSchema::server_version`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Dialect {
    /// Postgres 14 to 16: every interval is finite (`'infinity'::interval` is a syntax error).
    UpTo16,
    /// Postgres 17 and later: `infinity` and `-infinity` intervals, which date/time
    /// arithmetic propagates (`'-infinity'::timestamp - ts` is `-infinity`, not an error).
    From17,
}

impl Dialect {
    /// The dialect of a server of `version`.
    pub const fn of(version: ServerVersion) -> Self {
        if version.0 >= ServerVersion::PG_17.0 {
            Self::From17
        } else {
            Self::UpTo16
        }
    }

    /// Whether `infinity` and `-infinity` are intervals.
    pub const fn has_infinite_intervals(self) -> bool {
        matches!(self, Self::From17)
    }
}

/// A scalar type ampere can evaluate exactly.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Scalar {
    /// `bool`.
    Bool,
    /// `int2`.
    Int2,
    /// `int4`.
    Int4,
    /// `int8`.
    Int8,
    /// `float4`.
    Float4,
    /// `float8`.
    Float8,
    /// `numeric`.
    Numeric,
    /// `text` (also `name` columns), compared in the C collation.
    Text,
    /// `varchar`: text, but a type of its own in operator resolution (`bpchar >= varchar`
    /// compares as bpchar).
    Varchar,
    /// `bpchar` (`char(n)`): compared without trailing blanks, matched by LIKE with them.
    Bpchar,
    /// `uuid`.
    Uuid,
    /// `date`.
    Date,
    /// `time`.
    Time,
    /// `timestamp`.
    Timestamp,
    /// `timestamptz`.
    Timestamptz,
    /// `interval`.
    Interval,
}

/// The type of a where-clause expression.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Type {
    /// A scalar.
    Scalar(Scalar),
    /// An array of a scalar (any number of dimensions, as in Postgres).
    Array(Scalar),
    /// A string literal or parameter not yet typed by its context.
    Unknown,
    /// An enum type (by `typname`): compared by label with `=` and `<>` only, as text.
    Enum(String),
    /// A column type with no operators in ampere (json, bytea, …): usable in `IS [NOT] NULL`.
    Opaque(String),
}

impl Scalar {
    /// Postgres's `typname`.
    pub const fn typname(self) -> &'static str {
        match self {
            Self::Bool => "bool",
            Self::Int2 => "int2",
            Self::Int4 => "int4",
            Self::Int8 => "int8",
            Self::Float4 => "float4",
            Self::Float8 => "float8",
            Self::Numeric => "numeric",
            Self::Text => "text",
            Self::Varchar => "varchar",
            Self::Bpchar => "bpchar",
            Self::Uuid => "uuid",
            Self::Date => "date",
            Self::Time => "time",
            Self::Timestamp => "timestamp",
            Self::Timestamptz => "timestamptz",
            Self::Interval => "interval",
        }
    }

    /// The name Postgres uses in input-syntax errors (`format_type`).
    pub const fn sql_name(self) -> &'static str {
        match self {
            Self::Bool => "boolean",
            Self::Int2 => "smallint",
            Self::Int4 => "integer",
            Self::Int8 => "bigint",
            Self::Float4 => "real",
            Self::Float8 => "double precision",
            Self::Numeric => "numeric",
            Self::Text => "text",
            Self::Varchar => "character varying",
            Self::Bpchar => "character",
            Self::Uuid => "uuid",
            Self::Date => "date",
            Self::Time => "time without time zone",
            Self::Timestamp => "timestamp without time zone",
            Self::Timestamptz => "timestamp with time zone",
            Self::Interval => "interval",
        }
    }

    /// The scalar a `typname` names (`varchar`, `bpchar` and `name` read as `text`).
    pub fn from_typname(name: &str) -> Option<Self> {
        Some(match name {
            "bool" => Self::Bool,
            "int2" => Self::Int2,
            "int4" => Self::Int4,
            "int8" => Self::Int8,
            "float4" => Self::Float4,
            "float8" => Self::Float8,
            "numeric" => Self::Numeric,
            "text" | "name" => Self::Text,
            "varchar" => Self::Varchar,
            "bpchar" => Self::Bpchar,
            "uuid" => Self::Uuid,
            "date" => Self::Date,
            "time" => Self::Time,
            "timestamp" => Self::Timestamp,
            "timestamptz" => Self::Timestamptz,
            "interval" => Self::Interval,
            _ => return None,
        })
    }

    /// The scalar of a built-in type oid and whether it is the array type.
    fn from_oid(oid: u32) -> Option<(Self, bool)> {
        const OIDS: [(u32, u32, Scalar); 17] = [
            (16, 1000, Scalar::Bool),
            (21, 1005, Scalar::Int2),
            (23, 1007, Scalar::Int4),
            (20, 1016, Scalar::Int8),
            (700, 1021, Scalar::Float4),
            (701, 1022, Scalar::Float8),
            (1700, 1231, Scalar::Numeric),
            (25, 1009, Scalar::Text),
            (1043, 1015, Scalar::Varchar),
            (1042, 1014, Scalar::Bpchar),
            (19, 1003, Scalar::Text),
            (2950, 2951, Scalar::Uuid),
            (1082, 1182, Scalar::Date),
            (1083, 1183, Scalar::Time),
            (1114, 1115, Scalar::Timestamp),
            (1184, 1185, Scalar::Timestamptz),
            (1186, 1187, Scalar::Interval),
        ];
        OIDS.iter().find_map(|&(scalar, array, s)| {
            (oid == scalar)
                .then_some((s, false))
                .or((oid == array).then_some((s, true)))
        })
    }

    /// Whether values are integers (`int2`, `int4`, `int8`).
    pub const fn is_integer(self) -> bool {
        matches!(self, Self::Int2 | Self::Int4 | Self::Int8)
    }

    /// Whether the type is in Postgres's numeric category.
    pub const fn is_number(self) -> bool {
        matches!(
            self,
            Self::Int2 | Self::Int4 | Self::Int8 | Self::Float4 | Self::Float8 | Self::Numeric
        )
    }

    /// Rank in the implicit-cast order of numbers (a lower rank casts to a higher one).
    pub(crate) const fn number_rank(self) -> u8 {
        match self {
            Self::Int2 => 1,
            Self::Int4 => 2,
            Self::Int8 => 3,
            Self::Numeric => 4,
            Self::Float4 => 5,
            Self::Float8 => 6,
            _ => 0,
        }
    }

    /// Whether the type takes part in date/time arithmetic (`date`, `time`, `timestamp`,
    /// `timestamptz`, `interval`).
    pub const fn is_datetime(self) -> bool {
        matches!(
            self,
            Self::Date | Self::Time | Self::Timestamp | Self::Timestamptz | Self::Interval
        )
    }

    /// Whether the type is in Postgres's string category (`text`, `varchar`, `bpchar`).
    pub const fn is_string(self) -> bool {
        matches!(self, Self::Text | Self::Varchar | Self::Bpchar)
    }
}

impl Type {
    /// The type of a column of the shape's table.
    pub fn of_column(column: &ColumnSchema) -> Self {
        if column.is_enum && column.dims == 0 {
            return Self::Enum(column.typname.clone());
        }
        match Scalar::from_oid(column.type_oid) {
            Some((scalar, false)) => Self::Scalar(scalar),
            Some((scalar, true)) => Self::Array(scalar),
            None => Self::Opaque(column.typname.clone()),
        }
    }

    /// The scalar, if this is one.
    pub const fn scalar(&self) -> Option<Scalar> {
        match self {
            Self::Scalar(s) => Some(*s),
            _ => None,
        }
    }

    /// Whether this is `bool`.
    pub const fn is_bool(&self) -> bool {
        matches!(self, Self::Scalar(Scalar::Bool))
    }
}

impl fmt::Display for Type {
    /// As Electric names types in its error messages (`int4`, `text[]`, `unknown`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Scalar(s) => f.write_str(s.typname()),
            Self::Array(s) => write!(f, "{}[]", s.typname()),
            Self::Unknown => f.write_str("unknown"),
            Self::Enum(name) => write!(f, "enum {name}"),
            Self::Opaque(name) => f.write_str(name),
        }
    }
}
