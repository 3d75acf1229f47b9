//! The little the core needs from an async runtime.

use std::borrow::Cow;
use std::fmt;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::Duration;

/// A boxed, sendable future with no output: a task to spawn or a timer to wait on.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// What the pool needs from a runtime: a way to start its actor, and timers.
///
/// The adapter crates implement this for tokio, smol and actix. An implementation must uphold:
///
/// - `spawn` reports failure (a runtime that is shut down, a stopped system) as a
///   [`SpawnError`] and never panics. Dropping the task it was given is fine: the pool actor
///   closes what it holds when it is dropped.
/// - The future `sleep` returns never panics, whichever thread or runtime polls it, also after
///   the runtime it came from has shut down; where the runtime's own timer cannot serve, it
///   completes some other way (a timer thread) rather than never.
pub trait Runtime: Send + Sync + 'static {
    /// Starts `task` on the runtime.
    fn spawn(&self, task: BoxFuture) -> Result<(), SpawnError>;

    /// A future that completes after `duration`.
    fn sleep(&self, duration: Duration) -> BoxFuture;

    /// Whether `spawn` starts its task on the *caller's* runtime, whichever that is, rather
    /// than on one fixed runtime (default: false).
    ///
    /// A pool on such a runtime needs no runtime to be built (`static POOL: LazyLock<Pool<_>>`
    /// works): its actor is started by the first `get`, on that caller's runtime. When that
    /// runtime goes away, the connections made there are closed as on any pool (the
    /// synchronous fallback), but the pool stays open, without a home: the next `get` from a
    /// live runtime starts a fresh actor there, which makes fresh connections. A connection
    /// made under a runtime that went away is never handed out again. An explicit close
    /// closes for good.
    ///
    /// Callers waiting on other runtimes when the pool's runtime goes away start the next
    /// actor on theirs, and are served by it within their wait timeout. The moves are counted
    /// in [`Counters::rehomed`](crate::Counters::rehomed), the connections they closed in
    /// [`Counters::closed_moved`](crate::Counters::closed_moved). A `get` that finds the pool
    /// without an actor where `spawn` fails gets [`Error::Spawn`](crate::Error::Spawn).
    ///
    /// An implementation that returns true must make `spawn` fail (never panic) when the
    /// calling thread offers no runtime, and make `sleep` work wherever it is polled. The
    /// adapters have one each (`gracepool_tokio::Ambient`, `SmolRuntime::ambient()`); the
    /// smallest, on tokio:
    ///
    /// ```
    /// use std::time::Duration;
    /// use gracepool::{BoxFuture, Manager, Pool, Runtime, SpawnError};
    ///
    /// struct Caller;
    ///
    /// impl Runtime for Caller {
    ///     fn spawn(&self, task: BoxFuture) -> Result<(), SpawnError> {
    ///         let here = tokio::runtime::Handle::try_current()
    ///             .map_err(|_| SpawnError::new("call get() inside a tokio runtime"))?;
    ///         here.spawn(task);
    ///         Ok(())
    ///     }
    ///
    ///     fn sleep(&self, duration: Duration) -> BoxFuture {
    ///         // async-io's timer works under any runtime, and under none.
    ///         Box::pin(async move {
    ///             async_io::Timer::after(duration).await;
    ///         })
    ///     }
    ///
    ///     fn ambient(&self) -> bool {
    ///         true
    ///     }
    /// }
    /// # struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u32;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u32, std::io::Error> { Ok(7) }
    /// # }
    ///
    /// let pool = Pool::builder(Numbers).runtime(Caller).build().expect("no runtime needed");
    /// for _ in 0..3 {
    ///     let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    ///     rt.block_on(async { assert_eq!(*pool.get().await.unwrap(), 7) });
    ///     // `rt` is dropped here: the pool closes what was made on it, and moves.
    /// }
    /// let counters = pool.status().counters;
    /// assert_eq!((counters.rehomed, counters.closed_moved), (2, 3));
    /// ```
    fn ambient(&self) -> bool {
        false
    }

    /// Whether the calling thread is running on this runtime now (default: false).
    ///
    /// When true, a `get` that finds no idle connection, nobody waiting ahead of it and room
    /// in the pool creates the connection itself, in its own task, instead of asking the
    /// pool's actor and waiting for the answer, without the round trip. The connection is made
    /// on the runtime the adapter accepted the caller on: the pool's own, or, where an adapter
    /// offers it, the caller's (gracepool-actix' `with_caller_arbiters`: any arbiter of the
    /// pool's System), whose connections then last only as long as that runtime (a driver
    /// task spawned there ends with it; the pool still closes each such connection once). Say
    /// false when unsure: the actor then makes every connection.
    fn is_current(&self) -> bool {
        false
    }
}

/// A runtime refused to start the pool actor.
#[derive(Debug, Clone)]
pub struct SpawnError {
    reason: Cow<'static, str>,
}

impl SpawnError {
    /// A spawn failure with a reason a user can act on.
    pub fn new(reason: impl Into<Cow<'static, str>>) -> Self {
        SpawnError {
            reason: reason.into(),
        }
    }
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "could not spawn the pool actor: {}", self.reason)
    }
}

impl std::error::Error for SpawnError {}

/// Runs `fut`, giving up after `limit`. The timer is only made if the future does not finish
/// on its first poll, so a fast future costs no timer.
pub(crate) async fn timed<F: Future>(
    runtime: &dyn Runtime,
    limit: Option<Duration>,
    fut: F,
) -> Option<F::Output> {
    timed_with(runtime, move || limit, fut).await
}

/// Like [`timed`], with the limit worked out only if the future does not finish on its first
/// poll (working it out may read the clock).
pub(crate) async fn timed_with<F: Future>(
    runtime: &dyn Runtime,
    limit: impl FnOnce() -> Option<Duration>,
    fut: F,
) -> Option<F::Output> {
    let mut fut = pin!(fut);
    let mut limit = Some(limit);
    let mut timer: Option<BoxFuture> = None;
    let mut unlimited = false;
    poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        if let Some(limit) = limit.take() {
            match limit() {
                Some(Duration::ZERO) => return Poll::Ready(None),
                Some(d) => timer = Some(runtime.sleep(d)),
                None => unlimited = true,
            }
        }
        if unlimited {
            return Poll::Pending;
        }
        match timer.as_mut().map(|t| t.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(None),
            _ => Poll::Pending,
        }
    })
    .await
}
