//! A pool in a `static`, shared by `#[tokio::test]` functions that each run on their own
//! runtime: the pool follows its callers ([`Ambient`]), moving its actor to a live runtime each
//! time the one it ran on ends.
//!
//! Each connection knows the runtime it was born on, and works only while that runtime lives
//! (a driver task there, as a real client's connection task). The manager's health check asks
//! whether the driver still runs, as a real one would ask whether its socket is closed; it is
//! turned off here, so that what is tested is the pool's own guarantee.
//!
//! Run as the harness runs them (in parallel by default), and, by `sequential_in_a_child`,
//! again in a child process with `--test-threads=1`, where every runtime has ended before the
//! next test starts: there every connection handed out must have been born on the test's own
//! runtime, and the pool must have moved once per test after the first. In parallel, a test
//! may be handed a connection of a runtime that another test is ending at that moment (nothing
//! can know yet); a connection of a runtime whose end began before the `get` did — by more than
//! a scheduling margin — is a failure. Whichever test ends last closes the pool and checks that
//! every connection created was closed exactly once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use gracepool::{Manager, Metrics, Pool, Unhealthy};
use gracepool_tokio::Ambient;
use tokio::runtime::{Handle, Id};

/// How many `shared_*` tests there are: the last of them to end closes the pool.
const TESTS: usize = 4;

/// In parallel, how long after a runtime began to end a connection born there may still be
/// handed out: the pool learns of the end when the runtime drops the actor's task, which it
/// does in the same teardown, microseconds later. Generous, for a loaded machine.
const MARGIN: Duration = Duration::from_millis(250);

struct Conn {
    id: u64,
    born: Id,
    alive: Arc<AtomicBool>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Conn {
    fn alive(&self) -> bool {
        self.alive.load(SeqCst)
    }
}

/// Clears `alive` when the driver task ends: the connection was closed, or the runtime dropped
/// the task.
struct Driver(Arc<AtomicBool>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.store(false, SeqCst);
    }
}

#[derive(Default)]
struct Born {
    next: AtomicU64,
    created: AtomicU64,
    closed: Mutex<HashSet<u64>>,
    closed_twice: AtomicU64,
}

#[derive(Debug)]
struct Dead;

impl std::fmt::Display for Dead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the connection's runtime is gone")
    }
}

/// The manager: its books are in `BORN`, where the tests can read them.
struct Books;

impl Manager for Books {
    type Connection = Conn;
    type Error = Dead;

    async fn create(&self) -> Result<Conn, Dead> {
        let id = BORN.next.fetch_add(1, SeqCst);
        let alive = Arc::new(AtomicBool::new(true));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let driver = Driver(alive.clone());
        // Like a client's connection task: spawned where the connection is made.
        tokio::spawn(async move {
            let _driver = driver;
            let _ = stopped.await;
        });
        BORN.created.fetch_add(1, SeqCst);
        Ok(Conn {
            id,
            born: Handle::current().id(),
            alive,
            _stop: stop,
        })
    }

    async fn check(&self, conn: &mut Conn, _: &Metrics) -> Result<(), Unhealthy<Dead>> {
        if conn.alive() {
            Ok(())
        } else {
            Err(Unhealthy::Closed)
        }
    }

    fn close(&self, conn: Conn) -> Result<(), Dead> {
        if !BORN.closed.lock().unwrap().insert(conn.id) {
            BORN.closed_twice.fetch_add(1, SeqCst);
        }
        Ok(())
    }
}

static BORN: LazyLock<Born> = LazyLock::new(Born::default);

// ANCHOR: pool
static POOL: LazyLock<Pool<Books>> = LazyLock::new(|| {
    Pool::builder(Books)
        .max_size(4)
        .wait_timeout(Duration::from_secs(10))
        // The pool's own guarantee is tested, not the manager's check: with it on, the
        // check would also turn away a connection whose driver is gone.
        .check_on_checkout(false)
        .runtime(Ambient::new())
        .build()
        .expect("a valid configuration")
});
// ANCHOR_END: pool

/// When each test's runtime began to end (its sentinel task was dropped).
static ENDED: LazyLock<Mutex<HashMap<Id, Instant>>> = LazyLock::new(Default::default);
static FINISHED: AtomicUsize = AtomicUsize::new(0);
/// Connections handed out in parallel whose runtime was ending at that moment.
static CAUGHT_ENDING: AtomicU64 = AtomicU64::new(0);

fn sequential() -> bool {
    std::env::var_os("STATIC_POOL_SEQUENTIAL").is_some()
}

struct Sentinel(Id);

impl Drop for Sentinel {
    fn drop(&mut self) {
        ENDED.lock().unwrap().insert(self.0, Instant::now());
    }
}

/// The test's runtime: a task on it that notes when the runtime ends.
fn start() {
    let sentinel = Sentinel(Handle::current().id());
    tokio::spawn(async move {
        let _sentinel = sentinel;
        std::future::pending::<()>().await
    });
}

// ANCHOR: work
/// `tasks` tasks on this runtime, each checking a connection out `rounds` times and holding it
/// a moment.
async fn work(tasks: usize, rounds: usize, hold: Duration) {
    let mut handles = Vec::new();
    for _ in 0..tasks {
        handles.push(tokio::spawn(async move {
            for _ in 0..rounds {
                let asked = Instant::now();
                let conn = POOL.get().await.expect("every get is served");
                verify(&conn, asked);
                tokio::time::sleep(hold).await;
            }
        }));
    }
    for handle in handles {
        handle.await.expect("a worker task ends without panicking");
    }
}
// ANCHOR_END: work

fn verify(conn: &Conn, asked: Instant) {
    let here = Handle::current().id();
    if sequential() {
        // Every other test's runtime has ended: the pool must have moved here.
        assert_eq!(
            conn.born, here,
            "handed a connection born on another runtime"
        );
        assert!(conn.alive(), "handed a connection whose driver is gone");
        return;
    }
    if conn.alive() {
        return;
    }
    let ended = ENDED.lock().unwrap().get(&conn.born).copied();
    let ended = ended.expect("a connection's driver ends only with its runtime or its close");
    assert!(
        ended + MARGIN > asked,
        "handed a connection of a runtime that began to end {:?} before the get",
        asked - ended
    );
    CAUGHT_ENDING.fetch_add(1, SeqCst);
}

/// The last test to end closes the pool and checks the books.
async fn finish() {
    if FINISHED.fetch_add(1, SeqCst) + 1 < TESTS {
        return;
    }
    let report = POOL.close().await;
    let c = report.counters;
    let created = BORN.created.load(SeqCst);
    let closed = BORN.closed.lock().unwrap().len() as u64;
    println!(
        "created={created} closed={closed} closed_twice={} rehomed={} closed_moved={} pool_created={} open={} checked_out={} caught_ending={}",
        BORN.closed_twice.load(SeqCst),
        c.rehomed,
        c.closed_moved,
        c.created,
        c.open(),
        report.checked_out,
        CAUGHT_ENDING.load(SeqCst),
    );
    assert_eq!(
        BORN.closed_twice.load(SeqCst),
        0,
        "a connection closed twice"
    );
    assert_eq!(created, c.created);
    assert_eq!(closed, created, "every connection created is closed");
    assert_eq!((c.open(), report.checked_out), (0, 0));
    assert!(
        POOL.get().await.is_err(),
        "a closed pool stays closed, whatever runtime asks"
    );
}

// ANCHOR: tests
#[tokio::test]
async fn shared_current_thread_short() {
    start();
    work(3, 20, Duration::from_millis(2)).await;
    finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_multi_thread_medium() {
    start();
    work(6, 30, Duration::from_millis(3)).await;
    finish().await;
}

#[tokio::test]
async fn shared_current_thread_long() {
    start();
    work(4, 60, Duration::from_millis(3)).await;
    finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_multi_thread_longest() {
    start();
    work(8, 60, Duration::from_millis(4)).await;
    finish().await;
}
// ANCHOR_END: tests

/// The same tests, one at a time, in a child process (its own `static`s): every runtime has
/// ended before the next test starts, so the pool moves once per test after the first, and
/// every connection is born on the runtime of the test it serves.
#[test]
fn sequential_in_a_child() {
    if sequential() {
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["shared_", "--test-threads=1", "--nocapture"])
        .env("STATIC_POOL_SEQUENTIAL", "1")
        .output()
        .expect("the test binary starts again");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stderr.is_empty(), "wrote to stderr:\n{stderr}");
    assert!(stdout.contains("4 passed"), "{stdout}");
    let line = stdout
        .lines()
        .find_map(|l| l.find("created=").map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("no counts printed:\n{stdout}"));
    let field = |key: &str| -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {line}"))
    };
    assert_eq!(field("rehomed"), TESTS as u64 - 1, "{line}");
    assert_eq!(field("caught_ending"), 0, "{line}");
    assert_eq!(field("created"), field("closed"), "{line}");
}
