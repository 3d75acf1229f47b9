//! A [gracepool] manager for diesel's `PgConnection`. diesel blocks, so each connection lives
//! on a thread of its own ([gracepool_blocking]); callers await its calls on tokio, smol or
//! actix alike.
//!
//! # Example
//!
//! ```no_run
//! use diesel::prelude::*;
//! use gracepool_diesel::{Config, Manager, Pool};
//! use gracepool_tokio::TokioRuntime;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//!     let config = Config::new("postgres://app@127.0.0.1/app");
//!     let pool: Pool = Pool::builder(Manager::new(config))
//!         .max_size(8)
//!         .runtime(TokioRuntime::current())
//!         .build()?;
//!
//!     let mut conn = pool.get().await?;
//!     // The closure runs on the connection's own thread, where diesel may block.
//!     let two: i32 = conn
//!         .interact(|c: &mut PgConnection| {
//!             diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1 + 1"))
//!                 .get_result(c)
//!         })
//!         .await??;
//!     assert_eq!(two, 2);
//!     drop(conn);
//!
//!     // On shutdown: each connection's thread ends its session (libpq's Terminate).
//!     let report = pool.close().await;
//!     assert_eq!(report.counters.closed_graceful, report.counters.created);
//!     Ok(())
//! }
//! ```
//!
//! A pooled connection derefs to [`Connection`]; its
//! [`interact`](gracepool_blocking::Connection::interact) runs a closure with
//! `&mut PgConnection` on the connection's thread and returns what the closure returns (here
//! a `QueryResult`, hence the `??`).
//!
//! # Each connection
//!
//! [`Config`] holds a libpq connection string (a URL or `key=value` pairs) and an optional
//! setup hook run as each connection opens. Before a connection that has waited in the pool
//! for a second or more is handed out again, it must answer `SELECT 1` (the manager's
//! [`check_after_idle`](gracepool_blocking::Manager::check_after_idle)). A connection that a
//! call left inside a transaction, or whose transaction manager diesel marked broken, is closed
//! as it comes back, never handed to the next caller. "Inside a transaction" is what diesel's
//! transaction manager knows (`Connection::transaction`, `begin_transaction`): a raw `BEGIN`
//! sent with `sql_query` is not seen, so open transactions through diesel.
//!
//! # How a connection says goodbye
//!
//! On its own thread, by dropping the `PgConnection`: libpq's `PQfinish` sends PostgreSQL the
//! Terminate message and closes the socket, synchronously, with no runtime. While the runtime
//! is alive the pool's actor awaits each goodbye without blocking an async thread (counted as
//! `closed_graceful`).
//!
//! # When the runtime is already gone
//!
//! The pool's synchronous fallback sends each connection's thread "close" and waits for its
//! goodbye up to the manager's [`close_wait`](gracepool_blocking::Manager::close_wait) (1 s
//! by default). A connection whose thread is still running a query is not waited for: the
//! query runs to its end, then its thread ends the session (`Stats::closed_late`). Nothing
//! panics or prints; a program's `main` can wait for those last goodbyes with
//! `pool.manager().threads().wait_closed(timeout)`.
//!
//! # A query still running at close
//!
//! The pool waits for checked-out connections up to its close deadline, then returns its
//! report; diesel has no way to cancel a query from another thread, so the query goes on and
//! its thread ends the session when it returns. Bound long queries on the server with
//! `SET statement_timeout` (in [`Config::setup`]).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::fmt;
use std::sync::Arc;

use diesel::connection::{AnsiTransactionManager, Connection as _, TransactionManager};
use diesel::{PgConnection, RunQueryDsl};
use gracepool_blocking::Connector;

pub use diesel;
pub use gracepool_blocking::{InteractError, Stats, Threads};

/// A pool of diesel `PgConnection`s.
pub type Pool = gracepool::Pool<Manager>;

/// The pool's manager: [`Config`]'s connections, each on a thread of its own.
pub type Manager = gracepool_blocking::Manager<Config>;

/// A connection checked out of a [`Pool`]: derefs to [`Connection`].
pub type Pooled = gracepool::Pooled<Manager>;

/// A connection of the pool: [`interact`](gracepool_blocking::Connection::interact) runs a
/// closure with `&mut PgConnection` on the connection's thread.
pub type Connection = gracepool_blocking::Connection<Config>;

/// What the pool's manager fails with: [`Error`], or what befell a connection's thread.
pub type ManagerError = gracepool_blocking::Error<Error>;

type Setup = Arc<dyn Fn(&mut PgConnection) -> diesel::QueryResult<()> + Send + Sync>;

/// Where the database is, and how to set up each connection.
#[derive(Clone)]
pub struct Config {
    url: String,
    setup: Option<Setup>,
}

impl Config {
    /// A libpq connection string: `postgres://user:password@host:port/db` or
    /// `host=… port=… user=… dbname=…`.
    pub fn new(url: impl Into<String>) -> Config {
        Config {
            url: url.into(),
            setup: None,
        }
    }

    /// Your own setup for each new connection, on its thread (`SET statement_timeout`, a
    /// search path). An error fails the connection's creation ([`Error::Setup`]).
    pub fn setup(
        mut self,
        setup: impl Fn(&mut PgConnection) -> diesel::QueryResult<()> + Send + Sync + 'static,
    ) -> Config {
        self.setup = Some(Arc::new(setup));
        self
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The connection string may hold a password: not shown.
        f.debug_struct("Config")
            .field("setup", &self.setup.is_some())
            .finish_non_exhaustive()
    }
}

/// Why a connection could not be opened, checked or set up.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// diesel could not connect: the server refused, the credentials are wrong, the
    /// connection string is malformed.
    Connect(diesel::ConnectionError),
    /// The setup hook failed.
    Setup(diesel::result::Error),
    /// The health check found the connection inside a transaction a call left open.
    InTransaction,
    /// The health check's `SELECT 1` failed.
    Check(diesel::result::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect(e) => write!(f, "cannot connect to PostgreSQL: {e}"),
            Error::Setup(e) => write!(f, "setting up a PostgreSQL connection failed: {e}"),
            Error::InTransaction => {
                f.write_str("the connection was left inside a transaction by an earlier call")
            }
            Error::Check(e) => write!(f, "the connection's health check failed: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connect(e) => Some(e),
            Error::Setup(e) | Error::Check(e) => Some(e),
            Error::InTransaction => None,
        }
    }
}

impl Error {
    /// Whether retrying cannot fix it: a malformed connection string, failed authentication
    /// or a missing password, a database or role that does not exist. A refused or lost connection is transient.
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::Connect(diesel::ConnectionError::InvalidCString(_))
            | Error::Connect(diesel::ConnectionError::InvalidConnectionUrl(_)) => true,
            Error::Connect(diesel::ConnectionError::BadConnection(m)) => {
                m.contains("authentication failed")
                    || m.contains("no password supplied")
                    || m.contains("does not exist")
                    || m.contains("invalid connection option")
                    || m.contains("missing \"=\"")
            }
            _ => false,
        }
    }
}

fn in_transaction(conn: &mut PgConnection) -> bool {
    !matches!(
        AnsiTransactionManager::transaction_manager_status_mut(conn).transaction_depth(),
        Ok(None)
    )
}

impl Connector for Config {
    type Connection = PgConnection;
    type Error = Error;

    /// Connects, then runs the setup hook.
    fn open(&self) -> Result<PgConnection, Error> {
        let mut conn = PgConnection::establish(&self.url).map_err(Error::Connect)?;
        if let Some(setup) = &self.setup {
            setup(&mut conn).map_err(Error::Setup)?;
        }
        Ok(conn)
    }

    /// `SELECT 1`, outside any transaction.
    fn check(&self, conn: &mut PgConnection) -> Result<(), Error> {
        if in_transaction(conn) {
            return Err(Error::InTransaction);
        }
        diesel::sql_query("SELECT 1")
            .execute(conn)
            .map_err(Error::Check)?;
        Ok(())
    }

    /// A call that left a transaction open, or broke diesel's transaction manager, makes the
    /// connection unfit: it is closed as it comes back.
    fn is_fit(&self, conn: &mut PgConnection) -> bool {
        !in_transaction(conn) && !AnsiTransactionManager::is_broken_transaction_manager(conn)
    }

    /// Drops the connection: libpq sends Terminate and closes the socket.
    fn close(&self, conn: PgConnection) -> Result<(), Error> {
        drop(conn);
        Ok(())
    }

    fn is_permanent(&self, error: &Error) -> bool {
        error.is_permanent()
    }
}
