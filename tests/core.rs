//! Behaviour of the core pool on a minimal runtime: checkout, growth, close, the sync fallback,
//! and manager faults. Each test ends by checking the accounting both ways: the pool's counters
//! balance, and the manager saw every connection it created closed exactly once.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gracepool::{Builder, CloseCause, ConfigError, Error, Pool, PoolState, Pooled, Stage};
use gracepool_testkit::{assert_accounted, Counting, ExecRuntime, Fault};

fn builder(m: &Counting, rt: &ExecRuntime) -> Builder<Counting> {
    Pool::builder(m.clone()).runtime(rt.handle())
}

/// Checks out two connections at once.
async fn two(pool: &Pool<Counting>) -> Vec<Pooled<Counting>> {
    let (a, b) = futures_lite::future::zip(pool.get(), pool.get()).await;
    vec![a.unwrap(), b.unwrap()]
}

fn assert_all_closed(pool: &Pool<Counting>, m: &Counting) {
    let status = pool.status();
    assert_accounted(&status.counters);
    assert_eq!(status.counters.open(), 0, "{status:?}");
    m.assert_balanced();
}

#[test]
fn reuses_idle_connections() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = builder(&m, &rt).max_size(4).build().unwrap();
    rt.block_on(async {
        for _ in 0..10 {
            let c = pool.get().await.unwrap();
            assert_eq!(c.id, 1);
        }
        assert_eq!(pool.status().idle, 1);
        let report = pool.close().await;
        assert_eq!(report.counters.created, 1);
        assert_eq!(report.counters.closed_graceful, 1);
        assert!(report.is_complete());
        assert!(!report.fallback);
        assert_eq!(report.cause, CloseCause::Requested);
    });
    assert_all_closed(&pool, &m);
}

#[test]
fn never_more_than_max_size() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    m.set_create_delay(Duration::from_millis(2));
    let pool = builder(&m, &rt).max_size(3).build().unwrap();
    let peak = Arc::new(AtomicUsize::new(0));
    let live = Arc::new(AtomicUsize::new(0));
    rt.block_on(async {
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (pool, peak, live) = (pool.clone(), peak.clone(), live.clone());
                rt.executor.spawn(async move {
                    for _ in 0..5 {
                        let c = pool.get().await.unwrap();
                        let now = live.fetch_add(1, SeqCst) + 1;
                        peak.fetch_max(now, SeqCst);
                        async_io::Timer::after(Duration::from_micros(300)).await;
                        live.fetch_sub(1, SeqCst);
                        drop(c);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        assert!(pool.status().size <= 3);
        pool.close().await;
    });
    assert!(m.created() <= 3, "created {}", m.created());
    assert_eq!(peak.load(SeqCst), 3);
    assert_all_closed(&pool, &m);
}

#[test]
fn min_idle_prewarms_and_idle_timeout_reaps() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = builder(&m, &rt)
        .max_size(6)
        .min_idle(3)
        .idle_timeout(Duration::from_millis(30))
        .maintenance_interval(Duration::from_millis(10))
        .build()
        .unwrap();
    rt.block_on(async {
        let until = Instant::now() + Duration::from_secs(5);
        while pool.status().idle < 3 && Instant::now() < until {
            async_io::Timer::after(Duration::from_millis(2)).await;
        }
        assert_eq!(pool.status().idle, 3);
        // Idle connections time out and are replaced to keep min_idle.
        let until = Instant::now() + Duration::from_secs(5);
        while m.created() < 6 && Instant::now() < until {
            async_io::Timer::after(Duration::from_millis(5)).await;
        }
        assert!(m.created() >= 6, "reaped connections are replaced");
        assert!(pool.status().counters.closed_graceful >= 3);
        assert!(pool.status().size <= 6);
        pool.close().await;
    });
    assert_all_closed(&pool, &m);
}

#[test]
fn max_lifetime_retires_at_checkout() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = builder(&m, &rt)
        .max_lifetime(Duration::from_millis(20))
        .maintenance_interval(Duration::from_millis(5))
        .build()
        .unwrap();
    rt.block_on(async {
        assert_eq!(pool.get().await.unwrap().id, 1);
        async_io::Timer::after(Duration::from_millis(40)).await;
        // Expiry is measured on the actor's clock (advanced every maintenance interval): the
        // reaper or the next checkout retires the old connection.
        let c = pool.get().await.unwrap();
        assert!(c.id >= 2, "the old connection was retired, got {}", c.id);
        drop(c);
        pool.close().await;
    });
    assert_all_closed(&pool, &m);
}

#[test]
fn close_wakes_every_waiter_promptly() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = builder(&m, &rt)
        .max_size(2)
        .wait_timeout(None)
        .close_deadline(Duration::from_millis(50))
        .build()
        .unwrap();
    rt.block_on(async {
        let a = pool.get().await.unwrap();
        let b = pool.get().await.unwrap();
        let waiters: Vec<_> = (0..32)
            .map(|_| {
                let pool = pool.clone();
                rt.executor.spawn(async move {
                    let r = pool.get().await.map(|_| ());
                    (r, Instant::now())
                })
            })
            .collect();
        while pool.status().waiters < 32 {
            async_io::Timer::after(Duration::from_millis(1)).await;
        }
        let closing = Instant::now();
        let closer = {
            let pool = pool.clone();
            rt.executor.spawn(async move { pool.close().await })
        };
        for w in waiters {
            let (r, woke) = w.await;
            assert!(matches!(r, Err(Error::Closed)), "{r:?}");
            // Woken by the close: they have no wait timeout, and nothing is returned.
            assert!(woke - closing < Duration::from_secs(10));
        }
        assert!(matches!(pool.get().await, Err(Error::Closed)));
        drop((a, b));
        let report = closer.await;
        assert_eq!(report.checked_out, 0);
        assert!(report.is_complete());
    });
    assert_eq!(pool.state(), PoolState::Closed);
    assert_all_closed(&pool, &m);
}

#[test]
fn close_with_guards_out_counts_them_and_closes_them_later() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = builder(&m, &rt)
        .max_size(4)
        .close_deadline(Duration::from_millis(20))
        .build()
        .unwrap();
    let guards = rt.block_on(async {
        let g: Vec<_> = two(&pool).await;
        let idle = pool.get().await.unwrap();
        drop(idle);
        let report = pool.close().await;
        assert_eq!(report.checked_out, 2);
        assert_eq!(report.still_open(), 2);
        assert_eq!(report.counters.closed_graceful, 1);
        g
    });
    assert_eq!(m.closed(), 1);
    drop(guards);
    assert_all_closed(&pool, &m);
    assert_eq!(pool.status().counters.closed_sync, 2);
}

#[test]
fn guards_returned_during_close_are_closed_gracefully() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = builder(&m, &rt)
        .close_deadline(Duration::from_secs(5))
        .build()
        .unwrap();
    rt.block_on(async {
        let g = pool.get().await.unwrap();
        let holder = rt.executor.spawn(async move {
            async_io::Timer::after(Duration::from_millis(30)).await;
            drop(g);
        });
        let report = pool.close().await;
        holder.await;
        assert!(report.is_complete());
        assert_eq!(report.counters.closed_graceful, 1);
        assert!(report.elapsed >= Duration::from_millis(25));
    });
    assert_all_closed(&pool, &m);
}

#[test]
fn guard_dropped_while_panicking_is_closed_not_reused() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = builder(&m, &rt).build().unwrap();
    rt.block_on(async {
        let g = pool.get().await.unwrap();
        assert_eq!(g.id, 1);
        let t = std::thread::spawn(move || {
            let _g = g;
            std::panic::panic_any("a task panics while holding a connection");
        });
        assert!(t.join().is_err());
        let c = pool.get().await.unwrap();
        assert_eq!(c.id, 2, "the tainted connection is not handed out again");
        drop(c);
        pool.close().await;
    });
    assert_all_closed(&pool, &m);
}

#[test]
fn dropping_the_executor_closes_what_the_actor_held() {
    let m = Counting::new();
    let rt = ExecRuntime::new();
    let pool = builder(&m, &rt).max_size(4).build().unwrap();
    let out = rt.block_on(async {
        let g: Vec<_> = two(&pool).await;
        drop(pool.get().await.unwrap());
        g
    });
    // A slow creation is under way when the runtime goes.
    m.set_create_delay(Duration::from_secs(60));
    // Two waiters: one takes the idle connection, the other starts a creation that stalls.
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let pool = pool.clone();
            rt.executor.spawn(async move {
                let _held = pool.get().await;
                std::future::pending::<()>().await
            })
        })
        .collect();
    rt.block_on(async_io::Timer::after(Duration::from_millis(5)));
    assert_eq!(
        pool.status().size,
        4,
        "three connections and one creation under way"
    );
    drop(waiters);
    drop(rt);
    let status = pool.status();
    assert!(!status.actor_alive);
    assert_eq!(status.state, PoolState::Closed);
    assert_eq!(status.in_use, 2, "the test still holds two guards");
    assert!(matches!(
        futures_lite::future::block_on(pool.get()),
        Err(Error::RuntimeGone)
    ));
    let report = pool.close_blocking(Duration::from_secs(1));
    assert_eq!(report.cause, CloseCause::RuntimeGone);
    assert!(report.fallback);
    drop(out);
    assert_all_closed(&pool, &m);
    assert_eq!(m.created(), 3, "the stalled creation made nothing");
}

#[test]
fn close_blocking_falls_back_when_the_actor_is_not_polled() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = builder(&m, &rt)
        .close_deadline(Duration::from_secs(60))
        .build()
        .unwrap();
    let held = rt.block_on(async {
        let g: Vec<_> = two(&pool).await;
        g
    });
    drop(held);
    // Nobody runs the executor now: the actor is alive but never polled.
    let t = Instant::now();
    let report = pool.close_blocking(Duration::from_millis(50));
    // Its own 50 ms patience, not the pool's 60 s deadline.
    assert!(t.elapsed() < Duration::from_secs(20));
    assert!(report.fallback);
    assert_eq!(report.counters.closed_sync, 2);
    assert!(report.is_complete());
    assert_all_closed(&pool, &m);
    drop(rt);
    assert_all_closed(&pool, &m);
}

#[test]
fn close_is_idempotent_and_reports_the_same() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = builder(&m, &rt).build().unwrap();
    rt.block_on(async {
        drop(pool.get().await.unwrap());
        let (a, b) = futures_lite::future::zip(pool.close(), pool.close()).await;
        let c = pool.close().await;
        assert_eq!(a.counters, b.counters);
        assert_eq!(a.counters, c.counters);
        assert_eq!(a.elapsed, c.elapsed);
    });
    let d = pool.close_blocking(Duration::from_millis(1));
    assert_eq!(d.counters.created, 1);
    assert_all_closed(&pool, &m);
}

#[test]
fn last_handle_dropped_closes_without_blocking() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = builder(&m, &rt).build().unwrap();
    let g = rt.block_on(async {
        let (a, b) = futures_lite::future::zip(pool.get(), pool.get()).await;
        drop(a.unwrap());
        b.unwrap()
    });
    let watcher = pool.clone();
    drop(pool);
    assert_eq!(
        watcher.state(),
        PoolState::Running,
        "a handle is still alive"
    );
    let t = Instant::now();
    drop(watcher);
    // The drop starts the close and returns: it does not wait for it (a guard is out, the
    // close deadline is 10 s, and nothing runs the actor now).
    assert!(t.elapsed() < Duration::from_secs(5));
    // The actor finishes the close once polled; the guard returns into a closing pool.
    rt.block_on(async {
        async_io::Timer::after(Duration::from_millis(5)).await;
        drop(g);
        let until = Instant::now() + Duration::from_secs(5);
        while m.closed() < 2 && Instant::now() < until {
            async_io::Timer::after(Duration::from_millis(1)).await;
        }
        assert_eq!(m.closed(), 2, "{}", m.summary());
    });
    drop(rt);
    m.assert_balanced();
}

#[test]
fn broken_connections_are_closed_not_returned() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = builder(&m, &rt).build().unwrap();
    rt.block_on(async {
        drop(pool.get().await.unwrap());
        assert_eq!(pool.status().idle, 1);
        m.set_broken(true);
        let g = pool.get().await.unwrap();
        assert_eq!(g.id, 1);
        drop(g);
        // Closed through the actor, gracefully, instead of going back to the idle queue.
        let until = Instant::now() + Duration::from_secs(5);
        while m.closed() < 1 && Instant::now() < until {
            async_io::Timer::after(Duration::from_millis(1)).await;
        }
        assert_eq!(m.closed(), 1);
        assert_eq!(pool.status().idle, 0);
        m.set_broken(false);
        assert_eq!(pool.get().await.unwrap().id, 2);
        pool.close().await;
    });
    assert_all_closed(&pool, &m);
}

#[test]
fn detach_takes_a_connection_out_of_the_accounting() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = builder(&m, &rt).max_size(1).build().unwrap();
    let conn = rt.block_on(async {
        let g = pool.get().await.unwrap();
        let conn = Pooled::detach(g);
        // The slot is free again.
        let g2 = pool.get_timeout(Duration::from_secs(2)).await.unwrap();
        assert_eq!(g2.id, 2);
        drop(g2);
        let report = pool.close().await;
        assert_eq!(report.counters.detached, 1);
        assert!(report.is_complete());
        conn
    });
    assert_accounted(&pool.status().counters);
    // Closing a detached connection is the caller's business.
    gracepool::Manager::close(&m, conn).unwrap();
    m.assert_balanced();
}

#[test]
fn try_get_and_timeouts() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = builder(&m, &rt).max_size(1).build().unwrap();
    rt.block_on(async {
        assert!(matches!(pool.try_get().await, Err(Error::Exhausted)));
        // try_get asked the actor to grow: a connection appears.
        let g = pool.get().await.unwrap();
        assert!(matches!(pool.try_get().await, Err(Error::Exhausted)));
        let t = Instant::now();
        let r = pool.get_timeout(Duration::from_millis(30)).await;
        assert!(matches!(r, Err(Error::Timeout { waited, last_error: None, .. }) if waited >= Duration::from_millis(30)));
        // Its own 30 ms, not the default 30 s.
        assert!(t.elapsed() < Duration::from_secs(10));
        drop(g);
        assert!(pool.try_get().await.is_ok());
        pool.close().await;
    });
    assert_all_closed(&pool, &m);
}

#[test]
fn bad_configuration_is_a_typed_error() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let cases: Vec<(Builder<Counting>, ConfigError)> = vec![
        (builder(&m, &rt).max_size(0), ConfigError::MaxSizeZero),
        (
            builder(&m, &rt).max_size(2).min_idle(3),
            ConfigError::MinIdleAboveMax {
                min_idle: 3,
                max_size: 2,
            },
        ),
        (
            builder(&m, &rt).wait_timeout(Duration::ZERO),
            ConfigError::ZeroDuration("wait_timeout"),
        ),
        (
            builder(&m, &rt).create_timeout(Duration::ZERO),
            ConfigError::ZeroDuration("create_timeout"),
        ),
        (
            builder(&m, &rt).check_timeout(Duration::ZERO),
            ConfigError::ZeroDuration("check_timeout"),
        ),
        (
            builder(&m, &rt).idle_timeout(Duration::ZERO),
            ConfigError::ZeroDuration("idle_timeout"),
        ),
        (
            builder(&m, &rt).max_lifetime(Duration::ZERO),
            ConfigError::ZeroDuration("max_lifetime"),
        ),
        (
            builder(&m, &rt).maintenance_interval(Duration::ZERO),
            ConfigError::ZeroDuration("maintenance_interval"),
        ),
        (Pool::builder(m.clone()), ConfigError::NoRuntime),
    ];
    for (b, want) in cases {
        match b.build() {
            Err(Error::Config(got)) => {
                assert_eq!(got, want);
                let msg = Error::<gracepool_testkit::TestError>::Config(got).to_string();
                assert!(msg.starts_with("invalid pool configuration: "), "{msg}");
            }
            other => panic!("expected {want:?}, got {other:?}"),
        }
    }
    assert_eq!(m.created(), 0);
}

#[test]
fn spawn_failure_is_a_typed_error() {
    struct Refuses;
    impl gracepool::Runtime for Refuses {
        fn spawn(&self, _task: gracepool::BoxFuture) -> Result<(), gracepool::SpawnError> {
            Err(gracepool::SpawnError::new("runtime is shut down"))
        }
        fn sleep(&self, _d: Duration) -> gracepool::BoxFuture {
            Box::pin(std::future::pending())
        }
    }
    let m = Counting::new();
    let r = Pool::builder(m.clone()).runtime(Refuses).build();
    match r {
        Err(e @ Error::Spawn(_)) => assert!(e.to_string().contains("runtime is shut down")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn fail_fast_create_errors_reach_the_waiter_and_the_pool_recovers() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = builder(&m, &rt).fail_fast(true).build().unwrap();
    rt.block_on(async {
        m.set_create(Fault::Fail);
        match pool.get().await {
            Err(e @ Error::Backend(_)) => {
                assert!(std::error::Error::source(&e).is_some());
                assert!(e.to_string().contains("create failed"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        m.set_create(Fault::Panic);
        assert!(matches!(
            pool.get().await,
            Err(Error::ManagerPanicked {
                stage: Stage::Create
            })
        ));
        m.set_create(Fault::None);
        assert!(pool.get().await.is_ok());
        assert_eq!(pool.status().counters.create_failed, 2);
        pool.close().await;
    });
    assert_all_closed(&pool, &m);
}

#[test]
fn stalled_create_is_bounded_by_the_create_timeout() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = builder(&m, &rt)
        .create_timeout(Duration::from_millis(30))
        .wait_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    rt.block_on(async {
        m.set_create(Fault::Stall);
        // By default the caller keeps waiting while creation is retried; its timeout names
        // the create timeout as the reason.
        let r = pool.get().await;
        match &r {
            Err(Error::Timeout {
                last_error: Some(last),
                ..
            }) => assert!(
                matches!(
                    **last,
                    Error::ManagerTimeout {
                        stage: Stage::Create,
                        ..
                    }
                ),
                "{last:?}"
            ),
            other => panic!("{other:?}"),
        }
        m.set_create(Fault::None);
        assert!(pool.get().await.is_ok());
        pool.close().await;
    });
    assert_all_closed(&pool, &m);
}

#[test]
fn failing_or_stalling_checks_retire_the_connection_and_retry() {
    for fault in [Fault::Fail, Fault::Panic, Fault::Stall] {
        let (m, rt) = (Counting::new(), ExecRuntime::new());
        let pool = builder(&m, &rt)
            .check_timeout(Duration::from_millis(20))
            .wait_timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        rt.block_on(async {
            drop(pool.get().await.unwrap());
            assert_eq!(
                m.stats().checked.load(SeqCst),
                0,
                "a new connection is not checked"
            );
            m.set_check(fault);
            // The idle connection fails its check and is retired; the caller gets a new one,
            // made for it and handed straight over, so not checked.
            let g = pool
                .get()
                .await
                .unwrap_or_else(|e| panic!("{fault:?}: {e}"));
            assert_eq!(
                g.id, 2,
                "{fault:?}: a connection that failed its check is not reused"
            );
            assert_eq!(pool.status().counters.check_failed, 1);
            assert_eq!(m.stats().checked.load(SeqCst), 1);
            drop(g);
            // Back in the pool, it is checked before its next checkout: it fails too.
            let g = pool.get().await.unwrap();
            assert_eq!(g.id, 3, "{fault:?}");
            assert_eq!(pool.status().counters.check_failed, 2);
            drop(g);
            m.set_check(Fault::None);
            assert_eq!(pool.get().await.unwrap().id, 3);
            pool.close().await;
        });
        assert_all_closed(&pool, &m);
    }
}

#[test]
fn close_failures_are_counted_and_the_rest_still_close() {
    for panic in [false, true] {
        let (m, rt) = (Counting::new(), ExecRuntime::new());
        m.set_close_fails_every(3, panic);
        let pool = builder(&m, &rt).max_size(9).build().unwrap();
        rt.block_on(async {
            let mut held = Vec::new();
            for _ in 0..9 {
                held.push(pool.get().await.unwrap());
            }
            drop(held);
            let report = pool.close().await;
            assert_eq!(report.counters.close_failed, 3);
            assert_eq!(report.counters.closed_graceful, 6);
            assert!(report.is_complete());
        });
        assert_all_closed(&pool, &m);
    }
}

#[test]
fn stalled_shutdown_still_ends_in_close() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    m.set_shutdown(Fault::Stall);
    let pool = builder(&m, &rt)
        .shutdown_timeout(Duration::from_millis(20))
        .build()
        .unwrap();
    rt.block_on(async {
        drop(pool.get().await.unwrap());
        let report = pool.close().await;
        assert_eq!(report.counters.closed_sync, 1);
        assert!(report.is_complete());
    });
    assert_all_closed(&pool, &m);
}

#[test]
fn slow_goodbyes_at_close_run_side_by_side() {
    // Eight idle connections whose goodbyes never finish: each is cut at the shutdown
    // timeout. Said one after another they would take eight timeouts; the close must not
    // wait for them in turn.
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    m.set_shutdown(Fault::Stall);
    let limit = Duration::from_millis(200);
    let pool = builder(&m, &rt)
        .max_size(8)
        .shutdown_timeout(limit)
        .build()
        .unwrap();
    rt.block_on(async {
        let mut held = Vec::new();
        for _ in 0..8 {
            held.push(pool.get().await.unwrap());
        }
        drop(held);
        assert_eq!(pool.status().idle, 8);
        let start = Instant::now();
        let report = pool.close().await;
        let took = start.elapsed();
        assert_eq!(report.counters.closed_sync, 8, "{report:?}");
        assert!(report.is_complete());
        assert!(took >= limit, "{took:?}");
        assert!(took < limit * 6, "the goodbyes were said in turn: {took:?}");
    });
    assert_all_closed(&pool, &m);
}

#[test]
fn status_tracks_the_pool() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = builder(&m, &rt).max_size(5).build().unwrap();
    rt.block_on(async {
        let a = pool.get().await.unwrap();
        let b = pool.get().await.unwrap();
        drop(b);
        let s = pool.status();
        assert_eq!(
            (s.max_size, s.size, s.idle, s.in_use, s.waiters),
            (5, 2, 1, 1, 0)
        );
        assert_eq!(s.state, PoolState::Running);
        assert!(s.actor_alive);
        assert_eq!(s.counters.created, 2);
        drop(a);
        pool.close().await;
        let s = pool.status();
        assert_eq!((s.size, s.idle, s.in_use), (0, 0, 0));
        assert_eq!(s.state, PoolState::Closed);
    });
    assert_all_closed(&pool, &m);
}

#[test]
fn error_messages_say_what_to_do() {
    type E = Error<gracepool_testkit::TestError>;
    let closed: E = Error::Closed;
    assert_eq!(
        closed.to_string(),
        "pool is closed: get() after close() or after the last handle was dropped"
    );
    let gone: E = Error::RuntimeGone;
    assert!(gone
        .to_string()
        .contains("build a new pool on a live runtime"));
    let timeout: E = Error::Timeout {
        waited: Duration::from_millis(5),
        seen: None,
        last_error: None,
    };
    assert!(timeout.to_string().contains("raise max_size"));
    // All checked out: the message says so, and names the other cause (a silent server).
    let busy: E = Error::Timeout {
        waited: Duration::from_millis(5),
        seen: Some(Box::new(gracepool::Seen::new(8, 8, 8, 0, 12))),
        last_error: None,
    };
    let said = busy.to_string();
    assert!(
        said.contains("all 8 connections were checked out"),
        "{said}"
    );
    assert!(said.contains("stopped answering"), "{said}");
    assert!(said.contains("12 callers waiting"), "{said}");
    let outage: E = Error::Timeout {
        waited: Duration::from_millis(5),
        seen: None,
        last_error: Some(Arc::new(Error::Backend(gracepool_testkit::TestError(
            "create",
        )))),
    };
    let said = outage.to_string();
    assert!(said.contains("within 5ms"), "{said}");
    assert!(said.contains("test manager: create failed"), "{said}");
    let source = std::error::Error::source(&outage).expect("the creation error");
    assert!(source.to_string().contains("create failed"), "{source}");
}

#[test]
fn no_waiter_starves_under_contention() {
    // Waiters are woken in arrival order by the idle queue; a waiter woken when another has
    // already taken the connection queues again at the back, so the order is near-FIFO, not
    // exact. What must hold: while every task keeps asking, no task falls far behind.
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = builder(&m, &rt)
        .max_size(1)
        .wait_timeout(None)
        .build()
        .unwrap();
    let served = Arc::new(std::sync::Mutex::new(Vec::new()));
    const TASKS: usize = 8;
    const ROUNDS: usize = 50;
    rt.block_on(async {
        let held = pool.get().await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..TASKS {
            let (p, served) = (pool.clone(), served.clone());
            tasks.push(rt.executor.spawn(async move {
                for _ in 0..ROUNDS {
                    let g = p.get().await.unwrap();
                    served.lock().unwrap().push(i);
                    futures_lite::future::yield_now().await;
                    drop(g);
                }
            }));
            while pool.status().waiters < i + 1 {
                futures_lite::future::yield_now().await;
            }
        }
        drop(held);
        for t in tasks {
            t.await;
        }
        pool.close().await;
    });
    let served = served.lock().unwrap();
    assert_eq!(served.len(), TASKS * ROUNDS);
    // Replay the order: while all tasks are still asking, the most- and least-served differ
    // by at most a couple of turns.
    let mut counts = [0usize; TASKS];
    let mut widest = 0;
    for &i in served.iter() {
        counts[i] += 1;
        if counts.iter().all(|&c| c < ROUNDS) {
            let spread = counts.iter().max().unwrap() - counts.iter().min().unwrap();
            widest = widest.max(spread);
        }
    }
    assert!(
        widest <= 2,
        "a waiter fell {widest} turns behind: {served:?}"
    );
    assert_all_closed(&pool, &m);
}

#[test]
fn close_waits_for_a_connection_handed_to_a_waiter() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = builder(&m, &rt)
        .max_size(1)
        .close_deadline(Duration::from_secs(10))
        .build()
        .unwrap();
    rt.block_on(async {
        let g = pool.get().await.unwrap();
        let mut waiter = Box::pin(pool.get());
        assert!(
            futures_lite::future::poll_once(&mut waiter).await.is_none(),
            "queued"
        );
        // Handed to the waiter's place in the queue; the waiter has not run since.
        drop(g);
        let closer = rt.executor.spawn({
            let p = pool.clone();
            async move { p.close().await }
        });
        async_io::Timer::after(Duration::from_millis(30)).await;
        assert!(
            !closer.is_finished(),
            "the close must wait for the connection in the waiter's hands"
        );
        assert!(matches!(waiter.await, Err(Error::Closed)));
        let report = closer.await;
        assert!(report.is_complete(), "{report:?}");
        assert!(!report.fallback);
        assert_eq!(report.counters.closed_graceful, 1);
    });
    assert_all_closed(&pool, &m);
}

#[test]
fn a_caller_arriving_while_others_wait_queues_behind_them() {
    // A `get` that finds callers queued goes straight to the back of the queue: it is served
    // after them, in order, and counted as a wait like them.
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = builder(&m, &rt).max_size(1).build().unwrap();
    rt.block_on(async {
        let held = pool.get().await.unwrap();
        let before = pool.status().counters;
        let mut first = Box::pin(pool.get());
        assert!(futures_lite::future::poll_once(&mut first).await.is_none());
        let mut second = Box::pin(pool.get());
        assert!(futures_lite::future::poll_once(&mut second).await.is_none());
        assert_eq!(pool.status().waiters, 2);
        drop(held);
        // Handed to the first; the second, polled now, must not take it.
        assert!(futures_lite::future::poll_once(&mut second).await.is_none());
        let g = first.await.unwrap();
        assert_eq!(pool.status().waiters, 1);
        drop(g);
        let g = second.await.unwrap();
        let after = pool.status().counters;
        assert_eq!(after.gets - before.gets, 2, "{after:?}");
        assert_eq!(after.gets_waited - before.gets_waited, 2, "{after:?}");
        assert_eq!(pool.status().in_use, 1);
        drop(g);
        pool.close().await;
    });
    assert_all_closed(&pool, &m);
}

#[test]
fn a_connection_handed_to_a_waiter_counts_as_in_use_until_the_waiter_gives_it_back() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = builder(&m, &rt).max_size(1).build().unwrap();
    rt.block_on(async {
        let held = pool.get().await.unwrap();
        let gets = pool.status().counters.gets;
        let mut waiter = Box::pin(pool.get());
        assert!(futures_lite::future::poll_once(&mut waiter).await.is_none());
        drop(held);
        // Handed over; the waiter has not run since, and already holds it.
        let s = pool.status();
        assert_eq!((s.in_use, s.idle, s.waiters), (1, 0, 0), "{s:?}");
        // It gives up before it runs: the connection goes back, and no get is counted.
        drop(waiter);
        let s = pool.status();
        assert_eq!((s.in_use, s.idle, s.counters.gets), (0, 1, gets), "{s:?}");
        pool.close().await;
    });
    assert_all_closed(&pool, &m);
}
