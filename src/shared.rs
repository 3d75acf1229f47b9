//! The state every handle, guard and the actor share: configuration, counters, the queues,
//! the waitlist, and the messages to the actor. Below the actor, the guard and the handle;
//! imports none of them.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use event_listener::Event;
use futures_lite::FutureExt;

use crate::config::Config;
use crate::deadline::Expire;
use crate::error::{CreateFailure, Error};
use crate::hooks::{self, Hooks};
use crate::ledger::{Ending, Flow, Ledger, Reason};
use crate::manager::Manager;
use crate::runtime::{timed, Runtime};
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
    /// A connection a guard gave back, for the after-return hook to run on before it goes
    /// back to the idle queue (it counts as checked out until then).
    Returned(Idle<C>),
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

/// The bits of `Idle::created_ms` that hold the stamp; the 16 above hold the connection's
/// share of the lifetime jitter (see [`lifetime_of`]). 2^48 ms is some 8,900 years.
const STAMP: u64 = (1 << 48) - 1;

impl<C> Idle<C> {
    /// A connection fresh from `create` at `now_ms`, made by the actor of `home`, with `draw`
    /// (a random number) choosing its share of the lifetime jitter.
    pub(crate) fn fresh(conn: C, now_ms: u64, home: u32, draw: u16) -> Self {
        Idle {
            conn,
            created_ms: (now_ms & STAMP) | (u64::from(draw) << 48),
            returned_ms: now_ms,
            checkouts: 0,
            home,
        }
    }

    /// When it was created, in the pool's milliseconds.
    #[inline]
    pub(crate) fn created(&self) -> u64 {
        self.created_ms & STAMP
    }

    /// Its draw of the lifetime jitter.
    #[inline]
    fn draw(&self) -> u16 {
        (self.created_ms >> 48) as u16
    }
}

/// The lifetime of a connection whose jitter draw is `draw`: `lifetime_ms` shortened by
/// `draw / 65536` of `jitter_ms`, so that connections made together (a pool's start, a
/// fleet's deploy) reach their lifetime spread over `jitter_ms` rather than in one instant.
/// `u64::MAX` (no lifetime) stays none.
#[inline]
pub(crate) fn lifetime_of(lifetime_ms: u64, jitter_ms: u64, draw: u16) -> u64 {
    if lifetime_ms == u64::MAX {
        return u64::MAX;
    }
    // `jitter_ms` is held below 2^47 (`Config::jitter_ms`): the product fits.
    let shave = (jitter_ms * u64::from(draw)) >> 16;
    lifetime_ms.saturating_sub(shave)
}

/// A connection the after-create hook has not accepted yet: not the pool's, not counted.
/// Dropped with it still inside, it is closed with the manager's synchronous `close`.
struct Unpooled<'a, M: Manager> {
    shared: &'a Shared<M>,
    conn: Option<M::Connection>,
}

impl<M: Manager> Drop for Unpooled<'_, M> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = self.shared.close_uncounted(conn);
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
    /// `config.jitter_ms()`, worked out once.
    pub(crate) jitter_ms: u64,
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
    /// The application's hooks (`Builder::after_create` and the others).
    pub(crate) hooks: Hooks<M::Connection>,
    /// A connection that waited in the pool gets a step before its checkout: the manager's
    /// check (`check_on_checkout`), the before-checkout hook, or both.
    pub(crate) checks_idle: bool,
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
    /// The manager's `create`, then the after-create hook when there is one, each panic
    /// contained: what the actor and a caller creating for itself both run, bounded by their
    /// timeouts. A connection the hook rejects is ended here, with the manager's goodbye
    /// (bounded by the shutdown timeout): it was never the pool's, and is not counted as
    /// created.
    pub(crate) async fn make(&self) -> Result<M::Connection, CreateFailure<M::Error>> {
        #[cfg(feature = "metrics")]
        let since = crate::metrics::Since::now();
        let made = AssertUnwindSafe(self.manager.create()).catch_unwind().await;
        #[cfg(feature = "metrics")]
        self.ledger
            .metrics
            .created(since, matches!(made, Ok(Ok(_))));
        let conn = match made {
            Ok(Ok(conn)) => conn,
            Ok(Err(error)) => return Err(self.create_failure(error)),
            Err(_panic) => return Err(CreateFailure::Panicked),
        };
        let Some(hook) = &self.hooks.after_create else {
            return Ok(conn);
        };
        // Held so that a creation cut short while the hook runs (the create timeout, a close,
        // a runtime teardown) closes the connection, synchronously.
        let mut unpooled = Unpooled {
            shared: self,
            conn: Some(conn),
        };
        let now = self.ledger.real_now_ms();
        let metrics = Metrics::at(self.ledger.epoch(), now, now, 0);
        let conn = unpooled.conn.as_mut().expect("set just above");
        let outcome = hooks::run(hook, conn, &metrics).await;
        let conn = unpooled.conn.take().expect("taken only here");
        match outcome {
            Ok(()) => Ok(conn),
            Err(error) => {
                self.ledger.record_hook_failed();
                event!(warn, error = %error, "the after-create hook failed; ending the new connection");
                let farewell =
                    std::panic::catch_unwind(AssertUnwindSafe(|| self.manager.shutdown(conn)));
                if let Ok(farewell) = farewell {
                    let farewell = AssertUnwindSafe(farewell).catch_unwind();
                    let _ = timed(&*self.runtime, self.config.shutdown_timeout, farewell).await;
                }
                Err(CreateFailure::Hook(error))
            }
        }
    }

    /// A creation error as the pool treats it: permanent when the manager says so (a panic
    /// in `is_permanent` counts as transient).
    pub(crate) fn create_failure(&self, error: M::Error) -> CreateFailure<M::Error> {
        let permanent =
            std::panic::catch_unwind(AssertUnwindSafe(|| self.manager.is_permanent(&error)))
                .unwrap_or(false);
        if permanent {
            CreateFailure::Permanent(Arc::new(error))
        } else {
            CreateFailure::Backend(error)
        }
    }

    /// A permanent creation failure: every waiter is told at once. Returns the failure to
    /// record as the last one.
    pub(crate) fn fail_waiters(
        &self,
        failure: CreateFailure<M::Error>,
    ) -> Option<CreateFailure<M::Error>> {
        match failure {
            CreateFailure::Permanent(error) => {
                self.waitlist
                    .fail_all(|| CreateFailure::Permanent(error.clone()));
                Some(CreateFailure::Permanent(error))
            }
            failure if self.config.fail_fast => self.waitlist.fail_first(failure),
            failure => Some(failure),
        }
    }

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

    /// Hands a connection a guard gave back to the actor, for the after-return hook; closes
    /// it instead (as broken: its hook cannot run) when no actor can take it — the pool is
    /// closing, or a pool whose runtime follows its callers is between runtimes.
    pub(crate) fn recycle(&self, entry: Idle<M::Connection>) {
        let entry = if self.ledger.actor_alive() && entry.home == self.waitlist.home() {
            match self.mailbox_tx.try_send(Msg::Returned(entry)) {
                Ok(()) => return,
                Err(e) => match e.into_inner() {
                    Msg::Returned(entry) => entry,
                    _ => unreachable!("try_send hands back the message it was given"),
                },
            }
        } else {
            entry
        };
        if entry.home != self.waitlist.home() {
            self.ledger.record_reason(crate::ledger::Reason::Moved);
        } else if self.ledger.is_running() {
            self.ledger.record_reason(crate::ledger::Reason::Broken);
        }
        self.retire(entry.conn, entry.home, true);
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
    #[inline(always)]
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
            entry.created(),
            entry.returned_ms & !UNCONFIRMED,
            u64::from(entry.checkouts),
        )
    }

    /// Whether `entry` was made before the last refresh, or is past its lifetime or its idle
    /// timeout, and which.
    pub(crate) fn expiry(&self, entry: &Idle<M::Connection>) -> Option<Reason> {
        let created = entry.created();
        if created < self.ledger.refresh_mark() {
            return Some(Reason::Refreshed);
        }
        let now = self.ledger.now_ms();
        // A limit of u64::MAX is none: no difference of stamps reaches it.
        let over = |since: u64, limit_ms: u64| now.saturating_sub(since) >= limit_ms;
        if over(
            created,
            lifetime_of(self.lifetime_ms, self.jitter_ms, entry.draw()),
        ) {
            Some(Reason::MaxLifetime)
        } else if entry.returned_ms & UNCONFIRMED == 0 && over(entry.returned_ms, self.idle_ms) {
            Some(Reason::IdleTimeout)
        } else {
            None
        }
    }

    /// The stamp of a connection made at `now`: never before the last refresh's mark, so that
    /// a connection made after a refresh (its stamp read from a coarse clock that may lag) is
    /// not taken for one made before it.
    pub(crate) fn created_stamp(&self, now: u64) -> u64 {
        now.max(self.ledger.refresh_mark())
    }

    /// A random draw for a new connection's share of the lifetime jitter.
    pub(crate) fn jitter_draw(&self) -> u16 {
        self.ledger.random() as u16
    }

    /// Retires every connection made until now: idle ones at once (each with its goodbye
    /// through the actor), checked-out ones as they come back, and asks the actor to make new
    /// ones for whoever waits. Returns how many idle ones it retired.
    pub(crate) fn refresh(&self) -> usize {
        if !self.ledger.is_running() {
            return 0;
        }
        // Marked before the idle queue is read. A guard giving a connection back reads the mark
        // again after it put the connection there (`reap_refreshed`): either that read sees
        // this mark and the guard takes its connection out, or it came first, and then this
        // reap, which follows the mark, finds the connection in the queue.
        let gone = if crate::sync::planted(crate::sync::Bug::RefreshReapBeforeMark) {
            let gone = self.waitlist.reap(|_| true);
            self.ledger.mark_refresh();
            gone
        } else {
            let mark = self.ledger.mark_refresh();
            self.waitlist.reap(|entry| entry.created() < mark)
        };
        event!(
            debug,
            "the pool is refreshed: every connection made before now is retired"
        );
        let retired = gone.len();
        for entry in gone {
            self.ledger.record_reason(Reason::Refreshed);
            self.retire(entry.conn, entry.home, false);
        }
        let _ = self.mailbox_tx.try_send(Msg::Grow);
        retired
    }

    /// A connection made at `created` was just put back: if a refresh marked it stale
    /// meanwhile, retires the stale idle ones (it among them) now. See [`Shared::refresh`].
    #[inline]
    pub(crate) fn reap_if_refreshed(&self, created: u64) {
        if created < self.ledger.refresh_mark_ordered() {
            self.reap_refreshed();
        }
    }

    #[cold]
    fn reap_refreshed(&self) {
        let mark = self.ledger.refresh_mark_ordered();
        for entry in self.waitlist.reap(|entry| entry.created() < mark) {
            self.ledger.record_reason(Reason::Refreshed);
            self.retire(entry.conn, entry.home, false);
        }
    }

    /// Checkouts and returns the waitlist counted (see [`Waitlist::flow`]).
    pub(crate) fn flow(&self) -> Flow {
        let (taken, returned) = self.waitlist.flow();
        Flow { taken, returned }
    }

    /// A snapshot; with the `metrics` feature, also published (`src/metrics.rs`).
    pub(crate) fn status(&self) -> Status {
        let status = Status {
            max_size: self.ledger.max_size(),
            size: self.ledger.slots(),
            idle: self.waitlist.idle(),
            in_use: self.ledger.in_use(self.flow()),
            waiters: self.waitlist.waiting(),
            state: self.ledger.state(),
            actor_alive: self.ledger.actor_alive(),
            counters: self.ledger.counters(self.flow()),
        };
        #[cfg(feature = "metrics")]
        self.ledger.metrics.publish(&status);
        status
    }
}

impl<M: Manager> Expire for Shared<M> {
    fn expire(&self, at: Instant, now: Instant) -> Option<Instant> {
        self.waitlist.expire(at, now)
    }
}

#[cfg(test)]
mod tests {
    use super::lifetime_of;

    #[test]
    fn lifetimes_spread_over_the_jitter_and_none_stays_none() {
        let (life, jitter) = (1_800_000, 45_000);
        assert_eq!(lifetime_of(life, jitter, 0), life);
        assert_eq!(lifetime_of(life, jitter, u16::MAX), life - 44_999);
        assert_eq!(lifetime_of(life, jitter, 1 << 15), life - 22_500);
        assert_eq!(lifetime_of(u64::MAX, jitter, 77), u64::MAX);
        assert_eq!(lifetime_of(life, 0, 77), life);
        // Eight draws in a row from the pool's generator land apart, not in one instant.
        let ledger = crate::ledger::Ledger::new();
        let mut ends: Vec<u64> = (0..8)
            .map(|_| lifetime_of(life, jitter, ledger.random() as u16))
            .collect();
        ends.sort_unstable();
        ends.dedup();
        assert!(ends.len() >= 7, "{ends:?}");
        assert!(ends[ends.len() - 1] - ends[0] > jitter / 4, "{ends:?}");
    }
}
