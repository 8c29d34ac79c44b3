//! Handing memory freed after a burst back to the operating system.
//!
//! glibc's malloc keeps freed memory in its arenas for reuse: after a thousand connections or
//! a few stalled request bodies were served and dropped, the process's resident size stayed at
//! its peak. [`Release`] notices when usage fell to a fraction of a large enough peak and
//! then asks malloc to return its free pages (`malloc_trim`), at most once a second.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

// tokio's clock, which the simulation drives (a trim is scheduled like any other timer).
use tokio::time::Instant;

/// Trims at most this often: `malloc_trim` walks every arena, holding each one's lock.
const TRIM_INTERVAL_MIN: Duration = Duration::from_secs(1);

/// Tracks one resource's usage (connections, buffered body bytes) and trims after it drops.
/// A trim wanted sooner than [`TRIM_INTERVAL_MIN`] after the last runs then (on a tokio
/// task), so a burst that ends in a few milliseconds is trimmed once, after its end.
#[derive(Debug)]
pub(crate) struct Release {
    /// Peaks below this are not worth a trim.
    peak_min: usize,
    state: Arc<Mutex<ReleaseState>>,
}

#[derive(Debug, Default)]
struct ReleaseState {
    /// Usage now.
    current: usize,
    /// The highest usage since the last trim was scheduled.
    peak: usize,
    /// When the last trim ran, or is due to run.
    last_trim: Option<Instant>,
    /// Whether a trim is scheduled and has not run yet.
    is_pending: bool,
}

impl Release {
    /// Trims once usage falls to a quarter of a peak of at least `peak_min`.
    pub(crate) fn new(peak_min: usize) -> Self {
        Self {
            peak_min,
            state: Arc::default(),
        }
    }

    /// Records usage rising to `now`.
    pub(crate) fn rose_to(&self, now: usize) {
        let mut state = lock(&self.state);
        state.current = now;
        state.peak = state.peak.max(now);
    }

    /// Records usage falling to `now`, and trims (now or once due) if it fell far from a
    /// large peak. Runs on a tokio runtime.
    pub(crate) fn fell_to(&self, now: usize) {
        let delay = {
            let mut state = lock(&self.state);
            state.current = now;
            let is_far_below = state.peak >= self.peak_min && now.saturating_mul(4) <= state.peak;
            if !is_far_below || state.is_pending {
                return;
            }
            let at = state
                .last_trim
                .map_or_else(Instant::now, |last| last + TRIM_INTERVAL_MIN)
                .max(Instant::now());
            state.peak = now;
            state.last_trim = Some(at);
            state.is_pending = true;
            at.saturating_duration_since(Instant::now())
        };
        let state = Arc::clone(&self.state);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tokio::task::spawn_blocking(trim).await;
            let mut state = lock(&state);
            state.is_pending = false;
            state.peak = state.current;
        });
    }
}

fn lock(state: &Mutex<ReleaseState>) -> MutexGuard<'_, ReleaseState> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Returns malloc's free pages to the operating system (glibc only; elsewhere nothing).
fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and only releases memory malloc holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_peak_is_forgotten_once_usage_falls_to_a_quarter_of_it() {
        let release = Release::new(100);
        release.rose_to(400);
        release.fell_to(200);
        assert!(
            !lock(&release.state).is_pending,
            "half the peak: no trim yet"
        );
        release.fell_to(100);
        assert!(lock(&release.state).is_pending, "a quarter: trim");
        release.fell_to(0);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let state = lock(&release.state);
        assert!(!state.is_pending && state.last_trim.is_some());
        assert_eq!(state.peak, 0, "the peak starts over from usage at the trim");
    }

    #[tokio::test]
    async fn a_small_peak_never_trims() {
        let release = Release::new(100);
        release.rose_to(50);
        release.fell_to(0);
        assert!(lock(&release.state).last_trim.is_none());
    }
}
