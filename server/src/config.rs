//! Configuration from Electric's environment variables (and matching `--flags`), so ampere
//! drops into existing deployments. Invalid values stop startup with one line naming the
//! variable and the accepted form.

use std::path::PathBuf;
use std::time::Duration;

use ampere_core::ports::SlotPersistence;
use ampere_io_real::tls::TlsOptions;
use clap::{Args, Parser, Subcommand};

/// ampere: Postgres sync over Electric's HTTP shape protocol.
#[derive(Parser, Debug)]
#[command(name = "ampere", version, about, long_about = None)]
pub struct Cli {
    /// What to run (default: the service).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Service settings.
    #[command(flatten)]
    pub config: Config,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the sync service (the default).
    Serve,
    /// Drop this stream's replication slot and publication (an unused slot retains WAL
    /// forever), and with --storage the storage directory.
    Cleanup(CleanupArgs),
}

/// `ampere cleanup` options.
#[derive(Args, Debug, Clone)]
pub struct CleanupArgs {
    /// Also delete ELECTRIC_STORAGE_DIR.
    #[arg(long)]
    pub storage: bool,
    /// Really do it (without this, cleanup only says what it would do).
    #[arg(long)]
    pub yes: bool,
}

/// Service settings. Every flag also reads Electric's environment variable.
#[derive(Args, Debug, Clone)]
pub struct Config {
    /// Postgres connection URL. Unset: start an embedded PostgreSQL inside the storage dir.
    /// `sslmode` (default prefer), `sslrootcert`, `sslcert` and `sslkey` as in libpq; other
    /// parameters ampere does not use are ignored with a warning (docs/tls.md).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// PEM file of the CA(s) to verify the database server against. As in Electric, this turns
    /// full verification on (sslmode=verify-full, or verify-ca when DATABASE_URL says so).
    #[arg(long, env = "ELECTRIC_DATABASE_CA_CERTIFICATE_FILE")]
    pub database_ca_certificate_file: Option<PathBuf>,

    /// HTTP port for the shape API and /v1/health.
    #[arg(long, env = "ELECTRIC_PORT", default_value_t = 3000, value_parser = port)]
    pub port: u16,

    /// Where shape logs and metadata live (created if missing).
    #[arg(long, env = "ELECTRIC_STORAGE_DIR", default_value = "./persistent")]
    pub storage_dir: PathBuf,

    /// Secret clients must pass as `secret` (or `api_secret`).
    #[arg(long, env = "ELECTRIC_SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    /// Run without a secret (development only).
    #[arg(long, env = "ELECTRIC_INSECURE", default_value = "false", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, value_parser = boolean("ELECTRIC_INSECURE"))]
    pub insecure: bool,

    /// Names the slot `electric_slot_<id>` and publication `electric_publication_<id>`.
    #[arg(long, env = "ELECTRIC_REPLICATION_STREAM_ID", default_value = "default", value_parser = stream_id)]
    pub replication_stream_id: String,

    /// Long-poll timeout, in milliseconds (or with a unit: `20s`).
    #[arg(long, env = "ELECTRIC_LONG_POLL_TIMEOUT", default_value = "20000", value_parser = duration("ELECTRIC_LONG_POLL_TIMEOUT"))]
    pub long_poll_timeout: Duration,

    /// Snapshot and log chunk size, in bytes.
    #[arg(long, env = "ELECTRIC_SHAPE_CHUNK_BYTES_THRESHOLD", default_value_t = 10 * 1024 * 1024, value_parser = chunk_threshold)]
    pub shape_chunk_bytes_threshold: u64,

    /// `max-age` of non-live responses, in seconds.
    #[arg(long, env = "ELECTRIC_CACHE_MAX_AGE", default_value_t = 60, value_parser = seconds("ELECTRIC_CACHE_MAX_AGE"))]
    pub cache_max_age: u32,

    /// `stale-while-revalidate` of non-live responses, in seconds.
    #[arg(long, env = "ELECTRIC_CACHE_STALE_AGE", default_value_t = 300, value_parser = seconds("ELECTRIC_CACHE_STALE_AGE"))]
    pub cache_stale_age: u32,

    /// Log level: error, warning, info or debug.
    #[arg(long, env = "ELECTRIC_LOG_LEVEL", default_value = "info", value_parser = log_level)]
    pub log_level: String,

    /// Use a TEMPORARY replication slot, dropped when ampere disconnects (every restart then
    /// starts from a new slot: clients refetch). For ephemeral storage.
    #[arg(long, env = "CLEANUP_REPLICATION_SLOTS_ON_SHUTDOWN", default_value = "false", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, value_parser = boolean("CLEANUP_REPLICATION_SLOTS_ON_SHUTDOWN"))]
    pub cleanup_replication_slots_on_shutdown: bool,

    /// With temporary slots: a random slot name per process. Instances then do not exclude
    /// each other (no shared lock), so each needs its own storage.
    #[arg(long, env = "ELECTRIC_TEMPORARY_REPLICATION_SLOT_USE_RANDOM_NAME", default_value = "false", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, value_parser = boolean("ELECTRIC_TEMPORARY_REPLICATION_SLOT_USE_RANDOM_NAME"))]
    pub temporary_replication_slot_use_random_name: bool,

    /// One exclusive SQLite connection with a rollback journal (for NFS/EFS storage).
    #[arg(long, env = "ELECTRIC_SHAPE_DB_EXCLUSIVE_MODE", default_value = "false", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, value_parser = boolean("ELECTRIC_SHAPE_DB_EXCLUSIVE_MODE"))]
    pub shape_db_exclusive_mode: bool,
}

/// A configuration that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Neither a secret nor insecure mode.
    #[error(
        "set ELECTRIC_SECRET to the secret clients must send, or ELECTRIC_INSECURE=true to run \
         without one (development only)"
    )]
    NoSecret,
}

impl Config {
    /// Cross-field checks clap cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.secret.as_deref().is_none_or(str::is_empty) && !self.insecure {
            return Err(ConfigError::NoSecret);
        }
        Ok(())
    }

    /// TLS settings for `DATABASE_URL` from outside it. None for the embedded PostgreSQL
    /// (no `DATABASE_URL`), which is local and has no certificate to verify.
    pub fn tls_options(&self) -> TlsOptions {
        let is_external = self.database_url.as_deref().is_some_and(|u| !u.is_empty());
        TlsOptions {
            ca_certificate_file: self
                .database_ca_certificate_file
                .clone()
                .filter(|_| is_external),
        }
    }

    /// The secret, unless running insecure.
    pub fn effective_secret(&self) -> Option<String> {
        self.secret.clone().filter(|s| !s.is_empty())
    }

    /// `electric_slot_<id>`.
    pub fn slot_name(&self) -> String {
        format!("electric_slot_{}", self.replication_stream_id)
    }

    /// Whether the slot is TEMPORARY (§1.7).
    pub fn slot_persistence(&self) -> SlotPersistence {
        if self.cleanup_replication_slots_on_shutdown {
            SlotPersistence::Temporary
        } else {
            SlotPersistence::Persistent
        }
    }

    /// The slot this process uses: `electric_slot_<id>`, or with temporary slots and random
    /// names `electric_slot_` + 32 hex characters from `random` (NM-3).
    pub fn effective_slot_name(&self, random: [u8; 16]) -> String {
        if self.cleanup_replication_slots_on_shutdown
            && self.temporary_replication_slot_use_random_name
        {
            let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
            return format!("electric_slot_{hex}");
        }
        self.slot_name()
    }

    /// `electric_publication_<id>`.
    pub fn publication_name(&self) -> String {
        format!("electric_publication_{}", self.replication_stream_id)
    }

    /// The `tracing` filter for the log level.
    pub fn tracing_filter(&self) -> &'static str {
        match self.log_level.as_str() {
            "error" => "error",
            "warning" => "warn",
            "debug" => "debug,hyper=info,tokio_postgres=info",
            _ => "info",
        }
    }
}

fn port(text: &str) -> Result<u16, String> {
    match text.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!(
            "ELECTRIC_PORT must be a port number from 1 to 65535, got {text:?}"
        )),
    }
}

fn boolean(var: &'static str) -> impl Fn(&str) -> Result<bool, String> + Clone {
    move |text| match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err(format!("{var} must be true or false, got {text:?}")),
    }
}

fn duration(var: &'static str) -> impl Fn(&str) -> Result<Duration, String> + Clone {
    move |text| {
        let t = text.trim();
        let (digits, scale_ms) = if let Some(d) = t.strip_suffix("ms") {
            (d, 1)
        } else if let Some(d) = t.strip_suffix('s') {
            (d, 1000)
        } else if let Some(d) = t.strip_suffix('m') {
            (d, 60_000)
        } else {
            (t, 1)
        };
        let err = || {
            format!("{var} must be a duration in milliseconds (e.g. 20000 or 20s), got {text:?}")
        };
        let n: u64 = digits.trim().parse().map_err(|_| err())?;
        let ms = n.checked_mul(scale_ms).ok_or_else(err)?;
        if ms == 0 {
            return Err(err());
        }
        Ok(Duration::from_millis(ms))
    }
}

fn seconds(var: &'static str) -> impl Fn(&str) -> Result<u32, String> + Clone {
    move |text| {
        text.trim()
            .parse()
            .map_err(|_| format!("{var} must be a whole number of seconds, got {text:?}"))
    }
}

fn chunk_threshold(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "ELECTRIC_SHAPE_CHUNK_BYTES_THRESHOLD must be a positive number of bytes, got {text:?}"
        )),
    }
}

fn log_level(text: &str) -> Result<String, String> {
    let level = text.trim().to_ascii_lowercase();
    match level.as_str() {
        "error" | "warning" | "info" | "debug" => Ok(level),
        "warn" => Ok("warning".into()),
        _ => Err(format!(
            "ELECTRIC_LOG_LEVEL must be one of error, warning, info, debug; got {text:?}"
        )),
    }
}

/// `ELECTRIC_REPLICATION_STREAM_ID`: after mapping `-` to `_` and lowercasing ASCII, it
/// must match `^[a-z_][a-z0-9_]*$` and be at most 42 bytes, so that
/// `electric_publication_<id>` fits Postgres's 63-byte identifiers (deploy-semantics NM-2).
fn stream_id(text: &str) -> Result<String, String> {
    const MAX: usize = 42;
    let id = text.trim().replace('-', "_").to_ascii_lowercase();
    let id = if id.is_empty() {
        "default".to_owned()
    } else {
        id
    };
    let form = "accepted form: letters a-z, digits and _ (- becomes _), not starting with a digit";
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        return Err(format!(
            "ELECTRIC_REPLICATION_STREAM_ID contains {bad:?}; {form}, at most {MAX} bytes"
        ));
    }
    if id.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!(
            "ELECTRIC_REPLICATION_STREAM_ID starts with a digit; {form}"
        ));
    }
    if id.len() > MAX {
        return Err(format!(
            "ELECTRIC_REPLICATION_STREAM_ID is {} bytes long; at most {MAX} ({form})",
            id.len()
        ));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ampere").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_electric() {
        let cli = parse(&["--insecure", "true"]).expect("parses");
        let c = cli.config;
        assert_eq!(c.port, 3000);
        assert_eq!(c.storage_dir, PathBuf::from("./persistent"));
        assert_eq!(c.long_poll_timeout, Duration::from_secs(20));
        assert_eq!(c.shape_chunk_bytes_threshold, 10_485_760);
        assert_eq!((c.cache_max_age, c.cache_stale_age), (60, 300));
        assert_eq!(c.slot_name(), "electric_slot_default");
        assert_eq!(c.publication_name(), "electric_publication_default");
    }

    #[test]
    fn refuses_to_run_without_secret_or_insecure() {
        let cli = parse(&[]).expect("parses");
        let err = cli.config.validate().expect_err("must refuse");
        assert!(err.to_string().contains("ELECTRIC_SECRET"));
        assert!(err.to_string().contains("ELECTRIC_INSECURE"));
        assert!(parse(&["--secret", "s"])
            .expect("parses")
            .config
            .validate()
            .is_ok());
    }

    #[test]
    fn random_slot_names_need_temporary_slots() {
        let random = [0xab; 16];
        let plain = parse(&["--insecure", "--temporary-replication-slot-use-random-name"]);
        let plain = plain.expect("parses").config;
        assert_eq!(plain.effective_slot_name(random), "electric_slot_default");
        assert_eq!(plain.slot_persistence(), SlotPersistence::Persistent);
        let temp = parse(&[
            "--insecure",
            "--cleanup-replication-slots-on-shutdown",
            "--temporary-replication-slot-use-random-name=true",
        ]);
        let temp = temp.expect("parses").config;
        assert_eq!(temp.slot_persistence(), SlotPersistence::Temporary);
        assert_eq!(
            temp.effective_slot_name(random),
            format!("electric_slot_{}", "ab".repeat(16))
        );
    }

    #[test]
    fn stream_ids_map_dashes_and_reject_other_characters() {
        assert_eq!(stream_id("deploy-blue"), Ok("deploy_blue".into()));
        assert_eq!(stream_id("Blue"), Ok("blue".into()));
        assert!(stream_id("a.b")
            .expect_err("dot")
            .contains("ELECTRIC_REPLICATION_STREAM_ID"));
        assert!(stream_id("1abc").is_err());
        assert!(stream_id(&"a".repeat(43))
            .expect_err("long")
            .contains("43 bytes"));
    }

    #[test]
    fn invalid_values_name_the_variable() {
        for (flag, value, var) in [
            ("--port", "70000", "ELECTRIC_PORT"),
            ("--long-poll-timeout", "soon", "ELECTRIC_LONG_POLL_TIMEOUT"),
            (
                "--shape-chunk-bytes-threshold",
                "0",
                "ELECTRIC_SHAPE_CHUNK_BYTES_THRESHOLD",
            ),
            ("--insecure", "maybe", "ELECTRIC_INSECURE"),
            ("--log-level", "loud", "ELECTRIC_LOG_LEVEL"),
            ("--cache-max-age", "-1", "ELECTRIC_CACHE_MAX_AGE"),
        ] {
            let arg = format!("{flag}={value}");
            let err = parse(&[&arg]).expect_err("invalid").to_string();
            assert!(err.contains(var), "{flag}={value}: {err}");
        }
    }

    #[test]
    fn the_ca_file_applies_to_database_url_only() {
        let ca = "--database-ca-certificate-file=/etc/ca.pem";
        let external = parse(&["--insecure", "--database-url=postgresql://a@db/x", ca]);
        let options = external.expect("parses").config.tls_options();
        assert_eq!(
            options.ca_certificate_file,
            Some(PathBuf::from("/etc/ca.pem"))
        );
        let embedded = parse(&["--insecure", ca]).expect("parses").config;
        assert_eq!(embedded.tls_options(), TlsOptions::default());
    }

    #[test]
    fn durations_accept_milliseconds_and_units() {
        let d = duration("X");
        assert_eq!(d("500"), Ok(Duration::from_millis(500)));
        assert_eq!(d("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(d("250ms"), Ok(Duration::from_millis(250)));
        assert!(d("0").is_err());
    }
}
