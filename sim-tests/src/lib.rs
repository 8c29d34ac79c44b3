//! Deterministic simulations of ampere: the production service (`ampere_server::app::serve`:
//! core, driver loop, HTTP router) on io-sim ports — a Postgres model over `turmoil::net`,
//! crash-lossy storage — with protocol-following clients, under seeded swarm faults, checked
//! against an oracle (deploy-semantics §3). See `docs/simulation.md`.
//!
//! One `u64` seed drives a run: the fault profile, the fault schedule, the workload, the
//! disks' latencies and crash outcomes, turmoil's network, and the HTTP layer's jitter.
//! Every run prints a banner with the seed, the profile and a one-line replay command.

pub mod checks;
pub mod client;
pub mod host;
pub mod http;
pub mod sse;
pub mod subset;
pub mod workload;
pub mod world;

pub use world::{Report, RunOptions};

/// The test binary and test that replays a single seed.
pub const REPLAY: &str = "cargo test -p ampere-sim-tests --test sim -- replay --exact --nocapture";

/// The line that reproduces a run.
pub fn replay_line(seed: u64) -> String {
    format!("SIM_SEED={seed:#x} {REPLAY}")
}

/// Runs `seed`, printing its banner first (and again if the run fails), and returns the
/// report; panics with the first violation, the seed and the replay line.
pub fn run_seed(seed: u64, options: &RunOptions) -> Report {
    init_tracing();
    let banner = banner(seed, &world::profile_for(seed, options));
    eprintln!("{banner}");
    let _guard = BannerOnPanic(banner);
    let report = world::run(seed, options);
    if let Some(first) = report.failures.first() {
        panic!(
            "{first}\n  {} more failure(s): {:#?}",
            report.failures.len() - 1,
            &report.failures[1..],
        );
    }
    report
}

/// One line naming the seed, the profile and how to replay it.
pub fn banner(seed: u64, profile: &ampere_io_sim::faults::FaultProfile) -> String {
    format!(
        "SIM_SEED={seed:#x} profile: {profile} | replay: {}",
        replay_line(seed)
    )
}

/// Prints the banner again while unwinding, so a failure's last lines name its seed.
struct BannerOnPanic(String);

impl Drop for BannerOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("FAILED {}", self.0);
        }
    }
}

/// Logs go to the test's output when `SIM_LOG` is set (e.g. `SIM_LOG=debug`).
fn init_tracing() {
    if let Ok(filter) = std::env::var("SIM_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// Parses `SIM_SEED` (decimal or `0x…`).
pub fn seed_from_env() -> Option<u64> {
    let text = std::env::var("SIM_SEED").ok()?;
    let text = text.trim();
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}
