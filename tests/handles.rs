//! Issue-12 handles: `manager()`, `is_closed()`, a weak handle that never keeps a pool open,
//! `begin_close`, and `build_ready` (eager start).

use std::time::{Duration, Instant};

use gracepool::{Error, Pool, PoolState};
use gracepool_testkit::{Counting, ExecRuntime, Fault};

#[test]
fn a_weak_handle_reads_the_pool_and_never_keeps_it_open() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = Pool::builder(m.clone())
        .runtime(rt.handle())
        .build()
        .unwrap();
    assert!(std::ptr::eq(pool.manager().stats(), m.stats()));
    let weak = pool.downgrade();
    rt.block_on(async { drop(pool.get().await.unwrap()) });
    let status = weak.status().expect("the pool is there");
    assert_eq!((status.size, status.idle), (1, 1));
    // A second handle from the weak one, dropped again: the pool stays open.
    let again = weak.upgrade().expect("a handle remains");
    assert!(!again.is_closed());
    drop(again);
    assert!(!pool.is_closed());
    // The last handle goes while a guard is out (the pool's state lives on in the guard): the
    // pool closes, whatever weak handles remain, and none of them brings a handle back.
    let guard = rt.block_on(pool.get()).unwrap();
    drop(pool);
    assert!(
        weak.upgrade().is_none(),
        "a weak handle revived a pool whose last handle went"
    );
    assert_ne!(
        weak.status().expect("still there").state,
        PoolState::Running
    );
    drop(guard);
    rt.block_on(async {
        let until = Instant::now() + Duration::from_secs(5);
        while weak.status().is_some_and(|s| s.state != PoolState::Closed) {
            assert!(Instant::now() < until, "{:?}", weak.status());
            async_io::Timer::after(Duration::from_millis(1)).await;
        }
    });
    assert!(
        weak.upgrade().is_none(),
        "no handle comes back after the last one went"
    );
    drop(rt);
    m.assert_balanced();
}

#[test]
fn begin_close_returns_at_once_and_closes_gracefully() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = Pool::builder(m.clone())
        .runtime(rt.handle())
        .build()
        .unwrap();
    rt.block_on(async {
        drop(pool.get().await.unwrap());
        pool.begin_close();
        assert!(pool.is_closed());
        assert!(matches!(pool.get().await.map(drop), Err(Error::Closed)));
        let report = pool.close().await;
        assert!(!report.fallback);
        assert_eq!(report.counters.closed_graceful, 1);
    });
    m.assert_balanced();
}

#[test]
fn build_ready_waits_for_min_idle() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    m.set_create_delay(Duration::from_millis(5));
    let pool = rt
        .block_on(
            Pool::builder(m.clone())
                .min_idle(3)
                .runtime(rt.handle())
                .build_ready(Duration::from_secs(5)),
        )
        .expect("the backend answers");
    assert!(pool.status().idle >= 3);
    // With min_idle 0, one connection proves the backend answers.
    let (m2, rt2) = (Counting::new(), ExecRuntime::new());
    let pool2 = rt2
        .block_on(
            Pool::builder(m2.clone())
                .runtime(rt2.handle())
                .build_ready(Duration::from_secs(5)),
        )
        .unwrap();
    assert_eq!(m2.created(), 1);
    pool.close_blocking(Duration::from_secs(1));
    pool2.close_blocking(Duration::from_secs(1));
}

#[test]
fn build_ready_fails_with_the_creation_error() {
    for min_idle in [0, 2] {
        for fail_fast in [false, true] {
            let (m, rt) = (Counting::new(), ExecRuntime::new());
            m.set_create(Fault::Fail);
            let started = Instant::now();
            let r = rt.block_on(
                Pool::builder(m.clone())
                    .min_idle(min_idle)
                    .fail_fast(fail_fast)
                    .runtime(rt.handle())
                    .build_ready(Duration::from_secs(60)),
            );
            let Err(e) = r else {
                panic!("min_idle {min_idle}, fail_fast {fail_fast}: started against a refusing backend")
            };
            assert!(
                matches!(e, Error::Backend(_)),
                "min_idle {min_idle}, fail_fast {fail_fast}: {e:?}"
            );
            // At once: a permanent failure does not wait out the 60 s patience.
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "min_idle {min_idle}, fail_fast {fail_fast}: {:?}",
                started.elapsed()
            );
        }
    }
    // Slower than the patience: a timeout.
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    m.set_create(Fault::Stall);
    let r = rt.block_on(
        Pool::builder(m.clone())
            .min_idle(1)
            .runtime(rt.handle())
            .build_ready(Duration::from_millis(100)),
    );
    assert!(matches!(r.map(drop), Err(Error::Timeout { .. })));
}

#[test]
fn a_guard_can_close_its_connection_with_a_goodbye() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = Pool::builder(m.clone())
        .max_size(1)
        .runtime(rt.handle())
        .build()
        .unwrap();
    rt.block_on(async {
        let conn = pool.get().await.unwrap();
        assert_eq!(conn.id, 1);
        gracepool::Pooled::close(conn);
        // Its place is free at once: the next caller gets a new connection.
        let next = pool.get().await.unwrap();
        assert_eq!(next.id, 2);
        let s = pool.status();
        assert_eq!((s.in_use, s.size), (1, 1));
        drop(next);
        let report = pool.close().await;
        // Connection 1 said goodbye through the actor, like connection 2.
        assert_eq!(report.counters.closed_graceful, 2, "{report:?}");
        assert!(report.is_complete());
    });
    assert_eq!(
        m.stats()
            .shut_down
            .load(std::sync::atomic::Ordering::SeqCst),
        2
    );
    m.assert_balanced();
}

#[test]
fn close_within_chooses_the_deadline_per_call() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = Pool::builder(m.clone())
        .max_size(3)
        .close_deadline(Duration::from_secs(5))
        .runtime(rt.handle())
        .build()
        .unwrap();
    rt.block_on(async {
        let (a, b) = futures_lite::future::zip(pool.get(), pool.get()).await;
        let (a, b) = (a.unwrap(), b.unwrap());
        // One idle; and a task that holds two guards and closes: "close now" does not wait
        // for them.
        drop(pool.get().await.unwrap());
        let started = Instant::now();
        let report = pool.close_within(Duration::ZERO).await;
        // Not the default 10 s deadline.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(report.checked_out, 2, "{report:?}");
        // The idle one still said goodbye.
        assert_eq!(report.counters.closed_graceful, 1, "{report:?}");
        drop((a, b));
    });
    assert_eq!(pool.status().counters.open(), 0);
    m.assert_balanced();

    // A close waiting out its 60 s deadline is shortened by a later, shorter request.
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = Pool::builder(m.clone())
        .close_deadline(Duration::from_secs(60))
        .runtime(rt.handle())
        .build()
        .unwrap();
    rt.block_on(async {
        let held = pool.get().await.unwrap();
        let started = Instant::now();
        let (long, short) = futures_lite::future::zip(pool.close(), async {
            async_io::Timer::after(Duration::from_millis(50)).await;
            pool.close_within(Duration::from_millis(100)).await
        })
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(long.checked_out, 1);
        assert_eq!(long.counters, short.counters);
        drop(held);
    });
    m.assert_balanced();
}
