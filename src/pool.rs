//! The pool handle, its builder, and checkout.

use std::fmt;
use std::future::{poll_fn, Future};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use event_listener::Event;
use futures_lite::FutureExt;

use crate::actor::PoolActor;
use crate::config::{Config, ConfigError, QueueOrder, PREALLOCATED_IDLE_LIMIT};
use crate::deadline::{self, Expire};
use crate::error::{CreateFailure, Error};
use crate::guard::Pooled;
use crate::hooks::{HookFuture, Hooks};
use crate::ledger::{Ledger, Reason};
use crate::manager::{Manager, Unhealthy};
use crate::runtime::{BoxFuture, Runtime, SpawnError};
use crate::shared::{CloseState, Idle, Msg, Shared};
use crate::status::{CloseCause, CloseReport, Metrics, PoolState, Status};
use crate::sync::Mutex;
use crate::waitlist::{Claim, Closed, Join, Outcome, Ticket, Waitlist};

/// A handle to a connection pool. Cheap to clone, `Send + Sync`.
///
/// Dropping the last handle starts a close without blocking; connections checked out at that
/// moment are closed when their guards drop.
pub struct Pool<M: Manager> {
    pub(crate) shared: Arc<Shared<M>>,
}

impl<M: Manager> Clone for Pool<M> {
    fn clone(&self) -> Self {
        self.shared.ledger.add_handle();
        Pool {
            shared: self.shared.clone(),
        }
    }
}

impl<M: Manager> Drop for Pool<M> {
    fn drop(&mut self) {
        if self.shared.ledger.drop_handle() {
            self.shared.begin_close(CloseCause::LastHandleDropped);
        }
    }
}

impl<M: Manager> fmt::Debug for Pool<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("status", &self.status())
            .finish()
    }
}

/// A `get` that sees this many connections fail their health check takes the idle ones it
/// meets next as stale (a backend that restarted), closes them unchecked, and waits for a new
/// one. Bounds the checks one `get` runs, whatever the manager does.
const UNHEALTHY_PER_GET: u32 = 3;

/// How many times one `get` starts the pool's actor on its own runtime and sees it dropped
/// again before being served (the runtime is shutting down) before it gives up with
/// [`Error::Spawn`]. Moves away from other callers' runtimes are not counted: each is a
/// runtime that ended, and the wait timeout bounds them.
const MOVES_PER_GET: u32 = 3;

/// One `get`'s time budget and what it has met so far. The clock is read only once the call
/// has to wait for something: a health check that does not finish at once, or a connection.
struct Budget {
    timeout: Option<Duration>,
    started: Option<Instant>,
    unhealthy: u32,
}

impl Budget {
    fn new(timeout: Option<Duration>) -> Self {
        Budget {
            timeout,
            started: None,
            unhealthy: 0,
        }
    }

    /// When the call started waiting, read now the first time it is asked.
    fn start(&mut self) -> Instant {
        *self.started.get_or_insert_with(Instant::now)
    }

    /// What is left of the wait timeout (`None`: no timeout).
    fn remaining(&mut self) -> Option<Duration> {
        let timeout = self.timeout?;
        Some(timeout.saturating_sub(self.start().elapsed()))
    }

    fn waited(&self) -> Duration {
        self.started.map_or(Duration::ZERO, |at| at.elapsed())
    }

    fn spent(&mut self) -> bool {
        self.remaining() == Some(Duration::ZERO)
    }

    /// Whether connections that waited in the pool are still worth a health check.
    fn trusts_idle(&self) -> bool {
        self.unhealthy < UNHEALTHY_PER_GET
    }
}

/// Runs the manager's health check (with `check_on_checkout`) and the before-checkout hook
/// (when set) on a checking guard's connection, each panic contained, bounded by the check
/// timeout and what is left of the wait timeout (the clock is read only if the check does not
/// finish on its first poll), and cut short by the pool's close; evaluates to
/// [`Pool::checked`]'s result.
///
/// A macro, not an `async fn`: it runs on every checkout of an idle connection, from the
/// hot path and from the waiting one, and an `async fn` called from both is a separate
/// function the hot path calls rather than inlines. One flat poll loop rather than nested
/// async calls: every level of nesting adds to the size of the `get` future, which the caller
/// copies as it awaits it. The hook, when there is one, runs in a boxed future of its own, so
/// a pool without one pays a branch for it.
macro_rules! run_check {
    ($pool:expr, $guard:ident, $budget:ident) => {{
        let pool = $pool;
        let shared = &*pool.shared;
        let metrics = Pooled::metrics(&$guard);
        let mut timer: Option<BoxFuture> = None;
        let mut closing: Option<event_listener::EventListener> = None;
        let mut limited = false;
        let mut checked = {
            // In a block: the check borrows the connection until it is done.
            let mut check = std::pin::pin!(shared.config.check_on_checkout.then(|| {
                AssertUnwindSafe(shared.manager.check($guard.conn_mut(), &metrics)).catch_unwind()
            }));
            poll_fn(|cx| {
                let polled = match check.as_mut().as_pin_mut() {
                    Some(check) => check.poll(cx),
                    None => Poll::Ready(Ok(Ok(()))),
                };
                if let Poll::Ready(out) = polled {
                    return Poll::Ready(Some(out));
                }
                if !limited {
                    limited = true;
                    // Listening before looking at the state: a close that starts after the
                    // look wakes the listener.
                    closing = Some(shared.closing.listen());
                    let limit = match (shared.config.check_timeout, $budget.remaining()) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    match limit {
                        Some(Duration::ZERO) => return Poll::Ready(None),
                        Some(d) => timer = Some(shared.runtime.sleep(d)),
                        None => {}
                    }
                }
                // The pool's close ends a check that hangs (a silent server): the caller then
                // finds the pool closed.
                if let Some(listener) = closing.as_mut() {
                    if !shared.ledger.is_running()
                        || std::pin::Pin::new(listener).poll(cx).is_ready()
                    {
                        return Poll::Ready(None);
                    }
                }
                match timer.as_mut().map(|t| t.as_mut().poll(cx)) {
                    Some(Poll::Ready(())) => Poll::Ready(None),
                    _ => Poll::Pending,
                }
            })
            .await
        };
        if shared.hooks.before_checkout.is_some() && matches!(checked, Some(Ok(Ok(())))) {
            checked = pool
                .before_checkout(&mut $guard, &metrics, &mut $budget)
                .await;
        }
        pool.checked(&mut $guard, &mut $budget, checked)
    }};
}

impl<M: Manager> Pool<M> {
    /// Starts configuring a pool for `manager`.
    pub fn builder(manager: M) -> Builder<M> {
        Builder {
            manager,
            config: Config::default(),
            runtime: None,
            on_create_error: None,
            hooks: Hooks::default(),
        }
    }

    /// Checks a connection out, waiting up to the configured wait timeout.
    ///
    /// Takes an idle connection when there is one, with no round trip to the actor. Otherwise,
    /// when nobody waits ahead of it, the pool has room and the call runs on the pool's
    /// runtime ([`Runtime::is_current`]), creates the connection itself; else asks the actor to
    /// create one (never more than `max_size` alive) and waits, in FIFO order with other
    /// waiters, first come, first served. The whole call, health check and creation included,
    /// keeps to the wait timeout.
    ///
    /// # Errors
    ///
    /// - [`Error::Timeout`] when no connection came in time. While the backend refuses new
    ///   connections the pool retries with backoff and the caller keeps waiting; its timeout
    ///   then carries the last creation error as `last_error` (and as its `source()`).
    /// - [`Error::Backend`], [`Error::ManagerTimeout`], [`Error::ManagerPanicked`]: a creation
    ///   failure handed over at once, with [`Builder::fail_fast`] only.
    /// - [`Error::Closed`] once close has started (a waiter is woken with it), or
    ///   [`Error::RuntimeGone`] when the runtime the pool's actor ran on has shut down.
    // Not an `async fn` wrapping `get_inner`: that would be one more layer of future around
    // it, which the caller copies as it awaits it. The future is `Send` when `M` is.
    pub fn get(&self) -> impl Future<Output = Result<Pooled<M>, Error<M::Error>>> + '_ {
        self.get_inner(self.shared.config.wait_timeout, true)
    }

    /// Like [`get`](Pool::get), but waits at most `timeout`.
    pub fn get_timeout(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = Result<Pooled<M>, Error<M::Error>>> + '_ {
        self.get_inner(Some(timeout), true)
    }

    /// Checks out an idle connection if there is one, never waiting for a connection to be
    /// created or returned ([`Error::Exhausted`] then). Still runs the health check.
    pub fn try_get(&self) -> impl Future<Output = Result<Pooled<M>, Error<M::Error>>> + '_ {
        self.get_inner(None, false)
    }

    /// Closes the pool and waits until it is closed. Idempotent: every caller gets the same
    /// report.
    ///
    /// At once: `get()` starts failing with [`Error::Closed`](crate::Error::Closed), every
    /// waiter is woken with it, and idle connections are closed. Checked-out connections are
    /// closed as their guards drop, for up to the close deadline; those still out then are
    /// closed when their guards drop, and the report counts them in `checked_out`.
    ///
    /// Never hangs: if the actor is gone or does not finish by the deadline (a runtime that is
    /// not being polled), the close finishes here with the synchronous fallback.
    pub async fn close(&self) -> CloseReport {
        self.shared.close(None).await
    }

    /// Like [`close`](Pool::close), with `deadline` instead of the configured close deadline:
    /// the close finishes within it (plus 100 ms should the actor not answer). Goodbyes still
    /// under way then are cut short (those connections count as `closed_sync`), and
    /// checked-out connections still out are closed when their guards drop (`checked_out` in
    /// the report). A shorter deadline than one already in force shortens a close under way;
    /// a longer one does not lengthen it.
    ///
    /// `close_within(Duration::ZERO)` is "close now": only goodbyes that finish at once are
    /// said. For a shutdown that cannot wait for requests in flight but can spare a moment
    /// for goodbyes, or a task that closes while holding guards itself, give a short deadline
    /// (50 ms, say) instead.
    ///
    /// ```
    /// # use gracepool_testkit::{Counting, ExecRuntime};
    /// # let rt = ExecRuntime::new();
    /// # let pool = gracepool::Pool::builder(Counting::new()).max_size(4).runtime(rt.handle()).build().unwrap();
    /// # rt.block_on(async {
    /// let held = pool.get().await.unwrap();
    /// // This task holds a guard: `close()` would wait the whole deadline for it.
    /// let report = pool.close_within(std::time::Duration::ZERO).await;
    /// assert_eq!(report.checked_out, 1); // closed when `held` drops
    /// drop(held);
    /// # });
    /// ```
    pub async fn close_within(&self, deadline: Duration) -> CloseReport {
        self.shared.close(Some(deadline)).await
    }

    /// Closes the pool from synchronous code, blocking the thread for at most `patience`.
    ///
    /// Needs no runtime and never calls any runtime's `block_on`: it parks the thread until
    /// the actor finishes the close, and finishes it with the synchronous fallback when the
    /// actor is gone or `patience` runs out (as it will when called on the very thread that
    /// should be polling the actor). Idempotent.
    pub fn close_blocking(&self, patience: Duration) -> CloseReport {
        self.shared.close_blocking(patience)
    }

    /// Starts the close [`close`](Pool::close) does and returns at once, without waiting for it
    /// to finish: for synchronous code that must not block (an actix actor's `stopped`, a
    /// `Drop`) but wants the graceful path. Idempotent.
    ///
    /// While the pool's actor is alive, it closes every connection gracefully, as for
    /// `close()`; [`close`](Pool::close) or [`close_blocking`](Pool::close_blocking) later
    /// returns the report. When the actor is gone, the close finishes here and now with the
    /// synchronous fallback. Never blocks, spawns or panics.
    pub fn begin_close(&self) {
        self.shared.begin_close(CloseCause::Requested);
    }

    /// Closes every idle connection for which `keep` returns false — "older than ten minutes",
    /// "created before the fail-over" — and returns how many it closed. Each is closed
    /// gracefully (its goodbye through the pool's actor; synchronously once the actor is
    /// gone), and its place is free for a new one. Checked-out connections are not looked at.
    /// Safe to call at any time, during a close too: each connection still ends exactly once.
    ///
    /// ```
    /// # use gracepool_testkit::{Counting, ExecRuntime};
    /// # let rt = ExecRuntime::new();
    /// # let pool = gracepool::Pool::builder(Counting::new()).max_size(4).runtime(rt.handle()).build().unwrap();
    /// # rt.block_on(async {
    /// drop(pool.get().await.unwrap());
    /// // Close every idle connection older than ten minutes (none is, yet).
    /// let ten_minutes = std::time::Duration::from_secs(600);
    /// assert_eq!(pool.retain(|_conn, metrics| metrics.age() < ten_minutes), 0);
    /// // Or made before a fail-over, say: every one so far.
    /// assert_eq!(pool.retain(|_conn, _metrics| false), 1);
    /// # pool.close().await;
    /// # });
    /// ```
    pub fn retain(&self, mut keep: impl FnMut(&M::Connection, &Metrics) -> bool) -> usize {
        let shared = &self.shared;
        let gone = shared
            .waitlist
            .reap(|entry| !keep(&entry.conn, &shared.metrics_of(entry)));
        let closed = gone.len();
        for entry in gone {
            shared.ledger.record_reason(Reason::Retained);
            shared.retire(entry.conn, entry.home, false);
        }
        closed
    }

    /// Changes the most connections alive at once, while the pool runs.
    ///
    /// Growing serves waiting callers at once (the actor creates for them). Shrinking closes
    /// surplus idle connections at once, gracefully, and the rest of the surplus as they come
    /// back; nothing checked out is taken away. `min_idle` is held at most `max_size`. After
    /// close has started it changes nothing. Fails only for 0 (`ConfigError::MaxSizeZero`).
    ///
    /// ```
    /// # use gracepool_testkit::{Counting, ExecRuntime};
    /// # let rt = ExecRuntime::new();
    /// # let pool = gracepool::Pool::builder(Counting::new()).max_size(4).runtime(rt.handle()).build().unwrap();
    /// # rt.block_on(async {
    /// pool.resize(16).unwrap(); // a traffic peak
    /// assert_eq!(pool.status().max_size, 16);
    /// pool.resize(2).unwrap(); // and back
    /// assert!(pool.resize(0).is_err());
    /// # pool.close().await;
    /// # });
    /// ```
    pub fn resize(&self, max_size: usize) -> Result<(), ConfigError> {
        if max_size == 0 {
            return Err(ConfigError::MaxSizeZero);
        }
        let shared = &self.shared;
        if !shared.ledger.is_running() {
            return Ok(());
        }
        shared
            .ledger
            .set_limits(max_size, shared.config.min_idle.min(max_size));
        let excess = shared.ledger.slots().saturating_sub(max_size);
        let mut closing = excess;
        let gone = shared.waitlist.reap(|_| {
            let take = closing > 0;
            closing -= usize::from(take);
            take
        });
        shared.ledger.set_surplus(excess - gone.len());
        for entry in gone {
            shared.ledger.record_reason(Reason::Resized);
            shared.retire(entry.conn, entry.home, false);
        }
        // Growing: waiters are served now, not at the next event.
        let _ = shared.mailbox_tx.try_send(Msg::Grow);
        Ok(())
    }

    /// Retires every connection made until now — idle ones at once, each with its goodbye
    /// through the pool's actor, checked-out ones as they come back — while callers are
    /// served throughout by new connections, made with the usual backoff. For a database that
    /// moved (a failover promoted another server, rotated credentials, a new certificate):
    /// HikariCP's `softEvictConnections`. Counted in `refreshes` and `closed_refreshed`.
    /// Returns how many idle connections it retired. After close has started, does nothing.
    ///
    /// ```
    /// # use gracepool_testkit::{Counting, ExecRuntime};
    /// # let rt = ExecRuntime::new();
    /// # let pool = gracepool::Pool::builder(Counting::new()).max_size(4).runtime(rt.handle()).build().unwrap();
    /// # rt.block_on(async {
    /// drop(pool.get().await.unwrap());
    /// let held = pool.get().await.unwrap();
    /// assert_eq!(pool.refresh(), 0); // nothing idle: the one held goes when it comes back
    /// drop(held);
    /// let fresh = pool.get().await.unwrap();
    /// assert_eq!(pool.status().counters.closed_refreshed, 1);
    /// # drop(fresh); pool.close().await;
    /// # });
    /// ```
    pub fn refresh(&self) -> usize {
        self.shared.refresh()
    }

    /// A snapshot of sizes, waiters, state and counters. Needs no actor round trip.
    pub fn status(&self) -> Status {
        self.shared.status()
    }

    /// Where the pool is in its life.
    pub fn state(&self) -> PoolState {
        self.shared.ledger.state()
    }

    async fn get_inner(
        &self,
        timeout: Option<Duration>,
        wait: bool,
    ) -> Result<Pooled<M>, Error<M::Error>> {
        let shared = &self.shared;
        // A task looping on `get()` must give its thread back now and then (see `coop`).
        if crate::coop::spend() {
            futures_lite::future::yield_now().await;
        }
        let mut budget = Budget::new(timeout);
        // Hot path: an idle connection is there and nobody is queued ahead of us. When callers
        // are queued, nothing is idle (the waitlist keeps one of the two empty), and joining
        // takes an idle connection itself should one be there by then: looking first would
        // only take the waitlist's lock once more, which is what a busy pool contends on.
        while budget.trusts_idle() && shared.waitlist.waiting() == 0 {
            match shared.waitlist.pop_idle() {
                Ok(Some(entry)) => {
                    self.keep_min_idle();
                    let mut guard = match self.prepare(entry, false, true, &budget)? {
                        Prepared::Ready(guard) => return Ok(guard),
                        Prepared::Retry => continue,
                        Prepared::Check(guard) => guard,
                    };
                    run_check!(self, guard, budget)?;
                    if guard.is_checked() {
                        return Ok(guard);
                    }
                }
                Ok(None) => break,
                Err(Closed) => return Err(shared.closed_error()),
            }
        }
        if let Some(entry) = self.before_waiting(&mut budget, wait).await? {
            match self.prepare(entry, true, false, &budget)? {
                Prepared::Ready(guard) => return Ok(guard),
                // Fresh from `create`: no check is due (`prepare` asks for none).
                Prepared::Check(mut guard) => {
                    guard.checked();
                    return Ok(guard);
                }
                // Refused: the pool's home moved on while it was made (or a lifetime or idle
                // timeout of zero): wait for the actor's rather than make another.
                Prepared::Retry => {}
            }
        }
        let mut wait = Waiting::start(shared, &mut budget);
        loop {
            let (entry, fresh, counted) = self.next_entry(&mut wait, &mut budget).await?;
            // The hot path's checkout, written out again rather than shared: one shared step
            // (a loop over both sources, or an `async fn`) is not inlined into the hot path,
            // which cost P1 70–100 instructions a pair when tried.
            let mut guard = match self.prepare(entry, fresh, counted, &budget)? {
                Prepared::Ready(guard) => return Ok(guard),
                Prepared::Retry => continue,
                Prepared::Check(guard) => guard,
            };
            run_check!(self, guard, budget)?;
            if guard.is_checked() {
                return Ok(guard);
            }
        }
    }

    /// Nothing was idle for the caller: fails when the pool is closing, or with `Exhausted`
    /// when the caller does not `wait`; gives the pool an actor if it has none; and when
    /// nobody is ahead, the pool has room and this task runs on the pool's runtime, creates
    /// a connection here rather than ask the actor and wait for its answer (a cold start pays
    /// no round trip per connection). `None`: the caller is to queue.
    async fn before_waiting(
        &self,
        budget: &mut Budget,
        wait: bool,
    ) -> Result<Option<Idle<M::Connection>>, Error<M::Error>> {
        let shared = &self.shared;
        if !shared.ledger.is_running() {
            return Err(shared.closed_error());
        }
        self.ensure_home()?;
        if !wait {
            self.ask_to_grow();
            return Err(Error::Exhausted);
        }
        if !self.may_create_here() {
            return Ok(None);
        }
        // Boxed: its future is several times the size of the rest of `get`'s, which every
        // caller copies; it runs at a cold start, rarely afterwards.
        Box::pin(self.create_here(budget)).await
    }

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
    fn may_create_here(&self) -> bool {
        let shared = &self.shared;
        shared.waitlist.waiting() == 0
            && shared.ledger.callers_may_create()
            && shared.ledger.slots() < shared.ledger.max_size()
            && shared.runtime.is_current()
            && shared.ledger.try_reserve_slot()
    }

    /// Creates a connection in the caller's task, on a slot [`may_create_here`] reserved,
    /// bounded by the create timeout and what is left of the wait timeout; a panic is
    /// contained. Close abandons it at once, as the actor abandons its own creations. `None`:
    /// the creation failed and the caller is to wait while the actor retries (the default,
    /// not fail-fast).
    ///
    /// [`may_create_here`]: Pool::may_create_here
    async fn create_here(
        &self,
        budget: &mut Budget,
    ) -> Result<Option<Idle<M::Connection>>, Error<M::Error>> {
        let shared = &self.shared;
        // Owned from here: whatever ends this future before a connection is made (close, the
        // wait timeout, the future dropped) gives the slot back.
        let slot = Reserved { shared };
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
                // Listening before looking at the state: a close that starts after the look
                // wakes the listener.
                let listener = shared.closing.listen();
                let limit = match (create_timeout, budget.remaining()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let timer = match limit {
                    Some(Duration::ZERO) => return Poll::Ready(Made::TimedOut),
                    Some(d) => Some(shared.runtime.sleep(d)),
                    None => None,
                };
                limits = Some((timer, listener));
            }
            let (timer, listener) = limits.as_mut().expect("set just above");
            if !shared.ledger.is_running() || std::pin::Pin::new(listener).poll(cx).is_ready() {
                return Poll::Ready(Made::Closing);
            }
            match timer.as_mut().map(|t| t.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(Made::TimedOut),
                _ => Poll::Pending,
            }
        })
        .await;
        // A creation that did not finish at once made this call wait (nothing was idle): its
        // wait is counted as any other, unless the call goes on to wait for the actor, which
        // counts the whole of it.
        let suspended = limits.is_some();
        drop(limits);
        let wait_over = matches!(made, Made::TimedOut) && budget.spent();
        let rides_out = !shared.config.fail_fast
            && match &made {
                Made::Done(Ok(_))
                | Made::Done(Err(CreateFailure::Permanent(_)))
                | Made::Closing => false,
                Made::TimedOut => !wait_over,
                Made::Done(_) => true,
            };
        if suspended && !rides_out {
            shared.ledger.record_wait(budget.waited());
        }
        let failure = match made {
            Made::Done(Ok(conn)) => {
                // The slot is the connection's now.
                slot.keep();
                shared.ledger.record_created();
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
            Made::TimedOut => CreateFailure::Timeout(
                create_timeout.expect("only a set timeout expires before the wait timeout"),
            ),
            Made::Done(Err(failure)) => failure,
        };
        // Failed: callers stop creating, and the actor pauses before it retries, as after a
        // failure of its own.
        shared.ledger.set_callers_may_create(false);
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
    fn keep_min_idle(&self) {
        let min_idle = self.shared.ledger.min_idle();
        if min_idle > 0 && self.shared.waitlist.idle() < min_idle {
            self.ask_to_grow();
        }
    }

    /// The error for a caller whose wait timeout ran out: with the last creation failure as
    /// its source when the pool could not make connections.
    fn timed_out(&self, budget: &Budget) -> Error<M::Error> {
        let shared = &self.shared;
        shared.ledger.record_timeout();
        let status = shared.status();
        Error::Timeout {
            waited: budget.waited(),
            seen: Some(Box::new(crate::error::Seen::new(
                status.size,
                status.max_size,
                status.in_use,
                status.idle,
                // This caller has left the queue already.
                status.waiters + 1,
            ))),
            last_error: shared.last_create_error(),
        }
    }

    /// Wakes the actor to create, unless the pool is already at `max_size` (then a returning
    /// or closing connection wakes it instead, and it sees the queued waiters).
    fn ask_to_grow(&self) {
        let shared = &self.shared;
        if shared.ledger.slots() < shared.ledger.max_size() {
            let _ = shared.mailbox_tx.try_send(Msg::Grow);
        }
    }

    /// Queues until a connection is handed over (`counted`: the waitlist counted it as taken),
    /// or the wait ends in an error. A pool whose actor's runtime went away meanwhile gets a
    /// new actor here, and the wait goes on.
    async fn next_entry(
        &self,
        wait: &mut Waiting<'_, M>,
        budget: &mut Budget,
    ) -> Result<(Idle<M::Connection>, bool, bool), Error<M::Error>> {
        let shared = &self.shared;
        loop {
            // The clock was read as the wait started on the first round; a later round follows
            // a connection that failed its check, which may have taken time.
            let spent = if wait.again {
                budget.spent()
            } else {
                budget.timeout == Some(Duration::ZERO)
            };
            if spent {
                return Err(self.timed_out(budget));
            }
            wait.again = true;
            // Owned at once: if this future is dropped (cancelled, or its task dropped by a
            // runtime teardown), the place is given up and a connection handed to it goes back.
            let mut queued = Queued {
                shared,
                ticket: None,
            };
            let deadline = wait.deadline.filter(|_| wait.kept);
            let timer = &mut wait.timer;
            let kept = wait.kept;
            let outcome = poll_fn(|cx| {
                let Some(ticket) = &queued.ticket else {
                    let joined = shared.waitlist.join(deadline, cx.waker());
                    let (ticket, arm) = match joined {
                        Join::Idle(entry) => return Poll::Ready(Outcome::Got(entry, false)),
                        Join::Closed => return Poll::Ready(Outcome::Closed),
                        Join::Moved => return Poll::Ready(Outcome::Moved),
                        Join::Queued { ticket, arm } => (ticket, arm),
                    };
                    queued.ticket = Some(ticket);
                    if let Some(at) = arm {
                        let owner: Weak<dyn Expire> = Arc::downgrade(shared) as Weak<dyn Expire>;
                        deadline::register(at, owner);
                    }
                    // Queued before slots are read, and the actor frees a slot before it reads
                    // the queue length: one of the two sees the other, so no waiter is
                    // forgotten.
                    self.ask_to_grow();
                    if !kept && timer.is_none() {
                        *timer = budget.remaining().map(|d| shared.runtime.sleep(d));
                    }
                    return poll_timer(timer, cx);
                };
                match shared.waitlist.poll(ticket, cx) {
                    Poll::Ready(outcome) => {
                        if let Some(ticket) = queued.ticket.take() {
                            shared.waitlist.recycle(ticket);
                        }
                        Poll::Ready(outcome)
                    }
                    Poll::Pending => poll_timer(timer, cx),
                }
            })
            .await;
            // A timer of our own ran out: leave the queue; we may have been served meanwhile
            // (what `cancel` gives back the waitlist did not count as taken).
            let (outcome, counted) = match outcome {
                Outcome::TimedOut => match queued.ticket.take() {
                    Some(ticket) => (
                        shared.waitlist.cancel(ticket).unwrap_or(Outcome::TimedOut),
                        false,
                    ),
                    None => (Outcome::TimedOut, true),
                },
                outcome => (outcome, true),
            };
            drop(queued);
            match outcome {
                Outcome::Got(entry, fresh) => return Ok((entry, fresh, counted)),
                Outcome::Failed(f) => return Err(f.into()),
                Outcome::Closed => return Err(shared.closed_error()),
                Outcome::TimedOut => return Err(self.timed_out(budget)),
                Outcome::Moved => {
                    // The actor's runtime went away while we waited: start the next actor
                    // here, and wait for it. Our own runtime dropping the actor we started as
                    // soon as it starts (it is shutting down) is given up on.
                    if wait.started_here {
                        wait.moves += 1;
                        if wait.moves > MOVES_PER_GET {
                            return Err(Error::Spawn(SpawnError::new(
                                "this caller's runtime keeps dropping the pool's actor as soon \
                                 as it starts: it is shutting down",
                            )));
                        }
                    }
                    wait.started_here = self.ensure_home()?;
                }
            }
        }
    }

    /// The part of a checkout that needs no waiting: refuses the entry after close, retires it
    /// when expired (or stale, after this call's failed checks), and makes the guard. Its
    /// health check, when one is due, is [`run_check!`]'s. `counted`: the waitlist
    /// counted the entry as taken (refused, it is counted back; else the checkout is counted
    /// here).
    #[inline(always)]
    fn prepare(
        &self,
        entry: Idle<M::Connection>,
        fresh: bool,
        counted: bool,
        budget: &Budget,
    ) -> Result<Prepared<M>, Error<M::Error>> {
        let shared = &self.shared;
        if let Some(refusal) = self.refusal(&entry, fresh, budget) {
            if counted {
                shared.ledger.untake();
            }
            shared.retire(entry.conn, entry.home, false);
            return match refusal {
                Refusal::Closed => Err(shared.closed_error()),
                Refusal::Retry => Ok(Prepared::Retry),
            };
        }
        if !counted {
            shared.ledger.check_out();
        }
        // From here the guard owns the connection: if the check is dropped mid-way, the guard
        // retires the connection rather than return it half-checked.
        let mut guard = Pooled::checking(shared.clone(), entry);
        if shared.checks_idle && !fresh {
            return Ok(Prepared::Check(guard));
        }
        guard.checked();
        Ok(Prepared::Ready(guard))
    }

    /// Why `entry` must not be checked out, if it must not (counting the reason).
    #[inline]
    fn refusal(
        &self,
        entry: &Idle<M::Connection>,
        fresh: bool,
        budget: &Budget,
    ) -> Option<Refusal> {
        let shared = &self.shared;
        if !shared.ledger.is_running() {
            return Some(Refusal::Closed);
        }
        if entry.home != shared.waitlist.home() {
            // Made under a runtime that went away since it was taken (the pool moved on).
            shared.ledger.record_reason(Reason::Moved);
            return Some(Refusal::Retry);
        }
        if let Some(reason) = shared.expiry(entry) {
            shared.ledger.record_reason(reason);
            return Some(Refusal::Retry);
        }
        if !fresh && !budget.trusts_idle() {
            // Stale by the evidence of this call's failed checks: make room for a new one.
            shared.ledger.record_reason(Reason::Broken);
            return Some(Refusal::Retry);
        }
        None
    }

    /// The before-checkout hook on a checking guard's connection, bounded as the check is
    /// (check timeout, what is left of the wait timeout, the pool's close). `None`: it ran
    /// out of time, or the pool closed.
    #[allow(clippy::type_complexity)]
    fn before_checkout<'a>(
        &'a self,
        guard: &'a mut Pooled<M>,
        metrics: &'a Metrics,
        budget: &'a mut Budget,
    ) -> std::pin::Pin<
        Box<
            dyn Future<Output = Option<std::thread::Result<Result<(), Unhealthy<M::Error>>>>>
                + Send
                + 'a,
        >,
    > {
        // Boxed as a `dyn Future + Send` here, where its lifetimes are concrete: an opaque
        // future with the hook's higher-ranked one inside would make `get()`'s future fail
        // the `Send` check where it is spawned.
        let shared = &*self.shared;
        let limit = match (shared.config.check_timeout, budget.remaining()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Box::pin(async move {
            let hook = shared.hooks.before_checkout.as_ref()?;
            let ran: Result<(), crate::hooks::HookError> = {
                let run = std::pin::pin!(crate::hooks::run(hook, guard.conn_mut(), metrics));
                let mut listener: Option<event_listener::EventListener> = None;
                let mut run = run;
                let raced = poll_fn(|cx| {
                    if let Poll::Ready(out) = run.as_mut().poll(cx) {
                        return Poll::Ready(Some(out));
                    }
                    let listener = listener.get_or_insert_with(|| shared.closing.listen());
                    if !shared.ledger.is_running()
                        || std::pin::Pin::new(listener).poll(cx).is_ready()
                    {
                        return Poll::Ready(None);
                    }
                    Poll::Pending
                });
                crate::runtime::timed(&*shared.runtime, limit, raced)
                    .await
                    .flatten()?
            };
            Some(Ok(ran.map_err(|_error| {
                shared.ledger.record_hook_failed();
                event!(warn, error = %_error, "the before-checkout hook failed; closing the connection");
                Unhealthy::Closed
            })))
        })
    }

    /// What a health check run by [`run_check!`] came to. Healthy: the guard is marked
    /// checked. Not: the guard stays unchecked (dropped, it retires its connection as a failed
    /// check), and the call's count of failed checks goes up. `Err` when the check took what
    /// was left of the wait timeout. `checked` is `None` when the check ran out of time.
    #[inline(always)]
    fn checked(
        &self,
        guard: &mut Pooled<M>,
        budget: &mut Budget,
        checked: Option<std::thread::Result<Result<(), Unhealthy<M::Error>>>>,
    ) -> Result<(), Error<M::Error>> {
        if matches!(checked, Some(Ok(Ok(())))) {
            guard.checked();
            return Ok(());
        }
        #[cfg(feature = "tracing")]
        match &checked {
            Some(Ok(Err(unhealthy))) => {
                event!(warn, reason = %unhealthy, "the manager's check failed; closing the connection")
            }
            Some(Err(_)) => {
                event!(warn, "the manager's check panicked; closing the connection")
            }
            _ => event!(
                warn,
                "the manager's check timed out; closing the connection"
            ),
        }
        if checked.is_none() && budget.spent() {
            // The check took what was left of the wait timeout.
            return Err(self.timed_out(budget));
        }
        budget.unhealthy = if checked.is_none() {
            // A check that ran out of time says the server is not answering: the other idle
            // connections are as likely silent, and checking each would cost a check timeout
            // apiece. One is all a call pays: it goes on to a new connection.
            UNHEALTHY_PER_GET
        } else {
            budget.unhealthy + 1
        };
        Ok(())
    }
}

/// What a checkout's first step gave.
enum Prepared<M: Manager> {
    /// Checked out, no health check due.
    Ready(Pooled<M>),
    /// The entry was retired: try another.
    Retry,
    /// A health check is due (the guard is still checking).
    Check(Pooled<M>),
}

/// Why an entry is not checked out (it is retired).
enum Refusal {
    /// The pool is closing.
    Closed,
    /// Expired, moved or stale: try another.
    Retry,
}

/// How a caller's own creation ended.
enum Made<T> {
    Done(T),
    /// The create timeout or the wait timeout ran out first.
    TimedOut,
    /// The pool started closing.
    Closing,
}

/// A slot a caller reserved to create a connection in. Dropped before the connection is
/// made, it frees the slot, and tells the actor when that matters to it: a close waits for
/// every slot, and waiters may be waiting for room.
struct Reserved<'a, M: Manager> {
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

/// Polls a waiter's own timer, if it has one: ready means its wait timed out.
fn poll_timer<T, E>(
    timer: &mut Option<BoxFuture>,
    cx: &mut std::task::Context<'_>,
) -> Poll<Outcome<T, E>> {
    match timer.as_mut().map(|t| t.as_mut().poll(cx)) {
        Some(Poll::Ready(())) => Poll::Ready(Outcome::TimedOut),
        _ => Poll::Pending,
    }
}

/// A place in the waitlist. If the waiting future is dropped (cancelled, or its task dropped
/// by a runtime teardown), the place is given up and a connection handed to it meanwhile goes
/// back to the pool.
struct Queued<'a, M: Manager> {
    shared: &'a Shared<M>,
    ticket: Option<Ticket<Idle<M::Connection>, M::Error>>,
}

impl<M: Manager> Drop for Queued<'_, M> {
    fn drop(&mut self) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        if let Some(Outcome::Got(entry, _)) = self.shared.waitlist.cancel(ticket) {
            if let Err(entry) = self.shared.put_idle(entry, false) {
                if entry.home != self.shared.waitlist.home() {
                    self.shared.ledger.record_reason(Reason::Moved);
                }
                self.shared.retire(entry.conn, entry.home, false);
            }
        }
    }
}

/// A caller's wait for a connection, across its rounds (a connection handed over may turn out
/// expired or unhealthy, and the caller queues again).
struct Waiting<'a, M: Manager> {
    /// The wait deadline, if the call has a wait timeout.
    deadline: Option<Instant>,
    /// The deadline thread keeps `deadline` (see `deadline`); otherwise the waiter arms
    /// `timer`, a timer of its own.
    kept: bool,
    timer: Option<BoxFuture>,
    /// A round has run: the clock must be read to know what is left.
    again: bool,
    /// Actors this call started on its own runtime that went away at once.
    moves: u32,
    started_here: bool,
    _mark: WaiterMark<'a>,
    _pool: std::marker::PhantomData<M>,
}

impl<'a, M: Manager> Waiting<'a, M> {
    /// The wait starts now (the clock is read, unless a check or a creation read it already).
    fn start(shared: &'a Shared<M>, budget: &mut Budget) -> Self {
        crate::coop::reset();
        let started = budget.start();
        let deadline = budget.timeout.and_then(|t| started.checked_add(t));
        Waiting {
            deadline,
            kept: deadline.is_some() && deadline::available(),
            timer: None,
            again: false,
            moves: 0,
            started_here: false,
            _mark: WaiterMark::new(&shared.ledger, started),
            _pool: std::marker::PhantomData,
        }
    }
}

/// Records a caller's wait when it ends, however it ends (served, failed, timed out, or the
/// future dropped). (How many wait is the waitlist's queue length, kept under its lock: no
/// counter of its own for every caller to touch.)
struct WaiterMark<'a>(&'a Ledger, Instant);

impl<'a> WaiterMark<'a> {
    fn new(ledger: &'a Ledger, started: Instant) -> Self {
        WaiterMark(ledger, started)
    }
}

impl Drop for WaiterMark<'_> {
    fn drop(&mut self) {
        self.0.record_wait(self.1.elapsed());
    }
}

/// Configures and starts a [`Pool`].
///
/// Defaults: `max_size` 10, `min_idle` 0, wait timeout 30 s, create timeout 30 s, check
/// timeout 5 s, shutdown timeout 5 s, idle timeout 10 min, max lifetime 30 min, close deadline
/// 10 s, maintenance every 1 s, check on checkout, creation retried with backoff from 10 ms to
/// 250 ms while callers keep waiting (not fail-fast). A runtime must be given.
pub struct Builder<M: Manager> {
    manager: M,
    config: Config,
    runtime: Option<Arc<dyn Runtime>>,
    on_create_error: Option<crate::shared::ErrorSink<M::Error>>,
    hooks: Hooks<M::Connection>,
}

impl<M: Manager> fmt::Debug for Builder<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("config", &self.config)
            .field("runtime", &self.runtime.is_some())
            .field("hooks", &self.hooks.names())
            .finish()
    }
}

impl<M: Manager> Builder<M> {
    /// The most connections alive at once, checked out or idle. Must be at least 1.
    pub fn max_size(mut self, max_size: usize) -> Self {
        self.config.max_size = max_size;
        self
    }

    /// Idle connections the actor creates up front and keeps ready. At most `max_size`.
    pub fn min_idle(mut self, min_idle: usize) -> Self {
        self.config.min_idle = min_idle;
        self
    }

    /// How long [`Pool::get`] waits for a connection; `None` waits until one comes or the
    /// pool closes.
    pub fn wait_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.config.wait_timeout = timeout.into();
        self
    }

    /// How long one [`Manager::create`] may take.
    pub fn create_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.config.create_timeout = timeout.into();
        self
    }

    /// How long one [`Manager::check`] may take before the connection is closed.
    pub fn check_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.config.check_timeout = timeout.into();
        self
    }

    /// How long one [`Manager::shutdown`] may take before `close` is called anyway.
    pub fn shutdown_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.config.shutdown_timeout = timeout.into();
        self
    }

    /// Idle connections unused for this long are closed (checked at the maintenance interval
    /// and at checkout).
    pub fn idle_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.config.idle_timeout = timeout.into();
        self
    }

    /// Connections older than this are closed instead of reused — each a little sooner, by
    /// a random part of [`max_lifetime_jitter`](Builder::max_lifetime_jitter), so that
    /// connections made together do not all expire together.
    pub fn max_lifetime(mut self, lifetime: impl Into<Option<Duration>>) -> Self {
        self.config.max_lifetime = lifetime.into();
        self
    }

    /// How much each connection's lifetime is shortened at most, at random: connections made
    /// together (a pool's start, a whole fleet deployed at once) then reach their lifetime
    /// spread over this window instead of reconnecting in one storm. Default: 2.5 % of
    /// `max_lifetime` (45 s of the default 30 min), as HikariCP does; `Duration::ZERO` turns
    /// it off. Must be shorter than `max_lifetime`.
    pub fn max_lifetime_jitter(mut self, jitter: Duration) -> Self {
        self.config.lifetime_jitter = Some(jitter);
        self
    }

    /// How long a close may take (default 10 s: inside Kubernetes' default 30 s grace period,
    /// after the HTTP server's own drain): the goodbyes of idle connections and the wait for
    /// checked-out ones to come back both end by then. What is still under way is cut short
    /// (`closed_sync`), and connections still out close when their guards drop. Zero finishes
    /// at once, saying only the goodbyes that finish at once.
    pub fn close_deadline(mut self, deadline: Duration) -> Self {
        self.config.close_deadline = deadline;
        self
    }

    /// How often the actor reaps idle and expired connections and tops up `min_idle`.
    pub fn maintenance_interval(mut self, interval: Duration) -> Self {
        self.config.maintenance_interval = interval;
        self
    }

    /// Whether [`Manager::check`] runs before a connection is handed out again (default
    /// true).
    pub fn check_on_checkout(mut self, check: bool) -> Self {
        self.config.check_on_checkout = check;
        self
    }

    /// How creation is retried after a failure: the first pause (default 10 ms), doubled with
    /// each failure in a row up to the longest pause (default 250 ms), each pause shortened by a
    /// random part of up to half (jitter), so many pools do not retry in step. No creation
    /// starts during a pause, whatever the demand; the actor keeps serving everything else.
    /// A success resets it.
    pub fn create_backoff(mut self, first: Duration, longest: Duration) -> Self {
        self.config.backoff_first = first;
        self.config.backoff_max = longest;
        self
    }

    /// Calls `sink` with every creation failure that no caller receives, so that a backend
    /// that refuses the pool is visible without the `tracing` feature: with the default
    /// (callers ride out failures) that is every failure — callers see it only as the source
    /// of a timeout — and with [`fail_fast`](Builder::fail_fast) the failures nobody was
    /// waiting for (`min_idle` creations). Called on the actor's task: keep it short (count,
    /// log, send to a channel). A sink that panics is contained.
    ///
    /// ```
    /// # use gracepool_testkit::{Counting, ExecRuntime};
    /// # let rt = ExecRuntime::new();
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    ///
    /// let failures = Arc::new(AtomicU64::new(0));
    /// let pool = gracepool::Pool::builder(Counting::new())
    ///     .on_create_error({
    ///         let failures = failures.clone();
    ///         move |_error| {
    ///             failures.fetch_add(1, Ordering::Relaxed);
    ///         }
    ///     })
    ///     .runtime(rt.handle())
    ///     .build()
    ///     .unwrap();
    /// # rt.block_on(async { pool.close().await });
    /// ```
    pub fn on_create_error(
        mut self,
        sink: impl Fn(&Error<M::Error>) + Send + Sync + 'static,
    ) -> Self {
        self.on_create_error = Some(Box::new(sink));
        self
    }

    /// Runs `hook` on every new connection before the pool hands it out or keeps it: the
    /// per-connection setup a session needs (`SET statement_timeout`, a `search_path`, a
    /// role, a `PRAGMA`). It runs where the connection was made (the pool's actor, or a caller
    /// creating for itself), inside the create timeout. When it fails, times out or panics,
    /// the new connection is ended at once (the manager's goodbye) and never counts as
    /// created; the failure counts as a failed creation (`create_failed`, `hook_failed`) and
    /// is retried with backoff like any other — a caller sees it as [`Error::Hook`] with
    /// `fail_fast`, or as its timeout's `last_error`.
    ///
    /// ```
    /// # use gracepool_testkit::{Counting, ExecRuntime};
    /// # let rt = ExecRuntime::new();
    /// let pool = gracepool::Pool::builder(Counting::new())
    ///     .after_create(|conn, _metrics| {
    ///         Box::pin(async move {
    ///             // Here: `conn.batch_execute("SET statement_timeout = '5s'").await?;`
    ///             let _ = conn;
    ///             Ok(())
    ///         })
    ///     })
    ///     .runtime(rt.handle())
    ///     .build()
    ///     .unwrap();
    /// # rt.block_on(async { drop(pool.get().await.unwrap()); pool.close().await });
    /// ```
    pub fn after_create(
        mut self,
        hook: impl for<'a> Fn(&'a mut M::Connection, &'a Metrics) -> HookFuture<'a>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        self.hooks.after_create = Some(Box::new(hook));
        self
    }

    /// Runs `hook` on a connection that waited in the pool, before it is handed out — after
    /// the manager's check when `check_on_checkout` is on, and whether or not it is. Not run
    /// on a connection handed out fresh from `create`. Bounded, with the check, by the check
    /// timeout and the caller's wait timeout. When it fails, times out or panics, the
    /// connection is closed as a failed check (`check_failed`, `hook_failed`) and the caller
    /// gets another one.
    ///
    /// ```
    /// # use gracepool_testkit::{Counting, ExecRuntime};
    /// # let rt = ExecRuntime::new();
    /// use std::time::Duration;
    ///
    /// // Ping only connections idle for more than 30 s, say.
    /// let pool = gracepool::Pool::builder(Counting::new())
    ///     .before_checkout(|_conn, metrics| {
    ///         let stale = metrics.idle_for() > Duration::from_secs(30);
    ///         Box::pin(async move {
    ///             if stale {
    ///                 return Err("idle too long".into());
    ///             }
    ///             Ok(())
    ///         })
    ///     })
    ///     .runtime(rt.handle())
    ///     .build()
    ///     .unwrap();
    /// # rt.block_on(async { drop(pool.get().await.unwrap()); drop(pool.get().await.unwrap()); pool.close().await });
    /// ```
    pub fn before_checkout(
        mut self,
        hook: impl for<'a> Fn(&'a mut M::Connection, &'a Metrics) -> HookFuture<'a>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        self.hooks.before_checkout = Some(Box::new(hook));
        self
    }

    /// Runs `hook` on a connection a guard gave back, before it goes back to the idle queue:
    /// a session reset (`DISCARD ALL`, `RESET ALL`), a rollback of whatever the last user left
    /// open. A guard's drop cannot await, so the pool's actor runs it, bounded by the check
    /// timeout; the connection counts as in use until then. When it fails, times out or
    /// panics, the connection is closed as broken (`closed_broken`, `hook_failed`). A
    /// connection given back while the pool is closing, or when no actor runs, skips it and
    /// is closed.
    ///
    /// ```
    /// # use gracepool_testkit::{Counting, ExecRuntime};
    /// # let rt = ExecRuntime::new();
    /// let pool = gracepool::Pool::builder(Counting::new())
    ///     .after_return(|conn, _metrics| {
    ///         Box::pin(async move {
    ///             // Here: `conn.batch_execute("DISCARD ALL").await?;`
    ///             let _ = conn;
    ///             Ok(())
    ///         })
    ///     })
    ///     .runtime(rt.handle())
    ///     .build()
    ///     .unwrap();
    /// # rt.block_on(async { drop(pool.get().await.unwrap()); pool.close().await });
    /// ```
    pub fn after_return(
        mut self,
        hook: impl for<'a> Fn(&'a mut M::Connection, &'a Metrics) -> HookFuture<'a>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        self.hooks.after_return = Some(Box::new(hook));
        self
    }

    /// Which idle connection a checkout takes: the one idle longest ([`QueueOrder::Fifo`], the
    /// default: connections take turns, so all stay warm) or the one returned last
    /// ([`QueueOrder::Lifo`]: the same few do the work, and the rest sit idle until
    /// `idle_timeout` closes them, so a pool under steady light load shrinks). Callers who
    /// wait are served first come, first served either way.
    ///
    /// ```
    /// # use gracepool_testkit::{Counting, ExecRuntime};
    /// # let rt = ExecRuntime::new();
    /// use std::time::Duration;
    /// use gracepool::QueueOrder;
    ///
    /// // Sized for peaks; between them, the connections the load does not need are closed.
    /// let pool = gracepool::Pool::builder(Counting::new())
    ///     .max_size(32)
    ///     .queue_order(QueueOrder::Lifo)
    ///     .idle_timeout(Duration::from_secs(60))
    ///     .runtime(rt.handle())
    ///     .build()
    ///     .unwrap();
    /// # rt.block_on(async { pool.close().await });
    /// ```
    pub fn queue_order(mut self, order: QueueOrder) -> Self {
        self.config.queue_order = order;
        self
    }

    /// The configured backoff pair (first, longest).
    #[cfg_attr(not(feature = "serde"), allow(dead_code))]
    pub(crate) fn backoff(&self) -> (Duration, Duration) {
        (self.config.backoff_first, self.config.backoff_max)
    }

    /// What a waiting caller gets when a creation fails.
    ///
    /// By default (`false`) callers ride out a failing backend: they keep waiting while the
    /// pool retries with backoff, up to their wait timeout, and a caller whose timeout runs
    /// out gets [`Error::Timeout`] with the last creation error as its source. With `true`,
    /// each failure goes at once to the caller that has waited longest, as
    /// [`Error::Backend`] (or `ManagerTimeout` / `ManagerPanicked`).
    pub fn fail_fast(mut self, fail_fast: bool) -> Self {
        self.config.fail_fast = fail_fast;
        self
    }

    /// The runtime to spawn the pool actor on (see the adapter crates).
    pub fn runtime(mut self, runtime: impl Runtime) -> Self {
        self.runtime = Some(Arc::new(runtime));
        self
    }

    /// Like [`runtime`](Builder::runtime), for a runtime already shared.
    pub fn runtime_arc(mut self, runtime: Arc<dyn Runtime>) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// Checks the configuration and spawns the pool actor.
    ///
    /// Fails with [`Error::Config`] on a bad configuration and [`Error::Spawn`] when the
    /// runtime refuses the actor; never panics.
    pub fn build(self) -> Result<Pool<M>, Error<M::Error>> {
        self.config
            .validate(self.runtime.as_ref())
            .map_err(Error::Config)?;
        let runtime = self
            .runtime
            .expect("validate() checked that a runtime is set");
        // Room for max_size idle connections up front (no more exist), so that a return
        // never allocates; a very large max_size grows the queue as it fills instead.
        let capacity = self.config.max_size.min(PREALLOCATED_IDLE_LIMIT);
        let lifo = self.config.queue_order == QueueOrder::Lifo;
        let ledger = Ledger::new();
        ledger.set_limits(self.config.max_size, self.config.min_idle);
        let (mailbox_tx, mailbox_rx) = async_channel::unbounded();
        let ambient = runtime.ambient();
        let ms = |d: Option<Duration>| {
            d.map_or(u64::MAX, |d| {
                u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
            })
        };
        let checks_idle = self.config.check_on_checkout || self.hooks.before_checkout.is_some();
        let shared = Arc::new(Shared {
            manager: self.manager,
            lifetime_ms: ms(self.config.max_lifetime),
            jitter_ms: self.config.jitter_ms(),
            idle_ms: ms(self.config.idle_timeout),
            config: self.config,
            runtime,
            ambient,
            ledger,
            waitlist: Waitlist::new(capacity, lifo, ambient),
            mailbox_tx,
            mailbox_rx,
            last_create_error: Mutex::new(None),
            on_create_error: self.on_create_error,
            checks_idle,
            hooks: self.hooks,
            closed: Event::new(),
            closing: Event::new(),
            close: Mutex::new(CloseState::default()),
        });
        let pool = Pool { shared };
        if !ambient {
            let actor = PoolActor::new(pool.shared.clone(), 0);
            pool.shared
                .runtime
                .spawn(Box::pin(actor.run()))
                .map_err(Error::Spawn)?;
        }
        event!(
            debug,
            max_size = pool.shared.ledger.max_size(),
            "pool started"
        );
        Ok(pool)
    }
}
