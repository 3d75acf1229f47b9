//! The state every handle, guard and the actor share: configuration, counters, the queues,
//! the waitlist, and the messages to the actor. Below the actor, the guard and the handle;
//! imports none of them.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use event_listener::Event;

use crate::config::Config;
use crate::deadline::Expire;
use crate::error::Error;
use crate::ledger::{Ending, Flow, Ledger, Reason};
use crate::manager::Manager;
use crate::runtime::Runtime;
use crate::status::{CloseCause, CloseReport, Metrics, Status};
use crate::sync::Mutex;
use crate::waitlist::Waitlist;

/// Messages to the actor.
pub(crate) enum Msg<C> {
    /// A caller is waiting and the pool has room: create.
    Grow,
    /// A slot was freed outside the actor (a detach): serve waiters, or finish a close.
    Freed,
    /// A connection that must not be reused: close it gracefully (synchronously if it belongs
    /// to an older `home` than the actor's).
    Retire {
        conn: C,
        home: u32,
        from_guard: bool,
    },
    /// Close the pool.
    Close,
    /// Idle connections taken at close whose goodbyes are still to be said: the rest of a
    /// batch whose farewell did not finish at once.
    Farewells(std::collections::VecDeque<Idle<C>>),
}

/// Marks a return stamp as the actor's coarse clock at the return, which may be behind the real
/// return: see [`Shared::put_returned`].
pub(crate) const UNCONFIRMED: u64 = 1 << 63;

/// A connection waiting in the idle queue, with the coarse times the reaper needs.
pub(crate) struct Idle<C> {
    pub(crate) conn: C,
    pub(crate) created_ms: u64,
    /// When it was last returned (or created), in the pool's milliseconds; with
    /// [`UNCONFIRMED`] set, a lower bound only, until the reaper confirms it.
    pub(crate) returned_ms: u64,
    /// Times checked out so far.
    pub(crate) checkouts: u32,
    /// The home (the actor, counted from 0) that created it: see [`Waitlist::evict`].
    pub(crate) home: u32,
}

impl<C> Idle<C> {
    /// A connection fresh from `create` at `now_ms`, made by the actor of `home`.
    pub(crate) fn fresh(conn: C, now_ms: u64, home: u32) -> Self {
        Idle {
            conn,
            created_ms: now_ms,
            returned_ms: now_ms,
            checkouts: 0,
            home,
        }
    }
}

/// A callback for creation failures.
pub(crate) type ErrorSink<E> = Box<dyn Fn(&Error<E>) + Send + Sync>;

/// The part every handle, guard and the actor share.
pub(crate) struct Shared<M: Manager> {
    pub(crate) manager: M,
    pub(crate) config: Config,
    /// `config.max_lifetime` and `config.idle_timeout` in milliseconds, `u64::MAX` for none:
    /// worked out once, not on every checkout.
    pub(crate) lifetime_ms: u64,
    pub(crate) idle_ms: u64,
    pub(crate) runtime: Arc<dyn Runtime>,
    /// The runtime follows the caller ([`Runtime::ambient`]): the actor is started by the
    /// first caller, and started again when its runtime goes away.
    pub(crate) ambient: bool,
    pub(crate) ledger: Ledger,
    /// Idle connections and the callers waiting for one.
    pub(crate) waitlist: Waitlist<Idle<M::Connection>, M::Error>,
    pub(crate) mailbox_tx: Sender<Msg<M::Connection>>,
    /// Kept here too, so that a closer can drain the mailbox when the actor cannot.
    pub(crate) mailbox_rx: Receiver<Msg<M::Connection>>,
    /// The last creation failure, while creations keep failing: the source of a waiter's
    /// timeout. Cold path: written by the actor when a creation ends, read on a timeout.
    pub(crate) last_create_error: Mutex<Option<Arc<Error<M::Error>>>>,
    /// Told of every creation failure no caller receives (`Builder::on_create_error`).
    pub(crate) on_create_error: Option<ErrorSink<M::Error>>,
    /// Notified when the close finishes.
    pub(crate) closed: Event,
    /// Notified when the close starts: a caller creating a connection itself gives up.
    pub(crate) closing: Event,
    pub(crate) close: Mutex<CloseState>,
}

/// What the close protocol records under its lock.
#[derive(Default)]
pub(crate) struct CloseState {
    pub(crate) started: Option<(Instant, CloseCause)>,
    pub(crate) report: Option<CloseReport>,
    /// The close deadline in force, when a closer asked for its own: the shortest asked.
    pub(crate) deadline: Option<Duration>,
}

impl<M: Manager> Shared<M> {
    /// The error a caller gets once close has started.
    pub(crate) fn closed_error(&self) -> Error<M::Error> {
        match self.lock_close().started {
            Some((_, CloseCause::RuntimeGone)) => Error::RuntimeGone,
            _ => Error::Closed,
        }
    }

    /// The last creation failure, if the last creation failed.
    pub(crate) fn last_create_error(&self) -> Option<Arc<Error<M::Error>>> {
        self.last_create_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes the last creation failure out, if the last creation failed and nobody else
    /// holds it: the error itself.
    pub(crate) fn take_create_error(&self) -> Option<Error<M::Error>> {
        let mut last = self
            .last_create_error
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let error = last.take()?;
        match Arc::try_unwrap(error) {
            Ok(error) => Some(error),
            Err(shared) => {
                *last = Some(shared);
                None
            }
        }
    }

    /// Tells the error sink, if any, of a creation failure no caller receives. A sink that
    /// panics is contained.
    pub(crate) fn report_create_error(&self, error: &Error<M::Error>) {
        if let Some(sink) = &self.on_create_error {
            let _ = std::panic::catch_unwind(AssertUnwindSafe(|| sink(error)));
        }
    }

    /// Records how the last creation ended (`None`: it succeeded).
    pub(crate) fn set_last_create_error(&self, error: Option<Error<M::Error>>) {
        let mut last = self
            .last_create_error
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if error.is_some() || last.is_some() {
            *last = error.map(Arc::new);
        }
    }

    pub(crate) fn lock_close(&self) -> crate::sync::MutexGuard<'_, CloseState> {
        // A panic while the lock was held cannot leave CloseState half-written in a way that
        // matters: every field is set in one assignment.
        self.close
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Ends a connection that must not be reused: gracefully through the actor when it is
    /// alive and the connection is of its home, else synchronously here. `from_guard` says it
    /// was checked out.
    pub(crate) fn retire(&self, conn: M::Connection, home: u32, from_guard: bool) {
        let moved = home != self.waitlist.home();
        let conn = if self.ledger.actor_alive() && !moved {
            match self.mailbox_tx.try_send(Msg::Retire {
                conn,
                home,
                from_guard,
            }) {
                Ok(()) => return,
                Err(e) => match e.into_inner() {
                    Msg::Retire { conn, .. } => conn,
                    _ => unreachable!("try_send hands back the message it was given"),
                },
            }
        } else {
            conn
        };
        if from_guard {
            self.ledger.check_in();
        }
        self.close_sync(conn);
        if moved && self.ledger.actor_alive() {
            // A slot of the old home is free, and the new home's actor does not know: it may
            // have callers waiting for one.
            let _ = self.mailbox_tx.try_send(Msg::Freed);
        }
    }

    /// Closes a connection with the manager's synchronous `close`, containing any panic.
    /// Needs no runtime; safe in `Drop`.
    pub(crate) fn close_sync(&self, conn: M::Connection) {
        let ending = self.close_uncounted(conn);
        self.ledger.record_end(ending);
    }

    /// Like [`close_sync`](Shared::close_sync), leaving the count to the caller: a drain
    /// counts what it closed once, at its end.
    pub(crate) fn close_uncounted(&self, conn: M::Connection) -> Ending {
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.manager.close(conn))) {
            Ok(Ok(())) => Ending::Sync,
            Ok(Err(_error)) => {
                event!(warn, error = %_error, "the manager's close failed");
                Ending::Failed
            }
            Err(payload) => {
                event!(warn, "the manager's close panicked");
                // Dropping a panic payload can itself panic; keep it from unwinding out of here.
                let _ = std::panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
                Ending::Failed
            }
        }
    }

    /// Makes a connection available: to the longest waiter if any, else to the idle queue.
    /// Gives it back when the pool is closing (the caller retires it). `fresh`: it comes
    /// straight from `create`, so a waiter handed it skips the health check.
    pub(crate) fn put_idle(
        &self,
        entry: Idle<M::Connection>,
        fresh: bool,
    ) -> Result<(), Idle<M::Connection>> {
        let home = entry.home;
        self.waitlist.put(entry, home, fresh, false, |_| {})
    }

    /// Like [`put_idle`](Shared::put_idle) for a connection a guard gives back. Reads no
    /// clock: the return is stamped with the actor's coarse clock, marked [`UNCONFIRMED`],
    /// which may be behind the real return. An unconfirmed stamp never counts as idle time;
    /// the actor's next maintenance tick replaces it with its own time, which is after the
    /// real return (see [`Shared::confirm_return`]), so the idle timeout never runs out early,
    /// and runs out at most one maintenance interval late.
    #[inline]
    pub(crate) fn put_returned(
        &self,
        mut entry: Idle<M::Connection>,
    ) -> Result<(), Idle<M::Connection>> {
        entry.returned_ms = self.ledger.now_ms() | UNCONFIRMED;
        let home = entry.home;
        self.waitlist.put(entry, home, false, true, |_| {})
    }

    /// At a maintenance tick (`now`, just read): an idle connection whose return is not
    /// confirmed was returned before `now`, which becomes its stamp.
    pub(crate) fn confirm_return(&self, entry: &mut Idle<M::Connection>, now: u64) {
        if entry.returned_ms & UNCONFIRMED != 0 {
            entry.returned_ms = now;
        }
    }

    /// What the pool knows of the connection in `entry`.
    pub(crate) fn metrics_of(&self, entry: &Idle<M::Connection>) -> Metrics {
        Metrics::at(
            self.ledger.epoch(),
            entry.created_ms,
            entry.returned_ms & !UNCONFIRMED,
            u64::from(entry.checkouts),
        )
    }

    /// Whether `entry` is past its lifetime or its idle timeout, and which.
    pub(crate) fn expiry(&self, entry: &Idle<M::Connection>) -> Option<Reason> {
        let now = self.ledger.now_ms();
        // A limit of u64::MAX is none: no difference of stamps reaches it.
        let over = |since: u64, limit_ms: u64| now.saturating_sub(since) >= limit_ms;
        if over(entry.created_ms, self.lifetime_ms) {
            Some(Reason::MaxLifetime)
        } else if entry.returned_ms & UNCONFIRMED == 0 && over(entry.returned_ms, self.idle_ms) {
            Some(Reason::IdleTimeout)
        } else {
            None
        }
    }

    /// Checkouts and returns the waitlist counted (see [`Waitlist::flow`]).
    pub(crate) fn flow(&self) -> Flow {
        let (taken, returned) = self.waitlist.flow();
        Flow { taken, returned }
    }

    pub(crate) fn status(&self) -> Status {
        Status {
            max_size: self.ledger.max_size(),
            size: self.ledger.slots(),
            idle: self.waitlist.idle(),
            in_use: self.ledger.in_use(self.flow()),
            waiters: self.waitlist.waiting(),
            state: self.ledger.state(),
            actor_alive: self.ledger.actor_alive(),
            counters: self.ledger.counters(self.flow()),
        }
    }
}

impl<M: Manager> Expire for Shared<M> {
    fn expire(&self, at: Instant, now: Instant) -> Option<Instant> {
        self.waitlist.expire(at, now)
    }
}
