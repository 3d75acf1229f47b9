//! The `Manager` contract as a user meets it: any error type, a goodbye that says what happened,
//! a health check with nothing but a flag, and a farewell cut short.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use gracepool::{Error, Goodbye, Manager, Pool, Unhealthy};
use gracepool_testkit::ExecRuntime;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A connection that counts how it ended: dropped (without a goodbye), or after a goodbye.
struct Conn {
    id: u64,
    dropped: Arc<AtomicU64>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.dropped.fetch_add(1, SeqCst);
    }
}

/// Error type `Box<dyn Error + Send + Sync>`; the goodbye goes out only while `peer_up`.
#[derive(Clone, Default)]
struct Boxed {
    created: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
    fail_create: Arc<AtomicBool>,
    peer_up: Arc<AtomicBool>,
    stall_goodbye: Arc<AtomicBool>,
    closed_flag: Arc<AtomicBool>,
}

impl Manager for Boxed {
    type Connection = Conn;
    type Error = BoxError;

    async fn create(&self) -> Result<Conn, BoxError> {
        if self.fail_create.load(SeqCst) {
            return Err("connection refused by the test".into());
        }
        Ok(Conn {
            id: self.created.fetch_add(1, SeqCst) + 1,
            dropped: self.dropped.clone(),
        })
    }

    async fn check(
        &self,
        _conn: &mut Conn,
        _metrics: &gracepool::Metrics,
    ) -> Result<(), Unhealthy<BoxError>> {
        if self.closed_flag.load(SeqCst) {
            return Err(Unhealthy::Closed);
        }
        Ok(())
    }

    async fn shutdown(&self, conn: Conn) -> Goodbye<BoxError> {
        if self.stall_goodbye.load(SeqCst) {
            // The pool's shutdown timeout drops this future, and `conn` with it.
            std::future::pending::<()>().await;
        }
        let said = self.peer_up.load(SeqCst);
        drop(conn);
        if said {
            Goodbye::Said
        } else {
            Goodbye::Unsaid
        }
    }
}

fn pool(m: &Boxed, rt: &ExecRuntime) -> Pool<Boxed> {
    Pool::builder(m.clone())
        .max_size(2)
        .shutdown_timeout(Duration::from_millis(50))
        .runtime(rt.handle())
        .build()
        .expect("a valid configuration")
}

#[test]
fn a_boxed_error_type_reaches_the_caller_with_its_message() {
    let (m, rt) = (Boxed::default(), ExecRuntime::new());
    m.fail_create.store(true, SeqCst);
    let pool = Pool::builder(m.clone())
        .wait_timeout(Duration::from_millis(200))
        .fail_fast(true)
        .runtime(rt.handle())
        .build()
        .unwrap();
    rt.block_on(async {
        let Err(e) = pool.get().await else {
            panic!("creation fails")
        };
        assert!(matches!(e, Error::Backend(_)), "{e:?}");
        assert!(
            e.to_string().contains("connection refused by the test"),
            "{e}"
        );
        pool.close().await;
    });
}

#[test]
fn only_a_goodbye_that_went_out_counts_as_graceful() {
    let (m, rt) = (Boxed::default(), ExecRuntime::new());
    let pool = pool(&m, &rt);
    rt.block_on(async {
        let (a, b) = futures_lite::future::zip(pool.get(), pool.get()).await;
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!((a.id, b.id), (1, 2));
        // One goodbye goes out while the peer is up; the other finds it gone.
        m.peer_up.store(true, SeqCst);
        drop(a);
        let closing = pool.close();
        let report = futures_lite::future::zip(closing, async {
            async_io::Timer::after(Duration::from_millis(20)).await;
            m.peer_up.store(false, SeqCst);
            drop(b);
        })
        .await
        .0;
        assert!(report.is_complete());
        assert_eq!(report.counters.closed_graceful, 1);
        assert_eq!(report.counters.closed_sync, 1);
    });
    assert_eq!(m.dropped.load(SeqCst), 2);
}

#[test]
fn a_goodbye_cut_short_drops_its_connection_and_counts_it_once() {
    let (m, rt) = (Boxed::default(), ExecRuntime::new());
    m.stall_goodbye.store(true, SeqCst);
    let pool = pool(&m, &rt);
    rt.block_on(async {
        drop(pool.get().await.unwrap());
        let report = pool.close().await;
        assert!(report.is_complete(), "{report:?}");
        assert_eq!(report.counters.closed_sync, 1);
        assert_eq!(report.counters.closed_graceful, 0);
    });
    assert_eq!(
        m.dropped.load(SeqCst),
        1,
        "the connection went with the future"
    );
}

#[test]
fn a_check_with_nothing_but_a_flag_retires_the_connection() {
    let (m, rt) = (Boxed::default(), ExecRuntime::new());
    let pool = pool(&m, &rt);
    rt.block_on(async {
        drop(pool.get().await.unwrap());
        m.closed_flag.store(true, SeqCst);
        let c = pool.get().await.unwrap();
        assert_eq!(c.id, 2, "connection 1 was refused by its check");
        assert_eq!(pool.status().counters.check_failed, 1);
        drop(c);
        pool.close().await;
    });
    assert_eq!(m.created.load(SeqCst), m.dropped.load(SeqCst));
}
