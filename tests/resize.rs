//! Resizing a running pool: growing serves waiters at once, shrinking closes idle surplus at
//! once and checked-out surplus as it comes back, min_idle is clamped, and a resize racing a
//! close loses nothing.

use std::time::{Duration, Instant};

use gracepool::{ConfigError, Pool};
use gracepool_testkit::{until_status, Counting, ExecRuntime};

#[test]
fn growing_serves_a_waiter_at_once() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = Pool::builder(m.clone())
        .max_size(1)
        .maintenance_interval(Duration::from_secs(600))
        .runtime(rt.handle())
        .build()
        .unwrap();
    rt.block_on(async {
        let held = pool.get().await.unwrap();
        let started = Instant::now();
        let (served, ()) = futures_lite::future::zip(pool.get(), async {
            until_status(&pool, "a waiter", |s| s.waiters == 1).await;
            pool.resize(2).unwrap();
        })
        .await;
        // Served by the resize, not by its wait timeout (30 s).
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(served.unwrap().id, 2);
        assert_eq!(pool.status().max_size, 2);
        drop(held);
        pool.close().await;
    });
    m.assert_balanced();
}

#[test]
fn shrinking_closes_idle_surplus_now_and_the_rest_as_it_returns() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = Pool::builder(m.clone())
        .max_size(4)
        .min_idle(3)
        .runtime(rt.handle())
        .build()
        .unwrap();
    rt.block_on(async {
        until_status(&pool, "min_idle", |s| s.idle == 3).await;
        let (a, b) = futures_lite::future::zip(pool.get(), pool.get()).await;
        let (a, b) = (a.unwrap(), b.unwrap());
        until_status(&pool, "four", |s| s.size == 4 && s.idle == 2).await;
        // To 1: two idle close now, gracefully; of the two out, one goes as it comes back.
        pool.resize(1).unwrap();
        until_status(&pool, "idle surplus closed", |s| {
            s.counters.closed_resized == 2 && s.counters.closed_graceful == 2
        })
        .await;
        assert_eq!(pool.status().idle, 0);
        drop(a);
        drop(b);
        until_status(&pool, "size 1", |s| s.size == 1).await;
        let s = pool.status();
        assert_eq!((s.max_size, s.idle, s.counters.closed_resized), (1, 1, 3));
        // min_idle is clamped to the new size: it stays 1, no creation beyond it.
        assert_eq!(s.counters.created, 4);
        assert_eq!(pool.resize(0), Err(ConfigError::MaxSizeZero));
        pool.close().await;
    });
    m.assert_balanced();
}

#[test]
fn resizing_while_closing_loses_nothing() {
    for _ in 0..20 {
        let (m, rt) = (Counting::new(), ExecRuntime::new());
        let pool = Pool::builder(m.clone())
            .max_size(6)
            .min_idle(4)
            .runtime(rt.handle())
            .build()
            .unwrap();
        rt.block_on(async {
            until_status(&pool, "min_idle", |s| s.idle == 4).await;
            let held = pool.get().await.unwrap();
            let (report, ()) = futures_lite::future::zip(pool.close(), async {
                pool.resize(1).unwrap();
                drop(held);
                pool.resize(5).unwrap();
            })
            .await;
            assert!(report.is_complete(), "{report:?}");
        });
        m.assert_balanced();
    }
}
