//! Live SSE (`live=true&live_sse=true`) on the real binary over a real Postgres: thousands of
//! concurrent event streams cost little memory each, and every one of them receives a change.
//! The protocol details (framing, keep-alives, the 60 s end, resuming) are the handler tests'
//! (`server/src/http/tests.rs`) and the official client's (`conformance/test/07-sse.test.mjs`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

mod common;

use ampere_io_real::embedded_pg::EmbeddedPostgres;
use common::{
    find, free_port, http_get, items_database, raise_own_fd_limit, wait_for_health, Ampere, Scratch,
};

const STREAMS: usize = 2_000;
/// What one idle event stream may cost the server: its connection, task and response state.
const BYTES_PER_STREAM_MAX: u64 = 64 * 1024;

/// Opens an event stream at `offset` and reads its response head; panics unless it is a 200
/// event stream.
fn open_stream(port: u16, handle: &str, offset: &str) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let request = format!(
        "GET /v1/shape?table=items&handle={handle}&offset={offset}&live=true&live_sse=true \
         HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).expect("send request");
    let head = read_until(&mut stream, b"\r\n\r\n");
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    stream
}

/// Reads from `stream` until `needle` has arrived; returns everything read.
fn read_until(stream: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0_u8; 4096];
    while find(&seen, needle).is_none() {
        let n = stream.read(&mut buf).expect("read");
        assert!(
            n > 0,
            "closed before {needle:?}: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    seen
}

/// ampere on `sse_streams`, and the handle of `items`'s shape read up to date (`0_inf`).
fn ampere_with_a_caught_up_shape(
    cluster: &EmbeddedPostgres,
    scratch: &Scratch,
) -> (Ampere, u16, String) {
    let storage = scratch.storage();
    let port = free_port();
    let port_text = port.to_string();
    let url = cluster.url("postgres", "sse_streams");
    let vars = [
        ("DATABASE_URL", url.as_str()),
        // Slots are per cluster, and other tests here stream from other databases.
        ("ELECTRIC_REPLICATION_STREAM_ID", "sse_streams"),
        ("ELECTRIC_STORAGE_DIR", storage.to_str().expect("utf-8")),
        ("ELECTRIC_INSECURE", "true"),
        ("ELECTRIC_PORT", port_text.as_str()),
    ];
    let mut ampere = Ampere::spawn(scratch, &vars);
    wait_for_health(&mut ampere, port, 200, Duration::from_secs(30));
    let initial = http_get(port, "/v1/shape?table=items&offset=-1").expect("initial sync");
    assert_eq!(initial.status, 200, "{initial:?}");
    let handle = initial
        .header("electric-handle")
        .expect("handle")
        .to_owned();
    let caught_up = http_get(
        port,
        &format!("/v1/shape?table=items&handle={handle}&offset=0_0"),
    )
    .expect("catch up");
    assert_eq!(caught_up.header("electric-offset"), Some("0_inf"));
    (ampere, port, handle)
}

#[test]
fn two_thousand_concurrent_sse_streams_each_hold_little_memory_and_all_receive_a_change() {
    let fd_limit = raise_own_fd_limit();
    assert!(
        fd_limit > STREAMS as u64 + 100,
        "the test needs {STREAMS} sockets; RLIMIT_NOFILE hard limit is {fd_limit}"
    );
    let cluster = items_database("sse_streams");
    let scratch = Scratch::new("sse");
    let (mut ampere, port, handle) = ampere_with_a_caught_up_shape(cluster, &scratch);

    // A few streams first, so the baseline includes the runtime's warmed-up allocations.
    let mut warm: Vec<TcpStream> = (0..20)
        .map(|_| open_stream(port, &handle, "0_inf"))
        .collect();
    let baseline_kib = ampere.rss_kib();
    let started = Instant::now();
    let mut streams: Vec<TcpStream> = (0..STREAMS)
        .map(|_| open_stream(port, &handle, "0_inf"))
        .collect();
    let opened_in = started.elapsed();
    let loaded_kib = ampere.rss_kib();
    let per_stream = (loaded_kib.saturating_sub(baseline_kib) * 1024) / STREAMS as u64;
    eprintln!(
        "{STREAMS} SSE streams opened in {opened_in:?}: RSS {baseline_kib} KiB -> \
         {loaded_kib} KiB, {per_stream} bytes per stream, {} fds",
        ampere.open_fds()
    );
    assert!(
        per_stream <= BYTES_PER_STREAM_MAX,
        "{per_stream} bytes per idle SSE stream (at most {BYTES_PER_STREAM_MAX})"
    );

    cluster
        .psql("sse_streams", "INSERT INTO items VALUES (2, 'over sse')")
        .expect("insert");
    let started = Instant::now();
    for stream in streams.iter_mut().chain(warm.iter_mut()) {
        let events = read_until(stream, b"\"control\":\"up-to-date\"");
        let events = String::from_utf8_lossy(&events);
        assert!(events.contains(r#""title":"over sse""#), "{events}");
    }
    eprintln!(
        "all {} streams received the insert within {:?} of its commit",
        streams.len() + warm.len(),
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(streams);
    drop(warm);
    ampere.terminate();
    let status = ampere.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "SIGTERM: {status}:\n{}", ampere.output());
}
