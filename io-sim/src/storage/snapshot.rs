//! [`SimSnapshotWriter`]: a shape's snapshot chunks, each durable (after the fsync latency)
//! before it is served, then the completion marker.

use std::future::Future;

use ampere_core::ports::SnapshotWriter;
use ampere_core::shape::ShapeHandle;

use super::durable::Write;
use super::error::SimStoreError;
use super::store::SimStore;

/// Writes one shape's snapshot chunks (from `ShapeLogStore::snapshot_writer`). Chunks go in
/// order `0, 1, …`. A follower's writer refuses every call with
/// [`SimStoreError::ReadOnly`].
pub struct SimSnapshotWriter {
    store: SimStore,
    handle: ShapeHandle,
}

impl SimSnapshotWriter {
    pub(super) fn new(store: SimStore, handle: ShapeHandle) -> Self {
        Self { store, handle }
    }

    /// The chunk this store expects next (`None` once complete), as its view sees it.
    fn expected_chunk(&self) -> Result<Option<u64>, SimStoreError> {
        let inner = &self.store.inner;
        let kind = inner.writable_kind(&self.handle)?;
        let visible = inner.disk.with_shape(self.handle.as_str(), |shape| {
            let view = kind.snapshot(shape);
            (!view.complete).then_some(view.chunks.len() as u64)
        });
        visible.ok_or_else(|| SimStoreError::UnknownShape {
            handle: self.handle.clone(),
        })
    }
}

impl SnapshotWriter for SimSnapshotWriter {
    type Error = SimStoreError;

    fn write_chunk(
        &mut self,
        index: u64,
        body: String,
    ) -> impl Future<Output = Result<(), SimStoreError>> + Send {
        let expected = self.expected_chunk();
        let inner = std::sync::Arc::clone(&self.store.inner);
        let handle = self.handle.clone();
        async move {
            let expected = expected?;
            if expected != Some(index) {
                return Err(SimStoreError::SnapshotChunkOutOfOrder {
                    handle,
                    index,
                    expected,
                });
            }
            let write = Write::SnapshotChunk {
                handle: handle.as_str().to_owned(),
                index,
                body,
            };
            inner
                .disk
                .write(&inner.writer, write)
                .await
                .map_err(|e| inner.write_error(e, "write snapshot chunk", Some(&handle)))?;
            inner.adopt(&handle);
            Ok(())
        }
    }

    fn finish(self) -> impl Future<Output = Result<(), SimStoreError>> + Send {
        let state = self
            .store
            .inner
            .writable_kind(&self.handle)
            .and_then(|kind| {
                self.store
                    .inner
                    .disk
                    .with_shape(self.handle.as_str(), |shape| {
                        let view = kind.snapshot(shape);
                        (view.chunks.is_empty(), view.complete)
                    })
                    .ok_or_else(|| SimStoreError::UnknownShape {
                        handle: self.handle.clone(),
                    })
            });
        async move {
            let (is_empty, is_complete) = state?;
            if is_empty {
                return Err(SimStoreError::SnapshotEmpty {
                    handle: self.handle,
                });
            }
            if is_complete {
                return Ok(()); // Already durable: finishing twice changes nothing.
            }
            let inner = &self.store.inner;
            let write = Write::SnapshotComplete {
                handle: self.handle.as_str().to_owned(),
            };
            inner
                .disk
                .write(&inner.writer, write)
                .await
                .map_err(|e| inner.write_error(e, "finish snapshot", Some(&self.handle)))
        }
    }
}
