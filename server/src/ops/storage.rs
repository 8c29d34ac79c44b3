//! What `ampere status` reports about the storage directory: the shapes (from the metadata
//! database opened read-only as a standby opens it, or in exclusive mode from the shape
//! directories' `shape.json` copies, since the writer holds the file locked), the bytes on
//! disk, the storage lease's holder and the replication position storage recorded.
//!
//! Never writes, creates or locks anything: the metadata is opened `SQLITE_OPEN_READONLY`
//! (`SqliteMetadata::open_read_only`), never in exclusive mode, and the lease file is only read.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use ampere_core::error_chain;
use ampere_core::ports::MetadataStore as _;
use ampere_io_real::lease::{self, Generation, LeaseError};
use ampere_io_real::metadata::{MetadataError, MetadataOptions, SqliteMetadata, METADATA_FILE};
use ampere_io_real::store::description::read_descriptions;
use ampere_io_real::store::layout::SHAPES_DIR;
use serde_json::{json, Value};

use super::human_bytes;
use crate::config::{Config, ShapeDbDir};

/// The storage directory as `ampere status` sees it.
#[derive(Debug)]
pub(crate) struct StorageStatus {
    pub(crate) dir: PathBuf,
    pub(crate) exists: bool,
    /// Shape directories under `shapes/` (half-created ones excluded).
    pub(crate) shape_dirs: usize,
    /// Of those, the ones with a readable `shape.json`.
    pub(crate) described_shape_dirs: usize,
    pub(crate) metadata: MetadataView,
    /// Bytes of the files under `shapes/`.
    pub(crate) shape_bytes: u64,
    /// Bytes of every file in the directory (the embedded cluster's included).
    pub(crate) total_bytes: u64,
    /// The storage lease: generation and owner, `None` when no instance ever promoted here.
    pub(crate) lease: Result<Option<(Generation, String)>, String>,
    /// Reading the directory failed.
    pub(crate) error: Option<String>,
}

/// What the metadata database says, or why it was not read.
#[derive(Debug)]
pub(crate) enum MetadataView {
    Read {
        shapes: usize,
        /// `StorageIdentity::acked`: the last `flush` position ampere acknowledged.
        acked_lsn: Option<String>,
        /// The slot storage follows.
        slot: Option<String>,
        purge_pending: bool,
    },
    /// No database file yet (no instance has been active here).
    NotCreated,
    /// `ELECTRIC_SHAPE_DB_EXCLUSIVE_MODE`: the active instance holds the file locked.
    SkippedExclusive,
    /// `ELECTRIC_SHAPE_DB_STORAGE_DIR=:memory:`.
    InMemory,
    Unreadable(String),
}

impl StorageStatus {
    /// Reads the storage directory of `config` (the file system on a blocking thread).
    pub(crate) async fn read(config: &Config) -> Self {
        let dir = config.storage_dir.clone();
        let files = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || read_files(&dir)
        })
        .await
        .unwrap_or_else(|e| Files {
            shape_dirs: 0,
            described_shape_dirs: 0,
            shape_bytes: 0,
            total_bytes: 0,
            lease: Ok(None),
            error: Some(format!("reading the storage directory: {e}")),
        });
        Self {
            exists: dir.is_dir(),
            dir,
            shape_dirs: files.shape_dirs,
            described_shape_dirs: files.described_shape_dirs,
            metadata: read_metadata(config).await,
            shape_bytes: files.shape_bytes,
            total_bytes: files.total_bytes,
            lease: files.lease,
            error: files.error,
        }
    }

    /// The shape count: the metadata's, else the described shape directories (exclusive mode,
    /// or no readable database).
    pub(crate) fn shapes(&self) -> usize {
        match &self.metadata {
            MetadataView::Read { shapes, .. } => *shapes,
            _ => self.described_shape_dirs,
        }
    }

    pub(crate) fn json(&self) -> Value {
        let metadata = match &self.metadata {
            MetadataView::Read {
                shapes,
                acked_lsn,
                slot,
                purge_pending,
            } => json!({
                "state": "read", "shapes": shapes, "acked_lsn": acked_lsn, "slot": slot,
                "purge_pending": purge_pending,
            }),
            MetadataView::NotCreated => json!({ "state": "not_created" }),
            MetadataView::SkippedExclusive => json!({ "state": "skipped_exclusive_mode" }),
            MetadataView::InMemory => json!({ "state": "in_memory" }),
            MetadataView::Unreadable(e) => json!({ "state": "unreadable", "error": e }),
        };
        let lease = match &self.lease {
            Ok(Some((generation, owner))) => json!({ "generation": generation.0, "owner": owner }),
            Ok(None) => Value::Null,
            Err(e) => json!({ "error": e }),
        };
        json!({
            "dir": self.dir.display().to_string(),
            "exists": self.exists,
            "shapes": self.shapes(),
            "shape_dirs": self.shape_dirs,
            "metadata": metadata,
            "shape_bytes": self.shape_bytes,
            "total_bytes": self.total_bytes,
            "lease": lease,
            "error": self.error,
        })
    }

    pub(crate) fn text(&self) -> String {
        let mut out = format!("storage {}", self.dir.display());
        if !self.exists {
            out.push_str(": does not exist (no instance has run here)\n");
            return out;
        }
        out.push('\n');
        let source = match &self.metadata {
            MetadataView::Read { .. } => "in the metadata".to_owned(),
            MetadataView::NotCreated => "from shape.json; no metadata database yet".to_owned(),
            MetadataView::SkippedExclusive => {
                "from shape.json; exclusive mode: the metadata database is not opened".to_owned()
            }
            MetadataView::InMemory => "from shape.json; the metadata is in memory".to_owned(),
            MetadataView::Unreadable(e) => format!("from shape.json; metadata unreadable: {e}"),
        };
        out.push_str(&format!(
            "  shapes: {} ({source}); shape directories: {}\n",
            self.shapes(),
            self.shape_dirs
        ));
        out.push_str(&format!(
            "  on disk: {} in {SHAPES_DIR}/, {} in all\n",
            human_bytes(i64::try_from(self.shape_bytes).unwrap_or(i64::MAX)),
            human_bytes(i64::try_from(self.total_bytes).unwrap_or(i64::MAX)),
        ));
        if let MetadataView::Read {
            acked_lsn,
            slot,
            purge_pending,
            ..
        } = &self.metadata
        {
            if let (Some(acked), Some(slot)) = (acked_lsn, slot) {
                out.push_str(&format!(
                    "  follows slot {slot}, acknowledged up to {acked}\n"
                ));
            }
            if *purge_pending {
                out.push_str(
                    "  a purge is pending: the next active instance removes every shape\n",
                );
            }
        }
        match &self.lease {
            Ok(Some((generation, owner))) => out.push_str(&format!(
                "  storage lease: generation {generation}, owner {owner}\n"
            )),
            Ok(None) => out.push_str("  storage lease: never taken\n"),
            Err(e) => out.push_str(&format!("  storage lease: unreadable: {e}\n")),
        }
        if let Some(error) = &self.error {
            out.push_str(&format!("  error: {error}\n"));
        }
        out
    }
}

async fn read_metadata(config: &Config) -> MetadataView {
    if matches!(config.shape_db_storage_dir, Some(ShapeDbDir::Memory)) {
        return MetadataView::InMemory;
    }
    if config.shape_db_exclusive_mode {
        return MetadataView::SkippedExclusive;
    }
    let dir = config.shape_db_dir().to_path_buf();
    if !dir.join(METADATA_FILE).exists() {
        return MetadataView::NotCreated;
    }
    let options = MetadataOptions {
        cache_size_kib: config.shape_db_cache_kib(),
        ..MetadataOptions::default()
    };
    let opened =
        tokio::task::spawn_blocking(move || SqliteMetadata::open_read_only(&dir, &options)).await;
    let metadata = match opened {
        Ok(Ok(metadata)) => metadata,
        Ok(Err(MetadataError::NotCreatedYet { .. })) => return MetadataView::NotCreated,
        Ok(Err(e)) => return MetadataView::Unreadable(error_chain(&e)),
        Err(e) => return MetadataView::Unreadable(format!("opening the metadata: {e}")),
    };
    let read = async {
        let (shapes, _) = metadata.load().await?;
        let identity = metadata.load_identity().await?;
        Ok::<_, MetadataError>((shapes, identity))
    };
    match read.await {
        Ok((shapes, identity)) => MetadataView::Read {
            shapes: shapes.len(),
            acked_lsn: identity.as_ref().map(|i| i.acked.to_string()),
            slot: identity.as_ref().map(|i| i.slot.clone()),
            purge_pending: identity.is_some_and(|i| i.purge_pending),
        },
        Err(e) => MetadataView::Unreadable(error_chain(&e)),
    }
}

/// What the file system says, read on a blocking thread.
struct Files {
    shape_dirs: usize,
    described_shape_dirs: usize,
    shape_bytes: u64,
    total_bytes: u64,
    lease: Result<Option<(Generation, String)>, String>,
    error: Option<String>,
}

fn read_files(dir: &Path) -> Files {
    let mut error = None;
    let descriptions = read_descriptions(dir).unwrap_or_else(|e| {
        error = Some(format!("listing {}: {e}", dir.join(SHAPES_DIR).display()));
        Vec::new()
    });
    let shape_bytes = bytes_under(&dir.join(SHAPES_DIR));
    Files {
        shape_dirs: descriptions.len(),
        described_shape_dirs: descriptions
            .iter()
            .filter(|d| d.description.is_some())
            .count(),
        shape_bytes,
        total_bytes: bytes_under_counting(dir, SHAPES_DIR, shape_bytes),
        lease: read_lease(dir),
        error,
    }
}

/// The lease file's generation and owner. `lease::check` with generation 0, which no
/// acquisition ever writes (they start at 1), always answers `Fenced` with what the file holds
/// (generation 0 when it is missing or unreadable): a read through the lease module's own
/// parser.
fn read_lease(root: &Path) -> Result<Option<(Generation, String)>, String> {
    match lease::check(root, Generation(0), "-") {
        Err(LeaseError::Fenced(fenced)) if fenced.current == Generation(0) => Ok(None),
        Err(LeaseError::Fenced(fenced)) => Ok(Some((fenced.current, fenced.current_owner))),
        Err(e) => Err(error_chain(&e)),
        Ok(()) => Ok(None),
    }
}

/// Bytes of the regular files under `dir`, symlinks not followed; unreadable entries count as
/// nothing. Bounded by the depth of the tree ampere writes (and a hard cap on it).
fn bytes_under(dir: &Path) -> u64 {
    walk(dir, 0, None).unwrap_or(0)
}

/// [`bytes_under`] `root`, counting its subdirectory `name` as `name_bytes` (already summed)
/// instead of walking it again.
fn bytes_under_counting(root: &Path, name: &str, name_bytes: u64) -> u64 {
    walk(root, 0, Some((name, name_bytes))).unwrap_or(0)
}

/// The walk behind [`bytes_under`]: `dir` at `depth`, with `summed` a subdirectory of `dir`
/// (not of deeper directories) already counted.
fn walk(dir: &Path, depth: usize, summed: Option<(&str, u64)>) -> io::Result<u64> {
    const MAX_DEPTH: usize = 16;
    let mut total = 0u64;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if meta.is_file() {
            total = total.saturating_add(meta.len());
        } else if meta.is_dir() {
            match summed {
                Some((name, bytes)) if entry.file_name() == name => {
                    total = total.saturating_add(bytes);
                }
                _ if depth < MAX_DEPTH => {
                    total = total.saturating_add(walk(&entry.path(), depth + 1, None).unwrap_or(0));
                }
                _ => {}
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ampere-ops-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create scratch dir");
        dir
    }

    #[test]
    fn the_lease_reads_as_never_taken_until_acquired_then_names_its_holder() {
        let dir = scratch("lease");
        assert_eq!(read_lease(&dir), Ok(None));
        let generation = lease::acquire(&dir, "owner1").expect("acquire");
        assert_eq!(
            read_lease(&dir),
            Ok(Some((generation, "owner1".to_owned())))
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn bytes_count_every_file_below_and_a_missing_directory_as_none() {
        let dir = scratch("bytes");
        fs::create_dir_all(dir.join("a/b")).expect("mkdir");
        fs::write(dir.join("a/one"), [0u8; 10]).expect("write");
        fs::write(dir.join("a/b/two"), [0u8; 5]).expect("write");
        assert_eq!(bytes_under(&dir), 15);
        assert_eq!(bytes_under(&dir.join("missing")), 0);
        let _ = fs::remove_dir_all(&dir);
    }
}
