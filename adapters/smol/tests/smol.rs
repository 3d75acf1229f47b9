//! The smol adapter on its own: the global executor, an executor of the caller's, and what
//! happens when that executor is dropped under the pool.

use std::sync::Arc;
use std::time::Duration;

use async_executor::Executor;
use gracepool::{CloseCause, Error, Pool, PoolState};
use gracepool_smol::SmolRuntime;
use gracepool_testkit::{assert_accounted, Counting};

#[test]
fn global_executor_serves_and_closes_gracefully() {
    let m = Counting::new();
    let pool = Pool::builder(m.clone())
        .max_size(3)
        .runtime(SmolRuntime::global())
        .build()
        .unwrap();
    async_io::block_on(async {
        let tasks: Vec<_> = (0..12)
            .map(|_| {
                let pool = pool.clone();
                smol::spawn(async move {
                    for _ in 0..10 {
                        let c = pool.get().await.unwrap();
                        async_io::Timer::after(Duration::from_micros(200)).await;
                        drop(c);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        let report = pool.close().await;
        assert!(report.is_complete(), "{report:?}");
        assert!(
            !report.fallback,
            "the actor on the global executor is alive"
        );
        assert_eq!(report.counters.closed_graceful, report.counters.created);
    });
    assert!(m.created() <= 3);
    assert_accounted(&pool.status().counters);
    m.assert_balanced();
}

#[test]
fn the_pool_holds_its_executor_weakly() {
    let m = Counting::new();
    let ex = Arc::new(Executor::new());
    let pool = Pool::builder(m.clone())
        .runtime(SmolRuntime::from_executor(&ex))
        .build()
        .unwrap();
    // The actor's task lives in the executor; nothing refers back to it strongly.
    assert_eq!(Arc::strong_count(&ex), 1);
    let guard = async_io::block_on(ex.run(async {
        let a = pool.get().await.unwrap();
        drop(pool.get().await.unwrap());
        a
    }));
    assert_eq!(pool.status().idle, 1);
    // Dropping the user's executor drops the actor, which closes what the pool holds.
    drop(ex);
    let status = pool.status();
    assert!(!status.actor_alive);
    assert_eq!(status.state, PoolState::Closed);
    assert_eq!(m.closed(), 1, "the idle connection was closed at once");
    assert!(matches!(
        async_io::block_on(pool.get()),
        Err(Error::RuntimeGone)
    ));
    drop(guard);
    let report = pool.close_blocking(Duration::from_millis(10));
    assert_eq!(report.cause, CloseCause::RuntimeGone);
    assert_accounted(&pool.status().counters);
    m.assert_balanced();
}

#[test]
fn building_on_a_dropped_executor_is_a_spawn_error() {
    let ex = Arc::new(Executor::new());
    let rt = SmolRuntime::from_executor(&ex);
    drop(ex);
    let m = Counting::new();
    match Pool::builder(m.clone()).runtime(rt).build() {
        Err(e @ Error::Spawn(_)) => assert!(e.to_string().contains("executor was dropped")),
        other => panic!("{other:?}"),
    }
    assert_eq!(m.created(), 0);
}

#[test]
fn executor_run_by_several_threads() {
    let m = Counting::new();
    let ex = Arc::new(Executor::new());
    let (stop, stopped) = async_channel::bounded::<()>(1);
    let runners: Vec<_> = (0..2)
        .map(|_| {
            let (ex, stopped) = (ex.clone(), stopped.clone());
            std::thread::spawn(move || async_io::block_on(ex.run(stopped.recv())))
        })
        .collect();
    let pool = Pool::builder(m.clone())
        .max_size(2)
        .min_idle(1)
        .runtime(SmolRuntime::from_executor(&ex))
        .build()
        .unwrap();
    async_io::block_on(async {
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let pool = pool.clone();
                ex.spawn(async move {
                    for _ in 0..20 {
                        drop(pool.get().await.unwrap());
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        let report = pool.close().await;
        assert!(report.is_complete());
        assert!(!report.fallback);
    });
    drop(stop);
    for r in runners {
        let _ = r.join().unwrap();
    }
    m.assert_balanced();
}

#[test]
fn timers_work_without_any_executor() {
    let rt = SmolRuntime::global();
    let t = std::time::Instant::now();
    async_io::block_on(gracepool::Runtime::sleep(&rt, Duration::from_millis(5)));
    assert!(t.elapsed() >= Duration::from_millis(5));
    let debug = format!("{rt:?}");
    assert!(debug.contains("global"), "{debug}");
}
