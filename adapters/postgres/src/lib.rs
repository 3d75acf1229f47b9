//! A [gracepool] manager for PostgreSQL, on [`tokio_postgres`]: every connection says
//! goodbye to the server when the pool closes.
//!
//! # Example
//!
//! ```no_run
//! use gracepool_postgres::{Manager, Pool};
//! use gracepool_tokio::TokioRuntime;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//!     let manager = Manager::from_conn_str("host=127.0.0.1 user=app dbname=app")?;
//!     let pool = Pool::builder(manager)
//!         .max_size(8)
//!         .runtime(TokioRuntime::current())
//!         .build()?;
//!
//!     let conn = pool.get().await?;
//!     // The pooled connection derefs to a `tokio_postgres::Client`.
//!     let row = conn.query_one("SELECT 1 + 1", &[]).await?;
//!     assert_eq!(row.get::<_, i32>(0), 2);
//!     // A statement prepared once per connection, reused on every later checkout of it.
//!     let stmt = conn.prepare_cached("SELECT $1::int").await?;
//!     conn.query_one(&stmt, &[&7]).await?;
//!     drop(conn);
//!
//!     // On shutdown: every connection sends PostgreSQL's Terminate message.
//!     let report = pool.close().await;
//!     assert_eq!(report.counters.closed_graceful, report.counters.created);
//!     Ok(())
//! }
//! ```
//!
//! # The shape of a connection: a client and a driver task
//!
//! tokio-postgres splits a connection in two: a [`Client`] that sends requests, and a
//! [`tokio_postgres::Connection`] future, the *driver*, that owns the socket and must be
//! polled for anything to happen. [`Manager::create`](gracepool::Manager::create) spawns the
//! driver with `tokio::spawn`, which works because the pool runs `create` inside its actor's
//! task, on the pool's runtime. That runtime must therefore be a tokio one: `gracepool-tokio`,
//! or `gracepool-actix` (an actix Arbiter is a tokio current-thread runtime). On any other
//! runtime, `create` panics (there is no tokio reactor to connect with), and the pool reports
//! that as [`gracepool::Error::ManagerPanicked`].
//!
//! The socket lives in the driver task, not in the [`PgConnection`]. A [`PgConnection`] holds
//! the client and the driver's `JoinHandle`.
//!
//! # How a connection says goodbye
//!
//! PostgreSQL's goodbye is the Terminate message. tokio-postgres sends it when the last
//! [`Client`] is dropped: the driver sees that no one can send requests any more, writes
//! Terminate, closes the socket and finishes. The graceful
//! [`shutdown`](gracepool::Manager::shutdown) does exactly that: it drops the client, then
//! waits for the driver to finish (the pool bounds the wait by its shutdown timeout). It reports
//! [`Goodbye::Said`] only when the client was still open and the
//! driver finished cleanly; a connection whose server had already ended it (a backend ended by
//! `pg_terminate_backend`, a server restart) reports `Unsaid`, and the pool counts it as
//! closed without a goodbye. With the server at `log_min_messages = debug1`, a connection that
//! left without Terminate is logged as `unexpected EOF on client connection`; a pool closed with
//! `close().await` leaves none.
//!
//! # When the runtime is already gone
//!
//! The synchronous [`close`](gracepool::Manager::close), which the pool uses once its runtime
//! is gone (or its actor cannot be reached), needs no runtime: it aborts the driver task and
//! drops the client. Aborting a task is safe from any thread, also after its runtime has shut
//! down, and by then the runtime has dropped the driver task, which closed the socket. Such a
//! connection ends without Terminate: the server sees the socket close and ends the backend.
//! (A driver caught mid-poll on another worker thread at that moment may still get its
//! Terminate out; the pool counts the connection as closed without goodbye all the same.)
//! Dropping a [`PgConnection`] does the same, so a connection dropped anywhere (a shutdown cut
//! short by its timeout, a future dropped by a runtime teardown) never leaves a driver behind.
//!
//! # Health checks
//!
//! [`CheckMethod::Fast`] (the default) asks the client whether its driver has ended
//! ([`Client::is_closed`]); it costs nothing and catches a server that closed the connection.
//! [`CheckMethod::Verified`] adds a round trip (an empty simple query) before a connection is
//! handed out again, and so also catches a connection whose server is gone without a word.
//! A connection coming back from its guard is dropped when its client is closed
//! ([`is_broken`](gracepool::Manager::is_broken)).
//!
//! # Statements
//!
//! A prepared statement belongs to the connection that prepared it, and an application cannot
//! tell which connection the pool hands it next: without help, every checkout would prepare
//! again (one more round trip per query). [`PgConnection::prepare_cached`] keeps the statements
//! each connection prepared, by SQL text, for as long as the connection lives.
//!
//! # TLS
//!
//! [`Manager::new`] and [`Manager::from_conn_str`] connect without TLS ([`NoTls`]).
//! [`Manager::with_tls`] takes any [`MakeTlsConnect`] that tokio-postgres accepts: for example
//! the connector of the `postgres-native-tls` or `tokio-postgres-rustls` crates. The pool type
//! then names it: `Pool<MakeTlsConnector>`.
//!
//! # Coming from deadpool-postgres or bb8-postgres
//!
//! | deadpool-postgres / bb8-postgres | gracepool-postgres |
//! |---|---|
//! | `Manager::from_config(config, NoTls, ManagerConfig { recycling_method, .. })` | `Manager::new(config).check_method(..)` |
//! | `RecyclingMethod::Fast` / `Verified` | [`CheckMethod::Fast`] / [`CheckMethod::Verified`] |
//! | `RecyclingMethod::Clean` / `Custom(sql)` | no equivalent: run the clean-up on the connection yourself |
//! | bb8's `PostgresConnectionManager::new(config, NoTls)` | `Manager::new(config)` (its `is_valid` is [`CheckMethod::Verified`]) |
//! | `Pool::builder(m).max_size(n).build()` / bb8's `.build(m).await` | `Pool::builder(m).max_size(n).runtime(TokioRuntime::current()).build()` |
//! | `client.prepare_cached(sql)` (deadpool) | [`PgConnection::prepare_cached`], the same per connection |
//! | `Object::take(obj)` (deadpool) | `Pooled::detach(conn)` |
//! | `pool.close()` (aborts every driver: no goodbye) / bb8: none | `pool.close().await`: every connection says goodbye |
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use gracepool::{Goodbye, Unhealthy};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Config, Socket, Statement};

#[cfg(feature = "serde")]
mod file_config;
mod options;
mod statements;
#[cfg(feature = "rustls")]
mod tls;
mod transaction;

#[cfg(feature = "serde")]
pub use file_config::PgConfig;
pub use options::{defaults, ConfigError, ConnectOptions, SslMode};
pub use statements::StatementCache;
#[cfg(feature = "rustls")]
pub use tls::{rustls, RustlsConnect, RustlsStream, RustlsTlsConnect, TlsError, Verify};
pub use tokio_postgres;
pub use tokio_postgres::NoTls;
pub use transaction::{Transaction, TransactionBuilder};

use statements::Cache;

/// A gracepool pool of PostgreSQL connections.
pub type Pool<T = NoTls> = gracepool::Pool<Manager<T>>;

/// A connection checked out of a [`Pool`]; derefs to [`PgConnection`], and through it to
/// [`Client`].
pub type Pooled<T = NoTls> = gracepool::Pooled<Manager<T>>;

/// What [`Pool::get`](gracepool::Pool::get) fails with; a connection failure's source is the
/// [`tokio_postgres::Error`].
pub type PoolError = gracepool::Error<tokio_postgres::Error>;

/// How a connection is checked before it is handed out again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
#[non_exhaustive]
pub enum CheckMethod {
    /// Only whether the client is closed: no round trip. Catches every connection whose driver
    /// has ended (the server closed it, or it failed); misses a server gone without a word.
    #[default]
    Fast,
    /// A round trip (an empty simple query) as well: the connection is known to work when it is
    /// handed out, for the price of one round trip per checkout of an idle connection.
    Verified,
}

/// Makes, checks and ends PostgreSQL connections for a gracepool [`Pool`].
///
/// `T` is how connections are encrypted: [`NoTls`] by default, any [`MakeTlsConnect`] with
/// [`Manager::with_tls`].
pub struct Manager<T = NoTls> {
    config: Config,
    tls: T,
    check: CheckMethod,
    cache: StatementCache,
    /// Bumped by [`Manager::clear_statement_caches`]; every connection's cache reads it.
    generation: Arc<AtomicU64>,
}

impl Manager<NoTls> {
    /// A manager connecting without TLS with `config`, taken as it is (no network defaults
    /// added: see [`ConnectOptions`] for those).
    pub fn new(config: Config) -> Self {
        Manager::with_tls(config, NoTls)
    }

    /// A manager connecting without TLS, configured by a connection string: key-value
    /// (`host=127.0.0.1 user=app dbname=app`) or a URL (`postgresql://app@127.0.0.1/app`),
    /// read by [`ConnectOptions::parse`] (libpq's `sslmode` values, the network
    /// [`defaults`] where the string says nothing).
    ///
    /// Without TLS it refuses a string that asks for TLS (`sslmode=require`, `verify-ca`,
    /// `verify-full`: [`ConfigError::TlsRequired`]) rather than connect in plaintext; with
    /// `prefer` (libpq's default) it connects in plaintext. For TLS, enable the `rustls`
    /// feature and use [`ConnectOptions::manager_rustls`].
    pub fn from_conn_str(s: &str) -> Result<Self, ConfigError> {
        ConnectOptions::parse(s)?.manager()
    }

    /// A manager without TLS configured by the environment: `DATABASE_URL` and the libpq
    /// `PG*` variables ([`ConnectOptions::from_env`]).
    pub fn from_env() -> Result<Self, ConfigError> {
        ConnectOptions::from_env()?.manager()
    }
}

impl<T> Manager<T> {
    /// A manager connecting with `config`, encrypted by `tls`.
    pub fn with_tls(config: Config, tls: T) -> Self {
        Manager {
            config,
            tls,
            check: CheckMethod::default(),
            cache: StatementCache::default(),
            generation: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Chooses how connections are checked before they are handed out again
    /// ([`CheckMethod::Fast`] by default).
    pub fn check_method(mut self, check: CheckMethod) -> Self {
        self.check = check;
        self
    }

    /// How many prepared statements each connection keeps for
    /// [`prepare_cached`](PgConnection::prepare_cached) ([`StatementCache::Bounded`] at 100
    /// by default; [`StatementCache::Disabled`] behind PgBouncer's transaction pooling).
    pub fn statement_cache(mut self, cache: StatementCache) -> Self {
        self.cache = cache;
        self
    }

    /// Empties every connection's statement cache — after a migration changed a table that
    /// cached statements read, or a `DISCARD ALL` — idle and checked-out connections alike:
    /// each cache empties itself the next time it is used. Reach it through the pool:
    /// `pool.manager().clear_statement_caches()`.
    pub fn clear_statement_caches(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The configuration connections are made with.
    pub fn config(&self) -> &Config {
        &self.config
    }
}

impl<T> fmt::Debug for Manager<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Config's Debug leaves the password out.
        f.debug_struct("Manager")
            .field("config", &self.config)
            .field("check", &self.check)
            .field("statement_cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// What the driver task finishes with.
type DriverResult = Result<(), tokio_postgres::Error>;

/// A pooled PostgreSQL connection: the [`Client`] (which it derefs to, mutably too, so
/// `transaction()` works as on a bare client), its driver task, and the statements it
/// prepared with [`prepare_cached`](PgConnection::prepare_cached).
///
/// Dropping it aborts the driver (no runtime needed), which closes the socket without
/// Terminate; the pool's graceful close says goodbye first.
pub struct PgConnection {
    // Declared first, so dropped first: the driver is aborted before the client goes, and
    // cannot start a Terminate that the abort would cut in half.
    driver: Driver,
    client: Client,
    // After the client: a statement dropped once the client is gone asks nothing of the
    // server (the session's end deallocates it).
    statements: Cache,
}

impl PgConnection {
    /// The statement for `sql`, prepared on this connection the first time and taken from this
    /// connection's cache afterwards (see [`StatementCache`]: bounded, least recently used
    /// first out; with the cache disabled, prepared every time). Only successful preparations
    /// are kept.
    pub async fn prepare_cached(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        self.prepare_typed_cached(sql, &[]).await
    }

    /// Like [`prepare_cached`](PgConnection::prepare_cached), with the parameter types given
    /// (cached by SQL text and types together).
    pub async fn prepare_typed_cached(
        &self,
        sql: &str,
        types: &[Type],
    ) -> Result<Statement, tokio_postgres::Error> {
        if let Some(stmt) = self.statements.get(sql, types) {
            return Ok(stmt);
        }
        let stmt = self.client.prepare_typed(sql, types).await?;
        self.statements.insert(sql, types, stmt.clone());
        Ok(stmt)
    }

    /// Begins a transaction: [`Client::transaction`], with this connection's statement cache
    /// ([`Transaction::prepare_cached`]). Dropped without commit — a cancelled request
    /// included — it rolls back before the connection can be handed out again.
    pub async fn transaction(&mut self) -> Result<Transaction<'_>, tokio_postgres::Error> {
        let txn = self.client.transaction().await?;
        Ok(Transaction::new(txn, &self.statements))
    }

    /// A transaction with options (isolation level, read-only, deferrable):
    /// [`Client::build_transaction`], with this connection's statement cache.
    pub fn build_transaction(&mut self) -> TransactionBuilder<'_> {
        TransactionBuilder::new(self.client.build_transaction(), &self.statements)
    }

    /// How many statements this connection has cached.
    pub fn statement_cache_len(&self) -> usize {
        self.statements.len()
    }

    /// Forgets this connection's cached statements (after `DISCARD ALL` or a schema change);
    /// the server deallocates each once no copy of it is in use. For every connection of a
    /// pool at once: [`Manager::clear_statement_caches`].
    pub fn clear_statement_cache(&self) {
        self.statements.clear();
    }

    /// The client, for APIs that take a `&Client` explicitly.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The client, mutably (for APIs that take `&mut Client`).
    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl Deref for PgConnection {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl DerefMut for PgConnection {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl fmt::Debug for PgConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConnection")
            .field("closed", &self.client.is_closed())
            .field("cached_statements", &self.statement_cache_len())
            .finish_non_exhaustive()
    }
}

/// The driver task's handle, and whether the pool asked it to end; dropping it aborts the
/// task.
///
/// `JoinHandle::abort` only marks the task cancelled and, if it is idle, hands it to its
/// scheduler: it needs no runtime context, and once the runtime is gone there is no task left
/// to cancel (the runtime dropped it on shutdown). The tests check both.
struct Driver {
    task: JoinHandle<DriverResult>,
    /// Set before the pool ends the connection, so the driver's end is not reported as a
    /// failure.
    ending: Arc<AtomicBool>,
}

impl Driver {
    /// Waits for the driver to finish; `None` when it panicked or was cancelled.
    async fn finished(&mut self) -> Option<DriverResult> {
        (&mut self.task).await.ok()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.ending.store(true, Ordering::Relaxed);
        self.task.abort();
    }
}

/// Runs a connection's driver, and reports (as a `tracing` warning, with the `tracing`
/// feature) how it ended when the pool did not end it: the server ended the session (a
/// restart, `pg_terminate_backend`, an idle timeout of its own) or the network failed. The
/// connection is then found closed by the next check and replaced.
async fn drive<S, TS>(
    connection: tokio_postgres::Connection<S, TS>,
    ending: Arc<AtomicBool>,
) -> DriverResult
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    TS: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let ended = connection.await;
    if !ending.load(Ordering::Relaxed) {
        #[cfg(feature = "tracing")]
        match &ended {
            Err(error) => tracing::warn!(
                target: "gracepool_postgres",
                %error,
                sqlstate = error.code().map(|c| c.code()),
                "a connection's driver ended outside a close: the connection is lost"
            ),
            Ok(()) => tracing::warn!(
                target: "gracepool_postgres",
                "a connection's driver ended outside a close: the server closed the connection"
            ),
        }
    }
    ended
}

/// How the end of a driver that was asked to say goodbye reads.
fn goodbye(ended: Option<DriverResult>) -> Goodbye<tokio_postgres::Error> {
    match ended {
        // The driver writes Terminate and closes the socket before it finishes with Ok.
        Some(Ok(())) => Goodbye::Said,
        // The server ended the session first (a FATAL error, or the socket closed): there was
        // no one left to say goodbye to.
        Some(Err(e)) if e.is_closed() || e.as_db_error().is_some() => Goodbye::Unsaid,
        Some(Err(e)) => Goodbye::Failed(e),
        // The driver panicked or was aborted: nothing is known to have gone out.
        None => Goodbye::Unsaid,
    }
}

/// Whether a creation error is one retrying cannot fix: the server refused the credentials
/// (class 28), the database does not exist (`3D000`), the role may not connect (`42501`), or
/// the settings or TLS are wrong on this side. Transient, and retried: a refused or reset
/// connection, a timeout, `53300` too many connections, `57P03` cannot connect now (starting
/// up or shutting down), `08xxx`.
pub fn is_permanent(error: &tokio_postgres::Error) -> bool {
    if let Some(db) = error.as_db_error() {
        let code = db.code();
        return code.code().starts_with("28")
            || *code == SqlState::INVALID_CATALOG_NAME
            || *code == SqlState::INSUFFICIENT_PRIVILEGE;
    }
    // Not from the server: an I/O error, a timeout, a closed connection are transient; a TLS
    // certificate that does not verify, or a setting the client cannot use, is not.
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(e) = source {
        if e.downcast_ref::<std::io::Error>().is_some() {
            return false;
        }
        #[cfg(feature = "rustls")]
        if let Some(tls) = e.downcast_ref::<TlsError>() {
            return tls.certificate_error().is_some();
        }
        source = e.source();
    }
    let shown = error.to_string();
    shown.starts_with("invalid configuration")
        || shown.starts_with("error performing TLS handshake")
}

impl<T> gracepool::Manager for Manager<T>
where
    T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
    T::Stream: Send + Sync + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    type Connection = PgConnection;
    type Error = tokio_postgres::Error;

    fn create(&self) -> impl Future<Output = Result<PgConnection, tokio_postgres::Error>> + Send {
        let connecting = self.config.connect(self.tls.clone());
        let statements = Cache::new(self.cache, self.generation.clone());
        async move {
            let (client, connection) = connecting.await?;
            let ending = Arc::new(AtomicBool::new(false));
            // Runs on the pool's runtime: `create` is polled inside the pool actor's task.
            let task = tokio::spawn(drive(connection, ending.clone()));
            Ok(PgConnection {
                driver: Driver { task, ending },
                client,
                statements,
            })
        }
    }

    fn is_permanent(&self, error: &tokio_postgres::Error) -> bool {
        is_permanent(error)
    }

    fn check(
        &self,
        conn: &mut PgConnection,
        _metrics: &gracepool::Metrics,
    ) -> impl Future<Output = Result<(), Unhealthy<tokio_postgres::Error>>> + Send {
        let check = self.check;
        let conn = &*conn;
        async move {
            if conn.client.is_closed() {
                return Err(Unhealthy::Closed);
            }
            if check == CheckMethod::Verified {
                conn.client.simple_query("").await?;
            }
            Ok(())
        }
    }

    fn is_broken(&self, conn: &mut PgConnection) -> bool {
        conn.client.is_closed()
    }

    fn shutdown(
        &self,
        conn: PgConnection,
    ) -> impl Future<Output = Goodbye<tokio_postgres::Error>> + Send {
        let PgConnection {
            mut driver,
            client,
            statements,
        } = conn;
        driver.ending.store(true, Ordering::Relaxed);
        let open = !client.is_closed();
        // Dropping the last client is the goodbye: the driver writes Terminate, closes the
        // socket and finishes. The cached statements go after it, so they ask nothing of the
        // server (ending the session deallocates them).
        drop(client);
        drop(statements);
        async move {
            if !open {
                // The driver has ended or is ending: nothing to wait for, nobody to greet.
                return Goodbye::Unsaid;
            }
            // If this future is dropped (the pool's shutdown timeout, a runtime teardown), the
            // driver is aborted with it.
            goodbye(driver.finished().await)
        }
    }

    fn close(&self, conn: PgConnection) -> Result<(), tokio_postgres::Error> {
        // Aborts the driver, then drops the client: no runtime needed.
        drop(conn);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_leaves_the_password_out() {
        let m = Manager::from_conn_str("host=127.0.0.1 user=app password=sekrit dbname=app")
            .expect("parses");
        let shown = format!("{m:?}");
        assert!(shown.contains("app"), "{shown}");
        assert!(!shown.contains("sekrit"), "{shown}");
    }

    #[test]
    fn a_manager_without_tls_refuses_a_string_that_asks_for_it() {
        for mode in ["require", "verify-ca", "verify-full"] {
            let e = Manager::from_conn_str(&format!("host=db user=app sslmode={mode}"))
                .expect_err("no plaintext when TLS is required");
            assert!(matches!(e, ConfigError::TlsRequired(_)), "{e}");
            assert!(e.to_string().contains("rustls"), "{e}");
        }
        let plain = Manager::from_conn_str("host=db user=app sslmode=prefer").expect("plaintext");
        assert_eq!(
            plain.config().get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
    }

    #[test]
    fn conn_strs_and_urls_parse_and_bad_ones_are_errors() {
        let url = Manager::from_conn_str("postgresql://app@127.0.0.1:5433/db").expect("a URL");
        assert_eq!(url.config().get_user(), Some("app"));
        assert_eq!(url.config().get_ports(), &[5433]);
        assert!(Manager::from_conn_str("host=127.0.0.1 port=notaport").is_err());
        assert_eq!(
            Manager::new(Config::new())
                .check_method(CheckMethod::Verified)
                .check,
            CheckMethod::Verified
        );
    }

    #[test]
    fn a_driver_that_ended_cleanly_said_goodbye_and_a_lost_one_did_not() {
        assert!(matches!(goodbye(Some(Ok(()))), Goodbye::Said));
        assert!(matches!(goodbye(None), Goodbye::Unsaid));
    }
}
