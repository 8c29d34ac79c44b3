//! The simulation's entry points: the CI seed list, one-seed replay, the determinism
//! self-test, pinned regressions and the mutation check. See `docs/simulation.md`.
//!
//! - `SIM_SEED=0x… cargo test -p ampere-sim-tests --test sim -- replay --exact --nocapture`
//!   replays one seed (`SIM_LOG=debug` for the driver's trace).
//! - `SIM_SEEDS=10000 cargo test --release -p ampere-sim-tests --test sim -- seed_sweep
//!   --nocapture` sweeps seeds `SIM_SEED_START..` (default 1).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use ampere_io_sim::faults::FaultProfile;
use ampere_sim_tests::{run_seed, seed_from_env, Report, RunOptions};

/// The fixed CI seed list: seeds `1..=CI_SEEDS`, except [`OPEN_BUGS`] (none now); the
/// seeds pinned in [`regressions`] run there under their names.
const CI_SEEDS: u64 = 201;

/// The CI seeds expected to pass: `1..=CI_SEEDS` but [`OPEN_BUGS`].
fn ci_seeds() -> impl Iterator<Item = u64> {
    (1..=CI_SEEDS).filter(|s| !OPEN_BUGS.iter().any(|(b, _)| b == s))
}

/// The seeds `ci_seed_list_passes_every_invariant` runs itself.
fn ci_list() -> Vec<u64> {
    ci_seeds()
        .filter(|s| !regressions::PINNED.contains(s))
        .collect()
}

/// Seeds of the CI list that fail on bugs the simulation found and that are not fixed yet,
/// each with the invariant it breaks. Kept out of the passing list, never silently: they run
/// with `cargo test -p ampere-sim-tests --test sim -- --ignored open_bugs`, and the issue
/// tracker's note lists them. Remove a seed when its bug is fixed.
const OPEN_BUGS: &[(u64, &str)] = &[];

/// Runs `seeds` on two threads; returns the reports and the failures (seed, message).
fn sweep(seeds: Vec<u64>) -> (Vec<Report>, Vec<(u64, String)>) {
    let next = AtomicUsize::new(0);
    let reports = Mutex::new(Vec::new());
    let failures = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(&seed) = seeds.get(i) else { break };
                let run = std::panic::catch_unwind(|| run_seed(seed, &RunOptions::default()));
                match run {
                    Ok(report) => reports.lock().expect("reports").push(report),
                    Err(panic) => {
                        let message = panic_message(&*panic);
                        failures.lock().expect("failures").push((seed, message));
                    }
                }
            });
        }
    });
    let mut reports = reports.into_inner().expect("reports");
    reports.sort_by_key(|r| r.seed);
    let mut failures = failures.into_inner().expect("failures");
    failures.sort_by_key(|f| f.0);
    (reports, failures)
}

/// A panic's text: an invariant violation (`String`) or a host's panic (`&str`, e.g. a core
/// assertion tripping inside a simulated host).
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Totals over a sweep, printed for the closing note.
fn summary(reports: &[Report], wall: std::time::Duration) -> String {
    let mut faults: BTreeMap<&str, u64> = BTreeMap::new();
    let mut checks: BTreeMap<&str, u64> = BTreeMap::new();
    let (mut commits, mut refetches, mut comparisons) = (0, 0, 0);
    let (mut where_shapes, mut where_comparisons) = (0, 0);
    for r in reports {
        for (k, v) in &r.faults {
            *faults.entry(k).or_insert(0) += v;
        }
        for (k, v) in &r.checks {
            *checks.entry(k).or_insert(0) += v;
        }
        commits += r.workload.committed;
        refetches += r.refetches;
        comparisons += r.oracle_comparisons;
        where_shapes += r.where_shapes;
        where_comparisons += r.where_comparisons;
    }
    format!(
        "{} seeds passed in {wall:.1?}\n  faults injected: {faults:#?}\n  checks: {checks:#?}\n  \
         transactions committed: {commits}, client 409s: {refetches}, oracle comparisons: \
         {comparisons} (where-shapes served: {where_shapes}, compared: {where_comparisons})",
        reports.len()
    )
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.trim().parse().ok()
}

/// Whether this run checks a deliberately wrong core (`AMPERE_MUTANT` names it; every
/// simulation build carries them all, inactive).
fn is_mutant_run() -> bool {
    std::env::var_os(MUTANT_VAR).is_some()
}

/// The variable `scripts/mutants.sh` names the mutant in.
const MUTANT_VAR: &str = "AMPERE_MUTANT";

#[test]
fn ci_seed_list_passes_every_invariant() {
    if is_mutant_run() {
        return; // `the_ci_seed_list_catches_this_mutant` runs instead
    }
    // Goal: deploy-semantics §3 on a fixed list of seeds, each with its own swarm profile.
    // Method: run seeds 1..=201 but the open bugs (two threads); any violation fails with its seed and replay.
    let started = Instant::now();
    let (reports, failures) = sweep(ci_list());
    eprintln!(
        "{} seed(s) of the list are open bugs (run with --ignored open_bugs): {:?}",
        OPEN_BUGS.len(),
        OPEN_BUGS
    );
    eprintln!("{}", summary(&reports, started.elapsed()));
    assert!(
        failures.is_empty(),
        "{} of {CI_SEEDS} seeds failed:\n{}",
        failures.len(),
        failures
            .iter()
            .map(|(seed, m)| format!(
                "--- seed {seed:#x}: {m}\n    replay: {}",
                ampere_sim_tests::replay_line(*seed)
            ))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn seed_sweep() {
    // A long sweep on demand: `SIM_SEEDS=10000` (nothing runs without it).
    let Some(count) = env_u64("SIM_SEEDS") else {
        return;
    };
    let start = env_u64("SIM_SEED_START").unwrap_or(1);
    let started = Instant::now();
    let (reports, failures) = sweep((start..start + count).collect());
    eprintln!("{}", summary(&reports, started.elapsed()));
    for (seed, message) in &failures {
        eprintln!(
            "--- seed {seed:#x}: {message}\n    replay: {}",
            ampere_sim_tests::replay_line(*seed)
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {count} seeds failed",
        failures.len()
    );
}

#[test]
fn replay() {
    // One seed: SIM_SEED (nothing runs without it, so the suite stays deterministic).
    let Some(seed) = seed_from_env() else {
        return;
    };
    let report = run_seed(seed, &RunOptions::default());
    eprintln!(
        "{}",
        summary(std::slice::from_ref(&report), std::time::Duration::ZERO)
    );
}

#[test]
fn one_seed_run_twice_gives_the_same_trace() {
    // Goal: determinism. Method: the same seed twice in one process; the digests of every
    // observation (storage mutations, acks, client events) must be equal.
    let seed = 0x5eed_1e55;
    let a = run_seed(seed, &RunOptions::default());
    let b = run_seed(seed, &RunOptions::default());
    assert_ne!(a.trace, 0, "the trace observed something");
    assert_eq!(a.trace, b.trace, "seed {seed:#x} is not deterministic");
    assert_eq!(a.faults, b.faults);
}

#[test]
fn a_calm_run_converges_with_no_refetch() {
    // The baseline: no faults, two instances on shared storage, clients converge, no 409.
    let options = RunOptions {
        profile: Some(FaultProfile::calm()),
    };
    let report = run_seed(7, &options);
    assert_eq!(report.refetches, 0);
    assert!(
        report.oracle_comparisons > 0,
        "clients were compared with the oracle"
    );
    assert!(report.workload.committed > 100);
}

#[test]
fn the_ci_seed_list_catches_this_mutant() {
    // Goal: the seed budget is strong enough to catch each deliberately wrong core (run by
    // scripts/mutants.sh, once per mutant, one build). Method: the CI seeds in order,
    // stopping at the first failure; it must come within the list.
    if !is_mutant_run() {
        return;
    }
    activate_mutant_from_env();
    let started = Instant::now();
    for seed in ci_seeds() {
        let run = std::panic::catch_unwind(|| run_seed(seed, &RunOptions::default()));
        if let Err(panic) = run {
            let message = panic_message(&*panic);
            let first = message.lines().next().unwrap_or_default();
            eprintln!(
                "MUTANT CAUGHT by seed {seed:#x} after {:.1?}: {first}",
                started.elapsed()
            );
            return;
        }
    }
    panic!("the mutant survived all {CI_SEEDS} CI seeds");
}

/// Activates the mutant `AMPERE_MUTANT` names.
fn activate_mutant_from_env() {
    use ampere_core::mutant::Mutant;
    let names = Mutant::ALL.map(|(_, name)| name);
    let name = std::env::var(MUTANT_VAR)
        .unwrap_or_else(|_| panic!("set {MUTANT_VAR} to one of {names:?}"));
    let mutant = Mutant::named(&name)
        .unwrap_or_else(|| panic!("AMPERE_MUTANT={name:?} is none of {names:?}"));
    ampere_core::mutant::activate(mutant);
    eprintln!("mutant active: {name}");
}

#[test]
#[ignore = "open bugs found by the simulation; see OPEN_BUGS"]
fn open_bugs_still_reproduce() {
    let (_, failures) = sweep(OPEN_BUGS.iter().map(|(seed, _)| *seed).collect());
    for (seed, message) in &failures {
        eprintln!(
            "--- seed {seed:#x}: {}",
            message.lines().next().unwrap_or_default()
        );
    }
    assert_eq!(
        failures.len(),
        OPEN_BUGS.len(),
        "some open bug no longer reproduces: remove it"
    );
}

/// Seeds that found a bug, each pinned under the name of what it now proves (they are in the
/// CI list too; pinned here they keep their name when the list changes). "Found by sim".
mod regressions {
    use ampere_sim_tests::{run_seed, RunOptions};

    macro_rules! pinned {
        ($($(#[$doc:meta])* $name:ident = $seed:literal;)*) => {
            /// The pinned seeds (the CI list leaves them to these tests).
            pub(crate) const PINNED: &[u64] = &[$($seed),*];
            $(
                $(#[$doc])*
                #[test]
                fn $name() {
                    run_seed($seed, &RunOptions::default());
                }
            )*
        };
    }

    pinned! {
        /// Found by sim: a writer that lost the lock kept writer mode in its store, so it
        /// answered 409 for the next writer's live shapes and served them again later.
        seed_0x2a_a_writer_that_lost_the_lock_follows_the_next_writers_shapes = 0x2a;
        /// Found by sim: a crash mid-flush left half a transaction durable and a standby
        /// served it as up-to-date.
        seed_0x9f_no_reader_sees_part_of_a_transaction_after_a_torn_flush = 0x9f;
        /// Found by sim: a standby answered 400 for an offset beyond its (restored, stale)
        /// log, which the official client treats as fatal.
        seed_0xbb_a_standby_answers_503_for_an_offset_beyond_a_stale_log = 0xbb;
        /// Found by sim: a standby whose read model had not seen a shape yet answered 409
        /// for it although the lock holder's storage had it.
        seed_0x55_a_shape_not_yet_in_the_read_model_is_served_not_refetched = 0x55;
        /// Found by sim (checker): with separate storage, another instance advancing the
        /// slot makes this storage's purge and 409 legitimate.
        seed_0xe_separate_storage_overtaken_by_another_instance_may_refetch = 0xe;
        /// Found by sim (checker): pgoutput decodes no DDL, so acking past ADD COLUMN owes
        /// no entry.
        seed_0x20_an_ack_past_a_ddl_commit_owes_no_entry = 0x20;
        /// Found by sim (checker): a status sent before stale storage was restored is not
        /// held against the restored copy.
        seed_0xc6_a_status_sent_before_a_restore_is_not_held_against_it = 0xc6;
        /// Found by sim (checker): a lock grant still in flight when Postgres crashed may
        /// promote; the lease fences it.
        seed_0x7b_a_promotion_on_a_grant_lost_in_a_postgres_crash_is_fenced = 0x7b;
        /// Found by sim (checker): a shape whose complete snapshot never reached metadata is
        /// discarded by the next lock holder, with a 409.
        seed_0x11_a_shape_never_recorded_complete_may_be_discarded = 0x11;
        /// Found by sim (checker): with separate storage, handles expire per storage.
        seed_0x6c_handles_expire_per_storage_with_separate_storage = 0x6c;
        /// Found by sim: a restored (older) storage directory rolled its stamp floor back
        /// and, with the wall clock behind, a handle already shown was minted again; the
        /// stamp reservation in Postgres prevents it.
        seed_0x5e_a_restore_never_mints_a_shown_handle_again = 0x5e;
        /// Found by sim: after a stale storage copy was restored, a standby still reading it
        /// pointed a client back to a handle it had seen retired (also 0xef, 0x392, 0x414).
        seed_0x2dc_a_standby_never_names_a_handle_the_client_saw_retired = 0x2dc;
        /// Found by sim: a lock holder deciding the purge of a restored copy pointed a client
        /// from its later handle back to the copy's retired one.
        seed_0x46f_a_client_is_never_pointed_back_to_an_earlier_handle = 0x46f;
        /// Found by sim: a writer whose metadata write found the lease taken demoted its
        /// store before the core heard, so an append the core had queued met a read-only
        /// store and the process exited instead of stepping down.
        seed_0x11d_a_writer_fenced_mid_drain_steps_down_instead_of_exiting = 0x11d;
        /// Found by sim: while the walsender worked off a backlog, replication messages
        /// starved shape creations; with no shape every commit cost a metadata fsync, so the
        /// slot never caught up (also 0x304).
        seed_0x3ca_shape_creations_are_served_while_replication_catches_up = 0x3ca;
        /// Found by sim: a shape's schema, read when its request reached a standby, lacked a
        /// column added before its snapshot, whose rows had it; the `Relation` message was
        /// decoded before the shape subscribed, so nothing rotated it. The snapshot now
        /// checks the table it reads against the shape's schema and fails (409).
        seed_0x222_a_snapshot_of_a_table_changed_since_the_catalog_read_fails = 0x222;
        /// Found by sim (checker): the driver removes a shape's log before its row; a status
        /// arriving in between owes the removed shape nothing.
        seed_0x3d8_a_removed_shape_whose_row_outlives_its_log_owes_no_entry = 0x3d8;
        /// Found by sim: the publication was created before the old slot was dropped; the
        /// drop failed, the retry found the publication and kept the slot, whose walsender
        /// then failed on every start (no active instance, ever). The slot goes first now.
        seed_0x4f5_a_failed_slot_drop_is_retried_until_the_publication_exists = 0x4f5;
    }
}
