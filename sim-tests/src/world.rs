//! One simulation run: the world (turmoil hosts: `pg`, 2–3 ampere instances, clients), the
//! seeded fault schedule and workload, and the checks after every step.
//!
//! Two phases (style.md §5): **safety** — faults on, every invariant checked at every step;
//! **liveness** — every fault healed, crashes stopped, the workload's open transactions ended
//! and one last write per table; before a deadline exactly one instance must be active, the
//! slot confirmed at the WAL's end and every client converged on the oracle.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI32, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ampere_core::shape::RelationName;
use ampere_core::where_clause::{Params, WhereClause};
use ampere_io_sim::faults::{FaultProfile, SimRng, StorageLayout};
use ampere_io_sim::pg::{self, lock, PgModel, PgModelConfig, PgSettings, SharedPg, TableDef};
use ampere_io_sim::storage::SimDisk;
use ampere_server::api::Health;

use crate::checks::{self, Histories, Ledger, SharedLedger};
use crate::client::{self, ClientConfig, ClientEvent, ClientLog};
use crate::host::{AmpereHost, Registries, HTTP_PORT, PUBLICATION, SLOT};
use crate::workload::{self, Workload, WorkloadStats};

/// Simulated time per step.
const TICK: Duration = Duration::from_millis(5);
/// Length of the safety phase.
pub const SAFETY: Duration = Duration::from_secs(60);
/// After healing, everything must converge within this (lock release or breaker grace
/// 30 s + period 10 s, backoff cap 10 s, `wal_sender_timeout` 60 s, snapshots).
pub const LIVENESS_DEADLINE: Duration = Duration::from_secs(150);
/// An instance may report `active` this long after losing its backend (it learns of the
/// loss from the connection or its replication timeout, 60 s).
const DEPOSED_GRACE: Duration = Duration::from_secs(75);

/// Faults injected, by kind.
pub type FaultCounts = BTreeMap<&'static str, u64>;

/// Disk id → when another disk's instance first advanced the slot's `confirmed_flush_lsn`.
type Overtaken = Arc<Mutex<BTreeMap<usize, Duration>>>;

/// What a run did and checked.
#[derive(Debug)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// The profile it picked.
    pub profile: FaultProfile,
    /// Faults injected, by kind.
    pub faults: FaultCounts,
    /// Checks performed, by invariant.
    pub checks: BTreeMap<&'static str, u64>,
    /// The workload's counters.
    pub workload: WorkloadStats,
    /// Client-visible 409s.
    pub refetches: u64,
    /// Up-to-date states compared with the oracle.
    pub oracle_comparisons: u64,
    /// Where-shapes (handles) the where-clients were served.
    pub where_shapes: u64,
    /// Up-to-date states of where-shapes compared with the oracle.
    pub where_comparisons: u64,
    /// Simulated time at convergence.
    pub converged_at: Duration,
    /// Digest of every observation, for the determinism self-test.
    pub trace: u64,
    /// Invariant violations (empty when the run passed).
    pub failures: Vec<String>,
}

/// What a run is allowed to differ in (mutation tests and regressions pin these).
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Overrides the profile the seed would pick.
    pub profile: Option<FaultProfile>,
}

struct Host {
    name: String,
    /// Hosts with the same id share one storage directory.
    disk_id: usize,
    disk: SimDisk,
    down_until: Option<Duration>,
}

struct Client {
    name: String,
    table: RelationName,
    columns: Option<Vec<String>>,
    /// The where clause, compiled by the oracle from the client's own text and params.
    filter: Option<WhereClause>,
    /// Handles of this client's where-shape served so far.
    where_handles: BTreeSet<String>,
    log: Arc<Mutex<ClientLog>>,
    seen: usize,
    /// Handle → the server that first served it (separate storage: moving means 409).
    handle_server: BTreeMap<String, String>,
    /// Whether it follows live changes as server-sent events.
    live_sse: bool,
}

/// The profile `seed` runs with.
pub fn profile_for(seed: u64, options: &RunOptions) -> FaultProfile {
    let picked = FaultProfile::swarm(&mut SimRng::new(seed).fork());
    options.profile.clone().unwrap_or(picked)
}

/// Runs one seed to the end; the report lists any invariant violation.
#[allow(clippy::too_many_lines)] // the run's script, top to bottom
pub fn run(seed: u64, options: &RunOptions) -> Report {
    let mut rng = SimRng::new(seed);
    let picked = FaultProfile::swarm(&mut rng.fork());
    let profile = options.profile.clone().unwrap_or(picked);
    let mut fault_rng = rng.fork();
    let mut sim = turmoil::Builder::new()
        .rng_seed(rng.next_u64())
        .tick_duration(TICK)
        .simulation_duration(SAFETY + LIVENESS_DEADLINE + Duration::from_secs(30))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(profile.max_latency)
        .tcp_capacity(4096)
        .build();

    let tables = vec![relation("items"), relation("others")];
    let mut items = TableDef::with_text_columns(tables[0].clone(), 16_384, &["value", "note"]);
    items
        .columns
        .push(workload::int4_column(workload::N_COLUMN));
    let items_schema = items.schema();
    let model = PgModel::shared(PgModelConfig {
        system_id: 7_000_000_000_000_000_000 + (seed % 1_000_000),
        timeline: 1,
        first_xid: profile.first_xid,
        tables: vec![
            items,
            TableDef::with_text_columns(tables[1].clone(), 16_390, &["value"]),
        ],
    });
    lock(&model).set_settings(PgSettings::default());
    let ledger: SharedLedger = Arc::new(Mutex::new(Ledger::default()));
    let registries: Registries = Arc::new(Mutex::new(BTreeMap::new()));
    let wall_offset = Arc::new(AtomicI64::new(0));

    // Storage: one shared disk, or one per instance.
    let shared = SimDisk::new(rng.next_u64());
    let mut hosts = Vec::new();
    for i in 1..=profile.instances {
        let (disk_id, disk) = match profile.layout {
            StorageLayout::Shared => (0, shared.clone()),
            StorageLayout::Separate => (i, SimDisk::new(rng.next_u64())),
        };
        disk.set_fsync_latency(Duration::from_millis(1), profile.fsync_max);
        hosts.push(Host {
            name: format!("ampere-{i}"),
            disk_id,
            disk,
            down_until: None,
        });
    }
    let overtaken: Overtaken = Arc::new(Mutex::new(BTreeMap::new()));
    let restored_below_pid = Arc::new(AtomicI32::new(0));
    install_hooks(&model, &ledger, &hosts, &overtaken, &restored_below_pid);

    let pg_model = Arc::clone(&model);
    sim.host("pg", move || pg::serve(Arc::clone(&pg_model)));
    for host in &hosts {
        let spec = AmpereHost {
            name: host.name.clone(),
            disk: host.disk.clone(),
            registries: Arc::clone(&registries),
            seed: rng.next_u64(),
            wall_offset: Arc::clone(&wall_offset),
        };
        sim.host(host.name.as_str(), move || spec.clone().run());
    }
    let servers: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
    let mut clients = Vec::new();
    // Where-shapes on `items`, drawn from an RNG of their own so the rest of the run draws
    // what it drew before they existed.
    let mut where_rng = SimRng::new(seed ^ 0x5748_4552_4553_4850);
    let (where_columns_4, where_4) = where_spec(&mut where_rng);
    let mut client_specs = vec![
        ("client-1", &tables[0], None, None),
        (
            "client-2",
            &tables[0],
            Some(vec!["id".to_string(), "value".to_string()]),
            None,
        ),
        ("client-3", &tables[1], None, None),
        ("client-4", &tables[0], where_columns_4, where_4),
    ];
    // A second where-shape on half the seeds (each client adds to the run's cost).
    if where_rng.chance(0.5) {
        let (where_columns_5, where_5) = where_spec(&mut where_rng);
        client_specs.push(("client-5", &tables[0], where_columns_5, where_5));
    }
    // Which clients stream server-sent events and which read subsets: an RNG of its own, so
    // the rest of the run draws what it drew before they existed. One client of each table
    // streams on every seed, the others on half of them; two clients read subsets.
    let mut mode_rng = SimRng::new(seed ^ 0x5353_4553_5542_5345);
    let sse_first = mode_rng.chance(0.5);
    for (i, (name, table, columns, where_clause)) in client_specs.into_iter().enumerate() {
        let live_sse = match name {
            "client-1" => sse_first,
            "client-2" => !sse_first,
            "client-3" => true,
            _ => mode_rng.chance(0.5),
        };
        let subset_reads = matches!(name, "client-2" | "client-4");
        let (where_text, params) = where_clause.unzip();
        let params: Params = params.unwrap_or_default();
        let filter = where_text.as_ref().map(|text| {
            WhereClause::compile(text, &params, &items_schema)
                .unwrap_or_else(|e| panic!("where-shape {text:?} does not compile: {e}"))
        });
        let log = Arc::new(Mutex::new(ClientLog::default()));
        // Each client starts on a different server.
        let mut order = servers.clone();
        order.rotate_left(i % servers.len());
        let config = ClientConfig {
            name: name.into(),
            servers: order,
            port: HTTP_PORT,
            table: table.table.clone(),
            columns: columns.clone(),
            where_clause: where_text,
            params,
            live_timeout: Duration::from_secs(30),
            seed: rng.next_u64(),
            live_sse,
            subset_reads,
            storage: hosts.iter().map(|h| (h.name.clone(), h.disk_id)).collect(),
        };
        let client_log = Arc::clone(&log);
        sim.client(name, async move {
            client::run(config, client_log).await;
            Ok(())
        });
        clients.push(Client {
            name: name.into(),
            table: table.clone(),
            columns,
            filter,
            where_handles: BTreeSet::new(),
            log,
            seen: 0,
            handle_server: BTreeMap::new(),
            live_sse,
        });
    }

    let mut world = World {
        model,
        ledger,
        registries,
        hosts,
        clients,
        histories: Histories::default(),
        profile: profile.clone(),
        faults: FaultCounts::new(),
        fault_rng: fault_rng.fork(),
        held: Vec::new(),
        breaks: BTreeMap::new(),
        snapshot_recorded: BTreeMap::new(),
        overtaken,
        restored_below_pid,
        refetches: 0,
        comparisons: 0,
        where_comparisons: 0,
        deposed_since: BTreeMap::new(),
        wall_offset,
        stale_copy: None,
        stale_done: false,
    };
    world.histories = Histories::new(&lock(&world.model));
    let mut workload = Workload::new(fault_rng.fork(), tables);

    // Safety phase.
    let mut converged_at = Duration::ZERO;
    let mut now = Duration::ZERO;
    while now < SAFETY {
        if let Err(e) = sim.step() {
            world.fail(format!("correctness: a host failed: {e}"));
            break;
        }
        now = sim.elapsed();
        workload.step(&world.model, &profile, now, TICK);
        world.inject(&mut sim, &mut workload, now);
        world.check(now);
        if world.failed() {
            break;
        }
    }

    // Liveness phase.
    if !world.failed() {
        world.heal(&mut sim);
        workload.finish(&world.model);
        workload.final_writes(&world.model);
        let deadline = now + LIVENESS_DEADLINE;
        loop {
            if let Err(e) = sim.step() {
                world.fail(format!("correctness: a host failed: {e}"));
                break;
            }
            now = sim.elapsed();
            world.check(now);
            if world.failed() {
                break;
            }
            if world.converged() {
                converged_at = now;
                break;
            }
            if now >= deadline {
                let why = world.why_not_converged();
                world.fail(format!(
                    "liveness: not converged {LIVENESS_DEADLINE:?} after healing: {why}"
                ));
                break;
            }
        }
    }
    for host in &world.hosts {
        checks::handles_unique(&world.ledger, &host.disk, &host.name);
    }

    let ledger = world.ledger.lock().expect("ledger");
    Report {
        seed,
        profile,
        faults: world.faults.clone(),
        checks: ledger.checks.clone(),
        workload: workload.stats,
        refetches: world.refetches,
        oracle_comparisons: world.comparisons,
        where_shapes: world
            .clients
            .iter()
            .map(|c| c.where_handles.len() as u64)
            .sum(),
        where_comparisons: world.where_comparisons,
        converged_at,
        trace: ledger.trace,
        failures: ledger.failures.clone(),
    }
}

/// A where-shape client's `columns` and where clause (text, params).
type WhereSpec = (Option<Vec<String>>, Option<(String, Params)>);

/// A where-shape on `items`: a clause from [`workload::WHERE_SHAPES`] and all columns, or a
/// subset with or without the filtered column.
fn where_spec(rng: &mut SimRng) -> WhereSpec {
    let (text, params) = workload::pick_where(rng);
    let columns = match rng.below(3) {
        0 => None,
        1 => Some(vec!["id".to_string(), workload::N_COLUMN.to_string()]),
        _ => Some(vec!["id".to_string(), "value".to_string()]),
    };
    (columns, Some((text, params)))
}

fn relation(table: &str) -> RelationName {
    RelationName {
        schema: "public".into(),
        table: table.into(),
    }
}

/// Audit hooks: every storage mutation against the model's lock table; every ack against the
/// acking host's storage, and which disks it leaves behind the slot.
fn install_hooks(
    model: &SharedPg,
    ledger: &SharedLedger,
    hosts: &[Host],
    overtaken: &Overtaken,
    restored_below_pid: &Arc<AtomicI32>,
) {
    let disk_ids: Vec<(String, usize)> =
        hosts.iter().map(|h| (h.name.clone(), h.disk_id)).collect();
    let mut disks: Vec<(String, SimDisk)> = Vec::new();
    for host in hosts {
        disks.push((host.name.clone(), host.disk.clone()));
        let sharers: Vec<String> = hosts
            .iter()
            .filter(|h| h.disk_id == host.disk_id)
            .map(|h| h.name.clone())
            .collect();
        if sharers.first() != Some(&host.name) {
            continue; // one hook per disk
        }
        let model = Arc::clone(model);
        let ledger = Arc::clone(ledger);
        let audit = Mutex::new(checks::StorageAudit::default());
        host.disk.set_audit_hook(Box::new(move |mutation| {
            let view = checks::LockView::of(&lock(&model));
            let mut audit = audit.lock().expect("audit");
            audit.mutation(&ledger, &view, mutation);
        }));
    }
    let ledger = Arc::clone(ledger);
    let overtaken = Arc::clone(overtaken);
    // Per disk, the furthest position its instances have acknowledged.
    let mut acked: BTreeMap<usize, ampere_core::lsn::Lsn> = BTreeMap::new();
    let restored_below_pid = Arc::clone(restored_below_pid);
    lock(model).set_on_ack(Some(Box::new(move |model, ack| {
        // Stale storage is restored over the first host's disk.
        let on_restored_disk = disk_ids.iter().any(|(name, disk)| {
            *name == ack.client_host && Some(disk) == disk_ids.first().map(|d| &d.1)
        });
        let sent_before_restore =
            on_restored_disk && ack.pid < restored_below_pid.load(Ordering::SeqCst);
        if let Some((_, disk)) = disks.iter().find(|(name, _)| *name == ack.client_host) {
            if !sent_before_restore {
                checks::audit_ack(&ledger, model, ack, disk);
            }
        }
        let Some(&(_, acker)) = disk_ids.iter().find(|(name, _)| *name == ack.client_host) else {
            return;
        };
        let own = acked.entry(acker).or_default();
        *own = (*own).max(ack.flush);
        let Some(confirmed) = model.slot(SLOT).map(|s| s.confirmed_flush_lsn) else {
            return;
        };
        let mut overtaken = overtaken.lock().expect("overtaken");
        for &(_, disk) in disk_ids.iter().filter(|(_, d)| *d != acker) {
            if confirmed > acked.get(&disk).copied().unwrap_or_default() {
                overtaken.entry(disk).or_insert(ack.at);
            }
        }
    })));
}

struct World {
    model: SharedPg,
    ledger: SharedLedger,
    registries: Registries,
    hosts: Vec<Host>,
    clients: Vec<Client>,
    histories: Histories,
    profile: FaultProfile,
    faults: FaultCounts,
    fault_rng: SimRng,
    /// Held links and when they are released.
    held: Vec<(String, String, Duration)>,
    /// Continuity breaks: table (or `*` for all) → when.
    breaks: BTreeMap<String, Duration>,
    /// Handle → whether its durable metadata row ever recorded a complete snapshot (sampled
    /// every tick). One that never did is discarded by the next lock holder (SN-6), so a 409
    /// for it is a real break.
    snapshot_recorded: BTreeMap<String, bool>,
    /// Separate storage: disk → when the slot was first advanced by an instance on another
    /// disk (this disk's shape logs may now be behind the slot: a purge is a real break).
    overtaken: Overtaken,
    /// Backends below this pid connected before stale storage was restored (0: never).
    restored_below_pid: Arc<AtomicI32>,
    refetches: u64,
    comparisons: u64,
    where_comparisons: u64,
    /// Host → since when it reports active without holding the lock.
    deposed_since: BTreeMap<String, Duration>,
    wall_offset: Arc<AtomicI64>,
    stale_copy: Option<SimDisk>,
    stale_done: bool,
}

impl World {
    fn fail(&self, what: String) {
        self.ledger.lock().expect("ledger").fail(what);
    }

    fn failed(&self) -> bool {
        !self.ledger.lock().expect("ledger").failures.is_empty()
    }

    fn count(&mut self, fault: &'static str) {
        *self.faults.entry(fault).or_insert(0) += 1;
    }

    fn broke(&mut self, table: &str, now: Duration) {
        self.breaks.insert(table.to_string(), now);
    }

    /// Rolls every fault class's dice for one tick.
    #[allow(clippy::too_many_lines)] // one arm per fault class
    fn inject(&mut self, sim: &mut turmoil::Sim<'_>, workload: &mut Workload, now: Duration) {
        let dt = TICK.as_secs_f64();
        let p = self.profile.clone();
        // Restarts due.
        for i in 0..self.hosts.len() {
            if self.hosts[i].down_until.is_some_and(|t| t <= now) {
                self.hosts[i].down_until = None;
                sim.bounce(self.hosts[i].name.as_str());
            }
        }
        // Held links due for release.
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|(_, _, t)| *t <= now);
        self.held = keep;
        for (a, b, _) in due {
            sim.release(a.as_str(), b.as_str());
        }

        let rng = &mut self.fault_rng;
        if rng.chance(p.crash_rate * dt) {
            let i = usize::try_from(rng.below(self.hosts.len() as u64)).unwrap_or(0);
            if self.hosts[i].down_until.is_none() {
                let name = self.hosts[i].name.clone();
                let entropy = rng.next_u64();
                let down = rng.duration(Duration::from_millis(100), Duration::from_secs(8));
                sim.crash(name.as_str());
                self.hosts[i].disk.crash(&name, entropy);
                self.registries.lock().expect("registries").remove(&name);
                self.hosts[i].down_until = Some(now + down);
                self.deposed_since.remove(&name);
                self.count("crash-restart (F1/F6)");
            }
        }
        let rng = &mut self.fault_rng;
        if rng.chance(p.pg_partition_rate * dt) {
            let i = usize::try_from(rng.below(self.hosts.len() as u64)).unwrap_or(0);
            // Mostly short; sometimes beyond wal_sender_timeout (half-open, F2).
            let len = if rng.chance(0.3) {
                rng.duration(Duration::from_secs(61), Duration::from_secs(90))
            } else {
                rng.duration(Duration::from_millis(200), Duration::from_secs(20))
            };
            let name = self.hosts[i].name.clone();
            self.hold(sim, &name, "pg", now + len);
            self.count("partition ampere-pg (F2)");
        }
        let rng = &mut self.fault_rng;
        if rng.chance(p.client_partition_rate * dt) {
            let c = usize::try_from(rng.below(self.clients.len() as u64)).unwrap_or(0);
            let i = usize::try_from(rng.below(self.hosts.len() as u64)).unwrap_or(0);
            let len = rng.duration(Duration::from_millis(200), Duration::from_secs(30));
            let (client, host) = (self.clients[c].name.clone(), self.hosts[i].name.clone());
            self.hold(sim, &client, &host, now + len);
            self.count("partition client-ampere");
        }
        let rng = &mut self.fault_rng;
        if rng.chance(p.pg_restart_rate * dt) && sim.is_host_running("pg") {
            let crash = rng.chance(0.5);
            if !crash {
                lock(&self.model).restart(false);
            }
            sim.crash("pg");
            sim.bounce("pg");
            self.count(if crash {
                "postgres crash-restart (F3)"
            } else {
                "postgres fast restart (F3)"
            });
        }
        let rng = &mut self.fault_rng;
        if rng.chance(p.slot_loss_rate * dt) {
            let mut model = lock(&self.model);
            let what = match rng.below(3) {
                0 => model.drop_slot(SLOT).then_some("slot dropped (F4)"),
                1 => model
                    .invalidate_slot(SLOT)
                    .then_some("slot invalidated (F4)"),
                _ => model
                    .drop_publication(PUBLICATION)
                    .then_some("publication dropped (F4)"),
            };
            drop(model);
            if let Some(what) = what {
                self.broke("*", now);
                self.count(what);
            }
        }
        let rng = &mut self.fault_rng;
        if rng.chance(p.terminate_rate * dt) {
            let mut model = lock(&self.model);
            if let Some(pid) = model.lock_holder(SLOT) {
                model.terminate_backend(pid);
                drop(model);
                self.count("terminate walsender");
            }
        }
        let rng = &mut self.fault_rng;
        if rng.chance(p.ddl_rate * dt) {
            if let Some(table) = workload.ddl(&self.model) {
                self.broke(&table.table, now);
                self.count("DDL: truncate / add column (F8)");
            }
        }
        let rng = &mut self.fault_rng;
        if rng.chance(p.disk_stall_rate * dt) {
            let i = usize::try_from(rng.below(self.hosts.len() as u64)).unwrap_or(0);
            let len = rng.duration(Duration::from_millis(100), Duration::from_secs(15));
            self.hosts[i].disk.stall_until(now + len);
            self.count("disk stall (F9)");
        }
        // Drawn only when the class is on: seeds without it keep their fault schedule.
        if p.disk_full_rate > 0.0 && self.fault_rng.chance(p.disk_full_rate * dt) {
            let rng = &mut self.fault_rng;
            let i = usize::try_from(rng.below(self.hosts.len() as u64)).unwrap_or(0);
            let len = rng.duration(Duration::from_millis(500), Duration::from_secs(20));
            self.hosts[i].disk.fill_until(now + len);
            self.count("disk full (F12)");
        }
        let rng = &mut self.fault_rng;
        if rng.chance(p.clock_step_rate * dt) {
            let secs = i64::try_from(rng.below(7_200)).unwrap_or(0) - 3_600;
            self.wall_offset
                .fetch_add(secs * 1_000_000, Ordering::SeqCst);
            self.count("wall-clock step (F10)");
        }
        // Stale storage (§2 item 3): copy at 10 s, restore over the live disk at 40 s.
        if p.stale_storage && !self.stale_done {
            if now >= Duration::from_secs(10) && self.stale_copy.is_none() {
                self.stale_copy = Some(self.hosts[0].disk.snapshot_copy());
            }
            if now >= Duration::from_secs(40) {
                if let Some(copy) = self.stale_copy.take() {
                    for i in 0..self.hosts.len() {
                        let name = self.hosts[i].name.clone();
                        if self.hosts[i].down_until.is_none() {
                            sim.crash(name.as_str());
                            self.hosts[i].disk.crash(&name, self.fault_rng.next_u64());
                            self.registries.lock().expect("registries").remove(&name);
                        }
                        self.hosts[i].down_until = Some(now + Duration::from_secs(2));
                        self.deposed_since.remove(&name);
                    }
                    // Statuses already in flight were sent against the storage that is
                    // being replaced: invariant 2 holds them to the restored copy no more.
                    self.restored_below_pid
                        .store(lock(&self.model).next_pid(), Ordering::SeqCst);
                    self.hosts[0].disk.restore_from(&copy);
                    self.stale_done = true;
                    self.broke("*", now);
                    self.count("stale storage restored");
                }
            }
        }
    }

    fn hold(&mut self, sim: &mut turmoil::Sim<'_>, a: &str, b: &str, until: Duration) {
        if self.held.iter().any(|(x, y, _)| x == a && y == b) {
            return;
        }
        sim.hold(a, b);
        self.held.push((a.to_string(), b.to_string(), until));
    }

    /// Liveness phase: release every link, restart every host, no more faults.
    fn heal(&mut self, sim: &mut turmoil::Sim<'_>) {
        for (a, b, _) in std::mem::take(&mut self.held) {
            sim.release(a.as_str(), b.as_str());
        }
        for host in &mut self.hosts {
            if host.down_until.take().is_some() {
                sim.bounce(host.name.as_str());
            }
            host.disk.stall_until(Duration::ZERO);
            host.disk.free();
        }
    }

    /// Every invariant that can be checked at an instant.
    fn check(&mut self, now: Duration) {
        self.histories.update(&lock(&self.model));
        self.note_recorded_snapshots();
        self.check_clients(now);
        self.check_health(now);
    }

    /// Which shapes' metadata rows record a complete snapshot, on every disk (once per disk,
    /// however many hosts share it).
    fn note_recorded_snapshots(&mut self) {
        let mut disks = BTreeSet::new();
        for host in self.hosts.iter().filter(|h| disks.insert(h.disk_id)) {
            for row in host.disk.durable_metadata().0 {
                *self
                    .snapshot_recorded
                    .entry(row.handle.as_str().to_owned())
                    .or_default() |= row.snapshot.is_some();
            }
        }
    }

    /// Invariants 3 and 5: clients' rows equal the oracle; 409 only after a break.
    fn check_clients(&mut self, _now: Duration) {
        let layout = self.profile.layout;
        for c in 0..self.clients.len() {
            let events: Vec<ClientEvent> = {
                let log = self.clients[c].log.lock().expect("client log");
                log.events[self.clients[c].seen..].to_vec()
            };
            self.clients[c].seen += events.len();
            for event in events {
                let mut ledger = self.ledger.lock().expect("ledger");
                ledger.trace(&format!("{}:{event:?}", self.clients[c].name));
                drop(ledger);
                self.client_event(c, layout, event);
            }
        }
    }

    fn client_event(&mut self, c: usize, layout: StorageLayout, event: ClientEvent) {
        let client = &mut self.clients[c];
        match event {
            ClientEvent::UpToDate {
                server,
                handle,
                offset,
                snapshot,
                rows,
                at,
            } => self.up_to_date(c, &server, &handle, offset, snapshot, &rows, at),
            ClientEvent::MustRefetch {
                server,
                old_handle,
                at,
                ..
            } => {
                self.refetches += 1;
                self.ledger
                    .lock()
                    .expect("ledger")
                    .checked("409-iff-broken");
                let table_broke =
                    self.breaks.contains_key(&client.table.table) || self.breaks.contains_key("*");
                let moved = layout == StorageLayout::Separate
                    && client
                        .handle_server
                        .get(&old_handle)
                        .is_some_and(|s| *s != server);
                // Separate storage: while this server's instance was not streaming, another
                // one consumed the slot past what this storage holds (CT-1, B3: stale storage).
                let overtaken = layout == StorageLayout::Separate
                    && self
                        .hosts
                        .iter()
                        .find(|h| h.name == server)
                        .is_some_and(|h| {
                            let overtaken = self.overtaken.lock().expect("overtaken");
                            overtaken.get(&h.disk_id).is_some_and(|t| *t <= at)
                        });
                // SN-6: a shape whose complete snapshot never reached metadata (its instance
                // lost the lock or crashed first) is discarded by the next lock holder.
                let discarded = self.snapshot_recorded.get(&old_handle) == Some(&false);
                if !table_broke && !moved && !overtaken && !discarded && !old_handle.is_empty() {
                    let what = format!(
                        "correctness: invariant 5 (409 only on broken continuity): {} got 409 for \
                         {old_handle} from {server} at {at:?} with no continuity break",
                        client.name
                    );
                    self.fail(what);
                }
            }
            ClientEvent::Subset {
                server,
                handle,
                read,
                snapshot,
                rows,
                at,
            } => self.subset_read(c, &server, &handle, read, &snapshot, &rows, at),
            ClientEvent::Violation { server, what, at } => {
                let what = format!(
                    "correctness: protocol: {} from {server} at {at:?}: {what}",
                    client.name
                );
                self.fail(what);
            }
            ClientEvent::Unavailable { .. } => {}
        }
    }

    /// Invariant 3 for subset reads: the rows a subset read returned are the oracle's rows of
    /// the shape as of the read's snapshot, filtered, ordered and limited as asked.
    #[allow(clippy::too_many_arguments)] // the event's fields, unpacked
    fn subset_read(
        &mut self,
        c: usize,
        server: &str,
        handle: &str,
        read: crate::subset::SubsetRead,
        snapshot: &ampere_core::snapshot::PgSnapshot,
        rows: &[(String, client::Row)],
        at: Duration,
    ) {
        let client = &self.clients[c];
        let Some(history) = self.histories.table(&client.table) else {
            return;
        };
        let shape_rows = history.rows_where(
            snapshot,
            ampere_core::offset::LogOffset::BEFORE_ALL,
            client.columns.as_deref(),
            client.filter.as_ref(),
        );
        let expected = read.expected(&shape_rows);
        self.ledger
            .lock()
            .expect("ledger")
            .checked("subset-oracle-equality");
        if expected != rows {
            let keys = |rows: &[(String, client::Row)]| -> Vec<String> {
                rows.iter().map(|(k, _)| k.clone()).collect()
            };
            let what = format!(
                "correctness: invariant 3 (subset read): {} on {handle} (from {server}, \
                 t={at:?}) asked {read:?} at snapshot {snapshot:?}: got {:?}, the oracle says \
                 {:?}{}",
                client.name,
                keys(rows),
                keys(&expected),
                if keys(rows) == keys(&expected) {
                    " (values differ)"
                } else {
                    ""
                },
            );
            self.fail(what);
        }
    }

    /// Invariant 3: an up-to-date state equals the oracle at its offset.
    #[allow(clippy::too_many_arguments)] // the event's fields, unpacked
    fn up_to_date(
        &mut self,
        c: usize,
        server: &str,
        handle: &str,
        offset: ampere_core::offset::LogOffset,
        snapshot: Option<ampere_core::snapshot::PgSnapshot>,
        rows: &ampere_io_sim::oracle::Rows,
        at: Duration,
    ) {
        let client = &mut self.clients[c];
        client
            .handle_server
            .entry(handle.to_string())
            .or_insert(server.to_string());
        let Some(snapshot) = snapshot else {
            let what = format!(
                "correctness: invariant 3: {} up-to-date on {handle} at {offset} without \
                 having seen its snapshot-end",
                client.name
            );
            return self.fail(what);
        };
        let Some(history) = self.histories.table(&client.table) else {
            return;
        };
        let expected = history.rows_where(
            &snapshot,
            offset,
            client.columns.as_deref(),
            client.filter.as_ref(),
        );
        self.comparisons += 1;
        if client.live_sse {
            self.ledger
                .lock()
                .expect("ledger")
                .checked("sse-oracle-equality");
        }
        if client.filter.is_some() {
            client.where_handles.insert(handle.to_owned());
            self.where_comparisons += 1;
        }
        self.ledger
            .lock()
            .expect("ledger")
            .checked("oracle-equality");
        if expected != *rows {
            let what = format!(
                "correctness: invariant 3 (oracle equality): {} on {handle} at {offset} \
                 (from {server}, t={at:?}) holds {} rows, the oracle says {}: {}",
                client.name,
                rows.len(),
                expected.len(),
                first_difference(&expected, rows)
            );
            self.fail(what);
        }
    }

    /// Invariant 7 (and 1 as reported): an instance reporting `active` holds the lock, or lost
    /// it less than the replication timeout ago (it cannot know sooner).
    fn check_health(&mut self, now: Duration) {
        let holder = lock(&self.model).lock_holder_host(SLOT);
        let registries: Vec<(String, Health)> = self
            .registries
            .lock()
            .expect("registries")
            .iter()
            .map(|(n, r)| (n.clone(), r.state().health))
            .collect();
        self.ledger
            .lock()
            .expect("ledger")
            .checked("health-per-state");
        for (name, health) in registries {
            let deposed = health == Health::Active && holder.as_deref() != Some(name.as_str());
            if !deposed {
                self.deposed_since.remove(&name);
                continue;
            }
            let since = *self.deposed_since.entry(name.clone()).or_insert(now);
            if now.saturating_sub(since) > DEPOSED_GRACE {
                self.fail(format!(
                    "correctness: invariant 1/7: {name} reports active for {:?} without holding \
                     the lock (holder: {holder:?})",
                    now - since
                ));
            }
        }
    }

    fn converged(&self) -> bool {
        self.why_not_converged().is_empty()
    }

    /// Why the world has not converged yet (empty when it has).
    fn why_not_converged(&self) -> String {
        let model = lock(&self.model);
        let holder = model.lock_holder_host(SLOT);
        let actives: Vec<String> = self
            .registries
            .lock()
            .expect("registries")
            .iter()
            .filter(|(_, r)| r.state().health == Health::Active)
            .map(|(n, _)| n.clone())
            .collect();
        if actives.len() != 1 || holder.as_ref() != actives.first() {
            return format!("active instances {actives:?}, lock holder {holder:?}");
        }
        let end = model.committed().last().map(|t| t.end_lsn);
        let confirmed = model.slot(SLOT).map(|s| s.confirmed_flush_lsn);
        if end.is_some_and(|e| confirmed.is_none_or(|c| c < e)) {
            return format!("slot confirmed at {confirmed:?}, WAL's last commit ends at {end:?}");
        }
        for client in &self.clients {
            let log = client.log.lock().expect("client log");
            let Some(ClientEvent::UpToDate {
                offset,
                snapshot: Some(snapshot),
                rows,
                handle,
                ..
            }) = log.last_up_to_date()
            else {
                return format!("{} has no up-to-date state", client.name);
            };
            let Some(history) = self.histories.table(&client.table) else {
                continue;
            };
            let last = history.last_commit_for(client.columns.as_deref(), client.filter.as_ref());
            let current = history.rows_where(
                snapshot,
                ampere_core::offset::LogOffset::change(ampere_core::lsn::Lsn(u64::MAX), 0),
                client.columns.as_deref(),
                client.filter.as_ref(),
            );
            let reached = match offset {
                ampere_core::offset::LogOffset::At { tx, .. } if *tx > 0 => {
                    last.is_none_or(|l| l.0 <= *tx)
                }
                _ => {
                    history.rows_where(
                        snapshot,
                        *offset,
                        client.columns.as_deref(),
                        client.filter.as_ref(),
                    ) == current
                }
            };
            if !reached || *rows != current {
                return format!(
                    "{} on {handle} at {offset} has {} rows, the table has {}",
                    client.name,
                    rows.len(),
                    current.len()
                );
            }
        }
        String::new()
    }
}

fn first_difference(
    expected: &ampere_io_sim::oracle::Rows,
    actual: &ampere_io_sim::oracle::Rows,
) -> String {
    for (key, row) in expected {
        match actual.get(key) {
            None => return format!("missing {key} = {row:?}"),
            Some(other) if other != row => {
                return format!("{key}: expected {row:?}, got {other:?}")
            }
            Some(_) => {}
        }
    }
    for (key, row) in actual {
        if !expected.contains_key(key) {
            return format!("unexpected {key} = {row:?}");
        }
    }
    "none".into()
}
