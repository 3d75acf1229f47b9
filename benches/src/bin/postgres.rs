//! gracepool-postgres against deadpool-postgres and bb8-postgres on a real PostgreSQL 15 server
//! (started here, on 127.0.0.1, and stopped at the end): 32 tasks share 8 connections, each
//! task checks a connection out, runs a prepared `SELECT 1` and gives it back, in a loop.
//!
//! ```sh
//! cargo run --release -p gracepool-bench --bin postgres
//! GRACEPOOL_PG_BENCH_ROUNDS=7 GRACEPOOL_PG_BENCH_ROUND_MS=2000 cargo run --release -p gracepool-bench --bin postgres
//! ```
//!
//! Rounds are interleaved (a round of each pool in turn, then again), so a slow moment of the
//! machine falls on every pool alike. Reported: queries per second (the median round and the
//! best), and the p50 / p99 / p99.9 of the time `get()` took, over every round.
//!
//! Prepared statements: gracepool-postgres and deadpool-postgres each cache them per connection
//! (`prepare_cached`); bb8-postgres has no such cache, so its tasks prepare on every checkout
//! (one more round trip per query), which is how its users run a prepared query.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gracepool_testkit::postgres::PgServer;
use tokio_postgres::NoTls;

const TASKS: usize = 32;
const SIZE: usize = 8;
const SQL: &str = "SELECT 1";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The three pools, behind one checkout-and-query step.
enum Bench {
    Grace(gracepool_postgres::Pool),
    /// gracepool with no wait timeout, as deadpool is by default: a waiter arms no timer.
    GraceUntimed(gracepool_postgres::Pool),
    Dead(deadpool_postgres::Pool),
    Bb8(bb8::Pool<bb8_postgres::PostgresConnectionManager<NoTls>>),
}

impl Bench {
    fn name(&self) -> &'static str {
        match self {
            Bench::Grace(_) => "gracepool-postgres",
            Bench::GraceUntimed(_) => "gracepool-postgres, no wait timeout",
            Bench::Dead(_) => "deadpool-postgres",
            Bench::Bb8(_) => "bb8-postgres",
        }
    }

    async fn build(which: usize, conn_str: &str) -> Bench {
        let config: tokio_postgres::Config = conn_str.parse().expect("a valid connection string");
        match which {
            0 => Bench::Grace(
                gracepool::Pool::builder(gracepool_postgres::Manager::new(config))
                    .max_size(SIZE)
                    .runtime(gracepool_tokio::TokioRuntime::current())
                    .build()
                    .expect("a valid configuration"),
            ),
            1 => Bench::GraceUntimed(
                gracepool::Pool::builder(gracepool_postgres::Manager::new(config))
                    .max_size(SIZE)
                    .wait_timeout(None)
                    .runtime(gracepool_tokio::TokioRuntime::current())
                    .build()
                    .expect("a valid configuration"),
            ),
            2 => {
                let manager = deadpool_postgres::Manager::from_config(
                    config,
                    NoTls,
                    deadpool_postgres::ManagerConfig {
                        recycling_method: deadpool_postgres::RecyclingMethod::Fast,
                    },
                );
                Bench::Dead(
                    deadpool_postgres::Pool::builder(manager)
                        .max_size(SIZE)
                        .build()
                        .expect("a valid configuration"),
                )
            }
            _ => Bench::Bb8(
                bb8::Pool::builder()
                    .max_size(SIZE as u32)
                    .build(bb8_postgres::PostgresConnectionManager::new(config, NoTls))
                    .await
                    .expect("bb8 connects"),
            ),
        }
    }

    /// One checkout and query; returns how long the checkout took.
    async fn step(&self) -> Duration {
        let start = Instant::now();
        match self {
            Bench::Grace(pool) | Bench::GraceUntimed(pool) => {
                let conn = pool.get().await.expect("gracepool get");
                let got = start.elapsed();
                let stmt = conn.prepare_cached(SQL).await.expect("prepare");
                let row = conn.query_one(&stmt, &[]).await.expect("query");
                assert_eq!(row.get::<_, i32>(0), 1);
                got
            }
            Bench::Dead(pool) => {
                let conn = pool.get().await.expect("deadpool get");
                let got = start.elapsed();
                let stmt = conn.prepare_cached(SQL).await.expect("prepare");
                let row = conn.query_one(&stmt, &[]).await.expect("query");
                assert_eq!(row.get::<_, i32>(0), 1);
                got
            }
            Bench::Bb8(pool) => {
                let conn = pool.get().await.expect("bb8 get");
                let got = start.elapsed();
                let stmt = conn.prepare(SQL).await.expect("prepare");
                let row = conn.query_one(&stmt, &[]).await.expect("query");
                assert_eq!(row.get::<_, i32>(0), 1);
                got
            }
        }
    }

    async fn close(self) {
        match self {
            Bench::Grace(pool) | Bench::GraceUntimed(pool) => {
                let report = pool.close().await;
                assert!(report.is_complete(), "{report:?}");
            }
            Bench::Dead(pool) => pool.close(),
            Bench::Bb8(pool) => drop(pool),
        }
    }
}

/// Runs `TASKS` tasks on `bench` for `round`; returns the queries done and every checkout time
/// in nanoseconds.
async fn round(bench: &Arc<Bench>, round: Duration) -> (u64, Vec<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let bench = bench.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut waits = Vec::with_capacity(1 << 14);
                while !stop.load(Relaxed) {
                    waits.push(bench.step().await.as_nanos() as u64);
                }
                waits
            })
        })
        .collect();
    tokio::time::sleep(round).await;
    stop.store(true, Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("a bench task does not panic"));
    }
    (all.len() as u64, all)
}

fn percentile(sorted: &[u64], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Duration::from_nanos(sorted[i])
}

fn main() {
    let Some(pg) = PgServer::start("gracepool-bench postgres") else {
        return;
    };
    let rounds = env_or("GRACEPOOL_PG_BENCH_ROUNDS", 5) as usize;
    let round_time = Duration::from_millis(env_or("GRACEPOOL_PG_BENCH_ROUND_MS", 1000));
    println!(
        "date: {}",
        std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    );
    println!(
        "machine: {} cores; PostgreSQL {} on 127.0.0.1 (same machine)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        pg.psql("SHOW server_version")
    );
    println!(
        "{TASKS} tasks, {SIZE} connections, prepared `{SQL}`, {rounds} interleaved rounds of {round_time:?} per pool, tokio multi-thread (2 workers)\n"
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let results = rt.block_on(async {
        let mut benches = Vec::new();
        // GRACEPOOL_PG_BENCH_ONLY=0..3 runs one pool alone (to profile it).
        let only = std::env::var("GRACEPOOL_PG_BENCH_ONLY")
            .ok()
            .and_then(|v| v.parse().ok());
        for which in 0..4 {
            if only.is_some_and(|o: usize| o != which) {
                continue;
            }
            let bench = Arc::new(Bench::build(which, &pg.conn_str("bench")).await);
            // Warm up: open every connection and prepare on it.
            round(&bench, Duration::from_millis(200)).await;
            benches.push(bench);
        }
        let mut per_round: Vec<Vec<f64>> = vec![Vec::new(); benches.len()];
        let mut waits: Vec<Vec<u64>> = vec![Vec::new(); benches.len()];
        for r in 0..rounds {
            // Each round starts one pool further on: no pool always runs right after the
            // same other one (bb8-postgres' rounds leave the server busiest).
            for k in 0..benches.len() {
                let i = (r + k) % benches.len();
                let bench = &benches[i];
                let (n, w) = round(bench, round_time).await;
                per_round[i].push(n as f64 / round_time.as_secs_f64());
                waits[i].extend(w);
            }
        }
        let mut results = Vec::new();
        for ((bench, mut qps), mut w) in benches.into_iter().zip(per_round).zip(waits) {
            let name = bench.name();
            qps.sort_by(f64::total_cmp);
            w.sort_unstable();
            results.push((name, qps, w));
            Arc::into_inner(bench)
                .expect("every task has finished")
                .close()
                .await;
        }
        results
    });

    let median = |v: &[f64]| v[v.len() / 2];
    let reference = results
        .iter()
        .find(|(n, _, _)| *n == "deadpool-postgres")
        .map(|(_, q, _)| median(q))
        .unwrap_or(1.0);
    println!("| pool | queries/s (median round) | best round | vs deadpool-postgres | get() p50 | p99 | p99.9 |");
    println!("|---|---|---|---|---|---|---|");
    for (name, qps, w) in &results {
        println!(
            "| {name} | {:.0} | {:.0} | {:.2}× | {:.1?} | {:.1?} | {:.1?} |",
            median(qps),
            qps[qps.len() - 1],
            median(qps) / reference,
            percentile(w, 0.5),
            percentile(w, 0.99),
            percentile(w, 0.999),
        );
    }
    println!("\nbb8-postgres has no statement cache: it prepares on every checkout (one more round trip).");
}
