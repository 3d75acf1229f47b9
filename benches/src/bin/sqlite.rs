//! gracepool-sqlite beside deadpool-sqlite (whose `interact` runs each call on tokio's blocking
//! pool), both on rusqlite 0.40 with SQLite compiled in, on one database file in WAL mode with
//! the same PRAGMAs (`busy_timeout=5000`, `journal_mode=WAL`, `foreign_keys=ON`,
//! `synchronous=NORMAL`), 8 connections each.
//!
//! ```sh
//! cargo run --release -p gracepool-bench --bin sqlite              # throughput
//! cargo run --release -p gracepool-bench --bin sqlite -- teardown  # the teardown table
//! ```
//!
//! **Throughput.** N tasks (8, then 32) each check a connection out, run one statement through
//! `interact` and give it back, in a loop: read-heavy (a prepared point `SELECT` on a table of
//! 10,000 rows) and write-heavy (a prepared point `UPDATE`, each its own transaction). Rounds
//! are interleaved (a round of each pool in turn, starting with the other pool every round),
//! `GRACEPOOL_SQLITE_BENCH_ROUNDS` (5) of `GRACEPOOL_SQLITE_BENCH_ROUND_MS` (1000) each, on a
//! tokio multi-thread runtime with 2 workers. Each pool runs as its users get it by default:
//! deadpool-sqlite checks every connection on every checkout (a `SELECT` through
//! `spawn_blocking`), gracepool-sqlite only those idle for a second or more; a third pool,
//! gracepool-sqlite with `check_after_idle(Duration::ZERO)`, does the same work per statement
//! as deadpool-sqlite (a check round trip on every checkout).
//!
//! **Teardown.** Each scenario runs in a child process (this binary again), once per pool:
//! the runtime dropped while calls run, the pool dropped without a close, a close during a
//! call longer than the close deadline. The parent reports the child's exit status and
//! stderr, whether the database's `-wal` file was left behind (not checkpointed), and how many
//! of the database's file handles were still open when the child's `main` ended, after it
//! waited up to 5 s for them to close (one per open SQLite connection).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gracepool_sqlite::rusqlite;

const SIZE: usize = 8;
const ROWS: i64 = 10_000;
const PRAGMAS: &str = "PRAGMA busy_timeout=5000; PRAGMA journal_mode=WAL; \
                       PRAGMA foreign_keys=ON; PRAGMA synchronous=NORMAL;";
const CHILD: &str = "GRACEPOOL_SQLITE_BENCH_CHILD";
const DB: &str = "GRACEPOOL_SQLITE_BENCH_DB";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, PartialEq)]
enum Work {
    Read,
    Write,
}

/// One statement on one connection.
fn op(c: &mut rusqlite::Connection, work: Work, id: i64) -> rusqlite::Result<()> {
    match work {
        Work::Read => {
            let _: i64 = c
                .prepare_cached("SELECT v FROM kv WHERE id = ?1")?
                .query_row([id], |r| r.get(0))?;
        }
        Work::Write => {
            c.prepare_cached("UPDATE kv SET v = v + 1 WHERE id = ?1")?
                .execute([id])?;
        }
    }
    Ok(())
}

/// The pools, behind one checkout-and-statement step.
enum Bench {
    Grace(gracepool_sqlite::Pool),
    /// gracepool-sqlite checking every connection on every checkout (`SELECT 1` on its
    /// thread), as deadpool-sqlite does: the same work per statement.
    GraceChecked(gracepool_sqlite::Pool),
    Dead(deadpool_sqlite::Pool),
}

fn grace_pool(db: &Path, size: usize, close_deadline: Duration) -> gracepool_sqlite::Pool {
    grace_pool_checked_after(db, size, close_deadline, Duration::from_secs(1))
}

fn grace_pool_checked_after(
    db: &Path,
    size: usize,
    close_deadline: Duration,
    check_after_idle: Duration,
) -> gracepool_sqlite::Pool {
    // ANCHOR: grace_pool
    // busy_timeout 5 s, WAL and foreign keys are the Config's own defaults.
    let config = gracepool_sqlite::Config::new(db)
        .setup(|c: &mut rusqlite::Connection| c.execute_batch("PRAGMA synchronous=NORMAL"));
    let manager = gracepool_sqlite::Manager::new(config).check_after_idle(check_after_idle);
    gracepool::Pool::builder(manager)
        .max_size(size)
        .close_deadline(close_deadline)
        .runtime(gracepool_tokio::TokioRuntime::current())
        .build()
        .expect("a valid configuration")
    // ANCHOR_END: grace_pool
}

fn dead_pool(db: &Path, size: usize) -> deadpool_sqlite::Pool {
    // ANCHOR: dead_pool
    use deadpool_sqlite::{Hook, HookError};
    deadpool_sqlite::Config::new(db)
        .builder(deadpool_sqlite::Runtime::Tokio1)
        .expect("a valid configuration")
        .max_size(size)
        .post_create(Hook::async_fn(|conn, _| {
            Box::pin(async move {
                conn.interact(|c| c.execute_batch(PRAGMAS))
                    .await
                    .map_err(|e| HookError::message(e.to_string()))?
                    .map_err(HookError::Backend)
            })
        }))
        .build()
        .expect("a valid configuration")
    // ANCHOR_END: dead_pool
}

impl Bench {
    async fn step(&self, work: Work, id: i64) -> bool {
        // ANCHOR: step
        let run = move |c: &mut rusqlite::Connection| op(c, work, id);
        match self {
            Bench::Grace(pool) | Bench::GraceChecked(pool) => {
                let mut conn = pool.get().await.expect("a connection");
                matches!(conn.interact(run).await, Ok(Ok(())))
            }
            Bench::Dead(pool) => {
                let conn = pool.get().await.expect("a connection");
                matches!(conn.interact(run).await, Ok(Ok(())))
            }
        }
        // ANCHOR_END: step
    }
}

/// One round: `tasks` tasks loop on `step` for `time`; the statements that went through, and
/// those that failed.
async fn round(bench: &Arc<Bench>, work: Work, tasks: usize, time: Duration) -> (u64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (bench, stop) = (bench.clone(), stop.clone());
            let (done, failed) = (done.clone(), failed.clone());
            tokio::spawn(async move {
                // xorshift: a different row each time, no shared state.
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (t as u64 + 1);
                while !stop.load(Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let id = (x % ROWS as u64) as i64 + 1;
                    if bench.step(work, id).await {
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

fn fresh_db(tag: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "gracepool-sqlite-bench-{tag}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let db = dir.join("bench.db");
    let c = rusqlite::Connection::open(&db).expect("the database opens");
    c.execute_batch(PRAGMAS).unwrap();
    c.execute_batch("CREATE TABLE kv (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
        .unwrap();
    c.execute_batch(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS}) \
         INSERT INTO kv SELECT i, 0 FROM n"
    ))
    .unwrap();
    c.close().unwrap();
    (dir, db)
}

fn throughput() {
    let rounds = env_or("GRACEPOOL_SQLITE_BENCH_ROUNDS", 5) as usize;
    let time = Duration::from_millis(env_or("GRACEPOOL_SQLITE_BENCH_ROUND_MS", 1000));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (dir, db) = fresh_db("throughput");
    println!(
        "{SIZE} connections, one database file (WAL, synchronous=NORMAL), {rounds} interleaved \
         rounds of {time:?} per pool, tokio multi-thread (2 workers)\n"
    );
    println!("| workload | tasks | gracepool-sqlite (median round) | best | checked every checkout | best | deadpool-sqlite (median round) | best | ratio (median) | ratio, both checked every checkout | failed statements |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    rt.block_on(async {
        let benches = [
            Arc::new(Bench::Grace(grace_pool(&db, SIZE, Duration::from_secs(10)))),
            Arc::new(Bench::GraceChecked(grace_pool_checked_after(
                &db,
                SIZE,
                Duration::from_secs(10),
                Duration::ZERO,
            ))),
            Arc::new(Bench::Dead(dead_pool(&db, SIZE))),
        ];
        for (work, label) in [(Work::Read, "read"), (Work::Write, "write")] {
            for tasks in [8, 32] {
                // Warm-up: every connection opened, every statement prepared.
                for b in &benches {
                    round(b, work, tasks, Duration::from_millis(300)).await;
                }
                let mut per_sec = [Vec::new(), Vec::new(), Vec::new()];
                let mut failed = 0;
                for r in 0..rounds {
                    for i in 0..3 {
                        let which = (i + r) % 3;
                        let (n, f) = round(&benches[which], work, tasks, time).await;
                        per_sec[which].push(n as f64 / time.as_secs_f64());
                        failed += f;
                    }
                }
                for v in &mut per_sec {
                    v.sort_by(|a, b| a.total_cmp(b));
                }
                let median = |v: &[f64]| v[v.len() / 2];
                let best = |v: &[f64]| v[v.len() - 1];
                println!(
                    "| {label} | {tasks} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2}× | {:.2}× | {failed} |",
                    median(&per_sec[0]),
                    best(&per_sec[0]),
                    median(&per_sec[1]),
                    best(&per_sec[1]),
                    median(&per_sec[2]),
                    best(&per_sec[2]),
                    median(&per_sec[0]) / median(&per_sec[2]),
                    median(&per_sec[1]) / median(&per_sec[2]),
                );
            }
        }
        for b in benches {
            match Arc::into_inner(b).expect("no task holds the pool") {
                Bench::Grace(pool) | Bench::GraceChecked(pool) => {
                    pool.close().await;
                }
                Bench::Dead(pool) => pool.close(),
            }
        }
    });
    drop(rt);
    let _ = std::fs::remove_dir_all(dir);
}

// ---- teardown, in child processes ----

const SCENARIOS: [(&str, &str); 3] = [
    ("runtime_dropped", "runtime dropped while calls run"),
    ("pool_dropped", "pool dropped without close"),
    ("close_long_call", "close during a 3 s call (deadline 1 s)"),
];

/// The database's own file handles this process holds: one per open SQLite connection.
fn db_handles(db: &Path) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target == db)
        .count()
}

fn teardown() {
    println!("| pool | scenario | exit | stderr | `-wal` left | connections open at exit | close() returned after |");
    println!("|---|---|---|---|---|---|---|");
    for pool in ["gracepool-sqlite", "deadpool-sqlite"] {
        for (scenario, label) in SCENARIOS {
            let (dir, db) = fresh_db(scenario);
            let out = Command::new(std::env::current_exe().expect("this binary's path"))
                .env(CHILD, format!("{pool}:{scenario}"))
                .env(DB, &db)
                .env_remove("RUST_BACKTRACE")
                .output()
                .expect("this binary starts again");
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            let field = |key: &str| {
                stdout
                    .split_whitespace()
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                    .unwrap_or("— (no report: it died)")
                    .to_owned()
            };
            let mut wal = db.clone().into_os_string();
            wal.push("-wal");
            let wal = match std::fs::metadata(&wal) {
                Ok(m) if m.len() > 0 => format!("yes, {} KiB", m.len() / 1024),
                Ok(_) => "empty file".to_owned(),
                Err(_) => "no (checkpointed)".to_owned(),
            };
            let first = stderr
                .lines()
                .find(|l| !l.trim().is_empty())
                .map(|l| format!("{} line(s): `{}`", stderr.lines().count(), l.trim()))
                .unwrap_or_else(|| "empty".to_owned());
            println!(
                "| {pool} | {label} | {} | {first} | {wal} | {} | {} |",
                out.status,
                field("open"),
                field("close_ms"),
            );
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

enum Pool {
    Grace(gracepool_sqlite::Pool),
    Dead(deadpool_sqlite::Pool),
}

impl Pool {
    async fn write(&self, w: i64, sleep: Duration) -> bool {
        let run = move |c: &mut rusqlite::Connection| {
            std::thread::sleep(sleep);
            c.execute("INSERT INTO kv (v) VALUES (?1)", [w]).map(|_| ())
        };
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

    /// A write transaction that outlasts the close deadline.
    async fn long_call(&self) -> bool {
        let run = |c: &mut rusqlite::Connection| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute("INSERT INTO kv (v) VALUES (-1)", [])?;
            std::thread::sleep(Duration::from_secs(3));
            tx.commit()
        };
        match self {
            Pool::Grace(p) => {
                let mut conn = p.get().await.expect("a connection");
                matches!(conn.interact(run).await, Ok(Ok(())))
            }
            Pool::Dead(p) => {
                let conn = p.get().await.expect("a connection");
                matches!(conn.interact(run).await, Ok(Ok(())))
            }
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
    let db = PathBuf::from(std::env::var(DB).expect("the database path"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pool = Arc::new(rt.block_on(async {
        match pool_name {
            "gracepool-sqlite" => Pool::Grace(grace_pool(&db, 4, Duration::from_secs(1))),
            _ => Pool::Dead(dead_pool(&db, 4)),
        }
    }));
    let ok = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (pool, ok, stop) = (pool.clone(), ok.clone(), stop.clone());
            rt.spawn(async move {
                while !stop.load(Relaxed) && pool.write(w, Duration::from_millis(2)).await {
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
                for w in writers {
                    let _ = w.await;
                }
                drop(pool);
            });
            drop(rt);
        }
        "close_long_call" => {
            stop.store(true, Relaxed);
            rt.block_on(async {
                for w in writers {
                    let _ = w.await;
                }
                let long = tokio::spawn({
                    let pool = pool.clone();
                    async move { pool.long_call().await }
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
    while db_handles(&db) > 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "open={} close_ms={close_ms} writes={}",
        db_handles(&db),
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
