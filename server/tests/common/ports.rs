//! Listening ports for the servers a test starts.
//!
//! A port picked by binding `:0` comes from Linux's ephemeral range (32768–60999), the same
//! range every outgoing connection — a Postgres client, a replication stream, another test's
//! HTTP client — takes its local port from: between the pick and the server's own bind, one of
//! them can take it ("Address already in use", seen in CI). These ports come from 20000–29999
//! instead, below that range, walked from a per-process start so that concurrent test
//! processes rarely meet, and each is checked free before it is handed out.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

const FIRST: u32 = 20_000;
const COUNT: u32 = 10_000;

/// A port nothing listens on right now, outside the ephemeral range; never the same twice in
/// one process.
pub(crate) fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919) % COUNT;
    for _ in 0..COUNT {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(FIRST + (start + step) % COUNT).expect("port below 30000");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + COUNT);
}
