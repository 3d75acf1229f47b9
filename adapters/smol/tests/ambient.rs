//! A pool on `SmolRuntime::ambient()`: its actor starts on the executor `gracepool_smol::run`
//! runs the caller on, and moves to another when that executor is dropped.

use std::sync::Arc;
use std::time::Duration;

use async_executor::Executor;
use gracepool::{Error, Pool, PoolState};
use gracepool_smol::SmolRuntime;
use gracepool_testkit::{assert_accounted, set_birthplace, Counting};

fn ambient_pool(m: &Counting, max: usize) -> Pool<Counting> {
    Pool::builder(m.clone())
        .max_size(max)
        .wait_timeout(Duration::from_secs(5))
        .runtime(SmolRuntime::ambient())
        .build()
        .expect("an ambient pool builds without any executor")
}

#[test]
fn the_pool_moves_to_the_next_executor_and_never_hands_out_the_old_ones() {
    let m = Counting::new();
    let pool = ambient_pool(&m, 3);
    assert!(!pool.status().actor_alive, "no actor before the first get");

    // Executor A: three connections made, one kept past A's end.
    let a = Arc::new(Executor::new());
    set_birthplace(1);
    let kept = async_io::block_on(gracepool_smol::run(&a, async {
        let mut g = Vec::new();
        for _ in 0..3 {
            g.push(pool.get().await.expect("a connection on A"));
        }
        assert!(g.iter().all(|c| c.born == 1));
        g.pop().unwrap()
    }));
    assert_eq!(
        Arc::strong_count(&a),
        1,
        "the pool holds its executor weakly"
    );
    assert_eq!(pool.status().idle, 2);
    drop(a);
    let s = pool.status();
    assert_eq!(s.state, PoolState::Running, "homeless, not closed: {s:?}");
    assert!(!s.actor_alive);
    assert_eq!(
        s.counters.closed_moved, 2,
        "the idle ones closed with A: {s:?}"
    );
    assert_eq!(m.closed(), 2);

    // Executor B: fresh connections only; A's guard, dropped here, is closed, not reused.
    let b = Arc::new(Executor::new());
    set_birthplace(2);
    let report = async_io::block_on(gracepool_smol::run(&b, async {
        let first = pool.get().await.expect("a connection on B");
        assert_eq!(first.born, 2);
        drop(kept);
        assert_eq!(pool.status().counters.closed_moved, 3);
        drop(first);
        let all = [
            pool.get().await.unwrap(),
            pool.get().await.unwrap(),
            pool.get().await.unwrap(),
        ];
        assert!(all.iter().all(|c| c.born == 2), "{all:?}");
        drop(all);
        pool.close().await
    }));
    assert!(report.is_complete() && !report.fallback, "{report:?}");
    assert_eq!(report.counters.rehomed, 1, "{report:?}");
    assert_eq!(report.counters.closed_moved, 3, "{report:?}");
    assert_accounted(&report.counters);
    m.assert_balanced();
    drop(b);
    // A close is for good: no executor starts the pool again.
    let c = Arc::new(Executor::new());
    let again = async_io::block_on(gracepool_smol::run(&c, pool.get()));
    assert!(matches!(again, Err(Error::Closed)), "{again:?}");
    assert!(!pool.status().actor_alive);
}

#[test]
fn callers_waiting_under_another_executor_are_served_by_the_new_actor() {
    let m = Counting::new();
    // Well short of the maintenance tick: the new actor must serve them when the slot frees,
    // not at its next tick.
    let pool = Pool::builder(m.clone())
        .max_size(1)
        .maintenance_interval(Duration::from_secs(10))
        .wait_timeout(Duration::from_secs(2))
        .runtime(SmolRuntime::ambient())
        .build()
        .unwrap();
    let a = Arc::new(Executor::new());
    // A's only connection is checked out and kept on this thread; B's callers wait for it.
    let held = async_io::block_on(gracepool_smol::run(&a, pool.get())).unwrap();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let b_thread = {
        let pool = pool.clone();
        std::thread::spawn(move || {
            set_birthplace(2);
            let b = Arc::new(Executor::new());
            async_io::block_on(gracepool_smol::run(&b, async {
                let tasks: Vec<_> = (0..4)
                    .map(|_| {
                        let pool = pool.clone();
                        b.spawn(async move {
                            let c = pool.get().await.expect("served after the move");
                            let born = c.born;
                            async_io::Timer::after(Duration::from_millis(1)).await;
                            born
                        })
                    })
                    .collect();
                started_tx.send(()).unwrap();
                let mut born = Vec::new();
                for t in tasks {
                    born.push(t.await);
                }
                done_tx.send(born).unwrap();
            }));
        })
    };
    started_rx.recv().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while pool.status().waiters < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "B's callers never waited"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(a);
    // B's callers start the new actor on B and wait again: the one slot is still taken.
    while !(pool.status().actor_alive && pool.status().waiters == 4) {
        assert!(
            std::time::Instant::now() < deadline,
            "no new actor: {:?}",
            pool.status()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(pool.status().counters.rehomed, 1);
    // The old guard, dropped outside any executor, frees the slot for B's actor.
    drop(held);
    let born = done_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("B's callers served within their wait timeout");
    b_thread.join().unwrap();
    assert_eq!(born, [2, 2, 2, 2]);
    // B's executor is gone too, with the connection it made: the pool is homeless again.
    let c = pool.status().counters;
    assert_eq!((c.rehomed, c.closed_moved, c.created), (1, 2, 2), "{c:?}");
    assert_eq!(c.gets_timed_out, 0);
    drop(pool);
    m.assert_balanced();
}

#[test]
fn a_get_outside_any_run_is_a_clear_error_then_works_inside_one() {
    let m = Counting::new();
    let pool = ambient_pool(&m, 1);
    let plain = async_io::block_on(pool.get());
    match plain {
        Err(e @ Error::Spawn(_)) => {
            assert!(e.to_string().contains("gracepool_smol::run"), "{e}")
        }
        other => panic!("expected a spawn error, got {other:?}"),
    }
    let ex = Arc::new(Executor::new());
    async_io::block_on(gracepool_smol::run(&ex, async {
        drop(pool.get().await.expect("a connection inside run"));
        assert!(pool.close().await.is_complete());
    }));
    assert_eq!(
        pool.status().counters.rehomed,
        0,
        "the first home is no move"
    );
    m.assert_balanced();
}

#[test]
fn runs_nest_and_each_executor_is_ambient_inside_its_own() {
    let m = Counting::new();
    let (outer_pool, inner_pool) = (ambient_pool(&m, 1), ambient_pool(&m, 1));
    let outer = Arc::new(Executor::new());
    let inner = Arc::new(Executor::new());
    async_io::block_on(gracepool_smol::run(&outer, async {
        gracepool_smol::run(&inner, async {
            drop(inner_pool.get().await.unwrap());
        })
        .await;
        // Back under the outer executor: this actor starts there.
        drop(outer_pool.get().await.unwrap());
    }));
    drop(inner);
    assert!(
        !inner_pool.status().actor_alive,
        "its actor was on the inner executor"
    );
    assert!(
        outer_pool.status().actor_alive,
        "its actor is on the outer executor"
    );
    drop(outer);
    assert!(!outer_pool.status().actor_alive);
    drop((outer_pool, inner_pool));
    m.assert_balanced();
}
