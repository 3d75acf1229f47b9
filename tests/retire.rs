//! Connections the actor retires while the pool runs: a farewell that finishes at once is
//! finished on the spot, and the slot it frees still serves a waiting caller.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use gracepool::{Goodbye, Manager, Pool, Unhealthy};
use gracepool_testkit::ExecRuntime;

/// Connection 1 fails its health check; every later one is healthy.
#[derive(Clone, Default)]
struct FirstIsBad {
    created: Arc<AtomicU64>,
    shut_down: Arc<AtomicU64>,
    closed: Arc<AtomicU64>,
}

#[derive(Debug)]
struct Bad;

impl std::fmt::Display for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("bad connection")
    }
}

impl std::error::Error for Bad {}

impl Manager for FirstIsBad {
    type Connection = u64;
    type Error = Bad;

    async fn create(&self) -> Result<u64, Bad> {
        Ok(self.created.fetch_add(1, SeqCst) + 1)
    }

    async fn check(
        &self,
        conn: &mut u64,
        _metrics: &gracepool::Metrics,
    ) -> Result<(), Unhealthy<Bad>> {
        if *conn == 1 {
            Err(Bad)?
        } else {
            Ok(())
        }
    }

    async fn shutdown(&self, conn: u64) -> Goodbye<Bad> {
        self.shut_down.fetch_add(1, SeqCst);
        match self.close(conn) {
            Ok(()) => Goodbye::Said,
            Err(e) => Goodbye::Failed(e),
        }
    }

    fn close(&self, _conn: u64) -> Result<(), Bad> {
        self.closed.fetch_add(1, SeqCst);
        Ok(())
    }
}

#[test]
fn a_retired_connection_frees_its_slot_for_the_waiter() {
    let m = FirstIsBad::default();
    let rt = ExecRuntime::new();
    // One slot, and no maintenance tick to rescue a forgotten waiter: only the actor's
    // reaction to the retired connection can make the second one.
    let pool = Pool::builder(m.clone())
        .max_size(1)
        .maintenance_interval(Duration::from_secs(600))
        .wait_timeout(Duration::from_secs(5))
        .runtime(rt.handle())
        .build()
        .unwrap();
    rt.block_on(async {
        // Connection 1 is handed straight from `create`, unchecked; back in the pool, its
        // next checkout checks it.
        assert_eq!(*pool.get().await.expect("connection 1"), 1);
        let conn = pool
            .get()
            .await
            .expect("connection 2, after 1 failed its check");
        assert_eq!(*conn, 2);
        drop(conn);
        let report = pool.close().await;
        assert!(report.is_complete());
        assert_eq!(report.counters.created, 2);
        assert_eq!(report.counters.check_failed, 1);
        // Both were closed through the actor, farewell first.
        assert_eq!(report.counters.closed_graceful, 2);
    });
    assert_eq!(m.shut_down.load(SeqCst), 2);
    assert_eq!(m.closed.load(SeqCst), 2);
}
