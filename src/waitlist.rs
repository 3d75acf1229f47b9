//! The queue of callers waiting for a connection: served first come, first served.
//!
//! A connection that comes back (or is newly created) while callers wait is handed straight to
//! the one that has waited longest; a caller never takes an idle connection while others queue
//! ahead of it. That is what makes waiting fair: a task that returns a connection and asks again
//! at once joins the back of the queue instead of taking its own connection back.
//!
//! Lock order: the list, then a slot.

use std::collections::VecDeque;
use std::sync::atomic::{fence, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use async_channel::Receiver;

use crate::error::CreateFailure;

/// What a waiter ends up with.
pub(crate) enum Outcome<C, E> {
    /// A connection; `true` when it comes straight from `create` (it needs no health check).
    Got(C, bool),
    Failed(CreateFailure<E>),
    Closed,
}

enum SlotState<C, E> {
    Waiting(Option<Waker>),
    Done(Outcome<C, E>),
    /// The outcome was taken, or the waiter gave up.
    Taken,
}

/// One waiting caller.
pub(crate) struct Slot<C, E> {
    state: Mutex<SlotState<C, E>>,
}

impl<C, E> Slot<C, E> {
    fn lock(&self) -> MutexGuard<'_, SlotState<C, E>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Settles a waiting slot (called with the list locked, so the slot is still queued and
    /// cannot have been cancelled).
    fn settle(&self, outcome: Outcome<C, E>) {
        let waker = {
            let mut state = self.lock();
            match std::mem::replace(&mut *state, SlotState::Done(outcome)) {
                SlotState::Waiting(waker) => waker,
                _ => None,
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The outcome, once there is one.
    pub(crate) fn poll(&self, cx: &mut Context<'_>) -> Poll<Outcome<C, E>> {
        let mut state = self.lock();
        match &mut *state {
            SlotState::Waiting(waker) => {
                match waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            SlotState::Done(_) => match std::mem::replace(&mut *state, SlotState::Taken) {
                SlotState::Done(outcome) => Poll::Ready(outcome),
                _ => unreachable!("matched Done just above"),
            },
            SlotState::Taken => Poll::Ready(Outcome::Closed),
        }
    }
}

struct List<C, E> {
    queue: VecDeque<Arc<Slot<C, E>>>,
    closed: bool,
}

/// The waiting callers, oldest first.
pub(crate) struct Waitlist<C, E> {
    list: Mutex<List<C, E>>,
    /// How many are queued; read without the lock on the hot path.
    waiting: AtomicUsize,
}

/// What joining the list gave.
pub(crate) enum Join<C, E> {
    /// Nobody was ahead and an idle connection was there.
    Idle(C),
    /// Queued: wait on the slot.
    Queued(Arc<Slot<C, E>>),
    /// The pool is closing.
    Closed,
}

impl<C, E> Waitlist<C, E> {
    pub(crate) fn new() -> Self {
        Waitlist {
            list: Mutex::new(List {
                queue: VecDeque::new(),
                closed: false,
            }),
            waiting: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, List<C, E>> {
        self.list.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pop_front(&self, list: &mut List<C, E>) -> Option<Arc<Slot<C, E>>> {
        let slot = list.queue.pop_front();
        self.waiting.store(list.queue.len(), SeqCst);
        slot
    }

    /// How many callers are queued.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(SeqCst)
    }

    /// Joins the back of the queue, unless nobody is ahead and `idle` has a connection.
    pub(crate) fn join(&self, idle: &Receiver<C>) -> Join<C, E> {
        let mut list = self.lock();
        if list.closed {
            return Join::Closed;
        }
        if list.queue.is_empty() {
            if let Ok(entry) = idle.try_recv() {
                return Join::Idle(entry);
            }
        }
        let slot = Arc::new(Slot {
            state: Mutex::new(SlotState::Waiting(None)),
        });
        list.queue.push_back(slot.clone());
        self.waiting.store(list.queue.len(), SeqCst);
        // The other half of `Shared::put_idle`'s handshake: the count is published before the
        // idle queue is looked at again, so a connection sent there meanwhile is seen either
        // here or by the putter's `serve_idle`.
        fence(SeqCst);
        // A connection may have gone idle while others were queued ahead: serve them first.
        self.serve_from(&mut list, idle);
        Join::Queued(slot)
    }

    /// Hands `entry` to the longest waiter, or gives it back when nobody waits. `fresh`: it
    /// comes straight from `create`.
    pub(crate) fn offer(&self, entry: C, fresh: bool) -> Option<C> {
        if self.waiting() == 0 {
            return Some(entry);
        }
        let mut list = self.lock();
        match self.pop_front(&mut list) {
            Some(slot) => {
                slot.settle(Outcome::Got(entry, fresh));
                None
            }
            None => Some(entry),
        }
    }

    /// Moves idle connections to queued waiters. Called after a connection went idle while a
    /// caller may have been joining: between the two, one of them sees the other.
    pub(crate) fn serve_idle(&self, idle: &Receiver<C>) {
        if self.waiting() == 0 {
            return;
        }
        let mut list = self.lock();
        self.serve_from(&mut list, idle);
    }

    fn serve_from(&self, list: &mut List<C, E>, idle: &Receiver<C>) {
        while !list.queue.is_empty() {
            let Ok(entry) = idle.try_recv() else { break };
            let slot = self.pop_front(list).expect("checked non-empty");
            slot.settle(Outcome::Got(entry, false));
        }
    }

    /// Gives a creation failure to the longest waiter; gives it back when nobody waits.
    pub(crate) fn fail_first(&self, failure: CreateFailure<E>) -> Option<CreateFailure<E>> {
        let mut list = self.lock();
        match self.pop_front(&mut list) {
            Some(slot) => {
                slot.settle(Outcome::Failed(failure));
                None
            }
            None => Some(failure),
        }
    }

    /// Wakes every waiter with `Closed`, and turns away every later one.
    pub(crate) fn close(&self) {
        let mut list = self.lock();
        list.closed = true;
        while let Some(slot) = self.pop_front(&mut list) {
            slot.settle(Outcome::Closed);
        }
    }

    /// The waiter gives up: leaves the queue. Returns what it had been given meanwhile (a
    /// connection to put back, or a failure to drop).
    pub(crate) fn cancel(&self, slot: &Arc<Slot<C, E>>) -> Option<Outcome<C, E>> {
        let mut list = self.lock();
        if let Some(at) = list.queue.iter().position(|s| Arc::ptr_eq(s, slot)) {
            list.queue.remove(at);
            self.waiting.store(list.queue.len(), SeqCst);
        }
        drop(list);
        let mut state = slot.lock();
        match std::mem::replace(&mut *state, SlotState::Taken) {
            SlotState::Done(outcome) => Some(outcome),
            _ => None,
        }
    }
}
