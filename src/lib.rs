//! An async connection pool whose close always works.
//!
//! A service restarts; its runtime is torn down while the pool still holds connections.
//! gracepool closes every connection it created exactly once whatever the order of that
//! teardown: gracefully through its actor while the runtime is alive, and with a synchronous
//! fallback (no spawn, no timer, no `block_on`) once it is not. Nothing panics or prints on the
//! way out.
//!
//! - A **pool actor**, spawned on your runtime through a [`Runtime`] adapter
//!   (`gracepool-tokio`, `gracepool-smol`, `gracepool-actix`), creates, checks, reaps and
//!   closes connections. Connections are born on that runtime only: in the actor, or in a
//!   caller that runs there ([`Runtime::is_current`]) when nobody waits and the pool has room.
//! - [`Pool::get`] takes an idle connection without a round trip to the actor, and a
//!   [`Pooled`] guard puts it back on drop.
//! - [`Pool::close`] (or dropping the last handle, or the runtime going away) closes the pool;
//!   every waiter is woken with [`Error::Closed`], and a [`CloseReport`] accounts for every
//!   connection.
//!
//! # Example
//!
//! A manager, a runtime (here a tiny one around `async-executor`, as the smol adapter does),
//! a checkout, and a close:
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use gracepool::{BoxFuture, Manager, Pool, Runtime, SpawnError};
//!
//! struct Numbers;
//!
//! impl Manager for Numbers {
//!     type Connection = u32;
//!     type Error = std::io::Error;
//!
//!     async fn create(&self) -> Result<u32, std::io::Error> {
//!         Ok(7)
//!     }
//! }
//!
//! struct Exec(Arc<async_executor::Executor<'static>>);
//!
//! impl Runtime for Exec {
//!     fn spawn(&self, task: BoxFuture) -> Result<(), SpawnError> {
//!         self.0.spawn(task).detach();
//!         Ok(())
//!     }
//!     fn sleep(&self, d: Duration) -> BoxFuture {
//!         Box::pin(async move {
//!             async_io::Timer::after(d).await;
//!         })
//!     }
//! }
//!
//! let ex = Arc::new(async_executor::Executor::new());
//! let pool = Pool::builder(Numbers)
//!     .max_size(4)
//!     .runtime(Exec(ex.clone()))
//!     .build()
//!     .expect("a valid configuration");
//!
//! futures_lite::future::block_on(ex.run(async {
//!     let conn = pool.get().await.expect("a connection");
//!     assert_eq!(*conn, 7);
//!     drop(conn); // back to the idle queue
//!
//!     let report = pool.close().await;
//!     println!("pool closed: {report:?}");
//! #   assert_eq!(report.counters.created, 1);
//! #   assert!(report.is_complete());
//! }));
//! ```
//!
//! # The promise
//!
//! 1. Every connection that was created is closed exactly once, whatever the shutdown order:
//!    `created == closed_graceful + closed_sync + close_failed + detached` once none is out.
//! 2. No `Drop` or fallback path spawns, sleeps, blocks on a runtime, or prints.
//! 3. `close()` wakes every waiter promptly with a clear error; nothing waits forever.
//! 4. Bad input is a typed [`Error`]: a bad configuration, a manager that fails, hangs or
//!    panics.
//!
//! # Features
//!
//! - `tracing` (off by default): emits [`tracing`](https://docs.rs/tracing) events under the
//!   target `gracepool` — `debug` when a close is requested and when it finishes (with its
//!   counts and whether the fallback finished it), when the actor is dropped by a runtime
//!   teardown; `warn` when the manager's `create`, `check` or `close` fails or panics. Where
//!   they go is the subscriber's business: the pool itself never prints.
//! - `serde` (off by default): `PoolConfig`, the builder's settings as data, read from any
//!   `serde` format or from the environment (`PoolConfig::from_env`) and applied with
//!   `Builder::config`.
//! - `metrics` (off by default): publishes the pool's figures through the
//!   [`metrics`](https://docs.rs/metrics) facade, for whichever exporter the application
//!   installs (Prometheus, StatsD, OpenTelemetry), each labelled `pool` with the name given to
//!   `Builder::name`: gauges `gracepool_connections`, `gracepool_idle_connections`,
//!   `gracepool_in_use_connections`, `gracepool_max_connections`, `gracepool_waiting_callers`;
//!   counters `gracepool_connections_created_total`, `gracepool_connections_closed_total`
//!   (by `reason`), `gracepool_goodbyes_total` (by `outcome`), `gracepool_get_timeouts_total`,
//!   `gracepool_create_errors_total`, `gracepool_checks_failed_total`,
//!   `gracepool_refreshes_total` and more; histograms `gracepool_wait_seconds`,
//!   `gracepool_create_seconds`, `gracepool_use_seconds`. The guide's chapter on observing a
//!   pool lists them all and says when each is published. Install the exporter's recorder
//!   before building the pool: the pool registers its handles as it is built.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(rust_2018_idioms)]

/// Emits a `tracing` event with the `tracing` feature; compiles to nothing without it.
macro_rules! event {
    ($level:ident, $($arg:tt)+) => {{
        #[cfg(feature = "tracing")]
        {
            tracing::$level!(target: "gracepool", $($arg)+);
        }
    }};
}

mod actor;
mod builder;
mod checkout;
mod clock;
mod close;
mod config;
mod coop;
mod creation;
mod deadline;
mod error;
#[cfg(feature = "serde")]
mod file_config;
mod guard;
mod handles;
mod hooks;
mod jobs;
mod ledger;
mod manager;
#[cfg(feature = "metrics")]
mod metrics;
mod pool;
mod ready;
mod runtime;
mod shared;
mod status;
mod sync;
mod waitlist;

pub use builder::Builder;
pub use config::{ConfigError, QueueOrder};
pub use error::{Error, Seen, Stage};
#[cfg(feature = "serde")]
pub use file_config::{ConfigReadError, Limit, PoolConfig};
pub use guard::Pooled;
pub use handles::WeakPool;
pub use hooks::{HookError, HookFuture};
pub use manager::{Goodbye, Manager, Unfit, Unhealthy};
pub use pool::Pool;
pub use runtime::{BoxFuture, Runtime, SpawnError};
pub use status::{CloseCause, CloseReport, Counters, Metrics, PoolState, Status};

/// For the model checks only (`--cfg loom`): the bugs they plant to prove they catch them.
#[cfg(loom)]
#[doc(hidden)]
pub mod planted {
    pub use crate::sync::{plant, Bug};
}
