//! PostgreSQL in a Docker container, plus the faults the scenarios inject: stop/start (restart
//! with an outage), pause/unpause (partition), network disconnect. All through the docker CLI:
//! `docker run` with a published port on 127.0.0.1, ready once the server's "ready" line is on
//! its stderr, removed (with its volumes and network) on drop. (testcontainers did the start
//! and the removal before; its client stack was a fifth of the cold test build.)
//!
//! Image selection (`AMPERE_TEST_PG_IMAGE`, default the official `postgres:15`):
//! 1. the configured image, if it is present locally;
//! 2. else `docker pull` of it (a laptop with a registry just works: the first run pulls
//!    `postgres:15`, later runs find it locally and never touch the network);
//! 3. else the registry-free fallback `ampere-pg-local:15`, built FROM scratch out of the host's
//!    Debian postgresql-15 files by `scripts/build-pg-image.sh` (offline CI calls that script
//!    before `cargo test`). If that is missing too, the test fails with the command to run.
//!
//! Both images take `-c key=value` arguments for `postgres`, trust local connections (the
//! official one via `POSTGRES_HOST_AUTH_METHOD=trust`, which the local one ignores) and print
//! `database system is ready to accept connections` on stderr once the final server is up.
//!
//! The host port is chosen here and mapped explicitly on 127.0.0.1 (not left to Docker), so it
//! stays the same across `docker stop`/`docker start`: ampere's `DATABASE_URL` keeps working.

use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::util::free_port;

/// The image offline CI builds with `scripts/build-pg-image.sh`.
pub(crate) const FALLBACK_IMAGE: &str = "ampere-pg-local:15";
/// The default when `AMPERE_TEST_PG_IMAGE` is unset: what developer machines can pull.
pub(crate) const DEFAULT_IMAGE: &str = "postgres:15";
const READY: &str = "database system is ready to accept connections";
/// Label on every container this binary starts (stale ones are swept by PID).
pub(crate) const LABEL: &str = "ampere-containers-test";
/// `wal_sender_timeout` of the test server: short, so Postgres notices a dead or partitioned
/// ampere (and frees its slot) quickly.
pub(crate) const WAL_SENDER_TIMEOUT: &str = "10s";

/// Runs the docker CLI; stdout on success, stderr (or the timeout) as the error.
pub(crate) async fn docker(args: &[&str], timeout: Duration) -> Result<String, String> {
    let child = tokio::process::Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(timeout, child).await {
        Err(_) => Err(format!(
            "docker {} timed out after {timeout:?}",
            args.join(" ")
        )),
        Ok(Err(e)) => Err(format!("cannot run docker: {e}")),
        Ok(Ok(out)) if out.status.success() => {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        }
        Ok(Ok(out)) => Err(format!(
            "docker {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// Blocking variant for `Drop` and one-time setup.
pub(crate) fn docker_sync(args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// Checked once per test binary: the engine answers, stale containers of dead test processes
/// are removed, and the Postgres image is resolved (see the module docs).
pub(crate) fn environment() -> Result<&'static str, String> {
    static ENV: OnceLock<Result<String, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        docker_sync(&["info", "--format", "{{.ServerVersion}}"]).map_err(|e| {
            format!(
                "no Docker engine answers ({e}). Start one with scripts/docker-up.sh \
                 (or set AMPERE_SKIP_CONTAINER_TESTS=1 to skip these tests)"
            )
        })?;
        sweep_stale_containers();
        resolve_image()
    })
    .as_deref()
    .map_err(Clone::clone)
}

fn resolve_image() -> Result<String, String> {
    let wanted = std::env::var("AMPERE_TEST_PG_IMAGE")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_IMAGE.to_owned());
    let present =
        |image: &str| docker_sync(&["image", "inspect", "--format", "{{.Id}}", image]).is_ok();
    if present(&wanted) {
        return Ok(wanted);
    }
    let t = Instant::now();
    match docker_sync(&["pull", "--quiet", &wanted]) {
        Ok(_) => {
            eprintln!("containers: pulled {wanted} in {:.1}s", t.elapsed().as_secs_f64());
            return Ok(wanted);
        }
        Err(e) => eprintln!(
            "containers: {wanted} is not present locally and cannot be pulled ({}); trying {FALLBACK_IMAGE}",
            e.lines().last().unwrap_or_default()
        ),
    }
    if wanted != FALLBACK_IMAGE && present(FALLBACK_IMAGE) {
        return Ok(FALLBACK_IMAGE.to_owned());
    }
    Err(format!(
        "no usable PostgreSQL image: {wanted} is neither present nor pullable, and the fallback \
         {FALLBACK_IMAGE} is missing. Build it with: scripts/build-pg-image.sh"
    ))
}

/// Removes containers labelled by a test process that no longer exists (their Drop never ran).
fn sweep_stale_containers() {
    let Ok(list) = docker_sync(&[
        "ps",
        "-a",
        "--filter",
        &format!("label={LABEL}"),
        "--format",
        &format!("{{{{.ID}}}} {{{{.Label \"{LABEL}\"}}}}"),
    ]) else {
        return;
    };
    for line in list.lines() {
        let mut parts = line.split_whitespace();
        let (Some(id), Some(pid)) = (parts.next(), parts.next()) else {
            continue;
        };
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        if !alive {
            let _ = docker_sync(&["rm", "-f", "-v", id]);
        }
    }
    // networks are named like their containers: ampere-ct-<pid>-<test>
    let Ok(networks) = docker_sync(&[
        "network",
        "ls",
        "--filter",
        "name=ampere-ct-",
        "--format",
        "{{.Name}}",
    ]) else {
        return;
    };
    for name in networks.lines() {
        let pid = name
            .trim_start_matches("ampere-ct-")
            .split('-')
            .next()
            .unwrap_or_default();
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = docker_sync(&["network", "rm", name]);
        }
    }
}

/// A PostgreSQL container with a fixed host port on 127.0.0.1; removed on drop.
pub(crate) struct Pg {
    pub(crate) name: String,
    pub(crate) port: u16,
    pub(crate) image: String,
}

impl Pg {
    /// Starts a container named `name` with logical replication enabled.
    pub(crate) async fn start(name: &str) -> Self {
        let image = environment().unwrap_or_else(|e| panic!("{e}"));
        let mut last_err = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            match run_postgres(name, image, port).await {
                Ok(()) => {
                    let pg = Self {
                        name: name.to_owned(),
                        port,
                        image: image.to_owned(),
                    };
                    pg.wait_connectable(Duration::from_secs(30))
                        .await
                        .unwrap_or_else(|e| panic!("postgres container {name}: {e}"));
                    return pg;
                }
                Err(e) => {
                    last_err = e;
                    // a half-created container under our name blocks the retry
                    remove_container(name);
                }
            }
        }
        panic!("cannot start a {image} container: {last_err}");
    }

    /// `postgresql://postgres@127.0.0.1:<port>/postgres` (trust auth).
    pub(crate) fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A new connection (its driver task is spawned on the current runtime).
    pub(crate) async fn connect(&self) -> Result<Client, String> {
        let url = format!("{}?connect_timeout=5", self.url());
        let connect = tokio_postgres::connect(&url, NoTls);
        let (client, conn) = tokio::time::timeout(Duration::from_secs(10), connect)
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| format!("connect: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Runs `sql` (one or more statements, simple protocol) on a fresh connection; returns the
    /// rows of all statements as text.
    pub(crate) async fn sql(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
        let client = self.connect().await?;
        query(&client, sql).await
    }

    /// Like `sql`, panicking on error.
    pub(crate) async fn sql_ok(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        self.sql(sql)
            .await
            .unwrap_or_else(|e| panic!("SQL failed: {sql}: {e}"))
    }

    /// The first column of the first row.
    pub(crate) async fn scalar(&self, sql: &str) -> Option<String> {
        self.sql_ok(sql)
            .await
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten())
    }

    /// Polls `SELECT 1` until it works.
    pub(crate) async fn wait_connectable(&self, timeout: Duration) -> Result<Duration, String> {
        let t = Instant::now();
        let mut last = String::new();
        while t.elapsed() < timeout {
            match self.sql("SELECT 1").await {
                Ok(_) => return Ok(t.elapsed()),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("not connectable after {timeout:?}: {last}"))
    }

    /// `docker stop` (SIGINT: fast shutdown).
    pub(crate) async fn stop(&self) {
        docker(&["stop", "-t", "20", &self.name], Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// `docker start`, then waits until Postgres accepts connections.
    pub(crate) async fn start_again(&self) -> Duration {
        let t = Instant::now();
        docker(&["start", &self.name], Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        self.wait_connectable(Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("after docker start: {e}"));
        t.elapsed()
    }

    /// `docker pause`: every process of the container is frozen; TCP connections stay open
    /// but nothing answers (a partition, as seen from ampere).
    pub(crate) async fn pause(&self) {
        docker(&["pause", &self.name], Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    pub(crate) async fn unpause(&self) {
        docker(&["unpause", &self.name], Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// `docker restart` (SIGINT: fast shutdown, then start), then waits until Postgres
    /// accepts connections.
    pub(crate) async fn restart(&self) -> Duration {
        let t = Instant::now();
        docker(
            &["restart", "-t", "20", &self.name],
            Duration::from_secs(90),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        self.wait_connectable(Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("after docker restart: {e}"));
        t.elapsed()
    }

    /// `docker network disconnect`: the container loses its only network; connections through
    /// the published port are cut and new ones refused until `reconnect_network`.
    pub(crate) async fn disconnect_network(&self) {
        docker(
            &["network", "disconnect", &self.name, &self.name],
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// `docker network connect` (the port mapping comes back with it).
    pub(crate) async fn reconnect_network(&self) {
        docker(
            &["network", "connect", &self.name, &self.name],
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// The container's log (stdout + stderr), last `n` lines.
    pub(crate) fn log_tail(&self, n: usize) -> String {
        let out = std::process::Command::new("docker")
            .args(["logs", "--tail", &n.to_string(), &self.name])
            .output();
        match out {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("(docker logs failed: {e})"),
        }
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        // When paused, unpause first so the removal does not wait on a frozen process.
        let _ = docker_sync(&["unpause", &self.name]);
        remove_container(&self.name);
    }
}

/// `docker run`s Postgres as `name` on its own network (also `name`, so `docker network
/// disconnect` can cut it off and reconnect it), publishing 5432 on 127.0.0.1:`port`, and
/// waits for the final server's "ready" line on its stderr (the official image's init-time
/// temporary server logs to stdout, so it cannot match early).
async fn run_postgres(name: &str, image: &str, port: u16) -> Result<(), String> {
    const STARTUP_TIMEOUT: Duration = Duration::from_secs(90);
    let wal_sender_timeout = format!("wal_sender_timeout={WAL_SENDER_TIMEOUT}");
    let settings = [
        "wal_level=logical",
        "max_replication_slots=20",
        "max_wal_senders=20",
        wal_sender_timeout.as_str(),
        "max_connections=100",
        "fsync=off",
        "full_page_writes=off",
    ];
    let step = Duration::from_secs(30);
    docker(&["network", "create", name], step).await?;
    let label = format!("{LABEL}={}", std::process::id());
    let publish = format!("127.0.0.1:{port}:5432");
    let mut args = vec![
        "run",
        "--detach",
        "--name",
        name,
        "--network",
        name,
        "--label",
        &label,
        "--publish",
        &publish,
        "--env",
        "POSTGRES_HOST_AUTH_METHOD=trust",
        image,
    ];
    for setting in settings {
        args.extend(["-c", setting]);
    }
    docker(&args, Duration::from_secs(60)).await?;
    let started = Instant::now();
    loop {
        let logs = tokio::process::Command::new("docker")
            .args(["logs", name])
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| format!("cannot run docker: {e}"))?;
        if String::from_utf8_lossy(&logs.stderr).contains(READY) {
            return Ok(());
        }
        let running = docker(&["inspect", "--format", "{{.State.Running}}", name], step).await?;
        if running.trim() != "true" {
            return Err(format!(
                "the container exited during startup:\n{}",
                String::from_utf8_lossy(&logs.stderr)
            ));
        }
        if started.elapsed() > STARTUP_TIMEOUT {
            return Err(format!("not ready within {STARTUP_TIMEOUT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Removes the container `name` (force, with its volumes) and its network. Blocking.
fn remove_container(name: &str) {
    let _ = docker_sync(&["rm", "-f", "-v", name]);
    let _ = docker_sync(&["network", "rm", name]);
}

/// Runs `sql` on `client` with the simple protocol; rows as text.
pub(crate) async fn query(client: &Client, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    let messages = client
        .simple_query(sql)
        .await
        .map_err(|e| match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => e.to_string(),
        })?;
    let mut rows = Vec::new();
    for m in messages {
        if let SimpleQueryMessage::Row(row) = m {
            rows.push(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            );
        }
    }
    Ok(rows)
}
