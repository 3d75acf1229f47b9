//! A [gracepool] manager for SQLite on rusqlite, with SQLite compiled in (rusqlite's
//! `bundled`: no system library needed). Each connection lives on a thread of its own
//! ([gracepool_blocking]); callers await its calls on tokio, smol or actix alike.
//!
//! # Example
//!
//! ```
//! use gracepool_sqlite::{Config, Manager, Pool};
//! use gracepool_tokio::TokioRuntime;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//!     let dir = std::env::temp_dir().join(format!("gracepool-sqlite-doc-{}", std::process::id()));
//!     std::fs::create_dir_all(&dir)?;
//!     let path = dir.join("app.db");
//!
//!     // WAL, busy_timeout 5 s and foreign keys on each connection, as it opens.
//!     let pool: Pool = Pool::builder(Manager::new(Config::new(&path)))
//!         .max_size(4)
//!         .runtime(TokioRuntime::current())
//!         .build()?;
//!
//!     let mut conn = pool.get().await?;
//!     // The closure runs on the connection's own thread.
//!     let greeting: String = conn
//!         .interact(|c: &mut rusqlite::Connection| {
//!             c.execute_batch("CREATE TABLE IF NOT EXISTS t (s TEXT); INSERT INTO t VALUES ('hello')")?;
//!             c.query_row("SELECT s FROM t", [], |row| row.get(0))
//!         })
//!         .await??;
//!     assert_eq!(greeting, "hello");
//!     drop(conn);
//!
//!     // On shutdown: each connection runs `PRAGMA optimize` and closes; the last one to
//!     // close checkpoints the write-ahead log into the database file and removes it.
//!     let report = pool.close().await;
//!     assert_eq!(report.counters.closed_graceful, report.counters.created);
//!     assert!(!dir.join("app.db-wal").exists());
//!     # std::fs::remove_dir_all(&dir)?;
//!     Ok(())
//! }
//! ```
//!
//! A pooled connection derefs to [`Connection`]; its
//! [`interact`](gracepool_blocking::Connection::interact) runs a closure with
//! `&mut rusqlite::Connection` on the connection's thread and returns what the closure
//! returns (here a `rusqlite::Result`, hence the `??`).
//!
//! # Each connection, as it opens
//!
//! [`Config`] says where the database is and how to open it (rusqlite's [`OpenFlags`], read
//! and write and create by default), and sets up each connection in this order:
//! `busy_timeout` (5 s), `PRAGMA journal_mode=WAL` (readers and one writer at once; skipped
//! on a read-only connection), `PRAGMA foreign_keys=ON`, then your own hook
//! ([`Config::setup`]). Before a connection that has waited in the pool for a second or more
//! is handed out again, it must answer `SELECT 1` (the manager's
//! [`check_after_idle`](gracepool_blocking::Manager::check_after_idle)); a connection that a
//! call left inside a transaction is closed as it comes back, never handed to the next caller.
//!
//! # Writers and `busy_timeout`
//!
//! SQLite takes one writer at a time. A writer that finds the database locked waits up to
//! `busy_timeout` for it, so under a load of many writers no `database is locked` reaches a
//! caller as long as each write transaction is shorter than `busy_timeout` divided by the
//! number of writers queued behind it (the tests run 8 writers on 8 connections, 200 writes
//! each, with the default 5 s). One case `busy_timeout` cannot help: a transaction that began
//! as a reader (`BEGIN`, a `SELECT`) and then writes, while another writer committed, fails
//! at once with `SQLITE_BUSY`; begin write transactions with `BEGIN IMMEDIATE`
//! (`rusqlite::TransactionBehavior::Immediate`).
//!
//! # How a connection says goodbye
//!
//! On its own thread: `PRAGMA optimize` (SQLite's advice for a closing connection: it
//! refreshes the query planner's statistics where they are stale), then `sqlite3_close`. When
//! the last connection to the database closes, SQLite checkpoints the write-ahead log into
//! the database file and deletes the `-wal` file. While the runtime is alive the pool's actor
//! awaits each goodbye without blocking an async thread, and a goodbye that went through counts
//! as `closed_graceful`.
//!
//! # When the runtime is already gone
//!
//! The pool's synchronous fallback sends each connection's thread "close" and waits for its
//! goodbye (the same goodbye, `PRAGMA optimize` and close) up to the manager's
//! [`close_wait`](gracepool_blocking::Manager::close_wait), 1 s by default: about what closing
//! the connection in place would take. A connection whose thread is still running a call is
//! not waited for: the call runs to its end, then its thread closes the connection
//! (`Stats::closed_late`). Nothing panics or prints; a program's `main` can wait for those
//! last closes before it exits with `pool.manager().threads().wait_closed(timeout)` (a
//! process that exits ends its threads with it; SQLite's journal then recovers the database
//! on the next open, but the `-wal` file stays until then).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gracepool_blocking::Connector;
use rusqlite::{ErrorCode, OpenFlags};

pub use gracepool_blocking::{InteractError, Stats, Threads};
pub use rusqlite;

/// A pool of SQLite connections.
pub type Pool = gracepool::Pool<Manager>;

/// The pool's manager: [`Config`]'s connections, each on a thread of its own.
pub type Manager = gracepool_blocking::Manager<Config>;

/// A connection checked out of a [`Pool`]: derefs to [`Connection`].
pub type Pooled = gracepool::Pooled<Manager>;

/// A connection of the pool: [`interact`](gracepool_blocking::Connection::interact) runs a
/// closure with `&mut rusqlite::Connection` on the connection's thread.
pub type Connection = gracepool_blocking::Connection<Config>;

/// What the pool's manager fails with: [`Error`], or what befell a connection's thread.
pub type ManagerError = gracepool_blocking::Error<Error>;

type Setup = Arc<dyn Fn(&mut rusqlite::Connection) -> rusqlite::Result<()> + Send + Sync>;

/// Where the database is, how to open it, and how to set up each connection.
#[derive(Clone)]
pub struct Config {
    path: PathBuf,
    flags: OpenFlags,
    busy_timeout: Duration,
    wal: bool,
    foreign_keys: bool,
    optimize_on_close: bool,
    setup: Option<Setup>,
}

impl Config {
    /// The database file at `path`, opened for reading and writing and created if missing
    /// (rusqlite's default [`OpenFlags`]); its directory must exist.
    pub fn new(path: impl AsRef<Path>) -> Config {
        Config {
            path: path.as_ref().to_owned(),
            flags: OpenFlags::default(),
            busy_timeout: Duration::from_secs(5),
            wal: true,
            foreign_keys: true,
            optimize_on_close: true,
            setup: None,
        }
    }

    /// The flags each connection is opened with (`SQLITE_OPEN_READ_ONLY` for a reader pool,
    /// say). Default: rusqlite's, read-write-create with URI names.
    pub fn flags(mut self, flags: OpenFlags) -> Config {
        self.flags = flags;
        self
    }

    /// How long a statement waits for a lock another connection holds before it fails with
    /// `database is locked`. Default: 5 s.
    pub fn busy_timeout(mut self, timeout: Duration) -> Config {
        self.busy_timeout = timeout;
        self
    }

    /// Whether each connection asks for `journal_mode=WAL` (readers do not block the writer,
    /// nor it them). Default: yes. Skipped on read-only connections.
    pub fn wal(mut self, wal: bool) -> Config {
        self.wal = wal;
        self
    }

    /// Whether each connection turns `PRAGMA foreign_keys` on. Default: yes.
    pub fn foreign_keys(mut self, on: bool) -> Config {
        self.foreign_keys = on;
        self
    }

    /// Whether the goodbye runs `PRAGMA optimize` before it closes (a connection opened for
    /// writing only). Default: yes.
    pub fn optimize_on_close(mut self, on: bool) -> Config {
        self.optimize_on_close = on;
        self
    }

    /// Your own setup for each new connection, run after the built-in PRAGMAs, on the
    /// connection's thread (more PRAGMAs, functions, collations). An error fails the
    /// connection's creation ([`Error::Setup`]).
    pub fn setup(
        mut self,
        setup: impl Fn(&mut rusqlite::Connection) -> rusqlite::Result<()> + Send + Sync + 'static,
    ) -> Config {
        self.setup = Some(Arc::new(setup));
        self
    }

    /// The database's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn writes(&self) -> bool {
        self.flags.contains(OpenFlags::SQLITE_OPEN_READ_WRITE)
    }

    /// Whether the path names a file in a directory (not `:memory:`, not a `file:` URI).
    fn is_plain_file(&self) -> bool {
        let s = self.path.to_string_lossy();
        !(s.is_empty()
            || s == ":memory:"
            || (s.starts_with("file:") && self.flags.contains(OpenFlags::SQLITE_OPEN_URI))
            || self.flags.contains(OpenFlags::SQLITE_OPEN_MEMORY))
    }

    fn set_up(&self, conn: &mut rusqlite::Connection) -> Result<(), Error> {
        let step = |step: &'static str| move |source| Error::Setup { step, source };
        conn.busy_timeout(self.busy_timeout)
            .map_err(step("busy_timeout"))?;
        if self.wal && self.writes() {
            let mode: String = conn
                .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
                .map_err(step("journal_mode=WAL"))?;
            // An in-memory database keeps its `memory` journal: no file, nothing to share.
            if !(mode.eq_ignore_ascii_case("wal") || mode.eq_ignore_ascii_case("memory")) {
                return Err(Error::NotWal { mode });
            }
        }
        if self.foreign_keys {
            conn.pragma_update(None, "foreign_keys", true)
                .map_err(step("foreign_keys=ON"))?;
        }
        if let Some(setup) = &self.setup {
            setup(conn).map_err(step("the setup hook"))?;
        }
        Ok(())
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("path", &self.path)
            .field("flags", &self.flags)
            .field("busy_timeout", &self.busy_timeout)
            .field("wal", &self.wal)
            .field("foreign_keys", &self.foreign_keys)
            .field("optimize_on_close", &self.optimize_on_close)
            .field("setup", &self.setup.is_some())
            .finish()
    }
}

/// Why a connection could not be opened, checked or closed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The database file's directory does not exist: SQLite creates the file, never its
    /// directory. Permanent.
    MissingDirectory {
        /// The database file's path.
        path: PathBuf,
    },
    /// The connection was asked to write, but SQLite could open the file only for reading
    /// (the file, or its directory, is not writable by this process). Permanent.
    ReadOnly {
        /// The database file's path.
        path: PathBuf,
    },
    /// SQLite could not open the database.
    Open {
        /// The database file's path.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// A step of the connection's setup failed.
    Setup {
        /// Which: `busy_timeout`, `journal_mode=WAL`, `foreign_keys=ON`, or the setup hook.
        step: &'static str,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// `journal_mode=WAL` was asked for and SQLite kept another mode (a file system without
    /// shared memory, a database opened with `nolock`).
    NotWal {
        /// The journal mode SQLite kept.
        mode: String,
    },
    /// The health check found the connection inside a transaction a call left open.
    InTransaction,
    /// The health check or the goodbye failed.
    Sqlite(rusqlite::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::MissingDirectory { path } => write!(
                f,
                "cannot open the SQLite database {}: its directory does not exist (create it \
                 first; SQLite creates the file, not its directory)",
                path.display()
            ),
            Error::ReadOnly { path } => write!(
                f,
                "the SQLite database {} can be opened only for reading: make the file and its \
                 directory writable by this process, or open it with SQLITE_OPEN_READ_ONLY",
                path.display()
            ),
            Error::Open { path, source } => {
                write!(
                    f,
                    "cannot open the SQLite database {}: {source}",
                    path.display()
                )
            }
            Error::Setup { step, source } => {
                write!(
                    f,
                    "setting up a SQLite connection failed at {step}: {source}"
                )
            }
            Error::NotWal { mode } => write!(
                f,
                "SQLite kept journal_mode={mode} instead of WAL (a file system without shared \
                 memory?): turn WAL off with Config::wal(false), or move the database"
            ),
            Error::InTransaction => {
                f.write_str("the connection was left inside a transaction by an earlier call")
            }
            Error::Sqlite(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Open { source, .. } | Error::Setup { source, .. } => Some(source),
            Error::Sqlite(e) => Some(e),
            _ => None,
        }
    }
}

impl Error {
    /// Whether retrying cannot fix it: a missing directory, a read-only file, a file that is
    /// not a database, a database SQLite cannot open, refused permissions, a setup hook's
    /// error other than a lock. A lock held by another connection (`SQLITE_BUSY`, `LOCKED`)
    /// and an I/O error are transient.
    pub fn is_permanent(&self) -> bool {
        let transient = |e: &rusqlite::Error| {
            matches!(
                e.sqlite_error_code(),
                Some(
                    ErrorCode::DatabaseBusy
                        | ErrorCode::DatabaseLocked
                        | ErrorCode::SystemIoFailure
                        | ErrorCode::OutOfMemory
                        | ErrorCode::DiskFull
                )
            )
        };
        match self {
            Error::MissingDirectory { .. } | Error::ReadOnly { .. } | Error::NotWal { .. } => true,
            Error::Open { source, .. } | Error::Setup { source, .. } => !transient(source),
            Error::InTransaction | Error::Sqlite(_) => false,
        }
    }
}

impl Connector for Config {
    type Connection = rusqlite::Connection;
    type Error = Error;

    /// Opens the database with the configured flags, then sets the connection up: see
    /// [`Config`].
    fn open(&self) -> Result<rusqlite::Connection, Error> {
        if self.is_plain_file() {
            let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty());
            if dir.is_some_and(|d| !d.is_dir()) {
                return Err(Error::MissingDirectory {
                    path: self.path.clone(),
                });
            }
        }
        let mut conn =
            rusqlite::Connection::open_with_flags(&self.path, self.flags).map_err(|source| {
                Error::Open {
                    path: self.path.clone(),
                    source,
                }
            })?;
        // SQLite falls back to reading when it cannot open the file for writing, silently.
        if self.writes() && conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) {
            return Err(Error::ReadOnly {
                path: self.path.clone(),
            });
        }
        self.set_up(&mut conn)?;
        Ok(conn)
    }

    /// `SELECT 1`, outside any transaction.
    fn check(&self, conn: &mut rusqlite::Connection) -> Result<(), Error> {
        if !conn.is_autocommit() {
            return Err(Error::InTransaction);
        }
        conn.query_row("SELECT 1", [], |row| row.get::<_, i64>(0))
            .map_err(Error::Sqlite)?;
        Ok(())
    }

    /// A call that left a transaction open makes the connection unfit: it is closed as it
    /// comes back (closing rolls the transaction back).
    fn is_fit(&self, conn: &mut rusqlite::Connection) -> bool {
        conn.is_autocommit()
    }

    /// `PRAGMA optimize`, then close: the last connection to close checkpoints the
    /// write-ahead log.
    fn close(&self, conn: rusqlite::Connection) -> Result<(), Error> {
        // A read-only connection has nothing to optimize, and may not write the statistics.
        let optimized = if self.optimize_on_close && self.writes() && conn.is_autocommit() {
            conn.execute_batch("PRAGMA optimize").map_err(Error::Sqlite)
        } else {
            Ok(())
        };
        // A failed close hands the connection back; dropping it closes it all the same.
        let closed = conn.close().map_err(|(_, e)| Error::Sqlite(e));
        optimized.and(closed)
    }

    fn is_permanent(&self, error: &Error) -> bool {
        error.is_permanent()
    }
}

// The README's example is compiled with the crate's doctests, so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
