//! The operator's read-only commands: `ampere status` (what one stream uses in Postgres and on
//! disk right now) and `ampere check-db` (whether a database is ready for ampere before a
//! deploy). Both read the configuration `serve` reads, print text or `--json` on stdout, and
//! exit 0 when healthy, 1 when a check fails, 2 on a configuration error.
//!
//! Never: creates, alters or drops anything in Postgres or in the storage directory, takes the
//! advisory lock or the storage lease, or starts the embedded PostgreSQL. With `DATABASE_URL`
//! unset they use the embedded cluster only if it is already running (an `ampere serve` on the
//! same storage directory started it): starting it would write into the storage directory.

pub mod check_db;
pub mod status;
mod storage;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ampere_core::error_chain;
use ampere_io_real::embedded_pg::{PRODUCT_DIR_NAME, SUPERUSER};
use ampere_io_real::pg::RealPg;

use crate::config::Config;

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Fine.
    Pass,
    /// Works, but worth a look.
    Warn,
    /// ampere cannot run (or runs into trouble) until it is fixed.
    Fail,
    /// Not checked: an earlier check it depends on failed.
    Skip,
}

impl Verdict {
    /// `PASS`, `WARN`, `FAIL` or `SKIP`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Warn => "WARN",
            Self::Fail => "FAIL",
            Self::Skip => "SKIP",
        }
    }
}

/// Which Postgres the commands talk to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Database {
    /// `DATABASE_URL`.
    Url(String),
    /// `DATABASE_URL` unset and the embedded cluster in the storage directory is running: its
    /// superuser's URL.
    EmbeddedRunning(String),
    /// `DATABASE_URL` unset and no embedded cluster runs in this directory.
    EmbeddedStopped(PathBuf),
}

impl Database {
    /// `DATABASE_URL`, else the embedded cluster of `config`'s storage directory.
    pub(crate) fn of(config: &Config) -> Self {
        match config.external_database_url() {
            Some(url) => Self::Url(url.to_owned()),
            None => {
                let dir = config.storage_dir.join(PRODUCT_DIR_NAME);
                match running_embedded_url(&dir) {
                    Some(url) => Self::EmbeddedRunning(url),
                    None => Self::EmbeddedStopped(dir),
                }
            }
        }
    }

    /// `DATABASE_URL`, `embedded (running)` or `embedded (not running)`.
    pub(crate) fn source(&self) -> &'static str {
        match self {
            Self::Url(_) => "DATABASE_URL",
            Self::EmbeddedRunning(_) => "embedded (running)",
            Self::EmbeddedStopped(_) => "embedded (not running)",
        }
    }

    /// The URL to connect to, `None` when there is nothing running to connect to.
    pub(crate) fn url(&self) -> Option<&str> {
        match self {
            Self::Url(url) | Self::EmbeddedRunning(url) => Some(url),
            Self::EmbeddedStopped(_) => None,
        }
    }

    /// `RealPg` for the URL, as `serve` makes it ([`Config::real_pg`]). `Err` (a configuration
    /// error, exit 2) when the URL is unusable.
    pub(crate) fn connect(&self, config: &Config) -> Result<Option<RealPg>, String> {
        let Some(url) = self.url() else {
            return Ok(None);
        };
        config.real_pg(url).map(Some).map_err(|e| error_chain(&e))
    }
}

/// The superuser URL of the embedded cluster in `dir` if its postmaster runs: the port from
/// `data/postmaster.pid` (line 4, PostgreSQL's own record, present only while it runs) and the
/// password ampere generated into `superuser-password`. Reads only.
fn running_embedded_url(dir: &Path) -> Option<String> {
    let pid_file = std::fs::read_to_string(dir.join("data").join("postmaster.pid")).ok()?;
    let mut lines = pid_file.lines();
    let pid: u32 = lines.next()?.trim().parse().ok()?;
    if !Path::new(&format!("/proc/{pid}")).exists() {
        return None;
    }
    let port: u16 = lines.nth(2)?.trim().parse().ok()?;
    let password = std::fs::read_to_string(dir.join("superuser-password")).ok()?;
    // The generated password is hex: nothing to percent-encode.
    Some(format!(
        "postgresql://{SUPERUSER}:{}@127.0.0.1:{port}/postgres",
        password.trim()
    ))
}

/// Prints `json` (one line) or `text` on stdout and turns `failed` into the exit status.
pub(crate) fn finish(json: Option<serde_json::Value>, text: &str, failed: bool) -> ExitCode {
    match json {
        Some(value) => println!("{value}"),
        None => print!("{text}"),
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// A configuration error: one line on stderr, exit status 2.
pub(crate) fn config_error(message: &str) -> ExitCode {
    eprintln!("ampere: {message}");
    ExitCode::from(2)
}

/// `1234567` as `1.2 MiB`.
pub(crate) fn human_bytes(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    #[allow(clippy::cast_precision_loss)] // for display only
    let mut value = bytes.unsigned_abs() as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let sign = if bytes < 0 { "-" } else { "" };
    if unit == 0 {
        format!("{sign}{bytes} bytes", bytes = bytes.unsigned_abs())
    } else {
        format!("{sign}{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_read_in_binary_units() {
        assert_eq!(human_bytes(0), "0 bytes");
        assert_eq!(human_bytes(1023), "1023 bytes");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(human_bytes(-2048), "-2.0 KiB");
    }

    #[test]
    fn a_running_embedded_cluster_is_found_from_its_pid_file_and_a_stopped_one_is_not() {
        let dir = std::env::temp_dir().join(format!("ampere-ops-embedded-{}", std::process::id()));
        let data = dir.join("data");
        std::fs::create_dir_all(&data).expect("create data dir");
        std::fs::write(dir.join("superuser-password"), "ab12\n").expect("write password");
        assert_eq!(
            running_embedded_url(&dir),
            None,
            "no postmaster.pid: not running"
        );
        // Our own pid stands in for a live postmaster; the port is on line 4.
        let pid_file = format!(
            "{}\n{}\n1700000000\n55432\n/tmp\n",
            std::process::id(),
            data.display()
        );
        std::fs::write(data.join("postmaster.pid"), pid_file).expect("write pid file");
        assert_eq!(
            running_embedded_url(&dir).as_deref(),
            Some("postgresql://postgres:ab12@127.0.0.1:55432/postgres")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
