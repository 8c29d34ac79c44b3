//! `embedded_pg`: real PostgreSQL clusters started from the installed binaries.
//! Needs the server binaries (`scripts/install-deps.sh`); each test takes about a second.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;

use ampere_io_real::embedded_pg::{
    shared_for_tests, sweep_stale, Auth, BinarySearch, EmbeddedOptions, EmbeddedPgError,
    EmbeddedPostgres, Location, PgBinaries, ShutdownMode,
};

#[test]
fn starts_a_cluster_with_logical_wal_level_and_stops_it() {
    // Goal: the test cluster runs with the settings logical replication needs, and dropping it
    // leaves neither a process nor a directory behind.
    sweep_stale();
    let pg = EmbeddedPostgres::start(EmbeddedOptions::for_tests()).unwrap();
    assert_eq!(pg.psql("postgres", "SHOW wal_level").unwrap(), "logical");
    assert_eq!(pg.psql("postgres", "SHOW fsync").unwrap(), "off");
    assert_eq!(
        pg.psql("postgres", "SHOW synchronous_commit").unwrap(),
        "on"
    );
    assert!(pg
        .socket_dir()
        .join(format!(".s.PGSQL.{}", pg.port()))
        .exists());
    assert!(pg
        .admin_url()
        .starts_with("postgresql://postgres@127.0.0.1:"));

    let (dir, pid) = (pg.dir().to_path_buf(), pg.pid());
    assert!(process_exists(pid));
    drop(pg);
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(!process_exists(pid), "postmaster {pid} still running");
}

#[test]
fn reuses_the_data_dir_across_restarts() {
    // Goal: the product's persistent cluster keeps its data and its generated superuser
    // password across an ampere restart (a fast stop and a new start), across a Postgres
    // restart, and after its postmaster was killed.
    let root = scratch_dir("reuse");
    let opts = EmbeddedOptions {
        auth: Auth::ScramGenerated,
        ..persistent_options(&root)
    };

    let pg = EmbeddedPostgres::start(opts.clone()).unwrap();
    pg.psql(
        "postgres",
        "CREATE TABLE kept (id int); INSERT INTO kept VALUES (1)",
    )
    .unwrap();
    let (port, password) = (pg.port(), pg.password().unwrap().to_owned());
    assert_eq!(password.len(), 32);
    pg.stop().unwrap();
    let data = root.join("embedded-postgres").join("data");
    assert!(data.join("PG_VERSION").exists(), "data dir kept on stop");

    let mut pg = EmbeddedPostgres::start(opts.clone()).unwrap();
    assert_eq!(pg.port(), port, "the previous port is preferred");
    assert_eq!(pg.password(), Some(password.as_str()));
    assert_eq!(
        pg.psql("postgres", "SELECT count(*) FROM kept").unwrap(),
        "1"
    );

    pg.restart().unwrap();
    assert_eq!(pg.port(), port);
    pg.psql("postgres", "INSERT INTO kept VALUES (2)").unwrap();

    // a killed ampere leaves a postmaster.pid naming a dead pid: postgres must start anyway
    kill_and_wait(pg.pid());
    assert!(data.join("postmaster.pid").exists());
    drop(pg);
    let pg = EmbeddedPostgres::start(opts).unwrap();
    assert_eq!(
        pg.psql("postgres", "SELECT count(*) FROM kept").unwrap(),
        "2"
    );
    drop(pg);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn survives_the_exit_of_the_thread_that_started_it() {
    // Goal: the pdeathsig gotcha is handled: the kernel's "parent" of a --pdeathsig child is
    // the spawning *thread*, so a cluster started on a short-lived thread must not die with it.
    let pg = std::thread::spawn(|| EmbeddedPostgres::start(EmbeddedOptions::for_tests()))
        .join()
        .unwrap()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300)); // pdeathsig would have fired by now
    assert!(
        process_exists(pg.pid()) && !is_zombie(pg.pid()),
        "postmaster died with its thread"
    );
    assert_eq!(pg.psql("postgres", "SELECT 'alive'").unwrap(), "alive");
}

#[test]
fn a_second_start_on_a_live_data_dir_is_refused() {
    // Goal: two amperes on one storage dir get a clear error, not a confusing server log.
    let root = scratch_dir("live");
    let first = EmbeddedPostgres::start(persistent_options(&root)).unwrap();
    let second = EmbeddedPostgres::start(persistent_options(&root));
    match second {
        Err(EmbeddedPgError::AlreadyRunning { pid, .. }) => {
            assert_eq!(u32::try_from(pid).unwrap(), first.pid());
        }
        other => panic!("expected AlreadyRunning, got {other:?}"),
    }
    assert_eq!(
        first.psql("postgres", "SELECT 1").unwrap(),
        "1",
        "the first one is untouched"
    );
    drop(first);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn missing_binaries_give_an_error_naming_database_url() {
    // Goal: without server binaries the operator learns both ways out.
    // Method: explicit searches, never the process-global environment.
    let empty = scratch_dir("nobin");
    let via_pg_bin = BinarySearch {
        pg_bin: Some(empty.clone()),
        ..BinarySearch::from_env()
    };
    let err = PgBinaries::locate_with(&via_pg_bin).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("DATABASE_URL"), "{text}");
    assert!(text.contains("apt-get install postgresql"), "{text}");
    assert!(text.contains(&empty.display().to_string()), "{text}");

    let nowhere = BinarySearch {
        pg_bin: None,
        versions_dir: Some(empty.clone()),
        pg_config: None,
    };
    let text = PgBinaries::locate_with(&nowhere).unwrap_err().to_string();
    assert!(
        text.starts_with("no PostgreSQL server binaries found (looked in $PG_BIN, "),
        "{text}"
    );

    // a PG_BIN that exists but holds no server is not silently replaced by another install
    assert!(PgBinaries::at(&empty).is_none());
    std::fs::remove_dir_all(&empty).unwrap();
}

#[tokio::test]
async fn scram_auth_works_with_the_password_in_the_url() {
    // Goal: with SCRAM, the URL carries the (percent-encoded) password that the product's
    // client needs, and a wrong password is rejected.
    let password = "s3cret pass/with@odd:chars";
    let opts = EmbeddedOptions {
        auth: Auth::Scram {
            password: password.to_owned(),
        },
        ..EmbeddedOptions::for_tests()
    };
    let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(opts))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pg.password(), Some(password));
    let url = pg.url("postgres", "postgres");
    assert!(
        url.contains(":s3cret%20pass%2Fwith%40odd%3Achars@"),
        "{url}"
    );

    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let row = client.query_one("SHOW wal_level", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "logical");
    drop(client);
    connection.await.unwrap().unwrap();

    let wrong = url.replace("s3cret", "wrong");
    let err = tokio_postgres::connect(&wrong, tokio_postgres::NoTls)
        .await
        .err();
    let code = err.as_ref().and_then(tokio_postgres::Error::code);
    assert_eq!(code, Some(&SqlState::INVALID_PASSWORD), "{err:?}");
    let no_password = format!("postgresql://postgres@127.0.0.1:{}/postgres", pg.port());
    assert!(tokio_postgres::connect(&no_password, tokio_postgres::NoTls)
        .await
        .is_err());
    tokio::task::spawn_blocking(move || drop(pg)).await.unwrap();
}

#[test]
fn the_shared_cluster_serves_a_database_per_test() {
    // Goal: one cluster per test binary, isolated by database, reachable from any thread.
    let pg = shared_for_tests().unwrap();
    let url = pg.create_database("shared_a").unwrap();
    assert!(url.ends_with("/shared_a"));
    pg.psql("shared_a", "CREATE TABLE t (x int)").unwrap();
    let other = std::thread::spawn(|| shared_for_tests().unwrap().port())
        .join()
        .unwrap();
    assert_eq!(other, pg.port());
    assert!(
        pg.psql("postgres", "SELECT * FROM t").is_err(),
        "tables are per database"
    );
}

// ---------------------------------------------------------------------------------------------

fn persistent_options(root: &Path) -> EmbeddedOptions {
    EmbeddedOptions {
        location: Location::Persistent(root.join("embedded-postgres")),
        remove_dir_on_drop: false,
        shutdown: ShutdownMode::Fast,
        ..EmbeddedOptions::for_tests()
    }
}

/// A short `/tmp/pgtest-<pid>-...` directory that `sweep_stale` would clean up after a crash.
fn scratch_dir(tag: &str) -> PathBuf {
    let dir = PathBuf::from(format!("/tmp/pgtest-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).expect("create scratch dir");
    dir
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// SIGKILLs the postmaster and waits until it has exited (it stays a zombie until its owner
/// reaps it, so "exited" is: gone or state Z).
fn kill_and_wait(pid: u32) {
    let pid_t = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill has no memory-safety preconditions; pid is our own unreaped child.
    assert_eq!(unsafe { libc::kill(pid_t, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while process_exists(pid) && !is_zombie(pid) {
        assert!(
            Instant::now() < deadline,
            "postmaster {pid} survived SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is_zombie(pid: u32) -> bool {
    // /proc/<pid>/stat is "pid (comm) S ...": the state follows the last ')'
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
    })
}
