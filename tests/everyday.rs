//! The pool's everyday life under a failing, slow or restarting backend: creation backs off,
//! callers ride out a short outage, `min_idle` is exact, idle time is real time, `get()` keeps
//! to its wait timeout, and a failing health check causes no storm.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gracepool::{Builder, Error, Pool, Pooled};
use gracepool_testkit::{assert_accounted, eventually, Counting, ExecRuntime, Fault};

fn builder(m: &Counting, rt: &ExecRuntime) -> Builder<Counting> {
    Pool::builder(m.clone()).runtime(rt.handle())
}

fn assert_all_closed(pool: &Pool<Counting>, m: &Counting) {
    let status = pool.status();
    assert_accounted(&status.counters);
    assert_eq!(status.counters.open(), 0, "{status:?}");
    m.assert_balanced();
}

async fn sleep(d: Duration) {
    async_io::Timer::after(d).await;
}

/// CPU time this process has used (user + system), from /proc.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("Linux /proc");
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').expect("a command name") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

#[test]
fn creation_backs_off_and_the_actor_keeps_serving() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = builder(&m, &rt)
        .max_size(4)
        .min_idle(2)
        .idle_timeout(Duration::from_millis(200))
        .maintenance_interval(Duration::from_millis(50))
        .build()
        .unwrap();
    rt.block_on(async {
        // Two connections, one checked out: then the backend goes away.
        assert!(eventually(Duration::from_secs(2), || pool.status().idle == 2).await);
        let held = pool.get().await.unwrap();
        assert!(eventually(Duration::from_secs(2), || pool.status().idle == 2).await);
        m.set_create(Fault::Fail);
        let failed_before = pool.status().counters.create_failed;
        let cpu_before = cpu_time();
        let started = Instant::now();
        // The outage lasts a second; meanwhile the actor still reaps idle connections (its
        // tick), and closes a broken connection returned to it (its mailbox).
        sleep(Duration::from_millis(400)).await;
        m.set_broken(true);
        drop(held);
        let closed_at_return = pool.status().counters.closed_graceful;
        assert!(
            eventually(Duration::from_millis(300), || {
                pool.status().counters.closed_graceful > closed_at_return
            })
            .await,
            "a broken connection returned during the outage is closed"
        );
        assert!(
            eventually(Duration::from_millis(600), || pool.status().idle == 0).await,
            "idle connections are still reaped during the outage: {:?}",
            pool.status()
        );
        let left = Duration::from_secs(1).saturating_sub(started.elapsed());
        sleep(left).await;
        let attempts = pool.status().counters.create_failed - failed_before;
        let cpu = cpu_time().saturating_sub(cpu_before);
        // Backoff from 10 ms doubling to 1 s: about seven attempts in the first second.
        assert!(
            (2..=20).contains(&attempts),
            "{attempts} create calls in one second of outage"
        );
        // CPU time, not wall time: a loaded machine stretches it little. A pool that spun
        // would burn a whole core, a second of it.
        assert!(
            cpu < Duration::from_millis(700),
            "the outage cost {cpu:?} of CPU"
        );
        // The backend comes back: min_idle is restored without anyone asking.
        m.set_create(Fault::None);
        m.set_broken(false);
        assert!(eventually(Duration::from_secs(3), || pool.status().idle == 2).await);
        // Close is prompt during or after an outage.
        m.set_create(Fault::Fail);
        let report = pool.close().await;
        assert!(report.is_complete());
        // Nothing to wait for: well within the 10 s close deadline.
        assert!(report.elapsed < Duration::from_secs(5), "{report:?}");
    });
    assert_all_closed(&pool, &m);
}

#[test]
fn callers_ride_out_a_short_outage() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = builder(&m, &rt)
        .max_size(4)
        .wait_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let errors = Arc::new(AtomicU64::new(0));
    let served = Arc::new(AtomicU64::new(0));
    rt.block_on(async {
        let stop = Instant::now() + Duration::from_millis(900);
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (pool, errors, served) = (pool.clone(), errors.clone(), served.clone());
                rt.executor.spawn(async move {
                    while Instant::now() < stop {
                        match pool.get().await {
                            Ok(conn) => {
                                served.fetch_add(1, SeqCst);
                                sleep(Duration::from_millis(2)).await;
                                drop(conn);
                            }
                            Err(e) => {
                                errors.fetch_add(1, SeqCst);
                                eprintln!("get() failed during the outage: {e}");
                            }
                        }
                    }
                })
            })
            .collect();
        // A restart: every connection breaks, and new ones are refused for 250 ms.
        sleep(Duration::from_millis(200)).await;
        m.set_create(Fault::Fail);
        m.set_broken(true);
        m.set_check(Fault::Fail);
        sleep(Duration::from_millis(250)).await;
        m.set_create(Fault::None);
        m.set_broken(false);
        m.set_check(Fault::None);
        for t in tasks {
            t.await;
        }
        assert!(
            pool.status().counters.create_failed > 0,
            "the outage was felt"
        );
        pool.close().await;
    });
    assert_eq!(
        errors.load(SeqCst),
        0,
        "get() failed during a 250 ms outage"
    );
    assert!(served.load(SeqCst) > 100);
    assert_all_closed(&pool, &m);
}

#[test]
fn bad_credentials_still_reach_the_caller() {
    // Default: as the source of the timeout.
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    m.set_create(Fault::Fail);
    let pool = builder(&m, &rt)
        .wait_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    rt.block_on(async {
        let started = Instant::now();
        let Err(e) = pool.get().await else {
            panic!("no connection can be made")
        };
        assert!(started.elapsed() < Duration::from_secs(1));
        match &e {
            Error::Timeout {
                last_error: Some(last),
                ..
            } => assert!(matches!(**last, Error::Backend(_)), "{last:?}"),
            other => panic!("{other:?}"),
        }
        let said = e.to_string();
        assert!(said.contains("within"), "{said}");
        assert!(said.contains("test manager: create failed"), "{said}");
        let source = std::error::Error::source(&e).expect("the creation error is the source");
        assert!(source.to_string().contains("create failed"));
        pool.close().await;
    });
    // Fail-fast: at once, as the error itself.
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    m.set_create(Fault::Fail);
    let pool = builder(&m, &rt).fail_fast(true).build().unwrap();
    rt.block_on(async {
        let started = Instant::now();
        let r = pool.get().await.map(drop);
        assert!(matches!(r, Err(Error::Backend(_))), "{r:?}");
        // Not the 30 s wait timeout.
        assert!(started.elapsed() < Duration::from_secs(10));
        pool.close().await;
    });
}

#[test]
fn min_idle_is_exact_after_any_checkouts_and_returns() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let (max, min_idle) = (5, 2);
    let pool = builder(&m, &rt)
        .max_size(max)
        .min_idle(min_idle)
        // No maintenance tick to rescue a count that is one short.
        .maintenance_interval(Duration::from_secs(600))
        .build()
        .unwrap();
    let mut rng = fastrand::Rng::with_seed(9);
    rt.block_on(async {
        let mut held: Vec<Pooled<Counting>> = Vec::new();
        let holds = |held: &Vec<Pooled<Counting>>| {
            let s = pool.status();
            s.idle >= min_idle.min(max - held.len())
        };
        assert!(eventually(Duration::from_secs(2), || holds(&held)).await);
        for step in 0..200 {
            if rng.bool() && held.len() < max {
                // A burst of callers at once: some of them wait for a connection made for
                // them, which must not count toward min_idle.
                let burst = rng.usize(1..=max - held.len());
                let gets: Vec<_> = (0..burst)
                    .map(|_| {
                        let pool = pool.clone();
                        rt.executor.spawn(async move { pool.get().await.unwrap() })
                    })
                    .collect();
                for get in gets {
                    held.push(get.await);
                }
            } else if !held.is_empty() {
                held.swap_remove(rng.usize(..held.len()));
            }
            assert!(
                eventually(Duration::from_secs(2), || holds(&held)).await,
                "step {step}: {} out, {:?}",
                held.len(),
                pool.status()
            );
        }
        // The case that was one short: three checkouts on max 5, min_idle 2.
        held.clear();
        let three = [
            pool.get().await.unwrap(),
            pool.get().await.unwrap(),
            pool.get().await.unwrap(),
        ];
        assert!(
            eventually(Duration::from_secs(2), || pool.status().idle == 2).await,
            "{:?}",
            pool.status()
        );
        assert_eq!(pool.status().size, 5);
        drop(three);
        pool.close().await;
    });
    assert_all_closed(&pool, &m);
}

#[test]
fn idle_time_is_real_time() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let (idle_timeout, interval) = (Duration::from_millis(300), Duration::from_millis(300));
    let pool = builder(&m, &rt)
        .max_size(1)
        .idle_timeout(idle_timeout)
        .maintenance_interval(interval)
        .build()
        .unwrap();
    rt.block_on(async {
        // Used every 30 ms for 1.5 s: never idle for long, so never reaped, although no event
        // wakes the actor between its ticks.
        let until = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < until {
            let conn = pool.get().await.unwrap();
            assert_eq!(
                conn.id, 1,
                "a connection in use every 30 ms was reaped as idle"
            );
            drop(conn);
            sleep(Duration::from_millis(30)).await;
        }
        // Left alone: reaped after the idle timeout, and no later than one interval after.
        drop(pool.get().await.unwrap());
        let returned = Instant::now();
        assert!(
            eventually(Duration::from_secs(3), || pool
                .status()
                .counters
                .closed_graceful
                == 1)
            .await
        );
        let idle_for = returned.elapsed();
        assert!(idle_for >= idle_timeout, "reaped after {idle_for:?}");
        assert!(
            idle_for <= idle_timeout + interval + Duration::from_millis(150),
            "reaped only after {idle_for:?}"
        );
        pool.close().await;
    });
    assert_all_closed(&pool, &m);
}

/// A return reads no clock: it is stamped with the actor's coarse clock and confirmed at the
/// next maintenance tick, whose time is after the real return. With an idle timeout much
/// shorter than the interval, the actor wakes for the timeout rather than at the tick after
/// it, so every connection is still reaped within one interval of its timeout.
#[test]
fn an_idle_timeout_shorter_than_the_interval_still_holds_within_one_interval() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let (idle_timeout, interval) = (Duration::from_millis(50), Duration::from_millis(400));
    let pool = builder(&m, &rt)
        .max_size(4)
        .idle_timeout(idle_timeout)
        .maintenance_interval(interval)
        .build()
        .unwrap();
    rt.block_on(async {
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(pool.get().await.unwrap());
        }
        // Returned 100 ms apart, so the returns fall at every phase of the actor's ticks.
        let first_return = Instant::now();
        let mut last_return = first_return;
        while let Some(conn) = held.pop() {
            drop(conn);
            last_return = Instant::now();
            if !held.is_empty() {
                sleep(Duration::from_millis(100)).await;
            }
        }
        let pool = &pool;
        let reaped = |n: u64| move || pool.status().counters.closed_idle_timeout >= n;
        assert!(eventually(Duration::from_secs(5), reaped(1)).await);
        let first_reap = Instant::now();
        assert!(eventually(Duration::from_secs(5), reaped(4)).await);
        let last_reap = Instant::now();
        assert!(
            first_reap - last_return >= idle_timeout,
            "reaped {:?} after its return",
            first_reap - last_return
        );
        let slack = Duration::from_millis(150);
        assert!(
            last_reap - first_return <= idle_timeout + interval + slack,
            "the first one returned was reaped only {:?} after",
            last_reap - first_return
        );
        pool.close().await;
    });
    assert_all_closed(&pool, &m);
}

#[test]
fn get_keeps_to_its_wait_timeout_when_the_check_hangs() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = builder(&m, &rt)
        .max_size(1)
        .check_timeout(Duration::from_secs(60))
        .wait_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    rt.block_on(async {
        // The idle fast path: a connection is there, its check hangs.
        drop(pool.get().await.unwrap());
        m.set_check(Fault::Stall);
        let started = Instant::now();
        let r = pool.get().await.map(drop);
        let took = started.elapsed();
        assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
        // The 300 ms wait timeout, not the 60 s check timeout.
        assert!(took < Duration::from_secs(20), "get() took {took:?}");
        // The waiting path: the connection comes back while the caller waits, then hangs.
        let held = pool.get().await.unwrap(); // new, not checked
        let later = async {
            sleep(Duration::from_millis(100)).await;
            drop(held);
        };
        let started = Instant::now();
        let (r, ()) = futures_lite::future::zip(pool.get(), later).await;
        let took = started.elapsed();
        assert!(matches!(r.map(drop), Err(Error::Timeout { .. })));
        // The 300 ms wait timeout, not the 60 s check timeout.
        assert!(took < Duration::from_secs(20), "get() took {took:?}");
        m.set_check(Fault::None);
        pool.close().await;
    });
    assert_all_closed(&pool, &m);
}

#[test]
fn a_check_that_always_fails_causes_no_storm() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = builder(&m, &rt)
        .max_size(8)
        .min_idle(8)
        .wait_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    rt.block_on(async {
        assert!(eventually(Duration::from_secs(2), || pool.status().idle == 8).await);
        m.set_check(Fault::Fail);
        let (created, checked) = (m.created(), m.stats().checked.load(SeqCst));
        let conn = pool.get().await.unwrap();
        let checks = m.stats().checked.load(SeqCst) - checked;
        assert!(checks <= 3, "{checks} checks for one get()");
        drop(conn);
        // Every connection the get() met was closed and replaced once, at most.
        sleep(Duration::from_millis(100)).await;
        let made = m.created() - created;
        assert!(made <= 9, "{made} connections created for one get()");
        m.set_check(Fault::None);
        pool.close().await;
    });
    assert_all_closed(&pool, &m);
}

#[test]
fn recovery_follows_the_length_of_the_outage() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = builder(&m, &rt).max_size(8).build().unwrap();
    rt.block_on(async {
        // Eight callers wait at once, so creations fail in waves of eight: the pause doubles
        // once a wave, not once a failure (which would reach the 1 s cap at the first wave).
        m.set_create(Fault::Fail);
        let outage = Duration::from_millis(150);
        let started = Instant::now();
        let gets: Vec<_> = (0..8)
            .map(|_| {
                let pool = pool.clone();
                rt.executor.spawn(async move { pool.get().await.map(drop) })
            })
            .collect();
        sleep(outage).await;
        m.set_create(Fault::None);
        for get in gets {
            get.await.unwrap();
        }
        let took = started.elapsed();
        assert!(
            took < outage * 2 + Duration::from_millis(150),
            "recovered {took:?} after a {outage:?} outage"
        );
        pool.close().await;
    });
    assert_all_closed(&pool, &m);
}

#[test]
fn max_lifetime_is_real_time_within_one_interval() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let (lifetime, interval) = (Duration::from_millis(300), Duration::from_millis(200));
    let pool = builder(&m, &rt)
        .max_size(1)
        .max_lifetime(lifetime)
        .maintenance_interval(interval)
        .build()
        .unwrap();
    rt.block_on(async {
        // In use all the time: connection 1 is replaced after its lifetime, never before, and
        // no later than one maintenance interval after (the check at checkout reads the
        // actor's clock, which is at most one interval old).
        let born = Instant::now();
        let mut replaced_after = None;
        while born.elapsed() < Duration::from_secs(2) {
            let conn = pool.get().await.unwrap();
            if conn.id != 1 {
                replaced_after = Some(born.elapsed());
                break;
            }
            assert!(born.elapsed() <= lifetime + interval + Duration::from_millis(150));
            drop(conn);
            sleep(Duration::from_millis(10)).await;
        }
        let after = replaced_after.expect("connection 1 was replaced");
        assert!(after >= lifetime, "replaced after {after:?}");
        assert!(
            after <= lifetime + interval + Duration::from_millis(150),
            "{after:?}"
        );
        pool.close().await;
    });
    assert_all_closed(&pool, &m);
}
