//! Blocking connections in a [gracepool] pool: each connection lives on a thread of its own,
//! and a caller awaits its calls without any runtime's help.
//!
//! # Example
//!
//! ```
//! use gracepool_blocking::{Connector, Manager};
//! use gracepool_tokio::TokioRuntime;
//!
//! /// A stand-in for a blocking driver: a connection is a list of lines.
//! struct Notes;
//!
//! impl Connector for Notes {
//!     type Connection = Vec<String>;
//!     type Error = std::io::Error;
//!
//!     // Runs on the connection's own thread: it may block.
//!     fn open(&self) -> Result<Vec<String>, std::io::Error> {
//!         Ok(Vec::new())
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//!     let pool = gracepool::Pool::builder(Manager::new(Notes))
//!         .max_size(4)
//!         .runtime(TokioRuntime::current())
//!         .build()?;
//!
//!     let mut conn = pool.get().await?;
//!     // The closure runs on the connection's thread; its result comes back here.
//!     let lines = conn
//!         .interact(|notes: &mut Vec<String>| {
//!             notes.push("hello".to_owned());
//!             notes.len()
//!         })
//!         .await?;
//!     assert_eq!(lines, 1);
//!     drop(conn);
//!
//!     // On shutdown: each connection's goodbye (`Connector::close`) runs on its thread.
//!     let report = pool.close().await;
//!     assert_eq!(report.counters.closed_graceful, 1);
//!     Ok(())
//! }
//! ```
//!
//! A [`Connector`] says how to open, check and close one connection of a blocking driver
//! (rusqlite, diesel, a serial port); [`Manager`] makes a gracepool manager of it. A pooled
//! connection derefs to [`Connection`], whose [`interact`](Connection::interact) sends a
//! closure to the connection's thread and awaits what it returns.
//!
//! # Why a thread per connection
//!
//! A blocking call must not run on an async runtime's threads. The usual answer is the
//! runtime's blocking pool (tokio's `spawn_blocking`, smol's `blocking`): a runtime choice, and
//! a task the runtime may refuse or drop while it shuts down. Here each connection is opened on
//! a thread of its own and stays there for its whole life; calls reach it over a channel and
//! the result comes back over a one-shot channel whose receiver wakes any executor's task. So:
//!
//! - the same pool works on tokio, smol, actix or a plain `block_on`, and the crate depends on
//!   none of them (the pool's core stays free of any thread choice too: this crate is apart);
//! - a connection that is not `Send` (or not `Sync`) is fine: it never leaves its thread;
//! - a call that hangs holds only its own thread: other callers use other connections, and
//!   `status()` and `close()` never wait on it (see below);
//! - a runtime torn down mid-call leaves the call running to its end on its thread, which then
//!   closes the connection itself.
//!
//! The cost is one OS thread per open connection (a pool of 16 holds 16 threads, mostly
//! parked) and a channel hand-off per call: no more than sending the call to tokio's
//! blocking pool costs with the connection behind a mutex, and less when many callers share
//! the pool (`examples/handoff.rs` measures both on the same pool).
//!
//! # What a panic does
//!
//! A closure that panics is caught on its thread: the caller gets [`InteractError::Panicked`],
//! and the connection is closed when it comes back to the pool instead of being handed out
//! again (a driver interrupted half-way may be in any state). The thread's default panic hook
//! still prints the panic message, as for any panic; the pool itself prints nothing.
//!
//! # How a connection says goodbye
//!
//! A blocking connection's goodbye is synchronous by nature (SQLite's `close` checkpoints the
//! write-ahead log), and it always runs on the connection's own thread, by
//! [`Connector::close`]:
//!
//! - **While the runtime is alive** ([`Pool::close`](gracepool::Pool::close), or a retired
//!   connection): the pool's actor sends "close" and awaits the thread's answer, without
//!   blocking any async thread. A goodbye that went through counts as `closed_graceful`.
//! - **When the runtime is gone** (the synchronous fallback, `Manager::close`): "close" is
//!   sent and the closing thread waits for the answer, up to [`Manager::close_wait`] (1 s by
//!   default): this is the same wait as closing the connection in place would be. A
//!   connection whose thread is still busy with a call is not waited for at all.
//!
//! # A call still running at close
//!
//! The pool waits for checked-out connections up to its close deadline, as for any backend.
//! Past it, [`Pool::close`](gracepool::Pool::close) returns; the call goes on. When its guard
//! comes back (the call ended, or the caller's future was dropped), "close" is queued behind
//! the call and the thread closes the connection when the call returns; a close nobody waits
//! for is counted in [`Stats::closed_late`]. Nothing is leaked and no `Drop` blocks or spawns:
//! dropping a [`Connection`] only drops a channel's sender, which tells its thread to close.
//! [`Threads::wait_closed`] lets a program's `main` wait for those last closes before it exits
//! (a process that exits kills its threads, and with them any goodbye still running).
//!
//! A caller that drops [`interact`](Connection::interact)'s future before the answer (a
//! timeout around it, a cancelled request) leaves its closure running: the connection is not
//! handed out again, as its next caller would wait behind that closure.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::any::Any;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use gracepool::{Goodbye, Metrics, Unfit, Unhealthy};

/// How to open, check and close one connection of a blocking driver. Every method runs on
/// the connection's own thread, so each may block.
pub trait Connector: Send + Sync + 'static {
    /// The driver's connection. Need not be `Send`: it never leaves its thread.
    type Connection: 'static;
    /// What opening, checking and closing fail with.
    type Error: fmt::Debug + fmt::Display + Send + Sync + 'static;

    /// Opens a connection, on the new connection's thread. Bounded by the pool's create
    /// timeout as the caller sees it; a connection opened after its creation was abandoned is
    /// closed at once on its thread.
    fn open(&self) -> Result<Self::Connection, Self::Error>;

    /// Checks a connection before it is handed out again, when it has been idle for at least
    /// [`Manager::check_after_idle`] (1 s by default): a check is a round trip to the
    /// connection's thread, which a busy pool should not pay on every checkout. Default:
    /// healthy.
    fn check(&self, conn: &mut Self::Connection) -> Result<(), Self::Error> {
        let _ = conn;
        Ok(())
    }

    /// Runs after each call on the connection's thread, and says whether the connection can
    /// be handed out again (SQLite: not if a call left a transaction open). An unfit one is
    /// closed when it comes back to the pool. Must be cheap. Default: fit.
    fn is_fit(&self, conn: &mut Self::Connection) -> bool {
        let _ = conn;
        true
    }

    /// The goodbye: ends the connection. Default: drops it.
    fn close(&self, conn: Self::Connection) -> Result<(), Self::Error> {
        drop(conn);
        Ok(())
    }

    /// Whether an error of [`open`](Connector::open) is one retrying cannot fix (a missing
    /// directory, a read-only file): waiting callers get it at once. Default: transient.
    fn is_permanent(&self, error: &Self::Error) -> bool {
        let _ = error;
        false
    }
}

/// What the pool's manager fails with: the driver's error, or what befell the connection's
/// thread.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error<E> {
    /// The driver's own error, from [`Connector`]'s `open`, `check` or `close`.
    Backend(E),
    /// `open`, `check` or `close` panicked on the connection's thread (the panic's message).
    Panicked(String),
    /// The operating system refused a new thread for the connection.
    Spawn(std::io::Error),
    /// The connection's thread ended without answering (it cannot, short of an abort).
    Gone,
}

impl<E: fmt::Display> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Backend(e) => e.fmt(f),
            Error::Panicked(m) => write!(f, "the connection's thread caught a panic: {m}"),
            Error::Spawn(e) => write!(
                f,
                "no thread could be started for a new connection ({e}): lower the pool's \
                 max_size or the process's thread count"
            ),
            Error::Gone => f.write_str("the connection's thread ended without answering"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for Error<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Backend(e) => Some(e),
            Error::Spawn(e) => Some(e),
            _ => None,
        }
    }
}

/// Why [`Connection::interact`] gave no result.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InteractError {
    /// The closure panicked (the panic's message). The connection is closed when it comes
    /// back to the pool.
    Panicked(String),
    /// The connection's thread is gone: the connection was closed.
    Gone,
}

impl fmt::Display for InteractError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InteractError::Panicked(m) => write!(
                f,
                "the closure panicked on the connection's thread: {m} (the connection will be \
                 closed, not reused)"
            ),
            InteractError::Gone => f.write_str("the connection's thread is gone"),
        }
    }
}

impl std::error::Error for InteractError {}

/// A gracepool manager for the connections a [`Connector`] opens, each on a thread of its own.
pub struct Manager<K: Connector> {
    inner: Arc<Inner<K>>,
    close_wait: Duration,
    check_after_idle: Duration,
    thread_name: String,
}

struct Inner<K> {
    connector: K,
    tracker: Arc<Tracker>,
}

impl<K: Connector> Manager<K> {
    /// A manager for `connector`'s connections.
    pub fn new(connector: K) -> Manager<K> {
        Manager {
            inner: Arc::new(Inner {
                connector,
                tracker: Arc::default(),
            }),
            close_wait: Duration::from_secs(1),
            check_after_idle: Duration::from_secs(1),
            thread_name: "gracepool-conn".to_owned(),
        }
    }

    /// How long the synchronous close (the pool's fallback once its runtime is gone, or a
    /// guard dropped after the pool closed) waits for a connection's goodbye on its thread
    /// before it leaves the thread to finish alone (counted in [`Stats::closed_late`]).
    /// Never waits for a thread busy with a call. Default: 1 s; zero never waits.
    pub fn close_wait(mut self, wait: Duration) -> Manager<K> {
        self.close_wait = wait;
        self
    }

    /// How long a connection must have been idle in the pool before [`Connector::check`]
    /// runs as it is checked out again. Default: 1 s; zero checks on every checkout. A
    /// connection a call left unfit, or still busy, is never handed out, whatever this says.
    /// (The pool's `check_on_checkout(false)` turns every check off.)
    pub fn check_after_idle(mut self, idle: Duration) -> Manager<K> {
        self.check_after_idle = idle;
        self
    }

    /// The name given to each connection's thread (default `gracepool-conn`), as panic
    /// messages and debuggers show it.
    pub fn thread_name(mut self, name: impl Into<String>) -> Manager<K> {
        self.thread_name = name.into();
        self
    }

    /// The connector.
    pub fn connector(&self) -> &K {
        &self.inner.connector
    }

    /// What this manager's threads did so far.
    pub fn stats(&self) -> Stats {
        self.inner.tracker.stats()
    }

    /// A handle on this manager's connection threads that outlives the pool: for a `main` that
    /// waits for the last goodbyes ([`Threads::wait_closed`]) after its runtime is gone.
    pub fn threads(&self) -> Threads {
        Threads(self.inner.tracker.clone())
    }
}

impl<K: Connector + fmt::Debug> fmt::Debug for Manager<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager")
            .field("connector", &self.inner.connector)
            .field("close_wait", &self.close_wait)
            .finish_non_exhaustive()
    }
}

/// Counts of what a [`Manager`]'s connection threads did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections opened.
    pub opened: u64,
    /// Connections closed on their thread (by [`Connector::close`], whatever it returned).
    pub closed: u64,
    /// Of `closed`: those whose goodbye nobody waited for — a call still running when the
    /// pool let the connection go, a close that outlasted [`Manager::close_wait`] or the
    /// pool's shutdown timeout, or a creation abandoned after the connection opened.
    pub closed_late: u64,
    /// Closures (and `open`, `check`, `close`) that panicked, caught on their thread.
    pub panicked: u64,
    /// Connection threads started and not yet ended.
    pub threads: u64,
}

#[derive(Default)]
struct Tracker {
    opened: AtomicU64,
    closed: AtomicU64,
    closed_late: AtomicU64,
    panicked: AtomicU64,
    threads: Mutex<u64>,
    ended: Condvar,
}

impl Tracker {
    fn stats(&self) -> Stats {
        Stats {
            opened: self.opened.load(Relaxed),
            closed: self.closed.load(Relaxed),
            closed_late: self.closed_late.load(Relaxed),
            panicked: self.panicked.load(Relaxed),
            threads: *self.lock(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        // Only counts are held under this lock: a poisoned one still holds a good count.
        self.threads.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A handle on a [`Manager`]'s connection threads; cheap to clone, and it outlives the pool.
#[derive(Clone)]
pub struct Threads(Arc<Tracker>);

impl Threads {
    /// What the threads did so far.
    pub fn stats(&self) -> Stats {
        self.0.stats()
    }

    /// Blocks until every connection thread has closed its connection and ended, or
    /// `timeout` has passed; says whether they all ended. For a program's `main` after its
    /// runtime is gone, or a plain thread: it parks the calling thread.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        let mut threads = self.0.lock();
        while *threads > 0 {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            threads = match self.0.ended.wait_timeout(threads, left) {
                Ok((t, _)) => t,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }
}

impl fmt::Debug for Threads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Threads").field(&self.stats()).finish()
    }
}

/// Counts a connection thread from before it is spawned until it ends (or its spawn failed).
struct Alive(Arc<Tracker>);

impl Alive {
    fn new(tracker: &Arc<Tracker>) -> Alive {
        *tracker.lock() += 1;
        Alive(tracker.clone())
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        *self.0.lock() -= 1;
        self.0.ended.notify_all();
    }
}

/// A call. It runs the caller's closure, then the thread's bookkeeping (given whether the
/// closure panicked), then sends the answer: a caller who has the answer sees the bookkeeping.
type Job<C> = Box<dyn FnOnce(&mut C, &mut dyn FnMut(&mut C, bool)) + Send>;
type Outcome<E> = Result<(), Error<E>>;

/// What a connection's thread is sent.
enum Msg<K: Connector> {
    Call(Job<K::Connection>),
    Close(Reply<K::Error>),
}

/// Where a goodbye's outcome goes.
enum Reply<E> {
    Async(async_channel::Sender<Outcome<E>>),
    Blocking(mpsc::SyncSender<Outcome<E>>),
    Nobody,
}

impl<E> Reply<E> {
    /// Whether someone was there to receive it.
    fn send(self, outcome: Outcome<E>) -> bool {
        match self {
            Reply::Async(tx) => tx.try_send(outcome).is_ok(),
            Reply::Blocking(tx) => tx.try_send(outcome).is_ok(),
            Reply::Nobody => false,
        }
    }
}

/// What the async side and the thread share of one connection.
#[derive(Default)]
struct Shared {
    /// Calls sent and not yet finished on the thread.
    queued: AtomicUsize,
    /// Set by the thread when [`Connector::is_fit`] said no, or a call panicked.
    unfit: std::sync::atomic::AtomicBool,
}

/// A connection of the pool: a handle on the thread that holds the driver's connection.
/// Dropping it tells the thread to close the connection once its queued calls are done.
pub struct Connection<K: Connector> {
    jobs: mpsc::Sender<Msg<K>>,
    shared: Arc<Shared>,
    /// A call was sent and its answer not awaited to the end (the future was dropped).
    abandoned: bool,
    /// The thread is gone.
    gone: bool,
}

impl<K: Connector> fmt::Debug for Connection<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("busy", &self.is_busy())
            .field("fit", &self.is_fit())
            .finish_non_exhaustive()
    }
}

impl<K: Connector> Connection<K> {
    /// Runs `f` with the driver's connection on the connection's thread, and awaits its
    /// result. Needs no runtime: the answer wakes whichever task awaits it.
    ///
    /// A panic in `f` is caught there and returned as [`InteractError::Panicked`]; the
    /// connection is then closed when it comes back to the pool. Dropping the future before
    /// the answer leaves `f` running to its end, and the connection is not handed out again.
    pub async fn interact<F, R>(&mut self, f: F) -> Result<R, InteractError>
    where
        F: FnOnce(&mut K::Connection) -> R + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = async_channel::bounded(1);
        let job: Job<K::Connection> = Box::new(move |conn, done| {
            let result = catch_unwind(AssertUnwindSafe(|| f(&mut *conn))).map_err(panic_message);
            done(conn, result.is_err());
            // The caller may have stopped waiting: its loss.
            let _ = tx.try_send(result);
        });
        self.shared.queued.fetch_add(1, Relaxed);
        if self.jobs.send(Msg::Call(job)).is_err() {
            self.shared.queued.fetch_sub(1, Relaxed);
            self.gone = true;
            return Err(InteractError::Gone);
        }
        // Cleared only if the answer is awaited to the end.
        self.abandoned = true;
        let answer = rx.recv().await;
        self.abandoned = false;
        match answer {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(message)) => Err(InteractError::Panicked(message)),
            Err(_) => {
                self.gone = true;
                Err(InteractError::Gone)
            }
        }
    }

    /// Whether the thread is running or has queued a call: one whose caller stopped waiting.
    pub fn is_busy(&self) -> bool {
        self.shared.queued.load(Relaxed) > 0
    }

    /// Whether the connection can be handed out again: no call panicked or was abandoned,
    /// [`Connector::is_fit`] said yes after the last call, and the thread is there.
    pub fn is_fit(&self) -> bool {
        !(self.abandoned || self.gone || self.shared.unfit.load(Relaxed))
    }

    /// Sends the goodbye; `false` when the thread is already gone (it closed the connection
    /// before it ended).
    fn send_close(&self, reply: Reply<K::Error>) -> bool {
        self.jobs.send(Msg::Close(reply)).is_ok()
    }
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a payload that is not a string".to_owned()
    }
}

/// How many times a connection's thread looks for its next message, yielding between looks,
/// before it parks. A busy pool's next call usually comes within microseconds of the last
/// answer; parking and being woken costs a futex wake and a context switch per call, which
/// for a short call (a SQLite point query) is a large part of its cost. 64 yields measured
/// best of 0 and 64 (benches/RESULTS.md); an idle connection pays them once, then parks.
const SPINS_BEFORE_PARKING: u32 = 64;

/// The next message for a connection's thread: looked for a few times, yielding in between,
/// before the thread parks on the channel.
fn next_msg<K: Connector>(jobs: &mpsc::Receiver<Msg<K>>) -> Result<Msg<K>, mpsc::RecvError> {
    for _ in 0..SPINS_BEFORE_PARKING {
        match jobs.try_recv() {
            Ok(msg) => return Ok(msg),
            Err(mpsc::TryRecvError::Disconnected) => return Err(mpsc::RecvError),
            Err(mpsc::TryRecvError::Empty) => thread::yield_now(),
        }
    }
    jobs.recv()
}

/// The body of a connection's thread: open, serve calls in order, close.
fn serve<K: Connector>(
    inner: Arc<Inner<K>>,
    opened: async_channel::Sender<Outcome<K::Error>>,
    jobs: mpsc::Receiver<Msg<K>>,
    shared: Arc<Shared>,
    alive: Alive,
) {
    let tracker = &inner.tracker;
    let panicked = |payload| {
        tracker.panicked.fetch_add(1, Relaxed);
        Error::Panicked(panic_message(payload))
    };
    let mut conn = match catch_unwind(AssertUnwindSafe(|| inner.connector.open())) {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            let _ = opened.try_send(Err(Error::Backend(e)));
            return;
        }
        Err(payload) => {
            let _ = opened.try_send(Err(panicked(payload)));
            return;
        }
    };
    tracker.opened.fetch_add(1, Relaxed);
    let reply = if opened.try_send(Ok(())).is_ok() {
        loop {
            match next_msg(&jobs) {
                Ok(Msg::Call(job)) => {
                    job(&mut conn, &mut |conn, panicked| {
                        if panicked {
                            tracker.panicked.fetch_add(1, Relaxed);
                        }
                        let fit = !panicked
                            && catch_unwind(AssertUnwindSafe(|| inner.connector.is_fit(conn)))
                                .unwrap_or(false);
                        if !fit {
                            shared.unfit.store(true, Relaxed);
                        }
                        shared.queued.fetch_sub(1, Relaxed);
                    });
                }
                Ok(Msg::Close(reply)) => break reply,
                // The handle was dropped without a goodbye: say it all the same.
                Err(_) => break Reply::Nobody,
            }
        }
    } else {
        // Its creation was abandoned (the create timeout, a close): nobody will use it.
        Reply::Nobody
    };
    let outcome = match catch_unwind(AssertUnwindSafe(|| inner.connector.close(conn))) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::Backend(e)),
        Err(payload) => Err(panicked(payload)),
    };
    // Counted before the answer goes out: whoever receives it sees the count.
    tracker.closed.fetch_add(1, Relaxed);
    if !reply.send(outcome) {
        tracker.closed_late.fetch_add(1, Relaxed);
    }
    drop(alive);
}

impl<K: Connector> gracepool::Manager for Manager<K> {
    type Connection = Connection<K>;
    type Error = Error<K::Error>;

    /// Starts the connection's thread, which opens the connection; awaits the outcome.
    async fn create(&self) -> Result<Connection<K>, Error<K::Error>> {
        let (jobs_tx, jobs_rx) = mpsc::channel();
        let (opened_tx, opened_rx) = async_channel::bounded(1);
        let shared = Arc::new(Shared::default());
        let alive = Alive::new(&self.inner.tracker);
        let (inner, thread_shared) = (self.inner.clone(), shared.clone());
        // A failed spawn drops the closure, and `alive` with it.
        thread::Builder::new()
            .name(self.thread_name.clone())
            .spawn(move || serve(inner, opened_tx, jobs_rx, thread_shared, alive))
            .map_err(Error::Spawn)?;
        match opened_rx.recv().await {
            Ok(Ok(())) => Ok(Connection {
                jobs: jobs_tx,
                shared,
                abandoned: false,
                gone: false,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Gone),
        }
    }

    fn is_permanent(&self, error: &Error<K::Error>) -> bool {
        match error {
            Error::Backend(e) => self.inner.connector.is_permanent(e),
            _ => false,
        }
    }

    /// A connection that is not fit ([`Connection::is_fit`]) or still busy is
    /// [`Unhealthy::Closed`] without asking; one idle for at least
    /// [`check_after_idle`](Manager::check_after_idle) runs [`Connector::check`] on its
    /// thread.
    async fn check(
        &self,
        conn: &mut Connection<K>,
        metrics: &Metrics,
    ) -> Result<(), Unhealthy<Error<K::Error>>> {
        if !conn.is_fit() || conn.is_busy() {
            return Err(Unhealthy::Closed);
        }
        if metrics.last_returned().elapsed() < self.check_after_idle {
            return Ok(());
        }
        let inner = self.inner.clone();
        match conn.interact(move |c| inner.connector.check(c)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Unhealthy::Failed(Error::Backend(e))),
            Err(InteractError::Panicked(m)) => Err(Unhealthy::Failed(Error::Panicked(m))),
            Err(InteractError::Gone) => Err(Unhealthy::Closed),
        }
    }

    /// A connection whose call panicked, was abandoned, or that [`Connector::is_fit`]
    /// refused, is closed as it comes back.
    fn unfit(&self, conn: &mut Connection<K>) -> Option<Unfit> {
        (!conn.is_fit()).then_some(Unfit::Connection)
    }

    /// Sends "close" and awaits the thread's answer: [`Goodbye::Said`] when
    /// [`Connector::close`] succeeded. A thread still busy with a call is not waited for: it
    /// closes the connection when the call returns ([`Goodbye::Unconfirmed`]).
    async fn shutdown(&self, conn: Connection<K>) -> Goodbye<Error<K::Error>> {
        if conn.is_busy() {
            return if conn.send_close(Reply::Nobody) {
                Goodbye::Unconfirmed
            } else {
                Goodbye::Unsaid
            };
        }
        let (tx, rx) = async_channel::bounded(1);
        if !conn.send_close(Reply::Async(tx)) {
            return Goodbye::Unsaid;
        }
        match rx.recv().await {
            Ok(Ok(())) => Goodbye::Said,
            Ok(Err(e)) => Goodbye::Failed(e),
            Err(_) => Goodbye::Unsaid,
        }
    }

    /// Sends "close" and waits for the thread's answer up to [`Manager::close_wait`]; a
    /// thread busy with a call is not waited for. Either way the thread closes the
    /// connection; a close nobody waited for is counted in [`Stats::closed_late`].
    fn close(&self, conn: Connection<K>) -> Result<(), Error<K::Error>> {
        if conn.is_busy() || self.close_wait.is_zero() {
            conn.send_close(Reply::Nobody);
            return Ok(());
        }
        let (tx, rx) = mpsc::sync_channel(1);
        if !conn.send_close(Reply::Blocking(tx)) {
            return Ok(());
        }
        match rx.recv_timeout(self.close_wait) {
            Ok(outcome) => outcome,
            // Still closing: it finishes alone.
            Err(_) => Ok(()),
        }
    }
}

// The README's example is compiled with the crate's doctests, so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
