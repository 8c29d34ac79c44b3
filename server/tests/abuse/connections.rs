//! Connections as an attacker opens them, against `ampere` under a 1,024-descriptor limit on a
//! real Postgres: twice that many idle connections, 2,000 slowloris connections trickling
//! their headers, and 300 POSTs that announce 8 MiB bodies and stall. Each test asserts that
//! ampere stays up, keeps answering a normal client within 50 ms (p99, both while the
//! abusive connections arrive and once they are all open), never runs out of
//! descriptors, closes the abusive connections within `ELECTRIC_TCP_READ_TIMEOUT` (2 s here),
//! and keeps its memory bounded; it prints the figures (descriptors, RSS, p99) for the record.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, sleep, JoinHandle};
use std::time::{Duration, Instant};

use crate::common::sockets::{connect_many, wait_all_closed};
use crate::common::{self, free_port, http_get, items_database, wait_for_health, Ampere, Scratch};

/// The descriptor limit ampere runs under.
const FD_LIMIT: u64 = 1024;
/// `ELECTRIC_TCP_READ_TIMEOUT` in these tests.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// A normal client's p99 latency bound while the abuse goes on.
const P99_MAX: Duration = Duration::from_millis(50);

/// A running ampere under [`FD_LIMIT`] with a 2 s read timeout, and its ports.
struct Target {
    ampere: Ampere,
    port: u16,
    metrics_port: u16,
    _scratch: Scratch,
}

impl Target {
    fn start(name: &str) -> Self {
        raise_own_fd_limit();
        let cluster = items_database(name);
        let scratch = Scratch::new(name);
        let storage = scratch.storage();
        let (port, metrics_port) = (free_port(), free_port());
        let (port_text, metrics_text) = (port.to_string(), metrics_port.to_string());
        let url = cluster.url("postgres", name);
        let timeout = format!("{}ms", READ_TIMEOUT.as_millis());
        let vars = [
            ("DATABASE_URL", url.as_str()),
            ("ELECTRIC_STORAGE_DIR", storage.to_str().expect("utf-8")),
            ("ELECTRIC_INSECURE", "true"),
            ("ELECTRIC_PORT", port_text.as_str()),
            ("ELECTRIC_PROMETHEUS_PORT", metrics_text.as_str()),
            ("ELECTRIC_TCP_READ_TIMEOUT", timeout.as_str()),
            // Slots are per cluster: one stream per test, dropped when ampere stops.
            ("ELECTRIC_REPLICATION_STREAM_ID", name),
            ("CLEANUP_REPLICATION_SLOTS_ON_SHUTDOWN", "true"),
        ];
        let mut ampere = Ampere::spawn_with_fd_limit(&scratch, &vars, FD_LIMIT);
        wait_for_health(&mut ampere, port, 200, Duration::from_secs(20));
        let shape = http_get(port, "/v1/shape?table=items&offset=-1").expect("shape request");
        assert_eq!(shape.status, 200, "{shape:?}");
        // Warm up: the allocator's arenas and the runtime's threads, before the baseline.
        p99_of_health(port, 50);
        Self {
            ampere,
            port,
            metrics_port,
            _scratch: scratch,
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn assert_up(&mut self) {
        assert!(
            self.ampere.try_status().is_none(),
            "ampere exited:\n{}",
            self.ampere.output()
        );
    }

    /// `ampere_http_connections_shed_total{action=…}`, 0 when absent.
    fn shed(&self, action: &str) -> f64 {
        let text = http_get(self.metrics_port, "/metrics")
            .expect("scrape")
            .body;
        let series = format!("ampere_http_connections_shed_total{{action=\"{action}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&series))
            .map_or(0.0, |value| value.parse().expect("a number"))
    }
}

/// Raises this test process's descriptor limit: it holds thousands of client sockets.
fn raise_own_fd_limit() {
    let limit = common::raise_own_fd_limit();
    assert!(
        limit >= 4 * FD_LIMIT + 256,
        "this test needs a hard RLIMIT_NOFILE of at least {} (have {limit})",
        4 * FD_LIMIT + 256,
    );
}

/// Peak RSS (KiB) and open descriptors of a process, sampled every 20 ms on a thread.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(u64, usize)>,
}

impl Sampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let (mut rss, mut fds) = (0, 0);
            while !flag.load(Ordering::Relaxed) {
                rss = rss.max(common::rss_kib_of(pid));
                fds = fds.max(open_fds(pid));
                sleep(Duration::from_millis(20));
            }
            (rss, fds)
        });
        Self { stop, thread }
    }

    /// Peak RSS in KiB and peak open descriptors.
    fn finish(self) -> (u64, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("sampler")
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// How long one `GET /v1/health` on a new connection takes; panics if it fails.
fn time_health(port: u16) -> Duration {
    let start = Instant::now();
    let reply = http_get(port, "/v1/health").unwrap_or_else(|e| panic!("health request: {e}"));
    assert_eq!(reply.status, 200, "{reply:?}");
    start.elapsed()
}

/// The p99 of `latencies` (not empty).
fn p99(mut latencies: Vec<Duration>) -> Duration {
    assert!(!latencies.is_empty(), "no latencies measured");
    latencies.sort();
    latencies[(latencies.len() * 99).div_ceil(100) - 1]
}

/// The p99 latency of `n` sequential `GET /v1/health` requests, each on a new connection;
/// panics on a failed request.
fn p99_of_health(port: u16, n: usize) -> Duration {
    p99((0..n).map(|_| time_health(port)).collect())
}

/// A normal client on its own thread, one health request after another on new
/// connections, for as long as the abuse is being set up: the p99 while connections arrive.
struct Prober {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Duration>>,
}

impl Prober {
    /// At least this many requests, however fast the setup is.
    const MIN_REQUESTS: usize = 100;

    fn start(port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut latencies = Vec::new();
            while !flag.load(Ordering::Relaxed) || latencies.len() < Self::MIN_REQUESTS {
                latencies.push(time_health(port));
            }
            latencies
        });
        Self { stop, thread }
    }

    /// The p99 and how many requests it is of.
    fn finish(self) -> (Duration, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let latencies = self.thread.join().expect("prober");
        let n = latencies.len();
        (p99(latencies), n)
    }
}

/// RSS after the abuse ended, once it settles: the lowest of a few samples over `within`.
fn settled_rss(pid: u32, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    let mut lowest = common::rss_kib_of(pid);
    while Instant::now() < deadline {
        sleep(Duration::from_millis(250));
        lowest = lowest.min(common::rss_kib_of(pid));
    }
    lowest
}

#[test]
fn twice_the_fd_limit_of_idle_connections_leave_ampere_serving_and_are_closed_by_the_read_timeout()
{
    let _exclusive = crate::exclusive();
    let mut target = Target::start("abuse_idle_connections");
    let pid = target.ampere.pid();
    let (rss_before, fds_before) = (common::rss_kib_of(pid), open_fds(pid));
    let sampler = Sampler::start(pid);
    let started = Instant::now();

    let prober = Prober::start(target.port);
    let (mut idle, failed) = connect_many(target.addr(), 2 * FD_LIMIT as usize);
    let connected_in = started.elapsed();
    let (p99_connecting, probes) = prober.finish();
    let p99 = p99_of_health(target.port, 200);
    target.assert_up();
    let (open, _) = wait_all_closed(&mut idle, READ_TIMEOUT + Duration::from_secs(3));
    let all_closed_in = started.elapsed();
    let (rss_peak, fds_peak) = sampler.finish();
    target.assert_up();
    drop(idle);
    let rss_after = settled_rss(pid, Duration::from_secs(2));
    let fds_after = open_fds(pid);
    let (evicted, refused) = (target.shed("evicted"), target.shed("refused"));

    eprintln!(
        "idle connections: {} opened ({failed} connects failed) in {connected_in:?}, all \
         closed by ampere after {all_closed_in:?}; fds before {fds_before}, peak {fds_peak}, \
         after {fds_after} (limit {FD_LIMIT}); RSS KiB before {rss_before}, peak {rss_peak}, \
         after {rss_after}; health p99 {p99_connecting:?} while connecting ({probes} \
         requests), {p99:?} once connected; shed: {evicted} evicted, {refused} refused",
        2 * FD_LIMIT
    );
    assert_eq!(
        open, 0,
        "idle connections still open after the read timeout"
    );
    assert!(fds_peak < FD_LIMIT as usize, "{fds_peak} fds");
    assert!(
        p99_connecting < P99_MAX,
        "health p99 {p99_connecting:?} while idle connections arrive"
    );
    assert!(p99 < P99_MAX, "health p99 {p99:?} under idle connections");
    assert!(
        evicted > 0.0,
        "the cap was reached, so connections were shed"
    );
    assert!(
        rss_after * 10 <= rss_before * 12,
        "RSS {rss_after} KiB after, {rss_before} KiB before"
    );
    assert!(
        fds_after <= fds_before + 4,
        "{fds_after} fds after, {fds_before} before"
    );
}

/// Writes a byte to each of `slow` every second on a thread while `trickling`; the bytes
/// written.
fn trickle(slow: &[TcpStream], trickling: Arc<AtomicBool>) -> JoinHandle<u64> {
    let mut streams: Vec<TcpStream> = slow.iter().map(|s| s.try_clone().expect("clone")).collect();
    thread::spawn(move || {
        let mut written = 0u64;
        while trickling.load(Ordering::Relaxed) {
            for stream in &mut streams {
                if stream.write(b"a").is_ok() {
                    written += 1;
                }
            }
            sleep(Duration::from_secs(1));
        }
        written
    })
}

#[test]
fn two_thousand_slowloris_connections_are_cut_by_the_header_deadline_while_ampere_keeps_serving() {
    let _exclusive = crate::exclusive();
    let mut target = Target::start("abuse_slowloris");
    let pid = target.ampere.pid();
    let (rss_before, fds_before) = (common::rss_kib_of(pid), open_fds(pid));
    let sampler = Sampler::start(pid);
    let started = Instant::now();

    let prober = Prober::start(target.port);
    let (mut slow, failed) = connect_many(target.addr(), 2000);
    for stream in &mut slow {
        stream.set_nonblocking(true).expect("nonblocking");
        let _ = stream.write(b"GET /v1/health HTTP/1.1\r\nHost: ampere\r\nX-Slow: ");
    }
    let connected_in = started.elapsed();
    let (p99_connecting, probes) = prober.finish();
    // A byte per connection every second, until the server has closed them all.
    let trickling = Arc::new(AtomicBool::new(true));
    let trickler = trickle(&slow, Arc::clone(&trickling));
    let p99 = p99_of_health(target.port, 200);
    target.assert_up();
    let (open, _) = wait_all_closed(&mut slow, READ_TIMEOUT + Duration::from_secs(3));
    let all_closed_in = started.elapsed();
    trickling.store(false, Ordering::Relaxed);
    let trickled = trickler.join().expect("trickler");
    let (rss_peak, fds_peak) = sampler.finish();
    target.assert_up();
    drop(slow);
    let rss_after = settled_rss(pid, Duration::from_secs(2));
    let fds_after = open_fds(pid);
    let (evicted, refused) = (target.shed("evicted"), target.shed("refused"));

    eprintln!(
        "slowloris: {} connections ({failed} connects failed) opened in {connected_in:?}, \
         {trickled} bytes trickled, all closed by ampere after {all_closed_in:?}; fds before \
         {fds_before}, peak {fds_peak}, after {fds_after} (limit {FD_LIMIT}); RSS KiB before \
         {rss_before}, peak {rss_peak}, after {rss_after}; health p99 {p99_connecting:?} \
         while connecting ({probes} requests), {p99:?} while trickling; shed: {evicted} \
         evicted, {refused} refused",
        2000 - failed
    );
    assert_eq!(
        open, 0,
        "slowloris connections still open after the header deadline"
    );
    assert!(fds_peak < FD_LIMIT as usize, "{fds_peak} fds");
    assert!(
        p99_connecting < P99_MAX,
        "health p99 {p99_connecting:?} while slowloris connections arrive"
    );
    assert!(p99 < P99_MAX, "health p99 {p99:?} under slowloris");
    assert!(
        rss_after * 10 <= rss_before * 12,
        "RSS {rss_after} KiB after, {rss_before} KiB before"
    );
    assert!(
        fds_after <= fds_before + 4,
        "{fds_after} fds after, {fds_before} before"
    );
}

#[test]
fn three_hundred_stalled_8_mib_posts_stay_within_the_body_budget_and_are_cut_by_the_body_deadline()
{
    let _exclusive = crate::exclusive();
    const POSTS: usize = 300;
    const ANNOUNCED: usize = 8 * 1024 * 1024;
    const SENT: usize = 2 * 1024 * 1024;
    let mut target = Target::start("abuse_stalled_posts");
    let pid = target.ampere.pid();
    let rss_before = common::rss_kib_of(pid);
    let sampler = Sampler::start(pid);
    let started = Instant::now();

    let (mut posts, failed) = connect_many(target.addr(), POSTS);
    let head = format!(
        "POST /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: ampere\r\n\
         Content-Type: application/json\r\nContent-Length: {ANNOUNCED}\r\n\r\n"
    );
    let part = vec![b' '; SENT];
    let mut sent = 0usize;
    for stream in &mut posts {
        stream.write_all(head.as_bytes()).expect("request head");
        stream.set_nonblocking(true).expect("nonblocking");
        let mut offset = 0;
        while offset < SENT {
            match stream.write(&part[offset..]) {
                Ok(n) => offset += n,
                Err(_) => break,
            }
        }
        sent += offset;
    }
    let sent_in = started.elapsed();
    target.assert_up();
    // Budget waits (1 s) answer 503; bodies in the budget are cut at the read timeout.
    let (open, replies) = wait_all_closed(&mut posts, READ_TIMEOUT + Duration::from_secs(6));
    let all_closed_in = started.elapsed();
    let (rss_peak, _) = sampler.finish();
    target.assert_up();
    let p99 = p99_of_health(target.port, 100);
    drop(posts);
    let rss_after = settled_rss(pid, Duration::from_secs(2));
    let status = |code: &str| {
        replies
            .iter()
            .filter(|r| r.starts_with(format!("HTTP/1.1 {code}").as_bytes()))
            .count()
    };
    let (timed_out, busy) = (status("408"), status("503"));

    let opened = POSTS - failed;
    let (mib, reset) = (
        sent / (1024 * 1024),
        opened.saturating_sub(timed_out + busy),
    );
    eprintln!(
        "stalled POSTs: {opened} connections ({failed} connects failed), {mib} MiB of body \
         sent in {sent_in:?}; all closed by ampere after {all_closed_in:?}: {timed_out} \
         answered 408, {busy} answered 503, {reset} closed without an answer read; RSS KiB \
         before {rss_before}, peak {rss_peak}, after {rss_after}; health p99 afterwards {p99:?}"
    );
    assert_eq!(open, 0, "stalled POSTs still open after the body deadline");
    assert!(
        timed_out > 0,
        "bodies in the budget are cut by the body deadline"
    );
    assert!(
        rss_peak <= rss_before + 200 * 1024,
        "RSS peaked at {rss_peak} KiB from {rss_before} KiB"
    );
    assert!(p99 < P99_MAX, "health p99 {p99:?} after stalled POSTs");
}
