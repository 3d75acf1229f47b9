//! gracepool-diesel beside deadpool-diesel 0.6 (whose `interact` runs each call on tokio's
//! blocking pool), both on diesel 2.2's `PgConnection`, on a real PostgreSQL 15 server started
//! here (127.0.0.1, stopped at the end). N tasks (8, then 32) share 8 connections; each checks
//! one out, runs `SELECT 1` through `interact` and gives it back, in a loop.
//!
//! ```sh
//! cargo run --release -p gracepool-bench --bin diesel
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

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

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

fn main() {
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
