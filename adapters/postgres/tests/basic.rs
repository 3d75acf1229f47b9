//! The manager on a real PostgreSQL server: a checkout, a query, a close in which every
//! connection says goodbye, the statement cache, both health checks, bad credentials, and the
//! actix adapter. Each test starts its own server (or prints one SKIPPED line).

mod common;

use std::time::{Duration, Instant};

use common::{pool, tokio_rt, wait_for_disconnections, PgServer};
use gracepool::Manager as _;
use gracepool_postgres::{CheckMethod, Manager, Pool};
use gracepool_testkit::assert_accounted;
use gracepool_testkit::postgres::{PASSWORD, PASSWORD_USER};
use gracepool_tokio::TokioRuntime;

#[test]
fn get_query_close_says_goodbye_on_every_connection() {
    let Some(pg) = PgServer::start("basic::get_query_close_says_goodbye_on_every_connection")
    else {
        return;
    };
    let app = "basic";
    let rt = tokio_rt();
    let report = rt.block_on(async {
        let pool = pool(&pg, app, 4);
        // Three at once: three connections.
        let a = pool.get().await.expect("a connection");
        let b = pool.get().await.expect("a connection");
        let c = pool.get().await.expect("a connection");
        for conn in [&a, &b, &c] {
            let row = conn.query_one("SELECT 40 + 2", &[]).await.expect("a row");
            assert_eq!(row.get::<_, i32>(0), 42);
        }
        assert_eq!(pg.client_backends_of(app), 3);
        drop((a, b, c));
        pool.close().await
    });
    assert!(report.is_complete(), "{report:?}");
    assert!(!report.fallback, "{report:?}");
    assert_accounted(&report.counters);
    assert_eq!(report.counters.created, 3);
    assert_eq!(report.counters.closed_graceful, 3, "{report:?}");
    // What the server saw: three sessions, each ended by its client's Terminate.
    assert_eq!(wait_for_disconnections(&pg, app, 3), 3);
    assert_eq!(pg.unexpected_eofs(Some(app)), 0, "{}", pg.log_tail(30));
    assert_eq!(pg.goodbyes(app), 3);
    assert_eq!(
        pg.wait_for_backends_of(app, 0, std::time::Duration::from_secs(2)),
        0
    );
}

#[test]
fn a_connection_dropped_without_the_pool_leaves_without_goodbye() {
    // The other side of the test above, and the proof that the server's witness can tell:
    // a connection ended by `close` (the runtime-free path) is logged as an unexpected EOF.
    let Some(pg) =
        PgServer::start("basic::a_connection_dropped_without_the_pool_leaves_without_goodbye")
    else {
        return;
    };
    let app = "no_goodbye";
    let m = common::manager(&pg, app);
    // One thread: the driver cannot be mid-poll on another worker when `close` aborts it (a
    // driver caught running then may still get its Terminate out: harmless, but not this test).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let conn = m.create().await.expect("a connection");
        conn.simple_query("SELECT 1").await.expect("an answer");
        m.close(conn).expect("close never fails");
        // The runtime runs on: the aborted driver is dropped, and with it the socket.
        tokio::time::sleep(Duration::from_millis(50)).await;
    });
    assert_eq!(wait_for_disconnections(&pg, app, 1), 1);
    assert_eq!(pg.unexpected_eofs(Some(app)), 1, "{}", pg.log_tail(30));
    assert_eq!(pg.goodbyes(app), 0);
    // The graceful-close check the other tests use tells such a connection from a creation a
    // close abandoned: counted as made, it fails the check; as a half-made one, it passes.
    let made_without_goodbye = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pg.assert_goodbyes(app, 1, 0, 0)
    }));
    assert!(made_without_goodbye.is_err());
    assert_eq!(pg.assert_goodbyes(app, 0, 0, 1), 1);
}

#[test]
fn statements_are_prepared_once_per_connection() {
    let Some(pg) = PgServer::start("basic::statements_are_prepared_once_per_connection") else {
        return;
    };
    let rt = tokio_rt();
    rt.block_on(async {
        let pool = pool(&pg, "cache", 1);
        let conn = pool.get().await.unwrap();
        assert_eq!(prepared_on_server(&conn).await, 0);
        let first = conn.prepare_cached("SELECT $1::int + 1").await.unwrap();
        let again = conn.prepare_cached("SELECT $1::int + 1").await.unwrap();
        assert_eq!(conn.statement_cache_len(), 1);
        assert_eq!(
            prepared_on_server(&conn).await,
            1,
            "the second is the cached one"
        );
        let row = conn.query_one(&again, &[&41]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 42);
        drop((first, again, row));
        // A failed preparation is not cached.
        assert!(conn.prepare_cached("SELEKT nonsense").await.is_err());
        assert_eq!(conn.statement_cache_len(), 1);
        drop(conn);
        // The same connection comes back with its cache, and the server still has the one.
        let conn = pool.get().await.unwrap();
        assert_eq!(conn.statement_cache_len(), 1);
        conn.prepare_cached("SELECT $1::int + 1").await.unwrap();
        assert_eq!(prepared_on_server(&conn).await, 1);
        // Cleared: the server deallocates it.
        conn.clear_statement_cache();
        assert_eq!(conn.statement_cache_len(), 0);
        assert_eq!(prepared_on_server(&conn).await, 0);
        drop(conn);
        let report = pool.close().await;
        assert_eq!(report.counters.created, 1);
        assert_eq!(report.counters.closed_graceful, 1);
    });
    assert_eq!(wait_for_disconnections(&pg, "cache", 1), 1);
    assert_eq!(pg.unexpected_eofs(Some("cache")), 0);
}

/// Statements prepared on this connection, as the server counts them (asked with the simple
/// query protocol, which prepares nothing itself).
async fn prepared_on_server(conn: &gracepool_postgres::PgConnection) -> usize {
    use gracepool_postgres::tokio_postgres::SimpleQueryMessage;
    let answer = conn
        .simple_query("SELECT count(*) FROM pg_prepared_statements")
        .await
        .unwrap();
    answer
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(|v| v.parse().unwrap()),
            _ => None,
        })
        .expect("one row")
}

#[test]
fn checks_reject_a_connection_the_server_ended() {
    let Some(pg) = PgServer::start("basic::checks_reject_a_connection_the_server_ended") else {
        return;
    };
    let rt = tokio_rt();
    rt.block_on(async {
        for method in [CheckMethod::Fast, CheckMethod::Verified] {
            let m = common::manager(&pg, "checks").check_method(method);
            let mut conn = m.create().await.unwrap();
            m.check(
                &mut conn,
                &gracepool::Metrics::new(std::time::Instant::now(), std::time::Instant::now(), 1),
            )
            .await
            .expect("a live connection passes");
            assert!(!m.is_broken(&mut conn));
            // The previous round's backend may still be on its way out.
            tokio::task::block_in_place(|| {
                pg.wait_for_backends_of("checks", 1, Duration::from_secs(5))
            });
            assert_eq!(pg.terminate_all_backends(), 1);
            // The driver reads the server's FATAL and ends; the client reports closed.
            let until = std::time::Instant::now() + Duration::from_secs(5);
            while !conn.is_closed() && std::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            assert!(m.is_broken(&mut conn), "{method:?}");
            assert!(
                m.check(
                    &mut conn,
                    &gracepool::Metrics::new(
                        std::time::Instant::now(),
                        std::time::Instant::now(),
                        1
                    )
                )
                .await
                .is_err(),
                "{method:?}"
            );
            // A connection the server ended has no goodbye to say.
            assert!(matches!(m.shutdown(conn).await, gracepool::Goodbye::Unsaid));
        }
    });
}

#[test]
fn a_verified_check_makes_a_round_trip() {
    let Some(pg) = PgServer::start("basic::a_verified_check_makes_a_round_trip") else {
        return;
    };
    let rt = tokio_rt();
    rt.block_on(async {
        let m = common::manager(&pg, "verified").check_method(CheckMethod::Verified);
        let mut conn = m.create().await.unwrap();
        // Stop the backend: a verified check cannot answer; a fast one does not notice.
        let pid: i32 = conn
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        let stop = |sig: &str| {
            std::process::Command::new("kill")
                .args([sig, &pid.to_string()])
                .status()
                .unwrap()
        };
        stop("-STOP");
        let fast = common::manager(&pg, "verified");
        assert!(fast
            .check(
                &mut conn,
                &gracepool::Metrics::new(std::time::Instant::now(), std::time::Instant::now(), 1)
            )
            .await
            .is_ok());
        let verified = tokio::time::timeout(
            Duration::from_millis(300),
            m.check(
                &mut conn,
                &gracepool::Metrics::new(std::time::Instant::now(), std::time::Instant::now(), 1),
            ),
        )
        .await;
        stop("-CONT");
        assert!(
            verified.is_err(),
            "the round trip waited for the stopped backend"
        );
        m.check(
            &mut conn,
            &gracepool::Metrics::new(std::time::Instant::now(), std::time::Instant::now(), 1),
        )
        .await
        .expect("answers once the backend runs again");
        assert!(matches!(m.shutdown(conn).await, gracepool::Goodbye::Said));
    });
}

#[test]
fn bad_credentials_reach_the_caller() {
    let Some(pg) = PgServer::start("basic::bad_credentials_reach_the_caller") else {
        return;
    };
    let rt = tokio_rt();
    rt.block_on(async {
        // The right password works...
        let good =
            Manager::from_conn_str(&pg.conn_str_as(PASSWORD_USER, PASSWORD, "creds")).unwrap();
        let conn = good.create().await.expect("the right password is accepted");
        assert!(matches!(
            good.shutdown(conn).await,
            gracepool::Goodbye::Said
        ));
        // ... the wrong one reaches the caller of get() at once, with the server's error in
        // the chain: retrying cannot fix it (`is_permanent`), so nobody waits it out.
        let bad =
            || Manager::from_conn_str(&pg.conn_str_as(PASSWORD_USER, "wrong", "creds")).unwrap();
        // Long, so that "at once" (well within half of it) holds on a loaded machine too.
        let wait = Duration::from_secs(60);
        let pool: Pool = Pool::builder(bad())
            .wait_timeout(wait)
            .runtime(TokioRuntime::current())
            .build()
            .unwrap();
        let start = Instant::now();
        let err = pool.get().await.expect_err("a wrong password is refused");
        assert!(start.elapsed() < wait / 2, "at once: {:?}", start.elapsed());
        assert!(matches!(err, gracepool::Error::Permanent(_)), "{err:?}");
        assert_eq!(invalid_password(&err), 1, "{err}");
        let report = pool.close().await;
        assert_eq!(report.counters.created, 0);
        assert!(report.counters.create_failed >= 1, "{report:?}");
    });
}

/// How many errors in `err`'s source chain are the server's "invalid password".
fn invalid_password(err: &(dyn std::error::Error + 'static)) -> usize {
    use gracepool_postgres::tokio_postgres::error::SqlState;
    let mut found = 0;
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(db) = e
            .downcast_ref::<gracepool_postgres::tokio_postgres::Error>()
            .and_then(|e| e.as_db_error())
        {
            assert_eq!(db.code(), &SqlState::INVALID_PASSWORD, "{db}");
            found += 1;
        }
        next = e.source();
    }
    found
}

#[test]
fn runs_on_the_actix_adapter() {
    let Some(pg) = PgServer::start("basic::runs_on_the_actix_adapter") else {
        return;
    };
    let app = "actix";
    let report = actix_rt::System::new().block_on(async {
        let pool: Pool = Pool::builder(common::manager(&pg, app))
            .max_size(3)
            .runtime(gracepool_actix::ActixRuntime::current())
            .build()
            .unwrap();
        let tasks: Vec<_> = (0..6)
            .map(|i| {
                let pool = pool.clone();
                actix_rt::spawn(async move {
                    for _ in 0..20 {
                        let conn = pool.get().await.unwrap();
                        let stmt = conn.prepare_cached("SELECT $1::int").await.unwrap();
                        let row = conn.query_one(&stmt, &[&i]).await.unwrap();
                        assert_eq!(row.get::<_, i32>(0), i);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        pool.close().await
    });
    assert!(report.is_complete(), "{report:?}");
    let created = report.counters.created as usize;
    assert!((1..=3).contains(&created), "{report:?}");
    assert_eq!(report.counters.closed_graceful as usize, created);
    // The server agrees: every connection made said goodbye, a creation still under way as
    // the close began included.
    pg.assert_goodbyes(app, created, 0, 0);
}

/// `JoinHandle::abort`, which the synchronous close relies on, needs no runtime: not after
/// the runtime is gone, not from a thread outside it, not on a finished task.
#[test]
fn aborting_a_task_needs_no_runtime() {
    // After the runtime is gone.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pending = rt.spawn(std::future::pending::<()>());
    let finished = rt.spawn(async {});
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(5)).await });
    drop(rt);
    pending.abort();
    finished.abort();

    // From a plain thread while the runtime lives but is not being driven, and on a
    // multi-thread runtime from outside it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    struct Dropped(std::sync::mpsc::Sender<()>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }
    let guard = Dropped(tx);
    let task = rt.spawn(async move {
        let _guard = guard;
        std::future::pending::<()>().await
    });
    std::thread::spawn(move || task.abort()).join().unwrap();
    // The cancelled task's future is dropped when the runtime next runs (or is dropped).
    rt.block_on(tokio::task::yield_now());
    rx.recv_timeout(Duration::from_secs(1))
        .expect("the aborted task's future was dropped");

    let rt = tokio_rt();
    let task = rt.spawn(std::future::pending::<()>());
    std::thread::spawn(move || task.abort()).join().unwrap();
    drop(rt);
}

/// The synchronous close of a live connection, after its runtime is gone: no panic.
#[test]
fn close_after_the_runtime_is_gone() {
    let Some(pg) = PgServer::start("basic::close_after_the_runtime_is_gone") else {
        return;
    };
    let app = "late_close";
    let m = common::manager(&pg, app);
    let rt = tokio_rt();
    let conn = rt.block_on(async {
        let conn = m.create().await.unwrap();
        conn.simple_query("SELECT 1").await.unwrap();
        conn
    });
    drop(rt); // the driver task goes with the runtime, and closes the socket
    assert!(conn.is_closed());
    m.close(conn).expect("close never fails");
    assert_eq!(wait_for_disconnections(&pg, app, 1), 1);
    assert_eq!(
        pg.wait_for_backends_of(app, 0, std::time::Duration::from_secs(2)),
        0
    );
}
