//! Pool statistics in `status()`: gets, waits and timeouts, and connections closed by reason,
//! which together account for every connection that ended.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use gracepool::{BoxFuture, Error, Pool, Pooled, Runtime, SpawnError};
use gracepool_testkit::{assert_accounted, until_status, Counting, ExecHandle, ExecRuntime, Fault};

#[test]
fn gets_waits_and_timeouts_are_counted() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = Pool::builder(m.clone())
        .max_size(1)
        .runtime(rt.handle())
        .build()
        .unwrap();
    rt.block_on(async {
        // The first get waits for its connection to be made.
        let held = pool.get().await.unwrap();
        let before = pool.status().counters;
        assert_eq!((before.gets, before.gets_waited), (1, 1));
        // One more waits 50 ms and is served; one more times out after 30 ms.
        let (served, ()) = futures_lite::future::zip(pool.get(), async {
            async_io::Timer::after(Duration::from_millis(50)).await;
            drop(held);
        })
        .await;
        let conn = served.unwrap();
        let r = pool.get_timeout(Duration::from_millis(30)).await.map(drop);
        assert!(matches!(r, Err(Error::Timeout { .. })));
        drop(conn);
        let c = pool.status().counters;
        assert_eq!(c.gets, 2);
        assert_eq!(c.gets_waited, 3);
        assert_eq!(c.gets_timed_out, 1);
        assert!(c.wait_max >= Duration::from_millis(45), "{c:?}");
        assert!(
            c.wait_total >= c.wait_max + Duration::from_millis(25),
            "{c:?}"
        );
        // Taking an idle connection is not a wait.
        drop(pool.get().await.unwrap());
        assert_eq!(pool.status().counters.gets_waited, 3);
        pool.close().await;
    });
}

#[test]
fn connections_closed_are_counted_by_reason() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = Pool::builder(m.clone())
        .max_size(4)
        .idle_timeout(Duration::from_millis(100))
        .max_lifetime(Duration::from_millis(600))
        .maintenance_interval(Duration::from_millis(20))
        .runtime(rt.handle())
        .build()
        .unwrap();
    rt.block_on(async {
        // Broken, as it comes back.
        m.set_broken(true);
        drop(pool.get().await.unwrap());
        m.set_broken(false);
        until_status(&pool, "counters", |s| s.counters.closed_broken == 1).await;
        // From the guard.
        gracepool::Pooled::close(pool.get().await.unwrap());
        until_status(&pool, "counters", |s| s.counters.closed_broken == 2).await;
        // A failed check.
        drop(pool.get().await.unwrap());
        m.set_check(Fault::Fail);
        drop(pool.get().await.unwrap()); // the idle one fails, a new one is made
        m.set_check(Fault::None);
        assert_eq!(pool.status().counters.check_failed, 1);
        // Retained out.
        assert_eq!(pool.retain(|_, _| false), 1);
        until_status(&pool, "counters", |s| s.counters.closed_retained == 1).await;
        // Idle too long.
        drop(pool.get().await.unwrap());
        until_status(&pool, "counters", |s| s.counters.closed_idle_timeout >= 1).await;
        // Too old: kept busy, so never idle long, until its lifetime ends.
        let until = Instant::now() + Duration::from_secs(3);
        while pool.status().counters.closed_max_lifetime == 0 {
            assert!(Instant::now() < until, "{:?}", pool.status().counters);
            drop(pool.get().await.unwrap());
            async_io::Timer::after(Duration::from_millis(10)).await;
        }
        // The rest by the close: one more, idle when it comes.
        drop(pool.get().await.unwrap());
        let report = pool.close().await;
        assert!(report.is_complete());
        assert!(
            report.counters.closed_by_close() >= 1,
            "{:?}",
            report.counters
        );
        assert_accounted(&report.counters);
    });
    m.assert_balanced();
}

/// A connection refused at checkout (past its lifetime) is neither a get nor in use: the
/// waitlist counts what it hands out, and a refusal is counted back.
#[test]
fn a_connection_refused_at_checkout_is_not_counted_as_a_get() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = Pool::builder(m.clone())
        .max_size(2)
        .max_lifetime(Duration::from_millis(30))
        .maintenance_interval(Duration::from_secs(60))
        .runtime(rt.handle())
        .build()
        .unwrap();
    rt.block_on(async {
        drop(pool.get().await.unwrap());
        async_io::Timer::after(Duration::from_millis(60)).await;
        // An event for the actor, so that its clock moves past the lifetime (no tick comes
        // for a minute); then the idle connection is refused at checkout, and a new one made.
        pool.resize(2).unwrap();
        async_io::Timer::after(Duration::from_millis(20)).await;
        let conn = pool.get().await.unwrap();
        assert_eq!(conn.id, 2, "the first connection was past its lifetime");
        let s = pool.status();
        assert_eq!(s.counters.closed_max_lifetime, 1, "{s:?}");
        assert_eq!((s.counters.gets, s.in_use), (2, 1), "{s:?}");
        drop(conn);
        let s = pool.status();
        assert_eq!((s.counters.gets, s.in_use), (2, 0), "{s:?}");
        pool.close().await;
    });
    assert_accounted(&pool.status().counters);
}

/// The test executor, saying that every caller runs on it: a `get` that finds nothing idle
/// makes its connection itself.
#[derive(Clone)]
struct Here(ExecHandle);

impl Runtime for Here {
    fn spawn(&self, task: BoxFuture) -> Result<(), SpawnError> {
        self.0.spawn(task)
    }

    fn sleep(&self, duration: Duration) -> BoxFuture {
        self.0.sleep(duration)
    }

    fn is_current(&self) -> bool {
        true
    }
}

/// A call given up while it makes its own connection had to wait all the same: one wait.
#[test]
fn a_call_dropped_during_its_own_creation_counts_one_wait() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    m.set_create_delay(Duration::from_millis(500));
    let pool = Pool::builder(m.clone())
        .max_size(2)
        .runtime(Here(rt.handle()))
        .build()
        .unwrap();
    rt.block_on(async {
        let given_up = futures_lite::future::or(async { Some(pool.get().await) }, async {
            async_io::Timer::after(Duration::from_millis(40)).await;
            None
        })
        .await;
        assert!(given_up.is_none(), "the creation takes 500 ms");
        let c = pool.status().counters;
        assert_eq!((c.gets, c.gets_waited), (0, 1), "{c:?}");
        assert!(c.wait_total >= Duration::from_millis(30), "{c:?}");
        pool.close().await;
    });
    assert_eq!(m.created(), 0);
    m.assert_balanced();
}

/// A caller whose own connection is refused as it is checked out (a refresh from another
/// thread landed between the creation's end and the checkout) goes on to wait for the actor:
/// still one wait. The race is narrow, so the test runs rounds until it has seen it a few times.
#[test]
fn a_call_whose_own_connection_is_refused_counts_one_wait() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    // Every creation waits on a timer: each call waits once.
    m.set_create_delay(Duration::from_millis(1));
    let pool = Pool::builder(m.clone())
        .max_size(4)
        .runtime(Here(rt.handle()))
        .build()
        .unwrap();
    let stop = AtomicBool::new(false);
    let (calls, c) = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Relaxed) {
                pool.refresh();
                std::thread::yield_now();
            }
        });
        let out = rt.block_on(async {
            let until = Instant::now() + Duration::from_secs(60);
            let mut calls = 0;
            while pool.status().counters.closed_refreshed < 3 && Instant::now() < until {
                // Closed at once, so that nothing is ever idle: each call makes or waits for a
                // new connection.
                Pooled::close(pool.get().await.unwrap());
                calls += 1;
            }
            (calls, pool.status().counters)
        });
        stop.store(true, Relaxed);
        out
    });
    assert!(
        c.closed_refreshed >= 1,
        "no connection was refused in {calls} calls: the race was not met"
    );
    assert_eq!((c.gets, c.gets_waited), (calls, calls), "{c:?}");
    rt.block_on(pool.close());
    m.assert_balanced();
}
