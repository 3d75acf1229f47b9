//! What the tests share: a scenario run on tokio and on smol, an outer time bound, a fresh
//! database directory.

#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gracepool::Runtime;

/// Generous outer bound for anything that should happen "soon": never a timing assertion.
pub const SOON: Duration = Duration::from_secs(30);

/// Runs a scenario on a tokio runtime (two workers), then on an async-executor run by the
/// calling thread and one more, as smol runs one.
pub fn on_both<F, Fut>(scenario: F)
where
    F: Fn(Arc<dyn Runtime>, &'static str) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let fut = scenario(Arc::new(gracepool_tokio::TokioRuntime::current()), "tokio");
        tokio::spawn(fut)
            .await
            .expect("the scenario ends well on tokio");
    });
    drop(rt);

    let ex = Arc::new(async_executor::Executor::new());
    let (stop, stopped) = async_channel::bounded::<()>(1);
    let runner = {
        let ex = ex.clone();
        std::thread::spawn(move || futures_lite::future::block_on(ex.run(stopped.recv())))
    };
    let fut = scenario(
        Arc::new(gracepool_smol::SmolRuntime::from_executor(&ex)),
        "smol",
    );
    futures_lite::future::block_on(ex.run(fut));
    drop(stop);
    runner.join().unwrap().ok();
}

/// `fut`, or a panic with `what` if it has not finished after [`SOON`].
pub async fn within_soon<T>(fut: impl Future<Output = T>, what: &str) -> T {
    futures_lite::future::or(fut, async {
        async_io::Timer::after(SOON).await;
        panic!("{what}")
    })
    .await
}

/// A fresh directory for a database, removed when dropped.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("gracepool-sqlite-")
        .tempdir()
        .expect("a temporary directory")
}

/// The `-wal` file beside `db`: its length, or `None` when there is none.
pub fn wal_len(db: &std::path::Path) -> Option<u64> {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(PathBuf::from(wal)).ok().map(|m| m.len())
}
