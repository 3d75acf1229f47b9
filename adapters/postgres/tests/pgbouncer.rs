//! The pool behind PgBouncer (Debian's 1.18, started by the test kit in front of a test
//! PostgreSQL): transaction pooling with and without `Pooler::Transaction`, session pooling
//! with the statement cache, and what PgBouncer's own operations look like to the pool —
//! `PAUSE` then `RESUME`, `RECONNECT`, a kill and a restart, `SHUTDOWN` while the pool closes.
//!
//! Every test runs more clients than PgBouncer has server connections, under concurrent load.
//! Every await is bounded, so a hang is a failure; every bound is generous (an outer limit, not
//! a measurement). The figures a test measures (recovery after a restart, errors) are printed
//! as `MEASURED ...` lines: `cargo test -p gracepool-postgres --test pgbouncer -- --nocapture`.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gracepool_postgres::tokio_postgres::error::SqlState;
use gracepool_postgres::tokio_postgres::types::Type;
use gracepool_postgres::{Manager, Pool, Pooler};
use gracepool_testkit::assert_accounted;
use gracepool_testkit::pgbouncer::{PgBouncer, PoolMode};
use gracepool_testkit::postgres::PgServer;
use gracepool_tokio::TokioRuntime;

/// PgBouncer's server connections; the pool may hold more client connections than that, and
/// more tasks than that share the pool.
const SERVER_CONNS: usize = 2;
const POOL_SIZE: usize = 8;
const TASKS: usize = 16;
/// Each call (a `get()` and its queries) fails the test if it takes longer than this: a hang.
const CALL_BOUND: Duration = Duration::from_secs(20);
/// How long service may take to come back once PgBouncer serves again (an outer limit).
const RECOVERY: Duration = Duration::from_secs(10);

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A PostgreSQL server and a PgBouncer in front of it, or `None` after a SKIPPED line.
fn servers(test: &str, mode: PoolMode, server_conns: usize) -> Option<(PgServer, PgBouncer)> {
    let pg = PgServer::start(test)?;
    let bouncer = PgBouncer::builder(&pg)
        .mode(mode)
        .default_pool_size(server_conns)
        .start(test)?;
    Some((pg, bouncer))
}

fn manager(bouncer: &PgBouncer, app: &str, pooler: Pooler) -> Manager {
    Manager::from_conn_str(&bouncer.conn_str(app))
        .expect("the test kit's connection string parses")
        .pooler(pooler)
}

fn pool(
    manager: Manager,
    configure: impl FnOnce(gracepool::Builder<Manager>) -> gracepool::Builder<Manager>,
) -> Pool {
    configure(
        Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(TokioRuntime::current()),
    )
    .build()
    .expect("a valid configuration")
}

/// `prepared statement "sN" does not exist` (26000) or `... already exists` (42P05).
fn is_prepared_statement_error(e: &gracepool_postgres::tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == SqlState::INVALID_SQL_STATEMENT_NAME || *c == SqlState::DUPLICATE_PSTATEMENT
    })
}

/// What one call of a load task does with its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    /// `prepare_cached` then the statement, and `query(&str)` with a parameter: named
    /// statements outside a transaction.
    Named,
    /// Unnamed statements only: `query_typed`, `execute_typed`, `simple_query`, and a
    /// transaction that prepares (`prepare_cached` inside it) and uses the statement there.
    Unnamed,
    /// `query_typed` alone, the cheapest call.
    Typed,
}

/// What one call came to.
#[derive(Debug, Clone)]
enum Outcome {
    Ok,
    /// `get()` failed (how long it waited is the call's `waited`): whether it timed out,
    /// and the error.
    Get(bool, String),
    /// The pool was closed: the task ends.
    Closed,
    /// A query failed: whether it was a prepared-statement error, and the error.
    Query(bool, String),
}

#[derive(Debug, Clone)]
struct Call {
    /// Which load task made it.
    task: usize,
    started: Instant,
    ended: Instant,
    /// How long `get()` took.
    waited: Duration,
    outcome: Outcome,
}

async fn one_call(pool: &Pool, work: Work, task: usize, n: i32) -> Call {
    let started = Instant::now();
    let got = pool.get().await;
    let waited = started.elapsed();
    let outcome = match got {
        Err(gracepool::Error::Closed | gracepool::Error::RuntimeGone) => Outcome::Closed,
        Err(e) => Outcome::Get(matches!(e, gracepool::Error::Timeout { .. }), e.to_string()),
        Ok(mut conn) => {
            let answer: Result<(), gracepool_postgres::tokio_postgres::Error> = async {
                match work {
                    Work::Named => {
                        let stmt = conn.prepare_cached("SELECT $1::int + 1").await?;
                        let row = conn.query_one(&stmt, &[&n]).await?;
                        assert_eq!(row.get::<_, i32>(0), n + 1);
                        let rows = conn.query("SELECT $1::int * 2", &[&n]).await?;
                        assert_eq!(rows[0].get::<_, i32>(0), n * 2);
                    }
                    Work::Typed => {
                        let rows = conn
                            .query_typed("SELECT $1::int + 1", &[(&n, Type::INT4)])
                            .await?;
                        assert_eq!(rows[0].get::<_, i32>(0), n + 1);
                    }
                    Work::Unnamed => {
                        let rows = conn
                            .query_typed("SELECT $1::int + 1", &[(&n, Type::INT4)])
                            .await?;
                        assert_eq!(rows[0].get::<_, i32>(0), n + 1);
                        let done = conn
                            .execute_typed("SELECT $1::text", &[(&"x", Type::TEXT)])
                            .await?;
                        assert_eq!(done, 1);
                        conn.simple_query("SELECT 1").await?;
                        let tx = conn.transaction().await?;
                        let stmt = tx.prepare_cached("SELECT $1::int - 1").await?;
                        let row = tx.query_one(&stmt, &[&n]).await?;
                        assert_eq!(row.get::<_, i32>(0), n - 1);
                        // Used and dropped inside the transaction: its Close reaches the
                        // server connection that prepared it.
                        drop(stmt);
                        tx.commit().await?;
                    }
                }
                Ok(())
            }
            .await;
            match answer {
                Ok(()) => Outcome::Ok,
                Err(e) => Outcome::Query(is_prepared_statement_error(&e), e.to_string()),
            }
        }
    };
    Call {
        task,
        started,
        ended: Instant::now(),
        waited,
        outcome,
    }
}

/// Tasks calling through a pool in a loop until stopped (or the pool closes); each call is
/// bounded by [`CALL_BOUND`].
struct Load {
    stop: Arc<AtomicBool>,
    calls: Arc<Mutex<Vec<Call>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(pool: &Pool, tasks: usize, work: Work) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..tasks)
            .map(|t| {
                let (pool, stop, calls) = (pool.clone(), stop.clone(), calls.clone());
                tokio::spawn(async move {
                    let mut n = t as i32 * 1000;
                    while !stop.load(SeqCst) {
                        n += 1;
                        let call = tokio::time::timeout(CALL_BOUND, one_call(&pool, work, t, n))
                            .await
                            .unwrap_or_else(|_| panic!("a call hung past {CALL_BOUND:?}"));
                        let closed = matches!(call.outcome, Outcome::Closed);
                        let failed = !matches!(call.outcome, Outcome::Ok);
                        calls.lock().unwrap().push(call);
                        if closed {
                            break;
                        }
                        if failed {
                            // A failing call is retried soon, not in a hot loop.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                })
            })
            .collect();
        Load { stop, calls, tasks }
    }

    /// The calls ended so far.
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn ok_count(&self) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Ok))
            .count()
    }

    /// Waits until `n` more calls have succeeded than now, up to `patience`.
    async fn until_ok(&self, n: usize, patience: Duration) -> bool {
        let target = self.ok_count() + n;
        let until = Instant::now() + patience;
        while self.ok_count() < target {
            if Instant::now() > until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }

    async fn stop(self) -> Vec<Call> {
        self.stop.store(true, SeqCst);
        for task in self.tasks {
            tokio::time::timeout(CALL_BOUND + Duration::from_secs(5), task)
                .await
                .expect("a load task stops")
                .expect("a load task does not panic");
        }
        let mut calls = self.calls.lock().unwrap().clone();
        calls.sort_by_key(|c| c.ended);
        calls
    }
}

/// (ok, get errors, prepared-statement errors, other query errors)
fn tally(calls: &[Call]) -> (usize, usize, usize, usize) {
    let mut t = (0, 0, 0, 0);
    for c in calls {
        match &c.outcome {
            Outcome::Ok => t.0 += 1,
            Outcome::Get(..) | Outcome::Closed => t.1 += 1,
            Outcome::Query(true, _) => t.2 += 1,
            Outcome::Query(false, _) => t.3 += 1,
        }
    }
    t
}

fn first_errors(calls: &[Call], n: usize) -> Vec<String> {
    calls
        .iter()
        .filter_map(|c| match &c.outcome {
            Outcome::Ok => None,
            Outcome::Closed => Some("closed".to_owned()),
            Outcome::Get(_, e) | Outcome::Query(_, e) => Some(e.clone()),
        })
        .take(n)
        .collect()
}

async fn close_accounted(pool: &Pool) -> gracepool::CloseReport {
    let report = tokio::time::timeout(Duration::from_secs(30), pool.close())
        .await
        .expect("close returns");
    assert_accounted(&report.counters);
    assert!(report.is_complete(), "{report:?}");
    report
}

/// Runs an admin command on a blocking thread (psql blocks: `PAUSE` until every server
/// connection is released).
async fn admin(bouncer: &Arc<PgBouncer>, command: &'static str) -> String {
    let bouncer = bouncer.clone();
    tokio::task::spawn_blocking(move || bouncer.admin(command))
        .await
        .expect("the admin command does not panic")
}

/// Transaction pooling, more clients than server connections: without the mode, named
/// statements fail there (the check can fail); with `Pooler::Transaction` and unnamed
/// statements, no call sees a prepared-statement error, and the calls that would prepare a
/// named statement outside a transaction are refused at once with `0A000`.
#[test]
fn transaction_pooling_with_the_mode_sees_no_prepared_statement_error() {
    let test = "pgbouncer::transaction_pooling_with_the_mode_sees_no_prepared_statement_error";
    let Some((_pg, bouncer)) = servers(test, PoolMode::Transaction, SERVER_CONNS) else {
        return;
    };
    tokio_rt().block_on(async {
        // Without the mode: named statements outside a transaction.
        let plain = pool(manager(&bouncer, "plain", Pooler::Session), |b| b);
        let load = Load::start(&plain, TASKS, Work::Named);
        assert!(
            load.until_ok(50, RECOVERY).await,
            "{:?}",
            first_errors(&load.calls(), 5)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let calls = load.stop().await;
        let (ok, get, prepared, other) = tally(&calls);
        println!(
            "MEASURED transaction pooling, no mode, prepare_cached + query(&str): {ok} ok, \
             {prepared} prepared-statement errors, {other} other, {get} get errors"
        );
        assert!(
            prepared > 0,
            "named statements should fail behind transaction pooling: {ok} ok"
        );
        assert_eq!(get + other, 0, "{:?}", first_errors(&calls, 5));
        let created = plain.status().counters.created;
        assert!(
            created as usize > SERVER_CONNS,
            "{created} client connections"
        );
        close_accounted(&plain).await;

        // With the mode: unnamed statements, and prepared ones inside transactions.
        let moded = pool(manager(&bouncer, "moded", Pooler::Transaction), |b| b);
        let load = Load::start(&moded, TASKS, Work::Unnamed);
        assert!(
            load.until_ok(200, RECOVERY * 3).await,
            "{:?}",
            first_errors(&load.calls(), 5)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let calls = load.stop().await;
        let (ok, get, prepared, other) = tally(&calls);
        println!(
            "MEASURED transaction pooling, Pooler::Transaction, unnamed statements: {ok} ok, \
             {prepared} prepared-statement errors, {other} other, {get} get errors"
        );
        assert_eq!(
            (get, prepared, other),
            (0, 0, 0),
            "{:?}",
            first_errors(&calls, 5)
        );
        let created = moded.status().counters.created;
        assert!(
            created as usize > SERVER_CONNS,
            "{created} client connections"
        );

        // The refused forms: a clear error at once, and the connection still serves.
        let conn = moded.get().await.expect("a connection");
        assert_eq!(conn.statement_cache_len(), 0, "no statement is cached");
        let refusals = [
            conn.prepare_cached("SELECT 1").await.map(drop),
            conn.prepare("SELECT 1").await.map(drop),
            conn.query("SELECT 1", &[]).await.map(drop),
            conn.execute("SELECT 1", &[]).await.map(drop),
        ];
        for refused in refusals {
            let e = refused.expect_err("named statements are refused in this mode");
            assert_eq!(e.code(), Some(&SqlState::FEATURE_NOT_SUPPORTED), "{e}");
            assert!(!is_prepared_statement_error(&e));
            let db = e.as_db_error().expect("a server error");
            assert!(db.message().contains("Pooler::Transaction"), "{db:?}");
            assert!(
                db.hint().is_some_and(|h| h.contains("query_typed")),
                "{db:?}"
            );
        }
        let row = conn
            .query_typed_one("SELECT $1::int", &[(&5i32, Type::INT4)])
            .await
            .expect("the connection serves after a refusal");
        assert_eq!(row.get::<_, i32>(0), 5);
        drop(conn);
        let report = close_accounted(&moded).await;
        assert_eq!(
            report.counters.check_failed + report.counters.closed_broken,
            0
        );
    });
}

/// Session pooling: each client connection keeps its server connection, so the statement
/// cache and `query(&str)` work, and a cached statement is reused on the next checkout.
#[test]
fn session_pooling_works_with_the_statement_cache() {
    let test = "pgbouncer::session_pooling_works_with_the_statement_cache";
    // In session pooling each client connection holds a server connection for its life: the
    // pool may hold as many as PgBouncer has, and more tasks than that share them.
    let pool_size = 4;
    let Some((_pg, bouncer)) = servers(test, PoolMode::Session, pool_size) else {
        return;
    };
    tokio_rt().block_on(async {
        let pool = pool(manager(&bouncer, "session", Pooler::Session), |b| {
            b.max_size(pool_size)
        });
        let load = Load::start(&pool, TASKS, Work::Named);
        assert!(load.until_ok(300, RECOVERY * 3).await, "{:?}", first_errors(&load.calls(), 5));
        let calls = load.stop().await;
        let (ok, get, prepared, other) = tally(&calls);
        println!("MEASURED session pooling, statement cache on: {ok} ok, {prepared} prepared-statement errors, {other} other, {get} get errors");
        assert_eq!((get, prepared, other), (0, 0, 0), "{:?}", first_errors(&calls, 5));
        let conn = pool.get().await.expect("a connection");
        assert_eq!(conn.statement_cache_len(), 1, "the cached statement is kept");
        let first = conn.prepare_cached("SELECT $1::int + 1").await.unwrap();
        let again = conn.prepare_cached("SELECT $1::int + 1").await.unwrap();
        assert_eq!(first.columns().len(), again.columns().len());
        drop(conn);
        assert_eq!(pool.status().counters.created as usize, pool_size);
        close_accounted(&pool).await;
    });
}

/// `PAUSE` for longer than the wait timeout, then `RESUME`: every `get()` returns within its
/// wait timeout (and some time out: the pause outlasted them), queries wait for `RESUME`,
/// service comes back after it, and no connection is retired for it.
#[test]
fn pause_longer_than_the_wait_timeout_then_resume() {
    let test = "pgbouncer::pause_longer_than_the_wait_timeout_then_resume";
    let Some((_pg, bouncer)) = servers(test, PoolMode::Transaction, SERVER_CONNS) else {
        return;
    };
    let bouncer = Arc::new(bouncer);
    let wait = Duration::from_millis(300);
    let pause = Duration::from_millis(1500);
    tokio_rt().block_on(async {
        let pool = pool(manager(&bouncer, "paused", Pooler::Transaction), |b| {
            b.wait_timeout(wait)
        });
        let load = Load::start(&pool, TASKS, Work::Typed);
        // Warm: every connection made before the pause (a creation during it waits for RESUME).
        let warm = async {
            while pool.status().size < POOL_SIZE {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(RECOVERY, warm)
            .await
            .expect("the pool fills");
        assert!(load.until_ok(50, RECOVERY).await);
        let before = pool.status().counters;

        admin(&bouncer, "PAUSE").await;
        let paused = Instant::now();
        tokio::time::sleep(pause).await;
        let pools = bouncer.pools();
        admin(&bouncer, "RESUME").await;
        let resumed = Instant::now();
        let back = load.until_ok(TASKS * 4, RECOVERY).await;
        let served_after = resumed.elapsed(); // until 4 calls per task were served
        tokio::time::sleep(Duration::from_millis(200)).await;
        let calls = load.stop().await;
        assert!(
            back,
            "service did not resume: {:?}",
            first_errors(&calls, 5)
        );

        // Every get() came back within its wait timeout (plus generous slack for a busy
        // machine), also during the pause.
        let longest = calls.iter().map(|c| c.waited).max().unwrap();
        assert!(
            longest < wait + Duration::from_secs(3),
            "a get() waited {longest:?}"
        );
        let timed_out = calls
            .iter()
            .filter(|c| c.started >= paused && c.ended <= resumed)
            .filter(|c| matches!(c.outcome, Outcome::Get(true, _)))
            .count();
        let (ok, get, prepared, other) = tally(&calls);
        println!(
            "MEASURED PAUSE {pause:?} > wait timeout {wait:?}: {timed_out} get() timeouts during \
             the pause, longest get() {longest:?}, {ok} ok, {get} get errors, {other} query \
             errors; {} calls served within {served_after:?} after RESUME; SHOW POOLS while paused: {pools:?}",
            TASKS * 4
        );
        assert!(
            timed_out > 0,
            "the pause outlasted the wait timeout: {:?}",
            first_errors(&calls, 5)
        );
        assert_eq!((prepared, other), (0, 0), "{:?}", first_errors(&calls, 5));
        // Paused queries waited and were answered: no connection was retired for the pause.
        let after = pool.status().counters;
        assert_eq!(after.created, before.created, "{after:?}");
        assert_eq!(after.check_failed + after.closed_broken, 0, "{after:?}");
        assert_eq!(pool.status().size, POOL_SIZE);
        close_accounted(&pool).await;
    });
}

/// `RECONNECT`: PgBouncer replaces its server connections as they are released; the pool's
/// connections to PgBouncer are untouched, and no caller sees an error.
#[test]
fn reconnect_replaces_server_connections_unseen() {
    let test = "pgbouncer::reconnect_replaces_server_connections_unseen";
    let Some((_pg, bouncer)) = servers(test, PoolMode::Transaction, SERVER_CONNS) else {
        return;
    };
    let bouncer = Arc::new(bouncer);
    tokio_rt().block_on(async {
        let pool = pool(manager(&bouncer, "reconnected", Pooler::Transaction), |b| b);
        let backends = |pool: Pool| async move {
            let mut pids = std::collections::BTreeSet::new();
            for _ in 0..20 {
                let conn = pool.get().await.expect("a connection");
                let row = conn
                    .query_typed_one("SELECT pg_backend_pid()", &[])
                    .await
                    .expect("a query");
                pids.insert(row.get::<_, i32>(0));
            }
            pids
        };
        let load = Load::start(&pool, TASKS, Work::Typed);
        assert!(load.until_ok(50, RECOVERY).await);
        let old = backends(pool.clone()).await;
        let before = pool.status().counters;
        admin(&bouncer, "RECONNECT").await;
        assert!(load.until_ok(TASKS * 4, RECOVERY).await);
        // Every old server connection was released and closed by now: the calls begun after
        // these run on new ones.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let new = backends(pool.clone()).await;
        let calls = load.stop().await;
        let (ok, get, prepared, other) = tally(&calls);
        println!("MEASURED RECONNECT under load: {ok} ok, {get} get errors, {prepared} + {other} query errors; server backends {old:?} -> {new:?}");
        assert_eq!((get, prepared, other), (0, 0, 0), "{:?}", first_errors(&calls, 5));
        assert!(old.is_disjoint(&new), "old backends still serve: {old:?} {new:?}");
        let after = pool.status().counters;
        assert_eq!(after.created, before.created, "no client connection replaced: {after:?}");
        assert_eq!(after.check_failed + after.closed_broken, 0, "{after:?}");
        close_accounted(&pool).await;
    });
}

/// PgBouncer killed (SIGKILL) under load and restarted on the same port a second later:
/// errors are bounded while it is gone, and callers are served again once it is back. The
/// time from PgBouncer listening again to the first call served, and to every task served,
/// is measured and printed.
#[test]
fn killed_and_restarted_under_load() {
    let test = "pgbouncer::killed_and_restarted_under_load";
    let Some((_pg, mut bouncer)) = servers(test, PoolMode::Transaction, SERVER_CONNS) else {
        return;
    };
    let wait = Duration::from_millis(500);
    // How long PgBouncer stays down; `GRACEPOOL_PGBOUNCER_OUTAGE_MS` changes it, to measure.
    let outage = Duration::from_millis(
        std::env::var("GRACEPOOL_PGBOUNCER_OUTAGE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000),
    );
    let rt = tokio_rt();
    let (pool, load) = rt.block_on(async {
        let pool = pool(manager(&bouncer, "killed", Pooler::Transaction), |b| {
            b.wait_timeout(wait)
        });
        let load = Load::start(&pool, TASKS, Work::Typed);
        assert!(load.until_ok(100, RECOVERY).await);
        (pool, load)
    });
    let killed = Instant::now();
    bouncer.kill();
    std::thread::sleep(outage);
    bouncer.restart();
    let back = Instant::now();
    rt.block_on(async {
        // The first call served after PgBouncer listens again, and the first for every task
        // (each task's first success that began after the restart).
        let first = async {
            loop {
                let calls = load.calls();
                if let Some(c) = calls
                    .iter()
                    .filter(|c| c.ended > back && matches!(c.outcome, Outcome::Ok))
                    .min_by_key(|c| c.ended)
                {
                    return c.ended - back;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let first = tokio::time::timeout(RECOVERY, first)
            .await
            .expect("callers are served again after the restart");
        assert!(load.until_ok(TASKS * 4, RECOVERY).await, "service resumes");
        // Every task's first call served after the restart.
        let all_served = {
            let calls = load.calls();
            (0..TASKS)
                .map(|task| {
                    calls
                        .iter()
                        .filter(|c| c.task == task && c.ended > back)
                        .filter(|c| matches!(c.outcome, Outcome::Ok))
                        .map(|c| c.ended - back)
                        .min()
                })
                .collect::<Option<Vec<Duration>>>()
                .and_then(|firsts| firsts.into_iter().max())
        };
        let calls = load.stop().await;
        let (ok, get, prepared, other) = tally(&calls);
        let during: usize = calls
            .iter()
            .filter(|c| c.ended >= killed && c.started < back && !matches!(c.outcome, Outcome::Ok))
            .count();
        let after: usize = calls
            .iter()
            .filter(|c| c.started >= back && !matches!(c.outcome, Outcome::Ok))
            .count();
        let status = pool.status();
        println!(
            "MEASURED PgBouncer SIGKILL, {outage:?} down, restarted: first call served \
             {first:?} after it listened again, {TASKS} tasks served within {all_served:?}; \
             errors: {during} of calls begun while it was down, {after} of calls begun after it was back ({get} get, \
             {prepared} prepared-statement, {other} query); {ok} ok; counters {:?}",
            status.counters
        );
        println!("MEASURED first errors: {:?}", first_errors(&calls, 4));
        assert_eq!(prepared, 0);
        // Bounded errors: while PgBouncer is gone, each task fails at most once per wait
        // timeout and once for the query it was in, plus slack; after it is back, a few
        // stragglers per task at most.
        let bound = TASKS * (outage.as_millis() / wait.as_millis() + 4) as usize;
        assert!(during <= bound, "{during} errors while down, bound {bound}");
        assert!(after <= TASKS * 4, "{after} errors after the restart");
        let report = close_accounted(&pool).await;
        assert!(
            report.counters.created as usize > POOL_SIZE,
            "connections were replaced"
        );
    });
}

/// `SHUTDOWN` on PgBouncer's console while the pool closes with connections checked out in
/// queries: the close still ends within its deadline, and accounts for every connection.
#[test]
fn shutdown_while_the_pool_closes() {
    let test = "pgbouncer::shutdown_while_the_pool_closes";
    let Some((_pg, bouncer)) = servers(test, PoolMode::Transaction, SERVER_CONNS) else {
        return;
    };
    let bouncer = Arc::new(bouncer);
    let deadline = Duration::from_secs(2);
    tokio_rt().block_on(async {
        let pool = pool(manager(&bouncer, "shutdown", Pooler::Transaction), |b| {
            b.close_deadline(deadline)
        });
        // Tasks in queries that take a while (most of them queued in PgBouncer behind its two
        // server connections), more of them than server connections.
        let mut holders = Vec::new();
        for _ in 0..POOL_SIZE {
            let pool = pool.clone();
            holders.push(tokio::spawn(async move {
                let conn = pool.get().await?;
                let _ = conn.simple_query("SELECT pg_sleep(5)").await;
                drop(conn);
                Ok::<(), gracepool_postgres::PoolError>(())
            }));
        }
        let all_out = async {
            while pool.status().in_use < POOL_SIZE {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        tokio::time::timeout(RECOVERY, all_out)
            .await
            .expect("every connection is checked out");
        let checked_out = pool.status().in_use;
        let started = Instant::now();
        let closing = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.close().await })
        };
        let shutdown = {
            let bouncer = bouncer.clone();
            tokio::spawn(async move { admin(&bouncer, "SHUTDOWN").await })
        };
        let report = closing.await.expect("close does not panic");
        let took = started.elapsed();
        let c = &report.counters;
        println!(
            "MEASURED SHUTDOWN during close ({checked_out} checked out): close took {took:?} \
             (deadline {deadline:?}); created {}, said goodbye {}, unconfirmed {}, closed sync {}, \
             close failed {}, checked out at the end {}",
            c.created,
            c.closed_graceful,
            c.closed_unconfirmed,
            c.closed_sync,
            c.close_failed,
            report.checked_out
        );
        assert!(
            took < deadline + Duration::from_secs(3),
            "close took {took:?}"
        );
        assert_accounted(c);
        assert!(report.is_complete(), "{report:?}");
        shutdown.await.expect("SHUTDOWN is sent");
        for h in holders {
            let _ = tokio::time::timeout(CALL_BOUND, h)
                .await
                .expect("holder ends");
        }
        assert!(
            checked_out > SERVER_CONNS,
            "more clients than server connections"
        );
        let bouncer = Arc::try_unwrap(bouncer).expect("the last handle");
        let mut bouncer = bouncer;
        assert!(
            bouncer.wait_exit(Duration::from_secs(10)),
            "SHUTDOWN ends PgBouncer"
        );
    });
}
