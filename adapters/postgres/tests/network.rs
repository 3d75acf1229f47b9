//! The pool on a bad network, between it and a real PostgreSQL server: a link that goes silent
//! for good, one that resets every connection, one that refuses new ones (all through the test
//! kit's fault proxy), and a partition the kernel sees (packets dropped with nftables).
//!
//! Every await is bounded, so a hang is a failure, not a stuck test; every bound is generous
//! (an outer limit, not a measurement of this machine). Each test starts its own server and
//! proxy, or prints one SKIPPED line.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gracepool::Error;
use gracepool_postgres::{ConnectOptions, Pool};
use gracepool_testkit::assert_accounted;
use gracepool_testkit::fault::{FaultProxy, Mode};
use gracepool_testkit::netfilter::{self, PacketDrop};
use gracepool_testkit::postgres::PgServer;
use gracepool_tokio::TokioRuntime;

/// The pool's size, and how many tasks share it.
const SIZE: usize = 4;
const TASKS: usize = 8;
/// Each call (a `get()` and a query) fails the test if it takes longer than this: a hang.
const CALL_BOUND: Duration = Duration::from_secs(20);
/// The close deadline the stall test gives its pool, and the slack the close may take on top.
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
fn server_and_proxy(test: &str) -> Option<(PgServer, FaultProxy)> {
    let pg = PgServer::start(test)?;
    let proxy = FaultProxy::start(pg.port()).expect("a free port on 127.0.0.1");
    Some((pg, proxy))
}

/// A connection string for the trust user on `port`, connections named `app`, plus `extra`.
fn conn_str(port: u16, app: &str, extra: &str) -> String {
    format!(
        "host=127.0.0.1 port={port} user={} dbname=postgres application_name={app} {extra}",
        gracepool_testkit::postgres::USER
    )
}

/// A pool of [`SIZE`] on the current runtime, connecting with `conn_str`.
fn pool(
    conn_str: &str,
    configure: impl FnOnce(
        gracepool::Builder<gracepool_postgres::Manager>,
    ) -> gracepool::Builder<gracepool_postgres::Manager>,
) -> Pool {
    let manager = ConnectOptions::parse(conn_str)
        .expect("the test's connection string parses")
        .manager()
        .expect("no TLS asked");
    configure(
        Pool::builder(manager)
            .max_size(SIZE)
            .runtime(TokioRuntime::current()),
    )
    .build()
    .expect("a valid configuration")
}

/// What one call (`get()`, then `SELECT 1`) came to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// `get()` failed (the pool being closed aside).
    GetError(String),
    /// The connection was handed out with its client already closed.
    DeadHandout,
    /// The query failed on a connection handed out alive.
    QueryError(String),
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
                            let conn = match pool.get().await {
                                Err(Error::Closed | Error::RuntimeGone) => return None,
                                Err(e) => return Some(Outcome::GetError(e.to_string())),
                                Ok(conn) => conn,
                            };
                            got = Some(Instant::now());
                            if conn.is_closed() {
                                return Some(Outcome::DeadHandout);
                            }
                            Some(match conn.query_one("SELECT 1", &[]).await {
                                Ok(row) if row.get::<_, i32>(0) == 1 => Outcome::Ok,
                                Ok(_) => Outcome::QueryError("SELECT 1 was not 1".into()),
                                Err(e) => Outcome::QueryError(e.to_string()),
                            })
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

/// The proxy goes silent for good (Blackhole) while 8 tasks run queries through a pool of 4:
/// four calls are stuck in queries that will never be answered, four wait for a connection.
/// `close()` returns within its deadline plus slack, the waiters are told the pool is closed,
/// and once the stuck calls are given up (their tasks aborted, their guards dropped) every
/// connection the pool made is accounted for.
#[test]
fn a_link_silent_forever_does_not_hold_up_close() {
    let test = "network::a_link_silent_forever_does_not_hold_up_close";
    let Some((pg, proxy)) = server_and_proxy(test) else {
        return;
    };
    let app = "silent";
    let rt = tokio_rt();
    rt.block_on(async {
        let pool = pool(&conn_str(proxy.port(), app, ""), |b| {
            b.close_deadline(CLOSE_DEADLINE)
        });
        let load = Load::start(&pool, TASKS);
        assert!(
            load.await_more(50, Duration::from_secs(10)).await,
            "the load ran"
        );
        proxy.set_mode(Mode::Blackhole);
        // Every connection gets stuck in a query, the other tasks wait in get().
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
        // The calls stuck in a query still hold their connections; nothing else is open.
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
        // No call that finished hung; the stuck ones were aborted, not timed out.
        assert!(
            calls.iter().all(|c| c.outcome != Outcome::Hung),
            "{:?}",
            failures(&calls)
        );
    });
    drop(proxy);
    // The server's sessions all end once the proxy lets go of their sockets.
    assert_eq!(pg.wait_for_backends_of(app, 0, Duration::from_secs(5)), 0);
}

/// Every connection is reset (RST to both sides) for an instant, under load, then the link
/// passes again: only the queries in flight at the reset fail; no connection handed out after
/// the reset is dead (its query succeeds), `get()` never fails, and service resumes at once.
/// Three tasks on a pool of four kept full (`min_idle`): at the reset some connections are in
/// a query and some idle, and the idle ones must not be handed out dead.
#[test]
fn a_reset_of_every_connection_is_ridden_out() {
    let test = "network::a_reset_of_every_connection_is_ridden_out";
    let Some((_pg, proxy)) = server_and_proxy(test) else {
        return;
    };
    let rt = tokio_rt();
    rt.block_on(async {
        let pool = pool(&conn_str(proxy.port(), "reset", ""), |b| b.min_idle(SIZE));
        let load = Load::start(&pool, 3);
        assert!(load.await_more(50, Duration::from_secs(10)).await);
        // All four made (min_idle comes over its pre-warm window), and one of them idle.
        gracepool_testkit::until_status(&pool, "four connections, one idle", |s| {
            s.counters.created as usize == SIZE && s.idle >= 1
        })
        .await;
        let before = pool.status();
        let reset_at = Instant::now();
        proxy.set_mode(Mode::ResetAll);
        let reset_done = Instant::now();
        proxy.set_mode(Mode::Pass);
        let served = load.await_more(1, RECOVERY).await;
        let back_after = reset_done.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let ok_before_stop = load.ok();
        let calls = load.stop().await;
        let report = close_accounted(&pool).await;
        println!(
            "reset {:?}, first answer {back_after:?} after it; {ok_before_stop} ok; {:?}; {report:?}",
            reset_done - reset_at,
            proxy.counts()
        );
        assert!(served, "no call succeeded within {RECOVERY:?} of the reset");
        assert!(before.idle >= 1, "a connection was idle at the reset: {before:?}");
        assert!(proxy.counts().reset >= 1, "{:?}", proxy.counts());
        // Handed out after the reset: alive, and answered.
        let bad_after: Vec<&Call> = calls
            .iter()
            .filter(|c| c.got.is_some_and(|g| g > reset_done))
            .filter(|c| c.outcome != Outcome::Ok)
            .collect();
        assert!(bad_after.is_empty(), "handed out after the reset: {bad_after:?}");
        for call in &calls {
            match &call.outcome {
                Outcome::Ok => {}
                // In flight at the reset: its connection was reset under it.
                Outcome::QueryError(_) | Outcome::DeadHandout
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
    let Some((_pg, proxy)) = server_and_proxy(test) else {
        return;
    };
    const OUTAGE: Duration = Duration::from_millis(1500);
    let rt = tokio_rt();
    rt.block_on(async {
        let pool = pool(&conn_str(proxy.port(), "refused", ""), |b| {
            b.wait_timeout(Duration::from_secs(10))
        });
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
        assert!(served, "no call succeeded within {RECOVERY:?} of the link passing");
        for call in &calls {
            match &call.outcome {
                Outcome::Ok => {}
                Outcome::QueryError(_) | Outcome::DeadHandout
                    if call.got.is_some_and(|g| g <= reset_done) => {}
                _ => panic!("{call:?}\nall failures: {:?}", failures(&calls)),
            }
            // No call waited much longer than the outage (and the creation backoff's cap).
            assert!(
                call.took < OUTAGE + RECOVERY,
                "{call:?} took longer than the outage and recovery"
            );
        }
    });
}

/// The kernel's partition: packets to and from the server's port dropped for 8 s (longer than
/// every TCP bound of the connection string) under load, then healed. The connection string
/// sets small TCP bounds: keepalives after 1 s idle, every 1 s, 2 unanswered; a TCP user
/// timeout of 3 s; a connect timeout of 3 s. The pool waits at most 5 s.
///
/// No call may last past the wait timeout plus the user timeout plus slack (a call is a
/// `get()`, bounded by the wait timeout, then a query on a connection whose unacknowledged
/// data ends it within the user timeout); and once healed, every call that starts after the
/// recovery time succeeds: no call hangs on a connection a failed call left behind.
#[test]
fn a_packet_drop_longer_than_the_tcp_bounds_then_heal() {
    let test = "network::a_packet_drop_longer_than_the_tcp_bounds_then_heal";
    if !netfilter::available(test) {
        return;
    }
    let Some(pg) = PgServer::start(test) else {
        return;
    };
    const WAIT: Duration = Duration::from_secs(5);
    const USER_TIMEOUT: Duration = Duration::from_secs(3);
    const DROP_FOR: Duration = Duration::from_secs(8);
    const SLACK: Duration = Duration::from_secs(3);
    let bound = WAIT + USER_TIMEOUT + SLACK;
    // tcp_user_timeout in milliseconds, as libpq reads it (ConnectOptions keeps libpq's unit).
    let conn = conn_str(
        pg.port(),
        "dropped",
        "keepalives_idle=1 keepalives_interval=1 keepalives_retries=2 tcp_user_timeout=3000 connect_timeout=3",
    );
    let opts = ConnectOptions::parse(&conn).unwrap();
    assert_eq!(opts.config().get_tcp_user_timeout(), Some(&USER_TIMEOUT));
    assert_eq!(
        opts.config().get_connect_timeout(),
        Some(&Duration::from_secs(3))
    );
    assert_eq!(opts.config().get_keepalives_idle(), Duration::from_secs(1));
    let rt = tokio_rt();
    rt.block_on(async {
        let pool = pool(&conn, |b| b.wait_timeout(WAIT));
        let load = Load::start(&pool, TASKS);
        assert!(load.await_more(50, Duration::from_secs(10)).await);
        let partition = PacketDrop::start(test, pg.port()).expect("nft was available");
        let dropped_at = Instant::now();
        tokio::time::sleep(DROP_FOR).await;
        let during = pool.status();
        partition.heal();
        let healed = Instant::now();
        let served = load.await_more(1, RECOVERY).await;
        let back_after = healed.elapsed();
        tokio::time::sleep(RECOVERY + Duration::from_secs(2)).await;
        let calls = load.stop().await;
        let report = close_accounted(&pool).await;
        println!("at the heal: {during:?}\nfirst answer {back_after:?} after the heal\n{report:?}");
        let longest = calls.iter().map(|c| c.took).max().unwrap_or_default();
        let describe = |c: &Call| {
            format!(
                "{:?} from {:?} after the drop: {:?}",
                c.took,
                c.start.saturating_duration_since(dropped_at),
                c.outcome
            )
        };
        println!(
            "{} calls, {} failed, longest {longest:?}",
            calls.len(),
            calls.iter().filter(|c| c.outcome != Outcome::Ok).count()
        );
        let long: Vec<String> = calls
            .iter()
            .filter(|c| c.took > bound)
            .map(describe)
            .collect();
        assert!(long.is_empty(), "calls past {bound:?}: {long:?}");
        assert!(served, "no call succeeded within {RECOVERY:?} of the heal");
        let after: Vec<String> = calls
            .iter()
            .filter(|c| c.start > healed + RECOVERY && c.outcome != Outcome::Ok)
            .map(describe)
            .collect();
        assert!(
            after.is_empty(),
            "calls failed {RECOVERY:?} after the heal: {after:?}"
        );
        assert!(
            calls.iter().any(|c| c.start > healed + RECOVERY),
            "the load ran after the heal"
        );
    });
}

/// Idle connections are closed while the link is silent: their Terminate goes into a socket
/// that forwards nothing, so the server never reads it (it logs each session's end as an
/// unexpected EOF once the proxy lets go). A goodbye the server never got must not be counted
/// as said: `closed_graceful` is at most the goodbyes the server saw.
#[test]
fn a_goodbye_into_a_silent_link_is_not_counted_as_said() {
    let test = "network::a_goodbye_into_a_silent_link_is_not_counted_as_said";
    let Some((pg, proxy)) = server_and_proxy(test) else {
        return;
    };
    let app = "unheard";
    let rt = tokio_rt();
    let report = rt.block_on(async {
        let pool = pool(&conn_str(proxy.port(), app, ""), |b| {
            b.close_deadline(CLOSE_DEADLINE)
        });
        // Four connections, all idle.
        let held: Vec<_> = check_out(&pool, SIZE).await;
        drop(held);
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
    // The link never comes back: the proxy closes both sides of every socket it holds.
    drop(proxy);
    assert_eq!(pg.wait_for_backends_of(app, 0, Duration::from_secs(5)), 0);
    let heard = pg.goodbyes(app);
    println!(
        "server: {heard} goodbyes, {} unexpected EOFs; {report:?}",
        pg.unexpected_eofs(Some(app))
    );
    assert!(
        report.counters.closed_graceful as usize <= heard,
        "{} goodbyes counted as said, the server heard {heard}: {report:?}",
        report.counters.closed_graceful
    );
}

/// Checks out `n` connections, one after the other, each answering a query (each `get()`
/// bounded).
async fn check_out(pool: &Pool, n: usize) -> Vec<gracepool_postgres::Pooled> {
    let mut held = Vec::new();
    for _ in 0..n {
        let conn = tokio::time::timeout(Duration::from_secs(10), pool.get())
            .await
            .expect("get() returns")
            .expect("a connection");
        conn.query_one("SELECT 1", &[]).await.expect("answered");
        held.push(conn);
    }
    held
}

/// With round-trip checks (`CheckMethod::Verified`), four idle connections behind a link gone
/// silent: a `get()` that finds them one after another must still keep to its wait timeout
/// (the pool's promise: the whole call, checks included, keeps to it), not spend a check
/// timeout on each.
#[test]
fn a_silent_link_costs_a_get_no_more_than_its_wait_timeout() {
    let test = "network::a_silent_link_costs_a_get_no_more_than_its_wait_timeout";
    let Some((_pg, proxy)) = server_and_proxy(test) else {
        return;
    };
    const WAIT: Duration = Duration::from_secs(3);
    const CHECK: Duration = Duration::from_secs(2);
    let rt = tokio_rt();
    rt.block_on(async {
        let manager = ConnectOptions::parse(&conn_str(proxy.port(), "checked", ""))
            .unwrap()
            .manager()
            .unwrap()
            .check_method(gracepool_postgres::CheckMethod::Verified);
        let pool = Pool::builder(manager)
            .max_size(SIZE)
            .wait_timeout(WAIT)
            .check_timeout(CHECK)
            .close_deadline(CLOSE_DEADLINE)
            .runtime(TokioRuntime::current())
            .build()
            .unwrap();
        drop(check_out(&pool, SIZE).await);
        proxy.set_mode(Mode::Blackhole);
        let started = Instant::now();
        let got = tokio::time::timeout(CALL_BOUND, pool.get()).await;
        let took = started.elapsed();
        let status = pool.status();
        println!("get() took {took:?}: {:?}\n{status:?}", got.as_ref().map(|r| r.as_ref().err()));
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

/// A caller gives up on a slow query (its future dropped by a timeout, as a request handler's
/// deadline does) and the connection goes back to the pool with the query still running on the
/// server. The next caller must not wait behind the abandoned query: with one connection in the
/// pool, its `SELECT 1` is answered well before the abandoned `pg_sleep(5)` would end.
#[test]
fn a_call_given_up_does_not_hold_up_the_next_caller() {
    let test = "network::a_call_given_up_does_not_hold_up_the_next_caller";
    let Some((_pg, proxy)) = server_and_proxy(test) else {
        return;
    };
    let rt = tokio_rt();
    rt.block_on(async {
        let pool = Pool::builder(
            ConnectOptions::parse(&conn_str(proxy.port(), "abandoned", ""))
                .unwrap()
                .manager()
                .unwrap(),
        )
        .max_size(1)
        .close_deadline(CLOSE_DEADLINE)
        .runtime(TokioRuntime::current())
        .build()
        .unwrap();
        let conn = pool.get().await.unwrap();
        let gave_up = tokio::time::timeout(
            Duration::from_millis(300),
            conn.query_one("SELECT pg_sleep(5)", &[]),
        )
        .await;
        assert!(gave_up.is_err(), "pg_sleep(5) cannot answer in 300 ms");
        drop(conn);
        let started = Instant::now();
        let next = tokio::time::timeout(CALL_BOUND, async {
            let conn = pool.get().await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                conn.query_one("SELECT 1", &[]).await?.get::<_, i32>(0),
            )
        })
        .await;
        let took = started.elapsed();
        println!("the next call took {took:?}: {next:?}\n{:?}", pool.status());
        assert!(matches!(next, Ok(Ok(1))), "{next:?}");
        assert!(
            took < Duration::from_secs(2),
            "the next call waited {took:?} behind the abandoned pg_sleep(5): {:?}",
            pool.status()
        );
        let report = close_accounted(&pool).await;
        println!("{report:?}");
    });
}
