//! `ampere` processes: the binary cargo built for this test (`CARGO_BIN_EXE_ampere`), run with
//! a cleared environment plus Electric's variables, stdout/stderr appended to a per-process log
//! file, stopped by PID (SIGKILL or SIGTERM). The kernel SIGKILLs them if the test process dies
//! without unwinding (`PR_SET_PDEATHSIG`), so no orphan keeps a slot or a port.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::http;
use crate::util::{free_port, tail};

/// The long-poll timeout the scenarios run ampere with (ms): short, so live clients and
/// standby re-checks turn around quickly.
pub(crate) const LONG_POLL_MS: u64 = 4000;

/// How to run one instance.
#[derive(Clone, Debug)]
pub(crate) struct AmpereConfig {
    pub(crate) database_url: String,
    pub(crate) storage: PathBuf,
    pub(crate) stream_id: String,
    /// Further variables (e.g. `CLEANUP_REPLICATION_SLOTS_ON_SHUTDOWN`).
    pub(crate) extra: Vec<(String, String)>,
}

/// A running (or stopped) instance; killed with SIGKILL on drop.
pub(crate) struct Ampere {
    pub(crate) name: String,
    pub(crate) port: u16,
    pub(crate) config: AmpereConfig,
    pub(crate) log: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl Ampere {
    /// Starts `name` on a free port, logging to `<log_dir>/<name>.log`.
    pub(crate) fn spawn(name: &str, config: AmpereConfig, log_dir: &std::path::Path) -> Self {
        let mut a = Self {
            name: name.to_owned(),
            port: free_port(),
            config,
            log: log_dir.join(format!("{name}.log")),
            child: None,
            starts: 0,
        };
        a.start();
        a
    }

    /// (Re)starts the process with the same configuration and port; the log is appended to.
    pub(crate) fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log.display()));
        let _ = writeln!(
            log,
            "===== harness: start #{} of {} on port {} (storage {}) =====",
            self.starts,
            self.name,
            self.port,
            self.config.storage.display()
        );
        let err = log.try_clone().unwrap_or_else(|e| panic!("dup log: {e}"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ampere"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_BACKTRACE", "1")
            .env("DATABASE_URL", &self.config.database_url)
            .env("ELECTRIC_PORT", self.port.to_string())
            .env("ELECTRIC_STORAGE_DIR", &self.config.storage)
            .env("ELECTRIC_INSECURE", "true")
            .env("ELECTRIC_REPLICATION_STREAM_ID", &self.config.stream_id)
            .env("ELECTRIC_LONG_POLL_TIMEOUT", LONG_POLL_MS.to_string())
            .env("ELECTRIC_LOG_LEVEL", "info")
            .envs(
                self.config
                    .extra
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .current_dir(self.config.storage.parent().unwrap_or(&self.config.storage))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err));
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", env!("CARGO_BIN_EXE_ampere")));
        self.child = Some(child);
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9` by PID, then reaps it.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.note("killed with SIGKILL");
        }
    }

    /// SIGTERM by PID; waits up to `timeout` for the exit (then SIGKILL). Returns the exit
    /// status, or `None` if it had to be killed.
    pub(crate) async fn sigterm(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let pid = child.id();
        // SAFETY: plain kill(2) on our own child's PID, which has not been reaped yet.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
        let t = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.note(&format!("exited after SIGTERM: {status}"));
                return Some(status);
            }
            if t.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                self.note(&format!("did not exit {timeout:?} after SIGTERM: killed"));
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the process is still running (reaps it if it exited).
    pub(crate) fn running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    fn note(&self, what: &str) {
        if let Ok(mut f) = OpenOptions::new().append(true).open(&self.log) {
            let _ = writeln!(f, "===== harness: {} {what} =====", self.name);
        }
    }

    /// `GET /v1/health`: `(status, body)`, or `None` if nothing answers.
    pub(crate) async fn health(&self) -> Option<(u16, String)> {
        health(self.port).await
    }

    /// Waits until `/v1/health` answers `want` (and, if given, a body containing `body`).
    /// Returns how long it took.
    pub(crate) async fn wait_health(
        &mut self,
        want: u16,
        body: Option<&str>,
        timeout: Duration,
    ) -> Result<Duration, String> {
        let t = Instant::now();
        let mut last = None;
        while t.elapsed() < timeout {
            if !self.running() {
                return Err(format!(
                    "{} exited while waiting for health {want}; log tail:\n{}",
                    self.name,
                    tail(&self.log, 30)
                ));
            }
            let h = self.health().await;
            if let Some((status, text)) = &h {
                if *status == want && body.is_none_or(|b| text.contains(b)) {
                    return Ok(t.elapsed());
                }
            }
            last = h;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "{}: health never became {want}{} within {timeout:?}; last: {last:?}",
            self.name,
            body.map(|b| format!(" {b:?}")).unwrap_or_default()
        ))
    }

    pub(crate) fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }
}

impl Drop for Ampere {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `GET /v1/health` on a port.
pub(crate) async fn health(port: u16) -> Option<(u16, String)> {
    http::get(port, "/v1/health", Duration::from_secs(3))
        .await
        .ok()
        .map(|r| (r.status, r.body_text()))
}

/// Samples `/v1/health` every 200 ms in the background and records each change of
/// `(status, body)` with its time, for summaries ("200 → 202 → 200").
pub(crate) struct HealthMonitor {
    stop: tokio::sync::watch::Sender<bool>,
    seen: Arc<Mutex<Vec<(Duration, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl HealthMonitor {
    pub(crate) fn spawn(port: u16) -> Self {
        let (stop, mut rx) = tokio::sync::watch::channel(false);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            let t = Instant::now();
            let sample = || async {
                match health(port).await {
                    Some((s, body)) => format!("{s} {}", body.trim()),
                    None => "down".to_owned(),
                }
            };
            loop {
                let now = sample().await;
                record(&log, t.elapsed(), now);
                tokio::select! {
                    _ = rx.changed() => break,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
            // one last sample, so a change just before `finish` is not missed
            let now = sample().await;
            record(&log, t.elapsed(), now);
        });
        Self { stop, seen, task }
    }

    /// The changes so far: "t=0.0s 200 {...} | t=3.1s 202 {...} | ...".
    pub(crate) fn seen(&self) -> String {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.iter()
            .map(|(t, s)| format!("t={:.1}s {s}", t.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// Stops sampling (after one last sample) and returns `seen()`.
    pub(crate) async fn finish(mut self) -> String {
        let _ = self.stop.send(true);
        let _ = (&mut self.task).await;
        self.seen()
    }
}

fn record(log: &Mutex<Vec<(Duration, String)>>, at: Duration, now: String) {
    let mut seen = log.lock().unwrap_or_else(PoisonError::into_inner);
    if seen.last().is_none_or(|(_, l)| *l != now) {
        seen.push((at, now));
    }
}
