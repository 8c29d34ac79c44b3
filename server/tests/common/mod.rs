//! What the tests that run the real `ampere` binary share: a scratch directory under `/tmp`,
//! the child process with its stderr captured (killed by PID when a test ends early), and a
//! free port. Each test binary uses part of it.
#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, sleep, JoinHandle};
use std::time::{Duration, Instant};

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

/// A running `ampere`, stderr captured; SIGKILLed by PID on drop if still running.
pub(crate) struct Ampere {
    child: Child,
    stderr: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
}

impl Ampere {
    /// Runs the binary in `scratch` with only `PATH` and `vars` set.
    pub(crate) fn spawn(scratch: &Scratch, vars: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ampere"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(vars.iter().copied())
            .current_dir(&scratch.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn ampere");
        let pipe = child.stderr.take().expect("stderr is piped");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let reader = Some(capture(pipe, Arc::clone(&stderr)));
        Self {
            child,
            stderr,
            reader,
        }
    }

    pub(crate) fn stderr(&self) -> String {
        let bytes = self.stderr.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    pub(crate) fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait on ampere")
    }

    /// Waits for the exit (panicking after `timeout`), then for the rest of stderr.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.try_status() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "ampere still running after {timeout:?}; stderr:\n{}",
                self.stderr()
            );
            sleep(POLL);
        };
        if let Some(reader) = self.reader.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
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

pub(crate) fn capture(mut pipe: ChildStderr, sink: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
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

/// A port nothing listens on right now (bound, then released).
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}
