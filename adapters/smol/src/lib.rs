//! Run a [gracepool] pool actor on smol: its global executor, or an
//! [`async_executor::Executor`] of your own.
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
//!     assert!(report.is_complete());
//! }));
//!
//! // Or on smol's global executor, which runs on its own threads:
//! let pool = Pool::builder(Numbers)
//!     .runtime(SmolRuntime::global())
//!     .build()
//!     .expect("a valid configuration");
//! async_io::block_on(async {
//!     assert_eq!(*pool.get().await.expect("a connection"), 42);
//!     assert!(pool.close().await.is_complete());
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
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_executor::Executor;
use gracepool::{BoxFuture, Runtime, SpawnError};

/// A [`gracepool::Runtime`] on smol's global executor or on an [`Executor`], with `async-io`
/// timers.
#[derive(Clone)]
pub struct SmolRuntime {
    target: Target,
}

#[derive(Clone)]
enum Target {
    #[cfg(feature = "global")]
    Global,
    Executor(Weak<Executor<'static>>),
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
}

impl fmt::Debug for SmolRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = match &self.target {
            #[cfg(feature = "global")]
            Target::Global => "global",
            Target::Executor(ex) if ex.strong_count() > 0 => "executor",
            Target::Executor(_) => "executor (dropped)",
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
        }
        Ok(())
    }

    fn sleep(&self, duration: Duration) -> BoxFuture {
        Box::pin(async move {
            async_io::Timer::after(duration).await;
        })
    }
}
