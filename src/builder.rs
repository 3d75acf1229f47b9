//! The builder: every setting a pool takes, checked, and the start of its actor.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use event_listener::Event;

use crate::actor::PoolActor;
use crate::config::{Config, QueueOrder, PREALLOCATED_IDLE_LIMIT};
use crate::error::Error;
use crate::hooks::{HookFuture, Hooks};
use crate::ledger::Ledger;
use crate::manager::Manager;
use crate::pool::Pool;
use crate::runtime::Runtime;
use crate::shared::{CloseState, Shared};
use crate::status::Metrics;
use crate::sync::Mutex;
use crate::waitlist::Waitlist;

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
    /// The pool's name (`name`), kept here: only what the pool publishes uses it.
    name: Option<String>,
}

impl<M: Manager> fmt::Debug for Builder<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("config", &self.config)
            .field("runtime", &self.runtime.is_some())
            .field("hooks", &self.hooks.names())
            .field("name", &self.name)
            .finish()
    }
}

impl<M: Manager> Builder<M> {
    pub(crate) fn new(manager: M) -> Self {
        Builder {
            manager,
            config: Config::default(),
            runtime: None,
            on_create_error: None,
            hooks: Hooks::default(),
            name: None,
        }
    }

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
    /// pool closes. A wait does not time out early. On Linux and Android a timeout of a second
    /// or more is kept on the kernel's coarse clock and may end up to three of its ticks late
    /// (1–10 ms each, 4 ms on most kernels); a shorter one reads `Instant::now()`.
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

    /// At most this many creations in flight at once, the actor's and callers' own together
    /// (default 16). A burst of demand on an empty pool opens connections this many at a
    /// time rather than all at once. A fresh pool makes its first connection alone, and the
    /// rest once it has one: a server that refuses, is full or rejects the credentials is
    /// asked once, not by every caller at once.
    pub fn max_creating(mut self, max_creating: usize) -> Self {
        self.config.max_creating = max_creating;
        self
    }

    /// `min_idle` connections are made one at a time, spread evenly over `window` (default
    /// 1 s), at build and whenever the pool tops up (after connections expired together, say),
    /// so that a fleet of processes started together does not open all its connections in the
    /// same instant. Connections for waiting callers are never held back by it. A window
    /// longer than half the idle timeout is shortened to that. `Duration::ZERO`: all at once.
    pub fn prewarm_window(mut self, window: Duration) -> Self {
        self.config.prewarm_window = window;
        self
    }

    /// The longest pause between creation attempts while the server says it is full
    /// ([`Manager::is_server_full`]: PostgreSQL's `too many clients`; default 2 s). While it
    /// is, the pool makes one attempt at a time, and its pauses start at the `create_backoff`
    /// limit and double up to this: room on a full server comes only as other clients leave,
    /// and a fleet that retried four times a second per process would mostly collect
    /// refusals.
    pub fn server_full_backoff(mut self, longest: Duration) -> Self {
        self.config.full_backoff_max = longest;
        self
    }

    /// Gives back idle connections nobody needed (default: a window of 30 s). At the end of
    /// each window, as many idle connections as stayed idle through all of it — the fewest
    /// that were idle at any moment of it — are closed, those idle longest first, `min_idle`
    /// included. From then on the pool holds what its callers use (it still makes connections
    /// for callers who wait, up to `max_size`) and no longer tops up `min_idle`: `min_idle` is
    /// what a pool starts with and keeps until its load shows it is not needed. A process of a
    /// fleet keeps what its load uses, and a process started later finds room on the server.
    /// `None`: `min_idle` is a floor kept whatever the load.
    pub fn surplus_window(mut self, window: impl Into<Option<Duration>>) -> Self {
        self.config.surplus_window = window.into();
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

    /// The pool's name: the `pool` label of every figure it publishes with the `metrics`
    /// feature (default `"default"`), so that a dashboard tells a service's pools apart
    /// (`"primary"`, `"replica"`, `"cache"`). Pools of one process that share a name publish
    /// to the same figures, each overwriting the other's: give each its own.
    ///
    /// ```
    /// # use gracepool_testkit::{Counting, ExecRuntime};
    /// # let rt = ExecRuntime::new();
    /// let pool = gracepool::Pool::builder(Counting::new())
    ///     .name("primary")
    ///     .runtime(rt.handle())
    ///     .build()
    ///     .unwrap();
    /// # rt.block_on(async { pool.close().await });
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
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
        #[cfg(feature = "metrics")]
        ledger.metrics.register(self.name.as_deref());
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
