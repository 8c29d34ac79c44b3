//! A full disk: shape storage on a small tmpfs that a filler file fills to `ENOSPC` while a
//! writer inserts rows in Postgres. ampere must stay up, keep serving what is durable,
//! acknowledge nothing that is not durable, start again on the full disk, and resume by itself
//! once space is freed — every row reaching the client exactly once.
//!
//! Needs root (it mounts a tmpfs); it fails with a message saying so otherwise.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, sleep, JoinHandle};
use std::time::{Duration, Instant};

use ampere_io_real::embedded_pg::EmbeddedPostgres;

use crate::common::{free_port, http_get, items_database, wait_for_health, Ampere, Scratch};

const DB: &str = "abuse_disk";
/// Rows this wide fill a tmpfs page every two rows, so a flush on a full disk needs a new page.
const TITLE_BYTES: usize = 1500;

/// A tmpfs of `size_mib` mounted at `dir`; unmounted (by this path) on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: PathBuf, size_mib: u32) -> Self {
        fs::create_dir_all(&dir).expect("create mount point");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(&dir)
            .output()
            .expect("run mount");
        assert!(
            output.status.success(),
            "this test needs to mount a tmpfs (run it as root, or in a container with \
             CAP_SYS_ADMIN): mount -t tmpfs {}: {}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Self { dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy (a child not reaped yet): detach it; it goes once unused.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Writes `path` until the file system says `ENOSPC`; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut file = File::create(path).expect("create filler");
    let mut written = 0u64;
    for chunk in [1 << 20, 4096, 1] {
        let buf = vec![0u8; chunk];
        loop {
            match file.write(&buf) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
    written
}

/// Inserts one row every 100 ms until stopped, recording each id with
/// `pg_current_wal_insert_lsn()` taken inside its transaction (below its commit record).
struct Writer {
    stop: Arc<AtomicBool>,
    rows: Arc<Mutex<Vec<(u32, u64)>>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    fn start(cluster: &'static EmbeddedPostgres, first_id: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let rows = Arc::new(Mutex::new(Vec::new()));
        let (flag, log) = (Arc::clone(&stop), Arc::clone(&rows));
        let thread = thread::spawn(move || {
            let mut id = first_id;
            while !flag.load(Ordering::SeqCst) {
                let sql = format!(
                    "INSERT INTO items VALUES ({id}, repeat('x', {TITLE_BYTES})); \
                     SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint"
                );
                let lsn = cluster.psql(DB, &sql).expect("insert a row");
                let lsn = lsn.trim().parse().expect("an LSN as a number");
                log.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((id, lsn));
                id += 1;
                sleep(Duration::from_millis(100));
            }
        });
        Self {
            stop,
            rows,
            thread: Some(thread),
        }
    }

    fn rows(&self) -> Vec<(u32, u64)> {
        self.rows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn finish(mut self) -> Vec<(u32, u64)> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("writer thread");
        }
        self.rows()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A protocol-following client of one shape: its handle, offset and every insert it saw.
struct Client {
    handle: String,
    offset: String,
    /// id → times it arrived as an insert.
    inserts: BTreeMap<u32, u32>,
}

impl Client {
    fn create(port: u16) -> Self {
        let reply = http_get(port, "/v1/shape?table=items&offset=-1").expect("create the shape");
        assert_eq!(reply.status, 200, "{reply:?}");
        let mut client = Self {
            handle: reply.header("electric-handle").expect("handle").to_owned(),
            offset: reply.header("electric-offset").expect("offset").to_owned(),
            inserts: BTreeMap::new(),
        };
        client.take(&reply.body);
        client
    }

    /// Follows the shape (non-live requests) until it says up-to-date.
    fn sync(&mut self, port: u16) {
        for _ in 0..1000 {
            let path = format!(
                "/v1/shape?table=items&handle={}&offset={}",
                self.handle, self.offset
            );
            let reply = http_get(port, &path).expect("read the shape");
            assert_eq!(reply.status, 200, "{path}: {reply:?}");
            self.take(&reply.body);
            self.offset = reply.header("electric-offset").expect("offset").to_owned();
            if reply.header("electric-up-to-date").is_some() {
                return;
            }
        }
        panic!("the shape never said up-to-date");
    }

    fn take(&mut self, body: &str) {
        for id in insert_ids(body) {
            *self.inserts.entry(id).or_default() += 1;
        }
    }
}

/// The ids of the insert messages in a log body.
fn insert_ids(body: &str) -> Vec<u32> {
    let messages: Vec<serde_json::Value> = serde_json::from_str(body).expect("a JSON array");
    messages
        .iter()
        .filter(|m| m["headers"]["operation"] == "insert")
        .map(|m| {
            let id = m["value"]["id"].as_str().expect("id as text");
            id.parse().expect("numeric id")
        })
        .collect()
}

fn slot_confirmed_flush(cluster: &EmbeddedPostgres) -> u64 {
    let sql = format!(
        "SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots \
         WHERE slot_name = 'electric_slot_{DB}'"
    );
    let text = cluster.psql(DB, &sql).expect("read the slot");
    text.trim().parse().unwrap_or(0)
}

/// Polls `/v1/health` until its body names a full disk; panics if ampere exits first.
fn wait_for_full_disk(ampere: &mut Ampere, port: u16, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Some(exit) = ampere.try_status() {
            panic!(
                "ampere exited ({exit}) on a full disk:\n{}",
                ampere.output()
            );
        }
        if let Ok(reply) = http_get(port, "/v1/health") {
            if reply.body.contains(r#""storage":"full""#) {
                assert_eq!(reply.status, 202, "{reply:?}");
                return reply.body;
            }
        }
        assert!(
            Instant::now() < deadline,
            "health never named the full disk within {within:?}:\n{}",
            ampere.output()
        );
        sleep(Duration::from_millis(100));
    }
}

/// The snapshot (`offset=-1`) of the shape: must keep answering 200 with the same rows.
fn snapshot_ids(port: u16, handle: &str) -> Vec<u32> {
    let path = format!("/v1/shape?table=items&handle={handle}&offset=-1");
    let reply = http_get(port, &path).expect("read the snapshot");
    assert_eq!(reply.status, 200, "{reply:?}");
    insert_ids(&reply.body)
}

/// Creating another shape while storage cannot be written: 503 with Retry-After.
fn assert_creation_refused(port: u16) {
    let reply =
        http_get(port, "/v1/shape?table=items&where=id%3E1000000&offset=-1").expect("create");
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(reply.header("retry-after").is_some(), "{reply:?}");
}

/// While the disk is full: health names it (202), the metric says so, the durable snapshot
/// and log are served, and the slot confirms nothing the log does not hold. Returns the rows
/// not durable at that point and the slot's `confirmed_flush_lsn` then.
fn assert_degraded(
    cluster: &EmbeddedPostgres,
    metrics_port: u16,
    port: u16,
    client: &mut Client,
    writer: &Writer,
    snapshot: &[u32],
    before_fill: &[u32],
) -> (Vec<(u32, u64)>, u64) {
    let metrics = http_get(metrics_port, "/metrics").expect("scrape");
    assert!(
        metrics
            .body
            .contains("ampere_storage_degraded{reason=\"full\"} 1"),
        "{}",
        metrics.body
    );
    assert_eq!(snapshot_ids(port, &client.handle), snapshot);
    // Let rows the log cannot take pile up in Postgres.
    sleep(Duration::from_secs(1));
    // Slot first, then the log (which only grows): a row missing from the log was missing
    // when the slot was read.
    let confirmed = slot_confirmed_flush(cluster);
    client.sync(port);
    let not_durable: Vec<(u32, u64)> = writer
        .rows()
        .into_iter()
        .filter(|(id, _)| !client.inserts.contains_key(id))
        .collect();
    assert!(
        !not_durable.is_empty(),
        "every row became durable on a full disk?"
    );
    // And it did confirm what was durable before the fill (acks flowed): the check above is
    // not met by a slot that never moved.
    let acked_before = writer
        .rows()
        .into_iter()
        .filter(|(id, _)| before_fill.contains(id))
        .map(|(_, lsn)| lsn)
        .max()
        .expect("rows durable before the fill");
    assert!(
        confirmed > acked_before,
        "slot confirmed {confirmed:#x}, not past {acked_before:#x}, durable before the fill"
    );
    for (id, lsn) in &not_durable {
        assert!(
            confirmed <= *lsn,
            "slot confirmed {confirmed:#x}, past row {id} (inserted below {lsn:#x}), which \
             the shape log does not hold"
        );
    }
    assert_creation_refused(port);
    (not_durable, confirmed)
}

/// Follows the shape until it holds every row in `expected`, then checks each arrived once,
/// nothing else did, and health no longer names a storage fault.
fn assert_converges_exactly_once(port: u16, client: &mut Client, expected: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        client.sync(port);
        if expected.iter().all(|id| client.inserts.contains_key(id)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the shape never converged: missing {:?}",
            expected
                .iter()
                .filter(|id| !client.inserts.contains_key(id))
                .collect::<Vec<_>>()
        );
        sleep(Duration::from_millis(200));
    }
    let duplicates: Vec<(&u32, &u32)> = client.inserts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicates.is_empty(), "rows seen twice: {duplicates:?}");
    let unknown: Vec<&u32> = client
        .inserts
        .keys()
        .filter(|id| !expected.contains(id))
        .collect();
    assert!(unknown.is_empty(), "rows never inserted: {unknown:?}");
    let health = http_get(port, "/v1/health").expect("health");
    assert!(
        !health.body.contains("storage"),
        "still degraded: {}",
        health.body
    );
}

/// SIGTERM, then a start on the still-full disk, which must serve the shape read-only.
/// Returns the new process, the old one's output and how long until health named the fault.
fn restart_on_full_disk(
    ampere: Ampere,
    scratch: &Scratch,
    vars: &[(&str, &str)],
    port: u16,
    client: &mut Client,
    snapshot: &[u32],
) -> (Ampere, String, Duration) {
    let first_output = stop(ampere);
    let mut ampere = Ampere::spawn(scratch, vars);
    let restarted = Instant::now();
    wait_for_full_disk(&mut ampere, port, Duration::from_secs(20));
    let serving_after_restart = restarted.elapsed();
    assert_eq!(snapshot_ids(port, &client.handle), snapshot);
    client.sync(port);
    (ampere, first_output, serving_after_restart)
}

fn stop(mut ampere: Ampere) -> String {
    ampere.terminate();
    let status = ampere.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "SIGTERM: {status}:\n{}", ampere.output());
    ampere.output()
}

#[test]
fn a_full_disk_degrades_to_read_only_and_replication_resumes_by_itself_once_space_is_freed() {
    let _exclusive = crate::exclusive();
    let started = Instant::now();
    let cluster = items_database(DB);
    let scratch = Scratch::new("disk");
    let disk = Tmpfs::mount(scratch.path("disk"), 16);
    let storage = disk.dir.join("storage");
    let filler = disk.dir.join("filler");
    let (port, metrics_port) = (free_port(), free_port());
    let (port_text, metrics_text) = (port.to_string(), metrics_port.to_string());
    let url = cluster.url("postgres", DB);
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("ELECTRIC_REPLICATION_STREAM_ID", DB),
        ("ELECTRIC_STORAGE_DIR", storage.to_str().expect("utf-8")),
        ("ELECTRIC_INSECURE", "true"),
        ("ELECTRIC_PORT", port_text.as_str()),
        ("ELECTRIC_PROMETHEUS_PORT", metrics_text.as_str()),
    ];
    let mut ampere = Ampere::spawn(&scratch, &vars);
    wait_for_health(&mut ampere, port, 200, Duration::from_secs(20));
    let mut client = Client::create(port);
    client.sync(port);
    let snapshot = snapshot_ids(port, &client.handle);
    assert_eq!(snapshot, [1]);

    // Rows flow while the disk has room; then the disk fills and the next flush fails.
    let writer = Writer::start(cluster, 2);
    sleep(Duration::from_secs(1));
    client.sync(port);
    let before_fill: Vec<u32> = client.inserts.keys().copied().collect();
    let filled = fill(&filler);
    let full_at = Instant::now();
    let health = wait_for_full_disk(&mut ampere, port, Duration::from_secs(20));
    let degraded_after = full_at.elapsed();
    let (not_durable, confirmed) = assert_degraded(
        cluster,
        metrics_port,
        port,
        &mut client,
        &writer,
        &snapshot,
        &before_fill,
    );

    // A restart on the full disk serves the existing shape read-only.
    let (mut ampere, first_output, serving_after_restart) =
        restart_on_full_disk(ampere, &scratch, &vars, port, &mut client, &snapshot);

    // Free the space: replication resumes by itself, and every row arrives exactly once.
    fs::remove_file(&filler).expect("remove the filler");
    let freed = Instant::now();
    wait_for_health(&mut ampere, port, 200, Duration::from_secs(40));
    let resumed_after = freed.elapsed();
    sleep(Duration::from_secs(1));
    let inserted = writer.finish();
    let expected: Vec<u32> = std::iter::once(1)
        .chain(inserted.iter().map(|(id, _)| *id))
        .collect();
    assert_converges_exactly_once(port, &mut client, &expected);
    let log = format!("{first_output}{}", stop(ampere));
    assert!(
        log.contains("storage is full (ENOSPC)"),
        "the log never named the cause:\n{log}"
    );
    let total = started.elapsed();
    println!(
        "full disk: filler {filled} bytes; health named it after {degraded_after:?} ({health}); \
         rows: {} inserted, {} durable before the fill, {} not durable while full \
         (slot confirmed {confirmed:#x}), 0 lost, 0 duplicated; restart on the full disk \
         served the shape after {serving_after_restart:?}; replication resumed \
         {resumed_after:?} after freeing space; total {total:?}",
        expected.len(),
        before_fill.len(),
        not_durable.len(),
    );
    assert!(total < Duration::from_secs(90), "took {total:?}");
}
