//! One cell of the shutdown matrix: `scenario <id> <runtime>`.
//!
//! Runs the scenario, checks what it can see from inside (panicking, which the matrix test sees
//! as a non-zero exit and a non-empty stderr), and prints, once everything it made is dropped:
//!
//! - `note: ...` — what happened, for the table's notes;
//! - `summary: created=N closed=N leaked=N double=N` — the test manager's own count, last.
//!
//! Scenarios that get SIGTERM from the matrix test print `ready` once their signal handler is
//! installed and their load is running.

use std::future::Future;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_executor::Executor;
use gracepool::{Builder, CloseCause, Error, Pool, PoolState, Pooled, Runtime};
use gracepool_matrix::{applies, Kind};
use gracepool_testkit::{assert_accounted, set_birthplace, Counting, Rng};

type P = Pool<Counting>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(id), Some(kind)) = (args.get(1), args.get(2).and_then(|k| Kind::parse(k))) else {
        eprintln!("usage: scenario <S1..S18> <tokio-mt|tokio-ct|smol-global|smol-exec|actix|none>");
        std::process::exit(2);
    };
    if let Err(why) = applies(id, kind).or_else(|why| {
        if id.starts_with("C-") {
            Ok(())
        } else {
            Err(why)
        }
    }) {
        println!("n/a: {why}");
        return;
    }
    let m = Counting::new();
    let note = match id.as_str() {
        "S1" => s1(&m, kind),
        "S2" => s2(&m, kind),
        "S3" => s3(&m, kind),
        "S4" => s4(&m, kind),
        "S5" => s5(&m, kind),
        "S6" => s6(&m, kind),
        "S7" => s7(&m, kind),
        "S8" => s8(&m, kind),
        "S9a" => s9a(&m),
        "S9b" => s9b(&m),
        "S10a" => s10a(&m, kind),
        "S10b" => s10b(&m, kind),
        "S11e" => s11(&m, kind, false),
        "S11p" => s11(&m, kind, true),
        "S12" => s12(&m, kind),
        "S13" => s13(&m, kind),
        "S14" => s14(&m, kind),
        "S15" => s15(&m, kind),
        "S16" => s16(&m, kind),
        "S17" => s17(&m, kind),
        "S18" => s18(&m, kind),
        "C-stderr" | "C-leak" | "C-exit" | "C-hang" => control(&m, kind, id),
        other => {
            eprintln!("no scenario {other}");
            std::process::exit(2);
        }
    };
    println!("note: {note}");
    println!("summary: {}", m.summary());
}

// --- the runtimes ------------------------------------------------------------------------

/// A runtime of one column, and the few things scenarios do with it.
enum Host {
    Tokio(tokio::runtime::Runtime, bool),
    SmolGlobal,
    SmolExec(Arc<Executor<'static>>),
    Actix(actix_rt::SystemRunner, actix_rt::ArbiterHandle),
    /// An executor nobody runs: the pool's actor is never polled.
    None(Arc<Executor<'static>>),
}

impl Host {
    fn new(kind: Kind) -> Host {
        match kind {
            Kind::TokioMt => Host::Tokio(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("a tokio runtime"),
                true,
            ),
            Kind::TokioCt => Host::Tokio(
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a tokio runtime"),
                true,
            ),
            Kind::SmolGlobal => Host::SmolGlobal,
            Kind::SmolExec => Host::SmolExec(Arc::new(Executor::new())),
            Kind::Actix => {
                let sys = actix_rt::System::new();
                let arbiter = actix_rt::System::current().arbiter().clone();
                Host::Actix(sys, arbiter)
            }
            Kind::None => Host::None(Arc::new(Executor::new())),
        }
    }

    /// For tokio columns, a runtime of the same flavour without a time driver, where tokio's
    /// own timer would panic; the same as `new` elsewhere.
    fn without_tokio_timers(kind: Kind) -> Host {
        let mut b = match kind {
            Kind::TokioMt => {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(2);
                b
            }
            Kind::TokioCt => tokio::runtime::Builder::new_current_thread(),
            _ => return Host::new(kind),
        };
        Host::Tokio(b.build().expect("a tokio runtime"), false)
    }

    fn runtime(&self) -> Arc<dyn Runtime> {
        match self {
            Host::Tokio(rt, true) => Arc::new(gracepool_tokio::TokioRuntime::from_handle(
                rt.handle().clone(),
            )),
            Host::Tokio(rt, false) => Arc::new(
                gracepool_tokio::TokioRuntime::from_handle(rt.handle().clone())
                    .with_async_io_timers(),
            ),
            Host::SmolGlobal => Arc::new(gracepool_smol::SmolRuntime::global()),
            Host::SmolExec(ex) | Host::None(ex) => {
                Arc::new(gracepool_smol::SmolRuntime::from_executor(ex))
            }
            Host::Actix(_, arbiter) => {
                Arc::new(gracepool_actix::ActixRuntime::from_arbiter(arbiter.clone()))
            }
        }
    }

    fn pool(&self, m: &Counting) -> Builder<Counting> {
        Pool::builder(m.clone()).runtime_arc(self.runtime())
    }

    fn block_on<F: Future>(&self, fut: F) -> F::Output {
        match self {
            Host::Tokio(rt, _) => rt.block_on(fut),
            Host::SmolGlobal => async_io::block_on(fut),
            // `ex.run` with `ex` the ambient executor (for S15-S18's pools).
            Host::SmolExec(ex) => async_io::block_on(gracepool_smol::run(ex, fut)),
            Host::Actix(sys, _) => sys.block_on(fut),
            Host::None(_) => futures_lite::future::block_on(fut),
        }
    }

    /// Starts a task on the runtime (not on the `None` host, which runs nothing).
    fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        match self {
            Host::Tokio(rt, _) => drop(rt.spawn(fut)),
            Host::SmolGlobal => smol::spawn(fut).detach(),
            Host::SmolExec(ex) => ex.spawn(fut).detach(),
            Host::Actix(_, arbiter) => assert!(arbiter.spawn(fut), "the arbiter is running"),
            Host::None(_) => unreachable!("nothing runs tasks without a runtime"),
        }
    }
}

async fn sleep(d: Duration) {
    // async-io's timer works under every column's runtime.
    async_io::Timer::after(d).await;
}

/// Waits (up to 5 s, else panics) until `cond` holds.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(1)).await;
    }
}

async fn get_n(pool: &P, n: usize) -> Vec<Pooled<Counting>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(pool.get().await.expect("a connection"));
    }
    out
}

fn thread_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .to_string()
}

// --- the scenarios -----------------------------------------------------------------------

/// S1: the runtime goes while the pool is idle and handles are alive.
fn s1(m: &Counting, kind: Kind) -> String {
    let host = Host::new(kind);
    let pool = host.pool(m).max_size(4).build().unwrap();
    let handles: Vec<P> = (0..3).map(|_| pool.clone()).collect();
    host.block_on(async { drop(get_n(&pool, 2).await) });
    assert_eq!(pool.status().idle, 2);
    drop(host);
    let status = pool.status();
    assert!(!status.actor_alive, "the teardown dropped the actor");
    assert_eq!(status.state, PoolState::Closed);
    assert_eq!(
        m.closed(),
        2,
        "the idle connections were closed at teardown"
    );
    drop(handles);
    drop(pool);
    "idle connections closed by the actor's Drop at teardown".into()
}

/// S2: the runtime goes while connections are checked out, by the test and by a task.
fn s2(m: &Counting, kind: Kind) -> String {
    let host = Host::new(kind);
    let pool = host.pool(m).max_size(6).build().unwrap();
    let guards = host.block_on(async {
        let (tx, rx) = async_channel::bounded(1);
        let p = pool.clone();
        host.spawn(async move {
            let held = p.get().await.expect("a connection");
            let _ = tx.send(()).await;
            std::future::pending::<()>().await;
            drop(held);
        });
        rx.recv().await.expect("the task took a connection");
        let mut g = get_n(&pool, 3).await;
        drop(g.pop()); // one idle
        g
    });
    assert_eq!(pool.status().in_use, 3);
    drop(host);
    let status = pool.status();
    assert_eq!(status.state, PoolState::Closed);
    assert_eq!(
        m.closed(),
        2,
        "the idle one and the task's were closed at teardown"
    );
    assert_eq!(status.in_use, 2);
    drop(guards);
    assert_eq!(pool.status().counters.closed_sync, 4);
    assert_accounted(&pool.status().counters);
    "task's guard closed at teardown; 2 guards closed when dropped outside".into()
}

/// S3: built on A; A goes; used and closed from B (for tokio, a B without a time driver).
fn s3(m: &Counting, kind: Kind) -> String {
    let a = Host::new(kind);
    let pool = a.pool(m).build().unwrap();
    a.block_on(async { drop(pool.get().await.unwrap()) });
    drop(a);
    let b = Host::without_tokio_timers(kind);
    let fresh = b.pool(m).max_size(1).build().unwrap();
    b.block_on(async {
        match pool.get().await {
            Err(e @ Error::RuntimeGone) => {
                assert!(e.to_string().contains("build a new pool on a live runtime"))
            }
            other => panic!("expected RuntimeGone, got {other:?}"),
        }
        let report = pool.close().await;
        assert_eq!(report.cause, CloseCause::RuntimeGone);
        assert!(report.is_complete());
        // B itself is fine: a pool built on it works and closes gracefully, timers included.
        let g = fresh.get().await.unwrap();
        assert!(matches!(
            fresh.get_timeout(Duration::from_millis(5)).await,
            Err(Error::Timeout { .. })
        ));
        drop(g);
        let report = fresh.close().await;
        assert!(report.is_complete() && !report.fallback, "{report:?}");
    });
    drop(b);
    "get() on B: RuntimeGone; close() on B: the teardown's report".into()
}

/// S4: close while 32 callers wait on a pool of max 2.
fn s4(m: &Counting, kind: Kind) -> String {
    const WAITERS: usize = 32;
    let host = Host::new(kind);
    let pool = host
        .pool(m)
        .max_size(2)
        .wait_timeout(None)
        .close_deadline(Duration::from_secs(5))
        .build()
        .unwrap();
    let worst = if kind == Kind::None {
        // Plain threads wait with a plain block_on. Nothing creates: the actor is not polled,
        // and a caller creates its own connection only on the pool's runtime
        // (`Runtime::is_current`), which a plain thread is not. So all 32 wait.
        let waiters: Vec<_> = (0..WAITERS)
            .map(|_| {
                let pool = pool.clone();
                std::thread::spawn(move || {
                    let r = futures_lite::future::block_on(pool.get());
                    (matches!(r, Err(Error::Closed)), Instant::now())
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.status().waiters < WAITERS {
            assert!(Instant::now() < deadline, "waiters did not queue");
            std::thread::sleep(Duration::from_millis(1));
        }
        let start = Instant::now();
        let report = pool.close_blocking(Duration::from_millis(50));
        assert!(report.fallback, "nothing polls the actor");
        waiters
            .into_iter()
            .map(|w| {
                let (closed, at) = w.join().unwrap();
                assert!(closed, "a waiter got something other than Closed");
                at - start
            })
            .max()
            .unwrap()
    } else {
        host.block_on(async {
            let held = get_n(&pool, 2).await;
            let (tx, rx) = async_channel::unbounded();
            for _ in 0..WAITERS {
                let (pool, tx) = (pool.clone(), tx.clone());
                host.spawn(async move {
                    let r = pool.get().await;
                    let _ = tx
                        .send((matches!(r, Err(Error::Closed)), Instant::now()))
                        .await;
                });
            }
            until("32 waiters", || pool.status().waiters == WAITERS).await;
            let start = Instant::now();
            let collect = async {
                let mut worst = Duration::ZERO;
                for _ in 0..WAITERS {
                    let (closed, at) = rx.recv().await.unwrap();
                    assert!(closed, "a waiter got something other than Closed");
                    worst = worst.max(at - start);
                }
                drop(held);
                worst
            };
            let (report, worst) = futures_lite::future::zip(pool.close(), collect).await;
            assert!(report.is_complete(), "{report:?}");
            assert_eq!(report.checked_out, 0);
            worst
        })
    };
    // Woken by the close (promptly: the line the scenario prints), not by a wait timeout.
    assert!(
        worst < Duration::from_secs(5),
        "the slowest waiter woke after {worst:?}"
    );
    assert!(matches!(
        futures_lite::future::block_on(pool.get()),
        Err(Error::Closed)
    ));
    drop(pool);
    drop(host);
    format!(
        "32 waiters got Closed, the slowest {:.1} ms after close began",
        worst.as_secs_f64() * 1e3
    )
}

/// S5: close while guards are out; they are dropped after the close deadline.
fn s5(m: &Counting, kind: Kind) -> String {
    let host = Host::new(kind);
    let pool = host
        .pool(m)
        .max_size(4)
        .close_deadline(Duration::from_millis(50))
        .build()
        .unwrap();
    let guards = host.block_on(async {
        let mut g = get_n(&pool, 4).await;
        drop(g.pop());
        let report = pool.close().await;
        assert_eq!(report.checked_out, 3, "{report:?}");
        assert_eq!(report.counters.closed_graceful, 1);
        assert_eq!(report.still_open(), 3);
        g
    });
    assert_eq!(m.closed(), 1);
    drop(guards);
    let counters = pool.status().counters;
    assert_eq!(counters.closed_sync, 3);
    assert_accounted(&counters);
    drop(pool);
    drop(host);
    "report: 1 closed, 3 checked out; those 3 closed as their guards dropped".into()
}

/// S6: a task panics while holding a guard. The panic is raised with `resume_unwind`, which
/// skips the panic hook, so nothing is printed; the unwinding drops the guard all the same.
fn s6(m: &Counting, kind: Kind) -> String {
    let host = Host::new(kind);
    let pool = host.pool(m).max_size(2).build().unwrap();
    host.block_on(async {
        let (tx, rx) = async_channel::bounded(1);
        let p = pool.clone();
        host.spawn(async move {
            let g = p.get().await.expect("a connection");
            let _ = tx.send(g.id).await;
            std::panic::resume_unwind(Box::new("a task panics while holding a connection"));
        });
        let tainted = rx.recv().await.unwrap();
        until("the tainted connection to be closed", || m.closed() == 1).await;
        for _ in 0..3 {
            let c = pool.get().await.unwrap();
            assert_ne!(c.id, tainted, "the tainted connection was handed out again");
        }
        assert!(pool.close().await.is_complete());
    });
    drop(pool);
    drop(host);
    "the panicking task's connection was closed, never handed out again (resume_unwind: no hook)"
        .into()
}

/// A value whose `Drop` drops the last handle of a pool, and records where it ran.
struct LastHandle(Option<P>, Arc<Mutex<String>>);

impl Drop for LastHandle {
    fn drop(&mut self) {
        *self.1.lock().unwrap() = thread_name();
        drop(self.0.take());
    }
}

/// S7: the last handle goes inside a `Drop` running on a runtime worker thread: when a task
/// ends, and (where the runtime can be dropped) when the teardown drops a task.
fn s7(m: &Counting, kind: Kind) -> String {
    let host = Host::new(kind);
    let ended = Arc::new(Mutex::new(String::new()));
    let torn = Arc::new(Mutex::new(String::new()));
    {
        let pool = host.pool(m).build().unwrap();
        let holder = LastHandle(Some(pool), ended.clone());
        host.spawn(async move {
            let pool = holder.0.as_ref().unwrap();
            drop(get_n(pool, 2).await);
            // `holder` drops here, at the end of the task, on the thread polling it.
        });
    }
    host.block_on(until("the first pool to close every connection", || {
        m.created() == 2 && m.closed() == 2
    }));
    let mut note = format!("task end: Drop on '{}'", ended.lock().unwrap());
    if kind != Kind::SmolGlobal {
        let pool = host.pool(m).build().unwrap();
        let holder = LastHandle(Some(pool), torn.clone());
        let (tx, rx) = async_channel::bounded(1);
        host.spawn(async move {
            drop(get_n(holder.0.as_ref().unwrap(), 1).await);
            let _ = tx.send(()).await;
            std::future::pending::<()>().await;
            drop(holder);
        });
        host.block_on(rx.recv()).unwrap();
        drop(host);
        assert_eq!(m.closed(), 3, "the teardown's Drop closed the second pool");
        note += &format!("; teardown: Drop on '{}'", torn.lock().unwrap());
    } else {
        note += "; teardown part n/a (never dropped)";
    }
    note
}

/// S8: a runtime that polls only inside `block_on`; handles and guards dropped after it
/// returned (the actor alive but unpolled), then the runtime dropped.
fn s8(m: &Counting, kind: Kind) -> String {
    let host = Host::new(kind);
    let pool = host.pool(m).max_size(4).build().unwrap();
    let (guards, handles) = host.block_on(async {
        let mut g = get_n(&pool, 3).await;
        drop(g.pop());
        (g, vec![pool.clone(), pool.clone()])
    });
    drop(guards);
    drop(handles);
    drop(pool);
    assert_eq!(
        m.closed(),
        0,
        "nothing closed before the runtime is dropped"
    );
    drop(host);
    assert_eq!(m.closed(), 3, "the actor's Drop closed everything");
    "Close queued to an unpolled actor; its Drop at teardown closed all 3".into()
}

/// S9a: an actix System stopped with the pool in use on two arbiters, no Close sent.
fn s9a(m: &Counting) -> String {
    use actix::Actor;
    let sys = actix_rt::System::new();
    let worker = actix_rt::Arbiter::new();
    let served = Arc::new(AtomicU64::new(0));
    let (pool, addr) = sys.block_on(async {
        let pool = Pool::builder(m.clone())
            .max_size(3)
            .runtime(gracepool_actix::ActixRuntime::current())
            .build()
            .unwrap();
        // The app keeps its address: an actix actor stops when its last one is dropped.
        let addr = gracepool_actix::PoolActor::new(pool.clone()).start();
        for i in 0..8 {
            let (pool, served) = (pool.clone(), served.clone());
            let load = async move {
                while let Ok(c) = pool.get().await {
                    served.fetch_add(1, SeqCst);
                    actix_rt::time::sleep(Duration::from_millis(1)).await;
                    drop(c);
                }
            };
            if i % 2 == 0 {
                actix_rt::spawn(load);
            } else {
                worker.spawn(load);
            }
        }
        let served = served.clone();
        actix_rt::spawn(async move {
            until("load", || served.load(SeqCst) >= 20).await;
            actix_rt::System::current().stop();
        });
        (pool, addr)
    });
    sys.run().expect("the System ran");
    drop(addr);
    worker.join().expect("the worker arbiter stopped");
    let status = pool.status();
    assert_eq!(status.state, PoolState::Closed);
    assert_accounted(&status.counters);
    drop(pool);
    format!(
        "{} checkouts; System stop closed the pool (graceful {}, sync {})",
        served.load(SeqCst),
        status.counters.closed_graceful,
        status.counters.closed_sync
    )
}

/// S9b: an actix-web HttpServer with 2 workers, the pool built in main and cloned into them,
/// loaded by plain HTTP clients, stopped by SIGTERM (actix-web's own signal handling); the
/// app then sends `Close` to the pool's actor.
fn s9b(m: &Counting) -> String {
    use actix::Actor;
    use actix_web::{web, App, HttpResponse, HttpServer};

    async fn handler(pool: web::Data<P>) -> HttpResponse {
        match pool.get().await {
            Ok(c) => {
                actix_rt::time::sleep(Duration::from_millis(1)).await;
                HttpResponse::Ok().body(c.id.to_string())
            }
            Err(_) => HttpResponse::ServiceUnavailable().finish(),
        }
    }

    let served = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    let sys = actix_rt::System::new();
    let report = sys.block_on(async {
        let pool = Pool::builder(m.clone())
            .max_size(4)
            .runtime(gracepool_actix::ActixRuntime::current())
            .build()
            .unwrap();
        let addr = gracepool_actix::PoolActor::new(pool.clone()).start();
        let data = web::Data::new(pool);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/", web::get().to(handler))
        })
        .workers(2)
        .shutdown_timeout(2)
        .bind(("127.0.0.1", 0))
        .expect("a loopback port");
        let port = server.addrs()[0].port();
        let server = server.run();
        for _ in 0..4 {
            let (served, stop) = (served.clone(), stop.clone());
            clients.push(std::thread::spawn(move || http_load(port, &served, &stop)));
        }
        let watch = served.clone();
        let ready = async move {
            until("requests served", || watch.load(SeqCst) >= 20).await;
            println!("ready");
            std::io::stdout().flush().unwrap();
        };
        let (stopped, ()) = futures_lite::future::zip(server, ready).await;
        stopped.expect("the server stopped cleanly");
        stop.store(true, SeqCst);
        addr.send(gracepool_actix::Close)
            .await
            .expect("the pool's actor answers")
    });
    for c in clients {
        c.join().unwrap();
    }
    drop(sys);
    assert!(report.is_complete(), "{report:?}");
    assert!(!report.fallback, "{report:?}");
    format!(
        "{} requests served; SIGTERM stopped the server, Close closed {} gracefully",
        served.load(SeqCst),
        report.counters.closed_graceful
    )
}

/// One HTTP client: requests until told to stop or the server is gone (bounded either way).
fn http_load(port: u16, served: &AtomicU64, stop: &AtomicBool) {
    let started = Instant::now();
    for _ in 0..100_000 {
        if stop.load(SeqCst) || started.elapsed() > Duration::from_secs(15) {
            return;
        }
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let request = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        let mut response = Vec::new();
        if s.write_all(request).is_ok() && s.read_to_end(&mut response).is_ok() {
            if response.starts_with(b"HTTP/1.1 200") {
                served.fetch_add(1, SeqCst);
            }
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// S10a: `close_blocking` from plain main, with no runtime on this thread.
fn s10a(m: &Counting, kind: Kind) -> String {
    let host = Host::new(kind);
    let pool = host.pool(m).build().unwrap();
    if kind != Kind::None {
        host.block_on(async { drop(get_n(&pool, 2).await) });
    }
    let patience = Duration::from_millis(300);
    let t = Instant::now();
    let report = pool.close_blocking(patience);
    let took = t.elapsed();
    assert!(took < patience + Duration::from_secs(2), "took {took:?}");
    assert!(report.is_complete(), "{report:?}");
    // Runtimes with threads of their own close through the actor; the others fall back.
    let polled = matches!(kind, Kind::TokioMt | Kind::SmolGlobal);
    assert_eq!(report.fallback, !polled, "{report:?}");
    drop(pool);
    drop(host);
    if report.fallback {
        format!("actor not polled: fell back after {} ms", took.as_millis())
    } else {
        format!("the actor closed it in {} ms", took.as_millis())
    }
}

/// S10b: `close_blocking` called from a task on the runtime, blocking that worker thread.
fn s10b(m: &Counting, kind: Kind) -> String {
    let host = Host::new(kind);
    let pool = host.pool(m).build().unwrap();
    let (report, took) = host.block_on(async {
        drop(get_n(&pool, 2).await);
        let (tx, rx) = async_channel::bounded(1);
        let p = pool.clone();
        host.spawn(async move {
            let t = Instant::now();
            let report = p.close_blocking(Duration::from_millis(300));
            let _ = tx.send((report, t.elapsed())).await;
        });
        rx.recv().await.unwrap()
    });
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(report.is_complete(), "{report:?}");
    if kind.driven_only_in_block_on() {
        assert!(
            report.fallback,
            "the blocked thread is the one that polls the actor"
        );
    }
    drop(pool);
    drop(host);
    if report.fallback {
        format!(
            "fell back at the deadline after {} ms, no deadlock",
            took.as_millis()
        )
    } else {
        format!(
            "another worker ran the actor: closed in {} ms",
            took.as_millis()
        )
    }
}

/// S11: `close` fails (an error, or a panic) for every third connection. For the panicking
/// variant the child installs a silent panic hook first: the default hook would print each
/// contained panic to stderr.
fn s11(m: &Counting, kind: Kind, panics: bool) -> String {
    if panics {
        std::panic::set_hook(Box::new(|_| {}));
    }
    m.set_close_fails_every(3, panics);
    let host = Host::new(kind);
    let pool = host
        .pool(m)
        .max_size(9)
        .close_deadline(Duration::from_millis(30))
        .build()
        .unwrap();
    let kept = host.block_on(async {
        let mut g = get_n(&pool, 9).await;
        let kept = g.split_off(6);
        drop(g);
        let report = pool.close().await;
        assert_eq!(report.checked_out, 3, "{report:?}");
        kept
    });
    drop(kept);
    let c = pool.status().counters;
    assert_eq!(c.close_failed, 3, "{c:?}");
    assert_eq!(c.closed_graceful + c.closed_sync, 6, "{c:?}");
    assert_accounted(&c);
    drop(pool);
    drop(host);
    format!(
        "{} failed ({}), {} graceful, {} sync",
        c.close_failed,
        if panics { "panics" } else { "errors" },
        c.closed_graceful,
        c.closed_sync
    )
}

/// S12: an app under load that closes the pool on SIGTERM.
fn s12(m: &Counting, kind: Kind) -> String {
    let host = Host::new(kind);
    let served = Arc::new(AtomicU64::new(0));
    let pool = host.pool(m).max_size(4).build().unwrap();
    let (done_tx, done_rx) = async_channel::unbounded::<()>();
    let load = |pool: P, served: Arc<AtomicU64>, done: async_channel::Sender<()>| async move {
        // Runs until the close wakes it with Closed.
        while let Ok(c) = pool.get().await {
            served.fetch_add(1, SeqCst);
            sleep(Duration::from_micros(500)).await;
            drop(c);
        }
        drop(done);
    };
    let report = host.block_on(async {
        let signal = TermSignal::install(kind);
        // The actix app talks to the pool through its actor.
        let addr = matches!(host, Host::Actix(..)).then(|| {
            use actix::Actor;
            gracepool_actix::PoolActor::new(pool.clone()).start()
        });
        for _ in 0..8 {
            host.spawn(load(pool.clone(), served.clone(), done_tx.clone()));
        }
        drop(done_tx);
        until("load", || served.load(SeqCst) >= 20).await;
        println!("ready");
        std::io::stdout().flush().unwrap();
        signal.recv().await;
        let report = match &addr {
            Some(addr) => addr.send(gracepool_actix::Close).await.unwrap(),
            None => pool.close().await,
        };
        // Every load task saw Closed and ended.
        assert!(done_rx.recv().await.is_err());
        report
    });
    assert!(report.is_complete(), "{report:?}");
    assert!(!report.fallback, "{report:?}");
    drop(pool);
    drop(host);
    format!(
        "{} checkouts before SIGTERM; Close closed {} gracefully",
        served.load(SeqCst),
        report.counters.closed_graceful
    )
}

/// S13: the runtime is torn down at a random moment while tasks check connections out and in
/// with random holding times, and the test itself holds one; 20 rounds, a new runtime each.
fn s13(m: &Counting, kind: Kind) -> String {
    let mut rng = Rng::from_clock();
    let seed = rng.state();
    for _ in 0..20 {
        let host = Host::new(kind);
        let pool = host.pool(m).max_size(3).build().unwrap();
        for _ in 0..6 {
            let pool = pool.clone();
            let hold = Duration::from_micros(rng.below(400));
            host.spawn(async move {
                while let Ok(c) = pool.get().await {
                    sleep(hold).await;
                    drop(c);
                }
            });
        }
        let held = host.block_on(async {
            let held = pool.get().await.expect("a connection");
            sleep(Duration::from_micros(rng.below(3000))).await;
            held
        });
        drop(host);
        let status = pool.status();
        assert_eq!(status.state, PoolState::Closed, "{status:?}");
        assert_eq!(
            status.in_use, 1,
            "only the test's guard is still out: {status:?}"
        );
        drop(held);
        assert_accounted(&pool.status().counters);
        assert_eq!(pool.status().counters.open(), 0);
        assert_eq!(m.created(), m.closed(), "{}", m.summary());
    }
    format!(
        "20 random teardowns (seed {seed}): {} connections, all closed",
        m.created()
    )
}

/// S14: a tokio runtime built without its time driver, where tokio's timer panics; the pool
/// is told to use async-io's timers. Every timer the pool makes runs: a wait timeout, the
/// maintenance tick reaping an idle connection, the close deadline.
fn s14(m: &Counting, kind: Kind) -> String {
    let host = Host::without_tokio_timers(kind);
    let pool = host
        .pool(m)
        .max_size(1)
        .maintenance_interval(Duration::from_millis(5))
        .idle_timeout(Duration::from_millis(20))
        .close_deadline(Duration::from_millis(20))
        .build()
        .unwrap();
    let held = host.block_on(async {
        let g = pool.get().await.unwrap();
        assert!(matches!(
            pool.get_timeout(Duration::from_millis(10)).await,
            Err(Error::Timeout { .. })
        ));
        drop(g);
        until("the idle connection to be reaped", || m.closed() == 1).await;
        let g = pool.get().await.unwrap();
        let report = pool.close().await;
        assert_eq!(
            report.checked_out, 1,
            "the close deadline passed: {report:?}"
        );
        g
    });
    drop(held);
    drop(pool);
    drop(host);
    "wait timeout, idle reaping and close deadline all on async-io timers".into()
}

// --- S15-S18: a pool that moves from a runtime that died to the next live one -----------

/// Where runtime A's connections are born (its threads' birthplace), and B's.
const A: u64 = 1;
const B: u64 = 2;

/// A runtime of a re-homing row: a host of the column whose threads tag the connections
/// born on them with `place` ([`Counting`]'s `born`).
struct Home {
    host: Host,
    place: u64,
}

impl Home {
    fn new(kind: Kind, place: u64) -> Home {
        let host = match kind {
            // Its workers run the actor: each is tagged as it starts.
            Kind::TokioMt => Host::Tokio(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .on_thread_start(move || set_birthplace(place))
                    .build()
                    .expect("a tokio runtime"),
                true,
            ),
            _ => Host::new(kind),
        };
        Home { host, place }
    }

    /// The host's `block_on`, on a thread tagged with this runtime's birthplace meanwhile
    /// (the other columns run their tasks on the thread inside `block_on`).
    fn block_on<F: Future>(&self, fut: F) -> F::Output {
        set_birthplace(self.place);
        let out = self.host.block_on(fut);
        set_birthplace(0);
        out
    }

    fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        self.host.spawn(fut)
    }
}

/// A pool whose runtime follows its callers, as each column offers it: gracepool-tokio's
/// `Ambient` on tokio and in an actix System (which runs a tokio current_thread runtime),
/// `SmolRuntime::ambient()` under `gracepool_smol::run` on smol.
fn ambient_pool(m: &Counting, kind: Kind) -> Builder<Counting> {
    let runtime: Arc<dyn Runtime> = match kind {
        Kind::TokioMt | Kind::TokioCt | Kind::Actix => Arc::new(gracepool_tokio::Ambient::new()),
        Kind::SmolExec => Arc::new(gracepool_smol::SmolRuntime::ambient()),
        _ => unreachable!("the re-homing rows run where a runtime can die"),
    };
    Pool::builder(m.clone()).runtime_arc(runtime)
}

/// Runtime A on a thread of its own: runs `start` there, hands back its output, then keeps
/// the runtime (undriven, but for tokio multi-thread's workers) until [`Elsewhere::end`]
/// drops it, on that thread.
struct Elsewhere {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Elsewhere {
    fn start<T, F>(kind: Kind, start: impl FnOnce() -> F + Send + 'static) -> (T, Elsewhere)
    where
        T: Send + 'static,
        F: Future<Output = T>,
    {
        let (out_tx, out_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let a = Home::new(kind, A);
            out_tx
                .send(a.block_on(start()))
                .expect("the scenario waits");
            let _ = stop_rx.recv();
            drop(a);
        });
        let out = out_rx.recv().expect("runtime A's start finished");
        (out, Elsewhere { stop, thread })
    }

    /// Drops runtime A, and returns once it is gone.
    fn end(self) {
        let _ = self.stop.send(());
        self.thread.join().expect("runtime A's thread ends cleanly");
    }
}

/// What the B side of a row saw from each `get`.
async fn served_on(rx: async_channel::Receiver<Result<u64, String>>, n: usize) -> Vec<u64> {
    let mut born = Vec::new();
    for _ in 0..n {
        match rx.recv().await.expect("every task reports") {
            Ok(place) => born.push(place),
            Err(e) => panic!("a caller on B was not served: {e}"),
        }
    }
    born
}

/// S15: runtime A dies while runtime B's tasks wait. A holds both connections of a pool of
/// 2 (kept past A's end), B's 6 tasks wait; A is dropped: they start the pool's actor on B,
/// and are served by it, with connections born on B, as soon as A's guards are gone.
fn s15(m: &Counting, kind: Kind) -> String {
    const TASKS: usize = 6;
    // A wait timeout well short of the maintenance tick: waiters must be served when a slot
    // frees, not at the actor's next tick.
    let pool = ambient_pool(m, kind)
        .max_size(2)
        .maintenance_interval(Duration::from_secs(10))
        .wait_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let p = pool.clone();
    let (held, a) = Elsewhere::start(kind, move || async move { get_n(&p, 2).await });
    assert!(held.iter().all(|c| c.born == A));
    let b = Home::new(kind, B);
    let report = b.block_on(async {
        let (tx, rx) = async_channel::unbounded();
        for _ in 0..TASKS {
            let (pool, tx) = (pool.clone(), tx.clone());
            b.spawn(async move {
                let got = match pool.get().await {
                    Ok(c) => {
                        let born = c.born;
                        sleep(Duration::from_millis(1)).await;
                        Ok(born)
                    }
                    Err(e) => Err(e.to_string()),
                };
                let _ = tx.send(got).await;
            });
        }
        until("B's tasks to wait", || pool.status().waiters == TASKS).await;
        a.end();
        // They start the actor on B, and wait again: both slots are A's guards'.
        until("the actor on B with B's tasks waiting", || {
            let s = pool.status();
            s.actor_alive && s.counters.rehomed == 1 && s.waiters == TASKS
        })
        .await;
        assert_eq!(rx.len(), 0, "nobody served before a slot freed");
        assert_eq!(m.created(), 2, "nothing made while every slot is taken");
        // A's guards, dropped outside any runtime: closed, their slots B's.
        let freed_at = Instant::now();
        std::thread::spawn(move || drop(held)).join().unwrap();
        let born = served_on(rx, TASKS).await;
        let took = freed_at.elapsed();
        assert!(born.iter().all(|&p| p == B), "born on A: {born:?}");
        (pool.close().await, took)
    });
    let (report, took) = report;
    assert!(report.is_complete() && !report.fallback, "{report:?}");
    let c = report.counters;
    assert_eq!((c.rehomed, c.closed_moved, c.created), (1, 2, 4), "{c:?}");
    assert_eq!(c.gets_timed_out, 0, "{c:?}");
    assert_accounted(&c);
    drop(pool);
    drop(b);
    format!(
        "6 waiters on B served by the actor they started there, {:.1} ms after A's guards went; rehomed {}",
        took.as_secs_f64() * 1e3,
        c.rehomed
    )
}

/// S16: runtime A dies mid-creation: a slow `create` (500 ms) is in flight on A when A is
/// dropped, and B's tasks wait for it. The creation dies with A, making nothing; B's tasks
/// start the actor on B, which makes their connections.
fn s16(m: &Counting, kind: Kind) -> String {
    const TASKS: usize = 3;
    const SLOW: Duration = Duration::from_millis(500);
    m.set_create_delay(SLOW);
    let pool = ambient_pool(m, kind)
        .max_size(2)
        .min_idle(1)
        .wait_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let p = pool.clone();
    let (asked, a) = Elsewhere::start(kind, move || async move {
        let asked = Instant::now();
        // Starts the actor here, which starts making its `min_idle` connection.
        assert!(matches!(p.try_get().await, Err(Error::Exhausted)));
        until("a creation in flight on A", || p.status().size == 1).await;
        asked
    });
    let b = Home::new(kind, B);
    let born = b.block_on(async {
        let (tx, rx) = async_channel::unbounded();
        for _ in 0..TASKS {
            let (pool, tx) = (pool.clone(), tx.clone());
            b.spawn(async move {
                let got = match pool.get().await {
                    Ok(c) => {
                        let born = c.born;
                        sleep(Duration::from_millis(1)).await;
                        Ok(born)
                    }
                    Err(e) => Err(e.to_string()),
                };
                let _ = tx.send(got).await;
            });
        }
        until("B's tasks to wait", || pool.status().waiters == TASKS).await;
        a.end();
        let ended = Instant::now();
        assert!(
            asked.elapsed() < SLOW,
            "A ended too late to die mid-creation"
        );
        assert_eq!(m.created(), 0, "the creation in flight died with A");
        let born = served_on(rx, TASKS).await;
        // Woken by A's end, not by their wait timeout (3 s): B's own creations take SLOW.
        let took = ended.elapsed();
        assert!(took < SLOW * 3, "B's callers served {took:?} after A's end");
        (born, took)
    });
    let (born, took) = born;
    assert!(born.iter().all(|&p| p == B), "born on A: {born:?}");
    // Long past the moment A's creation would have finished: it never does.
    std::thread::sleep(SLOW);
    let c = pool.status().counters;
    assert_eq!(m.created(), c.created);
    assert!(c.created <= 2, "{c:?}");
    assert_eq!((c.rehomed, c.closed_moved), (1, 0), "{c:?}");
    let report = b.block_on(pool.close());
    assert!(report.is_complete() && !report.fallback, "{report:?}");
    assert_accounted(&report.counters);
    drop(pool);
    drop(b);
    format!(
        "a 500 ms create died with A; B's 3 waiters served {:.0} ms later by {} made on B; rehomed 1",
        took.as_secs_f64() * 1e3,
        c.created
    )
}

/// S17: a close racing a re-home, 20 rounds. A made a connection and died (the pool is
/// homeless); on B, 4 tasks get and give back connections, starting the actor there, while a
/// plain thread closes the pool after a random pause. Every task ends with `Closed`, and
/// nothing starts the pool again after the close: not B, not a new runtime C.
fn s17(m: &Counting, kind: Kind) -> String {
    const TASKS: usize = 4;
    let mut rng = Rng::from_clock();
    let seed = rng.state();
    // First without a race: closed while homeless, the close is final on every runtime.
    let pool = ambient_pool(m, kind).build().unwrap();
    let a = Home::new(kind, A);
    a.block_on(async { drop(pool.get().await.unwrap()) });
    drop(a);
    let report = pool.close_blocking(Duration::from_secs(1));
    assert!(report.is_complete() && report.fallback, "{report:?}");
    let b = Home::new(kind, B);
    b.block_on(async {
        assert!(matches!(pool.get().await, Err(Error::Closed)));
        assert!(matches!(pool.try_get().await, Err(Error::Closed)));
    });
    let s = pool.status();
    assert!(!s.actor_alive, "an actor started after the close: {s:?}");
    assert_eq!(s.counters.rehomed, 0, "{s:?}");
    drop((b, pool));

    let (mut moved, mut served_none) = (0, 0);
    for _ in 0..20 {
        let pool = ambient_pool(m, kind).max_size(2).build().unwrap();
        let a = Home::new(kind, A);
        a.block_on(async { drop(pool.get().await.unwrap()) });
        drop(a);
        let s = pool.status();
        assert!(!s.actor_alive && s.state == PoolState::Running, "{s:?}");
        // The closer is let go as B starts; its pause (spun, for precision) ends anywhere from
        // before B's first `get` to after the move.
        let pause = Duration::from_micros(rng.below(1500));
        let go = Arc::new(std::sync::Barrier::new(2));
        let (closed_tx, closed_rx) = async_channel::bounded(1);
        let closer = {
            let (pool, go) = (pool.clone(), go.clone());
            std::thread::spawn(move || {
                go.wait();
                let from = Instant::now();
                while from.elapsed() < pause {
                    std::hint::spin_loop();
                }
                let _ = closed_tx.send_blocking(pool.close_blocking(Duration::from_secs(2)));
            })
        };
        go.wait();
        let b = Home::new(kind, B);
        let (report, served) = b.block_on(async {
            let (tx, rx) = async_channel::unbounded();
            for _ in 0..TASKS {
                let (pool, tx) = (pool.clone(), tx.clone());
                b.spawn(async move {
                    let mut served = Vec::new();
                    let end = loop {
                        match pool.get().await {
                            Ok(c) => {
                                served.push(c.born);
                                futures_lite::future::yield_now().await;
                            }
                            Err(e) => break e,
                        }
                    };
                    let _ = tx.send((served, matches!(end, Error::Closed))).await;
                });
            }
            let mut all = Vec::new();
            for _ in 0..TASKS {
                let (served, closed) = rx.recv().await.expect("every task ends");
                assert!(closed, "a task ended with something other than Closed");
                all.extend(served);
            }
            // Awaited, not joined: B's actor may be the one closing, on this thread.
            let report = closed_rx.recv().await.expect("the closer returns");
            assert!(matches!(pool.get().await, Err(Error::Closed)));
            (report, all)
        });
        closer.join().expect("the closer returns");
        assert!(report.is_complete(), "{report:?}");
        assert!(served.iter().all(|&p| p == B), "born on A: {served:?}");
        let rehomed = pool.status().counters.rehomed;
        assert!(rehomed <= 1, "{rehomed}");
        if !served.is_empty() {
            assert_eq!(rehomed, 1, "served on B without a move");
        }
        moved += rehomed;
        served_none += u64::from(served.is_empty());
        drop(b);
        // A new runtime does not undo the close.
        let c = Home::new(kind, 3);
        let again = c.block_on(pool.get());
        assert!(matches!(again, Err(Error::Closed)), "{again:?}");
        let s = pool.status();
        assert!(!s.actor_alive && s.state == PoolState::Closed, "{s:?}");
        assert_eq!(s.counters.rehomed, rehomed);
        assert_accounted(&s.counters);
        drop(c);
        drop(pool);
        assert_eq!(m.created(), m.closed(), "{}", m.summary());
    }
    format!(
        "20 closes racing a move (seed {seed}): {moved} rounds moved to B, {served_none} served nobody; no close undone"
    )
}

/// S18: a guard from the dead runtime dropped on the new one. A's three connections: one idle
/// when A dies (closed with it), two kept and dropped on B, in a task and in `block_on`: each
/// is closed, never given back, and B's connections are all born on B.
fn s18(m: &Counting, kind: Kind) -> String {
    let pool = ambient_pool(m, kind)
        .max_size(3)
        .wait_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let a = Home::new(kind, A);
    let mut held = a.block_on(async {
        let mut g = get_n(&pool, 3).await;
        drop(g.pop());
        g
    });
    drop(a);
    assert_eq!(
        pool.status().counters.closed_moved,
        1,
        "the idle one died with A"
    );
    let b = Home::new(kind, B);
    let (second, report) = b.block_on(async {
        let first = pool.get().await.expect("a connection on B");
        assert_eq!(first.born, B);
        // One of A's guards, dropped by a task on B.
        let guard = held.pop().unwrap();
        let (tx, rx) = async_channel::bounded(1);
        b.spawn(async move {
            drop(guard);
            let _ = tx.send(()).await;
        });
        rx.recv().await.unwrap();
        let s = pool.status();
        assert_eq!(
            (s.counters.closed_moved, s.idle, s.in_use),
            (2, 0, 2),
            "closed, not given back: {s:?}"
        );
        // The other, dropped here.
        let other = held.pop().unwrap();
        let second = other.id;
        drop(other);
        assert_eq!(pool.status().counters.closed_moved, 3);
        assert_eq!(m.closed(), 3, "all of A's connections closed, once");
        drop(first);
        let all = get_n(&pool, 3).await;
        assert!(all.iter().all(|c| c.born == B), "{all:?}");
        drop(all);
        (second, pool.close().await)
    });
    assert!(report.is_complete() && !report.fallback, "{report:?}");
    let c = report.counters;
    assert_eq!((c.rehomed, c.closed_moved, c.created), (1, 3, 6), "{c:?}");
    assert_accounted(&c);
    drop(pool);
    drop(b);
    format!(
        "A's guards dropped on B (#{second} in block_on, one in a task): closed, not reused; rehomed 1"
    )
}

/// SIGTERM, through each runtime's usual way: tokio's signal driver, actix-rt's (tokio's on
/// the System's runtime), and async-signal for smol.
enum TermSignal {
    Tokio(tokio::signal::unix::Signal),
    Smol(async_signal::Signals),
}

impl TermSignal {
    /// Must run inside the host's `block_on` (tokio's driver needs its runtime).
    fn install(kind: Kind) -> TermSignal {
        use tokio::signal::unix::{signal, SignalKind};
        match kind {
            Kind::TokioMt | Kind::TokioCt => {
                TermSignal::Tokio(signal(SignalKind::terminate()).expect("a SIGTERM handler"))
            }
            Kind::Actix => TermSignal::Tokio(
                actix_rt::signal::unix::signal(SignalKind::terminate()).expect("a SIGTERM handler"),
            ),
            _ => TermSignal::Smol(
                async_signal::Signals::new([async_signal::Signal::Term])
                    .expect("a SIGTERM handler"),
            ),
        }
    }

    async fn recv(self) {
        use futures_lite::StreamExt;
        match self {
            TermSignal::Tokio(mut s) => {
                s.recv().await;
            }
            TermSignal::Smol(mut s) => {
                s.next().await;
            }
        }
    }
}

/// The control cells: each breaks one pass condition on purpose (see `CONTROLS`).
fn control(m: &Counting, kind: Kind, id: &str) -> String {
    let host = Host::new(kind);
    let pool = host.pool(m).build().unwrap();
    let conn = host.block_on(async { Pooled::detach(pool.get().await.unwrap()) });
    match id {
        // Dropped without the manager's close: the witness counts a leak.
        "C-leak" => drop(conn),
        _ => gracepool::Manager::close(m, conn).unwrap(),
    }
    host.block_on(pool.close());
    match id {
        "C-stderr" => eprintln!("noise on stderr"),
        "C-exit" => std::process::exit(3),
        "C-hang" => std::thread::sleep(Duration::from_secs(30)),
        _ => {}
    }
    format!("control {id}")
}
