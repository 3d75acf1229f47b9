//! Test doubles shared by gracepool's tests, scenario binaries and benches.
//!
//! - [`Counting`]: a manager that counts what it creates, checks, shuts down and closes, with
//!   knobs to fail, panic or stall each step. Its connections know whether they were closed:
//!   one dropped without `close` counts as a leak, one closed twice as a double close. It is the
//!   independent witness of the pool's accounting.
//! - [`ExecRuntime`]: the smallest `Runtime`, around an `async-executor` executor and
//!   `async-io` timers, for testing the core without any adapter.
//! - [`child`]: running a shutdown scenario in a child process and reading its counts.
//! - [`server`]: what tests against a real server share (a free port, a temporary directory,
//!   a child process stopped by its pid, a visible skip that fails under `CI=true`).
//! - [`postgres`]: a throwaway PostgreSQL server on that base, and what tests ask it.
//! - [`redis`]: a throwaway `redis-server` on that base, and a runtime-free client to ask it
//!   what it saw (clients connected, commands called, how clients left).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Weak};
use std::time::Duration;

use gracepool::{BoxFuture, Goodbye, Manager, Runtime, SpawnError, Unhealthy};

pub mod child;
pub mod fault;
pub mod netfilter;
#[cfg(unix)]
pub mod pgbouncer;
#[cfg(unix)]
pub mod postgres;
pub mod redis;
pub mod server;

/// What a [`Counting`] manager does at one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Work normally.
    #[default]
    None,
    /// Return an error.
    Fail,
    /// Panic.
    Panic,
    /// Never finish (only for async steps).
    Stall,
}

impl Fault {
    fn code(self) -> u64 {
        self as u64
    }
    fn from_code(c: u64) -> Self {
        match c {
            1 => Fault::Fail,
            2 => Fault::Panic,
            3 => Fault::Stall,
            _ => Fault::None,
        }
    }
}

/// The error a [`Counting`] manager fails with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestError(pub &'static str);

impl fmt::Display for TestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "test manager: {} failed", self.0)
    }
}

impl std::error::Error for TestError {}

/// Counts shared by a [`Counting`] manager and its connections.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections created.
    pub created: AtomicU64,
    /// Health checks run.
    pub checked: AtomicU64,
    /// Graceful shutdowns that completed.
    pub shut_down: AtomicU64,
    /// `close` calls, successful or not.
    pub closed: AtomicU64,
    /// Connections dropped without ever reaching `close`.
    pub leaked: AtomicU64,
    /// Connections that reached `close` twice (must stay 0).
    pub double_closed: AtomicU64,
    create_fault: AtomicU64,
    check_fault: AtomicU64,
    shutdown_fault: AtomicU64,
    /// `close` fails for connections whose id is a multiple of this (0: never).
    close_fail_every: AtomicU64,
    close_panics: AtomicBool,
    broken: AtomicBool,
    create_delay_ms: AtomicU64,
    permanent: AtomicBool,
}

/// A connection made by [`Counting`]: an id, where it was born, and a record of whether it
/// was closed.
pub struct Conn {
    /// Its creation number, from 1.
    pub id: u64,
    /// The birthplace of the thread that created it (see [`set_birthplace`]): which runtime
    /// it was born on, for tests where the pool moves from one runtime to another.
    pub born: u64,
    closed: bool,
    stats: Arc<Stats>,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.id)
            .field("born", &self.born)
            .finish()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if !self.closed {
            self.stats.leaked.fetch_add(1, SeqCst);
        }
    }
}

/// The counting test manager. Cloning shares the counts and knobs.
#[derive(Clone, Default)]
pub struct Counting {
    stats: Arc<Stats>,
}

impl Counting {
    /// A manager that works normally until its knobs are turned.
    pub fn new() -> Self {
        Self::default()
    }

    /// The shared counts.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// What `create` does from now on.
    pub fn set_create(&self, fault: Fault) {
        self.stats.create_fault.store(fault.code(), SeqCst);
    }

    /// What `check` does from now on.
    pub fn set_check(&self, fault: Fault) {
        self.stats.check_fault.store(fault.code(), SeqCst);
    }

    /// What `shutdown` does from now on.
    pub fn set_shutdown(&self, fault: Fault) {
        self.stats.shutdown_fault.store(fault.code(), SeqCst);
    }

    /// `close` fails for every connection whose id is a multiple of `n` (0: never); with
    /// `panic`, it panics for them instead.
    pub fn set_close_fails_every(&self, n: u64, panic: bool) {
        self.stats.close_fail_every.store(n, SeqCst);
        self.stats.close_panics.store(panic, SeqCst);
    }

    /// Whether `is_broken` reports returning connections as broken from now on.
    pub fn set_broken(&self, broken: bool) {
        self.stats.broken.store(broken, SeqCst);
    }

    /// Whether `is_permanent` calls every creation error permanent.
    pub fn set_permanent(&self, permanent: bool) {
        self.stats.permanent.store(permanent, SeqCst);
    }

    /// `create` waits this long (on an `async-io` timer, which works under any runtime).
    pub fn set_create_delay(&self, delay: Duration) {
        self.stats
            .create_delay_ms
            .store(delay.as_millis() as u64, SeqCst);
    }

    /// Connections created.
    pub fn created(&self) -> u64 {
        self.stats.created.load(SeqCst)
    }

    /// `close` calls made.
    pub fn closed(&self) -> u64 {
        self.stats.closed.load(SeqCst)
    }

    /// Connections dropped without `close`.
    pub fn leaked(&self) -> u64 {
        self.stats.leaked.load(SeqCst)
    }

    /// Asserts the manager-side promise: every created connection closed exactly once.
    pub fn assert_balanced(&self) {
        let s = &self.stats;
        assert_eq!(
            s.double_closed.load(SeqCst),
            0,
            "a connection was closed twice"
        );
        assert_eq!(
            s.leaked.load(SeqCst),
            0,
            "a connection was dropped without close"
        );
        assert_eq!(
            s.created.load(SeqCst),
            s.closed.load(SeqCst),
            "created != closed"
        );
    }

    /// One line for a scenario to print at exit: `created=N closed=N leaked=N double=N`.
    pub fn summary(&self) -> String {
        let s = &self.stats;
        format!(
            "created={} closed={} leaked={} double={}",
            s.created.load(SeqCst),
            s.closed.load(SeqCst),
            s.leaked.load(SeqCst),
            s.double_closed.load(SeqCst)
        )
    }
}

thread_local! {
    static BIRTHPLACE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Tags the connections [`Counting`] creates on this thread from now on with `place` (their
/// [`Conn::born`]; 0 where it was never set). Call it on every thread that runs a runtime (for
/// tokio's multi-thread runtime, in `on_thread_start`), one `place` per runtime.
pub fn set_birthplace(place: u64) {
    BIRTHPLACE.with(|b| b.set(place));
}

async fn act(fault: Fault, step: &'static str) -> Result<(), TestError> {
    match fault {
        Fault::None => Ok(()),
        Fault::Fail => Err(TestError(step)),
        Fault::Panic => panic!("test manager: {step} panicked on purpose"),
        Fault::Stall => std::future::pending().await,
    }
}

impl Manager for Counting {
    type Connection = Conn;
    type Error = TestError;

    fn create(&self) -> impl Future<Output = Result<Conn, TestError>> + Send {
        let stats = self.stats.clone();
        async move {
            let delay = stats.create_delay_ms.load(SeqCst);
            if delay > 0 {
                async_io::Timer::after(Duration::from_millis(delay)).await;
            }
            act(Fault::from_code(stats.create_fault.load(SeqCst)), "create").await?;
            let id = stats.created.fetch_add(1, SeqCst) + 1;
            Ok(Conn {
                id,
                // Read where the connection is made: the thread polling `create`.
                born: BIRTHPLACE.with(std::cell::Cell::get),
                closed: false,
                stats,
            })
        }
    }

    fn check(
        &self,
        conn: &mut Conn,
        _metrics: &gracepool::Metrics,
    ) -> impl Future<Output = Result<(), Unhealthy<TestError>>> + Send {
        let _ = conn;
        self.stats.checked.fetch_add(1, SeqCst);
        let fault = Fault::from_code(self.stats.check_fault.load(SeqCst));
        async move { Ok(act(fault, "check").await?) }
    }

    fn is_permanent(&self, error: &TestError) -> bool {
        let _ = error;
        self.stats.permanent.load(SeqCst)
    }

    fn is_broken(&self, conn: &mut Conn) -> bool {
        let _ = conn;
        self.stats.broken.load(SeqCst)
    }

    /// Says goodbye (counted in `shut_down`), then ends the connection with `close`. Whatever
    /// cuts the goodbye short (a fault, a timeout, a runtime teardown dropping the future), the
    /// connection still reaches `close` once, as a real socket's drop would end it.
    fn shutdown(&self, conn: Conn) -> impl Future<Output = Goodbye<TestError>> + Send {
        let mut ending = EndOnDrop {
            manager: self.clone(),
            conn: Some(conn),
        };
        let fault = Fault::from_code(self.stats.shutdown_fault.load(SeqCst));
        async move {
            if let Err(e) = act(fault, "shutdown").await {
                return Goodbye::Failed(e);
            }
            let (manager, conn) = ending.take();
            manager.stats.shut_down.fetch_add(1, SeqCst);
            match manager.close(conn) {
                Ok(()) => Goodbye::Said,
                Err(e) => Goodbye::Failed(e),
            }
        }
    }

    fn close(&self, mut conn: Conn) -> Result<(), TestError> {
        let s = &self.stats;
        if conn.closed {
            s.double_closed.fetch_add(1, SeqCst);
        }
        conn.closed = true;
        s.closed.fetch_add(1, SeqCst);
        let every = s.close_fail_every.load(SeqCst);
        if every > 0 && conn.id % every == 0 {
            if s.close_panics.load(SeqCst) {
                panic!("test manager: close panicked on purpose");
            }
            return Err(TestError("close"));
        }
        Ok(())
    }
}

/// A connection inside [`Counting`]'s `shutdown`: closed when the goodbye is cut short.
struct EndOnDrop {
    manager: Counting,
    conn: Option<Conn>,
}

impl EndOnDrop {
    fn take(&mut self) -> (Counting, Conn) {
        let conn = self
            .conn
            .take()
            .expect("taken once, when the goodbye went out");
        (self.manager.clone(), conn)
    }
}

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // A close that fails or panics still counts the connection as closed.
            let manager = &self.manager;
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| manager.close(conn)));
        }
    }
}

/// An `async-executor` executor that owns its tasks: dropping it (its last clone) drops every
/// task, the pool actor included, as a runtime teardown does. Tasks run while someone runs it.
#[derive(Clone)]
pub struct ExecRuntime {
    /// The executor tasks are spawned on.
    pub executor: Arc<async_executor::Executor<'static>>,
}

impl ExecRuntime {
    /// A new executor.
    pub fn new() -> Self {
        ExecRuntime {
            executor: Arc::new(async_executor::Executor::new()),
        }
    }

    /// The `Runtime` to give a pool: it holds the executor weakly, so the pool does not keep
    /// the executor alive, and spawning after the executor is gone is an error.
    pub fn handle(&self) -> ExecHandle {
        ExecHandle(Arc::downgrade(&self.executor))
    }

    /// Runs `fut` to completion on this thread, running the executor's tasks meanwhile.
    pub fn block_on<T>(&self, fut: impl Future<Output = T>) -> T {
        futures_lite::future::block_on(self.executor.run(fut))
    }
}

impl Default for ExecRuntime {
    fn default() -> Self {
        Self::new()
    }
}

/// A weak handle to an [`ExecRuntime`], with `async-io` timers (which work from any thread or
/// runtime, also after the executor is gone).
#[derive(Clone)]
pub struct ExecHandle(Weak<async_executor::Executor<'static>>);

impl Runtime for ExecHandle {
    fn spawn(&self, task: BoxFuture) -> Result<(), SpawnError> {
        let executor = self
            .0
            .upgrade()
            .ok_or_else(|| SpawnError::new("the executor was dropped"))?;
        executor.spawn(task).detach();
        Ok(())
    }

    fn sleep(&self, duration: Duration) -> BoxFuture {
        Box::pin(async move {
            async_io::Timer::after(duration).await;
        })
    }
}

/// Asserts the pool-side promise on a counters snapshot: every created connection reached
/// exactly one end, and no ended connection is counted under two reasons (the reasons,
/// `closed_by_close()` aside, add up to no more than the connections that ended).
pub fn assert_accounted(c: &gracepool::Counters) {
    assert_eq!(
        c.created,
        c.closed_graceful + c.closed_sync + c.close_failed + c.detached,
        "pool counters do not balance: {c:?}"
    );
    let reasons = c.check_failed
        + c.closed_broken
        + c.closed_idle_timeout
        + c.closed_max_lifetime
        + c.closed_retained
        + c.closed_resized
        + c.closed_surplus
        + c.closed_moved
        + c.closed_refreshed;
    assert!(
        reasons <= c.closed_graceful + c.closed_sync + c.close_failed,
        "a connection counted under two reasons: {c:?}"
    );
}

/// Waits until `ok()` holds, up to `patience`, looking every millisecond (on an `async-io`
/// timer, which works under any runtime); says whether it did.
pub async fn eventually(patience: Duration, ok: impl Fn() -> bool) -> bool {
    let until = std::time::Instant::now() + patience;
    while !ok() {
        if std::time::Instant::now() > until {
            return false;
        }
        async_io::Timer::after(Duration::from_millis(1)).await;
    }
    true
}

/// Waits until `ok` holds of the pool's status, up to 5 s; panics naming `what` and showing
/// the status otherwise.
pub async fn until_status<M: Manager>(
    pool: &gracepool::Pool<M>,
    what: &str,
    ok: impl Fn(&gracepool::Status) -> bool,
) {
    let held = eventually(Duration::from_secs(5), || ok(&pool.status())).await;
    assert!(held, "{what}: {:?}", pool.status());
}

/// A small xorshift generator for random timings in tests, without a dependency: print the
/// seed, so that a failing run can be told apart.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (made odd: xorshift must not start at zero).
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// A generator seeded from the clock's nanoseconds.
    pub fn from_clock() -> Rng {
        Rng::new(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| u64::from(d.subsec_nanos())),
        )
    }

    /// The seed or state now.
    pub fn state(&self) -> u64 {
        self.0
    }

    /// A number below `n` (which must not be 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
