//! Shape metadata as an instance that may be a standby opens it: read-only until the lock is
//! held (RO-4), tolerant of a database the writer has not created yet (MD-4), and switched to
//! writing by [`MetadataStore::promote`].

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use ampere_core::ports::{MetadataStore, StorageIdentity, StoredShape};
use ampere_core::shape::{HandleStamp, ShapeHandle};

use crate::metadata::{MetadataError, MetadataOptions, SqliteMetadata, METADATA_FILE};

/// [`SqliteMetadata`] opened read-only, or not at all while the file does not exist yet.
#[derive(Clone)]
pub struct StandbyMetadata {
    dir: PathBuf,
    options: MetadataOptions,
    inner: Arc<Mutex<Option<SqliteMetadata>>>,
}

impl std::fmt::Debug for StandbyMetadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let is_open = self.current().is_some();
        f.debug_struct("StandbyMetadata")
            .field("dir", &self.dir)
            .field("is_open", &is_open)
            .finish()
    }
}

impl StandbyMetadata {
    /// Opens `<dir>/shapes.sqlite3` read-only if it exists. Blocking.
    pub fn open(dir: impl Into<PathBuf>, options: MetadataOptions) -> Result<Self, MetadataError> {
        let dir = dir.into();
        let inner = match SqliteMetadata::open_read_only(&dir, &options) {
            Ok(metadata) => Some(metadata),
            Err(MetadataError::NotCreatedYet { .. }) => None,
            Err(e) => return Err(e),
        };
        Ok(Self {
            dir,
            options,
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    /// The open handle, opening it read-only first if the writer has created it since.
    fn handle(&self) -> impl Future<Output = Result<Option<SqliteMetadata>, MetadataError>> {
        let this = self.clone();
        async move {
            if let Some(metadata) = this.current() {
                return Ok(Some(metadata));
            }
            let (dir, options) = (this.dir.clone(), this.options.clone());
            let opened =
                tokio::task::spawn_blocking(move || SqliteMetadata::open_read_only(&dir, &options))
                    .await
                    .map_err(|source| MetadataError::Worker { source })?;
            match opened {
                Ok(metadata) => Ok(Some(this.install(metadata))),
                Err(MetadataError::NotCreatedYet { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        }
    }

    fn current(&self) -> Option<SqliteMetadata> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Keeps the first handle installed (a concurrent open may have won).
    fn install(&self, metadata: SqliteMetadata) -> SqliteMetadata {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.get_or_insert(metadata).clone()
    }

    fn read_only(&self) -> MetadataError {
        MetadataError::ReadOnly {
            path: self.dir.join(METADATA_FILE),
        }
    }

    fn writer(&self) -> Result<SqliteMetadata, MetadataError> {
        self.current().ok_or_else(|| self.read_only())
    }
}

impl MetadataStore for StandbyMetadata {
    type Error = MetadataError;

    fn promote(&self) -> impl Future<Output = Result<(), MetadataError>> + Send + 'static {
        let this = self.clone();
        async move {
            if let Some(metadata) = this.current() {
                return metadata.promote(&this.options).await;
            }
            let (dir, options) = (this.dir.clone(), this.options.clone());
            let writer = tokio::task::spawn_blocking(move || SqliteMetadata::open(&dir, &options))
                .await
                .map_err(|source| MetadataError::Worker { source })??;
            let installed = this.install(writer);
            installed.promote(&this.options).await
        }
    }

    fn load(
        &self,
    ) -> impl Future<Output = Result<(Vec<StoredShape>, HandleStamp), MetadataError>> + Send + 'static
    {
        let handle = self.handle();
        async move {
            match handle.await? {
                Some(metadata) => metadata.load().await,
                None => Ok((Vec::new(), HandleStamp::default())),
            }
        }
    }

    fn load_identity(
        &self,
    ) -> impl Future<Output = Result<Option<StorageIdentity>, MetadataError>> + Send + 'static {
        let handle = self.handle();
        async move {
            match handle.await? {
                Some(metadata) => metadata.load_identity().await,
                None => Ok(None),
            }
        }
    }

    fn put_identity(
        &self,
        identity: StorageIdentity,
    ) -> impl Future<Output = Result<(), MetadataError>> + Send + 'static {
        let writer = self.writer();
        async move { writer?.put_identity(identity).await }
    }

    fn put_shape(
        &self,
        shape: StoredShape,
        stamp: HandleStamp,
    ) -> impl Future<Output = Result<(), MetadataError>> + Send + 'static {
        let writer = self.writer();
        async move { writer?.put_shape(shape, stamp).await }
    }

    fn delete_shape(
        &self,
        handle: &ShapeHandle,
    ) -> impl Future<Output = Result<(), MetadataError>> + Send + 'static {
        let writer = self.writer();
        let handle = handle.clone();
        async move { writer?.delete_shape(&handle).await }
    }
}
