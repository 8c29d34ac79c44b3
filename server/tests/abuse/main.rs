//! The abuse suite: a real `ampere` process on a real Postgres, probed as an attacker and an
//! unlucky operator would — idle and slow connections, stalled bodies, thousands of shapes under
//! a low file-descriptor limit, a full disk, dropped and recreated tables, hostile identifiers.
//! Every probe is bounded in count and time and stays on loopback; each test asserts that the
//! process stays up, that a normal client keeps being served, and that no data is lost.

use std::sync::{Mutex, MutexGuard, PoisonError};

#[path = "../common/mod.rs"]
mod common;

mod connections;
mod disk;
mod identifiers;
mod readers;
mod relations;
mod shapes;

/// Held by each test that loads the machine (thousands of connections or shapes, a full
/// disk) for its whole run: run together they would measure each other — a latency bound, an
/// RSS baseline, a flush time — instead of ampere. The light tests run alongside.
fn exclusive() -> MutexGuard<'static, ()> {
    static LOAD: Mutex<()> = Mutex::new(());
    LOAD.lock().unwrap_or_else(PoisonError::into_inner)
}
