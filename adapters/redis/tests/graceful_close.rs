//! A graceful close under load, checked from the server's side: every connection the pool
//! made leaves by QUIT (the server counts the calls, and logs no client that closed or reset
//! its socket instead), none is left connected, and the CloseReport says the same.

mod common;

use std::sync::Arc;
use std::time::Duration;

use gracepool::CloseReport;
use gracepool_redis::{redis, Manager, Pool};
use gracepool_smol::SmolRuntime;
use gracepool_testkit::redis::RedisServer;
use gracepool_tokio::TokioRuntime;

use common::{await_clients, worker, Load, Runners};

const WORKERS: usize = 16;
const SIZE: usize = 4;

/// The pool the tests under load use: redis-rs' response timeout (500 ms by default) raised
/// to 30 s, so that a machine loaded enough to answer late retires no connection (each such
/// timeout is a command failed and a connection replaced, which these tests count as the
/// kills' doing). A killed connection fails at once: its socket is closed.
fn pool(server: &RedisServer, runtime: impl gracepool::Runtime) -> Pool {
    let patient = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(Some(Duration::from_secs(30)));
    let manager = Manager::new(server.url())
        .expect("a valid URL")
        .with_connection_config(patient);
    Pool::builder(manager)
        .max_size(SIZE)
        .runtime(runtime)
        .build()
        .expect("a valid configuration")
}

/// Before the close: the load runs and the server sees exactly the pool's connections.
fn before_close(server: &RedisServer, pool: &Pool, load: &Load) {
    assert!(
        load.await_more(500, Duration::from_secs(10)),
        "the load did not run: {:?}",
        load.errors()
    );
    let created = pool.status().counters.created;
    assert_eq!(
        created, SIZE as u64,
        "16 workers on 4 connections use all 4"
    );
    assert_eq!(server.clients() as u64, created);
}

/// After the close: the report, the workers and the server agree.
fn after_close(server: &RedisServer, report: &CloseReport, load: &Load) {
    let c = report.counters;
    assert!(report.is_complete(), "{report:?}");
    assert!(!report.fallback, "the actor finished the close: {report:?}");
    assert_eq!(c.created, SIZE as u64, "{report:?}");
    assert_eq!(
        c.closed_graceful, c.created,
        "every connection said goodbye: {report:?}"
    );
    assert_eq!(c.closed_sync + c.close_failed + c.detached, 0, "{report:?}");
    assert_eq!(
        (load.get_errors(), load.cmd_errors()),
        (0, 0),
        "no request failed: {:?}",
        load.errors()
    );

    // The server's side.
    assert_eq!(
        server.command_calls("quit"),
        c.closed_graceful,
        "the server received one QUIT per graceful close"
    );
    assert_eq!(await_clients(server, 0), 0, "no client left on the server");
    let closed = server.log_lines("Client closed connection");
    let reset = server.log_lines("Reading from client");
    assert!(
        closed.is_empty() && reset.is_empty(),
        "no pool connection closed or reset its socket without QUIT:\n{closed:#?}\n{reset:#?}"
    );
    // Every answered INCR reached the server: nothing acknowledged was lost in the close.
    let hits = server.call(&["GET", "hits"]).text();
    assert_eq!(hits, load.ok().to_string());
}

#[test]
fn tokio_graceful_close_under_load() {
    let Some(server) = RedisServer::start("tokio_graceful_close_under_load") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pool = rt.block_on(async { pool(&server, TokioRuntime::current()) });
    let load = Load::new();
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| rt.spawn(worker(pool.clone(), load.clone())))
        .collect();
    before_close(&server, &pool, &load);
    let report = rt.block_on(async {
        let report = pool.close().await;
        for w in workers {
            w.await.expect("a worker ends when the pool is closed");
        }
        report
    });
    after_close(&server, &report, &load);
}

#[test]
fn smol_graceful_close_under_load() {
    let Some(server) = RedisServer::start("smol_graceful_close_under_load") else {
        return;
    };
    // An executor of the test's own, run by two threads until `stop` is closed.
    let ex = Arc::new(async_executor::Executor::new());
    let runners = Runners::start(&ex);
    let pool = pool(&server, SmolRuntime::from_executor(&ex));
    let load = Load::new();
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| ex.spawn(worker(pool.clone(), load.clone())))
        .collect();
    before_close(&server, &pool, &load);
    let report = async_io::block_on(async {
        let report = pool.close().await;
        for w in workers {
            w.await;
        }
        report
    });
    after_close(&server, &report, &load);
    runners.stop();
}

/// Connections the server has already dropped cannot say goodbye, and are not counted as if
/// they had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_server_killed_are_not_counted_graceful() {
    let test = "connections_the_server_killed_are_not_counted_graceful";
    let Some(server) = RedisServer::start(test) else {
        return;
    };
    let pool = pool(&server, TokioRuntime::current());
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut conn = pool.get().await.expect("a connection");
        let () = redis::cmd("PING").query_async(&mut *conn).await.unwrap();
        held.push(conn);
    }
    drop(held);
    assert_eq!(server.kill_clients(), 3);
    // Let the connections' driver tasks see the end of their sockets.
    tokio::time::sleep(Duration::from_millis(50)).await;

    let report = pool.close().await;
    let c = report.counters;
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(c.created, 3, "{report:?}");
    assert_eq!(
        c.closed_graceful, 0,
        "no goodbye reached a killed connection: {report:?}"
    );
    assert_eq!(c.closed_sync, 3, "{report:?}");
    assert_eq!(c.close_failed, 0, "{report:?}");
    assert_eq!(server.command_calls("quit"), 0);
}

/// Every client killed by the server under load: the pool replaces them at once and `get()`
/// never fails (commands in flight may). Then every idle connection killed while nothing is
/// in flight: no command fails at all, because no dead connection is handed out.
#[test]
fn tokio_clients_killed_under_load() {
    let Some(server) = RedisServer::start("tokio_clients_killed_under_load") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pool = rt.block_on(async { pool(&server, TokioRuntime::current()) });
    let load = Load::new();
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| rt.spawn(worker(pool.clone(), load.clone())))
        .collect();
    before_close(&server, &pool, &load);

    // Under load.
    let killed_at = std::time::Instant::now();
    assert_eq!(server.kill_clients(), SIZE);
    let answered = load.ok();
    assert!(
        load.await_more(1, Duration::from_secs(5)),
        "{:?}",
        load.errors()
    );
    let recovery = killed_at.elapsed();
    assert!(
        load.await_more(500, Duration::from_secs(10)),
        "{:?}",
        load.errors()
    );
    assert!(load.ok() > answered);
    // Answered again, and get() never failed: the behaviour. How soon is a figure for the
    // benchmarks (tens of milliseconds on an idle machine), not a bound for a test on a
    // loaded one: the outer limit is the 5 s wait above.
    assert!(
        recovery < Duration::from_secs(5),
        "answered again {recovery:?} after the kill"
    );
    assert_eq!(
        load.get_errors(),
        0,
        "get() never failed: {:?}",
        load.errors()
    );
    let in_flight = load.cmd_errors();
    println!("killed {SIZE} under load: answered again after {recovery:?}; {in_flight} commands failed in flight");

    // Nothing in flight: every connection idle in the pool when the server kills it.
    load.pause(WORKERS);
    assert_eq!(pool.status().idle, SIZE);
    let check_failed = pool.status().counters.check_failed;
    assert_eq!(server.kill_clients(), SIZE);
    load.resume();
    assert!(
        load.await_more(500, Duration::from_secs(10)),
        "{:?}",
        load.errors()
    );
    assert_eq!(
        load.cmd_errors(),
        in_flight,
        "no dead connection was handed out: {:?}",
        load.errors()
    );
    assert_eq!(
        load.get_errors(),
        0,
        "get() never failed: {:?}",
        load.errors()
    );
    let c = pool.status().counters;
    assert_eq!(
        c.created,
        3 * SIZE as u64,
        "each killed connection was replaced once: {c:?}"
    );
    // Caught by the PING on checkout (the core may retire some another way first).
    assert!(
        (1..=SIZE as u64).contains(&(c.check_failed - check_failed)),
        "killed idle connections failed their PING: {c:?}"
    );

    let report = rt.block_on(async {
        let report = pool.close().await;
        for w in workers {
            w.await.unwrap();
        }
        report
    });
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.counters.closed_graceful, SIZE as u64, "{report:?}");
    assert_eq!(await_clients(&server, 0), 0);
}

/// A server that refuses QUIT (here renamed away, as a server that dropped the deprecated
/// command would): no connection counts as graceful, each just closes its socket, and once a
/// refusal has come back the manager does not ask again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_refusing_quit_gets_no_goodbye_and_is_asked_once() {
    let test = "a_server_refusing_quit_gets_no_goodbye_and_is_asked_once";
    let Some(server) = RedisServer::start_with_args(test, &["--rename-command", "QUIT", ""]) else {
        return;
    };
    // Redis 7.0 also answers redis-rs' CLIENT SETINFO at connect with errors: count QUITs
    // refused as the growth of the error count across closes.
    let errors = || -> u64 {
        let n = server.info("stats", "total_error_replies");
        n.and_then(|n| n.parse().ok())
            .expect("INFO stats has total_error_replies")
    };
    let pool: Pool = Pool::builder(Manager::new(server.url()).expect("a valid URL"))
        .max_size(SIZE)
        .idle_timeout(Duration::from_millis(50))
        .maintenance_interval(Duration::from_millis(10))
        .runtime(TokioRuntime::current())
        .build()
        .expect("a valid configuration");

    // One connection, reaped as idle: its goodbye is the first QUIT, refused.
    drop(pool.get().await.expect("a connection"));
    let before = errors();
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while pool.status().size > 0 && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let c = pool.status().counters;
    assert_eq!(
        (c.created, c.closed_graceful, c.closed_sync),
        (1, 0, 1),
        "{c:?}"
    );
    assert_eq!(
        errors() - before,
        1,
        "the reaped connection's QUIT was refused"
    );

    // Three more, closed together: none asks again.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut conn = pool.get().await.expect("a connection");
        let () = redis::cmd("PING").query_async(&mut *conn).await.unwrap();
        held.push(conn);
    }
    drop(held);
    let before = errors();
    let report = pool.close().await;
    let c = report.counters;
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(c.created, 4, "{report:?}");
    assert_eq!(c.closed_graceful, 0, "{report:?}");
    assert_eq!(c.closed_sync, 4, "{report:?}");
    assert_eq!(c.close_failed, 0, "{report:?}");
    assert_eq!(errors(), before, "QUIT was not sent again");
    assert_eq!(await_clients(&server, 0), 0);
    assert_eq!(
        server.log_lines("Client closed connection").len(),
        4,
        "each of the four closed its socket:\n{}",
        server.log()
    );
}
