//! The runtime dropped while calls run, and a graceful close under load, each in a child
//! process so that a panic or a stray print is seen from outside. The child is this test
//! binary again, started with `GRACEPOOL_SQLITE_SCENARIO` and a database path; it runs
//! writers, ends the pool's runtime (or closes the pool) mid-call, waits for the connection
//! threads' last goodbyes, and prints its counts. The parent asserts exit status 0, empty
//! stderr, every connection closed exactly once, and the write-ahead log checkpointed.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use gracepool_sqlite::{Config, Manager, Pool, Threads};

use common::{temp_dir, wal_len, SOON};

const SCENARIO: &str = "GRACEPOOL_SQLITE_SCENARIO";
const DB: &str = "GRACEPOOL_SQLITE_DB";
const WORKERS: usize = 8;
const SIZE: usize = 4;

fn run_child(scenario: &str) {
    let dir = temp_dir();
    let db = dir.path().join("teardown.db");
    let child = gracepool_testkit::child::run_child(
        scenario,
        &[
            (SCENARIO, scenario.to_owned()),
            (DB, db.to_string_lossy().into_owned()),
        ],
    );
    let (field, line) = (|key| child.field(key), &child.line);
    assert!(field("created") > 0, "{scenario}: {line}");
    assert!(
        field("in_use") > 0,
        "{scenario}: calls were in flight at the end: {line}"
    );
    assert_eq!(
        field("created"),
        field("graceful") + field("sync") + field("failed") + field("detached"),
        "{scenario}: every connection reached one end: {line}"
    );
    assert_eq!(field("open"), 0, "{scenario}: {line}");
    assert_eq!(field("failed"), 0, "{scenario}: {line}");
    assert_eq!(
        field("opened"),
        field("closed"),
        "{scenario}: each thread closed its connection: {line}"
    );
    assert_eq!(field("opened"), field("created"), "{scenario}: {line}");
    assert_eq!(
        field("threads"),
        0,
        "{scenario}: every thread ended: {line}"
    );
    assert_eq!(
        field("wal"),
        0,
        "{scenario}: the write-ahead log is checkpointed: {line}"
    );
    assert!(field("ok") > 0, "{scenario}: {line}");
    // What the callers were told was written is in the file.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert!(
        rows as u64 >= field("ok"),
        "{scenario}: {rows} rows, {line}"
    );
}

/// The child's entry point: does nothing unless started by `run_child`.
#[test]
fn child() {
    let Ok(scenario) = std::env::var(SCENARIO) else {
        return;
    };
    let db = std::env::var(DB).unwrap();
    let db = Path::new(&db);
    let setup = rusqlite::Connection::open(db).unwrap();
    setup.execute_batch("CREATE TABLE t (w, n)").unwrap();
    drop(setup);
    let ok = Arc::new(AtomicU64::new(0));
    let (pool, in_use) = match scenario.as_str() {
        "tokio_runtime_dropped_mid_call" => tokio_teardown(db, &ok),
        "smol_executor_dropped_mid_call" => smol_teardown(db, &ok),
        "tokio_graceful_close_under_load" => tokio_close(db, &ok),
        other => panic!("unknown scenario {other}"),
    };
    let threads: Threads = pool.manager().threads();
    assert!(threads.wait_closed(SOON), "{threads:?}");
    let s = threads.stats();
    let c = pool.status().counters;
    drop(pool);
    println!(
        "created={} graceful={} sync={} failed={} detached={} open={} in_use={in_use} \
         opened={} closed={} late={} threads={} wal={} ok={}",
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
        wal_len(db).unwrap_or(0),
        ok.load(Relaxed)
    );
}

fn build(db: &Path, runtime: impl gracepool::Runtime) -> Pool {
    Pool::builder(Manager::new(Config::new(db)))
        .max_size(SIZE)
        .runtime(runtime)
        .build()
        .expect("a valid configuration")
}

/// Writes until the pool refuses; each call takes a few milliseconds, so that calls are in
/// flight when the runtime goes.
async fn worker(pool: Pool, w: i64, ok: Arc<AtomicU64>) {
    for n in 0.. {
        let Ok(mut conn) = pool.get().await else {
            return;
        };
        let written = conn
            .interact(move |c: &mut rusqlite::Connection| {
                std::thread::sleep(Duration::from_millis(2));
                c.execute("INSERT INTO t VALUES (?1, ?2)", (w, n))
            })
            .await;
        match written {
            Ok(Ok(_)) => ok.fetch_add(1, Relaxed),
            other => panic!("a write failed: {other:?}"),
        };
    }
}

fn await_writes(ok: &AtomicU64, at_least: u64) {
    let until = std::time::Instant::now() + SOON;
    while ok.load(Relaxed) < at_least {
        assert!(std::time::Instant::now() < until, "the writers are stuck");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn tokio_teardown(db: &Path, ok: &Arc<AtomicU64>) -> (Pool, usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pool = rt.block_on(async { build(db, gracepool_tokio::TokioRuntime::current()) });
    for w in 0..WORKERS {
        rt.spawn(worker(pool.clone(), w as i64, ok.clone()));
    }
    await_writes(ok, 200);
    let in_use = pool.status().in_use;
    drop(rt);
    (pool, in_use)
}

fn smol_teardown(db: &Path, ok: &Arc<AtomicU64>) -> (Pool, usize) {
    let ex = Arc::new(async_executor::Executor::new());
    let (stop, stopped) = async_channel::bounded::<()>(1);
    let runners: Vec<_> = (0..2)
        .map(|_| {
            let (ex, stopped) = (ex.clone(), stopped.clone());
            std::thread::spawn(move || futures_lite::future::block_on(ex.run(stopped.recv())))
        })
        .collect();
    let pool = build(db, gracepool_smol::SmolRuntime::from_executor(&ex));
    for w in 0..WORKERS {
        ex.spawn(worker(pool.clone(), w as i64, ok.clone()))
            .detach();
    }
    await_writes(ok, 200);
    let in_use = pool.status().in_use;
    // Stop the executor's threads mid-call, then drop it: every task goes with it.
    drop(stop);
    for runner in runners {
        let _ = runner.join().unwrap();
    }
    drop(ex);
    (pool, in_use)
}

fn tokio_close(db: &Path, ok: &Arc<AtomicU64>) -> (Pool, usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pool = rt.block_on(async { build(db, gracepool_tokio::TokioRuntime::current()) });
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| rt.spawn(worker(pool.clone(), w as i64, ok.clone())))
        .collect();
    await_writes(ok, 200);
    let in_use = pool.status().in_use;
    let report = rt.block_on(pool.close());
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.counters.closed_graceful, report.counters.created);
    for w in workers {
        rt.block_on(w).expect("each worker stops at the close");
    }
    drop(rt);
    (pool, in_use)
}

#[test]
fn tokio_runtime_dropped_mid_call() {
    run_child("tokio_runtime_dropped_mid_call");
}

#[test]
fn smol_executor_dropped_mid_call() {
    run_child("smol_executor_dropped_mid_call");
}

#[test]
fn tokio_graceful_close_under_load() {
    run_child("tokio_graceful_close_under_load");
}
