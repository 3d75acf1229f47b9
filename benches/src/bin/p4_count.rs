//! P4 as a fixed count, for instruction counters: `p4_count N` runs N cold starts (build a
//! pool, take its first 100 connections, holding them; then close it) on a current_thread
//! runtime, after one warm-up start. Under `valgrind --tool=callgrind`, the difference
//! between two counts divided by the difference of N is the cost of one cold start (close
//! included, which the benchmark does not time).

use gracepool_bench::manager::Trivial;
use gracepool_bench::pools::Grace;
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
    let took = rt.block_on(async {
        let mut took = cold_start::<Grace>(Trivial::new(), 100).await;
        for _ in 0..n {
            took += cold_start::<Grace>(Trivial::new(), 100).await;
        }
        took
    });
    println!("{n} cold starts ({took:?} in all)");
}
