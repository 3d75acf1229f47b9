//! The runtime dropped while queries run, in a child process so that a panic or a stray print
//! is seen from outside. The parent starts PostgreSQL and runs this test binary again with
//! `GRACEPOOL_DIESEL_SCENARIO` and a connection string; the child runs queries on a pool of
//! 4, ends the pool's runtime mid-query, waits for the connection threads' last goodbyes, and
//! prints its counts. The parent asserts exit status 0, empty stderr, every connection closed
//! exactly once, and every session ended with the client's Terminate on the server's side.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::RunQueryDsl;
use gracepool_diesel::{Config, Manager, Pool};
use gracepool_testkit::postgres::PgServer;

const SCENARIO: &str = "GRACEPOOL_DIESEL_SCENARIO";
const CONN: &str = "GRACEPOOL_DIESEL_CONN";
const SOON: Duration = Duration::from_secs(30);

#[test]
fn tokio_runtime_dropped_mid_query() {
    let app = "diesel_teardown";
    let Some(pg) = PgServer::start("diesel::tokio_runtime_dropped_mid_query") else {
        return;
    };
    let child = gracepool_testkit::child::run_child(
        "tokio_runtime_dropped_mid_query",
        &[
            (SCENARIO, "tokio_runtime_dropped_mid_query".to_owned()),
            (CONN, pg.conn_str(app)),
        ],
    );
    let (field, line) = (|key| child.field(key), &child.line);
    assert!(field("created") > 0, "{line}");
    assert!(
        field("in_use") > 0,
        "queries were in flight at the end: {line}"
    );
    assert_eq!(
        field("created"),
        field("graceful") + field("sync") + field("failed") + field("detached"),
        "every connection reached one end: {line}"
    );
    assert_eq!(field("open"), 0, "{line}");
    assert_eq!(field("failed"), 0, "{line}");
    assert_eq!(field("opened"), field("created"), "{line}");
    assert_eq!(
        field("opened"),
        field("closed"),
        "each thread closed its connection: {line}"
    );
    assert_eq!(field("threads"), 0, "every thread ended: {line}");
    assert!(field("ok") > 0, "{line}");
    // The server's side: each session ended with the client's Terminate, none cut off.
    pg.assert_goodbyes(app, field("created") as usize, 0, 0);
}

/// The child's entry point: does nothing unless started by the test above.
#[test]
fn child() {
    let Ok(_scenario) = std::env::var(SCENARIO) else {
        return;
    };
    let conn_str = std::env::var(CONN).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pool: Pool = rt.block_on(async {
        Pool::builder(Manager::new(Config::new(conn_str)))
            .max_size(4)
            .runtime(gracepool_tokio::TokioRuntime::current())
            .build()
            .expect("a valid configuration")
    });
    let ok = Arc::new(AtomicU64::new(0));
    for _ in 0..8 {
        let (pool, ok) = (pool.clone(), ok.clone());
        rt.spawn(async move {
            loop {
                let Ok(mut conn) = pool.get().await else {
                    return;
                };
                let done = conn
                    .interact(|c| diesel::sql_query("SELECT pg_sleep(0.005)").execute(c))
                    .await;
                match done {
                    Ok(Ok(_)) => ok.fetch_add(1, Relaxed),
                    other => panic!("a query failed: {other:?}"),
                };
            }
        });
    }
    let until = Instant::now() + SOON;
    while ok.load(Relaxed) < 100 {
        assert!(Instant::now() < until, "the queries are stuck");
        std::thread::sleep(Duration::from_millis(5));
    }
    let in_use = pool.status().in_use;
    drop(rt);
    let threads = pool.manager().threads();
    assert!(threads.wait_closed(SOON), "{threads:?}");
    let s = threads.stats();
    let c = pool.status().counters;
    drop(pool);
    println!(
        "created={} graceful={} sync={} failed={} detached={} open={} in_use={in_use} \
         opened={} closed={} late={} threads={} ok={}",
        c.created,
        c.closed_graceful,
        c.closed_sync,
        c.close_failed,
        c.detached,
        c.open(),
        s.opened,
        s.closed,
        s.closed_late,
        s.threads,
        ok.load(Relaxed)
    );
}
