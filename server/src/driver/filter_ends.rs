//! The rows that record a shape's snapshot filtering as ended (`snapshot_filter_done`),
//! written off the driver's path.
//!
//! A flush that makes many shapes' filter ends durable at once (2,000 shapes created
//! together, then one update) makes as many rows and `shape.json` copies due; written in
//! place, they held the driver for 1.5 s, so the next transaction's acknowledgement waited
//! behind them. Nothing waits for these rows: the status that confirms the flush needs only
//! the logs durable (RP-2), and a row still saying "filtering" after a crash only makes the
//! restarted instance test later transactions against a snapshot none of them can be
//! visible in. So they are written in the background, one batch at a time in the order the
//! core issued them; rows arriving while a batch runs form the next batch.
//!
//! A batch is a task of its own (`tokio::spawn`), not a future the driver polls between its
//! other work: the driver also awaits metadata writes in place (a new shape's row), and one
//! of those waiting for a lock the half-polled batch held, while the driver could not poll
//! that batch, deadlocked the instance (the simulation found it at once: an instance that lost
//! the lock still reported itself active 75 s later).
//!
//! Order still matters for one shape: a late row must never bring back a shape the core
//! removed (an `INSERT OR REPLACE` after the `DELETE`). The driver therefore settles the
//! lane ([`FilterEndLane::settle`]) before every other metadata write that could touch the
//! same rows — a removal, the replication identity (which follows a purge), a reload of
//! storage — and at shutdown.

use ampere_core::ports::{MetadataStore, StoredShape};
use tokio::task::{JoinError, JoinHandle};

/// The background writer of filter-end rows: at most one batch running, the rest queued.
pub(super) struct FilterEndLane<E> {
    running: Option<JoinHandle<Result<(), E>>>,
    queued: Vec<StoredShape>,
}

impl<E: Send + 'static> FilterEndLane<E> {
    pub(super) const fn new() -> Self {
        Self {
            running: None,
            queued: Vec::new(),
        }
    }

    /// Queues `shapes` behind what is queued already; starts a batch if none is running.
    pub(super) fn push<M>(&mut self, meta: &M, shapes: impl IntoIterator<Item = StoredShape>)
    where
        M: MetadataStore<Error = E>,
    {
        self.queued.extend(shapes);
        self.start_next(meta);
    }

    /// Starts the queued rows as one batch, unless a batch is running or nothing is queued.
    pub(super) fn start_next<M>(&mut self, meta: &M)
    where
        M: MetadataStore<Error = E>,
    {
        if self.running.is_some() || self.queued.is_empty() {
            return;
        }
        let batch = last_per_handle(std::mem::take(&mut self.queued));
        self.running = Some(tokio::spawn(meta.put_shapes(batch)));
    }

    /// The running batch's outcome once it finishes; never, while none runs. Cancel-safe:
    /// dropped before it finishes, the batch runs on and is reported at the next call.
    pub(super) async fn finished(&mut self) -> Result<(), E> {
        let Some(running) = self.running.as_mut() else {
            return std::future::pending().await;
        };
        let joined = running.await;
        self.running = None;
        outcome(joined).await
    }

    /// Writes everything queued, in order: the running batch, then the rest as one batch.
    /// The outcome of each batch that finished here.
    pub(super) async fn settle<M>(&mut self, meta: &M) -> Vec<Result<(), E>>
    where
        M: MetadataStore<Error = E>,
    {
        let mut outcomes = Vec::new();
        loop {
            if let Some(running) = self.running.take() {
                outcomes.push(outcome(running.await).await);
            }
            if self.queued.is_empty() {
                return outcomes;
            }
            self.start_next(meta);
        }
    }

    /// Whether nothing is running or queued.
    #[cfg(test)]
    fn is_idle(&self) -> bool {
        self.running.is_none() && self.queued.is_empty()
    }
}

/// A batch task's outcome: its own, or its panic carried on. A task is cancelled only when
/// the runtime shuts down, which stops the driver with it: that never resolves.
async fn outcome<E>(joined: Result<Result<(), E>, JoinError>) -> Result<(), E> {
    match joined {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => std::future::pending().await,
    }
}

/// `shapes` with only the last row of each handle, in the order of those last rows: one
/// batch writes each shape's row and `shape.json` once.
fn last_per_handle(shapes: Vec<StoredShape>) -> Vec<StoredShape> {
    let mut seen = std::collections::HashSet::with_capacity(shapes.len());
    let mut kept: Vec<StoredShape> = shapes
        .into_iter()
        .rev()
        .filter(|shape| seen.insert(shape.handle.clone()))
        .collect();
    kept.reverse();
    kept
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use ampere_core::pgoutput::Oid;
    use ampere_core::ports::{StorageError, StorageIdentity, StoredShape};
    use ampere_core::shape::{
        HandleStamp, LogMode, RelationName, Replica, ServerVersion, ShapeDefinition, ShapeHandle,
        TableSchema,
    };

    use super::*;

    /// The recording store never fails; its error type only has to exist.
    #[derive(Debug, thiserror::Error)]
    #[error("write failed")]
    struct WriteFailed;

    impl StorageError for WriteFailed {
        fn is_fenced(&self) -> bool {
            false
        }
    }

    /// A metadata store recording each `put_shapes` batch; writes finish when polled.
    #[derive(Clone, Default)]
    struct Recording {
        batches: Arc<Mutex<Vec<Vec<String>>>>,
    }

    impl Recording {
        fn batches(&self) -> Vec<Vec<String>> {
            self.batches.lock().expect("lock").clone()
        }
    }

    impl MetadataStore for Recording {
        type Error = WriteFailed;

        fn load(
            &self,
        ) -> impl std::future::Future<Output = Result<(Vec<StoredShape>, HandleStamp), Self::Error>>
               + Send
               + 'static {
            std::future::ready(Ok((Vec::new(), HandleStamp::default())))
        }

        fn load_identity(
            &self,
        ) -> impl std::future::Future<Output = Result<Option<StorageIdentity>, Self::Error>>
               + Send
               + 'static {
            std::future::ready(Ok(None))
        }

        fn put_identity(
            &self,
            _identity: StorageIdentity,
        ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send + 'static {
            std::future::ready(Ok(()))
        }

        fn put_shape(
            &self,
            shape: StoredShape,
            _stamp: HandleStamp,
        ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send + 'static {
            self.put_shapes(vec![shape])
        }

        fn put_shapes(
            &self,
            shapes: Vec<StoredShape>,
        ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send + 'static {
            let batches = Arc::clone(&self.batches);
            async move {
                let handles = shapes.iter().map(|s| s.handle.as_str().to_owned());
                batches.lock().expect("lock").push(handles.collect());
                Ok(())
            }
        }

        fn delete_shape(
            &self,
            _handle: &ShapeHandle,
        ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send + 'static {
            std::future::ready(Ok(()))
        }
    }

    /// A row whose filtering ended, for the shape `handle`.
    fn row(handle: &str) -> StoredShape {
        let relation = RelationName {
            schema: "public".into(),
            table: "items".into(),
        };
        StoredShape {
            handle: ShapeHandle::from_string(handle.to_owned()),
            definition: ShapeDefinition {
                relation: relation.clone(),
                columns: None,
                replica: Replica::Default,
                where_clause: None,
                log: LogMode::Full,
            },
            schema: TableSchema {
                server_version: ServerVersion::PG_15,
                oid: Oid(16_384),
                relation,
                columns: Vec::new(),
            },
            snapshot: None,
            snapshot_filter_done: true,
        }
    }

    #[tokio::test]
    async fn rows_queued_while_a_batch_runs_are_written_after_it_as_one_batch() {
        let meta = Recording::default();
        let mut lane = FilterEndLane::new();
        lane.push(&meta, [row("a-1"), row("b-2")]);
        lane.push(&meta, [row("c-3")]);
        lane.push(&meta, [row("d-4")]);
        lane.finished().await.expect("first batch");
        assert_eq!(meta.batches(), vec![vec!["a-1", "b-2"]]);
        lane.start_next(&meta);
        lane.finished().await.expect("second batch");
        assert_eq!(meta.batches()[1], vec!["c-3", "d-4"]);
        assert!(lane.is_idle());
    }

    #[tokio::test]
    async fn a_batch_is_written_while_the_driver_awaits_other_work_and_never_polls_the_lane() {
        let meta = Recording::default();
        let mut lane = FilterEndLane::new();
        lane.push(&meta, [row("a-1")]);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(meta.batches(), vec![vec!["a-1"]]);
        lane.finished().await.expect("batch");
        assert!(lane.is_idle());
    }

    #[tokio::test]
    async fn settling_writes_everything_queued_in_the_order_it_was_queued() {
        let meta = Recording::default();
        let mut lane = FilterEndLane::new();
        lane.push(&meta, [row("a-1")]);
        lane.push(&meta, [row("b-2"), row("a-1")]);
        let outcomes = lane.settle(&meta).await;
        assert_eq!(outcomes.len(), 2);
        assert!(outcomes.iter().all(Result::is_ok));
        assert_eq!(meta.batches(), vec![vec!["a-1"], vec!["b-2", "a-1"]]);
        assert!(lane.is_idle());
        assert!(
            lane.settle(&meta).await.is_empty(),
            "an idle lane settles at once"
        );
    }

    #[tokio::test]
    async fn a_batch_keeps_only_the_last_row_of_each_shape() {
        let meta = Recording::default();
        let mut lane = FilterEndLane::new();
        lane.queued = vec![row("a-1"), row("b-2"), row("a-1"), row("c-3")];
        lane.start_next(&meta);
        lane.finished().await.expect("batch");
        assert_eq!(meta.batches(), vec![vec!["b-2", "a-1", "c-3"]]);
    }
}
