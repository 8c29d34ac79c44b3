//! The read model the driver publishes for HTTP handlers: live shapes by handle and by
//! definition, readiness and the durable LSN. Written only by the driver loop.
//!
//! Readiness and the durable LSN are one [`ReadState`] behind a [`Watermark`]: a reader of
//! [`Registry::state`] gets both from the same publish (never `active` with the LSN of an
//! earlier or later publish), and [`Registry::wait_for`] cannot sleep through a publish that
//! lands while it checks (the watermark's loom-checked guarantees).
//!
//! Each live shape also carries when it was last used, as a [`UseTick`]: its creation and
//! every shape request served for it ([`Registry::record_use`], called by the HTTP layer)
//! take the next tick of one process-wide counter, so ticks order uses without a clock. A
//! use costs the read lock lookups take anyway and two relaxed atomic operations. Eviction
//! beyond `ELECTRIC_MAX_SHAPES` ([`crate::eviction`]) reads them ([`Registry::uses`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use ampere_core::ports::SnapshotRefusal;
use ampere_core::shape::{ShapeDefinition, ShapeHandle};
use ampere_core::Lsn;
use ampere_io_real::watermark::Watermark;
use tokio::sync::Notify;

use crate::api::{Health, PurgeInfo, ShapeInfo};

/// Shared, cheaply cloned read model.
#[derive(Clone, Debug)]
pub struct Registry {
    inner: Arc<RwLock<Shapes>>,
    /// The last [`UseTick`] handed out.
    use_clock: Arc<AtomicU64>,
    /// Woken when a shape is created ([`Registry::insert`]), for eviction.
    created: Arc<Notify>,
    state: Arc<Watermark<ReadState>>,
    /// The `flush` position last acknowledged to Postgres (for metrics only: no one waits
    /// on it, so it is not part of [`ReadState`]).
    acknowledged_lsn: Arc<AtomicU64>,
    /// Why storage writes fail, while they do (for `/v1/health` and metrics).
    degraded: Arc<Mutex<Option<StorageDegraded>>>,
    /// What replication delivered (for metrics only).
    ingest: Arc<Mutex<Ingest>>,
}

/// Transactions and changes taken from the replication stream since start, and how far
/// behind the server the last transaction was taken.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Ingest {
    /// Transactions taken from the stream.
    pub transactions: u64,
    /// Their row changes.
    pub changes: u64,
    /// The last transaction's commit on the server to its processing here, in microseconds
    /// (the two hosts' clocks compared; `None` before the first transaction).
    pub lag_micros: Option<i64>,
}

/// Storage writes are failing for a reason that passes (a full disk, the descriptor limit, a
/// device error, or another write error): the instance serves what is durable, acknowledges
/// nothing, and retries until a write succeeds again.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct StorageDegraded {
    /// `full`, `fd_limit`, `io` ([`ampere_core::ports::StorageFaultKind::label`]), or
    /// `error` for a write error of no known cause.
    pub reason: &'static str,
    /// What failed, cause first, for the health body.
    pub message: String,
}

/// When a shape was last used, in the order of the uses this process saw: a larger tick is
/// a later use. `UseTick::NEVER` (0) is a shape loaded from storage and not used since this
/// process started.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct UseTick(pub u64);

impl UseTick {
    /// Not used since this process started.
    pub const NEVER: Self = Self(0);
}

/// Refused shapes remembered for their readers, at most (oldest forgotten first: a reader of
/// a forgotten one gets the 409 it got before, and its re-request the refusal again).
const REFUSED_MAX: usize = 1024;

#[derive(Debug, Default)]
struct Shapes {
    by_handle: BTreeMap<ShapeHandle, Entry>,
    by_definition: BTreeMap<ShapeDefinition, ShapeHandle>,
    last_purge: Option<PurgeInfo>,
    /// Shapes removed because their snapshot was refused, with why (handles are never
    /// reused, so a handle's refusal never applies to another shape).
    refused: BTreeMap<ShapeHandle, SnapshotRefusal>,
    /// `refused` in the order it was filled, to bound it.
    refused_order: VecDeque<ShapeHandle>,
}

/// A live shape and its last use.
#[derive(Debug)]
struct Entry {
    info: ShapeInfo,
    /// A [`UseTick`]; only raised (`fetch_max`), under the read lock.
    last_used: AtomicU64,
}

impl Entry {
    fn new(info: ShapeInfo, last_used: UseTick) -> Self {
        Self {
            info,
            last_used: AtomicU64::new(last_used.0),
        }
    }

    fn last_used(&self) -> UseTick {
        UseTick(self.last_used.load(Ordering::Relaxed))
    }
}

/// Readiness and progress, read whole with [`Registry::state`], awaited with
/// [`Registry::wait_for`].
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ReadState {
    /// `starting` until the driver runs, then `waiting` or `active`.
    pub health: Health,
    /// The last commit LSN durable in every shape.
    pub durable_lsn: Lsn,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self {
            inner: Arc::default(),
            use_clock: Arc::default(),
            created: Arc::default(),
            state: Arc::new(Watermark::new(ReadState::default())),
            acknowledged_lsn: Arc::default(),
            degraded: Arc::default(),
            ingest: Arc::default(),
        }
    }

    /// Records why storage writes fail (until [`Registry::storage_recovered`]).
    pub fn storage_degraded(&self, degraded: StorageDegraded) {
        *lock(&self.degraded) = Some(degraded);
    }

    /// Storage accepted writes again.
    pub fn storage_recovered(&self) {
        *lock(&self.degraded) = None;
    }

    /// Why storage writes fail, while they do.
    pub fn degraded(&self) -> Option<StorageDegraded> {
        lock(&self.degraded).clone()
    }

    /// Adds a live shape just created: its creation is its first use. Wakes
    /// [`Registry::created`].
    pub fn insert(&self, info: ShapeInfo) {
        {
            let mut shapes = self.write();
            let used = self.next_tick();
            shapes
                .by_definition
                .insert(info.definition.clone(), info.handle.clone());
            shapes
                .by_handle
                .insert(info.handle.clone(), Entry::new(info, used));
        }
        self.created.notify_one();
    }

    /// Replaces every shape (a standby's refresh, or storage loaded by the lock holder). A
    /// shape already known keeps its last use; the others were not used by this process
    /// ([`UseTick::NEVER`]).
    pub fn replace_all(&self, shapes: impl IntoIterator<Item = ShapeInfo>) {
        let mut fresh = Shapes::default();
        for info in shapes {
            fresh
                .by_definition
                .insert(info.definition.clone(), info.handle.clone());
            let handle = info.handle.clone();
            fresh
                .by_handle
                .insert(handle, Entry::new(info, UseTick::NEVER));
        }
        let mut current = self.write();
        for (handle, entry) in &mut fresh.by_handle {
            if let Some(known) = current.by_handle.get(handle) {
                *entry.last_used.get_mut() = known.last_used().0;
            }
        }
        fresh.last_purge = current.last_purge;
        fresh.refused = std::mem::take(&mut current.refused);
        fresh.refused_order = std::mem::take(&mut current.refused_order);
        *current = fresh;
    }

    /// Counts a purge and remembers why (shown by `/v1/health`).
    pub fn record_purge(&self, reason: &'static str) {
        let mut shapes = self.write();
        let count = shapes.last_purge.map_or(0, |p| p.count) + 1;
        shapes.last_purge = Some(PurgeInfo { count, reason });
    }

    /// The last purge since start.
    pub fn last_purge(&self) -> Option<PurgeInfo> {
        self.read().last_purge
    }

    /// Removes a shape (its clients get 409 from now on).
    pub fn remove(&self, handle: &ShapeHandle) {
        let mut shapes = self.write();
        if let Some(entry) = shapes.by_handle.remove(handle) {
            let definition = &entry.info.definition;
            if shapes.by_definition.get(definition) == Some(handle) {
                shapes.by_definition.remove(definition);
            }
        }
    }

    /// Records a use of the live shape with this handle (a shape request served for it); a
    /// handle no live shape has is ignored.
    pub fn record_use(&self, handle: &ShapeHandle) {
        let shapes = self.read();
        if let Some(entry) = shapes.by_handle.get(handle) {
            // `fetch_max`: of two requests racing here, the later tick wins whatever the order.
            entry
                .last_used
                .fetch_max(self.next_tick().0, Ordering::Relaxed);
        }
    }

    /// Every live shape with its last use, in handle order.
    pub fn uses(&self) -> Vec<(ShapeHandle, UseTick)> {
        self.read()
            .by_handle
            .iter()
            .map(|(handle, entry)| (handle.clone(), entry.last_used()))
            .collect()
    }

    /// Resolves after a shape was created: at once if one was created since the last call
    /// returned (one waiter: eviction).
    pub async fn created(&self) {
        self.created.notified().await;
    }

    /// Records why a shape's snapshot was refused, before the shape is removed: its readers
    /// answer with the refusal instead of a 409.
    pub fn refuse(&self, handle: &ShapeHandle, refusal: SnapshotRefusal) {
        let mut shapes = self.write();
        if shapes.refused.insert(handle.clone(), refusal).is_none() {
            shapes.refused_order.push_back(handle.clone());
        }
        while shapes.refused_order.len() > REFUSED_MAX {
            if let Some(oldest) = shapes.refused_order.pop_front() {
                shapes.refused.remove(&oldest);
            }
        }
    }

    /// Why the shape with this handle was removed, if its snapshot was refused.
    pub fn refusal(&self, handle: &ShapeHandle) -> Option<SnapshotRefusal> {
        self.read().refused.get(handle).cloned()
    }

    /// The live shape with this handle.
    pub fn by_handle(&self, handle: &ShapeHandle) -> Option<ShapeInfo> {
        let shapes = self.read();
        shapes.by_handle.get(handle).map(|entry| entry.info.clone())
    }

    /// The live shape for a definition.
    pub fn by_definition(&self, definition: &ShapeDefinition) -> Option<ShapeInfo> {
        let shapes = self.read();
        let handle = shapes.by_definition.get(definition)?;
        shapes.by_handle.get(handle).map(|entry| entry.info.clone())
    }

    /// Number of live shapes.
    pub fn len(&self) -> usize {
        self.read().by_handle.len()
    }

    /// Whether there are no live shapes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Publishes readiness and progress (only wakes waiters on change).
    pub fn publish(&self, next: ReadState) {
        self.state.publish_if(|state| {
            let changed = *state != next;
            *state = next;
            changed
        });
    }

    /// Records the `flush` position last acknowledged to Postgres.
    pub fn set_acknowledged_lsn(&self, lsn: Lsn) {
        self.acknowledged_lsn.store(lsn.as_u64(), Ordering::Relaxed);
    }

    /// Records what replication delivered.
    pub fn set_ingest(&self, ingest: Ingest) {
        *lock(&self.ingest) = ingest;
    }

    /// What replication delivered since start.
    pub fn ingest(&self) -> Ingest {
        *lock(&self.ingest)
    }

    /// The `flush` position last acknowledged to Postgres (0 before the first).
    pub fn acknowledged_lsn(&self) -> Lsn {
        Lsn(self.acknowledged_lsn.load(Ordering::Relaxed))
    }

    /// The current readiness and progress, both from the same publish.
    pub fn state(&self) -> ReadState {
        *self.state.lock()
    }

    /// Resolves with the first published state (the current one included) that is `ready`.
    pub async fn wait_for(&self, ready: impl Fn(&ReadState) -> bool) -> ReadState {
        loop {
            // Subscribed before the check: a publish after it wakes the wait below.
            let subscription = self.state.subscribe();
            let state = self.state();
            if ready(&state) {
                return state;
            }
            self.state.changed(subscription).await;
        }
    }

    /// The tick of a use happening now: above every tick handed out before.
    fn next_tick(&self) -> UseTick {
        UseTick(self.use_clock.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Shapes> {
        // A poisoned lock means a writer panicked mid-update; the maps are still coherent
        // (each update is a pair of inserts/removes), so keep serving.
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Shapes> {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Only an `Option` of plain data behind it: a panic elsewhere leaves it consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn active_at(lsn: u64) -> ReadState {
        ReadState {
            health: Health::Active,
            durable_lsn: Lsn(lsn),
        }
    }

    #[tokio::test]
    async fn wait_for_resolves_with_the_first_ready_state_published() {
        let registry = Registry::new();
        let waiting = ReadState {
            health: Health::Waiting,
            durable_lsn: Lsn(7),
        };
        let wait = registry.wait_for(|s| s.health == Health::Active);
        let publisher = async {
            tokio::task::yield_now().await;
            registry.publish(waiting);
            tokio::task::yield_now().await;
            registry.publish(active_at(9));
        };
        let (state, ()) = tokio::join!(wait, publisher);
        assert_eq!(state, active_at(9));
        assert_eq!(registry.state(), active_at(9));
    }

    #[test]
    fn refusals_are_kept_per_handle_survive_a_reload_and_the_oldest_are_forgotten_first() {
        let registry = Registry::new();
        let refusal = |n: usize| SnapshotRefusal {
            kind: ampere_core::ports::RefusalKind::Privilege,
            message: format!("refusal {n}"),
        };
        let handle = |n: usize| ShapeHandle::from_string(format!("{n}-1"));
        registry.refuse(&handle(0), refusal(0));
        registry.replace_all(Vec::new());
        assert_eq!(registry.refusal(&handle(0)), Some(refusal(0)));
        assert_eq!(registry.refusal(&handle(1)), None);
        for n in 1..=REFUSED_MAX {
            registry.refuse(&handle(n), refusal(n));
        }
        assert_eq!(registry.refusal(&handle(0)), None, "the oldest went first");
        assert_eq!(registry.refusal(&handle(1)), Some(refusal(1)));
        assert_eq!(
            registry.refusal(&handle(REFUSED_MAX)),
            Some(refusal(REFUSED_MAX))
        );
    }

    fn info(n: u64) -> ShapeInfo {
        use ampere_core::pgoutput::Oid;
        use ampere_core::shape::{LogMode, RelationName, ServerVersion, TableSchema};
        let relation = RelationName {
            schema: "public".to_owned(),
            table: format!("t{n}"),
        };
        ShapeInfo {
            handle: ShapeHandle::from_string(format!("{n}-{n}")),
            definition: ShapeDefinition {
                relation: relation.clone(),
                columns: None,
                replica: Default::default(),
                where_clause: None,
                log: LogMode::Full,
            },
            schema: Arc::new(TableSchema {
                server_version: ServerVersion::PG_15,
                oid: Oid(1),
                relation,
                columns: Vec::new(),
            }),
        }
    }

    fn last_use(registry: &Registry, n: u64) -> UseTick {
        let handle = info(n).handle;
        let uses = registry.uses();
        let found = uses.iter().find(|(h, _)| *h == handle);
        found.map(|(_, tick)| *tick).expect("a live shape")
    }

    #[test]
    fn creation_and_each_use_make_a_shape_the_most_recently_used() {
        let registry = Registry::new();
        registry.insert(info(1));
        registry.insert(info(2));
        assert!(last_use(&registry, 1) < last_use(&registry, 2));
        registry.record_use(&info(1).handle);
        assert!(last_use(&registry, 1) > last_use(&registry, 2));
        registry.record_use(&info(9).handle); // no such shape: nothing happens
        assert_eq!(registry.uses().len(), 2);
        registry.remove(&info(1).handle);
        registry.record_use(&info(1).handle);
        let handles: Vec<ShapeHandle> = registry.uses().into_iter().map(|(h, _)| h).collect();
        assert_eq!(handles, [info(2).handle]);
    }

    #[test]
    fn a_reload_keeps_the_last_use_of_known_shapes_and_new_ones_count_as_never_used() {
        let registry = Registry::new();
        registry.insert(info(1));
        registry.record_use(&info(1).handle);
        let used = last_use(&registry, 1);
        registry.replace_all([info(1), info(2)]);
        assert_eq!(last_use(&registry, 1), used);
        assert_eq!(last_use(&registry, 2), UseTick::NEVER);
        assert!(registry.by_definition(&info(2).definition).is_some());
    }

    #[tokio::test]
    async fn created_resolves_once_a_shape_is_created_even_if_created_before_the_wait() {
        let registry = Registry::new();
        registry.replace_all([info(1)]);
        let reload = tokio::time::timeout(Duration::from_millis(10), registry.created()).await;
        assert!(reload.is_err(), "a reload creates nothing");
        registry.insert(info(2));
        tokio::time::timeout(Duration::from_secs(5), registry.created())
            .await
            .expect("the creation before the wait is seen");
    }

    #[tokio::test]
    async fn wait_for_returns_at_once_when_already_ready() {
        let registry = Registry::new();
        registry.publish(active_at(3));
        let state = registry.wait_for(|s| s.health == Health::Active).await;
        assert_eq!(state, active_at(3));
    }
}
