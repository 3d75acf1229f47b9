//! P1–P5 and the floors. P1, P4 and P5 are criterion timings; P2 and P3 (throughput, waits,
//! fairness) are measured here before criterion's groups and written to
//! `target/criterion/gracepool-extra/contended.json`. Run through `benches/run.sh`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion, SamplingMode};
use gracepool_bench::manager::Trivial;
use gracepool_bench::pools::{
    Bb8, BenchPool, ChannelFloor, Dead, DeadTimed, Grace, GraceUntimed, Mobc, MutexFloor,
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

/// One pool in a contended scenario, ready to run rounds: its own 2-worker runtime, its pool
/// (warmed), and what closes it.
struct Subject {
    name: &'static str,
    round: Box<dyn FnMut(Duration) -> Contended>,
    finish: Box<dyn FnOnce()>,
}

impl Subject {
    fn new<P: BenchPool>(tasks: usize, max: usize, warm: Duration) -> Self {
        let rt = Arc::new(scenarios::multi_thread(2));
        let manager = Trivial::new();
        let stats = manager.stats().clone();
        let pool = Arc::new(rt.block_on(P::build(manager, max)));
        scenarios::contended(&rt, &pool, tasks, warm);
        let (rt2, pool2) = (rt.clone(), pool.clone());
        Subject {
            name: P::NAME,
            round: Box::new(move |run| scenarios::contended(&rt2, &pool2, tasks, run)),
            finish: Box::new(move || {
                let pool = Arc::into_inner(pool).expect("every task has finished");
                rt.block_on(async {
                    pool.close().await;
                    scenarios::settle(&stats, Duration::from_secs(10)).await;
                });
            }),
        }
    }

    fn r2d2(threads: usize, max: usize, warm: Duration) -> Self {
        let pool = scenarios::r2d2_builder(max)
            .build(Trivial::new())
            .expect("the trivial manager never fails");
        scenarios::r2d2_contended(&pool, threads, warm);
        Subject {
            name: "r2d2",
            round: Box::new(move |run| scenarios::r2d2_contended(&pool, threads, run)),
            finish: Box::new(|| {}),
        }
    }

    fn finish(self) {
        drop(self.round);
        (self.finish)();
    }
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
    // Load from outside can only slow a round down: the fastest round is the best estimate
    // of what the pool does on a quiet machine. Every round is kept in the file.
    let best = (0..runs.len())
        .max_by(|&a, &b| runs[a].per_second().total_cmp(&runs[b].per_second()))
        .expect("at least one round");
    let r = &runs[best];
    println!(
        "{name:>16}: {:>12.0} pairs/s  p50 {:>7} ns  p99 {:>8} ns  fairness {:.2}",
        r.per_second(),
        r.wait_ns(0.5),
        r.wait_ns(0.99),
        r.fairness()
    );
    json!({ "name": name, "best_round": rounds[best], "rounds": rounds })
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
            .unwrap_or(500);
        Rounds {
            warm: Duration::from_millis(300),
            run: Duration::from_millis(ms),
            count: 5,
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
        let warm = rounds.warm;
        let mut subjects = Vec::new();
        if want(Grace::NAME) {
            subjects.push(Subject::new::<Grace>(tasks, max, warm));
        }
        if want(GraceUntimed::NAME) {
            subjects.push(Subject::new::<GraceUntimed>(tasks, max, warm));
        }
        if want(Dead::NAME) {
            subjects.push(Subject::new::<Dead>(tasks, max, warm));
        }
        if want(DeadTimed::NAME) {
            subjects.push(Subject::new::<DeadTimed>(tasks, max, warm));
        }
        if want(Bb8::NAME) {
            subjects.push(Subject::new::<Bb8>(tasks, max, warm));
        }
        if want(Mobc::NAME) {
            subjects.push(Subject::new::<Mobc>(tasks, max, warm));
        }
        if want("r2d2") {
            subjects.push(Subject::r2d2(tasks, max, warm));
        }
        if want(ChannelFloor::NAME) {
            subjects.push(Subject::new::<ChannelFloor>(tasks, max, warm));
        }
        if want(MutexFloor::NAME) {
            subjects.push(Subject::new::<MutexFloor>(tasks, max, warm));
        }
        // Rounds go round-robin over the pools, so that load from outside the bench (other
        // processes on the machine) falls on every pool alike; the report takes each pool's
        // fastest round.
        let mut runs: Vec<Vec<Contended>> = subjects.iter().map(|_| Vec::new()).collect();
        for _ in 0..rounds.count {
            for (subject, runs) in subjects.iter_mut().zip(&mut runs) {
                runs.push((subject.round)(rounds.run));
            }
        }
        let rows = subjects
            .into_iter()
            .zip(&runs)
            .map(|(subject, runs)| {
                let row = summarize(subject.name, runs);
                subject.finish();
                row
            })
            .collect();
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
    // The hand-measured scenarios first, on a process that has not yet built and dropped
    // thousands of pools.
    contended_all(&args);

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
    c.final_summary();
}
