//! The tokio adapter on its own: both runtime flavours, a `LocalSet`, runtimes without a time
//! driver, and a runtime that is gone.

use std::time::Duration;

use gracepool::{CloseCause, Error, Pool, PoolState, Runtime};
use gracepool_testkit::{assert_accounted, Counting};
use gracepool_tokio::TokioRuntime;
use tokio::runtime::Builder;

fn current_thread() -> tokio::runtime::Runtime {
    Builder::new_current_thread().enable_all().build().unwrap()
}

/// A runtime with no time driver: tokio's own timer panics on it.
fn without_timers() -> tokio::runtime::Runtime {
    Builder::new_current_thread().build().unwrap()
}

#[test]
fn multi_thread_serves_and_closes_gracefully() {
    let m = Counting::new();
    let rt = Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let pool = Pool::builder(m.clone())
            .max_size(3)
            .runtime(TokioRuntime::current())
            .build()
            .unwrap();
        let tasks: Vec<_> = (0..12)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    for _ in 0..10 {
                        let c = pool.get().await.unwrap();
                        tokio::time::sleep(Duration::from_micros(200)).await;
                        drop(c);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let report = pool.close().await;
        assert!(report.is_complete(), "{report:?}");
        assert!(!report.fallback);
        assert_eq!(report.counters.closed_graceful, report.counters.created);
    });
    assert!(m.created() <= 3);
    m.assert_balanced();
}

#[test]
fn current_thread_inside_a_local_set() {
    let m = Counting::new();
    let rt = current_thread();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let pool = Pool::builder(m.clone())
            .max_size(2)
            .wait_timeout(Duration::from_secs(5))
            .runtime(TokioRuntime::current())
            .build()
            .unwrap();
        let a = pool.get().await.unwrap();
        let b = pool.get().await.unwrap();
        // A local (non-Send) task waits; a timer-bound wait times out.
        let waiter = {
            let pool = pool.clone();
            tokio::task::spawn_local(async move { pool.get().await.map(|c| c.id) })
        };
        assert!(matches!(
            pool.get_timeout(Duration::from_millis(10)).await,
            Err(Error::Timeout { .. })
        ));
        drop(a);
        assert_eq!(waiter.await.unwrap().unwrap(), 1);
        drop(b);
        assert!(pool.close().await.is_complete());
    });
    m.assert_balanced();
}

#[test]
fn a_runtime_without_timers_works_with_async_io_timers() {
    let m = Counting::new();
    let rt = without_timers();
    rt.block_on(async {
        let pool = Pool::builder(m.clone())
            .max_size(1)
            .maintenance_interval(Duration::from_millis(5))
            .idle_timeout(Duration::from_millis(20))
            .close_deadline(Duration::from_millis(20))
            .runtime(TokioRuntime::current().with_async_io_timers())
            .build()
            .unwrap();
        let g = pool.get().await.unwrap();
        // Every timer the pool uses: the wait timeout, the maintenance tick, the close deadline.
        assert!(matches!(
            pool.get_timeout(Duration::from_millis(10)).await,
            Err(Error::Timeout { .. })
        ));
        drop(g);
        // The reaper's tick retires the idle connection.
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while m.closed() == 0 && std::time::Instant::now() < until {
            tokio::task::yield_now().await;
            async_io::Timer::after(Duration::from_millis(2)).await;
        }
        assert_eq!(m.closed(), 1, "the idle timeout reaped the connection");
        let g = pool.get().await.unwrap();
        let report = pool.close().await;
        assert_eq!(report.checked_out, 1, "the close deadline passed");
        drop(g);
    });
    m.assert_balanced();
}

#[test]
fn timers_polled_on_another_runtime_do_not_need_its_time_driver() {
    // The pool lives on A (timers on); a task on B (no time driver) waits with a timeout.
    let m = Counting::new();
    let a = Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let pool = Pool::builder(m.clone())
        .max_size(1)
        .runtime(TokioRuntime::from_handle(a.handle().clone()))
        .build()
        .unwrap();
    let b = without_timers();
    b.block_on(async {
        let g = pool.get().await.unwrap();
        assert!(matches!(
            pool.get_timeout(Duration::from_millis(10)).await,
            Err(Error::Timeout { .. })
        ));
        drop(g);
        let report = pool.close().await;
        assert!(report.is_complete());
        assert!(!report.fallback, "the actor on A closed the pool");
    });
    drop(a);
    m.assert_balanced();
}

#[test]
fn the_runtime_gone_closes_the_pool_and_another_runtime_sees_a_clear_error() {
    let m = Counting::new();
    let a = current_thread();
    let pool = a.block_on(async {
        Pool::builder(m.clone())
            .runtime(TokioRuntime::current())
            .build()
            .unwrap()
    });
    let guard = a.block_on(async {
        drop(pool.get().await.unwrap());
        pool.get().await.unwrap()
    });
    drop(a);
    let status = pool.status();
    assert!(!status.actor_alive);
    assert_eq!(status.state, PoolState::Closed);
    let b = without_timers();
    b.block_on(async {
        assert!(matches!(pool.get().await, Err(Error::RuntimeGone)));
        let report = pool.close().await;
        assert_eq!(report.cause, CloseCause::RuntimeGone);
        assert!(report.fallback);
    });
    drop(guard);
    assert_accounted(&pool.status().counters);
    m.assert_balanced();
}

#[test]
fn spawning_on_a_runtime_that_is_gone_is_an_error() {
    let rt = current_thread();
    let handle = rt.handle().clone();
    drop(rt);
    let m = Counting::new();
    let r = Pool::builder(m.clone())
        .runtime(TokioRuntime::from_handle(handle))
        .build();
    match r {
        Err(e @ Error::Spawn(_)) => assert!(e.to_string().contains("shut down"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(TokioRuntime::try_current().is_err());
}

#[test]
fn sleep_outside_any_runtime_uses_a_timer_that_works() {
    let rt = current_thread();
    let tr = TokioRuntime::from_handle(rt.handle().clone());
    let t = std::time::Instant::now();
    futures_lite::future::block_on(tr.sleep(Duration::from_millis(5)));
    drop(rt);
    futures_lite::future::block_on(tr.sleep(Duration::from_millis(5)));
    assert!(t.elapsed() >= Duration::from_millis(10));
}

/// Runs `f` on a plain thread; fails the test if it has not finished within `limit`, rather
/// than hang it.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .expect("the call did not finish in time: a wait timeout did not fire")
}

#[test]
fn a_wait_times_out_on_a_plain_thread_while_the_pools_runtime_is_not_driven() {
    // The pool lives on a current_thread runtime that nobody drives once its `block_on`
    // returns. A task on it queued first, with the same wait timeout; then a caller on a plain
    // thread queues behind it. Neither the runtime's timers nor its tasks run any more, and
    // the plain caller must still get its `Timeout`, on time.
    let m = Counting::new();
    let rt = current_thread();
    let (pool, held, _queued) = rt.block_on(async {
        let pool = Pool::builder(m.clone())
            .max_size(1)
            .wait_timeout(Duration::from_millis(200))
            .runtime(TokioRuntime::current())
            .build()
            .unwrap();
        let held = pool.get().await.unwrap();
        let first = pool.clone();
        let queued = tokio::spawn(async move { first.get().await.map(drop) });
        while pool.status().waiters == 0 {
            tokio::task::yield_now().await;
        }
        (pool, held, queued)
    });
    let plain = pool.clone();
    let (result, took) = within(Duration::from_secs(20), move || {
        let start = std::time::Instant::now();
        let r = futures_lite::future::block_on(plain.get()).map(drop);
        (r, start.elapsed())
    });
    assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
    assert!(took >= Duration::from_millis(200), "{took:?}");
    // A shorter per-call limit is kept too, behind a waiter with a longer one.
    // (The task on the undriven runtime still counts as waiting: its future is not dropped.)
    let before = pool.status().waiters;
    let long = pool.clone();
    let first = std::thread::spawn(move || {
        futures_lite::future::block_on(long.get_timeout(Duration::from_secs(60))).map(drop)
    });
    while pool.status().waiters == before {
        std::thread::sleep(Duration::from_millis(1));
    }
    let plain = pool.clone();
    let (result, took) = within(Duration::from_secs(20), move || {
        let start = std::time::Instant::now();
        let r = futures_lite::future::block_on(plain.get_timeout(Duration::from_millis(50)));
        (r.map(drop), start.elapsed())
    });
    assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
    assert!(took >= Duration::from_millis(50), "{took:?}");
    // The longer waiter is served by the returning connection.
    drop(held);
    assert!(first.join().unwrap().is_ok());
    drop(rt);
    drop(pool);
    m.assert_balanced();
}
