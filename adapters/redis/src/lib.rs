//! A [gracepool] manager for Redis, on redis-rs' async connection
//! ([`MultiplexedConnection`]), with tokio or smol.
//!
//! # Example
//!
//! ```no_run
//! use gracepool_redis::{redis::AsyncCommands, Manager, Pool};
//! use gracepool_tokio::TokioRuntime;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//!     let manager = Manager::new("redis://127.0.0.1:6379/")?;
//!     let pool: Pool = Pool::builder(manager)
//!         .max_size(8)
//!         .runtime(TokioRuntime::current())
//!         .build()?;
//!
//!     let mut conn = pool.get().await?;
//!     let _: () = conn.set("greeting", "hello").await?;
//!     let greeting: String = conn.get("greeting").await?;
//!     assert_eq!(greeting, "hello");
//!     drop(conn);
//!
//!     // On shutdown: every connection sends QUIT and is closed.
//!     let report = pool.close().await;
//!     println!("pool closed: {report:?}");
//!     Ok(())
//! }
//! ```
//!
//! A pooled connection derefs to [`Connection`], which implements redis-rs' [`ConnectionLike`]
//! (so [`AsyncCommands`](redis::AsyncCommands), `query_async` and pipelines work on it) and
//! derefs in turn to the [`MultiplexedConnection`]. Before a connection that has waited in the
//! pool is handed out again, it is asked `PING`; one that saw an I/O error is not handed out
//! again at all.
//!
//! # Runtimes
//!
//! The feature `tokio` (default) runs connections on tokio: use the pool with gracepool-tokio
//! or gracepool-actix. The feature `smol` runs them on smol and `async-io`: use the pool with
//! gracepool-smol. With both, a connection made inside a tokio runtime runs on tokio, any
//! other on smol. These are redis-rs' `tokio-comp` and `smol-comp`. On tokio, redis-rs'
//! timeouts need the runtime's timer (`enable_all()` or `#[tokio::main]` have it).
//!
//! A [`MultiplexedConnection`]'s socket belongs to a driver task that redis-rs spawns when the
//! connection is made: with tokio, on the runtime the pool's actor runs on (`create` runs
//! there); with smol, on smol's global executor, whichever executor runs the pool. Dropping the
//! last handle to the connection cancels that task, which closes the socket.
//!
//! # How a connection says goodbye
//!
//! On a graceful close ([`Pool::close`](gracepool::Pool::close) while the runtime is alive) each
//! connection sends `QUIT` and waits for the server's `+OK`. Redis 7.2 deprecated `QUIT` in
//! favour of simply closing the socket, but every Redis 7.x and 8.x and Valkey still serve it,
//! and it is the one goodbye a server acknowledges: its `+OK` says the server has read
//! everything sent before it and closes the connection itself. Closing the socket alone could
//! not be confirmed here: the socket belongs to redis-rs' driver task, which is cancelled, not
//! drained, when the connection is dropped. So a connection counts as closed gracefully only
//! when the server answered `QUIT` (`closed_graceful` in the pool's counts). When it cannot be
//! said — the connection is already broken or closed by the server, or the server refuses
//! `QUIT` — the connection is just dropped, which closes its socket, and counts as
//! `closed_sync`. Once a server has refused `QUIT`, the manager stops sending it (goodbyes
//! already under way at that moment have sent theirs).
//!
//! # When the runtime is already gone
//!
//! Closing needs no runtime: [`close`](gracepool::Manager::close) drops the connection, which cancels its driver
//! task without waiting for it. When a tokio runtime is torn down it drops the driver tasks
//! itself, closing every socket; the pool's synchronous fallback then accounts for each
//! connection. A smol driver task is dropped by smol's global executor, on its own thread,
//! moments later. Either way no connection is left open on the server, nothing panics and
//! nothing is printed.
//!
//! A clone of the [`MultiplexedConnection`] taken out of a pooled connection shares its socket
//! and keeps it open after the pool has closed the connection: the pool can only end what it
//! holds.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(not(any(feature = "tokio", feature = "smol")))]
compile_error!("gracepool-redis needs the feature `tokio` or `smol` (or both)");

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use gracepool::{Goodbye, Unhealthy};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, Client, Cmd, IntoConnectionInfo, RedisError, RedisFuture, Value,
};

pub use redis;

/// A pool of Redis connections.
pub type Pool = gracepool::Pool<Manager>;

/// A connection checked out of a [`Pool`]: derefs to [`Connection`].
pub type Pooled = gracepool::Pooled<Manager>;

/// Makes, checks and ends Redis connections for a [`Pool`].
pub struct Manager {
    client: Client,
    config: AsyncConnectionConfig,
    // Set once a server answered QUIT with an error: later goodbyes are not attempted.
    quit_refused: AtomicBool,
    retired: RetirementCounts,
}

/// Connections retired on their way back to the pool, by what their commands saw. Each
/// connection is counted once, under the first reason in this order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Retirements {
    /// `READONLY`: the server became a replica (a failover); the pool was refreshed.
    pub read_only: u64,
    /// `LOADING`: the server is loading its data set.
    pub loading: u64,
    /// The connection failed under a command (closed, reset, unrecoverable).
    pub connection_lost: u64,
    /// A command was abandoned before its answer (a timeout, a cancelled request).
    pub abandoned: u64,
}

#[derive(Debug, Default)]
struct RetirementCounts {
    read_only: AtomicU64,
    loading: AtomicU64,
    connection_lost: AtomicU64,
    abandoned: AtomicU64,
}

impl Manager {
    /// A manager for the server at `url` (`redis://[[user]:password@]host[:port][/db]`,
    /// `rediss://` with a TLS feature of redis-rs, `unix://` / `redis+unix://` for a socket).
    /// Fails only if the URL does not parse; nothing is connected yet.
    pub fn new(url: impl IntoConnectionInfo) -> Result<Manager, RedisError> {
        Ok(Manager::from_client(Client::open(url)?))
    }

    /// A manager for an already configured [`Client`].
    pub fn from_client(client: Client) -> Manager {
        Manager {
            client,
            config: AsyncConnectionConfig::new(),
            quit_refused: AtomicBool::new(false),
            retired: RetirementCounts::default(),
        }
    }

    /// Sets the options each connection is made with (redis-rs' connection and response
    /// timeouts, 1 s and 500 ms by default, and the rest of [`AsyncConnectionConfig`]).
    pub fn with_connection_config(mut self, config: AsyncConnectionConfig) -> Manager {
        self.config = config;
        self
    }

    /// Connections retired because of what their commands saw, by reason. Reach it through
    /// the pool: `pool.manager().retirements()`.
    pub fn retirements(&self) -> Retirements {
        let r = &self.retired;
        Retirements {
            read_only: r.read_only.load(Relaxed),
            loading: r.loading.load(Relaxed),
            connection_lost: r.connection_lost.load(Relaxed),
            abandoned: r.abandoned.load(Relaxed),
        }
    }

    /// The client connections are made from.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("server", &self.client.get_connection_info().addr())
            .finish_non_exhaustive()
    }
}

/// A Redis connection of the pool: a [`MultiplexedConnection`] that remembers whether a command
/// sent through it found the connection broken.
///
/// Commands sent through this type (with [`AsyncCommands`](redis::AsyncCommands), `query_async`
/// or a pipeline on `&mut Connection`) are watched: after an I/O error the connection is not
/// handed out again. Commands sent on the inner [`MultiplexedConnection`] directly are not
/// watched; the `PING` before the next checkout still catches a dead connection.
pub struct Connection {
    inner: MultiplexedConnection,
    broken: bool,
    /// A command whose future was dropped before its answer (a timeout, a cancelled request):
    /// its answer is still to come on this connection, and a later command would wait behind
    /// it (a `BLPOP` for as long as it blocks). Such a connection is not handed out again.
    abandoned: bool,
    /// The server is read-only (a replica after a failover: `READONLY`).
    read_only: bool,
    /// The server is loading its data set (`LOADING`).
    loading: bool,
}

impl Connection {
    /// Whether a command through this connection failed in a way that needs a new connection
    /// (the socket is closed or reset).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Whether a command's future was dropped before its answer on this connection.
    pub fn has_abandoned_command(&self) -> bool {
        self.abandoned
    }

    fn watch(&mut self, result: &Result<Value, RedisError>) {
        match result {
            Err(e) => {
                if e.is_unrecoverable_error() || e.is_connection_dropped() {
                    self.broken = true;
                }
                self.server_said(e.code());
            }
            // redis-rs hands a server's error reply back as a value, and turns it into an
            // error only later, as the caller reads it.
            Ok(Value::ServerError(e)) => self.server_said(Some(e.code())),
            Ok(_) => {}
        }
    }

    fn watch_all(&mut self, result: &Result<Vec<Value>, RedisError>) {
        match result {
            Ok(values) => {
                for value in values {
                    if let Value::ServerError(e) = value {
                        self.server_said(Some(e.code()));
                    }
                }
            }
            Err(e) => {
                if e.is_unrecoverable_error() || e.is_connection_dropped() {
                    self.broken = true;
                }
                self.server_said(e.code());
            }
        }
    }

    /// What an error reply's code says of the connection and its server.
    fn server_said(&mut self, code: Option<&str>) {
        match code {
            // A replica now (a failover demoted it): no write will succeed here.
            Some("READONLY") => self.read_only = true,
            // Loading its data set (a restarted or re-synced replica): not this one.
            Some("LOADING") => self.loading = true,
            _ => {}
        }
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl Deref for Connection {
    type Target = MultiplexedConnection;

    fn deref(&self) -> &MultiplexedConnection {
        &self.inner
    }
}

impl DerefMut for Connection {
    fn deref_mut(&mut self) -> &mut MultiplexedConnection {
        &mut self.inner
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            self.abandoned = true;
            let result = self.inner.req_packed_command(cmd).await;
            self.abandoned = false;
            self.watch(&result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            self.abandoned = true;
            let result = self.inner.req_packed_commands(cmd, offset, count).await;
            self.abandoned = false;
            self.watch_all(&result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

/// Whether a creation error is one retrying cannot fix: the server refused the credentials
/// (`WRONGPASS`, `NOAUTH`, redis-rs' authentication failure), an ACL forbids what connecting
/// needs (`NOPERM`), the URL asks for a database the server does not have, or the client's
/// settings are invalid. Transient, and retried: I/O errors (refused, reset, timed out),
/// `LOADING` (a server loading its data set), `BUSY`, `TRYAGAIN`, `MASTERDOWN`.
pub fn is_permanent(error: &RedisError) -> bool {
    use redis::ErrorKind;
    if error.is_io_error() || error.is_timeout() || error.is_connection_dropped() {
        return false;
    }
    match error.kind() {
        ErrorKind::AuthenticationFailed
        | ErrorKind::InvalidClientConfig
        | ErrorKind::RESP3NotSupported => true,
        _ => match error.code() {
            Some("WRONGPASS" | "NOAUTH" | "NOPERM") => true,
            // `SELECT` of a database the server does not have.
            Some("ERR") => error
                .detail()
                .is_some_and(|d| d.contains("DB index") || d.contains("invalid DB")),
            _ => false,
        },
    }
}

/// Whether a creation error says the server has no room for another client (`ERR max
/// number of clients reached`, at Redis' `maxclients`). The pool then backs off for longer and
/// makes one attempt at a time (see `gracepool::Manager::is_server_full`).
pub fn is_server_full(error: &RedisError) -> bool {
    error.code() == Some("ERR")
        && error
            .detail()
            .is_some_and(|d| d.contains("max number of clients"))
}

impl gracepool::Manager for Manager {
    type Connection = Connection;
    type Error = RedisError;

    async fn create(&self) -> Result<Connection, RedisError> {
        let inner = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        Ok(Connection {
            inner,
            broken: false,
            abandoned: false,
            read_only: false,
            loading: false,
        })
    }

    /// Permanent (every waiter told at once, see [`is_permanent`]): credentials refused,
    /// settings the server or the client cannot use. Everything else is ridden out.
    fn is_permanent(&self, error: &RedisError) -> bool {
        is_permanent(error)
    }

    fn is_server_full(&self, error: &RedisError) -> bool {
        is_server_full(error)
    }

    /// A connection that saw an I/O error is [`Unhealthy::Closed`] at once; any other is
    /// asked `PING` and must answer `PONG`.
    async fn check(
        &self,
        conn: &mut Connection,
        _metrics: &gracepool::Metrics,
    ) -> Result<(), Unhealthy<RedisError>> {
        if conn.broken || conn.abandoned || conn.read_only || conn.loading {
            return Err(Unhealthy::Closed);
        }
        // On the inner connection: a check cut short (its timeout, the pool's close) leaves a
        // PING that is answered at once, not a caller's command, and the connection's goodbye
        // is still said.
        let pong: String = redis::cmd("PING").query_async(&mut conn.inner).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(Unhealthy::Failed(RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "PING was not answered PONG",
                pong,
            ))))
        }
    }

    fn is_broken(&self, conn: &mut Connection) -> bool {
        conn.broken || conn.abandoned || conn.read_only || conn.loading
    }

    /// `READONLY` (the server became a replica, as after a failover) is
    /// [`Unfit::Server`](gracepool::Unfit::Server): the pool is refreshed, so that no later
    /// write goes to the replica. A connection that failed, whose server is `LOADING`, or that
    /// carries an abandoned command, is [`Unfit::Connection`](gracepool::Unfit::Connection).
    fn unfit(&self, conn: &mut Connection) -> Option<gracepool::Unfit> {
        // Called once as each connection comes back, and an unfit one is retired then: each
        // is counted once.
        let r = &self.retired;
        let (unfit, counter) = if conn.read_only {
            (gracepool::Unfit::Server, &r.read_only)
        } else if conn.loading {
            (gracepool::Unfit::Connection, &r.loading)
        } else if conn.broken {
            (gracepool::Unfit::Connection, &r.connection_lost)
        } else if conn.abandoned {
            (gracepool::Unfit::Connection, &r.abandoned)
        } else {
            return None;
        };
        counter.fetch_add(1, Relaxed);
        Some(unfit)
    }

    /// Sends `QUIT` and waits for `+OK`: [`Goodbye::Said`] only when the server answered it.
    /// [`Goodbye::Unsaid`] when the connection was already broken or gone, or the server
    /// does not take `QUIT` (`ERR` or `NOPERM`: then it is not asked again);
    /// [`Goodbye::Failed`] when sending it failed otherwise (redis-rs' response timeout, a
    /// busy server). The connection is dropped in every case.
    async fn shutdown(&self, mut conn: Connection) -> Goodbye<RedisError> {
        // A command a caller abandoned (a `BLPOP`, say) would be answered before QUIT: the
        // connection is dropped instead, which frees its place at once (the server ends the
        // command when the socket closes).
        if conn.broken || conn.abandoned || self.quit_refused.load(Relaxed) {
            return Goodbye::Unsaid;
        }
        match redis::cmd("QUIT").query_async::<()>(&mut conn.inner).await {
            Ok(()) => Goodbye::Said,
            Err(e) if matches!(e.code(), Some("ERR" | "NOPERM")) => {
                // The server does not take QUIT (an unknown command, or one an ACL forbids):
                // closing the socket is then the only goodbye. A passing refusal (BUSY,
                // LOADING) is not remembered, and falls to `Failed` below.
                self.quit_refused.store(true, Relaxed);
                Goodbye::Unsaid
            }
            Err(e) if e.is_unrecoverable_error() || e.is_connection_dropped() => Goodbye::Unsaid,
            // Sent, never answered (redis-rs' response timeout): it may not have arrived.
            Err(e) if e.is_timeout() => Goodbye::Unconfirmed,
            Err(e) => Goodbye::Failed(e),
        }
    }

    /// Drops the connection: its driver task is cancelled and its socket closed, with no
    /// runtime needed.
    fn close(&self, conn: Connection) -> Result<(), RedisError> {
        drop(conn);
        Ok(())
    }
}

// The README's example is compiled with the crate's doctests, so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
