//! gracepool-postgres, deadpool-postgres 0.14 and bb8-postgres 0.9 on a network that fails:
//! packets dropped, a link gone silent, every connection reset, new connections refused. Each
//! pool runs on a PostgreSQL 15 server of its own (started here, on 127.0.0.1), the three at
//! the same time, the fault applied to the three within milliseconds of each other.
//!
//! ```sh
//! cargo run --release -p gracepool-bench --bin network            # the full run, about 8 min (as root)
//! GRACEPOOL_NET_DROP_SECS=5 GRACEPOOL_NET_AFTER_SECS=5 GRACEPOOL_NET_STALL_SECS=3 \
//!   GRACEPOOL_NET_CASES=drop,reset cargo run --release -p gracepool-bench --bin network
//! ```
//!
//! Every pool: 16 tasks, `max_size` 8, the library's defaults plus a 5 s wait timeout
//! (gracepool's `wait_timeout`, deadpool's `timeouts.wait`, bb8's `connection_timeout`). Each
//! task loops: get, a prepared `SELECT 1` (`prepare_cached` on gracepool-postgres and
//! deadpool-postgres; bb8-postgres has no statement cache, so it prepares on every checkout),
//! give back; each call (get + query) inside its own 30 s `tokio::time::timeout`, as a
//! caller's own timeout would be. After a successful call a task pauses
//! `GRACEPOOL_NET_THINK_MS` (10 ms; 0 for a tight loop): the three pools and their servers
//! share 2 cores, and unpaced they would fight for them, so that a pool's "full speed" would
//! say more about the scheduler than about the pool. After a failed call a task pauses 100 ms
//! before the next, as a retry loop would (otherwise a pool that fails at once would count
//! thousands of errors).
//!
//! Two rows per library. "defaults": gracepool-postgres through `ConnectOptions::parse`,
//! which adds its network defaults (connect timeout 10 s, keepalives after 30 s idle then every
//! 10 s × 3, `tcp_user_timeout` 60 s); the peers from a `tokio_postgres::Config` parsed from the
//! same string, which sets none of them (keepalives after 2 h, no user timeout, no connect
//! timeout). "same TCP": the three given [`SAME_TCP`] in the string. tokio-postgres reads
//! `tcp_user_timeout` in seconds (libpq in milliseconds), so it is written `5` there, and
//! set to 5 s on each parsed configuration as well, so that the rows hold the same bound
//! whichever unit a parser reads; each pool's effective TCP settings are printed.
//!
//! Cases (`GRACEPOOL_NET_CASES`, any of `drop,stall,reset,refuse`):
//! - **drop**: every packet to and from the server's port dropped (nftables, as root; a fault
//!   proxy in `Blackhole` when nft is not available, and the output says so) for
//!   `GRACEPOOL_NET_DROP_SECS` (60), then healed, then `GRACEPOOL_NET_AFTER_SECS` (30) more.
//! - **stall**: the proxy goes `Blackhole` and stays so; after `GRACEPOOL_NET_STALL_SECS` (10)
//!   the tasks stop starting calls and the pool is closed (gracepool `close().await`, deadpool
//!   `close()`, bb8 the drop of the bench's handle; the tasks' clones keep a bb8 pool alive
//!   until their calls end).
//! - **reset**: the proxy resets every connection (`ResetAll`), then passes again at once.
//! - **refuse**: `ResetAll`, then `RefuseNew` for `GRACEPOOL_NET_REFUSE_SECS` (5), then `Pass`.
//!
//! Each case begins with a warm-up of 1 s and a baseline of `GRACEPOOL_NET_BASELINE_SECS` (5),
//! whose rate of successful calls is the pool's "full speed"; "heal → full speed" is the start
//! of the first 1 s window after the heal with at least 80 % of that rate (no earlier than the
//! first success). "Stuck after the heal" counts calls begun before the heal and not done
//! `GRACEPOOL_NET_AFTER_SECS` after it, and calls begun after it that ran into the caller's
//! timeout. `GRACEPOOL_NET_SETTINGS` picks the rows (`defaults,same-tcp`). Nothing here
//! asserts a timing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gracepool_testkit::fault::{FaultProxy, Mode};
use gracepool_testkit::netfilter::{self, PacketDrop};
use gracepool_testkit::postgres::{PgServer, USER};
use tokio_postgres::NoTls;

const TASKS: usize = 16;
const SIZE: usize = 8;
const SQL: &str = "SELECT 1";
/// Every pool's wait for a connection.
const WAIT_TIMEOUT: Duration = Duration::from_secs(5);
/// The caller's own bound on one call (get + query).
const CALLER_TIMEOUT: Duration = Duration::from_secs(30);
/// A task's pause after a failed call.
const ERROR_PAUSE: Duration = Duration::from_millis(100);
const WARM_UP: Duration = Duration::from_secs(1);
/// How long a close may take before the bench gives up on it (and says so).
const CLOSE_PATIENCE: Duration = Duration::from_secs(60);
/// "Full speed": this share of the baseline rate, over a window of `SPEED_WINDOW`.
const FULL_SPEED: f64 = 0.8;
const SPEED_WINDOW: Duration = Duration::from_secs(1);
const BUCKET: Duration = Duration::from_millis(100);
/// The TCP settings given to all three in the "same TCP" rows (tokio-postgres' units: seconds).
const SAME_TCP: &str =
    "connect_timeout=5 keepalives_idle=5 keepalives_interval=2 keepalives_retries=2 tcp_user_timeout=5";

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

const LIBS: [Lib; 3] = [Lib::Grace, Lib::Dead, Lib::Bb8];

impl Lib {
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

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Setting {
    Defaults,
    SameTcp,
}

impl Setting {
    fn label(self) -> &'static str {
        match self {
            Setting::Defaults => "defaults",
            Setting::SameTcp => "same TCP",
        }
    }

    fn user_timeout(self) -> Option<Duration> {
        match self {
            Setting::Defaults => None,
            Setting::SameTcp => Some(Duration::from_secs(5)),
        }
    }

    fn extra(self) -> &'static str {
        match self {
            Setting::Defaults => "",
            Setting::SameTcp => SAME_TCP,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord)]
enum Case {
    Drop,
    Stall,
    Reset,
    Refuse,
}

impl Case {
    fn parse(s: &str) -> Option<Case> {
        match s {
            "drop" => Some(Case::Drop),
            "stall" => Some(Case::Stall),
            "reset" => Some(Case::Reset),
            "refuse" => Some(Case::Refuse),
            _ => None,
        }
    }

    fn key(self) -> &'static str {
        match self {
            Case::Drop => "drop",
            Case::Stall => "stall",
            Case::Reset => "reset",
            Case::Refuse => "refuse",
        }
    }
}

/// The run's durations, from the environment.
#[derive(Clone, Copy, Debug)]
struct Durations {
    baseline: Duration,
    drop: Duration,
    after: Duration,
    stall: Duration,
    refuse: Duration,
    /// A task's pause after a successful call.
    think: Duration,
}

/// The three pools, behind one call.
enum Pool {
    Grace(gracepool_postgres::Pool),
    Dead(deadpool_postgres::Pool),
    Bb8(bb8::Pool<bb8_postgres::PostgresConnectionManager<NoTls>>),
}

/// How long a call's get took (in nanoseconds, 0 while it is running), from its start.
struct Got {
    start: Instant,
    nanos: AtomicU64,
}

impl Got {
    fn set(&self) {
        let nanos = self.start.elapsed().as_nanos().max(1);
        self.nanos
            .store(u64::try_from(nanos).unwrap_or(u64::MAX), Relaxed);
    }

    fn get(&self) -> Option<Duration> {
        match self.nanos.load(Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n)),
        }
    }
}

/// Why a call failed.
enum Failure {
    Get(String),
    Query(String),
}

fn short(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(90) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

fn query_failure(e: tokio_postgres::Error) -> Failure {
    Failure::Query(short(&e.to_string()))
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
        gracepool::Error::Backend(e) => format!("backend: {}", short(&e.to_string())),
        gracepool::Error::Permanent(e) => format!("permanent: {}", short(&e.to_string())),
        gracepool::Error::ManagerTimeout { stage, limit } => {
            format!("manager timeout: {stage:?} after {limit:?}")
        }
        other => short(&other.to_string()),
    }
}

fn dead_label(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Timeout(kind) => format!("timeout ({kind:?})"),
        deadpool_postgres::PoolError::Backend(e) => format!("backend: {}", short(&e.to_string())),
        deadpool_postgres::PoolError::Closed => "closed".into(),
        other => short(&other.to_string()),
    }
}

fn bb8_label(e: &bb8::RunError<tokio_postgres::Error>) -> String {
    match e {
        bb8::RunError::TimedOut => "timed out (connection_timeout)".into(),
        bb8::RunError::User(e) => format!("backend: {}", short(&e.to_string())),
    }
}

impl Pool {
    /// The pool for `lib`, with `user_timeout` forced on its configuration when given (so
    /// that the "same TCP" rows hold the same value whichever unit a parser reads).
    async fn build(lib: Lib, conn_str: &str, user_timeout: Option<Duration>) -> Pool {
        let peer_config = || {
            let mut config: tokio_postgres::Config =
                conn_str.parse().expect("a valid connection string");
            if let Some(t) = user_timeout {
                config.tcp_user_timeout(t);
            }
            print_tcp(lib, &config);
            config
        };
        match lib {
            Lib::Grace => {
                let mut options = gracepool_postgres::ConnectOptions::parse(conn_str)
                    .expect("a valid connection string");
                if let Some(t) = user_timeout {
                    options.config_mut().tcp_user_timeout(t);
                }
                print_tcp(lib, options.config());
                let manager = options.manager().expect("no TLS asked for");
                Pool::Grace(
                    gracepool::Pool::builder(manager)
                        .max_size(SIZE)
                        .wait_timeout(WAIT_TIMEOUT)
                        .runtime(gracepool_tokio::TokioRuntime::current())
                        .build()
                        .expect("a valid configuration"),
                )
            }
            Lib::Dead => {
                let config = peer_config();
                let manager = deadpool_postgres::Manager::from_config(
                    config,
                    NoTls,
                    deadpool_postgres::ManagerConfig::default(),
                );
                Pool::Dead(
                    deadpool_postgres::Pool::builder(manager)
                        .max_size(SIZE)
                        .wait_timeout(Some(WAIT_TIMEOUT))
                        .runtime(deadpool_postgres::Runtime::Tokio1)
                        .build()
                        .expect("a valid configuration"),
                )
            }
            Lib::Bb8 => {
                let config = peer_config();
                Pool::Bb8(
                    bb8::Pool::builder()
                        .max_size(SIZE as u32)
                        .connection_timeout(WAIT_TIMEOUT)
                        .build(bb8_postgres::PostgresConnectionManager::new(config, NoTls))
                        .await
                        .expect("bb8 builds (no connection is made up front)"),
                )
            }
        }
    }

    /// One call: get, the prepared `SELECT 1`, give back. `got` is set to the get's duration
    /// once it is done, so that a caller's timeout can tell where it struck.
    async fn call(&self, got: &Got) -> Result<(), Failure> {
        let value: i32 = match self {
            Pool::Grace(pool) => {
                let conn = pool
                    .get()
                    .await
                    .map_err(|e| Failure::Get(grace_label(&e)))?;
                got.set();
                let stmt = conn.prepare_cached(SQL).await.map_err(query_failure)?;
                conn.query_one(&stmt, &[])
                    .await
                    .map_err(query_failure)?
                    .get(0)
            }
            Pool::Dead(pool) => {
                let conn = pool.get().await.map_err(|e| Failure::Get(dead_label(&e)))?;
                got.set();
                let stmt = conn.prepare_cached(SQL).await.map_err(query_failure)?;
                conn.query_one(&stmt, &[])
                    .await
                    .map_err(query_failure)?
                    .get(0)
            }
            Pool::Bb8(pool) => {
                let conn = pool.get().await.map_err(|e| Failure::Get(bb8_label(&e)))?;
                got.set();
                let stmt = conn.prepare(SQL).await.map_err(query_failure)?;
                conn.query_one(&stmt, &[])
                    .await
                    .map_err(query_failure)?
                    .get(0)
            }
        };
        assert_eq!(value, 1);
        Ok(())
    }
}

#[derive(Clone, Debug)]
enum Outcome {
    Ok,
    Get(String),
    Query(String),
    /// The caller's 30 s timeout; `in_query` when the get had finished.
    Timeout {
        in_query: bool,
    },
    /// Still running when the bench stopped waiting for it.
    Unfinished,
}

/// One call, its times from the case's epoch.
#[derive(Clone, Debug)]
struct Call {
    start: Duration,
    end: Duration,
    /// How long its get took (the whole call when the get failed or was cut short).
    get: Duration,
    outcome: Outcome,
}

impl Call {
    fn dur(&self) -> Duration {
        self.end - self.start
    }
}

/// A task's calls, and the start of the one under way.
#[derive(Default)]
struct TaskLog {
    calls: Vec<Call>,
    current: Option<Duration>,
}

async fn run_task(
    pool: Arc<Pool>,
    epoch: Instant,
    think: Duration,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<TaskLog>>,
) {
    while !stop.load(Relaxed) {
        let got = Got {
            start: Instant::now(),
            nanos: AtomicU64::new(0),
        };
        let start = got.start - epoch;
        log.lock().expect("never poisoned").current = Some(start);
        let result = tokio::time::timeout(CALLER_TIMEOUT, pool.call(&got)).await;
        let end = epoch.elapsed();
        let get = got.get().unwrap_or(end - start);
        let outcome = match result {
            Ok(Ok(())) => Outcome::Ok,
            Ok(Err(Failure::Get(e))) => Outcome::Get(e),
            Ok(Err(Failure::Query(e))) => Outcome::Query(e),
            Err(_) => Outcome::Timeout {
                in_query: got.get().is_some(),
            },
        };
        let failed = !matches!(outcome, Outcome::Ok);
        {
            let mut log = log.lock().expect("never poisoned");
            log.current = None;
            log.calls.push(Call {
                start,
                end,
                get,
                outcome,
            });
        }
        if failed {
            tokio::time::sleep(ERROR_PAUSE).await;
        } else if !think.is_zero() {
            tokio::time::sleep(think).await;
        }
    }
}

/// One pool in one case: its server, its proxy (none when packets are dropped at the
/// server's port), its tasks.
struct Slot {
    lib: Lib,
    server: PgServer,
    proxy: Option<FaultProxy>,
    pool: Option<Arc<Pool>>,
    logs: Vec<Arc<Mutex<TaskLog>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    fault_at: Duration,
    heal_at: Duration,
    drop_guard: Option<PacketDrop>,
    closed: Option<Closed>,
}

/// How a pool's close went.
#[derive(Debug, Clone)]
struct Closed {
    at: Duration,
    took: Duration,
    report: Option<String>,
}

impl Slot {
    fn set_mode(&self, mode: Mode) {
        self.proxy
            .as_ref()
            .expect("a case with a proxy")
            .set_mode(mode);
    }
}

/// What was seen of one pool in one case.
struct Measured {
    row: String,
    baseline_qps: f64,
    ok: u64,
    /// Label → (count, count ending after the heal).
    errors: BTreeMap<String, (u64, u64)>,
    get_err: (u64, u64),
    query_err: (u64, u64),
    timeouts: (u64, u64),
    timeouts_in_query: u64,
    unfinished: u64,
    longest: Duration,
    longest_get: Duration,
    /// The last failed call that ended after the heal, from the heal.
    last_error: Option<Duration>,
    stuck: u64,
    /// The last call in flight at the heal ended this long after it.
    preheal_done: Option<Duration>,
    first_ok: Option<Duration>,
    full_speed: Option<Duration>,
    /// Successful calls in the last 10 s of the window, per second, over the baseline rate.
    tail_ratio: Option<f64>,
    /// Stall only: calls in flight at the close, and when the last call ended after it.
    at_close: u64,
    last_after_close: Option<Duration>,
    closed: Option<Closed>,
    fault_len: Duration,
}

fn measure(
    slot: &Slot,
    setting: Setting,
    case: Case,
    base_from: Duration,
    d: &Durations,
    stopped_at: Duration,
) -> Measured {
    let mut calls = Vec::new();
    for log in &slot.logs {
        let log = log.lock().expect("never poisoned");
        calls.extend(log.calls.iter().cloned());
        if let Some(start) = log.current {
            calls.push(Call {
                start,
                end: stopped_at,
                get: stopped_at - start,
                outcome: Outcome::Unfinished,
            });
        }
    }
    let (f, h) = (slot.fault_at, slot.heal_at);
    let window_end = h + d.after;
    let base_len = (f - base_from).as_secs_f64();
    let baseline_ok = calls
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Ok) && c.end >= base_from && c.end < f)
        .count();
    let baseline_qps = baseline_ok as f64 / base_len;
    let mut m = Measured {
        row: format!("{}, {}", slot.lib.name(), setting.label()),
        baseline_qps,
        ok: 0,
        errors: BTreeMap::new(),
        get_err: (0, 0),
        query_err: (0, 0),
        timeouts: (0, 0),
        timeouts_in_query: 0,
        unfinished: 0,
        longest: Duration::ZERO,
        longest_get: Duration::ZERO,
        last_error: None,
        stuck: 0,
        preheal_done: None,
        first_ok: None,
        full_speed: None,
        tail_ratio: None,
        at_close: 0,
        last_after_close: None,
        closed: slot.closed.clone(),
        fault_len: h.saturating_sub(f),
    };
    let healed = case != Case::Stall;
    for c in &calls {
        let after = u64::from(healed && c.end >= h);
        m.longest = m.longest.max(c.dur());
        m.longest_get = m.longest_get.max(c.get);
        if healed && c.end >= h && !matches!(c.outcome, Outcome::Ok) {
            m.last_error = m.last_error.max(Some(c.end - h));
        }
        let mut count = |slot: &mut (u64, u64), label: String| {
            slot.0 += 1;
            slot.1 += after;
            let e = m.errors.entry(label).or_default();
            e.0 += 1;
            e.1 += after;
        };
        match &c.outcome {
            Outcome::Ok => m.ok += 1,
            Outcome::Get(e) => count(&mut m.get_err, format!("get: {e}")),
            Outcome::Query(e) => count(&mut m.query_err, format!("query: {e}")),
            Outcome::Timeout { in_query } => {
                let label = if *in_query {
                    "caller timeout, in the query"
                } else {
                    "caller timeout, in get"
                };
                count(&mut m.timeouts, label.to_owned());
                m.timeouts_in_query += u64::from(*in_query);
            }
            Outcome::Unfinished => {
                m.unfinished += 1;
                count(&mut m.timeouts, "unfinished when the bench stopped".into());
            }
        }
    }
    if healed {
        m.stuck = calls
            .iter()
            .filter(|c| {
                (c.start < h && (c.end > h + d.after || matches!(c.outcome, Outcome::Unfinished)))
                    || (c.start >= h
                        && matches!(c.outcome, Outcome::Timeout { .. } | Outcome::Unfinished))
            })
            .count() as u64;
        m.preheal_done = calls
            .iter()
            .filter(|c| c.start < h && c.end > h)
            .map(|c| c.end - h)
            .max();
        m.first_ok = calls
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Ok) && c.end >= h)
            .map(|c| c.end - h)
            .min();
        // Successful calls per bucket after the heal, up to the end of the window.
        let n = (d.after.as_nanos() / BUCKET.as_nanos()) as usize;
        let mut buckets = vec![0u64; n];
        for c in &calls {
            if matches!(c.outcome, Outcome::Ok) && c.end >= h && c.end < window_end {
                let i = ((c.end - h).as_nanos() / BUCKET.as_nanos()) as usize;
                if i < n {
                    buckets[i] += 1;
                }
            }
        }
        let per_window = (SPEED_WINDOW.as_nanos() / BUCKET.as_nanos()) as usize;
        let target = FULL_SPEED * baseline_qps * SPEED_WINDOW.as_secs_f64();
        if baseline_qps > 0.0 && n >= per_window {
            m.full_speed = (0..=n - per_window)
                .find(|&i| buckets[i..i + per_window].iter().sum::<u64>() as f64 >= target)
                .map(|i| (BUCKET * i as u32).max(m.first_ok.unwrap_or_default()));
        }
        let tail = d.after.min(Duration::from_secs(10));
        if baseline_qps > 0.0 && !tail.is_zero() {
            let from = window_end - tail;
            let ok = calls
                .iter()
                .filter(|c| matches!(c.outcome, Outcome::Ok) && c.end >= from && c.end < window_end)
                .count();
            m.tail_ratio = Some(ok as f64 / tail.as_secs_f64() / baseline_qps);
        }
    } else if let Some(closed) = &slot.closed {
        let c_at = closed.at;
        let in_flight: Vec<&Call> = calls
            .iter()
            .filter(|c| c.start < c_at && c.end > c_at)
            .collect();
        m.at_close = in_flight.len() as u64;
        m.last_after_close = calls
            .iter()
            .filter(|c| c.end > c_at)
            .map(|c| c.end - c_at)
            .max();
    }
    m
}

/// The TCP bounds a pool's connections are made with, as its parser read them.
fn print_tcp(lib: Lib, c: &tokio_postgres::Config) {
    println!(
        "  {}: connect_timeout {:?}, keepalives idle {:?} interval {:?} retries {:?}, tcp_user_timeout {:?}",
        lib.name(),
        c.get_connect_timeout(),
        c.get_keepalives_idle(),
        c.get_keepalives_interval(),
        c.get_keepalives_retries(),
        c.get_tcp_user_timeout()
    );
}

fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

fn opt_secs(d: Option<Duration>, none: &str) -> String {
    d.map_or_else(|| none.to_owned(), secs)
}

fn pair(p: (u64, u64)) -> String {
    format!("{} ({})", p.0, p.1)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn conn_str(port: u16, app: &str, extra: &str) -> String {
    format!("host=127.0.0.1 port={port} user={USER} dbname=postgres application_name={app} {extra}")
}

/// Starts one server per library, at once (each `initdb` takes a few seconds).
fn start_servers(case: Case) -> Option<Vec<PgServer>> {
    let servers: Vec<Option<PgServer>> = std::thread::scope(|s| {
        let starts: Vec<_> = LIBS
            .iter()
            .map(|lib| {
                let name = format!("gracepool-bench network {} {}", case.key(), lib.short());
                s.spawn(move || PgServer::start(&name))
            })
            .collect();
        starts
            .into_iter()
            .map(|t| t.join().expect("a server start does not panic"))
            .collect()
    });
    servers.into_iter().collect()
}

/// Runs one case for the three libraries at once, with one setting.
fn run_case(
    rt: &tokio::runtime::Runtime,
    setting: Setting,
    case: Case,
    d: &Durations,
    use_nft: bool,
) -> Option<Vec<Measured>> {
    let servers = start_servers(case)?;
    let load_before = loadavg();
    let mut slots: Vec<Slot> = LIBS
        .iter()
        .zip(servers)
        .map(|(&lib, server)| {
            let proxy = if case == Case::Drop && use_nft {
                None
            } else {
                Some(FaultProxy::start(server.port()).expect("a free port on 127.0.0.1"))
            };
            Slot {
                lib,
                server,
                proxy,
                pool: None,
                logs: Vec::new(),
                tasks: Vec::new(),
                fault_at: Duration::ZERO,
                heal_at: Duration::ZERO,
                drop_guard: None,
                closed: None,
            }
        })
        .collect();
    let measured = rt.block_on(async {
        let epoch = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        for slot in &mut slots {
            let port = slot
                .proxy
                .as_ref()
                .map_or(slot.server.port(), FaultProxy::port);
            let app = format!("net-{}-{}", case.key(), slot.lib.short());
            let conn_str = conn_str(port, &app, setting.extra());
            let pool = Arc::new(Pool::build(slot.lib, &conn_str, setting.user_timeout()).await);
            for _ in 0..TASKS {
                let log = Arc::new(Mutex::new(TaskLog::default()));
                slot.logs.push(log.clone());
                slot.tasks.push(tokio::spawn(run_task(
                    pool.clone(),
                    epoch,
                    d.think,
                    stop.clone(),
                    log,
                )));
            }
            slot.pool = Some(pool);
        }
        tokio::time::sleep(WARM_UP).await;
        let base_from = epoch.elapsed();
        tokio::time::sleep(d.baseline).await;

        // The fault, one pool after the other (each within milliseconds), each timed.
        // Blocking calls (nft, the proxy's ResetAll) block this thread only, not the workers.
        match case {
            Case::Drop => {
                for slot in &mut slots {
                    slot.fault_at = epoch.elapsed();
                    if use_nft {
                        slot.drop_guard = Some(
                            PacketDrop::start("gracepool-bench network", slot.server.port())
                                .expect("nft was available a moment ago"),
                        );
                    } else {
                        slot.set_mode(Mode::Blackhole);
                    }
                }
                tokio::time::sleep(d.drop).await;
                for slot in &mut slots {
                    match slot.drop_guard.take() {
                        Some(guard) => guard.heal(),
                        None => slot.set_mode(Mode::Pass),
                    }
                    slot.heal_at = epoch.elapsed();
                }
            }
            Case::Reset => {
                for slot in &mut slots {
                    slot.fault_at = epoch.elapsed();
                    slot.set_mode(Mode::ResetAll);
                    slot.set_mode(Mode::Pass);
                    slot.heal_at = epoch.elapsed();
                }
            }
            Case::Refuse => {
                for slot in &mut slots {
                    slot.fault_at = epoch.elapsed();
                    slot.set_mode(Mode::ResetAll);
                    slot.set_mode(Mode::RefuseNew);
                }
                tokio::time::sleep(d.refuse).await;
                for slot in &mut slots {
                    slot.set_mode(Mode::Pass);
                    slot.heal_at = epoch.elapsed();
                }
            }
            Case::Stall => {
                for slot in &mut slots {
                    slot.fault_at = epoch.elapsed();
                    slot.set_mode(Mode::Blackhole);
                }
                tokio::time::sleep(d.stall).await;
                stop.store(true, Relaxed);
                let closes = close_all(&mut slots, epoch).await;
                for (slot, closed) in slots.iter_mut().zip(closes) {
                    slot.heal_at = closed.at;
                    slot.closed = Some(closed);
                }
            }
        }
        if case != Case::Stall {
            tokio::time::sleep(d.after).await;
        }
        stop.store(true, Relaxed);
        // Every call ends within the caller's timeout: wait that long, and a little more.
        let deadline = tokio::time::Instant::now() + CALLER_TIMEOUT + Duration::from_secs(15);
        for slot in &mut slots {
            for task in &mut slot.tasks {
                if tokio::time::timeout_at(deadline, &mut *task).await.is_err() {
                    task.abort();
                }
            }
        }
        let stopped_at = epoch.elapsed();
        if case != Case::Stall {
            let closes = close_all(&mut slots, epoch).await;
            for (slot, closed) in slots.iter_mut().zip(closes) {
                slot.closed = Some(closed);
            }
        }
        slots
            .iter()
            .map(|slot| measure(slot, setting, case, base_from, d, stopped_at))
            .collect::<Vec<_>>()
    });
    let load_after = loadavg();
    println!(
        "[{} / {}] load {load_before} → {load_after}",
        case.key(),
        setting.label()
    );
    for m in &measured {
        print_details(m);
    }
    // Proxies and servers go here, outside the runtime (their drops block).
    drop(slots);
    Some(measured)
}

/// Closes the three pools at once, each its own way, each timed.
async fn close_all(slots: &mut [Slot], epoch: Instant) -> Vec<Closed> {
    let closes: Vec<_> = slots
        .iter_mut()
        .map(|slot| {
            let pool = slot.pool.take().expect("the pool is closed once");
            tokio::spawn(async move {
                let at = epoch.elapsed();
                let started = Instant::now();
                let report = match &*pool {
                    Pool::Grace(p) => {
                        let report = tokio::time::timeout(CLOSE_PATIENCE, p.close()).await;
                        Some(match report {
                            Ok(r) => format!(
                                "CloseReport: elapsed {}, created {}, closed graceful {}, closed sync {}, checked out {}, fallback {}, still open {}",
                                secs(r.elapsed),
                                r.counters.created,
                                r.counters.closed_graceful,
                                r.counters.closed_sync,
                                r.checked_out,
                                r.fallback,
                                r.still_open()
                            ),
                            Err(_) => format!("close() did not return within {CLOSE_PATIENCE:?}"),
                        })
                    }
                    Pool::Dead(p) => {
                        p.close();
                        None
                    }
                    // bb8 has no close: the bench drops its handle (below).
                    Pool::Bb8(_) => None,
                };
                drop(pool);
                Closed {
                    at,
                    took: started.elapsed(),
                    report,
                }
            })
        })
        .collect();
    let mut out = Vec::new();
    for close in closes {
        out.push(close.await.expect("a close does not panic"));
    }
    out
}

fn print_details(m: &Measured) {
    println!(
        "  {}: {} ok, baseline {:.0}/s, longest call {}, longest get {}, last error {} after the heal",
        m.row,
        m.ok,
        m.baseline_qps,
        secs(m.longest),
        secs(m.longest_get),
        opt_secs(m.last_error, "—")
    );
    for (label, (n, after)) in &m.errors {
        println!("    {n} × {label} ({after} after the heal)");
    }
    if let Some(closed) = &m.closed {
        println!(
            "    close: {}{}",
            secs(closed.took),
            closed
                .report
                .as_ref()
                .map(|r| format!("; {r}"))
                .unwrap_or_default()
        );
    }
}

fn healed_table(out: &mut String, title: &str, rows: &[Measured], d: &Durations) {
    let after = secs(d.after);
    let _ = writeln!(out, "\n### {title}\n");
    let _ = writeln!(
        out,
        "| pool | baseline calls/s | get errors | query errors | caller timeouts | longest get() | longest call | stuck {after} after heal | calls in flight at heal ended by | heal → first OK | heal → full speed | last 10 s ÷ baseline |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for m in rows {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            m.row,
            m.baseline_qps,
            pair(m.get_err),
            pair(m.query_err),
            pair(m.timeouts),
            secs(m.longest_get),
            secs(m.longest),
            m.stuck,
            opt_secs(m.preheal_done, "none in flight"),
            opt_secs(m.first_ok, "none"),
            opt_secs(m.full_speed, &format!("not within {after}")),
            m.tail_ratio
                .map_or_else(|| "—".to_owned(), |r| format!("{r:.2}")),
        );
    }
}

fn stall_table(out: &mut String, rows: &[Measured], d: &Durations) {
    let _ = writeln!(
        out,
        "\n### Stall: silent from a point on, closed after {}\n",
        secs(d.stall)
    );
    let _ = writeln!(
        out,
        "| pool | get errors | query errors | caller timeouts (in query) | longest get() | longest call | close took | calls in flight at close | last call ended after close | close report |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    for m in rows {
        let closed = m.closed.as_ref();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} ({}) | {} | {} | {} | {} | {} | {} |",
            m.row,
            m.get_err.0,
            m.query_err.0,
            m.timeouts.0,
            m.timeouts_in_query,
            secs(m.longest_get),
            secs(m.longest),
            closed.map_or_else(|| "—".to_owned(), |c| secs(c.took)),
            m.at_close,
            opt_secs(m.last_after_close, "—"),
            closed
                .and_then(|c| c.report.clone())
                .unwrap_or_else(|| "—".to_owned()),
        );
    }
}

fn main() {
    let d = Durations {
        baseline: Duration::from_secs(env_or("GRACEPOOL_NET_BASELINE_SECS", 5).max(1)),
        drop: Duration::from_secs(env_or("GRACEPOOL_NET_DROP_SECS", 60)),
        after: Duration::from_secs(env_or("GRACEPOOL_NET_AFTER_SECS", 30)),
        stall: Duration::from_secs(env_or("GRACEPOOL_NET_STALL_SECS", 10)),
        refuse: Duration::from_secs(env_or("GRACEPOOL_NET_REFUSE_SECS", 5)),
        think: Duration::from_millis(env_or("GRACEPOOL_NET_THINK_MS", 10)),
    };
    let cases: Vec<Case> = env_list("GRACEPOOL_NET_CASES", "drop,stall,reset,refuse")
        .iter()
        .map(|c| Case::parse(c).unwrap_or_else(|| panic!("unknown case {c:?}")))
        .collect();
    let settings: Vec<Setting> = env_list("GRACEPOOL_NET_SETTINGS", "defaults,same-tcp")
        .iter()
        .map(|s| match s.as_str() {
            "defaults" => Setting::Defaults,
            "same-tcp" => Setting::SameTcp,
            other => panic!("unknown setting {other:?}"),
        })
        .collect();
    let use_nft = !cases.contains(&Case::Drop) || netfilter::available("gracepool-bench network");
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
        "{TASKS} tasks per pool, max {SIZE}, wait timeout {WAIT_TIMEOUT:?}, caller timeout {CALLER_TIMEOUT:?}; {d:?}; packet drop by {}",
        if use_nft {
            "nftables"
        } else {
            "the fault proxy's Blackhole (nft unavailable)"
        }
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let started = Instant::now();
    let mut results: BTreeMap<Case, Vec<Measured>> = BTreeMap::new();
    for &setting in &settings {
        for &case in &cases {
            let Some(rows) = run_case(&rt, setting, case, &d, use_nft) else {
                return;
            };
            results.entry(case).or_default().extend(rows);
        }
    }
    // Rows by library, then setting.
    for rows in results.values_mut() {
        rows.sort_by_key(|m| {
            LIBS.iter()
                .position(|l| m.row.starts_with(l.name()))
                .unwrap_or(0)
        });
    }
    let mut out = String::new();
    for (case, rows) in &results {
        match case {
            Case::Drop => healed_table(
                &mut out,
                &format!(
                    "Packet drop ({}) for {}, then healed",
                    if use_nft {
                        "nftables on the server's port"
                    } else {
                        "proxy Blackhole"
                    },
                    secs(rows.first().map_or(d.drop, |m| m.fault_len))
                ),
                rows,
                &d,
            ),
            Case::Stall => stall_table(&mut out, rows, &d),
            Case::Reset => healed_table(
                &mut out,
                "Reset: every connection reset at once, then Pass",
                rows,
                &d,
            ),
            Case::Refuse => healed_table(
                &mut out,
                &format!(
                    "Refuse: every connection reset, new ones refused for {}, then Pass",
                    secs(d.refuse)
                ),
                rows,
                &d,
            ),
        }
    }
    println!("{out}");
    println!(
        "Counts are all calls (those ending after the heal in brackets). Whole run: {}; load {}",
        secs(started.elapsed()),
        loadavg()
    );
}
