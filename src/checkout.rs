//! The checkout path: how a `get` takes an idle connection, waits, or creates one itself.

use std::future::{poll_fn, Future};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_lite::FutureExt;

use crate::clock;
use crate::deadline::{self, Expire};
use crate::error::Error;
use crate::guard::Pooled;
use crate::ledger::{Ledger, Reason};
use crate::manager::{Manager, Unhealthy};
use crate::pool::Pool;
use crate::runtime::{BoxFuture, SpawnError};
use crate::shared::{Idle, Shared};
use crate::status::Metrics;
use crate::waitlist::{Closed, Join, Outcome, Ticket};

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
pub(crate) struct Budget {
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
    pub(crate) fn start(&mut self) -> Instant {
        match self.started {
            Some(started) => started,
            None => self.start_at(clock::now()),
        }
    }

    /// As `start`, with the wait clock just read.
    fn start_at(&mut self, now: clock::Reading) -> Instant {
        let timeout = self.timeout;
        *self
            .started
            .get_or_insert_with(|| clock::deadline_start(timeout, now))
    }

    /// What is left of the wait timeout (`None`: no timeout): up to its deadline, which a start
    /// taken from the coarse clock may put a few ticks after `now + timeout` (see `clock`).
    pub(crate) fn remaining(&mut self) -> Option<Duration> {
        let timeout = self.timeout?;
        let start = self.start();
        Some(match start.checked_add(timeout) {
            Some(deadline) => deadline.saturating_duration_since(Instant::now()),
            None => timeout.saturating_sub(start.elapsed()),
        })
    }

    pub(crate) fn waited(&self) -> Duration {
        self.started.map_or(Duration::ZERO, |at| at.elapsed())
    }

    pub(crate) fn spent(&mut self) -> bool {
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
    pub(crate) async fn get_inner(
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
        let mut wait = {
            // Set by a caller's own creation that did not finish at once: the call's wait
            // began then. One mark counts the wait once, however and wherever the call ends.
            let mut mark = None;
            if let Some(entry) = self.before_waiting(&mut budget, &mut mark, wait).await? {
                match self.prepare(entry, true, false, &budget)? {
                    Prepared::Ready(guard) => return Ok(guard),
                    // Fresh from `create`: no check is due (`prepare` asks for none).
                    Prepared::Check(mut guard) => {
                        guard.checked();
                        return Ok(guard);
                    }
                    // Refused: the pool's home moved on while it was made, or a refresh came
                    // in between: wait for the actor's rather than make another.
                    Prepared::Retry => {}
                }
            }
            Waiting::start(shared, &mut budget, mark)
        };
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
    async fn before_waiting<'s>(
        &'s self,
        budget: &mut Budget,
        mark: &mut Option<WaiterMark<'s>>,
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
        Box::pin(self.create_here(budget, mark)).await
    }

    /// The error for a caller whose wait timeout ran out: with the last creation failure as
    /// its source when the pool could not make connections.
    pub(crate) fn timed_out(&self, budget: &Budget) -> Error<M::Error> {
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
    /// The wait starts now (with a timeout, its start is read unless a check or a creation read
    /// it already), or goes on from a caller's own creation that made the call wait (its
    /// `mark`).
    fn start(shared: &'a Shared<M>, budget: &mut Budget, mark: Option<WaiterMark<'a>>) -> Self {
        crate::coop::reset();
        let now = clock::now();
        let deadline = match budget.timeout {
            Some(t) => budget.start_at(now).checked_add(t),
            None => None,
        };
        Waiting {
            deadline,
            kept: deadline.is_some() && deadline::available(),
            timer: None,
            again: false,
            moves: 0,
            started_here: false,
            _mark: mark.unwrap_or_else(|| WaiterMark::at(&shared.ledger, now)),
            _pool: std::marker::PhantomData,
        }
    }
}

/// Records a caller's wait when it ends, however it ends (served, failed, timed out, or the
/// future dropped): one per call that waited, made where the wait began (a creation of its own
/// that did not finish at once, or the queue) and handed on until the call ends. (How many
/// wait is the waitlist's queue length, kept under its lock: no counter of its own for every
/// caller to touch.)
/// The wait is measured on the wait clock (see `clock`).
pub(crate) struct WaiterMark<'a>(&'a Ledger, clock::Reading);

impl<'a> WaiterMark<'a> {
    /// A wait that starts now.
    pub(crate) fn new(ledger: &'a Ledger) -> Self {
        WaiterMark(ledger, clock::now())
    }

    /// A wait that started at `start`, a reading of the wait clock.
    fn at(ledger: &'a Ledger, start: clock::Reading) -> Self {
        WaiterMark(ledger, start)
    }
}

impl Drop for WaiterMark<'_> {
    fn drop(&mut self) {
        self.0.record_wait(self.1.until(clock::now()));
    }
}
