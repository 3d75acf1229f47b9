//! Run a [gracepool] pool on actix: the pool actor lives on an actix [`Arbiter`], and an actix
//! actor, [`PoolActor`], answers [`Get`], [`GetStatus`] and [`Close`] messages.
//!
//! - [`ActixRuntime`] implements [`gracepool::Runtime`]: it spawns the pool's own actor through
//!   an [`ArbiterHandle`] (a stopped arbiter is a [`gracepool::SpawnError`], never a panic).
//!   Connections are made on that arbiter, or, with
//!   [`with_caller_arbiters`](ActixRuntime::with_caller_arbiters), also on the arbiters of the
//!   callers that need them (actix-web's workers); see
//!   [Where connections are made](ActixRuntime#where-connections-are-made).
//! - [`PoolActor`] wraps a [`Pool`] so an actix app can `addr.send(Get::new())` a connection
//!   and `addr.send(Close).await` on shutdown. When it stops — the `System` stops, its arbiter
//!   stops, or the last `Addr` to it is dropped — it begins a close ([`Pool::begin_close`])
//!   and returns at once. When only its last `Addr` was dropped, the pool's own actor still
//!   runs and closes every connection gracefully, goodbyes included; when the `System` stops,
//!   the runtime drops that actor next, and the synchronous fallback closes what is left (each
//!   connection with [`Manager::close`]).
//!
//! # Example
//!
//! ```
//! use actix::Actor;
//! use gracepool::{Manager, Pool};
//! use gracepool_actix::{ActixRuntime, Close, Get, PoolActor, GetStatus};
//!
//! struct Numbers;
//!
//! impl Manager for Numbers {
//!     type Connection = u32;
//!     type Error = std::io::Error;
//!
//!     async fn create(&self) -> Result<u32, std::io::Error> {
//!         Ok(42)
//!     }
//! }
//!
//! actix_rt::System::new().block_on(async {
//!     let pool = Pool::builder(Numbers)
//!         .max_size(8)
//!         .runtime(ActixRuntime::current())
//!         .build()
//!         .expect("a valid configuration");
//!
//!     // Handlers can use the pool directly (it is cheap to clone) ...
//!     let conn = pool.get().await.expect("a connection");
//!     assert_eq!(*conn, 42);
//!     drop(conn);
//!
//!     // ... or talk to it as an actix actor.
//!     let addr = PoolActor::new(pool).start();
//!     let conn = addr.send(Get::new()).await.expect("the actor answers").expect("a connection");
//!     assert_eq!(*conn, 42);
//!     drop(conn);
//!     let status = addr.send(GetStatus).await.expect("the actor answers");
//!     assert_eq!(status.idle, 1);
//!
//!     // On shutdown: a graceful close, every connection accounted for.
//!     let report = addr.send(Close).await.expect("the actor answers");
//!     println!("pool closed: {report:?}");
//! #   assert!(report.is_complete());
//! });
//! ```
//!
//! # Stopping the System
//!
//! For a graceful close (each connection's [`Manager::shutdown`] farewell, waiting for
//! checked-out connections up to the close deadline), send [`Close`] and await it before the
//! `System` stops, as on SIGTERM. Stopping the `System` without it still closes every
//! connection exactly once: [`PoolActor`] begins the close when it stops, the pool's own actor
//! closes what it holds (with the synchronous fallback when its arbiter drops it), and guards
//! dropped later close theirs.
//! Nothing panics and nothing is printed.
//!
//! Connections are handed around only inside [`gracepool::Pooled`] guards, never as bare
//! messages: a guard that is dropped undelivered (an actix reply nobody waits for any more)
//! returns its connection to the pool or closes it.
//!
//! # A pool that outlives its System
//!
//! [`ActixRuntime`] ties the pool to one arbiter: when that arbiter or its `System` is gone,
//! the pool is closed for good, and [`PoolActor`] closes it when the `System` stops. That is
//! the point of this crate (an app's pool lives as long as its `System`), so it has no mode in
//! which the pool moves on. A pool that must outlive a `System` — one kept in a `static` and
//! used by tests that each start their own — is built on `gracepool_tokio::Ambient` instead:
//! actix-rt runs each `System` and each [`Arbiter`] on a tokio current-thread runtime, so the
//! pool's actor starts on the runtime of the thread that calls `get`, and moves to the next
//! `System` when that one is dropped (the shutdown matrix runs rows S15–S18 so, in its `actix`
//! column). Use the pool directly there, without a [`PoolActor`] in front, whose stop would
//! close it.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix::{Actor, Context, Handler, Message, MessageResult, ResponseFuture};
use actix_rt::{Arbiter, ArbiterHandle, System};
use gracepool::{BoxFuture, CloseReport, Manager, Pool, Pooled, Runtime, SpawnError};

/// A [`gracepool::Runtime`] on an actix [`Arbiter`].
///
/// Timers: a timer polled on a thread of an actix `System` (an arbiter, an actix-web worker)
/// uses tokio's timer, which actix's runtimes always enable; anywhere else, `async-io`'s, which
/// works wherever it is polled. An arbiter built with `Arbiter::with_tokio_rt` on a runtime
/// without a time driver needs [`with_async_io_timers`](ActixRuntime::with_async_io_timers).
///
/// # Where connections are made
///
/// The pool's actor makes connections on its arbiter. A `get` that runs on that same arbiter,
/// finds nothing idle, nobody waiting and room in the pool makes its connection itself, in its
/// own task, without the round trip to the actor ([`Runtime::is_current`]): on the same
/// arbiter, so nothing else changes. A `get` on any other thread (an actix-web worker, say)
/// asks the actor. So by default every connection is made on the pool's arbiter, and a
/// connection whose I/O lives in a task of its own (tokio-postgres' driver) lives there: it
/// lasts as long as that arbiter, whichever worker uses it.
/// [`with_caller_arbiters`](ActixRuntime::with_caller_arbiters) lets callers on the other
/// arbiters of the `System` make connections too, on their own arbiters.
#[derive(Debug, Clone)]
pub struct ActixRuntime {
    arbiter: ArbiterHandle,
    tokio_timers: bool,
    caller_arbiters: bool,
    /// The pool arbiter's System and tokio runtime: read on the arbiter itself, by
    /// [`current`](ActixRuntime::current) or else by the first task [`Runtime::spawn`] starts
    /// there. Until it is known, no caller creates (the actor does).
    home: Arc<OnceLock<Home>>,
}

/// Which System, and which of its arbiters (each runs a tokio runtime of its own), a thread
/// belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Home {
    system: usize,
    runtime: tokio::runtime::Id,
}

impl Home {
    /// The calling thread's, when it runs inside an actix arbiter's runtime. The runtime
    /// context is read first: it is readable even while thread-locals are being torn down.
    fn here() -> Option<Home> {
        let runtime = tokio::runtime::Handle::try_current().ok()?.id();
        Arbiter::try_current()?;
        let system = System::try_current()?.id();
        Some(Home { system, runtime })
    }
}

impl ActixRuntime {
    /// The arbiter of the calling thread (in `#[actix::main]`, the System's own).
    ///
    /// # Panics
    ///
    /// Outside an actix `System`, like [`Arbiter::current`]. Use
    /// [`try_current`](ActixRuntime::try_current) to get an error instead.
    pub fn current() -> Self {
        ActixRuntime::from_arbiter(Arbiter::current()).at_home_here()
    }

    /// The arbiter of the calling thread, or an error outside an actix `System`.
    pub fn try_current() -> Result<Self, SpawnError> {
        Arbiter::try_current()
            .map(|arbiter| ActixRuntime::from_arbiter(arbiter).at_home_here())
            .ok_or_else(|| {
                SpawnError::new(
                    "not on an actix arbiter; pass an ArbiterHandle with ActixRuntime::from_arbiter",
                )
            })
    }

    /// Records the calling thread, the arbiter's own, as the pool's home.
    fn at_home_here(self) -> Self {
        if let Some(here) = Home::here() {
            let _ = self.home.set(here);
        }
        self
    }

    /// The arbiter `arbiter` points to (for example a dedicated `Arbiter::new().handle()`);
    /// usable from any thread.
    pub fn from_arbiter(arbiter: ArbiterHandle) -> Self {
        ActixRuntime {
            arbiter,
            tokio_timers: true,
            caller_arbiters: false,
            home: Arc::new(OnceLock::new()),
        }
    }

    /// Lets a `get` on any arbiter of the pool's `System` — an actix-web worker's, say — make
    /// the connection it needs itself, on its own arbiter, as it may on the pool's arbiter (see
    /// [Where connections are made](ActixRuntime#where-connections-are-made)). In actix-web,
    /// connections (and tokio-postgres' driver tasks) are then spread over the workers' threads
    /// instead of all living on the System's.
    ///
    /// The cost: such a connection's I/O lives only as long as the arbiter that made it. A
    /// worker that stops before the pool closes — actix-web stops its workers before
    /// `server.run().await` returns, and replaces one whose thread panicked — takes with it
    /// the tasks that drove its connections, and a query in flight on one of them, from any
    /// worker, fails. The pool still holds each such connection and closes each exactly once,
    /// never with a panic or a word on stderr: a health check that sees it dead closes it
    /// (gracepool-postgres' default check does, for free), and the pool's close ends it
    /// without its goodbye when saying it needed the stopped worker (gracepool-postgres
    /// counts it in `closed_sync`, not `closed_graceful`). For every goodbye, close the pool
    /// while the workers still run, or keep the default.
    pub fn with_caller_arbiters(mut self) -> Self {
        self.caller_arbiters = true;
        self
    }

    /// Never uses tokio's timer, only `async-io`'s: for arbiters on a tokio runtime built
    /// without its time driver.
    pub fn with_async_io_timers(mut self) -> Self {
        self.tokio_timers = false;
        self
    }

    /// The arbiter the pool actor is spawned on.
    pub fn arbiter(&self) -> &ArbiterHandle {
        &self.arbiter
    }
}

impl Runtime for ActixRuntime {
    fn spawn(&self, task: BoxFuture) -> Result<(), SpawnError> {
        // Built with `from_arbiter` elsewhere: the task learns the arbiter's home as it starts.
        let task = match self.home.get() {
            Some(_) => task,
            None => {
                let home = Arc::clone(&self.home);
                Box::pin(async move {
                    if let Some(here) = Home::here() {
                        let _ = home.set(here);
                    }
                    task.await
                })
            }
        };
        // A stopped arbiter hands the task back and it is dropped here: the pool actor's
        // `Drop` closes the pool.
        if self.arbiter.spawn(task) {
            Ok(())
        } else {
            Err(SpawnError::new(
                "the actix arbiter has stopped; build the pool on a running one",
            ))
        }
    }

    /// True on the pool's own arbiter; with
    /// [`with_caller_arbiters`](ActixRuntime::with_caller_arbiters), on any arbiter of its
    /// `System`. A connection a caller makes there is registered with that arbiter's runtime.
    fn is_current(&self) -> bool {
        let (Some(home), Some(here)) = (self.home.get(), Home::here()) else {
            return false;
        };
        if self.caller_arbiters {
            here.system == home.system
        } else {
            here.runtime == home.runtime
        }
    }

    fn sleep(&self, duration: Duration) -> BoxFuture {
        let tokio_timers = self.tokio_timers;
        Box::pin(async move {
            // Decided where the timer is first polled. The runtime context is checked first:
            // it is readable even while thread-locals are being torn down, and only inside
            // one is the arbiter's thread-local looked at.
            let actix_thread = tokio_timers
                && tokio::runtime::Handle::try_current().is_ok()
                && Arbiter::try_current().is_some();
            if actix_thread {
                tokio::time::sleep(duration).await;
            } else {
                async_io::Timer::after(duration).await;
            }
        })
    }
}

/// An actix actor in front of a [`Pool`]: answers [`Get`], [`GetStatus`] and [`Close`], and closes
/// the pool when it stops.
///
/// Start it with `PoolActor::new(pool).start()` (on the current arbiter) or
/// `PoolActor::start_in_arbiter`. The pool's own actor runs wherever the pool's
/// [`ActixRuntime`] points, whichever arbiter this one is on.
pub struct PoolActor<M: Manager> {
    pool: Pool<M>,
}

impl<M: Manager> PoolActor<M> {
    /// An actor in front of `pool`. The pool keeps working for other handles to it until the
    /// actor stops, which closes it.
    pub fn new(pool: Pool<M>) -> Self {
        PoolActor { pool }
    }

    /// The pool this actor fronts.
    pub fn pool(&self) -> &Pool<M> {
        &self.pool
    }
}

impl<M: Manager> Actor for PoolActor<M> {
    type Context = Context<Self>;

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        // Starts the close without waiting for it. When this actor stopped because its last
        // `Addr` was dropped, the pool's own actor is alive and closes every connection
        // gracefully, goodbyes included. When the System is stopping, the runtime drops the
        // pool's actor next, and its `Drop` finishes the close with the synchronous fallback.
        self.pool.begin_close();
    }
}

/// Checks a connection out: the reply is the [`Pool::get`] result (or
/// [`Pool::get_timeout`], with [`Get::timeout`]).
pub struct Get<M: Manager> {
    timeout: Option<Duration>,
    manager: PhantomData<fn() -> M>,
}

impl<M: Manager> Get<M> {
    /// A checkout waiting up to the pool's wait timeout.
    pub fn new() -> Self {
        Get {
            timeout: None,
            manager: PhantomData,
        }
    }

    /// A checkout waiting at most `timeout`.
    pub fn timeout(timeout: Duration) -> Self {
        Get {
            timeout: Some(timeout),
            manager: PhantomData,
        }
    }
}

impl<M: Manager> Default for Get<M> {
    fn default() -> Self {
        Get::new()
    }
}

impl<M: Manager> std::fmt::Debug for Get<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Get")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<M: Manager> Message for Get<M> {
    type Result = Result<Pooled<M>, gracepool::Error<M::Error>>;
}

impl<M: Manager> Handler<Get<M>> for PoolActor<M> {
    type Result = ResponseFuture<Result<Pooled<M>, gracepool::Error<M::Error>>>;

    fn handle(&mut self, msg: Get<M>, _ctx: &mut Context<Self>) -> Self::Result {
        let pool = self.pool.clone();
        Box::pin(async move {
            match msg.timeout {
                Some(limit) => pool.get_timeout(limit).await,
                None => pool.get().await,
            }
        })
    }
}

/// Asks for the pool's [`gracepool::Status`] (named apart from it, so both can be imported).
#[derive(Debug, Clone, Copy, Default)]
pub struct GetStatus;

impl Message for GetStatus {
    type Result = gracepool::Status;
}

impl<M: Manager> Handler<GetStatus> for PoolActor<M> {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _msg: GetStatus, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.pool.status())
    }
}

/// Closes the pool gracefully ([`Pool::close`]); the reply is its [`CloseReport`]. Every
/// sender gets the same report.
#[derive(Debug, Clone, Copy, Default)]
pub struct Close;

impl Message for Close {
    type Result = CloseReport;
}

impl<M: Manager> Handler<Close> for PoolActor<M> {
    type Result = ResponseFuture<CloseReport>;

    fn handle(&mut self, _msg: Close, _ctx: &mut Context<Self>) -> Self::Result {
        let pool = self.pool.clone();
        Box::pin(async move { pool.close().await })
    }
}
