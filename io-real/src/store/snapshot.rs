//! Snapshot chunks: `snapshot/<i>.json`, each durable before it is served, and the
//! `snapshot/complete` marker written last.
//!
//! The marker lists every chunk as `<entries> <bytes>`, so boot reads no chunk bodies. A
//! snapshot without a marker cannot be resumed (its `REPEATABLE READ` transaction is gone):
//! recovery loads none of its chunks and the core discards the shape.

use std::fs::{self, File};
use std::future::Future;
use std::io::{self, Write as _};
use std::path::Path;
use std::sync::Arc;

use ampere_core::chunk::count_entries;
use ampere_core::ports::SnapshotWriter;
use ampere_core::shape::ShapeHandle;

use super::fsutil::{io_err, parent, run_blocking, sync_dir};
use super::shape::{SnapshotChunk, SnapshotState};
use super::{layout, FileStore, StoreError};

/// First line of the completion marker.
const MARKER_HEADER: &str = "ampere-snapshot-complete v1";

/// Writes one shape's snapshot chunks (from [`ampere_core::ports::ShapeLogStore::snapshot_writer`]).
/// One writer per shape; chunks go in order `0, 1, …`. A follower's writer refuses every call
/// with [`StoreError::ReadOnly`]; each chunk and the marker re-read the storage lease first
/// and fail with [`StoreError::Fenced`], writing nothing, once another instance took it.
pub struct FileSnapshotWriter {
    store: FileStore,
    handle: ShapeHandle,
}

impl FileSnapshotWriter {
    pub(super) fn new(store: FileStore, handle: ShapeHandle) -> Self {
        Self { store, handle }
    }
}

impl SnapshotWriter for FileSnapshotWriter {
    type Error = StoreError;

    fn write_chunk(
        &mut self,
        index: u64,
        body: String,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let store = self.store.clone();
        let handle = self.handle.clone();
        async move {
            let shape = store.inner.writable_shape(&handle)?;
            check_next_chunk(&shape.state().snapshot, &handle, index)?;
            let entries = count_entries(body.as_bytes());
            let bytes = body.len() as u64;
            let path = shape.snapshot_chunk_path(index);
            let inner = Arc::clone(&store.inner);
            run_blocking(move || {
                inner.check_lease()?;
                write_durably(&path, body.as_bytes())
            })
            .await?;
            shape.publish(|state| {
                check_next_chunk(&state.snapshot, &handle, index)?;
                state.snapshot.chunks.push(SnapshotChunk { entries, bytes });
                Ok(())
            })
        }
    }

    async fn finish(self) -> Result<(), StoreError> {
        let shape = self.store.inner.writable_shape(&self.handle)?;
        let marker = {
            let state = shape.state();
            if state.snapshot.chunks.is_empty() {
                return Err(StoreError::SnapshotEmpty {
                    handle: self.handle.clone(),
                });
            }
            if state.snapshot.complete {
                return Ok(()); // Already durable: finishing twice changes nothing.
            }
            marker_text(&state.snapshot.chunks)
        };
        let path = shape
            .dir
            .join(layout::SNAPSHOT_DIR)
            .join(layout::SNAPSHOT_MARKER);
        let inner = Arc::clone(&self.store.inner);
        run_blocking(move || {
            inner.check_lease()?;
            write_marker(&path, &marker)
        })
        .await?;
        shape.publish(|state| state.snapshot.complete = true);
        Ok(())
    }
}

fn check_next_chunk(
    snapshot: &SnapshotState,
    handle: &ShapeHandle,
    index: u64,
) -> Result<(), StoreError> {
    let expected = (!snapshot.complete).then_some(snapshot.chunks.len() as u64);
    if expected == Some(index) {
        return Ok(());
    }
    Err(StoreError::SnapshotChunkOutOfOrder {
        handle: handle.clone(),
        index,
        expected,
    })
}

/// Loads a shape's snapshot state from its directory at recovery.
pub(super) fn load(shape_dir: &Path) -> Result<SnapshotState, StoreError> {
    let marker_path = shape_dir
        .join(layout::SNAPSHOT_DIR)
        .join(layout::SNAPSHOT_MARKER);
    let text = match fs::read_to_string(&marker_path) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(SnapshotState::default()),
        Err(err) => return Err(io_err("read", &marker_path)(err)),
    };
    let corrupt = |detail| StoreError::Corrupt {
        path: marker_path.clone(),
        detail,
    };
    let chunks = parse_marker(&text).ok_or_else(|| corrupt("unreadable snapshot marker"))?;
    for (i, chunk) in chunks.iter().enumerate() {
        let path = layout::snapshot_chunk_path(shape_dir, i as u64);
        let len = fs::metadata(&path).map_err(io_err("stat", &path))?.len();
        if len != chunk.bytes {
            return Err(corrupt("a snapshot chunk's size differs from the marker"));
        }
    }
    Ok(SnapshotState {
        chunks,
        complete: true,
    })
}

fn marker_text(chunks: &[SnapshotChunk]) -> String {
    let mut text = format!("{MARKER_HEADER}\n");
    for chunk in chunks {
        text.push_str(&format!("{} {}\n", chunk.entries, chunk.bytes));
    }
    text
}

fn parse_marker(text: &str) -> Option<Vec<SnapshotChunk>> {
    let mut lines = text.lines();
    if lines.next()? != MARKER_HEADER {
        return None;
    }
    let chunks = lines
        .map(|line| {
            let (entries, bytes) = line.split_once(' ')?;
            Some(SnapshotChunk {
                entries: entries.parse().ok()?,
                bytes: bytes.parse().ok()?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    (!chunks.is_empty()).then_some(chunks)
}

/// Creates (or replaces) `path` with `body`, `fdatasync`s it and its directory entry.
fn write_durably(path: &Path, body: &[u8]) -> Result<(), StoreError> {
    let mut file = File::create(path).map_err(io_err("create", path))?;
    file.write_all(body).map_err(io_err("write", path))?;
    file.sync_data().map_err(io_err("fdatasync", path))?;
    sync_dir(&parent(path))
}

/// Writes the marker atomically: a reader (or a crash) sees the whole marker or none.
fn write_marker(path: &Path, text: &str) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    write_durably(&tmp, text.as_bytes())?;
    fs::rename(&tmp, path).map_err(io_err("rename into place", path))?;
    sync_dir(&parent(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trips_and_rejects_garbage() {
        let chunks = vec![
            SnapshotChunk {
                entries: 3,
                bytes: 120,
            },
            SnapshotChunk {
                entries: 1,
                bytes: 80,
            },
        ];
        assert_eq!(parse_marker(&marker_text(&chunks)), Some(chunks));
        assert_eq!(parse_marker("ampere-snapshot-complete v1\n"), None);
        assert_eq!(parse_marker("v0\n1 2\n"), None);
        assert_eq!(parse_marker("ampere-snapshot-complete v1\n1 x\n"), None);
    }
}
