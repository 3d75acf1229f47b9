//! P3 as a fixed count, for instruction counters: `p3_count N [POOL] [WORKERS]` runs 32 tasks
//! sharing a pool of one connection, each looping get, `yield_now` while holding, return, until
//! N pairs are done in all, on a tokio runtime with WORKERS worker threads (0, the default: a
//! current_thread runtime, where every run does the same work). POOL as for `p1_count`, or
//! `gracepool-no-timeout`, or `deadpool-timeout`. The difference between two counts divided by
//! the difference of N is what one waited pair costs, the runtime's scheduling included. With
//! `P3_SIZES` set, it first prints the size of gracepool's `get` future (what every caller
//! copies as it awaits it).
//!
//! With `P3_TIMER` set, an idle task holds a tokio timer (an hour's sleep) beside the pool, as an
//! application's own timers would: what a pending timer costs the runtime at each park.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use gracepool_bench::manager::Trivial;
use gracepool_bench::pools::{
    Bb8, BenchPool, ChannelFloor, Dead, DeadTimed, Grace, GraceUntimed, MutexFloor,
};

const TASKS: u64 = 32;

async fn run<P: BenchPool>(n: u64) -> u64 {
    let pool = Arc::new(P::build(Trivial::new(), 1).await);
    let left = Arc::new(AtomicU64::new(n));
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let pool = pool.clone();
            let left = left.clone();
            tokio::spawn(async move {
                let mut sum = 0u64;
                while left
                    .fetch_update(Relaxed, Relaxed, |l| l.checked_sub(1))
                    .is_ok()
                {
                    let conn = pool.checkout().await;
                    sum = sum.wrapping_add(std::hint::black_box(conn.id));
                    tokio::task::yield_now().await;
                    drop(conn);
                }
                sum
            })
        })
        .collect();
    let mut sum = 0u64;
    for t in tasks {
        sum = sum.wrapping_add(t.await.expect("a task does not panic"));
    }
    if let Ok(pool) = Arc::try_unwrap(pool) {
        pool.close().await;
    }
    sum
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let name = args.next().unwrap_or_else(|| Grace::NAME.to_string());
    let workers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(0);
    let rt = match workers {
        0 => tokio::runtime::Builder::new_current_thread(),
        w => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(w);
            b
        }
    }
    .enable_all()
    .build()
    .expect("a runtime");
    if std::env::var_os("P3_SIZES").is_some() {
        rt.block_on(async {
            let pool = Grace::build(Trivial::new(), 1).await;
            println!("get future: {} bytes", std::mem::size_of_val(&pool.0.get()));
            pool.close().await;
        });
    }
    let started = std::time::Instant::now();
    let sum = rt.block_on(async {
        if std::env::var_os("P3_TIMER").is_some() {
            // Never ends within the run: it stays in the timer wheel.
            tokio::spawn(tokio::time::sleep(std::time::Duration::from_secs(3600)));
        }
        match name.as_str() {
            Grace::NAME => run::<Grace>(n).await,
            GraceUntimed::NAME => run::<GraceUntimed>(n).await,
            Dead::NAME => run::<Dead>(n).await,
            DeadTimed::NAME => run::<DeadTimed>(n).await,
            Bb8::NAME => run::<Bb8>(n).await,
            ChannelFloor::NAME => run::<ChannelFloor>(n).await,
            MutexFloor::NAME => run::<MutexFloor>(n).await,
            other => {
                eprintln!("p3_count: no pool {other}");
                std::process::exit(2);
            }
        }
    });
    let ns = started.elapsed().as_nanos() as f64 / n as f64;
    println!("{n} pairs on {name} ({ns:.0} ns per pair, checksum {sum})");
}
