//! The pool actor: the one task that creates connections and, while the runtime lives, closes
//! them. A thin driver: it turns messages, finished jobs and timer ticks into calls on the
//! shared bookkeeping.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use crate::deadline::Bell;
use crate::error::CreateFailure;
use crate::jobs::{create, farewells, recycle, shut_down};
use crate::ledger::plan_growth;
use crate::manager::Manager;
use crate::runtime::BoxFuture;
use crate::shared::{Idle, Msg, Shared};
use crate::status::CloseCause;

type Creation<C, E> = Pin<Box<dyn Future<Output = Result<C, CreateFailure<E>>> + Send>>;

enum Event<M: Manager> {
    Created(Result<M::Connection, CreateFailure<M::Error>>),
    BackoffOver,
    WarmDue,
    ShutDown,
    Msg(Msg<M::Connection>),
    MailboxClosed,
    Tick,
    Deadline,
}

/// Creation retries after failures: exponential, capped, with jitter. Plain data; the actor
/// turns a pause into a timer.
#[derive(Debug)]
pub(crate) struct Backoff {
    first: std::time::Duration,
    longest: std::time::Duration,
    failures: u32,
    rng: u64,
}

impl Backoff {
    pub(crate) fn new(first: std::time::Duration, longest: std::time::Duration, seed: u64) -> Self {
        Backoff {
            first,
            longest,
            failures: 0,
            // xorshift must not start at zero.
            rng: seed | 1,
        }
    }

    /// A creation failed: the pause before the next attempt. Doubles from `first` to
    /// `longest`, then takes off a random part of up to half, so that pools that failed
    /// together do not retry together.
    pub(crate) fn failed(&mut self) -> std::time::Duration {
        self.failures = self.failures.saturating_add(1);
        let doublings = (self.failures - 1).min(31);
        let base = self
            .first
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.longest)
            .min(self.longest);
        self.jittered(base)
    }

    /// A creation failed because the server is full: the pauses start at `longest` (room on
    /// a full server comes only as other clients leave: quick retries would only collect
    /// refusals) and go on doubling up to `full_longest`.
    pub(crate) fn failed_full(&mut self, full_longest: std::time::Duration) -> std::time::Duration {
        self.failures = self.failures.saturating_add(1);
        let doublings = (self.failures - 1).min(31);
        let base = self
            .longest
            .checked_mul(1u32 << doublings)
            .unwrap_or(full_longest)
            .min(full_longest.max(self.longest));
        self.jittered(base)
    }

    fn jittered(&mut self, base: std::time::Duration) -> std::time::Duration {
        // xorshift64: cheap, and good enough to spread retries.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = base / 2;
        let jitter_ns = (half.as_nanos() as u64)
            .checked_add(1)
            .map_or(0, |n| self.rng % n);
        base - std::time::Duration::from_nanos(jitter_ns)
    }

    /// A creation succeeded: the next failure starts from `first` again.
    pub(crate) fn succeeded(&mut self) {
        self.failures = 0;
    }
}

pub(crate) struct PoolActor<M: Manager> {
    shared: Arc<Shared<M>>,
    creating: Vec<Creation<M::Connection, M::Error>>,
    closing: Vec<BoxFuture>,
    deadline: Option<BoxFuture>,
    backoff: Backoff,
    /// Set while creation pauses after a failure.
    paused: Option<BoxFuture>,
    /// When the next `min_idle` creation may start (`prewarm_window`), and the timer that
    /// wakes the actor then.
    warm_at: Option<std::time::Instant>,
    warm: Option<BoxFuture>,
    /// The surplus window under way: when it ends.
    surplus_due: Option<std::time::Instant>,
    /// Idle connections were given back as surplus: from then on the pool holds what its
    /// callers use, and `min_idle` is no longer topped up.
    trimmed: bool,
    /// Which home this actor is (see `Waitlist::evict`): the connections it makes carry it.
    home: u32,
}

impl<M: Manager> PoolActor<M> {
    pub(crate) fn new(shared: Arc<Shared<M>>, home: u32) -> Self {
        shared.ledger.set_actor_alive(true);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ (Arc::as_ptr(&shared) as *const () as usize as u64);
        let backoff = Backoff::new(shared.config.backoff_first, shared.config.backoff_max, seed);
        PoolActor {
            shared,
            creating: Vec::new(),
            closing: Vec::new(),
            deadline: None,
            backoff,
            paused: None,
            warm_at: None,
            warm: None,
            surplus_due: None,
            trimmed: false,
            home,
        }
    }

    pub(crate) async fn run(mut self) {
        let shared = self.shared.clone();
        let interval = shared.config.maintenance_interval;
        let mut tick = Tick::after(&shared, interval);
        shared.ledger.tick_clock();
        self.grow();
        let mut streak = 0u32;
        loop {
            // Many events ready back to back (creations failing at once, a burst of returns)
            // must not starve the other tasks of a single-threaded runtime.
            streak += 1;
            if streak % 64 == 0 {
                futures_lite::future::yield_now().await;
            }
            let event = {
                let mut mail = pin!(shared.mailbox_rx.recv());
                poll_fn(|cx| -> Poll<Event<M>> {
                    if let Some(done) = poll_any(&mut self.creating, cx) {
                        return Poll::Ready(Event::Created(done));
                    }
                    if poll_any(&mut self.closing, cx).is_some() {
                        return Poll::Ready(Event::ShutDown);
                    }
                    if let Poll::Ready(r) = mail.as_mut().poll(cx) {
                        return Poll::Ready(r.map_or(Event::MailboxClosed, Event::Msg));
                    }
                    if let Some(paused) = self.paused.as_mut() {
                        if paused.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Event::BackoffOver);
                        }
                    }
                    if let Some(warm) = self.warm.as_mut() {
                        if warm.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Event::WarmDue);
                        }
                    }
                    if let Some(deadline) = self.deadline.as_mut() {
                        if deadline.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Event::Deadline);
                        }
                    }
                    if tick.poll(cx).is_ready() {
                        return Poll::Ready(Event::Tick);
                    }
                    Poll::Pending
                })
                .await
            };
            shared.ledger.tick_clock();
            match event {
                Event::Created(result) => self.created(result),
                Event::BackoffOver => {
                    self.paused = None;
                    self.grow();
                }
                Event::WarmDue => {
                    self.warm = None;
                    self.grow();
                }
                Event::ShutDown => self.grow(),
                Event::Msg(Msg::Grow) | Event::Msg(Msg::Freed) => self.grow(),
                Event::Msg(Msg::Retire {
                    conn,
                    home,
                    from_guard,
                }) => {
                    if from_guard {
                        shared.ledger.check_in();
                    }
                    if home != self.home {
                        // Made under a runtime that went away: sent just as the old actor
                        // left. No goodbye from here, where it was not made; its sender
                        // counted why it goes.
                        shared.close_sync(conn);
                        self.grow();
                    } else if self.retire(conn) {
                        // As when a queued farewell finishes: a slot is free for a waiter.
                        self.grow();
                    }
                }
                Event::Msg(Msg::Close) => self.start_closing(),
                Event::Msg(Msg::Farewells(conns)) => self.say_farewells(conns),
                Event::Msg(Msg::Returned(entry)) => {
                    // Polled with the farewells: a close waits for it as for them.
                    let mut job: BoxFuture = Box::pin(recycle(shared.clone(), entry));
                    if job
                        .as_mut()
                        .poll(&mut Context::from_waker(Waker::noop()))
                        .is_pending()
                    {
                        self.closing.push(job);
                    }
                }
                Event::Tick => {
                    #[cfg(feature = "metrics")]
                    let _ = shared.status(); // publishes the gauges and counters
                    let due = self.maintain();
                    tick = Tick::after(&shared, due.map_or(interval, |due| due.min(interval)));
                }
                Event::Deadline => {
                    // Checked-out connections did not all come back in time: finish now.
                    // They close when their guards drop.
                    self.finish();
                    return;
                }
                Event::MailboxClosed => {
                    // The fallback finished the close: nothing is left for the actor to do.
                    return;
                }
            }
            if !shared.ledger.is_running() && self.closing_done() {
                self.finish();
                return;
            }
        }
    }

    fn grow(&mut self) {
        let shared = self.shared.clone();
        // No creation starts while creation pauses after a failure: a manager that fails at
        // once cannot make the actor spin, and the pause ends in a `BackoffOver` that grows.
        if !shared.ledger.is_running() {
            return;
        }
        // A caller's own creation failed (it asked to grow after): pause as for ours.
        if shared.ledger.take_pause_request() && self.paused.is_none() {
            let pause = if shared.ledger.server_full() {
                self.backoff.failed_full(shared.config.full_backoff_max)
            } else {
                self.backoff.failed()
            };
            self.paused = Some(shared.runtime.sleep(pause));
        }
        if self.paused.is_some() {
            return;
        }
        let growth = plan_growth(
            shared.waitlist.waiting(),
            shared.waitlist.idle(),
            self.creating.len(),
            shared.ledger.slots(),
            shared.ledger.max_size(),
            shared.ledger.min_idle(),
        );
        let full = shared.ledger.server_full();
        let for_min_idle = if self.trimmed {
            // A pool that gave its spares back holds what its callers use: topping up again
            // at the first moment a caller waits would take back the room another process of
            // the fleet was given, and give it back a window later, over and over.
            0
        } else {
            self.paced(growth.for_min_idle)
        };
        let wave = growth.for_waiters + for_min_idle;
        // One attempt at a time, the actor's and callers' together, until the pool has made
        // its first connection (a server that refuses, is full or rejects the credentials is
        // asked once, not by every caller of a fresh pool at once), and while the server is
        // full, for a caller or for min_idle (which is what finds out, when nobody waits, that
        // there is room again): each refused attempt is a wasted round trip for the server too.
        let cap = if full || !shared.ledger.made_one() {
            1
        } else {
            shared.config.max_creating
        };
        for _ in 0..wave {
            // A caller creating for itself may have taken the room meanwhile.
            if !shared.ledger.begin_creation(cap) {
                break;
            }
            if !shared.ledger.try_reserve_slot() {
                shared.ledger.end_creation();
                break;
            }
            self.creating.push(Box::pin(create(shared.clone())));
        }
    }

    /// How many of `wanted` `min_idle` creations may start now: one per
    /// `prewarm_window / min_idle`, the first at once; sets the timer for the next.
    fn paced(&mut self, wanted: usize) -> usize {
        let config = &self.shared.config;
        // Within half the idle timeout, so that the first connection of a top-up is not
        // reaped as idle before the last is made.
        let window = config.idle_timeout.map_or(config.prewarm_window, |idle| {
            config.prewarm_window.min(idle / 2)
        });
        if wanted == 0 || window.is_zero() {
            return wanted;
        }
        let now = std::time::Instant::now();
        if let Some(at) = self.warm_at.filter(|at| *at > now) {
            if self.warm.is_none() {
                self.warm = Some(self.shared.runtime.sleep(at - now));
            }
            return 0;
        }
        let min_idle = u32::try_from(self.shared.ledger.min_idle().max(1)).unwrap_or(u32::MAX);
        self.warm_at = Some(now + window / min_idle);
        1
    }

    fn created(&mut self, result: Result<M::Connection, CreateFailure<M::Error>>) {
        let shared = &self.shared;
        match result {
            Ok(conn) => {
                shared.ledger.end_creation();
                shared.ledger.record_created();
                shared.ledger.set_server_full(false);
                self.backoff.succeeded();
                shared.ledger.set_callers_may_create(true);
                shared.set_last_create_error(None);
                if !shared.ledger.is_running() {
                    self.retire(conn);
                    return;
                }
                let now = shared.ledger.now_ms();
                let entry = Idle::fresh(
                    conn,
                    shared.created_stamp(now),
                    self.home,
                    shared.jitter_draw(),
                );
                if let Err(entry) = shared.put_idle(entry, true) {
                    self.retire(entry.conn);
                }
                // Creations may have been held back by `max_creating`.
                self.grow();
            }
            Err(failure) => {
                shared.ledger.end_creation();
                shared.ledger.release_slot();
                let full = matches!(&failure, CreateFailure::Backend(e) if shared.manager.is_server_full(e));
                shared.ledger.set_server_full(full);
                // A failed attempt does not use up its place in the pre-warm's pacing: the
                // backoff decides when the next one starts.
                self.warm_at = None;
                shared.ledger.set_callers_may_create(false);
                #[cfg(feature = "tracing")]
                match &failure {
                    CreateFailure::Backend(error) => {
                        event!(warn, error = %error, "the manager's create failed")
                    }
                    CreateFailure::Timeout(limit) => {
                        event!(warn, ?limit, "the manager's create timed out")
                    }
                    CreateFailure::Panicked => event!(warn, "the manager's create panicked"),
                    CreateFailure::Permanent(error) => {
                        event!(warn, error = %error, "the manager's create failed, permanently: every waiter is told")
                    }
                    // Told where it failed.
                    CreateFailure::Hook(_) => {}
                }
                // Fail-fast: the longest waiter learns why at once. Otherwise waiters keep
                // waiting while creation is retried, and one whose wait times out gets this
                // failure as the source of its timeout.
                // A permanent failure goes to every waiter at once.
                let kept = shared.fail_waiters(failure);
                if let Some(failure) = kept {
                    let error = failure.into();
                    shared.report_create_error(&error);
                    shared.set_last_create_error(Some(error));
                }
                // One pause per wave: creations started together fail together, and the
                // pause doubles once for them all, not once for each.
                if self.paused.is_none() {
                    let pause = if full {
                        self.backoff.failed_full(shared.config.full_backoff_max)
                    } else {
                        self.backoff.failed()
                    };
                    self.paused = Some(shared.runtime.sleep(pause));
                }
            }
        }
    }

    /// Closes `conn` gracefully. True when it is closed already: most farewells finish on
    /// their first poll (the default `shutdown` has nothing to say), and those are finished
    /// here rather than queued for later turns of the loop, one turn each. A farewell that is
    /// not done is queued; the loop polls it again, with the actor's own waker, before the
    /// actor next sleeps.
    fn retire(&mut self, conn: M::Connection) -> bool {
        let mut job: BoxFuture = Box::pin(shut_down(self.shared.clone(), conn));
        if job
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_ready()
        {
            return true;
        }
        self.closing.push(job);
        false
    }

    /// Closes idle connections gracefully, as one job rather than one each; finished on the
    /// spot when every farewell is done on its first poll, as in `retire`.
    fn say_farewells(&mut self, conns: VecDeque<Idle<M::Connection>>) {
        let mut job: BoxFuture = Box::pin(farewells(self.shared.clone(), conns));
        if job
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_pending()
        {
            self.closing.push(job);
        }
    }

    /// Reaps idle connections past their idle timeout or lifetime, then tops up. Returns how
    /// long until the next idle connection's idle timeout runs out, if one will before the
    /// next tick: the actor wakes for it then, so that a return confirmed at this tick (its
    /// stamp up to one interval after the real return) is still reaped within one interval
    /// of its timeout.
    fn maintain(&mut self) -> Option<std::time::Duration> {
        let shared = self.shared.clone();
        if !shared.ledger.is_running() {
            return None;
        }
        self.give_back_surplus();
        let mut next_due: Option<u64> = None;
        if shared.config.idle_timeout.is_some() || shared.config.max_lifetime.is_some() {
            // Read afresh: a return that lands between this read and the reaper's lock is
            // confirmed one millisecond later than the read, which is after it.
            let now = shared.ledger.tick_clock();
            let idle_ms = shared.config.idle_timeout.map(|_| shared.idle_ms);
            // Each connection is judged once: the reason is counted as it is taken.
            let expired = shared.waitlist.reap(|entry| {
                shared.confirm_return(entry, now + 1);
                match shared.expiry(entry) {
                    Some(reason) => {
                        shared.ledger.record_reason(reason);
                        true
                    }
                    None => {
                        if let Some(idle_ms) = idle_ms {
                            let due = entry.returned_ms.saturating_add(idle_ms);
                            next_due = Some(next_due.map_or(due, |d| d.min(due)));
                        }
                        false
                    }
                }
            });
            for entry in expired {
                self.retire(entry.conn);
            }
            if let Some(due) = next_due {
                self.grow();
                return Some(std::time::Duration::from_millis(
                    due.saturating_sub(now).max(1),
                ));
            }
        }
        self.grow();
        None
    }

    /// At the end of each surplus window, closes the idle connections no checkout needed
    /// throughout it (the fewest idle at any moment of it), those idle longest first. The
    /// pool then no longer tops up `min_idle`: it holds what its callers use (`grow`).
    fn give_back_surplus(&mut self) {
        let Some(window) = self.shared.config.surplus_window else {
            return;
        };
        let now = std::time::Instant::now();
        match self.surplus_due {
            Some(due) if now >= due => {}
            Some(_) => return,
            None => {
                // The first window starts now.
                self.shared.waitlist.take_low_water();
                self.surplus_due = Some(now + window);
                return;
            }
        }
        self.surplus_due = Some(now + window);
        let unneeded = self.shared.waitlist.take_low_water();
        if unneeded == 0 {
            return;
        }
        let gone = self.shared.waitlist.take_coldest(unneeded);
        if gone.is_empty() {
            return;
        }
        self.trimmed = true;
        self.shared
            .ledger
            .record_reasons(crate::ledger::Reason::Surplus, gone.len());
        event!(
            debug,
            closed = gone.len(),
            "gave back idle connections no checkout needed for a whole surplus window"
        );
        for entry in gone {
            self.retire(entry.conn);
        }
    }

    fn start_closing(&mut self) {
        let shared = self.shared.clone();
        // Creations under way go on (none starts from now): one made within the close
        // deadline says its goodbye (`created` retires it), so that the server sees a
        // Terminate rather than a client gone half-way through its handshake. Their slots keep
        // the close waiting, as checked-out connections do; `finish` abandons the rest.
        // The idle queue is closed already: what it holds is all it will ever hold.
        let idle = shared.waitlist.take_idle();
        if !idle.is_empty() {
            self.say_farewells(idle);
        }
        let started = shared.lock_close().started.map(|(at, _)| at);
        let deadline = shared.close_deadline();
        let left = started.map_or(deadline, |at| deadline.saturating_sub(at.elapsed()));
        self.deadline = Some(shared.runtime.sleep(left));
    }

    /// Every connection has ended. `slots` counts each live connection wherever it is —
    /// checked out, idle, handed to a waiter, popped by a `get` not yet checked out, in a
    /// `Retire` message — and every way a connection ends while closing reaches the actor
    /// (a `Retire`, its own jobs, a `Freed` from a detach), so it is woken to see this.
    fn closing_done(&self) -> bool {
        self.closing.is_empty() && self.shared.ledger.slots() == 0
    }

    /// Ends the close: creations still under way are abandoned (their futures dropped, their
    /// slots freed), connections still being shut down are closed synchronously, then the
    /// queues are closed and drained and the report written.
    fn finish(&mut self) {
        for _ in self.creating.drain(..) {
            self.shared.ledger.abandon_slot();
            self.shared.ledger.end_creation();
        }
        self.closing.clear();
        self.shared.drain_and_finish(CloseCause::Requested, false);
    }
}

/// Polls every future in `jobs`; removes and returns the output of the first that is ready.
/// The maintenance tick: rung by the deadline thread (see `deadline::Bell`), so that the
/// runtime holds no timer for it; a timer of the runtime's when the thread keeps no deadlines.
enum Tick {
    Bell(Arc<Bell>),
    Timer(BoxFuture),
}

impl Tick {
    fn after<M: Manager>(shared: &Shared<M>, after: std::time::Duration) -> Tick {
        match std::time::Instant::now()
            .checked_add(after)
            .and_then(Bell::at)
        {
            Some(bell) => Tick::Bell(bell),
            None => Tick::Timer(shared.runtime.sleep(after)),
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self {
            Tick::Bell(bell) => bell.poll(cx),
            Tick::Timer(timer) => timer.as_mut().poll(cx),
        }
    }
}

fn poll_any<T>(
    jobs: &mut Vec<Pin<Box<dyn Future<Output = T> + Send>>>,
    cx: &mut std::task::Context<'_>,
) -> Option<T> {
    for i in 0..jobs.len() {
        if let Poll::Ready(out) = jobs[i].as_mut().poll(cx) {
            drop(jobs.swap_remove(i));
            return Some(out);
        }
    }
    None
}

impl<M: Manager> Drop for PoolActor<M> {
    fn drop(&mut self) {
        // Runs when the actor finishes, and when a runtime teardown drops its task. Creations
        // under way are dropped with their futures; connections being shut down are closed
        // synchronously by their `Closing` holders; then the fallback drains the queues.
        self.shared.ledger.set_actor_alive(false);
        // A pool whose runtime follows its callers moves instead: `evict` says so.
        if self.shared.ledger.is_running() && !self.shared.ambient {
            event!(
                debug,
                "the pool actor was dropped while running (runtime teardown); closing synchronously"
            );
        }
        for _ in self.creating.drain(..) {
            self.shared.ledger.abandon_slot();
            self.shared.ledger.end_creation();
        }
        self.closing.clear();
        self.deadline = None;
        if self.shared.ambient {
            // The pool outlives this runtime: it moves on to the next caller's.
            self.shared.evict();
        } else {
            self.shared.shutdown_sync(CloseCause::RuntimeGone);
        }
    }
}
