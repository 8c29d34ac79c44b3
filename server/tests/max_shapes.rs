//! `ELECTRIC_MAX_SHAPES` on the real binary over a real Postgres: beyond the limit the least
//! recently used shape is removed as `DELETE /v1/shape` removes one (its log directory gone,
//! its clients answered 409 pointing to a new handle), the other shapes keep serving, and a
//! restart with a lower limit evicts down to it once active.
//!
//! Method as in `delete.rs`: the real binary with only the variables under test, on a
//! database of this test binary's shared throwaway cluster, every wait bounded. The live shape
//! count is read from `ampere_shapes` on the Prometheus port, evictions from
//! `ampere_shapes_evicted_total`, shape logs from `<storage>/shapes/<handle>`.

use std::fs;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

mod common;

use common::{
    free_port, handle_of, http_get, items_database, spawn_active, stamp, Ampere, Reply, Scratch,
};

const DATABASE: &str = "max_shapes";
/// How long an eviction may take once due (the check runs right after a creation).
const EVICTION_WITHIN: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

/// One client's shape of `items`: its where clause (`id=<id>`), its handle and the offset its
/// last response ended at.
struct Shape {
    id: u32,
    handle: String,
    offset: String,
}

impl Shape {
    /// The initial sync of `where id=<id>`: creates the shape if none exists.
    fn sync(port: u16, id: u32) -> Self {
        let reply = get(
            port,
            &format!("/v1/shape?table=items&where=id%3D{id}&offset=-1"),
        );
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(reply.body.contains(&format!(r#""id":"{id}""#)), "{reply:?}");
        Self {
            id,
            handle: handle_of(&reply),
            offset: offset_of(&reply),
        }
    }

    /// The request this client sends next: its handle at its last offset.
    fn next_request(&self) -> String {
        format!(
            "/v1/shape?table=items&where=id%3D{}&handle={}&offset={}",
            self.id, self.handle, self.offset
        )
    }

    /// Reads on from the last offset; a 200 moves the offset on.
    fn read(&mut self, port: u16) -> Reply {
        let reply = get(port, &self.next_request());
        if reply.status == 200 {
            self.offset = offset_of(&reply);
        }
        reply
    }

    /// Reads on until a response carries `text` (within 10 s).
    fn read_until(&mut self, port: u16, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let reply = self.read(port);
            assert_eq!(reply.status, 200, "{reply:?}");
            if reply.body.contains(text) {
                return;
            }
            assert!(Instant::now() < deadline, "{text} never came: {reply:?}");
            sleep(POLL);
        }
    }

    /// The shape's log directory.
    fn dir(&self, storage: &Path) -> PathBuf {
        storage.join("shapes").join(&self.handle)
    }
}

#[test]
fn beyond_the_limit_the_least_recently_used_shape_is_evicted_and_its_clients_refetch() {
    // Goal: ELECTRIC_MAX_SHAPES=3 keeps at most 3 shapes, evicting the least recently read
    // one through the deletion path; a restart with a lower limit evicts down to it. Method:
    // shapes A, B, C, then A read again (B is least recently used), then D; then B's client
    // reads on; then a restart with ELECTRIC_MAX_SHAPES=2.
    let cluster = items_database(DATABASE);
    cluster
        .psql(
            DATABASE,
            "INSERT INTO items VALUES (2, 'two'), (3, 'three'), (4, 'four')",
        )
        .expect("insert rows");
    let scratch = Scratch::new("max-shapes");
    let storage = scratch.storage();
    let (port, metrics_port) = (free_port(), free_port());
    let metrics_text = metrics_port.to_string();
    let prometheus = ("ELECTRIC_PROMETHEUS_PORT", metrics_text.as_str());
    let vars = [("ELECTRIC_MAX_SHAPES", "3"), prometheus];
    let ampere = spawn_active(cluster, &scratch, DATABASE, port, &vars);

    let mut a = Shape::sync(port, 1);
    let b = Shape::sync(port, 2);
    let mut c = Shape::sync(port, 3);
    assert_eq!(a.read(port).status, 200);
    assert!(b.dir(&storage).is_dir(), "{:?}", b.dir(&storage));
    let mut d = Shape::sync(port, 4);

    wait_until_evicted(metrics_port, 1, 3);
    assert!(!b.dir(&storage).exists(), "B's log is still there");
    assert_eq!(shape_dirs(&storage).len(), 3, "{:?}", shape_dirs(&storage));
    assert_serving(port, [&mut a, &mut c, &mut d]);
    let log = ampere.stdout();
    assert!(log.contains("evicted: least recently used"), "{log}");
    assert!(
        log.contains("evicted the least recently used shapes beyond ELECTRIC_MAX_SHAPES"),
        "{log}"
    );

    // B's client reads on and syncs the new shape it is sent to. That shape counts too: A,
    // read least recently now, makes room for it.
    let mut b2 = refetch(port, &b);
    wait_until_evicted(metrics_port, 2, 3);
    assert!(!a.dir(&storage).exists(), "A's log is still there");

    // Every shape left has its snapshot recorded before the restart: each serves a change
    // made after it.
    cluster
        .psql(
            DATABASE,
            "UPDATE items SET title = title || '!' WHERE id IN (2, 3, 4)",
        )
        .expect("update rows");
    c.read_until(port, "three!");
    d.read_until(port, "four!");
    b2.read_until(port, "two!");
    stop(ampere);

    // A lower limit: once active, the shape created first of the three (none was used since
    // the start) is evicted; the rest keep serving at their offsets.
    let vars = [("ELECTRIC_MAX_SHAPES", "2"), prometheus];
    let ampere = spawn_active(cluster, &scratch, DATABASE, port, &vars);
    wait_until_evicted(metrics_port, 1, 2);
    assert!(!c.dir(&storage).exists(), "C's log is still there");
    assert_eq!(shape_dirs(&storage).len(), 2, "{:?}", shape_dirs(&storage));
    assert_serving(port, [&mut d, &mut b2]);
    refetch(port, &c);
    wait_until_evicted(metrics_port, 2, 2);
    stop(ampere);
}

/// Each shape's client reads on: 200.
fn assert_serving<const N: usize>(port: u16, shapes: [&mut Shape; N]) {
    for shape in shapes {
        let reply = shape.read(port);
        assert_eq!(reply.status, 200, "shape {}: {reply:?}", shape.id);
    }
}

/// The client of evicted shape `gone` reads on: 409 naming a new handle of its definition
/// (never `gone`'s: handles are never reissued), which it then syncs from the start.
fn refetch(port: u16, gone: &Shape) -> Shape {
    let stale = get(port, &gone.next_request());
    assert_eq!(stale.status, 409, "{stale:?}");
    let renewed = handle_of(&stale);
    assert_ne!(renewed, gone.handle, "a 409 never names the evicted handle");
    let (new, old) = (stamp(&renewed), stamp(&gone.handle));
    assert!(new > old, "{renewed} after {}", gone.handle);
    let shape = Shape::sync(port, gone.id);
    assert_eq!(shape.handle, renewed);
    shape
}

/// SIGTERM, and a clean exit within 20 s.
fn stop(mut ampere: Ampere) {
    ampere.terminate();
    let status = ampere.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "SIGTERM: {status}\n{}", ampere.output());
}

/// `GET path`, which must be answered.
fn get(port: u16, path: &str) -> Reply {
    http_get(port, path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

fn offset_of(reply: &Reply) -> String {
    let offset = reply.header("electric-offset");
    offset
        .unwrap_or_else(|| panic!("no offset: {reply:?}"))
        .to_owned()
}

/// Waits until `evicted` shapes were evicted since start and at most `max` are live, within
/// [`EVICTION_WITHIN`].
fn wait_until_evicted(metrics_port: u16, evicted: u32, max: u32) {
    let deadline = Instant::now() + EVICTION_WITHIN;
    loop {
        let text = get(metrics_port, "/metrics").body;
        let live = sample(&text, "ampere_shapes");
        let done = sample(&text, "ampere_shapes_evicted_total");
        if live <= f64::from(max) && done == f64::from(evicted) {
            return;
        }
        assert!(
            done <= f64::from(evicted),
            "{done} evictions, expected {evicted}"
        );
        assert!(
            Instant::now() < deadline,
            "still {live} shapes (limit {max}) and {done} evictions (expected {evicted}) after \
             {EVICTION_WITHIN:?}"
        );
        sleep(POLL);
    }
}

/// The value of the unlabelled sample `name` in a Prometheus exposition.
fn sample(text: &str, name: &str) -> f64 {
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '));
    let value = line.unwrap_or_else(|| panic!("no sample {name} in\n{text}"));
    value
        .parse()
        .unwrap_or_else(|_| panic!("{name}: {value:?}"))
}

/// The shape directories in `storage` (not those being created, `.<handle>.creating`).
fn shape_dirs(storage: &Path) -> Vec<String> {
    let entries = fs::read_dir(storage.join("shapes")).expect("read the shapes directory");
    let mut names: Vec<String> = entries
        .map(|entry| entry.expect("a directory entry").file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .collect();
    names.sort();
    names
}
