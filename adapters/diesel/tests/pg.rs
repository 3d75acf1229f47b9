//! gracepool-diesel on a real PostgreSQL started for each test (the test kit's `PgServer`, on
//! 127.0.0.1 in a temporary directory, stopped by pid). Skipped with one printed line when
//! PostgreSQL is not installed; failed instead under `CI=true`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::prelude::*;
use diesel::sql_types::Integer;
use gracepool_diesel::{Config, Error, Manager, ManagerError, Pool};
use gracepool_testkit::postgres::PgServer;

/// Generous outer bound for anything that should happen "soon": never a timing assertion.
const SOON: Duration = Duration::from_secs(30);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn build(conn_str: String, size: usize, close_deadline: Duration) -> Pool {
    Pool::builder(Manager::new(Config::new(conn_str)))
        .max_size(size)
        .close_deadline(close_deadline)
        .runtime(gracepool_tokio::TokioRuntime::current())
        .build()
        .expect("a valid configuration")
}

async fn within_soon<T>(fut: impl std::future::Future<Output = T>, what: &str) -> T {
    futures_lite::future::or(fut, async {
        async_io::Timer::after(SOON).await;
        panic!("{what}")
    })
    .await
}

fn plus_one(c: &mut PgConnection, n: i32) -> QueryResult<i32> {
    diesel::select(diesel::dsl::sql::<Integer>(&format!("{n} + 1"))).get_result(c)
}

#[test]
fn queries_then_close_says_goodbye_on_every_connection() {
    let app = "diesel_goodbye";
    let Some(pg) = PgServer::start("diesel::queries_then_close_says_goodbye_on_every_connection")
    else {
        return;
    };
    runtime().block_on(async {
        let pool = build(pg.conn_str(app), 4, Duration::from_secs(10));
        let ok = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let (pool, ok) = (pool.clone(), ok.clone());
                tokio::spawn(async move {
                    for n in 0..20 {
                        let mut conn = pool.get().await.expect("a connection");
                        let got = conn.interact(move |c| plus_one(c, t * 100 + n)).await;
                        assert_eq!(got, Ok(Ok(t * 100 + n + 1)));
                        ok.fetch_add(1, Relaxed);
                    }
                })
            })
            .collect();
        for t in tasks {
            within_soon(t, "the queries finish").await.unwrap();
        }
        assert_eq!(ok.load(Relaxed), 160);
        let report = within_soon(pool.close(), "the close finishes").await;
        let c = report.counters;
        assert!(c.created > 0 && c.created <= 4, "{report:?}");
        assert_eq!(c.closed_graceful, c.created, "{report:?}");
        let stats = pool.manager().stats();
        assert_eq!(stats.opened, c.created);
        assert_eq!(stats.closed, c.created);
        // The server saw each session end with the client's Terminate.
        pg.assert_goodbyes(app, c.created as usize, 0, 0);
    });
}

#[test]
fn a_call_that_leaves_a_transaction_open_retires_its_connection() {
    let app = "diesel_tx";
    let Some(pg) =
        PgServer::start("diesel::a_call_that_leaves_a_transaction_open_retires_its_connection")
    else {
        return;
    };
    runtime().block_on(async {
        let pool = build(pg.conn_str(app), 1, Duration::from_secs(10));
        let mut conn = pool.get().await.unwrap();
        conn.interact(AnsiTransactionManager::begin_transaction)
            .await
            .unwrap()
            .unwrap();
        assert!(!conn.is_fit(), "a transaction left open makes it unfit");
        drop(conn);
        // The pool's only connection was closed, not handed out inside that transaction.
        let mut conn = within_soon(pool.get(), "a fresh connection").await.unwrap();
        let depth = conn
            .interact(|c| {
                AnsiTransactionManager::transaction_manager_status_mut(c)
                    .transaction_depth()
                    .map(|d| d.map(|d| d.get()))
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(depth, None);
        drop(conn);
        let report = pool.close().await;
        assert_eq!(report.counters.created, 2, "{report:?}");
        assert!(report.is_complete(), "{report:?}");
        pg.assert_goodbyes(app, 2, 0, 0);
    });
}

#[test]
fn failed_authentication_and_a_bad_option_are_permanent_typed_errors() {
    let Some(pg) = PgServer::start(
        "diesel::failed_authentication_and_a_bad_option_are_permanent_typed_errors",
    ) else {
        return;
    };
    runtime().block_on(async {
        for (conn_str, says) in [
            (
                pg.conn_str_as("nobody_here", "wrong", "diesel_err"),
                "authentication failed",
            ),
            (
                format!("{} no_such_option=1", pg.conn_str("diesel_err")),
                "invalid connection option",
            ),
        ] {
            let pool = build(conn_str, 2, Duration::from_secs(1));
            let err = within_soon(pool.get(), "the error reaches the caller")
                .await
                .expect_err("no connection can be made");
            match &err {
                gracepool::Error::Permanent(e) => match &**e {
                    ManagerError::Backend(Error::Connect(inner)) => {
                        assert!(inner.to_string().contains(says), "{inner}")
                    }
                    other => panic!("not a connection error: {other:?}"),
                },
                other => panic!("not a permanent error: {other:?}"),
            }
            pool.close().await;
        }
    });
}

#[test]
fn close_during_a_long_query_returns_at_the_deadline_and_the_thread_says_goodbye_after() {
    let app = "diesel_long";
    let Some(pg) = PgServer::start("diesel::close_during_a_long_query") else {
        return;
    };
    runtime().block_on(async {
        let pool = build(pg.conn_str(app), 2, Duration::from_millis(500));
        // A query far longer than the close deadline.
        let long = tokio::spawn({
            let pool = pool.clone();
            async move {
                let mut conn = pool.get().await.unwrap();
                conn.interact(|c| diesel::sql_query("SELECT pg_sleep(8)").execute(c))
                    .await
            }
        });
        within_soon(
            async {
                while pool.status().in_use == 0 {
                    async_io::Timer::after(Duration::from_millis(10)).await;
                }
            },
            "the long query starts",
        )
        .await;
        async_io::Timer::after(Duration::from_millis(200)).await;
        let report = within_soon(pool.close(), "the close returns").await;
        // The close did not wait for the query: it is still running.
        assert!(!long.is_finished(), "{report:?}");
        assert!(!report.is_complete(), "{report:?}");
        // The query runs to its end, then the connection's thread ends its session.
        let answer = within_soon(long, "the query ends").await.unwrap();
        assert_eq!(answer, Ok(Ok(1)));
        let threads = pool.manager().threads();
        assert!(threads.wait_closed(SOON), "{threads:?}");
        let stats = threads.stats();
        assert_eq!(stats.opened, stats.closed, "{stats:?}");
        pg.assert_goodbyes(app, stats.opened as usize, 0, 0);
    });
}
