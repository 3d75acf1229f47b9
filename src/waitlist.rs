//! Idle connections and the callers waiting for one, under one lock: served first come,
//! first served.
//!
//! A connection that comes back (or is newly created) while callers wait is handed straight to
//! the one that has waited longest; a caller never takes an idle connection while others queue
//! ahead of it. That is what makes waiting fair: a task that returns a connection and asks again
//! at once joins the back of the queue instead of taking its own connection back. Because both
//! queues are under the same lock, at most one of them is ever non-empty: a connection goes
//! idle only when nobody waits, and a caller queues only when nothing is idle.
//!
//! Every operation is one short critical section: taking an idle connection, giving one back
//! (to a waiter or to the idle queue), joining. A waiter's place has a lock of its own, taken
//! under the list's by whoever settles it, and alone by the waiter to take its outcome: a
//! waiter woken with a connection does not queue again on the lock every caller and every
//! return contends on. A place is made as its waiter joins (before the list's lock is taken),
//! or taken from the spare places of waiters already served ([`Waitlist::recycle`]). Wakers
//! are woken after the locks are released. Once closed, nothing more goes in: what is idle
//! stays for whoever drains it, and a connection given back is handed back to its giver, who
//! closes it.
//!
//! Deadlines: each waiter may carry one, and the list remembers the earliest deadline it has
//! asked to be told about (`armed`). Joining reports a deadline to register only when it is
//! earlier than that; every waiter's deadline is then at or after some registration, so
//! [`Waitlist::expire`] on each one that falls due times every waiter out on time.
//!
//! Longer than the other files (about 700 lines) because it is one concept: every path in it
//! keeps the one invariant above (at most one of the two queues is non-empty, under one lock),
//! and split in two, each half would hold only part of the argument for it.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::error::CreateFailure;
use crate::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Acquire, Ordering::Relaxed};
use crate::sync::atomic::{Ordering::Release, Ordering::SeqCst};
use crate::sync::{Mutex, MutexGuard};

/// What a waiter ends up with.
pub(crate) enum Outcome<T, E> {
    /// A connection; `true` when it comes straight from `create` (it needs no health check).
    Got(T, bool),
    Failed(CreateFailure<E>),
    Closed,
    /// Its deadline passed while it waited.
    TimedOut,
    /// The runtime the pool's actor ran on went away: the pool has no home until a caller
    /// gives it one (see [`Waitlist::evict`]).
    Moved,
}

enum Place<T, E> {
    Waiting(Waker),
    Done(Outcome<T, E>),
    /// Its outcome was taken, or its waiter gave up.
    Spent,
}

/// A waiter's place, shared by the waiter (its ticket) and the queue. Locked after the list's
/// lock, never before it.
type Slot<T, E> = Arc<Mutex<Place<T, E>>>;

fn lock_place<T, E>(slot: &Mutex<Place<T, E>>) -> MutexGuard<'_, Place<T, E>> {
    // Every change under this lock is one assignment.
    slot.lock().unwrap_or_else(|p| p.into_inner())
}

struct List<T, E> {
    /// Idle connections, the longest idle first. Taken from the front (FIFO) or the back
    /// (LIFO).
    idle: VecDeque<T>,
    lifo: bool,
    /// Waiting places and their deadlines, oldest first.
    queue: VecDeque<(Slot<T, E>, Option<Instant>)>,
    closed: bool,
    /// The earliest deadline registered and not yet fallen due.
    armed: Option<Instant>,
    /// The pool's home: which actor (counted from 0) connections given back must have been
    /// created by. Raised by [`Waitlist::evict`]; a connection of an older home is refused.
    home: u32,
    /// No actor serves the list: nobody may queue until a caller starts one.
    homeless: bool,
    /// Entries handed out to callers (taken idle, or handed to a waiter), and
    /// entries given back with `returned`: counted here, under the lock every checkout and
    /// return takes anyway, rather than with atomic operations of their own.
    taken: u64,
    returned: u64,
    /// The fewest connections idle at any moment since `take_low_water` was last called:
    /// that many were never needed meanwhile.
    low_water: usize,
}

impl<T, E> List<T, E> {
    /// The idle connection to hand out next, in the pool's queue order.
    #[inline]
    fn take_one(&mut self) -> Option<T> {
        let entry = if self.lifo {
            self.idle.pop_back()
        } else {
            self.idle.pop_front()
        };
        self.low_water = self.low_water.min(self.idle.len());
        entry
    }
}

/// The waiting callers, oldest first.
pub(crate) struct Waitlist<T, E> {
    list: Mutex<List<T, E>>,
    /// How many are queued; read without the lock by the actor's growth plan.
    waiting: AtomicUsize,
    /// How many are idle; read without the lock by status and the growth plan.
    idle: AtomicUsize,
    /// `home`, readable without the lock.
    home: AtomicU32,
}

/// Spare places kept at most, per thread. A place is spare from the moment its waiter takes
/// its outcome until another caller on the same thread joins; a few are enough for every
/// waiter served between two joins.
#[cfg(not(loom))]
const SPARE_PLACES: usize = 16;

// Places whose waiters took their outcome, kept for the next waiters on the same thread: in a
// pool where callers keep waiting, joining allocates nothing. Per thread, so that no lock is
// shared for them (one shared by the runtime's workers cost a busy pool a fifth of its
// checkouts); of any pool's type, hence `Any`. Nobody else holds a place kept here, and it
// holds no waker and no connection. Not under the model checks: there every place is new.
#[cfg(not(loom))]
thread_local! {
    static SPARE: std::cell::RefCell<Vec<Arc<dyn std::any::Any + Send + Sync>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// A spare place of this type from this thread's, if there is one.
#[cfg(not(loom))]
fn take_spare<T: Send + 'static, E: Send + Sync + 'static>() -> Option<Slot<T, E>> {
    SPARE
        .try_with(|spare| {
            let mut spare = spare.try_borrow_mut().ok()?;
            match spare.pop()?.downcast::<Mutex<Place<T, E>>>() {
                Ok(slot) => Some(slot),
                // Another pool's: left where it was.
                Err(other) => {
                    spare.push(other);
                    None
                }
            }
        })
        .ok()
        .flatten()
}

/// Keeps an emptied place nobody else holds among this thread's spare ones, if there is
/// room (else, or while the thread ends, it is dropped).
#[cfg(not(loom))]
fn give_spare<T: Send + 'static, E: Send + Sync + 'static>(slot: Slot<T, E>) {
    let _ = SPARE.try_with(|spare| {
        if let Ok(mut spare) = spare.try_borrow_mut() {
            if spare.len() < SPARE_PLACES {
                spare.push(slot);
            }
        }
    });
}

#[cfg(loom)]
fn take_spare<T, E>() -> Option<Slot<T, E>> {
    None
}

#[cfg(loom)]
fn give_spare<T, E>(_slot: Slot<T, E>) {}

/// How many places this thread keeps spare.
#[cfg(all(test, not(loom)))]
fn spare_count() -> usize {
    SPARE.with(|spare| spare.borrow().len())
}

/// A waiter's place in the list. Given back through [`Waitlist::poll`] (once it is ready; the
/// ticket then goes to [`Waitlist::recycle`]) or [`Waitlist::cancel`].
pub(crate) struct Ticket<T, E>(Slot<T, E>);

impl<T, E> fmt::Debug for Ticket<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ticket")
    }
}

/// The list is closed.
#[derive(Debug)]
pub(crate) struct Closed;

/// What joining the list gave.
pub(crate) enum Join<T, E> {
    /// Nobody was ahead and an idle connection was there.
    Idle(T),
    /// Queued. `arm`: a deadline the caller must have registered (see the module docs).
    Queued {
        ticket: Ticket<T, E>,
        arm: Option<Instant>,
    },
    /// The pool is closing.
    Closed,
    /// The pool has no actor: start one, then join again.
    Moved,
}

/// The pool has no actor to serve a waiter, and it is for the caller to start one: it is
/// told which home to start.
pub(crate) enum Claim {
    /// Start the actor of this home.
    Start(u32),
    /// An actor serves the list already.
    Served,
}

impl<T: Send + 'static, E: Send + Sync + 'static> Waitlist<T, E> {
    /// `capacity`: idle connections room is made for up front. `lifo`: the most recently
    /// returned idle connection is taken first. `homeless`: no actor serves it yet (one is
    /// started by the first caller, [`Waitlist::claim_home`]).
    pub(crate) fn new(capacity: usize, lifo: bool, homeless: bool) -> Self {
        Waitlist {
            list: Mutex::new(List {
                idle: VecDeque::with_capacity(capacity),
                lifo,
                queue: VecDeque::new(),
                closed: false,
                armed: None,
                home: 0,
                homeless,
                taken: 0,
                returned: 0,
                low_water: 0,
            }),
            waiting: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            home: AtomicU32::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, List<T, E>> {
        // Every change under this lock is one assignment or one push/pop: a panic elsewhere
        // while it was held leaves it consistent.
        self.list.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, list: &List<T, E>) {
        self.waiting.store(list.queue.len(), SeqCst);
    }

    fn publish_idle(&self, list: &List<T, E>) {
        self.idle.store(list.idle.len(), Relaxed);
    }

    /// How many callers are queued.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(SeqCst)
    }

    /// How many connections are idle.
    pub(crate) fn idle(&self) -> usize {
        self.idle.load(Relaxed)
    }

    /// The pool's home now: the connections of any other are never handed out.
    #[inline]
    pub(crate) fn home(&self) -> u32 {
        self.home.load(Acquire)
    }

    /// Takes the longest idle connection, if there is one (while callers are queued there
    /// is none). `Err` once closed.
    #[inline]
    pub(crate) fn pop_idle(&self) -> Result<Option<T>, Closed> {
        let mut list = self.lock();
        if list.closed {
            return Err(Closed);
        }
        let entry = list.take_one();
        if entry.is_some() {
            list.taken += 1;
            self.publish_idle(&list);
        }
        Ok(entry)
    }

    /// Takes every idle connection that `expired` says is past its time, keeping the order
    /// of the rest (which `expired` may update: the reaper confirms return stamps).
    pub(crate) fn reap(&self, mut expired: impl FnMut(&mut T) -> bool) -> Vec<T> {
        let mut list = self.lock();
        let mut gone = Vec::new();
        let mut i = 0;
        while i < list.idle.len() {
            if expired(&mut list.idle[i]) {
                gone.extend(list.idle.remove(i));
            } else {
                i += 1;
            }
        }
        self.publish_idle(&list);
        gone
    }

    /// How many connections were idle throughout since the last call (the fewest idle at any
    /// moment), and starts counting afresh from what is idle now.
    pub(crate) fn take_low_water(&self) -> usize {
        let mut list = self.lock();
        let low = list.low_water.min(list.idle.len());
        list.low_water = list.idle.len();
        low
    }

    /// Takes up to `n` idle connections, those idle longest first (the front of the queue in
    /// either order: FIFO takes from it, LIFO leaves it alone).
    pub(crate) fn take_coldest(&self, n: usize) -> Vec<T> {
        let mut list = self.lock();
        let n = n.min(list.idle.len());
        let gone: Vec<T> = list.idle.drain(..n).collect();
        list.low_water = list.low_water.min(list.idle.len());
        self.publish_idle(&list);
        gone
    }

    /// Takes everything idle (used once closed: nothing more can go in).
    pub(crate) fn take_idle(&self) -> VecDeque<T> {
        let mut list = self.lock();
        let idle = std::mem::take(&mut list.idle);
        self.publish_idle(&list);
        idle
    }

    /// Joins the back of the queue, unless something is idle (then nobody is queued: it is
    /// taken). `waker` is woken once the outcome is there.
    pub(crate) fn join(&self, deadline: Option<Instant>, waker: &Waker) -> Join<T, E> {
        // Ready before the lock is taken, to keep the critical section short; kept as a spare
        // again when the caller does not queue after all (something turned out to be idle,
        // which a caller that came to wait rarely finds, or the list is closed or homeless).
        let slot = self.place(waker);
        let mut list = self.lock();
        let unqueued = if list.closed {
            Some(Join::Closed)
        } else if list.homeless {
            Some(Join::Moved)
        } else if let Some(entry) = list.take_one() {
            list.taken += 1;
            self.publish_idle(&list);
            Some(Join::Idle(entry))
        } else {
            None
        };
        if let Some(join) = unqueued {
            drop(list);
            self.keep_spare(slot);
            return join;
        }
        if crate::sync::planted(crate::sync::Bug::SplitJoin) {
            // A bug planted by the model checks: the lock let go between looking and queuing.
            drop(list);
            list = self.lock();
        }
        list.queue.push_back((slot.clone(), deadline));
        self.publish(&list);
        let arm = deadline.filter(|&at| list.armed.is_none_or(|armed| at < armed));
        if arm.is_some() {
            list.armed = arm;
        }
        Join::Queued {
            ticket: Ticket(slot),
            arm,
        }
    }

    /// A place waiting with `waker`: a spare one when there is one, else a new one.
    fn place(&self, waker: &Waker) -> Slot<T, E> {
        match take_spare() {
            Some(mut slot) => {
                let waiting = Place::Waiting(waker.clone());
                match Arc::get_mut(&mut slot) {
                    // Nobody else holds a spare place: no lock to take.
                    Some(place) => *place.get_mut().unwrap_or_else(|p| p.into_inner()) = waiting,
                    None => *lock_place(&slot) = waiting,
                }
                slot
            }
            None => Arc::new(Mutex::new(Place::Waiting(waker.clone()))),
        }
    }

    /// A ticket whose outcome was taken: its place is kept for another waiter when nobody
    /// else holds it any more (whoever settled it lets go before waking the waiter).
    pub(crate) fn recycle(&self, ticket: Ticket<T, E>) {
        self.keep_spare(ticket.0);
    }

    /// Keeps `slot` as a spare place, emptied (no waker, no outcome), if nobody else holds it
    /// and there is room; else drops it. Never called with the list's lock held.
    fn keep_spare(&self, mut slot: Slot<T, E>) {
        let Some(place) = Arc::get_mut(&mut slot) else {
            return;
        };
        *place.get_mut().unwrap_or_else(|p| p.into_inner()) = Place::Spent;
        give_spare(slot);
    }

    /// The outcome, once there is one; the ticket is spent when this is ready. Takes the
    /// place's lock only (a connection was counted as taken when it was handed over).
    pub(crate) fn poll(&self, ticket: &Ticket<T, E>, cx: &mut Context<'_>) -> Poll<Outcome<T, E>> {
        let mut place = lock_place(&ticket.0);
        match &mut *place {
            Place::Waiting(waker) => {
                if !waker.will_wake(cx.waker()) {
                    *waker = cx.waker().clone();
                }
                Poll::Pending
            }
            place => match std::mem::replace(place, Place::Spent) {
                Place::Done(outcome) => Poll::Ready(outcome),
                _ => unreachable!("a place is spent only once its ticket is"),
            },
        }
    }

    /// The waiter gives up: leaves the queue. Returns what it had been given meanwhile (a
    /// connection to put back, or a failure to drop; not counted as taken).
    pub(crate) fn cancel(&self, ticket: Ticket<T, E>) -> Option<Outcome<T, E>> {
        let mut list = self.lock();
        let was = std::mem::replace(&mut *lock_place(&ticket.0), Place::Spent);
        match was {
            Place::Waiting(_) => {
                if let Some(at) = list
                    .queue
                    .iter()
                    .position(|(s, _)| Arc::ptr_eq(s, &ticket.0))
                {
                    list.queue.remove(at);
                }
                self.publish(&list);
                None
            }
            // A bug planted by the model checks: what the waiter was handed is dropped.
            Place::Done(_) if crate::sync::planted(crate::sync::Bug::CancelDrops) => None,
            Place::Done(outcome) => {
                if let Outcome::Got(..) = outcome {
                    // Counted as taken when it was handed over; the waiter never took it.
                    list.taken -= 1;
                }
                Some(outcome)
            }
            Place::Spent => None,
        }
    }

    /// Settles the oldest waiter with `outcome`; gives it back when nobody waits.
    fn settle_first(&self, outcome: Outcome<T, E>) -> Result<(), Outcome<T, E>> {
        let mut list = self.lock();
        let Some((slot, _)) = list.queue.pop_front() else {
            return Err(outcome);
        };
        self.publish(&list);
        let waker = Self::settle(&slot, outcome);
        // Let go of before the waiter can take its outcome: its place can then be recycled.
        drop(slot);
        drop(list);
        waker.wake();
        Ok(())
    }

    /// Gives a queued place its outcome (the list's lock is held: the place left the queue
    /// under it).
    fn settle(slot: &Slot<T, E>, outcome: Outcome<T, E>) -> Waker {
        match std::mem::replace(&mut *lock_place(slot), Place::Done(outcome)) {
            Place::Waiting(waker) => waker,
            _ => unreachable!("queued places are waiting"),
        }
    }

    /// Hands `entry` to the longest waiter, else makes it idle; gives it back once closed,
    /// and when it was made by an actor of another `home` than the list's (its runtime went
    /// away). `fresh`: it comes straight from `create`. `returned`: a caller gives it back
    /// (counted, see [`Waitlist::flow`]). `going_idle` is called on an entry about to go idle
    /// (to stamp it), under the lock.
    #[inline]
    pub(crate) fn put(
        &self,
        entry: T,
        home: u32,
        fresh: bool,
        returned: bool,
        going_idle: impl FnOnce(&mut T),
    ) -> Result<(), T> {
        let mut list = self.lock();
        if list.closed || home != list.home {
            return Err(entry);
        }
        list.returned += u64::from(returned);
        match list.queue.pop_front() {
            Some((slot, _)) => {
                self.publish(&list);
                // Counted here, under the list's lock, rather than as the waiter takes it.
                list.taken += 1;
                let waker = Self::settle(&slot, Outcome::Got(entry, fresh));
                // Let go of before the waiter can take its outcome: its place can then be
                // recycled.
                drop(slot);
                drop(list);
                waker.wake();
            }
            None => {
                let mut entry = entry;
                going_idle(&mut entry);
                list.idle.push_back(entry);
                self.publish_idle(&list);
            }
        }
        Ok(())
    }

    /// Entries handed out to callers so far, and entries callers gave back (`put` with
    /// `returned`), read together.
    pub(crate) fn flow(&self) -> (u64, u64) {
        let list = self.lock();
        (list.taken, list.returned)
    }

    /// Gives a creation failure to the longest waiter; gives it back when nobody waits.
    pub(crate) fn fail_first(&self, failure: CreateFailure<E>) -> Option<CreateFailure<E>> {
        match self.settle_first(Outcome::Failed(failure)) {
            Ok(()) => None,
            Err(Outcome::Failed(failure)) => Some(failure),
            Err(_) => unreachable!("given back as it was given"),
        }
    }

    /// Gives every waiter a creation failure made by `failure` (a permanent one, shared by
    /// all); returns how many it failed.
    pub(crate) fn fail_all(&self, mut failure: impl FnMut() -> CreateFailure<E>) -> usize {
        let mut list = self.lock();
        let mut wakers = Vec::with_capacity(list.queue.len());
        while let Some((slot, _)) = list.queue.pop_front() {
            wakers.push(Self::settle(&slot, Outcome::Failed(failure())));
        }
        self.publish(&list);
        drop(list);
        let failed = wakers.len();
        wakers.into_iter().for_each(Waker::wake);
        failed
    }

    /// Wakes every waiter with `Closed`, and turns away every later one and every later
    /// connection given back. What is idle stays, for the closer to drain.
    pub(crate) fn close(&self) {
        let mut list = self.lock();
        list.closed = true;
        let mut wakers = Vec::with_capacity(list.queue.len());
        while let Some((slot, _)) = list.queue.pop_front() {
            wakers.push(Self::settle(&slot, Outcome::Closed));
        }
        self.publish(&list);
        drop(list);
        wakers.into_iter().for_each(Waker::wake);
    }

    /// The runtime the pool's actor ran on went away, and the pool outlives it: the home
    /// moves on. Takes everything idle (the caller closes it), refuses every connection of the
    /// old home given back from now on, and settles every waiter with `Moved` — their wakers
    /// are returned, to be woken once the caller has finished with the old home. Until a
    /// caller claims the new home, nobody queues.
    pub(crate) fn evict(&self) -> (VecDeque<T>, Vec<Waker>) {
        let mut list = self.lock();
        list.home = list.home.wrapping_add(1);
        self.home.store(list.home, Release);
        list.homeless = true;
        let idle = std::mem::take(&mut list.idle);
        let mut wakers = Vec::with_capacity(list.queue.len());
        while let Some((slot, _)) = list.queue.pop_front() {
            wakers.push(Self::settle(&slot, Outcome::Moved));
        }
        self.publish(&list);
        self.publish_idle(&list);
        (idle, wakers)
    }

    /// A caller found the pool without an actor: the first to ask is told to start one (the
    /// list is served from now on); others are told it is. `Err` once closed: a close is
    /// never undone by a new home.
    pub(crate) fn claim_home(&self) -> Result<Claim, Closed> {
        let mut list = self.lock();
        if list.closed {
            return Err(Closed);
        }
        if !list.homeless {
            return Ok(Claim::Served);
        }
        list.homeless = false;
        Ok(Claim::Start(list.home))
    }

    /// The registration for `at` fell due at `now`: times out every waiter whose deadline is
    /// past. Returns the next deadline to register when `at` was the one the list relied on.
    pub(crate) fn expire(&self, at: Instant, now: Instant) -> Option<Instant> {
        let mut list = self.lock();
        let mut wakers = Vec::new();
        let mut next: Option<Instant> = None;
        let mut i = 0;
        while i < list.queue.len() {
            let due = match list.queue[i].1 {
                Some(d) if d <= now => true,
                Some(d) => {
                    next = Some(next.map_or(d, |n| n.min(d)));
                    false
                }
                None => false,
            };
            if due {
                let (slot, _) = list.queue.remove(i).expect("within the queue");
                wakers.push(Self::settle(&slot, Outcome::TimedOut));
            } else {
                i += 1;
            }
        }
        self.publish(&list);
        // Only the registration the list relied on is replaced; a later one still stands
        // and covers every waiter, as the earliest registration did.
        let renew = list.armed == Some(at);
        if renew {
            list.armed = next;
        }
        drop(list);
        wakers.into_iter().for_each(Waker::wake);
        if renew {
            next
        } else {
            None
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn queued(list: &Waitlist<u32, ()>) -> Ticket<u32, ()> {
        match list.join(None, Waker::noop()) {
            Join::Queued { ticket, .. } => ticket,
            _ => panic!("nothing idle, open, served: the caller queues"),
        }
    }

    #[test]
    fn a_waiter_takes_its_outcome_without_the_lists_lock() {
        let list = Waitlist::<u32, ()>::new(1, false, false);
        let ticket = queued(&list);
        assert!(list.put(7, 0, false, true, |_| {}).is_ok());
        // Another caller holds the list's lock (joining, returning): the waiter served meanwhile
        // still takes its connection.
        let busy = list.lock();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut cx = Context::from_waker(Waker::noop());
                let got = match list.poll(&ticket, &mut cx) {
                    Poll::Ready(Outcome::Got(entry, false)) => Some(entry),
                    _ => None,
                };
                let _ = tx.send(got);
            });
            let got = rx.recv_timeout(std::time::Duration::from_secs(2));
            assert_eq!(got, Ok(Some(7)), "the waiter waited for the list's lock");
            drop(busy);
        });
    }

    #[test]
    fn a_served_waiters_place_is_used_again_unless_held_elsewhere() {
        let list = Waitlist::<u32, ()>::new(1, false, false);
        let spares = spare_count;
        let mut cx = Context::from_waker(Waker::noop());
        let serve = |ticket: &Ticket<u32, ()>, conn: u32| {
            assert!(list.put(conn, 0, false, true, |_| {}).is_ok());
            let mut cx = Context::from_waker(Waker::noop());
            assert!(matches!(
                list.poll(ticket, &mut cx),
                Poll::Ready(Outcome::Got(c, false)) if c == conn
            ));
        };
        let first = queued(&list);
        serve(&first, 1);
        list.recycle(first);
        assert_eq!(spares(), 1, "a served place was not kept");
        // The next waiter waits in it, set waiting again.
        let second = queued(&list);
        assert_eq!(spares(), 0, "the next waiter did not take the spare place");
        assert!(list.poll(&second, &mut cx).is_pending());
        serve(&second, 2);
        // Still held elsewhere when it is given back: not kept (it would be shared).
        let held = second.0.clone();
        list.recycle(second);
        assert_eq!(spares(), 0, "a place held elsewhere was kept");
        let third = queued(&list);
        assert!(!Arc::ptr_eq(&third.0, &held));
        serve(&third, 3);
        assert_eq!(list.flow(), (3, 3));
        list.recycle(third);
        assert_eq!(spares(), 1);
        // A caller that does not queue after all (the list is closed) leaves it spare.
        list.close();
        assert!(matches!(list.join(None, Waker::noop()), Join::Closed));
        assert_eq!(
            spares(),
            1,
            "a caller that did not queue used up a spare place"
        );
        // A caller of a pool of another type on this thread makes a place of its own and leaves
        // this one spare.
        let other = Waitlist::<u64, ()>::new(1, false, false);
        let ticket = match other.join(None, Waker::noop()) {
            Join::Queued { ticket, .. } => ticket,
            _ => panic!("nothing idle, open, served: the caller queues"),
        };
        assert_eq!(spares(), 1, "another pool's place was taken or dropped");
        assert!(other.cancel(ticket).is_none());
    }

    #[test]
    fn a_hand_over_counts_as_taken_and_a_cancel_counts_it_back() {
        let list = Waitlist::<u32, ()>::new(1, false, false);
        let ticket = queued(&list);
        assert!(list.put(1, 0, false, true, |_| {}).is_ok());
        // Handed over: out of the pool, as a checked-out connection is.
        assert_eq!(list.flow(), (1, 1));
        assert!(matches!(list.cancel(ticket), Some(Outcome::Got(1, false))));
        // The waiter gave up before taking it: the giver of `cancel`'s outcome counts it.
        assert_eq!(list.flow(), (0, 1));
        let ticket = queued(&list);
        assert!(list.put(2, 0, false, true, |_| {}).is_ok());
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(
            list.poll(&ticket, &mut cx),
            Poll::Ready(Outcome::Got(2, false))
        ));
        // Taken once, whenever the waiter takes it.
        assert_eq!(list.flow(), (1, 2));
    }
}
