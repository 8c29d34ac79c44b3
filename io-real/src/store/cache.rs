//! A bounded cache of open shape-log files, so the store's file descriptors grow with the logs
//! being read or written, not with the shapes that exist (issue 12: two descriptors per shape
//! for the life of the process took 2,000 shapes past a 4,096 limit, and every restart opened
//! them all again).
//!
//! Files are opened on demand and closed least recently used first. A file is handed out as
//! an `Arc<File>`: one evicted while a read or a flush uses it stays open until that use ends,
//! so eviction never fails an operation in progress; descriptors are at most the capacity plus
//! the operations in flight. Each entry remembers the `(dev, ino)` it was opened as, and a
//! caller names the file it expects: a path that now holds another file (a shape removed and
//! its handle's directory recreated, a follower's view of files a new writer replaced) is an
//! error, never someone else's bytes.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::fsutil::lock;

/// How many shape-log files the store keeps open at once.
///
/// Derived from the process's soft `RLIMIT_NOFILE` when the store opens
/// ([`OpenFileBudget::from_fd_limit`]): a quarter of it, at least [`OpenFileBudget::MIN`] and at
/// most [`OpenFileBudget::MAX`]. A quarter, because the rest is what HTTP connections (the
/// server caps them below the limit), the Postgres pool and replication connection, SQLite
/// and the files opened for a moment (snapshot chunks, `shape.json`, directory `fsync`s) need;
/// an active shape takes two entries (data and index), so the default 1,024 still serves 128
/// shapes' logs without reopening. At least 64, else a small limit would reopen files on
/// every read; at most 4,096, past which more open files buy nothing but kernel memory (a
/// reopen costs an `open` and an `fstat`, microseconds against the reads and `fsync`s it
/// serves).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct OpenFileBudget(usize);

impl OpenFileBudget {
    /// The fewest files a budget derived from the fd limit keeps open.
    pub const MIN: usize = 64;
    /// The most files a budget derived from the fd limit keeps open.
    pub const MAX: usize = 4096;

    /// Exactly `files` open files (at least one): for tests, and for callers that budget
    /// descriptors themselves.
    pub fn new(files: usize) -> Self {
        Self(files.max(1))
    }

    /// A quarter of the soft `RLIMIT_NOFILE`, within [`Self::MIN`]..=[`Self::MAX`] (the type's
    /// docs say why); [`Self::MIN`] if the limit cannot be read.
    pub fn from_fd_limit() -> Self {
        Self::for_fd_limit(soft_fd_limit())
    }

    /// The budget for a soft fd limit of `limit` (`None`: unknown).
    pub fn for_fd_limit(limit: Option<u64>) -> Self {
        let quarter = limit.map_or(0, |limit| usize::try_from(limit / 4).unwrap_or(usize::MAX));
        Self(quarter.clamp(Self::MIN, Self::MAX))
    }

    /// How many files.
    pub fn files(self) -> usize {
        self.0
    }
}

/// The soft `RLIMIT_NOFILE`, if it can be read (`RLIM_INFINITY` reads as `u64::MAX`).
fn soft_fd_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a valid, exclusive pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    Some(limit.rlim_cur)
}

/// Which file a path held when a shape was opened: another file at that path is not it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct FileId {
    pub(super) dev: u64,
    pub(super) ino: u64,
}

impl FileId {
    pub(super) fn of(meta: &Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// Files are cached per path and access: a writer's read-write handle and a follower's
/// read-only one are different entries.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct Key {
    path: PathBuf,
    writable: bool,
}

struct Entry {
    file: Arc<File>,
    id: FileId,
    /// When it was last handed out: its key in [`Lru::by_use`].
    used: u64,
}

#[derive(Default)]
struct Lru {
    entries: HashMap<Key, Entry>,
    /// Keys by last use, oldest first.
    by_use: BTreeMap<u64, Key>,
    clock: u64,
}

impl Lru {
    fn touch(&mut self, key: &Key) -> Option<(Arc<File>, FileId)> {
        self.clock += 1;
        let now = self.clock;
        let entry = self.entries.get_mut(key)?;
        self.by_use.remove(&entry.used);
        entry.used = now;
        self.by_use.insert(now, key.clone());
        Some((Arc::clone(&entry.file), entry.id))
    }

    fn remove(&mut self, key: &Key) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        self.by_use.remove(&entry.used);
        Some(entry)
    }

    fn insert(&mut self, key: Key, file: Arc<File>, id: FileId) {
        self.clock += 1;
        let used = self.clock;
        self.by_use.insert(used, key.clone());
        let replaced = self.entries.insert(key, Entry { file, id, used });
        assert!(
            replaced.is_none(),
            "lru-insert: the caller removed the key first"
        );
    }

    /// Removes least recently used entries until at most `capacity` remain; they are returned
    /// so that their descriptors close outside the lock.
    fn evict_to(&mut self, capacity: usize) -> Vec<Entry> {
        let mut evicted = Vec::new();
        while self.entries.len() > capacity {
            let Some((_, key)) = self.by_use.pop_first() else {
                break;
            };
            evicted.extend(self.entries.remove(&key));
        }
        assert_eq!(
            self.entries.len(),
            self.by_use.len(),
            "lru-consistent: one use per entry"
        );
        evicted
    }
}

/// The store's open shape-log files (module docs). Shared by every shape of one store.
pub(super) struct FileCache {
    capacity: usize,
    lru: Mutex<Lru>,
}

impl FileCache {
    pub(super) fn new(budget: OpenFileBudget) -> Self {
        Self {
            capacity: budget.files(),
            lru: Mutex::default(),
        }
    }

    /// The file at `path`, opened read-write if `writable` (else read-only) unless cached.
    /// It must be the file `id`: if the path holds another one now, `NotFound` (the file the
    /// caller knew is gone from there). Blocking when it opens.
    pub(super) fn get(&self, path: &Path, writable: bool, id: FileId) -> io::Result<Arc<File>> {
        let key = Key {
            path: path.to_path_buf(),
            writable,
        };
        if let Some((file, cached)) = lock(&self.lru).touch(&key) {
            if cached == id {
                return Ok(file);
            }
        }
        let file = OpenOptions::new().read(true).write(writable).open(path)?;
        let opened = FileId::of(&file.metadata()?);
        let mut lru = lock(&self.lru);
        // Another thread may have opened it meanwhile, or the entry may be a file the path
        // held before: keep one entry, of the file the path holds now.
        let existing = lru.remove(&key);
        let file = match &existing {
            Some(entry) if entry.id == opened => Arc::clone(&entry.file),
            _ => Arc::new(file),
        };
        lru.insert(key, Arc::clone(&file), opened);
        // The newest entry is evicted last: `file` stays cached (capacity is at least one).
        let evicted = lru.evict_to(self.capacity);
        drop(lru);
        drop((existing, evicted));
        if opened != id {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} was replaced by another file", path.display()),
            ));
        }
        Ok(file)
    }

    /// Closes every cached file under `dir` (a shape removed or gone): its space is freed
    /// once the last read using one ends, not when it would have been evicted.
    pub(super) fn forget_under(&self, dir: &Path) {
        let forgotten: Vec<Entry> = {
            let mut lru = lock(&self.lru);
            let keys: Vec<Key> = lru
                .entries
                .keys()
                .filter(|key| key.path.starts_with(dir))
                .cloned()
                .collect();
            keys.iter().filter_map(|key| lru.remove(key)).collect()
        };
        drop(forgotten);
    }

    /// Files open in the cache now (those handed out and evicted since are not counted).
    pub(super) fn len(&self) -> usize {
        lock(&self.lru).entries.len()
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Self {
            let path = std::env::temp_dir()
                .join(format!("ampere-file-cache-{}-{tag}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).expect("create dir");
            Self(path)
        }

        fn file(&self, name: &str, body: &str) -> (PathBuf, FileId) {
            let path = self.0.join(name);
            fs::write(&path, body).expect("write");
            let id = FileId::of(&fs::metadata(&path).expect("stat"));
            (path, id)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn read_all(file: &File) -> String {
        let len = file.metadata().expect("stat").len();
        let mut buf = vec![0u8; usize::try_from(len).expect("small")];
        std::os::unix::fs::FileExt::read_exact_at(file, &mut buf, 0).expect("read");
        String::from_utf8(buf).expect("utf-8")
    }

    #[test]
    fn the_least_recently_used_file_is_closed_first_and_a_handed_out_one_stays_readable() {
        let dir = Dir::new("lru");
        let cache = FileCache::new(OpenFileBudget::new(2));
        let (a, a_id) = dir.file("a", "alpha");
        let (b, b_id) = dir.file("b", "beta");
        let (c, c_id) = dir.file("c", "gamma");
        let held = cache.get(&a, false, a_id).expect("a");
        cache.get(&b, false, b_id).expect("b");
        cache
            .get(&a, false, a_id)
            .expect("a again: now b is the oldest");
        cache.get(&c, false, c_id).expect("c evicts b");
        assert_eq!(cache.len(), 2);
        let keys: Vec<PathBuf> = lock(&cache.lru)
            .entries
            .keys()
            .map(|k| k.path.clone())
            .collect();
        assert!(keys.contains(&a) && keys.contains(&c), "{keys:?}");
        cache.get(&b, false, b_id).expect("b evicts a");
        assert!(!lock(&cache.lru).entries.keys().any(|k| k.path == a));
        assert_eq!(
            read_all(&held),
            "alpha",
            "an evicted file stays open for its user"
        );
    }

    #[test]
    fn a_path_that_now_holds_another_file_is_not_found() {
        let dir = Dir::new("replaced");
        let cache = FileCache::new(OpenFileBudget::new(4));
        let (a, old) = dir.file("a", "old");
        cache.get(&a, false, old).expect("a");
        fs::remove_file(&a).expect("remove");
        let (_, new) = dir.file("a", "new");
        assert_ne!(old, new);
        let file = cache
            .get(&a, false, new)
            .expect("the new file, not the cached old one");
        assert_eq!(read_all(&file), "new");
        let err = cache
            .get(&a, false, old)
            .expect_err("the old file is no longer there");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert_eq!(cache.len(), 1);
        cache.forget_under(&dir.0);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn the_budget_is_a_quarter_of_the_fd_limit_within_its_bounds() {
        assert_eq!(OpenFileBudget::for_fd_limit(Some(1024)).files(), 256);
        assert_eq!(OpenFileBudget::for_fd_limit(Some(100)).files(), 64);
        assert_eq!(OpenFileBudget::for_fd_limit(None).files(), 64);
        assert_eq!(OpenFileBudget::for_fd_limit(Some(u64::MAX)).files(), 4096);
        assert_eq!(OpenFileBudget::new(0).files(), 1);
    }
}
