//! The checked-out connection.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use crate::ledger::{Ending, Reason};
use crate::manager::{Manager, Unfit};
use crate::shared::{Idle, Msg, Shared};
use crate::status::Metrics;

/// A connection checked out of a [`Pool`](crate::Pool). Derefs to the connection.
///
/// Dropping it returns the connection to the idle queue with no round trip to the actor. The
/// connection is closed instead when the pool is closing or closed, when the actor is gone
/// (synchronously, with [`Manager::close`]), when the guard is dropped while its thread is
/// panicking (the connection may be in a broken state), or when [`Manager::is_broken`] says so. Dropping a guard never blocks, spawns
/// or panics.
pub struct Pooled<M: Manager> {
    entry: Option<Idle<M::Connection>>,
    shared: Arc<Shared<M>>,
    /// Set while the health check runs: a guard dropped then retires its connection.
    checking: bool,
    /// Set by [`Pooled::retire_on_return`]: the connection is closed when the guard drops.
    unfit: bool,
    /// When its check passed: the start of its use, for the `metrics` feature's histogram.
    #[cfg(feature = "metrics")]
    since: crate::metrics::Since,
}

impl<M: Manager> Pooled<M> {
    pub(crate) fn checking(shared: Arc<Shared<M>>, mut entry: Idle<M::Connection>) -> Self {
        entry.checkouts = entry.checkouts.saturating_add(1);
        Pooled {
            entry: Some(entry),
            shared,
            checking: true,
            unfit: false,
            #[cfg(feature = "metrics")]
            since: Default::default(),
        }
    }

    pub(crate) fn checked(&mut self) {
        self.checking = false;
        #[cfg(feature = "metrics")]
        self.since.start();
    }

    /// Whether its health check passed (or none was due).
    pub(crate) fn is_checked(&self) -> bool {
        !self.checking
    }

    /// What the pool knows of this connection: when it was created, when it was last given
    /// back (before this checkout), how many times it was checked out (this time included).
    /// An associated function (`Pooled::metrics(&conn)`), so it never hides a method of the
    /// connection itself.
    ///
    /// ```
    /// # use gracepool_testkit::{Counting, ExecRuntime};
    /// # let rt = ExecRuntime::new();
    /// # let pool = gracepool::Pool::builder(Counting::new()).max_size(4).runtime(rt.handle()).build().unwrap();
    /// # rt.block_on(async {
    /// let conn = pool.get().await.unwrap();
    /// let metrics = gracepool::Pooled::metrics(&conn);
    /// assert_eq!(metrics.checkouts(), 1);
    /// assert!(metrics.age() < std::time::Duration::from_secs(1));
    /// # drop(conn); pool.close().await;
    /// # });
    /// ```
    pub fn metrics(this: &Self) -> Metrics {
        this.shared.metrics_of(
            this.entry
                .as_ref()
                .expect("a guard holds its connection until it is dropped or detached"),
        )
    }

    pub(crate) fn conn_mut(&mut self) -> &mut M::Connection {
        &mut self
            .entry
            .as_mut()
            .expect("a guard holds its connection until it is dropped or detached")
            .conn
    }

    /// Takes the connection out of the pool for good. The pool forgets it (it counts as
    /// `detached`) and its slot is free for a new connection; closing it is now the caller's
    /// business.
    pub fn detach(mut this: Self) -> M::Connection {
        let entry = this
            .entry
            .take()
            .expect("a guard holds its connection until it is dropped or detached");
        let shared = &this.shared;
        shared.ledger.check_in();
        shared.ledger.record_end(Ending::Detached);
        // A slot is free: the actor may serve a waiter, or finish a close.
        if shared.ledger.actor_alive() {
            let _ = shared.mailbox_tx.try_send(Msg::Freed);
        }
        entry.conn
    }
}

impl<M: Manager> Deref for Pooled<M> {
    type Target = M::Connection;

    fn deref(&self) -> &M::Connection {
        &self
            .entry
            .as_ref()
            .expect("a guard holds its connection until it is dropped or detached")
            .conn
    }
}

impl<M: Manager> DerefMut for Pooled<M> {
    fn deref_mut(&mut self) -> &mut M::Connection {
        self.conn_mut()
    }
}

impl<M: Manager> fmt::Debug for Pooled<M>
where
    M::Connection: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Pooled").field(&**self).finish()
    }
}

/// Asks the manager whether a returning connection is unfit; a panic there counts as a broken
/// connection.
fn unfit<M: Manager>(manager: &M, conn: &mut M::Connection) -> Option<Unfit> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| manager.unfit(conn)))
        .unwrap_or(Some(Unfit::Connection))
}

impl<M: Manager> Drop for Pooled<M> {
    fn drop(&mut self) {
        #[cfg(feature = "metrics")]
        self.shared.ledger.metrics.used(self.since);
        let Some(mut entry) = self.entry.take() else {
            return;
        };
        let shared = &self.shared;
        // The rare ends first, each out of line: the hot path below stays small enough to
        // be inlined with the put.
        if !shared.ledger.is_running() || self.checking || self.unfit || std::thread::panicking() {
            return self.retire_returned(entry);
        }
        if let Some(verdict) = unfit(&shared.manager, &mut entry.conn) {
            return retire_unfit(shared, entry, verdict);
        }
        let surplus = shared.ledger.take_surplus();
        if surplus || shared.hooks.after_return.is_some() {
            return self.return_slowly(entry, surplus);
        }
        // Stamped with the coarse clock, unconfirmed until the actor's next tick (see
        // `Shared::put_returned`): a return reads no clock. One made before a refresh is
        // taken out again at once (`reap_if_refreshed`).
        let created = entry.created();
        match shared.put_returned(entry) {
            // Counted as returned by the waitlist, under its lock.
            Ok(()) => shared.reap_if_refreshed(created),
            // A closed queue hands the connection back: close started after the check above;
            // or the runtime it was made under went away (the pool moved on).
            Err(entry) => refused(shared, entry),
        }
    }
}

/// A connection the idle queue refused: closed.
#[cold]
fn refused<M: Manager>(shared: &Shared<M>, entry: Idle<M::Connection>) {
    if entry.home != shared.waitlist.home() {
        shared.ledger.record_reason(Reason::Moved);
    }
    shared.retire(entry.conn, entry.home, true)
}

/// A connection its manager found unfit on return.
#[cold]
fn retire_unfit<M: Manager>(shared: &Shared<M>, entry: Idle<M::Connection>, verdict: Unfit) {
    match verdict {
        Unfit::Server => {
            // The server changed: this one goes, and with it every one made before now —
            // unless a refresh since this one was made covered it already (eight connections
            // that all saw the same failover refresh the pool once, not eight times, each
            // retiring the replacements the one before made).
            let covered = entry.created() < shared.ledger.refresh_mark_ordered();
            shared.ledger.record_reason(Reason::Refreshed);
            shared.retire(entry.conn, entry.home, true);
            if !covered {
                shared.refresh();
            }
        }
        _ => {
            shared.ledger.record_reason(Reason::Broken);
            shared.retire(entry.conn, entry.home, true);
        }
    }
}

impl<M: Manager> Pooled<M> {
    /// A guard that does not simply return its connection: the pool is closing, its check
    /// did not pass, its holder marked it, or its thread is panicking.
    #[cold]
    fn retire_returned(&self, entry: Idle<M::Connection>) {
        let shared = &self.shared;
        if !shared.ledger.is_running() {
            shared.retire(entry.conn, entry.home, true);
        } else if self.checking {
            // Its check failed, timed out, or was cut short with the `get` that ran it.
            shared.ledger.record_check_failed();
            shared.retire(entry.conn, entry.home, true);
        } else {
            // Marked done (`retire_on_return`), or dropped while panicking: the connection
            // may be in a broken state.
            shared.ledger.record_reason(Reason::Broken);
            shared.retire(entry.conn, entry.home, true);
        }
    }

    /// A return that is not a plain put: the pool is shrinking, or the after-return hook
    /// runs first.
    #[cold]
    fn return_slowly(&self, entry: Idle<M::Connection>, surplus: bool) {
        let shared = &self.shared;
        if surplus {
            // The pool was made smaller: this one goes instead of back.
            shared.ledger.record_reason(Reason::Resized);
            shared.retire(entry.conn, entry.home, true);
        } else {
            // The actor runs the hook, then puts it back (see `Shared::recycle`).
            shared.recycle(entry);
        }
    }
}

impl<M: Manager> Pooled<M> {
    /// Marks this connection as done: it is closed when the guard drops, instead of going
    /// back to the pool (counted as `closed_broken`). For a caller that saw an error meaning
    /// the connection, or its server, is no longer fit (a protocol error, a read-only server
    /// after a failover) but still holds it. An associated function, so it never hides a
    /// method of the connection itself.
    ///
    /// ```
    /// # use gracepool_testkit::{Counting, ExecRuntime};
    /// # let rt = ExecRuntime::new();
    /// # let pool = gracepool::Pool::builder(Counting::new()).max_size(4).runtime(rt.handle()).build().unwrap();
    /// # rt.block_on(async {
    /// let mut conn = pool.get().await.unwrap();
    /// gracepool::Pooled::retire_on_return(&mut conn);
    /// drop(conn);
    /// assert_eq!(pool.status().counters.closed_broken, 1);
    /// # pool.close().await;
    /// # });
    /// ```
    pub fn retire_on_return(this: &mut Self) {
        this.unfit = true;
    }

    /// Closes this connection instead of returning it: for a handler that knows it is broken
    /// (a protocol error, a session left in a state the next caller must not see). It ends as
    /// any retired connection does — the manager's goodbye and end through the pool's actor
    /// while it runs, the synchronous [`Manager::close`] otherwise — and is counted, and its
    /// place is free for a new connection. Never blocks.
    ///
    /// An associated function (`Pooled::close(conn)`), so it never hides a method of the
    /// connection itself.
    ///
    /// ```
    /// # use gracepool_testkit::{Counting, ExecRuntime};
    /// # let rt = ExecRuntime::new();
    /// # let pool = gracepool::Pool::builder(Counting::new()).max_size(4).runtime(rt.handle()).build().unwrap();
    /// # rt.block_on(async {
    /// let conn = pool.get().await.unwrap();
    /// // The request failed half-way through a protocol exchange: do not reuse this one.
    /// gracepool::Pooled::close(conn);
    /// let report = pool.close().await;
    /// assert_eq!(report.counters.closed_broken, 1);
    /// # });
    /// ```
    pub fn close(mut this: Self) {
        if let Some(entry) = this.entry.take() {
            this.shared.ledger.record_reason(Reason::Broken);
            this.shared.retire(entry.conn, entry.home, true);
        }
    }
}
