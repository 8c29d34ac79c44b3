//! Table lookups in the Postgres catalog: columns, types, primary key, type modifiers
//! (protocol.md §4.2) and generated columns (§3.3: part of the table from PostgreSQL 18, whose
//! pgoutput sends stored ones; refused in shapes before).
//!
//! Owns: one parameterized catalog query and the decoding of `atttypmod` into the modifier
//! members of `electric-schema`. Never: caches, retries or holds a connection of its own.
//!
//! The query runs on a connection or inside a transaction ([`GenericClient`]): in a
//! `REPEATABLE READ` transaction it reads the catalog as of that transaction's snapshot, which
//! is how a snapshot checks the table it read against its shape's schema (SN-3).

use tokio_postgres::error::SqlState;
use tokio_postgres::GenericClient;

use ampere_core::json::push_json_string;
use ampere_core::pgoutput::Oid;
use ampere_core::shape::{ColumnSchema, RelationName, ServerVersion, TableSchema};

pub use ampere_core::ports::CatalogTable;

/// Why a catalog lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The query failed (connection lost, permission denied, …).
    #[error("catalog lookup of {relation} failed")]
    Query {
        /// The table looked up.
        relation: RelationName,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A catalog row did not have the expected form.
    #[error("catalog lookup of {relation} returned an unexpected row: {what}")]
    Malformed {
        /// The table looked up.
        relation: RelationName,
        /// What was wrong.
        what: &'static str,
    },
}

impl CatalogError {
    /// The driver error behind a failed query, to classify it.
    pub fn postgres_error(&self) -> Option<&tokio_postgres::Error> {
        match self {
            Self::Query { source, .. } => Some(source),
            Self::Malformed { .. } => None,
        }
    }
}

/// One row per non-dropped column in `attnum` order; a table without columns gives one row of
/// NULL column fields (LEFT JOIN), and a missing table (or another relkind) gives no row.
/// `unnest(indkey) WITH ORDINALITY` numbers key columns from 1 whatever `int2vector`'s
/// subscripts are.
const TABLE_QUERY: &str = "\
SELECT c.oid, a.attname::text, a.atttypid, a.attndims::int4, a.attnotnull, a.atttypmod,
       a.attgenerated::text, t.typname::text, et.typname::text, pk.pk_index,
       t.typtype = 'e', current_setting('server_version_num')::int4
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_attribute a
       ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_catalog.pg_type et ON et.oid = t.typelem AND a.attndims > 0
LEFT JOIN LATERAL (
    SELECT (k.ord - 1)::int4 AS pk_index
    FROM pg_catalog.pg_index i, unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
    WHERE i.indrelid = c.oid AND i.indisprimary AND k.attnum = a.attnum
) pk ON true
WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
ORDER BY a.attnum";

/// The current name of each table among `$1` that still exists (a dropped table has no
/// row) and whose changes publication `$2` publishes under it: not a partition with an
/// ancestor the publication lists while publishing via partition root, whose changes come
/// under that ancestor. One query for every shape's table, however many (issue 12,
/// "Relations"); the publication's tables are listed only for partitions.
const RELATION_NAMES_QUERY: &str = "\
SELECT c.oid, n.nspname::text, c.relname::text
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = ANY($1)
  AND NOT (c.relispartition AND EXISTS (
      SELECT 1
      FROM pg_catalog.pg_publication p,
           pg_catalog.pg_partition_ancestors(c.oid) AS t(relid)
      JOIN pg_catalog.pg_class ac ON ac.oid = t.relid
      JOIN pg_catalog.pg_namespace an ON an.oid = ac.relnamespace
      WHERE p.pubname = $2 AND p.pubviaroot AND t.relid <> c.oid
        AND EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables pt
                    WHERE pt.pubname = $2 AND pt.schemaname = an.nspname
                      AND pt.tablename = ac.relname)))";

/// `(pg_class.oid, name)` of the tables among `tables` that still exist and whose changes
/// `publication` publishes under them ([`RELATION_NAMES_QUERY`]), in no order.
pub async fn relation_names(
    client: &impl GenericClient,
    tables: &[Oid],
    publication: &str,
) -> Result<Vec<(Oid, RelationName)>, tokio_postgres::Error> {
    let oids: Vec<u32> = tables.iter().map(|oid| oid.0).collect();
    let rows = client
        .query(RELATION_NAMES_QUERY, &[&oids, &publication])
        .await?;
    let mut found = Vec::with_capacity(rows.len());
    for row in rows {
        let oid: u32 = row.try_get(0)?;
        let relation = RelationName {
            schema: row.try_get(1)?,
            table: row.try_get(2)?,
        };
        found.push((Oid(oid), relation));
    }
    Ok(found)
}

/// The server's wall clock in `zone` at each Unix second, in order (`PgPort::time_zone_wall_clocks`).
const TIME_ZONE_WALL_CLOCKS_QUERY: &str =
    "SELECT extract(epoch FROM to_timestamp(s) AT TIME ZONE $2)::int8 \
     FROM unnest($1::int8[]) WITH ORDINALITY AS probe(s, i) ORDER BY i";

/// `PgPort::time_zone_wall_clocks`: `None` when the server does not recognize `zone`.
pub async fn time_zone_wall_clocks(
    client: &impl GenericClient,
    zone: &str,
    instants: &[i64],
) -> Result<Option<Vec<i64>>, tokio_postgres::Error> {
    match client
        .query(TIME_ZONE_WALL_CLOCKS_QUERY, &[&instants, &zone])
        .await
    {
        Ok(rows) => rows
            .iter()
            .map(|row| row.try_get::<_, i64>(0))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Err(e) if e.code() == Some(&SqlState::INVALID_PARAMETER_VALUE) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Looks `relation` up: `None` unless it is an ordinary (`r`) or partitioned (`p`) table.
pub async fn table_schema(
    client: &impl GenericClient,
    relation: &RelationName,
) -> Result<Option<TableSchema>, CatalogError> {
    Ok(table(client, relation).await?.map(|t| t.schema))
}

/// Like [`table_schema`], also naming the generated columns.
pub async fn table(
    client: &impl GenericClient,
    relation: &RelationName,
) -> Result<Option<CatalogTable>, CatalogError> {
    let rows = client
        .query(TABLE_QUERY, &[&relation.schema, &relation.table])
        .await
        .map_err(|source| CatalogError::Query {
            relation: relation.clone(),
            source,
        })?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let malformed = |what| CatalogError::Malformed {
        relation: relation.clone(),
        what,
    };
    let oid: u32 = first.try_get(0).map_err(|_| malformed("oid"))?;
    let server_version: i32 = first
        .try_get(11)
        .map_err(|_| malformed("server_version_num"))?;
    let server_version =
        ServerVersion(u32::try_from(server_version).map_err(|_| malformed("server_version_num"))?);
    let mut columns = Vec::with_capacity(rows.len());
    let mut generated = Vec::new();
    for row in &rows {
        let Some(name) = row
            .try_get::<_, Option<String>>(1)
            .map_err(|_| malformed("attname"))?
        else {
            continue; // the single NULL row of a table without columns
        };
        let column = decode_column(row, name).map_err(malformed)?;
        let attgenerated: String = row.try_get(6).map_err(|_| malformed("attgenerated"))?;
        if is_replicated(&attgenerated, server_version) {
            columns.push(column);
        } else {
            generated.push(column.name);
        }
    }
    let schema = TableSchema {
        oid: Oid(oid),
        relation: relation.clone(),
        columns,
        server_version,
    };
    Ok(Some(CatalogTable { schema, generated }))
}

/// Whether pgoutput sends a column with this `attgenerated`: ordinary columns always; stored
/// generated ones (`s`) from PostgreSQL 18, whose publications ampere makes (or alters to)
/// `publish_generated_columns = stored` (`publication::ensure`); virtual ones (`v`, 18)
/// never. Electric decides the same way (`supports_generated_column_replication`).
fn is_replicated(attgenerated: &str, server_version: ServerVersion) -> bool {
    match attgenerated {
        "" => true,
        "s" => server_version >= ServerVersion::PG_18,
        _ => false,
    }
}

/// A column from one row of [`TABLE_QUERY`] (`name` already read).
fn decode_column(row: &tokio_postgres::Row, name: String) -> Result<ColumnSchema, &'static str> {
    let type_oid: u32 = row.try_get(2).map_err(|_| "atttypid")?;
    let attndims: i32 = row.try_get(3).map_err(|_| "attndims")?;
    let not_null: bool = row.try_get(4).map_err(|_| "attnotnull")?;
    let typmod: i32 = row.try_get(5).map_err(|_| "atttypmod")?;
    let own_typname: String = row.try_get(7).map_err(|_| "typname")?;
    let element_typname: Option<String> = row.try_get(8).map_err(|_| "element typname")?;
    let pk_index: Option<i32> = row.try_get(9).map_err(|_| "pk_index")?;
    let is_enum: bool = row.try_get(10).map_err(|_| "typtype")?;
    let dims = u32::try_from(attndims).map_err(|_| "negative attndims")?;
    // An array declared with dimensions reports its element type; one declared without
    // (`_int4`, CREATE TABLE AS) keeps the array type's own name (Electric's behaviour).
    let typname = match (dims, element_typname) {
        (1.., Some(element)) => element,
        _ => own_typname,
    };
    let pk_index = pk_index
        .map(u32::try_from)
        .transpose()
        .map_err(|_| "negative pk_index")?;
    Ok(ColumnSchema {
        modifiers: modifiers(&typname, typmod),
        is_enum,
        name,
        type_oid,
        typname,
        dims,
        not_null,
        pk_index,
    })
}

/// Postgres's `VARHDRSZ`: `varchar`, `bpchar` and `numeric` typmods are offset by it.
const VARHDRSZ: i32 = 4;
/// `interval` typmod range bits (`INTERVAL_MASK` in Postgres's `datetime.h`), in the order the
/// `fields` member names them.
const INTERVAL_FIELDS: [(&str, u32); 6] = [
    ("YEAR", 1 << 2),
    ("MONTH", 1 << 1),
    ("DAY", 1 << 3),
    ("HOUR", 1 << 10),
    ("MINUTE", 1 << 11),
    ("SECOND", 1 << 12),
];
/// `INTERVAL_FULL_RANGE`: no fields were given.
const INTERVAL_FULL_RANGE: u32 = 0x7FFF;
/// `INTERVAL_FULL_PRECISION`: no precision was given.
const INTERVAL_FULL_PRECISION: u32 = 0xFFFF;

/// `electric-schema` modifier members for a column of type `typname` (as reported, so the
/// element type for arrays with dimensions) with `atttypmod` `typmod`, rendered as
/// `(name, JSON value)` in a fixed order. `-1` (no modifier) gives none.
pub fn modifiers(typname: &str, typmod: i32) -> Vec<(String, String)> {
    let num = |name: &str, value: i64| (name.to_owned(), value.to_string());
    if typmod < 0 {
        return Vec::new();
    }
    match typname {
        "varchar" | "text" if typmod >= VARHDRSZ => {
            vec![num("max_length", i64::from(typmod - VARHDRSZ))]
        }
        "bpchar" if typmod >= VARHDRSZ => vec![num("length", i64::from(typmod - VARHDRSZ))],
        "bit" | "varbit" => vec![num("length", i64::from(typmod))],
        "time" | "timetz" | "timestamp" | "timestamptz" => {
            if typmod > 0 {
                vec![num("precision", i64::from(typmod))]
            } else {
                Vec::new()
            }
        }
        "numeric" if typmod >= VARHDRSZ => {
            let packed = typmod - VARHDRSZ;
            let precision = (packed >> 16) & 0xFFFF;
            // The scale is an 11-bit two's-complement field (negative scales since PG 15).
            let scale = ((packed & 0x7FF) ^ 0x400) - 0x400;
            vec![
                num("precision", i64::from(precision)),
                num("scale", i64::from(scale)),
            ]
        }
        "interval" => interval_modifiers(typmod),
        _ => vec![num("type_mod", i64::from(typmod))],
    }
}

/// `interval` typmods: the range mask in the high 16 bits, the precision in the low 16.
fn interval_modifiers(typmod: i32) -> Vec<(String, String)> {
    let bits = typmod.unsigned_abs();
    let range = bits >> 16;
    let precision = bits & 0xFFFF;
    let mut out = Vec::new();
    if range != INTERVAL_FULL_RANGE {
        let units: Vec<&str> = INTERVAL_FIELDS
            .iter()
            .filter(|(_, mask)| range & mask != 0)
            .map(|(unit, _)| *unit)
            .collect();
        let fields = match units.as_slice() {
            [] => None,
            [unit] => Some((*unit).to_owned()),
            [first, .., last] => Some(format!("{first} TO {last}")),
        };
        if let Some(fields) = fields {
            let mut json = String::new();
            push_json_string(&mut json, &fields);
            out.push(("fields".to_owned(), json));
        }
    }
    if precision != INTERVAL_FULL_PRECISION {
        out.push(("precision".to_owned(), precision.to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(typname: &str, typmod: i32) -> String {
        let parts: Vec<String> = modifiers(typname, typmod)
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        parts.join(",")
    }

    #[test]
    fn modifiers_decode_lengths_precisions_and_scales() {
        assert_eq!(rendered("varchar", 24), "max_length=20");
        assert_eq!(rendered("varchar", -1), "");
        assert_eq!(rendered("bpchar", 7), "length=3");
        assert_eq!(rendered("bit", 8), "length=8");
        assert_eq!(rendered("varbit", 16), "length=16");
        assert_eq!(rendered("timestamp", 3), "precision=3");
        assert_eq!(rendered("timestamptz", 0), "");
        assert_eq!(
            rendered("numeric", (10 << 16 | 2) + 4),
            "precision=10,scale=2"
        );
        // numeric(5,-2): scale is stored as 11-bit two's complement
        assert_eq!(
            rendered("numeric", (5 << 16 | (-2_i32 & 0x7FF)) + 4),
            "precision=5,scale=-2"
        );
        assert_eq!(rendered("int4", -1), "");
        assert_eq!(rendered("mytype", 42), "type_mod=42");
    }

    #[test]
    fn interval_modifiers_name_fields_and_precision() {
        let typmod = |range: u32, precision: u32| i32::try_from(range << 16 | precision).unwrap();
        assert_eq!(
            rendered("interval", typmod(1 << 3, 0xFFFF)),
            "fields=\"DAY\""
        );
        let minute_to_second = (1 << 11) | (1 << 12);
        assert_eq!(
            rendered("interval", typmod(minute_to_second, 3)),
            "fields=\"MINUTE TO SECOND\",precision=3"
        );
        let year_to_month = (1 << 2) | (1 << 1);
        assert_eq!(
            rendered("interval", typmod(year_to_month, 0xFFFF)),
            "fields=\"YEAR TO MONTH\""
        );
        assert_eq!(rendered("interval", typmod(0x7FFF, 2)), "precision=2");
    }
}
