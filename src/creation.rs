//! A caller creates a connection itself: on its own runtime, in a slot it reserves.

use std::future::{poll_fn, Future};
use std::task::Poll;
use std::time::Duration;

use crate::actor::PoolActor;
use crate::checkout::{Budget, WaiterMark};
use crate::error::{CreateFailure, Error};
use crate::manager::Manager;
use crate::pool::Pool;
use crate::runtime::BoxFuture;
use crate::shared::{Idle, Msg, Shared};
use crate::status::PoolState;
use crate::waitlist::{Claim, Closed};

impl<M: Manager> Pool<M> {
    /// A pool whose runtime follows its callers and has no actor (never started, or its
    /// runtime went away): starts one on the caller's runtime. Several callers may find it so
    /// at once; one starts it. Fails when the caller offers no runtime to start it on
    /// ([`Error::Spawn`]) or once the pool is closing; never undoes a close. True when this
    /// caller started the actor.
    pub(crate) fn ensure_home(&self) -> Result<bool, Error<M::Error>> {
        let shared = &self.shared;
        if !shared.ambient || shared.ledger.actor_alive() {
            return Ok(false);
        }
        match shared.waitlist.claim_home() {
            Err(Closed) => Err(shared.closed_error()),
            Ok(Claim::Served) => Ok(false),
            Ok(Claim::Start(home)) => {
                let actor = PoolActor::new(shared.clone(), home);
                // A refused task is dropped, and with it the actor: its drop leaves the pool
                // without a home again, for the next caller.
                shared
                    .runtime
                    .spawn(Box::pin(actor.run()))
                    .map_err(Error::Spawn)?;
                shared.ledger.record_home();
                event!(
                    debug,
                    home,
                    "the pool's actor started on a caller's runtime"
                );
                Ok(true)
            }
        }
    }

    /// Whether this caller may create a connection itself, and if so its slot is reserved:
    /// nobody waits (they are ahead of it, and the actor creates for them), no creation
    /// failed since the actor last made one (no caller creates during a backoff pause, nor
    /// before the actor has made a connection after one), there is room below `max_size`,
    /// and the caller runs on the pool's runtime.
    pub(crate) fn may_create_here(&self) -> bool {
        let shared = &self.shared;
        shared.waitlist.waiting() == 0
            && shared.ledger.callers_may_create()
            && shared.ledger.slots() < shared.ledger.max_size()
            && shared.runtime.is_current()
            // Until the pool has made its first connection, one creation at a time (see `grow`).
            && shared.ledger.begin_creation(if shared.ledger.made_one() {
                shared.config.max_creating
            } else {
                1
            })
            && (shared.ledger.try_reserve_slot() || {
                shared.ledger.end_creation();
                false
            })
    }

    /// Creates a connection in the caller's task, on a slot [`may_create_here`] reserved,
    /// bounded by the create timeout and what is left of the wait timeout; a panic is
    /// contained. A close lets it finish, as the actor lets its own, and abandons it only when
    /// the close finishes first (its deadline): the connection made meanwhile says its goodbye
    /// and the call ends with the pool's close. `None`:
    /// the creation failed and the caller is to wait while the actor retries (the default,
    /// not fail-fast). A creation that does not finish at once makes the call wait: it sets
    /// the call's `mark`, which counts the wait when the call ends.
    ///
    /// [`may_create_here`]: Pool::may_create_here
    pub(crate) async fn create_here<'s>(
        &'s self,
        budget: &mut Budget,
        mark: &mut Option<WaiterMark<'s>>,
    ) -> Result<Option<Idle<M::Connection>>, Error<M::Error>> {
        let shared = &self.shared;
        // Owned from here: whatever ends this future before a connection is made (close, the
        // wait timeout, the future dropped) gives the slot back.
        let slot = Reserved { shared };
        let _in_flight = InFlight(shared);
        if !shared.ledger.is_running() {
            return Err(shared.closed_error());
        }
        let mut attempt = std::pin::pin!(shared.make());
        // Made only if the creation does not finish on its first poll.
        let mut limits: Option<(Option<BoxFuture>, event_listener::EventListener)> = None;
        let create_timeout = shared.config.create_timeout;
        let made = poll_fn(|cx| {
            if let Poll::Ready(out) = attempt.as_mut().poll(cx) {
                return Poll::Ready(Made::Done(out));
            }
            if limits.is_none() {
                // Listening before looking at the state: a close that finishes after the look
                // wakes the listener. A close that only starts lets the creation go on: made
                // within the close deadline, the connection says its goodbye (`prepare`
                // retires it), rather than vanish half-way through its handshake.
                let listener = shared.closed.listen();
                let limit = match (create_timeout, budget.remaining()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let timer = match limit {
                    Some(Duration::ZERO) => return Poll::Ready(Made::TimedOut),
                    Some(d) => Some(shared.runtime.sleep(d)),
                    None => None,
                };
                *mark = Some(WaiterMark::new(&shared.ledger));
                limits = Some((timer, listener));
            }
            let (timer, listener) = limits.as_mut().expect("set just above");
            if shared.ledger.state() == PoolState::Closed
                || std::pin::Pin::new(listener).poll(cx).is_ready()
            {
                return Poll::Ready(Made::Closing);
            }
            match timer.as_mut().map(|t| t.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(Made::TimedOut),
                _ => Poll::Pending,
            }
        })
        .await;
        drop(limits);
        let wait_over = matches!(made, Made::TimedOut) && budget.spent();
        let failure = match made {
            Made::Done(Ok(conn)) => {
                // The slot is the connection's now.
                slot.keep();
                shared.ledger.record_created();
                if shared.ledger.server_full() {
                    shared.ledger.set_server_full(false);
                }
                if !shared.ledger.callers_may_create() {
                    // A failure was recorded since this creation began: it no longer holds.
                    // (Otherwise there is none to clear: failures close the way first.)
                    shared.set_last_create_error(None);
                }
                // Real time: the actor's coarse clock may be behind, and the lifetime counts
                // from here.
                let now = shared.created_stamp(shared.ledger.real_now_ms());
                return Ok(Some(Idle::fresh(
                    conn,
                    now,
                    shared.waitlist.home(),
                    shared.jitter_draw(),
                )));
            }
            Made::Closing => return Err(shared.closed_error()),
            Made::TimedOut if wait_over => return Err(self.timed_out(budget)),
            // Only a set create timeout expires before the wait timeout; without one, the
            // timer was the wait's, and the wait is over.
            Made::TimedOut => match create_timeout {
                Some(limit) => CreateFailure::Timeout(limit),
                None => return Err(self.timed_out(budget)),
            },
            Made::Done(Err(failure)) => failure,
        };
        // Failed: callers stop creating, and the actor pauses before it retries, as after a
        // failure of its own.
        shared.ledger.set_callers_may_create(false);
        shared.ledger.set_server_full(
            matches!(&failure, CreateFailure::Backend(e) if shared.manager.is_server_full(e)),
        );
        shared.ledger.ask_pause();
        slot.keep();
        shared.ledger.release_slot();
        let _ = shared.mailbox_tx.try_send(Msg::Grow);
        if let CreateFailure::Permanent(e) = &failure {
            // Retrying will not help: this caller and every waiter learn it now.
            shared
                .waitlist
                .fail_all(|| CreateFailure::Permanent(e.clone()));
        }
        let permanent = matches!(failure, CreateFailure::Permanent(_));
        let error: Error<M::Error> = failure.into();
        event!(warn, error = %error, "the manager's create failed (in the caller)");
        if permanent {
            let last = match &error {
                Error::Permanent(e) => Error::Permanent(e.clone()),
                _ => unreachable!("converted from a permanent failure"),
            };
            shared.report_create_error(&last);
            shared.set_last_create_error(Some(last));
            return Err(error);
        }
        if shared.config.fail_fast {
            return Err(error);
        }
        shared.report_create_error(&error);
        shared.set_last_create_error(Some(error));
        Ok(None)
    }

    /// Taking an idle connection may leave fewer than `min_idle`: wake the actor to top up
    /// now rather than at its next maintenance tick.
    #[inline]
    pub(crate) fn keep_min_idle(&self) {
        let min_idle = self.shared.ledger.min_idle();
        if min_idle > 0 && self.shared.waitlist.idle() < min_idle {
            self.ask_to_grow();
        }
    }

    /// Wakes the actor to create, unless the pool is already at `max_size` (then a returning
    /// or closing connection wakes it instead, and it sees the queued waiters).
    pub(crate) fn ask_to_grow(&self) {
        let shared = &self.shared;
        if shared.ledger.slots() < shared.ledger.max_size() {
            let _ = shared.mailbox_tx.try_send(Msg::Grow);
        }
    }
}

/// How a caller's own creation ended.
pub(crate) enum Made<T> {
    Done(T),
    /// The create timeout or the wait timeout ran out first.
    TimedOut,
    /// The pool's close finished first (its deadline passed, or it fell back).
    Closing,
}

/// A place among the creations in flight (`max_creating`) a caller took in
/// [`Pool::may_create_here`]; given back however its creation ends.
struct InFlight<'a, M: Manager>(&'a Shared<M>);

impl<M: Manager> Drop for InFlight<'_, M> {
    fn drop(&mut self) {
        let shared = self.0;
        shared.ledger.end_creation();
        // Callers who queued while this place was the only one (a fresh pool makes its first
        // connection alone) wait for the actor to make theirs: it learns it may now.
        if shared.waitlist.waiting() > 0 && shared.ledger.actor_alive() {
            let _ = shared.mailbox_tx.try_send(Msg::Grow);
        }
    }
}

/// A slot a caller reserved to create a connection in. Dropped before the connection is
/// made, it frees the slot, and tells the actor when that matters to it: a close waits for
/// every slot, and waiters may be waiting for room.
pub(crate) struct Reserved<'a, M: Manager> {
    shared: &'a Shared<M>,
}

impl<M: Manager> Reserved<'_, M> {
    /// The slot stays taken: by the connection made in it, or freed by the caller as a
    /// failed creation.
    fn keep(self) {
        std::mem::forget(self);
    }
}

impl<M: Manager> Drop for Reserved<'_, M> {
    fn drop(&mut self) {
        let shared = self.shared;
        // Freed before the queue is read, as a waiter queues before it reads the slots: one
        // of the two sees the other.
        shared.ledger.abandon_slot();
        if (!shared.ledger.is_running() || shared.waitlist.waiting() > 0)
            && shared.ledger.actor_alive()
        {
            let _ = shared.mailbox_tx.try_send(Msg::Freed);
        }
    }
}
