//! A bounded pool of SQL connections (`ELECTRIC_DB_POOL_SIZE`): at most that many open at
//! once, idle ones reused, a caller waiting for a free one rather than opening more.
//!
//! Owns: the bound and the idle list. A checkout holds one of [`PoolSize`] permits for as long
//! as it holds a connection; a new connection is opened only when no idle one is left, so open
//! connections never outnumber permits. A connection goes back to the idle list only through
//! [`Pooled::release`], which its user calls when the session is clean (no transaction open,
//! no session-level `SET`); dropping a [`Pooled`] closes the connection instead, which is what
//! happens after any error or cancellation. Idle connections whose socket closed (see
//! `Reusable::is_alive`) are dropped at the next checkout.
//!
//! Never: connects (the caller opens a connection when a checkout comes back empty), pings,
//! retries, or holds session state: advisory locks and anything else that must outlive a
//! transaction belong on a connection outside the pool (the replication connection).
//!
//! Why our own and not deadpool-postgres: ampere's connect already does what a pool crate would
//! have to be taught (TLS with libpq's `allow`/`prefer` fallbacks, `connect_timeout` over the
//! whole connect, typed errors). A semaphore and a `Vec` are the whole mechanism.

use std::num::NonZeroU32;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How many SQL connections ampere may hold open at once (`ELECTRIC_DB_POOL_SIZE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSize(NonZeroU32);

impl PoolSize {
    /// Electric's default.
    pub const DEFAULT: Self = Self(NonZeroU32::new(20).expect("20 is not zero"));

    /// `None` for zero.
    pub fn new(size: u32) -> Option<Self> {
        NonZeroU32::new(size).map(Self)
    }

    /// The bound.
    pub fn get(self) -> u32 {
        self.0.get()
    }

    /// The bound as semaphore permits (at most [`Semaphore::MAX_PERMITS`]).
    pub fn permits(self) -> usize {
        usize::try_from(self.get())
            .unwrap_or(Semaphore::MAX_PERMITS)
            .min(Semaphore::MAX_PERMITS)
    }
}

impl Default for PoolSize {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What the pool asks of the connections it keeps.
pub(crate) trait Reusable {
    /// The socket is still open (an idle connection the server closed is dropped, not handed
    /// out).
    fn is_alive(&self) -> bool;
}

/// The bound and the idle connections.
pub(crate) struct Pool<C> {
    permits: Arc<Semaphore>,
    idle: Arc<Mutex<Vec<C>>>,
}

impl<C: Reusable> Pool<C> {
    pub(crate) fn new(size: PoolSize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(size.permits())),
            idle: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Waits for a permit, then takes the most recently used live idle connection, else none
    /// (the caller opens one and [`Checkout::hold`]s it). Cancel-safe: nothing is taken until
    /// the permit is.
    pub(crate) async fn checkout(&self) -> (Checkout<C>, Option<C>) {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("invariant: the pool never closes its semaphore");
        let conn = {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            idle.retain(Reusable::is_alive);
            idle.pop()
        };
        let checkout = Checkout {
            permit,
            idle: Arc::clone(&self.idle),
        };
        (checkout, conn)
    }

    /// Idle connections now.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// A permit to hold one connection of the pool.
pub(crate) struct Checkout<C> {
    permit: OwnedSemaphorePermit,
    idle: Arc<Mutex<Vec<C>>>,
}

impl<C> Checkout<C> {
    /// `conn` under this permit.
    pub(crate) fn hold(self, conn: C) -> Pooled<C> {
        Pooled {
            conn: Some(conn),
            idle: self.idle,
            _permit: self.permit,
        }
    }
}

/// A connection checked out of the pool: release it when its session is clean, drop it to
/// close it. Either way its permit frees.
pub struct Pooled<C> {
    /// `Some` until released or dropped.
    conn: Option<C>,
    idle: Arc<Mutex<Vec<C>>>,
    /// Freed after `conn` is back in `idle` or closed, so a waiter woken by it finds the
    /// connection, or room for a new one: fields drop after [`Drop::drop`]'s body, which
    /// takes `conn` first.
    _permit: OwnedSemaphorePermit,
}

impl<C> Pooled<C> {
    /// Back to the idle list, for the next checkout. Call only with no transaction open and
    /// no session setting changed.
    pub fn release(mut self) {
        if let Some(conn) = self.conn.take() {
            self.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(conn);
        }
    }
}

const HELD: &str = "invariant: a Pooled holds its connection until consumed";

impl<C> Deref for Pooled<C> {
    type Target = C;

    fn deref(&self) -> &C {
        self.conn.as_ref().expect(HELD)
    }
}

impl<C> DerefMut for Pooled<C> {
    fn deref_mut(&mut self) -> &mut C {
        self.conn.as_mut().expect(HELD)
    }
}

impl<C> Drop for Pooled<C> {
    fn drop(&mut self) {
        // Closed before the permit frees (the `_permit` field drops after this body), so the
        // next checkout's new connection does not overlap it on our side.
        drop(self.conn.take());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    /// A fake connection: an id and whether its socket is open.
    #[derive(Debug)]
    struct Fake {
        id: u32,
        alive: Arc<AtomicBool>,
    }

    impl Fake {
        fn new(id: u32) -> Self {
            Self {
                id,
                alive: Arc::new(AtomicBool::new(true)),
            }
        }
    }

    impl Reusable for Fake {
        fn is_alive(&self) -> bool {
            self.alive.load(Ordering::Relaxed)
        }
    }

    #[tokio::test]
    async fn a_released_connection_is_reused_and_a_dropped_one_is_not() {
        let pool = Pool::new(PoolSize::new(2).unwrap());
        let (checkout, idle) = pool.checkout().await;
        assert!(idle.is_none(), "an empty pool has nothing idle");
        checkout.hold(Fake::new(1)).release();
        assert_eq!(pool.idle_count(), 1);
        let (checkout, idle) = pool.checkout().await;
        let conn = checkout.hold(idle.expect("the released connection"));
        assert_eq!(conn.id, 1);
        drop(conn);
        assert_eq!(pool.idle_count(), 0, "dropped means closed, not returned");
    }

    #[tokio::test]
    async fn a_checkout_beyond_the_size_waits_for_a_release() {
        let pool = Arc::new(Pool::new(PoolSize::new(1).unwrap()));
        let (checkout, _) = pool.checkout().await;
        let held = checkout.hold(Fake::new(1));
        let waiter = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move {
                let (checkout, idle) = pool.checkout().await;
                checkout.hold(idle.expect("the released connection")).id
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "no second permit while one is held");
        held.release();
        assert_eq!(waiter.await.unwrap(), 1);
    }

    #[tokio::test]
    async fn dead_idle_connections_are_dropped() {
        let pool = Pool::new(PoolSize::new(3).unwrap());
        let mut held = Vec::new();
        for id in 1..=3 {
            let (checkout, _) = pool.checkout().await;
            held.push(checkout.hold(Fake::new(id)));
        }
        held[1].alive.store(false, Ordering::Relaxed);
        for conn in held {
            conn.release();
        }
        let (checkout, idle) = pool.checkout().await;
        let first = checkout.hold(idle.unwrap());
        assert_eq!(first.id, 3, "the most recently released");
        assert_eq!(pool.idle_count(), 1, "the dead one is gone");
    }
}
