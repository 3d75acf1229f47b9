//! The scenarios, written once for every [`BenchPool`] (and apart for r2d2, which is
//! synchronous). Each returns what it measured; none asserts anything about speed.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::manager::{Stats, Trivial};
use crate::pools::BenchPool;

/// P1: `n` uncontended get + return pairs, one after the other. Returns a sum of the ids
/// seen, so the work cannot be optimized away.
pub async fn pairs<P: BenchPool>(pool: &P, n: u64) -> u64 {
    let mut sum = 0u64;
    for _ in 0..n {
        let conn = pool.checkout().await;
        sum = sum.wrapping_add(black_box(conn.id));
        drop(conn);
    }
    sum
}

/// P1 for r2d2: the same loop, synchronous.
pub fn r2d2_pairs(pool: &r2d2::Pool<Trivial>, n: u64) -> u64 {
    let mut sum = 0u64;
    for _ in 0..n {
        let conn = pool.get().expect("the trivial manager never fails");
        sum = sum.wrapping_add(black_box(conn.id));
        drop(conn);
    }
    sum
}

/// What a contended run saw.
#[derive(Debug, Clone)]
pub struct Contended {
    /// Pairs each task completed before the stop.
    pub pairs: Vec<u64>,
    /// Every checkout's wait, in nanoseconds, sorted.
    pub waits_ns: Vec<u64>,
    /// How long the run lasted.
    pub elapsed: Duration,
}

impl Contended {
    /// Pairs completed by all tasks.
    pub fn total(&self) -> u64 {
        self.pairs.iter().sum()
    }

    /// Pairs per second, all tasks together.
    pub fn per_second(&self) -> f64 {
        self.total() as f64 / self.elapsed.as_secs_f64()
    }

    /// The wait at quantile `q` (0..=1), in nanoseconds.
    pub fn wait_ns(&self, q: f64) -> u64 {
        if self.waits_ns.is_empty() {
            return 0;
        }
        let i = ((self.waits_ns.len() - 1) as f64 * q).round() as usize;
        self.waits_ns[i]
    }

    /// Most pairs completed by one task over fewest (infinite when a task starved).
    pub fn fairness(&self) -> f64 {
        let most = self.pairs.iter().copied().max().unwrap_or(0);
        let fewest = self.pairs.iter().copied().min().unwrap_or(0);
        if fewest == 0 {
            return f64::INFINITY;
        }
        most as f64 / fewest as f64
    }

    fn from_parts(parts: Vec<(u64, Vec<u64>)>, elapsed: Duration) -> Self {
        let mut pairs = Vec::with_capacity(parts.len());
        let mut waits_ns = Vec::new();
        for (n, waits) in parts {
            pairs.push(n);
            waits_ns.extend(waits);
        }
        waits_ns.sort_unstable();
        Contended {
            pairs,
            waits_ns,
            elapsed,
        }
    }
}

/// P2 and P3: `tasks` tasks on `rt` each loop get, `yield_now` while holding, return, for
/// `run`. Only pairs finished before the stop count; each checkout's wait is recorded.
pub fn contended<P: BenchPool>(
    rt: &tokio::runtime::Runtime,
    pool: &Arc<P>,
    tasks: usize,
    run: Duration,
) -> Contended {
    let stop = Arc::new(AtomicBool::new(false));
    // Every task starts at the gate, together: with more threads than cores, the thread that
    // spawns them can be preempted half-way, and the first tasks would run alone meanwhile.
    let gate = Arc::new(tokio::sync::Barrier::new(tasks + 1));
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let pool = pool.clone();
            let stop = stop.clone();
            let gate = gate.clone();
            rt.spawn(async move {
                let mut done = 0u64;
                let mut waits = Vec::with_capacity(1 << 14);
                gate.wait().await;
                while !stop.load(Relaxed) {
                    let asked = Instant::now();
                    let conn = pool.checkout().await;
                    let waited = asked.elapsed();
                    black_box(conn.id);
                    tokio::task::yield_now().await;
                    drop(conn);
                    if stop.load(Relaxed) {
                        break;
                    }
                    done += 1;
                    waits.push(waited.as_nanos() as u64);
                }
                (done, waits)
            })
        })
        .collect();
    rt.block_on(gate.wait());
    let started = Instant::now();
    std::thread::sleep(run);
    stop.store(true, Relaxed);
    let elapsed = started.elapsed();
    let parts = rt.block_on(async {
        let mut parts = Vec::with_capacity(handles.len());
        for h in handles {
            parts.push(h.await.expect("a bench task does not panic"));
        }
        parts
    });
    Contended::from_parts(parts, elapsed)
}

/// P2 and P3 for r2d2, the synchronous reference: `threads` OS threads instead of tasks,
/// `std::thread::yield_now` while holding.
pub fn r2d2_contended(pool: &r2d2::Pool<Trivial>, threads: usize, run: Duration) -> Contended {
    let stop = Arc::new(AtomicBool::new(false));
    let gate = Arc::new(std::sync::Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let pool = pool.clone();
            let stop = stop.clone();
            let gate = gate.clone();
            std::thread::spawn(move || {
                let mut done = 0u64;
                let mut waits = Vec::with_capacity(1 << 14);
                gate.wait();
                while !stop.load(Relaxed) {
                    let asked = Instant::now();
                    let conn = pool.get().expect("the trivial manager never fails");
                    let waited = asked.elapsed();
                    black_box(conn.id);
                    std::thread::yield_now();
                    drop(conn);
                    if stop.load(Relaxed) {
                        break;
                    }
                    done += 1;
                    waits.push(waited.as_nanos() as u64);
                }
                (done, waits)
            })
        })
        .collect();
    gate.wait();
    let started = Instant::now();
    std::thread::sleep(run);
    stop.store(true, Relaxed);
    let elapsed = started.elapsed();
    let parts = handles
        .into_iter()
        .map(|h| h.join().expect("a bench thread does not panic"))
        .collect();
    Contended::from_parts(parts, elapsed)
}

/// Yields until every connection `stats` counted is closed, for up to `limit`. True when
/// they all were.
pub async fn settle(stats: &Stats, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    let mut spins = 0u32;
    while stats.open() > 0 {
        if Instant::now() >= until {
            return false;
        }
        spins += 1;
        if spins < 1_000 {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
    }
    true
}

/// P4: builds a pool and takes its first `n` connections, holding them all. Returns the time
/// that took; the pool is closed afterwards, untimed.
pub async fn cold_start<P: BenchPool>(manager: Trivial, n: usize) -> Duration {
    let started = Instant::now();
    let pool = P::build(manager, n).await;
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(pool.checkout().await);
    }
    let took = started.elapsed();
    drop(held);
    pool.close().await;
    took
}

/// An r2d2 builder for `max_size` connections, on the one helper thread pool all r2d2 pools
/// of a process share (r2d2 would start three threads for each pool otherwise).
pub fn r2d2_builder(max_size: usize) -> r2d2::Builder<Trivial> {
    static THREADS: OnceLock<Arc<scheduled_thread_pool::ScheduledThreadPool>> = OnceLock::new();
    let threads =
        THREADS.get_or_init(|| Arc::new(scheduled_thread_pool::ScheduledThreadPool::new(3)));
    r2d2::Pool::builder()
        .max_size(u32::try_from(max_size).expect("a bench size fits u32"))
        .thread_pool(threads.clone())
}

/// P4 for r2d2.
pub fn r2d2_cold_start(manager: Trivial, n: usize) -> Duration {
    let mut held = Vec::with_capacity(n);
    let started = Instant::now();
    let pool = r2d2_builder(n)
        .build(manager)
        .expect("the trivial manager never fails");
    for _ in 0..n {
        held.push(pool.get().expect("the trivial manager never fails"));
    }
    let took = started.elapsed();
    drop(held);
    drop(pool);
    took
}

/// P5's setup: a pool holding `n` idle connections (taken all at once, then given back).
pub async fn filled<P: BenchPool>(manager: Trivial, n: usize) -> P {
    let pool = P::build(manager, n).await;
    {
        let mut held = Vec::with_capacity(n);
        for _ in 0..n {
            held.push(pool.checkout().await);
        }
    }
    // Some pools take their connections back in a task of their own.
    let until = Instant::now() + Duration::from_secs(10);
    while pool.idle().await < n {
        assert!(
            Instant::now() < until,
            "{} did not take back its connections",
            P::NAME
        );
        tokio::task::yield_now().await;
    }
    pool
}

/// P5: closes a pool of idle connections the pool's own way and waits until every
/// connection is closed. Returns the time from the close request to the last close, or
/// `None` if connections were still open after 10 s.
pub async fn close_idle<P: BenchPool>(pool: P, stats: &Stats) -> Option<Duration> {
    let started = Instant::now();
    pool.close().await;
    let all = settle(stats, Duration::from_secs(10)).await;
    all.then(|| started.elapsed())
}

/// P5's setup for r2d2.
pub fn r2d2_filled(manager: Trivial, n: usize) -> r2d2::Pool<Trivial> {
    let pool = r2d2_builder(n)
        .build(manager)
        .expect("the trivial manager never fails");
    drop(
        (0..n)
            .map(|_| pool.get().expect("fills"))
            .collect::<Vec<_>>(),
    );
    pool
}

/// P5's floor: `n` connections dropped in a loop.
pub fn drop_loop(manager: &Trivial, n: usize) -> Duration {
    let mut conns: Vec<_> = (0..n).map(|_| manager.make()).collect();
    let started = Instant::now();
    while let Some(conn) = conns.pop() {
        drop(black_box(conn));
    }
    started.elapsed()
}

/// A current_thread tokio runtime, as P1, P4 and P5 use.
pub fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime")
}

/// A multi-thread tokio runtime with `workers` workers, as P2 and P3 use.
pub fn multi_thread(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_time()
        .build()
        .expect("a tokio runtime")
}
