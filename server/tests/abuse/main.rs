//! The abuse suite: a real `ampere` process on a real Postgres, probed as an attacker and an
//! unlucky operator would — idle and slow connections, stalled bodies, thousands of shapes under
//! a low file-descriptor limit, a full disk, dropped and recreated tables, hostile identifiers.
//! Every probe is bounded in count and time and stays on loopback; each test asserts that the
//! process stays up, that a normal client keeps being served, and that no data is lost.

#[path = "../common/mod.rs"]
mod common;

mod connections;
mod disk;
mod relations;
mod shapes;
