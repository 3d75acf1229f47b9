//! gracepool-postgres, deadpool-postgres 0.14 and bb8-postgres 0.9 through a PostgreSQL
//! failover: a primary, its streaming standby, and a pool on a connection string naming both
//! (`host=127.0.0.1,127.0.0.1 port=P1,P2 target_session_attrs=read-write`, the test kit's
//! `multi_host_conn_str`: a new connection goes to the first server that takes writes).
//!
//! ```sh
//! cargo run --release -p gracepool-bench --bin failover              # the full run, ~6 min
//! GRACEPOOL_FO_BEFORE_SECS=3 GRACEPOOL_FO_AFTER_SECS=5 GRACEPOOL_FO_CASES=read-only \
//!   cargo run --release -p gracepool-bench --bin failover            # a quick look
//! ```
//!
//! Every library runs on a primary + standby pair of its own, and the libraries run **one
//! after another** (the three pairs of a case are started together, before the first library
//! runs; the two idle pairs wait): each pool has the machine's two cores to itself while it
//! is measured, and no pool's switch disturbs another's.
//!
//! The load: 16 tasks on a pool of `max_size` 8, each inserting one row per call
//! (`INSERT INTO writes (task, n) VALUES ($1, $2)`; the row's `port` column defaults to
//! `inet_server_port()`, so that every row tells which server took it) with the library's usual
//! call: gracepool-postgres the pooled connection's own `execute` (which reads the error: a
//! `25006` or a `57P01` refreshes the pool), deadpool-postgres `client.execute`, bb8-postgres
//! `conn.execute`. Each call (get + insert) runs inside the caller's own
//! `GRACEPOOL_FO_CALLER_TIMEOUT_MS` (5000) `tokio::time::timeout`. After a successful call a
//! task pauses a random 0–`GRACEPOOL_FO_THINK_MS` (20) ms (the pool is busy, but some
//! connections wait idle at the switch); after a failed one, 100 ms, as a retry loop would.
//! The pools are built with their defaults and `max_size` 8 (gracepool-postgres through
//! `Manager::from_conn_str`, the peers from the `tokio_postgres::Config` parsed from the same
//! string), and filled with their 8 connections, to the primary, before the load starts.
//!
//! The load runs `GRACEPOOL_FO_BEFORE_SECS` (10), then the switch, then
//! `GRACEPOOL_FO_AFTER_SECS` (15) from the switch's start. Cases (`GRACEPOOL_FO_CASES`):
//! - **read-only** (a): the old primary is turned read-only (`set_read_only(true)`, nothing
//!   closed: writes on open sessions fail with `25006`), the standby replays everything the
//!   old primary wrote, and it is promoted.
//! - **stop** (b): the old primary is stopped (fast shutdown: sessions end with `57P01`),
//!   and the standby is promoted.
//!
//! Measured per pool: errors by kind (SQLSTATE, `closed`, the get's error, the caller's
//! timeout), errors per connection (errors ÷ the connections that ever existed: gracepool's
//! `created` counter, deadpool's `post_create` hook, bb8's `on_acquire`), errors of calls begun
//! after the first failed call had ended (a pool that reads errors has seen one by then),
//! checkouts begun after the first `25006`/`57P01` call gave its connection back that got a
//! connection made before the switch (gracepool and deadpool tell when a connection was made),
//! writes that landed on the old server from calls begun after the switch's start (and after
//! it took effect), acknowledged writes missing on the new primary (read back with `psql`),
//! the time from the switch's start to the first write acknowledged by the new primary, and
//! the inserts in flight at the switch (calls begun before it took effect and ended after it
//! began) that failed — in (b) the calls lost in flight — and of those, how many committed
//! anyway. `GRACEPOOL_FO_LIBS` picks libraries (`grace,dead,bb8`), `GRACEPOOL_FO_ROUNDS` (2)
//! repeats everything. Nothing here asserts a timing.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gracepool_testkit::postgres::{multi_host_conn_str, PgServer};
use gracepool_testkit::Rng;
use tokio_postgres::NoTls;

const TASKS: usize = 16;
const SIZE: usize = 8;
/// A task's pause after a failed call.
const ERROR_PAUSE: Duration = Duration::from_millis(100);
/// "Still failing at the end": errors in this last stretch of the run.
const TAIL: Duration = Duration::from_secs(5);

const TABLE: &str = "CREATE TABLE writes ( \
     task int NOT NULL, n int NOT NULL, \
     port int NOT NULL DEFAULT inet_server_port(), \
     PRIMARY KEY (task, n))";
const INSERT: &str = "INSERT INTO writes (task, n) VALUES ($1, $2)";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Lib {
    Grace,
    Dead,
    Bb8,
}

impl Lib {
    fn parse(s: &str) -> Option<Lib> {
        match s {
            "grace" => Some(Lib::Grace),
            "dead" => Some(Lib::Dead),
            "bb8" => Some(Lib::Bb8),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Lib::Grace => "gracepool-postgres",
            Lib::Dead => "deadpool-postgres",
            Lib::Bb8 => "bb8-postgres",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Lib::Grace => "grace",
            Lib::Dead => "dead",
            Lib::Bb8 => "bb8",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord)]
enum Case {
    ReadOnly,
    Stop,
}

impl Case {
    fn parse(s: &str) -> Option<Case> {
        match s {
            "read-only" => Some(Case::ReadOnly),
            "stop" => Some(Case::Stop),
            _ => None,
        }
    }

    fn key(self) -> &'static str {
        match self {
            Case::ReadOnly => "read-only",
            Case::Stop => "stop",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Settings {
    before: Duration,
    after: Duration,
    think_ms: u64,
    caller_timeout: Duration,
}

/// bb8's hook on every new connection: counts them.
#[derive(Debug)]
struct CountNew(Arc<AtomicU64>);

impl bb8::CustomizeConnection<tokio_postgres::Client, tokio_postgres::Error> for CountNew {
    fn on_acquire<'a>(
        &'a self,
        _connection: &'a mut tokio_postgres::Client,
    ) -> Pin<Box<dyn Future<Output = Result<(), tokio_postgres::Error>> + Send + 'a>> {
        self.0.fetch_add(1, Relaxed);
        Box::pin(async { Ok(()) })
    }
}

/// The three pools, behind one call.
enum Pool {
    Grace(gracepool_postgres::Pool),
    Dead(deadpool_postgres::Pool, Arc<AtomicU64>),
    Bb8(
        bb8::Pool<bb8_postgres::PostgresConnectionManager<NoTls>>,
        Arc<AtomicU64>,
    ),
}

/// What one call came to.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// The get failed (the pool's own error).
    Get(String),
    /// The insert failed with this SQLSTATE.
    Sql(String),
    /// The insert failed on a closed connection.
    Closed,
    /// The insert failed otherwise.
    Other(String),
    /// The caller's timeout; `in_insert` when the get had finished.
    Timeout {
        in_insert: bool,
    },
}

impl Outcome {
    fn kind(&self) -> String {
        match self {
            Outcome::Ok => "ok".into(),
            Outcome::Get(e) => format!("get: {e}"),
            Outcome::Sql(code) => code.clone(),
            Outcome::Closed => "closed".into(),
            Outcome::Other(e) => format!("insert: {e}"),
            Outcome::Timeout { in_insert: true } => "caller timeout in insert".into(),
            Outcome::Timeout { in_insert: false } => "caller timeout in get".into(),
        }
    }
}

fn short(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(70) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

fn insert_failure(e: tokio_postgres::Error) -> Outcome {
    if let Some(code) = e.code() {
        Outcome::Sql(code.code().to_owned())
    } else if e.is_closed() {
        Outcome::Closed
    } else {
        Outcome::Other(short(&e.to_string()))
    }
}

/// A tokio-postgres error with its causes (a connect error says why only in its source).
fn pg_label(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} {}", db.code().code(), short(db.message()));
    }
    let mut shown = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let _ = write!(shown, ": {cause}");
        source = cause.source();
    }
    short(&shown)
}

fn grace_label(e: &gracepool_postgres::PoolError) -> String {
    match e {
        gracepool::Error::Closed => "closed".into(),
        gracepool::Error::Timeout {
            last_error: None, ..
        } => "wait timeout".into(),
        gracepool::Error::Timeout {
            last_error: Some(last),
            ..
        } => format!("wait timeout, last creation: {}", grace_label(last)),
        gracepool::Error::Backend(e) => format!("backend: {}", pg_label(e)),
        gracepool::Error::Permanent(e) => format!("permanent: {}", pg_label(e)),
        other => short(&other.to_string()),
    }
}

fn dead_label(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Timeout(kind) => format!("timeout ({kind:?})"),
        deadpool_postgres::PoolError::Backend(e) => format!("backend: {}", pg_label(e)),
        deadpool_postgres::PoolError::Closed => "closed".into(),
        other => short(&other.to_string()),
    }
}

fn bb8_label(e: &bb8::RunError<tokio_postgres::Error>) -> String {
    match e {
        bb8::RunError::TimedOut => "timed out (connection_timeout)".into(),
        bb8::RunError::User(e) => format!("backend: {}", pg_label(e)),
    }
}

impl Pool {
    async fn build(lib: Lib, conn_str: &str) -> Pool {
        match lib {
            Lib::Grace => {
                let manager = gracepool_postgres::Manager::from_conn_str(conn_str)
                    .expect("a valid connection string");
                Pool::Grace(
                    gracepool::Pool::builder(manager)
                        .max_size(SIZE)
                        .runtime(gracepool_tokio::TokioRuntime::current())
                        .build()
                        .expect("a valid configuration"),
                )
            }
            Lib::Dead => {
                let config: tokio_postgres::Config =
                    conn_str.parse().expect("a valid connection string");
                let manager = deadpool_postgres::Manager::from_config(
                    config,
                    NoTls,
                    deadpool_postgres::ManagerConfig::default(),
                );
                let made = Arc::new(AtomicU64::new(0));
                let counter = made.clone();
                Pool::Dead(
                    deadpool_postgres::Pool::builder(manager)
                        .max_size(SIZE)
                        .runtime(deadpool_postgres::Runtime::Tokio1)
                        .post_create(deadpool_postgres::Hook::sync_fn(move |_, _| {
                            counter.fetch_add(1, Relaxed);
                            Ok(())
                        }))
                        .build()
                        .expect("a valid configuration"),
                    made,
                )
            }
            Lib::Bb8 => {
                let config: tokio_postgres::Config =
                    conn_str.parse().expect("a valid connection string");
                let made = Arc::new(AtomicU64::new(0));
                Pool::Bb8(
                    bb8::Pool::builder()
                        .max_size(SIZE as u32)
                        .connection_customizer(Box::new(CountNew(made.clone())))
                        .build(bb8_postgres::PostgresConnectionManager::new(config, NoTls))
                        .await
                        .expect("bb8 builds (no connection is made up front)"),
                    made,
                )
            }
        }
    }

    /// Makes all [`SIZE`] connections (to the primary) before the load starts.
    async fn warm(&self) {
        let bound = Duration::from_secs(10);
        match self {
            Pool::Grace(p) => {
                let mut held = Vec::new();
                for _ in 0..SIZE {
                    let conn = tokio::time::timeout(bound, p.get()).await;
                    held.push(conn.expect("get() in time").expect("a connection"));
                }
            }
            Pool::Dead(p, _) => {
                let mut held = Vec::new();
                for _ in 0..SIZE {
                    let conn = tokio::time::timeout(bound, p.get()).await;
                    held.push(conn.expect("get() in time").expect("a connection"));
                }
            }
            Pool::Bb8(p, _) => {
                let mut held = Vec::new();
                for _ in 0..SIZE {
                    let conn = tokio::time::timeout(bound, p.get()).await;
                    held.push(conn.expect("get() in time").expect("a connection"));
                }
            }
        }
    }

    /// One call: get, the insert, give back. `got` is set once the get is done.
    async fn insert(&self, task: i32, n: i32, got: &Got) -> Outcome {
        let result = match self {
            Pool::Grace(pool) => {
                let conn = match pool.get().await {
                    Ok(conn) => conn,
                    Err(e) => return Outcome::Get(grace_label(&e)),
                };
                got.set(Some(gracepool::Pooled::metrics(&conn).created()));
                conn.execute(INSERT, &[&task, &n]).await
            }
            Pool::Dead(pool, _) => {
                let conn = match pool.get().await {
                    Ok(conn) => conn,
                    Err(e) => return Outcome::Get(dead_label(&e)),
                };
                got.set(Some(deadpool_postgres::Object::metrics(&conn).created));
                conn.execute(INSERT, &[&task, &n]).await
            }
            Pool::Bb8(pool, _) => {
                let conn = match pool.get().await {
                    Ok(conn) => conn,
                    Err(e) => return Outcome::Get(bb8_label(&e)),
                };
                // bb8 keeps no creation time for a caller to read.
                got.set(None);
                conn.execute(INSERT, &[&task, &n]).await
            }
        };
        match result {
            Ok(1) => Outcome::Ok,
            Ok(rows) => Outcome::Other(format!("{rows} rows inserted")),
            Err(e) => insert_failure(e),
        }
    }

    /// Closes the pool; the connections that ever existed, and a line of details.
    async fn close(self) -> (u64, String) {
        match self {
            Pool::Grace(pool) => {
                let retired = pool.manager().retirements();
                let status = pool.status();
                let report = pool.close().await;
                let c = report.counters;
                (
                    c.created,
                    format!(
                        "size {} at the end; created {}, create_failed {}, check_failed {}, \
                         closed_broken {}, refreshes {}, closed_refreshed {}, gets_timed_out {}, \
                         wait_max {}; retired by callers' errors {retired:?}",
                        status.size,
                        c.created,
                        c.create_failed,
                        c.check_failed,
                        c.closed_broken,
                        c.refreshes,
                        c.closed_refreshed,
                        c.gets_timed_out,
                        secs(c.wait_max),
                    ),
                )
            }
            Pool::Dead(pool, made) => {
                let status = pool.status();
                pool.close();
                (
                    made.load(Relaxed),
                    format!("{status:?} at the end; created {}", made.load(Relaxed)),
                )
            }
            Pool::Bb8(pool, made) => {
                let state = pool.state();
                let detail = format!(
                    "{} connections ({} idle) at the end; created {}; {:?}",
                    state.connections,
                    state.idle_connections,
                    made.load(Relaxed),
                    state.statistics
                );
                drop(pool);
                (made.load(Relaxed), detail)
            }
        }
    }
}

/// What a call's get came to: set once the get is done, with the connection's creation time
/// when the pool tells it.
#[derive(Default)]
struct Got(Mutex<Option<Option<Instant>>>);

impl Got {
    fn set(&self, made: Option<Instant>) {
        *self.0.lock().expect("never poisoned") = Some(made);
    }

    fn done(&self) -> bool {
        self.0.lock().expect("never poisoned").is_some()
    }

    fn made(&self) -> Option<Instant> {
        self.0.lock().expect("never poisoned").flatten()
    }
}

/// One call, its times from the run's epoch.
#[derive(Clone, Debug)]
struct Call {
    task: i32,
    n: i32,
    start: Duration,
    end: Duration,
    /// When the connection it got was made (gracepool and deadpool tell), from the epoch.
    made: Option<Duration>,
    outcome: Outcome,
}

async fn run_task(
    pool: Arc<Pool>,
    task: i32,
    epoch: Instant,
    s: Settings,
    stop: Arc<AtomicBool>,
) -> Vec<Call> {
    let mut calls = Vec::new();
    let mut rng = Rng::new(task as u64 + 1);
    let mut n = 0;
    while !stop.load(Relaxed) {
        n += 1;
        let got = Got::default();
        let start = epoch.elapsed();
        let outcome = match tokio::time::timeout(s.caller_timeout, pool.insert(task, n, &got)).await
        {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Timeout {
                in_insert: got.done(),
            },
        };
        let end = epoch.elapsed();
        let pause = if outcome == Outcome::Ok {
            Duration::from_millis(rng.below(s.think_ms + 1))
        } else {
            ERROR_PAUSE
        };
        calls.push(Call {
            task,
            n,
            start,
            end,
            made: got.made().map(|made| made.saturating_duration_since(epoch)),
            outcome,
        });
        tokio::time::sleep(pause).await;
    }
    calls
}

/// The switch's times, from the run's epoch.
#[derive(Clone, Copy, Debug, Default)]
struct Switch {
    /// The switch began (`set_read_only` or `stop` called).
    began: Duration,
    /// The old primary was read-only for new sessions, or had exited.
    switched: Duration,
    /// The standby replayed everything (read-only case only; `switched` otherwise).
    replayed: Duration,
    /// `pg_promote` returned: the new primary takes writes.
    promoted: Duration,
}

/// What was seen of one pool in one case.
struct Measured {
    lib: Lib,
    round: usize,
    calls: usize,
    ok: usize,
    before_rate: f64,
    tail_rate: f64,
    errors: BTreeMap<String, usize>,
    errors_total: usize,
    /// Errors of calls begun after the promotion returned.
    errors_after_promoted: usize,
    /// Errors of calls ending in the last [`TAIL`] of the run.
    errors_tail: usize,
    /// Errors of calls begun after the first failed call of the switch had ended (and so
    /// after a pool that reads errors had seen one).
    errors_after_first: usize,
    /// Checkouts begun after the first call that saw the server change (`25006`, `57P01`) had
    /// given its connection back, that got a connection made before the switch: `None` where
    /// the pool does not tell when a connection was made (bb8), or no call saw it.
    stale: Option<usize>,
    connections: u64,
    /// Rows on the old server written by calls begun after the switch began, and by those
    /// begun after it took effect (read-only set, or the server gone).
    old_after_switch: (usize, usize),
    /// Acknowledged writes missing on the new primary.
    lost: usize,
    switch: Switch,
    first_new: Option<Duration>,
    last_error: Option<Duration>,
    /// Calls in flight at the switch, the inserts among them that failed (sent, their
    /// outcome unknown to the caller), and of those, the ones whose row is there anyway.
    in_flight: (usize, usize, usize),
    detail: String,
    load: String,
}

/// Each row's server port, by `(task, n)`.
fn rows(pg: &PgServer) -> HashMap<(i32, i32), u16> {
    pg.psql("SELECT task, n, port FROM writes")
        .lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let mut fields = line.split('|').map(|f| f.parse::<i64>().expect("a number"));
            let mut next = || fields.next().expect("three fields");
            ((next() as i32, next() as i32), next() as u16)
        })
        .collect()
}

/// A primary with the table, and its standby, caught up.
fn pair(name: &str) -> Option<(PgServer, PgServer)> {
    let primary = PgServer::start(name)?;
    primary.psql(TABLE);
    let standby = primary.start_standby(name)?;
    standby.wait_for_replay_of(&primary);
    Some((primary, standby))
}

/// One pool through one case, on its own pair.
fn run_one(
    rt: &tokio::runtime::Runtime,
    lib: Lib,
    case: Case,
    round: usize,
    s: Settings,
    (mut primary, standby): (PgServer, PgServer),
) -> Measured {
    let (old_port, new_port) = (primary.port(), standby.port());
    let app = format!("failover-{}-{}", case.key(), lib.short());
    let conn_str = multi_host_conn_str(&[&primary, &standby], &app);
    let load = loadavg();
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let (pool, tasks) = rt.block_on(async {
        let pool = Arc::new(Pool::build(lib, &conn_str).await);
        pool.warm().await;
        let tasks: Vec<_> = (0..TASKS as i32)
            .map(|task| tokio::spawn(run_task(pool.clone(), task, epoch, s, stop.clone())))
            .collect();
        (pool, tasks)
    });
    // The load runs on the runtime's workers; the switch is made from this thread, by `psql`
    // and signals, as an operator's tooling would.
    let load_started = epoch.elapsed();
    std::thread::sleep(s.before);
    let mut sw = Switch {
        began: epoch.elapsed(),
        ..Switch::default()
    };
    match case {
        Case::ReadOnly => {
            primary.set_read_only(true);
            sw.switched = epoch.elapsed();
            standby.wait_for_replay_of(&primary);
            sw.replayed = epoch.elapsed();
        }
        Case::Stop => {
            primary.stop();
            sw.switched = epoch.elapsed();
            sw.replayed = sw.switched;
        }
    }
    standby.promote();
    sw.promoted = epoch.elapsed();
    let end_at = sw.began + s.after;
    std::thread::sleep(end_at.saturating_sub(epoch.elapsed()));
    stop.store(true, Relaxed);
    let run_end = epoch.elapsed();
    let (calls, connections, detail) = rt.block_on(async {
        let mut calls = Vec::new();
        let deadline = tokio::time::Instant::now() + s.caller_timeout + Duration::from_secs(5);
        for mut task in tasks {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(done) => calls.extend(done.expect("a load task does not panic")),
                Err(_) => task.abort(),
            }
        }
        let pool = Arc::try_unwrap(pool).unwrap_or_else(|_| panic!("the tasks are done"));
        let (connections, detail) = pool.close().await;
        (calls, connections, detail)
    });

    // The servers' side, from their logs: the sessions of this pool each saw end (on the new
    // primary, the read-write probes it refused while a standby are sessions too).
    standby.wait_for_backends_of(&app, 0, Duration::from_secs(5));
    if case == Case::ReadOnly {
        primary.wait_for_backends_of(&app, 0, Duration::from_secs(5));
    }
    let detail = format!(
        "{detail}\n    server logs: old primary {} sessions ended ({} by the server), new primary {} \
         sessions ended",
        primary.disconnections(Some(&app)),
        primary.ended_by_server(Some(&app)),
        standby.disconnections(Some(&app)),
    );
    let on_new = rows(&standby);
    let on_old = match case {
        Case::ReadOnly => rows(&primary),
        // Stopped: what it took is what it sent its standby.
        Case::Stop => on_new
            .iter()
            .filter(|(_, &port)| port == old_port)
            .map(|(&k, &v)| (k, v))
            .collect(),
    };
    let start_of = |task, n| {
        calls
            .iter()
            .find(|c| c.task == task && c.n == n)
            .map(|c| c.start)
    };
    let old_after = |from: Duration| {
        on_old
            .keys()
            .filter(|&&(task, n)| start_of(task, n).is_some_and(|start| start > from))
            .count()
    };
    let old_after_switch = (old_after(sw.began), old_after(sw.switched));
    let ok: Vec<&Call> = calls.iter().filter(|c| c.outcome == Outcome::Ok).collect();
    let lost = ok
        .iter()
        .filter(|c| !on_new.contains_key(&(c.task, c.n)))
        .count();
    let first_new = ok
        .iter()
        .filter(|c| on_new.get(&(c.task, c.n)) == Some(&new_port))
        .map(|c| c.end.saturating_sub(sw.began))
        .min();
    let failed: Vec<&Call> = calls.iter().filter(|c| c.outcome != Outcome::Ok).collect();
    let first_error_end = failed.iter().map(|c| c.end).min();
    let first_server_error_end = failed
        .iter()
        .filter(|c| matches!(&c.outcome, Outcome::Sql(code) if code == "25006" || code == "57P01"))
        .map(|c| c.end)
        .min();
    let stale = match (lib, first_server_error_end) {
        (Lib::Bb8, _) | (_, None) => None,
        (_, Some(at)) => Some(
            calls
                .iter()
                .filter(|c| c.start > at && c.made.is_some_and(|made| made < sw.began))
                .count(),
        ),
    };
    // The failed calls of the switch, for the details.
    let mut failures = String::new();
    for c in failed.iter().take(12) {
        let _ = write!(
            failures,
            "\n      {} → {} (from the switch), connection made {}: {}",
            signed(c.start, sw.began),
            signed(c.end, sw.began),
            c.made
                .map_or_else(|| "—".to_owned(), |made| signed(made, sw.began)),
            c.outcome.kind()
        );
    }
    let detail = format!("{detail}\n    first failed calls:{failures}");
    let mut errors = BTreeMap::new();
    for c in &failed {
        *errors.entry(c.outcome.kind()).or_insert(0) += 1;
    }
    let in_flight: Vec<&Call> = calls
        .iter()
        .filter(|c| c.start < sw.switched && c.end > sw.began)
        .collect();
    let in_flight_failed: Vec<&&Call> = in_flight
        .iter()
        .filter(|c| {
            matches!(
                c.outcome,
                Outcome::Sql(_)
                    | Outcome::Closed
                    | Outcome::Other(_)
                    | Outcome::Timeout { in_insert: true }
            )
        })
        .collect();
    let committed_anyway = in_flight_failed
        .iter()
        .filter(|c| on_new.contains_key(&(c.task, c.n)) || on_old.contains_key(&(c.task, c.n)))
        .count();
    let before_from = load_started.max(sw.began.saturating_sub(TAIL));
    let rate = |from: Duration, to: Duration| {
        let n = ok.iter().filter(|c| c.end >= from && c.end < to).count();
        n as f64 / (to - from).as_secs_f64().max(1e-3)
    };
    Measured {
        lib,
        round,
        calls: calls.len(),
        ok: ok.len(),
        before_rate: rate(before_from, sw.began),
        tail_rate: rate(run_end.saturating_sub(TAIL), run_end),
        errors_total: failed.len(),
        errors_after_promoted: failed.iter().filter(|c| c.start > sw.promoted).count(),
        errors_tail: failed
            .iter()
            .filter(|c| c.end >= run_end.saturating_sub(TAIL))
            .count(),
        errors_after_first: first_error_end
            .map_or(0, |at| failed.iter().filter(|c| c.start > at).count()),
        stale,
        errors,
        connections,
        old_after_switch,
        lost,
        switch: sw,
        first_new,
        last_error: failed.iter().map(|c| c.end.saturating_sub(sw.began)).max(),
        in_flight: (in_flight.len(), in_flight_failed.len(), committed_anyway),
        detail,
        load,
    }
    // The servers stop here (fast shutdown, by pid).
}

/// Runs one case: three pairs started at once, then each library on its own, in turn.
fn run_case(
    rt: &tokio::runtime::Runtime,
    case: Case,
    libs: &[Lib],
    round: usize,
    s: Settings,
) -> Option<Vec<Measured>> {
    let pairs: Vec<Option<(PgServer, PgServer)>> = std::thread::scope(|scope| {
        let starts: Vec<_> = libs
            .iter()
            .map(|lib| {
                let name = format!("gracepool-bench failover {} {}", case.key(), lib.short());
                scope.spawn(move || pair(&name))
            })
            .collect();
        starts
            .into_iter()
            .map(|t| t.join().expect("a server start does not panic"))
            .collect()
    });
    let pairs: Vec<(PgServer, PgServer)> = pairs.into_iter().collect::<Option<_>>()?;
    let mut out = Vec::new();
    for (&lib, pair) in libs.iter().zip(pairs) {
        let m = run_one(rt, lib, case, round, s, pair);
        print_details(case, &m);
        out.push(m);
    }
    Some(out)
}

fn print_details(case: Case, m: &Measured) {
    let sw = m.switch;
    println!(
        "[{} / {} / round {}] load {}; {} calls, {} ok; switch: old primary {} at +{}, \
         {}promoted at +{}; first write on the new primary at +{}",
        case.key(),
        m.lib.name(),
        m.round,
        m.load,
        m.calls,
        m.ok,
        match case {
            Case::ReadOnly => "read-only",
            Case::Stop => "stopped",
        },
        secs(sw.switched - sw.began),
        match case {
            Case::ReadOnly => format!("replayed at +{}, ", secs(sw.replayed - sw.began)),
            Case::Stop => String::new(),
        },
        secs(sw.promoted - sw.began),
        opt_secs(m.first_new, "never"),
    );
    for (kind, n) in &m.errors {
        println!("    {n} × {kind}");
    }
    println!("    {}", m.detail);
}

fn errors_cell(errors: &BTreeMap<String, usize>) -> String {
    if errors.is_empty() {
        return "none".into();
    }
    let mut by_count: Vec<_> = errors.iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    by_count
        .iter()
        .map(|(kind, n)| format!("{n} × {kind}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn table(out: &mut String, case: Case, rows: &[Measured], s: &Settings) {
    let (title, effect) = match case {
        Case::ReadOnly => (
            "(a) Old primary turned read-only (nothing closed), standby promoted",
            "read-only",
        ),
        Case::Stop => (
            "(b) Old primary stopped (fast shutdown), standby promoted",
            "stopped",
        ),
    };
    let _ = writeln!(out, "\n### {title}\n");
    let _ = writeln!(
        out,
        "| pool | ok calls (per s: before → last {tail}) | errors by kind | errors ÷ connections ever | errors begun after the first error ended · after promotion · ended in the last {tail} | old connections handed out after the first 25006/57P01 | writes on old server begun after switch (after {effect}) | acked writes lost | switch → old primary {effect} · promoted | switch → first write on new primary | last error (from switch) | inserts failed in flight (committed anyway) / calls in flight |",
        tail = secs(TAIL),
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for m in rows {
        let name = if rows.iter().any(|r| r.round > 1) {
            format!("{} (round {})", m.lib.name(), m.round)
        } else {
            m.lib.name().to_owned()
        };
        let sw = m.switch;
        let _ = writeln!(
            out,
            "| {name} | {} ({:.0} → {:.0}) | {} | {} ÷ {} = {:.2} | {} · {} · {} | {} | {} ({}) | {} | {} · {} | {} | {} | {} ({}) / {} |",
            m.ok,
            m.before_rate,
            m.tail_rate,
            errors_cell(&m.errors),
            m.errors_total,
            m.connections,
            m.errors_total as f64 / m.connections.max(1) as f64,
            m.errors_after_first,
            m.errors_after_promoted,
            m.errors_tail,
            m.stale.map_or_else(|| "—".to_owned(), |n| n.to_string()),
            m.old_after_switch.0,
            m.old_after_switch.1,
            m.lost,
            secs(sw.switched - sw.began),
            secs(sw.promoted - sw.began),
            opt_secs(m.first_new, &format!("none within {}", secs(s.after))),
            opt_secs(m.last_error, "—"),
            m.in_flight.1,
            m.in_flight.2,
            m.in_flight.0,
        );
    }
}

fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// `t` from `from`, signed, in milliseconds.
fn signed(t: Duration, from: Duration) -> String {
    if t >= from {
        format!("+{} ms", (t - from).as_millis())
    } else {
        format!("-{} ms", (from - t).as_millis())
    }
}

fn opt_secs(d: Option<Duration>, none: &str) -> String {
    d.map_or_else(|| none.to_owned(), secs)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    let s = Settings {
        before: Duration::from_secs(env_or("GRACEPOOL_FO_BEFORE_SECS", 10)),
        after: Duration::from_secs(env_or("GRACEPOOL_FO_AFTER_SECS", 15).max(1)),
        think_ms: env_or("GRACEPOOL_FO_THINK_MS", 20),
        caller_timeout: Duration::from_millis(env_or("GRACEPOOL_FO_CALLER_TIMEOUT_MS", 5000)),
    };
    let cases: Vec<Case> = env_list("GRACEPOOL_FO_CASES", "read-only,stop")
        .iter()
        .map(|c| Case::parse(c).unwrap_or_else(|| panic!("unknown case {c:?}")))
        .collect();
    let libs: Vec<Lib> = env_list("GRACEPOOL_FO_LIBS", "grace,dead,bb8")
        .iter()
        .map(|l| Lib::parse(l).unwrap_or_else(|| panic!("unknown library {l:?}")))
        .collect();
    let rounds = env_or("GRACEPOOL_FO_ROUNDS", 2).max(1) as usize;
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    println!(
        "date: {}",
        std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    );
    println!(
        "machine: {} cores, {cpu}; load {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );
    println!(
        "{TASKS} tasks per pool, max {SIZE}, error pause {ERROR_PAUSE:?}; {s:?}; libraries one after another"
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let started = Instant::now();
    let mut results: BTreeMap<Case, Vec<Measured>> = BTreeMap::new();
    for round in 1..=rounds {
        for &case in &cases {
            let Some(rows) = run_case(&rt, case, &libs, round, s) else {
                return;
            };
            results.entry(case).or_default().extend(rows);
        }
    }
    let mut out = String::new();
    for (&case, rows) in &mut results {
        rows.sort_by_key(|m| (libs.iter().position(|&l| l == m.lib), m.round));
        table(&mut out, case, rows, &s);
    }
    println!("{out}");
    println!("Whole run: {}; load {}", secs(started.elapsed()), loadavg());
}
