//! A caller on the pool's own runtime creates its connection itself when nobody waits and the
//! pool has room (`Runtime::is_current`): no round trip to the actor. Each promise the actor
//! keeps for its own creations holds here too: the slot of a `get` dropped mid-creation is
//! freed, the create timeout and panics are contained, no caller creates during a backoff
//! pause, `max_size` holds, and a close abandons a creation under way or closes what it made
//! exactly once.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use gracepool::{Error, Manager, Pool, WeakPool};
use gracepool_testkit::{assert_accounted, Counting, Fault};
use gracepool_tokio::TokioRuntime;
use tokio::runtime::Builder;

fn current_thread() -> tokio::runtime::Runtime {
    Builder::new_current_thread().enable_all().build().unwrap()
}

/// A manager that records, for every creation, the tokio task it ran in and when it
/// started; the first `fail` creations fail.
#[derive(Clone, Default)]
struct Where {
    tasks: Arc<Mutex<Vec<Option<tokio::task::Id>>>>,
    started: Arc<Mutex<Vec<Instant>>>,
    fail: Arc<AtomicU64>,
}

impl Manager for Where {
    type Connection = u64;
    type Error = std::io::Error;

    fn create(&self) -> impl Future<Output = Result<u64, std::io::Error>> + Send {
        let this = self.clone();
        async move {
            this.started.lock().unwrap().push(Instant::now());
            let mut tasks = this.tasks.lock().unwrap();
            tasks.push(tokio::task::try_id());
            let failing = this
                .fail
                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if failing {
                return Err(std::io::Error::other("refused on purpose"));
            }
            Ok(tasks.len() as u64)
        }
    }
}

#[test]
fn a_cold_get_creates_in_the_callers_own_task() {
    let m = Where::default();
    let rt = current_thread();
    let pool = rt.block_on(async {
        Pool::builder(m.clone())
            .max_size(8)
            .runtime(TokioRuntime::current())
            .build()
            .unwrap()
    });
    let caller = {
        let pool = pool.clone();
        rt.spawn(async move {
            let mut held = Vec::new();
            for _ in 0..5 {
                held.push(pool.get().await.unwrap());
            }
            (tokio::task::id(), held)
        })
    };
    let (me, held) = rt.block_on(caller).unwrap();
    let tasks = m.tasks.lock().unwrap().clone();
    assert_eq!(
        tasks,
        vec![Some(me); 5],
        "every connection made in the caller's task"
    );
    assert_eq!(pool.status().size, 5);
    drop(held);
    let report = rt.block_on(pool.close());
    assert!(report.is_complete() && !report.fallback, "{report:?}");
    assert_eq!(report.counters.created, 5);
}

#[test]
fn a_caller_on_another_runtime_leaves_creation_to_the_actor() {
    let m = Where::default();
    let home = current_thread();
    let pool = home.block_on(async {
        Pool::builder(m.clone())
            .max_size(2)
            .runtime(TokioRuntime::current())
            .build()
            .unwrap()
    });
    // The pool's runtime is driven on a thread of its own; the caller is on another runtime.
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let driver = std::thread::spawn(move || {
        home.block_on(async {
            while stop_rx.try_recv().is_err() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        home
    });
    let other = current_thread();
    let me = other.block_on(async {
        let conn = pool.get().await.unwrap();
        drop(conn);
        tokio::task::try_id()
    });
    let tasks = m.tasks.lock().unwrap().clone();
    assert_eq!(tasks.len(), 1);
    assert_ne!(tasks[0], me, "made by the actor, on the pool's runtime");
    assert!(tasks[0].is_some(), "made in a task of the pool's runtime");
    stop_tx.send(()).unwrap();
    let home = driver.join().unwrap();
    let report = home.block_on(pool.close());
    assert!(report.is_complete(), "{report:?}");
}

#[test]
fn a_get_dropped_while_it_creates_frees_its_slot() {
    let m = Counting::new();
    let rt = current_thread();
    rt.block_on(async {
        let pool = Pool::builder(m.clone())
            .max_size(1)
            .runtime(TokioRuntime::current())
            .build()
            .unwrap();
        m.set_create(Fault::Stall);
        let cut = tokio::time::timeout(Duration::from_millis(20), pool.get()).await;
        assert!(cut.is_err(), "the creation stalls");
        assert_eq!(pool.status().size, 0, "the slot is free again");
        m.set_create(Fault::None);
        let conn = pool.get_timeout(Duration::from_secs(2)).await.unwrap();
        drop(conn);
        let report = pool.close().await;
        assert!(report.is_complete(), "{report:?}");
        assert_eq!(report.counters.created, 1);
        assert_eq!(
            report.counters.create_failed, 0,
            "cut short is not a failure"
        );
    });
    m.assert_balanced();
}

#[test]
fn the_create_timeout_and_a_panic_reach_the_caller() {
    let m = Counting::new();
    let rt = current_thread();
    rt.block_on(async {
        let pool = Pool::builder(m.clone())
            .max_size(2)
            .fail_fast(true)
            .create_timeout(Duration::from_millis(30))
            .create_backoff(Duration::from_millis(1), Duration::from_millis(1))
            .runtime(TokioRuntime::current())
            .build()
            .unwrap();
        m.set_create(Fault::Stall);
        let started = Instant::now();
        let got = pool.get().await;
        assert!(
            matches!(got, Err(Error::ManagerTimeout { .. })),
            "{:?}",
            got.map(|c| c.id)
        );
        // The 30 ms create timeout, fail-fast: not the 30 s wait timeout.
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(pool.status().size, 0);
        // A timeout shorter than the create timeout ends the wait as a timeout.
        let got = pool.get_timeout(Duration::from_millis(10)).await;
        assert!(
            matches!(got, Err(Error::Timeout { .. })),
            "{:?}",
            got.map(|c| c.id)
        );
        // The actor makes the first connection after a failure (no caller creates until it
        // has): let its stalled creation time out first, then let it succeed.
        tokio::time::sleep(Duration::from_millis(80)).await;
        m.set_create(Fault::None);
        let first = pool.get().await.unwrap();
        // Nothing idle, nobody waits, room for one more: this caller creates, and panics.
        m.set_create(Fault::Panic);
        let got = pool.get().await;
        assert!(
            matches!(got, Err(Error::ManagerPanicked { .. })),
            "{:?}",
            got.map(|c| c.id)
        );
        assert_eq!(pool.status().size, 1);
        drop(first);
        let report = pool.close().await;
        assert!(report.is_complete(), "{report:?}");
        assert_eq!(report.counters.created, 1);
    });
}

/// A wait timeout of a second or more runs out while the caller makes its connection itself,
/// with no create timeout: the call ends as a timeout, at the wait timeout, and the creation
/// is not counted as failed. (Such a timeout starts from the coarse clock on Linux, a few ticks
/// after the call: what is left of it must count to that start's deadline, or the creation's
/// timer ends before the deadline and reads as the create timeout, which is not set.)
#[test]
fn a_wait_timeout_that_runs_out_during_the_callers_creation_is_a_timeout() {
    let m = Counting::new();
    let rt = current_thread();
    rt.block_on(async {
        let pool = Pool::builder(m.clone())
            .max_size(2)
            .create_timeout(None)
            .wait_timeout(Duration::from_secs(1))
            .runtime(TokioRuntime::current())
            .build()
            .unwrap();
        m.set_create(Fault::Stall);
        let started = Instant::now();
        let got = pool.get().await;
        let took = started.elapsed();
        assert!(
            matches!(&got, Err(Error::Timeout { waited, .. }) if *waited >= Duration::from_secs(1)),
            "{:?}",
            got.map(|c| c.id)
        );
        assert!(took >= Duration::from_secs(1), "{took:?}");
        let c = pool.status().counters;
        assert_eq!((c.create_failed, c.gets_timed_out), (0, 1), "{c:?}");
        let report = pool.close().await;
        assert_accounted(&report.counters);
    });
}

#[test]
fn a_failed_creation_in_the_caller_keeps_it_waiting_while_the_actor_retries() {
    let m = Where::default();
    m.fail.store(1, SeqCst);
    let rt = current_thread();
    rt.block_on(async {
        let pool = Pool::builder(m.clone())
            .max_size(1)
            .create_backoff(Duration::from_millis(20), Duration::from_millis(20))
            .runtime(TokioRuntime::current())
            .build()
            .unwrap();
        let conn = pool.get_timeout(Duration::from_secs(2)).await.unwrap();
        let tasks = m.tasks.lock().unwrap().clone();
        assert_eq!(
            tasks.len(),
            2,
            "failed once in the caller, then made by the actor"
        );
        assert_eq!(tasks[0], tokio::task::try_id());
        assert_ne!(tasks[1], tokio::task::try_id());
        let c = pool.status().counters;
        assert_eq!((c.created, c.create_failed), (1, 1));
        drop(conn);
        let report = pool.close().await;
        assert!(report.is_complete(), "{report:?}");
    });
}

#[test]
fn no_caller_creates_during_a_backoff_pause() {
    const PAUSE: Duration = Duration::from_millis(300);
    let m = Where::default();
    m.fail.store(1, SeqCst);
    let rt = current_thread();
    rt.block_on(async {
        let pool = Pool::builder(m.clone())
            .max_size(4)
            .fail_fast(true)
            .create_backoff(PAUSE, PAUSE)
            .runtime(TokioRuntime::current())
            .build()
            .unwrap();
        // Fails in the caller, at once (fail-fast hands it the error).
        assert!(matches!(pool.get().await, Err(Error::Backend(_))));
        // Nobody waits now, and the pool has room: still, this caller must not create
        // during the pause.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let conn = pool.get_timeout(Duration::from_secs(3)).await.unwrap();
        let started = m.started.lock().unwrap().clone();
        assert_eq!(started.len(), 2);
        // The pause is shortened by up to half (jitter).
        assert!(
            started[1] - started[0] >= PAUSE / 2,
            "the second creation started {:?} after the failure",
            started[1] - started[0]
        );
        drop(conn);
        let report = pool.close().await;
        assert!(report.is_complete(), "{report:?}");
    });
}

/// Counts connections alive at once, and the most ever.
#[derive(Clone, Default)]
struct Alive {
    now: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    made: Arc<AtomicUsize>,
}

struct AliveConn(Arc<AtomicUsize>);

impl Drop for AliveConn {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

impl Manager for Alive {
    type Connection = AliveConn;
    type Error = std::io::Error;

    async fn create(&self) -> Result<AliveConn, std::io::Error> {
        // Creations take a moment, so that they overlap.
        self.made.fetch_add(1, SeqCst);
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        let now = self.now.fetch_add(1, SeqCst) + 1;
        self.most.fetch_max(now, SeqCst);
        Ok(AliveConn(self.now.clone()))
    }

    fn is_broken(&self, _conn: &mut AliveConn) -> bool {
        // Every fourth return is closed, so that slots keep freeing and refilling.
        self.made.load(SeqCst) % 4 == 0
    }
}

#[test]
fn callers_and_the_actor_together_never_exceed_max_size() {
    let m = Alive::default();
    let rt = Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let pool = Pool::builder(m.clone())
            .max_size(4)
            .min_idle(2)
            .runtime(TokioRuntime::current())
            .build()
            .unwrap();
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    for _ in 0..200 {
                        let c = pool.get().await.unwrap();
                        tokio::task::yield_now().await;
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
        assert_accounted(&report.counters);
    });
    assert!(m.made.load(SeqCst) > 4, "connections were replaced");
    assert!(
        m.most.load(SeqCst) <= 4,
        "{} alive at once",
        m.most.load(SeqCst)
    );
    assert_eq!(m.now.load(SeqCst), 0);
}

/// A caller's creation that never finishes keeps the close waiting up to its deadline, no
/// longer (one that finishes in time says its goodbye: tests/close_creations.rs in the core).
#[test]
fn a_close_abandons_a_creation_under_way_at_its_deadline() {
    let m = Counting::new();
    let rt = current_thread();
    rt.block_on(async {
        let deadline = Duration::from_millis(300);
        let pool = Pool::builder(m.clone())
            .max_size(2)
            .close_deadline(deadline)
            .runtime(TokioRuntime::current())
            .build()
            .unwrap();
        m.set_create(Fault::Stall);
        let getter = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.get().await.map(|c| c.id) })
        };
        gracepool_testkit::until_status(&pool, "a creation under way", |s| s.size == 1).await;
        let started = Instant::now();
        let report = pool.close().await;
        // It waited for the creation (a stalled one never ends: the wait timeout is 30 s, the
        // create timeout too), then gave up on it at the deadline.
        assert!(started.elapsed() >= deadline, "{:?}", started.elapsed());
        assert!(report.is_complete() && !report.fallback, "{report:?}");
        assert!(matches!(getter.await.unwrap(), Err(Error::Closed)));
        assert_eq!(pool.status().size, 0);
        assert_eq!(m.created(), 0);
    });
    m.assert_balanced();
}

/// Starts the pool's close from inside `create`, then makes the connection: the close starts
/// between the creation and the checkout.
#[derive(Clone)]
struct ClosesOnCreate {
    inner: Counting,
    pool: Arc<OnceLock<WeakPool<ClosesOnCreate>>>,
}

impl Manager for ClosesOnCreate {
    type Connection = <Counting as Manager>::Connection;
    type Error = <Counting as Manager>::Error;

    fn create(&self) -> impl Future<Output = Result<Self::Connection, Self::Error>> + Send {
        if let Some(pool) = self.pool.get().and_then(WeakPool::upgrade) {
            pool.begin_close();
        }
        self.inner.create()
    }

    fn close(&self, conn: Self::Connection) -> Result<(), Self::Error> {
        self.inner.close(conn)
    }
}

#[test]
fn a_connection_made_as_the_close_starts_is_closed_once() {
    let m = ClosesOnCreate {
        inner: Counting::new(),
        pool: Arc::default(),
    };
    let rt = current_thread();
    rt.block_on(async {
        let pool = Pool::builder(m.clone())
            .max_size(2)
            .runtime(TokioRuntime::current())
            .build()
            .unwrap();
        m.pool.set(pool.downgrade()).ok().unwrap();
        assert!(matches!(pool.get().await, Err(Error::Closed)));
        let report = pool.close().await;
        assert!(report.is_complete() && !report.fallback, "{report:?}");
        assert_eq!(report.counters.created, 1);
    });
    assert_eq!(m.inner.created(), 1);
    m.inner.assert_balanced();
}

#[test]
fn a_creation_in_the_caller_that_does_not_finish_at_once_counts_as_a_wait() {
    let m = Counting::new();
    let rt = current_thread();
    rt.block_on(async {
        let pool = Pool::builder(m.clone())
            .max_size(2)
            .runtime(TokioRuntime::current())
            .build()
            .unwrap();
        // Made on its first poll: the call never waited.
        drop(pool.get().await.unwrap());
        let c = pool.status().counters;
        assert_eq!((c.gets, c.gets_waited), (1, 0));
        let first = pool.get().await.unwrap();
        // Nothing idle now, and the creation takes 30 ms: a wait, counted with its length.
        m.set_create_delay(Duration::from_millis(30));
        let second = pool.get().await.unwrap();
        let c = pool.status().counters;
        assert_eq!((c.gets, c.gets_waited), (3, 1), "{c:?}");
        assert!(c.wait_total >= Duration::from_millis(25), "{c:?}");
        drop((first, second));
        let report = pool.close().await;
        assert!(report.is_complete(), "{report:?}");
    });
    m.assert_balanced();
}
