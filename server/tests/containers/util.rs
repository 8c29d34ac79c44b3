//! Small shared pieces: free ports, scratch directories, bounded waits.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

#[path = "../common/ports.rs"]
mod ports;
pub(crate) use ports::free_port;

/// `/tmp/ampere-ct-<pid>-<n>-<tag>`: storage dirs and process logs of one test. Removed on
/// drop unless `AMPERE_TEST_KEEP=1`; left-overs of dead test processes are swept at creation.
pub(crate) struct Scratch {
    pub(crate) root: PathBuf,
}

impl Scratch {
    pub(crate) fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        sweep_stale_dirs();
        let n = N.fetch_add(1, Ordering::Relaxed);
        let root = PathBuf::from(format!("/tmp/ampere-ct-{}-{n}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap_or_else(|e| panic!("create {}: {e}", root.display()));
        Self { root }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var("AMPERE_TEST_KEEP").is_ok_and(|v| v == "1") {
            eprintln!("containers: kept {}", self.root.display());
        } else {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

fn sweep_stale_dirs() {
    for e in fs::read_dir("/tmp").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("ampere-ct-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// `cp -a src dst` (a storage directory, while no ampere uses it).
pub(crate) fn copy_dir(src: &Path, dst: &Path) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .status()
        .unwrap_or_else(|e| panic!("cp: {e}"));
    assert!(
        st.success(),
        "cp -a {} {} failed",
        src.display(),
        dst.display()
    );
}

/// The last `n` lines of a text file.
pub(crate) fn tail(path: &Path, n: usize) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls `check` every `every` until it returns `Some`, or gives up after `timeout`.
pub(crate) async fn poll_until<T, F, Fut>(
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let t = Instant::now();
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if t.elapsed() >= timeout {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// Seconds with one decimal, for summaries.
pub(crate) fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
