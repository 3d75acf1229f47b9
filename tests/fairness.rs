//! A task that loops on `get()` with no other await point must not starve the other tasks of a
//! single-threaded runtime: taking an idle connection completes without waiting, so the pool
//! yields now and then, as tokio's own primitives do under its cooperative budget.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use gracepool::Pool;
use gracepool_testkit::Counting;
use gracepool_tokio::TokioRuntime;

#[test]
fn a_get_loop_does_not_starve_a_current_thread_runtime() {
    let m = Counting::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let watchdog = std::thread::spawn(move || {
        // If the loop below starves the runtime, nothing else ever runs: fail, don't hang.
        if done_rx.recv_timeout(Duration::from_secs(10)).is_err() {
            eprintln!("the runtime was starved by a get() loop");
            std::process::exit(1);
        }
    });
    rt.block_on(async {
        let pool = Pool::builder(m.clone())
            .runtime(TokioRuntime::current())
            .build()
            .unwrap();
        drop(pool.get().await.unwrap());
        let looping = tokio::spawn({
            let (pool, stop) = (pool.clone(), stop.clone());
            async move {
                let mut rounds = 0u64;
                // No await point but the pool's own.
                while !stop.load(SeqCst) {
                    drop(pool.get().await.unwrap());
                    rounds += 1;
                }
                rounds
            }
        });
        // Another task on the same thread must get its turn to stop the loop.
        tokio::spawn({
            let stop = stop.clone();
            async move { stop.store(true, SeqCst) }
        });
        let rounds = looping.await.unwrap();
        assert!(rounds > 0);
        pool.close().await;
    });
    done_tx.send(()).unwrap();
    watchdog.join().unwrap();
    m.assert_balanced();
}
