//! Hooks: the builder's `after_create`, `before_checkout` and `after_return`, for every
//! manager — each run where the issue says, bounded, its failure and panic contained, every
//! connection still closed exactly once. A wrapper manager can do the first two as well (the
//! end of `create`, and `check`, which receives the connection's metrics), as the first test
//! shows. And the sink for creation failures that no caller receives; and permanent creation
//! errors, told to every waiter at once.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gracepool::{Error, Goodbye, Manager, Metrics, Pool, Stage, Unhealthy};
use gracepool_testkit::assert_accounted;
use gracepool_testkit::{Conn, Counting, ExecRuntime, Fault, TestError};

// ANCHOR: hooked
/// Any manager, with a setup step after each creation (say, `SET search_path`) and a rule
/// that may refuse a connection before it is handed out again.
struct Hooked<M> {
    inner: M,
    set_up: Arc<AtomicU64>,
    refuse: fn(&Conn, &Metrics) -> bool,
}

impl Manager for Hooked<Counting> {
    type Connection = Conn;
    type Error = TestError;

    async fn create(&self) -> Result<Conn, TestError> {
        let conn = self.inner.create().await?;
        // The post-create hook: runs once per connection, before anyone sees it.
        self.set_up.fetch_add(1, SeqCst);
        Ok(conn)
    }

    async fn check(&self, conn: &mut Conn, metrics: &Metrics) -> Result<(), Unhealthy<TestError>> {
        // The pre-checkout hook: may refuse, then the manager's own check.
        if (self.refuse)(conn, metrics) {
            return Err(Unhealthy::Closed);
        }
        self.inner.check(conn, metrics).await
    }

    fn is_broken(&self, conn: &mut Conn) -> bool {
        self.inner.is_broken(conn)
    }

    async fn shutdown(&self, conn: Conn) -> Goodbye<TestError> {
        self.inner.shutdown(conn).await
    }

    fn close(&self, conn: Conn) -> Result<(), TestError> {
        self.inner.close(conn)
    }
}
// ANCHOR_END: hooked

#[test]
fn post_create_and_pre_checkout_hooks_live_in_the_manager() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let set_up = Arc::new(AtomicU64::new(0));
    let hooked = Hooked {
        inner: m.clone(),
        set_up: set_up.clone(),
        // Refuse a connection used three times already.
        refuse: |_, metrics| metrics.checkouts() > 3,
    };
    let pool = Pool::builder(hooked).runtime(rt.handle()).build().unwrap();
    rt.block_on(async {
        let mut ids = Vec::new();
        for _ in 0..7 {
            ids.push(pool.get().await.unwrap().id);
        }
        // Each connection served three checkouts, then was refused and replaced.
        assert_eq!(ids, [1, 1, 1, 2, 2, 2, 3]);
        assert_eq!(set_up.load(SeqCst), 3, "one setup per connection");
        assert_eq!(pool.status().counters.check_failed, 2);
        pool.close().await;
    });
    m.assert_balanced();
}

#[test]
fn the_error_sink_sees_failures_no_caller_receives() {
    // Default: callers ride out failures, so the sink sees every one.
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    m.set_create(Fault::Fail);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let pool = Pool::builder(m.clone())
        .min_idle(1)
        .on_create_error({
            let seen = seen.clone();
            move |e: &Error<TestError>| seen.lock().unwrap().push(e.to_string())
        })
        .runtime(rt.handle())
        .build()
        .unwrap();
    rt.block_on(async {
        async_io::Timer::after(Duration::from_millis(100)).await;
        let n = seen.lock().unwrap().len();
        assert!(n >= 2, "{n} failures seen");
        assert!(seen.lock().unwrap()[0].contains("test manager: create failed"));
        assert_eq!(n as u64, pool.status().counters.create_failed);
        pool.close().await;
    });
    // Fail-fast: a failure handed to a waiting caller is not sent to the sink as well.
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    m.set_create(Fault::Fail);
    let sunk = Arc::new(AtomicU64::new(0));
    let pool = Pool::builder(m.clone())
        .fail_fast(true)
        .on_create_error({
            let sunk = sunk.clone();
            move |_: &Error<TestError>| {
                sunk.fetch_add(1, SeqCst);
            }
        })
        .runtime(rt.handle())
        .build()
        .unwrap();
    rt.block_on(async {
        assert!(matches!(pool.get().await.map(drop), Err(Error::Backend(_))));
        assert_eq!(sunk.load(SeqCst), 0);
        pool.close().await;
    });
}

/// A counter a hook bumps, and the pool's counters balanced at the end.
fn count() -> Arc<AtomicU64> {
    Arc::new(AtomicU64::new(0))
}

#[test]
fn after_create_runs_once_per_connection_wherever_it_is_made() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let ran = count();
    let seen_ids = Arc::new(Mutex::new(Vec::new()));
    let pool = Pool::builder(m.clone())
        .max_size(4)
        // The actor makes two up front; callers make the rest (or the actor, for waiters).
        .min_idle(2)
        .after_create({
            let (ran, seen_ids) = (ran.clone(), seen_ids.clone());
            move |conn: &mut gracepool_testkit::Conn, metrics: &Metrics| {
                let (ran, seen_ids) = (ran.clone(), seen_ids.clone());
                Box::pin(async move {
                    assert_eq!(
                        metrics.checkouts(),
                        0,
                        "a new connection was never checked out"
                    );
                    ran.fetch_add(1, SeqCst);
                    seen_ids.lock().unwrap().push(conn.id);
                    Ok(())
                })
            }
        })
        .runtime(rt.handle())
        .build()
        .unwrap();
    rt.block_on(async {
        let held: Vec<_> = futures_lite::future::zip(
            futures_lite::future::zip(pool.get(), pool.get()),
            futures_lite::future::zip(pool.get(), pool.get()),
        )
        .await
        .into_iter_all();
        assert_eq!(held.len(), 4);
        drop(held);
        // Checkouts of idle connections run no after-create hook.
        for _ in 0..10 {
            drop(pool.get().await.unwrap());
        }
        let report = pool.close().await;
        assert_eq!(report.counters.created, 4);
        assert_eq!(ran.load(SeqCst), 4, "once per connection");
        let mut ids = seen_ids.lock().unwrap().clone();
        ids.sort_unstable();
        assert_eq!(ids, [1, 2, 3, 4]);
        assert_accounted(&report.counters);
    });
    m.assert_balanced();
}

/// Flattens the four results of two zipped pairs.
trait AllOk<T> {
    fn into_iter_all(self) -> Vec<T>;
}

impl<T, E: std::fmt::Debug> AllOk<T>
    for ((Result<T, E>, Result<T, E>), (Result<T, E>, Result<T, E>))
{
    fn into_iter_all(self) -> Vec<T> {
        let ((a, b), (c, d)) = self;
        vec![a.unwrap(), b.unwrap(), c.unwrap(), d.unwrap()]
    }
}

#[test]
fn a_failing_after_create_hook_ends_the_new_connection_and_is_a_typed_error() {
    for fault in ["error", "panic", "stall"] {
        let (m, rt) = (Counting::new(), ExecRuntime::new());
        let pool = Pool::builder(m.clone())
            .fail_fast(true)
            .create_timeout(Duration::from_millis(100))
            .after_create(move |_conn, _metrics| {
                Box::pin(async move {
                    match fault {
                        "error" => Err("SET search_path failed".into()),
                        "panic" => panic!("the hook panicked on purpose"),
                        _ => std::future::pending().await,
                    }
                })
            })
            .runtime(rt.handle())
            .build()
            .unwrap();
        rt.block_on(async {
            let err = pool.get().await.map(drop).unwrap_err();
            match (fault, &err) {
                (
                    "error",
                    Error::Hook {
                        stage: Stage::AfterCreate,
                        error,
                    },
                ) => {
                    assert!(error.to_string().contains("search_path"), "{err}")
                }
                (
                    "panic",
                    Error::Hook {
                        stage: Stage::AfterCreate,
                        error,
                    },
                ) => {
                    assert!(error.to_string().contains("panicked on purpose"), "{err}")
                }
                (
                    "stall",
                    Error::ManagerTimeout {
                        stage: Stage::Create,
                        ..
                    },
                ) => {}
                _ => panic!("{fault}: unexpected error {err:?}"),
            }
            let c = pool.status().counters;
            // The rejected connection was never the pool's...
            assert_eq!(c.created, 0, "{fault}: {c:?}");
            assert_eq!(c.create_failed, 1, "{fault}: {c:?}");
            if fault != "stall" {
                assert_eq!(c.hook_failed, 1, "{fault}: {c:?}");
            }
            pool.close().await;
        });
        // ...and the manager made it and ended it, exactly once.
        assert_eq!(m.created(), 1, "{fault}");
        m.assert_balanced();
    }
}

#[test]
fn after_create_failures_are_retried_and_a_waiter_sees_the_last_one() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let fails_left = Arc::new(AtomicU64::new(3));
    let pool = Pool::builder(m.clone())
        .create_backoff(Duration::from_millis(1), Duration::from_millis(5))
        .after_create({
            let fails_left = fails_left.clone();
            move |_conn, _metrics| {
                let fail = fails_left
                    .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                Box::pin(async move {
                    if fail {
                        return Err("not yet".into());
                    }
                    Ok(())
                })
            }
        })
        .runtime(rt.handle())
        .build()
        .unwrap();
    rt.block_on(async {
        // Rides out three rejections (not fail-fast), then gets the fourth connection.
        let conn = pool.get().await.unwrap();
        assert_eq!(conn.id, 4);
        drop(conn);
        let report = pool.close().await;
        assert_eq!(report.counters.created, 1);
        assert_eq!(report.counters.hook_failed, 3);
        assert_accounted(&report.counters);
    });
    m.assert_balanced();
}

#[test]
fn before_checkout_runs_on_idle_checkouts_and_a_failure_hands_out_another() {
    for check_on_checkout in [true, false] {
        let (m, rt) = (Counting::new(), ExecRuntime::new());
        let ran = count();
        let pool = Pool::builder(m.clone())
            .check_on_checkout(check_on_checkout)
            .before_checkout({
                let ran = ran.clone();
                move |conn, metrics| {
                    ran.fetch_add(1, SeqCst);
                    // Refuse connection 1 on its second checkout.
                    let refuse = conn.id == 1 && metrics.checkouts() == 2;
                    Box::pin(async move {
                        if refuse {
                            return Err("session state is stale".into());
                        }
                        Ok(())
                    })
                }
            })
            .runtime(rt.handle())
            .build()
            .unwrap();
        rt.block_on(async {
            // Fresh from create: no hook.
            let first = pool.get().await.unwrap();
            assert_eq!((first.id, ran.load(SeqCst)), (1, 0));
            drop(first);
            // Idle: the hook runs, refuses connection 1, and the caller gets a new one.
            let second = pool.get().await.unwrap();
            assert_eq!(second.id, 2);
            assert_eq!(ran.load(SeqCst), 1);
            drop(second);
            let third = pool.get().await.unwrap();
            assert_eq!((third.id, ran.load(SeqCst)), (2, 2));
            drop(third);
            let c = pool.status().counters;
            assert_eq!((c.check_failed, c.hook_failed), (1, 1), "{c:?}");
            assert_eq!(
                m.stats().checked.load(SeqCst),
                if check_on_checkout { 2 } else { 0 },
                "the manager's check runs only with check_on_checkout"
            );
            let report = pool.close().await;
            assert_accounted(&report.counters);
        });
        m.assert_balanced();
    }
}

#[test]
fn a_stalled_or_panicking_before_checkout_is_bounded_and_contained() {
    for panics in [false, true] {
        let (m, rt) = (Counting::new(), ExecRuntime::new());
        let pool = Pool::builder(m.clone())
            .check_timeout(Duration::from_millis(50))
            .before_checkout(move |conn, _metrics| {
                let stale = conn.id == 1;
                Box::pin(async move {
                    if stale && panics {
                        panic!("before_checkout panicked on purpose");
                    }
                    if stale {
                        std::future::pending::<()>().await;
                    }
                    Ok(())
                })
            })
            .runtime(rt.handle())
            .build()
            .unwrap();
        rt.block_on(async {
            drop(pool.get().await.unwrap());
            let started = std::time::Instant::now();
            let conn = pool.get().await.unwrap();
            assert_eq!(conn.id, 2);
            assert!(started.elapsed() < Duration::from_secs(5));
            drop(conn);
            let report = pool.close().await;
            assert_eq!(report.counters.check_failed, 1);
            assert_accounted(&report.counters);
        });
        m.assert_balanced();
    }
}

#[test]
fn after_return_runs_before_the_connection_is_idle_again() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let ran = count();
    let pool = Pool::builder(m.clone())
        .max_size(1)
        .after_return({
            let ran = ran.clone();
            move |_conn, metrics| {
                ran.fetch_add(1, SeqCst);
                let checkouts = metrics.checkouts();
                Box::pin(async move {
                    // A reset that takes a moment, as a round trip would.
                    async_io::Timer::after(Duration::from_millis(5)).await;
                    if checkouts == 3 {
                        return Err("ROLLBACK failed".into());
                    }
                    Ok(())
                })
            }
        })
        .runtime(rt.handle())
        .build()
        .unwrap();
    rt.block_on(async {
        for round in 1..=4u64 {
            let conn = pool.get().await.unwrap();
            // The hook of the previous return finished before this checkout.
            assert_eq!(ran.load(SeqCst), round - 1);
            drop(conn);
            // In use until its hook is done.
            let s = pool.status();
            assert_eq!((s.in_use, s.idle), (1, 0), "{s:?}");
        }
        gracepool_testkit::until_status(&pool, "the last hook done", |s| s.idle == 1).await;
        let c = pool.status().counters;
        // The third return's hook failed: that connection was closed as broken.
        assert_eq!(
            (c.hook_failed, c.closed_broken, c.created),
            (1, 1, 2),
            "{c:?}"
        );
        let report = pool.close().await;
        assert_accounted(&report.counters);
        assert_eq!(ran.load(SeqCst), 4);
    });
    m.assert_balanced();
}

#[test]
fn a_stalled_after_return_is_bounded_and_a_close_under_it_accounts_for_everything() {
    // Bounded by the check timeout.
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = Pool::builder(m.clone())
        .check_timeout(Duration::from_millis(30))
        .after_return(|_conn, _metrics| Box::pin(std::future::pending()))
        .runtime(rt.handle())
        .build()
        .unwrap();
    rt.block_on(async {
        drop(pool.get().await.unwrap());
        gracepool_testkit::until_status(&pool, "the stalled hook timed out", |s| {
            s.counters.hook_failed == 1 && s.size == 0
        })
        .await;
        pool.close().await;
    });
    m.assert_balanced();

    // No bound but the close: the close deadline ends it, the connection is closed once.
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = Pool::builder(m.clone())
        .check_timeout(None)
        .close_deadline(Duration::from_millis(50))
        .after_return(|_conn, _metrics| Box::pin(std::future::pending()))
        .runtime(rt.handle())
        .build()
        .unwrap();
    rt.block_on(async {
        drop(pool.get().await.unwrap());
        let report = pool.close().await;
        assert!(report.is_complete(), "{report:?}");
        assert_accounted(&report.counters);
    });
    m.assert_balanced();

    // The runtime dropped while the hook runs: the fallback closes it.
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = Pool::builder(m.clone())
        .check_timeout(None)
        .after_return(|_conn, _metrics| Box::pin(std::future::pending()))
        .runtime(rt.handle())
        .build()
        .unwrap();
    rt.block_on(async {
        drop(pool.get().await.unwrap());
        gracepool_testkit::until_status(&pool, "the hook under way", |s| s.in_use == 1).await;
    });
    drop(rt);
    let c = pool.status().counters;
    assert_accounted(&c);
    drop(pool);
    m.assert_balanced();
}

#[test]
fn a_permanent_creation_error_reaches_every_waiter_at_once() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    m.set_create(Fault::Fail);
    m.set_permanent(true);
    // Creation takes a moment, so that callers queue behind the first attempt.
    m.set_create_delay(Duration::from_millis(20));
    let pool = Pool::builder(m.clone())
        .wait_timeout(Duration::from_secs(30))
        .runtime(rt.handle())
        .build()
        .unwrap();
    rt.block_on(async {
        let started = std::time::Instant::now();
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                let pool = pool.clone();
                rt.executor.spawn(async move { pool.get().await.map(drop) })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await);
        }
        for r in &results {
            match r {
                Err(Error::Permanent(e)) => assert_eq!(e.0, "create"),
                other => panic!("expected a permanent error, got {other:?}"),
            }
        }
        // Not the 30 s wait timeout: at once, or within one backoff step for a later caller.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        pool.close().await;
    });
    // The default: a transient error is ridden out until the wait timeout.
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    m.set_create(Fault::Fail);
    let pool = Pool::builder(m.clone())
        .wait_timeout(Duration::from_millis(100))
        .runtime(rt.handle())
        .build()
        .unwrap();
    rt.block_on(async {
        match pool.get().await.map(drop) {
            Err(Error::Timeout {
                last_error: Some(_),
                ..
            }) => {}
            other => panic!("expected a timeout, got {other:?}"),
        }
        pool.close().await;
    });
}
