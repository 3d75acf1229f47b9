//! One restart of the service, run in a child process of the demo.
//!
//! A fresh runtime, a pool on it, concurrent requests, then the end of the restart while
//! requests are in flight: the runtime torn down, or a graceful close. The child talks to the
//! demo on stdout, one line per fact, and never writes to stderr itself: whatever reaches its
//! stderr came from the pool or the runtime (a panic message, a print at exit).
//!
//! The conversation, child to parent on stdout and parent to child on stdin:
//!
//! ```text
//! progress <done> <total>        the load, as it goes
//! error <message>                a request failed (the demo reports it)
//! in-flight <n>                  the load is done; n requests are in flight now
//! torn-down <n>                  the runtime is gone (or the pool closed); the pool handle
//!                                is still held, n connections the worker believes open.
//!                                                          The parent looks at the backend,
//!                                                          then writes "go".
//! pool <created> <graceful> <sync> <failed> <close µs>
//! done <n>                       every handle dropped.     The parent looks again, then
//!                                                          closes stdin; the child exits.
//! ```

use std::future::Future;
use std::io::{self, BufRead, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gracepool::Pool;
use gracepool_demo::tcp::{TcpConn, TcpManager, TcpStats};

use crate::args::{Ending, Options, PoolKind, RuntimeKind};
use crate::peers::{Bb8Manager, DeadManager, PeerStats};

/// How long the slow request at the end of a teardown restart takes: longer than the restart,
/// so it is in flight when the runtime goes.
const SLOW_TEARDOWN_MS: u64 = 600_000;
/// The slow request at the end of a graceful restart: a close waits for it.
const SLOW_CLOSE_MS: u64 = 200;
/// The most the child waits for its own load to reach a state; beyond it, something is wrong.
const PATIENCE: Duration = Duration::from_secs(30);

fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The runtime a restart runs on.
enum Rt {
    Tokio(tokio::runtime::Runtime),
    Smol {
        executor: Arc<async_executor::Executor<'static>>,
        /// Closed to tell the executor's threads to stop.
        stop: async_channel::Sender<()>,
        threads: Vec<std::thread::JoinHandle<()>>,
    },
    Actix {
        runner: actix_rt::SystemRunner,
        arbiter: actix_rt::ArbiterHandle,
    },
}

impl Rt {
    fn new(kind: RuntimeKind) -> io::Result<Rt> {
        match kind {
            RuntimeKind::Tokio => Ok(Rt::Tokio(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?,
            )),
            RuntimeKind::TokioCurrent => Ok(Rt::Tokio(
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?,
            )),
            RuntimeKind::Smol => {
                let executor = Arc::new(async_executor::Executor::new());
                let (stop, stopped) = async_channel::bounded::<()>(1);
                let threads = (0..2)
                    .map(|i| {
                        let executor = executor.clone();
                        let stopped = stopped.clone();
                        std::thread::Builder::new()
                            .name(format!("smol-{i}"))
                            .spawn(move || {
                                let _ =
                                    futures_lite::future::block_on(executor.run(stopped.recv()));
                            })
                    })
                    .collect::<io::Result<_>>()?;
                Ok(Rt::Smol {
                    executor,
                    stop,
                    threads,
                })
            }
            RuntimeKind::Actix => {
                let runner = actix_rt::System::new();
                let arbiter = actix_rt::System::current().arbiter().clone();
                Ok(Rt::Actix { runner, arbiter })
            }
        }
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        match self {
            Rt::Tokio(rt) => {
                rt.spawn(task);
            }
            Rt::Smol { executor, .. } => executor.spawn(task).detach(),
            Rt::Actix { arbiter, .. } => {
                arbiter.spawn(task);
            }
        }
    }

    fn block_on<F: Future>(&self, fut: F) -> F::Output {
        match self {
            Rt::Tokio(rt) => rt.block_on(fut),
            // The executor's own threads run the tasks; this thread only waits.
            Rt::Smol { .. } => futures_lite::future::block_on(fut),
            Rt::Actix { runner, .. } => runner.block_on(fut),
        }
    }

    fn for_gracepool(&self) -> Arc<dyn gracepool::Runtime> {
        match self {
            Rt::Tokio(rt) => Arc::new(gracepool_tokio::TokioRuntime::from_handle(
                rt.handle().clone(),
            )),
            Rt::Smol { executor, .. } => {
                Arc::new(gracepool_smol::SmolRuntime::from_executor(executor))
            }
            Rt::Actix { arbiter, .. } => {
                Arc::new(gracepool_actix::ActixRuntime::from_arbiter(arbiter.clone()))
            }
        }
    }

    /// Ends the runtime the way a restarting service does: whatever its tasks hold is dropped.
    fn tear_down(self) {
        match self {
            Rt::Tokio(rt) => drop(rt),
            Rt::Smol {
                executor,
                stop,
                threads,
            } => {
                // The threads leave `run`; dropping the executor then drops every task.
                drop(stop);
                for t in threads {
                    let _ = t.join();
                }
                drop(executor);
            }
            Rt::Actix { runner, arbiter } => {
                // A System told to stop, and its runner dropped: every task is dropped.
                actix_rt::System::current().stop();
                drop(arbiter);
                drop(runner);
            }
        }
    }
}

/// The pool under test, whichever it is.
#[derive(Clone)]
enum AnyPool {
    Grace(Pool<TcpManager>),
    Dead(deadpool::managed::Pool<DeadManager>),
    Bb8(bb8::Pool<Bb8Manager>),
}

enum AnyConn {
    Grace(gracepool::Pooled<TcpManager>),
    Dead(deadpool::managed::Object<DeadManager>),
    Bb8(bb8::PooledConnection<'static, Bb8Manager>),
}

impl AnyConn {
    fn conn(&mut self) -> &mut TcpConn {
        match self {
            AnyConn::Grace(c) => c,
            AnyConn::Dead(c) => c,
            AnyConn::Bb8(c) => c,
        }
    }
}

impl AnyPool {
    async fn get(&self) -> Result<AnyConn, String> {
        match self {
            AnyPool::Grace(p) => p.get().await.map(AnyConn::Grace).map_err(|e| e.to_string()),
            AnyPool::Dead(p) => p.get().await.map(AnyConn::Dead).map_err(|e| e.to_string()),
            AnyPool::Bb8(p) => p
                .get_owned()
                .await
                .map(AnyConn::Bb8)
                .map_err(|e| e.to_string()),
        }
    }
}

/// What the worker tasks share with the main thread.
#[derive(Default)]
struct Load {
    total: u64,
    next: AtomicU64,
    done: AtomicU64,
    /// Requests answered or failed.
    settled: AtomicU64,
    in_flight: AtomicU64,
    finished: AtomicU64,
    closing: AtomicBool,
    errors: Mutex<Vec<String>>,
}

impl Load {
    fn error(&self, e: String) {
        // A checkout refused because the pool is closing is the close doing its job.
        if !self.closing.load(SeqCst) {
            self.failure(e);
        }
    }

    fn failure(&self, e: String) {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(e);
    }
}

async fn one_request(pool: &AnyPool, worker: usize, n: u64) -> Result<(), String> {
    let mut conn = pool.get().await?;
    let c = conn.conn();
    let set = c
        .request(&format!("SET w{worker} {n}"))
        .await
        .map_err(|e| e.to_string())?;
    let got = c
        .request(&format!("GET w{worker}"))
        .await
        .map_err(|e| e.to_string())?;
    if set != "OK" || got != format!("VALUE {n}") {
        return Err(format!("unexpected replies {set:?}, {got:?}"));
    }
    Ok(())
}

async fn work(pool: AnyPool, load: Arc<Load>, worker: usize, slow_ms: u64) {
    loop {
        let n = load.next.fetch_add(1, SeqCst);
        if n >= load.total {
            break;
        }
        match one_request(&pool, worker, n).await {
            Ok(()) => {
                load.done.fetch_add(1, SeqCst);
                load.settled.fetch_add(1, SeqCst);
            }
            Err(e) => {
                load.error(e);
                load.settled.fetch_add(1, SeqCst);
                load.finished.fetch_add(1, SeqCst);
                return;
            }
        }
    }
    // Every request of the load is answered before the slow ones start: a slow one must not
    // hold a connection another worker still needs for the load.
    while load.settled.load(SeqCst) < load.total {
        async_io::Timer::after(Duration::from_millis(2)).await;
    }
    // The last request is a slow one: it is in flight when the restart comes.
    match pool.get().await {
        Ok(mut conn) => {
            load.in_flight.fetch_add(1, SeqCst);
            match conn.conn().request(&format!("SLOW {slow_ms}")).await {
                Ok(reply) if reply == "DONE" => {}
                Ok(reply) => load.error(format!("unexpected reply {reply:?}")),
                Err(e) => load.error(e.to_string()),
            }
            load.in_flight.fetch_sub(1, SeqCst);
        }
        Err(e) => load.error(e),
    }
    load.finished.fetch_add(1, SeqCst);
}

/// Waits, on the runtime, until `ready` or the patience runs out, reporting progress.
fn wait_for(rt: &Rt, load: &Load, ready: impl Fn() -> bool) -> bool {
    rt.block_on(async {
        let until = Instant::now() + PATIENCE;
        let mut shown = u64::MAX;
        loop {
            let done = load.done.load(SeqCst);
            if done != shown {
                say(&format!("progress {done} {}", load.total));
                shown = done;
            }
            if ready() {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            async_io::Timer::after(Duration::from_millis(10)).await;
        }
    })
}

/// How many connections the worker believes it still has open: the demo waits for the backend
/// to see no more than that, and then counts for itself.
fn still_open(tcp: &TcpStats, peers: &PeerStats) -> u64 {
    let grace = tcp
        .opened
        .load(SeqCst)
        .saturating_sub(tcp.closed.load(SeqCst));
    let peer = peers
        .opened
        .load(SeqCst)
        .saturating_sub(peers.dropped.load(SeqCst));
    grace + peer
}

fn wait_for_parent() {
    let mut line = String::new();
    let _ = io::stdin().lock().read_line(&mut line);
}

fn fail(message: &str) -> ExitCode {
    say(&format!("error {message}"));
    ExitCode::FAILURE
}

pub fn run(options: Options, addr: SocketAddr, ending: Ending) -> ExitCode {
    let rt = match Rt::new(options.runtime) {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("could not start the runtime: {e}")),
    };
    let peer_stats = Arc::new(PeerStats::default());
    let manager = TcpManager::new(addr);
    let tcp_stats = manager.stats();
    let pool = match options.pool {
        PoolKind::Gracepool => Pool::builder(manager)
            .max_size(options.size)
            .min_idle(options.min_idle)
            .wait_timeout(Duration::from_secs(10))
            .shutdown_timeout(Duration::from_secs(2))
            .close_deadline(Duration::from_secs(5))
            .runtime_arc(rt.for_gracepool())
            .build()
            .map(AnyPool::Grace)
            .map_err(|e| e.to_string()),
        PoolKind::Deadpool => deadpool::managed::Pool::builder(DeadManager {
            addr,
            stats: peer_stats.clone(),
        })
        .max_size(options.size)
        .build()
        .map(AnyPool::Dead)
        .map_err(|e| e.to_string()),
        PoolKind::Bb8 => {
            let manager = Bb8Manager {
                addr,
                stats: peer_stats.clone(),
            };
            let size = u32::try_from(options.size).unwrap_or(u32::MAX);
            rt.block_on(async {
                bb8::Pool::builder()
                    .max_size(size)
                    .min_idle((options.min_idle > 0).then_some(options.min_idle as u32))
                    .connection_timeout(Duration::from_secs(10))
                    .build(manager)
                    .await
                    .map(AnyPool::Bb8)
                    .map_err(|e| e.to_string())
            })
        }
    };
    let pool = match pool {
        Ok(pool) => pool,
        Err(e) => return fail(&format!("could not build the pool: {e}")),
    };

    let load = Arc::new(Load {
        total: options.requests,
        ..Load::default()
    });
    let slow_ms = match ending {
        Ending::Teardown => SLOW_TEARDOWN_MS,
        Ending::Close => SLOW_CLOSE_MS,
    };
    for worker in 0..options.workers {
        rt.spawn(work(pool.clone(), load.clone(), worker, slow_ms));
    }
    let expected_in_flight = options.workers.min(options.size) as u64;
    let loaded = wait_for(&rt, &load, || {
        load.done.load(SeqCst) == load.total && load.in_flight.load(SeqCst) == expected_in_flight
            || !load
                .errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
    });
    let reported = {
        let errors = load.errors.lock().unwrap_or_else(|p| p.into_inner());
        for e in errors.iter() {
            say(&format!("error {e}"));
        }
        errors.len()
    };
    if !loaded {
        say("error the load did not finish within 30 s");
    }
    say(&format!("in-flight {}", load.in_flight.load(SeqCst)));

    // The restart.
    let started = Instant::now();
    load.closing.store(true, SeqCst);
    match ending {
        Ending::Teardown => rt.tear_down(),
        Ending::Close => {
            match &pool {
                // On actix, the adapter's `Close` message, sent to the pool's actor.
                AnyPool::Grace(p) if options.runtime == RuntimeKind::Actix => {
                    rt.block_on(async {
                        use actix::Actor;
                        let addr = gracepool_actix::PoolActor::new(p.clone()).start();
                        if let Err(e) = addr.send(gracepool_actix::Close).await {
                            load.failure(format!("the Close message was not answered: {e}"));
                        }
                    });
                }
                AnyPool::Grace(p) => {
                    rt.block_on(p.close());
                }
                AnyPool::Dead(p) => p.close(),
                // bb8 has no close: the service waits for its requests and lets go of the pool.
                AnyPool::Bb8(_) => {}
            }
            let workers = options.workers as u64;
            wait_for(&rt, &load, || load.finished.load(SeqCst) == workers);
            rt.tear_down();
        }
    }
    let mut spent = started.elapsed();
    {
        let errors = load.errors.lock().unwrap_or_else(|p| p.into_inner());
        let already = errors.len().min(reported);
        for e in &errors[already..] {
            say(&format!("error {e}"));
        }
    }
    // What gracepool counted, read while the handle is still held.
    let grace_counts = match &pool {
        AnyPool::Grace(p) => Some(p.status().counters),
        _ => None,
    };
    say(&format!(
        "torn-down {}",
        still_open(&tcp_stats, &peer_stats)
    ));
    wait_for_parent();

    let released = Instant::now();
    drop(pool);
    spent += released.elapsed();
    let line = match grace_counts {
        Some(c) => format!(
            "pool {} {} {} {} {}",
            c.created,
            c.closed_graceful,
            c.closed_sync,
            c.close_failed,
            spent.as_micros()
        ),
        None => format!(
            "pool {} 0 {} 0 {}",
            peer_stats.opened.load(SeqCst),
            peer_stats.dropped.load(SeqCst),
            spent.as_micros()
        ),
    };
    // The manager's own count agrees with the pool's, or the demo says so.
    if let Some(c) = grace_counts {
        let closed = tcp_stats.closed.load(SeqCst);
        if closed != c.closed_graceful + c.closed_sync + c.close_failed {
            say(&format!(
                "error the manager closed {closed} connections, the pool counted {}",
                c.closed_graceful + c.closed_sync + c.close_failed
            ));
        }
    }
    say(&line);
    say(&format!("done {}", still_open(&tcp_stats, &peer_stats)));
    wait_for_parent();
    ExitCode::SUCCESS
}
