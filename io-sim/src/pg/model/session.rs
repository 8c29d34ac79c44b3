//! Backends, advisory locks, publications and logical replication slots of the model.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ampere_core::lsn::Lsn;
use ampere_core::ports::SlotPersistence;
use ampere_core::shape::RelationName;

use super::{PgModel, CHANGE_RECORD_LEN};

/// What Postgres reports to a client: SQLSTATE, message and detail of an `ErrorResponse`.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[error("{sqlstate}: {message}")]
pub struct SqlError {
    /// The SQLSTATE (`42710`, `55006`, …).
    pub sqlstate: String,
    /// The primary message.
    pub message: String,
    /// The detail, if any.
    pub detail: Option<String>,
}

impl SqlError {
    /// An error without detail.
    pub fn new(sqlstate: &str, message: impl Into<String>) -> Self {
        Self {
            sqlstate: sqlstate.to_owned(),
            message: message.into(),
            detail: None,
        }
    }
}

/// A connected backend.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Backend {
    /// The turmoil host the connection came from.
    pub client_host: String,
    /// A walsender (`replication=database`) or an ordinary backend.
    pub replication: bool,
    /// The slot it streams from, after `START_REPLICATION`.
    pub streaming_slot: Option<String>,
    /// Its open read transaction.
    pub(crate) read: Option<super::read::ReadTxn>,
}

/// A granted advisory lock (these stack within one backend).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct AdvisoryLock {
    pid: i32,
    count: u32,
}

/// An advisory lock granted to or released by a backend.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LockEvent {
    /// When (sim elapsed).
    pub at: Duration,
    /// The backend.
    pub pid: i32,
    /// Its client host.
    pub client_host: String,
    /// The lock key (`hashtext(slot)` widened).
    pub key: i64,
    /// Granted (`true`) or released (`false`, when the backend ended).
    pub acquired: bool,
}

/// A standby status update a walsender received.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AckEvent {
    /// When (sim elapsed).
    pub at: Duration,
    /// The walsender's backend.
    pub pid: i32,
    /// The client host of the walsender's connection.
    pub client_host: String,
    /// The slot streamed.
    pub slot: String,
    /// The `flush` position sent.
    pub flush: Lsn,
}

/// A logical replication slot.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Slot {
    /// Persistent, or temporary (dropped when its backend ends).
    pub persistence: SlotPersistence,
    /// Where `START_REPLICATION … 0/0` resumes.
    pub confirmed_flush_lsn: Lsn,
    /// Where the slot's history starts.
    pub consistent_point: Lsn,
    /// The backend using it (for a temporary slot: from creation on).
    pub active_pid: Option<i32>,
    /// `wal_status = 'lost'`.
    pub invalidated: bool,
    /// `confirmed_flush_lsn` as of the last checkpoint: what a crash reverts to.
    pub persisted_confirmed_flush_lsn: Lsn,
}

impl Slot {
    /// Whether the slot is `TEMPORARY`.
    pub fn is_temporary(&self) -> bool {
        self.persistence == SlotPersistence::Temporary
    }

    /// `pg_replication_slots.active`.
    pub fn is_active(&self) -> bool {
        self.active_pid.is_some()
    }

    /// `pg_replication_slots.wal_status`.
    pub fn wal_status(&self) -> &'static str {
        if self.invalidated {
            "lost"
        } else {
            "reserved"
        }
    }
}

/// A change to a publication, at its WAL position.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct PublicationEvent {
    lsn: Lsn,
    publication: String,
    change: PublicationChange,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PublicationChange {
    Created,
    Dropped,
    Added(u32),
}

/// Postgres's `hashtext` stand-in: FNV-1a, 32 bits. Deterministic; the same everywhere.
pub fn hashtext(text: &str) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in text.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    i32::from_ne_bytes(hash.to_ne_bytes())
}

/// The advisory lock key of a slot: `hashtext('<slot>')` widened to bigint (LK-1).
pub fn advisory_key(slot: &str) -> i64 {
    i64::from(hashtext(slot))
}

impl PgModel {
    /// The pid the next backend will get: every backend connected so far has a lower one.
    pub fn next_pid(&self) -> i32 {
        self.next_pid
    }

    /// A backend connects; returns its pid (increasing, never reused).
    pub fn open_backend(&mut self, client_host: &str, replication: bool) -> i32 {
        let pid = self.next_pid;
        self.next_pid += 1;
        let backend = Backend {
            client_host: client_host.to_owned(),
            replication,
            streaming_slot: None,
            read: None,
        };
        self.backends.insert(pid, backend);
        self.bump();
        pid
    }

    /// A backend ends: its advisory locks are released, its slot becomes inactive, its
    /// temporary slots are dropped. Idempotent.
    pub fn close_backend(&mut self, pid: i32) {
        let Some(backend) = self.backends.remove(&pid) else {
            return;
        };
        let released: Vec<i64> = self
            .advisory_locks
            .iter()
            .filter(|(_, lock)| lock.pid == pid)
            .map(|(key, _)| *key)
            .collect();
        for key in released {
            self.advisory_locks.remove(&key);
            self.lock_events.push(LockEvent {
                at: self.now,
                pid,
                client_host: backend.client_host.clone(),
                key,
                acquired: false,
            });
        }
        self.slots
            .retain(|_, slot| !(slot.is_temporary() && slot.active_pid == Some(pid)));
        for slot in self.slots.values_mut() {
            if slot.active_pid == Some(pid) {
                slot.active_pid = None;
            }
        }
        self.bump();
    }

    /// `pg_terminate_backend(pid)`: the backend ends now (as [`Self::close_backend`]); its
    /// server task notices and closes the socket. Whether such a backend existed.
    pub fn terminate_backend(&mut self, pid: i32) -> bool {
        if !self.backends.contains_key(&pid) {
            return false;
        }
        tracing::debug!(pid, "pg model: backend terminated");
        self.close_backend(pid);
        true
    }

    /// Whether the backend is connected (not closed, terminated or lost to a restart).
    pub fn is_backend_alive(&self, pid: i32) -> bool {
        self.backends.contains_key(&pid)
    }

    /// A connected backend.
    pub fn backend(&self, pid: i32) -> Option<&Backend> {
        self.backends.get(&pid)
    }

    /// Every connected backend, by pid.
    pub fn backends(&self) -> &BTreeMap<i32, Backend> {
        &self.backends
    }

    /// `pg_try_advisory_lock(key)` on backend `pid` (re-entrant: the same pid stacks it).
    pub fn try_advisory_lock(&mut self, pid: i32, key: i64) -> bool {
        let Some(backend) = self.backends.get(&pid) else {
            return false;
        };
        match self.advisory_locks.get_mut(&key) {
            Some(lock) if lock.pid == pid => {
                lock.count += 1;
                true
            }
            Some(_) => false,
            None => {
                self.advisory_locks
                    .insert(key, AdvisoryLock { pid, count: 1 });
                self.lock_events.push(LockEvent {
                    at: self.now,
                    pid,
                    client_host: backend.client_host.clone(),
                    key,
                    acquired: true,
                });
                self.bump();
                true
            }
        }
    }

    /// Every advisory lock grant and release, in order.
    pub fn lock_events(&self) -> &[LockEvent] {
        &self.lock_events
    }

    /// The backend holding the advisory lock of `slot`.
    pub fn lock_holder(&self, slot: &str) -> Option<i32> {
        self.advisory_locks.get(&advisory_key(slot)).map(|l| l.pid)
    }

    /// The client host of the backend holding the advisory lock of `slot`.
    pub fn lock_holder_host(&self, slot: &str) -> Option<String> {
        let pid = self.lock_holder(slot)?;
        self.backends.get(&pid).map(|b| b.client_host.clone())
    }

    /// LB-1: backends other than `own_pid` holding the lock of `slot` while a slot of that
    /// name exists and is inactive.
    pub fn stale_lock_holders(&self, slot: &str, own_pid: i32) -> Vec<i32> {
        let inactive = self.slots.get(slot).is_some_and(|s| !s.is_active());
        if !inactive {
            return Vec::new();
        }
        self.lock_holder(slot)
            .filter(|&pid| pid != own_pid)
            .into_iter()
            .collect()
    }

    /// `CREATE PUBLICATION` (empty): whether it was created (`false`: it existed).
    pub fn create_publication(&mut self, name: &str) -> bool {
        if self.publications.contains_key(name) {
            return false;
        }
        self.publications.insert(name.to_owned(), BTreeSet::new());
        self.log_publication(name, PublicationChange::Created);
        true
    }

    /// `DROP PUBLICATION`: whether it existed (its comment goes with it).
    pub fn drop_publication(&mut self, name: &str) -> bool {
        if self.publications.remove(name).is_none() {
            return false;
        }
        self.publication_comments.remove(name);
        self.log_publication(name, PublicationChange::Dropped);
        true
    }

    /// `ALTER PUBLICATION … ADD TABLE` (already a member: no change). Changes written from
    /// now on are published; changes written before are not, even if their transaction
    /// commits later (Electric #4773).
    pub fn add_table_to_publication(
        &mut self,
        publication: &str,
        relation: &RelationName,
    ) -> Result<(), SqlError> {
        let oid = self
            .table(relation)
            .ok_or_else(|| SqlError::new("42P01", format!("relation {relation} does not exist")))?
            .oid;
        let members = self.publications.get_mut(publication).ok_or_else(|| {
            SqlError::new(
                "42704",
                format!("publication \"{publication}\" does not exist"),
            )
        })?;
        if members.insert(oid) {
            self.log_publication(publication, PublicationChange::Added(oid));
        }
        Ok(())
    }

    /// `COMMENT ON PUBLICATION`: committed at once, kept across restarts and crashes.
    pub fn comment_on_publication(&mut self, name: &str, comment: String) -> Result<(), SqlError> {
        if !self.publications.contains_key(name) {
            return Err(SqlError::new(
                "42704",
                format!("publication \"{name}\" does not exist"),
            ));
        }
        self.publication_comments.insert(name.to_owned(), comment);
        Ok(())
    }

    /// `obj_description(…, 'pg_publication')`: `None` without a comment or publication.
    pub fn publication_comment(&self, name: &str) -> Option<&str> {
        self.publication_comments.get(name).map(String::as_str)
    }

    /// The tables (oids) in a publication now.
    pub fn publication(&self, name: &str) -> Option<&BTreeSet<u32>> {
        self.publications.get(name)
    }

    /// Whether a change to table `oid` written at `lsn` is published in `publication`:
    /// `None` when the publication did not exist at that point.
    pub fn published_at(&self, publication: &str, oid: u32, lsn: Lsn) -> Option<bool> {
        let mut members: Option<BTreeSet<u32>> = None;
        let events = self
            .publication_log
            .iter()
            .take_while(|e| e.lsn < lsn)
            .filter(|e| e.publication == publication);
        for event in events {
            match event.change {
                PublicationChange::Created => members = Some(BTreeSet::new()),
                PublicationChange::Dropped => members = None,
                PublicationChange::Added(added) => {
                    if let Some(members) = members.as_mut() {
                        members.insert(added);
                    }
                }
            }
        }
        members.map(|m| m.contains(&oid))
    }

    /// `CREATE_REPLICATION_SLOT` by backend `pid`: returns the `consistent_point` (the
    /// current WAL end). A temporary slot is active for its creator until that ends.
    pub fn create_slot(
        &mut self,
        pid: i32,
        name: &str,
        persistence: SlotPersistence,
    ) -> Result<Lsn, SqlError> {
        if self.slots.contains_key(name) {
            return Err(SqlError::new(
                "42710",
                format!("replication slot \"{name}\" already exists"),
            ));
        }
        let consistent_point = self.wal_end;
        let active_pid = (persistence == SlotPersistence::Temporary).then_some(pid);
        let slot = Slot {
            persistence,
            confirmed_flush_lsn: consistent_point,
            consistent_point,
            active_pid,
            invalidated: false,
            persisted_confirmed_flush_lsn: consistent_point,
        };
        self.slots.insert(name.to_owned(), slot);
        self.bump();
        Ok(consistent_point)
    }

    /// A slot by name.
    pub fn slot(&self, name: &str) -> Option<&Slot> {
        self.slots.get(name)
    }

    /// Every slot, by name.
    pub fn slots(&self) -> &BTreeMap<String, Slot> {
        &self.slots
    }

    /// Fault: drops the slot, terminating the walsender streaming from it first. Whether it
    /// existed.
    pub fn drop_slot(&mut self, name: &str) -> bool {
        let Some(slot) = self.slots.get(name) else {
            return false;
        };
        if let Some(pid) = slot.active_pid {
            // a temporary slot goes with its backend
            self.terminate_backend(pid);
        }
        self.slots.remove(name);
        self.bump();
        true
    }

    /// `pg_drop_replication_slot` as ampere calls it (`… FROM pg_replication_slots WHERE
    /// slot_name = …`): no slot is fine; an active one is 55006.
    pub fn drop_inactive_slot(&mut self, name: &str) -> Result<(), SqlError> {
        match self.slots.get(name).and_then(|s| s.active_pid) {
            Some(pid) => Err(slot_in_use(name, pid)),
            None => {
                self.slots.remove(name);
                self.bump();
                Ok(())
            }
        }
    }

    /// Fault: the slot exceeds `max_slot_wal_keep_size` (`wal_status = 'lost'`); its
    /// walsender is terminated. Whether it existed.
    pub fn invalidate_slot(&mut self, name: &str) -> bool {
        let Some(slot) = self.slots.get_mut(name) else {
            return false;
        };
        slot.invalidated = true;
        if let Some(pid) = slot.active_pid {
            self.terminate_backend(pid);
        }
        self.bump();
        true
    }

    /// `START_REPLICATION SLOT … LOGICAL 0/0` by backend `pid`: returns where streaming
    /// starts (the slot's `confirmed_flush_lsn`).
    pub fn start_replication(&mut self, pid: i32, slot_name: &str) -> Result<Lsn, SqlError> {
        let slot = self.slots.get_mut(slot_name).ok_or_else(|| {
            SqlError::new(
                "42704",
                format!("replication slot \"{slot_name}\" does not exist"),
            )
        })?;
        if slot.invalidated {
            return Err(SqlError {
                sqlstate: "55000".to_owned(),
                message: format!("can no longer get changes from replication slot \"{slot_name}\""),
                detail: Some(
                    "This slot has been invalidated because it exceeded the maximum reserved size."
                        .to_owned(),
                ),
            });
        }
        if let Some(active) = slot.active_pid.filter(|&active| active != pid) {
            return Err(slot_in_use(slot_name, active));
        }
        slot.active_pid = Some(pid);
        let start = slot.confirmed_flush_lsn;
        if let Some(backend) = self.backends.get_mut(&pid) {
            backend.streaming_slot = Some(slot_name.to_owned());
        }
        self.bump();
        Ok(start)
    }

    /// A standby status update on walsender `pid`: `confirmed_flush_lsn = max(old, flush)`.
    /// Recorded as an [`AckEvent`] and passed to the hook.
    pub fn standby_status(&mut self, pid: i32, flush: Lsn, at: Duration) {
        self.observe_time(at);
        let Some(backend) = self.backends.get(&pid) else {
            return;
        };
        let Some(slot_name) = backend.streaming_slot.clone() else {
            return;
        };
        let event = AckEvent {
            at: self.now,
            pid,
            client_host: backend.client_host.clone(),
            slot: slot_name.clone(),
            flush,
        };
        if let Some(slot) = self.slots.get_mut(&slot_name) {
            // an invalid (0/0) flush is ignored, as Postgres does
            if slot.active_pid == Some(pid) && flush != Lsn::ZERO {
                slot.confirmed_flush_lsn = slot.confirmed_flush_lsn.max(flush);
            }
        }
        self.ack_events.push(event.clone());
        // Taken out so the hook can read the whole model; put back unless it installed another.
        if let Some(mut hook) = self.on_ack.take() {
            hook(self, &event);
            self.on_ack.get_or_insert(hook);
        }
        self.bump();
    }

    /// Every standby status update received, in order.
    pub fn ack_events(&self) -> &[AckEvent] {
        &self.ack_events
    }

    /// A checkpoint: every slot's `confirmed_flush_lsn` becomes crash-safe.
    pub fn checkpoint(&mut self) {
        for slot in self.slots.values_mut() {
            slot.persisted_confirmed_flush_lsn = slot.confirmed_flush_lsn;
        }
    }

    fn log_publication(&mut self, publication: &str, change: PublicationChange) {
        let lsn = self.append_wal(CHANGE_RECORD_LEN);
        self.publication_log.push(PublicationEvent {
            lsn,
            publication: publication.to_owned(),
            change,
        });
        self.bump();
    }
}

fn slot_in_use(name: &str, pid: i32) -> SqlError {
    SqlError::new(
        "55006",
        format!("replication slot \"{name}\" is active for PID {pid}"),
    )
}
