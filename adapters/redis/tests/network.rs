//! The pool on a bad network, between it and a real `redis-server`, through the test kit's
//! fault proxy: a link that goes silent for good, one that resets every connection, one that
//! refuses new ones.
//!
//! Every await is bounded, so a hang is a failure, not a stuck test; every bound is generous
//! (an outer limit, not a measurement of this machine). Each test starts its own server and
//! proxy, or prints one SKIPPED line.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gracepool::Error;
use gracepool_redis::redis::{self, AsyncConnectionConfig};
use gracepool_redis::{Manager, Pool};
use gracepool_testkit::assert_accounted;
use gracepool_testkit::fault::{FaultProxy, Mode};
use gracepool_testkit::redis::RedisServer;
use gracepool_tokio::TokioRuntime;

/// The pool's size, and how many tasks share it.
const SIZE: usize = 4;
const TASKS: usize = 8;
/// Each call (a `get()` and a command) fails the test if it takes longer than this: a hang.
const CALL_BOUND: Duration = Duration::from_secs(20);
/// The close deadline the tests give their pools, and the slack a close may take on top.
const CLOSE_DEADLINE: Duration = Duration::from_secs(2);
const CLOSE_SLACK: Duration = Duration::from_millis(1500);
/// How long service may take to come back once the network is healthy again.
const RECOVERY: Duration = Duration::from_secs(5);

/// A multi-thread tokio runtime with both drivers, on two workers (the machine has two cores).
fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A server, and a fault proxy in front of it.
fn server_and_proxy(test: &str) -> Option<(RedisServer, FaultProxy)> {
    let server = RedisServer::start(test)?;
    let proxy = FaultProxy::start(server.port()).expect("a free port on 127.0.0.1");
    Some((server, proxy))
}

/// redis-rs' own timeouts: `None` for none at all (a silent link then stalls a command, a
/// connection attempt and a QUIT for ever, and only the pool's bounds are left), or its
/// defaults (1 s to connect, 500 ms for a response).
fn config(timeouts: bool) -> AsyncConnectionConfig {
    if timeouts {
        AsyncConnectionConfig::new()
    } else {
        AsyncConnectionConfig::new()
            .set_connection_timeout(None)
            .set_response_timeout(None)
    }
}

/// A pool of [`SIZE`] on the current runtime, through `proxy`.
fn pool(
    proxy: &FaultProxy,
    timeouts: bool,
    configure: impl FnOnce(gracepool::Builder<Manager>) -> gracepool::Builder<Manager>,
) -> Pool {
    let manager = Manager::new(format!("redis://127.0.0.1:{}/", proxy.port()))
        .expect("a valid URL")
        .with_connection_config(config(timeouts));
    configure(
        Pool::builder(manager)
            .max_size(SIZE)
            .runtime(TokioRuntime::current()),
    )
    .build()
    .expect("a valid configuration")
}

/// What one call (`get()`, then `PING`) came to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// `get()` failed (the pool being closed aside).
    GetError(String),
    /// The connection was handed out already known broken.
    DeadHandout,
    /// The command failed on a connection handed out alive.
    CommandError(String),
    /// The call did not finish within [`CALL_BOUND`].
    Hung,
}

#[derive(Debug, Clone)]
struct Call {
    start: Instant,
    /// When `get()` returned a connection.
    got: Option<Instant>,
    took: Duration,
    outcome: Outcome,
}

/// Tasks calling through a pool in a loop, every call bounded and recorded (in a list that
/// survives the tasks being aborted).
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    calls: Arc<Mutex<Vec<Call>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(pool: &Pool, tasks: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..tasks)
            .map(|_| {
                let (pool, stop, ok, calls) =
                    (pool.clone(), stop.clone(), ok.clone(), calls.clone());
                tokio::spawn(async move {
                    while !stop.load(SeqCst) {
                        let start = Instant::now();
                        let mut got = None;
                        let call = async {
                            let mut conn = match pool.get().await {
                                Err(Error::Closed | Error::RuntimeGone) => return None,
                                Err(e) => return Some(Outcome::GetError(e.to_string())),
                                Ok(conn) => conn,
                            };
                            got = Some(Instant::now());
                            if conn.is_broken() {
                                return Some(Outcome::DeadHandout);
                            }
                            Some(
                                match redis::cmd("PING").query_async::<String>(&mut *conn).await {
                                    Ok(pong) if pong == "PONG" => Outcome::Ok,
                                    Ok(other) => Outcome::CommandError(format!("PING: {other}")),
                                    Err(e) => Outcome::CommandError(e.to_string()),
                                },
                            )
                        };
                        let outcome = match tokio::time::timeout(CALL_BOUND, call).await {
                            Ok(Some(outcome)) => outcome,
                            Ok(None) => return,
                            Err(_) => Outcome::Hung,
                        };
                        if outcome == Outcome::Ok {
                            ok.fetch_add(1, SeqCst);
                        }
                        let failed = outcome != Outcome::Ok;
                        calls.lock().unwrap().push(Call {
                            start,
                            got,
                            took: start.elapsed(),
                            outcome,
                        });
                        if failed {
                            // Not a busy loop when calls fail fast.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            calls,
            tasks,
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(SeqCst)
    }

    /// Waits until `n` more calls than now have succeeded, up to `patience`.
    async fn await_more(&self, n: u64, patience: Duration) -> bool {
        let target = self.ok() + n;
        let until = Instant::now() + patience;
        while self.ok() < target {
            if Instant::now() > until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }

    /// How many tasks have ended.
    fn ended(&self) -> usize {
        self.tasks.iter().filter(|t| t.is_finished()).count()
    }

    /// Stops the tasks (each ends after its call) and returns every call, in start order.
    async fn stop(self) -> Vec<Call> {
        self.stop.store(true, SeqCst);
        for task in self.tasks {
            tokio::time::timeout(CALL_BOUND + Duration::from_secs(5), task)
                .await
                .expect("a load task ends after its call, and each call is bounded")
                .expect("a load task does not panic");
        }
        let mut calls = self.calls.lock().unwrap().clone();
        calls.sort_by_key(|c| c.start);
        calls
    }

    /// Aborts the tasks mid-call (their guards drop) and returns the calls they finished.
    async fn abort(self) -> Vec<Call> {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let ended = tokio::time::timeout(Duration::from_secs(5), task).await;
            assert!(ended.is_ok(), "an aborted task did not end");
        }
        let mut calls = self.calls.lock().unwrap().clone();
        calls.sort_by_key(|c| c.start);
        calls
    }
}

/// Calls that did not succeed, for messages (the first few).
fn failures(calls: &[Call]) -> Vec<&Call> {
    calls
        .iter()
        .filter(|c| c.outcome != Outcome::Ok)
        .take(12)
        .collect()
}

/// Closes the pool with every await bounded and returns the report, checked: complete, and
/// every connection accounted for.
async fn close_accounted(pool: &Pool) -> gracepool::CloseReport {
    let report = tokio::time::timeout(Duration::from_secs(30), pool.close())
        .await
        .expect("close() returns (its deadline is 10 s)");
    assert!(report.is_complete(), "{report:?}");
    assert_accounted(&report.counters);
    report
}

/// Checks out `n` connections, one after the other, each answering `PING` (each `get()`
/// bounded).
async fn check_out(pool: &Pool, n: usize) -> Vec<gracepool_redis::Pooled> {
    let mut held = Vec::new();
    for _ in 0..n {
        let mut conn = tokio::time::timeout(Duration::from_secs(10), pool.get())
            .await
            .expect("get() returns")
            .expect("a connection");
        let pong: String = redis::cmd("PING")
            .query_async(&mut *conn)
            .await
            .expect("answered");
        assert_eq!(pong, "PONG");
        held.push(conn);
    }
    held
}

/// The proxy goes silent for good (Blackhole) while 8 tasks send commands through a pool of 4,
/// with redis-rs' own timeouts off: four calls are stuck for ever (in a command, or in the
/// `PING` check of a `get()` that was handed a returning connection), four wait for a
/// connection. `close()` returns within its deadline plus slack (ending the gets stuck in a
/// check), the waiters are told the pool is closed, and once the calls stuck in a command are
/// given up (their tasks aborted, their guards dropped) every connection the pool made is
/// accounted for.
#[test]
fn a_link_silent_forever_does_not_hold_up_close() {
    let test = "network::a_link_silent_forever_does_not_hold_up_close";
    let Some((server, proxy)) = server_and_proxy(test) else {
        return;
    };
    let rt = tokio_rt();
    rt.block_on(async {
        let pool = pool(&proxy, false, |b| b.close_deadline(CLOSE_DEADLINE));
        let load = Load::start(&pool, TASKS);
        assert!(
            load.await_more(50, Duration::from_secs(10)).await,
            "the load ran"
        );
        proxy.set_mode(Mode::Blackhole);
        // Every connection gets stuck in a command, the other tasks wait in get().
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = pool.status();

        let started = Instant::now();
        let report = tokio::time::timeout(CLOSE_DEADLINE * 5, pool.close())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "close() hung past 5 times its deadline: {:?}",
                    pool.status()
                )
            });
        let took = started.elapsed();
        println!("before the close: {before:?}\nclose took {took:?}: {report:?}");
        assert!(
            took <= CLOSE_DEADLINE + CLOSE_SLACK,
            "close() took {took:?}, its deadline is {CLOSE_DEADLINE:?}: {report:?}"
        );
        assert!(report.checked_out <= SIZE, "{report:?}");
        assert_eq!(report.still_open(), report.checked_out as u64, "{report:?}");
        // The tasks that were waiting in get() were told the pool is closed, and ended.
        let woken = tokio::time::timeout(Duration::from_secs(2), async {
            while load.ended() < TASKS - report.checked_out {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
        assert!(
            woken.is_ok(),
            "{} of {TASKS} tasks ended, {} calls stuck: {:?}",
            load.ended(),
            report.checked_out,
            pool.status()
        );

        // Give up the stuck calls: their guards drop, and the pool closes what they held.
        let calls = load.abort().await;
        let held = gracepool_testkit::eventually(Duration::from_secs(5), || {
            let c = pool.status().counters;
            c.created == c.closed_graceful + c.closed_sync + c.close_failed + c.detached
        })
        .await;
        let after = pool.status();
        assert!(held, "connections left unaccounted: {after:?}");
        assert_accounted(&after.counters);
        assert_eq!(after.in_use, 0, "{after:?}");
        assert!(after.counters.created >= 1, "{after:?}");
        // No QUIT went through the silent link, so none can have been answered.
        assert_eq!(after.counters.closed_graceful, 0, "{after:?}");
        assert!(
            calls.iter().all(|c| c.outcome != Outcome::Hung),
            "{:?}",
            failures(&calls)
        );
    });
    drop(proxy);
    // The server's clients all leave once the proxy lets go of their sockets.
    let until = Instant::now() + Duration::from_secs(5);
    while server.clients() > 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(server.clients(), 0, "{:?}", server.client_list());
}

/// Idle connections are closed while the link is silent (redis-rs' response timeout on): the
/// QUIT of each goes unanswered, so none is counted as a graceful close, and the server indeed
/// saw no QUIT. The close keeps to its deadline.
#[test]
fn a_goodbye_into_a_silent_link_is_not_counted_as_said() {
    let test = "network::a_goodbye_into_a_silent_link_is_not_counted_as_said";
    let Some((server, proxy)) = server_and_proxy(test) else {
        return;
    };
    let rt = tokio_rt();
    let report = rt.block_on(async {
        let pool = pool(&proxy, true, |b| b.close_deadline(CLOSE_DEADLINE));
        drop(check_out(&pool, SIZE).await);
        assert_eq!(pool.status().idle, SIZE);
        proxy.set_mode(Mode::Blackhole);
        let started = Instant::now();
        let report = tokio::time::timeout(CLOSE_DEADLINE * 5, pool.close())
            .await
            .expect("close() returns");
        assert!(
            started.elapsed() <= CLOSE_DEADLINE + CLOSE_SLACK,
            "{report:?}"
        );
        assert!(report.is_complete(), "{report:?}");
        assert_accounted(&report.counters);
        report
    });
    drop(proxy);
    let quits = server.command_calls("quit");
    println!("server: {quits} QUITs; {report:?}");
    assert_eq!(quits, 0, "no QUIT can pass a silent link");
    assert_eq!(report.counters.created, SIZE as u64, "{report:?}");
    assert_eq!(report.counters.closed_graceful, 0, "{report:?}");
}

/// Every connection is reset (RST to both sides) for an instant, under load, then the link
/// passes again: only the commands in flight at the reset fail; no connection handed out after
/// the reset is dead (its `PING` is answered), `get()` never fails, and service resumes at
/// once. Three tasks on a pool of four kept full (`min_idle`): at the reset some connections
/// are in a command and some idle, and the idle ones must not be handed out dead.
#[test]
fn a_reset_of_every_connection_is_ridden_out() {
    let test = "network::a_reset_of_every_connection_is_ridden_out";
    let Some((_server, proxy)) = server_and_proxy(test) else {
        return;
    };
    let rt = tokio_rt();
    rt.block_on(async {
        let pool = pool(&proxy, true, |b| b.min_idle(SIZE));
        let load = Load::start(&pool, 3);
        assert!(load.await_more(50, Duration::from_secs(10)).await);
        // All four made (min_idle comes over its pre-warm window), and one of them idle.
        gracepool_testkit::until_status(&pool, "four connections, one idle", |s| {
            s.counters.created as usize == SIZE && s.idle >= 1
        })
        .await;
        let before = pool.status();
        proxy.set_mode(Mode::ResetAll);
        let reset_done = Instant::now();
        proxy.set_mode(Mode::Pass);
        let served = load.await_more(1, RECOVERY).await;
        let back_after = reset_done.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let calls = load.stop().await;
        let report = close_accounted(&pool).await;
        println!(
            "first answer {back_after:?} after the reset; {:?}; {report:?}",
            proxy.counts()
        );
        assert!(served, "no call succeeded within {RECOVERY:?} of the reset");
        assert!(
            before.idle >= 1,
            "a connection was idle at the reset: {before:?}"
        );
        assert!(proxy.counts().reset >= SIZE as u64, "{:?}", proxy.counts());
        let bad_after: Vec<&Call> = calls
            .iter()
            .filter(|c| c.got.is_some_and(|g| g > reset_done))
            .filter(|c| c.outcome != Outcome::Ok)
            .collect();
        assert!(
            bad_after.is_empty(),
            "handed out after the reset: {bad_after:?}"
        );
        for call in &calls {
            match &call.outcome {
                Outcome::Ok => {}
                // In flight at the reset: its connection was reset under it.
                Outcome::CommandError(_) | Outcome::DeadHandout
                    if call.got.is_some_and(|g| g <= reset_done) => {}
                _ => panic!("{call:?}\nall failures: {:?}", failures(&calls)),
            }
        }
        assert!(
            report.counters.created > SIZE as u64,
            "the reset connections were replaced: {report:?}"
        );
    });
}

/// Every connection is reset, then new connections are refused for 1.5 s, while the pool needs
/// new ones; then the link passes. `get()` rides it out (the outage is shorter than the wait
/// timeout): no call fails but those in flight at the reset, and service resumes soon after.
#[test]
fn refused_connections_are_ridden_out() {
    let test = "network::refused_connections_are_ridden_out";
    let Some((_server, proxy)) = server_and_proxy(test) else {
        return;
    };
    const OUTAGE: Duration = Duration::from_millis(1500);
    let rt = tokio_rt();
    rt.block_on(async {
        let pool = pool(&proxy, true, |b| b.wait_timeout(Duration::from_secs(10)));
        let load = Load::start(&pool, TASKS);
        assert!(load.await_more(50, Duration::from_secs(10)).await);
        proxy.set_mode(Mode::ResetAll);
        let reset_done = Instant::now();
        proxy.set_mode(Mode::RefuseNew);
        let resets_before = proxy.counts().reset;
        tokio::time::sleep(OUTAGE).await;
        let refused = proxy.counts().reset - resets_before;
        proxy.set_mode(Mode::Pass);
        let passing = Instant::now();
        let served = load.await_more(1, RECOVERY).await;
        let back_after = passing.elapsed();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let calls = load.stop().await;
        let report = close_accounted(&pool).await;
        println!(
            "{refused} connections refused; first answer {back_after:?} after the link passed; {report:?}"
        );
        assert!(refused >= 1, "the pool tried to connect during the outage");
        assert!(
            served,
            "no call succeeded within {RECOVERY:?} of the link passing"
        );
        for call in &calls {
            match &call.outcome {
                Outcome::Ok => {}
                Outcome::CommandError(_) | Outcome::DeadHandout
                    if call.got.is_some_and(|g| g <= reset_done) => {}
                _ => panic!("{call:?}\nall failures: {:?}", failures(&calls)),
            }
            assert!(
                call.took < OUTAGE + RECOVERY,
                "{call:?} took longer than the outage and recovery"
            );
        }
    });
}

/// redis-rs' timeouts off, four idle connections behind a link gone silent: every check (a
/// `PING`) stalls until the pool's check timeout. A `get()` that finds them one after another
/// must still keep to its wait timeout, not spend a check timeout on each.
#[test]
fn a_silent_link_costs_a_get_no_more_than_its_wait_timeout() {
    let test = "network::a_silent_link_costs_a_get_no_more_than_its_wait_timeout";
    let Some((_server, proxy)) = server_and_proxy(test) else {
        return;
    };
    const WAIT: Duration = Duration::from_secs(3);
    const CHECK: Duration = Duration::from_secs(2);
    let rt = tokio_rt();
    rt.block_on(async {
        let pool = pool(&proxy, false, |b| {
            b.wait_timeout(WAIT)
                .check_timeout(CHECK)
                .close_deadline(CLOSE_DEADLINE)
        });
        drop(check_out(&pool, SIZE).await);
        proxy.set_mode(Mode::Blackhole);
        let started = Instant::now();
        let got = tokio::time::timeout(CALL_BOUND, pool.get()).await;
        let took = started.elapsed();
        let status = pool.status();
        println!(
            "get() took {took:?}: {:?}\n{status:?}",
            got.as_ref().map(|r| r.as_ref().err())
        );
        assert!(got.is_ok(), "get() hung past {CALL_BOUND:?}: {status:?}");
        assert!(
            matches!(got, Ok(Err(Error::Timeout { .. }))),
            "nothing can be served through a silent link"
        );
        assert!(
            took <= WAIT + Duration::from_millis(1500),
            "get() took {took:?}, its wait timeout is {WAIT:?} ({} checks failed, each up to {CHECK:?}): {status:?}",
            status.counters.check_failed
        );
        proxy.set_mode(Mode::Pass);
        let _ = tokio::time::timeout(Duration::from_secs(30), pool.close())
            .await
            .expect("close() returns");
    });
}

/// A caller gives up on a blocking command (its future dropped by a timeout, as a request
/// handler's deadline does) and the connection goes back to the pool with the command still
/// running on the server. The next caller must not wait behind it: with one connection in the
/// pool, its `PING` is answered well before the abandoned `BLPOP ... 5` would end.
#[test]
fn a_call_given_up_does_not_hold_up_the_next_caller() {
    let test = "network::a_call_given_up_does_not_hold_up_the_next_caller";
    let Some((_server, proxy)) = server_and_proxy(test) else {
        return;
    };
    let rt = tokio_rt();
    rt.block_on(async {
        // No response timeout: the BLPOP is abandoned by the caller alone.
        let pool = pool(&proxy, false, |b| {
            b.max_size(1).close_deadline(CLOSE_DEADLINE)
        });
        let mut conn = pool.get().await.unwrap();
        let gave_up = tokio::time::timeout(
            Duration::from_millis(300),
            redis::cmd("BLPOP")
                .arg("nothing-comes")
                .arg(5)
                .query_async::<redis::Value>(&mut *conn),
        )
        .await;
        assert!(gave_up.is_err(), "BLPOP on an empty list waits its 5 s");
        drop(conn);
        let started = Instant::now();
        let next = tokio::time::timeout(CALL_BOUND, async {
            let mut conn = pool.get().await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                redis::cmd("PING").query_async::<String>(&mut *conn).await?,
            )
        })
        .await;
        let took = started.elapsed();
        println!("the next call took {took:?}: {next:?}\n{:?}", pool.status());
        assert!(matches!(&next, Ok(Ok(pong)) if pong == "PONG"), "{next:?}");
        assert!(
            took < Duration::from_secs(2),
            "the next call waited {took:?} behind the abandoned BLPOP: {:?}",
            pool.status()
        );
        let report = close_accounted(&pool).await;
        println!("{report:?}");
    });
}
