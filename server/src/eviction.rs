//! `ELECTRIC_MAX_SHAPES`: beyond this many live shapes, the least recently used ones are
//! removed, and their clients get 409 must-refetch and sync again (protocol.md §6.8, rule 2).
//!
//! The core owns the shapes but not their use, which only the HTTP layer sees: it records each
//! shape request served into the read model ([`Registry::record_use`]). So the policy lives
//! here, between the two: [`Eviction::run`], a task beside the driver, compares the number of
//! live shapes with the limit after each shape creation ([`Registry::created`]) and every
//! [`CHECK_PERIOD`], and beyond it picks [`victims`] and deletes them one at a time through
//! the driver's request channel, as `DELETE /v1/shape` does: the core removes each as an
//! invalidated shape (log directory and metadata row gone, clients of the handle answered 409
//! pointing to a fresh handle, the handle never issued again). It does so only while the
//! instance is active, and the core refuses a deletion anywhere else (a standby never writes).
//!
//! Shapes loaded from storage were not used by this process: they rank as least recently used,
//! oldest first by handle stamp (stamps increase with creation, ID-2).

use std::cmp::Ordering;
use std::num::NonZeroUsize;
use std::time::Duration;

use ampere_core::instance::DeletionCause;
use ampere_core::ports::ShapeLogStore;
use ampere_core::shape::ShapeHandle;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::api::{DeleteShapeError, Health};
use crate::driver::Request;
use crate::metrics::Metrics;
use crate::registry::{Registry, UseTick};

/// How often the shape count is checked besides after each creation: it catches a limit
/// exceeded by storage loaded at promotion, and retries an eviction that failed.
pub const CHECK_PERIOD: Duration = Duration::from_secs(5);

/// A live shape as eviction weighs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The shape.
    pub handle: ShapeHandle,
    /// Its last use (creation or a request served).
    pub last_used: UseTick,
    /// Whether its snapshot is still being taken: such a shape is evicted only when idle ones
    /// do not bring the count down to the limit.
    pub is_snapshotting: bool,
}

/// The shapes to remove so that at most `max` of `live` remain: idle shapes before those
/// still snapshotting, each group least recently used first (ties: the older handle first).
/// The shape created last (the highest handle stamp) is never one of them: a check runs right
/// after each creation, when that shape's client may not have its first answer yet. So with
/// every shape busy, the oldest busy ones go and the one just created is still served.
pub fn victims(live: &[Candidate], max: NonZeroUsize) -> Vec<ShapeHandle> {
    let excess = live.len().saturating_sub(max.get());
    if excess == 0 {
        return Vec::new();
    }
    let Some(newest) = live.iter().max_by(|a, b| by_creation(a, b)) else {
        return Vec::new(); // Unreachable: `excess` > 0 means some shape is live.
    };
    let mut eligible: Vec<&Candidate> = live.iter().filter(|c| c.handle != newest.handle).collect();
    eligible.sort_by(|a, b| {
        a.is_snapshotting
            .cmp(&b.is_snapshotting)
            .then_with(|| by_last_use(a, b))
    });
    // `max` ≥ 1, so `excess` ≤ `live.len() - 1` = `eligible.len()`: the limit is always met.
    eligible
        .into_iter()
        .take(excess)
        .map(|c| c.handle.clone())
        .collect()
}

/// Least recently used first; among shapes of one tick (loaded and never used), the older
/// handle first; the handle text last, so the order is total.
fn by_last_use(a: &Candidate, b: &Candidate) -> Ordering {
    (a.last_used, a.handle.stamp())
        .cmp(&(b.last_used, b.handle.stamp()))
        .then_with(|| a.handle.cmp(&b.handle))
}

/// Created first first: by handle stamp (stamps increase with creation, ID-2), then as
/// [`by_last_use`] for handles without one.
fn by_creation(a: &Candidate, b: &Candidate) -> Ordering {
    a.handle
        .stamp()
        .cmp(&b.handle.stamp())
        .then_with(|| by_last_use(a, b))
}

/// The eviction task's parts ([`Eviction::run`]).
#[derive(Debug)]
pub struct Eviction<S> {
    /// `ELECTRIC_MAX_SHAPES`.
    pub max: NonZeroUsize,
    /// The read model: live shapes, their uses, readiness.
    pub registry: Registry,
    /// The shape-log store, which knows whose snapshot is still running.
    pub store: S,
    /// The driver's request channel, which deletions take.
    pub requests: mpsc::Sender<Request>,
    /// Where evictions are counted (`ampere_shapes_evicted_total`), if anywhere.
    pub metrics: Option<Metrics>,
}

/// The driver stopped: nothing is left to evict through.
#[derive(Debug, thiserror::Error)]
#[error("the driver stopped")]
struct DriverStopped;

impl<S: ShapeLogStore> Eviction<S> {
    /// Keeps the live shapes within [`Eviction::max`] while this instance is active: at once
    /// on becoming active, then after each shape creation and every [`CHECK_PERIOD`], until
    /// `shutdown` flips or the driver stops.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let rounds = async {
            loop {
                let active = |state: &crate::registry::ReadState| state.health == Health::Active;
                self.registry.wait_for(active).await;
                if self.evict_beyond_limit().await.is_err() {
                    return;
                }
                tokio::select! {
                    biased;
                    () = self.registry.created() => {}
                    () = tokio::time::sleep(CHECK_PERIOD) => {}
                }
            }
        };
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => {}
            () = rounds => {}
        }
    }

    /// One round: nothing while the count is within the limit; beyond it, the [`victims`],
    /// deleted one at a time (so shape creations and reads interleave with a long batch), and
    /// one log line for the batch. A deletion the core refuses (no longer active) or that
    /// fails to reach storage ends the round; the next one tries again.
    async fn evict_beyond_limit(&self) -> Result<(), DriverStopped> {
        if self.registry.len() <= self.max.get() {
            return Ok(());
        }
        let live: Vec<Candidate> = self
            .registry
            .uses()
            .into_iter()
            .map(|(handle, last_used)| Candidate {
                is_snapshotting: self
                    .store
                    .status(&handle)
                    .is_some_and(|status| !status.snapshot_complete),
                handle,
                last_used,
            })
            .collect();
        let mut evicted = 0_usize;
        for handle in victims(&live, self.max) {
            match self.delete(handle).await? {
                Ok(()) => {
                    evicted += 1;
                    if let Some(metrics) = &self.metrics {
                        metrics.shape_evicted();
                    }
                }
                // Removed meanwhile (invalidated, or deleted by a client).
                Err(DeleteShapeError::NotFound) => {}
                Err(DeleteShapeError::NotActive(_)) => break,
                Err(DeleteShapeError::Failed(message)) => {
                    warn!(error = %message, "evicting a shape failed; retrying later");
                    break;
                }
            }
        }
        if evicted > 0 {
            info!(
                evicted,
                max_shapes = self.max.get(),
                shapes = self.registry.len(),
                "evicted the least recently used shapes beyond ELECTRIC_MAX_SHAPES; their \
                 clients get 409 and sync again"
            );
        }
        Ok(())
    }

    /// Deletes one shape through the driver, as `DELETE /v1/shape` does; the core's answer.
    async fn delete(
        &self,
        handle: ShapeHandle,
    ) -> Result<Result<(), DeleteShapeError>, DriverStopped> {
        let (reply, answer) = oneshot::channel();
        let request = Request::DeleteShape {
            handle,
            cause: DeletionCause::Eviction,
            reply,
        };
        self.requests
            .send(request)
            .await
            .map_err(|_| DriverStopped)?;
        answer.await.map_err(|_| DriverStopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shape created at `stamp`, last used at `tick`.
    fn shape(stamp: u64, tick: u64) -> Candidate {
        Candidate {
            handle: ShapeHandle::from_string(format!("1234-{stamp}")),
            last_used: UseTick(tick),
            is_snapshotting: false,
        }
    }

    fn snapshotting(stamp: u64, tick: u64) -> Candidate {
        Candidate {
            is_snapshotting: true,
            ..shape(stamp, tick)
        }
    }

    fn max(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).expect("a limit above 0")
    }

    fn handles(candidates: &[&Candidate]) -> Vec<ShapeHandle> {
        candidates.iter().map(|c| c.handle.clone()).collect()
    }

    #[test]
    fn nothing_is_evicted_at_or_below_the_limit() {
        let live = [shape(1, 1), shape(2, 2), shape(3, 3)];
        assert!(victims(&live, max(3)).is_empty());
        assert!(victims(&live, max(10)).is_empty());
        assert!(victims(&[], max(1)).is_empty());
    }

    #[test]
    fn the_least_recently_read_shapes_are_evicted_first() {
        // A, B, C created in that order, then A read again: B is the least recently used.
        let (a, b, c, d) = (shape(1, 4), shape(2, 2), shape(3, 3), shape(4, 5));
        assert_eq!(
            victims(&[a.clone(), b.clone(), c.clone(), d.clone()], max(3)),
            handles(&[&b])
        );
        assert_eq!(
            victims(&[a, b.clone(), c.clone(), d], max(2)),
            handles(&[&b, &c])
        );
    }

    #[test]
    fn shapes_never_used_since_start_go_first_oldest_handle_first() {
        let (old, older, used, created) = (shape(20, 0), shape(10, 0), shape(5, 7), shape(30, 8));
        let live = [old.clone(), used, created, older.clone()];
        assert_eq!(victims(&live, max(2)), handles(&[&older, &old]));
    }

    #[test]
    fn idle_shapes_are_evicted_before_shapes_still_snapshotting() {
        let (busy_old, idle, newest) = (snapshotting(1, 1), shape(2, 2), shape(3, 3));
        let live = [busy_old.clone(), idle.clone(), newest];
        assert_eq!(victims(&live, max(2)), handles(&[&idle]));
        // Not enough idle shapes: the least recently used busy one goes too.
        assert_eq!(victims(&live, max(1)), handles(&[&idle, &busy_old]));
    }

    #[test]
    fn the_shape_created_last_is_never_evicted_even_when_every_shape_is_busy() {
        let (first, second) = (snapshotting(1, 1), snapshotting(2, 2));
        let just_created = snapshotting(3, 3);
        let live = [just_created.clone(), second.clone(), first.clone()];
        assert_eq!(victims(&live, max(1)), handles(&[&first, &second]));
        // Another shape read after the creation goes instead: its client has its answer.
        let read = shape(1, 9);
        assert_eq!(
            victims(&[read.clone(), just_created], max(1)),
            handles(&[&read])
        );
    }

    #[test]
    fn the_count_always_reaches_the_limit_and_no_shape_is_named_twice() {
        for n in 1..12_u64 {
            let live: Vec<Candidate> = (0..n)
                .map(|i| match i % 3 {
                    0 => snapshotting(i, (i * 7) % n),
                    _ => shape(i, (i * 5) % n),
                })
                .collect();
            for limit in 1..=13 {
                let chosen = victims(&live, max(limit));
                let excess = live.len().saturating_sub(limit);
                assert_eq!(chosen.len(), excess, "{n} shapes, limit {limit}");
                let mut unique = chosen.clone();
                unique.sort();
                unique.dedup();
                assert_eq!(unique.len(), chosen.len(), "{chosen:?}");
            }
        }
    }
}
