//! The close protocol.
//!
//! `Running → Closing → Closed`. The first close request closes the waitlist, which holds the
//! idle queue too (waking every waiter, turning away every later return), and asks the actor to
//! close gracefully. The actor closes idle connections with `shutdown` + `close`, waits up to
//! the close deadline for checked-out ones and for creations under way (each made in time says
//! its goodbye; the rest are abandoned at the deadline), then finishes.
//!
//! The sync fallback ([`Shared::shutdown_sync`]) finishes the close whenever the actor cannot:
//! it is gone (its task was dropped: its `Drop` runs the fallback), or it did not finish in
//! time (a runtime that is not being polled). A closed mailbox means such a drain is already
//! under way, so a closer that finds it closed waits for that drain's report. The fallback
//! closes both queues *first*, so every later send fails and hands its connection back to the
//! sender, who closes it; then it drains both (the idle queue taken whole, the mailbox with
//! `try_recv`), closing each connection with the manager's synchronous `close`. Nothing can
//! slip in behind the drain, and each connection is taken by exactly one party. It uses only
//! channel operations, atomics, short-held mutexes and the manager's `close`: no spawn, no
//! timer, no runtime.

use std::future::{poll_fn, Future};
use std::task::Poll;
use std::time::{Duration, Instant};

use event_listener::Listener;

use crate::ledger::Ending;
use crate::manager::Manager;
use crate::shared::{Idle, Msg, Shared};
use crate::status::{CloseCause, CloseReport};
use crate::sync::{planted, Bug};

/// How long a closer waits beyond the close deadline for the actor before it falls back.
const ACTOR_GRACE: Duration = Duration::from_millis(100);

impl<M: Manager> Shared<M> {
    /// Requests a close without blocking. Idempotent. Falls back at once if the actor cannot
    /// be reached.
    pub(crate) fn begin_close(&self, cause: CloseCause) {
        self.begin_close_within(cause, None);
    }

    /// The close deadline in force: the shortest a closer asked for, else the configured one.
    pub(crate) fn close_deadline(&self) -> Duration {
        let asked = self.lock_close().deadline;
        asked.map_or(self.config.close_deadline, |d| {
            d.min(self.config.close_deadline)
        })
    }

    /// Like `begin_close`, with a close deadline of the caller's (`None`: the configured
    /// one). A shorter deadline asked once the close is under way shortens it: the actor is
    /// told again, and waits no longer than the new deadline from the close's start.
    pub(crate) fn begin_close_within(&self, cause: CloseCause, deadline: Option<Duration>) {
        if let Some(d) = deadline {
            let mut close = self.lock_close();
            let shorter = close.deadline.is_none_or(|old| d < old);
            if shorter {
                close.deadline = Some(d);
            }
            drop(close);
            if shorter && !self.ledger.is_running() && self.ledger.actor_alive() {
                // Already closing: the actor re-arms its deadline on another `Close`.
                let _ = self.mailbox_tx.try_send(Msg::Close);
            }
        }
        if !self.ledger.start_closing() {
            return;
        }
        self.lock_close().started = Some((Instant::now(), cause));
        event!(debug, ?cause, "close requested");
        // Closing the waitlist wakes every waiter with `Closed`, and makes every later
        // return fail, so returning guards close their connections instead. Before the actor
        // is told: the idle connections it takes then are all there will ever be. A check
        // under way is told too: it ends (a creation goes on, up to the close deadline).
        let tell_first = planted(Bug::TellBeforeClose);
        if !tell_first {
            self.waitlist.close();
        }
        self.closing.notify(usize::MAX);
        let reached = self.ledger.actor_alive()
            && match self.mailbox_tx.try_send(Msg::Close) {
                Ok(()) => true,
                // Only a drain already under way closes the mailbox (the actor finishing a
                // close it saw start, or a fallback), and every drain ends by writing the
                // report: running the fallback here too would race it and could mislabel an
                // actor's graceful close as a fallback.
                Err(e) => e.is_closed(),
            };
        if tell_first {
            self.waitlist.close();
        }
        if !reached {
            self.shutdown_sync(cause);
        }
    }

    /// The sync fallback: finishes the close here and now. Idempotent, callable from any
    /// thread, any `Drop`, with or without a runtime.
    pub(crate) fn shutdown_sync(&self, cause: CloseCause) {
        self.drain_and_finish(cause, true);
    }

    /// Closes and drains both queues, then writes the report. `fallback` says whether the
    /// close is finished by the fallback rather than by the actor at the end of its close.
    pub(crate) fn drain_and_finish(&self, cause: CloseCause, fallback: bool) {
        if self.ledger.start_closing() {
            self.lock_close().started = Some((Instant::now(), cause));
        }
        // Close first, then drain: after `close`, no send can succeed, so the drain sees
        // everything that will ever be queued.
        let drain_first = planted(Bug::DrainBeforeClose);
        if !drain_first {
            self.waitlist.close();
            self.closing.notify(usize::MAX);
            self.mailbox_tx.close();
        }
        self.close_drained(self.waitlist.take_idle());
        if drain_first {
            self.waitlist.close();
            self.closing.notify(usize::MAX);
            self.mailbox_tx.close();
        }
        self.finish_close(fallback);
    }

    /// Closes `idle`, then everything the mailbox holds, synchronously, and counts them;
    /// returns what else the mailbox held. Counted once at the end, not per connection:
    /// nothing reads the counts before the caller is done.
    fn close_drained(&self, idle: impl IntoIterator<Item = Idle<M::Connection>>) -> Drained {
        let (mut sync, mut failed) = (0, 0);
        let mut count = |ending| match ending {
            Ending::Failed => failed += 1,
            _ => sync += 1,
        };
        for entry in idle {
            count(self.close_uncounted(entry.conn));
        }
        let mut drained = Drained::default();
        while let Ok(msg) = self.mailbox_rx.try_recv() {
            match msg {
                Msg::Retire {
                    conn, from_guard, ..
                } => {
                    if from_guard {
                        self.ledger.check_in();
                    }
                    count(self.close_uncounted(conn));
                }
                Msg::Farewells(entries) => {
                    for entry in entries {
                        count(self.close_uncounted(entry.conn));
                    }
                }
                Msg::Returned(entry) => {
                    self.ledger.check_in();
                    count(self.close_uncounted(entry.conn));
                }
                Msg::Grow | Msg::Freed => drained.nudge = true,
                Msg::Close => drained.close_asked = true,
            }
        }
        self.ledger.record_ends(Ending::Sync, sync);
        self.ledger.record_ends(Ending::Failed, failed);
        drained
    }

    /// The actor of a pool whose runtime follows its callers is gone with its runtime, and
    /// the pool lives on: closes, synchronously, every connection made there that is idle or
    /// on its way to the actor, refuses the rest as they come back (their guards close them),
    /// and leaves the pool without a home, for the next caller to give it one. Waiters are
    /// woken to do that. While a close is under way, finishes it instead, as any pool would.
    /// Uses what the fallback uses: no spawn, no timer, no runtime.
    pub(crate) fn evict(&self) {
        // Held throughout, so that a close starting meanwhile writes its report only once
        // these connections are counted.
        let close = self.lock_close();
        if !self.ledger.is_running() {
            drop(close);
            self.shutdown_sync(CloseCause::RuntimeGone);
            return;
        }
        let (idle, waiters) = self.waitlist.evict();
        event!(
            debug,
            idle = idle.len(),
            "the runtime of the pool's actor went away; the pool moves to its next caller's"
        );
        let moved = idle.len();
        // Whatever the old actor was sent and never read goes too: retired connections,
        // whose reason their sender counted. A nudge read here may have been meant for the
        // next actor (a caller may start it any moment now): sent again.
        let Drained { nudge, close_asked } = self.close_drained(idle);
        self.ledger
            .record_reasons(crate::ledger::Reason::Moved, moved);
        if nudge {
            let _ = self.mailbox_tx.try_send(Msg::Grow);
        }
        if close_asked {
            let _ = self.mailbox_tx.try_send(Msg::Close);
        }
        drop(close);
        waiters.into_iter().for_each(std::task::Waker::wake);
    }

    /// Writes the report once and wakes every closer.
    pub(crate) fn finish_close(&self, fallback: bool) {
        let mut close = self.lock_close();
        if close.report.is_none() || planted(Bug::ReportTwice) {
            let (started, cause) = close
                .started
                .unwrap_or((Instant::now(), CloseCause::Requested));
            let report = CloseReport {
                cause,
                counters: self.ledger.counters(self.flow()),
                checked_out: self.ledger.in_use(self.flow()),
                fallback,
                elapsed: started.elapsed(),
            };
            event!(
                debug,
                ?cause,
                fallback,
                created = report.counters.created,
                closed_graceful = report.counters.closed_graceful,
                closed_sync = report.counters.closed_sync,
                close_failed = report.counters.close_failed,
                checked_out = report.checked_out,
                elapsed = ?report.elapsed,
                "pool closed"
            );
            close.report = Some(report);
            self.ledger.set_closed();
        }
        drop(close);
        self.closed.notify(usize::MAX);
        // The last figures, for a dashboard: no tick publishes them after the close.
        #[cfg(feature = "metrics")]
        let _ = self.status();
    }

    fn report(&self) -> Option<CloseReport> {
        self.lock_close().report
    }

    /// How long a closer still waits for the actor before falling back.
    fn patience(&self) -> Duration {
        let started = self.lock_close().started.map(|(at, _)| at);
        let total = self.close_deadline().saturating_add(ACTOR_GRACE);
        started.map_or(total, |at| total.saturating_sub(at.elapsed()))
    }
}

impl<M: Manager> Shared<M> {
    /// `Pool::close` and `close_within`: requests the close (with the caller's deadline, if
    /// any), then waits for its report, falling back when the actor does not finish in time.
    pub(crate) async fn close(&self, deadline: Option<Duration>) -> CloseReport {
        let shared = self;
        shared.begin_close_within(CloseCause::Requested, deadline);
        if let Some(report) = shared.report() {
            return report;
        }
        let mut listener = shared.closed.listen();
        if let Some(report) = shared.report() {
            return report;
        }
        let mut timer = shared.runtime.sleep(shared.patience());
        let finished = poll_fn(|cx| {
            if std::pin::Pin::new(&mut listener).poll(cx).is_ready() {
                return Poll::Ready(true);
            }
            timer.as_mut().poll(cx).map(|()| false)
        })
        .await;
        if !finished {
            shared.shutdown_sync(CloseCause::Requested);
        }
        shared
            .report()
            .expect("a close that finished or fell back has written its report")
    }

    /// `Pool::close_blocking`: the same, parking the thread instead of awaiting.
    pub(crate) fn close_blocking(&self, patience: Duration) -> CloseReport {
        let shared = self;
        shared.begin_close(CloseCause::Requested);
        if let Some(report) = shared.report() {
            return report;
        }
        let listener = shared.closed.listen();
        if shared.report().is_none() && listener.wait_timeout(patience).is_none() {
            shared.shutdown_sync(CloseCause::Requested);
        }
        shared
            .report()
            .expect("a close that finished or fell back has written its report")
    }
}

impl<M: Manager> Drop for Shared<M> {
    fn drop(&mut self) {
        // The last reference: the actor, every handle and every guard are gone. Whatever is
        // still queued is closed here, synchronously.
        self.shutdown_sync(CloseCause::LastHandleDropped);
        // A waiter's deadline may still be registered: it would keep this allocation until
        // it fell due.
        crate::deadline::forget((self as *const Self).cast());
    }
}

/// What a drain of the mailbox found besides connections.
#[derive(Default)]
struct Drained {
    /// A `Grow` or `Freed` was waiting.
    nudge: bool,
    /// A `Close` was waiting.
    close_asked: bool,
}
