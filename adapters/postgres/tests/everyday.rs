//! Everyday PostgreSQL code on a real server, as a deadpool-postgres user writes it:
//! transactions (and a request cancelled inside one), per-connection setup with the pool's
//! hooks, the statement cache's modes, settings from the environment and from one serde
//! section, creation errors split into permanent and transient, and a driver's end logged.
//! Each test starts its own server (or prints one SKIPPED line).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{tokio_rt, PgServer};
use gracepool::Error;
use gracepool_postgres::tokio_postgres::error::SqlState;
use gracepool_postgres::tokio_postgres::types::Type;
use gracepool_postgres::tokio_postgres::IsolationLevel;
use gracepool_postgres::{ConnectOptions, Manager, PgConfig, Pool, StatementCache};
use gracepool_testkit::postgres::{PASSWORD, PASSWORD_USER};
use gracepool_testkit::{assert_accounted, Rng};
use gracepool_tokio::TokioRuntime;

/// A statement's server-side name (in its `Debug`, the one place tokio-postgres shows it).
fn name(stmt: &gracepool_postgres::tokio_postgres::Statement) -> String {
    let shown = format!("{stmt:?}");
    shown
        .split("name: ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_default()
        .to_owned()
}

fn pool_of(manager: Manager, size: usize) -> Pool {
    Pool::builder(manager)
        .max_size(size)
        .runtime(TokioRuntime::current())
        .build()
        .expect("a valid configuration")
}

fn manager(pg: &PgServer, app: &str) -> Manager {
    Manager::from_conn_str(&pg.conn_str(app)).expect("the testkit's connection string parses")
}

#[test]
fn transactions_work_as_on_deadpool_postgres() {
    let Some(pg) = PgServer::start("everyday::transactions_work_as_on_deadpool_postgres") else {
        return;
    };
    pg.psql("CREATE TABLE items (id int PRIMARY KEY, name text)");
    let rt = tokio_rt();
    rt.block_on(async {
        let pool = pool_of(manager(&pg, "txn"), 2);
        let mut conn = pool.get().await.unwrap();
        // The line that did not compile before: `transaction()` on the pooled connection.
        let tx = conn.transaction().await.unwrap();
        let insert = tx
            .prepare_cached("INSERT INTO items VALUES ($1, $2)")
            .await
            .unwrap();
        tx.execute(&insert, &[&1i32, &"one"]).await.unwrap();
        tx.commit().await.unwrap();
        // The statement prepared inside the transaction is the connection's now.
        let again = conn
            .prepare_cached("INSERT INTO items VALUES ($1, $2)")
            .await
            .unwrap();
        assert_eq!(name(&again), name(&insert));

        // Dropped without commit: rolled back.
        let tx = conn.transaction().await.unwrap();
        tx.execute(&again, &[&2i32, &"two"]).await.unwrap();
        drop(tx);
        let n: i64 = conn
            .query_one("SELECT count(*) FROM items", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1);

        // A savepoint inside, rolled back alone.
        let mut tx = conn.transaction().await.unwrap();
        tx.execute("INSERT INTO items VALUES (3, 'three')", &[])
            .await
            .unwrap();
        let inner = tx.transaction().await.unwrap();
        inner
            .execute("INSERT INTO items VALUES (4, 'four')", &[])
            .await
            .unwrap();
        inner.rollback().await.unwrap();
        tx.commit().await.unwrap();

        // build_transaction, as deadpool-postgres users write it.
        let tx = conn
            .build_transaction()
            .isolation_level(IsolationLevel::Serializable)
            .read_only(true)
            .start()
            .await
            .unwrap();
        let level: String = tx
            .query_one("SHOW transaction_isolation", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(level, "serializable");
        let err = tx
            .execute("INSERT INTO items VALUES (5, 'five')", &[])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(&SqlState::READ_ONLY_SQL_TRANSACTION));
        drop(tx);
        let ids: Vec<i32> = conn
            .query("SELECT id FROM items ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(ids, [1, 3]);
        drop(conn);
        let report = pool.close().await;
        assert_accounted(&report.counters);
        assert_eq!(report.counters.closed_graceful, report.counters.created);
    });
}

/// Whether this session is inside a transaction block, by the server's own account: outside
/// one, a statement sent alone (the simple protocol) is its own transaction, so the
/// transaction's start (`now()`) is the statement's.
async fn in_transaction_block(conn: &gracepool_postgres::PgConnection) -> bool {
    use gracepool_postgres::tokio_postgres::SimpleQueryMessage;
    let messages = conn
        .simple_query("SELECT now() <> statement_timestamp()")
        .await
        .expect("the server answers");
    let row = messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or_default().to_owned()),
            _ => None,
        })
        .expect("one row");
    row == "t"
}

#[test]
fn a_request_cancelled_inside_a_transaction_never_hands_the_next_caller_an_open_one() {
    let Some(pg) = PgServer::start(
        "everyday::a_request_cancelled_inside_a_transaction_never_hands_the_next_caller_an_open_one",
    ) else {
        return;
    };
    pg.psql("CREATE TABLE hits (task int, n int)");
    let app = "cancelled";
    let rt = tokio_rt();
    let seed = Rng::from_clock().state();
    println!("seed {seed}");
    let (checkouts, cancelled, open_seen) = rt.block_on(async {
        let pool = pool_of(manager(&pg, app), 4);
        let tasks: Vec<_> = (0..16)
            .map(|task| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    let mut rng = Rng::new(seed ^ ((task as u64 + 1) * 0x9E37_79B9));
                    let (mut checkouts, mut cancelled, mut open_seen) = (0u32, 0u32, 0u32);
                    let until = Instant::now() + Duration::from_secs(3);
                    while Instant::now() < until {
                        let mut conn = pool.get().await.expect("a connection");
                        checkouts += 1;
                        // The next caller after a cancelled one: no transaction is open.
                        if in_transaction_block(&conn).await {
                            open_seen += 1;
                        }
                        // A request that begins a transaction, works, and is cancelled at a
                        // random point (its future dropped by the timeout), or commits.
                        let budget = Duration::from_micros(rng.below(3000));
                        let work = async {
                            let tx = conn.transaction().await?;
                            tx.execute("INSERT INTO hits VALUES ($1, 1)", &[&task])
                                .await?;
                            tx.query_one("SELECT pg_sleep(0.001)", &[]).await?;
                            tx.execute("INSERT INTO hits VALUES ($1, 2)", &[&task])
                                .await?;
                            tx.commit().await
                        };
                        if tokio::time::timeout(budget, work).await.is_err() {
                            cancelled += 1;
                        }
                        drop(conn);
                    }
                    (checkouts, cancelled, open_seen)
                })
            })
            .collect();
        let mut totals = (0, 0, 0);
        for t in tasks {
            let (a, b, c) = t.await.expect("a load task");
            totals = (totals.0 + a, totals.1 + b, totals.2 + c);
        }
        // Idle now: no session of the pool sits in a transaction, by the server's account.
        let idle_in_txn = pg.psql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}' \
             AND state LIKE 'idle in transaction%'"
        ));
        assert_eq!(idle_in_txn.trim(), "0", "seed {seed}");
        let report = pool.close().await;
        assert_accounted(&report.counters);
        totals
    });
    println!("{checkouts} checkouts, {cancelled} cancelled in a transaction, seed {seed}");
    assert!(
        cancelled >= 20,
        "too few cancellations to mean anything: {cancelled}"
    );
    assert!(checkouts > cancelled);
    assert_eq!(
        open_seen, 0,
        "a checkout saw an open transaction (seed {seed})"
    );
    // Every committed request wrote both rows; a cancelled one none (it rolled back).
    let unpaired = pg.psql(
        "SELECT (SELECT count(*) FROM hits WHERE n = 1) - (SELECT count(*) FROM hits WHERE n = 2)",
    );
    assert_eq!(
        unpaired.trim(),
        "0",
        "a half-done transaction committed (seed {seed})"
    );
}

#[test]
fn hooks_set_up_each_session_and_clean_up_what_a_caller_left() {
    let Some(pg) =
        PgServer::start("everyday::hooks_set_up_each_session_and_clean_up_what_a_caller_left")
    else {
        return;
    };
    pg.psql("CREATE SCHEMA app; CREATE TABLE app.settings (k text, v text); INSERT INTO app.settings VALUES ('mode', 'live')");
    let rt = tokio_rt();
    rt.block_on(async {
        let set_up = Arc::new(Mutex::new(0u32));
        // ANCHOR: setup_hooks
        let pool: Pool = Pool::builder(manager(&pg, "hooks"))
            .max_size(2)
            // Every new session: a statement timeout and the app's schema first.
            .after_create(|conn, _metrics| {
                Box::pin(async move {
                    conn.batch_execute(
                        "SET statement_timeout = '200ms'; SET search_path = app, public",
                    )
                    .await?;
                    Ok(())
                })
            })
            // Every connection given back: whatever transaction a caller left open is rolled
            // back before anyone else gets the connection.
            .after_return(|conn, _metrics| {
                Box::pin(async move {
                    conn.batch_execute("ROLLBACK").await?;
                    Ok(())
                })
            })
            .runtime(TokioRuntime::current())
            .build()?;
        // ANCHOR_END: setup_hooks
        let _ = &set_up;
        let conn = pool.get().await.unwrap();
        let timeout: String = conn
            .query_one("SHOW statement_timeout", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(timeout, "200ms");
        // The unqualified name resolves in the app's schema.
        let mode: String = conn
            .query_one("SELECT v FROM settings WHERE k = 'mode'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(mode, "live");
        let slow = conn.simple_query("SELECT pg_sleep(2)").await.unwrap_err();
        assert_eq!(slow.code(), Some(&SqlState::QUERY_CANCELED), "{slow}");
        // A hand-written BEGIN left open...
        conn.batch_execute("BEGIN; INSERT INTO settings VALUES ('left', 'open')")
            .await
            .unwrap();
        drop(conn);
        gracepool_testkit::until_status(&pool, "the after-return hook done", |s| s.idle == 1).await;
        // ...is rolled back by the hook: the next caller is outside any transaction and the
        // row never landed.
        let conn = pool.get().await.unwrap();
        assert!(!in_transaction_block(&conn).await);
        let left: i64 = conn
            .query_one("SELECT count(*) FROM settings WHERE k = 'left'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 0);
        drop(conn);
        let report = pool.close().await;
        assert_eq!(report.counters.hook_failed, 0);
        assert_accounted(&report.counters);
        Ok::<(), Box<dyn std::error::Error>>(())
    })
    .unwrap();

    // A setup that fails (a schema that does not exist is fine for search_path; a bad SET
    // is not): the caller learns why, and no connection is kept.
    rt.block_on(async {
        let pool: Pool = Pool::builder(manager(&pg, "badhook"))
            .fail_fast(true)
            .after_create(|conn, _metrics| {
                Box::pin(async move {
                    conn.batch_execute("SET statement_timeout = 'soon'").await?;
                    Ok(())
                })
            })
            .runtime(TokioRuntime::current())
            .build()
            .unwrap();
        let err = pool.get().await.map(drop).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Hook {
                    stage: gracepool::Stage::AfterCreate,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("statement_timeout"), "{err}");
        let report = pool.close().await;
        assert_eq!(report.counters.created, 0);
    });
    // The rejected sessions said goodbye.
    assert_eq!(
        pg.unexpected_eofs(Some("badhook")),
        0,
        "{}",
        pg.log_tail(20)
    );
}

/// The statements prepared on this session, by the server's account.
async fn on_server(conn: &gracepool_postgres::PgConnection) -> Vec<String> {
    conn.query(
        "SELECT statement FROM pg_prepared_statements WHERE from_sql = false \
         AND statement NOT LIKE '%pg_prepared_statements%' ORDER BY statement",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[test]
fn the_statement_cache_is_bounded_typed_optional_and_cleared_pool_wide() {
    let Some(pg) = PgServer::start(
        "everyday::the_statement_cache_is_bounded_typed_optional_and_cleared_pool_wide",
    ) else {
        return;
    };
    let rt = tokio_rt();
    rt.block_on(async {
        // Bounded: the least recently used goes first, and the server forgets it too.
        let pool = pool_of(
            manager(&pg, "lru").statement_cache(StatementCache::Bounded(2)),
            2,
        );
        let conn = pool.get().await.unwrap();
        let a = conn.prepare_cached("SELECT 1").await.unwrap();
        conn.prepare_cached("SELECT 2").await.unwrap();
        // `SELECT 1` is used again: `SELECT 2` is now the least recently used.
        assert_eq!(
            name(&conn.prepare_cached("SELECT 1").await.unwrap()),
            name(&a)
        );
        drop(a);
        conn.prepare_cached("SELECT 3").await.unwrap();
        assert_eq!(conn.statement_cache_len(), 2);
        assert_eq!(on_server(&conn).await, ["SELECT 1", "SELECT 3"]);

        // Typed: the same text with other parameter types is another statement.
        let int8 = conn
            .prepare_typed_cached("SELECT $1", &[Type::INT8])
            .await
            .unwrap();
        let text = conn
            .prepare_typed_cached("SELECT $1", &[Type::TEXT])
            .await
            .unwrap();
        assert_ne!(name(&int8), name(&text));
        assert_eq!(int8.params(), &[Type::INT8]);
        let again = conn
            .prepare_typed_cached("SELECT $1", &[Type::INT8])
            .await
            .unwrap();
        assert_eq!(name(&again), name(&int8));
        drop(again);
        drop((int8, text));

        // Cleared pool-wide: the connection held here and the idle one alike.
        let other = pool.get().await.unwrap();
        other.prepare_cached("SELECT 4").await.unwrap();
        drop(other);
        assert!(conn.statement_cache_len() > 0);
        pool.manager().clear_statement_caches();
        assert_eq!(conn.statement_cache_len(), 0);
        assert_eq!(on_server(&conn).await, Vec::<String>::new());
        drop(conn);
        let (x, y) = (pool.get().await.unwrap(), pool.get().await.unwrap());
        assert_eq!(x.statement_cache_len() + y.statement_cache_len(), 0);
        drop((x, y));
        pool.close().await;

        // Off: every call prepares, nothing named stays on the server.
        let pool = pool_of(
            manager(&pg, "nocache").statement_cache(StatementCache::Disabled),
            1,
        );
        let conn = pool.get().await.unwrap();
        let first = conn.prepare_cached("SELECT 5").await.unwrap();
        let second = conn.prepare_cached("SELECT 5").await.unwrap();
        assert_ne!(name(&first), name(&second));
        drop((first, second));
        assert_eq!(conn.statement_cache_len(), 0);
        assert_eq!(on_server(&conn).await, Vec::<String>::new());
        drop(conn);
        pool.close().await;
    });
}

#[test]
fn settings_come_from_the_environment_and_from_one_section() {
    let Some(pg) =
        PgServer::start("everyday::settings_come_from_the_environment_and_from_one_section")
    else {
        return;
    };
    let rt = tokio_rt();
    let port = pg.port().to_string();
    // The libpq variables, as a deployment sets them (read through a lookup, so the test does
    // not change its own process's environment).
    let env = |name: &str| -> Option<String> {
        match name {
            "PGHOST" => Some("127.0.0.1".into()),
            "PGPORT" => Some(port.clone()),
            "PGUSER" => Some(PASSWORD_USER.into()),
            "PGPASSWORD" => Some(PASSWORD.into()),
            "PGDATABASE" => Some("postgres".into()),
            "PGAPPNAME" => Some("from-env".into()),
            "PGSSLMODE" => Some("disable".into()),
            _ => None,
        }
    };
    rt.block_on(async {
        let manager = ConnectOptions::from_lookup(env).unwrap().manager().unwrap();
        let pool = pool_of(manager, 1);
        let conn = pool.get().await.unwrap();
        let (user, app): (String, String) = {
            let row = conn
                .query_one("SELECT current_user::text, current_setting('application_name')", &[])
                .await
                .unwrap();
            (row.get(0), row.get(1))
        };
        assert_eq!((user.as_str(), app.as_str()), (PASSWORD_USER, "from-env"));
        drop(conn);
        pool.close().await;

        // DATABASE_URL, with the password from PGPASSWORD.
        let url = format!("postgres://{PASSWORD_USER}@127.0.0.1:{}/postgres?application_name=from-url", pg.port());
        let manager = ConnectOptions::from_lookup(|name| match name {
            "DATABASE_URL" => Some(url.clone()),
            "PGPASSWORD" => Some(PASSWORD.into()),
            _ => None,
        })
        .unwrap()
        .manager()
        .unwrap();
        let pool = pool_of(manager, 1);
        let app: String = pool
            .get()
            .await
            .unwrap()
            .query_one("SELECT current_setting('application_name')", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(app, "from-url");
        pool.close().await;

        // One section for the connection and the pool.
        let section: PgConfig = serde_json::from_str(&format!(
            r#"{{
                "host": "127.0.0.1", "port": {}, "user": "{PASSWORD_USER}", "password": "{PASSWORD}",
                "dbname": "postgres", "application_name": "from-section", "statement_cache": 0,
                "pool": {{ "max_size": 3, "wait_timeout": "2s" }}
            }}"#,
            pg.port()
        ))
        .unwrap();
        let pool = section
            .builder()
            .unwrap()
            .runtime(TokioRuntime::current())
            .build()
            .unwrap();
        assert_eq!(pool.status().max_size, 3);
        let conn = pool.get().await.unwrap();
        let app: String = conn
            .query_one("SELECT current_setting('application_name')", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(app, "from-section");
        conn.prepare_cached("SELECT 1").await.unwrap();
        assert_eq!(conn.statement_cache_len(), 0, "statement_cache 0 is off");
        drop(conn);
        pool.close().await;
    });
}

/// The SQLSTATE of the first server error in `err`'s source chain.
fn sqlstate(err: &(dyn std::error::Error + 'static)) -> Option<SqlState> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(db) = e
            .downcast_ref::<gracepool_postgres::tokio_postgres::Error>()
            .and_then(|e| e.as_db_error())
        {
            return Some(db.code().clone());
        }
        next = e.source();
    }
    None
}

#[test]
fn permanent_creation_errors_fail_waiters_at_once_and_transient_ones_are_ridden_out() {
    let Some(mut pg) = PgServer::start(
        "everyday::permanent_creation_errors_fail_waiters_at_once_and_transient_ones_are_ridden_out",
    ) else {
        return;
    };
    pg.psql(&format!(
        "CREATE ROLE limited LOGIN CONNECTION LIMIT 1 PASSWORD '{PASSWORD}'"
    ));
    let rt = tokio_rt();
    rt.block_on(async {
        // Permanent: a wrong password, a database that does not exist. Eight callers wait;
        // every one is told at once, with the server's own error, long before the wait
        // timeout.
        let cases = [
            (
                pg.conn_str_as(PASSWORD_USER, "wrong", "perm"),
                SqlState::INVALID_PASSWORD,
            ),
            (
                pg.conn_str_as(PASSWORD_USER, PASSWORD, "perm")
                    .replace("dbname=postgres", "dbname=no_such_db"),
                SqlState::INVALID_CATALOG_NAME,
            ),
        ];
        for (conn_str, code) in cases {
            let pool: Pool = Pool::builder(Manager::from_conn_str(&conn_str).unwrap())
                .wait_timeout(Duration::from_secs(20))
                .runtime(TokioRuntime::current())
                .build()
                .unwrap();
            let started = Instant::now();
            let gets: Vec<_> = (0..8)
                .map(|_| {
                    let pool = pool.clone();
                    tokio::spawn(async move { pool.get().await.map(drop) })
                })
                .collect();
            for get in gets {
                let err = get.await.unwrap().unwrap_err();
                assert!(matches!(err, Error::Permanent(_)), "{err:?}");
                assert_eq!(sqlstate(&err), Some(code.clone()), "{err}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "told at once, not at the wait timeout: {:?}",
                started.elapsed()
            );
            pool.close().await;
        }

        // Transient: too many connections for the role (53300). The caller rides it out and
        // is served once the connection holding the role's one place goes.
        let limited = pg.conn_str_as("limited", PASSWORD, "limited");
        let held = Manager::from_conn_str(&limited).unwrap();
        let holder = pool_of(held, 1);
        let hold = holder.get().await.unwrap();
        let pool: Pool = Pool::builder(Manager::from_conn_str(&limited).unwrap())
            .wait_timeout(Duration::from_millis(600))
            .runtime(TokioRuntime::current())
            .build()
            .unwrap();
        let err = pool.get().await.map(drop).unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
        assert_eq!(
            sqlstate(&err),
            Some(SqlState::TOO_MANY_CONNECTIONS),
            "{err}"
        );
        drop(hold);
        holder.close().await;
        let served = pool.get_timeout(Duration::from_secs(10)).await;
        assert!(served.is_ok(), "served once the role has room: {served:?}");
        drop(served);
        pool.close().await;
    });
    // Transient: the server down (connection refused), then back: ridden out, no error.
    let pool_rt = tokio_rt();
    let pool = pool_rt.block_on(async { pool_of(manager(&pg, "refused"), 2) });
    pg.restart_fast();
    pool_rt.block_on(async {
        let conn = pool.get_timeout(Duration::from_secs(20)).await;
        assert!(conn.is_ok(), "{conn:?}");
        drop(conn);
        pool.close().await;
    });
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[test]
fn a_driver_that_ends_outside_a_close_is_logged_with_its_cause() {
    let Some(pg) =
        PgServer::start("everyday::a_driver_that_ends_outside_a_close_is_logged_with_its_cause")
    else {
        return;
    };
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let log = || String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    rt.block_on(async {
        let pool = pool_of(manager(&pg, "killed"), 2);
        drop(pool.get().await.unwrap());
        assert_eq!(pg.terminate_all_backends(), 1);
        let ok = gracepool_testkit::eventually(Duration::from_secs(5), || {
            log().contains("driver ended outside a close")
        })
        .await;
        assert!(ok, "no warning logged:\n{}", log());
        assert!(log().contains("57P01"), "the cause is named:\n{}", log());
        pool.close().await;
        // A graceful close logs no such warning.
        let before = log().matches("driver ended outside a close").count();
        let pool = pool_of(manager(&pg, "graceful"), 2);
        drop(pool.get().await.unwrap());
        pool.close().await;
        assert_eq!(
            log().matches("driver ended outside a close").count(),
            before,
            "{}",
            log()
        );
    });
}

/// The backend serving this connection.
async fn backend_pid(conn: &gracepool_postgres::PgConnection) -> i32 {
    conn.query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

#[test]
fn a_call_abandoned_on_a_connection_is_never_handed_out_as_healthy() {
    let Some(pg) = PgServer::start(
        "everyday::a_call_abandoned_on_a_connection_is_never_handed_out_as_healthy",
    ) else {
        return;
    };
    let rt = tokio_rt();
    rt.block_on(async {
        // A call that takes 5 s on the server, abandoned by its caller after 50 ms.
        let pool: Pool = Pool::builder(manager(&pg, "abandoned"))
            .max_size(1)
            .check_timeout(Duration::from_secs(3))
            .runtime(TokioRuntime::current())
            .build()
            .unwrap();
        let conn = pool.get().await.unwrap();
        let first = backend_pid(&conn).await;
        let slow = tokio::time::timeout(
            Duration::from_millis(50),
            conn.query("SELECT pg_sleep(5)", &[]),
        )
        .await;
        assert!(slow.is_err(), "the caller gave up");
        assert!(conn.has_abandoned_call());
        drop(conn);
        // The connection was retired as it came back: never handed out again, so the next
        // call neither waits behind the abandoned one nor has its own query stopped by a
        // cancel request that reaches the server late. Its goodbye asked the server to stop
        // the abandoned call.
        let started = Instant::now();
        let conn = pool.get().await.unwrap();
        let second = backend_pid(&conn).await;
        let took = started.elapsed();
        assert_ne!(first, second, "the connection with the abandoned call was handed out again");
        assert!(took < Duration::from_secs(2), "{took:?}: not behind the 5 s call");
        assert!(!conn.has_abandoned_call());
        assert_eq!(pool.manager().retirements().abandoned, 1);
        let mut running = String::new();
        for _ in 0..300 {
            running = pg.psql(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(5)' AND state = 'active'",
            );
            if running.trim() == "0" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(running.trim(), "0", "the server stopped the abandoned call");
        assert_eq!(pool.status().counters.check_failed, 0);
        drop(conn);
        pool.close().await;
    });

    // The per-call timeout: the call is cancelled on the server, the connection retired.
    rt.block_on(async {
        let pool: Pool = Pool::builder(
            manager(&pg, "query_timeout").query_timeout(Duration::from_millis(200)),
        )
        .max_size(1)
        .runtime(TokioRuntime::current())
        .build()
        .unwrap();
        let conn = pool.get().await.unwrap();
        let started = Instant::now();
        let err = conn
            .query("SELECT pg_sleep(30)", &[])
            .await
            .expect_err("past the per-call timeout");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert!(err.to_string().contains("timeout"), "{err}");
        drop(conn);
        // The server stopped the query (the cancel request), not just the client.
        let ok = gracepool_testkit::eventually(Duration::from_secs(5), || {
            pg.psql(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'",
            )
            .trim()
                == "0"
        })
        .await;
        assert!(ok, "the server still runs the query");
        let c = pool.status().counters;
        assert_eq!(c.closed_broken, 1, "retired on return: {c:?}");
        let conn = pool.get().await.unwrap();
        conn.query_one("SELECT 1", &[]).await.unwrap();
        drop(conn);
        pool.close().await;
    });
}

#[test]
fn a_goodbye_the_server_never_confirms_is_not_counted_as_said() {
    use gracepool_testkit::fault::{FaultProxy, Mode};
    let Some(pg) =
        PgServer::start("everyday::a_goodbye_the_server_never_confirms_is_not_counted_as_said")
    else {
        return;
    };
    let proxy = FaultProxy::start(pg.port()).expect("a proxy on 127.0.0.1");
    let conn_str = format!(
        "host=127.0.0.1 port={} user={} dbname=postgres application_name=unconfirmed",
        proxy.port(),
        gracepool_testkit::postgres::USER
    );
    let rt = tokio_rt();
    rt.block_on(async {
        let pool: Pool = Pool::builder(Manager::from_conn_str(&conn_str).unwrap())
            .max_size(4)
            .shutdown_timeout(Duration::from_millis(500))
            .close_deadline(Duration::from_secs(5))
            .runtime(TokioRuntime::current())
            .build()
            .unwrap();
        let held: Vec<_> = futures_lite::future::zip(
            futures_lite::future::zip(pool.get(), pool.get()),
            futures_lite::future::zip(pool.get(), pool.get()),
        )
        .await
        .into_iter_all();
        drop(held);
        // The server becomes unreachable: packets vanish, nothing is reset.
        proxy.set_mode(Mode::Blackhole);
        let started = Instant::now();
        let report = pool.close().await;
        let took = started.elapsed();
        let c = report.counters;
        assert_eq!(c.created, 4, "{c:?}");
        assert_eq!(c.closed_graceful, 0, "no goodbye reached the server: {c:?}");
        assert_eq!(c.closed_unconfirmed, 4, "{c:?}");
        assert_eq!(c.closed_sync, 4, "{c:?}");
        assert!(report.is_complete(), "{report:?}");
        assert!(
            took < Duration::from_secs(5),
            "within the shutdown timeout: {took:?}"
        );
        assert_accounted(&c);
    });
}

/// Flattens the four results of two zipped pairs.
trait AllOk<T> {
    fn into_iter_all(self) -> Vec<T>;
}

type Pair<T, E> = (Result<T, E>, Result<T, E>);

impl<T, E: std::fmt::Debug> AllOk<T> for (Pair<T, E>, Pair<T, E>) {
    fn into_iter_all(self) -> Vec<T> {
        let ((a, b), (c, d)) = self;
        vec![a.unwrap(), b.unwrap(), c.unwrap(), d.unwrap()]
    }
}

#[test]
fn a_read_write_check_and_a_read_only_error_keep_writes_off_a_demoted_server() {
    use gracepool_postgres::CheckMethod;
    let Some(pg) = PgServer::start(
        "everyday::a_read_write_check_and_a_read_only_error_keep_writes_off_a_demoted_server",
    ) else {
        return;
    };
    pg.psql("CREATE TABLE w (n int)");
    let rt = tokio_rt();
    rt.block_on(async {
        let pool: Pool = Pool::builder(manager(&pg, "rw").check_method(CheckMethod::ReadWrite))
            .max_size(2)
            .runtime(TokioRuntime::current())
            .build()
            .unwrap();
        let (a, b) = (pool.get().await.unwrap(), pool.get().await.unwrap());
        a.execute("INSERT INTO w VALUES (1)", &[]).await.unwrap();
        drop((a, b));
        // The server is demoted in place: read-only, nothing closed.
        pg.psql("ALTER SYSTEM SET default_transaction_read_only = on");
        pg.psql("SELECT pg_reload_conf()");
        let ok = gracepool_testkit::eventually(Duration::from_secs(5), || {
            pg.psql("SHOW default_transaction_read_only").trim() == "on"
        })
        .await;
        assert!(ok);
        // The idle connections fail the read-write check: neither is handed out; the caller
        // gets a new one (fresh from create, unchecked), whose write fails with 25006, and
        // that error refreshes the pool.
        let conn = pool.get().await.unwrap();
        let c = pool.status().counters;
        assert!(c.check_failed >= 1, "{c:?}");
        let err = conn
            .execute("INSERT INTO w VALUES (2)", &[])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(&SqlState::READ_ONLY_SQL_TRANSACTION));
        drop(conn);
        let c = pool.status().counters;
        assert_eq!(c.refreshes, 1, "{c:?}");
        assert_eq!(pool.manager().retirements().read_only, 1);
        pool.close().await;
    });
}
