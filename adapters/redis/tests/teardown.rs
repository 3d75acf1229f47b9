//! The runtime dropped under load, in a child process so that a panic or a stray print is
//! seen from outside. The child is this test binary again, started with
//! `GRACEPOOL_REDIS_SCENARIO` and the server's URL; it drops the runtime while workers are
//! mid-request, waits 200 ms, asks the server how many clients are left (the pool handle is
//! still held), and prints the pool's counts. The parent asserts exit status 0, empty stderr,
//! exact counts, and no client left.

mod common;

use std::sync::Arc;
use std::time::Duration;

use gracepool_redis::{Manager, Pool};
use gracepool_smol::SmolRuntime;
use gracepool_testkit::redis::{client_list_at, RedisServer};
use gracepool_tokio::TokioRuntime;

use common::{await_clients, worker, Load, Runners};

const SCENARIO: &str = "GRACEPOOL_REDIS_SCENARIO";
const URL: &str = "GRACEPOOL_REDIS_URL";
const PORT: &str = "GRACEPOOL_REDIS_PORT";
const WORKERS: usize = 16;
const SIZE: usize = 4;

fn run_child(scenario: &str) {
    let Some(server) = RedisServer::start(scenario) else {
        return;
    };
    let child = gracepool_testkit::child::run_child(
        scenario,
        &[
            (SCENARIO, scenario.to_owned()),
            (URL, server.url()),
            (PORT, server.port().to_string()),
        ],
    );
    let (field, line) = (|key| child.field(key), &child.line);
    assert_eq!(field("created"), SIZE as u64, "{scenario}: {line}");
    assert!(
        field("in_use") > 0,
        "torn down while requests were in flight: {line}"
    );
    assert_eq!(
        field("created"),
        field("graceful") + field("sync") + field("failed") + field("detached"),
        "{scenario}: every connection reached one end: {line}"
    );
    assert_eq!(field("open"), 0, "{scenario}: {line}");
    assert_eq!(
        field("leftover"),
        0,
        "{scenario}: no client left 200 ms later: {line}"
    );
    assert!(field("ok") > 0, "{scenario}: {line}");
    // The child's sockets closed as it exited; the server lists a client until it has read
    // the close (seen once in CI's rehearsal: 1 client right after the exit).
    assert_eq!(
        await_clients(&server, 0),
        0,
        "{scenario}: nothing left after the child exited"
    );
}

/// The child's entry point: does nothing unless started by `run_child`.
#[test]
fn child() {
    let Ok(scenario) = std::env::var(SCENARIO) else {
        return;
    };
    let url = std::env::var(URL).unwrap();
    let port: u16 = std::env::var(PORT).unwrap().parse().unwrap();
    let load = Load::new();
    let (pool, in_use) = match scenario.as_str() {
        "tokio_runtime_dropped_under_load" => tokio_teardown(&url, &load),
        "smol_executor_dropped_under_load" => smol_teardown(&url, &load),
        other => panic!("unknown scenario {other}"),
    };
    // The pool handle is still held: its connections must have ended with the runtime.
    std::thread::sleep(Duration::from_millis(200));
    let leftover = client_list_at(port, None)
        .expect("the server answers")
        .len();
    let c = pool.status().counters;
    drop(pool);
    println!(
        "created={} graceful={} sync={} failed={} detached={} open={} in_use={in_use} leftover={leftover} ok={}",
        c.created,
        c.closed_graceful,
        c.closed_sync,
        c.close_failed,
        c.detached,
        c.open(),
        load.ok()
    );
}

fn build(url: &str, runtime: impl gracepool::Runtime) -> Pool {
    Pool::builder(Manager::new(url).expect("a valid URL"))
        .max_size(SIZE)
        .runtime(runtime)
        .build()
        .expect("a valid configuration")
}

/// Returns the pool, and how many connections were checked out just before the teardown.
fn tokio_teardown(url: &str, load: &Arc<Load>) -> (Pool, usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pool = rt.block_on(async { build(url, TokioRuntime::current()) });
    for _ in 0..WORKERS {
        rt.spawn(worker(pool.clone(), load.clone()));
    }
    assert!(
        load.await_more(500, Duration::from_secs(10)),
        "{:?}",
        load.errors()
    );
    let in_use = pool.status().in_use;
    drop(rt);
    (pool, in_use)
}

fn smol_teardown(url: &str, load: &Arc<Load>) -> (Pool, usize) {
    let ex = Arc::new(async_executor::Executor::new());
    let runners = Runners::start(&ex);
    let pool = build(url, SmolRuntime::from_executor(&ex));
    for _ in 0..WORKERS {
        ex.spawn(worker(pool.clone(), load.clone())).detach();
    }
    assert!(
        load.await_more(500, Duration::from_secs(10)),
        "{:?}",
        load.errors()
    );
    let in_use = pool.status().in_use;
    // Stop the executor's threads mid-request, then drop it: every task goes with it.
    runners.stop();
    drop(ex);
    (pool, in_use)
}

#[test]
fn tokio_runtime_dropped_under_load() {
    run_child("tokio_runtime_dropped_under_load");
}

#[test]
fn smol_executor_dropped_under_load() {
    run_child("smol_executor_dropped_under_load");
}
