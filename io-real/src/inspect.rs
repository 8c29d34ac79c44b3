//! Read-only inspection of what one replication stream uses in Postgres, for `ampere status`
//! and `ampere check-db`: the replication slot and the WAL it retains, the publication and its
//! tables' replica identity, the backend holding the stream's advisory lock, and the server
//! facts a deployment depends on (version, `wal_level`, the role's attributes, free slots and
//! walsenders, TLS).
//!
//! Owns the catalog queries only. Never creates, alters, locks or terminates anything: every
//! statement is a `SELECT` on catalog views. Judging the answers (healthy or not, what to fix)
//! is the caller's.

use tokio_postgres::{Client, Row};

use crate::pg::{sql, PgPortError};

/// One replication slot, from `pg_replication_slots`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotStatus {
    /// `slot_type`: `logical` for ampere's.
    pub slot_type: String,
    /// `plugin` (`pgoutput` for ampere's).
    pub plugin: Option<String>,
    /// The database a logical slot belongs to.
    pub database: Option<String>,
    /// `temporary`: dropped when its walsender exits.
    pub temporary: bool,
    /// `active`: a walsender streams from it now.
    pub active: bool,
    /// `active_pid`: that walsender's backend.
    pub active_pid: Option<i32>,
    /// `wal_status`: `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    /// `restart_lsn`: the oldest WAL the slot keeps.
    pub restart_lsn: Option<String>,
    /// `confirmed_flush_lsn`: the position the consumer last acknowledged.
    pub confirmed_flush_lsn: Option<String>,
    /// `pg_wal_lsn_diff(<current WAL>, restart_lsn)`: WAL bytes retained on the server's disk.
    pub retained_wal_bytes: Option<i64>,
    /// `pg_wal_lsn_diff(<current WAL>, confirmed_flush_lsn)`: WAL written since the last ack.
    pub confirmed_flush_lag_bytes: Option<i64>,
    /// `safe_wal_size`: bytes that can still be written before the slot is at risk of losing
    /// WAL; null when `max_slot_wal_keep_size` is -1 (no limit).
    pub safe_wal_size: Option<i64>,
}

/// One publication, from `pg_publication`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicationStatus {
    /// `puballtables`: `FOR ALL TABLES`.
    pub all_tables: bool,
    /// The owning role.
    pub owner: String,
    /// The tables it publishes (`pg_publication_tables`), by schema and name.
    pub tables: Vec<PublishedTable>,
}

/// A table a publication publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedTable {
    /// Its schema.
    pub schema: String,
    /// Its name.
    pub name: String,
    /// `pg_class.relreplident`.
    pub replica_identity: ReplicaIdentity,
}

/// `pg_class.relreplident`: which old values an UPDATE or DELETE carries in the WAL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// `d`: the primary key.
    Default,
    /// `n`: nothing.
    Nothing,
    /// `f`: every column (what ampere sets on tables it publishes).
    Full,
    /// `i`: the columns of one unique index.
    Index,
}

impl ReplicaIdentity {
    fn from_code(code: &str) -> Option<Self> {
        match code {
            "d" => Some(Self::Default),
            "n" => Some(Self::Nothing),
            "f" => Some(Self::Full),
            "i" => Some(Self::Index),
            _ => None,
        }
    }

    /// `default`, `nothing`, `full` or `index`, as `ALTER TABLE … REPLICA IDENTITY` names them.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Nothing => "nothing",
            Self::Full => "full",
            Self::Index => "index",
        }
    }
}

/// A backend holding an advisory lock, from `pg_locks` and `pg_stat_activity`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockHolder {
    /// Its backend pid.
    pub pid: i32,
    /// `application_name` (`ampere` unless `DATABASE_URL` sets another).
    pub application_name: Option<String>,
    /// `client_addr`; null for a unix-socket connection.
    pub client_addr: Option<String>,
    /// `backend_start`, as Postgres prints a `timestamptz`.
    pub backend_start: Option<String>,
    /// `backend_type`: `walsender` for ampere's replication connection.
    pub backend_type: Option<String>,
}

/// What a deployment needs to know about the server and the role connected to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerFacts {
    /// `server_version` (`15.10 (Debian …)`).
    pub server_version: String,
    /// `server_version_num` (`150010`).
    pub server_version_num: u32,
    /// `wal_level`.
    pub wal_level: String,
    /// `current_user`.
    pub user: String,
    /// `current_database()`.
    pub database: String,
    /// `rolsuper` of the current role.
    pub is_superuser: bool,
    /// `rolreplication` of the current role.
    pub has_replication: bool,
    /// Member of `rds_replication` (Amazon RDS grants replication through that role).
    pub is_rds_replication_member: bool,
    /// `has_database_privilege(current_database(), 'CREATE')`: may create a publication.
    pub can_create_in_database: bool,
    /// `max_replication_slots`.
    pub max_replication_slots: i64,
    /// Rows of `pg_replication_slots`, every database's.
    pub used_replication_slots: i64,
    /// `max_wal_senders`.
    pub max_wal_senders: i64,
    /// Backends of type `walsender` now (streaming or not).
    pub walsenders: i64,
    /// This connection's TLS session (`pg_stat_ssl`), `None` when it is not encrypted.
    pub tls: Option<TlsSession>,
}

/// An encrypted connection's protocol and cipher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSession {
    /// `TLSv1.3` and the like.
    pub version: Option<String>,
    /// The cipher suite.
    pub cipher: Option<String>,
}

/// The slot named `slot`, `None` if there is none. The WAL distances are measured from
/// `pg_current_wal_lsn()`, or on a server in recovery from the last WAL received.
pub async fn slot(client: &Client, slot: &str) -> Result<Option<SlotStatus>, PgPortError> {
    const SQL: &str = "WITH now AS (SELECT CASE WHEN pg_catalog.pg_is_in_recovery() \
           THEN pg_catalog.pg_last_wal_receive_lsn() ELSE pg_catalog.pg_current_wal_lsn() END \
           AS lsn) \
         SELECT s.slot_type::text, s.plugin::text, s.database::text, s.temporary, s.active, \
           s.active_pid, s.wal_status, s.restart_lsn::text, s.confirmed_flush_lsn::text, \
           pg_catalog.pg_wal_lsn_diff(now.lsn, s.restart_lsn)::int8, \
           pg_catalog.pg_wal_lsn_diff(now.lsn, s.confirmed_flush_lsn)::int8, \
           s.safe_wal_size::int8 \
         FROM pg_catalog.pg_replication_slots s, now WHERE s.slot_name = $1";
    let during = "reading the replication slot";
    let Some(row) = client.query_opt(SQL, &[&slot]).await.map_err(sql(during))? else {
        return Ok(None);
    };
    let get = Getter { row: &row, during };
    Ok(Some(SlotStatus {
        slot_type: get.at(0)?,
        plugin: get.at(1)?,
        database: get.at(2)?,
        temporary: get.at(3)?,
        active: get.at(4)?,
        active_pid: get.at(5)?,
        wal_status: get.at(6)?,
        restart_lsn: get.at(7)?,
        confirmed_flush_lsn: get.at(8)?,
        retained_wal_bytes: get.at(9)?,
        confirmed_flush_lag_bytes: get.at(10)?,
        safe_wal_size: get.at(11)?,
    }))
}

/// The publication named `publication` in the connected database, `None` if there is none.
pub async fn publication(
    client: &Client,
    publication: &str,
) -> Result<Option<PublicationStatus>, PgPortError> {
    const PUBLICATION: &str = "SELECT puballtables, pg_catalog.pg_get_userbyid(pubowner)::text \
         FROM pg_catalog.pg_publication WHERE pubname = $1";
    const TABLES: &str = "SELECT t.schemaname::text, t.tablename::text, c.relreplident::text \
         FROM pg_catalog.pg_publication_tables t \
         JOIN pg_catalog.pg_namespace n ON n.nspname = t.schemaname \
         JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.tablename \
         WHERE t.pubname = $1 ORDER BY 1, 2";
    let during = "reading the publication";
    let Some(row) = client
        .query_opt(PUBLICATION, &[&publication])
        .await
        .map_err(sql(during))?
    else {
        return Ok(None);
    };
    let get = Getter { row: &row, during };
    let (all_tables, owner) = (get.at(0)?, get.at(1)?);
    let rows = client
        .query(TABLES, &[&publication])
        .await
        .map_err(sql(during))?;
    let mut tables = Vec::with_capacity(rows.len());
    for row in &rows {
        let get = Getter { row, during };
        let code: String = get.at(2)?;
        let replica_identity =
            ReplicaIdentity::from_code(&code).ok_or(PgPortError::Unexpected {
                during,
                what: "relreplident is not d, n, f or i",
            })?;
        tables.push(PublishedTable {
            schema: get.at(0)?,
            name: get.at(1)?,
            replica_identity,
        });
    }
    Ok(Some(PublicationStatus {
        all_tables,
        owner,
        tables,
    }))
}

/// The backends holding the session advisory lock ampere's instances take for `slot`
/// (`pg_try_advisory_lock(hashtext('<slot>'))` in the connected database), with what
/// `pg_stat_activity` says about them; empty when nobody holds it.
pub async fn lock_holders(client: &Client, slot: &str) -> Result<Vec<LockHolder>, PgPortError> {
    // A bigint key is split over classid (high half) and objid (low half), objsubid 1; the
    // same reassembly as the lock breaker's query in `pg`.
    const SQL: &str = "SELECT l.pid, a.application_name::text, pg_catalog.host(a.client_addr), \
           a.backend_start::text, a.backend_type::text \
         FROM pg_catalog.pg_locks l \
         LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
           AND l.database = \
             (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()) \
           AND ((l.classid::int8 << 32) | l.objid::int8) = pg_catalog.hashtext($1) \
         ORDER BY l.pid";
    let during = "reading the advisory lock's holder";
    let rows = client.query(SQL, &[&slot]).await.map_err(sql(during))?;
    rows.iter()
        .map(|row| {
            let get = Getter { row, during };
            Ok(LockHolder {
                pid: get.at(0)?,
                application_name: get.at(1)?,
                client_addr: get.at(2)?,
                backend_start: get.at(3)?,
                backend_type: get.at(4)?,
            })
        })
        .collect()
}

/// The server's version and settings, the current role's attributes and privileges, slot and
/// walsender usage, and this connection's TLS session.
pub async fn server_facts(client: &Client) -> Result<ServerFacts, PgPortError> {
    const SQL: &str = "SELECT pg_catalog.current_setting('server_version'), \
           pg_catalog.current_setting('server_version_num')::int4, \
           pg_catalog.current_setting('wal_level'), \
           current_user::text, pg_catalog.current_database()::text, \
           r.rolsuper, r.rolreplication, \
           EXISTS (SELECT 1 FROM pg_catalog.pg_roles m WHERE m.rolname = 'rds_replication' \
             AND pg_catalog.pg_has_role(current_user, m.oid, 'MEMBER')), \
           pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CREATE'), \
           pg_catalog.current_setting('max_replication_slots')::int8, \
           (SELECT count(*) FROM pg_catalog.pg_replication_slots), \
           pg_catalog.current_setting('max_wal_senders')::int8, \
           (SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE backend_type = 'walsender'), \
           s.ssl, s.version, s.cipher \
         FROM pg_catalog.pg_roles r \
         LEFT JOIN pg_catalog.pg_stat_ssl s ON s.pid = pg_catalog.pg_backend_pid() \
         WHERE r.rolname = current_user";
    let during = "reading the server's settings";
    let row = client.query_one(SQL, &[]).await.map_err(sql(during))?;
    let get = Getter { row: &row, during };
    let version_num: i32 = get.at(1)?;
    let ssl: Option<bool> = get.at(13)?;
    let tls = if ssl == Some(true) {
        Some(TlsSession {
            version: get.at(14)?,
            cipher: get.at(15)?,
        })
    } else {
        None
    };
    Ok(ServerFacts {
        server_version: get.at(0)?,
        server_version_num: u32::try_from(version_num).map_err(|_| PgPortError::Unexpected {
            during,
            what: "server_version_num is negative",
        })?,
        wal_level: get.at(2)?,
        user: get.at(3)?,
        database: get.at(4)?,
        is_superuser: get.at(5)?,
        has_replication: get.at(6)?,
        is_rds_replication_member: get.at(7)?,
        can_create_in_database: get.at(8)?,
        max_replication_slots: get.at(9)?,
        used_replication_slots: get.at(10)?,
        max_wal_senders: get.at(11)?,
        walsenders: get.at(12)?,
        tls,
    })
}

/// Column reads that name what was being read when a type does not match.
struct Getter<'a> {
    row: &'a Row,
    during: &'static str,
}

impl Getter<'_> {
    fn at<'r, T: tokio_postgres::types::FromSql<'r>>(
        &'r self,
        index: usize,
    ) -> Result<T, PgPortError> {
        self.row.try_get(index).map_err(sql(self.during))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_identity_codes_map_to_alter_table_words_and_nothing_else() {
        let mapped: Vec<_> = ["d", "n", "f", "i"]
            .into_iter()
            .map(|code| ReplicaIdentity::from_code(code).map(ReplicaIdentity::as_str))
            .collect();
        assert_eq!(
            mapped,
            [
                Some("default"),
                Some("nothing"),
                Some("full"),
                Some("index")
            ]
        );
        assert_eq!(ReplicaIdentity::from_code("x"), None);
    }
}
