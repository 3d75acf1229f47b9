//! The guide's recipe "One pool per test" (book/src/ch13-recipes.md includes this file): each
//! `#[tokio::test]` builds its own pool on its own runtime, and ends by closing it and asserting
//! that every connection it made is closed.

use gracepool::{Manager, Pool};
use gracepool_tokio::TokioRuntime;

/// Your manager, pointed at a test backend.
struct Numbers;

impl Manager for Numbers {
    type Connection = u32;
    type Error = std::io::Error;

    async fn create(&self) -> Result<u32, std::io::Error> {
        Ok(42)
    }
}

/// A fresh pool on the calling test's runtime. `#[tokio::test]` makes a runtime per test and
/// drops it when the test ends, so the pool must not outlive its test.
fn test_pool() -> Pool<Numbers> {
    Pool::builder(Numbers)
        .max_size(4)
        .runtime(TokioRuntime::current())
        .build()
        .expect("a valid configuration")
}

/// Closes the pool while the test's runtime still runs, and fails the test if any connection
/// is left open: a guard kept past the end of the test is a bug worth seeing.
async fn close_and_check(pool: Pool<Numbers>) {
    let report = pool.close().await;
    assert!(report.is_complete(), "connections left open: {report:?}");
    assert!(!report.fallback, "not closed by the pool actor: {report:?}");
    let c = report.counters;
    assert_eq!(
        c.created,
        c.closed_graceful + c.closed_sync + c.close_failed + c.detached
    );
}

#[tokio::test]
async fn one_connection() {
    let pool = test_pool();
    let conn = pool.get().await.expect("a connection");
    assert_eq!(*conn, 42);
    drop(conn);
    close_and_check(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks() {
    let pool = test_pool();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let pool = pool.clone();
        tasks.spawn(async move {
            let conn = pool.get().await.expect("a connection");
            tokio::task::yield_now().await;
            drop(conn);
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("the task finished");
    }
    close_and_check(pool).await;
}
