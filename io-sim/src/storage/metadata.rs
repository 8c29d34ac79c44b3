//! [`SimMetadata`]: the `MetadataStore` port on a [`SimDisk`], a model of io-real's
//! `StandbyMetadata` over SQLite (turmoil cannot intercept SQLite's file I/O).
//!
//! Read-only until promoted (RO-4). Each write is one transaction, durable once its future
//! resolves (after the disk's fsync latency); a crash before that loses it whole. Writes are
//! serialised in call order, as SQLite's one writer connection does. `put_shape` also writes
//! the shape's own copy of its row (`shape.json`, MD-3) after the row; `promote` restores
//! rows from those copies for shapes that have none and raises the stamp high-water mark to
//! the largest stamp among shape directories, so no handle is issued twice even when a row
//! write was lost.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ampere_core::ports::{MetadataStore, StorageIdentity, StoredShape};
use ampere_core::shape::{HandleStamp, ShapeHandle};

use super::disk::SimDisk;
use super::durable::{Durable, Write};
use super::error::SimMetadataError;

/// Shape metadata on a [`SimDisk`], written as one `writer`. Cheap to clone: clones share
/// one handle (and see a promotion).
#[derive(Clone)]
pub struct SimMetadata {
    inner: Arc<MetaInner>,
}

struct MetaInner {
    disk: SimDisk,
    writer: String,
    /// Set by `promote`, never cleared.
    is_writer: AtomicBool,
    /// One writer at a time, in call order (SQLite's `BEGIN IMMEDIATE` on one connection).
    serial: tokio::sync::Mutex<()>,
}

impl SimMetadata {
    /// Opens the metadata on `disk` read-only, writing as `writer` once promoted.
    pub fn open(disk: SimDisk, writer: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(MetaInner {
                disk,
                writer: writer.into(),
                is_writer: AtomicBool::new(false),
                serial: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Whether writes are refused (not promoted yet).
    pub fn is_read_only(&self) -> bool {
        !self.inner.is_writer.load(Ordering::SeqCst)
    }

    /// The name this handle writes as.
    pub fn writer(&self) -> &str {
        &self.inner.writer
    }

    /// Runs `writes` as one serialised sequence of transactions; refused (without touching
    /// the disk) unless promoted. Checked when called, as io-real does.
    fn write(
        &self,
        writes: Vec<(Write, &'static str)>,
    ) -> impl Future<Output = Result<(), SimMetadataError>> + Send + 'static {
        let allowed = if self.is_read_only() {
            Err(SimMetadataError::ReadOnly {
                writer: self.inner.writer.clone(),
            })
        } else {
            Ok(())
        };
        let inner = Arc::clone(&self.inner);
        async move {
            allowed?;
            let _serial = inner.serial.lock().await;
            inner.commit(writes).await
        }
    }

    /// Reads durable state once the disk is not stalled.
    fn read<T: Send + 'static>(
        &self,
        read: fn(&Durable) -> T,
    ) -> impl Future<Output = Result<T, SimMetadataError>> + Send + 'static {
        let disk = self.inner.disk.clone();
        async move {
            disk.wait_stall().await;
            Ok(disk.with_durable(read))
        }
    }
}

impl MetaInner {
    async fn commit(&self, writes: Vec<(Write, &'static str)>) -> Result<(), SimMetadataError> {
        for (write, op) in writes {
            if let Write::DescriptionPut { shape } = &write {
                // io-real writes `shape.json` only into a directory that exists.
                let handle = shape.handle.as_str();
                if self.disk.with_shape(handle, |_| ()).is_none() {
                    continue;
                }
            }
            self.disk
                .write(&self.writer, write)
                .await
                .map_err(|e| SimMetadataError::from_write(e, &self.writer, op))?;
        }
        Ok(())
    }

    /// Restores rows from shape descriptions and raises the stamp above every shape
    /// directory's (io-real's `StandbyMetadata::rebuild`); writes only if that changes
    /// something.
    async fn rebuild(&self) -> Result<(), SimMetadataError> {
        let (rows, min_stamp, stamp) = self.disk.with_durable(|d| {
            let rows: Vec<StoredShape> = d
                .shapes
                .iter()
                .filter(|(handle, _)| !d.metadata.rows.contains_key(*handle))
                .filter_map(|(handle, shape)| {
                    let row = shape.description.clone()?;
                    (row.handle.as_str() == handle).then_some(row)
                })
                .collect();
            let min_stamp = d
                .shapes
                .keys()
                .filter_map(|handle| handle_stamp(handle))
                .max()
                .unwrap_or_default();
            (rows, min_stamp, d.metadata.stamp)
        });
        if rows.is_empty() && min_stamp <= stamp {
            return Ok(());
        }
        for row in &rows {
            tracing::warn!(handle = %row.handle, "rebuilt shape metadata row from its shape directory");
        }
        let write = Write::MetadataRebuild { rows, min_stamp };
        self.commit(vec![(write, "rebuild metadata")]).await
    }
}

impl MetadataStore for SimMetadata {
    type Error = SimMetadataError;

    /// Rows ordered by handle, and the stamp high-water mark (zero before any write).
    fn load(
        &self,
    ) -> impl Future<Output = Result<(Vec<StoredShape>, HandleStamp), SimMetadataError>> + Send + 'static
    {
        self.read(|d| {
            let rows = d.metadata.rows.values().cloned().collect();
            (rows, d.metadata.stamp)
        })
    }

    /// Switches to writing (every clone), then repairs the index from the shape
    /// directories (module docs) — on every call, as io-real does.
    fn promote(&self) -> impl Future<Output = Result<(), SimMetadataError>> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        async move {
            let _serial = inner.serial.lock().await;
            // Adopt the lease the store of this process took (or take it if metadata is
            // promoted first): one generation per writer.
            if !inner.disk.holds_lease(&inner.writer) {
                if inner.disk.is_full() {
                    let writer = inner.writer.clone();
                    let op = "take the storage lease";
                    return Err(SimMetadataError::Full { writer, op });
                }
                inner.disk.acquire_lease(&inner.writer);
            }
            inner.is_writer.store(true, Ordering::SeqCst);
            inner.rebuild().await
        }
    }

    fn load_identity(
        &self,
    ) -> impl Future<Output = Result<Option<StorageIdentity>, SimMetadataError>> + Send + 'static
    {
        self.read(|d| d.metadata.identity.clone())
    }

    fn put_identity(
        &self,
        identity: StorageIdentity,
    ) -> impl Future<Output = Result<(), SimMetadataError>> + Send + 'static {
        self.write(vec![(Write::IdentityPut { identity }, "put identity")])
    }

    /// The row (raising the stamp high-water mark, never lowering it), then the shape's own
    /// copy of it if its directory exists.
    fn put_shape(
        &self,
        shape: StoredShape,
        stamp: HandleStamp,
    ) -> impl Future<Output = Result<(), SimMetadataError>> + Send + 'static {
        let row = Write::MetadataPut {
            shape: shape.clone(),
            stamp,
        };
        let description = Write::DescriptionPut { shape };
        self.write(vec![
            (row, "put shape"),
            (description, "write shape description"),
        ])
    }

    /// Each row (a transaction of its own here: a crash may keep any prefix, a superset of
    /// io-real's all-or-nothing), then each shape's own copy.
    fn put_shapes(
        &self,
        shapes: Vec<StoredShape>,
    ) -> impl Future<Output = Result<(), SimMetadataError>> + Send + 'static {
        let rows = shapes.iter().map(|shape| {
            let row = Write::MetadataPut {
                shape: shape.clone(),
                stamp: HandleStamp::default(),
            };
            (row, "put shape")
        });
        let descriptions = shapes.iter().map(|shape| {
            let description = Write::DescriptionPut {
                shape: shape.clone(),
            };
            (description, "write shape description")
        });
        self.write(rows.chain(descriptions).collect())
    }

    fn delete_shape(
        &self,
        handle: &ShapeHandle,
    ) -> impl Future<Output = Result<(), SimMetadataError>> + Send + 'static {
        let handle = handle.as_str().to_owned();
        self.write(vec![(Write::MetadataDelete { handle }, "delete shape")])
    }
}

/// The stamp of a minted handle `<hash>-<stamp>`.
fn handle_stamp(handle: &str) -> Option<HandleStamp> {
    let (_, stamp) = handle.rsplit_once('-')?;
    stamp.parse().ok().map(HandleStamp)
}
