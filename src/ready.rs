//! Building a pool and waiting until it is ready: for services that must refuse to start when
//! their backend is unreachable or refuses them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::builder::Builder;
use crate::error::Error;
use crate::manager::Manager;
use crate::pool::Pool;

/// How often a start-up wait looks at the pool. Start-up only: never on a hot path.
const LOOK_EVERY: Duration = Duration::from_millis(2);

impl<M: Manager> Builder<M> {
    /// Builds the pool, then waits until it holds `min_idle` idle connections — at least one,
    /// made and checked out once, when `min_idle` is 0 — so that a service finds out at start
    /// whether its backend answers.
    ///
    /// Fails with the first creation error as it is ([`Error::Backend`] for bad credentials or
    /// a refused connection, [`Error::ManagerTimeout`], [`Error::ManagerPanicked`]), with
    /// [`Error::Timeout`] when `patience` runs out first, or as [`build`](Builder::build)
    /// fails. A pool that fails to start is closed before the error is returned.
    ///
    /// Must be awaited on a runtime whose timers the pool's [`Runtime`](crate::Runtime) can
    /// serve (the one the pool's actor runs on, or any other).
    ///
    /// ```
    /// # use gracepool_testkit::{Counting, ExecRuntime, Fault};
    /// # let rt = ExecRuntime::new();
    /// use std::time::Duration;
    ///
    /// let refusing = Counting::new();
    /// refusing.set_create(Fault::Fail); // bad credentials, say
    /// let started = rt.block_on(
    ///     gracepool::Pool::builder(refusing)
    ///         .min_idle(2)
    ///         .runtime(rt.handle())
    ///         .build_ready(Duration::from_secs(10)),
    /// );
    /// // The service refuses to start, with the backend's error, at once.
    /// assert!(matches!(started.map(drop), Err(gracepool::Error::Backend(_))));
    /// ```
    pub async fn build_ready(self, patience: Duration) -> Result<Pool<M>, Error<M::Error>> {
        let pool = self.build()?;
        // A pool whose runtime follows its callers starts its actor here, on this one.
        if let Err(error) = pool.ensure_home() {
            return Err(failed_start(&pool, error));
        }
        let started = Instant::now();
        let want = pool.shared.ledger.min_idle();
        let ready = async {
            if want == 0 {
                // Prove the backend answers with one connection, which then stays idle.
                return pool.get_timeout(patience).await.map(drop);
            }
            loop {
                if pool.status().idle >= want {
                    return Ok(());
                }
                if started.elapsed() >= patience {
                    return Err(Error::Timeout {
                        waited: started.elapsed(),
                        seen: None,
                        last_error: pool.shared.last_create_error(),
                    });
                }
                pool.shared.runtime.sleep(LOOK_EVERY).await;
            }
        };
        // The first creation failure ends the wait, whatever the pool would do about it.
        let failed = async {
            loop {
                if let Some(error) = pool.shared.take_create_error() {
                    return Err(error);
                }
                if let Some(shared) = pool.shared.last_create_error() {
                    // Held by a caller too: it cannot be taken, only shared.
                    return Err(Error::Timeout {
                        waited: started.elapsed(),
                        seen: None,
                        last_error: Some(shared),
                    });
                }
                pool.shared.runtime.sleep(LOOK_EVERY).await;
            }
        };
        match futures_lite::future::or(ready, failed).await {
            Ok(()) => Ok(pool),
            Err(error) => Err(failed_start(&pool, error)),
        }
    }
}

/// Closes a pool that failed to start (without waiting) and hands back why: a timeout whose
/// source is the creation error becomes that error itself, when nobody else holds it.
fn failed_start<M: Manager>(pool: &Pool<M>, error: Error<M::Error>) -> Error<M::Error> {
    pool.begin_close();
    match error {
        Error::Timeout {
            last_error: Some(last),
            waited,
            seen,
        } => match Arc::try_unwrap(last) {
            Ok(error) => error,
            Err(last) => Error::Timeout {
                waited,
                seen,
                last_error: Some(last),
            },
        },
        other => other,
    }
}
