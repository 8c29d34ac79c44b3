//! Swarm fault profiles: the seed picks which fault classes are on and how hard
//! (deploy-semantics §3, F1–F11; TigerBeetle's swarm testing). Many runs switch a class off
//! entirely: uniform moderate faults miss bugs that need one fault many times.

use std::fmt;
use std::time::Duration;

/// SplitMix64: a tiny deterministic PRNG (no OS entropy anywhere in the simulation).
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        self.next_u64() % n
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        // 53 random bits → [0, 1).
        #[allow(clippy::cast_precision_loss)]
        let x = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        x < p
    }

    /// Uniform duration in `[min, max]` at millisecond resolution.
    pub fn duration(&mut self, min: Duration, max: Duration) -> Duration {
        let lo = u64::try_from(min.as_millis()).unwrap_or(u64::MAX);
        let hi = u64::try_from(max.as_millis()).unwrap_or(u64::MAX).max(lo);
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }

    /// A derived generator for an independent stream (faults, workload, disk, …).
    pub fn fork(&mut self) -> Self {
        Self(self.next_u64())
    }
}

/// How ampere instances share storage.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum StorageLayout {
    /// One storage directory for every instance (rolling upgrades on a shared volume).
    Shared,
    /// Each instance has its own directory: a client moving between them gets 409.
    Separate,
}

/// What a run does to the world, and how often. Rates are per simulated second.
#[derive(Clone, Debug)]
pub struct FaultProfile {
    /// Storage layout.
    pub layout: StorageLayout,
    /// Number of ampere instances (2–3): lock contention (F5).
    pub instances: usize,
    /// Crash (power loss) and restart of an ampere host (F1, F6).
    pub crash_rate: f64,
    /// Partition (held link) between an ampere host and Postgres (F2).
    pub pg_partition_rate: f64,
    /// Partition (held link) between a client and an ampere host.
    pub client_partition_rate: f64,
    /// Postgres restart, fast or crash (F3).
    pub pg_restart_rate: f64,
    /// Slot dropped, invalidated, or publication dropped (F4): breaks continuity.
    pub slot_loss_rate: f64,
    /// Old storage copy restored over the live one (stale storage, §2 item 3).
    pub stale_storage: bool,
    /// `pg_terminate_backend` of the replication connection (no continuity break).
    pub terminate_rate: f64,
    /// TRUNCATE / added column (F8): the table's shapes rotate.
    pub ddl_rate: f64,
    /// Upper bound of fsync latency (F9 slow disk); zero = fast disk.
    pub fsync_max: Duration,
    /// Disk stalls (F9).
    pub disk_stall_rate: f64,
    /// Full disks (F12): writes fail with `ENOSPC` for a while, then space is freed.
    pub disk_full_rate: f64,
    /// Wall-clock steps (F10), forwards and backwards.
    pub clock_step_rate: f64,
    /// First full xid (F11): epoch > 0, sometimes a few xids below a 2³² boundary.
    pub first_xid: u64,
    /// Workload: transactions per second.
    pub txn_rate: f64,
    /// Workload: chance a transaction stays open across later commits (interleavings, #4773).
    pub long_txn_chance: f64,
    /// Workload: chance a transaction is large (hundreds of changes).
    pub large_txn_chance: f64,
    /// Network latency upper bound.
    pub max_latency: Duration,
}

impl FaultProfile {
    /// The profile a seed picks (swarm: each class on with some probability, at a random
    /// intensity).
    pub fn swarm(rng: &mut SimRng) -> Self {
        let on = |p: f64, rng: &mut SimRng, lo: f64, hi: f64| -> f64 {
            if rng.chance(p) {
                #[allow(clippy::cast_precision_loss)]
                let t = rng.below(1_000) as f64 / 1_000.0;
                lo + (hi - lo) * t
            } else {
                0.0
            }
        };
        let layout = if rng.chance(0.75) {
            StorageLayout::Shared
        } else {
            StorageLayout::Separate
        };
        let instances = 2 + usize::from(rng.chance(0.4));
        let epoch = 1 + rng.below(3);
        let first_xid = if rng.chance(0.3) {
            // Straddle a 2³² boundary during the run.
            ((epoch + 1) << 32) - 5 - rng.below(20)
        } else {
            (epoch << 32) + 1_000 + rng.below(1_000_000)
        };
        Self {
            layout,
            instances,
            crash_rate: on(0.5, rng, 0.01, 0.08),
            pg_partition_rate: on(0.4, rng, 0.005, 0.04),
            client_partition_rate: on(0.3, rng, 0.01, 0.05),
            pg_restart_rate: on(0.3, rng, 0.005, 0.03),
            slot_loss_rate: on(0.2, rng, 0.003, 0.02),
            stale_storage: layout == StorageLayout::Shared && rng.chance(0.1),
            terminate_rate: on(0.3, rng, 0.005, 0.03),
            ddl_rate: on(0.25, rng, 0.005, 0.03),
            fsync_max: if rng.chance(0.4) {
                rng.duration(Duration::from_millis(5), Duration::from_millis(400))
            } else {
                Duration::from_millis(1)
            },
            disk_stall_rate: on(0.2, rng, 0.005, 0.03),
            clock_step_rate: on(0.2, rng, 0.01, 0.05),
            first_xid,
            txn_rate: on(1.0, rng, 2.0, 20.0),
            long_txn_chance: on(0.7, rng, 0.02, 0.25),
            large_txn_chance: on(0.4, rng, 0.005, 0.05),
            max_latency: rng.duration(Duration::from_millis(1), Duration::from_millis(60)),
            // Drawn last: the classes above keep the values earlier seeds gave them.
            disk_full_rate: on(0.2, rng, 0.005, 0.03),
        }
    }

    /// A quiet profile: no faults (the baseline and the determinism self-test).
    pub fn calm() -> Self {
        Self {
            layout: StorageLayout::Shared,
            instances: 2,
            crash_rate: 0.0,
            pg_partition_rate: 0.0,
            client_partition_rate: 0.0,
            pg_restart_rate: 0.0,
            slot_loss_rate: 0.0,
            stale_storage: false,
            terminate_rate: 0.0,
            ddl_rate: 0.0,
            fsync_max: Duration::from_millis(1),
            disk_stall_rate: 0.0,
            disk_full_rate: 0.0,
            clock_step_rate: 0.0,
            first_xid: (1 << 32) + 1_000,
            txn_rate: 5.0,
            long_txn_chance: 0.1,
            large_txn_chance: 0.0,
            max_latency: Duration::from_millis(5),
        }
    }

    /// Whether any fault class that breaks continuity (and so allows 409s) is on.
    pub fn breaks_continuity(&self) -> bool {
        self.slot_loss_rate > 0.0 || self.stale_storage || self.ddl_rate > 0.0
    }
}

impl fmt::Display for FaultProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?}×{} crash={:.3} pg-part={:.3} client-part={:.3} pg-restart={:.3} slot-loss={:.3} \
             stale={} terminate={:.3} ddl={:.3} fsync≤{:?} stall={:.3} full={:.3} clock={:.3} \
             xid0={:#x} txn/s={:.1} long={:.2} large={:.3} latency≤{:?}",
            self.layout,
            self.instances,
            self.crash_rate,
            self.pg_partition_rate,
            self.client_partition_rate,
            self.pg_restart_rate,
            self.slot_loss_rate,
            self.stale_storage,
            self.terminate_rate,
            self.ddl_rate,
            self.fsync_max,
            self.disk_stall_rate,
            self.disk_full_rate,
            self.clock_step_rate,
            self.first_xid,
            self.txn_rate,
            self.long_txn_chance,
            self.large_txn_chance,
            self.max_latency,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_picks_the_same_profile() {
        let a = FaultProfile::swarm(&mut SimRng::new(7)).to_string();
        let b = FaultProfile::swarm(&mut SimRng::new(7)).to_string();
        assert_eq!(a, b);
    }

    #[test]
    fn swarm_switches_fault_classes_off_in_some_seeds_and_on_in_others() {
        let profiles: Vec<_> = (0..200)
            .map(|s| FaultProfile::swarm(&mut SimRng::new(s)))
            .collect();
        assert!(profiles.iter().any(|p| p.crash_rate == 0.0));
        assert!(profiles.iter().any(|p| p.crash_rate > 0.0));
        assert!(profiles.iter().any(|p| p.slot_loss_rate > 0.0));
        assert!(profiles.iter().any(|p| p.layout == StorageLayout::Separate));
        assert!(profiles.iter().any(|p| p.instances == 3));
        assert!(profiles.iter().any(|p| p.disk_full_rate > 0.0));
        assert!(profiles
            .iter()
            .any(|p| p.first_xid % (1 << 32) > (1 << 32) - 30));
    }
}
