//! Embedded and throwaway PostgreSQL clusters, run from the installed server binaries.
//!
//! Two users share this module:
//! - **the product**: with `DATABASE_URL` unset, `ampere` runs a cluster in
//!   `<storage>/embedded-postgres/` ([`EmbeddedOptions::product`]). The data directory is reused
//!   across restarts of ampere and the server is stopped with a *fast* shutdown (SIGINT), so it
//!   is consistent on disk when ampere starts again. Its superuser password is generated into
//!   `superuser-password` (mode 0600) there and kept out of logs: print
//!   [`EmbeddedPostgres::admin_url_without_password`] and [`EmbeddedPostgres::password_file`];
//! - **integration tests**: a throwaway cluster under `/tmp` per test
//!   ([`EmbeddedOptions::for_tests`], removed on drop, stopped with SIGQUIT), or one cluster per
//!   test binary ([`shared_for_tests`]) with a database per test.
//!
//! Every cluster runs with `wal_level=logical`, `max_replication_slots=20`,
//! `max_wal_senders=20`, `listen_addresses=127.0.0.1` and a short unix socket directory (a
//! socket path must stay under 107 bytes). `synchronous_commit=off` is refused: logical decoding
//! only sees WAL once it is flushed, so with it off a commit reaches the slot up to
//! `wal_writer_delay` later.
//!
//! The code is blocking std: call it at startup, from tests, or from `spawn_blocking`, never
//! from an async task (a fast shutdown may wait for a checkpoint).
//!
//! **Binaries.** Both users take the server binaries from `$PG_BIN` when it is set (it is then
//! authoritative: a directory without `initdb` and `postgres` is an error naming what is
//! missing), else from the newest `/usr/lib/postgresql/*/bin`, else from `pg_config --bindir`.
//! `psql` and `pg_isready` are taken from the same directory when there, else from `PATH`. Other
//! major versions for the test matrix come from `scripts/pg-versions.sh`, which prints a
//! `PG_BIN`; those binaries find their libraries through `RUNPATH $ORIGIN/../lib`, so no
//! `LD_LIBRARY_PATH` is needed (docs/testing-pg-versions.md).
//!
//! **Root.** `postgres` and `initdb` refuse to run as root. When the effective uid is 0 the
//! cluster directory is chowned to the `postgres` OS user and both run through
//! `setpriv --reuid=postgres --regid=postgres --init-groups`, which execs in place, so the
//! [`Child`] *is* the postmaster and signals reach it directly.
//!
//! **Parent death and the thread gotcha.** With [`EmbeddedOptions::stop_with_parent`], the
//! postmaster gets `setpriv --pdeathsig`: the kernel stops it when its parent dies, even by
//! SIGKILL. The kernel's "parent" is the *thread* that spawned it, not the process: a cluster
//! spawned from a `#[test]` thread, or from a `spawn_blocking` thread that the pool later
//! retires, would die with that thread. So every postmaster is spawned by a dedicated spawner
//! thread owned by the [`EmbeddedPostgres`]; it lives until the value is dropped (forever for
//! the `static` behind [`shared_for_tests`], whose postmaster then dies with the process).

use std::ffi::CString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The cluster's superuser, created by `initdb -U`.
pub const SUPERUSER: &str = "postgres";

/// Directory under the storage dir that holds the product's embedded cluster.
pub const PRODUCT_DIR_NAME: &str = "embedded-postgres";

const START_ATTEMPTS: usize = 5;
const READY_POLL: Duration = Duration::from_millis(50);
const STOP_POLL: Duration = Duration::from_millis(20);
/// A postmaster found in `stopping` state (e.g. orphaned by a killed ampere) gets this long.
const STOPPING_POSTMASTER_WAIT: Duration = Duration::from_secs(30);
/// `sun_path` is 108 bytes including the NUL.
const SOCKET_PATH_MAX: usize = 107;
const SOCKET_FILE_NAME_MAX: &str = "/.s.PGSQL.65535";
const LOG_TAIL_LINES: usize = 30;
const DEFAULT_PORT_RANGE: (u16, u16) = (55400, 55499);
/// What a directory must hold to count as PostgreSQL's server binaries.
const SERVER_PROGRAMS: [&str; 2] = ["postgres", "initdb"];
const _: () = assert!(START_ATTEMPTS >= 1);

// ---------------------------------------------------------------------------------------------
// Binaries

/// A directory holding the PostgreSQL server binaries (`postgres`, `initdb`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    dir: PathBuf,
}

/// Where [`PgBinaries::locate_with`] looks. [`BinarySearch::from_env`] is the product's search;
/// tests build one by hand instead of mutating the (process-global) environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinarySearch {
    /// `$PG_BIN`. When set it is authoritative: a wrong `PG_BIN` is an error, not a fallback.
    pub pg_bin: Option<PathBuf>,
    /// Holds `<version>/bin` directories; the newest with `postgres` and `initdb` wins.
    pub versions_dir: Option<PathBuf>,
    /// A `pg_config` to ask for `--bindir` (looked up on `PATH` when relative).
    pub pg_config: Option<PathBuf>,
}

impl BinarySearch {
    /// `$PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`, else `pg_config --bindir`.
    pub fn from_env() -> Self {
        Self {
            pg_bin: std::env::var_os("PG_BIN")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            versions_dir: Some(PathBuf::from("/usr/lib/postgresql")),
            pg_config: Some(PathBuf::from("pg_config")),
        }
    }

    fn describe(&self) -> String {
        if let Some(dir) = &self.pg_bin {
            return format!("$PG_BIN={}", dir.display());
        }
        let mut places = vec!["$PG_BIN".to_owned()];
        if let Some(dir) = &self.versions_dir {
            places.push(format!("{}/*/bin", dir.display()));
        }
        if let Some(pg_config) = &self.pg_config {
            places.push(format!("{} --bindir", pg_config.display()));
        }
        places.join(", ")
    }
}

impl PgBinaries {
    /// Finds the server binaries with [`BinarySearch::from_env`].
    pub fn locate() -> Result<Self, EmbeddedPgError> {
        Self::locate_with(&BinarySearch::from_env())
    }

    /// Finds the server binaries in the places `search` names, in its order.
    pub fn locate_with(search: &BinarySearch) -> Result<Self, EmbeddedPgError> {
        let not_found = || EmbeddedPgError::BinariesNotFound {
            looked_in: search.describe(),
        };
        if let Some(dir) = &search.pg_bin {
            return Self::at_pg_bin(dir);
        }
        if let Some(found) = search.versions_dir.as_deref().and_then(newest_version_bin) {
            return Ok(found);
        }
        if let Some(found) = search.pg_config.as_deref().and_then(pg_config_bindir) {
            return Ok(found);
        }
        Err(not_found())
    }

    /// `dir` if it holds `postgres` and `initdb`.
    pub fn at(dir: &Path) -> Option<Self> {
        missing_programs(dir).is_empty().then(|| Self {
            dir: dir.to_path_buf(),
        })
    }

    /// `$PG_BIN`, made absolute: every program runs with the current directory `/`, where a
    /// relative path would name something else. Missing programs are an error that names them.
    fn at_pg_bin(dir: &Path) -> Result<Self, EmbeddedPgError> {
        let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let missing = missing_programs(&absolute);
        if missing.is_empty() {
            return Ok(Self { dir: absolute });
        }
        Err(EmbeddedPgError::PgBinIncomplete {
            dir: dir.to_path_buf(),
            missing: missing.join(" and "),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A server binary (`postgres`, `initdb`) by name.
    pub fn server(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A client binary (`psql`, `pg_isready`): from the bin dir if there, else from `PATH`.
    pub fn client(&self, name: &str) -> PathBuf {
        let path = self.dir.join(name);
        if path.is_file() {
            path
        } else {
            PathBuf::from(name)
        }
    }

    /// The major version as `PG_VERSION` spells it (`15`, or `9.6` before 10), from
    /// `postgres --version` (answered before postgres's refusal to run as root). A binary that
    /// cannot start (a missing shared library) gives [`EmbeddedPgError::UnknownVersion`] with
    /// its stderr.
    pub fn major_version(&self) -> Result<String, EmbeddedPgError> {
        let program = self.server("postgres");
        let out = Command::new(&program)
            .arg("--version")
            .current_dir("/")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| EmbeddedPgError::Spawn {
                program: program.clone(),
                source,
            })?;
        let text = String::from_utf8_lossy(&out.stdout);
        parse_major_version(&text).ok_or_else(|| {
            let mut output = text.trim().to_owned();
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !stderr.trim().is_empty() {
                if !output.is_empty() {
                    output.push('\n');
                }
                output.push_str(stderr.trim());
            }
            EmbeddedPgError::UnknownVersion { program, output }
        })
    }
}

/// The [`SERVER_PROGRAMS`] that `dir` lacks.
fn missing_programs(dir: &Path) -> Vec<&'static str> {
    SERVER_PROGRAMS
        .into_iter()
        .filter(|name| !dir.join(name).is_file())
        .collect()
}

fn newest_version_bin(versions_dir: &Path) -> Option<PgBinaries> {
    let mut found: Vec<(Vec<u64>, PgBinaries)> = fs::read_dir(versions_dir)
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().into_owned();
            let key: Option<Vec<u64>> = version
                .split('.')
                .map(|part| part.parse::<u64>().ok())
                .collect();
            Some((key?, PgBinaries::at(&entry.path().join("bin"))?))
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found.pop().map(|(_, bins)| bins)
}

fn pg_config_bindir(pg_config: &Path) -> Option<PgBinaries> {
    let out = Command::new(pg_config)
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    PgBinaries::at(Path::new(&dir))
}

/// `postgres (PostgreSQL) 15.18 (Debian ...)` → `15`; `... 9.6.24` → `9.6`.
fn parse_major_version(text: &str) -> Option<String> {
    let version = text
        .split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
    let mut parts = version.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next()?.parse().ok()?;
    if major >= 10 {
        return Some(major.to_string());
    }
    let minor: u32 = parts.next()?.parse().ok()?;
    Some(format!("{major}.{minor}"))
}

// ---------------------------------------------------------------------------------------------
// Options

/// How to start an [`EmbeddedPostgres`]. Start from [`Self::product`] or [`Self::for_tests`].
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// `None`: [`PgBinaries::locate`].
    pub binaries: Option<PgBinaries>,
    pub location: Location,
    /// `None`: a free port (retried on a bind failure); for [`Location::Persistent`] the port of
    /// the previous run is tried first, so the connection string tends to stay the same.
    pub port: Option<u16>,
    /// Extra `-c name=value` settings, after (so overriding) the built-in ones.
    pub settings: Vec<(String, String)>,
    pub auth: Auth,
    pub durability: Durability,
    /// How [`EmbeddedPostgres::stop`] and `Drop` stop the server.
    pub shutdown: ShutdownMode,
    /// Remove the cluster directory (data included) when the value is dropped or stopped.
    pub remove_dir_on_drop: bool,
    /// Have the kernel stop the postmaster (with the `shutdown` mode's signal) if this process
    /// dies without dropping the value (SIGKILL, abort).
    pub stop_with_parent: bool,
    /// How long one start attempt may take to become ready (crash recovery included).
    pub start_timeout: Duration,
    /// Copy a cached pristine data directory instead of running initdb (about half the time).
    /// Used only with [`Auth::Trust`] and [`Durability::Throwaway`].
    pub initdb_template: bool,
}

/// Where the cluster lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A fresh `/tmp/pgtest-<pid>-<n>-<nanos>` directory ([`sweep_stale`] removes leftovers).
    Temporary,
    /// This directory (created if missing) holds `data/`, `server.log` and friends; an
    /// initialized `data/` is reused, so the cluster survives restarts.
    Persistent(PathBuf),
}

/// Authentication for TCP and unix-socket connections (all users, replication included).
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    Trust,
    /// SCRAM-SHA-256; this is the superuser's password. It is set when the data directory is
    /// initialized: reusing a [`Location::Persistent`] directory needs the same password.
    Scram {
        password: String,
    },
    /// SCRAM-SHA-256 with a random superuser password made at first start and kept in
    /// `<dir>/superuser-password` (mode 0600), so a persistent cluster keeps it across restarts.
    ScramGenerated,
}

impl fmt::Debug for Auth {
    // never print a password into logs
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Trust => f.write_str("Trust"),
            Self::Scram { .. } => f.write_str("Scram { password: <redacted> }"),
            Self::ScramGenerated => f.write_str("ScramGenerated"),
        }
    }
}

/// A secret whose `Debug` is `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
struct Redacted(String);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Whether the cluster's writes must survive an OS crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    Durable,
    /// `initdb --no-sync`, `fsync=off`, `full_page_writes=off`: faster, and still safe when only
    /// postgres (not the OS) crashes, so fine for tests that kill and restart the server.
    Throwaway,
}

/// PostgreSQL's shutdown modes, by the signal sent to the postmaster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    /// SIGINT: abort sessions, checkpoint, exit. The data directory is consistent afterwards.
    Fast,
    /// SIGQUIT: exit at once; the next start runs crash recovery. Fastest, for throwaway data.
    Immediate,
}

impl ShutdownMode {
    fn signal(self) -> libc::c_int {
        match self {
            Self::Fast => libc::SIGINT,
            Self::Immediate => libc::SIGQUIT,
        }
    }

    fn setpriv_name(self) -> &'static str {
        match self {
            Self::Fast => "INT",
            Self::Immediate => "QUIT",
        }
    }

    fn timeout(self) -> Duration {
        match self {
            Self::Fast => Duration::from_secs(60),
            Self::Immediate => Duration::from_secs(10),
        }
    }
}

impl EmbeddedOptions {
    /// The product's cluster: `<storage_dir>/embedded-postgres/`, kept across restarts,
    /// durable, SCRAM with a generated password, fast shutdown (also when ampere dies).
    pub fn product(storage_dir: &Path) -> Self {
        Self {
            binaries: None,
            location: Location::Persistent(storage_dir.join(PRODUCT_DIR_NAME)),
            port: None,
            settings: Vec::new(),
            auth: Auth::ScramGenerated,
            durability: Durability::Durable,
            shutdown: ShutdownMode::Fast,
            remove_dir_on_drop: false,
            stop_with_parent: true,
            start_timeout: Duration::from_secs(120),
            initdb_template: false,
        }
    }

    /// A throwaway test cluster in a fresh `/tmp` directory: trust auth, no fsync, immediate
    /// shutdown, removed on drop, killed with the test process.
    pub fn for_tests() -> Self {
        Self {
            binaries: None,
            location: Location::Temporary,
            port: None,
            settings: vec![("max_connections".to_owned(), "200".to_owned())],
            auth: Auth::Trust,
            durability: Durability::Throwaway,
            shutdown: ShutdownMode::Immediate,
            remove_dir_on_drop: true,
            stop_with_parent: true,
            start_timeout: Duration::from_secs(30),
            initdb_template: true,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// A step of starting or stopping a cluster, for [`EmbeddedPgError::Io`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    CreateDir,
    Chown,
    RemoveDir,
    WriteFile,
    ReadFile,
    Rename,
    OpenLog,
    PickPort,
    StartSpawnerThread,
    Signal,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::CreateDir => "creating directory",
            Self::Chown => "chown to the postgres OS user",
            Self::RemoveDir => "removing directory",
            Self::WriteFile => "writing file",
            Self::ReadFile => "reading file",
            Self::Rename => "renaming",
            Self::OpenLog => "opening server log",
            Self::PickPort => "picking a free port on",
            Self::StartSpawnerThread => "starting the spawner thread for",
            Self::Signal => "signalling the postmaster of",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedPgError {
    #[error(
        "no PostgreSQL server binaries found (looked in {looked_in}). Set DATABASE_URL to an \
         existing PostgreSQL with wal_level=logical, or install PostgreSQL (Debian/Ubuntu: \
         apt-get install postgresql)"
    )]
    BinariesNotFound { looked_in: String },

    #[error(
        "$PG_BIN={} is not a PostgreSQL bin directory: it has no {missing}. Point PG_BIN at \
         the bin directory of a PostgreSQL 14 or later (the one holding initdb and postgres) \
         or unset it to use the installed PostgreSQL; or set DATABASE_URL to an existing \
         PostgreSQL with wal_level=logical, or install PostgreSQL (Debian/Ubuntu: apt-get \
         install postgresql)",
        dir.display()
    )]
    PgBinIncomplete { dir: PathBuf, missing: String },

    #[error(
        "running as root, but there is no `postgres` OS user to run the PostgreSQL server as \
         (it refuses to run as root). Create one, run ampere as another user, or set \
         DATABASE_URL to an existing PostgreSQL"
    )]
    NoPostgresUser,

    #[error("{step} {}", path.display())]
    Io {
        step: Step,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("could not run {}", program.display())]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("could not tell the PostgreSQL version of {}: {output:?}", program.display())]
    UnknownVersion { program: PathBuf, output: String },

    #[error("setting {name}={value} is refused: {reason}")]
    RefusedSetting {
        name: String,
        value: String,
        reason: &'static str,
    },

    #[error(
        "{} is not accessible to the postgres OS user, which runs the embedded cluster when \
         ampere runs as root (it needs search permission on every parent directory of the \
         cluster); chmod o+x it, set ELECTRIC_STORAGE_DIR outside it (e.g. /var/lib/ampere), \
         or run ampere as a normal user",
        path.display()
    )]
    NotTraversable { path: PathBuf },

    #[error("initdb failed for {} ({status}):\n{output}", data_dir.display())]
    Initdb {
        data_dir: PathBuf,
        status: ExitStatus,
        output: String,
    },

    #[error(
        "{} exists but is not an initialized PostgreSQL data directory (no PG_VERSION); move it \
         away to let ampere initialize a new one",
        data_dir.display()
    )]
    NotACluster { data_dir: PathBuf },

    #[error(
        "the data directory {} is for PostgreSQL {data_version}, but the binaries in {} are \
         PostgreSQL {binaries_version}; set PG_BIN to PostgreSQL {data_version}'s bin directory",
        data_dir.display(), bin_dir.display()
    )]
    VersionMismatch {
        data_dir: PathBuf,
        data_version: String,
        bin_dir: PathBuf,
        binaries_version: String,
    },

    #[error(
        "a postmaster (pid {pid}) is already running on {}; is another ampere using the same \
         storage directory?",
        data_dir.display()
    )]
    AlreadyRunning { pid: i32, data_dir: PathBuf },

    #[error(
        "postgres on {} did not become ready (tried ports {ports:?}); last lines of {}:\n{log_tail}",
        data_dir.display(), log.display()
    )]
    NotReady {
        data_dir: PathBuf,
        ports: Vec<u16>,
        log: PathBuf,
        log_tail: String,
    },

    #[error("postmaster (pid {pid}) did not stop within {timeout:?} and was killed")]
    StopTimedOut { pid: u32, timeout: Duration },

    #[error("psql on database {db:?} failed ({status}): {stderr}")]
    Psql {
        db: String,
        status: ExitStatus,
        stderr: String,
    },
}

fn io_err(step: Step, path: &Path) -> impl FnOnce(io::Error) -> EmbeddedPgError + '_ {
    move |source| EmbeddedPgError::Io {
        step,
        path: path.to_path_buf(),
        source,
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster

/// A running PostgreSQL cluster owned by this process. Dropping it stops the server (and
/// removes the directory when [`EmbeddedOptions::remove_dir_on_drop`]); drop never panics.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    binaries: PgBinaries,
    opts: EmbeddedOptions,
    run_as: Option<RunAs>,
    layout: Layout,
    /// Redacted in `Debug`, so logging this value never shows the password.
    password: Option<Redacted>,
    port: u16,
    /// `None` before the first successful launch and after a stop.
    child: Option<Child>,
    spawner: Spawner,
    /// Dropped after `Drop::drop` stopped the server.
    _cleanup: Cleanup,
}

impl EmbeddedPostgres {
    /// Initializes the data directory if needed and starts the server; returns once it accepts
    /// connections. Blocking.
    pub fn start(opts: EmbeddedOptions) -> Result<Self, EmbeddedPgError> {
        check_settings(&opts.settings)?;
        let binaries = match &opts.binaries {
            Some(binaries) => binaries.clone(),
            None => PgBinaries::locate()?,
        };
        let run_as = RunAs::current()?;
        let mut cleanup = Cleanup::default();
        let layout = Layout::create(&opts, run_as, &mut cleanup)?;
        let password = superuser_password(&opts.auth, &layout.root)?;
        let init = ensure_initialized(&binaries, &layout, &opts, run_as, password.as_deref());
        if let Err(err) = init {
            return Err(diagnose_access(err, &layout.data, run_as));
        }
        check_no_live_postmaster(&layout.data)?;
        rotate_log(&layout.log)?;
        let spawner = Spawner::new(&layout.root)?;
        let persistent = matches!(opts.location, Location::Persistent(_));
        let preferred_port = opts
            .port
            .or_else(|| persistent.then(|| read_port_file(&layout.root)).flatten());
        let mut pg = Self {
            binaries,
            opts,
            run_as,
            layout,
            password: password.map(Redacted),
            port: 0,
            child: None,
            spawner,
            _cleanup: cleanup,
        };
        pg.launch(preferred_port, pg.opts.port.is_some())?;
        if persistent {
            // only a hint for the next start: failing to write it changes nothing else
            let _ = fs::write(pg.layout.root.join("port"), format!("{}\n", pg.port));
        }
        tracing::info!(port = pg.port, pid = pg.pid(), dir = %pg.layout.root.display(),
            "embedded PostgreSQL is ready");
        Ok(pg)
    }

    /// `postgresql://user[:password]@127.0.0.1:PORT/db`. The password is added for
    /// [`SUPERUSER`] only (the one password this cluster knows); percent-encoded.
    pub fn url(&self, user: &str, db: &str) -> String {
        let password = self.password().filter(|_| user == SUPERUSER);
        url_for(user, password, self.port, db)
    }

    /// The superuser's URL to the `postgres` database.
    pub fn admin_url(&self) -> String {
        self.url(SUPERUSER, "postgres")
    }

    /// [`Self::admin_url`] without the password, for logs and terminals: connect with it and
    /// the password from [`Self::password_file`] (e.g. `PGPASSWORD`).
    pub fn admin_url_without_password(&self) -> String {
        url_for(SUPERUSER, None, self.port, "postgres")
    }

    /// The file holding the generated superuser password (mode 0600, owned by the user running
    /// this process); `Some` with [`Auth::ScramGenerated`] only.
    pub fn password_file(&self) -> Option<PathBuf> {
        (self.opts.auth == Auth::ScramGenerated).then(|| password_path(&self.layout.root))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's pid (0 after a failed [`Self::restart`]).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The superuser's password, `None` with [`Auth::Trust`].
    pub fn password(&self) -> Option<&str> {
        self.password.as_ref().map(|p| p.0.as_str())
    }

    /// The cluster directory (holds `data/` and `server.log`).
    pub fn dir(&self) -> &Path {
        &self.layout.root
    }

    pub fn data_dir(&self) -> &Path {
        &self.layout.data
    }

    pub fn socket_dir(&self) -> &Path {
        &self.layout.socket_dir
    }

    pub fn log_path(&self) -> &Path {
        &self.layout.log
    }

    pub fn binaries(&self) -> &PgBinaries {
        &self.binaries
    }

    /// Stops the server with [`EmbeddedOptions::shutdown`] and, when asked, removes the
    /// directory. `Err` when it had to be SIGKILLed (it is stopped either way).
    pub fn stop(mut self) -> Result<(), EmbeddedPgError> {
        let mode = self.opts.shutdown;
        self.stop_postmaster(mode)
    }

    /// Fast shutdown, then a start on the same port with the same data directory (for tests
    /// of a Postgres restart). On `Err` the server is down and [`Self::pid`] is 0.
    pub fn restart(&mut self) -> Result<(), EmbeddedPgError> {
        self.stop_postmaster(ShutdownMode::Fast)?;
        self.launch(Some(self.port), true)
    }

    /// Runs `sql` as the superuser in `db` with `psql -X -q -v ON_ERROR_STOP=1 -At -c`; returns
    /// stdout without its final newline (one row per line, columns `|`-separated). Several
    /// statements in one string run as one transaction, so `CREATE DATABASE` must be alone.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, EmbeddedPgError> {
        let program = self.binaries.client("psql");
        let out = Command::new(&program)
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-A",
                "-t",
                "-c",
                sql,
                "-d",
            ])
            .arg(self.url(SUPERUSER, db))
            .env("PGCONNECT_TIMEOUT", "10")
            .current_dir("/")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| EmbeddedPgError::Spawn { program, source })?;
        if !out.status.success() {
            return Err(EmbeddedPgError::Psql {
                db: db.to_owned(),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        let mut stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if stdout.ends_with('\n') {
            stdout.pop();
        }
        Ok(stdout)
    }

    /// `CREATE DATABASE "name"`; returns the superuser's URL to it.
    pub fn create_database(&self, name: &str) -> Result<String, EmbeddedPgError> {
        let quoted = name.replace('"', "\"\"");
        self.psql("postgres", &format!("CREATE DATABASE \"{quoted}\""))?;
        Ok(self.url(SUPERUSER, name))
    }

    /// Starts the postmaster, retrying on another port (or, with `fixed`, the same one) when
    /// the failure looks like a port or lock clash.
    fn launch(&mut self, preferred: Option<u16>, fixed: bool) -> Result<(), EmbeddedPgError> {
        let mut tried = Vec::new();
        for attempt in 0..START_ATTEMPTS {
            let port = match preferred {
                Some(port) if fixed || attempt == 0 => port,
                _ => free_port().map_err(io_err(Step::PickPort, Path::new("127.0.0.1")))?,
            };
            tried.push(port);
            let log_offset = fs::metadata(&self.layout.log).map_or(0, |m| m.len());
            let mut child = self.spawn_postmaster(port)?;
            match wait_ready(
                &mut child,
                &self.binaries,
                &self.layout.data,
                port,
                &self.opts,
            ) {
                Readiness::Ready => {
                    self.child = Some(child);
                    self.port = port;
                    return Ok(());
                }
                Readiness::Exited => {
                    let log = read_from(&self.layout.log, log_offset);
                    tracing::debug!(port, attempt, "postmaster exited during start:\n{log}");
                    if !is_retryable_start_failure(&log) {
                        break;
                    }
                }
                Readiness::TimedOut => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
            sleep(Duration::from_millis(100));
        }
        let err = EmbeddedPgError::NotReady {
            data_dir: self.layout.data.clone(),
            ports: tried,
            log: self.layout.log.clone(),
            log_tail: log_tail(&self.layout.log, LOG_TAIL_LINES),
        };
        Err(diagnose_access(err, &self.layout.data, self.run_as))
    }

    fn spawn_postmaster(&self, port: u16) -> Result<Child, EmbeddedPgError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.layout.log)
            .map_err(io_err(Step::OpenLog, &self.layout.log))?;
        let log2 = log
            .try_clone()
            .map_err(io_err(Step::OpenLog, &self.layout.log))?;
        let program = self.binaries.server("postgres");
        let pdeathsig = self.opts.stop_with_parent.then_some(self.opts.shutdown);
        let mut cmd = as_server_user(&program, self.run_as, pdeathsig);
        cmd.arg("-D")
            .arg(&self.layout.data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(&self.layout.socket_dir);
        for (name, value) in server_settings(&self.opts) {
            cmd.arg("-c").arg(format!("{name}={value}"));
        }
        cmd.current_dir("/")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        self.spawner
            .spawn(cmd)
            .map_err(|source| EmbeddedPgError::Spawn { program, source })
    }

    /// Signals the postmaster and waits for it; escalates to SIGQUIT, then SIGKILL.
    fn stop_postmaster(&mut self, mode: ShutdownMode) -> Result<(), EmbeddedPgError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // an unreaped child keeps its pid, so signalling after try_wait() == None is safe
        if !matches!(child.try_wait(), Ok(None)) {
            return Ok(());
        }
        let pid = child.id();
        let _ = signal(pid, mode.signal());
        if wait_exit(&mut child, mode.timeout()) {
            return Ok(());
        }
        if mode != ShutdownMode::Immediate {
            tracing::warn!(
                pid,
                "postmaster ignored a {mode:?} shutdown; sending SIGQUIT"
            );
            let _ = signal(pid, libc::SIGQUIT);
            if wait_exit(&mut child, ShutdownMode::Immediate.timeout()) {
                return Ok(());
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(EmbeddedPgError::StopTimedOut {
            pid,
            timeout: mode.timeout(),
        })
    }
}

impl Drop for EmbeddedPostgres {
    // runs on normal exit and while a panic unwinds; must never panic itself
    fn drop(&mut self) {
        let mode = self.opts.shutdown;
        if let Err(err) = self.stop_postmaster(mode) {
            tracing::warn!(error = %err, "stopping embedded PostgreSQL");
        }
        // then the fields drop: `_cleanup` removes directories, `spawner` ends its thread
    }
}

/// One cluster for a whole test binary, with a database per test
/// ([`EmbeddedPostgres::create_database`]). Never dropped: the postmaster dies with the process
/// (pdeathsig) and the next [`sweep_stale`] removes its directory.
pub fn shared_for_tests() -> Result<&'static EmbeddedPostgres, &'static EmbeddedPgError> {
    static SHARED: OnceLock<Result<EmbeddedPostgres, EmbeddedPgError>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            sweep_stale();
            EmbeddedPostgres::start(EmbeddedOptions::for_tests())
        })
        .as_ref()
}

/// Removes `/tmp/pgtest-<pid>-*` and `/tmp/pgsock-<pid>-*` directories whose creating process
/// is gone (left by a SIGKILLed test binary or ampere, whose `Drop` never ran). Returns how many.
pub fn sweep_stale() -> usize {
    let mut removed = 0;
    for entry in fs::read_dir("/tmp").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name
            .strip_prefix("pgtest-")
            .or_else(|| name.strip_prefix("pgsock-"))
        else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if !is_alive(pid) && fs::remove_dir_all(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

// ---------------------------------------------------------------------------------------------
// Start helpers

#[derive(Debug)]
struct Layout {
    root: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
}

impl Layout {
    fn create(
        opts: &EmbeddedOptions,
        run_as: Option<RunAs>,
        cleanup: &mut Cleanup,
    ) -> Result<Self, EmbeddedPgError> {
        let root = match &opts.location {
            Location::Temporary => unique_dir("pgtest"),
            Location::Persistent(dir) => dir.clone(),
        };
        if let (Location::Persistent(_), Some(parent)) = (&opts.location, root.parent()) {
            // default permissions: a 0700 root-owned parent would shut the postgres user out
            fs::create_dir_all(parent).map_err(io_err(Step::CreateDir, parent))?;
        }
        match fs::DirBuilder::new().mode(0o700).create(&root) {
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists && root.is_dir() => {
                if opts.location == Location::Temporary {
                    return Err(io_err(Step::CreateDir, &root)(err));
                }
            }
            result => result.map_err(io_err(Step::CreateDir, &root))?,
        }
        if opts.remove_dir_on_drop {
            cleanup.paths.push(root.clone());
        }
        chown_to(&root, run_as)?;
        let socket_dir = if root.as_os_str().len() + SOCKET_FILE_NAME_MAX.len() < SOCKET_PATH_MAX {
            root.clone()
        } else {
            let dir = unique_dir("pgsock");
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(io_err(Step::CreateDir, &dir))?;
            cleanup.paths.push(dir.clone());
            chown_to(&dir, run_as)?;
            dir
        };
        Ok(Self {
            data: root.join("data"),
            log: root.join("server.log"),
            root,
            socket_dir,
        })
    }
}

/// Paths removed when dropped.
#[derive(Debug, Default)]
struct Cleanup {
    paths: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for path in &self.paths {
            if let Err(err) = fs::remove_dir_all(path) {
                if err.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %err, "removing cluster dir");
                }
            }
        }
    }
}

fn check_settings(settings: &[(String, String)]) -> Result<(), EmbeddedPgError> {
    for (name, value) in settings {
        let off = matches!(
            value.to_ascii_lowercase().as_str(),
            "off" | "false" | "no" | "0"
        );
        if name.eq_ignore_ascii_case("synchronous_commit") && off {
            return Err(EmbeddedPgError::RefusedSetting {
                name: name.clone(),
                value: value.clone(),
                reason: "logical decoding only sees flushed WAL, so commits would reach the \
                         replication slot up to wal_writer_delay late",
            });
        }
    }
    Ok(())
}

fn server_settings(opts: &EmbeddedOptions) -> Vec<(String, String)> {
    let mut settings: Vec<(String, String)> = [
        ("listen_addresses", "127.0.0.1"),
        ("wal_level", "logical"),
        ("max_replication_slots", "20"),
        ("max_wal_senders", "20"),
    ]
    .iter()
    .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
    .collect();
    if opts.durability == Durability::Throwaway {
        settings.push(("fsync".to_owned(), "off".to_owned()));
        settings.push(("full_page_writes".to_owned(), "off".to_owned()));
    }
    settings.extend(opts.settings.iter().cloned());
    settings
}

fn superuser_password(auth: &Auth, root: &Path) -> Result<Option<String>, EmbeddedPgError> {
    match auth {
        Auth::Trust => Ok(None),
        Auth::Scram { password } => Ok(Some(password.clone())),
        Auth::ScramGenerated => {
            let path = password_path(root);
            match fs::read_to_string(&path) {
                Ok(text) if !text.trim().is_empty() => return Ok(Some(text.trim().to_owned())),
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(io_err(Step::ReadFile, &path)(err)),
            }
            let password = random_hex(16).map_err(io_err(Step::ReadFile, Path::new(URANDOM)))?;
            write_private(&path, &format!("{password}\n"))?;
            Ok(Some(password))
        }
    }
}

fn password_path(root: &Path) -> PathBuf {
    root.join("superuser-password")
}

const URANDOM: &str = "/dev/urandom";

fn random_hex(bytes: usize) -> io::Result<String> {
    let mut buf = vec![0u8; bytes];
    File::open(URANDOM)?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn write_private(path: &Path, contents: &str) -> Result<(), EmbeddedPgError> {
    let _ = fs::remove_file(path);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(Step::WriteFile, path))?;
    file.write_all(contents.as_bytes())
        .map_err(io_err(Step::WriteFile, path))
}

/// Runs initdb unless `data/` already holds a cluster. initdb writes into `data.initdb` and
/// the result is renamed, so an interrupted initdb never leaves a half-made `data/` behind.
fn ensure_initialized(
    binaries: &PgBinaries,
    layout: &Layout,
    opts: &EmbeddedOptions,
    run_as: Option<RunAs>,
    password: Option<&str>,
) -> Result<(), EmbeddedPgError> {
    if layout.data.join("PG_VERSION").is_file() {
        return check_version(binaries, &layout.data);
    }
    if layout.data.exists() {
        return Err(EmbeddedPgError::NotACluster {
            data_dir: layout.data.clone(),
        });
    }
    let staging = layout.root.join("data.initdb");
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(io_err(Step::RemoveDir, &staging))?;
    }
    let templated =
        opts.initdb_template && password.is_none() && opts.durability == Durability::Throwaway;
    let copied = templated && copy_template(binaries, run_as, &staging);
    if !copied {
        if let Location::Persistent(dir) = &opts.location {
            // the one slow step of a first start: say so, so a pause is not taken for a hang
            tracing::info!(
                "initializing an embedded PostgreSQL cluster in {} (first run; takes a few \
                 seconds)",
                dir.display()
            );
        }
        run_initdb(
            binaries,
            &staging,
            opts.durability,
            run_as,
            password,
            &layout.root,
        )?;
    }
    fs::rename(&staging, &layout.data).map_err(io_err(Step::Rename, &staging))
}

fn run_initdb(
    binaries: &PgBinaries,
    target: &Path,
    durability: Durability,
    run_as: Option<RunAs>,
    password: Option<&str>,
    scratch: &Path,
) -> Result<(), EmbeddedPgError> {
    let program = binaries.server("initdb");
    let mut cmd = as_server_user(&program, run_as, None);
    cmd.arg("-D").arg(target);
    cmd.args(["-U", SUPERUSER, "--no-locale", "-E", "UTF8"]);
    if durability == Durability::Throwaway {
        cmd.arg("--no-sync");
    }
    let pwfile = scratch.join("initdb-pwfile");
    if let Some(password) = password {
        write_private(&pwfile, &format!("{password}\n"))?;
        chown_to(&pwfile, run_as)?;
        cmd.arg("--auth=scram-sha-256")
            .arg(format!("--pwfile={}", pwfile.display()));
    } else {
        cmd.arg("--auth=trust");
    }
    let out = cmd.current_dir("/").stdin(Stdio::null()).output();
    let _ = fs::remove_file(&pwfile);
    let out = out.map_err(|source| EmbeddedPgError::Spawn { program, source })?;
    if !out.status.success() {
        let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
        output.push_str(&String::from_utf8_lossy(&out.stderr));
        return Err(EmbeddedPgError::Initdb {
            data_dir: target.to_path_buf(),
            status: out.status,
            output,
        });
    }
    Ok(())
}

/// Copies a pristine trust-auth throwaway data directory into `target` (`cp -a`, as the
/// server user), making the template first if needed: about half the time of an initdb.
/// Templates live in `/tmp/pgtemplate-<hash of bin dir and server version>`, shared by every
/// test process; they are made aside and renamed into place, so one is always complete.
/// `false` (the caller runs initdb) on any problem: the template is only a shortcut.
fn copy_template(binaries: &PgBinaries, run_as: Option<RunAs>, target: &Path) -> bool {
    let Some(template) = template_dir(binaries, run_as) else {
        return false;
    };
    let copied = as_server_user(Path::new("cp"), run_as, None)
        .arg("-a")
        .arg(&template)
        .arg(target)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !copied {
        tracing::debug!(template = %template.display(), "template copy failed; running initdb");
        let _ = fs::remove_dir_all(target);
    }
    copied
}

fn template_dir(binaries: &PgBinaries, run_as: Option<RunAs>) -> Option<PathBuf> {
    // one builder per process; other processes race benignly through the rename
    static BUILDING: Mutex<()> = Mutex::new(());
    let version = Command::new(binaries.server("postgres"))
        .arg("--version")
        .output()
        .ok()?;
    let mut key = binaries.dir.as_os_str().as_encoded_bytes().to_vec();
    key.extend_from_slice(&version.stdout);
    key.extend_from_slice(server_uid(run_as).to_string().as_bytes());
    key.extend_from_slice(TEMPLATE_FORMAT.as_bytes());
    let template = PathBuf::from(format!("/tmp/pgtemplate-{:016x}", fnv1a(&key)));
    let _guard = BUILDING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if is_trusted_template(&template, run_as) {
        return Some(template);
    }
    let scratch = unique_dir("pgtest"); // swept by sweep_stale if we die half-way
    let built = fs::create_dir(&scratch).is_ok()
        && chown_to(&scratch, run_as).is_ok()
        && run_initdb(
            binaries,
            &scratch.join("data"),
            Durability::Throwaway,
            run_as,
            None,
            &scratch,
        )
        .is_ok();
    if built {
        // fails if another process won the race: then theirs is used
        let _ = fs::rename(scratch.join("data"), &template);
    }
    let _ = fs::remove_dir_all(&scratch);
    is_trusted_template(&template, run_as).then_some(template)
}

/// Bumped when the initdb arguments of templates change.
const TEMPLATE_FORMAT: &str = "trust,no-locale,UTF8,v1";

/// /tmp is shared: use a template only if the server user owns it and nobody else can write it
/// (the sticky bit on /tmp keeps others from swapping it afterwards).
fn is_trusted_template(path: &Path, run_as: Option<RunAs>) -> bool {
    let uid = server_uid(run_as);
    fs::symlink_metadata(path).is_ok_and(|m| m.is_dir() && m.uid() == uid && m.mode() & 0o022 == 0)
        && path.join("PG_VERSION").is_file()
}

/// The uid the server runs as: the postgres user's when we are root, else ours.
fn server_uid(run_as: Option<RunAs>) -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    run_as.map_or_else(|| unsafe { libc::geteuid() }, |u| u.uid)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn check_version(binaries: &PgBinaries, data: &Path) -> Result<(), EmbeddedPgError> {
    let path = data.join("PG_VERSION");
    let data_version = fs::read_to_string(&path).map_err(io_err(Step::ReadFile, &path))?;
    let data_version = data_version.trim().to_owned();
    let binaries_version = binaries.major_version()?;
    if data_version == binaries_version {
        return Ok(());
    }
    Err(EmbeddedPgError::VersionMismatch {
        data_dir: data.to_path_buf(),
        data_version,
        bin_dir: binaries.dir.clone(),
        binaries_version,
    })
}

/// Postgres removes a `postmaster.pid` whose pid is dead by itself. It refuses to start when
/// the pid is alive, though, even when the pid now belongs to an unrelated process (pid reuse
/// after a reboot or in a new container), so: live postmaster → [`EmbeddedPgError::AlreadyRunning`]
/// (after waiting for one that is shutting down); live non-postgres process → remove the file.
fn check_no_live_postmaster(data: &Path) -> Result<(), EmbeddedPgError> {
    let pid_file = data.join("postmaster.pid");
    let deadline = Instant::now() + STOPPING_POSTMASTER_WAIT;
    loop {
        let Some(lines) = read_pid_file(&pid_file) else {
            return Ok(());
        };
        let Some(pid) = lines.first().and_then(|l| l.trim().parse::<i32>().ok()) else {
            return Ok(()); // being written or garbage: postgres decides
        };
        if pid <= 0 || !is_alive(pid) {
            return Ok(());
        }
        if is_not_postgres(pid) {
            tracing::info!(
                pid,
                "removing postmaster.pid naming a live non-postgres process"
            );
            return fs::remove_file(&pid_file).map_err(io_err(Step::RemoveDir, &pid_file));
        }
        let stopping = lines.get(7).is_some_and(|s| s.trim() == "stopping");
        if !stopping || Instant::now() >= deadline {
            return Err(EmbeddedPgError::AlreadyRunning {
                pid,
                data_dir: data.to_path_buf(),
            });
        }
        sleep(READY_POLL);
    }
}

/// True only when `/proc/<pid>/exe` is readable and is not a postgres binary.
fn is_not_postgres(pid: i32) -> bool {
    match fs::read_link(format!("/proc/{pid}/exe")) {
        Ok(exe) => {
            let name = exe.file_name().map(|n| n.to_string_lossy().into_owned());
            !name.is_some_and(|n| n.starts_with("postgres") || n.starts_with("postmaster"))
        }
        Err(_) => false,
    }
}

fn read_pid_file(path: &Path) -> Option<Vec<String>> {
    let text = fs::read_to_string(path).ok()?;
    Some(text.lines().map(str::to_owned).collect())
}

fn read_port_file(root: &Path) -> Option<u16> {
    fs::read_to_string(root.join("port"))
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|p| *p != 0)
}

/// Keeps the previous start's log as `server.log.1`.
fn rotate_log(log: &Path) -> Result<(), EmbeddedPgError> {
    if log.exists() {
        let old = log.with_extension("log.1");
        fs::rename(log, &old).map_err(io_err(Step::Rename, log))?;
    }
    Ok(())
}

enum Readiness {
    Ready,
    Exited,
    TimedOut,
}

/// Ready when `postmaster.pid` names *this* child with status `ready` (so a port clash with
/// another server cannot pass for success) and `pg_isready` agrees. Early exit = port taken.
fn wait_ready(
    child: &mut Child,
    binaries: &PgBinaries,
    data: &Path,
    port: u16,
    opts: &EmbeddedOptions,
) -> Readiness {
    let deadline = Instant::now() + opts.start_timeout;
    let pid = child.id().to_string();
    let pid_file = data.join("postmaster.pid");
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return Readiness::Exited;
        }
        let says_ready = match fs::read_to_string(&pid_file) {
            Ok(text) => {
                let lines: Vec<&str> = text.lines().collect();
                lines.first() == Some(&pid.as_str())
                    && lines.get(7).map(|s| s.trim()) == Some("ready")
            }
            // unreadable (a root without CAP_DAC_OVERRIDE): rely on pg_isready alone
            Err(err) => err.kind() == io::ErrorKind::PermissionDenied,
        };
        if says_ready && pg_isready(binaries, port) {
            return Readiness::Ready;
        }
        sleep(READY_POLL);
    }
    Readiness::TimedOut
}

fn pg_isready(binaries: &PgBinaries, port: u16) -> bool {
    Command::new(binaries.client("pg_isready"))
        .args([
            "-q",
            "-h",
            "127.0.0.1",
            "-U",
            SUPERUSER,
            "-d",
            "postgres",
            "-t",
            "1",
            "-p",
        ])
        .arg(port.to_string())
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_retryable_start_failure(log: &str) -> bool {
    [
        "already in use",
        "could not bind",
        "could not create any TCP/IP sockets",
        "could not create lock file",
        "pre-existing shared memory block",
    ]
    .iter()
    .any(|needle| log.contains(needle))
}

fn read_from(path: &Path, offset: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let mut buf = Vec::new();
    let _ = file
        .seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_to_end(&mut buf));
    String::from_utf8_lossy(&buf).into_owned()
}

fn log_tail(path: &Path, lines: usize) -> String {
    let len = fs::metadata(path).map_or(0, |m| m.len());
    let text = read_from(path, len.saturating_sub(64 * 1024));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Replaces a start failure by [`EmbeddedPgError::NotTraversable`] when, running as root, a
/// parent of the data directory is closed to the postgres user (the usual cause).
fn diagnose_access(err: EmbeddedPgError, data: &Path, run_as: Option<RunAs>) -> EmbeddedPgError {
    let Some(user) = run_as else {
        return err;
    };
    match data
        .ancestors()
        .skip(1)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .find(|dir| {
            fs::metadata(dir).is_ok_and(|m| {
                let mode = m.mode();
                let by_owner = m.uid() == user.uid && mode & 0o100 != 0;
                let by_group = m.gid() == user.gid && mode & 0o010 != 0;
                !(by_owner || by_group || mode & 0o001 != 0)
            })
        }) {
        Some(dir) => EmbeddedPgError::NotTraversable {
            path: dir.to_path_buf(),
        },
        None => err,
    }
}

// ---------------------------------------------------------------------------------------------
// Processes, users, ports

/// The `postgres` OS user, when we are root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RunAs {
    uid: u32,
    gid: u32,
}

impl RunAs {
    fn current() -> Result<Option<Self>, EmbeddedPgError> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        lookup_user(SUPERUSER)
            .map(Some)
            .ok_or(EmbeddedPgError::NoPostgresUser)
    }
}

fn lookup_user(name: &str) -> Option<RunAs> {
    let name = CString::new(name).ok()?;
    // SAFETY: an all-zero passwd (null pointers, zero ids) is a valid value to be overwritten.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf: Vec<libc::c_char> = vec![0; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and buf.len() is its real size; getpwnam_r
    // (unlike getpwnam) keeps no static state, so concurrent calls are fine.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    Some(RunAs {
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
    })
}

fn chown_to(path: &Path, run_as: Option<RunAs>) -> Result<(), EmbeddedPgError> {
    let Some(user) = run_as else {
        return Ok(());
    };
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
        .map_err(io_err(Step::Chown, path))
}

/// `prog` run as the postgres OS user when we are root, with an optional parent-death signal.
/// setpriv execs in place (runuser would fork and wait), so the `Child` is `prog` itself.
fn as_server_user(prog: &Path, run_as: Option<RunAs>, pdeathsig: Option<ShutdownMode>) -> Command {
    let mut pre: Vec<String> = Vec::new();
    if run_as.is_some() {
        pre.extend(["--reuid=postgres", "--regid=postgres", "--init-groups"].map(String::from));
    }
    if let Some(mode) = pdeathsig {
        pre.push(format!("--pdeathsig={}", mode.setpriv_name()));
    }
    if pre.is_empty() {
        return Command::new(prog);
    }
    let mut cmd = Command::new("setpriv");
    cmd.args(pre).arg("--").arg(prog);
    cmd
}

fn signal(pid: u32, sig: libc::c_int) -> io::Result<()> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: kill has no memory-safety preconditions; callers only signal their own unreaped
    // child, whose pid cannot have been reused.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn is_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn wait_exit(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if Instant::now() >= deadline => return false,
            Ok(None) => sleep(STOP_POLL),
        }
    }
}

/// A port nothing listens on now: scans `PGTEST_PORTS` ("lo-hi", default 55400-55499) from a
/// per-process offset, else lets the kernel pick. Racy by nature, so `launch` retries.
fn free_port() -> io::Result<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (lo, hi) = std::env::var("PGTEST_PORTS")
        .ok()
        .and_then(|range| {
            let (lo, hi) = range.split_once('-')?;
            Some((
                lo.trim().parse::<u16>().ok()?,
                hi.trim().parse::<u16>().ok()?,
            ))
        })
        .filter(|(lo, hi)| lo <= hi)
        .unwrap_or(DEFAULT_PORT_RANGE);
    let n = u32::from(hi - lo) + 1;
    let base = std::process::id()
        .wrapping_mul(7919)
        .wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed));
    for i in 0..n {
        let offset = base.wrapping_add(i) % n;
        let port = lo + u16::try_from(offset).unwrap_or(0);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `/tmp/<prefix>-<pid>-<n>-<nanos>`: short (socket path limit), and names its creator for
/// [`sweep_stale`].
fn unique_dir(prefix: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let n = N.fetch_add(1, Ordering::Relaxed);
    PathBuf::from(format!(
        "/tmp/{prefix}-{}-{n}-{nanos:x}",
        std::process::id()
    ))
}

fn url_for(user: &str, password: Option<&str>, port: u16, db: &str) -> String {
    let user = percent_encode(user);
    let db = percent_encode(db);
    match password {
        Some(pw) => format!(
            "postgresql://{user}:{}@127.0.0.1:{port}/{db}",
            percent_encode(pw)
        ),
        None => format!("postgresql://{user}@127.0.0.1:{port}/{db}"),
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Spawns processes from one thread that lives as long as the owning [`EmbeddedPostgres`], so
/// a `--pdeathsig` child outlives the caller's thread (see the module doc).
#[derive(Debug)]
struct Spawner {
    requests: mpsc::Sender<SpawnRequest>,
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

impl Spawner {
    fn new(root: &Path) -> Result<Self, EmbeddedPgError> {
        let (requests, inbox) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("embedded-pg".to_owned())
            .spawn(move || {
                // ends when the owner drops `requests`, after it stopped the postmaster
                for (mut cmd, reply) in inbox {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .map_err(io_err(Step::StartSpawnerThread, root))?;
        Ok(Self { requests })
    }

    fn spawn(&self, cmd: Command) -> io::Result<Child> {
        let gone = || io::Error::other("embedded-pg spawner thread is gone");
        let (reply, answer) = mpsc::channel();
        self.requests.send((cmd, reply)).map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_version_parses_old_and_new_schemes() {
        let v = |s| parse_major_version(s);
        assert_eq!(
            v("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)").as_deref(),
            Some("15")
        );
        assert_eq!(v("postgres (PostgreSQL) 17beta1").as_deref(), Some("17"));
        assert_eq!(v("postgres (PostgreSQL) 9.6.24").as_deref(), Some("9.6"));
        assert_eq!(v("nonsense"), None);
    }

    #[test]
    fn url_percent_encodes_the_password() {
        let url = url_for("postgres", Some("p@ss word/:"), 5432, "db");
        assert_eq!(
            url,
            "postgresql://postgres:p%40ss%20word%2F%3A@127.0.0.1:5432/db"
        );
        assert_eq!(url_for("u", None, 1, "d"), "postgresql://u@127.0.0.1:1/d");
    }

    #[test]
    fn the_url_for_logs_has_no_password_and_the_password_file_completes_it() {
        // Goal: what ampere prints lets a user connect, yet never shows the password.
        // Method: a persistent cluster with a generated password; psql with the printed URL and
        // PGPASSWORD read from the password file, then without it (refused).
        let root = unique_dir("pgtest");
        let opts = EmbeddedOptions {
            location: Location::Persistent(root.join(PRODUCT_DIR_NAME)),
            auth: Auth::ScramGenerated,
            durability: Durability::Throwaway,
            ..EmbeddedOptions::for_tests()
        };
        let pg = EmbeddedPostgres::start(opts).unwrap();
        let password = pg.password().unwrap().to_owned();
        let shown = pg.admin_url_without_password();
        let file = pg.password_file().unwrap();
        let psql = |pgpassword: Option<&str>| {
            let mut cmd = Command::new(pg.binaries().client("psql"));
            cmd.args(["-X", "-At", "-c", "SELECT 42", &shown])
                .env_remove("PGPASSWORD")
                .env("PGCONNECT_TIMEOUT", "10")
                .stdin(Stdio::null());
            if let Some(pw) = pgpassword {
                cmd.env("PGPASSWORD", pw);
            }
            cmd.output().unwrap()
        };
        let debug = format!("{pg:?}");
        let from_file = fs::read_to_string(&file).unwrap().trim().to_owned();
        let with = psql(Some(&from_file));
        let without = psql(None);
        let mode = fs::metadata(&file).unwrap().mode() & 0o777;
        drop(pg);
        fs::remove_dir_all(&root).unwrap();

        assert!(
            shown.starts_with("postgresql://postgres@127.0.0.1:"),
            "{shown}"
        );
        assert!(!shown.contains(&password), "{shown}");
        assert!(!debug.contains(&password), "{debug}");
        assert_eq!(file, root.join(PRODUCT_DIR_NAME).join("superuser-password"));
        assert_eq!(mode, 0o600);
        assert_eq!(from_file, password);
        assert_eq!(
            String::from_utf8_lossy(&with.stdout).trim(),
            "42",
            "{with:?}"
        );
        assert!(
            !without.status.success(),
            "no password, yet connected: {without:?}"
        );
    }

    #[test]
    fn synchronous_commit_off_is_refused() {
        let off = [("synchronous_commit".to_owned(), "OFF".to_owned())];
        assert!(matches!(
            check_settings(&off),
            Err(EmbeddedPgError::RefusedSetting { .. })
        ));
        let on = [("synchronous_commit".to_owned(), "on".to_owned())];
        assert!(check_settings(&on).is_ok());
    }

    #[test]
    fn a_pg_bin_without_the_server_names_what_is_missing_and_a_relative_one_is_made_absolute() {
        let root = unique_dir("pgtest");
        fs::create_dir_all(&root).unwrap();
        File::create(root.join("initdb")).unwrap();
        let search = BinarySearch {
            pg_bin: Some(root.clone()),
            versions_dir: None,
            pg_config: None,
        };
        let text = PgBinaries::locate_with(&search).unwrap_err().to_string();
        assert!(
            text.starts_with(&format!(
                "$PG_BIN={} is not a PostgreSQL bin directory: it has no postgres.",
                root.display()
            )),
            "{text}"
        );
        assert!(text.contains("DATABASE_URL"), "{text}");
        assert!(text.contains("apt-get install postgresql"), "{text}");

        File::create(root.join("postgres")).unwrap();
        let cwd = std::env::current_dir().unwrap();
        let relative: PathBuf = std::iter::repeat_n("..", cwd.components().count())
            .collect::<PathBuf>()
            .join(root.strip_prefix("/").unwrap());
        let found = PgBinaries::locate_with(&BinarySearch {
            pg_bin: Some(relative),
            ..search
        })
        .map(|bins| (bins.dir().is_absolute(), fs::canonicalize(bins.dir()).ok()));
        fs::remove_dir_all(&root).unwrap();
        assert_eq!(found.unwrap(), (true, Some(root)));
    }

    #[test]
    fn the_newest_version_dir_wins() {
        let root = unique_dir("pgtest");
        for v in ["9.6", "15", "100", "16"] {
            let bin = root.join(v).join("bin");
            fs::create_dir_all(&bin).unwrap();
            if v != "100" {
                File::create(bin.join("postgres")).unwrap();
                File::create(bin.join("initdb")).unwrap();
            }
        }
        let found = newest_version_bin(&root).map(|b| b.dir().to_path_buf());
        fs::remove_dir_all(&root).unwrap();
        assert_eq!(found, Some(root.join("16").join("bin")));
    }
}
