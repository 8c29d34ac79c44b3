//! What the tests that run the real `ampere` binary share: a scratch directory under `/tmp`,
//! the child process with its output captured (the log on stdout, errors that stop it on
//! stderr; killed by PID when a test ends early), and a free port. Each test binary uses part
//! of it.
#![allow(dead_code)]

use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, sleep, JoinHandle};
use std::time::{Duration, Instant};

use ampere_io_real::embedded_pg::{shared_for_tests, EmbeddedPostgres};

const POLL: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------------------------
// Scratch directories

/// A fresh `/tmp` directory, removed on drop.
pub(crate) struct Scratch {
    pub(crate) root: PathBuf,
}

impl Scratch {
    pub(crate) fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let root = PathBuf::from(format!("/tmp/ampere-test-{}-{n}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).expect("create scratch dir");
        Self { root }
    }

    /// `ELECTRIC_STORAGE_DIR`: inside the scratch dir, not created yet.
    pub(crate) fn storage(&self) -> PathBuf {
        self.root.join("storage")
    }

    /// `name` inside the scratch dir, not created.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

// ---------------------------------------------------------------------------------------------
// The binary

/// A running `ampere`, stdout (the log) and stderr captured; SIGKILLed by PID on drop if
/// still running.
pub(crate) struct Ampere {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

/// The binary under test: `AMPERE_TEST_BIN` when set (a release build, to measure what a
/// deployment would see), else this package's build of `ampere`.
fn ampere_bin() -> std::ffi::OsString {
    std::env::var_os("AMPERE_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_ampere").into())
}

impl Ampere {
    /// Runs the binary in `scratch` with only `PATH` and `vars` set.
    pub(crate) fn spawn(scratch: &Scratch, vars: &[(&str, &str)]) -> Self {
        Self::spawn_command(scratch, vars, Command::new(ampere_bin()))
    }

    /// [`spawn`](Self::spawn) with the process's `RLIMIT_NOFILE` set to `limit`, soft and hard
    /// alike (so ampere cannot raise it): the file-descriptor budget a small container has.
    pub(crate) fn spawn_with_fd_limit(
        scratch: &Scratch,
        vars: &[(&str, &str)],
        limit: u64,
    ) -> Self {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(ampere_bin());
        // SAFETY: the closure runs in the forked child before exec and only calls setrlimit,
        // which is async-signal-safe; it allocates nothing and touches no lock.
        unsafe {
            cmd.pre_exec(move || {
                let rlimit = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        }
        Self::spawn_command(scratch, vars, cmd)
    }

    fn spawn_command(scratch: &Scratch, vars: &[(&str, &str)], mut cmd: Command) -> Self {
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(vars.iter().copied())
            .current_dir(&scratch.root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn ampere");
        let (stdout, stderr) = (Arc::default(), Arc::default());
        let readers = vec![
            capture(
                child.stdout.take().expect("stdout is piped"),
                Arc::clone(&stdout),
            ),
            capture(
                child.stderr.take().expect("stderr is piped"),
                Arc::clone(&stderr),
            ),
        ];
        Self {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory (`VmRSS` of `/proc/<pid>/status`), in KiB.
    pub(crate) fn rss_kib(&self) -> u64 {
        rss_kib_of(self.pid())
    }

    /// Open file descriptors (entries of `/proc/<pid>/fd`).
    pub(crate) fn open_fds(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("read /proc/<pid>/fd")
            .count()
    }

    /// The log so far.
    pub(crate) fn stdout(&self) -> String {
        text(&self.stdout)
    }

    /// What ampere wrote on stderr so far: the error that stopped it, if any.
    pub(crate) fn stderr(&self) -> String {
        text(&self.stderr)
    }

    /// The log, then stderr.
    pub(crate) fn output(&self) -> String {
        format!("{}{}", self.stdout(), self.stderr())
    }

    pub(crate) fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait on ampere")
    }

    /// Waits for the exit (panicking after `timeout`), then for the rest of its output.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.try_status() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "ampere still running after {timeout:?}; output:\n{}",
                self.output()
            );
            sleep(POLL);
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        for reader in std::mem::take(&mut self.readers) {
            while !reader.is_finished() && Instant::now() < deadline {
                sleep(POLL);
            }
            if reader.is_finished() {
                let _ = reader.join();
            }
        }
        status
    }

    /// Sends SIGTERM to this child's PID.
    pub(crate) fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-s", "TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s TERM failed: {status}");
    }
}

impl Drop for Ampere {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // Child::kill signals this child's PID (SIGKILL); it cannot have been reaped yet.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn text(buffer: &Mutex<Vec<u8>>) -> String {
    let bytes = buffer.lock().unwrap_or_else(PoisonError::into_inner);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Appends everything read from `pipe` to `sink`, on a thread, until end of file.
pub(crate) fn capture(
    mut pipe: impl Read + Send + 'static,
    sink: Arc<Mutex<Vec<u8>>>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => sink
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend_from_slice(&chunk[..n]),
            }
        }
    })
}

mod ports;
#[allow(unused_imports)]
pub(crate) use ports::free_port;
pub(crate) mod sockets;

// ---------------------------------------------------------------------------------------------
// HTTP

#[derive(Clone, Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` on `127.0.0.1:port` with `Connection: close`, read to the end.
pub(crate) fn http_get(port: u16, path: &str) -> io::Result<Reply> {
    http_get_at(SocketAddr::from(([127, 0, 0, 1], port)), path)
}

/// [`http_get`] to any address (`[::1]` too).
pub(crate) fn http_get_at(addr: SocketAddr, path: &str) -> io::Result<Reply> {
    http_request_at(addr, "GET", path)
}

/// `method path` (no body) on `127.0.0.1:port` with `Connection: close`, read to the end.
pub(crate) fn http_request(port: u16, method: &str, path: &str) -> io::Result<Reply> {
    http_request_at(SocketAddr::from(([127, 0, 0, 1], port)), method, path)
}

/// [`http_request`] to any address.
pub(crate) fn http_request_at(addr: SocketAddr, method: &str, path: &str) -> io::Result<Reply> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_reply(&raw).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad HTTP reply: {:?}", String::from_utf8_lossy(&raw)),
        )
    })
}

pub(crate) fn parse_reply(raw: &[u8]) -> Option<Reply> {
    let split = find(raw, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = &raw[split + 4..];
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_vec()
    };
    Some(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

pub(crate) fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = find(raw, b"\r\n") {
        let size_line = String::from_utf8_lossy(&raw[..eol]).into_owned();
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let Ok(size) = usize::from_str_radix(size_hex, 16) else {
            break;
        };
        raw = &raw[eol + 2..];
        if size == 0 || raw.len() < size {
            break;
        }
        out.extend_from_slice(&raw[..size]);
        raw = raw.get(size + 2..).unwrap_or_default();
    }
    out
}

pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The `electric-handle` of a shape response.
pub(crate) fn handle_of(reply: &Reply) -> String {
    reply
        .header("electric-handle")
        .unwrap_or_else(|| panic!("no handle: {reply:?}"))
        .to_owned()
}

/// The stamp of a handle (`<digest>-<stamp>`), which only increases (ID-2).
pub(crate) fn stamp(handle: &str) -> u64 {
    let (_, stamp) = handle.rsplit_once('-').expect("<digest>-<stamp>");
    stamp.parse().expect("a decimal stamp")
}

/// Polls `/v1/health` until it answers `status`; panics if ampere exits or `within` passes.
pub(crate) fn wait_for_health(
    ampere: &mut Ampere,
    port: u16,
    status: u16,
    within: Duration,
) -> Reply {
    let deadline = Instant::now() + within;
    loop {
        if let Some(exit) = ampere.try_status() {
            panic!(
                "ampere exited ({exit}) before health said {status}:\n{}",
                ampere.output()
            );
        }
        let last = match http_get(port, "/v1/health") {
            Ok(reply) if reply.status == status => return reply,
            Ok(reply) => format!("{reply:?}"),
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "/v1/health never answered {status} within {within:?} (last: {last}); output:\n{}",
            ampere.output()
        );
        sleep(Duration::from_millis(100));
    }
}

/// Runs ampere on `database` of `cluster` (its own replication stream, so tests streaming from
/// other databases of the cluster do not share a slot), in insecure mode with its storage in
/// `scratch`, with `extra` variables, and waits until it is active.
pub(crate) fn spawn_active(
    cluster: &EmbeddedPostgres,
    scratch: &Scratch,
    database: &str,
    port: u16,
    extra: &[(&str, &str)],
) -> Ampere {
    let url = cluster.url("postgres", database);
    let storage = scratch.storage();
    let port_text = port.to_string();
    let mut vars = vec![
        ("DATABASE_URL", url.as_str()),
        ("ELECTRIC_REPLICATION_STREAM_ID", database),
        ("ELECTRIC_STORAGE_DIR", storage.to_str().expect("utf-8")),
        ("ELECTRIC_INSECURE", "true"),
        ("ELECTRIC_PORT", port_text.as_str()),
    ];
    vars.extend_from_slice(extra);
    let mut ampere = Ampere::spawn(scratch, &vars);
    wait_for_health(&mut ampere, port, 200, Duration::from_secs(30));
    ampere
}

// ---------------------------------------------------------------------------------------------
// Postgres

/// A fresh database on the shared cluster.
pub(crate) fn shared_database(name: &str) -> &'static EmbeddedPostgres {
    let cluster = shared_for_tests().expect("shared test cluster starts");
    cluster.create_database(name).expect("CREATE DATABASE");
    cluster
}

/// Waits until `slot`'s `confirmed_flush_lsn` is at or past the WAL end, at most `within`;
/// how long that took, or `None`. The polling is one server-side loop (every 5 ms): a `psql`
/// per poll would take a core of a 2-core machine from the process under test.
pub(crate) fn slot_confirmed_to_wal_end(
    cluster: &EmbeddedPostgres,
    db: &str,
    slot: &str,
    within: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    let sql = format!(
        "DO $$ DECLARE started timestamptz := clock_timestamp(); BEGIN \
           WHILE NOT (SELECT confirmed_flush_lsn >= pg_current_wal_lsn() \
                      FROM pg_replication_slots WHERE slot_name = '{slot}') LOOP \
             IF clock_timestamp() - started > interval '{} ms' THEN \
               RAISE EXCEPTION 'not confirmed'; \
             END IF; \
             PERFORM pg_sleep(0.005); \
           END LOOP; \
         END $$",
        within.as_millis()
    );
    cluster.psql(db, &sql).ok().map(|_| start.elapsed())
}

/// [`shared_database`] `name` with a table `items (id int PRIMARY KEY, title text)` holding
/// the row `(1, 'one')`.
pub(crate) fn items_database(name: &str) -> &'static EmbeddedPostgres {
    let cluster = shared_database(name);
    cluster
        .psql(
            name,
            "CREATE TABLE items (id int PRIMARY KEY, title text); \
             INSERT INTO items VALUES (1, 'one')",
        )
        .expect("create items");
    cluster
}

/// Raises this test process's soft `RLIMIT_NOFILE` to its hard limit (a test holding thousands
/// of client sockets); returns the limit now in force.
pub(crate) fn raise_own_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write one `rlimit` through valid pointers.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    limit.rlim_cur
}

/// Resident memory of process `pid` (`VmRSS` of `/proc/<pid>/status`), in KiB; 0 once the
/// process is gone.
pub(crate) fn rss_kib_of(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
