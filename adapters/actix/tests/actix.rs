//! The actix adapter on its own: the pool on the System's arbiter and on a dedicated one,
//! the actor front's messages, and what stopping things does to the pool.

use std::time::Duration;

use actix::Actor;
use actix_rt::{Arbiter, ArbiterHandle, System};
use gracepool::{CloseCause, Error, Pool, PoolState};
use gracepool_actix::{ActixRuntime, Close, Get, GetStatus, PoolActor};
use gracepool_testkit::{assert_accounted, set_birthplace, Counting};

#[test]
fn messages_get_status_and_close() {
    let m = Counting::new();
    System::new().block_on(async {
        let pool = Pool::builder(m.clone())
            .max_size(1)
            .runtime(ActixRuntime::current())
            .build()
            .unwrap();
        let addr = PoolActor::new(pool.clone()).start();
        let g = addr.send(Get::new()).await.unwrap().unwrap();
        assert_eq!(g.id, 1);
        let r = addr
            .send(Get::timeout(Duration::from_millis(10)))
            .await
            .unwrap();
        assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
        let s = addr.send(GetStatus).await.unwrap();
        assert_eq!((s.size, s.in_use, s.idle), (1, 1, 0));
        drop(g);
        let report = addr.send(Close).await.unwrap();
        assert!(report.is_complete());
        assert!(!report.fallback);
        assert_eq!(report.counters.closed_graceful, 1);
        // Every sender gets the same report; Get now fails.
        assert_eq!(addr.send(Close).await.unwrap().counters, report.counters);
        assert!(matches!(
            addr.send(Get::new()).await.unwrap(),
            Err(Error::Closed)
        ));
    });
    m.assert_balanced();
}

#[test]
fn pool_on_a_dedicated_arbiter_serves_other_threads() {
    let m = Counting::new();
    // Arbiters belong to a System: this one's runner drives the test's own tasks below.
    let sys = System::new();
    let arbiter = Arbiter::new();
    let pool = Pool::builder(m.clone())
        .max_size(2)
        .runtime(ActixRuntime::from_arbiter(arbiter.handle()))
        .build()
        .unwrap();
    // Used from a thread that is no actix thread at all, and from a System.
    futures_lite::future::block_on(async {
        drop(pool.get().await.unwrap());
    });
    sys.block_on(async {
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                let pool = pool.clone();
                actix_rt::spawn(async move {
                    for _ in 0..10 {
                        let c = pool.get().await.unwrap();
                        actix_rt::time::sleep(Duration::from_micros(100)).await;
                        drop(c);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let report = pool.close().await;
        assert!(report.is_complete());
        assert!(!report.fallback, "the actor on the arbiter closed the pool");
    });
    arbiter.stop();
    arbiter.join().unwrap();
    assert!(m.created() <= 2);
    m.assert_balanced();
}

#[test]
fn a_stopped_arbiter_is_a_spawn_error() {
    let _sys = System::new();
    let arbiter = Arbiter::new();
    let handle = arbiter.handle();
    arbiter.stop();
    arbiter.join().unwrap();
    let m = Counting::new();
    match Pool::builder(m.clone())
        .runtime(ActixRuntime::from_arbiter(handle))
        .build()
    {
        Err(e @ Error::Spawn(_)) => assert!(e.to_string().contains("arbiter has stopped"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(m.created(), 0);
    let no_system = std::thread::spawn(|| ActixRuntime::try_current().is_err());
    assert!(no_system.join().unwrap());
}

#[test]
fn stopping_the_system_closes_the_pool() {
    let m = Counting::new();
    let sys = System::new();
    let (pool, guard) = sys.block_on(async {
        let pool = Pool::builder(m.clone())
            .max_size(3)
            .runtime(ActixRuntime::current())
            .build()
            .unwrap();
        let addr = PoolActor::new(pool.clone()).start();
        let a = addr.send(Get::new()).await.unwrap().unwrap();
        let b = addr.send(Get::new()).await.unwrap().unwrap();
        drop(b);
        System::current().stop();
        (pool, a)
    });
    // The System's runtime goes: the front actor's `stopped` and the pool actor's `Drop` run.
    drop(sys);
    let status = pool.status();
    assert_eq!(status.state, PoolState::Closed);
    assert!(!status.actor_alive);
    assert_eq!(m.closed(), 1, "the idle connection was closed at once");
    drop(guard);
    let report = pool.close_blocking(Duration::from_millis(10));
    // Whichever the runtime dropped first: the front actor (its `stopped` closes) or the
    // pool's own actor (its `Drop` closes).
    assert!(
        matches!(
            report.cause,
            CloseCause::Requested | CloseCause::RuntimeGone
        ),
        "{report:?}"
    );
    assert!(report.fallback);
    assert_accounted(&pool.status().counters);
    m.assert_balanced();
}

#[test]
fn dropping_every_addr_stops_the_actor_and_closes_the_pool() {
    let m = Counting::new();
    System::new().block_on(async {
        let pool = Pool::builder(m.clone())
            .runtime(ActixRuntime::current())
            .build()
            .unwrap();
        let addr = PoolActor::new(pool.clone()).start();
        drop(addr.send(Get::new()).await.unwrap().unwrap());
        // A routine actix event: the last `Addr` goes. The pool closes, gracefully: its own
        // actor is alive and says every goodbye.
        drop(addr);
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while pool.state() != PoolState::Closed && std::time::Instant::now() < until {
            actix_rt::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(pool.state(), PoolState::Closed);
        let report = pool.close().await;
        assert!(!report.fallback, "{report:?}");
        assert_eq!(report.counters.closed_graceful, 1, "{report:?}");
    });
    m.assert_balanced();
}

#[test]
fn timers_work_off_any_actix_thread() {
    let _sys = System::new();
    let arbiter = Arbiter::new();
    let rt = ActixRuntime::from_arbiter(arbiter.handle());
    let t = std::time::Instant::now();
    futures_lite::future::block_on(gracepool::Runtime::sleep(&rt, Duration::from_millis(5)));
    assert!(t.elapsed() >= Duration::from_millis(5));
    arbiter.stop();
    arbiter.join().unwrap();
}

/// Runs `fut` on `arbiter` and hands back its output, polling for it with the System's timer
/// (a blocking wait would stop the System's arbiter, and with it the pool's actor).
async fn on_arbiter<T: Send + 'static>(
    arbiter: &ArbiterHandle,
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    assert!(arbiter.spawn(async move {
        let _ = tx.send(fut.await);
    }));
    answer(rx).await
}

async fn answer<T>(rx: std::sync::mpsc::Receiver<T>) -> T {
    let until = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match rx.try_recv() {
            Ok(v) => return v,
            Err(std::sync::mpsc::TryRecvError::Empty) if std::time::Instant::now() < until => {
                actix_rt::time::sleep(Duration::from_millis(1)).await;
            }
            Err(e) => panic!("no answer: {e:?}"),
        }
    }
}

/// Where the connection a `get` on `arbiter` is handed was born, and whether that `get` waited
/// (for the actor): the guard goes back to the pool on the arbiter.
async fn get_on(arbiter: &ArbiterHandle, pool: &Pool<Counting>) -> (u64, u64) {
    let pool = pool.clone();
    on_arbiter(arbiter, async move {
        let waited = pool.status().counters.gets_waited;
        let conn = pool.get().await.expect("a connection");
        (conn.born, pool.status().counters.gets_waited - waited)
    })
    .await
}

#[test]
fn a_get_on_the_pools_arbiter_creates_its_connection_and_other_arbiters_ask_the_actor() {
    let m = Counting::new();
    let sys = System::new();
    let worker = Arbiter::new();
    worker.spawn(async { set_birthplace(2) });
    sys.block_on(async {
        set_birthplace(1);
        let pool = Pool::builder(m.clone())
            .max_size(4)
            .runtime(ActixRuntime::current())
            .build()
            .unwrap();
        // On the pool's arbiter: made by the caller, without waiting for the actor.
        let held = pool.get().await.unwrap();
        assert_eq!(held.born, 1);
        assert_eq!(pool.status().counters.gets_waited, 0);
        // On another arbiter: the actor makes it, on the pool's arbiter; the caller waits.
        assert_eq!(get_on(&worker.handle(), &pool).await, (1, 1));
        drop(held);
        let report = pool.close().await;
        assert!(report.is_complete() && !report.fallback, "{report:?}");
        assert_eq!(report.counters.closed_graceful, 2);
    });
    worker.stop();
    worker.join().unwrap();
    m.assert_balanced();
}

#[test]
fn with_caller_arbiters_a_worker_makes_its_own_connections_and_they_close_once_after_it_stopped() {
    let m = Counting::new();
    let sys = System::new();
    let worker = Arbiter::new();
    worker.spawn(async { set_birthplace(2) });
    sys.block_on(async {
        set_birthplace(1);
        let pool = Pool::builder(m.clone())
            .max_size(4)
            .runtime(ActixRuntime::current().with_caller_arbiters())
            .build()
            .unwrap();
        let held = pool.get().await.unwrap();
        assert_eq!(held.born, 1);
        // On another arbiter of the System: made there, by the caller, without waiting.
        assert_eq!(get_on(&worker.handle(), &pool).await, (2, 0));
        // On an arbiter of another System (with nothing idle): the actor makes it, on the
        // pool's arbiter.
        let workers = pool.get().await.unwrap();
        assert_eq!(workers.born, 2);
        let other = {
            let pool = pool.clone();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                System::new().block_on(async move {
                    set_birthplace(3);
                    let held = pool.get().await.expect("a connection");
                    let _ = tx.send(held.born);
                })
            });
            answer(rx).await
        };
        assert_eq!(other, 1);
        // The worker stops while its connection sits idle in the pool: it stays the pool's,
        // and the close ends it once, with the others.
        worker.stop();
        worker.join().unwrap();
        drop((held, workers));
        let report = pool.close().await;
        assert!(report.is_complete() && !report.fallback, "{report:?}");
        assert_eq!(report.counters.created, 3, "{report:?}");
        assert_accounted(&report.counters);
    });
    m.assert_balanced();
}

#[test]
fn a_pool_given_its_arbiter_from_elsewhere_learns_it_from_its_actor() {
    let m = Counting::new();
    let sys = System::new();
    let home = Arbiter::new();
    home.spawn(async { set_birthplace(2) });
    // Built on the System's thread, for another arbiter: the actor's task, the first on it,
    // tells the pool which arbiter it is.
    let pool = Pool::builder(m.clone())
        .max_size(2)
        .runtime(ActixRuntime::from_arbiter(home.handle()))
        .build()
        .unwrap();
    sys.block_on(async {
        set_birthplace(1);
        // On the pool's arbiter: made there, by the caller.
        assert_eq!(get_on(&home.handle(), &pool).await, (2, 0));
        // Here, on the System's arbiter: the one idle connection, made there.
        assert_eq!(pool.get().await.unwrap().born, 2);
        let report = pool.close().await;
        assert!(report.is_complete(), "{report:?}");
    });
    home.stop();
    home.join().unwrap();
    m.assert_balanced();
}
