//! The connection lifecycle: connect → advisory lock (with the lock breaker) → load storage
//! → start streaming → active, and the continuity check that decides a purge.
//!
//! Rules: deploy-semantics LK-1..LK-6 (lock), LB-1..LB-3 (breaker), CT-1..CT-5 (continuity),
//! RO-4 (nothing is written before the lock is held and storage loaded).

use std::time::Duration;

use super::{
    Durability, Instance, LoadedStorage, Output, Phase, LOCK_BREAKER_GRACE, LOCK_BREAKER_PERIOD,
    LOCK_POLL,
};
use crate::lsn::Lsn;
use crate::pgoutput::{Decoder, ProtoVersion};
use crate::ports::{DisconnectKind, SlotStarted, StorageIdentity, SystemIdentity};
use crate::txn::TxnAssembler;
use crate::OpId;

impl Instance {
    /// Whether `op` is the lifecycle step the core waits for.
    pub(super) fn awaits_step(&self, op: OpId) -> bool {
        match &self.phase {
            Phase::Connecting { op: o }
            | Phase::Loading { op: o, .. }
            | Phase::Starting { op: o, .. } => *o == op,
            Phase::Locking { attempt, .. } => *attempt == Some(op),
            Phase::Backoff { .. } | Phase::Active { .. } | Phase::Failed => false,
        }
    }

    pub(super) fn on_connected(&mut self, op: OpId, system: SystemIdentity) {
        if !matches!(self.phase, Phase::Connecting { op: o } if o == op) {
            return; // a reply the core no longer waits for
        }
        self.phase = Phase::Locking {
            system,
            attempt: None,
            next_try: self.now,
        };
        self.breaker.next_at = Some(self.now + LOCK_BREAKER_PERIOD);
        self.breaker.suspects.clear();
        self.try_lock();
    }

    pub(super) fn try_lock(&mut self) {
        let op = self.op();
        let Phase::Locking { attempt, .. } = &mut self.phase else {
            return;
        };
        *attempt = Some(op);
        let slot = self.config.target.slot.clone();
        self.outputs.push_back(Output::TryLock { op, slot });
    }

    pub(super) fn on_lock_attempted(&mut self, op: OpId, acquired: bool) {
        let Phase::Locking {
            system,
            attempt,
            next_try,
        } = &mut self.phase
        else {
            return;
        };
        if *attempt != Some(op) {
            return;
        }
        if !acquired {
            // LK-4: poll again later; never re-issue on a connection that got it.
            *attempt = None;
            *next_try = self.now + LOCK_POLL;
            return;
        }
        let system = system.clone();
        self.breaker = super::LockBreaker::default();
        let op = self.op();
        self.phase = Phase::Loading {
            op,
            system,
            issued: false,
        };
        self.issue_load_storage();
    }

    /// Loads storage once no flush from before the last disconnect is still writing.
    pub(super) fn issue_load_storage(&mut self) {
        if self.durability.flush_in_flight.is_some() {
            return;
        }
        let Phase::Loading { op, issued, .. } = &mut self.phase else {
            return;
        };
        if !*issued {
            *issued = true;
            let op = *op;
            self.outputs.push_back(Output::LoadStorage { op });
        }
    }

    pub(super) fn run_lock_breaker_if_due(&mut self) {
        let Phase::Locking { system, .. } = &self.phase else {
            return;
        };
        let due = self.breaker.next_at.is_some_and(|at| self.now >= at);
        if !due || self.breaker.query.is_some() {
            return;
        }
        let own_pid = system.backend_pid;
        let op = self.op();
        self.breaker.query = Some((op, self.now));
        self.breaker.next_at = Some(self.now + LOCK_BREAKER_PERIOD);
        let slot = self.config.target.slot.clone();
        self.outputs
            .push_back(Output::FindStaleLockHolders { op, slot, own_pid });
    }

    /// LB-3: a holder is terminated only once consecutive checks have seen it for the grace
    /// period; one that disappears from a check starts over.
    pub(super) fn on_stale_lock_holders(&mut self, op: OpId, pids: Vec<i32>) {
        let Some((expected, issued_at)) = self.breaker.query else {
            return;
        };
        if expected != op {
            return;
        }
        self.breaker.query = None;
        if !matches!(self.phase, Phase::Locking { .. }) {
            return;
        }
        let now = issued_at;
        let suspects = &mut self.breaker.suspects;
        suspects.retain(|pid, _| pids.contains(pid));
        for pid in pids {
            let first_seen = *suspects.entry(pid).or_insert(now);
            if now.saturating_duration_since(first_seen) >= LOCK_BREAKER_GRACE {
                suspects.remove(&pid);
                self.outputs.push_back(Output::TerminateBackend { pid });
            }
        }
    }

    pub(super) fn on_storage_loaded(&mut self, op: OpId, storage: LoadedStorage) {
        let Phase::Loading {
            op: expected,
            system,
            ..
        } = &self.phase
        else {
            return;
        };
        if *expected != op {
            return;
        }
        let system = system.clone();
        let LoadedStorage {
            shapes,
            stamp,
            identity,
        } = storage;
        self.stamp = self.stamp.max(stamp);
        self.identity = identity;
        let mut incomplete = Vec::new();
        for loaded in shapes {
            match loaded.log {
                Some(log) if loaded.stored.snapshot.is_some() => {
                    self.restore(super::RecoveredShape {
                        stored: loaded.stored,
                        log,
                    });
                }
                // SN-6: only the lock holder discards incomplete shapes, and only once it
                // streams (LK-5).
                _ => incomplete.push(loaded.stored.handle),
            }
        }
        let op = self.op();
        self.phase = Phase::Starting {
            op,
            system,
            incomplete,
        };
        let target = self.config.target.clone();
        self.outputs
            .push_back(Output::StartStreaming { op, target });
    }

    pub(super) fn on_started(&mut self, op: OpId, slot: SlotStarted) {
        let Phase::Starting {
            op: expected,
            system,
            incomplete,
        } = &mut self.phase
        else {
            return;
        };
        if *expected != op {
            return;
        }
        let system = system.clone();
        let incomplete = std::mem::take(incomplete);
        self.phase = Phase::Active { since: self.now };
        self.last_received_at = self.now;
        let start = slot.confirmed_flush_lsn;
        // ID-2: stamps issued under the reservation may be missing from a restored storage
        // directory, so the next handle is stamped above it.
        self.stamp = self.stamp.max(slot.stamps_reserved);
        self.stamps_reserved = slot.stamps_reserved;
        self.durability = Durability {
            processed: Lsn(start.0.saturating_sub(1)),
            confirmed: start,
            acked: start,
            flush_in_flight: self.durability.flush_in_flight.take(),
            ..Durability::default()
        };
        if let Some(reason) = self.continuity_break(&system, slot) {
            self.purge(&system, reason);
        }
        // SN-6, LK-5: the slot is active now, so no waiting instance's breaker can take the
        // lock meanwhile. Before the purge marker is cleared, so a crash resumes them too.
        for handle in incomplete {
            let reason = "snapshot did not complete";
            self.outputs
                .push_back(Output::RemoveShape { handle, reason });
        }
        self.persist_identity(&system, start, false);
        self.next_status_at = self.now;
    }

    /// CT-1: why storage does not continue the slot's history, if it does not.
    fn continuity_break(&self, system: &SystemIdentity, slot: SlotStarted) -> Option<&'static str> {
        let stored = self.identity.as_ref();
        if stored.is_some_and(|s| s.purge_pending) {
            return Some("an earlier purge did not finish");
        }
        if self.shapes.is_empty() {
            return None; // CT-4: nothing to lose (a first boot included)
        }
        if slot.slot_created {
            return Some("replication slot was created anew");
        }
        let stored = stored?;
        if stored.system_id != system.system_id || stored.timeline != system.timeline {
            return Some("storage was built from a different PostgreSQL cluster or timeline");
        }
        if stored.slot != self.config.target.slot {
            return Some("storage follows a different replication slot");
        }
        if slot.confirmed_flush_lsn > stored.acked {
            return Some("storage is behind the slot (an older copy of the storage directory?)");
        }
        None
    }

    /// CT-2: persist the decision, remove every shape, then record the new identity.
    fn purge(&mut self, system: &SystemIdentity, reason: &'static str) {
        let start = self.durability.confirmed;
        self.persist_identity(system, start, true);
        self.outputs.push_back(Output::Purged { reason });
        let handles: Vec<_> = self.shapes.keys().cloned().collect();
        for handle in handles {
            #[cfg(feature = "sim")]
            if let Some(shape) = self.shapes.get(&handle) {
                self.purged.insert(shape.definition.clone(), handle.clone());
            }
            self.remove_shape(&handle, reason);
        }
    }

    fn persist_identity(&mut self, system: &SystemIdentity, acked: Lsn, purge_pending: bool) {
        let identity = StorageIdentity {
            system_id: system.system_id.clone(),
            timeline: system.timeline,
            slot: self.config.target.slot.clone(),
            acked,
            purge_pending,
        };
        if self.identity.as_ref() != Some(&identity) {
            self.identity = Some(identity.clone());
            self.outputs.push_back(Output::PersistIdentity { identity });
        }
    }

    /// Before a status acknowledges `flush`, storage records it (CT-5, RP-1).
    pub(super) fn persist_acked(&mut self, flush: Lsn) {
        let Some(identity) = self.identity.as_mut() else {
            return;
        };
        if identity.acked >= flush {
            return;
        }
        identity.acked = flush;
        let identity = identity.clone();
        self.outputs.push_back(Output::PersistIdentity { identity });
    }

    /// Any failure: a fatal one stops; otherwise close the connection (releasing the lock),
    /// forget every shape (storage is reloaded by the next lock holder), and back off.
    pub(super) fn on_disconnected(&mut self, kind: DisconnectKind, message: String) {
        if kind == DisconnectKind::Fatal {
            self.phase = Phase::Failed;
            self.breaker = super::LockBreaker::default();
            self.outputs.push_back(Output::Fatal { message });
            return;
        }
        if let Phase::Active { since } = self.phase {
            if self.now.saturating_duration_since(since) >= Duration::from_secs(5) {
                self.reconnect_attempts = 0;
            }
        }
        let delay = self.reconnect_delay();
        self.reconnect_attempts = self.reconnect_attempts.saturating_add(1);
        self.phase = Phase::Backoff {
            at: self.now + delay,
        };
        self.outputs
            .push_back(Output::StopReplication { reason: message });
        self.outputs.push_back(Output::RefreshReadModel);
        self.next_refresh_at = self.now + super::READ_MODEL_REFRESH;
        self.breaker = super::LockBreaker::default();
        self.forget_storage();
    }

    /// LK-6: without the lock nothing may be written; in-memory shape state is rebuilt from
    /// storage by the next `LoadStorage`.
    fn forget_storage(&mut self) {
        self.decoder = Decoder::new(ProtoVersion::V1);
        self.assembler = TxnAssembler::new();
        self.shapes.clear();
        self.by_definition.clear();
        self.by_relation.clear();
        self.snapshots.clear();
        self.filter_ends.clear();
        self.identity = None;
        let flush_in_flight = self.durability.flush_in_flight.take();
        self.durability = Durability {
            flush_in_flight,
            ..Durability::default()
        };
    }
}
