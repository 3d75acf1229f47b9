//! The pool handle and its public methods. The checkout path is in `checkout.rs` (a caller's
//! own creation in `creation.rs`), the settings in `builder.rs`.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::builder::Builder;
use crate::config::ConfigError;
use crate::error::Error;
use crate::guard::Pooled;
use crate::ledger::Reason;
use crate::manager::Manager;
use crate::shared::{Msg, Shared};
use crate::status::{CloseCause, CloseReport, Metrics, PoolState, Status};

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

impl<M: Manager> Pool<M> {
    /// Starts configuring a pool for `manager`.
    pub fn builder(manager: M) -> Builder<M> {
        Builder::new(manager)
    }

    /// Checks a connection out, waiting up to the configured wait timeout.
    ///
    /// Takes an idle connection when there is one, with no round trip to the actor. Otherwise,
    /// when nobody waits ahead of it, the pool has room and the call runs on the pool's
    /// runtime ([`Runtime::is_current`](crate::Runtime::is_current)), creates the connection
    /// itself; else asks the actor to create one (never more than `max_size` alive) and waits,
    /// in FIFO order with other waiters, first come, first served. The whole call, health check
    /// and creation included, keeps to the wait timeout.
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

    /// A snapshot of sizes, waiters, state and counters. Needs no actor round trip. With the
    /// `metrics` feature, it also publishes them (a `/metrics` handler calls it before it
    /// renders, so the gauges are as of the scrape).
    pub fn status(&self) -> Status {
        self.shared.status()
    }

    /// Where the pool is in its life.
    pub fn state(&self) -> PoolState {
        self.shared.ledger.state()
    }
}
