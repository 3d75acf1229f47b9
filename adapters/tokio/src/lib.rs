//! Run a [gracepool] pool actor on a tokio runtime.
//!
//! [`TokioRuntime`] implements [`gracepool::Runtime`]: it spawns the actor through a stored
//! [`Handle`] (so spawning never needs the calling thread to be inside the runtime, and never
//! panics once the runtime is gone), and it makes timers that work wherever they are polled.
//!
//! Works on multi-thread and current_thread runtimes and inside a `LocalSet`.
//!
//! # Example
//!
//! ```
//! use gracepool::{Manager, Pool};
//! use gracepool_tokio::TokioRuntime;
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
//! #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! async fn main() {
//!     let pool = Pool::builder(Numbers)
//!         .max_size(8)
//!         .runtime(TokioRuntime::current())
//!         .build()
//!         .expect("a valid configuration");
//!
//!     let conn = pool.get().await.expect("a connection");
//!     assert_eq!(*conn, 42);
//!     drop(conn);
//!
//!     // On shutdown (SIGTERM, end of main). Log the report: a request that outlives the close
//!     // deadline shows there as `checked_out`, closed when its guard drops.
//!     let report = pool.close().await;
//!     println!("pool closed: {report:?}");
//! #   assert!(report.is_complete());
//! }
//! ```
//!
//! If the runtime is dropped while the pool is still in use, the actor's task is dropped with
//! it and the pool closes itself synchronously: connections are closed, guards dropped later
//! close theirs, and `get()` reports [`gracepool::Error::RuntimeGone`]. Nothing panics.
//!
//! # A pool that outlives its runtime
//!
//! A pool on [`Ambient`] follows its callers instead: it needs no runtime to be built (so it
//! can live in a `static`), its actor starts on the runtime of the first `get`, and when that
//! runtime goes away the pool closes the connections made there and moves to the runtime of
//! the next `get` — a pool shared by `#[tokio::test]` functions, each on its own runtime:
//!
//! ```
//! use std::sync::LazyLock;
//! use gracepool::{Manager, Pool};
//! use gracepool_tokio::Ambient;
//! # struct Numbers;
//! # impl Manager for Numbers {
//! #     type Connection = u32;
//! #     type Error = std::io::Error;
//! #     async fn create(&self) -> Result<u32, std::io::Error> { Ok(42) }
//! # }
//!
//! static POOL: LazyLock<Pool<Numbers>> = LazyLock::new(|| {
//!     Pool::builder(Numbers)
//!         .runtime(Ambient::new())
//!         .build()
//!         .expect("a valid configuration")
//! });
//!
//! for _ in 0..2 {
//!     // A runtime per test; the second starts the pool's actor anew.
//!     let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//!     rt.block_on(async {
//!         assert_eq!(*POOL.get().await.expect("a connection"), 42);
//!     });
//! }
//! assert_eq!(POOL.status().counters.rehomed, 1);
//! ```
//!
//! `status().counters.rehomed` (and the close report's) counts the moves, `closed_moved` the
//! connections they closed. An explicit [`Pool::close`](gracepool::Pool::close) is for good:
//! no later `get`, from any runtime, starts the pool again. The guide's recipe "a pool shared
//! by your tests" walks through it; for smol's executors, `gracepool-smol` has the same mode
//! (`SmolRuntime::ambient()`), and inside an actix `System` this one works as it is.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::time::Duration;

use gracepool::{BoxFuture, Runtime, SpawnError};
use tokio::runtime::Handle;

/// A [`gracepool::Runtime`] on a tokio runtime, through a stored [`Handle`].
///
/// # Timers
///
/// A timer polled on the pool's own runtime uses tokio's timer, which needs the runtime's time
/// driver: `#[tokio::main]`, `#[tokio::test]` and `Builder::enable_all()` / `enable_time()`
/// turn it on. tokio panics on a timer made in a runtime without it, and nothing in tokio tells
/// beforehand whether it is on, so for such a runtime say so with
/// [`with_async_io_timers`](TokioRuntime::with_async_io_timers).
///
/// A timer polled anywhere else — another tokio runtime (which may lack a time driver), another
/// executor, a plain `block_on`, a thread whose runtime is gone — uses `async-io`'s timer, which
/// drives its own reactor and works everywhere.
///
/// One case is left to tokio: a timer first polled inside `Handle::block_on` or
/// `Handle::enter` of the pool's own runtime *after* that runtime was shut down panics there
/// (tokio offers no way to tell a shut-down runtime from a live one through its handle). The
/// pool makes no timer once it is closed, and it closes when the runtime drops its actor, so
/// this takes a pool used in the instant between the two.
#[derive(Debug, Clone)]
pub struct TokioRuntime {
    handle: Handle,
    tokio_timers: bool,
}

impl TokioRuntime {
    /// The runtime the caller is running on.
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime, like [`Handle::current`]. Use
    /// [`try_current`](TokioRuntime::try_current) to get an error instead.
    pub fn current() -> Self {
        TokioRuntime::from_handle(Handle::current())
    }

    /// The runtime the caller is running on, or an error outside any tokio runtime.
    pub fn try_current() -> Result<Self, SpawnError> {
        Handle::try_current()
            .map(TokioRuntime::from_handle)
            .map_err(|_| {
                SpawnError::new(
                    "not inside a tokio runtime; pass a Handle with TokioRuntime::from_handle",
                )
            })
    }

    /// The runtime `handle` belongs to; usable from any thread.
    pub fn from_handle(handle: Handle) -> Self {
        TokioRuntime {
            handle,
            tokio_timers: true,
        }
    }

    /// Never uses tokio's timer, only `async-io`'s: for a runtime built without its time
    /// driver (`Builder::enable_time()`), where tokio's timer would panic. Costs a little more
    /// per timer (a hand-off to `async-io`'s reactor thread).
    pub fn with_async_io_timers(mut self) -> Self {
        self.tokio_timers = false;
        self
    }

    /// The stored handle.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Runtime for TokioRuntime {
    fn spawn(&self, task: gracepool::BoxFuture) -> Result<(), SpawnError> {
        // On a runtime that has shut down, tokio drops the task at once instead of panicking;
        // the task's `Drop` then closes the pool. Report it as the failure it is.
        let join = self.handle.spawn(task);
        if join.is_finished() {
            return Err(SpawnError::new("the tokio runtime has shut down"));
        }
        Ok(())
    }

    /// True on a thread inside this runtime (a task of it, or its `block_on`): a connection a
    /// caller creates there is registered with the same runtime as one the actor creates.
    fn is_current(&self) -> bool {
        Handle::try_current().is_ok_and(|here| here.id() == self.handle.id())
    }

    fn sleep(&self, duration: Duration) -> BoxFuture {
        let ours = self.tokio_timers.then(|| self.handle.id());
        Box::pin(async move {
            // Which timer is decided where the future is first polled. On our own runtime,
            // whose time driver we were told is on, tokio's timer serves. Anywhere else tokio's
            // timer could panic (no runtime, a runtime without a time driver, one that is gone),
            // so async-io's, which runs its own reactor, serves instead.
            let here = Handle::try_current().ok().map(|h| h.id());
            if ours.is_some() && here == ours {
                tokio::time::sleep(duration).await;
            } else {
                async_io::Timer::after(duration).await;
            }
        })
    }
}

/// A [`gracepool::Runtime`] that follows the caller: the pool's actor is started on the tokio
/// runtime of the `get` that finds the pool without one (see
/// [`Runtime::ambient`]).
///
/// Building a pool on it needs no runtime. The first `get` starts the actor on its own runtime;
/// when that runtime goes away (a `#[tokio::test]` ends, a runtime is dropped), the connections
/// made there are closed synchronously, checked-out ones as their guards drop, and the next
/// `get` — from any live tokio runtime — starts a fresh actor there, with fresh connections.
/// Callers waiting on other runtimes when that happens are served by the new actor within
/// their wait timeout. A `get` from a thread with no tokio runtime on a pool that has no actor
/// fails with [`gracepool::Error::Spawn`]. [`Pool::close`](gracepool::Pool::close) closes for
/// good.
///
/// While several runtimes live at once (tests in parallel), the actor, and so every new
/// connection, lives on one of them, the runtime of the caller that started it: a connection
/// whose I/O is bound to its runtime fails when that runtime ends, even while another runtime's
/// task is using it. New checkouts never get such a connection once the pool has seen its
/// runtime go.
///
/// The pool moves when the runtime is *dropped*, not when nobody drives it: a current_thread
/// runtime kept after its `block_on` returned holds the actor, unpolled, and callers on other
/// runtimes wait out their wait timeout ([`gracepool::Error::Timeout`]) until it is dropped.
///
/// Works on multi-thread and current_thread runtimes, also those of actix-rt (an actix
/// `System` runs tokio runtimes). Timers: tokio's, on whichever runtime polls them (which
/// must have its time driver: `#[tokio::test]` and `enable_all()` turn it on), or `async-io`'s
/// where no tokio runtime is, or always with
/// [`with_async_io_timers`](Ambient::with_async_io_timers).
#[derive(Debug, Clone)]
pub struct Ambient {
    tokio_timers: bool,
}

impl Ambient {
    /// A runtime that follows the caller.
    pub fn new() -> Self {
        Ambient { tokio_timers: true }
    }

    /// Never uses tokio's timer, only `async-io`'s: for runtimes built without their time
    /// driver.
    pub fn with_async_io_timers(mut self) -> Self {
        self.tokio_timers = false;
        self
    }
}

impl Default for Ambient {
    fn default() -> Self {
        Ambient::new()
    }
}

impl Runtime for Ambient {
    fn spawn(&self, task: BoxFuture) -> Result<(), SpawnError> {
        let handle = Handle::try_current().map_err(|_| {
            SpawnError::new(
                "the pool has no actor and this thread is in no tokio runtime to start one on",
            )
        })?;
        // A runtime shutting down drops the task at once instead of panicking.
        let join = handle.spawn(task);
        if join.is_finished() {
            return Err(SpawnError::new("the tokio runtime is shutting down"));
        }
        Ok(())
    }

    fn sleep(&self, duration: Duration) -> BoxFuture {
        let tokio_timers = self.tokio_timers;
        Box::pin(async move {
            // Decided where the timer is first polled: tokio's timer inside a tokio runtime,
            // async-io's (its own reactor, works everywhere) outside one.
            if tokio_timers && Handle::try_current().is_ok() {
                tokio::time::sleep(duration).await;
            } else {
                async_io::Timer::after(duration).await;
            }
        })
    }

    fn ambient(&self) -> bool {
        true
    }
}
