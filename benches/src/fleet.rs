//! A fleet of service processes on one PostgreSQL: each process its own pool of one library
//! (gracepool-postgres, deadpool-postgres 0.14 or bb8-postgres 0.9), all against one server
//! whose `max_connections` leaves little headroom. The processes are rolled one by one
//! (SIGTERM → the process stops its load, closes its pool and exits → a replacement starts),
//! then the fleet doubles and comes back.
//!
//! The processes are children of the harness: the same binary re-executed with the `child`
//! role (`fleet child <lib> <id> <connection string>`), so that a pool lives and dies with its
//! own process, as in a deployment. Each child runs [`Settings::tasks`] busy tasks, each in a
//! loop: get a connection, `SELECT pg_sleep(q)` ([`Settings::query_ms`]), give it back; a task
//! pauses 100 ms after a failed call, as a retry loop would. A task therefore holds a
//! connection nearly all the time and makes at most `1000 / query_ms` calls a second: the
//! fleet's target rate is `processes × tasks × 1000 / query_ms`, and a process with fewer
//! connections than busy tasks falls short of it. Each call runs inside the caller's own
//! timeout ([`Settings::caller_timeout`]).
//!
//! A child writes one line to its stdout every 100 ms: its cumulative counts of calls done,
//! calls whose get failed and calls whose query failed (`r <ok> <get> <query>`). On SIGTERM (or
//! when its stdin closes: the harness is gone) it stops its tasks, lets the calls under way
//! finish, closes its pool the library's way (gracepool: `close().await`; deadpool:
//! `Pool::close`; bb8, which has no close: dropping the pool), writes its error kinds and
//! its pool's counters, and returns from `main`.
//!
//! The harness ([`run`]) samples `pg_stat_activity` every 100 ms on a connection of its own
//! (the fleet's client backends), and reads the server's log afterwards (`log_connections`,
//! `log_disconnections`, and debug1 messages are on): connection attempts
//! (`connection received`), attempts refused (`sorry, too many clients already`,
//! SQLSTATE `53300`), sessions that ended without the client's Terminate (`unexpected EOF on
//! client connection`) and attempts abandoned before their session began (neither refused nor
//! authorized: a creation dropped half-way). [`Run`] holds it all; [`chart`] draws it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gracepool_testkit::postgres::PgServer;
use tokio_postgres::NoTls;

pub mod chart;

/// A pool library under test.
#[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord)]
pub enum Lib {
    /// gracepool-postgres.
    Grace,
    /// deadpool-postgres 0.14.
    Dead,
    /// bb8-postgres 0.9.
    Bb8,
}

impl Lib {
    /// All three, in the order of the tables.
    pub const ALL: [Lib; 3] = [Lib::Grace, Lib::Dead, Lib::Bb8];

    /// `grace`, `dead` or `bb8`.
    pub fn parse(s: &str) -> Option<Lib> {
        Lib::ALL.into_iter().find(|l| l.short() == s)
    }

    /// The crate's name.
    pub fn name(self) -> &'static str {
        match self {
            Lib::Grace => "gracepool-postgres",
            Lib::Dead => "deadpool-postgres",
            Lib::Bb8 => "bb8-postgres",
        }
    }

    /// The short name of the command line and of the application names.
    pub fn short(self) -> &'static str {
        match self {
            Lib::Grace => "grace",
            Lib::Dead => "dead",
            Lib::Bb8 => "bb8",
        }
    }

    /// The library's colour in the chart.
    pub fn colour(self) -> &'static str {
        match self {
            Lib::Grace => "#1b9e77",
            Lib::Dead => "#d95f02",
            Lib::Bb8 => "#7570b3",
        }
    }
}

/// The load and the scenario's timing.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Processes in the fleet (N); the scale-up doubles it.
    pub processes: usize,
    /// Each pool's `max_size` (and `min_idle`, where the library has it).
    pub max_size: usize,
    /// `max_connections` is `processes × max_size + headroom`.
    pub headroom: usize,
    /// Busy tasks per process.
    pub tasks: usize,
    /// Each call's `pg_sleep`, in milliseconds.
    pub query_ms: u64,
    /// Each call's own timeout (get + query).
    pub caller_timeout: Duration,
    /// From the first start to the end of the steady state measured before the roll.
    pub warm: Duration,
    /// The steady state measured before the roll (the fleet's full speed).
    pub steady: Duration,
    /// From one roll step's SIGTERM to the next one's.
    pub step: Duration,
    /// How long the doubled fleet runs before it is scaled back (skipped when zero).
    pub scale_hold: Duration,
    /// How long the fleet runs after the scale-down.
    pub after_scale: Duration,
}

impl Settings {
    /// The benchmark's settings, each from its `GRACEPOOL_FLEET_*` variable when set.
    pub fn from_env() -> Settings {
        let n = |name: &str, default: u64| {
            std::env::var(format!("GRACEPOOL_FLEET_{name}"))
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let secs = |name: &str, default: u64| Duration::from_millis(n(name, default * 1000));
        Settings {
            processes: n("PROCESSES", 8).max(1) as usize,
            max_size: n("MAX_SIZE", 8).max(1) as usize,
            headroom: n("HEADROOM", 5) as usize,
            tasks: n("TASKS", 4).max(1) as usize,
            query_ms: n("QUERY_MS", 20),
            caller_timeout: Duration::from_millis(n("CALLER_TIMEOUT_MS", 5000)),
            warm: secs("WARM_MS", 3),
            steady: secs("STEADY_MS", 5),
            step: secs("STEP_MS", 2),
            scale_hold: secs("SCALE_HOLD_MS", 45),
            after_scale: secs("AFTER_SCALE_MS", 6),
        }
    }

    /// The server's `max_connections`.
    pub fn max_connections(&self) -> usize {
        self.processes * self.max_size + self.headroom
    }

    /// The calls a second of `processes` processes each at full speed.
    pub fn target_rate(&self, processes: usize) -> f64 {
        (processes * self.tasks) as f64 * 1000.0 / self.query_ms.max(1) as f64
    }

    fn child_env(&self) -> [(&'static str, String); 5] {
        [
            (
                "GRACEPOOL_FLEET_MIN_IDLE",
                std::env::var("GRACEPOOL_FLEET_MIN_IDLE")
                    .unwrap_or_else(|_| self.max_size.to_string()),
            ),
            ("GRACEPOOL_FLEET_MAX_SIZE", self.max_size.to_string()),
            ("GRACEPOOL_FLEET_TASKS", self.tasks.to_string()),
            ("GRACEPOOL_FLEET_QUERY_MS", self.query_ms.to_string()),
            (
                "GRACEPOOL_FLEET_CALLER_TIMEOUT_MS",
                self.caller_timeout.as_millis().to_string(),
            ),
        ]
    }
}

// ----------------------------------------------------------------------------------------
// The child: one service process.

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

enum Pool {
    Grace(gracepool_postgres::Pool),
    Dead(deadpool_postgres::Pool, Arc<AtomicU64>),
    Bb8(
        bb8::Pool<bb8_postgres::PostgresConnectionManager<NoTls>>,
        Arc<AtomicU64>,
    ),
}

/// Where a call failed, and how.
enum Failure {
    Get(String),
    Query(String),
}

fn short(s: &str) -> String {
    let s = s.trim().replace('\n', " ");
    match s.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

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

impl Pool {
    async fn build(lib: Lib, conn_str: &str, size: usize) -> Pool {
        // `min_idle` where the library has it: `max_size` unless GRACEPOOL_FLEET_MIN_IDLE says.
        let min_idle = std::env::var("GRACEPOOL_FLEET_MIN_IDLE")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(size)
            .min(size);
        match lib {
            Lib::Grace => {
                let manager = gracepool_postgres::Manager::from_conn_str(conn_str)
                    .expect("a valid connection string");
                Pool::Grace(
                    gracepool::Pool::builder(manager)
                        .max_size(size)
                        .min_idle(min_idle)
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
                // deadpool has no min_idle: it makes connections as callers need them.
                Pool::Dead(
                    deadpool_postgres::Pool::builder(manager)
                        .max_size(size)
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
                        .max_size(size as u32)
                        .min_idle(Some(min_idle as u32))
                        .connection_customizer(Box::new(CountNew(made.clone())))
                        .build_unchecked(bb8_postgres::PostgresConnectionManager::new(
                            config, NoTls,
                        )),
                    made,
                )
            }
        }
    }

    /// One call: get, the query, give back. `got` is set once the get is done.
    async fn call(&self, query: &str, got: &AtomicBool) -> Result<(), Failure> {
        let result = match self {
            Pool::Grace(pool) => {
                let conn = pool
                    .get()
                    .await
                    .map_err(|e| Failure::Get(grace_label(&e)))?;
                got.store(true, Relaxed);
                conn.execute(query, &[]).await
            }
            Pool::Dead(pool, _) => {
                let conn = pool.get().await.map_err(|e| {
                    Failure::Get(match e {
                        deadpool_postgres::PoolError::Timeout(kind) => {
                            format!("timeout ({kind:?})")
                        }
                        deadpool_postgres::PoolError::Backend(e) => {
                            format!("backend: {}", pg_label(&e))
                        }
                        other => short(&other.to_string()),
                    })
                })?;
                got.store(true, Relaxed);
                conn.execute(query, &[]).await
            }
            Pool::Bb8(pool, _) => {
                let conn = pool.get().await.map_err(|e| {
                    Failure::Get(match e {
                        bb8::RunError::TimedOut => "timed out (connection_timeout)".into(),
                        bb8::RunError::User(e) => format!("backend: {}", pg_label(&e)),
                    })
                })?;
                got.store(true, Relaxed);
                conn.execute(query, &[]).await
            }
        };
        result.map(drop).map_err(|e| Failure::Query(pg_label(&e)))
    }

    /// Closes the pool the library's way; a line about its connections.
    async fn close(self) -> String {
        match self {
            Pool::Grace(pool) => {
                let report = pool.close().await;
                let c = report.counters;
                format!(
                    "created {} ended {} (graceful {} sync {} failed {} detached {}) \
                     create_failed {}",
                    c.created,
                    c.closed_graceful + c.closed_sync + c.close_failed + c.detached,
                    c.closed_graceful,
                    c.closed_sync,
                    c.close_failed,
                    c.detached,
                    c.create_failed
                )
            }
            Pool::Dead(pool, made) => {
                pool.close();
                format!("created {}", made.load(Relaxed))
            }
            Pool::Bb8(pool, made) => {
                drop(pool);
                format!("created {}", made.load(Relaxed))
            }
        }
    }
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

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    get: AtomicU64,
    query: AtomicU64,
    kinds: Mutex<BTreeMap<String, u64>>,
}

impl Counts {
    fn line(&self) -> String {
        format!(
            "r {} {} {}",
            self.ok.load(Relaxed),
            self.get.load(Relaxed),
            self.query.load(Relaxed)
        )
    }

    fn failed(&self, stage: &str, label: String) {
        let counter = if stage == "get" {
            &self.get
        } else {
            &self.query
        };
        counter.fetch_add(1, Relaxed);
        *self
            .kinds
            .lock()
            .expect("never poisoned")
            .entry(format!("{stage}: {label}"))
            .or_insert(0) += 1;
    }
}

async fn busy_task(
    pool: Arc<Pool>,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    query: Arc<str>,
    caller_timeout: Duration,
) {
    while !stop.load(Relaxed) {
        let got = AtomicBool::new(false);
        match tokio::time::timeout(caller_timeout, pool.call(&query, &got)).await {
            Ok(Ok(())) => {
                counts.ok.fetch_add(1, Relaxed);
                continue;
            }
            Ok(Err(Failure::Get(label))) => counts.failed("get", label),
            Ok(Err(Failure::Query(label))) => counts.failed("query", label),
            Err(_) if got.load(Relaxed) => counts.failed("query", "caller timeout".into()),
            Err(_) => counts.failed("get", "caller timeout".into()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The child role: `args` are `<lib> <id> <connection string>`; the load's settings come
/// from the `GRACEPOOL_FLEET_*` variables the harness sets. Returns when the child is done
/// (after SIGTERM, or when stdin closes).
pub fn child_main(args: &[String]) {
    let [lib, _id, conn_str] = args else {
        panic!("usage: fleet child <grace|dead|bb8> <id> <connection string>");
    };
    let lib = Lib::parse(lib).unwrap_or_else(|| panic!("unknown library {lib:?}"));
    let s = Settings::from_env();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        // The harness gone (its end of our stdin closed) is a SIGTERM too.
        let (gone_tx, mut gone) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
            let _ = gone_tx.send(());
        });
        let pool = Arc::new(Pool::build(lib, conn_str, s.max_size).await);
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let query: Arc<str> = format!("SELECT pg_sleep({})", s.query_ms as f64 / 1000.0).into();
        let tasks: Vec<_> = (0..s.tasks)
            .map(|_| {
                tokio::spawn(busy_task(
                    pool.clone(),
                    counts.clone(),
                    stop.clone(),
                    query.clone(),
                    s.caller_timeout,
                ))
            })
            .collect();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => println!("{}", counts.line()),
                _ = term.recv() => break,
                _ = &mut gone => break,
            }
        }
        let stopping = Instant::now();
        stop.store(true, Relaxed);
        for task in tasks {
            let _ = task.await;
        }
        println!("{}", counts.line());
        for (kind, n) in counts.kinds.lock().expect("never poisoned").iter() {
            println!("e {n} {kind}");
        }
        let pool = Arc::try_unwrap(pool).unwrap_or_else(|_| panic!("the tasks are done"));
        let detail = pool.close().await;
        println!(
            "closed {} ms after SIGTERM: {detail}",
            stopping.elapsed().as_millis()
        );
    });
}

// ----------------------------------------------------------------------------------------
// The harness.

/// What one child's report line said, as the harness received it.
#[derive(Clone, Copy, Debug)]
pub struct Report {
    /// The child's number (in the order the harness started them).
    pub child: usize,
    /// When it arrived, from the run's start, in seconds.
    pub t: f64,
    /// Calls done since the child's previous report.
    pub ok: u64,
    /// Calls whose get failed since then.
    pub get: u64,
    /// Calls whose query failed since then.
    pub query: u64,
}

/// A moment of the scenario, from the run's start, in seconds.
#[derive(Clone, Debug, Default)]
pub struct Phases {
    /// The steady state before the roll: `(from, to)`.
    pub steady: (f64, f64),
    /// Each roll step: SIGTERM sent, the old process gone, its replacement started, and the
    /// replacement's number.
    pub steps: Vec<(f64, f64, f64, usize)>,
    /// The roll's end (the last step's end).
    pub roll_end: f64,
    /// The scale-up (N more processes started at once), if the run had one.
    pub up: Option<f64>,
    /// The scale-down (the N newest processes sent SIGTERM at once).
    pub down: Option<f64>,
    /// The end: every process sent SIGTERM.
    pub end: f64,
}

/// Everything one library's run saw.
#[derive(Debug)]
pub struct Run {
    /// The library.
    pub lib: Lib,
    /// The settings it ran with.
    pub settings: Settings,
    /// The scenario's moments.
    pub phases: Phases,
    /// `(t, client backends of the fleet)`, every 100 ms.
    pub samples: Vec<(f64, usize)>,
    /// The children's reports.
    pub reports: Vec<Report>,
    /// Connection attempts the server logged (`connection received`), at their times.
    pub attempts: Vec<f64>,
    /// Attempts the server refused (`53300`), at their times.
    pub rejected: Vec<f64>,
    /// Sessions begun (`connection authorized`), at their times.
    pub authorized: Vec<f64>,
    /// Sessions that ended without the client's Terminate (`unexpected EOF on client
    /// connection`), at their times.
    pub no_terminate: Vec<f64>,
    /// Error kinds over the whole run, as the children counted them.
    pub error_kinds: BTreeMap<String, u64>,
    /// Each child's close line.
    pub closes: Vec<String>,
    /// Children that exited with a failure status or wrote to stderr: what they said.
    pub child_failures: Vec<String>,
    /// The load average when the run began.
    pub load: String,
}

struct Proc {
    child: Child,
    readers: Vec<std::thread::JoinHandle<()>>,
}

struct Sink {
    epoch: Instant,
    reports: Mutex<Vec<Report>>,
    kinds: Mutex<BTreeMap<String, u64>>,
    closes: Mutex<Vec<String>>,
    failures: Mutex<Vec<String>>,
}

impl Sink {
    fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }
}

fn spawn_child(
    exe: &Path,
    lib: Lib,
    id: usize,
    pg: &PgServer,
    s: &Settings,
    sink: &Arc<Sink>,
) -> Proc {
    let app = format!("fleet-{}-{id}", lib.short());
    let mut child = Command::new(exe)
        .args(["child", lib.short(), &id.to_string(), &pg.conn_str(&app)])
        .envs(s.child_env())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the fleet binary can be run");
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let out_sink = sink.clone();
    let out = std::thread::spawn(move || {
        let mut last = (0u64, 0u64, 0u64);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("r ") {
                let v: Vec<u64> = rest.split(' ').filter_map(|x| x.parse().ok()).collect();
                if let [ok, get, query] = v[..] {
                    let report = Report {
                        child: id,
                        t: out_sink.now(),
                        ok: ok - last.0,
                        get: get - last.1,
                        query: query - last.2,
                    };
                    last = (ok, get, query);
                    out_sink
                        .reports
                        .lock()
                        .expect("never poisoned")
                        .push(report);
                }
            } else if let Some(rest) = line.strip_prefix("e ") {
                if let Some((n, kind)) = rest.split_once(' ') {
                    *out_sink
                        .kinds
                        .lock()
                        .expect("never poisoned")
                        .entry(kind.to_owned())
                        .or_insert(0) += n.parse::<u64>().unwrap_or(0);
                }
            } else if let Some(rest) = line.strip_prefix("closed ") {
                out_sink
                    .closes
                    .lock()
                    .expect("never poisoned")
                    .push(format!("{app}: {rest}"));
            }
        }
    });
    let err_sink = sink.clone();
    let app = format!("fleet-{}-{id}", lib.short());
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut text);
        if !text.trim().is_empty() {
            err_sink
                .failures
                .lock()
                .expect("never poisoned")
                .push(format!("{app} wrote to stderr: {}", text.trim()));
        }
    });
    Proc {
        child,
        readers: vec![out, err],
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

/// Waits for the processes to exit (up to 30 s each, then SIGKILL); notes failures.
fn reap(procs: Vec<Proc>, sink: &Sink) {
    let until = Instant::now() + Duration::from_secs(30);
    for mut p in procs {
        let status = loop {
            if let Some(status) = p.child.try_wait().expect("try_wait works") {
                break Some(status);
            }
            if Instant::now() > until {
                let _ = p.child.kill();
                let _ = p.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        for r in p.readers {
            let _ = r.join();
        }
        match status {
            Some(s) if s.success() => {}
            Some(s) => sink
                .failures
                .lock()
                .expect("never poisoned")
                .push(format!("a child exited with {s}")),
            None => sink
                .failures
                .lock()
                .expect("never poisoned")
                .push("a child did not exit within 30 s of SIGTERM (killed)".into()),
        }
    }
}

fn stop_all(procs: Vec<Proc>, sink: &Sink) {
    for p in &procs {
        signal(p.child.id(), "TERM");
    }
    reap(procs, sink);
}

/// Samples the fleet's client backends every 100 ms until `stop`.
fn monitor(
    conn_str: String,
    epoch: Instant,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<(f64, usize)>> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        rt.block_on(async move {
            let (client, connection) = tokio_postgres::connect(&conn_str, NoTls)
                .await
                .expect("the monitor connects before the fleet starts");
            let driver = tokio::spawn(connection);
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while !stop.load(Relaxed) {
                tick.tick().await;
                let row = client
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity \
                         WHERE backend_type = 'client backend' \
                         AND pid <> pg_backend_pid() AND application_name LIKE 'fleet-%'",
                        &[],
                    )
                    .await
                    .expect("the monitor's query works");
                let n: i64 = row.get(0);
                samples.push((epoch.elapsed().as_secs_f64(), n as usize));
            }
            drop(client);
            let _ = driver.await;
            samples
        })
    })
}

/// Milliseconds since the Unix epoch of a log line's `%m` prefix
/// (`2026-12-07 19:20:01.123 UTC`), with the server's log in UTC.
fn log_millis(line: &str) -> Option<i64> {
    let b = line.as_bytes();
    if b.len() < 23 || b[4] != b'-' || b[10] != b' ' || b[19] != b'.' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| line.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + ms)
}

/// Runs the whole scenario for `lib`: a server of its own, N processes of `exe`'s child role,
/// the roll, the scale-up and down (when `settings.scale_hold` is not zero). Returns `None`
/// (after one `SKIPPED` line) when PostgreSQL is not installed.
pub fn run(exe: &Path, lib: Lib, s: &Settings, test: &str) -> Option<Run> {
    let max_connections = s.max_connections().to_string();
    let pg = PgServer::start_with_settings(
        test,
        &[
            ("max_connections", &max_connections),
            ("log_connections", "on"),
            ("log_timezone", "UTC"),
        ],
    )?;
    let load = loadavg();
    let wall0 = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64;
    let epoch = Instant::now();
    let sink = Arc::new(Sink {
        epoch,
        reports: Mutex::default(),
        kinds: Mutex::default(),
        closes: Mutex::default(),
        failures: Mutex::default(),
    });
    let stop_monitor = Arc::new(AtomicBool::new(false));
    let sampler = monitor(pg.conn_str("fleet-monitor"), epoch, stop_monitor.clone());
    let now = || epoch.elapsed().as_secs_f64();
    let sleep_until = |t: f64| {
        let left = t - now();
        if left > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(left));
        }
    };
    let n = s.processes;
    let mut next_id = 0;
    let mut spawn = || {
        next_id += 1;
        spawn_child(exe, lib, next_id - 1, &pg, s, &sink)
    };
    let mut fleet: Vec<Proc> = (0..n).map(|_| spawn()).collect();
    let mut phases = Phases::default();
    let steady_from = now() + s.warm.as_secs_f64();
    phases.steady = (steady_from, steady_from + s.steady.as_secs_f64());
    sleep_until(phases.steady.1);

    // The roll: the oldest process first, each replaced in place once it has exited.
    for k in 0..n {
        let began = now();
        let old = fleet.remove(k);
        signal(old.child.id(), "TERM");
        reap(vec![old], &sink);
        let gone = now();
        fleet.insert(k, spawn());
        // The first N are numbered 0..N, their replacements N..2N.
        phases.steps.push((began, gone, now(), n + k));
        sleep_until(began + s.step.as_secs_f64());
    }
    phases.roll_end = now();

    if !s.scale_hold.is_zero() {
        sleep_until(phases.roll_end + 2.0);
        let up = now();
        phases.up = Some(up);
        fleet.extend((0..n).map(|_| spawn()));
        sleep_until(up + s.scale_hold.as_secs_f64());
        let down = now();
        phases.down = Some(down);
        let newest = fleet.split_off(n);
        stop_all(newest, &sink);
        sleep_until(down + s.after_scale.as_secs_f64());
    }
    phases.end = now();
    stop_all(fleet, &sink);
    stop_monitor.store(true, Relaxed);
    let samples = sampler.join().expect("the monitor does not panic");
    // Every session of the fleet has ended (and is logged) before the log is read.
    let until = Instant::now() + Duration::from_secs(10);
    while pg.client_backends() > 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));

    let log = pg.log();
    let at = |line: &str| log_millis(line).map(|ms| (ms - wall0) as f64 / 1000.0);
    let (mut attempts, mut rejected, mut authorized, mut no_terminate) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for line in log.lines() {
        let Some(t) = at(line) else { continue };
        if t < 0.0 {
            continue; // the server's start, and the test kit's own set-up
        }
        if line.contains("connection received:") {
            attempts.push(t);
        } else if line.contains("connection authorized:") {
            authorized.push(t);
        } else if line.contains("sorry, too many clients already")
            || line.contains("remaining connection slots are reserved")
        {
            rejected.push(t);
        } else if line.contains("unexpected EOF on client connection") {
            no_terminate.push(t);
        }
    }
    let sink = Arc::try_unwrap(sink).unwrap_or_else(|_| panic!("every reader thread is joined"));
    let mut reports = sink.reports.into_inner().expect("never poisoned");
    reports.sort_by(|a, b| a.t.total_cmp(&b.t));
    Some(Run {
        lib,
        settings: s.clone(),
        phases,
        samples,
        reports,
        attempts,
        rejected,
        authorized,
        no_terminate,
        error_kinds: sink.kinds.into_inner().expect("never poisoned"),
        closes: sink.closes.into_inner().expect("never poisoned"),
        child_failures: sink.failures.into_inner().expect("never poisoned"),
        load,
    })
}

/// The load average, `/proc/loadavg`'s first three fields.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn count_in(times: &[f64], from: f64, to: f64) -> usize {
    times.iter().filter(|&&t| t >= from && t < to).count()
}

impl Run {
    /// Calls done per second between `from` and `to`.
    pub fn rate(&self, from: f64, to: f64) -> f64 {
        let ok: u64 = self
            .reports
            .iter()
            .filter(|r| r.t >= from && r.t < to)
            .map(|r| r.ok)
            .sum();
        ok as f64 / (to - from).max(1e-3)
    }

    /// The fleet's full speed: its rate in the steady state before the roll.
    pub fn full_speed(&self) -> f64 {
        self.rate(self.phases.steady.0, self.phases.steady.1)
    }

    /// Calls whose get failed, and calls whose query failed, between `from` and `to`.
    pub fn errors(&self, from: f64, to: f64) -> (u64, u64) {
        self.reports
            .iter()
            .filter(|r| r.t >= from && r.t < to)
            .fold((0, 0), |(g, q), r| (g + r.get, q + r.query))
    }

    /// The roll: from its first SIGTERM to its end.
    pub fn roll(&self) -> (f64, f64) {
        let start = self.phases.steps.first().map_or(0.0, |s| s.0);
        (start, self.phases.roll_end)
    }

    /// The scale-up and down: from the scale-up to the end (or an empty span).
    pub fn scale(&self) -> (f64, f64) {
        match self.phases.up {
            Some(up) => (up, self.phases.end),
            None => (self.phases.end, self.phases.end),
        }
    }

    /// The most client backends of the fleet sampled between `from` and `to`.
    pub fn peak_connections(&self, from: f64, to: f64) -> usize {
        self.samples
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|&(_, n)| n)
            .max()
            .unwrap_or(0)
    }

    /// The most connection attempts in any one second (sliding by 100 ms) between `from`
    /// and `to`.
    pub fn peak_attempts_per_sec(&self, from: f64, to: f64) -> usize {
        let mut best = 0;
        let mut t = from;
        while t < to {
            best = best.max(count_in(&self.attempts, t, (t + 1.0).min(to)));
            t += 0.1;
        }
        best
    }

    /// Connection attempts, refused ones, sessions without Terminate, and attempts abandoned
    /// before their session began (neither refused nor authorized), between `from` and `to`.
    pub fn server_counts(&self, from: f64, to: f64) -> (usize, usize, usize, usize) {
        let attempts = count_in(&self.attempts, from, to);
        let rejected = count_in(&self.rejected, from, to);
        let authorized = count_in(&self.authorized, from, to);
        (
            attempts,
            rejected,
            count_in(&self.no_terminate, from, to),
            attempts.saturating_sub(rejected + authorized),
        )
    }

    /// From `began` until the start of the first 500 ms window, starting at `from` or later
    /// and before `until`, in which the fleet ran at `share` of `rate` or more.
    pub fn back_at(&self, began: f64, from: f64, until: f64, rate: f64, share: f64) -> Option<f64> {
        let mut t = from;
        while t + 0.5 <= until {
            if self.rate(t, t + 0.5) >= share * rate {
                return Some(t - began);
            }
            t += 0.1;
        }
        None
    }

    /// Calls done per second by child `child` between `from` and `to`.
    pub fn child_rate(&self, child: usize, from: f64, to: f64) -> f64 {
        let ok: u64 = self
            .reports
            .iter()
            .filter(|r| r.child == child && r.t >= from && r.t < to)
            .map(|r| r.ok)
            .sum();
        ok as f64 / (to - from).max(1e-3)
    }

    /// Each roll step's time until the fleet is back at full speed: from the SIGTERM to the
    /// start of the first 500 ms in which the replacement ran at 90 % of a process's share of
    /// the steady state's rate; `None` when not before the next step.
    pub fn roll_recoveries(&self) -> Vec<Option<f64>> {
        let share = self.full_speed() / self.settings.processes as f64;
        let steps = &self.phases.steps;
        steps
            .iter()
            .enumerate()
            .map(|(i, &(began, _, started, child))| {
                let until = steps.get(i + 1).map_or(self.phases.roll_end + 2.0, |s| s.0);
                let mut t = started;
                while t + 0.5 <= until {
                    if self.child_rate(child, t, t + 0.5) >= 0.9 * share {
                        return Some(t - began);
                    }
                    t += 0.1;
                }
                None
            })
            .collect()
    }

    /// The rate of the doubled fleet over its last 5 s, against the steady state's.
    pub fn doubled_ratio(&self) -> Option<f64> {
        let (up, down) = (self.phases.up?, self.phases.down?);
        let from = (down - 5.0).max(up);
        Some(self.rate(from, down) / self.full_speed().max(1e-9))
    }

    /// From the scale-up until the doubled fleet first ran at 1.8× the steady rate (over
    /// 500 ms), if it did.
    pub fn doubled_reached(&self) -> Option<f64> {
        let (up, down) = (self.phases.up?, self.phases.down?);
        self.back_at(up, up, down, self.full_speed(), 1.8)
    }

    /// From the scale-down until the fleet of N was back at full speed.
    pub fn after_down(&self) -> Option<f64> {
        let down = self.phases.down?;
        self.back_at(down, down, self.phases.end, self.full_speed(), 0.9)
    }

    /// Caller errors per second over time: `(t, errors)` per 500 ms bucket.
    pub fn error_series(&self, from: f64, to: f64) -> Vec<(f64, f64)> {
        buckets(from, to, |a, b| {
            let (g, q) = self.errors(a, b);
            (g + q) as f64
        })
    }

    /// Calls done per second over time, per 500 ms bucket.
    pub fn rate_series(&self, from: f64, to: f64) -> Vec<(f64, f64)> {
        buckets(from, to, |a, b| self.rate(a, b) * (b - a))
    }

    /// Connection attempts per second over time, per 500 ms bucket.
    pub fn attempt_series(&self, from: f64, to: f64) -> Vec<(f64, f64)> {
        buckets(from, to, |a, b| count_in(&self.attempts, a, b) as f64)
    }

    /// Refused attempts per second over time, per 500 ms bucket.
    pub fn rejected_series(&self, from: f64, to: f64) -> Vec<(f64, f64)> {
        buckets(from, to, |a, b| count_in(&self.rejected, a, b) as f64)
    }
}

/// `(bucket start, per-second value)` over 500 ms buckets from `from` to `to`, the value
/// being `count(a, b)` scaled to a second.
fn buckets(from: f64, to: f64, count: impl Fn(f64, f64) -> f64) -> Vec<(f64, f64)> {
    const WIDTH: f64 = 0.5;
    let mut out = Vec::new();
    let mut t = from;
    while t + WIDTH <= to + 1e-9 {
        out.push((t, count(t, t + WIDTH) / WIDTH));
        t += WIDTH;
    }
    out
}

fn secs(d: Option<f64>, none: &str) -> String {
    match d {
        Some(d) if d < 1.0 => format!("{:.0} ms", d * 1000.0),
        Some(d) => format!("{d:.2} s"),
        None => none.to_owned(),
    }
}

/// The Markdown table of the runs, one row per library.
pub fn table(runs: &[Run]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| pool | caller errors, roll (get · query) | caller errors, scale up and down (get · query) | peak server connections (roll · 2N) of max_connections | connection attempts (roll · scale) | peak attempts per s | refused attempts, 53300 (roll · scale) | sessions ended without Terminate (roll · scale) | attempts abandoned before login (roll · scale) | back at full speed after a roll step (median · worst) | 2N ÷ N throughput | 2N at 1.8× after | back at full speed after the scale-down |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in runs {
        let (rf, rt) = r.roll();
        let (sf, st) = r.scale();
        let (rg, rq) = r.errors(rf, rt);
        let (sg, sq) = r.errors(sf, st + 1.0);
        let (ra, rr, re, rab) = r.server_counts(rf, rt);
        let (sa, sr, se, sab) = r.server_counts(sf, st + 1.0);
        let mut rec: Vec<f64> = r.roll_recoveries().into_iter().flatten().collect();
        let missed = r.phases.steps.len() - rec.len();
        rec.sort_by(f64::total_cmp);
        let median = rec.get(rec.len() / 2).copied();
        let worst = if missed > 0 {
            format!("{missed} not within the step")
        } else {
            secs(rec.last().copied(), "—")
        };
        let _ = writeln!(
            out,
            "| {} | {rg} · {rq} | {sg} · {sq} | {} · {} of {} | {ra} · {sa} | {} | {rr} · {sr} | {re} · {se} | {rab} · {sab} | {} · {worst} | {} | {} | {} |",
            r.lib.name(),
            r.peak_connections(rf, rt),
            r.peak_connections(sf, r.phases.down.unwrap_or(st)),
            r.settings.max_connections(),
            r.peak_attempts_per_sec(0.0, r.phases.end + 1.0),
            secs(median, "—"),
            r.doubled_ratio().map_or("—".into(), |x| format!(
                "{x:.2}× ({:.0} → {:.0} calls/s)",
                r.full_speed(),
                x * r.full_speed()
            )),
            secs(r.doubled_reached(), "never"),
            secs(r.after_down(), "not within the run"),
        );
    }
    out
}

/// Lines of detail per run: rates, error kinds, the children's closes, failures.
pub fn details(r: &Run) -> String {
    let mut out = String::new();
    let full = r.full_speed();
    let (rf, rt) = r.roll();
    let (sf, st) = r.scale();
    let _ = writeln!(
        out,
        "[{}] load {}; full speed {:.0} calls/s (target {:.0}); roll {:.1}–{:.1} s, scale {:.1}–{:.1} s; roll steps back at: {}",
        r.lib.name(),
        r.load,
        full,
        r.settings.target_rate(r.settings.processes),
        rf,
        rt,
        sf,
        st,
        r.roll_recoveries()
            .iter()
            .map(|d| secs(*d, "—"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (kind, n) in &r.error_kinds {
        let _ = writeln!(out, "    {n} × {kind}");
    }
    let mut close_ms: Vec<u64> = r
        .closes
        .iter()
        .filter_map(|c| c.split_once(": ")?.1.split(' ').next()?.parse().ok())
        .collect();
    close_ms.sort_unstable();
    if let (Some(first), Some(last)) = (close_ms.first(), close_ms.last()) {
        let _ = writeln!(
            out,
            "    SIGTERM → pool closed: {first}–{last} ms, median {} ms ({} processes)",
            close_ms[close_ms.len() / 2],
            close_ms.len()
        );
    }
    let mut closes: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &r.closes {
        let detail = c.split_once(": ").map_or(c.as_str(), |(_, d)| d);
        let detail = detail.split_once(": ").map_or(detail, |(_, d)| d);
        *closes.entry(detail).or_insert(0) += 1;
    }
    for (c, n) in closes {
        let _ = writeln!(out, "    {n} × close: {c}");
    }
    for f in &r.child_failures {
        let _ = writeln!(out, "    FAILURE: {f}");
    }
    out
}
