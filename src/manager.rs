//! How connections are made, checked and ended.

use std::fmt;
use std::future::Future;

use crate::status::Metrics;

/// Makes, checks and ends the connections of one pool.
///
/// The pool actor is the only caller of [`create`](Manager::create) and, while the runtime is
/// alive, of [`shutdown`](Manager::shutdown). [`check`](Manager::check) runs in the task that
/// checks a connection out. [`close`](Manager::close) is the one method that may run anywhere:
/// in a `Drop`, on a thread whose runtime is gone, during a panic.
///
/// Every connection that `create` returned reaches exactly one end: [`shutdown`] (the graceful
/// goodbye, which takes the connection) or [`close`] (the synchronous end), unless it is taken
/// out of the pool with [`Pooled::detach`](crate::Pooled::detach).
///
/// Panics in any of these methods are caught and counted; the pool keeps working.
///
/// [`shutdown`]: Manager::shutdown
/// [`close`]: Manager::close
///
/// # Example
///
/// ```
/// use gracepool::Manager;
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// struct Numbers(AtomicU64);
///
/// impl Manager for Numbers {
///     type Connection = u64;
///     type Error = std::io::Error;
///
///     async fn create(&self) -> Result<u64, std::io::Error> {
///         Ok(self.0.fetch_add(1, Ordering::Relaxed))
///     }
/// }
/// ```
///
/// # Where the methods run
///
/// `create` and `shutdown` run inside the pool actor's task, on the runtime given to the
/// builder: a driver that needs a task of its own (tokio-postgres' `Connection`, say) can
/// spawn it there with that runtime's own spawn (with `gracepool-tokio` and `gracepool-actix`,
/// `tokio::spawn`). The socket then belongs to that task, and dropping the runtime ends it.
pub trait Manager: Send + Sync + 'static {
    /// The connection this manager makes.
    type Connection: Send + 'static;
    /// What `create`, `check`, `shutdown` and `close` fail with: any error type, including
    /// `anyhow::Error` and `Box<dyn Error + Send + Sync>`. It reaches the caller of
    /// [`Pool::get`](crate::Pool::get) inside [`Error`](crate::Error), which implements
    /// [`std::error::Error`] (with this error as its source) when this type does.
    type Error: fmt::Debug + fmt::Display + Send + Sync + 'static;

    /// Opens a new connection. Bounded by the pool's create timeout; a future that is dropped
    /// (timeout, runtime teardown) must not leak what it had half made. A failure is retried
    /// by the pool with backoff; one that [`is_permanent`](Manager::is_permanent) is also
    /// handed to every waiting caller at once.
    fn create(&self) -> impl Future<Output = Result<Self::Connection, Self::Error>> + Send;

    /// Whether a creation error is one that retrying cannot fix — the server rejected the
    /// credentials, the database does not exist, a certificate does not verify — as opposed
    /// to a transient one (the server refused the connection, is starting up, has too many
    /// clients). Callers waiting for a connection get a permanent error at once, as
    /// [`Error::Permanent`](crate::Error::Permanent), instead of waiting out their wait
    /// timeout while the pool retries; the pool still retries with backoff for later
    /// callers. Default: every error is transient.
    fn is_permanent(&self, error: &Self::Error) -> bool {
        let _ = error;
        false
    }

    /// Whether a creation error says the server is up but has no room for another client
    /// (PostgreSQL's `53300 too many clients`, Redis' `max number of clients reached`). The
    /// pool then backs off for longer (`Builder::server_full_backoff`) and makes one attempt at
    /// a time until a creation succeeds. Default: never.
    fn is_server_full(&self, error: &Self::Error) -> bool {
        let _ = error;
        false
    }

    /// Checks a connection before it is handed out again: every checkout of a connection that
    /// has waited in the pool, but not the first checkout of a connection handed straight from
    /// `create` to the caller it was made for. [`Unhealthy`] closes the connection and the pool
    /// tries another one. Bounded by the pool's check timeout and by the caller's wait
    /// timeout. Default: always healthy.
    ///
    /// `?` turns a manager error into [`Unhealthy::Failed`]; a cheap check that has no error to
    /// give returns [`Unhealthy::Closed`]. `metrics` says how old the connection is, how long it
    /// was idle and how often it was used, so a check can, for example, ping only a connection
    /// idle for more than 30 s.
    fn check(
        &self,
        conn: &mut Self::Connection,
        metrics: &Metrics,
    ) -> impl Future<Output = Result<(), Unhealthy<Self::Error>>> + Send {
        let _ = (conn, metrics);
        std::future::ready(Ok(()))
    }

    /// Tells, synchronously and cheaply, whether a connection coming back from a guard is
    /// broken and must not be reused (a request abandoned half-way, a reply still on the
    /// wire, a flag set by an I/O error). Consulted on every guard drop, so it must not block;
    /// a broken connection is closed instead of returned. Default: never broken.
    fn is_broken(&self, conn: &mut Self::Connection) -> bool {
        let _ = conn;
        false
    }

    /// Like [`is_broken`](Manager::is_broken), and says why: [`Unfit::Connection`] closes this
    /// connection; [`Unfit::Server`] says the server behind it changed (a primary demoted to a
    /// read-only standby after a failover), and refreshes the whole pool
    /// ([`Pool::refresh`](crate::Pool::refresh)): every idle connection is retired at once,
    /// every checked-out one as it comes back, and new ones are made. Consulted on every guard
    /// drop, so it must not block. Default: [`Unfit::Connection`] when `is_broken` says so.
    fn unfit(&self, conn: &mut Self::Connection) -> Option<Unfit> {
        self.is_broken(conn).then_some(Unfit::Connection)
    }

    /// Says goodbye to the peer and ends the connection, while the runtime is alive.
    ///
    /// Takes the connection: it must be ended when the future finishes. Return
    /// [`Goodbye::Said`] only when the goodbye really went out (it counts as
    /// `closed_graceful`), [`Goodbye::Unsaid`] when none could (the peer was already gone;
    /// `closed_sync`), [`Goodbye::Failed`] when saying it failed (`close_failed`).
    ///
    /// Bounded by the pool's shutdown timeout. A future dropped before it finishes (that
    /// timeout, or a runtime teardown) drops the connection inside it, so dropping a
    /// connection must end it without a runtime, as dropping a socket does; the pool counts it
    /// as `closed_sync`. Default: no goodbye, [`close`](Manager::close) at once.
    fn shutdown(
        &self,
        conn: Self::Connection,
    ) -> impl Future<Output = Goodbye<Self::Error>> + Send {
        std::future::ready(match self.close(conn) {
            Ok(()) => Goodbye::Unsaid,
            Err(e) => Goodbye::Failed(e),
        })
    }

    /// Ends a connection synchronously.
    ///
    /// Must need no runtime: it can run after the runtime is gone, inside a `Drop`, on any
    /// thread. It must not spawn, sleep, `block_on`, or print. Plain std calls (shutting a
    /// socket down, dropping it) are what belongs here. Default: drop the connection.
    fn close(&self, conn: Self::Connection) -> Result<(), Self::Error> {
        drop(conn);
        Ok(())
    }
}

/// Why a connection coming back from a guard must not be reused ([`Manager::unfit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unfit {
    /// This connection is done (its socket failed, its session was ended): it is closed.
    Connection,
    /// The server behind it changed role or went away: this connection is closed, and the
    /// pool is refreshed — every connection made before now is retired.
    Server,
}

/// Why [`Manager::check`] found a connection unusable. Either way the connection is closed and
/// the pool tries another one.
#[derive(Debug)]
#[non_exhaustive]
pub enum Unhealthy<E> {
    /// The connection is closed or broken, as a cheap check can tell without an error to give
    /// (a client's `is_closed()`).
    Closed,
    /// The check failed with the manager's error (a round trip that failed).
    Failed(E),
}

impl<E> From<E> for Unhealthy<E> {
    fn from(e: E) -> Self {
        Unhealthy::Failed(e)
    }
}

impl<E: fmt::Display> fmt::Display for Unhealthy<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unhealthy::Closed => f.write_str("the connection is closed"),
            Unhealthy::Failed(e) => write!(f, "the health check failed: {e}"),
        }
    }
}

/// How [`Manager::shutdown`] ended a connection.
#[derive(Debug)]
#[non_exhaustive]
pub enum Goodbye<E> {
    /// The peer was told: the goodbye went out. Counted as `closed_graceful`.
    Said,
    /// No goodbye could go out (the peer was already gone, or the protocol has none); the
    /// connection is ended all the same. Counted as `closed_sync`.
    Unsaid,
    /// Saying goodbye failed; the connection is ended all the same. Counted as
    /// `close_failed`.
    Failed(E),
    /// The goodbye went out, but the peer never confirmed it (no answer, no end of its side
    /// of the connection): it may never have arrived. Counted as `closed_sync`, and in
    /// `closed_unconfirmed`.
    Unconfirmed,
}
