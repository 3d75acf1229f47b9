//! Every scenario's code path works for every pool: a few iterations each, with the counts
//! checked. Nothing here measures speed.

use std::sync::Arc;
use std::time::Duration;

use gracepool_bench::manager::Trivial;
use gracepool_bench::pools::{
    Bb8, BenchPool, ChannelFloor, Dead, DeadTimed, Grace, GraceUntimed, Mobc, MutexFloor,
};
use gracepool_bench::scenarios;

const SETTLE: Duration = Duration::from_secs(10);

/// P1's loop: `n` pairs, ids summed, at most `max` connections made, all closed after.
fn p1<P: BenchPool>() {
    let rt = scenarios::current_thread();
    let manager = Trivial::new();
    let stats = manager.stats().clone();
    rt.block_on(async {
        let pool = P::build(manager, 8).await;
        let sum = scenarios::pairs(&pool, 200).await;
        let made = stats.created();
        assert!((1..=8).contains(&made), "{}: made {made}", P::NAME);
        // Every pair saw a connection with an id from 1 to `made`.
        assert!(
            (200..=200 * made).contains(&sum),
            "{}: id sum {sum}",
            P::NAME
        );
        pool.close().await;
        assert!(
            scenarios::settle(&stats, SETTLE).await,
            "{} leaked",
            P::NAME
        );
    });
    assert_eq!(stats.closed(), stats.created(), "{}", P::NAME);
}

#[test]
fn p1_every_pool() {
    p1::<Grace>();
    p1::<Dead>();
    p1::<Bb8>();
    p1::<Mobc>();
    p1::<ChannelFloor>();
    p1::<MutexFloor>();
}

#[test]
fn p1_r2d2() {
    let manager = Trivial::new();
    let stats = manager.stats().clone();
    let pool = scenarios::r2d2_builder(8).build(manager).unwrap();
    let sum = scenarios::r2d2_pairs(&pool, 200);
    // r2d2 opens all 8 up front (min_idle defaults to max_size).
    assert_eq!(stats.created(), 8);
    assert!((200..=1600).contains(&sum));
    drop(pool);
    while stats.open() > 0 {
        std::thread::yield_now();
    }
    assert_eq!(stats.closed(), 8);
}

/// P2/P3's loop, briefly: every task completes pairs, a wait is recorded for each, and no
/// more than `max` connections are ever made.
fn contended<P: BenchPool>(tasks: usize, max: usize) {
    let rt = scenarios::multi_thread(2);
    let manager = Trivial::new();
    let stats = manager.stats().clone();
    let pool = Arc::new(rt.block_on(P::build(manager, max)));
    let run = scenarios::contended(&rt, &pool, tasks, Duration::from_millis(100));
    assert_eq!(run.pairs.len(), tasks, "{}", P::NAME);
    assert!(run.total() > 0, "{}: no pair completed", P::NAME);
    assert_eq!(run.waits_ns.len() as u64, run.total(), "{}", P::NAME);
    assert!(run.wait_ns(0.5) <= run.wait_ns(0.99));
    assert!(run.per_second() > 0.0);
    let made = stats.created();
    assert!((1..=max as u64).contains(&made), "{}: made {made}", P::NAME);
    let pool = Arc::into_inner(pool).expect("the tasks are done");
    rt.block_on(async {
        pool.close().await;
        assert!(
            scenarios::settle(&stats, SETTLE).await,
            "{} leaked",
            P::NAME
        );
    });
}

#[test]
fn contended_every_pool() {
    for (tasks, max) in [(16, 4), (8, 1)] {
        contended::<Grace>(tasks, max);
        contended::<GraceUntimed>(tasks, max);
        contended::<Dead>(tasks, max);
        contended::<DeadTimed>(tasks, max);
        contended::<Bb8>(tasks, max);
        contended::<Mobc>(tasks, max);
        contended::<ChannelFloor>(tasks, max);
        contended::<MutexFloor>(tasks, max);
    }
}

#[test]
fn contended_r2d2() {
    let manager = Trivial::new();
    let stats = manager.stats().clone();
    let pool = scenarios::r2d2_builder(2).build(manager).unwrap();
    let run = scenarios::r2d2_contended(&pool, 4, Duration::from_millis(100));
    assert_eq!(run.pairs.len(), 4);
    assert!(run.total() > 0);
    assert_eq!(run.waits_ns.len() as u64, run.total());
    assert_eq!(stats.created(), 2);
}

/// P4: the first `n` connections are all made, and all closed afterwards.
fn cold<P: BenchPool>() {
    let rt = scenarios::current_thread();
    let manager = Trivial::new();
    let stats = manager.stats().clone();
    rt.block_on(async {
        let took = scenarios::cold_start::<P>(manager, 20).await;
        assert!(took > Duration::ZERO);
        assert!(
            scenarios::settle(&stats, SETTLE).await,
            "{} leaked",
            P::NAME
        );
    });
    assert_eq!(stats.created(), 20, "{}", P::NAME);
    assert_eq!(stats.closed(), 20, "{}", P::NAME);
}

#[test]
fn cold_start_every_pool() {
    cold::<Grace>();
    cold::<Dead>();
    cold::<Bb8>();
    cold::<Mobc>();
    cold::<ChannelFloor>();
    cold::<MutexFloor>();
    let manager = Trivial::new();
    let stats = manager.stats().clone();
    scenarios::r2d2_cold_start(manager, 20);
    while stats.open() > 0 {
        std::thread::yield_now();
    }
    assert_eq!((stats.created(), stats.closed()), (20, 20));
}

/// P5: a pool filled with `n` idle connections closes every one of them.
fn close<P: BenchPool>() {
    let rt = scenarios::current_thread();
    let manager = Trivial::new();
    let stats = manager.stats().clone();
    rt.block_on(async {
        let pool = scenarios::filled::<P>(manager, 300).await;
        assert_eq!(pool.idle().await, 300, "{}", P::NAME);
        assert_eq!(stats.open(), 300, "{}", P::NAME);
        let took = scenarios::close_idle(pool, &stats).await;
        assert!(took.is_some(), "{} left connections open", P::NAME);
    });
    assert_eq!((stats.created(), stats.closed()), (300, 300), "{}", P::NAME);
}

#[test]
fn close_every_pool() {
    close::<Grace>();
    close::<Dead>();
    close::<Bb8>();
    close::<Mobc>();
    close::<ChannelFloor>();
    close::<MutexFloor>();
}

#[test]
fn close_blocking_outside_the_runtime_falls_back() {
    let rt = scenarios::current_thread();
    let manager = Trivial::new();
    let stats = manager.stats().clone();
    let pool = rt.block_on(scenarios::filled::<Grace>(manager, 300));
    // The runtime is not being run: the actor cannot answer, the closer closes them all.
    let report = pool.0.close_blocking(Duration::ZERO);
    assert!(report.fallback);
    assert!(report.is_complete());
    assert_eq!(report.counters.created, 300);
    assert_eq!(report.counters.closed_sync, 300);
    assert_eq!((stats.created(), stats.closed()), (300, 300));
}

#[test]
fn close_r2d2_and_the_floor() {
    let manager = Trivial::new();
    let stats = manager.stats().clone();
    let pool = scenarios::r2d2_filled(manager.clone(), 300);
    assert_eq!(stats.open(), 300);
    drop(pool);
    while stats.open() > 0 {
        std::thread::yield_now();
    }
    scenarios::drop_loop(&manager, 300);
    assert_eq!((stats.created(), stats.closed()), (600, 600));
}

#[test]
fn args_skip_criterions_options() {
    let args = gracepool_bench::Args {
        test: false,
        filters: vec!["P2".into()],
    };
    assert!(args.wants("P2"));
    assert!(!args.wants("P6"));
    assert!(gracepool_bench::Args::default().wants("P6"));
}
