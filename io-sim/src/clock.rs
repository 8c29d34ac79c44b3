//! [`SimClock`]: the `Clock` port on tokio's (turmoil-driven, paused) clock, with a wall
//! clock that the simulation can step (F10).

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ampere_core::ports::Clock;
use ampere_core::time::Instant;

/// 2026-01-01T00:00:00Z in microseconds since the Unix epoch: the simulated wall clock at
/// simulated time zero.
pub const WALL_CLOCK_START_MICROS: u64 = 1_767_225_600_000_000;

/// Monotonic time from tokio's clock (which turmoil advances), counted from when the clock
/// was made; wall time from turmoil's elapsed time plus a steppable offset. Clones share the
/// offset. Make it inside the host that uses it: tokio's clock is per runtime.
#[derive(Clone, Debug)]
pub struct SimClock {
    origin: tokio::time::Instant,
    /// Microseconds added to the wall clock by [`SimClock::step_wall_clock`].
    wall_offset: Arc<AtomicI64>,
}

impl SimClock {
    /// A clock whose monotonic origin is now.
    pub fn new() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
            wall_offset: Arc::new(AtomicI64::new(0)),
        }
    }

    /// A clock whose wall-clock step is `wall_offset`, shared with whoever holds it (the
    /// simulation steps every host's wall clock through it, F10).
    pub fn with_wall_offset(wall_offset: Arc<AtomicI64>) -> Self {
        Self {
            origin: tokio::time::Instant::now(),
            wall_offset,
        }
    }

    /// Steps the wall clock by `micros` (negative: backwards), for this clock and every
    /// clone (F10). Monotonic time is unaffected.
    pub fn step_wall_clock(&self, micros: i64) {
        self.wall_offset.fetch_add(micros, Ordering::SeqCst);
    }

    /// The total step applied so far, in microseconds.
    pub fn wall_clock_offset(&self) -> i64 {
        self.wall_offset.load(Ordering::SeqCst)
    }

    fn elapsed(&self) -> Duration {
        turmoil::sim_elapsed().unwrap_or_else(|| self.origin.elapsed())
    }
}

impl Default for SimClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SimClock {
    fn now(&self) -> Instant {
        let nanos = self.origin.elapsed().as_nanos();
        Instant(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// [`WALL_CLOCK_START_MICROS`] + simulated elapsed time + the stepped offset (never
    /// below zero).
    fn unix_micros(&self) -> u64 {
        let elapsed = u64::try_from(self.elapsed().as_micros()).unwrap_or(u64::MAX);
        let base = WALL_CLOCK_START_MICROS.saturating_add(elapsed);
        let offset = self.wall_clock_offset();
        if offset >= 0 {
            base.saturating_add(offset.unsigned_abs())
        } else {
            base.saturating_sub(offset.unsigned_abs())
        }
    }

    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + 'static {
        tokio::time::sleep_until(self.origin + Duration::from_nanos(deadline.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_sim(test: impl Future<Output = ()> + 'static) {
        let mut sim = turmoil::Builder::new()
            .simulation_duration(Duration::from_secs(60))
            .build();
        sim.client("test", async move {
            test.await;
            Ok(())
        });
        sim.run().expect("simulation");
    }

    #[test]
    fn now_and_wall_clock_follow_simulated_time() {
        in_sim(async {
            let clock = SimClock::new();
            let start = clock.now();
            let wall = clock.unix_micros();
            assert!(wall >= WALL_CLOCK_START_MICROS);
            clock.sleep_until(start + Duration::from_secs(3)).await;
            let waited = clock.now().saturating_duration_since(start);
            assert!(waited >= Duration::from_secs(3), "{waited:?}");
            assert!(waited < Duration::from_secs(4), "{waited:?}");
            let advanced = clock.unix_micros() - wall;
            assert!((3_000_000..4_000_000).contains(&advanced), "{advanced}");
        });
    }

    #[test]
    fn stepping_the_wall_clock_moves_every_clone_but_not_monotonic_time() {
        in_sim(async {
            let clock = SimClock::new();
            let clone = clock.clone();
            let before = clone.unix_micros();
            let now = clone.now();
            clock.step_wall_clock(-5_000_000);
            assert_eq!(clone.unix_micros(), before - 5_000_000);
            assert_eq!(clone.now(), now);
            clock.step_wall_clock(7_000_000);
            assert_eq!(clone.unix_micros(), before + 2_000_000);
            assert_eq!(clone.wall_clock_offset(), 2_000_000);
        });
    }
}
