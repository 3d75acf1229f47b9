//! A close request racing an actor that finishes the close on its own.
//!
//! Once `close()` moves the pool to Closing, the actor may see it on any event, find nothing
//! left to close, and finish the close itself (closing its mailbox) before the closer has sent
//! it `Close`. The closer's send then fails because of that drain, not because the actor is
//! gone: it must leave the report to the drain under way instead of racing it with the
//! fallback, which would label the actor's close a fallback.

use std::time::Duration;

use gracepool::{Error, Pool};
use gracepool_testkit::{Counting, ExecRuntime, Fault};

#[test]
fn a_close_the_actor_finished_is_not_reported_as_a_fallback() {
    let rt = ExecRuntime::new();
    let (stop, stopped) = async_channel::bounded::<()>(1);
    let runners: Vec<_> = (0..2)
        .map(|_| {
            let (ex, stopped) = (rt.executor.clone(), stopped.clone());
            std::thread::spawn(move || futures_lite::future::block_on(ex.run(stopped.recv())))
        })
        .collect();
    let mut mislabelled = 0;
    for _ in 0..500 {
        // Creation always fails, so the pool holds nothing and the actor, busy with the
        // waiters' requests, can finish the close the moment it sees it start.
        let m = Counting::new();
        m.set_create(Fault::Fail);
        let pool = Pool::builder(m.clone())
            .max_size(2)
            .runtime(rt.handle())
            .build()
            .unwrap();
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let pool = pool.clone();
                rt.executor
                    .spawn(async move { while !matches!(pool.get().await, Err(Error::Closed)) {} })
            })
            .collect();
        std::thread::sleep(Duration::from_micros(200));
        let report = pool.close_blocking(Duration::from_secs(5));
        assert!(report.is_complete());
        if report.fallback {
            mislabelled += 1;
        }
        for w in waiters {
            futures_lite::future::block_on(w);
        }
    }
    drop(stop);
    for r in runners {
        let _ = r.join();
    }
    assert_eq!(
        mislabelled, 0,
        "closes the actor finished, reported as fallbacks"
    );
}
