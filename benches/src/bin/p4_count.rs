//! P4 as a fixed count, for instruction counters: `p4_count N [POOL]` runs N cold starts
//! (build a pool, take its first 100 connections, holding them; then close it) on a
//! current_thread runtime, after one warm-up start. POOL: `gracepool` (the default) or
//! `deadpool`. Under `valgrind --tool=callgrind`, the difference
//! between two counts divided by the difference of N is the cost of one cold start (close
//! included, which the benchmark does not time).

use gracepool_bench::manager::Trivial;
use gracepool_bench::pools::{BenchPool, Dead, Grace};
use gracepool_bench::scenarios::cold_start;

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    async fn run<P: BenchPool>(n: u64) -> std::time::Duration {
        let mut took = cold_start::<P>(Trivial::new(), 100).await;
        for _ in 0..n {
            took += cold_start::<P>(Trivial::new(), 100).await;
        }
        took
    }
    let name = std::env::args()
        .nth(2)
        .unwrap_or_else(|| Grace::NAME.to_string());
    let took = rt.block_on(async {
        match name.as_str() {
            Grace::NAME => run::<Grace>(n).await,
            Dead::NAME => run::<Dead>(n).await,
            other => {
                eprintln!("p4_count: no pool {other}");
                std::process::exit(2);
            }
        }
    });
    println!("{n} cold starts ({took:?} in all)");
}
