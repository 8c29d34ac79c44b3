//! `deploy/compose/shared-storage.yaml`, run for real: two ampere containers from the image
//! (`image.rs`) on one Docker volume, the same `DATABASE_URL` (this test's Postgres container,
//! attached to the project's network as `postgres`), blue serving, green a read-only standby,
//! blue stopped with SIGTERM (`stop`), green taking over.
//!
//! Driven with `docker compose` (v2) or `docker-compose` (v1, Debian's package), whichever
//! works, with the recipe's variables set (images, `DATABASE_URL`, `ELECTRIC_INSECURE`, ports
//! on 127.0.0.1): the recipe file itself, unchanged. Without either (or with
//! `AMPERE_TEST_COMPOSE=0`), the same settings run with plain `docker run`, and the summary
//! says so. Everything this creates is named `ampere-ct-<pid>-…` and removed on drop; leftovers
//! of a dead test process are swept when the next one starts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::ampere::{health, HealthMonitor};
use crate::client::ShapeClient;
use crate::deploy::finish_background;
use crate::docker::{docker, docker_sync, query, LABEL};
use crate::faults::{assert_clean, converge, ACTIVE_TIMEOUT};
use crate::harness::Ctx;
use crate::http;
use crate::image::{image_async, repo_root, without_database_url_exits_clearly};
use crate::util::{free_port, secs};

pub(crate) const BLUE: &str = "ampere-blue";
pub(crate) const GREEN: &str = "ampere-green";
/// Where the recipe mounts the shared volume (`ELECTRIC_STORAGE_DIR`).
const STORAGE_DIR: &str = "/var/lib/electric/data";
/// The recipe's `stop_grace_period`: SIGTERM, then this long before SIGKILL.
const STOP_GRACE: &str = "30";
const COMPOSE_TIMEOUT: Duration = Duration::from_secs(120);

/// k. A rolling upgrade with `deploy/compose/shared-storage.yaml` on the container image, run
/// twice: with the shape metadata in its default WAL mode, then with
/// `ELECTRIC_SHAPE_DB_EXCLUSIVE_MODE=true` (what the Kubernetes and ECS recipes set for NFS/EFS),
/// each on its own project, volume, replication stream and tables. Blue serves a live client;
/// green starts on the same volume → 202 `waiting`, serves the existing shape with blue's handle
/// (in exclusive mode from the shape directories' descriptions, MD-3: blue holds the metadata
/// file locked), 503 `Retry-After: 5` for a new shape, Docker's HEALTHCHECK calls it healthy;
/// 500 writes, 20 ms apart, and after the 200th `stop ampere-blue` (SIGTERM) → blue exits 0,
/// green reports 200 within 15 s; the client (moved to green once blue is gone, as a proxy
/// would) sees no 409 and every write exactly once, in order, and ends equal to `SELECT`.
/// Also: the image without DATABASE_URL exits with a clear message.
pub(crate) async fn compose_rolling_upgrade(mut ctx: Ctx) {
    ctx.stage("image (scripts/build-ampere-image.sh)");
    let t = Instant::now();
    let image = image_async().await.unwrap_or_else(|e| panic!("{e}"));
    ctx.note(format!("image {image} ready after {}", secs(t.elapsed())));
    without_database_url_exits_clearly(&mut ctx, image).await;
    for mode in [ShapeDb::Wal, ShapeDb::Exclusive] {
        rolling_upgrade(&mut ctx, image, mode).await;
    }
    ctx.pass();
}

/// How the shape metadata is shared (`ELECTRIC_SHAPE_DB_EXCLUSIVE_MODE`, MD-2), and the names
/// that keep the two runs apart.
#[derive(Clone, Copy, Debug)]
enum ShapeDb {
    Wal,
    Exclusive,
}

impl ShapeDb {
    fn exclusive_mode(self) -> &'static str {
        match self {
            Self::Wal => "false",
            Self::Exclusive => "true",
        }
    }

    /// `ELECTRIC_REPLICATION_STREAM_ID`: the first run keeps the recipe's default.
    fn stream_id(self) -> &'static str {
        match self {
            Self::Wal => "default",
            Self::Exclusive => "exclusive",
        }
    }

    /// Suffix of the project, and the prefix of the run's notes.
    fn tag(self) -> &'static str {
        match self {
            Self::Wal => "wal",
            Self::Exclusive => "exclusive",
        }
    }

    /// The table the client follows, and the one green is asked to create a shape on.
    fn tables(self) -> (&'static str, &'static str) {
        match self {
            Self::Wal => ("items", "other"),
            Self::Exclusive => ("items_x", "other_x"),
        }
    }
}

async fn rolling_upgrade(ctx: &mut Ctx, image: &'static str, mode: ShapeDb) {
    let (items, other) = mode.tables();
    ctx.create_table(items).await;
    ctx.create_table(other).await;
    ctx.insert_range(items, 1, 100).await;

    ctx.stage(format!(
        "{}: shared-storage recipe: create the project, start blue",
        mode.tag()
    ));
    let recipe = Recipe::create(ctx, image, mode).await;
    ctx.note(recipe.describe());
    recipe.start(BLUE).await;
    let took = recipe
        .wait_health(BLUE, 200, None, ACTIVE_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    ctx.note(format!(
        "{}: blue active {} after start",
        mode.tag(),
        secs(took)
    ));
    let mut client = ShapeClient::new("client", recipe.port(BLUE), items);
    converge(ctx, &mut client).await;
    let handle = client.handle.clone().unwrap_or_default();
    let switch = client.target();
    let bg = client.spawn();

    ctx.stage(format!("{}: start green on the same volume", mode.tag()));
    recipe.start(GREEN).await;
    let green_health = HealthMonitor::spawn(recipe.port(GREEN));
    let offset = bg.progress().offset;
    standby_serves_reads_only(ctx, &recipe, &green_health, mode, &handle, &offset).await;
    if let ShapeDb::Exclusive = mode {
        // The scenario must take the path it is about: green never opened the file blue holds.
        let logs = recipe.logs(GREEN, 500);
        assert!(
            logs.contains("shapes its shape directories describe"),
            "green in exclusive mode must serve from the shape directories; its log:\n{logs}"
        );
    }
    docker_healthchecks_pass(ctx, &recipe).await;
    handover_under_writes(ctx, &recipe, green_health, mode, &switch).await;

    let mut client = finish_background(ctx, bg, 600).await;
    converge(ctx, &mut client).await;
    assert_clean(ctx, &client, 0);
    assert_eq!(
        client.handles,
        vec![handle],
        "{}: one handle across the handover",
        mode.tag()
    );
    let ids: Vec<i64> = client
        .inserted_ids()
        .into_iter()
        .filter(|i| *i > 100)
        .collect();
    let expected: Vec<i64> = (101..=600).collect();
    assert!(
        ids == expected,
        "{}: each of the 500 writes exactly once, in order: got {} ids, first mismatch at {:?}",
        mode.tag(),
        ids.len(),
        ids.iter().zip(&expected).position(|(a, b)| a != b)
    );
    ctx.stage(format!("{}: teardown (compose down -v)", mode.tag()));
    ctx.note(format!(
        "{}: teardown {}",
        mode.tag(),
        secs(recipe.finish())
    ));
}

/// Green (same volume, same stream id) waits: health 202 `waiting`, the existing shape served
/// with blue's handle (from `offset=-1` and at the client's offset), a new shape refused with
/// 503 `Retry-After: 5` after the 5 s admission wait.
async fn standby_serves_reads_only(
    ctx: &mut Ctx,
    recipe: &Recipe,
    green_health: &HealthMonitor,
    mode: ShapeDb,
    handle: &str,
    offset: &str,
) {
    let (items, other) = mode.tables();
    ctx.stage("green: health 202 {\"status\":\"waiting\"}");
    let waited = recipe
        .wait_health(GREEN, 202, Some("\"waiting\""), Duration::from_secs(30))
        .await;
    if let Err(e) = waited {
        panic!("{e}; green's health so far: {}", green_health.seen());
    }
    let port = recipe.port(GREEN);
    ctx.stage("green serves the existing shape with blue's handle");
    let get = |url: String| async move {
        http::get(port, &url, Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("GET {url} on green: {e}"))
    };
    let r = get(format!("/v1/shape?offset=-1&table={items}")).await;
    assert_eq!(
        (r.status, r.header("electric-handle")),
        (200, Some(handle)),
        "green must serve the existing shape (offset=-1) with blue's handle; body {}",
        r.body_text()
    );
    let url = format!(
        "/v1/shape?handle={}&offset={}&table={items}",
        http::encode(handle),
        http::encode(offset)
    );
    let r = get(url).await;
    assert_eq!(r.status, 200, "green at offset {offset}: {}", r.body_text());

    ctx.stage("green: a new shape → 503 Retry-After 5 (within ~5 s)");
    let t = Instant::now();
    let r = get(format!("/v1/shape?offset=-1&table={other}")).await;
    assert_eq!(
        (r.status, r.header("retry-after")),
        (503, Some("5")),
        "a new shape on a waiting instance: got {} after {}: {}",
        r.status,
        secs(t.elapsed()),
        r.body_text()
    );
    assert!(
        t.elapsed() <= Duration::from_secs(8),
        "503 after {}",
        secs(t.elapsed())
    );
}

/// The image's HEALTHCHECK must call a waiting standby healthy (202), or an orchestrator that
/// waits for the new instance before stopping the old one deadlocks (deploy-semantics LC-5).
async fn docker_healthchecks_pass(ctx: &mut Ctx, recipe: &Recipe) {
    ctx.stage("docker HEALTHCHECK: green (202 waiting) and blue (200) healthy");
    // the first check runs one interval (10 s) after the container started
    for service in [GREEN, BLUE] {
        let took = recipe
            .wait_docker_health(service, "healthy", Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        ctx.note(format!(
            "{service} docker health: healthy (waited {})",
            secs(took)
        ));
    }
}

/// 500 single-row writes, 20 ms apart; after the 200th, `stop ampere-blue` (SIGTERM); once it
/// has exited, the client moves to green, which must report 200 within 15 s of the stop.
async fn handover_under_writes(
    ctx: &mut Ctx,
    recipe: &Recipe,
    green_health: HealthMonitor,
    mode: ShapeDb,
    switch: &AtomicU16,
) {
    let (items, _) = mode.tables();
    ctx.stage("500 writes across the handover; stop blue after the 200th");
    let conn = ctx.pg.connect().await.unwrap_or_else(|e| panic!("{e}"));
    let (written_tx, mut written) = watch::channel(0i64);
    let writer = tokio::spawn(async move {
        for i in 1..=500i64 {
            let id = 100 + i;
            query(
                &conn,
                &format!("INSERT INTO {items} VALUES ({id}, 'w{i}', {i})"),
            )
            .await?;
            let _ = written_tx.send(i);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok::<(), String>(())
    });
    written
        .wait_for(|n| *n >= 200)
        .await
        .unwrap_or_else(|_| panic!("writer failed before 200 writes"));
    let t_stop = Instant::now();
    let stopped = recipe.stop(BLUE).await;
    let exit = recipe.state(BLUE, "ExitCode").await;
    ctx.note(format!(
        "blue stopped {} after SIGTERM, exit code {exit}",
        secs(stopped)
    ));
    switch.store(recipe.port(GREEN), Ordering::SeqCst);
    ctx.stage("green: health 200 within 15 s of stopping blue");
    let left = Duration::from_secs(15).saturating_sub(t_stop.elapsed());
    let became = recipe.wait_health(GREEN, 200, None, left).await;
    ctx.note(format!("green health: {}", green_health.finish().await));
    became.unwrap_or_else(|e| panic!("{e}"));
    ctx.summary.recover = Some(t_stop.elapsed());
    assert_eq!(exit, "0", "blue must exit cleanly on SIGTERM");
    writer
        .await
        .unwrap_or_else(|e| panic!("writer task: {e}"))
        .unwrap_or_else(|e| panic!("writer: {e}"));
    ctx.summary.writes += 500;
}

enum Tool {
    /// The compose command: `["docker", "compose"]` or `["docker-compose"]`.
    Compose(Vec<String>),
    /// `docker run` with the recipe's settings.
    Run,
}

/// One deployment of the recipe: its project (network, volume, containers) and host ports.
pub(crate) struct Recipe {
    tool: Tool,
    project: String,
    file: PathBuf,
    env: Vec<(&'static str, String)>,
    ports: BTreeMap<&'static str, u16>,
    network: String,
    volume: String,
    /// The Postgres container attached to the project's network.
    pg: String,
    finished: bool,
}

impl Recipe {
    /// Creates the project (network, volume; with compose also both containers, not started)
    /// and attaches the scenario's Postgres container to its network as `postgres`.
    async fn create(ctx: &Ctx, image: &str, mode: ShapeDb) -> Self {
        sweep_stale_projects();
        let project = format!("ampere-ct-{}-roll-{}", std::process::id(), mode.tag());
        let ports = BTreeMap::from([(BLUE, free_port()), (GREEN, free_port())]);
        let env = vec![
            (
                "DATABASE_URL",
                "postgresql://postgres@postgres:5432/postgres".to_owned(),
            ),
            ("ELECTRIC_SECRET", String::new()),
            ("ELECTRIC_INSECURE", "true".to_owned()),
            (
                "ELECTRIC_REPLICATION_STREAM_ID",
                mode.stream_id().to_owned(),
            ),
            (
                "ELECTRIC_SHAPE_DB_EXCLUSIVE_MODE",
                mode.exclusive_mode().to_owned(),
            ),
            ("AMPERE_BLUE_IMAGE", image.to_owned()),
            ("AMPERE_GREEN_IMAGE", image.to_owned()),
            ("AMPERE_BLUE_PORT", format!("127.0.0.1:{}", ports[BLUE])),
            ("AMPERE_GREEN_PORT", format!("127.0.0.1:{}", ports[GREEN])),
        ];
        let recipe = Self {
            tool: compose_tool(),
            network: format!("{project}_default"),
            volume: format!("{project}_ampere_data"),
            project,
            file: repo_root().join("deploy/compose/shared-storage.yaml"),
            env,
            ports,
            pg: ctx.pg.name.clone(),
            finished: false,
        };
        match &recipe.tool {
            Tool::Compose(_) => recipe.compose(&["up", "--no-start"]).await,
            Tool::Run => {
                let label = format!("{LABEL}={}", std::process::id());
                for args in [
                    ["network", "create", "--label", &label, &recipe.network],
                    ["volume", "create", "--label", &label, &recipe.volume],
                ] {
                    ok(docker(&args, COMPOSE_TIMEOUT).await);
                }
            }
        }
        let connect = ["network", "connect", "--alias", "postgres"];
        let args: Vec<&str> = connect
            .into_iter()
            .chain([&*recipe.network, &*recipe.pg])
            .collect();
        ok(docker(&args, COMPOSE_TIMEOUT).await);
        recipe
    }

    /// How the recipe is run, for the summary.
    pub(crate) fn describe(&self) -> String {
        match &self.tool {
            Tool::Compose(cmd) => format!(
                "{} -f deploy/compose/shared-storage.yaml (project {})",
                cmd.join(" "),
                self.project
            ),
            Tool::Run => {
                "no docker compose here: plain docker run with the recipe's settings".to_owned()
            }
        }
    }

    pub(crate) fn port(&self, service: &str) -> u16 {
        self.ports[service]
    }

    /// `up -d <service>` (or `docker run -d …`).
    pub(crate) async fn start(&self, service: &'static str) {
        match &self.tool {
            Tool::Compose(_) => self.compose(&["up", "-d", "--no-deps", service]).await,
            Tool::Run => {
                let name = self.run_name(service);
                let label = format!("{LABEL}={}", std::process::id());
                let publish = format!("127.0.0.1:{}:3000", self.port(service));
                let mount = format!("{}:{STORAGE_DIR}", self.volume);
                let mut args = vec![
                    "run",
                    "-d",
                    "--name",
                    &name,
                    "--label",
                    &label,
                    "--network",
                    &self.network,
                    "-p",
                    &publish,
                    "-v",
                    &mount,
                    "--stop-timeout",
                    STOP_GRACE,
                    "--restart",
                    "unless-stopped",
                ];
                let vars: Vec<String> = self
                    .container_env()
                    .into_iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                for var in &vars {
                    args.extend(["-e", var.as_str()]);
                }
                let image = self.env_value(if service == BLUE {
                    "AMPERE_BLUE_IMAGE"
                } else {
                    "AMPERE_GREEN_IMAGE"
                });
                args.push(&image);
                ok(docker(&args, COMPOSE_TIMEOUT).await);
            }
        }
    }

    /// `stop <service>`: SIGTERM, SIGKILL after the grace period. Returns how long it took.
    pub(crate) async fn stop(&self, service: &'static str) -> Duration {
        let t = Instant::now();
        match &self.tool {
            Tool::Compose(_) => self.compose(&["stop", "-t", STOP_GRACE, service]).await,
            Tool::Run => {
                let name = self.run_name(service);
                ok(docker(&["stop", "-t", STOP_GRACE, &name], COMPOSE_TIMEOUT).await);
            }
        }
        t.elapsed()
    }

    /// `docker inspect` of the service's container: `.State.<field>` as text.
    pub(crate) async fn state(&self, service: &str, field: &str) -> String {
        let id = self.container(service).await;
        let format = format!("{{{{.State.{field}}}}}");
        docker(
            &["inspect", "--format", &format, &id],
            Duration::from_secs(30),
        )
        .await
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|e| format!("({e})"))
    }

    /// Waits until `/v1/health` of `service` answers `want` (and a body containing `body`);
    /// fails at once if its container stopped running.
    pub(crate) async fn wait_health(
        &self,
        service: &str,
        want: u16,
        body: Option<&str>,
        timeout: Duration,
    ) -> Result<Duration, String> {
        let t = Instant::now();
        let mut last = None;
        while t.elapsed() < timeout {
            let running = self.state(service, "Running").await;
            if running != "true" {
                return Err(format!(
                    "{service} is not running ({running}) while waiting for health {want}; \
                     log tail:\n{}",
                    self.logs(service, 30)
                ));
            }
            let h = health(self.port(service)).await;
            if let Some((status, text)) = &h {
                if *status == want && body.is_none_or(|b| text.contains(b)) {
                    return Ok(t.elapsed());
                }
            }
            last = h;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(format!(
            "{service}: health never became {want} within {timeout:?}; last: {last:?}"
        ))
    }

    /// Polls Docker's own HEALTHCHECK status of `service` until it is `want`.
    pub(crate) async fn wait_docker_health(
        &self,
        service: &str,
        want: &str,
        timeout: Duration,
    ) -> Result<Duration, String> {
        let t = Instant::now();
        loop {
            let status = self.state(service, "Health.Status").await;
            if status == want {
                return Ok(t.elapsed());
            }
            if t.elapsed() > timeout {
                let log = self.state(service, "Health.Log").await;
                return Err(format!(
                    "{service}: docker health {status:?}, not {want:?} after {timeout:?}; {log}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Detaches Postgres, removes the containers, the network and the volume; how long it took.
    pub(crate) fn finish(mut self) -> Duration {
        self.finished = true;
        let t = Instant::now();
        self.teardown();
        t.elapsed()
    }

    fn teardown(&self) {
        let _ = docker_sync(&["network", "disconnect", "-f", &self.network, &self.pg]);
        match &self.tool {
            Tool::Compose(_) => {
                let out = self
                    .compose_command(&["down", "-v", "-t", "5", "--remove-orphans"])
                    .output();
                if let Ok(out) = out {
                    if !out.status.success() {
                        eprintln!(
                            "containers: compose down failed: {}",
                            String::from_utf8_lossy(&out.stderr)
                        );
                    }
                }
            }
            Tool::Run => {
                for service in [BLUE, GREEN] {
                    let _ = docker_sync(&["rm", "-f", "-v", &self.run_name(service)]);
                }
                let _ = docker_sync(&["network", "rm", &self.network]);
                let _ = docker_sync(&["volume", "rm", "-f", &self.volume]);
            }
        }
    }

    /// The last `n` lines of the service's container log.
    fn logs(&self, service: &str, n: usize) -> String {
        let id = match &self.tool {
            Tool::Compose(_) => compose_container(&self.project, service),
            Tool::Run => Some(self.run_name(service)),
        };
        let Some(id) = id else {
            return format!("({service}: no container)");
        };
        match std::process::Command::new("docker")
            .args(["logs", "--tail", &n.to_string(), &id])
            .output()
        {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("(docker logs failed: {e})"),
        }
    }

    async fn container(&self, service: &str) -> String {
        match &self.tool {
            Tool::Compose(_) => compose_container(&self.project, service)
                .unwrap_or_else(|| format!("{}-no-{service}", self.project)),
            Tool::Run => self.run_name(service),
        }
    }

    /// The container name `docker run` uses: compose v1's naming.
    fn run_name(&self, service: &str) -> String {
        format!("{}_{service}_1", self.project)
    }

    fn env_value(&self, key: &str) -> String {
        self.env
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    /// The container environment the recipe sets (for `docker run`).
    fn container_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DATABASE_URL", self.env_value("DATABASE_URL")),
            ("ELECTRIC_SECRET", self.env_value("ELECTRIC_SECRET")),
            ("ELECTRIC_INSECURE", self.env_value("ELECTRIC_INSECURE")),
            ("ELECTRIC_STORAGE_DIR", STORAGE_DIR.to_owned()),
            (
                "ELECTRIC_REPLICATION_STREAM_ID",
                self.env_value("ELECTRIC_REPLICATION_STREAM_ID"),
            ),
            (
                "ELECTRIC_SHAPE_DB_EXCLUSIVE_MODE",
                self.env_value("ELECTRIC_SHAPE_DB_EXCLUSIVE_MODE"),
            ),
        ]
    }

    async fn compose(&self, args: &[&str]) {
        let mut cmd = tokio::process::Command::from(self.compose_command(args));
        cmd.kill_on_drop(true);
        let shown = format!("compose {}", args.join(" "));
        let out = match tokio::time::timeout(COMPOSE_TIMEOUT, cmd.output()).await {
            Err(_) => panic!("{shown} timed out after {COMPOSE_TIMEOUT:?}"),
            Ok(Err(e)) => panic!("cannot run {shown}: {e}"),
            Ok(Ok(out)) => out,
        };
        assert!(
            out.status.success(),
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }

    /// The compose command line with the recipe's variables (and nothing else of ours: the
    /// variables the recipe reads are all set or cleared here).
    fn compose_command(&self, args: &[&str]) -> std::process::Command {
        let Tool::Compose(base) = &self.tool else {
            unreachable!("compose_command without compose");
        };
        let mut cmd = std::process::Command::new(&base[0]);
        cmd.args(&base[1..])
            .args(["--project-name", &self.project, "--file"])
            .arg(&self.file)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }
}

impl Drop for Recipe {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        for service in [BLUE, GREEN] {
            eprintln!(
                "----- {service} container log, last 40 lines:\n{}",
                self.logs(service, 40)
            );
        }
        self.teardown();
    }
}

/// `docker compose` if the CLI plugin works, else `docker-compose`, else `docker run`
/// (also when `AMPERE_TEST_COMPOSE=0`).
fn compose_tool() -> Tool {
    if std::env::var("AMPERE_TEST_COMPOSE").is_ok_and(|v| v == "0") {
        return Tool::Run;
    }
    let works = |cmd: &[&str]| {
        std::process::Command::new(cmd[0])
            .args(&cmd[1..])
            .arg("version")
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success())
    };
    for cmd in [&["docker", "compose"][..], &["docker-compose"][..]] {
        if works(cmd) {
            return Tool::Compose(cmd.iter().map(|s| (*s).to_owned()).collect());
        }
    }
    Tool::Run
}

/// The container id of a compose service (by compose's labels, so v1 and v2 naming both work).
fn compose_container(project: &str, service: &str) -> Option<String> {
    let project_label = format!("label=com.docker.compose.project={project}");
    let service_label = format!("label=com.docker.compose.service={service}");
    docker_sync(&[
        "ps",
        "-a",
        "-q",
        "--filter",
        &project_label,
        "--filter",
        &service_label,
    ])
    .ok()?
    .lines()
    .next()
    .map(str::to_owned)
}

/// Removes compose projects, volumes and networks named `ampere-ct-<pid>-…` whose test process
/// is gone (its Drop never ran).
fn sweep_stale_projects() {
    let dead = |name: &str| {
        name.strip_prefix("ampere-ct-")
            .and_then(|rest| rest.split(['-', '_']).next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
    };
    let format = "{{.ID}} {{.Label \"com.docker.compose.project\"}}";
    if let Ok(list) = docker_sync(&[
        "ps",
        "-a",
        "--filter",
        "label=com.docker.compose.project",
        "--format",
        format,
    ]) {
        for line in list.lines() {
            if let Some((id, project)) = line.split_once(' ') {
                if dead(project) {
                    let _ = docker_sync(&["rm", "-f", "-v", id]);
                }
            }
        }
    }
    for (kind, rm) in [
        ("volume", &["volume", "rm", "-f"][..]),
        ("network", &["network", "rm"][..]),
    ] {
        let Ok(list) = docker_sync(&[
            kind,
            "ls",
            "--filter",
            "name=ampere-ct-",
            "--format",
            "{{.Name}}",
        ]) else {
            continue;
        };
        for name in list.lines().filter(|n| dead(n)) {
            let args: Vec<&str> = rm.iter().copied().chain([name]).collect();
            let _ = docker_sync(&args);
        }
    }
}

fn ok(result: Result<String, String>) {
    if let Err(e) = result {
        panic!("{e}");
    }
}
