//! P1–P5 and the floors. P1, P4 and P5 are criterion timings; P2 and P3 (throughput, waits,
//! fairness) are measured here after criterion's groups and written to
//! `target/criterion/gracepool-extra/contended.json`. Run through `benches/run.sh`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion, SamplingMode};
use gracepool_bench::manager::Trivial;
use gracepool_bench::pools::{
    Bb8, BenchPool, ChannelFloor, Dead, Grace, GraceUntimed, Mobc, MutexFloor,
};
use gracepool_bench::scenarios::{self, Contended};
use gracepool_bench::{write_extra, Args};
use serde_json::{json, Value};

type Group<'a> = BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// P1: one task, current_thread runtime, pool max 8.
fn p1<P: BenchPool>(group: &mut Group<'_>) {
    let rt = scenarios::current_thread();
    let manager = Trivial::new();
    let stats = manager.stats().clone();
    let pool = rt.block_on(P::build(manager, 8));
    group.bench_function(P::NAME, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = Instant::now();
                black_box(scenarios::pairs(&pool, iters).await);
                started.elapsed()
            })
        })
    });
    rt.block_on(async {
        pool.close().await;
        scenarios::settle(&stats, Duration::from_secs(10)).await;
    });
}

fn p1_r2d2(group: &mut Group<'_>) {
    let pool = scenarios::r2d2_builder(8)
        .build(Trivial::new())
        .expect("the trivial manager never fails");
    group.bench_function("r2d2", |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            black_box(scenarios::r2d2_pairs(&pool, iters));
            started.elapsed()
        })
    });
}

/// P4: build + take the first 100 connections, on a current_thread runtime.
fn p4<P: BenchPool>(group: &mut Group<'_>) {
    let rt = scenarios::current_thread();
    group.bench_function(P::NAME, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let manager = Trivial::new();
                    let stats = manager.stats().clone();
                    total += scenarios::cold_start::<P>(manager, 100).await;
                    scenarios::settle(&stats, Duration::from_secs(10)).await;
                }
                total
            })
        })
    });
}

fn p4_r2d2(group: &mut Group<'_>) {
    group.bench_function("r2d2", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| scenarios::r2d2_cold_start(Trivial::new(), 100))
                .sum()
        })
    });
}

const P5_IDLE: usize = 10_000;

/// P5: close a pool of 10,000 idle connections the pool's own way, until every one is
/// closed. The filling is not timed.
fn p5<P: BenchPool>(group: &mut Group<'_>) {
    let rt = scenarios::current_thread();
    group.bench_function(P::NAME, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let manager = Trivial::new();
                let stats = manager.stats().clone();
                total += rt.block_on(async {
                    let pool = scenarios::filled::<P>(manager, P5_IDLE).await;
                    scenarios::close_idle(pool, &stats)
                        .await
                        .unwrap_or_else(|| panic!("{} left connections open", P::NAME))
                });
            }
            total
        })
    });
}

/// P5 with `close_blocking` from outside the runtime: the actor is not being polled, so this
/// is the synchronous fallback closing every idle connection itself.
fn p5_close_blocking(group: &mut Group<'_>) {
    let rt = scenarios::current_thread();
    group.bench_function("gracepool-close_blocking", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let manager = Trivial::new();
                let stats = manager.stats().clone();
                let pool = rt.block_on(scenarios::filled::<Grace>(manager, P5_IDLE));
                let started = Instant::now();
                let report = pool.0.close_blocking(Duration::ZERO);
                total += started.elapsed();
                assert!(report.is_complete() && stats.open() == 0);
                drop(pool);
            }
            total
        })
    });
}

fn p5_r2d2(group: &mut Group<'_>) {
    group.bench_function("r2d2", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let manager = Trivial::new();
                let stats = manager.stats().clone();
                let pool = scenarios::r2d2_filled(manager, P5_IDLE);
                let started = Instant::now();
                drop(pool);
                while stats.open() > 0 {
                    std::thread::yield_now();
                }
                total += started.elapsed();
            }
            total
        })
    });
}

fn p5_floor(group: &mut Group<'_>) {
    group.bench_function("floor-drop", |b| {
        b.iter_custom(|iters| {
            let manager = Trivial::new();
            (0..iters)
                .map(|_| scenarios::drop_loop(&manager, P5_IDLE))
                .sum()
        })
    });
}

/// How long each contended round runs, and how many rounds.
struct Rounds {
    warm: Duration,
    run: Duration,
    count: usize,
}

/// Runs `rounds` of a contended scenario and keeps them all; the report takes the median.
fn contended<P: BenchPool>(tasks: usize, max: usize, rounds: &Rounds) -> Value {
    let rt = scenarios::multi_thread(2);
    let manager = Trivial::new();
    let stats = manager.stats().clone();
    let pool = Arc::new(rt.block_on(P::build(manager, max)));
    scenarios::contended(&rt, &pool, tasks, rounds.warm);
    let runs: Vec<Contended> = (0..rounds.count)
        .map(|_| scenarios::contended(&rt, &pool, tasks, rounds.run))
        .collect();
    let pool = Arc::into_inner(pool).expect("every task has finished");
    rt.block_on(async {
        pool.close().await;
        scenarios::settle(&stats, Duration::from_secs(10)).await;
    });
    summarize(P::NAME, &runs)
}

fn contended_r2d2(threads: usize, max: usize, rounds: &Rounds) -> Value {
    let pool = scenarios::r2d2_builder(max)
        .build(Trivial::new())
        .expect("the trivial manager never fails");
    scenarios::r2d2_contended(&pool, threads, rounds.warm);
    let runs: Vec<Contended> = (0..rounds.count)
        .map(|_| scenarios::r2d2_contended(&pool, threads, rounds.run))
        .collect();
    summarize("r2d2", &runs)
}

fn summarize(name: &str, runs: &[Contended]) -> Value {
    let rounds: Vec<Value> = runs
        .iter()
        .map(|r| {
            json!({
                "pairs_per_sec": r.per_second(),
                "p50_wait_ns": r.wait_ns(0.50),
                "p99_wait_ns": r.wait_ns(0.99),
                // JSON has no infinity: a starved task is written as null.
                "fairness": if r.fairness().is_finite() { json!(r.fairness()) } else { Value::Null },
                "pairs": r.total(),
                "secs": r.elapsed.as_secs_f64(),
            })
        })
        .collect();
    let mut sorted: Vec<&Contended> = runs.iter().collect();
    sorted.sort_by(|a, b| a.per_second().total_cmp(&b.per_second()));
    let median = sorted[sorted.len() / 2];
    println!(
        "{name:>16}: {:>12.0} pairs/s  p50 {:>7} ns  p99 {:>8} ns  fairness {:.2}",
        median.per_second(),
        median.wait_ns(0.5),
        median.wait_ns(0.99),
        median.fairness()
    );
    json!({ "name": name, "median_round": rounds[runs.iter().position(|r| std::ptr::eq(r, median)).expect("from runs")], "rounds": rounds })
}

fn contended_all(args: &Args) {
    let rounds = if args.test {
        Rounds {
            warm: Duration::from_millis(20),
            run: Duration::from_millis(50),
            count: 1,
        }
    } else {
        let ms = std::env::var("GRACEPOOL_BENCH_ROUND_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        Rounds {
            warm: Duration::from_millis(300),
            run: Duration::from_millis(ms),
            count: 3,
        }
    };
    let mut out = serde_json::Map::new();
    for (scenario, tasks, max) in [("P2", 64, 8), ("P3", 32, 1)] {
        if !args.wants(scenario) && !args.filters.iter().any(|f| f.starts_with(scenario)) {
            continue;
        }
        println!(
            "{scenario}: {tasks} tasks, pool max {max}, 2 worker threads, yield_now while holding"
        );
        let want = |pool: &str| args.wants(&format!("{scenario}/{pool}"));
        let mut rows = Vec::new();
        if want(Grace::NAME) {
            rows.push(contended::<Grace>(tasks, max, &rounds));
        }
        if want(GraceUntimed::NAME) {
            rows.push(contended::<GraceUntimed>(tasks, max, &rounds));
        }
        if want(Dead::NAME) {
            rows.push(contended::<Dead>(tasks, max, &rounds));
        }
        if want(Bb8::NAME) {
            rows.push(contended::<Bb8>(tasks, max, &rounds));
        }
        if want(Mobc::NAME) {
            rows.push(contended::<Mobc>(tasks, max, &rounds));
        }
        if want("r2d2") {
            rows.push(contended_r2d2(tasks, max, &rounds));
        }
        if want(ChannelFloor::NAME) {
            rows.push(contended::<ChannelFloor>(tasks, max, &rounds));
        }
        if want(MutexFloor::NAME) {
            rows.push(contended::<MutexFloor>(tasks, max, &rounds));
        }
        out.insert(scenario.to_string(), Value::Array(rows));
    }
    // A partial run (filtered, or --test) leaves the last full run's figures alone.
    if !out.is_empty() && !args.test && args.filters.is_empty() {
        write_extra("contended", &Value::Object(out)).expect("the target directory is writable");
    }
}

fn main() {
    let args = Args::from_env();
    let mut c = Criterion::default().configure_from_args();

    {
        let mut g = c.benchmark_group("P1");
        p1::<Grace>(&mut g);
        p1::<Dead>(&mut g);
        p1::<Bb8>(&mut g);
        p1::<Mobc>(&mut g);
        p1_r2d2(&mut g);
        p1::<ChannelFloor>(&mut g);
        p1::<MutexFloor>(&mut g);
        g.finish();
    }
    {
        let mut g = c.benchmark_group("P4");
        g.sampling_mode(SamplingMode::Flat).sample_size(10);
        p4::<Grace>(&mut g);
        p4::<Dead>(&mut g);
        p4::<Bb8>(&mut g);
        p4::<Mobc>(&mut g);
        p4_r2d2(&mut g);
        p4::<ChannelFloor>(&mut g);
        p4::<MutexFloor>(&mut g);
        g.finish();
    }
    {
        let mut g = c.benchmark_group("P5");
        g.sampling_mode(SamplingMode::Flat).sample_size(10);
        p5::<Grace>(&mut g);
        p5_close_blocking(&mut g);
        p5::<Dead>(&mut g);
        p5::<Bb8>(&mut g);
        p5::<Mobc>(&mut g);
        p5_r2d2(&mut g);
        p5_floor(&mut g);
        g.finish();
    }
    contended_all(&args);
    c.final_summary();
}
