//! How connections are made, checked and ended.

use std::future::Future;

/// Makes, checks and ends the connections of one pool.
///
/// The pool actor is the only caller of [`create`](Manager::create) and, while the runtime is
/// alive, of [`shutdown`](Manager::shutdown). [`check`](Manager::check) runs in the task that
/// checks a connection out. [`close`](Manager::close) is the one method that may run anywhere:
/// in a `Drop`, on a thread whose runtime is gone, during a panic. Every connection that
/// `create` returned reaches `close` exactly once, unless it is taken out of the pool with
/// [`Pooled::detach`](crate::Pooled::detach).
///
/// Panics in any of these methods are caught and counted; the pool keeps working.
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
pub trait Manager: Send + Sync + 'static {
    /// The connection this manager makes.
    type Connection: Send + 'static;
    /// What `create`, `check`, `shutdown` and `close` fail with. Handed to the caller of
    /// [`Pool::get`](crate::Pool::get) as the source of [`Error::Backend`](crate::Error::Backend).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Opens a new connection. Bounded by the pool's create timeout; a future that is dropped
    /// (timeout, runtime teardown) must not leak what it had half made.
    fn create(&self) -> impl Future<Output = Result<Self::Connection, Self::Error>> + Send;

    /// Checks a connection before it is handed out again. An error closes the connection and
    /// the pool tries another one. Bounded by the pool's check timeout. Default: always healthy.
    fn check(
        &self,
        conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let _ = conn;
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

    /// Says goodbye to the peer while the runtime is alive (a protocol-level farewell, a flush).
    ///
    /// [`close`](Manager::close) always follows, whether this succeeds, fails, times out or is
    /// dropped half-way because the runtime is being torn down: a connection therefore never
    /// depends on this future finishing to be closed. Default: nothing to say.
    fn shutdown(
        &self,
        conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let _ = conn;
        std::future::ready(Ok(()))
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
