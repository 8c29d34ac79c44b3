//! The model's network face: the body of the `pg` turmoil host.
//!
//! One task per connection, each a backend of the model. A connection answers requests
//! until `START_REPLICATION`, then is a walsender: it pushes `XLogData` (one frame per pgoutput
//! message) and primary keepalives, reads standby status updates, and ends when its client is
//! silent for `wal_sender_timeout`. A backend the model terminates (`pg_terminate_backend`, a
//! restart, a slot drop or invalidation) gets `57P01` and its socket is closed at once.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::TryLockError;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};
use turmoil::net::{TcpListener, TcpStream};

use ampere_core::lsn::Lsn;
use ampere_core::ports::SlotPersistence;
use ampere_core::shape::{HandleStamp, RelationName};

use super::model::session::{advisory_key, SqlError};
use super::model::{lock, PgModel, SharedPg};
use super::walsender::Walsender;
use super::wire::{
    to_hex, ClientMessage, Framed, ServerMessage, WireColumn, WireError, WirePublication,
    WireRelation, WireSlot, WireTable,
};

/// The port the model listens on.
pub const PG_PORT: u16 = 5432;
/// A connection must send its startup frame within this.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// A walsender decodes more only while less than this is waiting to be written.
const WRITE_HIGH_WATER: usize = 256 * 1024;

/// Serves the model on `0.0.0.0:5432` until the host crashes. Use as a turmoil host:
/// `sim.host("pg", move || serve(pg.clone()))`.
///
/// On start, if an earlier `serve` ran in the same model incarnation (the host was crashed
/// and bounced without [`PgModel::restart`]), the model restarts with crash semantics first.
pub async fn serve(pg: SharedPg) -> turmoil::Result {
    lock(&pg).server_started();
    let listener = TcpListener::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), PG_PORT)).await?;
    tokio::spawn(checkpointer(pg.clone()));
    loop {
        let (stream, peer) = listener.accept().await?;
        let client_host =
            turmoil::reverse_lookup(peer.ip()).unwrap_or_else(|| peer.ip().to_string());
        tokio::spawn(connection(pg.clone(), stream, client_host));
    }
}

/// Sim-elapsed time, for the model's event stamps.
fn sim_now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// Checkpoints every `checkpoint_interval`.
async fn checkpointer(pg: SharedPg) {
    loop {
        let interval = lock(&pg).settings().checkpoint_interval;
        tokio::time::sleep(interval).await;
        let mut model = lock(&pg);
        model.observe_time(sim_now());
        model.checkpoint();
    }
}

/// How a backend's connection ended.
#[derive(Debug)]
enum End {
    /// The model terminated the backend.
    Terminated,
    /// The client went away or broke the framing.
    Lost(WireError),
    /// The client sent something out of place.
    Protocol(&'static str),
    /// The walsender heard nothing for `wal_sender_timeout`.
    TimedOut,
    /// Decoding failed; the error was sent.
    Failed,
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Terminated => f.write_str("terminated"),
            Self::Lost(e) => write!(f, "connection lost: {}", ampere_core::error_chain(e)),
            Self::Protocol(what) => write!(f, "protocol violation: {what}"),
            Self::TimedOut => {
                f.write_str("terminating walsender process due to replication timeout")
            }
            Self::Failed => f.write_str("decoding failed"),
        }
    }
}

/// Closes the backend in the model when its task ends or is dropped (a host crash).
struct BackendGuard {
    pg: SharedPg,
    pid: i32,
}

impl Drop for BackendGuard {
    fn drop(&mut self) {
        // The lock is held only by this thread's caller when a crash drops us mid-call (the
        // simulation holding it across `Sim::crash`); then `restart` cleans up instead.
        match self.pg.try_lock() {
            Ok(mut model) => close(&mut model, self.pid),
            Err(TryLockError::Poisoned(poisoned)) => close(&mut poisoned.into_inner(), self.pid),
            Err(TryLockError::WouldBlock) => {
                tracing::warn!(pid = self.pid, "model locked while a backend ended");
            }
        }
    }
}

fn close(model: &mut PgModel, pid: i32) {
    model.observe_time(sim_now());
    model.close_backend(pid);
}

/// Wakes when the backend is no longer alive in the model.
struct Liveness {
    pg: SharedPg,
    changes: watch::Receiver<u64>,
    pid: i32,
}

impl Liveness {
    /// Resolves once the backend is gone. Cancel-safe.
    async fn terminated(&mut self) {
        loop {
            self.changes.borrow_and_update();
            if !lock(&self.pg).is_backend_alive(self.pid) {
                return;
            }
            if self.changes.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

/// One client connection: a backend.
struct Connection {
    framed: Framed<TcpStream>,
    live: Liveness,
}

/// Runs one connection to its end.
async fn connection(pg: SharedPg, stream: TcpStream, client_host: String) {
    let mut framed = Framed::new(stream);
    let startup = tokio::time::timeout(STARTUP_TIMEOUT, framed.recv::<ClientMessage>()).await;
    let Ok(Ok(ClientMessage::Startup { replication })) = startup else {
        return;
    };
    let (pid, ready, changes) = {
        let mut model = lock(&pg);
        model.observe_time(sim_now());
        let pid = model.open_backend(&client_host, replication);
        let ready = ServerMessage::Ready {
            pid,
            system_id: model.system_id(),
            timeline: model.timeline(),
            xlogpos: model.wal_end().0,
        };
        (pid, ready, model.subscribe())
    };
    let _guard = BackendGuard {
        pg: pg.clone(),
        pid,
    };
    let mut conn = Connection {
        framed,
        live: Liveness { pg, changes, pid },
    };
    if conn.framed.queue(&ready).is_err() {
        return;
    }
    let end = conn.requests().await;
    tracing::debug!(pid, %client_host, %end, "pg backend ended");
    if matches!(end, End::Terminated) {
        let error = error_message(&SqlError::new(
            "57P01",
            "terminating connection due to administrator command",
        ));
        if conn.framed.queue(&error).is_ok() {
            conn.framed.try_flush();
        }
    }
}

impl Connection {
    /// Answers requests until the connection ends or becomes a walsender.
    async fn requests(&mut self) -> End {
        loop {
            let request = tokio::select! {
                biased;
                () = self.live.terminated() => return End::Terminated,
                flushed = self.framed.writer.flush(), if self.framed.pending_write() > 0 => {
                    if let Err(e) = flushed {
                        return End::Lost(e);
                    }
                    continue;
                }
                request = self.framed.reader.recv::<ClientMessage>() => match request {
                    Ok(request) => request,
                    Err(e) => return End::Lost(e),
                },
            };
            let reply = match request {
                ClientMessage::StartReplication { slot, publication } => {
                    match self.start_replication(&slot) {
                        Ok(start) => return self.stream(&publication, start).await,
                        Err(e) => error_message(&e),
                    }
                }
                ClientMessage::CreateSlot { slot, temporary } => {
                    match self.create_slot(&slot, temporary).await {
                        Ok(reply) => reply,
                        Err(end) => return end,
                    }
                }
                ClientMessage::Startup { .. } | ClientMessage::StandbyStatus { .. } => {
                    return End::Protocol("unexpected message in command mode");
                }
                request => {
                    let mut model = lock(&self.live.pg);
                    model.observe_time(sim_now());
                    answer(&mut model, self.live.pid, request)
                }
            };
            if let Err(e) = self.framed.queue(&reply) {
                return End::Lost(e);
            }
        }
    }

    /// `CREATE_REPLICATION_SLOT`: like Postgres, waits for a consistent point — until every
    /// transaction in progress now has ended (LB-2's stall).
    async fn create_slot(&mut self, slot: &str, temporary: bool) -> Result<ServerMessage, End> {
        let persistence = if temporary {
            SlotPersistence::Temporary
        } else {
            SlotPersistence::Persistent
        };
        let running = {
            let model = lock(&self.live.pg);
            if model.slot(slot).is_some() {
                return Ok(error_message(&SqlError::new(
                    "42710",
                    format!("replication slot \"{slot}\" already exists"),
                )));
            }
            model.in_progress()
        };
        loop {
            self.live.changes.borrow_and_update();
            {
                let mut model = lock(&self.live.pg);
                if !model.is_backend_alive(self.live.pid) {
                    return Err(End::Terminated);
                }
                if running.iter().all(|&xid| !model.xact_in_progress(xid)) {
                    let created = model.create_slot(self.live.pid, slot, persistence);
                    return Ok(match created {
                        Ok(lsn) => ServerMessage::SlotCreated {
                            consistent_point: lsn.0,
                        },
                        Err(e) => error_message(&e),
                    });
                }
            }
            if self.live.changes.changed().await.is_err() {
                return Err(End::Terminated);
            }
        }
    }

    fn start_replication(&mut self, slot: &str) -> Result<Lsn, SqlError> {
        let mut model = lock(&self.live.pg);
        model.observe_time(sim_now());
        model.start_replication(self.live.pid, slot)
    }

    /// The walsender loop, after `START_REPLICATION` succeeded at `start`.
    async fn stream(&mut self, publication: &str, start: Lsn) -> End {
        let mut walsender = {
            let model = lock(&self.live.pg);
            Walsender::new(&model, publication, start)
        };
        if let Err(e) = self.framed.queue(&ServerMessage::CopyBoth) {
            return End::Lost(e);
        }
        let mut timers = StreamTimers::new(lock(&self.live.pg).settings().keepalive_interval);
        loop {
            self.live.changes.borrow_and_update();
            let settings = {
                let pg = self.live.pg.clone();
                let model = lock(&pg);
                if !model.is_backend_alive(self.live.pid) {
                    return End::Terminated;
                }
                if let Err(end) = decode(&mut self.framed, &model, &mut walsender) {
                    return end;
                }
                model.settings()
            };
            let timeout = settings.wal_sender_timeout;
            let deadline = (!timeout.is_zero()).then(|| timers.last_reply + timeout);
            let ping_at = deadline
                .filter(|_| !timers.pinged)
                .map(|_| timers.last_reply + timeout / 2);
            tokio::select! {
                biased;
                changed = self.live.changes.changed() => {
                    if changed.is_err() {
                        return End::Terminated;
                    }
                }
                flushed = self.framed.writer.flush(), if self.framed.pending_write() > 0 => {
                    if let Err(e) = flushed {
                        return End::Lost(e);
                    }
                }
                message = self.framed.reader.recv::<ClientMessage>() => {
                    if let Err(end) = self.status(message, &walsender, &mut timers) {
                        return end;
                    }
                }
                () = sleep_until(timers.next_keepalive) => {
                    timers.next_keepalive += settings.keepalive_interval;
                    if let Err(e) = self.keepalive(&walsender, false) {
                        return End::Lost(e);
                    }
                }
                () = sleep_until_some(ping_at) => {
                    timers.pinged = true;
                    if let Err(e) = self.keepalive(&walsender, true) {
                        return End::Lost(e);
                    }
                }
                () = sleep_until_some(deadline) => return End::TimedOut,
            }
        }
    }

    /// Handles a client message while streaming: only standby status updates are allowed.
    /// One asking for a reply gets a keepalive at once, as Postgres answers.
    fn status(
        &mut self,
        message: Result<ClientMessage, WireError>,
        walsender: &Walsender,
        timers: &mut StreamTimers,
    ) -> Result<(), End> {
        match message.map_err(End::Lost)? {
            ClientMessage::StandbyStatus {
                flush,
                reply_requested,
                ..
            } => {
                lock(&self.live.pg).standby_status(self.live.pid, Lsn(flush), sim_now());
                timers.last_reply = Instant::now();
                timers.pinged = false;
                if reply_requested {
                    self.keepalive(walsender, false).map_err(End::Lost)?;
                }
                Ok(())
            }
            _ => Err(End::Protocol("only standby status updates while streaming")),
        }
    }

    fn keepalive(&mut self, walsender: &Walsender, reply_requested: bool) -> Result<(), WireError> {
        let wal_end = walsender.keepalive_wal_end(&lock(&self.live.pg));
        self.framed.queue(&ServerMessage::Keepalive {
            wal_end: wal_end.0,
            reply_requested,
        })
    }
}

/// Queues the next decoded transactions while the write buffer has room.
fn decode(
    framed: &mut Framed<TcpStream>,
    model: &PgModel,
    walsender: &mut Walsender,
) -> Result<(), End> {
    if framed.pending_write() >= WRITE_HIGH_WATER {
        return Ok(());
    }
    let messages = match walsender.poll(model, WRITE_HIGH_WATER) {
        Ok(messages) => messages,
        Err(e) => {
            let _ = framed.queue(&error_message(&e));
            framed.try_flush();
            return Err(End::Failed);
        }
    };
    for message in messages {
        let frame = ServerMessage::XLogData {
            wal_start: message.wal_start.0,
            wal_end: message.wal_end.0,
            data: to_hex(&message.data),
        };
        framed.queue(&frame).map_err(End::Lost)?;
    }
    Ok(())
}

/// A walsender's clocks (tokio time: the `pg` host's virtual time).
struct StreamTimers {
    /// When the client last sent anything.
    last_reply: Instant,
    /// Whether a keepalive asking for a reply went out since then.
    pinged: bool,
    next_keepalive: Instant,
}

impl StreamTimers {
    fn new(keepalive_interval: Duration) -> Self {
        let now = Instant::now();
        Self {
            last_reply: now,
            pinged: false,
            next_keepalive: now + keepalive_interval,
        }
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// `pg_publication`'s row for `publication` with its comment, if it exists.
fn publication_row(model: &PgModel, publication: &str) -> Option<WirePublication> {
    model.publication(publication)?;
    let comment = model.publication_comment(publication).map(str::to_owned);
    Some(WirePublication { comment })
}

/// io-real's `reserve_stamps` in one step (the model is not concurrent): raise, never lower.
fn reserve_stamps(
    model: &mut PgModel,
    publication: &str,
    through: HandleStamp,
) -> Result<ServerMessage, SqlError> {
    if HandleStamp::reserved_by(model.publication_comment(publication)) < through {
        model.comment_on_publication(publication, through.reservation_comment())?;
    }
    Ok(ServerMessage::Done)
}

/// Whether `publication` publishes the table (`None`: no such table).
fn membership(model: &PgModel, publication: &str, relation: WireRelation) -> ServerMessage {
    let oid = model.table(&relation_name(relation)).map(|t| t.oid);
    ServerMessage::Membership(oid.map(|oid| {
        model
            .publication(publication)
            .is_some_and(|members| members.contains(&oid))
    }))
}

/// Answers a request that needs nothing but the model.
// One arm per message, each a call or two: splitting the match would only scatter it.
#[allow(clippy::too_many_lines)]
fn answer(model: &mut PgModel, pid: i32, request: ClientMessage) -> ServerMessage {
    let result = match request {
        ClientMessage::TryAdvisoryLock { slot } => Ok(ServerMessage::Bool(
            model.try_advisory_lock(pid, advisory_key(&slot)),
        )),
        ClientMessage::StaleLockHolders { slot, own_pid } => Ok(ServerMessage::Pids(
            model.stale_lock_holders(&slot, own_pid),
        )),
        ClientMessage::TerminateBackend { pid } => {
            Ok(ServerMessage::Bool(model.terminate_backend(pid)))
        }
        ClientMessage::TableSchema { relation } => Ok(ServerMessage::Table(
            model.table(&relation_name(relation)).map(wire_table),
        )),
        ClientMessage::RelationNames { oids } => Ok(ServerMessage::Relations(
            model
                .tables()
                .filter(|def| oids.contains(&def.oid))
                .map(|def| (def.oid, super::port::wire_relation(&def.relation)))
                .collect(),
        )),
        ClientMessage::TimeZoneWallClocks { zone, instants } => {
            // The model's server reads ampere's own bundled zone data, so it always agrees;
            // the round trip still meets every network and server fault a real one does.
            let zone = ampere_core::where_clause::tz::Zone::lookup(&zone).ok();
            Ok(ServerMessage::WallClocks(zone.map(|zone| {
                instants
                    .iter()
                    .map(|&unix| zone.wall_clock_at(unix))
                    .collect()
            })))
        }
        ClientMessage::CreatePublication { publication } => {
            Ok(ServerMessage::Bool(model.create_publication(&publication)))
        }
        ClientMessage::PublicationComment { publication } => Ok(ServerMessage::Publication(
            publication_row(model, &publication),
        )),
        ClientMessage::ReserveStamps {
            publication,
            through,
        } => reserve_stamps(model, &publication, HandleStamp(through)),
        ClientMessage::DropSlot { slot } => model
            .drop_inactive_slot(&slot)
            .map(|()| ServerMessage::Done),
        ClientMessage::SlotInfo { slot } => {
            Ok(ServerMessage::Slot(model.slot(&slot).map(|s| WireSlot {
                confirmed_flush_lsn: s.confirmed_flush_lsn.0,
                active: s.is_active(),
                wal_status: s.wal_status().to_owned(),
            })))
        }
        ClientMessage::AddTable {
            publication,
            relation,
        } => model
            .add_table_to_publication(&publication, &relation_name(relation))
            .map(|()| ServerMessage::Done),
        ClientMessage::PublicationMembership {
            publication,
            relation,
        } => Ok(membership(model, &publication, relation)),
        ClientMessage::CurrentSnapshot => {
            let in_read = model.backend(pid).is_some_and(|b| b.read.is_some());
            let snapshot = if in_read {
                model.read_snapshot(pid)
            } else {
                Ok(model.current_snapshot())
            };
            snapshot.map(|s| ServerMessage::Snapshot(s.to_string()))
        }
        ClientMessage::CurrentWalLsn => Ok(ServerMessage::Lsn(model.wal_end().0)),
        ClientMessage::BeginRead => model.begin_read(pid).map(|()| ServerMessage::Done),
        ClientMessage::LockTable { relation } => model
            .lock_share(pid, &relation_name(relation))
            .map(|()| ServerMessage::Done),
        ClientMessage::Commit => model.end_read(pid).map(|()| ServerMessage::Done),
        ClientMessage::XactsInProgress { xids } => Ok(ServerMessage::Count(
            xids.iter().filter(|&&x| model.xact_in_progress(x)).count() as u64,
        )),
        ClientMessage::SnapshotRows { relation, columns } => model
            .read_rows(pid, &relation_name(relation), &columns)
            .map(ServerMessage::Rows),
        ClientMessage::Startup { .. }
        | ClientMessage::StandbyStatus { .. }
        | ClientMessage::CreateSlot { .. }
        | ClientMessage::StartReplication { .. } => Err(SqlError::new(
            "08P01",
            "protocol violation: message not handled here",
        )),
    };
    result.unwrap_or_else(|e| error_message(&e))
}

fn error_message(error: &SqlError) -> ServerMessage {
    ServerMessage::Error {
        sqlstate: error.sqlstate.clone(),
        message: error.message.clone(),
        detail: error.detail.clone(),
    }
}

fn relation_name(relation: WireRelation) -> RelationName {
    RelationName {
        schema: relation.schema,
        table: relation.table,
    }
}

fn wire_table(def: &super::model::TableDef) -> WireTable {
    WireTable {
        oid: def.oid,
        columns: def
            .columns
            .iter()
            .map(|c| WireColumn {
                name: c.name.clone(),
                type_oid: c.type_oid,
                typname: c.typname.clone(),
                not_null: c.not_null,
                pk_index: c.pk_index,
            })
            .collect(),
    }
}
