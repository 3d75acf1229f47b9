//! Storm control: how a pool treats the server it shares with a fleet. Creations in flight are
//! capped (`max_creating`); `min_idle` is made over a window, not in one instant
//! (`prewarm_window`); a server that says it is full is asked once at a time and less often
//! (`server_full_backoff`); idle connections nobody
//! needed for a whole window are given back (`surplus_window`).
//!
//! A fresh pool makes its first connection alone. Each check here was made to fail once: the cap removed from `grow` (the in-flight peak
//! reached 40), the pacing removed (all eight made within a millisecond), full errors treated
//! as ordinary (8 attempts ran at once on the full server), the surplus rule
//! switched off (nothing given back), the first-connection rule off (the other seven started
//! at once).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gracepool::{Manager, Pool};
use gracepool_testkit::{assert_accounted, eventually, ExecRuntime};

#[derive(Debug)]
struct Refused(&'static str);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Refused {}

/// A manager that records when each creation starts, how many run at once, and can play a
/// full server.
#[derive(Clone, Default)]
struct Server {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    attempts: AtomicU64,
    created: AtomicU64,
    closed: AtomicU64,
    full: AtomicBool,
    /// Creation takes this long (milliseconds).
    delay_ms: AtomicU64,
    started: Mutex<Vec<Instant>>,
}

impl Manager for Server {
    type Connection = u64;
    type Error = Refused;

    async fn create(&self) -> Result<u64, Refused> {
        let s = &self.inner;
        s.attempts.fetch_add(1, SeqCst);
        s.started.lock().unwrap().push(Instant::now());
        let now = s.in_flight.fetch_add(1, SeqCst) + 1;
        s.peak.fetch_max(now, SeqCst);
        let delay = s.delay_ms.load(SeqCst);
        if delay > 0 {
            async_io::Timer::after(Duration::from_millis(delay)).await;
        }
        s.in_flight.fetch_sub(1, SeqCst);
        if s.full.load(SeqCst) {
            return Err(Refused("too many clients already"));
        }
        Ok(s.created.fetch_add(1, SeqCst))
    }

    fn is_server_full(&self, error: &Refused) -> bool {
        error.0.contains("too many clients")
    }

    fn close(&self, _conn: u64) -> Result<(), Refused> {
        self.inner.closed.fetch_add(1, SeqCst);
        Ok(())
    }
}

#[test]
fn creations_in_flight_never_pass_max_creating() {
    let (m, rt) = (Server::default(), ExecRuntime::new());
    m.inner.delay_ms.store(50, SeqCst);
    let pool = Pool::builder(m.clone())
        .max_size(40)
        .max_creating(4)
        .runtime(rt.handle())
        .build()
        .unwrap();
    rt.block_on(async {
        // 40 callers at once on an empty pool: each would create, or wait for the actor to.
        let gets: Vec<_> = (0..40)
            .map(|_| {
                let pool = pool.clone();
                rt.executor.spawn(async move {
                    let conn = pool.get().await.expect("served");
                    async_io::Timer::after(Duration::from_millis(20)).await;
                    drop(conn);
                })
            })
            .collect();
        for g in gets {
            g.await;
        }
        let report = pool.close().await;
        assert_accounted(&report.counters);
    });
    let peak = m.inner.peak.load(SeqCst);
    assert!(peak <= 4, "{peak} creations ran at once; the cap is 4");
    assert!(
        peak >= 2,
        "the test never had creations in parallel ({peak})"
    );
    assert_eq!(m.inner.created.load(SeqCst), m.inner.closed.load(SeqCst));
}

#[test]
fn a_fresh_pool_makes_its_first_connection_alone() {
    let (m, rt) = (Server::default(), ExecRuntime::new());
    m.inner.delay_ms.store(50, SeqCst);
    let pool = Pool::builder(m.clone())
        .max_size(8)
        .runtime(rt.handle())
        .build()
        .unwrap();
    rt.block_on(async {
        // Eight callers at once on a fresh pool: the first creation goes alone (a server that
        // refuses is asked once, not eight times); once it made one, the rest go together.
        let gets: Vec<_> = (0..8)
            .map(|_| {
                let pool = pool.clone();
                rt.executor.spawn(async move {
                    let conn = pool.get().await.expect("served");
                    async_io::Timer::after(Duration::from_millis(100)).await;
                    drop(conn);
                })
            })
            .collect();
        for g in gets {
            g.await;
        }
        pool.close().await;
    });
    let started = m.inner.started.lock().unwrap().clone();
    assert!(started.len() >= 2, "{} creations", started.len());
    for later in &started[1..] {
        assert!(
            *later - started[0] >= Duration::from_millis(45),
            "a second creation started {:?} after the first, before it was done",
            *later - started[0]
        );
    }
    assert!(
        m.inner.peak.load(SeqCst) >= 2,
        "the rest were not made together"
    );
}

/// The test executor, saying that every caller runs on it: a `get` that finds nothing idle
/// makes its connection itself.
#[derive(Clone)]
struct Here(gracepool_testkit::ExecHandle);

impl gracepool::Runtime for Here {
    fn spawn(&self, task: gracepool::BoxFuture) -> Result<(), gracepool::SpawnError> {
        self.0.spawn(task)
    }

    fn sleep(&self, duration: Duration) -> gracepool::BoxFuture {
        self.0.sleep(duration)
    }

    fn is_current(&self) -> bool {
        true
    }
}

#[test]
fn callers_queued_behind_a_fresh_pools_first_creation_are_not_left_to_the_tick() {
    let (m, rt) = (Server::default(), ExecRuntime::new());
    m.inner.delay_ms.store(30, SeqCst);
    let pool = Pool::builder(m.clone())
        .max_size(8)
        // No tick in the test's time: only the end of the first creation can start the rest.
        .maintenance_interval(Duration::from_secs(60))
        .runtime(Here(rt.handle()))
        .build()
        .unwrap();
    rt.block_on(async {
        // The first caller creates alone, the seven others queue; each holds its connection
        // for 200 ms, so one connection cannot serve them all in time.
        let gets: Vec<_> = (0..8)
            .map(|_| {
                let pool = pool.clone();
                rt.executor.spawn(async move {
                    let conn = pool
                        .get_timeout(Duration::from_secs(5))
                        .await
                        .expect("served");
                    async_io::Timer::after(Duration::from_millis(200)).await;
                    drop(conn);
                })
            })
            .collect();
        assert!(
            eventually(Duration::from_secs(3), || m.inner.created.load(SeqCst) >= 4).await,
            "the queued callers waited for the maintenance tick: {:?}",
            pool.status()
        );
        for g in gets {
            g.await;
        }
        pool.close().await;
    });
}

#[test]
fn min_idle_is_made_over_the_prewarm_window() {
    let (m, rt) = (Server::default(), ExecRuntime::new());
    let pool = Pool::builder(m.clone())
        .max_size(8)
        .min_idle(8)
        .prewarm_window(Duration::from_millis(400))
        .runtime(rt.handle())
        .build()
        .unwrap();
    rt.block_on(async {
        gracepool_testkit::until_status(&pool, "min_idle made", |s| s.idle == 8).await;
        pool.close().await;
    });
    let started = m.inner.started.lock().unwrap().clone();
    assert_eq!(started.len(), 8);
    // One every 400 / 8 = 50 ms, the first at once: the last starts 350 ms after the first
    // at the earliest (a lower bound: a slow machine only spreads them more).
    let spread = started[7] - started[0];
    assert!(
        spread >= Duration::from_millis(340),
        "eight min_idle creations spread over {spread:?}, not the 400 ms window"
    );
    for pair in started.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(45),
            "two min_idle creations {:?} apart",
            pair[1] - pair[0]
        );
    }
}

#[test]
fn callers_are_not_held_back_by_the_prewarm_window() {
    let (m, rt) = (Server::default(), ExecRuntime::new());
    let pool = Pool::builder(m.clone())
        .max_size(8)
        .min_idle(8)
        .prewarm_window(Duration::from_secs(60))
        .runtime(rt.handle())
        .build()
        .unwrap();
    rt.block_on(async {
        // A minute's window makes one min_idle connection a few seconds; callers who need
        // more get them at once.
        let mut held = Vec::new();
        for _ in 0..6 {
            held.push(
                pool.get_timeout(Duration::from_secs(2))
                    .await
                    .expect("served"),
            );
        }
        assert_eq!(held.len(), 6);
        drop(held);
        pool.close().await;
    });
}

#[test]
fn a_full_server_is_asked_once_at_a_time_and_less_often() {
    let (m, rt) = (Server::default(), ExecRuntime::new());
    m.inner.full.store(true, SeqCst);
    m.inner.delay_ms.store(5, SeqCst);
    let pool = Pool::builder(m.clone())
        .max_size(8)
        .min_idle(4)
        .create_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .server_full_backoff(Duration::from_millis(400))
        .runtime(rt.handle())
        .build()
        .unwrap();
    rt.block_on(async {
        // The first attempts (min_idle's) find the server full.
        assert!(
            eventually(Duration::from_secs(5), || m.inner.attempts.load(SeqCst)
                >= 1)
            .await
        );
        assert!(
            eventually(Duration::from_secs(5), || m.inner.in_flight.load(SeqCst)
                == 0)
            .await
        );
        m.inner.peak.store(0, SeqCst);
        let before = m.inner.attempts.load(SeqCst);
        // Eight callers wait on the full server for 1.5 s.
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let pool = pool.clone();
                rt.executor.spawn(async move {
                    pool.get_timeout(Duration::from_millis(1500)).await.is_ok()
                })
            })
            .collect();
        async_io::Timer::after(Duration::from_millis(1500)).await;
        let attempts_full = m.inner.attempts.load(SeqCst) - before;
        let peak = m.inner.peak.load(SeqCst);
        // Room again: the waiters still waiting are served.
        m.inner.full.store(false, SeqCst);
        for w in waiters {
            w.await;
        }
        assert_eq!(peak, 1, "attempts on a full server ran {peak} at once");
        // With the ordinary backoff (50 ms cap) it would be about 30 attempts; growing to
        // 400 ms, about 10 (10 + 20 + 40 + 80 + 160 + 320 + 400... with jitter).
        assert!(
            attempts_full <= 14,
            "{attempts_full} attempts on a full server in 1.5 s"
        );
        assert!(
            attempts_full >= 3,
            "the pool gave up asking ({attempts_full})"
        );
        // min_idle comes back once the server has room.
        assert!(
            eventually(Duration::from_secs(5), || pool.status().idle >= 4).await,
            "min_idle not made once the server had room: {:?}",
            pool.status()
        );
        let report = pool.close().await;
        assert_accounted(&report.counters);
    });
}

#[test]
fn idle_connections_nobody_needed_are_given_back() {
    let (m, rt) = (Server::default(), ExecRuntime::new());
    let pool = Pool::builder(m.clone())
        .max_size(8)
        .min_idle(8)
        .prewarm_window(Duration::ZERO)
        .surplus_window(Duration::from_millis(300))
        .maintenance_interval(Duration::from_millis(20))
        .runtime(rt.handle())
        .build()
        .unwrap();
    rt.block_on(async {
        gracepool_testkit::until_status(&pool, "min_idle made", |s| s.idle == 8).await;
        // Two tasks keep two connections busy for 1.2 s: four windows.
        let until = Instant::now() + Duration::from_millis(1200);
        let busy: Vec<_> = (0..2)
            .map(|_| {
                let pool = pool.clone();
                rt.executor.spawn(async move {
                    while Instant::now() < until {
                        let conn = pool.get().await.expect("served");
                        async_io::Timer::after(Duration::from_millis(5)).await;
                        drop(conn);
                    }
                })
            })
            .collect();
        for b in busy {
            b.await;
        }
        let s = pool.status();
        assert!(
            s.counters.closed_surplus >= 5,
            "two busy connections of eight, and only {} given back: {s:?}",
            s.counters.closed_surplus
        );
        assert!(
            s.size <= 3,
            "the pool kept {} connections for two tasks",
            s.size
        );
        // Given back, and not made again for min_idle while nobody needs them.
        async_io::Timer::after(Duration::from_millis(300)).await;
        assert!(
            pool.status().size <= 3,
            "min_idle made them again: {:?}",
            pool.status()
        );
        // Demand again: eight callers at once get eight connections.
        let held: Vec<_> = {
            let mut held = Vec::new();
            for _ in 0..8 {
                held.push(
                    pool.get_timeout(Duration::from_secs(2))
                        .await
                        .expect("served"),
                );
            }
            held
        };
        drop(held);
        let report = pool.close().await;
        assert_accounted(&report.counters);
    });
    assert_eq!(m.inner.created.load(SeqCst), m.inner.closed.load(SeqCst));
}

#[test]
fn without_a_surplus_window_min_idle_is_a_floor() {
    let (m, rt) = (Server::default(), ExecRuntime::new());
    let pool = Pool::builder(m.clone())
        .max_size(4)
        .min_idle(4)
        .prewarm_window(Duration::ZERO)
        .surplus_window(None)
        .maintenance_interval(Duration::from_millis(20))
        .runtime(rt.handle())
        .build()
        .unwrap();
    rt.block_on(async {
        gracepool_testkit::until_status(&pool, "min_idle made", |s| s.idle == 4).await;
        async_io::Timer::after(Duration::from_millis(300)).await;
        let s = pool.status();
        assert_eq!((s.idle, s.counters.closed_surplus), (4, 0), "{s:?}");
        pool.close().await;
    });
}

#[test]
fn a_zero_max_creating_is_a_typed_error() {
    let rt = ExecRuntime::new();
    let err = Pool::builder(Server::default())
        .max_creating(0)
        .runtime(rt.handle())
        .build()
        .unwrap_err();
    assert!(
        matches!(
            err,
            gracepool::Error::Config(gracepool::ConfigError::MaxCreatingZero)
        ),
        "{err}"
    );
    assert!(err.to_string().contains("max_creating"), "{err}");
}
