//! [`SimDisk`]: one storage directory with power-loss semantics, shared by every simulated
//! host that mounts it.
//!
//! Every write is *in flight* from when it is issued until its fsync latency (and any disk
//! stall) has passed; only then does it take effect, durably, as one step. Readers (stores,
//! metadata, the simulation's checks) only ever see durable state. [`SimDisk::crash`] ends a
//! writer's in-flight writes the way a power loss would: a flush leaves any prefix of each
//! shape's batch (never a gap), a half-done rename may or may not stick, and everything else
//! is lost.
//!
//! The disk's state sits behind a std mutex, never held across an `.await`, nor while the
//! audit hook runs.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use ampere_core::ports::{LogEntry, StorageIdentity, StoredShape};
use ampere_core::shape::HandleStamp;

use super::audit::{AuditHook, Mutation};
use super::durable::{Durable, DurableShape, Refused, Write};
use super::rng::SplitMix64;

/// One storage directory (shape logs, snapshots, metadata) with power-loss semantics.
/// Cheap to clone: clones are the same disk. Several hosts may share one (shared storage).
#[derive(Clone)]
pub struct SimDisk {
    inner: Arc<Mutex<DiskState>>,
}

struct DiskState {
    durable: Durable,
    in_flight: BTreeMap<u64, InFlight>,
    next_op: u64,
    rng: SplitMix64,
    latency_min: Duration,
    latency_max: Duration,
    /// Simulated time until which the disk is frozen (F9).
    stalled_until: Duration,
    /// Simulated time until which the disk is full (F12): writes issued before then fail.
    full_until: Duration,
    /// Readers waiting for a shape to change (`changed()`), across every host.
    watchers: BTreeMap<String, watch::Sender<u64>>,
    /// Every handle whose shape became durable, in order, repeats included.
    created: Vec<String>,
    hook: Option<Arc<AuditHook>>,
    /// The storage lease: its current generation, and the generation each writer took last.
    /// A write takes effect only if its writer holds the current generation (fencing).
    lease: u64,
    leases: BTreeMap<String, u64>,
}

/// A write issued but not durable yet.
struct InFlight {
    writer: String,
    issued_at: Duration,
    write: Write,
}

/// Why a write did not take effect.
#[derive(Debug, thiserror::Error)]
pub(super) enum WriteError {
    /// A crash (or a restore of an older copy) ended it before it was durable.
    #[error("the disk lost the write before it was durable")]
    Lost,
    /// The disk was full when it was issued (F12): nothing of it took effect.
    #[error("no space left on the disk")]
    Full,
    /// It was refused when it was to take effect.
    #[error("the write was refused: {0:?}")]
    Refused(Refused),
    /// The task completing it panicked or its runtime shut down.
    #[error("the task completing the write failed")]
    Worker(#[source] tokio::task::JoinError),
}

/// Simulated time now: turmoil's, zero outside a simulation.
pub(super) fn sim_now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

impl SimDisk {
    /// An empty disk; `seed` drives its choices (fsync latencies), nothing else does.
    pub fn new(seed: u64) -> Self {
        Self {
            inner: Arc::new(Mutex::new(DiskState {
                durable: Durable::default(),
                in_flight: BTreeMap::new(),
                next_op: 0,
                rng: SplitMix64::new(seed),
                latency_min: Duration::ZERO,
                latency_max: Duration::ZERO,
                stalled_until: Duration::ZERO,
                full_until: Duration::ZERO,
                watchers: BTreeMap::new(),
                created: Vec::new(),
                hook: None,
                lease: 0,
                leases: BTreeMap::new(),
            })),
        }
    }

    /// Each write (flush, chunk, marker, metadata transaction, rename) takes a latency drawn
    /// uniformly from `min..=max` (simulated time) before it is durable.
    pub fn set_fsync_latency(&self, min: Duration, max: Duration) {
        let mut state = self.state();
        state.latency_min = min;
        state.latency_max = max.max(min);
    }

    /// Freezes the disk until simulated time `until` (F9): no write completes before then,
    /// and async reads of metadata wait too.
    pub fn stall_until(&self, until: Duration) {
        let mut state = self.state();
        state.stalled_until = state.stalled_until.max(until);
    }

    /// Installs the audit hook, called synchronously before every mutation takes effect.
    pub fn set_audit_hook(&self, hook: AuditHook) {
        self.state().hook = Some(Arc::new(hook));
    }

    /// Power loss for `writer`: its in-flight writes end as the crash model says (module
    /// docs), deterministically from `entropy`; their futures fail. Call it whenever the
    /// host that writes as `writer` crashes, before it restarts under the same name.
    pub fn crash(&self, writer: &str, entropy: u64) {
        let (effects, hook) = {
            let mut state = self.state();
            let ops: Vec<u64> = state
                .in_flight
                .iter()
                .filter(|(_, op)| op.writer == writer)
                .map(|(&id, _)| id)
                .collect();
            let mut rng = SplitMix64::new(entropy);
            let effects: Vec<InFlight> = ops
                .into_iter()
                .filter_map(|id| state.in_flight.remove(&id))
                .filter_map(|op| {
                    let write = op.write.torn(&mut rng)?;
                    Some(InFlight { write, ..op })
                })
                .collect();
            (effects, state.hook.clone())
        };
        for op in effects {
            // Refusals cannot happen for torn writes that land; nothing waits for them.
            let _ = self.take_effect(op, hook.as_deref());
        }
    }

    /// A copy of the durable state (the storage directory copied while nothing is in
    /// flight, §2 item 3): no in-flight writes, waiters or audit hook; same latency
    /// settings; the creation history is copied.
    pub fn snapshot_copy(&self) -> Self {
        let mut state = self.state();
        let seed = state.rng.next_u64();
        let copy = Self::new(seed);
        {
            let mut target = copy.state();
            target.durable = state.durable.clone();
            target.latency_min = state.latency_min;
            target.latency_max = state.latency_max;
            target.created = state.created.clone();
        }
        copy
    }

    /// Replaces this disk's durable state with `other`'s (restoring an old copy of the
    /// storage directory). Writes in flight are lost; every waiter wakes. The creation
    /// history keeps this disk's entries (it is the record of what was ever issued here).
    pub fn restore_from(&self, other: &Self) {
        let restored = other.state().durable.clone();
        let mut state = self.state();
        state.durable = restored;
        state.in_flight.clear();
        for watcher in state.watchers.values() {
            watcher.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Handles of every durable shape, sorted.
    pub fn durable_shapes(&self) -> Vec<String> {
        self.state().durable.shapes.keys().cloned().collect()
    }

    /// A shape's durable replicated entries (empty if it does not exist).
    pub fn durable_log(&self, handle: &str) -> Vec<LogEntry> {
        self.with_shape(handle, |shape| shape.log.clone())
            .unwrap_or_default()
    }

    /// A shape's durable snapshot chunks and whether its completion marker is durable.
    pub fn durable_snapshot(&self, handle: &str) -> Option<(Vec<String>, bool)> {
        self.with_shape(handle, |shape| (shape.chunks.clone(), shape.complete))
    }

    /// The durable metadata: rows (by handle), the stamp high-water mark, the identity.
    pub fn durable_metadata(&self) -> (Vec<StoredShape>, HandleStamp, Option<StorageIdentity>) {
        let state = self.state();
        let metadata = &state.durable.metadata;
        let rows = metadata.rows.values().cloned().collect();
        (rows, metadata.stamp, metadata.identity.clone())
    }

    /// Every handle whose shape ever became durable here, in order; a handle listed twice
    /// was created twice (deploy-semantics §3 invariant 4).
    pub fn handles_ever_created(&self) -> Vec<String> {
        self.state().created.clone()
    }

    /// Leftovers of interrupted writes a promoted writer clears: half-created shapes and
    /// trash entries, by handle.
    pub fn debris(&self) -> (Vec<String>, Vec<String>) {
        let state = self.state();
        let creating = state.durable.creating.iter().cloned().collect();
        let trash = state.durable.trash.iter().cloned().collect();
        (creating, trash)
    }

    /// Writes issued by `writer` that are not durable yet.
    pub fn in_flight(&self, writer: &str) -> usize {
        let state = self.state();
        state
            .in_flight
            .values()
            .filter(|op| op.writer == writer)
            .count()
    }

    /// Issues `write` for `writer` when first polled, waits out the latency and any stall,
    /// then makes it durable. The completion runs in its own task: dropping the future does
    /// not abandon a write already issued (as `spawn_blocking` in io-real).
    pub(super) fn write(
        &self,
        writer: &str,
        write: Write,
    ) -> impl Future<Output = Result<(), WriteError>> + Send + 'static {
        let disk = self.clone();
        let writer = writer.to_owned();
        async move {
            let task = tokio::spawn(async move {
                let (id, latency) = disk.issue(writer, write)?;
                disk.wait_stall().await;
                tokio::time::sleep(latency).await;
                disk.wait_stall().await;
                disk.complete(id)
            });
            task.await.map_err(WriteError::Worker)?
        }
    }

    /// A recovery's read of a whole shape log (io-real scans its index and data): a latency
    /// drawn as a write's, so a restart spends time between taking the lease and recovering
    /// each shape, and readers meet that window as they do in production.
    pub(super) async fn read_latency(&self) {
        let latency = self.state().pick_latency();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
    }

    /// Waits while the disk is stalled.
    pub(super) async fn wait_stall(&self) {
        loop {
            let until = self.state().stalled_until;
            let Some(now) = turmoil::sim_elapsed() else {
                return; // Outside a simulation there is no stall clock.
            };
            if now >= until {
                return;
            }
            tokio::time::sleep(until - now).await;
        }
    }

    /// Fills the disk until `until` (simulated time; F12): every write issued before then
    /// fails as `ENOSPC` would, the storage lease's included; writes already in flight still
    /// complete. [`SimDisk::free`] ends it earlier.
    pub fn fill_until(&self, until: Duration) {
        let mut state = self.state();
        state.full_until = state.full_until.max(until);
    }

    /// Frees the space a [`SimDisk::fill_until`] took, now.
    pub fn free(&self) {
        self.state().full_until = Duration::ZERO;
    }

    /// Whether the disk is full now (F12).
    pub fn is_full(&self) -> bool {
        sim_now() < self.state().full_until
    }

    /// Runs `read` on a durable shape, if it exists.
    pub(super) fn with_shape<R>(
        &self,
        handle: &str,
        read: impl FnOnce(&DurableShape) -> R,
    ) -> Option<R> {
        self.state().durable.shapes.get(handle).map(read)
    }

    /// Runs `read` on the whole durable state.
    pub(super) fn with_durable<R>(&self, read: impl FnOnce(&Durable) -> R) -> R {
        read(&self.state().durable)
    }

    /// A receiver that resolves on the shape's next durable change.
    pub(super) fn subscribe(&self, handle: &str) -> watch::Receiver<u64> {
        self.state()
            .watchers
            .entry(handle.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Wakes the shape's waiters (a writer unregistered it, or recovery replaced its view).
    pub(super) fn notify(&self, handle: &str) {
        if let Some(watcher) = self.state().watchers.get(handle) {
            watcher.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    fn issue(&self, writer: String, write: Write) -> Result<(u64, Duration), WriteError> {
        let mut state = self.state();
        // Fencing, checked before the write starts too, as io-real checks the lease before
        // each write it starts: a deposed writer issues nothing, so a crash cannot land a
        // torn prefix of a write the lease refused, and a write issued while deposed cannot
        // take effect after a later promotion of the same writer.
        if !state.holds_lease(&writer) {
            return Err(WriteError::Refused(Refused::Fenced));
        }
        if sim_now() < state.full_until {
            return Err(WriteError::Full);
        }
        let id = state.next_op;
        state.next_op += 1;
        let latency = state.pick_latency();
        let issued_at = sim_now();
        state.in_flight.insert(
            id,
            InFlight {
                writer,
                issued_at,
                write,
            },
        );
        Ok((id, latency))
    }

    fn complete(&self, id: u64) -> Result<(), WriteError> {
        let (op, hook) = {
            let mut state = self.state();
            let op = state.in_flight.remove(&id).ok_or(WriteError::Lost)?;
            // Fencing: the lease is checked right before the write takes effect (io-real
            // checks it right before each pointer write).
            if !state.holds_lease(&op.writer) {
                return Err(WriteError::Refused(Refused::Fenced));
            }
            (op, state.hook.clone())
        };
        self.take_effect(op, hook.as_deref())
    }

    /// A promoting writer takes the storage lease: every earlier holder is fenced from now on
    /// (its writes fail with `Fenced`). Durable at once, like io-real's lease file (written
    /// and synced before promotion returns).
    pub(super) fn acquire_lease(&self, writer: &str) -> u64 {
        let (generation, hook) = {
            let state = self.state();
            (state.lease + 1, state.hook.clone())
        };
        if let Some(hook) = hook.as_deref() {
            hook(&Mutation {
                at: sim_now(),
                issued_at: sim_now(),
                writer: writer.to_owned(),
                kind: super::audit::MutationKind::LeaseAcquired { generation },
                handle: None,
            });
        }
        let mut state = self.state();
        state.lease = generation;
        state.leases.insert(writer.to_owned(), generation);
        generation
    }

    /// Whether `writer` holds the current lease.
    pub fn holds_lease(&self, writer: &str) -> bool {
        self.state().holds_lease(writer)
    }

    /// Audits, then applies, one write, and wakes the readers of what changed.
    fn take_effect(&self, op: InFlight, hook: Option<&AuditHook>) -> Result<(), WriteError> {
        let mutations = self.state().durable.mutations(&op.write);
        if let Some(hook) = hook {
            let at = sim_now();
            for (kind, handle) in mutations {
                hook(&Mutation {
                    at,
                    issued_at: op.issued_at,
                    writer: op.writer.clone(),
                    kind,
                    handle,
                });
            }
        }
        let created = match &op.write {
            Write::CreateShape { handle } => Some(handle.clone()),
            _ => None,
        };
        let mut state = self.state();
        let woken = state.durable.apply(op.write).map_err(WriteError::Refused)?;
        state.created.extend(created);
        for handle in woken {
            if let Some(watcher) = state.watchers.get(&handle) {
                watcher.send_modify(|v| *v = v.wrapping_add(1));
            }
        }
        Ok(())
    }

    fn state(&self) -> MutexGuard<'_, DiskState> {
        // Nothing is left half-changed under this lock, so a poisoned one is still sound.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl DiskState {
    /// Whether `writer` took the current storage lease (no later promotion fenced it).
    fn holds_lease(&self, writer: &str) -> bool {
        self.leases.get(writer) == Some(&self.lease)
    }

    fn pick_latency(&mut self) -> Duration {
        let spread = self.latency_max.saturating_sub(self.latency_min);
        let spread = u64::try_from(spread.as_nanos()).unwrap_or(u64::MAX);
        if spread == 0 {
            return self.latency_min;
        }
        self.latency_min + Duration::from_nanos(self.rng.up_to(spread))
    }
}

impl std::fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state();
        f.debug_struct("SimDisk")
            .field("shapes", &state.durable.shapes.len())
            .field("in_flight", &state.in_flight.len())
            .finish_non_exhaustive()
    }
}
