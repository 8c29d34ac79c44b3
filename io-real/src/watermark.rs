//! A value published to concurrent readers, and the wake-up of those waiting for it to change:
//! the synchronization under a shape log's durable state (`store`) and the server's read model
//! (readiness and the durable LSN).
//!
//! **Guarantees.**
//!
//! - *No torn read* (`watermark-whole`): the value, its version and the waiter list sit under
//!   one mutex. [`Watermark::publish`] changes the value and bumps the version in one critical
//!   section, so a reader ([`Watermark::lock`]) sees every field from the same publish, and
//!   never an older value after a newer one (`watermark-monotonic`).
//! - *No lost wake-up* (`wake-after-subscribe`): [`Watermark::subscribe`] records the version
//!   under that mutex. A reader that subscribes, reads, and then awaits
//!   [`Watermark::changed`] cannot sleep through a publish its read missed: that publish took
//!   the mutex after the read did, hence after the subscription, so it bumped the version past
//!   the one recorded; `changed` compares versions and registers its waker under the same
//!   mutex, and a publish wakes every registered waker after bumping.
//! - *Retired stays retired* (`wake-on-retire`): [`Watermark::retire`] marks a value that was
//!   replaced or removed (a shape recovered anew, removed, or a follower's view gone stale).
//!   It wakes every waiter, and `changed` resolves at once for a subscription taken after it,
//!   so a waiter that found the old value just before its replacement never waits on it.
//!
//! **Asks of callers:** subscribe *before* reading; change what readers may see only through
//! `publish` (`lock` is for reads and for changes readers do not observe, such as buffering);
//! never hold a [`WatermarkGuard`] across an `.await` or a blocking call.
//!
//! The same code runs in production (`std::sync`) and under loom (the `loom` feature,
//! `scripts/loom.sh`), whose tests at the bottom model the publish and wake-up paths.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::PoisonError;
use std::task::{Context, Poll, Waker};

#[cfg(feature = "loom")]
use loom::sync::{Mutex, MutexGuard};
#[cfg(not(feature = "loom"))]
use std::sync::{Mutex, MutexGuard};

/// A published value with a version, and the wakers of futures waiting for the next one.
pub struct Watermark<T> {
    slot: Mutex<Slot<T>>,
}

struct Slot<T> {
    value: T,
    /// Bumped by every publish and by retirement; compared by [`Changed`].
    version: u64,
    is_retired: bool,
    /// Wakers of pending [`Changed`] futures, by waiter id; emptied by each publish.
    waiters: BTreeMap<u64, Waker>,
    waiter_id_next: u64,
}

/// The version a reader saw when it subscribed; [`Watermark::changed`] resolves past it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Subscription {
    version: u64,
}

/// Read (or change, without waking anyone) the current value. Derefs to the value.
pub struct WatermarkGuard<'a, T> {
    slot: MutexGuard<'a, Slot<T>>,
}

/// Resolves once the watermark was published past a [`Subscription`], or retired.
/// Deregisters its waker when dropped, so abandoned waits (timed-out long-polls) leave
/// nothing behind.
#[must_use = "futures do nothing unless polled"]
pub struct Changed<'a, T> {
    watermark: &'a Watermark<T>,
    seen: u64,
    /// Our entry in the waiter list, once registered.
    waiter_id: Option<u64>,
}

impl<T> Watermark<T> {
    /// A watermark at `value`, version 0.
    pub fn new(value: T) -> Self {
        Self {
            slot: Mutex::new(Slot {
                value,
                version: 0,
                is_retired: false,
                waiters: BTreeMap::new(),
                waiter_id_next: 0,
            }),
        }
    }

    /// The current value, under the lock until the guard drops. Changes made through the
    /// guard wake nobody: use [`Watermark::publish`] for what readers wait for.
    pub fn lock(&self) -> WatermarkGuard<'_, T> {
        WatermarkGuard { slot: self.slot() }
    }

    /// Changes the value, bumps the version and wakes every waiter (after releasing the lock).
    pub fn publish<R>(&self, change: impl FnOnce(&mut T) -> R) -> R {
        let mut slot = self.slot();
        let result = change(&mut slot.value);
        let waiters = slot.bump();
        drop(slot);
        wake_all(waiters);
        result
    }

    /// Like [`Watermark::publish`], but only bumps and wakes if `change` says it changed
    /// something. Whether it did.
    pub fn publish_if(&self, change: impl FnOnce(&mut T) -> bool) -> bool {
        let mut slot = self.slot();
        if !change(&mut slot.value) {
            return false;
        }
        let waiters = slot.bump();
        drop(slot);
        wake_all(waiters);
        true
    }

    /// Marks the value replaced or removed: wakes every waiter, and every later `changed`
    /// resolves at once (the caller looks the value up afresh). Idempotent.
    pub fn retire(&self) {
        let mut slot = self.slot();
        slot.is_retired = true;
        let waiters = slot.bump();
        drop(slot);
        wake_all(waiters);
    }

    /// Whether [`Watermark::retire`] was called.
    pub fn is_retired(&self) -> bool {
        self.slot().is_retired
    }

    /// Records the current version. Take it *before* reading the value; then
    /// [`Watermark::changed`] cannot miss a publish the read did not see.
    pub fn subscribe(&self) -> Subscription {
        Subscription {
            version: self.slot().version,
        }
    }

    /// Resolves once the version moved past `subscription` (at once if it already has, or
    /// if the watermark is retired).
    pub fn changed(&self, subscription: Subscription) -> Changed<'_, T> {
        Changed {
            watermark: self,
            seen: subscription.version,
            waiter_id: None,
        }
    }

    fn slot(&self) -> MutexGuard<'_, Slot<T>> {
        // Poisoned: a publish panicked (an assertion, i.e. our bug, already reported). Readers
        // keep serving what is there rather than turn one panic into one per reader.
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T> Slot<T> {
    /// A new version: takes the waiters to wake once the lock is released.
    fn bump(&mut self) -> BTreeMap<u64, Waker> {
        self.version += 1;
        std::mem::take(&mut self.waiters)
    }
}

fn wake_all(waiters: BTreeMap<u64, Waker>) {
    for waker in waiters.into_values() {
        waker.wake();
    }
}

impl<T> fmt::Debug for Watermark<T> {
    // Does not lock: `Debug` may run while the caller holds the guard.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watermark").finish_non_exhaustive()
    }
}

impl<T> Deref for WatermarkGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.slot.value
    }
}

impl<T> DerefMut for WatermarkGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.slot.value
    }
}

impl<T> Future for Changed<'_, T> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let mut slot = this.watermark.slot();
        // Checked and registered under the lock a publish bumps under: no publish can fall
        // between the check and the registration (wake-after-subscribe).
        if slot.version != this.seen || slot.is_retired {
            if let Some(id) = this.waiter_id.take() {
                slot.waiters.remove(&id);
            }
            return Poll::Ready(());
        }
        let id = match this.waiter_id {
            Some(id) => id,
            None => {
                let id = slot.waiter_id_next;
                slot.waiter_id_next += 1;
                this.waiter_id = Some(id);
                id
            }
        };
        slot.waiters.insert(id, cx.waker().clone());
        Poll::Pending
    }
}

impl<T> Drop for Changed<'_, T> {
    fn drop(&mut self) {
        if let Some(id) = self.waiter_id.take() {
            self.watermark.slot().waiters.remove(&id);
        }
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    use super::*;

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting_waker() -> (Arc<CountingWaker>, Waker) {
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        (Arc::clone(&counter), Waker::from(Arc::clone(&counter)))
    }

    fn poll<T>(changed: &mut Changed<'_, T>, waker: &Waker) -> Poll<()> {
        Pin::new(changed).poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn changed_resolves_on_the_first_publish_after_subscribing() {
        let watermark = Watermark::new(1_u64);
        let subscription = watermark.subscribe();
        let (counter, waker) = counting_waker();
        let mut changed = watermark.changed(subscription);
        assert_eq!(poll(&mut changed, &waker), Poll::Pending);
        watermark.publish(|v| *v = 2);
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll(&mut changed, &waker), Poll::Ready(()));
        assert_eq!(*watermark.lock(), 2);
    }

    #[test]
    fn a_publish_between_subscribing_and_polling_is_not_missed() {
        let watermark = Watermark::new(1_u64);
        let subscription = watermark.subscribe();
        watermark.publish(|v| *v = 2);
        let (_, waker) = counting_waker();
        assert_eq!(
            poll(&mut watermark.changed(subscription), &waker),
            Poll::Ready(())
        );
    }

    #[test]
    fn changes_through_the_guard_or_an_unchanged_publish_if_wake_nobody() {
        let watermark = Watermark::new(1_u64);
        let subscription = watermark.subscribe();
        let (counter, waker) = counting_waker();
        let mut changed = watermark.changed(subscription);
        assert_eq!(poll(&mut changed, &waker), Poll::Pending);
        *watermark.lock() = 5;
        assert!(!watermark.publish_if(|_| false));
        assert_eq!(counter.0.load(Ordering::SeqCst), 0);
        assert_eq!(poll(&mut changed, &waker), Poll::Pending);
        assert!(watermark.publish_if(|v| {
            *v = 6;
            true
        }));
        assert_eq!(poll(&mut changed, &waker), Poll::Ready(()));
    }

    #[test]
    fn a_retired_watermark_wakes_waiters_and_later_subscribers_at_once() {
        let watermark = Watermark::new(());
        let (counter, waker) = counting_waker();
        let mut changed = watermark.changed(watermark.subscribe());
        assert_eq!(poll(&mut changed, &waker), Poll::Pending);
        watermark.retire();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll(&mut changed, &waker), Poll::Ready(()));
        let late = watermark.subscribe();
        assert!(watermark.is_retired());
        assert_eq!(poll(&mut watermark.changed(late), &waker), Poll::Ready(()));
    }

    #[test]
    fn dropped_waits_leave_no_waker_behind_and_repolls_keep_one() {
        let watermark = Watermark::new(());
        let (_, waker) = counting_waker();
        let (second, other_waker) = counting_waker();
        let mut changed = watermark.changed(watermark.subscribe());
        assert_eq!(poll(&mut changed, &waker), Poll::Pending);
        assert_eq!(poll(&mut changed, &other_waker), Poll::Pending);
        assert_eq!(watermark.slot().waiters.len(), 1);
        let mut abandoned = watermark.changed(watermark.subscribe());
        assert_eq!(poll(&mut abandoned, &waker), Poll::Pending);
        drop(abandoned);
        assert_eq!(watermark.slot().waiters.len(), 1);
        watermark.publish(|()| ());
        assert_eq!(
            second.0.load(Ordering::SeqCst),
            1,
            "the latest waker is woken"
        );
        drop(changed);
        assert!(watermark.slot().waiters.is_empty());
    }
}

/// Loom models (`scripts/loom.sh`): every interleaving of a writer publishing successive
/// watermarks against readers and waiters, on the production code above. A lost wake-up shows
/// up as loom's `deadlock` (every thread parked); a torn or stale read as a failed assert.
#[cfg(all(test, feature = "loom"))]
mod loom_tests {
    use loom::future::block_on;
    use loom::sync::{Arc, RwLock};
    use loom::thread;

    use super::*;

    /// Preemptions per execution in the bounded models (`LOOM_MAX_PREEMPTIONS` overrides).
    const PREEMPTIONS_MAX: usize = 3;

    fn bounded() -> loom::model::Builder {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound.get_or_insert(PREEMPTIONS_MAX);
        builder
    }

    /// Two fields a publish writes one after the other: a torn read sees them differ.
    #[derive(Clone, Copy, Default, Debug)]
    struct Pair {
        tx: u64,
        op: u64,
    }

    fn publish_pair(watermark: &Watermark<Pair>, n: u64) {
        watermark.publish(|pair| {
            pair.tx = n;
            pair.op = n;
        });
    }

    fn read_whole(watermark: &Watermark<Pair>) -> u64 {
        let pair = *watermark.lock();
        assert_eq!(pair.tx, pair.op, "watermark-whole: {pair:?}");
        pair.tx
    }

    #[test]
    fn readers_see_only_whole_publishes_never_going_back() {
        loom::model(|| {
            let watermark = Arc::new(Watermark::new(Pair::default()));
            let readers: Vec<_> = (0..2)
                .map(|_| {
                    let watermark = Arc::clone(&watermark);
                    thread::spawn(move || {
                        let first = read_whole(&watermark);
                        let second = read_whole(&watermark);
                        assert!(
                            first <= second,
                            "watermark-monotonic: {first} then {second}"
                        );
                    })
                })
                .collect();
            for n in 1..=2 {
                publish_pair(&watermark, n);
            }
            for reader in readers {
                reader.join().expect("reader");
            }
            assert_eq!(read_whole(&watermark), 2);
        });
    }

    /// The long-poll protocol (`FileStore::changed`, `wait_for` in the HTTP layer): subscribe,
    /// read, and wait only if the read found nothing new; repeat until the last value.
    fn wait_until(watermark: &Watermark<Pair>, last: u64) {
        let mut seen = 0;
        loop {
            let subscription = watermark.subscribe();
            let now = read_whole(watermark);
            assert!(seen <= now, "watermark-monotonic: {seen} then {now}");
            seen = now;
            if seen == last {
                return;
            }
            block_on(watermark.changed(subscription));
        }
    }

    #[test]
    fn a_waiter_that_subscribed_before_reading_wakes_for_every_publish_it_missed() {
        // Two waiters looping against two publishes: exhaustively, minutes. Bounded to
        // `PREEMPTIONS_MAX` preemptions per execution (loom's advice: 2-3 find most bugs; a
        // lost wake-up here needs one, between a waiter's read and its wait).
        bounded().check(|| {
            let watermark = Arc::new(Watermark::new(Pair::default()));
            let waiters: Vec<_> = (0..2)
                .map(|_| {
                    let watermark = Arc::clone(&watermark);
                    thread::spawn(move || wait_until(&watermark, 2))
                })
                .collect();
            for n in 1..=2 {
                publish_pair(&watermark, n);
            }
            for waiter in waiters {
                waiter.join().expect("waiter");
            }
        });
    }

    /// The registry of shapes (`store::Inner::register`): one handle and its current
    /// watermark. A waiter looks it up, subscribes, and reads whatever is registered then (as
    /// `FileStore::changed` and `FileStore::read` do); meanwhile a recovery registers a fresh
    /// watermark, lets the old one go with `let_go`, and publishes on the fresh one. Once that
    /// is done, a waiter whose read missed the publish must find its wait already resolved:
    /// nothing will ever publish on the old watermark again, so a pending wait is stranded.
    /// (Checked by polling once rather than blocking: loom reports a stranded `block_on` as a
    /// deadlock and then aborts the test process while unwinding.)
    fn replace_while_a_waiter_looks_up(let_go: fn(&Watermark<Pair>)) {
        loom::model(move || {
            let current = Arc::new(RwLock::new(Arc::new(Watermark::new(Pair::default()))));
            let waiter = {
                let current = Arc::clone(&current);
                thread::spawn(move || {
                    let found = Arc::clone(&*current.read().expect("lock"));
                    let subscription = found.subscribe();
                    let now = Arc::clone(&*current.read().expect("lock"));
                    (found, subscription, read_whole(&now))
                })
            };
            let fresh = Arc::new(Watermark::new(Pair::default()));
            let old = std::mem::replace(&mut *current.write().expect("lock"), Arc::clone(&fresh));
            let_go(&old);
            publish_pair(&fresh, 1);
            let (found, subscription, read) = waiter.join().expect("waiter");
            if read == 1 {
                return; // Nothing to wait for.
            }
            let mut changed = found.changed(subscription);
            let poll = Pin::new(&mut changed).poll(&mut Context::from_waker(Waker::noop()));
            assert!(poll.is_ready(), "wake-on-retire: a waiter is stranded");
        });
    }

    #[test]
    fn a_waiter_on_a_watermark_replaced_meanwhile_still_wakes() {
        replace_while_a_waiter_looks_up(Watermark::retire);
    }

    /// The model has teeth: letting the replaced watermark go with a bare publish (what the
    /// store did before `retire`) strands a waiter that subscribed to it after that publish.
    #[test]
    #[should_panic(expected = "wake-on-retire")]
    fn a_bare_publish_on_a_replaced_watermark_can_strand_a_waiter() {
        replace_while_a_waiter_looks_up(|old| old.publish(|_| ()));
    }
}
