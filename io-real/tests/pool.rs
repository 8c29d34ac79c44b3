//! `RealPg`'s connections against a real PostgreSQL: the pool's bound
//! (`ELECTRIC_DB_POOL_SIZE`) and reuse, the pooled URL (`ELECTRIC_POOLED_DATABASE_URL`) for
//! every SQL statement while replication stays on `DATABASE_URL`, and TCP keepalive and
//! `TCP_USER_TIMEOUT` on the sockets ampere really opened.
//!
//! Method: the shared throwaway cluster with a database per test. Backends are counted in
//! `pg_stat_activity` from a connection of the test's own, told apart by `application_name` and
//! role; socket options are read back with getsockopt on this process's own file descriptors,
//! found by the client port Postgres reports for each backend.

// Helpers outside `#[test]` fns panic on failure too: this whole file is test code.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socket2::SockRef;
use tokio_postgres::{Client, NoTls};

use ampere_core::ports::{PgPort, SnapshotRequest, SnapshotWriter};
use ampere_core::shape::{RelationName, Replica, ShapeDefinition, ShapeHandle};
use ampere_io_real::embedded_pg::{shared_for_tests, EmbeddedPostgres};
use ampere_io_real::pg::{PgOptions, RealPg};
use ampere_io_real::pool::PoolSize;
use ampere_io_real::tcp::TcpOptions;

const PUBLICATION: &str = "electric_publication_pool";
/// Every wait for Postgres to reach a state is bounded by this.
const WAIT_MAX: Duration = Duration::from_secs(20);

fn cluster() -> &'static EmbeddedPostgres {
    shared_for_tests().expect("shared test cluster starts")
}

/// A fresh database with `items` (10 rows) and the publication; its superuser URL and a
/// client of the test's own.
async fn items_db(name: &str) -> (String, Client) {
    let url = cluster().create_database(name).expect("CREATE DATABASE");
    let client = connect(&url).await;
    client
        .batch_execute(&format!(
            "CREATE TABLE items (id int PRIMARY KEY, title text); \
             INSERT INTO items SELECT i, 'item ' || i FROM generate_series(1, 10) i; \
             CREATE PUBLICATION {PUBLICATION}"
        ))
        .await
        .expect("DDL");
    (url, client)
}

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

fn with_param(url: &str, param: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{param}")
}

fn items() -> RelationName {
    RelationName {
        schema: "public".into(),
        table: "items".into(),
    }
}

async fn snapshot_request(pg: &RealPg, n: u32) -> SnapshotRequest {
    let schema = pg
        .table_schema(items())
        .await
        .expect("catalog lookup")
        .expect("items exists")
        .schema;
    SnapshotRequest {
        handle: ShapeHandle::from_string(format!("{n}-1")),
        definition: ShapeDefinition {
            relation: items(),
            columns: None,
            replica: Replica::Default,
            where_clause: None,
            log: ampere_core::shape::LogMode::Full,
        },
        schema,
        publication: PUBLICATION.into(),
        chunk_bytes_threshold: 10 << 20,
    }
}

/// Counts the rows a snapshot wrote.
#[derive(Clone, Default)]
struct CountingWriter(Arc<Mutex<usize>>);

impl SnapshotWriter for CountingWriter {
    type Error = Infallible;

    async fn write_chunk(&mut self, _index: u64, body: String) -> Result<(), Infallible> {
        *self.0.lock().unwrap() += body.matches("\"insert\"").count();
        Ok(())
    }

    async fn finish(self) -> Result<(), Infallible> {
        Ok(())
    }
}

/// The pids of client backends (walsenders excluded) named `application_name`.
async fn backends(observer: &Client, application_name: &str) -> Vec<i32> {
    observer
        .query(
            "SELECT pid FROM pg_stat_activity \
             WHERE application_name = $1 AND backend_type = 'client backend' ORDER BY pid",
            &[&application_name],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[tokio::test]
async fn pool_never_opens_more_than_db_pool_size_connections_and_reuses_them() {
    // Goal: with ELECTRIC_DB_POOL_SIZE=3, six concurrent snapshots share two connections —
    // snapshots leave the third to other SQL, which gets it while they wait — never a fourth
    // backend, all six complete, and the same two backends serve them all.
    // Method: a transaction of the test's own holds an xid, so every snapshot that got a
    // connection waits for it (SN-2) while the others wait for the pool; backends are sampled
    // meanwhile, a catalog lookup runs meanwhile, then the transaction ends.
    let (url, observer) = items_db("pool_bound").await;
    let url = with_param(&url, "application_name=ampere_bound");
    let options = PgOptions {
        pool_size: PoolSize::new(3).unwrap(),
        ..PgOptions::default()
    };
    let pg = RealPg::with_options(&url, &options).unwrap();
    let request = snapshot_request(&pg, 0).await;

    let blocker = connect(&cluster().url("postgres", "pool_bound")).await;
    blocker
        .batch_execute("BEGIN; SELECT pg_current_xact_id()")
        .await
        .unwrap();
    let writer = CountingWriter::default();
    let snapshots: Vec<_> = (0..6)
        .map(|n| {
            let mut request = request.clone();
            request.handle = ShapeHandle::from_string(format!("{n}-1"));
            tokio::spawn(pg.take_snapshot(request, writer.clone()))
        })
        .collect();

    let started = Instant::now();
    let busy = loop {
        let pids = backends(&observer, "ampere_bound").await;
        assert!(
            pids.len() <= 2,
            "snapshots took the connection left for other SQL: {pids:?}"
        );
        if pids.len() == 2 {
            break pids;
        }
        assert!(
            started.elapsed() < WAIT_MAX,
            "the pool never filled: {pids:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let lookup = tokio::time::timeout(WAIT_MAX, pg.catalog_table(&request.schema.relation)).await;
    let table = lookup.expect("other SQL is not queued behind the snapshots");
    assert!(
        table.unwrap().is_some(),
        "the catalog lookup finds the table"
    );
    for _ in 0..25 {
        let pids = backends(&observer, "ampere_bound").await;
        assert!(pids.len() <= 3, "more than the pool size open: {pids:?}");
        let snapshotting = pids.iter().filter(|pid| busy.contains(pid)).count();
        assert_eq!(
            snapshotting, 2,
            "snapshots hold two connections: {pids:?} {busy:?}"
        );
        assert!(
            snapshots.iter().all(|s| !s.is_finished()),
            "a snapshot ended while SN-2 waits for the blocker"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    blocker.batch_execute("COMMIT").await.unwrap();
    for snapshot in snapshots {
        let taken = tokio::time::timeout(WAIT_MAX, snapshot).await;
        taken.expect("bounded").unwrap().expect("snapshot");
    }
    assert_eq!(*writer.0.lock().unwrap(), 60, "six snapshots of ten rows");
    let idle = backends(&observer, "ampere_bound").await;
    assert!(
        busy.iter().all(|pid| idle.contains(pid)) && idle.len() <= 3,
        "the two busy backends served all six and stay open, idle: {idle:?} {busy:?}"
    );
}

#[tokio::test]
async fn snapshots_use_the_pooled_url_and_replication_stays_on_database_url() {
    // Goal: ELECTRIC_POOLED_DATABASE_URL is where every SQL statement goes (the wal_level
    // check, catalog lookups, snapshots), while the replication connection, which holds the
    // advisory lock, logs in through DATABASE_URL. Method: the two URLs log in as different
    // roles with different application names; pg_stat_activity tells whose backend is whose.
    let (url, observer) = items_db("pool_pooled_url").await;
    observer
        .batch_execute("CREATE ROLE ampere_pooler LOGIN SUPERUSER")
        .await
        .unwrap();
    let direct = with_param(&url, "application_name=ampere_direct");
    let pooled = cluster().url("ampere_pooler", "pool_pooled_url");
    let options = PgOptions {
        pooled_database_url: Some(with_param(&pooled, "application_name=ampere_pooled")),
        ..PgOptions::default()
    };
    let pg = RealPg::with_options(&direct, &options).unwrap();
    let (session, identity) = pg.connect_replication().await.unwrap();
    let request = snapshot_request(&pg, 1).await;
    pg.take_snapshot(request, CountingWriter::default())
        .await
        .expect("snapshot");

    let rows = observer
        .query(
            "SELECT pid, usename::text, application_name, backend_type FROM pg_stat_activity \
             WHERE application_name IN ('ampere_direct', 'ampere_pooled') ORDER BY pid",
            &[],
        )
        .await
        .unwrap();
    let seen: Vec<(i32, String, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let replication = seen.iter().find(|s| s.0 == identity.backend_pid);
    let replication = replication.unwrap_or_else(|| panic!("no replication backend: {seen:?}"));
    assert_eq!(
        (
            replication.1.as_str(),
            replication.2.as_str(),
            replication.3.as_str()
        ),
        ("postgres", "ampere_direct", "walsender"),
        "{seen:?}"
    );
    let sql: Vec<_> = seen
        .iter()
        .filter(|s| s.0 != identity.backend_pid)
        .collect();
    assert!(
        !sql.is_empty(),
        "the pool's connections stay open: {seen:?}"
    );
    for (pid, user, application_name, backend_type) in sql {
        assert_eq!(
            (
                user.as_str(),
                application_name.as_str(),
                backend_type.as_str()
            ),
            ("ampere_pooler", "ampere_pooled", "client backend"),
            "backend {pid} is not on the pooled URL: {seen:?}"
        );
    }
    drop(session);
}

#[tokio::test]
async fn keepalive_and_user_timeout_are_set_on_the_sql_and_replication_sockets() {
    // Goal: the ELECTRIC_DATABASE_TCP_* variables reach both kinds of socket, and libpq's URL
    // parameters fill in what they leave unset (keepalives_retries, tcp_user_timeout in
    // milliseconds). Method: Postgres names each backend's client port; the socket of this
    // process bound to that port is read back with getsockopt.
    let (url, _observer) = items_db("pool_sockets").await;
    let url = with_param(&url, "keepalives_retries=5&tcp_user_timeout=2500");
    let options = PgOptions {
        tcp: TcpOptions {
            keepalive_idle: Some(Duration::from_secs(31)),
            keepalive_interval: Some(Duration::from_secs(7)),
            keepalive_count: None,
            user_timeout: None,
        },
        ..PgOptions::default()
    };
    let pg = RealPg::with_options(&url, &options).unwrap();
    let (session, identity) = pg.connect_replication().await.unwrap();
    let admin = pg.admin().await.unwrap();
    let ports = admin
        .query_one(
            "SELECT inet_client_port(), \
             (SELECT client_port FROM pg_stat_activity WHERE pid = $1)",
            &[&identity.backend_pid],
        )
        .await
        .unwrap();
    let (sql_port, replication_port): (i32, i32) = (ports.get(0), ports.get(1));
    for (what, port) in [("SQL", sql_port), ("replication", replication_port)] {
        let fd = own_socket_on_port(u16::try_from(port).unwrap());
        let fd = fd.unwrap_or_else(|| panic!("no socket of ours on port {port} ({what})"));
        // SAFETY: `fd` is open for the whole borrow: the connection it belongs to (`admin`,
        // `session`) is alive until the end of this test.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = SockRef::from(&borrowed);
        assert!(socket.keepalive().unwrap(), "{what}: SO_KEEPALIVE");
        assert_eq!(
            socket.tcp_keepalive_time().unwrap(),
            Duration::from_secs(31),
            "{what}"
        );
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(7),
            "{what}"
        );
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), 5, "{what}");
        assert_eq!(
            socket.tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(2500)),
            "{what}"
        );
    }
    admin.release();
    drop(session);
}

/// This process's TCP socket whose local port is `port`.
fn own_socket_on_port(port: u16) -> Option<RawFd> {
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if !target.to_string_lossy().starts_with("socket:") {
            continue;
        }
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<RawFd>() else {
            continue;
        };
        // SAFETY: only for this lookup; a descriptor closed meanwhile makes getsockname fail,
        // which is skipped.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let local = SockRef::from(&borrowed).local_addr();
        let local_port = local.ok().and_then(|a| a.as_socket()).map(|a| a.port());
        if local_port == Some(port) {
            return Some(fd);
        }
    }
    None
}
