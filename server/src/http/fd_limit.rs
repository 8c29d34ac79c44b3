//! The process's file-descriptor limit, and the share of it API connections may take.
//!
//! Every accepted connection is a file descriptor (the metrics port's too, at most
//! [`crate::metrics::MAX_CONNECTIONS`]), and so is every shape-log file the store's
//! cache keeps open (at most [`OpenFileBudget`], a quarter of the limit), the SQLite database
//! and every Postgres connection.
//! When connections took the last descriptor, the next storage call failed with `EMFILE` and
//! ampere exited. So the `ampere` binary raises its soft `RLIMIT_NOFILE` to the hard limit
//! first thing ([`raise_to_hard_limit`]), and caps API connections below what storage and
//! Postgres need ([`FdBudget`]).

use std::io;

use ampere_io_real::store::OpenFileBudget;

/// Open connections at most when the fd limit allows more: ThousandIsland's default for one
/// acceptor is 16,384 and Electric runs 100; ampere stops at 65,536, where idle connections
/// (about 20 KiB each) already hold over a gigabyte. `AMPERE_MAX_CONNECTIONS` may go higher.
pub const MAX_CONNECTIONS_CEILING: usize = 65_536;

/// Connections allowed however low the fd limit: below this the API cannot serve a handful
/// of long-polling clients, and the startup warning says so.
const MAX_CONNECTIONS_FLOOR: usize = 16;

/// Descriptors kept for everything that is neither a connection, a shape log nor a Postgres
/// socket: stdin/stdout/stderr, tokio's epoll, eventfd and signal pipe, the API and metrics
/// listeners, `/dev/urandom`, the storage lease, SQLite (database, `-wal`,
/// `-shm`, journal, the standby's reader), the files opened for a moment (`shape.json` writes,
/// directory fsyncs, snapshot chunks), the embedded PostgreSQL's pipes, and the descriptor a
/// refused connection holds between its accept and its close.
const FIXED_FDS: u64 = 64;

/// Postgres sockets beyond the pool: the replication connection, and room for a reconnect
/// whose new socket opens before the old one is closed.
const POSTGRES_EXTRA_FDS: u64 = 4;

/// Soft `RLIMIT_NOFILE` before and after [`raise_to_hard_limit`], and the hard limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit the process started with.
    pub initial_soft: u64,
    /// The hard limit (`u64::MAX`: unlimited).
    pub hard: u64,
    /// The soft limit now in force.
    pub soft: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (on macOS at most `OPEN_MAX`, which is
/// what the kernel accepts there). Call before any thread starts.
pub fn raise_to_hard_limit() -> io::Result<FdLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a valid, exclusive pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (initial_soft, hard) = (limit.rlim_cur, limit.rlim_max);
    let target = if cfg!(target_os = "macos") {
        limit.rlim_max.min(10_240)
    } else {
        limit.rlim_max
    };
    if limit.rlim_cur >= target {
        return Ok(FdLimit {
            initial_soft,
            hard,
            soft: initial_soft,
        });
    }
    let raised = libc::rlimit {
        rlim_cur: target,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit reads one `rlimit` through a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(FdLimit {
        initial_soft,
        hard,
        soft: target,
    })
}

/// How the file descriptors under the limit are shared: a fixed reserve, the Postgres
/// sockets and the metrics port's connections first, then half of the rest for API
/// connections and half for shape-log files
/// (a data and an index file per shape being read or written). The store bounds its own open
/// files (io-real's open-file cache takes a quarter of the soft limit), which the half left
/// here covers; shapes are not counted up front, so connections at their cap still leave room
/// for as many shape-log files as connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdBudget {
    /// The soft `RLIMIT_NOFILE` in force.
    pub fd_limit: u64,
    /// `ELECTRIC_DB_POOL_SIZE`.
    pub db_pool_size: u32,
    /// The metrics port's connection cap ([`crate::metrics::MAX_CONNECTIONS`]), 0 without
    /// `ELECTRIC_PROMETHEUS_PORT`.
    pub metrics_connections: usize,
}

impl FdBudget {
    /// Descriptors reserved before API connections: the fixed ones, Postgres's, the metrics
    /// port's connections, and the shape-log files the store keeps open
    /// ([`OpenFileBudget::for_fd_limit`], which the store derives from the same limit).
    pub fn reserved(&self) -> u64 {
        let shape_logs = OpenFileBudget::for_fd_limit(Some(self.fd_limit)).files();
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        FIXED_FDS
            + u64::from(self.db_pool_size)
            + POSTGRES_EXTRA_FDS
            + count(self.metrics_connections)
            + count(shape_logs)
    }

    /// The connection cap when `AMPERE_MAX_CONNECTIONS` is unset: half of what the reserve
    /// leaves (the other half absorbs files opened for a moment beyond the fixed reserve:
    /// snapshot chunks of many concurrent snapshots, `shape.json` writes), between
    /// [`MAX_CONNECTIONS_FLOOR`] and [`MAX_CONNECTIONS_CEILING`].
    pub fn default_max_connections(&self) -> usize {
        let shared = self.fd_limit.saturating_sub(self.reserved()) / 2;
        usize::try_from(shared)
            .unwrap_or(usize::MAX)
            .clamp(MAX_CONNECTIONS_FLOOR, MAX_CONNECTIONS_CEILING)
    }

    /// Whether `max_connections` open connections would leave storage less than the reserve
    /// and its even share ([`FdBudget::default_max_connections`] connections' worth): worth
    /// a startup warning, since connections at the cap could then exhaust descriptors.
    pub fn is_low_for(&self, max_connections: usize) -> bool {
        let connections = u64::try_from(max_connections).unwrap_or(u64::MAX);
        let shape_logs = u64::try_from(self.default_max_connections()).unwrap_or(u64::MAX);
        self.reserved()
            .saturating_add(connections)
            .saturating_add(shape_logs)
            > self.fd_limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_1024_fd_limit_gives_connections_half_of_what_storage_and_postgres_leave() {
        let budget = FdBudget {
            fd_limit: 1024,
            db_pool_size: 20,
            metrics_connections: 0,
        };
        assert_eq!(budget.reserved(), 64 + 20 + 4 + 256);
        assert_eq!(budget.default_max_connections(), (1024 - 344) / 2);
        assert!(!budget.is_low_for(budget.default_max_connections()));
        assert!(budget.is_low_for(1000));
    }

    #[test]
    fn the_metrics_port_s_connections_are_reserved_before_api_connections() {
        let without = FdBudget {
            fd_limit: 1024,
            db_pool_size: 20,
            metrics_connections: 0,
        };
        let with = FdBudget {
            metrics_connections: crate::metrics::MAX_CONNECTIONS,
            ..without
        };
        assert_eq!(with.reserved(), without.reserved() + 16);
        assert_eq!(
            with.default_max_connections(),
            (1024 - 344 - 16) / 2,
            "the API gets half of what the metrics port leaves"
        );
    }

    #[test]
    fn the_default_cap_stays_between_the_floor_and_the_ceiling() {
        let tiny = FdBudget {
            fd_limit: 50,
            db_pool_size: 20,
            metrics_connections: 0,
        };
        assert_eq!(tiny.default_max_connections(), MAX_CONNECTIONS_FLOOR);
        let huge = FdBudget {
            fd_limit: 1 << 20,
            db_pool_size: 20,
            metrics_connections: crate::metrics::MAX_CONNECTIONS,
        };
        assert_eq!(huge.default_max_connections(), MAX_CONNECTIONS_CEILING);
        assert!(!huge.is_low_for(MAX_CONNECTIONS_CEILING));
    }

    #[test]
    fn a_cap_above_what_the_limit_leaves_is_low() {
        let budget = FdBudget {
            fd_limit: 4096,
            db_pool_size: 20,
            metrics_connections: 0,
        };
        assert!(!budget.is_low_for(1000));
        assert!(budget.is_low_for(3000));
    }

    #[test]
    fn raising_the_soft_limit_reaches_the_hard_limit() {
        let limit = raise_to_hard_limit().expect("getrlimit and setrlimit");
        assert!(limit.soft >= limit.initial_soft);
        if !cfg!(target_os = "macos") {
            assert_eq!(limit.soft, limit.hard);
        }
    }
}
