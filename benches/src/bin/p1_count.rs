//! P1 as a fixed count, for instruction counters: `p1_count N` runs N uncontended get + return
//! pairs on a current_thread runtime (pool max 8), after one warm-up pair. Under
//! `valgrind --tool=callgrind` or `perf stat -e instructions`, the difference between two
//! counts divided by the difference of N is the cost of one pair, repeatable whatever else
//! the machine is doing.

use gracepool_bench::manager::Trivial;
use gracepool_bench::pools::{BenchPool, Grace};
use gracepool_bench::scenarios::pairs;

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let sum = rt.block_on(async {
        let pool = Grace::build(Trivial::new(), 8).await;
        let warm = pairs(&pool, 1).await;
        let sum = pairs(&pool, n).await;
        pool.close().await;
        warm.wrapping_add(sum)
    });
    println!("{n} pairs (checksum {sum})");
}
