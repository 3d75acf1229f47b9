//! A real failover under a write load: a primary, its streaming standby, and a pool whose
//! connection string names both (`host=127.0.0.1,127.0.0.1 port=P1,P2
//! target_session_attrs=read-write`: a new connection goes to the first server that takes
//! writes). Sixteen tasks insert through a pool of eight, half with `execute`, half in a
//! transaction, each pausing up to a few milliseconds between calls (the pool is busy, but some
//! connections wait idle); every `get()` and every insert is bounded by its own timeout, so a
//! hang is a failure. Each row records the server that took it (`inet_server_port()`), so the test can
//! tell where every acknowledged write landed.
//!
//! - `demoted_primary_turns_read_only`: the old primary is turned read-only without closing
//!   anything (open sessions fail writes with `25006`), then the standby is promoted. The first
//!   `25006` refreshes the pool: at most one per connection, none on a checkout begun after
//!   the refresh, and writes land on the new primary within moments of the promotion.
//! - `stopped_primary_and_promoted_standby`: the old primary stops (fast shutdown), then the
//!   standby is promoted. Only the calls in flight fail, and writes land on the new primary.
//!
//! Each prints one `MEASURED` line: errors by SQLSTATE, the times of the switch, and the time
//! to the first write on the new primary. Each starts its own two servers, or prints one
//! `SKIPPED` line.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gracepool::Pooled;
use gracepool_postgres::{ConnectOptions, Pool};
use gracepool_testkit::postgres::{multi_host_conn_str, PgServer};
use gracepool_testkit::{assert_accounted, Rng};
use gracepool_tokio::TokioRuntime;

/// The pool's size, and how many tasks share it.
const SIZE: usize = 8;
const TASKS: usize = 16;
/// Each `get()`, and each insert, fails the test if it takes longer than this: a hang.
const CALL_BOUND: Duration = Duration::from_secs(10);
/// Writes must succeed on the new primary within this of the switch's start.
const RECOVERY: Duration = Duration::from_secs(5);
/// A task's pause between calls: up to this, at random. The pool is busy but not saturated,
/// so that some connections wait idle at the switch, as in a service between peaks: a pool
/// that kept handing out the old primary's connections after the first `25006` would show it.
const THINK_MS: u64 = 20;
/// How long the load runs before the switch, and after the promotion.
const BEFORE: Duration = Duration::from_millis(800);
const AFTER: Duration = Duration::from_millis(1500);

const TABLE: &str = "CREATE TABLE writes ( \
     task int NOT NULL, n int NOT NULL, \
     port int NOT NULL DEFAULT inet_server_port(), \
     PRIMARY KEY (task, n))";
const INSERT: &str = "INSERT INTO writes (task, n) VALUES ($1, $2)";

/// A multi-thread tokio runtime with both drivers, on two workers (the machine has two cores).
fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A primary with the table, and its standby, caught up.
fn primary_and_standby(test: &str) -> Option<(PgServer, PgServer)> {
    let primary = PgServer::start(test)?;
    primary.psql(TABLE);
    let standby = primary.start_standby(test)?;
    standby.wait_for_replay_of(&primary);
    Some((primary, standby))
}

/// A pool of [`SIZE`] over both servers, on the current runtime.
fn pool(servers: &[&PgServer], app: &str) -> Pool {
    let manager = ConnectOptions::parse(&multi_host_conn_str(servers, app))
        .expect("the multi-host string parses")
        .manager()
        .expect("no TLS asked");
    Pool::builder(manager)
        .max_size(SIZE)
        .runtime(TokioRuntime::current())
        .build()
        .expect("a valid configuration")
}

/// Makes all [`SIZE`] connections, on the primary, before the load starts.
async fn warm(pool: &Pool) {
    let mut held = Vec::new();
    for _ in 0..SIZE {
        let conn = tokio::time::timeout(CALL_BOUND, pool.get()).await;
        held.push(
            conn.expect("get() in time")
                .expect("a connection to the primary"),
        );
    }
}

/// What one call (a `get()`, then one insert) came to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// `get()` failed.
    GetError(String),
    /// `get()` or the insert outran [`CALL_BOUND`].
    Timeout(&'static str),
    /// The insert failed with this SQLSTATE.
    Sql(String),
    /// The insert failed without a SQLSTATE (the connection closed, ...).
    Other(String),
}

impl Outcome {
    /// A short name, to count errors by.
    fn kind(&self) -> String {
        match self {
            Outcome::Ok => "ok".into(),
            Outcome::GetError(_) => "get-error".into(),
            Outcome::Timeout(what) => format!("timeout-{what}"),
            Outcome::Sql(code) => code.clone(),
            Outcome::Other(_) => "no-sqlstate".into(),
        }
    }
}

/// One call of one task.
#[derive(Debug, Clone)]
struct Call {
    task: i32,
    n: i32,
    /// When `get()` was called.
    began: Instant,
    /// When the connection it got was made (the pool's stamp), if it got one.
    made: Option<Instant>,
    /// When the connection was back with the pool (the guard dropped).
    ended: Instant,
    outcome: Outcome,
}

/// Tasks inserting through a pool until stopped. Even tasks insert with `execute`, odd ones
/// in a transaction (`BEGIN`, the insert, `COMMIT`).
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Call>>>,
    /// When the first call that saw `25006` had given its connection back: the pool was
    /// refreshed by then.
    first_read_only: Arc<Mutex<Option<Instant>>>,
}

impl Load {
    fn start(pool: &Pool) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let first_read_only = Arc::new(Mutex::new(None));
        let tasks = (0..TASKS as i32)
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
                        if call.outcome == Outcome::Sql("25006".into()) {
                            let mut first = first_read_only.lock().unwrap();
                            if first.is_none_or(|at| call.ended < at) {
                                *first = Some(call.ended);
                            }
                        }
                        let failed = call.outcome != Outcome::Ok;
                        calls.push(call);
                        // As a client would, a short pause before it tries again after an
                        // error; between calls, a random one.
                        let pause = if failed { 5 } else { rng.below(THINK_MS + 1) };
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                    }
                    calls
                })
            })
            .collect();
        Load {
            stop,
            tasks,
            first_read_only,
        }
    }

    async fn stop(self) -> (Vec<Call>, Option<Instant>) {
        self.stop.store(true, SeqCst);
        let mut calls = Vec::new();
        for task in self.tasks {
            calls.extend(task.await.expect("a load task panicked"));
        }
        let first = *self.first_read_only.lock().unwrap();
        (calls, first)
    }
}

async fn one_call(pool: &Pool, task: i32, n: i32) -> Call {
    let began = Instant::now();
    let mut call = Call {
        task,
        n,
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
    call.made = Some(Pooled::metrics(&conn).created());
    let insert = async {
        if task % 2 == 0 {
            conn.execute(INSERT, &[&task, &n]).await.map(drop)
        } else {
            let tx = conn.transaction().await?;
            tx.execute(INSERT, &[&task, &n]).await?;
            tx.commit().await
        }
    };
    call.outcome = match tokio::time::timeout(CALL_BOUND, insert).await {
        Err(_) => Outcome::Timeout("insert"),
        Ok(Ok(())) => Outcome::Ok,
        Ok(Err(e)) => match e.code() {
            Some(code) => Outcome::Sql(code.code().to_owned()),
            None => Outcome::Other(e.to_string()),
        },
    };
    drop(conn);
    call.ended = Instant::now();
    call
}

/// Each row's server port, by `(task, n)`.
fn rows(pg: &PgServer) -> HashMap<(i32, i32), u16> {
    pg.psql("SELECT task, n, port FROM writes")
        .lines()
        .map(|line| {
            let mut fields = line.split('|').map(|f| f.parse::<i64>().expect("a number"));
            let mut next = || fields.next().expect("three fields");
            ((next() as i32, next() as i32), next() as u16)
        })
        .collect()
}

/// The pool's status in a few words.
fn brief(status: &gracepool::Status) -> String {
    format!(
        "size {}, idle {}, in use {}, waiters {}",
        status.size, status.idle, status.in_use, status.waiters
    )
}

/// Errors by kind (SQLSTATE, `get-error`, `timeout-...`, `no-sqlstate`).
fn errors_by_kind(calls: &[Call]) -> BTreeMap<String, usize> {
    let mut by_kind = BTreeMap::new();
    for call in calls.iter().filter(|c| c.outcome != Outcome::Ok) {
        *by_kind.entry(call.outcome.kind()).or_insert(0) += 1;
    }
    by_kind
}

/// When the first acknowledged write that landed on `port` was done, by `rows`.
fn first_write_on(calls: &[Call], rows: &HashMap<(i32, i32), u16>, port: u16) -> Option<Instant> {
    calls
        .iter()
        .filter(|c| c.outcome == Outcome::Ok && rows.get(&(c.task, c.n)) == Some(&port))
        .map(|c| c.ended)
        .min()
}

/// Asserts that every acknowledged write is on the new primary (`on_new`, its rows; none
/// lost), that those begun after `settled` landed there (on `port`, the new primary's), and
/// that the first of them came within [`RECOVERY`] of `switch`.
fn assert_writes_landed(
    calls: &[Call],
    on_new: &HashMap<(i32, i32), u16>,
    port: u16,
    switch: Instant,
    settled: Instant,
) {
    let acked: Vec<&Call> = calls.iter().filter(|c| c.outcome == Outcome::Ok).collect();
    let lost: Vec<_> = acked
        .iter()
        .filter(|c| !on_new.contains_key(&(c.task, c.n)))
        .map(|c| (c.task, c.n))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes are not on the new primary: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    let elsewhere: Vec<_> = acked
        .iter()
        .filter(|c| c.began > settled && on_new[&(c.task, c.n)] != port)
        .map(|c| (c.task, c.n, on_new[&(c.task, c.n)]))
        .collect();
    assert!(
        elsewhere.is_empty(),
        "writes begun after the switch landed elsewhere than on the new primary ({port}): \
         {elsewhere:?}"
    );
    let first = first_write_on(calls, on_new, port).expect("writes landed on the new primary");
    assert!(
        first.duration_since(switch) <= RECOVERY,
        "the first write on the new primary came {:?} after the switch",
        first.duration_since(switch)
    );
}

/// The old primary is turned read-only while every session stays open (as a demoted primary
/// that keeps running is), it ships its last writes to the standby, and the standby is
/// promoted. Writes on the old primary's sessions fail with `25006`, and the first of them
/// refreshes the pool (counters `refreshes`, `closed_refreshed`): each connection fails at
/// most once (`25006` errors ≤ the pool's size, and equal to the connections retired for
/// it), no checkout begun after that refresh gets a connection made before the switch or
/// sees `25006` (neither the idle ones, nor one the test held across the switch and gave back
/// after it), every acknowledged write is on the new primary, and writes succeed there within
/// [`RECOVERY`] of the switch, with no other error.
#[test]
fn demoted_primary_turns_read_only() {
    let test = "gracepool-postgres::failover::demoted_primary_turns_read_only";
    let Some((primary, standby)) = primary_and_standby(test) else {
        return;
    };
    let rt = tokio_rt();
    rt.block_on(async {
        let pool = pool(&[&primary, &standby], "failover-demoted");
        warm(&pool).await;
        let load = Load::start(&pool);
        tokio::time::sleep(BEFORE).await;
        // A connection checked out across the switch (a long request): it still reads from the
        // old primary, and must not be handed out again once given back.
        let held = tokio::time::timeout(CALL_BOUND, pool.get())
            .await
            .expect("get() in time")
            .expect("a connection to the primary");

        let at_switch = pool.status();
        let switch = Instant::now();
        let demote = {
            let (primary, standby) = (&primary, &standby);
            tokio::task::block_in_place(move || {
                primary.set_read_only(true);
                let read_only = Instant::now();
                // A switchover: everything the old primary took reaches the standby first.
                standby.wait_for_replay_of(primary);
                let promoting = Instant::now();
                standby.promote();
                (read_only, promoting, Instant::now())
            })
        };
        let (read_only, promoting, promoted) = demote;
        // Given back once the callers who waited through the switch are served, so that a
        // checkout begun after the switch would get it.
        tokio::time::sleep(AFTER / 2).await;
        let port =
            tokio::time::timeout(CALL_BOUND, held.query_one("SELECT inet_server_port()", &[]))
                .await
                .expect("a read in time")
                .expect("reads still work on a read-only server");
        assert_eq!(port.get::<_, i32>(0), i32::from(primary.port()));
        drop(held);
        tokio::time::sleep(AFTER / 2).await;
        let (calls, first_refresh) = load.stop().await;
        let retired = pool.manager().retirements();
        let report = pool.close().await;
        let c = report.counters;

        let errors = errors_by_kind(&calls);
        let read_only_errors = errors.get("25006").copied().unwrap_or(0);
        let on_old = rows(&primary);
        let on_new = rows(&standby);
        let first_on_new = first_write_on(&calls, &on_new, standby.port());
        let _ = writeln!(
            std::io::stdout(),
            "MEASURED {test}: {} calls, errors by kind {errors:?}; from the switch's start: \
             read-only at {:?}, pg_promote called at {:?}, returned at {:?}, first write on the \
             new primary at {:?}; rows: old primary {}, new primary {}; {retired:?}; pool at \
             the switch: {}; after: refreshes {}, closed_refreshed {}, created {}",
            calls.len(),
            read_only.duration_since(switch),
            promoting.duration_since(switch),
            promoted.duration_since(switch),
            first_on_new.map(|at| at.duration_since(switch)),
            on_old.len(),
            on_new.len(),
            brief(&at_switch),
            c.refreshes,
            c.closed_refreshed,
            c.created,
        );

        assert_writes_landed(&calls, &on_new, standby.port(), switch, read_only);
        assert!(
            read_only_errors >= 1,
            "no write saw the read-only server: {errors:?}"
        );
        assert!(
            read_only_errors <= SIZE,
            "{read_only_errors} writes failed with 25006, for {SIZE} connections"
        );
        // Each connection is counted once, under its first error: more errors than
        // connections retired means a connection failed twice.
        assert_eq!(
            read_only_errors as u64, retired.read_only,
            "25006 errors vs connections retired for it"
        );
        let others: BTreeMap<_, _> = errors.iter().filter(|(k, _)| *k != "25006").collect();
        assert!(others.is_empty(), "errors other than 25006: {others:?}");
        assert!(c.refreshes >= 1, "the pool was never refreshed: {c:?}");
        assert!(
            c.closed_refreshed >= 1,
            "no connection retired by the refresh: {c:?}"
        );

        let refreshed = first_refresh.expect("a 25006 was seen");
        let stale: Vec<&Call> = calls
            .iter()
            .filter(|c| c.began > refreshed)
            .filter(|c| c.made.is_some_and(|made| made < switch) || c.outcome.kind() == "25006")
            .collect();
        assert!(
            stale.is_empty(),
            "after the refresh, {} checkouts got a connection of the old primary: {:?}",
            stale.len(),
            &stale[..stale.len().min(5)]
        );
        // Nothing was written on the old primary after the switch, nor lost on the way.
        let old_on_new = on_new.values().filter(|&&p| p == primary.port()).count();
        assert_eq!(
            on_old.len(),
            old_on_new,
            "the old primary's rows on the new one"
        );
        assert_accounted(&c);
    });
}

/// The old primary stops (fast shutdown: its sessions end with `57P01`, its standby gets
/// everything first), then the standby is promoted. Only the calls in flight at the stop fail
/// (at most one per connection: the pool's check finds the others closed, and a `57P01` seen
/// by a call refreshes the pool), no checkout begun after the stop gets a connection of the
/// old primary (neither an idle one, nor one the test held across the stop and gave back),
/// `get()` never fails (it waits out the switch), every acknowledged write is on the new
/// primary, the writes begun after the stop landed there, and the first within [`RECOVERY`]
/// of the stop.
#[test]
fn stopped_primary_and_promoted_standby() {
    let test = "gracepool-postgres::failover::stopped_primary_and_promoted_standby";
    let Some((mut primary, standby)) = primary_and_standby(test) else {
        return;
    };
    let rt = tokio_rt();
    rt.block_on(async {
        let pool = pool(&[&primary, &standby], "failover-stopped");
        warm(&pool).await;
        let load = Load::start(&pool);
        tokio::time::sleep(BEFORE).await;
        // A connection checked out across the stop: the server ends it under its holder, and
        // it must not be handed out again once given back.
        let held = tokio::time::timeout(CALL_BOUND, pool.get())
            .await
            .expect("get() in time")
            .expect("a connection to the primary");

        let at_switch = pool.status();
        let switch = Instant::now();
        let (stopped, promoted) = {
            let (primary, standby) = (&mut primary, &standby);
            tokio::task::block_in_place(move || {
                primary.stop();
                let stopped = Instant::now();
                standby.promote();
                (stopped, Instant::now())
            })
        };
        assert!(held.is_closed(), "the held connection outlived its server");
        // Given back once the callers who waited through the switch are served, so that a
        // checkout begun after the stop would get it.
        tokio::time::sleep(AFTER / 2).await;
        drop(held);
        tokio::time::sleep(AFTER / 2).await;
        let (calls, _) = load.stop().await;
        let retired = pool.manager().retirements();
        let report = pool.close().await;
        let c = report.counters;

        let errors = errors_by_kind(&calls);
        let failed: usize = errors.values().sum();
        let on_new = rows(&standby);
        let first_on_new = first_write_on(&calls, &on_new, standby.port());
        let _ = writeln!(
            std::io::stdout(),
            "MEASURED {test}: {} calls, errors by kind {errors:?}; from the switch's start: \
             old primary stopped at {:?}, pg_promote returned at {:?}, first write on the new \
             primary at {:?}; rows on the new primary {}; {retired:?}; pool at the switch: {}; \
             after: check_failed {}, closed_broken {}, refreshes {}, closed_refreshed {}, \
             created {}",
            calls.len(),
            stopped.duration_since(switch),
            promoted.duration_since(switch),
            first_on_new.map(|at| at.duration_since(switch)),
            on_new.len(),
            brief(&at_switch),
            c.check_failed,
            c.closed_broken,
            c.refreshes,
            c.closed_refreshed,
            c.created,
        );

        assert_writes_landed(&calls, &on_new, standby.port(), switch, stopped);
        if errors.contains_key("57P01") {
            // An admin shutdown says the server is going: the pool was refreshed.
            assert!(
                c.refreshes >= 1,
                "57P01 seen, the pool not refreshed: {c:?}"
            );
        }
        assert!(
            failed <= SIZE,
            "{failed} calls failed, for {SIZE} connections in flight at most: {errors:?}"
        );
        for kind in errors.keys() {
            assert!(
                !kind.starts_with("get-error") && !kind.starts_with("timeout"),
                "get() failed or a call hung: {errors:?}"
            );
        }
        // The failures are the calls in flight as the server went: none begun after it was
        // gone, and no checkout begun then got one of its connections (an idle one, or the
        // one held across the stop).
        let late: Vec<&Call> = calls
            .iter()
            .filter(|c| c.began > stopped && c.outcome != Outcome::Ok)
            .collect();
        assert!(
            late.is_empty(),
            "calls begun after the stop failed: {late:?}"
        );
        let stale: Vec<&Call> = calls
            .iter()
            .filter(|c| c.began > stopped && c.made.is_some_and(|made| made < switch))
            .collect();
        assert!(
            stale.is_empty(),
            "after the stop, {} checkouts got a connection of the old primary: {:?}",
            stale.len(),
            &stale[..stale.len().min(5)]
        );
        assert_accounted(&c);
    });
}
