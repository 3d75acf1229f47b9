//! Run a [gracepool] pool actor on smol: its global executor, an
//! [`async_executor::Executor`] of your own, or whichever executor runs the caller.
//!
//! [`SmolRuntime`] implements [`gracepool::Runtime`]. Timers come from `async-io`, which drives
//! its own reactor: they work wherever they are polled, under any executor or none, also after
//! the executor that made them is gone.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use gracepool::{Manager, Pool};
//! use gracepool_smol::SmolRuntime;
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
//! // Your own executor, run by your own threads (here: this one).
//! let ex = Arc::new(async_executor::Executor::new());
//! let pool = Pool::builder(Numbers)
//!     .max_size(8)
//!     .runtime(SmolRuntime::from_executor(&ex))
//!     .build()
//!     .expect("a valid configuration");
//!
//! async_io::block_on(ex.run(async {
//!     let conn = pool.get().await.expect("a connection");
//!     assert_eq!(*conn, 42);
//!     drop(conn);
//!
//!     // On shutdown:
//!     let report = pool.close().await;
//!     println!("pool closed: {report:?}");
//! #   assert!(report.is_complete());
//! }));
//!
//! // Or on smol's global executor, which runs on its own threads:
//! let pool = Pool::builder(Numbers)
//!     .runtime(SmolRuntime::global())
//!     .build()
//!     .expect("a valid configuration");
//! async_io::block_on(async {
//!     assert_eq!(*pool.get().await.expect("a connection"), 42);
//!     let report = pool.close().await;
//!     println!("pool closed: {report:?}");
//! #   assert!(report.is_complete());
//! });
//! ```
//!
//! # Executor lifetime
//!
//! A pool on [`SmolRuntime::from_executor`] holds the executor **weakly**. The executor owns the
//! actor's task and the actor holds the pool, so a strong reference back from the pool would be
//! a cycle that kept the executor, and every connection, alive forever. With a weak one,
//! dropping your last `Arc<Executor>` drops the actor's task; the pool then closes itself
//! synchronously: idle connections are closed at once, guards dropped later close theirs,
//! `get()` reports [`gracepool::Error::RuntimeGone`], and nothing panics.
//!
//! smol's global executor lives until the process exits and never drops its tasks: close a pool
//! on it with [`Pool::close`](gracepool::Pool::close) (or drop its last handle) before `main`
//! returns, or its connections are never closed.
//!
//! # A pool that outlives its executor
//!
//! A pool on [`SmolRuntime::ambient`] is not tied to one executor: it follows its callers.
//! async-executor has no notion of a "current" executor, so the app says which one is current
//! by running it with [`run`]`(&executor, future)` instead of `executor.run(future)`: for
//! everything that executor polls on that thread, it is the *ambient* one. The pool needs no
//! executor to be built (a `static` works); its actor starts on the ambient executor of the
//! first `get`. When that executor is dropped (its last `Arc`: the pool holds it weakly, as
//! above), the connections made there are closed synchronously, checked-out ones as their
//! guards drop, and the pool becomes homeless instead of closed: the next `get` from code
//! under another live executor's [`run`] starts a fresh actor there, with fresh connections.
//! A connection made under the executor that went away is never handed out again; callers
//! waiting under other executors meanwhile are served by the new actor within their wait
//! timeout. [`Pool::close`](gracepool::Pool::close) closes for good.
//!
//! The pool moves when the executor is *dropped*, not when nobody runs it: an executor kept
//! but no longer run holds the actor, unpolled, and callers elsewhere wait out their wait
//! timeout ([`gracepool::Error::Timeout`]). smol's global executor is never dropped, so a
//! pool on [`SmolRuntime::global`] never needs to move.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use async_executor::Executor;
use gracepool::{BoxFuture, Runtime, SpawnError};

/// A [`gracepool::Runtime`] on smol's global executor, on an [`Executor`], or on the
/// caller's executor ([`SmolRuntime::ambient`]), with `async-io` timers.
#[derive(Clone)]
pub struct SmolRuntime {
    target: Target,
}

#[derive(Clone)]
enum Target {
    #[cfg(feature = "global")]
    Global,
    Executor(Weak<Executor<'static>>),
    /// The executor [`run`] makes ambient on the calling thread, whichever that is.
    Ambient,
}

impl SmolRuntime {
    /// smol's global executor (`smol::spawn`), which starts its own threads on first use
    /// (`SMOL_THREADS`, default 1). Spawning on it never fails.
    #[cfg(feature = "global")]
    pub fn global() -> Self {
        SmolRuntime {
            target: Target::Global,
        }
    }

    /// `executor`, held weakly: the pool does not keep it alive, and building a pool after
    /// it was dropped fails with [`gracepool::Error::Spawn`]. The actor runs while something
    /// runs the executor (`executor.run(..)` on some thread).
    pub fn from_executor(executor: &Arc<Executor<'static>>) -> Self {
        SmolRuntime {
            target: Target::Executor(Arc::downgrade(executor)),
        }
    }

    /// The executor of the caller: the one [`run`] is running on the calling thread. A pool
    /// on it follows its callers (see [`Runtime::ambient`]): it can be built anywhere, its
    /// actor starts on the executor of the first `get`, and when that executor is dropped the
    /// next `get` from code under another [`run`] starts a fresh actor there. Held weakly, like
    /// [`from_executor`](SmolRuntime::from_executor)'s. A `get` that finds the pool without an
    /// actor outside any [`run`] fails with [`gracepool::Error::Spawn`].
    ///
    /// ```
    /// use std::sync::Arc;
    /// use async_executor::Executor;
    /// use gracepool::{Manager, Pool};
    /// use gracepool_smol::SmolRuntime;
    /// # struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u32;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u32, std::io::Error> { Ok(42) }
    /// # }
    ///
    /// // Built with no executor at all.
    /// let pool = Pool::builder(Numbers)
    ///     .runtime(SmolRuntime::ambient())
    ///     .build()
    ///     .expect("a valid configuration");
    ///
    /// for _ in 0..2 {
    ///     // An executor of the app's, dropped at the end of each round: the second round's
    ///     // `get` starts the pool's actor anew, on the second executor.
    ///     let ex = Arc::new(Executor::new());
    ///     async_io::block_on(gracepool_smol::run(&ex, async {
    ///         assert_eq!(*pool.get().await.expect("a connection"), 42);
    ///     }));
    /// }
    /// assert_eq!(pool.status().counters.rehomed, 1);
    /// ```
    pub fn ambient() -> Self {
        SmolRuntime {
            target: Target::Ambient,
        }
    }
}

thread_local! {
    /// The executor [`run`] is running on this thread, if any.
    static AMBIENT: RefCell<Option<Weak<Executor<'static>>>> = const { RefCell::new(None) };
}

/// Runs `executor` on this thread until `future` completes, as [`Executor::run`] does, with
/// `executor` made the *ambient* executor for everything it polls here: `future` itself and
/// every task the executor runs on this thread. A pool on [`SmolRuntime::ambient`] that has
/// no actor starts it on the ambient executor of the `get` that finds it so.
///
/// Call it wherever you would call `executor.run(future)`, on every thread that runs the
/// executor. Runs nest: inside a nested `run`, its executor is the ambient one. Holds the
/// executor weakly while no poll is under way, so it does not keep it alive.
///
/// ```
/// use std::sync::Arc;
/// use async_executor::Executor;
/// use gracepool::{Manager, Pool};
/// use gracepool_smol::SmolRuntime;
/// # struct Numbers;
/// # impl Manager for Numbers {
/// #     type Connection = u32;
/// #     type Error = std::io::Error;
/// #     async fn create(&self) -> Result<u32, std::io::Error> { Ok(42) }
/// # }
///
/// let pool = Pool::builder(Numbers)
///     .runtime(SmolRuntime::ambient())
///     .build()
///     .expect("a valid configuration");
/// let ex = Arc::new(Executor::new());
///
/// // A second thread runs the same executor: through `run` too, so that tasks it polls
/// // may start the pool's actor.
/// let (stop, stopped) = async_channel::bounded::<()>(1);
/// let helper = std::thread::spawn({
///     let ex = ex.clone();
///     move || async_io::block_on(gracepool_smol::run(&ex, stopped.recv()))
/// });
///
/// async_io::block_on(gracepool_smol::run(&ex, async {
///     let tasks: Vec<_> = (0..4)
///         .map(|_| {
///             let pool = pool.clone();
///             ex.spawn(async move { *pool.get().await.expect("a connection") })
///         })
///         .collect();
///     for task in tasks {
///         assert_eq!(task.await, 42);
///     }
///     let report = pool.close().await;
///     println!("pool closed: {report:?}");
/// #   assert!(report.is_complete());
/// }));
/// drop(stop);
/// let _ = helper.join();
/// ```
pub async fn run<T>(executor: &Arc<Executor<'static>>, future: impl Future<Output = T>) -> T {
    Within {
        executor: Arc::downgrade(executor),
        inner: Box::pin(executor.run(future)),
    }
    .await
}

/// Polls `inner` with `executor` as this thread's ambient executor, restoring the one before
/// afterwards (also on unwinding).
struct Within<F> {
    executor: Weak<Executor<'static>>,
    inner: Pin<Box<F>>,
}

impl<F: Future> Future for Within<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        /// Puts the previous ambient executor back when the poll ends, however it ends.
        struct Restore(Option<Weak<Executor<'static>>>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let previous = self.0.take();
                // `try_with`: a poll during the thread's own exit finds no thread-local.
                let _ = AMBIENT.try_with(|ambient| *ambient.borrow_mut() = previous);
            }
        }
        let this = &mut *self;
        // `try_with`: polled from a thread-local's destructor, it runs without an ambient
        // executor rather than panicking.
        let _restore = AMBIENT
            .try_with(|ambient| ambient.replace(Some(this.executor.clone())))
            .map(Restore);
        this.inner.as_mut().poll(cx)
    }
}

impl fmt::Debug for SmolRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = match &self.target {
            #[cfg(feature = "global")]
            Target::Global => "global",
            Target::Executor(ex) if ex.strong_count() > 0 => "executor",
            Target::Executor(_) => "executor (dropped)",
            Target::Ambient => "ambient",
        };
        f.debug_struct("SmolRuntime")
            .field("target", &target)
            .finish()
    }
}

impl Runtime for SmolRuntime {
    fn spawn(&self, task: BoxFuture) -> Result<(), SpawnError> {
        match &self.target {
            #[cfg(feature = "global")]
            Target::Global => smol::spawn(task).detach(),
            Target::Executor(weak) => {
                let executor = weak.upgrade().ok_or_else(|| {
                    SpawnError::new("the executor was dropped; build the pool on a live one")
                })?;
                executor.spawn(task).detach();
            }
            Target::Ambient => {
                let executor = AMBIENT
                    .try_with(|ambient| ambient.borrow().as_ref().and_then(Weak::upgrade))
                    .ok()
                    .flatten()
                    .ok_or_else(|| {
                        SpawnError::new(
                            "no executor is ambient on this thread: run the caller with \
                             gracepool_smol::run(&executor, future)",
                        )
                    })?;
                executor.spawn(task).detach();
            }
        }
        Ok(())
    }

    fn sleep(&self, duration: Duration) -> BoxFuture {
        Box::pin(async move {
            async_io::Timer::after(duration).await;
        })
    }

    fn ambient(&self) -> bool {
        matches!(self.target, Target::Ambient)
    }
}
