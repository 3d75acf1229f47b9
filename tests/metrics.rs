//! Per-connection metrics: readable from the guard, handed to the health check, and kept
//! across checkouts.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gracepool::{Manager, Metrics, Pool, Pooled, Unhealthy};
use gracepool_testkit::ExecRuntime;

/// Pings (here: counts a round trip) only a connection idle for longer than `quiet`, as a
/// manager with a costly check would; records the metrics each check saw.
#[derive(Clone, Default)]
struct PingWhenQuiet {
    seen: Arc<Mutex<Vec<Metrics>>>,
    pings: Arc<Mutex<u32>>,
}

impl Manager for PingWhenQuiet {
    type Connection = u32;
    type Error = std::io::Error;

    async fn create(&self) -> Result<u32, std::io::Error> {
        Ok(7)
    }

    async fn check(
        &self,
        _conn: &mut u32,
        metrics: &Metrics,
    ) -> Result<(), Unhealthy<std::io::Error>> {
        self.seen.lock().unwrap().push(*metrics);
        if metrics.idle_for() > Duration::from_millis(50) {
            *self.pings.lock().unwrap() += 1;
        }
        Ok(())
    }
}

#[test]
fn metrics_reach_the_guard_and_the_check() {
    let (m, rt) = (PingWhenQuiet::default(), ExecRuntime::new());
    let pool = Pool::builder(m.clone())
        .runtime(rt.handle())
        .build()
        .unwrap();
    let before = Instant::now();
    rt.block_on(async {
        let first = pool.get().await.unwrap();
        let made = Pooled::metrics(&first);
        assert_eq!(made.checkouts(), 1);
        assert!(made.created() >= before - Duration::from_millis(5));
        drop(first);
        // Used again at once: the check sees checkout 2, idle for a moment; no ping.
        let again = pool.get().await.unwrap();
        assert_eq!(Pooled::metrics(&again).checkouts(), 2);
        assert_eq!(Pooled::metrics(&again).created(), made.created());
        drop(again);
        assert_eq!(*m.pings.lock().unwrap(), 0);
        // Left idle for 100 ms: the check sees it, and pings.
        async_io::Timer::after(Duration::from_millis(100)).await;
        let later = pool.get().await.unwrap();
        let seen = *m.seen.lock().unwrap().last().unwrap();
        assert_eq!(seen.checkouts(), 3);
        assert!(seen.idle_for() >= Duration::from_millis(100), "{seen:?}");
        assert!(seen.last_returned() >= made.created());
        assert_eq!(*m.pings.lock().unwrap(), 1);
        drop(later);
        pool.close().await;
    });
}

#[test]
fn retain_closes_the_idle_connections_that_fail_the_predicate() {
    use gracepool_testkit::Counting;
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = Pool::builder(m.clone())
        .max_size(4)
        .runtime(rt.handle())
        .build()
        .unwrap();
    rt.block_on(async {
        let (a, b) = futures_lite::future::zip(pool.get(), pool.get()).await;
        let (c, d) = futures_lite::future::zip(pool.get(), pool.get()).await;
        let held = d.unwrap();
        drop((a, b, c));
        // Three idle, one out: keep the even ids among the idle ones.
        let closed = pool.retain(|conn, metrics| {
            assert_eq!(metrics.checkouts(), 1);
            conn.id % 2 == 0
        });
        let evens_idle = [1, 2, 3, 4]
            .iter()
            .filter(|&&id| id != held.id && id % 2 == 0)
            .count();
        assert_eq!(closed, 3 - evens_idle);
        assert_eq!(pool.status().idle, evens_idle);
        // Gracefully: through the actor, goodbye first.
        let until = Instant::now() + Duration::from_secs(5);
        while pool.status().counters.closed_graceful < closed as u64 {
            assert!(Instant::now() < until);
            async_io::Timer::after(Duration::from_millis(1)).await;
        }
        // During a close it still closes each connection once.
        drop(held);
        pool.begin_close();
        pool.retain(|_, _| false);
        let report = pool.close().await;
        assert!(report.is_complete(), "{report:?}");
    });
    m.assert_balanced();
}
