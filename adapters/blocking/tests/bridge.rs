//! The bridge's promises, each on tokio and on smol: calls run on the connection's thread and
//! come back without a runtime's help; a panic is contained and retires its connection; a hung
//! call blocks nobody else, nor `status()` or `close()`; a call abandoned or still running at
//! close leaves its thread to close the connection, counted; an abandoned creation is closed.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use gracepool::{Pool, Runtime};
use gracepool_blocking::{Connector, InteractError, Manager, Threads};
use gracepool_testkit::assert_accounted;

/// Generous outer bound for anything that should happen "soon": never a timing assertion.
const SOON: Duration = Duration::from_secs(20);

/// A connection: its number, and what it was told.
struct Conn {
    id: u64,
}

#[derive(Default)]
struct Counting {
    next: AtomicU64,
    closed: AtomicU64,
    checks: AtomicU64,
    /// When set, every `open` waits for a message on it first.
    open_gate: Mutex<Option<mpsc::Receiver<()>>>,
    /// When set, `close` waits for a message on it first.
    close_gate: Mutex<Option<mpsc::Receiver<()>>>,
}

/// The connector under test: shares its counts with the test.
struct Probe(Arc<Counting>);

impl Connector for Probe {
    type Connection = Conn;
    type Error = std::io::Error;

    fn open(&self) -> Result<Conn, std::io::Error> {
        // Held while waiting: every other open waits too.
        let mut gate = self.0.open_gate.lock().unwrap();
        if let Some(gate) = gate.take() {
            let _ = gate.recv();
        }
        Ok(Conn {
            id: self.0.next.fetch_add(1, Relaxed),
        })
    }

    /// Every check fails: the connection is replaced.
    fn check(&self, _: &mut Conn) -> Result<(), std::io::Error> {
        self.0.checks.fetch_add(1, Relaxed);
        Err(std::io::Error::other("planted check failure"))
    }

    fn close(&self, conn: Conn) -> Result<(), std::io::Error> {
        let _ = conn.id;
        let gate = self.0.close_gate.lock().unwrap().take();
        if let Some(gate) = gate {
            let _ = gate.recv();
        }
        self.0.closed.fetch_add(1, Relaxed);
        Ok(())
    }
}

/// Runs a scenario on a tokio runtime (two workers) and on an async-executor with one extra
/// thread running it, as smol would.
fn on_both<F, Fut>(scenario: F)
where
    F: Fn(Arc<dyn Runtime>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let fut = scenario(Arc::new(gracepool_tokio::TokioRuntime::current()));
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
    let fut = scenario(Arc::new(gracepool_smol::SmolRuntime::from_executor(&ex)));
    futures_lite::future::block_on(ex.run(fut));
    drop(stop);
    runner.join().unwrap().ok();
}

fn wait_closed(threads: &Threads) {
    assert!(
        threads.wait_closed(SOON),
        "every connection thread ends: {threads:?}"
    );
}

#[test]
fn calls_come_back_and_goodbyes_run_on_their_threads() {
    on_both(|rt| async move {
        let counting = Arc::new(Counting::default());
        let pool = Pool::builder(Manager::new(Probe(counting.clone())))
            .max_size(2)
            .runtime_arc(rt)
            .build()
            .unwrap();
        let threads = pool.manager().threads();
        let mut conn = pool.get().await.unwrap();
        let here = std::thread::current().id();
        let (id, there) = conn
            .interact(|c: &mut Conn| (c.id, std::thread::current().id()))
            .await
            .unwrap();
        assert_eq!(id, 0);
        assert_ne!(here, there, "the call ran on the connection's thread");
        let again = conn
            .interact(|_: &mut Conn| std::thread::current().id())
            .await
            .unwrap();
        assert_eq!(there, again, "each connection keeps its thread");
        drop(conn);
        let report = pool.close().await;
        assert_eq!(report.counters.created, 1);
        assert_eq!(report.counters.closed_graceful, 1, "{report:?}");
        assert_accounted(&report.counters);
        assert_eq!(counting.closed.load(Relaxed), 1);
        wait_closed(&threads);
        let s = threads.stats();
        assert_eq!((s.opened, s.closed, s.closed_late, s.threads), (1, 1, 0, 0));
    });
}

#[test]
fn a_panic_is_contained_and_retires_its_connection() {
    on_both(|rt| async move {
        let counting = Arc::new(Counting::default());
        let pool = Pool::builder(Manager::new(Probe(counting.clone())))
            .max_size(1)
            .runtime_arc(rt)
            .build()
            .unwrap();
        let threads = pool.manager().threads();
        let mut conn = pool.get().await.unwrap();
        let err = conn
            .interact(|_: &mut Conn| -> u32 { panic!("planted panic") })
            .await
            .unwrap_err();
        assert_eq!(err, InteractError::Panicked("planted panic".to_owned()));
        assert!(!conn.is_fit());
        drop(conn);
        // A new connection, on a new thread: the panicked one was closed.
        let mut conn = pool.get().await.unwrap();
        assert_eq!(conn.interact(|c: &mut Conn| c.id).await.unwrap(), 1);
        drop(conn);
        let report = pool.close().await;
        assert_eq!(report.counters.created, 2);
        assert_eq!(report.counters.closed_broken, 1, "{report:?}");
        assert_accounted(&report.counters);
        wait_closed(&threads);
        let s = threads.stats();
        assert_eq!((s.opened, s.closed, s.panicked), (2, 2, 1));
    });
}

#[test]
fn a_hung_call_blocks_no_other_caller_nor_status_nor_close() {
    on_both(|rt| async move {
        let counting = Arc::new(Counting::default());
        let pool = pool(&counting, rt, 2);
        let threads = pool.manager().threads();
        let (release, hung) = mpsc::channel::<()>();
        let (started_tx, started) = async_channel::bounded::<()>(1);
        let stuck = {
            let pool = pool.clone();
            async move {
                let mut conn = pool.get().await.unwrap();
                conn.interact(move |_: &mut Conn| {
                    started_tx.try_send(()).unwrap();
                    hung.recv().unwrap();
                })
                .await
                .unwrap();
                // The pool closed meanwhile: this guard's drop closes the connection.
                drop(conn);
            }
        };
        let stuck = spawn(stuck);
        started.recv().await.unwrap();

        // Another caller is served, on another connection.
        let mut other = pool.get().await.unwrap();
        assert_eq!(other.interact(|c: &mut Conn| c.id).await.unwrap(), 1);
        drop(other);
        let status = pool.status();
        assert_eq!((status.size, status.in_use), (2, 1));

        // The close waits its deadline for the hung call, no longer.
        let report = pool.close_within(Duration::from_millis(100)).await;
        assert_eq!(report.checked_out, 1, "{report:?}");

        // The call ends; its connection is closed as its guard drops, on its thread.
        release.send(()).unwrap();
        stuck.recv().await.unwrap();
        wait_closed(&threads);
        let c = pool.status().counters;
        assert_accounted(&c);
        let s = threads.stats();
        assert_eq!((s.opened, s.closed), (2, 2), "{s:?}");
        assert_eq!(counting.closed.load(Relaxed), 2);
    });
}

#[test]
fn an_abandoned_call_retires_its_connection_and_its_thread_closes_it_later() {
    on_both(|rt| async move {
        let counting = Arc::new(Counting::default());
        // Goodbyes and the close may take all the time they like: they must not wait for the
        // abandoned call at all.
        let pool = Pool::builder(Manager::new(Probe(counting.clone())))
            .max_size(2)
            .shutdown_timeout(Duration::from_secs(3600))
            .close_deadline(Duration::from_secs(3600))
            .runtime_arc(rt)
            .build()
            .unwrap();
        let threads = pool.manager().threads();
        let (release, hung) = mpsc::channel::<()>();
        let mut conn = pool.get().await.unwrap();
        let call = conn.interact(move |_: &mut Conn| hung.recv().unwrap());
        // A timeout around the call: the caller stops waiting.
        let gave_up = futures_lite::future::or(async { call.await.ok().map(|_| false) }, async {
            async_io::Timer::after(Duration::from_millis(50)).await;
            Some(true)
        })
        .await;
        assert_eq!(gave_up, Some(true));
        assert!(!conn.is_fit() && conn.is_busy());
        drop(conn);

        // Not handed out again: the next caller gets a new connection at once.
        let mut next = pool.get().await.unwrap();
        assert_eq!(next.interact(|c: &mut Conn| c.id).await.unwrap(), 1);
        drop(next);
        let report = within_soon(pool.close(), "the close waited for an abandoned call").await;
        assert_accounted(&report.counters);
        assert_eq!(report.counters.closed_broken, 1, "{report:?}");
        assert_eq!(report.counters.closed_unconfirmed, 1, "{report:?}");
        assert_eq!(
            counting.closed.load(Relaxed),
            1,
            "the busy one is not closed yet"
        );

        release.send(()).unwrap();
        wait_closed(&threads);
        let s = threads.stats();
        assert_eq!((s.opened, s.closed, s.closed_late), (2, 2, 1), "{s:?}");
    });
}

#[test]
fn an_abandoned_creation_is_closed_on_its_thread() {
    on_both(|rt| async move {
        let counting = Arc::new(Counting::default());
        let (open, gate) = mpsc::channel();
        *counting.open_gate.lock().unwrap() = Some(gate);
        let pool = Pool::builder(Manager::new(Probe(counting.clone())))
            .max_size(1)
            .create_timeout(Duration::from_millis(50))
            .wait_timeout(Duration::from_millis(200))
            .runtime_arc(rt)
            .build()
            .unwrap();
        let threads = pool.manager().threads();
        assert!(
            pool.get().await.is_err(),
            "the open hangs past both timeouts"
        );
        open.send(()).unwrap();
        let mut conn = pool.get().await.unwrap();
        conn.interact(|_: &mut Conn| ()).await.unwrap();
        drop(conn);
        let report = pool.close().await;
        assert_accounted(&report.counters);
        wait_closed(&threads);
        let s = threads.stats();
        assert_eq!(s.opened, s.closed, "{s:?}");
        assert!(s.closed_late >= 1, "the late one was closed: {s:?}");
        assert_eq!(counting.closed.load(Relaxed), s.opened);
    });
}

fn pool(counting: &Arc<Counting>, rt: Arc<dyn Runtime>, size: usize) -> Pool<Manager<Probe>> {
    Pool::builder(Manager::new(Probe(counting.clone())))
        .max_size(size)
        .runtime_arc(rt)
        .build()
        .expect("a valid configuration")
}

/// Runs `fut` as a task of whichever runtime the caller is on, without naming it: a thread
/// that blocks on it. Its end is signalled on the returned channel.
fn spawn(
    fut: impl std::future::Future<Output = ()> + Send + 'static,
) -> async_channel::Receiver<()> {
    let (done, ended) = async_channel::bounded(1);
    std::thread::spawn(move || {
        futures_lite::future::block_on(fut);
        let _ = done.try_send(());
    });
    ended
}

/// `fut`, or a panic with `what` if it has not finished after [`SOON`].
async fn within_soon<T>(fut: impl std::future::Future<Output = T>, what: &str) -> T {
    futures_lite::future::or(fut, async {
        async_io::Timer::after(SOON).await;
        panic!("{what}")
    })
    .await
}

#[test]
fn the_check_runs_on_the_thread_only_after_the_idle_time() {
    on_both(|rt| async move {
        let counting = Arc::new(Counting::default());
        // Default (1 s): a connection back a moment ago is handed out unchecked.
        let pool = pool(&counting, rt.clone(), 1);
        for _ in 0..3 {
            let mut conn = pool.get().await.unwrap();
            assert_eq!(conn.interact(|c: &mut Conn| c.id).await.unwrap(), 0);
        }
        pool.close().await;
        assert_eq!(counting.checks.load(Relaxed), 0);

        // Zero: every checkout of an idle connection runs the check, which fails here.
        let counting = Arc::new(Counting::default());
        let pool =
            Pool::builder(Manager::new(Probe(counting.clone())).check_after_idle(Duration::ZERO))
                .max_size(1)
                .runtime_arc(rt)
                .build()
                .unwrap();
        drop(pool.get().await.unwrap());
        let mut conn = pool.get().await.unwrap();
        assert_eq!(conn.interact(|c: &mut Conn| c.id).await.unwrap(), 1);
        drop(conn);
        let report = pool.close().await;
        assert_eq!(counting.checks.load(Relaxed), 1);
        assert_eq!(report.counters.check_failed, 1, "{report:?}");
    });
}

/// The synchronous close (here: a guard dropped after the pool closed) waits for a goodbye
/// that hangs no longer than `close_wait`; the thread finishes it later, counted.
#[test]
fn a_hanging_goodbye_holds_the_synchronous_close_no_longer_than_close_wait() {
    on_both(|rt| async move {
        let counting = Arc::new(Counting::default());
        let pool = Pool::builder(
            Manager::new(Probe(counting.clone())).close_wait(Duration::from_millis(100)),
        )
        .max_size(1)
        .runtime_arc(rt)
        .build()
        .unwrap();
        let threads = pool.manager().threads();
        let mut conn = pool.get().await.unwrap();
        conn.interact(|_: &mut Conn| ()).await.unwrap();
        let report = pool.close_within(Duration::ZERO).await;
        assert_eq!(report.checked_out, 1);
        let (release, gate) = mpsc::channel();
        *counting.close_gate.lock().unwrap() = Some(gate);
        // The guard's drop runs Manager::close here: it must come back while the goodbye hangs.
        let dropped = spawn(async move { drop(conn) });
        within_soon(
            dropped.recv(),
            "the guard's drop waited for a hanging goodbye",
        )
        .await
        .unwrap();
        assert_eq!(counting.closed.load(Relaxed), 0, "the goodbye still hangs");
        release.send(()).unwrap();
        wait_closed(&threads);
        let s = threads.stats();
        assert_eq!((s.opened, s.closed, s.closed_late), (1, 1, 1), "{s:?}");
        assert_accounted(&pool.status().counters);
    });
}

/// A connection that is not `Send` lives on its thread for its whole life.
#[test]
fn a_connection_need_not_be_send() {
    struct Local;
    impl Connector for Local {
        type Connection = std::rc::Rc<std::cell::Cell<u32>>;
        type Error = std::io::Error;
        fn open(&self) -> Result<Self::Connection, std::io::Error> {
            Ok(std::rc::Rc::new(std::cell::Cell::new(0)))
        }
    }
    on_both(|rt| async move {
        let pool = Pool::builder(Manager::new(Local))
            .runtime_arc(rt)
            .build()
            .unwrap();
        let mut conn = pool.get().await.unwrap();
        for _ in 0..3 {
            conn.interact(|c: &mut std::rc::Rc<std::cell::Cell<u32>>| c.set(c.get() + 1))
                .await
                .unwrap();
        }
        let n = conn
            .interact(|c: &mut std::rc::Rc<std::cell::Cell<u32>>| c.get())
            .await
            .unwrap();
        assert_eq!(n, 3);
        drop(conn);
        pool.close().await;
    });
}
