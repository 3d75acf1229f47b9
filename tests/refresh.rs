//! A pool-wide refresh (`Pool::refresh`, or a manager whose `unfit` says the server changed):
//! idle connections retired at once, checked-out ones as they come back, callers served
//! throughout by new connections, every connection still closed exactly once. And a caller
//! marking its connection as done (`Pooled::retire_on_return`).

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use gracepool::{Goodbye, Manager, Metrics, Pool, Pooled, Unfit, Unhealthy};
use gracepool_testkit::{assert_accounted, Conn, Counting, ExecRuntime, TestError};

#[test]
fn refresh_retires_idle_at_once_and_checked_out_on_return() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = Pool::builder(m.clone())
        .max_size(4)
        .runtime(rt.handle())
        .build()
        .unwrap();
    rt.block_on(async {
        let a = pool.get().await.unwrap();
        let b = pool.get().await.unwrap();
        let c = pool.get().await.unwrap();
        let old = [a.id, b.id, c.id];
        drop((a, b));
        gracepool_testkit::until_status(&pool, "two idle", |s| s.idle == 2).await;
        // Two idle go now; the one held goes when it comes back.
        assert_eq!(pool.refresh(), 2);
        gracepool_testkit::until_status(&pool, "the idle ones closed", |s| s.size == 1).await;
        // Callers are served throughout, by new connections.
        let d = pool.get().await.unwrap();
        assert!(!old.contains(&d.id), "a new connection: {}", d.id);
        drop(c);
        let s = pool.status();
        assert_eq!(s.counters.closed_refreshed, 3, "{s:?}");
        assert_eq!(s.counters.refreshes, 1);
        drop(d);
        // Connections made after the refresh stay.
        for _ in 0..5 {
            let e = pool.get().await.unwrap();
            assert!(!old.contains(&e.id));
        }
        assert_eq!(pool.status().counters.closed_refreshed, 3);
        let report = pool.close().await;
        assert_accounted(&report.counters);
        assert_eq!(report.counters.closed_graceful, report.counters.created);
    });
    m.assert_balanced();
}

#[test]
fn a_caller_marks_its_connection_done() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let pool = Pool::builder(m.clone())
        .runtime(rt.handle())
        .build()
        .unwrap();
    rt.block_on(async {
        let mut conn = pool.get().await.unwrap();
        let first = conn.id;
        Pooled::retire_on_return(&mut conn);
        drop(conn);
        let conn = pool.get().await.unwrap();
        assert_ne!(conn.id, first);
        drop(conn);
        let report = pool.close().await;
        assert_eq!(report.counters.closed_broken, 1);
        assert_accounted(&report.counters);
    });
    m.assert_balanced();
}

/// A manager whose connections learn that the server changed role (as a read-only error
/// after a failover would tell them).
struct Demotable {
    inner: Counting,
    demoted: Arc<AtomicBool>,
}

impl Manager for Demotable {
    type Connection = Conn;
    type Error = TestError;

    async fn create(&self) -> Result<Conn, TestError> {
        self.inner.create().await
    }

    async fn check(&self, conn: &mut Conn, metrics: &Metrics) -> Result<(), Unhealthy<TestError>> {
        self.inner.check(conn, metrics).await
    }

    fn unfit(&self, _conn: &mut Conn) -> Option<Unfit> {
        self.demoted.swap(false, SeqCst).then_some(Unfit::Server)
    }

    async fn shutdown(&self, conn: Conn) -> Goodbye<TestError> {
        self.inner.shutdown(conn).await
    }

    fn close(&self, conn: Conn) -> Result<(), TestError> {
        self.inner.close(conn)
    }
}

#[test]
fn a_manager_that_sees_the_server_change_refreshes_the_pool() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let demoted = Arc::new(AtomicBool::new(false));
    let pool = Pool::builder(Demotable {
        inner: m.clone(),
        demoted: demoted.clone(),
    })
    .max_size(4)
    .runtime(rt.handle())
    .build()
    .unwrap();
    rt.block_on(async {
        let held: Vec<_> = vec![
            pool.get().await.unwrap(),
            pool.get().await.unwrap(),
            pool.get().await.unwrap(),
        ];
        let old: Vec<u64> = held.iter().map(|c| c.id).collect();
        let mut held = held.into_iter();
        drop(held.next());
        gracepool_testkit::until_status(&pool, "one idle", |s| s.idle == 1).await;
        // The next connection given back saw the server change: it goes, the idle one goes,
        // and the last one held goes when it comes back.
        demoted.store(true, SeqCst);
        drop(held.next());
        gracepool_testkit::until_status(&pool, "two closed", |s| s.size == 1).await;
        drop(held.next());
        let s = pool.status();
        assert_eq!(s.counters.refreshes, 1, "{s:?}");
        assert_eq!(s.counters.closed_refreshed, 3, "{s:?}");
        let fresh = pool.get_timeout(Duration::from_secs(5)).await.unwrap();
        assert!(!old.contains(&fresh.id));
        drop(fresh);
        let report = pool.close().await;
        assert_accounted(&report.counters);
    });
    m.assert_balanced();
}
