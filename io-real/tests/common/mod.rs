//! Helpers shared by io-real's integration tests.
// Each test binary compiles this module; `pub` items are reachable from the binary's root.
#![allow(unreachable_pub, dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A fresh directory under /tmp, deleted on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// `/tmp/ampere-<tag>-<pid>-<nanos>-<n>`.
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("ampere-{tag}-{}-{nanos}-{n}", std::process::id());
        let path = PathBuf::from("/tmp").join(name);
        fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
