//! [`SimPg`]: the core's [`PgPort`] over the model's server, mirroring io-real's `RealPg`.
//!
//! Like `RealPg`: the replication connection runs `IDENTIFY_SYSTEM` and learns its pid
//! (LK-3), takes the advisory lock on itself (LK-1, LK-4), then on `start_streaming` ensures
//! the publication (a new one drops the slot, SL-1), creates or finds the slot (SL-2, an
//! invalidated one is dropped and recreated), and starts streaming at `0/0` (SL-4). Publication
//! and slot drops run on a separate admin connection, as io-real's do. Errors carry a kind
//! decided as io-real decides it (RC-1).
//!
//! Unlike `RealPg`, admin work opens a fresh connection per call instead of sharing one.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use turmoil::net::TcpStream;

use ampere_core::lsn::Lsn;
use ampere_core::pgoutput::Oid;
use ampere_core::ports::{
    CatalogTable, DisconnectKind, PgError, PgPort, ReplicationMessage, ReplicationSession,
    ReplicationStream, ReplicationTarget, SlotPersistence, SlotStarted, SnapshotError,
    SnapshotRequest, SnapshotWriter, StandbyStatus, SystemIdentity,
};
use ampere_core::shape::{ColumnSchema, HandleStamp, RelationName, TableSchema};
use ampere_core::slot_setup::{self, ExistingPublication, ExistingSlot, SlotReset, SlotSetup};
use ampere_core::snapshot::PgSnapshot;
use ampere_core::snapshot_steps::{self, TablePublishing};
use ampere_core::subset::{SubsetQuery, SubsetRows};

use super::server::PG_PORT;
use super::snapshot;
use super::wire::{from_hex, ClientMessage, Framed, ServerMessage, WireError, WireRelation};

/// Connect timeout of every connection (RC-3), as io-real's `CONNECT_TIMEOUT`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Postgres's longest identifier, hence the longest slot name.
const SLOT_NAME_MAX: usize = 63;

/// Postgres for the driver, on the turmoil host running [`super::serve`].
#[derive(Clone, Debug)]
pub struct SimPg {
    host: Arc<str>,
    /// Who makes shapes' tables replicable, as io-real's `PgOptions::table_publishing`.
    table_publishing: Arc<TablePublishing>,
}

impl SimPg {
    /// A port talking to the model served on `pg_host`, adding shapes' tables to the
    /// publication itself.
    pub fn new(pg_host: impl Into<String>) -> Self {
        Self {
            host: Arc::from(pg_host.into()),
            table_publishing: Arc::new(TablePublishing::Automatic),
        }
    }

    /// The same port with `ELECTRIC_MANUAL_TABLE_PUBLISHING` as `publishing` says.
    pub fn with_table_publishing(mut self, publishing: TablePublishing) -> Self {
        self.table_publishing = Arc::new(publishing);
        self
    }

    /// The host it connects to.
    pub fn host(&self) -> &str {
        &self.host
    }
}

/// Why a Postgres operation failed, with the kind io-real would give it.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[error("{message}")]
pub struct SimPgError {
    /// Retry or give up.
    pub kind: DisconnectKind,
    /// The SQLSTATE when the server reported the error.
    pub sqlstate: Option<String>,
    /// What happened.
    pub message: String,
}

impl SimPgError {
    fn transient(message: impl Into<String>) -> Self {
        Self {
            kind: DisconnectKind::Transient,
            sqlstate: None,
            message: message.into(),
        }
    }

    fn wire(during: &str, error: &WireError) -> Self {
        Self::transient(format!("{during}: {}", ampere_core::error_chain(error)))
    }

    /// An `ErrorResponse`, classified like io-real's `is_configuration_error`.
    fn server(during: &str, sqlstate: String, message: &str, detail: Option<&str>) -> Self {
        let fatal = sqlstate.starts_with("28")
            || matches!(sqlstate.as_str(), "42501" | "3D000")
            || (sqlstate == "55000"
                && (message.contains("wal_level") || message.contains("max_replication_slots")));
        let kind = if fatal {
            DisconnectKind::Fatal
        } else {
            DisconnectKind::Transient
        };
        let detail = detail.map(|d| format!(" ({d})")).unwrap_or_default();
        Self {
            kind,
            message: format!("{during}: {sqlstate}: {message}{detail}"),
            sqlstate: Some(sqlstate),
        }
    }

    fn unexpected(during: &str) -> Self {
        Self::transient(format!("{during}: unexpected reply"))
    }
}

impl PgError for SimPgError {
    fn kind(&self) -> DisconnectKind {
        self.kind
    }
}

/// One connection to the model: a backend.
#[derive(Debug)]
pub(crate) struct Client {
    framed: Framed<TcpStream>,
    pid: i32,
    system_id: u64,
    timeline: u32,
}

impl Client {
    /// Connects and opens a backend, within [`CONNECT_TIMEOUT`].
    pub(crate) async fn connect(host: &str, replication: bool) -> Result<Self, SimPgError> {
        let during = "connecting to Postgres";
        let connecting = async {
            let stream = TcpStream::connect((host, PG_PORT))
                .await
                .map_err(|e| SimPgError::wire(during, &WireError::Io(e)))?;
            let mut framed = Framed::new(stream);
            let startup = ClientMessage::Startup { replication };
            framed
                .send(&startup)
                .await
                .map_err(|e| SimPgError::wire(during, &e))?;
            let reply = framed
                .recv()
                .await
                .map_err(|e| SimPgError::wire(during, &e))?;
            match reply {
                ServerMessage::Ready {
                    pid,
                    system_id,
                    timeline,
                    ..
                } => Ok(Self {
                    framed,
                    pid,
                    system_id,
                    timeline,
                }),
                reply => Err(reply_error(during, reply)),
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| {
                SimPgError::transient(format!("{during} timed out after {CONNECT_TIMEOUT:?}"))
            })?
    }

    /// Sends a request and reads its reply; an `ErrorResponse` becomes the error.
    pub(crate) async fn call(
        &mut self,
        request: ClientMessage,
    ) -> Result<ServerMessage, SimPgError> {
        let during = request_name(&request);
        self.framed
            .send(&request)
            .await
            .map_err(|e| SimPgError::wire(during, &e))?;
        let reply = self
            .framed
            .recv()
            .await
            .map_err(|e| SimPgError::wire(during, &e))?;
        match reply {
            ServerMessage::Error { .. } => Err(reply_error(during, reply)),
            reply => Ok(reply),
        }
    }

    async fn call_bool(&mut self, request: ClientMessage) -> Result<bool, SimPgError> {
        let during = request_name(&request);
        match self.call(request).await? {
            ServerMessage::Bool(b) => Ok(b),
            _ => Err(SimPgError::unexpected(during)),
        }
    }
}

/// The error an unexpected or error reply stands for.
fn reply_error(during: &str, reply: ServerMessage) -> SimPgError {
    match reply {
        ServerMessage::Error {
            sqlstate,
            message,
            detail,
        } => SimPgError::server(during, sqlstate, &message, detail.as_deref()),
        _ => SimPgError::unexpected(during),
    }
}

fn request_name(request: &ClientMessage) -> &'static str {
    match request {
        ClientMessage::Startup { .. } => "connecting to Postgres",
        ClientMessage::TryAdvisoryLock { .. } => "pg_try_advisory_lock",
        ClientMessage::StaleLockHolders { .. } => "looking for stale lock holders",
        ClientMessage::TerminateBackend { .. } => "terminating a backend",
        ClientMessage::TableSchema { .. } => "catalog lookup",
        ClientMessage::RelationNames { .. } => "looking up the shapes' tables",
        ClientMessage::TimeZoneWallClocks { .. } => "reading the server's time zone data",
        ClientMessage::CreatePublication { .. } => "creating the publication",
        ClientMessage::PublicationComment { .. } => "reading the publication",
        ClientMessage::ReserveStamps { .. } => "reserving handle stamps",
        ClientMessage::DropSlot { .. } => "dropping the replication slot",
        ClientMessage::CreateSlot { .. } => "CREATE_REPLICATION_SLOT",
        ClientMessage::SlotInfo { .. } => "reading the slot",
        ClientMessage::StartReplication { .. } => "START_REPLICATION",
        ClientMessage::AddTable { .. } => "ALTER PUBLICATION … ADD TABLE",
        ClientMessage::PublicationMembership { .. } => "reading the publication's tables",
        ClientMessage::CurrentSnapshot => "pg_current_snapshot()",
        ClientMessage::CurrentWalLsn => "pg_current_wal_lsn()",
        ClientMessage::XactsInProgress { .. } => "pg_xact_status",
        ClientMessage::SnapshotRows { .. } => "snapshot query",
        ClientMessage::BeginRead => "BEGIN REPEATABLE READ",
        ClientMessage::LockTable { .. } => "LOCK TABLE … IN ACCESS SHARE MODE",
        ClientMessage::Commit => "COMMIT",
        ClientMessage::StandbyStatus { .. } => "sending standby status",
    }
}

/// io-real's `slot_literal` check: only `[a-z0-9_]{1,63}` may be inlined (fatal otherwise).
fn check_slot_name(slot: &str) -> Result<(), SimPgError> {
    let is_valid = !slot.is_empty()
        && slot.len() <= SLOT_NAME_MAX
        && slot
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if is_valid {
        return Ok(());
    }
    Err(SimPgError {
        kind: DisconnectKind::Fatal,
        sqlstate: None,
        message: format!("replication slot name {slot:?} is not 1 to 63 characters of [a-z0-9_]"),
    })
}

impl PgPort for SimPg {
    type Error = SimPgError;
    type Stream = SimReplicationStream;
    type Session = SimSession;

    fn connect_replication(
        &self,
    ) -> impl Future<Output = Result<(Self::Session, SystemIdentity), Self::Error>> + Send + 'static
    {
        let pg = self.clone();
        async move {
            let client = Client::connect(&pg.host, true).await?;
            let identity = SystemIdentity {
                system_id: client.system_id.to_string(),
                timeline: client.timeline,
                backend_pid: client.pid,
            };
            let session = SimSession {
                pg,
                client,
                locked_slot: None,
            };
            Ok((session, identity))
        }
    }

    fn stale_lock_holders(
        &self,
        slot: String,
        own_pid: i32,
    ) -> impl Future<Output = Result<Vec<i32>, Self::Error>> + Send + 'static {
        let host = self.host.clone();
        async move {
            check_slot_name(&slot)?;
            let mut admin = Client::connect(&host, false).await?;
            match admin
                .call(ClientMessage::StaleLockHolders { slot, own_pid })
                .await?
            {
                ServerMessage::Pids(pids) => Ok(pids),
                _ => Err(SimPgError::unexpected("looking for stale lock holders")),
            }
        }
    }

    fn terminate_backend(
        &self,
        pid: i32,
    ) -> impl Future<Output = Result<bool, Self::Error>> + Send + 'static {
        let host = self.host.clone();
        async move {
            let mut admin = Client::connect(&host, false).await?;
            admin
                .call_bool(ClientMessage::TerminateBackend { pid })
                .await
        }
    }

    fn table_schema(
        &self,
        relation: RelationName,
    ) -> impl Future<Output = Result<Option<CatalogTable>, Self::Error>> + Send + 'static {
        let host = self.host.clone();
        async move {
            let mut admin = Client::connect(&host, false).await?;
            let request = ClientMessage::TableSchema {
                relation: wire_relation(&relation),
            };
            let ServerMessage::Table(table) = admin.call(request).await? else {
                return Err(SimPgError::unexpected("catalog lookup"));
            };
            Ok(table.map(|table| catalog_table(relation, table)))
        }
    }

    /// The model has no partitions, so every table's changes come under it: the publication
    /// changes nothing here.
    fn relation_names(
        &self,
        tables: Vec<Oid>,
        _publication: String,
    ) -> impl Future<Output = Result<Vec<(Oid, RelationName)>, Self::Error>> + Send + 'static {
        let host = self.host.clone();
        async move {
            let mut admin = Client::connect(&host, false).await?;
            let oids = tables.iter().map(|oid| oid.0).collect();
            let request = ClientMessage::RelationNames { oids };
            let ServerMessage::Relations(found) = admin.call(request).await? else {
                return Err(SimPgError::unexpected("looking up the shapes' tables"));
            };
            Ok(found
                .into_iter()
                .map(|(oid, relation)| {
                    let relation = RelationName {
                        schema: relation.schema,
                        table: relation.table,
                    };
                    (Oid(oid), relation)
                })
                .collect())
        }
    }

    fn time_zone_wall_clocks(
        &self,
        zone: String,
        instants: Vec<i64>,
    ) -> impl Future<Output = Result<Option<Vec<i64>>, Self::Error>> + Send + 'static {
        let host = self.host.clone();
        async move {
            let mut admin = Client::connect(&host, false).await?;
            let request = ClientMessage::TimeZoneWallClocks { zone, instants };
            let ServerMessage::WallClocks(found) = admin.call(request).await? else {
                return Err(SimPgError::unexpected(
                    "reading the server's time zone data",
                ));
            };
            Ok(found)
        }
    }

    fn reserve_stamps(
        &self,
        publication: String,
        through: HandleStamp,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let host = self.host.clone();
        async move {
            let mut admin = Client::connect(&host, false).await?;
            let request = ClientMessage::ReserveStamps {
                publication,
                through: through.0,
            };
            match admin.call(request).await? {
                ServerMessage::Done => Ok(()),
                _ => Err(SimPgError::unexpected("reserving handle stamps")),
            }
        }
    }

    fn check_table_published(
        &self,
        relation: RelationName,
    ) -> impl Future<Output = Result<(), SnapshotError>> + Send + 'static {
        let host = self.host.clone();
        let publishing = Arc::clone(&self.table_publishing);
        async move {
            let TablePublishing::Manual { publication } = &*publishing else {
                return Ok(());
            };
            let mut steps = snapshot::SimSnapshotSteps::connect(&host).await?;
            snapshot_steps::check_published(&mut steps, publication, &relation).await
        }
    }

    fn take_snapshot<W: SnapshotWriter>(
        &self,
        request: SnapshotRequest,
        writer: W,
    ) -> impl Future<Output = Result<PgSnapshot, SnapshotError>> + Send + 'static {
        let host = self.host.clone();
        let publishing = Arc::clone(&self.table_publishing);
        async move {
            let steps = snapshot::SimSnapshotSteps::connect(&host).await?;
            snapshot::take_snapshot(steps, &request, &publishing, writer).await
        }
    }

    fn query_subset(
        &self,
        query: SubsetQuery,
    ) -> impl Future<Output = Result<SubsetRows, SnapshotError>> + Send + 'static {
        let host = self.host.clone();
        async move {
            let steps = snapshot::SimSnapshotSteps::connect(&host).await?;
            snapshot::query_subset(steps, &query).await
        }
    }
}

pub(crate) fn wire_relation(relation: &RelationName) -> WireRelation {
    WireRelation {
        schema: relation.schema.clone(),
        table: relation.table.clone(),
    }
}

pub(crate) fn catalog_table(relation: RelationName, table: super::wire::WireTable) -> CatalogTable {
    let columns = table
        .columns
        .into_iter()
        .map(|c| ColumnSchema {
            name: c.name,
            type_oid: c.type_oid,
            typname: c.typname,
            dims: 0,
            not_null: c.not_null,
            pk_index: c.pk_index,
            modifiers: Vec::new(),
            is_enum: false,
        })
        .collect();
    CatalogTable {
        schema: TableSchema {
            server_version: ampere_core::shape::ServerVersion::PG_15,
            oid: Oid(table.oid),
            relation,
            columns,
        },
        generated: Vec::new(),
    }
}

/// A replication connection before streaming: it may hold the advisory lock, which the model
/// releases exactly when this connection's backend ends (drop it to release).
#[derive(Debug)]
pub struct SimSession {
    pg: SimPg,
    client: Client,
    /// The slot whose lock this connection holds (LK-4: never asked again).
    locked_slot: Option<String>,
}

impl SimSession {
    /// `pg_backend_pid()` of the replication connection.
    pub fn backend_pid(&self) -> i32 {
        self.client.pid
    }

    /// The slot whose advisory lock this connection holds, if it took one.
    pub fn locked_slot(&self) -> Option<&str> {
        self.locked_slot.as_deref()
    }

    async fn try_lock(&mut self, slot: &str) -> Result<bool, SimPgError> {
        check_slot_name(slot)?;
        let request = ClientMessage::TryAdvisoryLock {
            slot: slot.to_owned(),
        };
        let is_locked = self.client.call_bool(request).await?;
        if is_locked {
            self.locked_slot = Some(slot.to_owned());
        }
        Ok(is_locked)
    }

    /// SL-1, SL-2, SL-4 (publication and slot drops on an admin connection).
    async fn stream(
        mut self,
        target: ReplicationTarget,
    ) -> Result<(SimReplicationStream, SlotStarted), SimPgError> {
        let slot = target.slot.as_str();
        let admin = Client::connect(&self.pg.host, false).await?;
        let started = slot_setup::prepare(&mut SimSlotSetup {
            conn: &mut self.client,
            admin,
            target: &target,
        })
        .await?;
        tracing::info!(slot, slot_created = started.slot_created,
            confirmed_flush_lsn = %started.confirmed_flush_lsn,
            backend_pid = self.client.pid, "starting replication");
        let start = ClientMessage::StartReplication {
            slot: slot.to_owned(),
            publication: target.publication.clone(),
        };
        match self.client.call(start).await? {
            ServerMessage::CopyBoth => {}
            _ => return Err(SimPgError::unexpected("START_REPLICATION")),
        }
        let stream = SimReplicationStream {
            framed: self.client.framed,
            backend_pid: self.client.pid,
        };
        Ok((stream, started))
    }
}

/// [`slot_setup::prepare`]'s steps on the replication connection (slot creation) and an
/// admin connection (publication, drops).
struct SimSlotSetup<'a> {
    conn: &'a mut Client,
    admin: Client,
    target: &'a ReplicationTarget,
}

impl SlotSetup for SimSlotSetup<'_> {
    type Error = SimPgError;

    async fn ensure_publication(&mut self) -> Result<bool, SimPgError> {
        let create = ClientMessage::CreatePublication {
            publication: self.target.publication.clone(),
        };
        self.admin.call_bool(create).await
    }

    /// The model has no partitioned tables and no publication options: nothing it publishes
    /// is ever rerouted.
    async fn existing_publication(&mut self) -> Result<Option<ExistingPublication>, SimPgError> {
        let request = ClientMessage::PublicationComment {
            publication: self.target.publication.clone(),
        };
        let ServerMessage::Publication(publication) = self.admin.call(request).await? else {
            return Err(SimPgError::unexpected("reading the publication"));
        };
        Ok(publication.map(|p| ExistingPublication {
            stamps_reserved: HandleStamp::reserved_by(p.comment.as_deref()),
            is_rerouting: false,
        }))
    }

    /// Drops the slot if it exists and is inactive (none is fine; an active one is 55006).
    async fn drop_slot(&mut self, why: SlotReset) -> Result<(), SimPgError> {
        let slot = self.target.slot.as_str();
        tracing::info!(slot, publication = %self.target.publication, ?why,
            "dropping the slot so it is created afresh");
        let request = ClientMessage::DropSlot {
            slot: slot.to_owned(),
        };
        match self.admin.call(request).await? {
            ServerMessage::Done => Ok(()),
            _ => Err(SimPgError::unexpected("dropping the replication slot")),
        }
    }

    async fn create_slot(&mut self) -> Result<Option<Lsn>, SimPgError> {
        let request = ClientMessage::CreateSlot {
            slot: self.target.slot.clone(),
            temporary: self.target.slot_persistence == SlotPersistence::Temporary,
        };
        match self.conn.call(request).await {
            Ok(ServerMessage::SlotCreated { consistent_point }) => Ok(Some(Lsn(consistent_point))),
            Ok(_) => Err(SimPgError::unexpected("CREATE_REPLICATION_SLOT")),
            Err(e) if e.sqlstate.as_deref() == Some("42710") => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn existing_slot(&mut self) -> Result<Option<ExistingSlot>, SimPgError> {
        let request = ClientMessage::SlotInfo {
            slot: self.target.slot.clone(),
        };
        let ServerMessage::Slot(info) = self.conn.call(request).await? else {
            return Err(SimPgError::unexpected("reading the slot"));
        };
        Ok(info.map(|info| ExistingSlot {
            confirmed_flush_lsn: Some(Lsn(info.confirmed_flush_lsn)),
            is_lost: info.wal_status == "lost",
        }))
    }

    fn changed_concurrently(&self) -> SimPgError {
        SimPgError::transient(format!(
            "replication slot {:?} changed concurrently during setup",
            self.target.slot
        ))
    }
}

impl ReplicationSession for SimSession {
    type Error = SimPgError;
    type Stream = SimReplicationStream;

    fn try_advisory_lock(
        mut self,
        slot: String,
    ) -> impl Future<Output = (Self, Result<bool, Self::Error>)> + Send + 'static {
        // LK-4: these locks stack; a second grant would need a second unlock.
        assert!(
            self.locked_slot.is_none(),
            "lock-once: pg_try_advisory_lock({slot}) after the lock of {:?} was granted",
            self.locked_slot
        );
        async move {
            let result = self.try_lock(&slot).await;
            (self, result)
        }
    }

    fn start_streaming(
        self,
        target: ReplicationTarget,
    ) -> impl Future<Output = Result<(Self::Stream, SlotStarted), Self::Error>> + Send + 'static
    {
        // LK-5: publication and slot are changed only under the lock of this very slot.
        assert_eq!(
            self.locked_slot.as_deref(),
            Some(target.slot.as_str()),
            "lock-before-mutation: start_streaming without the slot's advisory lock"
        );
        self.stream(target)
    }
}

/// An open replication stream.
#[derive(Debug)]
pub struct SimReplicationStream {
    framed: Framed<TcpStream>,
    backend_pid: i32,
}

impl SimReplicationStream {
    /// The walsender's pid.
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }
}

impl ReplicationStream for SimReplicationStream {
    type Error = SimPgError;

    /// Cancel-safe: the frame reader keeps partial frames in its buffer, and nothing is
    /// awaited after a frame leaves it.
    async fn recv(&mut self) -> Result<ReplicationMessage, Self::Error> {
        const DURING: &str = "receiving replication";
        let message = self
            .framed
            .recv()
            .await
            .map_err(|e| SimPgError::wire(DURING, &e))?;
        match message {
            ServerMessage::XLogData {
                wal_start,
                wal_end,
                data,
            } => {
                let data = from_hex(&data).ok_or_else(|| SimPgError::unexpected(DURING))?;
                Ok(ReplicationMessage::XLogData {
                    wal_start: Lsn(wal_start),
                    wal_end: Lsn(wal_end),
                    data: data.into(),
                })
            }
            ServerMessage::Keepalive {
                wal_end,
                reply_requested,
            } => Ok(ReplicationMessage::PrimaryKeepalive {
                wal_end: Lsn(wal_end),
                reply_requested,
            }),
            message => Err(reply_error(DURING, message)),
        }
    }

    /// Dropping this future mid-write corrupts nothing: the rest stays buffered and goes out
    /// first on the next call.
    fn send_status(
        &mut self,
        status: StandbyStatus,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + '_ {
        let message = ClientMessage::StandbyStatus {
            write: status.write.0,
            flush: status.flush.0,
            apply: status.apply.0,
            reply_requested: status.reply_requested,
        };
        async move {
            self.framed
                .send(&message)
                .await
                .map_err(|e| SimPgError::wire("sending standby status", &e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_are_fatal_only_for_configuration_problems() {
        let kind = |code: &str, message: &str| {
            SimPgError::server("x", code.to_owned(), message, None).kind()
        };
        assert_eq!(
            kind("55006", "replication slot is active"),
            DisconnectKind::Transient
        );
        assert_eq!(
            kind("57P01", "terminating connection"),
            DisconnectKind::Transient
        );
        assert_eq!(
            kind("55000", "can no longer get changes"),
            DisconnectKind::Transient
        );
        assert_eq!(
            kind("55000", "logical decoding requires wal_level >= logical"),
            DisconnectKind::Fatal
        );
        assert_eq!(kind("42501", "permission denied"), DisconnectKind::Fatal);
        assert_eq!(
            kind("28P01", "password authentication failed"),
            DisconnectKind::Fatal
        );
        let error = SimPgError::server("x", "55006".into(), "busy", Some("why"));
        assert_eq!(error.sqlstate.as_deref(), Some("55006"));
        assert!(error.message.contains("(why)"), "{error}");
    }

    #[test]
    fn slot_names_are_checked_like_io_real() {
        assert!(check_slot_name("electric_slot_default").is_ok());
        for bad in ["", "A", "a-b", "a'b"] {
            assert_eq!(
                check_slot_name(bad).unwrap_err().kind(),
                DisconnectKind::Fatal
            );
        }
    }
}
