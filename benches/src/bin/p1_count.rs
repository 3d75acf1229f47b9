//! P1 as a fixed count, for instruction counters: `p1_count N [POOL]` runs N uncontended get +
//! return pairs on a current_thread runtime (pool max 8), after one warm-up pair. POOL is
//! `gracepool` (the default), `deadpool`, `bb8`, `r2d2` (synchronous, on the main thread),
//! `floor-channel` or `floor-mutex`. Under
//! `valgrind --tool=callgrind` or `perf stat -e instructions`, the difference between two
//! counts divided by the difference of N is the cost of one pair, repeatable whatever else
//! the machine is doing, and comparable from pool to pool.
//!
//! Built with `--features gracepool/metrics` and run with `P1_RECORDER=prometheus`, the pools
//! publish to a Prometheus recorder (installed before they are built): the cost of the
//! `metrics` feature with a recorder that keeps what it is given. Without the variable, the
//! feature publishes to no recorder.

use gracepool_bench::manager::Trivial;
use gracepool_bench::pools::{Bb8, BenchPool, ChannelFloor, Dead, Grace, MutexFloor};
use gracepool_bench::scenarios::{pairs, r2d2_builder, r2d2_pairs};

async fn run<P: BenchPool>(n: u64) -> u64 {
    let pool = P::build(Trivial::new(), 8).await;
    let warm = pairs(&pool, 1).await;
    let sum = pairs(&pool, n).await;
    pool.close().await;
    warm.wrapping_add(sum)
}

fn main() {
    if std::env::var("P1_RECORDER").as_deref() == Ok("prometheus") {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("no other recorder is installed");
    }
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let name = args.next().unwrap_or_else(|| Grace::NAME.to_string());
    if name == "r2d2" {
        let pool = r2d2_builder(8)
            .build(Trivial::new())
            .expect("the trivial manager never fails");
        let sum = r2d2_pairs(&pool, 1).wrapping_add(r2d2_pairs(&pool, n));
        println!("{n} pairs on r2d2 (checksum {sum})");
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let sum = rt.block_on(async {
        match name.as_str() {
            Grace::NAME => run::<Grace>(n).await,
            Dead::NAME => run::<Dead>(n).await,
            Bb8::NAME => run::<Bb8>(n).await,
            ChannelFloor::NAME => run::<ChannelFloor>(n).await,
            MutexFloor::NAME => run::<MutexFloor>(n).await,
            other => {
                eprintln!("p1_count: no pool {other}");
                std::process::exit(2);
            }
        }
    });
    println!("{n} pairs on {name} (checksum {sum})");
}
