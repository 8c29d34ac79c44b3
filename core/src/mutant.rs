//! Deliberately wrong variants of the core, for the simulation's mutation check
//! (docs/simulation.md, "Mutants"). Compiled with the `sim` feature only (never into a
//! production build); none is active until the check activates one, so the simulation's own
//! build serves them all.

use std::sync::atomic::{AtomicU8, Ordering};

/// One wrong variant.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Mutant {
    /// Acknowledges what was processed, flushed or not.
    AckBeforeFsync = 1,
    /// Counts transactions in progress at a snapshot as visible, dropping their changes.
    SkipXipFilter = 2,
    /// Gives a purged definition its old handle back.
    ReuseHandleAfterPurge = 3,
    /// A promoted store knows no shape until it recovers it (io-sim's store; the bug behind
    /// a restart's 409 for a shape it kept).
    ForgetUnrecoveredShapes = 4,
}

impl Mutant {
    /// Every variant, each with the name `scripts/mutants.sh` selects it by.
    pub const ALL: [(Self, &'static str); 4] = [
        (Self::AckBeforeFsync, "ack-before-fsync"),
        (Self::SkipXipFilter, "skip-xip-filter"),
        (Self::ReuseHandleAfterPurge, "reuse-handle-after-purge"),
        (Self::ForgetUnrecoveredShapes, "forget-unrecovered-shapes"),
    ];

    /// The variant called `name`.
    pub fn named(name: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(mutant, _)| *mutant)
    }
}

/// The active variant (0: none), process-wide: the simulation runs many instances at once.
static ACTIVE: AtomicU8 = AtomicU8::new(0);

/// Makes `mutant` the core's behaviour from now on, in every instance of this process.
pub fn activate(mutant: Mutant) {
    ACTIVE.store(mutant as u8, Ordering::SeqCst);
}

/// Whether `mutant` is active (the adapters' simulated twins read it too).
pub fn is_active(mutant: Mutant) -> bool {
    ACTIVE.load(Ordering::Relaxed) == mutant as u8
}
