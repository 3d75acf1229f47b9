//! The queue of callers waiting for a connection: served first come, first served.
//!
//! A connection that comes back (or is newly created) while callers wait is handed straight to
//! the one that has waited longest; a caller never takes an idle connection while others queue
//! ahead of it. That is what makes waiting fair: a task that returns a connection and asks again
//! at once joins the back of the queue instead of taking its own connection back.
//!
//! One lock guards everything. A waiter's place is an index into a table of places that is
//! reused, so waiting allocates nothing once the table has grown to the pool's largest crowd:
//! joining, being served and taking the outcome are one short critical section each. Wakers
//! are woken after the lock is released.
//!
//! Deadlines: each waiter may carry one, and the list remembers the earliest deadline it has
//! asked to be told about (`armed`). Joining reports a deadline to register only when it is
//! earlier than that; every waiter's deadline is then at or after some registration, so
//! [`Waitlist::expire`] on each one that falls due times every waiter out on time.

use std::collections::VecDeque;
use std::sync::atomic::{fence, AtomicUsize, Ordering::SeqCst};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use async_channel::Receiver;

use crate::error::CreateFailure;

/// What a waiter ends up with.
pub(crate) enum Outcome<T, E> {
    /// A connection; `true` when it comes straight from `create` (it needs no health check).
    Got(T, bool),
    Failed(CreateFailure<E>),
    Closed,
    /// Its deadline passed while it waited.
    TimedOut,
}

enum Place<T, E> {
    Waiting {
        waker: Waker,
        deadline: Option<Instant>,
    },
    Done(Outcome<T, E>),
    /// Not in use: on the free list.
    Free,
}

struct List<T, E> {
    places: Vec<Place<T, E>>,
    free: Vec<usize>,
    /// Indices of waiting places, oldest first.
    queue: VecDeque<usize>,
    closed: bool,
    /// The earliest deadline registered and not yet fallen due.
    armed: Option<Instant>,
}

/// The waiting callers, oldest first.
pub(crate) struct Waitlist<T, E> {
    list: Mutex<List<T, E>>,
    /// How many are queued; read without the lock on the hot path.
    waiting: AtomicUsize,
}

/// A waiter's place in the list. Given back through [`Waitlist::poll`] (once it is ready) or
/// [`Waitlist::cancel`].
#[derive(Debug)]
pub(crate) struct Ticket(usize);

/// What joining the list gave.
pub(crate) enum Join<T> {
    /// Nobody was ahead and an idle connection was there.
    Idle(T),
    /// Queued. `arm`: a deadline the caller must have registered (see the module docs).
    Queued {
        ticket: Ticket,
        arm: Option<Instant>,
    },
    /// The pool is closing.
    Closed,
}

impl<T, E> Waitlist<T, E> {
    pub(crate) fn new() -> Self {
        Waitlist {
            list: Mutex::new(List {
                places: Vec::new(),
                free: Vec::new(),
                queue: VecDeque::new(),
                closed: false,
                armed: None,
            }),
            waiting: AtomicUsize::new(0),
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

    /// How many callers are queued.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(SeqCst)
    }

    /// Joins the back of the queue, unless nobody is ahead and `idle` has something. `waker`
    /// is woken once the outcome is there.
    pub(crate) fn join(
        &self,
        idle: &Receiver<T>,
        deadline: Option<Instant>,
        waker: &Waker,
    ) -> (Join<T>, Option<Waker>) {
        let mut list = self.lock();
        if list.closed {
            return (Join::Closed, None);
        }
        if list.queue.is_empty() {
            if let Ok(entry) = idle.try_recv() {
                return (Join::Idle(entry), None);
            }
        }
        let place = Place::Waiting {
            waker: waker.clone(),
            deadline,
        };
        let index = match list.free.pop() {
            Some(index) => {
                list.places[index] = place;
                index
            }
            None => {
                list.places.push(place);
                list.places.len() - 1
            }
        };
        list.queue.push_back(index);
        self.publish(&list);
        let arm = deadline.filter(|&at| list.armed.is_none_or(|armed| at < armed));
        if arm.is_some() {
            list.armed = arm;
        }
        // The other half of `Shared::put_idle`'s handshake: the count is published before the
        // idle queue is looked at again, so a connection sent there meanwhile is seen either
        // here or by the putter's `serve_idle`. A connection may also have gone idle while
        // others were queued ahead: they are served first.
        fence(SeqCst);
        let woken = Self::serve_from(&mut list, idle);
        self.publish(&list);
        drop(list);
        (
            Join::Queued {
                ticket: Ticket(index),
                arm,
            },
            woken,
        )
    }

    /// The outcome, once there is one; the ticket is spent when this is ready.
    pub(crate) fn poll(&self, ticket: &Ticket, cx: &mut Context<'_>) -> Poll<Outcome<T, E>> {
        let mut list = self.lock();
        let list = &mut *list;
        match &mut list.places[ticket.0] {
            Place::Waiting { waker, .. } => {
                if !waker.will_wake(cx.waker()) {
                    *waker = cx.waker().clone();
                }
                Poll::Pending
            }
            place => match std::mem::replace(place, Place::Free) {
                Place::Done(outcome) => {
                    list.free.push(ticket.0);
                    Poll::Ready(outcome)
                }
                _ => unreachable!("a ticket's place is free only once the ticket is spent"),
            },
        }
    }

    /// The waiter gives up: leaves the queue. Returns what it had been given meanwhile (a
    /// connection to put back, or a failure to drop).
    pub(crate) fn cancel(&self, ticket: Ticket) -> Option<Outcome<T, E>> {
        let mut list = self.lock();
        let was = std::mem::replace(&mut list.places[ticket.0], Place::Free);
        list.free.push(ticket.0);
        match was {
            Place::Waiting { .. } => {
                if let Some(at) = list.queue.iter().position(|&i| i == ticket.0) {
                    list.queue.remove(at);
                }
                self.publish(&list);
                None
            }
            Place::Done(outcome) => Some(outcome),
            Place::Free => None,
        }
    }

    /// Settles the oldest waiter with `outcome`; gives it back when nobody waits.
    fn settle_first(&self, outcome: Outcome<T, E>) -> Result<(), Outcome<T, E>> {
        let mut list = self.lock();
        let Some(index) = list.queue.pop_front() else {
            return Err(outcome);
        };
        self.publish(&list);
        let waker = Self::settle(&mut list, index, outcome);
        drop(list);
        waker.wake();
        Ok(())
    }

    fn settle(list: &mut List<T, E>, index: usize, outcome: Outcome<T, E>) -> Waker {
        match std::mem::replace(&mut list.places[index], Place::Done(outcome)) {
            Place::Waiting { waker, .. } => waker,
            _ => unreachable!("queued places are waiting"),
        }
    }

    /// Hands `entry` to the longest waiter, or gives it back when nobody waits. `fresh`: it
    /// comes straight from `create`.
    #[inline]
    pub(crate) fn offer(&self, entry: T, fresh: bool) -> Option<T> {
        if self.waiting() == 0 {
            return Some(entry);
        }
        match self.settle_first(Outcome::Got(entry, fresh)) {
            Ok(()) => None,
            Err(Outcome::Got(entry, _)) => Some(entry),
            Err(_) => unreachable!("given back as it was given"),
        }
    }

    /// Moves idle connections to queued waiters. Called after a connection went idle while a
    /// caller may have been joining: between the two, one of them sees the other.
    pub(crate) fn serve_idle(&self, idle: &Receiver<T>) {
        if self.waiting() == 0 {
            return;
        }
        let mut list = self.lock();
        let woken = Self::serve_from(&mut list, idle);
        self.publish(&list);
        drop(list);
        if let Some(waker) = woken {
            waker.wake();
        }
    }

    /// Serves queued waiters from `idle`. Returns the last waker to wake once the lock is
    /// released; any earlier ones (more than one connection was idle) are woken here.
    fn serve_from(list: &mut List<T, E>, idle: &Receiver<T>) -> Option<Waker> {
        let mut woken: Option<Waker> = None;
        while !list.queue.is_empty() {
            let Ok(entry) = idle.try_recv() else { break };
            let index = list.queue.pop_front().expect("checked non-empty");
            let waker = Self::settle(list, index, Outcome::Got(entry, false));
            if let Some(earlier) = woken.replace(waker) {
                earlier.wake();
            }
        }
        woken
    }

    /// Gives a creation failure to the longest waiter; gives it back when nobody waits.
    pub(crate) fn fail_first(&self, failure: CreateFailure<E>) -> Option<CreateFailure<E>> {
        match self.settle_first(Outcome::Failed(failure)) {
            Ok(()) => None,
            Err(Outcome::Failed(failure)) => Some(failure),
            Err(_) => unreachable!("given back as it was given"),
        }
    }

    /// Wakes every waiter with `Closed`, and turns away every later one.
    pub(crate) fn close(&self) {
        let mut list = self.lock();
        list.closed = true;
        let mut wakers = Vec::with_capacity(list.queue.len());
        while let Some(index) = list.queue.pop_front() {
            wakers.push(Self::settle(&mut list, index, Outcome::Closed));
        }
        self.publish(&list);
        drop(list);
        wakers.into_iter().for_each(Waker::wake);
    }

    /// The registration for `at` fell due at `now`: times out every waiter whose deadline is
    /// past. Returns the next deadline to register when `at` was the one the list relied on.
    pub(crate) fn expire(&self, at: Instant, now: Instant) -> Option<Instant> {
        let mut list = self.lock();
        let mut wakers = Vec::new();
        let mut next: Option<Instant> = None;
        let mut i = 0;
        while i < list.queue.len() {
            let index = list.queue[i];
            let due = match &list.places[index] {
                Place::Waiting {
                    deadline: Some(d), ..
                } => {
                    if *d <= now {
                        true
                    } else {
                        next = Some(next.map_or(*d, |n| n.min(*d)));
                        false
                    }
                }
                _ => false,
            };
            if due {
                list.queue.remove(i);
                wakers.push(Self::settle(&mut list, index, Outcome::TimedOut));
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
