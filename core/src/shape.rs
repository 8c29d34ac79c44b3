//! Shape definitions, table schemas, deterministic identity and handles.

use std::fmt;

use crate::pgoutput::Oid;

/// A schema-qualified relation name, as Postgres stores it (case kept, unquoted).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct RelationName {
    /// `pg_namespace.nspname`.
    pub schema: String,
    /// `pg_class.relname`.
    pub table: String,
}

impl fmt::Display for RelationName {
    /// Quoted for SQL: `"public"."items"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}",
            quote_ident(&self.schema),
            quote_ident(&self.table)
        )
    }
}

/// Quotes an identifier for SQL, doubling embedded `"`.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// One column of a table, as the catalog describes it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ColumnSchema {
    /// `attname`.
    pub name: String,
    /// `atttypid`.
    pub type_oid: u32,
    /// `pg_type.typname` of the element type for arrays with `attndims > 0`, else of the type.
    pub typname: String,
    /// `attndims` (0 for non-arrays, and for arrays declared without dimensions).
    pub dims: u32,
    /// `attnotnull`.
    pub not_null: bool,
    /// 0-based position in the primary key.
    pub pk_index: Option<u32>,
    /// Type modifiers for `electric-schema`, already rendered as JSON members
    /// (`"max_length":10`), in a fixed order.
    pub modifiers: Vec<(String, String)>,
    /// Whether the (element) type is an enum (`typtype = 'e'`): where clauses compare its
    /// values as their labels.
    pub is_enum: bool,
}

/// A table as a shape sees it: columns in `attnum` order (dropped columns excluded).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TableSchema {
    /// `pg_class.oid`.
    pub oid: Oid,
    /// The relation's name.
    pub relation: RelationName,
    /// Non-dropped columns, in `attnum` order (the order of pgoutput tuples).
    pub columns: Vec<ColumnSchema>,
    /// The version of the Postgres that holds the table: where clauses follow its semantics
    /// where versions differ (infinite intervals since 17).
    pub server_version: ServerVersion,
}

/// Postgres's `server_version_num`: `150004` for 15.4, `170002` for 17.2.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ServerVersion(pub u32);

impl ServerVersion {
    /// Postgres 15.0: the version a schema stored before ampere recorded one is read as (its
    /// where clause was compiled with Postgres 15's semantics then, and still is).
    pub const PG_15: Self = Self(150_000);
    /// Postgres 17.0, the first with infinite intervals.
    pub const PG_17: Self = Self(170_000);
    /// Postgres 18.0, the first whose publications can publish stored generated columns.
    pub const PG_18: Self = Self(180_000);

    /// The major version (`15`, `17`).
    pub const fn major(self) -> u32 {
        self.0 / 10_000
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major(), self.0 % 10_000)
    }
}

impl TableSchema {
    /// Indices of the key columns: the primary key in key order, or every column sorted by
    /// name when the table has none (protocol.md §3.3).
    pub fn key_columns(&self) -> Vec<usize> {
        let mut pk: Vec<(u32, usize)> = self
            .columns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.pk_index.map(|k| (k, i)))
            .collect();
        if pk.is_empty() {
            let mut all: Vec<usize> = (0..self.columns.len()).collect();
            all.sort_by(|&a, &b| self.columns[a].name.cmp(&self.columns[b].name));
            return all;
        }
        pk.sort_unstable();
        pk.into_iter().map(|(_, i)| i).collect()
    }

    /// The index of the column named `name`.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

/// `replica` mode: what an update or delete carries.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub enum Replica {
    /// Changed columns plus the key.
    #[default]
    Default,
    /// Full rows, with `old_value` on updates.
    Full,
}

impl Replica {
    /// The query-parameter spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Full => "full",
        }
    }
}

/// `log` mode: whether the shape's log starts with the table's rows (protocol.md §3.2).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub enum LogMode {
    /// The initial snapshot's rows, then every change.
    #[default]
    Full,
    /// Only the changes after the snapshot: its transaction runs, to know what to skip, but
    /// reads no rows, and the log starts with `snapshot-end` alone.
    ChangesOnly,
}

impl LogMode {
    /// The query-parameter spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::ChangesOnly => "changes_only",
        }
    }
}

/// What a shape is: table, row filter, column selection, replica and log modes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ShapeDefinition {
    /// The shape's table.
    pub relation: RelationName,
    /// Selected columns sorted by name, or `None` for all columns.
    pub columns: Option<Vec<String>>,
    /// Replica mode.
    pub replica: Replica,
    /// The where clause's canonical text, params inlined
    /// ([`WhereClause::canonicalize`](crate::where_clause::WhereClause::canonicalize)), or
    /// `None` for every row.
    pub where_clause: Option<String>,
    /// Log mode.
    pub log: LogMode,
}

/// Version of the canonical text [`ShapeDefinition::identity`] hashes. Bump when it changes,
/// so stored shapes keep their handles across upgrades (deploy-semantics ID-1).
const IDENTITY_VERSION: u32 = 1;

impl ShapeDefinition {
    /// A deterministic digest of the definition: equal definitions give equal digests in
    /// every process and version of ampere with the same [`IDENTITY_VERSION`].
    pub fn identity(&self) -> ShapeIdentity {
        ShapeIdentity(fnv1a64(self.canonical_text().as_bytes()))
    }

    /// The canonical, unambiguous text the identity hashes (length-prefixed parts).
    pub fn canonical_text(&self) -> String {
        let mut text = format!("v{IDENTITY_VERSION}");
        let mut part = |p: &str| text.push_str(&format!("|{}:{p}", p.len()));
        part(&self.relation.schema);
        part(&self.relation.table);
        match &self.columns {
            None => part("*"),
            Some(cols) => cols.iter().for_each(|c| part(c)),
        }
        part(self.replica.as_str());
        // Absent for where-less shapes, so their identity (and handles) stay as they were.
        if let Some(where_clause) = &self.where_clause {
            part("where");
            part(where_clause);
        }
        // Absent for full logs, likewise.
        if self.log != LogMode::Full {
            part("log");
            part(self.log.as_str());
        }
        text
    }
}

/// Digest of a [`ShapeDefinition`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ShapeIdentity(pub u64);

/// An opaque, URL-safe shape handle `<hash>-<stamp>`: never issued twice.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShapeHandle(String);

impl ShapeHandle {
    /// Mints the handle for `identity` with a stamp the caller guarantees is unique.
    pub fn mint(identity: ShapeIdentity, stamp: HandleStamp) -> Self {
        // 27 bits of the digest, as Electric's handles carry.
        Self(format!("{}-{}", identity.0 & 0x7FF_FFFF, stamp.0))
    }

    /// Wraps a handle read back from storage or a request.
    pub fn from_string(text: String) -> Self {
        Self(text)
    }

    /// The handle text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this handle replaced `earlier`: same definition digest, a later stamp. Within
    /// one storage directory stamps strictly increase (ID-2) and a definition has at most one
    /// live shape (ID-1), so `earlier` was retired before this handle was minted. A handle not
    /// in ampere's `<digest>-<stamp>` form replaced nothing.
    pub fn supersedes(&self, earlier: &Self) -> bool {
        match (self.parts(), earlier.parts()) {
            (Some((digest, stamp)), Some((earlier_digest, earlier_stamp))) => {
                digest == earlier_digest && stamp > earlier_stamp
            }
            _ => false,
        }
    }

    /// The stamp of a handle this crate minted (`None` for another form). Within one storage
    /// directory stamps strictly increase (ID-2), so they order shapes by creation.
    pub fn stamp(&self) -> Option<HandleStamp> {
        self.parts().map(|(_, stamp)| stamp)
    }

    /// The digest text and the stamp of a handle this crate minted.
    fn parts(&self) -> Option<(&str, HandleStamp)> {
        let (digest, stamp) = self.0.split_once('-')?;
        Some((digest, HandleStamp::from_digits(stamp)?))
    }
}

impl fmt::Display for ShapeHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ShapeHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShapeHandle({})", self.0)
    }
}

/// The unique part of a handle: microseconds of wall time, forced strictly above every stamp
/// issued before for the same storage directory (so clock steps never repeat a handle).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct HandleStamp(pub u64);

impl HandleStamp {
    /// The next stamp after `self`, at or after `unix_micros` when the clock is ahead.
    #[must_use]
    pub fn next(self, unix_micros: u64) -> Self {
        Self(unix_micros.max(self.0.saturating_add(1)))
    }

    /// `self` plus `micros`, for a reservation reaching past the stamp in hand.
    #[must_use]
    pub fn plus(self, micros: u64) -> Self {
        Self(self.0.saturating_add(micros))
    }

    /// The publication comment that records a reservation through `self` in Postgres.
    pub fn reservation_comment(self) -> String {
        format!("{RESERVATION_PREFIX}{}", self.0)
    }

    /// The reservation a publication comment records; `None` for a comment ampere did not
    /// write (an operator's), which reserves nothing.
    pub fn from_reservation_comment(comment: &str) -> Option<Self> {
        Self::from_digits(comment.strip_prefix(RESERVATION_PREFIX)?)
    }

    /// What a publication with `comment` (`obj_description`, NULL without one) has reserved:
    /// zero unless ampere wrote the comment.
    pub fn reserved_by(comment: Option<&str>) -> Self {
        comment
            .and_then(Self::from_reservation_comment)
            .unwrap_or_default()
    }

    /// A stamp written as decimal digits only (no sign, no blanks, within `u64`).
    fn from_digits(digits: &str) -> Option<Self> {
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().map(Self)
    }
}

/// How a stamp reservation reads as a publication comment (`COMMENT ON PUBLICATION`).
const RESERVATION_PREFIX: &str = "ampere: handle stamps reserved through ";

/// 64-bit FNV-1a: tiny, stable across platforms and releases (unlike `DefaultHasher`).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(table: &str, columns: Option<&[&str]>, replica: Replica) -> ShapeDefinition {
        ShapeDefinition {
            relation: RelationName {
                schema: "public".into(),
                table: table.into(),
            },
            columns: columns.map(|c| c.iter().map(|s| (*s).to_owned()).collect()),
            replica,
            where_clause: None,
            log: LogMode::Full,
        }
    }

    #[test]
    fn identity_is_deterministic_and_distinguishes_every_part() {
        let base = def("items", None, Replica::Default);
        assert_eq!(
            base.identity(),
            def("items", None, Replica::Default).identity()
        );
        let others = [
            def("items2", None, Replica::Default),
            def("items", Some(&["id"]), Replica::Default),
            def("items", None, Replica::Full),
            ShapeDefinition {
                where_clause: Some("id = '1'".into()),
                ..def("items", None, Replica::Default)
            },
            ShapeDefinition {
                log: LogMode::ChangesOnly,
                ..def("items", None, Replica::Default)
            },
        ];
        for other in others {
            assert_ne!(base.identity(), other.identity(), "{other:?}");
        }
    }

    #[test]
    fn identity_is_stable_across_releases() {
        // Pinned: changing it orphans every stored shape; bump IDENTITY_VERSION instead.
        assert_eq!(
            def("items", None, Replica::Default).identity(),
            ShapeIdentity(0x73d1_69ac_4a39_42e1)
        );
    }

    #[test]
    fn canonical_text_cannot_be_confused_by_separators_in_names() {
        let a = def("a|1:b", None, Replica::Default);
        let b = ShapeDefinition {
            relation: RelationName {
                schema: "public|1:a".into(),
                table: "b".into(),
            },
            ..a.clone()
        };
        assert_ne!(a.canonical_text(), b.canonical_text());
    }

    #[test]
    fn a_stamp_reservation_reads_back_from_its_comment_and_nothing_else_reserves() {
        let through = HandleStamp(1_767_225_600_531_001);
        let comment = through.reservation_comment();
        assert_eq!(
            HandleStamp::from_reservation_comment(&comment),
            Some(through)
        );
        for foreign in [
            "",
            "publication for electric",
            "ampere: handle stamps reserved through ",
            "ampere: handle stamps reserved through 12x",
            "ampere: handle stamps reserved through -5",
            "ampere: handle stamps reserved through 99999999999999999999999",
        ] {
            assert_eq!(
                HandleStamp::from_reservation_comment(foreign),
                None,
                "{foreign:?}"
            );
        }
    }

    #[test]
    fn handle_stamps_strictly_increase_even_when_the_clock_steps_back() {
        let s1 = HandleStamp::default().next(1_000);
        let s2 = s1.next(500);
        let s3 = s2.next(5_000);
        assert_eq!((s1.0, s2.0, s3.0), (1_000, 1_001, 5_000));
    }

    #[test]
    fn handles_are_url_safe() {
        let h = ShapeHandle::mint(ShapeIdentity(u64::MAX), HandleStamp(1_721_812_114_261_123));
        assert_eq!(h.as_str(), "134217727-1721812114261123");
        assert!(h
            .as_str()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    }

    #[test]
    fn a_handle_supersedes_only_earlier_handles_of_its_own_definition() {
        let items = def("items", None, Replica::Default).identity();
        let others = def("others", None, Replica::Default).identity();
        let first = ShapeHandle::mint(items, HandleStamp(1_000));
        let second = ShapeHandle::mint(items, HandleStamp(2_000));
        assert!(second.supersedes(&first));
        assert!(!first.supersedes(&second));
        assert!(!first.supersedes(&first));
        assert!(!ShapeHandle::mint(others, HandleStamp(3_000)).supersedes(&first));
        for foreign in ["gone-1x", "gone", "-", "1-", "1-+5"] {
            let foreign = ShapeHandle::from_string(foreign.to_owned());
            assert!(!foreign.supersedes(&first) && !first.supersedes(&foreign));
        }
    }

    #[test]
    fn a_minted_handle_reads_back_its_stamp_and_a_foreign_one_has_none() {
        let items = def("items", None, Replica::Default).identity();
        let handle = ShapeHandle::mint(items, HandleStamp(1_721_812_114_261_123));
        assert_eq!(handle.stamp(), Some(HandleStamp(1_721_812_114_261_123)));
        for foreign in ["gone-1x", "gone", "-", "1-"] {
            assert_eq!(ShapeHandle::from_string(foreign.to_owned()).stamp(), None);
        }
    }

    #[test]
    fn key_columns_fall_back_to_all_columns_sorted_by_name() {
        let col = |name: &str, pk: Option<u32>| ColumnSchema {
            name: name.into(),
            type_oid: 23,
            typname: "int4".into(),
            dims: 0,
            not_null: false,
            pk_index: pk,
            modifiers: vec![],
            is_enum: false,
        };
        let mut t = TableSchema {
            server_version: ServerVersion::PG_15,
            oid: Oid(1),
            relation: RelationName {
                schema: "public".into(),
                table: "t".into(),
            },
            columns: vec![col("b", None), col("a", None), col("c", None)],
        };
        assert_eq!(t.key_columns(), vec![1, 0, 2]);
        t.columns[2].pk_index = Some(0);
        t.columns[0].pk_index = Some(1);
        assert_eq!(t.key_columns(), vec![2, 0]);
    }
}
