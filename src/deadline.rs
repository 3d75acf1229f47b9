//! Wait deadlines, kept by one thread per process instead of a timer per waiting caller.
//!
//! A waitlist registers the earliest deadline among its waiters, and registers again only when
//! a waiter comes with an earlier one (a shorter `get_timeout`). With one wait timeout for the
//! whole pool the oldest waiter's deadline is the earliest, so a busy pool registers about once
//! per wait timeout, not once per wait. When a registration falls due, the thread asks its
//! owner to time out every waiter that is due and to name the next deadline.
//!
//! A thread, not a runtime timer: a timer belongs to whichever runtime polled it first, and a
//! caller waiting on another executor, or on a plain `block_on` thread, must get its timeout
//! even when that runtime is no longer driven. The thread needs no runtime, never polls a
//! future, and sleeps on a condition variable until the earliest deadline of every pool in the
//! process. If it cannot be started, [`register`] says so and callers arm their own timers.
//!
//! A registration holds its owner weakly, and an owner that goes takes its registrations with
//! it ([`forget`]): a pool dropped while a waiter's deadline is pending leaves nothing behind
//! (a `Weak` alone would keep the pool's allocation until the deadline fell due).

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// What owns deadlines: a waitlist, seen through the state that holds it.
pub(crate) trait Expire: Send + Sync {
    /// The registration for `at` fell due at `now`: time out every waiter due by `now`.
    /// Returns a deadline to register next, if one is needed.
    fn expire(&self, at: Instant, now: Instant) -> Option<Instant>;
}

struct Due {
    at: Instant,
    owner: Weak<dyn Expire>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    /// Reversed: the heap's greatest is the earliest deadline.
    fn cmp(&self, other: &Self) -> Ordering {
        other.at.cmp(&self.at)
    }
}

struct Service {
    heap: Mutex<BinaryHeap<Due>>,
    changed: Condvar,
}

/// The service, once something started it.
static SERVICE: OnceLock<Option<&'static Service>> = OnceLock::new();

fn service() -> Option<&'static Service> {
    *SERVICE.get_or_init(|| {
        let service: &'static Service = Box::leak(Box::new(Service {
            heap: Mutex::new(BinaryHeap::new()),
            changed: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("gracepool-deadlines".into())
            .spawn(move || service.run())
            .ok()
            .map(|_| service)
    })
}

/// Whether deadlines are kept here (false: the thread could not be started).
pub(crate) fn available() -> bool {
    service().is_some()
}

/// Asks for `owner.expire(at, now)` once `at` has passed. False when the thread could not be
/// started: the caller must keep its deadline some other way.
pub(crate) fn register(at: Instant, owner: Weak<dyn Expire>) -> bool {
    let Some(service) = service() else {
        return false;
    };
    let mut heap = service.heap.lock().unwrap_or_else(|p| p.into_inner());
    // The thread wakes by the earliest registration it has seen, which is no later than the
    // first one here now: a later `at` needs no notification (a syscall).
    let earliest = heap.peek().is_none_or(|first| at < first.at);
    // Registrations whose owner is gone (an actor's tick after its pool closed) would pile up
    // with pools made and dropped in quick succession; the oldest are at the top.
    while heap
        .peek()
        .is_some_and(|first| first.owner.strong_count() == 0)
    {
        heap.pop();
    }
    heap.push(Due { at, owner });
    drop(heap);
    if earliest {
        service.changed.notify_one();
    }
    true
}

/// Drops every registration of `owner` (its address): called as the owner goes, so that no
/// registration keeps its allocation until it falls due.
pub(crate) fn forget(owner: *const ()) {
    let Some(service) = SERVICE.get().copied().flatten() else {
        // Never started: nothing was registered.
        return;
    };
    let mut heap = service.heap.lock().unwrap_or_else(|p| p.into_inner());
    // Rare (once per pool that had waiters with a deadline), and the heap holds about one
    // registration per pool.
    heap.retain(|due| !std::ptr::addr_eq(due.owner.as_ptr(), owner));
}

impl Service {
    fn run(&self) {
        let mut heap = self.heap.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let now = Instant::now();
            let wait = match heap.peek() {
                None => None,
                Some(first) if first.at <= now => {
                    let due = heap.pop().expect("peeked just above");
                    drop(heap);
                    self.fire(due, now);
                    heap = self.heap.lock().unwrap_or_else(|p| p.into_inner());
                    continue;
                }
                Some(first) => Some(first.at - now),
            };
            heap = match wait {
                None => self.changed.wait(heap).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    self.changed
                        .wait_timeout(heap, d)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }

    /// Runs one due registration, outside the lock. An owner that is gone is skipped.
    fn fire(&self, due: Due, now: Instant) {
        let Some(owner) = due.owner.upgrade() else {
            return;
        };
        // The owner's expire only settles waiters and wakes them; a panic there must not end
        // the thread every pool in the process relies on.
        let next =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| owner.expire(due.at, now)));
        if let Ok(Some(next)) = next {
            register(next, due.owner);
        }
        // `owner` may be the last reference to a pool: its Drop runs here, which only closes
        // queued connections synchronously.
        drop(owner);
    }
}

/// A wake-up for one task at one time, kept by the thread: the actor's maintenance tick. A
/// runtime timer would do, but a runtime with a timer pending pays for it on every turn of
/// its scheduler (it reads the clock and its timer wheel each time it parks: about 300
/// instructions in a `yield_now` loop on tokio), and every task of the application pays it,
/// not only the pool's. The thread pays one registration per tick.
pub(crate) struct Bell {
    /// Rung, and the waker of the task that last polled it.
    state: Mutex<(bool, Option<Waker>)>,
}

impl Bell {
    /// A bell that rings at `at`, or `None` when the thread keeps no deadlines (it could
    /// not be started; or under the model checks, where no time passes): the caller then
    /// arms a timer of its own.
    pub(crate) fn at(at: Instant) -> Option<Arc<Bell>> {
        if cfg!(loom) {
            return None;
        }
        let bell = Arc::new(Bell {
            state: Mutex::new((false, None)),
        });
        let owner: Weak<dyn Expire> = Arc::downgrade(&bell) as Weak<dyn Expire>;
        register(at, owner).then_some(bell)
    }

    /// Ready once it has rung.
    pub(crate) fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.0 {
            return Poll::Ready(());
        }
        match &mut state.1 {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            waker => *waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Expire for Bell {
    fn expire(&self, _at: Instant, _now: Instant) -> Option<Instant> {
        let waker = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.0 = true;
            state.1.take()
        };
        // Woken outside the lock: waking may run the task's scheduler.
        if let Some(waker) = waker {
            waker.wake();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Weak};
    use std::time::{Duration, Instant};

    use super::{forget, register, Expire, SERVICE};
    use crate::runtime::{BoxFuture, Runtime, SpawnError};

    /// Registrations the deadline thread holds for the owner at `owner`.
    fn pending(owner: *const ()) -> usize {
        let Some(service) = SERVICE.get().copied().flatten() else {
            return 0;
        };
        let heap = service.heap.lock().unwrap();
        heap.iter()
            .filter(|due| std::ptr::addr_eq(due.owner.as_ptr(), owner))
            .count()
    }

    struct Owner;

    impl Expire for Owner {
        fn expire(&self, _: Instant, _: Instant) -> Option<Instant> {
            None
        }
    }

    #[test]
    fn forgetting_an_owner_drops_its_registrations() {
        let owner = Arc::new(Owner);
        let far = Instant::now() + Duration::from_secs(600);
        assert!(register(far, Arc::downgrade(&owner) as Weak<dyn Expire>));
        assert!(register(far, Arc::downgrade(&owner) as Weak<dyn Expire>));
        assert_eq!(Arc::weak_count(&owner), 2);
        forget(Arc::as_ptr(&owner).cast());
        assert_eq!(Arc::weak_count(&owner), 0);
    }

    struct Exec(Arc<async_executor::Executor<'static>>);

    impl Runtime for Exec {
        fn spawn(&self, task: BoxFuture) -> Result<(), SpawnError> {
            self.0.spawn(task).detach();
            Ok(())
        }

        fn sleep(&self, duration: Duration) -> BoxFuture {
            Box::pin(async move {
                async_io::Timer::after(duration).await;
            })
        }
    }

    struct Numbers;

    impl crate::manager::Manager for Numbers {
        type Connection = u64;
        type Error = std::io::Error;

        async fn create(&self) -> Result<u64, std::io::Error> {
            Ok(7)
        }
    }

    /// A pool dropped while a waiter's deadline is registered: the registration goes with it,
    /// not when the wait timeout (ten minutes) would have passed.
    #[test]
    fn a_dropped_pool_leaves_no_registration_behind() {
        let executor = Arc::new(async_executor::Executor::new());
        let pool = crate::pool::Pool::builder(Numbers)
            .max_size(1)
            .runtime(Exec(executor.clone()))
            .build()
            .unwrap();
        let address: *const () = Arc::as_ptr(&pool.shared).cast();
        futures_lite::future::block_on(executor.run(async {
            let held = pool.get().await.unwrap();
            let waiter = {
                let pool = pool.clone();
                executor.spawn(async move {
                    let _ = pool.get_timeout(Duration::from_secs(600)).await;
                })
            };
            while pool.status().waiters == 0 {
                async_io::Timer::after(Duration::from_millis(5)).await;
            }
            assert_eq!(pending(address), 1);
            let _ = waiter.cancel().await;
            drop(held);
            pool.close().await;
        }));
        drop(pool);
        drop(executor);
        assert_eq!(pending(address), 0, "the dropped pool is still registered");
    }
}
