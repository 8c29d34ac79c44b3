//! A table's standing with the publication, as the catalog says (SL-5): whether the
//! publication publishes it, under which relation its changes come ([`PublishedAs`]: a
//! partitioned table's, a partition's, or its own), and which tables of its partition tree
//! lack `REPLICA IDENTITY FULL`.
//!
//! Partitions: pgoutput names one relation per change. With `publish_via_partition_root`
//! (ampere's publications have it, [`crate::publication`]) a partition's changes come under
//! the topmost partitioned table the publication holds, so a shape on that table follows them
//! and a shape on the partition sees none; without it they come under the partition's own
//! name and a shape on the partitioned table sees none. Old rows are written by each
//! partition's own replica identity: `ALTER TABLE parent REPLICA IDENTITY FULL` does not
//! reach existing partitions, so a partitioned table needs `FULL` on every one.
//!
//! Catalog reads only (any role may run them), on a connection or inside a transaction.
//! Never: alters anything, caches, retries.

use tokio_postgres::GenericClient;

use ampere_core::shape::RelationName;
use ampere_core::snapshot_steps::{Membership, PublishedAs};

/// `$1` the publication, `$2`/`$3` the table's schema and name: whether the publication
/// publishes the table, whether it is partitioned, whether the publication publishes via
/// partition root (`true` when there is no publication: it publishes nothing anyway), and for
/// a partition published under an ancestor, the topmost such ancestor's schema and name.
///
/// "Published": `pg_publication_tables` lists it (tables listed, `FOR ALL TABLES` and
/// `FOR TABLES IN SCHEMA` alike), or it is a partitioned table listed in `pg_publication_rel`
/// or covered by `FOR ALL TABLES`, which that view shows as its partitions while the
/// publication does not publish via partition root.
const STANDING_QUERY: &str = "\
SELECT COALESCE(
         EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables pt
                 WHERE pt.pubname = $1 AND pt.schemaname = n.nspname AND pt.tablename = c.relname)
         OR (c.relkind = 'p' AND (p.puballtables OR EXISTS (
                 SELECT 1 FROM pg_catalog.pg_publication_rel r
                 WHERE r.prpubid = p.oid AND r.prrelid = c.oid))),
         false),
       c.relkind = 'p',
       COALESCE(p.pubviaroot, true),
       a.schema_name,
       a.table_name
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_publication p ON p.pubname = $1
LEFT JOIN LATERAL (
    SELECT an.nspname::text AS schema_name, ac.relname::text AS table_name
    FROM pg_catalog.pg_partition_ancestors(c.oid) WITH ORDINALITY AS t(relid, depth)
    JOIN pg_catalog.pg_class ac ON ac.oid = t.relid
    JOIN pg_catalog.pg_namespace an ON an.oid = ac.relnamespace
    WHERE c.relispartition AND p.pubviaroot AND t.relid <> c.oid
      AND EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables pt
                  WHERE pt.pubname = $1 AND pt.schemaname = an.nspname
                    AND pt.tablename = ac.relname)
    ORDER BY t.depth DESC
    LIMIT 1
) a ON true
WHERE n.nspname = $2 AND c.relname = $3";

/// `$1`/`$2` the table's schema and name: the tables whose replica identity is not `FULL`
/// among the table itself and, for a partitioned table, every table of its partition tree
/// (`pg_partition_tree`, which lists nothing for a table outside partitioning); the table
/// itself first.
const NOT_FULL_QUERY: &str = "\
WITH target AS (
    SELECT c.oid FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = $1 AND c.relname = $2
)
SELECT n.nspname::text, c.relname::text
FROM target, pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND c.relreplident <> 'f'
  AND (c.oid = target.oid
       OR c.oid IN (SELECT relid FROM pg_catalog.pg_partition_tree(target.oid)))
ORDER BY c.oid = target.oid DESC, n.nspname, c.relname";

/// Whether `publication` publishes `relation`, and under which relation; `None` when the
/// table does not exist.
pub(crate) async fn standing(
    client: &impl GenericClient,
    publication: &str,
    relation: &RelationName,
) -> Result<Option<(bool, PublishedAs)>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            STANDING_QUERY,
            &[&publication, &relation.schema, &relation.table],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let is_published: bool = row.try_get(0)?;
    let is_partitioned: bool = row.try_get(1)?;
    let is_via_root: bool = row.try_get(2)?;
    let ancestor_schema: Option<String> = row.try_get(3)?;
    let ancestor_table: Option<String> = row.try_get(4)?;
    let published_as = match (ancestor_schema, ancestor_table) {
        (Some(schema), Some(table)) => PublishedAs::Ancestor(RelationName { schema, table }),
        _ if is_partitioned && !is_via_root => PublishedAs::Partitions,
        _ => PublishedAs::Itself,
    };
    Ok(Some((is_published, published_as)))
}

/// The tables among `relation` and its partition tree whose replica identity is not `FULL`,
/// `relation` first (empty for a missing table).
pub(crate) async fn replica_identity_not_full(
    client: &impl GenericClient,
    relation: &RelationName,
) -> Result<Vec<RelationName>, tokio_postgres::Error> {
    let rows = client
        .query(NOT_FULL_QUERY, &[&relation.schema, &relation.table])
        .await?;
    rows.iter()
        .map(|row| {
            Ok(RelationName {
                schema: row.try_get(0)?,
                table: row.try_get(1)?,
            })
        })
        .collect()
}

/// The table's [`Membership`] in `publication` (a missing publication publishes nothing);
/// `None` when the table does not exist.
pub(crate) async fn membership(
    client: &impl GenericClient,
    publication: &str,
    relation: &RelationName,
) -> Result<Option<Membership>, tokio_postgres::Error> {
    let Some((is_published, published_as)) = standing(client, publication, relation).await? else {
        return Ok(None);
    };
    Ok(Some(Membership {
        is_published,
        replica_identity_not_full: replica_identity_not_full(client, relation).await?,
        published_as,
    }))
}
