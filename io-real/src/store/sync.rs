//! How one flush makes its writes durable: each file `fdatasync`ed, or every shape at once by
//! one `syncfs(2)` (issue 12: a transaction touching 2,000 shapes waited for 4,000
//! `fdatasync`s before Postgres heard it was durable).
//!
//! `syncfs` writes back every dirty page of the file system holding `shapes/` and flushes the
//! device cache once, as Postgres's `recovery_init_sync_method=syncfs` does. Since Linux 5.8 it
//! reports a write-back error that happened on that file system since the descriptor it is
//! called on was opened (`s_wb_err`), whichever file it hit and whether or not that file is
//! still open: so the directory is opened at the start of each flush, before its first write,
//! and an error fails every shape the `syncfs` covered (the page cache of any of them may be
//! wrong, RP-6). It covers a shape only if both its files are on that file system (`st_dev`;
//! a shape directory could be a mount point): any other shape `fdatasync`s its own files.
//!
//! Below [`SYNCFS_MIN_SHAPES`] shapes each file is `fdatasync`ed: a `syncfs` also writes back
//! whatever else is dirty on the file system (other processes' files, SQLite), which for a
//! flush of one or two shapes can cost more than their own syncs. The order is unchanged
//! either way: a phase's files are all durable before the next phase writes (data before the
//! index names it), and readers see nothing before both are.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::shape::{Batch, Shape};
use super::StoreError;

/// Flushes covering at least this many shapes sync the file system once instead of each
/// file (module docs). Measured on the project's machine (ext4 on a virtual disk whose
/// flushes are cheap, three other builds writing to the same file system), 2,000 shapes of
/// 100 entries each (about 50 MB): a sync per file over 8 threads took 0.28–0.47 s a flush,
/// `syncfs` 0.14–0.16 s when the disk was quiet and 0.32–0.53 s when others had much dirty
/// data; for a handful of shapes both cost under a millisecond. Where a sync costs a real
/// device cache flush (the probe that measured 10 s for such a transaction), per-file syncs
/// grow with the shapes and `syncfs` stays two per flush; below 16 shapes the per-file cost
/// is a few rounds of 8 parallel syncs and is not worth writing back other processes' data.
pub(super) const SYNCFS_MIN_SHAPES: usize = 16;

/// How one flush makes its writes durable.
pub(super) enum GroupSync {
    /// Each file is `fdatasync`ed right after its write.
    EachFile,
    /// Writes only, then one `syncfs` of `shapes_dir`'s file system, for the shapes on it.
    FileSystem {
        /// `shapes/`, opened before the flush's first write.
        dir: File,
        path: PathBuf,
        /// Its device: shapes elsewhere sync each file.
        dev: u64,
    },
}

impl GroupSync {
    /// The method for a flush of `shapes` shapes under `shapes_dir`: [`GroupSync::FileSystem`]
    /// from [`SYNCFS_MIN_SHAPES`] on, where `syncfs` exists and the directory opens (else each
    /// file, which needs no directory descriptor).
    pub(super) fn for_flush(shapes_dir: &Path, shapes: usize) -> Self {
        if shapes < SYNCFS_MIN_SHAPES || !cfg!(target_os = "linux") {
            return Self::EachFile;
        }
        let opened = File::open(shapes_dir).and_then(|dir| {
            let dev = dir.metadata()?.dev();
            Ok((dir, dev))
        });
        match opened {
            Ok((dir, dev)) => Self::FileSystem {
                dir,
                path: shapes_dir.to_path_buf(),
                dev,
            },
            Err(err) => {
                tracing::warn!(
                    path = %shapes_dir.display(), error = %err,
                    "cannot open the shapes directory to sync it; syncing each file instead"
                );
                Self::EachFile
            }
        }
    }

    /// Whether `shape`'s writes must be `fdatasync`ed one by one (the `syncfs` does not cover
    /// it).
    pub(super) fn syncs_each(&self, shape: &Shape) -> bool {
        match self {
            Self::EachFile => true,
            Self::FileSystem { dev, .. } => shape.dev() != *dev,
        }
    }

    /// Makes durable the writes of the `batches` that did not sync each file: one `syncfs`
    /// (none if no batch needs it). One result per batch: a failed `syncfs` fails every batch
    /// it covered.
    pub(super) fn sync_the_rest(
        &self,
        batches: &[(Arc<Shape>, Batch)],
    ) -> Vec<Result<(), StoreError>> {
        let covered = |shape: &Shape| !self.syncs_each(shape);
        let Self::FileSystem { dir, path, .. } = self else {
            return batches.iter().map(|_| Ok(())).collect();
        };
        if !batches.iter().any(|(shape, _)| covered(shape)) {
            return batches.iter().map(|_| Ok(())).collect();
        }
        let Err(err) = syncfs(dir) else {
            return batches.iter().map(|_| Ok(())).collect();
        };
        tracing::error!(
            path = %path.display(), error = %err, shapes = batches.len(),
            "syncfs of the shape logs failed"
        );
        batches
            .iter()
            .map(|(shape, _)| {
                if !covered(shape) {
                    return Ok(());
                }
                let source = err.raw_os_error().map_or_else(
                    || io::Error::new(err.kind(), err.to_string()),
                    io::Error::from_raw_os_error,
                );
                Err(StoreError::Io {
                    op: "syncfs",
                    path: path.clone(),
                    source,
                })
            })
            .collect()
    }
}

/// `syncfs(2)` of the file system holding `dir`.
#[cfg(target_os = "linux")]
pub(super) fn syncfs(dir: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: syncfs takes a descriptor, which `dir` keeps open for the call.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Never called: [`GroupSync::for_flush`] chooses `syncfs` on Linux only. An error, should
/// that change: nothing here makes the files durable.
#[cfg(not(target_os = "linux"))]
pub(super) fn syncfs(_dir: &File) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}
