//! An ampere host: the production service (`ampere_server::app::serve`: read model, core,
//! HTTP router, driver loop) over io-sim ports and a turmoil listener.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ampere_core::instance::Config as CoreConfig;
use ampere_core::ports::{ReplicationTarget, SlotPersistence};
use ampere_io_sim::clock::{SimClock, WALL_CLOCK_START_MICROS};
use ampere_io_sim::pg::SimPg;
use ampere_io_sim::storage::{SimDisk, SimMetadata, SimStore};
use ampere_server::app;
use ampere_server::driver::Ports;
use ampere_server::http::{HttpConfig, SseTimings, WallClock};
use ampere_server::registry::Registry;
use tokio::sync::watch;

/// The port every ampere host serves HTTP on.
pub const HTTP_PORT: u16 = 3000;
/// Snapshot and log chunks are small in the simulation, so chunking is exercised.
pub const CHUNK_BYTES: u64 = 2_048;
/// The stream id every instance shares (one slot, one lock).
pub const SLOT: &str = "electric_slot_sim";
/// The publication every instance shares.
pub const PUBLICATION: &str = "electric_publication_sim";

/// Read models of the running hosts, by host name (for health and mutual-exclusion checks).
pub type Registries = Arc<Mutex<BTreeMap<String, Registry>>>;

/// What an ampere host needs; cloned into turmoil's host closure, which runs again on bounce.
#[derive(Clone, Debug)]
pub struct AmpereHost {
    /// The host's name (also its storage writer name).
    pub name: String,
    /// Its storage directory (shared with other hosts or its own).
    pub disk: SimDisk,
    /// Where the harness finds its read model while it runs.
    pub registries: Registries,
    /// Seeds the HTTP layer's request ids and cursor jitter.
    pub seed: u64,
    /// Wall-clock step (F10), microseconds, shared with the harness.
    pub wall_offset: Arc<std::sync::atomic::AtomicI64>,
}

impl AmpereHost {
    /// The host's body: runs the service until the host crashes.
    pub async fn run(self) -> turmoil::Result {
        let clock = SimClock::with_wall_offset(Arc::clone(&self.wall_offset));
        let store = SimStore::open(self.disk.clone(), self.name.clone());
        let meta = SimMetadata::open(self.disk.clone(), self.name.clone());
        let pg = SimPg::new("pg");
        let registry = Registry::new();
        let target = ReplicationTarget {
            slot: SLOT.into(),
            publication: PUBLICATION.into(),
            slot_persistence: SlotPersistence::Persistent,
        };
        let core_config = CoreConfig::new(target, CHUNK_BYTES);
        let wall = Arc::clone(&self.wall_offset);
        let http_config = HttpConfig {
            rng_seed: self.seed,
            clock: WallClock::from_fn(move || wall_clock(&wall)),
            // Shorter than Electric's 21 s and 60 s, so a run sees many streams end and
            // resume (the client's SSE timeout is longer than a stream).
            sse: SseTimings {
                keepalive: Duration::from_secs(7),
                stream: Duration::from_secs(20),
            },
            ..HttpConfig::new(None)
        };
        let listener =
            TurmoilListener(turmoil::net::TcpListener::bind(("0.0.0.0", HTTP_PORT)).await?);
        self.registries
            .lock()
            .expect("registries")
            .insert(self.name.clone(), registry.clone());
        // The harness crashes hosts rather than stopping them: shutdown never flips.
        let (_shutdown_tx, shutdown) = watch::channel(false);
        let ports = Ports {
            pg,
            store,
            meta,
            clock,
        };
        // No shape limit (ELECTRIC_MAX_SHAPES unset), as in a default deployment.
        app::serve(
            ports,
            core_config,
            http_config,
            None,
            listener,
            registry,
            shutdown,
        )
        .await?;
        Ok(())
    }
}

fn wall_clock(offset: &std::sync::atomic::AtomicI64) -> Duration {
    let elapsed = turmoil::sim_elapsed().unwrap_or_default();
    let base = Duration::from_micros(WALL_CLOCK_START_MICROS) + elapsed;
    let step = offset.load(std::sync::atomic::Ordering::SeqCst);
    if step >= 0 {
        base + Duration::from_micros(step.unsigned_abs())
    } else {
        base.saturating_sub(Duration::from_micros(step.unsigned_abs()))
    }
}

/// `axum::serve` over turmoil's listener.
struct TurmoilListener(turmoil::net::TcpListener);

impl axum::serve::Listener for TurmoilListener {
    type Io = turmoil::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok(accepted) => return accepted,
                // Like axum's own TCP listener: accept errors are transient; back off briefly.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}
