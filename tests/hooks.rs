//! Hooks. A post-create hook and a pre-checkout hook are the manager's: the end of `create`
//! and `check` (which receives the connection's metrics). A wrapper manager adds them to any
//! manager, as this test shows. What the pool adds is a sink for creation failures that no
//! caller receives.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gracepool::{Error, Goodbye, Manager, Metrics, Pool, Unhealthy};
use gracepool_testkit::{Conn, Counting, ExecRuntime, Fault, TestError};

// ANCHOR: hooked
/// Any manager, with a setup step after each creation (say, `SET search_path`) and a rule
/// that may refuse a connection before it is handed out again.
struct Hooked<M> {
    inner: M,
    set_up: Arc<AtomicU64>,
    refuse: fn(&Conn, &Metrics) -> bool,
}

impl Manager for Hooked<Counting> {
    type Connection = Conn;
    type Error = TestError;

    async fn create(&self) -> Result<Conn, TestError> {
        let conn = self.inner.create().await?;
        // The post-create hook: runs once per connection, before anyone sees it.
        self.set_up.fetch_add(1, SeqCst);
        Ok(conn)
    }

    async fn check(&self, conn: &mut Conn, metrics: &Metrics) -> Result<(), Unhealthy<TestError>> {
        // The pre-checkout hook: may refuse, then the manager's own check.
        if (self.refuse)(conn, metrics) {
            return Err(Unhealthy::Closed);
        }
        self.inner.check(conn, metrics).await
    }

    fn is_broken(&self, conn: &mut Conn) -> bool {
        self.inner.is_broken(conn)
    }

    async fn shutdown(&self, conn: Conn) -> Goodbye<TestError> {
        self.inner.shutdown(conn).await
    }

    fn close(&self, conn: Conn) -> Result<(), TestError> {
        self.inner.close(conn)
    }
}
// ANCHOR_END: hooked

#[test]
fn post_create_and_pre_checkout_hooks_live_in_the_manager() {
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    let set_up = Arc::new(AtomicU64::new(0));
    let hooked = Hooked {
        inner: m.clone(),
        set_up: set_up.clone(),
        // Refuse a connection used three times already.
        refuse: |_, metrics| metrics.checkouts() > 3,
    };
    let pool = Pool::builder(hooked).runtime(rt.handle()).build().unwrap();
    rt.block_on(async {
        let mut ids = Vec::new();
        for _ in 0..7 {
            ids.push(pool.get().await.unwrap().id);
        }
        // Each connection served three checkouts, then was refused and replaced.
        assert_eq!(ids, [1, 1, 1, 2, 2, 2, 3]);
        assert_eq!(set_up.load(SeqCst), 3, "one setup per connection");
        assert_eq!(pool.status().counters.check_failed, 2);
        pool.close().await;
    });
    m.assert_balanced();
}

#[test]
fn the_error_sink_sees_failures_no_caller_receives() {
    // Default: callers ride out failures, so the sink sees every one.
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    m.set_create(Fault::Fail);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let pool = Pool::builder(m.clone())
        .min_idle(1)
        .on_create_error({
            let seen = seen.clone();
            move |e: &Error<TestError>| seen.lock().unwrap().push(e.to_string())
        })
        .runtime(rt.handle())
        .build()
        .unwrap();
    rt.block_on(async {
        async_io::Timer::after(Duration::from_millis(100)).await;
        let n = seen.lock().unwrap().len();
        assert!(n >= 2, "{n} failures seen");
        assert!(seen.lock().unwrap()[0].contains("test manager: create failed"));
        assert_eq!(n as u64, pool.status().counters.create_failed);
        pool.close().await;
    });
    // Fail-fast: a failure handed to a waiting caller is not sent to the sink as well.
    let (m, rt) = (Counting::new(), ExecRuntime::new());
    m.set_create(Fault::Fail);
    let sunk = Arc::new(AtomicU64::new(0));
    let pool = Pool::builder(m.clone())
        .fail_fast(true)
        .on_create_error({
            let sunk = sunk.clone();
            move |_: &Error<TestError>| {
                sunk.fetch_add(1, SeqCst);
            }
        })
        .runtime(rt.handle())
        .build()
        .unwrap();
    rt.block_on(async {
        assert!(matches!(pool.get().await.map(drop), Err(Error::Backend(_))));
        assert_eq!(sunk.load(SeqCst), 0);
        pool.close().await;
    });
}
