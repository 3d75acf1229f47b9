//! The server restarted under load, with the pool's default settings: `get()` itself never
//! fails (commands in flight when the server goes may), and commands are answered again
//! within the restart time plus the pool's longest creation backoff.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use gracepool_redis::{Manager, Pool};
use gracepool_smol::SmolRuntime;
use gracepool_testkit::redis::RedisServer;
use gracepool_tokio::TokioRuntime;

use common::{await_clients, worker, Load, Runners};

const WORKERS: usize = 16;
/// The pool's default longest pause between creation attempts.
const BACKOFF_CAP: Duration = Duration::from_secs(1);
/// Scheduling on a shared 2-core machine, and the 1 ms polling below.
const SLACK: Duration = Duration::from_millis(100);

/// Restarts the server under the running load and checks the pool rides it out.
fn restart_under_load(name: &str, server: &mut RedisServer, pool: &Pool, load: &Load) {
    assert!(
        load.await_more(500, Duration::from_secs(10)),
        "the load did not run: {:?}",
        load.errors()
    );
    assert_eq!(load.get_errors(), 0, "{:?}", load.errors());

    let stopped = Instant::now();
    let down = server.restart();
    // Every command answered from now on was answered by the new server.
    let answered = load.ok();
    let patience = stopped + down + BACKOFF_CAP + Duration::from_secs(10);
    while load.ok() == answered && Instant::now() < patience {
        std::thread::sleep(Duration::from_millis(1));
    }
    let recovery = stopped.elapsed();
    assert!(load.ok() > answered, "never recovered: {:?}", load.errors());
    assert!(
        recovery <= down + BACKOFF_CAP + SLACK,
        "answered again {recovery:?} after the stop; the server was down {down:?}"
    );
    assert!(
        load.await_more(500, Duration::from_secs(10)),
        "the load did not run on after the restart: {:?}",
        load.errors()
    );
    assert_eq!(
        load.get_errors(),
        0,
        "get() itself never failed: {:?}",
        load.errors()
    );
    let status = pool.status();
    assert!(
        status.counters.created as usize > status.size,
        "dead connections were replaced: {status:?}"
    );
    println!(
        "{name}: down {down:?}, answered again after {recovery:?}, {} commands failed in flight, {} created",
        load.cmd_errors(),
        status.counters.created
    );
}

#[test]
fn tokio_server_restarted_under_load() {
    let Some(mut server) = RedisServer::start("tokio_server_restarted_under_load") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pool: Pool = rt.block_on(async {
        Pool::builder(Manager::new(server.url()).expect("a valid URL"))
            .runtime(TokioRuntime::current())
            .build()
            .expect("a valid configuration")
    });
    let load = Load::new();
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| rt.spawn(worker(pool.clone(), load.clone())))
        .collect();
    restart_under_load("tokio", &mut server, &pool, &load);
    let report = rt.block_on(async {
        let report = pool.close().await;
        for w in workers {
            w.await.unwrap();
        }
        report
    });
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(await_clients(&server, 0), 0);
}

#[test]
fn smol_server_restarted_under_load() {
    let Some(mut server) = RedisServer::start("smol_server_restarted_under_load") else {
        return;
    };
    let ex = Arc::new(async_executor::Executor::new());
    let runners = Runners::start(&ex);
    let pool: Pool = Pool::builder(Manager::new(server.url()).expect("a valid URL"))
        .runtime(SmolRuntime::from_executor(&ex))
        .build()
        .expect("a valid configuration");
    let load = Load::new();
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| ex.spawn(worker(pool.clone(), load.clone())))
        .collect();
    restart_under_load("smol", &mut server, &pool, &load);
    let report = async_io::block_on(async {
        let report = pool.close().await;
        for w in workers {
            w.await;
        }
        report
    });
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(await_clients(&server, 0), 0);
    runners.stop();
}
