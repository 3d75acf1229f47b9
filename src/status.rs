//! What the pool can tell about itself.

use std::time::{Duration, Instant};

/// Where the pool is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolState {
    /// Serving connections.
    Running,
    /// `close()` was requested: no new checkouts, connections are being closed.
    Closing,
    /// Every connection the pool held is closed, or the close deadline passed.
    Closed,
}

/// Counts of what happened to connections over the pool's life.
///
/// Once no connection is checked out or in flight,
/// `created == closed_graceful + closed_sync + close_failed + detached`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connections the manager created.
    pub created: u64,
    /// Ended by [`Manager::shutdown`](crate::Manager::shutdown) with
    /// [`Goodbye::Said`](crate::Goodbye::Said): the goodbye went out.
    pub closed_graceful: u64,
    /// Ended without a goodbye: by [`Manager::close`](crate::Manager::close) (the sync
    /// fallback, a broken connection), by a `shutdown` that said
    /// [`Goodbye::Unsaid`](crate::Goodbye::Unsaid), or one that timed out or was cut short.
    pub closed_sync: u64,
    /// `close` returned an error or panicked. The connection is gone all the same.
    pub close_failed: u64,
    /// Taken out of the pool with [`Pooled::detach`](crate::Pooled::detach).
    pub detached: u64,
    /// Creations that failed, timed out or panicked (nothing to close).
    pub create_failed: u64,
    /// Health checks that failed, timed out or panicked (the connection was closed).
    pub check_failed: u64,
    /// Hooks that failed, timed out or panicked, all three kinds: an after-create failure
    /// ended its new connection (never counted as created, its creation counted in
    /// `create_failed`); a before-checkout failure closed its connection as a failed check
    /// (also in `check_failed`); an after-return failure closed it as broken (also in
    /// `closed_broken`).
    pub hook_failed: u64,
    /// Checkouts that succeeded.
    pub gets: u64,
    /// Calls to `get` that had to wait (nothing idle, or others ahead), however they ended:
    /// each once, whether it waited for a connection it made itself, for one from the pool,
    /// or for both in turn.
    pub gets_waited: u64,
    /// Calls to `get` that ended with [`Error::Timeout`](crate::Error::Timeout).
    pub gets_timed_out: u64,
    /// The time the calls that had to wait waited, added up: divided by `gets_waited`, the
    /// mean wait.
    ///
    /// On Linux and Android waits are read on the system's coarse monotonic clock, which
    /// advances once a kernel tick (1–10 ms, 4 ms on most distributions' kernels; a read
    /// costs a few nanoseconds where `Instant::now()` costs tens): each wait counts as a whole
    /// number of ticks, within one tick of its length, and the sum is right on average (a wait
    /// crosses as many tick boundaries, on average, as its length holds ticks). Elsewhere, and
    /// where the tick is over 10 ms, waits are read on `Instant`. A wait is counted from the
    /// moment the call queues, or its own creation turned out not to be quick.
    pub wait_total: Duration,
    /// The longest wait of one call, read as `wait_total`'s are: within one tick of the
    /// clock. Waits all shorter than a tick show as zero or one tick.
    pub wait_max: Duration,
    /// Closed as broken: [`Manager::is_broken`](crate::Manager::is_broken), a guard dropped
    /// while panicking, [`Pooled::close`](crate::Pooled::close), or idle ones a `get` took as
    /// stale after failed checks.
    pub closed_broken: u64,
    /// Closed after `idle_timeout` unused.
    pub closed_idle_timeout: u64,
    /// Closed for being older than `max_lifetime`.
    pub closed_max_lifetime: u64,
    /// Closed by [`Pool::retain`](crate::Pool::retain).
    pub closed_retained: u64,
    /// Closed because the pool was made smaller.
    pub closed_resized: u64,
    /// Idle connections given back because no checkout needed them for a whole surplus
    /// window (`Builder::surplus_window`).
    pub closed_surplus: u64,
    /// Closed because the runtime they were created on went away while the pool, whose
    /// runtime follows its callers ([`Runtime::ambient`](crate::Runtime::ambient)), lived on:
    /// idle ones at once, checked-out ones as their guards drop.
    pub closed_moved: u64,
    /// Closed because they were made before a refresh of the pool
    /// ([`Pool::refresh`](crate::Pool::refresh), or a manager that saw the server change role:
    /// [`Unfit::Server`](crate::Unfit::Server)): idle ones at once, checked-out ones as they
    /// come back.
    pub closed_refreshed: u64,
    /// Refreshes of the pool.
    pub refreshes: u64,
    /// Of `closed_sync`: connections whose goodbye was started but never confirmed — the
    /// manager's `shutdown` ran past the shutdown timeout (a server that stopped answering),
    /// or said [`Goodbye::Unconfirmed`](crate::Goodbye::Unconfirmed). A goodbye counts as
    /// `closed_graceful` only when the peer confirmed it.
    pub closed_unconfirmed: u64,
    /// Times the pool moved: its actor was started again, on a caller's runtime, after the
    /// runtime it ran on went away. Always 0 for a pool on one runtime.
    pub rehomed: u64,
}

impl Counters {
    /// Connections ended by the pool's close (requested, the last handle dropped, or the
    /// runtime gone): every end not counted under another reason. With `check_failed` and the
    /// `closed_*` reasons, it accounts for every connection that ended.
    ///
    /// ```
    /// # use gracepool_testkit::{Counting, ExecRuntime};
    /// # let rt = ExecRuntime::new();
    /// # let pool = gracepool::Pool::builder(Counting::new()).runtime(rt.handle()).build().unwrap();
    /// # rt.block_on(async {
    /// drop(pool.get().await.unwrap());
    /// let c = pool.close().await.counters;
    /// assert_eq!((c.gets, c.gets_waited, c.gets_timed_out), (1, 1, 0)); // it waited for creation
    /// assert_eq!(c.closed_by_close(), 1);
    /// # });
    /// ```
    pub fn closed_by_close(&self) -> u64 {
        (self.closed_graceful + self.closed_sync + self.close_failed).saturating_sub(
            self.check_failed
                + self.closed_broken
                + self.closed_idle_timeout
                + self.closed_max_lifetime
                + self.closed_retained
                + self.closed_resized
                + self.closed_surplus
                + self.closed_moved
                + self.closed_refreshed,
        )
    }

    /// Connections created and not yet closed or detached: checked out, idle, or being closed.
    pub fn open(&self) -> u64 {
        self.created.saturating_sub(
            self.closed_graceful + self.closed_sync + self.close_failed + self.detached,
        )
    }
}

/// A snapshot of the pool. Each figure is exact when read; taken together they describe a pool
/// that may have moved on.
#[derive(Debug, Clone, Copy)]
pub struct Status {
    /// The configured maximum number of connections.
    pub max_size: usize,
    /// Connections alive or being created.
    pub size: usize,
    /// Connections waiting in the idle queue.
    pub idle: usize,
    /// Connections checked out in a [`Pooled`](crate::Pooled) guard, or handed to a waiting
    /// caller that has not run since (it holds the connection as a guard holds it).
    pub in_use: usize,
    /// Callers waiting for a connection.
    pub waiters: usize,
    /// Running, closing or closed.
    pub state: PoolState,
    /// Whether the pool actor's task still exists. False while a pool whose runtime follows
    /// its callers has no home yet (before its first `get`, and after its runtime went away
    /// until the next `get`).
    pub actor_alive: bool,
    /// Lifetime counts, [`rehomed`](Counters::rehomed) (how many times the pool moved to
    /// another runtime) among them.
    pub counters: Counters,
}

/// Why the pool closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseCause {
    /// `close()` or `close_blocking()` was called.
    Requested,
    /// The last [`Pool`](crate::Pool) handle was dropped.
    LastHandleDropped,
    /// The actor's task was dropped, or the actor could not be started: its runtime is gone.
    RuntimeGone,
}

/// The account of a close: what every connection became.
#[derive(Debug, Clone, Copy)]
pub struct CloseReport {
    /// Why the pool closed.
    pub cause: CloseCause,
    /// Counts at the moment the close finished; for a pool whose runtime follows its callers,
    /// [`rehomed`](Counters::rehomed) says how many times it moved before the close, and
    /// [`closed_moved`](Counters::closed_moved) how many connections those moves closed.
    pub counters: Counters,
    /// Connections still checked out when the close finished (the deadline passed), counting
    /// one handed to a waiting caller that has not run since. Each is closed synchronously
    /// when its guard drops (or when that caller runs, or its `get` is dropped).
    pub checked_out: usize,
    /// Whether the synchronous fallback finished the close (the actor was gone, unpolled, or
    /// missed the deadline) rather than the actor.
    pub fallback: bool,
    /// From the close request to its end.
    pub elapsed: Duration,
}

impl CloseReport {
    /// Connections not yet closed when the report was made: checked out, or still being closed.
    pub fn still_open(&self) -> u64 {
        self.counters.open()
    }

    /// True when every connection was closed by the time the close finished.
    pub fn is_complete(&self) -> bool {
        self.still_open() == 0
    }
}

/// What the pool knows of one connection. Handed to [`Manager::check`](crate::Manager::check)
/// and to [`Pool::retain`](crate::Pool::retain)'s predicate, and readable from a guard with
/// [`Pooled::metrics`](crate::Pooled::metrics).
///
/// Times are the pool's, to the millisecond: [`created`](Metrics::created) as the connection was
/// made (for one a caller made, on Linux, up to three ticks of the kernel's coarse clock
/// later: 12 ms with 4 ms ticks; never earlier), [`last_returned`](Metrics::last_returned) as
/// its guard dropped, to within one maintenance interval (a return reads no clock: it takes
/// the actor's). Cheap to make: the instants are worked out only when asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metrics {
    epoch: Instant,
    created_ms: u64,
    returned_ms: u64,
    checkouts: u64,
}

impl Metrics {
    /// Metrics as given: for calling a manager's `check` yourself (in its tests, say).
    pub fn new(created: Instant, last_returned: Instant, checkouts: u64) -> Self {
        let since = |at: Instant| at.saturating_duration_since(created).as_millis() as u64;
        Metrics {
            epoch: created,
            created_ms: 0,
            returned_ms: since(last_returned),
            checkouts,
        }
    }

    pub(crate) fn at(epoch: Instant, created_ms: u64, returned_ms: u64, checkouts: u64) -> Self {
        Metrics {
            epoch,
            created_ms,
            returned_ms,
            checkouts,
        }
    }

    /// When the connection was created.
    pub fn created(&self) -> Instant {
        self.epoch + Duration::from_millis(self.created_ms)
    }

    /// When it was last given back to the pool; its creation, if it never was.
    pub fn last_returned(&self) -> Instant {
        self.epoch + Duration::from_millis(self.returned_ms)
    }

    /// How many times it was checked out, the current checkout included.
    pub fn checkouts(&self) -> u64 {
        self.checkouts
    }

    /// How long ago the connection was created.
    pub fn age(&self) -> Duration {
        self.created().elapsed()
    }

    /// How long the connection has been idle since it was last given back (for a checked-out
    /// connection: how long it waited before this checkout, plus the time since).
    pub fn idle_for(&self) -> Duration {
        self.last_returned().elapsed()
    }
}
