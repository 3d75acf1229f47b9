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
//! driver on the tokio runtime it runs on: the pool's (its actor's task), or a caller's on the
//! pool's runtime. That runtime must therefore be a tokio one: `gracepool-tokio`, or
//! `gracepool-actix` (an actix Arbiter is a tokio current-thread runtime). On any other
//! runtime (smol, a plain executor) there is no tokio reactor to connect with: `create` fails
//! at once, never panics, with [`NoTokioRuntime`] in its error's source chain, which the pool
//! takes as permanent: `get()` returns [`gracepool::Error::Permanent`]
//! (`NoTokioRuntime::found_in(&error)` tells it).
//!
//! The socket lives in the driver task, not in the [`PgConnection`]. A [`PgConnection`] holds
//! the client, the driver's `JoinHandle` and the connection's statement cache.
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
//! With the `tracing` feature, a driver that ends when the pool did not ask it to — the server
//! ended the session (`pg_terminate_backend`, a restart, an idle timeout of its own) or the
//! network failed — is logged as a warning, target `gracepool_postgres`: "a connection's driver
//! ended outside a close", with the error and its SQLSTATE (`57P01` for a terminated backend).
//! The connection is then found closed by the next check and replaced. A close the pool began
//! logs no such warning.
//!
//! # Statements
//!
//! A prepared statement belongs to the connection that prepared it, and an application cannot
//! tell which connection the pool hands it next: without help, every checkout would prepare
//! again, one more round trip per query. [`PgConnection::prepare_cached`] keeps each
//! connection's statements by SQL text; [`PgConnection::prepare_typed_cached`] by SQL text and
//! parameter types together, so the same text with other types is another statement.
//!
//! How many each connection keeps is the manager's [`StatementCache`]
//! ([`Manager::statement_cache`]):
//!
//! - [`StatementCache::Bounded`]`(n)`, 100 by default: at most `n` per connection, the least
//!   recently used going first (tokio-postgres deallocates it on the server once no copy of it
//!   is in use). A service with an open-ended set of query texts holds at most `n` statements
//!   per session on the server.
//! - [`StatementCache::Disabled`]: `prepare_cached` prepares on every call, a round trip each,
//!   and no statement outlives its use. Behind PgBouncer's transaction pooling, set
//!   [`Pooler::Transaction`] instead, which turns the cache off and more (below).
//!
//! Inside a transaction, [`Transaction::prepare_cached`] reads and fills the same cache: a
//! statement prepared there outlives the transaction, whether it commits or not.
//!
//! After a migration changed a table that cached statements read, or after `DISCARD ALL`,
//! `pool.manager().clear_statement_caches()` ([`Manager::clear_statement_caches`]) empties the
//! cache of every connection of the pool, idle and checked out alike, each the next time it is
//! used; [`PgConnection::clear_statement_cache`] empties one.
//!
//! ```no_run
//! # async fn f(pool: gracepool_postgres::Pool) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use gracepool_postgres::tokio_postgres::types::Type;
//!
//! let conn = pool.get().await?;
//! // Cached by text and parameter types: here `$1` is an int8.
//! let stmt = conn.prepare_typed_cached("SELECT $1 + 1", &[Type::INT8]).await?;
//! let row = conn.query_one(&stmt, &[&41i64]).await?;
//! assert_eq!(row.get::<_, i64>(0), 42);
//! drop(conn);
//!
//! // After a migration: every connection prepares afresh.
//! pool.manager().clear_statement_caches();
//! # Ok(()) }
//! ```
//!
//! ## Behind PgBouncer
//!
//! In PgBouncer's session pooling (`pool_mode = session`) a client connection keeps one
//! server connection for its whole life: everything above works unchanged, the statement cache
//! included. Size the pool within PgBouncer's `default_pool_size`: a client connection beyond
//! it waits in PgBouncer for a server connection.
//!
//! In transaction pooling (`pool_mode = transaction`), each transaction — each statement
//! outside one — may run on another server connection, and before PgBouncer 1.21 a named
//! prepared statement exists only on the server connection that prepared it. tokio-postgres
//! names every statement it prepares, also the one behind `query("SELECT ...", params)`,
//! and prepares it in one round trip and runs it in the next: there, such calls fail with
//! `prepared statement "s3" does not exist` (or `already exists`, when a statement another
//! client left behind has the same name). Tell the manager, with
//! [`Manager::pooler`]`(`[`Pooler::Transaction`]`)` (`"pooler": "transaction"` in a
//! `PgConfig`), and no call through a pooled connection leaves a named statement to be
//! looked for elsewhere:
//!
//! - The statement cache is off, whatever [`Manager::statement_cache`] says.
//! - Outside a transaction, the calls that would prepare a named statement — `prepare`,
//!   `prepare_cached` and their typed forms, and the untyped `query`, `query_one`,
//!   `query_opt`, `execute` — fail at once, without preparing anything, with SQLSTATE
//!   `0A000` (feature not supported), a message naming `Pooler::Transaction`, and a hint
//!   naming what works. The refusal comes from the server (a `DO` block that raises it), so it
//!   is the `tokio_postgres::Error` these calls always return; only a refused call pays its
//!   round trip, and the connection serves on.
//! - What works: [`PgConnection::query_typed`] and its `_one`/`_opt` forms, and
//!   [`PgConnection::execute_typed`] (an unnamed statement, parameter types given: parsed,
//!   bound and run in one round trip, on one server connection); `simple_query` and
//!   `batch_execute` (the simple protocol: no parameters, no statement); and anything inside
//!   [`PgConnection::transaction`], which keeps one server connection until it ends —
//!   `Transaction::prepare_cached` prepares there (afresh each time, the cache being off).
//!   Drop a statement prepared in a transaction before the transaction ends: its `Close`
//!   then reaches the server connection that holds it.
//! - The pool's own round trips hold no session state: the checks ([`CheckMethod`]: an
//!   empty query, or `SHOW transaction_read_only`), the round trip after an abandoned call,
//!   and the goodbye each use whichever server connection PgBouncer gives them. A cancel
//!   request for an abandoned call goes through PgBouncer, which forwards it to the server
//!   connection running that call.
//! - Session state does not follow a client connection: a `SET` in an `after_create` hook
//!   applies to one server connection, and the next transaction may run on another (where
//!   another client's `SET` may be in force); a reset in `after_return` (`DISCARD ALL`,
//!   `RESET ALL`) resets whichever server connection it lands on. Put such settings on the
//!   role or the database (`ALTER ROLE app SET statement_timeout = '5s'`), or use `SET LOCAL`
//!   inside a transaction. Advisory locks, `LISTEN`, temporary tables and `WITH HOLD` cursors
//!   belong to session pooling.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use gracepool_postgres::tokio_postgres::types::Type;
//! use gracepool_postgres::{Manager, Pool, Pooler};
//! use gracepool_tokio::TokioRuntime;
//!
//! // PgBouncer with pool_mode = transaction, on its usual port.
//! let manager = Manager::from_conn_str("host=pgbouncer.internal port=6432 user=app dbname=app")?
//!     .pooler(Pooler::Transaction);
//! let pool: Pool = Pool::builder(manager).runtime(TokioRuntime::current()).build()?;
//!
//! let mut conn = pool.get().await?;
//! let rows = conn
//!     .query_typed("SELECT name FROM users WHERE id = $1", &[(&7i64, Type::INT8)])
//!     .await?;
//! let tx = conn.transaction().await?;
//! let stmt = tx.prepare_cached("UPDATE users SET seen = now() WHERE id = $1").await?;
//! tx.execute(&stmt, &[&7i64]).await?;
//! drop(stmt);
//! tx.commit().await?;
//! # let _ = rows; Ok(()) }
//! ```
//!
//! What PgBouncer's own operations look like to the pool (each is tested: `tests/pgbouncer.rs`):
//! `PAUSE` holds every query until `RESUME` — a checkout of an idle connection succeeds (the
//! default check makes no round trip) and its query waits; callers finding none idle wait out
//! their wait timeout; nothing is retired, and the held queries are answered after `RESUME`.
//! (With [`CheckMethod::Verified`] and a check timeout shorter than the pause, the checks time
//! out and their connections are replaced.) `RECONNECT` replaces PgBouncer's server
//! connections and is not seen by the pool. A restart of PgBouncer ends every client
//! connection: the callers in a query get `connection closed`, the pool replaces its
//! connections once PgBouncer listens again. `SHUTDOWN` ends them the same way; a pool
//! closing meanwhile still closes within its deadline, those connections counted as closed
//! without goodbye.
//!
//! # Transactions
//!
//! [`PgConnection::transaction`] and [`PgConnection::build_transaction`] work on a pooled
//! connection as on a bare client (the guard derefs mutably), and return a [`Transaction`] that
//! carries the connection's statement cache.
//!
//! ```no_run
//! # async fn f(pool: gracepool_postgres::Pool) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use gracepool_postgres::tokio_postgres::IsolationLevel;
//!
//! let mut conn = pool.get().await?;
//! let tx = conn.transaction().await?;
//! let insert = tx.prepare_cached("INSERT INTO visits (path) VALUES ($1)").await?;
//! tx.execute(&insert, &[&"/"]).await?;
//! tx.commit().await?;
//!
//! let tx = conn
//!     .build_transaction()
//!     .isolation_level(IsolationLevel::Serializable)
//!     .read_only(true)
//!     .start()
//!     .await?;
//! let visits: i64 = tx.query_one("SELECT count(*) FROM visits", &[]).await?.get(0);
//! tx.commit().await?;
//! # let _ = visits; Ok(()) }
//! ```
//!
//! A transaction dropped without `commit` rolls back, and that is cancel-safe: after a `?` that
//! returned early, or a request cancelled half-way (its future dropped by a timeout, or by a
//! web framework whose client went away), tokio-postgres queues `ROLLBACK` on the connection as
//! the transaction drops, before the guard can give the connection back, so the next caller's
//! first statement runs after it, outside any transaction. The same holds for a `transaction()` call cancelled
//! between its `BEGIN` and the answer. The tests cancel requests at random points inside
//! transactions, under load on a real server, and check that no checkout ever finds a
//! transaction open and that no half-done transaction commits.
//!
//! That covers the transactions these methods begin. A `BEGIN` written by hand
//! (`conn.batch_execute("BEGIN")`, or inside a larger batch) is not covered: a request that
//! fails or is cancelled before its `COMMIT` gives the connection back inside the transaction,
//! and the next caller's statements run in it — or fail, if it was aborted. When code like that
//! exists, roll back as connections come back, with an after-return hook
//! ([Per-connection setup](#per-connection-setup)).
//!
//! # Per-connection setup
//!
//! The pool's hooks — [`after_create`](gracepool::Builder::after_create),
//! [`before_checkout`](gracepool::Builder::before_checkout) and
//! [`after_return`](gracepool::Builder::after_return) on the builder — lend the hook the
//! [`PgConnection`] mutably, so anything a [`Client`] does works in them. The usual pair: set
//! each new session up, and clean up after each caller:
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use gracepool_postgres::{Manager, Pool};
//! use gracepool_tokio::TokioRuntime;
//!
//! let pool: Pool = Pool::builder(Manager::from_env()?)
//!     // Every new session, before anyone sees it: a statement timeout, the app's schema.
//!     .after_create(|conn, _metrics| {
//!         Box::pin(async move {
//!             conn.batch_execute("SET statement_timeout = '5s'; SET search_path = app, public")
//!                 .await?;
//!             Ok(())
//!         })
//!     })
//!     // Every connection given back: a transaction a caller left open (a hand-written
//!     // BEGIN) is rolled back before anyone else gets the connection. Without one,
//!     // PostgreSQL only warns.
//!     .after_return(|conn, _metrics| {
//!         Box::pin(async move {
//!             conn.batch_execute("ROLLBACK").await?;
//!             Ok(())
//!         })
//!     })
//!     .runtime(TokioRuntime::current())
//!     .build()?;
//! # let _ = pool; Ok(()) }
//! ```
//!
//! - `after_create` runs once per connection, where it was made, inside the create timeout.
//!   When it fails — a `SET` the server refuses — the new session is ended with its goodbye and
//!   never counts as created; the pool retries with backoff, and a caller sees
//!   [`gracepool::Error::Hook`] (with `fail_fast`) or its timeout's `last_error`, with the
//!   server's message.
//! - `before_checkout` runs before a connection that waited in the pool is handed out, after
//!   the check, bounded by the check timeout; a failure closes that connection and the caller
//!   gets another.
//! - `after_return` runs in the pool's actor (a guard's drop cannot wait for a round trip),
//!   bounded by the check timeout; the connection counts as in use until it is done, and a
//!   failure closes it. The cost: a round trip per return, and each return goes through the
//!   actor instead of straight back to the idle queue or the next waiter.
//!
//! Every hook failure is counted in the pool's `status().counters.hook_failed`. A reset that
//! runs `DISCARD ALL` (or `DEALLOCATE ALL`) drops the session's prepared statements: call
//! `conn.clear_statement_cache()` in the same hook. `RESET ALL` undoes the `SET`s of
//! `after_create`.
//!
//! # Configuration
//!
//! [`ConnectOptions`] reads connection settings as libpq does:
//!
//! - [`ConnectOptions::parse`] (behind [`Manager::from_conn_str`]): a key-value string
//!   (`host=db user=app sslmode=require`) or a URL
//!   (`postgresql://app@db/app?sslmode=verify-full&sslrootcert=/etc/app/root.crt`), with
//!   libpq's `sslmode` values and `sslrootcert`, which tokio-postgres does not read itself.
//! - [`ConnectOptions::from_env`] (behind [`Manager::from_env`]): `DATABASE_URL` when it is set,
//!   then libpq's variables for whatever it leaves out — `PGHOST`, `PGPORT`, `PGUSER`,
//!   `PGPASSWORD`, `PGDATABASE`, `PGSSLMODE`, `PGSSLROOTCERT`, `PGCONNECT_TIMEOUT` (seconds),
//!   `PGAPPNAME` — and `localhost` and the login name (`USER`) when nothing names a host or a
//!   user.
//! - `PgConfig` (feature `serde`): one configuration section, in any serde format, for the
//!   connection (a `url`, or the settings one by one), the manager (`check`,
//!   `statement_cache`) and the pool (`pool`, gracepool's [`PoolConfig`](gracepool::PoolConfig)).
//!   Unknown fields are errors; what the section leaves out comes from the environment.
//!
//! ```
//! use gracepool_postgres::{defaults, ConnectOptions};
//!
//! // What a deployment sets (read through a lookup here; `from_env` reads the process's).
//! let opts = ConnectOptions::from_lookup(|name| match name {
//!     "DATABASE_URL" => Some("postgresql://app@db.internal/app".into()),
//!     "PGPASSWORD" => Some("secret".into()),
//!     _ => None,
//! })?;
//! assert_eq!(opts.config().get_password(), Some(&b"secret"[..]));
//! assert_eq!(opts.config().get_connect_timeout(), Some(&defaults::CONNECT_TIMEOUT));
//! let manager = opts.manager()?;
//! # let _ = manager;
//! # Ok::<(), gracepool_postgres::ConfigError>(())
//! ```
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use gracepool_postgres::PgConfig;
//! use gracepool_tokio::TokioRuntime;
//!
//! // A section of the service's configuration file (JSON here; any serde format).
//! let section: PgConfig = serde_json::from_str(
//!     r#"{
//!         "url": "postgresql://app@db.internal/app",
//!         "application_name": "billing",
//!         "statement_cache": 200,
//!         "pool": { "max_size": 16, "wait_timeout": "5s" }
//!     }"#,
//! )?;
//! let pool = section.builder()?.runtime(TokioRuntime::current()).build()?;
//! # let _ = pool; Ok(()) }
//! ```
//!
//! Where the settings say nothing, the network [`defaults`] bound how long a dead peer — a
//! partition that drops packets, a host gone without a word — can hold a connection attempt
//! or a query:
//!
//! | setting | default | what it bounds |
//! |---|---|---|
//! | `connect_timeout` | 10 s | each host's TCP connect into a silent network (TLS and authentication are bounded by the pool's create timeout); tokio-postgres sets none |
//! | `keepalives_idle`, `keepalives_interval`, `keepalives_retries` | 30 s, 10 s, 3 | a connection with nothing in flight — idle, or waiting for an answer — to a peer that is gone: the kernel ends it after about a minute (30 s + 3 × 10 s); tokio-postgres starts probing after 2 hours |
//! | `tcp_user_timeout` (Linux) | 60 s | data sent and never acknowledged, where keepalives do not probe |
//!
//! The same key in a connection string overrides each. [`Manager::new`] takes a
//! `tokio_postgres::Config` as it is, without these defaults. On top of them, the pool's
//! create timeout (30 s by default) bounds a whole creation, and a query on a live server is
//! bounded only by what the session sets (`statement_timeout`).
//!
//! # TLS
//!
//! With the `rustls` feature, `ConnectOptions::manager_rustls` makes a manager that encrypts
//! as the settings' `sslmode` says, with `RustlsConnect`:
//!
//! | `sslmode` | encrypted | the server's certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `allow`, `prefer` (libpq's default) | when the server offers TLS | not checked |
//! | `require` | always | not checked; checked as `verify-ca` when `sslrootcert` is given |
//! | `verify-ca` | always | chains to `sslrootcert` |
//! | `verify-full` | always | chains to `sslrootcert` and is valid for the host name |
//!
//! `verify-ca` and `verify-full` need `sslrootcert`. When `sslmode` requires TLS, a server that
//! does not offer it is refused: the connection never goes on in plaintext. A certificate that
//! does not verify is a [permanent error](#errors).
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use gracepool_postgres::{ConnectOptions, Pool, RustlsConnect};
//! use gracepool_tokio::TokioRuntime;
//!
//! let manager = ConnectOptions::parse(
//!     "postgresql://app@db.internal/app?sslmode=verify-full&sslrootcert=/etc/app/root.crt",
//! )?
//! .manager_rustls()?;
//! let pool: Pool<RustlsConnect> = Pool::builder(manager)
//!     .runtime(TokioRuntime::current())
//!     .build()?;
//! # let _ = pool; Ok(()) }
//! ```
//!
//! The managers without TLS — [`Manager::from_conn_str`], [`Manager::from_env`],
//! [`ConnectOptions::manager`] — refuse settings with `sslmode` `require`, `verify-ca` or
//! `verify-full` ([`ConfigError::TlsRequired`]) rather than connect in plaintext; with `prefer`
//! they connect in plaintext without trying TLS (libpq would try it first). Their pool type is
//! `Pool` (`Pool<NoTls>`). [`Manager::with_tls`] takes a connector of your own: a
//! `RustlsConnect` built by hand (its docs say what is checked, which crypto provider it uses,
//! and how channel binding works), or any other [`MakeTlsConnect`] tokio-postgres accepts, such
//! as `postgres-native-tls`'s. The pool type then names it: `Pool<RustlsConnect>`.
//!
//! # Errors
//!
//! A creation error is *permanent* when retrying cannot fix it, as [`is_permanent`] judges it
//! for the pool: every caller waiting at that moment gets [`gracepool::Error::Permanent`] at
//! once, with the server's error inside, instead of waiting out its wait timeout; the pool
//! still retries with backoff for later callers (the password may be fixed meanwhile). Any
//! other creation error is *transient*: the pool retries with backoff while callers wait, and a
//! caller whose wait runs out gets [`gracepool::Error::Timeout`] with the last error as its
//! `last_error`.
//!
//! | | SQLSTATE, or cause |
//! |---|---|
//! | permanent | class `28` (`28P01` wrong password, `28000` no `pg_hba.conf` entry or a role that may not log in); `3D000` no such database; `42501` no `CONNECT` privilege; a server certificate that does not verify; settings the client cannot use |
//! | transient | connection refused, reset or timed out; `53300` too many connections; `57P03` the server is starting up or shutting down; class `08` connection exceptions; any other server error |
//!
//! ```no_run
//! # async fn f(pool: gracepool_postgres::Pool) {
//! match pool.get().await {
//!     Ok(conn) => drop(conn),
//!     // Told at once: a wrong password, a missing database. Say so and stop retrying here.
//!     Err(gracepool::Error::Permanent(e)) => {
//!         eprintln!("PostgreSQL refused us ({:?}): {e}", e.code().map(|c| c.code()));
//!     }
//!     // The server was unreachable, full or restarting for the whole wait.
//!     Err(e) => eprintln!("no connection: {e}"),
//! }
//! # }
//! ```
//!
//! Errors of queries on a connection are the caller's, as on a bare client; the pool looks
//! only at whether the connection is closed.
//!
//! # Features
//!
//! - `rustls`: TLS on rustls, `RustlsConnect` and `ConnectOptions::manager_rustls`.
//! - `serde`: `PgConfig`.
//! - `tracing`: the warning when a driver ends outside a close, and gracepool's own events.
//!
//! # Coming from deadpool-postgres
//!
//! Line by line, deadpool-postgres 0.14 (on deadpool 0.13) on the left. The pool's own knobs
//! (timeouts, backoff, `fail_fast`) are in the gracepool guide's migration chapter.
//!
//! | deadpool-postgres | gracepool-postgres | notes |
//! |---|---|---|
//! | `Manager::new(pg_config, NoTls)` | [`Manager::new`]`(pg_config)` | With TLS: [`Manager::with_tls`]`(pg_config, tls)`. |
//! | `Manager::from_config(pg_config, NoTls, ManagerConfig { recycling_method })` | `Manager::new(pg_config).check_method(..)` | `recycling_method` is `ManagerConfig`'s one field. |
//! | `RecyclingMethod::Fast` | [`CheckMethod::Fast`] | The default in both: `is_closed`, no round trip. |
//! | `RecyclingMethod::Verified` | [`CheckMethod::Verified`] | Both send an empty query. |
//! | `RecyclingMethod::Clean` | `.before_checkout(..)` running deadpool's clean-up SQL (`CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES;`) | Not built in: a hook says what it costs where it runs. `before_checkout` runs it where deadpool does, as a connection is handed out; `.after_return(..)` runs it as the connection comes back, off the next caller's path. `RESET ALL` undoes `after_create`'s `SET`s. |
//! | `RecyclingMethod::Custom(sql)` | `.before_checkout(\|conn, _\| Box::pin(async move { conn.batch_execute(SQL).await?; Ok(()) }))` | Or in `.after_return(..)`, as above. |
//! | `deadpool_postgres::Config { .. }` | `PgConfig` (feature `serde`) | One serde section: a `url` or the settings one by one, `check`, `statement_cache`, and the pool's settings under `pool`. |
//! | `config.create_pool(Some(Runtime::Tokio1), NoTls)?` | `section.builder()?.runtime(TokioRuntime::current()).build()?` | Or `Pool::builder(section.manager()?)` to set more on the builder. |
//! | `Runtime::Tokio1` | `.runtime(TokioRuntime::current())` (gracepool-tokio) | Required: the pool's actor and the drivers run there. On actix: `ActixRuntime::current()`. |
//! | `Config` read from `PG__*` variables with the `config` crate | [`Manager::from_env`], or [`ConnectOptions::from_env`] | Reads libpq's own variables, `DATABASE_URL` then `PGHOST`, `PGUSER`, ... No extra crate. `PgConfig` also fills what a file leaves out from them. |
//! | `Pool::builder(manager).max_size(n).build()?` | `Pool::builder(manager).max_size(n).runtime(TokioRuntime::current()).build()?` | |
//! | `pool.get().await?` | `pool.get().await?` | A [`Pooled`]: derefs to [`PgConnection`], and through it to [`Client`], mutably too. |
//! | `pool.timeout_get(&Timeouts { wait, .. })` | `pool.get_timeout(wait)` | Only the wait is per call; the create and check timeouts are the builder's. |
//! | `Object::take(obj)` | `Pooled::detach(conn)` | A [`PgConnection`]; dropping it ends the session without Terminate (it aborts the driver). |
//! | `client.transaction().await?` | `conn.transaction().await?` | A [`Transaction`] with `prepare_cached`; dropped uncommitted, it rolls back. |
//! | `client.build_transaction()` | `conn.build_transaction()` | Isolation level, read-only, deferrable. |
//! | `client.prepare_cached(sql)`, `txn.prepare_cached(sql)` | the same | Bounded (100 per connection by default, least recently used out); deadpool's keeps every statement for the life of the connection. |
//! | `client.prepare_typed_cached(sql, types)` | the same | Also on [`Transaction`]. |
//! | `client.statement_cache.clear()` / `.size()` | `conn.clear_statement_cache()` / `conn.statement_cache_len()` | |
//! | `client.statement_cache.remove(sql, types)` | — | No removal of one statement: clear the connection's cache. |
//! | `pool.manager().statement_caches.clear()` | `pool.manager().clear_statement_caches()` | Idle and checked-out connections alike. |
//! | `pool.manager().statement_caches.remove(sql, types)` | — | Clear them all. |
//! | `.post_create(Hook::async_fn(\|client, metrics\| ..))` | `.after_create(\|conn, metrics\| Box::pin(async move { .. }))` | Bounded by the create timeout; a failure ends the new session. |
//! | `.pre_recycle(..)` | `.before_checkout(..)` | Runs after the manager's check, not before it. |
//! | `.post_recycle(..)` | `.before_checkout(..)` | |
//! | — | `.after_return(..)` | New: as a connection comes back (a rollback, a reset). |
//! | `PoolError::PostCreateHook(e)` | [`gracepool::Error::Hook`] | With `fail_fast`; otherwise the `last_error` of the caller's timeout. |
//! | `PoolError::Backend(e)` at once | [`gracepool::Error::Permanent`] at once; a transient error is retried | `.fail_fast(true)` hands every creation error over at once, as deadpool does. |
//! | `pool.status()`: `max_size`, `size`, `available`, `waiting` | `pool.status()`: `max_size`, `size`, `idle`, `in_use`, `waiters`, `state`, `counters` | |
//! | `pool.close()` | `pool.close().await` | deadpool's drops the idle connections, which aborts their drivers: no goodbye. Here every connection says it, and a `CloseReport` accounts for each. |
//!
//! From bb8-postgres: `PostgresConnectionManager::new(config, NoTls)` is `Manager::new(config)`;
//! its `is_valid` (an empty query on every checkout) is [`CheckMethod::Verified`]; it has no
//! statement cache, where [`PgConnection::prepare_cached`] saves a round trip per query; and
//! `pool.close().await` replaces dropping the last handle.
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

mod calls;
#[cfg(feature = "serde")]
mod file_config;
mod no_runtime;
mod options;
mod pooler;
mod statements;
#[cfg(feature = "rustls")]
mod tls;
mod transaction;

#[cfg(feature = "serde")]
pub use file_config::PgConfig;
pub use no_runtime::NoTokioRuntime;
pub use options::{defaults, ConfigError, ConnectOptions, SslMode};
pub use pooler::Pooler;
pub use statements::StatementCache;
#[cfg(feature = "rustls")]
pub use tls::{rustls, RustlsConnect, RustlsStream, RustlsTlsConnect, TlsError, Verify};
pub use tokio_postgres;
pub use tokio_postgres::NoTls;
pub use transaction::{Transaction, TransactionBuilder};

pub use calls::Retirements;
use calls::{Calls, Canceller, RetirementCounts};
use statements::Cache;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, SimpleQueryMessage, ToStatement};

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
    /// A round trip that also asks whether the server takes writes (`SHOW
    /// transaction_read_only`): a connection to a server that became read-only — a primary
    /// demoted by a failover, a standby — is closed instead of handed out, before any write
    /// fails on it. For pools that must reach the primary. `"read-write"` in a configuration
    /// file.
    #[cfg_attr(feature = "serde", serde(rename = "read-write"))]
    ReadWrite,
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
    query_timeout: Option<std::time::Duration>,
    retirements: Arc<RetirementCounts>,
    pooler: Pooler,
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
    /// feature and use `ConnectOptions::manager_rustls`.
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
            query_timeout: None,
            retirements: Arc::default(),
            pooler: Pooler::Session,
        }
    }

    /// Connections retired because of an error a caller got on them, by reason: lost
    /// (class 08, closed), the server shutting down (`57P01`–`57P03`), the server read-only
    /// (`25006`, which also refreshes the pool). Reach it through the pool:
    /// `pool.manager().retirements()`.
    pub fn retirements(&self) -> Retirements {
        self.retirements.snapshot()
    }

    /// Bounds every call made through a pooled connection's own methods (`query`,
    /// `execute`, `prepare`, ... — see [`PgConnection`]) by `limit`: a call still unanswered
    /// then is cancelled on the server (PostgreSQL's cancel request, through the connection's
    /// cancel token), fails with tokio-postgres' timeout error ("timeout waiting for
    /// server"), and its connection is retired when it comes back. The one bound for a server
    /// that stalls behind a healthy TCP connection, which no TCP setting can see. Off by
    /// default; set it above your slowest legitimate query (a server-side
    /// `statement_timeout`, set in an `after_create` hook, is the finer tool for slow
    /// queries on a live server).
    pub fn query_timeout(mut self, limit: impl Into<Option<std::time::Duration>>) -> Self {
        self.query_timeout = limit.into();
        self
    }

    /// Chooses how connections are checked before they are handed out again
    /// ([`CheckMethod::Fast`] by default).
    pub fn check_method(mut self, check: CheckMethod) -> Self {
        self.check = check;
        self
    }

    /// How many prepared statements each connection keeps for
    /// [`prepare_cached`](PgConnection::prepare_cached) ([`StatementCache::Bounded`] at 100
    /// by default). Behind a transaction pooler ([`Pooler::Transaction`]) the cache is off
    /// whatever this says.
    pub fn statement_cache(mut self, cache: StatementCache) -> Self {
        self.cache = cache;
        self
    }

    /// Says what is between the pool and PostgreSQL ([`Pooler::Session`] by default: the
    /// server itself, or PgBouncer in session pooling). With [`Pooler::Transaction`]
    /// (PgBouncer's transaction pooling) no call made through a pooled connection leaves a
    /// named statement to be found on another server connection: the statement cache is off,
    /// and outside a transaction the calls that would prepare one — `prepare`,
    /// `prepare_cached` and their typed forms, and the untyped `query`, `query_one`,
    /// `query_opt` and `execute` — fail at once with SQLSTATE `0A000` and a message naming
    /// the forms that work: `query_typed`, `execute_typed`, `simple_query`, `batch_execute`,
    /// and anything inside [`PgConnection::transaction`]. See the crate docs, "Behind
    /// PgBouncer".
    pub fn pooler(mut self, pooler: Pooler) -> Self {
        self.pooler = pooler;
        self
    }

    /// What is between the pool and PostgreSQL, as [`pooler`](Manager::pooler) set it.
    pub fn get_pooler(&self) -> Pooler {
        self.pooler
    }

    /// The statement cache each new connection gets: the one set, or none behind a
    /// transaction pooler.
    fn effective_cache(&self) -> StatementCache {
        match self.pooler {
            Pooler::Transaction => StatementCache::Disabled,
            _ => self.cache,
        }
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
            .field("statement_cache", &self.effective_cache())
            .field("pooler", &self.pooler)
            .field("query_timeout", &self.query_timeout)
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
    calls: Calls,
    /// Whether calls may prepare named statements outside a transaction (not behind a
    /// transaction pooler).
    named: bool,
}

/// Calls made through these methods of [`PgConnection`] (they shadow the [`Client`]'s of the
/// same name) are tracked: one whose future is dropped before its answer — a timeout, a
/// cancelled request — leaves its request on the connection, and the connection is then
/// retired as it comes back, never handed out again: its goodbye asks the server to stop the
/// call, then ends the session (the next caller never waits behind the abandoned request, nor
/// has its own query stopped by a cancel that arrived late). `Manager::retirements` counts
/// them as `abandoned`. With [`Manager::query_timeout`], each is bounded.
/// Calls through the client's other methods (`query_raw`, `copy_in`, ...: the client is
/// reached by `Deref` or [`client`](PgConnection::client)) are not tracked.
impl PgConnection {
    /// [`Client::prepare`], tracked.
    pub async fn prepare(&self, query: &str) -> Result<Statement, tokio_postgres::Error> {
        self.named_allowed().await?;
        self.calls
            .track(&self.client, self.client.prepare(query))
            .await
    }

    /// [`Client::prepare_typed`], tracked.
    pub async fn prepare_typed(
        &self,
        query: &str,
        parameter_types: &[Type],
    ) -> Result<Statement, tokio_postgres::Error> {
        self.named_allowed().await?;
        let call = self.client.prepare_typed(query, parameter_types);
        self.calls.track(&self.client, call).await
    }

    /// [`Client::query`], tracked.
    pub async fn query<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error>
    where
        T: ?Sized + ToStatement,
    {
        self.named_allowed().await?;
        let call = self.client.query(statement, params);
        self.calls.track(&self.client, call).await
    }

    /// [`Client::query_one`], tracked.
    pub async fn query_one<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, tokio_postgres::Error>
    where
        T: ?Sized + ToStatement,
    {
        self.named_allowed().await?;
        let call = self.client.query_one(statement, params);
        self.calls.track(&self.client, call).await
    }

    /// [`Client::query_opt`], tracked.
    pub async fn query_opt<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, tokio_postgres::Error>
    where
        T: ?Sized + ToStatement,
    {
        self.named_allowed().await?;
        let call = self.client.query_opt(statement, params);
        self.calls.track(&self.client, call).await
    }

    /// [`Client::query_typed`] (unnamed statements: the form for PgBouncer's transaction
    /// pooling), tracked.
    pub async fn query_typed(
        &self,
        query: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let call = self.client.query_typed(query, params);
        self.calls.track(&self.client, call).await
    }

    /// [`Client::query_typed_one`], tracked.
    pub async fn query_typed_one(
        &self,
        query: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Row, tokio_postgres::Error> {
        let call = self.client.query_typed_one(query, params);
        self.calls.track(&self.client, call).await
    }

    /// [`Client::query_typed_opt`], tracked.
    pub async fn query_typed_opt(
        &self,
        query: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        let call = self.client.query_typed_opt(query, params);
        self.calls.track(&self.client, call).await
    }

    /// [`Client::execute`], tracked.
    pub async fn execute<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error>
    where
        T: ?Sized + ToStatement,
    {
        self.named_allowed().await?;
        let call = self.client.execute(statement, params);
        self.calls.track(&self.client, call).await
    }

    /// [`Client::execute_typed`], tracked.
    pub async fn execute_typed(
        &self,
        query: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<u64, tokio_postgres::Error> {
        let call = self.client.execute_typed(query, params);
        self.calls.track(&self.client, call).await
    }

    /// [`Client::simple_query`], tracked.
    pub async fn simple_query(
        &self,
        query: &str,
    ) -> Result<Vec<SimpleQueryMessage>, tokio_postgres::Error> {
        self.calls
            .track(&self.client, self.client.simple_query(query))
            .await
    }

    /// [`Client::batch_execute`], tracked.
    pub async fn batch_execute(&self, query: &str) -> Result<(), tokio_postgres::Error> {
        self.calls
            .track(&self.client, self.client.batch_execute(query))
            .await
    }

    /// Behind a transaction pooler, the refusal of a call that would prepare a named
    /// statement outside a transaction (see [`Manager::pooler`]); `Ok` otherwise, at no cost.
    async fn named_allowed(&self) -> Result<(), tokio_postgres::Error> {
        if self.named {
            return Ok(());
        }
        let refused = self
            .calls
            .track(&self.client, self.client.batch_execute(pooler::REFUSAL))
            .await;
        // The server raises the refusal (or the connection failed on the way).
        Err(refused.expect_err("the refusal's DO block always raises"))
    }

    /// Whether a call on this connection may have left its request behind (its future was
    /// dropped before the answer): the pool then checks it with a round trip before handing
    /// it out again.
    pub fn has_abandoned_call(&self) -> bool {
        self.calls.is_dirty()
    }

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
        // Refused by `prepare_typed` behind a transaction pooler.
        let stmt = self.prepare_typed(sql, types).await?;
        self.statements.insert(sql, types, stmt.clone());
        Ok(stmt)
    }

    /// Begins a transaction: [`Client::transaction`], with this connection's statement cache
    /// ([`Transaction::prepare_cached`]). Dropped without commit — a cancelled request
    /// included — it rolls back before the connection can be handed out again.
    pub async fn transaction(&mut self) -> Result<Transaction<'_>, tokio_postgres::Error> {
        self.build_transaction().start().await
    }

    /// A transaction with options (isolation level, read-only, deferrable):
    /// [`Client::build_transaction`], with this connection's statement cache.
    pub fn build_transaction(&mut self) -> TransactionBuilder<'_> {
        TransactionBuilder::new(
            self.client.build_transaction(),
            &self.statements,
            &self.calls,
        )
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
/// the settings or TLS are wrong on this side, or `create` ran outside a tokio runtime
/// ([`NoTokioRuntime`]). Transient, and retried: a refused or reset
/// connection, a timeout, `53300` too many connections, `57P03` cannot connect now (starting
/// up or shutting down), `08xxx`.
pub fn is_permanent(error: &tokio_postgres::Error) -> bool {
    if let Some(db) = error.as_db_error() {
        let code = db.code();
        return code.code().starts_with("28")
            || *code == SqlState::INVALID_CATALOG_NAME
            || *code == SqlState::INSUFFICIENT_PRIVILEGE;
    }
    // No tokio runtime where `create` runs: retrying there will not find one.
    if NoTokioRuntime::found_in(error) {
        return true;
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

/// Whether a creation error says the server has no room for another client: SQLSTATE
/// `53300` (`too_many_connections`: `max_connections` reached, or the slots left are reserved
/// for superusers), or a pooler in front that is full (PgBouncer's `no more connections
/// allowed`). The pool then backs off for longer and makes one attempt at a time (see
/// `gracepool::Manager::is_server_full`).
pub fn is_server_full(error: &tokio_postgres::Error) -> bool {
    if let Some(db) = error.as_db_error() {
        return *db.code() == SqlState::TOO_MANY_CONNECTIONS
            || db.message().contains("no more connections allowed");
    }
    false
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
        let statements = Cache::new(self.effective_cache(), self.generation.clone());
        let named = self.pooler != Pooler::Transaction;
        // Only calls past the per-call timeout are cancelled from the caller's task.
        let cancel: Option<Canceller> = self.query_timeout.map(|_| {
            let tls = self.tls.clone();
            Arc::new(move |token: tokio_postgres::CancelToken| {
                // Sent from the caller's task, on its tokio runtime; none there (a future
                // dropped by a runtime teardown), none sent: the round trip before the next
                // checkout still waits for the call's answer, or retires the connection.
                let runtime = tokio::runtime::Handle::try_current().ok()?;
                let tls = tls.clone();
                Some(runtime.spawn(async move {
                    let _ = token.cancel_query(tls).await;
                }))
            }) as Canceller
        });
        let calls = Calls::new(self.query_timeout, cancel, self.retirements.clone());
        let config = self.config.clone();
        async move {
            // The socket and the driver need tokio's reactor: outside a tokio runtime,
            // connecting would panic. A typed error instead, which the pool takes as
            // permanent.
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return Err(NoTokioRuntime::as_error(&config).await);
            };
            let (client, connection) = connecting.await?;
            let ending = Arc::new(AtomicBool::new(false));
            // On the runtime `create` is polled on: the pool's, or its caller's.
            let task = runtime.spawn(drive(connection, ending.clone()));
            Ok(PgConnection {
                driver: Driver { task, ending },
                client,
                statements,
                calls,
                named,
            })
        }
    }

    fn is_permanent(&self, error: &tokio_postgres::Error) -> bool {
        is_permanent(error)
    }

    fn is_server_full(&self, error: &tokio_postgres::Error) -> bool {
        is_server_full(error)
    }

    fn check(
        &self,
        conn: &mut PgConnection,
        _metrics: &gracepool::Metrics,
    ) -> impl Future<Output = Result<(), Unhealthy<tokio_postgres::Error>>> + Send {
        let check = self.check;
        let conn = &*conn;
        let tls = self.tls.clone();
        async move {
            if conn.client.is_closed() || conn.calls.unfit().is_some() {
                return Err(Unhealthy::Closed);
            }
            // A call abandoned on this connection left its request behind: its answer must
            // come before this connection is anyone's again.
            let dirty = conn.calls.is_dirty();
            if let Some(cancelling) = conn.calls.take_cancelling() {
                // The timed-out call's cancel request first, so that it cannot stop the next
                // caller's query instead.
                let _ = cancelling.await;
            }
            if conn.calls.take_cancel_wanted() {
                // A call was abandoned: ask the server to stop it (bounded, with this check, by
                // the pool's check timeout), then the round trip below makes sure it is done.
                let _ = conn.client.cancel_token().cancel_query(tls).await;
            }
            if check == CheckMethod::ReadWrite {
                let answer = conn
                    .client
                    .simple_query("SHOW transaction_read_only")
                    .await?;
                let read_only = answer.iter().any(|m| {
                    matches!(m, tokio_postgres::SimpleQueryMessage::Row(row) if row.get(0) == Some("on"))
                });
                conn.calls.clear_dirty();
                if read_only {
                    return Err(Unhealthy::Closed);
                }
            } else if check == CheckMethod::Verified || dirty {
                conn.client.simple_query("").await?;
                if dirty {
                    conn.calls.clear_dirty();
                }
            }
            Ok(())
        }
    }

    fn is_broken(&self, conn: &mut PgConnection) -> bool {
        conn.client.is_closed() || conn.calls.unfit().is_some()
    }

    /// A connection whose caller got a read-only error (`25006`: the server was demoted, as
    /// after a failover) or an admin shutdown (`57P01`: the server is going away, as in a
    /// switchover) is [`Unfit::Server`](gracepool::Unfit::Server): the pool is refreshed, so
    /// that no later write goes to the demoted server. One closed, or whose caller got a
    /// connection-level error (class 08) or `57P02`/`57P03`, is
    /// [`Unfit::Connection`](gracepool::Unfit::Connection).
    fn unfit(&self, conn: &mut PgConnection) -> Option<gracepool::Unfit> {
        match conn.calls.unfit() {
            Some(unfit) => Some(unfit),
            None if conn.client.is_closed() => Some(gracepool::Unfit::Connection),
            None => None,
        }
    }

    fn shutdown(
        &self,
        conn: PgConnection,
    ) -> impl Future<Output = Goodbye<tokio_postgres::Error>> + Send {
        let PgConnection {
            mut driver,
            client,
            statements,
            calls,
            named: _,
        } = conn;
        driver.ending.store(true, Ordering::Relaxed);
        let tls = self.tls.clone();
        async move {
            if client.is_closed() {
                // The driver has ended or is ending: nothing to wait for, nobody to greet.
                return Goodbye::Unsaid;
            }
            if calls.take_cancel_wanted() {
                // A call was abandoned on this connection: ask the server to stop it before
                // the session ends (bounded, with this goodbye, by the shutdown timeout).
                let _ = client.cancel_token().cancel_query(tls).await;
            }
            // A round trip first: its answer says the server is there and has answered every
            // request before it, so the Terminate that follows reaches a listening server. A
            // server that stopped answering never answers it: the pool's shutdown timeout
            // then ends this goodbye, and it counts as unconfirmed, not as said.
            if let Err(e) = client.simple_query("").await {
                // A cancel that arrived late stops this round trip instead: the server is
                // there, and the Terminate still goes out.
                let cancelled = e.code() == Some(&SqlState::QUERY_CANCELED);
                return if cancelled {
                    drop(client);
                    drop(statements);
                    goodbye(driver.finished().await)
                } else if e.is_closed() || e.as_db_error().is_some() {
                    Goodbye::Unsaid
                } else {
                    Goodbye::Failed(e)
                };
            }
            // Dropping the last client is the goodbye: the driver writes Terminate, closes the
            // socket and finishes. The cached statements go after it, so they ask nothing of
            // the server (ending the session deallocates them).
            drop(client);
            drop(statements);
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
