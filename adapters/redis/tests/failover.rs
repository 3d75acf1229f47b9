//! A role switch under a write load, against two real `redis-server`s: B replicates A, and a
//! pool on A's address serves sixteen tasks writing through eight connections (each pausing
//! up to a few milliseconds between calls), every `get()` and every `SET` bounded by its own
//! timeout. Then B is promoted and A made B's replica,
//! while the pool keeps pointing at A: A refuses writes with `READONLY`, on the connections
//! it has and on any new one. A pool connects to one address, so it cannot reach B by itself;
//! what it must do is stop using the connections made before the switch (the first
//! `READONLY` refreshes the pool), retire every connection that saw `READONLY`, keep `get()`
//! working, and serve writes again as soon as A is a primary again.
//!
//! Prints one `MEASURED` line (errors by kind, which connections saw `READONLY`, the time to
//! the first write after A is back). Starts its own two servers, or prints one `SKIPPED` line.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gracepool::Pooled;
use gracepool_redis::redis;
use gracepool_redis::{Manager, Pool};
use gracepool_testkit::redis::{RedisServer, FAST_SYNC};
use gracepool_testkit::{assert_accounted, Rng};
use gracepool_tokio::TokioRuntime;

/// The pool's size, and how many tasks share it.
const SIZE: usize = 8;
const TASKS: usize = 16;
/// Each `get()`, and each `SET`, fails the test if it takes longer than this: a hang.
const CALL_BOUND: Duration = Duration::from_secs(10);
/// Writes must succeed within this of A being a primary again.
const RECOVERY: Duration = Duration::from_secs(5);
/// How long the load runs before the switch, while A is a replica, and after A is back.
const BEFORE: Duration = Duration::from_millis(500);
const HOLD: Duration = Duration::from_millis(600);
const AFTER: Duration = Duration::from_millis(800);
/// A task's pause between calls: up to this, at random. The pool is busy but not saturated,
/// so that some connections wait idle at the switch: a pool that kept handing out connections
/// made before the switch would show it.
const THINK_MS: u64 = 40;
/// A task's pause after a failed call, as a client's before it retries: while A is a replica
/// every call fails, and each makes a new connection.
const PAUSE: Duration = Duration::from_millis(20);

/// A multi-thread tokio runtime with both drivers, on two workers (the machine has two cores).
fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// The pool's status in a few words.
fn brief(status: &gracepool::Status) -> String {
    format!(
        "size {}, idle {}, in use {}, waiters {}",
        status.size, status.idle, status.in_use, status.waiters
    )
}

/// What one call (a `get()`, then a `SET`) came to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Ok,
    GetError(String),
    Timeout(&'static str),
    /// The server's error code (`READONLY`, `LOADING`, ...).
    Refused(String),
    /// An error without a code (the connection dropped, ...).
    Other(String),
}

impl Outcome {
    fn kind(&self) -> String {
        match self {
            Outcome::Ok => "ok".into(),
            Outcome::GetError(_) => "get-error".into(),
            Outcome::Timeout(what) => format!("timeout-{what}"),
            Outcome::Refused(code) => code.clone(),
            Outcome::Other(_) => "no-code".into(),
        }
    }
}

/// One call of one task.
#[derive(Debug, Clone)]
struct Call {
    /// When `get()` was called.
    began: Instant,
    /// When the connection it got was made (the pool's stamp), and its checkouts (this one
    /// included), if it got one.
    made: Option<(Instant, u64)>,
    /// When the connection was back with the pool (the guard dropped).
    ended: Instant,
    outcome: Outcome,
}

async fn one_call(pool: &Pool, task: usize, n: u64) -> Call {
    let began = Instant::now();
    let mut call = Call {
        began,
        made: None,
        ended: began,
        outcome: Outcome::Ok,
    };
    let mut conn = match tokio::time::timeout(CALL_BOUND, pool.get()).await {
        Err(_) => {
            call.outcome = Outcome::Timeout("get");
            call.ended = Instant::now();
            return call;
        }
        Ok(Err(e)) => {
            call.outcome = Outcome::GetError(e.to_string());
            call.ended = Instant::now();
            return call;
        }
        Ok(Ok(conn)) => conn,
    };
    let metrics = Pooled::metrics(&conn);
    call.made = Some((metrics.created(), metrics.checkouts()));
    let mut cmd = redis::cmd("SET");
    cmd.arg(format!("task:{task}")).arg(n);
    let set = cmd.query_async::<()>(&mut *conn);
    call.outcome = match tokio::time::timeout(CALL_BOUND, set).await {
        Err(_) => Outcome::Timeout("set"),
        Ok(Ok(())) => Outcome::Ok,
        Ok(Err(e)) => match e.code() {
            Some(code) => Outcome::Refused(code.to_owned()),
            None => Outcome::Other(e.to_string()),
        },
    };
    drop(conn);
    call.ended = Instant::now();
    call
}

/// A is made B's replica under a write load through a pool on A, then a primary again.
///
/// - Every connection that saw `READONLY` is retired, and the first `READONLY` refreshes the
///   pool (counters `refreshes` and `closed_refreshed`): no checkout begun after it gets a
///   connection made before the switch (neither an idle one, nor one the test held across the
///   switch and gave back while A was a replica). So `READONLY` errors number at most the connections
///   in use at the switch (≤ the pool's size) plus the connections made while A is a replica,
///   and each of those saw it on its first checkout.
/// - `get()` never fails and no call hangs; no error but `READONLY` (or `LOADING`, should A
///   reload its data set) is seen.
/// - Once A is a primary again, writes succeed within [`RECOVERY`], and every call begun after
///   the first of them succeeds.
#[test]
fn a_primary_made_replica_under_the_pool() {
    let test = "gracepool-redis::failover::a_primary_made_replica_under_the_pool";
    let (Some(a), Some(b)) = (
        RedisServer::start_with_args(test, FAST_SYNC),
        RedisServer::start_with_args(test, FAST_SYNC),
    ) else {
        return;
    };
    b.replicate(&a);
    b.wait_for_sync();
    let rt = tokio_rt();
    rt.block_on(async {
        let pool: Pool = Pool::builder(Manager::new(a.url()).expect("a valid URL"))
            .max_size(SIZE)
            .runtime(TokioRuntime::current())
            .build()
            .expect("a valid configuration");
        // All eight made before the load starts.
        let mut held = Vec::new();
        for _ in 0..SIZE {
            let conn = tokio::time::timeout(CALL_BOUND, pool.get()).await;
            held.push(conn.expect("get() in time").expect("a connection to A"));
        }
        drop(held);

        let stop = Arc::new(AtomicBool::new(false));
        let first_read_only: Arc<Mutex<Option<Instant>>> = Arc::default();
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let (pool, stop) = (pool.clone(), stop.clone());
                let first_read_only = first_read_only.clone();
                tokio::spawn(async move {
                    let mut calls = Vec::new();
                    let mut n = 0;
                    let mut rng = Rng::new(task as u64 + 1);
                    while !stop.load(SeqCst) {
                        n += 1;
                        let call = one_call(&pool, task, n).await;
                        if call.outcome == Outcome::Refused("READONLY".into()) {
                            let mut first = first_read_only.lock().unwrap();
                            if first.is_none_or(|at| call.ended < at) {
                                *first = Some(call.ended);
                            }
                        }
                        let failed = call.outcome != Outcome::Ok;
                        calls.push(call);
                        let pause = match failed {
                            true => PAUSE,
                            false => Duration::from_millis(rng.below(THINK_MS + 1)),
                        };
                        tokio::time::sleep(pause).await;
                    }
                    calls
                })
            })
            .collect();
        tokio::time::sleep(BEFORE).await;
        // A connection checked out across the switch (a long request): given back while A is
        // a replica, it must not be handed out again.
        let held = tokio::time::timeout(CALL_BOUND, pool.get())
            .await
            .expect("get() in time")
            .expect("a connection to A");

        let at_switch = pool.status();
        let switch = Instant::now();
        tokio::task::block_in_place(|| {
            b.promote();
            a.replicate(&b);
        });
        let replica = Instant::now();
        tokio::time::sleep(HOLD / 2).await;
        drop(held);
        tokio::time::sleep(HOLD / 2).await;
        let during = pool.status();
        tokio::task::block_in_place(|| a.promote());
        let back = Instant::now();
        tokio::time::sleep(AFTER).await;
        stop.store(true, SeqCst);
        let mut calls = Vec::new();
        for task in tasks {
            calls.extend(task.await.expect("a load task panicked"));
        }
        let report = pool.close().await;
        let c = report.counters;

        let mut errors = BTreeMap::new();
        for call in calls.iter().filter(|c| c.outcome != Outcome::Ok) {
            *errors.entry(call.outcome.kind()).or_insert(0usize) += 1;
        }
        let read_only: Vec<&Call> = calls
            .iter()
            .filter(|c| c.outcome.kind() == "READONLY")
            .collect();
        let made_before = |c: &Call| c.made.is_some_and(|(made, _)| made < switch);
        let on_old = read_only.iter().filter(|c| made_before(c)).count();
        let on_new = read_only.len() - on_old;
        let made_during = c.created.saturating_sub(at_switch.counters.created);
        let first_back = calls
            .iter()
            .filter(|c| c.outcome == Outcome::Ok && c.began > back)
            .map(|c| c.ended)
            .min();
        let _ = writeln!(
            std::io::stdout(),
            "MEASURED {test}: {} calls, errors by kind {errors:?}; READONLY on connections made \
             before the switch {on_old}, on connections made after it {on_new}; connections made \
             after the switch {made_during}; A a replica {:?} after the switch began; first write \
             after A was a primary again {:?} after it; pool at the switch: {}; while A was a \
             replica: {}; after: refreshes {}, closed_refreshed {}, closed_broken {}",
            calls.len(),
            replica.duration_since(switch),
            first_back.map(|at| at.duration_since(back)),
            brief(&at_switch),
            brief(&during),
            c.refreshes,
            c.closed_refreshed,
            c.closed_broken,
        );

        assert!(
            !read_only.is_empty(),
            "no write saw A as a replica: {errors:?}"
        );
        for kind in errors.keys() {
            assert!(
                kind == "READONLY" || kind == "LOADING",
                "an error other than READONLY or LOADING (get() failed, or a call hung): {errors:?}"
            );
        }
        assert!(c.refreshes >= 1, "the pool was never refreshed: {c:?}");
        // Counted per reason by the manager: every connection that saw READONLY, once.
        let retired = pool.manager().retirements();
        assert!(
            retired.read_only >= 1 && retired.read_only as usize <= read_only.len(),
            "{retired:?} for {} READONLY errors",
            read_only.len()
        );
        assert!(
            c.closed_refreshed >= 1,
            "no connection retired by a refresh: {c:?}"
        );
        assert!(
            on_old <= SIZE,
            "{on_old} READONLY errors on the {SIZE} connections made before the switch"
        );
        // A connection made after the switch sees READONLY on its first checkout, and is
        // never handed out again.
        let reused: Vec<_> = read_only
            .iter()
            .filter(|c| !made_before(c) && c.made.is_some_and(|(_, checkouts)| checkouts > 1))
            .collect();
        assert!(
            reused.is_empty(),
            "READONLY on a connection made after the switch, handed out again: {reused:?}"
        );
        assert!(read_only.len() as u64 <= SIZE as u64 + made_during);

        let refreshed = first_read_only
            .lock()
            .unwrap()
            .expect("a READONLY was seen");
        let stale: Vec<&Call> = calls
            .iter()
            .filter(|c| c.began > refreshed && made_before(c))
            .collect();
        assert!(
            stale.is_empty(),
            "after the refresh, {} checkouts got a connection made before the switch: {:?}",
            stale.len(),
            &stale[..stale.len().min(5)]
        );

        let first_back = first_back.expect("writes succeeded after A was a primary again");
        assert!(
            first_back.duration_since(back) <= RECOVERY,
            "the first write came {:?} after A was a primary again",
            first_back.duration_since(back)
        );
        let failed_after: Vec<&Call> = calls
            .iter()
            .filter(|c| c.began > first_back && c.outcome != Outcome::Ok)
            .collect();
        assert!(
            failed_after.is_empty(),
            "calls failed after writes were back: {failed_after:?}"
        );
        assert_accounted(&c);
    });
}
