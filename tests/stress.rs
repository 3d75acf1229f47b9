//! The race at the heart of the close protocol — close, drain, and guards returning on other
//! threads — explored with random timing over thousands of iterations.
//!
//! The loom models in `tests/loom` prove the core orderings of this race over every
//! interleaving, on a pool of one connection with two or three threads and no clock. This test
//! covers what they leave out, by brute force on real threads and a real runtime: every
//! iteration picks a way to close (close from a task, close_blocking from a thread, dropping
//! the last handle, tearing the runtime down, or close_blocking while the actor is not polled),
//! random hold times, and random detaches and panicking drops, then checks that every
//! connection reached exactly one end.

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use gracepool::{Pool, Pooled};
use gracepool_testkit::{assert_accounted, Counting, ExecRuntime};

fn spin(max_micros: u64) {
    let n = fastrand::u64(0..=max_micros * 20);
    for _ in 0..n {
        std::hint::spin_loop();
    }
    if fastrand::u8(0..4) == 0 {
        thread::yield_now();
    }
}

#[derive(Debug, Clone, Copy)]
enum Closer {
    CloseAsync,
    CloseBlocking,
    DropLastHandle,
    Teardown,
    Unpolled,
}

fn one_iteration(seed: u64) {
    fastrand::seed(seed);
    let closer = match fastrand::u8(0..5) {
        0 => Closer::CloseAsync,
        1 => Closer::CloseBlocking,
        2 => Closer::DropLastHandle,
        3 => Closer::Teardown,
        _ => Closer::Unpolled,
    };
    let m = Counting::new();
    let rt = ExecRuntime::new();
    let max = fastrand::usize(1..6);
    let pool = Pool::builder(m.clone())
        .runtime(rt.handle())
        .max_size(max)
        .close_deadline(Duration::from_millis(fastrand::u64(0..3)))
        .build()
        .unwrap();

    // Check some connections out, leave the rest idle.
    let guards: Vec<Pooled<Counting>> = rt.block_on(async {
        let mut all = Vec::new();
        for _ in 0..max {
            all.push(pool.get().await.unwrap());
        }
        let keep = fastrand::usize(0..=max);
        all.truncate(keep);
        all
    });

    // The executor runs on its own thread unless the actor is to be left unpolled.
    let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
    let runner = match closer {
        Closer::Unpolled => None,
        _ => {
            let rt = rt.clone();
            Some(thread::spawn(move || {
                rt.block_on(async {
                    let _ = stop_rx.recv().await;
                })
            }))
        }
    };

    let n = guards.len();
    let start = Arc::new(Barrier::new(n + 1));
    let mut detached = Vec::new();
    let returners: Vec<_> = guards
        .into_iter()
        .map(|g| {
            let start = start.clone();
            let action = fastrand::u8(0..8);
            let wait = fastrand::u64(0..50);
            thread::spawn(move || {
                start.wait();
                spin(wait);
                match action {
                    0 => Some(Pooled::detach(g)),
                    1 => {
                        // A drop during a panic closes the connection.
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                            let _g = g;
                            std::panic::resume_unwind(Box::new("tainted"));
                        }));
                        assert!(r.is_err());
                        None
                    }
                    _ => {
                        drop(g);
                        None
                    }
                }
            })
        })
        .collect();

    start.wait();
    spin(fastrand::u64(0..50));
    match closer {
        Closer::CloseAsync => {
            let ex = rt.executor.clone();
            let p = pool.clone();
            futures_lite::future::block_on(ex.spawn(async move { p.close().await }));
        }
        Closer::CloseBlocking => {
            pool.close_blocking(Duration::from_millis(50));
        }
        Closer::DropLastHandle => {}
        Closer::Teardown => {
            let _ = stop_tx.try_send(());
        }
        Closer::Unpolled => {
            pool.close_blocking(Duration::from_millis(1));
        }
    }
    for r in returners {
        if let Some(conn) = r.join().unwrap() {
            detached.push(conn);
        }
    }
    let _ = stop_tx.try_send(());
    if let Some(runner) = runner {
        runner.join().unwrap();
    }
    // Whatever the closer was, the pool must end closed and balanced once the runtime is gone
    // and the last handle dropped.
    let watcher_status = {
        drop(rt);
        let s = pool.status();
        drop(pool);
        s
    };
    for conn in detached {
        gracepool::Manager::close(&m, conn).unwrap();
    }
    assert!(!watcher_status.actor_alive, "{closer:?}");
    assert_accounted(&watcher_status.counters);
    assert_eq!(
        watcher_status.counters.open(),
        0,
        "{closer:?}: {watcher_status:?}"
    );
    assert_eq!(m.leaked(), 0, "{closer:?} seed {seed}: {}", m.summary());
    m.assert_balanced();
}

#[test]
fn close_drain_and_returning_guards_race() {
    // Silence the deliberate panics of the tainted-drop action.
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        if info.payload().downcast_ref::<&str>() != Some(&"tainted") {
            eprintln!("{info}");
        }
    }));
    let iterations: u64 = std::env::var("GRACEPOOL_STRESS_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5000);
    let base = fastrand::u64(..);
    for i in 0..iterations {
        let seed = base.wrapping_add(i);
        let r = std::panic::catch_unwind(|| one_iteration(seed));
        if let Err(e) = r {
            std::panic::set_hook(quiet);
            eprintln!(
                "failed at iteration {i}, seed {seed} (GRACEPOOL_STRESS_ITERATIONS, fastrand seed)"
            );
            std::panic::resume_unwind(e);
        }
    }
    let _ = std::panic::take_hook();
    std::panic::set_hook(quiet);
}
