//! The publication before streaming (SL-1): created with the options ampere needs, an existing
//! one brought to them where ampere may, and what slot setup must know of it first.
//!
//! The options, set at `CREATE PUBLICATION` and checked on an existing publication:
//! - `publish_via_partition_root = true` (PostgreSQL 13+, so every server ampere supports):
//!   pgoutput publishes a partition's changes under the partitioned table the publication
//!   holds, which a shape on that table follows. Without it they come under each partition's
//!   own relation and such a shape sees none after its snapshot. Electric creates its
//!   publication with it.
//! - `publish_generated_columns = stored` from PostgreSQL 18, whose catalog puts stored
//!   generated columns in table schemas: pgoutput's tuples must carry them too.
//!
//! An existing publication without one (an older ampere's, or an operator's) is altered unless
//! `ELECTRIC_MANUAL_TABLE_PUBLISHING` forbids it or the role may not (it does not own it): then
//! one warning names the SQL to run, and what needs the option fails visibly instead of
//! silently missing changes — a shape on a partitioned table is refused naming the same SQL
//! (snapshot step 1, [`ampere_core::snapshot_steps::PublishedAs::Partitions`]), a shape
//! including a stored generated column refetches on every change.
//!
//! Turning `publish_via_partition_root` on while the publication already publishes a
//! partitioned table changes the relation its partitions' changes come under: the slot's
//! unconsumed changes would still be decoded the old way (pgoutput reads the publication as of
//! each change), and shapes on that table built under the old setting already missed changes.
//! [`existing`] reports it ([`ExistingPublication::is_rerouting`]), and slot setup drops the
//! slot before the alteration, as for a missing publication: storage is purged once (CT-1)
//! and clients refetch. A publication that holds no partitioned table is altered in place.
//!
//! Never: alters a publication in [`TablePublishing::Manual`], or decides what a failure means.

use tokio_postgres::Client;

use ampere_core::shape::{quote_ident, HandleStamp, ServerVersion};
use ampere_core::slot_setup::ExistingPublication;
use ampere_core::snapshot_steps::TablePublishing;

use crate::pg::{sql, PgPortError};

/// SQLSTATE `duplicate_object` (the publication exists).
const DUPLICATE_OBJECT: &str = "42710";
/// SQLSTATE `insufficient_privilege`.
const INSUFFICIENT_PRIVILEGE: &str = "42501";

/// A publication parameter ampere needs on.
#[derive(Clone, Copy, Debug)]
struct PublicationOption {
    /// Its `pg_publication` column, read as text.
    column: &'static str,
    /// The column's text when the option is on.
    on: &'static str,
    /// The `WITH (…)` / `SET (…)` item that turns it on.
    setting: &'static str,
    /// What goes wrong without it, for the warning.
    without: &'static str,
}

/// `publish_via_partition_root = true`.
const VIA_PARTITION_ROOT: PublicationOption = PublicationOption {
    column: "pubviaroot",
    on: "true",
    setting: "publish_via_partition_root = true",
    without: "it publishes partitions' changes under their own names: a shape on a \
              partitioned table is refused",
};

/// `publish_generated_columns = stored` (PostgreSQL 18+).
const GENERATED_COLUMNS: PublicationOption = PublicationOption {
    column: "pubgencols",
    on: "s",
    setting: "publish_generated_columns = stored",
    without: "it does not publish stored generated columns: a shape of a table with one will \
              be told to refetch on every change",
};

/// The options a publication needs on a server of `server_version` (`server_version_num`).
fn options(server_version: u32) -> Vec<PublicationOption> {
    let mut options = vec![VIA_PARTITION_ROOT];
    if ServerVersion(server_version) >= ServerVersion::PG_18 {
        options.push(GENERATED_COLUMNS);
    }
    options
}

/// `CREATE PUBLICATION … WITH (<options>)`; `true` when it was created now. An existing one
/// is checked (SL-1: it must publish every operation when ampere may not create it) and its
/// options brought to ampere's where it may.
pub(crate) async fn ensure(
    admin: &Client,
    publication: &str,
    server_version: u32,
    publishing: &TablePublishing,
) -> Result<bool, PgPortError> {
    let options = options(server_version);
    let settings: Vec<&str> = options.iter().map(|o| o.setting).collect();
    let create = format!(
        "CREATE PUBLICATION {} WITH ({})",
        quote_ident(publication),
        settings.join(", ")
    );
    let error = match admin.batch_execute(&create).await {
        Ok(()) => return Ok(true),
        Err(error) => error,
    };
    match sqlstate(&error) {
        Some(DUPLICATE_OBJECT) => {}
        Some(INSUFFICIENT_PRIVILEGE) => check_operations(admin, publication).await?,
        _ => {
            return Err(PgPortError::Sql {
                during: "creating the publication",
                source: error,
            })
        }
    }
    for option in options {
        set_option(admin, publication, publishing, option).await?;
    }
    Ok(false)
}

/// The publication as it is before [`ensure`] runs (`None`: there is none): its handle-stamp
/// reservation (ID-2), and whether [`ensure`] will reroute changes of a partitioned table it
/// already publishes — `publish_via_partition_root` off, a partitioned table listed (or
/// `FOR ALL TABLES` with one in the database), and ampere both allowed ([`TablePublishing`])
/// and able (it owns the publication, or is a superuser) to alter it. Schemas a publication
/// lists (`FOR TABLES IN SCHEMA`, which ampere never adds) are not looked at.
pub(crate) async fn existing(
    admin: &Client,
    publication: &str,
    publishing: &TablePublishing,
) -> Result<Option<ExistingPublication>, PgPortError> {
    const SQL: &str = "SELECT pg_catalog.obj_description(p.oid, 'pg_publication'), \
         p.pubviaroot, \
         EXISTS (SELECT 1 FROM pg_catalog.pg_publication_rel r \
                 JOIN pg_catalog.pg_class c ON c.oid = r.prrelid \
                 WHERE r.prpubid = p.oid AND c.relkind = 'p') \
           OR (p.puballtables \
               AND EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.relkind = 'p')), \
         pg_catalog.pg_has_role(p.pubowner, 'USAGE') \
         FROM pg_catalog.pg_publication p WHERE p.pubname = $1";
    let during = "reading the publication";
    let rows = admin
        .query(SQL, &[&publication])
        .await
        .map_err(sql(during))?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let comment: Option<&str> = row.try_get(0).map_err(sql(during))?;
    let is_via_root: bool = row.try_get(1).map_err(sql(during))?;
    let holds_partitioned: bool = row.try_get(2).map_err(sql(during))?;
    let is_owner: bool = row.try_get(3).map_err(sql(during))?;
    let may_alter = matches!(publishing, TablePublishing::Automatic) && is_owner;
    Ok(Some(ExistingPublication {
        stamps_reserved: HandleStamp::reserved_by(comment),
        is_rerouting: !is_via_root && holds_partitioned && may_alter,
    }))
}

/// Turns `option` on for an existing publication, unless it is on, `publishing` forbids it,
/// or the role may not (then one warning names the SQL; the publication still serves every
/// table that does not need the option, so this is never an error).
async fn set_option(
    admin: &Client,
    publication: &str,
    publishing: &TablePublishing,
    option: PublicationOption,
) -> Result<(), PgPortError> {
    let read = format!(
        "SELECT {}::text FROM pg_catalog.pg_publication WHERE pubname = $1",
        option.column
    );
    let during = "reading the publication's options";
    let rows = admin
        .query(&read, &[&publication])
        .await
        .map_err(sql(during))?;
    if rows
        .first()
        .map(|row| row.try_get::<_, String>(0))
        .transpose()
        .map_err(sql(during))?
        .is_none_or(|value| value == option.on)
    {
        return Ok(());
    }
    let alter = format!(
        "ALTER PUBLICATION {} SET ({})",
        quote_ident(publication),
        option.setting
    );
    let unaltered = |why: &str| {
        tracing::warn!(%publication,
            "the publication lacks {} and {why}: {}; run: {alter};",
            option.setting, option.without);
    };
    if matches!(publishing, TablePublishing::Manual { .. }) {
        unaltered("ELECTRIC_MANUAL_TABLE_PUBLISHING=true keeps ampere from altering it");
        return Ok(());
    }
    match admin.batch_execute(&alter).await {
        Ok(()) => {
            tracing::info!(%publication, "altered the publication: {}", option.setting);
            Ok(())
        }
        Err(error) if sqlstate(&error) == Some(INSUFFICIENT_PRIVILEGE) => {
            unaltered("the role may not alter it (it does not own it)");
            Ok(())
        }
        Err(source) => Err(PgPortError::Sql {
            during: "setting the publication's options",
            source,
        }),
    }
}

/// SL-1, without the privilege to create it: the publication must exist and publish inserts,
/// updates, deletes and truncates.
async fn check_operations(admin: &Client, publication: &str) -> Result<(), PgPortError> {
    const SQL: &str = "SELECT pubinsert, pubupdate, pubdelete, pubtruncate \
                       FROM pg_catalog.pg_publication WHERE pubname = $1";
    let during = "reading the publication";
    let rows = admin
        .query(SQL, &[&publication])
        .await
        .map_err(sql(during))?;
    let Some(row) = rows.first() else {
        return Err(PgPortError::Publication {
            publication: publication.to_owned(),
            missing: "the publication does not exist and the role may not create it".to_owned(),
        });
    };
    let mut missing = Vec::new();
    for (i, operation) in ["insert", "update", "delete", "truncate"]
        .into_iter()
        .enumerate()
    {
        if !row.try_get::<_, bool>(i).map_err(sql(during))? {
            missing.push(operation);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(PgPortError::Publication {
        publication: publication.to_owned(),
        missing: format!("it does not publish {}", missing.join(", ")),
    })
}

fn sqlstate(error: &tokio_postgres::Error) -> Option<&str> {
    error.code().map(tokio_postgres::error::SqlState::code)
}
