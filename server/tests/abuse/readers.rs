//! Many clients catching up on one large chunk at once: the initial sync of a popular shape.
//! Each response used to read the whole 10 MiB chunk into a buffer of its own and copy it
//! into a second one, so 1,000 such clients took ampere to 7.7 GB. A response now sends the
//! bytes the store read, shared by every response of the same chunk in flight; memory grows
//! with the distinct chunks being sent, not with the clients.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::{self, sleep, JoinHandle};
use std::time::{Duration, Instant};

use crate::common::sockets::connect_many;
use crate::common::{self, free_port, http_get, shared_database, wait_for_health, Ampere, Scratch};

/// Concurrent readers of the chunk.
const READERS: usize = 300;
/// Rows of `big`, each about 1 KB of JSON: the first snapshot chunk fills ampere's default
/// 10 MiB chunk size.
const ROWS: u32 = 12_000;
/// How much ampere's RSS may grow while every reader holds the chunk half-read. One copy of
/// the chunk per reader would be 3 GB.
const GROWTH_MAX_KIB: u64 = 160 * 1024;

/// Sends the request for chunk 0 on `stream` and leaves the answer unread.
fn request_chunk(stream: &mut TcpStream) {
    stream
        .write_all(b"GET /v1/shape?table=big&offset=-1 HTTP/1.1\r\nHost: ampere\r\nConnection: close\r\n\r\n")
        .expect("send request");
}

/// Reads one answer to the end on a thread: its status line and how many bytes followed the
/// head.
fn drain(mut stream: TcpStream) -> JoinHandle<(String, usize)> {
    thread::spawn(move || {
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("read timeout");
        let mut raw = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut head_len = None;
        let mut body_len = 0;
        loop {
            let n = stream.read(&mut buf).expect("read the answer");
            if n == 0 {
                break;
            }
            match head_len {
                Some(_) => body_len += n,
                None => {
                    raw.extend_from_slice(&buf[..n]);
                    if let Some(end) = common::find(&raw, b"\r\n\r\n") {
                        head_len = Some(end + 4);
                        body_len = raw.len() - end - 4;
                    }
                }
            }
        }
        let status = String::from_utf8_lossy(&raw)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        (status, body_len)
    })
}

/// ampere on a database whose table `big` holds [`ROWS`] rows of about 1 KB each.
fn start_on_a_big_table(name: &str) -> (Ampere, u16, Scratch) {
    let cluster = shared_database(name);
    cluster
        .psql(
            name,
            &format!(
                "CREATE TABLE big (id int PRIMARY KEY, body text); \
                 INSERT INTO big SELECT g, repeat('x', 1000) FROM generate_series(1, {ROWS}) g"
            ),
        )
        .expect("create big");
    let scratch = Scratch::new(name);
    let storage = scratch.storage();
    let port = free_port();
    let port_text = port.to_string();
    let url = cluster.url("postgres", name);
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("ELECTRIC_STORAGE_DIR", storage.to_str().expect("utf-8")),
        ("ELECTRIC_INSECURE", "true"),
        ("ELECTRIC_PORT", port_text.as_str()),
        ("ELECTRIC_REPLICATION_STREAM_ID", name),
        ("CLEANUP_REPLICATION_SLOTS_ON_SHUTDOWN", "true"),
        // every reader is an initial request: none may be turned away
        (
            "ELECTRIC_MAX_CONCURRENT_REQUESTS",
            r#"{"initial": 1000, "existing": 1000}"#,
        ),
    ];
    let mut ampere = Ampere::spawn(&scratch, &vars);
    wait_for_health(&mut ampere, port, 200, Duration::from_secs(20));
    (ampere, port, scratch)
}

#[test]
fn three_hundred_readers_of_one_10_mib_chunk_share_it_instead_of_holding_a_copy_each() {
    let _exclusive = crate::exclusive();
    let (mut ampere, port, _scratch) = start_on_a_big_table("abuse_chunk_readers");
    // The snapshot, read once whole: the chunk exists, and its size is what each reader gets.
    let first = http_get(port, "/v1/shape?table=big&offset=-1").expect("chunk 0");
    assert_eq!(first.status, 200, "{first:?}");
    let chunk_len = first.body.len();
    assert!(
        chunk_len > 9 * 1024 * 1024,
        "chunk 0 is {chunk_len} bytes, not a full 10 MiB chunk"
    );
    drop(first);
    sleep(Duration::from_millis(500));
    let pid = ampere.pid();
    let rss_before = common::rss_kib_of(pid);

    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let (mut readers, failed) = connect_many(addr, READERS);
    assert_eq!(failed, 0, "connects failed");
    let started = Instant::now();
    for stream in &mut readers {
        request_chunk(stream);
    }
    // Every response is under way and stuck on a full socket; ampere holds the rest of each.
    let mut rss_peak = 0;
    while started.elapsed() < Duration::from_secs(3) {
        rss_peak = rss_peak.max(common::rss_kib_of(pid));
        sleep(Duration::from_millis(20));
    }
    let drains: Vec<_> = readers.into_iter().map(drain).collect();
    let answers: Vec<(String, usize)> = drains
        .into_iter()
        .map(|d| d.join().expect("reader"))
        .collect();
    let served_in = started.elapsed();
    let rss_after = common::rss_kib_of(pid);
    assert!(
        ampere.try_status().is_none(),
        "ampere exited:\n{}",
        ampere.output()
    );

    eprintln!(
        "{READERS} readers of a {chunk_len}-byte chunk: RSS KiB before {rss_before}, peak \
         {rss_peak} (+{}), after {rss_after}; all served in {served_in:?}",
        rss_peak.saturating_sub(rss_before)
    );
    for (i, (status, body_len)) in answers.iter().enumerate() {
        assert!(status.contains(" 200 "), "reader {i}: {status}");
        assert_eq!(*body_len, chunk_len, "reader {i} got a short body");
    }
    assert!(
        rss_peak.saturating_sub(rss_before) < GROWTH_MAX_KIB,
        "RSS grew by {} KiB with {READERS} readers of one chunk (bound {GROWTH_MAX_KIB} KiB)",
        rss_peak.saturating_sub(rss_before)
    );
}
