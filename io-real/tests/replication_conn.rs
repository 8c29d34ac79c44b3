//! The replication connection against a real throwaway Postgres (testing.md §1.4).
//!
//! Tests share one cluster per test binary (initdb costs about 1 s) and each gets its own
//! database; slot names are unique per test. The cluster's `pg_hba.conf` maps each password method
//! to one role. Only the `wal_level=replica` test starts a cluster of its own.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::time::timeout;
use tokio_postgres::NoTls;

use ampere_core::lsn::Lsn;
use ampere_io_real::replication::{
    connect_tcp, pg_clock_micros, CreateSlotOutcome, ReplicationConfig, ReplicationConnection,
    ReplicationError, ReplicationErrorKind, ReplicationMessage, ReplicationStream, SlotPersistence,
    StandbyStatus,
};

use pg::PgCluster;

/// Upper bound for any single step, so a broken test fails instead of hanging.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Roles of the shared cluster, one per password method (see `pg::HBA`); md5 needs an
/// md5-hashed password, so `password_encryption` switches before that role.
const ROLES_SQL: &str = "
    SET password_encryption = 'md5';
    CREATE ROLE md5_user LOGIN REPLICATION PASSWORD 'md5-secret';
    SET password_encryption = 'scram-sha-256';
    CREATE ROLE scram_user LOGIN REPLICATION PASSWORD 'scram-secret';
    CREATE ROLE clear_user LOGIN REPLICATION PASSWORD 'clear-secret';
    CREATE ROLE no_replication LOGIN;";

type Conn = ReplicationConnection<tokio::net::TcpStream>;
type Stream = ReplicationStream<tokio::net::TcpStream>;

/// A fresh database on the shared cluster.
struct TestDb {
    port: u16,
    name: String,
}

impl TestDb {
    async fn create() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let port = pg::shared(ROLES_SQL).port;
        let name = format!("test_{}", N.fetch_add(1, Ordering::Relaxed));
        let admin = sql_client(port, "postgres").await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        Self { port, name }
    }

    fn cfg(&self, user: &str, password: Option<&str>) -> ReplicationConfig {
        let mut cfg = ReplicationConfig::new(user, &self.name);
        cfg.password = password.map(str::to_owned);
        cfg
    }

    async fn connect(&self, cfg: &ReplicationConfig) -> Result<Conn, ReplicationError> {
        let connecting = connect_tcp("127.0.0.1", self.port, cfg);
        timeout(STEP_TIMEOUT, connecting)
            .await
            .expect("connect timed out")
    }

    async fn connect_trust(&self) -> Conn {
        self.connect(&self.cfg("postgres", None))
            .await
            .expect("trust login")
    }

    async fn sql(&self) -> tokio_postgres::Client {
        sql_client(self.port, &self.name).await
    }

    async fn start_streaming(&self, slot: &str) -> Stream {
        let conn = self.connect_trust().await;
        let starting = conn.start_replication(slot, Lsn::ZERO, &["ampere pub"], 1);
        starting.await.expect("start_replication")
    }
}

/// A plain SQL session as the superuser (trust), for setup and checks.
async fn sql_client(port: u16, db: &str) -> tokio_postgres::Client {
    let url = format!("postgresql://postgres@127.0.0.1:{port}/{db}");
    let (client, connection) = tokio_postgres::connect(&url, NoTls)
        .await
        .expect("sql connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

async fn recv(stream: &mut Stream) -> ReplicationMessage {
    timeout(STEP_TIMEOUT, stream.recv())
        .await
        .expect("recv timed out")
        .expect("recv")
}

async fn create_slot(conn: &mut Conn, slot: &str) -> Lsn {
    match conn
        .create_logical_slot(slot, SlotPersistence::Persistent)
        .await
        .expect("create slot")
    {
        CreateSlotOutcome::Created(created) => created.consistent_point,
        CreateSlotOutcome::AlreadyExists => panic!("slot {slot} already existed"),
    }
}

#[tokio::test]
async fn trust_login_reports_backend_pid_and_server_version() {
    let db = TestDb::create().await;
    let mut conn = db.connect_trust().await;
    assert!(conn.backend_pid() > 0);
    // whichever major PG_BIN runs (scripts/test-pg-versions.sh): the ParameterStatus value
    // parsed as the server's own server_version_num
    let rows = conn
        .simple_query("SELECT pg_backend_pid()::text, current_setting('server_version_num')")
        .await
        .expect("query");
    let version_num = conn.server_version_num().map(|v| v.to_string());
    assert!(version_num.is_some(), "server_version unparsed");
    assert_eq!(
        rows,
        vec![vec![Some(conn.backend_pid().to_string()), version_num]]
    );
}

#[tokio::test]
async fn logs_in_with_scram_sha_256_md5_and_cleartext_passwords() {
    let db = TestDb::create().await;
    for (user, password) in [
        ("scram_user", "scram-secret"),
        ("md5_user", "md5-secret"),
        ("clear_user", "clear-secret"),
    ] {
        let mut conn = db
            .connect(&db.cfg(user, Some(password)))
            .await
            .unwrap_or_else(|e| panic!("{user} login: {e:?}"));
        let rows = conn
            .simple_query("SELECT current_user")
            .await
            .expect("query");
        assert_eq!(rows, vec![vec![Some(user.to_owned())]]);
    }
}

#[tokio::test]
async fn wrong_or_missing_password_is_a_fatal_auth_error() {
    let db = TestDb::create().await;
    for user in ["scram_user", "md5_user", "clear_user"] {
        let err = db
            .connect(&db.cfg(user, Some("wrong")))
            .await
            .err()
            .expect("wrong password");
        assert!(matches!(err, ReplicationError::Auth(_)), "{user}: {err:?}");
        assert_eq!(err.code(), Some("28P01"), "{user}: {err}");
        assert_eq!(err.kind(), ReplicationErrorKind::Fatal);

        let err = db
            .connect(&db.cfg(user, None))
            .await
            .err()
            .expect("no password");
        assert!(
            matches!(err, ReplicationError::PasswordMissing { .. }),
            "{user}: {err:?}"
        );
        assert_eq!(err.kind(), ReplicationErrorKind::Fatal);
    }
}

#[tokio::test]
async fn missing_replication_privilege_and_unknown_database_are_fatal() {
    let db = TestDb::create().await;
    let err = db
        .connect(&db.cfg("no_replication", None))
        .await
        .err()
        .expect("no privilege");
    assert_eq!(err.code(), Some("42501"), "{err}");
    assert_eq!(err.kind(), ReplicationErrorKind::Fatal);

    let mut missing_db = db.cfg("postgres", None);
    missing_db.database = "no_such_db".into();
    let err = db
        .connect(&missing_db)
        .await
        .err()
        .expect("unknown database");
    assert_eq!(err.code(), Some("3D000"), "{err}");
    assert_eq!(err.kind(), ReplicationErrorKind::Fatal);
}

#[tokio::test]
async fn display_settings_apply_to_the_replication_connection() {
    let db = TestDb::create().await;
    let mut conn = db.connect_trust().await;
    for (setting, expected) in [
        ("DateStyle", "ISO, DMY"),
        ("TimeZone", "UTC"),
        ("IntervalStyle", "iso_8601"),
        ("extra_float_digits", "1"),
        ("bytea_output", "hex"),
    ] {
        let rows = conn
            .simple_query(&format!("SHOW {setting}"))
            .await
            .expect("SHOW");
        assert_eq!(rows, vec![vec![Some(expected.to_owned())]], "{setting}");
    }
}

#[tokio::test]
async fn identify_system_reports_timeline_xlogpos_and_database() {
    let db = TestDb::create().await;
    let mut conn = db.connect_trust().await;
    let id = conn.identify_system().await.expect("IDENTIFY_SYSTEM");
    assert!(
        id.system_id.parse::<u64>().is_ok(),
        "system_id {:?}",
        id.system_id
    );
    assert_eq!(id.timeline, 1);
    assert!(id.xlogpos > Lsn::ZERO);
    assert_eq!(id.dbname.as_deref(), Some(db.name.as_str()));
    // an error leaves the connection usable
    let err = conn
        .simple_query("SELECT * FROM no_such_table")
        .await
        .expect_err("error");
    assert_eq!(err.code(), Some("42P01"));
    assert_eq!(
        conn.identify_system().await.expect("again").system_id,
        id.system_id
    );
}

#[tokio::test]
async fn creating_an_existing_slot_reports_already_exists_and_slot_info_reads_it() {
    let db = TestDb::create().await;
    let mut conn = db.connect_trust().await;
    assert_eq!(
        conn.slot_info("exists_slot").await.expect("slot_info"),
        None
    );
    let consistent_point = create_slot(&mut conn, "exists_slot").await;
    let again = conn
        .create_logical_slot("exists_slot", SlotPersistence::Persistent)
        .await;
    assert_eq!(
        again.expect("second create"),
        CreateSlotOutcome::AlreadyExists
    );

    let info = conn
        .slot_info("exists_slot")
        .await
        .expect("slot_info")
        .expect("slot exists");
    assert_eq!(info.confirmed_flush_lsn, Some(consistent_point));
    assert_eq!(info.database.as_deref(), Some(db.name.as_str()));
    assert!(!info.is_active);
    assert_eq!(info.wal_status.as_deref(), Some("reserved"));
    assert!(!info.is_lost());

    let temp = conn
        .create_logical_slot("exists_temp", SlotPersistence::Temporary)
        .await;
    assert!(
        matches!(temp, Ok(CreateSlotOutcome::Created(_))),
        "{temp:?}"
    );
}

#[tokio::test]
async fn streams_a_committed_insert_and_standby_status_advances_confirmed_flush_lsn() {
    // Goal: the stream delivers one transaction's pgoutput messages and an ack moves the slot.
    // Method: insert one row, collect XLogData up to Commit, confirm commit_lsn + 1 (RP-2).
    let db = TestDb::create().await;
    let client = db.sql().await;
    client
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, name text);
             CREATE PUBLICATION \"ampere pub\" FOR ALL TABLES;",
        )
        .await
        .expect("setup");
    create_slot(&mut db.connect_trust().await, "insert_slot").await;
    let mut stream = db.start_streaming("insert_slot").await;
    client
        .execute("INSERT INTO items VALUES (1, 'one')", &[])
        .await
        .expect("insert");

    let mut kinds = Vec::new();
    let commit_lsn = loop {
        if let ReplicationMessage::XLogData { data, .. } = recv(&mut stream).await {
            kinds.push(char::from(data[0]));
            if data[0] == b'C' {
                // Commit: 'C', flags (u8), commit LSN (u64), end LSN (u64), timestamp (i64)
                break Lsn(u64::from_be_bytes(data[2..10].try_into().expect("8 bytes")));
            }
        }
    };
    assert_eq!(kinds, ['B', 'R', 'I', 'C']);

    let ack = commit_lsn.next();
    let status = StandbyStatus {
        write: ack,
        flush: ack,
        apply: ack,
        client_clock_micros: pg_clock_micros(SystemTime::now()),
        reply_requested: false,
    };
    stream
        .send_standby_status(status)
        .await
        .expect("standby status");
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let row = client
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots \
                 WHERE slot_name = 'insert_slot'",
                &[],
            )
            .await
            .expect("slot row");
        let confirmed: Lsn = row.get::<_, String>(0).parse().expect("lsn");
        if confirmed == ack {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "confirmed_flush_lsn stuck at {confirmed}, sent {ack}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn keepalive_requesting_a_reply_arrives_within_wal_sender_timeout() {
    // wal_sender_timeout is user-settable, so it goes in as a startup option
    let db = TestDb::create().await;
    let mut conn = db.connect_trust().await;
    conn.simple_query("CREATE PUBLICATION \"ampere pub\"")
        .await
        .expect("publication");
    create_slot(&mut conn, "keepalive_slot").await;
    let mut cfg = db.cfg("postgres", None);
    cfg.options.push(("wal_sender_timeout".into(), "2s".into()));
    let conn = db.connect(&cfg).await.expect("connect");
    let starting = conn.start_replication("keepalive_slot", Lsn::ZERO, &["ampere pub"], 1);
    let mut stream = starting.await.expect("start_replication");
    let started = Instant::now();
    loop {
        let msg = recv(&mut stream).await;
        if let ReplicationMessage::PrimaryKeepalive {
            reply_requested: true,
            wal_end,
            ..
        } = msg
        {
            assert!(wal_end > Lsn::ZERO);
            break;
        }
    }
    assert!(
        started.elapsed() <= Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn second_stream_on_an_active_slot_fails_with_55006_until_the_first_closes() {
    let db = TestDb::create().await;
    let mut conn = db.connect_trust().await;
    conn.simple_query("CREATE PUBLICATION \"ampere pub\"")
        .await
        .expect("publication");
    create_slot(&mut conn, "active_slot").await;
    let first = db.start_streaming("active_slot").await;
    let second = db.connect_trust().await;
    let err = second
        .start_replication("active_slot", Lsn::ZERO, &["ampere pub"], 1)
        .await
        .err()
        .expect("slot is active");
    assert_eq!(err.code(), Some("55006"), "{err}");
    assert_eq!(err.kind(), ReplicationErrorKind::Transient);

    first.close().await.expect("close");
    let deadline = Instant::now() + STEP_TIMEOUT;
    while conn
        .slot_info("active_slot")
        .await
        .expect("slot_info")
        .expect("slot")
        .is_active
    {
        assert!(Instant::now() < deadline, "slot still active after close");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _third = db.start_streaming("active_slot").await;
}

#[tokio::test]
async fn unknown_host_is_fatal() {
    let cfg = ReplicationConfig::new("postgres", "postgres");
    let connecting = connect_tcp("no-such-host.invalid", 5432, &cfg);
    let err = timeout(STEP_TIMEOUT, connecting)
        .await
        .expect("lookup timed out")
        .err();
    let err = err.expect("unknown host");
    assert!(
        matches!(err, ReplicationError::HostLookup { .. }),
        "{err:?}"
    );
    assert_eq!(err.kind(), ReplicationErrorKind::Fatal);
}

#[tokio::test]
async fn creating_a_slot_without_logical_wal_level_is_fatal() {
    let pg = PgCluster::start(&["wal_level=replica"]);
    let cfg = ReplicationConfig::new("postgres", "postgres");
    let mut conn = connect_tcp("127.0.0.1", pg.port, &cfg)
        .await
        .expect("connect");
    let err = conn
        .create_logical_slot("replica_slot", SlotPersistence::Persistent)
        .await
        .expect_err("wal_level=replica");
    assert_eq!(err.code(), Some("55000"), "{err}");
    assert_eq!(err.kind(), ReplicationErrorKind::Fatal, "{err}");
}

#[tokio::test]
async fn a_fast_shutdown_of_postgres_ends_the_stream_as_a_shutdown_not_a_protocol_error() {
    // The walsender of a caught-up, fully confirmed stream ends it with CommandComplete at a
    // fast shutdown; that was reported as an unexpected message, logged like a protocol bug.
    let pg = PgCluster::start(&[]);
    let sql = sql_client(pg.port, "postgres").await;
    sql.batch_execute("CREATE PUBLICATION \"ampere pub\" FOR ALL TABLES")
        .await
        .expect("publication");
    let cfg = ReplicationConfig::new("postgres", "postgres");
    let connect = || async {
        timeout(STEP_TIMEOUT, connect_tcp("127.0.0.1", pg.port, &cfg))
            .await
            .expect("connect timed out")
            .expect("connect")
    };
    let consistent_point = create_slot(&mut connect().await, "shutdown_slot").await;
    let conn = connect().await;
    let mut stream = conn
        .start_replication("shutdown_slot", Lsn::ZERO, &["ampere pub"], 1)
        .await
        .expect("start_replication");
    let confirmed = StandbyStatus {
        write: consistent_point,
        flush: consistent_point,
        apply: consistent_point,
        client_clock_micros: pg_clock_micros(SystemTime::now()),
        reply_requested: false,
    };
    stream
        .send_standby_status(confirmed)
        .await
        .expect("standby status");
    drop(sql);

    pg.fast_shutdown();
    let ended = loop {
        match timeout(STEP_TIMEOUT, stream.recv()).await {
            Ok(Ok(ReplicationMessage::PrimaryKeepalive { wal_end, .. })) => {
                // The shutdown checkpoint's WAL: confirm it, as ampere does when idle.
                let status = StandbyStatus {
                    write: wal_end,
                    flush: wal_end,
                    apply: wal_end,
                    ..confirmed
                };
                stream.send_standby_status(status).await.expect("status");
            }
            Ok(Ok(other)) => panic!("unexpected {other:?}"),
            Ok(Err(e)) => break e,
            Err(_) => panic!("the stream did not end within {STEP_TIMEOUT:?}"),
        }
    };
    // A walsender that has sent and seen confirmed everything ends the COPY (CommandComplete);
    // one caught mid-way (a loaded machine) is terminated with 57P01 instead. Either names a
    // shutdown; what must never come is an "unexpected message".
    let is_shutdown = match &ended {
        ReplicationError::ServerShuttingDown | ReplicationError::Closed => true,
        ReplicationError::Server(e) => e.code == "57P01",
        _ => false,
    };
    assert!(is_shutdown, "{ended:?}");
    assert_eq!(ended.kind(), ReplicationErrorKind::Transient, "{ended}");
}

/// Throwaway PostgreSQL cluster (testing.md §1.4), std only. To be replaced by the shared harness.
mod pg {
    use std::fs::{self, File};
    use std::net::TcpListener;
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{mpsc, OnceLock};
    use std::thread::{self, sleep};
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    /// One authentication method per role; `norepl` lacks REPLICATION. Logical replication
    /// connections match the ordinary (`all`) database lines, not `replication` ones.
    const HBA: &str = "\
local all all                            trust
host  all md5_user   127.0.0.1/32        md5
host  all scram_user 127.0.0.1/32        scram-sha-256
host  all clear_user 127.0.0.1/32        password
host  all all        127.0.0.1/32        trust
";

    pub(crate) struct PgCluster {
        pub(crate) port: u16,
        dir: PathBuf,
        child: Child,
    }

    impl PgCluster {
        /// initdb + postgres as a direct child; `settings` are extra `-c` options (last wins).
        pub(crate) fn start(settings: &[&str]) -> Self {
            sweep_stale();
            let dir = unique_dir();
            fs::create_dir(&dir).expect("create cluster dir");
            if running_as_root() {
                let st = Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&dir)
                    .status();
                assert!(st.expect("chown").success(), "chown failed");
            }
            let data = dir.join("data");
            let out = pg_command(&pg_bin().join("initdb"), false)
                .current_dir("/") // the postgres user may not be able to read our cwd
                .args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--no-locale",
                    "-E",
                    "UTF8",
                ])
                .arg("--no-sync")
                .arg("-D")
                .arg(&data)
                .output()
                .expect("run initdb");
            if !out.status.success() {
                let _ = fs::remove_dir_all(&dir);
                panic!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            fs::write(data.join("pg_hba.conf"), HBA).expect("write pg_hba.conf");
            for attempt in 0..5 {
                let port = free_port();
                if let Some(child) = spawn_postgres(&dir, &data, port, attempt, settings) {
                    return Self { port, dir, child };
                }
            }
            let _ = fs::remove_dir_all(&dir);
            panic!("postgres did not start after 5 attempts");
        }
    }

    /// The cluster shared by this test binary.
    pub(crate) struct Shared {
        pub(crate) port: u16,
        pid: i32,
        dir: PathBuf,
    }

    static SHARED: OnceLock<Shared> = OnceLock::new();

    /// Starts the shared cluster on first use and runs `setup_sql` (psql, as `postgres`) once.
    ///
    /// `--pdeathsig` fires when the *spawning thread* ends, so the postmaster is spawned from a
    /// thread that never ends. Statics are never dropped, so an `atexit` hook stops it (by pid)
    /// and removes its directory when the test binary exits; pdeathsig covers SIGKILL.
    pub(crate) fn shared(setup_sql: &str) -> &'static Shared {
        SHARED.get_or_init(|| {
            let (tx, rx) = mpsc::channel();
            let setup_sql = setup_sql.to_owned();
            thread::spawn(move || {
                let cluster = PgCluster::start(&[]);
                psql(cluster.port, &setup_sql); // a panic here drops (stops) the cluster
                let pid = i32::try_from(cluster.child.id()).expect("pid fits i32");
                let shared = Shared {
                    port: cluster.port,
                    pid,
                    dir: cluster.dir.clone(),
                };
                let _ = tx.send(shared);
                // never dropped: the atexit hook stops the postmaster instead
                let _cluster = cluster;
                loop {
                    thread::park();
                }
            });
            let shared = rx.recv().expect("shared cluster failed to start");
            // SAFETY: registers a plain extern "C" fn without arguments; it only touches SHARED,
            // which is initialised before any exit can observe it (get returns None otherwise).
            unsafe {
                libc::atexit(stop_shared);
            }
            shared
        })
    }

    extern "C" fn stop_shared() {
        if let Some(shared) = SHARED.get() {
            stop_pid(shared.pid);
            let _ = fs::remove_dir_all(&shared.dir);
        }
    }

    /// SIGQUIT (immediate shutdown), then reap it for up to 10 s, then SIGKILL.
    fn stop_pid(pid: i32) {
        // SAFETY: kill(2) and waitpid(2) have no memory-safety preconditions; pid is our own
        // unreaped child, so it cannot have been reused.
        unsafe {
            libc::kill(pid, libc::SIGQUIT);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // SAFETY: as above; a null status pointer is allowed.
            let reaped = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
            if reaped != 0 {
                return; // reaped (pid) or not our child any more (-1)
            }
            if Instant::now() > deadline {
                // SAFETY: as above.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                }
                return;
            }
            sleep(Duration::from_millis(20));
        }
    }

    fn psql(port: u16, sql: &str) {
        let out = Command::new(pg_bin().join("psql"))
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .args(["-d", "postgres", "-p"])
            .arg(port.to_string())
            .arg("-c")
            .arg(sql)
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn spawn_postgres(
        dir: &Path,
        data: &Path,
        port: u16,
        attempt: u32,
        settings: &[&str],
    ) -> Option<Child> {
        let log = File::create(dir.join(format!("server-{attempt}.log"))).expect("log file");
        let mut cmd = pg_command(&pg_bin().join("postgres"), true);
        cmd.current_dir("/")
            .arg("-D")
            .arg(data)
            .arg("-p")
            .arg(port.to_string());
        cmd.arg("-k").arg(dir);
        let base = [
            "listen_addresses=127.0.0.1",
            "wal_level=logical",
            "max_replication_slots=20",
            "max_wal_senders=20",
            "fsync=off",
            "full_page_writes=off",
        ];
        for setting in base.iter().chain(settings) {
            cmd.args(["-c", setting]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn postgres");
        if wait_ready(&mut child, port, Duration::from_secs(30)) {
            return Some(child);
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    fn pg_bin() -> PathBuf {
        std::env::var_os("PG_BIN").map_or_else(
            || PathBuf::from("/usr/lib/postgresql/15/bin"),
            PathBuf::from,
        )
    }

    fn running_as_root() -> bool {
        fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false)
    }

    /// As root, runs `prog` as the `postgres` user via setpriv, which execs in place, so the
    /// Child is the program itself; `--pdeathsig` kills it if the spawning thread dies.
    fn pg_command(prog: &Path, pdeathsig: bool) -> Command {
        let mut pre: Vec<&str> = Vec::new();
        if running_as_root() {
            pre.extend(["--reuid=postgres", "--regid=postgres", "--init-groups"]);
        }
        if pdeathsig {
            pre.push("--pdeathsig=QUIT");
        }
        if pre.is_empty() {
            return Command::new(prog);
        }
        let mut c = Command::new("setpriv");
        c.args(pre).arg("--").arg(prog);
        c
    }

    /// A port nothing listens on now (racy: start() retries when postgres cannot bind).
    fn free_port() -> u16 {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let (lo, n) = (55_400_u32, 100_u32);
        let base = std::process::id().wrapping_mul(7919) + NEXT.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            let port = u16::try_from(lo + (base + i) % n).expect("port in range");
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
        let any = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        any.local_addr().expect("local addr").port()
    }

    fn unique_dir() -> PathBuf {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        // short: the unix socket path (dir + "/.s.PGSQL.NNNNN") must stay under 107 bytes
        let n = N.fetch_add(1, Ordering::Relaxed);
        PathBuf::from(format!("/tmp/pgtest-{}-{n}-{nanos:x}", std::process::id()))
    }

    /// Polls pg_isready; gives up early if the postmaster exited (e.g. port taken).
    fn wait_ready(child: &mut Child, port: u16, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            let st = Command::new(pg_bin().join("pg_isready"))
                .args([
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-t",
                    "1",
                ])
                .arg("-p")
                .arg(port.to_string())
                .status();
            if matches!(st, Ok(s) if s.success()) {
                return true;
            }
            sleep(Duration::from_millis(50));
        }
        false
    }

    impl PgCluster {
        /// Asks the postmaster for a fast shutdown (SIGINT) and returns at once.
        pub(crate) fn fast_shutdown(&self) {
            let pid = i32::try_from(self.child.id()).expect("pid fits i32");
            // SAFETY: kill(2) has no memory-safety preconditions; pid is our own unreaped
            // child, so it cannot have been reused.
            unsafe {
                libc::kill(pid, libc::SIGINT);
            }
        }
    }

    impl Drop for PgCluster {
        // runs on normal exit and while unwinding; never panics itself
        fn drop(&mut self) {
            match i32::try_from(self.child.id()) {
                Ok(pid) => stop_pid(pid),
                Err(_) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                }
            }
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    /// Removes /tmp/pgtest-<pid>-* directories whose creating process is gone.
    fn sweep_stale() {
        for entry in fs::read_dir("/tmp").into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("pgtest-") else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}
