//! The storage lease: a fencing generation for a shared storage directory (deploy-semantics
//! LK-6, §2 item 13).
//!
//! The advisory lock says who may write *now*, but an instance learns that it lost the lock
//! only later (network latency, its replication timeout), and Postgres hands the lock to the
//! next instance at once. Meanwhile the deposed instance may still flush, persist the acked
//! position or write a shape row into the shared `ELECTRIC_STORAGE_DIR`. The lease makes such
//! late writes fail instead of interleaving with the new writer's:
//!
//! ```text
//! <root>/lease     "ampere-lease v1 <generation> <owner>\n", replaced atomically
//! ```
//!
//! * **Acquire** ([`StorageLease::acquire`]; [`acquire`]): once per promotion, with the lock
//!   held: read the generation, write `generation + 1` and this instance's owner id to a
//!   temporary file, `fsync` it, rename it over `lease`, `fsync` the directory.
//! * **Check** ([`StorageLease::check`]; [`check`]): before every mutation that makes
//!   something durable or visible, re-read the file (one open and one small read) and fail
//!   with [`Fenced`] unless it still names this instance's generation *and* owner. Equality,
//!   not ordering: a lease file that was damaged, deleted or rewritten with a lower
//!   generation fences too.
//!
//! **One generation per process and root.** The shape store and the metadata of one process
//! share one [`StorageLease`] handle (an `Arc`): whichever promotes first acquires, and
//! [`StorageLease::acquire_or_adopt`] lets the other adopt that generation if it is still
//! current. The server opens the store and the metadata separately, so the shared handle is
//! found through a process-wide registry keyed by the canonical root
//! ([`StorageLease::for_root`]); tests that run two "instances" in one process give each its
//! own handle ([`StorageLease::new`]).
//!
//! **What it does not do.** A check and the write after it are two steps: an instance paused
//! exactly between them (SIGSTOP) still writes once after the takeover. The lease shrinks the
//! window from "until the replication connection times out" to the microseconds between a
//! re-read and the `write`/`rename` it guards; nothing short of storage-side compare-and-swap
//! closes it.

use std::fs::{self, File};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use ampere_core::ports::{StorageFault, StorageFaultKind};

/// The lease file's name in the storage root.
pub const LEASE_FILE: &str = "lease";

/// First word and version of the lease file.
const HEADER: &str = "ampere-lease v1";

/// A lease generation: strictly increasing with every acquisition on one root.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Generation(pub u64);

impl std::fmt::Display for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Another instance acquired the lease since this one did: this instance must write nothing
/// more to the storage directory until it holds the lock and acquires the lease again.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "storage lease {path} was taken over: this instance holds generation {ours}, the lease is \
     at generation {current} (owner {current_owner}); it writes nothing more"
)]
pub struct Fenced {
    /// The lease file.
    pub path: PathBuf,
    /// The generation this instance acquired (0: none).
    pub ours: Generation,
    /// The generation the lease file holds now (0: missing or unreadable).
    pub current: Generation,
    /// The owner the lease file names now (`-` if missing or unreadable).
    pub current_owner: String,
}

/// Why acquiring or checking the lease failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another instance holds the lease now.
    #[error(transparent)]
    Fenced(#[from] Fenced),
    /// Reading or writing the lease file failed.
    #[error("storage lease {path}: cannot {op}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl LeaseError {
    /// Whether another instance took the lease over (as opposed to an I/O failure).
    pub fn is_fenced(&self) -> bool {
        matches!(self, Self::Fenced(_))
    }
}

/// Classifies an OS error on `path`: `ENOSPC`/`EDQUOT` (full), `EMFILE`/`ENFILE` (descriptor
/// limit), `EIO` (device). Shared by the store and the metadata (whose lease
/// failures carry the lease file's path).
pub fn io_fault(error: &io::Error, path: &Path) -> Option<StorageFault> {
    let (kind, code) = match error.raw_os_error()? {
        libc::ENOSPC => (StorageFaultKind::Full, "ENOSPC"),
        libc::EDQUOT => (StorageFaultKind::Full, "EDQUOT"),
        libc::EMFILE => (StorageFaultKind::FdLimit, "EMFILE"),
        libc::ENFILE => (StorageFaultKind::FdLimit, "ENFILE"),
        libc::EIO => (StorageFaultKind::Io, "EIO"),
        _ => return None,
    };
    Some(StorageFault {
        kind,
        code,
        path: Some(path.display().to_string()),
    })
}

/// What the lease file says.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Holder {
    generation: Generation,
    owner: String,
}

/// The lease file of `root`.
pub fn lease_path(root: &Path) -> PathBuf {
    root.join(LEASE_FILE)
}

/// Reads the lease file: `Ok(None)` if missing or unreadable as a lease (damage: treated as
/// "nobody", so an acquisition replaces it and a check fences).
fn read_holder(path: &Path) -> Result<Option<Holder>, LeaseError> {
    let mut text = String::new();
    match File::open(path).and_then(|mut file| file.read_to_string(&mut text)) {
        Ok(_) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) if err.kind() == io::ErrorKind::InvalidData => return Ok(None),
        Err(source) => {
            return Err(LeaseError::Io {
                path: path.to_path_buf(),
                op: "read",
                source,
            })
        }
    }
    Ok(parse(&text))
}

fn parse(text: &str) -> Option<Holder> {
    let rest = text.strip_suffix('\n')?.strip_prefix(HEADER)?;
    let mut words = rest.strip_prefix(' ')?.split(' ');
    let generation = words.next()?.parse().ok()?;
    let owner = words.next()?;
    if owner.is_empty() || words.next().is_some() {
        return None;
    }
    Some(Holder {
        generation: Generation(generation),
        owner: owner.to_owned(),
    })
}

/// Acquires the lease of `root` for `owner` (no spaces or newlines): writes the next
/// generation atomically and durably (temporary file, `fsync`, rename, `fsync` of `root`) and
/// returns it. Creates `root` if missing. Call only with the advisory lock held. Blocking.
pub fn acquire(root: &Path, owner: &str) -> Result<Generation, LeaseError> {
    assert!(
        !owner.is_empty() && !owner.contains([' ', '\n']),
        "invariant: owner ids are single words"
    );
    let io_fail = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| LeaseError::Io { path, op, source }
    };
    fs::create_dir_all(root).map_err(io_fail("create directory", root))?;
    let path = lease_path(root);
    let previous = read_holder(&path)?;
    if previous.is_none() && path.exists() {
        tracing::warn!(path = %path.display(), "storage lease file is unreadable: replacing it");
    }
    let generation = Generation(previous.map_or(0, |held| held.generation.0) + 1);
    // Our own temporary name: two instances acquiring at once never share one.
    let tmp = root.join(format!(".{LEASE_FILE}.{owner}.tmp"));
    let text = format!("{HEADER} {generation} {owner}\n");
    let mut file = File::create(&tmp).map_err(io_fail("create", &tmp))?;
    file.write_all(text.as_bytes())
        .map_err(io_fail("write", &tmp))?;
    file.sync_all().map_err(io_fail("fsync", &tmp))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(io_fail("rename into place", &path))?;
    File::open(root)
        .and_then(|dir| dir.sync_all())
        .map_err(io_fail("fsync directory", root))?;
    Ok(generation)
}

/// `Ok` if the lease of `root` still names `generation` and `owner`; [`LeaseError::Fenced`]
/// if another instance acquired it since (or it is gone). One open and one small read.
/// Blocking.
pub fn check(root: &Path, generation: Generation, owner: &str) -> Result<(), LeaseError> {
    let path = lease_path(root);
    let holder = read_holder(&path)?;
    match holder {
        Some(held) if held.generation == generation && held.owner == owner => Ok(()),
        other => {
            let (current, current_owner) = other.map_or((Generation(0), "-".to_owned()), |held| {
                (held.generation, held.owner)
            });
            Err(Fenced {
                path,
                ours: generation,
                current,
                current_owner,
            }
            .into())
        }
    }
}

/// One instance's claim on one storage root: its owner id and the generation it acquired, if
/// any. Shared (`Arc`) by the store and the metadata of that instance (module docs).
#[derive(Debug)]
pub struct StorageLease {
    root: PathBuf,
    owner: String,
    /// The generation acquired last, if any. Held across each file operation, so a check
    /// never sees the file and this disagree during a concurrent acquisition.
    held: Mutex<Option<Generation>>,
}

impl StorageLease {
    /// A new instance's handle on `root`, with a fresh random owner id; holds nothing yet.
    pub fn new(root: impl Into<PathBuf>) -> Arc<Self> {
        Arc::new(Self {
            root: root.into(),
            owner: new_owner_id(),
            held: Mutex::new(None),
        })
    }

    /// This process's handle on `root`: the same `Arc` for every caller naming the same
    /// directory (compared canonically) while anyone still holds it, so the store and the
    /// metadata of one process share one generation. A fresh handle otherwise.
    pub fn for_root(root: &Path) -> Arc<Self> {
        static REGISTRY: Mutex<Vec<(PathBuf, Weak<StorageLease>)>> = Mutex::new(Vec::new());
        let key = registry_key(root);
        let mut registry = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
        registry.retain(|(_, lease)| lease.strong_count() > 0);
        if let Some(lease) = registry
            .iter()
            .find(|(known, _)| *known == key)
            .and_then(|(_, lease)| lease.upgrade())
        {
            return lease;
        }
        let lease = Self::new(root);
        registry.push((key, Arc::downgrade(&lease)));
        lease
    }

    /// The storage root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// This instance's owner id, as written into the lease file.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The generation acquired last, if any (whether or not it is still current).
    pub fn generation(&self) -> Option<Generation> {
        *self.held()
    }

    /// Acquires a new generation ([`acquire`]): every later [`StorageLease::check`] of another
    /// instance's handle fails. Call once per promotion, with the advisory lock held.
    /// Blocking.
    pub fn acquire(&self) -> Result<Generation, LeaseError> {
        let mut held = self.held();
        let generation = acquire(&self.root, &self.owner)?;
        *held = Some(generation);
        tracing::info!(
            root = %self.root.display(), %generation, owner = %self.owner,
            "storage lease acquired"
        );
        Ok(generation)
    }

    /// Adopts the generation this handle holds if the lease file still names it (another
    /// component of this instance acquired it during this promotion), else acquires a new
    /// one. Blocking.
    pub fn acquire_or_adopt(&self) -> Result<Generation, LeaseError> {
        {
            let held = self.held();
            if let Some(generation) = *held {
                match check(&self.root, generation, &self.owner) {
                    Ok(()) => return Ok(generation),
                    Err(LeaseError::Fenced(_)) => {}
                    Err(err) => return Err(err),
                }
            }
        }
        self.acquire()
    }

    /// `Ok` while the lease file names the generation this handle acquired; `Fenced` once
    /// another instance acquired it (or if this handle never did). Blocking; one small read.
    pub fn check(&self) -> Result<(), LeaseError> {
        let held = self.held();
        match *held {
            Some(generation) => check(&self.root, generation, &self.owner),
            None => Err(Fenced {
                path: lease_path(&self.root),
                ours: Generation(0),
                current: Generation(0),
                current_owner: "-".to_owned(),
            }
            .into()),
        }
    }

    fn held(&self) -> MutexGuard<'_, Option<Generation>> {
        // Only a `Copy` value behind it: a panic elsewhere leaves it consistent.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The canonical path of `root`, or its absolute form while it does not exist.
fn registry_key(root: &Path) -> PathBuf {
    fs::canonicalize(root)
        .or_else(|_| std::path::absolute(root))
        .unwrap_or_else(|_| root.to_path_buf())
}

/// 128 random bits in hex (from `/dev/urandom`; the clock, pid and a counter if that fails).
fn new_owner_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut bytes = [0u8; 16];
    let random = File::open("/dev/urandom").and_then(|mut file| file.read_exact(&mut bytes));
    if random.is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let count = u128::from(COUNTER.fetch_add(1, Ordering::Relaxed));
        bytes = (nanos ^ (u128::from(std::process::id()) << 64) ^ (count << 96)).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_writes_and_nothing_else() {
        let held = Holder {
            generation: Generation(7),
            owner: "ab12".to_owned(),
        };
        assert_eq!(parse("ampere-lease v1 7 ab12\n"), Some(held));
        for bad in [
            "",
            "ampere-lease v1 7 ab12",
            "ampere-lease v1 x ab12\n",
            "ampere-lease v1 7\n",
            "ampere-lease v1 7 \n",
            "ampere-lease v1 7 ab12 extra\n",
            "ampere-lease v2 7 ab12\n",
            "ampere-lease v12 7 ab12\n",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_full_disk_the_descriptor_limit_and_a_device_error_are_faults_and_nothing_else_is() {
        let path = Path::new("/s/lease");
        let fault = |errno| io_fault(&io::Error::from_raw_os_error(errno), path);
        for (errno, kind, code) in [
            (libc::ENOSPC, StorageFaultKind::Full, "ENOSPC"),
            (libc::EDQUOT, StorageFaultKind::Full, "EDQUOT"),
            (libc::EMFILE, StorageFaultKind::FdLimit, "EMFILE"),
            (libc::ENFILE, StorageFaultKind::FdLimit, "ENFILE"),
            (libc::EIO, StorageFaultKind::Io, "EIO"),
        ] {
            let found = fault(errno).expect("a fault");
            assert_eq!((found.kind, found.code), (kind, code));
            assert_eq!(found.path.as_deref(), Some("/s/lease"));
        }
        for errno in [libc::EACCES, libc::ENOENT, libc::EROFS, libc::ENOTDIR] {
            assert_eq!(fault(errno), None, "errno {errno}");
        }
        assert_eq!(io_fault(&io::Error::other("no errno"), path), None);
        let full = fault(libc::ENOSPC).expect("full");
        assert_eq!(full.to_string(), "storage is full (ENOSPC) at /s/lease");
    }

    #[test]
    fn owner_ids_are_distinct_single_words() {
        let (a, b) = (new_owner_id(), new_owner_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn a_damaged_or_deleted_lease_fences_and_the_next_acquisition_replaces_it() {
        let root = std::env::temp_dir().join(format!("ampere-lease-{}", new_owner_id()));
        let ours = acquire(&root, "a").expect("acquire");
        assert_eq!(ours, Generation(1));
        check(&root, ours, "a").expect("ours");
        assert!(check(&root, ours, "b")
            .expect_err("other owner")
            .is_fenced());
        fs::write(lease_path(&root), "garbage").expect("damage");
        assert!(check(&root, ours, "a").expect_err("damaged").is_fenced());
        assert_eq!(acquire(&root, "b").expect("acquire"), Generation(1));
        fs::remove_file(lease_path(&root)).expect("delete");
        let err = check(&root, Generation(1), "b").expect_err("deleted");
        assert!(err.is_fenced(), "{err}");
        assert_eq!(acquire(&root, "c").expect("acquire"), Generation(1));
        assert_eq!(acquire(&root, "c").expect("acquire"), Generation(2));
        fs::remove_dir_all(&root).expect("clean up");
    }
}
