//! `DELETE /v1/shape` and admission control on the real binary over a real Postgres: a
//! deleted shape's handle is retired for good, across a restart too; and a burst of initial
//! requests beyond `ELECTRIC_MAX_CONCURRENT_REQUESTS` is shed with Electric's 503, after which
//! clients that retry as told all get their shape. The exact responses are the handler tests'
//! (`server/src/http/tests_delete.rs`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

mod common;

use ampere_io_real::embedded_pg::EmbeddedPostgres;
use common::{
    free_port, handle_of, http_get, http_request, items_database, parse_reply, spawn_active, stamp,
    Reply, Scratch,
};

#[test]
fn a_deleted_shape_gets_409_to_a_new_handle_and_stays_retired_across_a_restart() {
    // Goal: §1.5 end to end: the 202 follows the removal, the old handle's clients get 409
    // pointing to a new handle, and no restart brings the old handle back (ID-2).
    // Method: create, delete by definition, read with the old handle; restart on the same
    // storage and read with it again.
    let cluster = items_database("shape_delete");
    let scratch = Scratch::new("delete");
    let port = free_port();
    let deleting = [("ELECTRIC_ENABLE_INTEGRATION_TESTING", "true")];
    let mut ampere = spawn_active(cluster, &scratch, "shape_delete", port, &deleting);

    let initial = http_get(port, "/v1/shape?table=items&offset=-1").expect("initial sync");
    assert_eq!(initial.status, 200, "{initial:?}");
    let old = handle_of(&initial);

    let deleted = http_request(port, "DELETE", "/v1/shape?table=items").expect("delete");
    assert_eq!(deleted.status, 202, "{deleted:?}\n{}", ampere.output());
    assert_eq!(deleted.body, "");
    assert_eq!(deleted.header("electric-handle"), None);
    assert_eq!(deleted.header("cache-control"), Some("no-cache"));

    let stale_path = format!("/v1/shape?table=items&handle={old}&offset=0_0");
    let stale = http_get(port, &stale_path).expect("old handle");
    assert_eq!(stale.status, 409, "{stale:?}");
    let new = handle_of(&stale);
    assert!(stamp(&new) > stamp(&old), "{new} after {old}");
    let restarted = http_get(
        port,
        &format!("/v1/shape?table=items&offset=-1&expired_handle={old}"),
    )
    .expect("restart at -1");
    assert_eq!(restarted.status, 200, "{restarted:?}");
    assert_eq!(handle_of(&restarted), new);
    assert!(
        restarted.body.contains(r#""title":"one""#),
        "{}",
        restarted.body
    );
    let again = http_request(port, "DELETE", &format!("/v1/shape?handle={old}")).expect("again");
    assert_eq!(again.status, 404, "{again:?}");

    ampere.terminate();
    assert!(ampere.wait_exit(Duration::from_secs(20)).success());
    let log = ampere.stdout();
    assert!(log.contains("deleted by request"), "{log}");
    let mut ampere = spawn_active(cluster, &scratch, "shape_delete", port, &deleting);
    let stale = http_get(port, &stale_path).expect("old handle after the restart");
    assert_eq!(stale.status, 409, "{stale:?}\n{}", ampere.output());
    // `new` itself, or a later shape if the restart came before its snapshot was recorded
    // complete (an incomplete shape is removed at startup): never the deleted handle.
    let current = handle_of(&stale);
    assert_ne!(current, old, "the deleted handle is never reissued");
    assert!(
        stamp(&current) >= stamp(&new),
        "{current} after {new}\n{}",
        ampere.output()
    );
    let served = http_get(port, "/v1/shape?table=items&offset=-1").expect("after the restart");
    assert_eq!(served.status, 200, "{served:?}");
    assert_eq!(handle_of(&served), current);
    assert!(served.body.contains(r#""title":"one""#), "{}", served.body);
    ampere.terminate();
    assert!(ampere.wait_exit(Duration::from_secs(20)).success());
}

/// Simultaneous first requests, each on its own connection.
const CLIENTS: usize = 2_000;
/// Each client thread's stack: it only parses a small reply.
const CLIENT_STACK: usize = 256 * 1024;
/// How much ampere's resident memory may grow over the burst: every connection and every
/// waiting request is held at once, and nothing may grow with the requests shed.
const RSS_GROWTH_MAX_KIB: u64 = 192 * 1024;
/// `ELECTRIC_MAX_CONCURRENT_REQUESTS`'s `initial` limit under test.
const INITIAL_LIMIT: usize = 100;
/// How long the shape's snapshot is held up by a transaction in progress (SN-2 waits for it):
/// every first request arrives while the admitted ones still wait for chunk 0.
const SNAPSHOT_HELD: Duration = Duration::from_secs(4);
/// Everything, retries included, ends within this.
const DEADLINE: Duration = Duration::from_secs(50);

/// What one client saw: its first answer, then the answer its retries ended with.
struct Client {
    first: Reply,
    last: Reply,
    attempts: u32,
}

/// `GET /v1/shape?table=items&offset=-1` on a connection opened before `start`, sent when
/// every client is ready; then, as the official client does after a 503, waits `retry-after`
/// and asks again until it gets an answer other than 503 (or the deadline passes).
fn client(port: u16, start: &Barrier, deadline: Instant) -> Client {
    let mut stream = connect(port);
    start.wait();
    let first = exchange(&mut stream);
    let mut last = first.clone();
    let mut attempts = 1;
    while last.status == 503 && Instant::now() < deadline {
        let retry_after: u64 = last
            .header("retry-after")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("a 503 without retry-after: {last:?}"));
        thread::sleep(Duration::from_secs(retry_after));
        last = exchange(&mut connect(port));
        attempts += 1;
    }
    Client {
        first,
        last,
        attempts,
    }
}

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    stream
}

fn exchange(stream: &mut TcpStream) -> Reply {
    stream
        .write_all(
            b"GET /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\
              Connection: close\r\n\r\n",
        )
        .expect("send request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read reply");
    parse_reply(&raw).unwrap_or_else(|| panic!("bad reply: {:?}", String::from_utf8_lossy(&raw)))
}

/// Every client's first request at once, while a transaction with an xid is in progress when
/// the shape's snapshot starts: the snapshot waits for it to end (SN-2), so the admitted
/// requests wait for chunk 0 meanwhile. Returns what each client saw and how long it took.
fn burst(cluster: &'static EmbeddedPostgres, port: u16) -> (Vec<Client>, Duration) {
    let held = SNAPSHOT_HELD.as_secs();
    let blocker = thread::spawn(move || {
        cluster
            .psql(
                "admission",
                &format!("BEGIN; SELECT txid_current(); SELECT pg_sleep({held}); COMMIT"),
            )
            .expect("hold a transaction open")
    });
    thread::sleep(Duration::from_millis(500));

    let started = Instant::now();
    let deadline = started + DEADLINE;
    let start = Arc::new(Barrier::new(CLIENTS));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let start = Arc::clone(&start);
            thread::Builder::new()
                .stack_size(CLIENT_STACK)
                .spawn(move || client(port, &start, deadline))
                .expect("spawn a client thread")
        })
        .collect();
    let clients = clients
        .into_iter()
        .map(|c| c.join().expect("client thread"))
        .collect();
    let elapsed = started.elapsed();
    blocker.join().expect("blocker thread");
    (clients, elapsed)
}

/// Runs `work`, sampling the resident memory of process `pid` every 50 ms meanwhile; returns
/// its result and the highest sample (KiB).
fn peak_rss<T>(pid: u32, work: impl FnOnce() -> T) -> (T, u64) {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let sampler = thread::spawn(move || {
        let mut peak = 0;
        while stopped.recv_timeout(Duration::from_millis(50)).is_err() {
            peak = peak.max(common::rss_kib_of(pid));
        }
        peak
    });
    let result = work();
    stop.send(()).expect("stop the sampler");
    (result, sampler.join().expect("sampler"))
}

/// Electric's 503 for the initial limit, retried after 6 to 10 s.
fn assert_shed(reply: &Reply) {
    assert_eq!(
        reply.body,
        r#"{"code":"concurrent_request_limit_exceeded","message":"Concurrent initial request limit exceeded (limit: 100), please retry"}"#
    );
    let retry_after: u64 = reply
        .header("retry-after")
        .and_then(|s| s.parse().ok())
        .expect("retry-after");
    assert!((6..=10).contains(&retry_after), "{retry_after}");
    assert_eq!(reply.header("electric-internal-known-error"), Some("true"));
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(reply.header("surrogate-control"), Some("no-store"));
}

#[test]
fn a_burst_of_initial_requests_over_the_limit_is_shed_with_503_and_every_retrying_client_converges()
{
    // Goal: beyond the initial limit, requests are shed at once with Electric's 503 (not
    // queued), the admitted ones are served correctly, and clients retrying after
    // `retry-after` all get the shape, with memory bounded. Method: hold the shape's first
    // snapshot up with an open transaction while 2,000 clients send their first request at
    // once, sampling ampere's resident memory throughout; then let each
    // shed client retry as the official client does.
    let cluster = items_database("admission");
    let scratch = Scratch::new("admission");
    let port = free_port();
    let limits = r#"{"initial":100,"existing":10000}"#;
    let mut ampere = spawn_active(
        cluster,
        &scratch,
        "admission",
        port,
        &[("ELECTRIC_MAX_CONCURRENT_REQUESTS", limits)],
    );

    let rss_before = ampere.rss_kib();
    let ((clients, elapsed), rss_peak) = peak_rss(ampere.pid(), || burst(cluster, port));
    let rss_peak = rss_peak.max(rss_before);

    let admitted = clients.iter().filter(|c| c.first.status == 200).count();
    let shed: Vec<&Reply> = clients
        .iter()
        .map(|c| &c.first)
        .filter(|r| r.status == 503)
        .collect();
    let attempts: u32 = clients.iter().map(|c| c.attempts).sum();
    eprintln!(
        "{CLIENTS} simultaneous initial requests, limit {INITIAL_LIMIT}: {admitted} admitted, \
         {} shed; {attempts} requests in all; every client served after {elapsed:?}",
        shed.len()
    );
    eprintln!(
        "ampere RSS {} MiB before the burst, {} MiB at its peak",
        rss_before / 1024,
        rss_peak / 1024
    );
    assert!(
        rss_peak - rss_before < RSS_GROWTH_MAX_KIB,
        "RSS grew from {rss_before} KiB to {rss_peak} KiB"
    );
    assert_eq!(admitted + shed.len(), CLIENTS, "only 200s and 503s");
    assert!(
        (1..=INITIAL_LIMIT).contains(&admitted),
        "{admitted} admitted at once"
    );
    assert!(shed.len() >= CLIENTS - INITIAL_LIMIT, "{} shed", shed.len());
    shed.iter().for_each(|reply| assert_shed(reply));

    // Every client ends with the same correct answer: chunk 0 of the one shape.
    let reference = &clients[0].last;
    assert_eq!(reference.status, 200, "{reference:?}\n{}", ampere.output());
    assert!(
        reference.body.contains(r#""title":"one""#),
        "{}",
        reference.body
    );
    for c in &clients {
        assert_eq!(
            c.last.status, 200,
            "a client never got through: {:?}",
            c.last
        );
        assert_eq!(
            c.last.header("electric-handle"),
            reference.header("electric-handle")
        );
        assert_eq!(c.last.header("electric-offset"), Some("0_0"));
        assert_eq!(c.last.body, reference.body);
    }
    assert!(elapsed < DEADLINE, "{elapsed:?}");
    ampere.terminate();
    assert!(ampere.wait_exit(Duration::from_secs(20)).success());
}
