//! The actor's maintenance tick holds no timer of the pool's runtime: a runtime with a timer
//! pending pays for it on every turn of its scheduler, in every task of the application. The
//! tick still comes: idle connections are reaped on time.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use gracepool::{BoxFuture, Pool, Runtime, SpawnError};
use gracepool_testkit::{assert_accounted, eventually, Counting, ExecHandle, ExecRuntime};

/// The test runtime, counting the timers the pool asks it for.
struct Timers {
    inner: ExecHandle,
    asked: Arc<AtomicUsize>,
}

impl Runtime for Timers {
    fn spawn(&self, task: BoxFuture) -> Result<(), SpawnError> {
        self.inner.spawn(task)
    }

    fn sleep(&self, duration: Duration) -> BoxFuture {
        self.asked.fetch_add(1, SeqCst);
        self.inner.sleep(duration)
    }
}

#[test]
fn the_maintenance_tick_needs_no_runtime_timer_and_still_reaps() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let asked = Arc::new(AtomicUsize::new(0));
    let interval = Duration::from_millis(50);
    let pool = Pool::builder(m.clone())
        .max_size(2)
        .idle_timeout(Duration::from_millis(100))
        .maintenance_interval(interval)
        .runtime(Timers {
            inner: rt.handle(),
            asked: asked.clone(),
        })
        .build()
        .unwrap();
    rt.block_on(async {
        let (a, b) = (pool.get().await.unwrap(), pool.get().await.unwrap());
        drop((a, b));
        assert_eq!(pool.status().idle, 2);
        // Several ticks pass: the idle connections are reaped by one of them.
        assert!(
            eventually(Duration::from_secs(5), || pool.status().idle == 0).await,
            "idle connections were not reaped: {:?}",
            pool.status()
        );
        assert_eq!(pool.status().counters.closed_graceful, 2);
        assert_eq!(
            asked.load(SeqCst),
            0,
            "the pool asked its runtime for a timer"
        );
        pool.close().await;
    });
    assert_accounted(&pool.status().counters);
    m.assert_balanced();
}
