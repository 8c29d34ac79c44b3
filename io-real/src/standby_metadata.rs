//! Shape metadata as an instance that may be a standby opens it: read-only until the lock is
//! held (RO-4), tolerant of a database the writer has not created yet (MD-4), and switched to
//! writing by [`MetadataStore::promote`].
//!
//! With a shape directory root ([`StandbyMetadata::open_with_shape_dir`], MD-3) every
//! `put_shape` also writes the shape's row into `shapes/<handle>/shape.json`, and `promote` (the
//! lock holder) repairs the index from those copies: a corrupt database file is renamed aside
//! (never deleted) and recreated, then every shape directory without a row but with a readable
//! `shape.json` gets its row back, and the stamp high-water mark is raised above every shape
//! directory's stamp so no handle is issued twice. Shape directories are never removed or
//! changed by this; one without `shape.json` is left alone (with a warning).
//!
//! **Exclusive mode** (MD-2, MD-4, LC-1). In [`MetadataMode::Exclusive`] the active instance's
//! connection holds the file locked for as long as it lives, so a standby cannot read it at
//! all. With a shape root a standby then never opens the file: it does not even try (a read
//! attempt takes SQLite's shared lock, and on a network file system every lock is one more
//! chance to stall the lock holder's next commit), and serves the shapes the shape directories
//! describe instead (`shapes/<handle>/shape.json`, the row's own copy, MD-3; the lock holder
//! writes it right after the row, and removes the directory before the row). Promotion opens
//! the file exclusively, retrying briefly while the previous holder is still closing it
//! ([`SqliteMetadata::promote`]). Electric likewise opens its shape database only once it holds
//! the lock.
//!
//! In every other case a standby opens the file read-only. Failures a writer causes briefly
//! (busy, locked: [`MetadataError::Transient`]) at startup are not fatal: the standby starts
//! without the database and opens it again at a later read, waiting [`REOPEN_DELAY_MIN`],
//! doubling to [`REOPEN_DELAY_MAX`], between attempts; a read meanwhile fails as transient
//! without touching the file (the caller keeps what it read last).
//!
//! **Fencing** (deploy-semantics LK-6, §2 item 13; [`crate::lease`]). `promote` takes the
//! storage lease of the shape root before its first write: it *adopts* the generation the shape
//! store of this process acquired moments earlier (the driver promotes the store first) if the
//! lease file still names it, and acquires a new one otherwise. Both find the same handle
//! without new wiring: the store and the metadata each ask for this process's handle on the
//! storage root ([`StorageLease::for_root`], a process-wide registry keyed by the canonical
//! root), unless one is given explicitly ([`StandbyMetadata::with_lease`]; tests running two
//! instances in one process). From then on every write — `put_identity`, `put_shape` (the row,
//! then again before its `shape.json`), `delete_shape`, the rebuild and the move-aside of a
//! corrupt file — re-reads the lease first and fails with [`MetadataError::Fenced`], writing
//! nothing, once another instance acquired it; it keeps failing until a promotion acquires the
//! lease again. A handle opened without a shape root or a lease ([`StandbyMetadata::open`]) is
//! not fenced.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ampere_core::ports::{MetadataStore, StorageIdentity, StoredShape};
use ampere_core::shape::{HandleStamp, ShapeHandle};

use crate::lease::StorageLease;
use crate::metadata::{
    decode_stored_shape, encode_stored_shape, lease_error, move_aside_corrupt, MetadataError,
    MetadataMode, MetadataOptions, SqliteMetadata, METADATA_FILE,
};
use crate::store::description::{
    read_descriptions, write_description, write_descriptions, ShapeDirDescription,
    BATCH_MIN_DESCRIPTIONS,
};

/// [`SqliteMetadata`] opened read-only, or not at all while the file does not exist yet.
#[derive(Clone)]
pub struct StandbyMetadata {
    dir: PathBuf,
    options: MetadataOptions,
    /// The shape store's root, whose `shapes/<handle>/` directories get a `shape.json` (MD-3).
    shapes_root: Option<PathBuf>,
    inner: Arc<Mutex<Option<SqliteMetadata>>>,
    /// The storage lease writes are fenced with: given ([`StandbyMetadata::with_lease`]) or
    /// resolved from the shape root at promotion.
    lease: Arc<Mutex<Option<Arc<StorageLease>>>>,
    /// Set once a promotion opened the file for writing.
    promoted: Arc<AtomicBool>,
    /// When a standby may next try to open the file after a transient failure.
    reopen: Arc<Mutex<Reopen>>,
}

/// Smallest pause between a standby's attempts to open a database it found busy.
pub const REOPEN_DELAY_MIN: Duration = Duration::from_secs(1);

/// Largest pause between those attempts.
pub const REOPEN_DELAY_MAX: Duration = Duration::from_secs(30);

const _: () = assert!(REOPEN_DELAY_MIN.as_millis() <= REOPEN_DELAY_MAX.as_millis());

/// The standby's reopen backoff: nothing pending, or not before `at`, next pause `delay`.
#[derive(Debug, Default)]
struct Reopen {
    at: Option<Instant>,
    delay: Duration,
}

impl std::fmt::Debug for StandbyMetadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let is_open = self.current().is_some();
        f.debug_struct("StandbyMetadata")
            .field("dir", &self.dir)
            .field("is_open", &is_open)
            .field("is_promoted", &self.is_promoted())
            .finish()
    }
}

impl StandbyMetadata {
    /// Opens `<dir>/shapes.sqlite3` read-only if it exists. Blocking.
    pub fn open(dir: impl Into<PathBuf>, options: MetadataOptions) -> Result<Self, MetadataError> {
        Self::open_inner(dir.into(), options, None)
    }

    /// As [`StandbyMetadata::open`], keeping a copy of every shape row in the shape store under
    /// `shapes_root` (the `FileStore` root) and rebuilding the index from those copies when
    /// promoted (MD-3; module docs). Blocking.
    pub fn open_with_shape_dir(
        dir: impl Into<PathBuf>,
        options: MetadataOptions,
        shapes_root: impl Into<PathBuf>,
    ) -> Result<Self, MetadataError> {
        Self::open_inner(dir.into(), options, Some(shapes_root.into()))
    }

    fn open_inner(
        dir: PathBuf,
        options: MetadataOptions,
        shapes_root: Option<PathBuf>,
    ) -> Result<Self, MetadataError> {
        let this = Self {
            dir,
            options,
            shapes_root,
            inner: Arc::new(Mutex::new(None)),
            lease: Arc::new(Mutex::new(None)),
            promoted: Arc::new(AtomicBool::new(false)),
            reopen: Arc::new(Mutex::new(Reopen::default())),
        };
        if this.reads_descriptions() {
            tracing::info!(
                path = %this.dir.join(METADATA_FILE).display(),
                "exclusive mode: until it holds the lock, this instance leaves the shape metadata \
                 to the lock holder and serves the shapes its shape directories describe"
            );
            return Ok(this);
        }
        match SqliteMetadata::open_read_only(&this.dir, &this.options) {
            Ok(metadata) => drop(this.install(metadata)),
            Err(MetadataError::NotCreatedYet { .. }) => {}
            // The lock holder moves it aside and rebuilds it when promoted (MD-3).
            Err(e) if this.shapes_root.is_some() && e.is_corruption() => {
                tracing::warn!(error = %e, "shape metadata is corrupt; the lock holder rebuilds it");
            }
            // A writer holds it (MD-4): start, and read it later (module docs).
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "shape metadata is busy; reading it later");
                this.back_off();
            }
            Err(e) => return Err(e),
        }
        Ok(this)
    }

    /// Fences writes with `lease` (module docs) instead of this process's handle on the shape
    /// root: for running two instances in one process, or sharing one handle explicitly with
    /// the shape store ([`crate::store::FileStore::open_follower_with_lease`]).
    #[must_use]
    pub fn with_lease(self, lease: Arc<StorageLease>) -> Self {
        *lock(&self.lease) = Some(lease);
        self
    }

    /// The storage lease writes are fenced with, once known.
    pub fn lease(&self) -> Option<Arc<StorageLease>> {
        lock(&self.lease).clone()
    }

    /// The lease to promote under: the given one, else this process's handle on the shape
    /// root; `None` without either (not fenced).
    fn resolve_lease(&self) -> Option<Arc<StorageLease>> {
        let mut lease = lock(&self.lease);
        if lease.is_none() {
            *lease = self.shapes_root.as_deref().map(StorageLease::for_root);
        }
        lease.clone()
    }

    /// Fences the current database handle with the lease, if there is one of each.
    fn arm(&self) {
        if let (Some(lease), Some(metadata)) = (self.lease(), self.current()) {
            metadata.set_lease(lease);
        }
    }

    /// Re-reads the lease, if any (blocking).
    fn check_lease(lease: Option<&StorageLease>) -> Result<(), MetadataError> {
        lease.map_or(Ok(()), |lease| lease.check().map_err(lease_error))
    }

    /// Whether this handle promoted (opened the file for writing).
    pub fn is_promoted(&self) -> bool {
        self.promoted.load(Ordering::Acquire)
    }

    /// Whether reads come from the shape directories' descriptions, not the database: a
    /// standby in exclusive mode with a shape root (module docs).
    fn reads_descriptions(&self) -> bool {
        self.options.mode == MetadataMode::Exclusive
            && self.shapes_root.is_some()
            && !self.is_promoted()
    }

    /// The open handle, opening it read-only first if the writer has created it since (and no
    /// reopen backoff is pending).
    fn handle(&self) -> impl Future<Output = Result<Option<SqliteMetadata>, MetadataError>> {
        let this = self.clone();
        async move {
            if let Some(metadata) = this.current() {
                return Ok(Some(metadata));
            }
            this.check_reopen()?;
            let (dir, options) = (this.dir.clone(), this.options.clone());
            let opened =
                tokio::task::spawn_blocking(move || SqliteMetadata::open_read_only(&dir, &options))
                    .await
                    .map_err(|source| MetadataError::Worker { source })?;
            match opened {
                Ok(metadata) => {
                    this.reset_reopen();
                    Ok(Some(this.install(metadata)))
                }
                Err(MetadataError::NotCreatedYet { .. }) => Ok(None),
                Err(e) => {
                    if e.is_transient() {
                        this.back_off();
                    }
                    Err(e)
                }
            }
        }
    }

    /// `Err(Transient)` without touching the file while a reopen backoff is pending.
    fn check_reopen(&self) -> Result<(), MetadataError> {
        let reopen = lock(&self.reopen);
        match reopen.at {
            Some(at) if Instant::now() < at => Err(MetadataError::Transient {
                path: self.dir.join(METADATA_FILE),
                attempts: 0,
                reason: "busy at the last attempt; waiting before opening it again",
                source: None,
            }),
            _ => Ok(()),
        }
    }

    /// Schedules the next reopen attempt: [`REOPEN_DELAY_MIN`], doubling to
    /// [`REOPEN_DELAY_MAX`].
    fn back_off(&self) {
        let mut reopen = lock(&self.reopen);
        let delay = reopen
            .delay
            .saturating_mul(2)
            .clamp(REOPEN_DELAY_MIN, REOPEN_DELAY_MAX);
        reopen.delay = delay;
        reopen.at = Some(Instant::now() + delay);
    }

    fn reset_reopen(&self) {
        *lock(&self.reopen) = Reopen::default();
    }

    /// The shapes the shape directories describe (MD-3), as a standby in exclusive mode
    /// serves them: every directory with a readable `shape.json` naming it (others are
    /// skipped, as the lock holder's rebuild skips them), sorted by handle, and the highest
    /// stamp among the directories. Blocking work runs on the blocking pool; reads only.
    async fn load_descriptions(
        root: PathBuf,
    ) -> Result<(Vec<StoredShape>, HandleStamp), MetadataError> {
        let dirs = list_descriptions(root).await?;
        let mut stamp = HandleStamp::default();
        let mut shapes = Vec::with_capacity(dirs.len());
        for dir in dirs {
            if let Some(dir_stamp) = handle_stamp(&dir.handle) {
                stamp = stamp.max(dir_stamp);
            }
            let Some(text) = dir.description else {
                continue; // Not described yet (being created) or not by this version.
            };
            match decode_stored_shape(&text) {
                Ok(shape) if shape.handle == dir.handle => shapes.push(shape),
                Ok(_) => {}
                Err(e) => tracing::debug!(
                    handle = %dir.handle,
                    error = %e,
                    "shape.json is unreadable: not served until the lock holder's rebuild"
                ),
            }
        }
        Ok((shapes, stamp))
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

    /// Opens the file for writing (promoting the read-only handle if there is one).
    async fn open_writer(&self) -> Result<(), MetadataError> {
        if let Some(metadata) = self.current() {
            metadata.promote(&self.options).await?;
        } else {
            let (dir, options) = (self.dir.clone(), self.options.clone());
            let writer = tokio::task::spawn_blocking(move || SqliteMetadata::open(&dir, &options))
                .await
                .map_err(|source| MetadataError::Worker { source })??;
            let installed = self.install(writer);
            installed.promote(&self.options).await?;
        }
        self.reset_reopen();
        self.promoted.store(true, Ordering::Release);
        Ok(())
    }

    /// Closes the corrupt database, renames its files aside and creates a fresh one (MD-3).
    async fn replace_corrupt(&self, cause: &MetadataError) -> Result<(), MetadataError> {
        // Close every connection first (exclusive mode holds a lock; renaming an open file
        // would leave it writing to the renamed one).
        drop(
            self.inner
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let (dir, options) = (self.dir.clone(), self.options.clone());
        let lease = self.lease();
        let (aside, fresh) = tokio::task::spawn_blocking(move || {
            Self::check_lease(lease.as_deref())?;
            let aside = move_aside_corrupt(&dir)?;
            SqliteMetadata::open(&dir, &options).map(|fresh| (aside, fresh))
        })
        .await
        .map_err(|source| MetadataError::Worker { source })??;
        tracing::error!(
            error = %cause,
            moved_to = %aside.as_deref().map_or_else(String::new, |p| p.display().to_string()),
            "shape metadata is corrupt: moved it aside and rebuilding it from the shape directories"
        );
        *self.inner.lock().unwrap_or_else(PoisonError::into_inner) = Some(fresh);
        self.promoted.store(true, Ordering::Release);
        self.arm();
        Ok(())
    }

    /// Restores the rows of shape directories that have none from their `shape.json`, and
    /// raises the stamp high-water mark above every shape directory's stamp (MD-3).
    async fn rebuild(&self, root: PathBuf) -> Result<(), MetadataError> {
        let writer = self.writer()?;
        let (stored, _) = writer.load().await?;
        let known: BTreeSet<String> = stored
            .iter()
            .map(|shape| shape.handle.as_str().to_owned())
            .collect();
        let dirs = list_descriptions(root).await?;
        let mut min_stamp = HandleStamp::default();
        let mut missing = Vec::new();
        for dir in dirs {
            if let Some(stamp) = handle_stamp(&dir.handle) {
                min_stamp = min_stamp.max(stamp);
            }
            if known.contains(dir.handle.as_str()) {
                continue;
            }
            let Some(text) = dir.description else {
                tracing::warn!(
                    handle = %dir.handle,
                    "shape directory has no metadata row and no shape.json: left untouched"
                );
                continue;
            };
            match decode_stored_shape(&text) {
                Ok(shape) if shape.handle == dir.handle => missing.push(shape),
                Ok(shape) => tracing::warn!(
                    handle = %dir.handle,
                    described = %shape.handle,
                    "shape.json names another shape: left untouched"
                ),
                Err(e) => tracing::warn!(
                    handle = %dir.handle,
                    error = %e,
                    "shape.json is unreadable: left untouched"
                ),
            }
        }
        let rebuilt = writer.rebuild(missing, min_stamp).await?;
        for handle in &rebuilt {
            tracing::warn!(%handle, "rebuilt shape metadata row from its shape directory");
        }
        if !rebuilt.is_empty() {
            tracing::warn!(
                count = rebuilt.len(),
                "shape metadata rebuilt from shape directories"
            );
        }
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The stamp of a minted handle `<hash>-<stamp>`.
fn handle_stamp(handle: &ShapeHandle) -> Option<HandleStamp> {
    let (_, stamp) = handle.as_str().rsplit_once('-')?;
    stamp.parse().ok().map(HandleStamp)
}

/// Writes the shape's `shape.json` into its directory under `root`, if that exists.
fn write_shape_description(root: &Path, shape: &StoredShape) -> Result<(), MetadataError> {
    let text = encode_stored_shape(shape);
    write_description(root, &shape.handle, &text)
        .map(drop)
        .map_err(|source| MetadataError::Io {
            path: root
                .join(crate::store::layout::SHAPES_DIR)
                .join(shape.handle.as_str())
                .join(crate::store::layout::SHAPE_DESCRIPTION_FILE),
            op: "write the shape description",
            source,
        })
}

/// Threads [`write_shape_descriptions`] uses at most.
const DESCRIPTION_THREADS_MAX: usize = 8;

/// Writes every shape's description: a few spread over up to [`DESCRIPTION_THREADS_MAX`]
/// threads (each write waits on its own `fsync`s; the first error, after all were tried),
/// many in one batch synced twice for all ([`write_descriptions`]).
fn write_shape_descriptions(root: &Path, shapes: &[StoredShape]) -> Result<(), MetadataError> {
    if shapes.len() < BATCH_MIN_DESCRIPTIONS {
        return crate::parallel::map(shapes, DESCRIPTION_THREADS_MAX, |shape| {
            write_shape_description(root, shape)
        })
        .into_iter()
        .collect();
    }
    let texts: Vec<(&ShapeHandle, String)> = shapes
        .iter()
        .map(|shape| (&shape.handle, encode_stored_shape(shape)))
        .collect();
    write_descriptions(root, &texts)
        .map(drop)
        .map_err(|source| MetadataError::Io {
            path: root.join(crate::store::layout::SHAPES_DIR),
            op: "write the shape descriptions",
            source,
        })
}

impl MetadataStore for StandbyMetadata {
    type Error = MetadataError;

    fn promote(&self) -> impl Future<Output = Result<(), MetadataError>> + Send + 'static {
        let this = self.clone();
        async move {
            // Before the first write (opening for writing migrates): adopt the generation this
            // process's shape store just acquired, or acquire one (module docs).
            if let Some(lease) = this.resolve_lease() {
                let generation = tokio::task::spawn_blocking(move || lease.acquire_or_adopt())
                    .await
                    .map_err(|source| MetadataError::Worker { source })?
                    .map_err(lease_error)?;
                tracing::debug!(%generation, "shape metadata writes under the storage lease");
            }
            let Some(root) = this.shapes_root.clone() else {
                this.open_writer().await?;
                this.arm();
                return Ok(());
            };
            // The lock holder repairs the index (MD-3); without a shape root there is nothing
            // to rebuild from, so a corrupt file stays an error.
            match this.open_writer().await {
                Err(e) if e.is_corruption() => this.replace_corrupt(&e).await?,
                other => other?,
            }
            this.arm();
            match this.writer()?.load().await {
                Err(e) if e.is_corruption() => this.replace_corrupt(&e).await?,
                other => drop(other?),
            }
            this.rebuild(root).await
        }
    }

    fn load(
        &self,
    ) -> impl Future<Output = Result<(Vec<StoredShape>, HandleStamp), MetadataError>> + Send + 'static
    {
        let descriptions = self
            .shapes_root
            .clone()
            .filter(|_| self.reads_descriptions());
        let handle = self.handle();
        async move {
            if let Some(root) = descriptions {
                return Self::load_descriptions(root).await;
            }
            match handle.await? {
                Some(metadata) => metadata.load().await,
                None => Ok((Vec::new(), HandleStamp::default())),
            }
        }
    }

    fn load_identity(
        &self,
    ) -> impl Future<Output = Result<Option<StorageIdentity>, MetadataError>> + Send + 'static {
        // A standby in exclusive mode never opens the file (module docs); only the lock holder
        // needs the identity.
        let skip = self.reads_descriptions();
        let handle = self.handle();
        async move {
            if skip {
                return Ok(None);
            }
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
        let root = self.shapes_root.clone();
        let lease = self.lease();
        async move {
            writer?.put_shape(shape.clone(), stamp).await?;
            let Some(root) = root else { return Ok(()) };
            tokio::task::spawn_blocking(move || {
                Self::check_lease(lease.as_deref())?;
                write_shape_description(&root, &shape)
            })
            .await
            .map_err(|source| MetadataError::Worker { source })?
        }
    }

    /// The rows in one transaction, then each shape's own copy, written in parallel (each is
    /// an atomic replace of its own file).
    fn put_shapes(
        &self,
        shapes: Vec<StoredShape>,
    ) -> impl Future<Output = Result<(), MetadataError>> + Send + 'static {
        let writer = self.writer();
        let root = self.shapes_root.clone();
        let lease = self.lease();
        async move {
            let shapes = Arc::new(shapes);
            writer?.put_shapes(shapes.to_vec()).await?;
            let Some(root) = root else { return Ok(()) };
            tokio::task::spawn_blocking(move || {
                Self::check_lease(lease.as_deref())?;
                write_shape_descriptions(&root, &shapes)
            })
            .await
            .map_err(|source| MetadataError::Worker { source })?
        }
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

/// Every shape directory under `root` with its `shape.json`, read on the blocking pool.
async fn list_descriptions(root: PathBuf) -> Result<Vec<ShapeDirDescription>, MetadataError> {
    let listing_root = root.clone();
    tokio::task::spawn_blocking(move || read_descriptions(&listing_root))
        .await
        .map_err(|source| MetadataError::Worker { source })?
        .map_err(|source| MetadataError::Io {
            path: root.join(crate::store::layout::SHAPES_DIR),
            op: "list shape directories",
            source,
        })
}
