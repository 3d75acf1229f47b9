//! gracepool-diesel beside deadpool-diesel 0.6 (whose `interact` runs each call on tokio's
//! blocking pool), both on diesel 2.2's `PgConnection`, on a real PostgreSQL 15 server started
//! here (127.0.0.1, stopped at the end). N tasks (8, then 32) share 8 connections; each checks
//! one out, runs `SELECT 1` through `interact` and gives it back, in a loop.
//!
//! ```sh
//! cargo run --release -p gracepool-bench --bin diesel              # throughput
//! cargo run --release -p gracepool-bench --bin diesel -- teardown  # the teardown table
//! ```
//!
//! Rounds are interleaved (a round of each pool in turn, each round starting one pool further
//! on), `GRACEPOOL_DIESEL_BENCH_ROUNDS` (5) of `GRACEPOOL_DIESEL_BENCH_ROUND_MS` (1000) each,
//! on a tokio multi-thread runtime with 2 workers. Each pool as its users get it by default:
//! deadpool-diesel's `RecyclingMethod::Fast` makes one trip to the blocking pool per checkout
//! (it asks whether the transaction manager is broken), gracepool-diesel checks only a
//! connection idle for a second or more. Two more rows give both the same work per checkout:
//! gracepool-diesel with `check_after_idle(Duration::ZERO)` (a `SELECT 1` on every checkout)
//! and deadpool-diesel with `RecyclingMethod::Verified` (the same).
//!
//! **Teardown.** Each scenario runs in a child process (this binary again), once per pool,
//! 4 connections and a close deadline of 1 s: the runtime dropped while 8 tasks run
//! `SELECT pg_sleep(0.002)` calls, the pool dropped without a close, a close during a
//! `SELECT pg_sleep(3)` call. The server logs each session's start and end
//! (`log_connections`, `log_disconnections`), each child's connections under a name of their
//! own. The parent reports the child's exit status and stderr, the sessions still open on the
//! server the moment the child has exited, and (once they have all ended) how many sessions
//! ended with the client's Terminate and how many without (`unexpected EOF on client
//! connection`: the client's process ended with the socket open). The child reports how many
//! of its sockets to the server were still open when its `main` ended, after it waited up to
//! 5 s for them to close.

use std::collections::HashSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gracepool_diesel::diesel::{self, PgConnection, RunQueryDsl};
use gracepool_testkit::postgres::PgServer;

const SIZE: usize = 8;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn select_one(c: &mut PgConnection) -> diesel::QueryResult<i32> {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1")).get_result(c)
}

enum Bench {
    Grace(gracepool_diesel::Pool),
    GraceChecked(gracepool_diesel::Pool),
    Dead(deadpool_diesel::postgres::Pool),
    DeadVerified(deadpool_diesel::postgres::Pool),
}

impl Bench {
    fn name(&self) -> &'static str {
        match self {
            Bench::Grace(_) => "gracepool-diesel",
            Bench::GraceChecked(_) => "gracepool-diesel, checked every checkout",
            Bench::Dead(_) => "deadpool-diesel (Fast)",
            Bench::DeadVerified(_) => "deadpool-diesel (Verified)",
        }
    }

    fn build(which: usize, url: &str) -> Bench {
        let grace = |check_after_idle| {
            let manager = gracepool_diesel::Manager::new(gracepool_diesel::Config::new(url))
                .check_after_idle(check_after_idle);
            gracepool::Pool::builder(manager)
                .max_size(SIZE)
                .runtime(gracepool_tokio::TokioRuntime::current())
                .build()
                .expect("a valid configuration")
        };
        let dead = |recycling_method| {
            let manager = deadpool_diesel::postgres::Manager::from_config(
                url,
                deadpool_diesel::Runtime::Tokio1,
                deadpool_diesel::ManagerConfig { recycling_method },
            );
            deadpool_diesel::postgres::Pool::builder(manager)
                .max_size(SIZE)
                .build()
                .expect("a valid configuration")
        };
        match which {
            0 => Bench::Grace(grace(Duration::from_secs(1))),
            1 => Bench::GraceChecked(grace(Duration::ZERO)),
            2 => Bench::Dead(dead(deadpool_diesel::RecyclingMethod::Fast)),
            _ => Bench::DeadVerified(dead(deadpool_diesel::RecyclingMethod::Verified)),
        }
    }

    async fn step(&self) -> bool {
        match self {
            Bench::Grace(pool) | Bench::GraceChecked(pool) => {
                let mut conn = pool.get().await.expect("a connection");
                matches!(conn.interact(select_one).await, Ok(Ok(1)))
            }
            Bench::Dead(pool) | Bench::DeadVerified(pool) => {
                let conn = pool.get().await.expect("a connection");
                matches!(conn.interact(select_one).await, Ok(Ok(1)))
            }
        }
    }

    async fn close(self) {
        match self {
            Bench::Grace(pool) | Bench::GraceChecked(pool) => {
                pool.close().await;
            }
            Bench::Dead(pool) | Bench::DeadVerified(pool) => pool.close(),
        }
    }
}

async fn round(bench: &Arc<Bench>, tasks: usize, time: Duration) -> (u64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (bench, stop) = (bench.clone(), stop.clone());
            let (done, failed) = (done.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Relaxed) {
                    if bench.step().await {
                        done.fetch_add(1, Relaxed);
                    } else {
                        failed.fetch_add(1, Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(time).await;
    stop.store(true, Relaxed);
    for h in handles {
        h.await.expect("a task ends");
    }
    (done.load(Relaxed), failed.load(Relaxed))
}

fn throughput() {
    let rounds = env_or("GRACEPOOL_DIESEL_BENCH_ROUNDS", 5) as usize;
    let time = Duration::from_millis(env_or("GRACEPOOL_DIESEL_BENCH_ROUND_MS", 1000));
    let Some(pg) = PgServer::start("bench::diesel") else {
        return;
    };
    // diesel takes a libpq connection string.
    let url = pg.conn_str("bench_diesel");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "{SIZE} connections, `SELECT 1` per checkout, {rounds} interleaved rounds of {time:?} \
         per pool, tokio multi-thread (2 workers)\n"
    );
    println!("| tasks | pool | queries/s (median round) | best round | vs deadpool-diesel (Fast) | failed |");
    println!("|---|---|---|---|---|---|");
    rt.block_on(async {
        let benches: Vec<Arc<Bench>> = (0..4).map(|w| Arc::new(Bench::build(w, &url))).collect();
        for tasks in [8, 32] {
            for b in &benches {
                round(b, tasks, Duration::from_millis(300)).await;
            }
            let mut per_sec = vec![Vec::new(); benches.len()];
            let mut failed = vec![0; benches.len()];
            for r in 0..rounds {
                for i in 0..benches.len() {
                    let which = (i + r) % benches.len();
                    let (n, f) = round(&benches[which], tasks, time).await;
                    per_sec[which].push(n as f64 / time.as_secs_f64());
                    failed[which] += f;
                }
            }
            for v in &mut per_sec {
                v.sort_by(|a, b| a.total_cmp(b));
            }
            let median = |v: &[f64]| v[v.len() / 2];
            let reference = median(&per_sec[2]);
            for (i, b) in benches.iter().enumerate() {
                println!(
                    "| {tasks} | {} | {:.0} | {:.0} | {:.2}× | {} |",
                    b.name(),
                    median(&per_sec[i]),
                    per_sec[i][per_sec[i].len() - 1],
                    median(&per_sec[i]) / reference,
                    failed[i]
                );
            }
        }
        for b in benches {
            Arc::into_inner(b)
                .expect("no task holds the pool")
                .close()
                .await;
        }
    });
    drop(rt);
    drop(pg);
}

// ---- teardown, in child processes ----

const CHILD: &str = "GRACEPOOL_DIESEL_BENCH_CHILD";
const URL: &str = "GRACEPOOL_DIESEL_BENCH_URL";
const PORT: &str = "GRACEPOOL_DIESEL_BENCH_PORT";

const SCENARIOS: [(&str, &str); 3] = [
    ("runtime_dropped", "runtime dropped while calls run"),
    ("pool_dropped", "pool dropped without close"),
    (
        "close_long_call",
        "close during `SELECT pg_sleep(3)` (deadline 1 s)",
    ),
];

/// This process's open sockets to the server on `port`, whatever their TCP state.
fn server_sockets(port: u16) -> usize {
    let mut inodes = HashSet::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let Some(remote) = fields.get(2) else {
                continue;
            };
            let remote_port = remote
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if remote_port == Some(port) {
                if let Some(inode) = fields.get(9) {
                    inodes.insert(format!("socket:[{inode}]"));
                }
            }
        }
    }
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    fds.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| inodes.contains(target.to_string_lossy().as_ref()))
        .count()
}

fn teardown() {
    let Some(pg) = PgServer::start_with_settings(
        "bench::diesel::teardown",
        &[("log_connections", "on"), ("log_disconnections", "on")],
    ) else {
        return;
    };
    println!("| pool | scenario | exit | stderr | sessions | ended with Terminate | ended without Terminate | open on the server at the child's exit | sockets open at the end of `main` | close() returned after |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (pool, short) in [("gracepool-diesel", "grace"), ("deadpool-diesel", "dead")] {
        for (scenario, label) in SCENARIOS {
            let app = format!("td_{short}_{scenario}");
            let out = Command::new(std::env::current_exe().expect("this binary's path"))
                .env(CHILD, format!("{pool}:{scenario}"))
                .env(URL, pg.conn_str(&app))
                .env(PORT, pg.port().to_string())
                .env_remove("RUST_BACKTRACE")
                .output()
                .expect("this binary starts again");
            // At once: a backend whose client vanished mid-query stays until the query ends.
            let open_at_exit = pg.client_backends_of(&app);
            let still_open = pg.wait_for_backends_of(&app, 0, Duration::from_secs(15));
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            let field = |key: &str| {
                stdout
                    .split_whitespace()
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                    .unwrap_or("— (no report: it died)")
                    .to_owned()
            };
            // The first two lines: a panic's location, then its message.
            let first: Vec<&str> = stderr
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .take(2)
                .collect();
            let first = if first.is_empty() {
                "empty".to_owned()
            } else {
                format!("{} line(s): `{}`", stderr.lines().count(), first.join(" "))
            };
            let sessions = pg.disconnections(Some(&app));
            let eofs = pg.unexpected_eofs(Some(&app));
            let by_server = pg.ended_by_server(Some(&app));
            let still = if still_open > 0 {
                format!(" ({still_open} still open 15 s later)")
            } else {
                String::new()
            };
            let by_server = if by_server > 0 {
                format!(" ({by_server} ended by the server)")
            } else {
                String::new()
            };
            println!(
                "| {pool} | {label} | {} | {first} | {sessions}{still} | {}{by_server} | {eofs} | {open_at_exit} | {} | {} |",
                out.status,
                pg.goodbyes(&app),
                field("open"),
                field("close_ms"),
            );
        }
    }
    drop(pg);
}

enum Pool {
    Grace(gracepool_diesel::Pool),
    Dead(deadpool_diesel::postgres::Pool),
}

fn sleep_query(c: &mut PgConnection, seconds: &'static str) -> diesel::QueryResult<()> {
    diesel::sql_query(format!("SELECT pg_sleep({seconds})"))
        .execute(c)
        .map(|_| ())
}

impl Pool {
    async fn call(&self, seconds: &'static str) -> bool {
        let run = move |c: &mut PgConnection| sleep_query(c, seconds);
        match self {
            Pool::Grace(p) => match p.get().await {
                Ok(mut conn) => matches!(conn.interact(run).await, Ok(Ok(()))),
                Err(_) => false,
            },
            Pool::Dead(p) => match p.get().await {
                Ok(conn) => matches!(conn.interact(run).await, Ok(Ok(()))),
                Err(_) => false,
            },
        }
    }

    async fn close(&self) {
        match self {
            Pool::Grace(p) => {
                p.close().await;
            }
            Pool::Dead(p) => p.close(),
        }
    }
}

fn child(spec: &str) {
    let (pool_name, scenario) = spec.split_once(':').expect("pool:scenario");
    let url = std::env::var(URL).expect("the server's connection string");
    let port: u16 = std::env::var(PORT)
        .expect("the server's port")
        .parse()
        .expect("a port");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pool = Arc::new(rt.block_on(async {
        match pool_name {
            "gracepool-diesel" => {
                let manager = gracepool_diesel::Manager::new(gracepool_diesel::Config::new(&url));
                Pool::Grace(
                    gracepool::Pool::builder(manager)
                        .max_size(4)
                        .close_deadline(Duration::from_secs(1))
                        .runtime(gracepool_tokio::TokioRuntime::current())
                        .build()
                        .expect("a valid configuration"),
                )
            }
            _ => {
                let manager =
                    deadpool_diesel::postgres::Manager::new(&url, deadpool_diesel::Runtime::Tokio1);
                Pool::Dead(
                    deadpool_diesel::postgres::Pool::builder(manager)
                        .max_size(4)
                        .build()
                        .expect("a valid configuration"),
                )
            }
        }
    }));
    let ok = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let (pool, ok, stop) = (pool.clone(), ok.clone(), stop.clone());
            rt.spawn(async move {
                while !stop.load(Relaxed) && pool.call("0.002").await {
                    ok.fetch_add(1, Relaxed);
                }
            })
        })
        .collect();
    let until = Instant::now() + Duration::from_secs(30);
    while ok.load(Relaxed) < 200 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut close_ms = "-".to_owned();
    match scenario {
        "runtime_dropped" => {
            drop(rt);
            drop(pool);
        }
        "pool_dropped" => {
            stop.store(true, Relaxed);
            rt.block_on(async {
                for c in callers {
                    let _ = c.await;
                }
                drop(pool);
            });
            drop(rt);
        }
        "close_long_call" => {
            stop.store(true, Relaxed);
            rt.block_on(async {
                for c in callers {
                    let _ = c.await;
                }
                let long = tokio::spawn({
                    let pool = pool.clone();
                    async move { pool.call("3").await }
                });
                tokio::time::sleep(Duration::from_millis(300)).await;
                let started = Instant::now();
                pool.close().await;
                close_ms = started.elapsed().as_millis().to_string();
                let _ = long.await;
                drop(pool);
            });
            drop(rt);
        }
        other => panic!("unknown scenario {other}"),
    }
    // A `main` that waits up to 5 s for its connections to close before it returns.
    let until = Instant::now() + Duration::from_secs(5);
    while server_sockets(port) > 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "open={} close_ms={close_ms} calls={}",
        server_sockets(port),
        ok.load(Relaxed)
    );
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD) {
        return child(&spec);
    }
    match std::env::args().nth(1).as_deref() {
        Some("teardown") => teardown(),
        _ => throughput(),
    }
}
