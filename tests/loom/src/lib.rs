//! What gracepool's loom models share: a manager that counts, a runtime with no clock, and the
//! few lines of executor a model needs. Everything here exists only with `--cfg loom`; built
//! without it this crate is empty.
//!
//! The models themselves are in `tests/models.rs`. Each drives a real `gracepool::Pool` —
//! built with `--cfg loom`, its mutexes and atomics, the mailbox's queue and the close event
//! are loom's — from loom threads, so loom runs the pool's own close, drain, return and
//! hand-off code under every interleaving up to its preemption bound.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg(loom)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use gracepool::{BoxFuture, Goodbye, Manager, Pool, Runtime, SpawnError};

/// The preemption bound a model runs with unless `LOOM_MAX_PREEMPTIONS` says otherwise.
pub const DEFAULT_PREEMPTIONS: usize = 2;

/// Runs `model` under loom, every interleaving up to the preemption bound (`bound`, unless
/// `LOOM_MAX_PREEMPTIONS` is set). When the environment names a planted bug
/// (`GRACEPOOL_LOOM_BUG`, set by the model's own "is caught" test in a child process), it is
/// planted first.
pub fn check(bound: usize, model: impl Fn() + Sync + Send + 'static) {
    gracepool::planted::plant(planted_from_env());
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(bound);
    }
    let bound = builder.preemption_bound;
    let runs = Arc::new(AtomicU64::new(0));
    let counted = runs.clone();
    builder.check(move || {
        counted.fetch_add(1, Relaxed);
        model();
    });
    println!(
        "{} interleavings explored (preemption bound {bound:?})",
        runs.load(Relaxed)
    );
}

/// The bug `GRACEPOOL_LOOM_BUG` names, if any.
fn planted_from_env() -> Option<gracepool::planted::Bug> {
    use gracepool::planted::Bug;
    let name = std::env::var("GRACEPOOL_LOOM_BUG").ok()?;
    let bug = match name.as_str() {
        "DrainBeforeClose" => Bug::DrainBeforeClose,
        "SplitJoin" => Bug::SplitJoin,
        "TellBeforeClose" => Bug::TellBeforeClose,
        "ReportTwice" => Bug::ReportTwice,
        "CancelDrops" => Bug::CancelDrops,
        "RefreshReapBeforeMark" => Bug::RefreshReapBeforeMark,
        other => panic!("GRACEPOOL_LOOM_BUG names no planted bug: {other}"),
    };
    Some(bug)
}

/// How a connection ended, as the manager saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// `shutdown` (the actor's graceful close).
    Graceful,
    /// `close` (synchronous: the fallback, a guard, a drain).
    Sync,
}

/// A connection: its number, from 0.
#[derive(Debug)]
pub struct Conn(pub u64);

/// What the manager saw. Plain std atomics and a std mutex, not loom's: they are the test's
/// bookkeeping, never held across a loom operation, and as loom objects they would multiply
/// the interleavings without adding any of the pool's.
#[derive(Debug, Default)]
pub struct Tally {
    created: AtomicU64,
    ends: Mutex<Vec<(u64, End)>>,
}

impl Tally {
    /// Connections created.
    pub fn created(&self) -> u64 {
        self.created.load(Relaxed)
    }

    /// Every ending so far, in order.
    pub fn ends(&self) -> Vec<(u64, End)> {
        self.ends.lock().expect("never poisoned").clone()
    }

    /// Asserts that each of the connections created ended exactly once, and returns how many
    /// ended each way (graceful, sync).
    pub fn assert_each_closed_once(&self) -> (u64, u64) {
        let ends = self.ends();
        let created = self.created();
        for id in 0..created {
            let times = ends.iter().filter(|(end, _)| *end == id).count();
            assert_eq!(
                times, 1,
                "connection {id} lost or closed twice: ended {times} times ({ends:?})"
            );
        }
        let graceful = ends.iter().filter(|(_, e)| *e == End::Graceful).count() as u64;
        (graceful, ends.len() as u64 - graceful)
    }

    fn end(&self, conn: Conn, how: End) {
        self.ends
            .lock()
            .expect("never poisoned")
            .push((conn.0, how));
    }
}

/// A manager whose every step finishes at once and is counted.
#[derive(Debug, Clone, Default)]
pub struct Counting {
    /// What it saw.
    pub tally: Arc<Tally>,
}

impl Manager for Counting {
    type Connection = Conn;
    type Error = std::io::Error;

    fn create(&self) -> impl Future<Output = Result<Conn, std::io::Error>> + Send {
        let id = self.tally.created.fetch_add(1, Relaxed);
        std::future::ready(Ok(Conn(id)))
    }

    fn shutdown(&self, conn: Conn) -> impl Future<Output = Goodbye<std::io::Error>> + Send {
        self.tally.end(conn, End::Graceful);
        std::future::ready(Goodbye::Said)
    }

    fn close(&self, conn: Conn) -> Result<(), std::io::Error> {
        self.tally.end(conn, End::Sync);
        Ok(())
    }
}

/// A runtime without a clock. A model has no time: a sleep shorter than [`SHORT`] is over at
/// once, a longer one never ends. The pools of the models keep maintenance and creation
/// timers long (never), and a closer's patience and the close deadline short (over at
/// once), so the actor and the fallback can both finish a close.
///
/// `spawn` keeps the task for the model to run or drop ([`ModelRuntime::take`]).
#[derive(Clone, Default)]
pub struct ModelRuntime {
    tasks: Arc<Mutex<Vec<BoxFuture>>>,
}

/// Sleeps shorter than this are over at once; longer ones never end.
pub const SHORT: Duration = Duration::from_secs(1);

impl ModelRuntime {
    /// The task spawned (the pool's actor).
    pub fn take(&self) -> BoxFuture {
        let mut tasks = self.tasks.lock().expect("never poisoned");
        assert_eq!(
            tasks.len(),
            1,
            "the pool spawns its actor, and nothing else"
        );
        tasks.pop().expect("checked above")
    }
}

impl Runtime for ModelRuntime {
    fn spawn(&self, task: BoxFuture) -> Result<(), SpawnError> {
        self.tasks.lock().expect("never poisoned").push(task);
        Ok(())
    }

    fn sleep(&self, duration: Duration) -> BoxFuture {
        if duration < SHORT {
            Box::pin(std::future::ready(()))
        } else {
            Box::pin(std::future::pending())
        }
    }
}

/// A pool of at most one connection, created and idle, and its actor's task, not running
/// (the model runs it, or drops it as a runtime shutting down would). Returns the pool, the
/// manager's tally and the actor.
pub fn one_idle(close_deadline: Duration) -> (Pool<Counting>, Arc<Tally>, BoxFuture) {
    let manager = Counting::default();
    let tally = manager.tally.clone();
    let runtime = ModelRuntime::default();
    let pool = Pool::builder(manager)
        .max_size(1)
        .min_idle(1)
        .wait_timeout(None)
        .create_timeout(None)
        .shutdown_timeout(None)
        .check_on_checkout(false)
        .idle_timeout(None)
        .max_lifetime(None)
        .maintenance_interval(Duration::from_secs(3600))
        .close_deadline(close_deadline)
        .runtime(runtime.clone())
        .build()
        .expect("a valid configuration");
    let mut actor = runtime.take();
    // The actor creates the `min_idle` connection on its first events.
    for _ in 0..16 {
        if pool.status().idle == 1 {
            return (pool, tally, actor);
        }
        let _ = poll_once(actor.as_mut());
    }
    panic!(
        "the actor did not create the idle connection: {:?}",
        pool.status()
    );
}

/// Polls `fut` once, with a waker that does nothing.
pub fn poll_once<F: Future + ?Sized>(fut: Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(Waker::noop()))
}

/// Runs a future that finishes without waiting for another thread (it may yield a few times,
/// waking itself).
pub fn at_once<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    for _ in 0..4 {
        if let Poll::Ready(out) = poll_once(fut.as_mut()) {
            return out;
        }
    }
    panic!("expected to finish at once");
}
